/* tests/test_int_issue.c: user certificate issuance across a leader change.
 *
 * The leader signs without a read barrier: the roles it read count as current only
 * because the certificate's cert.create event then commits in the same term
 * (raft/rp_raft.h, rp_node_read_term). This test gives that rule the case it exists
 * for. Clients hammer sign_user on the leader, the leader is paused (SIGSTOP), the
 * others elect a new leader, the user's roles are changed there, and the old leader
 * is resumed still believing it leads, with requests queued on its connections.
 * No certificate asked for after the change may carry the old role's login, every
 * failure must be one a client retries, and every certificate has its event. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "tests/lib/cluster.h"

TestSuite(int_issue, .init = cluster_setup, .fini = cluster_teardown, .timeout = 180);

#define WORKERS 4
#define MAX_RECORDS 20000

struct record {
    uint64_t start_ms, end_ms;
    int rv;
    char login[32]; /* the certificate's only login when rv == 0 */
};

struct worker {
    pthread_t thread;
    struct auth_client *client;
    struct rp_buf req;
    atomic_bool *stop;
    struct record *recs;
    size_t n;
};

static void build_request(struct rp_buf *out, const char *user)
{
    EVP_PKEY *ssh = NULL, *tls = rp_tls_keygen();
    char *line = NULL, *pem = NULL;
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &ssh), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_pubkey_format(ssh, NULL, &line), 0, "%s", rp_errmsg());
    cr_assert_not_null(tls);
    cr_assert_eq(rp_tls_pubkey_to_pem(tls, &pem), 0, "%s", rp_errmsg());
    msgpack_packer pk;
    rp_buf_init(out);
    rp_mp_packer_init(&pk, out);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "m", "sign_user");
    rp_mp_kv_str(&pk, "user", user);
    rp_mp_kv_str(&pk, "ssh_pubkey", line);
    rp_mp_kv_str(&pk, "tls_pubkey", pem);
    EVP_PKEY_free(ssh);
    EVP_PKEY_free(tls);
    free(line);
    free(pem);
}

/* The logins of the X.509 certificate in an answer, "," joined into @out. */
static int answer_logins(const msgpack_object *ans, char *out, size_t n)
{
    const char *pem;
    size_t len;
    X509 *x = NULL;
    struct rp_identity id;
    if (rp_mp_get_str(ans, "tls_cert", &pem, &len) != 0 || rp_tls_cert_from_pem(pem, len, &x) != 0)
        return RP_EPROTO;
    int rv = rp_identity_from_cert(x, &id);
    X509_free(x);
    if (rv != 0)
        return rv;
    size_t used = 0;
    out[0] = '\0';
    for (size_t i = 0; i < id.n_logins; i++)
        used += (size_t)snprintf(out + used, used < n ? n - used : 0, "%s%s", i ? "," : "",
                                 id.logins[i]);
    rp_identity_free(&id);
    return 0;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    while (!atomic_load(w->stop) && w->n < MAX_RECORDS) {
        struct record *r = &w->recs[w->n++];
        msgpack_unpacked resp;
        r->start_ms = cl_now_ms();
        r->rv = auth_client_call(w->client, w->req.data, w->req.len, &resp);
        r->end_ms = cl_now_ms();
        if (r->rv == 0)
            r->rv = answer_logins(&resp.data, r->login, sizeof r->login);
        msgpack_unpacked_destroy(&resp);
    }
    return NULL;
}

static void write_role(const char *name, const char *login)
{
    char path[512], yaml[512], *out = NULL;
    snprintf(path, sizeof path, "%s/%s.yaml", CL->dir, name);
    snprintf(yaml, sizeof yaml,
             "kind: role\nversion: v7\nmetadata:\n  name: %s\nspec:\n  allow:\n"
             "    logins: [%s]\n    node_labels:\n      '*': '*'\n",
             name, login);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(yaml, f);
    fclose(f);
    cr_assert_eq(run_tctl(1, &out, "create", "-f", path, NULL), 0, "create %s: %s", name, out);
    free(out);
}

/* How many cert.create events name @user as the certificate's identity, on node @i. */
static size_t cert_events(int i, const char *user)
{
    char *out = NULL;
    cr_assert_eq(run_tctl(i, &out, "events", "ls", "--format=json", "--type=cert.create",
                          "--limit=10000", NULL),
                 0, "events ls: %s", out);
    struct cl_json *j = cl_json_parse(out);
    cr_assert(j && j->type == CLJ_ARR, "events ls printed no JSON array: %s", out);
    size_t n = 0;
    for (size_t k = 0; k < j->n; k++)
        n += strcmp(cl_json_str(&j->items[k], "identity"), user) == 0;
    cl_json_free(j);
    free(out);
    return n;
}

static bool retryable(int rv)
{
    return rv == RP_ENOTLEADER || rv == RP_EUNKNOWN || rv == RP_EUNAVAILABLE ||
           rv == RP_ETIMEDOUT || rv == RP_EBUSY || rv == RP_ECLOSED;
}

