/* tests/test_int_admission.c: what a resource must be to enter the state
 * (auth/admit.c), tried on every write path against a real cluster: put, create,
 * update, cas, each op of a batch, tctl create [-f], tctl users add (the invite)
 * and users update. Bad names and system role names in any case are refused
 * everywhere; tokens expire (30m by default, 48h at most) and a join uses one up,
 * even when two joins race; Teleport's user and token files load; no role makes a
 * user certificate outlive auth_service.max_session_ttl. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/client.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/names.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "lib/yaml_mp.h"
#include "tests/lib/cluster.h"

TestSuite(int_admission, .init = cluster_setup, .fini = cluster_teardown, .timeout = 240);

static void start_one(void)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(20000), "no preset roles");
}

/* A resource from YAML text (printf-style) into @out. */
static void res_yaml(struct rp_buf *out, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void res_yaml(struct rp_buf *out, const char *fmt, ...)
{
    char text[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    rp_buf_reset(out);
    cr_assert_eq(rp_ymp_parse_str("res", text, strlen(text), out, NULL), 0, "%s", rp_errmsg());
}

/* The write paths a resource can take through the API. */
enum path { P_PUT, P_CREATE, P_UPDATE, P_CAS, P_BATCH, P_BATCH_SECOND, N_PATHS };
static const char *const path_names[] = {"put", "create", "update",
                                         "cas", "batch",  "batch (second op)"};

/* Writes @res by @path on node 1; returns the call's code and copies the message. */
static int write_by(enum path p, const struct rp_buf *res, char *msg, size_t msglen)
{
    struct rp_buf req, ok;
    msgpack_packer pk;
    char rid[33];
    rp_buf_init(&req);
    rp_buf_init(&ok);
    rp_mp_packer_init(&pk, &req);
    auth_new_rid(rid);
    if (p == P_BATCH || p == P_BATCH_SECOND) {
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_str(&pk, "m", "batch");
        rp_mp_kv_str(&pk, "rid", rid);
        rp_mp_pack_str(&pk, "ops");
        msgpack_pack_array(&pk, p == P_BATCH ? 1 : 2);
        if (p == P_BATCH_SECOND) { /* a harmless first op: the second must still be seen */
            res_yaml(&ok, "kind: itest\nversion: v1\nmetadata:\n  name: fine-%s\nspec: {}\n", rid);
            msgpack_pack_map(&pk, 2);
            rp_mp_kv_str(&pk, "op", "put");
            rp_mp_kv_raw(&pk, "res", ok.data, ok.len);
        }
        msgpack_pack_map(&pk, 2);
        rp_mp_kv_str(&pk, "op", "put");
        rp_mp_kv_raw(&pk, "res", res->data, res->len);
    } else {
        static const char *const ops[] = {"put", "create", "update", "cas"};
        msgpack_pack_map(&pk, p == P_CAS ? 4 : 3);
        rp_mp_kv_str(&pk, "m", ops[p]);
        rp_mp_kv_str(&pk, "rid", rid);
        rp_mp_kv_raw(&pk, "res", res->data, res->len);
        if (p == P_CAS)
            rp_mp_kv_u64(&pk, "rev", 0);
    }
    msgpack_unpacked resp;
    int rv = node_call(1, req.data, req.len, &resp, 0);
    if (msg)
        snprintf(msg, msglen, "%s", rv ? rp_errmsg() : "");
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    rp_buf_free(&ok);
    return rv;
}

static void assert_refused_everywhere(const struct rp_buf *res, const char *what, const char *want)
{
    for (int p = 0; p < N_PATHS; p++) {
        char msg[512];
        int rv = write_by((enum path)p, res, msg, sizeof msg);
        cr_assert_eq(rv, RP_EINVAL, "%s was not refused by %s (%s): %s", what, path_names[p],
                     rp_strerror(rv), msg);
        cr_assert(want == NULL || strstr(msg, want) != NULL, "%s by %s: want '%s' in: %s", what,
                  path_names[p], want, msg);
    }
}

static int tctl_create_yaml(bool force, const char *yaml, char **err)
{
    char path[600], tctl[600];
    cl_write_file("res.yaml", yaml, path, sizeof path);
    snprintf(tctl, sizeof tctl, "%s/tctl", CL->build);
    char *argv[] = {
        tctl, "-c", CL->nodes[1].cfg, "create", force ? "-f" : path, force ? path : NULL, NULL};
    struct cl_run r;
    cl_run_argv(argv, 20000, &r);
    int st = r.status;
    if (err)
        *err = strdup(r.err ? r.err : "");
    cl_run_free(&r);
    return st;
}

/* Names of every stored resource of @kind, newline-separated, into a new string. */
static char *names_of(const char *kind)
{
    struct rp_buf req, all;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_buf_init(&all);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "list");
    rp_mp_kv_str(&pk, "kind", kind);
    rp_mp_kv_bool(&pk, "with_secrets", true);
    msgpack_unpacked resp;
    cr_assert_eq(node_call(1, req.data, req.len, &resp, 0), 0, "list %s: %s", kind, rp_errmsg());
    const msgpack_object *items = rp_mp_get(&resp.data, "items");
    for (uint32_t i = 0; items && i < items->via.array.size; i++) {
        const char *n;
        size_t nl;
        if (rp_mp_get_str(rp_mp_get(&items->via.array.ptr[i], "metadata"), "name", &n, &nl) == 0)
            rp_buf_printf(&all, "%.*s\n", (int)nl, n);
    }
    rp_buf_append(&all, "", 1);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    char *s = strdup((char *)all.data);
    rp_buf_free(&all);
    return s;
}

/* ---- names ------------------------------------------------------------------------ */

/* In YAML double-quoted form: \\x1b, \\t and \\u00a0 are YAML escapes. */
static const char *const bad_names[] = {"../../etc/passwd", "a/b",         "..",  "has space",
                                        "tab\\there",       "esc\\x1b[0m", "-rf", "nbsp\\u00a0x",
                                        "zw\\u200bsp"};

Test(int_admission, bad_names_are_refused_on_every_write_path)
{
    start_one();
    struct rp_buf res;
    rp_buf_init(&res);
    /* Each place a name stands: the resource (with %s for the name), how a failure
     * calls it, and what the refusal must name. A lock's target is a name too. */
    static const struct {
        const char *yaml, *what, *want;
    } places[] = {
        {"kind: user\nversion: v2\nmetadata:\n  name: \"%s\"\nspec:\n  roles: [access]\n",
         "user name", "user name"},
        {"kind: role\nversion: v7\nmetadata:\n  name: \"%s\"\nspec: {}\n", "role name", "name"},
        {"kind: lock\nversion: v2\nmetadata:\n  name: \"%s\"\nspec:\n  target:\n    user: bob\n",
         "lock name", "lock name"},
        {"kind: node\nversion: v2\nmetadata:\n  name: \"%s\"\nspec: {}\n", "node name",
         "node name"},
        {"kind: token\nversion: v2\nmetadata:\n  name: \"%s0123456789abcdef\"\nspec:\n  roles: "
         "[Node]\n",
         "token name", "token name"},
        {"kind: lock\nversion: v2\nmetadata:\n  name: l1\nspec:\n  target:\n    user: \"%s\"\n",
         "lock target", "spec.target.user"},
    };
    char what[128];
    for (size_t i = 0; i < sizeof bad_names / sizeof bad_names[0]; i++) {
        for (size_t k = 0; k < sizeof places / sizeof places[0]; k++) {
            char yaml[4096];
            snprintf(yaml, sizeof yaml, places[k].yaml, bad_names[i]);
            res_yaml(&res, "%s", yaml);
            snprintf(what, sizeof what, "%s #%zu", places[k].what, i);
            assert_refused_everywhere(&res, what, places[k].want);
        }
    }
    /* A login of a user resource is a Unix name or a trait template. */
    res_yaml(&res, "kind: user\nversion: v2\nmetadata:\n  name: carol\nspec:\n  roles: [access]\n"
                   "  traits:\n    logins: [\"../root\"]\n");
    assert_refused_everywhere(&res, "a bad login", "spec.traits.logins[0]");
    /* A user's roles must exist. */
    res_yaml(&res, "kind: user\nversion: v2\nmetadata:\n  name: carol\nspec:\n  roles: [nope]\n");
    for (int p = 0; p < N_PATHS; p++)
        cr_assert_neq(write_by((enum path)p, &res, NULL, 0), 0, "a user with a missing role (%s)",
                      path_names[p]);
    /* The administrator identity's name of an auth server is no user name. */
    res_yaml(&res, "kind: user\nversion: v2\nmetadata:\n  name: admin@auth1\nspec:\n  roles: "
                   "[access]\n");
    assert_refused_everywhere(&res, "admin@auth1", "reserved");

    /* tctl create and create -f (a file), and the invite (tctl users add). */
    char *err = NULL, *out = NULL;
    cr_assert_neq(tctl_create_yaml(false,
                                   "kind: user\nversion: v2\nmetadata:\n  name: "
                                   "../../etc/passwd\nspec:\n  roles: [access]\n",
                                   &err),
                  0);
    cr_assert(strstr(err, "user name") != NULL, "%s", err);
    free(err);
    cr_assert_neq(tctl_create_yaml(true,
                                   "kind: user\nversion: v2\nmetadata:\n  name: a/b\nspec:\n"
                                   "  roles: [access]\n",
                                   &err),
                  0);
    free(err);
    static const char *const bad_invites[] = {"../../etc/passwd", "a/b", "admin@auth1", "a b"};
    for (size_t i = 0; i < sizeof bad_invites / sizeof bad_invites[0]; i++) {
        cr_assert_neq(run_tctl(1, &out, "users", "add", bad_invites[i], "--roles=access", NULL), 0,
                      "users add '%s' was accepted", bad_invites[i]);
        free(out);
    }
    cr_assert_neq(
        run_tctl(1, &out, "users", "add", "dave", "--roles=access", "--logins=root,../x", NULL), 0,
        "a bad login was accepted by users add");
    free(out);
    /* An email is a fine user name. */
    cr_assert_eq(run_tctl(1, &out, "users", "add", "eve@example.com", "--roles=access", NULL), 0);
    free(out);

    char *users = names_of("user");
    cr_assert(strstr(users, "/") == NULL && strstr(users, "admin@") == NULL &&
                  strstr(users, "carol") == NULL && strstr(users, "eve@example.com") != NULL,
              "stored users:\n%s", users);
    free(users);
    rp_buf_free(&res);
    cluster_pass();
}

/* ---- system role names ------------------------------------------------------------- */

static const char *const sys_names[] = {
    "Admin",
    "admin",
    "ADMIN",
    "aDmIn",
    "Auth",
    "auth",
    "AUTH",
    "Node",
    "node",
    "NoDe",
    "Proxy",
    "proxy",
    "PROXY",
    "Kube",
    "App",
    "db",
    "Db",
    "WindowsDesktop",
    "windows_desktop",
    "Bot",
    "bot",
    "Instance",
    "instance",
    "RemoteProxy",
    "remote_proxy",
    "Signup",
    "Nop",
    "MDM",
    "mdm",
    "Okta",
    "Discovery",
    "trusted_cluster",
    "Trusted_Cluster",
    "ProvisionToken",
    "AccessGraphPlugin",
};

Test(int_admission, system_role_names_are_refused_in_every_case_on_every_path)
{
    start_one();
    struct rp_buf res;
    rp_buf_init(&res);
    char *out = NULL, *err = NULL;
    cr_assert_eq(run_tctl(1, &out, "users", "add", "ed", "--roles=editor", NULL), 0);
    free(out);
    for (size_t i = 0; i < sizeof sys_names / sizeof sys_names[0]; i++) {
        const char *n = sys_names[i];
        char what[128];
        res_yaml(&res,
                 "kind: role\nversion: v7\nmetadata:\n  name: %s\nspec:\n  allow:\n    rules:\n"
                 "    - resources: ['*']\n      verbs: ['*']\n",
                 n);
        snprintf(what, sizeof what, "role %s", n);
        assert_refused_everywhere(&res, what, "reserved");
        /* A user resource naming it as a role. */
        res_yaml(&res, "kind: user\nversion: v2\nmetadata:\n  name: ed\nspec:\n  roles: [%s]\n", n);
        snprintf(what, sizeof what, "user with role %s", n);
        assert_refused_everywhere(&res, what, "reserved");
        /* users add (the invite) and users update. */
        char roles[64];
        snprintf(roles, sizeof roles, "--roles=%s", n);
        cr_assert_neq(run_tctl(1, &out, "users", "add", "mallory", roles, NULL), 0, "users add %s",
                      roles);
        free(out);
        snprintf(roles, sizeof roles, "--set-roles=%s", n);
        cr_assert_neq(run_tctl(1, &out, "users", "update", "ed", roles, NULL), 0, "users update %s",
                      roles);
        free(out);
    }
    /* tctl create and create -f of such a role, and of a user holding one. */
    static const char *const by_file[] = {"Admin", "admin", "node", "Auth"};
    for (size_t i = 0; i < sizeof by_file / sizeof by_file[0]; i++) {
        char yaml[512];
        snprintf(yaml, sizeof yaml,
                 "kind: role\nversion: v7\nmetadata:\n  name: %s\nspec:\n  allow:\n    "
                 "logins: [root]\n",
                 by_file[i]);
        cr_assert_neq(tctl_create_yaml(i % 2 == 0, yaml, &err), 0, "tctl create role %s",
                      by_file[i]);
        cr_assert(strstr(err, "reserved") != NULL, "%s", err);
        free(err);
        snprintf(yaml, sizeof yaml,
                 "kind: user\nversion: v2\nmetadata:\n  name: ed\nspec:\n  roles: [%s]\n",
                 by_file[i]);
        cr_assert_neq(tctl_create_yaml(true, yaml, &err), 0, "tctl create -f user with %s",
                      by_file[i]);
        free(err);
    }
    /* Nothing of that name was stored, and ed still holds editor only. */
    char *roles = names_of("role");
    for (char *line = roles, *nl; (nl = strchr(line, '\n')) != NULL; line = nl + 1) {
        *nl = '\0';
        cr_assert_null(rp_system_role(line, strlen(line)), "role '%s' was stored", line);
    }
    free(roles);
    cr_assert_eq(run_tctl(1, &out, "get", "user/ed", NULL), 0);
    cr_assert(strstr(out, "- editor") != NULL && strstr(out, "Admin") == NULL, "%s", out);
    free(out);
    rp_buf_free(&res);
    cluster_pass();
}

/* ---- tokens -------------------------------------------------------------------------- */

static void rfc3339(uint64_t ms, char *out, size_t n)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

/* The stored token @name, parsed into @u (destroy it); 0 or the get's error. */
static int get_token(const char *name, msgpack_unpacked *u, struct rp_buf *keep)
{
    struct rp_buf req;
    rp_buf_init(&req);
    auth_req_get(&req, "token", name, false, true);
    msgpack_unpacked resp;
    int rv = node_call(1, req.data, req.len, &resp, 0);
    rp_buf_free(&req);
    if (rv == 0) {
        rp_buf_reset(keep);
        rp_mp_pack_object(keep, rp_mp_get(&resp.data, "res"));
        cr_assert_eq(rp_mp_parse(keep->data, keep->len, u), 0);
    }
    msgpack_unpacked_destroy(&resp);
    return rv;
}

static uint64_t token_expires(const char *name)
{
    msgpack_unpacked u;
    struct rp_buf keep;
    rp_buf_init(&keep);
    cr_assert_eq(get_token(name, &u, &keep), 0, "token %s: %s", name, rp_errmsg());
    uint64_t e = 0;
    rp_mp_get_u64(rp_mp_get(&u.data, "metadata"), "expires", &e);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&keep);
    return e;
}

