/* raft/rp_raft.h: the consensus layer.
 *
 * Wraps libraft 0.15 and its libuv I/O behind a small blocking API that any
 * thread may call. One loop thread owns the struct raft; every other thread
 * reaches it through a queue woken by uv_async_send.
 *
 * Peer traffic uses rp_raft_tls_transport: TLS 1.3, both sides' certificates
 * checked against the cluster CA, and the peer must carry the Auth system role.
 * Knows nothing of LMDB, users or the auth API: the state machine arrives as a
 * struct raft_fsm. */
#ifndef RP_RAFT_H
#define RP_RAFT_H

#include <openssl/ssl.h>
#include <raft.h>
#include <raft/uv.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

/* ---- Transport -------------------------------------------------------- */

/* A struct raft_uv_transport whose connections are mutually authenticated TLS.
 * @server_ctx / @client_ctx come from lib/tls (rp_tls_server_ctx with
 * require_client = 1, rp_tls_client_ctx with this server's identity); the
 * transport takes a reference on each. Addresses are "ip:port". After the
 * handshake the transport checks that the peer certificate carries RP_ROLE_AUTH
 * in O and refuses the connection (logged with the peer address and the reason)
 * otherwise; no byte of a refused connection reaches libraft. */
/*
 * Call on the thread that runs @loop, before raft_uv_init(). Both directions check
 * the peer: the connecting side checks the server's certificate too. The inbound
 * side also reads a preamble (our own, bounded: magic, version, raft id, address)
 * and hands libraft the peer's claimed id and address only once everything above
 * passed. Handshakes run on one small thread per connection under a deadline
 * (default 5 s); the loop thread never does TLS. The thread running @loop must
 * have SIGPIPE blocked or ignored (rp_node's loop thread does).
 * Returns 0, RP_EINVAL or RP_ENOMEM/RP_EIO. */
int rp_raft_tls_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, SSL_CTX *server_ctx,
                               SSL_CTX *client_ctx);
/* Releases the transport, like raft_uv_tcp_close(): call once raft_close()'s
 * callback has run (raft closes the transport through its close method first).
 * If it was never closed that way, this closes it and the memory is released
 * while @loop runs on; keep @t alive until then. */
void rp_raft_tls_transport_close(struct raft_uv_transport *t);

/* Optional extra check of a peer, run on the transport's connection thread after
 * the certificate chain and the Auth role have been verified, and before any
 * byte reaches libraft. @inbound: the peer connected to us and claims @raft_id and
 * @address in its preamble; otherwise we connected to @raft_id at @address.
 * Returns 0 to accept, or a negative RP_E* code with rp_err() set to refuse (the
 * message is logged). Use it to bind raft ids to certificate names. Set it before
 * the node starts. */
struct rp_identity;
typedef int (*rp_raft_peer_check_fn)(void *arg, const struct rp_identity *peer, uint64_t raft_id,
                                     const char *address, bool inbound);
void rp_raft_tls_transport_set_peer_check(struct raft_uv_transport *t, rp_raft_peer_check_fn fn,
                                          void *arg);
/* Listen on @address ("ip:port", e.g. "0.0.0.0:3030") instead of the advertised
 * address given to raft_init. Call before raft_start. */
int rp_raft_tls_transport_set_bind_address(struct raft_uv_transport *t, const char *address);
/* Deadline for connect + TLS handshake + preamble of one connection (default 5000 ms). */
void rp_raft_tls_transport_set_handshake_timeout(struct raft_uv_transport *t, unsigned ms);

/* The preamble an inbound peer sends after the TLS handshake (the format is in
 * raft/transport_tls.c) holds the first bytes of a peer that Raftport parses; they are
 * parsed by these pure functions, which tests and fuzzers call directly. The transport
 * reads RP_RAFT_PREAMBLE_HEAD_LEN bytes, checks them with rp_raft_preamble_head (which
 * says how many address bytes follow), reads those and checks them with
 * rp_raft_preamble_addr. */
