/* auth/users.c: local users, their invites and passwords.
 *
 * Three kinds of resources:
 *
 *   user/NAME          what `tctl get user` shows: spec {roles, traits {logins}, created_by}
 *   user_secret/NAME   spec {password_hash, totp_secret?, totp_last_step?, login_failures,
 *                      locked_until_ms, last_failure_ms}; shown only --with-secrets
 *   user_token/TOKEN   a one-time invite or reset: metadata.expires, spec {user, type}
 *
 * An invite is redeemed once: the token is removed with a conditional delete at
 * the revision that was checked, in the same batch that writes the password, so
 * two redemptions racing cannot both succeed (the unique workload of jepsen/ checks
 * exactly this primitive). Every change is audited. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth/audit.h"
#include "auth/internal.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/names.h"
#include "lib/password.h"
#include "lib/totp.h"
#include "lib/util.h"
#include "state/state.h"

#define USER_NAME_MAX RP_NAME_MAX
#define INVITE_DEFAULT_TTL_MS (3600ull * 1000)
#define INVITE_MAX_TTL_MS (48ull * 3600 * 1000)
#define MAX_LIST 64 /* roles or logins given at once */

/* An array argument of strings, each checked by @check (may be NULL). */
static int arg_strs(const msgpack_object *args, const char *key, const msgpack_object **out,
                    int (*check)(const char *, size_t))
{
    const msgpack_object *a = rp_mp_get(args, key);
    *out = NULL;
    if (a == NULL || a->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (a->type != MSGPACK_OBJECT_ARRAY || a->via.array.size > MAX_LIST)
        return rp_err(RP_EINVAL, "argument '%s': expected an array of at most %d strings", key,
                      MAX_LIST);
    for (uint32_t i = 0; i < a->via.array.size; i++) {
        const msgpack_object *o = &a->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > 255)
            return rp_err(RP_EINVAL, "argument '%s'[%u]: expected a string of 1-255 bytes", key, i);
        int rv = check ? check(o->via.str.ptr, o->via.str.size) : 0;
        if (rv != 0)
            return rv;
    }
    *out = a;
    return 0;
}

/* auth_resource_begin with the version each kind of this file is stored at. */
static void resource_begin(msgpack_packer *pk, struct rp_mp_map *res, struct rp_mp_map *spec,
                           const char *kind, const char *name, uint64_t expires)
{
    auth_resource_begin(pk, res, spec, kind, strcmp(kind, "user") == 0 ? "v2" : "v1", name,
                        expires);
}

static void pack_strs(msgpack_packer *pk, const msgpack_object *arr)
{
    if (arr == NULL) {
        msgpack_pack_array(pk, 0);
        return;
    }
    msgpack_pack_object(pk, *arr);
}

/* Appends one batch sub-command (op on @res) to @ops. */
static int add_op(struct rp_buf *ops, const char *op, const struct rp_buf *res, const char *kind,
                  const char *name, uint64_t rev)
{
    struct state_cmd c = {.op = op,
                          .res = res ? res->data : NULL,
                          .res_len = res ? res->len : 0,
                          .kind = kind,
                          .name = name,
                          .rev = rev};
    return state_cmd_encode(&c, ops);
}

/* Proposes a batch of @n sub-commands; answers conflicts as the state says them. */
static int propose_batch(struct auth_server *s, const struct rp_buf *ops, uint32_t n)
{
    char rid[33];
    auth_new_rid(rid);
    struct state_cmd c = {
        .op = "batch", .rid = rid, .ops = ops->data, .ops_len = ops->len, .n_ops = n};
    return auth_propose_cmd(s, &c, NULL);
}

/* A user_token resource for @user into @res; the token into @token. */
static int make_token(const char *user, const char *type, uint64_t expires, char token[33],
                      struct rp_buf *res)
{
    int rv = rp_random_hex(token, 16);
    if (rv != 0)
        return rv;
    msgpack_packer pk;
    struct rp_mp_map m, spec;
    rp_mp_packer_init(&pk, res);
    resource_begin(&pk, &m, &spec, "user_token", token, expires);
    rp_mp_map_str(&spec, "user", user);
    rp_mp_map_str(&spec, "type", type);
    auth_resource_end(&m, &spec);
    return 0;
}

