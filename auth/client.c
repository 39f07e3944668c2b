/* auth/client.c: a client of the auth API that fails over between auth servers,
 * and the typed calls built on it (auth/client.h).
 *
 * A client is used by one thread at a time. It keeps one connection open to
 * the server it last reached; on a connection error, "not_leader",
 * "unavailable" or "busy" it moves to the next server it knows, backing off
 * with jitter once it has tried them all, until the call's deadline.
 *
 * Only lib/ is used here, so that tsh, the proxy and the agent can link the
 * client without the server. */
#include "auth/client.h"

#include <openssl/crypto.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/tls.h"
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
    struct rp_mp_map m;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "get");
    rp_mp_map_str(&m, "kind", kind);
    rp_mp_map_str(&m, "name", name);
    if (stale)
        rp_mp_map_bool(&m, "stale", true);
    if (with_secrets)
        rp_mp_map_bool(&m, "with_secrets", true);
    rp_mp_map_end(&m);
}

void auth_req_list(struct rp_buf *out, const char *kind, const char *prefix, uint64_t limit,
                   bool stale, bool with_secrets)
{
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "list");
    if (kind)
        rp_mp_map_str(&m, "kind", kind);
    if (prefix)
        rp_mp_map_str(&m, "prefix", prefix);
    if (limit)
        rp_mp_map_u64(&m, "limit", limit);
    if (stale)
        rp_mp_map_bool(&m, "stale", true);
    if (with_secrets)
        rp_mp_map_bool(&m, "with_secrets", true);
    rp_mp_map_end(&m);
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
            /* Every server tried once: wait a little before the next round. The jitter
             * comes from a per-process seed, so that clients turned away together do
             * not all come back at the same moment. */
            if (rp_mono_ms() + backoff > deadline)
                break;
            sleep_ms(rp_jitter_ms(backoff));
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
    struct rp_mp_map m;
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "ping");
    rp_mp_map_end(&m);
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

int auth_client_identity_name(const struct auth_client *c, char *out, size_t outlen)
{
    X509 *cert = SSL_CTX_get0_certificate(c->ctx);
    if (cert == NULL)
        return rp_err(RP_ENOTFOUND, "the client presents no certificate");
    int n =
        X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, out, (int)outlen);
    if (n <= 0)
        return rp_err(RP_ENOTFOUND, "the client certificate has no common name");
    return 0;
}

/* ---- typed calls ---------------------------------------------------------- */

void auth_reply_free(struct auth_reply *r)
{
    if (r->decoded)
        msgpack_unpacked_destroy(&r->msg);
    rp_buf_free(&r->bytes);
    r->decoded = false;
    r->doc = NULL;
}

/* Sends @req (freed here) and, on success, hands the answer to @out: the client's
 * frame buffer, which the decoded answer points into, moves into the reply, so the
 * reply outlives the next call without a copy. */
static int call_reply(struct auth_client *c, struct rp_buf *req, struct auth_reply *out)
{
    msgpack_unpacked resp;
    memset(out, 0, sizeof *out);
    int rv = auth_client_call(c, req->data, req->len, &resp);
    rp_buf_free(req);
    if (rv != 0) {
        msgpack_unpacked_destroy(&resp);
        return rv;
    }
    out->msg = resp;
    out->decoded = true;
    out->doc = &out->msg.data;
    out->bytes = c->frame;
    rp_buf_init(&c->frame);
    return 0;
}

/* One typed call read at once: the request map being built and, once sent, the
 * decoded answer. It stays where it was declared (the map points at the packer). */
struct call {
    struct rp_buf req;
    msgpack_packer pk;
    struct rp_mp_map m; /* add fields between call_begin and call_send */
    msgpack_unpacked resp;
};

/* Starts the request map for @method; returns the map to add fields to. */
static struct rp_mp_map *call_begin(struct call *k, const char *method)
{
    rp_buf_init(&k->req);
    rp_mp_packer_init(&k->pk, &k->req);
    rp_mp_map_begin(&k->pk, &k->m);
    rp_mp_map_str(&k->m, "m", method);
    return &k->m;
}

