/* tests/test_rbac.c: auth/rbac.c (roles, access decisions, options, presets) and
 * lib/yaml_mp.c (YAML <-> msgpack with field paths and lines).
 *
 * Roles are written as YAML and go through lib/yaml, lib/yaml_mp and rbac_role_parse,
 * as they do when `tctl create` reads a file. */
#include <criterion/criterion.h>
#include <criterion/parameterized.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/yaml.h"
#include "lib/yaml_mp.h"

#define MAX_ROLES 8

/* A role document: NAME, VERSION, then the spec body indented by two spaces. */
#define ROLE(name, version, body)                                                                  \
    "kind: role\nversion: " version "\nmetadata:\n  name: " name "\nspec:\n" body

/* ---- helpers ----------------------------------------------------------------------- */

/* YAML text -> msgpack bytes in @out (cleared first). */
static void yaml_to_mp(const char *yaml, struct rp_buf *out)
{
    rp_buf_reset(out);
    int rv = rp_ymp_parse_str("t.yaml", yaml, strlen(yaml), out, NULL);
    cr_assert_eq(rv, 0, "YAML did not convert: %s", rp_errmsg());
}

/* Parses every document of @yaml as a role: lib/yaml, then lib/yaml_mp, then
 * rbac_role_parse. Returns the number of roles. */
static size_t load_roles(const char *yaml, struct rbac_role **roles)
{
    struct rp_ynode **docs = NULL;
    size_t n_docs = 0;
    int rv = rp_yaml_parse_all("roles.yaml", yaml, strlen(yaml), &docs, &n_docs);
    cr_assert_eq(rv, 0, "roles YAML: %s", rp_errmsg());
    cr_assert(n_docs >= 1 && n_docs <= MAX_ROLES);
    for (size_t i = 0; i < n_docs; i++) {
        struct rp_buf mp;
        struct rp_ymp_lines lines;
        msgpack_unpacked u;
        rp_buf_init(&mp);
        rp_ymp_lines_init(&lines);
        cr_assert_eq(rp_ymp_from_yaml(docs[i], "roles.yaml", &mp, &lines), 0);
        cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
        rv = rbac_role_parse(&u.data, &roles[i]);
        if (rv != 0)
            rp_ymp_locate(&lines, rv);
        cr_assert_eq(rv, 0, "role %zu does not parse: %s", i, rp_errmsg());
        msgpack_unpacked_destroy(&u);
        rp_ymp_lines_free(&lines);
        rp_buf_free(&mp);
    }
    rp_yaml_docs_free(docs, n_docs);
    return n_docs;
}

struct loaded {
    struct rbac_role *roles[MAX_ROLES];
    size_t n;
    struct rbac_set *set;
};

/* Roles from @roles_yaml with the traits of @traits_yaml (a YAML map, or NULL). */
static void load_set(struct loaded *l, const char *roles_yaml, const char *traits_yaml)
{
    memset(l, 0, sizeof(*l));
    l->n = load_roles(roles_yaml, l->roles);
    int rv;
    if (traits_yaml == NULL) {
        rv = rbac_set_new(l->roles, l->n, NULL, &l->set);
    } else {
        struct rp_buf tb;
        msgpack_unpacked u;
        rp_buf_init(&tb);
        yaml_to_mp(traits_yaml, &tb);
        cr_assert_eq(rp_mp_parse(tb.data, tb.len, &u), 0);
        rv = rbac_set_new(l->roles, l->n, &u.data, &l->set);
        msgpack_unpacked_destroy(&u);
        rp_buf_free(&tb);
    }
    cr_assert_eq(rv, 0, "rbac_set_new: %s", rp_errmsg());
}

static void unload(struct loaded *l)
{
    rbac_set_free(l->set);
    for (size_t i = 0; i < l->n; i++)
        rbac_role_free(l->roles[i]);
}

/* "env=prod,team=web" into @labels (pointing into @buf); returns the count. */
static size_t parse_labels(const char *spec, char *buf, size_t buflen, struct rbac_label *labels)
{
    size_t n = 0;
    if (spec == NULL || spec[0] == '\0')
        return 0;
    snprintf(buf, buflen, "%s", spec);
    for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok != NULL;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        cr_assert_not_null(eq, "label '%s' lacks '='", tok);
        *eq = '\0';
        labels[n].name = tok;
        labels[n].value = eq + 1;
        n++;
    }
    return n;
}

/* ---- roles used by the tables ---------------------------------------------------------- */

#define R_BASIC                                                                                    \
    ROLE("basic", "v7", "  allow:\n    logins: [root, ubuntu]\n    node_labels: {env: test}\n")
#define R_DENY_SAME                                                                                \
    ROLE("r", "v7",                                                                                \
         "  allow:\n    logins: [root, ubuntu]\n    node_labels: {'*': '*'}\n"                     \
         "  deny:\n    logins: [root]\n")
#define R_ALLOW_ALL                                                                                \
    ROLE("a", "v7", "  allow:\n    logins: [root, ubuntu]\n    node_labels: {'*': '*'}\n")
#define R_DENY_ROOT ROLE("b", "v7", "  deny:\n    logins: [root]\n")
#define R_DENY_PROD ROLE("b", "v7", "  deny:\n    node_labels: {env: prod}\n")
#define R_PAIRING                                                                                  \
    ROLE("dev", "v7", "  allow:\n    logins: [root]\n    node_labels: {env: [test, stage]}\n")     \
    "---\n" ROLE("prod", "v7", "  allow:\n    logins: [ubuntu]\n    node_labels: {env: prod}\n")
#define R_LABELS(sel) ROLE("lbl", "v7", "  allow:\n    logins: [root]\n    node_labels: " sel "\n")
#define R_LOGINS(list)                                                                             \
    ROLE("tpl", "v7", "  allow:\n    logins: " list "\n    node_labels: {'*': '*'}\n")
#define R_DENY_LABELS(sel)                                                                         \
    R_ALLOW_ALL "---\n" ROLE("d", "v7", "  deny:\n    node_labels: " sel "\n")

#define R_EXPR(expr)                                                                               \
    ROLE("ex", "v7", "  allow:\n    logins: [root]\n    node_labels_expression: '" expr "'\n")
#define R_LABELS_AND_EXPR                                                                          \
    ROLE("both", "v7",                                                                             \
         "  allow:\n    logins: [root]\n    node_labels: {env: staging}\n"                         \
         "    node_labels_expression: 'labels[\"team\"] == \"web\"'\n")
#define R_DENY_EXPR                                                                                \
    ROLE("dx", "v7", "  deny:\n    node_labels_expression: |\n      labels[\"env\"] == \"prod\"\n")
#define R_FC(option) ROLE("fc", "v7", "  options:\n    " option "\n")
#define R_JOIN(kinds)                                                                              \
    ROLE("fc", "v5",                                                                               \
         "  allow:\n    require_session_join:\n    - {name: p, filter: 'true', kinds: " kinds      \
         ", modes: [moderator], count: 1}\n")

struct ssh_case {
    const char *name;
    const char *roles;
    const char *traits;
    const char *login;
    const char *labels;
    int allow;
    const char *why; /* substring of the reason, for denies */
};

