/* tests/test_state_codec.c: commands and resources: encoding, and every way a
 * malformed one is refused (with a message naming the field) without a crash. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "state/state.h"
#include "tests/lib/state_helpers.h"

/* A command map packed by hand, for shapes state_cmd_encode would not produce. */
static void raw_cmd(struct rp_buf *b, const char *op, const char *rid, const char *extra_key)
{
    msgpack_packer pk;
    rp_buf_init(b);
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, 4 + (extra_key != NULL));
    rp_mp_kv_str(&pk, "op", op);
    rp_mp_kv_str(&pk, "rid", rid);
    rp_mp_kv_str(&pk, "kind", "node");
    rp_mp_kv_str(&pk, "name", "n1");
    if (extra_key != NULL)
        rp_mp_kv_u64(&pk, extra_key, 1);
}

static void expect_invalid(const struct rp_buf *b, const char *needle)
{
    int rv = state_command_check(b->data, b->len);
    cr_assert_eq(rv, RP_EINVAL, "expected RP_EINVAL, got %d", rv);
    if (needle != NULL)
        cr_assert_not_null(strstr(rp_errmsg(), needle), "message '%s' lacks '%s'", rp_errmsg(),
                           needle);
}

Test(state_codec, every_op_round_trips_through_encode_and_check)
{
    struct rp_buf res, cmd, ops;
    sth_make_res(&res, "node", "n1", 5, "prod", "x");
    const char *res_ops[] = {"put", "create", "update", "cas"};
    for (size_t i = 0; i < 4; i++) {
        sth_encode(&cmd, (struct state_cmd){.op = res_ops[i], .rid = "a", .rev = 0}, &res);
        cr_assert_eq(state_command_check(cmd.data, cmd.len), 0, "%s: %s", res_ops[i], rp_errmsg());
        msgpack_unpacked u;
        cr_assert_eq(rp_mp_parse(cmd.data, cmd.len, &u), 0);
        cr_assert(rp_mp_str_eq(rp_mp_get(&u.data, "op"), res_ops[i]));
        cr_assert(rp_mp_str_eq(rp_mp_get(&u.data, "rid"), "a"));
        /* cas always carries rev, even 0 ("must be absent"). */
        cr_assert_eq(rp_mp_get(&u.data, "rev") != NULL, strcmp(res_ops[i], "cas") == 0);
        struct rp_buf back;
        rp_buf_init(&back);
        cr_assert_eq(rp_mp_pack_object(&back, rp_mp_get(&u.data, "res")), 0);
        cr_assert_eq(back.len, res.len);
        cr_assert_eq(memcmp(back.data, res.data, res.len), 0);
        rp_buf_free(&back);
        msgpack_unpacked_destroy(&u);
        rp_buf_free(&cmd);
    }
    sth_encode(&cmd, (struct state_cmd){.op = "delete", .rid = "a", .kind = "node", .name = "n1"},
               NULL);
    cr_assert_eq(state_command_check(cmd.data, cmd.len), 0, "%s", rp_errmsg());
    rp_buf_free(&cmd);
    sth_encode(
        &cmd,
        (struct state_cmd){.op = "cdelete", .rid = "a", .kind = "node", .name = "n1", .rev = 7},
        NULL);
    cr_assert_eq(state_command_check(cmd.data, cmd.len), 0, "%s", rp_errmsg());
    rp_buf_free(&cmd);
    sth_encode(&cmd, (struct state_cmd){.op = "expire", .before = 1000}, NULL);
    cr_assert_eq(state_command_check(cmd.data, cmd.len), 0, "%s", rp_errmsg());
    rp_buf_free(&cmd);

    /* Sub-commands appended one after another make a batch. */
    rp_buf_init(&ops);
    struct state_cmd sub = {.op = "put", .res = res.data, .res_len = res.len};
    cr_assert_eq(state_cmd_encode(&sub, &ops), 0);
    sub = (struct state_cmd){.op = "delete", .kind = "node", .name = "n2"};
    cr_assert_eq(state_cmd_encode(&sub, &ops), 0);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 2},
               NULL);
    cr_assert_eq(state_command_check(cmd.data, cmd.len), 0, "%s", rp_errmsg());
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&res);
}

