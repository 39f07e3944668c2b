/* tests/test_int_escalation.c: no route turns a user into an administrator.
 *
 * An editor tries, against a real cluster, every way a review found or could think
 * of: a role named after a system role (every system role, several cases) by
 * create, create -f, put, update and batch; giving itself such a role (users update,
 * a user resource, an invite); auth join tokens; and certificates that carry system
 * role names in O (as a user could obtain if any of the above worked), including
 * one named after an auth server's host id trying to forward as an admin. None may
 * work. Locks and member removal are checked here too: they are what cuts off an
 * identity that must stop working. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(int_escalation, .init = cluster_setup, .fini = cluster_teardown, .timeout = 180);

/* A user with an identity file for cl_tctl_as and the same identity as PEM files
 * (DIR/USER.crt, .key, .cas) for API calls of our own. */
static void make_user(const char *user, const char *roles)
{
    char u[64], path[600], *out = NULL;
    cl_make_identity(user, roles);
    snprintf(u, sizeof u, "--user=%s", user);
    snprintf(path, sizeof path, "%s/%s", CL->dir, user);
    cr_assert_eq(run_tctl(1, &out, "auth", "sign", u, "--format=tls", "-o", path, NULL), 0, "%s",
                 out);
    free(out);
}

static SSL_CTX *user_ctx(const char *user)
{
    char crt[600], key[600], cas[600];
    snprintf(crt, sizeof crt, "%s/%s.crt", CL->dir, user);
    snprintf(key, sizeof key, "%s/%s.key", CL->dir, user);
    snprintf(cas, sizeof cas, "%s/%s.cas", CL->dir, user);
    SSL_CTX *ctx = NULL;
    cr_assert_eq(auth_load_client_ctx(crt, key, cas, &ctx), 0, "%s", rp_errmsg());
    return ctx;
}

/* One call with @ctx to node @i: 0 or the answer's error code (message in @msg). */
static int call(SSL_CTX *ctx, int i, const struct rp_buf *req, char *msg, size_t n)
{
    const char *addr = CL->nodes[i].api_addr;
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, ctx, &addr, 1), 0, "%s", rp_errmsg());
    auth_client_set_timeout(c, 8000);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    int rv = auth_client_call(c, req->data, req->len, &u);
    snprintf(msg, n, "%s", rv == 0 ? "" : rp_errmsg());
    msgpack_unpacked_destroy(&u);
    auth_client_free(c);
    return rv;
}

/* The head of a resource: a map of four, kind, version, metadata {name}, then the
 * key "spec", whose value the caller packs. */
static void pack_res_head(msgpack_packer *pk, const char *kind, const char *version,
                          const char *name)
{
    msgpack_pack_map(pk, 4);
    rp_mp_kv_str(pk, "kind", kind);
    rp_mp_kv_str(pk, "version", version);
    rp_mp_pack_str(pk, "metadata");
    msgpack_pack_map(pk, 1);
    rp_mp_kv_str(pk, "name", name);
    rp_mp_pack_str(pk, "spec");
}

/* A role resource request {m: @method, res: role @name with one rule}, or a batch. */
static void role_req(struct rp_buf *b, const char *method, const char *name)
{
    msgpack_packer pk;
    rp_buf_reset(b);
    rp_mp_packer_init(&pk, b);
    bool batch = strcmp(method, "batch") == 0;
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", method);
    rp_mp_pack_str(&pk, batch ? "ops" : "res");
    if (batch) {
        msgpack_pack_array(&pk, 1);
        msgpack_pack_map(&pk, 2);
        rp_mp_kv_str(&pk, "op", "put");
        rp_mp_pack_str(&pk, "res");
    }
    pack_res_head(&pk, "role", "v7", name);
    msgpack_pack_map(&pk, 0);
}

static const char *const system_names[] = {
    "Admin", "admin", "ADMIN", "aDmIn", "Auth",  "auth",  "AUTH",
    "Node",  "node",  "nODE",  "Proxy", "proxy", "PROXY",
};
#define N_SYSTEM_NAMES (sizeof system_names / sizeof system_names[0])

static bool role_absent(const char *name)
{
    char what[128], *out = NULL;
    snprintf(what, sizeof what, "role/%s", name);
    int rv = run_tctl(1, &out, "get", what, NULL);
    free(out);
    return rv != 0;
}

