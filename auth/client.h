/* auth/client.h: the client of the auth API, for tctl and later tsh, the proxy
 * and the node agent.
 *
 * It depends on lib/ only, never on the server's files: a program that calls
 * the auth service links this and nothing of the server. The wire protocol
 * (methods, arguments, answers) is described in auth/auth.h.
 *
 * A client is used by one thread at a time. It keeps one connection to the auth
 * server it last reached and fails over to the others (those given, and those
 * ping names) on connection errors, "not_leader", "unavailable" and "busy",
 * backing off with jitter once it has tried them all, until the call's deadline.
 *
 * Every call returns 0 or a negative RP_E* code (lib/errors.h) with rp_errmsg()
 * set: the server's own code and message when it answered with an error (e.g.
 * RP_EDENIED, RP_ENOTFOUND, RP_EEXISTS, RP_EINVAL), RP_EUNAVAILABLE when no
 * server could be reached before the deadline, RP_EPROTO for an answer that is
 * not what the method promises. Writes carry a request id, generated once per
 * call, so that a retry after a lost answer is applied once. */
#ifndef RP_AUTH_CLIENT_H
#define RP_AUTH_CLIENT_H

#include <msgpack.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

/* Where an auth server keeps the identity local tools use (data_dir/keys). */
#define AUTH_KEYS_DIR "keys"

struct auth_client;

/* ---- connecting ----------------------------------------------------------- */

/* A client that talks to any of @addrs (and to every auth server it learns about
 * from ping), with the identity in @ctx. Takes a reference on @ctx. RP_EINVAL if
 * no address is given. */
int auth_client_new(struct auth_client **out, SSL_CTX *ctx, const char *const *addrs,
                    size_t n_addrs);
void auth_client_free(struct auth_client *c);
/* Per-call deadline, covering retries across servers (default 15 s). */
void auth_client_set_timeout(struct auth_client *c, int timeout_ms);
/* Makes the next call start at the first address given to auth_client_new (the
 * client otherwise stays on the server it last reached). */
void auth_client_rewind(struct auth_client *c);
/* The name (certificate CN) of the identity the client presents, into @out:
 * a user name, or "admin@<host id>" for a server's local admin identity.
 * RP_ENOTFOUND if the context holds no certificate or it has no CN. */
int auth_client_identity_name(const struct auth_client *c, char *out, size_t outlen);

/* Loads the identity a local tool uses: @data_dir/keys/admin.{crt,key} and ca.crt. */
int auth_load_admin_ctx(const char *data_dir, SSL_CTX **out);
/* Loads an identity file pair (cert, key) and a CA file. */
int auth_load_client_ctx(const char *cert, const char *key, const char *ca, SSL_CTX **out);

/* A new request id: 16 random bytes as hex. */
void auth_new_rid(char out[33]);

/* One request @req (@len bytes) to @addr without a client certificate, for a host that
 * holds only the cluster CA's @pin ("sha256:<hex>", as tctl prints it): the server's
 * chain must hold the pinned CA, which must have signed its certificate, before
 * anything is sent (else RP_ETLS naming both pins). The answer frame goes to @frame
 * (rp_buf_init'ed; *@resp points into it and is destroyed by the caller whatever the
 * result). Returns 0 if the answer said ok, the answer's error code and message if
 * not, RP_EUNAVAILABLE if @addr could not be reached or went away, RP_EPROTO for a
 * malformed answer. @timeout_ms bounds the dial (at most 3 s) and each read/write. */
int auth_pinned_call(const char *addr, const char *pin, const void *req, size_t len, int timeout_ms,
                     struct rp_buf *frame, msgpack_unpacked *resp);
/* The same, offering the ALPN protocol @alpn (NULL: none) in the ClientHello: an agent
 * joining through a proxy offers "teleport-auth@" (AUTH_ALPN_VIA_PROXY), which the proxy
 * passes through to auth untouched. */
int auth_pinned_call_alpn(const char *addr, const char *alpn, const char *pin, const void *req,
                          size_t len, int timeout_ms, struct rp_buf *frame, msgpack_unpacked *resp);