#define RP_RAFT_PREAMBLE_HEAD_LEN 16
#define RP_RAFT_PREAMBLE_ADDR_MAX 255
/* Checks magic, version and the claimed raft id (neither 0 nor @self_id) and sets *@id
 * and *@addr_len (1..RP_RAFT_PREAMBLE_ADDR_MAX). RP_EPROTO naming the bad field. */
int rp_raft_preamble_head(const uint8_t head[RP_RAFT_PREAMBLE_HEAD_LEN], uint64_t self_id,
                          uint64_t *id, size_t *addr_len);
/* Checks the @n address bytes at @p (printable ASCII, "host:port" or "[v6]:port", port
 * 1..65535) and copies them NUL-terminated into @addr. RP_EPROTO otherwise (@addr is
 * then ""). */
int rp_raft_preamble_addr(const uint8_t *p, size_t n, char addr[RP_RAFT_PREAMBLE_ADDR_MAX + 1]);

/* Counters since init; readable from any thread. */
struct rp_raft_transport_stats {
    uint64_t accepted;       /* inbound connections handed to libraft */
    uint64_t refused;        /* inbound connections refused (TLS, identity, preamble, limits) */
    uint64_t connected;      /* outbound connections handed to libraft */
    uint64_t connect_failed; /* outbound attempts that failed or were refused */
};
void rp_raft_tls_transport_stats(struct raft_uv_transport *t, struct rp_raft_transport_stats *out);

/* ---- Node --------------------------------------------------------------- */

struct rp_node;

/* Group commit: apply requests queued together (rp_node_apply_grouped with a
 * non-zero key) become one entry. The loop puts requests with distinct keys
 * together (up to max_members and max_bytes of commands) and appends the group at
 * once while fewer than 2 grouped entries are in flight, else when one of them is
 * done: the group holds what arrived during a commit. A command above max_bytes
 * goes alone, in a lane of its own with one entry in flight at most, so small
 * writes wait behind one large entry at most. libraft's disk I/O writes entries
 * appended together with one write and sync. The FSM decodes the group and
 * returns one result per member. */
struct rp_node_grouping {
    /* Builds one entry from @n (>= 2) commands (their bytes as given, unpadded)
     * into *@entry, raft_malloc'd and padded to a multiple of 8. 0 or RP_E*. */
    int (*encode)(void *arg, const struct raft_buffer *cmds, unsigned n, struct raft_buffer *entry);
    /* The FSM result for member @i, given the entry's FSM result (loop thread, inside
     * the raft_apply callback). */
    void *(*member_result)(void *arg, void *fsm_result, unsigned i);
    void *arg;
    unsigned max_members; /* >= 2 */
    size_t max_bytes;     /* commands in one group, in bytes */
};

struct rp_node_config {
    uint64_t id;         /* > 0 */
    const char *address; /* Raft peer address "ip:port" (listen and advertise) */
    const char *dir;     /* directory for raft segments (must exist) */
    unsigned election_timeout_ms;
    unsigned heartbeat_timeout_ms;
    unsigned snapshot_threshold;
    unsigned snapshot_trailing;
    SSL_CTX *server_ctx;
    SSL_CTX *client_ctx;
    bool bootstrap; /* pristine dir: bootstrap a cluster of one (ignored if not pristine) */
    /* Called once, before raft_init, with the node's (not yet initialised) struct raft,
     * so the caller can build an FSM bound to it (state_fsm_init reads r->last_applied
     * during apply). Must return a struct raft_fsm that outlives the node. */
    struct raft_fsm *(*make_fsm)(void *arg, struct raft *r);
    void *make_fsm_arg;
    /* Optional: see rp_raft_tls_transport_set_peer_check (NULL: Auth role suffices). */
    rp_raft_peer_check_fn peer_check;
    void *peer_check_arg;
    /* Optional (NULL: every apply is its own entry); copied at start. */
    const struct rp_node_grouping *grouping;
};

