/* proxy/web.c: the web API on a TLS connection the listener handed over ("http/1.1" or
 * no ALPN): HTTP/1.1 with keep-alive, one request at a time.
 *
 * Everything about the connection happens on its loop's thread. A request that needs
 * auth (a login, an invite) or real CPU (the node list, filtered by the caller's roles)
 * goes to a proxy worker (proxy_run_blocking); the worker posts the answer back to the
 * loop. The connection may close meanwhile: its state is counted (one reference for
 * the open connection, one per job in flight, both only touched on the loop), and a
 * job coming back to a closed connection just drops its answer.
 *
 * Bounds per connection: the parser's (8 KiB head, 64 KiB body, 40 headers), one
 * request in progress (reading pauses while a worker answers), answers queued up to
 * WEB_WRITE_HIGH before reading pauses, and PX_WEB_IDLE_MS without a complete
 * request closes it. Requests without a client certificate are rate limited per
 * source address (20 a minute, bursts of 40), as Teleport limits its web API. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cache.h"
#include "lib/connlimit.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ratelimit.h"
#include "lib/util.h"
#include "lib/version.h"
#include "proxy/conn.h"
#include "proxy/proxy.h"
#include "proxy/tunnel.h"
#include "proxy/web.h"

#define WEB_READ_CHUNK 16384
#define WEB_READS_PER_CALL 4
#define WEB_LINGER_MS 2000
#define WEB_LINGER_BYTES (256u << 10)
#define WEB_WRITE_HIGH (1u << 20) /* queued answer bytes above which reading pauses */
#define WEB_RATE_CAPACITY 65536   /* source addresses tracked */
#define WEB_RATE_REPORT_MS 60000  /* one throttling event per address per minute */

struct web_conn {
    struct px_tls *c; /* NULL once the connection closed */
    struct px_loop *loop;
    unsigned refs; /* the open connection + jobs in flight; loop thread only */
    struct px_http http;
    struct rp_buf in; /* bytes read, from in_off on not yet taken by the parser */
    size_t in_off;
    struct px_timer idle;
    bool busy;     /* a worker is answering the current request */
    bool closing;  /* the last answer is out; no more requests */
    bool draining; /* refused: the answer is out, what the client still sends is dropped */
    size_t drained;
    char addr[64]; /* the client's "ip:port" */
    char ip[64];   /* the rate limit's key */
    bool counted;  /* holds a place in the connection caps (no client certificate) */
    struct rp_addr_key key;
};

/* ---- connection caps --------------------------------------------------------------------- */

/* Open web connections without a client certificate, per source address and in all,
 * across every loop: past the handshake, a stranger's idle keep-alive connections are
 * still memory the proxy holds (the handshake caps of proxy/listen.c end there). */
static pthread_mutex_t caps_mu = PTHREAD_MUTEX_INITIALIZER;
static struct rp_addr_counts caps;
static size_t caps_total;
static bool caps_ready;

/* Takes a place for @w; false (and logged once a minute per address) when a cap is
 * reached. */
static bool caps_take(struct web_conn *w)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
    socklen_t len = 0;
    if (inet_pton(AF_INET, w->ip, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        len = sizeof *s4;
    } else if (inet_pton(AF_INET6, w->ip, &s6->sin6_addr) == 1) {
        s6->sin6_family = AF_INET6;
        len = sizeof *s6;
    }
    rp_addr_key_from_sockaddr((struct sockaddr *)&ss, len, &w->key);
    bool ok = false;
    pthread_mutex_lock(&caps_mu);
    if (!caps_ready && rp_addr_counts_init(&caps, PX_WEB_CONNS_MAX) == 0)
        caps_ready = true;
    if (caps_ready && caps_total < PX_WEB_CONNS_MAX &&
        rp_addr_counts_get(&caps, &w->key) < PX_WEB_CONNS_PER_ADDR &&
        rp_addr_counts_add(&caps, &w->key) == 0) {
        caps_total++;
        ok = true;
    }
    pthread_mutex_unlock(&caps_mu);
    w->counted = ok;
    return ok;
}

