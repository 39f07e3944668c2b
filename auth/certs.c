/* auth/certs.c: user certificates, and logging in with a password.
 *
 * A user's certificates say what its roles allow, computed by auth/rbac.c from
 * the roles stored now: the SSH principals are the allowed logins after trait
 * expansion, the validity is capped by the smallest max_session_ttl, and the
 * permit-* extensions follow the combined options. The X.509 certificate carries
 * the same identity (CN user, O roles, L logins, cluster and route). No
 * certificate leaves without its cert.create event in the replicated audit log. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth/audit.h"
#include "auth/internal.h"
#include "auth/locks.h"
#include "auth/login_guard.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/lockout.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/password.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/totp.h"
#include "lib/util.h"
#include "state/state.h"

#define USER_DEFAULT_TTL_MS (12ull * 3600 * 1000)
#define MAX_ROLES 64

struct issued {
    char ssh_refused[512]; /* why the SSH certificate grants no login ("" if it does) */
    char *ssh_cert;
    char *tls_cert;
    char *tls_ca;
    uint64_t expires_ms;
};

static void issued_free(struct issued *c)
{
    free(c->ssh_cert);
    free(c->tls_cert);
    free(c->tls_ca);
    memset(c, 0, sizeof *c);
}

/* The user's stored resource, its roles parsed. */
struct user_view {
    struct rp_buf buf;
    msgpack_unpacked u;
    bool parsed;
    struct rbac_role *roles[MAX_ROLES];
    char *role_names[MAX_ROLES];
    size_t n_roles;
};

static void user_view_free(struct auth_server *s, struct user_view *v)
{
    for (size_t i = 0; i < v->n_roles; i++) {
        auth_role_release(s, v->roles[i]);
        free(v->role_names[i]);
    }
    if (v->parsed)
        msgpack_unpacked_destroy(&v->u);
    rp_buf_free(&v->buf);
}

static int user_view_load(struct auth_server *s, const char *user, struct user_view *v)
{
    memset(v, 0, sizeof *v);
    rp_buf_init(&v->buf);
    int rv = state_get(s->state, "user", user, &v->buf, NULL);
    if (rv == RP_ENOTFOUND)
        return rp_err(RP_ENOTFOUND, "user '%s' does not exist", user);
    if (rv != 0 || (rv = rp_mp_parse(v->buf.data, v->buf.len, &v->u)) != 0)
        return rv;
    v->parsed = true;
    const msgpack_object *roles = rp_mp_get(rp_mp_get(&v->u.data, "spec"), "roles");
    if (roles == NULL || roles->type != MSGPACK_OBJECT_ARRAY || roles->via.array.size == 0)
        return rp_err(RP_EDENIED, "user '%s' has no roles", user);
    for (uint32_t i = 0; i < roles->via.array.size && i < MAX_ROLES; i++) {
        const msgpack_object *o = &roles->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR)
            return rp_err(RP_EIO, "user '%s': spec.roles[%u] is not a string", user, i);
        char name[256];
        snprintf(name, sizeof name, "%.*s", (int)o->via.str.size, o->via.str.ptr);
        rv = auth_role_load(s, name, &v->roles[v->n_roles]);
        if (rv == RP_ENOTFOUND)
            rv = rp_err(RP_EDENIED, "role '%s' of user '%s' does not exist", name, user);
        if (rv != 0)
            return rv;
        v->role_names[v->n_roles++] = strdup(name);
    }
    return 0;
}

/* ---- what a user's certificates say ------------------------------------------ */

/* Computed from the user and its roles as stored when state_resources_changed() said
 * @changed, and immutable from then on: a burst of logins by one user reads and
 * evaluates its roles once, not once per certificate. */
struct auth_issue_view {
    char user[160];
    uint64_t changed;
    unsigned refs; /* under auth_issue_cache.mu */
    bool current;  /* still in auth_issue_cache.views */
    char **role_names;
    size_t n_roles;
    char **logins; /* after trait expansion; may be none */
    size_t n_logins;
    struct rbac_options opt;
    char *roles_json;      /* the teleport-roles extension */
    char *traits_json;     /* the teleport-traits extension */
    char ssh_refused[512]; /* a role fails closed: why SSH access is refused ("" if not) */
};

