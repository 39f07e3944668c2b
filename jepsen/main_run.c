/* jepsen/main_run.c: build/jepsen-run, one run of the fault-injection harness.
 *
 *   jepsen-run --workload=register|set|unique|watch --nemesis=LIST
 *              [--time=SECONDS] [--nodes=3|5] [--rate=OPS_PER_S] [--concurrency=N]
 *              [--seed=N] [--name=NAME] [--store=DIR] [--daemon=PATH] [--keep-data]
 *
 * LIST is none, all, or a comma-separated list of partition, kill, pause,
 * membership, clock and truncate.
 *
 * Builds a bridge rpj-br0 (10.77.0.1/24) and one network namespace rpj-nI per
 * node (10.77.0.(10+I)/24 on a veth onto the bridge), runs `raftport start` in
 * each namespace (API :3025, Raft :3030), bootstraps n1 and joins the others
 * with auth tokens, then runs the workload's client threads in the root
 * namespace against all nodes while the main thread injects faults. The
 * history, node logs, results.json and latency.svg go to
 * STORE/NAME/TIMESTAMP/. Everything (processes, namespaces, veths, bridge) is
 * removed at the end, on failure and on SIGINT/SIGTERM; a stale setup left by
 * a crashed run is removed first. Must run as root.
 *
 * Exit status: 0 valid, 1 invalid, 2 unknown or harness error, 130 interrupted. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "jepsen/check.h"
#include "jepsen/history.h"
#include "jepsen/run.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "raft/rp_raft.h"

#define MAX_NODES 5
#define MAX_SLOTS (MAX_NODES + 1) /* one spare namespace for the membership nemesis */
#define MAX_CLIENTS 64
#define BRIDGE "rpj-br0"
#define NS_FMT "rpj-n%d"
#define VETH_FMT "rpj-v%d"
#define API_PORT 3025
#define RAFT_PORT 3030
#define CALL_TIMEOUT_MS 1500
#define OPS_PER_KEY 100
#define CLIENTS_PER_KEY 5
#define QUIET_MS 5000
#define FAULT_MS 5000
#define HEAL_MS 3000

/* ---- options and global state ----------------------------------------------------- */

static struct {
    const char *workload, *nemesis, *name, *store, *daemon;
    int time_s, nodes, rate, concurrency;
    uint64_t seed;
    bool keep_data;
} O = {"register", "partition", NULL, "jepsen/store", NULL, 60, 5, 100, 10, 0, false};

enum {
    NEM_PARTITION = 1 << 0,
    NEM_KILL = 1 << 1,
    NEM_PAUSE = 1 << 2,
    NEM_MEMBERSHIP = 1 << 3,
    NEM_CLOCK = 1 << 4,
    NEM_TRUNCATE = 1 << 5,
    NEM_KINDS = 6,
    NEM_ALL = (1 << NEM_KINDS) - 1,
};
static const char *const nem_names[NEM_KINDS] = {"partition",  "kill",  "pause",
                                                 "membership", "clock", "truncate"};
static unsigned g_nem;                /* the NEM_* bits of --nemesis */
static int g_nslots;                  /* namespaces: the nodes, plus a spare with membership */
static uint64_t g_next_raft_id = 100; /* raft ids of the nodes joined by the membership nemesis */
#define FAKETIME_LIB "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"

struct node {
    pid_t pid;
    bool paused;
    bool member;      /* part of the cluster (else a spare slot or removed) */
    uint64_t raft_id; /* of the node now in this slot */
    double skew_s;    /* clock offset given to libfaketime */
    char addr[32];    /* API address */
    char ip[20];
    char dir[PATH_MAX - 64], cfg[PATH_MAX], log[PATH_MAX], clock[PATH_MAX];
};

static struct node g_nodes[MAX_SLOTS + 1];
static char g_exe_dir[PATH_MAX];
static char g_run[PATH_MAX - 128];
static volatile sig_atomic_t g_stop;
static atomic_bool g_workload_stop;
static uint64_t g_t0_ns;
static SSL_CTX *g_ctx;
static bool g_net_made;

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void msg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void msg(const char *fmt, ...)
{
    va_list ap;
    double t = g_t0_ns ? (double)(mono_ns() - g_t0_ns) / 1e9 : 0.0;
    fprintf(stderr, "jepsen-run [%7.2f] ", t);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* Sleeps @ms, waking early when interrupted. Returns false if the run is stopping. */
static bool nap(unsigned ms)
{
    uint64_t end = mono_ns() + (uint64_t)ms * 1000000ull;
    while (!g_stop) {
        uint64_t now = mono_ns();
        if (now >= end)
            return true;
        uint64_t left = end - now;
        if (left > 50000000ull)
            left = 50000000ull;
        struct timespec ts = {0, (long)left};
        nanosleep(&ts, NULL);
    }
    return false;
}

/* xorshift64*, one per thread. */
static uint64_t rnd(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 2685821657736338717ull;
}

static uint64_t g_nem_rng;

/* Runs a shell command; returns its exit status (or -1). */
static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    int st = system(cmd);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}

/* ---- the history writer ----------------------------------------------------------- */

static pthread_mutex_t g_hmu = PTHREAD_MUTEX_INITIALIZER;
static FILE *g_hist;
static int64_t g_index;

/* One line; @process < 0 is the nemesis. @key_json, @value_json are JSON (NULL = omit);
 * @error is a plain string (NULL = omit). The time is taken under the lock, so the
 * times of the lines increase with their order. */
static void hist_write(const char *type, int64_t process, const char *f, const char *key_json,
                       const char *value_json, const char *error)
{
    struct rp_buf b;
    rp_buf_init(&b);
    pthread_mutex_lock(&g_hmu);
    rp_buf_printf(&b, "{\"index\":%" PRId64 ",\"time\":%" PRIu64 ",\"type\":\"%s\",", g_index++,
                  mono_ns() - g_t0_ns, type);
    if (process < 0)
        rp_buf_append_str(&b, "\"process\":\"nemesis\"");
    else
        rp_buf_printf(&b, "\"process\":%" PRId64, process);
    rp_buf_printf(&b, ",\"f\":\"%s\"", f);
    if (key_json)
        rp_buf_printf(&b, ",\"key\":%s", key_json);
    if (value_json)
        rp_buf_printf(&b, ",\"value\":%s", value_json);
    if (error) {
        rp_buf_append_str(&b, ",\"error\":");
        rp_json_str(&b, error, strlen(error));
    }
    rp_buf_append_str(&b, "}\n");
    fwrite(b.data, 1, b.len, g_hist);
    fflush(g_hist);
    pthread_mutex_unlock(&g_hmu);
    rp_buf_free(&b);
}

static void nemesis_op(const char *f, const char *value_json)
{
    hist_write("info", -1, f, NULL, value_json, NULL);
    msg("nemesis %s %s", f, value_json);
}

/* ---- network namespaces ----------------------------------------------------------- */

/* Kills (by pid) whatever still runs in our namespaces: daemons of a crashed run. */
static void kill_ns_processes(int i)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "ip netns pids " NS_FMT " 2>/dev/null", i);
    FILE *p = popen(cmd, "r");
    if (p == NULL)
        return;
    long pid;
    while (fscanf(p, "%ld", &pid) == 1) {
        if (pid > 1 && pid != (long)getpid()) {
            kill((pid_t)pid, SIGCONT);
            kill((pid_t)pid, SIGKILL);
        }
    }
    pclose(p);
}

/* Removes every namespace, veth and the bridge of ours; harmless when absent. */
static void net_destroy(void)
{
    for (int i = 1; i <= MAX_SLOTS; i++) {
        char path[64];
        snprintf(path, sizeof path, "/run/netns/" NS_FMT, i);
        if (access(path, F_OK) == 0) {
            kill_ns_processes(i);
            sh("ip netns del " NS_FMT " 2>/dev/null", i);
        }
        sh("ip link show " VETH_FMT " >/dev/null 2>&1 && ip link del " VETH_FMT " 2>/dev/null", i,
           i);
    }
    sh("ip link show " BRIDGE " >/dev/null 2>&1 && ip link del " BRIDGE " 2>/dev/null");
}

static int net_create(int n)
{
    if (sh("ip link add " BRIDGE " type bridge && ip addr add 10.77.0.1/24 dev " BRIDGE
           " && ip link set " BRIDGE " up") != 0)
        return -1;
    g_net_made = true;
    for (int i = 1; i <= n; i++) {
        if (sh("ip netns add " NS_FMT " && ip link add " VETH_FMT
               " type veth peer name eth0 netns " NS_FMT " && ip link set " VETH_FMT
               " master " BRIDGE " up"
               " && ip -n " NS_FMT " addr add 10.77.0.%d/24 dev eth0"
               " && ip -n " NS_FMT " link set eth0 up && ip -n " NS_FMT " link set lo up",
               i, i, i, i, i, 10 + i, i, i) != 0)
            return -1;
    }
    return 0;
}

/* ---- nodes ------------------------------------------------------------------------- */

