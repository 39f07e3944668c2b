/* tests/test_web_api.c: the proxy's web API without sockets (proxy/web.h): requests
 * off the wire with their bounds, routing, the version rule, the JSON bodies turned
 * into auth requests, auth's answers turned into the client's, and the node list
 * filtered by roles and locks. tests/test_int_proxy_web.c drives the same through a
 * real proxy. */
#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "proxy/web.h"

/* ---- the parser ---------------------------------------------------------------------- */

/* Feeds @text in pieces of @piece bytes (0: whole); returns the final state, with the
 * number of complete requests in *@n and the first one kept in @first. */
static enum px_http_state feed(struct px_http *h, const char *text, size_t len, size_t piece,
                               int *n, struct px_web_req *first)
{
    size_t pos = 0, offered = 0;
    enum px_http_state st = PX_HTTP_HEAD;
    *n = 0;
    for (int guard = 0; guard < 100000; guard++) {
        size_t more = piece == 0 ? len - pos - offered : piece;
        if (more > len - pos - offered)
            more = len - pos - offered;
        offered += more;
        size_t used = 0;
        st = px_http_feed(h, text + pos, offered, &used);
        pos += used;
        offered -= used;
        if (st == PX_HTTP_HEADERS)
            continue;
        if (st == PX_HTTP_DONE) {
            if (*n == 0 && first != NULL) {
                first->method = h->req.method;
                memcpy(first->path, h->req.path, sizeof first->path);
                memcpy(first->version, h->req.version, sizeof first->version);
                first->keep_alive = h->req.keep_alive;
                first->expect_continue = h->req.expect_continue;
                rp_buf_init(&first->body);
                rp_buf_append(&first->body, h->req.body.data, h->req.body.len);
            }
            (*n)++;
            px_http_next(h);
            continue;
        }
        if (st == PX_HTTP_ERROR || pos + offered >= len)
            return st;
    }
    cr_assert_fail("the parser made no progress");
    return st;
}

Test(web_http, a_get_request_is_parsed_whole_or_byte_by_byte)
{
    static const char req[] = "GET /webapi/ping?x=1 HTTP/1.1\r\nHost: proxy\r\n"
                              "X-Raftport-Version: 0.1.0\r\n\r\n";
    for (size_t piece = 0; piece <= 1; piece++) {
        struct px_http h;
        struct px_web_req r;
        int n;
        px_http_init(&h);
        feed(&h, req, sizeof req - 1, piece, &n, &r);
        cr_assert_eq(n, 1);
        cr_expect_eq(r.method, HTTP_GET);
        cr_expect_str_eq(r.path, "/webapi/ping?x=1");
        cr_expect_str_eq(r.version, "0.1.0");
        cr_expect(r.keep_alive, "HTTP/1.1 keeps the connection by default");
        rp_buf_free(&r.body);
        px_http_free(&h);
    }
}

Test(web_http, pipelined_requests_come_out_one_at_a_time)
{
    static const char req[] = "GET /a HTTP/1.1\r\n\r\n"
                              "POST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                              "GET /c HTTP/1.0\r\n\r\n";
    struct px_http h;
    px_http_init(&h);
    size_t used;
    cr_assert_eq(px_http_feed(&h, req, sizeof req - 1, &used), PX_HTTP_HEADERS);
    size_t pos = used;
    cr_assert_eq(px_http_feed(&h, req + pos, sizeof req - 1 - pos, &used), PX_HTTP_DONE);
    pos += used;
    cr_expect_str_eq(h.req.path, "/a");
    /* Paused: nothing more is taken until the request is answered. */
    cr_assert_eq(px_http_feed(&h, req + pos, sizeof req - 1 - pos, &used), PX_HTTP_DONE);
    cr_expect_eq(used, 0);
    px_http_next(&h);
    int n;
    struct px_web_req second;
    feed(&h, req + pos, sizeof req - 1 - pos, 0, &n, &second);
    cr_expect_eq(n, 2);
    cr_expect_str_eq(second.path, "/b");
    cr_expect_eq(second.body.len, 3);
    cr_expect(memcmp(second.body.data, "abc", 3) == 0);
    cr_expect(!h.req.keep_alive, "HTTP/1.0 without keep-alive closes");
    rp_buf_free(&second.body);
    px_http_free(&h);
}

