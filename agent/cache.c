/* agent/cache.c: the node's copy of what it needs from auth, in memory and on disk.
 *
 * Items are immutable once stored: a put replaces the item, so a reader holding a
 * parsed view of an old item is never disturbed. Derived views (user CA keys, decoded
 * locks) are rebuilt under the lock after each change; roles are parsed when a login
 * asks for them and kept with their item. A role set handed out borrows its parsed
 * roles (auth/rbac.h), so a replaced role's parse is retired, not freed, until the
 * cache goes: role changes are admin actions, few over an agent's life. */
#include "agent/cache.h"

#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/locks.h"
#include "auth/rbac.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "lib/yaml_mp.h"

#define MAGIC "RPAGCACH"
#define FORMAT_VERSION 1
#define HEADER_LEN 56
#define NAME_MAX_LEN 253
#define MAX_WATCHERS 16

struct item {
    char kind[32];
    char name[NAME_MAX_LEN + 1];
    uint8_t *res;
    size_t len;
    struct rbac_role *role; /* kind role: parsed on first use (NULL until then) */
};

struct watcher {
    void (*fn)(void *);
    void *arg;
};

struct agent_cache {
    pthread_mutex_t mu;
    char *path; /* DIR/cache, NULL in memory */
    struct item *items;
    size_t n, cap;
    uint64_t rev;
    bool from_disk;
    bool dirty; /* a change not yet on disk (a write failed) */
    /* derived views */
    EVP_PKEY **user_cas;
    size_t n_user_cas;
    struct auth_lock *locks;
    size_t n_locks;
    struct rbac_role **retired;
    size_t n_retired, cap_retired;
    struct agent_labels labels;
    pthread_mutex_t watch_mu;
    struct watcher watchers[MAX_WATCHERS];
    size_t n_watchers;
};

/* A node follows the first four; a proxy all of them (agent_follow_proxy_kinds). */
static const char *const kinds_kept[] = {"cert_authority", "role",  "lock", "cluster_name",
                                         "node",           "proxy", "user"};

bool agent_cache_kind_ok(const char *kind)
{
    for (size_t i = 0; i < sizeof kinds_kept / sizeof kinds_kept[0]; i++)
        if (strcmp(kind, kinds_kept[i]) == 0)
            return true;
    return false;
}

static void retire_role(struct agent_cache *c, struct rbac_role *role)
{
    if (role == NULL)
        return;
    if (c->n_retired == c->cap_retired) {
        size_t cap = c->cap_retired ? c->cap_retired * 2 : 8;
        struct rbac_role **v = realloc(c->retired, cap * sizeof *v);
        if (v == NULL) {
            /* Leaking is safer than freeing a role a set may still borrow. */
            rp_warn("agent", "cache: out of memory retiring a parsed role");
            return;
        }
        c->retired = v;
        c->cap_retired = cap;
    }
    c->retired[c->n_retired++] = role;
}

static void item_free(struct agent_cache *c, struct item *it)
{
    retire_role(c, it->role);
    free(it->res);
    memset(it, 0, sizeof *it);
}

static void free_views(struct agent_cache *c)
{
    for (size_t i = 0; i < c->n_user_cas; i++)
        EVP_PKEY_free(c->user_cas[i]);
    free(c->user_cas);
    c->user_cas = NULL;
    c->n_user_cas = 0;
    free(c->locks);
    c->locks = NULL;
    c->n_locks = 0;
}

