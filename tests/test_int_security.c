/* tests/test_int_security.c: who may talk to an auth server, and what bad input
 * does to it. Certificates of another CA are refused on the API and Raft ports;
 * a client without a certificate may only ping and join; bad join tokens and a
 * wrong CA pin do not get a server in; oversized, malformed and random frames
 * get an error or a closed connection and the server keeps serving. */
#include <criterion/criterion.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "auth/client.h"
#include "lib/buf.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/tls.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "tests/lib/cluster.h"

TestSuite(int_security, .init = cluster_setup, .fini = cluster_teardown, .timeout = 60);

/* ---- helpers ------------------------------------------------------------------------ */

static X509 *read_cert(int i, const char *file)
{
    char path[700];
    X509 *c = NULL;
    snprintf(path, sizeof path, "%s/keys/%s", CL->nodes[i].dir, file);
    cr_assert_eq(rp_tls_read_cert(path, &c), 0, "%s: %s", path, rp_errmsg());
    return c;
}

static EVP_PKEY *read_key(int i, const char *file)
{
    char path[700];
    EVP_PKEY *k = NULL;
    snprintf(path, sizeof path, "%s/keys/%s", CL->nodes[i].dir, file);
    cr_assert_eq(rp_tls_read_key(path, &k), 0, "%s: %s", path, rp_errmsg());
    return k;
}

/* A client context that trusts the cluster's CA and presents a certificate with
 * @role issued by a CA of its own (or no certificate when @role is NULL). */
static SSL_CTX *ctx_with_foreign_cert(const char *role)
{
    X509 *cluster_ca = read_cert(1, "ca.crt");
    SSL_CTX *ctx;
    if (role == NULL) {
        ctx = rp_tls_client_ctx(cluster_ca, NULL, NULL);
    } else {
        EVP_PKEY *ca_key = NULL, *key = rp_tls_keygen();
        X509 *ca = NULL, *cert = NULL;
        cr_assert_not_null(key);
        /* Same cluster name as the real one: only the signature differs. */
        cr_assert_eq(rp_tls_ca_create(CL->cluster_name, &ca_key, &ca), 0, "%s", rp_errmsg());
        char *groups[] = {(char *)role};
        struct rp_identity id = {.name = "intruder",
                                 .groups = groups,
                                 .n_groups = 1,
                                 .cluster = CL->cluster_name,
                                 .system_role = rp_system_role_from_name(role),
                                 .host_id = "intruder"};
        const char *sans[] = {"127.0.0.1"};
        cr_assert_eq(rp_tls_issue(ca_key, ca, key, &id, sans, 1, 3600, &cert), 0, "%s",
                     rp_errmsg());
        ctx = rp_tls_client_ctx(cluster_ca, cert, key);
        EVP_PKEY_free(ca_key);
        EVP_PKEY_free(key);
        X509_free(ca);
        X509_free(cert);
    }
    X509_free(cluster_ca);
    cr_assert_not_null(ctx, "%s", rp_errmsg());
    return ctx;
}

/* A client context with node @i's own identity files (@stem: "host" or "admin"). */
static SSL_CTX *ctx_of_node(int i, const char *stem)
{
    char c[32], k[32];
    snprintf(c, sizeof c, "%s.crt", stem);
    snprintf(k, sizeof k, "%s.key", stem);
    X509 *ca = read_cert(i, "ca.crt"), *cert = read_cert(i, c);
    EVP_PKEY *key = read_key(i, k);
    SSL_CTX *ctx = rp_tls_client_ctx(ca, cert, key);
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
    cr_assert_not_null(ctx, "%s", rp_errmsg());
    return ctx;
}

/* Dials @addr with @ctx; if @req, sends it as a frame; then reads one frame with
 * @read_ms. Returns the result of the first failing step, or 0 if a frame came back
 * (then in @frame). */
static int probe(SSL_CTX *ctx, const char *addr, const struct rp_buf *req, int read_ms,
                 struct rp_buf *frame)
{
    struct rp_conn c;
    int rv = rp_conn_dial(&c, ctx, addr, 3000);
    if (rv != 0)
        return rv;
    rp_conn_set_timeout(&c, read_ms);
    if (req != NULL)
        rv = rp_conn_write_frame(&c, req->data, req->len);
    if (rv == 0)
        rv = rp_conn_read_frame(&c, frame);
    rp_conn_close(&c);
    return rv;
}

/* The connection was refused: an error that is not a timeout, within @ms. */
static void assert_refused(SSL_CTX *ctx, const char *addr, bool send_ping, const char *what)
{
    struct rp_buf req, frame;
    rp_buf_init(&req);
    rp_buf_init(&frame);
    cl_req_simple(&req, "ping");
    uint64_t t0 = cl_now_ms();
    int rv = probe(ctx, addr, send_ping ? &req : NULL, 4000, &frame);
    uint64_t ms = cl_now_ms() - t0;
    cr_assert_neq(rv, 0, "%s: the server answered (%zu bytes)", what, frame.len);
    cr_assert_neq(rv, RP_ETIMEDOUT, "%s: the connection was held open, not refused", what);
    cr_assert_lt(ms, 3000, "%s: refused only after %llu ms", what, (unsigned long long)ms);
    cr_log_info("%s: refused in %llu ms (%s: %s)", what, (unsigned long long)ms, rp_strerror(rv),
                rp_errmsg());
    rp_buf_free(&req);
    rp_buf_free(&frame);
}

