/* tests/test_frame.c: the incremental frame decoder (lib/frame.c). */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/frame.h"

static size_t put_frame(uint8_t *out, const char *body)
{
    size_t n = strlen(body);
    out[0] = (uint8_t)(n >> 24);
    out[1] = (uint8_t)(n >> 16);
    out[2] = (uint8_t)(n >> 8);
    out[3] = (uint8_t)n;
    memcpy(out + 4, body, n);
    return 4 + n;
}

Test(frame, frames_fed_one_byte_at_a_time_come_out_whole)
{
    uint8_t wire[64];
    size_t n = put_frame(wire, "hello");
    n += put_frame(wire + n, "world!");
    struct rp_frame_reader r;
    rp_frame_reader_init(&r, 1024);
    int frames = 0;
    for (size_t i = 0; i < n;) {
        size_t used;
        int rv = rp_frame_reader_feed(&r, wire + i, 1, &used);
        cr_assert_geq(rv, 0, "%s", rp_errmsg());
        i += used;
        if (rv == 1) {
            const struct rp_buf *f = rp_frame_reader_frame(&r);
            const char *want = frames == 0 ? "hello" : "world!";
            cr_assert_eq(f->len, strlen(want));
            cr_assert_eq(memcmp(f->data, want, f->len), 0);
            frames++;
            rp_frame_reader_next(&r, 4096);
        }
    }
    cr_assert_eq(frames, 2);
    cr_assert_not(rp_frame_reader_in_frame(&r));
    rp_frame_reader_free(&r);
}

Test(frame, a_feed_stops_at_the_end_of_a_frame)
{
    uint8_t wire[64];
    size_t n = put_frame(wire, "ab");
    n += put_frame(wire + n, "cd");
    struct rp_frame_reader r;
    rp_frame_reader_init(&r, 1024);
    size_t used;
    cr_assert_eq(rp_frame_reader_feed(&r, wire, n, &used), 1);
    cr_assert_eq(used, 6, "the second frame's bytes are left to the caller");
    rp_frame_reader_next(&r, 4096);
    cr_assert_eq(rp_frame_reader_feed(&r, wire + used, n - used, &used), 1);
    cr_assert_eq(memcmp(rp_frame_reader_frame(&r)->data, "cd", 2), 0);
    rp_frame_reader_free(&r);
}

Test(frame, an_oversized_length_is_refused_before_any_body_byte)
{
    uint8_t wire[8] = {0x01, 0x00, 0x00, 0x00, 'x', 'x', 'x', 'x'}; /* 16 MiB */
    struct rp_frame_reader r;
    rp_frame_reader_init(&r, 8192);
    size_t used;
    cr_assert_eq(rp_frame_reader_feed(&r, wire, sizeof wire, &used), RP_ETOOBIG);
    cr_assert_eq(used, 4);
    cr_assert_eq(rp_frame_reader_allocated(&r), 0);
    cr_assert_eq(rp_frame_reader_feed(&r, wire + 4, 4, &used), RP_ETOOBIG, "stays failed");
    rp_frame_reader_free(&r);
}

Test(frame, an_empty_frame_is_refused)
{
    uint8_t wire[4] = {0, 0, 0, 0};
    struct rp_frame_reader r;
    rp_frame_reader_init(&r, 8192);
    size_t used;
    cr_assert_eq(rp_frame_reader_feed(&r, wire, 4, &used), RP_EINVAL);
    rp_frame_reader_free(&r);
}

Test(frame, memory_grows_with_the_bytes_received_not_the_length_announced)
{
    uint8_t hdr[4] = {0x01, 0x00, 0x00, 0x00}; /* announces 16 MiB */
    uint8_t chunk[1000];
    memset(chunk, 'y', sizeof chunk);
    struct rp_frame_reader r;
    rp_frame_reader_init(&r, 16u << 20);
    size_t used;
    cr_assert_eq(rp_frame_reader_feed(&r, hdr, 4, &used), 0);
    cr_assert_lt(rp_frame_reader_allocated(&r), 1024, "nothing reserved for the announced size");
    size_t fed = 0;
    for (int i = 0; i < 100; i++) {
        cr_assert_eq(rp_frame_reader_feed(&r, chunk, sizeof chunk, &used), 0);
        fed += used;
        cr_assert_leq(rp_frame_reader_allocated(&r), 2 * fed + 256);
    }
    cr_assert(rp_frame_reader_in_frame(&r));
    rp_frame_reader_free(&r);
}

Test(frame, a_large_buffer_is_released_after_its_frame)
{
    size_t n = 100000;
    uint8_t *wire = malloc(4 + n);
    cr_assert_not_null(wire);
    wire[0] = 0;
    wire[1] = (uint8_t)(n >> 16);
    wire[2] = (uint8_t)(n >> 8);
    wire[3] = (uint8_t)n;
    memset(wire + 4, 'q', n);
    struct rp_frame_reader r;
    rp_frame_reader_init(&r, 1u << 20);
    size_t used;
    cr_assert_eq(rp_frame_reader_feed(&r, wire, 4 + n, &used), 1);
    cr_assert_eq(rp_frame_reader_allocated(&r), n, "capped at the announced length");
    rp_frame_reader_next(&r, 65536);
    cr_assert_eq(rp_frame_reader_allocated(&r), 0);
    rp_frame_reader_free(&r);
    free(wire);
}

Test(frame, a_lowered_limit_applies_to_the_next_header)
{
    uint8_t wire[16];
    size_t n = put_frame(wire, "0123456789");
    struct rp_frame_reader r;
    rp_frame_reader_init(&r, 1024);
    rp_frame_reader_set_limit(&r, 8);
    size_t used;
    cr_assert_eq(rp_frame_reader_feed(&r, wire, n, &used), RP_ETOOBIG);
    rp_frame_reader_free(&r);
}