/* Adds every public_key of @keys (an array of {public_key, ...}) to the user CA list. */
static void add_ca_keys(struct agent_cache *c, const msgpack_object *keys)
{
    if (keys == NULL || keys->type != MSGPACK_OBJECT_ARRAY)
        return;
    for (uint32_t i = 0; i < keys->via.array.size; i++) {
        const char *s;
        size_t n;
        char line[8192];
        if (rp_mp_get_str(&keys->via.array.ptr[i], "public_key", &s, &n) != 0 || n >= sizeof line ||
            memchr(s, '\0', n) != NULL)
            continue;
        memcpy(line, s, n);
        line[n] = '\0';
        EVP_PKEY *k = NULL;
        if (rp_ssh_pubkey_parse(line, &k, NULL) != 0) {
            rp_warn("agent", "cache: cert_authority/user holds a key that does not parse: %s",
                    rp_errmsg());
            continue;
        }
        EVP_PKEY **v = realloc(c->user_cas, (c->n_user_cas + 1) * sizeof *v);
        if (v == NULL) {
            EVP_PKEY_free(k);
            return;
        }
        c->user_cas = v;
        c->user_cas[c->n_user_cas++] = k;
    }
}

/* Whether the derived views read items of @kind: a proxy's cache changes with every
 * node heartbeat, and those need no rebuild. */
static bool views_read(const char *kind)
{
    return strcmp(kind, "cert_authority") == 0 || strcmp(kind, "lock") == 0;
}

/* Rebuilds the user CA keys and the decoded locks from the items; with c->mu held. */
static void rebuild_views(struct agent_cache *c)
{
    free_views(c);
    for (size_t i = 0; i < c->n; i++) {
        struct item *it = &c->items[i];
        bool ca = strcmp(it->kind, "cert_authority") == 0 && strcmp(it->name, "user") == 0;
        bool lock = strcmp(it->kind, "lock") == 0;
        if (!ca && !lock)
            continue;
        msgpack_unpacked u;
        if (rp_mp_parse(it->res, it->len, &u) != 0)
            continue; /* checked when stored */
        if (ca) {
            const msgpack_object *spec = rp_mp_get(&u.data, "spec");
            /* Active keys sign; additional trusted keys are still accepted during a
             * rotation, so certificates of the outgoing CA keep working until its end. */
            add_ca_keys(c, rp_mp_get(rp_mp_get(spec, "active_keys"), "ssh"));
            add_ca_keys(c, rp_mp_get(rp_mp_get(spec, "additional_trusted_keys"), "ssh"));
        } else {
            struct auth_lock *v = realloc(c->locks, (c->n_locks + 1) * sizeof *v);
            if (v != NULL) {
                c->locks = v;
                if (auth_lock_decode(&u.data, &c->locks[c->n_locks]) == 0)
                    c->n_locks++;
                else
                    rp_warn("agent", "cache: lock %s is ignored: %s", it->name, rp_errmsg());
            }
        }
        msgpack_unpacked_destroy(&u);
    }
}

int agent_cache_open(struct agent_cache **out, const char *dir)
{
    struct agent_cache *c = calloc(1, sizeof *c);
    *out = NULL;
    if (c == NULL)
        return rp_err(RP_ENOMEM, "agent cache");
    pthread_mutex_init(&c->mu, NULL);
    pthread_mutex_init(&c->watch_mu, NULL);
    *out = c;
    if (dir == NULL)
        return 0;
    if (asprintf(&c->path, "%s/%s", dir, AGENT_CACHE_FILE) < 0) {
        c->path = NULL;
        agent_cache_free(c);
        *out = NULL;
        return rp_err(RP_ENOMEM, "agent cache");
    }
    if (!rp_file_exists(c->path))
        return 0;
    char *buf = NULL;
    size_t n = 0;
    int rv = rp_read_file(c->path, AGENT_CACHE_MAX_BYTES, &buf, &n);
    if (rv == 0)
        rv = agent_cache_load_bytes(c, buf, n);
    free(buf);
    if (rv != 0)
        return rp_err(rv, "%s: %s", c->path, rp_errmsg());
    c->from_disk = true;
    return 0;
}

static void clear_items(struct agent_cache *c)
{
    for (size_t i = 0; i < c->n; i++)
        item_free(c, &c->items[i]);
    free(c->items);
    c->items = NULL;
    c->n = c->cap = 0;
}

