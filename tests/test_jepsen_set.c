/* tests/test_jepsen_set.c: the set checker (lost, unexpected, recovered elements). */
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

/* ---- Valid histories -------------------------------------------------------- */

Test(jepsen_set, acknowledged_adds_all_in_the_final_read_is_valid)
{
    struct result r;
    run_spec(jepsen_check_set,
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
    cr_assert_eq(count(&r, "attempt_count"), 4);
    cr_assert_eq(count(&r, "ok_count"), 1);
    cr_assert_eq(count(&r, "info_count"), 2);
    cr_assert_eq(count(&r, "fail_count"), 1);
    cr_assert_eq(count(&r, "final_read_count"), 1);
    field_is(&r, "recovered", "[2]");
    field_is(&r, "lost", "[]");
    field_is(&r, "unexpected", "[]");
    result_free(&r);
}

Test(jepsen_set, read_concurrent_with_an_add_is_not_final)
{
    /* The first read overlaps add 2, so 2 may be missing from it; the later
     * read is final and has everything. */
    struct result r;
    run_spec(jepsen_check_set,
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
    cr_assert_eq(count(&r, "read_count"), 2);
    cr_assert_eq(count(&r, "final_read_count"), 1);
    result_free(&r);
}

Test(jepsen_set, unfinished_add_does_not_prevent_a_final_read)
{
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ \"a\"\n"
             "0 ok add _ \"a\"\n"
             "1 invoke add _ \"b\"\n"
             "2 invoke read _ null\n"
             "2 ok read _ [\"a\"]\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    field_is(&r, "recovered", "[]");
    result_free(&r);
}

/* ---- Anomalies ----------------------------------------------------------------- */

Test(jepsen_set, acknowledged_add_missing_from_the_final_read_is_lost)
{
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ 1\n"
             "0 ok add _ 1\n"
             "1 invoke add _ 2\n"
             "1 ok add _ 2\n"
             "0 invoke read _ null\n"
             "0 ok read _ [2]\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "lost", "[1]");
    cr_assert_eq(count(&r, "lost_count"), 1);
    result_free(&r);
}

Test(jepsen_set, missing_from_any_final_read_is_lost)
{
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ 1\n"
             "0 ok add _ 1\n"
             "0 invoke read _ null\n"
             "0 ok read _ [1]\n"
             "1 invoke read _ null\n"
             "1 ok read _ []\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    cr_assert_eq(count(&r, "final_read_count"), 2);
    field_is(&r, "lost", "[1]");
    result_free(&r);
}

Test(jepsen_set, info_add_seen_by_a_read_then_missing_is_lost)
{
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ 1\n"
             "0 info add _ 1\n"
             "1 invoke read _ null\n"
             "1 ok read _ [1]\n"
             "1 invoke read _ null\n"
             "1 ok read _ []\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "lost", "[1]");
    result_free(&r);
}

Test(jepsen_set, element_never_added_is_unexpected)
{
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ 1\n"
             "0 ok add _ 1\n"
             "0 invoke read _ null\n"
             "0 ok read _ [1,9]\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "unexpected", "[9]");
    field_is(&r, "lost", "[]");
    result_free(&r);
}

Test(jepsen_set, element_of_a_failed_add_is_unexpected)
{
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ 1\n"
             "0 fail add _ 1\n"
             "0 invoke read _ null\n"
             "0 ok read _ [1]\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "unexpected", "[1]");
    result_free(&r);
}

Test(jepsen_set, elements_compare_by_json_value)
{
    /* "1" was added, 1 was read: one lost, one unexpected. */
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ \"1\"\n"
             "0 ok add _ \"1\"\n"
             "0 invoke read _ null\n"
             "0 ok read _ [1]\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "lost", "[\"1\"]");
    field_is(&r, "unexpected", "[1]");
    result_free(&r);
}

/* ---- Not enough to judge ----------------------------------------------------------- */

Test(jepsen_set, no_final_read_is_unknown)
{
    struct result r;
    run_spec(jepsen_check_set,
             "0 invoke add _ 1\n"
             "1 invoke read _ null\n"
             "1 ok read _ []\n"
             "0 ok add _ 1\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(has_warning(&r, "no final read"));
    result_free(&r);
}

Test(jepsen_set, empty_history_is_unknown)
{
    struct result r;
    run_spec(jepsen_check_set, "", &r);
    cr_assert_eq(r.v, JEPSEN_UNKNOWN);
    cr_assert(has_warning(&r, "no final read"));
    cr_assert(has_warning(&r, "nothing succeeded"));
    result_free(&r);
}

Test(jepsen_set, histories_that_do_not_fit_are_refused)
{
    refused_spec(jepsen_check_set,
                 "0 invoke add _ 1\n0 ok add _ 1\n1 invoke add _ 1\n1 ok add _ 1\n",
                 "line 3: set model: element 1 is added twice (first at line 1)");
    refused_spec(jepsen_check_set, "0 invoke add _\n", "line 1: set model: add without \"value\"");
    refused_spec(jepsen_check_set, "0 invoke read _ null\n0 ok read _ {}\n",
                 "line 2: set model: an ok read's value must be an array");
    refused_spec(jepsen_check_set,
                 "0 invoke add \"s1\" 1\n0 ok add \"s1\" 1\n1 invoke add \"s2\" 2\n",
                 "line 3: set model: key differs from the key at line 1");
}
