/* agent/presence.c: the node resource, heartbeated, and the command labels.
 *
 * Two threads. The heartbeat thread puts the whole node resource with `heartbeat`
 * every heartbeat_period +-10 % (ttl: 3 periods, so two lost heartbeats do not make
 * the node vanish), at once when kicked (labels changed, certificates renewed), and
 * after a failure retries with backoff and jitter. The command thread runs each
 * command label on its own period +-10 %, with a deadline and an output cap, and
 * kicks the heartbeat when a result changed. Jitter comes from rp_rand (seeded per
 * process), so a fleet started together spreads its writes. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define OUTPUT_CAP 4096      /* bytes of a command's output kept */
#define COMMAND_MAX_MS 30000 /* a command label's deadline, at most */
#define RESULT_MAX 1024      /* bytes of a result published */
#define HEARTBEAT_MAX_BACKOFF_MS 30000
/* One heartbeat's deadline, across auth servers: it also bounds how long a stop waits
 * for a heartbeat in flight. */
#define HEARTBEAT_CALL_MS 5000

extern char **environ;

struct cmd_state {
    const struct rp_config_command *cfg;
    char result[RESULT_MAX + 1];
    uint64_t next_ms; /* monotonic */
};

struct agent_presence {
    const struct rp_config *cfg;
    struct agent_ident *id;
    struct agent_cache *cache;
    char version[32];
    char addr[300];
    struct cmd_state *cmds;
    size_t n_cmds;
    pthread_t hb_thread, cmd_thread;
    bool cmd_running;
    pthread_mutex_t mu; /* cmds[].result, kicked, stop */
    pthread_cond_t cv;
    bool kicked;
    atomic_bool stop;
};

/* +-10 % of @ms. */
static uint64_t jittered(uint64_t ms)
{
    uint64_t spread = ms / 5;
    return ms - ms / 10 + (spread ? rp_rand_below(spread + 1) : 0);
}

/* Waits until @mono_deadline, a kick (if @kickable) or stop. */
static void wait_until_ms(struct agent_presence *p, uint64_t mono_deadline, bool kickable)
{
    pthread_mutex_lock(&p->mu);
    while (!atomic_load(&p->stop) && !(kickable && p->kicked)) {
        uint64_t now = rp_mono_ms();
        if (now >= mono_deadline)
            break;
        uint64_t left = mono_deadline - now;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += (time_t)(left / 1000);
        ts.tv_nsec += (long)(left % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&p->cv, &p->mu, &ts);
    }
    pthread_mutex_unlock(&p->mu);
}

void agent_presence_kick(struct agent_presence *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    p->kicked = true;
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
}

/* ---- command labels -------------------------------------------------------------- */

/* Runs @argv with stdin from /dev/null and stdout into a pipe, for at most
 * @timeout_ms; its output (at most OUTPUT_CAP bytes) into @out, trimmed. */