static void view_free(struct auth_issue_view *v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; i < v->n_roles; i++)
        free(v->role_names[i]);
    free(v->role_names);
    rbac_logins_free(v->logins, v->n_logins);
    free(v->roles_json);
    free(v->traits_json);
    free(v);
}

/* The views of the users who asked for certificates lately, shared by reference
 * count: a view stays while it is current (in views[]) or held. */
#define ISSUE_CACHE_SLOTS 16
struct auth_issue_cache {
    pthread_mutex_t mu;
    struct auth_issue_view *views[ISSUE_CACHE_SLOTS];
};

int auth_issue_cache_new(struct auth_issue_cache **out)
{
    struct auth_issue_cache *c = calloc(1, sizeof *c);
    if (c == NULL)
        return rp_err(RP_ENOMEM, "issuance cache");
    pthread_mutex_init(&c->mu, NULL);
    *out = c;
    return 0;
}

void auth_issue_cache_free(struct auth_issue_cache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < ISSUE_CACHE_SLOTS; i++)
        view_free(c->views[i]);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int view_build(struct auth_server *s, const char *user, uint64_t changed,
                      struct auth_issue_view **out)
{
    struct user_view uv;
    struct rbac_set *set = NULL;
    struct rp_buf roles_json, traits_json;
    rp_buf_init(&roles_json);
    rp_buf_init(&traits_json);
    struct auth_issue_view *v = calloc(1, sizeof *v);
    int rv = v ? user_view_load(s, user, &uv) : rp_err(RP_ENOMEM, "issuance view");
    if (v == NULL)
        return rv;
    const msgpack_object *traits =
        uv.parsed ? rp_mp_get(rp_mp_get(&uv.u.data, "spec"), "traits") : NULL;
    if (rv == 0)
        rv = rbac_set_new(uv.roles, uv.n_roles, traits, &set);
    if (rv == 0)
        rv = rbac_logins(set, &v->logins, &v->n_logins);
    if (rv != 0)
        goto out;
    rbac_options(set, &v->opt);
    if (rbac_set_ssh_refused(set, v->ssh_refused, sizeof v->ssh_refused) == 0)
        v->ssh_refused[0] = '\0';
    snprintf(v->user, sizeof v->user, "%s", user);
    v->changed = changed;
    if ((v->role_names = calloc(uv.n_roles, sizeof *v->role_names)) == NULL) {
        rv = rp_err(RP_ENOMEM, "issuance view");
        goto out;
    }
    rp_buf_append_str(&roles_json, "{\"version\":\"v1\",\"roles\":[");
    for (size_t i = 0; i < uv.n_roles; i++) {
        if ((v->role_names[i] = strdup(uv.role_names[i])) == NULL) {
            rv = rp_err(RP_ENOMEM, "issuance view");
            goto out;
        }
        v->n_roles++;
        rp_buf_append_str(&roles_json, i ? "," : "");
        rp_json_str(&roles_json, uv.role_names[i], strlen(uv.role_names[i]));
    }
    rp_buf_append_str(&roles_json, "]}");
    if (traits && traits->type == MSGPACK_OBJECT_MAP)
        rp_json_from_mp(&traits_json, traits, 0);
    else
        rp_buf_append_str(&traits_json, "{}");
    if (rp_buf_append(&roles_json, "", 1) != 0 || rp_buf_append(&traits_json, "", 1) != 0 ||
        (v->roles_json = strdup((char *)roles_json.data)) == NULL ||
        (v->traits_json = strdup((char *)traits_json.data)) == NULL)
        rv = rp_err(RP_ENOMEM, "issuance view");
out:
    rbac_set_free(set);
    user_view_free(s, &uv);
    rp_buf_free(&roles_json);
    rp_buf_free(&traits_json);
    if (rv != 0) {
        view_free(v);
        return rv;
    }
    *out = v;
    return 0;
}

/* The current view of @user (release it with view_release): cached, or built and
 * cached. Errors (no such user, no roles) are not cached. */
