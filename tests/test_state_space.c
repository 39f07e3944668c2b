/* tests/test_state_space.c: the state database grows with its data up to its
 * ceiling (state_opts.map_size), and at the ceiling writes are refused with
 * RP_ENOSPC before they are proposed instead of failing apply. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "state/state.h"
#include "tests/lib/state_helpers.h"

TestSuite(state_space, .init = sth_setup, .fini = sth_teardown, .timeout = 60);

#define CEILING (4u << 20)
#define VALUE_LEN (32u << 10)

static off_t data_size(const char *dir)
{
    char path[128];
    struct stat st;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    cr_assert_eq(stat(path, &st), 0, "%s", path);
    return st.st_size;
}

/* A put of kind "blob", name @name, with a spec of VALUE_LEN bytes. */
static void make_put(struct rp_buf *cmd, const char *name, char fill)
{
    char *spec = malloc(VALUE_LEN + 1);
    cr_assert_not_null(spec);
    memset(spec, fill, VALUE_LEN);
    spec[VALUE_LEN] = '\0';
    struct rp_buf res;
    sth_make_res(&res, "blob", name, 0, NULL, spec);
    free(spec);
    sth_encode(cmd, (struct state_cmd){.op = "put", .rid = name}, &res);
    rp_buf_free(&res);
}

Test(state_space, the_file_grows_to_the_ceiling_then_writes_get_no_space)
{
    char dir[64];
    sth_make_tmpdir(dir);
    struct state_opts opts = {.map_size = CEILING};
    struct state *s = sth_open_state_in(dir, &opts);
    off_t start = data_size(dir);
    cr_assert_lt(start, CEILING / 4, "the file starts small (%lld bytes)", (long long)start);

    uint64_t index = 0;
    int refused = 0;
    for (int i = 0; i < 1000 && refused == 0; i++) {
        struct rp_buf cmd;
        char name[32];
        snprintf(name, sizeof name, "b%d", i);
        make_put(&cmd, name, (char)('a' + i % 26));
        refused = state_space_check(s, cmd.len);
        if (refused == 0) {
            struct state_result r = sth_apply_raw_to(s, ++index, cmd.data, cmd.len);
            cr_assert_eq(r.code, 0, "%s", r.message);
        }
        rp_buf_free(&cmd);
    }
    cr_assert_eq(refused, RP_ENOSPC, "the check refuses once the map is nearly full");
    cr_assert_not_null(strstr(rp_errmsg(), "max_map_size"), "%s", rp_errmsg());
    cr_assert_gt(index, 40, "most of the ceiling was usable (%llu writes of 32 KiB in 4 MiB)",
                 (unsigned long long)index);
    off_t end = data_size(dir);
    cr_assert_gt(end, 2 * start, "the file grew with the data (%lld -> %lld bytes)",
                 (long long)start, (long long)end);
    cr_assert_leq(end, CEILING);
    /* Everything that was admitted is there. */
    cr_assert_eq(sth_count(s, "blob", NULL), index);

    /* Applying past the check: apply fails with RP_ENOSPC (Raft would retry the
     * entry) and changes nothing, never a half-written entry. */
    uint64_t applied = state_applied_index(s);
    size_t over_applied = 0;
    int rv = 0;
    for (int i = 0; i < 200 && rv == 0; i++) {
        struct rp_buf cmd;
        char name[32];
        struct state_result r;
        snprintf(name, sizeof name, "over%d", i);
        make_put(&cmd, name, 'z');
        rv = state_apply(s, applied + 1, cmd.data, cmd.len, &r);
        rp_buf_free(&cmd);
        if (rv == 0) {
            applied++;
            over_applied++;
        }
    }
    cr_assert_eq(rv, RP_ENOSPC, "a full map fails apply with no_space: %s", rp_errmsg());
    cr_assert_eq(state_applied_index(s), applied, "the failed entry is not applied");
    cr_assert_eq(sth_count(s, "blob", "over"), over_applied, "nothing of it was written");
    state_close(s);
}