Test(int_admission, tokens_expire_in_30m_by_default_and_within_48h_at_most)
{
    start_one();
    struct rp_buf res, req;
    rp_buf_init(&res);
    rp_buf_init(&req);
    char when[64];

    /* No expiry: 30 minutes, and the answer warns about it. */
    res_yaml(&res, "kind: token\nversion: v2\nmetadata:\n  name: aaaaaaaaaaaaaaaa1111\nspec:\n  "
                   "roles: [node]\n");
    msgpack_packer pk;
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "create");
    rp_mp_kv_raw(&pk, "res", res.data, res.len);
    msgpack_unpacked resp;
    uint64_t before = rp_now_ms();
    cr_assert_eq(node_call(1, req.data, req.len, &resp, 0), 0, "%s", rp_errmsg());
    const msgpack_object *w = rp_mp_get(&resp.data, "warnings");
    cr_assert(w && w->type == MSGPACK_OBJECT_ARRAY && w->via.array.size == 1, "no warning");
    msgpack_unpacked_destroy(&resp);
    uint64_t e = token_expires("aaaaaaaaaaaaaaaa1111");
    cr_assert(e >= before + 30 * 60000 && e <= rp_now_ms() + 30 * 60000, "expires %llu",
              (unsigned long long)e);
    /* Stored in Teleport's spelling of the role, with join_method token. */
    {
        msgpack_unpacked u;
        struct rp_buf keep;
        rp_buf_init(&keep);
        cr_assert_eq(get_token("aaaaaaaaaaaaaaaa1111", &u, &keep), 0);
        const msgpack_object *spec = rp_mp_get(&u.data, "spec");
        const msgpack_object *roles = rp_mp_get(spec, "roles");
        cr_assert(roles && roles->via.array.size == 1 &&
                  rp_mp_str_eq(&roles->via.array.ptr[0], "Node"));
        cr_assert(rp_mp_str_eq(rp_mp_get(spec, "join_method"), "token"));
        msgpack_unpacked_destroy(&u);
        rp_buf_free(&keep);
    }

    /* RFC 3339 within 48h: stored as milliseconds. */
    uint64_t in47h = (rp_now_ms() / 1000 + 47 * 3600) * 1000;
    rfc3339(in47h, when, sizeof when);
    res_yaml(&res,
             "kind: token\nversion: v2\nmetadata:\n  name: bbbbbbbbbbbbbbbb2222\n  expires: "
             "\"%s\"\nspec:\n  roles: [Proxy]\n  join_method: token\n",
             when);
    cr_assert_eq(write_by(P_PUT, &res, NULL, 0), 0, "%s", rp_errmsg());
    cr_assert_eq(token_expires("bbbbbbbbbbbbbbbb2222"), in47h);

    /* Beyond 48h, in the past, or malformed: refused on every path. */
    rfc3339(rp_now_ms() + 49ull * 3600 * 1000, when, sizeof when);
    res_yaml(&res,
             "kind: token\nversion: v2\nmetadata:\n  name: cccccccccccccccc3333\n  expires: "
             "\"%s\"\nspec:\n  roles: [Node]\n",
             when);
    assert_refused_everywhere(&res, "a token for 49h", "48h");
    res_yaml(&res,
             "kind: token\nversion: v2\nmetadata:\n  name: cccccccccccccccc3333\n  expires: "
             "%llu\nspec:\n  roles: [Node]\n",
             (unsigned long long)(rp_now_ms() + 49ull * 3600 * 1000));
    assert_refused_everywhere(&res, "a token for 49h (ms)", "48h");
    res_yaml(&res, "kind: token\nversion: v2\nmetadata:\n  name: cccccccccccccccc3333\n  expires: "
                   "\"2020-01-01T00:00:00Z\"\nspec:\n  roles: [Node]\n");
    assert_refused_everywhere(&res, "an expired token", "passed");
    res_yaml(&res, "kind: token\nversion: v2\nmetadata:\n  name: cccccccccccccccc3333\n  expires: "
                   "tomorrow\nspec:\n  roles: [Node]\n");
    assert_refused_everywhere(&res, "a token with a bad expiry", "RFC 3339");
    /* Roles: only system roles a token may grant. */
    res_yaml(&res, "kind: token\nversion: v2\nmetadata:\n  name: cccccccccccccccc3333\nspec:\n  "
                   "roles: [Admin]\n");
    assert_refused_everywhere(&res, "an Admin token", "spec.roles");
    res_yaml(&res, "kind: token\nversion: v2\nmetadata:\n  name: cccccccccccccccc3333\nspec:\n  "
                   "roles: [access]\n");
    assert_refused_everywhere(&res, "a token granting a user role", "spec.roles");
    /* A guessable secret loads (Teleport's own examples use readable names), with a
     * warning that says why it is a poor one. */
    {
        char path[600], *o = NULL;
        const char *y = "kind: token\nversion: v2\nmetadata:\n  name: abc-token\nspec:\n  roles: "
                        "[Node]\n";
        snprintf(path, sizeof path, "%s/short-token.yaml", CL->dir);
        cr_assert_eq(rp_write_file(path, y, strlen(y), 0600), 0);
        cr_assert_eq(run_tctl(1, &o, "create", path, NULL), 0, "%s", o);
        free(o);
        char tctl[600];
        snprintf(tctl, sizeof tctl, "%s/tctl", CL->build);
        char *argv[] = {tctl, "-c", CL->nodes[1].cfg, "create", "-f", path, NULL};
        struct cl_run r;
        cl_run_argv(argv, 20000, &r);
        cr_assert_eq(r.status, 0, "%s", r.err);
        cr_assert(r.err && strstr(r.err, "warning:") && strstr(r.err, "easy to guess"),
                  "no warning for a 9-byte token: %s", r.err ? r.err : "");
        cl_run_free(&r);
    }
    /* An invite written directly must expire too (else it would open the account forever). */
    res_yaml(&res, "kind: user_token\nversion: v1\nmetadata:\n  name: "
                   "dddddddddddddddd4444\nspec:\n  user: alice\n  type: invite\n");
    assert_refused_everywhere(&res, "an invite without expiry", "invite must expire");
    /* tctl tokens add keeps to the same bounds. */
    char *out = NULL;
    cr_assert_neq(run_tctl(1, &out, "tokens", "add", "--type=node", "--ttl=49h", NULL), 0);
    free(out);
    rp_buf_free(&res);
    rp_buf_free(&req);
    cluster_pass();
}