static void caps_give(struct web_conn *w)
{
    if (!w->counted)
        return;
    pthread_mutex_lock(&caps_mu);
    rp_addr_counts_remove(&caps, &w->key);
    caps_total--;
    pthread_mutex_unlock(&caps_mu);
    w->counted = false;
}

/* ---- rate limit and audit --------------------------------------------------------------- */

static struct rp_ratelimit *limiter;
static pthread_once_t limiter_once = PTHREAD_ONCE_INIT;
static _Atomic uint64_t last_sweep_ms;

static void limiter_init(void)
{
    struct rp_ratelimit_config cfg = {
        .average = PX_WEB_RATE_AVERAGE,
        .burst = PX_WEB_RATE_BURST,
        .period_ms = PX_WEB_RATE_PERIOD_MS,
        .capacity = WEB_RATE_CAPACITY,
        .report_ms = WEB_RATE_REPORT_MS,
    };
    if (rp_ratelimit_new(&cfg, &limiter) != 0)
        rp_error("proxy",
                 "web API rate limit table: %s (requests without a certificate are "
                 "refused)",
                 rp_errmsg());
}

/* One audit event through proxy_emit: the proxy's own refusals only (auth audits
 * every login it sees). @user may be "" (not known). */
static void emit_refusal(struct proxy *p, const char *type, const char *user, const char *addr,
                         const char *error, const char *limit, uint64_t count)
{
    struct rp_buf ev;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&ev);
    rp_mp_packer_init(&pk, &ev);
    /* The user name comes from an anonymous body: auth refuses control characters in
     * indexed fields (and would refuse the whole batch), so they become '?'. */
    char who[256] = "";
    for (size_t i = 0; user != NULL && user[i] != '\0' && i + 1 < sizeof who; i++) {
        unsigned char ch = (unsigned char)user[i];
        who[i] = ch < 0x20 || ch == 0x7f ? '?' : (char)ch;
        who[i + 1] = '\0';
    }
    user = who;
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "event", type);
    rp_mp_map_u64(&m, "time", rp_now_ms());
    if (user != NULL && user[0] != '\0')
        rp_mp_map_str(&m, "user", user);
    rp_mp_map_str(&m, "method", "local");
    rp_mp_map_bool(&m, "success", false);
    rp_mp_map_str(&m, "error", error);
    rp_mp_map_str(&m, "addr.remote", addr);
    if (limit != NULL) {
        rp_mp_map_str(&m, "limit", limit);
        rp_mp_map_u64(&m, "count", count);
    }
    rp_mp_map_end(&m);
    if (proxy_emit(p, ev.data, ev.len) != 0)
        rp_warn("proxy", "audit event %s for %s not queued: %s", type, addr, rp_errmsg());
    rp_buf_free(&ev);
}

static const char throttled_msg[] = "over the proxy's limit for requests without a client "
                                    "certificate (20 a minute per address, bursts of 40)";

struct sweep_ctx {
    struct proxy *p;
};

static void report_throttled(void *arg, const char *key, uint64_t count)
{
    struct sweep_ctx *s = arg;
    emit_refusal(s->p, "user.login.throttled", NULL, key[0] ? key : "(evicted addresses)",
                 throttled_msg, "proxy_address", count);
}