void agent_cache_free(struct agent_cache *c)
{
    if (c == NULL)
        return;
    clear_items(c);
    free_views(c);
    for (size_t i = 0; i < c->n_retired; i++)
        rbac_role_free(c->retired[i]);
    free(c->retired);
    agent_labels_free(&c->labels);
    free(c->path);
    pthread_mutex_destroy(&c->mu);
    pthread_mutex_destroy(&c->watch_mu);
    free(c);
}

/* Checks that @res is one msgpack map of @kind named @name. */
static int check_resource(const char *kind, const char *name, const void *res, size_t len)
{
    if (!agent_cache_kind_ok(kind))
        return rp_err(RP_EINVAL, "kind '%.64s' is not one the node cache keeps", kind);
    size_t nl = strlen(name);
    if (nl == 0 || nl > NAME_MAX_LEN)
        return rp_err(RP_EINVAL, "%s: a name of 1 to %d bytes is required", kind, NAME_MAX_LEN);
    msgpack_unpacked u;
    int rv = rp_mp_parse(res, len, &u);
    if (rv != 0)
        return rp_err(rv, "%s/%s: %s", kind, name, rp_errmsg());
    const msgpack_object *meta = rp_mp_get(&u.data, "metadata");
    if (u.data.type != MSGPACK_OBJECT_MAP || !rp_mp_str_eq(rp_mp_get(&u.data, "kind"), kind) ||
        !rp_mp_str_eq(rp_mp_get(meta, "name"), name))
        rv = rp_err(RP_EINVAL,
                    "%s/%s: the resource is not a map with that kind and "
                    "metadata.name",
                    kind, name);
    msgpack_unpacked_destroy(&u);
    return rv;
}

static struct item *find(struct agent_cache *c, const char *kind, const char *name)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->items[i].kind, kind) == 0 && strcmp(c->items[i].name, name) == 0)
            return &c->items[i];
    return NULL;
}

/* Stores a copy of a checked resource; with c->mu held. */
static int store(struct agent_cache *c, const char *kind, const char *name, const void *res,
                 size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (copy == NULL)
        return rp_err(RP_ENOMEM, "agent cache");
    memcpy(copy, res, len);
    struct item *it = find(c, kind, name);
    if (it != NULL) {
        item_free(c, it);
    } else {
        if (c->n == AGENT_CACHE_MAX_ITEMS) {
            free(copy);
            return rp_err(RP_ETOOBIG, "agent cache: more than %d items", AGENT_CACHE_MAX_ITEMS);
        }
        if (c->n == c->cap) {
            size_t cap = c->cap ? c->cap * 2 : 32;
            struct item *v = realloc(c->items, cap * sizeof *v);
            if (v == NULL) {
                free(copy);
                return rp_err(RP_ENOMEM, "agent cache");
            }
            c->items = v;
            c->cap = cap;
        }
        it = &c->items[c->n++];
    }
    memset(it, 0, sizeof *it);
    snprintf(it->kind, sizeof it->kind, "%s", kind);
    snprintf(it->name, sizeof it->name, "%s", name);
    it->res = copy;
    it->len = len;
    return 0;
}

/* ---- the file ------------------------------------------------------------------- */

static int sha256(const void *p, size_t n, unsigned char out[32])
{
    unsigned int len = 0;
    if (EVP_Digest(p, n, out, &len, EVP_sha256(), NULL) != 1 || len != 32)
        return rp_err(RP_ENOMEM, "SHA-256 failed");
    return 0;
}