/* Ends and sends the request (freed here). The answer, or the error the server
 * sent, is in @k->resp until call_end, whatever this returns. */
static int call_send(struct auth_client *c, struct call *k)
{
    rp_mp_map_end(&k->m);
    int rv = auth_client_call(c, k->req.data, k->req.len, &k->resp);
    rp_buf_free(&k->req);
    return rv;
}

/* Frees the answer of @k and passes @rv through. */
static int call_end(struct call *k, int rv)
{
    msgpack_unpacked_destroy(&k->resp);
    return rv;
}

/* Sends a call whose answer says nothing beyond success. */
static int call_void(struct auth_client *c, struct call *k)
{
    return call_end(k, call_send(c, k));
}

/* Copies string field @key of @map into @out; "" if absent. RP_EPROTO if it does
 * not fit or is not a string. */
static int copy_field(const msgpack_object *map, const char *key, char *out, size_t outlen)
{
    const char *s;
    size_t n;
    out[0] = '\0';
    int rv = rp_mp_get_str(map, key, &s, &n);
    if (rv == RP_ENOTFOUND)
        return 0;
    if (rv != 0 || n >= outlen || memchr(s, '\0', n) != NULL)
        return rp_err(RP_EPROTO, "answer field '%s': expected a string of under %zu bytes", key,
                      outlen);
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

/* A u64 field; 0 if absent, RP_EPROTO if of another type. */
static int u64_field(const msgpack_object *map, const char *key, uint64_t *v)
{
    *v = 0;
    int rv = rp_mp_get_u64(map, key, v);
    if (rv == RP_ENOTFOUND)
        return 0;
    return rv != 0 ? rp_err(RP_EPROTO, "answer field '%s': %s", key, rp_errmsg()) : 0;
}

static int bool_field(const msgpack_object *map, const char *key, bool *v)
{
    *v = false;
    int rv = rp_mp_get_bool(map, key, v);
    if (rv == RP_ENOTFOUND)
        return 0;
    return rv != 0 ? rp_err(RP_EPROTO, "answer field '%s': %s", key, rp_errmsg()) : 0;
}

/* A malloc'd copy of string field @key (NULL if absent). */
static int dup_field(const msgpack_object *map, const char *key, char **out)
{
    *out = NULL;
    int rv = rp_mp_get_strdup(map, key, out);
    if (rv == RP_ENOTFOUND)
        return 0;
    return rv != 0
               ? rp_err(rv == RP_ENOMEM ? rv : RP_EPROTO, "answer field '%s': %s", key, rp_errmsg())
               : 0;
}

static void pack_strings(msgpack_packer *pk, const char *const *items, size_t n)
{
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        rp_mp_pack_str(pk, items[i]);
}

/* One field of an answer to read and where it goes: a string of under @size bytes
 * into @str, or a number into @u64, or a flag into @flag. */
struct field {
    const char *key;
    char *str;
    size_t size;
    uint64_t *u64;
    bool *flag;
};

static struct field str_f(const char *key, char *str, size_t size)
{
    return (struct field){.key = key, .str = str, .size = size};
}

static struct field u64_f(const char *key, uint64_t *v)
{
    return (struct field){.key = key, .u64 = v};
}

static struct field bool_f(const char *key, bool *v)
{
    return (struct field){.key = key, .flag = v};
}

/* Reads the @n fields @f of @map in order; stops at the first that is malformed. */
static int read_fields(const msgpack_object *map, const struct field *f, size_t n)
{
    int rv = 0;
    for (size_t i = 0; i < n && rv == 0; i++) {
        if (f[i].str)
            rv = copy_field(map, f[i].key, f[i].str, f[i].size);
        else if (f[i].u64)
            rv = u64_field(map, f[i].key, f[i].u64);
        else
            rv = bool_field(map, f[i].key, f[i].flag);
    }
    return rv;
}

/* Sends @k and reads the @n fields @f of its answer (which stays in @k until
 * call_end). */
static int call_fields(struct auth_client *c, struct call *k, const struct field *f, size_t n)
{
    int rv = call_send(c, k);
    return rv != 0 ? rv : read_fields(&k->resp.data, f, n);
}

/* Field @key of the answer in @out if it is of @type; otherwise frees @out and
 * returns NULL (the caller says what was missing). */
static const msgpack_object *reply_get(struct auth_reply *out, const char *key,
                                       msgpack_object_type type)
{
    const msgpack_object *o = rp_mp_get(out->doc, key);
    if (o != NULL && o->type == type)
        return o;
    auth_reply_free(out);
    return NULL;
}

int auth_client_ping(struct auth_client *c, struct auth_ping *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    call_begin(&k, "ping");
    const struct field f[] = {
        str_f("cluster_name", out->cluster_name, sizeof out->cluster_name),
        str_f("server_id", out->server_id, sizeof out->server_id),
        str_f("ca_pin", out->ca_pin, sizeof out->ca_pin),
        str_f("version", out->version, sizeof out->version),
        u64_f("raft_id", &out->raft_id),
        u64_f("leader_id", &out->leader_id),
    };
    int rv = call_fields(c, &k, f, sizeof f / sizeof f[0]);
    if (rv != 0)
        return call_end(&k, rv);
    /* Addresses beyond what fits are left out: the client needs one that answers. */
    const msgpack_object *a = rp_mp_get(&k.resp.data, "auth_servers");
    for (uint32_t i = 0; a && a->type == MSGPACK_OBJECT_ARRAY && i < a->via.array.size; i++) {
        const msgpack_object *o = &a->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size >= sizeof out->auth_servers[0] ||
            out->n_auth_servers == sizeof out->auth_servers / sizeof out->auth_servers[0])
            continue;
        memcpy(out->auth_servers[out->n_auth_servers], o->via.str.ptr, o->via.str.size);
        out->auth_servers[out->n_auth_servers++][o->via.str.size] = '\0';
    }
    return call_end(&k, 0);
}