Test(state_codec, resource_with_revision_sets_revision_and_keeps_everything_else)
{
    struct rp_buf res, out, again;
    sth_make_res(&res, "node", "n1", 99, "prod", "hello");
    rp_buf_init(&out);
    cr_assert_eq(state_resource_with_revision(res.data, res.len, 42, &out), 0);
    cr_assert_eq(sth_res_revision(&out), 42);
    char spec[32];
    sth_res_spec(out.data, out.len, spec, sizeof spec);
    cr_assert_str_eq(spec, "hello");
    struct state_res_meta meta;
    cr_assert_eq(state_resource_check(out.data, out.len, &meta), 0);
    cr_assert_eq(meta.expires, 99);
    cr_assert_eq(meta.revision, 42);
    /* A present revision is replaced in place, not duplicated. */
    rp_buf_init(&again);
    cr_assert_eq(state_resource_with_revision(out.data, out.len, 43, &again), 0);
    cr_assert_eq(sth_res_revision(&again), 43);
    cr_assert_eq(again.len, out.len);
    rp_buf_free(&again);
    rp_buf_free(&out);
    rp_buf_free(&res);
}

Test(state_codec, resource_check_meta_borrows_from_the_input)
{
    struct rp_buf res;
    struct state_res_meta meta;
    sth_make_res(&res, "role", "admin", 0, NULL, "x");
    cr_assert_eq(state_resource_check(res.data, res.len, &meta), 0);
    const uint8_t *lo = res.data, *hi = res.data + res.len;
    cr_assert((const uint8_t *)meta.kind >= lo && (const uint8_t *)meta.kind < hi);
    cr_assert((const uint8_t *)meta.name >= lo && (const uint8_t *)meta.name < hi);
    cr_assert_eq(meta.kind_len, 4);
    cr_assert_eq(memcmp(meta.kind, "role", 4), 0);
    cr_assert_eq(meta.name_len, 5);
    cr_assert_eq(memcmp(meta.name, "admin", 5), 0);
    rp_buf_free(&res);
}

Test(state_codec, bad_kind_names_are_rejected_with_a_message)
{
    const char *bad[] = {
        "",      "Node",      "no-de",
        "no de", "n\xc3\xa9", "a234567890123456789012345678901234567890123456789012345678901234"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct rp_buf res;
        struct state_res_meta meta;
        sth_make_res(&res, bad[i], "n", 0, NULL, "x");
        cr_assert_eq(state_resource_check(res.data, res.len, &meta), RP_EINVAL, "kind '%s'",
                     bad[i]);
        cr_assert_not_null(strstr(rp_errmsg(), "res.kind"), "%s", rp_errmsg());
        rp_buf_free(&res);
    }
    struct rp_buf res;
    struct state_res_meta meta;
    sth_make_res(&res, "a23456789012345678901234567890123456789012345678901234567890123", "n", 0,
                 NULL, "x");
    cr_assert_eq(state_resource_check(res.data, res.len, &meta), 0, "63 bytes is fine");
    rp_buf_free(&res);
}

Test(state_codec, bad_names_are_rejected_with_a_message)
{
    char long_name[300];
    memset(long_name, 'a', 256);
    long_name[256] = '\0';
    const char *bad[] = {"", "a\nb", "tab\there", "del\x7f", long_name};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct rp_buf res;
        struct state_res_meta meta;
        sth_make_res(&res, "node", bad[i], 0, NULL, "x");
        cr_assert_eq(state_resource_check(res.data, res.len, &meta), RP_EINVAL, "name %zu", i);
        cr_assert_not_null(strstr(rp_errmsg(), "res.metadata.name"), "%s", rp_errmsg());
        rp_buf_free(&res);
    }
    /* An embedded NUL, which a C string cannot carry. */
    struct rp_buf res;
    msgpack_packer pk;
    struct state_res_meta meta;
    rp_buf_init(&res);
    rp_mp_packer_init(&pk, &res);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "kind", "node");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 1);
    rp_mp_pack_str(&pk, "name");
    rp_mp_pack_strn(&pk, "a\0b", 3);
    cr_assert_eq(state_resource_check(res.data, res.len, &meta), RP_EINVAL);
    rp_buf_free(&res);
    long_name[255] = '\0';
    sth_make_res(&res, "node", long_name, 0, NULL, "x");
    cr_assert_eq(state_resource_check(res.data, res.len, &meta), 0, "255 bytes is fine");
    rp_buf_free(&res);
}

