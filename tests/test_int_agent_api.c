/* tests/test_int_agent_api.c: the auth API node agents call (auth/agents.c) against
 * real clusters: heartbeat and presence, emit_events, renew_host, and what
 * `tctl nodes ls` makes of the presence resources.
 *
 * Node identities are made the way an agent makes its own: a node token and the
 * real join method (cl_join_node). */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(agent_api, .init = cluster_setup, .fini = cluster_teardown, .timeout = 180);

/* ---- helpers ---------------------------------------------------------------------------- */

struct node_opts {
    const char *name;      /* metadata.name; NULL: the node's host id */
    const char *kind;      /* NULL: "node" */
    const char *addr;      /* NULL: 127.0.0.1:3022 */
    const char *host_cert; /* NULL: the certificate join issued */
};

/* The node resource @n publishes: static labels env=test and team=infra, a command
 * label arch, its host key and certificate. */
static void node_res(const struct cl_node_id *n, const struct node_opts *o, struct rp_buf *out)
{
    msgpack_packer pk;
    struct rp_mp_map m, md, labels, spec, cl, arch;
    rp_buf_init(out);
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "kind", o && o->kind ? o->kind : "node");
    rp_mp_map_str(&m, "version", "v2");
    rp_mp_map_str(&m, "sub_kind", "teleport");
    rp_mp_map_begin_map(&m, "metadata", &md);
    rp_mp_map_str(&md, "name", o && o->name ? o->name : n->host_id);
    rp_mp_map_begin_map(&md, "labels", &labels);
    rp_mp_map_str(&labels, "env", "test");
    rp_mp_map_str(&labels, "team", "infra");
    rp_mp_map_end(&labels);
    rp_mp_map_end(&md);
    rp_mp_map_begin_map(&m, "spec", &spec);
    rp_mp_map_str(&spec, "addr", o && o->addr ? o->addr : "127.0.0.1:3022");
    rp_mp_map_str(&spec, "hostname", n->nodename);
    rp_mp_map_str(&spec, "version", "0.1.0");
    rp_mp_map_begin_map(&spec, "cmd_labels", &cl);
    rp_mp_map_begin_map(&cl, "arch", &arch);
    rp_mp_map_str(&arch, "period", "1m0s");
    msgpack_packer *a = rp_mp_map_key(&arch, "command");
    msgpack_pack_array(a, 2);
    rp_mp_pack_str(a, "uname");
    rp_mp_pack_str(a, "-m");
    rp_mp_map_str(&arch, "result", "x86_64");
    rp_mp_map_end(&arch);
    rp_mp_map_end(&cl);
    rp_mp_map_str(&spec, "host_key", n->ssh_pub);
    rp_mp_map_str(&spec, "host_cert", o && o->host_cert ? o->host_cert : n->ssh_cert);
    rp_mp_map_end(&spec);
    rp_mp_map_end(&m);
}

static int heartbeat(struct auth_client *c, const struct cl_node_id *n, const struct node_opts *o,
                     uint64_t ttl_ms, uint64_t *rev, uint64_t *expires)
{
    struct rp_buf res;
    node_res(n, o, &res);
    int rv = auth_client_heartbeat(c, res.data, res.len, ttl_ms, rev, expires);
    rp_buf_free(&res);
    return rv;
}

/* The JSON object of `tctl nodes ls --format=json` on node 1 whose name is @host_id;
 * NULL if it is not listed. *@all holds the parsed document (cl_json_free it). */
static const struct cl_json *listed_node(const char *host_id, struct cl_json **all)
{
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "nodes", "ls", "--format=json", NULL), 0, "%s", out);
    *all = cl_json_parse(out);
    cr_assert_not_null(*all, "not JSON: %s", out);
    free(out);
    cr_assert_eq((*all)->type, CLJ_ARR);
    for (size_t i = 0; i < (*all)->n; i++)
        if (strcmp(cl_json_str(&(*all)->items[i], "name"), host_id) == 0)
            return &(*all)->items[i];
    return NULL;
}

struct absent_arg {
    struct auth_client *admin;
    const char *host_id;
};

static bool node_absent(void *arg)
{
    struct absent_arg *a = arg;
    struct auth_reply r = {0};
    int rv = auth_client_get(a->admin, "node", a->host_id, 0, &r, NULL, NULL);
    auth_reply_free(&r);
    return rv == RP_ENOTFOUND;
}

/* An event of type @type in the audit log whose field @key is @val (polled: denials are
 * audited without waiting). */
struct event_arg {
    struct auth_client *admin;
    const char *type, *key, *val, *key2, *val2;
};

