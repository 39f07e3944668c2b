/* tests/test_jepsen_register.c: the linearizability checker of CAS registers.
 *
 * Handwritten histories with the verdict each must get, the classic traps,
 * generated histories (valid, and with one read made stale), budgets that end
 * in "unknown", and a comparison with a brute-force search on 6000 small
 * random histories. */
#include <criterion/criterion.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jepsen/check.h"
#include "jepsen/history.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "tests/lib/jepsen_helpers.h"

/* ---- Helpers ------------------------------------------------------------ */

/* Checks @jsonl and returns the verdict; the report goes to @report (may be NULL). */
static enum jepsen_verdict check_jsonl_opts(const char *jsonl, const struct jepsen_check_opts *o,
                                            struct rp_buf *report)
{
    struct jepsen_history *h = NULL;
    int rv = jepsen_history_parse(jsonl, strlen(jsonl), &h);
    cr_assert_eq(rv, 0, "parse: %s", rp_errmsg());
    struct rp_buf r;
    rp_buf_init(&r);
    enum jepsen_verdict v = JEPSEN_UNKNOWN;
    rv = jepsen_check_register(h, o, &v, &r);
    cr_assert_eq(rv, 0, "check: %s", rp_errmsg());
    rp_buf_append(&r, "", 1);
    if (report != NULL) {
        rp_buf_append(report, r.data, r.len);
    }
    rp_buf_free(&r);
    jepsen_history_free(h);
    return v;
}

static enum jepsen_verdict check_spec(const char *spec, struct rp_buf *report)
{
    char *jsonl = jth_spec_to_jsonl(spec);
    enum jepsen_verdict v = check_jsonl_opts(jsonl, NULL, report);
    free(jsonl);
    return v;
}

/* The report parsed back, to look at its fields. */
struct parsed {
    struct jepsen_arena arena;
    struct jepsen_json root;
};

static void parse_report(const struct rp_buf *report, struct parsed *p)
{
    jepsen_arena_init(&p->arena);
    int rv = jepsen_json_parse((const char *)report->data, strlen((const char *)report->data),
                               &p->arena, &p->root);
    cr_assert_eq(rv, 0, "report is not JSON: %s: %s", rp_errmsg(), (const char *)report->data);
}

static const struct jepsen_json *path(const struct jepsen_json *v, const char *a, const char *b)
{
    v = jepsen_json_get(v, a);
    if (v != NULL && b != NULL)
        v = jepsen_json_get(v, b);
    cr_assert_not_null(v, "report lacks %s%s%s", a, b ? "." : "", b ? b : "");
    return v;
}

static int64_t path_int(const struct jepsen_json *v, const char *a, const char *b)
{
    v = path(v, a, b);
    cr_assert_eq(v->type, JEPSEN_JSON_INT);
    return v->u.i;
}

static bool has_warning(const struct jepsen_json *root, const char *prefix)
{
    return jth_warnings_have(path(root, "warnings", NULL), prefix);
}

/* ---- Basic verdicts ------------------------------------------------------ */

Test(jepsen_register, empty_history_is_valid_with_a_warning)
{
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_spec("", &r), JEPSEN_VALID);
    struct parsed p;
    parse_report(&r, &p);
    cr_assert_eq(path_int(&p.root, "key_count", NULL), 0);
    cr_assert(has_warning(&p.root, "no operations"));
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
}

Test(jepsen_register, only_failures_is_valid_and_warns_nothing_succeeded)
{
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 fail write 1 1\n"
                            "1 invoke cas 1 [1,2]\n"
                            "1 fail cas 1 [1,2]\n"
                            "2 invoke read 1 null\n"
                            "2 fail read 1 null\n",
                            &r),
                 JEPSEN_VALID);
    struct parsed p;
    parse_report(&r, &p);
    cr_assert(has_warning(&p.root, "nothing succeeded"));
    cr_assert_eq(path_int(&p.root, "ok_count", NULL), 0);
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
}

