/* tests/lib/state_helpers.c: the fixture and helpers of the state/ unit tests
 * (see state_helpers.h). */
#include "tests/lib/state_helpers.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "tests/lib/raft_helpers.h"

char sth_tmpdir[64];
struct state *sth_state;

/* Every directory made is removed at teardown, even when the test failed. */
static char made_dirs[16][64];
static int n_made;

void sth_remove_tree(const char *dir)
{
    rt_rmtree(dir);
}

void sth_make_tmpdir(char *dir)
{
    strcpy(dir, "/tmp/rp_state_test_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_lt(n_made, 16);
    strcpy(made_dirs[n_made++], dir);
}

struct state *sth_open_state_in(const char *dir, const struct state_opts *opts)
{
    struct state *s = NULL;
    int rv = state_open(&s, dir, opts);
    cr_assert_eq(rv, 0, "state_open: %s", rp_errmsg());
    return s;
}

void sth_setup(void)
{
    sth_make_tmpdir(sth_tmpdir);
    sth_state = sth_open_state_in(sth_tmpdir, NULL);
}

void sth_teardown(void)
{
    state_close(sth_state);
    sth_state = NULL;
    for (int i = 0; i < n_made; i++)
        sth_remove_tree(made_dirs[i]);
    n_made = 0;
}

void sth_make_res(struct rp_buf *b, const char *kind, const char *name, uint64_t expires,
                  const char *env, const char *spec)
{
    msgpack_packer pk;
    rp_buf_init(b);
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "kind", kind);
    rp_mp_kv_str(&pk, "version", "v2");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 1 + (expires != 0) + (env != NULL));
    rp_mp_kv_str(&pk, "name", name);
    if (expires != 0)
        rp_mp_kv_u64(&pk, "expires", expires);
    if (env != NULL) {
        rp_mp_pack_str(&pk, "labels");
        msgpack_pack_map(&pk, 1);
        rp_mp_kv_str(&pk, "env", env);
    }
    rp_mp_pack_str(&pk, "spec");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "v", spec ? spec : "");
}

void sth_encode(struct rp_buf *out, struct state_cmd c, const struct rp_buf *res)
{
    rp_buf_init(out);
    if (res != NULL) {
        c.res = res->data;
        c.res_len = res->len;
    }
    int rv = state_cmd_encode(&c, out);
    cr_assert_eq(rv, 0, "state_cmd_encode: %s", rp_errmsg());
}

struct state_result sth_apply_raw_to(struct state *s, uint64_t index, const void *cmd, size_t len)
{
    struct state_result r;
    int rv = state_apply(s, index, cmd, len, &r);
    cr_assert_eq(rv, 0, "state_apply: %s", rp_errmsg());
    return r;
}

struct state_result sth_apply_to(struct state *s, uint64_t index, struct state_cmd c,
                                 const struct rp_buf *res)
{
    struct rp_buf cmd;
    sth_encode(&cmd, c, res);
    struct state_result r = sth_apply_raw_to(s, index, cmd.data, cmd.len);
    rp_buf_free(&cmd);
    return r;
}

struct state_result sth_apply_cmd(uint64_t index, struct state_cmd c, const struct rp_buf *res)
{
    return sth_apply_to(sth_state, index, c, res);
}

struct state_result sth_put_to(struct state *s, uint64_t index, const char *op, const char *kind,
                               const char *name, uint64_t expires, const char *spec)
{
    struct rp_buf res;
    char rid[32];
    snprintf(rid, sizeof rid, "r%llu", (unsigned long long)index);
    sth_make_res(&res, kind, name, expires, NULL, spec);
    struct state_result r = sth_apply_to(s, index, (struct state_cmd){.op = op, .rid = rid}, &res);
    rp_buf_free(&res);
    return r;
}

struct state_result sth_put(uint64_t index, const char *kind, const char *name, const char *spec)
{
    return sth_put_to(sth_state, index, "put", kind, name, 0, spec);
}

struct state_result sth_del(uint64_t index, const char *kind, const char *name)
{
    char rid[32];
    snprintf(rid, sizeof rid, "r%llu", (unsigned long long)index);
    return sth_apply_cmd(
        index, (struct state_cmd){.op = "delete", .rid = rid, .kind = kind, .name = name}, NULL);
}

uint64_t sth_res_revision(const struct rp_buf *b)
{
    msgpack_unpacked u;
    uint64_t rev = 0;
    cr_assert_eq(rp_mp_parse(b->data, b->len, &u), 0);
    const msgpack_object *md = rp_mp_get(&u.data, "metadata");
    cr_assert_eq(rp_mp_get_u64(md, "revision", &rev), 0);
    msgpack_unpacked_destroy(&u);
    return rev;
}

void sth_res_spec(const void *p, size_t n, char *out, size_t outlen)
{
    msgpack_unpacked u;
    const char *s;
    size_t sl;
    cr_assert_eq(rp_mp_parse(p, n, &u), 0);
    const msgpack_object *spec = rp_mp_get(&u.data, "spec");
    cr_assert_eq(rp_mp_get_str(spec, "v", &s, &sl), 0);
    snprintf(out, outlen, "%.*s", (int)sl, s);
    msgpack_unpacked_destroy(&u);
}

int sth_get_spec_in(struct state *s, const char *kind, const char *name, char *out, size_t outlen,
                    uint64_t *rev)
{
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = state_get(s, kind, name, &b, NULL);
    if (rv == 0) {
        sth_res_spec(b.data, b.len, out, outlen);
        if (rev != NULL)
            *rev = sth_res_revision(&b);
    }
    rp_buf_free(&b);
    return rv;
}

int sth_get_spec(const char *kind, const char *name, char *out, size_t outlen, uint64_t *rev)
{
    return sth_get_spec_in(sth_state, kind, name, out, outlen, rev);
}

int sth_dump_cb(void *arg, const void *res, size_t len)
{
    struct rp_buf *b = arg;
    rp_buf_put_be32(b, (uint32_t)len);
    return rp_buf_append(b, res, len);
}

void sth_dump(struct state *s, struct rp_buf *out)
{
    rp_buf_init(out);
    cr_assert_eq(state_list(s, NULL, NULL, 0, sth_dump_cb, out, NULL), 0);
}

size_t sth_count(struct state *s, const char *kind, const char *prefix)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(state_list(s, kind, prefix, 0, sth_dump_cb, &b, NULL), 0);
    size_t n = 0;
    struct rp_rd rd;
    uint32_t l;
    rp_rd_init(&rd, b.data, b.len);
    while (rp_rd_be32(&rd, &l) == 0 && rp_rd_skip(&rd, l) == 0)
        n++;
    rp_buf_free(&b);
    return n;
}
