/* tests/test_int_agent_e2e.c: the whole node path, as an operator and a user see it.
 *
 * A real 3-server auth cluster, a real `raftport start --roles=node` joined with a
 * token, a user certificate from `tctl auth sign`, and stock OpenSSH `ssh` as the
 * client. What a PTY session shows is read back from `tctl recordings export` by a
 * player nobody here wrote (`asciinema cat`). With every auth server stopped the node
 * (restarted too) still decides logins from its cache; the recordings it makes
 * meanwhile, and those a killed agent left in its spool, reach auth once it returns. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/util.h"
#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"

TestSuite(agent_e2e, .init = cluster_setup, .fini = cluster_teardown, .timeout = 300);

static char key_path[600], cert_path[600], known_hosts[600];

/* The agent, joined with a fresh node token, serving SSH; alice may log in as root. */
static void start_node_and_user(void)
{
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare(1, token, NULL);
    ag_spawn(1);
    bool ok = ag_wait_log(1, "SSH service listening", 30000) &&
              ag_wait_log(1, "cache in step with auth", 30000);
    if (!ok)
        ag_print_log_tail(1, 30);
    cr_assert(ok, "the agent did not start serving SSH");

    cr_assert_eq(
        run_tctl(1, NULL, "users", "add", "alice", "--roles=access", "--logins=root", NULL), 0);
    snprintf(key_path, sizeof key_path, "%s/alice", CL->dir);
    snprintf(cert_path, sizeof cert_path, "%s/alice-cert.pub", CL->dir);
    snprintf(known_hosts, sizeof known_hosts, "%s/known_hosts", CL->dir);
    cr_assert_eq(
        run_tctl(1, NULL, "auth", "sign", "--user=alice", "--ttl=1h", "-o", key_path, NULL), 0);
    /* The node's published host key, certified by the host CA: what ssh checks. */
    char *kh = NULL;
    for (int i = 0; i < 100; i++) {
        free(kh);
        kh = NULL;
        cr_assert_eq(run_tctl(1, &kh, "nodes", "ls", "--format=known_hosts", NULL), 0);
        if (strstr(kh, "ssh-ed25519"))
            break;
        cl_sleep_ms(200);
    }
    cr_assert(strstr(kh, "ssh-ed25519"), "tctl nodes ls --format=known_hosts listed no node");
    char p[600];
    cl_write_file("known_hosts", kh, p, sizeof p);
    free(kh);
}

/* Runs `sh -c CMD` with a deadline; its exit code, *out its stdout (free it). */
static int sh(const char *cmd, char **out, int timeout_ms)
{
    char *argv[] = {"/bin/sh", "-c", (char *)cmd, NULL};
    struct cl_run r;
    int st = cl_run_argv(argv, timeout_ms, &r);
    if (st != 0 && r.err && r.err[0])
        fprintf(stderr, "`%s` exited %d: %s\n", cmd, st, r.err);
    if (out)
        *out = r.out, r.out = NULL;
    cl_run_free(&r);
    return st;
}

/* The ssh command line for alice's key and certificate against the agent. */
static void ssh_cmd(char *out, size_t n, const char *key, const char *cert, const char *opts,
                    const char *remote)
{
    char host[64], *colon;
    snprintf(host, sizeof host, "%s", AG[1].ssh_addr);
    colon = strrchr(host, ':');
    cr_assert(colon);
    *colon = '\0';
    snprintf(out, n,
             "ssh -F /dev/null -i %s -o CertificateFile=%s -o IdentitiesOnly=yes -o BatchMode=yes "
             "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o ConnectTimeout=10 %s "
             "-p %s root@%s %s",
             key, cert, known_hosts, opts, colon + 1, host, remote);
}