/* An open connection with node @i's admin identity. */
static void admin_dial(int i, struct rp_conn *c)
{
    SSL_CTX *ctx = node_admin_ctx(i);
    int rv = rp_conn_dial(c, ctx, CL->nodes[i].api_addr, 3000);
    SSL_CTX_free(ctx);
    cr_assert_eq(rv, 0, "dial auth%d: %s", i, rp_errmsg());
    rp_conn_set_timeout(c, 5000);
}

/* Sends @req on @c and reads the answer. Returns a transport error, or 0 with @ok
 * and @code (the answer's "code") filled. A malformed answer fails the test. */
static int exchange(struct rp_conn *c, const void *req, size_t len, bool *ok, char *code,
                    size_t codelen)
{
    struct rp_buf frame;
    msgpack_unpacked u;
    rp_buf_init(&frame);
    int rv = rp_conn_write_frame(c, req, len);
    if (rv == 0)
        rv = rp_conn_read_frame(c, &frame);
    if (rv != 0) {
        rp_buf_free(&frame);
        return rv;
    }
    int prv = rp_mp_parse(frame.data, frame.len, &u);
    cr_assert_eq(prv, 0, "the server sent a malformed answer: %s", rp_errmsg());
    *ok = false;
    cr_assert_eq(rp_mp_get_bool(&u.data, "ok", ok), 0, "answer without \"ok\"");
    cl_mp_str(&u.data, "code", code, codelen);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&frame);
    return 0;
}

/* The server on node @i is alive and serves an admin ping, put and get on a new
 * connection. */
static void assert_serving(int i, const char *what)
{
    cr_assert(node_alive(i), "%s: auth%d died (status 0x%x)", what, i, CL->nodes[i].last_status);
    struct rp_conn c;
    struct rp_buf req;
    bool ok;
    char code[64];
    admin_dial(i, &c);
    rp_buf_init(&req);
    cl_req_simple(&req, "ping");
    int rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
    rp_conn_close(&c);
    rp_buf_free(&req);
    cr_assert(rv == 0 && ok, "%s: ping on a new connection: %s %s", what, rp_strerror(rv), code);
    char name[64], v[64];
    snprintf(name, sizeof name, "alive-%llu", (unsigned long long)cl_now_ms());
    cr_assert_eq(node_put(i, "itest", name, "yes"), 0, "%s: put: %s", what, rp_errmsg());
    cr_assert_eq(node_get(i, "itest", name, false, v, sizeof v), 0, "%s: get: %s", what,
                 rp_errmsg());
    cr_assert_str_eq(v, "yes");
}

/* ---- TLS identities ----------------------------------------------------------------- */

Test(int_security, certificate_of_another_ca_is_refused_on_api_and_raft_ports)
{
    cluster_start(1);
    const char *api = CL->nodes[1].api_addr, *raft = CL->nodes[1].raft_addr;

    /* Controls: the node's own identities get through. */
    SSL_CTX *admin = ctx_of_node(1, "admin"), *host = ctx_of_node(1, "host");
    struct rp_buf req, frame;
    rp_buf_init(&req);
    rp_buf_init(&frame);
    cl_req_simple(&req, "ping");
    int rv = probe(admin, api, &req, 4000, &frame);
    cr_assert_eq(rv, 0, "control: admin ping on the API port: %s", rp_errmsg());
    /* On the Raft port an accepted peer is waited on for its preamble. */
    rv = probe(host, raft, NULL, 1500, &frame);
    cr_assert_eq(rv, RP_ETIMEDOUT, "control: host cert on the Raft port: %s (%s)", rp_strerror(rv),
                 rp_errmsg());

    SSL_CTX *foreign_admin = ctx_with_foreign_cert(RP_ROLE_ADMIN);
    SSL_CTX *foreign_auth = ctx_with_foreign_cert(RP_ROLE_AUTH);
    SSL_CTX *no_cert = ctx_with_foreign_cert(NULL);
    assert_refused(foreign_admin, api, true, "API, Admin cert of another CA");
    assert_refused(foreign_auth, api, true, "API, Auth cert of another CA");
    assert_refused(foreign_auth, raft, false, "Raft, Auth cert of another CA");
    assert_refused(foreign_admin, raft, false, "Raft, Admin cert of another CA");
    assert_refused(no_cert, raft, false, "Raft, no client cert");
    /* A genuine certificate without the Auth role is no Raft peer either. */
    assert_refused(admin, raft, false, "Raft, the cluster's own Admin cert");

    SSL_CTX_free(admin);
    SSL_CTX_free(host);
    SSL_CTX_free(foreign_admin);
    SSL_CTX_free(foreign_auth);
    SSL_CTX_free(no_cert);
    rp_buf_free(&req);
    rp_buf_free(&frame);
    assert_serving(1, "after the refused connections");
    cr_assert_eq(cluster_wait_ready(1, 1, 0, 5000), 1);
    cluster_pass();
}

