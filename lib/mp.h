/* lib/mp.h: msgpack helpers over msgpack-c.
 *
 * Decoding untrusted bytes always starts with rp_mp_parse(), which first walks
 * the bytes with the bounded reader and refuses anything whose declared
 * array/map/string sizes exceed what is actually there, nests deeper than
 * RP_MP_MAX_DEPTH, holds more than RP_MP_MAX_ELEMENTS elements in all, or has
 * trailing bytes, before msgpack-c allocates. */
#ifndef RP_MP_H
#define RP_MP_H

#include <msgpack.h>
#include <stdbool.h>
#include <stdint.h>

#include "lib/buf.h"

#define RP_MP_MAX_DEPTH 32
#define RP_MP_MAX_ELEMENTS (1u << 20) /* array elements plus map keys and values */

/* A packer that appends to @b. */
void rp_mp_packer_init(msgpack_packer *pk, struct rp_buf *b);

void rp_mp_pack_str(msgpack_packer *pk, const char *s); /* NULL packs nil */
void rp_mp_pack_strn(msgpack_packer *pk, const char *s, size_t n);
void rp_mp_kv_str(msgpack_packer *pk, const char *key, const char *val);
void rp_mp_kv_u64(msgpack_packer *pk, const char *key, uint64_t val);
void rp_mp_kv_i64(msgpack_packer *pk, const char *key, int64_t val);
void rp_mp_kv_bool(msgpack_packer *pk, const char *key, bool val);
/* Packs key then the raw, already-encoded msgpack object @raw (@n bytes). */
void rp_mp_kv_raw(msgpack_packer *pk, const char *key, const void *raw, size_t n);

/* A map whose entries are counted as they are packed, so that no count is kept by
 * hand beside the code that decides which keys go in:
 *
 *   struct rp_mp_map m, spec;
 *   rp_mp_map_begin(&pk, &m);
 *   rp_mp_map_str(&m, "kind", "lock");
 *   if (ttl)
 *       rp_mp_map_u64(&m, "ttl_ms", ttl);
 *   rp_mp_map_begin_map(&m, "spec", &spec);
 *   ...
 *   rp_mp_map_end(&spec);
 *   rp_mp_map_end(&m);
 *
 * @pk must append to an rp_buf (rp_mp_packer_init). begin writes a map32 header
 * with a zero count; end writes the count and shrinks the header to the smallest
 * form (fixmap, map16), so the bytes are exactly what msgpack_pack_map with the
 * right count would have produced. Maps nest: end them in the reverse order of
 * their begins (end moves the map's bytes, which must be the buffer's tail).
 * A builder holds no memory of its own; there is nothing to free. */
struct rp_mp_map {
    msgpack_packer *pk;
    struct rp_buf *b;
    size_t header_at; /* offset of the map32 header in b */
    uint32_t count;   /* entries packed so far */
};

void rp_mp_map_begin(msgpack_packer *pk, struct rp_mp_map *m);
/* Begins map @child as the value of @key in @parent (one entry of @parent). */
void rp_mp_map_begin_map(struct rp_mp_map *parent, const char *key, struct rp_mp_map *child);
/* Packs @key and counts one entry: the caller packs exactly one value next, with
 * the returned packer (for arrays and values the typed helpers do not cover). */
msgpack_packer *rp_mp_map_key(struct rp_mp_map *m, const char *key);
void rp_mp_map_str(struct rp_mp_map *m, const char *key, const char *val); /* NULL: nil */
void rp_mp_map_strn(struct rp_mp_map *m, const char *key, const char *val, size_t n);
void rp_mp_map_u64(struct rp_mp_map *m, const char *key, uint64_t val);
void rp_mp_map_i64(struct rp_mp_map *m, const char *key, int64_t val);
void rp_mp_map_bool(struct rp_mp_map *m, const char *key, bool val);
/* @raw: one already-encoded msgpack object of @n bytes. */
void rp_mp_map_raw(struct rp_mp_map *m, const char *key, const void *raw, size_t n);
/* Writes the count. Returns the number of entries. */
uint32_t rp_mp_map_end(struct rp_mp_map *m);

/* Checks that @data holds exactly one well-formed msgpack object within the limits
 * above, then unpacks it into @out (caller calls msgpack_unpacked_destroy on success).
 * Returns 0 or RP_EINVAL with a message naming the offset and the problem. */
int rp_mp_parse(const void *data, size_t len, msgpack_unpacked *out);
/* The structural check alone. */
int rp_mp_validate(const void *data, size_t len);

/* Map lookups. rp_mp_get returns NULL if @map is not a map or lacks @key. */
const msgpack_object *rp_mp_get(const msgpack_object *map, const char *key);
/* Typed lookups: 0, RP_ENOTFOUND if absent (or nil), RP_EINVAL if of another type
 * (message names the key and the expected type). Strings are borrowed, not NUL-terminated. */
int rp_mp_get_str(const msgpack_object *map, const char *key, const char **s, size_t *n);
int rp_mp_get_u64(const msgpack_object *map, const char *key, uint64_t *v);
int rp_mp_get_bool(const msgpack_object *map, const char *key, bool *v);
/* Copies a string field into a fresh NUL-terminated string (free() it). Refuses embedded NULs. */
int rp_mp_get_strdup(const msgpack_object *map, const char *key, char **out);
/* True if @o is a str equal to @s. */
bool rp_mp_str_eq(const msgpack_object *o, const char *s);
/* Re-encodes @o (e.g. a sub-object of a parsed message) into @b. */
int rp_mp_pack_object(struct rp_buf *b, const msgpack_object *o);

#endif
