/* auth/client.c: a client of the auth API that fails over between auth servers.
 *
 * A client is used by one thread at a time. It keeps one connection open to
 * the server it last reached; on a connection error, "not_leader",
 * "unavailable" or "busy" it moves to the next server it knows, backing off
 * with jitter once it has tried them all, until the call's deadline. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/internal.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define CLIENT_MAX_ADDRS 16
#define CLIENT_DIAL_TIMEOUT_MS 2000

struct auth_client {
    SSL_CTX *ctx;
    char addrs[CLIENT_MAX_ADDRS][64];
    size_t n_addrs;
    size_t cur;
    struct rp_conn conn;
    bool open;
    bool learned;
    int timeout_ms;
    struct rp_buf frame;
};

void auth_new_rid(char out[33])
{
    if (rp_random_hex(out, 16) != 0)
        snprintf(out, 33, "%016llx%016llx", (unsigned long long)rp_now_ms(),
                 (unsigned long long)rp_mono_ms());
}

static void add_addr(struct auth_client *c, const char *addr, size_t n)
{
    if (n == 0 || n >= 64 || c->n_addrs >= CLIENT_MAX_ADDRS)
        return;
    for (size_t i = 0; i < c->n_addrs; i++) {
        if (strlen(c->addrs[i]) == n && memcmp(c->addrs[i], addr, n) == 0)
            return;
    }
    memcpy(c->addrs[c->n_addrs], addr, n);
    c->addrs[c->n_addrs][n] = '\0';
    c->n_addrs++;
}

int auth_client_new(struct auth_client **out, SSL_CTX *ctx, const char *const *addrs,
                    size_t n_addrs)
{
    struct auth_client *c = calloc(1, sizeof *c);
    if (c == NULL)
        return rp_err(RP_ENOMEM, "auth client");
    for (size_t i = 0; i < n_addrs; i++) {
        if (addrs[i] != NULL)
            add_addr(c, addrs[i], strlen(addrs[i]));
    }
    if (c->n_addrs == 0) {
        free(c);
        return rp_err(RP_EINVAL, "no auth server address given");
    }
    SSL_CTX_up_ref(ctx);
    c->ctx = ctx;
    c->timeout_ms = 15000;
    rp_buf_init(&c->frame);
    *out = c;
    return 0;
}

void auth_client_free(struct auth_client *c)
{
    if (c == NULL)
        return;
    if (c->open)
        rp_conn_close(&c->conn);
    SSL_CTX_free(c->ctx);
    rp_buf_free(&c->frame);
    free(c);
}

void auth_client_set_timeout(struct auth_client *c, int timeout_ms)
{
    c->timeout_ms = timeout_ms;
}

void auth_req_get(struct rp_buf *out, const char *kind, const char *name, bool stale,
                  bool with_secrets)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, out);
    msgpack_pack_map(&pk, 3 + stale + with_secrets);
    rp_mp_kv_str(&pk, "m", "get");
    rp_mp_kv_str(&pk, "kind", kind);
    rp_mp_kv_str(&pk, "name", name);
    if (stale)
        rp_mp_kv_bool(&pk, "stale", true);
    if (with_secrets)
        rp_mp_kv_bool(&pk, "with_secrets", true);
}

void auth_req_list(struct rp_buf *out, const char *kind, const char *prefix, uint64_t limit,
                   bool stale, bool with_secrets)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, out);
    msgpack_pack_map(&pk, 2 + (prefix != NULL) + (limit != 0) + stale + with_secrets);
    rp_mp_kv_str(&pk, "m", "list");
    rp_mp_kv_str(&pk, "kind", kind);
    if (prefix)
        rp_mp_kv_str(&pk, "prefix", prefix);
    if (limit)
        rp_mp_kv_u64(&pk, "limit", limit);
    if (stale)
        rp_mp_kv_bool(&pk, "stale", true);
    if (with_secrets)
        rp_mp_kv_bool(&pk, "with_secrets", true);
}

void auth_client_rewind(struct auth_client *c)
{
    if (c->cur == 0)
        return;
    if (c->open)
        rp_conn_close(&c->conn);
    c->open = false;
    c->cur = 0;
}

/* Dials @addr and checks that the server is an auth server of our cluster. */
static int dial_auth(SSL_CTX *ctx, const char *addr, int timeout_ms, struct rp_conn *conn)
{
    struct rp_identity id;
    int rv = rp_conn_dial(conn, ctx, addr, timeout_ms);
    if (rv != 0)
        return rv;
    rv = rp_tls_peer_identity(conn->ssl, &id);
    if (rv != 0) {
        rp_conn_close(conn);
        return rp_err(RP_ETLS, "%s presented no usable certificate", addr);
    }
    bool is_auth = rp_identity_is(&id, RP_SYS_AUTH);
    rp_identity_free(&id);
    if (!is_auth) {
        rp_conn_close(conn);
        return rp_err(RP_ETLS, "%s is not an auth server (no Auth role in its certificate)", addr);
    }
    return 0;
}