/* Encodes with c->mu held. */
static int encode_locked(struct agent_cache *c, struct rp_buf *out)
{
    struct rp_buf payload;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&payload);
    rp_mp_packer_init(&pk, &payload);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_u64(&m, "rev", c->rev);
    rp_mp_map_u64(&m, "saved", rp_now_ms());
    msgpack_pack_array(rp_mp_map_key(&m, "items"), (uint32_t)c->n);
    for (size_t i = 0; i < c->n; i++) {
        msgpack_pack_array(&pk, 3);
        rp_mp_pack_str(&pk, c->items[i].kind);
        rp_mp_pack_str(&pk, c->items[i].name);
        msgpack_pack_bin(&pk, c->items[i].len);
        msgpack_pack_bin_body(&pk, c->items[i].res, c->items[i].len);
    }
    rp_mp_map_end(&m);
    unsigned char sum[32];
    int rv = sha256(payload.data, payload.len, sum);
    if (rv == 0) {
        rv = rp_buf_append(out, MAGIC, 8);
        if (rv == 0)
            rv = rp_buf_put_be32(out, FORMAT_VERSION);
        if (rv == 0)
            rv = rp_buf_put_be32(out, 0);
        if (rv == 0)
            rv = rp_buf_put_be64(out, payload.len);
        if (rv == 0)
            rv = rp_buf_append(out, sum, 32);
        if (rv == 0)
            rv = rp_buf_append(out, payload.data, payload.len);
    }
    rp_buf_free(&payload);
    return rv;
}

int agent_cache_encode(struct agent_cache *c, struct rp_buf *out)
{
    pthread_mutex_lock(&c->mu);
    int rv = encode_locked(c, out);
    pthread_mutex_unlock(&c->mu);
    return rv;
}

/* Writes the file; with c->mu held. */
static int persist(struct agent_cache *c)
{
    if (c->path == NULL)
        return 0;
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = encode_locked(c, &b);
    if (rv == 0 && b.len > AGENT_CACHE_MAX_BYTES)
        rv = rp_err(RP_ETOOBIG, "the cache (%zu bytes) exceeds %u bytes", b.len,
                    AGENT_CACHE_MAX_BYTES);
    if (rv == 0)
        rv = rp_write_file(c->path, b.data, b.len, 0600);
    rp_buf_free(&b);
    c->dirty = rv != 0;
    if (rv != 0)
        rp_warn("agent", "cache: writing %s: %s (kept in memory)", c->path, rp_errmsg());
    return rv;
}

/* Parses one item [kind, name, res] of a loaded file into the cache. */
static int load_item(struct agent_cache *c, const msgpack_object *o, uint32_t i)
{
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 3)
        return rp_err(RP_EINVAL, "item %u: expected [kind, name, resource]", i);
    const msgpack_object *k = &o->via.array.ptr[0], *nm = &o->via.array.ptr[1],
                         *r = &o->via.array.ptr[2];
    if (k->type != MSGPACK_OBJECT_STR || k->via.str.size == 0 || k->via.str.size >= 32 ||
        nm->type != MSGPACK_OBJECT_STR || nm->via.str.size == 0 ||
        nm->via.str.size > NAME_MAX_LEN || r->type != MSGPACK_OBJECT_BIN ||
        memchr(k->via.str.ptr, '\0', k->via.str.size) != NULL ||
        memchr(nm->via.str.ptr, '\0', nm->via.str.size) != NULL)
        return rp_err(RP_EINVAL,
                      "item %u: expected a kind, a name (1 to %d bytes) and a "
                      "resource (bin)",
                      i, NAME_MAX_LEN);
    char kind[32], name[NAME_MAX_LEN + 1];
    memcpy(kind, k->via.str.ptr, k->via.str.size);
    kind[k->via.str.size] = '\0';
    memcpy(name, nm->via.str.ptr, nm->via.str.size);
    name[nm->via.str.size] = '\0';
    if (find(c, kind, name) != NULL)
        return rp_err(RP_EINVAL, "item %u: %s/%s is stored twice", i, kind, name);
    int rv = check_resource(kind, name, r->via.bin.ptr, r->via.bin.size);
    if (rv != 0)
        return rp_err(rv, "item %u: %s", i, rp_errmsg());
    return store(c, kind, name, r->via.bin.ptr, r->via.bin.size);
}

