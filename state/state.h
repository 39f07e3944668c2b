/* state/state.h: the replicated state machine.
 *
 * Resources live in one LMDB environment that only the state machine writes.
 * A resource is a msgpack map in Teleport's shape:
 *
 *   { "kind": str, "version": str,
 *     "metadata": { "name": str, "labels": {str: str}, "expires": u64 ms (0/absent = never),
 *                   "revision": u64 },
 *     "spec": any }
 *
 * The state layer reads kind, name, expires and sets revision; it treats spec
 * as opaque. A command is a msgpack map carried in one Raft log entry:
 *
 *   { "op": "put" | "create" | "update" | "cas" | "delete" | "cdelete" | "batch" | "expire"
 *           | "audit" | "audit_trim" | "rec_put" | "rec_trim",
 *     "rid": str,            client request id, 1..64 bytes (required except for expire)
 *     "res": resource,       put, create, update, cas
 *     "kind": str, "name": str,   delete, cdelete
 *     "rev": u64,            expected revision for cas and cdelete
 *     "ops": [command...],   batch: put/create/update/cas/delete/cdelete without rid,
 *                            all applied or none
 *     "before": u64 ms,      expire: delete everything whose expires is in (0, before);
 *                            audit_trim: drop audit events with time < before
 *     "events": [event...],  audit: append events to the audit log (state/audit.c):
 *                            maps with "event" (type), "code", "uid", "time" (u64 ms > 0),
 *                            optional "user" and "sid" (indexed), any other fields
 *     "rec": map }           rec_put, rec_trim: a session recording chunk, or a trim of
 *                            the recordings store (see "Session recordings" below);
 *                            rid optional
 *
 *   { "op": "group", "ops": [command...] }   group commit: 1..STATE_MAX_GROUP
 *                            independent put/create/update/cas/delete/cdelete commands,
 *                            each with its own rid, applied in order in the entry's one
 *                            transaction. Each gets its own result (state_group_result):
 *                            a failing or malformed member changes nothing and fails
 *                            alone; its neighbours apply. All share the entry's index as
 *                            their revision, so a member whose resource an earlier member
 *                            of the same group already changed fails with RP_ECONFLICT
 *                            (two versions must never share a revision); the proposer
 *                            never groups two writes of one resource (state_command_key).
 *
 * The revision of a change is the Raft index of the entry that made it. A
 * retried command (same rid) returns the first result and changes nothing.
 * Apply never reads the clock: time enters only as the "before" field.
 *
 * Precise rules (what apply and state_command_check enforce):
 *   - A command map holds only the fields its op uses; any other field, a
 *     duplicate key or a field of the wrong type makes it RP_EINVAL.
 *   - kind: 1..63 bytes of [a-z0-9_]. name: 1..255 bytes, no NUL or other
 *     control byte (< 0x20, 0x7f). rid: 1..64 bytes, same byte rule as name.
 *   - res: a map with "kind" (str), "metadata" (map) with "name" (str); optional
 *     "version" (str, 1..32 bytes), "metadata.labels" (map str -> str, at most
 *     STATE_MAX_LABELS), "metadata.expires" and "metadata.revision" (non-negative
 *     integers; nil = absent). Other fields are kept as they are. The stored copy
 *     has metadata.revision set to the revision of the change.
 *   - put writes; create fails with RP_EEXISTS if present; update fails with
 *     RP_ENOTFOUND if absent; delete fails with RP_ENOTFOUND if absent.
 *   - cas: "rev" is required. rev == 0 means "must be absent" (a create that
 *     reports RP_ECONFLICT, not RP_EEXISTS, when present). rev > 0 means "must be
 *     stored at exactly this revision": RP_ENOTFOUND if absent, RP_ECONFLICT if
 *     stored at another revision.
 *   - cdelete: "rev" is required and >= 1; RP_ENOTFOUND if absent, RP_ECONFLICT
 *     if stored at another revision.
 *   - batch: 1..STATE_MAX_BATCH ops, no rid inside, no nested batch, no expire.
 *     Ops run in order, each seeing the effect of the ones before it.
 *   - expire: deletes every resource with 0 < expires < before; rid optional.
 *   - The whole command is at most STATE_MAX_COMMAND bytes.
 *   - Request ids are remembered (with the result) for rid_keep revisions:
 *     a command with a rid seen at revision r is a retry while its own index is
 *     < r + rid_keep. Every result is remembered, failures included, except
 *     RP_EINVAL for a malformed command. rid_keep must be the same on every
 *     server of a cluster (it decides what is stored, so also snapshot bytes).
 *
 * Threading: state_apply and the raft FSM callbacks run on the Raft loop thread;
 * reads (state_get, state_list), watches and command encoding are safe from any
 * thread (LMDB read transactions, MDB_NOTLS).
 *
 * Memory: every pointer argument is borrowed for the duration of the call unless
 * its comment says otherwise; functions that fill a struct rp_buf append to it. */
