/* auth/admit.c: what a resource must be to enter the state through the API.
 *
 * Every resource written by put, create, update, cas, and by each op of a batch,
 * passes auth_admit_resource before it becomes a Raft command. The state layer
 * only checks the shape every resource shares (state/state.h); the rules of each
 * kind live here, once:
 *
 *   every kind   metadata.name follows lib/names.h (a token's name is its secret:
 *                never echoed); metadata.expires may be RFC 3339 text (Teleport's
 *                files) and is stored as u64 ms, which is what makes the state
 *                delete the resource when its time comes
 *   role         parsed by auth/rbac.c and stored in its canonical form; a name
 *                that is a Teleport system role name in any case is refused
 *   user         Teleport's user v2: spec.roles name existing roles (none a system
 *                role name), spec.traits maps names to lists of strings, logins
 *                are Unix login names or trait templates
 *   token        Teleport's provision token v2: an expiry in (now, now + 48h],
 *                30m when absent; spec.roles Teleport's system roles a token may
 *                grant, in Teleport's spelling; spec.join_method one Teleport knows
 *                ("token" when absent); names of join_method token are secrets of
 *                at least 16 bytes
 *   user_token   an invite or reset: expires within 48h, like a token
 *   lock         Teleport's lock v2: spec.target names at least one of user, role,
 *                login, server_id, node, access_request; spec.expires (RFC 3339)
 *                becomes metadata.expires so the lock goes away on time
 *
 * Kinds without rules of their own (the generic store the tests and Jepsen use)
 * get the name rule only. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <openssl/sha.h>

#include "auth/internal.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/names.h"
#include "lib/util.h"

#define TOKEN_DEFAULT_TTL_MS (30ull * 60 * 1000)
#define TOKEN_MAX_TTL_MS (48ull * 3600 * 1000)
#define TOKEN_SECRET_MIN 16
#define TRAIT_VALUE_MAX 4096
#define LOCK_MESSAGE_MAX 1024

/* ---- warnings ------------------------------------------------------------------- */

void auth_warnings_add(struct auth_warnings *w, const char *fmt, ...)
{
    if (w == NULL || w->n >= AUTH_MAX_WARNINGS)
        return;
    va_list ap;
    va_start(ap, fmt);
    char *msg = NULL;
    if (vasprintf(&msg, fmt, ap) >= 0)
        w->msg[w->n++] = msg;
    va_end(ap);
}

void auth_warnings_free(struct auth_warnings *w)
{
    for (size_t i = 0; i < w->n; i++)
        free(w->msg[i]);
    w->n = 0;
}

/* ---- small parsers ------------------------------------------------------------------ */

void auth_token_label(const char *token, size_t n, char out[AUTH_TOKEN_LABEL_LEN])
{
    unsigned char md[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)token, n, md);
    snprintf(out, AUTH_TOKEN_LABEL_LEN, "sha256:%02x%02x%02x%02x", md[0], md[1], md[2], md[3]);
}

/* RFC 3339 ("2026-12-06T10:00:00Z", "...T10:00:00.5+01:00") into ms since the
 * epoch. Only what Teleport writes: a full date and time with a zone. */
static int parse_rfc3339(const char *s, size_t n, uint64_t *ms)
{
    char buf[64];
    if (n == 0 || n >= sizeof buf)
        return RP_EINVAL;
    memcpy(buf, s, n);
    buf[n] = '\0';
    struct tm tm = {0};
    char *p = strptime(buf, "%Y-%m-%dT%H:%M:%S", &tm);
    if (p == NULL)
        p = strptime(buf, "%Y-%m-%dt%H:%M:%S", &tm);
    if (p == NULL)
        return RP_EINVAL;
    uint64_t frac_ms = 0;
    if (*p == '.') {
        uint64_t scale = 100;
        p++;
        if (*p < '0' || *p > '9')
            return RP_EINVAL;
        for (; *p >= '0' && *p <= '9'; p++) {
            frac_ms += (uint64_t)(*p - '0') * scale;
            scale /= 10;
        }
    }
    long offset = 0;
    if (*p == 'Z' || *p == 'z') {
        p++;
    } else if ((*p == '+' || *p == '-') && strlen(p) == 6 && p[3] == ':') {
        int hh = (p[1] - '0') * 10 + (p[2] - '0'), mm = (p[4] - '0') * 10 + (p[5] - '0');
        if (hh > 23 || mm > 59)
            return RP_EINVAL;
        offset = (hh * 60L + mm) * 60 * (*p == '+' ? 1 : -1);
        p += 6;
    } else {
        return RP_EINVAL;
    }
    if (*p != '\0')
        return RP_EINVAL;
    time_t t = timegm(&tm);
    if (t == (time_t)-1 || t - offset <= 0)
        return RP_EINVAL;
    *ms = (uint64_t)(t - offset) * 1000 + frac_ms;
    return 0;
}

