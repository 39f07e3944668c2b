/* state/fsm.c: the glue that lets libraft 0.15 drive the state machine.
 *
 * apply: libraft applies entries in index order and advances last_applied only
 * after apply returns (src/replication.c, replicationApply/applyCommand), so the
 * entry's index is raft_last_applied(r) + 1. Barriers and configuration changes
 * never reach us, which is why the stored applied index may trail raft's.
 *
 * The result: in 0.15 applyCommand calls fsm->apply and then, synchronously and
 * before the next entry is applied, the leader's raft_apply callback with the
 * result pointer. So a pointer to one struct owned by the state (overwritten by
 * the next apply) is enough, and the callback copies it. (Later libraft versions
 * queue the callbacks; moving to one of them means returning an allocated copy.)
 *
 * Snapshots (FSM version 3): snapshot() runs on the loop and only pins an LMDB
 * read transaction; snapshot_async() serialises it on a thread-pool thread while
 * the loop keeps applying; snapshot_finalize() back on the loop frees the buffer
 * and ends the transaction, whether or not the snapshot was written.
 *
 * Turning async on. libraft 0.15's raft_uv_init and its fixture set
 * io->version = 1 while implementing io->async_work, and raft_init rejects an FSM
 * with snapshot_async unless io->version >= 2 ("async snapshot requires
 * io->version > 1 and async_work method"). So state_fsm_init leaves
 * snapshot_async NULL, and the first apply (raft is initialised by then, and it
 * is on the loop thread, never inside a snapshot) sets it when the io has
 * async_work. libraft reads fsm->snapshot_async in takeSnapshot each time it
 * snapshots, so the choice holds from the next snapshot on. While it is NULL,
 * snapshot() does the whole job itself (raft treats the FSM as synchronous). The
 * mode never changes between a snapshot() and the matching finalize. */
#define STATE_INTERNAL
#include "state/state.h"

#include "lib/errors.h"
#include "lib/log.h"

static int raft_code(int rv)
{
    switch (rv) {
    case RP_ENOMEM:
        return RAFT_NOMEM;
    case RP_ENOSPC:
        return RAFT_NOSPACE;
    case RP_EINVAL:
        return RAFT_MALFORMED;
    default:
        return RAFT_IOERR;
    }
}

static int fsm_snapshot_async(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs);

/* libraft keeps in memory every entry since its last snapshot, and snapshot_trailing
 * entries before it, both counted in entries: with 1 MiB entries the defaults (8192
 * and 8192) are 16 GiB per member. Once the entries applied since the last snapshot
 * hold LOG_BYTES_BUDGET, the threshold drops to 1 so that libraft snapshots after
 * this apply, and that snapshot keeps as many trailing entries as hold the same
 * budget at the average entry size (at least MIN_TRAILING). The next snapshot
 * restores both settings. libraft reads them when it decides to snapshot and when
 * the snapshot completes, on this thread. */
#define LOG_BYTES_BUDGET ((uint64_t)512 << 20)
#define MIN_TRAILING 64

static void log_budget_note(struct state *s, size_t len)
{
    struct raft *r = s->raft;
    if (s->cfg_threshold == 0) {
        s->cfg_threshold = r->snapshot.threshold;
        s->cfg_trailing = r->snapshot.trailing;
    }
    s->log_bytes += len;
    s->log_entries++;
    if (s->log_budget_hit || s->log_bytes < LOG_BYTES_BUDGET)
        return;
    s->log_budget_hit = true;
    uint64_t keep = LOG_BYTES_BUDGET / (s->log_bytes / s->log_entries + 1);
    if (keep < MIN_TRAILING)
        keep = MIN_TRAILING;
    if (keep > s->cfg_trailing)
        keep = s->cfg_trailing;
    rp_info("state",
            "%llu MiB of entries since the last snapshot: snapshotting now, keeping %llu "
            "trailing entries",
            (unsigned long long)(s->log_bytes >> 20), (unsigned long long)keep);
    raft_set_snapshot_threshold(r, 1);
    raft_set_snapshot_trailing(r, (unsigned)keep);
}

/* A snapshot starts: count afresh, and put back what log_budget_note lowered (the
 * trailing setting only after this snapshot, which it was lowered for). */
