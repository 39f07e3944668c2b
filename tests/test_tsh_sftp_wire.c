/* tests/test_tsh_sftp_wire.c: the decoding of the node's SFTP answers in tsh
 * (tsh/sftp_wire.h), on answers built here byte by byte as sftp-server sends them.
 * tests/test_int_tsh_ssh.c copies files through a real sftp-server; this file covers
 * what a real server does not send: truncations, overlong lengths, excess bounds. */
#include <criterion/criterion.h>
#include <stdint.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "tsh/sftp_wire.h"

/* An answer of @type (with request @id unless VERSION) whose body the caller appends;
 * wire_end fills in its length. */
static size_t wire_begin(struct rp_buf *b, uint8_t type, uint32_t id)
{
    size_t at = b->len;
    rp_buf_put_be32(b, 0);
    rp_buf_append(b, &type, 1);
    if (type != TSH_SFTP_VERSION)
        rp_buf_put_be32(b, id);
    return at;
}

static void wire_end(struct rp_buf *b, size_t at)
{
    cr_assert_not_null(b->data);
    uint32_t len = (uint32_t)(b->len - at - 4);
    b->data[at] = (uint8_t)(len >> 24);
    b->data[at + 1] = (uint8_t)(len >> 16);
    b->data[at + 2] = (uint8_t)(len >> 8);
    b->data[at + 3] = (uint8_t)len;
}

static void put_str(struct rp_buf *b, const char *s)
{
    rp_buf_put_be32(b, (uint32_t)strlen(s));
    rp_buf_append(b, s, strlen(s));
}

/* Takes the one answer in @b, which must be whole. */
static void take_one(const struct rp_buf *b, struct tsh_sftp_packet *pk)
{
    size_t off = 0;
    cr_assert_eq(tsh_sftp_take(b->data, b->len, &off, pk), 1, "%s", rp_errmsg());
    cr_assert_eq(off, b->len);
}

Test(tsh_sftp_wire, name_answer_decodes_every_entry_with_its_attributes)
{
    struct rp_buf b;
    rp_buf_init(&b);
    size_t at = wire_begin(&b, TSH_SFTP_NAME, 7);
    rp_buf_put_be32(&b, 2);
    put_str(&b, "notes.txt");
    put_str(&b, "-rw-r--r--    1 alice    alice          12 Dec  7 04:00 notes.txt");
    rp_buf_put_be32(&b, TSH_SFTP_ATTR_SIZE | TSH_SFTP_ATTR_PERMISSIONS);
    rp_buf_put_be64(&b, 12);
    rp_buf_put_be32(&b, 0100644);
    put_str(&b, "src");
    put_str(&b, "drwxr-xr-x    2 alice    alice        4096 Dec  7 04:00 src");
    rp_buf_put_be32(&b, TSH_SFTP_ATTR_PERMISSIONS | TSH_SFTP_ATTR_ACMODTIME);
    rp_buf_put_be32(&b, 040755);
    rp_buf_put_be32(&b, 1700000000);
    rp_buf_put_be32(&b, 1700000001);
    wire_end(&b, at);

    struct tsh_sftp_packet pk;
    take_one(&b, &pk);
    cr_assert_eq(pk.type, TSH_SFTP_NAME);
    cr_assert_eq(pk.id, 7);
    struct tsh_sftp_names it;
    cr_assert_eq(tsh_sftp_names_begin(&it, pk.body, pk.body_len), 0);
    cr_assert_eq(it.count, 2);

    struct tsh_sftp_name e;
    cr_assert_eq(tsh_sftp_names_next(&it, &e), 1, "%s", rp_errmsg());
    cr_assert_eq(e.name_len, 9);
    cr_assert_eq(memcmp(e.name, "notes.txt", 9), 0);
    cr_assert_eq(e.attrs.flags, TSH_SFTP_ATTR_SIZE | TSH_SFTP_ATTR_PERMISSIONS);
    cr_assert_eq(e.attrs.size, 12);
    cr_assert_eq(e.attrs.perm, 0100644);

    cr_assert_eq(tsh_sftp_names_next(&it, &e), 1, "%s", rp_errmsg());
    cr_assert_eq(e.name_len, 3);
    cr_assert_eq(memcmp(e.name, "src", 3), 0);
    cr_assert_eq(e.attrs.perm, 040755);
    cr_assert_eq(e.attrs.atime, 1700000000);
    cr_assert_eq(e.attrs.mtime, 1700000001);
    cr_assert_eq(e.attrs.size, 0, "a size without its flag is not read");

    cr_assert_eq(tsh_sftp_names_next(&it, &e), 0, "two entries and no more");
    rp_buf_free(&b);
}