static bool event_present(void *arg)
{
    struct event_arg *a = arg;
    struct auth_events_query q = {.type = a->type, .limit = 1000, .newest_first = true};
    struct auth_reply r = {0};
    const msgpack_object *items;
    bool found = false;
    if (auth_client_events(a->admin, &q, &r, &items) == 0) {
        for (uint32_t i = 0; i < items->via.array.size && !found; i++) {
            const msgpack_object *e = &items->via.array.ptr[i];
            found = rp_mp_str_eq(rp_mp_get(e, a->key), a->val) &&
                    (a->key2 == NULL || rp_mp_str_eq(rp_mp_get(e, a->key2), a->val2));
        }
    }
    auth_reply_free(&r);
    return found;
}

/* ---- heartbeat and presence ------------------------------------------------------------- */

Test(agent_api, a_node_heartbeats_its_own_resource_and_tctl_lists_it_with_labels)
{
    cluster_start(1);
    struct cl_node_id n;
    cl_join_node(1, NULL, "web-1", &n);
    struct auth_client *c = cl_node_client(&n, 1);
    uint64_t rev = 0, expires = 0, before = rp_now_ms();
    cr_assert_eq(heartbeat(c, &n, NULL, 60000, &rev, &expires), 0, "%s", rp_errmsg());
    cr_expect_gt(rev, 0);
    cr_expect(expires >= before + 60000 && expires <= rp_now_ms() + 60000,
              "expires %llu is not now + ttl", (unsigned long long)expires);

    struct cl_json *all;
    const struct cl_json *j = listed_node(n.host_id, &all);
    cr_assert_not_null(j, "node %s is not listed", n.host_id);
    cr_expect_str_eq(cl_json_str(j, "hostname"), "web-1");
    cr_expect_str_eq(cl_json_str(j, "addr"), "127.0.0.1:3022");
    cr_expect_str_eq(cl_json_str(j, "version"), "0.1.0");
    const struct cl_json *labels = cl_json_get(j, "labels");
    cr_assert_not_null(labels);
    cr_expect_str_eq(cl_json_str(labels, "env"), "test");
    cr_expect_str_eq(cl_json_str(labels, "team"), "infra");
    cr_expect_str_eq(cl_json_str(labels, "arch"), "x86_64", "command labels are listed too");
    cl_json_free(all);

    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "nodes", "ls", NULL), 0);
    cr_expect(strstr(out, "web-1") && strstr(out, n.host_id) &&
                  strstr(out, "arch=x86_64,env=test,team=infra"),
              "text listing: %s", out);
    free(out);

    /* A malformed resource is refused, naming the field. */
    struct node_opts bad = {.addr = "no-port"};
    cr_expect_eq(heartbeat(c, &n, &bad, 60000, NULL, NULL), RP_EINVAL);
    cr_expect(strstr(rp_errmsg(), "spec.addr") != NULL, "%s", rp_errmsg());
    auth_client_free(c);
    cl_node_id_free(&n);
    cluster_pass();
}

Test(agent_api, a_node_cannot_heartbeat_another_hosts_name_and_the_denial_is_audited)
{
    cluster_start(1);
    struct cl_node_id n;
    cl_join_node(1, NULL, "web-1", &n);
    struct auth_client *c = cl_node_client(&n, 1), *admin = node_client(1);
    char other[37];
    cr_assert_eq(rp_uuid_v4(other), 0);
    struct node_opts o = {.name = other};
    cr_assert_eq(heartbeat(c, &n, &o, 60000, NULL, NULL), RP_EDENIED);
    cr_expect(strstr(rp_errmsg(), "may heartbeat only") != NULL, "%s", rp_errmsg());
    struct node_opts proxy = {.kind = "proxy"};
    cr_expect_eq(heartbeat(c, &n, &proxy, 60000, NULL, NULL), RP_EDENIED,
                 "a Node identity must not publish a proxy");

    struct auth_reply r = {0};
    cr_expect_eq(auth_client_get(admin, "node", other, 0, &r, NULL, NULL), RP_ENOTFOUND);
    auth_reply_free(&r);
    struct event_arg ev = {admin, "auth", "user", n.host_id, "method", "heartbeat"};
    cr_expect(wait_until(10000, event_present, &ev), "no audit event for the refused heartbeat");
    auth_client_free(c);
    auth_client_free(admin);
    cl_node_id_free(&n);
    cluster_pass();
}