Test(int_issue, a_resumed_leader_never_signs_with_roles_changed_behind_it)
{
    cluster_opts()->election_timeout_ms = 600;
    cluster_start(3);
    uint64_t lid = cluster_wait_ready(0, 3, 0, 20000);
    cr_assert_neq(lid, 0, "no ready leader");
    int old = node_by_raft_id(lid);
    char *out = NULL;
    write_role("gen-a", "login-a");
    write_role("gen-b", "login-b");
    cr_assert_eq(run_tctl(1, &out, "users", "add", "alice", "--roles=gen-a", NULL), 0, "%s", out);
    free(out);

    atomic_bool stop = false;
    struct worker ws[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        ws[i] = (struct worker){.client = node_client(old), .stop = &stop, .n = 0};
        ws[i].recs = calloc(MAX_RECORDS, sizeof *ws[i].recs);
        cr_assert_not_null(ws[i].recs);
        build_request(&ws[i].req, "alice");
    }
    for (int i = 0; i < WORKERS; i++)
        cr_assert_eq(pthread_create(&ws[i].thread, NULL, worker_main, &ws[i]), 0);
    cl_sleep_ms(500); /* certificates with login-a flow */

    uint64_t paused_at = cl_now_ms();
    cr_assert_eq(kill(CL->nodes[old].pid, SIGSTOP), 0);
    int other = old == 1 ? 2 : 1, fresh = 0;
    for (uint64_t end = cl_now_ms() + 20000; cl_now_ms() < end && !fresh; cl_sleep_ms(50)) {
        uint64_t l = cluster_leader_id_from(other);
        if (l != 0 && l != lid)
            fresh = node_by_raft_id(l);
    }
    if (!fresh)
        kill(CL->nodes[old].pid, SIGCONT);
    cr_assert_neq(fresh, 0, "no new leader while node %d was paused", old);
    cr_assert_eq(run_tctl(fresh, &out, "users", "update", "alice", "--set-roles=gen-b", NULL), 0,
                 "%s", out);
    free(out);
    uint64_t changed_at = cl_now_ms();
    cr_assert_eq(kill(CL->nodes[old].pid, SIGCONT), 0);
    cl_sleep_ms(2000); /* the old leader learns the new term; issuance goes on */
    atomic_store(&stop, true);

    for (int i = 0; i < WORKERS; i++)
        pthread_join(ws[i].thread, NULL);
    size_t ok = 0, ok_after = 0, ok_before = 0, failed = 0;
    for (int i = 0; i < WORKERS; i++) {
        for (size_t k = 0; k < ws[i].n; k++) {
            const struct record *r = &ws[i].recs[k];
            if (r->rv != 0) {
                cr_assert(retryable(r->rv), "a request failed with %s, which no client retries",
                          rp_strerror(r->rv));
                failed++;
                continue;
            }
            ok++;
            if (r->start_ms > changed_at) {
                cr_assert_str_eq(r->login, "login-b",
                                 "asked %llu ms after the roles changed, got login %s",
                                 (unsigned long long)(r->start_ms - changed_at), r->login);
                ok_after++;
            } else if (r->end_ms < paused_at) {
                cr_assert_str_eq(r->login, "login-a");
                ok_before++;
            }
        }
        auth_client_free(ws[i].client);
        rp_buf_free(&ws[i].req);
        free(ws[i].recs);
    }
    cr_assert_gt(ok_before, 0, "no certificate before the pause");
    cr_assert_gt(ok_after, 0, "no certificate after the change");
    cr_log_info("issuance across a paused leader: %zu certificates (%zu before the pause, %zu "
                "asked after the change), %zu retryable failures",
                ok, ok_before, ok_after, failed);
    size_t events = cert_events(fresh, "alice");
    cr_assert_geq(events, ok, "%zu certificates but %zu cert.create events", ok, events);
    cluster_pass();
}

/* One certificate on a fresh client pinned to node @i; its logins into @out. */
static void sign_once(int i, const struct rp_buf *req, char *out, size_t n)
{
    msgpack_unpacked resp;
    int rv = node_call(i, req->data, req->len, &resp, 0);
    cr_assert_eq(rv, 0, "sign_user on node %d: %s", i, rp_errmsg());
    cr_assert_eq(answer_logins(&resp.data, out, n), 0, "no readable tls_cert in the answer");
    msgpack_unpacked_destroy(&resp);
}

/* The leader keeps what a user's certificates say until any resource changes: an
 * edit of a role (not of the user) must show in the very next certificate, on the
 * leader and through a follower, and so must a role's removal. */
Test(int_issue, role_edits_show_in_the_next_certificate)
{
    cluster_start(3);
    uint64_t lid = cluster_wait_ready(0, 3, 0, 20000);
    cr_assert_neq(lid, 0, "no ready leader");
    int leader = node_by_raft_id(lid), follower = leader == 1 ? 2 : 1;
    char *out = NULL, logins[256];
    write_role("ops", "ops-1");
    write_role("dev", "dev-1");
    cr_assert_eq(run_tctl(1, &out, "users", "add", "bob", "--roles=ops,dev", NULL), 0, "%s", out);
    free(out);
    struct rp_buf req;
    build_request(&req, "bob");
    for (int k = 0; k < 3; k++) { /* the second and third come from the cache */
        sign_once(leader, &req, logins, sizeof logins);
        cr_assert_str_eq(logins, "ops-1,dev-1");
    }
    write_role("ops", "ops-2");
    sign_once(leader, &req, logins, sizeof logins);
    cr_assert_str_eq(logins, "ops-2,dev-1", "the edited role is not in the next certificate");
    sign_once(follower, &req, logins, sizeof logins);
    cr_assert_str_eq(logins, "ops-2,dev-1");
    cr_assert_eq(run_tctl(1, &out, "rm", "role/dev", NULL), 0, "%s", out);
    free(out);
    msgpack_unpacked resp;
    int rv = node_call(leader, req.data, req.len, &resp, 0);
    msgpack_unpacked_destroy(&resp);
    cr_assert_eq(rv, RP_EDENIED, "a user whose role is gone gets no certificate (%s)",
                 rp_strerror(rv));
    rp_buf_free(&req);
    cluster_pass();
}
