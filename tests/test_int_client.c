/* tests/test_int_client.c: the typed calls of auth/client.h against a real
 * cluster: each sends what its method expects and reads back what the method
 * answers, with results the caller owns past the next call. */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/client.h"
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
