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

/* ---- Helpers (each jepsen test file carries its own copy) ---------------- */

/* Turns lines "PROCESS TYPE F [KEY [VALUE]]" into a JSON-lines history: "n" as
 * process is the nemesis, "_" leaves KEY out; index and time count up. */
static char *spec_to_jsonl(const char *spec)
{
    struct rp_buf out;
    rp_buf_init(&out);
    int index = 0;
    const char *p = spec;
    while (*p != '\0') {
        const char *nl = strchr(p, '\n');
        size_t len = nl ? (size_t)(nl - p) : strlen(p);
        char line[512];
        cr_assert_lt(len, sizeof line);
        memcpy(line, p, len);
        line[len] = '\0';
        p += len + (nl ? 1 : 0);
        char *tok[5] = {0};
        int n = 0;
        for (char *save = NULL, *t = strtok_r(line, " ", &save); t && n < 5;
             t = strtok_r(NULL, " ", &save))
            tok[n++] = t;
        if (n == 0)
            continue;
        cr_assert_geq(n, 3, "bad spec line");
        rp_buf_printf(&out, "{\"index\":%d,\"time\":%d,\"type\":\"%s\",\"process\":", index,
                      index * 1000, tok[1]);
        if (strcmp(tok[0], "n") == 0)
            rp_buf_append_str(&out, "\"nemesis\"");
        else
            rp_buf_append_str(&out, tok[0]);
        rp_buf_printf(&out, ",\"f\":\"%s\"", tok[2]);
        if (n > 3 && strcmp(tok[3], "_") != 0)
            rp_buf_printf(&out, ",\"key\":%s", tok[3]);
        if (n > 4)
            rp_buf_printf(&out, ",\"value\":%s", tok[4]);
        rp_buf_append_str(&out, "}\n");
        index++;
    }
    rp_buf_append(&out, "", 1);
    return (char *)rp_buf_steal(&out, NULL);
}

/* The report of checking @spec with @checker, parsed; the verdict in *@v. */
struct result {
    enum jepsen_verdict v;
    struct rp_buf text;
    struct jepsen_arena arena;
    struct jepsen_json root;
};

typedef int (*checker_fn)(const struct jepsen_history *, const struct jepsen_check_opts *,
                          enum jepsen_verdict *, struct rp_buf *);

static void run_jsonl(checker_fn fn, const char *jsonl, struct result *r)
{
    struct jepsen_history *h = NULL;
    int rv = jepsen_history_parse(jsonl, strlen(jsonl), &h);
    cr_assert_eq(rv, 0, "parse: %s", rp_errmsg());
    rp_buf_init(&r->text);
    rv = fn(h, NULL, &r->v, &r->text);
    cr_assert_eq(rv, 0, "check: %s", rp_errmsg());
    jepsen_history_free(h);
    jepsen_arena_init(&r->arena);
    rv = jepsen_json_parse((const char *)r->text.data, r->text.len, &r->arena, &r->root);
    cr_assert_eq(rv, 0, "report is not JSON: %s", rp_errmsg());
}

static void run_spec(checker_fn fn, const char *spec, struct result *r)
{
    char *jsonl = spec_to_jsonl(spec);
    run_jsonl(fn, jsonl, r);
    free(jsonl);
}

/* Asserts that checking @spec fails with RP_EINVAL and a message containing @needle. */
static void refused_spec(checker_fn fn, const char *spec, const char *needle)
{
    char *jsonl = spec_to_jsonl(spec);
    struct jepsen_history *h = NULL;
    cr_assert_eq(jepsen_history_parse(jsonl, strlen(jsonl), &h), 0, "parse: %s", rp_errmsg());
    struct rp_buf text;
    rp_buf_init(&text);
    enum jepsen_verdict v;
    cr_assert_eq(fn(h, NULL, &v, &text), RP_EINVAL);
    cr_assert_not_null(strstr(rp_errmsg(), needle), "message \"%s\" lacks \"%s\"", rp_errmsg(),
                       needle);
    rp_buf_free(&text);
    jepsen_history_free(h);
    free(jsonl);
}

static void result_free(struct result *r)
{
    rp_buf_free(&r->text);
    jepsen_arena_free(&r->arena);
}

static const struct jepsen_json *field(const struct result *r, const char *name)
{
    const struct jepsen_json *v = jepsen_json_get(&r->root, name);
    cr_assert_not_null(v, "report lacks %s: %.*s", name, (int)r->text.len,
                       (const char *)r->text.data);
    return v;
}

static int64_t count(const struct result *r, const char *name)
{
    const struct jepsen_json *v = field(r, name);
    cr_assert_eq(v->type, JEPSEN_JSON_INT, "%s is not an integer", name);
    return v->u.i;
}

/* The canonical JSON of report field @name equals @want. */
static void field_is(const struct result *r, const char *name, const char *want)
{
    struct rp_buf b;
    rp_buf_init(&b);
    jepsen_json_canonical(field(r, name), &b);
    rp_buf_append(&b, "", 1);
    cr_assert_str_eq((const char *)b.data, want, "field %s", name);
    rp_buf_free(&b);
}