Test(agent_api, a_node_that_stops_heartbeating_disappears_after_its_ttl)
{
    cluster_start(1);
    struct cl_node_id n;
    cl_join_node(1, NULL, "web-1", &n);
    struct auth_client *c = cl_node_client(&n, 1), *admin = node_client(1);
    uint64_t expires = 0;
    /* Asked for 1 s, given the floor of 3 s. */
    cr_assert_eq(heartbeat(c, &n, NULL, 1000, NULL, &expires), 0, "%s", rp_errmsg());
    uint64_t sent = rp_now_ms();
    cr_expect(expires >= sent + 2000 && expires <= sent + 3000, "ttl not clamped to 3 s");
    struct absent_arg a = {admin, n.host_id};
    cr_expect(!node_absent(&a), "the node is not there after its heartbeat");
    cr_assert(wait_until(15000, node_absent, &a), "the node is still there 15 s after its ttl");
    cr_expect_geq(rp_now_ms(), expires, "the node vanished before its expiry");
    struct cl_json *all;
    cr_expect_null(listed_node(n.host_id, &all), "tctl nodes ls lists an expired node");
    cl_json_free(all);
    auth_client_free(c);
    auth_client_free(admin);
    cl_node_id_free(&n);
    cluster_pass();
}

/* ---- coalescing ---------------------------------------------------------------------------- */

#define COALESCE_NODES 100
#define COALESCE_PER_NODE 5

struct hb_worker {
    pthread_t th;
    struct cl_node_id *n;
    struct auth_client *c;
    pthread_barrier_t *start;
    int failures;
    unsigned sent;
    char err[256];
};

static void *hb_worker_main(void *arg)
{
    struct hb_worker *w = arg;
    pthread_barrier_wait(w->start);
    for (int k = 0; k < COALESCE_PER_NODE; k++) {
        if (heartbeat(w->c, w->n, NULL, 3600000, NULL, NULL) != 0) {
            w->failures++;
            snprintf(w->err, sizeof w->err, "%s", rp_errmsg());
        }
    }
    return NULL;
}

/* Steady state: each node heartbeats every PACED_PERIOD_MS +-10 % for PACED_MS, so
 * the 100 nodes send ~167 a second, what 10,000 agents heartbeating once a minute
 * send (docs/presence.md, "Sizing"). */
#define PACED_PERIOD_MS 600
#define PACED_MS 6000

static void *hb_paced_main(void *arg)
{
    struct hb_worker *w = arg;
    pthread_barrier_wait(w->start);
    uint64_t end = rp_mono_ms() + PACED_MS;
    /* A random phase, then the period with jitter, as agents do. */
    cl_sleep_ms((unsigned)(rp_rand_u64() % PACED_PERIOD_MS));
    while (rp_mono_ms() < end) {
        uint64_t t = rp_mono_ms();
        if (heartbeat(w->c, w->n, NULL, 3600000, NULL, NULL) != 0) {
            w->failures++;
            snprintf(w->err, sizeof w->err, "%s", rp_errmsg());
        }
        w->sent++;
        unsigned period =
            PACED_PERIOD_MS * 9 / 10 + (unsigned)(rp_rand_u64() % (PACED_PERIOD_MS / 5 + 1));
        uint64_t spent = rp_mono_ms() - t;
        if (spent < period)
            cl_sleep_ms((unsigned)(period - spent));
    }
    return NULL;
}

static uint64_t last_index(struct auth_client *c)
{
    struct auth_member_status ms;
    cr_assert_eq(auth_client_member_status(c, &ms), 0, "%s", rp_errmsg());
    return ms.last_index;
}