Test(int_security, client_without_certificate_may_only_ping_and_join)
{
    cluster_start(1);
    SSL_CTX *ctx = ctx_with_foreign_cert(NULL);
    struct rp_conn c;
    int rv = rp_conn_dial(&c, ctx, CL->nodes[1].api_addr, 3000);
    SSL_CTX_free(ctx);
    cr_assert_eq(rv, 0, "dial without a client cert: %s", rp_errmsg());
    rp_conn_set_timeout(&c, 5000);

    struct rp_buf req;
    msgpack_packer pk;
    bool ok;
    char code[64];
    rp_buf_init(&req);

    cl_req_simple(&req, "ping");
    rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
    cr_assert(rv == 0 && ok, "anonymous ping: %s %s", rp_strerror(rv), code);

    /* Everything else is answered access_denied, on the same connection. */
    static const char *const denied[] = {"status",    "member_status", "list",
                                         "token_add", "member_rm",     "watch"};
    rp_buf_reset(&req);
    cl_req_get(&req, "cert_authority", "tls", false);
    rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
    cr_assert(rv == 0 && !ok, "anonymous get: %s", rp_strerror(rv));
    cr_assert_str_eq(code, "access_denied");
    rp_buf_reset(&req);
    cl_req_get(&req, "cert_authority", "tls", true);
    rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
    cr_assert(rv == 0 && !ok && strcmp(code, "access_denied") == 0, "anonymous stale get: %s",
              code);
    rp_buf_reset(&req);
    cl_req_put(&req, "itest", "anon", "x", NULL);
    rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
    cr_assert(rv == 0 && !ok && strcmp(code, "access_denied") == 0, "anonymous put: %s", code);
    for (size_t k = 0; k < sizeof denied / sizeof denied[0]; k++) {
        rp_buf_reset(&req);
        cl_req_simple(&req, denied[k]);
        rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
        cr_assert(rv == 0 && !ok, "anonymous %s: %s", denied[k], rp_strerror(rv));
        cr_assert_str_eq(code, "access_denied", "anonymous %s", denied[k]);
    }

    /* join reaches its handler: without arguments it is "invalid", not denied. */
    rp_buf_reset(&req);
    cl_req_simple(&req, "join");
    rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
    cr_assert(rv == 0 && !ok, "anonymous join: %s", rp_strerror(rv));
    cr_assert_str_eq(code, "invalid", "anonymous join without arguments");
    /* With a made-up token it is refused by the token check. */
    rp_buf_reset(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 6);
    rp_mp_kv_str(&pk, "m", "join");
    rp_mp_kv_str(&pk, "token", "00000000000000000000000000000000");
    rp_mp_kv_str(&pk, "type", "node");
    rp_mp_kv_str(&pk, "host_id", "intruder-1");
    rp_mp_kv_str(&pk, "nodename", "intruder");
    rp_mp_kv_str(&pk, "host_pubkey", "not a key");
    rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
    cr_assert(rv == 0 && !ok, "join with a made-up token: %s", rp_strerror(rv));
    cr_assert_str_eq(code, "access_denied");
    rp_conn_close(&c);
    rp_buf_free(&req);
    assert_serving(1, "after anonymous requests");
    cluster_pass();
}

/* ---- joining -------------------------------------------------------------------------- */

/* Starts a new node joining with @token (and @pin instead of the cluster's, if
 * given) and checks that it exits non-zero and logs @why. Returns its index. */
static int assert_join_refused(const char *token, const char *pin, const char *why)
{
    int i = 1;
    while (CL->nodes[i].used)
        i++;
    node_prepare(i, (uint64_t)i, token, CL->nodes[1].api_addr);
    if (pin != NULL) {
        char saved[sizeof CL->ca_pin];
        memcpy(saved, CL->ca_pin, sizeof saved);
        snprintf(CL->ca_pin, sizeof CL->ca_pin, "%s", pin);
        node_write_config(i);
        memcpy(CL->ca_pin, saved, sizeof saved);
    }
    uint64_t t0 = cl_now_ms();
    node_spawn(i);
    int st = node_wait_exit(i, 30000);
    cr_assert_neq(st, -1, "auth%d (token %s) still running after 30 s", i, token);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) != 0, "auth%d exited with status 0x%x", i, st);
    cr_assert(node_log_contains(i, why), "auth%d's log does not say '%s'", i, why);
    cr_log_info("auth%d refused in %llu ms", i, (unsigned long long)(cl_now_ms() - t0));
    return i;
}

static void assert_members_unchanged(void)
{
    struct cl_status st;
    cr_assert_neq(cluster_wait_ready(1, 3, 0, 10000), 0, "the cluster lost its health");
    cr_assert_eq(cluster_status(1, &st), 0);
    for (uint64_t id = 1; id <= 3; id++)
        cr_assert_not_null(cl_status_member(&st, id), "member %llu is gone",
                           (unsigned long long)id);
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "get", "auth_server", "--format=json", NULL), 0);
    struct cl_json *j = cl_json_parse(out);
    cr_assert(j != NULL && j->type == CLJ_ARR, "tctl get auth_server:\n%s", out);
    cr_assert_eq(j->n, 3, "%zu auth_server records, want 3", j->n);
    cl_json_free(j);
    free(out);
}