static int view_get(struct auth_server *s, const char *user, struct auth_issue_view **out)
{
    struct auth_issue_cache *c = s->issued;
    const size_t n_slots = ISSUE_CACHE_SLOTS;
    /* Read before the resources: a change landing meanwhile makes the view look older
     * than it is, never newer. */
    uint64_t changed = state_resources_changed(s->state);
    pthread_mutex_lock(&c->mu);
    for (size_t i = 0; i < n_slots; i++) {
        struct auth_issue_view *v = c->views[i];
        if (v && v->changed == changed && strcmp(v->user, user) == 0) {
            v->refs++;
            pthread_mutex_unlock(&c->mu);
            *out = v;
            return 0;
        }
    }
    pthread_mutex_unlock(&c->mu);
    struct auth_issue_view *v = NULL;
    int rv = view_build(s, user, changed, &v);
    if (rv != 0)
        return rv;
    v->refs = 1;
    /* The slot: this user's older view, else an empty one, else one nobody holds
     * (outdated ones first). With every slot held, the view is simply not cached. */
    pthread_mutex_lock(&c->mu);
    size_t pick = n_slots;
    for (size_t i = 0; i < n_slots && pick == n_slots; i++)
        if (c->views[i] && strcmp(c->views[i]->user, user) == 0)
            pick = i;
    for (size_t i = 0; i < n_slots && pick == n_slots; i++)
        if (c->views[i] == NULL)
            pick = i;
    for (size_t i = 0; i < n_slots && pick == n_slots; i++)
        if (c->views[i]->refs == 0 && c->views[i]->changed != changed)
            pick = i;
    for (size_t i = 0; i < n_slots && pick == n_slots; i++)
        if (c->views[i]->refs == 0)
            pick = i;
    if (pick < n_slots) {
        struct auth_issue_view *old = c->views[pick];
        if (old) {
            old->current = false;
            if (old->refs == 0)
                view_free(old);
        }
        c->views[pick] = v;
        v->current = true;
    }
    pthread_mutex_unlock(&c->mu);
    *out = v;
    return 0;
}

static void view_release(struct auth_server *s, struct auth_issue_view *v)
{
    if (v == NULL)
        return;
    struct auth_issue_cache *c = s->issued;
    pthread_mutex_lock(&c->mu);
    bool last = --v->refs == 0 && !v->current;
    pthread_mutex_unlock(&c->mu);
    if (last)
        view_free(v);
}

/* The public keys of a request, checked: the SSH key's blob, and the TLS key's
 * SubjectPublicKeyInfo when the request has one. */
struct req_keys {
    uint8_t *ssh;
    size_t ssh_len;
    bool has_tls;
    unsigned char tls[RP_TLS_P256_SPKI_LEN];
};

/* Issues the SSH certificate for @k's SSH key (and the X.509 one for its TLS key). */
static int issue(struct auth_server *s, const char *user, const struct req_keys *k,
                 uint64_t want_ttl_ms, const char *caller, const char *remote, uint64_t term,
                 struct issued *out)
{
    struct auth_issue_view *v = NULL;
    char *nologin[1] = {NULL};
    EVP_PKEY *ca = NULL;
    struct rp_buf blob;
    rp_buf_init(&blob);
    memset(out, 0, sizeof *out);
    int rv = view_get(s, user, &v);
    if (rv != 0)
        goto out;
    /* A locked user, role or login gets no certificate, whoever asks for it. */
    struct rp_identity subject = {.name = (char *)user,
                                  .groups = v->role_names,
                                  .n_groups = v->n_roles,
                                  .logins = v->logins,
                                  .n_logins = v->n_logins};
    char why[512];
    if ((rv = auth_locks_check(s->locks, &subject, why, sizeof why)) != 0)
        goto out;
    snprintf(out->ssh_refused, sizeof out->ssh_refused, "%s", v->ssh_refused);
    uint64_t ttl = want_ttl_ms ? want_ttl_ms : USER_DEFAULT_TTL_MS;
    if (ttl > v->opt.max_session_ttl_ms)
        ttl = v->opt.max_session_ttl_ms;
    /* The cluster's ceiling holds whatever the roles say. */
    if (ttl > s->cfg->max_session_ttl_ms)
        ttl = s->cfg->max_session_ttl_ms;
    uint64_t now = rp_now_ms() / 1000;
    out->expires_ms = (now + ttl / 1000) * 1000;

