/* auth/role_cache.h: stored roles, parsed once per change and shared by reference
 * count. Not part of the public API; most callers use auth_role_load and
 * auth_role_release (auth/internal.h). */
#ifndef RP_AUTH_ROLE_CACHE_H
#define RP_AUTH_ROLE_CACHE_H

#include "state/state.h"

struct auth_role_cache;
struct rbac_role;

/* An empty cache in *@out (free it with auth_role_cache_free). 0 or RP_ENOMEM. */
int auth_role_cache_new(struct auth_role_cache **out);
/* Frees the cache and every role in it (NULL is fine). No role it handed out may
 * still be held. */
void auth_role_cache_free(struct auth_role_cache *c);
/* Role @name as stored in @st now, parsed or cached by its revision. *@role is
 * shared: give it back with auth_role_cache_release, never rbac_role_free it.
 * RP_ENOTFOUND if there is no such role, RP_EIO if the stored one does not parse. */
int auth_role_cache_load(struct auth_role_cache *c, struct state *st, const char *name,
                         struct rbac_role **role);
/* Gives back a role from auth_role_cache_load (NULL is fine). */
void auth_role_cache_release(struct auth_role_cache *c, struct rbac_role *role);

#endif