static int run_command(char *const *argv, uint64_t timeout_ms, char *out, size_t outlen)
{
    int fds[2];
    if (pipe2(fds, O_CLOEXEC) != 0)
        return rp_err(RP_EIO, "pipe: %s", strerror(errno));
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 1);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    if (err != 0) {
        close(fds[0]);
        return rp_err(RP_EIO, "cannot run %s: %s", argv[0], strerror(err));
    }
    char buf[OUTPUT_CAP];
    size_t n = 0;
    uint64_t deadline = rp_mono_ms() + timeout_ms;
    bool timed_out = false;
    for (;;) {
        uint64_t now = rp_mono_ms();
        if (now >= deadline) {
            timed_out = true;
            break;
        }
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int r = poll(&pfd, 1, (int)(deadline - now));
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            timed_out = r == 0;
            break;
        }
        char chunk[1024];
        ssize_t got = read(fds[0], chunk, sizeof chunk);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            break;
        /* Past the cap the output is drained and dropped, so the command never
         * blocks on a full pipe. */
        size_t take = (size_t)got < sizeof buf - n ? (size_t)got : sizeof buf - n;
        memcpy(buf + n, chunk, take);
        n += take;
    }
    close(fds[0]);
    if (timed_out)
        kill(pid, SIGKILL);
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (timed_out)
        return rp_err(RP_ETIMEDOUT, "%s did not finish within %llu ms", argv[0],
                      (unsigned long long)timeout_ms);
    size_t start = 0;
    while (start < n &&
           (buf[start] == ' ' || buf[start] == '\n' || buf[start] == '\t' || buf[start] == '\r'))
        start++;
    while (n > start &&
           (buf[n - 1] == ' ' || buf[n - 1] == '\n' || buf[n - 1] == '\t' || buf[n - 1] == '\r'))
        n--;
    size_t len = n - start < outlen - 1 ? n - start : outlen - 1;
    /* A label value is text: control bytes and NULs become '?'. */
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)buf[start + i];
        out[i] = ch < 0x20 && ch != '\n' && ch != '\t' ? '?' : (char)ch;
    }
    out[len] = '\0';
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        rp_warn("presence", "command label: %s exited with status %d", argv[0],
                WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    return 0;
}

/* Publishes the static and command labels into the cache (the SSH server's view). */
static void publish_labels(struct agent_presence *p)
{
    const struct rp_config *cfg = p->cfg;
    struct agent_labels l = {0};
    size_t n = cfg->ssh_n_labels + p->n_cmds;
    l.items = calloc(n ? n : 1, sizeof *l.items);
    if (l.items == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    /* Borrowed strings: set_labels copies them. */
    for (size_t i = 0; i < cfg->ssh_n_labels; i++)
        l.items[l.n++] = (struct rbac_label){cfg->ssh_labels[i].name, cfg->ssh_labels[i].value};
    for (size_t i = 0; i < p->n_cmds; i++)
        l.items[l.n++] = (struct rbac_label){p->cmds[i].cfg->name, p->cmds[i].result};
    agent_cache_set_labels(p->cache, &l);
    pthread_mutex_unlock(&p->mu);
    free(l.items);
}

static void *cmd_main(void *arg)
{
    struct agent_presence *p = arg;
    while (!atomic_load(&p->stop)) {
        uint64_t now = rp_mono_ms(), next = UINT64_MAX;
        bool changed = false;
        for (size_t i = 0; i < p->n_cmds && !atomic_load(&p->stop); i++) {
            struct cmd_state *cs = &p->cmds[i];
            if (cs->next_ms <= now) {
                char result[RESULT_MAX + 1];
                uint64_t timeout =
                    cs->cfg->period_ms < COMMAND_MAX_MS ? cs->cfg->period_ms : COMMAND_MAX_MS;
                if (run_command(cs->cfg->argv, timeout, result, sizeof result) != 0) {
                    rp_warn("presence", "command label %s: %s", cs->cfg->name, rp_errmsg());
                    /* Teleport shows a failed command's label as an error text too. */
                    snprintf(result, sizeof result, "error");
                }
                pthread_mutex_lock(&p->mu);
                if (strcmp(result, cs->result) != 0) {
                    snprintf(cs->result, sizeof cs->result, "%s", result);
                    changed = true;
                }
                pthread_mutex_unlock(&p->mu);
                cs->next_ms = rp_mono_ms() + jittered(cs->cfg->period_ms);
            }
            if (cs->next_ms < next)
                next = cs->next_ms;
        }
        if (changed) {
            publish_labels(p);
            agent_presence_kick(p);
        }
        if (next != UINT64_MAX)
            wait_until_ms(p, next, false);
    }
    return NULL;
}

/* ---- the resource ----------------------------------------------------------------- */

static int encode_node(struct agent_presence *p, struct rp_buf *out)
{
    const struct rp_config *cfg = p->cfg;
    char *pub = NULL, *cert = NULL, period[32];
    int rv = agent_ident_ssh_lines(p->id, &pub, &cert);
    if (rv != 0)
        return rv;
    msgpack_packer pk;
    struct rp_mp_map m, meta, labels, spec, cmd_labels;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "kind", "node");
    rp_mp_map_str(&m, "version", "v2");
    rp_mp_map_str(&m, "sub_kind", "teleport");
    rp_mp_map_begin_map(&m, "metadata", &meta);
    rp_mp_map_str(&meta, "name", p->id->host_id);
    rp_mp_map_begin_map(&meta, "labels", &labels);
    for (size_t i = 0; i < cfg->ssh_n_labels; i++)
        rp_mp_map_str(&labels, cfg->ssh_labels[i].name, cfg->ssh_labels[i].value);
    rp_mp_map_end(&labels);
    rp_mp_map_end(&meta);
    rp_mp_map_begin_map(&m, "spec", &spec);
    rp_mp_map_str(&spec, "addr", p->addr);
    /* A node in proxy mode is reached through its reverse tunnels (spec.addr is "" unless
     * ssh_service.listen_addr was set too). */
    if (cfg->proxy_server != NULL)
        rp_mp_map_bool(&spec, "use_tunnel", true);
    rp_mp_map_str(&spec, "hostname", cfg->nodename);
    rp_mp_map_str(&spec, "version", p->version);
    rp_mp_map_begin_map(&spec, "cmd_labels", &cmd_labels);
    pthread_mutex_lock(&p->mu);
    for (size_t i = 0; i < p->n_cmds; i++) {
        struct rp_mp_map one;
        rp_mp_map_begin_map(&cmd_labels, p->cmds[i].cfg->name, &one);
        rp_format_duration(p->cmds[i].cfg->period_ms, period, sizeof period);
        rp_mp_map_str(&one, "period", period);
        msgpack_packer *ap = rp_mp_map_key(&one, "command");
        msgpack_pack_array(ap, (uint32_t)p->cmds[i].cfg->argc);
        for (size_t j = 0; j < p->cmds[i].cfg->argc; j++)
            rp_mp_pack_str(ap, p->cmds[i].cfg->argv[j]);
        rp_mp_map_str(&one, "result", p->cmds[i].result);
        rp_mp_map_end(&one);
    }
    pthread_mutex_unlock(&p->mu);
    rp_mp_map_end(&cmd_labels);
    rp_mp_map_str(&spec, "host_key", pub);
    rp_mp_map_str(&spec, "host_cert", cert);
    rp_mp_map_end(&spec);
    rp_mp_map_end(&m);
    free(pub);
    free(cert);
    return 0;
}

