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
#include <sys/prctl.h>
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
#include "tests/lib/proxy_proc.h"
#include "tsh/ssh.h"
#include "tsh/tsh.h"

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
    /* A link to its own directory: followed, the copy would never end. */
    snprintf(p, sizeof p, "%s/sub/loop", src);
    cr_assert_eq(symlink(".", p), 0);

    /* The node's side of this test is the same machine: "up" is a path on the node. */
    cr_assert_eq(scp_run(true, src, up, false), RP_EINVAL, "a directory needs -r");
    cr_assert(strstr(rp_errmsg(), "-r"), "the error says to use -r: %s", rp_errmsg());
    cr_assert_eq(scp_run(true, src, up, true), 0, "%s", rp_errmsg());
    snprintf(p, sizeof p, "%s/sub/loop", up);
    struct stat lst;
    cr_assert_neq(lstat(p, &lst), 0, "links inside a tree are skipped");
    snprintf(p, sizeof p, "%s/sub/loop", src);
    unlink(p);
    snprintf(cmd, sizeof cmd, "diff -r %s %s", src, up);
    cr_assert_eq(sh(cmd, NULL, 10000), 0, "the uploaded tree differs");
    snprintf(p, sizeof p, "%s/a.txt", up);
    cr_assert_eq(mode_of(p), 0640);
    snprintf(p, sizeof p, "%s/sub/b.bin", up);
    cr_assert_eq(mode_of(p), 0755);

    snprintf(p, sizeof p, "%s/sub/loop", up);
    cr_assert_eq(symlink(".", p), 0); /* the same on the node's side, for the download */
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

/* Stock scp (SFTP, OpenSSH >= 9) with alice's certificate to the same node: the
 * figure tsh scp is compared with. Seconds it took, or -1. */
static double stock_scp_to(int agent, const char *from, const char *to)
{
    char host[64], kh[700], cmd[4096];
    snprintf(host, sizeof host, "%s", AG[agent].ssh_addr);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    snprintf(kh, sizeof kh, "%s/known_hosts", CL->dir);
    FILE *f = fopen(kh, "w");
    fprintf(f, "[%s]:%s %s\n", host, colon + 1, host_key);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "scp -q -F /dev/null -i %s -o CertificateFile=%s -o IdentitiesOnly=yes -o "
             "BatchMode=yes -o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o "
             "Ciphers=chacha20-poly1305@openssh.com -o KexAlgorithms=curve25519-sha256 -P %s "
             "root@%s:%s %s",
             key_path, cert_path, kh, colon + 1, host, from, to);
    uint64_t t0 = rp_mono_ms();
    if (sh(cmd, NULL, 300000) != 0)
        return -1;
    return secs_since(t0);
}

Test(tsh_ssh, scp_of_100_mib_keeps_every_byte)
{
    start_node_and_user();
    /* TSH_SCP_MB changes the size, for measuring by hand. */
    int mb = getenv("TSH_SCP_MB") ? atoi(getenv("TSH_SCP_MB")) : 100;
    cr_assert_gt(mb, 0);
    char cmd[4096], a[700], b[700], c[700], d[700];
    snprintf(a, sizeof a, "%s/big", CL->dir);
    snprintf(b, sizeof b, "%s/big.up", CL->dir);
    snprintf(c, sizeof c, "%s/big.down", CL->dir);
    snprintf(d, sizeof d, "%s/big.stock", CL->dir);
    snprintf(cmd, sizeof cmd, "head -c %dM /dev/urandom > %s", mb, a);
    cr_assert_eq(sh(cmd, NULL, 120000), 0);
    uint64_t t0 = rp_mono_ms();
    cr_assert_eq(scp_run(true, a, b, false), 0, "%s", rp_errmsg());
    double up_s = secs_since(t0);
    t0 = rp_mono_ms();
    cr_assert_eq(scp_run(false, b, c, false), 0, "%s", rp_errmsg());
    double down_s = secs_since(t0);
    double stock_s = stock_scp_to(1, b, d);
    fprintf(stderr,
            "%d MiB: tsh scp upload %.2f s (%.0f MiB/s), download %.2f s (%.0f MiB/s); stock scp "
            "download from the same node %.2f s (%.0f MiB/s)\n",
            mb, up_s, mb / up_s, down_s, mb / down_s, stock_s, stock_s > 0 ? mb / stock_s : 0);
    char *out = NULL;
    snprintf(cmd, sizeof cmd, "sha256sum < %s; sha256sum < %s; sha256sum < %s", a, b, c);
    cr_assert_eq(sh(cmd, &out, 120000), 0);
    char *l2 = strchr(out, '\n') + 1, *l3 = strchr(l2, '\n') + 1;
    cr_assert_eq(strncmp(out, l2, 64), 0, "the upload's sha256 differs");
    cr_assert_eq(strncmp(out, l3, 64), 0, "the download's sha256 differs");
    free(out);
    ag_stop_all();
    cluster_pass();
}

/* ---- PTY sessions --------------------------------------------------------------------- */

/* Reads @master into @acc until @needle shows up (true) or @ms pass. */
static bool read_until(int master, struct rp_buf *acc, const char *needle, int ms)
{
    uint64_t end = rp_mono_ms() + (uint64_t)ms;
    for (;;) {
        if (acc->len > 0 && memmem(acc->data, acc->len, needle, strlen(needle)) != NULL)
            return true;
        uint64_t now = rp_mono_ms();
        if (now >= end)
            return false;
        struct pollfd p = {master, POLLIN, 0};
        if (poll(&p, 1, (int)(end - now)) <= 0)
            continue;
        char buf[4096];
        ssize_t n = read(master, buf, sizeof buf);
        if (n <= 0)
            return acc->len > 0 && memmem(acc->data, acc->len, needle, strlen(needle)) != NULL;
        rp_buf_append(acc, buf, (size_t)n);
    }
}