static void log_budget_reset(struct state *s)
{
    if (s->cfg_threshold == 0)
        return;
    if (s->log_budget_hit)
        raft_set_snapshot_threshold(s->raft, s->cfg_threshold);
    else
        raft_set_snapshot_trailing(s->raft, s->cfg_trailing);
    s->log_budget_hit = false;
    s->log_bytes = 0;
    s->log_entries = 0;
}

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct state *s = fsm->data;
    if (!s->async_checked) {
        s->async_checked = true;
        if (s->raft->io != NULL && s->raft->io->async_work != NULL)
            fsm->snapshot_async = fsm_snapshot_async;
    }
    uint64_t index = raft_last_applied(s->raft) + 1;
    size_t len = state__unpad(buf->base, buf->len);
    int rv = state_apply(s, index, buf->base, len, &s->last_result);
    if (rv != 0) {
        /* Raft keeps the entry and retries it at the next commit. */
        rp_error("state", "applying entry %llu: %s (will retry)", (unsigned long long)index,
                 rp_errmsg());
        return raft_code(rv);
    }
    log_budget_note(s, buf->len);
    *result = &s->last_result;
    return 0;
}

static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[],
                                 unsigned *n_bufs);

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct state *s = fsm->data;
    *bufs = NULL;
    *n_bufs = 0;
    if (s->snap_txn != NULL)
        return RAFT_BUSY;
    log_budget_reset(s);
    int rc = mdb_txn_begin(s->env, NULL, MDB_RDONLY, &s->snap_txn);
    if (rc != 0) {
        s->snap_txn = NULL;
        rp_error("state", "snapshot: %s", mdb_strerror(rc));
        return RAFT_IOERR;
    }
    /* The recordings as of the same applied index (both pinned between applies). */
    if (state__rec_snap_pin(s) != 0) {
        rp_error("state", "snapshot: %s", rp_errmsg());
        mdb_txn_abort(s->snap_txn);
        s->snap_txn = NULL;
        return RAFT_IOERR;
    }
    if (fsm->snapshot_async != NULL)
        return 0;
    /* Synchronous mode: the buffers are expected now. */
    int rv = fsm_snapshot_async(fsm, bufs, n_bufs);
    if (rv != 0)
        fsm_snapshot_finalize(fsm, bufs, n_bufs);
    return rv;
}

static int fsm_snapshot_async(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct state *s = fsm->data;
    void *data;
    size_t len;
    if (s->snap_txn == NULL)
        return RAFT_INVALID;
    int rv = state__snapshot_encode(s, s->snap_txn, &data, &len);
    /* Released here, not at finalize: growing the recordings map waits for it. */
    state__rec_snap_release(s);
    if (rv != 0) {
        rp_error("state", "snapshot: %s", rp_errmsg());
        return raft_code(rv);
    }
    struct raft_buffer *b = raft_malloc(sizeof *b);
    if (b == NULL) {
        raft_free(data);
        return RAFT_NOMEM;
    }
    b->base = data;
    b->len = len;
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

static int fsm_snapshot_finalize(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct state *s = fsm->data;
    if (*bufs != NULL) {
        for (unsigned i = 0; i < *n_bufs; i++)
            raft_free((*bufs)[i].base);
        raft_free(*bufs);
    }
    *bufs = NULL;
    *n_bufs = 0;
    if (s->snap_txn != NULL) {
        mdb_txn_abort(s->snap_txn);
        s->snap_txn = NULL;
    }
    state__rec_snap_release(s);
    return 0;
}

/* On success the buffer is ours to raft_free; on failure raft frees it. */
static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct state *s = fsm->data;
    int rv = state__snapshot_restore(s, buf->base, buf->len);
    if (rv != 0) {
        rp_error("state", "restoring a snapshot of %zu bytes: %s", buf->len, rp_errmsg());
        return raft_code(rv);
    }
    rp_info("state", "restored a snapshot of %zu bytes at applied index %llu", buf->len,
            (unsigned long long)state_applied_index(s));
    raft_free(buf->base);
    return 0;
}

void state_fsm_init(struct raft_fsm *fsm, struct state *s, struct raft *r)
{
    s->raft = r;
    s->async_checked = false;
    fsm->version = 3;
    fsm->data = s;
    fsm->apply = fsm_apply;
    fsm->snapshot = fsm_snapshot;
    fsm->restore = fsm_restore;
    fsm->snapshot_finalize = fsm_snapshot_finalize;
    fsm->snapshot_async = NULL; /* see the top of this file */
}
