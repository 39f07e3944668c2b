/* tests/test_int_users.c: local users against real daemons: tctl users
 * add/ls/update/reset/rm, invite redemption (password policy, argon2id, TOTP
 * enrollment, single use even when two redemptions race, expiry), and the
 * audit events of each. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/totp.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(int_users, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

static char *tctl_ok(int i, const char *a1, const char *a2, const char *a3, const char *a4,
                     const char *a5)
{
    char *out = NULL;
    int rv = run_tctl(i, &out, a1, a2, a3, a4, a5, NULL);
    cr_assert_eq(rv, 0, "tctl %s %s %s failed", a1, a2, a3 ? a3 : "");
    return out;
}

static bool has_secret(int i, const char *user)
{
    char *out = NULL;
    char what[160];
    snprintf(what, sizeof what, "user_secret/%s", user);
    int rv = run_tctl(i, &out, "get", what, "--with-secrets", NULL);
    bool yes = rv == 0 && strstr(out, "$argon2id$v=19$") != NULL;
    free(out);
    return yes;
}

/* The preset roles (access, editor, auditor) follow the first election by a moment. */
static void wait_presets(void)
{
    cr_assert(cl_wait_presets(15000), "the preset roles never appeared");
}

Test(int_users, add_redeem_update_reset_rm_with_audit)
{
    cluster_start(3);
    wait_presets();

    /* Through a follower: forwarded, attributed to admin@auth2. */
    char *out = tctl_ok(2, "users", "add", "joe", "--roles=access", "--logins=root,ubuntu");
    cr_assert(strstr(out, "User \"joe\" has been created") != NULL, "%s", out);
    char tok[40];
    cl_invite_token(out, tok, sizeof tok);
    free(out);
    out = tctl_ok(1, "users", "ls", NULL, NULL, NULL);
    cr_assert(strstr(out, "joe") && strstr(out, "access"), "%s", out);
    free(out);

    /* Bad input gets a clear error and changes nothing. */
    char *err = NULL;
    cr_assert_neq(run_tctl(1, &err, "users", "add", "joe", "--roles=access", NULL), 0);
    free(err);
    cr_assert_neq(run_tctl(1, NULL, "users", "add", "bob", "--roles=nosuch", NULL), 0);
    cr_assert_neq(run_tctl(1, NULL, "users", "add", "bad/name", "--roles=access", NULL), 0);

    char code[64];
    cl_redeem_invite(3, tok, "short", NULL, NULL, code, sizeof code);
    cr_assert_str_eq(code, "invalid", "an 5-character password");
    cr_assert(!has_secret(1, "joe"));
    cl_redeem_invite(3, tok, "correct horse battery", NULL, NULL, code, sizeof code);
    cr_assert_str_eq(code, "", "redeeming the invite: %s", code);
    cr_assert(has_secret(1, "joe"));
    cl_redeem_invite(1, tok, "another good password", NULL, NULL, code, sizeof code);
    cr_assert_str_eq(code, "access_denied", "a used invite must be refused");

    out = tctl_ok(1, "users", "update", "joe", "--set-roles=access,editor", NULL);
    free(out);
    out = tctl_ok(1, "users", "ls", NULL, NULL, NULL);
    cr_assert(strstr(out, "access,editor") != NULL, "%s", out);
    free(out);

    /* Reset: password gone, new invite, this time with a second factor. */
    out = tctl_ok(1, "users", "reset", "joe", NULL, NULL);
    cl_invite_token(out, tok, sizeof tok);
    free(out);
    cr_assert(!has_secret(1, "joe"), "reset must drop the password");
    uint8_t secret[20];
    char b32[64], totp[8];
    cr_assert_eq(rp_totp_generate_secret(secret), 0);
    cr_assert_eq(rp_base32_encode(secret, sizeof secret, b32, sizeof b32), 0);
    cr_assert_eq(rp_totp_code(secret, sizeof secret, rp_totp_step(rp_now_ms()), totp), 0);
    cl_redeem_invite(2, tok, "correct horse battery staple", b32, "000000", code, sizeof code);
    cr_assert(strcmp(code, "access_denied") == 0 || strcmp(totp, "000000") == 0,
              "a wrong one-time code: %s", code);
    cl_redeem_invite(2, tok, "correct horse battery staple", b32, totp, code, sizeof code);
    cr_assert_str_eq(code, "", "redeeming with TOTP: %s", code);
    out = tctl_ok(1, "get", "user_secret/joe", "--with-secrets", NULL, NULL);
    cr_assert(strstr(out, "totp_secret") != NULL, "%s", out);
    free(out);

    out = tctl_ok(3, "users", "rm", "joe", NULL, NULL);
    free(out);
    out = tctl_ok(1, "users", "ls", NULL, NULL, NULL);
    cr_assert(strstr(out, "joe") == NULL, "%s", out);
    free(out);
    cr_assert(!has_secret(1, "joe"));

    /* The audit log has each step, attributed. */
    out = tctl_ok(1, "events", "ls", "--format=json", NULL, NULL);
    static const char *const want[] = {"\"user.create\"", "\"user.update\"",
                                       "\"user.delete\"", "\"user.password_change\"",
                                       "\"admin@auth2\"", "\"T1005W\""};
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++)
        cr_assert(strstr(out, want[k]) != NULL, "no %s in the audit log:\n%s", want[k], out);
    free(out);
    cluster_pass();
}

