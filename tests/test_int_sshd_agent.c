/* tests/test_int_sshd_agent.c: the node's SSH server (agent/sshd.h) against stock
 * OpenSSH clients.
 *
 * Each test starts $RP_BUILD/sshd-fixture (the server over a fixture authority: a CA
 * made here with lib/ssh_key.h, roles from YAML, labels env=test, a lock file), mints
 * user certificates with rp_ssh_cert_sign, and drives `ssh`, `scp` and `sftp` as real
 * processes. Refusals are checked in the audit log the fixture writes (one JSON
 * event per line). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <pty.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <arpa/inet.h>
#include <stdarg.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

#define TEST_USER "rpsshtest"

static char dir[256];
static char port_s[16];
static pid_t fixture_pid = -1;
static const char *max_unauth = "64";
static EVP_PKEY *ca, *other_ca;

static void path_of(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/%s", dir, name);
}

static void write_text(const char *name, const char *text, mode_t mode)
{
    char p[512];
    path_of(p, sizeof p, name);
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, mode);
    cr_assert(fd >= 0, "cannot write %s: %s", p, strerror(errno));
    size_t len = strlen(text);
    cr_assert_eq(write(fd, text, len), (ssize_t)len);
    close(fd);
}

static char *read_text(const char *name)
{
    char p[512], *out = NULL;
    size_t len = 0;
    path_of(p, sizeof p, name);
    if (rp_read_file(p, 64 << 20, &out, &len) != 0)
        return strdup("");
    return out;
}

static const char *build_dir(void)
{
    const char *b = getenv("RP_BUILD");
    return b && b[0] ? b : "build";
}

/* ---- the fixture server ------------------------------------------------------------- */

static const char *role_access =
    "kind: role\nversion: v7\nmetadata:\n  name: access\nspec:\n  options:\n"
    "    forward_agent: true\n  allow:\n    logins: [root, nosuchuser42, " TEST_USER "]\n"
    "    node_labels:\n      env: test\n";
static const char *role_prod = "kind: role\nversion: v7\nmetadata:\n  name: prod\nspec:\n"
                               "  allow:\n    logins: [root]\n    node_labels:\n      env: prod\n";
static const char *role_denier = "kind: role\nversion: v7\nmetadata:\n  name: denier\nspec:\n"
                                 "  deny:\n    logins: [root]\n";
static const char *role_strict =
    "kind: role\nversion: v7\nmetadata:\n  name: strict\nspec:\n  options:\n"
    "    record_session:\n      ssh: strict\n  allow:\n    logins: [root]\n"
    "    node_labels:\n      '*': '*'\n";
static const char *role_idle =
    "kind: role\nversion: v7\nmetadata:\n  name: idle\nspec:\n  options:\n"
    "    client_idle_timeout: 2s\n  allow:\n    logins: [root]\n    node_labels:\n"
    "      '*': '*'\n";
static const char *role_expiring =
    "kind: role\nversion: v7\nmetadata:\n  name: expiring\nspec:\n  options:\n"
    "    disconnect_expired_cert: true\n  allow:\n    logins: [root]\n    node_labels:\n"
    "      '*': '*'\n";
static const char *role_one =
    "kind: role\nversion: v7\nmetadata:\n  name: one\nspec:\n  options:\n"
    "    max_sessions: 1\n  allow:\n    logins: [root]\n    node_labels:\n"
    "      '*': '*'\n";
static const char *role_nocopy =
    "kind: role\nversion: v7\nmetadata:\n  name: nocopy\nspec:\n  options:\n"
    "    ssh_file_copy: false\n  allow:\n    logins: [root]\n    node_labels:\n"
    "      '*': '*'\n";

static const char *role_keys =
    "kind: role\nversion: v7\nmetadata:\n  name: keys\nspec:\n  options:\n"
    "    record_session:\n      ssh_input: true\n  allow:\n    logins: [root]\n"
    "    node_labels:\n      '*': '*'\n";

static bool port_known(void *arg)
{
    char *p = read_text("port");
    bool ok = p[0] >= '1' && p[0] <= '9';
    if (ok) {
        snprintf(port_s, sizeof port_s, "%s", p);
        port_s[strcspn(port_s, "\n")] = '\0';
    }
    free(p);
    return ok;
}