static int invite_ttl(const msgpack_object *args, uint64_t *ttl)
{
    *ttl = INVITE_DEFAULT_TTL_MS;
    if (rp_mp_get_u64(args, "ttl_ms", ttl) == RP_EINVAL || *ttl < 60000 || *ttl > INVITE_MAX_TTL_MS)
        return rp_err(RP_EINVAL, "invite ttl must be between 1m and 48h");
    return 0;
}

static const char *caller_name(const struct auth_req *r)
{
    return r->caller ? r->caller->name : "anonymous";
}

static void audit_user(struct auth_req *r, const char *type, const char *code, const char *name,
                       const msgpack_object *roles)
{
    struct audit_event e;
    audit_event_init(&e, type, code);
    audit_event_str(&e, "user", caller_name(r));
    audit_event_str(&e, "name", name);
    if (roles) {
        const char *v[MAX_LIST];
        char buf[MAX_LIST][256];
        size_t n = 0;
        for (uint32_t i = 0; i < roles->via.array.size && n < MAX_LIST; i++, n++) {
            snprintf(buf[n], sizeof buf[n], "%.*s", (int)roles->via.array.ptr[i].via.str.size,
                     roles->via.array.ptr[i].via.str.ptr);
            v[n] = buf[n];
        }
        audit_event_strs(&e, "roles", v, n);
    }
    audit_event_str(&e, "addr.remote", r->remote);
    audit_emit(r->srv, &e, AUDIT_WAIT);
}

