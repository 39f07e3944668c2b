/* tests/lib/cluster.h: the integration-test harness: real auth clusters of
 * `raftport start` processes on 127.0.0.1.
 *
 * One cluster per test, kept in a process-wide singleton (a Criterion test runs
 * in its own worker process). Use it through a fixture:
 *
 *   TestSuite(failover, .init = cluster_setup, .fini = cluster_teardown, .timeout = 60);
 *
 *   Test(failover, new_leader_after_kill9) {
 *       cluster_start(3);
 *       ...
 *       cluster_pass();      // last line: marks the test as reaching its end
 *   }
 *
 * cluster_setup() makes a temp dir under /tmp. cluster_teardown() always kills
 * (SIGKILL) every daemon still alive; the temp dir is removed if the test reached
 * cluster_pass(), else kept, and its path and the tail of every log are printed.
 * Daemons also die with the test process (PR_SET_PDEATHSIG), so a test killed by
 * Criterion's timeout leaves nothing running.
 *
 * Layout of the temp dir: authN.yaml (config), authN.log (stdout+stderr of every
 * run of node N, appended), authN/ (data_dir). Node indexes start at 1; the node
 * with index N starts with raft id N unless said otherwise.
 *
 * Helpers that can fail the test do so with cr_assert (they must be called from
 * the test's main thread). Binaries come from $RP_BUILD (default "build"). */
#ifndef RP_TESTS_CLUSTER_H
#define RP_TESTS_CLUSTER_H

#include <msgpack.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "auth/auth.h"

#define CL_MAX_NODES 8

/* Per-test configuration, applied to every node started after it is set. */
struct cl_opts {
    unsigned election_timeout_ms;  /* default 1000 */
    unsigned heartbeat_timeout_ms; /* default 100 */
    unsigned snapshot_threshold;   /* default 1024 */
    unsigned snapshot_trailing;    /* default 2048 */
    int start_timeout_ms;          /* cluster_start's deadline, default 40000 */
};

struct cl_node {
    bool used;
    uint64_t raft_id;
    pid_t pid;         /* 0 when not running */
    int last_status;   /* wait status of the last exit (valid when exited) */
    bool exited;       /* the last run has been reaped */
    char name[32];     /* "authN": nodename and file stem */
    char dir[512];     /* data_dir */
    char cfg[512];     /* config file */
    char log[512];     /* log file */
    char api_addr[64]; /* 127.0.0.1:port */
    char raft_addr[64];
    char token[128];      /* join token ("" for the bootstrap node) */
    char auth_server[64]; /* where it joins through */
};

struct cluster {
    char dir[256];
    char cluster_name[64];
    char ca_pin[128];
    char build[512];
    struct cl_opts opts;
    struct cl_node nodes[CL_MAX_NODES + 1]; /* [1..CL_MAX_NODES] */
    bool passed;
};

extern struct cluster *CL;

/* ---- fixture ------------------------------------------------------------------------ */

void cluster_setup(void);
void cluster_teardown(void);
/* Marks the running test as passed (its temp dir is then removed at teardown).
 * Fails the test instead if a daemon's log holds a sanitizer report (make asan). */
void cluster_pass(void);
struct cl_opts *cluster_opts(void);
/* Shorthand for the snapshot options. */
void cluster_set_snapshot(unsigned threshold, unsigned trailing);

/* ---- processes ---------------------------------------------------------------------- */

/* Bootstraps node 1, creates an auth token per further node with tctl, starts
 * nodes 2..n joining through node 1, and waits until `tctl status --format=json`
 * shows n voters, a leader and no unreachable member. Fails the test otherwise. */
void cluster_start(int n);
/* Prepares node @i (ports, config). @token empty/NULL: bootstrap node. */
void node_prepare(int i, uint64_t raft_id, const char *token, const char *auth_server);
/* Writes node @i's config file from its fields (call after changing them). */
void node_write_config(int i);
/* Starts node @i's daemon (its config must exist). Returns the pid. */
pid_t node_spawn(int i);
/* Adds a fresh node (new index, new data dir, raft id = index unless @raft_id != 0)
 * joining with a new auth token through a running member; starts it and returns its
 * index. Does not wait for it to become a voter. */