Test(web_http, a_chunked_body_is_joined)
{
    static const char req[] = "PUT /webapi/invite HTTP/1.1\r\nTransfer-Encoding: chunked\r\n"
                              "Expect: 100-continue\r\n\r\n3\r\n{\"a\r\n2\r\n\"}\r\n0\r\n\r\n";
    struct px_http h;
    struct px_web_req r;
    int n;
    px_http_init(&h);
    feed(&h, req, sizeof req - 1, 5, &n, &r);
    cr_assert_eq(n, 1);
    cr_expect(r.expect_continue);
    cr_expect_eq(r.body.len, 5);
    cr_expect(memcmp(r.body.data, "{\"a\"}", 5) == 0);
    rp_buf_free(&r.body);
    px_http_free(&h);
}

static int refusal_of(const char *text, size_t len, size_t piece)
{
    struct px_http h;
    int n;
    px_http_init(&h);
    enum px_http_state st = feed(&h, text, len, piece, &n, NULL);
    int status = st == PX_HTTP_ERROR ? h.err_status : 0;
    px_http_free(&h);
    return status;
}

Test(web_http, a_head_over_8_kib_gets_431)
{
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_append_str(&b, "GET /webapi/ping HTTP/1.1\r\nX-Big: ");
    for (int i = 0; i < 8200; i++)
        rp_buf_append(&b, "a", 1);
    rp_buf_append_str(&b, "\r\n\r\n");
    cr_expect_eq(refusal_of((const char *)b.data, b.len, 0), 431);
    cr_expect_eq(refusal_of((const char *)b.data, b.len, 7), 431);
    rp_buf_free(&b);
}

Test(web_http, more_than_40_headers_get_431)
{
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_append_str(&b, "GET /webapi/ping HTTP/1.1\r\n");
    for (int i = 0; i < 40; i++)
        rp_buf_printf(&b, "X-H%d: v\r\n", i);
    rp_buf_append_str(&b, "\r\n");
    cr_expect_eq(refusal_of((const char *)b.data, b.len, 0), 0, "40 headers are fine");
    b.len -= 2;
    rp_buf_append_str(&b, "X-One-More: v\r\n\r\n");
    cr_expect_eq(refusal_of((const char *)b.data, b.len, 0), 431);
    rp_buf_free(&b);
}

