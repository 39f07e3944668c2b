/* tests/test_int_membership.c: `tctl auth members rm` takes a member out, a fresh
 * server joins with a new token and is promoted to voter, and client writes keep
 * succeeding throughout. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "tests/lib/cluster.h"

TestSuite(int_membership, .init = cluster_setup, .fini = cluster_teardown, .timeout = 60);

/* A put then a linearizable get through node @via, each on a fresh client. */
static void put_and_check(int via, const char *name)
{
    int rv = node_put(via, "itest", name, name);
    cr_assert_eq(rv, 0, "put %s via auth%d: %s (%s)", name, via, rp_errmsg(), rp_strerror(rv));
    char v[96];
    rv = node_get(via, "itest", name, false, v, sizeof v);
    cr_assert_eq(rv, 0, "get %s via auth%d: %s (%s)", name, via, rp_errmsg(), rp_strerror(rv));
    cr_assert_str_eq(v, name);
}

struct members_arg {
    int ask;
    unsigned n;
    uint64_t absent, present;
};

/* Status on @ask shows @n members, all voters, with a leader, @absent missing and
 * @present there and reachable. */
static bool members_are(void *arg)
{
    struct members_arg *a = arg;
    struct cl_status st;
    if (cluster_status(a->ask, &st) != 0 || st.n_members != a->n ||
        cl_status_count_role(&st, "voter") != a->n || st.leader_id == 0)
        return false;
    if (a->absent && cl_status_member(&st, a->absent) != NULL)
        return false;
    if (a->present) {
        const struct cl_member *m = cl_status_member(&st, a->present);
        if (m == NULL || strcmp(m->state, "unreachable") == 0)
            return false;
    }
    for (unsigned k = 0; k < st.n_members; k++) {
        if (strcmp(st.members[k].state, "unreachable") == 0)
            return false;
    }
    return true;
}

Test(int_membership, removed_follower_leaves_and_a_fresh_node_joins_as_voter_under_writes)
{
    cluster_start(3);
    uint64_t leader = cluster_leader_id();
    cr_assert_neq(leader, 0);
    int li = node_by_raft_id(leader);
    /* Remove a follower that is not the one tctl runs on. */
    int tool = li;
    int victim = 0;
    for (int i = 1; i <= 3; i++) {
        if (i != li && (victim == 0 || i > victim))
            victim = i;
    }
    uint64_t victim_id = CL->nodes[victim].raft_id;

    cl_writer_start(li, "w");
    put_and_check(li, "m-before");

    char id[16], *out = NULL;
    snprintf(id, sizeof id, "%llu", (unsigned long long)victim_id);
    int rc = run_tctl(tool, &out, "auth", "members", "rm", id, NULL);
    cr_assert_eq(rc, 0, "tctl auth members rm %s: exit %d", id, rc);
    free(out);
    struct members_arg two = {.ask = tool, .n = 2, .absent = victim_id};
    cr_assert(wait_until(10000, members_are, &two), "status never showed 2 members without %s", id);
    put_and_check(li, "m-after-rm");
    /* The removed server is no member any more; an operator stops it. */
    int st = node_term(victim, 10000);
    cr_assert_neq(st, -1, "removed auth%d did not stop on SIGTERM", victim);
    put_and_check(li, "m-after-stop");

    /* Its long-lived Auth certificate no longer opens the API of the others. */
    {
        char crt[600], key[600], ca[600];
        SSL_CTX *ctx = NULL;
        snprintf(crt, sizeof crt, "%s/keys/host.crt", CL->nodes[victim].dir);
        snprintf(key, sizeof key, "%s/keys/host.key", CL->nodes[victim].dir);
        snprintf(ca, sizeof ca, "%s/keys/ca.crt", CL->nodes[victim].dir);
        cr_assert_eq(auth_load_client_ctx(crt, key, ca, &ctx), 0, "%s", rp_errmsg());
        const char *addr = CL->nodes[li].api_addr;
        struct auth_client *c = NULL;
        cr_assert_eq(auth_client_new(&c, ctx, &addr, 1), 0);
        struct rp_buf req;
        msgpack_unpacked resp;
        rp_buf_init(&req);
        cl_req_get(&req, "itest", "m-before", true);
        int rv = auth_client_call(c, req.data, req.len, &resp);
        cr_assert_eq(rv, RP_EDENIED, "a removed member's identity was answered with %s (%s)",
                     rp_strerror(rv), rp_errmsg());
        msgpack_unpacked_destroy(&resp);
        rp_buf_free(&req);
        auth_client_free(c);
        SSL_CTX_free(ctx);
    }

    /* A fresh server: new data dir, new ports, new raft id, new token. */
    int fresh = cluster_add_node(0);
    uint64_t fresh_id = CL->nodes[fresh].raft_id;
    cr_assert_neq(fresh_id, victim_id);
    struct members_arg three = {.ask = tool, .n = 3, .present = fresh_id};
    cr_assert(wait_until(30000, members_are, &three),
              "auth%d (raft id %llu) never became a reachable voter", fresh,
              (unsigned long long)fresh_id);
    put_and_check(fresh, "m-after-join");
    cr_assert(node_wait_value(fresh, "itest", "m-before", "m-before", 10000));

    struct cl_writer_stats ws;
    cl_writer_stop(&ws);
    cr_assert_eq(ws.failed, 0, "%u of %u background writes failed; first: %s", ws.failed,
                 ws.attempted, ws.first_error);
    cr_assert_gt(ws.ok, 10, "only %u background writes", ws.ok);
    /* Every acknowledged write is on the new member. */
    char name[96], v[96];
    snprintf(name, sizeof name, "w-%u", ws.attempted - 1);
    cr_assert(node_wait_value(fresh, "itest", name, name, 10000));
    for (unsigned k = 0; k < ws.attempted; k++) {
        if (!ws.acked[k])
            continue;
        snprintf(name, sizeof name, "w-%u", k);
        int rv = node_get(fresh, "itest", name, true, v, sizeof v);
        cr_assert_eq(rv, 0, "acked %s missing on auth%d: %s", name, fresh, rp_errmsg());
        cr_assert_str_eq(v, name);
    }
    cr_log_info("membership change under %u background writes", ws.ok);
    cluster_pass();
}

Test(int_membership, removing_an_unknown_or_the_last_member_is_refused)
{
    cluster_start(1);
    char *out = NULL;
    int rc = run_tctl(1, &out, "auth", "members", "rm", "99", NULL);
    free(out);
    cr_assert_neq(rc, 0, "removing unknown member 99 succeeded");
    rc = run_tctl(1, &out, "auth", "members", "rm", "1", NULL);
    free(out);
    cr_assert_neq(rc, 0, "removing the last member succeeded");
    rc = run_tctl(1, &out, "auth", "members", "rm", "not-a-number", NULL);
    free(out);
    cr_assert_eq(rc, 2, "a malformed id: exit %d, want 2 (usage)", rc);
    cr_assert_eq(cluster_wait_ready(1, 1, 0, 5000), 1, "the single member no longer leads");
    cr_assert_eq(node_put(1, "itest", "still", "writable"), 0, "%s", rp_errmsg());
    cluster_pass();
}