#ifndef RP_STATE_H
#define RP_STATE_H

#include <raft.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Limits enforced on every command. */
#define STATE_MAX_COMMAND (16u << 20) /* bytes in one command (one Raft entry) */
#define STATE_MAX_BATCH 1024          /* ops in one batch */
#define STATE_MAX_AUDIT 1024          /* events in one audit command */
#define STATE_MAX_GROUP 1024          /* members of one group */
#define STATE_MAX_LABELS 256          /* labels on one resource */
#define STATE_RID_MAX 64              /* bytes in a request id */
#define STATE_KIND_MAX 63
#define STATE_NAME_MAX 255

struct state;

struct state_opts {
    size_t map_size;          /* the most the environment may hold (max_map_size); 0 = 8 GiB. It is
                                 reserved as address space only: the file grows with the data, so
                                 the map never needs remapping (see store.c) */
    unsigned watch_queue_len; /* events a watcher may fall behind by; 0 = 4096 */
    unsigned event_ring_len;  /* recent events kept for resuming watches; 0 = 8192 */
    unsigned rid_keep;        /* request ids remembered for this many revisions; 0 = 100000 */
    /* The recordings store (dir/recordings, see "Session recordings"): its LMDB map
     * starts at rec_map_size and doubles when full, up to rec_map_max. Local: they
     * decide nothing another server must agree with. */
    size_t rec_map_size; /* 0 = 64 MiB */
    size_t rec_map_max;  /* 0 = STATE_REC_DEFAULT_MAP_MAX */
};

/* Opens (creating if needed) the environment in directory @dir (@opts may be NULL
 * for the defaults). The caller owns *@out and frees it with state_close. Files
 * are created 0600. If the machine went down (not just the process) while the
 * environment was open, its contents are discarded at open: they were written
 * without fsync, and Raft restores them from its snapshot and log (see store.c). */
int state_open(struct state **out, const char *dir, const struct state_opts *opts);
/* Syncs and closes. Every watch must have been closed first, and no snapshot may
 * be in flight (raft closed). */
void state_close(struct state *s);

/* Outcome of one command. For batch, failed_op is the index of the first op
 * that failed (code != 0) and nothing was changed. */
struct state_result {
    int code; /* 0, RP_EEXISTS, RP_ENOTFOUND, RP_ECONFLICT, RP_EINVAL */
    uint64_t
        revision; /* revision the command produced (or, on failure, the index it was applied at) */
    uint64_t current_rev; /* on RP_ECONFLICT, RP_EEXISTS: the revision stored (0 if absent) */
    uint32_t failed_op;   /* batch only */
    uint32_t n_changed;   /* resources written or deleted */
    char message[160];    /* human-readable detail on failure */
};

/* Applies the command @cmd at Raft index @index. Never fails for a bad command:
 * a malformed or failing command yields res->code != 0 and changes no resource
 * (only the applied index, and for a failing command with a rid, the result
 * remembered under it). Returns non-zero only on an LMDB error (disk) or when out of
 * memory, in which case nothing is committed. Deterministic: same commands, same
 * indexes, same bytes. An @index at or below the applied index is not applied
 * again: @res gets the result remembered under the command's rid if there is one,
 * else code 0 with a message saying it was skipped. @cmd is borrowed; @res is
 * filled in full. Loop thread only (one writer). */
int state_apply(struct state *s, uint64_t index, const void *cmd, size_t len,
                struct state_result *res);

