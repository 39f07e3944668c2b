/* tests/test_int_failover.c: losing the leader. kill -9 leads to an election and
 * writes resume; the killed node catches up after a restart. SIGTERM hands
 * leadership over before the process exits 0. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "lib/errors.h"
#include "tests/lib/cluster.h"

TestSuite(int_failover, .init = cluster_setup, .fini = cluster_teardown, .timeout = 60);

struct leader_wait {
    int ask;
    uint64_t old;
    uint64_t found;
};

static bool new_leader_seen(void *arg)
{
    struct leader_wait *w = arg;
    uint64_t l = cluster_leader_id_from(w->ask);
    if (l != 0 && l != w->old)
        w->found = l;
    return w->found != 0;
}

Test(int_failover, kill9_of_leader_elects_a_new_one_writes_resume_and_the_node_catches_up)
{
    cluster_start(3);
    uint64_t old = cluster_leader_id();
    cr_assert_neq(old, 0);
    int li = node_by_raft_id(old);
    int s1 = li == 1 ? 2 : 1, s2 = 6 - li - s1;
    cr_assert_eq(node_put(s1, "itest", "before", "1"), 0, "%s", rp_errmsg());
    cr_assert(node_wait_value(li, "itest", "before", "1", 5000));

    uint64_t t0 = cl_now_ms();
    node_kill9(li);
    struct leader_wait w = {.ask = s1, .old = old};
    cr_assert(wait_until(15000, new_leader_seen, &w), "no new leader 15 s after kill -9 of %llu",
              (unsigned long long)old);
    uint64_t elected_ms = cl_now_ms() - t0;
    cr_assert(w.found == CL->nodes[s1].raft_id || w.found == CL->nodes[s2].raft_id);
    /* The other survivor agrees. */
    struct leader_wait w2 = {.ask = s2, .old = old};
    cr_assert(wait_until(5000, new_leader_seen, &w2));
    cr_assert_eq(w2.found, w.found, "survivors disagree on the leader");

    /* Status on a survivor shows the dead member as unreachable, still a voter. */
    struct cl_status st;
    cr_assert_eq(cluster_status(s2, &st), 0);
    const struct cl_member *dead = cl_status_member(&st, old);
    cr_assert_not_null(dead);
    cr_assert_str_eq(dead->state, "unreachable");
    cr_assert_str_eq(dead->role, "voter");

    /* Writes through either survivor succeed. */
    char name[32], val[32];
    for (int k = 0; k < 20; k++) {
        snprintf(name, sizeof name, "after-%d", k);
        snprintf(val, sizeof val, "v%d", k);
        int via = k % 2 ? s1 : s2;
        int rv = node_put(via, "itest", name, val);
        cr_assert_eq(rv, 0, "put %s via auth%d after failover: %s (%s)", name, via, rp_errmsg(),
                     rp_strerror(rv));
    }
    uint64_t writes_ms = cl_now_ms() - t0;

    /* The killed node restarts from its data and catches up. */
    node_restart(li);
    for (int k = 0; k < 20; k++) {
        snprintf(name, sizeof name, "after-%d", k);
        snprintf(val, sizeof val, "v%d", k);
        cr_assert(node_wait_value(li, "itest", name, val, k == 0 ? 20000 : 2000),
                  "restarted auth%d does not serve %s", li, name);
    }
    cr_assert(node_wait_value(li, "itest", "before", "1", 2000));
    cr_assert_neq(cluster_wait_ready(li, 3, 0, 20000), 0, "not 3 healthy voters after restart");
    cr_log_info("kill -9 of leader %llu: leader %llu elected after %llu ms, 20 writes done at "
                "%llu ms, caught up at %llu ms",
                (unsigned long long)old, (unsigned long long)w.found,
                (unsigned long long)elected_ms, (unsigned long long)writes_ms,
                (unsigned long long)(cl_now_ms() - t0));
    cluster_pass();
}

Test(int_failover, sigterm_of_leader_transfers_leadership_and_exits_0)
{
    /* A long election timeout: a leader within it can only come from a transfer. */
    cluster_opts()->election_timeout_ms = 3000;
    cluster_start(3);
    uint64_t old = cluster_leader_id();
    cr_assert_neq(old, 0);
    int li = node_by_raft_id(old);
    int s1 = li == 1 ? 2 : 1, s2 = 6 - li - s1;
    cr_assert_eq(node_put(s1, "itest", "before", "1"), 0, "%s", rp_errmsg());

    uint64_t t0 = cl_now_ms();
    cr_assert_eq(kill(CL->nodes[li].pid, SIGTERM), 0);
    uint64_t new_leader = 0, leader_ms = 0, exit_ms = 0;
    int ask = s1;
    while (cl_now_ms() - t0 < 10000 && (new_leader == 0 || exit_ms == 0)) {
        if (exit_ms == 0 && !node_alive(li))
            exit_ms = cl_now_ms() - t0;
        if (new_leader == 0) {
            uint64_t l = cluster_leader_id_from(ask);
            if (l != 0 && l != old) {
                new_leader = l;
                leader_ms = cl_now_ms() - t0;
            }
            ask = ask == s1 ? s2 : s1;
        }
        cl_sleep_ms(20);
    }
    cr_assert_neq(exit_ms, 0, "auth%d still running 10 s after SIGTERM", li);
    int st = CL->nodes[li].last_status;
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "auth%d exited with status 0x%x", li, st);
    cr_assert_neq(new_leader, 0, "no new leader 10 s after SIGTERM of the leader");
    cr_log_info("SIGTERM of leader %llu: new leader %llu seen after %llu ms, exit after %llu ms",
                (unsigned long long)old, (unsigned long long)new_leader,
                (unsigned long long)leader_ms, (unsigned long long)exit_ms);
    cr_assert_lt(leader_ms, 2500,
                 "new leader only after %llu ms: no transfer (election timeout is 3000 ms)",
                 (unsigned long long)leader_ms);
    cr_assert_lt(exit_ms, 8000, "graceful stop took %llu ms", (unsigned long long)exit_ms);

    cr_assert_eq(node_put(s2, "itest", "after", "2"), 0, "%s", rp_errmsg());
    /* A graceful stop loses nothing: the node comes back with its data. */
    node_restart(li);
    cr_assert(node_wait_value(li, "itest", "after", "2", 20000));
    cr_assert(node_wait_value(li, "itest", "before", "1", 2000));
    cr_assert_neq(cluster_wait_ready(li, 3, 0, 20000), 0);
    cluster_pass();
}

Test(int_failover, sigterm_of_a_follower_exits_0_and_writes_continue)
{
    cluster_start(3);
    uint64_t leader = cluster_leader_id();
    int li = node_by_raft_id(leader);
    int f = li == 1 ? 2 : 1;
    int st = node_term(f, 10000);
    cr_assert_neq(st, -1, "auth%d did not exit 10 s after SIGTERM", f);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "auth%d exited with status 0x%x", f, st);
    cr_assert_eq(cluster_leader_id_from(li), leader, "leadership moved when a follower stopped");
    cr_assert_eq(node_put(li, "itest", "k", "v"), 0, "%s", rp_errmsg());
    cluster_pass();
}