static int heartbeat_once(struct agent_presence *p, struct auth_client *c, uint64_t ttl_ms)
{
    struct rp_buf res;
    rp_buf_init(&res);
    int rv = encode_node(p, &res);
    if (rv == 0)
        rv = auth_client_heartbeat(c, res.data, res.len, ttl_ms, NULL, NULL);
    rp_buf_free(&res);
    return rv;
}

static void *hb_main(void *arg)
{
    struct agent_presence *p = arg;
    struct auth_client *c = NULL;
    uint64_t generation = 0, period = p->cfg->heartbeat_period_ms, backoff = 500;
    const char *addrs[RP_CONFIG_MAX_AUTH_SERVERS + 1];
    size_t n_addrs = rp_config_auth_addrs(p->cfg, addrs, RP_CONFIG_MAX_AUTH_SERVERS + 1);
    bool failing = false;
    while (!atomic_load(&p->stop)) {
        uint64_t gen;
        SSL_CTX *ctx = agent_ident_ctx(p->id, &gen);
        if (c == NULL || gen != generation) {
            auth_client_free(c);
            c = NULL;
            if (auth_client_new(&c, ctx, addrs, n_addrs) == 0)
                auth_client_set_timeout(c, HEARTBEAT_CALL_MS);
            generation = gen;
        }
        SSL_CTX_free(ctx);
        pthread_mutex_lock(&p->mu);
        p->kicked = false;
        pthread_mutex_unlock(&p->mu);
        int rv = c ? heartbeat_once(p, c, 3 * period) : rp_err(RP_ENOMEM, "auth client");
        uint64_t wait;
        if (rv == 0) {
            if (failing)
                rp_info("presence", "heartbeats reach auth again");
            else
                rp_debug("presence", "heartbeat sent");
            failing = false;
            backoff = 500;
            wait = jittered(period);
        } else {
            wait = rp_jitter_ms(backoff);
            if (wait > period)
                wait = jittered(period);
            rp_warn("presence", "heartbeat failed (%s); retrying in %llu ms", rp_errmsg(),
                    (unsigned long long)wait);
            failing = true;
            backoff =
                backoff * 2 > HEARTBEAT_MAX_BACKOFF_MS ? HEARTBEAT_MAX_BACKOFF_MS : backoff * 2;
        }
        wait_until_ms(p, rp_mono_ms() + wait, rv == 0);
    }
    auth_client_free(c);
    return NULL;
}

