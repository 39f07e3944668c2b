/* tests/test_int_sshjump.c: the proxy's SSH jump host (proxy/sshjump.h) with stock
 * OpenSSH: `ssh -J user@proxy:PORT login@node`.
 *
 * The jump host runs in the test process over what a proxy has: an identity joined
 * with a token (its SSH host key comes from that join) and a cache that follows the
 * real auth cluster (user CAs, roles, locks), through agent/join.c and
 * agent/follow.c. The node is a real `raftport start --roles=node`
 * (tests/lib/agent_proc.h); users and their certificates come from tctl. Routing is
 * the one thing faked: a table with the one node (its hostname, address and label
 * env=test), whose access check is the proxy's rule (some login the user's roles
 * allow on the node's labels) over the followed roles. Refusals are read back from
 * the audit events the jump host emits. */
#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/cache.h"
#include "lib/buf.h"
#include "lib/config.h"
#include "lib/errors.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "proxy/sshjump.h"
#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"
#include "tests/lib/proxy_proc.h"

/* ---- audit events the jump host emitted (msgpack maps, searched as bytes) ------------- */

static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static struct rp_buf events;

static int collect_event(void *arg, const void *ev, size_t len)
{
    pthread_mutex_lock(&ev_mu);
    rp_buf_append(&events, ev, len);
    pthread_mutex_unlock(&ev_mu);
    return 0;
}

static bool event_has(const char *text)
{
    pthread_mutex_lock(&ev_mu);
    bool found = events.len > 0 && memmem(events.data, events.len, text, strlen(text)) != NULL;
    pthread_mutex_unlock(&ev_mu);
    return found;
}

static bool event_has_pred(void *arg)
{
    return event_has(arg);
}

/* ---- the fake route: the one node, the proxy's access rule ---------------------------- */

struct node_route {
    const struct agent_authority *authority;
    char hostname[64];
    char addr[64];
    /* "holder": a socket of the test that accepts nothing and never closes, so that
     * only the jump host can end a tunnel to it. */
    char holder_addr[64];
};

static int dial_tcp(const char *addr, int *fd)
{
    char host[64];
    snprintf(host, sizeof host, "%s", addr);
    char *colon = strrchr(host, ':');
    if (colon == NULL)
        return rp_err(RP_EINVAL, "bad address %s", addr);
    *colon = '\0';
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1))};
    inet_pton(AF_INET, host, &sa.sin_addr);
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0 || connect(s, (struct sockaddr *)&sa, sizeof sa) != 0) {
        int err = errno;
        if (s >= 0)
            close(s);
        return rp_err(RP_EUNAVAILABLE, "node %s is unreachable: %s", addr, strerror(err));
    }
    *fd = s;
    return 0;
}

static int route_one_node(void *arg, const struct rp_identity *user, const char *target,
                          const char *client_addr, int timeout_ms, int *fd)
{
    struct node_route *nr = arg;
    char host[300];
    snprintf(host, sizeof host, "%s", target);
    char *colon = strrchr(host, ':');
    if (colon != NULL)
        *colon = '\0';
    if (strcmp(host, "holder") == 0 && nr->holder_addr[0] != '\0')
        return dial_tcp(nr->holder_addr, fd);
    if (strcmp(host, nr->hostname) != 0)
        return rp_err(RP_ENOTFOUND, "no node named \"%s\": `tsh ls` lists the nodes you may reach",
                      host);
    char why[256] = "";
    struct rbac_set *set = NULL;
    int rv = nr->authority->role_set(nr->authority->arg, (const char *const *)user->groups,
                                     user->n_groups, NULL, &set, why, sizeof why);
    if (rv != 0)
        return rp_err(RP_EDENIED, "access denied to %s: %s", host, why);
    char **logins = NULL;
    size_t n = 0;
    struct rbac_label labels[] = {{"env", "test"}};
    bool allowed = false;
    if (rbac_logins(set, &logins, &n) == 0)
        for (size_t i = 0; i < n && !allowed; i++)
            allowed = rbac_check_ssh(set, logins[i], labels, 1, why, sizeof why) == 0;
    if (n == 0)
        snprintf(why, sizeof why, "the user's roles allow no login");
    rbac_logins_free(logins, n);
    rbac_set_free(set);
    if (!allowed)
        return rp_err(RP_EDENIED, "access denied to %s: %s", host, why);
    return dial_tcp(nr->addr, fd);
}

