/* proxy/route.c: which node a session goes to, whether the user may go there, and the
 * byte stream to it (proxy/proxy.h, "routing").
 *
 * Everything is decided from the proxy's cache (agent/cache.h), so routing works while
 * auth is away. The rules are the node's own (auth/rbac.h, as agent/sshauth.c applies
 * them), checked at the proxy too so that a refused user never reaches the node:
 *   - the login must be one of the certificate's logins (its principals), which auth
 *     expanded from the user's roles and traits when it signed;
 *   - the user's roles, expanded with the user's current traits (the cached user
 *     resource: a deleted user is refused), must allow that login on the node's labels,
 *     deny first; with no login given, some login of the certificate must be allowed;
 *   - no lock may apply to the user, its roles, the login or the node. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/cache.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "proxy/internal.h"
#include "proxy/tunnel.h"

#define MAX_LABELS 128

void px_route_free(struct px_route *r)
{
    if (r == NULL)
        return;
    free(r->host_key);
    free(r->host_cert);
    r->host_key = r->host_cert = NULL;
}

/* A copy of string @o into @out (@outlen bytes), "" when absent or too long. */
static void str_into(const msgpack_object *o, char *out, size_t outlen)
{
    out[0] = '\0';
    if (o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size < outlen &&
        memchr(o->via.str.ptr, 0, o->via.str.size) == NULL) {
        memcpy(out, o->via.str.ptr, o->via.str.size);
        out[o->via.str.size] = '\0';
    }
}

static bool str_is(const msgpack_object *o, const char *s, size_t n)
{
    return o != NULL && o->type == MSGPACK_OBJECT_STR && o->via.str.size == n &&
           memcmp(o->via.str.ptr, s, n) == 0;
}

struct find {
    const char *target; /* as given */
    char host[300];     /* the target without its ":PORT" */
    bool has_port;
    uint64_t now_ms;
    size_t matches;
    struct rp_buf first; /* the first matching node resource */
};

/* Does the node @res match the target? */
static bool node_matches(struct find *f, const msgpack_object *res)
{
    const msgpack_object *md = rp_mp_get(res, "metadata");
    const msgpack_object *spec = rp_mp_get(res, "spec");
    uint64_t expires = 0;
    if (rp_mp_get_u64(md, "expires", &expires) == 0 && expires != 0 && expires < f->now_ms)
        return false; /* its presence ran out: the node is gone */
    const msgpack_object *id = rp_mp_get(md, "name");
    const msgpack_object *hostname = rp_mp_get(spec, "hostname");
    const msgpack_object *addr = rp_mp_get(spec, "addr");
    size_t tl = strlen(f->target), hl = strlen(f->host);
    if (str_is(addr, f->target, tl) && tl > 0)
        return true;
    if (str_is(id, f->host, hl) || str_is(hostname, f->host, hl))
        return true;
    /* "10.0.0.5" for a node at "10.0.0.5:3022" */
    if (!f->has_port && addr != NULL && addr->type == MSGPACK_OBJECT_STR &&
        addr->via.str.size > hl && memcmp(addr->via.str.ptr, f->host, hl) == 0 &&
        addr->via.str.ptr[hl] == ':')
        return true;
    return false;
}

