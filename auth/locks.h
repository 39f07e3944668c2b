/* auth/locks.h: the lock cache the auth API checks every caller against.
 *
 * A lock resource (kind "lock", Teleport's v2 shape):
 *   metadata: {name, expires?: u64 ms}
 *   spec:     {target: {user?, role?, login?, server_id?, node?, access_request?},
 *              message?, expires?: RFC3339, created_by?, created_at?}
 * applies to an identity when every target field it sets matches: user, role and
 * login match user identities (their name, one of their roles, one of their logins),
 * server_id and node match system identities by host id. An expired lock applies to
 * no one, even before expiry removes it. */
#ifndef RP_AUTH_LOCKS_H
#define RP_AUTH_LOCKS_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/tls.h"

#define AUTH_KIND_LOCK "lock"

/* ---- the matcher (pure: the auth API's cache and the node agent's cache share it) -- */

#define AUTH_LOCK_FIELD_MAX 256

/* One decoded lock. Empty strings are unset target fields. */
struct auth_lock {
    char name[AUTH_LOCK_FIELD_MAX];
    char user[AUTH_LOCK_FIELD_MAX], role[AUTH_LOCK_FIELD_MAX], login[AUTH_LOCK_FIELD_MAX];
    char server_id[AUTH_LOCK_FIELD_MAX], node[AUTH_LOCK_FIELD_MAX];
    char access_request[AUTH_LOCK_FIELD_MAX];
    char message[AUTH_LOCK_FIELD_MAX];
    uint64_t expires_ms; /* metadata.expires; 0: never */
};

/* Decodes the lock resource @res (a msgpack map, Teleport's shape above). RP_EINVAL if
 * it has no spec.target map or sets no target field (such a lock would match everyone;
 * the write path refuses it, and a reader must not apply it). A field longer than
 * AUTH_LOCK_FIELD_MAX - 1 bytes or holding a NUL reads as unset, except in a target,
 * where it makes the lock RP_EINVAL too. */
int auth_lock_decode(const msgpack_object *res, struct auth_lock *out);

/* Who is asking: a user (@user set; its @roles; the @logins it holds or asks for) or
 * a system identity (@user NULL; @host_id and @host_name its host). On a node agent a
 * user's login also carries the node's @host_id: a lock on that node refuses it. */
struct auth_lock_subject {
    const char *user;
    const char *const *roles;
    size_t n_roles;
    const char *const *logins;
    size_t n_logins;
    const char *host_id;   /* NULL: none */
    const char *host_name; /* NULL: none */
};

/* True if @lock applies to @who at @now_ms: not expired, and every target field it
 * sets matches (user: the user's name; role: one of its roles; login: one of its
 * logins; server_id: the host id; node: the host id or host name). Locks on access
 * requests match no one (they do not exist yet). */
bool auth_lock_applies(const struct auth_lock *lock, const struct auth_lock_subject *who,
                       uint64_t now_ms);

/* ---- the auth server's cache ------------------------------------------------------ */

struct state;
struct auth_locks;

/* A cache over the locks of @state (borrowed; it must outlive the cache). */
int auth_locks_new(struct auth_locks **out, struct state *state);
void auth_locks_free(struct auth_locks *l); /* NULL is fine */

/* 0 if no lock applies to @id (NULL: anonymous, never locked). RP_EDENIED if one
 * does, with "<name> is locked (lock NAME): MESSAGE" in @why and "access denied: ..."
 * in rp_errmsg(). Any other code means the locks could not be read: the caller must
 * refuse the request (a check that fails closes the door). Thread-safe. */
int auth_locks_check(struct auth_locks *l, const struct rp_identity *id, char *why, size_t n);

/* 0 if @host_id has an auth_server record, or if there is none at all yet (a cluster
 * still writing its bootstrap records); RP_ENOTFOUND if it is no member. Any other code
 * means the records could not be read. From the same cache as the locks. */
int auth_locks_check_member(struct auth_locks *l, const char *host_id);

#endif
