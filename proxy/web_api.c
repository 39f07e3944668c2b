/* proxy/web_api.c: the web API's endpoints as pure functions: routing, the JSON bodies
 * clients send (parsed with jansson) turned into auth requests, and auth's answers and
 * the cache turned into the JSON clients read (proxy/web.h). Nothing here blocks or
 * touches a socket, so the fuzz target and the unit tests drive it directly.
 *
 * Field names follow Teleport's web API where it has one (pub_key, tls_pub_key,
 * otp_token, ttl in nanoseconds, host_signers); unknown fields in a body are ignored,
 * as Teleport's clients send more than Raftport reads. */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/password.h"
#include "lib/util.h"
#include "lib/version.h"
#include "proxy/web.h"

/* ---- answers ------------------------------------------------------------------------- */

void px_web_answer_init(struct px_web_answer *a)
{
    memset(a, 0, sizeof *a);
    rp_buf_init(&a->body);
}

void px_web_answer_free(struct px_web_answer *a)
{
    rp_buf_free(&a->body);
}

void px_web_answer_json(struct px_web_answer *a, const char *json, size_t n)
{
    a->status = 200;
    a->body.len = 0;
    if (rp_buf_append(&a->body, json, n) != 0)
        px_web_answer_error(a, 503, "out of memory for the answer");
}

void px_web_answer_error(struct px_web_answer *a, int status, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* jansson takes UTF-8 only, and a message may quote what a client sent. */
    for (char *c = msg; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
            *c = '?';
    a->status = status;
    a->body.len = 0;
    /* A fixed shape around one string: rp_json_str-like escaping by jansson. */
    json_t *j = json_pack("{s:{s:s}}", "error", "message", msg);
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (text == NULL || rp_buf_append(&a->body, text, strlen(text)) != 0) {
        static const char fallback[] = "{\"error\":{\"message\":\"out of memory\"}}";
        a->body.len = 0;
        rp_buf_append(&a->body, fallback, sizeof fallback - 1);
    }
    free(text);
    json_decref(j);
}

static const char *reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Error";
    }
}

int px_web_answer_format(const struct px_web_answer *a, struct rp_buf *out)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "X-Content-Type-Options: nosniff\r\n"
                     "Connection: %s\r\n",
                     a->status, reason(a->status), a->body.len, a->close ? "close" : "keep-alive");
    if (a->retry_after_s > 0)
        n += snprintf(head + n, sizeof head - (size_t)n, "Retry-After: %u\r\n", a->retry_after_s);
    if (a->allow != NULL)
        n += snprintf(head + n, sizeof head - (size_t)n, "Allow: %s\r\n", a->allow);
    n += snprintf(head + n, sizeof head - (size_t)n, "\r\n");
    if (rp_buf_append(out, head, (size_t)n) != 0 ||
        rp_buf_append(out, a->body.data, a->body.len) != 0)
        return rp_err(RP_ENOMEM, "HTTP answer");
    return 0;
}

/* ---- routing ------------------------------------------------------------------------- */

static const struct {
    const char *path;
    unsigned method;
    const char *allow;
    enum px_web_endpoint ep;
} routes[] = {
    {"/webapi/ping", HTTP_GET, "GET", PX_WEB_PING},
    {"/webapi/ssh/certs", HTTP_POST, "POST", PX_WEB_LOGIN},
    {"/webapi/invite", HTTP_PUT, "PUT", PX_WEB_INVITE_REDEEM},
    {"/webapi/nodes", HTTP_GET, "GET", PX_WEB_NODES},
};

enum px_web_endpoint px_web_route(unsigned method, const char *path, struct px_web_answer *a)
{
    size_t len = strcspn(path, "?#");
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (strlen(routes[i].path) != len || strncmp(routes[i].path, path, len) != 0)
            continue;
        /* HEAD would need an answer without a body; no client of this API sends it. */
        if (method == routes[i].method)
            return routes[i].ep;
        px_web_answer_error(a, 405, "%s takes %s, not %s", routes[i].path, routes[i].allow,
                            http_method_str((enum http_method)method));
        a->allow = routes[i].allow;
        return PX_WEB_NONE;
    }
    px_web_answer_error(a, 404,
                        "no such endpoint: the web API serves /webapi/ping, /webapi/ssh/certs, "
                        "/webapi/invite and /webapi/nodes");
    return PX_WEB_NONE;
}

