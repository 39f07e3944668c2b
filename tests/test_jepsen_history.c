/* tests/test_jepsen_history.c: the JSON-lines history reader and its JSON parser.
 *
 * What is accepted, what is refused (with the line and, for JSON errors, the
 * column in the message), how invokes are paired with completions, and the
 * streaming file reader. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jepsen/check.h"
#include "jepsen/history.h"
#include "lib/buf.h"
#include "lib/errors.h"

/* ---- Helpers -------------------------------------------------------------- */

static struct jepsen_history *parse_ok(const char *text)
{
    struct jepsen_history *h = NULL;
    int rv = jepsen_history_parse(text, strlen(text), &h);
    cr_assert_eq(rv, 0, "parse: %s", rp_errmsg());
    return h;
}

/* Asserts that @text is refused and that the message contains @needle. */
static void parse_refused(const char *text, size_t len, const char *needle)
{
    struct jepsen_history *h = NULL;
    int rv = jepsen_history_parse(text, len, &h);
    cr_assert_eq(rv, RP_EINVAL, "accepted: %.200s", text);
    cr_assert_null(h);
    cr_assert_not_null(strstr(rp_errmsg(), needle), "message \"%s\" lacks \"%s\"", rp_errmsg(),
                       needle);
}

static void refused(const char *text, const char *needle)
{
    parse_refused(text, strlen(text), needle);
}

/* A one-line history whose "value" is @json. */
static char *with_value(const char *json)
{
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_printf(&b,
                  "{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":0,\"f\":\"write\","
                  "\"value\":%s}",
                  json);
    rp_buf_append(&b, "", 1);
    return (char *)rp_buf_steal(&b, NULL);
}

static void value_refused(const char *json, const char *needle)
{
    char *t = with_value(json);
    refused(t, needle);
    free(t);
}

static const struct jepsen_json *value_ok(const char *json, struct jepsen_history **h)
{
    char *t = with_value(json);
    *h = parse_ok(t);
    free(t);
    cr_assert_eq((*h)->n_ops, 1);
    return (*h)->ops[0].value;
}

#define L0                                                                                         \
    "{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":3,\"f\":\"write\",\"key\":\"k\","     \
    "\"value\":1}\n"
#define L1 "{\"index\":1,\"time\":5,\"type\":\"ok\",\"process\":3,\"f\":\"write\",\"value\":1}\n"

/* ---- Fields and pairing ------------------------------------------------------- */

Test(jepsen_history, reads_fields_and_pairs_invoke_with_completion)
{
    struct jepsen_history *h =
        parse_ok(L0 "{\"index\":1,\"time\":2,\"type\":\"info\",\"process\":\"nemesis\","
                    "\"f\":\"start-partition\",\"value\":{\"n1\":[\"n2\"]}}\n"
                    "{\"index\":2,\"time\":5,\"type\":\"ok\",\"process\":3,\"f\":\"write\"}\n");
    cr_assert_eq(h->n_ops, 3);
    const struct jepsen_op *inv = &h->ops[0], *nem = &h->ops[1], *ok = &h->ops[2];
    cr_assert_eq(inv->type, JEPSEN_INVOKE);
    cr_assert_eq(inv->process, 3);
    cr_assert_str_eq(inv->f, "write");
    cr_assert(jepsen_json_is_str(inv->key, "k"));
    cr_assert_eq(inv->value->u.i, 1);
    cr_assert_null(inv->error);
    cr_assert_eq(inv->peer, 2);
    cr_assert(nem->nemesis);
    cr_assert_eq(nem->peer, JEPSEN_NONE);
    cr_assert_eq(ok->type, JEPSEN_OK);
    cr_assert_eq(ok->peer, 0);
    cr_assert_eq(ok->line, 3);
    cr_assert_eq(ok->time, 5);
    /* The completion inherits the invoke's key when it has none. */
    cr_assert(jepsen_json_is_str(ok->key, "k"));
    cr_assert_eq(jepsen_history_completion(h, 0), ok);
    jepsen_history_free(h);
}

Test(jepsen_history, invoke_without_completion_has_no_peer)
{
    struct jepsen_history *h = parse_ok(L0);
    cr_assert_eq(h->ops[0].peer, JEPSEN_NONE);
    cr_assert_null(jepsen_history_completion(h, 0));
    jepsen_history_free(h);
}