/* Fills @fsm (version 3) to drive @s from raft @r: apply takes the entry index as
 * r->last_applied + 1; *result points to a struct state_result owned by @s that
 * is valid only until the next apply (the apply callback runs synchronously right
 * after, so it copies it). Snapshots pin an LMDB read transaction on the loop
 * thread and serialise it on a thread-pool thread; restore replaces the contents
 * in one write transaction. @fsm, @s and @r must outlive raft; @r need not be
 * initialised yet. One FSM per state.
 *
 * libraft 0.15 quirk: raft_uv_init (and the test fixture) set io->version = 1
 * although they implement async_work, and raft_init refuses an FSM whose
 * snapshot_async is set unless io->version >= 2. So @fsm starts without
 * snapshot_async (raft_init accepts it with any io) and the first apply turns it
 * on when r->io->async_work exists. Until then, or with an io without it,
 * snapshots are serialised on the loop thread: slower, same bytes.
 *
 * Second 0.15 quirk: libraft's segment files are only read back correctly when
 * every entry's length is a multiple of 8 (canonical/raft#180, #304; seen here
 * too: unpadded entries, snapshot, restart -> raft_start fails with "load closed
 * segment ...: entries batch 2 ...: short read"). So whoever calls raft_apply
 * must pad the command with zero bytes to a multiple of 8 (STATE_ENTRY_LEN), and
 * this FSM's apply strips that padding before state_apply. */
#define STATE_ENTRY_LEN(len) (((len) + 7) / 8 * 8)
void state_fsm_init(struct raft_fsm *fsm, struct state *s, struct raft *r);

/* Room for a command of @len bytes: RP_ENOSPC (the message names the ceiling)
 * when the pages in use plus twice @len plus a reserve (1/16 of the map, at most
 * 64 MiB) exceed the map size. Proposers check before proposing, so that a full
 * map is refused with a clear error instead of failing apply (which Raft would
 * retry for ever). Any thread. */
int state_space_check(struct state *s, size_t len);

/* Highest index applied (0 if none). */
uint64_t state_applied_index(struct state *s);
/* The index of the last applied entry that changed a resource (audit entries do not;
 * a snapshot install counts as a change). It is stored after that entry's changes are
 * readable and before its proposer is answered, so a cache computed from reads made
 * after this returned R is current for as long as this still returns R. */
uint64_t state_resources_changed(struct state *s);

/* Reads. @rev_out (may be NULL) receives the applied index the read transaction saw.
 * state_get appends the stored resource (msgpack) to @out; RP_ENOTFOUND if absent,
 * RP_EINVAL for a malformed kind or name. */
int state_get(struct state *s, const char *kind, const char *name, struct rp_buf *out,
              uint64_t *rev_out);
/* Calls @cb for each resource of @kind (all kinds if NULL) whose name starts with
 * @prefix (NULL = all), in name order, at most @limit (0 = no limit); @cb returning
 * non-zero stops the walk and that value is returned. With @kind NULL the order is
 * by kind, then name. @res passed to @cb points into the database and is valid
 * only during the call. */
typedef int (*state_list_cb)(void *arg, const void *res, size_t len);
int state_list(struct state *s, const char *kind, const char *prefix, unsigned limit,
               state_list_cb cb, void *arg, uint64_t *rev_out);
/* As state_list for one @kind, restricted to names n with @from <= n < @to (byte
 * order; either may be NULL for no bound). */
int state_list_range(struct state *s, const char *kind, const char *prefix, const char *from,
                     const char *to, unsigned limit, state_list_cb cb, void *arg,
                     uint64_t *rev_out);

/* The audit log (state/audit.c). Events with from_ms <= time < to_ms (to_ms 0: no
 * bound) and, for each filter given, that field equal to it; oldest first unless
 * newest_first; at most @limit (0: all). @cb gets each event as stored (msgpack). */
struct state_audit_query {
    uint64_t from_ms, to_ms;
    const char *type, *user, *sid; /* NULL: any */
    unsigned limit;
    bool newest_first;
};
int state_audit_query(struct state *s, const struct state_audit_query *q, state_list_cb cb,
                      void *arg, uint64_t *rev_out);

/* Earliest "expires" among stored resources (0 if none expire). */
int state_next_expiry(struct state *s, uint64_t *expires_ms);

/* Structural check of a resource; fills the borrowed pointers (they point into
 * @res). Message (rp_errmsg) names the field. */
struct state_res_meta {
    const char *kind;
    size_t kind_len;
    const char *name;
    size_t name_len;
    uint64_t expires;
    uint64_t revision;
};
int state_resource_check(const void *res, size_t len, struct state_res_meta *meta);

/* Full validation of a command (what apply would accept), without applying it. */
int state_command_check(const void *cmd, size_t len);

/* ---- Session recordings (state/recstore.c) ------------------------------ */