static const struct ssh_case ssh_cases[] = {
    /* one role */
    {"basic_allows_listed_login_on_matching_node", R_BASIC, NULL, "root", "env=test", 1, NULL},
    {"basic_allows_second_login", R_BASIC, NULL, "ubuntu", "env=test", 1, NULL},
    {"basic_denies_other_label_value", R_BASIC, NULL, "root", "env=prod", 0,
     "no role allows login 'root' on a node with labels env=prod"},
    {"basic_denies_unlisted_login", R_BASIC, NULL, "admin", "env=test", 0,
     "no role allows login 'admin'"},
    /* deny over allow */
    {"deny_login_wins_in_same_role", R_DENY_SAME, NULL, "root", "env=test", 0,
     "role 'r' denies login 'root' (deny.logins)"},
    {"other_login_of_same_role_still_allowed", R_DENY_SAME, NULL, "ubuntu", "env=test", 1, NULL},
    {"deny_login_wins_across_roles", R_ALLOW_ALL "---\n" R_DENY_ROOT, NULL, "root", "env=test", 0,
     "role 'b' denies login 'root'"},
    {"deny_labels_win_across_roles", R_ALLOW_ALL "---\n" R_DENY_PROD, NULL, "ubuntu", "env=prod", 0,
     "role 'b' denies access to nodes with labels env=prod (deny.node_labels)"},
    {"deny_labels_leave_other_nodes", R_ALLOW_ALL "---\n" R_DENY_PROD, NULL, "ubuntu", "env=test",
     1, NULL},
    /* logins and labels pair up per role */
    {"pairing_root_on_prod_denied", R_PAIRING, NULL, "root", "env=prod", 0,
     "(role 'dev' allows 'root' but its node_labels do not match)"},
    {"pairing_ubuntu_on_prod_allowed", R_PAIRING, NULL, "ubuntu", "env=prod", 1, NULL},
    {"pairing_root_on_test_allowed", R_PAIRING, NULL, "root", "env=test", 1, NULL},
    {"pairing_ubuntu_on_test_denied", R_PAIRING, NULL, "ubuntu", "env=test", 0,
     "(role 'prod' allows 'ubuntu' but its node_labels do not match)"},
    {"pairing_root_on_stage_allowed", R_PAIRING, NULL, "root", "env=stage", 1, NULL},
    {"union_of_roles_for_same_login",
     ROLE("a", "v7", "  allow:\n    logins: [root]\n    node_labels: {env: test}\n") "---\n" ROLE(
         "b", "v7", "  allow:\n    logins: [root]\n    node_labels: {env: prod}\n"),
     NULL, "root", "env=prod", 1, NULL},
    /* wildcards, globs, regexes, lists */
    {"wildcard_pair_matches_node_without_labels", R_LABELS("{'*': '*'}"), NULL, "root", "", 1,
     NULL},
    {"wildcard_value_matches_any_value", R_LABELS("{env: '*'}"), NULL, "root", "env=whatever", 1,
     NULL},
    {"wildcard_value_needs_the_key", R_LABELS("{env: '*'}"), NULL, "root", "team=web", 0,
     "no role allows"},
    {"glob_suffix_matches", R_LABELS("{region: 'us-west-*'}"), NULL, "root", "region=us-west-2", 1,
     NULL},
    {"glob_suffix_rejects", R_LABELS("{region: 'us-west-*'}"), NULL, "root", "region=eu-west-1", 0,
     "no role allows"},
    {"glob_middle_matches", R_LABELS("{host: 'web-*-prod'}"), NULL, "root", "host=web-01-prod", 1,
     NULL},
    {"glob_middle_rejects", R_LABELS("{host: 'web-*-prod'}"), NULL, "root", "host=web-01-dev", 0,
     "no role allows"},
    {"glob_dot_is_literal", R_LABELS("{host: 'a.*'}"), NULL, "root", "host=abc", 0,
     "no role allows"},
    {"regex_alternation_matches", R_LABELS("{region: '^us-(west|east)-[0-9]+$'}"), NULL, "root",
     "region=us-east-1", 1, NULL},
    {"regex_alternation_rejects", R_LABELS("{region: '^us-(west|east)-[0-9]+$'}"), NULL, "root",
     "region=us-central-1", 0, "no role allows"},
    {"regex_digit_shorthand_matches", R_LABELS("{host: '^db\\d+$'}"), NULL, "root", "host=db12", 1,
     NULL},
    {"regex_digit_shorthand_rejects", R_LABELS("{host: '^db\\d+$'}"), NULL, "root", "host=dbx", 0,
     "no role allows"},
    {"regex_unanchored_alternation_like_re2", R_LABELS("{reg: '^us-west-1|eu-central-1$'}"), NULL,
     "root", "reg=xeu-central-1", 1, NULL},
    {"label_list_is_or", R_LABELS("{region: [us-west-1, eu-central-1]}"), NULL, "root",
     "region=eu-central-1", 1, NULL},
    {"label_list_rejects_others", R_LABELS("{region: [us-west-1, eu-central-1]}"), NULL, "root",
     "region=ap-south-1", 0, "no role allows"},
    {"all_keys_must_match", R_LABELS("{env: prod, team: web}"), NULL, "root", "env=prod,team=db", 0,
     "no role allows"},
    {"all_keys_matching_allows", R_LABELS("{env: prod, team: web}"), NULL, "root",
     "team=web,env=prod", 1, NULL},
    {"missing_label_denies", R_LABELS("{env: prod}"), NULL, "root", "team=web", 0,
     "on a node with labels team=web"},
    {"label_keys_are_case_sensitive", R_LABELS("{env: prod}"), NULL, "root", "Env=prod", 0,
     "no role allows"},
    /* version defaults for node_labels */
    {"v7_without_node_labels_allows_no_node", ROLE("v7r", "v7", "  allow:\n    logins: [root]\n"),
     NULL, "root", "env=test", 0, "(role 'v7r' allows 'root' but its node_labels do not match)"},
    {"v4_without_node_labels_allows_no_node", ROLE("v4r", "v4", "  allow:\n    logins: [root]\n"),
     NULL, "root", "", 0, "no role allows"},
    {"v3_with_logins_defaults_to_every_node", ROLE("v3r", "v3", "  allow:\n    logins: [root]\n"),
     NULL, "root", "env=anything", 1, NULL},
    {"v3_explicit_empty_node_labels_stays_empty",
     ROLE("v3e", "v3", "  allow:\n    logins: [root]\n    node_labels: {}\n"), NULL, "root",
     "env=test", 0, "no role allows"},
    /* traits in logins */
    {"internal_logins_expand_to_every_value", R_LOGINS("['{{internal.logins}}']"),
     "{logins: [alice, bob]}", "bob", "", 1, NULL},
    {"missing_trait_drops_the_login", R_LOGINS("['{{internal.logins}}']"), "{}", "alice", "", 0,
     "no role allows login 'alice'"},
    {"external_trait_expands", R_LOGINS("['{{external.unix_user}}']"), "{unix_user: [carol]}",
     "carol", "", 1, NULL},
    {"external_bracket_form_expands", R_LOGINS("['{{external[\"unix.user\"]}}']"),
     "{unix.user: [dave]}", "dave", "", 1, NULL},
    {"template_keeps_prefix", R_LOGINS("['adm-{{internal.logins}}']"), "{logins: [alice]}",
     "adm-alice", "", 1, NULL},
    {"template_without_prefix_does_not_match", R_LOGINS("['adm-{{internal.logins}}']"),
     "{logins: [alice]}", "alice", "", 0, "no role allows"},
    {"email_local_takes_the_local_part", R_LOGINS("['{{email.local(external.email)}}']"),
     "{email: [alice@example.com]}", "alice", "", 1, NULL},
    {"regexp_replace_rewrites_matches",
     R_LOGINS("['{{regexp.replace(external.groups, \"^dev-(.*)$\", \"$1\")}}']"),
     "{groups: [dev-alice, ops-bob]}", "alice", "", 1, NULL},
    {"regexp_replace_drops_non_matching",
     R_LOGINS("['{{regexp.replace(external.groups, \"^dev-(.*)$\", \"$1\")}}']"),
     "{groups: [dev-alice, ops-bob]}", "ops-bob", "", 0, "no role allows"},
    {"invalid_expanded_login_is_dropped", R_LOGINS("['{{internal.logins}}']"),
     "{logins: ['-foo', ok]}", "-foo", "", 0, "no role allows"},
    {"valid_sibling_of_invalid_login_kept", R_LOGINS("['{{internal.logins}}']"),
     "{logins: ['-foo', ok]}", "ok", "", 1, NULL},
    /* traits in label values */
    {"label_value_from_trait", R_LABELS("{env: '{{external.env}}'}"), "{env: [staging, qa]}",
     "root", "env=qa", 1, NULL},
    {"label_value_from_missing_trait_matches_nothing", R_LABELS("{env: '{{external.env}}'}"), "{}",
     "root", "env=qa", 0, "no role allows"},
    {"label_value_from_internal_trait_with_glob", R_LABELS("{team: '{{internal.logins}}-*'}"),
     "{logins: [web]}", "root", "team=web-frontend", 1, NULL},
    /* deny selectors */
    {"deny_from_trait",
     R_ALLOW_ALL "---\n" ROLE("d", "v7", "  deny:\n    logins: ['{{external.blocked}}']\n"),
     "{blocked: [root]}", "root", "", 0, "role 'd' denies login 'root'"},
    {"deny_matches_on_any_one_label", R_DENY_LABELS("{env: prod, team: red}"), NULL, "ubuntu",
     "env=staging,team=red", 0, "role 'd' denies access to nodes"},
    {"deny_wildcard_pair_denies_everything", R_DENY_LABELS("{'*': '*'}"), NULL, "ubuntu", "", 0,
     "role 'd' denies access to nodes with labels (none)"},
    {"deny_regex", R_DENY_LABELS("{env: '^prod-.*$'}"), NULL, "root", "env=prod-eu", 0,
     "role 'd' denies"},
    {"deny_regex_leaves_others", R_DENY_LABELS("{env: '^prod-.*$'}"), NULL, "root", "env=staging",
     1, NULL},
    {"deny_from_label_trait", R_DENY_LABELS("{env: '{{external.forbidden}}'}"),
     "{forbidden: [prod]}", "root", "env=prod", 0, "role 'd' denies"},
    /* node_labels_expression */
    {"expression_allows_matching_node", R_EXPR("labels[\"env\"] == \"staging\""), NULL, "root",
     "env=staging", 1, NULL},
    {"expression_refuses_other_node", R_EXPR("labels[\"env\"] == \"staging\""), NULL, "root",
     "env=prod", 0, "but its node_labels and node_labels_expression do not match"},
    {"expression_missing_label_reads_empty", R_EXPR("labels[\"env\"] != \"prod\""), NULL, "root",
     "", 1, NULL},
    {"expression_reads_traits", R_EXPR("contains(user.spec.traits[\"teams\"], labels[\"team\"])"),
     "{teams: [web, db]}", "root", "team=web", 1, NULL},
    {"expression_trait_without_the_value",
     R_EXPR("contains(user.spec.traits[\"teams\"], labels[\"team\"])"), "{teams: [web, db]}",
     "root", "team=ops", 0, "no role allows login 'root'"},
    {"expression_missing_trait_matches_nothing",
     R_EXPR("contains(user.spec.traits[\"teams\"], labels[\"team\"])"), NULL, "root", "team=", 0,
     "no role allows"},
    {"expression_regexp_match_is_unanchored",
     R_EXPR("regexp.match(labels[\"host\"], \"db-[0-9]+\")"), NULL, "root", "host=eu-db-12", 1,
     NULL},
    {"expression_regexp_match_refuses", R_EXPR("regexp.match(labels[\"host\"], \"db-[0-9]+\")"),
     NULL, "root", "host=web-1", 0, "no role allows"},
    {"expression_and_labels_both_admit", R_LABELS_AND_EXPR, NULL, "root", "env=staging,team=web", 1,
     NULL},
    {"expression_and_labels_expression_refuses", R_LABELS_AND_EXPR, NULL, "root",
     "env=staging,team=db", 0, "no role allows"},
    {"expression_and_labels_labels_refuse", R_LABELS_AND_EXPR, NULL, "root", "env=prod,team=web", 0,
     "no role allows"},
    {"deny_expression_denies", R_ALLOW_ALL "---\n" R_DENY_EXPR, NULL, "ubuntu", "env=prod,team=web",
     0,
     "role 'dx' denies access to nodes with labels env=prod, team=web "
     "(deny.node_labels_expression)"},
    {"deny_expression_leaves_others", R_ALLOW_ALL "---\n" R_DENY_EXPR, NULL, "ubuntu", "env=test",
     1, NULL},
    /* fields Raftport does not enforce yet fail closed, for the whole set */
    {"device_trust_required_fails_closed", R_ALLOW_ALL "---\n" R_FC("device_trust_mode: required"),
     NULL, "root", "env=test", 0,
     "role 'fc' sets spec.options.device_trust_mode, which restricts SSH access in a way "
     "Raftport does not enforce yet"},
    {"device_trust_optional_is_fine", R_ALLOW_ALL "---\n" R_FC("device_trust_mode: optional"), NULL,
     "root", "env=test", 1, NULL},
    {"session_mfa_fails_closed", R_FC("require_session_mfa: yes") "---\n" R_ALLOW_ALL, NULL, "root",
     "", 0, "spec.options.require_session_mfa"},
    {"session_mfa_no_is_fine", R_FC("require_session_mfa: no") "---\n" R_ALLOW_ALL, NULL, "root",
     "", 1, NULL},
    {"pin_source_ip_fails_closed", R_ALLOW_ALL "---\n" R_FC("pin_source_ip: true"), NULL, "root",
     "", 0, "spec.options.pin_source_ip"},
    {"unknown_option_fails_closed", R_ALLOW_ALL "---\n" R_FC("session_banner: {text: hi}"), NULL,
     "root", "", 0, "spec.options.session_banner"},
    {"require_session_join_for_ssh_fails_closed", R_ALLOW_ALL "---\n" R_JOIN("[ssh]"), NULL, "root",
     "", 0, "spec.allow.require_session_join"},
    {"require_session_join_without_kinds_fails_closed", R_ALLOW_ALL "---\n" R_JOIN("[]"), NULL,
     "root", "", 0, "spec.allow.require_session_join"},
    {"require_session_join_for_k8s_only_is_fine", R_ALLOW_ALL "---\n" R_JOIN("[k8s]"), NULL, "root",
     "", 1, NULL},
};

