/* tests/test_int_agent_join.c: `raftport start --roles=node` joining a real cluster.
 *
 * A node joins once with a token, keeps its identity in data_dir (owner-only), starts
 * again without the token, and heartbeats a node resource that disappears once it
 * stops. Every way a join can fail (bad token, expired token, wrong CA pin, no auth
 * server) ends the process with one clear line and a non-zero exit. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"

TestSuite(agent_join, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

/* Runs `raftport start --roles=node` with flags for agent dir @dir and expects it to
 * fail: returns its stderr (free it) after asserting a non-zero exit and one line. */
static char *join_fails(const char *token, const char *pin, const char *auth, const char *dir)
{
    char exe[600], a_tok[256], a_pin[160], a_auth[300], a_dir[600];
    snprintf(exe, sizeof exe, "%s/raftport", CL->build);
    snprintf(a_tok, sizeof a_tok, "--token=%s", token);
    snprintf(a_pin, sizeof a_pin, "--ca-pin=%s", pin);
    snprintf(a_auth, sizeof a_auth, "--auth-server=%s", auth);
    snprintf(a_dir, sizeof a_dir, "--data-dir=%s", dir);
    char *argv[] = {exe,    "start", "--roles=node",   a_tok, a_pin,
                    a_auth, a_dir,   "--nodename=bad", NULL};
    struct cl_run r;
    cl_run_argv(argv, 60000, &r);
    cr_assert_neq(r.status, 0, "the join was expected to fail; stderr:\n%s", r.err);
    cr_assert_neq(r.status, -1, "raftport did not exit in time; stderr:\n%s", r.err);
    /* Exactly one line on stderr, and nothing on stdout. */
    char *err = r.err;
    size_t n = strlen(err);
    while (n > 0 && err[n - 1] == '\n')
        err[--n] = '\0';
    cr_assert_null(strchr(err, '\n'), "more than one line on stderr:\n%s", err);
    cr_assert_str_empty(r.out);
    char *line = strdup(err);
    cr_assert(strncmp(line, "raftport: ", 10) == 0, "the line is not raftport's: %s", line);
    free(r.out);
    free(r.err);
    return line;
}

static bool file_mode_is(const char *dir, const char *file, unsigned mode)
{
    char path[1200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, file);
    return stat(path, &st) == 0 && (st.st_mode & 0777) == mode;
}

struct node_seen {
    const char *host_id;
    char host_key[256]; /* data_dir/keys/ssh_host_key.pub */
    bool present;
    bool has_cmd_label;
    bool has_static_label;
    bool has_host_key;
    bool stuck_timed_out; /* the "stuck" label (if configured) reads "error" */
};

/* `tctl nodes ls --format=json` lists the node with its static label, its command
 * label holding what `uname -m` prints, and the SSH host key of its data_dir. */
static bool node_listed(void *arg)
{
    struct node_seen *s = arg;
    char *out = NULL;
    s->present = s->has_cmd_label = s->has_static_label = s->has_host_key = false;
    if (run_tctl(1, &out, "nodes", "ls", "--format=json", NULL) != 0) {
        free(out);
        return false;
    }
    struct cl_json *j = cl_json_parse(out);
    free(out);
    cr_assert_not_null(j, "tctl nodes ls --format=json printed no JSON");
    struct utsname u;
    uname(&u);
    for (size_t i = 0; j->type == CLJ_ARR && i < j->n; i++) {
        const struct cl_json *n = &j->items[i];
        if (strcmp(cl_json_str(n, "name"), s->host_id) != 0)
            continue;
        s->present = true;
        s->has_static_label = strcmp(cl_json_str(cl_json_get(n, "labels"), "env"), "test") == 0;
        const struct cl_json *arch = cl_json_get(cl_json_get(n, "cmd_labels"), "arch");
        s->has_cmd_label = strcmp(cl_json_str(arch, "result"), u.machine) == 0;
        s->has_host_key = strcmp(cl_json_str(n, "host_key"), s->host_key) == 0;
        const struct cl_json *stuck = cl_json_get(cl_json_get(n, "cmd_labels"), "stuck");
        s->stuck_timed_out = stuck == NULL || strcmp(cl_json_str(stuck, "result"), "error") == 0;
    }
    cl_json_free(j);
    return s->present && s->has_cmd_label && s->has_static_label && s->has_host_key &&
           s->stuck_timed_out;
}