/* 0 if a request from @w may go on; RP_EBUSY with @a set to 429 otherwise. */
static int rate_check(struct web_conn *w, struct px_web_answer *a)
{
    pthread_once(&limiter_once, limiter_init);
    if (limiter == NULL) {
        px_web_answer_error(a, 503, "the proxy cannot rate limit requests now: try again");
        return RP_EBUSY;
    }
    uint64_t now = rp_mono_ms();
    struct rp_ratelimit_verdict v;
    if (rp_ratelimit_take(limiter, w->ip, now, &v) != 0)
        v.allowed = true; /* an empty or oversized key cannot come from a socket address */
    struct sweep_ctx s = {w->c->proxy};
    if (v.report_now > 0)
        report_throttled(&s, w->ip, v.report_now);
    uint64_t last = last_sweep_ms;
    if (now - last >= 1000 && atomic_compare_exchange_strong(&last_sweep_ms, &last, now))
        rp_ratelimit_sweep(limiter, now, report_throttled, &s);
    if (v.allowed)
        return 0;
    px_web_answer_error(a, 429, "too many requests from %s: %s", w->ip, throttled_msg);
    a->retry_after_s = (unsigned)((v.retry_after_ms + 999) / 1000);
    if (a->retry_after_s == 0)
        a->retry_after_s = 1;
    return RP_EBUSY;
}

/* ---- connection state --------------------------------------------------------------------- */

static void conn_unref(struct web_conn *w)
{
    if (--w->refs > 0)
        return;
    px_http_free(&w->http);
    if (w->in.data)
        OPENSSL_cleanse(w->in.data, w->in.cap); /* may hold a password */
    rp_buf_free(&w->in);
    free(w);
}

static void on_idle(struct px_timer *t)
{
    struct web_conn *w = (struct web_conn *)((char *)t - offsetof(struct web_conn, idle));
    if (w->c == NULL)
        return;
    if (w->busy) { /* a worker is answering: its answer re-arms the timer */
        px_timer_arm(w->loop, &w->idle, PX_WEB_IDLE_MS, on_idle);
        return;
    }
    w->closing = true;
    px_tls_close(w->c);
}

/* The end of a refused connection's grace period (see linger). */
static void on_linger_end(struct px_timer *t)
{
    struct web_conn *w = (struct web_conn *)((char *)t - offsetof(struct web_conn, idle));
    if (w->c != NULL)
        px_tls_close(w->c);
}

/* After refusing a request the client may still be sending (the rest of a head, a body
 * declared too large): closing at once would reset the connection, and the client's
 * stack would drop our answer with it. So the answer goes out, what arrives is read and
 * dropped for a moment (WEB_LINGER_MS, at most WEB_LINGER_BYTES), then the connection
 * closes. */
static void linger(struct web_conn *w)
{
    w->closing = true;
    w->draining = true;
    px_tls_pause_reading(w->c, false);
    px_timer_arm(w->loop, &w->idle, WEB_LINGER_MS, on_linger_end);
}

static void send_answer(struct web_conn *w, struct px_web_answer *a)
{
    struct rp_buf out;
    rp_buf_init(&out);
    if (!w->http.req.keep_alive)
        a->close = true;
    if (px_web_answer_format(a, &out) != 0 || px_tls_write(w->c, out.data, out.len) != 0)
        a->close = true;
    rp_buf_free(&out);
    /* The body may hold a password; an idle connection keeps no buffer. */
    if (w->http.req.body.data)
        OPENSSL_cleanse(w->http.req.body.data, w->http.req.body.cap);
    rp_buf_free(&w->http.req.body);
    if (a->close) {
        if (a->status >= 400 && w->http.state == PX_HTTP_ERROR) {
            linger(w);
            return;
        }
        w->closing = true;
        px_tls_close(w->c);
        return;
    }
    px_timer_arm(w->loop, &w->idle, PX_WEB_IDLE_MS, on_idle);
    if (px_tls_pending(w->c) > WEB_WRITE_HIGH)
        px_tls_pause_reading(w->c, true); /* on_drained resumes */
}

/* ---- jobs on workers ------------------------------------------------------------------------ */

struct web_job {
    struct web_conn *w; /* a reference; only touched again on the loop */
    struct px_loop *loop;
    struct proxy *p;
    enum px_web_endpoint ep;
    struct rp_buf req; /* the auth request (login, invite): holds a password */
    char user[160];
    char addr[64];
    struct rp_identity ident; /* nodes: the caller */
    struct px_web_answer ans;
};