Test(web_http, a_body_over_64_kib_gets_413_declared_or_chunked)
{
    static const char declared[] =
        "POST /webapi/ssh/certs HTTP/1.1\r\nContent-Length: 65537\r\n\r\n";
    cr_expect_eq(refusal_of(declared, sizeof declared - 1, 0), 413,
                 "refused from the header, before any body byte");
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_append_str(&b, "POST /webapi/ssh/certs HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
    for (int i = 0; i < 70; i++) {
        rp_buf_append_str(&b, "400\r\n");
        for (int k = 0; k < 1024; k++)
            rp_buf_append(&b, "x", 1);
        rp_buf_append_str(&b, "\r\n");
    }
    cr_expect_eq(refusal_of((const char *)b.data, b.len, 0), 413);
    rp_buf_free(&b);
}

Test(web_http, garbage_gets_400_and_a_long_target_414)
{
    static const char garbage[] = "\x16\x03\x01\x02\x00 not http\r\n\r\n";
    cr_expect_eq(refusal_of(garbage, sizeof garbage - 1, 0), 400);
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_append_str(&b, "GET /");
    for (int i = 0; i < 3000; i++)
        rp_buf_append(&b, "p", 1);
    rp_buf_append_str(&b, " HTTP/1.1\r\n\r\n");
    cr_expect_eq(refusal_of((const char *)b.data, b.len, 0), 414);
    rp_buf_free(&b);
}

Test(web_http, a_close_inside_a_request_is_an_error_and_between_requests_is_not)
{
    struct px_http h;
    size_t used;
    px_http_init(&h);
    cr_expect_eq(px_http_eof(&h), PX_HTTP_HEAD, "an idle connection closing is fine");
    static const char part[] = "GET /webapi/pi";
    px_http_feed(&h, part, sizeof part - 1, &used);
    cr_expect_eq(px_http_eof(&h), PX_HTTP_ERROR);
    cr_expect_eq(h.err_status, 400);
    px_http_free(&h);
}

/* ---- routing, version, answers --------------------------------------------------------- */

Test(web_api, routes_name_the_endpoint_or_answer_404_and_405)
{
    struct px_web_answer a;
    px_web_answer_init(&a);
    cr_expect_eq(px_web_route(HTTP_GET, "/webapi/ping", &a), PX_WEB_PING);
    cr_expect_eq(px_web_route(HTTP_GET, "/webapi/ping?v=1", &a), PX_WEB_PING);
    cr_expect_eq(px_web_route(HTTP_POST, "/webapi/ssh/certs", &a), PX_WEB_LOGIN);
    cr_expect_eq(px_web_route(HTTP_PUT, "/webapi/invite", &a), PX_WEB_INVITE_REDEEM);
    cr_expect_eq(px_web_route(HTTP_GET, "/webapi/nodes", &a), PX_WEB_NODES);
    cr_expect_eq(px_web_route(HTTP_GET, "/webapi/pingx", &a), PX_WEB_NONE);
    cr_expect_eq(a.status, 404);
    cr_expect_eq(px_web_route(HTTP_GET, "/webapi/ssh/certs", &a), PX_WEB_NONE);
    cr_expect_eq(a.status, 405);
    cr_expect_str_eq(a.allow, "POST");
    struct rp_buf out;
    rp_buf_init(&out);
    cr_assert_eq(px_web_answer_format(&a, &out), 0);
    rp_buf_append(&out, "", 1);
    cr_expect(strstr((char *)out.data, "HTTP/1.1 405 Method Not Allowed\r\n") != NULL);
    cr_expect(strstr((char *)out.data, "Allow: POST\r\n") != NULL);
    cr_expect(strstr((char *)out.data, "{\"error\":{\"message\":") != NULL);
    rp_buf_free(&out);
    px_web_answer_free(&a);
}

Test(web_api, a_newer_major_or_too_old_client_gets_400_naming_the_rule)
{
    struct px_web_req r;
    memset(&r, 0, sizeof r);
    struct px_web_answer a;
    px_web_answer_init(&a);
    cr_expect_eq(px_web_check_version(&r, "5.1.0", &a), 0, "no header: curl and browsers pass");
    snprintf(r.version, sizeof r.version, "5.0.3");
    cr_expect_eq(px_web_check_version(&r, "5.1.0", &a), 0);
    snprintf(r.version, sizeof r.version, "4.9.0");
    cr_expect_eq(px_web_check_version(&r, "5.1.0", &a), 0, "one major behind is served");
    snprintf(r.version, sizeof r.version, "6.0.0");
    cr_expect_eq(px_web_check_version(&r, "5.1.0", &a), RP_EINVAL);
    cr_expect_eq(a.status, 400);
    rp_buf_append(&a.body, "", 1);
    cr_expect(strstr((char *)a.body.data, "6.0.0") != NULL, "%s", a.body.data);
    snprintf(r.version, sizeof r.version, "3.2.0");
    cr_expect_eq(px_web_check_version(&r, "5.1.0", &a), RP_EINVAL, "two majors behind");
    snprintf(r.version, sizeof r.version, "banana");
    cr_expect_eq(px_web_check_version(&r, "5.1.0", &a), RP_EINVAL);
    px_web_answer_free(&a);
}

static json_t *body_json(const struct px_web_answer *a)
{
    json_error_t e;
    json_t *j = json_loadb((const char *)a->body.data, a->body.len, 0, &e);
    cr_assert(j != NULL, "answer is not JSON: %s", e.text);
    return j;
}

Test(web_api, ping_says_cluster_versions_and_addresses)
{
    struct px_web_info info = {
        .cluster_name = "c1",
        .server_version = "5.2.1",
        .listen_addr = "0.0.0.0:3023",
        .tunnel_listen_addr = "0.0.0.0:3024",
        .web_listen_addr = "0.0.0.0:3080",
        .public_addr = "proxy.example.com:443",
    };
    struct px_web_answer a;
    px_web_answer_init(&a);
    cr_assert_eq(px_web_ping(&info, &a), 0);
    cr_expect_eq(a.status, 200);
    json_t *j = body_json(&a);
    cr_expect_str_eq(json_string_value(json_object_get(j, "cluster_name")), "c1");
    cr_expect_str_eq(json_string_value(json_object_get(j, "server_version")), "5.2.1");
    cr_expect_str_eq(json_string_value(json_object_get(j, "min_client_version")), "4.0.0");
    json_t *ssh = json_object_get(json_object_get(j, "proxy"), "ssh");
    cr_expect_str_eq(json_string_value(json_object_get(ssh, "ssh_public_addr")),
                     "proxy.example.com:3023");
    cr_expect(json_is_true(json_object_get(json_object_get(j, "proxy"), "tls_routing_enabled")));
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(j, "auth"), "type")),
                     "local");
    json_decref(j);
    px_web_answer_free(&a);
}