static void type_line(int master, const char *line)
{
    cr_assert_eq(write(master, line, strlen(line)), (ssize_t)strlen(line));
}

/* A child on a new pseudo-terminal that runs an interactive tsh session (what `tsh ssh
 * node` does with a terminal) and says afterwards whether its terminal was restored. */
static pid_t spawn_pty_session(int *master, const struct winsize *ws)
{
    pid_t pid = forkpty(master, NULL, NULL, ws);
    cr_assert_neq(pid, -1, "forkpty: %s", strerror(errno));
    if (pid == 0) {
        struct termios before, after;
        tcgetattr(0, &before);
        setenv("TERM", "xterm", 1);
        struct tsh_ssh_opts o = opts_for(NULL);
        o.in_fd = 0, o.out_fd = 1, o.err_fd = 2;
        int fd = connect_node();
        int code = 255;
        int rv = tsh_ssh_session_run(fd, &o, &code);
        tcgetattr(0, &after);
        bool restored = before.c_lflag == after.c_lflag && before.c_iflag == after.c_iflag &&
                        before.c_oflag == after.c_oflag;
        dprintf(1, "\nsession-ended rv=%d %s\n", rv, restored ? "TTY-RESTORED" : "TTY-RAW");
        _exit(rv == 0 ? code : 250);
    }
    return pid;
}

static bool slave_is_cooked(int master)
{
    int fd = open(ptsname(master), O_RDWR | O_NOCTTY);
    cr_assert_geq(fd, 0);
    struct termios t;
    cr_assert_eq(tcgetattr(fd, &t), 0);
    close(fd);
    return (t.c_lflag & ICANON) && (t.c_lflag & ECHO);
}

Test(tsh_ssh, a_pty_session_is_raw_resizes_and_restores_the_terminal)
{
    start_node_and_user();
    struct winsize ws = {.ws_row = 30, .ws_col = 100};
    int master = -1;
    pid_t pid = spawn_pty_session(&master, &ws);
    struct rp_buf acc;
    rp_buf_init(&acc);
    type_line(master, "stty size; echo mark-$((6*7))\r");
    cr_assert(read_until(master, &acc, "mark-42", 20000), "no answer from the remote shell: %.*s",
              (int)acc.len, acc.data);
    cr_assert(memmem(acc.data, acc.len, "30 100", 6), "the remote PTY has the local size: %.*s",
              (int)acc.len, acc.data);
    cr_assert(!slave_is_cooked(master), "the local terminal is in raw mode during the session");

    struct winsize ws2 = {.ws_row = 41, .ws_col = 132};
    ioctl(master, TIOCSWINSZ, &ws2); /* the kernel sends SIGWINCH to the session */
    bool resized = false;
    for (int i = 0; i < 50 && !resized; i++) {
        rp_buf_reset(&acc);
        type_line(master, "stty size\r");
        resized = read_until(master, &acc, "41 132", 300);
    }
    cr_assert(resized, "a resize reaches the remote PTY: %.*s", (int)acc.len, acc.data);

    type_line(master, "exit 3\r");
    cr_assert(read_until(master, &acc, "session-ended", 20000), "the session did not end: %.*s",
              (int)acc.len, acc.data);
    cr_assert(read_until(master, &acc, "TTY-RESTORED", 2000), "the terminal was not restored: %.*s",
              (int)acc.len, acc.data);
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 3, "the shell's exit code is tsh's (%d)", st);
    close(master);
    rp_buf_free(&acc);
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, a_signal_during_a_pty_session_restores_the_terminal)
{
    start_node_and_user();
    struct winsize ws = {.ws_row = 24, .ws_col = 80};
    int master = -1;
    pid_t pid = spawn_pty_session(&master, &ws);
    struct rp_buf acc;
    rp_buf_init(&acc);
    type_line(master, "echo up-$((1+1))\r");
    cr_assert(read_until(master, &acc, "up-2", 20000), "no answer from the remote shell");
    cr_assert(!slave_is_cooked(master), "the local terminal is in raw mode during the session");
    kill(pid, SIGTERM);
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGTERM, "tsh dies of the signal (%d)", st);
    cr_assert(slave_is_cooked(master), "SIGTERM left the terminal in raw mode");
    close(master);
    rp_buf_free(&acc);
    ag_stop_all();
    cluster_pass();
}

/* ---- forwarding ----------------------------------------------------------------------- */

static int listen_any(int *port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fd, 8), 0);
    socklen_t sl = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &sl);
    *port = ntohs(sa.sin_port);
    return fd;
}

static int free_port(void)
{
    int port;
    close(listen_any(&port));
    return port;
}

/* A process that echoes every connection on @lfd back, upper-cased. */
static pid_t spawn_echo_server(int lfd)
{
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        for (;;) {
            int c = accept(lfd, NULL, NULL);
            if (c < 0)
                _exit(0);
            char buf[4096];
            ssize_t n;
            while ((n = read(c, buf, sizeof buf)) > 0) {
                for (ssize_t i = 0; i < n; i++)
                    buf[i] = (char)(buf[i] >= 'a' && buf[i] <= 'z' ? buf[i] - 32 : buf[i]);
                if (write(c, buf, (size_t)n) != n)
                    break;
            }
            close(c);
        }
    }
    return pid;
}