static void write_config(int i, const char *token, const char *pin, const char *join_addr)
{
    struct node *n = &g_nodes[i];
    char tmp[PATH_MAX + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", n->cfg);
    /* It may hold a join token: owner-only from the start. */
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    if (f == NULL) {
        msg("%s: %s", tmp, strerror(errno));
        exit(2);
    }
    fprintf(f, "version: v3\nteleport:\n  nodename: n%d\n  data_dir: %s\n", i, n->dir);
    if (token) {
        fprintf(f, "  auth_server: %s\n  ca_pin: %s\n", join_addr, pin);
        fprintf(f, "  join_params:\n    token_name: %s\n    method: token\n", token);
    }
    fprintf(f, "  log:\n    output: stderr\n    severity: INFO\n");
    fprintf(f, "auth_service:\n  enabled: yes\n  cluster_name: jepsen.raftport\n");
    fprintf(f, "  listen_addr: %s\n  min_free_disk: 1MB\n", n->addr);
    fprintf(f, "  raft:\n    id: %" PRIu64 "\n    listen_addr: %s:%d\n", n->raft_id, n->ip,
            RAFT_PORT);
    fprintf(f, "    election_timeout: 1000ms\n    heartbeat_timeout: 100ms\n");
    fprintf(f, "    snapshot_threshold: 1024\n    snapshot_trailing: 2048\n");
    fclose(f);
    rename(tmp, n->cfg);
}

/* Starts node @i inside its namespace. Called from the main thread only: the
 * daemons have PR_SET_PDEATHSIG, which fires when the forking *thread* exits. */
static int node_spawn(int i)
{
    struct node *n = &g_nodes[i];
    char exe[PATH_MAX + 16], nspath[64];
    if (O.daemon)
        snprintf(exe, sizeof exe, "%s", O.daemon);
    else
        snprintf(exe, sizeof exe, "%s/raftport", g_exe_dir);
    snprintf(nspath, sizeof nspath, "/run/netns/" NS_FMT, i);
    /* With the clock nemesis every daemon runs under libfaketime, which re-reads the
     * node's offset file each second; the monotonic clock (Raft timers) stays true. */
    static char *envp[512];
    static char e_pre[64 + sizeof FAKETIME_LIB], e_file[PATH_MAX + 32];
    size_t ne = 0;
    extern char **environ;
    for (char **e = environ; *e && ne < 500; e++) {
        if (strncmp(*e, "LD_PRELOAD=", 11) != 0 && strncmp(*e, "FAKETIME", 8) != 0)
            envp[ne++] = *e;
    }
    if (g_nem & NEM_CLOCK) {
        char off[32];
        snprintf(off, sizeof off, "%+.3f\n", n->skew_s);
        rp_write_file(n->clock, off, strlen(off), 0644);
        snprintf(e_pre, sizeof e_pre, "LD_PRELOAD=%s", FAKETIME_LIB);
        snprintf(e_file, sizeof e_file, "FAKETIME_TIMESTAMP_FILE=%s", n->clock);
        envp[ne++] = e_pre;
        envp[ne++] = e_file;
        envp[ne++] = "FAKETIME_CACHE_DURATION=1";
        envp[ne++] = "DONT_FAKE_MONOTONIC=1";
    }
    envp[ne] = NULL;
    int fd = open(n->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nsfd = open(nspath, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || nsfd < 0) {
        msg("node n%d: %s: %s", i, fd < 0 ? n->log : nspath, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    dprintf(fd, "==== jepsen-run: starting n%d in " NS_FMT " ====\n", i, i);
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
        for (int s = 1; s < NSIG; s++) {
            if (s != SIGKILL && s != SIGSTOP)
                signal(s, SIG_DFL);
        }
        if (setns(nsfd, CLONE_NEWNET) != 0) {
            dprintf(fd, "jepsen-run: setns %s: %s\n", nspath, strerror(errno));
            _exit(126);
        }
        int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
        dup2(devnull, 0);
        dup2(fd, 1);
        dup2(fd, 2);
        close_range(3, ~0U, 0);
        char *argv[] = {"raftport", "start", "-c", n->cfg, NULL};
        execve(exe, argv, envp);
        dprintf(2, "jepsen-run: exec %s: %s\n", exe, strerror(errno));
        _exit(127);
    }
    close(fd);
    close(nsfd);
    if (pid < 0)
        return -1;
    n->pid = pid;
    n->paused = false;
    return 0;
}

static void node_kill9(int i)
{
    struct node *n = &g_nodes[i];
    if (n->pid <= 0)
        return;
    kill(n->pid, SIGKILL);
    kill(n->pid, SIGCONT);
    waitpid(n->pid, NULL, 0);
    n->pid = 0;
    n->paused = false;
}

static void kill_all_nodes(void)
{
    for (int i = 1; i <= MAX_SLOTS; i++)
        node_kill9(i);
}

/* Reaps nodes that died on their own (reported in the log of the run). */
static void reap_nodes(void)
{
    for (int i = 1; i <= g_nslots; i++) {
        struct node *n = &g_nodes[i];
        int st;
        if (n->pid > 0 && waitpid(n->pid, &st, WNOHANG) == n->pid) {
            msg("node n%d exited on its own (status 0x%x); see %s", i, st, n->log);
            n->pid = 0;
        }
    }
}

/* ---- API calls --------------------------------------------------------------------- */

/* The members of the cluster now (slot numbers), in slot order; returns how many. */
static int member_slots(int *p)
{
    int n = 0;
    for (int i = 1; i <= g_nslots; i++)
        if (g_nodes[i].member)
            p[n++] = i;
    return n;
}

/* A client of node @only_node alone, or (0) of every slot, starting at slot @home
 * (0 = the first): a client that calls auth_client_rewind before each op keeps
 * talking to its home node, as a Jepsen client is bound to one node, and fails
 * over to the others only within an op. */
static struct auth_client *client_home(int only_node, int home, int timeout_ms)
{
    const char *addrs[MAX_SLOTS];
    size_t na = 0;
    for (int k = 0; k < g_nslots; k++) {
        int i = 1 + (k + (home > 0 ? home - 1 : 0)) % g_nslots;
        if (only_node == 0 || only_node == i)
            addrs[na++] = g_nodes[i].addr;
    }
    struct auth_client *c = NULL;
    if (auth_client_new(&c, g_ctx, addrs, na) != 0)
        return NULL;
    auth_client_set_timeout(c, timeout_ms);
    return c;
}

static struct auth_client *client_for(int only_node, int timeout_ms)
{
    return client_home(only_node, 0, timeout_ms);
}

static int simple_call(struct auth_client *c, const char *method, msgpack_unpacked *resp)
{
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "m", method);
    int rv = auth_client_call(c, req.data, req.len, resp);
    rp_buf_free(&req);
    return rv;
}

/* The node that says it leads with the highest term, 0 if none answers so. */
static int find_leader(void)
{
    int best = 0;
    uint64_t best_term = 0;
    for (int i = 1; i <= g_nslots; i++) {
        if (g_nodes[i].pid <= 0 || g_nodes[i].paused || !g_nodes[i].member)
            continue;
        struct auth_client *c = client_for(i, 800);
        if (c == NULL)
            continue;
        msgpack_unpacked resp;
        uint64_t term = 0;
        if (simple_call(c, "member_status", &resp) == 0 &&
            rp_mp_str_eq(rp_mp_get(&resp.data, "state"), "leader") &&
            rp_mp_get_u64(&resp.data, "term", &term) == 0 && term >= best_term) {
            best = i;
            best_term = term;
        }
        msgpack_unpacked_destroy(&resp);
        auth_client_free(c);
    }
    return best;
}

/* True when the cluster status shows @want voters, a leader and nobody unreachable. */
static bool cluster_ready(int want)
{
    struct auth_client *c = client_for(0, 2000);
    if (c == NULL)
        return false;
    msgpack_unpacked resp;
    bool ok = false;
    uint64_t leader = 0;
    if (simple_call(c, "status", &resp) == 0 &&
        rp_mp_get_u64(&resp.data, "leader_id", &leader) == 0 && leader != 0) {
        const msgpack_object *m = rp_mp_get(&resp.data, "members");
        if (m && m->type == MSGPACK_OBJECT_ARRAY) {
            int voters = 0, bad = 0;
            for (uint32_t k = 0; k < m->via.array.size; k++) {
                const msgpack_object *e = &m->via.array.ptr[k];
                if (rp_mp_str_eq(rp_mp_get(e, "role"), "voter"))
                    voters++;
                if (rp_mp_str_eq(rp_mp_get(e, "state"), "unreachable"))
                    bad++;
            }
            ok = voters == want && bad == 0;
        }
    }
    msgpack_unpacked_destroy(&resp);
    auth_client_free(c);
    return ok;
}

static bool wait_ready(int want, int timeout_ms)
{
    uint64_t end = mono_ns() + (uint64_t)timeout_ms * 1000000ull;
    while (!g_stop) {
        if (cluster_ready(want))
            return true;
        if (mono_ns() >= end)
            return false;
        nap(200);
    }
    return false;
}

/* A fresh auth join token and the CA pin, from any member. */
static int new_join_token(char *token, size_t tn, char *pin, size_t pn)
{
    struct auth_client *c = client_for(0, 10000);
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "token_add");
    rp_mp_kv_str(&pk, "type", "auth");
    rp_mp_kv_u64(&pk, "ttl_ms", 600000);
    int rv = c ? auth_client_call(c, req.data, req.len, &resp) : RP_ENOMEM;
    const char *s;
    size_t sn;
    token[0] = pin[0] = '\0';
    if (rv == 0 && rp_mp_get_str(&resp.data, "token", &s, &sn) == 0)
        snprintf(token, tn, "%.*s", (int)sn, s);
    if (rv == 0 && rp_mp_get_str(&resp.data, "ca_pin", &s, &sn) == 0)
        snprintf(pin, pn, "%.*s", (int)sn, s);
    if (c)
        msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    auth_client_free(c);
    if (rv == 0 && (!token[0] || !pin[0]))
        rv = rp_err(RP_EPROTO, "token_add answer without token or ca_pin");
    return rv;
}

/* Starts slot @i as a new server with an empty data dir, joining through @via. */
static int join_fresh(int i, int via)
{
    char token[256], pin[256];
    int rv = new_join_token(token, sizeof token, pin, sizeof pin);
    if (rv != 0) {
        msg("token_add for n%d: %s (%s)", i, rp_strerror(rv), rp_errmsg());
        return -1;
    }
    sh("rm -rf '%s'", g_nodes[i].dir);
    write_config(i, token, pin, g_nodes[via].addr);
    return node_spawn(i);
}

/* Bootstraps n1, joins the others one at a time, waits for every voter. */
static int cluster_start(void)
{
    g_nodes[1].raft_id = 1;
    write_config(1, NULL, NULL, NULL);
    if (node_spawn(1) != 0)
        return -1;
    g_nodes[1].member = true;
    char keys[PATH_MAX + 32];
    snprintf(keys, sizeof keys, "%s/keys/admin.key", g_nodes[1].dir);
    uint64_t end = mono_ns() + 30000000000ull;
    while (!g_ctx) {
        if (g_stop || mono_ns() > end) {
            msg("n1 did not bootstrap (no %s); see %s", keys, g_nodes[1].log);
            return -1;
        }
        if (rp_file_exists(keys) && auth_load_admin_ctx(g_nodes[1].dir, &g_ctx) != 0)
            g_ctx = NULL;
        if (!g_ctx)
            nap(100);
    }
    if (!wait_ready(1, 30000)) {
        msg("n1 did not become leader; see %s", g_nodes[1].log);
        return -1;
    }
    for (int i = 2; i <= O.nodes; i++) {
        g_nodes[i].raft_id = (uint64_t)i;
        if (join_fresh(i, 1) != 0)
            return -1;
        g_nodes[i].member = true;
        if (!wait_ready(i, 60000)) {
            msg("n%d did not join as a voter in 60 s; see %s", i, g_nodes[i].log);
            return -1;
        }
        msg("n%d is a voter", i);
    }
    return 0;
}

/* ---- nemeses ----------------------------------------------------------------------- */

static bool g_grudge[MAX_SLOTS + 1][MAX_SLOTS + 1]; /* [a][b]: a drops packets from b */

static void fw_heal(void)
{
    for (int a = 1; a <= g_nslots; a++)
        sh("ip netns exec " NS_FMT " nft delete table inet rpj 2>/dev/null", a);
}

static int fw_apply(void)
{
    fw_heal();
    int rv = 0;
    for (int a = 1; a <= g_nslots; a++) {
        char set[256] = "";
        size_t len = 0;
        for (int b = 1; b <= g_nslots; b++) {
            if (g_grudge[a][b])
                len += (size_t)snprintf(set + len, sizeof set - len, "%s%s", len ? ", " : "",
                                        g_nodes[b].ip);
        }
        if (len == 0)
            continue;
        if (sh("ip netns exec " NS_FMT " nft 'add table inet rpj; add chain inet rpj input { type "
               "filter hook input priority 0; policy accept; }; add rule inet rpj input ip saddr "
               "{ %s } drop'",
               a, set) != 0) {
            msg("nft in " NS_FMT " failed", a);
            rv = -1;
        }
    }
    return rv;
}

/* Cuts every link between the nodes of @a and those of @b (both ways). */
static void cut(const int *a, int na, const int *b, int nb)
{
    for (int x = 0; x < na; x++)
        for (int y = 0; y < nb; y++)
            g_grudge[a[x]][b[y]] = g_grudge[b[y]][a[x]] = true;
}

/* The members in random order (there are always O.nodes of them). */
static void shuffled(int *p)
{
    int n = member_slots(p);
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rnd(&g_nem_rng) % (uint64_t)(i + 1));
        int t = p[i];
        p[i] = p[j];
        p[j] = t;
    }
}