    /* A certificate without principals is valid for every login: never issue one. */
    char **principals = v->logins;
    size_t np = v->n_logins;
    if (np == 0) {
        char id[40];
        rp_random_hex(id, 16);
        if (asprintf(&nologin[0], "-teleport-nologin-%s", id) < 0) {
            rv = rp_err(RP_ENOMEM, "principal");
            goto out;
        }
        principals = nologin;
        np = 1;
    }
    struct rp_ssh_cert_opt exts[8];
    size_t ne = 0;
    exts[ne++] = (struct rp_ssh_cert_opt){"permit-pty", ""};
    /* OpenSSH's one flag covers both directions: given only when both are allowed, so a
     * role that forbids remote forwarding is obeyed by stock sshd too. */
    if (v->opt.port_forwarding && v->opt.remote_port_forwarding)
        exts[ne++] = (struct rp_ssh_cert_opt){"permit-port-forwarding", ""};
    if (v->opt.forward_agent)
        exts[ne++] = (struct rp_ssh_cert_opt){"permit-agent-forwarding", ""};
    if (v->opt.permit_x11_forwarding)
        exts[ne++] = (struct rp_ssh_cert_opt){"permit-X11-forwarding", ""};
    exts[ne++] = (struct rp_ssh_cert_opt){"teleport-roles", v->roles_json};
    exts[ne++] = (struct rp_ssh_cert_opt){"teleport-traits", v->traits_json};
    exts[ne++] = (struct rp_ssh_cert_opt){"teleport-route-to-cluster", s->id.cluster_name};
    struct rp_ssh_cert cert = {
        .type = RP_SSH_CERT_USER,
        .key_blob = k->ssh,
        .key_blob_len = k->ssh_len,
        .key_id = (char *)user,
        .principals = principals,
        .n_principals = np,
        .valid_after = now - 60,
        .valid_before = now + ttl / 1000,
        .extensions = exts,
        .n_extensions = ne,
    };
    if ((rv = auth_ssh_ca_key(s, "user", &ca)) != 0 ||
        (rv = rp_ssh_cert_sign(&cert, ca, &blob)) != 0 ||
        (rv = rp_ssh_cert_format(blob.data, blob.len, user, &out->ssh_cert)) != 0)
        goto out;
    if (k->has_tls) {
        struct rp_identity id = {.name = (char *)user,
                                 .groups = v->role_names,
                                 .n_groups = v->n_roles,
                                 .logins = v->logins,
                                 .n_logins = v->n_logins,
                                 .cluster = s->id.cluster_name,
                                 .route_cluster = s->id.cluster_name};
        if ((rv = auth_sign_identity(s, k->tls, &id, NULL, 0, (long)(ttl / 1000),
                                     &out->tls_cert)) != 0 ||
            (rv = (out->tls_ca = strdup(s->id.ca_pem)) ? 0 : rp_err(RP_ENOMEM, "CA PEM")) != 0)
            goto out;
    }
    struct audit_event e;
    audit_event_init(&e, "cert.create", "TC000I");
    audit_event_str(&e, "user", caller);
    audit_event_str(&e, "identity", user);
    audit_event_str(&e, "cert_type", "user");
    audit_event_strs(&e, "roles", (const char *const *)v->role_names, v->n_roles);
    audit_event_strs(&e, "logins", (const char *const *)principals, np);
    audit_event_u64(&e, "ttl_s", ttl / 1000);
    if (v->ssh_refused[0])
        audit_event_str(&e, "ssh_refused", v->ssh_refused);
    audit_event_str(&e, "addr.remote", remote);
    /* No audit record, no certificate; and the roles read above must have been
     * current: @term is the leadership they were read under (0: read after a
     * barrier of the caller's own). */
    rv = term ? audit_emit_in_term(s, &e, term) : audit_emit(s, &e, AUDIT_WAIT);
out:
    if (rv != 0)
        issued_free(out);
    free(nologin[0]);
    view_release(s, v);
    EVP_PKEY_free(ca);
    rp_buf_free(&blob);
    return rv;
}