Test(tsh_sftp_wire, truncated_string_is_a_protocol_error)
{
    struct rp_buf b;
    rp_buf_init(&b);
    size_t at = wire_begin(&b, TSH_SFTP_DATA, 3);
    rp_buf_put_be32(&b, 100); /* says 100 bytes, 5 follow */
    rp_buf_append(&b, "hello", 5);
    wire_end(&b, at);
    struct tsh_sftp_packet pk;
    take_one(&b, &pk);
    const uint8_t *p;
    size_t n;
    cr_assert_eq(tsh_sftp_decode_data(pk.body, pk.body_len, &p, &n), RP_EPROTO);
    cr_assert_not_null(strstr(rp_errmsg(), "truncated string"), "%s", rp_errmsg());

    /* In a listing, the entry that runs out is refused; the one before it stands. */
    rp_buf_free(&b);
    rp_buf_init(&b);
    at = wire_begin(&b, TSH_SFTP_NAME, 4);
    rp_buf_put_be32(&b, 2);
    put_str(&b, "a");
    put_str(&b, "a");
    rp_buf_put_be32(&b, 0);
    rp_buf_put_be32(&b, 50); /* the second name: 50 bytes said, 2 there */
    rp_buf_append(&b, "bb", 2);
    wire_end(&b, at);
    take_one(&b, &pk);
    struct tsh_sftp_names it;
    struct tsh_sftp_name e;
    cr_assert_eq(tsh_sftp_names_begin(&it, pk.body, pk.body_len), 0);
    cr_assert_eq(tsh_sftp_names_next(&it, &e), 1);
    cr_assert_eq(tsh_sftp_names_next(&it, &e), RP_EPROTO);
    cr_assert_eq(tsh_sftp_names_next(&it, &e), RP_EPROTO, "no reading on after a refusal");
    rp_buf_free(&b);
}

Test(tsh_sftp_wire, packet_longer_than_the_maximum_is_refused_before_it_arrives)
{
    uint8_t head[9] = {0, 0, 0, 0, TSH_SFTP_DATA, 0, 0, 0, 1};
    uint32_t len = TSH_SFTP_MAX_PACKET + 1;
    head[0] = (uint8_t)(len >> 24);
    head[1] = (uint8_t)(len >> 16);
    head[2] = (uint8_t)(len >> 8);
    head[3] = (uint8_t)len;
    size_t off = 0;
    struct tsh_sftp_packet pk;
    cr_assert_eq(tsh_sftp_take(head, sizeof head, &off, &pk), RP_EPROTO,
                 "refused from its first 5 bytes, without waiting for (or holding) the rest");
    cr_assert_eq(off, 0);
    cr_assert_not_null(strstr(rp_errmsg(), "at most"), "%s", rp_errmsg());

    /* At the maximum it is waited for, not refused. */
    len = TSH_SFTP_MAX_PACKET;
    head[0] = (uint8_t)(len >> 24);
    head[1] = (uint8_t)(len >> 16);
    head[2] = (uint8_t)(len >> 8);
    head[3] = (uint8_t)len;
    cr_assert_eq(tsh_sftp_take(head, sizeof head, &off, &pk), 0);
    cr_assert_eq(off, 0);
}

Test(tsh_sftp_wire, answer_is_taken_only_when_whole_and_version_has_no_id)
{
    struct rp_buf b;
    rp_buf_init(&b);
    size_t at = wire_begin(&b, TSH_SFTP_VERSION, 0);
    rp_buf_put_be32(&b, 3);
    wire_end(&b, at);
    at = wire_begin(&b, TSH_SFTP_STATUS, 9);
    rp_buf_put_be32(&b, 1);
    put_str(&b, "End of file");
    put_str(&b, "");
    wire_end(&b, at);

    size_t off = 0;
    struct tsh_sftp_packet pk;
    for (size_t part = 0; part < 9; part++)
        cr_assert_eq(tsh_sftp_take(b.data, part, &off, &pk), 0, "%zu bytes are not an answer",
                     part);
    cr_assert_eq(tsh_sftp_take(b.data, b.len, &off, &pk), 1);
    cr_assert_eq(pk.type, TSH_SFTP_VERSION);
    cr_assert_eq(pk.id, 0);
    cr_assert_eq(pk.body_len, 4, "the version number, right after the type");
    cr_assert_eq(off, 9);

    cr_assert_eq(tsh_sftp_take(b.data, b.len - 1, &off, &pk), 0);
    cr_assert_eq(off, 9);
    cr_assert_eq(tsh_sftp_take(b.data, b.len, &off, &pk), 1);
    cr_assert_eq(pk.id, 9);
    uint32_t code = 99;
    cr_assert_eq(tsh_sftp_decode_status(pk.body, pk.body_len, &code), 0);
    cr_assert_eq(code, 1);
    cr_assert_eq(off, b.len);
    cr_assert_eq(tsh_sftp_take(b.data, b.len, &off, &pk), 0, "nothing after the last");
    rp_buf_free(&b);
}