/* ---- the jump host over a joined, following identity ---------------------------------- */

static struct {
    struct rp_config cfg;
    struct agent_ident id;
    struct agent_cache *cache;
    struct agent_follow *follow;
    struct agent_authority authority;
    struct node_route route;
    struct px_sshjump *jump;
    char known_hosts[600];
    int port;      /* the jump host's */
    int holder_fd; /* the route's "holder" socket */
} J;

static bool cache_ready(void *arg)
{
    return agent_cache_count(J.cache, "cert_authority") > 0 &&
           agent_cache_count(J.cache, "role") >= 4; /* the presets and ours */
}

static char *read_all(const char *path)
{
    char *text = NULL;
    size_t n = 0;
    cr_assert_eq(rp_read_file(path, 1 << 20, &text, &n), 0, "cannot read %s", path);
    while (n > 0 && text[n - 1] == '\n')
        text[--n] = '\0';
    return text;
}

static void start_jump_host(void)
{
    char token[128], dir[600], pin[160];
    cl_add_token(1, "node", NULL, token, sizeof token);
    snprintf(dir, sizeof dir, "%s/jump", CL->dir);
    mkdir(dir, 0700);
    rp_config_init(&J.cfg);
    free(J.cfg.data_dir);
    J.cfg.data_dir = strdup(dir);
    free(J.cfg.nodename);
    J.cfg.nodename = strdup("jump1");
    snprintf(pin, sizeof pin, "%s", CL->ca_pin);
    J.cfg.ca_pin = strdup(pin);
    J.cfg.join_token = strdup(token);
    cr_assert_eq(rp_config_set_auth_servers(&J.cfg, CL->nodes[1].api_addr), 0);
    cr_assert_eq(agent_ident_init(&J.id, &J.cfg), 0, "the jump host did not join: %s", rp_errmsg());
    cr_assert_eq(agent_cache_open(&J.cache, NULL), 0);
    const char *addrs[] = {CL->nodes[1].api_addr};
    cr_assert_eq(agent_follow_start(&J.follow, J.cache, &J.id, addrs, 1, 2000), 0, "%s",
                 rp_errmsg());
    cr_assert(wait_until(30000, cache_ready, NULL), "the jump host's cache never filled");
    J.authority = agent_cache_authority(J.cache);
    J.route.authority = &J.authority;
    snprintf(J.route.hostname, sizeof J.route.hostname, "%s", AG[1].name);
    snprintf(J.route.addr, sizeof J.route.addr, "%s", AG[1].ssh_addr);

    char key[700];
    agent_key_path(dir, "ssh_host_key", key, sizeof key);
    struct px_sshjump_opts o = {.listen_addr = "127.0.0.1:0",
                                .host_key_path = key,
                                .server_id = J.id.host_id,
                                .hostname = "jump1",
                                .authority = J.authority,
                                .route = route_one_node,
                                .route_arg = &J.route,
                                .emit = collect_event,
                                .auth_deadline_ms = 5000};
    cr_assert_eq(px_sshjump_start_opts(&J.jump, &o), 0, "%s", rp_errmsg());
    J.port = px_sshjump_port(J.jump);

    /* known_hosts: the jump host's key (the one its join gave it) and the nodes'
     * published keys as tctl lists them. */
    agent_key_path(dir, "ssh_host_key.pub", key, sizeof key);
    char *pub = read_all(key);
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
    size_t len = strlen(pub) + strlen(kh) + 64;
    char *text = malloc(len);
    snprintf(text, len, "[127.0.0.1]:%d %s\n%s", J.port, pub, kh);
    cl_write_file("known_hosts", text, J.known_hosts, sizeof J.known_hosts);
    free(text);
    free(pub);
    free(kh);
}

