/* tests/test_jepsen_set.c: the set checker (lost, unexpected, recovered elements). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jepsen/check.h"
#include "jepsen/history.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "tests/lib/jepsen_helpers.h"

/* ---- Valid histories -------------------------------------------------------- */

Test(jepsen_set, acknowledged_adds_all_in_the_final_read_is_valid)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "1 invoke add _ 2\n"
                 "0 ok add _ 1\n"
                 "1 info add _ 2\n"
                 "2 invoke add _ 3\n"
                 "2 info add _ 3\n"
                 "3 invoke add _ 4\n"
                 "3 fail add _ 4\n"
                 "n info start-partition _ null\n"
                 "0 invoke read _ null\n"
                 "0 ok read _ [1,2]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    cr_assert_eq(jth_count(&r, "attempt_count"), 4);
    cr_assert_eq(jth_count(&r, "ok_count"), 1);
    cr_assert_eq(jth_count(&r, "info_count"), 2);
    cr_assert_eq(jth_count(&r, "fail_count"), 1);
    cr_assert_eq(jth_count(&r, "final_read_count"), 1);
    jth_field_is(&r, "recovered", "[2]");
    jth_field_is(&r, "lost", "[]");
    jth_field_is(&r, "unexpected", "[]");
    jth_result_free(&r);
}

Test(jepsen_set, read_concurrent_with_an_add_is_not_final)
{
    /* The first read overlaps add 2, so 2 may be missing from it; the later
     * read is final and has everything. */
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "0 ok add _ 1\n"
                 "1 invoke add _ 2\n"
                 "2 invoke read _ null\n"
                 "2 ok read _ [1]\n"
                 "1 ok add _ 2\n"
                 "2 invoke read _ null\n"
                 "2 ok read _ [2,1]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    cr_assert_eq(jth_count(&r, "read_count"), 2);
    cr_assert_eq(jth_count(&r, "final_read_count"), 1);
    jth_result_free(&r);
}

Test(jepsen_set, unfinished_add_does_not_prevent_a_final_read)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ \"a\"\n"
                 "0 ok add _ \"a\"\n"
                 "1 invoke add _ \"b\"\n"
                 "2 invoke read _ null\n"
                 "2 ok read _ [\"a\"]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    jth_field_is(&r, "recovered", "[]");
    jth_result_free(&r);
}

/* ---- Anomalies ----------------------------------------------------------------- */

Test(jepsen_set, acknowledged_add_missing_from_the_final_read_is_lost)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "0 ok add _ 1\n"
                 "1 invoke add _ 2\n"
                 "1 ok add _ 2\n"
                 "0 invoke read _ null\n"
                 "0 ok read _ [2]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "lost", "[1]");
    cr_assert_eq(jth_count(&r, "lost_count"), 1);
    jth_result_free(&r);
}

Test(jepsen_set, missing_from_any_final_read_is_lost)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "0 ok add _ 1\n"
                 "0 invoke read _ null\n"
                 "0 ok read _ [1]\n"
                 "1 invoke read _ null\n"
                 "1 ok read _ []\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(jth_count(&r, "final_read_count"), 2);
    jth_field_is(&r, "lost", "[1]");
    jth_result_free(&r);
}

Test(jepsen_set, info_add_seen_by_a_read_then_missing_is_lost)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "0 info add _ 1\n"
                 "1 invoke read _ null\n"
                 "1 ok read _ [1]\n"
                 "1 invoke read _ null\n"
                 "1 ok read _ []\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "lost", "[1]");
    jth_result_free(&r);
}

Test(jepsen_set, element_never_added_is_unexpected)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "0 ok add _ 1\n"
                 "0 invoke read _ null\n"
                 "0 ok read _ [1,9]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "unexpected", "[9]");
    jth_field_is(&r, "lost", "[]");
    jth_result_free(&r);
}

Test(jepsen_set, element_of_a_failed_add_is_unexpected)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "0 fail add _ 1\n"
                 "0 invoke read _ null\n"
                 "0 ok read _ [1]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "unexpected", "[1]");
    jth_result_free(&r);
}

Test(jepsen_set, elements_compare_by_json_value)
{
    /* "1" was added, 1 was read: one lost, one unexpected. */
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ \"1\"\n"
                 "0 ok add _ \"1\"\n"
                 "0 invoke read _ null\n"
                 "0 ok read _ [1]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "lost", "[\"1\"]");
    jth_field_is(&r, "unexpected", "[1]");
    jth_result_free(&r);
}

/* ---- Not enough to judge ----------------------------------------------------------- */

Test(jepsen_set, no_final_read_is_unknown)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set,
                 "0 invoke add _ 1\n"
                 "1 invoke read _ null\n"
                 "1 ok read _ []\n"
                 "0 ok add _ 1\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(jth_has_warning(&r, "no final read"));
    jth_result_free(&r);
}

Test(jepsen_set, empty_history_is_unknown)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_set, "", &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(jth_has_warning(&r, "no final read"));
    cr_assert(jth_has_warning(&r, "nothing succeeded"));
    jth_result_free(&r);
}

Test(jepsen_set, histories_that_do_not_fit_are_refused)
{
    jth_refused_spec(jepsen_check_set,
                     "0 invoke add _ 1\n0 ok add _ 1\n1 invoke add _ 1\n1 ok add _ 1\n",
                     "line 3: set model: element 1 is added twice (first at line 1)");
    jth_refused_spec(jepsen_check_set, "0 invoke add _\n",
                     "line 1: set model: add without \"value\"");
    jth_refused_spec(jepsen_check_set, "0 invoke read _ null\n0 ok read _ {}\n",
                     "line 2: set model: an ok read's value must be an array");
    jth_refused_spec(jepsen_check_set,
                     "0 invoke add \"s1\" 1\n0 ok add \"s1\" 1\n1 invoke add \"s2\" 2\n",
                     "line 3: set model: key differs from the key at line 1");
}
