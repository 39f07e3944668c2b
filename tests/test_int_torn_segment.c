/* tests/test_int_torn_segment.c: a member whose newest open segment lost its
 * tail (a disk that dropped the end of the file: the segment ends inside its
 * last batch) while the process was dead. libraft 0.15 aborts on such a file
 * ("double free or corruption" in raft_start); rp_node_start first cuts it back
 * to its last complete batch (raft/segments.c). The member must start, log the
 * repair, rejoin as a voter, and get back from the leader what it lost, for a
 * follower and for a leader (which the others replace meanwhile). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/errors.h"
#include "raft/rp_raft.h"
#include "tests/lib/cluster.h"

TestSuite(int_torn_segment, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

#define REPAIR_LOG "ended inside an entry batch"

/* ---- the segment ---------------------------------------------------------------- */

static struct rp_segment_scan scan_path(const char *path, uint64_t size)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    struct rp_segment_scan sc;
    int rv = rp_raft_segment_scan(fd, size, &sc);
    close(fd);
    cr_assert_eq(rv, 0, "scan %s: %s", path, rp_errmsg());
    return sc;
}

static uint64_t file_size(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return (uint64_t)st.st_size;
}

/* The newest open segment of node @i (highest N of "open-N") that holds at least
 * one batch: where its last writes went. The node must not be running. */
static void newest_data_segment(int i, char *path, size_t len)
{
    char raft_dir[600];
    snprintf(raft_dir, sizeof raft_dir, "%s/raft", CL->nodes[i].dir);
    DIR *d = opendir(raft_dir);
    cr_assert_not_null(d, "%s: %s", raft_dir, strerror(errno));
    unsigned long long best = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        unsigned long long n;
        char p[1200];
        if (sscanf(e->d_name, "open-%llu", &n) != 1 || n <= best)
            continue;
        snprintf(p, sizeof p, "%s/%s", raft_dir, e->d_name);
        if (scan_path(p, file_size(p)).batches > 0) {
            best = n;
            snprintf(path, len, "%s", p);
        }
    }
    closedir(d);
    cr_assert_neq(best, 0, "auth%d has no open segment holding entries in %s", i, raft_dir);
}

/* Truncates node @i's newest open segment to the middle of its last batch, as a
 * disk that lost the tail of the file would leave it. Returns the file name. */
static const char *tear_last_batch(int i)
{
    static char path[1200];
    newest_data_segment(i, path, sizeof path);
    uint64_t size = file_size(path);
    struct rp_segment_scan whole = scan_path(path, size);
    cr_assert(!whole.torn, "%s is torn before we tear it", path);
    /* Scanning as if the file ended one byte before the last batch does gives
     * where that batch starts. */
    struct rp_segment_scan before = scan_path(path, whole.complete_end - 1);
    uint64_t start = before.complete_end, end = whole.complete_end;
    cr_assert_lt(start, end);
    uint64_t cut = start + (end - start) / 2;
    cr_assert_eq(truncate(path, (off_t)cut), 0, "truncate %s: %s", path, strerror(errno));
    struct rp_segment_scan torn = scan_path(path, file_size(path));
    cr_assert(torn.torn && torn.complete_end == start, "%s is not torn at %llu", path,
              (unsigned long long)start);
    cr_log_info("auth%d: %s cut to %llu bytes, inside its last batch [%llu, %llu) "
                "(%llu batches, %llu entries before it)",
                i, strrchr(path, '/') + 1, (unsigned long long)cut, (unsigned long long)start,
                (unsigned long long)end, (unsigned long long)torn.batches,
                (unsigned long long)torn.entries);
    return strrchr(path, '/') + 1;
}

/* ---- the node ------------------------------------------------------------------- */

struct log_wait {
    int i;
    const char *needle;
};

static bool log_has(void *arg)
{
    struct log_wait *w = arg;
    return node_log_contains(w->i, w->needle);
}

/* Node @i, restarted on a torn segment, says it repaired @file and keeps running
 * (libraft would abort in raft_start, right after the repair, without it). */
static void assert_repaired_and_running(int i, const char *file)
{
    char needle[128];
    snprintf(needle, sizeof needle, "%s " REPAIR_LOG, file);
    struct log_wait w = {i, needle};
    cr_assert(wait_until(20000, log_has, &w), "auth%d's log does not say \"%s\"", i, needle);
    cr_assert(node_alive(i), "auth%d died after the repair (status 0x%x)", i,
              CL->nodes[i].last_status);
    cr_assert(!node_log_contains(i, "double free"), "libraft aborted in auth%d", i);
}

struct rejoin_wait {
    int i;
    uint64_t leader;
    struct cl_status st;
};

/* Status on node @i shows @leader leading and node @i itself as a voter that
 * follows it. */
static bool follows_leader(void *arg)
{
    struct rejoin_wait *w = arg;
    if (!node_alive(w->i) || cluster_status(w->i, &w->st) != 0 || w->st.leader_id != w->leader)
        return false;
    const struct cl_member *l = cl_status_member(&w->st, w->leader);
    const struct cl_member *me = cl_status_member(&w->st, CL->nodes[w->i].raft_id);
    return l != NULL && strcmp(l->state, "leader") == 0 && me != NULL &&
           strcmp(me->role, "voter") == 0 && strcmp(me->state, "follower") == 0;
}