static void job_free(struct web_job *j)
{
    if (j->req.data)
        OPENSSL_cleanse(j->req.data, j->req.cap);
    rp_buf_free(&j->req);
    rp_identity_free(&j->ident);
    px_web_answer_free(&j->ans);
    free(j);
}

static void process(struct web_conn *w);

/* On the loop: the worker's answer comes back. */
static void job_done(void *arg)
{
    struct web_job *j = arg;
    struct web_conn *w = j->w;
    if (w->c != NULL) {
        w->busy = false;
        send_answer(w, &j->ans);
        if (w->c != NULL && !w->closing) {
            px_http_next(&w->http);
            px_tls_pause_reading(w->c, px_tls_pending(w->c) > WEB_WRITE_HIGH);
            process(w);
        }
    }
    job_free(j);
    conn_unref(w);
}

static void cache_res(struct proxy *p, const char *kind, const char *name, void **res, size_t *len)
{
    *res = NULL;
    *len = 0;
    struct agent_cache *cache = proxy_cache(p);
    if (cache == NULL || agent_cache_get(cache, kind, name, res, len) != 0) {
        *res = NULL;
        *len = 0;
    }
}

static void do_auth_call(struct web_job *j, const char *method)
{
    struct rp_buf ans;
    msgpack_unpacked u;
    rp_buf_init(&ans);
    int rv = proxy_auth_call(j->p, method, j->req.data, j->req.len, &ans, PX_WEB_AUTH_TIMEOUT_MS);
    OPENSSL_cleanse(j->req.data, j->req.cap);
    if (rv != 0) {
        px_web_auth_failure(rv, rp_errmsg(), &j->ans);
        goto out;
    }
    if (rp_mp_parse(ans.data, ans.len, &u) != 0) {
        px_web_answer_error(&j->ans, 503, "the auth service's answer did not parse");
        goto out;
    }
    bool ok = false;
    rp_mp_get_bool(&u.data, "ok", &ok);
    if (!ok) {
        /* An error answer left for us to read: its code names the RP_E* error. */
        const char *code = "", *msg = "";
        size_t cn = 0, mn = 0;
        rp_mp_get_str(&u.data, "code", &code, &cn);
        rp_mp_get_str(&u.data, "error", &msg, &mn);
        char cbuf[32], mbuf[400];
        snprintf(cbuf, sizeof cbuf, "%.*s", (int)cn, code);
        snprintf(mbuf, sizeof mbuf, "%.*s", (int)mn, msg);
        int e = RP_EIO;
        for (int k = RP_ENOMEM; k >= RP_EAGAIN; k--)
            if (strcmp(rp_strerror(k), cbuf) == 0)
                e = k;
        px_web_auth_failure(e, mbuf, &j->ans);
    } else if (j->ep == PX_WEB_INVITE_INFO) {
        px_web_invite_info_answer(&u.data, &j->ans);
    } else if (j->ep == PX_WEB_LOGIN) {
        void *host_ca, *user_ca;
        size_t host_n, user_n;
        cache_res(j->p, "cert_authority", "host", &host_ca, &host_n);
        cache_res(j->p, "cert_authority", "user", &user_ca, &user_n);
        px_web_login_answer(&u.data, j->user, proxy_cluster_name(j->p), host_ca, host_n, user_ca,
                            user_n, &j->ans);
        free(host_ca);
        free(user_ca);
    } else {
        px_web_answer_json(&j->ans, "{}", 2);
    }
    msgpack_unpacked_destroy(&u);
out:
    if (ans.data)
        OPENSSL_cleanse(ans.data, ans.cap); /* a fresh certificate, not a secret, but cheap */
    rp_buf_free(&ans);
}

/* The proxy's view for px_web_nodes: roles, traits and locks from its cache, tunnels
 * live. */
struct nodes_view {
    struct agent_cache *cache;
    struct proxy *p;
    const char *user;
};

/* The user's roles expanded with the user's traits as the cache has them now (the X.509
 * certificate carries none): a user deleted since the login sees nothing. */