Test(int_escalation, an_editor_cannot_become_admin_by_any_route)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(15000), "no preset roles");
    make_user("ed", "editor");
    SSL_CTX *ed = user_ctx("ed");
    char *out = NULL, path[700], msg[512];
    struct rp_buf req;
    rp_buf_init(&req);

    for (size_t i = 0; i < N_SYSTEM_NAMES; i++) {
        const char *name = system_names[i];
        /* tctl create and create -f of a role file. */
        char yaml[512], file[64];
        snprintf(yaml, sizeof yaml,
                 "kind: role\nversion: v7\nmetadata:\n  name: %s\nspec:\n  allow:\n"
                 "    rules:\n    - resources: ['*']\n      verbs: ['*']\n",
                 name);
        snprintf(file, sizeof file, "role-%zu.yaml", i);
        cl_write_file(file, yaml, path, sizeof path);
        /* Each refusal must be for the name: a refusal for another reason (a role that
         * does not exist, a parse error) would hide a missing check. */
        cr_expect(cl_tctl_as("ed", &out, "create", path, NULL) != 0 && strstr(out, "is reserved"),
                  "tctl create of role %s: %s", name, out);
        free(out);
        cr_expect(cl_tctl_as("ed", &out, "create", "-f", path, NULL) != 0 &&
                      strstr(out, "is reserved"),
                  "tctl create -f of role %s: %s", name, out);
        free(out);
        /* The API's writes, directly. */
        static const char *const methods[] = {"put", "create", "update", "batch"};
        for (size_t m = 0; m < 4; m++) {
            role_req(&req, methods[m], name);
            cr_expect(call(ed, 1, &req, msg, sizeof msg) != 0 && strstr(msg, "is reserved"),
                      "%s of role %s: %s", methods[m], name, msg);
        }
        /* And the admin cannot make one either: the names are reserved. */
        role_req(&req, "put", name);
        SSL_CTX *admin = node_admin_ctx(1);
        cr_expect(call(admin, 1, &req, msg, sizeof msg) != 0 && strstr(msg, "is reserved"),
                  "even an admin may not create a role named %s: %s", name, msg);
        SSL_CTX_free(admin);
        cr_expect(role_absent(name), "a role named %s exists", name);

        /* Giving itself such a role: users update, a user resource, an invite. */
        char set[64];
        snprintf(set, sizeof set, "--set-roles=editor,%s", name);
        cr_expect(cl_tctl_as("ed", &out, "users", "update", "ed", set, NULL) != 0 &&
                      strstr(out, "is reserved"),
                  "users update ed %s: %s", set, out);
        free(out);
        snprintf(yaml, sizeof yaml,
                 "kind: user\nversion: v2\nmetadata:\n  name: ed\nspec:\n  roles: [editor, %s]\n",
                 name);
        snprintf(file, sizeof file, "user-%zu.yaml", i);
        cl_write_file(file, yaml, path, sizeof path);
        cr_expect(cl_tctl_as("ed", &out, "create", "-f", path, NULL) != 0 &&
                      strstr(out, "is reserved"),
                  "a user resource with role %s: %s", name, out);
        free(out);
        char roles[64];
        snprintf(roles, sizeof roles, "--roles=%s", name);
        cr_expect(cl_tctl_as("ed", &out, "users", "add", "mallory", roles, NULL) != 0 &&
                      strstr(out, "is reserved"),
                  "an invite with role %s: %s", name, out);
        free(out);
    }

    /* Auth join tokens are for admins: an editor gets none, so it cannot join. */
    cr_expect(cl_tctl_as("ed", &out, "tokens", "add", "--type=auth", NULL) != 0 &&
                  strstr(out, "auth tokens are for an auth server's admin identity"),
              "an editor and an auth token: %s", out);
    free(out);
    cr_expect_eq(cl_tctl_as("ed", &out, "tokens", "add", "--type=node", NULL), 0,
                 "an editor may still make node tokens: %s", out);
    free(out);

    /* The CA keys stay out of reach, and ed is still just an editor. */
    cr_expect(cl_tctl_as("ed", &out, "get", "cert_authority/tls", "--with-secrets", NULL) != 0 &&
                  strstr(out, "never receive secrets"),
              "an editor and the CA keys: %s", out);
    free(out);
    rp_buf_free(&req);
    SSL_CTX_free(ed);
    cluster_pass();
}

/* The CA's private key, as an admin reads it, to mint certificates a user could never
 * get from the cluster: the strongest form of "a user holds O=Admin". */
