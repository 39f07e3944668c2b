/* tests/test_int_tsh_login.c: build/tsh as a user runs it, against a real auth cluster,
 * a real proxy (`raftport start --roles=proxy`) and a real node agent.
 *
 * Logging in with the password on standard input, trusting the proxy by the CA pin;
 * a wrong password refused without touching the profile; TOTP; an invite redeemed with
 * the QR code's secret driven by oathtool; status, ls filtered by the user's roles and
 * by labels, config; an expired certificate's message; logout; the version warning
 * (and --skip-version-check); a recorded PTY session listed and played through the
 * auth pass-through. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/totp.h"
#include "lib/util.h"
#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"
#include "tests/lib/proxy_proc.h"

static void teardown(void)
{
    px_stop_all();
    ag_stop_all();
    cluster_teardown();
}

TestSuite(tsh_login, .init = cluster_setup, .fini = teardown, .timeout = 240);

static char home[600];

/* A one-node cluster, proxy 1, the preset roles, and the tsh home in the temp dir. */
static void start_cluster_and_proxy(const char *const *proxy_env)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(20000), "the preset roles did not appear");
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(1, token, NULL);
    px_spawn_with(1, NULL, proxy_env);
    bool ready = px_wait_ready(1, 40000);
    if (!ready)
        px_print_log_tail(1, 40);
    cr_assert(ready, "the proxy did not start");
    snprintf(home, sizeof home, "%s/tsh-home", CL->dir);
}

/* A user with @roles and login root whose password is set through the invite. */
static void add_user(const char *name, const char *roles, const char *password,
                     const char *totp_b32)
{
    char *out = NULL, tok[128], code[64], rolesflag[128];
    snprintf(rolesflag, sizeof rolesflag, "--roles=%s", roles);
    cr_assert_eq(run_tctl(1, &out, "users", "add", name, rolesflag, "--logins=root", NULL), 0);
    cl_invite_token(out, tok, sizeof tok);
    free(out);
    char totp[8] = "";
    if (totp_b32 != NULL) {
        uint8_t key[64];
        size_t n = 0;
        cr_assert_eq(rp_base32_decode(totp_b32, key, sizeof key, &n), 0);
        cr_assert_eq(rp_totp_code(key, n, rp_totp_step(rp_now_ms()), totp), 0);
    }
    cl_redeem_invite(1, tok, password, totp_b32, totp_b32 ? totp : NULL, code, sizeof code);
    cr_assert_str_eq(code, "", "redeeming %s's invite: %s", name, code);
}

/* Runs build/tsh with RAFTPORT_HOME=home, @env_extra ("NAME=VALUE ..." or ""), @stdin_text
 * on standard input (NULL: /dev/null), and the arguments (NULL-terminated). The exit
 * code; *out gets stdout and *err stderr when not NULL (free them). */
static int tsh(const char *stdin_text, const char *env_extra, char **out, char **err, ...)
    __attribute__((sentinel));
static int tsh(const char *stdin_text, const char *env_extra, char **out, char **err, ...)
{
    static int seq;
    char in_path[700] = "/dev/null", cmd[8192];
    if (stdin_text != NULL) {
        char name[64];
        snprintf(name, sizeof name, "tsh-stdin-%d", seq++);
        cl_write_file(name, stdin_text, in_path, sizeof in_path);
    }
    int n = snprintf(cmd, sizeof cmd, "exec env RAFTPORT_HOME='%s' %s '%s/tsh'", home, env_extra,
                     CL->build);
    va_list ap;
    va_start(ap, err);
    for (const char *a = va_arg(ap, const char *); a != NULL; a = va_arg(ap, const char *))
        n += snprintf(cmd + n, sizeof cmd - (size_t)n, " '%s'", a);
    va_end(ap);
    snprintf(cmd + n, sizeof cmd - (size_t)n, " < '%s'", in_path);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    struct cl_run r;
    int st = cl_run_argv(argv, 90000, &r);
    if (out != NULL)
        *out = r.out, r.out = NULL;
    if (err != NULL)
        *err = r.err, r.err = NULL;
    cl_run_free(&r);
    return st;
}

