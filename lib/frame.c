/* lib/frame.c: incremental decoding of length-prefixed frames (see lib/frame.h).
 *
 * The body buffer grows geometrically with the bytes taken, capped at the
 * announced length, so the worst a peer can make us hold is about twice what it
 * actually sent, and never more than the limit. */
#include "lib/frame.h"

#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

void rp_frame_reader_init(struct rp_frame_reader *r, size_t limit)
{
    memset(r, 0, sizeof *r);
    rp_buf_init(&r->body);
    r->limit = limit > UINT32_MAX ? UINT32_MAX : limit;
}

void rp_frame_reader_free(struct rp_frame_reader *r)
{
    rp_buf_free(&r->body);
    r->hdr_len = 0;
    r->want = 0;
}

void rp_frame_reader_set_limit(struct rp_frame_reader *r, size_t limit)
{
    r->limit = limit > UINT32_MAX ? UINT32_MAX : limit;
}

static int frame_ready(const struct rp_frame_reader *r)
{
    return r->hdr_len == 4 && r->body.len == r->want;
}

/* Makes room for @n more body bytes: at least doubling, at most up to @want. */
static int grow_body(struct rp_frame_reader *r, size_t n)
{
    size_t need = r->body.len + n;
    if (need <= r->body.cap)
        return 0;
    size_t cap = r->body.cap ? r->body.cap * 2 : 256;
    if (cap < need)
        cap = need;
    if (cap > r->want)
        cap = r->want;
    uint8_t *p = realloc(r->body.data, cap);
    if (p == NULL)
        return rp_err(RP_ENOMEM, "cannot grow a frame buffer to %zu bytes", cap);
    r->body.data = p;
    r->body.cap = cap;
    return 0;
}

int rp_frame_reader_feed(struct rp_frame_reader *r, const uint8_t *p, size_t n, size_t *used)
{
    size_t off = 0;
    *used = 0;
    if (r->failed != 0)
        return rp_err(r->failed, "the frame stream broke earlier");
    if (frame_ready(r))
        return 1;
    while (r->hdr_len < 4 && off < n)
        r->hdr[r->hdr_len++] = p[off++];
    if (r->hdr_len < 4) {
        *used = off;
        return 0;
    }
    if (r->body.len == 0 && r->want == 0) {
        uint32_t len = (uint32_t)r->hdr[0] << 24 | (uint32_t)r->hdr[1] << 16 |
                       (uint32_t)r->hdr[2] << 8 | r->hdr[3];
        if (len == 0) {
            r->failed = RP_EINVAL;
            *used = off;
            return rp_err(RP_EINVAL, "empty frame (length 0)");
        }
        if (len > r->limit) {
            r->failed = RP_ETOOBIG;
            *used = off;
            return rp_err(RP_ETOOBIG, "frame of %u bytes exceeds the limit of %zu", len, r->limit);
        }
        r->want = len;
    }
    size_t take = n - off;
    if (take > r->want - r->body.len)
        take = r->want - r->body.len;
    if (take > 0) {
        int rv = grow_body(r, take);
        if (rv != 0) {
            *used = off;
            return rv;
        }
        memcpy(r->body.data + r->body.len, p + off, take);
        r->body.len += take;
        off += take;
    }
    *used = off;
    return frame_ready(r) ? 1 : 0;
}

const struct rp_buf *rp_frame_reader_frame(const struct rp_frame_reader *r)
{
    return &r->body;
}

void rp_frame_reader_next(struct rp_frame_reader *r, size_t keep_bytes)
{
    r->hdr_len = 0;
    r->want = 0;
    if (r->body.cap > keep_bytes)
        rp_buf_free(&r->body);
    else
        rp_buf_reset(&r->body);
}

size_t rp_frame_reader_need(const struct rp_frame_reader *r)
{
    if (r->failed != 0 || frame_ready(r))
        return 0;
    if (r->hdr_len < 4)
        return 4 - r->hdr_len;
    return r->want - r->body.len;
}

int rp_frame_reader_in_frame(const struct rp_frame_reader *r)
{
    return r->hdr_len > 0 && !frame_ready(r);
}

size_t rp_frame_reader_allocated(const struct rp_frame_reader *r)
{
    return r->body.cap;
}