static void forge(const struct rp_identity *id, SSL_CTX **ctx)
{
    SSL_CTX *admin = node_admin_ctx(1);
    struct rp_buf req;
    rp_buf_init(&req);
    auth_req_get(&req, "cert_authority", "tls", false, true);
    const char *addr = CL->nodes[1].api_addr;
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, admin, &addr, 1), 0);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    cr_assert_eq(auth_client_call(c, req.data, req.len, &u), 0, "%s", rp_errmsg());
    const msgpack_object *tls =
        rp_mp_get(rp_mp_get(rp_mp_get(rp_mp_get(&u.data, "res"), "spec"), "active_keys"), "tls");
    cr_assert(tls && tls->type == MSGPACK_OBJECT_ARRAY && tls->via.array.size == 1);
    char *key_pem = NULL;
    cr_assert_eq(rp_mp_get_strdup(&tls->via.array.ptr[0], "key", &key_pem), 0);
    msgpack_unpacked_destroy(&u);
    auth_client_free(c);
    rp_buf_free(&req);
    SSL_CTX_free(admin);

    EVP_PKEY *ca_key = NULL, *key = rp_tls_keygen();
    cr_assert_eq(rp_tls_key_from_pem(key_pem, strlen(key_pem), &ca_key), 0, "%s", rp_errmsg());
    free(key_pem);
    X509 *ca = NULL, *cert = NULL;
    char path[700];
    snprintf(path, sizeof path, "%s/keys/ca.crt", CL->nodes[1].dir);
    cr_assert_eq(rp_tls_read_cert(path, &ca), 0);
    cr_assert_eq(rp_tls_issue(ca_key, ca, key, id, NULL, 0, 3600, &cert), 0, "%s", rp_errmsg());
    *ctx = rp_tls_client_ctx(ca, cert, key);
    cr_assert_not_null(*ctx);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(key);
    X509_free(ca);
    X509_free(cert);
}

static int get_ca_with_secrets(SSL_CTX *ctx, int node, char *msg, size_t n)
{
    struct rp_buf req;
    rp_buf_init(&req);
    auth_req_get(&req, "cert_authority", "tls", false, true);
    int rv = call(ctx, node, &req, msg, n);
    rp_buf_free(&req);
    return rv;
}

/* The host id of auth server @i (data_dir/keys/host_uuid or the certificate's CN). */
/* The identity in auth server @i's certificate keys/@file; rp_identity_free it. */
static void identity_of(int i, const char *file, struct rp_identity *id)
{
    char path[700];
    X509 *c = NULL;
    snprintf(path, sizeof path, "%s/keys/%s", CL->nodes[i].dir, file);
    cr_assert_eq(rp_tls_read_cert(path, &c), 0);
    cr_assert_eq(rp_identity_from_cert(c, id), 0);
    X509_free(c);
}

static void host_id_of(int i, char *out, size_t n)
{
    struct rp_identity id;
    identity_of(i, "host.crt", &id);
    snprintf(out, n, "%s", id.host_id);
    rp_identity_free(&id);
}

Test(int_escalation, system_role_names_in_a_user_certificate_grant_nothing)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(15000), "no preset roles");
    make_user("ed", "editor");
    char msg[512], host[128];
    host_id_of(1, host, sizeof host);

    /* A user "ed" whose certificate says O=Admin, O=Auth, O=Node, O=Proxy. */
    char *all[] = {"Admin", "Auth", "Node", "Proxy", "editor"};
    struct rp_identity fake = {
        .name = "ed", .groups = all, .n_groups = 5, .cluster = CL->cluster_name};
    SSL_CTX *ctx = NULL;
    forge(&fake, &ctx);
    cr_expect_neq(get_ca_with_secrets(ctx, 1, msg, sizeof msg), 0, "O=Admin read the CA keys");
    cr_expect(strstr(msg, "access denied") != NULL, "%s", msg);
    struct rp_buf req;
    rp_buf_init(&req);
    cl_req_simple(&req, "list");
    cr_expect_neq(call(ctx, 1, &req, msg, sizeof msg), 0, "O=Node listed every kind");
    SSL_CTX_free(ctx);

    /* A user named after an auth server's host id, with O=Auth, forwarding "as" an
     * admin from a made-up address: the forged audit record must not be written. */
    char *auth_group[] = {"Auth"};
    struct rp_identity spoof = {
        .name = host, .groups = auth_group, .n_groups = 1, .cluster = CL->cluster_name};
    forge(&spoof, &ctx);
    msgpack_packer pk;
    rp_buf_reset(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "user_add");
    rp_mp_kv_str(&pk, "name", "forged");
    rp_mp_pack_str(&pk, "_as");
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "addr", "10.9.9.9:1234");
    rp_mp_kv_str(&pk, "name", "alice");
    rp_mp_kv_str(&pk, "sys", "Admin");
    rp_mp_kv_str(&pk, "host_id", host);
    cr_expect_neq(call(ctx, 1, &req, msg, sizeof msg), 0, "a user forwarded as an admin");
    cr_expect(strstr(msg, "only auth servers may forward") != NULL, "%s", msg);
    SSL_CTX_free(ctx);
    char *out = NULL;
    cr_expect_eq(run_tctl(1, &out, "events", "ls", "--format=json", NULL), 0);
    cr_expect(strstr(out, "10.9.9.9") == NULL, "a forged address reached the audit log");
    free(out);
    cr_expect_neq(run_tctl(1, &out, "get", "user/forged", NULL), 0, "the forged user exists");
    free(out);

    /* The real thing still works: a genuine admin identity reads the CA keys. */
    SSL_CTX *admin = node_admin_ctx(1);
    cr_expect_eq(get_ca_with_secrets(admin, 1, msg, sizeof msg), 0, "%s", msg);
    SSL_CTX_free(admin);
    rp_buf_free(&req);
    cluster_pass();
}

