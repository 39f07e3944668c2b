/* proxy/proxy.c: the proxy process (proxy/proxy.h): identity, following auth, presence,
 * the worker pool, auth calls and audit events, and the order things start and stop.
 *
 * Start: join (or load the identity) as a Proxy (agent/join.c), ping auth and check
 * its version, open the in-memory cache and follow auth into it (the proxy's kinds:
 * agent/follow.c), start the worker pool, the event sender and the heartbeat, then the
 * loops, the reverse tunnels and the listeners. SIGTERM/SIGINT stop them in the
 * reverse order.
 *
 * Threads: the loops (proxy/loop.h) never block; anything that may (an auth call, a
 * connect, a tunnel dial) runs on one of a fixed number of workers
 * (proxy_run_blocking), whose queue is bounded so that a flood of requests is refused
 * as busy instead of queued without end. An auth_client serves one thread at a time:
 * callers borrow one from a small pool. */
#include <errno.h>
#include <netdb.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/cache.h"
#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "lib/version.h"
#include "proxy/internal.h"
#include "proxy/sshjump.h"
#include "proxy/tunnel.h"

#define WORKERS 16
#define WORK_QUEUE_MAX 1024
#define CLIENT_POOL_MAX (WORKERS + 4)
/* How long start-up waits for the first auth server to answer ping. */
#define PING_DEADLINE_MS 15000

struct job {
    void (*fn)(void *arg);
    void *arg;
};

struct proxy {
    const struct rp_config *cfg;
    struct agent_ident id;
    bool id_loaded;
    X509 *ca;
    char cluster_name[256];
    const char *addrs[RP_CONFIG_MAX_AUTH_SERVERS + 1];
    size_t n_addrs;
    struct agent_cache *cache;
    struct agent_follow *follow;
    struct px_loops *loops;
    struct px_tunnels *tunnels;
    struct px_sshjump *sshjump; /* listen_addr (3023): ssh -J */
    struct px_listen *listen;
    bool loops_started;
    char web_addr[300];    /* what presence announces */
    char tunnel_addr[300]; /* idem */

    /* workers */
    pthread_mutex_t work_mu;
    pthread_cond_t work_cv;
    struct job *jobs; /* ring of WORK_QUEUE_MAX */
    size_t job_head, n_jobs;
    bool work_stop;
    pthread_t workers[WORKERS];
    size_t n_workers;

    /* auth clients lent to callers */
    pthread_mutex_t client_mu;
    struct auth_client *clients[CLIENT_POOL_MAX];
    uint64_t client_gen[CLIENT_POOL_MAX];
    size_t n_clients;

    struct agent_events *events; /* audit events on their way to auth */

    /* the heartbeat's thread, woken by @bg_cv */
    pthread_mutex_t bg_mu;
    pthread_cond_t bg_cv;
    bool bg_stop;
    pthread_t hb_thread;
    bool hb_started;
};

/* ---- accessors ------------------------------------------------------------------------- */

const struct rp_config *proxy_config(struct proxy *p)
{
    return p->cfg;
}
const char *proxy_cluster_name(struct proxy *p)
{
    return p->cluster_name;
}
const char *proxy_host_id(struct proxy *p)
{
    return p->id.host_id;
}
struct px_loops *proxy_loops(struct proxy *p)
{
    return p->loops;
}
struct agent_cache *proxy_cache(struct proxy *p)
{
    return p->cache;
}
struct px_tunnels *proxy_tunnels(struct proxy *p)
{
    return p->tunnels;
}
X509 *proxy_ca(struct proxy *p)
{
    return p->ca;
}
SSL_CTX *proxy_client_ctx(struct proxy *p)
{
    return agent_ident_ctx(&p->id, NULL);
}
void proxy_key_path(struct proxy *p, const char *file, char *out, size_t outlen)
{
    agent_key_path(p->cfg->data_dir, file, out, outlen);
}
size_t proxy_auth_addrs(struct proxy *p, const char *const **out)
{
    *out = p->addrs;
    return p->n_addrs;
}

/* ---- TCP connect with a deadline --------------------------------------------------------- */

