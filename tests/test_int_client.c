/* tests/test_int_client.c: the typed calls of auth/client.h against a real
 * cluster: each sends what its method expects and reads back what the method
 * answers, with results the caller owns past the next call. */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/client.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(int_client, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

static bool presets_exist(void *arg)
{
    struct auth_reply r;
    bool ok = auth_client_get(arg, "role", "access", 0, &r, NULL, NULL) == 0;
    auth_reply_free(&r);
    return ok;
}

Test(int_client, cluster_calls_answer_typed_values)
{
    cluster_start(1);
    struct auth_client *c = node_client(1);
    struct auth_ping ping;
    cr_assert_eq(auth_client_ping(c, &ping), 0, "%s", rp_errmsg());
    cr_assert_str_eq(ping.cluster_name, CL->cluster_name);
    cr_assert_str_eq(ping.ca_pin, CL->ca_pin);
    cr_assert_eq(ping.raft_id, 1);
    /* The member's own record is written once it leads: zero or one address. */
    cr_assert_leq(ping.n_auth_servers, 1);

    struct auth_status st;
    cr_assert_eq(auth_client_status(c, &st), 0, "%s", rp_errmsg());
    cr_assert_eq(st.n_members, 1);
    cr_assert_eq(st.leader_id, 1);
    cr_assert_str_eq(st.members[0].state, "leader");
    cr_assert(st.members[0].reachable && st.members[0].disk_free > 0);

    struct auth_member_status ms;
    cr_assert_eq(auth_client_member_status(c, &ms), 0, "%s", rp_errmsg());
    cr_assert_eq(ms.id, 1);
    cr_assert_str_eq(ms.state, "leader");
    cr_assert_geq(ms.commit_index, ms.last_applied > 0 ? 1 : 0);

    struct auth_token tok;
    uint64_t before = rp_now_ms();
    cr_assert_eq(auth_client_token_add(c, "node", 10 * 60 * 1000, &tok), 0, "%s", rp_errmsg());
    cr_assert_eq(strlen(tok.token), 32);
    cr_assert_str_eq(tok.type, "node");
    cr_assert(tok.expires_ms >= before + 10 * 60 * 1000 - 1000, "expires %llu",
              (unsigned long long)tok.expires_ms);
    cr_assert_eq(auth_client_token_add(c, "bogus", 0, &tok), RP_EINVAL);

    cr_assert_eq(auth_client_member_rm(c, 99), RP_ENOTFOUND, "%s", rp_errmsg());
    auth_client_free(c);
    cluster_pass();
}

Test(int_client, resource_writes_report_their_revision_and_replies_outlive_later_calls)
{
    cluster_start(1);
    struct auth_client *c = node_client(1);
    cr_assert(wait_until(15000, presets_exist, c), "no preset roles");
    struct auth_lock_spec spec = {.user = "mallory", .message = "first"};
    struct rp_buf res;
    rp_buf_init(&res);
    cr_assert_eq(auth_lock_encode(&spec, "l1", rp_now_ms(), &res), 0);

    struct auth_write_result w;
    cr_assert_eq(auth_client_update(c, res.data, res.len, &w), RP_ENOTFOUND);
    cr_assert_eq(auth_client_create(c, res.data, res.len, &w), 0, "%s", rp_errmsg());
    uint64_t rev1 = w.rev;
    cr_assert_gt(rev1, 0);
    auth_write_result_free(&w);
    cr_assert_eq(auth_client_create(c, res.data, res.len, &w), RP_EEXISTS);
    cr_assert_eq(auth_client_put(c, res.data, res.len, &w), 0, "%s", rp_errmsg());
    cr_assert_gt(w.rev, rev1);
    auth_write_result_free(&w);
    rp_buf_free(&res);

    /* A reply stays valid while other calls go out on the same client. */
    struct auth_reply got, listed;
    const msgpack_object *lock, *items;
    uint64_t rev = 0;
    cr_assert_eq(auth_client_get(c, "lock", "l1", 0, &got, &lock, &rev), 0, "%s", rp_errmsg());
    cr_assert_eq(auth_client_list(c, "role", NULL, 0, AUTH_READ_STALE, &listed, &items, NULL), 0,
                 "%s", rp_errmsg());
    bool has_access = false;
    for (uint32_t i = 0; i < items->via.array.size; i++)
        has_access =
            has_access ||
            rp_mp_str_eq(rp_mp_get(rp_mp_get(&items->via.array.ptr[i], "metadata"), "name"),
                         "access");
    cr_assert(has_access, "the preset role access is not listed");
    struct auth_ping ping;
    cr_assert_eq(auth_client_ping(c, &ping), 0);
    cr_assert(rp_mp_str_eq(rp_mp_get(rp_mp_get(lock, "spec"), "message"), "first"));
    cr_assert_geq(rev, rev1);
    auth_reply_free(&got);
    auth_reply_free(&listed);
    auth_reply_free(&listed); /* harmless twice */

    char name[37];
    cr_assert_eq(auth_client_lock_add(c, &(struct auth_lock_spec){.role = "dev"}, name, NULL), 0,
                 "%s", rp_errmsg());
    cr_assert_eq(auth_client_delete(c, "lock", name, &rev), 0, "%s", rp_errmsg());
    cr_assert_eq(auth_client_delete(c, "lock", name, NULL), RP_ENOTFOUND);
    cr_assert_eq(auth_client_get(c, "lock", name, 0, &got, NULL, NULL), RP_ENOTFOUND);
    auth_client_free(c);
    cluster_pass();
}

Test(int_client, users_certificates_and_events)
{
    cluster_start(1);
    struct auth_client *c = node_client(1);
    cr_assert(wait_until(15000, presets_exist, c), "no preset roles");
    const char *roles[] = {"access"}, *logins[] = {"root", "ubuntu"};
    struct auth_invite inv;
    cr_assert_eq(auth_client_user_add(c, "carol", roles, 1, logins, 2, 0, &inv), 0, "%s",
                 rp_errmsg());
    cr_assert(inv.token[0] != '\0' && inv.expires_ms > rp_now_ms());
    cr_assert_eq(auth_client_user_add(c, "carol", roles, 1, NULL, 0, 0, &inv), RP_EEXISTS);
    const char *two[] = {"access", "editor"};
    cr_assert_eq(auth_client_user_update(c, "carol", two, 2), 0, "%s", rp_errmsg());
    cr_assert_eq(auth_client_user_reset(c, "carol", 5 * 60 * 1000, &inv), 0, "%s", rp_errmsg());

    /* One P-256 key for both certificates, as tctl auth sign --format=file does. */
    EVP_PKEY *key = rp_tls_keygen();
    char *ssh_pub = NULL, *tls_pub = NULL;
    cr_assert(key != NULL && rp_ssh_pubkey_format(key, NULL, &ssh_pub) == 0 &&
              rp_tls_pubkey_to_pem(key, &tls_pub) == 0);
    struct auth_certs certs;
    cr_assert_eq(auth_client_sign_user(c, "carol", ssh_pub, tls_pub, 3600 * 1000, &certs), 0, "%s",
                 rp_errmsg());
    cr_assert(certs.ssh_cert && strstr(certs.ssh_cert, "-cert-v01@openssh.com "));
    cr_assert(certs.tls_cert && strstr(certs.tls_cert, "BEGIN CERTIFICATE"));
    cr_assert(certs.tls_ca && strstr(certs.tls_ca, "BEGIN CERTIFICATE"));
    auth_certs_free(&certs);
    cr_assert_eq(auth_client_sign_user(c, "carol", ssh_pub, NULL, 0, &certs), 0, "%s", rp_errmsg());
    cr_assert(certs.ssh_cert != NULL && certs.tls_cert == NULL);
    auth_certs_free(&certs);
    struct auth_host_sign hs = {.host_id = "web1",
                                .nodename = "web1",
                                .role = "Node",
                                .ssh_pubkey = ssh_pub,
                                .principals = (const char *const[]){"web1.example.com"},
                                .n_principals = 1,
                                .ttl_ms = 3600 * 1000};
    cr_assert_eq(auth_client_sign_host(c, &hs, &certs), 0, "%s", rp_errmsg());
    cr_assert(certs.ssh_cert != NULL);
    auth_certs_free(&certs);
    free(ssh_pub);
    free(tls_pub);
    EVP_PKEY_free(key);

    struct auth_reply r;
    const msgpack_object *items;
    struct auth_events_query q = {.type = "cert.create", .limit = 10, .stale = false};
    cr_assert_eq(auth_client_events(c, &q, &r, &items), 0, "%s", rp_errmsg());
    cr_assert_geq(items->via.array.size, 2, "two user certificates were issued");
    auth_reply_free(&r);

    cr_assert_eq(auth_client_user_rm(c, "carol"), 0, "%s", rp_errmsg());
    cr_assert_eq(auth_client_user_rm(c, "carol"), RP_ENOTFOUND);
    char who[128];
    cr_assert_eq(auth_client_identity_name(c, who, sizeof who), 0);
    cr_assert_str_eq(who, "admin@auth1");
    auth_client_free(c);
    cluster_pass();
}

/* A stand-in auth server that answers every request {ok, rev: 7, warnings: [...]}:
 * what the real one answers to a write it keeps with reservations. It presents
 * node 1's Auth certificate, so clients take it for a member. */
struct warning_server {
    SSL_CTX *ctx;
    int lfd;
    char addr[64];
    atomic_bool stop;
    pthread_t thread;
    int requests;
};

static void *warning_server_main(void *arg)
{
    struct warning_server *w = arg;
    while (!atomic_load(&w->stop)) {
        struct pollfd pf = {.fd = w->lfd, .events = POLLIN};
        if (poll(&pf, 1, 100) != 1)
            continue;
        int fd = accept(w->lfd, NULL, NULL);
        struct rp_conn conn;
        if (fd < 0 || rp_conn_accept(&conn, w->ctx, fd, 5000) != 0)
            continue;
        rp_conn_set_timeout(&conn, 5000);
        struct rp_buf in, out;
        rp_buf_init(&in);
        rp_buf_init(&out);
        while (rp_conn_read_frame(&conn, &in) == 0) {
            msgpack_packer pk;
            struct rp_mp_map m;
            rp_buf_reset(&out);
            rp_mp_packer_init(&pk, &out);
            rp_mp_map_begin(&pk, &m);
            rp_mp_map_bool(&m, "ok", true);
            rp_mp_map_u64(&m, "rev", 7);
            msgpack_packer *v = rp_mp_map_key(&m, "warnings");
            msgpack_pack_array(v, 2);
            rp_mp_pack_str(v, "spec.options.device_trust_mode: required is not enforced yet");
            rp_mp_pack_str(v, "second warning");
            rp_mp_map_end(&m);
            w->requests++;
            if (rp_conn_write_frame(&conn, out.data, out.len) != 0)
                break;
        }
        rp_buf_free(&in);
        rp_buf_free(&out);
        rp_conn_close(&conn);
    }
    return NULL;
}

static void warning_server_start(struct warning_server *w, int node)
{
    char cert[700], key[700], ca[700];
    snprintf(cert, sizeof cert, "%s/keys/host.crt", CL->nodes[node].dir);
    snprintf(key, sizeof key, "%s/keys/host.key", CL->nodes[node].dir);
    snprintf(ca, sizeof ca, "%s/keys/ca.crt", CL->nodes[node].dir);
    X509 *c = NULL, *cac = NULL;
    EVP_PKEY *k = NULL;
    cr_assert(rp_tls_read_cert(cert, &c) == 0 && rp_tls_read_key(key, &k) == 0 &&
                  rp_tls_read_cert(ca, &cac) == 0,
              "%s", rp_errmsg());
    memset(w, 0, sizeof *w);
    w->ctx = rp_tls_server_ctx(cac, c, k, 0);
    cr_assert_not_null(w->ctx);
    X509_free(c);
    X509_free(cac);
    EVP_PKEY_free(k);
    w->lfd = rp_listen_tcp("127.0.0.1:0", 8);
    cr_assert_geq(w->lfd, 0, "%s", rp_errmsg());
    cr_assert_eq(rp_sock_local_addr(w->lfd, w->addr, sizeof w->addr), 0);
    cr_assert_eq(pthread_create(&w->thread, NULL, warning_server_main, w), 0);
}

static void warning_server_stop(struct warning_server *w)
{
    atomic_store(&w->stop, true);
    pthread_join(w->thread, NULL);
    close(w->lfd);
    SSL_CTX_free(w->ctx);
}

Test(int_client, write_warnings_reach_the_caller_and_tctl_create_prints_them)
{
    cluster_start(1);
    struct warning_server w;
    warning_server_start(&w, 1);

    SSL_CTX *ctx = node_admin_ctx(1);
    const char *addrs[1] = {w.addr};
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, ctx, addrs, 1), 0);
    SSL_CTX_free(ctx);
    struct rp_buf res;
    rp_buf_init(&res);
    cr_assert_eq(auth_lock_encode(&(struct auth_lock_spec){.user = "u"}, "l", 1, &res), 0);
    struct auth_write_result wr;
    cr_assert_eq(auth_client_put(c, res.data, res.len, &wr), 0, "%s", rp_errmsg());
    cr_assert_eq(wr.rev, 7);
    cr_assert_eq(wr.n_warnings, 2);
    cr_assert_str_eq(wr.warnings[0],
                     "spec.options.device_trust_mode: required is not enforced yet");
    cr_assert_str_eq(wr.warnings[1], "second warning");
    auth_write_result_free(&wr);
    rp_buf_free(&res);
    auth_client_free(c);

    /* tctl create: the outcome on stdout, each warning on stderr. */
    char path[600], exe[600], srv[100];
    static const char *const role = "kind: role\nversion: v7\nmetadata:\n  name: strict\n"
                                    "spec:\n  allow:\n    logins: [root]\n";
    snprintf(path, sizeof path, "%s/strict.yaml", CL->dir);
    cr_assert_eq(rp_write_file(path, role, strlen(role), 0644), 0);
    snprintf(exe, sizeof exe, "%s/tctl", CL->build);
    snprintf(srv, sizeof srv, "--auth-server=%s", w.addr);
    char *argv[] = {exe, "-c", CL->nodes[1].cfg, srv, "create", path, NULL};
    struct cl_run r;
    cl_run_argv(argv, 20000, &r);
    cr_assert_eq(r.status, 0, "%s", r.err);
    cr_assert(strstr(r.out, "role \"strict\" has been created") != NULL, "%s", r.out);
    cr_assert(strstr(r.err, "warning: spec.options.device_trust_mode: required is not "
                            "enforced yet\nwarning: second warning\n") != NULL,
              "%s", r.err);
    cl_run_free(&r);
    cr_assert_geq(w.requests, 2);
    warning_server_stop(&w);
    cluster_pass();
}