/* Starts the node on its own loop thread and returns once raft_start has run.
 * After election the leader issues a barrier; status.ready is false until it
 * completes. A leader also runs the membership reconciler (every 300 ms): a spare
 * becomes a standby at once (replicated to, no vote), and a standby becomes a
 * voter once it has answered recently and is within 128 entries of the log (libraft
 * then runs its catch-up rounds), so an unreachable server never joins the quorum
 * and never blocks other changes. One change at a time, retried on failure, each
 * step logged. RP_EINVAL for a bad config (message says which field), else the
 * error of the step that failed. Pre-vote is on; catch-up is raised to 100 rounds
 * of up to 50 s. */
/* ---- Open segments (raft/segments.c) ------------------------------------ */

/* What a scan of one libraft open segment found. torn: the file ends before a
 * batch, a batch header or the zeros after the last batch do (libraft 0.15
 * aborts on such a file); complete_end: the offset just past the last complete
 * batch (8 when there is none). */
struct rp_segment_scan {
    uint64_t complete_end;
    uint64_t batches, entries;
    bool torn;
};
int rp_raft_segment_scan(int fd, uint64_t size, struct rp_segment_scan *out);

/* Cuts every torn open segment in @dir back to its last complete batch and
 * zero-fills it, logging what was dropped. rp_node_start calls it. */
int rp_raft_repair_open_segments(const char *dir);

int rp_node_start(struct rp_node **out, const struct rp_node_config *cfg);

/* Graceful stop: if leader and another voter exists, transfers leadership first
 * (to a voter heard from recently and up to date; bounded by twice the election
 * timeout), then closes raft and joins the loop thread. Callers still waiting get
 * RP_ECLOSED (or RP_EUNKNOWN for writes already submitted). Call once; @n is freed. */
void rp_node_stop(struct rp_node *n);

/* The calls below block and may be made from any thread except the node's own
 * loop thread (FSM callbacks, copy_result), where they fail with RP_EINVAL. */

/* Proposes @len bytes (copied) and waits up to @timeout_ms (<= 0: no deadline)
 * for the entry to be applied locally. On success returns 0 and copies what the FSM
 * returned through @copy_result(arg, fsm_result) on the loop thread (@copy_result
 * may be NULL; it is not called once the caller has given up, so @arg may live on
 * the caller's stack). Errors: RP_ENOTLEADER (not submitted: safe to send
 * elsewhere; also while a leadership transfer runs), RP_EUNKNOWN (submitted, then
 * leadership was lost or the deadline passed: the entry may still commit),
 * RP_ECLOSED when stopping. The entry is padded with zero bytes to a multiple of
 * 8 (a libraft 0.15 segment quirk): the FSM must ignore trailing zero bytes. */
int rp_node_apply(struct rp_node *n, const void *buf, size_t len, int timeout_ms,
                  void (*copy_result)(void *arg, void *fsm_result), void *arg);
/* rp_node_apply, and on success also the term in which this server appended the
 * entry as leader and saw it commit (@term_out may be NULL). */
int rp_node_apply_term(struct rp_node *n, const void *buf, size_t len, int timeout_ms,
                       void (*copy_result)(void *arg, void *fsm_result), void *arg,
                       uint64_t *term_out);

/* rp_node_apply_term for a command that may share an entry with others (group
 * commit, see struct rp_node_grouping): @group_key 0 never shares; commands with
 * equal keys never share one entry. Without grouping configured, the same as
 * rp_node_apply_term. @copy_result receives the member's own result. */
int rp_node_apply_grouped(struct rp_node *n, const void *buf, size_t len, uint64_t group_key,
                          int timeout_ms, void (*copy_result)(void *arg, void *fsm_result),
                          void *arg, uint64_t *term_out);

