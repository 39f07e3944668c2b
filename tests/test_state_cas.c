/* tests/test_state_cas.c: compare-and-swap and conditional delete on revisions. */
/* ---- Helpers (each state test file carries its own copy: tests/lib/ is not
 * state's to add to; see state/README.md) ---------------------------------- */

#include <criterion/criterion.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "state/state.h"

static char tmpdir[64];
static struct state *S;

static __attribute__((unused)) int rm_entry(const char *path, const struct stat *sb, int flag,
                                            struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static __attribute__((unused)) void remove_tree(const char *dir)
{
    nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* Every directory made is removed at teardown, even when the test failed. */
static char made_dirs[16][64];
static int n_made;

static __attribute__((unused)) void make_tmpdir(char *dir)
{
    strcpy(dir, "/tmp/rp_state_test_XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    cr_assert_lt(n_made, 16);
    strcpy(made_dirs[n_made++], dir);
}

static __attribute__((unused)) struct state *open_state_in(const char *dir,
                                                           const struct state_opts *opts)
{
    struct state *s = NULL;
    int rv = state_open(&s, dir, opts);
    cr_assert_eq(rv, 0, "state_open: %s", rp_errmsg());
    return s;
}

static __attribute__((unused)) void setup(void)
{
    make_tmpdir(tmpdir);
    S = open_state_in(tmpdir, NULL);
}

static __attribute__((unused)) void teardown(void)
{
    state_close(S);
    S = NULL;
    for (int i = 0; i < n_made; i++)
        remove_tree(made_dirs[i]);
    n_made = 0;
}

/* A resource: labels {"env": env} if env != NULL, spec {"v": spec}. */
static __attribute__((unused)) void make_res(struct rp_buf *b, const char *kind, const char *name,
                                             uint64_t expires, const char *env, const char *spec)
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

/* Encodes @c (with @res as a resource if non-NULL) into @out. */
static __attribute__((unused)) void encode(struct rp_buf *out, struct state_cmd c,
                                           const struct rp_buf *res)
{
    rp_buf_init(out);
    if (res != NULL) {
        c.res = res->data;
        c.res_len = res->len;
    }
    int rv = state_cmd_encode(&c, out);
    cr_assert_eq(rv, 0, "state_cmd_encode: %s", rp_errmsg());
}

static __attribute__((unused)) struct state_result apply_raw_to(struct state *s, uint64_t index,
                                                                const void *cmd, size_t len)
{
    struct state_result r;
    int rv = state_apply(s, index, cmd, len, &r);
    cr_assert_eq(rv, 0, "state_apply: %s", rp_errmsg());
    return r;
}

static __attribute__((unused)) struct state_result
apply_to(struct state *s, uint64_t index, struct state_cmd c, const struct rp_buf *res)
{
    struct rp_buf cmd;
    encode(&cmd, c, res);
    struct state_result r = apply_raw_to(s, index, cmd.data, cmd.len);
    rp_buf_free(&cmd);
    return r;
}

static __attribute__((unused)) struct state_result apply_cmd(uint64_t index, struct state_cmd c,
                                                             const struct rp_buf *res)
{
    return apply_to(S, index, c, res);
}

/* put of kind/name with spec @spec under request id "r<index>". */
static __attribute__((unused)) struct state_result put_to(struct state *s, uint64_t index,
                                                          const char *op, const char *kind,
                                                          const char *name, uint64_t expires,
                                                          const char *spec)
{
    struct rp_buf res;
    char rid[32];
    snprintf(rid, sizeof rid, "r%llu", (unsigned long long)index);
    make_res(&res, kind, name, expires, NULL, spec);
    struct state_result r = apply_to(s, index, (struct state_cmd){.op = op, .rid = rid}, &res);
    rp_buf_free(&res);
    return r;
}

static __attribute__((unused)) struct state_result put(uint64_t index, const char *kind,
                                                       const char *name, const char *spec)
{
    return put_to(S, index, "put", kind, name, 0, spec);
}

static __attribute__((unused)) struct state_result del(uint64_t index, const char *kind,
                                                       const char *name)
{
    char rid[32];
    snprintf(rid, sizeof rid, "r%llu", (unsigned long long)index);
    return apply_cmd(
        index, (struct state_cmd){.op = "delete", .rid = rid, .kind = kind, .name = name}, NULL);
}

/* Parses a stored resource and returns one field of metadata / spec. */
static __attribute__((unused)) uint64_t res_revision(const struct rp_buf *b)
{
    msgpack_unpacked u;
    uint64_t rev = 0;
    cr_assert_eq(rp_mp_parse(b->data, b->len, &u), 0);
    const msgpack_object *md = rp_mp_get(&u.data, "metadata");
    cr_assert_eq(rp_mp_get_u64(md, "revision", &rev), 0);
    msgpack_unpacked_destroy(&u);
    return rev;
}

static __attribute__((unused)) void res_spec(const void *p, size_t n, char *out, size_t outlen)
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

/* 0 and the spec of kind/name, or the state_get error. */
static __attribute__((unused)) int get_spec_in(struct state *s, const char *kind, const char *name,
                                               char *out, size_t outlen, uint64_t *rev)
{
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = state_get(s, kind, name, &b, NULL);
    if (rv == 0) {
        res_spec(b.data, b.len, out, outlen);
        if (rev != NULL)
            *rev = res_revision(&b);
    }
    rp_buf_free(&b);
    return rv;
}

static __attribute__((unused)) int get_spec(const char *kind, const char *name, char *out,
                                            size_t outlen, uint64_t *rev)
{
    return get_spec_in(S, kind, name, out, outlen, rev);
}

static __attribute__((unused)) int dump_cb(void *arg, const void *res, size_t len)
{
    struct rp_buf *b = arg;
    rp_buf_put_be32(b, (uint32_t)len);
    return rp_buf_append(b, res, len);
}

/* Every resource, length-prefixed, in key order. */
static __attribute__((unused)) void dump(struct state *s, struct rp_buf *out)
{
    rp_buf_init(out);
    cr_assert_eq(state_list(s, NULL, NULL, 0, dump_cb, out, NULL), 0);
}

static __attribute__((unused)) size_t count(struct state *s, const char *kind, const char *prefix)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(state_list(s, kind, prefix, 0, dump_cb, &b, NULL), 0);
    size_t n = 0;
    struct rp_rd rd;
    uint32_t l;
    rp_rd_init(&rd, b.data, b.len);
    while (rp_rd_be32(&rd, &l) == 0 && rp_rd_skip(&rd, l) == 0)
        n++;
    rp_buf_free(&b);
    return n;
}
/* ---- End of helpers ------------------------------------------------------ */

TestSuite(state_cas, .init = setup, .fini = teardown, .timeout = 60);

static struct state_result cas(uint64_t index, const char *name, uint64_t rev, const char *spec)
{
    struct rp_buf res;
    char rid[32];
    snprintf(rid, sizeof rid, "cas%llu", (unsigned long long)index);
    make_res(&res, "node", name, 0, NULL, spec);
    struct state_result r =
        apply_cmd(index, (struct state_cmd){.op = "cas", .rid = rid, .rev = rev}, &res);
    rp_buf_free(&res);
    return r;
}

static struct state_result cdelete(uint64_t index, const char *name, uint64_t rev)
{
    char rid[32];
    snprintf(rid, sizeof rid, "cdel%llu", (unsigned long long)index);
    return apply_cmd(
        index,
        (struct state_cmd){.op = "cdelete", .rid = rid, .kind = "node", .name = name, .rev = rev},
        NULL);
}

Test(state_cas, cas_succeeds_on_the_stored_revision)
{
    put(3, "node", "n1", "a");
    struct state_result r = cas(4, "n1", 3, "b");
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.revision, 4);
    cr_assert_eq(r.n_changed, 1);
    char spec[16];
    uint64_t rev;
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "b");
    cr_assert_eq(rev, 4);
    /* And again from the new revision. */
    cr_assert_eq(cas(5, "n1", 4, "c").code, 0);
}

