/* tests/test_state_recstore.c: the recordings store of the state machine
 * (state/recstore.c): rec_put and rec_trim through state_apply, idempotent
 * replay, retention, the budget, a map that grows to its ceiling, and snapshots. */
#define STATE_INTERNAL /* state__rec_snapshot_split: a snapshot from before recordings */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "state/state.h"
#include "tests/lib/state_helpers.h"

TestSuite(state_recstore, .init = sth_setup, .fini = sth_teardown, .timeout = 120);

#define DAY_MS (24ull * 3600 * 1000)
#define T0 1700000000000ull
#define BIG_BUDGET (1ull << 40)

static const char *SID_A = "0b8e0c2a-8d5e-4f55-9a3c-1f2e3d4c5b6a";
static const char *SID_B = "1c9f1d3b-9e6f-4066-8b4d-2a3b4c5d6e7f";
static const char *SID_C = "2da02e4c-af70-4177-9c5e-3b4c5d6e7f80";

struct put {
    const char *sid;
    uint32_t seq;
    const char *server;
    const void *data;
    size_t len;
    bool last;
    bool meta;
    uint64_t start; /* meta.start */
    uint64_t now, keep, max;
};

static struct state_result put_to(struct state *s, uint64_t index, struct put p)
{
    struct state_rec_meta m = {.user = "alice",
                               .login = "root",
                               .hostname = "node-1",
                               .start = p.start,
                               .cols = 80,
                               .rows = 24,
                               .interactive = true};
    struct state_rec_put rp = {.sid = p.sid,
                               .seq = p.seq,
                               .server_id = p.server ? p.server : "host-1",
                               .data = p.data ? p.data : "chunk",
                               .len = p.data ? p.len : 5,
                               .last = p.last,
                               .meta = p.meta ? &m : NULL,
                               .dur_ms = 100ull * (p.seq + 1),
                               .now_ms = p.now ? p.now : T0,
                               .keep_ms = p.keep ? p.keep : 30 * DAY_MS,
                               .max_bytes = p.max ? p.max : BIG_BUDGET};
    struct rp_buf cmd;
    rp_buf_init(&cmd);
    cr_assert_eq(state_rec_put_encode(&rp, &cmd), 0, "%s", rp_errmsg());
    struct state_result r = sth_apply_raw_to(s, index, cmd.data, cmd.len);
    rp_buf_free(&cmd);
    return r;
}

static struct state_result put(uint64_t index, struct put p)
{
    return put_to(sth_state, index, p);
}

static struct state_result trim_to(struct state *s, uint64_t index, uint64_t now, uint64_t keep,
                                   uint64_t max)
{
    struct rp_buf cmd;
    rp_buf_init(&cmd);
    cr_assert_eq(state_rec_trim_encode(now, keep, max, &cmd), 0);
    struct state_result r = sth_apply_raw_to(s, index, cmd.data, cmd.len);
    rp_buf_free(&cmd);
    return r;
}

static struct state_rec_info info_of(struct state *s, const char *sid)
{
    struct state_rec_info i;
    cr_assert_eq(state_rec_info(s, sid, &i), 0, "%s: %s", sid, rp_errmsg());
    return i;
}

static bool has_rec(struct state *s, const char *sid)
{
    struct state_rec_info i;
    return state_rec_info(s, sid, &i) == 0;
}

static void random_bytes(uint8_t *p, size_t n)
{
    while (n > 0) {
        ssize_t got = getrandom(p, n, 0);
        cr_assert_gt(got, 0);
        p += got;
        n -= (size_t)got;
    }
}

/* Every recording (info) and every chunk, in order, into @out. */
static int dump_cb(void *arg, const struct state_rec_info *i)
{
    struct rp_buf *b = arg;
    rp_buf_printf(b, "%s %s %s %llu %u %llu %d|", i->sid, i->server_id, i->user,
                  (unsigned long long)i->start, i->chunks, (unsigned long long)i->bytes,
                  i->complete);
    return 0;
}

