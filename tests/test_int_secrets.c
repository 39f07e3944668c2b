/* tests/test_int_secrets.c: no secret reaches the audit log or a daemon's log.
 *
 * One run on a 3-member cluster creates, uses and removes every kind of secret the
 * auth API handles: the auth join tokens of the members, node and proxy join tokens
 * (made by tctl tokens add and by tctl create of a Teleport token file), a join with
 * an unknown token, invites (made, redeemed, redeemed again, reset, left unused and
 * removed with their user), and passwords (set, used, mistyped). Then every audit
 * event (tctl events ls --format=json) and every line of every member's log is
 * searched for each secret value: none may appear. Tokens may appear as their
 * "sha256:" prefix label, and the events of the run must be there to be searched. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(int_secrets, .init = cluster_setup, .fini = cluster_teardown, .timeout = 240);

#define MAX_SECRETS 32

static struct {
    char value[MAX_SECRETS][128];
    const char *what[MAX_SECRETS];
    size_t n;
} S;

static void secret(const char *what, const char *value)
{
    cr_assert(S.n < MAX_SECRETS);
    cr_assert(strlen(value) >= 8, "%s: a secret too short to search for: '%s'", what, value);
    snprintf(S.value[S.n], sizeof S.value[S.n], "%s", value);
    S.what[S.n++] = what;
}

static void join_node(int i, const char *token, const char *host_id, char *code, size_t codelen)
{
    EVP_PKEY *k = rp_tls_keygen();
    char *pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &pub), 0);
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 6);
    rp_mp_kv_str(&pk, "m", "join");
    rp_mp_kv_str(&pk, "token", token);
    rp_mp_kv_str(&pk, "type", "node");
    rp_mp_kv_str(&pk, "host_id", host_id);
    rp_mp_kv_str(&pk, "nodename", host_id);
    rp_mp_kv_str(&pk, "host_pubkey", pub);
    cl_anon_code(i, &req, code, codelen);
    rp_buf_free(&req);
    free(pub);
    EVP_PKEY_free(k);
}

static char *read_all(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    cr_assert_eq(rp_read_file(path, 64u << 20, &text, &len), 0, "%s: %s", path, rp_errmsg());
    return text;
}

static void assert_free_of_secrets(const char *where, const char *text)
{
    for (size_t k = 0; k < S.n; k++) {
        const char *hit = strstr(text, S.value[k]);
        if (hit == NULL)
            continue;
        const char *line = hit;
        while (line > text && line[-1] != '\n')
            line--;
        const char *eol = strchr(hit, '\n');
        cr_assert_fail("%s holds the %s: %.*s", where, S.what[k],
                       (int)((eol ? eol : hit + strlen(hit)) - line), line);
    }
}

Test(int_secrets, no_token_invite_or_password_reaches_the_audit_log_or_the_logs)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(20000), "no preset roles");
    char code[64], *out = NULL;
    for (int i = 2; i <= 3; i++)
        secret("auth join token of a member", CL->nodes[i].token);

    /* Join tokens: made through a follower and the leader, used, removed, guessed. */
    char node_tok[64], proxy_tok[64], file_tok[40], guess[40];
    cl_add_token(2, "node", NULL, node_tok, sizeof node_tok);
    secret("node join token", node_tok);
    join_node(1, node_tok, "web-1", code, sizeof code);
    cr_assert_str_eq(code, "", "join with a fresh node token");
    join_node(3, node_tok, "web-2", code, sizeof code); /* node tokens are multi-use */
    cr_assert_str_eq(code, "", "a second join with the node token");
    cl_add_token(1, "proxy", NULL, proxy_tok, sizeof proxy_tok);
    secret("proxy join token", proxy_tok);
    char rm[80];
    snprintf(rm, sizeof rm, "token/%s", proxy_tok);
    cr_assert_eq(run_tctl(2, &out, "rm", rm, NULL), 0);
    free(out);
    cr_assert_eq(rp_random_hex(file_tok, 16), 0);
    secret("join token of a Teleport token file", file_tok);
    char yaml[512], path[600];
    snprintf(yaml, sizeof yaml,
             "kind: token\nversion: v2\nmetadata:\n  name: %s\nspec:\n  roles: [Node]\n"
             "  join_method: token\n",
             file_tok);
    cl_write_file("token.yaml", yaml, path, sizeof path);
    cr_assert_eq(run_tctl(1, &out, "create", path, NULL), 0);
    free(out);
    snprintf(rm, sizeof rm, "token/%s", file_tok);
    cr_assert_eq(run_tctl(3, &out, "rm", rm, NULL), 0);
    free(out);
    cr_assert_eq(rp_random_hex(guess, 16), 0);
    secret("guessed join token", guess);
    join_node(2, guess, "web-3", code, sizeof code);
    cr_assert_str_neq(code, "");

    /* Invites and passwords. */
    static const char *const pw1 = "Correct-Horse-Battery-9", *const pw2 = "Second-Staple-Pass-7",
                             *const typo = "Correct-Horse-Battery-8";
    secret("password", pw1);
    secret("password", pw2);
    secret("mistyped password", typo);
    char inv1[40], inv2[40], inv3[40];
    cr_assert_eq(
        run_tctl(1, &out, "users", "add", "alice", "--roles=access", "--logins=alice", NULL), 0);
    cl_invite_token(out, inv1, sizeof inv1);
    free(out);
    secret("invite", inv1);
    cl_redeem_invite(2, inv1, pw1, NULL, NULL, code, sizeof code);
    cr_assert_str_eq(code, "", "redeeming the invite");
    cl_redeem_invite(3, inv1, pw2, NULL, NULL, code, sizeof code); /* used: refused */
    cr_assert_str_neq(code, "");
    cl_login(2, "alice", typo, NULL, code, sizeof code, NULL);
    cr_assert_str_neq(code, "");
    cl_login(3, "alice", pw1, NULL, code, sizeof code, NULL);
    cr_assert_str_eq(code, "", "login with the password set");
    cr_assert_eq(run_tctl(1, &out, "users", "reset", "alice", NULL), 0);
    cl_invite_token(out, inv2, sizeof inv2);
    free(out);
    secret("reset invite", inv2);
    cl_redeem_invite(1, inv2, pw2, NULL, NULL, code, sizeof code);
    cr_assert_str_eq(code, "");
    cr_assert_eq(run_tctl(2, &out, "users", "add", "bob", "--roles=access", NULL), 0);
    cl_invite_token(out, inv3, sizeof inv3);
    free(out);
    secret("unused invite", inv3);
    cr_assert_eq(run_tctl(1, &out, "users", "rm", "bob", NULL), 0);
    free(out);

    /* Every event of the run, from each member (forwarded to the leader or not). */
    bool labels = false;
    for (int i = 1; i <= 3; i++) {
        cr_assert_eq(
            run_tctl(i, &out, "events", "ls", "--since=1h", "--limit=10000", "--format=json", NULL),
            0);
        static const char *const must[] = {"join_token.create", "join_token.delete",
                                           "instance.join",     "user.password_change",
                                           "user.login",        "user.delete"};
        for (size_t k = 0; k < sizeof must / sizeof must[0]; k++)
            cr_assert(strstr(out, must[k]) != NULL, "no %s event to search:\n%s", must[k], out);
        char where[64];
        snprintf(where, sizeof where, "the audit log (read on auth%d)", i);
        assert_free_of_secrets(where, out);
        labels = labels || strstr(out, "\"token_name\":\"sha256:") != NULL;
        free(out);
    }
    cr_assert(labels, "join token events carry no token_name label");
    for (int i = 1; i <= 3; i++) {
        char *log = read_all(CL->nodes[i].log);
        cr_assert(strlen(log) > 0);
        char where[64];
        snprintf(where, sizeof where, "auth%d's log", i);
        assert_free_of_secrets(where, log);
        free(log);
    }
    cluster_pass();
}
