/* tests/test_lib_codec.c: the bounded reader, the msgpack structural check,
 * JSON output and the small parsers of lib/util. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/mp.h"
#include "lib/util.h"

static void pack_sample(struct rp_buf *b)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "kind", "role");
    rp_mp_kv_u64(&pk, "n", 1234567890123ull);
    rp_mp_kv_bool(&pk, "t", true);
    rp_mp_pack_str(&pk, "list");
    msgpack_pack_array(&pk, 3);
    msgpack_pack_int64(&pk, -5);
    msgpack_pack_nil(&pk);
    rp_mp_pack_str(&pk, "q\"\n\x01");
}

Test(reader, refuses_reads_past_the_end)
{
    uint8_t bytes[5] = {0, 0, 0, 7, 9};
    struct rp_rd r;
    uint32_t v;
    uint64_t w;
    const uint8_t *p;
    rp_rd_init(&r, bytes, sizeof bytes);
    cr_assert_eq(rp_rd_be32(&r, &v), 0);
    cr_assert_eq(v, 7);
    cr_assert_eq(rp_rd_be64(&r, &w), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "truncated") != NULL, "%s", rp_errmsg());
    cr_assert_eq(rp_rd_bytes(&r, 2, &p), RP_EINVAL);
    cr_assert_eq(rp_rd_left(&r), 1, "a failed read must not move the cursor");
}

Test(buf, grows_and_formats)
{
    struct rp_buf b;
    rp_buf_init(&b);
    for (int i = 0; i < 1000; i++)
        cr_assert_eq(rp_buf_printf(&b, "%d,", i), 0);
    cr_assert_eq(b.len, strlen((char *)b.data) > 0 ? b.len : 0);
    cr_assert(memcmp(b.data, "0,1,2,", 6) == 0);
    rp_buf_put_be32(&b, 0x01020304);
    cr_assert_eq(b.data[b.len - 4], 1);
    size_t n;
    uint8_t *p = rp_buf_steal(&b, &n);
    cr_assert_not_null(p);
    cr_assert_eq(b.data, NULL);
    free(p);
}

Test(buf, a_queue_keeps_its_unsent_bytes_in_order_and_reuses_its_room)
{
    struct rp_buf q;
    rp_buf_init(&q);
    size_t off = 0;
    cr_assert_eq(rp_buf_queue(&q, &off, "abcdefgh", 8), 0);
    off = 8; /* all sent: the next bytes start over at the front */
    cr_assert_eq(rp_buf_queue(&q, &off, "ij", 2), 0);
    cr_assert_eq(off, 0);
    cr_assert_eq(q.len, 2);
    cr_assert(memcmp(q.data, "ij", 2) == 0);
    size_t cap = q.cap;
    /* Part sent, and what comes does not fit: the unsent rest moves to the front. */
    uint8_t fill[256];
    memset(fill, 'x', sizeof fill);
    cr_assert_eq(rp_buf_queue(&q, &off, fill, cap - q.len), 0);
    cr_assert_eq(q.len, cap);
    off = 2; /* "ij" sent */
    cr_assert_eq(rp_buf_queue(&q, &off, "yz", 2), 0);
    cr_assert_eq(off, 0);
    cr_assert_eq(q.cap, cap, "the sent bytes' room was reused, not grown");
    cr_assert_eq(q.data[0], 'x');
    cr_assert(memcmp(q.data + q.len - 2, "yz", 2) == 0);
    /* Nothing sent and no room: it grows, keeping every byte. */
    cr_assert_eq(rp_buf_queue(&q, &off, fill, sizeof fill), 0);
    cr_assert_gt(q.cap, cap);
    cr_assert_eq(q.data[0], 'x');
    cr_assert(memcmp(q.data + cap - 2, "yz", 2) == 0);
    cr_assert_eq(q.len, cap + sizeof fill);
    rp_buf_free(&q);
}

Test(msgpack, round_trips_through_parse)
{
    struct rp_buf b;
    msgpack_unpacked u;
    const char *s;
    size_t n;
    uint64_t v;
    bool t;
    rp_buf_init(&b);
    pack_sample(&b);
    cr_assert_eq(rp_mp_parse(b.data, b.len, &u), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_mp_get_str(&u.data, "kind", &s, &n), 0);
    cr_assert(n == 4 && memcmp(s, "role", 4) == 0);
    cr_assert_eq(rp_mp_get_u64(&u.data, "n", &v), 0);
    cr_assert_eq(v, 1234567890123ull);
    cr_assert_eq(rp_mp_get_bool(&u.data, "t", &t), 0);
    cr_assert(t);
    cr_assert_eq(rp_mp_get_u64(&u.data, "kind", &v), RP_EINVAL, "a string is not an integer");
    cr_assert(strstr(rp_errmsg(), "kind") != NULL);
    cr_assert_eq(rp_mp_get_str(&u.data, "absent", &s, &n), RP_ENOTFOUND);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
}

Test(msgpack, every_truncation_is_refused)
{
    struct rp_buf b;
    msgpack_unpacked u;
    rp_buf_init(&b);
    pack_sample(&b);
    for (size_t cut = 0; cut < b.len; cut++)
        cr_assert_eq(rp_mp_parse(b.data, cut, &u), RP_EINVAL, "prefix of %zu bytes accepted", cut);
    rp_buf_free(&b);
}

Test(msgpack, trailing_bytes_are_refused)
{
    uint8_t bytes[] = {0x80, 0x00};
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(bytes, sizeof bytes, &u), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "trailing") != NULL, "%s", rp_errmsg());
}

