/* tests/test_state_snapshot.c: snapshots (serialise, restore, malformed input) and
 * the FSM glue under libraft: its in-memory fixture and a real libuv node. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "state/state.h"
#include "tests/lib/state_helpers.h"
#include <raft/fixture.h>

TestSuite(state_snapshot, .init = sth_setup, .fini = sth_teardown, .timeout = 120);

/* A raft instance just real enough for the FSM outside a cluster: an io that
 * can run async work, and a last_applied. */
static struct raft_io fake_io;
static struct raft fake_raft;

static int fake_async_work(struct raft_io *io, struct raft_io_async_work *req,
                           raft_io_async_work_cb cb)
{
    (void)io;
    (void)req;
    (void)cb;
    return RAFT_INVALID;
}

/* An FSM for @s in async mode: the first apply (here of an index already
 * applied, so it changes nothing) switches snapshot_async on. */
static void async_fsm(struct raft_fsm *fsm, struct state *s)
{
    memset(&fake_raft, 0, sizeof fake_raft);
    fake_io.async_work = fake_async_work;
    fake_raft.io = &fake_io;
    state_fsm_init(fsm, s, &fake_raft);
    cr_assert_null(fsm->snapshot_async, "off until raft runs: raft_init would refuse it");
    cr_assert_geq(state_applied_index(s), 1);
    struct raft_buffer buf = {.base = "\xc1", .len = 1};
    void *result = NULL;
    cr_assert_eq(fsm->apply(fsm, &buf, &result), 0);
    cr_assert_not_null(result);
    cr_assert_not_null(fsm->snapshot_async, "io has async_work: on");
}

/* Takes a snapshot of @s the way libraft does (pin, serialise on the pool in
 * async mode or at once in sync mode, finalize) and returns a malloc'd copy. */
static uint8_t *take_snapshot_mode(struct state *s, size_t *len, bool async)
{
    struct raft_fsm fsm;
    struct raft_buffer *bufs = NULL;
    unsigned n = 0;
    if (async) {
        async_fsm(&fsm, s);
    } else {
        state_fsm_init(&fsm, s, NULL);
        cr_assert_null(fsm.snapshot_async);
    }
    cr_assert_eq(fsm.version, 3);
    cr_assert_eq(fsm.snapshot(&fsm, &bufs, &n), 0);
    if (async) {
        cr_assert_eq(n, 0, "async mode: snapshot() only pins");
        cr_assert_eq(fsm.snapshot_async(&fsm, &bufs, &n), 0);
    }
    cr_assert_eq(n, 1);
    uint8_t *copy = malloc(bufs[0].len);
    memcpy(copy, bufs[0].base, bufs[0].len);
    *len = bufs[0].len;
    cr_assert_eq(fsm.snapshot_finalize(&fsm, &bufs, &n), 0);
    cr_assert_null(bufs);
    cr_assert_eq(n, 0);
    return copy;
}

static uint8_t *take_snapshot(struct state *s, size_t *len)
{
    return take_snapshot_mode(s, len, true);
}

/* Restores @data into @s through the FSM. On success the FSM has freed the
 * raft_malloc'd buffer; on failure we free it, as raft would. */
static int restore(struct state *s, const void *data, size_t len)
{
    struct raft_fsm fsm;
    struct raft_buffer buf = {.base = raft_malloc(len ? len : 1), .len = len};
    memcpy(buf.base, data, len);
    state_fsm_init(&fsm, s, NULL);
    int rv = fsm.restore(&fsm, &buf);
    if (rv != 0)
        raft_free(buf.base);
    return rv;
}

static void fill(struct state *s)
{
    struct rp_buf res, ops, cmd;
    sth_put_to(s, 1, "put", "node", "n1", 0, "a");
    sth_put_to(s, 2, "put", "token", "t1", 5000, "b");
    sth_put_to(s, 3, "create", "token", "t2", 7000, "c");
    sth_put_to(s, 4, "create", "token", "t2", 0, "dup"); /* fails, rid remembered */
    sth_put_to(s, 5, "put", "role", "admin", 0, "d");
    sth_apply_to(
        s, 6, (struct state_cmd){.op = "delete", .rid = "r6", .kind = "node", .name = "n1"}, NULL);
    sth_make_res(&res, "user", "alice", 9000, "prod", "e");
    rp_buf_init(&ops);
    struct state_cmd sub = {.op = "put", .res = res.data, .res_len = res.len};
    state_cmd_encode(&sub, &ops);
    sub = (struct state_cmd){.op = "delete", .kind = "role", .name = "admin"};
    state_cmd_encode(&sub, &ops);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "b7", .ops = ops.data, .ops_len = ops.len, .n_ops = 2},
               NULL);
    sth_apply_raw_to(s, 7, cmd.data, cmd.len);
    sth_apply_raw_to(s, 8, "\xc1", 1); /* malformed: advances the index only */
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&res);
}

