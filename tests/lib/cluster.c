/* tests/lib/cluster.c: real auth clusters for the integration tests.
 *
 * Every daemon is a `raftport start -c FILE` child of the test process, with
 * PR_SET_PDEATHSIG so that it dies with the test whatever happens to the test.
 * Everything waits by polling with a deadline; sleeps only pace the polls. */
#include "tests/lib/cluster.h"

#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
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
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"

static struct cluster g_cluster;
struct cluster *CL = &g_cluster;

#define TCTL_TIMEOUT_MS 25000

/* ---- time --------------------------------------------------------------------------- */

uint64_t cl_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void cl_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

bool wait_until(int deadline_ms, bool (*pred)(void *arg), void *arg)
{
    uint64_t end = cl_now_ms() + (uint64_t)(deadline_ms > 0 ? deadline_ms : 0);
    for (;;) {
        if (pred(arg))
            return true;
        if (cl_now_ms() >= end)
            return pred(arg);
        cl_sleep_ms(50);
    }
}

/* ---- children ----------------------------------------------------------------------- */

/* In a freshly forked child: die with the parent, default signal handling. Only
 * async-signal-safe calls from here to exec, and no cr_* call (see node_spawn). */
static void child_common(pid_t parent)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127); /* the parent died between fork and prctl */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (int s = 1; s < NSIG; s++) {
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    }
}

static void kill_all_nodes(void)
{
    for (int i = 1; i <= CL_MAX_NODES; i++) {
        struct cl_node *n = &CL->nodes[i];
        if (n->used && n->pid > 0) {
            kill(n->pid, SIGKILL);
            int st;
            if (waitpid(n->pid, &st, 0) == n->pid) {
                n->exited = true;
                n->last_status = st;
            }
            n->pid = 0;
        }
    }
}

static void at_exit_kill(void)
{
    kill_all_nodes();
}