static void reply_issued(struct rp_buf *out, const struct issued *c)
{
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "ssh_cert", c->ssh_cert);
    if (c->ssh_refused[0])
        rp_mp_map_str(&m, "ssh_refused", c->ssh_refused);
    rp_mp_map_u64(&m, "expires", c->expires_ms);
    if (c->tls_cert) {
        rp_mp_map_str(&m, "tls_cert", c->tls_cert);
        rp_mp_map_str(&m, "tls_ca", c->tls_ca);
    }
    rp_mp_map_end(&m);
}

/* ssh_pubkey (an authorized_keys line) and, optional, tls_pubkey (a P-256 PEM). */
static int request_keys(const msgpack_object *args, struct req_keys *k)
{
    char line[8192], pem[2048];
    enum rp_ssh_keytype type;
    int rv;
    memset(k, 0, sizeof *k);
    if ((rv = auth_arg_str(args, "ssh_pubkey", line, sizeof line, true)) != 0 ||
        (rv = auth_arg_str(args, "tls_pubkey", pem, sizeof pem, false)) != 0)
        return rv;
    if (pem[0] && (rv = rp_tls_pubkey_spki(pem, strlen(pem), k->tls)) != 0)
        return rp_err(rv, "tls_pubkey: %s", rp_errmsg());
    k->has_tls = pem[0] != '\0';
    if ((rv = rp_ssh_pubkey_parse_blob(line, &k->ssh, &k->ssh_len, &type)) != 0)
        return rp_err(rv, "ssh_pubkey: %s", rp_errmsg());
    return 0;
}

/* sign_user {user, ssh_pubkey, tls_pubkey?, ttl_ms?}: an administrator issues a user's
 * certificates (tctl auth sign --user). */
int auth_h_sign_user(struct auth_req *r, struct rp_buf *out)
{
    char user[160];
    uint64_t ttl = 0;
    struct req_keys k;
    int rv;
    if ((rv = auth_arg_str(r->args, "user", user, sizeof user, true)) != 0)
        return rv;
    if (rp_mp_get_u64(r->args, "ttl_ms", &ttl) == RP_EINVAL || (ttl && ttl < 60000))
        return rp_err(RP_EINVAL, "ttl must be at least 1m");
    /* Any server could sign, but the audit record must go through the leader, and
     * the roles read must be current: the method table routes this to the leader. */
    if ((rv = request_keys(r->args, &k)) != 0)
        return rv;
    struct issued c;
    uint64_t term = rp_node_read_term(r->srv->node);
    rv = term ? 0 : rp_node_barrier(r->srv->node, AUTH_READ_TIMEOUT_MS);
    if (rv == 0)
        rv = issue(r->srv, user, &k, ttl, r->caller ? r->caller->name : "?", r->remote, term, &c);
    if (rv == 0) {
        reply_issued(out, &c);
        issued_free(&c);
    }
    free(k.ssh);
    return rv;
}

/* ---- logging in ------------------------------------------------------------- */

/* Every login that reached the password check is recorded, failures included,
 * and the caller waits until the event is committed: a flood of failures then
 * slows its senders down instead of overflowing the audit queue (rate limits and
 * the hashing pool bound how many wait). */
static int audit_login(struct auth_server *s, const char *user, const char *remote,
                       const char *error)
{
    struct audit_event e;
    audit_event_init(&e, "user.login", error ? "T1000W" : "T1000I");
    audit_event_str(&e, "user", user);
    audit_event_str(&e, "method", "local");
    audit_event_bool(&e, "success", error == NULL);
    audit_event_str(&e, "error", error);
    audit_event_str(&e, "addr.remote", remote);
    return audit_emit(s, &e, AUDIT_WAIT);
}

/* Writes the lockout state (and TOTP step) back with a cas on the secret's revision;
 * a conflict (two logins at once) is retried by the caller's next attempt. */