/* A time field: u64 ms, or RFC 3339 text. */
static int time_field(const char *path, const msgpack_object *o, uint64_t *ms)
{
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        *ms = o->via.u64;
        return 0;
    }
    if (o->type == MSGPACK_OBJECT_STR && parse_rfc3339(o->via.str.ptr, o->via.str.size, ms) == 0)
        return 0;
    return rp_err(RP_EINVAL,
                  "%s: expected a time in RFC 3339 form (2026-01-02T15:04:05Z) or milliseconds "
                  "since the epoch",
                  path);
}

static bool is_str(const msgpack_object *o)
{
    return o != NULL && o->type == MSGPACK_OBJECT_STR;
}

/* ---- role names ------------------------------------------------------------------ */

int auth_admit_role_name(const char *name, size_t n)
{
    int rv = rp_name_check("role name", name, n);
    if (rv != 0)
        return rv;
    const char *sys = rp_system_role(name, n);
    if (sys != NULL)
        return rp_err(RP_EINVAL,
                      "role name '%.*s' is reserved: it names the system role %s (names are "
                      "compared without case); choose another name",
                      (int)n, name, sys);
    return 0;
}

int auth_admit_role_refs(struct auth_server *s, const msgpack_object *roles)
{
    if (roles == NULL || roles->type != MSGPACK_OBJECT_ARRAY || roles->via.array.size == 0)
        return rp_err(RP_EINVAL, "spec.roles: expected a non-empty list of role names");
    if (roles->via.array.size > AUTH_MAX_USER_ROLES)
        return rp_err(RP_EINVAL, "spec.roles: at most %d roles", AUTH_MAX_USER_ROLES);
    for (uint32_t i = 0; i < roles->via.array.size; i++) {
        const msgpack_object *o = &roles->via.array.ptr[i];
        if (!is_str(o))
            return rp_err(RP_EINVAL, "spec.roles[%u]: expected a role name", i);
        int rv = auth_admit_role_name(o->via.str.ptr, o->via.str.size);
        if (rv != 0)
            return rv;
        char name[RP_NAME_MAX + 1];
        snprintf(name, sizeof name, "%.*s", (int)o->via.str.size, o->via.str.ptr);
        struct rp_buf b;
        rp_buf_init(&b);
        rv = state_get(s->state, "role", name, &b, NULL);
        rp_buf_free(&b);
        if (rv == RP_ENOTFOUND)
            return rp_err(RP_ENOTFOUND, "role '%s' does not exist (tctl get role lists them)",
                          name);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* ---- user names ------------------------------------------------------------------ */

struct admin_name_ctx {
    const char *host; /* what follows "admin@" in the name */
    size_t host_len;
    bool taken;
};

static int admin_name_cb(void *arg, const void *res, size_t len)
{
    struct admin_name_ctx *c = arg;
    msgpack_unpacked u;
    if (rp_mp_parse(res, len, &u) != 0)
        return 0;
    const char *h;
    size_t hn;
    if (rp_mp_get_str(rp_mp_get(&u.data, "spec"), "hostname", &h, &hn) == 0 && hn == c->host_len &&
        memcmp(h, c->host, hn) == 0)
        c->taken = true;
    msgpack_unpacked_destroy(&u);
    return c->taken ? 1 : 0;
}

int auth_admit_user_name(struct auth_server *s, const char *name, size_t n)
{
    int rv = rp_name_check("user name", name, n);
    if (rv != 0)
        return rv;
    /* "admin@NODENAME" is the name of an auth server's own administrator identity:
     * a user of that name would be indistinguishable from it in the audit log. */
    if (n > 6 && strncasecmp(name, "admin@", 6) == 0 && s != NULL) {
        struct admin_name_ctx c = {.host = name + 6, .host_len = n - 6, .taken = false};
        state_list(s->state, AUTH_KIND_AUTH_SERVER, NULL, 0, admin_name_cb, &c, NULL);
        if (c.taken)
            return rp_err(RP_EINVAL,
                          "user name '%.*s' is reserved: it names the administrator identity of "
                          "auth server %.*s",
                          (int)n, name, (int)(n - 6), name + 6);
    }
    return 0;
}

/* ---- rewriting a resource ------------------------------------------------------------ */

/* What admission changes in a resource; everything else is copied as it came. */
struct rewrite {
    bool set_expires;
    uint64_t expires;          /* metadata.expires when set_expires (0: removed) */
    const char *version;       /* NULL: keep */
    const struct rp_buf *spec; /* NULL: keep; else the packed spec */
};

static void pack_metadata(msgpack_packer *pk, const msgpack_object *md, const struct rewrite *rw)
{
    uint32_t n = 0;
    bool had = false;
    for (uint32_t i = 0; i < md->via.map.size; i++) {
        bool is_exp = rp_mp_str_eq(&md->via.map.ptr[i].key, "expires");
        had = had || is_exp;
        n += !is_exp || !rw->set_expires || rw->expires != 0;
    }
    if (rw->set_expires && !had && rw->expires != 0)
        n++;
    msgpack_pack_map(pk, n);
    for (uint32_t i = 0; i < md->via.map.size; i++) {
        const msgpack_object_kv *kv = &md->via.map.ptr[i];
        if (rw->set_expires && rp_mp_str_eq(&kv->key, "expires")) {
            if (rw->expires != 0)
                rp_mp_kv_u64(pk, "expires", rw->expires);
            continue;
        }
        msgpack_pack_object(pk, kv->key);
        msgpack_pack_object(pk, kv->val);
    }
    if (rw->set_expires && !had && rw->expires != 0)
        rp_mp_kv_u64(pk, "expires", rw->expires);
}

static int pack_rewritten(const msgpack_object *res, const struct rewrite *rw, struct rp_buf *out)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, out);
    bool has_version = rp_mp_get(res, "version") != NULL;
    bool has_spec = rp_mp_get(res, "spec") != NULL;
    msgpack_pack_map(&pk,
                     res->via.map.size + (rw->version && !has_version) + (rw->spec && !has_spec));
    for (uint32_t i = 0; i < res->via.map.size; i++) {
        const msgpack_object_kv *kv = &res->via.map.ptr[i];
        msgpack_pack_object(&pk, kv->key);
        if (rp_mp_str_eq(&kv->key, "metadata"))
            pack_metadata(&pk, &kv->val, rw);
        else if (rw->version && rp_mp_str_eq(&kv->key, "version"))
            rp_mp_pack_str(&pk, rw->version);
        else if (rw->spec && rp_mp_str_eq(&kv->key, "spec"))
            rp_buf_append(out, rw->spec->data, rw->spec->len);
        else
            msgpack_pack_object(&pk, kv->val);
    }
    if (rw->version && !has_version)
        rp_mp_kv_str(&pk, "version", rw->version);
    if (rw->spec && !has_spec) {
        rp_mp_pack_str(&pk, "spec");
        rp_buf_append(out, rw->spec->data, rw->spec->len);
    }
    return 0;
}