static bool token_listed(const char *token)
{
    char *out = NULL;
    int rc = run_tctl(1, &out, "tokens", "ls", "--format=json", NULL);
    bool found = rc == 0 && out && strstr(out, token) != NULL;
    free(out);
    return found;
}

static bool token_gone(void *arg)
{
    return !token_listed(arg);
}

Test(int_security, expired_wrong_type_or_unknown_token_cannot_join)
{
    cluster_start(3);
    int leader = node_by_raft_id(cluster_leader_id());
    cr_assert_neq(leader, 0);

    char node_token[128], short_token[128];
    cl_add_token(1, "node", "10m", node_token, sizeof node_token);
    cl_add_token(1, "auth", "1s", short_token, sizeof short_token);

    int i = assert_join_refused(node_token, NULL, "join refused");
    cr_assert(node_log_contains(leader, "token is of another type"),
              "the leader's log does not say why auth%d was refused", i);

    /* The leader expires the short token; then it cannot be used. */
    cr_assert(wait_until(15000, token_gone, short_token), "token %s never expired", short_token);
    assert_join_refused(short_token, NULL, "join refused");

    assert_join_refused("0123456789abcdef0123456789abcdef", NULL, "join refused");
    assert_members_unchanged();
    cluster_pass();
}

Test(int_security, joiner_refuses_a_server_whose_ca_does_not_match_its_pin)
{
    cluster_start(3);
    char token[128];
    cl_add_token(1, "auth", "10m", token, sizeof token);
    /* A valid token, but the joiner pins another CA: it must not send it. */
    char pin[128];
    snprintf(pin, sizeof pin, "%s", CL->ca_pin);
    char *last = pin + strlen(pin) - 1;
    *last = *last == '0' ? '1' : '0';
    assert_join_refused(token, pin, "mismatch");
    assert_members_unchanged();
    cluster_pass();
}

/* ---- frames ----------------------------------------------------------------------- */

/* Sends 4 raw header bytes announcing @len and expects an error answer or a closed
 * connection, never a hang. */