/* Reads one entry of a status answer's members. */
static int read_member(const msgpack_object *o, struct auth_member *mb)
{
    const struct field f[] = {
        u64_f("id", &mb->id),
        str_f("address", mb->address, sizeof mb->address),
        str_f("api_address", mb->api_address, sizeof mb->api_address),
        str_f("role", mb->role, sizeof mb->role),
        str_f("state", mb->state, sizeof mb->state),
        u64_f("last_applied", &mb->last_applied),
        bool_f("reachable", &mb->reachable),
        u64_f("disk_free", &mb->disk_free),
    };
    return read_fields(o, f, sizeof f / sizeof f[0]);
}

int auth_client_status(struct auth_client *c, struct auth_status *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    call_begin(&k, "status");
    const struct field f[] = {
        str_f("cluster_name", out->cluster_name, sizeof out->cluster_name),
        str_f("ca_pin", out->ca_pin, sizeof out->ca_pin),
        u64_f("leader_id", &out->leader_id),
        u64_f("term", &out->term),
    };
    int rv = call_fields(c, &k, f, sizeof f / sizeof f[0]);
    if (rv != 0)
        return call_end(&k, rv);
    const msgpack_object *ms = rp_mp_get(&k.resp.data, "members");
    if (ms == NULL || ms->type != MSGPACK_OBJECT_ARRAY || ms->via.array.size > AUTH_MAX_MEMBERS)
        return call_end(&k,
                        rp_err(RP_EPROTO, "status answer: expected an array of at most %d members",
                               AUTH_MAX_MEMBERS));
    for (uint32_t i = 0; i < ms->via.array.size && rv == 0; i++) {
        rv = read_member(&ms->via.array.ptr[i], &out->members[i]);
        if (rv == 0)
            out->n_members++;
    }
    return call_end(&k, rv);
}

