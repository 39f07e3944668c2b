/* auth/locks.c: Teleport's lock resource, enforced on every API request.
 *
 * A lock names a target (user, role, login, server_id, node, access_request); every
 * field it sets must match for the lock to apply, as in Teleport. Locks live in the
 * replicated state like any resource, so agents and proxies receive them through the
 * watch stream; here the auth API checks each caller against them.
 *
 * Reading every lock from LMDB on each request would put a list scan on the
 * issuance path, so the parsed set is cached and rebuilt when any resource changed
 * (state_resources_changed): a lock written a moment ago applies to the next request
 * that reads after its commit. */
#include "auth/locks.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "auth/auth.h"
#include "state/state.h"

#define LOCK_FIELD_MAX AUTH_LOCK_FIELD_MAX

struct auth_locks {
    struct state *state;
    pthread_mutex_t mu;
    uint64_t changed; /* state_resources_changed() the set was built at; 0: never built */
    struct auth_lock *entries;
    size_t n;
    /* The host ids of the auth_server records, read with the locks: membership and
     * locks are what cut an auth server's identities off. */
    char (*members)[LOCK_FIELD_MAX];
    size_t n_members;
};

int auth_locks_new(struct auth_locks **out, struct state *state)
{
    struct auth_locks *l = calloc(1, sizeof *l);
    if (l == NULL)
        return rp_err(RP_ENOMEM, "lock cache");
    l->state = state;
    pthread_mutex_init(&l->mu, NULL);
    *out = l;
    return 0;
}

void auth_locks_free(struct auth_locks *l)
{
    if (l == NULL)
        return;
    pthread_mutex_destroy(&l->mu);
    free(l->entries);
    free(l->members);
    free(l);
}

/* Copies the string @key of @map into @out; false if it is present but not a string
 * that fits (a NUL inside or too long). Absent: "" and true. */
static bool copy_field(const msgpack_object *map, const char *key, char *out)
{
    const char *s;
    size_t n;
    out[0] = '\0';
    const msgpack_object *o = map ? rp_mp_get(map, key) : NULL;
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return true;
    if (rp_mp_get_str(map, key, &s, &n) != 0 || n >= LOCK_FIELD_MAX || memchr(s, '\0', n) != NULL)
        return false;
    memcpy(out, s, n);
    out[n] = '\0';
    return true;
}

int auth_lock_decode(const msgpack_object *res, struct auth_lock *e)
{
    memset(e, 0, sizeof *e);
    if (res == NULL || res->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "lock: expected a map");
    const msgpack_object *meta = rp_mp_get(res, "metadata");
    const msgpack_object *spec = rp_mp_get(res, "spec");
    const msgpack_object *target = spec ? rp_mp_get(spec, "target") : NULL;
    copy_field(meta, "name", e->name);
    if (target == NULL || target->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "lock %s: spec.target must be a map", e->name);
    bool ok = copy_field(target, "user", e->user) && copy_field(target, "role", e->role) &&
              copy_field(target, "login", e->login) &&
              copy_field(target, "server_id", e->server_id) &&
              copy_field(target, "node", e->node) &&
              copy_field(target, "access_request", e->access_request);
    if (!ok)
        return rp_err(RP_EINVAL, "lock %s: a spec.target field is not a string of at most %d bytes",
                      e->name, LOCK_FIELD_MAX - 1);
    copy_field(spec, "message", e->message);
    if (meta != NULL && rp_mp_get_u64(meta, "expires", &e->expires_ms) != 0)
        e->expires_ms = 0;
    if (!(e->user[0] || e->role[0] || e->login[0] || e->server_id[0] || e->node[0] ||
          e->access_request[0]))
        return rp_err(RP_EINVAL, "lock %s: spec.target sets no field", e->name);
    return 0;
}

static bool has(const char *const *list, size_t n, const char *want)
{
    for (size_t i = 0; i < n; i++)
        if (list[i] != NULL && strcmp(list[i], want) == 0)
            return true;
    return false;
}

