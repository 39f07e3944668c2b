/* tests/test_int_sshd.c: certificates signed by lib/ssh_cert against a real OpenSSH
 * server and client. sshd trusts our user CA (TrustedUserCAKeys) and presents a host
 * certificate we signed; ssh trusts our host CA through an @cert-authority line. Every
 * key file here is written by our own OpenSSH-format writer, so sshd and ssh also
 * exercise lib/ssh_key. Runs as root (sshd needs it; the login is root). */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
#include "tests/lib/raft_helpers.h"

/* sshd re-executes itself for each connection, which needs its absolute path. */
#define SSHD "/usr/sbin/sshd"
#define SSH "/usr/bin/ssh"

static struct {
    char *dir;
    int port;
    pid_t sshd;
    EVP_PKEY *user_ca, *other_user_ca, *host_ca, *other_host_ca;
    EVP_PKEY *user_key, *host_key;
} E;

/* ---- files -------------------------------------------------------------------------- */

static void path_of(char *out, size_t outlen, const char *name)
{
    cr_assert_lt(snprintf(out, outlen, "%s/%s", E.dir, name), (int)outlen);
}

static void write_file(const char *name, const char *text, unsigned mode)
{
    char p[512];
    path_of(p, sizeof p, name);
    cr_assert_eq(rp_write_file(p, text, strlen(text), mode), 0, "%s", rp_errmsg());
}

/* Writes @key's public line, plus @prefix in front (for @cert-authority lines). */
static void write_pub_line(const char *name, const char *prefix, EVP_PKEY *key)
{
    char *line;
    struct rp_buf b;
    cr_assert_eq(rp_ssh_pubkey_format(key, "raftport-test", &line), 0, "%s", rp_errmsg());
    rp_buf_init(&b);
    rp_buf_printf(&b, "%s%s\n", prefix, line);
    write_file(name, (char *)b.data, 0644);
    rp_buf_free(&b);
    free(line);
}

/* Writes the private key in OpenSSH format, mode 0600 (ssh and sshd refuse more). */
static void write_private(const char *name, EVP_PKEY *key)
{
    char *text;
    cr_assert_eq(rp_ssh_privkey_format(key, "raftport-test", &text), 0, "%s", rp_errmsg());
    write_file(name, text, 0600);
    free(text);
}

static void write_cert_line(const char *name, const struct rp_buf *blob)
{
    char *line;
    struct rp_buf b;
    cr_assert_eq(rp_ssh_cert_format(blob->data, blob->len, "raftport-test", &line), 0, "%s",
                 rp_errmsg());
    rp_buf_init(&b);
    rp_buf_printf(&b, "%s\n", line);
    write_file(name, (char *)b.data, 0644);
    rp_buf_free(&b);
    free(line);
}

static EVP_PKEY *gen(void)
{
    EVP_PKEY *k = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &k), 0, "%s", rp_errmsg());
    return k;
}

/* ---- sshd --------------------------------------------------------------------------- */

static char *read_log(void)
{
    char p[512], *s = NULL;
    size_t n;
    path_of(p, sizeof p, "sshd.log");
    if (rp_read_file(p, 1 << 20, &s, &n) != 0)
        return strdup("(no sshd log)");
    return s;
}

static void write_sshd_config(bool host_cert)
{
    char p[512];
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_printf(&b, "Port %d\nListenAddress 127.0.0.1\n", E.port);
    path_of(p, sizeof p, "host_key");
    rp_buf_printf(&b, "HostKey %s\n", p);
    if (host_cert) {
        path_of(p, sizeof p, "host_key-cert.pub");
        rp_buf_printf(&b, "HostCertificate %s\n", p);
    }
    path_of(p, sizeof p, "user_ca.pub");
    rp_buf_printf(&b, "TrustedUserCAKeys %s\n", p);
    /* Only certificates can log in: no authorized_keys, no passwords. */
    rp_buf_printf(&b, "AuthorizedKeysFile none\n"
                      "PasswordAuthentication no\n"
                      "KbdInteractiveAuthentication no\n"
                      "PubkeyAuthentication yes\n"
                      "StrictModes no\n"
                      "PidFile none\n"
                      "UsePAM no\n"
                      "PermitRootLogin prohibit-password\n"
                      "LogLevel VERBOSE\n");
    write_file("sshd_config", (char *)b.data, 0644);
    rp_buf_free(&b);
}

struct sshd_wait {
    int port;
    pid_t pid;
    bool exited;
};

