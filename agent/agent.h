/* agent/agent.h: the node agent (`raftport start --roles=node`).
 *
 * The agent joins the cluster once with a token (agent/join.c), then on every start:
 * loads its identity from data_dir, opens its cache (agent/cache.h), follows auth
 * through a watch stream (agent/follow.c), heartbeats its presence (agent/presence.c),
 * renews its certificates, and runs the SSH server and the recorder. SIGTERM/SIGINT
 * stop it in the reverse order.
 *
 * data_dir (0700):
 *   host_uuid                      this node's host id (UUID v4)
 *   keys/ (0700)                   every file 0600
 *     node.key, node.crt           the X.509 identity (system role Node; in a proxy's
 *                                  data_dir the same files hold its Proxy identity)
 *     ca.crt                       the cluster TLS CA
 *     ssh_host_key                 the SSH host key (OpenSSH format, Ed25519)
 *     ssh_host_key.pub             its public line
 *     ssh_host_key-cert.pub        its certificate, signed by the host CA
 *     user_ca.pub, host_ca.pub     the SSH CA public keys (authorized_keys lines)
 *     cluster_name
 *   cache                          agent/cache.h
 *   spool/                         the recorder's (agent/recorder.h) */
#ifndef RP_AGENT_AGENT_H
#define RP_AGENT_AGENT_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/cache.h"
#include "lib/config.h"
#include "lib/tls.h"

struct auth_client;

#define AGENT_KEYS_DIR "keys"
/* The longest a follower waits between attempts to reach auth (tests wait for this). */
#define AGENT_MAX_BACKOFF_MS 60000

/* Runs the node agent of @cfg (validated) until SIGTERM or SIGINT. Returns the process
 * exit code; on failure it has printed one line to stderr saying why. */
int agent_main(const struct rp_config *cfg, const char *version);

/* ---- what the agent hands the SSH server and the recorder (agent/agent.c) --------------- */

/* Audit events on their way to auth (agent/events.c), for the agent and the proxy: a
 * queue of at most 10,000 events drained by a thread of its own that calls
 * emit_events with @id's identity on @addrs (borrowed until stop), backing off with
 * jitter while auth is away. @who tags its log lines. */
struct agent_events;
struct agent_ident;
int agent_events_start(struct agent_events **out, const char *who, struct agent_ident *id,
                       const char *const *addrs, size_t n_addrs);
/* Sends what is queued (one more try), then stops the sender. NULL is fine. */
void agent_events_stop(struct agent_events *s);
/* The audit sink of agent/sshd.h (arg: a struct agent_events): queues one event (a
 * msgpack map of at most 64 KiB) for emit_events; never blocks on auth. Thread-safe. */
int agent_emit(void *arg, const void *event, size_t len);
/* The upload function of agent/recorder.h (arg: the agent): one rec_put. */
int agent_upload(void *arg, const char *sid, uint64_t seq, const void *data, size_t len, bool last,
                 const void *meta, size_t meta_len);

/* When to renew certificates valid [@tls_after, @tls_before) and [@ssh_after,
 * @ssh_before) (ms; a pair with before <= after is ignored): at 2/3 of the shorter
 * lifetime, moved by up to +-1/30 of it by @draw (a random number), so that nodes that
 * joined together do not renew together. */
uint64_t agent_renew_time(uint64_t tls_after, uint64_t tls_before, uint64_t ssh_after,
                          uint64_t ssh_before, uint64_t draw);

/* ---- identity (agent/join.c) --------------------------------------------------------- */

/* The node's credentials. Replaced whole on renewal; readers take the mutex. */
struct agent_ident {
    pthread_mutex_t mu;
    char data_dir[1024];
    char host_id[40];
    char cluster_name[256];
    char *ssh_pub;  /* "ssh-ed25519 AAAA..." */
    char *ssh_cert; /* "ssh-ed25519-cert-v01@openssh.com AAAA..." */
    SSL_CTX *ctx;   /* client context with node.crt/key and ca.crt */
    uint64_t tls_not_before_ms, tls_not_after_ms;
    uint64_t ssh_valid_after_ms, ssh_valid_before_ms;
    uint64_t generation;      /* bumped by each renewal */
    enum rp_system_role role; /* RP_SYS_NODE, or RP_SYS_PROXY for a proxy */
    /* Proxy mode (teleport.proxy_server): ctx offers ALPN "teleport-auth@" so that the
     * proxy passes every auth connection through to auth. */
    bool via_proxy;
};

/* Ensures @cfg->data_dir holds a joined identity (joining with the token if it does
 * not yet) and loads it into @id. One clear message in rp_errmsg() on failure. */
int agent_ident_init(struct agent_ident *id, const struct rp_config *cfg);
/* The same for the system role @role (RP_SYS_NODE or RP_SYS_PROXY): a proxy joins with
 * a proxy token, and asks for its names (localhost, 127.0.0.1, the hosts of its public
 * and listening addresses) as SSH principals and X.509 SANs. */
int agent_ident_init_as(struct agent_ident *id, const struct rp_config *cfg,
                        enum rp_system_role role);
void agent_ident_free(struct agent_ident *id);
/* A reference to the current TLS context (SSL_CTX_free it) and its generation. */
SSL_CTX *agent_ident_ctx(struct agent_ident *id, uint64_t *generation);
/* Copies of the SSH public and certificate lines (free them). */
int agent_ident_ssh_lines(struct agent_ident *id, char **pub, char **cert);
/* Path of a file under data_dir/keys into @out. */
void agent_key_path(const char *data_dir, const char *file, char *out, size_t outlen);
/* Re-issues the host certificates through renew_host with the same keys, stores them
 * and swaps them in. */
int agent_ident_renew(struct agent_ident *id, const struct rp_config *cfg, struct auth_client *c);

/* The version rule of a proxy or agent (@what: "proxy", "node") towards an auth server
 * of @auth_version (lib/version.h): 0 when they are compatible, or when @skip (a
 * warning is logged then); else RP_EPROTO saying what to upgrade or which flag runs
 * anyway. */
int agent_version_gate(const char *what, const char *auth_version, bool skip);

/* ---- following auth (agent/follow.c) ------------------------------------------------- */

struct agent_follow;
int agent_follow_start(struct agent_follow **out, struct agent_cache *cache, struct agent_ident *id,
                       const char *const *addrs, size_t n_addrs, uint64_t max_backoff_ms);
/* The same, following @kinds (a list that outlives the follower; each kept by the
 * cache, agent_cache_kind_ok). */
int agent_follow_start_kinds(struct agent_follow **out, struct agent_cache *cache,
                             struct agent_ident *id, const char *const *addrs, size_t n_addrs,
                             uint64_t max_backoff_ms, const char *const *kinds, size_t n_kinds);
/* What a proxy follows: node, proxy, user, role, cert_authority, lock, cluster_name. */
#define AGENT_FOLLOW_PROXY_N_KINDS 7
extern const char *const agent_follow_proxy_kinds[AGENT_FOLLOW_PROXY_N_KINDS];
void agent_follow_stop(struct agent_follow *f); /* NULL is fine */

/* ---- presence (agent/presence.c) ----------------------------------------------------- */

struct agent_presence;
int agent_presence_start(struct agent_presence **out, const struct rp_config *cfg,
                         struct agent_ident *id, struct agent_cache *cache, const char *version);
/* Asks for a heartbeat now (labels or certificates changed). */
void agent_presence_kick(struct agent_presence *p);
void agent_presence_stop(struct agent_presence *p); /* NULL is fine */

#endif