/* ---- joins ---------------------------------------------------------------------------- */

struct joiner {
    const char *token;
    const char *type; /* "node" or "auth" */
    uint64_t raft_id; /* auth joins: a spare at an address nobody listens on */
    char host_id[64];
    char *host_pub;
    char addr[64];
    int code; /* 0: joined; else the answer's error code */
    char error[256];
};

/* One node join on its own TLS connection (no client certificate), no asserts: it
 * runs on threads too. */
static void *join_main(void *arg)
{
    struct joiner *j = arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    struct rp_conn c;
    struct rp_buf req, ans;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_buf_init(&ans);
    j->code = RP_EUNAVAILABLE;
    int rv = rp_conn_dial(&c, ctx, j->addr, 3000);
    SSL_CTX_free(ctx);
    if (rv != 0) {
        snprintf(j->error, sizeof j->error, "dial: %s", rp_errmsg());
        goto out;
    }
    rp_conn_set_timeout(&c, 15000);
    rp_mp_packer_init(&pk, &req);
    bool auth = strcmp(j->type, "auth") == 0;
    msgpack_pack_map(&pk, auth ? 10 : 6);
    rp_mp_kv_str(&pk, "m", "join");
    rp_mp_kv_str(&pk, "token", j->token);
    rp_mp_kv_str(&pk, "type", j->type);
    if (auth) {
        char raft_addr[64], api_addr[64];
        snprintf(raft_addr, sizeof raft_addr, "127.0.0.1:%u", (unsigned)(40000 + j->raft_id));
        snprintf(api_addr, sizeof api_addr, "127.0.0.1:%u", (unsigned)(41000 + j->raft_id));
        rp_mp_kv_u64(&pk, "raft_id", j->raft_id);
        rp_mp_kv_str(&pk, "raft_addr", raft_addr);
        rp_mp_kv_str(&pk, "api_addr", api_addr);
        rp_mp_kv_str(&pk, "admin_pubkey", j->host_pub);
    }
    rp_mp_kv_str(&pk, "host_id", j->host_id);
    rp_mp_kv_str(&pk, "nodename", j->host_id);
    rp_mp_kv_str(&pk, "host_pubkey", j->host_pub);
    msgpack_unpacked u;
    if (rp_conn_write_frame(&c, req.data, req.len) == 0 && rp_conn_read_frame(&c, &ans) == 0 &&
        rp_mp_parse(ans.data, ans.len, &u) == 0) {
        bool ok = false;
        rp_mp_get_bool(&u.data, "ok", &ok);
        char code[64] = "";
        cl_mp_str(&u.data, "code", code, sizeof code);
        cl_mp_str(&u.data, "error", j->error, sizeof j->error);
        j->code = ok ? 0 : rp_error_from_name(code);
        msgpack_unpacked_destroy(&u);
    }
    rp_conn_close(&c);
out:
    rp_buf_free(&req);
    rp_buf_free(&ans);
    return NULL;
}

