/* agent/authority.h: what the node's SSH server asks to decide a login.
 *
 * The SSH server (agent/sshd.h) knows nothing of where trust comes from: it asks
 * this table of functions. The agent's cache (agent/cache.h) implements it from
 * what the auth cluster streams to it (and from disk while auth is away); tests
 * implement it over fixtures. Every function is called from SSH server threads at
 * any time and must be thread-safe. A function that cannot answer returns an error,
 * and the SSH server then refuses: a check that fails closes the door. */
#ifndef RP_AGENT_AUTHORITY_H
#define RP_AGENT_AUTHORITY_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/rbac.h"

/* This node's labels: static ones from the config and the latest results of its
 * command labels. Owns its strings. */
struct agent_labels {
    struct rbac_label *items;
    size_t n;
};
void agent_labels_free(struct agent_labels *l); /* frees the strings too; l may hold zeros */

struct agent_authority {
    void *arg;
    /* The user CA public keys a user certificate may be signed by (every active and
     * additional trusted key of cert_authority/user). *@keys: a malloc'd array of *@n
     * references the caller releases with EVP_PKEY_free and free. RP_ENOTFOUND when no
     * user CA is known (never joined, empty cache): refuse. */
    int (*user_cas)(void *arg, EVP_PKEY ***keys, size_t *n);
    /* The role set of a user holding @n_roles roles (the certificate's teleport-roles)
     * with @traits_json (its teleport-traits extension, JSON; NULL or "" for none).
     * RP_ENOTFOUND naming the first role the cache does not have. *@out is the
     * caller's (rbac_set_free); it stays valid after the cache changes. */
    int (*role_set)(void *arg, const char *const *roles, size_t n_roles, const char *traits_json,
                    struct rbac_set **out, char *why, size_t why_len);
    /* 0 if no lock applies to this user on this node; RP_EDENIED with "<target> is
     * locked (lock NAME): MESSAGE" in @why if one does; any other code: the locks could
     * not be read, refuse. @host_id is this node's (locks on server_id or node). */
    int (*lock_check)(void *arg, const char *user, const char *const *roles, size_t n_roles,
                      const char *login, const char *host_id, char *why, size_t why_len);
    /* This node's labels now (copies). */
    int (*labels)(void *arg, struct agent_labels *out);
    /* Registers @fn to be called (from the cache's thread, after each change it applies:
     * locks, roles, CAs) until the authority is gone. One registration per caller;
     * @fn must not block. Returns 0 or RP_ENOMEM. */
    int (*on_change)(void *arg, void (*fn)(void *fn_arg), void *fn_arg);
};

#endif
