/* tests/test_int_proxy_web.c: the proxy's web API (proxy/web.c) as clients use it:
 * libcurl over TLS to a real proxy (`raftport start --roles=proxy`) in front of a real
 * auth cluster.
 *
 * Ping; invite redemption and login through the web API with a good password, a bad one
 * (locked after 5), TOTP required and checked; the node list with the certificate the
 * login returned; the per-address rate limit of requests without a certificate (the
 * 41st in a minute gets 429); the audit events of logins (auth's, naming the client's
 * address, and the proxy's own refusals); an oversized head gets 431 and the proxy
 * goes on serving. Each test sends from its own loopback source address (127.0.0.N),
 * so that the proxy's per-address limits and auth's see distinct clients. */
#include <criterion/criterion.h>
#include <curl/curl.h>
#include <jansson.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/client.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/tls.h"
#include "lib/totp.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"
#include "proxy/web.h"
#include "tests/lib/proxy_proc.h"

static void teardown(void)
{
    px_stop_all();
    cluster_teardown();
}

TestSuite(proxy_web, .init = cluster_setup, .fini = teardown, .timeout = 240);

/* ---- helpers ---------------------------------------------------------------------------- */

static void start_proxy(void)
{
    cluster_start(1);
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(1, token, NULL);
    px_spawn(1);
    cr_assert(px_wait_ready(1, 40000), "the proxy did not start");
}

struct resp {
    long status;
    struct rp_buf body;
    char retry_after[16];
    json_t *json; /* the body parsed, when it is JSON */
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct rp_buf *b = arg;
    rp_buf_append(b, p, size * n);
    return size * n;
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    struct resp *r = arg;
    size_t len = size * n;
    if (len > 13 && strncasecmp(p, "Retry-After: ", 13) == 0)
        snprintf(r->retry_after, sizeof r->retry_after, "%.*s", (int)(len - 15), p + 13);
    return len;
}

/* A client certificate for requests (PEM strings), or none. */
struct client_cert {
    char *cert;
    char *key;
};

/* One request to proxy 1 from source address @src ("127.0.0.N"), with @body (NULL:
 * none) and extra header lines @headers (NULL-terminated, may be NULL). */
static void http(const char *src, const char *method, const char *path, const char *body,
                 const char *const *headers, const struct client_cert *cc, struct resp *r)
{
    memset(r, 0, sizeof *r);
    rp_buf_init(&r->body);
    char url[256], ca[600], iface[64];
    snprintf(url, sizeof url, "https://%s%s", PX[1].web_addr, path);
    snprintf(ca, sizeof ca, "%s/keys/ca.crt", CL->nodes[1].dir);
    snprintf(iface, sizeof iface, "host!%s", src);
    CURL *c = curl_easy_init();
    cr_assert_not_null(c);
    struct curl_slist *hl = NULL;
    for (size_t i = 0; headers && headers[i]; i++)
        hl = curl_slist_append(hl, headers[i]);
    if (body != NULL)
        hl = curl_slist_append(hl, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_URL, url);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_CAINFO, ca);
    curl_easy_setopt(c, CURLOPT_INTERFACE, iface);
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, 30L);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
    curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
    if (body != NULL)
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
    if (cc != NULL) {
        struct curl_blob cert = {cc->cert, strlen(cc->cert), CURL_BLOB_COPY};
        struct curl_blob key = {cc->key, strlen(cc->key), CURL_BLOB_COPY};
        curl_easy_setopt(c, CURLOPT_SSLCERT_BLOB, &cert);
        curl_easy_setopt(c, CURLOPT_SSLCERTTYPE, "PEM");
        curl_easy_setopt(c, CURLOPT_SSLKEY_BLOB, &key);
        curl_easy_setopt(c, CURLOPT_SSLKEYTYPE, "PEM");
    }
    CURLcode rc = curl_easy_perform(c);
    cr_assert_eq(rc, CURLE_OK, "%s %s: %s", method, path, curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hl);
    curl_easy_cleanup(c);
    json_error_t e;
    r->json = json_loadb((const char *)r->body.data, r->body.len, 0, &e);
}

static void resp_free(struct resp *r)
{
    json_decref(r->json);
    rp_buf_free(&r->body);
}