Test(tsh_ssh, local_forwarding_reaches_a_port_behind_the_node)
{
    start_node_and_user();
    int echo_port, lfd = listen_any(&echo_port);
    pid_t echo = spawn_echo_server(lfd);
    close(lfd);
    int fwd_port = free_port();
    char spec[128];
    snprintf(spec, sizeof spec, "%d:127.0.0.1:%d", fwd_port, echo_port);
    struct tsh_fwd fwd;
    cr_assert_eq(tsh_fwd_parse(spec, &fwd), 0, "%s", rp_errmsg());
    int in[2];
    cr_assert_eq(pipe(in), 0);
    pid_t pid = fork();
    if (pid == 0) {
        close(in[1]);
        struct tsh_ssh_opts o = opts_for("cat > /dev/null");
        o.in_fd = in[0], o.out_fd = 1, o.err_fd = 2;
        o.fwds = &fwd, o.n_fwds = 1;
        int fd = connect_node();
        int code = 255;
        int rv = tsh_ssh_session_run(fd, &o, &code);
        _exit(rv == 0 ? code : 250);
    }
    close(in[0]);
    /* The listener is up before the session starts; the channel opens per connection. */
    int c = -1;
    for (int i = 0; i < 200 && c < 0; i++) {
        c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)fwd_port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (connect(c, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(c);
            c = -1;
            cl_sleep_ms(50);
        }
    }
    cr_assert_geq(c, 0, "nothing listens on the forwarded port %d", fwd_port);
    const char *msg = "through the tunnel";
    cr_assert_eq(write(c, msg, strlen(msg)), (ssize_t)strlen(msg));
    shutdown(c, SHUT_WR);
    char got[128] = {0};
    size_t off = 0;
    struct pollfd p = {c, POLLIN, 0};
    while (off < sizeof got - 1 && poll(&p, 1, 10000) > 0) {
        ssize_t n = read(c, got + off, sizeof got - 1 - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(c);
    cr_assert_str_eq(got, "THROUGH THE TUNNEL", "the echo came back through -L and EOF ended it");
    close(in[1]); /* the remote cat ends, and with it the session */
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the session ended cleanly (%d)", st);
    kill(echo, SIGKILL);
    waitpid(echo, NULL, 0);
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, agent_forwarding_lets_the_node_use_the_local_agent)
{
    start_node_and_user();
    char cmd[4096], sock[700], key[700];
    snprintf(sock, sizeof sock, "%s/agent.sock", CL->dir);
    snprintf(key, sizeof key, "%s/agentkey", CL->dir);
    /* A real ssh-agent in the foreground, as our child: it dies with the test. */
    pid_t parent = getpid();
    pid_t agent = fork();
    cr_assert_neq(agent, -1);
    if (agent == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 1);
        execlp("ssh-agent", "ssh-agent", "-D", "-a", sock, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 100 && access(sock, F_OK) != 0; i++)
        cl_sleep_ms(50);
    snprintf(cmd, sizeof cmd,
             "ssh-keygen -q -t ed25519 -N '' -C forwarded-agent-key -f %s && "
             "SSH_AUTH_SOCK=%s ssh-add -q %s",
             key, sock, key);
    cr_assert_eq(sh(cmd, NULL, 20000), 0);
    setenv("SSH_AUTH_SOCK", sock, 1);
    struct tsh_ssh_opts o = opts_for(NULL);
    o.forward_agent = true;
    int code = -1;
    char *out, *err;
    cr_assert_eq(exec_on_node("ssh-add -l", &o, &code, &out, &err), 0, "%s", rp_errmsg());
    cr_assert_eq(code, 0, "ssh-add -l on the node failed: %s", err);
    cr_assert(strstr(out, "forwarded-agent-key"), "the node sees the local agent's key: %s", out);
    free(out), free(err);
    o.forward_agent = false;
    cr_assert_eq(exec_on_node("ssh-add -l", &o, &code, &out, &err), 0, "%s", rp_errmsg());
    cr_assert_neq(code, 0, "without -A the node has no agent");
    free(out), free(err);
    kill(agent, SIGKILL);
    waitpid(agent, NULL, 0);
    ag_stop_all();
    cluster_pass();
}

/* ---- through a real proxy, with tsh itself -------------------------------------------- */

static char proxy_web[64], tsh_home_dir[700];

static void print_proxy_log(void)
{
    px_print_log_tail(1, 60);
}

/* `raftport start --roles=proxy`, joined with a proxy token (tests/lib/proxy_proc.h). */
static void start_proxy(void)
{
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(1, token, NULL);
    px_spawn(1);
    bool up = px_wait_ready(1, 30000);
    if (!up)
        print_proxy_log();
    cr_assert(up, "the proxy did not start serving");
    snprintf(proxy_web, sizeof proxy_web, "%s", PX[1].web_addr);
}

static void stop_proxy(void)
{
    px_stop_all();
}

/* alice's profile for the proxy, as tsh login would leave it (design §5), made from
 * tctl auth sign (SSH key and certificate, X.509 key and certificate) and tctl auth
 * export (the host CA). */
static void make_profile(void)
{
    snprintf(tsh_home_dir, sizeof tsh_home_dir, "%s/tsh-home", CL->dir);
    struct tsh_profile p;
    memset(&p, 0, sizeof p);
    snprintf(p.proxy, sizeof p.proxy, "%s", proxy_web);
    snprintf(p.user, sizeof p.user, "alice");
    snprintf(p.cluster, sizeof p.cluster, "%s", CL->cluster_name);
    snprintf(p.ca_pin, sizeof p.ca_pin, "%.90s", CL->ca_pin);
    snprintf(p.logins[0], sizeof p.logins[0], "root");
    p.n_logins = 1;
    p.valid_before_ms = rp_now_ms() + 3600 * 1000;
    cr_assert_eq(tsh_profile_set_paths(&p, tsh_home_dir), 0, "%s", rp_errmsg());
    cr_assert_eq(tsh_profile_save(&p), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_mkdir_p(p.dir, 0700), 0);
    char tls[800], cmd[16384];
    snprintf(tls, sizeof tls, "%s/alice-tls", CL->dir);
    cr_assert_eq(
        run_tctl(1, NULL, "auth", "sign", "--user=alice", "--ttl=1h", "-o", p.key_path, NULL), 0);
    cr_assert_eq(run_tctl(1, NULL, "auth", "sign", "--user=alice", "--ttl=1h", "--format=tls", "-o",
                          tls, NULL),
                 0);
    char *hostca = NULL;
    cr_assert_eq(run_tctl(1, &hostca, "auth", "export", "--type=host", NULL), 0);
    cr_assert_eq(rp_write_file(p.known_hosts_path, hostca, strlen(hostca), 0600), 0);
    free(hostca);
    snprintf(cmd, sizeof cmd,
             "set -e; mkdir -p $(dirname %s); cp %s.crt %s; cp %s.key %s; cp %s.cas %s; "
             "ssh-keygen -y -f %s > %s; chmod 600 %s/* %s/cas/*",
             p.ca_path, tls, p.x509_path, tls, p.tls_key_path, tls, p.ca_path, p.key_path,
             p.pub_path, p.dir, p.dir);
    cr_assert_eq(sh(cmd, NULL, 10000), 0);
    struct tsh_profile back;
    cr_assert_eq(tsh_profile_load(tsh_home_dir, NULL, &back), 0, "%s", rp_errmsg());
}

/* Runs the tsh binary with the profile home and standard input from @in; exit code. */
static int tsh_in(char **out, char **err, const char *args, const char *in)
{
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "RAFTPORT_HOME=%s %s/tsh %s < %s", tsh_home_dir, CL->build, args, in);
    char *argv[] = {"/bin/sh", "-c", cmd, NULL};
    struct cl_run r;
    int st = cl_run_argv(argv, 120000, &r);
    if (out)
        *out = r.out, r.out = NULL;
    if (err)
        *err = r.err, r.err = NULL;
    cl_run_free(&r);
    return st;
}

static int tsh(char **out, char **err, const char *args)
{
    return tsh_in(out, err, args, "/dev/null");
}

static void start_all_with_proxy(void)
{
    start_node_and_user();
    start_proxy();
    make_profile();
}

Test(tsh_ssh, tsh_ssh_through_the_proxy_runs_commands_with_their_exit_codes)
{
    start_all_with_proxy();
    char *out = NULL, *err = NULL;
    int st = -1;
    /* The node's name as tsh ls shows it: the agent's nodename. */
    for (int i = 0; i < 100; i++) {
        free(out), free(err);
        st = tsh(&out, &err, "ssh root@node1 echo hi");
        if (st == 0 || !strstr(err, "not found"))
            break;
        cl_sleep_ms(200); /* the proxy's cache has not seen the node yet */
    }
    if (st != 0)
        print_proxy_log();
    cr_assert_eq(st, 0, "tsh ssh failed (%d): %s", st, err);
    cr_assert_str_eq(out, "hi\n");
    free(out), free(err);
    cr_assert_eq(tsh(&out, &err, "ssh node1 false"), 1,
                 "false exits 1 (the login defaults to "
                 "the profile's first): %s",
                 err);
    free(out), free(err);
    cr_assert_eq(tsh(&out, &err, "ssh -l root node1 'echo out; echo err >&2; exit 7'"), 7);
    cr_assert_str_eq(out, "out\n");
    cr_assert_str_eq(err, "err\n");
    free(out), free(err);

    cr_assert_eq(tsh(&out, &err, "ssh root@no-such-node true"), 255);
    cr_assert(strstr(err, "no-such-node") && strstr(err, "tsh ls"),
              "an unknown node is named with what to do: %s", err);
    free(out), free(err);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, tsh_scp_through_the_proxy_copies_both_ways)
{
    start_all_with_proxy();
    char cmd[8192], args[8192], src[700], back[700];
    snprintf(src, sizeof src, "%s/tree", CL->dir);
    snprintf(back, sizeof back, "%s/back", CL->dir);
    snprintf(cmd, sizeof cmd,
             "set -e; mkdir -p %s/sub; echo one > %s/one; chmod 600 %s/one; "
             "head -c 5000000 /dev/urandom > %s/sub/blob; mkdir %s",
             src, src, src, src, back);
    cr_assert_eq(sh(cmd, NULL, 10000), 0);
    char *out = NULL, *err = NULL;
    int st = -1;
    snprintf(args, sizeof args, "scp -r %s root@node1:%s/up", src, CL->dir);
    for (int i = 0; i < 100; i++) {
        free(out), free(err);
        st = tsh(&out, &err, args);
        if (st == 0 || !strstr(err, "not found"))
            break;
        cl_sleep_ms(200);
    }
    cr_assert_eq(st, 0, "tsh scp upload failed: %s", err);
    free(out), free(err);
    snprintf(args, sizeof args, "scp -r node1:%s/up %s/", CL->dir, back);
    cr_assert_eq(tsh(&out, &err, args), 0, "tsh scp download failed: %s", err);
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "diff -r %s %s/up && diff -r %s %s/up", src, CL->dir, src, back);
    cr_assert_eq(sh(cmd, NULL, 10000), 0, "the copies differ from the source");
    char p[800];
    snprintf(p, sizeof p, "%s/up/one", back);
    cr_assert_eq(mode_of(p), 0600);
    snprintf(args, sizeof args, "scp node1:%s/nothing-here %s/", CL->dir, back);
    cr_assert_eq(tsh(&out, &err, args), 1);
    cr_assert(strstr(err, "nothing-here"), "the failure names the file: %s", err);
    free(out), free(err);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, stock_ssh_goes_through_tsh_proxy_ssh)
{
    start_all_with_proxy();
    char kh[700], cmd[8192];
    struct tsh_profile p;
    cr_assert_eq(tsh_profile_load(tsh_home_dir, NULL, &p), 0, "%s", rp_errmsg());
    /* Stock ssh cannot check a libssh node's host certificate (no @cert-authority for
     * plain host keys): the node's key, pinned, as tsh config arranges. */
    snprintf(kh, sizeof kh, "%s/pinned_known_hosts", CL->dir);
    FILE *f = fopen(kh, "w");
    fprintf(f, "node1.%s %s\n", CL->cluster_name, host_key);
    fclose(f);
    snprintf(cmd, sizeof cmd,
             "ssh -F /dev/null -i %s -o CertificateFile=%s -o IdentitiesOnly=yes -o BatchMode=yes "
             "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes "
             "-o 'ProxyCommand=env RAFTPORT_HOME=%s %s/tsh proxy ssh --cluster=%s %%r@%%h:%%p' "
             "root@node1.%s echo via-proxy-command",
             p.key_path, p.cert_path, kh, tsh_home_dir, CL->build, CL->cluster_name,
             CL->cluster_name);
    char *out = NULL;
    int st = -1;
    for (int i = 0; i < 100; i++) {
        free(out);
        out = NULL;
        st = sh(cmd, &out, 60000);
        if (st == 0)
            break;
        cl_sleep_ms(200);
    }
    cr_assert_eq(st, 0, "stock ssh with tsh proxy ssh failed");
    cr_assert_str_eq(out, "via-proxy-command\n");
    free(out);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

/* Waits until the proxy's cache knows node1 (tsh ssh stops saying "not found"). */
static void wait_node_routable(void)
{
    char *out = NULL, *err = NULL;
    int st = -1;
    for (int i = 0; i < 100; i++) {
        st = tsh(&out, &err, "ssh root@node1 true");
        bool retry = st != 0 && strstr(err, "not found") != NULL;
        free(out), free(err);
        if (!retry)
            break;
        cl_sleep_ms(200);
    }
    if (st != 0)
        print_proxy_log();
    cr_assert_eq(st, 0, "node1 never became reachable through the proxy");
}

Test(tsh_ssh, tsh_ssh_interactive_through_the_proxy_on_a_pseudo_terminal)
{
    start_all_with_proxy();
    wait_node_routable();
    struct winsize ws = {.ws_row = 33, .ws_col = 111};
    int master = -1;
    char exe[700];
    snprintf(exe, sizeof exe, "%s/tsh", CL->build);
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        setenv("RAFTPORT_HOME", tsh_home_dir, 1);
        setenv("TERM", "xterm", 1);
        execl(exe, "tsh", "ssh", "root@node1", (char *)NULL);
        _exit(127);
    }
    struct rp_buf acc;
    rp_buf_init(&acc);
    type_line(master, "stty size; echo via-$((40+2))\r");
    cr_assert(read_until(master, &acc, "via-42", 20000), "no answer from the remote shell: %.*s",
              (int)acc.len, acc.data);
    cr_assert(memmem(acc.data, acc.len, "33 111", 6), "the remote PTY has the local size: %.*s",
              (int)acc.len, acc.data);
    cr_assert(!slave_is_cooked(master), "tsh put the terminal in raw mode");
    type_line(master, "exit 5\r");
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 5, "the shell's exit code is tsh's (%d)", st);
    cr_assert(slave_is_cooked(master), "tsh restored the terminal");
    close(master);
    rp_buf_free(&acc);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, tsh_ssh_forwards_a_local_port_through_the_proxy)
{
    start_all_with_proxy();
    wait_node_routable();
    int echo_port, lfd = listen_any(&echo_port);
    pid_t echo = spawn_echo_server(lfd);
    close(lfd);
    int fwd_port = free_port();
    char cmd[8192];
    /* The session lives while the remote sleep runs; the forwarding is used meanwhile. */
    snprintf(cmd, sizeof cmd, "RAFTPORT_HOME=%s %s/tsh ssh -L %d:127.0.0.1:%d root@node1 sleep 20",
             tsh_home_dir, CL->build, fwd_port, echo_port);
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        dup2(devnull, 0);
        execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
        _exit(127);
    }
    int c = -1;
    for (int i = 0; i < 200 && c < 0; i++) {
        c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in sa = {.sin_family = AF_INET,
                                 .sin_port = htons((uint16_t)fwd_port),
                                 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        if (connect(c, (struct sockaddr *)&sa, sizeof sa) != 0) {
            close(c);
            c = -1;
            cl_sleep_ms(50);
        }
    }
    cr_assert_geq(c, 0, "tsh ssh -L never listened on %d", fwd_port);
    const char *msg = "proxy and node";
    cr_assert_eq(write(c, msg, strlen(msg)), (ssize_t)strlen(msg));
    shutdown(c, SHUT_WR);
    char got[128] = {0};
    size_t off = 0;
    struct pollfd pf = {c, POLLIN, 0};
    while (off < sizeof got - 1 && poll(&pf, 1, 10000) > 0) {
        ssize_t n = read(c, got + off, sizeof got - 1 - off);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    close(c);
    cr_assert_str_eq(got, "PROXY AND NODE");
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    kill(echo, SIGKILL);
    waitpid(echo, NULL, 0);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, a_login_the_roles_do_not_allow_is_refused_with_a_reason)
{
    start_all_with_proxy();
    wait_node_routable();
    char *out = NULL, *err = NULL;
    int st = tsh(&out, &err, "ssh nobody@node1 echo should-not-run");
    cr_assert_eq(st, 255, "tsh's own failure exits 255 (%d): %s", st, err);
    cr_assert_eq(strstr(out, "should-not-run"), NULL);
    cr_assert(strstr(err, "nobody") || strstr(err, "denied"), "the refusal says why: %s", err);
    free(out), free(err);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, stock_ssh_with_tsh_config_reaches_a_node)
{
    start_all_with_proxy();
    wait_node_routable();
    char cfg[700], cmd[8192];
    char *out = NULL, *err = NULL;
    cr_assert_eq(tsh(&out, &err, "config"), 0, "tsh config failed: %s", err);
    snprintf(cfg, sizeof cfg, "%s/ssh_config", CL->dir);
    cr_assert_eq(rp_write_file(cfg, out, strlen(out), 0600), 0);
    free(out), free(err);
    snprintf(cmd, sizeof cmd,
             "RAFTPORT_HOME=%s ssh -F %s -o BatchMode=yes root@node1.%s echo via-tsh-config",
             tsh_home_dir, cfg, CL->cluster_name);
    out = NULL;
    int st = sh(cmd, &out, 60000);
    cr_assert_eq(st, 0, "stock ssh with the tsh config block failed");
    cr_assert_str_eq(out, "via-tsh-config\n");
    free(out);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, tsh_scp_shows_progress_on_a_terminal_and_not_elsewhere)
{
    start_all_with_proxy();
    wait_node_routable();
    char cmd[4096], src[700], dst[700], exe[700];
    snprintf(src, sizeof src, "%s/progress-source.bin", CL->dir);
    snprintf(dst, sizeof dst, "root@node1:%s/progress-copy.bin", CL->dir);
    snprintf(cmd, sizeof cmd, "head -c 3000000 /dev/urandom > %s", src);
    cr_assert_eq(sh(cmd, NULL, 10000), 0);
    snprintf(exe, sizeof exe, "%s/tsh", CL->build);
    int master = -1;
    struct winsize ws = {.ws_row = 24, .ws_col = 100};
    pid_t pid = forkpty(&master, NULL, NULL, &ws);
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        setenv("RAFTPORT_HOME", tsh_home_dir, 1);
        execl(exe, "tsh", "scp", src, dst, (char *)NULL);
        _exit(127);
    }
    struct rp_buf acc;
    rp_buf_init(&acc);
    read_until(master, &acc, "MiB/s", 20000);
    int st = 0;
    cr_assert_eq(waitpid(pid, &st, 0), pid);
    read_until(master, &acc, "\n", 500);
    cr_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0, "tsh scp failed: %.*s", (int)acc.len,
              acc.data);
    cr_assert(memmem(acc.data, acc.len, "100%", 4) &&
                  memmem(acc.data, acc.len, "progress-source", 15),
              "a terminal shows the file and its progress: %.*s", (int)acc.len, acc.data);
    close(master);
    rp_buf_free(&acc);

    char *out = NULL, *err = NULL;
    snprintf(cmd, sizeof cmd, "scp %s %s", src, dst);
    cr_assert_eq(tsh(&out, &err, cmd), 0);
    cr_assert_str_eq(err, "", "no progress when stderr is not a terminal");
    free(out), free(err);
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