/* ---- bodies ---------------------------------------------------------------------------- */

static int login(const char *body, struct rp_buf *mp, char *user)
{
    rp_buf_init(mp);
    return px_web_login_request(body, strlen(body), "authenticate", "198.51.100.4:50000", mp, user,
                                160);
}

Test(web_api, a_login_body_becomes_authenticate_with_the_client_address)
{
    struct rp_buf mp;
    char user[160];
    const char *body =
        "{\"user\":\"alice\",\"password\":\"correct horse\",\"otp_token\":\"123456\","
        "\"pub_key\":\"ssh-ed25519 AAAAC3\",\"tls_pub_key\":\"-----BEGIN PUBLIC "
        "KEY-----\",\"ttl\":3600000000000,\"compatibility\":\"x\"}";
    cr_assert_eq(login(body, &mp, user), 0, "%s", rp_errmsg());
    cr_expect_str_eq(user, "alice");
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
    const char *s;
    size_t n;
    uint64_t ttl = 0;
    cr_expect(rp_mp_get_str(&u.data, "m", &s, &n) == 0 && n == 12 && !memcmp(s, "authenticate", n));
    cr_expect(rp_mp_get_str(&u.data, "password", &s, &n) == 0 && n == 13);
    cr_expect(rp_mp_get_str(&u.data, "totp_code", &s, &n) == 0 && n == 6);
    cr_expect(rp_mp_get_str(&u.data, "ssh_pubkey", &s, &n) == 0);
    cr_expect(rp_mp_get_str(&u.data, "tls_pubkey", &s, &n) == 0);
    cr_expect(rp_mp_get_str(&u.data, "client_addr", &s, &n) == 0 &&
              !memcmp(s, "198.51.100.4:50000", n));
    cr_expect(rp_mp_get_u64(&u.data, "ttl_ms", &ttl) == 0 && ttl == 3600000, "ns -> ms");
    cr_expect(rp_mp_get(&u.data, "compatibility") == NULL, "unknown fields are not passed on");
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
}