static void start_fixture(const char *deadline_ms, bool rec_fail)
{
    char bin[512], host[512], cas[512], roles[512], locks[512], audit[512], recs[512], port[512],
        log[512];
    snprintf(bin, sizeof bin, "%s/sshd-fixture", build_dir());
    path_of(host, sizeof host, "host");
    path_of(cas, sizeof cas, "ca.pub");
    path_of(roles, sizeof roles, "roles");
    path_of(locks, sizeof locks, "locks");
    path_of(audit, sizeof audit, "audit.jsonl");
    path_of(recs, sizeof recs, "recs");
    path_of(port, sizeof port, "port");
    path_of(log, sizeof log, "fixture.log");
    unlink(port); /* a restart must not read the last server's port */
    fixture_pid = fork();
    cr_assert(fixture_pid >= 0);
    if (fixture_pid == 0) {
        /* A test that times out is killed: the server must not outlive it. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(fd, 1);
        dup2(fd, 2);
        execl(bin, bin, "--host-key", host, "--user-ca", cas, "--roles", roles, "--labels",
              "env=test", "--locks", locks, "--audit", audit, "--rec-dir", recs, "--accept-env",
              "LC_*,RP_TEST_*", "--auth-deadline-ms", deadline_ms, "--grace-ms", "1500",
              "--rec-fail", rec_fail ? "1" : "0", "--max-unauth", max_unauth, "--port-file", port,
              (char *)NULL);
        _exit(127);
    }
    cr_assert(wait_until(10000, port_known, NULL), "the fixture server did not start (see %s)",
              log);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/rp-sshd-XXXXXX");
    cr_assert(mkdtemp(dir) != NULL);
    chmod(dir, 0755);
    char p[512];
    path_of(p, sizeof p, "roles");
    mkdir(p, 0755);
    path_of(p, sizeof p, "recs");
    mkdir(p, 0755);
    write_text("roles/access.yaml", role_access, 0644);
    write_text("roles/prod.yaml", role_prod, 0644);
    write_text("roles/denier.yaml", role_denier, 0644);
    write_text("roles/nocopy.yaml", role_nocopy, 0644);
    write_text("roles/strict.yaml", role_strict, 0644);
    write_text("roles/idle.yaml", role_idle, 0644);
    write_text("roles/one.yaml", role_one, 0644);
    write_text("roles/expiring.yaml", role_expiring, 0644);
    write_text("roles/keys.yaml", role_keys, 0644);
    write_text("locks", "", 0644);
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &ca), 0);
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &other_ca), 0);
    char *line = NULL;
    cr_assert_eq(rp_ssh_pubkey_format(ca, "user-ca", &line), 0);
    char text[1024];
    snprintf(text, sizeof text, "%s\n", line);
    free(line);
    write_text("ca.pub", text, 0644);
    EVP_PKEY *host = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &host), 0);
    cr_assert_eq(rp_ssh_privkey_format(host, "host", &line), 0);
    write_text("host", line, 0600);
    free(line);
    EVP_PKEY_free(host);
    start_fixture("1500", false);
}

static void stop_fixture(void)
{
    if (fixture_pid > 0) {
        kill(fixture_pid, SIGTERM);
        int st;
        for (int i = 0; i < 100 && waitpid(fixture_pid, &st, WNOHANG) == 0; i++)
            cl_sleep_ms(50);
        kill(fixture_pid, SIGKILL);
        waitpid(fixture_pid, &st, 0);
        fixture_pid = -1;
    }
    /* A sanitizer build of the server reports into its log: bring the report into the
     * test's output, where the test runner fails the binary for it. */
    char *log = read_text("fixture.log");
    if (strstr(log, "Sanitizer") != NULL || strstr(log, "runtime error:") != NULL)
        fprintf(stderr, "the server's log holds a sanitizer report:\n%s\n", log);
    free(log);
}

static void teardown(void)
{
    stop_fixture();
    EVP_PKEY_free(ca);
    EVP_PKEY_free(other_ca);
    ca = other_ca = NULL;
    char cmd[600];
    if (getenv("RP_KEEP_TMP"))
        return;
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", dir);
}

/* ---- certificates ------------------------------------------------------------------- */

struct mint {
    const char *name;          /* files NAME and NAME-cert.pub */
    const char *user;          /* key id */
    const char *principals;    /* comma-separated */
    const char *roles;         /* JSON list body: "\"access\"" */
    int64_t after_s, before_s; /* relative to now */
    EVP_PKEY *signer;          /* NULL: the trusted CA */
    bool no_port_forwarding;
};

static void mint(const struct mint *m)
{
    EVP_PKEY *key = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &key), 0);
    char *priv = NULL;
    cr_assert_eq(rp_ssh_privkey_format(key, m->user, &priv), 0);
    write_text(m->name, priv, 0600);
    free(priv);
    char princ_buf[256];
    snprintf(princ_buf, sizeof princ_buf, "%s", m->principals);
    char *princ[8];
    size_t np = 0;
    char *save = NULL;
    for (char *t = strtok_r(princ_buf, ",", &save); t && np < 8; t = strtok_r(NULL, ",", &save))
        princ[np++] = t;
    char roles_json[256];
    snprintf(roles_json, sizeof roles_json, "{\"version\":\"v1\",\"roles\":[%s]}", m->roles);
    struct rp_ssh_cert_opt ext[6];
    size_t ne = 0;
    ext[ne++] = (struct rp_ssh_cert_opt){"permit-pty", ""};
    ext[ne++] = (struct rp_ssh_cert_opt){"permit-agent-forwarding", ""};
    if (!m->no_port_forwarding)
        ext[ne++] = (struct rp_ssh_cert_opt){"permit-port-forwarding", ""};
    ext[ne++] = (struct rp_ssh_cert_opt){"teleport-roles", roles_json};
    ext[ne++] = (struct rp_ssh_cert_opt){"teleport-traits", "{}"};
    uint64_t now = (uint64_t)time(NULL);
    struct rp_ssh_cert c = {.type = RP_SSH_CERT_USER,
                            .key = key,
                            .serial = 7,
                            .key_id = (char *)m->user,
                            .principals = princ,
                            .n_principals = np,
                            .valid_after = (uint64_t)((int64_t)now + m->after_s),
                            .valid_before = (uint64_t)((int64_t)now + m->before_s),
                            .extensions = ext,
                            .n_extensions = ne};
    struct rp_buf blob;
    rp_buf_init(&blob);
    cr_assert_eq(rp_ssh_cert_sign(&c, m->signer ? m->signer : ca, &blob), 0, "sign: %s",
                 rp_errmsg());
    char *line = NULL;
    cr_assert_eq(rp_ssh_cert_format(blob.data, blob.len, m->user, &line), 0);
    char name[256], text[4096];
    snprintf(name, sizeof name, "%s-cert.pub", m->name);
    snprintf(text, sizeof text, "%s\n", line);
    write_text(name, text, 0644);
    free(line);
    rp_buf_free(&blob);
    EVP_PKEY_free(key);
}

static void mint_simple(const char *name, const char *user, const char *principals,
                        const char *roles)
{
    struct mint m = {.name = name,
                     .user = user,
                     .principals = principals,
                     .roles = roles,
                     .after_s = -60,
                     .before_s = 3600};
    mint(&m);
}

/* ---- clients -------------------------------------------------------------------------- */

/* argv for `PROG <common options> ...` with identity NAME; @extra NULL-terminated. */
static int client(const char *prog, const char *name, struct cl_run *r, int timeout_ms, ...)
{
    char key[512], certopt[600];
    path_of(key, sizeof key, name);
    snprintf(certopt, sizeof certopt, "CertificateFile=%s-cert.pub", key);
    char *argv[64], full[64];
    int n = 0;
    snprintf(full, sizeof full, "/usr/bin/%s", prog); /* cl_run_argv does not search PATH */
    argv[n++] = full;
    const char *common[] = {"-o", "UserKnownHostsFile=/dev/null",
                            "-o", "StrictHostKeyChecking=no",
                            "-o", "IdentitiesOnly=yes",
                            "-o", "BatchMode=yes",
                            "-o", "LogLevel=ERROR",
                            "-o", "ConnectTimeout=10",
                            "-i", key,
                            "-o", certopt};
    for (size_t i = 0; i < sizeof common / sizeof common[0]; i++)
        argv[n++] = (char *)common[i];
    argv[n++] = strcmp(prog, "ssh") == 0 ? "-p" : "-P";
    argv[n++] = port_s;
    va_list ap;
    va_start(ap, timeout_ms);
    for (char *a; (a = va_arg(ap, char *)) != NULL && n < 62;)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    memset(r, 0, sizeof *r);
    cl_run_argv(argv, timeout_ms, r);
    return r->status;
}

struct audit_want {
    const char *needles[4];
};

static bool audit_has(void *arg)
{
    struct audit_want *w = arg;
    char *text = read_text("audit.jsonl");
    bool found = false;
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && !found;
         line = strtok_r(NULL, "\n", &save)) {
        bool all = true;
        for (int i = 0; i < 4 && w->needles[i] && all; i++)
            all = strstr(line, w->needles[i]) != NULL;
        found = all;
    }
    free(text);
    return found;
}