static void lock_req(struct rp_buf *b, const char *name, const char *key, const char *value)
{
    msgpack_packer pk;
    rp_buf_reset(b);
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "put");
    rp_mp_pack_str(&pk, "res");
    pack_res_head(&pk, "lock", "v2", name);
    msgpack_pack_map(&pk, 2);
    rp_mp_pack_str(&pk, "target");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "user", value);
    rp_mp_kv_str(&pk, "message", "security review");
    (void)key;
}

static bool ed_can_read(void *arg)
{
    (void)arg;
    char *out = NULL;
    int rv = cl_tctl_as("ed", &out, "get", "role/access", NULL);
    free(out);
    return rv == 0;
}

Test(int_escalation, a_lock_stops_the_next_request_and_its_removal_restores_it)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(15000), "no preset roles");
    make_user("ed", "editor");
    char *out = NULL;
    cr_assert_eq(cl_tctl_as("ed", &out, "get", "role/access", NULL), 0, "%s", out);
    free(out);
    struct rp_buf req;
    rp_buf_init(&req);
    lock_req(&req, "lock-ed", "user", "ed");
    SSL_CTX *admin = node_admin_ctx(1);
    char msg[512];
    cr_assert_eq(call(admin, 1, &req, msg, sizeof msg), 0, "%s", msg);
    /* The next request, on any server (forwarded or not), is refused. */
    cr_expect_neq(cl_tctl_as("ed", &out, "get", "role/access", NULL), 0);
    cr_expect(strstr(out, "ed is locked (lock lock-ed): security review") != NULL, "%s", out);
    free(out);
    cr_expect_eq(run_tctl(1, &out, "events", "ls", "--format=json", NULL), 0);
    cr_expect(strstr(out, "ed is locked (lock lock-ed)") != NULL,
              "the refusal is not in the audit log");
    free(out);
    /* Nobody gets a certificate for a locked user, not even an admin. */
    char signed_path[600];
    snprintf(signed_path, sizeof signed_path, "%s/ed-locked", CL->dir);
    cr_expect_neq(run_tctl(1, &out, "auth", "sign", "--user=ed", "-o", signed_path, NULL), 0,
                  "a certificate was issued for a locked user: %s", out);
    free(out);
    cr_assert_eq(run_tctl(1, &out, "rm", "lock/lock-ed", NULL), 0, "%s", out);
    free(out);
    /* A follower checks against its own copy of the locks: it follows within moments. */
    cr_expect(wait_until(5000, ed_can_read, NULL), "ed is still refused after the lock went");
    SSL_CTX_free(admin);
    rp_buf_free(&req);
    cluster_pass();
}

static bool refused_by_node1(void *arg)
{
    SSL_CTX *ctx = arg;
    struct rp_buf req;
    char msg[512];
    rp_buf_init(&req);
    cl_req_simple(&req, "status");
    int rv = call(ctx, 1, &req, msg, sizeof msg);
    rp_buf_free(&req);
    return rv == RP_EDENIED;
}

/* True if a line of node 1's or 2's log from the Raft transport names the lock left by
 * a member's removal. */