Test(jepsen_history, empty_and_blank_lines_are_skipped)
{
    struct jepsen_history *h = parse_ok("");
    cr_assert_eq(h->n_ops, 0);
    jepsen_history_free(h);
    h = parse_ok("\n  \r\n" L0 "\n\t\n" L1 "\r\n");
    cr_assert_eq(h->n_ops, 2);
    cr_assert_eq(h->ops[1].line, 6);
    jepsen_history_free(h);
}

Test(jepsen_history, last_line_without_newline_and_crlf_are_read)
{
    struct jepsen_history *h = parse_ok(
        "{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1,\"f\":\"read\"}\r\n"
        "{\"index\":1,\"time\":1,\"type\":\"ok\",\"process\":1,\"f\":\"read\",\"value\":2}");
    cr_assert_eq(h->n_ops, 2);
    cr_assert_eq(h->ops[1].value->u.i, 2);
    jepsen_history_free(h);
}

Test(jepsen_history, reuse_of_a_process_after_info_is_counted)
{
    struct jepsen_history *h = parse_ok(
        "{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1,\"f\":\"read\"}\n"
        "{\"index\":1,\"time\":1,\"type\":\"info\",\"process\":1,\"f\":\"read\"}\n"
        "{\"index\":2,\"time\":2,\"type\":\"invoke\",\"process\":1,\"f\":\"read\"}\n"
        "{\"index\":3,\"time\":3,\"type\":\"ok\",\"process\":1,\"f\":\"read\",\"value\":null}\n");
    cr_assert_eq(h->reused_after_info, 1);
    cr_assert_eq(h->first_reuse_line, 3);
    jepsen_history_free(h);
}

Test(jepsen_history, unknown_fields_are_kept_in_the_object)
{
    struct jepsen_history *h = parse_ok("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1,"
                                        "\"f\":\"read\",\"node\":\"n3\"}");
    cr_assert(jepsen_json_is_str(jepsen_json_get(h->ops[0].obj, "node"), "n3"));
    jepsen_history_free(h);
}

Test(jepsen_history, missing_or_mistyped_fields_are_refused_with_the_line)
{
    refused(L0 "{\"time\":0,\"type\":\"ok\",\"process\":3,\"f\":\"write\"}",
            "line 2: \"index\" is missing");
    refused("{\"index\":\"0\",\"time\":0,\"type\":\"invoke\",\"process\":3,\"f\":\"w\"}",
            "line 1: \"index\" must be an integer");
    refused("{\"index\":0,\"type\":\"invoke\",\"process\":3,\"f\":\"w\"}",
            "line 1: \"time\" is missing");
    refused("{\"index\":0,\"time\":-1,\"type\":\"invoke\",\"process\":3,\"f\":\"w\"}",
            "line 1: \"time\" must not be negative");
    refused("{\"index\":0,\"time\":0,\"type\":\"done\",\"process\":3,\"f\":\"w\"}",
            "line 1: \"type\" must be");
    refused("{\"index\":0,\"time\":0,\"process\":3,\"f\":\"w\"}", "line 1: \"type\" is missing");
    refused("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":\"n1\",\"f\":\"w\"}",
            "line 1: \"process\" must be an integer >= 0 or \"nemesis\"");
    refused("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":-2,\"f\":\"w\"}",
            "line 1: \"process\" must be");
    refused("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"f\":\"w\"}",
            "line 1: \"process\" is missing");
    refused("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1}",
            "line 1: \"f\" is missing");
    refused("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1,\"f\":3}",
            "line 1: \"f\" must be a string");
    refused("[1,2]", "line 1: expected a JSON object");
}

Test(jepsen_history, index_must_increase)
{
    refused(L0 "{\"index\":0,\"time\":5,\"type\":\"ok\",\"process\":3,\"f\":\"write\"}\n",
            "line 2: index 0 is not greater than index 0 of line 1");
}

Test(jepsen_history, pairing_errors_are_refused)
{
    refused(L1, "line 1: \"ok\" for process 3, which has no open invoke");
    refused(L0 "{\"index\":1,\"time\":1,\"type\":\"invoke\",\"process\":3,\"f\":\"read\"}",
            "line 2: process 3 invokes while its op invoked at line 1 is still open");
    refused(L0 "{\"index\":1,\"time\":1,\"type\":\"ok\",\"process\":3,\"f\":\"read\"}",
            "line 2: completion f \"read\" differs from f \"write\" of its invoke at line 1");
    refused(L0 "{\"index\":1,\"time\":1,\"type\":\"ok\",\"process\":3,\"f\":\"write\","
               "\"key\":\"other\"}",
            "line 2: completion key differs");
}