static char proxy_flag[96], pin_flag[160];

static void flags(void)
{
    snprintf(proxy_flag, sizeof proxy_flag, "--proxy=%s", PX[1].web_addr);
    snprintf(pin_flag, sizeof pin_flag, "--ca-pin=%s", CL->ca_pin);
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return st.st_mode & 0777;
}

static void start_node(void)
{
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare(1, token, NULL);
    ag_spawn(1);
    bool ok = ag_wait_log(1, "SSH service listening", 30000);
    if (!ok)
        ag_print_log_tail(1, 30);
    cr_assert(ok, "the agent did not start serving SSH");
}

/* `tsh ls --format=names` lists @want (or nothing when NULL), polled: the proxy's cache
 * learns the node from its watch a moment after the node's first heartbeat. */
struct ls_wait {
    const char *want;
    char *last;
};
static bool ls_shows(void *arg)
{
    struct ls_wait *w = arg;
    free(w->last);
    w->last = NULL;
    char *err = NULL;
    int st = tsh(NULL, "", &w->last, &err, "ls", "--format=names", NULL);
    if (st != 0) {
        free(w->last);
        w->last = err; /* what the failure said, for the assertion's message */
        return false;
    }
    free(err);
    return w->want != NULL && strstr(w->last, w->want) != NULL;
}