int px_tcp_connect(const char *addr, int timeout_ms, int *fd_out)
{
    char host[256], port[8];
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || (size_t)(colon - addr) >= sizeof host ||
        strlen(colon + 1) == 0 || strlen(colon + 1) >= sizeof port)
        return rp_err(RP_EINVAL, "address '%.100s': expected HOST:PORT", addr);
    size_t hl = (size_t)(colon - addr);
    const char *h = addr;
    if (hl > 2 && addr[0] == '[' && addr[hl - 1] == ']') {
        h++;
        hl -= 2;
    }
    memcpy(host, h, hl);
    host[hl] = '\0';
    snprintf(port, sizeof port, "%s", colon + 1);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(host, port, &hints, &res);
    if (g != 0)
        return rp_err(RP_EUNAVAILABLE, "cannot resolve %s: %s", addr, gai_strerror(g));
    uint64_t deadline = rp_mono_ms() + (uint64_t)timeout_ms;
    int rv = RP_EUNAVAILABLE;
    char why[160] = "no address";
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(why, sizeof why, "socket: %s", strerror(errno));
            continue;
        }
        if (connect(fd, ai->ai_addr, ai->ai_addrlen) != 0 && errno != EINPROGRESS) {
            snprintf(why, sizeof why, "%s", strerror(errno));
            close(fd);
            continue;
        }
        uint64_t now = rp_mono_ms();
        struct pollfd pfd = {.fd = fd, .events = POLLOUT};
        int pr = now >= deadline ? 0 : poll(&pfd, 1, (int)(deadline - now));
        int err = 0;
        socklen_t el = sizeof err;
        if (pr == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 && err == 0) {
            /* SSH sends small packets (SFTP requests, window adjustments) that must not
             * wait for the node's delayed ACK (40 ms each with Nagle on). */
            int one = 1;
            setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
            freeaddrinfo(res);
            *fd_out = fd;
            return 0;
        }
        if (pr == 0) {
            rv = RP_ETIMEDOUT;
            snprintf(why, sizeof why, "no answer within %d ms", timeout_ms);
        } else {
            snprintf(why, sizeof why, "%s", strerror(err ? err : errno));
        }
        close(fd);
        if (pr == 0)
            break;
    }
    freeaddrinfo(res);
    return rp_err(rv, "cannot connect to %s: %s", addr, why);
}

/* ---- workers ---------------------------------------------------------------------------- */

int proxy_run_blocking(struct proxy *p, void (*fn)(void *arg), void *arg)
{
    pthread_mutex_lock(&p->work_mu);
    if (p->work_stop || p->n_jobs == WORK_QUEUE_MAX) {
        bool stopping = p->work_stop;
        pthread_mutex_unlock(&p->work_mu);
        return rp_err(stopping ? RP_ECLOSED : RP_EBUSY,
                      stopping ? "the proxy is stopping"
                               : "the proxy has %d blocking tasks waiting: try again later",
                      WORK_QUEUE_MAX);
    }
    p->jobs[(p->job_head + p->n_jobs) % WORK_QUEUE_MAX] = (struct job){fn, arg};
    p->n_jobs++;
    pthread_cond_signal(&p->work_cv);
    pthread_mutex_unlock(&p->work_mu);
    return 0;
}

static void *worker_main(void *arg)
{
    struct proxy *p = arg;
    pthread_setname_np(pthread_self(), "px-worker");
    pthread_mutex_lock(&p->work_mu);
    for (;;) {
        while (!p->work_stop && p->n_jobs == 0)
            pthread_cond_wait(&p->work_cv, &p->work_mu);
        if (p->n_jobs == 0)
            break;
        struct job j = p->jobs[p->job_head];
        p->job_head = (p->job_head + 1) % WORK_QUEUE_MAX;
        p->n_jobs--;
        pthread_mutex_unlock(&p->work_mu);
        j.fn(j.arg);
        pthread_mutex_lock(&p->work_mu);
    }
    pthread_mutex_unlock(&p->work_mu);
    return NULL;
}

/* Runs what is queued, then joins the workers. */
static void workers_stop(struct proxy *p)
{
    pthread_mutex_lock(&p->work_mu);
    p->work_stop = true;
    pthread_cond_broadcast(&p->work_cv);
    pthread_mutex_unlock(&p->work_mu);
    for (size_t i = 0; i < p->n_workers; i++)
        pthread_join(p->workers[i], NULL);
    p->n_workers = 0;
}

/* ---- auth calls --------------------------------------------------------------------------- */

