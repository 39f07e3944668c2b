/* tests/lib/raft_helpers.h: test clusters of rp_node on 127.0.0.1 with real
 * certificates, temp dirs and a counting state machine. */
#ifndef RP_TEST_RAFT_HELPERS_H
#define RP_TEST_RAFT_HELPERS_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "raft/rp_raft.h"

/* ---- PKI ------------------------------------------------------------------ */

struct rt_pki {
    EVP_PKEY *ca_key;
    X509 *ca;
};

void rt_pki_new(struct rt_pki *p, const char *cluster);
void rt_pki_free(struct rt_pki *p);
/* A fresh key and certificate for @name carrying @role (O), signed by @p. */
void rt_pki_issue(struct rt_pki *p, const char *name, const char *role, EVP_PKEY **key,
                  X509 **cert);
/* Mutual-TLS server and client contexts for @name/@role under @p (caller frees). */
void rt_pki_contexts(struct rt_pki *p, const char *name, const char *role, SSL_CTX **server,
                     SSL_CTX **client);

/* ---- environment ------------------------------------------------------------ */

/* A TCP port on 127.0.0.1 that was free a moment ago. */
int rt_free_port(void);
/* mkdtemp under /tmp; rt_rmtree removes it. */
char *rt_tmpdir(const char *tag);
void rt_rmtree(const char *path);
/* Polls @cond every 10 ms until it holds or @timeout_ms passes. */
bool rt_wait(bool (*cond)(void *arg), void *arg, int timeout_ms);
uint64_t rt_now_ms(void);

/* ---- counting FSM ------------------------------------------------------------ */

/* Each command is a little-endian u64 v: count += 1, sum += v; the apply result is
 * the new count. Snapshots hold (count, sum). */
struct rt_fsm {
    struct raft_fsm fsm;
    pthread_mutex_t mu;
    uint64_t count;
    uint64_t sum;
    uint64_t result;
    uint64_t snapshots;
    uint64_t restores;
    uint64_t last_restored_count;
    size_t pad; /* extra patterned bytes per snapshot (checked on restore) */
};

void rt_fsm_init(struct rt_fsm *f);
void rt_fsm_reset(struct rt_fsm *f);
void rt_fsm_close(struct rt_fsm *f);
void rt_fsm_read(struct rt_fsm *f, uint64_t *count, uint64_t *sum);
struct raft_fsm *rt_make_fsm(void *arg, struct raft *r);
/* copy_result for rp_node_apply: @arg is a uint64_t*. */
void rt_copy_u64(void *arg, void *fsm_result);
int rt_apply_u64(struct rp_node *n, uint64_t v, int timeout_ms, uint64_t *result);

/* ---- clusters ----------------------------------------------------------------- */

#define RT_MAX_NODES 5

struct rt_node {
    struct rp_node *node;
    uint64_t id;
    char addr[64];
    char dir[256];
    struct rt_fsm fsm;
    SSL_CTX *server_ctx;
    SSL_CTX *client_ctx;
};

struct rt_cluster {
    struct rt_pki pki;
    char *root;
    unsigned n;
    struct rt_node nodes[RT_MAX_NODES];
    unsigned election_ms;
    unsigned heartbeat_ms;
    unsigned threshold;
    unsigned trailing;
    rp_raft_peer_check_fn peer_check; /* passed to every node started */
    void *peer_check_arg;
};

/* A peer check binding raft ids to certificates: the peer's CN must be
 * "node-<raft id>". */
int rt_check_cn_is_node_id(void *arg, const struct rp_identity *peer, uint64_t raft_id,
                           const char *address, bool inbound);

/* Ports, dirs, certificates (CN node-<id>, O Auth) for @n nodes with ids 1..n;
 * none started. Timeouts default to 600/60 ms, snapshots to 64/128. */
void rt_cluster_init(struct rt_cluster *c, unsigned n, const char *cluster_name);
int rt_node_start(struct rt_cluster *c, unsigned i, bool bootstrap);
void rt_node_stop(struct rt_cluster *c, unsigned i);
/* Stops every running node, frees everything, removes the dirs. */
void rt_cluster_destroy(struct rt_cluster *c);

/* Index of the node that is a ready leader (status.ready), or -1 after @timeout_ms. */
int rt_wait_leader(struct rt_cluster *c, int timeout_ms);
/* Adds node @i through @leader, retrying while RP_EBUSY, then waits until the
 * leader reports it as a voter. Returns 0 or the last error. */
int rt_add_voter(struct rt_cluster *c, unsigned leader, unsigned i, int timeout_ms);
/* Waits until every running node's FSM reports @count. */
bool rt_wait_count(struct rt_cluster *c, uint64_t count, int timeout_ms);

#endif