static void stop_jump_host(void)
{
    px_sshjump_stop(J.jump);
    J.jump = NULL;
    agent_follow_stop(J.follow);
    agent_cache_free(J.cache);
    agent_ident_free(&J.id);
    rp_config_free(&J.cfg);
}

/* ---- users, keys, ssh --------------------------------------------------------------- */

static const char *role_jumper =
    "kind: role\nversion: v7\nmetadata:\n  name: jumper\nspec:\n"
    "  allow:\n    logins: [root]\n    node_labels:\n      env: test\n";
static const char *role_prodonly = "kind: role\nversion: v7\nmetadata:\n  name: prodonly\nspec:\n"
                                   "  allow:\n    logins: [root]\n    node_labels:\n"
                                   "      env: prod\n";

static void create_role(const char *name, const char *yaml)
{
    char path[600], file[64];
    snprintf(file, sizeof file, "%s.yaml", name);
    cl_write_file(file, yaml, path, sizeof path);
    cr_assert_eq(run_tctl(1, NULL, "create", path, NULL), 0, "tctl create %s failed", name);
}

/* A user with @role and its key + certificate from tctl auth sign, in DIR/@user. */
static void make_user(const char *user, const char *role)
{
    char roles[64], out[600];
    snprintf(roles, sizeof roles, "--roles=%s", role);
    cr_assert_eq(run_tctl(1, NULL, "users", "add", user, roles, "--logins=root", NULL), 0);
    snprintf(out, sizeof out, "%s/%s", CL->dir, user);
    cr_assert_eq(run_tctl(1, NULL, "auth", "sign", "--user", user, "--ttl=1h", "-o", out, NULL), 0);
}

/* The node agent, then the roles, users and the jump host. */
static void start_all(void)
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
    cr_assert(ok, "the node agent did not start serving SSH");
    create_role("jumper", role_jumper);
    create_role("prodonly", role_prodonly);
    make_user("alice", "jumper");
    make_user("bob", "prodonly");
    start_jump_host();
    /* The node also needs the new roles before it lets alice in. */
    cl_sleep_ms(1500);
}

/* An ssh_config for @key (and @cert unless NULL) with the test's known_hosts; its
 * path into @path. ProxyJump passes -F on to the jump hop, not -o options. */
static void ssh_config(const char *name, const char *key, const char *cert, char *path, size_t n)
{
    char text[2400];
    snprintf(text, sizeof text,
             "Host *\n  IdentityFile %s\n%s%s%s  IdentitiesOnly yes\n  IdentityAgent none\n"
             "  BatchMode yes\n  UserKnownHostsFile %s\n  GlobalKnownHostsFile /dev/null\n"
             "  StrictHostKeyChecking yes\n  ConnectTimeout 10\n",
             key, cert ? "  CertificateFile " : "", cert ? cert : "", cert ? "\n" : "",
             J.known_hosts);
    cl_write_file(name, text, path, n);
}

/* Runs ssh with @cfg, the jump host as @jump_user, to @dest running @cmd. */
static int ssh_jump(const char *cfg, const char *jump_user, const char *dest, const char *cmd,
                    struct cl_run *r)
{
    char jump[128];
    snprintf(jump, sizeof jump, "%s@127.0.0.1:%d", jump_user, J.port);
    char *argv[] = {"/usr/bin/ssh", "-F", (char *)cfg, "-J", jump, (char *)dest, (char *)cmd, NULL};
    return cl_run_argv(argv, 30000, r);
}

static void user_paths(const char *user, char *key, char *cert, size_t n)
{
    snprintf(key, n, "%s/%s", CL->dir, user);
    snprintf(cert, n, "%s/%s-cert.pub", CL->dir, user);
}

TestSuite(sshjump, .init = cluster_setup, .fini = cluster_teardown, .timeout = 240);