static bool has_warning(const struct result *r, const char *prefix)
{
    const struct jepsen_json *w = field(r, "warnings");
    for (size_t i = 0; i < w->len; i++) {
        if (strncmp(w->u.items[i].u.s, prefix, strlen(prefix)) == 0)
            return true;
    }
    return false;
}

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
    struct result r;
    run_spec(jepsen_check_watch,
             W10 "11 invoke watch _ null\n"
                 "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(2, "b") "," DEL(
                     3, "a") "]\n"
                             "n info start-partition _ null\n"
                             "11 invoke watch _ null\n"
                             "11 ok watch _ []\n" FINAL(3, RES(2, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    cr_assert_eq(count(&r, "watcher_count"), 2);
    cr_assert_eq(count(&r, "following_count"), 2);
    cr_assert_eq(count(&r, "event_count"), 8);
    cr_assert_eq(count(&r, "revision_count"), 3);
    cr_assert_eq(count(&r, "final_revision"), 3);
    result_free(&r);
}

Test(jepsen_watch, revision_numbers_may_skip)
{
    /* Revision 2 went to something no watcher sees: not a gap. */
    struct result r;
    run_spec(jepsen_check_watch,
             "10 invoke watch _ null\n"
             "10 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(
                 5, "b") "]\n"
                         "11 invoke watch _ null\n"
                         "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(5, "b") "]\n" FINAL(
                             7, RES(1, "a") "," RES(5, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    result_free(&r);
}

Test(jepsen_watch, events_of_one_revision_come_together)
{
    struct result r;
    run_spec(jepsen_check_watch,
             "10 invoke watch _ null\n"
             "10 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(
                 1, "b") "]\n"
                         "11 invoke watch _ null\n"
                         "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(1, "b") "]\n" FINAL(
                             1, RES(1, "a") "," RES(1, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    result_free(&r);
}

Test(jepsen_watch, watcher_that_ended_is_judged_up_to_its_end)
{
    /* Watcher 11 broke after revision 1 (info) and came back as 12 with a
     * snapshot at revision 1, which matches what watcher 10 had then. */
    struct result r;
    run_spec(jepsen_check_watch,
             W10 "11 invoke watch _ null\n"
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
    cr_assert_eq(count(&r, "watcher_count"), 3);
    cr_assert_eq(count(&r, "following_count"), 2);
    result_free(&r);
}

Test(jepsen_watch, resumed_watcher_is_checked_for_order_but_not_final_state)
{
    struct result r;
    run_spec(jepsen_check_watch,
             W10 "11 invoke watch _ null\n"
                 "11 ok watch _ [" RESUMED(1) "," PUT(2, "b") "," DEL(3, "a") "]\n" FINAL(
                     3, RES(2, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_VALID, "%s", (const char *)r.text.data);
    cr_assert(has_warning(&r, "1 following watchers resumed without a snapshot"));
    result_free(&r);
}

/* ---- Anomalies ---------------------------------------------------------------- */

Test(jepsen_watch, watcher_missing_a_revision_has_a_gap)
{
    struct result r;
    run_spec(jepsen_check_watch,
             W10
             "11 invoke watch _ null\n"
             "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," DEL(3, "a") "]\n" FINAL(3, RES(2, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "gaps", "[{\"missing_revision\":2,\"process\":11}]");
    /* Its state lacks b, too. */
    cr_assert_eq(count(&r, "final_mismatch_count"), 1);
    result_free(&r);
}

Test(jepsen_watch, following_watcher_that_stopped_short_has_a_gap)
{
    struct result r;
    run_spec(jepsen_check_watch,
             W10
             "11 invoke watch _ null\n"
             "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(2, "b") "]\n" FINAL(3, RES(2, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "gaps", "[{\"missing_revision\":3,\"process\":11}]");
    field_is(&r, "final_mismatch",
             "[{\"different\":[],\"different_count\":0,\"extra\":[{\"kind\":\"role\",\"name\":"
             "\"a\",\"revision\":1}],\"extra_count\":1,\"last_revision\":2,\"missing\":[],"
             "\"missing_count\":0,\"process\":11}]");
    result_free(&r);
}

Test(jepsen_watch, revisions_going_back_are_reordered)
{
    struct result r;
    run_spec(jepsen_check_watch,
             W10 "11 invoke watch _ null\n"
                 "11 ok watch _ [" DONE(0) "," PUT(1, "a") "," DEL(3, "a") "," PUT(
                     2, "b") "]\n" FINAL(3, RES(2, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "reordered", "[{\"after\":3,\"complete_index\":5,\"process\":11,\"revision\":2}]");
    result_free(&r);
}

Test(jepsen_watch, event_at_or_before_the_start_revision_is_reordered)
{
    struct result r;
    run_spec(jepsen_check_watch,
             "10 invoke watch _ null\n"
             "10 ok watch _ [" INIT(1, "a") "," DONE(1) "," PUT(1, "a") "]\n" FINAL(1, RES(1, "a")),
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(count(&r, "reordered_count"), 1);
    result_free(&r);
}

Test(jepsen_watch, event_delivered_twice_is_duplicated)
{
    struct result r;
    run_spec(jepsen_check_watch,
             "10 invoke watch _ null\n"
             "10 ok watch _ [" DONE(0) "," PUT(1, "a") "]\n"
                                                       "10 invoke watch _ null\n"
                                                       "10 ok watch _ [" PUT(1, "a") "]\n" FINAL(
                                                           1, RES(1, "a")),
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(
        &r, "duplicated",
        "[{\"complete_index\":3,\"kind\":\"role\",\"name\":\"a\",\"op\":\"put\",\"process\":10,"
        "\"revision\":1}]");
    result_free(&r);
}

Test(jepsen_watch, watchers_disagreeing_on_a_revision_diverge)
{
    struct result r;
    run_spec(jepsen_check_watch,
             "10 invoke watch _ null\n"
             "10 ok watch _ [" DONE(0) "," PUT(1, "a") "," PUT(
                 1, "b") "]\n"
                         "11 invoke watch _ null\n"
                         "11 ok watch _ [" DONE(0) "," PUT(1, "a") "]\n" FINAL(
                             1, RES(1, "a") "," RES(1, "b")),
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "divergent", "[{\"other_process\":10,\"process\":11,\"revision\":1}]");
    result_free(&r);
}

Test(jepsen_watch, state_that_differs_from_the_final_read_is_a_mismatch)
{
    struct result r;
    run_spec(jepsen_check_watch, W10 FINAL(3, RES(2, "b") "," RES(3, "c")), &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(count(&r, "final_mismatch_count"), 1);
    const struct jepsen_json *m = &field(&r, "final_mismatch")->u.items[0];
    cr_assert_eq(jepsen_json_get(m, "missing_count")->u.i, 1);
    cr_assert(jepsen_json_is_str(
        jepsen_json_get(&jepsen_json_get(m, "missing")->u.items[0], "name"), "c"));
    result_free(&r);

    run_spec(jepsen_check_watch, W10 FINAL(3, RES(7, "b")), &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    m = &field(&r, "final_mismatch")->u.items[0];
    cr_assert_eq(jepsen_json_get(m, "different_count")->u.i, 1);
    cr_assert_eq(
        jepsen_json_get(&jepsen_json_get(m, "different")->u.items[0], "expected_revision")->u.i, 7);
    result_free(&r);
}

Test(jepsen_watch, snapshot_that_differs_from_an_older_watcher_is_a_mismatch)
{
    struct result r;
    run_spec(jepsen_check_watch,
             W10
             "12 invoke watch _ null\n"
             "12 ok watch _ [" INIT(2, "b") "," DONE(2) "," DEL(3, "a") "]\n" FINAL(3, RES(2, "b")),
             &r);
    /* At revision 2 watcher 10 had a and b; 12's snapshot lacks a. */
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(count(&r, "snapshot_mismatch_count"), 1);
    result_free(&r);
}

/* ---- Not enough to judge, or not a watch history ------------------------------------ */

Test(jepsen_watch, no_final_read_is_unknown)
{
    struct result r;
    run_spec(jepsen_check_watch, W10, &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(has_warning(&r, "no final read"));
    result_free(&r);
}

Test(jepsen_watch, no_watchers_is_unknown)
{
    struct result r;
    run_spec(jepsen_check_watch, FINAL(0, ""), &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(has_warning(&r, "no watcher events"));
    result_free(&r);
}

Test(jepsen_watch, histories_that_do_not_fit_are_refused)
{
    refused_spec(jepsen_check_watch, "10 invoke watch _ null\n10 ok watch _ [" PUT(1, "a") "]\n",
                 "line 2: watch event 0 (put) before the watcher's init_done");
    refused_spec(jepsen_check_watch, "10 invoke watch _ null\n10 ok watch _ {}\n",
                 "line 2: a watch completion's value must be an array");
    refused_spec(jepsen_check_watch,
                 "10 invoke watch _ null\n10 ok watch _ [{\"revision\":1,\"op\":\"touch\"}]\n",
                 "\"op\" must be init, init_done, put or delete");
    refused_spec(
        jepsen_check_watch,
        "10 invoke watch _ null\n10 ok watch _ [" DONE(0) ",{\"revision\":1,\"op\":\"put\"}]\n",
        "line 2: watch event 1: \"kind\" must be a non-empty string");
    refused_spec(jepsen_check_watch, "3 invoke read _ null\n3 ok read _ []\n",
                 "line 2: watch model: the final read's value must be");
    refused_spec(jepsen_check_watch, FINAL(1, RES(1, "a") "," RES(1, "a")),
                 "the final read lists a resource twice");
}
