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