/* Borrows a client for the current identity (a new one if none is free). */
static int client_take(struct proxy *p, struct auth_client **out, uint64_t *gen_out)
{
    uint64_t gen;
    SSL_CTX *ctx = agent_ident_ctx(&p->id, &gen);
    if (ctx == NULL)
        return rp_err(RP_ENOMEM, "the proxy has no TLS identity");
    pthread_mutex_lock(&p->client_mu);
    struct auth_client *c = NULL;
    while (p->n_clients > 0 && c == NULL) {
        p->n_clients--;
        if (p->client_gen[p->n_clients] == gen)
            c = p->clients[p->n_clients];
        else
            auth_client_free(p->clients[p->n_clients]); /* renewed since */
    }
    pthread_mutex_unlock(&p->client_mu);
    int rv = 0;
    if (c == NULL)
        rv = auth_client_new(&c, ctx, p->addrs, p->n_addrs);
    SSL_CTX_free(ctx);
    *out = c;
    *gen_out = gen;
    return rv;
}

static void client_give(struct proxy *p, struct auth_client *c, uint64_t gen)
{
    pthread_mutex_lock(&p->client_mu);
    if (p->n_clients < CLIENT_POOL_MAX) {
        p->clients[p->n_clients] = c;
        p->client_gen[p->n_clients] = gen;
        p->n_clients++;
        c = NULL;
    }
    pthread_mutex_unlock(&p->client_mu);
    auth_client_free(c);
}

int proxy_auth_call(struct proxy *p, const char *method, const void *req, size_t req_len,
                    struct rp_buf *answer, int timeout_ms)
{
    msgpack_unpacked args;
    if (rp_mp_parse(req, req_len, &args) != 0)
        return rp_err(RP_EINVAL, "proxy_auth_call %s: the arguments are not one msgpack map",
                      method);
    if (args.data.type != MSGPACK_OBJECT_MAP) {
        msgpack_unpacked_destroy(&args);
        return rp_err(RP_EINVAL, "proxy_auth_call %s: the arguments are not one msgpack map",
                      method);
    }
    /* {m: METHOD, ...the arguments} */
    struct rp_buf full;
    msgpack_packer pk;
    rp_buf_init(&full);
    rp_mp_packer_init(&pk, &full);
    uint32_t n = args.data.via.map.size;
    msgpack_pack_map(&pk, n + 1);
    rp_mp_kv_str(&pk, "m", method);
    for (uint32_t i = 0; i < n; i++) {
        msgpack_pack_object(&pk, args.data.via.map.ptr[i].key);
        msgpack_pack_object(&pk, args.data.via.map.ptr[i].val);
    }
    msgpack_unpacked_destroy(&args);

    struct auth_client *c = NULL;
    uint64_t gen = 0;
    int rv = client_take(p, &c, &gen);
    if (rv != 0) {
        rp_buf_free(&full);
        return rv;
    }
    auth_client_set_timeout(c, timeout_ms > 0 ? timeout_ms : 15000);
    msgpack_unpacked resp;
    rv = auth_client_call(c, full.data, full.len, &resp);
    int saved = rv;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", rv != 0 ? rp_errmsg() : "");
    if (answer != NULL && resp.data.type == MSGPACK_OBJECT_MAP &&
        rp_mp_pack_object(answer, &resp.data) != 0 && rv == 0)
        saved = rp_err(RP_ENOMEM, "answer of %s", method);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&full);
    client_give(p, c, gen);
    if (saved != 0 && rv != 0)
        return rp_err(rv, "%s", msg);
    return saved;
}

/* ---- audit events ------------------------------------------------------------------------ */

int proxy_emit(struct proxy *p, const void *event, size_t len)
{
    if (p->events == NULL)
        return rp_err(RP_ECLOSED, "the proxy's audit sender is not running");
    return agent_emit(p->events, event, len);
}

/* Waits on bg_cv until @ms pass or stop; bg_mu held. */
static void bg_wait(struct proxy *p, uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (!p->bg_stop)
        pthread_cond_timedwait(&p->bg_cv, &p->bg_mu, &ts);
}

/* ---- presence ------------------------------------------------------------------------------ */