/* The JSON of the grudge: {"kind":K,"grudge":{"n1":["n2","n3"],...}}. */
static void grudge_to_json(const char *kind, struct rp_buf *out)
{
    rp_buf_printf(out, "{\"kind\":\"%s\",\"grudge\":{", kind);
    bool first = true;
    for (int a = 1; a <= g_nslots; a++) {
        bool any = false;
        for (int b = 1; b <= g_nslots; b++) {
            if (!g_grudge[a][b])
                continue;
            if (!any)
                rp_buf_printf(out, "%s\"n%d\":[", first ? "" : ",", a);
            rp_buf_printf(out, "%s\"n%d\"", any ? "," : "", b);
            any = true;
            first = false;
        }
        if (any)
            rp_buf_append_str(out, "]");
    }
    rp_buf_append_str(out, "}}");
}

static void start_partition(void)
{
    static const char *kinds5[] = {"one", "halves", "leader", "ring", "bridge"};
    static const char *kinds3[] = {"one", "halves", "leader", "bridge"};
    const char *kind = O.nodes >= 5 ? kinds5[rnd(&g_nem_rng) % 5] : kinds3[rnd(&g_nem_rng) % 4];
    memset(g_grudge, 0, sizeof g_grudge);
    int p[MAX_SLOTS];
    shuffled(p);
    if (strcmp(kind, "leader") == 0) {
        int l = find_leader();
        if (l == 0)
            kind = "one"; /* nobody leads right now: isolate a random node */
        else
            for (int i = 0; i < O.nodes; i++)
                if (p[i] == l) {
                    p[i] = p[0];
                    p[0] = l;
                }
    }
    if (strcmp(kind, "one") == 0 || strcmp(kind, "leader") == 0) {
        cut(p, 1, p + 1, O.nodes - 1);
    } else if (strcmp(kind, "halves") == 0) {
        int h = O.nodes / 2;
        cut(p, h, p + h, O.nodes - h);
    } else if (strcmp(kind, "bridge") == 0) {
        int h = O.nodes / 2; /* p[0..h-1] | p[h] bridge | p[h+1..] */
        cut(p, h, p + h + 1, O.nodes - h - 1);
    } else { /* ring, 5 nodes: each node sees itself and its two ring neighbours */
        for (int i = 0; i < O.nodes; i++)
            for (int d = 2; d <= O.nodes - 2; d++) {
                int j = (i + d) % O.nodes;
                g_grudge[p[i]][p[j]] = g_grudge[p[j]][p[i]] = true;
            }
    }
    fw_apply();
    struct rp_buf v;
    rp_buf_init(&v);
    grudge_to_json(kind, &v);
    rp_buf_append(&v, "", 1);
    nemesis_op("start-partition", (const char *)v.data);
    rp_buf_free(&v);
}

static void stop_partition(void)
{
    fw_heal();
    memset(g_grudge, 0, sizeof g_grudge);
    nemesis_op("stop-partition", "\"healed\"");
}

static int g_fault_node; /* the node killed or paused by the current fault */

static int pick_target(const char **kind)
{
    if (rnd(&g_nem_rng) % 2 == 0) {
        int l = find_leader();
        if (l) {
            *kind = "leader";
            return l;
        }
    }
    *kind = "random";
    int p[MAX_SLOTS];
    int n = member_slots(p);
    return p[rnd(&g_nem_rng) % (uint64_t)n];
}

static void start_kill(void)
{
    const char *kind;
    int i = pick_target(&kind);
    node_kill9(i);
    g_fault_node = i;
    char v[96];
    snprintf(v, sizeof v, "{\"kind\":\"%s\",\"nodes\":[\"n%d\"]}", kind, i);
    nemesis_op("kill", v);
}

static void stop_kill(void)
{
    int i = g_fault_node;
    if (i && g_nodes[i].pid <= 0)
        node_spawn(i);
    char v[64];
    snprintf(v, sizeof v, "{\"nodes\":[\"n%d\"]}", i);
    nemesis_op("start", v);
}

static void start_pause(void)
{
    const char *kind;
    int i = pick_target(&kind);
    if (g_nodes[i].pid > 0) {
        kill(g_nodes[i].pid, SIGSTOP);
        g_nodes[i].paused = true;
    }
    g_fault_node = i;
    char v[96];
    snprintf(v, sizeof v, "{\"kind\":\"%s\",\"nodes\":[\"n%d\"]}", kind, i);
    nemesis_op("pause", v);
}

static void stop_pause(void)
{
    int i = g_fault_node;
    if (i && g_nodes[i].pid > 0) {
        kill(g_nodes[i].pid, SIGCONT);
        g_nodes[i].paused = false;
    }
    char v[64];
    snprintf(v, sizeof v, "{\"nodes\":[\"n%d\"]}", i);
    nemesis_op("resume", v);
}

/* ---- membership: a fresh server joins in the spare slot, then a voter is removed ---- */

static int member_rm(uint64_t raft_id)
{
    struct auth_client *c = client_for(0, 15000);
    if (c == NULL)
        return RP_ENOMEM;
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "member_rm");
    rp_mp_kv_u64(&pk, "id", raft_id);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    auth_client_free(c);
    return rv;
}

/* Removes @raft_id, retrying an unknown outcome; 0 once it is gone. */
static int member_rm_sure(uint64_t raft_id)
{
    int rv = -1;
    for (int tries = 0; tries < 5 && !g_stop; tries++) {
        rv = member_rm(raft_id);
        if (rv == 0 || rv == RP_ENOTFOUND)
            return 0;
        msg("member_rm %" PRIu64 ": %s (%s); retrying", raft_id, rp_strerror(rv), rp_errmsg());
        nap(1000);
    }
    return rv;
}

static void start_membership(void)
{
    int spare = 0;
    for (int i = 1; i <= g_nslots && !spare; i++)
        if (!g_nodes[i].member)
            spare = i;
    const char *kind;
    int victim = pick_target(&kind);
    int via = find_leader();
    if (via == 0 || via == victim)
        for (int i = 1; i <= g_nslots; i++)
            if (g_nodes[i].member && g_nodes[i].pid > 0 && i != victim)
                via = i;
    struct node *f = &g_nodes[spare], *v = &g_nodes[victim];
    char val[256];
    f->raft_id = g_next_raft_id++;
    f->skew_s = 0;
    snprintf(val, sizeof val,
             "{\"kind\":\"%s\",\"add\":\"n%d\",\"add_raft_id\":%" PRIu64
             ",\"remove\":\"n%d\",\"remove_raft_id\":%" PRIu64 "}",
             kind, spare, f->raft_id, victim, v->raft_id);
    nemesis_op("start-membership", val);
    /* Join first, then remove: never fewer than O.nodes >= 3 voters. */
    bool joined = join_fresh(spare, via) == 0;
    if (joined) {
        f->member = true;
        joined = wait_ready(O.nodes + 1, 30000);
    }
    if (!joined) {
        msg("membership: n%d (raft id %" PRIu64 ") did not become a voter; removing it again",
            spare, f->raft_id);
        node_kill9(spare);
        if (f->member)
            member_rm_sure(f->raft_id);
        f->member = false;
        nemesis_op("stop-membership", "{\"result\":\"join failed, the new server was removed\"}");
        return;
    }
    int rv = member_rm_sure(v->raft_id);
    if (rv != 0) {
        msg("membership: removing n%d failed: %s (%s)", victim, rp_strerror(rv), rp_errmsg());
        nemesis_op("stop-membership", "{\"result\":\"remove failed\"}");
        return;
    }
    node_kill9(victim);
    v->member = false;
    sh("rm -rf '%s'", v->dir);
    nemesis_op("stop-membership", "{\"result\":\"replaced\"}");
}

/* ---- clock: per-node offsets through libfaketime -------------------------------------- */

/* Offsets stay within +-25 s: TLS certificates are backdated 60 s, and two nodes more
 * than that apart would refuse each other's fresh certificates, which is TLS working. */
static void set_skew(int i, double skew_s)
{
    struct node *n = &g_nodes[i];
    char off[32];
    n->skew_s = skew_s;
    snprintf(off, sizeof off, "%+.3f\n", skew_s);
    rp_write_file(n->clock, off, strlen(off), 0644);
}

static void start_clock(void)
{
    static const double mags[] = {0.05, 0.5, 2.0, 10.0, 25.0};
    int p[MAX_SLOTS];
    int n = member_slots(p);
    bool all = rnd(&g_nem_rng) % 2 == 0; /* every node, or one */
    struct rp_buf v;
    rp_buf_init(&v);
    rp_buf_printf(&v, "{\"kind\":\"%s\",\"offsets_s\":{", all ? "scatter" : "bump");
    int first = (int)(rnd(&g_nem_rng) % (uint64_t)n);
    bool sep = false;
    for (int k = 0; k < n; k++) {
        if (!all && k != first)
            continue;
        double m = mags[rnd(&g_nem_rng) % (sizeof mags / sizeof mags[0])];
        double frac = (double)(rnd(&g_nem_rng) % 1000) / 1000.0;
        double off = (rnd(&g_nem_rng) % 2 ? 1 : -1) * m * (0.5 + frac / 2);
        set_skew(p[k], off);
        rp_buf_printf(&v, "%s\"n%d\":%.3f", sep ? "," : "", p[k], off);
        sep = true;
    }
    rp_buf_append_str(&v, "}}");
    rp_buf_append(&v, "", 1);
    nemesis_op("start-clock", (const char *)v.data);
    rp_buf_free(&v);
}

static void reset_clocks(void)
{
    if (!(g_nem & NEM_CLOCK))
        return;
    for (int i = 1; i <= g_nslots; i++)
        set_skew(i, 0);
}

static void stop_clock(void)
{
    reset_clocks();
    nemesis_op("stop-clock", "\"every offset back to 0\"");
}

/* ---- truncate: kill one node, cut its newest open segment, restart it later ---------- */

