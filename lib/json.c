/* lib/json.c: msgpack to JSON. */
#include "lib/json.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "lib/errors.h"

/* Length of the valid UTF-8 sequence at @p (at most @n bytes), 0 if invalid. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    size_t len;
    uint32_t cp;
    if (p[0] < 0x80)
        return 1;
    if ((p[0] & 0xe0) == 0xc0)
        len = 2, cp = p[0] & 0x1f;
    else if ((p[0] & 0xf0) == 0xe0)
        len = 3, cp = p[0] & 0x0f;
    else if ((p[0] & 0xf8) == 0xf0)
        len = 4, cp = p[0] & 0x07;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int rp_json_str(struct rp_buf *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    int rv = rp_buf_append(out, "\"", 1);
    for (size_t i = 0; i < n && rv == 0;) {
        unsigned char ch = p[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            rv = rp_buf_append(out, e, 2);
            i++;
        } else if (ch < 0x20 || ch == 0x7f) {
            const char *e = ch == '\n' ? "\\n" : ch == '\t' ? "\\t" : ch == '\r' ? "\\r" : NULL;
            rv = e ? rp_buf_append_str(out, e) : rp_buf_printf(out, "\\u%04x", ch);
            i++;
        } else {
            size_t l = utf8_len(p + i, n - i);
            if (l == 0) {
                rv = rp_buf_append_str(out, "\\ufffd");
                i++;
            } else {
                rv = rp_buf_append(out, p + i, l);
                i += l;
            }
        }
    }
    return rv ? rv : rp_buf_append(out, "\"", 1);
}

static int newline(struct rp_buf *out, int indent, int depth)
{
    if (indent <= 0)
        return 0;
    int rv = rp_buf_append(out, "\n", 1);
    for (int i = 0; i < indent * depth && rv == 0; i++)
        rv = rp_buf_append(out, " ", 1);
    return rv;
}

static int emit(struct rp_buf *out, const msgpack_object *o, int indent, int depth)
{
    int rv = 0;
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return rp_buf_append_str(out, "null");
    case MSGPACK_OBJECT_BOOLEAN:
        return rp_buf_append_str(out, o->via.boolean ? "true" : "false");
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        return rp_buf_printf(out, "%" PRIu64, o->via.u64);
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return rp_buf_printf(out, "%" PRId64, o->via.i64);
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return rp_buf_printf(out, "%.17g", o->via.f64);
    case MSGPACK_OBJECT_STR:
        return rp_json_str(out, o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_BIN:
    case MSGPACK_OBJECT_EXT: {
        const unsigned char *p =
            (const unsigned char *)(o->type == MSGPACK_OBJECT_BIN ? o->via.bin.ptr
                                                                  : o->via.ext.ptr);
        uint32_t n = o->type == MSGPACK_OBJECT_BIN ? o->via.bin.size : o->via.ext.size;
        rv = rp_buf_append(out, "\"", 1);
        for (uint32_t i = 0; i < n && rv == 0; i++)
            rv = rp_buf_printf(out, "%02x", p[i]);
        return rv ? rv : rp_buf_append(out, "\"", 1);
    }
    case MSGPACK_OBJECT_ARRAY:
        if (o->via.array.size == 0)
            return rp_buf_append_str(out, "[]");
        rv = rp_buf_append(out, "[", 1);
        for (uint32_t i = 0; i < o->via.array.size && rv == 0; i++) {
            if (i > 0)
                rv = rp_buf_append(out, ",", 1);
            if (rv == 0)
                rv = newline(out, indent, depth + 1);
            if (rv == 0)
                rv = emit(out, &o->via.array.ptr[i], indent, depth + 1);
        }
        if (rv == 0)
            rv = newline(out, indent, depth);
        return rv ? rv : rp_buf_append(out, "]", 1);
    case MSGPACK_OBJECT_MAP:
        if (o->via.map.size == 0)
            return rp_buf_append_str(out, "{}");
        rv = rp_buf_append(out, "{", 1);
        for (uint32_t i = 0; i < o->via.map.size && rv == 0; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (i > 0)
                rv = rp_buf_append(out, ",", 1);
            if (rv == 0)
                rv = newline(out, indent, depth + 1);
            if (rv != 0)
                break;
            if (k->type == MSGPACK_OBJECT_STR) {
                rv = rp_json_str(out, k->via.str.ptr, k->via.str.size);
            } else {
                struct rp_buf tmp;
                rp_buf_init(&tmp);
                rv = emit(&tmp, k, 0, 0);
                if (rv == 0)
                    rv = rp_json_str(out, (const char *)tmp.data, tmp.len);
                rp_buf_free(&tmp);
            }
            if (rv == 0)
                rv = rp_buf_append_str(out, indent > 0 ? ": " : ":");
            if (rv == 0)
                rv = emit(out, &o->via.map.ptr[i].val, indent, depth + 1);
        }
        if (rv == 0)
            rv = newline(out, indent, depth);
        return rv ? rv : rp_buf_append(out, "}", 1);
    }
    return rp_err(RP_EINVAL, "unknown msgpack type %d", (int)o->type);
}

int rp_json_from_mp(struct rp_buf *out, const msgpack_object *o, int indent)
{
    return emit(out, o, indent, 0);
}