int px_web_check_version(const struct px_web_req *req, const char *server, struct px_web_answer *a)
{
    if (req->version[0] == '\0' && !req->version_too_long)
        return 0;
    const char *client = req->version_too_long ? "(longer than 39 bytes)" : req->version;
    enum rp_version_verdict v = rp_version_check_client(server, client);
    if (v == RP_VERSION_OK)
        return 0;
    char why[256];
    rp_version_explain(v, server, client, why, sizeof why);
    px_web_answer_error(a, 400, "X-Raftport-Version: %s", why);
    return RP_EINVAL;
}

/* ---- JSON helpers ----------------------------------------------------------------------- */

/* Dumps @j (stolen) as the 200 answer. */
static int answer_json(struct px_web_answer *a, json_t *j)
{
    char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (text == NULL) {
        px_web_answer_error(a, 503, "out of memory for the answer");
        return RP_ENOMEM;
    }
    px_web_answer_json(a, text, strlen(text));
    free(text);
    return a->status == 200 ? 0 : RP_ENOMEM;
}

/* json_object_set_new that tolerates NULL values (out of memory shows at the dump). */
static void jset(json_t *o, const char *key, json_t *v)
{
    if (o != NULL && v != NULL)
        json_object_set_new(o, key, v);
    else
        json_decref(v);
}

static json_t *jstr(const char *s)
{
    return json_string(s ? s : "");
}

static json_t *jstrn(const char *s, size_t n)
{
    return json_stringn(s, n);
}

/* ---- ping ------------------------------------------------------------------------------ */

/* @addr's port (after the last ':'), or "". */
static const char *port_of(const char *addr)
{
    const char *c = addr ? strrchr(addr, ':') : NULL;
    return c ? c + 1 : "";
}

int px_web_ping(const struct px_web_info *info, struct px_web_answer *a)
{
    char min[32], ssh_public[300] = "";
    rp_version_min_client(info->server_version, min, sizeof min);
    if (info->ssh_public_addr != NULL) {
        snprintf(ssh_public, sizeof ssh_public, "%s", info->ssh_public_addr);
    } else if (info->public_addr != NULL && info->public_addr[0] != '\0') {
        /* Teleport's default: the public host with the SSH listener's port. */
        const char *pa = info->public_addr, *colon = strrchr(pa, ':');
        int hostlen = colon && !strchr(colon, ']') ? (int)(colon - pa) : (int)strlen(pa);
        snprintf(ssh_public, sizeof ssh_public, "%.*s:%s", hostlen, pa, port_of(info->listen_addr));
    }
    json_t *ssh = json_object();
    jset(ssh, "listen_addr", jstr(info->listen_addr));
    jset(ssh, "tunnel_listen_addr", jstr(info->tunnel_listen_addr));
    jset(ssh, "web_listen_addr", jstr(info->web_listen_addr));
    jset(ssh, "public_addr", jstr(info->public_addr));
    jset(ssh, "ssh_public_addr", jstr(ssh_public));
    json_t *proxy = json_object();
    jset(proxy, "ssh", ssh);
    jset(proxy, "tls_routing_enabled", json_true());
    json_t *auth = json_object();
    jset(auth, "type", json_string("local"));
    /* TOTP is set per user at invite time: a user who enrolled one must give a code,
     * the others may not. Teleport calls that "optional". */
    jset(auth, "second_factor", json_string("optional"));
    json_t *j = json_object();
    jset(j, "cluster_name", jstr(info->cluster_name));
    jset(j, "server_version", jstr(info->server_version));
    jset(j, "min_client_version", jstr(min));
    jset(j, "auth", auth);
    jset(j, "proxy", proxy);
    return answer_json(a, j);
}

/* ---- request bodies --------------------------------------------------------------------- */

