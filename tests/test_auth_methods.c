/* tests/test_auth_methods.c: the auth API's method table (auth/authz.h).
 *
 * Every method against every caller: anonymous, each system role, each preset
 * role, and a user holding a role named "Admin" (a name grants nothing). The
 * expected answers are written out here by hand, one row per method, so a change
 * of the table that widens a right shows up as a failing cell. */
#include <criterion/criterion.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/authz.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"

enum caller {
    C_ANON,
    C_ADMIN,
    C_AUTH,
    C_NODE,
    C_PROXY,
    C_EDITOR,
    C_ACCESS,
    C_AUDITOR,
    C_FAKE_ADMIN, /* a user whose role is named "Admin" */
    C_N
};

static const char *const caller_names[C_N] = {
    "anonymous", "Admin",   "Auth",
    "Node",      "Proxy",   "editor",
    "access",    "auditor", "user-with-role-Admin",
};

/* Per method, a request and what each caller gets ('y' allowed, 'n' denied), in the
 * order of enum caller. */
static const struct {
    const char *method;
    const char *args_yaml; /* the request's arguments, as JSON-ish flow YAML */
    const char *expect;
} matrix[] = {
    {"ping", "{}", "yyyyyyyyy"},
    {"get", "{kind: role, name: access}", "nyyyyynnn"},
    {"list", "{kind: role}", "nyyyyynnn"},
    {"put", "{res: {kind: role, metadata: {name: r}}}", "nyynnynnn"},
    {"create", "{res: {kind: role, metadata: {name: r}}}", "nyynnynnn"},
    {"update", "{res: {kind: role, metadata: {name: r}}}", "nyynnynnn"},
    {"cas", "{res: {kind: role, metadata: {name: r}}, rev: 1}", "nyynnynnn"},
    {"delete", "{kind: role, name: r}", "nyynnynnn"},
    {"cdelete", "{kind: role, name: r, rev: 1}", "nyynnynnn"},
    {"batch", "{ops: [{op: put, res: {kind: role, metadata: {name: r}}}]}", "nyynnynnn"},
    {"watch", "{kinds: [role]}", "nyyyynnnn"},
    {"status", "{}", "nyyyynnnn"},
    {"member_status", "{}", "nyyyynnnn"},
    {"token_add", "{type: node, ttl_ms: 60000}", "nyynnynnn"},
    {"join", "{token: x}", "yyyyyyyyy"},
    {"member_rm", "{id: 2}", "nyynnnnnn"},
    {"user_add", "{name: bob, roles: [access]}", "nyynnynnn"},
    {"user_update", "{name: bob, roles: [access]}", "nyynnynnn"},
    {"user_rm", "{name: bob}", "nyynnynnn"},
    {"user_reset", "{name: bob}", "nyynnynnn"},
    {"invite_redeem", "{token: x, password: y}", "yyyyyyyyy"},
    {"sign_user", "{user: bob}", "nyynnnnnn"},
    {"authenticate", "{user: bob, password: y}", "yyyyyyyyy"},
    {"sign_host", "{host_id: h, role: Node}", "nyynnnnnn"},
    {"events", "{}", "nyynnnyyn"},
    {"audit_append", "{rid: x, events: []}", "nnynnnnnn"},
    {"heartbeat", "{res: {kind: node, metadata: {name: host-1}}, ttl_ms: 3000}", "nnnyynnnn"},
    {"emit_events", "{rid: x, events: []}", "nnnyynnnn"},
    {"renew_host", "{ssh_pubkey: x, tls_pubkey: y}", "nnnyynnnn"},
    {"rec_put", "{sid: 0b8e0c2a-8d5e-4f55-9a3c-1f2e3d4c5b6a, seq: 0, last: true}", "nnnynnnnn"},
    {"rec_list", "{}", "nyynnnnyn"},
    {"rec_get", "{sid: 0b8e0c2a-8d5e-4f55-9a3c-1f2e3d4c5b6a, seq: 0}", "nyynnnnyn"},
};

/* Flow YAML is also JSON-ish enough for lib/yaml_mp; parse it into msgpack. */
#include "lib/yaml.h"
#include "lib/yaml_mp.h"

static void parse_args(const char *yaml, struct rp_buf *buf, msgpack_unpacked *u)
{
    rp_buf_init(buf);
    cr_assert_eq(rp_ymp_parse_str("args.yaml", yaml, strlen(yaml), buf, NULL), 0, "%s: %s", yaml,
                 rp_errmsg());
    cr_assert_eq(rp_mp_parse(buf->data, buf->len, u), 0, "%s", rp_errmsg());
}

struct callers {
    struct rp_identity id[C_N];
    struct rbac_role *role[C_N];
    struct rbac_set *set[C_N];
};