static void expect_audit4(const char *a, const char *b, const char *c, const char *d)
{
    struct audit_want w = {{a, b, c, d}};
    if (!wait_until(5000, audit_has, &w)) {
        char *text = read_text("audit.jsonl");
        cr_assert_fail("no audit event with [%s] [%s] [%s] [%s]; the log:\n%s", a, b ? b : "",
                       c ? c : "", d ? d : "", text);
    }
}

static void expect_audit(const char *a, const char *b, const char *c)
{
    expect_audit4(a, b, c, NULL);
}

/* An "sftp" event with `action` @action, `path` @path (under the test's directory)
 * and @extra (a JSON fragment, or NULL). */
static void expect_sftp(const char *action, const char *path, const char *extra)
{
    char a[64], p[700];
    snprintf(a, sizeof a, "\"action\":\"%s\"", action);
    snprintf(p, sizeof p, "\"path\":\"%s/%s\"", dir, path);
    expect_audit4("\"event\":\"sftp\"", a, p, extra);
}

/* A refusal: ssh fails with 255, "Permission denied", and an auth event with @reason. */
static void expect_refused(const char *name, const char *login, const char *reason)
{
    struct cl_run r;
    char target[128];
    snprintf(target, sizeof target, "%s@127.0.0.1", login);
    client("ssh", name, &r, 20000, target, "echo should-not-run", NULL);
    cr_assert_eq(r.status, 255, "ssh should be refused; status %d out [%s] err [%s]", r.status,
                 r.out, r.err);
    cr_assert(strstr(r.out, "should-not-run") == NULL);
    cr_assert(strstr(r.err, "Permission denied") != NULL, "stderr: %s", r.err);
    cl_run_free(&r);
    expect_audit("\"event\":\"auth\"", "\"code\":\"T3007W\"", reason);
}

TestSuite(sshd_agent, .init = setup, .fini = teardown, .timeout = 180);

/* ---- sessions ------------------------------------------------------------------------- */

Test(sshd_agent, exec_prints_output_and_passes_exit_codes)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    struct cl_run r;
    cr_assert_eq(client("ssh", "alice", &r, 20000, "root@127.0.0.1", "echo hi", NULL), 0,
                 "echo hi: %s", r.err);
    cr_assert_str_eq(r.out, "hi\n");
    cl_run_free(&r);
    cr_assert_eq(client("ssh", "alice", &r, 20000, "root@127.0.0.1", "false", NULL), 1);
    cl_run_free(&r);
    cr_assert_eq(client("ssh", "alice", &r, 20000, "root@127.0.0.1", "exit 7", NULL), 7);
    cl_run_free(&r);
    cr_assert_eq(client("ssh", "alice", &r, 20000, "root@127.0.0.1", "echo oops >&2; exit 3", NULL),
                 3);
    cr_assert_str_eq(r.err, "oops\n");
    cl_run_free(&r);
    expect_audit("\"event\":\"exec\"", "\"command\":\"exit 7\"", "\"exitCode\":\"7\"");
    expect_audit("\"event\":\"session.data\"", "\"user\":\"alice\"", "\"login\":\"root\"");
}

Test(sshd_agent, exit_signal_and_client_signal_reach_the_child)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    struct cl_run r;
    /* OpenSSH reports a remote death by signal as 255 with the signal's name. */
    client("ssh", "alice", &r, 20000, "root@127.0.0.1", "kill -TERM $$", NULL);
    cr_assert_eq(r.status, 255, "status %d err %s", r.status, r.err);
    cl_run_free(&r);
    expect_audit("\"event\":\"exec\"", "\"command\":\"kill -TERM $$\"", "\"exitCode\":\"143\"");
}

Test(sshd_agent, env_requests_follow_accept_env_and_the_environment_is_clean)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    struct cl_run r;
    setenv("RP_TEST_A", "accepted", 1);
    setenv("RP_OTHER_B", "dropped", 1);
    cr_assert_eq(client("ssh", "alice", &r, 20000, "-o", "SendEnv=RP_TEST_A RP_OTHER_B",
                        "root@127.0.0.1", "echo \"$RP_TEST_A-$RP_OTHER_B-$USER-$LOGNAME-$HOME\"",
                        NULL),
                 0, "%s", r.err);
    cr_assert_str_eq(r.out, "accepted--root-root-/root\n");
    cl_run_free(&r);
    cr_assert_eq(client("ssh", "alice", &r, 20000, "root@127.0.0.1",
                        "test -n \"$SSH_CONNECTION\" && test -n \"$SSH_CLIENT\" && echo ok", NULL),
                 0);
    cr_assert_str_eq(r.out, "ok\n");
    cl_run_free(&r);
}

/* Reads from @fd into @acc until @needle shows up or @ms pass. */
static bool read_until(int fd, struct rp_buf *acc, const char *needle, int ms)
{
    uint64_t end = cl_now_ms() + (uint64_t)ms;
    while (cl_now_ms() < end) {
        rp_buf_append(acc, "", 1);
        acc->len--;
        if (acc->data && strstr((char *)acc->data, needle))
            return true;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 100) == 1) {
            char buf[4096];
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0)
                return false;
            rp_buf_append(acc, buf, (size_t)n);
        }
    }
    return false;
}

static bool rec_has(void *arg)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "grep -q '%s' %s/recs/*.out 2>/dev/null", (const char *)arg, dir);
    return system(cmd) == 0;
}

static bool rec_has_marker(void *arg)
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "grep -q 'pty-42' %s/recs/*.out 2>/dev/null", dir);
    return system(cmd) == 0;
}