/* Criterion runs each test in a fresh process image (BoxFort), where pointers into the
 * parent's static data are not valid: the parameter is the row's index. */
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

ParameterizedTestParameters(rbac_ssh, decision)
{
    return row_indices(sizeof ssh_cases / sizeof ssh_cases[0]);
}

ParameterizedTest(size_t *row, rbac_ssh, decision)
{
    const struct ssh_case *tc = &ssh_cases[*row];
    struct loaded l;
    struct rbac_label labels[8];
    char buf[256], why[512] = "";
    load_set(&l, tc->roles, tc->traits);
    size_t n = parse_labels(tc->labels, buf, sizeof buf, labels);
    int rv = rbac_check_ssh(l.set, tc->login, labels, n, why, sizeof why);
    if (tc->allow) {
        cr_assert_eq(rv, 0, "%s: expected allow, got %d: %s", tc->name, rv, why);
    } else {
        cr_assert_eq(rv, RP_EDENIED, "%s: expected deny, got %d", tc->name, rv);
        cr_assert(strstr(why, tc->why) != NULL, "%s: reason '%s' lacks '%s'", tc->name, why,
                  tc->why);
    }
    unload(&l);
}

/* ---- rules ---------------------------------------------------------------------------------- */

#define R_RULES(name, body) ROLE(name, "v7", body)

struct rule_case {
    const char *name;
    const char *roles; /* NULL: the presets named in .preset */
    const char *preset;
    const char *resource, *verb;
    int allow;
    const char *why;
};

static const struct rule_case rule_cases[] = {
    {"listed_resource_and_verb_allowed",
     R_RULES("r", "  allow:\n    rules:\n    - resources: [role]\n      verbs: [read]\n"), NULL,
     "role", "read", 1, NULL},
    {"unlisted_verb_denied",
     R_RULES("r", "  allow:\n    rules:\n    - resources: [role]\n      verbs: [read]\n"), NULL,
     "role", "delete", 0, "no role allows delete on role"},
    {"wildcard_resource",
     R_RULES("r", "  allow:\n    rules:\n    - resources: ['*']\n      verbs: [list]\n"), NULL,
     "user", "list", 1, NULL},
    {"wildcard_verb",
     R_RULES("r", "  allow:\n    rules:\n    - resources: [token]\n      verbs: ['*']\n"), NULL,
     "token", "delete", 1, NULL},
    {"deny_rule_wins_in_same_role",
     R_RULES("r", "  allow:\n    rules:\n    - resources: ['*']\n      verbs: ['*']\n"
                  "  deny:\n    rules:\n    - resources: [role]\n      verbs: [delete]\n"),
     NULL, "role", "delete", 0, "role 'r' denies delete on role (deny.rules[0])"},
    {"deny_rule_leaves_other_verbs",
     R_RULES("r", "  allow:\n    rules:\n    - resources: ['*']\n      verbs: ['*']\n"
                  "  deny:\n    rules:\n    - resources: [role]\n      verbs: [delete]\n"),
     NULL, "role", "read", 1, NULL},
    {"deny_wildcard_verbs_across_roles",
     R_RULES("a", "  allow:\n    rules:\n    - resources: [token]\n      verbs: "
                  "['*']\n") "---\n" R_RULES("b", "  deny:\n    rules:\n    - resources: [token]\n "
                                                  "     verbs: ['*']\n"),
     NULL, "token", "create", 0, "role 'b' denies create on token"},
    {"deny_wildcard_resource",
     R_RULES("a", "  allow:\n    rules:\n    - resources: [user]\n      verbs: "
                  "['*']\n") "---\n" R_RULES("b", "  deny:\n    rules:\n    - resources: ['*']\n   "
                                                  "   verbs: [delete]\n"),
     NULL, "user", "delete", 0, "role 'b' denies delete on user"},
    {"no_rules_deny", R_RULES("r", "  allow:\n    logins: [root]\n"), NULL, "role", "read", 0,
     "no role allows read on role"},
    {"where_condition_is_not_unconditional", NULL, "access", "session", "read", 0,
     "role 'access' allows read on session only where "
     "contains(session.participants, "
     "user.metadata.name)"},
    {"preset_access_reads_events", NULL, "access", "event", "list", 1, NULL},
    {"preset_editor_updates_roles", NULL, "editor", "role", "update", 1, NULL},
    {"preset_editor_cannot_read_sessions", NULL, "editor", "session", "read", 0,
     "no role allows read on session"},
    {"preset_auditor_reads_sessions", NULL, "auditor", "session", "read", 1, NULL},
    {"preset_auditor_cannot_delete_sessions", NULL, "auditor", "session", "delete", 0,
     "no role allows delete on session"},
};

ParameterizedTestParameters(rbac_rule, decision)
{
    return row_indices(sizeof rule_cases / sizeof rule_cases[0]);
}