/* ---- JSON ------------------------------------------------------------------------ */

Test(jepsen_history, json_values_of_every_type_are_parsed)
{
    struct jepsen_history *h;
    const struct jepsen_json *v =
        value_ok("[null, true, false, -0, 12, -9223372036854775808, 9223372036854775807, 1.5e3,"
                 " \"s\", [], {}, {\"a\": [1, {\"b\": null}]}]",
                 &h);
    cr_assert_eq(v->type, JEPSEN_JSON_ARRAY);
    cr_assert_eq(v->len, 12);
    const struct jepsen_json *it = v->u.items;
    cr_assert_eq(it[0].type, JEPSEN_JSON_NULL);
    cr_assert_eq(it[1].type, JEPSEN_JSON_TRUE);
    cr_assert_eq(it[2].type, JEPSEN_JSON_FALSE);
    cr_assert_eq(it[3].type, JEPSEN_JSON_INT);
    cr_assert_eq(it[3].u.i, 0);
    cr_assert_eq(it[4].u.i, 12);
    cr_assert_eq(it[5].u.i, INT64_MIN);
    cr_assert_eq(it[6].u.i, INT64_MAX);
    cr_assert_eq(it[7].type, JEPSEN_JSON_FLOAT);
    cr_assert_float_eq(it[7].u.d, 1500.0, 1e-9);
    cr_assert(jepsen_json_is_str(&it[8], "s"));
    cr_assert_eq(it[9].len, 0);
    cr_assert_eq(it[10].type, JEPSEN_JSON_OBJECT);
    cr_assert_eq(jepsen_json_get(&it[11], "a")->u.items[1].u.members[0].value.type,
                 JEPSEN_JSON_NULL);
    jepsen_history_free(h);
}

Test(jepsen_history, string_escapes_are_decoded)
{
    struct jepsen_history *h;
    const struct jepsen_json *v =
        value_ok("\"a\\\"b\\\\c\\/d\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\xc3\xa9\"", &h);
    cr_assert_eq(v->type, JEPSEN_JSON_STRING);
    const char *want = "a\"b\\c/d\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80\xc3\xa9";
    cr_assert_eq(v->len, strlen(want));
    cr_assert_eq(memcmp(v->u.s, want, v->len), 0);
    jepsen_history_free(h);
}

Test(jepsen_history, malformed_json_is_refused_with_line_and_column)
{
    refused("{\"index\":0,}", "line 1, column 12: expected a string as object member name");
    value_refused("tru", "column");
    value_refused("01", "leading zeros");
    value_refused("1.", "expected a digit after the decimal point");
    value_refused("1e", "expected a digit in the exponent");
    value_refused("-", "expected a digit");
    value_refused("+1", "expected a JSON value");
    value_refused("[1 2]", "expected ',' or ']' in array");
    value_refused("[1,]", "expected a JSON value");
    value_refused("{\"a\" 1}", "expected ':' after object member name");
    value_refused("\"abc", "unterminated string");
    value_refused("\"a\tb\"", "control character in string");
    value_refused("\"\\x\"", "invalid escape");
    value_refused("\"\\u12\"", "expected 4 hex digits");
    value_refused("'a'", "expected a JSON value");
    value_refused("NaN", "expected a JSON value");
    refused("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1,\"f\":\"r\"} x",
            "expected the end of the line");
    refused("{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1,\"f\":\"r\"}{}",
            "expected the end of the line");
}

Test(jepsen_history, invalid_unicode_is_refused)
{
    value_refused("\"\xff\"", "invalid UTF-8");
    value_refused("\"\xc0\xaf\"", "invalid UTF-8");     /* overlong */
    value_refused("\"\xed\xa0\x80\"", "invalid UTF-8"); /* encoded surrogate */
    value_refused("\"\xe2\x82\"", "invalid UTF-8");     /* truncated */
    value_refused("\"\\udc00\"", "lone low surrogate");
    value_refused("\"\\ud800x\"", "high surrogate not followed");
    value_refused("\"\\ud800\\u0041\"", "high surrogate not followed by a low surrogate");
    value_refused("\"\\u0000\"", "\\u0000 is not accepted");
}