int auth_client_member_status(struct auth_client *c, struct auth_member_status *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    call_begin(&k, "member_status");
    const struct field f[] = {
        u64_f("id", &out->id),
        str_f("state", out->state, sizeof out->state),
        bool_f("ready", &out->ready),
        u64_f("term", &out->term),
        u64_f("leader_id", &out->leader_id),
        u64_f("last_applied", &out->last_applied),
        u64_f("commit_index", &out->commit_index),
        u64_f("last_index", &out->last_index),
        u64_f("disk_free", &out->disk_free),
        u64_f("disk_total", &out->disk_total),
    };
    int rv = call_fields(c, &k, f, sizeof f / sizeof f[0]);
    return call_end(&k, rv);
}

int auth_client_member_rm(struct auth_client *c, uint64_t id)
{
    struct call k;
    rp_mp_map_u64(call_begin(&k, "member_rm"), "id", id);
    return call_void(c, &k);
}

int auth_client_token_add(struct auth_client *c, const char *type, uint64_t ttl_ms,
                          struct auth_token *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    struct rp_mp_map *m = call_begin(&k, "token_add");
    rp_mp_map_str(m, "type", type);
    if (ttl_ms != 0)
        rp_mp_map_u64(m, "ttl_ms", ttl_ms);
    const struct field f[] = {
        str_f("token", out->token, sizeof out->token),
        str_f("type", out->type, sizeof out->type),
        str_f("ca_pin", out->ca_pin, sizeof out->ca_pin),
        u64_f("expires", &out->expires_ms),
    };
    int rv = call_fields(c, &k, f, sizeof f / sizeof f[0]);
    if (rv != 0)
        OPENSSL_cleanse(out->token, sizeof out->token);
    if (rv == 0 && out->token[0] == '\0')
        rv = rp_err(RP_EPROTO, "token_add answered without a token");
    return call_end(&k, rv);
}

int auth_client_get(struct auth_client *c, const char *kind, const char *name, unsigned flags,
                    struct auth_reply *out, const msgpack_object **res, uint64_t *rev)
{
    struct rp_buf req;
    rp_buf_init(&req);
    auth_req_get(&req, kind, name, flags & AUTH_READ_STALE, flags & AUTH_READ_SECRETS);
    int rv = call_reply(c, &req, out);
    if (rv != 0)
        return rv;
    const msgpack_object *r = reply_get(out, "res", MSGPACK_OBJECT_MAP);
    if (r == NULL)
        return rp_err(RP_EPROTO, "get %s/%s answered without a resource", kind, name);
    if (res)
        *res = r;
    if (rev)
        u64_field(out->doc, "rev", rev);
    return 0;
}

int auth_client_list(struct auth_client *c, const char *kind, const char *prefix, uint64_t limit,
                     unsigned flags, struct auth_reply *out, const msgpack_object **items,
                     uint64_t *rev)
{
    struct rp_buf req;
    rp_buf_init(&req);
    auth_req_list(&req, kind, prefix, limit, flags & AUTH_READ_STALE, flags & AUTH_READ_SECRETS);
    int rv = call_reply(c, &req, out);
    if (rv != 0)
        return rv;
    const msgpack_object *a = reply_get(out, "items", MSGPACK_OBJECT_ARRAY);
    if (a == NULL)
        return rp_err(RP_EPROTO, "list answered without an array of items");
    if (items)
        *items = a;
    if (rev)
        u64_field(out->doc, "rev", rev);
    return 0;
}

void auth_write_result_free(struct auth_write_result *w)
{
    for (size_t i = 0; i < w->n_warnings; i++)
        free(w->warnings[i]);
    free(w->warnings);
    w->warnings = NULL;
    w->n_warnings = 0;
}