static void joiner_init(struct joiner *j, const char *token, const char *host_id)
{
    memset(j, 0, sizeof *j);
    j->token = token;
    j->type = "node";
    snprintf(j->host_id, sizeof j->host_id, "%s", host_id);
    snprintf(j->addr, sizeof j->addr, "%s", CL->nodes[1].api_addr);
    EVP_PKEY *k = rp_tls_keygen();
    cr_assert_not_null(k);
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &j->host_pub), 0);
    EVP_PKEY_free(k);
}

/* Node and proxy tokens are multi-use until they expire, as Teleport's are. */
Test(int_admission, a_node_token_joins_many_until_it_expires)
{
    start_one();
    char token[64];
    cl_add_token(1, "node", NULL, token, sizeof token);
    struct joiner a, b;
    joiner_init(&a, token, "host-a");
    joiner_init(&b, token, "host-b");
    join_main(&a);
    cr_assert_eq(a.code, 0, "the first join failed: %s", a.error);
    join_main(&b);
    cr_assert_eq(b.code, 0, "a node token did not join a second node: %s", b.error);
    free(a.host_pub);
    free(b.host_pub);
    cluster_pass();
}

/* An auth token makes a Raft member and an admin: it is good for one join. */
Test(int_admission, an_auth_token_is_used_once)
{
    start_one();
    char token[64];
    cl_add_token(1, "auth", NULL, token, sizeof token);
    struct joiner a, b;
    joiner_init(&a, token, "host-a");
    joiner_init(&b, token, "host-b");
    a.type = b.type = "auth";
    a.raft_id = 71;
    b.raft_id = 72;
    join_main(&a);
    cr_assert_eq(a.code, 0, "the first join failed: %s", a.error);
    join_main(&b);
    cr_assert_eq(b.code, RP_EDENIED, "a used token joined again (%s)", b.error);
    msgpack_unpacked u;
    struct rp_buf keep;
    rp_buf_init(&keep);
    cr_assert_eq(get_token(token, &u, &keep), RP_ENOTFOUND, "the used token is still stored");
    rp_buf_free(&keep);
    free(a.host_pub);
    free(b.host_pub);
    cluster_pass();
}