/* ---- temp dir ----------------------------------------------------------------------- */

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void rm_rf(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- the writer thread (declared here: teardown stops it) ---------------------------- */

static struct {
    pthread_t thread;
    bool running;
    atomic_bool stop;
    struct auth_client *client;
    char prefix[64];
    unsigned attempted, ok, failed;
    char first_error[256];
    unsigned char acked[CL_WRITER_MAX];
} g_writer;

/* ---- fixture ------------------------------------------------------------------------ */

void cluster_setup(void)
{
    static bool atexit_done;
    memset(CL, 0, sizeof *CL);
    const char *b = getenv("RP_BUILD");
    if (b == NULL || *b == '\0')
        b = "build";
    char abs[PATH_MAX];
    snprintf(CL->build, sizeof CL->build, "%.500s", realpath(b, abs) ? abs : b);
    snprintf(CL->dir, sizeof CL->dir, "/tmp/rp-itest-XXXXXX");
    if (mkdtemp(CL->dir) == NULL) {
        fprintf(stderr, "cluster_setup: mkdtemp: %s\n", strerror(errno));
        abort();
    }
    snprintf(CL->cluster_name, sizeof CL->cluster_name, "itest.raftport");
    CL->opts = (struct cl_opts){
        .election_timeout_ms = 1000,
        .heartbeat_timeout_ms = 100,
        .snapshot_threshold = 1024,
        .snapshot_trailing = 2048,
        .start_timeout_ms = 40000,
    };
    /* A write to a connection a daemon closed must be an error, not a dead test. */
    signal(SIGPIPE, SIG_IGN);
    if (!atexit_done) {
        atexit(at_exit_kill);
        atexit_done = true;
    }
}

/* What AddressSanitizer, LeakSanitizer and UBSan print (make asan): a daemon that
 * reported one did not pass, even if the test's checks did. */
static const char *const sanitizer_marks[] = {"ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                                              "runtime error:"};

void cluster_pass(void)
{
    for (int i = 1; i <= CL_MAX_NODES; i++) {
        if (!CL->nodes[i].used)
            continue;
        for (size_t k = 0; k < sizeof sanitizer_marks / sizeof sanitizer_marks[0]; k++)
            cr_assert(!node_log_contains(i, sanitizer_marks[k]), "auth%d's log has '%s' (see %s)",
                      i, sanitizer_marks[k], CL->nodes[i].log);
    }
    CL->passed = true;
}

struct cl_opts *cluster_opts(void)
{
    return &CL->opts;
}

void cluster_set_snapshot(unsigned threshold, unsigned trailing)
{
    CL->opts.snapshot_threshold = threshold;
    CL->opts.snapshot_trailing = trailing;
}

void node_print_log_tail(int i, int lines)
{
    struct cl_node *n = &CL->nodes[i];
    FILE *f = fopen(n->log, "r");
    if (f == NULL) {
        fprintf(stderr, "  (no log %s)\n", n->log);
        return;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    long from = size > 64 * 1024 ? size - 64 * 1024 : 0;
    fseek(f, from, SEEK_SET);
    char *buf = malloc((size_t)(size - from) + 1);
    size_t got = buf ? fread(buf, 1, (size_t)(size - from), f) : 0;
    fclose(f);
    if (buf == NULL)
        return;
    buf[got] = '\0';
    const char *start = buf + got;
    int seen = 0;
    while (start > buf) {
        if (start[-1] == '\n' && start != buf + got && ++seen >= lines)
            break;
        start--;
    }
    fprintf(stderr, "---- tail of %s ----\n%s", n->log, start);
    if (got > 0 && buf[got - 1] != '\n')
        fputc('\n', stderr);
    free(buf);
}

bool node_log_contains(int i, const char *needle)
{
    struct cl_node *n = &CL->nodes[i];
    FILE *f = fopen(n->log, "r");
    if (f == NULL)
        return false;
    char line[4096];
    bool found = false;
    while (!found && fgets(line, sizeof line, f))
        found = strstr(line, needle) != NULL;
    fclose(f);
    return found;
}

static void free_last_call_client(void);

void cluster_teardown(void)
{
    free_last_call_client();
    if (g_writer.running) {
        struct cl_writer_stats st;
        cl_writer_stop(&st);
    }
    kill_all_nodes();
    if (CL->dir[0] == '\0')
        return;
    if (CL->passed) {
        rm_rf(CL->dir);
        return;
    }
    fprintf(stderr, "\n==== test failed: cluster dir kept at %s ====\n", CL->dir);
    for (int i = 1; i <= CL_MAX_NODES; i++) {
        if (CL->nodes[i].used)
            node_print_log_tail(i, 15);
    }
    fprintf(stderr, "==== cluster dir kept at %s ====\n", CL->dir);
}

/* ---- ports and configs -------------------------------------------------------------- */

static bool port_taken_by_us(int port)
{
    char needle[16];
    snprintf(needle, sizeof needle, ":%d", port);
    for (int i = 1; i <= CL_MAX_NODES; i++) {
        struct cl_node *n = &CL->nodes[i];
        if (!n->used)
            continue;
        const char *a = strrchr(n->api_addr, ':'), *r = strrchr(n->raft_addr, ':');
        if ((a && strcmp(a, needle) == 0) || (r && strcmp(r, needle) == 0))
            return true;
    }
    return false;
}

/* A port that was free a moment ago: bind 127.0.0.1:0, read it back, release it. */
static int free_port(void)
{
    for (int attempt = 0; attempt < 50; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(fd >= 0, "socket: %s", strerror(errno));
        struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        socklen_t len = sizeof sa;
        int ok = bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
                 getsockname(fd, (struct sockaddr *)&sa, &len) == 0;
        close(fd);
        cr_assert(ok, "binding 127.0.0.1:0: %s", strerror(errno));
        int port = ntohs(sa.sin_port);
        if (!port_taken_by_us(port))
            return port;
    }
    cr_assert_fail("no free port found");
    return 0;
}

static void pick_ports(struct cl_node *n)
{
    n->api_addr[0] = n->raft_addr[0] = '\0';
    int a = free_port();
    snprintf(n->api_addr, sizeof n->api_addr, "127.0.0.1:%d", a);
    int r = free_port();
    snprintf(n->raft_addr, sizeof n->raft_addr, "127.0.0.1:%d", r);
}

void node_write_config(int i)
{
    struct cl_node *n = &CL->nodes[i];
    const struct cl_opts *o = &CL->opts;
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp", n->cfg);
    /* It may hold a join token: owner-only from the start, as scripts/lib does. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    cr_assert_not_null(f, "%s: %s", tmp, strerror(errno));
    fprintf(f, "version: v3\n");
    fprintf(f, "teleport:\n");
    fprintf(f, "  nodename: %s\n", n->name);
    fprintf(f, "  data_dir: %s\n", n->dir);
    if (n->token[0]) {
        fprintf(f, "  auth_server: %s\n", n->auth_server);
        fprintf(f, "  ca_pin: %s\n", CL->ca_pin);
        fprintf(f, "  join_params:\n");
        fprintf(f, "    token_name: %s\n", n->token);
        fprintf(f, "    method: token\n");
    }
    fprintf(f, "  log:\n");
    fprintf(f, "    output: stderr\n");
    fprintf(f, "    severity: INFO\n");
    fprintf(f, "auth_service:\n");
    fprintf(f, "  enabled: yes\n");
    fprintf(f, "  cluster_name: %s\n", CL->cluster_name);
    fprintf(f, "  listen_addr: %s\n", n->api_addr);
    fprintf(f, "  min_free_disk: 1MB\n");
    fprintf(f, "  raft:\n");
    fprintf(f, "    id: %llu\n", (unsigned long long)n->raft_id);
    fprintf(f, "    listen_addr: %s\n", n->raft_addr);
    fprintf(f, "    election_timeout: %ums\n", o->election_timeout_ms);
    fprintf(f, "    heartbeat_timeout: %ums\n", o->heartbeat_timeout_ms);
    fprintf(f, "    snapshot_threshold: %u\n", o->snapshot_threshold);
    fprintf(f, "    snapshot_trailing: %u\n", o->snapshot_trailing);
    cr_assert_eq(fclose(f), 0, "%s: %s", tmp, strerror(errno));
    cr_assert_eq(rename(tmp, n->cfg), 0, "rename %s: %s", tmp, strerror(errno));
}

void node_prepare(int i, uint64_t raft_id, const char *token, const char *auth_server)
{
    cr_assert(i >= 1 && i <= CL_MAX_NODES, "node index %d out of range", i);
    struct cl_node *n = &CL->nodes[i];
    cr_assert(n->pid == 0, "node %d is running", i);
    memset(n, 0, sizeof *n);
    n->used = true;
    n->raft_id = raft_id;
    snprintf(n->name, sizeof n->name, "auth%d", i);
    char base[sizeof CL->dir];
    memcpy(base, CL->dir, sizeof base);
    snprintf(n->dir, sizeof n->dir, "%s/auth%d", base, i);
    snprintf(n->cfg, sizeof n->cfg, "%s/auth%d.yaml", base, i);
    snprintf(n->log, sizeof n->log, "%s/auth%d.log", base, i);
    snprintf(n->token, sizeof n->token, "%s", token ? token : "");
    snprintf(n->auth_server, sizeof n->auth_server, "%s", auth_server ? auth_server : "");
    pick_ports(n);
    node_write_config(i);
}

pid_t node_spawn(int i)
{
    struct cl_node *n = &CL->nodes[i];
    char exe[600];
    snprintf(exe, sizeof exe, "%s/raftport", CL->build);
    cr_assert(access(exe, X_OK) == 0, "%s is not built (RP_BUILD=%s)", exe, CL->build);
    int fd = open(n->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    cr_assert(fd >= 0, "%s: %s", n->log, strerror(errno));
    dprintf(fd, "==== harness: starting %s (raft id %llu, api %s, raft %s) ====\n", n->name,
            (unsigned long long)n->raft_id, n->api_addr, n->raft_addr);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    /* The child goes its own way before anything else: a Criterion assertion (even one
     * that passes) talks to the runner, which a forked child must never do. */
    if (pid == 0) {
        child_common(parent);
        int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        dup2(devnull, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        /* Nothing of the test's (client sockets, other pipes) leaks into a daemon. */
        close_range(3, ~0U, 0);
        char *argv[] = {"raftport", "start", "-c", n->cfg, NULL};
        execv(exe, argv);
        dprintf(2, "harness: exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    int fork_errno = errno;
    close(fd);
    cr_assert(pid > 0, "fork: %s", strerror(fork_errno));
    n->pid = pid;
    n->exited = false;
    n->last_status = 0;
    return pid;
}

bool node_alive(int i)
{
    struct cl_node *n = &CL->nodes[i];
    if (!n->used || n->pid <= 0)
        return false;
    int st;
    pid_t r = waitpid(n->pid, &st, WNOHANG);
    if (r == n->pid) {
        n->exited = true;
        n->last_status = st;
        n->pid = 0;
        return false;
    }
    return true;
}

int node_wait_exit(int i, int timeout_ms)
{
    struct cl_node *n = &CL->nodes[i];
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    while (node_alive(i)) {
        if (cl_now_ms() >= end)
            return -1;
        cl_sleep_ms(20);
    }
    return n->last_status;
}

void node_kill9(int i)
{
    struct cl_node *n = &CL->nodes[i];
    cr_assert(n->used, "node %d was never started", i);
    if (n->pid > 0) {
        kill(n->pid, SIGKILL);
        int st;
        cr_assert_eq(waitpid(n->pid, &st, 0), n->pid, "waitpid: %s", strerror(errno));
        n->exited = true;
        n->last_status = st;
        n->pid = 0;
    }
}

int node_term(int i, int timeout_ms)
{
    struct cl_node *n = &CL->nodes[i];
    cr_assert(n->used && n->pid > 0, "node %d is not running", i);
    kill(n->pid, SIGTERM);
    int st = node_wait_exit(i, timeout_ms);
    if (st == -1)
        node_kill9(i);
    return st;
}

void node_restart(int i)
{
    struct cl_node *n = &CL->nodes[i];
    cr_assert(n->used, "node %d was never started", i);
    if (node_alive(i))
        node_kill9(i);
    node_spawn(i);
}

int node_by_raft_id(uint64_t id)
{
    for (int i = 1; i <= CL_MAX_NODES; i++) {
        if (CL->nodes[i].used && CL->nodes[i].raft_id == id)
            return i;
    }
    return 0;
}

int node_any_running(int except)
{
    for (int i = 1; i <= CL_MAX_NODES; i++) {
        if (i != except && node_alive(i))
            return i;
    }
    return 0;
}

/* ---- running commands --------------------------------------------------------------- */

static void append(char **buf, size_t *len, const char *p, size_t n)
{
    char *b = realloc(*buf, *len + n + 1);
    if (b == NULL)
        abort();
    memcpy(b + *len, p, n);
    *len += n;
    b[*len] = '\0';
    *buf = b;
}

int cl_run_argv(char *const argv[], int timeout_ms, struct cl_run *r)
{
    int po[2], pe[2];
    memset(r, 0, sizeof *r);
    r->out = calloc(1, 1);
    r->err = calloc(1, 1);
    if (pipe2(po, O_CLOEXEC) != 0)
        return r->status = -1;
    if (pipe2(pe, O_CLOEXEC) != 0) {
        close(po[0]);
        close(po[1]);
        return r->status = -1;
    }
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(po[0]), close(po[1]), close(pe[0]), close(pe[1]);
        return r->status = -1;
    }
    if (pid == 0) {
        child_common(parent);
        int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        dup2(devnull, 0);
        dup2(po[1], 1);
        dup2(pe[1], 2);
        close_range(3, ~0U, 0);
        execv(argv[0], argv);
        dprintf(2, "exec %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(po[1]);
    close(pe[1]);
    size_t lo = 0, le = 0;
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    bool open_o = true, open_e = true, timed_out = false;
    while (open_o || open_e) {
        uint64_t now = cl_now_ms();
        if (now >= end) {
            timed_out = true;
            break;
        }
        struct pollfd pf[2] = {{.fd = open_o ? po[0] : -1, .events = POLLIN},
                               {.fd = open_e ? pe[0] : -1, .events = POLLIN}};
        int k = poll(pf, 2, (int)(end - now));
        if (k < 0 && errno != EINTR)
            break;
        char buf[4096];
        for (int j = 0; j < 2; j++) {
            if (pf[j].fd < 0 || !(pf[j].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t got = read(pf[j].fd, buf, sizeof buf);
            if (got > 0) {
                if (j == 0)
                    append(&r->out, &lo, buf, (size_t)got);
                else
                    append(&r->err, &le, buf, (size_t)got);
            } else if (got == 0 || errno != EINTR) {
                if (j == 0)
                    open_o = false;
                else
                    open_e = false;
            }
        }
    }
    close(po[0]);
    close(pe[0]);
    int st = 0;
    if (timed_out) {
        kill(pid, SIGKILL);
        waitpid(pid, &st, 0);
        r->status = -1;
        return r->status;
    }
    /* Output closed: the child is exiting (or closed its pipes); bound the wait too. */
    while (waitpid(pid, &st, WNOHANG) == 0) {
        if (cl_now_ms() >= end) {
            kill(pid, SIGKILL);
            waitpid(pid, &st, 0);
            return r->status = -1;
        }
        cl_sleep_ms(5);
    }
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
    return r->status;
}

void cl_run_free(struct cl_run *r)
{
    free(r->out);
    free(r->err);
    r->out = r->err = NULL;
}

static int run_tctl_v(int i, char **out, bool quiet, va_list ap)
{
    char exe[600];
    char *argv[32];
    int n = 0;
    snprintf(exe, sizeof exe, "%s/tctl", CL->build);
    argv[n++] = exe;
    argv[n++] = "-c";
    argv[n++] = CL->nodes[i].cfg;
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 31)
        argv[n++] = (char *)a;
    argv[n] = NULL;
    struct cl_run r;
    int rc = cl_run_argv(argv, TCTL_TIMEOUT_MS, &r);
    if (rc != 0 && !quiet) {
        fprintf(stderr, "harness: tctl -c %s", CL->nodes[i].cfg);
        for (int k = 3; k < n; k++)
            fprintf(stderr, " %s", argv[k]);
        fprintf(stderr, " -> exit %d: %s", rc, r.err);
    }
    if (out) {
        *out = r.out;
        r.out = NULL;
    }
    cl_run_free(&r);
    return rc;
}

int run_tctl(int i, char **out, ...)
{
    va_list ap;
    va_start(ap, out);
    int rc = run_tctl_v(i, out, false, ap);
    va_end(ap);
    return rc;
}

/* The same without complaining on failure (used while polling). */
static int run_tctl_quiet(int i, char **out, ...) __attribute__((sentinel));
static int run_tctl_quiet(int i, char **out, ...)
{
    va_list ap;
    va_start(ap, out);
    int rc = run_tctl_v(i, out, true, ap);
    va_end(ap);
    return rc;
}

/* ---- users and their identities ------------------------------------------------------ */

/* The preset roles, in the order the leader creates them (auth/ssh_ca.c), one write
 * each: seeing the first is no promise that the others are there. */
static const char *const preset_roles[] = {"access", "editor", "auditor"};

static bool presets_exist(void *arg)
{
    (void)arg;
    for (size_t k = 0; k < sizeof preset_roles / sizeof preset_roles[0]; k++) {
        char path[64], *out = NULL;
        snprintf(path, sizeof path, "role/%s", preset_roles[k]);
        int rv = run_tctl(1, &out, "get", path, NULL);
        free(out);
        if (rv != 0)
            return false;
    }
    return true;
}

bool cl_wait_presets(int timeout_ms)
{
    return wait_until(timeout_ms, presets_exist, NULL);
}

int cl_tctl_as(const char *user, char **out, ...)
{
    char tctl[600], id[600], srv[100];
    char *argv[32];
    int n = 0;
    snprintf(tctl, sizeof tctl, "%s/tctl", CL->build);
    snprintf(id, sizeof id, "%s/%s.id", CL->dir, user);
    snprintf(srv, sizeof srv, "--auth-server=%s", CL->nodes[2].api_addr);
    argv[n++] = tctl;
    argv[n++] = "-i";
    argv[n++] = id;
    argv[n++] = srv;
    va_list ap;
    va_start(ap, out);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 31)
        argv[n++] = (char *)a;
    va_end(ap);
    argv[n] = NULL;
    struct cl_run r;
    cl_run_argv(argv, 20000, &r);
    int st = r.status;
    if (out) {
        size_t len = strlen(r.out ? r.out : "") + strlen(r.err ? r.err : "") + 2;
        *out = malloc(len);
        cr_assert(*out != NULL);
        snprintf(*out, len, "%s\n%s", r.out ? r.out : "", r.err ? r.err : "");
    }
    cl_run_free(&r);
    return st;
}

void cl_make_identity(const char *user, const char *roles)
{
    char r[128], u[64], path[600], *out = NULL;
    snprintf(r, sizeof r, "--roles=%s", roles);
    snprintf(u, sizeof u, "--user=%s", user);
    snprintf(path, sizeof path, "%s/%s.id", CL->dir, user);
    cr_assert_eq(run_tctl(1, &out, "users", "add", user, r, NULL), 0, "users add %s: %s", user,
                 out);
    free(out);
    cr_assert_eq(run_tctl(1, &out, "auth", "sign", u, "--format=file", "-o", path, NULL), 0,
                 "auth sign %s: %s", user, out);
    free(out);
}

void cl_invite_token(const char *out, char *tok, size_t n)
{
    const char *p = out + strlen(out);
    while (p > out && (p[-1] == '\n' || p[-1] == ' '))
        p--;
    const char *end = p;
    while (p > out && p[-1] != '\n' && p[-1] != ' ')
        p--;
    cr_assert(end - p == 32, "no invite token in: %s", out);
    snprintf(tok, n, "%.*s", (int)(end - p), p);
}

void cl_write_file(const char *name, const char *text, char *path, size_t n)
{
    snprintf(path, n, "%s/%s", CL->dir, name);
    cr_assert_eq(rp_write_file(path, text, strlen(text), 0600), 0, "%s", rp_errmsg());
}

void cl_add_token(int via, const char *type, const char *ttl, char *token, size_t n)
{
    char *out = NULL, type_arg[32], ttl_arg[32];
    snprintf(type_arg, sizeof type_arg, "--type=%s", type);
    snprintf(ttl_arg, sizeof ttl_arg, "--ttl=%s", ttl ? ttl : "");
    cr_assert_eq(run_tctl(via, &out, "tokens", "add", type_arg, ttl ? ttl_arg : "--format=json",
                          ttl ? "--format=json" : NULL, NULL),
                 0);
    struct cl_json *j = cl_json_parse(out);
    cr_assert_not_null(j, "%s", out);
    snprintf(token, n, "%s", cl_json_str(j, "token"));
    cl_json_free(j);
    free(out);
    cr_assert(token[0]);
}

char *cl_ssh_pubkey(void)
{
    EVP_PKEY *key = NULL;
    char *pub = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &key), 0);
    cr_assert_eq(rp_ssh_pubkey_format(key, NULL, &pub), 0);
    EVP_PKEY_free(key);
    return pub;
}

/* The error code of answer @d into @code ("" if it says ok); whether it says ok. */
static bool answer_code(const msgpack_object *d, char *code, size_t codelen)
{
    bool ok = false;
    rp_mp_get_bool(d, "ok", &ok);
    if (ok)
        code[0] = '\0';
    else
        cl_mp_str(d, "code", code, codelen);
    return ok;
}

void cl_anon_code(int i, const struct rp_buf *req, char *code, size_t codelen)
{
    struct rp_buf ans;
    msgpack_unpacked u;
    rp_buf_init(&ans);
    node_call_anon(i, req, &ans, &u);
    answer_code(&u.data, code, codelen);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&ans);
}

void cl_redeem_invite(int i, const char *token, const char *password, const char *totp_secret,
                      const char *totp_code, char *code, size_t codelen)
{
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, totp_secret ? 5 : 3);
    rp_mp_kv_str(&pk, "m", "invite_redeem");
    rp_mp_kv_str(&pk, "token", token);
    rp_mp_kv_str(&pk, "password", password);
    if (totp_secret) {
        rp_mp_kv_str(&pk, "totp_secret", totp_secret);
        rp_mp_kv_str(&pk, "totp_code", totp_code);
    }
    cl_anon_code(i, &req, code, codelen);
    rp_buf_free(&req);
}

void cl_login(int i, const char *user, const char *password, const char *totp, char *code,
              size_t codelen, bool *got_cert)
{
    char *pub = cl_ssh_pubkey();
    struct rp_buf req, ans;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_buf_init(&ans);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, totp ? 5 : 4);
    rp_mp_kv_str(&pk, "m", "authenticate");
    rp_mp_kv_str(&pk, "user", user);
    rp_mp_kv_str(&pk, "password", password);
    rp_mp_kv_str(&pk, "ssh_pubkey", pub);
    if (totp)
        rp_mp_kv_str(&pk, "totp_code", totp);
    msgpack_unpacked u;
    node_call_anon(i, &req, &ans, &u);
    bool ok = answer_code(&u.data, code, codelen);
    char cert[16] = "";
    if (got_cert)
        *got_cert = ok && strncmp(cl_mp_str(&u.data, "ssh_cert", cert, sizeof cert),
                                  "ssh-ed25519-cer", 15) == 0;
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&req);
    rp_buf_free(&ans);
    free(pub);
}

/* ---- JSON --------------------------------------------------------------------------- */

struct jp {
    const char *p;
    int depth;
};

static void jskip(struct jp *j)
{
    while (*j->p == ' ' || *j->p == '\n' || *j->p == '\t' || *j->p == '\r')
        j->p++;
}

static bool jvalue(struct jp *j, struct cl_json *out);

static bool jstring(struct jp *j, char **out)
{
    if (*j->p != '"')
        return false;
    j->p++;
    char *buf = NULL;
    size_t len = 0;
    append(&buf, &len, "", 0);
    while (*j->p && *j->p != '"') {
        char c = *j->p++;
        if (c == '\\') {
            char e = *j->p++;
            switch (e) {
            case 'n':
                c = '\n';
                break;
            case 't':
                c = '\t';
                break;
            case 'r':
                c = '\r';
                break;
            case 'b':
                c = '\b';
                break;
            case 'f':
                c = '\f';
                break;
            case '/':
            case '\\':
            case '"':
                c = e;
                break;
            case 'u': {
                unsigned v = 0;
                for (int k = 0; k < 4; k++) {
                    char h = *j->p++;
                    v <<= 4;
                    if (h >= '0' && h <= '9')
                        v |= (unsigned)(h - '0');
                    else if (h >= 'a' && h <= 'f')
                        v |= (unsigned)(h - 'a' + 10);
                    else if (h >= 'A' && h <= 'F')
                        v |= (unsigned)(h - 'A' + 10);
                    else {
                        free(buf);
                        return false;
                    }
                }
                /* Enough for tests: ASCII as is, anything else as '?'. */
                c = v < 0x80 ? (char)v : '?';
                break;
            }
            default:
                free(buf);
                return false;
            }
        }
        append(&buf, &len, &c, 1);
    }
    if (*j->p != '"') {
        free(buf);
        return false;
    }
    j->p++;
    *out = buf;
    return true;
}

static bool jvalue(struct jp *j, struct cl_json *out)
{
    memset(out, 0, sizeof *out);
    jskip(j);
    if (++j->depth > 64)
        return false;
    bool ok = false;
    if (*j->p == '{' || *j->p == '[') {
        bool obj = *j->p == '{';
        char close = obj ? '}' : ']';
        out->type = obj ? CLJ_OBJ : CLJ_ARR;
        j->p++;
        jskip(j);
        if (*j->p == close) {
            j->p++;
            ok = true;
        } else {
            for (;;) {
                char *key = NULL;
                jskip(j);
                if (obj) {
                    if (!jstring(j, &key))
                        break;
                    jskip(j);
                    if (*j->p != ':') {
                        free(key);
                        break;
                    }
                    j->p++;
                }
                out->items = realloc(out->items, (out->n + 1) * sizeof *out->items);
                if (obj)
                    out->keys = realloc(out->keys, (out->n + 1) * sizeof *out->keys);
                if (out->items == NULL || (obj && out->keys == NULL))
                    abort();
                if (obj)
                    out->keys[out->n] = key;
                bool vok = jvalue(j, &out->items[out->n]);
                out->n++;
                if (!vok)
                    break;
                jskip(j);
                if (*j->p == ',') {
                    j->p++;
                    continue;
                }
                if (*j->p == close) {
                    j->p++;
                    ok = true;
                }
                break;
            }
        }
    } else if (*j->p == '"') {
        out->type = CLJ_STR;
        ok = jstring(j, &out->str);
    } else if (strncmp(j->p, "true", 4) == 0 || strncmp(j->p, "false", 5) == 0) {
        out->type = CLJ_BOOL;
        out->b = *j->p == 't';
        j->p += out->b ? 4 : 5;
        ok = true;
    } else if (strncmp(j->p, "null", 4) == 0) {
        out->type = CLJ_NULL;
        j->p += 4;
        ok = true;
    } else if (*j->p == '-' || (*j->p >= '0' && *j->p <= '9')) {
        char *end;
        out->type = CLJ_NUM;
        out->num = strtod(j->p, &end);
        if (end != j->p) {
            bool integer = true;
            for (const char *q = j->p; q < end; q++)
                integer = integer && *q >= '0' && *q <= '9';
            if (integer)
                out->u = strtoull(j->p, NULL, 10);
            j->p = end;
            ok = true;
        }
    }
    j->depth--;
    return ok;
}

static void json_free_inner(struct cl_json *j)
{
    for (size_t i = 0; i < j->n; i++) {
        json_free_inner(&j->items[i]);
        if (j->keys)
            free(j->keys[i]);
    }
    free(j->items);
    free(j->keys);
    free(j->str);
}

void cl_json_free(struct cl_json *j)
{
    if (j == NULL)
        return;
    json_free_inner(j);
    free(j);
}

struct cl_json *cl_json_parse(const char *text)
{
    struct jp j = {.p = text, .depth = 0};
    struct cl_json *out = calloc(1, sizeof *out);
    if (out == NULL)
        abort();
    bool ok = jvalue(&j, out);
    jskip(&j);
    if (!ok || *j.p != '\0') {
        cl_json_free(out);
        return NULL;
    }
    return out;
}

const struct cl_json *cl_json_get(const struct cl_json *obj, const char *key)
{
    if (obj == NULL || obj->type != CLJ_OBJ)
        return NULL;
    for (size_t i = 0; i < obj->n; i++) {
        if (strcmp(obj->keys[i], key) == 0)
            return &obj->items[i];
    }
    return NULL;
}

const char *cl_json_str(const struct cl_json *obj, const char *key)
{
    const struct cl_json *v = cl_json_get(obj, key);
    return v && v->type == CLJ_STR ? v->str : "";
}

uint64_t cl_json_u64(const struct cl_json *obj, const char *key)
{
    const struct cl_json *v = cl_json_get(obj, key);
    return v && v->type == CLJ_NUM ? v->u : 0;
}

/* ---- status ------------------------------------------------------------------------- */

int cluster_status(int i, struct cl_status *st)
{
    char *out = NULL;
    memset(st, 0, sizeof *st);
    if (i <= 0 || !CL->nodes[i].used)
        return -1;
    int rc = run_tctl_quiet(i, &out, "status", "--format=json", NULL);
    struct cl_json *j = rc == 0 ? cl_json_parse(out) : NULL;
    free(out);
    if (j == NULL)
        return -1;
    snprintf(st->cluster_name, sizeof st->cluster_name, "%s", cl_json_str(j, "cluster_name"));
    snprintf(st->ca_pin, sizeof st->ca_pin, "%s", cl_json_str(j, "ca_pin"));
    st->leader_id = cl_json_u64(j, "leader_id");
    st->term = cl_json_u64(j, "term");
    const struct cl_json *m = cl_json_get(j, "members");
    if (m && m->type == CLJ_ARR) {
        for (size_t k = 0; k < m->n && st->n_members < 16; k++) {
            struct cl_member *cm = &st->members[st->n_members++];
            const struct cl_json *e = &m->items[k];
            cm->id = cl_json_u64(e, "id");
            snprintf(cm->address, sizeof cm->address, "%s", cl_json_str(e, "address"));
            snprintf(cm->role, sizeof cm->role, "%s", cl_json_str(e, "role"));
            snprintf(cm->state, sizeof cm->state, "%s", cl_json_str(e, "state"));
            cm->last_applied = cl_json_u64(e, "last_applied");
        }
    }
    cl_json_free(j);
    return 0;
}

unsigned cl_status_count_role(const struct cl_status *st, const char *role)
{
    unsigned n = 0;
    for (unsigned k = 0; k < st->n_members; k++)
        n += strcmp(st->members[k].role, role) == 0;
    return n;
}

const struct cl_member *cl_status_member(const struct cl_status *st, uint64_t id)
{
    for (unsigned k = 0; k < st->n_members; k++) {
        if (st->members[k].id == id)
            return &st->members[k];
    }
    return NULL;
}

uint64_t cluster_leader_id_from(int i)
{
    struct cl_status st;
    if (i == 0)
        i = node_any_running(0);
    if (i == 0 || cluster_status(i, &st) != 0 || st.leader_id == 0)
        return 0;
    const struct cl_member *m = cl_status_member(&st, st.leader_id);
    return m && strcmp(m->state, "leader") == 0 ? st.leader_id : 0;
}

uint64_t cluster_leader_id(void)
{
    return cluster_leader_id_from(0);
}

static bool status_ready(const struct cl_status *st, unsigned n, uint64_t not_leader)
{
    if (st->n_members != n || cl_status_count_role(st, "voter") != n || st->leader_id == 0 ||
        st->leader_id == not_leader)
        return false;
    const struct cl_member *l = cl_status_member(st, st->leader_id);
    if (l == NULL || strcmp(l->state, "leader") != 0)
        return false;
    for (unsigned k = 0; k < st->n_members; k++) {
        if (strcmp(st->members[k].state, "unreachable") == 0)
            return false;
    }
    return true;
}

uint64_t cluster_wait_ready(int ask, unsigned n, uint64_t not_leader, int timeout_ms)
{
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    struct cl_status st;
    for (;;) {
        int i = ask ? ask : node_any_running(0);
        if (i && cluster_status(i, &st) == 0 && status_ready(&st, n, not_leader))
            return st.leader_id;
        if (cl_now_ms() >= end)
            return 0;
        cl_sleep_ms(100);
    }
}

/* ---- cluster start ------------------------------------------------------------------ */

/* Parses `tctl tokens add --format=json` output into @token (and the CA pin). */
static void parse_token_json(const char *out, char *token, size_t tlen, char *pin, size_t plen)
{
    struct cl_json *j = cl_json_parse(out);
    cr_assert_not_null(j, "tokens add printed no JSON: %s", out);
    snprintf(token, tlen, "%s", cl_json_str(j, "token"));
    if (pin)
        snprintf(pin, plen, "%s", cl_json_str(j, "ca_pin"));
    cl_json_free(j);
    cr_assert(token[0] != '\0', "tokens add printed no token: %s", out);
}

static bool log_says_addr_in_use(int i)
{
    return node_log_contains(i, "in use");
}

/* Starts node 1 as a cluster of one and waits for it to lead. Retries with other
 * ports when one was taken between picking and binding. */
static void start_bootstrap_node(int timeout_ms)
{
    for (int attempt = 0;; attempt++) {
        node_prepare(1, 1, NULL, NULL);
        node_spawn(1);
        uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
        bool died = false;
        while (cl_now_ms() < end) {
            if (!node_alive(1)) {
                died = true;
                break;
            }
            if (cluster_leader_id_from(1) == 1)
                break;
            cl_sleep_ms(100);
        }
        if (died && attempt < 3 && log_says_addr_in_use(1)) {
            rm_rf(CL->nodes[1].dir);
            continue;
        }
        cr_assert(!died, "auth1 exited during bootstrap (status 0x%x)", CL->nodes[1].last_status);
        cr_assert_eq(cluster_leader_id_from(1), 1, "auth1 did not become leader in %d ms",
                     timeout_ms);
        return;
    }
}

static void new_auth_token(int via, char *token, size_t tlen)
{
    char *out = NULL;
    int rc =
        run_tctl(via, &out, "tokens", "add", "--type=auth", "--ttl=10m", "--format=json", NULL);
    cr_assert_eq(rc, 0, "tctl tokens add --type=auth failed (exit %d)", rc);
    char pin[128];
    parse_token_json(out, token, tlen, pin, sizeof pin);
    free(out);
    if (CL->ca_pin[0] == '\0')
        snprintf(CL->ca_pin, sizeof CL->ca_pin, "%s", pin);
    cr_assert_str_eq(pin, CL->ca_pin, "tokens add gave another CA pin");
}

/* Waits for @n healthy voters. A joiner that lost one of its ports between our
 * picking it and its binding has joined already (it joins before it listens): its
 * identity is saved and it is a member, so starting it again with the same
 * config completes its start. */
static uint64_t wait_ready_restarting(int n, int timeout_ms)
{
    int restarts[CL_MAX_NODES + 1] = {0};
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    struct cl_status st;
    for (;;) {
        for (int i = 2; i <= n; i++) {
            if (!node_alive(i) && restarts[i] < 3 && log_says_addr_in_use(i)) {
                restarts[i]++;
                fprintf(stderr, "harness: auth%d lost a port; starting it again\n", i);
                cl_sleep_ms(200);
                node_spawn(i);
            }
        }
        if (cluster_status(1, &st) == 0 && status_ready(&st, (unsigned)n, 0))
            return st.leader_id;
        if (cl_now_ms() >= end)
            return 0;
        cl_sleep_ms(100);
    }
}

void cluster_start(int n)
{
    cr_assert(n >= 1 && n <= CL_MAX_NODES, "cluster_start(%d)", n);
    uint64_t t0 = cl_now_ms();
    int budget = CL->opts.start_timeout_ms;
    start_bootstrap_node(budget);
    struct cl_status st;
    cr_assert_eq(cluster_status(1, &st), 0, "tctl status on auth1 failed");
    snprintf(CL->ca_pin, sizeof CL->ca_pin, "%s", st.ca_pin);
    for (int i = 2; i <= n; i++) {
        char token[128];
        new_auth_token(1, token, sizeof token);
        node_prepare(i, (uint64_t)i, token, CL->nodes[1].api_addr);
        node_spawn(i);
    }
    int left = budget - (int)(cl_now_ms() - t0);
    uint64_t leader = wait_ready_restarting(n, left > 1000 ? left : 1000);
    if (leader == 0) {
        for (int i = 1; i <= n; i++) {
            if (!node_alive(i))
                fprintf(stderr, "harness: auth%d is not running (status 0x%x)\n", i,
                        CL->nodes[i].last_status);
        }
        char *out = NULL;
        run_tctl(1, &out, "status", NULL);
        fprintf(stderr, "harness: last status:\n%s\n", out ? out : "");
        free(out);
    }
    cr_assert_neq(leader, 0, "the cluster did not reach %d voters and a leader in %d ms", n,
                  budget);
    cr_log_info("cluster of %d up in %llu ms (leader %llu), dir %s", n,
                (unsigned long long)(cl_now_ms() - t0), (unsigned long long)leader, CL->dir);
}

int cluster_add_node(uint64_t raft_id)
{
    int i = 1;
    while (i <= CL_MAX_NODES && CL->nodes[i].used)
        i++;
    cr_assert(i <= CL_MAX_NODES, "no free node slot");
    int via = node_any_running(0);
    cr_assert(via != 0, "no running member to join through");
    char token[128];
    new_auth_token(via, token, sizeof token);
    node_prepare(i, raft_id ? raft_id : (uint64_t)i, token, CL->nodes[via].api_addr);
    node_spawn(i);
    return i;
}

/* ---- the API in-process ------------------------------------------------------------- */

SSL_CTX *node_admin_ctx(int i)
{
    SSL_CTX *ctx = NULL;
    int rv = auth_load_admin_ctx(CL->nodes[i].dir, &ctx);
    cr_assert_eq(rv, 0, "admin identity of auth%d: %s", i, rp_errmsg());
    return ctx;
}

struct auth_client *node_client(int i)
{
    SSL_CTX *ctx = node_admin_ctx(i);
    const char *addrs[1] = {CL->nodes[i].api_addr};
    struct auth_client *c = NULL;
    int rv = auth_client_new(&c, ctx, addrs, 1);
    SSL_CTX_free(ctx);
    cr_assert_eq(rv, 0, "auth_client_new: %s", rp_errmsg());
    auth_client_set_timeout(c, 10000);
    return c;
}

/* The answer of node_call points into its client's buffer: the client lives until
 * the next node_call (or teardown). */
static struct auth_client *g_last_call_client;

static void free_last_call_client(void)
{
    auth_client_free(g_last_call_client);
    g_last_call_client = NULL;
}

void node_call_anon(int i, const struct rp_buf *req, struct rp_buf *ans, msgpack_unpacked *u)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    cr_assert_not_null(ctx);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    struct rp_conn c;
    int rv = rp_conn_dial(&c, ctx, CL->nodes[i].api_addr, 3000);
    SSL_CTX_free(ctx);
    cr_assert_eq(rv, 0, "dial auth%d without a certificate: %s", i, rp_errmsg());
    rp_conn_set_timeout(&c, 15000);
    rp_buf_reset(ans);
    cr_assert_eq(rp_conn_write_frame(&c, req->data, req->len), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_conn_read_frame(&c, ans), 0, "%s", rp_errmsg());
    rp_conn_close(&c);
    cr_assert_eq(rp_mp_parse(ans->data, ans->len, u), 0, "a malformed answer");
}

