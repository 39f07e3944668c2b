/* tests/fuzz/fuzz_frame.c: libFuzzer target for the incremental frame decoder
 * (lib/frame.c), the first code that sees a peer's bytes on every port.
 *
 * Input: byte 0 picks the limit (64 << (b % 16), capped), byte 1 seeds the sizes of
 * the pieces the rest is fed in. Checked on every input: the frames decoded piece by
 * piece are exactly those a whole-buffer reference decoding finds; memory held never
 * exceeds the limit, nor twice the body bytes taken (plus what a finished frame may keep);
 * after an error every later feed fails the same way. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/frame.h"

static uint32_t be32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    size_t limit = (size_t)64 << (data[0] % 16);
    if (limit > (1u << 20))
        limit = 1u << 20;
    uint32_t seed = data[1] | 1u;
    const uint8_t *in = data + 2;
    size_t n = size - 2;

    struct rp_frame_reader r;
    rp_frame_reader_init(&r, limit);
    size_t pos = 0; /* bytes of @in taken by the reader */
    size_t ref = 0; /* reference decoder's position in @in */
    int failed = 0;
    while (pos < n) {
        seed = seed * 1103515245u + 12345u;
        size_t piece = 1 + (seed >> 16) % 97;
        if (piece > n - pos)
            piece = n - pos;
        size_t used = 0;
        int rv = rp_frame_reader_feed(&r, in + pos, piece, &used);
        if (used > piece)
            abort();
        pos += used;
        size_t body_taken = r.body.len;
        if (rp_frame_reader_allocated(&r) > limit ||
            rp_frame_reader_allocated(&r) > 2 * body_taken + 4096)
            abort();
        /* What a careful reader may read next: nothing once a frame is ready or the
         * stream broke, otherwise exactly the rest of the header or body. */
        size_t need = rp_frame_reader_need(&r);
        if ((rv != 0) != (need == 0))
            abort();
        if (rv == 0 && need != (r.hdr_len < 4 ? 4 - r.hdr_len : r.want - r.body.len))
            abort();
        if (rv < 0) {
            /* The reference must agree that the header at @ref is bad. */
            if (n - ref < 4)
                abort();
            uint32_t len = be32(in + ref);
            if (!((rv == RP_ETOOBIG && len > limit) || (rv == RP_EINVAL && len == 0)))
                abort();
            size_t again = 0;
            if (rp_frame_reader_feed(&r, in + pos, n - pos, &again) != rv || again != 0)
                abort();
            failed = 1;
            break;
        }
        if (rv == 1) {
            const struct rp_buf *f = rp_frame_reader_frame(&r);
            if (n - ref < 4)
                abort();
            uint32_t len = be32(in + ref);
            if (len == 0 || len > limit || f->len != len || n - ref - 4 < len ||
                memcmp(f->data, in + ref + 4, len) != 0)
                abort();
            ref += 4 + len;
            if (pos != ref)
                abort();
            rp_frame_reader_next(&r, 4096);
        } else if (used != piece) {
            abort(); /* needing more bytes means every byte offered was taken */
        }
    }
    /* Whatever is left unfinished must be a real prefix of a frame. */
    if (!failed && rp_frame_reader_in_frame(&r) && pos - ref != r.hdr_len + r.body.len)
        abort();
    rp_frame_reader_free(&r);
    return 0;
}