static int copy_str(const msgpack_object *map, const char *key, char *out, size_t outlen)
{
    const char *s;
    size_t n;
    if (rp_mp_get_str(map, key, &s, &n) != 0 || n == 0 || n >= outlen)
        return RP_EINVAL;
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

int auth_h_user_add(struct auth_req *r, struct rp_buf *out)
{
    char name[USER_NAME_MAX + 2];
    const msgpack_object *roles, *logins;
    uint64_t ttl;
    int rv;
    if ((rv = auth_arg_str(r->args, "name", name, sizeof name, true)) != 0 ||
        (rv = auth_admit_user_name(r->srv, name, strlen(name))) != 0 ||
        (rv = arg_strs(r->args, "roles", &roles, NULL)) != 0 ||
        (rv = arg_strs(r->args, "logins", &logins, rp_login_check)) != 0 ||
        (rv = invite_ttl(r->args, &ttl)) != 0)
        return rv;
    if (roles == NULL || roles->via.array.size == 0)
        return rp_err(RP_EINVAL, "a user needs at least one role (--roles)");
    if ((rv = auth_admit_role_refs(r->srv, roles)) != 0)
        return rv;
    uint64_t now = rp_now_ms(), expires = now + ttl;
    struct rp_buf user, tok, ops;
    msgpack_packer pk;
    char token[33];
    rp_buf_init(&user);
    rp_buf_init(&tok);
    rp_buf_init(&ops);
    struct rp_mp_map m, spec, traits, created_by;
    rp_mp_packer_init(&pk, &user);
    resource_begin(&pk, &m, &spec, "user", name, 0);
    pack_strs(rp_mp_map_key(&spec, "roles"), roles);
    rp_mp_map_begin_map(&spec, "traits", &traits);
    pack_strs(rp_mp_map_key(&traits, "logins"), logins);
    rp_mp_map_end(&traits);
    rp_mp_map_begin_map(&spec, "created_by", &created_by);
    rp_mp_map_u64(&created_by, "time", now);
    rp_mp_map_str(&created_by, "user", caller_name(r));
    rp_mp_map_end(&created_by);
    auth_resource_end(&m, &spec);
    if ((rv = make_token(name, "invite", expires, token, &tok)) == 0 &&
        (rv = add_op(&ops, "create", &user, NULL, NULL, 0)) == 0 &&
        (rv = add_op(&ops, "create", &tok, NULL, NULL, 0)) == 0)
        rv = propose_batch(r->srv, &ops, 2);
    if (rv == RP_EEXISTS)
        rv = rp_err(RP_EEXISTS, "user '%s' already exists", name);
    if (rv == 0) {
        audit_user(r, "user.create", "T1002I", name, roles);
        auth_reply_ok(&m, &pk, out);
        rp_mp_map_str(&m, "token", token);
        rp_mp_map_u64(&m, "expires", expires);
        rp_mp_map_str(&m, "user", name);
        rp_mp_map_end(&m);
    }
    rp_buf_free(&user);
    rp_buf_free(&tok);
    rp_buf_free(&ops);
    return rv;
}

/* Reads kind/name into @u (parsed) and its revision; RP_ENOTFOUND if absent. */
static int read_res(struct auth_server *s, const char *kind, const char *name, struct rp_buf *b,
                    msgpack_unpacked *u, uint64_t *rev)
{
    int rv = state_get(s->state, kind, name, b, NULL);
    if (rv != 0)
        return rv;
    if ((rv = rp_mp_parse(b->data, b->len, u)) != 0)
        return rv;
    if (rp_mp_get_u64(rp_mp_get(&u->data, "metadata"), "revision", rev) != 0) {
        msgpack_unpacked_destroy(u);
        return rp_err(RP_EIO, "%s/%s has no revision", kind, name);
    }
    return 0;
}

int auth_h_user_update(struct auth_req *r, struct rp_buf *out)
{
    char name[USER_NAME_MAX + 2];
    const msgpack_object *roles;
    int rv;
    if ((rv = auth_arg_str(r->args, "name", name, sizeof name, true)) != 0 ||
        (rv = auth_admit_user_name(r->srv, name, strlen(name))) != 0 ||
        (rv = arg_strs(r->args, "roles", &roles, NULL)) != 0)
        return rv;
    if (roles == NULL || roles->via.array.size == 0)
        return rp_err(RP_EINVAL, "--set-roles needs at least one role");
    if ((rv = rp_node_barrier(r->srv->node, AUTH_READ_TIMEOUT_MS)) != 0 ||
        (rv = auth_admit_role_refs(r->srv, roles)) != 0)
        return rv;
    struct rp_buf cur, res, ops;
    msgpack_unpacked u;
    uint64_t rev;
    rp_buf_init(&cur);
    rp_buf_init(&res);
    rp_buf_init(&ops);
    rv = read_res(r->srv, "user", name, &cur, &u, &rev);
    if (rv == RP_ENOTFOUND)
        rv = rp_err(RP_ENOTFOUND, "user '%s' does not exist", name);
    if (rv != 0)
        goto out;
    /* The stored user with spec.roles replaced, everything else kept. */
    msgpack_packer pk;
    rp_mp_packer_init(&pk, &res);
    const msgpack_object *m = &u.data;
    msgpack_pack_map(&pk, m->via.map.size);
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object_kv *kv = &m->via.map.ptr[i];
        msgpack_pack_object(&pk, kv->key);
        if (!rp_mp_str_eq(&kv->key, "spec") || kv->val.type != MSGPACK_OBJECT_MAP) {
            msgpack_pack_object(&pk, kv->val);
            continue;
        }
        bool had = rp_mp_get(&kv->val, "roles") != NULL;
        msgpack_pack_map(&pk, kv->val.via.map.size + (had ? 0 : 1));
        for (uint32_t j = 0; j < kv->val.via.map.size; j++) {
            const msgpack_object_kv *f = &kv->val.via.map.ptr[j];
            msgpack_pack_object(&pk, f->key);
            if (rp_mp_str_eq(&f->key, "roles"))
                pack_strs(&pk, roles);
            else
                msgpack_pack_object(&pk, f->val);
        }
        if (!had) {
            rp_mp_pack_str(&pk, "roles");
            pack_strs(&pk, roles);
        }
    }
    msgpack_unpacked_destroy(&u);
    if ((rv = add_op(&ops, "cas", &res, NULL, NULL, rev)) == 0)
        rv = propose_batch(r->srv, &ops, 1);
    if (rv == RP_ECONFLICT)
        rv = rp_err(RP_ECONFLICT, "user '%s' changed meanwhile: try again", name);
    if (rv == 0) {
        audit_user(r, "user.update", "T1003I", name, roles);
        struct rp_mp_map ans;
        auth_reply_ok(&ans, &pk, out);
        rp_mp_map_end(&ans);
    }
out:
    rp_buf_free(&cur);
    rp_buf_free(&res);
    rp_buf_free(&ops);
    return rv;
}