Test(tsh_login, password_login_status_ls_by_role_config_expiry_and_logout)
{
    start_cluster_and_proxy(NULL);
    flags();
    start_node();
    char role[700];
    cl_write_file("prodonly.yaml",
                  "kind: role\nversion: v7\nmetadata:\n  name: prodonly\nspec:\n  allow:\n"
                  "    logins: [root]\n    node_labels:\n      env: [prod]\n",
                  role, sizeof role);
    cr_assert_eq(run_tctl(1, NULL, "create", "-f", role, NULL), 0);
    add_user("alice", "access", "alice long password", NULL);
    add_user("bob", "prodonly", "bob long password", NULL);

    /* Not logged in yet: every command says how to log in. */
    char *out = NULL, *err = NULL;
    cr_assert_eq(tsh(NULL, "", &out, &err, "ls", NULL), 1);
    cr_assert(strstr(err, "not logged in: run tsh login --proxy=HOST:PORT --user=NAME"), "%s", err);
    free(out);
    free(err);

    /* The first contact without a pin: the proxy's certificate is the cluster CA's,
     * which the system roots do not know; the error says what to pass. */
    cr_assert_eq(
        tsh("alice long password\n", "", &out, &err, "login", proxy_flag, "--user=alice", NULL), 1);
    cr_assert(strstr(err, "--ca-pin") && strstr(err, "tctl status"), "%s", err);
    free(out);
    free(err);

    /* A wrong password: refused, and nothing written. */
    cr_assert_eq(tsh("not the password\n", "", &out, &err, "login", proxy_flag, "--user=alice",
                     pin_flag, NULL),
                 1);
    cr_assert(strstr(err, "invalid user name or password"), "%s", err);
    char path[800];
    snprintf(path, sizeof path, "%s/current-profile", home);
    cr_assert_not(rp_file_exists(path), "a failed login left a profile");
    free(out);
    free(err);

    /* The password on standard input; certificates shorter than the role allows. */
    uint64_t t0 = rp_mono_ms();
    int st = tsh("alice long password\n", "", &out, &err, "login", proxy_flag, "--user=alice",
                 pin_flag, "--ttl=2h", NULL);
    uint64_t login_ms = rp_mono_ms() - t0;
    cr_assert_eq(st, 0, "tsh login failed: %s", err);
    cr_assert(strstr(out, "[valid for 1h59m") || strstr(out, "[valid for 2h0m"), "%s", out);
    cr_assert(strstr(out, "Logged in as:       alice"), "%s", out);
    cr_assert(strstr(out, "Roles:              access"), "%s", out);
    free(out);
    free(err);
    snprintf(path, sizeof path, "%s/keys/%s/alice.key.pem", home, PX[1].web_addr);
    cr_assert_eq(mode_of(path), 0600);
    snprintf(path, sizeof path, "%s/keys/%s", home, PX[1].web_addr);
    cr_assert_eq(mode_of(path), 0700);
    /* The known_hosts trusts the host CA. */
    snprintf(path, sizeof path, "%s/keys/%s/known_hosts", home, PX[1].web_addr);
    char *kh = NULL;
    size_t khn;
    cr_assert_eq(rp_read_file(path, 1 << 20, &kh, &khn), 0);
    cr_assert(strncmp(kh, "@cert-authority * ssh-", 22) == 0, "%s", kh);
    free(kh);

    /* status, as JSON. */
    cr_assert_eq(tsh(NULL, "", &out, &err, "status", "--format=json", NULL), 0, "%s", err);
    struct cl_json *j = cl_json_parse(out);
    cr_assert_not_null(j, "status is not JSON: %s", out);
    const struct cl_json *active = cl_json_get(j, "active");
    cr_assert_str_eq(cl_json_str(active, "username"), "alice");
    cr_assert_str_eq(cl_json_str(active, "cluster"), CL->cluster_name);
    cr_assert_str_eq(cl_json_str(active, "ca_pin"), CL->ca_pin);
    cl_json_free(j);
    free(out);
    free(err);

    /* ls: alice (the preset access role: her own logins, every node) sees the node; the
     * label filter narrows. */
    struct ls_wait w = {.want = "node1"};
    bool seen = wait_until(30000, ls_shows, &w);
    cr_assert(seen, "tsh ls never listed node1; last: %s", w.last ? w.last : "(failed)");
    free(w.last);
    t0 = rp_mono_ms();
    cr_assert_eq(tsh(NULL, "", &out, &err, "ls", NULL), 0, "%s", err);
    fprintf(stderr, "tsh login (password, argon2id at auth): %llu ms; tsh ls: %llu ms\n",
            (unsigned long long)login_ms, (unsigned long long)(rp_mono_ms() - t0));
    cr_assert(strstr(out, "Node Name") && strstr(out, "node1") && strstr(out, "env=test"), "%s",
              out);
    free(out);
    free(err);
    cr_assert_eq(tsh(NULL, "", &out, &err, "ls", "env=test", "--format=json", NULL), 0);
    cr_assert(strstr(out, "\"hostname\": \"node1\""), "%s", out);
    free(out);
    free(err);
    cr_assert_eq(tsh(NULL, "", &out, &err, "ls", "env=prod", "--format=names", NULL), 0);
    cr_assert_str_eq(out, "");
    free(out);
    free(err);

    /* config: an OpenSSH block through tsh proxy ssh. */
    cr_assert_eq(tsh(NULL, "", &out, &err, "config", NULL), 0, "%s", err);
    char want[256];
    snprintf(want, sizeof want, "Host *.%s %s\n", CL->cluster_name, CL->cluster_name);
    cr_assert(strstr(out, want), "%s", out);
    snprintf(want, sizeof want, " proxy ssh --cluster=%s --proxy=%s %%r@%%h:%%p", CL->cluster_name,
             PX[1].web_addr);
    cr_assert(strstr(out, want) && strstr(out, "CertificateFile"), "%s", out);
    free(out);
    free(err);

    /* version: the client's and the proxy's. */
    cr_assert_eq(tsh(NULL, "", &out, &err, "version", NULL), 0);
    cr_assert(strstr(out, "tsh 0.") && strstr(out, "Proxy "), "%s", out);
    free(out);
    free(err);

    /* bob's role allows only env=prod nodes: his ls is empty. His login replaces
     * alice's profile of this proxy. */
    st = tsh("bob long password\n", "", &out, &err, "login", proxy_flag, "--user=bob", NULL);
    cr_assert_eq(st, 0, "bob's login (trusting the profile's CA, no pin) failed: %s", err);
    free(out);
    free(err);
    snprintf(path, sizeof path, "%s/keys/%s/alice", home, PX[1].web_addr);
    cr_assert_not(rp_file_exists(path), "alice's key stayed after bob logged in");
    cr_assert_eq(tsh(NULL, "", &out, &err, "ls", "--format=names", NULL), 0, "%s", err);
    cr_assert_str_eq(out, "", "bob (env=prod only) must not see node1 (env=test)");
    free(out);
    free(err);

    /* An expired certificate: the message names the time and the login command. */
    snprintf(path, sizeof path, "%s/%s.yaml", home, PX[1].web_addr);
    char *yaml = NULL;
    size_t yn;
    cr_assert_eq(rp_read_file(path, 1 << 16, &yaml, &yn), 0);
    char *vb = strstr(yaml, "valid_before: \"");
    cr_assert_not_null(vb);
    memcpy(vb + 15, "2020-01-01T00:00:00Z", 20);
    cr_assert_eq(rp_write_file(path, yaml, yn, 0600), 0);
    free(yaml);
    cr_assert_eq(tsh(NULL, "", &out, &err, "ls", NULL), 1);
    snprintf(want, sizeof want,
             "your certificate expired at 2020-01-01T00:00:00Z: run tsh login --proxy=%s "
             "--user=bob",
             PX[1].web_addr);
    cr_assert(strstr(err, want), "%s", err);
    free(out);
    free(err);
    cr_assert_eq(tsh(NULL, "", &out, &err, "status", NULL), 1);
    cr_assert(strstr(out, "EXPIRED"), "%s", out);
    free(out);
    free(err);

    /* logout removes it all. */
    cr_assert_eq(tsh(NULL, "", &out, &err, "logout", NULL), 0, "%s", err);
    cr_assert(strstr(out, "Logged out bob from"), "%s", out);
    free(out);
    free(err);
    snprintf(path, sizeof path, "%s/keys/%s", home, PX[1].web_addr);
    cr_assert_not(rp_file_exists(path));
    cr_assert_eq(tsh(NULL, "", &out, &err, "status", NULL), 1);
    cr_assert(strstr(err, "not logged in"), "%s", err);
    free(out);
    free(err);
    px_stop_all();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_login, totp_user_logs_in_with_the_code_after_the_password)
{
    start_cluster_and_proxy(NULL);
    flags();
    uint8_t secret[RP_TOTP_SECRET_BYTES];
    char b32[64];
    cr_assert_eq(rp_totp_generate_secret(secret), 0);
    cr_assert_eq(rp_base32_encode(secret, sizeof secret, b32, sizeof b32), 0);
    add_user("carol", "access", "carol long password", b32);

    char *out = NULL, *err = NULL;
    /* Without the code: the answer says a code is needed. */
    cr_assert_eq(tsh("carol long password\n", "", &out, &err, "login", proxy_flag, "--user=carol",
                     pin_flag, NULL),
                 1);
    cr_assert(strstr(err, "one-time code"), "%s", err);
    free(out);
    free(err);
    /* The code of the next step: the enrolment used this one. */
    uint64_t step = rp_totp_step(rp_now_ms()) + 1;
    while (rp_totp_step(rp_now_ms()) < step)
        cl_sleep_ms(200);
    char code[8], input[128];
    cr_assert_eq(rp_totp_code(secret, sizeof secret, step, code), 0);
    snprintf(input, sizeof input, "carol long password\n%s\n", code);
    int st = tsh(input, "", &out, &err, "login", proxy_flag, "--user=carol", pin_flag, NULL);
    cr_assert_eq(st, 0, "%s", err);
    cr_assert(strstr(out, "Logged in as:       carol"), "%s", out);
    free(out);
    free(err);
    px_stop_all();
    cluster_pass();
}