/* The ALPN protocol that makes a proxy pass a connection through to auth (design: the
 * proxy reads it from the ClientHello and terminates nothing). */
#define AUTH_ALPN_VIA_PROXY "teleport-auth@"
/* Sets @alpn as the only protocol @ctx offers. RP_ETLS. */
int auth_ctx_set_alpn(SSL_CTX *ctx, const char *alpn);

/* ---- the generic call ----------------------------------------------------- */

/* Sends request @req (an encoded msgpack map) and waits for the answer, failing
 * over as described above. Returns 0 if the answer was {"ok": true}, else the
 * answer's error code with rp_errmsg() set to its message (or a transport error).
 * *resp holds the decoded answer when there was one (error answers too, e.g. for
 * current_rev); the caller always calls msgpack_unpacked_destroy(resp) afterwards,
 * whatever the result. The strings of *resp point into a buffer of the client
 * that the next call on @c reuses: copy what must outlive it. */
int auth_client_call(struct auth_client *c, const void *req, size_t len, msgpack_unpacked *resp);

/* Appends an encoded get / list request to @out (for auth_client_call). @prefix NULL
 * and @limit 0 mean none. */
void auth_req_get(struct rp_buf *out, const char *kind, const char *name, bool stale,
                  bool with_secrets);
void auth_req_list(struct rp_buf *out, const char *kind, const char *prefix, uint64_t limit,
                   bool stale, bool with_secrets);

/* Opens a dedicated connection for a watch stream on the first reachable server.
 * Then auth_watch_next reads one event map at a time (@ev: destroy it after each call). */
struct auth_watch;
int auth_client_watch(struct auth_client *c, const void *req, size_t len, struct auth_watch **out);
int auth_watch_next(struct auth_watch *w, msgpack_unpacked *ev, int timeout_ms);
void auth_watch_close(struct auth_watch *w);

/* ---- answers the caller keeps --------------------------------------------- */

/* A decoded answer that belongs to the caller, independent of later calls on the
 * client: @doc is the answer map and points into @bytes. Zero it (or let a call
 * fill it) and free it with auth_reply_free, which is harmless on a zeroed or
 * already freed reply. */
struct auth_reply {
    const msgpack_object *doc;
    struct rp_buf bytes;
    msgpack_unpacked msg;
    bool decoded;
};
void auth_reply_free(struct auth_reply *r);

/* Read options (bits). */
#define AUTH_READ_STALE 1u   /* answer from the server's own copy: no leader needed */
#define AUTH_READ_SECRETS 2u /* private keys and password hashes too (Admin only) */

/* ---- cluster -------------------------------------------------------------- */

/* What ping says about the server that answered (anonymous callers may ask). */
struct auth_ping {
    char cluster_name[256];
    char server_id[64];
    char ca_pin[96];
    char version[32];
    uint64_t raft_id;
    uint64_t leader_id; /* 0: no leader known */
    size_t n_auth_servers;
    char auth_servers[16][64]; /* API addresses of the members (at most 16 kept) */
};
int auth_client_ping(struct auth_client *c, struct auth_ping *out);

#define AUTH_MAX_MEMBERS 16

struct auth_member {
    uint64_t id;
    char address[64];     /* Raft address */
    char api_address[64]; /* "" if unknown */
    char role[16];        /* voter, standby, spare */
    char state[16];       /* leader, follower, candidate, unavailable, unreachable */
    uint64_t last_applied;
    bool reachable;
    uint64_t disk_free; /* bytes; 0 when unreachable */
};

/* The cluster as the answering server and its probes of the others see it. */
struct auth_status {
    char cluster_name[256];
    char ca_pin[96];
    uint64_t leader_id; /* 0: none */
    uint64_t term;
    size_t n_members; /* at most AUTH_MAX_MEMBERS are kept; RP_EPROTO beyond */
    struct auth_member members[AUTH_MAX_MEMBERS];
};
int auth_client_status(struct auth_client *c, struct auth_status *out);