Test(web_api, a_bad_login_body_is_refused_and_still_names_the_user_for_the_audit)
{
    struct rp_buf mp;
    char user[160];
    cr_expect_eq(login("{\"user\":\"bob\",\"pub_key\":\"ssh-ed25519 A\"}", &mp, user), RP_EINVAL);
    cr_expect_str_eq(user, "bob");
    cr_expect(strstr(rp_errmsg(), "password") != NULL, "%s", rp_errmsg());
    rp_buf_free(&mp);
    cr_expect_eq(login("not json", &mp, user), RP_EINVAL);
    cr_expect_str_eq(user, "");
    rp_buf_free(&mp);
    cr_expect_eq(login("[1,2]", &mp, user), RP_EINVAL);
    rp_buf_free(&mp);
    cr_expect_eq(
        login("{\"user\":\"a\",\"user\":\"b\",\"password\":\"p\",\"pub_key\":\"k\"}", &mp, user),
        RP_EINVAL, "duplicate keys are ambiguous: refused");
    rp_buf_free(&mp);
    cr_expect_eq(login("{\"user\":\"a\\u0000b\",\"password\":\"p\",\"pub_key\":\"k\"}", &mp, user),
                 RP_EINVAL, "a NUL inside a name is refused");
    rp_buf_free(&mp);
    cr_expect_eq(
        login("{\"user\":\"a\",\"password\":\"p\",\"pub_key\":\"k\",\"ttl\":5000000}", &mp, user),
        RP_EINVAL, "a ttl under a minute");
    rp_buf_free(&mp);
    cr_expect_eq(login("{\"user\":\"a\",\"password\":7,\"pub_key\":\"k\"}", &mp, user), RP_EINVAL);
    rp_buf_free(&mp);
}

Test(web_api, an_invite_body_needs_secret_and_code_together)
{
    struct rp_buf mp;
    rp_buf_init(&mp);
    const char *ok = "{\"token\":\"abc\",\"password\":\"pw\",\"totp_secret\":\"JBSWY3DPEHPK3PXP\","
                     "\"otp_token\":\"123456\"}";
    cr_expect_eq(px_web_invite_request(ok, strlen(ok), NULL, "198.51.100.4:1", &mp), 0, "%s",
                 rp_errmsg());
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
    const char *s;
    size_t n;
    cr_expect(rp_mp_get(&u.data, "m") == NULL);
    cr_expect(rp_mp_get_str(&u.data, "totp_code", &s, &n) == 0 && n == 6);
    msgpack_unpacked_destroy(&u);
    rp_buf_reset(&mp);
    const char *half =
        "{\"token\":\"abc\",\"password\":\"pw\",\"totp_secret\":\"JBSWY3DPEHPK3PXP\"}";
    cr_expect_eq(px_web_invite_request(half, strlen(half), NULL, "198.51.100.4:1", &mp), RP_EINVAL);
    rp_buf_free(&mp);
}

/* ---- auth's answers ---------------------------------------------------------------------- */

Test(web_api, auth_failures_map_to_401_403_429_and_503)
{
    struct px_web_answer a;
    px_web_answer_init(&a);
    px_web_auth_failure(RP_EDENIED, "invalid user name or password", &a);
    cr_expect_eq(a.status, 401);
    px_web_auth_failure(RP_EDENIED,
                        "user is locked after too many failed logins; try again in 30 minutes", &a);
    cr_expect_eq(a.status, 403);
    px_web_auth_failure(RP_EBUSY, "too many logins from 1.2.3.4: try again in 3 s", &a);
    cr_expect_eq(a.status, 429);
    cr_expect_gt(a.retry_after_s, 0);
    px_web_auth_failure(RP_EUNAVAILABLE, "no auth server answered", &a);
    cr_expect_eq(a.status, 503);
    px_web_auth_failure(RP_EINVAL, "ssh_pubkey: not a key", &a);
    cr_expect_eq(a.status, 400);
    px_web_answer_free(&a);
}