static void dump(struct state *s, struct rp_buf *out)
{
    rp_buf_init(out);
    cr_assert_eq(state_rec_list(s, 0, 0, 0, dump_cb, out), 0);
    const char *sids[] = {SID_A, SID_B, SID_C};
    for (int k = 0; k < 3; k++)
        for (uint32_t seq = 0; seq < 8; seq++) {
            bool last = false;
            size_t before = out->len;
            if (state_rec_chunk(s, sids[k], seq, out, &last) == 0)
                rp_buf_printf(out, "#%d.%u.%d(%zu)", k, seq, last, out->len - before);
        }
}

static void assert_same_recordings(struct state *a, struct state *b)
{
    struct rp_buf da, db;
    dump(a, &da);
    dump(b, &db);
    cr_assert_eq(da.len, db.len, "recordings differ: %zu vs %zu bytes", da.len, db.len);
    cr_assert_eq(memcmp(da.data, db.data, da.len), 0, "recordings differ");
    rp_buf_free(&da);
    rp_buf_free(&db);
}

Test(state_recstore, chunks_are_stored_and_indexed_until_complete)
{
    cr_assert_eq(put(1, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0}).n_changed,
                 1);
    struct state_rec_info i = info_of(sth_state, SID_A);
    cr_assert_str_eq(i.user, "alice");
    cr_assert_str_eq(i.login, "root");
    cr_assert_str_eq(i.hostname, "node-1");
    cr_assert_str_eq(i.server_id, "host-1");
    cr_assert_eq(i.start, T0);
    cr_assert_eq(i.chunks, 1);
    cr_assert_not(i.complete);
    cr_assert_eq(
        put(2, (struct put){.sid = SID_A, .seq = 1, .data = "second", .len = 6, .last = true})
            .n_changed,
        1);
    i = info_of(sth_state, SID_A);
    cr_assert_eq(i.chunks, 2);
    cr_assert_eq(i.bytes, 5 + 6);
    cr_assert(i.complete);
    cr_assert_eq(i.dur_ms, 200);
    struct rp_buf b;
    bool last = false;
    rp_buf_init(&b);
    cr_assert_eq(state_rec_chunk(sth_state, SID_A, 1, &b, &last), 0);
    cr_assert_eq(b.len, 6);
    cr_assert_eq(memcmp(b.data, "second", 6), 0);
    cr_assert(last);
    cr_assert_eq(state_rec_chunk(sth_state, SID_A, 2, &b, NULL), RP_ENOTFOUND);
    rp_buf_free(&b);
    /* The main state saw only its applied index move. */
    cr_assert_eq(state_applied_index(sth_state), 2);
    cr_assert_eq(sth_count(sth_state, NULL, NULL), 0);
}

Test(state_recstore, a_chunk_stored_before_is_not_stored_again)
{
    cr_assert_eq(put(1, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0}).n_changed,
                 1);
    struct state_result r = put(2, (struct put){.sid = SID_A, .seq = 0, .data = "other", .len = 5});
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.n_changed, 0, "same (sid, seq): not stored");
    struct state_rec_info i = info_of(sth_state, SID_A);
    cr_assert_eq(i.chunks, 1);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(state_rec_chunk(sth_state, SID_A, 0, &b, NULL), 0);
    cr_assert_eq(memcmp(b.data, "chunk", 5), 0, "the first upload stays");
    rp_buf_free(&b);
}

Test(state_recstore, another_host_cannot_add_to_a_recording)
{
    put(1, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0});
    struct state_result r = put(2, (struct put){.sid = SID_A, .seq = 1, .server = "host-2"});
    cr_assert_eq(r.code, RP_EDENIED, "%s", r.message);
    cr_assert(strstr(r.message, "host-1") != NULL, "%s", r.message);
    cr_assert_eq(info_of(sth_state, SID_A).chunks, 1);
}

Test(state_recstore, chunks_after_the_last_are_refused)
{
    put(1, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0});
    put(2, (struct put){.sid = SID_A, .seq = 1, .last = true});
    struct state_result r = put(3, (struct put){.sid = SID_A, .seq = 2});
    cr_assert_eq(r.code, RP_EINVAL, "%s", r.message);
    cr_assert(info_of(sth_state, SID_A).complete);
}