static int view_role_set(void *arg, const char *const *roles, size_t n_roles, struct rbac_set **out,
                         char *why, size_t why_len)
{
    struct nodes_view *v = arg;
    void *ures = NULL;
    size_t ulen = 0;
    msgpack_unpacked uu;
    if (agent_cache_get(v->cache, "user", v->user, &ures, &ulen) != 0 ||
        rp_mp_parse(ures, ulen, &uu) != 0) {
        free(ures);
        snprintf(why, why_len, "user '%s' is not known to the cluster (deleted?)", v->user);
        return RP_EDENIED;
    }
    const msgpack_object *traits = rp_mp_get(rp_mp_get(&uu.data, "spec"), "traits");
    int rv = agent_cache_role_set(v->cache, roles, n_roles, traits, out, why, why_len);
    msgpack_unpacked_destroy(&uu);
    free(ures);
    return rv;
}

static int view_lock_check(void *arg, const char *user, const char *const *roles, size_t n_roles,
                           const char *login, const char *host_id, char *why, size_t why_len)
{
    struct nodes_view *v = arg;
    return agent_cache_lock_check(v->cache, user, roles, n_roles, login, host_id, rp_now_ms(), why,
                                  why_len);
}

static bool view_has_tunnel(void *arg, const char *host_id)
{
    struct nodes_view *v = arg;
    struct px_tunnels *t = proxy_tunnels(v->p);
    return t != NULL && px_tunnels_has(t, host_id);
}

/* Copies of the cached node resources (agent_cache_each lends them under the cache's
 * lock, so they are copied out and checked after). */
struct node_copies {
    struct rp_buf *res;
    size_t n, cap;
};

static int copy_node(void *arg, const char *name, const void *res, size_t len)
{
    struct node_copies *nc = arg;
    (void)name;
    if (nc->n == nc->cap) {
        size_t cap = nc->cap ? nc->cap * 2 : 64;
        struct rp_buf *v = realloc(nc->res, cap * sizeof *v);
        if (v == NULL)
            return rp_err(RP_ENOMEM, "listing nodes");
        nc->res = v;
        nc->cap = cap;
    }
    rp_buf_init(&nc->res[nc->n]);
    if (rp_buf_append(&nc->res[nc->n], res, len) != 0)
        return rp_err(RP_ENOMEM, "listing nodes");
    nc->n++;
    return 0;
}

/* GET /webapi/nodes on a worker: the cached nodes, filtered for the caller. */
static void do_nodes(struct web_job *j)
{
    struct agent_cache *cache = proxy_cache(j->p);
    struct node_copies nc = {0};
    msgpack_unpacked *each = NULL;
    const msgpack_object **nodes = NULL;
    size_t n = 0;
    if (cache == NULL) {
        px_web_answer_error(&j->ans, 503, "the proxy has not loaded the cluster's state yet");
        return;
    }
    if (agent_cache_each(cache, "node", copy_node, &nc) != 0) {
        px_web_answer_error(&j->ans, 503, "%s", rp_errmsg());
        goto out;
    }
    nodes = calloc(nc.n ? nc.n : 1, sizeof *nodes);
    each = calloc(nc.n ? nc.n : 1, sizeof *each);
    if (nodes == NULL || each == NULL) {
        px_web_answer_error(&j->ans, 503, "out of memory listing nodes");
        goto out;
    }
    for (size_t i = 0; i < nc.n; i++) {
        if (rp_mp_parse(nc.res[i].data, nc.res[i].len, &each[n]) != 0)
            continue;
        nodes[n] = &each[n].data;
        n++;
    }
    struct nodes_view view = {cache, j->p, j->ident.name};
    struct px_web_nodes_src src = {
        .arg = &view,
        .role_set = view_role_set,
        .lock_check = view_lock_check,
        .has_tunnel = view_has_tunnel,
    };
    px_web_nodes(&src, &j->ident, nodes, n, &j->ans);
out:
    for (size_t i = 0; each != NULL && i < n; i++)
        msgpack_unpacked_destroy(&each[i]);
    free(each);
    free(nodes);
    for (size_t i = 0; i < nc.n; i++)
        rp_buf_free(&nc.res[i]);
    free(nc.res);
}