static void start_truncate(void)
{
    const char *kind;
    int i = pick_target(&kind);
    node_kill9(i);
    g_fault_node = i;
    /* The newest segment with data: the open segment whose last complete batch ends
     * furthest in (libraft fills open-N in order and keeps at most a few). */
    char dir[PATH_MAX], best[PATH_MAX] = "", val[PATH_MAX + 256];
    snprintf(dir, sizeof dir, "%.*s/raft", (int)(sizeof dir - 6), g_nodes[i].dir);
    unsigned long best_n = 0;
    uint64_t best_end = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        unsigned long num;
        if (sscanf(e->d_name, "open-%lu", &num) != 1)
            continue;
        char path[PATH_MAX + 300];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        struct stat st;
        struct rp_segment_scan sc;
        if (fd >= 0 && fstat(fd, &st) == 0 &&
            rp_raft_segment_scan(fd, (uint64_t)st.st_size, &sc) == 0 && sc.batches > 0 &&
            num > best_n) {
            best_n = num;
            best_end = sc.complete_end;
            snprintf(best, sizeof best, "%.*s", (int)sizeof best - 1, path);
        }
        if (fd >= 0)
            close(fd);
    }
    if (d)
        closedir(d);
    if (best[0] == '\0') {
        snprintf(val, sizeof val, "{\"kind\":\"%s\",\"nodes\":[\"n%d\"],\"truncated\":null}", kind,
                 i);
    } else {
        /* Somewhere in the last 4 KiB of data (a batch is usually smaller). */
        uint64_t span = best_end > 8 + 4096 ? 4096 : best_end - 8;
        uint64_t to = best_end - 1 - rnd(&g_nem_rng) % (span ? span : 1);
        if (truncate(best, (off_t)to) != 0)
            msg("truncate %s: %s", best, strerror(errno));
        snprintf(val, sizeof val,
                 "{\"kind\":\"%s\",\"nodes\":[\"n%d\"],\"file\":\"%s\",\"from\":%" PRIu64
                 ",\"to\":%" PRIu64 "}",
                 kind, i, strrchr(best, '/') + 1, best_end, to);
    }
    nemesis_op("start-truncate", val);
}

static void stop_truncate(void)
{
    int i = g_fault_node;
    if (i && g_nodes[i].pid <= 0 && g_nodes[i].member)
        node_spawn(i);
    char v[64];
    snprintf(v, sizeof v, "{\"nodes\":[\"n%d\"]}", i);
    nemesis_op("stop-truncate", v);
}

/* Heals everything: partitions, clocks, paused and dead nodes. */
static void heal_all(void)
{
    fw_heal();
    memset(g_grudge, 0, sizeof g_grudge);
    reset_clocks();
    for (int i = 1; i <= g_nslots; i++) {
        if (g_nodes[i].pid > 0 && g_nodes[i].paused) {
            kill(g_nodes[i].pid, SIGCONT);
            g_nodes[i].paused = false;
        }
    }
    reap_nodes();
    for (int i = 1; i <= g_nslots; i++)
        if (g_nodes[i].member && g_nodes[i].pid <= 0 && !g_stop)
            node_spawn(i);
}

/* The main thread's schedule: quiet start, then one fault of a kind picked among
 * --nemesis every few seconds until the workload's time is nearly up, then a final
 * heal (by the caller). */
static void run_nemesis(uint64_t end_ns)
{
    static void (*const start[NEM_KINDS])(void) = {start_partition,  start_kill,  start_pause,
                                                   start_membership, start_clock, start_truncate};
    static void (*const stop[NEM_KINDS])(void) = {stop_partition, stop_kill,  stop_pause,
                                                  NULL,           stop_clock, stop_truncate};
    int kinds[NEM_KINDS], nk = 0;
    for (int k = 0; k < NEM_KINDS; k++)
        if (g_nem & (1u << k))
            kinds[nk++] = k;
    if (nk == 0 || !nap(QUIET_MS))
        return;
    while (!g_stop && mono_ns() + (uint64_t)(FAULT_MS + 1000) * 1000000ull < end_ns) {
        int k = kinds[rnd(&g_nem_rng) % (uint64_t)nk];
        start[k]();
        nap(FAULT_MS);
        if (stop[k])
            stop[k]();
        reap_nodes();
        nap(HEAL_MS);
    }
}

/* ---- the register workload ---------------------------------------------------------- */

struct key_group {
    int key;
    int ops;
    bool known;
    int64_t last; /* the last value an ok op saw or wrote, a guess for cas */
};

static pthread_mutex_t g_kmu = PTHREAD_MUTEX_INITIALIZER;
static struct key_group g_groups[MAX_CLIENTS];
static int g_next_key;
static atomic_llong g_next_value;

struct client_stats {
    long ok, fail, info;
};
static struct client_stats g_cstats[MAX_CLIENTS];

/* Counts a completed op. After "info" the op may still take effect later, so the
 * thread goes on as a new process: the checkers then never see one process with two
 * ops open at once. */
static void count_outcome(struct client_stats *st, const char *type, int64_t *process)
{
    if (strcmp(type, "ok") == 0) {
        st->ok++;
    } else if (strcmp(type, "fail") == 0) {
        st->fail++;
    } else {
        st->info++;
        *process += O.concurrency;
    }
}

static void pack_res_kind(msgpack_packer *pk, const char *kind, const char *name, int64_t value)
{
    rp_mp_pack_str(pk, "res");
    msgpack_pack_map(pk, 4);
    rp_mp_kv_str(pk, "kind", kind);
    rp_mp_kv_str(pk, "version", "v1");
    rp_mp_pack_str(pk, "metadata");
    msgpack_pack_map(pk, 1);
    rp_mp_kv_str(pk, "name", name);
    rp_mp_pack_str(pk, "spec");
    msgpack_pack_map(pk, 1);
    rp_mp_kv_i64(pk, "value", value);
}

/* A linearizable get of kind/name. 0 with *found and *rev, and *value (spec.value) if
 * @value is not NULL; else the error. */