/* The revision and warnings of a write's answer. */
static int read_write_result(const msgpack_object *d, struct auth_write_result *out)
{
    memset(out, 0, sizeof *out);
    int rv = u64_field(d, "rev", &out->rev);
    const msgpack_object *w = rp_mp_get(d, "warnings");
    if (rv != 0 || w == NULL || w->type == MSGPACK_OBJECT_NIL)
        return rv;
    if (w->type != MSGPACK_OBJECT_ARRAY)
        return rp_err(RP_EPROTO, "answer field 'warnings': expected an array of strings");
    out->warnings = calloc(w->via.array.size ? w->via.array.size : 1, sizeof *out->warnings);
    if (out->warnings == NULL)
        return rp_err(RP_ENOMEM, "warnings of a write");
    for (uint32_t i = 0; i < w->via.array.size; i++) {
        const msgpack_object *o = &w->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR) {
            auth_write_result_free(out);
            return rp_err(RP_EPROTO, "answer field 'warnings': expected an array of strings");
        }
        out->warnings[i] = strndup(o->via.str.ptr, o->via.str.size);
        if (out->warnings[i] == NULL) {
            auth_write_result_free(out);
            return rp_err(RP_ENOMEM, "warnings of a write");
        }
        out->n_warnings++;
    }
    return 0;
}

static int write_resource(struct auth_client *c, const char *op, const void *res, size_t len,
                          struct auth_write_result *out)
{
    struct call k;
    char rid[33];
    if (out)
        memset(out, 0, sizeof *out);
    auth_new_rid(rid);
    struct rp_mp_map *m = call_begin(&k, op);
    rp_mp_map_raw(m, "res", res, len);
    rp_mp_map_str(m, "rid", rid);
    int rv = call_send(c, &k);
    if (rv == 0 && out)
        rv = read_write_result(&k.resp.data, out);
    return call_end(&k, rv);
}

int auth_client_put(struct auth_client *c, const void *res, size_t len,
                    struct auth_write_result *out)
{
    return write_resource(c, "put", res, len, out);
}

int auth_client_create(struct auth_client *c, const void *res, size_t len,
                       struct auth_write_result *out)
{
    return write_resource(c, "create", res, len, out);
}

int auth_client_update(struct auth_client *c, const void *res, size_t len,
                       struct auth_write_result *out)
{
    return write_resource(c, "update", res, len, out);
}

int auth_client_delete(struct auth_client *c, const char *kind, const char *name, uint64_t *rev)
{
    struct call k;
    char rid[33];
    auth_new_rid(rid);
    struct rp_mp_map *m = call_begin(&k, "delete");
    rp_mp_map_str(m, "kind", kind);
    rp_mp_map_str(m, "name", name);
    rp_mp_map_str(m, "rid", rid);
    int rv = call_send(c, &k);
    if (rv == 0 && rev)
        rv = u64_field(&k.resp.data, "rev", rev);
    return call_end(&k, rv);
}

/* Sends @k and reads its invite answer (token, expires) into @out. */
static int call_invite(struct auth_client *c, struct call *k, struct auth_invite *out)
{
    const struct field f[] = {
        str_f("token", out->token, sizeof out->token),
        u64_f("expires", &out->expires_ms),
    };
    int rv = call_fields(c, k, f, sizeof f / sizeof f[0]);
    if (rv != 0)
        OPENSSL_cleanse(out->token, sizeof out->token);
    return call_end(k, rv);
}

int auth_client_user_add(struct auth_client *c, const char *name, const char *const *roles,
                         size_t n_roles, const char *const *logins, size_t n_logins,
                         uint64_t ttl_ms, struct auth_invite *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    struct rp_mp_map *m = call_begin(&k, "user_add");
    rp_mp_map_str(m, "name", name);
    if (ttl_ms != 0)
        rp_mp_map_u64(m, "ttl_ms", ttl_ms);
    pack_strings(rp_mp_map_key(m, "roles"), roles, n_roles);
    if (n_logins > 0)
        pack_strings(rp_mp_map_key(m, "logins"), logins, n_logins);
    return call_invite(c, &k, out);
}

int auth_client_user_update(struct auth_client *c, const char *name, const char *const *roles,
                            size_t n_roles)
{
    struct call k;
    struct rp_mp_map *m = call_begin(&k, "user_update");
    rp_mp_map_str(m, "name", name);
    pack_strings(rp_mp_map_key(m, "roles"), roles, n_roles);
    return call_void(c, &k);
}