/* ---- a node behind a reverse tunnel --------------------------------------------------- */

/* Reads the host key line of the node with address @addr (AG[i].ssh_addr) from tctl
 * nodes ls --format=known_hosts into host_key. */
static void read_host_key(const char *addr)
{
    char *kh = NULL;
    char port_form[80];
    const char *colon = strrchr(addr, ':');
    snprintf(port_form, sizeof port_form, "[%.*s]:%s", (int)(colon - addr), addr, colon + 1);
    for (int i = 0; i < 100; i++) {
        free(kh);
        kh = NULL;
        cr_assert_eq(run_tctl(1, &kh, "nodes", "ls", "--format=known_hosts", NULL), 0);
        if (strstr(kh, port_form))
            break;
        cl_sleep_ms(200);
    }
    char *line = strstr(kh, port_form);
    cr_assert(line, "tctl nodes ls --format=known_hosts does not list %s: %s", port_form, kh);
    char *k = strstr(line, "ssh-ed25519");
    size_t n = strcspn(k, "\r\n");
    memcpy(host_key, k, n);
    host_key[n] = '\0';
    free(kh);
}

/* An auth server, a proxy, node1 reachable only through its reverse tunnel (teleport.
 * proxy_server, no listener), alice's profile; with @with_direct also node2, a direct
 * node (the baseline for stock ssh). */
