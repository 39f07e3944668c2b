/* tests/test_int_proxy_e2e.c: the whole path a new user takes, with every part real:
 * three auth servers, a proxy, a node joined through the proxy and reached only
 * through its reverse tunnel, and the built tsh run as a user would run it (password
 * on standard input, profile in RAFTPORT_HOME). Then the faults an operator drills:
 * the auth leader killed under an open session, the proxy restarted under a tunnel. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"
#include "tests/lib/proxy_proc.h"

TestSuite(proxy_e2e, .init = cluster_setup, .fini = cluster_teardown, .timeout = 300);

static char home[600], password_file[600];

/* Runs @cmd with /bin/sh, the built tsh as $TSH and the profile home as RAFTPORT_HOME;
 * its exit code (-1 when killed by the deadline); stdout and stderr into *out and *err
 * when given (free them). */
static int sh_tsh(const char *cmd, char **out, char **err, int timeout_ms)
{
    char full[8192];
    snprintf(full, sizeof full, "export RAFTPORT_HOME='%s' TSH='%s/tsh'; %s", home,
             getenv("RP_BUILD") ? getenv("RP_BUILD") : "build", cmd);
    char *argv[] = {"/bin/sh", "-c", full, NULL};
    struct cl_run r;
    int status = cl_run_argv(argv, timeout_ms, &r); /* the exit code, -1 if killed */
    if (out)
        *out = r.out, r.out = NULL;
    if (err)
        *err = r.err, r.err = NULL;
    cl_run_free(&r);
    return status;
}

static char pin[128];

static void read_pin(void)
{
    char *st = NULL;
    cr_assert_eq(run_tctl(1, &st, "status", NULL), 0);
    const char *p = strstr(st, "sha256:");
    cr_assert(p, "tctl status prints no CA pin: %s", st);
    size_t n = strspn(p, "sha256:0123456789abcdef");
    cr_assert_lt(n, sizeof pin);
    memcpy(pin, p, n);
    pin[n] = '\0';
    free(st);
}

/* Three auth servers, proxy 1, node1 joined through the proxy (tunnel only), and user
 * alice (roles access and auditor, login root) whose password was set by redeeming her
 * invite through the proxy with tsh. */
static void start_cluster_proxy_tunnel_node_and_user(void)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(30000));
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(1, token, NULL);
    px_spawn(1);
    cr_assert(px_wait_ready(1, 30000), "the proxy did not start");
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare_proxy(1, token, PX[1].web_addr, "1s", NULL);
    ag_spawn(1);
    char established[128];
    snprintf(established, sizeof established, "reverse tunnel to %s established",
             PX[1].tunnel_addr);
    if (!ag_wait_log(1, established, 30000)) {
        ag_print_log_tail(1, 40);
        px_print_log_tail(1, 40);
        cr_assert_fail("node1 did not open its reverse tunnel");
    }
    snprintf(home, sizeof home, "%s/tsh-home", CL->dir);
    read_pin();

    char *out = NULL, tok[64];
    cr_assert_eq(
        run_tctl(1, &out, "users", "add", "alice", "--roles=access,auditor", "--logins=root", NULL),
        0);
    cl_invite_token(out, tok, sizeof tok);
    free(out);
    cl_write_file("alice.password", "correct horse battery staple\n", password_file,
                  sizeof password_file);
    char cmd[4096];
    char *err = NULL;
    snprintf(cmd, sizeof cmd,
             "$TSH login --proxy=%s --user=alice --ca-pin=%s --invite=%s --no-otp < %s",
             PX[1].web_addr, pin, tok, password_file);
    cr_assert_eq(sh_tsh(cmd, NULL, &err, 60000), 0, "redeeming the invite with tsh: %s", err);
    free(err);
    cr_assert_eq(sh_tsh("$TSH logout", NULL, NULL, 30000), 0);
}

static void login(void)
{
    char cmd[4096], *err = NULL;
    snprintf(cmd, sizeof cmd, "$TSH login --proxy=%s --user=alice --ca-pin=%s < %s", PX[1].web_addr,
             pin, password_file);
    cr_assert_eq(sh_tsh(cmd, NULL, &err, 60000), 0, "tsh login: %s", err);
    free(err);
}

static bool node_listed_as_tunnel(void *arg)
{
    char *out = NULL;
    bool ok = sh_tsh("$TSH ls", &out, NULL, 30000) == 0 && strstr(out, "node1") &&
              strstr(out, "⟵ Tunnel");
    free(out);
    return ok;
}

static bool echo_hi_works(void *arg)
{
    char *out = NULL;
    bool ok =
        sh_tsh("$TSH ssh root@node1 echo hi", &out, NULL, 30000) == 0 && strcmp(out, "hi\n") == 0;
    free(out);
    return ok;
}