/* A PTY session (ssh -tt) that types @typed, then exits. */
static void pty_session(const char *typed)
{
    char ssh[2048], cmd[4096];
    ssh_cmd(ssh, sizeof ssh, key_path, cert_path, "-tt", "");
    snprintf(cmd, sizeof cmd, "(sleep 1; echo 'echo %s'; sleep 1; echo exit) | %s", typed, ssh);
    char *out = NULL;
    int st = sh(cmd, &out, 30000);
    cr_assert_eq(st, 0, "the PTY session failed (%d): %s", st, out ? out : "");
    cr_assert(strstr(out, typed), "the PTY session did not echo %s: %s", typed, out);
    free(out);
}

/* Polls `tctl recordings ls --format=json` (through any running server) until a
 * complete recording lists @n_complete or more; its sid of the newest into @sid. */
struct rec_wait {
    unsigned want;
    char sid[64];
};
static bool recordings_complete(void *arg)
{
    struct rec_wait *w = arg;
    int via = node_any_running(0);
    char *out = NULL;
    if (via < 1 || run_tctl(via, &out, "recordings", "ls", "--format=json", NULL) != 0) {
        free(out);
        return false;
    }
    unsigned complete = 0;
    struct cl_json *j = cl_json_parse(out);
    free(out);
    if (!j)
        return false;
    for (size_t i = 0; j->type == CLJ_ARR && i < j->n; i++) {
        const struct cl_json *item = &j->items[i];
        const struct cl_json *c = cl_json_get(item, "complete");
        if (c && c->type == CLJ_BOOL && c->b) {
            complete++;
            snprintf(w->sid, sizeof w->sid, "%s", cl_json_str(item, "sid"));
        }
    }
    cl_json_free(j);
    return complete >= w->want;
}

/* Exports recording @sid and plays it with asciinema; its output contains @text. */
static void export_plays(const char *sid, const char *text)
{
    char file[700], cmd[1600];
    snprintf(file, sizeof file, "%s/%s.cast", CL->dir, sid);
    int via = node_any_running(0);
    cr_assert_eq(run_tctl(via, NULL, "recordings", "export", sid, "-o", file, NULL), 0);
    /* asciinema 2.2 opens /dev/tty: script gives it one. */
    snprintf(cmd, sizeof cmd, "script -qec 'asciinema cat %s' /dev/null", file);
    char *out = NULL;
    int st = sh(cmd, &out, 30000);
    cr_assert_eq(st, 0, "asciinema cat failed on the exported recording");
    cr_assert(strstr(out, text), "the played recording lacks '%s':\n%s", text, out);
    free(out);
}

static bool event_seen(const char *type)
{
    char *out = NULL;
    int via = node_any_running(0);
    if (run_tctl(via, &out, "events", "ls", "--format=json", NULL) != 0) {
        free(out);
        return false;
    }
    char needle[96];
    snprintf(needle, sizeof needle, "\"%s\"", type);
    bool found = strstr(out, needle) != NULL;
    free(out);
    return found;
}
static bool events_of_a_session(void *arg)
{
    (void)arg;
    return event_seen("session.start") && event_seen("exec") && event_seen("session.end");
}

Test(agent_e2e, stock_ssh_logs_in_with_a_tctl_certificate_and_the_session_plays_back)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(20000));
    start_node_and_user();

    char ssh[2048];
    char *out = NULL;
    ssh_cmd(ssh, sizeof ssh, key_path, cert_path, "", "echo hi");
    cr_assert_eq(sh(ssh, &out, 30000), 0);
    cr_assert_str_eq(out, "hi\n");
    free(out);
    ssh_cmd(ssh, sizeof ssh, key_path, cert_path, "", "false");
    cr_assert_eq(sh(ssh, NULL, 30000), 1, "the remote exit code is ssh's own");

    pty_session("e2e-marker-41");
    struct rec_wait w = {.want = 1};
    cr_assert(wait_until(60000, recordings_complete, &w), "the PTY session's recording never "
                                                          "became complete in the auth cluster");
    export_plays(w.sid, "e2e-marker-41");
    cr_assert(wait_until(20000, events_of_a_session, NULL),
              "session.start, exec and session.end did not all reach the audit log");
    ag_stop_all();
    cluster_pass();
}