struct race {
    int node;
    char token[40];
    char code[64];
};

static void *race_main(void *arg)
{
    struct race *r = arg;
    cl_redeem_invite(r->node, r->token, "a fine long password", NULL, NULL, r->code,
                     sizeof r->code);
    return NULL;
}

Test(int_users, an_invite_is_redeemed_once_even_when_two_race)
{
    cluster_start(3);
    wait_presets();
    for (int round = 0; round < 3; round++) {
        char name[32];
        snprintf(name, sizeof name, "racer%d", round);
        char *out = tctl_ok(1, "users", "add", name, "--roles=access", NULL);
        struct race a = {.node = 1}, b = {.node = 2};
        cl_invite_token(out, a.token, sizeof a.token);
        free(out);
        snprintf(b.token, sizeof b.token, "%s", a.token);
        pthread_t ta, tb;
        pthread_create(&ta, NULL, race_main, &a);
        pthread_create(&tb, NULL, race_main, &b);
        pthread_join(ta, NULL);
        pthread_join(tb, NULL);
        int wins = (a.code[0] == '\0') + (b.code[0] == '\0');
        cr_assert_eq(wins, 1, "round %d: %d redemptions succeeded (%s / %s)", round, wins, a.code,
                     b.code);
    }
    cluster_pass();
}

Test(int_users, password_login_totp_and_lockout_after_five_failures)
{
    cluster_start(3);
    wait_presets();
    char *out = tctl_ok(1, "users", "add", "carol", "--roles=access", "--logins=root");
    char tok[40], code[64];
    cl_invite_token(out, tok, sizeof tok);
    free(out);
    uint8_t secret[20];
    char b32[64], totp[8];
    cr_assert_eq(rp_totp_generate_secret(secret), 0);
    cr_assert_eq(rp_base32_encode(secret, sizeof secret, b32, sizeof b32), 0);
    cr_assert_eq(rp_totp_code(secret, sizeof secret, rp_totp_step(rp_now_ms()), totp), 0);
    cl_redeem_invite(1, tok, "carol's long password", b32, totp, code, sizeof code);
    cr_assert_str_eq(code, "");

    bool cert;
    /* The code used at enrollment cannot be used again (replay). */
    cl_login(2, "carol", "carol's long password", totp, code, sizeof code, &cert);
    cr_assert_str_eq(code, "access_denied", "a replayed one-time code was accepted");
    cl_login(2, "carol", "carol's long password", NULL, code, sizeof code, &cert);
    cr_assert_str_eq(code, "access_denied", "no second factor given, yet logged in");
    /* The next step's code works (a ±1 step window absorbs clock skew). */
    cr_assert_eq(rp_totp_code(secret, sizeof secret, rp_totp_step(rp_now_ms()) + 1, totp), 0);
    cl_login(3, "carol", "carol's long password", totp, code, sizeof code, &cert);
    cr_assert(code[0] == '\0' && cert, "a valid login failed: %s", code);

    /* Unknown user and wrong password: the same answer. */
    cl_login(1, "nobody", "whatever password", NULL, code, sizeof code, &cert);
    cr_assert_str_eq(code, "access_denied");
    for (int k = 0; k < 5; k++) {
        cl_login(1 + k % 3, "carol", "not the password", totp, code, sizeof code, &cert);
        cr_assert_str_eq(code, "access_denied");
    }
    /* Locked, on every server: even the right password and a fresh code are refused. */
    cr_assert_eq(rp_totp_code(secret, sizeof secret, rp_totp_step(rp_now_ms()) + 1, totp), 0);
    for (int i = 1; i <= 3; i++) {
        cl_login(i, "carol", "carol's long password", totp, code, sizeof code, &cert);
        cr_assert(!cert && strcmp(code, "access_denied") == 0, "node %d let a locked user in", i);
    }
    out = tctl_ok(1, "events", "ls", "--type=user.login", "--format=json", NULL);
    cr_assert(strstr(out, "\"T1000I\"") && strstr(out, "\"T1000W\"") &&
                  strstr(out, "locked after too many failed logins"),
              "login events:\n%s", out);
    free(out);
    out = tctl_ok(1, "get", "user_secret/carol", "--with-secrets", NULL, NULL);
    cr_assert(strstr(out, "locked_until_ms:") != NULL, "%s", out);
    free(out);
    cluster_pass();
}
