/* auth/ca_cache.h: the cluster CAs' private keys, parsed once per stored version.
 * Not part of the public API. */
#ifndef RP_AUTH_CA_CACHE_H
#define RP_AUTH_CA_CACHE_H

#include <openssl/evp.h>

#include "state/state.h"

struct auth_ca_cache;

/* An empty cache in *@out (free it with auth_ca_cache_free). 0 or RP_ENOMEM. */
int auth_ca_cache_new(struct auth_ca_cache **out);
/* Frees the cache and its keys (NULL is fine); keys handed out stay valid. */
void auth_ca_cache_free(struct auth_ca_cache *c);

/* The TLS CA's signing key as stored in @st now (cert_authority/tls), parsed or
 * cached by the resource's revision. *@key is a new reference (EVP_PKEY_free it).
 * RP_EUNAVAILABLE if the CA is not in the state yet, RP_EINVAL if it has no key. */
int auth_ca_cache_tls_key(struct auth_ca_cache *c, struct state *st, EVP_PKEY **key);
/* The "user" or "host" SSH CA's private key, the same way. RP_EUNAVAILABLE if that
 * CA does not exist yet, RP_EIO if it has no private key. */
int auth_ca_cache_ssh_key(struct auth_ca_cache *c, struct state *st, const char *type,
                          EVP_PKEY **key);

#endif