/* `ssh -tt` with identity @name on a new pseudo-terminal of 100x30. */
static pid_t spawn_pty_ssh(const char *name, int *master)
{
    char key[512], certopt[600];
    path_of(key, sizeof key, name);
    snprintf(certopt, sizeof certopt, "CertificateFile=%s-cert.pub", key);
    struct winsize ws = {.ws_row = 30, .ws_col = 100};
    pid_t pid = forkpty(master, NULL, NULL, &ws);
    cr_assert(pid >= 0);
    if (pid == 0) {
        execlp("ssh", "ssh", "-tt", "-o", "UserKnownHostsFile=/dev/null", "-o",
               "StrictHostKeyChecking=no", "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o",
               "LogLevel=ERROR", "-i", key, "-o", certopt, "-p", port_s, "root@127.0.0.1",
               (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* Waits up to @ms for @pid to end, draining @master; its wait status, or -1. */
static int wait_pty_ssh(pid_t pid, int master, int ms)
{
    int st = 0;
    uint64_t end = cl_now_ms() + (uint64_t)ms;
    pid_t w;
    while ((w = waitpid(pid, &st, WNOHANG)) == 0 && cl_now_ms() < end) {
        char buf[1024];
        struct pollfd p = {master, POLLIN, 0};
        if (poll(&p, 1, 100) == 1 && read(master, buf, sizeof buf) <= 0)
            cl_sleep_ms(20);
    }
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -1;
    }
    return st;
}

Test(sshd_agent, pty_session_runs_commands_through_a_terminal_and_is_recorded)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    int master = -1;
    pid_t pid = spawn_pty_ssh("alice", &master);
    struct winsize ws = {0};
    struct rp_buf acc;
    rp_buf_init(&acc);
    const char *cmd = "echo pty-$((6*7)); tty; stty size\n";
    cr_assert_eq(write(master, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
    cr_assert(read_until(master, &acc, "pty-42", 10000), "no marker in: %s", (char *)acc.data);
    cr_assert(read_until(master, &acc, "30 100", 5000), "terminal size not 30x100: %s",
              (char *)acc.data);
    cr_assert(strstr((char *)acc.data, "/dev/pts/") != NULL, "not a terminal: %s",
              (char *)acc.data);
    /* A window change reaches the terminal. */
    ws.ws_row = 40;
    ws.ws_col = 120;
    ioctl(master, TIOCSWINSZ, &ws);
    kill(pid, SIGWINCH);
    cl_sleep_ms(300);
    acc.len = 0;
    const char *cmd2 = "stty size\n";
    cr_assert_eq(write(master, cmd2, strlen(cmd2)), (ssize_t)strlen(cmd2));
    cr_assert(read_until(master, &acc, "40 120", 5000), "resize not applied: %s", (char *)acc.data);
    const char *bye = "exit 3\n";
    cr_assert_eq(write(master, bye, strlen(bye)), (ssize_t)strlen(bye));
    int st = wait_pty_ssh(pid, master, 10000);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 3, "ssh -tt ended with %d", st);
    close(master);
    rp_buf_free(&acc);
    expect_audit("\"event\":\"session.start\"", "\"size\":\"100:30\"", "\"interactive\":\"true\"");
    expect_audit("\"event\":\"session.end\"", "\"user\":\"alice\"", NULL);
    expect_audit("\"event\":\"resize\"", "\"size\":\"120:40\"", NULL);
    cr_assert(wait_until(5000, rec_has_marker, NULL), "the recording lacks the output");
}

static bool recs_match(const char *pattern, const char *glob)
{
    char cmd[800];
    snprintf(cmd, sizeof cmd, "grep -q '%s' %s/recs/%s 2>/dev/null", pattern, dir, glob);
    return system(cmd) == 0;
}

static bool input_recorded(void *arg)
{
    return recs_match((const char *)arg, "*.in");
}

/* Runs a PTY session as @name that types a line holding @marker, then exits. */
static void typed_session(const char *name, const char *marker)
{
    int master = -1;
    pid_t pid = spawn_pty_ssh(name, &master);
    struct rp_buf acc;
    rp_buf_init(&acc);
    char cmd[128], seen[64];
    snprintf(cmd, sizeof cmd, "echo %s-$((20+22)); exit 0\n", marker);
    snprintf(seen, sizeof seen, "%s-42", marker);
    cr_assert_eq(write(master, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
    cr_assert(read_until(master, &acc, seen, 10000), "no output in: %s", (char *)acc.data);
    int st = wait_pty_ssh(pid, master, 10000);
    close(master);
    rp_buf_free(&acc);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "ssh -tt ended with %d", st);
}

Test(sshd_agent, record_session_ssh_input_records_what_the_user_types_and_only_then)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    mint_simple("kate", "kate", "root", "\"keys\"");
    typed_session("alice", "quiet");
    /* The output is recorded; the keystrokes are not (no role asks). */
    cr_assert(wait_until(5000, rec_has, "quiet-42"), "alice's output was not recorded");
    cr_assert(!recs_match("quiet", "*.in"), "alice's input was recorded without ssh_input");
    typed_session("kate", "typed");
    /* What kate typed, as typed: the shell's expansion is in the output only. */
    cr_assert(wait_until(5000, input_recorded, "echo typed-\\$((20+22)); exit 0"),
              "kate's input was not recorded");
    cr_assert(!recs_match("typed-42", "*.in"), "the input recording holds output");
    cr_assert(wait_until(5000, rec_has, "typed-42"), "kate's output was not recorded");
}

/* ---- port forwarding -------------------------------------------------------------------- */

static int echo_listen_fd = -1;

static void *echo_server(void *arg)
{
    for (;;) {
        int c = accept(echo_listen_fd, NULL, NULL);
        if (c < 0)
            return NULL;
        char buf[4096];
        ssize_t n;
        while ((n = read(c, buf, sizeof buf)) > 0)
            if (write(c, buf, (size_t)n) != n)
                break;
        close(c);
    }
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bind(fd, (struct sockaddr *)&sa, sizeof sa);
    socklen_t l = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &l);
    close(fd);
    return ntohs(sa.sin_port);
}

static bool echo_through(int port, const char *msg)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return false;
    }
    size_t len = strlen(msg);
    char buf[256] = "";
    bool ok = write(fd, msg, len) == (ssize_t)len;
    size_t got = 0;
    while (ok && got < len) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 3000) != 1)
            break;
        ssize_t n = read(fd, buf + got, sizeof buf - 1 - got);
        if (n <= 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    return ok && got == len && memcmp(buf, msg, len) == 0;
}

struct fwd {
    int port;
};

static bool forward_works(void *arg)
{
    return echo_through(((struct fwd *)arg)->port, "ping through the tunnel");
}

static pid_t spawn_forward(const char *name, int lport, int eport)
{
    char key[512], certopt[600], spec[64];
    path_of(key, sizeof key, name);
    snprintf(certopt, sizeof certopt, "CertificateFile=%s-cert.pub", key);
    snprintf(spec, sizeof spec, "127.0.0.1:%d:127.0.0.1:%d", lport, eport);
    pid_t pid = fork();
    if (pid == 0) {
        execlp("ssh", "ssh", "-N", "-o", "ExitOnForwardFailure=yes", "-o",
               "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no", "-o",
               "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", key, "-o",
               certopt, "-p", port_s, "-L", spec, "root@127.0.0.1", (char *)NULL);
        _exit(127);
    }
    return pid;
}