/* Loads the preset @name through its YAML form. */
static struct rbac_role *load_preset(const char *name)
{
    struct rp_buf mp;
    msgpack_unpacked u;
    struct rbac_role *role = NULL;
    rp_buf_init(&mp);
    cr_assert_eq(rbac_preset_pack(name, &mp), 0, "preset %s: %s", name, rp_errmsg());
    cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
    cr_assert_eq(rbac_role_parse(&u.data, &role), 0, "preset %s: %s", name, rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
    return role;
}

ParameterizedTest(size_t *row, rbac_rule, decision)
{
    const struct rule_case *tc = &rule_cases[*row];
    struct loaded l;
    char why[512] = "";
    if (tc->roles != NULL) {
        load_set(&l, tc->roles, NULL);
    } else {
        memset(&l, 0, sizeof(l));
        l.roles[0] = load_preset(tc->preset);
        l.n = 1;
        cr_assert_eq(rbac_set_new(l.roles, 1, NULL, &l.set), 0);
    }
    int rv = rbac_check_rule(l.set, tc->resource, tc->verb, why, sizeof why);
    if (tc->allow) {
        cr_assert_eq(rv, 0, "%s: expected allow, got %d: %s", tc->name, rv, why);
    } else {
        cr_assert_eq(rv, RP_EDENIED, "%s: expected deny, got %d", tc->name, rv);
        cr_assert(strstr(why, tc->why) != NULL, "%s: reason '%s' lacks '%s'", tc->name, why,
                  tc->why);
    }
    unload(&l);
}

/* ---- options -------------------------------------------------------------------------------- */

static void options_of(const char *roles, struct rbac_options *o)
{
    struct loaded l;
    load_set(&l, roles, NULL);
    rbac_options(l.set, o);
    unload(&l);
}

#define R_OPT(name, opts) ROLE(name, "v7", "  options:\n" opts)

Test(rbac_options, smallest_max_session_ttl_wins)
{
    struct rbac_options o;
    options_of(
        R_OPT("a", "    max_session_ttl: 8h\n") "---\n" R_OPT(
            "b", "    max_session_ttl: 1h30m\n") "---\n" R_OPT("c", "    forward_agent: true\n"),
        &o);
    cr_assert_eq(o.max_session_ttl_ms, 90ull * 60 * 1000);
}

Test(rbac_options, max_session_ttl_defaults_to_12h)
{
    struct rbac_options o;
    options_of(
        R_OPT("a", "    forward_agent: true\n") "---\n" R_OPT("b", "    ssh_file_copy: true\n"),
        &o);
    cr_assert_eq(o.max_session_ttl_ms, 12ull * 3600 * 1000);
    cr_assert_eq(o.max_session_ttl_ms, RBAC_DEFAULT_SESSION_TTL_MS);
}

Test(rbac_options, one_long_ttl_is_kept)
{
    struct rbac_options o;
    options_of(R_OPT("a", "    max_session_ttl: 30h\n"), &o);
    cr_assert_eq(o.max_session_ttl_ms, 30ull * 3600 * 1000);
}

Test(rbac_options, go_duration_forms)
{
    struct rbac_options o;
    options_of(R_OPT("a", "    max_session_ttl: 1.5h\n"), &o);
    cr_assert_eq(o.max_session_ttl_ms, 90ull * 60 * 1000);
    options_of(R_OPT("a", "    max_session_ttl: 90s\n"), &o);
    cr_assert_eq(o.max_session_ttl_ms, 90ull * 1000);
    options_of(R_OPT("a", "    max_session_ttl: 1h0m30s\n"), &o);
    cr_assert_eq(o.max_session_ttl_ms, 3630ull * 1000);
    options_of(R_OPT("a", "    max_session_ttl: '0'\n"), &o); /* 0: unset */
    cr_assert_eq(o.max_session_ttl_ms, RBAC_DEFAULT_SESSION_TTL_MS);
}

Test(rbac_options, forward_agent_is_or)
{
    struct rbac_options o;
    options_of(
        R_OPT("a", "    forward_agent: true\n") "---\n" R_OPT("b", "    forward_agent: false\n"),
        &o);
    cr_assert(o.forward_agent);
    options_of(R_OPT("a", "    max_sessions: 2\n") "---\n" R_OPT("b", "    max_sessions: 3\n"), &o);
    cr_assert(!o.forward_agent, "forward_agent defaults to false");
}

Test(rbac_options, port_forwarding_is_or_and_defaults_to_true)
{
    struct rbac_options o;
    options_of(
        R_OPT("a", "    port_forwarding: false\n") "---\n" R_OPT("b", "    forward_agent: false\n"),
        &o);
    cr_assert(o.port_forwarding, "a role that does not set port_forwarding allows it");
    options_of(
        R_OPT("a", "    port_forwarding: false\n") "---\n" R_OPT("b", "    port_forwarding: no\n"),
        &o);
    cr_assert(!o.port_forwarding, "every role says no");
}

Test(rbac_options, ssh_file_copy_is_and)
{
    struct rbac_options o;
    options_of(
        R_OPT("a", "    ssh_file_copy: true\n") "---\n" R_OPT("b", "    ssh_file_copy: false\n"),
        &o);
    cr_assert(!o.ssh_file_copy);
    options_of(R_OPT("a", "    forward_agent: true\n"), &o);
    cr_assert(o.ssh_file_copy, "defaults to true");
}

Test(rbac_options, most_restrictive_of_the_rest)
{
    struct rbac_options o;
    options_of(
        R_OPT(
            "a",
            "    client_idle_timeout: 1h\n"
            "    max_sessions: 10\n"
            "    disconnect_expired_cert: no\n"
            "    record_session: {default: best_effort, desktop: false}\n"
            "    lock: best_effort\n"
            "    require_session_mfa: 'yes'\n"
            "    enhanced_recording: [disk]\n"
            "    max_connections: 5\n") "---\n" R_OPT("b",
                                                      "    client_idle_timeout: 30m\n"
                                                      "    max_sessions: 3\n"
                                                      "    disconnect_expired_cert: yes\n"
                                                      "    record_session: {ssh: strict}\n"
                                                      "    lock: strict\n"
                                                      "    require_session_mfa: "
                                                      "hardware_key_touch\n"
                                                      "    permit_x11_forwarding: true\n"
                                                      "    pin_source_ip: true\n") "---\n" R_OPT("c",
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 "c"
                                                                                                 "l"
                                                                                                 "i"
                                                                                                 "e"
                                                                                                 "n"
                                                                                                 "t"
                                                                                                 "_"
                                                                                                 "i"
                                                                                                 "d"
                                                                                                 "l"
                                                                                                 "e"
                                                                                                 "_"
                                                                                                 "t"
                                                                                                 "i"
                                                                                                 "m"
                                                                                                 "e"
                                                                                                 "o"
                                                                                                 "u"
                                                                                                 "t"
                                                                                                 ":"
                                                                                                 " "
                                                                                                 "n"
                                                                                                 "e"
                                                                                                 "v"
                                                                                                 "e"
                                                                                                 "r"
                                                                                                 "\n"
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 " "
                                                                                                 "m"
                                                                                                 "a"
                                                                                                 "x"
                                                                                                 "_"
                                                                                                 "s"
                                                                                                 "e"
                                                                                                 "s"
                                                                                                 "s"
                                                                                                 "i"
                                                                                                 "o"
                                                                                                 "n"
                                                                                                 "s"
                                                                                                 ":"
                                                                                                 " "
                                                                                                 "0"
                                                                                                 "\n"),
        &o);
    cr_assert_eq(o.client_idle_timeout_ms, 30ull * 60 * 1000);
    cr_assert_eq(o.max_sessions, 3);
    cr_assert_eq(o.max_connections, 5);
    cr_assert(o.disconnect_expired_cert);
    cr_assert_eq(o.record_ssh, RBAC_RECORD_STRICT);
    cr_assert(o.record_desktop, "role b records desktops by default");
    cr_assert_eq(o.lock, RBAC_LOCK_STRICT);
    cr_assert_eq(o.require_session_mfa, RBAC_MFA_HARDWARE_KEY_TOUCH);
    cr_assert(o.permit_x11_forwarding);
    cr_assert(o.pin_source_ip);
    cr_assert_eq(o.enhanced_recording,
                 RBAC_ENHANCED_DISK | RBAC_ENHANCED_COMMAND | RBAC_ENHANCED_NETWORK);
}

Test(rbac_options, defaults_of_one_bare_role)
{
    struct rbac_options o;
    options_of(ROLE("bare", "v7", "  allow: {}\n"), &o);
    cr_assert_eq(o.max_session_ttl_ms, RBAC_DEFAULT_SESSION_TTL_MS);
    cr_assert(!o.forward_agent);
    cr_assert(o.port_forwarding);
    cr_assert(o.ssh_file_copy);
    cr_assert(!o.disconnect_expired_cert);
    cr_assert_eq(o.client_idle_timeout_ms, 0);
    cr_assert_eq(o.max_sessions, 0);
    cr_assert_eq(o.record_ssh, RBAC_RECORD_BEST_EFFORT);
    cr_assert_eq(o.lock, RBAC_LOCK_UNSET);
    cr_assert_eq(o.enhanced_recording, RBAC_ENHANCED_COMMAND | RBAC_ENHANCED_NETWORK);
}

Test(rbac_options, record_session_ssh_input_is_ours_off_by_default_and_any_role_turns_it_on)
{
    struct rbac_options o;
    options_of(ROLE("bare", "v7", "  allow: {}\n"), &o);
    cr_assert(!o.record_ssh_input);
    options_of(R_OPT("a", "    record_session: {ssh: strict}\n") "---\n" R_OPT(
                   "b", "    record_session:\n      ssh_input: true\n"),
               &o);
    cr_assert(o.record_ssh_input, "one role asking for input records it");
    cr_assert_eq(o.record_ssh, RBAC_RECORD_STRICT);
    /* A known field: it does not make the role fail closed, and it reads back. */
    struct rbac_role *role = NULL;
    const char *yaml = "kind: role\nversion: v7\nmetadata:\n  name: keys\nspec:\n  options:\n"
                       "    record_session:\n      ssh_input: yes\n  allow:\n    logins: [root]\n";
    cr_assert_eq(rbac_role_parse_yaml("t.yaml", yaml, strlen(yaml), &role), 0, "%s", rp_errmsg());
    const char *fields[4];
    cr_assert_eq(rbac_role_unenforced(role, fields, 4), 0);
    struct rp_buf y;
    rp_buf_init(&y);
    cr_assert_eq(rbac_role_to_yaml(role, &y), 0);
    rp_buf_append(&y, "", 1);
    cr_assert(strstr((char *)y.data, "      ssh_input: true\n") != NULL, "%s", (char *)y.data);
    rp_buf_free(&y);
    rbac_role_free(role);
    const char *bad = "kind: role\nversion: v7\nmetadata:\n  name: keys\nspec:\n  options:\n"
                      "    record_session:\n      ssh_input: sometimes\n";
    cr_assert_neq(rbac_role_parse_yaml("t.yaml", bad, strlen(bad), &role), 0);
    cr_assert(strstr(rp_errmsg(), "record_session.ssh_input") != NULL, "%s", rp_errmsg());
}

/* ---- certificate logins ------------------------------------------------------------------- */

Test(rbac_logins, union_of_allowed_minus_denied_after_traits)
{
    struct loaded l;
    char **logins;
    size_t n;
    load_set(
        &l,
        ROLE(
            "a", "v7",
            "  allow:\n    logins: [root, '{{internal.logins}}', ubuntu]\n") "---\n" ROLE("b", "v7",
                                                                                          "  "
                                                                                          "allow:"
                                                                                          "\n    "
                                                                                          "logins: "
                                                                                          "[ubuntu,"
                                                                                          " '{{"
                                                                                          "external"
                                                                                          ".extra}}"
                                                                                          "']\n"
                                                                                          "  "
                                                                                          "deny:\n "
                                                                                          "   "
                                                                                          "logins: "
                                                                                          "[root]"
                                                                                          "\n"),
        "{logins: [alice, '-bad'], extra: [bob, alice]}");
    cr_assert_eq(rbac_logins(l.set, &logins, &n), 0);
    /* a: root, alice ('-bad' dropped), ubuntu; b: ubuntu, bob, alice; b denies root. */
    cr_assert_eq(n, 3, "got %zu logins", n);
    cr_assert_str_eq(logins[0], "alice");
    cr_assert_str_eq(logins[1], "ubuntu");
    cr_assert_str_eq(logins[2], "bob");
    rbac_logins_free(logins, n);
    unload(&l);
}

Test(rbac_logins, none_gives_empty_list)
{
    struct loaded l;
    char **logins = (char **)1;
    size_t n = 9;
    load_set(&l, ROLE("a", "v7", "  allow:\n    logins: ['{{internal.logins}}']\n"), NULL);
    cr_assert_eq(rbac_logins(l.set, &logins, &n), 0);
    cr_assert_eq(n, 0);
    cr_assert_null(logins);
    unload(&l);
}

/* ---- parse errors: field path, and through lib/yaml_mp the line -------------------------- */

/* Parses @yaml as a role from "t.yaml"; expects RP_EINVAL and a message that starts with
 * "t.yaml:LINE: PATH: " and contains @what. */
static void expect_error(const char *yaml, int line, const char *path, const char *what)
{
    struct rbac_role *role = (struct rbac_role *)1;
    int rv = rbac_role_parse_yaml("t.yaml", yaml, strlen(yaml), &role);
    cr_assert_eq(rv, RP_EINVAL, "expected RP_EINVAL, got %d for:\n%s", rv, yaml);
    cr_assert_null(role);
    char prefix[256];
    snprintf(prefix, sizeof prefix, "t.yaml:%d: %s: ", line, path);
    const char *msg = rp_errmsg();
    cr_assert(strncmp(msg, prefix, strlen(prefix)) == 0, "message '%s' lacks prefix '%s'", msg,
              prefix);
    cr_assert(strstr(msg, what) != NULL, "message '%s' lacks '%s'", msg, what);
}

Test(rbac_parse, unknown_version_is_refused)
{
    expect_error("kind: role\nversion: v9\nmetadata: {name: x}\n", 2, "version",
                 "unsupported role version 'v9', expected one of v3, v4, v5, v6, v7, v8");
    expect_error("kind: role\nversion: v2\nmetadata: {name: x}\n", 2, "version",
                 "unsupported role version 'v2'");
    expect_error("kind: role\nversion: 7\nmetadata: {name: x}\n", 2, "version",
                 "expected a version string such as 'v7', found an integer");
    expect_error("kind: role\nmetadata: {name: x}\n", 1, "version", "missing");
}

Test(rbac_parse, every_supported_version_parses)
{
    static const char *const versions[] = {"v3", "v4", "v5", "v6", "v7", "v8"};
    for (int i = 0; i < 6; i++) {
        char yaml[128];
        struct rbac_role *role = NULL;
        snprintf(yaml, sizeof yaml, "kind: role\nversion: %s\nmetadata: {name: r}\n", versions[i]);
        cr_assert_eq(rbac_role_parse_yaml("t.yaml", yaml, strlen(yaml), &role), 0, "%s: %s",
                     versions[i], rp_errmsg());
        cr_assert_eq(rbac_role_version(role), i + 3);
        cr_assert_str_eq(rbac_role_name(role), "r");
        rbac_role_free(role);
    }
}

Test(rbac_parse, bad_duration_names_the_option)
{
    expect_error(
        ROLE("r", "v7", "  options:\n    forward_agent: true\n    max_session_ttl: 8 hours\n"), 8,
        "spec.options.max_session_ttl", "invalid duration '8 hours'");
    expect_error(ROLE("r", "v7", "  options:\n    max_session_ttl: -1h\n"), 7,
                 "spec.options.max_session_ttl", "negative durations are not allowed");
    expect_error(ROLE("r", "v7", "  options:\n    client_idle_timeout: 30\n"), 7,
                 "spec.options.client_idle_timeout", "expected a duration such as 8h");
    expect_error(ROLE("r", "v7", "  options:\n    max_session_ttl: 3d\n"), 7,
                 "spec.options.max_session_ttl", "unknown unit");
}

Test(rbac_parse, invalid_regex_names_path_and_line)
{
    const char *yaml = ROLE("r", "v7",
                            "  allow:\n"
                            "    logins: [root]\n"
                            "    node_labels:\n"
                            "      team: web\n"
                            "      env: '^(x$'\n");
    struct rbac_role *role = NULL;
    cr_assert_eq(rbac_role_parse_yaml("role.yaml", yaml, strlen(yaml), &role), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "role.yaml:10: spec.allow.node_labels.env: invalid regular "
                                  "expression '^(x$': Unmatched ( or \\(");
    expect_error(R_LABELS("{env: ['^ok$', '^(?i)prod$']}"), 8, "spec.allow.node_labels.env[1]",
                 "(?...) groups and flags are not supported");
    expect_error(R_LABELS("{env: '^a.*?b$'}"), 8, "spec.allow.node_labels.env", "lazy quantifiers");
    expect_error(R_LOGINS("['{{regexp.replace(external.g, \"(\", \"x\")}}']"), 7,
                 "spec.allow.logins[0]", "invalid regular expression '(' in regexp.replace");
}

Test(rbac_parse, wrong_types_name_the_field)
{
    expect_error(ROLE("r", "v7", "  allow:\n    logins: root\n"), 7, "spec.allow.logins",
                 "expected a list of strings, found a string");
    expect_error(ROLE("r", "v7", "  allow:\n    logins: [root, 7]\n"), 7, "spec.allow.logins[1]",
                 "expected a string, found an integer (put it in quotes");
    expect_error(R_LABELS("{tier: 1}"), 8, "spec.allow.node_labels.tier",
                 "found an integer (put it in quotes");
    expect_error(ROLE("r", "v7", "  allow: [logins]\n"), 6, "spec.allow",
                 "expected a map, found a list");
    expect_error(ROLE("r", "v7", "  options:\n    forward_agent: maybe\n"), 7,
                 "spec.options.forward_agent", "expected true or false, found a string");
    expect_error(ROLE("r", "v7", "  options:\n    max_sessions: -1\n"), 7,
                 "spec.options.max_sessions", "expected a non-negative integer");
    expect_error(ROLE("r", "v7", "  allow:\n    rules:\n    - resources: [role]\n"), 8,
                 "spec.allow.rules[0]", "verbs: missing");
    expect_error(
        ROLE("r", "v7", "  allow:\n    rules:\n    - {resources: [Role], verbs: [read]}\n"), 8,
        "spec.allow.rules[0].resources[0]", "'Role' is not a valid name");
}

Test(rbac_parse, unknown_values_of_known_fields_are_refused)
{
    expect_error(ROLE("r", "v7", "  options:\n    create_db_user_mode: drop\n"), 7,
                 "spec.options.create_db_user_mode",
                 "unknown value 'drop', expected one of: off, keep, best_effort_drop");
    expect_error(ROLE("r", "v7", "  options:\n    lock: always\n"), 7, "spec.options.lock",
                 "unknown value 'always', expected one of: best_effort, strict");
    expect_error(ROLE("r", "v7", "  options:\n    device_trust_mode: [required]\n"), 7,
                 "spec.options.device_trust_mode", "expected a string, found a list");
    expect_error(
        ROLE("r", "v7", "  options:\n    ssh_port_forwarding: {local: {enabled: maybe}}\n"), 7,
        "spec.options.ssh_port_forwarding.local.enabled", "expected true or false, found a string");
    expect_error(ROLE("r", "v7", "  allow:\n    kubernetes_resources: [{kind: pod, verbs: get}]\n"),
                 7, "spec.allow.kubernetes_resources[0].verbs",
                 "expected a list of strings, found a string");
    expect_error(ROLE("r", "v7", "  allow:\n    request: {thresholds: [{approve: two}]}\n"), 7,
                 "spec.allow.request.thresholds[0].approve", "expected an integer, found a string");
    expect_error(ROLE("r", "v7", "  allow:\n    request: {max_duration: 7 days}\n"), 7,
                 "spec.allow.request.max_duration", "invalid duration '7 days'");
    expect_error(ROLE("r", "v7", "  allow:\n    app_labels_expression: 'labels[\"env\"] =='\n"), 7,
                 "spec.allow.app_labels_expression", "invalid label expression: line 1, column");
    expect_error(ROLE("r", "v7", "  allow:\n    node_labels_expression: 'contains(labels[`a`])'\n"),
                 7, "spec.allow.node_labels_expression",
                 "invalid label expression: line 1, column 1: contains takes 2 arguments, found 1");
}

Test(rbac_parse, templates_are_checked)
{
    expect_error(R_LOGINS("['{{internal.logins']"), 7, "spec.allow.logins[0]",
                 "uses template brackets but is not of the form prefix{{expression}}suffix");
    expect_error(R_LOGINS("['{{internal.foo}}']"), 7, "spec.allow.logins[0]",
                 "unsupported variable internal.foo");
    expect_error(R_LOGINS("['{{people.foo}}']"), 7, "spec.allow.logins[0]",
                 "unknown namespace 'people'");
    expect_error(R_LOGINS("['{{email.remote(external.x)}}']"), 7, "spec.allow.logins[0]",
                 "unsupported function");
    expect_error(ROLE("r", "v7", "  allow:\n    node_labels: {'{{external.k}}': x}\n"), 7,
                 "spec.allow.node_labels[\"{{external.k}}\"]",
                 "templates are only supported in label values");
}

Test(rbac_parse, resource_shape)
{
    expect_error("kind: user\nversion: v2\nmetadata: {name: joe}\n", 1, "kind",
                 "expected 'role', found 'user'");
    expect_error("kind: role\nversion: v7\nmetadata:\n  description: no name\n", 3, "metadata.name",
                 "missing");
    expect_error("version: v7\nmetadata: {name: r}\n", 1, "kind", "missing");
    expect_error(ROLE("r", "v7", "  allow:\n    node_labels: {'*': prod}\n"), 7,
                 "spec.allow.node_labels.*", "only with the value '*'");
    expect_error("kind: role\nversion: v7\nmetadata: {name: 'a b'}\n", 3, "metadata.name",
                 "invalid role name 'a b'");
}

Test(rbac_parse, msgpack_errors_carry_the_path_alone)
{
    struct rp_buf mp;
    msgpack_unpacked u;
    struct rbac_role *role = NULL;
    rp_buf_init(&mp);
    yaml_to_mp(ROLE("r", "v7", "  allow:\n    logins: root\n"), &mp);
    cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
    cr_assert_eq(rbac_role_parse(&u.data, &role), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "spec.allow.logins: expected a list of strings, found a string");
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
}

Test(rbac_parse, strings_yaml_cannot_hold_are_refused)
{
    /* Found by fuzzing: msgpack from the API may carry bytes no YAML text can. */
    struct rp_buf mp;
    msgpack_packer pk;
    msgpack_unpacked u;
    struct rbac_role *role = NULL;
    rp_buf_init(&mp);
    rp_mp_packer_init(&pk, &mp);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "kind", "role");
    rp_mp_kv_str(&pk, "version", "v7");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "name", "r");
    rp_mp_pack_str(&pk, "spec");
    msgpack_pack_map(&pk, 1);
    rp_mp_pack_str(&pk, "allow");
    msgpack_pack_map(&pk, 1);
    rp_mp_pack_str(&pk, "logins");
    msgpack_pack_array(&pk, 1);
    rp_mp_pack_strn(&pk, "ro\xffot", 5);
    cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
    cr_assert_eq(rbac_role_parse(&u.data, &role), RP_EINVAL);
    cr_assert_null(role);
    cr_assert_str_eq(rp_errmsg(),
                     "spec.allow.logins[0]: strings must be valid UTF-8 without NUL bytes");
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
}