static void pack_ca(struct rp_buf *b, const char *type, const char *line)
{
    msgpack_packer pk;
    struct rp_mp_map m, spec, keys, one;
    rp_buf_init(b);
    rp_mp_packer_init(&pk, b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "kind", "cert_authority");
    rp_mp_map_begin_map(&m, "spec", &spec);
    rp_mp_map_str(&spec, "type", type);
    rp_mp_map_begin_map(&spec, "active_keys", &keys);
    msgpack_pack_array(rp_mp_map_key(&keys, "ssh"), 1);
    rp_mp_map_begin(&pk, &one);
    rp_mp_map_str(&one, "public_key", line);
    rp_mp_map_end(&one);
    rp_mp_map_end(&keys);
    rp_mp_map_end(&spec);
    rp_mp_map_end(&m);
}

Test(web_api, the_login_answer_carries_certificates_and_ca_keys)
{
    struct rp_buf ans, host, user;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&ans);
    rp_mp_packer_init(&pk, &ans);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_bool(&m, "ok", true);
    rp_mp_map_str(&m, "ssh_cert", "ssh-ed25519-cert-v01@openssh.com AAAA");
    rp_mp_map_u64(&m, "expires", 1795000000000ull);
    rp_mp_map_str(&m, "tls_cert", "-----BEGIN CERTIFICATE-----\nX\n");
    rp_mp_map_str(&m, "tls_ca", "-----BEGIN CERTIFICATE-----\nCA\n");
    rp_mp_map_end(&m);
    pack_ca(&host, "host", "ssh-ed25519 HOSTCA");
    pack_ca(&user, "user", "ssh-ed25519 USERCA");
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(ans.data, ans.len, &u), 0);
    struct px_web_answer a;
    px_web_answer_init(&a);
    cr_assert_eq(
        px_web_login_answer(&u.data, "alice", "c1", host.data, host.len, user.data, user.len, &a),
        0);
    json_t *j = body_json(&a);
    cr_expect_str_eq(json_string_value(json_object_get(j, "username")), "alice");
    cr_expect_str_eq(json_string_value(json_object_get(j, "expires")), "2026-11-18T11:06:40Z");
    json_t *signer = json_array_get(json_object_get(j, "host_signers"), 0);
    cr_expect_str_eq(json_string_value(json_object_get(signer, "cluster_name")), "c1");
    cr_expect_str_eq(
        json_string_value(json_array_get(json_object_get(signer, "authorized_keys"), 0)),
        "ssh-ed25519 HOSTCA");
    cr_expect_eq(json_array_size(json_object_get(signer, "tls_certs")), 1);
    cr_expect_str_eq(json_string_value(json_array_get(json_object_get(j, "user_ca"), 0)),
                     "ssh-ed25519 USERCA");
    json_decref(j);
    px_web_answer_free(&a);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&ans);
    rp_buf_free(&host);
    rp_buf_free(&user);
}

/* ---- nodes --------------------------------------------------------------------------------- */

struct fake_view {
    struct rbac_role *roles[2];
    size_t n_roles;
    const char *locked_host; /* a lock on this node */
};

static int fake_role_set(void *arg, const char *const *roles, size_t n_roles, struct rbac_set **out,
                         char *why, size_t why_len)
{
    struct fake_view *v = arg;
    (void)roles;
    (void)n_roles;
    return rbac_set_new(v->roles, v->n_roles, NULL, out);
}

static int fake_lock_check(void *arg, const char *user, const char *const *roles, size_t n_roles,
                           const char *login, const char *host_id, char *why, size_t why_len)
{
    struct fake_view *v = arg;
    if (v->locked_host && strcmp(host_id, v->locked_host) == 0) {
        snprintf(why, why_len, "%s is locked", host_id);
        return RP_EDENIED;
    }
    return 0;
}

static bool fake_tunnel(void *arg, const char *host_id)
{
    return strcmp(host_id, "id-db") == 0;
}