Test(sshd_agent, local_port_forwarding_reaches_a_tcp_echo_server)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    struct mint m = {.name = "noport",
                     .user = "bob",
                     .principals = "root",
                     .roles = "\"access\"",
                     .after_s = -60,
                     .before_s = 3600,
                     .no_port_forwarding = true};
    mint(&m);
    echo_listen_fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(echo_listen_fd, (struct sockaddr *)&sa, sizeof sa), 0);
    listen(echo_listen_fd, 8);
    socklen_t l = sizeof sa;
    getsockname(echo_listen_fd, (struct sockaddr *)&sa, &l);
    int eport = ntohs(sa.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, echo_server, NULL);

    struct fwd f = {free_port()};
    pid_t pid = spawn_forward("alice", f.port, eport);
    bool ok = wait_until(10000, forward_works, &f);
    kill(pid, SIGKILL); /* the test runner may leave SIGTERM ignored in children */
    waitpid(pid, NULL, 0);
    cr_assert(ok, "no echo through ssh -L");
    char dst[64];
    snprintf(dst, sizeof dst, "\"addr\":\"127.0.0.1:%d\"", eport);
    expect_audit("\"event\":\"port\"", "\"code\":\"T3003I\"", dst);

    /* Without permit-port-forwarding in the certificate, the channel is refused. */
    struct fwd g = {free_port()};
    pid = spawn_forward("noport", g.port, eport);
    cl_sleep_ms(1500);
    bool leaked = echo_through(g.port, "must not pass");
    kill(pid, SIGKILL); /* the test runner may leave SIGTERM ignored in children */
    waitpid(pid, NULL, 0);
    cr_assert(!leaked, "forwarding worked without permit-port-forwarding");
    expect_audit("\"event\":\"port\"", "\"code\":\"T3003E\"", "not permitted");
    shutdown(echo_listen_fd, SHUT_RDWR);
    close(echo_listen_fd);
    pthread_join(t, NULL);
}

/* ---- file copy ------------------------------------------------------------------------- */

static void sha256_of(const char *path, char out[65])
{
    char cmd[600];
    snprintf(cmd, sizeof cmd, "sha256sum '%s'", path);
    FILE *f = popen(cmd, "r");
    cr_assert(f != NULL);
    out[0] = '\0';
    cr_assert(fscanf(f, "%64s", out) == 1);
    pclose(f);
}

Test(sshd_agent, scp_and_sftp_copy_100mib_both_ways_with_matching_sha256)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    char src[512], up[512], down[512], sup[512], sdown[512], cmd[1200];
    path_of(src, sizeof src, "big");
    path_of(up, sizeof up, "big.scp-up");
    path_of(down, sizeof down, "big.scp-down");
    path_of(sup, sizeof sup, "big.sftp-up");
    path_of(sdown, sizeof sdown, "big.sftp-down");
    snprintf(cmd, sizeof cmd, "head -c 104857600 /dev/urandom > '%s'", src);
    cr_assert_eq(system(cmd), 0);
    char want[65], got[65], remote[600];
    sha256_of(src, want);

    struct cl_run r;
    snprintf(remote, sizeof remote, "root@127.0.0.1:%s", up);
    uint64_t t0 = cl_now_ms();
    cr_assert_eq(client("scp", "alice", &r, 120000, src, remote, NULL), 0, "scp up: %s", r.err);
    uint64_t t_up = cl_now_ms() - t0;
    cl_run_free(&r);
    sha256_of(up, got);
    cr_assert_str_eq(got, want, "scp upload changed the file");

    snprintf(remote, sizeof remote, "root@127.0.0.1:%s", up);
    t0 = cl_now_ms();
    cr_assert_eq(client("scp", "alice", &r, 120000, remote, down, NULL), 0, "scp down: %s", r.err);
    uint64_t t_down = cl_now_ms() - t0;
    cl_run_free(&r);
    sha256_of(down, got);
    cr_assert_str_eq(got, want, "scp download changed the file");

    char batch[4096];
    snprintf(batch, sizeof batch, "put %s %s\nget %s %s\n", src, sup, sup, sdown);
    write_text("batch", batch, 0644);
    char bpath[512];
    path_of(bpath, sizeof bpath, "batch");
    cr_assert_eq(client("sftp", "alice", &r, 120000, "-b", bpath, "root@127.0.0.1", NULL), 0,
                 "sftp: %s", r.err);
    cl_run_free(&r);
    sha256_of(sup, got);
    cr_assert_str_eq(got, want, "sftp upload changed the file");
    sha256_of(sdown, got);
    cr_assert_str_eq(got, want, "sftp download changed the file");
    fprintf(stderr, "100 MiB scp: up %llu ms, down %llu ms\n", (unsigned long long)t_up,
            (unsigned long long)t_down);
    expect_audit("\"event\":\"subsystem\"", "\"name\":\"sftp\"", "\"user\":\"alice\"");
    /* Thousands of READs and WRITEs, one summary per file. */
    expect_sftp("close", "big.scp-up", "\"bytes_written\":104857600");
    expect_sftp("close", "big.scp-up", "\"bytes_read\":104857600");
    expect_sftp("close", "big.sftp-up", "\"bytes_written\":104857600");
    char *log = read_text("audit.jsonl");
    size_t sftp_events = 0;
    for (char *p = log; (p = strstr(p, "\"event\":\"sftp\"")) != NULL; p++)
        sftp_events++;
    free(log);
    cr_assert(sftp_events < 40, "%zu sftp events for four copies of one file", sftp_events);
}

/* ---- file operations in the audit log ----------------------------------------------- */

Test(sshd_agent, sftp_file_operations_are_audited_with_paths_and_byte_counts)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    char small[512], batch[4096], bpath[512];
    path_of(small, sizeof small, "small");
    char content[10000];
    for (size_t i = 0; i < sizeof content; i++)
        content[i] = (char)('a' + i % 26);
    content[sizeof content - 1] = '\0';
    write_text("small", content, 0644); /* 9999 bytes */
    snprintf(batch, sizeof batch,
             "mkdir %1$s/sub\n"
             "put %1$s/small %1$s/sub/up\n"
             "get %1$s/sub/up %1$s/down\n"
             "rename %1$s/sub/up %1$s/sub/moved\n"
             "chmod 600 %1$s/sub/moved\n"
             "ln -s %1$s/sub/moved %1$s/sub/link\n"
             "rm %1$s/sub/link\n"
             "-rm %1$s/sub/nosuch\n"
             "rm %1$s/sub/moved\n"
             "rmdir %1$s/sub\n",
             dir);
    write_text("batch", batch, 0644);
    path_of(bpath, sizeof bpath, "batch");
    struct cl_run r;
    cr_assert_eq(client("sftp", "alice", &r, 30000, "-b", bpath, "root@127.0.0.1", NULL), 0,
                 "sftp: %s", r.err);
    cl_run_free(&r);
    expect_sftp("mkdir", "sub", "\"code\":\"TS001I\"");
    expect_sftp("open", "sub/up", "\"flags\":\"write,create,truncate\"");
    expect_sftp("close", "sub/up", "\"bytes_written\":9999");
    expect_sftp("open", "sub/up", "\"flags\":\"read\"");
    expect_sftp("close", "sub/up", "\"bytes_read\":9999");
    char target[600];
    snprintf(target, sizeof target, "\"target_path\":\"%s/sub/moved\"", dir);
    expect_sftp("rename", "sub/up", target);
    expect_sftp("setstat", "sub/moved", "mode=0600");
    expect_sftp("symlink", "sub/link", target);
    expect_sftp("remove", "sub/link", "\"user\":\"alice\"");
    expect_sftp("remove", "sub/nosuch", "\"error\":\"no such file\"");
    expect_sftp("remove", "sub/moved", "\"login\":\"root\"");
    expect_sftp("rmdir", "sub", "\"sid\":");
    /* Every event of the channel carries the session's id and the client's address. */
    expect_sftp("rmdir", "sub", "\"addr.remote\":\"127.0.0.1:");
}