int auth_client_user_rm(struct auth_client *c, const char *name)
{
    struct call k;
    rp_mp_map_str(call_begin(&k, "user_rm"), "name", name);
    return call_void(c, &k);
}

int auth_client_user_reset(struct auth_client *c, const char *name, uint64_t ttl_ms,
                           struct auth_invite *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    struct rp_mp_map *m = call_begin(&k, "user_reset");
    rp_mp_map_str(m, "name", name);
    if (ttl_ms != 0)
        rp_mp_map_u64(m, "ttl_ms", ttl_ms);
    return call_invite(c, &k, out);
}

void auth_certs_free(struct auth_certs *certs)
{
    free(certs->ssh_cert);
    free(certs->tls_cert);
    free(certs->tls_ca);
    memset(certs, 0, sizeof *certs);
}

/* Sends the sign request @k and reads the certificates of its answer into @out;
 * @want_tls: the X.509 ones must be there. */
static int call_certs(struct auth_client *c, struct call *k, bool want_tls, struct auth_certs *out)
{
    int rv = call_send(c, k);
    if (rv != 0)
        return call_end(k, rv);
    const msgpack_object *d = &k->resp.data;
    if ((rv = dup_field(d, "ssh_cert", &out->ssh_cert)) != 0 ||
        (rv = dup_field(d, "tls_cert", &out->tls_cert)) != 0 ||
        (rv = dup_field(d, "tls_ca", &out->tls_ca)) != 0 ||
        (rv = u64_field(d, "expires", &out->expires_ms)) != 0)
        goto fail;
    if (out->ssh_cert == NULL || (want_tls && (out->tls_cert == NULL || out->tls_ca == NULL))) {
        rv = rp_err(RP_EPROTO, "the answer lacks the %s certificate",
                    out->ssh_cert == NULL ? "SSH" : "X.509");
        goto fail;
    }
    return call_end(k, 0);
fail:
    auth_certs_free(out);
    return call_end(k, rv);
}

int auth_client_sign_user(struct auth_client *c, const char *user, const char *ssh_pubkey,
                          const char *tls_pubkey, uint64_t ttl_ms, struct auth_certs *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    struct rp_mp_map *m = call_begin(&k, "sign_user");
    rp_mp_map_str(m, "user", user);
    if (ttl_ms != 0)
        rp_mp_map_u64(m, "ttl_ms", ttl_ms);
    rp_mp_map_str(m, "ssh_pubkey", ssh_pubkey);
    if (tls_pubkey)
        rp_mp_map_str(m, "tls_pubkey", tls_pubkey);
    return call_certs(c, &k, tls_pubkey != NULL, out);
}

int auth_client_sign_host(struct auth_client *c, const struct auth_host_sign *r,
                          struct auth_certs *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    struct rp_mp_map *m = call_begin(&k, "sign_host");
    rp_mp_map_str(m, "host_id", r->host_id);
    rp_mp_map_str(m, "nodename", r->nodename);
    rp_mp_map_str(m, "role", r->role);
    if (r->ttl_ms != 0)
        rp_mp_map_u64(m, "ttl_ms", r->ttl_ms);
    rp_mp_map_str(m, "ssh_pubkey", r->ssh_pubkey);
    if (r->n_principals > 0)
        pack_strings(rp_mp_map_key(m, "principals"), r->principals, r->n_principals);
    if (r->tls_pubkey)
        rp_mp_map_str(m, "tls_pubkey", r->tls_pubkey);
    return call_certs(c, &k, r->tls_pubkey != NULL, out);
}