Test(int_admission, two_concurrent_joins_with_one_auth_token_only_one_succeeds)
{
    start_one();
    /* One round: each winner becomes a spare that never catches up, and a second spare
     * would wait for the first one's promotion. */
    for (int round = 0; round < 1; round++) {
        char token[64];
        cl_add_token(1, "auth", NULL, token, sizeof token);
        struct joiner j[2];
        pthread_t th[2];
        char id[32];
        for (int k = 0; k < 2; k++) {
            snprintf(id, sizeof id, "race-%d-%d", round, k);
            joiner_init(&j[k], token, id);
            j[k].type = "auth";
            j[k].raft_id = (uint64_t)(80 + k);
        }
        for (int k = 0; k < 2; k++)
            cr_assert_eq(pthread_create(&th[k], NULL, join_main, &j[k]), 0);
        for (int k = 0; k < 2; k++)
            pthread_join(th[k], NULL);
        int ok = (j[0].code == 0) + (j[1].code == 0);
        cr_assert_eq(ok, 1, "round %d: %d joins succeeded with one token (%s | %s)", round, ok,
                     j[0].error, j[1].error);
        cr_assert(j[0].code == RP_EDENIED || j[1].code == RP_EDENIED, "round %d: %s | %s", round,
                  j[0].error, j[1].error);
        for (int k = 0; k < 2; k++)
            free(j[k].host_pub);
    }
    /* Which check stopped the loser is timing: the token read, or the conditional delete
     * when both had read it. Either way one join won; say which path this run took. */
    cr_log_info("the conditional delete stopped a second join: %s",
                node_log_contains(1, "was used meanwhile") ? "yes" : "no (the token read did)");
    cluster_pass();
}