static const char *jstr(json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static const char *error_of(const struct resp *r)
{
    return jstr(json_object_get(r->json, "error"), "message");
}

/* `tctl users add NAME --roles=access --logins=root`: the invite token. */
static void add_user(const char *name, char *tok, size_t n)
{
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "users", "add", name, "--roles=access", "--logins=root", NULL),
                 0);
    cl_invite_token(out, tok, n);
    free(out);
}

/* PUT /webapi/invite; the status. */
static long redeem(const char *src, const char *tok, const char *password, const char *secret,
                   const char *otp)
{
    json_t *b = json_pack("{s:s, s:s}", "token", tok, "password", password);
    if (secret != NULL)
        json_object_set_new(b, "totp_secret", json_string(secret));
    if (otp != NULL)
        json_object_set_new(b, "otp_token", json_string(otp));
    char *body = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    struct resp r;
    http(src, "PUT", "/webapi/invite", body, NULL, NULL, &r);
    free(body);
    long st = r.status;
    cr_expect(st != 200 || (r.json && json_object_size(r.json) == 0), "%.*s", (int)r.body.len,
              r.body.data);
    resp_free(&r);
    return st;
}

/* POST /webapi/ssh/certs with a fresh SSH key and, when @tls_key is not NULL, a fresh
 * P-256 key whose private half goes to *@tls_key (PEM, free it). */
static void login(const char *src, const char *user, const char *password, const char *otp,
                  char **tls_key, struct resp *r)
{
    char *ssh_pub = cl_ssh_pubkey(), *tls_pub = NULL;
    EVP_PKEY *k = NULL;
    if (tls_key != NULL) {
        k = rp_tls_keygen();
        cr_assert_not_null(k);
        cr_assert_eq(rp_tls_pubkey_to_pem(k, &tls_pub), 0);
        BIO *bio = BIO_new(BIO_s_mem());
        cr_assert(PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL) == 1);
        char *p;
        long n = BIO_get_mem_data(bio, &p);
        *tls_key = strndup(p, (size_t)n);
        BIO_free(bio);
    }
    json_t *b =
        json_pack("{s:s, s:s, s:s}", "user", user, "password", password, "pub_key", ssh_pub);
    if (otp != NULL)
        json_object_set_new(b, "otp_token", json_string(otp));
    if (tls_pub != NULL)
        json_object_set_new(b, "tls_pub_key", json_string(tls_pub));
    char *body = json_dumps(b, JSON_COMPACT);
    static const char *const hdr[] = {"X-Raftport-Version: 0.1.0", NULL};
    http(src, "POST", "/webapi/ssh/certs", body, hdr, NULL, r);
    free(body);
    json_decref(b);
    free(ssh_pub);
    free(tls_pub);
    EVP_PKEY_free(k);
}

/* The user.login events of @user whose addr.remote is @addr and whose success is
 * @success, counted. */
struct login_events {
    const char *user, *addr, *error_part;
    bool success;
    unsigned want;
};

static unsigned count_logins(const struct login_events *q)
{
    struct auth_client *admin = node_client(1);
    struct auth_events_query eq = {.type = "user.login", .user = q->user, .limit = 1000};
    struct auth_reply r = {0};
    const msgpack_object *items;
    unsigned n = 0;
    if (auth_client_events(admin, &eq, &r, &items) == 0) {
        for (uint32_t i = 0; i < items->via.array.size; i++) {
            const msgpack_object *e = &items->via.array.ptr[i];
            const char *a, *err = "";
            size_t an, en = 0;
            bool ok = !q->success;
            rp_mp_get_bool(e, "success", &ok);
            rp_mp_get_str(e, "error", &err, &en);
            char errbuf[512];
            snprintf(errbuf, sizeof errbuf, "%.*s", (int)en, err);
            if (rp_mp_get_str(e, "addr.remote", &a, &an) == 0 && an > strlen(q->addr) &&
                strncmp(a, q->addr, strlen(q->addr)) == 0 && a[strlen(q->addr)] == ':' &&
                ok == q->success && (q->error_part == NULL || strstr(errbuf, q->error_part)))
                n++;
        }
    }
    auth_reply_free(&r);
    auth_client_free(admin);
    return n;
}

static bool enough_logins(void *arg)
{
    const struct login_events *q = arg;
    return count_logins(q) >= q->want;
}

/* ---- tests ---------------------------------------------------------------------------------- */

