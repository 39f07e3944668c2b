/* auth/role_cache.c: stored roles, parsed once per change and shared.
 *
 * Every request of a user evaluates its roles (auth/dispatch.c), and every
 * certificate issuance too (auth/certs.c); parsing a role compiles its regular
 * expressions and predicates, which costs far more than the evaluation. A parsed
 * role is kept by name and resource revision and handed out by reference count: a
 * new revision replaces the cached one, and the old one is freed when its last
 * holder gives it back. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/internal.h"
#include "auth/rbac.h"
#include "auth/role_cache.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "state/state.h"

#define ROLE_CACHE_SLOTS 32

struct role_slot {
    char name[128];
    uint64_t rev;
    struct rbac_role *role; /* owned; NULL: the slot is free */
    unsigned refs;
    bool current; /* still the cached version of its name */
};

struct auth_role_cache {
    pthread_mutex_t mu;
    struct role_slot slot[ROLE_CACHE_SLOTS];
};

int auth_role_cache_new(struct auth_role_cache **out)
{
    struct auth_role_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return rp_err(RP_ENOMEM, "role cache");
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void auth_role_cache_free(struct auth_role_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < ROLE_CACHE_SLOTS; i++)
        rbac_role_free(c->slot[i].role);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

int auth_role_cache_load(struct auth_role_cache *c, struct state *st, const char *name,
                         struct rbac_role **role)
{
    struct rp_buf rb;
    msgpack_unpacked ru;
    struct state_res_meta meta;
    rp_buf_init(&rb);
    int rv = state_get(st, "role", name, &rb, NULL);
    if (rv == 0)
        rv = state_resource_check(rb.data, rb.len, &meta);
    if (rv != 0) {
        rp_buf_free(&rb);
        return rv;
    }
    const size_t n_slots = sizeof c->slot / sizeof c->slot[0];
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n_slots; i++) {
        struct role_slot *e = &c->slot[i];
        if (e->role && e->current && e->rev == meta.revision && strcmp(e->name, name) == 0) {
            e->refs++;
            *role = e->role;
            pthread_mutex_unlock(&c->mu);
            rp_buf_free(&rb);
            return 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    if ((rv = rp_mp_parse(rb.data, rb.len, &ru)) == 0) {
        rv = rbac_role_parse(&ru.data, role);
        if (rv != 0)
            rv = rp_err(RP_EIO, "stored role '%s': %s", name, rp_errmsg());
        msgpack_unpacked_destroy(&ru);
    }
    rp_buf_free(&rb);
    if (rv != 0 || strlen(name) >= sizeof c->slot[0].name)
        return rv;
    /* Cache it: the older version of this role goes once nobody holds it. */
    pthread_mutex_lock(&c->mu);
    struct role_slot *free_slot = NULL;
    for (size_t i = 0; i < n_slots; i++) {
        struct role_slot *e = &c->slot[i];
        if (e->role && e->current && strcmp(e->name, name) == 0) {
            e->current = false;
            if (e->refs == 0) {
                rbac_role_free(e->role);
                e->role = NULL;
            }
        }
        if (free_slot == NULL && (e->role == NULL || (e->refs == 0 && e->current))) {
            if (e->role)
                rbac_role_free(e->role); /* evict an unused cached role */
            e->role = NULL;
            free_slot = e;
        }
    }
    if (free_slot) {
        snprintf(free_slot->name, sizeof free_slot->name, "%s", name);
        free_slot->rev = meta.revision;
        free_slot->role = *role;
        free_slot->refs = 1;
        free_slot->current = true;
    }
    pthread_mutex_unlock(&c->mu);
    return 0; /* not cached when every slot is in use: auth_role_cache_release frees it */
}

void auth_role_cache_release(struct auth_role_cache *c, struct rbac_role *role)
{
    if (role == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < sizeof c->slot / sizeof c->slot[0]; i++) {
        struct role_slot *e = &c->slot[i];
        if (e->role == role) {
            if (--e->refs == 0 && !e->current) {
                rbac_role_free(e->role);
                e->role = NULL;
            }
            pthread_mutex_unlock(&c->mu);
            return;
        }
    }
    pthread_mutex_unlock(&c->mu);
    rbac_role_free(role);
}

int auth_role_load(struct auth_server *s, const char *name, struct rbac_role **role)
{
    return auth_role_cache_load(s->roles, s->state, name, role);
}

void auth_role_release(struct auth_server *s, struct rbac_role *role)
{
    auth_role_cache_release(s->roles, role);
}