static bool raft_refused_removed(void *arg)
{
    (void)arg;
    for (int i = 1; i <= 2; i++) {
        FILE *f = fopen(CL->nodes[i].log, "r");
        char line[2048];
        bool hit = false;
        while (f && !hit && fgets(line, sizeof line, f))
            hit = strstr(line, "[raft]") && strstr(line, "(lock removed-auth-server-");
        if (f)
            fclose(f);
        if (hit)
            return true;
    }
    return false;
}

Test(int_escalation, a_removed_auth_server_is_cut_off)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(15000), "no preset roles");
    /* Admin identities on disk live hours, not years. */
    for (int i = 1; i <= 3; i++) {
        struct rp_identity aid;
        identity_of(i, "admin.crt", &aid);
        cr_expect_eq(aid.system_role, RP_SYS_ADMIN);
        long long left = aid.not_after - (long long)(rp_now_ms() / 1000);
        cr_expect(left > 0 && left <= 8 * 3600 + 120, "node %d's admin identity lives %lld s", i,
                  left);
        rp_identity_free(&aid);
    }
    /* Node 3's own identities, as its files hold them. */
    SSL_CTX *admin3 = node_admin_ctx(3);
    char msg[512];
    cr_assert_eq(get_ca_with_secrets(admin3, 1, msg, sizeof msg), 0, "%s", msg);
    char *out = NULL;
    char id[32];
    snprintf(id, sizeof id, "%llu", (unsigned long long)CL->nodes[3].raft_id);
    cr_assert_eq(run_tctl(1, &out, "auth", "members", "rm", id, NULL), 0, "%s", out);
    free(out);
    /* Its admin identity stops working at once: reading the CA keys first of all. */
    cr_expect(wait_until(5000, refused_by_node1, admin3), "the removed server's admin still works");
    cr_expect_neq(get_ca_with_secrets(admin3, 1, msg, sizeof msg), 0);
    cr_expect(strstr(msg, "locked") != NULL || strstr(msg, "not a member") != NULL, "%s", msg);
    SSL_CTX_free(admin3);
    /* A lock on its host id stays behind, and its Raft connections are refused. */
    cr_expect_eq(run_tctl(1, &out, "get", "lock", "--format=json", NULL), 0);
    cr_expect(strstr(out, "removed-auth-server-") != NULL, "%s", out);
    free(out);
    /* The removed server keeps trying its old peers: its Raft connections are refused
     * for the lock (a line of the raft transport naming it). */
    cr_expect(wait_until(30000, raft_refused_removed, NULL),
              "no member refused the removed server's Raft connection for its lock");
    cluster_pass();
}

/* Not-after of node @i's keys/admin.crt, in seconds since the epoch. */
static long long admin_not_after(int i)
{
    char path[700];
    X509 *c = NULL;
    struct rp_identity id;
    long long t = 0;
    snprintf(path, sizeof path, "%s/keys/admin.crt", CL->nodes[i].dir);
    if (rp_tls_read_cert(path, &c) == 0 && rp_identity_from_cert(c, &id) == 0) {
        t = id.not_after;
        rp_identity_free(&id);
    }
    X509_free(c);
    return t;
}

struct renewal {
    long long after; /* wait for a not-after later than this */
    long long max_left;
};

static bool admin_renewed(void *arg)
{
    struct renewal *r = arg;
    long long t = admin_not_after(1);
    return t > r->after && t - (long long)(rp_now_ms() / 1000) <= r->max_left;
}

/* With auth_service.admin_identity_ttl: 1m the server first cuts its 8 h identity down
 * (the setting was lowered), then renews it at half-life, and tctl keeps working. */
Test(int_escalation, the_admin_identity_is_renewed_by_its_server)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(15000), "no preset roles");
    cr_assert_neq(node_term(1, 10000), -1, "auth1 did not stop");
    FILE *f = fopen(CL->nodes[1].cfg, "a");
    cr_assert_not_null(f);
    fprintf(f, "  admin_identity_ttl: 1m\n");
    fclose(f);
    node_restart(1);
    struct renewal r = {.after = 0, .max_left = 61};
    r.after = admin_not_after(1) - 8 * 3600; /* any re-issue counts first */
    cr_assert(wait_until(20000, admin_renewed, &r),
              "the 8 h admin identity was not cut to the configured 1m");
    long long first = admin_not_after(1);
    r.after = first;
    cr_assert(wait_until(60000, admin_renewed, &r), "the admin identity was not renewed before "
                                                    "it expired");
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "status", NULL), 0, "tctl with the renewed identity: %s", out);
    free(out);
    cr_assert(node_log_contains(1, "renewed the local admin identity"));
    cluster_pass();
}