Test(jepsen_register, sequential_write_then_read_is_valid)
{
    cr_assert_eq(check_spec("0 invoke write 1 5\n"
                            "0 ok write 1 5\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 5\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, read_of_null_means_empty_register)
{
    cr_assert_eq(check_spec("1 invoke read 1 null\n"
                            "1 ok read 1 null\n",
                            NULL),
                 JEPSEN_VALID);
    /* Empty again after a write completed: nothing can empty it. */
    cr_assert_eq(check_spec("0 invoke write 1 5\n"
                            "0 ok write 1 5\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 null\n",
                            NULL),
                 JEPSEN_INVALID);
}

Test(jepsen_register, nemesis_ops_are_skipped)
{
    cr_assert_eq(check_spec("n info start-partition _ \"halves\"\n"
                            "0 invoke write 1 5\n"
                            "n info stop-partition _ null\n"
                            "0 ok write 1 5\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 5\n",
                            NULL),
                 JEPSEN_VALID);
}

/* ---- The classic traps ---------------------------------------------------- */

Test(jepsen_register, info_write_taking_effect_much_later_is_valid)
{
    /* The write of 1 timed out. Reads then see null, then 2 from a write that
     * completed, and only then 1: the lost write was applied late. */
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 info write 1 1\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 null\n"
                            "2 invoke write 1 2\n"
                            "2 ok write 1 2\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 2\n"
                            "3 invoke write 1 3\n"
                            "3 ok write 1 3\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 3\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 1\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, write_never_completed_counts_as_info)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 null\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 1\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, read_of_a_value_before_its_write_was_invoked_is_invalid)
{
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_spec("1 invoke read 1 null\n"
                            "1 ok read 1 1\n"
                            "0 invoke write 1 1\n"
                            "0 ok write 1 1\n",
                            &r),
                 JEPSEN_INVALID);
    struct parsed p;
    parse_report(&r, &p);
    /* The read (invoked at index 0, completed at 1) could not be linearized. */
    cr_assert_eq(path(&p.root, "anomaly", "op")->type, JEPSEN_JSON_OBJECT);
    const struct jepsen_json *op = path(&p.root, "anomaly", "op");
    cr_assert_eq(path_int(op, "invoke_index", NULL), 0);
    cr_assert_eq(path_int(op, "complete_index", NULL), 1);
    cr_assert(jepsen_json_is_str(path(op, "f", NULL), "read"));
    cr_assert_eq(path_int(&p.root, "anomaly", "key"), 1);
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
}

Test(jepsen_register, read_of_an_info_write_before_it_was_invoked_is_invalid)
{
    cr_assert_eq(check_spec("1 invoke read 1 null\n"
                            "1 ok read 1 1\n"
                            "0 invoke write 1 1\n"
                            "0 info write 1 1\n",
                            NULL),
                 JEPSEN_INVALID);
}

Test(jepsen_register, stale_read_after_newer_write_completed_is_invalid)
{
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "0 invoke write 1 2\n"
                            "0 ok write 1 2\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 1\n",
                            &r),
                 JEPSEN_INVALID);
    struct parsed p;
    parse_report(&r, &p);
    const struct jepsen_json *a = path(&p.root, "anomaly", NULL);
    cr_assert_eq(path_int(a, "op", "complete_index"), 5);
    cr_assert_eq(path_int(a, "state", NULL), 2);
    cr_assert_eq(path_int(a, "previous", "invoke_index"), 2);
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
}

Test(jepsen_register, concurrent_writes_may_be_ordered_either_way)
{
    /* Both writes overlap; reads after both completed agree on either order. */
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke write 1 2\n"
                            "0 ok write 1 1\n"
                            "1 ok write 1 2\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 2\n"
                            "3 invoke read 1 null\n"
                            "3 ok read 1 2\n",
                            NULL),
                 JEPSEN_VALID);
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke write 1 2\n"
                            "0 ok write 1 1\n"
                            "1 ok write 1 2\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 1\n"
                            "3 invoke read 1 null\n"
                            "3 ok read 1 1\n",
                            NULL),
                 JEPSEN_VALID);
    /* Reads concurrent with both writes see them in both orders, each reader
     * once: still one order fits (1 then 2 for reader 2, 2 for reader 3 is
     * after both). */
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke write 1 2\n"
                            "2 invoke read 1 null\n"
                            "3 invoke read 1 null\n"
                            "2 ok read 1 1\n"
                            "3 ok read 1 2\n"
                            "0 ok write 1 1\n"
                            "1 ok write 1 2\n",
                            NULL),
                 JEPSEN_VALID);
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke write 1 2\n"
                            "2 invoke read 1 null\n"
                            "3 invoke read 1 null\n"
                            "3 ok read 1 2\n"
                            "2 ok read 1 1\n"
                            "0 ok write 1 1\n"
                            "1 ok write 1 2\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, read_during_writes_may_precede_the_other_write)
{
    /* 2 seen while both writes run, 1 after both: 2 was written first. */
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke write 1 2\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 2\n"
                            "0 ok write 1 1\n"
                            "1 ok write 1 2\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 1\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, reads_after_both_writes_that_disagree_are_invalid)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke write 1 2\n"
                            "0 ok write 1 1\n"
                            "1 ok write 1 2\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 1\n"
                            "3 invoke read 1 null\n"
                            "3 ok read 1 2\n",
                            NULL),
                 JEPSEN_INVALID);
    /* One reader sees 1, then 2 (so 1 was written first), then 1 again
     * after both writes were over. */
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "1 invoke write 1 2\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 1\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 2\n"
                            "0 ok write 1 1\n"
                            "1 ok write 1 2\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 1\n",
                            NULL),
                 JEPSEN_INVALID);
}

