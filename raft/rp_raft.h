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
int rp_raft_tls_transport_init(struct raft_uv_transport *t, uv_loop_t *loop, SSL_CTX *server_ctx,
                               SSL_CTX *client_ctx);
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

struct rp_node_config {
    uint64_t id;                 /* > 0 */
    const char *address;         /* Raft peer address "ip:port" (listen and advertise) */
    const char *dir;             /* directory for raft segments (must exist) */
    unsigned election_timeout_ms;
    unsigned heartbeat_timeout_ms;
    unsigned snapshot_threshold;
    unsigned snapshot_trailing;
    SSL_CTX *server_ctx;
    SSL_CTX *client_ctx;
    bool bootstrap;              /* pristine dir: bootstrap a cluster of one (ignored if not pristine) */
    /* Called once, before raft_init, with the node's (not yet initialised) struct raft,
     * so the caller can build an FSM bound to it (state_fsm_init reads r->last_applied
     * during apply). Must return a struct raft_fsm that outlives the node. */
    struct raft_fsm *(*make_fsm)(void *arg, struct raft *r);
    void *make_fsm_arg;
    /* Optional: see rp_raft_tls_transport_set_peer_check (NULL: Auth role suffices). */
    rp_raft_peer_check_fn peer_check;
    void *peer_check_arg;
};

/* Starts the node on its own loop thread and returns once raft_start has run.
 * After election the leader issues a barrier; rp_node_is_ready_leader() is false
 * until it completes. A leader also runs the membership reconciler: any spare
 * is promoted to voter (catch-up first), one change at a time, retried on failure. */
int rp_node_start(struct rp_node **out, const struct rp_node_config *cfg);

/* Graceful stop: if leader and another voter exists, transfers leadership first
 * (bounded by the election timeout), then closes raft and joins the loop thread. */
void rp_node_stop(struct rp_node *n);

/* Proposes @len bytes (copied) and waits up to @timeout_ms for the entry to be
 * applied locally. On success returns 0 and copies what the FSM returned through
 * @copy_result(arg, fsm_result) on the loop thread. Errors: RP_ENOTLEADER (not
 * submitted: safe to send elsewhere), RP_EUNKNOWN (submitted, then leadership was
 * lost or the deadline passed: the entry may still commit), RP_ECLOSED when stopping. */
int rp_node_apply(struct rp_node *n, const void *buf, size_t len, int timeout_ms,
                  void (*copy_result)(void *arg, void *fsm_result), void *arg);

/* Linearizable read fence: returns 0 once this server is leader and a barrier
 * issued after the call has been applied locally (concurrent callers share one
 * barrier). RP_ENOTLEADER, RP_ETIMEDOUT, RP_EUNKNOWN otherwise. */
int rp_node_barrier(struct rp_node *n, int timeout_ms);

/* Membership (leader only, else RP_ENOTLEADER). add puts @id in as a spare; the
 * reconciler promotes it once it is reachable. RP_EBUSY while another change is in
 * flight, RP_EEXISTS if the id or address is already a member. */
int rp_node_add(struct rp_node *n, uint64_t id, const char *address, int timeout_ms);
int rp_node_remove(struct rp_node *n, uint64_t id, int timeout_ms);
/* Transfers leadership to @id (0 = any up-to-date voter); waits for the outcome. */
int rp_node_transfer(struct rp_node *n, uint64_t id, int timeout_ms);

enum rp_member_role { RP_MEMBER_VOTER, RP_MEMBER_STANDBY, RP_MEMBER_SPARE };

struct rp_member {
    uint64_t id;
    char address[64];
    enum rp_member_role role;
    uint64_t match_index;   /* leader's view of replication (0 when not leader) */
};

#define RP_MAX_MEMBERS 16

struct rp_node_status {
    uint64_t id;
    int state;              /* RAFT_UNAVAILABLE, RAFT_FOLLOWER, RAFT_CANDIDATE, RAFT_LEADER */
    bool ready;             /* leader whose post-election barrier has applied */
    uint64_t term;
    uint64_t leader_id;     /* 0 if unknown */
    char leader_address[64];
    uint64_t commit_index;
    uint64_t last_applied;
    uint64_t last_index;
    uint64_t snapshot_index;
    unsigned n_members;
    struct rp_member members[RP_MAX_MEMBERS];
};

/* A consistent copy taken on the loop thread. */
int rp_node_status(struct rp_node *n, struct rp_node_status *out);

bool rp_node_is_leader(struct rp_node *n); /* cheap, possibly stale */

/* Counters of the node's peer transport (any thread). */
void rp_node_transport_stats(struct rp_node *n, struct rp_raft_transport_stats *out);

const char *rp_raft_state_name(int state); /* "leader", "follower", "candidate", "unavailable" */
const char *rp_member_role_name(enum rp_member_role role); /* "voter", "standby", "spare" */

#endif
