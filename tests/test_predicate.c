/* tests/test_predicate.c: auth/predicate.c, Teleport's label expression language:
 * what expressions mean, the errors (with positions) of those that are wrong, and the
 * limits that keep a role from making parsing or evaluation unbounded. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/predicate.h"
#include "lib/errors.h"

/* ---- an environment: labels "k=v,k2=v2" and traits "name=a|b;name2=c" ----------------- */

struct env_data {
    struct rbac_label labels[16];
    size_t n_labels;
    char lbuf[512];
    char *trait_names[8];
    const char *trait_values[8][8];
    size_t n_values[8];
    size_t n_traits;
    char tbuf[512];
};

static const char *const *env_trait(const void *ctx, const char *name, size_t *n)
{
    const struct env_data *d = ctx;
    for (size_t i = 0; i < d->n_traits; i++)
        if (strcmp(d->trait_names[i], name) == 0) {
            *n = d->n_values[i];
            return d->trait_values[i];
        }
    *n = 0;
    return NULL;
}

static void env_build(struct env_data *d, struct pred_env *env, const char *labels,
                      const char *traits)
{
    memset(d, 0, sizeof(*d));
    if (labels != NULL && labels[0] != '\0') {
        snprintf(d->lbuf, sizeof d->lbuf, "%s", labels);
        for (char *save = NULL, *tok = strtok_r(d->lbuf, ",", &save); tok != NULL;
             tok = strtok_r(NULL, ",", &save)) {
            char *eq = strchr(tok, '=');
            cr_assert_not_null(eq);
            *eq = '\0';
            d->labels[d->n_labels].name = tok;
            d->labels[d->n_labels++].value = eq + 1;
        }
    }
    if (traits != NULL && traits[0] != '\0') {
        snprintf(d->tbuf, sizeof d->tbuf, "%s", traits);
        for (char *save = NULL, *tok = strtok_r(d->tbuf, ";", &save); tok != NULL;
             tok = strtok_r(NULL, ";", &save)) {
            char *eq = strchr(tok, '=');
            cr_assert_not_null(eq);
            *eq = '\0';
            size_t t = d->n_traits++;
            d->trait_names[t] = tok;
            for (char *s2 = NULL, *v = strtok_r(eq + 1, "|", &s2); v != NULL;
                 v = strtok_r(NULL, "|", &s2))
                d->trait_values[t][d->n_values[t]++] = v;
        }
    }
    *env = (struct pred_env){
        .labels = d->labels, .n_labels = d->n_labels, .trait = env_trait, .ctx = d};
}

static void free_params(struct criterion_test_params *p)
{
    cr_free(p->params);
}

static struct criterion_test_params row_indices(size_t n)
{
    size_t *idx = cr_malloc(n * sizeof(*idx));
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    return cr_make_param_array(size_t, idx, n, free_params);
}

/* ---- what expressions mean ------------------------------------------------------------ */

struct eval_case {
    const char *name, *expr, *labels, *traits;
    int want;
};