static bool same(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

bool auth_lock_applies(const struct auth_lock *e, const struct auth_lock_subject *who,
                       uint64_t now_ms)
{
    if (e->expires_ms != 0 && e->expires_ms <= now_ms)
        return false;
    if (e->user[0] && !same(e->user, who->user))
        return false;
    if (e->role[0] && !(who->user && has(who->roles, who->n_roles, e->role)))
        return false;
    if (e->login[0] && !(who->user && has(who->logins, who->n_logins, e->login)))
        return false;
    if (e->server_id[0] && !same(e->server_id, who->host_id))
        return false;
    if (e->node[0] && !same(e->node, who->host_id) && !same(e->node, who->host_name))
        return false;
    /* Access requests do not exist yet: a lock on one matches no identity today. */
    if (e->access_request[0])
        return false;
    return true;
}

struct build {
    struct auth_lock *entries;
    size_t n, cap;
    int rv;
};

/* A stored lock that does not parse is skipped, not fatal: the write path admits
 * only well-formed locks, and one bad record must not unlock everyone else. */
static int build_cb(void *arg, const void *res, size_t len)
{
    struct build *b = arg;
    msgpack_unpacked u;
    if (rp_mp_parse(res, len, &u) != 0)
        return 0;
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        struct auth_lock *e = realloc(b->entries, cap * sizeof *e);
        if (e == NULL) {
            msgpack_unpacked_destroy(&u);
            b->rv = rp_err(RP_ENOMEM, "lock cache");
            return 1;
        }
        b->entries = e;
        b->cap = cap;
    }
    if (auth_lock_decode(&u.data, &b->entries[b->n]) == 0)
        b->n++;
    msgpack_unpacked_destroy(&u);
    return 0;
}

struct members {
    char (*names)[LOCK_FIELD_MAX];
    size_t n, cap;
    int rv;
};

static int member_cb(void *arg, const void *res, size_t len)
{
    struct members *m = arg;
    struct state_res_meta meta;
    if (state_resource_check(res, len, &meta) != 0 || meta.name_len >= LOCK_FIELD_MAX)
        return 0;
    if (m->n == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 8;
        char(*v)[LOCK_FIELD_MAX] = realloc(m->names, cap * sizeof *v);
        if (v == NULL) {
            m->rv = rp_err(RP_ENOMEM, "member cache");
            return 1;
        }
        m->names = v;
        m->cap = cap;
    }
    memcpy(m->names[m->n], meta.name, meta.name_len);
    m->names[m->n][meta.name_len] = '\0';
    m->n++;
    return 0;
}

/* Rebuilds the sets if the state changed since; called with l->mu held. */
static int refresh(struct auth_locks *l)
{
    uint64_t changed = state_resources_changed(l->state);
    if (l->changed != 0 && changed == l->changed)
        return 0;
    struct build b = {0};
    struct members m = {0};
    int rv = state_list(l->state, AUTH_KIND_LOCK, NULL, 0, build_cb, &b, NULL);
    if (rv == 0)
        rv = b.rv;
    if (rv == 0)
        rv = state_list(l->state, AUTH_KIND_AUTH_SERVER, NULL, 0, member_cb, &m, NULL);
    if (rv == 0)
        rv = m.rv;
    if (rv != 0) {
        free(b.entries);
        free(m.names);
        return rp_err(rv, "reading locks and members: %s", rp_errmsg());
    }
    free(l->entries);
    free(l->members);
    l->entries = b.entries;
    l->n = b.n;
    l->members = m.names;
    l->n_members = m.n;
    l->changed = changed;
    return 0;
}

int auth_locks_check_member(struct auth_locks *l, const char *host_id)
{
    pthread_mutex_lock(&l->mu);
    int rv = refresh(l);
    bool found = l->n_members == 0; /* no record at all: bootstrap records not written yet */
    for (size_t i = 0; rv == 0 && !found && i < l->n_members; i++)
        found = strcmp(l->members[i], host_id) == 0;
    pthread_mutex_unlock(&l->mu);
    if (rv != 0)
        return rv;
    return found ? 0 : RP_ENOTFOUND;
}

int auth_locks_check(struct auth_locks *l, const struct rp_identity *id, char *why, size_t n)
{
    if (id == NULL)
        return 0;
    uint64_t now = rp_now_ms();
    bool user = id->system_role == RP_SYS_NONE;
    struct auth_lock_subject who = {
        .user = user ? id->name : NULL,
        .roles = (const char *const *)id->groups,
        .n_roles = user ? id->n_groups : 0,
        .logins = (const char *const *)id->logins,
        .n_logins = user ? id->n_logins : 0,
        .host_id = user ? NULL : id->host_id,
        .host_name = user ? NULL : id->name,
    };
    pthread_mutex_lock(&l->mu);
    int rv = refresh(l);
    for (size_t i = 0; rv == 0 && i < l->n; i++) {
        const struct auth_lock *e = &l->entries[i];
        if (auth_lock_applies(e, &who, now)) {
            snprintf(why, n, "%s is locked (lock %s)%s%s", id->name, e->name,
                     e->message[0] ? ": " : "", e->message);
            rv = RP_EDENIED;
        }
    }
    pthread_mutex_unlock(&l->mu);
    if (rv == RP_EDENIED)
        return rp_err(RP_EDENIED, "access denied: %s", why);
    if (rv != 0)
        snprintf(why, n, "%s", rp_errmsg());
    return rv;
}
