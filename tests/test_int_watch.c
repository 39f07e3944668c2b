/* tests/test_int_watch.c: watch streams over the auth API, on real clusters.
 *
 * A watcher on a follower must see an init snapshot, then every later change in
 * revision order, also across the loss of the leader; a watcher that resumes
 * from a revision it had gets exactly what it missed. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "auth/auth.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "tests/lib/cluster.h"

TestSuite(watch, .init = cluster_setup, .fini = cluster_teardown, .timeout = 90);

/* A follower of the current leader. */
static int follower(void)
{
    uint64_t leader = cluster_leader_id();
    cr_assert_neq(leader, 0, "no leader");
    for (int i = 1; i <= 3; i++) {
        if (node_alive(i) && CL->nodes[i].raft_id != leader)
            return i;
    }
    cr_assert_fail("no follower");
    return 0;
}

static struct auth_watch *open_watch(int i, const char *kind, uint64_t start_rev)
{
    struct auth_client *c = node_client(i);
    struct rp_buf req;
    msgpack_packer pk;
    struct auth_watch *w = NULL;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, start_rev ? 3 : 2);
    rp_mp_kv_str(&pk, "m", "watch");
    rp_mp_pack_str(&pk, "kinds");
    msgpack_pack_array(&pk, 1);
    rp_mp_pack_str(&pk, kind);
    if (start_rev)
        rp_mp_kv_u64(&pk, "start_rev", start_rev);
    int rv = auth_client_watch(c, req.data, req.len, &w);
    rp_buf_free(&req);
    auth_client_free(c);
    cr_assert_eq(rv, 0, "watch on node %d: %s", i, rp_errmsg());
    return w;
}

struct seen {
    char ev[16];
    uint64_t rev;
    char name[64];
};

/* Next event within @timeout_ms; false on timeout or end of stream. */
static bool next_event(struct auth_watch *w, struct seen *s, int timeout_ms)
{
    msgpack_unpacked u;
    int rv = auth_watch_next(w, &u, timeout_ms);
    if (rv != 0) {
        msgpack_unpacked_destroy(&u);
        return false;
    }
    cl_mp_str(&u.data, "ev", s->ev, sizeof s->ev);
    cl_mp_str(&u.data, "name", s->name, sizeof s->name);
    s->rev = 0;
    rp_mp_get_u64(&u.data, "rev", &s->rev);
    msgpack_unpacked_destroy(&u);
    return true;
}

/* Reads events until the put of @name; asserts revisions never go backwards and
 * returns the revision of that put. */
static uint64_t read_until_put(struct auth_watch *w, const char *name, uint64_t *last_rev,
                               int *count)
{
    struct seen s;
    while (next_event(w, &s, 15000)) {
        cr_assert_str_neq(s.ev, "reinit", "watcher fell behind unexpectedly");
        if (strcmp(s.ev, "put") == 0 || strcmp(s.ev, "delete") == 0) {
            cr_assert_gt(s.rev, *last_rev, "revision %llu after %llu: out of order",
                         (unsigned long long)s.rev, (unsigned long long)*last_rev);
            *last_rev = s.rev;
            (*count)++;
        }
        if (strcmp(s.ev, "put") == 0 && strcmp(s.name, name) == 0)
            return s.rev;
    }
    cr_assert_fail("stream ended before the put of %s", name);
    return 0;
}

Test(watch, follower_stream_has_init_then_every_change_in_order)
{
    cluster_start(3);
    int leader = node_by_raft_id(cluster_leader_id());
    cr_assert_eq(node_put(leader, "wtest", "before-1", "x"), 0);
    cr_assert_eq(node_put(leader, "wtest", "before-2", "x"), 0);
    int f = follower();
    cr_assert(node_wait_value(f, "wtest", "before-2", "x", 10000));

    struct auth_watch *w = open_watch(f, "wtest", 0);
    struct seen s;
    int init = 0;
    uint64_t init_rev = 0;
    while (next_event(w, &s, 10000)) {
        if (strcmp(s.ev, "init_put") == 0)
            init++;
        if (strcmp(s.ev, "init_done") == 0) {
            init_rev = s.rev;
            break;
        }
    }
    cr_assert_eq(init, 2, "init snapshot had %d items, expected 2", init);
    cr_assert_gt(init_rev, 0);

    /* Writes through the leader; other kinds must not show up. */
    char name[32];
    for (int k = 0; k < 50; k++) {
        snprintf(name, sizeof name, "w-%d", k);
        cr_assert_eq(node_put(leader, "wtest", name, "v"), 0);
        if (k % 10 == 0)
            cr_assert_eq(node_put(leader, "other", name, "v"), 0);
    }
    uint64_t last = init_rev;
    int count = 0;
    read_until_put(w, "w-49", &last, &count);
    cr_assert_eq(count, 50, "saw %d changes, expected 50", count);
    auth_watch_close(w);
    cluster_pass();
}

Test(watch, stream_on_a_follower_survives_the_leader_kill)
{
    cluster_start(3);
    int f = follower();
    struct auth_watch *w = open_watch(f, "wtest", 0);
    struct seen s;
    while (next_event(w, &s, 10000) && strcmp(s.ev, "init_done") != 0)
        ;
    cr_assert_str_eq(s.ev, "init_done");
    uint64_t last = s.rev;
    int count = 0;
    cr_assert_eq(node_put(f, "wtest", "a", "1"), 0);
    read_until_put(w, "a", &last, &count);

    int leader = node_by_raft_id(cluster_leader_id());
    node_kill9(leader);
    /* Writes through the surviving follower go to the new leader. */
    uint64_t t0 = cl_now_ms();
    int rv;
    do {
        rv = node_put(f, "wtest", "b", "2");
    } while (rv != 0 && cl_now_ms() - t0 < 20000);
    cr_assert_eq(rv, 0, "no write accepted after the leader died: %s", rp_errmsg());
    read_until_put(w, "b", &last, &count);
    cr_assert_eq(count, 2);
    auth_watch_close(w);
    node_restart(leader);
    cluster_pass();
}

Test(watch, resume_from_a_revision_replays_only_what_was_missed)
{
    cluster_start(3);
    int leader = node_by_raft_id(cluster_leader_id());
    cr_assert_eq(node_put(leader, "wtest", "r-0", "v"), 0);
    struct auth_watch *w = open_watch(leader, "wtest", 0);
    struct seen s;
    while (next_event(w, &s, 10000) && strcmp(s.ev, "init_done") != 0)
        ;
    uint64_t last = s.rev;
    int count = 0;
    cr_assert_eq(node_put(leader, "wtest", "r-1", "v"), 0);
    read_until_put(w, "r-1", &last, &count);
    auth_watch_close(w);

    /* Changes made while nobody watched. */
    cr_assert_eq(node_put(leader, "wtest", "r-2", "v"), 0);
    cr_assert_eq(node_put(leader, "wtest", "r-3", "v"), 0);

    w = open_watch(leader, "wtest", last);
    int init_items = 0;
    while (next_event(w, &s, 10000) && strcmp(s.ev, "init_done") != 0)
        init_items += strcmp(s.ev, "init_put") == 0;
    cr_assert_eq(init_items, 0, "a resumed watch must not resend the snapshot");
    count = 0;
    read_until_put(w, "r-3", &last, &count);
    cr_assert_eq(count, 2, "resumed watch delivered %d changes, expected r-2 and r-3", count);
    auth_watch_close(w);
    cluster_pass();
}
