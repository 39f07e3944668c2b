/* tests/test_int_tsh_ssh.c: tsh's SSH client (tsh/ssh.c, tsh/scp.c) against a real node.
 *
 * A real auth server, a real `raftport start --roles=node`, alice's key and certificate
 * from `tctl auth sign`, and the node's host key from `tctl nodes ls
 * --format=known_hosts` (the key its verified host certificate certifies, what tsh_dial
 * hands the client through the proxy). The client runs over a plain TCP connection to
 * the node: the SSH layer takes any connected fd, so these tests check it without a
 * proxy in the path. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"
#include "tsh/ssh.h"

TestSuite(tsh_ssh, .init = cluster_setup, .fini = cluster_teardown, .timeout = 300);

static char key_path[600], cert_path[600], host_key[4096];

/* One auth server, one node agent, alice (logins root) with a certificate; the node's
 * verified host key into host_key. */
static void start_node_and_user(void)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(20000));
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
    cr_assert_eq(
        run_tctl(1, NULL, "auth", "sign", "--user=alice", "--ttl=1h", "-o", key_path, NULL), 0);
    char *kh = NULL;
    for (int i = 0; i < 100; i++) {
        free(kh);
        kh = NULL;
        cr_assert_eq(run_tctl(1, &kh, "nodes", "ls", "--format=known_hosts", NULL), 0);
        if (strstr(kh, "ssh-ed25519"))
            break;
        cl_sleep_ms(200);
    }
    char *k = strstr(kh, "ssh-ed25519");
    cr_assert(k, "tctl nodes ls --format=known_hosts listed no node");
    size_t n = strcspn(k, "\r\n");
    cr_assert_lt(n, sizeof host_key);
    memcpy(host_key, k, n);
    host_key[n] = '\0';
    free(kh);
}

static int connect_node(void)
{
    char host[64];
    snprintf(host, sizeof host, "%s", AG[1].ssh_addr);
    char *colon = strrchr(host, ':');
    cr_assert(colon);
    *colon = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    cr_assert_eq(inet_pton(AF_INET, host, &sa.sin_addr), 1);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0, "connect %s: %s",
                 AG[1].ssh_addr, strerror(errno));
    return fd;
}

static struct tsh_ssh_opts opts_for(const char *command)
{
    struct tsh_ssh_opts o = {
        .auth = {.login = "root",
                 .host = "node1",
                 .key_path = key_path,
                 .cert_path = cert_path,
                 .host_key = host_key},
        .command = command,
        .tty = TSH_TTY_AUTO,
        .in_fd = -1,
        .out_fd = -1,
        .err_fd = -1,
    };
    return o;
}

static char *slurp_fd(int fd)
{
    struct rp_buf b;
    rp_buf_init(&b);
    char buf[4096];
    lseek(fd, 0, SEEK_SET);
    ssize_t n;
    while ((n = read(fd, buf, sizeof buf)) > 0)
        rp_buf_append(&b, buf, (size_t)n);
    rp_buf_append(&b, "", 1);
    return (char *)b.data;
}

/* Runs @command on the node with stdin from /dev/null; its output into *out and *err
 * (free them); returns what tsh_ssh_session_run returned, *code the exit code. */
static int exec_on_node(const char *command, struct tsh_ssh_opts *o, int *code, char **out,
                        char **err)
{
    FILE *fo = tmpfile(), *fe = tmpfile();
    cr_assert(fo && fe);
    int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
    o->command = command;
    o->in_fd = in;
    o->out_fd = fileno(fo);
    o->err_fd = fileno(fe);
    int fd = connect_node();
    int rv = tsh_ssh_session_run(fd, o, code);
    close(fd);
    close(in);
    *out = slurp_fd(fileno(fo));
    *err = slurp_fd(fileno(fe));
    fclose(fo);
    fclose(fe);
    return rv;
}