int node_call(int i, const void *req, size_t len, msgpack_unpacked *resp, int timeout_ms)
{
    free_last_call_client();
    struct auth_client *c = node_client(i);
    auth_client_set_timeout(c, timeout_ms > 0 ? timeout_ms : 10000);
    g_last_call_client = c;
    return auth_client_call(c, req, len, resp);
}

void cl_req_put(struct rp_buf *out, const char *kind, const char *name, const char *value,
                const char *rid)
{
    msgpack_packer pk;
    char rbuf[33];
    if (rid == NULL) {
        auth_new_rid(rbuf);
        rid = rbuf;
    }
    rp_mp_packer_init(&pk, out);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "put");
    rp_mp_pack_str(&pk, "res");
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "kind", kind);
    rp_mp_kv_str(&pk, "version", "v1");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "name", name);
    rp_mp_pack_str(&pk, "spec");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "value", value);
    rp_mp_kv_str(&pk, "rid", rid);
}

void cl_req_get(struct rp_buf *out, const char *kind, const char *name, bool stale)
{
    auth_req_get(out, kind, name, stale, false);
}

void cl_req_simple(struct rp_buf *out, const char *method)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, out);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "m", method);
}

const char *cl_mp_str(const msgpack_object *map, const char *key, char *out, size_t outlen)
{
    const char *s;
    size_t n;
    out[0] = '\0';
    if (map != NULL && rp_mp_get_str(map, key, &s, &n) == 0)
        snprintf(out, outlen, "%.*s", (int)n, s);
    return out;
}