int cluster_add_node(uint64_t raft_id);
/* SIGKILL, then reap. */
void node_kill9(int i);
/* SIGTERM and wait (up to @timeout_ms) for the exit; returns the wait status (or -1
 * on timeout, after which the node is killed). */
int node_term(int i, int timeout_ms);
/* Starts node @i again with the same config and data. */
void node_restart(int i);
/* True if node @i's process is running (reaps it if it exited). */
bool node_alive(int i);
/* Waits up to @timeout_ms for node @i to exit; returns the wait status or -1. */
int node_wait_exit(int i, int timeout_ms);
/* Index of the node with raft id @id, 0 if none. */
int node_by_raft_id(uint64_t id);
/* A running node other than @except (0: any), or 0. */
int node_any_running(int except);
/* Last @lines lines of node @i's log, to stderr. */
void node_print_log_tail(int i, int lines);
/* True if node @i's log contains @needle. */
bool node_log_contains(int i, const char *needle);

/* ---- commands ----------------------------------------------------------------------- */

struct cl_run {
    int status; /* exit code, or -1 if killed / timed out */
    char *out;  /* stdout, NUL-terminated (free it) */
    char *err;  /* stderr */
};

/* Runs @argv (NULL-terminated) with a deadline; captures stdout and stderr. */
int cl_run_argv(char *const argv[], int timeout_ms, struct cl_run *r);
void cl_run_free(struct cl_run *r);
/* Runs `$RP_BUILD/tctl -c <node i's config> ARGS... (NULL-terminated)`. Returns the
 * exit code; *out (if @out) gets stdout (free it). Stderr goes to the test's stderr
 * when the exit code is not 0. */
int run_tctl(int i, char **out, ...) __attribute__((sentinel));

/* ---- users and their identities ------------------------------------------------------ */

/* Polls `tctl get role/R` on node 1 for every preset role R (access, editor,
 * auditor: the leader creates them a moment after the first election, one by one)
 * until all are there or @timeout_ms pass. True if they were in time. */
bool cl_wait_presets(int timeout_ms);
/* Runs `tctl -i DIR/@user.id --auth-server=<node 2> ARGS... (NULL-terminated)`: as
 * that user, through node 2 (a follower most of the time, so requests are forwarded).
 * Returns the exit code; *out (if @out) gets stdout, a newline, then stderr (free it). */
int cl_tctl_as(const char *user, char **out, ...) __attribute__((sentinel));
/* `tctl users add @user --roles=@roles`, then `tctl auth sign --format=file` into
 * DIR/@user.id, both on node 1 (for cl_tctl_as). Fails the test if either fails. */
void cl_make_identity(const char *user, const char *roles);
/* The invite token (32 characters) in `tctl users add|reset` output @out: its last
 * word. Copied into @tok (@n bytes); fails the test if there is none. */
void cl_invite_token(const char *out, char *tok, size_t n);
/* Writes @text to DIR/@name (mode 0600); its path into @path (@n bytes). Fails the
 * test if it cannot. */
void cl_write_file(const char *name, const char *text, char *path, size_t n);

/* `tctl tokens add --type=@type [--ttl=@ttl] --format=json` on node @via (@ttl NULL:
 * the default); the token into @token (@n bytes). Fails the test if there is none. */
void cl_add_token(int via, const char *type, const char *ttl, char *token, size_t n);
/* A fresh Ed25519 public key in authorized_keys form, for requests that need one
 * (the private half is dropped). Free it. */
char *cl_ssh_pubkey(void);
/* node_call_anon of @req on node @i, reduced to the answer's error code: "" when
 * it says ok, else its "code" field, into @code (@codelen bytes). */
void cl_anon_code(int i, const struct rp_buf *req, char *code, size_t codelen);
/* invite_redeem of @token with @password (and, unless @totp_secret is NULL, that TOTP
 * secret and its current @totp_code) as an anonymous caller of node @i; the answer's
 * code ("" when ok) into @code. */
void cl_redeem_invite(int i, const char *token, const char *password, const char *totp_secret,
                      const char *totp_code, char *code, size_t codelen);