static bool node_gone(void *arg)
{
    struct node_seen *s = arg;
    char *out = NULL;
    if (run_tctl(1, &out, "nodes", "ls", "--format=json", NULL) != 0) {
        free(out);
        return false;
    }
    bool gone = strstr(out, s->host_id) == NULL && strstr(out, "[") != NULL;
    free(out);
    return gone;
}

static void read_host_id(int i, char *out, size_t n)
{
    char path[600];
    snprintf(path, sizeof path, "%s/host_uuid", AG[i].dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s is missing", path);
    cr_assert_not_null(fgets(out, (int)n, f));
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
    cr_assert_eq(strlen(out), 36, "host_uuid '%s' is not a UUID", out);
    cr_assert_eq(out[14], '4', "host_uuid '%s' is not a version 4 UUID", out);
}

Test(agent_join, join_stores_credentials_owner_only_and_restarts_without_token)
{
    cluster_start(1);
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare(1, token, NULL);
    ag_spawn(1);
    bool ok = ag_wait_log(1, "node agent running", 30000);
    if (!ok)
        ag_print_log_tail(1, 30);
    cr_assert(ok, "the agent did not start");
    cr_assert(ag_log_contains(1, "joined cluster"));

    char host_id[64];
    read_host_id(1, host_id, sizeof host_id);
    const char *files[] = {"host_uuid",
                           "keys/node.key",
                           "keys/node.crt",
                           "keys/ca.crt",
                           "keys/ssh_host_key",
                           "keys/ssh_host_key.pub",
                           "keys/ssh_host_key-cert.pub",
                           "keys/user_ca.pub",
                           "keys/host_ca.pub",
                           "keys/cluster_name"};
    for (size_t k = 0; k < sizeof files / sizeof files[0]; k++)
        cr_assert(file_mode_is(AG[1].dir, files[k], 0600), "%s/%s is not there with mode 0600",
                  AG[1].dir, files[k]);
    cr_assert(file_mode_is(AG[1].dir, "keys", 0700));
    cr_assert(file_mode_is(AG[1].dir, ".", 0700));

    /* The cache reaches disk once auth streamed it. */
    cr_assert(ag_wait_log(1, "cache in step with auth", 20000));
    cr_assert(file_mode_is(AG[1].dir, "cache", 0600));

    int st = ag_term(1, 15000);
    cr_assert(st != -1 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "SIGTERM: status %d", st);
    cr_assert(ag_log_contains(1, "SIGTERM: stopping"));

    /* Restart without the token: the identity on disk is enough. */
    ag_prepare(1, NULL, NULL);
    ag_spawn(1);
    cr_assert(ag_wait_log(1, "loaded the cache from disk", 30000));
    cr_assert(ag_wait_log(1, "node agent running", 30000));
    char again[64];
    read_host_id(1, again, sizeof again);
    cr_assert_str_eq(again, host_id, "the host id changed across a restart");
    cr_assert_eq(ag_log_count(1, "joined cluster"), 1, "the node joined a second time");
    /* SIGINT stops it as SIGTERM does. */
    kill(AG[1].pid, SIGINT);
    uint64_t end = cl_now_ms() + 15000;
    while (ag_alive(1) && cl_now_ms() < end)
        cl_sleep_ms(20);
    cr_assert_not(ag_alive(1), "SIGINT did not stop the agent");
    cr_assert(WIFEXITED(AG[1].last_status) && WEXITSTATUS(AG[1].last_status) == 0);
    cr_assert(ag_log_contains(1, "SIGINT: stopping"));
    ag_stop_all();
    cluster_pass();
}

Test(agent_join, presence_appears_with_labels_and_expires_after_kill9)
{
    cluster_start(1);
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    /* A command that never ends must cost its label, not the heartbeats. */
    ag_prepare(1, token,
               "  commands:\n"
               "  - {name: arch, command: [uname, -m], period: 1s}\n"
               "  - {name: stuck, command: [sleep, \"600\"], period: 1s}\n");
    ag_spawn(1);
    char host_id[64];
    cr_assert(ag_wait_log(1, "node agent running", 30000));
    read_host_id(1, host_id, sizeof host_id);
    struct node_seen s = {.host_id = host_id};
    char path[700];
    snprintf(path, sizeof path, "%s/keys/ssh_host_key.pub", AG[1].dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(s.host_key, sizeof s.host_key, f));
    fclose(f);
    s.host_key[strcspn(s.host_key, "\n")] = '\0';
    bool ok = wait_until(20000, node_listed, &s);
    if (!ok)
        ag_print_log_tail(1, 30);
    cr_assert(ok,
              "node %s not listed with its labels and host key (present %d, static %d, "
              "command %d, host key %d, stuck command cut %d)",
              host_id, s.present, s.has_static_label, s.has_cmd_label, s.has_host_key,
              s.stuck_timed_out);
    cr_assert(ag_log_contains(1, "command label stuck: sleep did not finish within 1000 ms"));

    /* The published host certificate is the host CA's, for the key of data_dir:
     * known_hosts lists only nodes whose certificate checks against the host CA. */
    char *kh = NULL;
    cr_assert_eq(run_tctl(1, &kh, "nodes", "ls", "--format=known_hosts", NULL), 0);
    cr_assert(strstr(kh, host_id) != NULL && strstr(kh, s.host_key) != NULL,
              "known_hosts lacks the node's checked host key:\n%s", kh);
    free(kh);

    /* heartbeat_period 1s: ttl 3s, then expiry removes it. */
    ag_kill9(1);
    cr_assert(wait_until(30000, node_gone, &s), "node %s still listed after its ttl", host_id);
    ag_stop_all();
    cluster_pass();
}

Test(agent_join, bad_token_fails_with_one_clear_line)
{
    cluster_start(1);
    char dir[600];
    snprintf(dir, sizeof dir, "%s/badtoken", CL->dir);
    char *line =
        join_fails("0123456789abcdef0123456789abcdef", CL->ca_pin, CL->nodes[1].api_addr, dir);
    cr_assert(strstr(line, "join refused: the token is invalid, expired") != NULL, "got: %s", line);
    free(line);
    cluster_pass();
}

Test(agent_join, expired_token_fails_with_one_clear_line)
{
    cluster_start(1);
    char token[128], dir[600];
    cl_add_token(1, "node", "1s", token, sizeof token);
    cl_sleep_ms(1500); /* the token's whole life: expiry is what this test is about */
    snprintf(dir, sizeof dir, "%s/expired", CL->dir);
    char *line = join_fails(token, CL->ca_pin, CL->nodes[1].api_addr, dir);
    cr_assert(strstr(line, "join refused: the token is invalid, expired") != NULL, "got: %s", line);
    free(line);
    cluster_pass();
}

Test(agent_join, wrong_ca_pin_fails_before_sending_the_token)
{
    cluster_start(1);
    char token[128], dir[600];
    cl_add_token(1, "node", NULL, token, sizeof token);
    snprintf(dir, sizeof dir, "%s/wrongpin", CL->dir);
    const char *pin = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    char *line = join_fails(token, pin, CL->nodes[1].api_addr, dir);
    cr_assert(strstr(line, "CA pin mismatch") != NULL, "got: %s", line);
    free(line);
    /* Nothing reached the server: no join was audited for this host. */
    cr_assert_not(node_log_contains(1, "nodename bad"));
    cr_assert_not(node_log_contains(1, "bad ("), "the auth server saw the join");
    cluster_pass();
}

Test(agent_join, unreachable_auth_server_fails_with_one_clear_line)
{
    cluster_start(1);
    char token[128], dir[600];
    cl_add_token(1, "node", NULL, token, sizeof token);
    snprintf(dir, sizeof dir, "%s/unreachable", CL->dir);
    /* Port 1 on loopback: nothing listens there. */
    char *line = join_fails(token, CL->ca_pin, "127.0.0.1:1", dir);
    cr_assert(strstr(line, "no auth server answered") != NULL &&
                  strstr(line, "cannot reach auth server 127.0.0.1:1") != NULL,
              "got: %s", line);
    free(line);
    cluster_pass();
}

struct label_value {
    const char *host_id;
    char seen[64];
};

/* The current result of the command label "clock" of the node, into ->seen. */
static bool clock_label(void *arg)
{
    struct label_value *lv = arg;
    char *out = NULL;
    lv->seen[0] = '\0';
    if (run_tctl(1, &out, "nodes", "ls", "--format=json", NULL) != 0) {
        free(out);
        return false;
    }
    struct cl_json *j = cl_json_parse(out);
    free(out);
    for (size_t i = 0; j && j->type == CLJ_ARR && i < j->n; i++) {
        const struct cl_json *n = &j->items[i];
        if (strcmp(cl_json_str(n, "name"), lv->host_id) == 0)
            snprintf(lv->seen, sizeof lv->seen, "%s",
                     cl_json_str(cl_json_get(cl_json_get(n, "cmd_labels"), "clock"), "result"));
    }
    cl_json_free(j);
    return lv->seen[0] != '\0';
}

static char first_value[64];
static bool clock_moved(void *arg)
{
    struct label_value *lv = arg;
    return clock_label(lv) && strcmp(lv->seen, first_value) != 0;
}

Test(agent_join, a_changed_command_label_is_heartbeated_at_once)
{
    cluster_start(1);
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    /* Heartbeats every hour: only the early heartbeat of a changed label can publish
     * the clock's new second within the test. */
    ag_prepare(1, token,
               "  commands: [{name: clock, command: [date, \"+%s\"], period: 1s}]\n"
               "  heartbeat_period: 1h\n");
    ag_spawn(1);
    cr_assert(ag_wait_log(1, "node agent running", 30000));
    char host_id[64];
    read_host_id(1, host_id, sizeof host_id);
    struct label_value lv = {.host_id = host_id};
    cr_assert(wait_until(10000, clock_label, &lv), "the node is not listed");
    snprintf(first_value, sizeof first_value, "%s", lv.seen);
    cr_assert(wait_until(10000, clock_moved, &lv),
              "the label still reads %s: a changed result was not heartbeated early", lv.seen);
    ag_stop_all();
    cluster_pass();
}

Test(agent_join, an_auth_server_on_an_older_major_stops_the_node_unless_skip_version_check)
{
    /* Auth announces our own version (major 0); the node runs as 1.0.0. */
    cluster_start(1);
    cr_assert(cl_wait_presets(20000));
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare(1, token, NULL);
    static const char *const env[] = {"RAFTPORT_VERSION_OVERRIDE=1.0.0", NULL};
    ag_spawn_with(1, NULL, env);
    uint64_t until = cl_now_ms() + 40000;
    while (ag_alive(1) && cl_now_ms() < until)
        cl_sleep_ms(50);
    cr_assert_not(ag_alive(1), "the node kept running against an older auth");
    cr_assert(WIFEXITED(AG[1].last_status) && WEXITSTATUS(AG[1].last_status) != 0);
    cr_assert(ag_log_contains(1, "is older than this node's 1.0.0"), "the refusal names both");
    cr_assert(ag_log_contains(1, "--skip-version-check"));
    static const char *const skip[] = {"--skip-version-check", NULL};
    ag_spawn_with(1, skip, env);
    cr_assert(ag_wait_log(1, "node agent running", 30000),
              "--skip-version-check did not let the node start");
    cr_assert(ag_log_contains(1, "starting anyway"));
    ag_stop_all();
    cluster_pass();
}