/* Packs {"kind": "node", "metadata": {"name": "n", <key>: <value>}}. */
static void res_with_meta(struct rp_buf *b, void (*pack_extra)(msgpack_packer *))
{
    msgpack_packer pk;
    rp_buf_init(b);
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "kind", "node");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "name", "n");
    pack_extra(&pk);
}

static void labels_not_strings(msgpack_packer *pk)
{
    rp_mp_pack_str(pk, "labels");
    msgpack_pack_map(pk, 1);
    rp_mp_kv_u64(pk, "env", 3);
}
static void labels_array(msgpack_packer *pk)
{
    rp_mp_pack_str(pk, "labels");
    msgpack_pack_array(pk, 0);
}
static void expires_negative(msgpack_packer *pk)
{
    rp_mp_kv_i64(pk, "expires", -5);
}
static void expires_string(msgpack_packer *pk)
{
    rp_mp_kv_str(pk, "expires", "tomorrow");
}
static void revision_float(msgpack_packer *pk)
{
    rp_mp_pack_str(pk, "revision");
    msgpack_pack_double(pk, 1.5);
}
static void duplicate_name(msgpack_packer *pk)
{
    rp_mp_kv_str(pk, "name", "other");
}

Test(state_codec, wrong_types_are_rejected_naming_the_field)
{
    struct {
        void (*fn)(msgpack_packer *);
        const char *field;
    } cases[] = {
        {labels_not_strings, "res.metadata.labels"}, {labels_array, "res.metadata.labels"},
        {expires_negative, "res.metadata.expires"},  {expires_string, "res.metadata.expires"},
        {revision_float, "res.metadata.revision"},   {duplicate_name, "duplicate key 'name'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rp_buf res;
        struct state_res_meta meta;
        res_with_meta(&res, cases[i].fn);
        cr_assert_eq(state_resource_check(res.data, res.len, &meta), RP_EINVAL, "case %zu", i);
        cr_assert_not_null(strstr(rp_errmsg(), cases[i].field), "case %zu: '%s'", i, rp_errmsg());
        rp_buf_free(&res);
    }
    /* Not a map at all, and a map without metadata. */
    struct rp_buf b;
    msgpack_packer pk;
    struct state_res_meta meta;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    msgpack_pack_array(&pk, 0);
    cr_assert_eq(state_resource_check(b.data, b.len, &meta), RP_EINVAL);
    rp_buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "kind", "node");
    cr_assert_eq(state_resource_check(b.data, b.len, &meta), RP_EINVAL);
    cr_assert_not_null(strstr(rp_errmsg(), "res.metadata"));
    rp_buf_free(&b);
}

Test(state_codec, malformed_msgpack_is_rejected)
{
    struct rp_buf cmd;
    sth_encode(&cmd, (struct state_cmd){.op = "delete", .rid = "a", .kind = "node", .name = "n"},
               NULL);
    /* Every truncation. */
    for (size_t n = 0; n < cmd.len; n++)
        cr_assert_eq(state_command_check(cmd.data, n), RP_EINVAL, "truncated to %zu", n);
    /* Trailing bytes. */
    rp_buf_append(&cmd, "\x01", 1);
    cr_assert_eq(state_command_check(cmd.data, cmd.len), RP_EINVAL);
    rp_buf_free(&cmd);
    /* Never-used type byte, and a str32 that claims 4 GiB. */
    cr_assert_eq(state_command_check("\xc1", 1), RP_EINVAL);
    cr_assert_eq(state_command_check("\xdb\xff\xff\xff\xff", 5), RP_EINVAL);
    /* A map32 that claims 2^32-1 pairs in 5 bytes. */
    cr_assert_eq(state_command_check("\xdf\xff\xff\xff\xff", 5), RP_EINVAL);
    cr_assert_eq(state_command_check("", 0), RP_EINVAL);
}