Test(agent_api, concurrent_heartbeats_share_raft_entries)
{
    cluster_start(3);
    int leader = node_by_raft_id(cluster_leader_id());
    cr_assert_gt(leader, 0);
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    static struct cl_node_id nodes[COALESCE_NODES];
    static struct hb_worker w[COALESCE_NODES];
    pthread_barrier_t start;
    pthread_barrier_init(&start, NULL, COALESCE_NODES + 1);
    for (int i = 0; i < COALESCE_NODES; i++) {
        char name[32];
        snprintf(name, sizeof name, "node-%03d", i);
        cl_join_node(leader, token, name, &nodes[i]);
        w[i] = (struct hb_worker){.n = &nodes[i], .start = &start};
        w[i].c = cl_node_client(&nodes[i], leader);
        /* One at a time first: every connection is open before the burst. */
        cr_assert_eq(heartbeat(w[i].c, &nodes[i], NULL, 3600000, NULL, NULL), 0, "%s", rp_errmsg());
    }
    struct auth_client *admin = node_client(leader);
    cl_sleep_ms(1000); /* the joins' audit batches settle */
    uint64_t before = last_index(admin);
    for (int i = 0; i < COALESCE_NODES; i++)
        cr_assert_eq(pthread_create(&w[i].th, NULL, hb_worker_main, &w[i]), 0);
    uint64_t t0 = rp_mono_ms();
    pthread_barrier_wait(&start);
    int failures = 0;
    for (int i = 0; i < COALESCE_NODES; i++) {
        pthread_join(w[i].th, NULL);
        if (w[i].failures)
            cr_expect_eq(w[i].failures, 0, "node %d: %s", i, w[i].err);
        failures += w[i].failures;
    }
    uint64_t elapsed = rp_mono_ms() - t0;
    uint64_t entries = last_index(admin) - before;
    unsigned total = COALESCE_NODES * COALESCE_PER_NODE;
    fprintf(stderr,
            "coalescing: %u heartbeats from %d nodes (%d at a time) in %llu ms took %llu Raft "
            "entries (%.1f heartbeats per entry)\n",
            total, COALESCE_NODES, COALESCE_NODES, (unsigned long long)elapsed,
            (unsigned long long)entries, entries ? (double)total / (double)entries : 0.0);
    cr_expect_eq(failures, 0);
    cr_expect_lt(entries, total / 2, "%llu entries for %u heartbeats", (unsigned long long)entries,
                 total);

    before = last_index(admin);
    for (int i = 0; i < COALESCE_NODES; i++) {
        w[i].failures = 0;
        cr_assert_eq(pthread_create(&w[i].th, NULL, hb_paced_main, &w[i]), 0);
    }
    pthread_barrier_wait(&start);
    t0 = rp_mono_ms();
    unsigned sent = 0;
    failures = 0;
    for (int i = 0; i < COALESCE_NODES; i++) {
        pthread_join(w[i].th, NULL);
        sent += w[i].sent;
        failures += w[i].failures;
    }
    elapsed = rp_mono_ms() - t0;
    entries = last_index(admin) - before;
    fprintf(stderr,
            "steady state: %u heartbeats in %llu ms (%.0f/s) took %llu Raft entries (%.0f/s, "
            "%.1f heartbeats per entry)\n",
            sent, (unsigned long long)elapsed, sent * 1000.0 / (double)elapsed,
            (unsigned long long)entries, entries * 1000.0 / (double)elapsed,
            entries ? (double)sent / (double)entries : 0.0);
    cr_expect_eq(failures, 0);
    cr_expect_lt(entries, sent, "no heartbeat shared an entry at ~167 a second");
    for (int i = 0; i < COALESCE_NODES; i++) {
        auth_client_free(w[i].c);
        cl_node_id_free(&nodes[i]);
    }
    pthread_barrier_destroy(&start);
    auth_client_free(admin);
    cluster_pass();
}

/* ---- emit_events ----------------------------------------------------------------------------- */

static void pack_event(msgpack_packer *pk, const char *type, const char *sid, const char *forged)
{
    struct rp_mp_map m;
    rp_mp_map_begin(pk, &m);
    rp_mp_map_str(&m, "event", type);
    rp_mp_map_u64(&m, "time", rp_now_ms());
    rp_mp_map_str(&m, "user", "alice");
    rp_mp_map_str(&m, "login", "root");
    rp_mp_map_str(&m, "sid", sid);
    rp_mp_map_str(&m, "server_id", forged);
    rp_mp_map_end(&m);
}