/* "HOST:PORT" of @listen with a wildcard host replaced by @host. */
static void advertised(const char *listen, const char *host, char *out, size_t outlen)
{
    const char *colon = strrchr(listen, ':');
    size_t hl = colon ? (size_t)(colon - listen) : 0;
    bool wildcard = (hl == 7 && strncmp(listen, "0.0.0.0", 7) == 0) ||
                    (hl == 4 && strncmp(listen, "[::]", 4) == 0);
    if (colon != NULL && wildcard)
        snprintf(out, outlen, "%s%s", host, colon);
    else
        snprintf(out, outlen, "%s", listen);
}

/* The host part of "HOST:PORT" into @out. */
static void host_part(const char *addr, char *out, size_t outlen)
{
    const char *colon = strrchr(addr, ':');
    size_t hl = colon ? (size_t)(colon - addr) : strlen(addr);
    if (hl >= outlen)
        hl = outlen - 1;
    memcpy(out, addr, hl);
    out[hl] = '\0';
}

static void presence_addrs(struct proxy *p)
{
    const struct rp_config *cfg = p->cfg;
    const char *web = p->listen ? px_listen_web_addr(p->listen) : cfg->web_listen_addr;
    char host[256];
    if (cfg->proxy_public_addr != NULL) {
        snprintf(p->web_addr, sizeof p->web_addr, "%s", cfg->proxy_public_addr);
        host_part(cfg->proxy_public_addr, host, sizeof host);
    } else {
        advertised(web, cfg->nodename, p->web_addr, sizeof p->web_addr);
        snprintf(host, sizeof host, "%s", cfg->nodename);
    }
    if (strcmp(cfg->tunnel_listen_addr, cfg->web_listen_addr) == 0)
        snprintf(p->tunnel_addr, sizeof p->tunnel_addr, "%s", p->web_addr);
    else
        advertised(cfg->tunnel_listen_addr, host, p->tunnel_addr, sizeof p->tunnel_addr);
}

static int heartbeat_once(struct proxy *p, uint64_t ttl_ms)
{
    struct rp_buf res;
    msgpack_packer pk;
    struct rp_mp_map m, meta, spec;
    rp_buf_init(&res);
    rp_mp_packer_init(&pk, &res);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "kind", "proxy");
    rp_mp_map_str(&m, "version", "v2");
    rp_mp_map_begin_map(&m, "metadata", &meta);
    rp_mp_map_str(&meta, "name", p->id.host_id);
    rp_mp_map_end(&meta);
    rp_mp_map_begin_map(&m, "spec", &spec);
    rp_mp_map_str(&spec, "hostname", p->cfg->nodename);
    rp_mp_map_str(&spec, "addr", p->web_addr);
    rp_mp_map_str(&spec, "tunnel_addr", p->tunnel_addr);
    rp_mp_map_str(&spec, "version", rp_version_self());
    rp_mp_map_end(&spec);
    rp_mp_map_end(&m);
    struct auth_client *c = NULL;
    uint64_t gen;
    int rv = client_take(p, &c, &gen);
    if (rv == 0) {
        auth_client_set_timeout(c, 10000);
        rv = auth_client_heartbeat(c, res.data, res.len, ttl_ms, NULL, NULL);
        client_give(p, c, gen);
    }
    rp_buf_free(&res);
    return rv;
}

static void *heartbeat_main(void *arg)
{
    struct proxy *p = arg;
    uint64_t period = p->cfg->heartbeat_period_ms ? p->cfg->heartbeat_period_ms : 60000;
    bool failing = false;
    pthread_setname_np(pthread_self(), "px-heartbeat");
    pthread_mutex_lock(&p->bg_mu);
    while (!p->bg_stop) {
        pthread_mutex_unlock(&p->bg_mu);
        int rv = heartbeat_once(p, 3 * period);
        if (rv != 0 && !failing)
            rp_warn("proxy", "presence heartbeat failed: %s (retrying)", rp_errmsg());
        else if (rv == 0 && failing)
            rp_info("proxy", "presence heartbeat works again");
        failing = rv != 0;
        pthread_mutex_lock(&p->bg_mu);
        /* +-10 %: proxies started together do not heartbeat together. */
        uint64_t wait = failing ? 2000 : period - period / 10 + rp_rand_below(period / 5 + 1);
        bg_wait(p, wait);
    }
    pthread_mutex_unlock(&p->bg_mu);
    return NULL;
}

/* ---- renewal ------------------------------------------------------------------------------ */