/* True once sshd accepts connections on the port, or once it has exited. */
static bool sshd_up_or_gone(void *arg)
{
    struct sshd_wait *w = arg;
    int st;
    if (waitpid(w->pid, &st, WNOHANG) == w->pid) {
        w->exited = true;
        return true;
    }
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)w->port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool up = connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0;
    close(fd);
    return up;
}

static pid_t spawn_sshd(void)
{
    char conf[512], log[512];
    path_of(conf, sizeof conf, "sshd_config");
    path_of(log, sizeof log, "sshd.log");
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        /* If the test process dies before its teardown, sshd goes with it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int in = open("/dev/null", O_RDONLY);
        int out = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        if (in < 0 || out < 0)
            _exit(127);
        dup2(in, 0);
        dup2(out, 1);
        dup2(out, 2);
        close_range(3, ~0U, 0);
        execl(SSHD, SSHD, "-D", "-e", "-f", conf, (char *)NULL);
        dprintf(2, "exec %s: %s\n", SSHD, strerror(errno));
        _exit(127);
    }
    return pid;
}

/* Starts sshd on a free port and waits until it listens. A port taken between our
 * probe and sshd's bind is retried with another. */
static void start_sshd(bool host_cert)
{
    for (int attempt = 0; attempt < 3; attempt++) {
        E.port = rt_free_port();
        write_sshd_config(host_cert);
        struct sshd_wait w = {.port = E.port, .pid = spawn_sshd()};
        E.sshd = w.pid;
        bool done = rt_wait(sshd_up_or_gone, &w, 15000);
        if (done && !w.exited)
            return;
        char *log = read_log();
        if (!w.exited) {
            kill(w.pid, SIGKILL);
            waitpid(w.pid, NULL, 0);
        }
        E.sshd = -1;
        if (w.exited && strstr(log, "Address already in use") != NULL) {
            free(log);
            continue;
        }
        cr_assert_fail("sshd did not start listening on 127.0.0.1:%d%s; its log:\n%s", E.port,
                       w.exited ? " (it exited)" : " within 15 s", log);
    }
    cr_assert_fail("sshd found no free port in 3 attempts");
}

static bool sshd_gone(void *arg)
{
    (void)arg;
    return waitpid(E.sshd, NULL, WNOHANG) == E.sshd;
}

static void stop_sshd(void)
{
    if (E.sshd <= 0)
        return;
    kill(E.sshd, SIGTERM);
    if (!rt_wait(sshd_gone, NULL, 5000)) {
        kill(E.sshd, SIGKILL);
        waitpid(E.sshd, NULL, 0);
    }
    E.sshd = -1;
}

/* ---- fixture ------------------------------------------------------------------------ */

static void setup(void)
{
    memset(&E, 0, sizeof E);
    E.sshd = -1;
    E.dir = rt_tmpdir("sshd");
    /* sshd's privilege separation directory; the package only creates it at boot. */
    if (mkdir("/run/sshd", 0755) != 0 && errno != EEXIST)
        cr_assert_fail("mkdir /run/sshd: %s", strerror(errno));
    E.user_ca = gen();
    E.other_user_ca = gen();
    E.host_ca = gen();
    E.other_host_ca = gen();
    E.user_key = gen();
    E.host_key = gen();
    write_pub_line("user_ca.pub", "", E.user_ca);
    write_private("host_key", E.host_key);
    write_private("id", E.user_key);
}

static void teardown(void)
{
    stop_sshd();
    EVP_PKEY_free(E.user_ca);
    EVP_PKEY_free(E.other_user_ca);
    EVP_PKEY_free(E.host_ca);
    EVP_PKEY_free(E.other_host_ca);
    EVP_PKEY_free(E.user_key);
    EVP_PKEY_free(E.host_key);
    rt_rmtree(E.dir);
    free(E.dir);
}

TestSuite(sshd, .init = setup, .fini = teardown);

/* ---- certificates and logins -------------------------------------------------------- */

static char *root_only[] = {"root"};

/* A user certificate for our key: principals @principals, valid [now+from, now+to). */
static void sign_user_cert(EVP_PKEY *ca, char **principals, size_t n, int64_t from, int64_t to,
                           struct rp_buf *out)
{
    struct rp_ssh_cert_opt ext[] = {
        {RP_SSH_EXT_PERMIT_PTY, ""},
        {RP_SSH_EXT_TELEPORT_ROLES, "{\"version\":\"v1\",\"roles\":[\"access\"]}"},
    };
    int64_t now = (int64_t)time(NULL);
    struct rp_ssh_cert c = {
        .type = RP_SSH_CERT_USER,
        .key = E.user_key,
        .serial = 42,
        .key_id = "alice",
        .principals = principals,
        .n_principals = n,
        .valid_after = (uint64_t)(now + from),
        .valid_before = (uint64_t)(now + to),
        .extensions = ext,
        .n_extensions = 2,
    };
    rp_buf_init(out);
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, out), 0, "%s", rp_errmsg());
}