Test(agent_api, emit_events_sets_server_id_and_refuses_a_type_a_node_does_not_emit)
{
    cluster_start(1);
    struct cl_node_id n;
    cl_join_node(1, NULL, "web-1", &n);
    struct auth_client *c = cl_node_client(&n, 1), *admin = node_client(1);
    char sid[37];
    cr_assert_eq(rp_uuid_v4(sid), 0);
    struct rp_buf evs;
    msgpack_packer pk;
    rp_buf_init(&evs);
    rp_mp_packer_init(&pk, &evs);
    msgpack_pack_array(&pk, 2);
    pack_event(&pk, "session.start", sid, "some-other-host");
    pack_event(&pk, "session.end", sid, "some-other-host");
    uint64_t rev = 0;
    cr_assert_eq(auth_client_emit_events(c, evs.data, evs.len, &rev), 0, "%s", rp_errmsg());
    cr_expect_gt(rev, 0);

    struct auth_events_query q = {.sid = sid};
    struct auth_reply r = {0};
    const msgpack_object *items;
    cr_assert_eq(auth_client_events(admin, &q, &r, &items), 0, "%s", rp_errmsg());
    cr_assert_eq(items->via.array.size, 2);
    for (uint32_t i = 0; i < 2; i++) {
        const msgpack_object *e = &items->via.array.ptr[i];
        cr_expect(rp_mp_str_eq(rp_mp_get(e, "server_id"), n.host_id),
                  "server_id is not the caller's host id");
        cr_expect(rp_mp_get(e, "uid") != NULL && rp_mp_get(e, "code") != NULL);
    }
    for (uint32_t i = 0; i < 2; i++) {
        const msgpack_object *e = &items->via.array.ptr[i];
        bool start = rp_mp_str_eq(rp_mp_get(e, "event"), "session.start");
        cr_expect(rp_mp_str_eq(rp_mp_get(e, "code"), start ? "T2000I" : "T2004I"),
                  "the code of a node's event is Teleport's for its type");
    }
    auth_reply_free(&r);

    /* One event of a type a node does not emit refuses the whole call. */
    char sid2[37];
    cr_assert_eq(rp_uuid_v4(sid2), 0);
    rp_buf_reset(&evs);
    msgpack_pack_array(&pk, 2);
    pack_event(&pk, "exec", sid2, "x");
    pack_event(&pk, "user.login", sid2, "x");
    cr_expect_eq(auth_client_emit_events(c, evs.data, evs.len, NULL), RP_EINVAL);
    cr_expect(strstr(rp_errmsg(), "events[1].event") != NULL, "%s", rp_errmsg());
    q.sid = sid2;
    memset(&r, 0, sizeof r);
    cr_assert_eq(auth_client_events(admin, &q, &r, &items), 0, "%s", rp_errmsg());
    cr_expect_eq(items->via.array.size, 0, "a refused call appended events");
    auth_reply_free(&r);

    /* At most 256 events, each at most 64 KiB encoded. */
    rp_buf_reset(&evs);
    msgpack_pack_array(&pk, 257);
    for (int i = 0; i < 257; i++)
        pack_event(&pk, "exec", sid2, "x");
    cr_expect_eq(auth_client_emit_events(c, evs.data, evs.len, NULL), RP_EINVAL,
                 "257 events were taken");
    rp_buf_reset(&evs);
    msgpack_pack_array(&pk, 1);
    struct rp_mp_map big;
    rp_mp_map_begin(&pk, &big);
    rp_mp_map_str(&big, "event", "exec");
    rp_mp_map_u64(&big, "time", rp_now_ms());
    rp_mp_map_str(&big, "sid", sid2);
    char *blob = malloc(70000);
    memset(blob, 'a', 69999);
    blob[69999] = '\0';
    rp_mp_map_str(&big, "command", blob);
    rp_mp_map_end(&big);
    free(blob);
    cr_expect_eq(auth_client_emit_events(c, evs.data, evs.len, NULL), RP_ETOOBIG,
                 "an event of 70 kB was taken");
    cr_expect(strstr(rp_errmsg(), "events[0]") != NULL, "%s", rp_errmsg());
    memset(&r, 0, sizeof r);
    cr_assert_eq(auth_client_events(admin, &q, &r, &items), 0, "%s", rp_errmsg());
    cr_expect_eq(items->via.array.size, 0, "a refused call appended events");
    auth_reply_free(&r);
    rp_buf_free(&evs);
    auth_client_free(c);
    auth_client_free(admin);
    cl_node_id_free(&n);
    cluster_pass();
}

/* ---- renew_host
 * ---------------------------------------------------------------------------------- */

