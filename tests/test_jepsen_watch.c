/* tests/test_jepsen_watch.c: the watch checker (order, gaps, agreement between
 * watchers, snapshots and the final state). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jepsen/check.h"
#include "jepsen/history.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "tests/lib/jepsen_helpers.h"

/* Events and final reads, written without spaces (the spec splits on them). */
#define EV(op, rev, name)                                                                          \
    "{\"revision\":" #rev ",\"op\":\"" op "\",\"kind\":\"role\",\"name\":\"" name "\"}"
#define PUT(rev, name) EV("put", rev, name)
#define DEL(rev, name) EV("delete", rev, name)
#define INIT(rev, name) EV("init", rev, name)
#define DONE(rev) "{\"revision\":" #rev ",\"op\":\"init_done\"}"
#define RESUMED(rev) "{\"revision\":" #rev ",\"op\":\"init_done\",\"resumed\":true}"
#define RES(rev, name) "{\"kind\":\"role\",\"name\":\"" name "\",\"revision\":" #rev "}"
#define FINAL(rev, list)                                                                           \
    "3 invoke read _ null\n3 ok read _ {\"revision\":" #rev ",\"resources\":[" list "]}\n"

/* Watcher 10 from the start, in two batches. */
#define W10                                                                                        \
    "10 invoke watch _ null\n"                                                                     \
    "10 ok watch _ [" DONE(0) "," PUT(1, "a") "]\n"                                                \
                                              "10 invoke watch _ null\n"                           \
                                              "10 ok watch _ [" PUT(2, "b") "," DEL(3, "a") "]\n"

/* ---- Valid histories -------------------------------------------------------- */

Test(jepsen_watch, watchers_that_agree_with_each_other_and_the_final_read_are_valid)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 W10 "11 invoke watch _ null\n"
                     "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(2, "b") "," DEL(
                         3, "a") "]\n"
                                 "n info start-partition _ null\n"
                                 "11 invoke watch _ null\n"
                                 "11 ok watch _ []\n" FINAL(3, RES(2, "b")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    cr_assert_eq(jth_count(&r, "watcher_count"), 2);
    cr_assert_eq(jth_count(&r, "following_count"), 2);
    cr_assert_eq(jth_count(&r, "event_count"), 8);
    cr_assert_eq(jth_count(&r, "revision_count"), 3);
    cr_assert_eq(jth_count(&r, "final_revision"), 3);
    jth_result_free(&r);
}

Test(jepsen_watch, revision_numbers_may_skip)
{
    /* Revision 2 went to something no watcher sees: not a gap. */
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 "10 invoke watch _ null\n"
                 "10 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(
                     5, "b") "]\n"
                             "11 invoke watch _ null\n"
                             "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(5, "b") "]\n" FINAL(
                                 7, RES(1, "a") "," RES(5, "b")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    jth_result_free(&r);
}

Test(jepsen_watch, events_of_one_revision_come_together)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 "10 invoke watch _ null\n"
                 "10 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(
                     1, "b") "]\n"
                             "11 invoke watch _ null\n"
                             "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(1, "b") "]\n" FINAL(
                                 1, RES(1, "a") "," RES(1, "b")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    jth_result_free(&r);
}

Test(jepsen_watch, watcher_that_ended_is_judged_up_to_its_end)
{
    /* Watcher 11 broke after revision 1 (info) and came back as 12 with a
     * snapshot at revision 1, which matches what watcher 10 had then. */
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 W10
                 "11 invoke watch _ null\n"
                 "11 ok watch _ [" DONE(0) "," PUT(
                     1, "a") "]\n"
                             "11 invoke watch _ null\n"
                             "11 info watch _ null\n"
                             "12 invoke watch _ null\n"
                             "12 ok watch _ [" INIT(1, "a") "," DONE(1) "," PUT(
                                 2, "b") "]\n"
                                         "12 invoke watch _ null\n"
                                         "12 ok watch _ [" DEL(3, "a") "]\n" FINAL(3, RES(2, "b")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    cr_assert_eq(jth_count(&r, "watcher_count"), 3);
    cr_assert_eq(jth_count(&r, "following_count"), 2);
    jth_result_free(&r);
}

Test(jepsen_watch, resumed_watcher_is_checked_for_order_but_not_final_state)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 W10 "11 invoke watch _ null\n"
                     "11 ok watch _ [" RESUMED(1) "," PUT(2, "b") "," DEL(3, "a") "]\n" FINAL(
                         3, RES(2, "b")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    cr_assert(jth_has_warning(&r, "1 following watchers resumed without a snapshot"));
    jth_result_free(&r);
}

/* ---- Anomalies ---------------------------------------------------------------- */

Test(jepsen_watch, watcher_missing_a_revision_has_a_gap)
{
    struct jth_result r;
    jth_run_spec(
        jepsen_check_watch,
        W10 "11 invoke watch _ null\n"
            "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," DEL(3, "a") "]\n" FINAL(3, RES(2, "b")),
        &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "gaps", "[{\"missing_revision\":2,\"process\":11}]");
    /* Its state lacks b, too. */
    cr_assert_eq(jth_count(&r, "final_mismatch_count"), 1);
    jth_result_free(&r);
}

Test(jepsen_watch, following_watcher_that_stopped_short_has_a_gap)
{
    struct jth_result r;
    jth_run_spec(
        jepsen_check_watch,
        W10 "11 invoke watch _ null\n"
            "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(2, "b") "]\n" FINAL(3, RES(2, "b")),
        &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "gaps", "[{\"missing_revision\":3,\"process\":11}]");
    jth_field_is(&r, "final_mismatch",
                 "[{\"different\":[],\"different_count\":0,\"extra\":[{\"kind\":\"role\",\"name\":"
                 "\"a\",\"revision\":1}],\"extra_count\":1,\"last_revision\":2,\"missing\":[],"
                 "\"missing_count\":0,\"process\":11}]");
    jth_result_free(&r);
}