Test(msgpack, huge_declared_counts_are_refused_before_allocation)
{
    /* array32 claiming 4 billion elements, map32 likewise, str32 of 4 GiB. */
    uint8_t arr[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0x00};
    uint8_t map[] = {0xdf, 0x7f, 0xff, 0xff, 0xff, 0x00, 0x00};
    uint8_t str[] = {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'};
    cr_assert_eq(rp_mp_validate(arr, sizeof arr), RP_EINVAL);
    cr_assert_eq(rp_mp_validate(map, sizeof map), RP_EINVAL);
    cr_assert_eq(rp_mp_validate(str, sizeof str), RP_EINVAL);
}

Test(msgpack, deep_nesting_is_refused)
{
    uint8_t deep[200];
    memset(deep, 0x91, sizeof deep); /* fixarray of 1, nested */
    deep[sizeof deep - 1] = 0xc0;
    cr_assert_eq(rp_mp_validate(deep, sizeof deep), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "nesting") != NULL, "%s", rp_errmsg());
    cr_assert_eq(rp_mp_validate(deep + sizeof deep - 20, 20), 0, "19 levels are fine");
}

Test(msgpack, invalid_type_byte_is_refused)
{
    uint8_t bad[] = {0xc1};
    cr_assert_eq(rp_mp_validate(bad, 1), RP_EINVAL);
}

Test(msgpack, random_bytes_never_crash)
{
    uint8_t buf[64];
    msgpack_unpacked u;
    srand(42);
    for (int i = 0; i < 20000; i++) {
        size_t n = (size_t)(rand() % (int)sizeof buf) + 1;
        for (size_t j = 0; j < n; j++)
            buf[j] = (uint8_t)rand();
        if (rp_mp_parse(buf, n, &u) == 0)
            msgpack_unpacked_destroy(&u);
    }
}

Test(json, escapes_and_nests)
{
    struct rp_buf b, out;
    msgpack_unpacked u;
    rp_buf_init(&b);
    rp_buf_init(&out);
    pack_sample(&b);
    cr_assert_eq(rp_mp_parse(b.data, b.len, &u), 0);
    cr_assert_eq(rp_json_from_mp(&out, &u.data, 0), 0);
    rp_buf_append(&out, "", 1);
    cr_assert_str_eq((char *)out.data, "{\"kind\":\"role\",\"n\":1234567890123,\"t\":true,"
                                       "\"list\":[-5,null,\"q\\\"\\n\\u0001\"]}");
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
    rp_buf_free(&out);
}

Test(json, invalid_utf8_becomes_replacement)
{
    struct rp_buf out;
    rp_buf_init(&out);
    rp_json_str(&out, "a\xff\xc3\xa9", 4);
    rp_buf_append(&out, "", 1);
    cr_assert_str_eq((char *)out.data, "\"a\\ufffd\xc3\xa9\"");
    rp_buf_free(&out);
}

Test(duration, parses_go_style)
{
    uint64_t ms;
    cr_assert_eq(rp_parse_duration_ms("250ms", &ms), 0);
    cr_assert_eq(ms, 250);
    cr_assert_eq(rp_parse_duration_ms("1h30m", &ms), 0);
    cr_assert_eq(ms, 5400000);
    cr_assert_eq(rp_parse_duration_ms("30", &ms), 0);
    cr_assert_eq(ms, 30000, "a bare number is seconds");
    cr_assert_eq(rp_parse_duration_ms("5x", &ms), RP_EINVAL);
    cr_assert_eq(rp_parse_duration_ms("", &ms), RP_EINVAL);
    cr_assert_eq(rp_parse_duration_ms("0s", &ms), RP_EINVAL);
    cr_assert_eq(rp_parse_duration_ms("99999999999999999999h", &ms), RP_EINVAL);
    char out[32];
    rp_format_duration(5400000, out, sizeof out);
    cr_assert_str_eq(out, "1h30m0s");
}

Test(hostport, accepts_and_refuses)
{
    cr_assert_eq(rp_check_hostport("127.0.0.1:3025"), 0);
    cr_assert_eq(rp_check_hostport("auth.example.com:443"), 0);
    cr_assert_eq(rp_check_hostport("[::1]:3025"), 0);
    cr_assert_eq(rp_check_hostport("127.0.0.1"), RP_EINVAL);
    cr_assert_eq(rp_check_hostport("127.0.0.1:0"), RP_EINVAL);
    cr_assert_eq(rp_check_hostport("127.0.0.1:70000"), RP_EINVAL);
    cr_assert_eq(rp_check_hostport("a b:1"), RP_EINVAL);
}

Test(errors, wrapping_the_previous_message_is_safe)
{
    rp_err(RP_EIO, "disk on fire");
    rp_err(RP_EIO, "saving: %s", rp_errmsg());
    cr_assert_str_eq(rp_errmsg(), "saving: disk on fire");
    cr_assert_eq(rp_error_from_name(rp_strerror(RP_ECONFLICT)), RP_ECONFLICT);
}

Test(msgpack, element_budget_is_enforced)
{
    /* 1.5M nils in one array: small on the wire, ~36 MB once unpacked. */
    size_t n = 1500000;
    uint8_t *p = malloc(5 + n);
    p[0] = 0xdd;
    p[1] = (uint8_t)(n >> 24);
    p[2] = (uint8_t)(n >> 16);
    p[3] = (uint8_t)(n >> 8);
    p[4] = (uint8_t)n;
    memset(p + 5, 0xc0, n);
    cr_assert_eq(rp_mp_validate(p, 5 + n), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "elements") != NULL, "%s", rp_errmsg());
    free(p);
}