int auth_client_heartbeat(struct auth_client *c, const void *res, size_t len, uint64_t ttl_ms,
                          uint64_t *rev, uint64_t *expires_ms)
{
    struct call k;
    uint64_t r = 0, e = 0;
    struct rp_mp_map *m = call_begin(&k, "heartbeat");
    rp_mp_map_raw(m, "res", res, len);
    rp_mp_map_u64(m, "ttl_ms", ttl_ms);
    const struct field f[] = {u64_f("rev", &r), u64_f("expires", &e)};
    int rv = call_fields(c, &k, f, sizeof f / sizeof f[0]);
    if (rv == 0 && (r == 0 || e == 0))
        rv = rp_err(RP_EPROTO, "heartbeat answered without its revision and expiry");
    if (rv == 0 && rev)
        *rev = r;
    if (rv == 0 && expires_ms)
        *expires_ms = e;
    return call_end(&k, rv);
}

int auth_client_emit_events(struct auth_client *c, const void *events, size_t len, uint64_t *rev)
{
    struct call k;
    char rid[33];
    uint64_t r = 0;
    auth_new_rid(rid);
    struct rp_mp_map *m = call_begin(&k, "emit_events");
    rp_mp_map_str(m, "rid", rid);
    rp_mp_map_raw(m, "events", events, len);
    const struct field f[] = {u64_f("rev", &r)};
    int rv = call_fields(c, &k, f, 1);
    if (rv == 0 && rev)
        *rev = r;
    return call_end(&k, rv);
}

void auth_host_certs_free(struct auth_host_certs *certs)
{
    free(certs->ssh_cert);
    free(certs->tls_cert);
    free(certs->ca_cert);
    free(certs->user_ca);
    free(certs->host_ca);
    memset(certs, 0, sizeof *certs);
}

int auth_client_renew_host(struct auth_client *c, const char *ssh_pubkey,
                           const char *tls_pubkey_pem, const char *const *principals,
                           size_t n_principals, struct auth_host_certs *out)
{
    struct call k;
    memset(out, 0, sizeof *out);
    struct rp_mp_map *m = call_begin(&k, "renew_host");
    rp_mp_map_str(m, "ssh_pubkey", ssh_pubkey);
    rp_mp_map_str(m, "tls_pubkey", tls_pubkey_pem);
    if (n_principals > 0)
        pack_strings(rp_mp_map_key(m, "principals"), principals, n_principals);
    int rv = call_send(c, &k);
    if (rv != 0)
        return call_end(&k, rv);
    const msgpack_object *d = &k.resp.data;
    if ((rv = dup_field(d, "ssh_cert", &out->ssh_cert)) != 0 ||
        (rv = dup_field(d, "tls_cert", &out->tls_cert)) != 0 ||
        (rv = dup_field(d, "ca_cert", &out->ca_cert)) != 0 ||
        (rv = dup_field(d, "user_ca", &out->user_ca)) != 0 ||
        (rv = dup_field(d, "host_ca", &out->host_ca)) != 0)
        goto fail;
    if (!out->ssh_cert || !out->tls_cert || !out->ca_cert || !out->user_ca || !out->host_ca) {
        rv = rp_err(RP_EPROTO, "renew_host answered without ssh_cert, tls_cert, ca_cert, "
                               "user_ca and host_ca");
        goto fail;
    }
    return call_end(&k, 0);
fail:
    auth_host_certs_free(out);
    return call_end(&k, rv);
}

int auth_client_events(struct auth_client *c, const struct auth_events_query *q,
                       struct auth_reply *out, const msgpack_object **items)
{
    struct call k;
    struct rp_mp_map *m = call_begin(&k, "events");
    if (q->stale)
        rp_mp_map_bool(m, "stale", true);
    if (q->limit)
        rp_mp_map_u64(m, "limit", q->limit);
    if (q->from_ms)
        rp_mp_map_u64(m, "from", q->from_ms);
    if (q->to_ms)
        rp_mp_map_u64(m, "to", q->to_ms);
    if (q->type)
        rp_mp_map_str(m, "type", q->type);
    if (q->user)
        rp_mp_map_str(m, "user", q->user);
    if (q->sid)
        rp_mp_map_str(m, "sid", q->sid);
    if (q->newest_first)
        rp_mp_map_bool(m, "newest_first", true);
    rp_mp_map_end(m);
    int rv = call_reply(c, &k.req, out);
    if (rv != 0)
        return rv;
    const msgpack_object *a = reply_get(out, "items", MSGPACK_OBJECT_ARRAY);
    if (a == NULL)
        return rp_err(RP_EPROTO, "events answered without an array of items");
    if (items)
        *items = a;
    return 0;
}