/* ---- Teleport's files ------------------------------------------------------------------ */

Test(int_admission, teleport_user_and_token_files_load_with_tctl_create)
{
    start_one();
    char yaml[2048], when[64], *err = NULL, *out = NULL;
    static const char *const user_v2 = "kind: user\n"
                                       "version: v2\n"
                                       "metadata:\n"
                                       "  name: joe\n"
                                       "spec:\n"
                                       "  roles:\n"
                                       "  - access\n"
                                       "  - editor\n"
                                       "  traits:\n"
                                       "    logins:\n"
                                       "    - joe\n"
                                       "    - root\n"
                                       "    - '{{external.logins}}'\n"
                                       "    kubernetes_groups:\n"
                                       "    - system:masters\n"
                                       "    kubernetes_users: []\n"
                                       "    db_users: ['*']\n"
                                       "    windows_logins: [Administrator]\n"
                                       "  expires: 0001-01-01T00:00:00Z\n"
                                       "  created_by:\n"
                                       "    time: 2024-03-01T10:00:00Z\n"
                                       "    user:\n"
                                       "      name: admin\n"
                                       "status:\n"
                                       "  is_locked: false\n"
                                       "  locked_time: 0001-01-01T00:00:00Z\n";
    cr_assert_eq(tctl_create_yaml(false, user_v2, &err), 0, "user v2: %s", err);
    free(err);
    cr_assert_eq(run_tctl(1, &out, "get", "user/joe", NULL), 0);
    cr_assert(strstr(out, "system:masters") && strstr(out, "- editor") &&
                  strstr(out, "is_locked: false"),
              "%s", out);
    free(out);

    /* A token v2 with an RFC 3339 expiry; then a node joins with it, once. */
    char token[40];
    cr_assert_eq(rp_random_hex(token, 16), 0);
    rfc3339(rp_now_ms() + 3600 * 1000, when, sizeof when);
    snprintf(yaml, sizeof yaml,
             "kind: token\nversion: v2\nmetadata:\n  name: %s\n  expires: \"%s\"\nspec:\n  "
             "roles: [Node]\n  join_method: token\n",
             token, when);
    cr_assert_eq(tctl_create_yaml(false, yaml, &err), 0, "token v2: %s", err);
    cr_assert(strstr(err, token) == NULL, "the token was printed on stderr: %s", err);
    free(err);
    struct joiner j;
    joiner_init(&j, token, "tp-node");
    join_main(&j);
    cr_assert_eq(j.code, 0, "join with a Teleport-format token: %s", j.error);
    free(j.host_pub);

    /* Another join method loads and round-trips, and is refused at join, saying why. */
    snprintf(yaml, sizeof yaml,
             "kind: token\nversion: v2\nmetadata:\n  name: iam-token\n  expires: \"%s\"\n"
             "spec:\n  roles: [Node]\n  join_method: iam\n  allow:\n  - aws_account: "
             "\"111111111111\"\n",
             when);
    cr_assert_eq(tctl_create_yaml(false, yaml, &err), 0, "iam token: %s", err);
    free(err);
    cr_assert_eq(run_tctl(1, &out, "get", "token/iam-token", "--with-secrets", NULL), 0);
    cr_assert(strstr(out, "join_method: iam") && strstr(out, "111111111111"), "%s", out);
    free(out);
    joiner_init(&j, "iam-token", "iam-node");
    join_main(&j);
    cr_assert_eq(j.code, RP_EDENIED);
    cr_assert(strstr(j.error, "join method") && strstr(j.error, "iam"), "%s", j.error);
    free(j.host_pub);
    cluster_pass();
}