/* ---- invites: tsh in a conversation through pipes ---------------------------------- */

/* Reads from @fd into @buf (appending at *@len) until @needle shows up or @ms pass. */
static bool read_until(int fd, char *buf, size_t cap, size_t *len, const char *needle, int ms)
{
    uint64_t deadline = rp_mono_ms() + (uint64_t)ms;
    while (strstr(buf, needle) == NULL) {
        int left = (int)(deadline - rp_mono_ms());
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (poll(&pfd, 1, left) <= 0)
            continue;
        ssize_t n = read(fd, buf + *len, cap - 1 - *len);
        if (n <= 0)
            return strstr(buf, needle) != NULL;
        *len += (size_t)n;
        buf[*len] = '\0';
    }
    return true;
}

Test(tsh_login, invite_sets_password_enrols_totp_from_the_qr_secret_and_logs_in)
{
    start_cluster_and_proxy(NULL);
    flags();
    char *out = NULL, tok[128];
    cr_assert_eq(run_tctl(1, &out, "users", "add", "dave", "--roles=access", "--logins=root", NULL),
                 0);
    cl_invite_token(out, tok, sizeof tok);
    free(out);

    int in[2], outp[2];
    cr_assert_eq(pipe(in), 0);
    cr_assert_eq(pipe(outp), 0);
    char bin[700], invite[200], errpath[700];
    snprintf(bin, sizeof bin, "%s/tsh", CL->build);
    snprintf(invite, sizeof invite, "--invite=%s", tok);
    snprintf(errpath, sizeof errpath, "%s/tsh-invite.err", CL->dir);
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(in[0], 0);
        dup2(outp[1], 1);
        int e = open(errpath, O_WRONLY | O_CREAT | O_TRUNC, 0600);
        dup2(e, 2);
        close(in[1]);
        close(outp[0]);
        setenv("RAFTPORT_HOME", home, 1);
        execl(bin, bin, "login", proxy_flag, "--user=dave", pin_flag, invite, (char *)NULL);
        _exit(127);
    }
    close(in[0]);
    close(outp[1]);
    const char pw[] = "dave long password\n";
    cr_assert_eq(write(in[1], pw, sizeof pw - 1), (ssize_t)(sizeof pw - 1));
    static char buf[65536];
    size_t len = 0;
    buf[0] = '\0';
    cr_assert(read_until(outp[0], buf, sizeof buf, &len, "&issuer=", 30000),
              "no otpauth URI from tsh: %s", buf);
    /* The QR code above the URI is drawn with half blocks. */
    cr_assert(strstr(buf, "\xE2\x96\x88") && strstr(buf, "\xE2\x96\x80"), "no QR code: %s", buf);
    char *sec = strstr(buf, "secret=");
    cr_assert_not_null(sec, "%s", buf);
    char b32[128];
    snprintf(b32, sizeof b32, "%.*s", (int)strcspn(sec + 7, "&\n"), sec + 7);
    /* The code from a program nobody here wrote. */
    char cmd[300], *code = NULL;
    snprintf(cmd, sizeof cmd, "oathtool --totp -b %s", b32);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    struct cl_run r;
    cr_assert_eq(cl_run_argv(argv, 10000, &r), 0, "oathtool failed");
    code = r.out;
    r.out = NULL;
    cl_run_free(&r);
    cr_assert_eq(write(in[1], code, strlen(code)), (ssize_t)strlen(code));
    free(code);
    /* tsh logs in with the next step's code itself (up to 30 s later). */
    cr_assert(read_until(outp[0], buf, sizeof buf, &len, "Logged in as:       dave", 70000),
              "tsh did not log dave in: %s", buf);
    int status = 0;
    uint64_t deadline = rp_mono_ms() + 10000;
    while (waitpid(pid, &status, WNOHANG) == 0 && rp_mono_ms() < deadline)
        cl_sleep_ms(50);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "tsh login --invite exited %d",
              status);
    close(in[1]);
    close(outp[0]);
    char *err = NULL;
    cr_assert_eq(tsh(NULL, "", &out, &err, "status", NULL), 0, "%s", err);
    cr_assert(strstr(out, "Logged in as:       dave"), "%s", out);
    free(out);
    free(err);
    /* The invite is spent. */
    cr_assert_eq(tsh("another long password\n123456\n", "", &out, &err, "login", proxy_flag,
                     "--user=dave", invite, NULL),
                 1);
    cr_assert(strstr(err, "invalid, expired or already used"), "%s", err);
    free(out);
    free(err);
    px_stop_all();
    cluster_pass();
}