static const struct eval_case eval_cases[] = {
    {"equal_label", "labels[\"env\"] == \"staging\"", "env=staging", NULL, 1},
    {"equal_label_other_value", "labels[\"env\"] == \"staging\"", "env=prod", NULL, 0},
    {"missing_label_is_empty", "labels[\"env\"] == \"\"", "team=web", NULL, 1},
    {"not_equal", "labels[\"env\"] != \"prod\"", "env=dev", NULL, 1},
    {"dotted_label", "labels.env == \"dev\"", "env=dev", NULL, 1},
    {"raw_string_key", "labels[`env`] == `dev`", "env=dev", NULL, 1},
    {"single_quotes", "labels['env'] == 'it\\'s'", "env=it's", NULL, 1},
    {"external_is_traits", "contains(external.env, labels[\"env\"])", "env=dev", "env=dev|qa", 1},
    {"internal_is_traits", "contains(internal[\"logins\"], \"root\")", NULL, "logins=root", 1},
    {"first_of_a_repeated_label_counts", "labels[\"env\"] == \"a\"", "env=a,env=b", NULL, 1},
    {"and_both", "labels[\"a\"] == \"1\" && labels[\"b\"] == \"2\"", "a=1,b=2", NULL, 1},
    {"and_one_fails", "labels[\"a\"] == \"1\" && labels[\"b\"] == \"2\"", "a=1,b=3", NULL, 0},
    {"or_one", "labels[\"a\"] == \"1\" || labels[\"b\"] == \"2\"", "a=0,b=2", NULL, 1},
    {"and_binds_tighter_than_or", "true || false && false", NULL, NULL, 1},
    {"parentheses", "(true || false) && false", NULL, NULL, 0},
    {"not", "!(labels[\"env\"] == \"prod\")", "env=dev", NULL, 1},
    {"double_not", "!!true", NULL, NULL, 1},
    {"contains_trait", "contains(user.spec.traits[\"teams\"], labels[\"team\"])", "team=web",
     "teams=db|web", 1},
    {"contains_trait_absent", "contains(user.spec.traits[\"teams\"], labels[\"team\"])", "team=ops",
     "teams=db|web", 0},
    {"missing_trait_is_empty", "contains(user.spec.traits[\"teams\"], \"web\")", NULL, NULL, 0},
    {"dotted_trait", "contains(user.spec.traits.teams, \"db\")", NULL, "teams=db", 1},
    {"contains_string_as_list", "contains(labels[\"env\"], \"dev\")", "env=dev", NULL, 1},
    {"contains_any", "contains_any(user.spec.traits[\"a\"], user.spec.traits[\"b\"])", NULL,
     "a=1|2;b=3|2", 1},
    {"contains_any_none", "contains_any(user.spec.traits[\"a\"], user.spec.traits[\"b\"])", NULL,
     "a=1|2;b=3", 0},
    {"contains_all", "contains_all(user.spec.traits[\"a\"], user.spec.traits[\"b\"])", NULL,
     "a=1|2|3;b=3|1", 1},
    {"contains_all_missing_one", "contains_all(user.spec.traits[\"a\"], user.spec.traits[\"b\"])",
     NULL, "a=1|2;b=3|1", 0},
    {"contains_all_of_nothing_is_false",
     "contains_all(user.spec.traits[\"a\"], user.spec.traits[\"b\"])", NULL, "a=1", 0},
    {"regexp_match_unanchored", "regexp.match(labels[\"host\"], \"db-[0-9]+\")", "host=eu-db-7",
     NULL, 1},
    {"regexp_match_anchored", "regexp.match(labels[\"host\"], \"^db-[0-9]+$\")", "host=eu-db-7",
     NULL, 0},
    {"regexp_match_re2_escapes", "regexp.match(labels[\"host\"], \"^web-\\d+$\")", "host=web-12",
     NULL, 1},
    {"regexp_match_any_item", "regexp.match(user.spec.traits[\"groups\"], \"^admins$\")", NULL,
     "groups=dev|admins", 1},
    {"regexp_replace",
     "contains(regexp.replace(user.spec.traits[\"envs\"], \"^env-(.*)$\", \"$1\"), "
     "labels[\"env\"])",
     "env=prod", "envs=env-dev|env-prod", 1},
    {"regexp_replace_drops_non_matching",
     "contains(regexp.replace(user.spec.traits[\"envs\"], \"^env-(.*)$\", \"$1\"), \"other\")",
     NULL, "envs=other", 0},
    {"email_local", "contains(email.local(user.spec.traits[\"email\"]), labels[\"owner\"])",
     "owner=alice", "email=alice@example.org", 1},
    {"strings_upper", "contains(strings.upper(user.spec.traits[\"u\"]), labels[\"o\"])", "o=BOB",
     "u=bob", 1},
    {"strings_lower", "contains(strings.lower(labels[\"o\"]), \"bob\")", "o=BoB", NULL, 1},
    {"labels_matching_glob", "contains(labels_matching(\"project-*\"), \"security\")",
     "project-a=web,project-b=security,team=x", NULL, 1},
    {"labels_matching_glob_whole_name", "contains(labels_matching(\"project\"), \"web\")",
     "project-a=web", NULL, 0},
    {"labels_matching_regex", "contains(labels_matching(\"^project-(a|c)$\"), \"security\")",
     "project-a=web,project-b=security", NULL, 0},
    {"contains_any_labels_matching",
     "contains_any(user.spec.traits[\"projects\"], labels_matching(\"project-*\"))",
     "project-a=web", "projects=db|web", 1},
    {"multiline",
     "labels[\"env\"] == \"staging\" ||\n  contains(user.spec.traits[\"teams\"],\n"
     "           labels[\"team\"])\n",
     "env=prod,team=web", "teams=web", 1},
};