int agent_presence_start(struct agent_presence **out, const struct rp_config *cfg,
                         struct agent_ident *id, struct agent_cache *cache, const char *version)
{
    struct agent_presence *p = calloc(1, sizeof *p);
    *out = NULL;
    if (p == NULL || (cfg->ssh_n_commands > 0 &&
                      (p->cmds = calloc(cfg->ssh_n_commands, sizeof *p->cmds)) == NULL)) {
        free(p);
        return rp_err(RP_ENOMEM, "presence");
    }
    p->cfg = cfg;
    p->id = id;
    p->cache = cache;
    snprintf(p->version, sizeof p->version, "%s", version);
    /* The address others dial: public_addr, else listen_addr with a wildcard host
     * replaced by loopback (a node that wants to be reached from elsewhere says so). */
    const char *a = cfg->ssh_public_addr ? cfg->ssh_public_addr : cfg->ssh_listen_addr;
    if (cfg->proxy_server != NULL && !cfg->ssh_listen_addr_set && cfg->ssh_public_addr == NULL)
        p->addr[0] = '\0'; /* tunnel only: nothing to dial directly */
    else if (strncmp(a, "0.0.0.0:", 8) == 0)
        snprintf(p->addr, sizeof p->addr, "127.0.0.1:%s", a + 8);
    else if (strncmp(a, "[::]:", 5) == 0)
        snprintf(p->addr, sizeof p->addr, "[::1]:%s", a + 5);
    else
        snprintf(p->addr, sizeof p->addr, "%s", a);
    p->n_cmds = cfg->ssh_n_commands;
    for (size_t i = 0; i < p->n_cmds; i++)
        p->cmds[i].cfg = &cfg->ssh_commands[i];
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->stop, false);
    publish_labels(p);
    /* Command labels get a first result before the first heartbeat when they are
     * quick: the thread starts first and the heartbeat goes out on its kick. */
    if (p->n_cmds > 0) {
        if (pthread_create(&p->cmd_thread, NULL, cmd_main, p) != 0)
            goto fail;
        p->cmd_running = true;
    }
    if (pthread_create(&p->hb_thread, NULL, hb_main, p) != 0) {
        atomic_store(&p->stop, true);
        agent_presence_kick(p);
        if (p->cmd_running)
            pthread_join(p->cmd_thread, NULL);
        goto fail;
    }
    *out = p;
    return 0;
fail:
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->cmds);
    free(p);
    return rp_err(RP_ENOMEM, "presence: cannot start its threads");
}

void agent_presence_stop(struct agent_presence *p)
{
    if (p == NULL)
        return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, true);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    pthread_join(p->hb_thread, NULL);
    if (p->cmd_running)
        pthread_join(p->cmd_thread, NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->cmds);
    free(p);
}