Test(proxy_web, ping_answers_cluster_versions_and_addresses_and_refuses_a_newer_major)
{
    start_proxy();
    struct resp r;
    http("127.0.0.11", "GET", "/webapi/ping", NULL, NULL, NULL, &r);
    cr_assert_eq(r.status, 200, "%.*s", (int)r.body.len, r.body.data);
    cr_assert_not_null(r.json);
    cr_expect_str_eq(jstr(r.json, "cluster_name"), CL->cluster_name);
    cr_expect_str_eq(jstr(r.json, "server_version"), "0.1.0");
    cr_expect_str_eq(jstr(r.json, "min_client_version"), "0.0.0");
    json_t *ssh = json_object_get(json_object_get(r.json, "proxy"), "ssh");
    cr_expect_str_eq(jstr(ssh, "listen_addr"), PX[1].ssh_addr);
    cr_expect_str_eq(jstr(ssh, "tunnel_listen_addr"), PX[1].tunnel_addr);
    cr_expect_str_eq(jstr(json_object_get(r.json, "auth"), "type"), "local");
    resp_free(&r);

    static const char *const newer[] = {"X-Raftport-Version: 1.0.0", NULL};
    http("127.0.0.11", "GET", "/webapi/ping", NULL, newer, NULL, &r);
    cr_expect_eq(r.status, 400);
    cr_expect(strstr(error_of(&r), "1.0.0") != NULL, "%s", error_of(&r));
    resp_free(&r);

    http("127.0.0.11", "GET", "/webapi/nosuch", NULL, NULL, NULL, &r);
    cr_expect_eq(r.status, 404);
    resp_free(&r);
    http("127.0.0.11", "DELETE", "/webapi/ping", NULL, NULL, NULL, &r);
    cr_expect_eq(r.status, 405);
    resp_free(&r);
    px_stop_all();
    cluster_pass();
}

/* A node presence in the cluster, as an agent heartbeats it. */
static void heartbeat_node(const struct cl_node_id *n, const char *env)
{
    struct rp_buf res;
    msgpack_packer pk;
    struct rp_mp_map m, md, labels, spec;
    rp_buf_init(&res);
    rp_mp_packer_init(&pk, &res);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "kind", "node");
    rp_mp_map_str(&m, "version", "v2");
    rp_mp_map_str(&m, "sub_kind", "teleport");
    rp_mp_map_begin_map(&m, "metadata", &md);
    rp_mp_map_str(&md, "name", n->host_id);
    rp_mp_map_begin_map(&md, "labels", &labels);
    rp_mp_map_str(&labels, "env", env);
    rp_mp_map_end(&labels);
    rp_mp_map_end(&md);
    rp_mp_map_begin_map(&m, "spec", &spec);
    rp_mp_map_str(&spec, "addr", "127.0.0.1:3022");
    rp_mp_map_str(&spec, "hostname", n->nodename);
    rp_mp_map_str(&spec, "version", "0.1.0");
    rp_mp_map_str(&spec, "host_key", n->ssh_pub);
    rp_mp_map_str(&spec, "host_cert", n->ssh_cert);
    rp_mp_map_end(&spec);
    rp_mp_map_end(&m);
    struct auth_client *c = cl_node_client(n, 1);
    cr_assert_eq(auth_client_heartbeat(c, res.data, res.len, 600000, NULL, NULL), 0, "%s",
                 rp_errmsg());
    auth_client_free(c);
    rp_buf_free(&res);
}

struct nodes_poll {
    struct client_cert *cc;
    const char *want_host;
    struct resp last;
};

static bool node_listed(void *arg)
{
    struct nodes_poll *p = arg;
    resp_free(&p->last);
    http("127.0.0.12", "GET", "/webapi/nodes", NULL, NULL, p->cc, &p->last);
    json_t *items = json_object_get(p->last.json, "items");
    for (size_t i = 0; i < json_array_size(items); i++)
        if (strcmp(jstr(json_array_get(items, i), "hostname"), p->want_host) == 0)
            return true;
    return false;
}