ParameterizedTestParameters(predicate, evaluates)
{
    return row_indices(sizeof eval_cases / sizeof eval_cases[0]);
}

ParameterizedTest(size_t *row, predicate, evaluates)
{
    const struct eval_case *tc = &eval_cases[*row];
    struct pred_expr *e = NULL;
    struct env_data d;
    struct pred_env env;
    int rv = pred_parse(tc->expr, &e);
    cr_assert_eq(rv, 0, "%s: %s", tc->name, rp_errmsg());
    env_build(&d, &env, tc->labels, tc->traits);
    cr_assert_eq(pred_eval(e, &env), tc->want, "%s", tc->name);
    pred_free(e);
}

/* ---- wrong expressions: what and where --------------------------------------------------- */

struct error_case {
    const char *name, *expr, *want;
};

static const struct error_case error_cases[] = {
    {"empty", "  ", "line 1, column 3: the expression is empty"},
    {"not_a_boolean", "labels[\"env\"]",
     "the expression must be true or false, but it is a string"},
    {"unterminated_string", "labels[\"env\"] == \"dev",
     "line 1, column 18: this string has no closing \""},
    {"unknown_function", "starts_with(labels[\"a\"], \"x\")",
     "line 1, column 1: unknown function 'starts_with'"},
    {"unknown_name", "env == \"x\"", "line 1, column 1: unknown name 'env'"},
    {"unquoted_key", "labels[env] == \"x\"", "line 1, column 8: expected a quoted key"},
    {"missing_bracket", "labels[\"env\" == \"x\"", "line 1, column 14: expected ']' after the key"},
    {"too_few_arguments", "contains(labels[\"a\"])",
     "line 1, column 1: contains takes 2 arguments, found 1"},
    {"too_many_arguments", "contains(labels[\"a\"], \"b\", \"c\")",
     "line 1, column 28: contains takes 2 arguments"},
    {"list_where_string_needed", "contains(labels[\"a\"], user.spec.traits[\"t\"])",
     "line 1, column 23: argument 2 of contains must be a string, found a list"},
    {"boolean_argument", "contains(true, \"a\")",
     "line 1, column 10: argument 1 of contains must be a string or a list, found a boolean"},
    {"pattern_not_literal", "regexp.match(labels[\"a\"], labels[\"b\"])",
     "line 1, column 27: the pattern of regexp.match must be a string literal"},
    {"bad_pattern", "regexp.match(labels[\"a\"], \"(x\")",
     "line 1, column 27: invalid regular expression \"(x\" in regexp.match"},
    {"backreference_refused", "regexp.match(labels[\"a\"], \"(x)\\1\")",
     "backreferences are not supported"},
    {"compare_list", "user.spec.traits[\"t\"] == \"x\"",
     "line 1, column 1: == compares strings, found a list on its left"},
    {"not_of_string", "!labels[\"a\"]", "line 1, column 2: ! needs a boolean, found a string"},
    {"and_of_string", "true && labels[\"a\"]",
     "line 1, column 9: && needs a boolean, found a string"},
    {"trailing_tokens", "true false",
     "line 1, column 6: unexpected 'false', expected &&, || or the end"},
    {"unclosed_paren", "(true", "line 1, column 6: expected ')' to close the '(' at column 1"},
    {"position_on_a_later_line", "true &&\n  nope(\"x\")",
     "line 2, column 3: unknown function 'nope'"},
};