/* authenticate (password login) of @user with @password (and TOTP code @totp unless
 * NULL) and a fresh SSH key, as an anonymous caller of node @i: the answer's code
 * ("" when ok) into @code and, if @got_cert, whether an SSH certificate came back. */
void cl_login(int i, const char *user, const char *password, const char *totp, char *code,
              size_t codelen, bool *got_cert);

/* ---- node identities ------------------------------------------------------------------ */

/* A node agent's identity, made through the real "join" method with a node token. */
struct cl_node_id {
    char host_id[40]; /* a fresh UUID */
    char nodename[64];
    SSL_CTX *ctx;      /* the Node X.509 identity (for auth_client_new) */
    EVP_PKEY *ssh_key; /* its SSH host key (Ed25519) */
    char *ssh_pub;     /* that key, an authorized_keys line */
    char *ssh_cert;    /* its host certificate line, as join issued it */
    char *host_ca;     /* the host CA public keys join returned */
};

/* Joins a node called @nodename through auth server @via with node token @token (NULL:
 * a fresh one from `tctl tokens add --type=node` on node 1; node tokens are multi-use,
 * so many nodes may share one): an anonymous join call with a fresh P-256 key and
 * Ed25519 host key, as the agent makes it. Fails the test if any step fails. */
void cl_join_node(int via, const char *token, const char *nodename, struct cl_node_id *out);
/* The same for a host of join type @type ("node" or "proxy"; @token NULL: a fresh
 * token of that type). */
void cl_join_host(int via, const char *type, const char *token, const char *nodename,
                  struct cl_node_id *out);
void cl_node_id_free(struct cl_node_id *n);
/* A client with @n's identity bound to auth server @i (auth_client_free it). */
struct auth_client *cl_node_client(const struct cl_node_id *n, int i);

/* ---- JSON (enough for tctl's output) ------------------------------------------------ */

enum cl_jtype { CLJ_NULL, CLJ_BOOL, CLJ_NUM, CLJ_STR, CLJ_ARR, CLJ_OBJ };

struct cl_json {
    enum cl_jtype type;
    bool b;
    double num;
    uint64_t u; /* numbers that are non-negative integers */
    char *str;
    size_t n;    /* items of an array or object */
    char **keys; /* object keys */
    struct cl_json *items;
};

/* Parses @text; NULL if it is not one complete JSON value. cl_json_free the result. */
struct cl_json *cl_json_parse(const char *text);
void cl_json_free(struct cl_json *j);
const struct cl_json *cl_json_get(const struct cl_json *obj, const char *key);
const char *cl_json_str(const struct cl_json *obj, const char *key); /* "" if absent */
uint64_t cl_json_u64(const struct cl_json *obj, const char *key);    /* 0 if absent */

/* ---- status ------------------------------------------------------------------------- */

struct cl_member {
    uint64_t id;
    char address[64];
    char role[16];
    char state[16];
    uint64_t last_applied;
};

struct cl_status {
    char cluster_name[128];
    char ca_pin[128];
    uint64_t leader_id;
    uint64_t term;
    unsigned n_members;
    struct cl_member members[16];
};

/* `tctl status --format=json` on node @i. Returns 0, or -1 (tctl failed or bad JSON). */
int cluster_status(int i, struct cl_status *st);
/* Count of members whose role is @role. */
unsigned cl_status_count_role(const struct cl_status *st, const char *role);
const struct cl_member *cl_status_member(const struct cl_status *st, uint64_t id);
/* The leader's raft id as seen from node @i's status, if the leader's member entry
 * says "leader"; 0 otherwise. @i = 0: ask any running node. */
uint64_t cluster_leader_id_from(int i);
uint64_t cluster_leader_id(void);
/* Waits until status on node @ask (0: any running node) shows @n voters, a leader
 * (not @not_leader), no unreachable member and no spare/standby. Returns the leader's
 * raft id, or 0 on timeout. */
uint64_t cluster_wait_ready(int ask, unsigned n, uint64_t not_leader, int timeout_ms);

/* ---- polling ------------------------------------------------------------------------ */

uint64_t cl_now_ms(void);
void cl_sleep_ms(unsigned ms);
/* Calls @pred(@arg) every 50 ms (and once at the end) until it is true or
 * @deadline_ms pass. Returns its last value. */