Test(proxy_web, invite_then_login_gives_certificates_that_list_nodes)
{
    start_proxy();
    cr_assert(cl_wait_presets(15000));
    char tok[64];
    add_user("alice", tok, sizeof tok);
    /* Whose invite it is, before the password is set (tsh login --invite says it). */
    struct resp info;
    char path[128];
    snprintf(path, sizeof path, "/webapi/invite/%s", tok);
    http("127.0.0.12", "GET", path, NULL, NULL, NULL, &info);
    cr_expect_eq(info.status, 200, "%.*s", (int)info.body.len, info.body.data);
    cr_expect_str_eq(jstr(info.json, "user"), "alice");
    cr_expect_eq(strlen(jstr(info.json, "expires")), 20);
    resp_free(&info);
    http("127.0.0.12", "GET", "/webapi/invite/not-a-token", NULL, NULL, NULL, &info);
    cr_expect_eq(info.status, 401);
    resp_free(&info);
    cr_expect_eq(redeem("127.0.0.12", "not-a-token", "a long enough password", NULL, NULL), 401,
                 "a made-up invite");
    cr_assert_eq(redeem("127.0.0.12", tok, "a long enough password", NULL, NULL), 200);
    cr_expect_eq(redeem("127.0.0.12", tok, "a long enough password", NULL, NULL), 401,
                 "an invite is used once");
    http("127.0.0.12", "GET", path, NULL, NULL, NULL, &info);
    cr_expect_eq(info.status, 401, "a used invite still says whose it was");
    resp_free(&info);

    struct resp r;
    char *key = NULL;
    login("127.0.0.12", "alice", "a long enough password", NULL, &key, &r);
    cr_assert_eq(r.status, 200, "%.*s", (int)r.body.len, r.body.data);
    cr_expect_str_eq(jstr(r.json, "username"), "alice");
    cr_expect(strncmp(jstr(r.json, "cert"), "ssh-ed25519-cert-v01@openssh.com ", 33) == 0);
    cr_expect(strstr(jstr(r.json, "tls_cert"), "BEGIN CERTIFICATE") != NULL);
    cr_expect_eq(strlen(jstr(r.json, "expires")), 20, "RFC 3339: %s", jstr(r.json, "expires"));
    json_t *signer = json_array_get(json_object_get(r.json, "host_signers"), 0);
    cr_expect_str_eq(jstr(signer, "cluster_name"), CL->cluster_name);
    cr_expect_eq(json_array_size(json_object_get(signer, "authorized_keys")), 1);
    cr_expect_eq(json_array_size(json_object_get(signer, "tls_certs")), 1);
    cr_expect_eq(json_array_size(json_object_get(r.json, "user_ca")), 1);
    struct client_cert cc = {strdup(jstr(r.json, "tls_cert")), key};
    resp_free(&r);

    /* auth audited the login under the client's address, not the proxy's. */
    struct login_events q = {.user = "alice", .addr = "127.0.0.12", .success = true, .want = 1};
    cr_expect(wait_until(10000, enough_logins, &q), "no user.login event from 127.0.0.12");

    /* The node list: with the certificate only. */
    struct cl_node_id n;
    cl_join_node(1, NULL, "web-7", &n);
    heartbeat_node(&n, "dev");
    http("127.0.0.12", "GET", "/webapi/nodes", NULL, NULL, NULL, &r);
    cr_expect_eq(r.status, 401, "nodes without a certificate");
    resp_free(&r);
    struct nodes_poll p = {.cc = &cc, .want_host = "web-7"};
    rp_buf_init(&p.last.body);
    cr_expect(wait_until(15000, node_listed, &p), "web-7 not listed: %ld %.*s", p.last.status,
              (int)p.last.body.len, p.last.body.data);
    json_t *item = json_array_get(json_object_get(p.last.json, "items"), 0);
    cr_expect_str_eq(jstr(item, "id"), n.host_id);
    cr_expect_str_eq(jstr(item, "addr"), "127.0.0.1:3022");
    cr_expect_str_eq(jstr(json_object_get(item, "labels"), "env"), "dev");
    resp_free(&p.last);

    /* A lock on the node hides it from the list. */
    char *out = NULL;
    char target[128];
    snprintf(target, sizeof target, "--server-id=%s", n.host_id);
    cr_assert_eq(run_tctl(1, &out, "lock", target, "--message=maintenance", NULL), 0);
    free(out);
    bool gone = false;
    for (uint64_t until = cl_now_ms() + 15000; !gone && cl_now_ms() < until;) {
        http("127.0.0.12", "GET", "/webapi/nodes", NULL, NULL, &cc, &r);
        gone = r.status == 200 && json_array_size(json_object_get(r.json, "items")) == 0;
        resp_free(&r);
        if (!gone)
            cl_sleep_ms(100);
    }
    cr_expect(gone, "a locked node is still listed");
    free(cc.cert);
    free(cc.key);
    cl_node_id_free(&n);
    px_stop_all();
    cluster_pass();
}

