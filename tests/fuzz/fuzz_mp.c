/* tests/fuzz/fuzz_mp.c: msgpack from the network (lib/mp.h), and its YAML printing.
 *
 * Every RPC request and stored value is decoded by rp_mp_parse, which first measures
 * the bytes with rp_mp_validate. Checked: the two agree (what validates also decodes);
 * a decoded object re-encodes to bytes that validate and re-encode to themselves; the
 * typed lookups accept any object; and rp_ymp_to_yaml (what `tctl get` prints) writes,
 * for any object but nil whose map keys are unique strings, YAML that lib/yaml reads
 * back and prints again identically. */
#include <msgpack.h>

#include "lib/buf.h"
#include "lib/mp.h"
#include "lib/yaml_mp.h"
#include "tests/fuzz/check.h"

/* Map keys that are all strings and unique within their map: only then does YAML, whose
 * keys are strings and must be unique, hold the object. */
static bool yaml_keys_ok(const msgpack_object *o, int depth)
{
    if (depth > RP_YAML_MAX_DEPTH)
        return false;
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (!yaml_keys_ok(&o->via.array.ptr[i], depth + 1))
                return false;
        }
    }
    if (o->type != MSGPACK_OBJECT_MAP)
        return true;
    const msgpack_object_kv *kv = o->via.map.ptr;
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        if (kv[i].key.type != MSGPACK_OBJECT_STR)
            return false;
        for (uint32_t j = 0; j < i; j++) {
            size_t n = kv[i].key.via.str.size; /* 0: the pointers may be NULL */
            if (kv[j].key.via.str.size == n &&
                (n == 0 || memcmp(kv[j].key.via.str.ptr, kv[i].key.via.str.ptr, n) == 0))
                return false;
        }
        if (!yaml_keys_ok(&kv[i].val, depth + 1))
            return false;
    }
    return true;
}

static void check_lookups(const msgpack_object *root)
{
    static const char *const keys[] = {"kind", "version", "metadata", "name", "spec", ""};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        const char *s;
        size_t n;
        uint64_t u;
        bool b;
        char *dup = NULL;
        rp_mp_get_str(root, keys[i], &s, &n);
        rp_mp_get_u64(root, keys[i], &u);
        rp_mp_get_bool(root, keys[i], &b);
        if (rp_mp_get_strdup(root, keys[i], &dup) == 0) {
            FUZZ_CHECK(dup != NULL);
            FUZZ_CHECK(rp_mp_str_eq(rp_mp_get(root, keys[i]), dup));
        }
        free(dup);
    }
}

/* YAML printed from @o reads back, and reading and printing it again changes nothing. */
static void check_yaml(const msgpack_object *o)
{
    struct rp_buf text, again, mp;
    rp_buf_init(&text);
    rp_buf_init(&again);
    rp_buf_init(&mp);
    /* A null root reads back as an empty map (lib/yaml.h), so it is left out. */
    if (o->type != MSGPACK_OBJECT_NIL && rp_ymp_to_yaml(&text, o) == 0 && yaml_keys_ok(o, 0)) {
        int rv = rp_ymp_parse_str("printed.yaml", (const char *)text.data, text.len, &mp, NULL);
        FUZZ_CHECK(rv == 0);
        msgpack_unpacked u;
        FUZZ_CHECK(rp_mp_parse(mp.data, mp.len, &u) == 0);
        FUZZ_CHECK(rp_ymp_to_yaml(&again, &u.data) == 0);
        FUZZ_CHECK(again.len == text.len && memcmp(again.data, text.data, text.len) == 0);
        msgpack_unpacked_destroy(&u);
    }
    rp_buf_free(&text);
    rp_buf_free(&again);
    rp_buf_free(&mp);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    msgpack_unpacked u;
    int valid = rp_mp_validate(data, size);
    int parsed = rp_mp_parse(data, size, &u);
    FUZZ_CHECK((valid == 0) == (parsed == 0));
    if (parsed != 0)
        return 0;

    struct rp_buf once, twice;
    rp_buf_init(&once);
    rp_buf_init(&twice);
    FUZZ_CHECK(rp_mp_pack_object(&once, &u.data) == 0);
    msgpack_unpacked u2;
    FUZZ_CHECK(rp_mp_parse(once.data, once.len, &u2) == 0);
    FUZZ_CHECK(rp_mp_pack_object(&twice, &u2.data) == 0);
    FUZZ_CHECK(once.len == twice.len && memcmp(once.data, twice.data, once.len) == 0);
    msgpack_unpacked_destroy(&u2);
    rp_buf_free(&once);
    rp_buf_free(&twice);

    check_lookups(&u.data);
    check_yaml(&u.data);
    msgpack_unpacked_destroy(&u);
    return 0;
}