/* Since OpenSSH 9, scp speaks SFTP: the server cannot tell it from sftp, and its
 * copies show as sftp events. */
Test(sshd_agent, scp_copies_both_ways_are_audited_as_sftp_file_operations)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    char src[512], remote[700], down[512];
    path_of(src, sizeof src, "roles/access.yaml");
    path_of(down, sizeof down, "scp-down");
    struct stat st;
    cr_assert_eq(stat(src, &st), 0);
    char bytes_w[64], bytes_r[64];
    snprintf(bytes_w, sizeof bytes_w, "\"bytes_written\":%lld", (long long)st.st_size);
    snprintf(bytes_r, sizeof bytes_r, "\"bytes_read\":%lld", (long long)st.st_size);
    struct cl_run r;
    snprintf(remote, sizeof remote, "root@127.0.0.1:%s/scp-up", dir);
    cr_assert_eq(client("scp", "alice", &r, 20000, src, remote, NULL), 0, "scp up: %s", r.err);
    cl_run_free(&r);
    cr_assert_eq(client("scp", "alice", &r, 20000, remote, down, NULL), 0, "scp down: %s", r.err);
    cl_run_free(&r);
    /* scp opens without O_TRUNC and truncates to the size it sent (fsetstat). */
    expect_sftp("open", "scp-up", "\"flags\":\"write,create\"");
    expect_sftp("fsetstat", "scp-up", "size=");
    expect_sftp("close", "scp-up", bytes_w);
    expect_sftp("open", "scp-up", "\"flags\":\"read\"");
    expect_sftp("close", "scp-up", bytes_r);
}

Test(sshd_agent, ssh_file_copy_false_refuses_sftp_and_scp)
{
    mint_simple("carol", "carol", "root", "\"nocopy\"");
    char src[512], remote[600];
    path_of(src, sizeof src, "roles/access.yaml");
    snprintf(remote, sizeof remote, "root@127.0.0.1:%s/copied", dir);
    struct cl_run r;
    cr_assert_neq(client("scp", "carol", &r, 20000, src, remote, NULL), 0, "scp succeeded");
    cl_run_free(&r);
    cr_assert_neq(client("scp", "carol", &r, 20000, "-O", src, remote, NULL), 0,
                  "legacy scp succeeded");
    cl_run_free(&r);
    char p[512];
    path_of(p, sizeof p, "copied");
    cr_assert(!rp_file_exists(p), "a file was copied despite ssh_file_copy: false");
    expect_audit("\"event\":\"sftp\"", "ssh_file_copy: false", "\"user\":\"carol\"");
    expect_audit("\"event\":\"scp\"", "ssh_file_copy: false", "\"user\":\"carol\"");
    /* The same user still gets a shell command. */
    cr_assert_eq(client("ssh", "carol", &r, 20000, "root@127.0.0.1", "echo fine", NULL), 0);
    cr_assert_str_eq(r.out, "fine\n");
    cl_run_free(&r);
}

/* ---- refusals -------------------------------------------------------------------------- */

Test(sshd_agent, certificate_from_another_ca_is_refused)
{
    struct mint m = {.name = "mallory",
                     .user = "mallory",
                     .principals = "root",
                     .roles = "\"access\"",
                     .after_s = -60,
                     .before_s = 3600,
                     .signer = other_ca};
    mint(&m);
    expect_refused("mallory", "root", "not signed by a trusted user CA");
}

Test(sshd_agent, expired_certificate_is_refused)
{
    struct mint m = {.name = "late",
                     .user = "late",
                     .principals = "root",
                     .roles = "\"access\"",
                     .after_s = -7200,
                     .before_s = -3600};
    mint(&m);
    expect_refused("late", "root", "certificate has expired");
}

Test(sshd_agent, login_not_in_principals_is_refused)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    expect_refused("alice", TEST_USER, "not in the set of valid principals");
}

Test(sshd_agent, login_allowed_but_node_labels_denied_is_refused)
{
    mint_simple("dave", "dave", "root", "\"prod\"");
    expect_refused("dave", "root", "no role allows login 'root'");
}

Test(sshd_agent, deny_rule_wins_over_an_allow_rule)
{
    mint_simple("erin", "erin", "root", "\"access\",\"denier\"");
    expect_refused("erin", "root", "role 'denier' denies login 'root'");
}

Test(sshd_agent, plain_key_without_certificate_is_refused)
{
    EVP_PKEY *key = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &key), 0);
    char *priv = NULL;
    cr_assert_eq(rp_ssh_privkey_format(key, "plain", &priv), 0);
    write_text("plain", priv, 0600);
    free(priv);
    EVP_PKEY_free(key);
    /* No plain-cert.pub: ssh offers the bare key. */
    expect_refused("plain", "root", "a plain ssh-ed25519 key is not accepted");
}

Test(sshd_agent, locked_user_is_refused_and_a_new_lock_closes_open_sessions)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    mint_simple("frank", "frank", "root", "\"access\"");
    write_text("locks", "user frank\n", 0644);
    cl_sleep_ms(300); /* the fixture re-reads the lock file every 50 ms */
    expect_refused("frank", "root", "user frank is locked");

    /* alice has a session open when her lock arrives. */
    char flag[512], cmd[700];
    path_of(flag, sizeof flag, "started");
    snprintf(cmd, sizeof cmd, "touch %s; sleep 60", flag);
    char key[512], certopt[600];
    path_of(key, sizeof key, "alice");
    snprintf(certopt, sizeof certopt, "CertificateFile=%s-cert.pub", key);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        execlp("ssh", "ssh", "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
               "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", key,
               "-o", certopt, "-p", port_s, "root@127.0.0.1", cmd, (char *)NULL);
        _exit(127);
    }
    uint64_t end = cl_now_ms() + 10000;
    while (!rp_file_exists(flag) && cl_now_ms() < end)
        cl_sleep_ms(50);
    cr_assert(rp_file_exists(flag), "alice's session did not start");
    write_text("locks", "user frank\nuser alice\n", 0644);
    int st = 0;
    end = cl_now_ms() + 10000;
    pid_t w = 0;
    while ((w = waitpid(pid, &st, WNOHANG)) == 0 && cl_now_ms() < end)
        cl_sleep_ms(50);
    if (w == 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
    }
    cr_assert_eq(w, pid, "alice's session outlived her lock");
    expect_audit("\"event\":\"client.disconnect\"", "user alice is locked", "\"user\":\"alice\"");
}