Test(state_recstore, meta_rides_only_on_chunk_zero)
{
    struct state_rec_meta m = {.user = "u", .login = "l", .hostname = "h", .start = 1};
    struct state_rec_put p = {.sid = SID_A,
                              .seq = 1,
                              .server_id = "h1",
                              .data = "x",
                              .len = 1,
                              .meta = &m,
                              .now_ms = 1,
                              .max_bytes = 10};
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(state_rec_put_encode(&p, &b), RP_EINVAL);
    p.seq = STATE_REC_MAX_SEQ;
    p.meta = NULL;
    cr_assert_eq(state_rec_put_encode(&p, &b), RP_EINVAL, "seq bounded");
    p.seq = 0;
    p.sid = "not-a-uuid";
    cr_assert_eq(state_rec_put_encode(&p, &b), RP_EINVAL);
    rp_buf_free(&b);
    /* And apply refuses the same command built by hand (no state change). */
    static const char cmd[] = "\x82\xa2op\xa7rec_put\xa3rec\x80";
    struct state_result r = sth_apply_raw_to(sth_state, 1, cmd, sizeof cmd - 1);
    cr_assert_eq(r.code, RP_EINVAL);
}

Test(state_recstore, replay_after_a_crash_between_the_two_commits_changes_nothing)
{
    /* A reference that applies 1..4 once; the victim applies the same, but its
     * main environment loses entry 4 (crash after the recordings commit): on
     * restart entry 4 is applied again. Entry 4 evicts by budget, so applying it
     * a second time to a store that already holds it would evict more. */
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *ref = sth_open_state_in(dir2, NULL);
    struct state *states[] = {sth_state, ref};
    for (int k = 0; k < 2; k++) {
        struct state *s = states[k];
        put_to(s, 1, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0, .max = 100});
        put_to(s, 2,
               (struct put){.sid = SID_B, .seq = 0, .meta = true, .start = T0 + 1, .max = 100});
        put_to(s, 3,
               (struct put){.sid = SID_C, .seq = 0, .meta = true, .start = T0 + 2, .max = 100});
    }
    char main_db[128], saved[128], cmd[400];
    snprintf(main_db, sizeof main_db, "%s/data.mdb", sth_tmpdir);
    snprintf(saved, sizeof saved, "%s/saved.mdb", sth_tmpdir);
    state_close(sth_state);
    snprintf(cmd, sizeof cmd, "cp %s %s", main_db, saved);
    cr_assert_eq(system(cmd), 0);
    sth_state = sth_open_state_in(sth_tmpdir, NULL);
    states[0] = sth_state;
    /* 3 recordings of 5 bytes; entry 4 adds 90 bytes to A with a 100-byte budget:
     * B (the oldest other) goes. */
    static uint8_t big[90];
    for (int k = 0; k < 2; k++) {
        struct state_result r = put_to(
            states[k], 4, (struct put){.sid = SID_A, .seq = 1, .data = big, .len = 90, .max = 100});
        cr_assert_eq(r.n_changed, 1, "%s", r.message);
        cr_assert_not(has_rec(states[k], SID_B));
        cr_assert(has_rec(states[k], SID_C));
    }
    state_close(sth_state);
    snprintf(cmd, sizeof cmd, "cp %s %s", saved, main_db);
    cr_assert_eq(system(cmd), 0);
    sth_state = sth_open_state_in(sth_tmpdir, NULL);
    cr_assert_eq(state_applied_index(sth_state), 3, "the main environment lost entry 4");
    struct state_result r = put_to(
        sth_state, 4, (struct put){.sid = SID_A, .seq = 1, .data = big, .len = 90, .max = 100});
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.n_changed, 0, "already in the recordings store");
    cr_assert_eq(state_applied_index(sth_state), 4);
    cr_assert(has_rec(sth_state, SID_C), "the replay evicted nothing more");
    assert_same_recordings(sth_state, ref);
    state_close(ref);
}

