/* tests/test_int_auth_proxy_calls.c: what auth grants a Proxy identity for the web
 * API it serves (auth/dispatch.c, auth/agents.c), against a real cluster:
 *   - "client_addr" names the web client a login is for: auth's per-address limits
 *     and its audit events see that client, not the proxy; from anyone else the field
 *     is not believed;
 *   - emit_events takes the proxy's own refusals (failed logins it stopped, throttling
 *     summaries, rejected sessions), never a successful login nor a node's events.
 * The proxy's identity is made the way the proxy gets it: a proxy token and join. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(auth_proxy_calls, .init = cluster_setup, .fini = cluster_teardown, .timeout = 180);

/* authenticate of @user with @password through @c, naming @client_addr (NULL: none).
 * Returns the call's result. */
static int login_as(struct auth_client *c, const char *user, const char *password,
                    const char *client_addr)
{
    char *pub = cl_ssh_pubkey();
    struct rp_buf req;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "authenticate");
    rp_mp_map_str(&m, "user", user);
    rp_mp_map_str(&m, "password", password);
    rp_mp_map_str(&m, "ssh_pubkey", pub);
    if (client_addr != NULL)
        rp_mp_map_str(&m, "client_addr", client_addr);
    rp_mp_map_end(&m);
    msgpack_unpacked resp;
    int rv = auth_client_call(c, req.data, req.len, &resp);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    free(pub);
    return rv;
}

/* The addr.remote of the newest user.login event of @user into @addr. */
static bool last_login_addr(struct auth_client *admin, const char *user, char *addr, size_t n)
{
    struct auth_events_query q = {
        .type = "user.login", .user = user, .newest_first = true, .limit = 1};
    struct auth_reply r = {0};
    const msgpack_object *items;
    bool found = false;
    if (auth_client_events(admin, &q, &r, &items) == 0 && items->via.array.size == 1) {
        const char *s;
        size_t len;
        if (rp_mp_get_str(&items->via.array.ptr[0], "addr.remote", &s, &len) == 0) {
            snprintf(addr, n, "%.*s", (int)len, s);
            found = true;
        }
    }
    auth_reply_free(&r);
    return found;
}

static void make_user(const char *name, const char *password)
{
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "users", "add", name, "--roles=access", NULL), 0);
    char tok[40], code[32];
    cl_invite_token(out, tok, sizeof tok);
    free(out);
    cl_redeem_invite(1, tok, password, NULL, NULL, code, sizeof code);
    cr_assert_str_eq(code, "", "redeeming the invite of %s: %s", name, code);
}

Test(auth_proxy_calls, a_proxy_names_the_web_client_and_nobody_else_may)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(15000));
    make_user("wendy", "a long enough password");
    struct cl_node_id proxy, node;
    cl_join_host(1, "proxy", NULL, "proxy-1", &proxy);
    cl_join_node(1, NULL, "node-1", &node);
    struct auth_client *pc = cl_node_client(&proxy, 1), *nc = cl_node_client(&node, 1),
                       *admin = node_client(1);
    char addr[128];

    cr_expect_eq(login_as(pc, "wendy", "wrong password", "198.51.100.7:40000"), RP_EDENIED);
    cr_assert(last_login_addr(admin, "wendy", addr, sizeof addr));
    cr_expect_str_eq(addr, "198.51.100.7:40000", "the audit names the proxy, not the client");

    cr_expect_eq(login_as(pc, "wendy", "a long enough password", "198.51.100.8:40001"), 0, "%s",
                 rp_errmsg());
    cr_assert(last_login_addr(admin, "wendy", addr, sizeof addr));
    cr_expect_str_eq(addr, "198.51.100.8:40001");

    /* A node is no proxy: its claim is ignored and the event names its own address. */
    cr_expect_eq(login_as(nc, "wendy", "wrong password", "203.0.113.9:1"), RP_EDENIED);
    cr_assert(last_login_addr(admin, "wendy", addr, sizeof addr));
    cr_expect(strncmp(addr, "127.0.0.1:", 10) == 0, "a node's client_addr was believed: %s", addr);

    /* What a proxy names must read as an address. */
    cr_expect_eq(login_as(pc, "wendy", "wrong password", "not an address"), RP_EINVAL);
    cr_expect(strstr(rp_errmsg(), "client_addr") != NULL, "%s", rp_errmsg());

    auth_client_free(pc);
    auth_client_free(nc);
    auth_client_free(admin);
    cl_node_id_free(&proxy);
    cl_node_id_free(&node);
    cluster_pass();
}

