/* tests/test_int_tunnel.c: a node behind a reverse tunnel, with real processes: an auth
 * server, a proxy (`raftport start --roles=proxy`, tunnels on its web port), and an
 * agent started with teleport.proxy_server only (no auth address, no SSH listener).
 * The agent joins through the proxy's teleport-auth@ pass-through, its presence says
 * use_tunnel, and stock OpenSSH reaches it through the proxy: a small forwarder in the
 * test speaks TLS (ALPN teleport-proxy-ssh, alice's certificate) and the dial frame,
 * then carries ssh's bytes. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "auth/client.h"
#include "lib/buf.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"
#include "tests/lib/proxy_proc.h"

TestSuite(int_tunnel, .init = cluster_setup, .fini = cluster_teardown, .timeout = 240);

/* Proxy 1, serving tunnels on its web port (as `proxy_server: HOST:3080` needs when
 * nothing is discovered), or on a port of their own when @own_port. */
static void proxy_prepare(const char *token, bool own_port)
{
    px_prepare(1, token, NULL); /* picks the addresses */
    if (!own_port) {
        char extra[128];
        snprintf(extra, sizeof extra, "  tunnel_listen_addr: %s\n", PX[1].web_addr);
        px_prepare(1, token, extra);
        snprintf(PX[1].tunnel_addr, sizeof PX[1].tunnel_addr, "%s", PX[1].web_addr);
    }
}

static bool proxy_wait_count(const char *needle, int count, int timeout_ms)
{
    uint64_t until = rp_mono_ms() + (uint64_t)timeout_ms;
    while (rp_mono_ms() < until) {
        if (px_log_count(1, needle) >= count)
            return true;
        cl_sleep_ms(50);
    }
    return false;
}

/* ---- alice, and the forwarder that speaks the dial frame -------------------------------- */

static char key_path[600], cert_path[600], known_hosts[600], host_id[40];
static SSL_CTX *alice_ctx;

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

static SSL_CTX *tls_ctx_of(const char *base, const char *alpn)
{
    char crt[700], key[700], cas[700];
    snprintf(crt, sizeof crt, "%s.crt", base);
    snprintf(key, sizeof key, "%s.key", base);
    snprintf(cas, sizeof cas, "%s.cas", base);
    SSL_CTX *ctx = NULL;
    cr_assert_eq(auth_load_client_ctx(crt, key, cas, &ctx), 0, "%s", rp_errmsg());
    cr_assert_eq(auth_ctx_set_alpn(ctx, alpn), 0);
    return ctx;
}

/* TLS to the proxy with alice's certificate, the dial frame for @target; on success the
 * connection carries the node's SSH stream. */
static int dial_through_proxy(const char *target, struct rp_conn *c, char *why, size_t n)
{
    int rv = rp_conn_dial(c, alice_ctx, PX[1].web_addr, 5000);
    if (rv != 0) {
        snprintf(why, n, "dial: %s", rp_errmsg());
        return rv;
    }
    struct rp_buf req, ans;
    rp_buf_init(&req);
    rp_buf_init(&ans);
    msgpack_packer pk;
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "target", target);
    rp_mp_kv_str(&pk, "login", "root");
    rp_mp_kv_str(&pk, "version", "0.1.0");
    rp_conn_set_timeout(c, 10000);
    rv = rp_conn_write_frame(c, req.data, req.len);
    if (rv == 0)
        rv = rp_conn_read_frame(c, &ans);
    rp_buf_free(&req);
    msgpack_unpacked m;
    bool ok = false;
    if (rv == 0 && (rv = rp_mp_parse(ans.data, ans.len, &m)) == 0) {
        rp_mp_get_bool(&m.data, "ok", &ok);
        if (!ok) {
            const char *e = "";
            size_t el = 0;
            rp_mp_get_str(&m.data, "error", &e, &el);
            snprintf(why, n, "%.*s", (int)el, e);
            rv = RP_EDENIED;
        }
        msgpack_unpacked_destroy(&m);
    } else if (rv != 0) {
        snprintf(why, n, "dial frame: %s", rp_errmsg());
    }
    rp_buf_free(&ans);
    if (rv != 0)
        rp_conn_close(c);
    return rv;
}