static void assert_bad_header_refused(uint32_t len)
{
    struct rp_conn c;
    admin_dial(1, &c);
    uint8_t hdr[4] = {(uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                      (uint8_t)len};
    cr_assert_eq(SSL_write(c.ssl, hdr, 4), 4);
    struct rp_buf frame;
    rp_buf_init(&frame);
    int rv = rp_conn_read_frame(&c, &frame);
    cr_assert_neq(rv, RP_ETIMEDOUT, "header 0x%08x: the server waited for more", len);
    if (rv == 0) {
        msgpack_unpacked u;
        bool ok = true;
        char code[64];
        cr_assert_eq(rp_mp_parse(frame.data, frame.len, &u), 0);
        rp_mp_get_bool(&u.data, "ok", &ok);
        cl_mp_str(&u.data, "code", code, sizeof code);
        msgpack_unpacked_destroy(&u);
        cr_assert(!ok, "header 0x%08x was answered ok", len);
        cr_log_info("header 0x%08x: answered %s", len, code);
        /* Then the connection is closed. */
        rv = rp_conn_read_frame(&c, &frame);
        cr_assert(rv == RP_ECLOSED || rv == RP_EIO, "header 0x%08x: connection left open (%s)", len,
                  rp_strerror(rv));
    } else {
        cr_log_info("header 0x%08x: connection closed (%s)", len, rp_strerror(rv));
    }
    rp_buf_free(&frame);
    rp_conn_close(&c);
}

Test(int_security, oversized_or_empty_frame_is_refused_and_the_server_stays_healthy)
{
    cluster_start(1);
    assert_bad_header_refused(0x7fffffffu);
    assert_bad_header_refused(0xffffffffu);
    assert_bad_header_refused(RP_FRAME_MAX + 1);
    assert_bad_header_refused(0);
    assert_serving(1, "after oversized frames");
    cluster_pass();
}

Test(int_security, malformed_msgpack_frame_gets_an_error_and_the_server_stays_healthy)
{
    cluster_start(1);
    static const uint8_t invalid_byte[] = {0xc1};
    static const uint8_t short_map[] = {0x85};
    static const uint8_t huge_str[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    static const uint8_t huge_map[] = {0xdf, 0xff, 0xff, 0xff, 0xff};
    static const uint8_t huge_array[] = {0xdd, 0x7f, 0xff, 0xff, 0xff, 0xc0};
    static const uint8_t trailing[] = {0x81, 0xa1, 'm', 0xa4, 'p', 'i', 'n', 'g', 0x00};
    static const uint8_t not_a_map[] = {0x2a};
    static const uint8_t no_method[] = {0x81, 0xa1, 'x', 0x01};
    static const uint8_t method_int[] = {0x81, 0xa1, 'm', 0x05};
    static const uint8_t unknown_method[] = {0x81, 0xa1, 'm', 0xa3, 'f', 'o', 'o'};
    static const uint8_t dup_key[] = {0x82, 0xa1, 'm',  0xa3, 'g', 'e', 't',
                                      0xa1, 'm',  0xa4, 'p',  'i', 'n', 'g'};
    struct {
        const char *what;
        const uint8_t *p;
        size_t n;
    } cases[] = {
        {"reserved byte 0xc1", invalid_byte, sizeof invalid_byte},
        {"map of 5 with no entries", short_map, sizeof short_map},
        {"str32 claiming 4 GiB", huge_str, sizeof huge_str},
        {"map32 claiming 4G entries", huge_map, sizeof huge_map},
        {"array32 claiming 2G items", huge_array, sizeof huge_array},
        {"a map then a trailing byte", trailing, sizeof trailing},
        {"an integer, not a map", not_a_map, sizeof not_a_map},
        {"a map without m", no_method, sizeof no_method},
        {"m is an integer", method_int, sizeof method_int},
        {"an unknown method", unknown_method, sizeof unknown_method},
        {"a duplicated key", dup_key, sizeof dup_key},
    };
    /* 100000 nested arrays: deeper than any parser should recurse. */
    uint8_t *deep = malloc(100000);
    cr_assert_not_null(deep);
    memset(deep, 0x91, 100000);
    deep[99999] = 0xc0;

    struct rp_conn c;
    bool open = false;
    for (size_t k = 0; k <= sizeof cases / sizeof cases[0]; k++) {
        const char *what = k < sizeof cases / sizeof cases[0] ? cases[k].what : "deep nesting";
        const uint8_t *p = k < sizeof cases / sizeof cases[0] ? cases[k].p : deep;
        size_t n = k < sizeof cases / sizeof cases[0] ? cases[k].n : 100000;
        if (!open) {
            admin_dial(1, &c);
            open = true;
        }
        bool ok = true;
        char code[64] = "";
        int rv = exchange(&c, p, n, &ok, code, sizeof code);
        cr_assert_neq(rv, RP_ETIMEDOUT, "%s: no answer in 5 s", what);
        if (rv == 0) {
            /* A duplicated key may be read either way; all else must be refused. */
            if (p != dup_key)
                cr_assert(!ok, "%s was answered ok", what);
            cr_log_info("%s: %s", what, ok ? "ok" : code);
        } else {
            cr_log_info("%s: connection closed (%s)", what, rp_strerror(rv));
            rp_conn_close(&c);
            open = false;
        }
        cr_assert(node_alive(1), "%s killed the server", what);
    }
    if (open) {
        /* The connection that saw all this still serves a good request. */
        struct rp_buf req;
        bool ok;
        char code[64];
        rp_buf_init(&req);
        cl_req_simple(&req, "ping");
        int rv = exchange(&c, req.data, req.len, &ok, code, sizeof code);
        cr_assert(rv == 0 && ok, "ping after malformed frames: %s %s", rp_strerror(rv), code);
        rp_buf_free(&req);
        rp_conn_close(&c);
    }
    free(deep);
    assert_serving(1, "after malformed frames");
    cluster_pass();
}

/* ---- random input ------------------------------------------------------------------- */

static unsigned rnd(unsigned *seed, unsigned n)
{
    return n ? (unsigned)rand_r(seed) % n : 0;
}

static void pack_random(msgpack_packer *pk, unsigned *seed, int depth)
{
    unsigned t = rnd(seed, depth > 2 ? 7 : 9);
    char s[400];
    switch (t) {
    case 0:
        msgpack_pack_nil(pk);
        break;
    case 1:
        rnd(seed, 2) ? msgpack_pack_true(pk) : msgpack_pack_false(pk);
        break;
    case 2:
        msgpack_pack_int64(pk, (int64_t)rand_r(seed) - RAND_MAX / 2);
        break;
    case 3:
        msgpack_pack_uint64(pk, ((uint64_t)rand_r(seed) << 33) ^ (uint64_t)rand_r(seed));
        break;
    case 4:
        msgpack_pack_double(pk, (double)rand_r(seed) / 7.0);
        break;
    case 5: {
        unsigned n = rnd(seed, 4) == 0 ? 300 : rnd(seed, 24);
        for (unsigned i = 0; i < n; i++)
            s[i] = (char)(rnd(seed, 4) ? 'a' + rnd(seed, 26) : rnd(seed, 256));
        rp_mp_pack_strn(pk, s, n);
        break;
    }
    case 6: {
        unsigned n = rnd(seed, 40);
        for (unsigned i = 0; i < n; i++)
            s[i] = (char)rnd(seed, 256);
        msgpack_pack_bin(pk, n);
        msgpack_pack_bin_body(pk, s, n);
        break;
    }
    case 7: {
        unsigned n = rnd(seed, 4);
        msgpack_pack_array(pk, n);
        for (unsigned i = 0; i < n; i++)
            pack_random(pk, seed, depth + 1);
        break;
    }
    default: {
        static const char *const keys[] = {"kind",   "name",    "metadata", "spec", "version",
                                           "labels", "expires", "revision", "x"};
        unsigned n = rnd(seed, 4);
        msgpack_pack_map(pk, n);
        for (unsigned i = 0; i < n; i++) {
            rp_mp_pack_str(pk, keys[rnd(seed, sizeof keys / sizeof keys[0])]);
            pack_random(pk, seed, depth + 1);
        }
        break;
    }
    }
}

/* A request map with a real method and random arguments. Methods that would change
 * the membership or turn the connection into a stream are left out. */
static void random_request(struct rp_buf *out, unsigned *seed)
{
    static const char *const methods[] = {
        "ping",    "get",   "list",   "put",           "create",    "update", "cas", "delete",
        "cdelete", "batch", "status", "member_status", "token_add", "join",   "nope"};
    static const char *const args[] = {
        "kind",    "name",      "res",      "rid",         "rev",          "ops",       "stale",
        "prefix",  "limit",     "type",     "ttl_ms",      "token",        "host_id",   "nodename",
        "raft_id", "raft_addr", "api_addr", "host_pubkey", "admin_pubkey", "start_rev", "m"};
    msgpack_packer pk;
    rp_mp_packer_init(&pk, out);
    unsigned n = rnd(seed, 6);
    msgpack_pack_map(&pk, n + 1);
    rp_mp_kv_str(&pk, "m", methods[rnd(seed, sizeof methods / sizeof methods[0])]);
    for (unsigned i = 0; i < n; i++) {
        rp_mp_pack_str(&pk, args[rnd(seed, sizeof args / sizeof args[0])]);
        pack_random(&pk, seed, 0);
    }
}

Test(int_security, a_thousand_random_garbage_frames_do_not_crash_the_server)
{
    cluster_start(1);
    unsigned seed = (unsigned)cl_now_ms();
    const char *env = getenv("RP_FUZZ_SEED");
    if (env && *env)
        seed = (unsigned)strtoul(env, NULL, 10);
    cr_log_info("garbage seed %u (set RP_FUZZ_SEED to replay)", seed);
    unsigned first_seed = seed;

    struct rp_conn c;
    bool open = false;
    unsigned answered = 0, closed = 0;
    struct rp_buf frame;
    rp_buf_init(&frame);
    for (int k = 0; k < 1000; k++) {
        if (!open) {
            admin_dial(1, &c);
            open = true;
        }
        rp_buf_reset(&frame);
        unsigned kind = rnd(&seed, 10);
        if (kind < 4) {
            /* Random bytes. */
            unsigned n = 1 + rnd(&seed, 512);
            for (unsigned i = 0; i < n; i++) {
                uint8_t b = (uint8_t)rnd(&seed, 256);
                rp_buf_append(&frame, &b, 1);
            }
        } else if (kind < 6) {
            /* A map header, then random bytes: deeper into the decoder. */
            uint8_t b = (uint8_t)(0x80 + rnd(&seed, 16));
            rp_buf_append(&frame, &b, 1);
            unsigned n = rnd(&seed, 256);
            for (unsigned i = 0; i < n; i++) {
                b = (uint8_t)rnd(&seed, 256);
                rp_buf_append(&frame, &b, 1);
            }
        } else {
            /* Well-formed msgpack, a real method, random arguments. */
            random_request(&frame, &seed);
        }
        bool ok;
        char code[64];
        int rv = exchange(&c, frame.data, frame.len, &ok, code, sizeof code);
        cr_assert_neq(rv, RP_ETIMEDOUT, "frame %d (seed %u): no answer in 5 s", k, first_seed);
        if (rv == 0) {
            answered++;
        } else {
            closed++;
            rp_conn_close(&c);
            open = false;
            cr_assert(node_alive(1), "frame %d (seed %u) killed the server", k, first_seed);
        }
    }
    if (open)
        rp_conn_close(&c);

    /* And raw streams that ignore the framing altogether. */
    for (int k = 0; k < 50; k++) {
        admin_dial(1, &c);
        unsigned n = 1 + rnd(&seed, 2000);
        rp_buf_reset(&frame);
        for (unsigned i = 0; i < n; i++) {
            uint8_t b = (uint8_t)rnd(&seed, 256);
            rp_buf_append(&frame, &b, 1);
        }
        SSL_write(c.ssl, frame.data, (int)frame.len);
        rp_conn_close(&c);
    }
    rp_buf_free(&frame);
    cr_log_info("garbage: %u answered, %u connections closed by the server", answered, closed);
    assert_serving(1, "after garbage");
    cr_assert_eq(cluster_wait_ready(1, 1, 0, 5000), 1);
    cluster_pass();
}

/* One request with @ctx on node @i; the answer frame into @ans (parsed into @u). */
static void call_as(SSL_CTX *ctx, int i, const struct rp_buf *req, struct rp_buf *ans,
                    msgpack_unpacked *u)
{
    rp_buf_reset(ans);
    cr_assert_eq(probe(ctx, CL->nodes[i].api_addr, req, 5000, ans), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_mp_parse(ans->data, ans->len, u), 0);
}

static bool frame_has(const struct rp_buf *f, const char *needle)
{
    return memmem(f->data, f->len, needle, strlen(needle)) != NULL;
}

Test(int_security, nodes_never_see_secrets_and_admins_only_when_they_ask)
{
    cluster_start(1);
    char token[64];
    cl_add_token(1, "node", "10m", token, sizeof token);
    struct rp_buf req, ans;
    msgpack_unpacked u;
    rp_buf_init(&req);
    rp_buf_init(&ans);

    /* Admin: the CA without its key, unless asked. */
    SSL_CTX *admin = node_admin_ctx(1);
    cl_req_get(&req, "cert_authority", "tls", false);
    /* The bootstrap records follow the first election by a moment. */
    uint64_t deadline = cl_now_ms() + 10000;
    call_as(admin, 1, &req, &ans, &u);
    while (rp_mp_get(&u.data, "res") == NULL && cl_now_ms() < deadline) {
        msgpack_unpacked_destroy(&u);
        cl_sleep_ms(100);
        call_as(admin, 1, &req, &ans, &u);
    }
    char code[64], err[256];
    cr_assert(rp_mp_get(&u.data, "res") != NULL, "admin get cert_authority/tls: %s %s",
              cl_mp_str(&u.data, "code", code, sizeof code),
              cl_mp_str(&u.data, "error", err, sizeof err));
    cr_assert(!frame_has(&ans, "PRIVATE KEY"), "the CA key went out without --with-secrets");
    msgpack_unpacked_destroy(&u);
    rp_buf_reset(&req);
    auth_req_get(&req, "cert_authority", "tls", false, true);
    call_as(admin, 1, &req, &ans, &u);
    cr_assert(frame_has(&ans, "PRIVATE KEY"), "with_secrets: the admin gets the CA key");
    /* With that key, mint a genuine Node identity of this cluster. */
    const msgpack_object *tls =
        rp_mp_get(rp_mp_get(rp_mp_get(&u.data, "res"), "spec"), "active_keys");
    tls = rp_mp_get(tls, "tls");
    cr_assert(tls && tls->type == MSGPACK_OBJECT_ARRAY && tls->via.array.size == 1);
    char *key_pem = NULL;
    cr_assert_eq(rp_mp_get_strdup(&tls->via.array.ptr[0], "key", &key_pem), 0);
    msgpack_unpacked_destroy(&u);
    EVP_PKEY *ca_key = NULL, *node_key = rp_tls_keygen();
    cr_assert_eq(rp_tls_key_from_pem(key_pem, strlen(key_pem), &ca_key), 0, "%s", rp_errmsg());
    free(key_pem);
    X509 *ca = read_cert(1, "ca.crt"), *cert = NULL;
    char *groups[] = {"Node"};
    struct rp_identity id = {.name = "node-7",
                             .groups = groups,
                             .n_groups = 1,
                             .cluster = CL->cluster_name,
                             .system_role = RP_SYS_NODE,
                             .host_id = "node-7"};
    cr_assert_eq(rp_tls_issue(ca_key, ca, node_key, &id, NULL, 0, 3600, &cert), 0, "%s",
                 rp_errmsg());
    SSL_CTX *node = rp_tls_client_ctx(ca, cert, node_key);
    cr_assert_not_null(node);

    /* The node reads the CA without its key, even when it asks for secrets. */
    call_as(node, 1, &req, &ans, &u);
    cr_assert(rp_mp_get(&u.data, "res") != NULL, "a node may read the CA's public part");
    cr_assert(!frame_has(&ans, "PRIVATE KEY"), "a node got the CA's private key");
    msgpack_unpacked_destroy(&u);
    /* Tokens: denied by name, absent from lists of everything. */
    rp_buf_reset(&req);
    cl_req_get(&req, "token", token, false);
    call_as(node, 1, &req, &ans, &u);
    cr_assert(rp_mp_str_eq(rp_mp_get(&u.data, "code"), "access_denied"),
              "a node read a join token");
    msgpack_unpacked_destroy(&u);
    rp_buf_reset(&req);
    cl_req_simple(&req, "list");
    call_as(node, 1, &req, &ans, &u);
    cr_assert(rp_mp_get(&u.data, "items") != NULL);
    cr_assert(!frame_has(&ans, token), "a node listed a join token");
    cr_assert(!frame_has(&ans, "PRIVATE KEY"), "a node listed the CA key");
    msgpack_unpacked_destroy(&u);
    /* The admin's list of everything shows the token but not the CA key. */
    call_as(admin, 1, &req, &ans, &u);
    cr_assert(frame_has(&ans, token) && !frame_has(&ans, "PRIVATE KEY"));
    msgpack_unpacked_destroy(&u);

    SSL_CTX_free(admin);
    SSL_CTX_free(node);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(node_key);
    X509_free(ca);
    X509_free(cert);
    rp_buf_free(&req);
    rp_buf_free(&ans);
    cluster_pass();
}

/* A join request of @type for host @host_id with fresh keys, without a client cert. */
static void register_host(const char *token, const char *type, const char *host_id,
                          struct rp_buf *ans, msgpack_unpacked *u, EVP_PKEY **ssh_key)
{
    EVP_PKEY *tls_key = rp_tls_keygen();
    char *tls_pub = NULL, *ssh_pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(tls_key, &tls_pub), 0);
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, ssh_key), 0);
    cr_assert_eq(rp_ssh_pubkey_format(*ssh_key, NULL, &ssh_pub), 0);
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 8);
    rp_mp_kv_str(&pk, "m", "join");
    rp_mp_kv_str(&pk, "token", token);
    rp_mp_kv_str(&pk, "type", type);
    rp_mp_kv_str(&pk, "host_id", host_id);
    rp_mp_kv_str(&pk, "nodename", "web1");
    rp_mp_kv_str(&pk, "host_pubkey", tls_pub);
    rp_mp_kv_str(&pk, "ssh_pubkey", ssh_pub);
    rp_mp_pack_str(&pk, "principals");
    msgpack_pack_array(&pk, 1);
    rp_mp_pack_str(&pk, "10.1.2.3");
    SSL_CTX *anon = ctx_with_foreign_cert(NULL);
    call_as(anon, 1, &req, ans, u);
    SSL_CTX_free(anon);
    rp_buf_free(&req);
    free(tls_pub);
    free(ssh_pub);
    EVP_PKEY_free(tls_key);
}