int agent_cache_load_bytes(struct agent_cache *c, const void *p, size_t n)
{
    const uint8_t *b = p;
    struct rp_rd rd;
    uint32_t version = 0, reserved = 0;
    uint64_t len = 0;
    const uint8_t *magic, *sum;
    if (n > AGENT_CACHE_MAX_BYTES)
        return rp_err(RP_EINVAL, "cache file of %zu bytes exceeds %u", n, AGENT_CACHE_MAX_BYTES);
    rp_rd_init(&rd, b, n);
    if (rp_rd_bytes(&rd, 8, &magic) != 0 || memcmp(magic, MAGIC, 8) != 0)
        return rp_err(RP_EINVAL, "not a node cache file (bad magic)");
    if (rp_rd_be32(&rd, &version) != 0 || rp_rd_be32(&rd, &reserved) != 0 ||
        rp_rd_be64(&rd, &len) != 0 || rp_rd_bytes(&rd, 32, &sum) != 0)
        return rp_err(RP_EINVAL, "cache file truncated in its %d-byte header", HEADER_LEN);
    if (version != FORMAT_VERSION || reserved != 0)
        return rp_err(RP_EINVAL, "cache file format %u, expected %d", version, FORMAT_VERSION);
    if (len != rp_rd_left(&rd))
        return rp_err(RP_EINVAL,
                      "cache file holds %zu payload bytes, its header says %llu "
                      "(truncated or appended to)",
                      rp_rd_left(&rd), (unsigned long long)len);
    const uint8_t *payload = b + HEADER_LEN;
    unsigned char got[32];
    int rv = sha256(payload, (size_t)len, got);
    if (rv != 0)
        return rv;
    if (memcmp(got, sum, 32) != 0)
        return rp_err(RP_EINVAL, "cache file checksum mismatch (corrupted)");
    msgpack_unpacked u;
    if ((rv = rp_mp_parse(payload, (size_t)len, &u)) != 0)
        return rp_err(rv, "cache payload: %s", rp_errmsg());
    uint64_t rev = 0;
    const msgpack_object *items = rp_mp_get(&u.data, "items");
    if (u.data.type != MSGPACK_OBJECT_MAP || rp_mp_get_u64(&u.data, "rev", &rev) == RP_EINVAL ||
        items == NULL || items->type != MSGPACK_OBJECT_ARRAY ||
        items->via.array.size > AGENT_CACHE_MAX_ITEMS) {
        msgpack_unpacked_destroy(&u);
        return rp_err(RP_EINVAL,
                      "cache payload: expected {rev, saved, items: [...]} with at "
                      "most %d items",
                      AGENT_CACHE_MAX_ITEMS);
    }
    /* Built aside, then swapped in: a file refused half-way changes nothing. */
    struct agent_cache *tmp;
    if ((rv = agent_cache_open(&tmp, NULL)) != 0) {
        msgpack_unpacked_destroy(&u);
        return rv;
    }
    for (uint32_t i = 0; rv == 0 && i < items->via.array.size; i++)
        rv = load_item(tmp, &items->via.array.ptr[i], i);
    msgpack_unpacked_destroy(&u);
    if (rv == 0)
        rv = agent_cache_replace(c, tmp, rev);
    agent_cache_free(tmp);
    return rv;
}

/* ---- changes ---------------------------------------------------------------------- */

static void announce(struct agent_cache *c)
{
    pthread_mutex_lock(&c->watch_mu);
    for (size_t i = 0; i < c->n_watchers; i++)
        c->watchers[i].fn(c->watchers[i].arg);
    pthread_mutex_unlock(&c->watch_mu);
}