static void sleep_ms(uint64_t ms)
{
    struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static bool retryable(int code)
{
    return code == RP_ENOTLEADER || code == RP_EUNAVAILABLE || code == RP_EBUSY;
}

/* Decodes an answer; returns 0 for ok, else the answer's error code. */
static int decode_answer(const struct rp_buf *frame, msgpack_unpacked *resp)
{
    msgpack_unpacked_destroy(resp);
    int rv = rp_mp_parse(frame->data, frame->len, resp);
    if (rv != 0)
        return rp_err(RP_EPROTO, "malformed answer: %s", rp_errmsg());
    bool ok = false;
    if (resp->data.type != MSGPACK_OBJECT_MAP || rp_mp_get_bool(&resp->data, "ok", &ok) != 0)
        return rp_err(RP_EPROTO, "answer without an \"ok\" field");
    if (ok)
        return 0;
    const char *code = "", *msg = "";
    size_t cn = 0, mn = 0;
    char cbuf[32];
    rp_mp_get_str(&resp->data, "code", &code, &cn);
    rp_mp_get_str(&resp->data, "error", &msg, &mn);
    snprintf(cbuf, sizeof cbuf, "%.*s", (int)cn, code);
    return rp_err(rp_error_from_name(cbuf), "%.*s", (int)mn, msg);
}

static void learn_servers(struct auth_client *c);

/* The answer is read into @frame, which @resp then references: a caller's answer
 * must stay in a buffer that nothing else reuses until the caller is done with it. */
static int call_once(struct auth_client *c, const void *req, size_t len, msgpack_unpacked *resp,
                     struct rp_buf *frame, uint64_t deadline)
{
    uint64_t now = rp_mono_ms();
    int left = deadline > now ? (int)(deadline - now) : 1;
    int rv;
    if (!c->open) {
        rv = dial_auth(c->ctx, c->addrs[c->cur],
                       left < CLIENT_DIAL_TIMEOUT_MS ? left : CLIENT_DIAL_TIMEOUT_MS, &c->conn);
        if (rv != 0)
            return rp_err(RP_EUNAVAILABLE, "%s: %s", c->addrs[c->cur], rp_errmsg());
        c->open = true;
    }
    rp_conn_set_timeout(&c->conn, left);
    rv = rp_conn_write_frame(&c->conn, req, len);
    if (rv == 0)
        rv = rp_conn_read_frame(&c->conn, frame);
    if (rv != 0) {
        rp_conn_close(&c->conn);
        c->open = false;
        return rp_err(RP_EUNAVAILABLE, "%s: %s", c->addrs[c->cur], rp_errmsg());
    }
    return decode_answer(frame, resp);
}

int auth_client_call(struct auth_client *c, const void *req, size_t len, msgpack_unpacked *resp)
{
    uint64_t deadline = rp_mono_ms() + (uint64_t)c->timeout_ms;
    uint64_t backoff = 100;
    size_t tried = 0;
    int rv;
    char last[512] = "";
    msgpack_unpacked_init(resp);
    for (;;) {
        rv = call_once(c, req, len, resp, &c->frame, deadline);
        if (rv == 0 && !c->learned)
            learn_servers(c);
        if (!retryable(rv))
            return rv; /* ok, or an answer the caller must see (resp holds it) */
        msgpack_unpacked_destroy(resp);
        snprintf(last, sizeof last, "%s", rp_errmsg());
        if (c->open) {
            rp_conn_close(&c->conn);
            c->open = false;
        }
        c->cur = (c->cur + 1) % c->n_addrs;
        if (++tried % c->n_addrs == 0) {
            /* Every server tried once: wait a little (with jitter) before the next round. */
            uint64_t jitter = (uint64_t)rand() % (backoff / 2 + 1);
            if (rp_mono_ms() + backoff > deadline)
                break;
            sleep_ms(backoff + jitter);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
        }
        if (rp_mono_ms() >= deadline)
            break;
    }
    return rp_err(rv, "%s", last);
}

static void learn_servers(struct auth_client *c)
{
    struct rp_buf req, frame;
    msgpack_packer pk;
    msgpack_unpacked resp;
    c->learned = true;
    msgpack_unpacked_init(&resp);
    rp_buf_init(&req);
    /* Not c->frame: the caller's answer still points into it. */
    rp_buf_init(&frame);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "m", "ping");
    if (call_once(c, req.data, req.len, &resp, &frame, rp_mono_ms() + 2000) == 0) {
        const msgpack_object *a = rp_mp_get(&resp.data, "auth_servers");
        if (a && a->type == MSGPACK_OBJECT_ARRAY) {
            for (uint32_t i = 0; i < a->via.array.size; i++) {
                const msgpack_object *o = &a->via.array.ptr[i];
                if (o->type == MSGPACK_OBJECT_STR)
                    add_addr(c, o->via.str.ptr, o->via.str.size);
            }
        }
    }
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    rp_buf_free(&frame);
}