Test(tsh_ssh, exec_passes_output_and_the_remote_exit_code)
{
    start_node_and_user();
    struct tsh_ssh_opts o = opts_for(NULL);
    int code = -1;
    char *out, *err;
    cr_assert_eq(exec_on_node("echo hi", &o, &code, &out, &err), 0, "%s", rp_errmsg());
    cr_assert_eq(code, 0);
    cr_assert_str_eq(out, "hi\n");
    free(out), free(err);

    cr_assert_eq(exec_on_node("false", &o, &code, &out, &err), 0, "%s", rp_errmsg());
    cr_assert_eq(code, 1, "false exits 1 through tsh");
    free(out), free(err);

    cr_assert_eq(exec_on_node("echo to-out; echo to-err >&2; exit 7", &o, &code, &out, &err), 0,
                 "%s", rp_errmsg());
    cr_assert_eq(code, 7);
    cr_assert_str_eq(out, "to-out\n", "stdout stays stdout");
    cr_assert_str_eq(err, "to-err\n", "stderr stays stderr");
    free(out), free(err);

    cr_assert_eq(exec_on_node("kill -TERM $$", &o, &code, &out, &err), 0, "%s", rp_errmsg());
    cr_assert_eq(code, 128 + SIGTERM, "a command killed by SIGTERM exits 143, as with ssh");
    free(out), free(err);
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, a_node_with_another_host_key_is_refused)
{
    start_node_and_user();
    struct tsh_ssh_opts o = opts_for(NULL);
    /* Any other Ed25519 key, as a node impersonating node1 would hold. */
    EVP_PKEY *other = NULL;
    char *pub = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &other), 0);
    cr_assert_eq(rp_ssh_pubkey_format(other, NULL, &pub), 0);
    EVP_PKEY_free(other);
    o.auth.host_key = pub;
    int code = -1;
    char *out, *err;
    int rv = exec_on_node("echo should-not-run", &o, &code, &out, &err);
    cr_assert_eq(rv, RP_EDENIED);
    cr_assert(strstr(rp_errmsg(), "host key"), "the error names the host key: %s", rp_errmsg());
    cr_assert_eq(strstr(out, "should-not-run"), NULL);
    free(out), free(err), free(pub);
    ag_stop_all();
    cluster_pass();
}

/* ---- scp ------------------------------------------------------------------------------ */

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

/* An SFTP copy over a fresh authenticated connection; the copy's result. */
static int scp_run(bool upload, const char *src, const char *dst, bool recursive)
{
    struct tsh_ssh_opts o = opts_for(NULL);
    int fd = connect_node();
    ssh_session s = NULL;
    int rv = tsh_ssh_connect(fd, &o.auth, &s);
    cr_assert_eq(rv, 0, "%s", rp_errmsg());
    struct tsh_scp_opts so = {.recursive = recursive, .progress_fd = -1};
    const char *srcs[] = {src};
    rv = upload ? tsh_scp_upload(s, srcs, 1, dst, &so) : tsh_scp_download(s, srcs, 1, dst, &so);
    tsh_ssh_close(s);
    close(fd);
    return rv;
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s: %s", path, strerror(errno));
    return st.st_mode & 07777;
}

