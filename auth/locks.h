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

#include <stddef.h>

#include "lib/tls.h"

#define AUTH_KIND_LOCK "lock"

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