static int find_cb(void *arg, const char *name, const void *res, size_t len)
{
    struct find *f = arg;
    msgpack_unpacked u;
    (void)name;
    if (rp_mp_parse(res, len, &u) != 0)
        return 0;
    if (node_matches(f, &u.data)) {
        if (f->matches == 0)
            rp_buf_append(&f->first, res, len);
        f->matches++;
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}

/* The node's labels: metadata.labels and the results of spec.cmd_labels, copied into
 * @text (MAX_LABELS pairs of 256 bytes, the caller's) and pointed to by @out. */
static size_t node_labels(const msgpack_object *res, struct rbac_label *out, size_t max,
                          char (*text)[2][256])
{
    size_t n = 0;
    const msgpack_object *labels = rp_mp_get(rp_mp_get(res, "metadata"), "labels");
    if (labels != NULL && labels->type == MSGPACK_OBJECT_MAP)
        for (uint32_t i = 0; i < labels->via.map.size && n < max; i++) {
            str_into(&labels->via.map.ptr[i].key, text[n][0], 256);
            str_into(&labels->via.map.ptr[i].val, text[n][1], 256);
            if (text[n][0][0] != '\0') {
                out[n] = (struct rbac_label){text[n][0], text[n][1]};
                n++;
            }
        }
    const msgpack_object *cmd = rp_mp_get(rp_mp_get(res, "spec"), "cmd_labels");
    if (cmd != NULL && cmd->type == MSGPACK_OBJECT_MAP)
        for (uint32_t i = 0; i < cmd->via.map.size && n < max; i++) {
            str_into(&cmd->via.map.ptr[i].key, text[n][0], 256);
            str_into(rp_mp_get(&cmd->via.map.ptr[i].val, "result"), text[n][1], 256);
            if (text[n][0][0] != '\0') {
                out[n] = (struct rbac_label){text[n][0], text[n][1]};
                n++;
            }
        }
    return n;
}

/* May @user reach the node @res as @login (NULL: any login of the certificate)? */
static int check_access(struct proxy *p, const struct rp_identity *user, const char *login,
                        const msgpack_object *res, const char *host_id)
{
    struct agent_cache *cache = proxy_cache(p);
    char why[512] = "";
    void *ures = NULL;
    size_t ulen = 0;
    msgpack_unpacked uu;
    bool have_user = false;
    struct rbac_set *set = NULL;
    char(*text)[2][256] = NULL; /* the node's labels: 64 KiB, on the heap as workers' stacks
                                 * are small */
    int rv;

    if (login != NULL) {
        bool in_cert = false;
        for (size_t i = 0; i < user->n_logins && !in_cert; i++)
            in_cert = strcmp(user->logins[i], login) == 0;
        if (!in_cert)
            return rp_err(RP_EDENIED,
                          "your certificate does not allow login '%s' (it allows %zu login%s): ask "
                          "an admin for a role with it, then run tsh login again",
                          login, user->n_logins, user->n_logins == 1 ? "" : "s");
    }
    if ((rv = agent_cache_get(cache, "user", user->name, &ures, &ulen)) != 0)
        return rp_err(RP_EDENIED, "user '%s' is not known to the cluster (deleted?)", user->name);
    if (rp_mp_parse(ures, ulen, &uu) == 0)
        have_user = true;
    const msgpack_object *traits =
        have_user ? rp_mp_get(rp_mp_get(&uu.data, "spec"), "traits") : NULL;
    rv = agent_cache_role_set(cache, (const char *const *)user->groups, user->n_groups, traits,
                              &set, why, sizeof why);
    if (rv != 0) {
        rv = rp_err(RP_EDENIED, "your roles cannot be applied: %s", why);
        goto out;
    }
    if ((rv = rbac_set_ssh_refused(set, why, sizeof why)) != 0) {
        rv = rp_err(RP_EDENIED, "%s", why);
        goto out;
    }
    struct rbac_label labels[MAX_LABELS];
    text = malloc(sizeof(char[MAX_LABELS][2][256]));
    if (text == NULL) {
        rv = rp_err(RP_ENOMEM, "no memory for the node's labels");
        goto out;
    }
    size_t n_labels = node_labels(res, labels, MAX_LABELS, text);
    const char *allowed_login = login;
    if (login != NULL) {
        rv = rbac_check_ssh(set, login, labels, n_labels, why, sizeof why);
    } else {
        rv = RP_EDENIED;
        snprintf(why, sizeof why, "your certificate holds no login");
        for (size_t i = 0; i < user->n_logins && rv != 0; i++) {
            rv = rbac_check_ssh(set, user->logins[i], labels, n_labels, why, sizeof why);
            if (rv == 0)
                allowed_login = user->logins[i];
        }
    }
    if (rv != 0) {
        rv = rp_err(RP_EDENIED, "%s", why);
        goto out;
    }
    rv =
        agent_cache_lock_check(cache, user->name, (const char *const *)user->groups, user->n_groups,
                               allowed_login, host_id, rp_now_ms(), why, sizeof why);
    if (rv != 0)
        rv = rp_err(RP_EDENIED, "%s", why[0] ? why : "the locks could not be read");
out:
    free(text);
    rbac_set_free(set);
    if (have_user)
        msgpack_unpacked_destroy(&uu);
    free(ures);
    return rv;
}

static char *dup_str(const msgpack_object *o)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
        memchr(o->via.str.ptr, 0, o->via.str.size) != NULL)
        return NULL;
    return strndup(o->via.str.ptr, o->via.str.size);
}