static int res_get(struct auth_client *c, const char *kind, const char *name, bool *found,
                   uint64_t *rev, int64_t *value)
{
    struct rp_buf req;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    auth_req_get(&req, kind, name, false, false);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    *found = false;
    if (rv == RP_ENOTFOUND) {
        rv = 0;
    } else if (rv == 0) {
        const msgpack_object *res = rp_mp_get(&resp.data, "res");
        const msgpack_object *v = rp_mp_get(rp_mp_get(res, "spec"), "value");
        bool int_value = v && (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ||
                               v->type == MSGPACK_OBJECT_NEGATIVE_INTEGER);
        uint64_t r = 0;
        if ((value == NULL || int_value) &&
            rp_mp_get_u64(rp_mp_get(res, "metadata"), "revision", &r) == 0) {
            *found = true;
            *rev = r;
            if (value)
                *value =
                    v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? (int64_t)v->via.u64 : v->via.i64;
        } else {
            rv = rp_err(RP_EPROTO, "get answer without res.metadata.revision%s",
                        value ? " or an integer res.spec.value" : "");
        }
    }
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

/* put (rev 0 unused) or cas on revision @rev. */
static int reg_write(struct auth_client *c, const char *name, int64_t value, bool cas, uint64_t rev)
{
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    char rid[33];
    auth_new_rid(rid);
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, cas ? 4 : 3);
    rp_mp_kv_str(&pk, "m", cas ? "cas" : "put");
    pack_res_kind(&pk, "jreg", name, value);
    if (cas)
        rp_mp_kv_u64(&pk, "rev", rev);
    rp_mp_kv_str(&pk, "rid", rid);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

/* Errors after which a write definitely did not happen. The state machine's own
 * answers (conflict, not_found, exists) are final even after the client retried
 * (a retry with the same rid gets the first result). not_leader, unavailable and
 * busy are NOT here: auth_client_call retries on them, and an earlier attempt of
 * the same call may have been sent before its connection broke. */
static bool definite_failure(int rv)
{
    return rv == RP_ECONFLICT || rv == RP_ENOTFOUND || rv == RP_EEXISTS || rv == RP_EDENIED ||
           rv == RP_EINVAL || rv == RP_ETOOBIG;
}

static void errstr(int rv, char *out, size_t n)
{
    snprintf(out, n, "%s: %s", rp_strerror(rv), rp_errmsg());
}

/* The history type of a write that returned @rv: ok, fail (it definitely did not
 * happen) or info (it may have); the error text into @err for the last two. */
static const char *write_outcome(int rv, char *err, size_t n)
{
    if (rv == 0)
        return "ok";
    errstr(rv, err, n);
    return definite_failure(rv) ? "fail" : "info";
}

/* Sleeps an exponential gap of mean @mean_gap_s (at most 2 s), until the workload stops. */
static void client_gap(uint64_t *rng, double mean_gap_s)
{
    double u = (double)(rnd(rng) >> 11) / 9007199254740992.0;
    double gap = -jepsen_ln(1.0 - u) * mean_gap_s;
    if (gap > 2.0)
        gap = 2.0;
    uint64_t end = mono_ns() + (uint64_t)(gap * 1e9);
    while (!atomic_load(&g_workload_stop) && !g_stop && mono_ns() < end) {
        struct timespec ts = {0, 10000000};
        nanosleep(&ts, NULL);
    }
}

static void *client_main(void *arg)
{
    int t = (int)(intptr_t)arg;
    int64_t process = t;
    uint64_t rng = jepsen_mix64(O.seed * 1000003u + (uint64_t)t + 1) | 1;
    struct auth_client *c = client_home(0, 1 + t % O.nodes, CALL_TIMEOUT_MS);
    struct client_stats *st = &g_cstats[t];
    int group = t / CLIENTS_PER_KEY;
    double mean_gap_s = (double)O.concurrency / (double)(O.rate > 0 ? O.rate : 1);
    while (c && !atomic_load(&g_workload_stop) && !g_stop) {
        pthread_mutex_lock(&g_kmu);
        struct key_group *g = &g_groups[group];
        if (g->ops >= OPS_PER_KEY) {
            g->key = g_next_key++;
            g->ops = 0;
            g->known = false;
        }
        g->ops++;
        int key = g->key;
        bool known = g->known;
        int64_t guess = g->last;
        pthread_mutex_unlock(&g_kmu);
        auth_client_rewind(c); /* each op starts at the client's home node */
        char name[32], key_json[40], val[64], err[600];
        snprintf(name, sizeof name, "k%d", key);
        snprintf(key_json, sizeof key_json, "\"k%d\"", key);
        unsigned r = (unsigned)(rnd(&rng) % 10);
        const char *f = r < 4 ? "read" : (r < 7 || !known) ? "write" : "cas";
        const char *type = "ok";
        bool learned = false;
        int64_t learned_v = 0;
        err[0] = '\0';
        if (strcmp(f, "read") == 0) {
            hist_write("invoke", process, f, key_json, "null", NULL);
            bool found;
            int64_t v = 0;
            uint64_t rev;
            int rv = res_get(c, "jreg", name, &found, &rev, &v);
            if (rv == 0) {
                if (found)
                    snprintf(val, sizeof val, "%" PRId64, v);
                else
                    snprintf(val, sizeof val, "null");
                learned = found;
                learned_v = v;
            } else {
                type = "fail"; /* a read changes nothing: fail whatever the error */
                snprintf(val, sizeof val, "null");
                errstr(rv, err, sizeof err);
            }
        } else if (strcmp(f, "write") == 0) {
            int64_t nv = (int64_t)atomic_fetch_add(&g_next_value, 1) + 1;
            snprintf(val, sizeof val, "%" PRId64, nv);
            hist_write("invoke", process, f, key_json, val, NULL);
            int rv = reg_write(c, name, nv, false, 0);
            if (rv == 0) {
                learned = true;
                learned_v = nv;
            } else {
                type = write_outcome(rv, err, sizeof err);
            }
        } else { /* cas [guess, nv]: get, compare, cas on the revision read */
            int64_t nv = (int64_t)atomic_fetch_add(&g_next_value, 1) + 1;
            snprintf(val, sizeof val, "[%" PRId64 ",%" PRId64 "]", guess, nv);
            hist_write("invoke", process, f, key_json, val, NULL);
            bool found;
            int64_t cur = 0;
            uint64_t rev = 0;
            int rv = res_get(c, "jreg", name, &found, &rev, &cur);
            if (rv != 0) {
                type = "fail"; /* nothing was written */
                errstr(rv, err, sizeof err);
            } else if (!found || cur != guess) {
                type = "fail";
                if (found)
                    snprintf(err, sizeof err, "mismatch: value is %" PRId64, cur);
                else
                    snprintf(err, sizeof err, "mismatch: register is empty");
                learned = found;
                learned_v = cur;
            } else {
                rv = reg_write(c, name, nv, true, rev);
                if (rv == 0) {
                    learned = true;
                    learned_v = nv;
                } else {
                    type = write_outcome(rv, err, sizeof err);
                }
            }
        }
        hist_write(type, process, f, key_json, val, err[0] ? err : NULL);
        count_outcome(st, type, &process);
        if (learned) {
            pthread_mutex_lock(&g_kmu);
            if (g->key == key) {
                g->known = true;
                g->last = learned_v;
            }
            pthread_mutex_unlock(&g_kmu);
        }
        client_gap(&rng, mean_gap_s);
    }
    auth_client_free(c);
    return NULL;
}

/* ---- the set and unique workloads ---------------------------------------------------- */

#define UNIQUE_MAX_ITEMS 2000
#define FINAL_READ_TRIES 5
#define FINAL_PROCESS 1000000 /* process ids of the final reads and the setup creates */
#define LIST_LIMIT 100000     /* the server caps a list at this many items */

static atomic_llong g_next_elem;
static int g_uniq_items; /* items u1..uN created before the clients start */

/* "create" of @kind/@name with spec {value: @value} and a fresh request id. */
static int res_create(struct auth_client *c, const char *kind, const char *name, int64_t value)
{
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    char rid[33];
    auth_new_rid(rid);
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "create");
    pack_res_kind(&pk, kind, name, value);
    rp_mp_kv_str(&pk, "rid", rid);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

/* A linearizable get of @kind/@name: 0 with *found and *rev (the resource's revision). */

/* Conditional delete of @kind/@name at resource revision @rev, fresh request id. */
static int res_cdelete(struct auth_client *c, const char *kind, const char *name, uint64_t rev)
{
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    char rid[33];
    auth_new_rid(rid);
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 5);
    rp_mp_kv_str(&pk, "m", "cdelete");
    rp_mp_kv_str(&pk, "kind", kind);
    rp_mp_kv_str(&pk, "name", name);
    rp_mp_kv_u64(&pk, "rev", rev);
    rp_mp_kv_str(&pk, "rid", rid);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

/* Linearizable list of @kind names starting with @prefix; appends each name that starts
 * with @prefix followed by digits to @out as JSON (",N" for the set when @as_int, else
 * ",\"NAME\""), *@n counting them. When the answer is too big or hits the server's cap,
 * lists prefix0..prefix9 instead (names are prefix + decimal digits). */
static int list_names(struct auth_client *c, const char *kind, const char *prefix, bool as_int,
                      struct rp_buf *out, size_t *n)
{
    struct rp_buf req;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    auth_req_list(&req, kind, prefix, LIST_LIMIT, false, false);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    rp_buf_free(&req);
    const msgpack_object *items = rv == 0 ? rp_mp_get(&resp.data, "items") : NULL;
    if (rv == 0 && (items == NULL || items->type != MSGPACK_OBJECT_ARRAY))
        rv = rp_err(RP_EPROTO, "list answer without items");
    size_t pl = strlen(prefix);
    if (rv == RP_ETOOBIG || (rv == 0 && items->via.array.size >= LIST_LIMIT)) {
        msgpack_unpacked_destroy(&resp);
        if (pl + 2 > 200)
            return rp_err(RP_ETOOBIG, "list of %s/%s*: too big even split", kind, prefix);
        for (int d = 0; d <= 9; d++) {
            char sub[208];
            snprintf(sub, sizeof sub, "%s%d", prefix, d);
            rv = list_names(c, kind, sub, as_int, out, n);
            if (rv != 0)
                return rv;
        }
        return 0;
    }
    for (uint32_t k = 0; rv == 0 && k < items->via.array.size; k++) {
        const char *s;
        size_t sn;
        if (rp_mp_get_str(rp_mp_get(&items->via.array.ptr[k], "metadata"), "name", &s, &sn) != 0) {
            rv = rp_err(RP_EPROTO, "list item without metadata.name");
            break;
        }
        /* The workload's names are a one-letter prefix and digits; skip anything else. */
        bool digits = sn > 1 && sn < 20;
        for (size_t j = 1; digits && j < sn; j++)
            digits = s[j] >= '0' && s[j] <= '9';
        if (!digits || sn < pl || memcmp(s, prefix, pl) != 0)
            continue;
        if (as_int)
            rp_buf_printf(out, "%s%.*s", *n ? "," : "", (int)(sn - 1), s + 1);
        else
            rp_buf_printf(out, "%s\"%.*s\"", *n ? "," : "", (int)sn, s);
        (*n)++;
    }
    msgpack_unpacked_destroy(&resp);
    return rv;
}

/* The final read(s) after the heal: f "read", ok value = the array of elements (set,
 * integers) or items (unique, "uN" strings) present; an error is a fail (a read
 * changes nothing) and is retried as a new op, up to FINAL_READ_TRIES times. */
static void final_read(const char *kind, const char *prefix, bool as_int)
{
    struct auth_client *c = client_for(0, 10000);
    if (c == NULL) {
        msg("final read: no client");
        return;
    }
    for (int tries = 0; tries < FINAL_READ_TRIES && !g_stop; tries++) {
        int64_t process = FINAL_PROCESS + tries;
        struct rp_buf val;
        rp_buf_init(&val);
        size_t n = 0;
        hist_write("invoke", process, "read", NULL, "null", NULL);
        rp_buf_append_str(&val, "[");
        int rv = list_names(c, kind, prefix, as_int, &val, &n);
        rp_buf_append_str(&val, "]");
        rp_buf_append(&val, "", 1);
        if (rv == 0) {
            hist_write("ok", process, "read", NULL, (const char *)val.data, NULL);
            msg("final read of %s: %zu present", kind, n);
            rp_buf_free(&val);
            break;
        }
        char err[600];
        errstr(rv, err, sizeof err);
        hist_write("fail", process, "read", NULL, "null", err);
        msg("final read of %s failed: %s", kind, err);
        rp_buf_free(&val);
        nap(1000);
    }
    auth_client_free(c);
}

/* set: each op adds a fresh element N (resource jset/eN, created with "create"). */
static void *set_client_main(void *arg)
{
    int t = (int)(intptr_t)arg;
    int64_t process = t;
    uint64_t rng = jepsen_mix64(O.seed * 1000003u + (uint64_t)t + 1) | 1;
    struct auth_client *c = client_for(0, CALL_TIMEOUT_MS);
    struct client_stats *st = &g_cstats[t];
    double mean_gap_s = (double)O.concurrency / (double)(O.rate > 0 ? O.rate : 1);
    while (c && !atomic_load(&g_workload_stop) && !g_stop) {
        int64_t e = (int64_t)atomic_fetch_add(&g_next_elem, 1) + 1;
        char name[32], val[32], err[600] = "";
        snprintf(name, sizeof name, "e%" PRId64, e);
        snprintf(val, sizeof val, "%" PRId64, e);
        hist_write("invoke", process, "add", NULL, val, NULL);
        int rv = res_create(c, "jset", name, e);
        const char *type = write_outcome(rv, err, sizeof err);
        hist_write(type, process, "add", NULL, val, err[0] ? err : NULL);
        count_outcome(st, type, &process);
        client_gap(&rng, mean_gap_s);
    }
    auth_client_free(c);
    return NULL;
}

/* unique, before the clients: creates items u1..uN, each recorded as f "create". */
static int unique_setup(void)
{
    long n = (long)O.rate * O.time_s / 4;
    if (n < 100)
        n = 100;
    if (n > UNIQUE_MAX_ITEMS)
        n = UNIQUE_MAX_ITEMS;
    struct auth_client *c = client_for(0, 5000);
    if (c == NULL)
        return -1;
    int64_t process = FINAL_PROCESS + 100;
    int ok = 0;
    for (long i = 1; i <= n && !g_stop; i++) {
        char name[32], key[40], err[600] = "";
        snprintf(name, sizeof name, "u%ld", i);
        snprintf(key, sizeof key, "\"u%ld\"", i);
        hist_write("invoke", process, "create", key, NULL, NULL);
        int rv = res_create(c, "juniq", name, i);
        const char *type = write_outcome(rv, err, sizeof err);
        hist_write(type, process, "create", key, NULL, err[0] ? err : NULL);
        if (rv == 0)
            ok++;
        else if (type[0] == 'i')
            process++;
    }
    auth_client_free(c);
    g_uniq_items = (int)n;
    msg("unique: created %d of %ld items", ok, n);
    return ok > 0 ? 0 : -1;
}

/* unique: consume a random item: get its revision, then cdelete on that revision. */
static void *unique_client_main(void *arg)
{
    int t = (int)(intptr_t)arg;
    int64_t process = t;
    uint64_t rng = jepsen_mix64(O.seed * 1000003u + (uint64_t)t + 1) | 1;
    struct auth_client *c = client_for(0, CALL_TIMEOUT_MS);
    struct client_stats *st = &g_cstats[t];
    double mean_gap_s = (double)O.concurrency / (double)(O.rate > 0 ? O.rate : 1);
    while (c && g_uniq_items > 0 && !atomic_load(&g_workload_stop) && !g_stop) {
        /* Clients race: all pick among the same few items, a window that moves over
         * the items during the run, so gets and cdeletes of one item overlap. */
        double frac = (double)(mono_ns() - g_t0_ns) / ((double)O.time_s * 1e9);
        long i = 1 + (long)(frac * g_uniq_items) + (long)(rnd(&rng) % 4);
        if (rnd(&rng) % 5 == 0 || i > g_uniq_items)
            i = 1 + (long)(rnd(&rng) % (uint64_t)g_uniq_items);
        char name[32], key[40], err[600] = "";
        snprintf(name, sizeof name, "u%ld", i);
        snprintf(key, sizeof key, "\"u%ld\"", i);
        hist_write("invoke", process, "consume", key, NULL, NULL);
        bool found;
        uint64_t rev = 0;
        const char *type = "ok";
        int rv = res_get(c, "juniq", name, &found, &rev, NULL);
        if (rv != 0) {
            type = "fail"; /* nothing was written */
            errstr(rv, err, sizeof err);
        } else if (!found) {
            type = "fail";
            snprintf(err, sizeof err, "not_found: already consumed (get)");
        } else {
            rv = res_cdelete(c, "juniq", name, rev);
            if (rv != 0) {
                type = write_outcome(rv, err, sizeof err);
            }
        }
        hist_write(type, process, "consume", key, NULL, err[0] ? err : NULL);
        count_outcome(st, type, &process);
        client_gap(&rng, mean_gap_s);
    }
    auth_client_free(c);
    return NULL;
}

/* ---- the watch workload ------------------------------------------------------------ */

#define WATCH_KEYS 40
#define WATCH_BATCH_MS 300
#define WATCH_KIND "jwatch"

static int g_n_watchers;                          /* client threads 0..g_n_watchers-1 watch */
static atomic_bool g_watch_stop;                  /* set after the final read */
static _Atomic int64_t g_watch_seen[MAX_CLIENTS]; /* newest revision each watcher has, -1: none */

/* put (with @value) or delete of jwatch/@name; *rev gets the revision on success. */
static int watch_write(struct auth_client *c, bool del, const char *name, int64_t value,
                       uint64_t *rev)
{
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    char rid[33];
    auth_new_rid(rid);
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, del ? 4 : 3);
    rp_mp_kv_str(&pk, "m", del ? "delete" : "put");
    if (del) {
        rp_mp_kv_str(&pk, "kind", WATCH_KIND);
        rp_mp_kv_str(&pk, "name", name);
    } else {
        pack_res_kind(&pk, WATCH_KIND, name, value);
    }
    rp_mp_kv_str(&pk, "rid", rid);
    int rv = auth_client_call(c, req.data, req.len, &resp);
    *rev = 0;
    if (rv == 0)
        rp_mp_get_u64(&resp.data, "rev", rev);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    return rv;
}