Test(sshjump, ssh_J_with_the_users_certificate_runs_a_command_on_the_node)
{
    start_all();
    char key[600], cert[600], cfg[600];
    user_paths("alice", key, cert, sizeof key);
    ssh_config("alice.ssh_config", key, cert, cfg, sizeof cfg);
    struct cl_run r;
    char dest[96];
    snprintf(dest, sizeof dest, "root@%s", AG[1].name);
    int st = ssh_jump(cfg, "alice", dest, "echo hi", &r);
    cr_assert_eq(st, 0, "ssh -J failed (%d): %s", st, r.err);
    cr_assert_str_eq(r.out, "hi\n");
    cl_run_free(&r);
    /* The remote exit code comes through the jump. */
    st = ssh_jump(cfg, "alice", dest, "exit 3", &r);
    cr_assert_eq(st, 3, "the node's exit code did not come through (%d): %s", st, r.err);
    cl_run_free(&r);

    /* Any principal may be the SSH user name too (here the login root). */
    st = ssh_jump(cfg, "root", dest, "echo via-principal", &r);
    cr_assert_eq(st, 0, "ssh -J as a principal failed (%d): %s", st, r.err);
    cr_assert_str_eq(r.out, "via-principal\n");
    cl_run_free(&r);

    /* 64 MiB each way through the hand pump, intact (checksums on both ends). */
    char cmd[4096], data[600];
    snprintf(data, sizeof data, "%s/up.bin", CL->dir);
    snprintf(cmd, sizeof cmd,
             "head -c 67108864 /dev/urandom > %s && sha256sum < %s | cut -d' ' -f1 && "
             "/usr/bin/ssh -F %s -J alice@127.0.0.1:%d %s 'sha256sum | cut -d\" \" -f1' < %s",
             data, data, cfg, J.port, dest, data);
    char *sh_up[] = {"/bin/sh", "-c", cmd, NULL};
    uint64_t t0 = cl_now_ms();
    st = cl_run_argv(sh_up, 120000, &r);
    cr_assert_eq(st, 0, "the upload failed (%d): %s", st, r.err);
    char *nl = strchr(r.out, '\n');
    cr_assert(nl != NULL && strlen(nl + 1) > 64, "two checksums expected: %s", r.out);
    cr_assert(strncmp(r.out, nl + 1, 64) == 0, "the node received other bytes: %s", r.out);
    cl_run_free(&r);
    uint64_t up_ms = cl_now_ms() - t0;
    snprintf(cmd, sizeof cmd,
             "/usr/bin/ssh -F %s -J alice@127.0.0.1:%d %s 'cat %s' | sha256sum | cut -d' ' -f1; "
             "sha256sum < %s | cut -d' ' -f1",
             cfg, J.port, dest, data, data);
    char *sh_down[] = {"/bin/sh", "-c", cmd, NULL};
    t0 = cl_now_ms();
    st = cl_run_argv(sh_down, 120000, &r);
    cr_assert_eq(st, 0, "the download failed (%d): %s", st, r.err);
    nl = strchr(r.out, '\n');
    cr_assert(nl != NULL && strlen(nl + 1) > 64, "two checksums expected: %s", r.out);
    cr_assert(strncmp(r.out, nl + 1, 64) == 0, "the client received other bytes: %s", r.out);
    cl_run_free(&r);
    fprintf(stderr, "64 MiB through the jump host: up %llu ms, down %llu ms\n",
            (unsigned long long)up_ms, (unsigned long long)(cl_now_ms() - t0));

    /* A shell or command on the proxy itself is refused with a message. */
    char port[16];
    snprintf(port, sizeof port, "%d", J.port);
    char *argv[] = {"/usr/bin/ssh", "-F", cfg, "-p", port, "alice@127.0.0.1", "echo hi", NULL};
    st = cl_run_argv(argv, 30000, &r);
    cr_assert_eq(st, 1, "a command on the jump host was not refused (%d): %s", st, r.out);
    cr_assert(strstr(r.err, "this is a jump host: use ssh -J"), "stderr: %s", r.err);
    cr_assert_str_eq(r.out, "");
    cl_run_free(&r);
    cr_assert(event_has("on the proxy itself: this is a jump host"));

    stop_jump_host();
    ag_stop_all();
    cluster_pass();
}

