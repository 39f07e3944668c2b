/* auth/auth.h: the auth service and its API.
 *
 * An auth server runs one Raft member (raft/), the replicated state (state/),
 * and the auth API: TLS 1.3 on auth_service.listen_addr, frames of a 4-byte
 * length and a msgpack map (lib/conn.h). A request is
 *
 *   {"m": method, ...arguments}
 *
 * and every answer is {"ok": true, ...results} or
 * {"ok": false, "code": "<rp_strerror name>", "error": "<message>"}.
 *
 * Methods, one row each of the method table in auth/dispatch.c (tests/test_auth_methods.c
 * checks that this list and the table agree). "who" is who may call: anyone (also
 * without a client certificate), system identities by role (admins = Admin and Auth),
 * and users whose roles' rules allow (resource, verb), "kind" being the kind the
 * request names. "route": local (any server), leader (followers forward), read
 * (linearizable: the leader behind a barrier, unless "stale"), own (the method
 * forwards to the leader itself, once the caller passed this server's rate limits).
 *
 *   ping          {} -> {cluster_name, server_id, ca_pin, leader_id, auth_servers: [api addr...]}
 *                 who: anyone; route: local
 *   get           {kind, name, stale?} -> {res, rev}
 *                 who: every system role; users (kind, read); route: read
 *   list          {kind?, prefix?, limit?, stale?} -> {items, rev}
 *                 who: every system role; users (kind, list); route: read
 *   put           {res, rid} -> {rev}
 *                 who: admins; users (kind, create) for a new resource, (kind, update) for an
 *                 existing one; route: leader
 *   create        {res, rid} -> {rev}
 *                 who: admins; users (kind, create); route: leader
 *   update        {res, rid} -> {rev}
 *                 who: admins; users (kind, update); route: leader
 *   cas           {res, rev, rid} -> {rev} (conflict: current_rev)
 *                 who: admins; users (kind, update); route: leader
 *   delete        {kind, name, rid} -> {rev}
 *                 who: admins; users (kind, delete); route: leader
 *   cdelete       {kind, name, rev, rid} -> {rev}
 *                 who: admins; users (kind, delete); route: leader
 *   batch         {ops: [cmd...], rid} -> {rev} (failure: failed_op)
 *                 who: admins; users: each op as its write (put: create and update); route: leader
 *   watch         {kinds?, prefix?, start_rev?} -> a stream of {ev, rev, kind?, name?, res?}, ev
 *                 one of init_put, init_done, put, delete, reinit
 *                 who: every system role; route: local
 *   status        {} -> tctl status document
 *                 who: every system role; users (cluster, read); route: local
 *   member_status {} -> this server's own Raft view
 *                 who: every system role; users (cluster, read); route: local
 *   token_add     {type, ttl_ms} -> {token, type, expires, ca_pin}
 *                 who: admins; users (token, create), node and proxy tokens only; route: leader
 *   join          {token, type, host_id, nodename, raft_id, raft_addr, api_addr, host_pubkey,
 *                 admin_pubkey} -> {host_cert, admin_cert, ca_cert, cluster_name}
 *                 who: anyone (the token decides); route: leader
 *   member_rm     {id} -> {}
 *                 who: admins; route: leader
 *   user_add      {name, roles[], logins?[], ttl_ms?} -> {token, expires, user} (an invite)
 *                 who: admins; users (user, create); route: leader
 *   user_update   {name, roles[]} -> {}
 *                 who: admins; users (user, update); route: leader
 *   user_rm       {name} -> {}
 *                 who: admins; users (user, delete); route: leader
 *   user_reset    {name, ttl_ms?} -> {token, expires} (a new invite)
 *                 who: admins; users (user, update); route: leader
 *   invite_redeem {token, password, totp_secret?, totp_code?} -> {}
 *                 who: anyone (the invite decides); route: leader
 *   sign_user     {user, ssh_pubkey, tls_pubkey?, ttl_ms?} -> {ssh_cert, expires, tls_cert?,
 *                 tls_ca?, ssh_refused?}
 *                 who: admins; route: leader
 *   authenticate  {user, password, totp_code?, ssh_pubkey, tls_pubkey?, ttl_ms?} -> as sign_user
 *                 who: anyone (the password decides); route: own
 *   sign_host     {host_id, nodename, role, ssh_pubkey, principals?[], ttl_ms?, tls_pubkey?} ->
 *                 {ssh_cert, tls_cert?, tls_ca?}
 *                 who: admins; route: leader
 *   events        {from?, to?, type?, user?, sid?, limit?, newest_first?, stale?} -> {items, rev}
 *                 who: admins; users (event, list); route: read
 *   audit_append  {rid, events[]} -> {rev}
 *                 who: Auth; route: leader
 *   heartbeat     {res, ttl_ms} -> {rev, expires}: presence of the caller's own host (a node
 *                 resource, or proxy for a Proxy) named by its host id; expires = now + ttl_ms
 *                 clamped to [3 s, 1 h]; heartbeats arriving together share one Raft entry
 *                 who: Node, Proxy; route: leader
 *   emit_events   {rid, events[]} -> {rev}: the node's audit events (at most 256, 64 KiB each,
 *                 types a node emits), server_id set to the caller's host id; a proxy's
 *                 own refusals (session.rejected, auth, client.disconnect, user.login with
 *                 success false, user.login.throttled)
 *                 who: Node, Proxy; route: leader
 *   renew_host    {ssh_pubkey, tls_pubkey, principals?[]} -> {ssh_cert, tls_cert, ca_cert,
 *                 user_ca, host_ca}: the caller's own host certificates, re-issued for new keys
 *                 who: Node, Proxy; route: leader
 *   rec_put       {sid, seq, data, last, meta?} -> {stored}
 *                 who: Node; route: leader
 *   rec_list      {from?, to?, limit?, stale?} -> {items: [{sid, user, login, server_id, hostname,
 *                 start, end?, chunks, bytes, complete}]}
 *                 who: admins; users (session, list); route: read
 *   rec_get       {sid, seq, stale?} -> {data, last, chunks, complete}
 *                 who: admins; users (session, read); route: read
 *
 * Any method called by a Proxy identity may carry "client_addr" ("ip:port"): the address
 * of the web client the proxy calls for (authenticate, invite_redeem through the web
 * API), which then stands for the caller's address in rate limits, logs and audit
 * events. From any other caller it is ignored.
 *
 * rec_put stores chunk seq (0, 1, 2, ...) of session recording sid (a UUID) from
 * the calling node, whose host id the recording belongs to from its first chunk on:
 * data is one zstd frame of asciicast v2 lines (auth/recordings.h), at most 1 MiB
 * compressed and 8 MiB decompressed; meta, on chunk 0 only and required there, is
 * {user, login, hostname, start (ms), cols, rows, interactive, command?}. A chunk
 * stored before answers stored: false. no_space when it does not fit
 * auth_service.recordings. rec_list lists recordings by start time (from <= start <
 * to), end only once complete; rec_get returns one chunk as uploaded, with the
 * number of chunks the recording has (known once its last chunk is stored, else the
 * highest stored + 1) and whether all are stored. session.upload is audited when a
 * recording becomes complete. docs/recordings.md.
 *
 * ssh_pubkey is an authorized_keys line (Ed25519, ECDSA or RSA >= 2048 bits);
 * tls_pubkey a "PUBLIC KEY" PEM of a P-256 key with an uncompressed point.
 *
 * Reads are linearizable unless "stale" is true (they then answer from local
 * state and say the revision they read at). Writes and linearizable reads that
 * reach a follower are forwarded to the leader. A write whose outcome is unknown
 * (leadership lost after submission) answers code "outcome_unknown": retrying
 * with the same rid is safe. sign_user reads the user and roles without a barrier
 * and answers only once its cert.create event committed in the term it read under
 * (docs/design-decisions.md); else "not_leader", and the client retries.
 *
 * Authorization starts from the typed identity of the caller's certificate (lib/tls.h):
 * no role name a user chooses grants a system right. Before any method, the caller is
 * checked against the locks (auth/locks.h); an Auth or Admin identity must belong to a
 * current member; a user must still exist. Only a member's Auth identity may forward a
 * request on behalf of another caller ("_as"). Every denial is audited. */
#ifndef RP_AUTH_H
#define RP_AUTH_H

#include <msgpack.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/config.h"

/* ---- data_dir layout ---------------------------------------------------- */

/* AUTH_KEYS_DIR "keys": in auth/client.h (the local tools read the admin identity there) */
#define AUTH_RAFT_DIR "raft"
#define AUTH_STATE_DIR "state"

/* Kinds the auth service keeps in the replicated state. */
#define AUTH_KIND_AUTH_SERVER "auth_server"
#define AUTH_KIND_CA "cert_authority"
#define AUTH_KIND_TOKEN "token"
#define AUTH_KIND_CLUSTER_NAME "cluster_name"

/* ---- the server ------------------------------------------------------- */

struct auth_server;

/* Bootstraps or joins as @cfg says (on first start), opens state and Raft, and
 * starts serving the API. Returns once the API listens. */
int auth_server_start(struct auth_server **out, const struct rp_config *cfg);
/* Graceful stop: stops accepting, hands leadership over, closes everything. */
void auth_server_stop(struct auth_server *s);

/* ---- the client ------------------------------------------------------- */

/* The client (auth_client_*, typed calls per method) has its own header, which
 * depends on lib/ only. */
#include "auth/client.h"

#endif
