/* tests/test_int_jepsen.c: the Jepsen smoke run of `make test`.
 *
 * Each workload runs for JEPSEN_SMOKE_TIME seconds (default 30) against 5 auth
 * servers in network namespaces, under partitions and kills, through the real
 * harness (build/jepsen-run), and must come out valid. Then the test-only daemon
 * whose followers answer reads without asking the leader (build/raftport-stale)
 * must be caught: the register checker has to call its history non-linearizable.
 * Every run must leave no namespace, bridge or process behind. Needs root. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "jepsen/history.h"
#include "tests/lib/cluster.h"

static const char *build_dir(void)
{
    const char *b = getenv("RP_BUILD");
    return b ? b : "build";
}

static int smoke_time(void)
{
    const char *t = getenv("JEPSEN_SMOKE_TIME");
    int v = t ? atoi(t) : 30;
    return v >= 5 ? v : 30;
}

static bool leftovers(void)
{
    char *argv[] = {"sh", "-c", "ip netns list | grep rpj-; ip link show rpj-br0 2>/dev/null",
                    NULL};
    struct cl_run r;
    cl_run_argv(argv, 10000, &r);
    bool any = r.out && r.out[0] != '\0';
    if (any)
        fprintf(stderr, "left behind:\n%s\n", r.out);
    cl_run_free(&r);
    return any;
}

/* The "valid" member of STORE/NAME/latest/results.json and of its checker @model. */
static void read_results(const char *store, const char *name, const char *model, int *valid,
                         int *model_valid)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s/latest/results.json", store, name);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "no %s", path);
    char *text = calloc(1, 1 << 20);
    size_t n = fread(text, 1, (1 << 20) - 1, f);
    fclose(f);
    struct jepsen_arena a;
    struct jepsen_json j;
    jepsen_arena_init(&a);
    cr_assert_eq(jepsen_json_parse(text, n, &a, &j), 0, "%s is not JSON", path);
    const struct jepsen_json *v = jepsen_json_get(&j, "valid");
    const struct jepsen_json *m = jepsen_json_get(jepsen_json_get(&j, "checkers"), model);
    const struct jepsen_json *mv = m ? jepsen_json_get(m, "valid") : NULL;
    cr_assert(v && mv, "%s: no valid field for the run or for checker %s", path, model);
    *valid = v->type == JEPSEN_JSON_TRUE ? 1 : v->type == JEPSEN_JSON_FALSE ? 0 : 2;
    *model_valid = mv->type == JEPSEN_JSON_TRUE ? 1 : mv->type == JEPSEN_JSON_FALSE ? 0 : 2;
    jepsen_arena_free(&a);
    free(text);
}

/* Runs one jepsen-run; returns its exit status, with the summary line checked. */
static int run(const char *workload, const char *nemesis, const char *daemon, const char *name,
               int seconds, const char *store)
{
    char exe[600], w[64], n[96], t[32], nm[128], st[700], d[700];
    snprintf(exe, sizeof exe, "%s/jepsen-run", build_dir());
    snprintf(w, sizeof w, "--workload=%s", workload);
    snprintf(n, sizeof n, "--nemesis=%s", nemesis);
    snprintf(t, sizeof t, "--time=%d", seconds);
    snprintf(nm, sizeof nm, "--name=%s", name);
    snprintf(st, sizeof st, "--store=%s", store);
    snprintf(d, sizeof d, "--daemon=%s", daemon ? daemon : "");
    char *argv[] = {exe, w, n, t, "--nodes=5", "--seed=4242", nm, st, daemon ? d : NULL, NULL};
    struct cl_run r;
    cl_run_argv(argv, (seconds + 240) * 1000, &r);
    if (r.status != 0) {
        size_t len = r.err ? strlen(r.err) : 0;
        fprintf(stderr, "%s: exit %d; stderr ends:\n%s\n", name, r.status,
                len > 3000 ? r.err + len - 3000
                : r.err    ? r.err
                           : "");
    }
    cr_assert(r.out && strstr(r.out, "jepsen-run ") && strstr(r.out, "valid="),
              "%s: no summary line on stdout: %s", name, r.out ? r.out : "");
    int status = r.status;
    cl_run_free(&r);
    return status;
}

static char g_store[512];

static void setup(void)
{
    if (geteuid() != 0)
        cr_skip_test("the Jepsen harness needs root (network namespaces, nftables)");
    snprintf(g_store, sizeof g_store, "%s/jepsen-smoke", build_dir());
}

static void smoke(const char *workload)
{
    char name[64];
    snprintf(name, sizeof name, "smoke-%s", workload);
    int status = run(workload, "partition,kill", NULL, name, smoke_time(), g_store);
    int valid, model_valid;
    read_results(g_store, name, workload, &valid, &model_valid);
    cr_expect_eq(model_valid, 1, "%s: the %s checker says %d (1 = valid)", name, workload,
                 model_valid);
    cr_expect_eq(status, 0, "%s: jepsen-run exit %d", name, status);
    cr_expect_eq(valid, 1, "%s: run verdict %d", name, valid);
    cr_expect(!leftovers(), "%s left namespaces or the bridge behind", name);
}

TestSuite(jepsen_smoke, .init = setup, .timeout = 600);

Test(jepsen_smoke, register)
{
    smoke("register");
}
Test(jepsen_smoke, set)
{
    smoke("set");
}
Test(jepsen_smoke, unique)
{
    smoke("unique");
}
Test(jepsen_smoke, watch)
{
    smoke("watch");
}

/* The harness proves itself: stale follower reads must be reported non-linearizable. */
Test(jepsen_smoke, stale_reads_are_caught)
{
    char daemon[600];
    snprintf(daemon, sizeof daemon, "%s/raftport-stale", build_dir());
    cr_assert_eq(access(daemon, X_OK), 0, "%s was not built", daemon);
    int status = run("register", "partition", daemon, "smoke-stale-reads", 20, g_store);
    int valid, model_valid;
    read_results(g_store, "smoke-stale-reads", "register", &valid, &model_valid);
    cr_expect_eq(model_valid, 0, "stale reads were not caught: register checker says %d",
                 model_valid);
    cr_expect_eq(status, 1, "jepsen-run exit %d, expected 1 (invalid)", status);
    cr_expect(!leftovers(), "the stale-read run left namespaces or the bridge behind");
}