int agent_cache_put_rev(struct agent_cache *c, const char *kind, const char *name, const void *res,
                        size_t len, uint64_t rev)
{
    int rv = check_resource(kind, name, res, len);
    if (rv != 0)
        return rv;
    pthread_mutex_lock(&c->mu);
    rv = store(c, kind, name, res, len);
    if (rv == 0) {
        if (rev > c->rev)
            c->rev = rev;
        if (views_read(kind))
            rebuild_views(c);
        rv = persist(c);
    }
    pthread_mutex_unlock(&c->mu);
    announce(c);
    return rv;
}

int agent_cache_put(struct agent_cache *c, const char *kind, const char *name, const void *res,
                    size_t len)
{
    return agent_cache_put_rev(c, kind, name, res, len, 0);
}

int agent_cache_delete(struct agent_cache *c, const char *kind, const char *name, uint64_t rev)
{
    pthread_mutex_lock(&c->mu);
    struct item *it = find(c, kind, name);
    int rv = 0;
    if (it != NULL) {
        item_free(c, it);
        *it = c->items[--c->n];
        memset(&c->items[c->n], 0, sizeof c->items[c->n]);
    }
    if (rev > c->rev)
        c->rev = rev;
    if (it != NULL || c->dirty) {
        if (views_read(kind))
            rebuild_views(c);
        rv = persist(c);
    }
    pthread_mutex_unlock(&c->mu);
    if (it != NULL)
        announce(c);
    return rv;
}

int agent_cache_replace(struct agent_cache *c, struct agent_cache *staging, uint64_t rev)
{
    pthread_mutex_lock(&staging->mu);
    struct item *items = staging->items;
    size_t n = staging->n, cap = staging->cap;
    staging->items = NULL;
    staging->n = staging->cap = 0;
    pthread_mutex_unlock(&staging->mu);

    pthread_mutex_lock(&c->mu);
    clear_items(c);
    c->items = items;
    c->n = n;
    c->cap = cap;
    c->rev = rev;
    c->from_disk = false;
    rebuild_views(c);
    int rv = persist(c);
    pthread_mutex_unlock(&c->mu);
    announce(c);
    return rv;
}

/* ---- reads ------------------------------------------------------------------------- */

uint64_t agent_cache_rev(struct agent_cache *c)
{
    pthread_mutex_lock(&c->mu);
    uint64_t rev = c->rev;
    pthread_mutex_unlock(&c->mu);
    return rev;
}

bool agent_cache_from_disk(struct agent_cache *c)
{
    pthread_mutex_lock(&c->mu);
    bool d = c->from_disk;
    pthread_mutex_unlock(&c->mu);
    return d;
}

size_t agent_cache_count(struct agent_cache *c, const char *kind)
{
    size_t n = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n; i++)
        n += kind == NULL || strcmp(c->items[i].kind, kind) == 0;
    pthread_mutex_unlock(&c->mu);
    return n;
}

int agent_cache_get(struct agent_cache *c, const char *kind, const char *name, void **res,
                    size_t *len)
{
    int rv = 0;
    pthread_mutex_lock(&c->mu);
    struct item *it = find(c, kind, name);
    if (it == NULL) {
        rv = rp_err(RP_ENOTFOUND, "%s/%s is not in the node cache", kind, name);
    } else if ((*res = malloc(it->len ? it->len : 1)) == NULL) {
        rv = rp_err(RP_ENOMEM, "agent cache");
    } else {
        memcpy(*res, it->res, it->len);
        *len = it->len;
    }
    pthread_mutex_unlock(&c->mu);
    return rv;
}

static int copy_labels(const struct agent_labels *src, struct agent_labels *dst)
{
    memset(dst, 0, sizeof *dst);
    if (src->n == 0)
        return 0;
    dst->items = calloc(src->n, sizeof *dst->items);
    if (dst->items == NULL)
        return rp_err(RP_ENOMEM, "labels");
    for (size_t i = 0; i < src->n; i++) {
        dst->items[i].name = strdup(src->items[i].name);
        dst->items[i].value = strdup(src->items[i].value);
        dst->n++;
        if (dst->items[i].name == NULL || dst->items[i].value == NULL) {
            agent_labels_free(dst);
            return rp_err(RP_ENOMEM, "labels");
        }
    }
    return 0;
}

