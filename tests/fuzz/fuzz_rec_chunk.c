/* tests/fuzz/fuzz_rec_chunk.c: libFuzzer target for the recording chunk checks
 * (auth/recordings.h): what a node's rec_put carries before the cluster stores it.
 *
 * Input: byte 0's low bit says whether this is chunk 0 (header expected), bit 1
 * whether the rest is a zstd frame (auth_rec_chunk_check) or the decompressed lines
 * (auth_rec_lines_check). Checked on every input:
 *   - an accepted frame decompresses to at most AUTH_REC_MAX_PLAIN bytes, and the
 *     same content twice; the lines it holds pass auth_rec_lines_check alone, with
 *     the same facts;
 *   - lines accepted as text are accepted again once compressed into one frame, and
 *     decompress to exactly themselves; with a second frame appended, refused;
 *   - accepted lines end with a newline, count at least one line, and chunk 0 has
 *     its header. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "auth/recordings.h"
#include "lib/buf.h"
#include "tests/fuzz/check.h"

static void check_info(const struct auth_rec_chunk_info *i, const uint8_t *p, size_t n, bool first)
{
    FUZZ_CHECK(i->plain_len == n);
    FUZZ_CHECK(n > 0 && p[n - 1] == '\n');
    FUZZ_CHECK(i->lines >= 1);
    FUZZ_CHECK(i->has_header == first);
}

static bool same_info(const struct auth_rec_chunk_info *x, const struct auth_rec_chunk_info *y)
{
    return x->plain_len == y->plain_len && x->lines == y->lines && x->last_ms == y->last_ms &&
           x->has_header == y->has_header;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    bool first = data[0] & 1, framed = data[0] & 2;
    const uint8_t *in = data + 1;
    size_t n = size - 1;
    struct auth_rec_chunk_info info, again;
    struct rp_buf a, b;
    rp_buf_init(&a);
    rp_buf_init(&b);
    if (framed) {
        if (auth_rec_chunk_check(in, n, first, &info, &a) == 0) {
            FUZZ_CHECK(a.len <= AUTH_REC_MAX_PLAIN);
            check_info(&info, a.data, a.len, first);
            FUZZ_CHECK(auth_rec_decompress(in, n, &b) == 0);
            FUZZ_CHECK(b.len == a.len && memcmp(a.data, b.data, a.len) == 0);
            FUZZ_CHECK(auth_rec_lines_check((const char *)a.data, a.len, first, &again) == 0);
            FUZZ_CHECK(same_info(&info, &again));
        } else {
            FUZZ_CHECK(a.len == 0); /* nothing left behind on refusal */
        }
    } else if (auth_rec_lines_check((const char *)in, n, first, &info) == 0) {
        check_info(&info, in, n, first);
        size_t cap = ZSTD_compressBound(n);
        uint8_t *z = malloc(2 * cap);
        FUZZ_CHECK(z != NULL);
        size_t zn = ZSTD_compress(z, cap, in, n, 1);
        FUZZ_CHECK(!ZSTD_isError(zn));
        if (zn <= AUTH_REC_MAX_COMPRESSED) {
            FUZZ_CHECK(auth_rec_chunk_check(z, zn, first, &again, &a) == 0);
            FUZZ_CHECK(a.len == n && memcmp(a.data, in, n) == 0);
            FUZZ_CHECK(same_info(&info, &again));
            /* Two frames back to back: one chunk is one frame. */
            memcpy(z + zn, z, zn);
            FUZZ_CHECK(zn * 2 > AUTH_REC_MAX_COMPRESSED ||
                       auth_rec_chunk_check(z, 2 * zn, first, NULL, NULL) != 0);
        }
        free(z);
    }
    rp_buf_free(&a);
    rp_buf_free(&b);
    return 0;
}