Test(state_codec, deep_nesting_is_rejected_and_moderate_nesting_accepted)
{
    for (int depth = 30; depth <= 40; depth++) {
        struct rp_buf res, cmd;
        msgpack_packer pk;
        rp_buf_init(&res);
        rp_mp_packer_init(&pk, &res);
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_str(&pk, "kind", "node");
        rp_mp_pack_str(&pk, "metadata");
        msgpack_pack_map(&pk, 1);
        rp_mp_kv_str(&pk, "name", "n");
        rp_mp_pack_str(&pk, "spec");
        for (int i = 0; i < depth; i++)
            msgpack_pack_array(&pk, 1);
        msgpack_pack_nil(&pk);
        /* By hand: state_cmd_encode itself refuses a res nested too deep. */
        rp_buf_init(&cmd);
        rp_mp_packer_init(&pk, &cmd);
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_str(&pk, "op", "put");
        rp_mp_kv_str(&pk, "rid", "a");
        rp_mp_kv_raw(&pk, "res", res.data, res.len);
        /* command map (1) + res map (2) + spec arrays: limit RP_MP_MAX_DEPTH. */
        int want = 2 + depth <= RP_MP_MAX_DEPTH ? 0 : RP_EINVAL;
        cr_assert_eq(state_command_check(cmd.data, cmd.len), want, "depth %d: %s", depth,
                     rp_errmsg());
        rp_buf_free(&cmd);
        rp_buf_free(&res);
    }
}

Test(state_codec, oversized_command_is_rejected_without_parsing)
{
    size_t n = STATE_MAX_COMMAND + 1;
    char *big = calloc(1, n);
    cr_assert_eq(state_command_check(big, n), RP_EINVAL);
    cr_assert_not_null(strstr(rp_errmsg(), "exceeds"));
    free(big);
}

Test(state_codec, unknown_misplaced_and_mistyped_fields_are_rejected)
{
    struct rp_buf b;
    raw_cmd(&b, "delete", "r", "colour");
    expect_invalid(&b, "unknown field 'colour'");
    rp_buf_free(&b);
    raw_cmd(&b, "delete", "r", "before");
    expect_invalid(&b, "before: not a field of op 'delete'");
    rp_buf_free(&b);
    raw_cmd(&b, "remove", "r", NULL);
    expect_invalid(&b, "op: unknown op 'remove'");
    rp_buf_free(&b);
    raw_cmd(&b, "cdelete", "r", NULL);
    expect_invalid(&b, "rev:");
    rp_buf_free(&b);
    sth_encode(&b, (struct state_cmd){.op = "cdelete", .rid = "r", .kind = "node", .name = "n"},
               NULL);
    expect_invalid(&b, "cdelete needs a revision >= 1");
    rp_buf_free(&b);
    sth_encode(&b, (struct state_cmd){.op = "delete", .rid = "r", .kind = "No", .name = "n"}, NULL);
    expect_invalid(&b, "kind:");
    rp_buf_free(&b);
    sth_encode(&b, (struct state_cmd){.op = "put", .rid = "r"}, NULL);
    expect_invalid(&b, "res: missing");
    rp_buf_free(&b);
    sth_encode(&b, (struct state_cmd){.op = "expire"}, NULL);
    expect_invalid(&b, "before:");
    rp_buf_free(&b);
    /* A duplicated field in the command map. */
    msgpack_packer pk;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    msgpack_pack_map(&pk, 5);
    rp_mp_kv_str(&pk, "op", "delete");
    rp_mp_kv_str(&pk, "rid", "r");
    rp_mp_kv_str(&pk, "kind", "node");
    rp_mp_kv_str(&pk, "name", "n");
    rp_mp_kv_str(&pk, "name", "m");
    expect_invalid(&b, "duplicate key 'name'");
    rp_buf_free(&b);
    /* A field of the wrong type. */
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "op", "delete");
    rp_mp_kv_u64(&pk, "rid", 5);
    rp_mp_kv_str(&pk, "kind", "node");
    rp_mp_kv_str(&pk, "name", "n");
    expect_invalid(&b, "rid:");
    rp_buf_free(&b);
    /* Not a map. */
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    rp_mp_pack_str(&pk, "put");
    expect_invalid(&b, "command: expected a map");
    rp_buf_free(&b);
}