Test(rbac_set, trait_that_makes_a_bad_regex_is_refused)
{
    struct rbac_role *roles[MAX_ROLES];
    size_t n = load_roles(R_LABELS("{env: '^{{external.env}}$'}"), roles);
    struct rp_buf tb;
    msgpack_unpacked u;
    struct rbac_set *set = (struct rbac_set *)1;
    rp_buf_init(&tb);
    yaml_to_mp("{env: ['(']}", &tb);
    cr_assert_eq(rp_mp_parse(tb.data, tb.len, &u), 0);
    cr_assert_eq(rbac_set_new(roles, n, &u.data, &set), RP_EINVAL);
    cr_assert_null(set);
    cr_assert(strstr(rp_errmsg(), "role lbl: spec.allow.node_labels.env: value '^($'") != NULL,
              "%s", rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&tb);
    rbac_role_free(roles[0]);
}

/* ---- lib/yaml_mp ------------------------------------------------------------------------ */

Test(yaml_mp, scalars_are_typed_like_yaml_1_2_core)
{
    struct rp_buf mp;
    msgpack_unpacked u;
    rp_buf_init(&mp);
    yaml_to_mp("n1: null\nn2: ~\nn3:\nb1: true\nb2: False\ni1: 42\ni2: -7\ni3: 0x1F\ni4: 0o17\n"
               "f1: 1.5\nf2: 1e3\nf3: .inf\nf4: -.Inf\ns1: 'true'\ns2: yes\ns3: \"42\"\n"
               "s4: 1.2.3\nbig: 99999999999999999999\n",
               &mp);
    cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
    const msgpack_object *o = &u.data;
    cr_assert_eq(rp_mp_get(o, "n1")->type, MSGPACK_OBJECT_NIL);
    cr_assert_eq(rp_mp_get(o, "n2")->type, MSGPACK_OBJECT_NIL);
    cr_assert_eq(rp_mp_get(o, "n3")->type, MSGPACK_OBJECT_NIL);
    cr_assert(rp_mp_get(o, "b1")->via.boolean);
    cr_assert_eq(rp_mp_get(o, "b2")->type, MSGPACK_OBJECT_BOOLEAN);
    cr_assert_eq(rp_mp_get(o, "i1")->via.u64, 42);
    cr_assert_eq(rp_mp_get(o, "i2")->via.i64, -7);
    cr_assert_eq(rp_mp_get(o, "i3")->via.u64, 31);
    cr_assert_eq(rp_mp_get(o, "i4")->via.u64, 15);
    cr_assert_eq(rp_mp_get(o, "f1")->via.f64, 1.5);
    cr_assert_eq(rp_mp_get(o, "f2")->via.f64, 1000.0);
    cr_assert(isinf(rp_mp_get(o, "f3")->via.f64));
    cr_assert(rp_mp_get(o, "f4")->via.f64 < 0);
    cr_assert(rp_mp_str_eq(rp_mp_get(o, "s1"), "true"));
    cr_assert(rp_mp_str_eq(rp_mp_get(o, "s2"), "yes"));
    cr_assert(rp_mp_str_eq(rp_mp_get(o, "s3"), "42"));
    cr_assert(rp_mp_str_eq(rp_mp_get(o, "s4"), "1.2.3"));
    cr_assert_eq(rp_mp_get(o, "big")->type, MSGPACK_OBJECT_FLOAT64);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
}