Test(agent_e2e, with_auth_gone_a_restarted_node_still_decides_and_uploads_later)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(20000));
    start_node_and_user();

    /* A certificate from a CA the cluster does not trust, for the same login. */
    char other_key[600], cmd[2400], ssh[2048];
    snprintf(other_key, sizeof other_key, "%s/other", CL->dir);
    snprintf(cmd, sizeof cmd,
             "ssh-keygen -q -t ed25519 -N '' -f %s/other-ca && ssh-keygen -q -t ed25519 -N '' -f "
             "%s && ssh-keygen -q -s %s/other-ca -I alice -n root -V -5m:+1h %s.pub",
             CL->dir, other_key, CL->dir, other_key);
    cr_assert_eq(sh(cmd, NULL, 30000), 0);
    char other_cert[700];
    snprintf(other_cert, sizeof other_cert, "%s-cert.pub", other_key);

    for (int i = 1; i <= 3; i++)
        node_kill9(i);
    cr_assert_neq(ag_term(1, 20000), -1, "the agent did not stop on SIGTERM with auth gone");
    ag_spawn(1);
    cr_assert(ag_wait_log(1, "loaded the cache from disk", 15000));
    cr_assert(ag_wait_log(1, "SSH service listening", 15000),
              "a joined node must serve SSH without auth");

    char *out = NULL;
    ssh_cmd(ssh, sizeof ssh, key_path, cert_path, "", "echo offline-ok");
    cr_assert_eq(sh(ssh, &out, 30000), 0, "a valid certificate was refused while auth is away");
    cr_assert_str_eq(out, "offline-ok\n");
    free(out);
    ssh_cmd(ssh, sizeof ssh, other_key, other_cert, "", "echo must-not-run");
    out = NULL;
    cr_assert_eq(sh(ssh, &out, 30000), 255, "a certificate of another CA was accepted");
    cr_assert_null(strstr(out ? out : "", "must-not-run"));
    free(out);
    pty_session("offline-marker-77");

    for (int i = 1; i <= 3; i++)
        node_restart(i);
    struct rec_wait w = {.want = 1};
    bool ok = wait_until(120000, recordings_complete, &w);
    if (!ok)
        ag_print_log_tail(1, 40);
    cr_assert(ok, "the recording made while auth was away was not uploaded after it returned");
    export_plays(w.sid, "offline-marker-77");
    ag_stop_all();
    cluster_pass();
}

/* True once a file of the agent's spool holds @arg's text (part files are plain
 * asciicast lines). */
static bool spool_holds(void *arg)
{
    char cmd[1200];
    snprintf(cmd, sizeof cmd, "grep -rqa -- '%s' %s/spool", (const char *)arg, AG[1].dir);
    return sh(cmd, NULL, 10000) == 0;
}

Test(agent_e2e, a_recording_spooled_by_a_killed_agent_is_uploaded_after_restart)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(20000));
    start_node_and_user();

    char ssh[2048], cmd[4096];
    ssh_cmd(ssh, sizeof ssh, key_path, cert_path, "-tt", "");
    snprintf(cmd, sizeof cmd,
             "(sleep 1; echo 'echo kill9-marker-5'; sleep 60) | %s >/dev/null 2>&1", ssh);
    char *argv[] = {"sh", "-c", cmd, NULL};
    pid_t client = fork();
    cr_assert_geq(client, 0);
    if (client == 0) {
        setpgid(0, 0);
        execvp("sh", argv);
        _exit(127);
    }
    bool spooled = wait_until(20000, spool_holds, "kill9-marker-5");
    ag_kill9(1);
    kill(-client, SIGKILL);
    kill(client, SIGKILL);
    cr_assert(spooled, "the session's output never reached the spool");

    ag_spawn(1);
    struct rec_wait w = {.want = 1};
    bool ok = wait_until(90000, recordings_complete, &w);
    if (!ok)
        ag_print_log_tail(1, 40);
    cr_assert(ok, "the killed agent's recording was not uploaded after its restart");
    export_plays(w.sid, "kill9-marker-5");
    ag_stop_all();
    cluster_pass();
}