static bool host_ca_exists(void *arg)
{
    (void)arg;
    char *out = NULL;
    int rv = run_tctl(1, &out, "get", "cert_authority/host", NULL);
    free(out);
    return rv == 0;
}

Test(int_security, a_node_registers_with_a_token_and_gets_its_ssh_host_certificate)
{
    cluster_start(1);
    cr_assert(wait_until(15000, host_ca_exists, NULL), "the host SSH CA never appeared");
    char node_token[64], proxy_token[64];
    cl_add_token(1, "node", "10m", node_token, sizeof node_token);
    cl_add_token(1, "proxy", "10m", proxy_token, sizeof proxy_token);
    struct rp_buf ans;
    msgpack_unpacked u;
    EVP_PKEY *key = NULL;
    rp_buf_init(&ans);

    /* Wrong type: a proxy token does not make a node. */
    register_host(proxy_token, "node", "host-1", &ans, &u, &key);
    cr_assert(rp_mp_str_eq(rp_mp_get(&u.data, "code"), "access_denied"),
              "a proxy token made a node");
    msgpack_unpacked_destroy(&u);
    EVP_PKEY_free(key);

    register_host(node_token, "node", "host-1", &ans, &u, &key);
    char ssh_cert[4096], user_ca[512], host_ca[512], code[64];
    cr_assert(rp_mp_get(&u.data, "host_cert") != NULL, "registration failed: %s",
              cl_mp_str(&u.data, "error", code, sizeof code));
    cl_mp_str(&u.data, "ssh_cert", ssh_cert, sizeof ssh_cert);
    cl_mp_str(&u.data, "ssh_user_ca", user_ca, sizeof user_ca);
    cl_mp_str(&u.data, "ssh_host_ca", host_ca, sizeof host_ca);
    msgpack_unpacked_destroy(&u);
    cr_assert(strncmp(user_ca, "ssh-ed25519 ", 12) == 0 &&
              strncmp(host_ca, "ssh-ed25519 ", 12) == 0);

    /* The host certificate: signed by the host CA, for the node's key, with its names. */
    struct rp_ssh_cert cert;
    char *comment = NULL;
    cr_assert_eq(rp_ssh_cert_parse_line(ssh_cert, &cert, &comment), 0, "%s", rp_errmsg());
    EVP_PKEY *host_ca_key = NULL;
    cr_assert_eq(rp_ssh_pubkey_parse(host_ca, &host_ca_key, NULL), 0);
    enum rp_ssh_cert_verdict why;
    char want[128];
    snprintf(want, sizeof want, "web1.%s", CL->cluster_name);
    cr_assert_eq(
        rp_ssh_cert_check(&cert, host_ca_key, RP_SSH_CERT_HOST, (uint64_t)time(NULL), want, &why),
        0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&cert, host_ca_key, RP_SSH_CERT_HOST, (uint64_t)time(NULL),
                                   "10.1.2.3", &why),
                 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&cert, host_ca_key, RP_SSH_CERT_HOST, (uint64_t)time(NULL),
                                   "host-1", &why),
                 0, "%s", rp_errmsg());
    cr_assert_eq(EVP_PKEY_eq(cert.key, key), 1, "the certificate is for another key");
    cr_assert_str_eq(rp_ssh_cert_opt_find(cert.extensions, cert.n_extensions, "x-teleport-role"),
                     "Node");
    rp_ssh_cert_free(&cert);
    free(comment);
    EVP_PKEY_free(host_ca_key);
    EVP_PKEY_free(key);

    /* The refusal is in the audit log. */
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "events", "ls", "--type=instance.join", "--format=json", NULL),
                 0);
    cr_assert(strstr(out, "\"TJ001E\"") && strstr(out, "\"TJ001I\""), "%s", out);
    free(out);
    rp_buf_free(&ans);
    cluster_pass();
}
