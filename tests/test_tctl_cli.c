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
    char *argv[] = {tctl,       "-c",       "/nonexistent/raftport.yaml",
                    (char *)a1, (char *)a2, (char *)a3,
                    (char *)a4, NULL};
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

/* Every row of tctl's verb table, as its usage shows it. */
static const char *const commands[] = {
    "status",
    "tokens add",
    "tokens ls",
    "tokens rm",
    "auth members ls",
    "auth members rm",
    "auth export",
    "auth sign",
    "get",
    "create",
    "rm",
    "users add",
    "users ls",
    "users rm",
    "users reset",
    "users update",
    "events ls",
    "lock",
    "locks ls",
    "version",
    "help",
};

Test(tctl_cli, usage_lists_every_command)
{
    struct cl_run r = run("help", NULL, NULL, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        char line[64];
        snprintf(line, sizeof line, "\n  %s ", commands[i]);
        cr_assert(strstr(r.out, line) != NULL, "usage lacks '%s':\n%s", commands[i], r.out);
    }
    cl_run_free(&r);
    /* No command at all: the same usage, on stderr, as a usage error. */
    r = run(NULL, NULL, NULL, NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "\n  locks ls ") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, each_command_has_its_own_help)
{
    struct cl_run r = run("lock", "--help", NULL, NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strncmp(r.out, "usage: tctl lock --user=NAME", 28) == 0, "%s", r.out);
    cl_run_free(&r);
    r = run("help", "tokens", "add", NULL);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strncmp(r.out, "usage: tctl tokens add --type=TYPE", 34) == 0, "%s", r.out);
    cl_run_free(&r);
}

Test(tctl_cli, unknown_flag_names_the_command_and_its_usage)
{
    struct cl_run r = run("tokens", "add", "--foo", NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "tctl tokens add: unknown flag --foo; usage: tctl tokens add "
                            "--type=TYPE") != NULL,
              "%s", r.err);
    cl_run_free(&r);
    /* A flag of another command is unknown here too. */
    r = run("status", "--roles=access", NULL, NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "tctl status: unknown flag --roles;") != NULL, "%s", r.err);
    cl_run_free(&r);
    r = run("tokens", "add", "--type", NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "flag --type needs a value") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, unknown_command_lists_the_commands_that_start_alike)
{
    struct cl_run r = run("tokens", "frob", NULL, NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "unknown command 'tokens frob'") != NULL, "%s", r.err);
    cr_assert(strstr(r.err, "tokens add --type=TYPE") != NULL, "%s", r.err);
    cl_run_free(&r);
    r = run("get", "role/a", "role/b", NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "unexpected argument 'role/b'") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, lock_needs_a_target)
{
    struct cl_run r = run("lock", "--message=maintenance", NULL, NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "give at least one target") != NULL, "%s", r.err);
    cl_run_free(&r);
}

Test(tctl_cli, lock_refuses_empty_targets_control_characters_and_bad_ttl)
{
    struct cl_run r = run("lock", "--user=", NULL, NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "lock user is empty") != NULL, "%s", r.err);
    cl_run_free(&r);
    r = run("lock", "--role=dev", "--message=a\nb", NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "message holds a control character") != NULL, "%s", r.err);
    cl_run_free(&r);
    r = run("lock", "--server-id=h1", "--ttl=5x", NULL);
    cr_assert_eq(r.status, 2);
    cr_assert(strstr(r.err, "tctl lock: --ttl") != NULL, "%s", r.err);
    cl_run_free(&r);
    /* A valid lock gets past the checks: it fails only on the missing config. */
    r = run("lock", "--login=root", "--ttl=1h", NULL);
    cr_assert_eq(r.status, 1, "%s", r.err);
    cr_assert(strstr(r.err, "/nonexistent/raftport.yaml") != NULL, "%s", r.err);
    cl_run_free(&r);
}
