/* agent/cache.h: what a node agent knows of its cluster, kept so that it can decide
 * logins while no auth server answers.
 *
 * The cache holds resources exactly as auth stores them (msgpack maps, with private
 * keys already removed by auth for Node identities) of the kinds a node needs:
 * cert_authority (the user CA keys certificates are checked against), role, lock and
 * cluster_name. agent/follow.c feeds it from a watch stream; tests feed it with
 * agent_cache_put. Every change is written to DIR/cache (when opened with a
 * directory) before it is announced, so a restarted agent starts with what it had.
 *
 * The file: a 56-byte header, then the payload.
 *   magic "RPAGCACH" (8) | format version u32 BE (1) | reserved u32 (0) |
 *   payload length u64 BE | SHA-256 of the payload (32)
 * Payload: a msgpack map {rev: u64, saved: u64 ms, items: [[kind, name, res bin]...]}.
 * Loading checks everything (it is an input from disk): header, length, checksum,
 * msgpack limits, each item's kind, name and resource (a map whose kind and
 * metadata.name agree with the item). A file that fails any check is refused whole
 * with RP_EINVAL naming what was wrong; the agent then starts empty.
 *
 * All functions are thread-safe. */
#ifndef RP_AGENT_CACHE_H
#define RP_AGENT_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/authority.h"

#define AGENT_CACHE_FILE "cache"
#define AGENT_CACHE_MAX_BYTES (64u << 20) /* a larger file is refused */
#define AGENT_CACHE_MAX_ITEMS 100000

struct agent_cache;

/* Opens the cache of directory @dir (NULL: in memory only, nothing persisted). If
 * @dir/cache exists it is loaded; a file that does not load is an error (RP_EINVAL,
 * RP_EIO; *@out is still a valid, empty cache that the caller may keep using, so an
 * agent logs the reason and goes on). RP_ENOMEM: *@out is NULL. */
int agent_cache_open(struct agent_cache **out, const char *dir);
void agent_cache_free(struct agent_cache *c); /* NULL is fine */

/* Loads @n bytes in the file format above into @c (replacing its content). Used by
 * agent_cache_open and by the fuzz target. RP_EINVAL with what was wrong. */
int agent_cache_load_bytes(struct agent_cache *c, const void *p, size_t n);
/* Encodes the content of @c in the file format into @out (rp_buf_init'ed). */
struct rp_buf;
int agent_cache_encode(struct agent_cache *c, struct rp_buf *out);

/* True if @kind is one the cache keeps. */
bool agent_cache_kind_ok(const char *kind);

/* Stores a copy of resource @res (@len bytes, one msgpack map) as @kind/@name, at
 * revision @rev (0: unknown), persists and announces it. RP_EINVAL if @kind is not
 * kept, @res is not a map naming @kind/@name; RP_EIO if it could not be written
 * (the change is then kept in memory and written with the next one). */
int agent_cache_put(struct agent_cache *c, const char *kind, const char *name, const void *res,
                    size_t len);
int agent_cache_put_rev(struct agent_cache *c, const char *kind, const char *name, const void *res,
                        size_t len, uint64_t rev);
/* Removes @kind/@name (absent: 0). */
int agent_cache_delete(struct agent_cache *c, const char *kind, const char *name, uint64_t rev);

/* A whole new content (a watch stream's init snapshot): the items of @staging (an
 * in-memory cache) replace those of @c in one step, then @c is persisted and
 * announced. @staging is emptied. */
int agent_cache_replace(struct agent_cache *c, struct agent_cache *staging, uint64_t rev);

/* The revision of the last change applied (0: none), and whether the content came
 * from disk and has not been confirmed by an auth server since. */
uint64_t agent_cache_rev(struct agent_cache *c);
bool agent_cache_from_disk(struct agent_cache *c);
/* Items of @kind (NULL: all). */
size_t agent_cache_count(struct agent_cache *c, const char *kind);
/* A copy of the resource @kind/@name into a malloc'd buffer (*@res, *@len; free it).
 * RP_ENOTFOUND if absent. */
int agent_cache_get(struct agent_cache *c, const char *kind, const char *name, void **res,
                    size_t *len);

/* Calls @fn for every item of @kind (NULL: all) with the item's name and resource
 * (borrowed for the call), under the cache's lock: @fn must not call into the cache.
 * Stops at the first non-zero return of @fn and returns it. */
int agent_cache_each(struct agent_cache *c, const char *kind,
                     int (*fn)(void *arg, const char *name, const void *res, size_t len),
                     void *arg);

/* The role set (auth/rbac.h) of a user holding @roles with @traits (a msgpack map of
 * trait -> [values], or NULL), from the cached roles; what the authority's role_set
 * does with a certificate's JSON traits. RP_ENOTFOUND naming a role not cached. */
int agent_cache_role_set(struct agent_cache *c, const char *const *roles, size_t n_roles,
                         const msgpack_object *traits, struct rbac_set **out, char *why,
                         size_t why_len);

/* This node's labels (what the authority's labels function answers). Copies @l. */
int agent_cache_set_labels(struct agent_cache *c, const struct agent_labels *l);

/* The lock check of agent/authority.h for this cache, at @now_ms. */
int agent_cache_lock_check(struct agent_cache *c, const char *user, const char *const *roles,
                           size_t n_roles, const char *login, const char *host_id, uint64_t now_ms,
                           char *why, size_t why_len);

/* The authority (agent/authority.h) over @c: valid as long as @c is. */
struct agent_authority agent_cache_authority(struct agent_cache *c);

#endif