/* The object in @body, or NULL with the reason in @why. */
static json_t *parse_object(const char *body, size_t n, char *why, size_t why_len)
{
    json_error_t err;
    if (n == 0) {
        snprintf(why, why_len, "the request needs a JSON object as its body");
        return NULL;
    }
    json_t *j = json_loadb(body, n, JSON_REJECT_DUPLICATES, &err);
    if (j == NULL) {
        snprintf(why, why_len, "the body is not valid JSON (line %d, column %d: %s)", err.line,
                 err.column, err.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        snprintf(why, why_len, "the body must be a JSON object");
        json_decref(j);
        return NULL;
    }
    return j;
}

/* String field @key of @o into *@s (borrowed from @o): 0; absent: RP_ENOTFOUND when
 * optional (*@s ""), else RP_EINVAL; not a string, empty, over @max bytes, or holding a
 * NUL: RP_EINVAL. */
static int field_str(json_t *o, const char *key, bool required, size_t max, const char **s,
                     size_t *n)
{
    json_t *v = json_object_get(o, key);
    *s = "";
    *n = 0;
    if (v == NULL || json_is_null(v)) {
        if (required)
            return rp_err(RP_EINVAL, "field '%s' is required", key);
        return RP_ENOTFOUND;
    }
    size_t len = json_string_length(v);
    const char *str = json_string_value(v);
    if (str == NULL || len == 0 || len > max || memchr(str, '\0', len) != NULL)
        return rp_err(RP_EINVAL, "field '%s' must be a string of 1 to %zu bytes", key, max);
    *s = str;
    *n = len;
    return 0;
}

int px_web_login_request(const char *body, size_t n, const char *method, const char *client_addr,
                         struct rp_buf *out, char *user, size_t user_len)
{
    char why[256];
    user[0] = '\0';
    json_t *o = parse_object(body, n, why, sizeof why);
    if (o == NULL)
        return rp_err(RP_EINVAL, "%s", why);
    const char *u, *pw, *otp, *pub, *tls;
    size_t un, pwn, otpn, pubn, tlsn;
    int rv;
    /* The name first, so that a refusal of the rest is audited under it. */
    if ((rv = field_str(o, "user", true, 159, &u, &un)) != 0)
        goto out;
    snprintf(user, user_len, "%.*s", (int)un, u);
    if ((rv = field_str(o, "password", true, RP_PASSWORD_MAX_BYTES, &pw, &pwn)) != 0 ||
        ((rv = field_str(o, "otp_token", false, 15, &otp, &otpn)) != 0 && rv != RP_ENOTFOUND) ||
        (rv = field_str(o, "pub_key", true, 8191, &pub, &pubn)) != 0 ||
        ((rv = field_str(o, "tls_pub_key", false, 2047, &tls, &tlsn)) != 0 && rv != RP_ENOTFOUND))
        goto out;
    uint64_t ttl_ms = 0;
    json_t *ttl = json_object_get(o, "ttl");
    if (ttl != NULL && !json_is_null(ttl)) {
        if (!json_is_integer(ttl) || json_integer_value(ttl) < 0) {
            rv = rp_err(RP_EINVAL, "field 'ttl' must be a duration in nanoseconds (an integer)");
            goto out;
        }
        ttl_ms = (uint64_t)json_integer_value(ttl) / 1000000;
        if (ttl_ms > 0 && ttl_ms < 60000) {
            rv = rp_err(RP_EINVAL, "field 'ttl' must be at least one minute (60000000000)");
            goto out;
        }
    }
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    if (method != NULL)
        rp_mp_map_str(&m, "m", method);
    rp_mp_map_strn(&m, "user", u, un);
    rp_mp_map_strn(&m, "password", pw, pwn);
    if (otpn > 0)
        rp_mp_map_strn(&m, "totp_code", otp, otpn);
    rp_mp_map_strn(&m, "ssh_pubkey", pub, pubn);
    if (tlsn > 0)
        rp_mp_map_strn(&m, "tls_pubkey", tls, tlsn);
    if (ttl_ms > 0)
        rp_mp_map_u64(&m, "ttl_ms", ttl_ms);
    rp_mp_map_str(&m, "client_addr", client_addr);
    rp_mp_map_end(&m);
    rv = 0;
out:
    json_decref(o);
    return rv;
}

int px_web_invite_request(const char *body, size_t n, const char *method, const char *client_addr,
                          struct rp_buf *out)
{
    char why[256];
    json_t *o = parse_object(body, n, why, sizeof why);
    if (o == NULL)
        return rp_err(RP_EINVAL, "%s", why);
    const char *tok, *pw, *secret, *otp;
    size_t tokn, pwn, secretn, otpn;
    int rv;
    if ((rv = field_str(o, "token", true, 128, &tok, &tokn)) != 0 ||
        (rv = field_str(o, "password", true, RP_PASSWORD_MAX_BYTES, &pw, &pwn)) != 0 ||
        ((rv = field_str(o, "totp_secret", false, 127, &secret, &secretn)) != 0 &&
         rv != RP_ENOTFOUND) ||
        ((rv = field_str(o, "otp_token", false, 15, &otp, &otpn)) != 0 && rv != RP_ENOTFOUND))
        goto out;
    if ((secretn > 0) != (otpn > 0)) {
        rv = rp_err(RP_EINVAL, "enrolling a second factor needs both 'totp_secret' and "
                               "'otp_token' (the current code of that secret)");
        goto out;
    }
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    if (method != NULL)
        rp_mp_map_str(&m, "m", method);
    rp_mp_map_strn(&m, "token", tok, tokn);
    rp_mp_map_strn(&m, "password", pw, pwn);
    if (secretn > 0) {
        rp_mp_map_strn(&m, "totp_secret", secret, secretn);
        rp_mp_map_strn(&m, "totp_code", otp, otpn);
    }
    rp_mp_map_str(&m, "client_addr", client_addr);
    rp_mp_map_end(&m);
    rv = 0;
out:
    json_decref(o);
    return rv;
}

/* ---- auth's answers ------------------------------------------------------------------- */

void px_web_auth_failure(int rv, const char *msg, struct px_web_answer *a)
{
    if (msg == NULL || msg[0] == '\0')
        msg = rp_strerror(rv);
    switch (rv) {
    case RP_EDENIED:
        /* auth's words are meant for anonymous callers: they never say whether the
         * user or the password was wrong. A lockout is not a wrong password. */
        px_web_answer_error(a, strstr(msg, "locked") ? 403 : 401, "%s", msg);
        break;
    case RP_EINVAL:
    case RP_ETOOBIG:
        px_web_answer_error(a, 400, "%s", msg);
        break;
    case RP_EBUSY:
        px_web_answer_error(a, 429, "%s", msg);
        a->retry_after_s = 10;
        break;
    case RP_ENOTFOUND:
        px_web_answer_error(a, 404, "%s", msg);
        break;
    default:
        px_web_answer_error(a, 503, "the auth service could not answer (%s): try again", msg);
        a->retry_after_s = 5;
        break;
    }
}

/* Appends every public_key under spec.active_keys.ssh and spec.additional_trusted_keys.ssh
 * of the CA resource @res to @arr. */
static void ca_lines(const void *res, size_t len, json_t *arr)
{
    msgpack_unpacked u;
    if (res == NULL || rp_mp_parse(res, len, &u) != 0)
        return;
    const msgpack_object *spec = rp_mp_get(&u.data, "spec");
    static const char *const sets[] = {"active_keys", "additional_trusted_keys"};
    for (size_t s = 0; s < 2; s++) {
        const msgpack_object *keys = rp_mp_get(rp_mp_get(spec, sets[s]), "ssh");
        if (keys == NULL || keys->type != MSGPACK_OBJECT_ARRAY)
            continue;
        for (uint32_t i = 0; i < keys->via.array.size; i++) {
            const char *line;
            size_t n;
            if (rp_mp_get_str(&keys->via.array.ptr[i], "public_key", &line, &n) == 0 && n > 0)
                json_array_append_new(arr, jstrn(line, n));
        }
    }
    msgpack_unpacked_destroy(&u);
}

int px_web_login_answer(const msgpack_object *ans, const char *user, const char *cluster_name,
                        const void *host_ca, size_t host_ca_len, const void *user_ca,
                        size_t user_ca_len, struct px_web_answer *a)
{
    const char *ssh_cert, *tls_cert = NULL, *tls_ca = NULL, *refused = NULL;
    size_t ssh_n, tls_n = 0, ca_n = 0, refused_n = 0;
    uint64_t expires = 0;
    if (rp_mp_get_str(ans, "ssh_cert", &ssh_cert, &ssh_n) != 0 ||
        rp_mp_get_u64(ans, "expires", &expires) != 0) {
        px_web_answer_error(a, 503, "the auth service answered without a certificate");
        return RP_EPROTO;
    }
    rp_mp_get_str(ans, "tls_cert", &tls_cert, &tls_n);
    rp_mp_get_str(ans, "tls_ca", &tls_ca, &ca_n);
    rp_mp_get_str(ans, "ssh_refused", &refused, &refused_n);
    char when[40];
    rp_format_time(expires, when, sizeof when);

    json_t *host_lines = json_array(), *user_lines = json_array(), *tls_certs = json_array();
    ca_lines(host_ca, host_ca_len, host_lines);
    ca_lines(user_ca, user_ca_len, user_lines);
    if (tls_ca != NULL && ca_n > 0)
        json_array_append_new(tls_certs, jstrn(tls_ca, ca_n));
    json_t *signer = json_object();
    jset(signer, "cluster_name", jstr(cluster_name));
    jset(signer, "authorized_keys", host_lines);
    jset(signer, "tls_certs", tls_certs);
    json_t *signers = json_array();
    if (signers && signer)
        json_array_append_new(signers, signer);
    else
        json_decref(signer);
    json_t *j = json_object();
    jset(j, "username", jstr(user));
    jset(j, "cert", jstrn(ssh_cert, ssh_n));
    jset(j, "tls_cert", tls_cert ? jstrn(tls_cert, tls_n) : json_string(""));
    jset(j, "expires", json_string(when));
    jset(j, "host_signers", signers);
    jset(j, "user_ca", user_lines);
    if (refused != NULL && refused_n > 0)
        jset(j, "ssh_refused", jstrn(refused, refused_n));
    return answer_json(a, j);
}

/* ---- nodes ---------------------------------------------------------------------------- */

#define NODE_MAX_LABELS 256

static char *dup_str(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d != NULL) {
        memcpy(d, s, n);
        d[n] = '\0';
    }
    return d;
}

