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

Test(jepsen_unique, each_item_consumed_once_is_valid)
{
    struct result r;
    run_spec(jepsen_check_unique,
             "0 invoke consume \"t1\"\n"
             "1 invoke consume \"t1\"\n"
             "0 ok consume \"t1\"\n"
             "1 fail consume \"t1\"\n"
             "2 invoke consume \"t2\"\n"
             "2 ok consume \"t2\"\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    cr_assert_eq(count(&r, "item_count"), 2);
    cr_assert_eq(count(&r, "ok_count"), 2);
    cr_assert_eq(count(&r, "fail_count"), 1);
    cr_assert_eq(count(&r, "duplicated_count"), 0);
    result_free(&r);
}

Test(jepsen_unique, info_consumption_is_only_possible)
{
    struct result r;
    run_spec(jepsen_check_unique,
             "0 invoke consume 7\n"
             "1 invoke consume 7\n"
             "0 ok consume 7\n"
             "1 info consume 7\n"
             "2 invoke consume 8\n"
             "2 info consume 8\n"
             "3 invoke consume 8\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    field_is(&r, "possible_duplicates", "[7,8]");
    cr_assert(has_warning(&r, "2 items may have been consumed twice"));
    result_free(&r);
}

/* ---- Anomalies ------------------------------------------------------------- */

Test(jepsen_unique, item_consumed_ok_twice_is_invalid)
{
    struct result r;
    run_spec(jepsen_check_unique,
             "0 invoke consume \"invite-1\"\n"
             "1 invoke consume \"invite-1\"\n"
             "2 invoke consume \"invite-1\"\n"
             "0 ok consume \"invite-1\"\n"
             "1 ok consume \"invite-1\"\n"
             "2 fail consume \"invite-1\"\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "duplicated",
             "[{\"consumers\":[{\"complete_index\":3,\"invoke_index\":0,\"process\":0},"
             "{\"complete_index\":4,\"invoke_index\":1,\"process\":1}],\"item\":\"invite-1\","
             "\"ok_count\":2}]");
    result_free(&r);
}

Test(jepsen_unique, consuming_an_item_never_created_is_unexpected)
{
    struct result r;
    run_spec(jepsen_check_unique,
             "0 invoke create 1\n"
             "0 ok create 1\n"
             "1 invoke consume 1\n"
             "1 ok consume 1\n"
             "1 invoke consume 2\n"
             "1 ok consume 2\n",
             &r);
    cr_assert_eq(r.v, JEPSEN_INVALID);
    field_is(&r, "unexpected", "[2]");
    result_free(&r);
}

Test(jepsen_unique, final_read_with_a_consumed_item_is_resurrected)
{
    struct result r;
    run_spec(jepsen_check_unique,
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
    field_is(&r, "resurrected", "[1]");
    field_is(&r, "vanished", "[]");
    field_is(&r, "final_read", "true");
    result_free(&r);
}

Test(jepsen_unique, item_gone_without_consumption_is_vanished)
{
    struct result r;
    run_spec(jepsen_check_unique,
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
    field_is(&r, "vanished", "[2]");
    result_free(&r);
}

Test(jepsen_unique, consistent_final_read_is_valid)
{
    struct result r;
    run_spec(jepsen_check_unique,
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
    result_free(&r);
}

Test(jepsen_unique, nothing_succeeded_is_a_warning)
{
    struct result r;
    run_spec(jepsen_check_unique, "0 invoke consume 1\n0 fail consume 1\n", &r);
    cr_assert_eq(r.v, JEPSEN_VALID);
    cr_assert(has_warning(&r, "nothing succeeded"));
    result_free(&r);
}

Test(jepsen_unique, histories_that_do_not_fit_are_refused)
{
    refused_spec(jepsen_check_unique, "0 invoke consume _ 1\n",
                 "line 1: unique model: consume without \"key\"");
    refused_spec(jepsen_check_unique, "0 invoke read _ null\n0 ok read _ 5\n",
                 "line 2: unique model: an ok read's value must be the array");
}