/* Deletes every user_token of @user (best effort: a token left behind is useless
 * once the user or its reset is gone, and expires anyway). */
struct tok_ctx {
    const char *user;
    char names[32][40];
    unsigned n;
};

static int tok_cb(void *arg, const void *res, size_t len)
{
    struct tok_ctx *t = arg;
    msgpack_unpacked u;
    if (t->n >= 32 || rp_mp_parse(res, len, &u) != 0)
        return 0;
    const char *nm;
    size_t nl;
    if (rp_mp_str_eq(rp_mp_get(rp_mp_get(&u.data, "spec"), "user"), t->user) &&
        rp_mp_get_str(rp_mp_get(&u.data, "metadata"), "name", &nm, &nl) == 0 && nl < 40) {
        memcpy(t->names[t->n], nm, nl);
        t->names[t->n++][nl] = '\0';
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}

static int tokens_of(struct auth_server *s, const char *user, struct rp_buf *ops, uint32_t *n)
{
    struct tok_ctx t = {.user = user, .n = 0};
    int rv = state_list(s->state, "user_token", NULL, 0, tok_cb, &t, NULL);
    for (unsigned i = 0; rv == 0 && i < t.n; i++, (*n)++)
        rv = add_op(ops, "delete", NULL, "user_token", t.names[i], 0);
    return rv;
}

static bool exists(struct auth_server *s, const char *kind, const char *name)
{
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = state_get(s->state, kind, name, &b, NULL);
    rp_buf_free(&b);
    return rv == 0;
}

int auth_h_user_rm(struct auth_req *r, struct rp_buf *out)
{
    char name[USER_NAME_MAX + 2];
    int rv;
    /* No name rule here: a user stored under a name the rule now refuses (made by an
     * older version) must still be removable. */
    if ((rv = auth_arg_str(r->args, "name", name, sizeof name, true)) != 0)
        return rv;
    if ((rv = rp_node_barrier(r->srv->node, AUTH_READ_TIMEOUT_MS)) != 0)
        return rv;
    struct rp_buf ops;
    uint32_t n = 1;
    rp_buf_init(&ops);
    rv = add_op(&ops, "delete", NULL, "user", name, 0);
    if (rv == 0 && exists(r->srv, "user_secret", name)) {
        rv = add_op(&ops, "delete", NULL, "user_secret", name, 0);
        n++;
    }
    if (rv == 0)
        rv = tokens_of(r->srv, name, &ops, &n);
    if (rv == 0)
        rv = propose_batch(r->srv, &ops, n);
    if (rv == RP_ENOTFOUND)
        rv = rp_err(RP_ENOTFOUND, "user '%s' does not exist", name);
    rp_buf_free(&ops);
    if (rv == 0) {
        audit_user(r, "user.delete", "T1004I", name, NULL);
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        rp_mp_map_end(&m);
    }
    return rv;
}

int auth_h_user_reset(struct auth_req *r, struct rp_buf *out)
{
    char name[USER_NAME_MAX + 2], token[33];
    uint64_t ttl;
    int rv;
    if ((rv = auth_arg_str(r->args, "name", name, sizeof name, true)) != 0 ||
        (rv = auth_admit_user_name(r->srv, name, strlen(name))) != 0 ||
        (rv = invite_ttl(r->args, &ttl)) != 0)
        return rv;
    if ((rv = rp_node_barrier(r->srv->node, AUTH_READ_TIMEOUT_MS)) != 0)
        return rv;
    if (!exists(r->srv, "user", name))
        return rp_err(RP_ENOTFOUND, "user '%s' does not exist", name);
    /* A reset drops the password and second factor and the old invites. */
    uint64_t expires = rp_now_ms() + ttl;
    struct rp_buf tok, ops;
    uint32_t n = 1;
    rp_buf_init(&tok);
    rp_buf_init(&ops);
    rv = make_token(name, "reset", expires, token, &tok);
    if (rv == 0 && exists(r->srv, "user_secret", name)) {
        rv = add_op(&ops, "delete", NULL, "user_secret", name, 0);
        n++;
    }
    if (rv == 0)
        rv = tokens_of(r->srv, name, &ops, &n);
    if (rv == 0)
        rv = add_op(&ops, "create", &tok, NULL, NULL, 0);
    if (rv == 0)
        rv = propose_batch(r->srv, &ops, n);
    if (rv == 0) {
        audit_user(r, "user.update", "T1003I", name, NULL);
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        rp_mp_map_str(&m, "token", token);
        rp_mp_map_u64(&m, "expires", expires);
        rp_mp_map_end(&m);
    }
    rp_buf_free(&tok);
    rp_buf_free(&ops);
    return rv;
}

/* invite_info {token}: whose invite a token is, so that a client can name the user
 * before the password is set (the proxy's GET /webapi/invite/TOKEN, for tsh login
 * --invite). Anonymous: holding the token is the right to know; an unknown, used or
 * expired token gets invite_redeem's one answer. */
int auth_h_invite_info(struct auth_req *r, struct rp_buf *out)
{
    char token[40], user[USER_NAME_MAX + 2] = "";
    struct rp_buf tb;
    msgpack_unpacked tu;
    uint64_t trev = 0, expires = 0;
    int rv = auth_arg_str(r->args, "token", token, sizeof token, true);
    if (rv != 0)
        return rv;
    rp_buf_init(&tb);
    rv = read_res(r->srv, "user_token", token, &tb, &tu, &trev);
    if (rv == 0) {
        rp_mp_get_u64(rp_mp_get(&tu.data, "metadata"), "expires", &expires);
        if ((expires != 0 && expires <= rp_now_ms()) ||
            copy_str(rp_mp_get(&tu.data, "spec"), "user", user, sizeof user) != 0)
            rv = RP_ENOTFOUND;
        msgpack_unpacked_destroy(&tu);
    }
    rp_buf_free(&tb);
    if (rv == RP_ENOTFOUND)
        return rp_err(RP_EDENIED, "the invite token is invalid, expired or already used");
    if (rv != 0)
        return rv;
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "user", user);
    rp_mp_map_u64(&m, "expires", expires);
    rp_mp_map_end(&m);
    return 0;
}