static void sign_host_cert(EVP_PKEY *ca)
{
    char *principals[] = {"127.0.0.1", "localhost"};
    struct rp_ssh_cert_opt ext[] = {
        {RP_SSH_EXT_TELEPORT_ROLE, "Node"},
        {RP_SSH_EXT_TELEPORT_AUTHORITY, "example.com"},
    };
    int64_t now = (int64_t)time(NULL);
    struct rp_ssh_cert c = {
        .type = RP_SSH_CERT_HOST,
        .key = E.host_key,
        .key_id = "node-1",
        .principals = principals,
        .n_principals = 2,
        .valid_after = (uint64_t)(now - 60),
        .valid_before = (uint64_t)(now + 3600),
        .extensions = ext,
        .n_extensions = 2,
    };
    struct rp_buf blob;
    rp_buf_init(&blob);
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), 0, "%s", rp_errmsg());
    write_cert_line("host_key-cert.pub", &blob);
    rp_buf_free(&blob);
}

/* Runs `ssh root@127.0.0.1 echo ok` with our key and @cert as id-cert.pub. With
 * @known_hosts NULL the host key is not checked; otherwise only @known_hosts is
 * trusted, strictly. */
static void ssh_login(const struct rp_buf *cert, const char *known_hosts, struct cl_run *r)
{
    char id[512], certfile[512], kh[512], o_cert[600], o_kh[600], port[16];
    write_cert_line("id-cert.pub", cert);
    path_of(id, sizeof id, "id");
    path_of(certfile, sizeof certfile, "id-cert.pub");
    snprintf(o_cert, sizeof o_cert, "CertificateFile=%s", certfile);
    snprintf(port, sizeof port, "%d", E.port);
    if (known_hosts != NULL) {
        path_of(kh, sizeof kh, known_hosts);
        snprintf(o_kh, sizeof o_kh, "UserKnownHostsFile=%s", kh);
    } else {
        snprintf(o_kh, sizeof o_kh, "UserKnownHostsFile=/dev/null");
    }
    /* -F /dev/null and IdentityAgent=none: nothing from this machine's ssh setup (its
     * config, an agent, ~/.ssh keys) takes part. */
    char *argv[] = {SSH,
                    "-F",
                    "/dev/null",
                    "-i",
                    id,
                    "-o",
                    o_cert,
                    "-o",
                    "IdentitiesOnly=yes",
                    "-o",
                    "IdentityAgent=none",
                    "-o",
                    known_hosts ? "StrictHostKeyChecking=yes" : "StrictHostKeyChecking=no",
                    "-o",
                    o_kh,
                    "-o",
                    "GlobalKnownHostsFile=/dev/null",
                    "-o",
                    "BatchMode=yes",
                    "-o",
                    "ConnectTimeout=10",
                    "-p",
                    port,
                    "root@127.0.0.1",
                    "echo",
                    "ok",
                    NULL};
    cl_run_argv(argv, 30000, r);
}

/* How sshd's log names our user certificate signed by @ca: "ED25519-CERT <key
 * fingerprint> ID alice (serial 42) CA ED25519 <CA fingerprint>". */
static void ca_log_text(EVP_PKEY *ca, char *out, size_t outlen)
{
    char key_fp[RP_SSH_FINGERPRINT_LEN], ca_fp[RP_SSH_FINGERPRINT_LEN];
    cr_assert_eq(rp_ssh_fingerprint(E.user_key, key_fp, sizeof key_fp), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_fingerprint(ca, ca_fp, sizeof ca_fp), 0, "%s", rp_errmsg());
    snprintf(out, outlen, "ED25519-CERT %s ID alice (serial 42) CA ED25519 %s", key_fp, ca_fp);
}

static void assert_login_ok(const struct rp_buf *cert, const char *known_hosts)
{
    struct cl_run r;
    char want[256];
    ssh_login(cert, known_hosts, &r);
    char *log = read_log();
    if (r.status != 0 || strcmp(r.out, "ok\n") != 0)
        cr_assert_fail("ssh failed (exit %d): stdout '%s' stderr '%s'\nsshd log:\n%s", r.status,
                       r.out, r.err, log);
    /* It was the certificate that got in, signed by the user CA. */
    ca_log_text(E.user_ca, want, sizeof want);
    cr_assert(strstr(log, "Accepted publickey for root from 127.0.0.1") != NULL &&
                  strstr(log, want) != NULL,
              "sshd did not log accepting '%s':\n%s", want, log);
    free(log);
    cl_run_free(&r);
}