/* metadata.expires as given (absent: 0), read in either form. */
static int read_expires(const msgpack_object *md, uint64_t *ms, bool *given)
{
    const msgpack_object *e = rp_mp_get(md, "expires");
    *ms = 0;
    *given = e != NULL && e->type != MSGPACK_OBJECT_NIL;
    return *given ? time_field("metadata.expires", e, ms) : 0;
}

static int check_version(const msgpack_object *res, const char *kind, const char *want)
{
    const msgpack_object *v = rp_mp_get(res, "version");
    if (v == NULL || v->type == MSGPACK_OBJECT_NIL || rp_mp_str_eq(v, want))
        return 0;
    return rp_err(RP_EINVAL, "version: expected %s for a %s resource", want, kind);
}

/* ---- users -------------------------------------------------------------------------- */

static int admit_traits(const msgpack_object *traits)
{
    if (traits == NULL || traits->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (traits->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "spec.traits: expected a map of trait names to lists of strings");
    for (uint32_t i = 0; i < traits->via.map.size; i++) {
        const msgpack_object_kv *kv = &traits->via.map.ptr[i];
        if (!is_str(&kv->key) || kv->key.via.str.size == 0 || kv->key.via.str.size > 255)
            return rp_err(RP_EINVAL, "spec.traits: trait names must be strings of 1-255 bytes");
        bool logins = rp_mp_str_eq(&kv->key, "logins");
        const msgpack_object *v = &kv->val;
        if (v->type == MSGPACK_OBJECT_NIL)
            continue;
        if (v->type != MSGPACK_OBJECT_ARRAY || v->via.array.size > 1024)
            return rp_err(RP_EINVAL, "spec.traits.%.*s: expected a list of at most 1024 strings",
                          (int)kv->key.via.str.size, kv->key.via.str.ptr);
        for (uint32_t j = 0; j < v->via.array.size; j++) {
            const msgpack_object *s = &v->via.array.ptr[j];
            if (!is_str(s) || s->via.str.size > TRAIT_VALUE_MAX)
                return rp_err(RP_EINVAL,
                              "spec.traits.%.*s[%u]: expected a string of at most %d "
                              "bytes",
                              (int)kv->key.via.str.size, kv->key.via.str.ptr, j, TRAIT_VALUE_MAX);
            int rv = logins ? rp_login_check(s->via.str.ptr, s->via.str.size) : 0;
            if (rv != 0)
                return rp_err(rv, "spec.traits.logins[%u]: %s", j, rp_errmsg());
        }
    }
    return 0;
}

static int admit_user(struct auth_server *s, const msgpack_object *res, const char *name,
                      size_t name_len)
{
    int rv = auth_admit_user_name(s, name, name_len);
    if (rv != 0 || (rv = check_version(res, "user", "v2")) != 0)
        return rv;
    const msgpack_object *spec = rp_mp_get(res, "spec");
    if (spec == NULL || spec->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "spec: a user needs a spec with roles");
    if ((rv = auth_admit_role_refs(s, rp_mp_get(spec, "roles"))) != 0 ||
        (rv = admit_traits(rp_mp_get(spec, "traits"))) != 0)
        return rv;
    return 0;
}

/* ---- tokens ------------------------------------------------------------------------- */

/* Teleport's join methods: a token of any of them loads and round-trips; only
 * "token" can be used to join Raftport (auth/cluster.c says so at join). */
static const char *const join_methods[] = {
    "token",     "ec2",    "iam",          "github",        "circleci", "kubernetes",
    "azure",     "gitlab", "gcp",          "spacelift",     "tpm",      "terraform_cloud",
    "bitbucket", "oracle", "azure_devops", "bound_keypair", "env0",     NULL,
};

/* Roles a provision token may grant in Teleport. */
static bool token_role_ok(const char *canonical)
{
    static const char *const ok[] = {
        "Auth",           "Node", "Proxy",     "Kube", "App", "Db",
        "WindowsDesktop", "Bot",  "Discovery", "Okta", "MDM", "Trusted_cluster",
        "Instance",       NULL};
    for (size_t i = 0; ok[i]; i++) {
        if (strcmp(ok[i], canonical) == 0)
            return true;
    }
    return false;
}

static int admit_token(const msgpack_object *res, const char *name, size_t name_len,
                       struct rp_buf *canonical, struct auth_warnings *warnings)
{
    int rv = rp_name_check_secret("token name", name, name_len);
    if (rv != 0 || (rv = check_version(res, "token", "v2")) != 0)
        return rv;
    const msgpack_object *spec = rp_mp_get(res, "spec");
    if (spec == NULL || spec->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "spec: a token needs a spec with roles");
    const msgpack_object *method = rp_mp_get(spec, "join_method");
    const char *method_name = "token";
    if (method != NULL && method->type != MSGPACK_OBJECT_NIL) {
        method_name = NULL;
        for (size_t i = 0; join_methods[i] && is_str(method); i++) {
            if (rp_mp_str_eq(method, join_methods[i]))
                method_name = join_methods[i];
        }
        if (method_name == NULL)
            return rp_err(RP_EINVAL, "spec.join_method: expected one of Teleport's join methods "
                                     "(token, ec2, iam, github, kubernetes, ...)");
    }
    bool secret = strcmp(method_name, "token") == 0;
    /* A short name is the writer's choice (Teleport's own examples use readable ones),
     * but one worth a warning: it is the whole secret. */
    if (secret && name_len < TOKEN_SECRET_MIN)
        auth_warnings_add(warnings,
                          "token name (not shown: it is a secret) is %zu bytes, easy to guess: "
                          "at least %d random ones are safer (tctl tokens add makes 32)",
                          name_len, TOKEN_SECRET_MIN);
    if (!secret)
        auth_warnings_add(warnings,
                          "token with join_method %s is kept, but Raftport joins only with "
                          "join_method token: a join with it is refused",
                          method_name);

    /* Roles in Teleport's spelling, so the join check compares exact strings. */
    const msgpack_object *roles = rp_mp_get(spec, "roles");
    if (roles == NULL || roles->type != MSGPACK_OBJECT_ARRAY || roles->via.array.size == 0 ||
        roles->via.array.size > 16)
        return rp_err(RP_EINVAL, "spec.roles: expected a list of 1-16 system roles (Node, Proxy, "
                                 "Auth, ...)");
    const char *canon[16];
    for (uint32_t i = 0; i < roles->via.array.size; i++) {
        const msgpack_object *o = &roles->via.array.ptr[i];
        canon[i] = is_str(o) ? rp_system_role(o->via.str.ptr, o->via.str.size) : NULL;
        if (canon[i] == NULL || !token_role_ok(canon[i]))
            return rp_err(RP_EINVAL,
                          "spec.roles[%u]: expected a system role a token may grant (Node, Proxy, "
                          "Auth, Kube, App, Db, WindowsDesktop, Bot, Discovery, ...)",
                          i);
    }

    const msgpack_object *md = rp_mp_get(res, "metadata");
    uint64_t expires, now = rp_now_ms();
    bool given;
    if ((rv = read_expires(md, &expires, &given)) != 0)
        return rv;
    if (!given) {
        expires = now + TOKEN_DEFAULT_TTL_MS;
        auth_warnings_add(warnings, "token has no metadata.expires: it expires in 30m");
    } else if (expires <= now) {
        return rp_err(RP_EINVAL, "metadata.expires: the time has passed; a token must expire "
                                 "within 48h from now");
    } else if (expires > now + TOKEN_MAX_TTL_MS) {
        return rp_err(RP_EINVAL, "metadata.expires: more than 48h from now; a token must "
                                 "expire within 48h");
    }

    struct rp_buf sp;
    msgpack_packer pk;
    rp_buf_init(&sp);
    rp_mp_packer_init(&pk, &sp);
    bool has_method = rp_mp_get(spec, "join_method") != NULL;
    msgpack_pack_map(&pk, spec->via.map.size + !has_method);
    for (uint32_t i = 0; i < spec->via.map.size; i++) {
        const msgpack_object_kv *kv = &spec->via.map.ptr[i];
        msgpack_pack_object(&pk, kv->key);
        if (rp_mp_str_eq(&kv->key, "roles")) {
            msgpack_pack_array(&pk, roles->via.array.size);
            for (uint32_t j = 0; j < roles->via.array.size; j++)
                rp_mp_pack_str(&pk, canon[j]);
        } else if (rp_mp_str_eq(&kv->key, "join_method")) {
            rp_mp_pack_str(&pk, method_name);
        } else {
            msgpack_pack_object(&pk, kv->val);
        }
    }
    if (!has_method)
        rp_mp_kv_str(&pk, "join_method", method_name);
    struct rewrite rw = {.set_expires = true, .expires = expires, .version = "v2", .spec = &sp};
    rv = pack_rewritten(res, &rw, canonical);
    rp_buf_free(&sp);
    return rv;
}

/* ---- locks -------------------------------------------------------------------------- */

static int admit_lock(const msgpack_object *res, const char *name, size_t name_len,
                      struct rp_buf *canonical)
{
    static const char *const targets[] = {
        "user",           "role",       "login",  "server_id",       "node",
        "access_request", "mfa_device", "device", "windows_desktop", "bot_instance_id",
        "join_token",     NULL};
    int rv = rp_name_check("lock name", name, name_len);
    if (rv != 0 || (rv = check_version(res, "lock", "v2")) != 0)
        return rv;
    const msgpack_object *spec = rp_mp_get(res, "spec");
    const msgpack_object *target = rp_mp_get(spec, "target");
    if (target == NULL || target->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "spec.target: a lock needs a target (user, role, login, "
                                 "server_id, node or access_request)");
    unsigned enforced = 0;
    for (uint32_t i = 0; i < target->via.map.size; i++) {
        const msgpack_object_kv *kv = &target->via.map.ptr[i];
        size_t k;
        for (k = 0; targets[k] && !rp_mp_str_eq(&kv->key, targets[k]); k++)
            ;
        if (targets[k] == NULL)
            return rp_err(RP_EINVAL, "spec.target: unknown field, expected user, role, login, "
                                     "server_id, node or access_request");
        if (kv->val.type == MSGPACK_OBJECT_NIL || (is_str(&kv->val) && kv->val.via.str.size == 0))
            continue;
        if (!is_str(&kv->val))
            return rp_err(RP_EINVAL, "spec.target.%s: expected a name", targets[k]);
        const char *v = kv->val.via.str.ptr;
        size_t vn = kv->val.via.str.size;
        char what[64];
        snprintf(what, sizeof what, "spec.target.%s", targets[k]);
        rv = strcmp(targets[k], "login") == 0        ? rp_login_check(v, vn)
             : strcmp(targets[k], "join_token") == 0 ? rp_name_check_secret(what, v, vn)
                                                     : rp_name_check(what, v, vn);
        if (rv != 0)
            return rv;
        enforced += k < 6;
    }
    if (enforced == 0)
        return rp_err(RP_EINVAL, "spec.target: name at least one of user, role, login, "
                                 "server_id, node or access_request");
    const msgpack_object *msg = rp_mp_get(spec, "message");
    if (msg != NULL && msg->type != MSGPACK_OBJECT_NIL &&
        (!is_str(msg) || msg->via.str.size > LOCK_MESSAGE_MAX))
        return rp_err(RP_EINVAL, "spec.message: expected a string of at most %d bytes",
                      LOCK_MESSAGE_MAX);

    uint64_t expires = 0, spec_expires = 0, now = rp_now_ms();
    bool given;
    if ((rv = read_expires(rp_mp_get(res, "metadata"), &expires, &given)) != 0)
        return rv;
    const msgpack_object *se = rp_mp_get(spec, "expires");
    if (se != NULL && se->type != MSGPACK_OBJECT_NIL) {
        if ((rv = time_field("spec.expires", se, &spec_expires)) != 0)
            return rv;
        /* The earlier of the two wins; spec.expires is RFC 3339 text, often whole
         * seconds, so it wins only when it is earlier by more than its precision. */
        if (!given || expires == 0 || spec_expires + 1000 <= expires)
            expires = spec_expires;
    }
    if (expires != 0 && expires <= now)
        return rp_err(RP_EINVAL, "expires: the time has passed; a lock must expire in the future "
                                 "or not at all");
    struct rewrite rw = {.set_expires = expires != 0, .expires = expires, .version = "v2"};
    return pack_rewritten(res, &rw, canonical);
}

/* ---- invites ------------------------------------------------------------------------ */

static int admit_invite(const msgpack_object *md, const char *name, size_t name_len)
{
    uint64_t expires, now = rp_now_ms();
    bool given;
    int rv = rp_name_check_secret("user_token name", name, name_len);
    if (rv == 0)
        rv = read_expires(md, &expires, &given);
    if (rv == 0 && (!given || expires <= now || expires > now + TOKEN_MAX_TTL_MS))
        rv = rp_err(RP_EINVAL, "metadata.expires: an invite must expire within 48h from now");
    return rv;
}

/* ---- the entry point ------------------------------------------------------------------ */

int auth_admit_resource(struct auth_server *s, const char *op, const msgpack_object *res,
                        struct rp_buf *canonical, struct auth_admitted *who,
                        struct auth_warnings *warnings)
{
    if (res == NULL || res->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "%s: the resource must be a map", op);
    const msgpack_object *kind = rp_mp_get(res, "kind");
    const msgpack_object *md = rp_mp_get(res, "metadata");
    const msgpack_object *nm = rp_mp_get(md, "name");
    if (!is_str(kind) || kind->via.str.size == 0 || kind->via.str.size > STATE_KIND_MAX)
        return rp_err(RP_EINVAL, "kind: expected a resource kind");
    if (md == NULL || md->type != MSGPACK_OBJECT_MAP || !is_str(nm))
        return rp_err(RP_EINVAL, "metadata.name: expected the resource's name");
    const char *name = nm->via.str.ptr;
    size_t name_len = nm->via.str.size;
    if (who != NULL) {
        snprintf(who->kind, sizeof who->kind, "%.*s", (int)kind->via.str.size, kind->via.str.ptr);
        if (name_len < sizeof who->name)
            snprintf(who->name, sizeof who->name, "%.*s", (int)name_len, name);
        else
            who->name[0] = '\0';
    }
    int rv;
    size_t start = canonical->len;
    if (rp_mp_str_eq(kind, "role")) {
        struct rbac_role *role = NULL;
        if ((rv = auth_admit_role_name(name, name_len)) != 0)
            return rv;
        if ((rv = rbac_role_parse(res, &role)) != 0)
            return rp_err(RP_EINVAL, "role: %s", rp_errmsg());
        /* Fields that fail closed, and fields kept without meaning: said to whoever
         * writes the role, since its holders will be refused or see no effect. */
        const char *fields[16];
        size_t n = rbac_role_unenforced(role, fields, 16);
        for (size_t i = 0; i < n && i < 16; i++)
            auth_warnings_add(warnings,
                              "role %s: %s restricts SSH access in a way Raftport does not "
                              "enforce yet: users holding this role are refused SSH access",
                              rbac_role_name(role), fields[i]);
        n = rbac_role_unknown(role, fields, 16);
        for (size_t i = 0; i < n && i < 16; i++)
            auth_warnings_add(warnings, "role %s: unknown field %s is kept as written",
                              rbac_role_name(role), fields[i]);
        rv = rbac_role_pack(role, canonical);
        rbac_role_free(role);
        return rv;
    }
    if (rp_mp_str_eq(kind, AUTH_KIND_TOKEN))
        return admit_token(res, name, name_len, canonical, warnings);
    if (rp_mp_str_eq(kind, "lock"))
        return admit_lock(res, name, name_len, canonical);
    /* An invite's name is its secret, and like a join token it must expire. */
    if (rp_mp_str_eq(kind, "user_token"))
        rv = admit_invite(md, name, name_len);
    else if (rp_mp_str_eq(kind, "user"))
        rv = admit_user(s, res, name, name_len);
    else if (rp_mp_str_eq(kind, "user_secret"))
        rv = auth_admit_user_name(s, name, name_len);
    else
        rv = rp_name_check(rp_mp_str_eq(kind, "node") ? "node name" : "resource name", name,
                           name_len);
    if (rv != 0)
        return rv;
    uint64_t expires;
    bool given;
    if ((rv = read_expires(md, &expires, &given)) != 0)
        return rv;
    const msgpack_object *e = rp_mp_get(md, "expires");
    if (given && e->type == MSGPACK_OBJECT_STR) {
        struct rewrite rw = {.set_expires = true, .expires = expires};
        rv = pack_rewritten(res, &rw, canonical);
    } else {
        rv = rp_mp_pack_object(canonical, res);
    }
    if (rv != 0)
        canonical->len = start;
    return rv;
}