/* invite_redeem {token, password, totp_secret?, totp_code?}: anonymous callers
 * (the user has no certificate yet). Every failure looks the same to the caller
 * as far as the token goes: invalid, expired and used tokens are one answer. */
int auth_h_invite_redeem(struct auth_req *r, struct rp_buf *out)
{
    char token[40], user[USER_NAME_MAX + 2] = "", secret_b32[64] = "", code[16];
    char password[1032];
    const char *pw;
    size_t pwn;
    int rv;
    if ((rv = auth_arg_str(r->args, "token", token, sizeof token, true)) != 0 ||
        (rv = auth_arg_str(r->args, "totp_secret", secret_b32, sizeof secret_b32, false)) != 0 ||
        (rv = auth_arg_str(r->args, "totp_code", code, sizeof code, false)) != 0)
        return rv;
    if (rp_mp_get_str(r->args, "password", &pw, &pwn) != 0)
        return rp_err(RP_EINVAL, "argument 'password' is required");
    if ((rv = rp_password_check_policy(pw, pwn)) != 0)
        return rv; /* says what the policy wants; nothing about the token */
    if ((secret_b32[0] != '\0') != (code[0] != '\0'))
        return rp_err(RP_EINVAL, "a second factor needs both totp_secret and totp_code");
    if ((rv = rp_node_barrier(r->srv->node, AUTH_READ_TIMEOUT_MS)) != 0)
        return rv;

    struct rp_buf tb, sec, ops;
    msgpack_unpacked tu;
    uint64_t trev = 0, step = 0;
    const char *why = NULL;
    uint8_t secret[64];
    size_t secret_len = 0;
    char hash[256];
    rp_buf_init(&tb);
    rp_buf_init(&sec);
    rp_buf_init(&ops);
    rv = read_res(r->srv, "user_token", token, &tb, &tu, &trev);
    if (rv == 0) {
        uint64_t expires = 0;
        rp_mp_get_u64(rp_mp_get(&tu.data, "metadata"), "expires", &expires);
        const msgpack_object *spec = rp_mp_get(&tu.data, "spec");
        if (expires != 0 && expires <= rp_now_ms())
            why = "expired";
        else if (copy_str(spec, "user", user, sizeof user) != 0)
            why = "malformed";
        msgpack_unpacked_destroy(&tu);
    } else if (rv == RP_ENOTFOUND) {
        why = "unknown or already used";
    }
    if (why != NULL) {
        rp_warn("auth", "invite redemption from %s refused: token %s", r->remote, why);
        struct audit_event e;
        audit_event_init(&e, "user.password_change", "T1005W");
        audit_event_str(&e, "addr.remote", r->remote);
        audit_event_bool(&e, "success", false);
        audit_event_str(&e, "error", "invalid, expired or used invite token");
        audit_emit(r->srv, &e, AUDIT_ASYNC);
        rv = rp_err(RP_EDENIED, "the invite token is invalid, expired or already used");
        goto out;
    }
    if (rv != 0)
        goto out;
    if (secret_b32[0]) {
        if ((rv = rp_base32_decode(secret_b32, secret, sizeof secret, &secret_len)) != 0 ||
            secret_len < 16) {
            rv = rp_err(RP_EINVAL, "totp_secret: expected base32 of at least 16 bytes");
            goto out;
        }
        if ((rv = rp_totp_verify(secret, secret_len, code, rp_now_ms(), 0, &step)) != 0) {
            rv = rp_err(RP_EDENIED, "the one-time code does not match the new second factor: "
                                    "check the authenticator app's clock");
            goto out;
        }
    }
    snprintf(password, sizeof password, "%.*s", (int)pwn, pw);
    rv = rp_password_hash(password, pwn, hash, sizeof hash);
    OPENSSL_cleanse(password, sizeof password);
    if (rv != 0)
        goto out;
    msgpack_packer pk;
    struct rp_mp_map m, spec;
    rp_mp_packer_init(&pk, &sec);
    resource_begin(&pk, &m, &spec, "user_secret", user, 0);
    rp_mp_map_str(&spec, "password_hash", hash);
    if (secret_b32[0]) {
        rp_mp_map_str(&spec, "totp_secret", secret_b32);
        rp_mp_map_u64(&spec, "totp_last_step", step);
    }
    auth_resource_end(&m, &spec);
    /* The token goes at the revision read, in the same batch as the password. */
    if ((rv = add_op(&ops, "cdelete", NULL, "user_token", token, trev)) == 0 &&
        (rv = add_op(&ops, "put", &sec, NULL, NULL, 0)) == 0)
        rv = propose_batch(r->srv, &ops, 2);
    if (rv == RP_ECONFLICT || rv == RP_ENOTFOUND)
        rv = rp_err(RP_EDENIED, "the invite token is invalid, expired or already used");
    if (rv == 0) {
        struct audit_event e;
        audit_event_init(&e, "user.password_change", "T1005I");
        audit_event_str(&e, "user", user);
        audit_event_bool(&e, "totp", secret_b32[0] != '\0');
        audit_event_str(&e, "addr.remote", r->remote);
        audit_emit(r->srv, &e, AUDIT_WAIT);
        auth_reply_ok(&m, &pk, out);
        rp_mp_map_str(&m, "user", user);
        rp_mp_map_end(&m);
    }
out:
    OPENSSL_cleanse(hash, sizeof hash);
    OPENSSL_cleanse(secret, sizeof secret);
    rp_buf_free(&tb);
    rp_buf_free(&sec);
    rp_buf_free(&ops);
    return rv;
}