/* When the host certificates are renewed: at 2/3 of the shorter lifetime, spread. */
static uint64_t plan_renewal(struct proxy *p)
{
    pthread_mutex_lock(&p->id.mu);
    uint64_t at =
        agent_renew_time(p->id.tls_not_before_ms, p->id.tls_not_after_ms, p->id.ssh_valid_after_ms,
                         p->id.ssh_valid_before_ms, rp_rand_u64());
    pthread_mutex_unlock(&p->id.mu);
    char when[40];
    rp_format_time(at, when, sizeof when);
    rp_info("proxy", "host certificates are renewed at %s", when);
    return at;
}

/* Renews the host certificates (renew_host, same keys); returns the next renewal time.
 * Borrowed clients of the old identity are dropped as they come back (generation). The
 * listeners keep serving the certificate they loaded, which stays valid far longer. */
static uint64_t renew(struct proxy *p)
{
    struct auth_client *c = NULL;
    uint64_t gen;
    int rv = client_take(p, &c, &gen);
    if (rv == 0) {
        auth_client_set_timeout(c, 10000);
        rv = agent_ident_renew(&p->id, p->cfg, c);
        auth_client_free(c);
    }
    if (rv != 0) {
        rp_warn("proxy", "renewing the host certificates: %s; trying again in a minute",
                rp_errmsg());
        return rp_now_ms() + rp_jitter_ms(60000);
    }
    return plan_renewal(p);
}

/* ---- start and stop ----------------------------------------------------------------------- */

/* Pings auth (failing over until PING_DEADLINE_MS) and applies the version rule. */
static int check_auth_version(struct proxy *p)
{
    struct auth_client *c = NULL;
    uint64_t gen;
    struct auth_ping ping;
    int rv = client_take(p, &c, &gen);
    if (rv != 0)
        return rv;
    auth_client_set_timeout(c, PING_DEADLINE_MS);
    rv = auth_client_ping(c, &ping);
    client_give(p, c, gen);
    if (rv != 0)
        return rp_err(rv, "no auth server answered: %s", rp_errmsg());
    return agent_version_gate("proxy", ping.version, p->cfg->skip_version_check);
}

static int load_ca(struct proxy *p)
{
    char path[1200];
    agent_key_path(p->cfg->data_dir, "ca.crt", path, sizeof path);
    return rp_tls_read_cert(path, &p->ca);
}

static int start_threads(struct proxy *p)
{
    p->jobs = calloc(WORK_QUEUE_MAX, sizeof *p->jobs);
    if (p->jobs == NULL)
        return rp_err(RP_ENOMEM, "proxy queues");
    for (size_t i = 0; i < WORKERS; i++) {
        if (pthread_create(&p->workers[i], NULL, worker_main, p) != 0)
            return rp_err(RP_ENOMEM, "cannot start worker threads");
        p->n_workers++;
    }
    return agent_events_start(&p->events, "proxy", &p->id, p->addrs, p->n_addrs);
}

static void bg_stop(struct proxy *p)
{
    pthread_mutex_lock(&p->bg_mu);
    p->bg_stop = true;
    pthread_cond_broadcast(&p->bg_cv);
    pthread_mutex_unlock(&p->bg_mu);
    if (p->hb_started)
        pthread_join(p->hb_thread, NULL);
    p->hb_started = false;
    agent_events_stop(p->events);
    p->events = NULL;
}

static void proxy_free(struct proxy *p)
{
    /* First: its connections route through the tunnels and the cache. */
    px_sshjump_stop(p->sshjump);
    if (p->loops_started)
        px_listen_stop(p->listen);
    px_loops_stop(p->loops);
    px_listen_free(p->listen);
    px_tunnels_free(p->tunnels);
    workers_stop(p);
    bg_stop(p);
    agent_follow_stop(p->follow);
    agent_cache_free(p->cache);
    for (size_t i = 0; i < p->n_clients; i++)
        auth_client_free(p->clients[i]);
    if (p->id_loaded)
        agent_ident_free(&p->id);
    X509_free(p->ca);
    free(p->jobs);
    pthread_mutex_destroy(&p->work_mu);
    pthread_cond_destroy(&p->work_cv);
    pthread_mutex_destroy(&p->client_mu);
    pthread_mutex_destroy(&p->bg_mu);
    pthread_cond_destroy(&p->bg_cv);
}