/* The login must fail at authentication: "Permission denied", not some other error
 * that would make the test pass for the wrong reason. @sshd_says, when not NULL, is
 * what sshd must have logged about it. */
static void assert_login_denied(const struct rp_buf *cert, const char *sshd_says)
{
    struct cl_run r;
    ssh_login(cert, NULL, &r);
    char *log = read_log();
    cr_assert_neq(r.status, 0, "login succeeded: '%s'", r.out);
    cr_assert(strstr(r.out, "ok") == NULL);
    cr_assert(strstr(r.err, "Permission denied (publickey)") != NULL,
              "ssh failed but not at authentication (exit %d): %s\nsshd log:\n%s", r.status, r.err,
              log);
    if (sshd_says != NULL)
        cr_assert(strstr(log, sshd_says) != NULL, "sshd did not log '%s':\n%s", sshd_says, log);
    free(log);
    cl_run_free(&r);
}

Test(sshd, cert_listing_root_logs_in)
{
    struct rp_buf cert;
    start_sshd(false);
    sign_user_cert(E.user_ca, root_only, 1, -60, 3600, &cert);
    assert_login_ok(&cert, NULL);
    rp_buf_free(&cert);
}

Test(sshd, cert_not_listing_root_is_refused)
{
    char *others[] = {"alice", "bob"};
    struct rp_buf cert;
    start_sshd(false);
    sign_user_cert(E.user_ca, others, 2, -60, 3600, &cert);
    assert_login_denied(&cert, "name is not a listed principal");
    rp_buf_free(&cert);
}

Test(sshd, expired_cert_is_refused)
{
    struct rp_buf cert;
    start_sshd(false);
    sign_user_cert(E.user_ca, root_only, 1, -7200, -3600, &cert);
    assert_login_denied(&cert, "Certificate invalid: expired");
    rp_buf_free(&cert);
}

Test(sshd, not_yet_valid_cert_is_refused)
{
    struct rp_buf cert;
    start_sshd(false);
    sign_user_cert(E.user_ca, root_only, 1, 3600, 7200, &cert);
    assert_login_denied(&cert, "Certificate invalid: not yet valid");
    rp_buf_free(&cert);
}

Test(sshd, cert_from_another_ca_is_refused)
{
    struct rp_buf cert;
    start_sshd(false);
    char want[256];
    sign_user_cert(E.other_user_ca, root_only, 1, -60, 3600, &cert);
    /* sshd saw the certificate and refused it ("Failed publickey ... CA <other CA>"). */
    ca_log_text(E.other_user_ca, want, sizeof want);
    assert_login_denied(&cert, want);
    rp_buf_free(&cert);
}

Test(sshd, tampered_cert_is_refused)
{
    struct rp_buf cert;
    start_sshd(false);
    sign_user_cert(E.user_ca, root_only, 1, -60, 3600, &cert);
    /* One byte of the key id ("alice" -> "blice"): still well formed, and the
     * signature no longer covers it. */
    uint8_t *at = memmem(cert.data, cert.len, "alice", 5);
    cr_assert_not_null(at);
    at[0] = 'b';
    struct rp_ssh_cert parsed;
    cr_assert_eq(rp_ssh_cert_parse(cert.data, cert.len, &parsed), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_verify(&parsed), RP_EDENIED);
    rp_ssh_cert_free(&parsed);
    /* ssh itself checks the signature when it loads the file and does not offer the
     * certificate, so sshd only ever sees the bare key; either way: no login. */
    assert_login_denied(&cert, NULL);
    char *log = read_log();
    cr_assert(strstr(log, "Accepted") == NULL && strstr(log, "ID blice") == NULL, "%s", log);
    free(log);
    rp_buf_free(&cert);
}

/* ---- host certificates -------------------------------------------------------------- */

Test(sshd, host_cert_is_trusted_through_cert_authority_line)
{
    struct rp_buf cert;
    sign_host_cert(E.host_ca);
    write_pub_line("known_hosts", "@cert-authority * ", E.host_ca);
    start_sshd(true);
    sign_user_cert(E.user_ca, root_only, 1, -60, 3600, &cert);
    assert_login_ok(&cert, "known_hosts");
    rp_buf_free(&cert);
}