int proxy_route_find(struct proxy *p, const struct rp_identity *user, const char *login,
                     const char *target, struct px_route *out)
{
    memset(out, 0, sizeof *out);
    if (user == NULL || user->system_role != RP_SYS_NONE || user->name == NULL)
        return rp_err(RP_EDENIED, "a user certificate is required: run tsh login");
    if (target == NULL || target[0] == '\0' || strlen(target) >= 300)
        return rp_err(RP_ENOTFOUND, "no node named '%.100s'", target ? target : "");
    struct find f = {.target = target, .now_ms = rp_now_ms()};
    rp_buf_init(&f.first);
    snprintf(f.host, sizeof f.host, "%s", target);
    /* "HOST:PORT" (or "[v6]:PORT"): the port is only a hint for hostnames and ids. */
    char *colon = strrchr(f.host, ':');
    if (colon != NULL && (f.host[0] != '[' || colon[-1] == ']') && strchr(f.host, ':') == colon) {
        *colon = '\0';
        f.has_port = true;
    }
    agent_cache_each(proxy_cache(p), "node", find_cb, &f);
    if (f.matches == 0) {
        rp_buf_free(&f.first);
        return rp_err(RP_ENOTFOUND,
                      "no node named '%s' (a hostname, host id or address as tsh ls shows)",
                      target);
    }
    if (f.matches > 1) {
        rp_buf_free(&f.first);
        return rp_err(RP_EINVAL, "'%s' names %zu nodes: use the host id (tsh ls shows them)",
                      target, f.matches);
    }
    msgpack_unpacked u;
    int rv = rp_mp_parse(f.first.data, f.first.len, &u);
    if (rv != 0) {
        rp_buf_free(&f.first);
        return rv;
    }
    const msgpack_object *md = rp_mp_get(&u.data, "metadata");
    const msgpack_object *spec = rp_mp_get(&u.data, "spec");
    str_into(rp_mp_get(md, "name"), out->host_id, sizeof out->host_id);
    str_into(rp_mp_get(spec, "hostname"), out->hostname, sizeof out->hostname);
    str_into(rp_mp_get(spec, "addr"), out->addr, sizeof out->addr);
    out->tunnel = px_tunnels_has(proxy_tunnels(p), out->host_id);
    rv = check_access(p, user, login, &u.data, out->host_id);
    if (rv == 0) {
        out->host_key = dup_str(rp_mp_get(spec, "host_key"));
        out->host_cert = dup_str(rp_mp_get(spec, "host_cert"));
    }
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&f.first);
    if (rv != 0)
        px_route_free(out);
    return rv;
}

static int route_dial(struct proxy *p, const struct px_route *r, const char *client_addr,
                      int timeout_ms, int *fd, struct px_tunnel_stream **stream)
{
    struct px_tunnels *t = proxy_tunnels(p);
    *fd = -1;
    if (stream != NULL)
        *stream = NULL;
    if (px_tunnels_has(t, r->host_id)) {
        int rv = stream != NULL ? px_tunnels_open(t, r->host_id, client_addr, timeout_ms, stream)
                                : px_tunnels_dial(t, r->host_id, client_addr, timeout_ms, fd);
        if (rv == 0 || r->addr[0] == '\0')
            return rv;
        rp_info("proxy", "node %s: tunnel dial failed (%s); trying %s directly", r->host_id,
                rp_errmsg(), r->addr);
    }
    if (r->addr[0] == '\0')
        return rp_err(RP_EUNAVAILABLE,
                      "node %s (%s) is reachable only through a reverse tunnel, and it has none "
                      "to this proxy now: check that its agent runs",
                      r->hostname, r->host_id);
    int rv = px_tcp_connect(r->addr, timeout_ms, fd);
    if (rv != 0)
        return rp_err(rv, "node %s (%s): %s", r->hostname, r->host_id, rp_errmsg());
    return 0;
}

int proxy_route_dial(struct proxy *p, const struct px_route *r, const char *client_addr,
                     int timeout_ms, int *fd)
{
    return route_dial(p, r, client_addr, timeout_ms, fd, NULL);
}

int proxy_route_open(struct proxy *p, const struct px_route *r, const char *client_addr,
                     int timeout_ms, int *fd, struct px_tunnel_stream **stream)
{
    return route_dial(p, r, client_addr, timeout_ms, fd, stream);
}
