/* tests/lib/jepsen_helpers.c: helpers of the jepsen/ checker tests (see
 * jepsen_helpers.h). */
#include "tests/lib/jepsen_helpers.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

char *jth_spec_to_jsonl(const char *spec)
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

void jth_run_jsonl(jth_checker_fn fn, const char *jsonl, struct jth_result *r)
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

void jth_run_spec(jth_checker_fn fn, const char *spec, struct jth_result *r)
{
    char *jsonl = jth_spec_to_jsonl(spec);
    jth_run_jsonl(fn, jsonl, r);
    free(jsonl);
}

void jth_refused_spec(jth_checker_fn fn, const char *spec, const char *needle)
{
    char *jsonl = jth_spec_to_jsonl(spec);
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

void jth_result_free(struct jth_result *r)
{
    rp_buf_free(&r->text);
    jepsen_arena_free(&r->arena);
}

const struct jepsen_json *jth_field(const struct jth_result *r, const char *name)
{
    const struct jepsen_json *v = jepsen_json_get(&r->root, name);
    cr_assert_not_null(v, "report lacks %s: %.*s", name, (int)r->text.len,
                       (const char *)r->text.data);
    return v;
}

int64_t jth_count(const struct jth_result *r, const char *name)
{
    const struct jepsen_json *v = jth_field(r, name);
    cr_assert_eq(v->type, JEPSEN_JSON_INT, "%s is not an integer", name);
    return v->u.i;
}

void jth_field_is(const struct jth_result *r, const char *name, const char *want)
{
    struct rp_buf b;
    rp_buf_init(&b);
    jepsen_json_canonical(jth_field(r, name), &b);
    rp_buf_append(&b, "", 1);
    cr_assert_str_eq((const char *)b.data, want, "field %s", name);
    rp_buf_free(&b);
}

bool jth_warnings_have(const struct jepsen_json *warnings, const char *prefix)
{
    for (size_t i = 0; i < warnings->len; i++) {
        if (strncmp(warnings->u.items[i].u.s, prefix, strlen(prefix)) == 0)
            return true;
    }
    return false;
}

bool jth_has_warning(const struct jth_result *r, const char *prefix)
{
    return jth_warnings_have(jth_field(r, "warnings"), prefix);
}