Test(jepsen_history, duplicate_member_names_are_refused)
{
    value_refused("{\"a\":1,\"b\":2,\"a\":3}", "member \"a\" occurs twice");
    /* Many members take the sorted path. */
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_append_str(&b, "{");
    for (int i = 0; i < 40; i++)
        rp_buf_printf(&b, "\"m%d\":%d,", i, i);
    rp_buf_append_str(&b, "\"m17\":0}");
    rp_buf_append(&b, "", 1);
    value_refused((const char *)b.data, "member \"m17\" occurs twice");
    /* Same line without the duplicate is fine. */
    b.len -= strlen("\"m17\":0}") + 1;
    rp_buf_append_str(&b, "\"last\":0}");
    rp_buf_append(&b, "", 1);
    struct jepsen_history *h;
    cr_assert_eq(value_ok((const char *)b.data, &h)->len, 41);
    jepsen_history_free(h);
    rp_buf_free(&b);
}

Test(jepsen_history, numbers_that_overflow_are_refused)
{
    value_refused("9223372036854775808", "integer 9223372036854775808 overflows 64 bits");
    value_refused("-9223372036854775809", "overflows 64 bits");
    value_refused("123456789012345678901234567890", "overflows 64 bits");
    value_refused("1e400", "number 1e400 overflows a double");
    value_refused("-1.5e309", "overflows a double");
    /* Underflow is not overflow: it rounds to zero. */
    struct jepsen_history *h;
    cr_assert_eq(value_ok("1e-400", &h)->type, JEPSEN_JSON_FLOAT);
    jepsen_history_free(h);
}

static char *nested(int depth)
{
    char *s = malloc((size_t)depth * 2 + 1);
    for (int i = 0; i < depth; i++) {
        s[i] = '[';
        s[depth * 2 - 1 - i] = ']';
    }
    s[depth * 2] = '\0';
    return s;
}

Test(jepsen_history, nesting_is_limited_to_32)
{
    /* The line's object is level 1: the value may nest 31 more. */
    char *ok = nested(31), *bad = nested(32);
    struct jepsen_history *h;
    value_ok(ok, &h);
    jepsen_history_free(h);
    value_refused(bad, "nesting deeper than 32");
    free(ok);
    free(bad);
}

Test(jepsen_history, lines_over_one_mib_are_refused)
{
    /* Exactly the limit is accepted; one byte more is not. */
    const char *head = "{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":0,\"f\":\"w\","
                       "\"value\":\"";
    size_t fill = JEPSEN_MAX_LINE - strlen(head) - 2;
    char *line = malloc(JEPSEN_MAX_LINE + 2);
    strcpy(line, head);
    memset(line + strlen(head), 'x', fill);
    strcpy(line + strlen(head) + fill, "\"}");
    cr_assert_eq(strlen(line), JEPSEN_MAX_LINE);
    struct jepsen_history *h = parse_ok(line);
    cr_assert_eq(h->ops[0].value->len, fill);
    jepsen_history_free(h);
    memset(line + strlen(head), 'x', fill + 1);
    strcpy(line + strlen(head) + fill + 1, "\"}");
    refused(line, "line 1: longer than 1048576 bytes");
    free(line);
}

/* ---- Files ------------------------------------------------------------------------- */

static void write_file(const char *path, const char *text, size_t len)
{
    FILE *fp = fopen(path, "wb");
    cr_assert_not_null(fp);
    cr_assert_eq(fwrite(text, 1, len, fp), len);
    cr_assert_eq(fclose(fp), 0);
}

Test(jepsen_history, file_is_streamed_line_by_line)
{
    char path[] = "/tmp/rp_jepsen_hist_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    /* Enough lines to cross several read chunks. */
    struct jepsen_gen_opts o = {.seed = 3,
                                .keys = 4,
                                .processes = 5,
                                .ops_per_key = 2000,
                                .info_rate = 0.1,
                                .fail_rate = 0.05,
                                .late_rate = 0.5};
    struct rp_buf text;
    rp_buf_init(&text);
    cr_assert_eq(jepsen_gen_register(&o, &text, NULL), 0);
    write_file(path, (const char *)text.data, text.len - 1); /* no final newline */
    struct jepsen_history *a = NULL, *b = NULL;
    cr_assert_eq(jepsen_history_read_file(path, &a), 0, "%s", rp_errmsg());
    cr_assert_eq(jepsen_history_parse((const char *)text.data, text.len, &b), 0);
    cr_assert_eq(a->n_ops, b->n_ops);
    cr_assert_gt(a->n_ops, 16000);
    for (size_t i = 0; i < a->n_ops; i++) {
        cr_assert_eq(a->ops[i].index, b->ops[i].index);
        cr_assert_eq(a->ops[i].peer, b->ops[i].peer);
        cr_assert_eq(a->ops[i].line, b->ops[i].line);
    }
    jepsen_history_free(a);
    jepsen_history_free(b);
    rp_buf_free(&text);
    unlink(path);
}