Test(proxy_web, a_bad_password_is_401_and_five_lock_the_user_with_audit)
{
    start_proxy();
    char tok[64];
    add_user("bob", tok, sizeof tok);
    cr_assert_eq(redeem("127.0.0.13", tok, "the right password", NULL, NULL), 200);
    struct resp r;
    for (int i = 1; i <= 5; i++) {
        login("127.0.0.13", "bob", "a wrong password", NULL, NULL, &r);
        cr_expect_eq(r.status, 401, "attempt %d: %ld", i, r.status);
        cr_expect_str_eq(error_of(&r), "invalid user name or password");
        resp_free(&r);
    }
    login("127.0.0.13", "bob", "the right password", NULL, NULL, &r);
    cr_expect_eq(r.status, 403, "the right password after 5 failures: %ld", r.status);
    cr_expect(strstr(error_of(&r), "locked") != NULL, "%s", error_of(&r));
    cr_expect(strstr(error_of(&r), "try again in") != NULL, "%s", error_of(&r));
    resp_free(&r);
    /* An unknown user gets the same words as a wrong password. */
    login("127.0.0.13", "nobody-here", "a wrong password", NULL, NULL, &r);
    cr_expect_eq(r.status, 401);
    cr_expect_str_eq(error_of(&r), "invalid user name or password");
    resp_free(&r);

    struct login_events q = {.user = "bob", .addr = "127.0.0.13", .success = false, .want = 6};
    cr_expect(wait_until(10000, enough_logins, &q), "%u failed logins audited from 127.0.0.13",
              count_logins(&q));
    px_stop_all();
    cluster_pass();
}

Test(proxy_web, totp_enrolled_through_the_invite_is_required_and_checked)
{
    start_proxy();
    char tok[64];
    add_user("carol", tok, sizeof tok);
    uint8_t secret[RP_TOTP_SECRET_BYTES];
    char b32[64], code[8], next[8];
    cr_assert_eq(rp_totp_generate_secret(secret), 0);
    cr_assert_eq(rp_base32_encode(secret, sizeof secret, b32, sizeof b32), 0);
    uint64_t step = rp_totp_step(rp_now_ms());
    cr_assert_eq(rp_totp_code(secret, sizeof secret, step, code), 0);
    cr_assert_eq(redeem("127.0.0.14", tok, "carol's password", b32, NULL), 400,
                 "a secret without its code");
    cr_assert_eq(redeem("127.0.0.14", tok, "carol's password", b32, code), 200);

    struct resp r;
    login("127.0.0.14", "carol", "carol's password", NULL, NULL, &r);
    cr_expect_eq(r.status, 401);
    cr_expect(strstr(error_of(&r), "one-time code") != NULL, "%s", error_of(&r));
    resp_free(&r);
    char wrong[8];
    snprintf(wrong, sizeof wrong, "%06d", (atoi(code) + 1) % 1000000);
    login("127.0.0.14", "carol", "carol's password", wrong, NULL, &r);
    cr_expect_eq(r.status, 401, "a wrong code");
    resp_free(&r);
    /* The next step's code (within the clock-skew window, never used before). */
    cr_assert_eq(rp_totp_code(secret, sizeof secret, step + 1, next), 0);
    login("127.0.0.14", "carol", "carol's password", next, NULL, &r);
    cr_expect_eq(r.status, 200, "%.*s", (int)r.body.len, r.body.data);
    resp_free(&r);
    login("127.0.0.14", "carol", "carol's password", next, NULL, &r);
    cr_expect_eq(r.status, 401, "a code used once is refused the second time");
    resp_free(&r);
    px_stop_all();
    cluster_pass();
}