Test(agent_api, renew_host_gives_certificates_for_the_callers_own_host_only)
{
    cluster_start(3);
    struct cl_node_id n, other;
    cl_join_node(1, NULL, "web-1", &n);
    cl_join_node(1, NULL, "web-2", &other);
    /* Through a follower: the leader learns the node name from what the follower saw. */
    int leader = node_by_raft_id(cluster_leader_id());
    int follower = node_any_running(leader);
    struct auth_client *c = cl_node_client(&n, follower);

    EVP_PKEY *tls_key = rp_tls_keygen(), *ssh_key = NULL;
    char *tls_pub = NULL, *ssh_pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(tls_key, &tls_pub), 0);
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &ssh_key), 0);
    cr_assert_eq(rp_ssh_pubkey_format(ssh_key, NULL, &ssh_pub), 0);

    /* Naming another host in the request changes nothing: there is no such argument,
     * the certificates are for the caller. */
    struct rp_buf req;
    msgpack_packer pk;
    struct rp_mp_map m;
    msgpack_unpacked u;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "renew_host");
    rp_mp_map_str(&m, "ssh_pubkey", ssh_pub);
    rp_mp_map_str(&m, "tls_pubkey", tls_pub);
    rp_mp_map_str(&m, "host_id", other.host_id);
    rp_mp_map_str(&m, "nodename", "web-2");
    rp_mp_map_end(&m);
    cr_assert_eq(auth_client_call(c, req.data, req.len, &u), 0, "%s", rp_errmsg());
    char tls_cert[8192], ssh_cert[8192], ca_cert[8192], host_ca[8192], user_ca[8192];
    cl_mp_str(&u.data, "tls_cert", tls_cert, sizeof tls_cert);
    cl_mp_str(&u.data, "ssh_cert", ssh_cert, sizeof ssh_cert);
    cl_mp_str(&u.data, "ca_cert", ca_cert, sizeof ca_cert);
    cl_mp_str(&u.data, "host_ca", host_ca, sizeof host_ca);
    cl_mp_str(&u.data, "user_ca", user_ca, sizeof user_ca);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&req);
    cr_assert(tls_cert[0] && ssh_cert[0] && ca_cert[0] && host_ca[0] && user_ca[0]);

    X509 *x = NULL;
    struct rp_identity id;
    cr_assert_eq(rp_tls_cert_from_pem(tls_cert, strlen(tls_cert), &x), 0);
    cr_assert_eq(rp_identity_from_cert(x, &id), 0, "%s", rp_errmsg());
    cr_expect_str_eq(id.name, n.host_id);
    cr_expect_str_eq(id.host_id, n.host_id);
    cr_expect_eq(id.system_role, RP_SYS_NODE);
    rp_identity_free(&id);

    struct rp_ssh_cert sc;
    EVP_PKEY *hca = NULL;
    cr_assert_eq(rp_ssh_cert_parse_line(ssh_cert, &sc, NULL), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_pubkey_parse(host_ca, &hca, NULL), 0, "%s", rp_errmsg());
    uint64_t now = rp_now_ms() / 1000;
    cr_expect_eq(rp_ssh_cert_check(&sc, hca, RP_SSH_CERT_HOST, now, n.host_id, NULL), 0, "%s",
                 rp_errmsg());
    cr_expect_eq(rp_ssh_cert_check(&sc, hca, RP_SSH_CERT_HOST, now, "web-1", NULL), 0,
                 "the node name of the join is kept: %s", rp_errmsg());
    cr_expect_neq(rp_ssh_cert_check(&sc, hca, RP_SSH_CERT_HOST, now, other.host_id, NULL), 0,
                  "a renewed certificate names another host");
    cr_expect_neq(rp_ssh_cert_check(&sc, hca, RP_SSH_CERT_HOST, now, "web-2", NULL), 0);
    cr_expect(EVP_PKEY_eq(sc.key, ssh_key) == 1, "the certificate is not for the new key");
    rp_ssh_cert_free(&sc);
    EVP_PKEY_free(hca);

    /* The renewed identity is a working Node identity of the same host. */
    X509 *ca = NULL;
    cr_assert_eq(rp_tls_cert_from_pem(ca_cert, strlen(ca_cert), &ca), 0);
    struct cl_node_id renewed = n;
    renewed.ctx = rp_tls_client_ctx(ca, x, tls_key);
    cr_assert_not_null(renewed.ctx);
    struct auth_client *rc = cl_node_client(&renewed, follower);
    cr_assert_eq(heartbeat(rc, &n, NULL, 60000, NULL, NULL), 0, "%s", rp_errmsg());
    auth_client_free(rc);
    SSL_CTX_free(renewed.ctx);
    X509_free(ca);
    X509_free(x);
    EVP_PKEY_free(tls_key);
    EVP_PKEY_free(ssh_key);
    free(tls_pub);
    free(ssh_pub);
    auth_client_free(c);
    cl_node_id_free(&n);
    cl_node_id_free(&other);
    cluster_pass();
}

/* ---- tctl nodes ls --format=known_hosts
 * ----------------------------------------------------------- */

/* A host certificate for @n's host key signed by a CA of our own. */
static char *forged_host_cert(const struct cl_node_id *n)
{
    EVP_PKEY *ca = NULL;
    struct rp_buf blob;
    char *line = NULL, *principals[] = {(char *)n->host_id, (char *)n->nodename};
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &ca), 0);
    uint64_t now = rp_now_ms() / 1000;
    struct rp_ssh_cert c = {.type = RP_SSH_CERT_HOST,
                            .key = n->ssh_key,
                            .key_id = (char *)n->host_id,
                            .principals = principals,
                            .n_principals = 2,
                            .valid_after = now - 60,
                            .valid_before = now + 3600};
    rp_buf_init(&blob);
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_format(blob.data, blob.len, NULL, &line), 0);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    return line;
}