Test(state_recstore, retention_drops_recordings_that_started_before_it)
{
    put(1, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0});
    put(2, (struct put){.sid = SID_B,
                        .seq = 0,
                        .meta = true,
                        .start = T0 + 10 * DAY_MS,
                        .now = T0 + 10 * DAY_MS});
    /* 31 days after A started, with 30 days kept: A goes, B stays, C is added. */
    struct state_result r = put(3, (struct put){.sid = SID_C,
                                                .seq = 0,
                                                .meta = true,
                                                .start = T0 + 31 * DAY_MS,
                                                .now = T0 + 31 * DAY_MS});
    cr_assert_eq(r.n_changed, 1);
    cr_assert_not(has_rec(sth_state, SID_A));
    cr_assert(has_rec(sth_state, SID_B));
    struct state_rec_stats st;
    cr_assert_eq(state_rec_stats(sth_state, &st), 0);
    cr_assert_eq(st.recordings, 2);
    cr_assert_eq(st.bytes, 10);
    /* rec_trim applies the same rule without an upload. */
    r = trim_to(sth_state, 4, T0 + 41 * DAY_MS, 30 * DAY_MS, BIG_BUDGET);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.n_changed, 1);
    cr_assert_not(has_rec(sth_state, SID_B));
    cr_assert(has_rec(sth_state, SID_C));
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(state_rec_chunk(sth_state, SID_B, 0, &b, NULL), RP_ENOTFOUND, "chunks go too");
    rp_buf_free(&b);
}

Test(state_recstore, the_budget_evicts_the_oldest_recordings_first)
{
    static uint8_t d[40];
    put(1,
        (struct put){.sid = SID_B, .seq = 0, .meta = true, .start = T0 + 5, .data = d, .len = 40});
    put(2, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0, .data = d, .len = 40});
    put(3,
        (struct put){.sid = SID_C, .seq = 0, .meta = true, .start = T0 + 9, .data = d, .len = 10});
    /* 90 bytes stored; 40 more with a budget of 100: A (oldest start) goes first,
     * then it fits (90 - 40 + 40 = 90). */
    struct state_result r =
        put(4, (struct put){.sid = SID_C, .seq = 1, .data = d, .len = 40, .max = 100});
    cr_assert_eq(r.n_changed, 1, "%s", r.message);
    cr_assert_not(has_rec(sth_state, SID_A));
    cr_assert(has_rec(sth_state, SID_B));
    cr_assert_eq(info_of(sth_state, SID_C).bytes, 50);
}

Test(state_recstore, a_chunk_that_cannot_fit_the_budget_is_refused_whole)
{
    static uint8_t d[60];
    put(1, (struct put){.sid = SID_A, .seq = 0, .meta = true, .start = T0, .data = d, .len = 30});
    put(2,
        (struct put){.sid = SID_B, .seq = 0, .meta = true, .start = T0 + 1, .data = d, .len = 30});
    /* B already holds 30: 30 + 60 > 80 even with A gone. Nothing changes. */
    struct state_result r =
        put(3, (struct put){.sid = SID_B, .seq = 1, .data = d, .len = 60, .max = 80});
    cr_assert_eq(r.code, RP_ENOSPC, "%s", r.message);
    cr_assert(strstr(r.message, "max_size") != NULL, "%s", r.message);
    cr_assert(has_rec(sth_state, SID_A), "the refused command evicted nothing");
    cr_assert_eq(info_of(sth_state, SID_B).chunks, 1);
    cr_assert_eq(state_applied_index(sth_state), 3, "Raft goes on");
}

Test(state_recstore, the_map_grows_from_a_tiny_start)
{
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state_opts o = {.rec_map_size = 256 << 10, .rec_map_max = 64 << 20};
    struct state *s = sth_open_state_in(dir2, &o);
    struct state_rec_stats st;
    cr_assert_eq(state_rec_stats(s, &st), 0);
    cr_assert_eq(st.map_size, 256 << 10);
    static uint8_t d[200 << 10];
    for (uint32_t seq = 0; seq < 40; seq++) {
        random_bytes(d, sizeof d); /* incompressible, not that LMDB compresses */
        struct state_result r = put_to(s, seq + 1,
                                       (struct put){.sid = SID_A,
                                                    .seq = seq,
                                                    .data = d,
                                                    .len = sizeof d,
                                                    .meta = seq == 0,
                                                    .start = T0});
        cr_assert_eq(r.code, 0, "seq %u: %s", seq, r.message);
        cr_assert_eq(r.n_changed, 1);
    }
    cr_assert_eq(state_rec_stats(s, &st), 0);
    cr_assert_geq(st.map_size, 40 * sizeof d, "grew to %llu", (unsigned long long)st.map_size);
    cr_assert_leq(st.map_size, 64 << 20);
    cr_assert_eq(st.bytes, 40 * sizeof d);
    /* After a restart the map holds at least what is used, and grows again. */
    state_close(s);
    s = sth_open_state_in(dir2, &o);
    struct state_rec_stats st2;
    cr_assert_eq(state_rec_stats(s, &st2), 0);
    cr_assert_geq(st2.map_size, st.map_used);
    cr_assert_eq(info_of(s, SID_A).chunks, 40);
    random_bytes(d, sizeof d);
    struct state_result r =
        put_to(s, 41, (struct put){.sid = SID_B, .seq = 0, .data = d, .len = sizeof d});
    cr_assert_eq(r.n_changed, 1, "%s", r.message);
    state_close(s);
}