/* ---- certificate lifetimes ------------------------------------------------------------- */

Test(int_admission, user_certificates_never_outlive_max_session_ttl)
{
    start_one();
    static const char *const long_role = "kind: role\nversion: v7\nmetadata:\n  name: forever\n"
                                         "spec:\n  options:\n    max_session_ttl: 1000h\n"
                                         "  allow:\n    logins: [root]\n";
    char *err = NULL, *out = NULL;
    cr_assert_eq(tctl_create_yaml(false, long_role, &err), 0, "%s", err);
    free(err);
    cr_assert_eq(run_tctl(1, &out, "users", "add", "lee", "--roles=forever", NULL), 0);
    free(out);
    char *pub = cl_ssh_pubkey();
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "m", "sign_user");
    rp_mp_kv_str(&pk, "user", "lee");
    rp_mp_kv_str(&pk, "ssh_pubkey", pub);
    rp_mp_kv_u64(&pk, "ttl_ms", 1000ull * 3600 * 1000);
    msgpack_unpacked resp;
    uint64_t now = rp_now_ms();
    cr_assert_eq(node_call(1, req.data, req.len, &resp, 0), 0, "%s", rp_errmsg());
    uint64_t expires = 0;
    rp_mp_get_u64(&resp.data, "expires", &expires);
    msgpack_unpacked_destroy(&resp);
    uint64_t ceiling = 30ull * 3600 * 1000;
    cr_assert(expires <= rp_now_ms() + ceiling + 1000 && expires + 5000 >= now + ceiling,
              "a 1000h role gave a certificate for %llu s (the ceiling is 30h)",
              (unsigned long long)((expires - now) / 1000));
    rp_buf_free(&req);
    free(pub);
    cluster_pass();
}

