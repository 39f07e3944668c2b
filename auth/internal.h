/* auth/internal.h: what the files of auth/ share; not part of the public API. */
#ifndef RP_AUTH_INTERNAL_H
#define RP_AUTH_INTERNAL_H

#include <msgpack.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#include "auth/auth.h"
#include "auth/listener.h"
#include "lib/conn.h"
#include "lib/mp.h"
#include "lib/tls.h"
#include "raft/rp_raft.h"
#include "state/state.h"
#include "lib/version.h"

#define AUTH_VERSION rp_version_self()
#define AUTH_APPLY_TIMEOUT_MS 10000
#define AUTH_READ_TIMEOUT_MS 5000
#define AUTH_IDLE_TIMEOUT_MS 300000
/* Host identities (Auth, Node, Proxy) live long and are cut off by a lock on their host
 * id; the local admin identity tctl uses lives auth_service.admin_identity_ttl (8h) and
 * its server renews it. */
#define AUTH_HOST_TTL_S (10L * 365 * 86400)
/* A host's SSH certificate from join and renew_host: a year (agents renew well before). */
#define AUTH_HOST_SSH_TTL_MS (365ull * 24 * 3600 * 1000)
/* Extra SSH principals a host may ask for (names or addresses it is reached by). */
#define AUTH_HOST_MAX_EXTRA 32

/* This server's keys and certificates, as kept in data_dir/keys. */
struct auth_identity {
    char host_id[64];
    char cluster_name[256];
    char ca_pin[80];
    X509 *ca_cert;
    char *ca_pem; /* ca_cert as PEM, for the answers that carry it */
    X509 *host_cert;
    EVP_PKEY *host_key;
    EVP_PKEY *ca_key_pending; /* bootstrap only: CA key not yet written to the state */
    bool bootstrapped_here;
};

/* Connections a follower keeps to the leader (auth/forward.c). */
#define AUTH_FWD_POOL 8

struct auth_fwd_pool;
struct auth_ca_cache;
struct auth_role_cache;
struct auth_issue_cache;
struct auth_presence;

struct auth_server {
    const struct rp_config *cfg;
    char data_dir[1024];
    struct auth_identity id;
    SSL_CTX *api_ctx;      /* server side of the API: client certs optional */
    SSL_CTX *raft_srv_ctx; /* server side of Raft peers: client certs required */
    SSL_CTX *peer_ctx;     /* client side towards other auth servers (our Auth identity) */
    struct state *state;
    struct raft_fsm *fsm;
    struct rp_node *node;
    struct auth_listener *api; /* the API port (auth/listener.c) */
    pthread_t duty_thread;
    atomic_bool stopping;

    struct auth_fwd_pool *fwd;       /* auth/forward.c: connections to the leader */
    struct auth_ca_cache *ca;        /* auth/ca_cache.c: CA private keys by revision */
    struct auth_role_cache *roles;   /* auth/role_cache.c: parsed roles, shared */
    struct auth_issue_cache *issued; /* auth/certs.c: what users' certificates say */
    bool low_disk_warned;
    _Atomic uint64_t disk_ok_until; /* mono ms: free space was above min_free_disk, recheck then */
    struct auth_audit *audit;       /* auth/audit.c */
    struct auth_locks *locks;       /* auth/locks.c */
    struct auth_login_guard *login; /* auth/login_guard.c: password-login limits */
    struct auth_presence *presence; /* auth/agents.c: heartbeats gathered into batches */
};

/* A request being served: the decoded map and who sent it. */
struct auth_req {
    struct auth_server *srv;
    const msgpack_object *args;
    const void *raw; /* the request frame, for forwarding */
    size_t raw_len;
    struct rp_identity *caller; /* NULL: no client certificate */
    bool from_peer;             /* the connection is from another auth server */
    struct rp_conn *conn;
    const char *remote; /* the original client's address (forwarded: as the follower saw it) */
    const struct auth_method *method; /* its row of the method table (auth/authz.h) */
    const char *write_op;             /* "put" by a user allowed one of create/update: that one */
};

/* Serves one request frame from connection @c (whose verified client identity is
 * @caller, NULL for none) and writes the answer into @out (auth/dispatch.c).
 * Returns 1 if the connection was turned into a watch stream (and is finished),
 * 0 otherwise. */
int auth_serve_frame(struct auth_server *s, struct rp_conn *c, struct rp_identity *caller,
                     const struct rp_buf *frame, struct rp_buf *out);