Test(tsh_login, version_warning_names_the_versions_and_skip_version_check_silences_it)
{
    start_cluster_and_proxy(NULL);
    flags();
    add_user("erin", "access", "erin long password", NULL);
    char *out = NULL, *err = NULL;
    /* A tsh on a newer major than the proxy: Teleport's warning, then the proxy's own
     * refusal of the login request names the rule. */
    tsh("erin long password\n", "RAFTPORT_VERSION_OVERRIDE=7.0.0", &out, &err, "login", proxy_flag,
        "--user=erin", pin_flag, NULL);
    cr_assert(strstr(err, "WARNING\nDetected potentially incompatible client and server versions."),
              "%s", err);
    cr_assert(strstr(err, "Maximum client version supported by the server is 0.x.x but you are "
                          "using 7.0.0."),
              "%s", err);
    free(out);
    free(err);
    tsh("erin long password\n", "RAFTPORT_VERSION_OVERRIDE=7.0.0", &out, &err, "login", proxy_flag,
        "--user=erin", pin_flag, "--skip-version-check", NULL);
    cr_assert_null(strstr(err, "WARNING"), "%s", err);
    free(out);
    free(err);
    /* A proxy two majors ahead (RAFTPORT_VERSION_OVERRIDE; --skip-version-check lets it
     * follow the older auth): this tsh is older than its min_client_version. */
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(2, token, NULL);
    const char *args[] = {"--skip-version-check", NULL};
    const char *env[] = {"RAFTPORT_VERSION_OVERRIDE=2.0.0", NULL};
    px_spawn_with(2, args, env);
    bool ready = px_wait_ready(2, 40000);
    if (!ready)
        px_print_log_tail(2, 30);
    cr_assert(ready, "the 2.0.0 proxy did not start");
    char proxy2[96];
    snprintf(proxy2, sizeof proxy2, "--proxy=%s", PX[2].web_addr);
    tsh("erin long password\n", "", &out, &err, "login", proxy2, "--user=erin", pin_flag, NULL);
    cr_assert(strstr(err, "Minimum client version supported by the server is 1.0.0 but you are "
                          "using 0.1.0."),
              "%s", err);
    cr_assert(strstr(err, "Please upgrade tsh to 1.0.0 or newer or use the --skip-version-check "
                          "flag to bypass this check."),
              "%s", err);
    free(out);
    free(err);

    /* The same version: no warning, and the login works. */
    cr_assert_eq(tsh("erin long password\n", "", &out, &err, "login", proxy_flag, "--user=erin",
                     pin_flag, NULL),
                 0, "%s", err);
    cr_assert_null(strstr(err, "WARNING"), "%s", err);
    free(out);
    free(err);
    /* --insecure works, and says what it costs. */
    cr_assert_eq(tsh("erin long password\n", "", &out, &err, "login", proxy_flag, "--user=erin",
                     "--insecure", NULL),
                 0, "%s", err);
    cr_assert(strstr(err, "WARNING: --insecure: the proxy's certificate is not checked"), "%s",
              err);
    free(out);
    free(err);
    px_stop_all();
    cluster_pass();
}

