/* lib/buf.c: growable buffers and the bounded reader. */
#include "lib/buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

void rp_buf_init(struct rp_buf *b)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
}

void rp_buf_free(struct rp_buf *b)
{
    free(b->data);
    rp_buf_init(b);
}

void rp_buf_reset(struct rp_buf *b)
{
    b->len = 0;
}

int rp_buf_reserve(struct rp_buf *b, size_t extra)
{
    if (extra > SIZE_MAX / 2 - b->len)
        return rp_err(RP_ENOMEM, "buffer of %zu bytes cannot grow by %zu", b->len, extra);
    size_t need = b->len + extra;
    if (need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap *= 2;
    uint8_t *p = realloc(b->data, cap);
    if (p == NULL)
        return rp_err(RP_ENOMEM, "cannot grow buffer to %zu bytes", cap);
    b->data = p;
    b->cap = cap;
    return 0;
}

int rp_buf_append(struct rp_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return 0;
    int rv = rp_buf_reserve(b, n);
    if (rv != 0)
        return rv;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

int rp_buf_queue(struct rp_buf *b, size_t *off, const void *p, size_t n)
{
    if (*off == b->len) {
        b->len = *off = 0;
    } else if (*off > 0 && b->len + n > b->cap) {
        memmove(b->data, b->data + *off, b->len - *off);
        b->len -= *off;
        *off = 0;
    }
    return rp_buf_append(b, p, n);
}

int rp_buf_append_str(struct rp_buf *b, const char *s)
{
    return rp_buf_append(b, s, strlen(s));
}

int rp_buf_printf(struct rp_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return rp_err(RP_EINVAL, "bad format string");
    /* +1 for vsnprintf's NUL, which is not counted in len. */
    int rv = rp_buf_reserve(b, (size_t)n + 1);
    if (rv != 0)
        return rv;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

int rp_buf_put_be32(struct rp_buf *b, uint32_t v)
{
    uint8_t p[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    return rp_buf_append(b, p, sizeof p);
}

int rp_buf_put_be64(struct rp_buf *b, uint64_t v)
{
    int rv = rp_buf_put_be32(b, (uint32_t)(v >> 32));
    return rv ? rv : rp_buf_put_be32(b, (uint32_t)v);
}

uint8_t *rp_buf_steal(struct rp_buf *b, size_t *len)
{
    uint8_t *p = b->data;
    if (len)
        *len = b->len;
    rp_buf_init(b);
    return p;
}

void rp_rd_init(struct rp_rd *r, const void *p, size_t len)
{
    r->p = p;
    r->len = len;
    r->off = 0;
}

size_t rp_rd_left(const struct rp_rd *r)
{
    return r->len - r->off;
}

static int need(const struct rp_rd *r, size_t n)
{
    if (n > rp_rd_left(r))
        return rp_err(RP_EINVAL, "truncated input: need %zu bytes at offset %zu, %zu left", n,
                      r->off, rp_rd_left(r));
    return 0;
}

int rp_rd_u8(struct rp_rd *r, uint8_t *v)
{
    int rv = need(r, 1);
    if (rv != 0)
        return rv;
    *v = r->p[r->off++];
    return 0;
}

int rp_rd_be16(struct rp_rd *r, uint16_t *v)
{
    int rv = need(r, 2);
    if (rv != 0)
        return rv;
    const uint8_t *p = r->p + r->off;
    *v = (uint16_t)((p[0] << 8) | p[1]);
    r->off += 2;
    return 0;
}

int rp_rd_be32(struct rp_rd *r, uint32_t *v)
{
    int rv = need(r, 4);
    if (rv != 0)
        return rv;
    const uint8_t *p = r->p + r->off;
    *v = ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
    r->off += 4;
    return 0;
}

int rp_rd_be64(struct rp_rd *r, uint64_t *v)
{
    uint32_t hi, lo;
    int rv = need(r, 8);
    if (rv != 0)
        return rv;
    rp_rd_be32(r, &hi);
    rp_rd_be32(r, &lo);
    *v = ((uint64_t)hi << 32) | lo;
    return 0;
}

int rp_rd_bytes(struct rp_rd *r, size_t n, const uint8_t **out)
{
    int rv = need(r, n);
    if (rv != 0)
        return rv;
    *out = r->p + r->off;
    r->off += n;
    return 0;
}

int rp_rd_skip(struct rp_rd *r, size_t n)
{
    int rv = need(r, n);
    if (rv != 0)
        return rv;
    r->off += n;
    return 0;
}