static void job_run(void *arg)
{
    struct web_job *j = arg;
    switch (j->ep) {
    case PX_WEB_LOGIN:
        do_auth_call(j, "authenticate");
        break;
    case PX_WEB_INVITE_REDEEM:
        do_auth_call(j, "invite_redeem");
        break;
    case PX_WEB_INVITE_INFO:
        do_auth_call(j, "invite_info");
        break;
    case PX_WEB_NODES:
        do_nodes(j);
        break;
    default:
        px_web_answer_error(&j->ans, 500, "no worker for this endpoint");
        break;
    }
    if (px_loop_post(j->loop, job_done, j) != 0) {
        /* The loop is stopping: the connection goes with it (its state is left to
         * the process's exit, as the loop's other posted work is). */
        job_free(j);
    }
}

/* ---- requests ------------------------------------------------------------------------------ */

static void fill_info(struct proxy *p, struct px_web_info *info)
{
    const struct rp_config *cfg = proxy_config(p);
    info->cluster_name = proxy_cluster_name(p);
    info->server_version = rp_version_self();
    info->listen_addr = cfg->proxy_listen_addr;
    info->tunnel_listen_addr = cfg->tunnel_listen_addr;
    info->web_listen_addr = cfg->web_listen_addr;
    info->public_addr = cfg->proxy_public_addr;
    info->ssh_public_addr = NULL;
}

/* Starts a job for the current request; false (with @a set) if it could not. */
static bool start_job(struct web_conn *w, struct web_job *j, struct px_web_answer *a)
{
    j->w = w;
    j->loop = w->loop;
    j->p = w->c->proxy;
    snprintf(j->addr, sizeof j->addr, "%s", w->addr);
    w->refs++;
    w->busy = true;
    px_tls_pause_reading(w->c, true);
    if (proxy_run_blocking(j->p, job_run, j) == 0)
        return true;
    w->refs--;
    w->busy = false;
    px_tls_pause_reading(w->c, false);
    px_web_answer_error(a, 503, "the proxy is busy: try again in a moment");
    a->retry_after_s = 1;
    return false;
}

static void handle_request(struct web_conn *w)
{
    struct px_tls *c = w->c;
    struct proxy *p = c->proxy;
    const struct px_web_req *req = &w->http.req;
    struct px_web_answer a;
    px_web_answer_init(&a);
    struct web_job *j = NULL;
    enum px_web_endpoint ep = PX_WEB_NONE;
    if (c->ident == NULL && rate_check(w, &a) != 0)
        goto answer;
    if (px_web_check_version(req, rp_version_self(), &a) != 0)
        goto answer;
    if ((ep = px_web_route(req->method, req->path, &a)) == PX_WEB_NONE)
        goto answer;
    if (ep == PX_WEB_PING) {
        struct px_web_info info;
        fill_info(p, &info);
        px_web_ping(&info, &a);
        goto answer;
    }
    if ((j = calloc(1, sizeof *j)) == NULL) {
        px_web_answer_error(&a, 503, "out of memory");
        goto answer;
    }
    rp_buf_init(&j->req);
    px_web_answer_init(&j->ans);
    j->ep = ep;
    int rv = 0;
    if (ep == PX_WEB_NODES) {
        if (c->ident == NULL || c->ident->system_role != RP_SYS_NONE) {
            px_web_answer_error(&a, 401,
                                "GET /webapi/nodes needs your user certificate: log in "
                                "with tsh login, which sends it");
            goto answer;
        }
        rv = rp_identity_copy(&j->ident, c->ident);
        if (rv != 0) {
            px_web_answer_error(&a, 503, "out of memory");
            goto answer;
        }
    } else if (ep == PX_WEB_LOGIN) {
        rv = px_web_login_request((const char *)req->body.data, req->body.len, NULL, w->addr,
                                  &j->req, j->user, sizeof j->user);
        if (rv != 0) {
            px_web_answer_error(&a, rv == RP_EINVAL ? 400 : 503, "%s", rp_errmsg());
            emit_refusal(p, "user.login", j->user, w->addr, a.status == 400 ? rp_errmsg() : "busy",
                         NULL, 0);
            goto answer;
        }
    } else if (ep == PX_WEB_INVITE_INFO) {
        if ((rv = px_web_invite_info_request(req->path, w->addr, &j->req)) != 0) {
            px_web_answer_error(&a, 400, "%s", rp_errmsg());
            goto answer;
        }
    } else if (ep == PX_WEB_INVITE_REDEEM) {
        rv = px_web_invite_request((const char *)req->body.data, req->body.len, NULL, w->addr,
                                   &j->req);
        if (rv != 0) {
            px_web_answer_error(&a, rv == RP_EINVAL ? 400 : 503, "%s", rp_errmsg());
            goto answer;
        }
    }
    if (start_job(w, j, &a)) {
        px_web_answer_free(&a);
        return; /* job_done answers */
    }
    if (ep == PX_WEB_LOGIN)
        emit_refusal(p, "user.login", j->user, w->addr,
                     "the proxy was too busy to forward "
                     "the login",
                     NULL, 0);
answer:
    if (j != NULL)
        job_free(j);
    send_answer(w, &a);
    px_web_answer_free(&a);
}