static void assert_same(struct state *a, struct state *b)
{
    struct rp_buf da, db;
    sth_dump(a, &da);
    sth_dump(b, &db);
    cr_assert_eq(da.len, db.len, "listings differ in length: %zu vs %zu", da.len, db.len);
    cr_assert_eq(memcmp(da.data, db.data, da.len), 0, "listings differ");
    rp_buf_free(&da);
    rp_buf_free(&db);
    cr_assert_eq(state_applied_index(a), state_applied_index(b));
    uint64_t ea, eb;
    cr_assert_eq(state_next_expiry(a, &ea), 0);
    cr_assert_eq(state_next_expiry(b, &eb), 0);
    cr_assert_eq(ea, eb);
}

Test(state_snapshot, restore_into_a_fresh_state_gives_identical_contents)
{
    fill(sth_state);
    size_t len, len2;
    uint8_t *snap = take_snapshot(sth_state, &len);
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *s2 = sth_open_state_in(dir2, NULL);
    cr_assert_eq(restore(s2, snap, len), 0, "%s", rp_errmsg());
    assert_same(sth_state, s2);
    cr_assert_eq(state_applied_index(s2), 8);
    /* And its own snapshot is the same bytes. */
    uint8_t *snap2 = take_snapshot(s2, &len2);
    cr_assert_eq(len, len2);
    cr_assert_eq(memcmp(snap, snap2, len), 0);
    /* Request ids came along: a retry is answered from memory. */
    struct rp_buf dup;
    sth_make_res(&dup, "token", "t2", 0, NULL, "dup");
    struct state_result r =
        sth_apply_to(s2, 9, (struct state_cmd){.op = "create", .rid = "r4"}, &dup);
    rp_buf_free(&dup);
    cr_assert_eq(r.code, RP_EEXISTS);
    cr_assert_eq(r.revision, 4, "rid r4 remembered from index 4");
    /* Applying goes on from there; old indexes are skipped. */
    cr_assert_eq(sth_put_to(s2, 5, "put", "node", "late", 0, "x").code, 0);
    char spec[8];
    cr_assert_eq(sth_get_spec_in(s2, "node", "late", spec, sizeof spec, NULL), RP_ENOTFOUND);
    cr_assert_eq(sth_put_to(s2, 10, "put", "node", "late", 0, "x").code, 0);
    cr_assert_eq(sth_get_spec_in(s2, "node", "late", spec, sizeof spec, NULL), 0);
    free(snap);
    free(snap2);
    state_close(s2);
    sth_remove_tree(dir2);
}

Test(state_snapshot, restore_replaces_whatever_was_there)
{
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *s2 = sth_open_state_in(dir2, NULL);
    fill(sth_state);
    /* s2 is ahead, with other contents (a restart restoring an older snapshot). */
    for (uint64_t i = 1; i <= 20; i++)
        sth_put_to(s2, i, "put", "other", "x", i, "y");
    size_t len;
    uint8_t *snap = take_snapshot(sth_state, &len);
    cr_assert_eq(restore(s2, snap, len), 0, "%s", rp_errmsg());
    assert_same(sth_state, s2);
    cr_assert_eq(sth_count(s2, "other", NULL), 0);
    free(snap);
    state_close(s2);
    sth_remove_tree(dir2);
}