int agent_cache_set_labels(struct agent_cache *c, const struct agent_labels *l)
{
    struct agent_labels copy;
    int rv = copy_labels(l, &copy);
    if (rv != 0)
        return rv;
    pthread_mutex_lock(&c->mu);
    agent_labels_free(&c->labels);
    c->labels = copy;
    pthread_mutex_unlock(&c->mu);
    return 0;
}

int agent_cache_lock_check(struct agent_cache *c, const char *user, const char *const *roles,
                           size_t n_roles, const char *login, const char *host_id, uint64_t now_ms,
                           char *why, size_t why_len)
{
    const char *logins[1] = {login};
    struct auth_lock_subject who = {.user = user,
                                    .roles = roles,
                                    .n_roles = n_roles,
                                    .logins = logins,
                                    .n_logins = login ? 1 : 0,
                                    .host_id = host_id};
    int rv = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < c->n_locks && rv == 0; i++) {
        const struct auth_lock *l = &c->locks[i];
        if (!auth_lock_applies(l, &who, now_ms))
            continue;
        /* Name what the lock targets, as auth does: the user, or the node. */
        const char *target = l->user[0] || l->role[0] || l->login[0] ? user : host_id;
        snprintf(why, why_len, "%s is locked (lock %s)%s%s", target ? target : "", l->name,
                 l->message[0] ? ": " : "", l->message);
        rv = RP_EDENIED;
    }
    pthread_mutex_unlock(&c->mu);
    if (rv != 0)
        return rp_err(rv, "access denied: %s", why);
    return 0;
}

/* ---- the authority ------------------------------------------------------------------ */

static int a_user_cas(void *arg, EVP_PKEY ***keys, size_t *n)
{
    struct agent_cache *c = arg;
    int rv = 0;
    *keys = NULL;
    *n = 0;
    pthread_mutex_lock(&c->mu);
    if (c->n_user_cas == 0) {
        rv = rp_err(RP_ENOTFOUND, "no user CA is known to this node (not joined, or its cache "
                                  "is empty)");
    } else if ((*keys = calloc(c->n_user_cas, sizeof **keys)) == NULL) {
        rv = rp_err(RP_ENOMEM, "user CA keys");
    } else {
        for (size_t i = 0; i < c->n_user_cas; i++) {
            EVP_PKEY_up_ref(c->user_cas[i]);
            (*keys)[i] = c->user_cas[i];
        }
        *n = c->n_user_cas;
    }
    pthread_mutex_unlock(&c->mu);
    return rv;
}

/* The parsed role @name, parsing it on first use; with c->mu held. */
static int role_locked(struct agent_cache *c, const char *name, struct rbac_role **out)
{
    struct item *it = find(c, "role", name);
    if (it == NULL)
        return rp_err(RP_ENOTFOUND, "role '%s' is not known to this node", name);
    if (it->role == NULL) {
        msgpack_unpacked u;
        int rv = rp_mp_parse(it->res, it->len, &u);
        if (rv == 0) {
            rv = rbac_role_parse(&u.data, &it->role);
            msgpack_unpacked_destroy(&u);
        }
        if (rv != 0)
            return rp_err(rv, "role '%s' in the node cache: %s", name, rp_errmsg());
    }
    *out = it->role;
    return 0;
}