/* One server's own Raft view (member_status), without probing the others. */
struct auth_member_status {
    uint64_t id, term, leader_id, last_applied, commit_index, last_index;
    uint64_t disk_free, disk_total;
    char state[16];
    bool ready;
};
int auth_client_member_status(struct auth_client *c, struct auth_member_status *out);

/* Removes auth server @id from the Raft group. RP_ENOTFOUND for an unknown id,
 * RP_EINVAL for the last member. */
int auth_client_member_rm(struct auth_client *c, uint64_t id);

/* A join token. The token value is a secret: OPENSSL_cleanse it when done. */
struct auth_token {
    char token[80];
    char type[16];
    uint64_t expires_ms;
    char ca_pin[96];
};
/* Creates a join token of @type ("auth", "node" or "proxy") valid for @ttl_ms
 * (1 s .. 48 h; 0: the server's default of 30 m). */
int auth_client_token_add(struct auth_client *c, const char *type, uint64_t ttl_ms,
                          struct auth_token *out);

/* ---- resources ------------------------------------------------------------ */

/* Reads @kind/@name: on success *@out holds the answer, @res (if non-NULL) points
 * at the resource map inside it and @rev (if non-NULL) is the revision read at.
 * RP_ENOTFOUND if absent. */
int auth_client_get(struct auth_client *c, const char *kind, const char *name, unsigned flags,
                    struct auth_reply *out, const msgpack_object **res, uint64_t *rev);

/* Resources of @kind (NULL: every kind) whose name starts with @prefix (NULL: all),
 * at most @limit of them (0: the server's limit). @items points at the array in
 * *@out. */
int auth_client_list(struct auth_client *c, const char *kind, const char *prefix, uint64_t limit,
                     unsigned flags, struct auth_reply *out, const msgpack_object **items,
                     uint64_t *rev);

/* The outcome of a write: its revision and the warnings the server attached (e.g.
 * a role field it keeps but does not enforce). Free with auth_write_result_free. */
struct auth_write_result {
    uint64_t rev;
    char **warnings; /* malloc'd strings */
    size_t n_warnings;
};
void auth_write_result_free(struct auth_write_result *w);

/* Writes the resource @res (one encoded msgpack map of @len bytes, Teleport's
 * shape: kind, version, metadata.name, spec). put creates or replaces, create
 * fails with RP_EEXISTS if it exists, update with RP_ENOTFOUND if it does not.
 * @out may be NULL; else the caller frees it, on success only. */
int auth_client_put(struct auth_client *c, const void *res, size_t len,
                    struct auth_write_result *out);
int auth_client_create(struct auth_client *c, const void *res, size_t len,
                       struct auth_write_result *out);
int auth_client_update(struct auth_client *c, const void *res, size_t len,
                       struct auth_write_result *out);
/* Deletes @kind/@name. RP_ENOTFOUND if absent. @rev may be NULL. */
int auth_client_delete(struct auth_client *c, const char *kind, const char *name, uint64_t *rev);

/* ---- users ---------------------------------------------------------------- */

/* A one-time invite: the user sets a password (and second factor) with it. The
 * token is a secret: OPENSSL_cleanse it when done. */
struct auth_invite {
    char token[80];
    uint64_t expires_ms;
};

/* Creates user @name with @roles (at least one) and @logins (may be none) and an
 * invite valid for @ttl_ms (0: the server's default). */
int auth_client_user_add(struct auth_client *c, const char *name, const char *const *roles,
                         size_t n_roles, const char *const *logins, size_t n_logins,
                         uint64_t ttl_ms, struct auth_invite *out);
/* Replaces the roles of user @name. */
int auth_client_user_update(struct auth_client *c, const char *name, const char *const *roles,
                            size_t n_roles);
int auth_client_user_rm(struct auth_client *c, const char *name);
/* Drops the user's password and second factor; a new invite. */
int auth_client_user_reset(struct auth_client *c, const char *name, uint64_t ttl_ms,
                           struct auth_invite *out);

/* ---- certificates --------------------------------------------------------- */

/* Certificates issued by sign_user / sign_host: malloc'd strings, NULL when the
 * request asked for no X.509 certificate. Free with auth_certs_free. */