Test(state_codec, request_ids_are_required_and_bounded)
{
    struct rp_buf b;
    sth_encode(&b, (struct state_cmd){.op = "delete", .kind = "node", .name = "n"}, NULL);
    expect_invalid(&b, "rid: missing");
    rp_buf_free(&b);
    char rid[80];
    memset(rid, 'x', 65);
    rid[65] = '\0';
    sth_encode(&b, (struct state_cmd){.op = "delete", .rid = rid, .kind = "node", .name = "n"},
               NULL);
    expect_invalid(&b, "rid:");
    rp_buf_free(&b);
    rid[64] = '\0';
    sth_encode(&b, (struct state_cmd){.op = "delete", .rid = rid, .kind = "node", .name = "n"},
               NULL);
    cr_assert_eq(state_command_check(b.data, b.len), 0, "64 bytes is fine: %s", rp_errmsg());
    rp_buf_free(&b);
}

Test(state_codec, batch_shape_is_checked)
{
    struct rp_buf ops, cmd, res;
    sth_make_res(&res, "node", "n", 0, NULL, "x");
    /* A rid inside. */
    rp_buf_init(&ops);
    struct state_cmd sub = {.op = "put", .rid = "inner", .res = res.data, .res_len = res.len};
    state_cmd_encode(&sub, &ops);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 1},
               NULL);
    expect_invalid(&cmd, "ops[0]: rid: not allowed inside a batch");
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    /* A nested batch, an expire. */
    const char *nested[] = {"batch", "expire"};
    for (int i = 0; i < 2; i++) {
        rp_buf_init(&ops);
        sub = (struct state_cmd){.op = nested[i], .before = 5};
        state_cmd_encode(&sub, &ops);
        sth_encode(&cmd,
                   (struct state_cmd){
                       .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 1},
                   NULL);
        expect_invalid(&cmd, "not allowed inside a batch");
        rp_buf_free(&cmd);
        rp_buf_free(&ops);
    }
    /* Empty, and a bad second op. */
    sth_encode(&cmd,
               (struct state_cmd){.op = "batch", .rid = "b", .ops = "", .ops_len = 0, .n_ops = 0},
               NULL);
    expect_invalid(&cmd, "ops: expected 1-");
    rp_buf_free(&cmd);
    rp_buf_init(&ops);
    sub = (struct state_cmd){.op = "put", .res = res.data, .res_len = res.len};
    state_cmd_encode(&sub, &ops);
    sub = (struct state_cmd){.op = "delete", .kind = "node"};
    state_cmd_encode(&sub, &ops);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 2},
               NULL);
    expect_invalid(&cmd, "ops[1]: name:");
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&res);
}

Test(state_codec, random_corruption_never_crashes_the_checker)
{
    struct rp_buf res, cmd;
    sth_make_res(&res, "node", "n1", 5, "prod", "spec");
    sth_encode(&cmd, (struct state_cmd){.op = "cas", .rid = "r", .rev = 3}, &res);
    srand(1234);
    for (int i = 0; i < 20000; i++) {
        uint8_t *copy = malloc(cmd.len);
        memcpy(copy, cmd.data, cmd.len);
        int flips = 1 + rand() % 4;
        for (int f = 0; f < flips; f++)
            copy[rand() % cmd.len] = (uint8_t)rand();
        int rv = state_command_check(copy, cmd.len);
        cr_assert(rv == 0 || rv == RP_EINVAL, "rv %d", rv);
        free(copy);
    }
    rp_buf_free(&cmd);
    rp_buf_free(&res);
}