/* Recordings of SSH sessions live in a second LMDB environment, dir/recordings,
 * so bulk data never grows the resource map. They change only through two
 * commands, applied on the same path as every other command:
 *
 *   rec_put  "rec": { "sid": str (UUID), "seq": u64 < STATE_REC_MAX_SEQ,
 *                     "server_id": str (the uploading host), "data": bin (one
 *                     compressed chunk, 1..STATE_REC_MAX_CHUNK bytes, opaque here),
 *                     "last": bool, "meta": map (seq 0 only, see struct
 *                     state_rec_meta), "dur": u64 ms (offset of the chunk's last
 *                     event from the start), "now": u64 ms (the leader's clock),
 *                     "keep_ms": u64 (retention), "max_bytes": u64 (budget) }
 *   rec_trim "rec": { "now", "keep_ms", "max_bytes" }
 *
 * Both enforce retention and budget with the values the command carries, never a
 * local clock or setting, so every member drops the same recordings: those that
 * started before now - keep_ms, then, oldest start first, as many as it takes for
 * the stored bytes (compressed chunks) to fit max_bytes. rec_put never evicts the
 * recording it adds to.
 *
 * rec_put outcomes (state_result): code 0 with n_changed 1 (stored) or 0 (that
 * (sid, seq) was stored before: nothing changes); RP_EDENIED when another host
 * started the recording; RP_EINVAL for a chunk past the last one; RP_ENOSPC when
 * the chunk does not fit max_bytes even alone, or the map is at rec_map_max. The
 * last one is the only local outcome (it depends on this member's disk layout):
 * the member logs it and Raft carries on without the chunk there. */
#define STATE_REC_MAX_SEQ 1000000u
#define STATE_REC_MAX_CHUNK (1u << 20)
#define STATE_REC_SID_LEN 36
#define STATE_REC_DEFAULT_MAP_MAX ((size_t)8 << 30)
#define STATE_REC_TEXT_MAX 255     /* user, login, hostname */
#define STATE_REC_COMMAND_MAX 1024 /* meta.command */

/* meta of chunk 0: what the recording is of. */
struct state_rec_meta {
    const char *user, *login, *hostname, *command; /* command may be NULL */
    uint64_t start;                                /* ms since the epoch */
    uint32_t cols, rows;                           /* at most 65535 each */
    bool interactive;
};

struct state_rec_put {
    const char *sid; /* UUID text */
    uint32_t seq;
    const char *server_id; /* 1..63 bytes */
    const void *data;
    size_t len;
    bool last;
    const struct state_rec_meta *meta; /* seq 0 only; may be NULL */
    uint64_t dur_ms;
    uint64_t now_ms, keep_ms, max_bytes;
};
/* Append the rec_put / rec_trim command (no rid) to @out. RP_EINVAL for a field
 * the command check would refuse, RP_ENOMEM. */
int state_rec_put_encode(const struct state_rec_put *p, struct rp_buf *out);
int state_rec_trim_encode(uint64_t now_ms, uint64_t keep_ms, uint64_t max_bytes,
                          struct rp_buf *out);

/* True for a UUID in its 36-character text form (either case). */
bool state_rec_sid_ok(const char *sid, size_t n);

/* The index entry of one recording. */
struct state_rec_info {
    char sid[STATE_REC_SID_LEN + 1]; /* lower case */
    char server_id[64];
    char user[STATE_REC_TEXT_MAX + 1], login[STATE_REC_TEXT_MAX + 1];
    char hostname[STATE_REC_TEXT_MAX + 1];
    char command[STATE_REC_COMMAND_MAX + 1];
    bool has_meta;   /* chunk 0 (with meta) is stored */
    uint64_t start;  /* meta.start, or the time of the first chunk stored until then */
    uint64_t dur_ms; /* the latest event offset any stored chunk reported */
    uint64_t last_write;
    uint32_t chunks; /* chunks stored */
    uint64_t bytes;  /* their compressed size */
    bool has_last;   /* the last chunk is stored: last_seq is its seq */
    uint32_t last_seq, max_seq;
    bool complete; /* has_last and every chunk 0..last_seq stored */
    uint32_t cols, rows;
    bool interactive;
};
/* RP_ENOTFOUND if @sid has no recording; RP_EINVAL if it is not a UUID. */
int state_rec_info(struct state *s, const char *sid, struct state_rec_info *out);
/* Calls @cb for each recording that started in [from_ms, to_ms) (to_ms 0: no bound),
 * oldest first, at most @limit (0: all); non-zero from @cb stops and is returned. */
