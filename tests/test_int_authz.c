/* tests/test_int_authz.c: a user's identity on the auth API gets exactly what the
 * rules of its roles allow (tctl -i IDENTITY), never secrets, and nothing once
 * the user is deleted. Every refusal is audited. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(int_authz, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

Test(int_authz, roles_rules_decide_what_a_user_identity_may_do)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(15000), "no preset roles");
    cl_make_identity("ed", "editor");
    cl_make_identity("acc", "access");
    char *err = NULL;

    /* The editor administers users and roles (through a follower: forwarded as ed). */
    cr_assert_eq(cl_tctl_as("ed", &err, "users", "ls", NULL), 0, "%s", err);
    free(err);
    cr_assert_eq(cl_tctl_as("ed", &err, "get", "role/access", NULL), 0, "%s", err);
    free(err);
    cr_assert_eq(cl_tctl_as("ed", &err, "tokens", "add", "--type=node", NULL), 0, "%s", err);
    free(err);
    /* ... but never reads secrets. */
    cr_assert_neq(cl_tctl_as("ed", &err, "tokens", "ls", NULL), 0);
    cr_assert(strstr(err, "hold secrets") != NULL, "%s", err);
    free(err);
    cr_assert_neq(cl_tctl_as("ed", &err, "get", "user_secret/ed", "--with-secrets", NULL), 0);
    free(err);

    /* access: no user administration, no cluster membership changes. */
    cr_assert_neq(cl_tctl_as("acc", &err, "users", "ls", NULL), 0);
    cr_assert(strstr(err, "acc may not list user") != NULL, "%s", err);
    free(err);
    cr_assert_neq(cl_tctl_as("acc", &err, "users", "rm", "ed", NULL), 0);
    free(err);
    cr_assert_neq(cl_tctl_as("acc", &err, "auth", "members", "rm", NULL), 0);
    free(err);

    /* A deleted user's certificate opens nothing, even before it expires. */
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "users", "rm", "ed", NULL), 0);
    free(out);
    cr_assert_neq(cl_tctl_as("ed", &err, "get", "role/access", NULL), 0);
    cr_assert(strstr(err, "no longer exists") != NULL, "%s", err);
    free(err);

    /* The refusals are audited under the users' names. */
    cr_assert_eq(run_tctl(1, &out, "events", "ls", "--type=auth", "--format=json", NULL), 0);
    cr_assert(strstr(out, "\"user\":\"acc\"") && strstr(out, "\"user\":\"ed\""), "%s", out);
    free(out);
    cluster_pass();
}

/* Roles are cached parsed by revision: a changed role takes effect at once. */
Test(int_authz, a_changed_role_applies_to_the_next_request)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(15000), "no preset roles");
    static const char *const with =
        "kind: role\nversion: v7\nmetadata:\n  name: ops\nspec:\n  allow:\n    rules:\n"
        "    - resources: [user]\n      verbs: [list, read]\n";
    static const char *const without =
        "kind: role\nversion: v7\nmetadata:\n  name: ops\nspec:\n  allow:\n    rules:\n"
        "    - resources: [role]\n      verbs: [list, read]\n";
    char path[600], *out = NULL, *err = NULL;
    snprintf(path, sizeof path, "%s/ops.yaml", CL->dir);
    cr_assert_eq(rp_write_file(path, with, strlen(with), 0644), 0);
    cr_assert_eq(run_tctl(1, &out, "create", path, NULL), 0);
    free(out);
    cl_make_identity("op", "ops");
    /* as_user talks to node 2; this cluster has one node. */
    CL->nodes[2] = CL->nodes[1];
    cr_assert_eq(cl_tctl_as("op", &err, "users", "ls", NULL), 0, "%s", err);
    free(err);
    cr_assert_eq(rp_write_file(path, without, strlen(without), 0644), 0);
    cr_assert_eq(run_tctl(1, &out, "create", "-f", path, NULL), 0);
    free(out);
    cr_assert_neq(cl_tctl_as("op", &err, "users", "ls", NULL), 0, "the old role still applied");
    cr_assert(strstr(err, "op may not list user") != NULL, "%s", err);
    free(err);
    cr_assert_eq(cl_tctl_as("op", &err, "get", "role/ops", NULL), 0, "%s", err);
    free(err);
    memset(&CL->nodes[2], 0, sizeof CL->nodes[2]);
    cluster_pass();
}