/* Writers: put or delete a random one of WATCH_KEYS resources (ignored by the checker,
 * kept in the history to read alongside the events). */
static void *watch_writer_main(void *arg)
{
    int t = (int)(intptr_t)arg;
    int64_t process = t;
    uint64_t rng = jepsen_mix64(O.seed * 1000003u + (uint64_t)t + 1) | 1;
    struct auth_client *c = client_home(0, 1 + t % O.nodes, CALL_TIMEOUT_MS);
    struct client_stats *st = &g_cstats[t];
    int writers = O.concurrency - g_n_watchers;
    double mean_gap_s = (double)writers / (double)(O.rate > 0 ? O.rate : 1);
    while (c && !atomic_load(&g_workload_stop) && !g_stop) {
        auth_client_rewind(c);
        int k = (int)(rnd(&rng) % WATCH_KEYS);
        bool del = rnd(&rng) % 4 == 0;
        int64_t v = (int64_t)atomic_fetch_add(&g_next_value, 1) + 1;
        char name[32], key[40], val[32], err[600] = "";
        snprintf(name, sizeof name, "w%d", k);
        snprintf(key, sizeof key, "\"w%d\"", k);
        snprintf(val, sizeof val, del ? "null" : "%" PRId64, v);
        hist_write("invoke", process, del ? "delete" : "put", key, val, NULL);
        uint64_t rev;
        int rv = watch_write(c, del, name, v, &rev);
        const char *type = write_outcome(rv, err, sizeof err);
        hist_write(type, process, del ? "delete" : "put", key, val, err[0] ? err : NULL);
        count_outcome(st, type, &process);
        client_gap(&rng, mean_gap_s);
    }
    auth_client_free(c);
    return NULL;
}

static int watch_open(struct auth_client *c, struct auth_watch **w)
{
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "watch");
    rp_mp_pack_str(&pk, "kinds");
    msgpack_pack_array(&pk, 1);
    rp_mp_pack_str(&pk, WATCH_KIND);
    int rv = auth_client_watch(c, req.data, req.len, w);
    rp_buf_free(&req);
    return rv;
}

/* Appends one API event to the JSON array @out in the checker's shape (see
 * jepsen/history.h). 1 when it ends the stream (reinit), <0 for an event the
 * checker cannot take. */
static int watch_event_json(const msgpack_object *ev, struct rp_buf *out, bool first, uint64_t *rev,
                            char *err, size_t errn)
{
    const char *e;
    size_t en;
    if (rp_mp_get_str(ev, "ev", &e, &en) != 0 || rp_mp_get_u64(ev, "rev", rev) != 0) {
        snprintf(err, errn, "event without ev or rev");
        return -1;
    }
    static const struct {
        const char *api, *op;
    } map[] = {
        {"init_put", "init"}, {"init_done", "init_done"}, {"put", "put"}, {"delete", "delete"}};
    const char *op = NULL;
    for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
        if (strlen(map[i].api) == en && memcmp(map[i].api, e, en) == 0)
            op = map[i].op;
    if (op == NULL) {
        snprintf(err, errn, "watch ended: %.*s at revision %" PRIu64, (int)en, e, *rev);
        return 1; /* reinit: the watcher fell behind or the state was restored */
    }
    rp_buf_printf(out, "%s{\"revision\":%" PRIu64 ",\"op\":\"%s\"", first ? "" : ",", *rev, op);
    if (strcmp(op, "init_done") != 0) {
        const char *k, *n;
        size_t kn, nn;
        if (rp_mp_get_str(ev, "kind", &k, &kn) != 0 || rp_mp_get_str(ev, "name", &n, &nn) != 0) {
            snprintf(err, errn, "%s event without kind or name", op);
            return -1;
        }
        rp_buf_append_str(out, ",\"kind\":");
        rp_json_str(out, k, kn);
        rp_buf_append_str(out, ",\"name\":");
        rp_json_str(out, n, nn);
    }
    rp_buf_append_str(out, "}");
    return 0;
}

/* Watchers: f "watch" ops of about WATCH_BATCH_MS each, the value the events received
 * meanwhile. A broken or ended stream completes the op as fail (a watch changes
 * nothing) and the thread goes on as a new process with a new watch. */
static void *watcher_main(void *arg)
{
    int t = (int)(intptr_t)arg;
    int64_t process = t;
    struct auth_client *c = client_home(0, 1 + t % O.nodes, CALL_TIMEOUT_MS);
    struct client_stats *st = &g_cstats[t];
    struct auth_watch *w = NULL;
    struct rp_buf val;
    rp_buf_init(&val);
    atomic_store(&g_watch_seen[t], -1);
    while (c && !atomic_load(&g_watch_stop) && !g_stop) {
        char err[600] = "";
        const char *type = "ok";
        hist_write("invoke", process, "watch", NULL, "null", NULL);
        rp_buf_reset(&val);
        rp_buf_append_str(&val, "[");
        if (w == NULL) {
            auth_client_rewind(c);
            int rv = watch_open(c, &w);
            if (rv != 0) {
                w = NULL;
                type = "fail";
                errstr(rv, err, sizeof err);
            }
        }
        uint64_t end = mono_ns() + WATCH_BATCH_MS * 1000000ull;
        bool first = true;
        while (w && !g_stop) {
            uint64_t now = mono_ns();
            if (now >= end || atomic_load(&g_watch_stop))
                break;
            int left = (int)((end - now) / 1000000ull);
            msgpack_unpacked ev;
            int rv = auth_watch_next(w, &ev, left < 50 ? 50 : left);
            if (rv == RP_ETIMEDOUT) {
                msgpack_unpacked_destroy(&ev);
                break;
            }
            uint64_t rev = 0;
            int er = rv == 0 ? watch_event_json(&ev.data, &val, first, &rev, err, sizeof err) : -1;
            msgpack_unpacked_destroy(&ev);
            if (rv != 0)
                errstr(rv, err, sizeof err);
            if (er != 0) {
                type = "fail";
                auth_watch_close(w);
                w = NULL;
                break;
            }
            first = false;
            atomic_store(&g_watch_seen[t], (int64_t)rev);
        }
        rp_buf_append_str(&val, "]");
        rp_buf_append(&val, "", 1);
        hist_write(type, process, "watch", NULL, (const char *)val.data, err[0] ? err : NULL);
        count_outcome(st, type, &process);
        if (type[0] == 'f') {
            atomic_store(&g_watch_seen[t], -1);
            nap(100);
        }
    }
    auth_watch_close(w);
    rp_buf_free(&val);
    auth_client_free(c);
    return NULL;
}

/* After the writers stop: one last put (the sentinel) so that every watcher has a
 * revision to reach, then the final read of everything of kind jwatch. */
static void watch_final(void)
{
    struct auth_client *c = client_for(0, 10000);
    if (c == NULL)
        return;
    uint64_t sentinel = 0;
    for (int tries = 0; tries < FINAL_READ_TRIES && !g_stop && sentinel == 0; tries++) {
        int64_t process = FINAL_PROCESS + 200 + tries;
        char err[600] = "";
        hist_write("invoke", process, "put", "\"sentinel\"", "0", NULL);
        int rv = watch_write(c, false, "sentinel", 0, &sentinel);
        const char *type = write_outcome(rv, err, sizeof err);
        hist_write(type, process, "put", "\"sentinel\"", "0", err[0] ? err : NULL);
    }
    msg("watch: sentinel written at revision %" PRIu64 "; waiting for the watchers", sentinel);
    uint64_t end = mono_ns() + 20000000000ull;
    while (sentinel && !g_stop && mono_ns() < end) {
        int behind = 0;
        for (int t = 0; t < g_n_watchers; t++)
            behind += atomic_load(&g_watch_seen[t]) < (int64_t)sentinel;
        if (behind == 0)
            break;
        nap(100);
    }
    for (int tries = 0; tries < FINAL_READ_TRIES && !g_stop; tries++) {
        int64_t process = FINAL_PROCESS + tries;
        struct rp_buf req, val;
        msgpack_unpacked resp;
        rp_buf_init(&req);
        rp_buf_init(&val);
        auth_req_list(&req, WATCH_KIND, NULL, LIST_LIMIT, false, false);
        hist_write("invoke", process, "read", NULL, "null", NULL);
        int rv = auth_client_call(c, req.data, req.len, &resp);
        uint64_t rev = 0;
        const msgpack_object *items = rv == 0 ? rp_mp_get(&resp.data, "items") : NULL;
        /* resp is destroyed below, before anything else looks at items */
        if (rv == 0 && (items == NULL || items->type != MSGPACK_OBJECT_ARRAY ||
                        rp_mp_get_u64(&resp.data, "rev", &rev) != 0))
            rv = rp_err(RP_EPROTO, "list answer without items or rev");
        rp_buf_printf(&val, "{\"revision\":%" PRIu64 ",\"resources\":[", rev);
        for (uint32_t k = 0; rv == 0 && k < items->via.array.size; k++) {
            const msgpack_object *md = rp_mp_get(&items->via.array.ptr[k], "metadata");
            const char *n;
            size_t nn;
            uint64_t r = 0;
            if (rp_mp_get_str(md, "name", &n, &nn) != 0 || rp_mp_get_u64(md, "revision", &r) != 0) {
                rv = rp_err(RP_EPROTO, "list item without metadata.name or metadata.revision");
                break;
            }
            rp_buf_printf(&val, "%s{\"kind\":\"" WATCH_KIND "\",\"name\":", k ? "," : "");
            rp_json_str(&val, n, nn);
            rp_buf_printf(&val, ",\"revision\":%" PRIu64 "}", r);
        }
        rp_buf_append_str(&val, "]}");
        rp_buf_append(&val, "", 1);
        msgpack_unpacked_destroy(&resp);
        rp_buf_free(&req);
        if (rv == 0) {
            hist_write("ok", process, "read", NULL, (const char *)val.data, NULL);
            msg("final read of %s at revision %" PRIu64, WATCH_KIND, rev);
            rp_buf_free(&val);
            break;
        }
        char err[600];
        errstr(rv, err, sizeof err);
        hist_write("fail", process, "read", NULL, "null", err);
        rp_buf_free(&val);
        nap(1000);
    }
    auth_client_free(c);
}

