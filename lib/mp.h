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

void rp_mp_pack_str(msgpack_packer *pk, const char *s);     /* NULL packs nil */
void rp_mp_pack_strn(msgpack_packer *pk, const char *s, size_t n);
void rp_mp_kv_str(msgpack_packer *pk, const char *key, const char *val);
void rp_mp_kv_u64(msgpack_packer *pk, const char *key, uint64_t val);
void rp_mp_kv_i64(msgpack_packer *pk, const char *key, int64_t val);
void rp_mp_kv_bool(msgpack_packer *pk, const char *key, bool val);
/* Packs key then the raw, already-encoded msgpack object @raw (@n bytes). */
void rp_mp_kv_raw(msgpack_packer *pk, const char *key, const void *raw, size_t n);

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