/* The term of this server's leadership once its post-election barrier has applied
 * (every entry committed before the election is then applied here), else 0. Cheap
 * and possibly stale: a read of local state made after this returned T is
 * linearizable once an entry this server appended in term T commits (see
 * rp_node_apply_term), because a newer leader could only have committed anything
 * after a majority had moved past T, and that majority would refuse the entry. */
uint64_t rp_node_read_term(struct rp_node *n);

/* Linearizable read fence: returns 0 once this server is leader and a barrier
 * issued after the call has been applied locally (concurrent callers share one
 * barrier; callers arriving while one is in flight wait for the next). Before the
 * post-election barrier has applied, callers wait for it and the next one.
 * RP_ENOTLEADER (not leader, transfer running, or leadership lost before the
 * barrier applied), RP_ETIMEDOUT (deadline; <= 0: none), RP_ECLOSED when stopping,
 * RP_EUNKNOWN for any other failure. */
int rp_node_barrier(struct rp_node *n, int timeout_ms);

/* Membership (leader only, else RP_ENOTLEADER). add puts @id in as a spare; the
 * reconciler promotes it once it is reachable. RP_EBUSY while another change is in
 * flight (the reconciler's promotions included: retry), RP_EEXISTS if the id or
 * address is already a member, RP_EINVAL for id 0 or an address that is not
 * host:port under 64 bytes. Both return once the new configuration has committed;
 * RP_EUNKNOWN if leadership was lost or the deadline passed first (the change may
 * still take effect). remove: RP_ENOTFOUND if @id is not a member; removing the
 * leader itself makes it step down once committed. */
int rp_node_add(struct rp_node *n, uint64_t id, const char *address, int timeout_ms);
int rp_node_remove(struct rp_node *n, uint64_t id, int timeout_ms);
/* Transfers leadership to @id (0 = any up-to-date voter); waits for the outcome:
 * 0 once this server no longer leads, RP_ETIMEDOUT if libraft gave up (after an
 * election timeout) or the deadline passed, RP_ENOTFOUND if @id is not another
 * voter (or, for 0, there is none), RP_EBUSY if a transfer is running. */
int rp_node_transfer(struct rp_node *n, uint64_t id, int timeout_ms);

enum rp_member_role { RP_MEMBER_VOTER, RP_MEMBER_STANDBY, RP_MEMBER_SPARE };

struct rp_member {
    uint64_t id;
    char address[64];
    enum rp_member_role role;
    uint64_t match_index; /* leader's view of replication (0 when not leader) */
};

#define RP_MAX_MEMBERS 16

struct rp_node_status {
    uint64_t id;
    int state;  /* RAFT_UNAVAILABLE, RAFT_FOLLOWER, RAFT_CANDIDATE, RAFT_LEADER */
    bool ready; /* leader whose post-election barrier has applied */
    uint64_t term;
    uint64_t leader_id; /* 0 if unknown */
    char leader_address[64];
    uint64_t commit_index;
    uint64_t last_applied;
    uint64_t last_index;
    uint64_t snapshot_index;
    unsigned n_members;
    struct rp_member members[RP_MAX_MEMBERS];
};

/* A consistent copy taken on the loop thread (waits up to 5 s for it).
 * RP_ECLOSED when stopping, RP_ETIMEDOUT if the loop did not answer. */
int rp_node_status(struct rp_node *n, struct rp_node_status *out);

bool rp_node_is_leader(struct rp_node *n);     /* cheap, possibly stale */
uint64_t rp_node_leader_id(struct rp_node *n); /* the same: who leads, 0 if unknown */

/* Counters of the node's peer transport (any thread, while the node runs). */
void rp_node_transport_stats(struct rp_node *n, struct rp_raft_transport_stats *out);

const char *rp_raft_state_name(int state); /* "leader", "follower", "candidate", "unavailable" */
const char *rp_member_role_name(enum rp_member_role role); /* "voter", "standby", "spare" */

#endif