Test(yaml_mp, paths_map_to_lines_with_ancestor_fallback)
{
    const char *yaml = "kind: role\n"        /* 1 */
                       "spec:\n"             /* 2 */
                       "  allow:\n"          /* 3 */
                       "    logins:\n"       /* 4 */
                       "    - root\n"        /* 5 */
                       "    - ubuntu\n"      /* 6 */
                       "    node_labels:\n"  /* 7 */
                       "      env: prod\n"   /* 8 */
                       "      'a.b/c': x\n"; /* 9 */
    struct rp_buf mp;
    struct rp_ymp_lines lines;
    rp_buf_init(&mp);
    rp_ymp_lines_init(&lines);
    cr_assert_eq(rp_ymp_parse_str("f.yaml", yaml, strlen(yaml), &mp, &lines), 0);
    cr_assert_eq(rp_ymp_line(&lines, ""), 1);
    cr_assert_eq(rp_ymp_line(&lines, "spec.allow.logins"), 4);
    cr_assert_eq(rp_ymp_line(&lines, "spec.allow.logins[1]"), 6);
    cr_assert_eq(rp_ymp_line(&lines, "spec.allow.node_labels.env"), 8);
    cr_assert_eq(rp_ymp_line(&lines, "spec.allow.node_labels[\"a.b/c\"]"), 9);
    cr_assert_eq(rp_ymp_line(&lines, "spec.allow.logins[7]"), 4, "a missing item: its list");
    cr_assert_eq(rp_ymp_line(&lines, "spec.deny.logins"), 2, "a missing map: its parent");
    cr_assert_eq(rp_ymp_line(&lines, "metadata.name"), 1, "nothing known: the root");

    cr_assert_eq(rp_ymp_err(&lines, RP_EINVAL, "spec.allow.logins[1]", "bad login '%s'", "x"),
                 RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "f.yaml:6: spec.allow.logins[1]: bad login 'x'");
    rp_err(RP_EINVAL, "spec.allow.node_labels[\"a.b/c\"]: nope: really");
    cr_assert_eq(rp_ymp_locate(&lines, RP_EINVAL), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "f.yaml:9: spec.allow.node_labels[\"a.b/c\"]: nope: really");
    rp_err(RP_EINVAL, "something without a path: here");
    rp_ymp_locate(&lines, RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "f.yaml:1: something without a path: here");
    rp_ymp_lines_free(&lines);
    rp_buf_free(&mp);
}

/* YAML -> msgpack -> YAML -> msgpack: the two msgpack forms are identical, and so are
 * the two YAML texts printed from them. Returns the first YAML text (free it). */