Test(state_recstore, at_the_ceiling_big_writes_fail_with_no_space_and_small_ones_still_work)
{
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state_opts o = {.rec_map_size = 1 << 20, .rec_map_max = 6 << 20};
    struct state *s = sth_open_state_in(dir2, &o);
    static uint8_t d[STATE_REC_MAX_CHUNK];
    uint64_t index = 0;
    int refused_at = -1;
    for (uint32_t seq = 0; seq < 12 && refused_at < 0; seq++) {
        random_bytes(d, sizeof d);
        struct state_result r = put_to(s, ++index,
                                       (struct put){.sid = SID_A,
                                                    .seq = seq,
                                                    .data = d,
                                                    .len = sizeof d,
                                                    .meta = seq == 0,
                                                    .start = T0});
        if (r.code == RP_ENOSPC) {
            cr_assert(strstr(r.message, "ceiling") != NULL, "%s", r.message);
            refused_at = (int)seq;
        } else {
            cr_assert_eq(r.code, 0, "%s", r.message);
        }
    }
    cr_assert_geq(refused_at, 1, "a 6 MiB ceiling refuses some 1 MiB chunk");
    cr_assert_eq(state_applied_index(s), index, "the refusal is an outcome: Raft goes on");
    struct state_rec_stats st;
    cr_assert_eq(state_rec_stats(s, &st), 0);
    cr_assert_eq(st.map_size, 6 << 20);
    /* A small chunk of another recording still goes in, and so do resources. */
    struct state_result r =
        put_to(s, ++index, (struct put){.sid = SID_B, .seq = 0, .meta = true, .start = T0});
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 1);
    cr_assert_eq(sth_put_to(s, ++index, "put", "node", "n1", 0, "x").code, 0);
    state_close(s);
}

/* A snapshot through the FSM (synchronous mode), as a malloc'd copy. */
static uint8_t *take_snapshot(struct state *s, size_t *len)
{
    struct raft_fsm fsm;
    struct raft_buffer *bufs = NULL;
    unsigned n = 0;
    state_fsm_init(&fsm, s, NULL);
    cr_assert_eq(fsm.snapshot(&fsm, &bufs, &n), 0);
    cr_assert_eq(n, 1);
    uint8_t *copy = malloc(bufs[0].len);
    memcpy(copy, bufs[0].base, bufs[0].len);
    *len = bufs[0].len;
    cr_assert_eq(fsm.snapshot_finalize(&fsm, &bufs, &n), 0);
    return copy;
}

static int restore(struct state *s, const void *data, size_t len)
{
    struct raft_fsm fsm;
    struct raft_buffer buf = {.base = raft_malloc(len), .len = len};
    memcpy(buf.base, data, len);
    state_fsm_init(&fsm, s, NULL);
    int rv = fsm.restore(&fsm, &buf);
    if (rv != 0)
        raft_free(buf.base);
    return rv;
}

