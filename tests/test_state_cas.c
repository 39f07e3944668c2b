/* tests/test_state_cas.c: compare-and-swap and conditional delete on revisions. */
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

TestSuite(state_cas, .init = sth_setup, .fini = sth_teardown, .timeout = 60);

static struct state_result cas(uint64_t index, const char *name, uint64_t rev, const char *spec)
{
    struct rp_buf res;
    char rid[32];
    snprintf(rid, sizeof rid, "cas%llu", (unsigned long long)index);
    sth_make_res(&res, "node", name, 0, NULL, spec);
    struct state_result r =
        sth_apply_cmd(index, (struct state_cmd){.op = "cas", .rid = rid, .rev = rev}, &res);
    rp_buf_free(&res);
    return r;
}

static struct state_result cdelete(uint64_t index, const char *name, uint64_t rev)
{
    char rid[32];
    snprintf(rid, sizeof rid, "cdel%llu", (unsigned long long)index);
    return sth_apply_cmd(
        index,
        (struct state_cmd){.op = "cdelete", .rid = rid, .kind = "node", .name = name, .rev = rev},
        NULL);
}

Test(state_cas, cas_succeeds_on_the_stored_revision)
{
    sth_put(3, "node", "n1", "a");
    struct state_result r = cas(4, "n1", 3, "b");
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.revision, 4);
    cr_assert_eq(r.n_changed, 1);
    char spec[16];
    uint64_t rev;
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "b");
    cr_assert_eq(rev, 4);
    /* And again from the new revision. */
    cr_assert_eq(cas(5, "n1", 4, "c").code, 0);
}

Test(state_cas, cas_fails_on_a_stale_revision_and_reports_the_current_one)
{
    sth_put(3, "node", "n1", "a");
    sth_put(6, "node", "n1", "b");
    struct state_result r = cas(7, "n1", 3, "c");
    cr_assert_eq(r.code, RP_ECONFLICT);
    cr_assert_eq(r.current_rev, 6);
    cr_assert_eq(r.revision, 7);
    cr_assert_eq(r.n_changed, 0);
    cr_assert_not_null(strstr(r.message, "revision 6, expected 3"), "%s", r.message);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), 0);
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
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), 0);
    cr_assert_str_eq(spec, "a");
}

Test(state_cas, cas_on_an_absent_resource_with_a_revision_is_not_found)
{
    struct state_result r = cas(1, "n1", 5, "a");
    cr_assert_eq(r.code, RP_ENOTFOUND);
    cr_assert_eq(r.current_rev, 0);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
}

Test(state_cas, cdelete_deletes_only_the_stored_revision)
{
    sth_put(2, "node", "n1", "a");
    struct state_result r = cdelete(3, "n1", 1);
    cr_assert_eq(r.code, RP_ECONFLICT);
    cr_assert_eq(r.current_rev, 2);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), 0);
    r = cdelete(4, "n1", 2);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 1);
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
    r = cdelete(5, "n1", 2);
    cr_assert_eq(r.code, RP_ENOTFOUND);
}

Test(state_cas, cdelete_with_revision_zero_is_malformed)
{
    sth_put(1, "node", "n1", "a");
    struct state_result r = cdelete(2, "n1", 0);
    cr_assert_eq(r.code, RP_EINVAL);
    cr_assert_not_null(strstr(r.message, "rev"), "%s", r.message);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), 0);
}

Test(state_cas, a_conflict_inside_a_batch_undoes_the_whole_batch)
{
    sth_put(1, "node", "n1", "a");
    sth_put(2, "node", "n2", "a");
    struct rp_buf r1, r2, ops, cmd;
    sth_make_res(&r1, "node", "n1", 0, NULL, "new");
    sth_make_res(&r2, "node", "n2", 0, NULL, "new");
    rp_buf_init(&ops);
    struct state_cmd subs[] = {
        {.op = "cas", .res = r1.data, .res_len = r1.len, .rev = 1},
        {.op = "cas", .res = r2.data, .res_len = r2.len, .rev = 1}, /* stale: n2 is at 2 */
    };
    for (int i = 0; i < 2; i++)
        cr_assert_eq(state_cmd_encode(&subs[i], &ops), 0);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 2},
               NULL);
    struct state_result r = sth_apply_raw_to(sth_state, 3, cmd.data, cmd.len);
    cr_assert_eq(r.code, RP_ECONFLICT);
    cr_assert_eq(r.failed_op, 1);
    cr_assert_eq(r.current_rev, 2);
    char spec[16];
    uint64_t rev;
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "a");
    cr_assert_eq(rev, 1);
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&r1);
    rp_buf_free(&r2);
}

Test(state_cas, a_retried_cas_returns_its_first_result_even_after_the_revision_moved)
{
    sth_put(1, "node", "n1", "a");
    struct rp_buf res;
    sth_make_res(&res, "node", "n1", 0, NULL, "b");
    struct state_result r =
        sth_apply_cmd(2, (struct state_cmd){.op = "cas", .rid = "same", .rev = 1}, &res);
    cr_assert_eq(r.code, 0);
    /* A naive re-execution would now conflict (stored revision is 2). */
    r = sth_apply_cmd(3, (struct state_cmd){.op = "cas", .rid = "same", .rev = 1}, &res);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.revision, 2);
    rp_buf_free(&res);
}