Test(state_cas, cas_fails_on_a_stale_revision_and_reports_the_current_one)
{
    put(3, "node", "n1", "a");
    put(6, "node", "n1", "b");
    struct state_result r = cas(7, "n1", 3, "c");
    cr_assert_eq(r.code, RP_ECONFLICT);
    cr_assert_eq(r.current_rev, 6);
    cr_assert_eq(r.revision, 7);
    cr_assert_eq(r.n_changed, 0);
    cr_assert_not_null(strstr(r.message, "revision 6, expected 3"), "%s", r.message);
    char spec[16];
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, NULL), 0);
    cr_assert_str_eq(spec, "b");
}

Test(state_cas, cas_with_revision_zero_creates_only_when_absent)
{
    struct state_result r = cas(1, "n1", 0, "a");
    cr_assert_eq(r.code, 0, "%s", r.message);
    r = cas(2, "n1", 0, "b");
    cr_assert_eq(r.code, RP_ECONFLICT);
    cr_assert_eq(r.current_rev, 1);
    char spec[16];
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, NULL), 0);
    cr_assert_str_eq(spec, "a");
}

Test(state_cas, cas_on_an_absent_resource_with_a_revision_is_not_found)
{
    struct state_result r = cas(1, "n1", 5, "a");
    cr_assert_eq(r.code, RP_ENOTFOUND);
    cr_assert_eq(r.current_rev, 0);
    char spec[16];
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
}