int cl_put(struct auth_client *c, const char *kind, const char *name, const char *value)
{
    struct rp_buf req;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    cl_req_put(&req, kind, name, value, NULL);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

static int get_value(int rv, msgpack_unpacked *resp, char *value, size_t valuelen)
{
    if (rv == 0 && value != NULL) {
        const msgpack_object *res = rp_mp_get(&resp->data, "res");
        cl_mp_str(rp_mp_get(res, "spec"), "value", value, valuelen);
    }
    return rv;
}

int cl_get(struct auth_client *c, const char *kind, const char *name, bool stale, char *value,
           size_t valuelen)
{
    struct rp_buf req;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    cl_req_get(&req, kind, name, stale);
    int rv = get_value(auth_client_call(c, req.data, req.len, &resp), &resp, value, valuelen);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

int node_put(int i, const char *kind, const char *name, const char *value)
{
    struct rp_buf req;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    cl_req_put(&req, kind, name, value, NULL);
    int rv = node_call(i, req.data, req.len, &resp, 0);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

int node_get(int i, const char *kind, const char *name, bool stale, char *value, size_t valuelen)
{
    struct rp_buf req;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    cl_req_get(&req, kind, name, stale);
    int rv = get_value(node_call(i, req.data, req.len, &resp, 0), &resp, value, valuelen);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

bool node_wait_value(int i, const char *kind, const char *name, const char *value, int timeout_ms)
{
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    char got[256];
    for (;;) {
        /* A short call timeout: a node still starting refuses connections. */
        struct rp_buf req;
        msgpack_unpacked resp;
        rp_buf_init(&req);
        cl_req_get(&req, kind, name, true);
        int rv = get_value(node_call(i, req.data, req.len, &resp, 2000), &resp, got, sizeof got);
        msgpack_unpacked_destroy(&resp);
        rp_buf_free(&req);
        if (rv == 0 && strcmp(got, value) == 0)
            return true;
        if (cl_now_ms() >= end)
            return false;
        cl_sleep_ms(50);
    }
}

/* ---- the writer thread -------------------------------------------------------------- */

static void *writer_main(void *arg)
{
    (void)arg;
    while (!atomic_load(&g_writer.stop) && g_writer.attempted < CL_WRITER_MAX) {
        char name[96];
        unsigned k = g_writer.attempted;
        snprintf(name, sizeof name, "%s-%u", g_writer.prefix, k);
        int rv = cl_put(g_writer.client, "itest", name, name);
        g_writer.attempted = k + 1;
        if (rv == 0) {
            g_writer.acked[k] = 1;
            g_writer.ok++;
        } else {
            if (g_writer.failed++ == 0)
                snprintf(g_writer.first_error, sizeof g_writer.first_error, "put %s: %s (%s)", name,
                         rp_errmsg(), rp_strerror(rv));
        }
    }
    return NULL;
}

void cl_writer_start(int i, const char *prefix)
{
    cr_assert(!g_writer.running, "a writer is already running");
    g_writer.client = node_client(i);
    auth_client_set_timeout(g_writer.client, 15000);
    snprintf(g_writer.prefix, sizeof g_writer.prefix, "%s", prefix);
    g_writer.attempted = g_writer.ok = g_writer.failed = 0;
    g_writer.first_error[0] = '\0';
    memset(g_writer.acked, 0, sizeof g_writer.acked);
    atomic_store(&g_writer.stop, false);
    cr_assert_eq(pthread_create(&g_writer.thread, NULL, writer_main, NULL), 0);
    g_writer.running = true;
}

void cl_writer_stop(struct cl_writer_stats *st)
{
    memset(st, 0, sizeof *st);
    if (!g_writer.running)
        return;
    atomic_store(&g_writer.stop, true);
    pthread_join(g_writer.thread, NULL);
    g_writer.running = false;
    auth_client_free(g_writer.client);
    g_writer.client = NULL;
    st->attempted = g_writer.attempted;
    st->ok = g_writer.ok;
    st->failed = g_writer.failed;
    snprintf(st->first_error, sizeof st->first_error, "%s", g_writer.first_error);
    st->acked = g_writer.acked;
}

/* ---- node identities ------------------------------------------------------------------ */

void cl_join_node(int via, const char *token, const char *nodename, struct cl_node_id *out)
{
    cl_join_host(via, "node", token, nodename, out);
}

void cl_join_host(int via, const char *type, const char *token, const char *nodename,
                  struct cl_node_id *out)
{
    char fresh[128], code[64];
    memset(out, 0, sizeof *out);
    cr_assert_eq(rp_uuid_v4(out->host_id), 0);
    snprintf(out->nodename, sizeof out->nodename, "%s", nodename);
    if (token == NULL) {
        cl_add_token(1, type, NULL, fresh, sizeof fresh);
        token = fresh;
    }
    EVP_PKEY *tls_key = rp_tls_keygen();
    char *tls_pub = NULL;
    cr_assert_not_null(tls_key, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_pubkey_to_pem(tls_key, &tls_pub), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &out->ssh_key), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_pubkey_format(out->ssh_key, NULL, &out->ssh_pub), 0, "%s", rp_errmsg());

    struct rp_buf req, ans;
    msgpack_packer pk;
    struct rp_mp_map m;
    msgpack_unpacked u;
    rp_buf_init(&req);
    rp_buf_init(&ans);
    rp_mp_packer_init(&pk, &req);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "join");
    rp_mp_map_str(&m, "token", token);
    rp_mp_map_str(&m, "type", type);
    rp_mp_map_str(&m, "host_id", out->host_id);
    rp_mp_map_str(&m, "nodename", nodename);
    rp_mp_map_str(&m, "host_pubkey", tls_pub);
    rp_mp_map_str(&m, "ssh_pubkey", out->ssh_pub);
    rp_mp_map_end(&m);
    /* The leader creates the SSH CAs a moment after the first election. */
    uint64_t deadline = cl_now_ms() + 20000;
    for (;;) {
        node_call_anon(via, &req, &ans, &u);
        if (answer_code(&u.data, code, sizeof code) ||
            (strcmp(code, "unavailable") != 0 && strcmp(code, "not_leader") != 0) ||
            cl_now_ms() > deadline)
            break;
        msgpack_unpacked_destroy(&u);
        cl_sleep_ms(100);
    }
    cr_assert_str_empty(code, "join of %s: %s", nodename, code);
    char *host_cert = NULL, *ca_cert = NULL;
    cr_assert_eq(rp_mp_get_strdup(&u.data, "host_cert", &host_cert), 0);
    cr_assert_eq(rp_mp_get_strdup(&u.data, "ca_cert", &ca_cert), 0);
    cr_assert_eq(rp_mp_get_strdup(&u.data, "ssh_cert", &out->ssh_cert), 0);
    cr_assert_eq(rp_mp_get_strdup(&u.data, "ssh_host_ca", &out->host_ca), 0);
    msgpack_unpacked_destroy(&u);
    X509 *cert = NULL, *ca = NULL;
    cr_assert_eq(rp_tls_cert_from_pem(host_cert, strlen(host_cert), &cert), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_cert_from_pem(ca_cert, strlen(ca_cert), &ca), 0, "%s", rp_errmsg());
    out->ctx = rp_tls_client_ctx(ca, cert, tls_key);
    cr_assert_not_null(out->ctx, "%s", rp_errmsg());
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(tls_key);
    free(host_cert);
    free(ca_cert);
    free(tls_pub);
    rp_buf_free(&req);
    rp_buf_free(&ans);
}

void cl_node_id_free(struct cl_node_id *n)
{
    SSL_CTX_free(n->ctx);
    EVP_PKEY_free(n->ssh_key);
    free(n->ssh_pub);
    free(n->ssh_cert);
    free(n->host_ca);
    memset(n, 0, sizeof *n);
}

struct auth_client *cl_node_client(const struct cl_node_id *n, int i)
{
    const char *addrs[1] = {CL->nodes[i].api_addr};
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, n->ctx, addrs, 1), 0, "%s", rp_errmsg());
    return c;
}