/* True for the Admin and Auth system identities (auth/dispatch.c). */
bool auth_caller_is_admin(const struct rp_identity *id);
/* For a handler that decides a denial the method table cannot (it depends on the
 * arguments): logs and audits it as dispatch does its own ("auth", T3007W) and
 * returns RP_EDENIED with "access denied: <message>" in rp_errmsg(). */
int auth_deny(struct auth_req *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* auth/secrets.c: what a caller may read of a resource of @kind. */
enum auth_view {
    AUTH_VIEW_NONE,     /* not at all: hidden from lists, denied to get */
    AUTH_VIEW_REDACTED, /* without private keys */
    AUTH_VIEW_FULL,
};
enum auth_view auth_view_of(const struct rp_identity *caller, const char *kind, size_t kind_len,
                            bool with_secrets);
/* Appends @res as @view allows (nothing for AUTH_VIEW_NONE). */
int auth_view_append(enum auth_view view, const void *res, size_t len, struct rp_buf *out);

/* Forwards @r to the leader on behalf of its caller: the request travels with an
 * "_as" map naming the caller's identity and address, which the leader uses for
 * authorization and the audit log when (and only when) the forwarding connection
 * holds the Auth role. */
int auth_forward_req(struct auth_req *r, struct rp_buf *out);

/* Answers. Each handler writes exactly one answer map into @out. */
void auth_reply_error(struct rp_buf *out, int code, const char *msg);
/* Starts an ok answer in @out (emptied first): map @m, holding "ok": true so far,
 * packed through @pk. The handler adds its entries to @m and closes it with
 * rp_mp_map_end(@m), which writes the count of what was added. */
void auth_reply_ok(struct rp_mp_map *m, msgpack_packer *pk, struct rp_buf *out);

/* Starts resource map @res (kind, version, metadata.name, metadata.expires unless
 * 0) and its "spec" map @spec, which the caller fills; auth_resource_end closes
 * both (auth/cluster.c). */
void auth_resource_begin(msgpack_packer *pk, struct rp_mp_map *res, struct rp_mp_map *spec,
                         const char *kind, const char *version, const char *name, uint64_t expires);
void auth_resource_end(struct rp_mp_map *res, struct rp_mp_map *spec);

/* Reads need the leader unless the caller asked for a stale read: 1 if the request
 * was forwarded (the leader's answer is in @out), 0 to serve locally (after a
 * barrier on the leader), <0 on error. */
int auth_route_read(struct auth_req *r, struct rp_buf *out);
int auth_h_audit_append(struct auth_req *r, struct rp_buf *out); /* auth/audit.c */
/* auth/recordings.c: session recordings; the leader's trim (retention, budget),
 * called about once a minute, proposes only when something is due. */
int auth_h_rec_put(struct auth_req *r, struct rp_buf *out);
int auth_h_rec_list(struct auth_req *r, struct rp_buf *out);
int auth_h_rec_get(struct auth_req *r, struct rp_buf *out);
int auth_rec_trim_due(struct auth_server *s);
int auth_h_events(struct auth_req *r, struct rp_buf *out);
/* auth/ssh_ca.c: the user and host SSH CAs (leader duty creates missing ones). */
int auth_ssh_cas_ensure(struct auth_server *s);
int auth_ssh_ca_key(struct auth_server *s, const char *type, EVP_PKEY **key);
int auth_h_sign_host(struct auth_req *r, struct rp_buf *out);
/* A host's SSH certificate for @ssh_pubkey (an authorized_keys line) with the extra
 * principals of @extra (a msgpack array of at most AUTH_HOST_MAX_EXTRA names; NULL or
 * nil: none): the argument checks and signing join, sign_host and renew_host share.
 * *@line, and *@principals_out as for auth_sign_host_ssh, are the caller's to free. */
int auth_issue_host_ssh(struct auth_server *s, const char *host_id, const char *nodename,
                        const char *role, const char *ssh_pubkey, const msgpack_object *extra,
                        uint64_t ttl_ms, char **line, char ***principals_out, size_t *n_out);
/* A host's SSH certificate: principals host id, hostid.cluster, node name,
 * nodename.cluster and @extra; extensions x-teleport-role and x-teleport-authority.
 * *@principals_out (if not NULL) gets the principals (free each and the array). */
int auth_sign_host_ssh(struct auth_server *s, const char *host_id, const char *nodename,
                       const char *role, EVP_PKEY *pub, const char *const *extra, size_t n_extra,
                       uint64_t ttl_ms, char **line, char ***principals_out, size_t *n_out);
/* The user and host CA public keys as authorized_keys lines (free both). */
int auth_ssh_ca_public_lines(struct auth_server *s, char **user_ca, char **host_ca);
/* auth/role_cache.c */
struct rbac_role;
/* Stored role @name, parsed (shared: give it back with auth_role_release, never
 * rbac_role_free it); RP_ENOTFOUND if there is none. */
int auth_role_load(struct auth_server *s, const char *name, struct rbac_role **role);
void auth_role_release(struct auth_server *s, struct rbac_role *role);
/* auth/certs.c */
int auth_h_sign_user(struct auth_req *r, struct rp_buf *out);
/* What users' certificates say, computed once per change of any resource
 * (state_resources_changed) and shared by reference count: a burst of logins
 * evaluates the roles once. new: 0 or RP_ENOMEM; free: NULL is fine. */
int auth_issue_cache_new(struct auth_issue_cache **out);
void auth_issue_cache_free(struct auth_issue_cache *c);
int auth_h_authenticate(struct auth_req *r, struct rp_buf *out);
/* auth/users.c */
int auth_h_user_add(struct auth_req *r, struct rp_buf *out);
int auth_h_user_update(struct auth_req *r, struct rp_buf *out);
int auth_h_user_rm(struct auth_req *r, struct rp_buf *out);
int auth_h_user_reset(struct auth_req *r, struct rp_buf *out);
int auth_h_invite_redeem(struct auth_req *r, struct rp_buf *out);
int auth_h_invite_info(struct auth_req *r, struct rp_buf *out);

/* Handlers (auth/store_api.c, auth/cluster.c). Return 0 when @out holds the answer;
 * a negative code means "answer with this error and rp_errmsg()". */
int auth_h_get(struct auth_req *r, struct rp_buf *out);
int auth_h_list(struct auth_req *r, struct rp_buf *out);
int auth_h_write(struct auth_req *r, const char *op, struct rp_buf *out);
int auth_h_watch(struct auth_req *r); /* streams until the client leaves */
int auth_h_ping(struct auth_req *r, struct rp_buf *out);
int auth_h_status(struct auth_req *r, struct rp_buf *out);
int auth_h_member_status(struct auth_req *r, struct rp_buf *out);
int auth_h_token_add(struct auth_req *r, struct rp_buf *out);
int auth_h_join(struct auth_req *r, struct rp_buf *out);
int auth_h_member_rm(struct auth_req *r, struct rp_buf *out);

/* Proposes @cmd through Raft on this (leader) server after the disk-space check. */
int auth_propose(struct auth_server *s, const void *cmd, size_t len, struct state_result *res);
/* auth_propose, and the term this server appended and committed the entry in. */
int auth_propose_term(struct auth_server *s, const void *cmd, size_t len, struct state_result *res,
                      uint64_t *term);
/* Encodes @c and proposes it (auth_propose); a command that applied with an error
 * (conflict, exists, ...) is returned as that error. @sr may be NULL. */
struct state_cmd;
int auth_propose_cmd(struct auth_server *s, const struct state_cmd *c, struct state_result *sr);
/* Forwards the raw request to the leader and copies its answer into @out.
 * RP_ENOTLEADER/RP_EUNAVAILABLE when no leader is known or reachable. */
int auth_forward(struct auth_server *s, const void *raw, size_t len, struct rp_buf *out);
/* True if this server may serve leader-only work now; false means forward. */
bool auth_is_leader(struct auth_server *s);
/* API address ("ip:port") of the auth server with Raft id @id, from the state. */
int auth_api_addr_of(struct auth_server *s, uint64_t id, char *out, size_t outlen);
/* The pool of connections auth_forward uses. new: 0 or RP_ENOMEM. reset closes the
 * idle connections (on stop); free closes all (NULL is fine), none may be in use. */
int auth_fwd_pool_new(struct auth_fwd_pool **out);
void auth_fwd_pool_reset(struct auth_fwd_pool *p);
void auth_fwd_pool_free(struct auth_fwd_pool *p);

/* Identity files (auth/identity.c). */
int auth_identity_load(struct auth_identity *id, const char *data_dir);
int auth_identity_bootstrap(struct auth_identity *id, const struct rp_config *cfg,
                            const char *data_dir);
int auth_identity_join(struct auth_identity *id, const struct rp_config *cfg, const char *data_dir);
void auth_identity_free(struct auth_identity *id);
/* Re-issues data_dir/keys/admin.crt (same key, admin_identity_ttl) once less than half
 * its lifetime is left, or now with @force; signed with the CA in the state, so any
 * member can do it for itself. */
int auth_admin_identity_renew(struct auth_server *s, bool force);
/* Writes the CA, the auth_server record and the cluster name to the state once this
 * bootstrap server leads (auth/cluster.c). */
int auth_bootstrap_write(struct auth_server *s);
/* Proposes expiry of everything whose time has come (leader only). */
int auth_expire_due(struct auth_server *s);

/* Signs an X.509 identity with the cluster CA held in the state, for the P-256 key
 * whose SubjectPublicKeyInfo is @spki (from rp_tls_pubkey_spki, which checked it);
 * *@pem_out is the certificate as PEM (free it). */
int auth_sign_identity(struct auth_server *s, const unsigned char spki[RP_TLS_P256_SPKI_LEN],
                       const struct rp_identity *ident, const char *const *sans, size_t n_sans,
                       long ttl_s, char **pem_out);

/* The X.509 identity of a host: CN and host id @host_id, system role @role ("Node",
 * "Proxy", "Auth"; also its O, as Teleport writes it), @sans as subjectAltName
 * (auth_sign_identity). RP_EINVAL if @role names no system role. */
int auth_sign_host_identity(struct auth_server *s, const unsigned char spki[RP_TLS_P256_SPKI_LEN],
                            const char *host_id, const char *role, const char *const *sans,
                            size_t n_sans, long ttl_s, char **pem_out);

/* auth/agents.c: the methods node agents and proxies call. */
int auth_h_heartbeat(struct auth_req *r, struct rp_buf *out);
int auth_h_emit_events(struct auth_req *r, struct rp_buf *out);
int auth_h_renew_host(struct auth_req *r, struct rp_buf *out);
/* The gatherer of heartbeats (one per server). new: 0 or RP_ENOMEM; free: NULL is
 * fine, and no heartbeat may be in progress. */
int auth_presence_new(struct auth_presence **out);
void auth_presence_free(struct auth_presence *p);
/* The node name of the Node or Proxy identity @id whose certificate connection @c
 * presented: the first subjectAltName that is neither its host id nor
 * "<host id>.<cluster>" (join writes the node name first; sign_host writes the SSH
 * principals, host id first), else the host id. Into @out (@n bytes). RP_ENOTFOUND
 * without a peer certificate, RP_EINVAL for a name that does not fit. */
int auth_conn_nodename(struct rp_conn *c, const struct rp_identity *id, char *out, size_t n);

/* auth/admit.c: what a resource must be to enter the state through the API (every
 * put, create, update, cas and each op of a batch). Warnings are what a write's
 * answer carries in "warnings": the resource was admitted, but something about it
 * deserves the writer's attention. */
#define AUTH_MAX_WARNINGS 8
#define AUTH_MAX_USER_ROLES 64
#define AUTH_TOKEN_LABEL_LEN 24
struct auth_warnings {
    char *msg[AUTH_MAX_WARNINGS]; /* owned */
    size_t n;
};
void auth_warnings_add(struct auth_warnings *w, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void auth_warnings_free(struct auth_warnings *w);
/* Kind and name of an admitted resource (name empty if longer than 255 bytes). */
struct auth_admitted {
    char kind[64];
    char name[256];
};
/* Checks @res (a resource map written by @op) by the rules of its kind and appends
 * the form to store to @canonical (unchanged on error). 0, or RP_EINVAL /
 * RP_ENOTFOUND with a message naming the field; a token's name never appears in
 * it. @who (may be NULL) gets the kind and name; @warnings (may be NULL) gets
 * warnings. */
int auth_admit_resource(struct auth_server *s, const char *op, const msgpack_object *res,
                        struct rp_buf *canonical, struct auth_admitted *who,
                        struct auth_warnings *warnings);
/* The name rules of users and roles alone, for handlers that build the resource
 * themselves (auth/users.c): a role name that is no system role name in any case;
 * a user name that is not an auth server's "admin@NODENAME". */
int auth_admit_role_name(const char *name, size_t n);
int auth_admit_user_name(struct auth_server *s, const char *name, size_t n);
/* @roles: a non-empty array of existing role names, none a system role name. */
int auth_admit_role_refs(struct auth_server *s, const msgpack_object *roles);
/* "sha256:" and the first 8 hex digits of SHA-256(@token): how logs and audit
 * events name a join token or invite without giving its value away. */
void auth_token_label(const char *token, size_t n, char out[AUTH_TOKEN_LABEL_LEN]);

/* Small parsing helpers for request arguments. */
int auth_arg_str(const msgpack_object *args, const char *key, char *out, size_t outlen,
                 bool required);

#endif