Test(state_recstore, a_snapshot_carries_the_recordings)
{
    static uint8_t d[300 << 10];
    random_bytes(d, sizeof d);
    put(1, (struct put){
               .sid = SID_A, .seq = 0, .meta = true, .start = T0, .data = d, .len = sizeof d});
    put(2, (struct put){.sid = SID_A, .seq = 1, .last = true});
    put(3, (struct put){.sid = SID_B, .seq = 0, .meta = true, .start = T0 + 1});
    sth_put(4, "node", "n1", "x");
    size_t len;
    uint8_t *snap = take_snapshot(sth_state, &len);
    cr_assert_gt(len, sizeof d);
    /* Restored into a member that holds other recordings, with a tiny map: it
     * grows to take them, and only the snapshot's recordings remain. */
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state_opts o = {.rec_map_size = 64 << 10, .rec_map_max = 128 << 10};
    struct state *s2 = sth_open_state_in(dir2, &o);
    put_to(s2, 1, (struct put){.sid = SID_C, .seq = 0, .meta = true, .start = T0});
    cr_assert_eq(restore(s2, snap, len), 0, "%s", rp_errmsg());
    cr_assert_not(has_rec(s2, SID_C));
    assert_same_recordings(sth_state, s2);
    cr_assert(info_of(s2, SID_A).complete);
    cr_assert_eq(sth_count(s2, "node", NULL), 1);
    /* Applying continues where the snapshot left off, the store's own index too. */
    cr_assert_eq(put_to(s2, 3, (struct put){.sid = SID_C, .seq = 0}).n_changed, 0,
                 "index 3 is applied");
    cr_assert_eq(put_to(s2, 5, (struct put){.sid = SID_C, .seq = 0}).n_changed, 1);
    /* Same bytes from the restored member, minus what was added since. */
    size_t len2;
    char dir3[64];
    sth_make_tmpdir(dir3);
    struct state *s3 = sth_open_state_in(dir3, NULL);
    cr_assert_eq(restore(s3, snap, len), 0);
    uint8_t *snap3 = take_snapshot(s3, &len2);
    cr_assert_eq(len2, len);
    cr_assert_eq(memcmp(snap, snap3, len), 0);
    free(snap3);
    /* A snapshot from before recordings existed (no section) empties the store. */
    size_t main_len, rec_len;
    const uint8_t *rec;
    cr_assert_eq(state__rec_snapshot_split(snap, len, &main_len, &rec, &rec_len), 0);
    cr_assert_not_null(rec);
    cr_assert_eq(restore(s3, snap, main_len), 0, "%s", rp_errmsg());
    cr_assert_not(has_rec(s3, SID_A));
    cr_assert_eq(sth_count(s3, "node", NULL), 1);
    /* A damaged section is refused before anything changes. */
    snap[main_len + 20] ^= 1;
    cr_assert_neq(restore(s2, snap, len), 0);
    cr_assert(has_rec(s2, SID_C));
    free(snap);
    state_close(s2);
    state_close(s3);
}

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

Test(state_recstore, a_snapshot_of_64_mib_of_recordings_restores_into_a_small_map)
{
    static uint8_t d[STATE_REC_MAX_CHUNK];
    const char *sids[] = {SID_A, SID_B, SID_C};
    uint64_t index = 0;
    for (int k = 0; k < 3; k++)
        for (uint32_t seq = 0; seq < 22; seq++) {
            random_bytes(d, sizeof d);
            struct state_result r = put(++index, (struct put){.sid = sids[k],
                                                              .seq = seq,
                                                              .data = d,
                                                              .len = sizeof d,
                                                              .meta = seq == 0,
                                                              .start = T0 + (uint64_t)k});
            cr_assert_eq(r.n_changed, 1, "%s", r.message);
        }
    uint64_t t0 = mono_ms();
    size_t len;
    uint8_t *snap = take_snapshot(sth_state, &len);
    uint64_t t1 = mono_ms();
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state_opts o = {.rec_map_size = 1 << 20, .rec_map_max = 8 << 20};
    struct state *s2 = sth_open_state_in(dir2, &o);
    cr_assert_eq(restore(s2, snap, len), 0, "%s", rp_errmsg());
    uint64_t t2 = mono_ms();
    cr_log_info("recordings snapshot of %zu MiB: taken in %llu ms, restored in %llu ms", len >> 20,
                (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
    cr_assert_gt(len, 66u << 20);
    assert_same_recordings(sth_state, s2);
    struct state_rec_stats st;
    cr_assert_eq(state_rec_stats(s2, &st), 0);
    cr_assert_eq(st.bytes, 66ull * sizeof d);
    free(snap);
    state_close(s2);
}