/* Carries bytes between @fd and the TLS connection until either side ends. */
static void pump(int fd, struct rp_conn *c)
{
    char buf[16384];
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    /* rp_conn leaves its socket blocking after the handshake: this loop polls. */
    fl = fcntl(c->fd, F_GETFL);
    fcntl(c->fd, F_SETFL, fl | O_NONBLOCK);
    for (;;) {
        struct pollfd p[2] = {{fd, POLLIN, 0}, {c->fd, POLLIN, 0}};
        /* Bytes OpenSSL read ahead do not wake poll: do not wait then (but still look at
         * the client's side). */
        bool buffered = SSL_has_pending(c->ssl);
        if (poll(p, 2, buffered ? 0 : 60000) <= 0 && !buffered)
            return;
        if (p[0].revents) {
            ssize_t r = read(fd, buf, sizeof buf);
            if (r == 0 || (r < 0 && errno != EAGAIN))
                return;
            for (ssize_t off = 0; r > 0 && off < r;) {
                int w = SSL_write(c->ssl, buf + off, (int)(r - off));
                if (w > 0) {
                    off += w;
                    continue;
                }
                int e = SSL_get_error(c->ssl, w);
                if (e != SSL_ERROR_WANT_WRITE && e != SSL_ERROR_WANT_READ)
                    return;
                struct pollfd q = {c->fd, e == SSL_ERROR_WANT_WRITE ? POLLOUT : POLLIN, 0};
                poll(&q, 1, 1000);
            }
        }
        if (p[1].revents || buffered) {
            for (;;) {
                int r = SSL_read(c->ssl, buf, sizeof buf);
                if (r <= 0) {
                    int e = SSL_get_error(c->ssl, r);
                    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                        break;
                    return;
                }
                for (int off = 0; off < r;) {
                    ssize_t w = write(fd, buf + off, (size_t)(r - off));
                    if (w > 0) {
                        off += (int)w;
                        continue;
                    }
                    if (w < 0 && errno != EAGAIN)
                        return;
                    struct pollfd q = {fd, POLLOUT, 0};
                    poll(&q, 1, 1000);
                }
            }
        }
    }
}

static int fwd_lfd, fwd_port;
static atomic_int dial_failures;

static void *forward_one(void *arg)
{
    int fd = (int)(intptr_t)arg;
    struct rp_conn c;
    char why[512];
    if (dial_through_proxy(host_id, &c, why, sizeof why) == 0) {
        pump(fd, &c);
        rp_conn_close(&c);
    } else {
        fprintf(stderr, "forwarder: %s\n", why);
        atomic_fetch_add(&dial_failures, 1);
    }
    close(fd);
    return NULL;
}

static void *forwarder_main(void *arg)
{
    (void)arg;
    for (;;) {
        int fd = accept4(fwd_lfd, NULL, NULL, SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            return NULL;
        }
        pthread_t t;
        pthread_attr_t at;
        pthread_attr_init(&at);
        pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
        pthread_create(&t, &at, forward_one, (void *)(intptr_t)fd);
        pthread_attr_destroy(&at);
    }
}

static void forwarder_start(void)
{
    fwd_lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof sa;
    cr_assert_eq(bind(fwd_lfd, (struct sockaddr *)&sa, sizeof sa), 0);
    cr_assert_eq(listen(fwd_lfd, 64), 0);
    getsockname(fwd_lfd, (struct sockaddr *)&sa, &sl);
    fwd_port = ntohs(sa.sin_port);
    pthread_t t;
    pthread_create(&t, NULL, forwarder_main, NULL);
    pthread_detach(t);
}

/* ssh through the forwarder, checking the node's host key under its host id. */
static void ssh_cmd(char *out, size_t n, const char *remote)
{
    snprintf(out, n,
             "ssh -F /dev/null -i %s -o CertificateFile=%s -o IdentitiesOnly=yes -o BatchMode=yes "
             "-o UserKnownHostsFile=%s -o StrictHostKeyChecking=yes -o HostKeyAlias=%s "
             "-o ConnectTimeout=20 -p %d root@127.0.0.1 %s",
             key_path, cert_path, known_hosts, host_id, fwd_port, remote);
}

/* True once auth holds an exec event of the node whose addr.remote is the client's
 * address as the proxy saw it (the forwarder dials from 127.0.0.1): the node's audit
 * went through the proxy to auth, and the tunnel told the node who the client was. */
static bool exec_event_names_the_client(void *arg)
{
    (void)arg;
    char *out = NULL;
    if (run_tctl(1, &out, "events", "ls", "--format=json", NULL) != 0) {
        free(out);
        return false;
    }
    /* One event per line. */
    bool found = false;
    for (char *line = strtok(out, "\n"); line != NULL && !found; line = strtok(NULL, "\n")) {
        const char *p = strstr(line, "\"addr.remote\"");
        if (strstr(line, "\"exec\"") == NULL || strstr(line, host_id) == NULL || p == NULL)
            continue;
        p += strlen("\"addr.remote\"");
        p += strspn(p, ": ");
        found = strncmp(p, "\"127.0.0.1:", 11) == 0;
    }
    free(out);
    return found;
}

