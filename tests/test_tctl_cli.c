/* tests/test_tctl_cli.c: tctl refuses bad command lines before dialing anyone,
 * with an error naming the flag and what it expected. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/lib/cluster.h"

static struct cl_run run(const char *a1, const char *a2, const char *a3, const char *a4)
{
    char tctl[600];
    const char *build = getenv("RP_BUILD");
    snprintf(tctl, sizeof tctl, "%s/tctl", build ? build : "build");
    char *argv[] = {tctl, "-c", "/nonexistent/raftport.yaml", (char *)a1, (char *)a2,
                    (char *)a3, (char *)a4, NULL};
    struct cl_run r;
    cl_run_argv(argv, 10000, &r);
    return r;
}

Test(tctl_cli, unknown_token_type_is_named)
{
    struct cl_run r = run("tokens", "add", "--type=bogus", NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "--type=bogus: expected auth, node or proxy") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, token_ttl_over_48h_is_refused)
{
    struct cl_run r = run("tokens", "add", "--type=node", "--ttl=72h");
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "at most 48h") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, bad_duration_and_format_are_named)
{
    struct cl_run r = run("tokens", "add", "--type=node", "--ttl=5x");
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "--ttl") != NULL && strstr(r.err, "unit") != NULL, "%s", r.err);
    cl_run_free(&r);
    r = run("status", "--format=xml", NULL, NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "expected text, json or yaml") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, missing_config_says_which_file)
{
    struct cl_run r = run("status", NULL, NULL, NULL);
    cr_assert_eq(r.status, 1);
    cr_assert(strstr(r.err, "/nonexistent/raftport.yaml") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, members_rm_needs_a_numeric_id)
{
    struct cl_run r = run("auth", "members", "rm", "abc");
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "'abc' is not a member id") != NULL, "%s", r.err);
    cl_run_free(&r);
}