Test(tsh_ssh, scp_copies_trees_both_ways_with_their_modes)
{
    start_node_and_user();
    char cmd[8192], src[700], up[700], down[700], p[800];
    snprintf(src, sizeof src, "%s/tree", CL->dir);
    snprintf(up, sizeof up, "%s/up", CL->dir);
    snprintf(down, sizeof down, "%s/down", CL->dir);
    snprintf(cmd, sizeof cmd,
             "set -e; mkdir -p %s/sub/deeper %s/empty; echo alpha > %s/a.txt; chmod 640 %s/a.txt;"
             "head -c 300000 /dev/urandom > %s/sub/b.bin; chmod 755 %s/sub/b.bin;"
             "echo gamma > %s/sub/deeper/c; : > %s/zero",
             src, src, src, src, src, src, src, src);
    cr_assert_eq(sh(cmd, NULL, 10000), 0);

    /* The node's side of this test is the same machine: "up" is a path on the node. */
    cr_assert_eq(scp_run(true, src, up, false), RP_EINVAL, "a directory needs -r");
    cr_assert(strstr(rp_errmsg(), "-r"), "the error says to use -r: %s", rp_errmsg());
    cr_assert_eq(scp_run(true, src, up, true), 0, "%s", rp_errmsg());
    snprintf(cmd, sizeof cmd, "diff -r %s %s", src, up);
    cr_assert_eq(sh(cmd, NULL, 10000), 0, "the uploaded tree differs");
    snprintf(p, sizeof p, "%s/a.txt", up);
    cr_assert_eq(mode_of(p), 0640);
    snprintf(p, sizeof p, "%s/sub/b.bin", up);
    cr_assert_eq(mode_of(p), 0755);

    cr_assert_eq(scp_run(false, up, down, true), 0, "%s", rp_errmsg());
    snprintf(cmd, sizeof cmd, "diff -r %s %s", src, down);
    cr_assert_eq(sh(cmd, NULL, 10000), 0, "the downloaded tree differs");
    snprintf(p, sizeof p, "%s/a.txt", down);
    cr_assert_eq(mode_of(p), 0640);
    snprintf(p, sizeof p, "%s/sub/b.bin", down);
    cr_assert_eq(mode_of(p), 0755);

    /* Into an existing directory: the file keeps its name. */
    snprintf(p, sizeof p, "%s/a.txt", src);
    cr_assert_eq(scp_run(false, p, down, false), 0, "%s", rp_errmsg());
    cr_assert_eq(scp_run(true, p, up, false), 0, "%s", rp_errmsg());

    snprintf(p, sizeof p, "%s/no-such-file", CL->dir);
    cr_assert_eq(scp_run(false, p, down, false), RP_ENOTFOUND);
    cr_assert(strstr(rp_errmsg(), "no-such-file"), "the error names the file: %s", rp_errmsg());
    ag_stop_all();
    cluster_pass();
}

static double secs_since(uint64_t start_ms)
{
    return (double)(rp_mono_ms() - start_ms) / 1000.0;
}

Test(tsh_ssh, scp_of_100_mib_keeps_every_byte)
{
    start_node_and_user();
    char cmd[4096], a[700], b[700], c[700];
    snprintf(a, sizeof a, "%s/big", CL->dir);
    snprintf(b, sizeof b, "%s/big.up", CL->dir);
    snprintf(c, sizeof c, "%s/big.down", CL->dir);
    snprintf(cmd, sizeof cmd, "head -c %d /dev/urandom > %s", 100 << 20, a);
    cr_assert_eq(sh(cmd, NULL, 60000), 0);
    uint64_t t0 = rp_mono_ms();
    cr_assert_eq(scp_run(true, a, b, false), 0, "%s", rp_errmsg());
    double up_s = secs_since(t0);
    t0 = rp_mono_ms();
    cr_assert_eq(scp_run(false, b, c, false), 0, "%s", rp_errmsg());
    double down_s = secs_since(t0);
    cr_log_info("100 MiB: upload %.2f s (%.0f MiB/s), download %.2f s (%.0f MiB/s)", up_s,
                100 / up_s, down_s, 100 / down_s);
    fprintf(stderr, "100 MiB: upload %.2f s (%.0f MiB/s), download %.2f s (%.0f MiB/s)\n", up_s,
            100 / up_s, down_s, 100 / down_s);
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "sha256sum < %s; sha256sum < %s; sha256sum < %s", a, b, c);
    cr_assert_eq(sh(cmd, &out, 60000), 0);
    char *l2 = strchr(out, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    cr_assert_eq(strncmp(out, l2, 64), 0, "the upload's sha256 differs");
    cr_assert_eq(strncmp(out, l3, 64), 0, "the download's sha256 differs");
    free(out);
    ag_stop_all();
    cluster_pass();
}