/* ---- results ----------------------------------------------------------------------- */

static const char *const log_marks[] = {
    "Assertion", "AddressSanitizer", "runtime error:", "Segmentation fault", "panic", "FATAL"};

/* Counts lines of the node logs with a crash mark; appends the first few to @out. */
static long grep_logs(struct rp_buf *out)
{
    long hits = 0;
    bool first = true;
    rp_buf_append_str(out, "[");
    for (int i = 1; i <= g_nslots; i++) {
        FILE *f = fopen(g_nodes[i].log, "r");
        if (f == NULL)
            continue;
        char line[2048];
        while (fgets(line, sizeof line, f)) {
            for (size_t k = 0; k < sizeof log_marks / sizeof log_marks[0]; k++) {
                if (strstr(line, log_marks[k]) == NULL)
                    continue;
                if (hits++ < 10) {
                    char tag[600];
                    line[strcspn(line, "\n")] = '\0';
                    snprintf(tag, sizeof tag, "n%d: %.500s", i, line);
                    rp_buf_append_str(out, first ? "" : ",");
                    rp_json_str(out, tag, strlen(tag));
                    first = false;
                }
                break;
            }
        }
        fclose(f);
    }
    rp_buf_append_str(out, "]");
    return hits;
}

static enum jepsen_verdict worst(enum jepsen_verdict a, enum jepsen_verdict b)
{
    if (a == JEPSEN_INVALID || b == JEPSEN_INVALID)
        return JEPSEN_INVALID;
    if (a == JEPSEN_UNKNOWN || b == JEPSEN_UNKNOWN)
        return JEPSEN_UNKNOWN;
    return JEPSEN_VALID;
}

/* Checks the history, writes results.json and latency.svg; returns the verdict. */
static enum jepsen_verdict write_results(const char *hist_path, bool interrupted,
                                         const char *setup_error, char *summary, size_t slen)
{
    struct rp_buf r, rep, logs, svg;
    rp_buf_init(&r);
    rp_buf_init(&rep);
    rp_buf_init(&logs);
    rp_buf_init(&svg);
    enum jepsen_verdict reg = JEPSEN_UNKNOWN, all;
    struct jepsen_history *h = NULL;
    char herr[512] = "";
    long ok = 0, fail = 0, info = 0, nem = 0;
    int rv = jepsen_history_read_file(hist_path, &h);
    double check_s = 0;
    if (rv != 0) {
        snprintf(herr, sizeof herr, "reading the history: %s", rp_errmsg());
    } else {
        for (size_t i = 0; i < h->n_ops; i++) {
            const struct jepsen_op *op = &h->ops[i];
            if (op->nemesis)
                nem++;
            else if (op->type == JEPSEN_OK)
                ok++;
            else if (op->type == JEPSEN_FAIL)
                fail++;
            else if (op->type == JEPSEN_INFO)
                info++;
        }
        struct jepsen_check_opts co = {.time_limit_s = 60.0};
        uint64_t t0 = mono_ns();
        if (strcmp(O.workload, "set") == 0)
            rv = jepsen_check_set(h, &co, &reg, &rep);
        else if (strcmp(O.workload, "watch") == 0)
            rv = jepsen_check_watch(h, &co, &reg, &rep);
        else if (strcmp(O.workload, "unique") == 0)
            rv = jepsen_check_unique(h, &co, &reg, &rep);
        else
            rv = jepsen_check_register(h, &co, &reg, &rep);
        check_s = (double)(mono_ns() - t0) / 1e9;
        if (rv != 0) {
            snprintf(herr, sizeof herr, "%s checker: %s", O.workload, rp_errmsg());
            reg = JEPSEN_UNKNOWN;
            rp_buf_reset(&rep);
        }
        char title[300];
        snprintf(title, sizeof title, "%s: %s, nemesis %s, %d nodes, %d s", O.name, O.workload,
                 O.nemesis, O.nodes, O.time_s);
        if (jepsen_plot_latency(h, title, &svg) == 0) {
            char p[PATH_MAX];
            snprintf(p, sizeof p, "%s/latency.svg", g_run);
            rp_write_file(p, svg.data, svg.len, 0644);
        }
    }
    long log_hits = grep_logs(&logs);
    enum jepsen_verdict stats = ok > 0 ? JEPSEN_VALID : JEPSEN_UNKNOWN;
    enum jepsen_verdict logv = log_hits ? JEPSEN_INVALID : JEPSEN_VALID;
    all = worst(worst(reg, stats), logv);
    if (setup_error || interrupted || herr[0])
        all = worst(all, JEPSEN_UNKNOWN);
    rp_buf_printf(&r, "{\"valid\":%s,\"name\":", jepsen_verdict_json(all));
    rp_json_str(&r, O.name, strlen(O.name));
    rp_buf_printf(&r,
                  ",\"workload\":\"%s\",\"nemesis\":\"%s\",\"nodes\":%d,\"time_s\":%d,"
                  "\"rate\":%d,\"concurrency\":%d,\"seed\":%" PRIu64 ",\"interrupted\":%s",
                  O.workload, O.nemesis, O.nodes, O.time_s, O.rate, O.concurrency, O.seed,
                  interrupted ? "true" : "false");
    if (setup_error) {
        rp_buf_append_str(&r, ",\"setup_error\":");
        rp_json_str(&r, setup_error, strlen(setup_error));
    }
    if (herr[0]) {
        rp_buf_append_str(&r, ",\"history_error\":");
        rp_json_str(&r, herr, strlen(herr));
    }
    rp_buf_printf(&r,
                  ",\"checkers\":{\"stats\":{\"valid\":%s,\"ok\":%ld,\"fail\":%ld,\"info\":%ld,"
                  "\"nemesis_ops\":%ld},\"logs\":{\"valid\":%s,\"matches\":%ld,\"lines\":",
                  jepsen_verdict_json(stats), ok, fail, info, nem, jepsen_verdict_json(logv),
                  log_hits);
    rp_buf_append(&r, logs.data, logs.len);
    rp_buf_printf(&r, "},\"%s\":", O.workload);
    if (rep.len)
        rp_buf_append(&r, rep.data, rep.len);
    else
        rp_buf_printf(&r, "{\"valid\":%s}", jepsen_verdict_json(reg));
    rp_buf_printf(&r, "},\"check_s\":%.3f}\n", check_s);
    char p[PATH_MAX];
    snprintf(p, sizeof p, "%s/results.json", g_run);
    rp_write_file(p, r.data, r.len, 0644);
    snprintf(summary, slen,
             "jepsen-run %s: workload=%s nemesis=%s nodes=%d time=%ds valid=%s "
             "(%s=%s stats=%s logs=%s) ok=%ld fail=%ld info=%ld nemesis=%ld check=%.2fs%s "
             "dir=%s",
             O.name, O.workload, O.nemesis, O.nodes, O.time_s, jepsen_verdict_json(all), O.workload,
             jepsen_verdict_json(reg), jepsen_verdict_json(stats), jepsen_verdict_json(logv), ok,
             fail, info, nem, check_s, interrupted ? " INTERRUPTED" : "", g_run);
    jepsen_history_free(h);
    rp_buf_free(&r);
    rp_buf_free(&rep);
    rp_buf_free(&logs);
    rp_buf_free(&svg);
    return all;
}

/* ---- main ---------------------------------------------------------------------------- */

static void on_signal(int sig)
{
    (void)sig;
    g_stop = 1;
}

static void teardown(void)
{
    kill_all_nodes();
    net_destroy();
    g_net_made = false;
}

static void usage(FILE *fp)
{
    fprintf(
        fp,
        "usage: jepsen-run --workload=register|set|unique|watch --nemesis=LIST\n"
        "                  [--time=SECONDS (60)] [--nodes=3|5 (5)] [--rate=OPS_PER_S (100)]\n"
        "                  [--concurrency=N (10)] [--seed=N (random)] [--name=NAME]\n"
        "                  [--store=DIR (jepsen/store)] [--daemon=PATH] [--keep-data]\n"
        "LIST: none, all, or a comma-separated list of partition, kill, pause, membership,\n"
        "      clock (needs Debian's faketime) and truncate.\n"
        "Runs as root. Results in STORE/NAME/TIMESTAMP/; exit 0 valid, 1 invalid, 2 unknown.\n");
}

/* --nemesis: "none", "all" or names joined by commas. */
static int parse_nemeses(const char *s, unsigned *mask)
{
    *mask = 0;
    if (strcmp(s, "none") == 0)
        return 0;
    if (strcmp(s, "all") == 0) {
        *mask = NEM_ALL;
        return 0;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", s);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        int k = 0;
        while (k < NEM_KINDS && strcmp(tok, nem_names[k]) != 0)
            k++;
        if (k == NEM_KINDS) {
            fprintf(stderr,
                    "jepsen-run: --nemesis: unknown nemesis '%s', expected none, all, or a "
                    "comma-separated list of partition, kill, pause, membership, clock, "
                    "truncate\n",
                    tok);
            return -1;
        }
        *mask |= 1u << k;
    }
    if (*mask == 0) {
        fprintf(stderr, "jepsen-run: --nemesis is empty\n");
        return -1;
    }
    return 0;
}

static int parse_int(const char *s, int lo, int hi, const char *what)
{
    char *end;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "jepsen-run: --%s must be an integer in %d..%d\n", what, lo, hi);
        exit(2);
    }
    return (int)v;
}