static void assert_rejoins(int i, uint64_t leader)
{
    struct rejoin_wait w = {.i = i, .leader = leader};
    cr_assert(wait_until(30000, follows_leader, &w),
              "auth%d does not follow leader %llu as a voter (status leader %llu)", i,
              (unsigned long long)leader, (unsigned long long)w.st.leader_id);
    cr_assert_neq(cluster_wait_ready(i, 3, 0, 20000), 0, "not 3 healthy voters after the restart");
}

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

/* ---- writes ----------------------------------------------------------------------- */

/* Puts "<prefix>-<k>" = "<prefix>.<k>" for k in [from, to), each followed by
 * "latest" = the same value (so "latest" names the last write), all through node
 * @via; each must be acknowledged. */
static void put_range(int via, const char *prefix, int from, int to)
{
    char name[64], val[32];
    for (int k = from; k < to; k++) {
        snprintf(name, sizeof name, "%s-%d", prefix, k);
        snprintf(val, sizeof val, "%s.%d", prefix, k);
        int rv = node_put(via, "itest", name, val);
        cr_assert_eq(rv, 0, "put %s via auth%d: %s (%s)", name, via, rp_errmsg(), rp_strerror(rv));
        rv = node_put(via, "itest", "latest", val);
        cr_assert_eq(rv, 0, "put latest=%s via auth%d: %s (%s)", val, via, rp_errmsg(),
                     rp_strerror(rv));
    }
}

/* Every write of put_range(prefix, from, to) reads back through node @i with a
 * linearizable read. */
static void assert_range_linearizable(int i, const char *prefix, int from, int to)
{
    char name[64], want[32], got[64];
    for (int k = from; k < to; k++) {
        snprintf(name, sizeof name, "%s-%d", prefix, k);
        snprintf(want, sizeof want, "%s.%d", prefix, k);
        int rv = node_get(i, "itest", name, false, got, sizeof got);
        cr_assert_eq(rv, 0, "linearizable get %s via auth%d: %s (%s)", name, i, rp_errmsg(),
                     rp_strerror(rv));
        cr_assert_str_eq(got, want, "%s via auth%d", name, i);
    }
}

/* ---- tests -------------------------------------------------------------------------- */

Test(int_torn_segment, follower_with_a_torn_open_segment_repairs_it_rejoins_and_catches_up)
{
    cluster_start(3);
    uint64_t leader = cluster_leader_id();
    cr_assert_neq(leader, 0);
    int li = node_by_raft_id(leader);
    int f = li == 1 ? 2 : 1;

    put_range(li, "before", 0, 20);
    /* The follower has written (and applied) the last one: its last batch holds
     * some of these entries, acknowledged to the leader. */
    cr_assert(node_wait_value(f, "itest", "latest", "before.19", 10000),
              "auth%d never got before.19", f);

    node_kill9(f);
    const char *file = tear_last_batch(f);
    node_restart(f);
    assert_repaired_and_running(f, file);
    assert_rejoins(f, leader);

    /* What the follower lost is sent again, and new writes reach it. */
    put_range(li, "after", 0, 10);
    cr_assert(node_wait_value(f, "itest", "latest", "after.9", 20000),
              "a stale read on auth%d does not return the latest value", f);
    cr_assert(node_wait_value(f, "itest", "before-19", "before.19", 2000));
    cr_assert(node_wait_value(f, "itest", "after-9", "after.9", 2000));
    cr_assert(node_alive(f));
    cluster_pass();
}

Test(int_torn_segment, leader_with_a_torn_open_segment_repairs_it_and_rejoins_under_a_new_leader)
{
    cluster_start(3);
    uint64_t old = cluster_leader_id();
    cr_assert_neq(old, 0);
    int li = node_by_raft_id(old);
    int s1 = li == 1 ? 2 : 1, s2 = 6 - li - s1;

    put_range(li, "before", 0, 20);
    node_kill9(li);
    const char *file = tear_last_batch(li);

    /* The survivors elect one of themselves while the old leader is down, and
     * keep taking writes. */
    struct leader_wait w = {.ask = s1, .old = old};
    cr_assert(wait_until(15000, new_leader_seen, &w), "no new leader 15 s after kill -9 of %llu",
              (unsigned long long)old);
    cr_assert(w.found == CL->nodes[s1].raft_id || w.found == CL->nodes[s2].raft_id);
    int nl = node_by_raft_id(w.found);
    put_range(nl, "during", 0, 10);

    node_restart(li);
    assert_repaired_and_running(li, file);
    assert_rejoins(li, w.found);

    put_range(nl, "after", 0, 10);
    /* Nothing acknowledged was lost, the old leader's cut entries included... */
    assert_range_linearizable(li, "before", 0, 20);
    assert_range_linearizable(li, "during", 0, 10);
    assert_range_linearizable(li, "after", 0, 10);
    char got[64];
    cr_assert_eq(node_get(li, "itest", "latest", false, got, sizeof got), 0, "%s", rp_errmsg());
    cr_assert_str_eq(got, "after.9");
    /* ...and the old leader's own copy caught up. */
    cr_assert(node_wait_value(li, "itest", "latest", "after.9", 20000),
              "a stale read on auth%d does not return the latest value", li);
    cr_assert(node_wait_value(li, "itest", "before-19", "before.19", 2000));
    cr_assert(node_alive(li));
    cluster_pass();
}
