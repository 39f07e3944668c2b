/* tests/test_jepsen_unique.c: the unique checker (single-use items consumed by
 * conditional delete). */
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

Test(jepsen_unique, each_item_consumed_once_is_valid)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique,
                 "0 invoke consume \"t1\"\n"
                 "1 invoke consume \"t1\"\n"
                 "0 ok consume \"t1\"\n"
                 "1 fail consume \"t1\"\n"
                 "2 invoke consume \"t2\"\n"
                 "2 ok consume \"t2\"\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    cr_assert_eq(jth_count(&r, "item_count"), 2);
    cr_assert_eq(jth_count(&r, "ok_count"), 2);
    cr_assert_eq(jth_count(&r, "fail_count"), 1);
    cr_assert_eq(jth_count(&r, "duplicated_count"), 0);
    jth_result_free(&r);
}

Test(jepsen_unique, info_consumption_is_only_possible)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique,
                 "0 invoke consume 7\n"
                 "1 invoke consume 7\n"
                 "0 ok consume 7\n"
                 "1 info consume 7\n"
                 "2 invoke consume 8\n"
                 "2 info consume 8\n"
                 "3 invoke consume 8\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    jth_field_is(&r, "possible_duplicates", "[7,8]");
    cr_assert(jth_has_warning(&r, "2 items may have been consumed twice"));
    jth_result_free(&r);
}

/* ---- Anomalies ------------------------------------------------------------- */

Test(jepsen_unique, item_consumed_ok_twice_is_invalid)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique,
                 "0 invoke consume \"invite-1\"\n"
                 "1 invoke consume \"invite-1\"\n"
                 "2 invoke consume \"invite-1\"\n"
                 "0 ok consume \"invite-1\"\n"
                 "1 ok consume \"invite-1\"\n"
                 "2 fail consume \"invite-1\"\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "duplicated",
                 "[{\"consumers\":[{\"complete_index\":3,\"invoke_index\":0,\"process\":0},"
                 "{\"complete_index\":4,\"invoke_index\":1,\"process\":1}],\"item\":\"invite-1\","
                 "\"ok_count\":2}]");
    jth_result_free(&r);
}

Test(jepsen_unique, consuming_an_item_never_created_is_unexpected)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique,
                 "0 invoke create 1\n"
                 "0 ok create 1\n"
                 "1 invoke consume 1\n"
                 "1 ok consume 1\n"
                 "1 invoke consume 2\n"
                 "1 ok consume 2\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "unexpected", "[2]");
    jth_result_free(&r);
}

Test(jepsen_unique, final_read_with_a_consumed_item_is_resurrected)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique,
                 "0 invoke create 1\n"
                 "0 ok create 1\n"
                 "0 invoke create 2\n"
                 "0 ok create 2\n"
                 "1 invoke consume 1\n"
                 "1 ok consume 1\n"
                 "2 invoke read _ null\n"
                 "2 ok read _ [1,2]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "resurrected", "[1]");
    jth_field_is(&r, "vanished", "[]");
    jth_field_is(&r, "final_read", "true");
    jth_result_free(&r);
}

Test(jepsen_unique, item_gone_without_consumption_is_vanished)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique,
                 "0 invoke create 1\n"
                 "0 ok create 1\n"
                 "0 invoke create 2\n"
                 "0 ok create 2\n"
                 "0 invoke create 3\n"
                 "0 ok create 3\n"
                 "1 invoke consume 3\n"
                 "1 info consume 3\n"
                 "2 invoke read _ null\n"
                 "2 ok read _ [1]\n",
                 &r);
    /* 3 may have been consumed (info); 2 was never consumed yet is gone. */
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "vanished", "[2]");
    jth_result_free(&r);
}

Test(jepsen_unique, consistent_final_read_is_valid)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique,
                 "0 invoke create 1\n"
                 "0 ok create 1\n"
                 "0 invoke create 2\n"
                 "0 ok create 2\n"
                 "1 invoke consume 1\n"
                 "1 ok consume 1\n"
                 "1 invoke consume 2\n"
                 "1 fail consume 2\n"
                 "2 invoke read _ null\n"
                 "2 ok read _ [2]\n",
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    jth_result_free(&r);
}

Test(jepsen_unique, nothing_succeeded_is_a_warning)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_unique, "0 invoke consume 1\n0 fail consume 1\n", &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    cr_assert(jth_has_warning(&r, "nothing succeeded"));
    jth_result_free(&r);
}

Test(jepsen_unique, histories_that_do_not_fit_are_refused)
{
    jth_refused_spec(jepsen_check_unique, "0 invoke consume _ 1\n",
                     "line 1: unique model: consume without \"key\"");
    jth_refused_spec(jepsen_check_unique, "0 invoke read _ null\n0 ok read _ 5\n",
                     "line 2: unique model: an ok read's value must be the array");
}