/* ---- recordings --------------------------------------------------------------------- */

struct rec_wait {
    char sid[64];
    char *last;
};
static bool recording_listed(void *arg)
{
    struct rec_wait *w = arg;
    free(w->last);
    w->last = NULL;
    if (tsh(NULL, "", &w->last, NULL, "recordings", "ls", "--format=json", NULL) != 0)
        return false;
    struct cl_json *j = cl_json_parse(w->last);
    bool found = false;
    for (size_t i = 0; j != NULL && j->type == CLJ_ARR && i < j->n; i++) {
        const struct cl_json *c = cl_json_get(&j->items[i], "complete");
        if (c && c->type == CLJ_BOOL && c->b) {
            snprintf(w->sid, sizeof w->sid, "%s", cl_json_str(&j->items[i], "sid"));
            found = true;
        }
    }
    cl_json_free(j);
    return found;
}

Test(tsh_login, recorded_session_is_listed_and_played_through_the_proxy)
{
    start_cluster_and_proxy(NULL);
    flags();
    start_node();
    add_user("frank", "access,auditor", "frank long password", NULL);
    char *out = NULL, *err = NULL;
    cr_assert_eq(tsh("frank long password\n", "", &out, &err, "login", proxy_flag, "--user=frank",
                     pin_flag, NULL),
                 0, "%s", err);
    free(out);
    free(err);
    /* A PTY session with stock ssh and the key and certificate tsh wrote. */
    char key[800], cert[800], host[64], cmd[4096];
    snprintf(key, sizeof key, "%s/keys/%s/frank", home, PX[1].web_addr);
    snprintf(cert, sizeof cert, "%s/keys/%s/frank-cert.pub", home, PX[1].web_addr);
    snprintf(host, sizeof host, "%s", AG[1].ssh_addr);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    snprintf(cmd, sizeof cmd,
             "(sleep 1; echo 'echo tsh-play-marker-$((6*7))'; sleep 1; echo exit) | ssh -tt -F "
             "/dev/null -i %s -o CertificateFile=%s -o IdentitiesOnly=yes -o BatchMode=yes -o "
             "StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o ConnectTimeout=10 -p %s "
             "root@%s",
             key, cert, colon + 1, host);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    struct cl_run r;
    int st = cl_run_argv(argv, 30000, &r);
    cr_assert_eq(st, 0, "the PTY session failed: %s %s", r.out, r.err);
    cl_run_free(&r);

    struct rec_wait w = {.last = NULL};
    bool listed = wait_until(60000, recording_listed, &w);
    cr_assert(listed, "tsh recordings ls never listed a complete recording: %s",
              w.last ? w.last : "(failed)");
    free(w.last);
    cr_assert_eq(tsh(NULL, "", &out, &err, "recordings", "ls", NULL), 0, "%s", err);
    cr_assert(strstr(out, w.sid) && strstr(out, "frank"), "%s", out);
    free(out);
    free(err);
    cr_assert_eq(tsh(NULL, "", &out, &err, "play", w.sid, "--format=asciicast", NULL), 0, "%s",
                 err);
    cr_assert(strncmp(out, "{\"version\":2", 12) == 0 || strncmp(out, "{\"version\": 2", 13) == 0,
              "%.200s", out);
    cr_assert(strstr(out, "tsh-play-marker-42"), "the recording lacks the marker");
    free(out);
    free(err);
    cr_assert_eq(tsh(NULL, "", &out, &err, "play", w.sid, "--speed=16", NULL), 0, "%s", err);
    cr_assert(strstr(out, "tsh-play-marker-42"), "tsh play did not show the session: %s", out);
    free(out);
    free(err);
    cr_assert_eq(tsh(NULL, "", &out, &err, "play", w.sid, "--format=json", NULL), 0, "%s", err);
    cr_assert(strstr(out, "\"events\"") && strstr(out, "tsh-play-marker-42"), "%.300s", out);
    free(out);
    free(err);
    /* Without the auditor role: refused, with what to ask for. */
    add_user("gina", "access", "gina long password", NULL);
    cr_assert_eq(
        tsh("gina long password\n", "", &out, &err, "login", proxy_flag, "--user=gina", NULL), 0,
        "%s", err);
    free(out);
    free(err);
    cr_assert_eq(tsh(NULL, "", &out, &err, "play", w.sid, NULL), 1);
    cr_assert(strstr(err, "session"), "%s", err);
    free(out);
    free(err);
    px_stop_all();
    ag_stop_all();
    cluster_pass();
}