static void start_all_with_tunnel(bool with_direct)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(20000));
    start_proxy();
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare_proxy(1, token, PX[1].web_addr, "1s", NULL);
    ag_spawn(1);
    char established[128];
    snprintf(established, sizeof established, "reverse tunnel to %s established",
             PX[1].tunnel_addr);
    bool ok = ag_wait_log(1, established, 30000);
    if (!ok) {
        ag_print_log_tail(1, 40);
        print_proxy_log();
    }
    cr_assert(ok, "node1 did not open its reverse tunnel");
    cr_assert_eq(
        run_tctl(1, NULL, "users", "add", "alice", "--roles=access", "--logins=root", NULL), 0);
    snprintf(key_path, sizeof key_path, "%s/alice", CL->dir);
    snprintf(cert_path, sizeof cert_path, "%s/alice-cert.pub", CL->dir);
    cr_assert_eq(
        run_tctl(1, NULL, "auth", "sign", "--user=alice", "--ttl=1h", "-o", key_path, NULL), 0);
    if (with_direct) {
        cl_add_token(1, "node", NULL, token, sizeof token);
        ag_prepare(2, token, NULL);
        ag_spawn(2);
        cr_assert(ag_wait_log(2, "SSH service listening", 30000), "node2 did not start");
        read_host_key(AG[2].ssh_addr);
    }
    make_profile();
}