bool wait_until(int deadline_ms, bool (*pred)(void *arg), void *arg);

/* ---- the auth API in-process -------------------------------------------------------- */

/* The admin TLS context of node @i (from its data_dir). SSL_CTX_free it. */
SSL_CTX *node_admin_ctx(int i);
/* A client bound to node @i's address only (it learns the others after its first
 * successful call). auth_client_free it. */
struct auth_client *node_client(int i);
/* One request on a fresh client pinned to node @i (so the answer comes from node @i
 * itself or from what node @i forwarded). Returns auth_client_call's result; @resp is
 * always to be destroyed by the caller, and is valid until the next node_call (it
 * points into the client's buffer, which lives until then). @timeout_ms 0: 10 s. */
int node_call(int i, const void *req, size_t len, msgpack_unpacked *resp, int timeout_ms);

/* One request on a new TLS connection to node @i without a client certificate (an
 * anonymous caller: joins, invite redemption, password logins). The answer frame is
 * read into @ans and parsed into @u, which the caller destroys. */
void node_call_anon(int i, const struct rp_buf *req, struct rp_buf *ans, msgpack_unpacked *u);

/* Request builders: encoded msgpack maps appended to @out (rp_buf_init'ed). */
void cl_req_put(struct rp_buf *out, const char *kind, const char *name, const char *value,
                const char *rid);
void cl_req_get(struct rp_buf *out, const char *kind, const char *name, bool stale);
void cl_req_simple(struct rp_buf *out, const char *method);

/* put {kind, version "v1", metadata {name}, spec {value}} through @c. 0 or an RP_E* code. */
int cl_put(struct auth_client *c, const char *kind, const char *name, const char *value);
/* get through @c; on success copies spec.value into @value. */
int cl_get(struct auth_client *c, const char *kind, const char *name, bool stale, char *value,
           size_t valuelen);
/* The same, on a fresh client pinned to node @i. */
int node_put(int i, const char *kind, const char *name, const char *value);
int node_get(int i, const char *kind, const char *name, bool stale, char *value, size_t valuelen);
/* Polls stale reads on node @i until @kind/@name holds @value; true if it did in time. */
bool node_wait_value(int i, const char *kind, const char *name, const char *value, int timeout_ms);

/* A string field of a decoded answer into @out ("" if absent). */
const char *cl_mp_str(const msgpack_object *map, const char *key, char *out, size_t outlen);

/* ---- a background writer ------------------------------------------------------------ */

#define CL_WRITER_MAX 100000

struct cl_writer_stats {
    unsigned attempted; /* puts "<prefix>-0" .. "<prefix>-(attempted-1)" */
    unsigned ok;
    unsigned failed;
    char first_error[256];
    const unsigned char *acked; /* acked[k]: put k was acknowledged (harness-owned) */
};

/* Starts a thread that puts kind "itest", names "<prefix>-<k>" (value = the name)
 * through a client of node @i (failing over like any client), one after another,
 * until cl_writer_stop. Teardown stops it too. */
void cl_writer_start(int i, const char *prefix);
void cl_writer_stop(struct cl_writer_stats *st);

/* ---- daemons next to the cluster (tests/lib/agent_proc.h, tests/lib/proxy_proc.h) ---- */

/* A raftport process a test started: its pid (0: not running) and its last wait status. */
struct cl_daemon {
    pid_t pid;
    int last_status;
};
/* Starts `$RP_BUILD/raftport start @role -c @cfg` plus @args (NULL-terminated; may be
 * NULL) with @env ("NAME=VALUE", NULL-terminated; may be NULL) added to its
 * environment, stdout and stderr appended to @log after a harness line naming @name.
 * It dies with the test process. */
pid_t cl_spawn_daemon(struct cl_daemon *d, const char *role, const char *cfg, const char *log,
                      const char *name, const char *const *args, const char *const *env);
bool cl_daemon_alive(struct cl_daemon *d);
void cl_daemon_kill9(struct cl_daemon *d);
/* SIGTERM, then the wait status within @timeout_ms (-1: killed after the timeout). */
int cl_daemon_term(struct cl_daemon *d, int timeout_ms);

#endif