typedef int (*state_rec_cb)(void *arg, const struct state_rec_info *info);
int state_rec_list(struct state *s, uint64_t from_ms, uint64_t to_ms, unsigned limit,
                   state_rec_cb cb, void *arg);
/* Appends chunk @seq of @sid (as uploaded) to @data; @last (may be NULL) says if it
 * is the last. RP_ENOTFOUND if that chunk is not stored. */
int state_rec_chunk(struct state *s, const char *sid, uint32_t seq, struct rp_buf *data,
                    bool *last);
struct state_rec_stats {
    uint64_t recordings, bytes; /* stored recordings, bytes of their chunks */
    uint64_t map_size, map_max, map_used;
};
int state_rec_stats(struct state *s, struct state_rec_stats *out);

/* ---- Group commit ------------------------------------------------------ */

/* state_command_check, and *@key: 0 if the command may not join a group (batch,
 * expire, audit, audit_trim), else a non-zero hash of the resource it targets
 * (kind \0 name): commands with different keys may share a group. */
int state_command_key(const void *cmd, size_t len, uint64_t *key);
/* Builds a group command from @n (2..STATE_MAX_GROUP) commands, each one whole
 * command as checked by state_command_key with a non-zero key, into *@entry: a
 * raft_malloc'd buffer (the caller owns it; raft_apply takes it) padded with zero
 * bytes to STATE_ENTRY_LEN. The commands are borrowed. */
int state_group_encode(const struct raft_buffer *cmds, unsigned n, struct raft_buffer *entry);
/* The result of member @i of the entry whose FSM result is @fsm_result (what
 * the FSM apply of a group hands to raft). For an entry that was not applied as
 * a group (rejected whole, e.g. malformed), the entry's own result. Valid until
 * the next apply: call from the raft_apply callback only. */
const struct state_result *state_group_result(struct state *s, const void *fsm_result, unsigned i);

/* ---- Watches ---------------------------------------------------------- */

enum state_event_type {
    STATE_EV_INIT_PUT = 1, /* one resource of the initial snapshot */
    STATE_EV_INIT_DONE,    /* snapshot complete (or resumed without one); revision = start point */
    STATE_EV_PUT,          /* a resource was written at revision */
    STATE_EV_DELETE,       /* kind/name was deleted at revision */
    STATE_EV_REINIT,       /* watcher fell behind; revision = last one delivered; watch is over */
};

struct state_event {
    enum state_event_type type;
    uint64_t revision; /* INIT_PUT: the resource's revision; see the types above for the rest */
    char kind[64];
    char name[256];
    struct rp_buf res; /* resource bytes for INIT_PUT and PUT (owned by the event) */
};
/* Initialise before the first state_watch_next; free once done. An event may be
 * passed to state_watch_next again: its buffer is reused. */
void state_event_init(struct state_event *ev);
void state_event_free(struct state_event *ev);

struct state_watch_opts {
    const char *const *kinds; /* NULL or n_kinds == 0: every kind */
    size_t n_kinds;
    const char *prefix; /* name prefix, NULL = all */
    uint64_t start_rev; /* 0: init snapshot of the current state. Otherwise resume
                           after start_rev if the recent-event ring still covers it
                           (no INIT_PUTs, just INIT_DONE), else an init snapshot. */
};
struct state_watch;

/* @opts is copied. The caller owns *@out and frees it with state_watch_close.
 * Events come in revision order; the events of one revision (a batch, an expire)
 * come together, in op order. A watcher whose queue overflows gets the events
 * of every revision it received in full, then REINIT with the last of those
 * revisions (the INIT_DONE revision if none), then RP_ECLOSED; it never gets
 * part of a revision. A restore (snapshot install) ends every watch the same way. */
int state_watch_open(struct state *s, const struct state_watch_opts *opts,
                     struct state_watch **out);
/* Waits up to @timeout_ms (-1 forever, 0 = do not wait) for the next event. 0 and
 * fills @ev; RP_ETIMEDOUT; RP_ECLOSED after REINIT has been returned or after
 * state_watch_cancel. One thread at a time per watch. */