Test(proxy_web, the_41st_request_in_a_minute_without_a_certificate_gets_429_and_is_audited)
{
    start_proxy();
    struct resp r;
    for (int i = 1; i <= 40; i++) {
        http("127.0.0.15", "GET", "/webapi/ping", NULL, NULL, NULL, &r);
        cr_assert_eq(r.status, 200, "request %d: %ld", i, r.status);
        resp_free(&r);
    }
    login("127.0.0.15", "dave", "whatever password", NULL, NULL, &r);
    cr_expect_eq(r.status, 429, "the 41st request: %ld", r.status);
    cr_expect(atoi(r.retry_after) >= 1, "Retry-After: '%s'", r.retry_after);
    resp_free(&r);
    /* Another address is not affected. */
    http("127.0.0.16", "GET", "/webapi/ping", NULL, NULL, NULL, &r);
    cr_expect_eq(r.status, 200);
    resp_free(&r);

    /* The proxy's refusals reach the audit log: the throttling summary of the address,
     * and a malformed login under the name it gave. */
    login("127.0.0.16", "erin", "", NULL, NULL, &r);
    cr_expect_eq(r.status, 400, "an empty password: %ld", r.status);
    resp_free(&r);
    struct login_events q = {.user = "erin",
                             .addr = "127.0.0.16",
                             .success = false,
                             .want = 1,
                             .error_part = "password"};
    cr_expect(wait_until(15000, enough_logins, &q), "the malformed login was not audited");
    /* A name with a control character is audited with '?' in its place (auth refuses
     * such names in events, which would drop the proxy's whole batch). */
    login("127.0.0.16", "eve\x01x", "", NULL, NULL, &r);
    cr_expect_eq(r.status, 400);
    resp_free(&r);
    struct login_events qe = {.user = "eve?x", .addr = "127.0.0.16", .success = false, .want = 1};
    cr_expect(wait_until(15000, enough_logins, &qe), "the control character was not replaced");
    struct auth_client *admin = node_client(1);
    bool found = false;
    for (uint64_t until = cl_now_ms() + 15000; !found && cl_now_ms() < until;) {
        struct auth_events_query eq = {.type = "user.login.throttled", .limit = 100};
        struct auth_reply ar = {0};
        const msgpack_object *items;
        if (auth_client_events(admin, &eq, &ar, &items) == 0)
            for (uint32_t i = 0; i < items->via.array.size; i++)
                found = found || rp_mp_str_eq(rp_mp_get(&items->via.array.ptr[i], "addr.remote"),
                                              "127.0.0.15");
        auth_reply_free(&ar);
        if (!found)
            cl_sleep_ms(200);
    }
    cr_expect(found, "no user.login.throttled event for 127.0.0.15");
    auth_client_free(admin);
    px_stop_all();
    cluster_pass();
}

Test(proxy_web, an_oversized_head_gets_431_and_the_proxy_keeps_serving)
{
    start_proxy();
    char *big = malloc(9100);
    memcpy(big, "X-Big: ", 7);
    memset(big + 7, 'a', 9000);
    big[9007] = '\0';
    const char *hdr[] = {big, NULL};
    struct resp r;
    http("127.0.0.17", "GET", "/webapi/ping", NULL, hdr, NULL, &r);
    cr_expect_eq(r.status, 431, "%ld", r.status);
    resp_free(&r);
    free(big);
    char *body = malloc(70001);
    memset(body, ' ', 70000);
    body[70000] = '\0';
    http("127.0.0.17", "POST", "/webapi/ssh/certs", body, NULL, NULL, &r);
    cr_expect_eq(r.status, 413, "%ld", r.status);
    resp_free(&r);
    free(body);
    http("127.0.0.17", "GET", "/webapi/ping", NULL, NULL, NULL, &r);
    cr_expect_eq(r.status, 200);
    resp_free(&r);
    cr_expect(px_alive(1));
    px_stop_all();
    cluster_pass();
}

Test(proxy_web, docs_curl_examples_work)
{
    start_proxy();
    cr_assert(cl_wait_presets(15000));
    char tok[64];
    add_user("alice", tok, sizeof tok);
    char proxy[80], ca[600], token[80], work[600];
    snprintf(proxy, sizeof proxy, "PROXY=%s", PX[1].web_addr);
    snprintf(ca, sizeof ca, "CA=%s/keys/ca.crt", PX[1].dir);
    snprintf(token, sizeof token, "TOKEN=%s", tok);
    snprintf(work, sizeof work, "%s/curl-work", CL->dir);
    cr_assert_eq(rp_mkdir_p(work, 0700), 0);
    char workenv[620];
    snprintf(workenv, sizeof workenv, "WORK=%s", work);
    char *const argv[] = {"/usr/bin/env",
                          proxy,
                          ca,
                          token,
                          "PASSWORD=docs example password",
                          workenv,
                          "bash",
                          "tests/fixtures/web-api-curl.sh",
                          NULL};
    struct cl_run r;
    cl_run_argv(argv, 60000, &r);
    cr_expect_eq(r.status, 0, "the examples of docs/web-api.md failed:\n%s\n%s", r.out, r.err);
    cr_expect(strstr(r.out, "ok") != NULL, "%s", r.out);
    cl_run_free(&r);
    px_stop_all();
    cluster_pass();
}