Test(agent_api, known_hosts_lists_nodes_whose_certificate_verifies_and_skips_the_others)
{
    cluster_start(1);
    struct cl_node_id good, bad, plain;
    cl_join_node(1, NULL, "good-1", &good);
    cl_join_node(1, NULL, "bad-1", &bad);
    cl_join_node(1, NULL, "plain-1", &plain);
    struct auth_client *cg = cl_node_client(&good, 1), *cb = cl_node_client(&bad, 1),
                       *cp = cl_node_client(&plain, 1);
    char *forged = forged_host_cert(&bad);
    struct node_opts og = {.addr = "127.0.0.1:3022"},
                     ob = {.addr = "127.0.0.1:3023", .host_cert = forged},
                     op = {.addr = "127.0.0.2:22"};
    cr_assert_eq(heartbeat(cg, &good, &og, 60000, NULL, NULL), 0, "%s", rp_errmsg());
    cr_assert_eq(heartbeat(cb, &bad, &ob, 60000, NULL, NULL), 0,
                 "the server checks the shape, not the signer: %s", rp_errmsg());
    cr_assert_eq(heartbeat(cp, &plain, &op, 60000, NULL, NULL), 0, "%s", rp_errmsg());

    char cfg[600], tctl[600];
    snprintf(cfg, sizeof cfg, "%s", CL->nodes[1].cfg);
    snprintf(tctl, sizeof tctl, "%s/tctl", CL->build);
    char *argv[] = {tctl, "-c", cfg, "nodes", "ls", "--format=known_hosts", NULL};
    struct cl_run run;
    cl_run_argv(argv, 20000, &run);
    cr_assert_eq(run.status, 0, "%s", run.err);

    /* The exact lines: hostname, host id, address (bracketed unless port 22), key. */
    char want_good[1024], want_plain[1024];
    snprintf(want_good, sizeof want_good, "good-1,%s,[127.0.0.1]:3022 %s\n", good.host_id,
             good.ssh_pub);
    snprintf(want_plain, sizeof want_plain, "plain-1,%s,127.0.0.2 %s\n", plain.host_id,
             plain.ssh_pub);
    cr_expect(strstr(run.out, want_good) != NULL, "want %s in:\n%s", want_good, run.out);
    cr_expect(strstr(run.out, want_plain) != NULL, "want %s in:\n%s", want_plain, run.out);
    cr_expect(strstr(run.out, bad.host_id) == NULL, "a node with a forged certificate is listed");
    cr_expect(strstr(run.err, "bad-1") != NULL && strstr(run.err, bad.host_id) != NULL,
              "the skipped node is not named on stderr: %s", run.err);

    /* Stock OpenSSH reads the file. */
    char path[600];
    cl_write_file("known_hosts", run.out, path, sizeof path);
    char *f1[] = {"/usr/bin/ssh-keygen", "-F", "[127.0.0.1]:3022", "-f", path, NULL};
    struct cl_run k;
    cl_run_argv(f1, 10000, &k);
    cr_expect_eq(k.status, 0, "ssh-keygen -F [127.0.0.1]:3022: %s%s", k.out, k.err);
    cr_expect(strstr(k.out, "good-1") != NULL, "%s", k.out);
    cl_run_free(&k);
    char *f2[] = {"/usr/bin/ssh-keygen", "-F", "[127.0.0.1]:3023", "-f", path, NULL};
    cl_run_argv(f2, 10000, &k);
    cr_expect_neq(k.status, 0, "the forged node's address is known: %s", k.out);
    cl_run_free(&k);
    char *f3[] = {"/usr/bin/ssh-keygen", "-F", good.host_id, "-f", path, NULL};
    cl_run_argv(f3, 10000, &k);
    cr_expect_eq(k.status, 0, "ssh-keygen -F <host id>: %s%s", k.out, k.err);
    cl_run_free(&k);

    cl_run_free(&run);
    free(forged);
    auth_client_free(cg);
    auth_client_free(cb);
    auth_client_free(cp);
    cl_node_id_free(&good);
    cl_node_id_free(&bad);
    cl_node_id_free(&plain);
    cluster_pass();
}

/* ---- proxies
 * ------------------------------------------------------------------------------------------ */

