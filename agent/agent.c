/* agent/agent.c: the node agent's process: start, run, renew, stop.
 *
 * Order of start: identity (join once), cache (from disk), following auth, presence,
 * then the SSH server and the recorder (services_start). Stop runs the other way:
 * presence and following stop first (the node leaves no half-written state behind),
 * then services_stop gives open sessions shutdown_grace to end and lets the recorder
 * upload what it holds.
 *
 * Signals: SIGTERM and SIGINT are blocked in every thread and taken by the main
 * thread with sigtimedwait, which also wakes once a second to renew certificates when
 * they reach 2/3 of their lifetime (+- jitter) or when a cert_authority changed (a CA
 * rotation: the new host CA must sign our host certificate). */
#include "agent/agent.h"

#include <errno.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "agent/recorder.h"
#include "agent/sshd.h"
#include "agent/tunnel.h"
#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

struct agent_run {
    const struct rp_config *cfg;
    const char *version;
    struct agent_ident id;
    struct agent_cache *cache;
    struct agent_follow *follow;
    struct agent_presence *presence;
    struct agent_events *events;
    struct agent_authority authority;         /* over cache; borrowed by the SSH server */
    struct agent_recorder *services_recorder; /* set while the services run */
    const char *addrs[RP_CONFIG_MAX_AUTH_SERVERS + 1];
    size_t n_addrs;
    /* The cached CAs' digest, updated from the cache's thread after each change; a
     * difference from a known digest asks the main loop to renew. */
    pthread_mutex_t ca_mu;
    unsigned char ca_digest[32];
    bool ca_digest_known;
    atomic_bool ca_changed;
    uint64_t renew_at_ms; /* wall clock */
    /* Recordings: one client, used by the recorder's upload thread (agent_upload). */
    pthread_mutex_t upload_mu;
    struct auth_client *upload_client;
    uint64_t upload_generation;
};

/* ---- recordings ---------------------------------------------------------------------- */

/* The upload function of agent/recorder.h: one rec_put {sid, seq, data, last, meta?}.
 * Returns 0 when auth stored the chunk (or had it already), else the error, for the
 * recorder to retry later. Called from the recorder's thread. */
int agent_upload(void *arg, const char *sid, uint64_t seq, const void *data, size_t len, bool last,
                 const void *meta, size_t meta_len)
{
    struct agent_run *a = arg;
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, meta_len ? 6 : 5);
    rp_mp_kv_str(&pk, "m", "rec_put");
    rp_mp_kv_str(&pk, "sid", sid);
    rp_mp_kv_u64(&pk, "seq", seq);
    rp_mp_pack_str(&pk, "data");
    msgpack_pack_bin(&pk, len);
    msgpack_pack_bin_body(&pk, data, len);
    rp_mp_kv_bool(&pk, "last", last);
    if (meta_len)
        rp_mp_kv_raw(&pk, "meta", meta, meta_len);
    pthread_mutex_lock(&a->upload_mu);
    uint64_t gen;
    SSL_CTX *ctx = agent_ident_ctx(&a->id, &gen);
    int rv = 0;
    if (a->upload_client == NULL || gen != a->upload_generation) {
        auth_client_free(a->upload_client);
        a->upload_client = NULL;
        if ((rv = auth_client_new(&a->upload_client, ctx, a->addrs, a->n_addrs)) == 0)
            auth_client_set_timeout(a->upload_client, 15000);
        a->upload_generation = gen;
    }
    SSL_CTX_free(ctx);
    if (rv == 0) {
        msgpack_unpacked resp;
        msgpack_unpacked_init(&resp);
        rv = auth_client_call(a->upload_client, req.data, req.len, &resp);
        msgpack_unpacked_destroy(&resp);
    }
    pthread_mutex_unlock(&a->upload_mu);
    rp_buf_free(&req);
    return rv;
}

/* ---- the SSH server and the recorder -------------------------------------------------
 *
 * services_start: the spool directory (0700), the recorder over it (uploading through
 * agent_upload), then the SSH server, which records interactive sessions through the
 * table below and reports audit events into the event queue (agent_emit), so a session
 * never waits for auth. services_stop runs after presence and following stopped and
 * before the audit sender stops: sessions get the grace period to end, then the
 * recorder uploads what they left in the spool. */
struct services {
    struct agent_sshd *sshd;
    struct agent_tunnels *tunnels; /* proxy mode: reverse tunnels into sshd */
    struct agent_recorder *recorder;
    struct agent_sshd_recording rec_table;
};

