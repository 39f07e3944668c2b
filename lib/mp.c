/* lib/mp.c: msgpack helpers, and the structural check every untrusted
 * msgpack message passes before msgpack-c allocates anything for it. */
#include "lib/mp.h"

#include <string.h>

#include "lib/errors.h"

static int buf_write(void *data, const char *p, size_t n)
{
    return rp_buf_append(data, p, n) == 0 ? 0 : -1;
}

void rp_mp_packer_init(msgpack_packer *pk, struct rp_buf *b)
{
    msgpack_packer_init(pk, b, buf_write);
}

void rp_mp_pack_strn(msgpack_packer *pk, const char *s, size_t n)
{
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

void rp_mp_pack_str(msgpack_packer *pk, const char *s)
{
    if (s == NULL)
        msgpack_pack_nil(pk);
    else
        rp_mp_pack_strn(pk, s, strlen(s));
}

void rp_mp_kv_str(msgpack_packer *pk, const char *key, const char *val)
{
    rp_mp_pack_str(pk, key);
    rp_mp_pack_str(pk, val);
}

void rp_mp_kv_u64(msgpack_packer *pk, const char *key, uint64_t val)
{
    rp_mp_pack_str(pk, key);
    msgpack_pack_uint64(pk, val);
}

void rp_mp_kv_i64(msgpack_packer *pk, const char *key, int64_t val)
{
    rp_mp_pack_str(pk, key);
    msgpack_pack_int64(pk, val);
}

void rp_mp_kv_bool(msgpack_packer *pk, const char *key, bool val)
{
    rp_mp_pack_str(pk, key);
    if (val)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

void rp_mp_kv_raw(msgpack_packer *pk, const char *key, const void *raw, size_t n)
{
    rp_mp_pack_str(pk, key);
    /* The packer's callback appends bytes as they are: raw msgpack goes straight in. */
    pk->callback(pk->data, raw, n);
}

void rp_mp_map_begin(msgpack_packer *pk, struct rp_mp_map *m)
{
    /* Only a packer of ours knows where its bytes go, and the count is patched there. */
    m->pk = pk;
    m->b = pk->callback == buf_write ? pk->data : NULL;
    m->header_at = m->b != NULL ? m->b->len : 0;
    m->count = 0;
    static const char placeholder[5] = {(char)0xdf, 0, 0, 0, 0};
    pk->callback(pk->data, placeholder, sizeof placeholder);
}

void rp_mp_map_begin_map(struct rp_mp_map *parent, const char *key, struct rp_mp_map *child)
{
    rp_mp_map_begin(rp_mp_map_key(parent, key), child);
}

msgpack_packer *rp_mp_map_key(struct rp_mp_map *m, const char *key)
{
    rp_mp_pack_str(m->pk, key);
    m->count++;
    return m->pk;
}

void rp_mp_map_str(struct rp_mp_map *m, const char *key, const char *val)
{
    rp_mp_pack_str(rp_mp_map_key(m, key), val);
}

void rp_mp_map_strn(struct rp_mp_map *m, const char *key, const char *val, size_t n)
{
    rp_mp_pack_strn(rp_mp_map_key(m, key), val, n);
}

void rp_mp_map_u64(struct rp_mp_map *m, const char *key, uint64_t val)
{
    msgpack_pack_uint64(rp_mp_map_key(m, key), val);
}

void rp_mp_map_i64(struct rp_mp_map *m, const char *key, int64_t val)
{
    msgpack_pack_int64(rp_mp_map_key(m, key), val);
}

void rp_mp_map_bool(struct rp_mp_map *m, const char *key, bool val)
{
    msgpack_packer *pk = rp_mp_map_key(m, key);
    if (val)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

void rp_mp_map_raw(struct rp_mp_map *m, const char *key, const void *raw, size_t n)
{
    msgpack_packer *pk = rp_mp_map_key(m, key);
    pk->callback(pk->data, raw, n);
}

uint32_t rp_mp_map_end(struct rp_mp_map *m)
{
    struct rp_buf *b = m->b;
    /* An append that failed for memory left the buffer short: the message is
     * broken anyway, and the parse on the other side says so. */
    if (b == NULL || b->len < m->header_at + 5)
        return m->count;
    uint8_t *h = b->data + m->header_at;
    size_t body = b->len - m->header_at - 5;
    size_t header;
    if (m->count <= 15) {
        h[0] = (uint8_t)(0x80 | m->count);
        header = 1;
    } else if (m->count <= 0xffff) {
        h[0] = 0xde;
        h[1] = (uint8_t)(m->count >> 8);
        h[2] = (uint8_t)m->count;
        header = 3;
    } else {
        h[1] = (uint8_t)(m->count >> 24);
        h[2] = (uint8_t)(m->count >> 16);
        h[3] = (uint8_t)(m->count >> 8);
        h[4] = (uint8_t)m->count;
        header = 5;
    }
    if (header < 5) {
        memmove(h + header, h + 5, body);
        b->len -= 5 - header;
    }
    return m->count;
}

/* Reads a big-endian length of @width bytes. */
static int read_len(struct rp_rd *r, int width, uint64_t *n)
{
    int rv;
    if (width == 1) {
        uint8_t v;
        rv = rp_rd_u8(r, &v);
        *n = v;
    } else if (width == 2) {
        uint16_t v;
        rv = rp_rd_be16(r, &v);
        *n = v;
    } else {
        uint32_t v;
        rv = rp_rd_be32(r, &v);
        *n = v;
    }
    return rv;
}

int rp_mp_validate(const void *data, size_t len)
{
    struct rp_rd r;
    /* pending[d] = objects still to read at depth d. */
    uint64_t pending[RP_MP_MAX_DEPTH + 1];
    int depth = 0;
    uint64_t elements = 0;
    rp_rd_init(&r, data, len);
    pending[0] = 1;
    while (depth >= 0) {
        if (pending[depth] == 0) {
            depth--;
            continue;
        }
        pending[depth]--;
        size_t at = r.off;
        uint8_t t;
        if (rp_rd_u8(&r, &t) != 0)
            return rp_err(RP_EINVAL, "msgpack truncated at offset %zu of %zu", at, len);
        uint64_t n = 0; /* payload bytes to skip */
        uint64_t children = 0;
        int rv = 0;
        if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) {
            n = 0;
        } else if (t >= 0x80 && t <= 0x8f) {
            children = 2u * (t & 0x0f);
        } else if (t >= 0x90 && t <= 0x9f) {
            children = t & 0x0f;
        } else if (t >= 0xa0 && t <= 0xbf) {
            n = t & 0x1f;
        } else {
            switch (t) {
            case 0xc4:
            case 0xd9:
                rv = read_len(&r, 1, &n);
                break;
            case 0xc5:
            case 0xda:
                rv = read_len(&r, 2, &n);
                break;
            case 0xc6:
            case 0xdb:
                rv = read_len(&r, 4, &n);
                break;
            case 0xc7:
                rv = read_len(&r, 1, &n);
                n += 1;
                break;
            case 0xc8:
                rv = read_len(&r, 2, &n);
                n += 1;
                break;
            case 0xc9:
                rv = read_len(&r, 4, &n);
                n += 1;
                break;
            case 0xca:
                n = 4;
                break;
            case 0xcb:
                n = 8;
                break;
            case 0xcc:
            case 0xd0:
                n = 1;
                break;
            case 0xcd:
            case 0xd1:
                n = 2;
                break;
            case 0xce:
            case 0xd2:
                n = 4;
                break;
            case 0xcf:
            case 0xd3:
                n = 8;
                break;
            case 0xd4:
                n = 2;
                break;
            case 0xd5:
                n = 3;
                break;
            case 0xd6:
                n = 5;
                break;
            case 0xd7:
                n = 9;
                break;
            case 0xd8:
                n = 17;
                break;
            case 0xdc:
                rv = read_len(&r, 2, &children);
                break;
            case 0xdd:
                rv = read_len(&r, 4, &children);
                break;
            case 0xde:
                rv = read_len(&r, 2, &children);
                children *= 2;
                break;
            case 0xdf:
                rv = read_len(&r, 4, &children);
                children *= 2;
                break;
            default:
                return rp_err(RP_EINVAL, "msgpack: invalid type byte 0x%02x at offset %zu", t, at);
            }
        }
        if (rv != 0)
            return rp_err(RP_EINVAL, "msgpack truncated at offset %zu of %zu", at, len);
        if (n > rp_rd_left(&r))
            return rp_err(RP_EINVAL,
                          "msgpack: value at offset %zu declares %llu bytes, only %zu left", at,
                          (unsigned long long)n, rp_rd_left(&r));
        rp_rd_skip(&r, (size_t)n);
        /* msgpack-c refuses any container, even an empty one, once RP_MP_MAX_DEPTH (its
         * stack size) are open: so does this check, or what it passes would not decode. */
        bool container = (t >= 0x80 && t <= 0x9f) || (t >= 0xdc && t <= 0xdf);
        if (container && depth == RP_MP_MAX_DEPTH)
            return rp_err(RP_EINVAL, "msgpack: nesting deeper than %d at offset %zu",
                          RP_MP_MAX_DEPTH, at);
        if (children > 0) {
            /* Every element takes at least one byte: refuse counts the bytes cannot hold. */
            if (children > rp_rd_left(&r))
                return rp_err(RP_EINVAL,
                              "msgpack: container at offset %zu declares %llu elements, only %zu "
                              "bytes left",
                              at, (unsigned long long)children, rp_rd_left(&r));
            /* msgpack-c spends about 24 bytes per element: cap the total so that a
             * message cannot make it allocate many times its own size. */
            elements += children;
            if (elements > RP_MP_MAX_ELEMENTS)
                return rp_err(RP_EINVAL, "msgpack: more than %u elements in one message",
                              RP_MP_MAX_ELEMENTS);
            pending[++depth] = children;
        }
    }
    if (rp_rd_left(&r) != 0)
        return rp_err(RP_EINVAL, "msgpack: %zu trailing bytes after the object", rp_rd_left(&r));
    return 0;
}

int rp_mp_parse(const void *data, size_t len, msgpack_unpacked *out)
{
    int rv = rp_mp_validate(data, len);
    if (rv != 0)
        return rv;
    msgpack_unpacked_init(out);
    /* A zone sized to the message: msgpack_unpack_next would take an 8 KiB chunk for
     * every message, and in a server with dozens of threads that malloc and free
     * (arena locks, heap trimming) cost more than the decoding. Strings point into
     * @data, so the zone holds only the arrays and maps, and grows if it must. */
    size_t chunk = len < 128 ? 256 : len * 2 > 8192 ? 8192 : len * 2;
    out->zone = msgpack_zone_new(chunk);
    if (out->zone == NULL)
        return rp_err(RP_ENOMEM, "msgpack: no memory for a %zu byte message", len);
    size_t off = 0;
    msgpack_unpack_return ret = msgpack_unpack(data, len, &off, out->zone, &out->data);
    if (ret != MSGPACK_UNPACK_SUCCESS || off != len) {
        msgpack_unpacked_destroy(out);
        return rp_err(ret == MSGPACK_UNPACK_NOMEM_ERROR ? RP_ENOMEM : RP_EINVAL,
                      "msgpack: cannot decode message of %zu bytes", len);
    }
    return 0;
}

const msgpack_object *rp_mp_get(const msgpack_object *map, const char *key)
{
    if (map == NULL || map->type != MSGPACK_OBJECT_MAP)
        return NULL;
    size_t klen = strlen(key);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        /* msgpack-c leaves ptr NULL for an empty string: memcmp may not be given it. */
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == klen &&
            (klen == 0 || memcmp(k->via.str.ptr, key, klen) == 0))
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

int rp_mp_get_str(const msgpack_object *map, const char *key, const char **s, size_t *n)
{
    const msgpack_object *o = rp_mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return rp_err(RP_ENOTFOUND, "field '%s' is missing", key);
    if (o->type != MSGPACK_OBJECT_STR)
        return rp_err(RP_EINVAL, "field '%s' must be a string", key);
    *s = o->via.str.ptr;
    *n = o->via.str.size;
    return 0;
}

int rp_mp_get_u64(const msgpack_object *map, const char *key, uint64_t *v)
{
    const msgpack_object *o = rp_mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return rp_err(RP_ENOTFOUND, "field '%s' is missing", key);
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return rp_err(RP_EINVAL, "field '%s' must be a non-negative integer", key);
    *v = o->via.u64;
    return 0;
}

int rp_mp_get_bool(const msgpack_object *map, const char *key, bool *v)
{
    const msgpack_object *o = rp_mp_get(map, key);
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return rp_err(RP_ENOTFOUND, "field '%s' is missing", key);
    if (o->type != MSGPACK_OBJECT_BOOLEAN)
        return rp_err(RP_EINVAL, "field '%s' must be a boolean", key);
    *v = o->via.boolean;
    return 0;
}

int rp_mp_get_strdup(const msgpack_object *map, const char *key, char **out)
{
    const char *s;
    size_t n;
    int rv = rp_mp_get_str(map, key, &s, &n);
    if (rv != 0)
        return rv;
    /* n == 0: s may be NULL (msgpack-c's empty string), which memchr and memcpy may not get. */
    if (n > 0 && memchr(s, '\0', n) != NULL)
        return rp_err(RP_EINVAL, "field '%s' contains a NUL byte", key);
    char *c = malloc(n + 1);
    if (c == NULL)
        return rp_err(RP_ENOMEM, "copying field '%s'", key);
    if (n > 0)
        memcpy(c, s, n);
    c[n] = '\0';
    *out = c;
    return 0;
}

bool rp_mp_str_eq(const msgpack_object *o, const char *s)
{
    size_t n = strlen(s);
    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           (n == 0 || memcmp(o->via.str.ptr, s, n) == 0);
}

int rp_mp_pack_object(struct rp_buf *b, const msgpack_object *o)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, b);
    size_t before = b->len;
    if (msgpack_pack_object(&pk, *o) != 0)
        return rp_err(RP_ENOMEM, "re-encoding msgpack object");
    (void)before;
    return 0;
}