static void pack_node(struct rp_buf *b, const char *id, const char *hostname, const char *env)
{
    msgpack_packer pk;
    struct rp_mp_map m, meta, labels, spec;
    rp_buf_init(b);
    rp_mp_packer_init(&pk, b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "kind", "node");
    rp_mp_map_begin_map(&m, "metadata", &meta);
    rp_mp_map_str(&meta, "name", id);
    rp_mp_map_begin_map(&meta, "labels", &labels);
    rp_mp_map_str(&labels, "env", env);
    rp_mp_map_end(&labels);
    rp_mp_map_end(&meta);
    rp_mp_map_begin_map(&m, "spec", &spec);
    rp_mp_map_str(&spec, "hostname", hostname);
    rp_mp_map_str(&spec, "addr", "10.0.0.1:3022");
    rp_mp_map_str(&spec, "version", "0.1.0");
    rp_mp_map_str(&spec, "host_key", "ssh-ed25519 K");
    rp_mp_map_end(&spec);
    rp_mp_map_end(&m);
}

static const char *dev_role = "kind: role\nversion: v7\nmetadata: {name: dev}\n"
                              "spec:\n  allow:\n    logins: [ubuntu]\n"
                              "    node_labels: {env: [dev, staging, prod]}\n"
                              "  deny:\n    node_labels: {env: prod}\n";

Test(web_api, nodes_are_filtered_by_roles_deny_first_and_by_locks)
{
    struct fake_view v = {.n_roles = 1, .locked_host = "id-staging"};
    cr_assert_eq(rbac_role_parse_yaml("dev", dev_role, strlen(dev_role), &v.roles[0]), 0, "%s",
                 rp_errmsg());
    struct rp_buf b[4];
    msgpack_unpacked u[4];
    const msgpack_object *nodes[4];
    const char *ids[4] = {"id-dev", "id-prod", "id-staging", "id-db"};
    const char *envs[4] = {"dev", "prod", "staging", "dev"};
    for (int i = 0; i < 4; i++) {
        pack_node(&b[i], ids[i], ids[i] + 3, envs[i]);
        cr_assert_eq(rp_mp_parse(b[i].data, b[i].len, &u[i]), 0);
        nodes[i] = &u[i].data;
    }
    char *logins[] = {"ubuntu"}, *groups[] = {"dev"};
    struct rp_identity alice = {
        .name = "alice", .groups = groups, .n_groups = 1, .logins = logins, .n_logins = 1};
    struct px_web_nodes_src src = {&v, fake_role_set, fake_lock_check, fake_tunnel};
    struct px_web_answer a;
    px_web_answer_init(&a);
    cr_assert_eq(px_web_nodes(&src, &alice, nodes, 4, &a), 0);
    json_t *j = body_json(&a);
    json_t *items = json_object_get(j, "items");
    cr_assert_eq(json_array_size(items), 2, "dev and db (prod denied, staging locked): %.*s",
                 (int)a.body.len, a.body.data);
    cr_expect_str_eq(json_string_value(json_object_get(json_array_get(items, 0), "id")), "id-dev");
    json_t *db = json_array_get(items, 1);
    cr_expect_str_eq(json_string_value(json_object_get(db, "hostname")), "db");
    cr_expect(json_is_true(json_object_get(db, "tunnel")));
    cr_expect_str_eq(json_string_value(json_object_get(json_object_get(db, "labels"), "env")),
                     "dev");
    json_decref(j);

    /* A user whose certificate has no login allowed anywhere sees nothing. */
    char *other[] = {"root"};
    alice.logins = other;
    cr_assert_eq(px_web_nodes(&src, &alice, nodes, 4, &a), 0);
    j = body_json(&a);
    cr_expect_eq(json_array_size(json_object_get(j, "items")), 0);
    json_decref(j);
    px_web_answer_free(&a);
    for (int i = 0; i < 4; i++) {
        msgpack_unpacked_destroy(&u[i]);
        rp_buf_free(&b[i]);
    }
    rbac_role_free(v.roles[0]);
}