static char *round_trip(const char *yaml)
{
    struct rp_buf mp1, mp2, y1, y2;
    msgpack_unpacked u;
    rp_buf_init(&mp1);
    rp_buf_init(&mp2);
    rp_buf_init(&y1);
    rp_buf_init(&y2);
    yaml_to_mp(yaml, &mp1);
    cr_assert_eq(rp_mp_parse(mp1.data, mp1.len, &u), 0);
    cr_assert_eq(rp_ymp_to_yaml(&y1, &u.data), 0, "to YAML: %s", rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_append(&y1, "", 1);
    cr_assert_eq(rp_ymp_parse_str("y1", (const char *)y1.data, y1.len - 1, &mp2, NULL), 0,
                 "printed YAML does not parse: %s\n%s", rp_errmsg(), (const char *)y1.data);
    cr_assert_eq(mp1.len, mp2.len, "msgpack lengths differ after a round trip:\n%s",
                 (const char *)y1.data);
    cr_assert(memcmp(mp1.data, mp2.data, mp1.len) == 0, "msgpack bytes differ:\n%s",
              (const char *)y1.data);
    cr_assert_eq(rp_mp_parse(mp2.data, mp2.len, &u), 0);
    cr_assert_eq(rp_ymp_to_yaml(&y2, &u.data), 0);
    msgpack_unpacked_destroy(&u);
    rp_buf_append(&y2, "", 1);
    cr_assert_str_eq((const char *)y1.data, (const char *)y2.data);
    rp_buf_free(&mp1);
    rp_buf_free(&mp2);
    rp_buf_free(&y2);
    return (char *)rp_buf_steal(&y1, NULL);
}

Test(yaml_mp, round_trip_of_awkward_values)
{
    char *y = round_trip("strings:\n"
                         "- 'yes'\n- 'no'\n- 'on'\n- 'true'\n- 'null'\n- '~'\n- ''\n- '*'\n"
                         "- '123'\n- '0x1F'\n- '1.0'\n- '1_000'\n- '0b101'\n- '1.2.3'\n- '.inf'\n"
                         "- '{{internal.logins}}'\n- '-dash'\n- '# hash'\n- 'a: b'\n- 'a #b'\n"
                         "- ' lead'\n- 'trail '\n- \"line\\nbreak\"\n- \"tab\\there\"\n"
                         "- 'quote\"s'\n- 'back\\slash'\n- \"\\u00e9t\\u00e9 \\u2028 \\x85\"\n"
                         "- '[x]'\n- '&anchor'\n- '!tag'\n- '%pct'\n- '@at'\n- plain words here\n"
                         "- us-west-1\n- login@github.com\n- teleport.internal/resource-type\n"
                         "numbers: [0, 1, -1, 18446744073709551615, -9223372036854775808, 1.5,"
                         " -0.0, 1e300, 2.5e-8, .inf, -.inf, 0.1, 100.0]\n"
                         "other: [true, false, null]\n"
                         "nested:\n"
                         "- - a\n  - [b, c]\n  - {}\n- []\n- {k: v, 'a.b': {c: [d]}}\n"
                         "'': empty key\n"
                         "'key with: colon': 1\n"
                         "empty_map: {}\n");
    cr_assert(strstr(y, "- \"yes\"\n") != NULL, "%s", y);
    cr_assert(strstr(y, "- plain words here\n") != NULL, "%s", y);
    cr_assert(strstr(y, "- us-west-1\n") != NULL, "%s", y);
    cr_assert(strstr(y, "- 100.0\n") != NULL, "%s", y);
    free(y);
}

Test(yaml_mp, to_yaml_refuses_what_yaml_cannot_hold)
{
    struct rp_buf mp, y;
    msgpack_packer pk;
    msgpack_unpacked u;
    rp_buf_init(&mp);
    rp_buf_init(&y);
    rp_mp_packer_init(&pk, &mp);
    msgpack_pack_map(&pk, 1);
    rp_mp_pack_str(&pk, "bad");
    rp_mp_pack_strn(&pk, "\xff\xfe", 2);
    cr_assert_eq(rp_mp_parse(mp.data, mp.len, &u), 0);
    cr_assert_eq(rp_ymp_to_yaml(&y, &u.data), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "bad: a string that is not valid UTF-8 has no YAML form");
    cr_assert_eq(y.len, 0);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
    rp_buf_free(&y);
}

/* ---- round trips of roles: presets and a complex role ------------------------------------- */

/* msgpack role -> YAML -> msgpack (identical) -> rbac_role_parse -> canonical (identical). */
static void role_round_trip(const struct rp_buf *canonical, const char *what)
{
    struct rp_buf y, mp2, mp3;
    msgpack_unpacked u;
    struct rbac_role *role = NULL;
    rp_buf_init(&y);
    rp_buf_init(&mp2);
    rp_buf_init(&mp3);
    cr_assert_eq(rp_mp_parse(canonical->data, canonical->len, &u), 0);
    cr_assert_eq(rp_ymp_to_yaml(&y, &u.data), 0, "%s: %s", what, rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_append(&y, "", 1);
    yaml_to_mp((const char *)y.data, &mp2);
    cr_assert(mp2.len == canonical->len && memcmp(mp2.data, canonical->data, mp2.len) == 0,
              "%s: YAML -> msgpack -> YAML -> msgpack changed the bytes:\n%s", what,
              (const char *)y.data);
    cr_assert_eq(rp_mp_parse(mp2.data, mp2.len, &u), 0);
    cr_assert_eq(rbac_role_parse(&u.data, &role), 0, "%s: %s", what, rp_errmsg());
    msgpack_unpacked_destroy(&u);
    cr_assert_eq(rbac_role_pack(role, &mp3), 0);
    cr_assert(mp3.len == canonical->len && memcmp(mp3.data, canonical->data, mp3.len) == 0,
              "%s: the canonical form is not stable", what);
    rbac_role_free(role);
    rp_buf_free(&y);
    rp_buf_free(&mp2);
    rp_buf_free(&mp3);
}

Test(rbac_round_trip, presets)
{
    for (int i = 0; rbac_preset_names[i] != NULL; i++) {
        struct rp_buf mp;
        rp_buf_init(&mp);
        cr_assert_eq(rbac_preset_pack(rbac_preset_names[i], &mp), 0, "%s", rp_errmsg());
        role_round_trip(&mp, rbac_preset_names[i]);
        rp_buf_free(&mp);
    }
    struct rp_buf mp;
    rp_buf_init(&mp);
    cr_assert_eq(rbac_preset_pack("admin", &mp), RP_ENOTFOUND);
    rp_buf_free(&mp);
}

Test(rbac_round_trip, preset_access_reads_like_teleport)
{
    struct rbac_role *role = load_preset("access");
    struct rp_buf y;
    rp_buf_init(&y);
    cr_assert_eq(rbac_role_to_yaml(role, &y), 0);
    rp_buf_append(&y, "", 1);
    const char *text = (const char *)y.data;
    const char *head = "kind: role\nmetadata:\n  description: Access cluster resources\n";
    cr_assert(strncmp(text, head, strlen(head)) == 0, "%s", text);
    cr_assert(strstr(text, "    logins:\n    - \"{{internal.logins}}\"\n") != NULL, "%s", text);
    cr_assert(strstr(text, "    node_labels:\n      \"*\": \"*\"\n") != NULL, "%s", text);
    cr_assert(strstr(text, "    max_session_ttl: 30h0m0s\n") != NULL, "%s", text);
    cr_assert(strstr(text, "version: v7\n") != NULL, "%s", text);
    rp_buf_free(&y);
    rbac_role_free(role);
}

static const char complex_role[] =
    "kind: role\n"
    "version: v7\n"
    "metadata:\n"
    "  name: complex\n"
    "  description: \"Everything at once: quotes \\\" and ünïcödé\"\n"
    "  labels: {team: web, 'a.b/c': 'yes'}\n"
    "spec:\n"
    "  options:\n"
    "    max_session_ttl: 1h30m\n"
    "    client_idle_timeout: 15m\n"
    "    forward_agent: yes\n"
    "    port_forwarding: false\n"
    "    ssh_file_copy: false\n"
    "    disconnect_expired_cert: true\n"
    "    max_sessions: 4\n"
    "    permit_x11_forwarding: false\n"
    "    require_session_mfa: hardware_key\n"
    "    lock: strict\n"
    "    record_session: {default: strict, ssh: best_effort, desktop: false}\n"
    "    pin_source_ip: true\n"
    "    cert_extensions:\n"
    "    - {type: ssh, mode: extension, name: login@github.com, value: "
    "'{{external.github_login}}'}\n"
    "    create_host_user_mode: keep\n"
    "    max_connections: 2\n"
    "    enhanced_recording: [network, command, disk]\n"
    "  allow:\n"
    "    logins: [root, '{{internal.logins}}', 'adm-{{external[\"user name\"]}}']\n"
    "    node_labels:\n"
    "      env: [test, stage]\n"
    "      region: '^us-(west|east)-\\d+$'\n"
    "      host: 'web-*'\n"
    "      owner: '{{email.local(external.email)}}'\n"
    "      '*': '*'\n"
    "    rules:\n"
    "    - resources: [role, user]\n"
    "      verbs: [list, read]\n"
    "    - resources: [session]\n"
    "      verbs: ['*']\n"
    "      where: contains(session.participants, user.metadata.name)\n"
    "    namespaces: [default]\n"
    "    app_labels: {'*': '*'}\n"
    "    kubernetes_groups: ['{{internal.kubernetes_groups}}']\n"
    "    impersonate: {users: ['*'], roles: [jenkins]}\n"
    "  deny:\n"
    "    logins: [guest]\n"
    "    node_labels: {env: prod}\n"
    "    rules:\n"
    "    - resources: [token]\n"
    "      verbs: [delete]\n";

Test(rbac_round_trip, complex_role)
{
    /* The text as written survives YAML -> msgpack -> YAML -> msgpack ... */
    free(round_trip(complex_role));
    /* ... and so does its canonical form, through the role parser too. */
    struct rbac_role *role = NULL;
    struct rp_buf mp;
    rp_buf_init(&mp);
    cr_assert_eq(rbac_role_parse_yaml("c.yaml", complex_role, strlen(complex_role), &role), 0, "%s",
                 rp_errmsg());
    cr_assert_eq(rbac_role_pack(role, &mp), 0);
    role_round_trip(&mp, "complex");
    rp_buf_free(&mp);
    rbac_role_free(role);
}

Test(rbac_round_trip, version_defaults_show_in_the_canonical_form)
{
    struct rbac_role *role = NULL;
    struct rp_buf y;
    rp_buf_init(&y);
    const char *v3 = ROLE("old", "v3", "  allow:\n    logins: [root]\n");
    cr_assert_eq(rbac_role_parse_yaml("t.yaml", v3, strlen(v3), &role), 0, "%s", rp_errmsg());
    cr_assert_eq(rbac_role_to_yaml(role, &y), 0);
    rp_buf_append(&y, "", 1);
    const char *text = (const char *)y.data;
    cr_assert(strstr(text, "    node_labels:\n      \"*\": \"*\"\n") != NULL, "%s", text);
    cr_assert(strstr(text, "    app_labels:\n      \"*\": \"*\"\n") != NULL, "%s", text);
    /* Not filled in: read back, it would override other roles' ssh_port_forwarding. */
    cr_assert(strstr(text, "port_forwarding") == NULL, "%s", text);
    cr_assert(strstr(text, "    ssh_file_copy: true\n") != NULL, "%s", text);
    cr_assert(strstr(text, "max_session_ttl") == NULL, "%s", text);
    struct rp_buf mp;
    rp_buf_init(&mp);
    cr_assert_eq(rbac_role_pack(role, &mp), 0);
    role_round_trip(&mp, "v3 defaults");
    rp_buf_free(&mp);
    rp_buf_free(&y);
    rbac_role_free(role);
}

/* ---- fields Raftport keeps, fields that fail closed, port forwarding -------------------- */

static struct rbac_role *role_from(const char *yaml)
{
    struct rbac_role *role = NULL;
    int rv = rbac_role_parse_yaml("t.yaml", yaml, strlen(yaml), &role);
    cr_assert_eq(rv, 0, "%s\n%s", rp_errmsg(), yaml);
    return role;
}

static char *role_yaml(const struct rbac_role *role)
{
    struct rp_buf y;
    rp_buf_init(&y);
    cr_assert_eq(rbac_role_to_yaml(role, &y), 0);
    rp_buf_append(&y, "", 1);
    return (char *)rp_buf_steal(&y, NULL);
}

Test(rbac_unknown, unknown_fields_are_kept_exactly_and_listed)
{
    struct rbac_role *role =
        role_from("kind: role\nversion: v7\nmetadata:\n  name: r\n  owner: sre\n"
                  "spec:\n  options:\n    session_banner: {text: 'Authorized use only', level: 3}\n"
                  "  allow:\n    loginz: [root]\n    mcp:\n      tools: ['search_*']\n"
                  "    rules:\n    - {resources: [role], verbs: [read], color: blue}\n"
                  "  scopes: [prod]\nstatus: {seen: true}\n");
    const char *paths[8];
    size_t n = rbac_role_unknown(role, paths, 8);
    cr_assert_eq(n, 7, "%zu unknown fields", n);
    const char *want[] = {
        "metadata.owner", "spec.options.session_banner", "spec.allow.loginz (did you mean logins?)",
        "spec.allow.mcp", "spec.allow.rules[0].color",   "spec.scopes",
        "status"};
    for (size_t i = 0; i < 7; i++) {
        bool found = false;
        for (size_t j = 0; j < n && !found; j++)
            found = strcmp(paths[j], want[i]) == 0;
        cr_assert(found, "unknown field '%s' not listed", want[i]);
    }
    /* Only those that may restrict access fail closed: under options, deny or spec. */
    const char *fc[8];
    size_t nfc = rbac_role_unenforced(role, fc, 8);
    cr_assert_eq(nfc, 2);
    cr_assert_str_eq(fc[0], "spec.options.session_banner");
    cr_assert_str_eq(fc[1], "spec.scopes");
    char *text = role_yaml(role);
    cr_assert(strstr(text, "  owner: sre\n") != NULL, "%s", text);
    cr_assert(
        strstr(text, "    session_banner:\n      level: 3\n      text: Authorized use only\n") !=
            NULL,
        "%s", text);
    cr_assert(strstr(text, "    loginz:\n    - root\n") != NULL, "%s", text);
    cr_assert(strstr(text, "      tools:\n      - \"search_*\"\n") != NULL, "%s", text);
    cr_assert(strstr(text, "    - color: blue\n") != NULL, "%s", text);
    cr_assert(strstr(text, "  scopes:\n  - prod\n") != NULL, "%s", text);
    cr_assert(strstr(text, "status:\n  seen: true\n") != NULL, "%s", text);
    struct rp_buf mp;
    rp_buf_init(&mp);
    cr_assert_eq(rbac_role_pack(role, &mp), 0);
    role_round_trip(&mp, "unknown fields");
    rp_buf_free(&mp);
    free(text);
    rbac_role_free(role);
}

Test(rbac_unenforced, every_fail_closed_field_is_named)
{
    struct rbac_role *role = role_from(ROLE(
        "fc", "v7",
        "  options:\n    require_session_mfa: hardware_key_touch_and_pin\n"
        "    device_trust_mode: required-for-humans\n    pin_source_ip: true\n"
        "  allow:\n    logins: [root]\n    require_session_join:\n    - {name: p, filter: 'true', "
        "kinds: ['*'], modes: [moderator], count: 1}\n"
        "  deny:\n    future_restriction: {on: true}\n"));
    const char *fields[3];
    size_t n = rbac_role_unenforced(role, fields, 3);
    cr_assert_eq(n, 5, "the count covers every field, not only those that fit");
    cr_assert_str_eq(fields[0], "spec.options.require_session_mfa");
    cr_assert_str_eq(fields[1], "spec.options.device_trust_mode");
    cr_assert_str_eq(fields[2], "spec.options.pin_source_ip");
    const char *all[5];
    cr_assert_eq(rbac_role_unenforced(role, all, 5), 5);
    cr_assert_str_eq(all[3], "spec.allow.require_session_join");
    cr_assert_str_eq(all[4], "spec.deny.future_restriction");
    rbac_role_free(role);

    role = role_from(ROLE("ok", "v7",
                          "  options:\n    require_session_mfa: false\n    device_trust_mode: off\n"
                          "    pin_source_ip: false\n    cert_format: oldssh\n"
                          "  allow:\n    kubernetes_groups: [dev]\n    future_grant: [x]\n"));
    cr_assert_eq(rbac_role_unenforced(role, fields, 3), 0,
                 "settings that do not restrict, and unknown fields of allow, do not fail closed");
    rbac_role_free(role);
}

/* Teleport does not check these values (its own reference shows
 * "device_trust_mode: optional|required|off"): they are kept, and read the safe way. */
Test(rbac_unenforced, unchecked_values_are_kept_and_read_restrictively)
{
    struct rbac_role *role =
        role_from(ROLE("p", "v7",
                       "  options:\n    device_trust_mode: optional|required|off\n"
                       "    record_session:\n      default: best_effort|strict\n"
                       "      ssh: always\n    cert_format: pem\n"
                       "  allow:\n    logins: [root]\n    node_labels: {'*': '*'}\n"));
    const char *fields[4];
    cr_assert_eq(rbac_role_unenforced(role, fields, 4), 1);
    cr_assert_str_eq(fields[0], "spec.options.device_trust_mode");
    char *text = role_yaml(role);
    cr_assert(strstr(text, "    device_trust_mode: \"optional|required|off\"\n") != NULL, "%s",
              text);
    cr_assert(strstr(text, "      default: \"best_effort|strict\"\n") != NULL, "%s", text);
    cr_assert(strstr(text, "      ssh: always\n") != NULL, "%s", text);
    cr_assert(strstr(text, "    cert_format: pem\n") != NULL, "%s", text);
    free(text);
    struct rbac_set *set = NULL;
    struct rbac_options o;
    cr_assert_eq(rbac_set_new(&role, 1, NULL, &set), 0);
    rbac_options(set, &o);
    cr_assert_eq(o.record_ssh, RBAC_RECORD_STRICT, "an unknown recording mode counts as strict");
    rbac_set_free(set);
    rbac_role_free(role);
}

Test(rbac_unenforced, holders_get_no_logins_and_the_reason)
{
    struct loaded l;
    char **logins = NULL, why[512] = "";
    size_t n = 0;
    load_set(&l, R_ALLOW_ALL "---\n" R_FC("device_trust_mode: required"), NULL);
    cr_assert_eq(rbac_logins(l.set, &logins, &n), 0);
    cr_assert_eq(n, 0, "a set holding a fail-closed role gets no logins");
    cr_assert_null(logins);
    cr_assert_eq(rbac_set_ssh_refused(l.set, why, sizeof why), RP_EDENIED);
    cr_assert(strstr(why, "role 'fc' sets spec.options.device_trust_mode") != NULL, "%s", why);
    unload(&l);
    load_set(&l, R_ALLOW_ALL, NULL);
    cr_assert_eq(rbac_set_ssh_refused(l.set, why, sizeof why), 0);
    cr_assert_eq(rbac_logins(l.set, &logins, &n), 0);
    cr_assert_eq(n, 2);
    rbac_logins_free(logins, n);
    unload(&l);
}

#define R_PF(name, opts) ROLE(name, "v7", "  options:\n" opts)

struct pf_case {
    const char *name, *roles;
    bool local, remote;
};

static const struct pf_case pf_cases[] = {
    {"bare_role_allows_both", R_PF("a", "    forward_agent: false\n"), true, true},
    {"local_only", R_PF("a", "    ssh_port_forwarding: {remote: {enabled: false}}\n"), true, false},
    {"remote_only", R_PF("a", "    ssh_port_forwarding: {local: {enabled: no}}\n"), false, true},
    {"legacy_false_alone_denies_both", R_PF("a", "    port_forwarding: false\n"), false, false},
    {"legacy_false_with_a_bare_role_allows", /* the legacy option is an OR */
     R_PF("a", "    port_forwarding: false\n") "---\n" R_PF("b", "    forward_agent: true\n"), true,
     true},
    {"any_role_disabling_a_direction_wins",
     R_PF("a",
          "    ssh_port_forwarding: {local: {enabled: true}, remote: {enabled: "
          "true}}\n") "---\n" R_PF("b", "    ssh_port_forwarding: {remote: {enabled: false}}\n"),
     true, false},
    {"legacy_true_overrides_ssh_port_forwarding",
     R_PF("a", "    port_forwarding: true\n") "---\n" R_PF(
         "b", "    ssh_port_forwarding: {local: {enabled: false}, remote: {enabled: false}}\n"),
     true, true},
    {"explicit_enable_beats_legacy_false_of_another",
     R_PF("a", "    port_forwarding: false\n") "---\n" R_PF(
         "b", "    ssh_port_forwarding: {local: {enabled: true}}\n"),
     true, true},
};

ParameterizedTestParameters(rbac_options, port_forwarding_directions)
{
    return row_indices(sizeof pf_cases / sizeof pf_cases[0]);
}

ParameterizedTest(size_t *row, rbac_options, port_forwarding_directions)
{
    const struct pf_case *tc = &pf_cases[*row];
    struct loaded l;
    struct rbac_options o;
    load_set(&l, tc->roles, NULL);
    rbac_options(l.set, &o);
    cr_assert_eq(o.port_forwarding, tc->local, "%s: local", tc->name);
    cr_assert_eq(o.remote_port_forwarding, tc->remote, "%s: remote", tc->name);
    unload(&l);
}

Test(rbac_options, ssh_port_forwarding_round_trips)
{
    struct rbac_role *role =
        role_from(R_PF("a", "    ssh_port_forwarding:\n      local: {enabled: 'yes'}\n"
                            "      remote: {enabled: false, audit: true}\n"));
    char *text = role_yaml(role);
    cr_assert(strstr(text, "    ssh_port_forwarding:\n      local:\n        enabled: true\n"
                           "      remote:\n        audit: true\n        enabled: false\n") != NULL,
              "%s", text);
    struct rp_buf mp;
    rp_buf_init(&mp);
    cr_assert_eq(rbac_role_pack(role, &mp), 0);
    role_round_trip(&mp, "ssh_port_forwarding");
    rp_buf_free(&mp);
    free(text);
    rbac_role_free(role);
}

/* ---- the fixture files: every field of the role spec, v3 to v8 --------------------------- */

#include <dirent.h>
#include <limits.h>
#include <unistd.h>

/* tests/fixtures/roles[/SUB] from the working directory (the repository root, as make
 * runs the tests), else next to the binary (build/tests/ -> ../../tests/...). */
static void fixture_dir(const char *sub, char *out, size_t outlen)
{
    char exe[PATH_MAX];
    snprintf(out, outlen, "tests/fixtures/roles%s", sub);
    if (access(out, R_OK) == 0)
        return;
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    cr_assert(n > 0);
    exe[n] = '\0';
    char *slash = strrchr(exe, '/');
    *slash = '\0';
    snprintf(out, outlen, "%s/../../tests/fixtures/roles%s", exe, sub);
    cr_assert_eq(access(out, R_OK), 0, "no fixtures at %s", out);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "%s", path);
    struct rp_buf b;
    rp_buf_init(&b);
    char chunk[4096];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0)
        rp_buf_append(&b, chunk, n);
    fclose(f);
    *len = b.len;
    rp_buf_append(&b, "", 1);
    return (char *)rp_buf_steal(&b, NULL);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(a, b);
}