/* Feeds what was read to the parser and answers what it completes, until it needs more
 * bytes, a worker is answering, or the connection ends. */
static void process(struct web_conn *w)
{
    while (w->c != NULL && !w->busy && !w->closing) {
        size_t used = 0;
        enum px_http_state st = px_http_feed(&w->http, (const char *)w->in.data + w->in_off,
                                             w->in.len - w->in_off, &used);
        w->in_off += used;
        if (st == PX_HTTP_HEADERS) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            if (w->http.req.expect_continue && px_tls_write(w->c, cont, sizeof cont - 1) != 0)
                return;
            continue;
        }
        if (st == PX_HTTP_DONE) {
            handle_request(w);
            if (w->c != NULL && !w->busy && !w->closing)
                px_http_next(&w->http);
            continue;
        }
        if (st == PX_HTTP_ERROR) {
            struct px_web_answer a;
            px_web_answer_init(&a);
            px_web_answer_error(&a, w->http.err_status, "%s", w->http.err_msg);
            a.close = true;
            rp_info("proxy", "web client %s: %d %s", w->addr, a.status, w->http.err_msg);
            send_answer(w, &a);
            px_web_answer_free(&a);
            return;
        }
        break; /* more bytes needed */
    }
    /* Keep only what the parser has not taken; an idle connection keeps no buffer. */
    if (w->in_off > 0 && w->in.data != NULL) {
        size_t left = w->in.len - w->in_off;
        memmove(w->in.data, w->in.data + w->in_off, left);
        OPENSSL_cleanse(w->in.data + left, w->in.cap - left);
        w->in.len = left;
        w->in_off = 0;
    }
    if (w->in.len == 0 && w->in.data != NULL)
        rp_buf_free(&w->in);
}