/* ---- locks ---------------------------------------------------------------- */

/* A lock field must say something and print on one line. */
static int check_lock_field(const char *what, const char *s)
{
    if (s == NULL)
        return 0;
    size_t n = strlen(s);
    if (n == 0)
        return rp_err(RP_EINVAL, "lock %s is empty, expected a value", what);
    if (n > 1024)
        return rp_err(RP_EINVAL, "lock %s is %zu bytes long, at most 1024", what, n);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch < 0x20 || ch == 0x7f)
            return rp_err(RP_EINVAL, "lock %s holds a control character (byte %zu)", what, i);
    }
    return 0;
}

int auth_lock_encode(const struct auth_lock_spec *spec, const char *name, uint64_t now_ms,
                     struct rp_buf *out)
{
    if (spec->user == NULL && spec->role == NULL && spec->login == NULL && spec->server_id == NULL)
        return rp_err(RP_EINVAL, "a lock needs a target: a user, a role, a login or a server id");
    int rv;
    if ((rv = check_lock_field("user", spec->user)) != 0 ||
        (rv = check_lock_field("role", spec->role)) != 0 ||
        (rv = check_lock_field("login", spec->login)) != 0 ||
        (rv = check_lock_field("server_id", spec->server_id)) != 0 ||
        (rv = check_lock_field("message", spec->message)) != 0 ||
        (rv = check_lock_field("name", name)) != 0)
        return rv;
    uint64_t expires = spec->ttl_ms ? now_ms + spec->ttl_ms : 0;
    char created[40], until[40];
    rp_format_time(now_ms, created, sizeof created);
    rp_format_time(expires, until, sizeof until);

    msgpack_packer pk;
    struct rp_mp_map res, md, sp, target;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &res);
    rp_mp_map_str(&res, "kind", AUTH_KIND_LOCK);
    rp_mp_map_str(&res, "version", "v2");
    rp_mp_map_begin_map(&res, "metadata", &md);
    rp_mp_map_str(&md, "name", name);
    if (expires) /* the state layer deletes the lock then */
        rp_mp_map_u64(&md, "expires", expires);
    rp_mp_map_end(&md);
    rp_mp_map_begin_map(&res, "spec", &sp);
    rp_mp_map_begin_map(&sp, "target", &target);
    if (spec->user)
        rp_mp_map_str(&target, "user", spec->user);
    if (spec->role)
        rp_mp_map_str(&target, "role", spec->role);
    if (spec->login)
        rp_mp_map_str(&target, "login", spec->login);
    if (spec->server_id)
        rp_mp_map_str(&target, "server_id", spec->server_id);
    rp_mp_map_end(&target);
    if (spec->message)
        rp_mp_map_str(&sp, "message", spec->message);
    if (expires)
        rp_mp_map_str(&sp, "expires", until);
    if (spec->created_by && spec->created_by[0])
        rp_mp_map_str(&sp, "created_by", spec->created_by);
    rp_mp_map_str(&sp, "created_at", created);
    rp_mp_map_end(&sp);
    rp_mp_map_end(&res);
    return 0;
}

int auth_client_lock_add(struct auth_client *c, const struct auth_lock_spec *spec, char name[37],
                         struct auth_write_result *out)
{
    struct rp_buf res;
    int rv = rp_uuid_v4(name);
    if (rv != 0)
        return rv;
    rp_buf_init(&res);
    rv = auth_lock_encode(spec, name, rp_now_ms(), &res);
    if (rv == 0)
        rv = auth_client_create(c, res.data, res.len, out);
    rp_buf_free(&res);
    return rv;
}
