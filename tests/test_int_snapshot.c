/* tests/test_int_snapshot.c: with a small snapshot threshold the log is compacted,
 * so a follower that was away must be caught up by a snapshot install, and a
 * restarted cluster comes back from its snapshots plus log. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "tests/lib/cluster.h"

TestSuite(int_snapshot, .init = cluster_setup, .fini = cluster_teardown, .timeout = 60);

#define N_RES 400

/* Number of libraft snapshot files ("snapshot-TERM-INDEX-TIME") in node @i's raft dir. */
static unsigned snapshot_files(int i)
{
    char path[700];
    snprintf(path, sizeof path, "%s/raft", CL->nodes[i].dir);
    DIR *d = opendir(path);
    if (d == NULL)
        return 0;
    unsigned n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += strncmp(e->d_name, "snapshot-", 9) == 0;
    closedir(d);
    return n;
}

/* Writes snap-000..snap-(n-1) (value v-NNN-@tag) through one client of node @i. */
static void write_many(int i, int n, const char *tag)
{
    struct auth_client *c = node_client(i);
    char name[32], val[48];
    for (int k = 0; k < n; k++) {
        snprintf(name, sizeof name, "snap-%03d", k);
        snprintf(val, sizeof val, "v-%03d-%s", k, tag);
        int rv = cl_put(c, "snap", name, val);
        if (rv != 0) {
            auth_client_free(c);
            cr_assert_fail("put %s: %s (%s)", name, rp_errmsg(), rp_strerror(rv));
        }
    }
    auth_client_free(c);
}

/* A stale list of kind "snap" on node @i holds exactly snap-000..snap-(n-1) with the
 * values of @tag. Returns false (with a reason in @why) otherwise. */
static bool node_has_all(int i, int n, const char *tag, char *why, size_t whylen)
{
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "list");
    rp_mp_kv_str(&pk, "kind", "snap");
    rp_mp_kv_bool(&pk, "stale", true);
    int rv = node_call(i, req.data, req.len, &resp, 3000);
    rp_buf_free(&req);
    bool ok = false;
    if (rv != 0) {
        snprintf(why, whylen, "list on auth%d: %s (%s)", i, rp_errmsg(), rp_strerror(rv));
        goto out;
    }
    const msgpack_object *items = rp_mp_get(&resp.data, "items");
    if (items == NULL || items->type != MSGPACK_OBJECT_ARRAY) {
        snprintf(why, whylen, "list answer without items");
        goto out;
    }
    if (items->via.array.size != (uint32_t)n) {
        snprintf(why, whylen, "auth%d lists %u resources, want %d", i, items->via.array.size, n);
        goto out;
    }
    unsigned char seen[N_RES] = {0};
    for (uint32_t k = 0; k < items->via.array.size; k++) {
        const msgpack_object *it = &items->via.array.ptr[k];
        char name[64], val[64], want[64];
        cl_mp_str(rp_mp_get(it, "metadata"), "name", name, sizeof name);
        cl_mp_str(rp_mp_get(it, "spec"), "value", val, sizeof val);
        int idx = -1;
        if (sscanf(name, "snap-%d", &idx) != 1 || idx < 0 || idx >= n || seen[idx]) {
            snprintf(why, whylen, "auth%d lists unexpected %s", i, name);
            goto out;
        }
        seen[idx] = 1;
        snprintf(want, sizeof want, "v-%03d-%s", idx, tag);
        if (strcmp(val, want) != 0) {
            snprintf(why, whylen, "auth%d: %s = %s, want %s", i, name, val, want);
            goto out;
        }
    }
    ok = true;
out:
    msgpack_unpacked_destroy(&resp);
    return ok;
}

struct has_all_arg {
    int node, n;
    const char *tag;
    char why[256];
};

static bool has_all_pred(void *arg)
{
    struct has_all_arg *a = arg;
    return node_has_all(a->node, a->n, a->tag, a->why, sizeof a->why);
}

