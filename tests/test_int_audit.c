/* tests/test_int_audit.c: the replicated audit log against real daemons.
 *
 * Events are written through Raft, attributed to the caller even when a
 * follower forwarded the request, replicated to every server (checked with
 * stale reads, server by server) across a leader change, and every denial is
 * an event too. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "tests/lib/cluster.h"

TestSuite(int_audit, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

/* `tctl events ls --format=json --stale ARGS` on node @i, parsed. */
static struct cl_json *events_on(int i, const char *a1, const char *a2)
{
    char *out = NULL;
    int rv = run_tctl(i, &out, "events", "ls", "--format=json", "--stale", a1, a2, NULL);
    cr_assert_eq(rv, 0, "tctl events ls on node %d", i);
    struct cl_json *j = cl_json_parse(out);
    cr_assert(j && j->type == CLJ_ARR, "events ls output is not a JSON array: %s", out);
    free(out);
    return j;
}

/* The uids of the join_token.create events for node tokens, in order, "," joined. */
static void node_token_uids(int i, char *out, size_t n, unsigned *count)
{
    struct cl_json *j = events_on(i, "--type=join_token.create", NULL);
    size_t len = 0;
    *count = 0;
    out[0] = '\0';
    for (size_t k = 0; k < j->n; k++) {
        const struct cl_json *ev = &j->items[k];
        const struct cl_json *roles = cl_json_get(ev, "roles");
        if (!roles || roles->n != 1 || strcmp(roles->items[0].str, "node") != 0)
            continue;
        len += (size_t)snprintf(out + len, n - len, "%s%s", len ? "," : "", cl_json_str(ev, "uid"));
        (*count)++;
    }
    cl_json_free(j);
}

struct want_count {
    int node;
    unsigned n;
};

static bool has_all_tokens(void *arg)
{
    struct want_count *w = arg;
    char uids[4096];
    unsigned c;
    node_token_uids(w->node, uids, sizeof uids, &c);
    return c == w->n;
}

struct new_leader {
    int ask;
    uint64_t old;
};

static bool has_new_leader(void *arg)
{
    struct new_leader *nl = arg;
    uint64_t id = cluster_leader_id_from(nl->ask);
    return id != 0 && id != nl->old;
}

static void add_token(int i)
{
    cr_assert_eq(run_tctl(i, NULL, "tokens", "add", "--type=node", NULL), 0,
                 "tokens add on node %d", i);
}

Test(int_audit, every_event_once_in_order_on_every_server_after_a_leader_change)
{
    cluster_start(3);
    for (int i = 1; i <= 3; i++)
        add_token(i); /* through the leader and through both followers */
    /* Attribution: each event names the admin of the server tctl talked to. */
    struct cl_json *j = events_on(1, "--type=join_token.create", NULL);
    unsigned seen[4] = {0};
    for (size_t k = 0; k < j->n; k++) {
        const char *user = cl_json_str(&j->items[k], "user");
        int who = 0;
        if (sscanf(user, "admin@auth%d", &who) == 1 && who >= 1 && who <= 3)
            seen[who]++;
    }
    cl_json_free(j);
    for (int i = 1; i <= 3; i++)
        cr_assert_geq(seen[i], 1, "no join_token.create attributed to admin@auth%d", i);

    uint64_t leader = cluster_leader_id();
    int li = node_by_raft_id(leader);
    node_kill9(li);
    struct new_leader nl = {node_any_running(li), leader};
    cr_assert(wait_until(20000, has_new_leader, &nl), "no new leader after killing %llu",
              (unsigned long long)leader);
    int a = node_any_running(li), b = 0;
    for (int i = 1; i <= 3; i++)
        if (i != li && i != a)
            b = i;
    for (int k = 0; k < 3; k++) {
        add_token(a);
        add_token(b);
    }
    node_restart(li);
    /* Every server, from its own copy: the same 9 node-token events, in one order. */
    char first[4096] = "";
    for (int i = 1; i <= 3; i++) {
        struct want_count w = {i, 9};
        cr_assert(wait_until(20000, has_all_tokens, &w), "node %d did not get all 9 events", i);
        char uids[4096];
        unsigned c;
        node_token_uids(i, uids, sizeof uids, &c);
        if (i == 1)
            snprintf(first, sizeof first, "%s", uids);
        else
            cr_assert_str_eq(uids, first, "node %d lists the events differently", i);
    }
    /* Times never go backwards in the listing. */
    j = events_on(2, NULL, NULL);
    for (size_t k = 1; k < j->n; k++)
        cr_assert(
            strcmp(cl_json_str(&j->items[k - 1], "time"), cl_json_str(&j->items[k], "time")) <= 0,
            "event %zu is older than event %zu", k, k - 1);
    cl_json_free(j);
    cluster_pass();
}

/* One request without a client certificate; it must be refused. */
static void anonymous_call(int i, const char *method)
{
    struct rp_buf req, ans;
    msgpack_unpacked u;
    rp_buf_init(&req);
    rp_buf_init(&ans);
    cl_req_simple(&req, method);
    node_call_anon(i, &req, &ans, &u);
    cr_assert(rp_mp_str_eq(rp_mp_get(&u.data, "code"), "access_denied"));
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&req);
    rp_buf_free(&ans);
}

struct denial_probe {
    const char *method;
    const char *user;
};

static bool denial_listed(void *arg)
{
    struct denial_probe *p = arg;
    struct cl_json *j = events_on(1, "--type=auth", NULL);
    bool found = false;
    for (size_t k = 0; k < j->n && !found; k++) {
        const struct cl_json *ev = &j->items[k];
        found = strcmp(cl_json_str(ev, "method"), p->method) == 0 &&
                strcmp(cl_json_str(ev, "user"), p->user) == 0 &&
                strcmp(cl_json_str(ev, "code"), "T3007W") == 0;
    }
    cl_json_free(j);
    return found;
}

Test(int_audit, denials_are_audited)
{
    cluster_start(3);
    anonymous_call(2, "status");
    struct denial_probe p = {"status", "anonymous"};
    cr_assert(wait_until(10000, denial_listed, &p), "no auth event for the anonymous status call");

    /* "_as" (acting for another identity) is for auth servers only: an admin trying
     * it is refused and audited under its own name. */
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "token_add");
    rp_mp_pack_str(&pk, "_as");
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "addr", "10.0.0.1:1");
    rp_mp_kv_str(&pk, "name", "someone-else");
    int rv = node_call(1, req.data, req.len, &resp, 0);
    msgpack_unpacked_destroy(&resp);
    rp_buf_free(&req);
    cr_assert_eq(rv, RP_EDENIED, "an admin's _as request: %s", rp_strerror(rv));
    struct denial_probe p2 = {"token_add", "admin@auth1"};
    cr_assert(wait_until(10000, denial_listed, &p2), "no auth event for the refused _as request");
    cluster_pass();
}