/* The .yaml files of @dir, sorted; returns their count. */
static size_t list_yaml(const char *dir, char names[][128], size_t max)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0;
    cr_assert_not_null(d, "%s", dir);
    while ((e = readdir(d)) != NULL && n < max) {
        size_t len = strlen(e->d_name);
        if (len > 5 && len < 128 && strcmp(e->d_name + len - 5, ".yaml") == 0)
            memcpy(names[n++], e->d_name, len + 1);
    }
    closedir(d);
    qsort(names, n, 128, cmp_names);
    return n;
}

Test(rbac_fixtures, every_role_file_loads_and_round_trips)
{
    char dir[PATH_MAX + 64], path[PATH_MAX + 200], names[64][128];
    fixture_dir("", dir, sizeof dir);
    size_t n = list_yaml(dir, names, 64);
    cr_assert(n >= 12, "only %zu fixtures in %s", n, dir);
    int versions_seen = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        char *text = read_file(path, &len);
        struct rbac_role *role = NULL;
        int rv = rbac_role_parse_yaml(names[i], text, len, &role);
        cr_assert_eq(rv, 0, "%s: %s", names[i], rp_errmsg());
        versions_seen |= 1 << rbac_role_version(role);
        if (strncmp(names[i], "full-", 5) == 0) {
            const char *unknown[4];
            size_t nu = rbac_role_unknown(role, unknown, 4);
            cr_assert_eq(nu, 0, "%s: the spec's field %s is not known", names[i],
                         nu > 0 ? unknown[0] : "");
            /* The full files ask for per-session MFA and moderated SSH sessions. */
            const char *fc[4];
            cr_assert_eq(rbac_role_unenforced(role, fc, 4), 2, "%s", names[i]);
        }
        struct rp_buf mp, mp2;
        rp_buf_init(&mp);
        rp_buf_init(&mp2);
        cr_assert_eq(rbac_role_pack(role, &mp), 0);
        role_round_trip(&mp, names[i]);
        /* And through the YAML tctl get prints. */
        char *out = role_yaml(role);
        struct rbac_role *again = NULL;
        cr_assert_eq(rbac_role_parse_yaml("again", out, strlen(out), &again), 0, "%s: %s", names[i],
                     rp_errmsg());
        cr_assert_eq(rbac_role_pack(again, &mp2), 0);
        cr_assert(mp.len == mp2.len && memcmp(mp.data, mp2.data, mp.len) == 0,
                  "%s: changed through tctl get's YAML:\n%s", names[i], out);
        rbac_role_free(again);
        free(out);
        rp_buf_free(&mp);
        rp_buf_free(&mp2);
        rbac_role_free(role);
        free(text);
    }
    for (int v = RBAC_MIN_VERSION; v <= RBAC_MAX_VERSION; v++)
        cr_assert(versions_seen & (1 << v), "no fixture of version v%d", v);
}

Test(rbac_fixtures, every_bad_file_is_refused_with_its_error)
{
    char dir[PATH_MAX + 64], path[PATH_MAX + 200], names[64][128];
    fixture_dir("/bad", dir, sizeof dir);
    size_t n = list_yaml(dir, names, 64);
    cr_assert(n >= 8, "only %zu bad fixtures in %s", n, dir);
    for (size_t i = 0; i < n; i++) {
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        char *text = read_file(path, &len);
        /* The first line says what the error must read: "# expect: LINE: PATH: ...". */
        cr_assert(strncmp(text, "# expect: ", 10) == 0, "%s lacks its '# expect:' line", names[i]);
        char want[512];
        size_t wl = strcspn(text + 10, "\n");
        snprintf(want, sizeof want, "%s:%.*s", names[i], (int)wl, text + 10);
        struct rbac_role *role = NULL;
        int rv = rbac_role_parse_yaml(names[i], text, len, &role);
        cr_assert_eq(rv, RP_EINVAL, "%s was accepted", names[i]);
        cr_assert(strncmp(rp_errmsg(), want, strlen(want)) == 0, "%s: got '%s', want '%s'",
                  names[i], rp_errmsg(), want);
        free(text);
    }
}