Test(auth_proxy_calls, per_address_login_limits_apply_to_each_web_client_not_to_the_proxy)
{
    cluster_start(1);
    struct cl_node_id proxy;
    cl_join_host(1, "proxy", NULL, "proxy-1", &proxy);
    struct auth_client *pc = cl_node_client(&proxy, 1);
    /* Burst 40 per address (the default): 40 logins from one client are checked, then
     * that client is refused before any password check while another client behind the
     * same proxy goes on. Distinct unknown user names keep the per-user limit away. */
    char user[32];
    for (int i = 1; i <= 40; i++) {
        snprintf(user, sizeof user, "nobody-%d", i);
        cr_assert_eq(login_as(pc, user, "wrong password", "198.51.100.20:5000"), RP_EDENIED,
                     "login %d within the burst: %s", i, rp_errmsg());
    }
    /* The client retries "busy" until its deadline, and the bucket refills one login
     * every 3 s: a short deadline sees the refusal itself. */
    auth_client_set_timeout(pc, 300);
    int busy = 0;
    for (int i = 41; i <= 50 && busy == 0; i++) {
        snprintf(user, sizeof user, "nobody-%d", i);
        if (login_as(pc, user, "wrong password", "198.51.100.20:5000") == RP_EBUSY)
            busy = i;
    }
    cr_expect_neq(busy, 0, "the client was never limited: %s", rp_errmsg());
    auth_client_set_timeout(pc, 10000);
    cr_expect_eq(login_as(pc, "nobody-x", "wrong password", "198.51.100.21:5000"), RP_EDENIED,
                 "another client of the same proxy was limited: %s", rp_errmsg());
    auth_client_free(pc);
    cl_node_id_free(&proxy);
    cluster_pass();
}

static void pack_refusal(msgpack_packer *pk, const char *type, bool success)
{
    struct rp_mp_map m;
    rp_mp_map_begin(pk, &m);
    rp_mp_map_str(&m, "event", type);
    rp_mp_map_u64(&m, "time", rp_now_ms());
    rp_mp_map_str(&m, "user", "mallory");
    rp_mp_map_bool(&m, "success", success);
    rp_mp_map_str(&m, "error", "over the proxy's rate limit");
    rp_mp_map_str(&m, "addr.remote", "198.51.100.30:1234");
    rp_mp_map_end(&m);
}

static int emit_one(struct auth_client *c, const char *type, bool success)
{
    struct rp_buf evs;
    msgpack_packer pk;
    rp_buf_init(&evs);
    rp_mp_packer_init(&pk, &evs);
    msgpack_pack_array(&pk, 1);
    pack_refusal(&pk, type, success);
    int rv = auth_client_emit_events(c, evs.data, evs.len, NULL);
    rp_buf_free(&evs);
    return rv;
}

Test(auth_proxy_calls, a_proxy_emits_its_own_refusals_only)
{
    cluster_start(1);
    struct cl_node_id proxy, node;
    cl_join_host(1, "proxy", NULL, "proxy-1", &proxy);
    cl_join_node(1, NULL, "node-1", &node);
    struct auth_client *pc = cl_node_client(&proxy, 1), *nc = cl_node_client(&node, 1),
                       *admin = node_client(1);

    cr_expect_eq(emit_one(pc, "user.login", false), 0, "%s", rp_errmsg());
    cr_expect_eq(emit_one(pc, "user.login.throttled", false), 0, "%s", rp_errmsg());
    cr_expect_eq(emit_one(pc, "session.rejected", false), 0, "%s", rp_errmsg());
    cr_expect_eq(emit_one(pc, "user.login", true), RP_EINVAL, "a proxy forged a good login");
    cr_expect(strstr(rp_errmsg(), "success") != NULL, "%s", rp_errmsg());
    cr_expect_eq(emit_one(pc, "session.start", false), RP_EINVAL, "a proxy emitted a node's event");
    cr_expect_eq(emit_one(nc, "user.login", false), RP_EINVAL, "a node emitted a login");

    struct auth_events_query q = {.type = "user.login", .user = "mallory"};
    struct auth_reply r = {0};
    const msgpack_object *items;
    cr_assert_eq(auth_client_events(admin, &q, &r, &items), 0, "%s", rp_errmsg());
    cr_assert_eq(items->via.array.size, 1);
    const msgpack_object *e = &items->via.array.ptr[0];
    cr_expect(rp_mp_str_eq(rp_mp_get(e, "server_id"), proxy.host_id),
              "the event does not name the proxy that emitted it");
    cr_expect(rp_mp_str_eq(rp_mp_get(e, "code"), "T1000W"));
    cr_expect(rp_mp_str_eq(rp_mp_get(e, "addr.remote"), "198.51.100.30:1234"));
    auth_reply_free(&r);

    auth_client_free(pc);
    auth_client_free(nc);
    auth_client_free(admin);
    cl_node_id_free(&proxy);
    cl_node_id_free(&node);
    cluster_pass();
}