struct auth_certs {
    char *ssh_cert;      /* an authorized_keys-style certificate line */
    char *tls_cert;      /* PEM */
    char *tls_ca;        /* PEM of the CA that signed tls_cert */
    uint64_t expires_ms; /* 0 if the server did not say */
};
void auth_certs_free(struct auth_certs *certs);

/* Signs @ssh_pubkey (an authorized_keys line) for @user, and @tls_pubkey (a P-256
 * "PUBLIC KEY" PEM; NULL: no X.509 certificate). @ttl_ms 0: what the user's
 * roles allow. */
int auth_client_sign_user(struct auth_client *c, const char *user, const char *ssh_pubkey,
                          const char *tls_pubkey, uint64_t ttl_ms, struct auth_certs *out);

struct auth_host_sign {
    const char *host_id;
    const char *nodename;
    const char *role; /* "Node", "Proxy" or "Auth" */
    const char *ssh_pubkey;
    const char *tls_pubkey;        /* NULL: no X.509 certificate */
    const char *const *principals; /* extra principals; may be NULL */
    size_t n_principals;
    uint64_t ttl_ms; /* 0: the server's default */
};
int auth_client_sign_host(struct auth_client *c, const struct auth_host_sign *req,
                          struct auth_certs *out);

/* ---- node agents and proxies ---------------------------------------------- */

/* Presence of the calling host (Node: kind "node"; Proxy: kind "proxy"): @res is the
 * whole resource (one encoded msgpack map of @len bytes, Teleport's v2 shape, see
 * auth/auth.h "heartbeat") whose metadata.name is the caller's host id. The server
 * sets metadata.expires to now + @ttl_ms, @ttl_ms clamped to [3 s, 1 h]. *@rev and
 * *@expires_ms (each may be NULL) get the revision written and the expiry set.
 * RP_EDENIED for another host's name or a kind that is not the caller's; RP_EINVAL,
 * naming the field, for a malformed resource. */
int auth_client_heartbeat(struct auth_client *c, const void *res, size_t len, uint64_t ttl_ms,
                          uint64_t *rev, uint64_t *expires_ms);

#define AUTH_EMIT_MAX_EVENTS 256
#define AUTH_EMIT_MAX_EVENT_BYTES (64u << 10)

/* Appends audit events of the calling node: @events is one encoded msgpack array of
 * at most AUTH_EMIT_MAX_EVENTS maps (@len bytes), each with at least "event" (a type a
 * node may emit, see auth/auth.h "emit_events") and "time" (ms), at most
 * AUTH_EMIT_MAX_EVENT_BYTES encoded. The server sets server_id to the caller's host id
 * (and uid, and code when absent). One request id per call: a retry after a lost
 * answer appends once. @rev may be NULL. RP_EINVAL names the first event refused and
 * what was expected; nothing is appended then. */
int auth_client_emit_events(struct auth_client *c, const void *events, size_t len, uint64_t *rev);

/* What renew_host returns: malloc'd strings, freed by auth_host_certs_free (harmless
 * on a zeroed struct). */
struct auth_host_certs {
    char *ssh_cert; /* OpenSSH host certificate line for ssh_pubkey */
    char *tls_cert; /* PEM: the caller's X.509 identity for tls_pubkey */
    char *ca_cert;  /* PEM: the cluster's TLS CA */
    char *user_ca;  /* every trusted user CA public key, authorized_keys lines, "\n"-joined */
    char *host_ca;  /* the same for the host CA */
};
void auth_host_certs_free(struct auth_host_certs *certs);

/* Re-issues the calling host's own certificates (same host id, system role and node
 * name as its current X.509 certificate) for new keys: @ssh_pubkey an
 * authorized_keys line, @tls_pubkey_pem a P-256 "PUBLIC KEY" PEM, @principals (may
 * be NULL when @n_principals is 0) extra SSH principals (host names or addresses). For
 * Node and Proxy identities only. On success the caller frees *@out. */
int auth_client_renew_host(struct auth_client *c, const char *ssh_pubkey,
                           const char *tls_pubkey_pem, const char *const *principals,
                           size_t n_principals, struct auth_host_certs *out);