ParameterizedTestParameters(predicate, refuses)
{
    return row_indices(sizeof error_cases / sizeof error_cases[0]);
}

ParameterizedTest(size_t *row, predicate, refuses)
{
    const struct error_case *tc = &error_cases[*row];
    struct pred_expr *e = (struct pred_expr *)1;
    int rv = pred_parse(tc->expr, &e);
    cr_assert_eq(rv, RP_EINVAL, "%s: accepted", tc->name);
    cr_assert_null(e);
    cr_assert(strstr(rp_errmsg(), tc->want) != NULL, "%s: '%s' lacks '%s'", tc->name, rp_errmsg(),
              tc->want);
}

/* ---- limits ------------------------------------------------------------------------------ */

static int parse_dynamic(struct rp_buf *b)
{
    struct pred_expr *e = NULL;
    rp_buf_append(b, "", 1);
    int rv = pred_parse((const char *)b->data, &e);
    pred_free(e);
    return rv;
}

Test(predicate_limits, deep_nesting_is_refused)
{
    struct rp_buf b;
    rp_buf_init(&b);
    for (int i = 0; i < PRED_MAX_DEPTH + 1; i++)
        rp_buf_append_str(&b, "(");
    rp_buf_append_str(&b, "true");
    for (int i = 0; i < PRED_MAX_DEPTH + 1; i++)
        rp_buf_append_str(&b, ")");
    cr_assert_eq(parse_dynamic(&b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "nested more than 32 deep") != NULL, "%s", rp_errmsg());
    rp_buf_reset(&b);
    for (int i = 0; i < 1000; i++) /* a deeper one stops at the same place */
        rp_buf_append_str(&b, "!");
    rp_buf_append_str(&b, "true");
    cr_assert_eq(parse_dynamic(&b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "line 1, column 33: nested more than 32 deep") != NULL, "%s",
              rp_errmsg());
    rp_buf_free(&b);
}

Test(predicate_limits, too_many_nodes_are_refused)
{
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_append_str(&b, "true");
    for (int i = 0; i < PRED_MAX_NODES; i++)
        rp_buf_append_str(&b, "||true");
    cr_assert_eq(parse_dynamic(&b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "more than 256 parts") != NULL, "%s", rp_errmsg());
    rp_buf_free(&b);
}

Test(predicate_limits, long_source_literal_and_pattern_are_refused)
{
    struct rp_buf b;
    rp_buf_init(&b);
    for (int i = 0; i < PRED_MAX_SOURCE; i++)
        rp_buf_append_str(&b, " ");
    rp_buf_append_str(&b, "true");
    cr_assert_eq(parse_dynamic(&b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "longer than 4096 bytes") != NULL, "%s", rp_errmsg());

    rp_buf_reset(&b);
    rp_buf_append_str(&b, "labels[\"a\"] == \"");
    for (int i = 0; i < PRED_MAX_LITERAL + 1; i++)
        rp_buf_append_str(&b, "x");
    rp_buf_append_str(&b, "\"");
    cr_assert_eq(parse_dynamic(&b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "column 16: string longer than 1024 bytes") != NULL, "%s",
              rp_errmsg());
    rp_buf_free(&b);

    regex_t re;
    char why[200], pattern[PRED_MAX_PATTERN + 2];
    memset(pattern, 'a', sizeof pattern - 1);
    pattern[sizeof pattern - 1] = '\0';
    cr_assert_eq(pred_re_compile(pattern, true, &re, why, sizeof why), -1);
    cr_assert_str_eq(why, "longer than 1024 bytes");
}