Test(sshd, host_cert_from_another_ca_is_not_trusted)
{
    struct rp_buf cert;
    struct cl_run r;
    sign_host_cert(E.host_ca);
    write_pub_line("known_hosts", "@cert-authority * ", E.other_host_ca);
    start_sshd(true);
    sign_user_cert(E.user_ca, root_only, 1, -60, 3600, &cert);
    ssh_login(&cert, "known_hosts", &r);
    cr_assert_neq(r.status, 0, "connected to a host whose CA is not trusted: '%s'", r.out);
    cr_assert(strstr(r.err, "Host key verification failed") != NULL, "ssh said: %s", r.err);
    cl_run_free(&r);
    rp_buf_free(&cert);
}

/* ---- the whole chain: tctl auth export into sshd, tctl auth sign for ssh ------------- */

static void setup_with_cluster(void)
{
    cluster_setup();
    setup();
}

static void teardown_with_cluster(void)
{
    teardown();
    cluster_teardown();
}

TestSuite(sshd_tctl, .init = setup_with_cluster, .fini = teardown_with_cluster, .timeout = 120);

static bool preset_exists(void *arg)
{
    (void)arg;
    char *out = NULL;
    int rv = run_tctl(1, &out, "get", "role/access", NULL);
    free(out);
    return rv == 0;
}

/* `tctl auth sign --user=USER -o DIR/USER`; loads the key as "id" and returns the
 * certificate blob in @cert. */
static void tctl_sign_user(const char *user, struct rp_buf *cert)
{
    char path[512], u[64];
    path_of(path, sizeof path, user);
    snprintf(u, sizeof u, "--user=%s", user);
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "auth", "sign", u, "-o", path, "--ttl=1h", NULL), 0);
    free(out);
    size_t n;
    char *key = NULL, *line = NULL, certpath[600];
    cr_assert_eq(rp_read_file(path, 1 << 20, &key, &n), 0, "%s", rp_errmsg());
    write_file("id", key, 0600);
    snprintf(certpath, sizeof certpath, "%s-cert.pub", path);
    cr_assert_eq(rp_read_file(certpath, 1 << 20, &line, &n), 0, "%s", rp_errmsg());
    uint8_t *blob;
    size_t blen;
    char *comment = NULL;
    line[strcspn(line, "\n")] = '\0';
    cr_assert_eq(rp_ssh_line_split(line, &blob, &blen, &comment), 0, "%s", rp_errmsg());
    rp_buf_init(cert);
    rp_buf_append(cert, blob, blen);
    free(blob);
    free(comment);
    free(key);
    free(line);
}

Test(sshd_tctl, exported_user_ca_and_signed_certificate_log_in_to_a_stock_sshd)
{
    cluster_start(1);
    cr_assert(wait_until(15000, preset_exists, NULL), "the preset role access never appeared");
    char *out = NULL;
    cr_assert_eq(
        run_tctl(1, &out, "users", "add", "alice", "--roles=access", "--logins=root", NULL), 0);
    free(out);
    cr_assert_eq(
        run_tctl(1, &out, "users", "add", "bob", "--roles=access", "--logins=ubuntu", NULL), 0);
    free(out);
    /* sshd trusts exactly what tctl exports. */
    cr_assert_eq(run_tctl(1, &out, "auth", "export", "--type=user", NULL), 0);
    cr_assert(strncmp(out, "ssh-ed25519 ", 12) == 0, "not a TrustedUserCAKeys line: %s", out);
    write_file("user_ca.pub", out, 0644);
    free(out);
    start_sshd(false);

    struct rp_buf cert;
    struct cl_run r;
    tctl_sign_user("alice", &cert);
    ssh_login(&cert, NULL, &r);
    char *log = read_log();
    cr_assert(r.status == 0 && strcmp(r.out, "ok\n") == 0,
              "alice (login root) did not get in: exit %d, %s\n%s", r.status, r.err, log);
    cr_assert(strstr(log, "ID alice") != NULL, "sshd did not log alice's certificate:\n%s", log);
    free(log);
    cl_run_free(&r);

    /* One byte of the signed part changed: refused. */
    cert.data[cert.len / 2] ^= 0x01;
    assert_login_denied(&cert, NULL);
    rp_buf_free(&cert);

    /* bob's roles give him ubuntu, not root. */
    tctl_sign_user("bob", &cert);
    assert_login_denied(&cert, "not a listed principal");
    rp_buf_free(&cert);

    /* The issuances are in the audit log. */
    cr_assert_eq(run_tctl(1, &out, "events", "ls", "--type=cert.create", "--format=json", NULL), 0);
    cr_assert(strstr(out, "\"identity\":\"alice\"") && strstr(out, "\"identity\":\"bob\""),
              "cert.create events missing:\n%s", out);
    free(out);
    cluster_pass();
}