/* ---- Compare-and-swap ----------------------------------------------------- */

Test(jepsen_register, cas_chain_is_valid)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "1 invoke cas 1 [1,2]\n"
                            "1 ok cas 1 [1,2]\n"
                            "2 invoke cas 1 [1,4]\n"
                            "2 fail cas 1 [1,4]\n"
                            "0 invoke cas 1 [2,3]\n"
                            "0 ok cas 1 [2,3]\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 3\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, cas_from_empty_register_is_valid)
{
    cr_assert_eq(check_spec("0 invoke cas 1 [null,1]\n"
                            "0 ok cas 1 [null,1]\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 1\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, ok_cas_whose_expected_value_was_gone_is_invalid)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "0 invoke write 1 3\n"
                            "0 ok write 1 3\n"
                            "1 invoke cas 1 [1,2]\n"
                            "1 ok cas 1 [1,2]\n",
                            NULL),
                 JEPSEN_INVALID);
}

Test(jepsen_register, two_ok_cas_from_the_same_value_are_invalid)
{
    /* Both swapped 1 away: only one can have seen 1. */
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "1 invoke cas 1 [1,2]\n"
                            "2 invoke cas 1 [1,3]\n"
                            "1 ok cas 1 [1,2]\n"
                            "2 ok cas 1 [1,3]\n",
                            NULL),
                 JEPSEN_INVALID);
}

Test(jepsen_register, info_cas_observed_later_is_valid)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "1 invoke cas 1 [1,2]\n"
                            "1 info cas 1 [1,2]\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 1\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 2\n",
                            NULL),
                 JEPSEN_VALID);
    /* An info cas can only take effect if its expected value is there. */
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "1 invoke cas 1 [5,2]\n"
                            "1 info cas 1 [5,2]\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 2\n",
                            NULL),
                 JEPSEN_INVALID);
}