Test(predicate_limits, counted_repetitions_are_bounded)
{
    regex_t re;
    char why[200];
    cr_assert_eq(pred_re_compile("^(a{999}){999}$", true, &re, why, sizeof why), -1);
    cr_assert(strstr(why, "add up to more than 1000") != NULL, "%s", why);
    cr_assert_eq(pred_re_compile("^x{1001}$", true, &re, why, sizeof why), -1);
    cr_assert_eq(pred_re_compile("^(ab{2,}){3}c{1,5}$", true, &re, why, sizeof why), 0, "%s", why);
    cr_assert_eq(regexec(&re, "abbabbbabbccc", 0, NULL, 0), 0);
    regfree(&re);
}

/* glibc's regcomp copies the tree for each quantifier stacked on another: "^a" and
 * twenty '+' took 2.7 GB (found by fuzz_role). RE2 refuses them; so do we. */
Test(predicate_limits, stacked_quantifiers_are_refused)
{
    regex_t re;
    char why[200];
    static const char *const bad[] = {
        "^a++$", "^a+++++++++++++++++++++$", "a**", "a?*", "a*{2}", "a{2}{3}", "(a)?+"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(pred_re_compile(bad[i], true, &re, why, sizeof why), -1, "%s compiled",
                     bad[i]);
        cr_assert(strstr(why, "nested repetition") != NULL, "%s: %s", bad[i], why);
    }
    /* A quantifier on a group holding one is fine, as are escaped ones. */
    cr_assert_eq(pred_re_compile("^(a+)+$", true, &re, why, sizeof why), 0, "%s", why);
    regfree(&re);
    cr_assert_eq(pred_re_compile("^a\\++$", true, &re, why, sizeof why), 0, "%s", why);
    regfree(&re);
}

/* Patterns that make backtracking engines take exponential time are matched by glibc's
 * (backreference-free) matcher in time that grows with the input, not exponentially. */
Test(predicate_limits, pathological_patterns_match_quickly, .timeout = 20)
{
    static const char *const patterns[] = {"^(a+)+$", "^(a|aa)+$", "^(a*)*b$", "^(.*a){20}$"};
    char input[4097];
    memset(input, 'a', sizeof input - 2);
    input[sizeof input - 2] = 'c';
    input[sizeof input - 1] = '\0';
    for (size_t i = 0; i < sizeof patterns / sizeof patterns[0]; i++) {
        regex_t re;
        char why[200];
        struct timespec t0, t1;
        cr_assert_eq(pred_re_compile(patterns[i], true, &re, why, sizeof why), 0, "%s", why);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        cr_assert_neq(regexec(&re, input, 0, NULL, 0), 0, "%s matched", patterns[i]);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
        cr_log_info("%s on %zu bytes: %.3f s", patterns[i], strlen(input), secs);
        cr_assert(secs < 5.0, "%s took %.1f s", patterns[i], secs);
        regfree(&re);
    }
}

static char big_value[8192];
static const char *big_values[256];

/* Every trait is 256 values of 8 KiB. */
static const char *const *big_trait(const void *ctx, const char *name, size_t *n)
{
    memset(big_value, 'x', sizeof big_value - 1);
    for (size_t i = 0; i < 256; i++)
        big_values[i] = big_value;
    *n = 256;
    return big_values;
}

Test(predicate_limits, evaluation_memory_is_bounded)
{
    /* Upper-casing 2 MiB of trait values builds more than the 1 MiB evaluation may. */
    struct pred_env env = {.trait = big_trait};
    struct pred_expr *e = NULL;
    cr_assert_eq(pred_parse("contains(strings.upper(user.spec.traits[\"t\"]), \"y\")", &e), 0, "%s",
                 rp_errmsg());
    cr_assert_eq(pred_eval(e, &env), RP_ETOOBIG);
    cr_assert(strstr(rp_errmsg(), "more than 1048576 bytes") != NULL, "%s", rp_errmsg());
    pred_free(e);
    /* Reading the same values without copying them is fine. */
    cr_assert_eq(pred_parse("contains(user.spec.traits[\"t\"], \"y\")", &e), 0);
    cr_assert_eq(pred_eval(e, &env), 0);
    pred_free(e);
}