/* ---- daemons next to the cluster (node agents, proxies) ------------------------------ */

pid_t cl_spawn_daemon(struct cl_daemon *d, const char *role, const char *cfg, const char *log,
                      const char *name, const char *const *args, const char *const *env)
{
    char *argv[24] = {"raftport", "start", (char *)role, "-c", (char *)cfg};
    size_t n = 5;
    for (int k = 0; args != NULL && args[k] != NULL && n < 23; k++)
        argv[n++] = (char *)args[k];
    argv[n] = NULL;
    char exe[600];
    snprintf(exe, sizeof exe, "%s/raftport", CL->build);
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    cr_assert(fd >= 0, "%s: %s", log, strerror(errno));
    dprintf(fd, "==== harness: starting %s ====\n", name);
    pid_t parent = getpid();
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        dup2(devnull, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        close_range(3, ~0U, 0);
        for (int k = 0; env != NULL && env[k] != NULL; k++)
            putenv((char *)env[k]);
        execv(exe, argv);
        _exit(127);
    }
    close(fd);
    cr_assert(pid > 0, "fork: %s", strerror(errno));
    d->pid = pid;
    return pid;
}

bool cl_daemon_alive(struct cl_daemon *d)
{
    if (d->pid <= 0)
        return false;
    int st;
    if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
        d->last_status = st;
        d->pid = 0;
        return false;
    }
    return true;
}

void cl_daemon_kill9(struct cl_daemon *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGKILL);
    waitpid(d->pid, &d->last_status, 0);
    d->pid = 0;
}

int cl_daemon_term(struct cl_daemon *d, int timeout_ms)
{
    if (d->pid <= 0)
        return d->last_status;
    kill(d->pid, SIGTERM);
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    while (cl_now_ms() < end) {
        int st;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            d->last_status = st;
            return st;
        }
        cl_sleep_ms(20);
    }
    cl_daemon_kill9(d);
    return -1;
}