/* A raw TLS connection to proxy 1 offering http/1.1 (no client certificate). */
static SSL *raw_tls_as(const struct client_cert *cc, SSL_CTX **ctx_out)
{
    char path[600];
    X509 *ca = NULL, *cert = NULL;
    EVP_PKEY *key = NULL;
    snprintf(path, sizeof path, "%s/keys/ca.crt", CL->nodes[1].dir);
    cr_assert_eq(rp_tls_read_cert(path, &ca), 0, "%s", rp_errmsg());
    if (cc != NULL) {
        cr_assert_eq(rp_tls_cert_from_pem(cc->cert, strlen(cc->cert), &cert), 0);
        BIO *bio = BIO_new_mem_buf(cc->key, -1);
        key = PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL);
        BIO_free(bio);
        cr_assert_not_null(key);
    }
    SSL_CTX *ctx = rp_tls_client_ctx(ca, cert, key);
    cr_assert_not_null(ctx, "%s", rp_errmsg());
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
    static const unsigned char alpn[] = "\x08http/1.1";
    SSL_CTX_set_alpn_protos(ctx, alpn, sizeof alpn - 1);
    struct sockaddr_storage ss;
    socklen_t len;
    cr_assert_eq(rp_addr_parse(PX[1].web_addr, &ss, &len), 0);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&ss, len), 0);
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    cr_assert_eq(SSL_connect(ssl), 1, "TLS to the proxy failed");
    *ctx_out = ctx;
    return ssl;
}

static SSL *raw_tls(SSL_CTX **ctx_out)
{
    return raw_tls_as(NULL, ctx_out);
}

static void raw_free(SSL *ssl, SSL_CTX *ctx)
{
    int fd = SSL_get_fd(ssl);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
}

/* Reads from @ssl until @n answers (by their Content-Length) are in @buf or @ms pass. */
static int read_answers(SSL *ssl, char *buf, size_t cap, int n, int ms)
{
    size_t got = 0;
    int done = 0;
    uint64_t until = cl_now_ms() + (uint64_t)ms;
    while (done < n && cl_now_ms() < until && got + 1 < cap) {
        struct pollfd p = {SSL_get_fd(ssl), POLLIN, 0};
        if (SSL_pending(ssl) == 0 && poll(&p, 1, 200) <= 0)
            continue;
        int k = SSL_read(ssl, buf + got, (int)(cap - 1 - got));
        if (k <= 0)
            break;
        got += (size_t)k;
        buf[got] = '\0';
        done = 0;
        for (const char *h = buf; (h = strstr(h, "HTTP/1.1 ")) != NULL; h++) {
            const char *cl = strstr(h, "Content-Length: "), *end = strstr(h, "\r\n\r\n");
            if (cl == NULL || end == NULL || (size_t)(end + 4 - buf) + (size_t)atoi(cl + 16) > got)
                break;
            done++;
        }
    }
    return done;
}

Test(proxy_web, keep_alive_serves_pipelined_requests_in_order_and_idle_connections_close)
{
    start_proxy();
    SSL_CTX *ctx;
    SSL *ssl = raw_tls(&ctx);
    static const char two[] = "GET /webapi/ping HTTP/1.1\r\nHost: p\r\n\r\n"
                              "GET /webapi/nosuch HTTP/1.1\r\nHost: p\r\n\r\n";
    cr_assert_eq(SSL_write(ssl, two, sizeof two - 1), (int)(sizeof two - 1));
    char buf[16384];
    cr_assert_eq(read_answers(ssl, buf, sizeof buf, 2, 10000), 2, "answers: %s", buf);
    char *first = strstr(buf, "HTTP/1.1 200 OK"), *second = strstr(buf, "HTTP/1.1 404");
    cr_expect(first != NULL && second != NULL && first < second, "out of order: %s", buf);
    cr_expect(strstr(buf, "Connection: keep-alive") != NULL);

    /* The same connection, idle: closed by the proxy after 60 s (not before 50). */
    uint64_t t0 = cl_now_ms();
    bool closed = false;
    while (!closed && cl_now_ms() - t0 < 90000) {
        struct pollfd p = {SSL_get_fd(ssl), POLLIN, 0};
        if (poll(&p, 1, 1000) > 0)
            closed = SSL_read(ssl, buf, sizeof buf) <= 0;
    }
    uint64_t idle = cl_now_ms() - t0;
    cr_expect(closed, "an idle connection was kept %llu ms", (unsigned long long)idle);
    cr_expect(idle >= 50000, "closed after %llu ms of idleness", (unsigned long long)idle);
    raw_free(ssl, ctx);
    px_stop_all();
    cluster_pass();
}