Test(jepsen_watch, revisions_going_back_are_reordered)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 W10 "11 invoke watch _ null\n"
                     "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," DEL(3, "a") "," PUT(
                         2, "b") "]\n" FINAL(3, RES(2, "b")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "reordered",
                 "[{\"after\":3,\"complete_index\":5,\"process\":11,\"revision\":2}]");
    jth_result_free(&r);
}

Test(jepsen_watch, event_at_or_before_the_start_revision_is_reordered)
{
    struct jth_result r;
    jth_run_spec(
        jepsen_check_watch,
        "10 invoke watch _ null\n"
        "10 ok watch _ [" INIT(1, "a") "," DONE(1) "," PUT(1, "a") "]\n" FINAL(1, RES(1, "a")),
        &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(jth_count(&r, "reordered_count"), 1);
    jth_result_free(&r);
}

Test(jepsen_watch, event_delivered_twice_is_duplicated)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 "10 invoke watch _ null\n"
                 "10 ok watch _ [" DONE(0) "," PUT(1, "a") "]\n"
                                                           "10 invoke watch _ null\n"
                                                           "10 ok watch _ [" PUT(
                                                               1, "a") "]\n" FINAL(1, RES(1, "a")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(
        &r, "duplicated",
        "[{\"complete_index\":3,\"kind\":\"role\",\"name\":\"a\",\"op\":\"put\",\"process\":10,"
        "\"revision\":1}]");
    jth_result_free(&r);
}

Test(jepsen_watch, watchers_disagreeing_on_a_revision_diverge)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch,
                 "10 invoke watch _ null\n"
                 "10 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(
                     1, "b") "]\n"
                             "11 invoke watch _ null\n"
                             "11 ok watch _ [" DONE(0) "," PUT(1, "a") "]\n" FINAL(
                                 1, RES(1, "a") "," RES(1, "b")),
                 &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    jth_field_is(&r, "divergent", "[{\"other_process\":10,\"process\":11,\"revision\":1}]");
    jth_result_free(&r);
}

Test(jepsen_watch, state_that_differs_from_the_final_read_is_a_mismatch)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch, W10 FINAL(3, RES(2, "b") "," RES(3, "c")), &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(jth_count(&r, "final_mismatch_count"), 1);
    const struct jepsen_json *m = &jth_field(&r, "final_mismatch")->u.items[0];
    cr_assert_eq(jepsen_json_get(m, "missing_count")->u.i, 1);
    cr_assert(jepsen_json_is_str(
        jepsen_json_get(&jepsen_json_get(m, "missing")->u.items[0], "name"), "c"));
    jth_result_free(&r);

    jth_run_spec(jepsen_check_watch, W10 FINAL(3, RES(7, "b")), &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    m = &jth_field(&r, "final_mismatch")->u.items[0];
    cr_assert_eq(jepsen_json_get(m, "different_count")->u.i, 1);
    cr_assert_eq(
        jepsen_json_get(&jepsen_json_get(m, "different")->u.items[0], "expected_revision")->u.i, 7);
    jth_result_free(&r);
}

Test(jepsen_watch, snapshot_that_differs_from_an_older_watcher_is_a_mismatch)
{
    struct jth_result r;
    jth_run_spec(
        jepsen_check_watch,
        W10 "12 invoke watch _ null\n"
            "12 ok watch _ [" INIT(2, "b") "," DONE(2) "," DEL(3, "a") "]\n" FINAL(3, RES(2, "b")),
        &r);
    /* At revision 2 watcher 10 had a and b; 12's snapshot lacks a. */
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(jth_count(&r, "snapshot_mismatch_count"), 1);
    jth_result_free(&r);
}

/* ---- Not enough to judge, or not a watch history ------------------------------------ */

Test(jepsen_watch, no_final_read_is_unknown)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch, W10, &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(jth_has_warning(&r, "no final read"));
    jth_result_free(&r);
}

Test(jepsen_watch, no_watchers_is_unknown)
{
    struct jth_result r;
    jth_run_spec(jepsen_check_watch, FINAL(0, ""), &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(jth_has_warning(&r, "no watcher events"));
    jth_result_free(&r);
}

Test(jepsen_watch, histories_that_do_not_fit_are_refused)
{
    jth_refused_spec(jepsen_check_watch,
                     "10 invoke watch _ null\n10 ok watch _ [" PUT(1, "a") "]\n",
                     "line 2: watch event 0 (put) before the watcher's init_done");
    jth_refused_spec(jepsen_check_watch, "10 invoke watch _ null\n10 ok watch _ {}\n",
                     "line 2: a watch completion's value must be an array");
    jth_refused_spec(jepsen_check_watch,
                     "10 invoke watch _ null\n10 ok watch _ [{\"revision\":1,\"op\":\"touch\"}]\n",
                     "\"op\" must be init, init_done, put or delete");
    jth_refused_spec(
        jepsen_check_watch,
        "10 invoke watch _ null\n10 ok watch _ [" DONE(0) ",{\"revision\":1,\"op\":\"put\"}]\n",
        "line 2: watch event 1: \"kind\" must be a non-empty string");
    jth_refused_spec(jepsen_check_watch, "3 invoke read _ null\n3 ok read _ []\n",
                     "line 2: watch model: the final read's value must be");
    jth_refused_spec(jepsen_check_watch, FINAL(1, RES(1, "a") "," RES(1, "a")),
                     "the final read lists a resource twice");
}