struct auth_watch {
    struct rp_conn conn;
    struct rp_buf frame;
};

int auth_client_watch(struct auth_client *c, const void *req, size_t len, struct auth_watch **out)
{
    struct auth_watch *w = calloc(1, sizeof *w);
    if (w == NULL)
        return rp_err(RP_ENOMEM, "watch");
    rp_buf_init(&w->frame);
    int rv = RP_EUNAVAILABLE;
    for (size_t i = 0; i < c->n_addrs; i++) {
        const char *addr = c->addrs[(c->cur + i) % c->n_addrs];
        rv = dial_auth(c->ctx, addr, CLIENT_DIAL_TIMEOUT_MS, &w->conn);
        if (rv != 0)
            continue;
        rv = rp_conn_write_frame(&w->conn, req, len);
        if (rv == 0) {
            *out = w;
            return 0;
        }
        rp_conn_close(&w->conn);
    }
    free(w);
    return rp_err(RP_EUNAVAILABLE, "no auth server accepted the watch: %s", rp_errmsg());
}

int auth_watch_next(struct auth_watch *w, msgpack_unpacked *ev, int timeout_ms)
{
    msgpack_unpacked_init(ev);
    rp_conn_set_timeout(&w->conn, timeout_ms);
    int rv = rp_conn_read_frame(&w->conn, &w->frame);
    if (rv != 0)
        return rv;
    return decode_answer(&w->frame, ev);
}

void auth_watch_close(struct auth_watch *w)
{
    if (w == NULL)
        return;
    rp_conn_close(&w->conn);
    rp_buf_free(&w->frame);
    free(w);
}

int auth_load_client_ctx(const char *cert, const char *key, const char *ca, SSL_CTX **out)
{
    X509 *c = NULL, *cac = NULL;
    EVP_PKEY *k = NULL;
    int rv;
    if ((rv = rp_tls_read_cert(cert, &c)) != 0 || (rv = rp_tls_read_key(key, &k)) != 0 ||
        (rv = rp_tls_read_cert(ca, &cac)) != 0)
        goto out;
    *out = rp_tls_client_ctx(cac, c, k);
    if (*out == NULL)
        rv = rp_err(RP_ETLS, "TLS context: %s", rp_errmsg());
out:
    X509_free(c);
    X509_free(cac);
    EVP_PKEY_free(k);
    return rv;
}

int auth_load_admin_ctx(const char *data_dir, SSL_CTX **out)
{
    char cert[1200], key[1200], ca[1200];
    snprintf(cert, sizeof cert, "%s/%s/admin.crt", data_dir, AUTH_KEYS_DIR);
    snprintf(key, sizeof key, "%s/%s/admin.key", data_dir, AUTH_KEYS_DIR);
    snprintf(ca, sizeof ca, "%s/%s/ca.crt", data_dir, AUTH_KEYS_DIR);
    return auth_load_client_ctx(cert, key, ca, out);
}