static int save_secret(struct auth_server *s, const msgpack_object *secret, uint64_t rev,
                       const struct rp_lockout *lk, uint64_t totp_step)
{
    struct rp_buf res;
    msgpack_packer pk;
    rp_buf_init(&res);
    rp_mp_packer_init(&pk, &res);
    const msgpack_object *spec = rp_mp_get(secret, "spec");
    uint32_t keep = 0;
    static const char *const ours[] = {"login_failures", "locked_until_ms", "last_failure_ms",
                                       "totp_last_step"};
    for (uint32_t i = 0; spec && i < spec->via.map.size; i++) {
        bool mine = false;
        for (size_t k = 0; k < 4; k++)
            mine = mine || rp_mp_str_eq(&spec->via.map.ptr[i].key, ours[k]);
        keep += !mine;
    }
    msgpack_pack_map(&pk, secret->via.map.size);
    for (uint32_t i = 0; i < secret->via.map.size; i++) {
        const msgpack_object_kv *kv = &secret->via.map.ptr[i];
        msgpack_pack_object(&pk, kv->key);
        if (!rp_mp_str_eq(&kv->key, "spec")) {
            msgpack_pack_object(&pk, kv->val);
            continue;
        }
        msgpack_pack_map(&pk, keep + RP_LOCKOUT_FIELDS + (totp_step ? 1 : 0));
        for (uint32_t j = 0; j < spec->via.map.size; j++) {
            const msgpack_object_kv *f = &spec->via.map.ptr[j];
            bool mine = false;
            for (size_t k = 0; k < 4; k++)
                mine = mine || rp_mp_str_eq(&f->key, ours[k]);
            if (mine)
                continue;
            msgpack_pack_object(&pk, f->key);
            msgpack_pack_object(&pk, f->val);
        }
        rp_lockout_pack_fields(&pk, lk);
        if (totp_step)
            rp_mp_kv_u64(&pk, "totp_last_step", totp_step);
    }
    char rid[33];
    auth_new_rid(rid);
    struct state_cmd c = {.op = "cas", .rid = rid, .res = res.data, .res_len = res.len, .rev = rev};
    int rv = auth_propose_cmd(s, &c, NULL);
    OPENSSL_cleanse(res.data, res.cap);
    rp_buf_free(&res);
    return rv;
}

/* authenticate {user, password, totp_code?, ssh_pubkey, tls_pubkey?, ttl_ms?}: anonymous
 * callers log in. Wrong user, wrong password and wrong code are one answer; five
 * failures lock the user for 30 minutes, and the lock is replicated.
 *
 * Before any work, the source address (on the server the caller reached, and again
 * on the leader, which sees every server's callers) and the user name must be
 * within their rate limits; the password is then checked on the bounded hashing
 * pool, an unknown user against a dummy hash (auth/login_guard.h). Refusals for
 * the limits or a busy pool answer "busy" and are audited in summary. */