/* ---- audit ---------------------------------------------------------------- */

/* A search of the audit log; zero fields mean no filter. */
struct auth_events_query {
    uint64_t from_ms, to_ms;
    const char *type; /* event type, e.g. "cert.create" */
    const char *user;
    const char *sid;
    uint64_t limit; /* 0: the server's default */
    bool newest_first;
    bool stale;
};
/* @items points at the array of events in *@out. */
int auth_client_events(struct auth_client *c, const struct auth_events_query *q,
                       struct auth_reply *out, const msgpack_object **items);

/* ---- session recordings --------------------------------------------------- */

/* What a recording is of: rec_put's meta (chunk 0 only). */
struct auth_rec_meta {
    const char *user, *login, *hostname;
    const char *command; /* NULL for a shell */
    uint64_t start_ms;
    uint32_t cols, rows;
    bool interactive;
};
/* Appends @m as the msgpack map rec_put carries in "meta". */
int auth_rec_meta_encode(const struct auth_rec_meta *m, struct rp_buf *out);

/* Uploads chunk @seq of recording @sid (a Node identity's call): @data/@len is one
 * zstd frame of asciicast v2 lines (auth/recordings.h); @meta_mp/@meta_len the
 * encoded meta map on chunk 0 (NULL otherwise). *@stored (may be NULL) is false when
 * the cluster held that chunk already: a retry is safe. RP_ENOSPC ("no_space") when
 * the cluster's recordings budget or store cannot take it. */
int auth_client_rec_put(struct auth_client *c, const char *sid, uint32_t seq, const void *data,
                        size_t len, bool last, const void *meta_mp, size_t meta_len, bool *stored);

/* Recordings that started in [from_ms, to_ms) (0: unbounded), oldest first, at most
 * @limit (0: the server's default of 1000); @stale: the answering server's own copy.
 * @items points at the array in *@out. */
struct auth_rec_query {
    uint64_t from_ms, to_ms;
    uint32_t limit;
    bool stale;
};
int auth_client_rec_list(struct auth_client *c, const struct auth_rec_query *q,
                         struct auth_reply *out, const msgpack_object **items);

/* Chunk @seq of @sid as uploaded (@stale: from the answering server's own copy):
 * @chunk->data/len point into *@out; chunks is how many chunks the recording has
 * (see auth/auth.h), complete whether all are stored. */
struct auth_rec_chunk {
    const void *data;
    size_t len;
    bool last, complete;
    uint32_t chunks;
};
int auth_client_rec_get(struct auth_client *c, const char *sid, uint32_t seq, bool stale,
                        struct auth_reply *out, struct auth_rec_chunk *chunk);

/* ---- locks ---------------------------------------------------------------- */

#define AUTH_KIND_LOCK "lock"

/* A lock refuses every request of the identities it targets. A lock needs at
 * least one target; when it has several, an identity must match all of them. */
struct auth_lock_spec {
    const char *user;
    const char *role;
    const char *login;
    const char *server_id;
    const char *message;    /* shown to the locked identity; may be NULL */
    uint64_t ttl_ms;        /* 0: until removed */
    const char *created_by; /* may be NULL */
};

/* Encodes the lock resource @name for @spec, created at @now_ms, into @out:
 *   {kind: lock, version: v2, metadata: {name, expires?},
 *    spec: {target: {user?, role?, login?, server_id?}, message?, expires?,
 *           created_by?, created_at}}
 * with metadata.expires in ms since the epoch (what the state layer expires on) and
 * spec.expires / created_at as RFC 3339 UTC (what Teleport shows). RP_EINVAL if
 * no target is given, or a target or the message is empty or holds control
 * characters. */
int auth_lock_encode(const struct auth_lock_spec *spec, const char *name, uint64_t now_ms,
                     struct rp_buf *out);

/* Creates a lock for @spec under a fresh UUID, written to @name. @out as for
 * auth_client_create (may be NULL). */
int auth_client_lock_add(struct auth_client *c, const struct auth_lock_spec *spec, char name[37],
                         struct auth_write_result *out);

#endif