static int rec_open(void *arg, const struct agent_sshd_rec_meta *m, void **rec)
{
    struct agent_run *a = arg;
    struct agent_rec_meta rm = {.sid = m->sid,
                                .user = m->user,
                                .login = m->login,
                                .server_id = a->id.host_id,
                                .hostname = m->hostname,
                                .term = m->term && m->term[0] ? m->term : NULL,
                                .shell = m->shell,
                                .cols = m->cols > 0 ? (unsigned)m->cols : 80,
                                .rows = m->rows > 0 ? (unsigned)m->rows : 24,
                                .start_ms = m->start_ms,
                                .interactive = m->interactive,
                                .command = m->command,
                                .record_input = m->record_input};
    return agent_rec_open(a->services_recorder, &rm, (struct agent_rec **)rec);
}
static int rec_output(void *rec, const void *p, size_t n)
{
    return agent_rec_output(rec, p, n);
}
static int rec_input(void *rec, const void *p, size_t n)
{
    return agent_rec_input(rec, p, n);
}
static int rec_resize(void *rec, int cols, int rows)
{
    return agent_rec_resize(rec, cols > 0 ? (unsigned)cols : 1, rows > 0 ? (unsigned)rows : 1);
}
static int rec_close(void *rec)
{
    return agent_rec_close(rec);
}

/* The reverse tunnels' way into the SSH server (agent/tunnel.h). */
static int serve_tunnelled(void *arg, int fd, const char *peer)
{
    return agent_sshd_serve_fd(arg, fd, peer);
}

static int services_start(struct agent_run *a, struct services *sv)
{
    memset(sv, 0, sizeof *sv);
    char spool[1100], host_key[1100];
    snprintf(spool, sizeof spool, "%s/spool", a->cfg->data_dir);
    if (mkdir(spool, 0700) != 0 && errno != EEXIST)
        return rp_err(RP_EIO, "cannot create the recordings spool %s: %s", spool, strerror(errno));
    int rv = agent_recorder_new(&sv->recorder, spool, a->cfg->spool_max_size, agent_upload, a);
    if (rv != 0)
        return rv;
    a->services_recorder = sv->recorder;
    sv->rec_table = (struct agent_sshd_recording){.arg = a,
                                                  .open = rec_open,
                                                  .output = rec_output,
                                                  .input = rec_input,
                                                  .resize = rec_resize,
                                                  .close = rec_close};
    agent_key_path(a->cfg->data_dir, "ssh_host_key", host_key, sizeof host_key);
    /* In proxy mode the node listens on TCP only when the file asks for it. */
    bool tunnel_only = a->cfg->proxy_server != NULL && !a->cfg->ssh_listen_addr_set;
    struct agent_sshd_opts o = {.listen_addr = a->cfg->ssh_listen_addr,
                                .no_listener = tunnel_only,
                                .host_key_path = host_key,
                                .host_id = a->id.host_id,
                                .nodename = a->cfg->nodename,
                                .authority = &a->authority,
                                .recording = &sv->rec_table,
                                .emit = agent_emit,
                                .emit_arg = a->events,
                                .accept_env = (const char *const *)a->cfg->accept_env,
                                .n_accept_env = a->cfg->n_accept_env,
                                .auth_deadline_ms = a->cfg->auth_deadline_ms};
    if ((rv = agent_sshd_start(&sv->sshd, &o)) != 0) {
        agent_recorder_free(sv->recorder);
        sv->recorder = NULL;
        a->services_recorder = NULL;
        return rv;
    }
    if (a->cfg->proxy_server != NULL) {
        /* A tunnel to the proxy named in the configuration at first; then one to each
         * proxy of the cluster, as listed through it. */
        const char *proxies[1] = {a->cfg->proxy_server};
        struct agent_tunnels_opts to = {.id = &a->id,
                                        .serve = serve_tunnelled,
                                        .serve_arg = sv->sshd,
                                        .keepalive_ms = a->cfg->keep_alive_interval_ms,
                                        .proxies = proxies,
                                        .n_proxies = 1,
                                        .discover_via = a->cfg->proxy_server};
        if ((rv = agent_tunnels_start(&sv->tunnels, &to)) != 0) {
            agent_sshd_stop(sv->sshd, 0);
            sv->sshd = NULL;
            agent_recorder_free(sv->recorder);
            sv->recorder = NULL;
            a->services_recorder = NULL;
            return rv;
        }
    }
    if (tunnel_only)
        rp_info("agent", "SSH service reachable through reverse tunnels to %s only",
                a->cfg->proxy_server);
    else
        rp_info("agent", "SSH service listening on %s", a->cfg->ssh_listen_addr);
    return 0;
}