Test(tsh_sftp_wire, answer_too_short_for_its_request_id_is_refused_and_stepped_over)
{
    uint8_t s[] = {0, 0, 0, 3, TSH_SFTP_STATUS, 0, 0, /* then a whole VERSION */
                   0, 0, 0, 1, TSH_SFTP_VERSION};
    size_t off = 0;
    struct tsh_sftp_packet pk;
    cr_assert_eq(tsh_sftp_take(s, sizeof s, &off, &pk), RP_EPROTO);
    cr_assert_not_null(strstr(rp_errmsg(), "without a request id"), "%s", rp_errmsg());
    cr_assert_eq(off, 7);
    cr_assert_eq(tsh_sftp_take(s, sizeof s, &off, &pk), 1);
    cr_assert_eq(pk.type, TSH_SFTP_VERSION);
    cr_assert_eq(pk.body_len, 0);
}

Test(tsh_sftp_wire, attrs_with_extended_pairs_over_the_bound_are_refused)
{
    struct rp_buf b;
    rp_buf_init(&b);
    for (uint32_t pairs = TSH_SFTP_MAX_EXTENDED; pairs <= TSH_SFTP_MAX_EXTENDED + 1; pairs++) {
        b.len = 0;
        rp_buf_put_be32(&b, TSH_SFTP_ATTR_SIZE | TSH_SFTP_ATTR_UIDGID | TSH_SFTP_ATTR_PERMISSIONS |
                                TSH_SFTP_ATTR_ACMODTIME | TSH_SFTP_ATTR_EXTENDED);
        rp_buf_put_be64(&b, 1 << 20);
        rp_buf_put_be32(&b, 1000);
        rp_buf_put_be32(&b, 1000);
        rp_buf_put_be32(&b, 0100600);
        rp_buf_put_be32(&b, 1);
        rp_buf_put_be32(&b, 2);
        rp_buf_put_be32(&b, pairs);
        for (uint32_t i = 0; i < pairs; i++) {
            put_str(&b, "name@example.com");
            put_str(&b, "value");
        }
        struct tsh_sftp_attrs a;
        int rv = tsh_sftp_decode_attrs(b.data, b.len, &a);
        if (pairs <= TSH_SFTP_MAX_EXTENDED) {
            cr_assert_eq(rv, 0, "%u pairs: %s", pairs, rp_errmsg());
            cr_assert_eq(a.size, 1 << 20);
            cr_assert_eq(a.perm, 0100600);
            cr_assert_eq(a.mtime, 2);
        } else {
            cr_assert_eq(rv, RP_EPROTO, "%u pairs are over the bound", pairs);
            cr_assert_not_null(strstr(rp_errmsg(), "malformed file attributes"), "%s", rp_errmsg());
        }
    }
    rp_buf_free(&b);
}

Test(tsh_sftp_wire, handle_must_be_1_to_256_bytes)
{
    uint8_t body[4 + 257];
    memset(body, 'h', sizeof body);
    const uint8_t *h;
    size_t hl;
    uint32_t lens[] = {0, 1, 256, 257};
    for (size_t i = 0; i < 4; i++) {
        body[0] = body[1] = 0;
        body[2] = (uint8_t)(lens[i] >> 8);
        body[3] = (uint8_t)lens[i];
        int rv = tsh_sftp_decode_handle(body, sizeof body, &h, &hl);
        if (lens[i] >= 1 && lens[i] <= TSH_SFTP_MAX_HANDLE) {
            cr_assert_eq(rv, 0, "%u bytes: %s", lens[i], rp_errmsg());
            cr_assert_eq(hl, lens[i]);
            cr_assert_eq(h, body + 4);
        } else {
            cr_assert_eq(rv, RP_EPROTO, "%u bytes", lens[i]);
        }
    }
}