Test(int_snapshot, follower_back_after_400_writes_catches_up_by_snapshot)
{
    cluster_set_snapshot(64, 64);
    cluster_start(3);
    uint64_t leader = cluster_leader_id();
    cr_assert_neq(leader, 0);
    int li = node_by_raft_id(leader);
    int f = li == 1 ? 2 : 1;
    int st = node_term(f, 10000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0,
              "follower auth%d did not stop cleanly (0x%x)", f, st);

    uint64_t t0 = cl_now_ms();
    write_many(li, N_RES, "a");
    uint64_t write_ms = cl_now_ms() - t0;
    cr_assert_gt(snapshot_files(li), 0, "leader took no snapshot after %d writes with threshold 64",
                 N_RES);

    node_restart(f);
    struct has_all_arg a = {.node = f, .n = N_RES, .tag = "a"};
    cr_assert(wait_until(30000, has_all_pred, &a), "restarted follower: %s", a.why);
    uint64_t catch_ms = cl_now_ms() - t0 - write_ms;
    /* The leader's log could not have supplied the entries: the follower holds a
     * snapshot now, and its state machine restored one (it had none of its own:
     * it stopped long before its first snapshot threshold). */
    cr_assert_gt(snapshot_files(f), 0, "auth%d has no snapshot after catching up", f);
    cr_assert(node_log_contains(f, "restored a snapshot"),
              "auth%d caught up without restoring a snapshot", f);
    cr_assert_neq(cluster_wait_ready(li, 3, 0, 15000), 0);
    /* And it keeps following: one more write reaches it. */
    cr_assert_eq(node_put(li, "snap", "snap-late", "late"), 0, "%s", rp_errmsg());
    cr_assert(node_wait_value(f, "snap", "snap-late", "late", 10000));
    cr_log_info("%d writes in %llu ms; follower caught up in %llu ms", N_RES,
                (unsigned long long)write_ms, (unsigned long long)catch_ms);
    cluster_pass();
}

/* Acknowledged writes survive kill -9 of every member at once: each restarts from
 * its latest snapshot plus the log after it. */
Test(int_snapshot, whole_cluster_kill9_after_compaction_keeps_every_acked_write)
{
    cluster_set_snapshot(64, 64);
    cluster_start(3);
    int li = node_by_raft_id(cluster_leader_id());
    cr_assert_neq(li, 0);
    write_many(li, 200, "b");
    for (int i = 1; i <= 3; i++) {
        struct has_all_arg a = {.node = i, .n = 200, .tag = "b"};
        cr_assert(wait_until(10000, has_all_pred, &a), "before restart: %s", a.why);
    }
    for (int i = 1; i <= 3; i++)
        cr_assert_gt(snapshot_files(i), 0, "auth%d took no snapshot", i);
    for (int i = 1; i <= 3; i++)
        node_kill9(i);
    for (int i = 1; i <= 3; i++)
        node_restart(i);
    cr_assert_neq(cluster_wait_ready(1, 3, 0, 30000), 0, "no healthy cluster after restart");
    for (int i = 1; i <= 3; i++) {
        struct has_all_arg a = {.node = i, .n = 200, .tag = "b"};
        cr_assert(wait_until(10000, has_all_pred, &a), "after restart: %s", a.why);
    }
    cluster_pass();
}

/* libraft keeps every entry since its last snapshot in memory, and counts entries,
 * not bytes: at the default threshold (8192) 1 MiB values would hold 8 GiB. Once the
 * entries since the last snapshot hold 512 MiB, every member snapshots (state/fsm.c,
 * log_budget_note): here after about 128 writes of 4 MiB, far below 8192 entries. */
Test(int_snapshot, large_entries_bring_the_snapshot_forward, .timeout = 120)
{
    cluster_start(3);
    int li = node_by_raft_id(cluster_leader_id());
    size_t big = 4u << 20;
    char *val = malloc(big + 1);
    cr_assert_not_null(val);
    memset(val, 'b', big);
    val[big] = '\0';
    struct auth_client *c = node_client(li);
    int rv = 0;
    for (int k = 0; k < 160 && rv == 0; k++) {
        char name[32];
        snprintf(name, sizeof name, "big-%d", k % 16);
        rv = cl_put(c, "blob", name, val);
    }
    auth_client_free(c);
    free(val);
    cr_assert_eq(rv, 0, "put of 4 MiB: %s (%s)", rp_errmsg(), rp_strerror(rv));
    for (int i = 1; i <= 3; i++) {
        cr_assert_gt(snapshot_files(i), 0, "auth%d took no snapshot after 640 MiB of entries", i);
        cr_assert(node_log_contains(i, "since the last snapshot: snapshotting now"),
                  "auth%d did not snapshot for the bytes of its log", i);
    }
    cluster_pass();
}