int state_watch_next(struct state_watch *w, struct state_event *ev, int timeout_ms);
/* A file descriptor that is readable while an event is ready (for poll()). */
int state_watch_fd(struct state_watch *w);
/* Wakes a blocked state_watch_next with RP_ECLOSED; safe from any thread. */
void state_watch_cancel(struct state_watch *w);
void state_watch_close(struct state_watch *w);

/* ---- Command encoding (for clients of the state machine) -------------- */

/* Appends a command map to @out; fields left NULL/0 are omitted, except "rev",
 * which is always written for cas and cdelete (cas with rev 0 = must be absent).
 * For batch, @ops holds already-encoded sub-commands concatenated, @n_ops of them
 * (so state_cmd_encode of a sub-command can append to the ops buffer). @res must
 * be one msgpack object. Does not check what apply checks: see state_command_check. */
struct state_cmd {
    const char *op;
    const char *rid;
    const void *res;
    size_t res_len;
    const char *kind;
    const char *name;
    uint64_t rev;
    uint64_t before;
    const void *ops;
    size_t ops_len;
    uint32_t n_ops;
    const void *events;
    size_t events_len;
    uint32_t n_events; /* audit: encoded maps back to back */
};
int state_cmd_encode(const struct state_cmd *cmd, struct rp_buf *out);

/* Appends to @out a copy of @res with metadata.revision set to @rev (added at the
 * end of metadata if absent). RP_EINVAL if @res fails state_resource_check. */
int state_resource_with_revision(const void *res, size_t len, uint64_t rev, struct rp_buf *out);

/* ---- Internal: shared by the files of state/ only ----------------------- */
/* Compiled only where STATE_INTERNAL is defined before including this header
 * (the files of state/). Nothing outside state/ may use it. */
#ifdef STATE_INTERNAL
#include <lmdb.h>
#include <msgpack.h>
#include <pthread.h>
#include <stdatomic.h>

/* Named databases of the environment, in snapshot order. */
enum {
    STATE__DB_RES,       /* kind \0 name -> be64 revision, be64 expires, resource msgpack */
    STATE__DB_EXP,       /* be64 expires, kind \0 name -> "" (only expires > 0) */
    STATE__DB_RID,       /* rid -> be64 revision, encoded struct state_result */
    STATE__DB_RIDREV,    /* be64 revision, rid -> "" (to prune request ids by age) */
    STATE__DB_META,      /* "applied_index" -> be64 */
    STATE__DB_AUDIT,     /* be64 time, uid -> audit event (state/audit.c) */
    STATE__DB_AUDIT_IDX, /* 'T'|'U'|'S' value \0 be64 time, uid -> "" */
    STATE__N_DBS
};
extern const char *const state__db_names[STATE__N_DBS];

#define STATE__KEY_MAX (STATE_KIND_MAX + 1 + STATE_NAME_MAX)
#define STATE__VAL_HDR 16 /* be64 revision, be64 expires before the resource bytes */

/* One change, shared by the recent-event ring and the watchers' queues. @refs is
 * only touched under the hub mutex. */
struct state__ev {
    unsigned refs;
    enum state_event_type type; /* STATE_EV_PUT or STATE_EV_DELETE */
    uint64_t revision;
    uint8_t *alloc; /* owned; the resource is alloc[res_off .. res_off + res_len) */
    size_t res_off, res_len;
    uint8_t kind_len;
    uint16_t name_len;
    char key[]; /* kind \0 name \0 */
};

/* Resource bytes the ring of recent events may hold, besides its count: with 1 MiB
 * values its 8192 events held 8 GiB. Older events are dropped first, and a watch
 * resuming from before them starts over from a fresh read, as after the count. A
 * watcher's queue holds at most as many bytes (then it overflows: REINIT). */
#define STATE__RING_BYTES (64u << 20)

struct state__hub {
    pthread_mutex_t mu;
    struct state_watch *watchers; /* doubly linked through prev/next */
    struct state__ev **ring;      /* recent events, oldest at ring_head */
    unsigned ring_cap, ring_head, ring_len;
    size_t ring_bytes;   /* resource bytes the ring's events hold (at most STATE__RING_BYTES) */
    uint64_t ring_floor; /* every event with a revision above this is in the ring */
    uint64_t published;  /* index of the last entry published */
};