int main(int argc, char **argv)
{
    static const struct option lopts[] = {{"workload", required_argument, NULL, 'w'},
                                          {"nemesis", required_argument, NULL, 'n'},
                                          {"time", required_argument, NULL, 't'},
                                          {"nodes", required_argument, NULL, 'N'},
                                          {"rate", required_argument, NULL, 'r'},
                                          {"concurrency", required_argument, NULL, 'c'},
                                          {"seed", required_argument, NULL, 's'},
                                          {"name", required_argument, NULL, 'a'},
                                          {"store", required_argument, NULL, 'S'},
                                          {"keep-data", no_argument, NULL, 'k'},
                                          {"daemon", required_argument, NULL, 'D'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    bool seed_set = false;
    int ch;
    while ((ch = getopt_long(argc, argv, "h", lopts, NULL)) != -1) {
        switch (ch) {
        case 'w':
            O.workload = optarg;
            break;
        case 'n':
            O.nemesis = optarg;
            break;
        case 't':
            O.time_s = parse_int(optarg, 5, 86400, "time");
            break;
        case 'N':
            O.nodes = parse_int(optarg, 3, 5, "nodes");
            break;
        case 'r':
            O.rate = parse_int(optarg, 1, 100000, "rate");
            break;
        case 'c':
            O.concurrency = parse_int(optarg, 1, MAX_CLIENTS, "concurrency");
            break;
        case 's':
            O.seed = strtoull(optarg, NULL, 10);
            seed_set = true;
            break;
        case 'a':
            O.name = optarg;
            break;
        case 'S':
            O.store = optarg;
            break;
        case 'k':
            O.keep_data = true;
            break;
        case 'D':
            O.daemon = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    bool wl_ok = strcmp(O.workload, "register") == 0 || strcmp(O.workload, "set") == 0 ||
                 strcmp(O.workload, "unique") == 0 || strcmp(O.workload, "watch") == 0;
    if (!wl_ok)
        fprintf(stderr,
                "jepsen-run: unknown workload '%s', expected register, set, unique or watch\n",
                O.workload);
    if (O.nodes == 4)
        fprintf(stderr, "jepsen-run: --nodes must be 3 or 5, got 4\n");
    if (optind != argc)
        fprintf(stderr, "jepsen-run: unexpected argument '%s'\n", argv[optind]);
    if (optind != argc || !wl_ok || O.nodes == 4 || parse_nemeses(O.nemesis, &g_nem) != 0) {
        usage(stderr);
        return 2;
    }
    if (O.daemon && access(O.daemon, X_OK) != 0) {
        fprintf(stderr, "jepsen-run: --daemon=%s: not an executable file\n", O.daemon);
        return 2;
    }
    if ((g_nem & NEM_CLOCK) && access(FAKETIME_LIB, R_OK) != 0) {
        fprintf(stderr, "jepsen-run: the clock nemesis needs %s (Debian package faketime)\n",
                FAKETIME_LIB);
        return 2;
    }
    g_nslots = O.nodes + ((g_nem & NEM_MEMBERSHIP) ? 1 : 0);
    if (strcmp(O.workload, "watch") == 0) {
        g_n_watchers = O.concurrency / 3 > 2 ? O.concurrency / 3 : 2;
        if (O.concurrency < g_n_watchers + 1) {
            fprintf(stderr, "jepsen-run: the watch workload needs --concurrency of 3 or more\n");
            return 2;
        }
    }
    if (geteuid() != 0) {
        fprintf(stderr, "jepsen-run: needs root (network namespaces, nftables)\n");
        return 2;
    }
    if (sh("command -v nft >/dev/null 2>&1") != 0 && (g_nem & NEM_PARTITION)) {
        fprintf(stderr, "jepsen-run: nft (Debian package nftables) is needed for partitions\n");
        return 2;
    }
    /* One run at a time on a machine: the bridge and namespace names are fixed. */
    int lock_fd = open("/run/raftport-jepsen.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0) {
        fprintf(stderr, "jepsen-run: /run/raftport-jepsen.lock: %s\n", strerror(errno));
        return 2;
    }
    if (flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        fprintf(stderr, "jepsen-run: another jepsen-run is going on; waiting for it\n");
        if (flock(lock_fd, LOCK_EX) != 0) {
            fprintf(stderr, "jepsen-run: locking /run/raftport-jepsen.lock: %s\n", strerror(errno));
            return 2;
        }
    }
    /* Without --seed, a seed of this process's own (two runs started in the same
     * second must not share their schedule); it is recorded, so the run can be
     * replayed with --seed. Kept below 2^53 so JSON readers hold it exactly. */
    if (!seed_set)
        O.seed = rp_rand_u64() >> 11;
    g_nem_rng = jepsen_mix64(O.seed) | 1;
    static char defname[64];
    if (O.name == NULL) {
        snprintf(defname, sizeof defname, "%s-%s", O.workload, O.nemesis);
        O.name = defname;
    }
    /* Paths: the daemon next to us, the run directory absolute. */
    char self[PATH_MAX];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) {
        perror("jepsen-run: /proc/self/exe");
        return 2;
    }
    self[sl] = '\0';
    *strrchr(self, '/') = '\0';
    snprintf(g_exe_dir, sizeof g_exe_dir, "%s", self);
    char cwd[PATH_MAX / 2], stamp[32];
    if (getcwd(cwd, sizeof cwd) == NULL) {
        perror("getcwd");
        return 2;
    }
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    strftime(stamp, sizeof stamp, "%Y%m%dT%H%M%S", &tm);
    if (O.store[0] == '/')
        snprintf(g_run, sizeof g_run, "%.1500s/%.200s/%s", O.store, O.name, stamp);
    else
        snprintf(g_run, sizeof g_run, "%.1500s/%.1000s/%.200s/%s", cwd, O.store, O.name, stamp);
    if (rp_mkdir_p(g_run, 0755) != 0) {
        fprintf(stderr, "jepsen-run: %s: %s\n", g_run, rp_errmsg());
        return 2;
    }
    {
        char link[PATH_MAX];
        snprintf(link, sizeof link, "%.1500s/%.1000s/%.200s/latest", O.store[0] == '/' ? "" : cwd,
                 O.store, O.name);
        unlink(link);
        if (symlink(stamp, link) != 0)
            msg("symlink %s: %s (only a convenience)", link, strerror(errno));
    }
    for (int i = 1; i <= MAX_SLOTS; i++) {
        struct node *n = &g_nodes[i];
        snprintf(n->clock, sizeof n->clock, "%s/n%d.clock", g_run, i);
        snprintf(n->ip, sizeof n->ip, "10.77.0.%d", 10 + i);
        snprintf(n->addr, sizeof n->addr, "10.77.0.%d:%d", 10 + i, API_PORT);
        snprintf(n->dir, sizeof n->dir, "%s/n%d", g_run, i);
        snprintf(n->cfg, sizeof n->cfg, "%s/n%d.yaml", g_run, i);
        snprintf(n->log, sizeof n->log, "%s/n%d.log", g_run, i);
    }

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    atexit(teardown);

    char hist_path[PATH_MAX];
    snprintf(hist_path, sizeof hist_path, "%s/history.jsonl", g_run);
    g_hist = fopen(hist_path, "w");
    if (g_hist == NULL) {
        fprintf(stderr, "jepsen-run: %s: %s\n", hist_path, strerror(errno));
        return 2;
    }
    g_t0_ns = mono_ns();
    msg("run %s: workload=%s nemesis=%s nodes=%d time=%ds rate=%d concurrency=%d seed=%" PRIu64,
        O.name, O.workload, O.nemesis, O.nodes, O.time_s, O.rate, O.concurrency, O.seed);
    msg("dir %s", g_run);

    /* A stale setup of a crashed run goes first. */
    net_destroy();
    const char *setup_error = NULL;
    if (net_create(g_nslots) != 0)
        setup_error = "creating the bridge and namespaces failed";
    else if (cluster_start() != 0)
        setup_error = g_stop ? "interrupted during setup" : "the cluster did not come up";
    else
        msg("cluster of %d voters is up; leader n%d", O.nodes, find_leader());

    if (setup_error == NULL && !g_stop) {
        /* Time zero of the history is the start of the workload. */
        g_t0_ns = mono_ns();
        uint64_t end_ns = g_t0_ns + (uint64_t)O.time_s * 1000000000ull;
        for (int k = 0; k <= (O.concurrency - 1) / CLIENTS_PER_KEY; k++)
            g_groups[k] = (struct key_group){.key = g_next_key++};
        void *(*client_fn)(void *) = client_main;
        bool is_set = strcmp(O.workload, "set") == 0, is_unique = strcmp(O.workload, "unique") == 0;
        bool is_watch = strcmp(O.workload, "watch") == 0;
        if (is_set)
            client_fn = set_client_main;
        else if (is_unique)
            client_fn = unique_client_main;
        if (is_unique && unique_setup() != 0)
            msg("unique: no item could be created; the clients will do nothing");
        pthread_t th[MAX_CLIENTS];
        int started = 0;
        for (int t = 0; t < O.concurrency; t++) {
            if (is_watch)
                client_fn = t < g_n_watchers ? watcher_main : watch_writer_main;
            if (pthread_create(&th[t], NULL, client_fn, (void *)(intptr_t)t) != 0)
                break;
            started++;
        }
        run_nemesis(end_ns);
        heal_all();
        nemesis_op("heal", "\"final heal: partitions removed, nodes resumed and restarted\"");
        while (!g_stop && mono_ns() < end_ns)
            nap(100);
        atomic_store(&g_workload_stop, true);
        /* Watchers go on following until after the final read. */
        int first_joined = is_watch ? (started < g_n_watchers ? started : g_n_watchers) : 0;
        for (int t = first_joined; t < started; t++)
            pthread_join(th[t], NULL);
        msg("workload stopped; cluster after final heal: %s", g_stop ? "(interrupted)"
                                                              : wait_ready(O.nodes, 20000)
                                                                  ? "all voters, leader elected"
                                                                  : "NOT healthy within 20 s");
        if (is_watch) {
            if (!g_stop)
                watch_final();
            atomic_store(&g_watch_stop, true);
            for (int t = 0; t < first_joined; t++)
                pthread_join(th[t], NULL);
        }
        if ((is_set || is_unique) && !g_stop) {
            /* The final read needs a leader: wait for one (wait_ready may have given up). */
            uint64_t lend = mono_ns() + 20000000000ull;
            while (!g_stop && find_leader() == 0 && mono_ns() < lend)
                nap(200);
            if (is_set)
                final_read("jset", "e", true);
            else
                final_read("juniq", "u", false);
        }
    }
    fclose(g_hist);
    g_hist = NULL;
    bool interrupted = g_stop != 0;
    teardown();
    msg("teardown done");
    char summary[PATH_MAX + 512];
    enum jepsen_verdict v =
        write_results(hist_path, interrupted, setup_error, summary, sizeof summary);
    if (setup_error)
        msg("setup failed: %s", setup_error);
    if (v == JEPSEN_VALID && !O.keep_data)
        for (int i = 1; i <= g_nslots; i++)
            sh("rm -rf '%s'", g_nodes[i].dir);
    printf("%s\n", summary);
    fflush(stdout);
    if (g_ctx)
        SSL_CTX_free(g_ctx);
    if (interrupted)
        return 130;
    return setup_error ? 2 : (int)v;
}
