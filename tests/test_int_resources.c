/* tests/test_int_resources.c: resources by file. A Teleport-style role file goes in
 * with tctl create, comes out with tctl get, clear errors name file, line and
 * field, and `tctl get all` fed to `tctl create -f` on an empty cluster restores
 * roles, users and tokens. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(int_resources, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

static const char *const role_dev = "kind: role\n"
                                    "version: v7\n"
                                    "metadata:\n"
                                    "  name: dev\n"
                                    "  description: developers\n"
                                    "spec:\n"
                                    "  options:\n"
                                    "    max_session_ttl: 8h\n"
                                    "    forward_agent: true\n"
                                    "  allow:\n"
                                    "    logins: ['{{internal.logins}}', ubuntu]\n"
                                    "    node_labels:\n"
                                    "      env: [test, staging]\n"
                                    "      team: '^dev-.*$'\n"
                                    "    rules:\n"
                                    "      - resources: [session]\n"
                                    "        verbs: [list, read]\n"
                                    "  deny:\n"
                                    "    logins: [root]\n";

static void write_tmp(const char *name, const char *text, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", CL->dir, name);
    cr_assert_eq(rp_write_file(path, text, strlen(text), 0644), 0, "%s", rp_errmsg());
}

static bool role_access_exists(void *arg)
{
    int i = *(int *)arg;
    char *out = NULL;
    int rv = run_tctl(i, &out, "get", "role/access", NULL);
    free(out);
    return rv == 0;
}

Test(int_resources, role_file_round_trip_errors_and_restore_on_an_empty_cluster)
{
    cluster_start(1);
    int one = 1;
    cr_assert(wait_until(15000, role_access_exists, &one), "no preset roles");
    char path[600], *out = NULL;
    write_tmp("dev.yaml", role_dev, path, sizeof path);
    cr_assert_eq(run_tctl(1, &out, "create", path, NULL), 0);
    free(out);
    /* Again without -f: refused, the role unchanged; with -f: overwritten. */
    cr_assert_neq(run_tctl(1, &out, "create", path, NULL), 0);
    free(out);
    cr_assert_eq(run_tctl(1, &out, "create", "-f", path, NULL), 0);
    free(out);
    cr_assert_eq(run_tctl(1, &out, "get", "role/dev", NULL), 0);
    cr_assert(strstr(out, "name: dev") && strstr(out, "max_session_ttl: 8h") &&
                  strstr(out, "\"^dev-.*$\"") && strstr(out, "- root"),
              "tctl get role/dev:\n%s", out);
    free(out);

    /* Bad files: the message names the file, the line and the field. */
    static const struct {
        const char *text, *want;
    } bad[] = {
        {"kind: role\nversion: v7\nmetadata:\n  name: x\nspec:\n  allow:\n    node_labels:\n"
         "      env: '^(x$'\n",
         "bad.yaml:8: spec.allow.node_labels.env: invalid regular expression"},
        {"kind: widget\nmetadata:\n  name: x\n", "bad.yaml:1: kind: unknown kind 'widget'"},
        {"kind: role\nversion: v99\nmetadata:\n  name: x\n", "bad.yaml:2: version"},
        {"kind: role\nversion: v7\nmetadata:\n  name: x\nspec:\n  allow:\n    logins: root\n",
         "bad.yaml:7: spec.allow.logins"},
        {"kind: role\nversion: v7\nmetadata: [\n", "bad.yaml:4:1: did not find expected node"},
    };
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        write_tmp("bad.yaml", bad[k].text, path, sizeof path);
        struct cl_run r;
        char tctl[600];
        snprintf(tctl, sizeof tctl, "%s/tctl", CL->build);
        char *args[] = {tctl, "-c", CL->nodes[1].cfg, "create", path, NULL};
        cl_run_argv(args, 15000, &r);
        cr_assert_neq(r.status, 0, "case %zu was accepted", k);
        cr_assert(strstr(r.err, bad[k].want) != NULL, "case %zu: want '%s' in: %s", k, bad[k].want,
                  r.err);
        cl_run_free(&r);
    }

    cr_assert_eq(
        run_tctl(1, &out, "users", "add", "alice", "--roles=dev,access", "--logins=alice", NULL),
        0);
    free(out);
    cr_assert_eq(run_tctl(1, &out, "tokens", "add", "--type=node", NULL), 0);
    free(out);
    char *all = NULL;
    cr_assert_eq(run_tctl(1, &all, "get", "all", NULL), 0);
    write_tmp("all.yaml", all, path, sizeof path);

    /* A second, empty cluster (node 2 bootstraps on its own) takes it all back. */
    node_prepare(2, 1, NULL, NULL);
    node_spawn(2);
    int two = 2;
    cr_assert(wait_until(30000, role_access_exists, &two), "the second cluster did not come up");
    cr_assert_eq(run_tctl(2, &out, "create", "-f", path, NULL), 0, "restoring get all");
    free(out);
    char *again = NULL;
    cr_assert_eq(run_tctl(2, &again, "get", "all", NULL), 0);
    /* Same roles, users and tokens; only revisions differ. */
    static const char *const must[] = {"name: dev", "name: alice", "- dev", "name: auditor",
                                       "max_session_ttl: 8h"};
    for (size_t k = 0; k < sizeof must / sizeof must[0]; k++)
        cr_assert(strstr(again, must[k]) != NULL, "restored cluster lacks '%s':\n%s", must[k],
                  again);
    size_t docs_a = 0, docs_b = 0;
    for (const char *p = all; (p = strstr(p, "\nkind: ")); p++)
        docs_a++;
    for (const char *p = again; (p = strstr(p, "\nkind: ")); p++)
        docs_b++;
    cr_assert_eq(docs_a, docs_b, "get all: %zu documents before, %zu after restore", docs_a,
                 docs_b);
    free(all);
    free(again);
    cluster_pass();
}