Test(state_snapshot, the_fsm_strips_the_zero_padding_of_raft_entries)
{
    struct raft_fsm fsm;
    sth_put(1, "node", "seed", "x");
    async_fsm(&fsm, sth_state); /* fake raft, last_applied 0 */
    struct rp_buf res, cmd;
    sth_make_res(&res, "node", "n1", 0, NULL, "x");
    /* cas with rev 0 ends in a 0x00 byte: padding must not eat it. */
    sth_encode(&cmd, (struct state_cmd){.op = "cas", .rid = "c", .rev = 0}, &res);
    cr_assert_eq(cmd.data[cmd.len - 1], 0);
    for (size_t pad = 0; pad <= 8; pad++) {
        uint8_t *entry = calloc(1, cmd.len + pad);
        memcpy(entry, cmd.data, cmd.len);
        struct raft_buffer buf = {.base = entry, .len = cmd.len + pad};
        void *result;
        fake_raft.last_applied = state_applied_index(sth_state);
        cr_assert_eq(fsm.apply(&fsm, &buf, &result), 0);
        const struct state_result *r = result;
        if (pad <= 7) {
            cr_assert_eq(r->code, 0, "pad %zu: %s", pad, r->message);
            cr_assert_eq(r->revision, pad == 0 ? state_applied_index(sth_state) : 2, "pad %zu",
                         pad);
        } else {
            cr_assert_eq(r->code, RP_EINVAL, "8 zero bytes are not padding");
        }
        free(entry);
    }
    rp_buf_free(&cmd);
    rp_buf_free(&res);
}

Test(state_snapshot, sync_and_async_modes_write_the_same_bytes)
{
    fill(sth_state);
    size_t la, lb;
    uint8_t *a = take_snapshot_mode(sth_state, &la, false),
            *b = take_snapshot_mode(sth_state, &lb, true);
    cr_assert_eq(la, lb);
    cr_assert_eq(memcmp(a, b, la), 0);
    free(a);
    free(b);
}

Test(state_snapshot, replicas_applying_the_same_entries_have_identical_snapshots)
{
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *s2 = sth_open_state_in(dir2, NULL);
    fill(sth_state);
    fill(s2);
    size_t la, lb;
    uint8_t *a = take_snapshot(sth_state, &la), *b = take_snapshot(s2, &lb);
    cr_assert_eq(la, lb);
    cr_assert_eq(memcmp(a, b, la), 0);
    free(a);
    free(b);
    state_close(s2);
    sth_remove_tree(dir2);
}

Test(state_snapshot, a_snapshot_is_the_state_when_it_was_pinned)
{
    struct raft_fsm fsm;
    struct raft_buffer *bufs = NULL, *other = NULL;
    unsigned n = 0, n2 = 0;
    sth_put(1, "node", "a", "x");
    async_fsm(&fsm, sth_state);
    cr_assert_eq(fsm.snapshot(&fsm, &bufs, &n), 0);
    cr_assert_eq(fsm.snapshot(&fsm, &other, &n2), RAFT_BUSY, "one at a time");
    /* Applies go on while it is pinned; they are not in it. */
    sth_put(2, "node", "b", "x");
    cr_assert_eq(fsm.snapshot_async(&fsm, &bufs, &n), 0);
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *s2 = sth_open_state_in(dir2, NULL);
    cr_assert_eq(restore(s2, bufs[0].base, bufs[0].len), 0);
    cr_assert_eq(fsm.snapshot_finalize(&fsm, &bufs, &n), 0);
    cr_assert_eq(state_applied_index(s2), 1);
    cr_assert_eq(sth_count(s2, NULL, NULL), 1);
    /* Finalized: a new one may start. */
    cr_assert_eq(fsm.snapshot(&fsm, &bufs, &n), 0);
    cr_assert_eq(fsm.snapshot_finalize(&fsm, &bufs, &n), 0, "finalize without async");
    /* Sync mode refuses a second one the same way. */
    state_fsm_init(&fsm, sth_state, NULL);
    cr_assert_eq(fsm.snapshot(&fsm, &bufs, &n), 0);
    cr_assert_eq(n, 1);
    cr_assert_eq(fsm.snapshot(&fsm, &other, &n2), RAFT_BUSY);
    cr_assert_eq(fsm.snapshot_finalize(&fsm, &bufs, &n), 0);
    state_close(s2);
    sth_remove_tree(dir2);
}

/* ---- Malformed snapshots ------------------------------------------------ */