static void services_stop(struct agent_run *a, struct services *sv, uint64_t grace_ms)
{
    uint64_t deadline = rp_mono_ms() + grace_ms;
    /* Sessions that came through a tunnel carry their bytes through it: the tunnels
     * stay up while the SSH server gives sessions their grace (refusing new ones), and
     * close after. */
    if (sv->sshd)
        agent_sshd_stop(sv->sshd, grace_ms);
    agent_tunnels_stop(sv->tunnels);
    if (sv->recorder) {
        /* Whatever the sessions took of the grace, the uploads get a few seconds: what
         * stays in the spool is sent after the next start anyway. */
        uint64_t floor = rp_mono_ms() + 5000;
        if (agent_recorder_flush(sv->recorder, deadline > floor ? deadline : floor) != 0)
            rp_warn("agent",
                    "recordings not uploaded before stopping stay in the spool and are sent "
                    "after the next start: %s",
                    rp_errmsg());
        agent_recorder_free(sv->recorder);
    }
    a->services_recorder = NULL;
    memset(sv, 0, sizeof *sv);
}

/* ---- renewal ---------------------------------------------------------------------- */

uint64_t agent_renew_time(uint64_t tls_after, uint64_t tls_before, uint64_t ssh_after,
                          uint64_t ssh_before, uint64_t draw)
{
    uint64_t tl = tls_before > tls_after ? tls_before - tls_after : 0;
    uint64_t sl = ssh_before > ssh_after ? ssh_before - ssh_after : 0;
    bool tls_first = tl != 0 && (sl == 0 || tl < sl);
    uint64_t after = tls_first ? tls_after : ssh_after;
    uint64_t life = tls_first ? tl : sl;
    uint64_t spread = life / 15; /* +-1/30 of the lifetime */
    return after + life / 3 * 2 - spread / 2 + (spread ? draw % spread : 0);
}

static void plan_renewal(struct agent_run *a)
{
    pthread_mutex_lock(&a->id.mu);
    a->renew_at_ms =
        agent_renew_time(a->id.tls_not_before_ms, a->id.tls_not_after_ms, a->id.ssh_valid_after_ms,
                         a->id.ssh_valid_before_ms, rp_rand_u64());
    pthread_mutex_unlock(&a->id.mu);
    char when[40];
    rp_format_time(a->renew_at_ms, when, sizeof when);
    rp_info("agent", "host certificates are renewed at %s", when);
}

/* SHA-256 of the cached cert_authority resources; false if none is cached. */
static bool ca_digest(struct agent_run *a, unsigned char out[32])
{
    static const char *names[2] = {"host", "user"};
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    bool any = false;
    if (md == NULL || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(md);
        return false;
    }
    for (int i = 0; i < 2; i++) {
        void *res = NULL;
        size_t len = 0;
        if (agent_cache_get(a->cache, "cert_authority", names[i], &res, &len) == 0) {
            EVP_DigestUpdate(md, names[i], 5);
            EVP_DigestUpdate(md, res, len);
            any = true;
            free(res);
        }
    }
    unsigned int n = 0;
    EVP_DigestFinal_ex(md, out, &n);
    EVP_MD_CTX_free(md);
    return any;
}

/* Called by the cache after each change it applied (from the follower's thread). */
static void on_cache_change(void *arg)
{
    struct agent_run *a = arg;
    unsigned char d[32];
    if (!ca_digest(a, d))
        return;
    pthread_mutex_lock(&a->ca_mu);
    if (a->ca_digest_known && memcmp(d, a->ca_digest, 32) != 0)
        atomic_store(&a->ca_changed, true);
    memcpy(a->ca_digest, d, 32);
    a->ca_digest_known = true;
    pthread_mutex_unlock(&a->ca_mu);
}

static void renew(struct agent_run *a, const char *why)
{
    SSL_CTX *ctx = agent_ident_ctx(&a->id, NULL);
    struct auth_client *c = NULL;
    int rv = auth_client_new(&c, ctx, a->addrs, a->n_addrs);
    SSL_CTX_free(ctx);
    if (rv == 0) {
        auth_client_set_timeout(c, 10000);
        rv = agent_ident_renew(&a->id, a->cfg, c);
    }
    auth_client_free(c);
    if (rv != 0) {
        /* Tried again a minute later (+- jitter), until it works. */
        a->renew_at_ms = rp_now_ms() + rp_jitter_ms(60000);
        rp_warn("agent", "%s: %s; trying again later", why, rp_errmsg());
        return;
    }
    rp_info("agent", "%s: done", why);
    plan_renewal(a);
    agent_presence_kick(a->presence);
}

/* The version rule towards auth, when an auth server answers within a few seconds: a
 * node whose auth servers are all down still starts (it serves from its cache), and
 * meets the rule through its certificates' renewal and following later. */