Test(proxy_web, requests_with_a_user_certificate_are_not_rate_limited)
{
    start_proxy();
    cr_assert(cl_wait_presets(15000));
    char tok[64];
    add_user("frank", tok, sizeof tok);
    cr_assert_eq(redeem("127.0.0.18", tok, "frank's password", NULL, NULL), 200);
    struct resp r;
    char *key = NULL;
    login("127.0.0.18", "frank", "frank's password", NULL, &key, &r);
    cr_assert_eq(r.status, 200, "%.*s", (int)r.body.len, r.body.data);
    struct client_cert cc = {strdup(jstr(r.json, "tls_cert")), key};
    resp_free(&r);

    /* 1000 requests on one kept-alive connection, one at a time: far past the 40 a
     * client without a certificate may send. */
    SSL_CTX *ctx;
    SSL *ssl = raw_tls_as(&cc, &ctx);
    static const char ping[] = "GET /webapi/ping HTTP/1.1\r\nHost: p\r\n\r\n";
    char buf[16384];
    int ok = 0;
    uint64_t t0 = cl_now_ms();
    for (int i = 0; i < 1000; i++) {
        cr_assert_eq(SSL_write(ssl, ping, sizeof ping - 1), (int)(sizeof ping - 1));
        if (read_answers(ssl, buf, sizeof buf, 1, 10000) == 1 &&
            strncmp(buf, "HTTP/1.1 200 ", 13) == 0)
            ok++;
        else
            break;
    }
    uint64_t ms = cl_now_ms() - t0;
    cr_expect_eq(ok, 1000, "request %d was refused: %.200s", ok + 1, buf);
    fprintf(stderr, "figure: 1000 pings with a user certificate on one connection in %llu ms\n",
            (unsigned long long)ms);
    raw_free(ssl, ctx);
    free(cc.cert);
    free(cc.key);
    px_stop_all();
    cluster_pass();
}

Test(proxy_web, idle_connections_without_a_certificate_are_capped_per_address)
{
    start_proxy();
    enum { N = PX_WEB_CONNS_PER_ADDR };
    SSL *held[N];
    SSL_CTX *ctxs[N];
    for (int i = 0; i < N; i++)
        held[i] = raw_tls(&ctxs[i]);
    /* One more from the same address: answered 503 and closed, not kept. */
    SSL_CTX *ctx;
    SSL *extra = raw_tls(&ctx);
    char buf[4096];
    cr_assert_eq(read_answers(extra, buf, sizeof buf, 1, 10000), 1, "no answer: %s", buf);
    cr_expect(strstr(buf, "HTTP/1.1 503") && strstr(buf, "too many open connections"), "%s", buf);
    raw_free(extra, ctx);
    /* A place freed is a place taken again. */
    raw_free(held[0], ctxs[0]);
    bool served = false;
    for (int attempt = 0; attempt < 50 && !served; attempt++) {
        SSL *again = raw_tls(&ctx);
        static const char ping[] = "GET /webapi/ping HTTP/1.1\r\nHost: p\r\n\r\n";
        SSL_write(again, ping, sizeof ping - 1);
        served = read_answers(again, buf, sizeof buf, 1, 10000) == 1 &&
                 strstr(buf, "HTTP/1.1 200") != NULL;
        raw_free(again, ctx);
        if (!served)
            cl_sleep_ms(100); /* the proxy sees the close on its loop */
    }
    cr_expect(served, "after one connection closed, a new one was still refused: %s", buf);
    for (int i = 1; i < N; i++)
        raw_free(held[i], ctxs[i]);
    cr_expect(px_alive(1));
    px_stop_all();
    cluster_pass();
}