/* The labels of a node resource: metadata.labels, then spec.cmd_labels' results.
 * Strings are malloc'd into @l (free both with labels_free); keys must be strings. */
static int node_labels(const msgpack_object *node, struct rbac_label *l, size_t *n)
{
    *n = 0;
    const msgpack_object *maps[2] = {rp_mp_get(rp_mp_get(node, "metadata"), "labels"),
                                     rp_mp_get(rp_mp_get(node, "spec"), "cmd_labels")};
    for (int m = 0; m < 2; m++) {
        const msgpack_object *o = maps[m];
        if (o == NULL || o->type != MSGPACK_OBJECT_MAP)
            continue;
        for (uint32_t i = 0; i < o->via.map.size && *n < NODE_MAX_LABELS; i++) {
            const msgpack_object_kv *kv = &o->via.map.ptr[i];
            const msgpack_object *v = m == 0 ? &kv->val : rp_mp_get(&kv->val, "result");
            if (kv->key.type != MSGPACK_OBJECT_STR || v == NULL || v->type != MSGPACK_OBJECT_STR)
                continue;
            char *k = dup_str(kv->key.via.str.ptr, kv->key.via.str.size);
            char *s = dup_str(v->via.str.ptr, v->via.str.size);
            if (k == NULL || s == NULL) {
                free(k);
                free(s);
                return rp_err(RP_ENOMEM, "node labels");
            }
            l[*n].name = k;
            l[*n].value = s;
            (*n)++;
        }
    }
    return 0;
}