Test(jepsen_history, file_errors_name_the_path_and_line)
{
    char path[] = "/tmp/rp_jepsen_hist_XXXXXX";
    int fd = mkstemp(path);
    cr_assert_geq(fd, 0);
    close(fd);
    const char *text =
        L0 L1 "{\"index\":2,\"time\":0,\"type\":\"ok\",\"process\":3,\"f\":\"write\"}\n";
    write_file(path, text, strlen(text));
    struct jepsen_history *h = NULL;
    cr_assert_eq(jepsen_history_read_file(path, &h), RP_EINVAL);
    cr_assert_null(h);
    cr_assert_not_null(strstr(rp_errmsg(), path));
    cr_assert_not_null(strstr(rp_errmsg(), "line 3: \"ok\" for process 3"), "%s", rp_errmsg());

    /* A long line in a file is refused before it is buffered whole. */
    size_t n = 3 * JEPSEN_MAX_LINE;
    char *big = malloc(n);
    memcpy(big, L0, strlen(L0));
    memset(big + strlen(L0), ' ', n - strlen(L0));
    write_file(path, big, n);
    cr_assert_eq(jepsen_history_read_file(path, &h), RP_EINVAL);
    cr_assert_not_null(strstr(rp_errmsg(), "line 2: longer than"), "%s", rp_errmsg());
    free(big);
    unlink(path);

    cr_assert_eq(jepsen_history_read_file("/nonexistent/history.jsonl", &h), RP_EIO);
    cr_assert_not_null(strstr(rp_errmsg(), "/nonexistent/history.jsonl"));
}

/* ---- Helpers shared by the checkers ---------------------------------------------------- */

Test(jepsen_history, canonical_json_ignores_member_order_and_spacing)
{
    struct jepsen_arena a;
    jepsen_arena_init(&a);
    struct jepsen_json x, y, z;
    const char *tx = "{ \"b\" : [1, 2.5, \"\\u00e9\"], \"a\": {\"d\":null,\"c\":true} }";
    const char *ty = "{\"a\":{\"c\":true,\"d\":null},\"b\":[1,2.5,\"\xc3\xa9\"]}";
    const char *tz = "{\"a\":{\"c\":true,\"d\":null},\"b\":[1,2.5,\"e\"]}";
    cr_assert_eq(jepsen_json_parse(tx, strlen(tx), &a, &x), 0);
    cr_assert_eq(jepsen_json_parse(ty, strlen(ty), &a, &y), 0);
    cr_assert_eq(jepsen_json_parse(tz, strlen(tz), &a, &z), 0);
    cr_assert(jepsen_json_equal(&x, &y));
    cr_assert(!jepsen_json_equal(&x, &z));
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(jepsen_json_canonical(&x, &b), 0);
    rp_buf_append(&b, "", 1);
    cr_assert_str_eq((const char *)b.data,
                     "{\"a\":{\"c\":true,\"d\":null},\"b\":[1,2.5,\"\xc3\xa9\"]}");
    rp_buf_free(&b);
    jepsen_arena_free(&a);
}

Test(jepsen_history, map_interns_byte_strings)
{
    struct jepsen_map m;
    jepsen_map_init(&m);
    for (size_t i = 0; i < 5000; i++) {
        char k[32];
        int n = snprintf(k, sizeof k, "key-%zu", i);
        size_t *slot;
        bool added;
        cr_assert_eq(jepsen_map_put(&m, k, (size_t)n, i, &slot, &added), 0);
        cr_assert(added);
    }
    size_t *slot;
    bool added;
    cr_assert_eq(jepsen_map_put(&m, "key-42", 6, 999, &slot, &added), 0);
    cr_assert(!added);
    cr_assert_eq(*slot, 42);
    cr_assert_eq(*jepsen_map_find(&m, "key-4999", 8), 4999);
    cr_assert_null(jepsen_map_find(&m, "key-5000", 8));
    cr_assert_eq(m.n, 5000);
    jepsen_map_free(&m);
}