int auth_h_authenticate(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    char user[160], code[16];
    const char *pw;
    size_t pwn;
    uint64_t ttl = 0;
    int rv;
    if ((rv = auth_arg_str(r->args, "user", user, sizeof user, true)) != 0 ||
        (rv = auth_arg_str(r->args, "totp_code", code, sizeof code, false)) != 0)
        return rv;
    if (rp_mp_get_str(r->args, "password", &pw, &pwn) != 0 || pwn == 0 ||
        pwn > RP_PASSWORD_MAX_BYTES)
        return rp_err(RP_EINVAL, "argument 'password' is required (1 to %d bytes)",
                      RP_PASSWORD_MAX_BYTES);
    if (rp_mp_get_u64(r->args, "ttl_ms", &ttl) == RP_EINVAL || (ttl && ttl < 60000))
        return rp_err(RP_EINVAL, "ttl must be at least 1m");
    if (!r->from_peer && (rv = auth_login_admit_address(s, r->remote)) != 0)
        return rv;
    if (!auth_is_leader(s)) {
        if (r->from_peer)
            return rp_err(RP_ENOTLEADER, "not the leader");
        if ((rv = auth_login_forward_begin(s)) != 0)
            return rv;
        rv = auth_forward_req(r, out);
        auth_login_forward_end(s);
        return rv;
    }
    if (r->from_peer && (rv = auth_login_admit_address(s, r->remote)) != 0)
        return rv;
    if ((rv = auth_login_admit_user(s, user, r->remote)) != 0)
        return rv;
    struct req_keys k;
    if ((rv = request_keys(r->args, &k)) != 0) {
        free(k.ssh);
        return rv;
    }
    if ((rv = rp_node_barrier(s->node, AUTH_READ_TIMEOUT_MS)) != 0)
        goto out_keys;

    struct rp_buf sb;
    msgpack_unpacked su;
    bool parsed = false;
    uint64_t rev = 0, now = rp_now_ms(), step = 0;
    struct rp_lockout lk = {0};
    const char *hash = NULL, *why = NULL;
    rp_buf_init(&sb);
    if (state_get(s->state, "user_secret", user, &sb, NULL) == 0 &&
        rp_mp_parse(sb.data, sb.len, &su) == 0) {
        parsed = true;
        const msgpack_object *spec = rp_mp_get(&su.data, "spec");
        rp_mp_get_u64(rp_mp_get(&su.data, "metadata"), "revision", &rev);
        rp_lockout_decode_fields(spec, &lk);
        const char *h;
        size_t hn;
        if (rp_mp_get_str(spec, "password_hash", &h, &hn) == 0)
            hash = strndup(h, hn);
    }
    uint64_t locked_ms = rp_lockout_is_locked(&lk, now);
    int checked = 0;
    if (locked_ms) {
        why = "user is locked after too many failed logins";
    } else if ((checked = auth_login_verify(s, pw, pwn, hash)) == RP_EBUSY ||
               checked == RP_ENOMEM) {
        rv = checked; /* not checked at all: neither a failure to count nor to audit */
        goto out;
    } else if (checked != 0) {
        why = "invalid user name or password"; /* the same when the user does not exist */
    } else {
        const msgpack_object *spec = rp_mp_get(&su.data, "spec");
        const char *sec;
        size_t secn;
        if (rp_mp_get_str(spec, "totp_secret", &sec, &secn) == 0) {
            uint8_t key[64];
            size_t keylen = 0;
            char b32[128];
            uint64_t last = 0;
            rp_mp_get_u64(spec, "totp_last_step", &last);
            snprintf(b32, sizeof b32, "%.*s", (int)secn, sec);
            if (!code[0])
                why = "a one-time code (second factor) is required";
            else if (rp_base32_decode(b32, key, sizeof key, &keylen) != 0 ||
                     rp_totp_verify(key, keylen, code, now, last, &step) != 0)
                why = "invalid one-time code";
            OPENSSL_cleanse(key, sizeof key);
        }
    }
    if (why != NULL) {
        if (parsed && !locked_ms) {
            struct rp_lockout_policy pol = {s->cfg->max_login_attempts, s->cfg->lockout_ms};
            bool locked = rp_lockout_record_failure(&lk, now, &pol);
            if (save_secret(s, &su.data, rev, &lk, 0) != 0)
                rp_warn("auth", "recording a failed login of %s: %s", user, rp_errmsg());
            if (locked)
                rp_warn("auth", "user %s locked after %u failed logins", user, lk.failures);
        } else if (!parsed) {
            /* A known user's failure costs a Raft write (the lockout state); an
             * unknown one costs a Raft round too, so the time taken does not say
             * which names exist. */
            rp_node_barrier(s->node, AUTH_READ_TIMEOUT_MS);
        }
        /* A failure to commit is logged by the audit batcher, once per batch. */
        audit_login(s, user, r->remote, why);
        rv = locked_ms ? rp_err(RP_EDENIED, "%s; try again in %llu minutes", why,
                                (unsigned long long)(locked_ms + 59999) / 60000)
                       : rp_err(RP_EDENIED, "%s", why);
        goto out;
    }
    if (lk.failures || step) {
        rp_lockout_record_success(&lk);
        if ((rv = save_secret(s, &su.data, rev, &lk, step)) != 0)
            goto out; /* a TOTP step must be recorded before it is accepted: no replay */
    }
    struct issued c;
    if ((rv = issue(s, user, &k, ttl, user, r->remote, 0, &c)) != 0)
        goto out;
    audit_login(s, user, r->remote, NULL);
    reply_issued(out, &c);
    issued_free(&c);
out:
    free((char *)hash);
    if (parsed)
        msgpack_unpacked_destroy(&su);
    if (sb.data)
        OPENSSL_cleanse(sb.data, sb.cap);
    rp_buf_free(&sb);
out_keys:
    free(k.ssh);
    return rv;
}