/* ---- on a terminal --------------------------------------------------------------------- */

/* tsh on a pseudo-terminal: the child's pid, the master side in *@fd. */
static pid_t tsh_on_pty(int *fd, char *const argv[])
{
    pid_t pid = forkpty(fd, NULL, NULL, NULL);
    cr_assert_geq(pid, 0, "forkpty: %s", strerror(errno));
    if (pid == 0) {
        setenv("RAFTPORT_HOME", home, 1);
        setenv("TERM", "dumb", 1);
        execv(argv[0], argv);
        _exit(127);
    }
    return pid;
}

static void type_on(int fd, const char *text)
{
    cr_assert_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
}

static int wait_exit(pid_t pid, int ms)
{
    int status = -1;
    uint64_t deadline = rp_mono_ms() + (uint64_t)ms;
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (rp_mono_ms() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            return -1;
        }
        cl_sleep_ms(50);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

Test(tsh_login, terminal_password_is_not_echoed_and_an_expired_login_is_offered_again)
{
    start_cluster_and_proxy(NULL);
    flags();
    add_user("hana", "access", "hana long password", NULL);
    char bin[700];
    snprintf(bin, sizeof bin, "%s/tsh", CL->build);
    char *login[] = {bin, "login", proxy_flag, "--user=hana", pin_flag, NULL};
    int fd;
    pid_t pid = tsh_on_pty(&fd, login);
    static char buf[65536];
    size_t len = 0;
    buf[0] = '\0';
    cr_assert(
        read_until(fd, buf, sizeof buf, &len, "Enter password for Raftport user hana:", 20000),
        "no password prompt: %s", buf);
    type_on(fd, "hana long password\r");
    /* second_factor "optional": tsh asks, Enter means none. */
    cr_assert(read_until(fd, buf, sizeof buf, &len, "press Enter if you have none", 20000),
              "no code prompt: %s", buf);
    type_on(fd, "\r");
    cr_assert(read_until(fd, buf, sizeof buf, &len, "Logged in as:       hana", 30000),
              "no login: %s", buf);
    cr_assert_eq(wait_exit(pid, 10000), 0);
    close(fd);
    cr_assert_null(strstr(buf, "hana long password"), "the password was echoed: %s", buf);

    /* Expire the profile: tsh status on the terminal offers to log in again. */
    char path[800];
    snprintf(path, sizeof path, "%s/%s.yaml", home, PX[1].web_addr);
    char *yaml = NULL;
    size_t yn;
    cr_assert_eq(rp_read_file(path, 1 << 16, &yaml, &yn), 0);
    char *vb = strstr(yaml, "valid_before: \"");
    cr_assert_not_null(vb);
    memcpy(vb + 15, "2020-01-01T00:00:00Z", 20);
    cr_assert_eq(rp_write_file(path, yaml, yn, 0600), 0);
    free(yaml);
    char *ls[] = {bin, "ls", NULL};
    pid = tsh_on_pty(&fd, ls);
    len = 0;
    buf[0] = '\0';
    cr_assert(read_until(fd, buf, sizeof buf, &len, "Log in again now? [Y/n]", 20000),
              "no offer to log in again: %s", buf);
    cr_assert(strstr(buf, "your certificate expired at 2020-01-01T00:00:00Z: run tsh login"), "%s",
              buf);
    type_on(fd, "y\r");
    cr_assert(
        read_until(fd, buf, sizeof buf, &len, "Enter password for Raftport user hana:", 20000),
        "no password prompt: %s", buf);
    type_on(fd, "hana long password\r");
    cr_assert(read_until(fd, buf, sizeof buf, &len, "press Enter if you have none", 20000), "%s",
              buf);
    type_on(fd, "\r");
    cr_assert(read_until(fd, buf, sizeof buf, &len, "Node Name", 30000),
              "ls did not run after the new login: %s", buf);
    cr_assert_eq(wait_exit(pid, 10000), 0);
    close(fd);
    px_stop_all();
    cluster_pass();
}