/* Every op of a batch is audited, however many there are (a batch may hold up to
 * STATE_MAX_BATCH ops). */
Test(int_admission, every_op_of_a_large_batch_is_audited)
{
    start_one();
    enum { N_OPS = 100 };
    struct rp_buf req;
    msgpack_packer pk;
    char rid[33], name[32];
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    auth_new_rid(rid);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "batch");
    rp_mp_kv_str(&pk, "rid", rid);
    rp_mp_pack_str(&pk, "ops");
    msgpack_pack_array(&pk, N_OPS);
    for (int i = 0; i < N_OPS; i++) {
        snprintf(name, sizeof name, "bulk-role-%03d", i);
        msgpack_pack_map(&pk, 2);
        rp_mp_kv_str(&pk, "op", "put");
        rp_mp_pack_str(&pk, "res");
        msgpack_pack_map(&pk, 4);
        rp_mp_kv_str(&pk, "kind", "role");
        rp_mp_kv_str(&pk, "version", "v7");
        rp_mp_pack_str(&pk, "metadata");
        msgpack_pack_map(&pk, 1);
        rp_mp_kv_str(&pk, "name", name);
        rp_mp_pack_str(&pk, "spec");
        msgpack_pack_map(&pk, 0);
    }
    msgpack_unpacked resp;
    int rv = node_call(1, req.data, req.len, &resp, 0);
    cr_assert_eq(rv, 0, "batch of %d roles: %s", N_OPS, rp_errmsg());
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "events", "ls", "--type=role.created", "--format=json",
                          "--limit=1000", NULL),
                 0);
    int found = 0;
    for (int i = 0; i < N_OPS; i++) {
        snprintf(name, sizeof name, "\"bulk-role-%03d\"", i);
        found += strstr(out, name) != NULL;
    }
    free(out);
    cr_assert_eq(found, N_OPS, "%d of the batch's %d role writes are in the audit log", found,
                 N_OPS);
    cluster_pass();
}