static uint64_t fnv(const uint8_t *p, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

/* Recomputes the trailing checksum, so that what is checked is the structure. */
static void reseal(uint8_t *p, size_t len)
{
    uint64_t h = fnv(p, len - 8);
    for (int i = 7; i >= 0; i--) {
        p[len - 8 + i] = (uint8_t)h;
        h >>= 8;
    }
}

/* Offset of the first record of database @db (after its name and count). */
static size_t db_records(const uint8_t *p, int db)
{
    size_t off = 8 + 4 + 4;
    for (int i = 0;; i++) {
        uint8_t nl = p[off];
        off += 1 + nl;
        uint64_t n = 0;
        for (int k = 0; k < 8; k++)
            n = (n << 8) | p[off + k];
        off += 8;
        if (i == db)
            return off;
        for (uint64_t r = 0; r < n; r++) {
            uint32_t kl = (uint32_t)p[off] << 24 | p[off + 1] << 16 | p[off + 2] << 8 | p[off + 3];
            off += 4 + kl;
            uint32_t vl = (uint32_t)p[off] << 24 | p[off + 1] << 16 | p[off + 2] << 8 | p[off + 3];
            off += 4 + vl;
        }
    }
}

static void expect_refused(struct state *t, const uint8_t *p, size_t len, const char *what)
{
    struct rp_buf before, after;
    uint64_t applied = state_applied_index(t);
    sth_dump(t, &before);
    int rv = restore(t, p, len);
    cr_assert_neq(rv, 0, "%s: accepted", what);
    sth_dump(t, &after);
    cr_assert_eq(before.len, after.len, "%s: state changed", what);
    cr_assert_eq(memcmp(before.data, after.data, before.len), 0, "%s: state changed", what);
    cr_assert_eq(state_applied_index(t), applied);
    rp_buf_free(&before);
    rp_buf_free(&after);
}

Test(state_snapshot, malformed_snapshots_are_refused_and_change_nothing)
{
    fill(sth_state);
    size_t len;
    uint8_t *snap = take_snapshot(sth_state, &len);
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *t = sth_open_state_in(dir2, NULL);
    sth_put_to(t, 1, "put", "node", "keep", 0, "me");
    uint8_t *p = malloc(len + 16);

    for (size_t n = 0; n < len; n += (n < 64 ? 1 : 7)) {
        memcpy(p, snap, n);
        expect_refused(t, p, n, "truncated");
    }
    srand(5);
    for (int i = 0; i < 300; i++) {
        memcpy(p, snap, len);
        p[rand() % len] ^= (uint8_t)(1 + rand() % 255);
        expect_refused(t, p, len, "bit flip");
    }
    /* Structural damage behind a valid checksum. */
    memcpy(p, snap, len);
    p[0] = 'X';
    reseal(p, len);
    expect_refused(t, p, len, "magic");
    memcpy(p, snap, len);
    p[11] = 1; /* version 1 had no audit databases */
    reseal(p, len);
    expect_refused(t, p, len, "version");
    memcpy(p, snap, len);
    memcpy(p + len, p + len - 8, 8);
    memset(p + len - 8, 0, 8);
    reseal(p, len + 8);
    expect_refused(t, p, len + 8, "trailing bytes");

    size_t res0 = db_records(snap, 0); /* first resource record */
    memcpy(p, snap, len);
    p[res0 + 3] = 0xff; /* key length far past the end */
    reseal(p, len);
    expect_refused(t, p, len, "key length");
    memcpy(p, snap, len);
    p[res0 + 4] = 'Z'; /* kind no longer valid */
    reseal(p, len);
    expect_refused(t, p, len, "bad kind in key");
    memcpy(p, snap, len);
    p[res0 + 4] = 'a'; /* "node" -> "aode": key and resource disagree */
    reseal(p, len);
    expect_refused(t, p, len, "key differs from resource");

    /* Swap the first two resource records: keys out of order. */
    memcpy(p, snap, len);
    {
        size_t off = res0;
        uint32_t kl = (uint32_t)p[off] << 24 | p[off + 1] << 16 | p[off + 2] << 8 | p[off + 3];
        uint32_t vl = (uint32_t)p[off + 4 + kl] << 24 | p[off + 5 + kl] << 16 |
                      p[off + 6 + kl] << 8 | p[off + 7 + kl];
        size_t first = 8 + kl + vl;
        size_t off2 = off + first;
        uint32_t kl2 = (uint32_t)p[off2] << 24 | p[off2 + 1] << 16 | p[off2 + 2] << 8 | p[off2 + 3];
        uint32_t vl2 = (uint32_t)p[off2 + 4 + kl2] << 24 | p[off2 + 5 + kl2] << 16 |
                       p[off2 + 6 + kl2] << 8 | p[off2 + 7 + kl2];
        size_t second = 8 + kl2 + vl2;
        memcpy(p + off, snap + off2, second);
        memcpy(p + off + second, snap + off, first);
    }
    reseal(p, len);
    expect_refused(t, p, len, "out of order");

    /* The restore of the intact snapshot still works afterwards. */
    cr_assert_eq(restore(t, snap, len), 0, "%s", rp_errmsg());
    assert_same(sth_state, t);
    free(p);
    free(snap);
    state_close(t);
    sth_remove_tree(dir2);
}

Test(state_snapshot, a_restore_ends_every_watch_with_reinit)
{
    sth_put(1, "node", "a", "x");
    struct state_watch *w;
    struct state_watch_opts o = {0};
    cr_assert_eq(state_watch_open(sth_state, &o, &w), 0);
    struct state_event ev;
    state_event_init(&ev);
    cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
    cr_assert_eq(ev.type, STATE_EV_INIT_PUT);
    cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
    cr_assert_eq(ev.type, STATE_EV_INIT_DONE);
    sth_put(2, "node", "b", "x");

    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *other = sth_open_state_in(dir2, NULL);
    for (uint64_t i = 1; i <= 9; i++)
        sth_put_to(other, i, "put", "node", "z", 0, "y");
    size_t len;
    uint8_t *snap = take_snapshot(other, &len);
    cr_assert_eq(restore(sth_state, snap, len), 0);
    cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
    cr_assert_eq(ev.type, STATE_EV_PUT, "what was queued before the restore");
    cr_assert_eq(ev.revision, 2);
    cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
    cr_assert_eq(ev.type, STATE_EV_REINIT);
    cr_assert_eq(ev.revision, 2);
    cr_assert_eq(state_watch_next(w, &ev, 0), RP_ECLOSED);
    state_watch_close(w);
    /* A new watch sees the restored state. */
    cr_assert_eq(state_watch_open(sth_state, &o, &w), 0);
    cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
    cr_assert_eq(ev.type, STATE_EV_INIT_PUT);
    cr_assert_str_eq(ev.name, "z");
    cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
    cr_assert_eq(ev.type, STATE_EV_INIT_DONE);
    cr_assert_eq(ev.revision, 9);
    state_watch_close(w);
    state_event_free(&ev);
    free(snap);
    state_close(other);
    sth_remove_tree(dir2);
}

/* ---- The FSM under libraft's in-memory cluster --------------------------- */

#define N_SERVERS 3

static struct raft_fixture F;
static struct state *FS[N_SERVERS];
static struct raft_fsm FSM[N_SERVERS];
static char fdirs[N_SERVERS][64];

struct proposal {
    struct raft_apply req;
    struct state *s;
    bool done;
    int status;
    struct state_result res;
    uint64_t applied_at_cb; /* the state's applied index when the callback ran */
};

static void proposal_cb(struct raft_apply *req, int status, void *result)
{
    struct proposal *p = req->data;
    p->done = true;
    p->status = status;
    p->applied_at_cb = state_applied_index(p->s);
    if (status == 0)
        p->res = *(const struct state_result *)result;
}

static bool proposal_done(struct raft_fixture *f, void *arg)
{
    (void)f;
    return ((struct proposal *)arg)->done;
}

/* Proposes @c through the leader and steps until its callback has run. */
static struct state_result propose(unsigned leader, struct state_cmd c, const struct rp_buf *res)
{
    struct rp_buf cmd;
    static struct proposal p;
    sth_encode(&cmd, c, res);
    memset(&p, 0, sizeof p);
    p.req.data = &p;
    p.s = FS[leader];
    struct raft_buffer buf = {.base = raft_calloc(1, STATE_ENTRY_LEN(cmd.len)),
                              .len = STATE_ENTRY_LEN(cmd.len)};
    memcpy(buf.base, cmd.data, cmd.len);
    rp_buf_free(&cmd);
    int rv = raft_apply(raft_fixture_get(&F, leader), &p.req, &buf, 1, proposal_cb);
    cr_assert_eq(rv, 0, "raft_apply: %s", raft_strerror(rv));
    cr_assert(raft_fixture_step_until(&F, proposal_done, &p, 10000), "not applied in time");
    cr_assert_eq(p.status, 0);
    /* The callback ran right after apply, before any later entry: the result
     * pointer it got was still this entry's. */
    cr_assert_eq(p.res.revision, p.req.index);
    cr_assert_eq(p.applied_at_cb, p.req.index);
    return p.res;
}

Test(state_snapshot, three_raft_servers_converge_and_a_lagging_one_catches_up_by_snapshot)
{
    cr_assert_eq(raft_fixture_initialize(&F), 0);
    for (int i = 0; i < N_SERVERS; i++) {
        sth_make_tmpdir(fdirs[i]);
        FS[i] = sth_open_state_in(fdirs[i], NULL);
        state_fsm_init(&FSM[i], FS[i], &F.servers[i].raft);
        cr_assert_eq(raft_fixture_grow(&F, &FSM[i]), 0);
        raft_set_snapshot_threshold(raft_fixture_get(&F, i), 8);
        raft_set_snapshot_trailing(raft_fixture_get(&F, i), 4);
    }
    struct raft_configuration conf;
    cr_assert_eq(raft_fixture_configuration(&F, N_SERVERS, &conf), 0);
    cr_assert_eq(raft_fixture_bootstrap(&F, &conf), 0);
    raft_configuration_close(&conf);
    cr_assert_eq(raft_fixture_start(&F), 0);
    cr_assert(raft_fixture_step_until_has_leader(&F, 10000));
    unsigned leader = raft_fixture_leader_index(&F);
    cr_assert_lt(leader, N_SERVERS);
    unsigned lagger = (leader + 2) % N_SERVERS;

    struct rp_buf res;
    char name[16], rid[16];
    raft_index last = 0;
    for (int i = 0; i < 5; i++) {
        snprintf(name, sizeof name, "n%d", i);
        snprintf(rid, sizeof rid, "a%d", i);
        sth_make_res(&res, "node", name, 0, NULL, "v1");
        struct state_result r =
            propose(leader, (struct state_cmd){.op = "create", .rid = rid}, &res);
        cr_assert_eq(r.code, 0, "%s", r.message);
        last = r.revision;
        rp_buf_free(&res);
    }
    /* A failure travels back too. */
    sth_make_res(&res, "node", "n0", 0, NULL, "v2");
    struct state_result r = propose(leader, (struct state_cmd){.op = "create", .rid = "dup"}, &res);
    cr_assert_eq(r.code, RP_EEXISTS);
    last = r.revision;
    rp_buf_free(&res);
    cr_assert(raft_fixture_step_until_applied(&F, N_SERVERS, last, 10000));
    for (int i = 0; i < N_SERVERS; i++)
        assert_same(FS[leader], FS[i]);

    /* One server goes away while the others apply far past the snapshot
     * threshold, so the log it would need is gone. */
    raft_fixture_kill(&F, lagger);
    for (int i = 0; i < 40; i++) {
        snprintf(name, sizeof name, "m%d", i % 7);
        snprintf(rid, sizeof rid, "b%d", i);
        sth_make_res(&res, "node", name, 0, NULL, rid);
        r = propose(leader, (struct state_cmd){.op = "put", .rid = rid}, &res);
        cr_assert_eq(r.code, 0, "%s", r.message);
        last = r.revision;
        rp_buf_free(&res);
    }
    cr_assert_eq(raft_fixture_n_recv(&F, lagger, RAFT_IO_INSTALL_SNAPSHOT), 0);
    raft_fixture_revive(&F, lagger);
    cr_assert(raft_fixture_step_until_applied(&F, lagger, last, 30000), "lagger did not catch up");
    cr_assert_geq(raft_fixture_n_recv(&F, lagger, RAFT_IO_INSTALL_SNAPSHOT), 1,
                  "caught up through a snapshot");
    cr_assert(raft_fixture_step_until_applied(&F, N_SERVERS, last, 10000));
    for (int i = 0; i < N_SERVERS; i++)
        assert_same(FS[leader], FS[i]);
    cr_assert_eq(sth_count(FS[lagger], "node", "m"), 7);
    for (int i = 0; i < N_SERVERS; i++)
        cr_assert_not_null(FSM[i].snapshot_async, "server %d: async snapshots on", i);

    raft_fixture_close(&F);
    for (int i = 0; i < N_SERVERS; i++) {
        state_close(FS[i]);
        sth_remove_tree(fdirs[i]);
    }
}

/* ---- A real libuv node: snapshot, restart, replay ------------------------ */

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <uv.h>
#include <raft/uv.h>

struct uv_node {
    uv_loop_t loop;
    struct raft_uv_transport transport;
    struct raft_io io;
    struct raft raft;
    struct raft_fsm fsm;
    struct state *s;
    bool closed;
};

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t l = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void uv_node_start(struct uv_node *n, const char *raft_dir, struct state *s,
                          const char *addr, bool bootstrap)
{
    memset(n, 0, sizeof *n);
    n->s = s;
    cr_assert_eq(uv_loop_init(&n->loop), 0);
    cr_assert_eq(raft_uv_tcp_init(&n->transport, &n->loop), 0);
    cr_assert_eq(raft_uv_init(&n->io, &n->loop, raft_dir, &n->transport), 0);
    state_fsm_init(&n->fsm, s, &n->raft);
    int rv = raft_init(&n->raft, &n->io, &n->fsm, 1, addr);
    cr_assert_eq(rv, 0, "raft_init: %s", raft_errmsg(&n->raft));
    raft_set_election_timeout(&n->raft, 150);
    raft_set_heartbeat_timeout(&n->raft, 30);
    raft_set_snapshot_threshold(&n->raft, 8);
    raft_set_snapshot_trailing(&n->raft, 8);
    if (bootstrap) {
        struct raft_configuration conf;
        raft_configuration_init(&conf);
        cr_assert_eq(raft_configuration_add(&conf, 1, addr, RAFT_VOTER), 0);
        cr_assert_eq(raft_bootstrap(&n->raft, &conf), 0);
        raft_configuration_close(&conf);
    }
    rv = raft_start(&n->raft);
    cr_assert_eq(rv, 0, "raft_start: %s (%s)", raft_strerror(rv), raft_errmsg(&n->raft));
}

/* Runs the loop until @done(arg) or ~10 s. */
static bool uv_node_run_until(struct uv_node *n, bool (*done)(struct uv_node *, void *), void *arg)
{
    for (int i = 0; i < 10000; i++) {
        if (done(n, arg))
            return true;
        uv_run(&n->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    return done(n, arg);
}

static bool is_leader(struct uv_node *n, void *arg)
{
    (void)arg;
    return raft_state(&n->raft) == RAFT_LEADER;
}

struct uv_apply {
    struct raft_apply req;
    struct uv_node *n;
    bool done;
    int status;
    struct state_result res;
    uint64_t applied_at_cb;
};

static void uv_apply_cb(struct raft_apply *req, int status, void *result)
{
    struct uv_apply *a = req->data;
    a->done = true;
    a->status = status;
    a->applied_at_cb = state_applied_index(a->n->s);
    if (status == 0)
        a->res = *(const struct state_result *)result;
}

static bool apply_done(struct uv_node *n, void *arg)
{
    (void)n;
    return ((struct uv_apply *)arg)->done;
}

static struct state_result uv_node_put(struct uv_node *n, int i)
{
    struct rp_buf res, cmd;
    char name[16], rid[16];
    snprintf(name, sizeof name, "k%d", i % 5);
    snprintf(rid, sizeof rid, "u%d", i);
    sth_make_res(&res, "node", name, i % 3 ? 0 : 1000 + (uint64_t)i, NULL, rid);
    sth_encode(&cmd, (struct state_cmd){.op = "put", .rid = rid}, &res);
    struct uv_apply a = {.n = n};
    a.req.data = &a;
    /* libraft 0.15 needs entry lengths that are multiples of 8 (state.h). */
    size_t padded = STATE_ENTRY_LEN(cmd.len);
    struct raft_buffer buf = {.base = raft_calloc(1, padded), .len = padded};
    memcpy(buf.base, cmd.data, cmd.len);
    rp_buf_free(&cmd);
    rp_buf_free(&res);
    cr_assert_eq(raft_apply(&n->raft, &a.req, &buf, 1, uv_apply_cb), 0);
    cr_assert(uv_node_run_until(n, apply_done, &a), "apply %d timed out", i);
    cr_assert_eq(a.status, 0);
    cr_assert_eq(a.res.code, 0, "%s", a.res.message);
    cr_assert_eq(a.res.revision, a.req.index);
    cr_assert_eq(a.applied_at_cb, a.req.index, "callback right after apply");
    return a.res;
}

static bool snapshot_written(struct uv_node *n, void *arg)
{
    return n->raft.log.snapshot.last_index >= *(raft_index *)arg &&
           n->raft.snapshot.pending.term == 0;
}

static void close_cb(struct raft *r)
{
    struct uv_node *n = (struct uv_node *)((char *)r - offsetof(struct uv_node, raft));
    n->closed = true;
}

static bool is_closed(struct uv_node *n, void *arg)
{
    (void)arg;
    return n->closed;
}

static void uv_node_stop(struct uv_node *n)
{
    raft_close(&n->raft, close_cb);
    cr_assert(uv_node_run_until(n, is_closed, NULL));
    raft_uv_close(&n->io);
    raft_uv_tcp_close(&n->transport);
    uv_run(&n->loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(&n->loop), 0);
}

static bool applied_reaches(struct uv_node *n, void *arg)
{
    return state_applied_index(n->s) >= *(uint64_t *)arg;
}

/* Restarts the node on @s and waits until it has re-applied up to @applied. */
static void barrier_cb(struct raft_barrier *req, int status)
{
    *(int *)req->data = status == 0 ? 1 : -1;
}

static bool barrier_done(struct uv_node *n, void *arg)
{
    (void)n;
    return *(int *)arg != 0;
}

static void restart_and_compare(const char *raft_dir, struct state *s, const char *addr,
                                uint64_t applied, const struct rp_buf *want)
{
    static struct uv_node n;
    static struct raft_barrier b;
    int done = 0;
    uv_node_start(&n, raft_dir, s, addr, false);
    /* As raft/node.c does: 0.15 commits older entries only once the new leader
     * commits one of its own term. */
    cr_assert(uv_node_run_until(&n, is_leader, NULL), "no leader after restart");
    b.data = &done;
    cr_assert_eq(raft_barrier(&n.raft, &b, barrier_cb), 0);
    cr_assert(uv_node_run_until(&n, barrier_done, &done));
    cr_assert_eq(done, 1);
    cr_assert(uv_node_run_until(&n, applied_reaches, &applied), "replay stopped at %llu",
              (unsigned long long)state_applied_index(s));
    struct rp_buf got;
    sth_dump(s, &got);
    cr_assert_eq(got.len, want->len);
    cr_assert_eq(memcmp(got.data, want->data, got.len), 0);
    rp_buf_free(&got);
    uv_node_stop(&n);
}

Test(state_snapshot, a_libuv_node_snapshots_async_and_rebuilds_the_state_on_restart)
{
    static struct uv_node n;
    char raft_dir[64], addr[32];
    sth_make_tmpdir(raft_dir);
    snprintf(addr, sizeof addr, "127.0.0.1:%d", free_port());
    uv_node_start(&n, raft_dir, sth_state, addr, true);
    cr_assert(uv_node_run_until(&n, is_leader, NULL), "no leader");
    struct state_result r = {0};
    for (int i = 0; i < 30; i++)
        r = uv_node_put(&n, i);
    cr_assert_not_null(n.fsm.snapshot_async, "raft_uv has async_work: async snapshots on");
    raft_index want_snap = 16;
    cr_assert(uv_node_run_until(&n, snapshot_written, &want_snap), "no snapshot written");
    uint64_t applied = state_applied_index(sth_state);
    cr_assert_eq(applied, r.revision);
    struct rp_buf want;
    sth_dump(sth_state, &want);
    uv_node_stop(&n);

    /* 1. Same LMDB: restore puts it back to the snapshot, the log replays the rest. */
    restart_and_compare(raft_dir, sth_state, addr, applied, &want);

    /* 2. LMDB gone (as after a machine crash): snapshot + log rebuild it. */
    state_close(sth_state);
    sth_remove_tree(sth_tmpdir);
    sth_state = sth_open_state_in(sth_tmpdir, NULL);
    cr_assert_eq(state_applied_index(sth_state), 0);
    restart_and_compare(raft_dir, sth_state, addr, applied, &want);

    rp_buf_free(&want);
    sth_remove_tree(raft_dir);
}