/* Opens TCP, sends the banner, then nothing. */
Test(sshd_agent, client_that_never_authenticates_is_cut_at_the_deadline)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(port_s)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    const char *banner = "SSH-2.0-OpenSSH_9.2p1 silent\r\n";
    cr_assert_eq(write(fd, banner, strlen(banner)), (ssize_t)strlen(banner));
    uint64_t t0 = cl_now_ms();
    char buf[4096];
    bool closed = false;
    while (cl_now_ms() - t0 < 10000) {
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, 200) == 1) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n <= 0) {
                closed = true;
                break;
            }
        }
    }
    uint64_t took = cl_now_ms() - t0;
    close(fd);
    cr_assert(closed, "the silent client was not cut");
    cr_assert(took >= 1000 && took < 5000, "cut after %llu ms; the deadline is 1500 ms",
              (unsigned long long)took);
    expect_audit("\"event\":\"auth\"", "authentication did not finish within 1500 ms", NULL);
}

/* ---- privileges -------------------------------------------------------------------------- */

Test(sshd_agent, session_runs_as_the_login_user_with_its_home_and_shell)
{
    if (geteuid() != 0) {
        cr_skip_test("not root: the privilege drop cannot be tested");
        return;
    }
    if (getpwnam(TEST_USER) == NULL)
        cr_assert_eq(system("useradd -m -s /bin/bash " TEST_USER " >/dev/null 2>&1"), 0,
                     "useradd " TEST_USER " failed");
    struct passwd *pw = getpwnam(TEST_USER);
    cr_assert(pw != NULL);
    char want[512];
    snprintf(want, sizeof want, "%u %u %s %s %s\n", (unsigned)pw->pw_uid, (unsigned)pw->pw_uid,
             pw->pw_dir, pw->pw_dir, TEST_USER);
    mint_simple("alice", "alice", "root," TEST_USER, "\"access\"");
    struct cl_run r;
    cr_assert_eq(client("ssh", "alice", &r, 20000, TEST_USER "@127.0.0.1",
                        "echo $(id -u) $(id -ru) $HOME $(pwd) $(id -un)", NULL),
                 0, "%s", r.err);
    cr_assert_str_eq(r.out, want);
    cl_run_free(&r);
    /* Root's files stay out of reach. */
    cr_assert_neq(
        client("ssh", "alice", &r, 20000, TEST_USER "@127.0.0.1", "cat /etc/shadow", NULL), 0);
    cl_run_free(&r);
    /* A login without an account is refused. */
    mint_simple("ghost", "ghost", "nosuchuser42", "\"access\"");
    expect_refused("ghost", "nosuchuser42", "has no account on this node");
}