/* ---- the scenario ------------------------------------------------------------------------- */

static void start_with(bool tunnel_port)
{
    cluster_start(1);
    char ptoken[128], ntoken[128];
    cl_add_token(1, "proxy", NULL, ptoken, sizeof ptoken);
    cl_add_token(1, "node", NULL, ntoken, sizeof ntoken);
    proxy_prepare(ptoken, tunnel_port);
    px_spawn(1);
    bool ok = px_wait_ready(1, 30000);
    if (!ok)
        px_print_log_tail(1, 40);
    cr_assert(ok, "the proxy did not start");

    ag_prepare_proxy(1, ntoken, PX[1].web_addr, "1s", NULL);
    ag_spawn(1);
    char established[128];
    snprintf(established, sizeof established, "reverse tunnel to %s established",
             PX[1].tunnel_addr);
    ok = ag_wait_log(1, established, 30000);
    if (!ok) {
        ag_print_log_tail(1, 40);
        px_print_log_tail(1, 40);
    }
    cr_assert(ok, "the agent joined through the proxy and opened its tunnel");
    char path[700];
    snprintf(path, sizeof path, "%s/host_uuid", AG[1].dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(host_id, sizeof host_id, f));
    fclose(f);
    host_id[strcspn(host_id, "\r\n")] = '\0';

    cr_assert_eq(
        run_tctl(1, NULL, "users", "add", "alice", "--roles=access", "--logins=root", NULL), 0);
    snprintf(key_path, sizeof key_path, "%s/alice", CL->dir);
    snprintf(cert_path, sizeof cert_path, "%s/alice-cert.pub", CL->dir);
    snprintf(known_hosts, sizeof known_hosts, "%s/known_hosts", CL->dir);
    cr_assert_eq(
        run_tctl(1, NULL, "auth", "sign", "--user=alice", "--ttl=1h", "-o", key_path, NULL), 0);
    char tls_base[700];
    snprintf(tls_base, sizeof tls_base, "%s/alice-tls", CL->dir);
    cr_assert_eq(
        run_tctl(1, NULL, "auth", "sign", "--user=alice", "--format=tls", "-o", tls_base, NULL), 0);
    alice_ctx = tls_ctx_of(tls_base, "teleport-proxy-ssh");
    char *kh = NULL;
    for (int i = 0; i < 150; i++) {
        free(kh);
        kh = NULL;
        cr_assert_eq(run_tctl(1, &kh, "nodes", "ls", "--format=known_hosts", NULL), 0);
        if (strstr(kh, host_id) && strstr(kh, "ssh-ed25519"))
            break;
        cl_sleep_ms(200);
    }
    cr_assert(strstr(kh, host_id), "the tunnelled node's host key is published: %s", kh);
    char p[700];
    cl_write_file("known_hosts", kh, p, sizeof p);
    free(kh);
    forwarder_start();
}

static void start_all(void)
{
    start_with(false);
}

static void stop_all(void)
{
    ag_stop_all();
    px_stop_all();
    SSL_CTX_free(alice_ctx);
    alice_ctx = NULL;
    cluster_pass();
}