static void labels_free(struct rbac_label *l, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free((char *)l[i].name);
        free((char *)l[i].value);
    }
}

static json_t *field_json(const msgpack_object *map, const char *key)
{
    const char *s;
    size_t n;
    if (rp_mp_get_str(map, key, &s, &n) != 0)
        return json_string("");
    return jstrn(s, n);
}

/* Is @node visible to the user: some login of theirs allowed there, and not locked? */
static bool node_visible(const struct px_web_nodes_src *src, const struct rbac_set *set,
                         const struct rp_identity *user, const char *host_id,
                         const struct rbac_label *l, size_t nl)
{
    char why[512];
    for (size_t i = 0; i < user->n_logins; i++) {
        if (rbac_check_ssh(set, user->logins[i], l, nl, why, sizeof why) != 0)
            continue;
        if (src->lock_check(src->arg, user->name, (const char *const *)user->groups, user->n_groups,
                            user->logins[i], host_id, why, sizeof why) == 0)
            return true;
    }
    return false;
}

int px_web_nodes(const struct px_web_nodes_src *src, const struct rp_identity *user,
                 const msgpack_object *const *nodes, size_t n, struct px_web_answer *a)
{
    char why[512];
    struct rbac_set *set = NULL;
    if (src->role_set(src->arg, (const char *const *)user->groups, user->n_groups, &set, why,
                      sizeof why) != 0) {
        px_web_answer_error(a, 403, "your roles cannot be applied: %s", why);
        return RP_EDENIED;
    }
    json_t *items = json_array();
    struct rbac_label *labels = calloc(NODE_MAX_LABELS, sizeof *labels);
    int rv = labels ? 0 : rp_err(RP_ENOMEM, "node labels");
    /* A set refused as a whole (a role that fails closed) sees no node at all. */
    bool refused = rv == 0 && rbac_set_ssh_refused(set, why, sizeof why) != 0;
    for (size_t i = 0; rv == 0 && !refused && i < n; i++) {
        const msgpack_object *node = nodes[i];
        const msgpack_object *meta = rp_mp_get(node, "metadata");
        const msgpack_object *spec = rp_mp_get(node, "spec");
        const char *id;
        size_t idn, nl = 0;
        char host_id[64];
        if (rp_mp_get_str(meta, "name", &id, &idn) != 0 || idn == 0 || idn >= sizeof host_id)
            continue;
        snprintf(host_id, sizeof host_id, "%.*s", (int)idn, id);
        if ((rv = node_labels(node, labels, &nl)) != 0) {
            labels_free(labels, nl);
            break;
        }
        if (node_visible(src, set, user, host_id, labels, nl)) {
            bool use_tunnel = false;
            rp_mp_get_bool(spec, "use_tunnel", &use_tunnel);
            bool tunnel = use_tunnel || (src->has_tunnel && src->has_tunnel(src->arg, host_id));
            json_t *lj = json_object();
            for (size_t k = 0; k < nl; k++)
                jset(lj, labels[k].name, json_string(labels[k].value));
            json_t *item = json_object();
            jset(item, "id", json_string(host_id));
            jset(item, "hostname", field_json(spec, "hostname"));
            jset(item, "addr", field_json(spec, "addr"));
            jset(item, "tunnel", json_boolean(tunnel));
            jset(item, "labels", lj);
            jset(item, "version", field_json(spec, "version"));
            jset(item, "host_key", field_json(spec, "host_key"));
            jset(item, "host_cert", field_json(spec, "host_cert"));
            if (item == NULL || json_array_append_new(items, item) != 0)
                rv = rp_err(RP_ENOMEM, "nodes answer");
        }
        labels_free(labels, nl);
    }
    free(labels);
    rbac_set_free(set);
    if (rv != 0) {
        json_decref(items);
        px_web_answer_error(a, 503, "%s", rp_errmsg());
        return rv;
    }
    json_t *j = json_object();
    jset(j, "items", items);
    return answer_json(a, j);
}
