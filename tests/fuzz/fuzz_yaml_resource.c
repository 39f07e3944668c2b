/* tests/fuzz/fuzz_yaml_resource.c: resource files as users write them (lib/yaml.c and
 * lib/yaml_mp.c: YAML text -> tree -> resource msgpack, with a line for every path).
 *
 * `tctl create -f` reads any YAML a user hands it; so does the server for resources
 * sent as text. Checked, for text that converts: the resource prints back as YAML that
 * converts to the same msgpack bytes (the round trip lib/yaml_mp.h promises); every
 * recorded path is unique, so rp_ymp_line() finds each node's own line; an error
 * message naming a path is located without trouble. The multi-document reader runs on
 * the same text. */
#include <msgpack.h>

#include "lib/buf.h"
#include "lib/mp.h"
#include "lib/yaml.h"
#include "lib/yaml_mp.h"
#include "tests/fuzz/check.h"

/* Beyond this many nodes the path check (quadratic) is skipped. */
#define MAX_CHECKED_PATHS 4000

static void check_lines(const struct rp_ymp_lines *lines)
{
    if (lines->n > MAX_CHECKED_PATHS)
        return;
    for (size_t i = 0; i < lines->n; i++) {
        FUZZ_CHECK(rp_ymp_line(lines, lines->v[i].path) == lines->v[i].line);
        /* What a validator reports about this path gets a location. */
        /* Messages are cut at 512 bytes: long paths cannot be located. */
        if (strlen(lines->v[i].path) > 300)
            continue;
        char want[64];
        snprintf(want, sizeof want, "fuzz.yaml:%d: ", lines->v[i].line);
        rp_err(RP_EINVAL, "%s: is wrong, expected something else", lines->v[i].path);
        FUZZ_CHECK(rp_ymp_locate(lines, RP_EINVAL) == RP_EINVAL);
        FUZZ_CHECK(strncmp(rp_errmsg(), want, strlen(want)) == 0);
    }
}

/* A key that may be written longer than 1000 bytes: an escape takes at most 4. */
static bool has_long_key(const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            if (has_long_key(&o->via.array.ptr[i]))
                return true;
        }
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            if ((kv->key.type == MSGPACK_OBJECT_STR && kv->key.via.str.size > 250) ||
                has_long_key(&kv->val))
                return true;
        }
    }
    return false;
}

static void check_round_trip(const struct rp_buf *mp)
{
    msgpack_unpacked u;
    /* Deeper than msgpack's limit (YAML allows more): refused where it is received. */
    if (rp_mp_parse(mp->data, mp->len, &u) != 0)
        return;
    struct rp_buf text, again;
    rp_buf_init(&text);
    rp_buf_init(&again);
    /* The one refusal allowed: a key that libyaml accepted (in flow style, say) but that
     * is too long, as written, for the block style it is printed in. */
    if (rp_ymp_to_yaml(&text, &u.data) == 0) {
        FUZZ_CHECK(
            rp_ymp_parse_str("printed.yaml", (const char *)text.data, text.len, &again, NULL) == 0);
        FUZZ_CHECK(again.len == mp->len && memcmp(again.data, mp->data, mp->len) == 0);
    } else {
        FUZZ_CHECK(has_long_key(&u.data));
    }
    rp_buf_free(&text);
    rp_buf_free(&again);
    msgpack_unpacked_destroy(&u);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    struct rp_buf mp;
    struct rp_ymp_lines lines;

    rp_buf_init(&mp);
    rp_ymp_lines_init(&lines);
    if (rp_ymp_parse_str("fuzz.yaml", text, size, &mp, &lines) == 0) {
        FUZZ_CHECK(mp.len > 0 && lines.n > 0);
        check_lines(&lines);
        check_round_trip(&mp);
    } else {
        FUZZ_CHECK(mp.len == 0 && lines.n == 0);
    }
    rp_ymp_lines_free(&lines);
    rp_buf_free(&mp);

    struct rp_ynode **docs = NULL;
    size_t n_docs = 0;
    if (rp_yaml_parse_all("fuzz.yaml", text, size, &docs, &n_docs) == 0)
        rp_yaml_docs_free(docs, n_docs);
    return 0;
}