/* A key and a certificate for "alice" signed by a CA the cluster does not know. */
static void foreign_certificate(char *key, char *cert, size_t n)
{
    EVP_PKEY *ca = NULL, *k = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &ca), 0);
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &k), 0);
    char *principals[] = {"root"};
    struct rp_ssh_cert_opt ext[] = {
        {"permit-port-forwarding", ""},
        {"permit-pty", ""},
        {"teleport-roles", "{\"version\":\"v1\",\"roles\":[\"jumper\"]}"}};
    uint64_t now = (uint64_t)time(NULL);
    struct rp_ssh_cert c = {.type = RP_SSH_CERT_USER,
                            .key = k,
                            .key_id = "alice",
                            .principals = principals,
                            .n_principals = 1,
                            .valid_after = now - 60,
                            .valid_before = now + 3600,
                            .extensions = ext,
                            .n_extensions = 3};
    struct rp_buf blob;
    rp_buf_init(&blob);
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), 0, "%s", rp_errmsg());
    char *line = NULL, *priv = NULL, path[600];
    cr_assert_eq(rp_ssh_cert_format(blob.data, blob.len, "mallory", &line), 0);
    cr_assert_eq(rp_ssh_privkey_format(k, "mallory", &priv), 0);
    cl_write_file("mallory", priv, key, n);
    cl_write_file("mallory-cert.pub", line, cert, n);
    (void)path;
    free(line);
    free(priv);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(k);
}

/* @arg: {jump host, count}: that many connections, and a tunnel open on the route's
 * holder socket (a connection to it is queued in its backlog). */
static bool tunnel_open(void *arg)
{
    void **a = arg;
    if (px_sshjump_connections(a[0]) != (size_t)(uintptr_t)a[1])
        return false;
    int fd = J.holder_fd;
    struct pollfd p = {fd, POLLIN, 0};
    return poll(&p, 1, 0) == 1;
}

static bool no_connections(void *arg)
{
    return px_sshjump_connections(J.jump) == 0;
}

static bool lock_cached(void *arg)
{
    return agent_cache_count(J.cache, "lock") > 0;
}