/* A stop hook of the loops: ends the connections they still hold (the modules free
 * their state in on_close). */
static void close_on_stop(void *arg)
{
    struct proxy *p = arg;
    px_tls_close_all(p->loops);
    px_listen_close_all(p->listen);
}

/* Everything up to serving; the message of a failure is in rp_errmsg(). */
static int proxy_start(struct proxy *p)
{
    int rv;
    if ((rv = agent_ident_init_as(&p->id, p->cfg, RP_SYS_PROXY)) != 0)
        return rv;
    p->id_loaded = true;
    snprintf(p->cluster_name, sizeof p->cluster_name, "%s", p->id.cluster_name);
    if ((rv = load_ca(p)) != 0)
        return rv;
    if ((rv = check_auth_version(p)) != 0)
        return rv;
    /* In memory only: nodes heartbeat every minute each, and the cache file would be
     * rewritten for each; a restarted proxy reads the cluster again from auth. */
    if ((rv = agent_cache_open(&p->cache, NULL)) != 0)
        return rv;
    if ((rv = agent_follow_start_kinds(&p->follow, p->cache, &p->id, p->addrs, p->n_addrs, 0,
                                       agent_follow_proxy_kinds, AGENT_FOLLOW_PROXY_N_KINDS)) != 0)
        return rv;
    if ((rv = start_threads(p)) != 0)
        return rv;
    if ((rv = px_loops_new(&p->loops, 0)) != 0 ||
        (rv = px_loops_on_stop(p->loops, close_on_stop, p)) != 0 ||
        (rv = px_tunnels_new(&p->tunnels, p)) != 0 || (rv = px_listen_start(p, &p->listen)) != 0 ||
        (rv = px_loops_start(p->loops)) != 0)
        return rv;
    p->loops_started = true;
    char host_key[1200];
    proxy_key_path(p, "ssh_host_key", host_key, sizeof host_key);
    if ((rv = px_sshjump_start(&p->sshjump, p, p->cfg->proxy_listen_addr, host_key)) != 0)
        return rv;
    presence_addrs(p);
    if (pthread_create(&p->hb_thread, NULL, heartbeat_main, p) != 0)
        return rp_err(RP_ENOMEM, "cannot start the heartbeat");
    p->hb_started = true;
    return 0;
}

int proxy_main(const struct rp_config *cfg)
{
    struct proxy *p = calloc(1, sizeof *p);
    if (p == NULL) {
        fprintf(stderr, "raftport: out of memory\n");
        return 1;
    }
    p->cfg = cfg;
    pthread_mutex_init(&p->work_mu, NULL);
    pthread_cond_init(&p->work_cv, NULL);
    pthread_mutex_init(&p->client_mu, NULL);
    pthread_mutex_init(&p->bg_mu, NULL);
    pthread_cond_init(&p->bg_cv, NULL);
    p->n_addrs = rp_config_auth_addrs(cfg, p->addrs, RP_CONFIG_MAX_AUTH_SERVERS + 1);
    /* Signals go to sigwait below, never to a thread started from here; a peer that
     * closes a socket we write to is an error return, not SIGPIPE. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* Every tunnel and session is a descriptor (two for a session): 10,000 tunnels are
     * far over the usual soft limit of 1024. */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nofile) != 0)
            rp_warn("proxy", "cannot raise the open-file limit to %llu",
                    (unsigned long long)nofile.rlim_max);
    }

    int code = 0;
    if (proxy_start(p) != 0) {
        fprintf(stderr, "raftport: proxy: %s\n", rp_errmsg());
        code = 1;
    } else {
        rp_info("proxy", "proxy %s (%s) of cluster %s serving on %s (tunnels %s), version %s",
                cfg->nodename, p->id.host_id, p->cluster_name, px_listen_web_addr(p->listen),
                p->tunnel_addr, rp_version_self());
        uint64_t renew_at = plan_renewal(p);
        int sig;
        for (;;) {
            struct timespec second = {1, 0};
            sig = sigtimedwait(&set, NULL, &second);
            if (sig > 0)
                break;
            if (rp_now_ms() >= renew_at)
                renew_at = renew(p);
        }
        rp_info("proxy", "signal %d: stopping", sig);
    }
    proxy_free(p);
    free(p);
    return code;
}
