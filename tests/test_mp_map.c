/* tests/test_mp_map.c: the counting map builder of lib/mp.h writes the count of
 * what was packed, in the same bytes msgpack-c's own header would have, and its
 * output decodes through the validator every untrusted message passes. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"

/* A map of @n entries "k0".."k<n-1>" -> i, by the builder and by hand. */
static void pack_counted(struct rp_buf *b, uint32_t n)
{
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_mp_packer_init(&pk, b);
    rp_mp_map_begin(&pk, &m);
    for (uint32_t i = 0; i < n; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%u", i);
        rp_mp_map_u64(&m, key, i);
    }
    cr_assert_eq(rp_mp_map_end(&m), n);
}

static void pack_by_hand(struct rp_buf *b, uint32_t n)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, n);
    for (uint32_t i = 0; i < n; i++) {
        char key[16];
        snprintf(key, sizeof key, "k%u", i);
        rp_mp_kv_u64(&pk, key, i);
    }
}

Test(mp_map, bytes_equal_msgpack_c_header_at_every_size_class)
{
    /* 0 and 15: fixmap; 16 and 65535: map16; 65536: map32. */
    static const uint32_t sizes[] = {0, 1, 15, 16, 300, 65535, 65536};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        struct rp_buf a, b;
        rp_buf_init(&a);
        rp_buf_init(&b);
        pack_counted(&a, sizes[s]);
        pack_by_hand(&b, sizes[s]);
        cr_assert_eq(a.len, b.len, "size %u: %zu bytes, msgpack-c %zu", sizes[s], a.len, b.len);
        cr_assert(memcmp(a.data, b.data, a.len) == 0, "size %u: bytes differ", sizes[s]);
        msgpack_unpacked u;
        cr_assert_eq(rp_mp_parse(a.data, a.len, &u), 0);
        cr_assert_eq(u.data.type, MSGPACK_OBJECT_MAP);
        cr_assert_eq(u.data.via.map.size, sizes[s]);
        msgpack_unpacked_destroy(&u);
        rp_buf_free(&a);
        rp_buf_free(&b);
    }
}

Test(mp_map, nested_maps_count_their_own_entries)
{
    struct rp_buf b;
    msgpack_packer pk;
    struct rp_mp_map top, meta, spec, target;
    rp_buf_init(&b);
    rp_buf_append(&b, "\x93", 1); /* the map sits inside an array after other data */
    rp_mp_packer_init(&pk, &b);
    msgpack_pack_uint8(&pk, 7);
    rp_mp_map_begin(&pk, &top);
    rp_mp_map_str(&top, "kind", "lock");
    rp_mp_map_begin_map(&top, "metadata", &meta);
    rp_mp_map_str(&meta, "name", "n1");
    rp_mp_map_u64(&meta, "expires", 99);
    rp_mp_map_end(&meta);
    rp_mp_map_begin_map(&top, "spec", &spec);
    rp_mp_map_begin_map(&spec, "target", &target);
    for (int i = 0; i < 20; i++) { /* a map16 inside fixmaps: the shrink moves it */
        char key[16];
        snprintf(key, sizeof key, "t%d", i);
        rp_mp_map_i64(&target, key, -i);
    }
    cr_assert_eq(rp_mp_map_end(&target), 20);
    rp_mp_map_bool(&spec, "on", true);
    msgpack_pack_array(rp_mp_map_key(&spec, "list"), 2);
    msgpack_pack_nil(&pk);
    rp_mp_pack_str(&pk, "x");
    rp_mp_map_strn(&spec, "msg", "hello world", 5);
    cr_assert_eq(rp_mp_map_end(&spec), 4);
    rp_mp_map_raw(&top, "raw", "\xc3", 1);
    rp_mp_map_str(&top, "none", NULL);
    cr_assert_eq(rp_mp_map_end(&top), 5);
    msgpack_pack_true(&pk);

    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(b.data, b.len, &u), 0, "%s", rp_errmsg());
    cr_assert_eq(u.data.type, MSGPACK_OBJECT_ARRAY);
    cr_assert_eq(u.data.via.array.size, 3);
    const msgpack_object *m = &u.data.via.array.ptr[1];
    cr_assert(u.data.via.array.ptr[2].type == MSGPACK_OBJECT_BOOLEAN);
    cr_assert_eq(m->type, MSGPACK_OBJECT_MAP);
    cr_assert_eq(m->via.map.size, 5);
    cr_assert(rp_mp_str_eq(rp_mp_get(m, "kind"), "lock"));
    uint64_t v = 0;
    cr_assert_eq(rp_mp_get_u64(rp_mp_get(m, "metadata"), "expires", &v), 0);
    cr_assert_eq(v, 99);
    const msgpack_object *sp = rp_mp_get(m, "spec");
    cr_assert_eq(sp->via.map.size, 4);
    const msgpack_object *t = rp_mp_get(sp, "target");
    cr_assert_eq(t->via.map.size, 20);
    cr_assert_eq(rp_mp_get(t, "t19")->via.i64, -19);
    cr_assert(rp_mp_str_eq(rp_mp_get(sp, "msg"), "hello"));
    cr_assert_eq(rp_mp_get(sp, "list")->via.array.size, 2);
    cr_assert(rp_mp_get(m, "raw")->via.boolean);
    cr_assert_eq(rp_mp_get(m, "none")->type, MSGPACK_OBJECT_NIL);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
}

Test(mp_map, optional_entries_are_counted_only_when_packed)
{
    for (int mask = 0; mask < 8; mask++) {
        struct rp_buf b;
        msgpack_packer pk;
        struct rp_mp_map m;
        rp_buf_init(&b);
        rp_mp_packer_init(&pk, &b);
        rp_mp_map_begin(&pk, &m);
        rp_mp_map_str(&m, "m", "list");
        if (mask & 1)
            rp_mp_map_str(&m, "prefix", "a");
        if (mask & 2)
            rp_mp_map_u64(&m, "limit", 5);
        if (mask & 4)
            rp_mp_map_bool(&m, "stale", true);
        rp_mp_map_end(&m);
        msgpack_unpacked u;
        cr_assert_eq(rp_mp_parse(b.data, b.len, &u), 0, "mask %d: %s", mask, rp_errmsg());
        cr_assert_eq(u.data.via.map.size, 1u + (mask & 1) + !!(mask & 2) + !!(mask & 4));
        cr_assert_eq(rp_mp_get(&u.data, "stale") != NULL, (mask & 4) != 0);
        msgpack_unpacked_destroy(&u);
        rp_buf_free(&b);
    }
}