Test(sshjump, refusals_at_the_jump_host_name_their_reason)
{
    start_all();
    char key[600], cert[600], cfg[600], dest[96];
    snprintf(dest, sizeof dest, "root@%s", AG[1].name);
    struct cl_run r;

    /* A certificate from another CA. */
    foreign_certificate(key, cert, sizeof key);
    ssh_config("mallory.ssh_config", key, cert, cfg, sizeof cfg);
    int st = ssh_jump(cfg, "alice", dest, "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert(strstr(r.err, "Permission denied (publickey)"), "stderr: %s", r.err);
    cl_run_free(&r);
    cr_assert(event_has("certificate is not signed by a trusted user CA"));

    /* A plain key (alice's own, without its certificate beside it). */
    char plain[600], alice_key[600], alice_cert[600];
    user_paths("alice", alice_key, alice_cert, sizeof alice_key);
    char *priv = read_all(alice_key);
    size_t plen = strlen(priv) + 2;
    char *privnl = malloc(plen);
    snprintf(privnl, plen, "%s\n", priv);
    cl_write_file("plain", privnl, plain, sizeof plain);
    free(privnl);
    free(priv);
    ssh_config("plain.ssh_config", plain, NULL, cfg, sizeof cfg);
    st = ssh_jump(cfg, "alice", dest, "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert(strstr(r.err, "Permission denied (publickey)"), "stderr: %s", r.err);
    cl_run_free(&r);
    cr_assert(event_has("key is not accepted: log in with a user certificate"));

    /* A user name that is neither the key id nor a principal. */
    ssh_config("alice.ssh_config", alice_key, alice_cert, cfg, sizeof cfg);
    st = ssh_jump(cfg, "carol", dest, "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert(strstr(r.err, "Permission denied (publickey)"), "stderr: %s", r.err);
    cl_run_free(&r);
    cr_assert(event_has("principal \"carol\" not in the set of valid principals"));

    /* An unknown target: the reason reaches the client's stderr. */
    st = ssh_jump(cfg, "alice", "root@nosuchnode", "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert(strstr(r.err, "no node named \"nosuchnode\""), "stderr: %s", r.err);
    cl_run_free(&r);
    cr_assert(event_has("nosuchnode:22"));

    /* A user whose roles do not reach the node's labels. */
    char bob_key[600], bob_cert[600];
    user_paths("bob", bob_key, bob_cert, sizeof bob_key);
    ssh_config("bob.ssh_config", bob_key, bob_cert, cfg, sizeof cfg);
    st = ssh_jump(cfg, "bob", dest, "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert(strstr(r.err, "access denied to"), "stderr: %s", r.err);
    cr_assert_str_eq(r.out, "");
    cl_run_free(&r);
    cr_assert(event_has("T1006W"));

    /* A lock on the user closes alice's open tunnel (to a socket only the jump host can
     * end), then refuses her at the jump host itself. */
    int holder = J.holder_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in hsa = {.sin_family = AF_INET};
    hsa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t hlen = sizeof hsa;
    cr_assert(bind(holder, (struct sockaddr *)&hsa, sizeof hsa) == 0 && listen(holder, 8) == 0 &&
              getsockname(holder, (struct sockaddr *)&hsa, &hlen) == 0);
    snprintf(J.route.holder_addr, sizeof J.route.holder_addr, "127.0.0.1:%d", ntohs(hsa.sin_port));
    ssh_config("alice.ssh_config", alice_key, alice_cert, cfg, sizeof cfg);
    char hold_cmd[1600], jport[16];
    snprintf(jport, sizeof jport, "%d", J.port);
    snprintf(hold_cmd, sizeof hold_cmd,
             "sleep 60 | exec /usr/bin/ssh -F %s -W holder:1 -p %s alice@127.0.0.1 >/dev/null", cfg,
             jport);
    pid_t holder_pid = fork();
    if (holder_pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setpgid(0, 0);
        execl("/bin/sh", "sh", "-c", hold_cmd, (char *)NULL);
        _exit(127);
    }
    cr_assert(holder_pid > 0);
    void *one[2] = {J.jump, (void *)(uintptr_t)1};
    cr_assert(wait_until(15000, tunnel_open, one), "the holding tunnel never opened");
    cr_assert_eq(
        run_tctl(1, NULL, "lock", "--user=alice", "--ttl=10m", "--message=investigating", NULL), 0);
    cr_assert(wait_until(10000, lock_cached, NULL), "the lock never reached the jump host");
    cr_assert(wait_until(5000, no_connections, NULL),
              "the jump host kept a locked user's connection open");
    cr_assert(event_has("alice is locked"));
    kill(-holder_pid, SIGKILL);
    waitpid(holder_pid, NULL, 0);
    close(holder);
    st = ssh_jump(cfg, "alice", dest, "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert_str_eq(r.out, "");
    cl_run_free(&r);
    cr_assert(event_has("alice is locked"));

    stop_jump_host();
    ag_stop_all();
    cluster_pass();
}

/* ---- the same through a real proxy process (`raftport start --roles=proxy`) ---------- */

static bool node_routable(void *cfg)
{
    struct cl_run r;
    char dest[96];
    snprintf(dest, sizeof dest, "root@%s", AG[1].name);
    bool ok = ssh_jump(cfg, "alice", dest, "echo hi", &r) == 0 && strcmp(r.out, "hi\n") == 0;
    cl_run_free(&r);
    return ok;
}

Test(sshjump, through_the_proxy_process_ssh_J_reaches_the_node_by_its_routes)
{
    start_all();
    /* The in-process jump host only gave the known_hosts file its shape: this test's
     * jump host is the proxy's own, with the key of the proxy's join. */
    stop_jump_host();
    char token[128];
    cl_add_token(1, "proxy", NULL, token, sizeof token);
    px_prepare(1, token, NULL);
    px_spawn(1);
    bool up = px_wait_ready(1, 30000) && px_wait_log(1, "SSH jump host listening", 10000);
    if (!up)
        px_print_log_tail(1, 30);
    cr_assert(up, "the proxy did not start its jump host");
    int port = atoi(strrchr(PX[1].ssh_addr, ':') + 1);
    char pubpath[700];
    agent_key_path(PX[1].dir, "ssh_host_key.pub", pubpath, sizeof pubpath);
    char *pub = read_all(pubpath);
    char *kh = NULL;
    cr_assert_eq(run_tctl(1, &kh, "nodes", "ls", "--format=known_hosts", NULL), 0);
    size_t len = strlen(pub) + strlen(kh) + 64;
    char *text = malloc(len);
    snprintf(text, len, "[127.0.0.1]:%d %s\n%s", port, pub, kh);
    cl_write_file("known_hosts", text, J.known_hosts, sizeof J.known_hosts);
    free(text);
    free(pub);
    free(kh);
    J.port = port;

    struct cl_run r;
    char key[600], cert[600], cfg[600], dest[96];
    user_paths("alice", key, cert, sizeof key);
    ssh_config("alice.ssh_config", key, cert, cfg, sizeof cfg);
    /* The proxy learns the node from its presence: poll until it routes. */
    cr_assert(wait_until(30000, node_routable, cfg), "ssh -J through the proxy never reached %s",
              AG[1].name);
    snprintf(dest, sizeof dest, "root@%s", AG[1].name);
    int st = ssh_jump(cfg, "alice", dest, "exit 7", &r);
    cr_assert_eq(st, 7, "the node's exit code did not come through (%d): %s", st, r.err);
    cl_run_free(&r);
    /* route.c's refusals, as the user sees them. */
    st = ssh_jump(cfg, "alice", "root@nosuchnode", "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert(strstr(r.err, "raftport proxy: cannot reach nosuchnode:22"), "stderr: %s", r.err);
    cl_run_free(&r);
    char bob_key[600], bob_cert[600];
    user_paths("bob", bob_key, bob_cert, sizeof bob_key);
    ssh_config("bob.ssh_config", bob_key, bob_cert, cfg, sizeof cfg);
    st = ssh_jump(cfg, "bob", dest, "echo hi", &r);
    cr_assert_neq(st, 0);
    cr_assert(strstr(r.err, "raftport proxy: cannot reach node1:22"), "stderr: %s", r.err);
    cr_assert_str_eq(r.out, "");
    cl_run_free(&r);
    px_stop_all();
    ag_stop_all();
    cluster_pass();
}
/* ---- bounds, without a cluster: a fixture authority that trusts no CA -------------------- */

static int no_cas(void *arg, EVP_PKEY ***keys, size_t *n)
{
    return rp_err(RP_ENOTFOUND, "no user CA");
}

static int no_locks(void *arg, const char *user, const char *const *roles, size_t n_roles,
                    const char *login, const char *host_id, char *why, size_t why_len)
{
    return 0;
}

static int no_route(void *arg, const struct rp_identity *user, const char *target,
                    const char *client_addr, int timeout_ms, int *fd)
{
    return rp_err(RP_ENOTFOUND, "no node named %s", target);
}

static char bdir[64];

static void bounds_setup(void)
{
    snprintf(bdir, sizeof bdir, "/tmp/rp-sshjump-XXXXXX");
    cr_assert(mkdtemp(bdir) != NULL);
}

static void bounds_teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", bdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", bdir);
}

static struct px_sshjump *start_bounded(uint64_t deadline_ms, unsigned max_unauth)
{
    EVP_PKEY *k = NULL;
    char *priv = NULL, path[128];
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &k), 0);
    cr_assert_eq(rp_ssh_privkey_format(k, "host", &priv), 0);
    snprintf(path, sizeof path, "%s/host", bdir);
    cr_assert_eq(rp_write_file(path, priv, strlen(priv), 0600), 0);
    free(priv);
    EVP_PKEY_free(k);
    struct px_sshjump_opts o = {.listen_addr = "127.0.0.1:0",
                                .host_key_path = path,
                                .authority = {.user_cas = no_cas, .lock_check = no_locks},
                                .route = no_route,
                                .emit = collect_event,
                                .auth_deadline_ms = deadline_ms,
                                .max_unauthenticated = max_unauth};
    struct px_sshjump *j = NULL;
    cr_assert_eq(px_sshjump_start_opts(&j, &o), 0, "%s", rp_errmsg());
    return j;
}

static int connect_to(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &sa.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    cr_assert_eq(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    return fd;
}

/* Reads until EOF or an error; false if nothing ended within @timeout_ms. */
static bool closed_within(int fd, int timeout_ms)
{
    uint64_t until = cl_now_ms() + (uint64_t)timeout_ms;
    char buf[512];
    for (;;) {
        uint64_t now = cl_now_ms();
        if (now >= until)
            return false;
        struct pollfd p = {fd, POLLIN, 0};
        if (poll(&p, 1, (int)(until - now)) <= 0)
            continue;
        ssize_t n = read(fd, buf, sizeof buf);
        if (n <= 0)
            return true;
    }
}

TestSuite(sshjump_bounds, .init = bounds_setup, .fini = bounds_teardown, .timeout = 60);

Test(sshjump_bounds, the_auth_deadline_cuts_an_idle_unauthenticated_client)
{
    struct px_sshjump *j = start_bounded(1500, 0);
    uint64_t t0 = cl_now_ms();
    int fd = connect_to(px_sshjump_port(j));
    /* The server's banner comes; the client never answers. */
    char banner[8] = "";
    cr_assert_eq(read(fd, banner, 4), 4);
    cr_assert(memcmp(banner, "SSH-", 4) == 0);
    cr_assert(closed_within(fd, 6000), "an idle client was not cut");
    uint64_t took = cl_now_ms() - t0;
    cr_assert(took >= 1400, "cut after %llu ms, before the deadline", (unsigned long long)took);
    close(fd);
    cr_assert(wait_until(3000, event_has_pred, "authentication did not finish within 1500 ms"));
    px_sshjump_stop(j);
}

static bool conns_are(void *arg)
{
    void **a = arg;
    return px_sshjump_connections(a[0]) == (size_t)(uintptr_t)a[1];
}

Test(sshjump_bounds, unauthenticated_connections_beyond_the_cap_are_closed_at_once)
{
    struct px_sshjump *j = start_bounded(20000, 4);
    int fds[4];
    for (int i = 0; i < 4; i++)
        fds[i] = connect_to(px_sshjump_port(j));
    void *arg[2] = {j, (void *)(uintptr_t)4};
    cr_assert(wait_until(5000, conns_are, arg), "4 connections were not all accepted");
    int extra = connect_to(px_sshjump_port(j));
    cr_assert(closed_within(extra, 3000), "a 5th unauthenticated connection was kept");
    close(extra);
    close(fds[0]);
    arg[1] = (void *)(uintptr_t)3;
    cr_assert(wait_until(5000, conns_are, arg), "a closed connection was not released");
    /* With room again, a new connection is served (its banner comes). */
    int again = connect_to(px_sshjump_port(j));
    char banner[4];
    cr_assert_eq(read(again, banner, 4), 4);
    cr_assert(memcmp(banner, "SSH-", 4) == 0);
    close(again);
    for (int i = 1; i < 4; i++)
        close(fds[i]);
    px_sshjump_stop(j);
}