static int check_auth_version(struct agent_run *a)
{
    SSL_CTX *ctx = agent_ident_ctx(&a->id, NULL);
    struct auth_client *c = NULL;
    struct auth_ping ping;
    int rv = auth_client_new(&c, ctx, a->addrs, a->n_addrs);
    SSL_CTX_free(ctx);
    if (rv == 0) {
        auth_client_set_timeout(c, 5000);
        rv = auth_client_ping(c, &ping);
    }
    auth_client_free(c);
    if (rv != 0) {
        rp_warn("agent", "no auth server answered (%s): the version rule is not checked now",
                rp_errmsg());
        return 0;
    }
    return agent_version_gate("node", ping.version, a->cfg->skip_version_check);
}

static void check_renewal(struct agent_run *a)
{
    if (atomic_exchange(&a->ca_changed, false))
        renew(a, "a certificate authority changed (CA rotation): renewing the host certificates");
    if (rp_now_ms() >= a->renew_at_ms)
        renew(a, "the host certificates reached 2/3 of their lifetime: renewing them");
}

/* ---- main ------------------------------------------------------------------------------ */

int agent_main(const struct rp_config *cfg, const char *version)
{
    struct agent_run *a = calloc(1, sizeof *a);
    struct services sv = {0};
    sigset_t sigs;
    int rv, code = 1;
    if (a == NULL) {
        fprintf(stderr, "raftport: out of memory\n");
        return 1;
    }
    a->cfg = cfg;
    a->version = version;
    atomic_init(&a->ca_changed, false);
    pthread_mutex_init(&a->upload_mu, NULL);
    pthread_mutex_init(&a->ca_mu, NULL);
    a->n_addrs = rp_config_auth_addrs(cfg, a->addrs, RP_CONFIG_MAX_AUTH_SERVERS + 1);

    /* Every thread started from here on inherits the mask: only sigtimedwait below
     * takes the stop signals. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    if ((rv = agent_ident_init(&a->id, cfg)) != 0) {
        fprintf(stderr, "raftport: %s\n", rp_errmsg());
        goto out_ident;
    }
    rp_info("agent", "node %s (%s) of cluster %s", cfg->nodename, a->id.host_id,
            a->id.cluster_name);
    if ((rv = check_auth_version(a)) != 0) {
        fprintf(stderr, "raftport: %s\n", rp_errmsg());
        goto out_ident;
    }
    rv = agent_cache_open(&a->cache, cfg->data_dir);
    if (a->cache == NULL) {
        fprintf(stderr, "raftport: %s\n", rp_errmsg());
        goto out_ident;
    }
    if (rv != 0)
        rp_warn("agent", "the cache on disk is not used: %s", rp_errmsg());
    else if (agent_cache_from_disk(a->cache))
        rp_info("agent", "loaded the cache from disk: %zu resources at revision %llu",
                agent_cache_count(a->cache, NULL), (unsigned long long)agent_cache_rev(a->cache));
    a->ca_digest_known = ca_digest(a, a->ca_digest);
    a->authority = agent_cache_authority(a->cache);
    a->authority.on_change(a->authority.arg, on_cache_change, a);

    if ((rv = agent_events_start(&a->events, "agent", &a->id, a->addrs, a->n_addrs)) != 0 ||
        (rv = agent_follow_start(&a->follow, a->cache, &a->id, a->addrs, a->n_addrs,
                                 AGENT_MAX_BACKOFF_MS)) != 0 ||
        (rv = agent_presence_start(&a->presence, cfg, &a->id, a->cache, version)) != 0 ||
        (rv = services_start(a, &sv)) != 0) {
        fprintf(stderr, "raftport: starting the node agent: %s\n", rp_errmsg());
        goto out_stop;
    }
    plan_renewal(a);
    rp_info("agent", "node agent running");

    int sig = 0;
    while (sig <= 0) {
        struct timespec ts = {1, 0};
        sig = sigtimedwait(&sigs, NULL, &ts);
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            rp_error("agent", "sigtimedwait: %s", strerror(errno));
            break;
        }
        if (sig <= 0)
            check_renewal(a);
    }
    rp_info("agent", "%s: stopping (sessions get %llu ms to end)",
            sig == SIGINT ? "SIGINT" : "SIGTERM", (unsigned long long)cfg->shutdown_grace_ms);
    code = 0;
out_stop:
    agent_presence_stop(a->presence);
    agent_follow_stop(a->follow);
    services_stop(a, &sv, cfg->shutdown_grace_ms);
    agent_events_stop(a->events);
    auth_client_free(a->upload_client);
    agent_cache_free(a->cache);
    if (code == 0)
        rp_info("agent", "stopped");
out_ident:
    agent_ident_free(&a->id);
    pthread_mutex_destroy(&a->upload_mu);
    pthread_mutex_destroy(&a->ca_mu);
    free(a);
    return code;
}