static struct rbac_role *preset(const char *name)
{
    struct rp_buf b;
    msgpack_unpacked u;
    struct rbac_role *r = NULL;
    rp_buf_init(&b);
    cr_assert_eq(rbac_preset_pack(name, &b), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_mp_parse(b.data, b.len, &u), 0);
    cr_assert_eq(rbac_role_parse(&u.data, &r), 0, "%s", rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
    return r;
}

static char *groups_editor[] = {"editor"}, *groups_access[] = {"access"},
            *groups_auditor[] = {"auditor"}, *groups_admin[] = {"Admin"};

static void callers_init(struct callers *c)
{
    memset(c, 0, sizeof *c);
    static const enum rp_system_role sys[] = {RP_SYS_NONE, RP_SYS_ADMIN, RP_SYS_AUTH, RP_SYS_NODE,
                                              RP_SYS_PROXY};
    for (int i = C_ADMIN; i <= C_PROXY; i++) {
        c->id[i].name = "host-1";
        c->id[i].system_role = sys[i];
        c->id[i].host_id = "host-1";
    }
    char **groups[] = {groups_editor, groups_access, groups_auditor, groups_admin};
    const char *names[] = {"editor", "access", "auditor"};
    for (int i = C_EDITOR; i <= C_FAKE_ADMIN; i++) {
        c->id[i].name = "alice";
        c->id[i].groups = groups[i - C_EDITOR];
        c->id[i].n_groups = 1;
        if (i < C_FAKE_ADMIN) {
            c->role[i] = preset(names[i - C_EDITOR]);
        } else {
            /* A role that happens to be called Admin (the write path refuses the name;
             * here it is built directly): its name is all it has, and grants nothing. */
            const char *y = "kind: role\nversion: v7\nmetadata: {name: Admin}\nspec: {}\n";
            cr_assert_eq(rbac_role_parse_yaml("Admin", y, strlen(y), &c->role[i]), 0, "%s",
                         rp_errmsg());
        }
        cr_assert_eq(rbac_set_new(&c->role[i], 1, NULL, &c->set[i]), 0, "%s", rp_errmsg());
    }
}

static void callers_free(struct callers *c)
{
    for (int i = 0; i < C_N; i++) {
        rbac_set_free(c->set[i]);
        rbac_role_free(c->role[i]);
    }
}

Test(auth_methods, every_row_names_a_permission_a_route_and_a_handler)
{
    size_t n;
    const struct auth_method *m = auth_methods(&n);
    cr_assert_gt(n, 0);
    for (size_t i = 0; i < n; i++) {
        cr_assert_not_null(m[i].name);
        cr_assert_not_null(m[i].handler, "%s has no handler", m[i].name);
        cr_expect(m[i].anonymous || m[i].system != 0 || m[i].resource != NULL,
                  "method %s names no permission: nobody may call it", m[i].name);
        cr_expect((m[i].resource == NULL) == (m[i].verb == NULL),
                  "method %s: a user permission needs both resource and verb", m[i].name);
        cr_expect_neq(m[i].route, AUTH_ROUTE_UNSET, "method %s has no route", m[i].name);
        /* Writes leave an audit event; reads and streams do not have to. */
        if (m[i].route == AUTH_ROUTE_LEADER)
            cr_expect_not_null(m[i].audit, "method %s writes but names no audit event", m[i].name);
        for (size_t k = 0; k < i; k++)
            cr_expect_str_neq(m[i].name, m[k].name, "method %s is in the table twice", m[i].name);
    }
}

Test(auth_methods, the_matrix_covers_every_method)
{
    size_t n;
    const struct auth_method *m = auth_methods(&n);
    for (size_t i = 0; i < n; i++) {
        bool found = false;
        for (size_t k = 0; k < sizeof matrix / sizeof matrix[0]; k++)
            found = found || strcmp(matrix[k].method, m[i].name) == 0;
        cr_expect(found, "method %s has no row in this test's matrix", m[i].name);
    }
}

Test(auth_methods, every_method_against_every_caller)
{
    struct callers c;
    callers_init(&c);
    for (size_t k = 0; k < sizeof matrix / sizeof matrix[0]; k++) {
        const struct auth_method *m = auth_method_find(matrix[k].method);
        cr_assert_not_null(m, "method %s is not in the table", matrix[k].method);
        struct rp_buf b;
        msgpack_unpacked u;
        parse_args(matrix[k].args_yaml, &b, &u);
        for (int i = 0; i < C_N; i++) {
            struct auth_grant g;
            const struct rp_identity *id = i == C_ANON ? NULL : &c.id[i];
            int rv = auth_authorize(m, id, c.set[i], &u.data, false, &g);
            bool want = matrix[k].expect[i] == 'y';
            cr_expect_eq(rv == 0, want, "%s by %s: expected %s, got %s (%s)", m->name,
                         caller_names[i], want ? "allowed" : "denied",
                         rv == 0 ? "allowed" : "denied", rv == 0 ? "" : rp_errmsg());
            if (rv != 0)
                cr_expect_eq(rv, RP_EDENIED);
        }
        msgpack_unpacked_destroy(&u);
        rp_buf_free(&b);
    }
    callers_free(&c);
}

Test(auth_methods, auth_tokens_are_for_admin_identities_only)
{
    struct callers c;
    callers_init(&c);
    struct rp_buf b;
    msgpack_unpacked u;
    parse_args("{type: auth, ttl_ms: 60000}", &b, &u);
    const struct auth_method *m = auth_method_find("token_add");
    for (int i = 0; i < C_N; i++) {
        struct auth_grant g;
        int rv = auth_authorize(m, i == C_ANON ? NULL : &c.id[i], c.set[i], &u.data, false, &g);
        cr_expect_eq(rv == 0, i == C_ADMIN || i == C_AUTH, "auth token by %s: %s", caller_names[i],
                     rv == 0 ? "allowed" : rp_errmsg());
    }
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
    callers_free(&c);
}

/* A role that may create, read and list roles but not update them. */
static struct rbac_set *create_only(struct rbac_role **role)
{
    const char *y = "kind: role\nversion: v7\nmetadata: {name: maker}\nspec:\n  allow:\n"
                    "    rules:\n    - resources: [role]\n      verbs: [create, read, list]\n";
    struct rbac_set *set = NULL;
    cr_assert_eq(rbac_role_parse_yaml("maker", y, strlen(y), role), 0, "%s", rp_errmsg());
    cr_assert_eq(rbac_set_new(role, 1, NULL, &set), 0, "%s", rp_errmsg());
    return set;
}

Test(auth_methods, put_needs_update_to_overwrite_and_becomes_create_otherwise)
{
    struct rbac_role *role;
    struct rbac_set *set = create_only(&role);
    char *groups[] = {"maker"};
    struct rp_identity alice = {.name = "alice", .groups = groups, .n_groups = 1};
    struct rp_buf b;
    msgpack_unpacked u;
    parse_args("{res: {kind: role, metadata: {name: access}}}", &b, &u);
    const struct auth_method *put = auth_method_find("put");
    struct auth_grant g;
    cr_expect_eq(auth_authorize(put, &alice, set, &u.data, true, &g), RP_EDENIED,
                 "overwriting an existing role needs update");
    cr_expect(strstr(rp_errmsg(), "update") != NULL, "%s", rp_errmsg());
    cr_assert_eq(auth_authorize(put, &alice, set, &u.data, false, &g), 0, "%s", rp_errmsg());
    cr_expect_str_eq(g.write_op, "create", "a create-only put must fail if the role appears");
    /* The batch form of the same overwrite. */
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
    parse_args("{ops: [{op: put, res: {kind: role, metadata: {name: access}}}]}", &b, &u);
    cr_expect_eq(auth_authorize(auth_method_find("batch"), &alice, set, &u.data, false, &g),
                 RP_EDENIED);
    cr_expect(strstr(rp_errmsg(), "may not update role (batch)") != NULL, "%s", rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
    rbac_set_free(set);
    rbac_role_free(role);
}

Test(auth_methods, users_never_receive_secrets)
{
    struct callers c;
    callers_init(&c);
    struct rp_buf b;
    msgpack_unpacked u;
    parse_args("{kind: cert_authority, name: user, with_secrets: true}", &b, &u);
    struct auth_grant g;
    cr_expect_eq(auth_authorize(auth_method_find("get"), &c.id[C_EDITOR], c.set[C_EDITOR], &u.data,
                                false, &g),
                 RP_EDENIED);
    cr_expect(strstr(rp_errmsg(), "secrets") != NULL, "%s", rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
    callers_free(&c);
}

/* auth/auth.h lists every method in a table of its own comment: it must list
 * exactly the methods of the table, in the same order. */
Test(auth_methods, the_list_in_auth_h_is_the_table)
{
    char *text = NULL;
    size_t len = 0;
    const char *paths[] = {"auth/auth.h", "../auth/auth.h"};
    for (size_t i = 0; i < 2 && text == NULL; i++)
        if (rp_read_file(paths[i], 1 << 20, &text, &len) != 0)
            text = NULL;
    cr_assert_not_null(text, "auth/auth.h not found from the working directory");
    regex_t re;
    cr_assert_eq(regcomp(&re, "^ \\*   ([a-z_]+) +\\{", REG_EXTENDED | REG_NEWLINE), 0);
    size_t n;
    const struct auth_method *m = auth_methods(&n);
    size_t k = 0;
    const char *p = text;
    regmatch_t g[2];
    while (regexec(&re, p, 2, g, 0) == 0) {
        int l = (int)(g[1].rm_eo - g[1].rm_so);
        cr_assert_lt(k, n, "auth/auth.h lists %.*s, which is not in the table", l, p + g[1].rm_so);
        cr_expect(strlen(m[k].name) == (size_t)l && strncmp(m[k].name, p + g[1].rm_so, l) == 0,
                  "auth/auth.h lists %.*s where the table has %s", l, p + g[1].rm_so, m[k].name);
        k++;
        p += g[0].rm_eo;
    }
    cr_expect_eq(k, n, "auth/auth.h lists %zu methods, the table has %zu", k, n);
    regfree(&re);
    free(text);
}