Test(jepsen_register, info_chain_makes_a_value_reachable)
{
    /* Two info ops: write 7, then cas 7 -> 8; a read of 8 needs both. */
    cr_assert_eq(check_spec("0 invoke write 1 7\n"
                            "0 info write 1 7\n"
                            "1 invoke cas 1 [7,8]\n"
                            "1 info cas 1 [7,8]\n"
                            "2 invoke read 1 null\n"
                            "2 ok read 1 8\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, failed_and_info_reads_constrain_nothing)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "1 invoke read 1 null\n"
                            "1 fail read 1 9\n"
                            "2 invoke read 1 null\n"
                            "2 info read 1 null\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, failed_write_did_not_happen)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 fail write 1 1\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 1\n",
                            NULL),
                 JEPSEN_INVALID);
}

/* ---- Processes and keys --------------------------------------------------- */

Test(jepsen_register, process_reused_after_info_keeps_the_old_op_open)
{
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 info write 1 1\n"
                            "0 invoke read 1 null\n"
                            "0 ok read 1 null\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 1\n",
                            &r),
                 JEPSEN_VALID);
    struct parsed p;
    parse_report(&r, &p);
    cr_assert(has_warning(&p.root, "a process invoked again after an info result"));
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
}

Test(jepsen_register, keys_are_independent_and_one_bad_key_fails_all)
{
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_spec("0 invoke write \"a\" 1\n"
                            "1 invoke write \"b\" 1\n"
                            "0 ok write \"a\" 1\n"
                            "1 ok write \"b\" 1\n"
                            "2 invoke write 3 1\n"
                            "2 ok write 3 1\n"
                            "0 invoke read \"a\" null\n"
                            "0 ok read \"a\" 1\n"
                            "1 invoke write \"b\" 2\n"
                            "1 ok write \"b\" 2\n"
                            "1 invoke read \"b\" null\n"
                            "1 ok read \"b\" 1\n"
                            "2 invoke read 3 null\n"
                            "2 ok read 3 1\n",
                            &r),
                 JEPSEN_INVALID);
    struct parsed p;
    parse_report(&r, &p);
    cr_assert_eq(path_int(&p.root, "key_count", NULL), 3);
    cr_assert_eq(path_int(&p.root, "keys_invalid", NULL), 1);
    cr_assert(jepsen_json_is_str(path(&p.root, "anomaly", "key"), "b"));
    const struct jepsen_json *keys = path(&p.root, "keys", NULL);
    cr_assert_eq(keys->len, 3);
    cr_assert_eq(path(&keys->u.items[0], "valid", NULL)->type, JEPSEN_JSON_TRUE);
    cr_assert_eq(path(&keys->u.items[1], "valid", NULL)->type, JEPSEN_JSON_FALSE);
    cr_assert_eq(path(&keys->u.items[2], "valid", NULL)->type, JEPSEN_JSON_TRUE);
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
}