Test(proxy_e2e, a_new_user_logs_in_and_works_on_a_tunnelled_node)
{
    start_cluster_proxy_tunnel_node_and_user();
    login();
    cr_assert(wait_until(30000, node_listed_as_tunnel, NULL),
              "tsh ls never showed node1 behind its tunnel");
    cr_assert(wait_until(30000, echo_hi_works, NULL), "tsh ssh root@node1 echo hi never worked");

    char *out = NULL, *err = NULL;
    cr_expect_eq(sh_tsh("$TSH ssh root@node1 false", &out, &err, 30000), 1,
                 "the remote exit code is tsh's own: %s", err);
    free(out), free(err);

    /* A file there and back, intact. */
    char cmd[8192];
    snprintf(cmd, sizeof cmd,
             "head -c 3000000 /dev/urandom > %s/f.bin && $TSH scp %s/f.bin root@node1:%s/f.up && "
             "$TSH scp root@node1:%s/f.up %s/f.back && cmp %s/f.bin %s/f.back",
             CL->dir, CL->dir, CL->dir, CL->dir, CL->dir, CL->dir, CL->dir);
    cr_assert_eq(sh_tsh(cmd, NULL, &err, 60000), 0, "tsh scp there and back: %s", err);
    free(err);

    /* An interactive session on a pseudo-terminal (script), recorded, then replayed. */
    cr_assert_eq(sh_tsh("(sleep 1; echo 'echo E2E$((6*7))MARK'; sleep 1; echo exit) | "
                        "script -qec \"$TSH ssh root@node1\" /dev/null",
                        &out, &err, 60000),
                 0, "the PTY session: %s", err);
    cr_expect(strstr(out, "E2E42MARK"), "the shell's output: %s", out);
    free(out), free(err);
    char id[64] = "";
    for (int i = 0; i < 100 && id[0] == '\0'; i++) {
        out = NULL;
        if (sh_tsh("$TSH recordings ls --format=json", &out, NULL, 30000) == 0) {
            /* The only session, once its upload is complete (white space dropped, so the
             * layout of the JSON does not matter). */
            char *w = out;
            for (char *r = out; *r; r++)
                if (*r != ' ' && *r != '\n')
                    *w++ = *r;
            *w = '\0';
            const char *p = strstr(out, "\"sid\":\"");
            if (p && strstr(out, "\"complete\":true"))
                sscanf(p, "\"sid\":\"%36[0-9a-f-]\"", id);
        }
        free(out);
        if (id[0] == '\0')
            cl_sleep_ms(200);
    }
    cr_assert(id[0], "tsh recordings ls never listed the session");
    snprintf(cmd, sizeof cmd, "$TSH play %s --format=asciicast", id);
    cr_assert_eq(sh_tsh(cmd, &out, &err, 30000), 0, "tsh play: %s", err);
    cr_expect(strstr(out, "\"version\": 2"), "an asciicast v2 header: %.200s", out);
    cr_expect(strstr(out, "E2E42MARK"), "the replay holds the session's output");
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "$TSH play %s --speed=16", id);
    cr_assert_eq(sh_tsh(cmd, &out, &err, 60000), 0, "tsh play in the terminal: %s", err);
    cr_expect(strstr(out, "E2E42MARK"), "the replay shows the session's output");
    free(out), free(err);

    px_stop_all();
    ag_stop_all();
    cluster_pass();
}

static bool login_works(void *arg)
{
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "$TSH login --proxy=%s --user=alice < %s", PX[1].web_addr,
             password_file);
    return sh_tsh(cmd, NULL, NULL, 30000) == 0;
}

Test(proxy_e2e, an_open_session_outlives_the_auth_leader_and_logins_resume)
{
    start_cluster_proxy_tunnel_node_and_user();
    login();
    cr_assert(wait_until(30000, echo_hi_works, NULL), "tsh ssh root@node1 echo hi never worked");

    /* A session that prints for ~6 s, started before the leader dies. */
    char cmd[4096];
    snprintf(cmd, sizeof cmd,
             "export RAFTPORT_HOME='%s'; exec %s/tsh ssh root@node1 "
             "'for i in $(seq 1 30); do echo tick $i; sleep 0.2; done'",
             home, getenv("RP_BUILD") ? getenv("RP_BUILD") : "build");
    char outpath[700];
    snprintf(outpath, sizeof outpath, "%s/ticks.out", CL->dir);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        if (freopen(outpath, "w", stdout) == NULL)
            _exit(120);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    /* Wait for the first tick so that the session is open for sure. */
    bool open = false;
    for (int i = 0; i < 150 && !open; i++) {
        FILE *f = fopen(outpath, "r");
        char line[64];
        open = f && fgets(line, sizeof line, f) && strncmp(line, "tick", 4) == 0;
        if (f)
            fclose(f);
        if (!open)
            cl_sleep_ms(100);
    }
    cr_assert(open, "the session never printed its first tick");
    uint64_t leader = cluster_leader_id();
    cr_assert_neq(leader, 0, "no leader");
    node_kill9(node_by_raft_id(leader));

    int status = 0;
    cr_assert_eq(waitpid(pid, &status, 0), pid);
    cr_expect(WIFEXITED(status) && WEXITSTATUS(status) == 0,
              "the session ended with status %d after the leader died", status);
    FILE *f = fopen(outpath, "r");
    cr_assert(f);
    char buf[4096];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    cr_expect(strstr(buf, "tick 30\n"), "every tick arrived: %s", buf);

    cr_assert(wait_until(60000, login_works, NULL),
              "tsh login never worked again after the leader was killed");
    cr_assert(wait_until(30000, echo_hi_works, NULL), "tsh ssh failed after the new login");

    px_stop_all();
    ag_stop_all();
    cluster_pass();
}

Test(proxy_e2e, the_tunnel_comes_back_when_the_proxy_restarts)
{
    start_cluster_proxy_tunnel_node_and_user();
    login();
    cr_assert(wait_until(30000, echo_hi_works, NULL), "tsh ssh root@node1 echo hi never worked");
    cr_assert_eq(px_term(1, 20000), 0, "the proxy did not stop on SIGTERM");
    px_spawn(1);
    cr_assert(px_wait_ready(1, 30000), "the proxy did not start again");
    /* The agent notices on its own (keepalive 1 s, backoff from 1 s) and dials again. */
    cr_assert(wait_until(60000, echo_hi_works, NULL),
              "the node was not reachable through a new tunnel after the proxy restarted");
    px_stop_all();
    ag_stop_all();
    cluster_pass();
}