/* ---- Robustness ---------------------------------------------------------------------- */

typedef int (*checker_fn)(const struct jepsen_history *, const struct jepsen_check_opts *,
                          enum jepsen_verdict *, struct rp_buf *);

Test(jepsen_history, damaged_histories_are_refused_or_judged_never_crash)
{
    /* A small history of every model, then thousands of copies with a few
     * bytes changed: the reader and every checker must answer 0 or RP_EINVAL. */
    const char *base =
        "{\"index\":0,\"time\":0,\"type\":\"invoke\",\"process\":1,\"f\":\"write\",\"key\":1,"
        "\"value\":1}\n"
        "{\"index\":1,\"time\":1,\"type\":\"ok\",\"process\":1,\"f\":\"write\",\"key\":1,\"value\":"
        "1}\n"
        "{\"index\":2,\"time\":2,\"type\":\"invoke\",\"process\":2,\"f\":\"cas\",\"key\":1,"
        "\"value\":[1,2]}\n"
        "{\"index\":3,\"time\":3,\"type\":\"info\",\"process\":2,\"f\":\"cas\",\"key\":1,\"value\":"
        "[1,2]}\n"
        "{\"index\":4,\"time\":4,\"type\":\"invoke\",\"process\":3,\"f\":\"add\",\"value\":\"x\"}\n"
        "{\"index\":5,\"time\":5,\"type\":\"ok\",\"process\":3,\"f\":\"add\",\"value\":\"x\"}\n"
        "{\"index\":6,\"time\":6,\"type\":\"invoke\",\"process\":4,\"f\":\"consume\",\"key\":\"t\"}"
        "\n"
        "{\"index\":7,\"time\":7,\"type\":\"ok\",\"process\":4,\"f\":\"consume\",\"key\":\"t\"}\n"
        "{\"index\":8,\"time\":8,\"type\":\"invoke\",\"process\":5,\"f\":\"watch\",\"value\":null}"
        "\n"
        "{\"index\":9,\"time\":9,\"type\":\"ok\",\"process\":5,\"f\":\"watch\",\"value\":[{"
        "\"revision\":0,"
        "\"op\":\"init_done\"},{\"revision\":1,\"op\":\"put\",\"kind\":\"k\",\"name\":\"n\"}]}\n"
        "{\"index\":10,\"time\":10,\"type\":\"invoke\",\"process\":6,\"f\":\"read\",\"key\":1,"
        "\"value\":null}\n"
        "{\"index\":11,\"time\":11,\"type\":\"ok\",\"process\":6,\"f\":\"read\",\"key\":1,"
        "\"value\":2}\n";
    checker_fn checkers[] = {jepsen_check_register, jepsen_check_set, jepsen_check_watch,
                             jepsen_check_unique};
    const char alphabet[] = "{}[]\",:0123456789-.eE \\u\n\xc3\xa9\x80tfnulrsa";
    size_t len = strlen(base);
    char *text = malloc(len + 1);
    uint64_t s = 0x9e3779b97f4a7c15ULL;
    int accepted = 0;
    for (int iter = 0; iter < 20000; iter++) {
        memcpy(text, base, len + 1);
        int changes = 1 + iter % 4;
        for (int c = 0; c < changes; c++) {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            text[s % len] = alphabet[(s >> 32) % (sizeof alphabet - 1)];
        }
        struct jepsen_history *h = NULL;
        int rv = jepsen_history_parse(text, len, &h);
        cr_assert(rv == 0 || rv == RP_EINVAL, "reader answered %d", rv);
        if (rv != 0)
            continue;
        accepted++;
        for (size_t k = 0; k < sizeof checkers / sizeof checkers[0]; k++) {
            struct rp_buf report;
            rp_buf_init(&report);
            enum jepsen_verdict v;
            rv = checkers[k](h, NULL, &v, &report);
            cr_assert(rv == 0 || rv == RP_EINVAL, "checker %zu answered %d", k, rv);
            rp_buf_free(&report);
        }
        jepsen_history_free(h);
    }
    cr_assert_gt(accepted, 100);
    free(text);
}