static int a_role_set(void *arg, const char *const *roles, size_t n_roles, const char *traits_json,
                      struct rbac_set **out, char *why, size_t why_len)
{
    struct agent_cache *c = arg;
    struct rp_buf traits;
    msgpack_unpacked tu;
    bool have_traits = false;
    int rv = 0;
    *out = NULL;
    rp_buf_init(&traits);
    if (traits_json != NULL && traits_json[0] != '\0') {
        /* JSON is YAML: the YAML reader turns the extension into msgpack for rbac. */
        struct rp_ymp_lines lines;
        rp_ymp_lines_init(&lines);
        rv = rp_ymp_parse_str("teleport-traits", traits_json, strlen(traits_json), &traits, &lines);
        rp_ymp_lines_free(&lines);
        if (rv == 0 && (rv = rp_mp_parse(traits.data, traits.len, &tu)) == 0)
            have_traits = true;
        if (rv != 0) {
            snprintf(why, why_len, "the certificate's traits do not parse: %s", rp_errmsg());
            rp_buf_free(&traits);
            return rp_err(RP_EINVAL, "%s", why);
        }
    }
    rv = agent_cache_role_set(c, roles, n_roles, have_traits ? &tu.data : NULL, out, why, why_len);
    if (have_traits)
        msgpack_unpacked_destroy(&tu);
    rp_buf_free(&traits);
    return rv;
}

int agent_cache_role_set(struct agent_cache *c, const char *const *roles, size_t n_roles,
                         const msgpack_object *traits, struct rbac_set **out, char *why,
                         size_t why_len)
{
    struct rbac_role **parsed = NULL;
    int rv = 0;
    *out = NULL;
    if (n_roles > 0 && (parsed = calloc(n_roles, sizeof *parsed)) == NULL)
        return rp_err(RP_ENOMEM, "role set");
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; rv == 0 && i < n_roles; i++)
        rv = role_locked(c, roles[i], &parsed[i]);
    /* Built under the lock: the parsed roles it borrows are retired, never freed,
     * while the cache lives. */
    if (rv == 0)
        rv = rbac_set_new(parsed, n_roles, traits, out);
    pthread_mutex_unlock(&c->mu);
    if (rv != 0)
        snprintf(why, why_len, "%s", rp_errmsg());
    free(parsed);
    return rv;
}

int agent_cache_each(struct agent_cache *c, const char *kind,
                     int (*fn)(void *arg, const char *name, const void *res, size_t len), void *arg)
{
    int rv = 0;
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; rv == 0 && i < c->n; i++)
        if (kind == NULL || strcmp(c->items[i].kind, kind) == 0)
            rv = fn(arg, c->items[i].name, c->items[i].res, c->items[i].len);
    pthread_mutex_unlock(&c->mu);
    return rv;
}

static int a_lock_check(void *arg, const char *user, const char *const *roles, size_t n_roles,
                        const char *login, const char *host_id, char *why, size_t why_len)
{
    return agent_cache_lock_check(arg, user, roles, n_roles, login, host_id, rp_now_ms(), why,
                                  why_len);
}

static int a_labels(void *arg, struct agent_labels *out)
{
    struct agent_cache *c = arg;
    pthread_mutex_lock(&c->mu);
    int rv = copy_labels(&c->labels, out);
    pthread_mutex_unlock(&c->mu);
    return rv;
}

static int a_on_change(void *arg, void (*fn)(void *), void *fn_arg)
{
    struct agent_cache *c = arg;
    int rv = 0;
    pthread_mutex_lock(&c->watch_mu);
    if (c->n_watchers == MAX_WATCHERS)
        rv = rp_err(RP_ENOMEM, "at most %d change callbacks", MAX_WATCHERS);
    else
        c->watchers[c->n_watchers++] = (struct watcher){fn, fn_arg};
    pthread_mutex_unlock(&c->watch_mu);
    return rv;
}

struct agent_authority agent_cache_authority(struct agent_cache *c)
{
    return (struct agent_authority){.arg = c,
                                    .user_cas = a_user_cas,
                                    .role_set = a_role_set,
                                    .lock_check = a_lock_check,
                                    .labels = a_labels,
                                    .on_change = a_on_change};
}