static void on_readable(struct px_tls *c)
{
    struct web_conn *w = c->mod;
    char buf[WEB_READ_CHUNK];
    while (w->draining && w->c != NULL) {
        ssize_t n = px_tls_read(c, buf, sizeof buf);
        if (n == RP_EAGAIN)
            return;
        w->drained += n > 0 ? (size_t)n : 0;
        if (n <= 0 || w->drained > WEB_LINGER_BYTES) {
            w->draining = false;
            px_tls_close(c);
            return;
        }
    }
    /* A few reads per call, so that a client pipelining without end does not hold the
     * loop: what is left waits in the socket (or in the SSL, which conn.c re-kicks). */
    for (int reads = 0; reads < WEB_READS_PER_CALL && w->c != NULL && !w->closing; reads++) {
        /* One request at a time: bytes of the next one wait in the socket. Answers the
         * client does not read stop its requests too. */
        if (w->busy || w->in.len - w->in_off > 0 || px_tls_pending(c) > WEB_WRITE_HIGH) {
            px_tls_pause_reading(c, true);
            return;
        }
        ssize_t n = px_tls_read(c, buf, sizeof buf);
        if (n == RP_EAGAIN || n < 0)
            return; /* an error closes the connection: on_close follows */
        if (n == 0) {
            if (px_http_eof(&w->http) == PX_HTTP_ERROR)
                rp_info("proxy", "web client %s: %s", w->addr, w->http.err_msg);
            w->closing = true;
            px_tls_close(c);
            return;
        }
        if (rp_buf_append(&w->in, buf, (size_t)n) != 0) {
            px_tls_abort(c);
            return;
        }
        OPENSSL_cleanse(buf, (size_t)n);
        process(w);
    }
}

static void on_drained(struct px_tls *c)
{
    struct web_conn *w = c->mod;
    if (w->c != NULL && !w->busy && !w->closing) {
        px_tls_pause_reading(c, false);
        process(w);
    }
}

static void on_close(struct px_tls *c)
{
    struct web_conn *w = c->mod;
    c->mod = NULL;
    w->c = NULL;
    px_timer_cancel(&w->idle);
    caps_give(w);
    conn_unref(w);
}

/* "ip:port" or "[ip6]:port" -> "ip" / "ip6". */
static void ip_of(const char *addr, char *out, size_t n)
{
    if (addr[0] == '[') {
        const char *end = strchr(addr, ']');
        snprintf(out, n, "%.*s", end ? (int)(end - addr - 1) : (int)strlen(addr + 1), addr + 1);
        return;
    }
    const char *colon = strrchr(addr, ':');
    snprintf(out, n, "%.*s", colon ? (int)(colon - addr) : (int)strlen(addr), addr);
}

void px_web_attach(struct px_tls *c)
{
    struct web_conn *w = calloc(1, sizeof *w);
    if (w == NULL) {
        rp_warn("proxy", "web client %s: out of memory", c->peer);
        px_tls_abort(c);
        return;
    }
    w->c = c;
    w->loop = c->w.loop;
    w->refs = 1;
    px_http_init(&w->http);
    rp_buf_init(&w->in);
    snprintf(w->addr, sizeof w->addr, "%s", c->peer);
    ip_of(c->peer, w->ip, sizeof w->ip);
    if (w->ip[0] == '\0')
        snprintf(w->ip, sizeof w->ip, "unknown");
    c->mod = w;
    c->on_readable = on_readable;
    c->on_drained = on_drained;
    c->on_close = on_close;
    if (c->ident == NULL && !caps_take(w)) {
        static const char body[] = "{\"error\": {\"message\": \"too many open connections from "
                                   "your address: close idle ones or present a certificate\"}}\n";
        char head[160];
        int n = snprintf(head, sizeof head,
                         "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         "Connection: close\r\nContent-Length: %zu\r\n\r\n",
                         sizeof body - 1);
        static _Atomic uint64_t last_log_ms;
        uint64_t now = rp_mono_ms(), last = atomic_load(&last_log_ms);
        if (now - last >= 60000 && atomic_compare_exchange_strong(&last_log_ms, &last, now))
            rp_warn("proxy",
                    "web client %s: over %u connections from its address or %u in all "
                    "without a certificate; refused (logged once a minute)",
                    c->peer, PX_WEB_CONNS_PER_ADDR, PX_WEB_CONNS_MAX);
        w->closing = true;
        px_tls_write(c, head, (size_t)n);
        px_tls_write(c, body, sizeof body - 1);
        px_tls_close(c);
        return;
    }
    px_timer_arm(w->loop, &w->idle, PX_WEB_IDLE_MS, on_idle);
}