Test(agent_api, a_proxy_heartbeats_kind_proxy_only_and_renews_its_own_certificates)
{
    cluster_start(1);
    struct cl_node_id px;
    cl_join_host(1, "proxy", NULL, "proxy-1", &px);
    struct auth_client *c = cl_node_client(&px, 1), *admin = node_client(1);
    struct node_opts as_proxy = {.kind = "proxy", .addr = "127.0.0.1:3080"};
    cr_assert_eq(heartbeat(c, &px, &as_proxy, 60000, NULL, NULL), 0, "%s", rp_errmsg());
    struct auth_reply r = {0};
    cr_expect_eq(auth_client_get(admin, "proxy", px.host_id, 0, &r, NULL, NULL), 0, "%s",
                 rp_errmsg());
    auth_reply_free(&r);
    cr_expect_eq(heartbeat(c, &px, NULL, 60000, NULL, NULL), RP_EDENIED,
                 "a proxy published a node resource");

    /* Straight to the leader: the node name comes from the connection's certificate. */
    EVP_PKEY *k = rp_tls_keygen();
    char *tls_pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &tls_pub), 0);
    struct auth_host_certs certs;
    cr_assert_eq(auth_client_renew_host(c, px.ssh_pub, tls_pub, NULL, 0, &certs), 0, "%s",
                 rp_errmsg());
    X509 *x = NULL;
    struct rp_identity id;
    cr_assert_eq(rp_tls_cert_from_pem(certs.tls_cert, strlen(certs.tls_cert), &x), 0);
    cr_assert_eq(rp_identity_from_cert(x, &id), 0, "%s", rp_errmsg());
    cr_expect_eq(id.system_role, RP_SYS_PROXY);
    cr_expect_str_eq(id.host_id, px.host_id);
    rp_identity_free(&id);
    X509_free(x);
    struct rp_ssh_cert sc;
    cr_assert_eq(rp_ssh_cert_parse_line(certs.ssh_cert, &sc, NULL), 0, "%s", rp_errmsg());
    bool named = false;
    for (size_t i = 0; i < sc.n_principals; i++)
        named = named || strcmp(sc.principals[i], "proxy-1") == 0;
    cr_expect(named, "the renewed SSH certificate lacks the node name of the join");
    cr_expect_str_eq(rp_ssh_cert_opt_find(sc.extensions, sc.n_extensions, "x-teleport-role"),
                     "Proxy");
    rp_ssh_cert_free(&sc);
    auth_host_certs_free(&certs);
    free(tls_pub);
    EVP_PKEY_free(k);
    auth_client_free(c);
    auth_client_free(admin);
    cl_node_id_free(&px);
    cluster_pass();
}

/* ---- who may call
 * ---------------------------------------------------------------------------------- */

Test(agent_api, a_user_cannot_call_the_agent_methods)
{
    cluster_start(1);
    cr_assert(cl_wait_presets(20000));
    char *out = NULL, path[600], crt[700], key[700], cas[700];
    cr_assert_eq(run_tctl(1, &out, "users", "add", "ed", "--roles=editor", NULL), 0, "%s", out);
    free(out);
    snprintf(path, sizeof path, "%s/ed", CL->dir);
    cr_assert_eq(run_tctl(1, &out, "auth", "sign", "--user=ed", "--format=tls", "-o", path, NULL),
                 0, "%s", out);
    free(out);
    snprintf(crt, sizeof crt, "%s.crt", path);
    snprintf(key, sizeof key, "%s.key", path);
    snprintf(cas, sizeof cas, "%s.cas", path);
    SSL_CTX *ctx = NULL;
    cr_assert_eq(auth_load_client_ctx(crt, key, cas, &ctx), 0, "%s", rp_errmsg());
    const char *addrs[1] = {CL->nodes[1].api_addr};
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, ctx, addrs, 1), 0);
    SSL_CTX_free(ctx);

    /* A node resource named like the user, and one named like a host: both refused. */
    struct cl_node_id n;
    cl_join_node(1, NULL, "web-1", &n);
    cr_expect_eq(heartbeat(c, &n, NULL, 60000, NULL, NULL), RP_EDENIED, "%s", rp_errmsg());
    struct node_opts as_user = {.name = "ed"};
    cr_expect_eq(heartbeat(c, &n, &as_user, 60000, NULL, NULL), RP_EDENIED);
    struct rp_buf evs;
    msgpack_packer pk;
    rp_buf_init(&evs);
    rp_mp_packer_init(&pk, &evs);
    msgpack_pack_array(&pk, 1);
    pack_event(&pk, "exec", "0d6fd2bc-7a5b-4f8c-9a0a-6f0f2b3f4a11", "x");
    cr_expect_eq(auth_client_emit_events(c, evs.data, evs.len, NULL), RP_EDENIED);
    rp_buf_free(&evs);
    struct auth_host_certs certs;
    EVP_PKEY *k = rp_tls_keygen();
    char *tls_pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &tls_pub), 0);
    cr_expect_eq(auth_client_renew_host(c, n.ssh_pub, tls_pub, NULL, 0, &certs), RP_EDENIED);
    free(tls_pub);
    EVP_PKEY_free(k);
    auth_client_free(c);
    cl_node_id_free(&n);
    cluster_pass();
}