Test(int_tunnel, a_node_joined_through_the_proxy_is_reached_through_its_tunnel)
{
    start_all();
    /* Presence: no address to dial, a tunnel instead. */
    char obj[128], *out = NULL;
    snprintf(obj, sizeof obj, "node/%s", host_id);
    cr_assert_eq(run_tctl(1, &out, "get", obj, "--format=json", NULL), 0);
    cr_assert(strstr(out, "\"use_tunnel\": true") || strstr(out, "\"use_tunnel\":true"),
              "the node's presence says use_tunnel: %s", out);
    cr_assert(strstr(out, "\"addr\": \"\"") || strstr(out, "\"addr\":\"\""),
              "the node's presence has no address: %s", out);
    free(out);
    cr_assert(!ag_log_contains(1, "SSH server listening"), "no TCP listener on the node");

    char ssh[2048];
    ssh_cmd(ssh, sizeof ssh, "echo hi");
    out = NULL;
    int st = sh(ssh, &out, 30000);
    if (st != 0) {
        ag_print_log_tail(1, 30);
        px_print_log_tail(1, 40);
    }
    cr_assert_eq(st, 0, "ssh through the tunnel failed");
    cr_assert_str_eq(out, "hi\n");
    free(out);
    ssh_cmd(ssh, sizeof ssh, "false");
    cr_assert_eq(sh(ssh, NULL, 30000), 1, "the remote exit code comes back");
    cr_assert(wait_until(15000, exec_event_names_the_client, NULL),
              "the session's audit reached auth and names the client's address");

    /* 20 sessions at once over the one tunnel, each its own output. */
    char cmd[8192] = "", one[2100];
    for (int i = 0; i < 20; i++) {
        char remote[64];
        snprintf(remote, sizeof remote, "'echo s%d; sleep 1'", i);
        ssh_cmd(one, sizeof one, remote);
        size_t len = strlen(cmd);
        snprintf(cmd + len, sizeof cmd - len, "(%s > %s/s%d.out) & ", one, CL->dir, i);
    }
    strncat(cmd, "wait", sizeof cmd - strlen(cmd) - 1);
    cr_assert_eq(sh(cmd, NULL, 90000), 0);
    for (int i = 0; i < 20; i++) {
        char path[700], want[16], got[64] = "";
        snprintf(path, sizeof path, "%s/s%d.out", CL->dir, i);
        snprintf(want, sizeof want, "s%d\n", i);
        FILE *f = fopen(path, "r");
        cr_assert_not_null(f);
        size_t n = fread(got, 1, sizeof got - 1, f);
        got[n] = '\0';
        fclose(f);
        cr_assert_str_eq(got, want, "session %d printed its own line", i);
    }
    cr_assert_eq(atomic_load(&dial_failures), 0);
    cr_assert_eq(ag_log_count(1, "established"), 1, "all of it over one tunnel");
    cr_assert(!ag_log_contains(1, "refused stream"), "no stream was refused");

    /* SIGTERM: the agent closes its tunnel and exits cleanly. */
    int status = ag_term(1, 20000);
    cr_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the agent stopped cleanly (%d)",
              status);
    cr_assert(px_wait_log(1, ") closed", 5000), "the proxy saw the tunnel close");
    stop_all();
}

Test(int_tunnel, the_tunnel_comes_back_after_the_proxy_is_killed_and_restarted)
{
    start_all();
    px_kill9(1);
    cr_assert(ag_wait_log(1, "dialling again", 15000), "the agent noticed the tunnel died");
    px_spawn(1);
    cr_assert(px_wait_ready(1, 30000) && proxy_wait_count("serving on", 2, 30000),
              "the proxy restarted");
    /* Backoff 1 s, 2 s, 4 s ... (+ up to half): back well within 20 s. */
    bool back = false;
    uint64_t until = rp_mono_ms() + 20000;
    while (!back && rp_mono_ms() < until) {
        back = ag_log_count(1, "established") >= 2;
        cl_sleep_ms(100);
    }
    if (!back)
        ag_print_log_tail(1, 30);
    cr_assert(back, "the tunnel came back on its own");
    char ssh[2048], *out = NULL;
    ssh_cmd(ssh, sizeof ssh, "echo again");
    cr_assert_eq(sh(ssh, &out, 30000), 0);
    cr_assert_str_eq(out, "again\n");
    free(out);
    stop_all();
}

Test(int_tunnel, a_certificate_that_is_not_a_node_cannot_open_a_tunnel)
{
    start_all();
    char base[700];
    snprintf(base, sizeof base, "%s/alice-tls", CL->dir);
    SSL_CTX *ctx = tls_ctx_of(base, "teleport-reversetunnel");
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, ctx, PX[1].web_addr, 5000), 0, "%s", rp_errmsg());
    rp_conn_set_timeout(&c, 5000);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_neq(rp_conn_read_frame(&c, &b), 0, "the proxy closes a user's tunnel");
    rp_buf_free(&b);
    rp_conn_close(&c);
    SSL_CTX_free(ctx);
    cr_assert(px_wait_log(1, "refused a reverse tunnel", 5000),
              "the refusal is logged with its reason");
    stop_all();
}

Test(int_tunnel, a_proxy_with_its_own_tunnel_port_is_found_through_its_presence)
{
    /* proxy_server names the web port, which does not take tunnels here: the agent
     * learns the tunnel port from the proxy's presence (listed through the proxy). */
    start_with(true);
    cr_assert(ag_log_contains(1, "found in the cluster's proxies"),
              "the tunnel address came from discovery");
    char ssh[2048], *out = NULL;
    ssh_cmd(ssh, sizeof ssh, "echo found");
    cr_assert_eq(sh(ssh, &out, 30000), 0);
    cr_assert_str_eq(out, "found\n");
    free(out);
    stop_all();
}