struct state {
    MDB_env *env;
    MDB_dbi dbi[STATE__N_DBS];
    struct state_opts opts; /* defaults filled in */
    char *dir;
    _Atomic uint64_t applied;           /* cached meta applied index (written by the loop thread) */
    _Atomic uint64_t resources_changed; /* see state_resources_changed */
    struct raft *raft;                  /* set by state_fsm_init */
    bool async_checked;                 /* fsm.c: snapshot mode decided (first apply) */
    struct state_result last_result;    /* what the FSM apply hands to raft */
    MDB_txn *snap_txn;                  /* read txn pinned by an in-flight snapshot (loop thread) */
    struct state_result *group_res;     /* group: one result per member of the last entry */
    unsigned n_group_res, cap_group_res;
    uint64_t *group_keys; /* group: hashes of the resources changed so far (open addressing) */
    size_t cap_group_keys;
    struct state__ev **pending; /* events of the entry being applied, published after commit */
    size_t n_pending, cap_pending;
    struct state__hub hub;
    struct state__recstore *rec; /* state/recstore.c */
    /* fsm.c: libraft's snapshot settings as configured, and the bytes and entries
     * applied since the last snapshot (loop thread). */
    unsigned cfg_threshold, cfg_trailing;
    uint64_t log_bytes, log_entries;
    bool log_budget_hit;
    int fd;                 /* data.mdb (LMDB's descriptor, not ours to close) */
    uint64_t disk_reserved; /* bytes of data.mdb with blocks allocated (loop thread) */
    atomic_bool disk_short; /* the last allocation failed: writes are refused */
};

enum state__op {
    STATE__OP_PUT = 1,
    STATE__OP_CREATE,
    STATE__OP_UPDATE,
    STATE__OP_CAS,
    STATE__OP_DELETE,
    STATE__OP_CDELETE,
    STATE__OP_BATCH,
    STATE__OP_EXPIRE,
    STATE__OP_AUDIT,
    STATE__OP_AUDIT_TRIM,
    STATE__OP_REC_PUT,
    STATE__OP_REC_TRIM,

    STATE__OP_GROUP,
};

/* A validated command; every pointer borrows from the parsed msgpack object. */
struct state__cmd {
    enum state__op op;
    const char *rid; /* NULL if absent */
    size_t rid_len;
    const msgpack_object *res;    /* put, create, update, cas */
    struct state_res_meta meta;   /* kind/name (and expires for res) of the target */
    uint64_t rev;                 /* cas, cdelete */
    const msgpack_object *ops;    /* batch: array of validated sub-commands; group: members */
    uint64_t before;              /* expire, audit_trim */
    const msgpack_object *events; /* audit */
    const msgpack_object *rec;    /* rec_put, rec_trim */
};

/* state/audit.c */
int state__audit_check(const msgpack_object *events, char *msg, size_t msglen);
int state__audit_apply(struct state *s, MDB_txn *txn, const msgpack_object *events,
                       uint32_t *n_written);
int state__audit_trim(struct state *s, MDB_txn *txn, uint64_t before, uint32_t *n_deleted);
int state__audit_check_record(bool idx, const uint8_t *k, size_t kl, const uint8_t *v, size_t vl);

/* state/recstore.c. open/close: the environment in @dir (state_open, state_close;
 * close syncs). check: the "rec" map of @op (codec). apply: a rec_put or rec_trim at
 * @index, in its own transaction, committed before the caller commits the main one
 * (see the top of recstore.c for why that is safe). */
struct state__recstore;
#define STATE__REC_DIR "recordings"
int state__rec_open(struct state *s, const char *dir);
void state__rec_close(struct state *s);
int state__rec_check(enum state__op op, const msgpack_object *rec, char *msg, size_t msglen);
int state__rec_apply(struct state *s, uint64_t index, const struct state__cmd *c,
                     struct state_result *res);
/* Snapshots: pin a read transaction of the recordings beside the main one (loop
 * thread), release it (any thread; idempotent). The section written after the main
 * snapshot: its size, then the bytes (exactly that many, from the pinned txn, or a
 * fresh one when none is pinned). split: the recordings section at the end of a
 * snapshot, if any (*@rec NULL: none, an older snapshot). check validates all of it;
 * restore replaces the store with it (NULL: empty), after check. */
int state__rec_snap_pin(struct state *s);
void state__rec_snap_release(struct state *s);
int state__rec_snapshot_size(struct state *s, size_t *len);
int state__rec_snapshot_write(struct state *s, uint8_t *p, size_t len);
int state__rec_snapshot_split(const uint8_t *buf, size_t len, size_t *main_len, const uint8_t **rec,
                              size_t *rec_len);