Test(tsh_ssh, tsh_ssh_and_scp_reach_a_node_behind_its_tunnel)
{
    start_all_with_tunnel(false);
    wait_node_routable();
    char *out = NULL, *err = NULL;
    cr_assert_eq(tsh(&out, &err, "ssh root@node1 'echo tunnelled; exit 3'"), 3, "%s", err);
    cr_assert_str_eq(out, "tunnelled\n");
    free(out), free(err);

    char cmd[8192], args[4096], a[700], b[700], c[700];
    snprintf(a, sizeof a, "%s/t.bin", CL->dir);
    snprintf(b, sizeof b, "%s/t.up", CL->dir);
    snprintf(c, sizeof c, "%s/t.down", CL->dir);
    snprintf(cmd, sizeof cmd, "head -c 20000000 /dev/urandom > %s", a);
    cr_assert_eq(sh(cmd, NULL, 30000), 0);
    snprintf(args, sizeof args, "scp %s root@node1:%s", a, b);
    cr_assert_eq(tsh(&out, &err, args), 0, "upload through the tunnel: %s", err);
    free(out), free(err);
    snprintf(args, sizeof args, "scp root@node1:%s %s", b, c);
    cr_assert_eq(tsh(&out, &err, args), 0, "download through the tunnel: %s", err);
    free(out), free(err);
    snprintf(cmd, sizeof cmd, "cmp %s %s && cmp %s %s", a, b, a, c);
    cr_assert_eq(sh(cmd, NULL, 30000), 0, "the copies through the tunnel differ");
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

/* The whole path as a new user takes it: an invite redeemed with tsh login (password
 * on standard input), a login, then tsh ssh and tsh scp to a node behind its tunnel,
 * all with the profile tsh login wrote. */
Test(tsh_ssh, a_new_user_logs_in_with_tsh_and_works_on_a_tunnelled_node)
{
    start_all_with_tunnel(false);
    wait_node_routable();
    char *out = NULL, *err = NULL;
    cr_assert_eq(run_tctl(1, &out, "users", "add", "bob", "--roles=access", "--logins=root", NULL),
                 0);
    char token[128] = "";
    for (char *p = out; *p != '\0' && token[0] == '\0'; p++) {
        size_t n = strspn(p, "0123456789abcdef");
        if (n >= 32 && n < sizeof token) {
            memcpy(token, p, n);
            token[n] = '\0';
        }
        p += n > 0 ? n - 1 : 0;
    }
    free(out);
    cr_assert(token[0], "tctl users add printed no invite token");
    char pw[700], args[4096];
    snprintf(pw, sizeof pw, "%s/bob.password", CL->dir);
    cr_assert_eq(rp_write_file(pw, "correct-horse-battery\n", 22, 0600), 0);
    snprintf(tsh_home_dir, sizeof tsh_home_dir, "%s/bob-home", CL->dir);
    snprintf(args, sizeof args, "login --proxy=%s --user=bob --ca-pin=%s --invite=%s --no-otp",
             PX[1].web_addr, CL->ca_pin, token);
    int st = tsh_in(&out, &err, args, pw);
    cr_assert_eq(st, 0, "tsh login --invite failed (%d): %s%s", st, out, err);
    free(out), free(err);
    snprintf(args, sizeof args, "login --proxy=%s --user=bob", PX[1].web_addr);
    st = tsh_in(&out, &err, args, pw);
    cr_assert_eq(st, 0, "tsh login failed (%d): %s%s", st, out, err);
    free(out), free(err);

    cr_assert_eq(tsh(&out, &err, "ssh root@node1 echo hi"), 0, "%s", err);
    cr_assert_str_eq(out, "hi\n");
    free(out), free(err);
    cr_assert_eq(tsh(&out, &err, "ssh root@node1 false"), 1, "%s", err);
    free(out), free(err);
    snprintf(args, sizeof args, "scp %s root@node1:%s/pw.there", pw, CL->dir);
    cr_assert_eq(tsh(&out, &err, args), 0, "%s", err);
    free(out), free(err);
    snprintf(args, sizeof args, "scp root@node1:%s/pw.there %s/pw.back", CL->dir, CL->dir);
    cr_assert_eq(tsh(&out, &err, args), 0, "%s", err);
    free(out), free(err);
    char cmd[4096];
    snprintf(cmd, sizeof cmd, "cmp %s %s/pw.back", pw, CL->dir);
    cr_assert_eq(sh(cmd, NULL, 10000), 0, "the file came back changed");
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Figures for the targets, printed, not asserted (the machine is shared):
 * tsh through the proxy to @node (direct or tunnelled) beside stock ssh/scp straight to
 * the direct node node1 (AG[@direct]). */
static void print_figures(const char *node, int direct, int mb, const char *label)
{
    char args[4096];
    snprintf(args, sizeof args, "ssh root@%s true", node);
    char *out = NULL, *err = NULL;
    for (int i = 0; i < 100 && tsh(&out, &err, args) != 0; i++) {
        free(out), free(err);
        cl_sleep_ms(200);
    }
    free(out), free(err);
    char host[64], kh[700], ssh[8192];
    snprintf(host, sizeof host, "%s", AG[direct].ssh_addr);
    char *colon = strrchr(host, ':');
    *colon = '\0';
    snprintf(kh, sizeof kh, "%s/known_hosts", CL->dir);
    FILE *f = fopen(kh, "w");
    fprintf(f, "[%s]:%s %s\n", host, colon + 1, host_key);
    fclose(f);
    snprintf(ssh, sizeof ssh,
             "ssh -F /dev/null -i %s -o CertificateFile=%s -o IdentitiesOnly=yes -o BatchMode=yes "
             "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o "
             "KexAlgorithms=curve25519-sha256 -p %s root@%s true",
             key_path, cert_path, kh, colon + 1, host);
    enum { RUNS = 20 };
    double t_tsh[RUNS], t_ssh[RUNS];
    for (int i = 0; i < RUNS; i++) {
        uint64_t t0 = rp_mono_ms();
        cr_assert_eq(tsh(NULL, NULL, args), 0);
        t_tsh[i] = secs_since(t0);
        t0 = rp_mono_ms();
        cr_assert_eq(sh(ssh, NULL, 30000), 0);
        t_ssh[i] = secs_since(t0);
    }
    qsort(t_tsh, RUNS, sizeof t_tsh[0], cmp_double);
    qsort(t_ssh, RUNS, sizeof t_ssh[0], cmp_double);
    fprintf(stderr,
            "FIGURE %s: session open+true: tsh ssh median %.0f ms; stock ssh direct to a node "
            "median %.0f ms (%.2fx)\n",
            label, t_tsh[RUNS / 2] * 1000, t_ssh[RUNS / 2] * 1000,
            t_tsh[RUNS / 2] / t_ssh[RUNS / 2]);

    char cmd[8192], a[700], b[700], c[700], d[700];
    snprintf(a, sizeof a, "%s/big", CL->dir);
    snprintf(b, sizeof b, "%s/big.up", CL->dir);
    snprintf(c, sizeof c, "%s/big.down", CL->dir);
    snprintf(d, sizeof d, "%s/big.stock", CL->dir);
    snprintf(cmd, sizeof cmd, "head -c %dM /dev/urandom > %s", mb, a);
    cr_assert_eq(sh(cmd, NULL, 300000), 0);
    double best_up = 1e9, best_down = 1e9, best_stock = 1e9;
    for (int i = 0; i < 3; i++) {
        uint64_t t0 = rp_mono_ms();
        snprintf(args, sizeof args, "scp -q %s root@%s:%s", a, node, b);
        cr_assert_eq(tsh(NULL, NULL, args), 0);
        double up = secs_since(t0);
        t0 = rp_mono_ms();
        snprintf(args, sizeof args, "scp -q root@%s:%s %s", node, b, c);
        cr_assert_eq(tsh(NULL, NULL, args), 0);
        double down = secs_since(t0);
        double stock = stock_scp_to(direct, b, d);
        best_up = up < best_up ? up : best_up;
        best_down = down < best_down ? down : best_down;
        best_stock = stock > 0 && stock < best_stock ? stock : best_stock;
    }
    fprintf(stderr,
            "FIGURE %s: %d MiB best of 3: tsh scp upload %.2f s (%.0f MiB/s), download %.2f s "
            "(%.0f MiB/s); stock scp download direct to a node %.2f s (%.0f MiB/s); download "
            "ratio %.2fx\n",
            label, mb, best_up, mb / best_up, best_down, mb / best_down, best_stock,
            mb / best_stock, best_stock / best_down);
    snprintf(cmd, sizeof cmd, "cmp %s %s && cmp %s %s", a, b, a, c);
    cr_assert_eq(sh(cmd, NULL, 120000), 0, "the copies differ");
}

/* TSH_BENCH_MB=1024 build/tests/test_int_tsh_ssh --filter='*figures*' (skipped unless
 * TSH_BENCH_MB is set). */
Test(tsh_ssh, figures_through_the_proxy)
{
    const char *mbs = getenv("TSH_BENCH_MB");
    if (mbs == NULL)
        cr_skip_test("set TSH_BENCH_MB to measure");
    start_all_with_proxy();
    print_figures("node1", 1, atoi(mbs), "proxy, direct node");
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}

Test(tsh_ssh, figures_through_a_tunnel)
{
    const char *mbs = getenv("TSH_BENCH_MB");
    if (mbs == NULL)
        cr_skip_test("set TSH_BENCH_MB to measure");
    start_all_with_tunnel(true);
    print_figures("node1", 2, atoi(mbs), "proxy and tunnel");
    stop_proxy();
    ag_stop_all();
    cluster_pass();
}