Test(state_cas, cdelete_deletes_only_the_stored_revision)
{
    put(2, "node", "n1", "a");
    struct state_result r = cdelete(3, "n1", 1);
    cr_assert_eq(r.code, RP_ECONFLICT);
    cr_assert_eq(r.current_rev, 2);
    char spec[16];
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, NULL), 0);
    r = cdelete(4, "n1", 2);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 1);
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
    r = cdelete(5, "n1", 2);
    cr_assert_eq(r.code, RP_ENOTFOUND);
}

Test(state_cas, cdelete_with_revision_zero_is_malformed)
{
    put(1, "node", "n1", "a");
    struct state_result r = cdelete(2, "n1", 0);
    cr_assert_eq(r.code, RP_EINVAL);
    cr_assert_not_null(strstr(r.message, "rev"), "%s", r.message);
    char spec[16];
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, NULL), 0);
}

Test(state_cas, a_conflict_inside_a_batch_undoes_the_whole_batch)
{
    put(1, "node", "n1", "a");
    put(2, "node", "n2", "a");
    struct rp_buf r1, r2, ops, cmd;
    make_res(&r1, "node", "n1", 0, NULL, "new");
    make_res(&r2, "node", "n2", 0, NULL, "new");
    rp_buf_init(&ops);
    struct state_cmd subs[] = {
        {.op = "cas", .res = r1.data, .res_len = r1.len, .rev = 1},
        {.op = "cas", .res = r2.data, .res_len = r2.len, .rev = 1}, /* stale: n2 is at 2 */
    };
    for (int i = 0; i < 2; i++)
        cr_assert_eq(state_cmd_encode(&subs[i], &ops), 0);
    encode(&cmd,
           (struct state_cmd){
               .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 2},
           NULL);
    struct state_result r = apply_raw_to(S, 3, cmd.data, cmd.len);
    cr_assert_eq(r.code, RP_ECONFLICT);
    cr_assert_eq(r.failed_op, 1);
    cr_assert_eq(r.current_rev, 2);
    char spec[16];
    uint64_t rev;
    cr_assert_eq(get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "a");
    cr_assert_eq(rev, 1);
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&r1);
    rp_buf_free(&r2);
}

Test(state_cas, a_retried_cas_returns_its_first_result_even_after_the_revision_moved)
{
    put(1, "node", "n1", "a");
    struct rp_buf res;
    make_res(&res, "node", "n1", 0, NULL, "b");
    struct state_result r =
        apply_cmd(2, (struct state_cmd){.op = "cas", .rid = "same", .rev = 1}, &res);
    cr_assert_eq(r.code, 0);
    /* A naive re-execution would now conflict (stored revision is 2). */
    r = apply_cmd(3, (struct state_cmd){.op = "cas", .rid = "same", .rev = 1}, &res);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.revision, 2);
    rp_buf_free(&res);
}