int state__rec_snapshot_check(const uint8_t *rec, size_t len);
int state__rec_snapshot_restore(struct state *s, const uint8_t *rec, size_t len);

bool state__kind_ok(const char *kind, size_t n);
bool state__name_ok(const char *name, size_t n);
/* Validates @o as a command (sub-command of a batch if @in_batch). 0, or RP_EINVAL
 * with a message naming the field written to @msg. */
int state__cmd_parse(const msgpack_object *o, bool in_batch, struct state__cmd *c, char *msg,
                     size_t msglen);
int state__res_check(const msgpack_object *res, struct state_res_meta *meta, char *msg,
                     size_t msglen);
/* Appends @res re-encoded with metadata.revision = @rev. */
int state__res_pack(struct rp_buf *b, const msgpack_object *res, uint64_t rev);
/* Writes kind \0 name into @key (STATE__KEY_MAX bytes); returns its length. */
size_t state__res_key(uint8_t *key, const char *kind, size_t kind_len, const char *name,
                      size_t name_len);
/* Splits a resources key; false if it is not kind \0 name with both valid. */
bool state__split_key(const uint8_t *key, size_t len, const char **kind, size_t *kind_len,
                      const char **name, size_t *name_len);

/* The group key of a validated single-resource command (see state_command_key). */
uint64_t state__cmd_key(const struct state__cmd *c);

/* The length of the command in a Raft entry of @len bytes: the entry may end
 * with up to 7 zero bytes of padding (see state_fsm_init). Exactly one length in
 * [len - 7, len] can hold one whole msgpack object, so the answer is unique;
 * @len when none does (the parse then reports the problem). */
size_t state__unpad(const uint8_t *p, size_t len);

/* Encoded result kept per request id (after the be64 revision). */
int state__result_encode(const struct state_result *r, struct rp_buf *b);
int state__result_decode(const uint8_t *p, size_t n, uint64_t revision, struct state_result *r);

void state__put_be64(uint8_t *p, uint64_t v);
uint64_t state__get_be64(const uint8_t *p);
/* Re-raises this thread's error message as @code, prefixed by the formatted
 * @fmt ("prefix: message"); rp_err(code, "%s", rp_errmsg()) would format a
 * buffer into itself. */
int state__err_prefix(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* state_space_check for any environment of state/ (the resources, the recordings):
 * RP_ENOSPC naming the configuration @setting that raises the ceiling. */
int state__env_space_check(MDB_env *env, size_t len, const char *setting);
/* Allocates the blocks of data.mdb up to the last page in use + @extra + a margin
 * (see state/store.c, "Size"), so that no store into the map meets a hole when the
 * disk is full. 0, RP_ENOSPC or RP_EIO (and state_space_check then refuses writes). */
int state__disk_reserve(struct state *s, uint64_t extra);
/* Maps an LMDB return code to RP_ENOSPC/RP_ENOMEM/RP_EIO with a message. */
int state__lmdb_err(int rc, const char *what);
/* Reads the applied index stored in @txn (0 if none). */
int state__read_applied(struct state *s, MDB_txn *txn, uint64_t *out);

/* Events. state__ev_new takes ownership of @alloc (freed on failure too). */
struct state__ev *state__ev_new(enum state_event_type type, uint64_t revision, const char *kind,
                                size_t kind_len, const char *name, size_t name_len, uint8_t *alloc,
                                size_t res_off, size_t res_len);
void state__ev_free(struct state__ev *ev);
int state__hub_init(struct state__hub *h, unsigned ring_cap, uint64_t applied);
void state__hub_close(struct state__hub *h);
/* Publishes @n events of entry @index (ownership moves to the hub). */
void state__hub_publish(struct state *s, struct state__ev **evs, size_t n, uint64_t index);
/* After a restore: forget the ring, end every watch with REINIT. */
void state__hub_reset(struct state *s, uint64_t applied);

/* Snapshots. encode: serialises every database of @txn into a raft_malloc'd buffer.
 * restore: validates all of @buf first, then replaces the contents in one write txn;
 * on error nothing changed. Neither takes ownership of @buf. */
int state__snapshot_encode(struct state *s, MDB_txn *txn, void **out, size_t *len);
int state__snapshot_restore(struct state *s, const void *buf, size_t len);
#endif /* STATE_INTERNAL */

#endif