Test(jepsen_register, int_and_string_keys_are_different_registers)
{
    cr_assert_eq(check_spec("0 invoke write 1 1\n"
                            "0 ok write 1 1\n"
                            "1 invoke read \"1\" null\n"
                            "1 ok read \"1\" null\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, values_compare_by_json_value)
{
    cr_assert_eq(check_spec("0 invoke write 1 {\"a\":1,\"b\":[true,null]}\n"
                            "0 ok write 1 {\"a\":1,\"b\":[true,null]}\n"
                            "1 invoke read 1 null\n"
                            "1 ok read 1 {\"b\":[true,null],\"a\":1}\n",
                            NULL),
                 JEPSEN_VALID);
}

Test(jepsen_register, ops_that_do_not_fit_the_model_are_refused)
{
    const char *bad[] = {
        "0 invoke increment 1 1\n",
        "0 invoke write _ 1\n",
        "0 invoke cas 1 [1]\n",
        "0 invoke write 1\n",
        "0 invoke read 1 null\n0 ok read 1\n",
        "0 invoke write 1 1\n0 ok write 1 2\n",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        char *jsonl = jth_spec_to_jsonl(bad[i]);
        struct jepsen_history *h = NULL;
        cr_assert_eq(jepsen_history_parse(jsonl, strlen(jsonl), &h), 0);
        struct rp_buf r;
        rp_buf_init(&r);
        enum jepsen_verdict v;
        cr_assert_eq(jepsen_check_register(h, NULL, &v, &r), RP_EINVAL, "case %zu", i);
        cr_assert(strncmp(rp_errmsg(), "line ", 5) == 0, "case %zu: %s", i, rp_errmsg());
        rp_buf_free(&r);
        jepsen_history_free(h);
        free(jsonl);
    }
}

/* ---- Generated histories --------------------------------------------------- */

static enum jepsen_verdict check_generated(const struct jepsen_gen_opts *o, int64_t *mutated,
                                           double *seconds)
{
    struct rp_buf text;
    rp_buf_init(&text);
    cr_assert_eq(jepsen_gen_register(o, &text, mutated), 0, "%s", rp_errmsg());
    rp_buf_append(&text, "", 1);
    struct rp_buf r;
    rp_buf_init(&r);
    struct jepsen_check_opts co = {.time_limit_s = 120};
    enum jepsen_verdict v = check_jsonl_opts((const char *)text.data, &co, &r);
    struct parsed p;
    parse_report(&r, &p);
    const struct jepsen_json *t = path(&p.root, "time_s", NULL);
    *seconds = t->type == JEPSEN_JSON_FLOAT ? t->u.d : (double)t->u.i;
    cr_assert_eq(path_int(&p.root, "op_count", NULL), (int64_t)o->keys * o->ops_per_key);
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
    rp_buf_free(&text);
    return v;
}

Test(jepsen_register, large_generated_history_is_valid_and_fast)
{
    struct jepsen_gen_opts o = {.seed = 7,
                                .keys = 3,
                                .processes = 10,
                                .ops_per_key = 2000,
                                .info_rate = 0.1,
                                .fail_rate = 0.05,
                                .late_rate = 0.5};
    double s;
    cr_assert_eq(check_generated(&o, NULL, &s), JEPSEN_VALID);
    cr_assert_lt(s, 10.0, "took %.3f s", s);
}

Test(jepsen_register, large_generated_history_with_one_stale_read_is_invalid)
{
    struct jepsen_gen_opts o = {.seed = 7,
                                .keys = 3,
                                .processes = 10,
                                .ops_per_key = 2000,
                                .info_rate = 0.1,
                                .fail_rate = 0.05,
                                .late_rate = 0.5,
                                .mutate = 1};
    int64_t mutated = -1;
    double s;
    cr_assert_eq(check_generated(&o, &mutated, &s), JEPSEN_INVALID);
    cr_assert_geq(mutated, 0);
}

Test(jepsen_register, generated_histories_over_many_seeds_get_the_right_verdict)
{
    for (uint64_t seed = 1; seed <= 40; seed++) {
        struct jepsen_gen_opts o = {.seed = seed,
                                    .keys = 2,
                                    .processes = 2 + (unsigned)(seed % 9),
                                    .ops_per_key = 300,
                                    .info_rate = (double)(seed % 5) / 10,
                                    .fail_rate = 0.05,
                                    .late_rate = (double)(seed % 3) / 2};
        double s;
        int64_t mutated;
        cr_assert_eq(check_generated(&o, NULL, &s), JEPSEN_VALID, "seed %" PRIu64, seed);
        o.mutate = 1;
        cr_assert_eq(check_generated(&o, &mutated, &s), JEPSEN_INVALID, "seed %" PRIu64, seed);
        cr_assert_geq(mutated, 0);
    }
}

/* ---- Budgets --------------------------------------------------------------- */

/* @n concurrent writes, then a read of a value none wrote: to prove it
 * invalid the search must try every subset of the writes. */
static char *hard_history(int n, const char *extra)
{
    struct rp_buf spec;
    rp_buf_init(&spec);
    for (int i = 0; i < n; i++)
        rp_buf_printf(&spec, "%d invoke write 1 %d\n", i, i + 1);
    for (int i = 0; i < n; i++)
        rp_buf_printf(&spec, "%d ok write 1 %d\n", i, i + 1);
    rp_buf_printf(&spec, "%d invoke read 1 null\n%d ok read 1 999\n", n, n);
    rp_buf_append_str(&spec, extra);
    rp_buf_append(&spec, "", 1);
    char *jsonl = jth_spec_to_jsonl((const char *)spec.data);
    rp_buf_free(&spec);
    return jsonl;
}

Test(jepsen_register, search_out_of_time_is_unknown)
{
    char *jsonl = hard_history(24, "");
    struct jepsen_check_opts o = {.time_limit_s = 0.2};
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_jsonl_opts(jsonl, &o, &r), JEPSEN_UNKNOWN);
    struct parsed p;
    parse_report(&r, &p);
    const struct jepsen_json *k = &path(&p.root, "keys", NULL)->u.items[0];
    cr_assert(jepsen_json_is_str(path(k, "reason", NULL), "time limit"));
    cr_assert_eq(path_int(&p.root, "keys_unknown", NULL), 1);
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
    free(jsonl);
}

Test(jepsen_register, search_out_of_memory_is_unknown)
{
    char *jsonl = hard_history(24, "");
    struct jepsen_check_opts o = {.time_limit_s = 60, .memory_limit = 1 << 20};
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_jsonl_opts(jsonl, &o, &r), JEPSEN_UNKNOWN);
    struct parsed p;
    parse_report(&r, &p);
    const struct jepsen_json *k = &path(&p.root, "keys", NULL)->u.items[0];
    cr_assert(jepsen_json_is_str(path(k, "reason", NULL), "memory limit"));
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
    free(jsonl);
}

Test(jepsen_register, unknown_key_with_an_invalid_key_is_invalid)
{
    char *jsonl = hard_history(24, "90 invoke write 2 1\n"
                                   "90 ok write 2 1\n"
                                   "90 invoke write 2 2\n"
                                   "90 ok write 2 2\n"
                                   "91 invoke read 2 null\n"
                                   "91 ok read 2 1\n");
    struct jepsen_check_opts o = {.time_limit_s = 0.2};
    struct rp_buf r;
    rp_buf_init(&r);
    cr_assert_eq(check_jsonl_opts(jsonl, &o, &r), JEPSEN_INVALID);
    struct parsed p;
    parse_report(&r, &p);
    cr_assert_eq(path_int(&p.root, "keys_invalid", NULL), 1);
    cr_assert_eq(path_int(&p.root, "keys_unknown", NULL), 1);
    cr_assert_eq(path_int(&p.root, "anomaly", "key"), 2);
    jepsen_arena_free(&p.arena);
    rp_buf_free(&r);
    free(jsonl);
}

Test(jepsen_register, small_hard_history_is_proved_invalid)
{
    char *jsonl = hard_history(10, "");
    cr_assert_eq(check_jsonl_opts(jsonl, NULL, NULL), JEPSEN_INVALID);
    free(jsonl);
}

/* ---- Against a brute-force search ------------------------------------------ */

#define BF_MAX 16
#define BF_NULL 0

struct bf_op {
    int f; /* 0 read, 1 write, 2 cas */
    bool info;
    int a, b;
    int call, ret; /* positions; ret = INT32_MAX for info */
};

struct bf {
    struct bf_op ops[BF_MAX];
    int n;
    unsigned ok_mask;
    unsigned char *seen; /* [mask * 8 + state] */
};

/* Plain depth-first search over every order that respects real time; info
 * ops may be placed or left out. Independent of the checker's code. */
static bool bf_search(struct bf *b, unsigned mask, int state)
{
    if ((mask & b->ok_mask) == b->ok_mask)
        return true;
    unsigned char *seen = &b->seen[(size_t)mask * 8 + (size_t)state];
    if (*seen)
        return false;
    *seen = 1;
    for (int x = 0; x < b->n; x++) {
        if (mask & (1u << x))
            continue;
        bool eligible = true;
        for (int y = 0; y < b->n && eligible; y++) {
            if (y != x && !(mask & (1u << y)) && !b->ops[y].info && b->ops[y].ret < b->ops[x].call)
                eligible = false;
        }
        if (!eligible)
            continue;
        const struct bf_op *o = &b->ops[x];
        int next = state;
        if (o->f == 0 && o->a != state)
            continue;
        if (o->f == 1)
            next = o->a;
        if (o->f == 2) {
            if (o->a != state)
                continue;
            next = o->b;
        }
        if (bf_search(b, mask | (1u << x), next))
            return true;
    }
    return false;
}

struct rng {
    uint64_t s;
};

static unsigned rnd(struct rng *r, unsigned n)
{
    r->s ^= r->s << 13;
    r->s ^= r->s >> 7;
    r->s ^= r->s << 17;
    return (unsigned)(r->s % n);
}

static void val(struct rp_buf *b, int v)
{
    if (v == BF_NULL)
        rp_buf_append_str(b, "null");
    else
        rp_buf_printf(b, "%d", v);
}

/* A random history of up to @n_ops ops on one key by @n_procs processes, values
 * 1..3 (not unique), and the brute-force model of it in @b. */
static void random_history(struct rng *r, int n_procs, int n_ops, struct rp_buf *jsonl,
                           struct bf *b)
{
    struct {
        bool busy;
        int op; /* index in b->ops, -1 when the op is not modelled */
        int f, a, b, id;
    } procs[8];
    memset(procs, 0, sizeof procs);
    for (int p = 0; p < n_procs; p++)
        procs[p].id = p;
    int next_id = n_procs, started = 0, pos = 0, busy = 0, last = BF_NULL;
    b->n = 0;
    b->ok_mask = 0;
    while (started < n_ops || busy > 0) {
        int p = (int)rnd(r, (unsigned)n_procs);
        const char *names[] = {"read", "write", "cas"};
        if (!procs[p].busy) {
            if (started == n_ops)
                continue;
            started++;
            procs[p].busy = true;
            busy++;
            procs[p].f = (int)rnd(r, 3);
            procs[p].a = (int)rnd(r, 4);
            procs[p].b = 1 + (int)rnd(r, 3);
            if (procs[p].f == 1 && procs[p].a == BF_NULL)
                procs[p].a = 1;
            rp_buf_printf(jsonl,
                          "{\"index\":%d,\"time\":%d,\"type\":\"invoke\",\"process\":%d,"
                          "\"f\":\"%s\",\"key\":0,\"value\":",
                          pos, pos, procs[p].id, names[procs[p].f]);
            if (procs[p].f == 0)
                val(jsonl, BF_NULL);
            else if (procs[p].f == 1)
                val(jsonl, procs[p].a);
            else {
                rp_buf_append_str(jsonl, "[");
                val(jsonl, procs[p].a);
                rp_buf_append_str(jsonl, ",");
                val(jsonl, procs[p].b);
                rp_buf_append_str(jsonl, "]");
            }
            rp_buf_append_str(jsonl, "}\n");
            struct bf_op *o = &b->ops[b->n];
            o->f = procs[p].f;
            o->a = procs[p].a;
            o->b = procs[p].b;
            o->call = pos;
            o->ret = INT32_MAX;
            o->info = true;
            procs[p].op = b->n++;
            if (procs[p].f != 0)
                last = procs[p].f == 1 ? procs[p].a : procs[p].b;
            pos++;
            continue;
        }
        unsigned x = rnd(r, 10);
        const char *type = x < 7 ? "ok" : x < 8 ? "fail" : "info";
        struct bf_op *o = &b->ops[procs[p].op];
        rp_buf_printf(jsonl,
                      "{\"index\":%d,\"time\":%d,\"type\":\"%s\",\"process\":%d,"
                      "\"f\":\"%s\",\"key\":0,\"value\":",
                      pos, pos, type, procs[p].id, names[procs[p].f]);
        if (procs[p].f == 0) {
            /* Mostly a value that was just written, so that many histories are valid. */
            int v = rnd(r, 10) < 2 ? (int)rnd(r, 4) : last;
            val(jsonl, strcmp(type, "ok") == 0 ? v : BF_NULL);
            o->a = v;
        } else if (procs[p].f == 1) {
            val(jsonl, procs[p].a);
        } else {
            rp_buf_append_str(jsonl, "[");
            val(jsonl, procs[p].a);
            rp_buf_append_str(jsonl, ",");
            val(jsonl, procs[p].b);
            rp_buf_append_str(jsonl, "]");
        }
        rp_buf_append_str(jsonl, "}\n");
        if (strcmp(type, "ok") == 0) {
            o->info = false;
            o->ret = pos;
            b->ok_mask |= 1u << procs[p].op;
        } else if (strcmp(type, "fail") == 0) {
            o->f = -1; /* did not happen: make it unplaceable and not required */
        } else {
            if (o->f == 0)
                o->f = -1; /* an unknown read constrains nothing */
            procs[p].id = next_id++;
        }
        procs[p].busy = false;
        busy--;
        pos++;
        /* Now and then a client never completes. */
        if (started == n_ops && rnd(r, 8) == 0) {
            for (int q = 0; q < n_procs; q++) {
                if (procs[q].busy) {
                    procs[q].busy = false;
                    busy--;
                    if (b->ops[procs[q].op].f == 0)
                        b->ops[procs[q].op].f = -1;
                }
            }
        }
    }
    /* Ops that did not happen can never be placed; mark them so. */
    for (int i = 0; i < b->n; i++) {
        if (b->ops[i].f == -1) {
            b->ops[i].f = 0;
            b->ops[i].a = 100; /* a read of a value that never exists */
            b->ops[i].info = true;
        }
    }
}

Test(jepsen_register, agrees_with_brute_force_on_random_small_histories)
{
    struct rng r = {88172645463325252ULL};
    struct bf b;
    b.seen = malloc((size_t)8 << BF_MAX);
    cr_assert_not_null(b.seen);
    int counts[2] = {0, 0};
    for (int iter = 0; iter < 6000; iter++) {
        struct rp_buf jsonl;
        rp_buf_init(&jsonl);
        int n_procs = 2 + (int)rnd(&r, 4);
        int n_ops = 3 + (int)rnd(&r, BF_MAX - 3);
        random_history(&r, n_procs, n_ops, &jsonl, &b);
        rp_buf_append(&jsonl, "", 1);
        memset(b.seen, 0, (size_t)8 << b.n);
        bool expect = bf_search(&b, 0, BF_NULL);
        enum jepsen_verdict v = check_jsonl_opts((const char *)jsonl.data, NULL, NULL);
        cr_assert_eq(v, expect ? JEPSEN_VALID : JEPSEN_INVALID, "iteration %d:\n%s", iter,
                     (const char *)jsonl.data);
        counts[expect]++;
        rp_buf_free(&jsonl);
    }
    cr_log_info("brute force: %d invalid, %d valid", counts[0], counts[1]);
    /* Both verdicts must be well represented for the comparison to mean anything. */
    cr_assert_gt(counts[0], 1000, "only %d invalid", counts[0]);
    cr_assert_gt(counts[1], 1000, "only %d valid", counts[1]);
    free(b.seen);
}