Test(sshd_agent, strict_recording_refuses_a_session_it_cannot_record)
{
    stop_fixture();
    start_fixture("1500", true);
    mint_simple("gina", "gina", "root", "\"strict\"");
    mint_simple("alice", "alice", "root", "\"access\"");
    int master = -1;
    pid_t pid = spawn_pty_ssh("gina", &master);
    int st = wait_pty_ssh(pid, master, 15000);
    close(master);
    cr_assert(st >= 0 && !(WIFEXITED(st) && WEXITSTATUS(st) == 0),
              "a strict session ran unrecorded (status %d)", st);
    expect_audit("\"event\":\"session.rejected\"", "record_session is strict", "\"user\":\"gina\"");
    /* best_effort goes on, audited. */
    pid = spawn_pty_ssh("alice", &master);
    struct rp_buf acc;
    rp_buf_init(&acc);
    const char *cmd = "echo unrecorded-$((2*21)); exit 0\n";
    cr_assert_eq(write(master, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
    cr_assert(read_until(master, &acc, "unrecorded-42", 10000), "best_effort session did not run");
    st = wait_pty_ssh(pid, master, 10000);
    close(master);
    rp_buf_free(&acc);
    cr_assert(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
    expect_audit("\"event\":\"session.upload\"", "best_effort", "\"user\":\"alice\"");
}

Test(sshd_agent, graceful_stop_tells_pty_sessions_and_ends_them_after_the_grace)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    int master = -1;
    pid_t pid = spawn_pty_ssh("alice", &master);
    struct rp_buf acc;
    rp_buf_init(&acc);
    const char *cmd = "echo ready-$((40+2))\n";
    cr_assert_eq(write(master, cmd, strlen(cmd)), (ssize_t)strlen(cmd));
    cr_assert(read_until(master, &acc, "ready-42", 10000));
    uint64_t t0 = cl_now_ms();
    kill(fixture_pid, SIGTERM);
    cr_assert(read_until(master, &acc, "shutting down", 5000), "no notice on the terminal: %s",
              (char *)acc.data);
    int st = wait_pty_ssh(pid, master, 10000);
    uint64_t took = cl_now_ms() - t0;
    close(master);
    rp_buf_free(&acc);
    cr_assert(st >= 0, "the session outlived the stop");
    cr_assert(took >= 1000, "the session ended after %llu ms, before the 1500 ms grace",
              (unsigned long long)took);
    int fst = 0;
    uint64_t end = cl_now_ms() + 10000;
    pid_t w;
    while ((w = waitpid(fixture_pid, &fst, WNOHANG)) == 0 && cl_now_ms() < end)
        cl_sleep_ms(50);
    cr_assert_eq(w, fixture_pid, "the server did not exit after its grace");
    fixture_pid = -1;
    cr_assert(WIFEXITED(fst) && WEXITSTATUS(fst) == 0);
    expect_audit("\"event\":\"session.end\"", "\"user\":\"alice\"", NULL);
}

static bool agent_test_script(const char *key_for_agent, char *out, size_t n)
{
    char key[512], cert[600], akey[512], script[4096];
    path_of(key, sizeof key, "alice");
    snprintf(cert, sizeof cert, "%s-cert.pub", key);
    path_of(akey, sizeof akey, key_for_agent);
    snprintf(script, sizeof script,
             "eval $(ssh-agent -s) >/dev/null; ssh-add -q %s 2>/dev/null; "
             "ssh -A -o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no "
             "-o IdentitiesOnly=yes -o BatchMode=yes -o LogLevel=ERROR -i %s "
             "-o CertificateFile=%s -p %s root@127.0.0.1 "
             "'stat -c %%a \"$(dirname \"$SSH_AUTH_SOCK\")\"; ssh-add -l'; rc=$?; "
             "kill $SSH_AGENT_PID; exit $rc",
             akey, key, cert, port_s);
    char *argv[] = {"/bin/sh", "-c", script, NULL};
    struct cl_run r;
    memset(&r, 0, sizeof r);
    cl_run_argv(argv, 20000, &r);
    snprintf(out, n, "%s", r.out ? r.out : "");
    bool ok = r.status == 0;
    cl_run_free(&r);
    return ok;
}

Test(sshd_agent, agent_forwarding_reaches_the_clients_agent_through_a_private_socket)
{
    mint_simple("alice", "alice", "root", "\"access\"");
    mint_simple("agentkey", "agentkey", "root", "\"access\"");
    char fp[128] = "", *line = NULL, out[4096];
    char *text = read_text("agentkey-cert.pub");
    struct rp_ssh_cert c;
    cr_assert_eq(rp_ssh_cert_parse_line(text, &c, &line), 0);
    free(text);
    cr_assert_eq(rp_ssh_fingerprint(c.key, fp, sizeof fp), 0);
    rp_ssh_cert_free(&c);
    free(line);
    cr_assert(agent_test_script("agentkey", out, sizeof out), "ssh -A failed: %s", out);
    cr_assert(strstr(out, "700\n") != NULL, "the agent socket's directory is not 0700: %s", out);
    cr_assert(strstr(out, fp) != NULL, "the forwarded agent does not list %s: %s", fp, out);
}

/* Runs `sleep 30` as @name; returns how long until the server cut it (ms). */
static uint64_t time_until_cut(const char *name)
{
    struct cl_run r;
    uint64_t t0 = cl_now_ms();
    client("ssh", name, &r, 20000, "root@127.0.0.1", "sleep 30", NULL);
    uint64_t took = cl_now_ms() - t0;
    cr_assert_neq(r.status, 0, "sleep 30 ended well after %llu ms", (unsigned long long)took);
    cl_run_free(&r);
    return took;
}

Test(sshd_agent, client_idle_timeout_closes_a_silent_session)
{
    mint_simple("ivan", "ivan", "root", "\"idle\"");
    uint64_t took = time_until_cut("ivan");
    cr_assert(took >= 1500 && took < 10000, "cut after %llu ms; client_idle_timeout is 2s",
              (unsigned long long)took);
    expect_audit("\"event\":\"client.disconnect\"", "client_idle_timeout", "\"user\":\"ivan\"");
}

Test(sshd_agent, disconnect_expired_cert_closes_the_session_when_the_certificate_expires)
{
    struct mint m = {.name = "judy",
                     .user = "judy",
                     .principals = "root",
                     .roles = "\"expiring\"",
                     .after_s = -60,
                     .before_s = 4};
    mint(&m);
    uint64_t took = time_until_cut("judy");
    cr_assert(took < 10000, "cut after %llu ms; the certificate expired after about 4 s",
              (unsigned long long)took);
    expect_audit("\"event\":\"client.disconnect\"", "certificate expired", "\"user\":\"judy\"");
}

Test(sshd_agent, connections_beyond_max_unauthenticated_are_closed_at_accept)
{
    stop_fixture();
    max_unauth = "2";
    start_fixture("3000", false);
    int fds[3];
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)atoi(port_s)),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int i = 0; i < 3; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        cr_assert_eq(connect(fds[i], (struct sockaddr *)&sa, sizeof sa), 0);
        cl_sleep_ms(200); /* accepted in order */
    }
    /* The third is closed at once; the first two get the server's banner. */
    char buf[256];
    struct pollfd p = {fds[2], POLLIN, 0};
    cr_assert_eq(poll(&p, 1, 2000), 1);
    cr_assert_eq(read(fds[2], buf, sizeof buf), 0, "the third connection was served");
    for (int i = 0; i < 2; i++) {
        struct pollfd q = {fds[i], POLLIN, 0};
        cr_assert_eq(poll(&q, 1, 2000), 1);
        ssize_t n = read(fds[i], buf, sizeof buf);
        cr_assert(n > 4 && memcmp(buf, "SSH-", 4) == 0, "connection %d got no banner", i);
    }
    for (int i = 0; i < 3; i++)
        close(fds[i]);
    char *log = read_text("fixture.log");
    cr_assert(strstr(log, "max_unauthenticated") != NULL, "no log line: %s", log);
    free(log);
    max_unauth = "64";
}

/* ssh -o @ctl -o @opt @flag root@... @command, in the background. */
static pid_t spawn_ssh_bg(const char *name, const char *ctl, const char *opt, const char *flag,
                          const char *command)
{
    char key[512], certopt[600];
    path_of(key, sizeof key, name);
    snprintf(certopt, sizeof certopt, "CertificateFile=%s-cert.pub", key);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        execlp("ssh", "ssh", "-o", "UserKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=no",
               "-o", "IdentitiesOnly=yes", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-i", key,
               "-o", certopt, "-p", port_s, "-o", ctl, "-o", opt, flag, "root@127.0.0.1", command,
               (char *)NULL);
        _exit(127);
    }
    return pid;
}

Test(sshd_agent, max_sessions_refuses_a_second_session_on_one_connection)
{
    mint_simple("kim", "kim", "root", "\"one\"");
    char mux[512], ctl[600], flag[512], cmd[700];
    path_of(mux, sizeof mux, "mux");
    snprintf(ctl, sizeof ctl, "ControlPath=%s", mux);
    path_of(flag, sizeof flag, "first-started");
    pid_t master = spawn_ssh_bg("kim", ctl, "ControlMaster=yes", "-N", NULL);
    uint64_t end = cl_now_ms() + 10000;
    while (!rp_file_exists(mux) && cl_now_ms() < end)
        cl_sleep_ms(50);
    cr_assert(rp_file_exists(mux), "the control master did not start");
    snprintf(cmd, sizeof cmd, "touch %s; sleep 30", flag);
    pid_t first = spawn_ssh_bg("kim", ctl, "ControlMaster=no", "-T", cmd);
    end = cl_now_ms() + 10000;
    while (!rp_file_exists(flag) && cl_now_ms() < end)
        cl_sleep_ms(50);
    cr_assert(rp_file_exists(flag), "the first session did not start");
    /* The mux client asks the master's connection for a second session; refused, it
     * falls back to a connection of its own, where the command runs. */
    struct cl_run r;
    client("ssh", "kim", &r, 20000, "-o", ctl, "root@127.0.0.1", "echo second", NULL);
    cl_run_free(&r);
    kill(first, SIGKILL);
    kill(master, SIGKILL);
    waitpid(first, NULL, 0);
    waitpid(master, NULL, 0);
    expect_audit("\"event\":\"session.rejected\"", "max_sessions is 1", "\"user\":\"kim\"");
    char *log = read_text("fixture.log");
    size_t accepted = 0;
    for (char *p = log; (p = strstr(p, "accepted kim@root")) != NULL; p++)
        accepted++;
    free(log);
    cr_assert_eq(accepted, 2, "the second session should have needed a second connection");
}
