/* auth/ca_cache.c: the cluster CAs' private keys, parsed once per stored version.
 *
 * Every certificate the auth server signs needs a CA key, and parsing one from its
 * PEM costs far more than the signature (about 0.4 ms for the TLS key, 50 us for an
 * SSH key). The key is kept with the revision of the cert_authority resource it
 * came from; a rotation writes a new revision, and the next lookup parses again. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth/auth.h"
#include "auth/ca_cache.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"

enum ca_slot { CA_TLS, CA_SSH_USER, CA_SSH_HOST, CA_SLOTS };

struct auth_ca_cache {
    pthread_mutex_t mu;
    struct {
        EVP_PKEY *key; /* owned; NULL until the first lookup */
        uint64_t rev;  /* revision of the resource @key was parsed from */
    } slot[CA_SLOTS];
};

int auth_ca_cache_new(struct auth_ca_cache **out)
{
    struct auth_ca_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return rp_err(RP_ENOMEM, "CA key cache");
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void auth_ca_cache_free(struct auth_ca_cache *c)
{
    if (c == NULL)
        return;
    for (int i = 0; i < CA_SLOTS; i++)
        EVP_PKEY_free(c->slot[i].key);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

/* A new reference to the key of @slot if it was parsed from revision @rev, else NULL. */
static EVP_PKEY *cached(struct auth_ca_cache *c, enum ca_slot slot, uint64_t rev)
{
    EVP_PKEY *key = NULL;
    pthread_mutex_lock(&c->mu);
    if (c->slot[slot].key != NULL && c->slot[slot].rev == rev) {
        key = c->slot[slot].key;
        EVP_PKEY_up_ref(key);
    }
    pthread_mutex_unlock(&c->mu);
    return key;
}

/* Keeps a reference to @key as the version @rev of @slot (the caller keeps its own). */
static void remember(struct auth_ca_cache *c, enum ca_slot slot, uint64_t rev, EVP_PKEY *key)
{
    EVP_PKEY_up_ref(key);
    pthread_mutex_lock(&c->mu);
    EVP_PKEY_free(c->slot[slot].key);
    c->slot[slot].key = key;
    c->slot[slot].rev = rev;
    pthread_mutex_unlock(&c->mu);
}

static void forget_resource(struct rp_buf *res)
{
    if (res->data)
        OPENSSL_cleanse(res->data, res->cap); /* it holds the private key */
    rp_buf_free(res);
}

int auth_ca_cache_tls_key(struct auth_ca_cache *c, struct state *st, EVP_PKEY **out)
{
    struct rp_buf res;
    uint64_t rev = 0;
    msgpack_unpacked u;
    rp_buf_init(&res);
    int rv = state_get(st, AUTH_KIND_CA, "tls", &res, NULL);
    if (rv != 0) {
        rp_buf_free(&res);
        return rp_err(RP_EUNAVAILABLE, "the cluster TLS CA is not in the state yet");
    }
    struct state_res_meta meta;
    if (state_resource_check(res.data, res.len, &meta) == 0)
        rev = meta.revision;
    if ((*out = cached(c, CA_TLS, rev)) != NULL) {
        forget_resource(&res);
        return 0;
    }
    rv = rp_mp_parse(res.data, res.len, &u);
    if (rv == 0) {
        const msgpack_object *keys = rp_mp_get(rp_mp_get(&u.data, "spec"), "active_keys");
        const msgpack_object *tls = rp_mp_get(keys, "tls");
        const char *pem;
        size_t n;
        EVP_PKEY *key = NULL;
        if (tls == NULL || tls->type != MSGPACK_OBJECT_ARRAY || tls->via.array.size == 0)
            rv = rp_err(RP_EINVAL, "cert_authority/tls has no active TLS key");
        else if ((rv = rp_mp_get_str(&tls->via.array.ptr[0], "key", &pem, &n)) == 0)
            rv = rp_tls_key_from_pem(pem, n, &key);
        if (rv == 0) {
            remember(c, CA_TLS, rev, key);
            *out = key;
        }
        msgpack_unpacked_destroy(&u);
    }
    forget_resource(&res);
    return rv;
}

int auth_ca_cache_ssh_key(struct auth_ca_cache *c, struct state *st, const char *type,
                          EVP_PKEY **key)
{
    struct rp_buf b;
    msgpack_unpacked u;
    struct state_res_meta meta;
    enum ca_slot slot = strcmp(type, "user") == 0 ? CA_SSH_USER : CA_SSH_HOST;
    rp_buf_init(&b);
    int rv = state_get(st, AUTH_KIND_CA, type, &b, NULL);
    if (rv == RP_ENOTFOUND)
        rv = rp_err(RP_EUNAVAILABLE, "the %s SSH CA does not exist yet", type);
    if (rv == 0 && (rv = state_resource_check(b.data, b.len, &meta)) == 0 &&
        (*key = cached(c, slot, meta.revision)) != NULL) {
        forget_resource(&b);
        return 0;
    }
    if (rv == 0 && (rv = rp_mp_parse(b.data, b.len, &u)) == 0) {
        const msgpack_object *ssh =
            rp_mp_get(rp_mp_get(rp_mp_get(&u.data, "spec"), "active_keys"), "ssh");
        const char *pem;
        size_t n;
        if (ssh == NULL || ssh->type != MSGPACK_OBJECT_ARRAY || ssh->via.array.size == 0 ||
            rp_mp_get_str(&ssh->via.array.ptr[0], "private_key", &pem, &n) != 0)
            rv = rp_err(RP_EIO, "cert_authority/%s has no SSH private key", type);
        else
            rv = rp_ssh_privkey_parse(pem, n, key, NULL);
        msgpack_unpacked_destroy(&u);
        if (rv == 0)
            remember(c, slot, meta.revision, *key);
    }
    forget_resource(&b);
    return rv;
}
