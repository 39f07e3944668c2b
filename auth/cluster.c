/* auth/cluster.c: cluster-level methods: ping, status, tokens, join,
 * membership, and the leader's bootstrap and expiry duties. */
#include <ctype.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/audit.h"
#include "auth/ca_cache.h"
#include "auth/internal.h"
#include "auth/locks.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/util.h"

#define PEER_STATUS_TIMEOUT_MS 1000
#define TOKEN_MAX_TTL_MS (48ull * 3600 * 1000)

/* ---- resources ---------------------------------------------------------- */

void auth_resource_begin(msgpack_packer *pk, struct rp_mp_map *res, struct rp_mp_map *spec,
                         const char *kind, const char *version, const char *name, uint64_t expires)
{
    struct rp_mp_map meta;
    rp_mp_map_begin(pk, res);
    rp_mp_map_str(res, "kind", kind);
    rp_mp_map_str(res, "version", version);
    rp_mp_map_begin_map(res, "metadata", &meta);
    rp_mp_map_str(&meta, "name", name);
    if (expires)
        rp_mp_map_u64(&meta, "expires", expires);
    rp_mp_map_end(&meta);
    rp_mp_map_begin_map(res, "spec", spec);
}

void auth_resource_end(struct rp_mp_map *res, struct rp_mp_map *spec)
{
    rp_mp_map_end(spec);
    rp_mp_map_end(res);
}

static void pack_auth_server(msgpack_packer *pk, const char *host_id, const char *nodename,
                             uint64_t raft_id, const char *raft_addr, const char *api_addr)
{
    struct rp_mp_map res, spec;
    auth_resource_begin(pk, &res, &spec, AUTH_KIND_AUTH_SERVER, "v2", host_id, 0);
    rp_mp_map_str(&spec, "hostname", nodename);
    rp_mp_map_u64(&spec, "raft_id", raft_id);
    rp_mp_map_str(&spec, "raft_addr", raft_addr);
    rp_mp_map_str(&spec, "api_addr", api_addr);
    auth_resource_end(&res, &spec);
}

/* Proposes a batch of already-encoded "put" ops under request id @rid. */
static int propose_puts(struct auth_server *s, const char *rid, const struct rp_buf *ops,
                        uint32_t n_ops)
{
    struct state_cmd c = {
        .op = "batch", .rid = rid, .ops = ops->data, .ops_len = ops->len, .n_ops = n_ops};
    return auth_propose_cmd(s, &c, NULL);
}

/* Appends a put sub-command whose resource the callback packs. */
static int append_put(struct rp_buf *ops, const struct rp_buf *res)
{
    struct state_cmd c = {.op = "put", .res = res->data, .res_len = res->len};
    return state_cmd_encode(&c, ops);
}

static const char *public_api_addr(const struct rp_config *cfg)
{
    return cfg->auth_public_addr ? cfg->auth_public_addr : cfg->auth_listen_addr;
}

int auth_bootstrap_write(struct auth_server *s)
{
    struct rp_buf ops, res;
    char *ca_pem = NULL, *key_pem = NULL;
    char rid[96];
    msgpack_packer pk;
    struct rp_mp_map m, spec, keys, key;
    int rv;
    rp_buf_init(&ops);
    rp_buf_init(&res);
    if ((rv = rp_tls_cert_to_pem(s->id.ca_cert, &ca_pem)) != 0 ||
        (rv = rp_tls_key_to_pem(s->id.ca_key_pending, &key_pem)) != 0)
        goto out;

    rp_mp_packer_init(&pk, &res);
    auth_resource_begin(&pk, &m, &spec, AUTH_KIND_CLUSTER_NAME, "v2", "cluster-name", 0);
    rp_mp_map_str(&spec, "cluster_name", s->id.cluster_name);
    auth_resource_end(&m, &spec);
    if ((rv = append_put(&ops, &res)) != 0)
        goto out;

    rp_buf_reset(&res);
    auth_resource_begin(&pk, &m, &spec, AUTH_KIND_CA, "v2", "tls", 0);
    rp_mp_map_str(&spec, "type", "tls");
    rp_mp_map_str(&spec, "cluster_name", s->id.cluster_name);
    rp_mp_map_begin_map(&spec, "active_keys", &keys);
    msgpack_pack_array(rp_mp_map_key(&keys, "tls"), 1);
    rp_mp_map_begin(&pk, &key);
    rp_mp_map_str(&key, "cert", ca_pem);
    rp_mp_map_str(&key, "key", key_pem);
    rp_mp_map_end(&key);
    rp_mp_map_end(&keys);
    auth_resource_end(&m, &spec);
    if ((rv = append_put(&ops, &res)) != 0)
        goto out;

    rp_buf_reset(&res);
    pack_auth_server(&pk, s->id.host_id, s->cfg->nodename, s->cfg->raft_id,
                     s->cfg->raft_listen_addr, public_api_addr(s->cfg));
    if ((rv = append_put(&ops, &res)) != 0)
        goto out;

    snprintf(rid, sizeof rid, "bootstrap-%.40s", s->id.host_id);
    rv = propose_puts(s, rid, &ops, 3);
    if (rv == 0) {
        char path[1200];
        snprintf(path, sizeof path, "%s/%s/ca.key.bootstrap", s->data_dir, AUTH_KEYS_DIR);
        unlink(path);
        EVP_PKEY_free(s->id.ca_key_pending);
        s->id.ca_key_pending = NULL;
        rp_info("auth", "bootstrap records written: cluster %s, TLS CA, auth server %s",
                s->id.cluster_name, s->id.host_id);
    }
out:
    if (key_pem) {
        OPENSSL_cleanse(key_pem, strlen(key_pem));
        free(key_pem);
    }
    free(ca_pem);
    rp_buf_free(&ops);
    /* The buffer held the CA key. */
    if (res.data)
        OPENSSL_cleanse(res.data, res.cap);
    rp_buf_free(&res);
    return rv;
}

int auth_expire_due(struct auth_server *s)
{
    uint64_t next = 0, now = rp_now_ms();
    int rv = state_next_expiry(s->state, &next);
    if (rv != 0 || next == 0 || next > now)
        return rv;
    struct rp_buf cmd;
    struct state_result res;
    struct state_cmd c = {.op = "expire", .before = now};
    rp_buf_init(&cmd);
    rv = state_cmd_encode(&c, &cmd);
    if (rv == 0)
        rv = auth_propose(s, cmd.data, cmd.len, &res);
    rp_buf_free(&cmd);
    if (rv == 0 && res.n_changed > 0)
        rp_info("auth", "expired %u resources", res.n_changed);
    return rv;
}

/* ---- the CA ------------------------------------------------------------- */

int auth_sign_identity(struct auth_server *s, const unsigned char spki[RP_TLS_P256_SPKI_LEN],
                       const struct rp_identity *ident, const char *const *sans, size_t n_sans,
                       long ttl_s, char **pem_out)
{
    EVP_PKEY *ca_key = NULL;
    int rv = auth_ca_cache_tls_key(s->ca, s->state, &ca_key);
    if (rv != 0)
        return rv;
    rv = rp_tls_issue_pem(ca_key, s->id.ca_cert, spki, RP_TLS_P256_SPKI_LEN, ident, sans, n_sans,
                          ttl_s, pem_out);
    EVP_PKEY_free(ca_key);
    return rv;
}

int auth_sign_host_identity(struct auth_server *s, const unsigned char spki[RP_TLS_P256_SPKI_LEN],
                            const char *host_id, const char *role, const char *const *sans,
                            size_t n_sans, long ttl_s, char **pem_out)
{
    char *groups[1] = {(char *)role};
    struct rp_identity hid = {.name = (char *)host_id,
                              .groups = groups,
                              .n_groups = 1,
                              .cluster = s->id.cluster_name,
                              .system_role = rp_system_role_from_name(role),
                              .host_id = (char *)host_id};
    if (hid.system_role == RP_SYS_NONE)
        return rp_err(RP_EINVAL, "role '%s': expected a system role", role);
    return auth_sign_identity(s, spki, &hid, sans, n_sans, ttl_s, pem_out);
}

/* ---- ping and status ---------------------------------------------------- */

struct addr_list {
    char addrs[RP_MAX_MEMBERS][64];
    uint64_t ids[RP_MAX_MEMBERS];
    unsigned n;
};

static int collect_addr_cb(void *arg, const void *res, size_t len)
{
    struct addr_list *al = arg;
    msgpack_unpacked u;
    if (al->n >= RP_MAX_MEMBERS || rp_mp_parse(res, len, &u) != 0)
        return 0;
    const msgpack_object *spec = rp_mp_get(&u.data, "spec");
    const char *a;
    size_t n;
    uint64_t id = 0;
    if (rp_mp_get_str(spec, "api_addr", &a, &n) == 0 && n < 64 &&
        rp_mp_get_u64(spec, "raft_id", &id) == 0) {
        memcpy(al->addrs[al->n], a, n);
        al->addrs[al->n][n] = '\0';
        al->ids[al->n] = id;
        al->n++;
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}

int auth_h_ping(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    struct addr_list al = {.n = 0};
    struct rp_node_status st;
    int rv = rp_node_status(s->node, &st);
    if (rv != 0)
        return rv;
    state_list(s->state, AUTH_KIND_AUTH_SERVER, NULL, 0, collect_addr_cb, &al, NULL);
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "cluster_name", s->id.cluster_name);
    rp_mp_map_str(&m, "server_id", s->id.host_id);
    rp_mp_map_u64(&m, "raft_id", s->cfg->raft_id);
    rp_mp_map_str(&m, "ca_pin", s->id.ca_pin);
    rp_mp_map_u64(&m, "leader_id", st.leader_id);
    rp_mp_map_str(&m, "version", AUTH_VERSION);
    msgpack_pack_array(rp_mp_map_key(&m, "auth_servers"), al.n);
    for (unsigned i = 0; i < al.n; i++)
        rp_mp_pack_str(&pk, al.addrs[i]);
    rp_mp_map_end(&m);
    return 0;
}

int auth_h_member_status(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    struct rp_node_status st;
    uint64_t free_b = 0, total_b = 0;
    int rv = rp_node_status(s->node, &st);
    if (rv != 0)
        return rv;
    rp_disk_free(s->data_dir, &free_b, &total_b);
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_u64(&m, "id", st.id);
    rp_mp_map_str(&m, "state", rp_raft_state_name(st.state));
    rp_mp_map_bool(&m, "ready", st.ready);
    rp_mp_map_u64(&m, "term", st.term);
    rp_mp_map_u64(&m, "leader_id", st.leader_id);
    rp_mp_map_u64(&m, "last_applied", st.last_applied);
    rp_mp_map_u64(&m, "commit_index", st.commit_index);
    rp_mp_map_u64(&m, "last_index", st.last_index);
    rp_mp_map_u64(&m, "disk_free", free_b);
    rp_mp_map_u64(&m, "disk_total", total_b);
    rp_mp_map_end(&m);
    return 0;
}

struct peer_probe {
    struct auth_server *srv;
    char addr[64];
    bool ok;
    char state[16];
    uint64_t term, leader_id, last_applied, disk_free;
    pthread_t thread;
};

static void *probe_main(void *arg)
{
    struct peer_probe *p = arg;
    struct rp_conn c;
    struct rp_buf req, resp;
    msgpack_packer pk;
    msgpack_unpacked u;
    rp_buf_init(&req);
    rp_buf_init(&resp);
    rp_mp_packer_init(&pk, &req);
    struct rp_mp_map m;
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "member_status");
    rp_mp_map_end(&m);
    if (rp_conn_dial(&c, p->srv->peer_ctx, p->addr, PEER_STATUS_TIMEOUT_MS) != 0)
        goto out;
    rp_conn_set_timeout(&c, PEER_STATUS_TIMEOUT_MS);
    if (rp_conn_write_frame(&c, req.data, req.len) == 0 && rp_conn_read_frame(&c, &resp) == 0 &&
        rp_mp_parse(resp.data, resp.len, &u) == 0) {
        bool ok = false;
        const char *st;
        size_t n;
        rp_mp_get_bool(&u.data, "ok", &ok);
        if (ok && rp_mp_get_str(&u.data, "state", &st, &n) == 0 && n < sizeof p->state) {
            memcpy(p->state, st, n);
            p->state[n] = '\0';
            rp_mp_get_u64(&u.data, "term", &p->term);
            rp_mp_get_u64(&u.data, "leader_id", &p->leader_id);
            rp_mp_get_u64(&u.data, "last_applied", &p->last_applied);
            rp_mp_get_u64(&u.data, "disk_free", &p->disk_free);
            p->ok = true;
        }
        msgpack_unpacked_destroy(&u);
    }
    rp_conn_close(&c);
out:
    rp_buf_free(&req);
    rp_buf_free(&resp);
    return NULL;
}

int auth_h_status(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    struct rp_node_status st;
    struct addr_list al = {.n = 0};
    struct peer_probe probes[RP_MAX_MEMBERS];
    uint64_t free_b = 0;
    int rv = rp_node_status(s->node, &st);
    if (rv != 0)
        return rv;
    /* Members in id order, so that every server lists them alike. */
    for (unsigned i = 1; i < st.n_members; i++) {
        for (unsigned j = i; j > 0 && st.members[j - 1].id > st.members[j].id; j--) {
            struct rp_member tmp = st.members[j];
            st.members[j] = st.members[j - 1];
            st.members[j - 1] = tmp;
        }
    }
    rp_disk_free(s->data_dir, &free_b, NULL);
    state_list(s->state, AUTH_KIND_AUTH_SERVER, NULL, 0, collect_addr_cb, &al, NULL);

    memset(probes, 0, sizeof probes);
    for (unsigned i = 0; i < st.n_members; i++) {
        struct peer_probe *p = &probes[i];
        p->srv = s;
        if (st.members[i].id == st.id) {
            p->ok = true;
            snprintf(p->state, sizeof p->state, "%s", rp_raft_state_name(st.state));
            p->term = st.term;
            p->leader_id = st.leader_id;
            p->last_applied = st.last_applied;
            p->disk_free = free_b;
            continue;
        }
        for (unsigned j = 0; j < al.n; j++) {
            if (al.ids[j] == st.members[i].id)
                snprintf(p->addr, sizeof p->addr, "%s", al.addrs[j]);
        }
        if (p->addr[0] && pthread_create(&p->thread, NULL, probe_main, p) != 0)
            p->addr[0] = '\0';
    }
    uint64_t term = st.term, leader = st.leader_id;
    for (unsigned i = 0; i < st.n_members; i++) {
        struct peer_probe *p = &probes[i];
        if (st.members[i].id != st.id && p->addr[0])
            pthread_join(p->thread, NULL);
        if (p->ok && p->term > term)
            term = p->term;
        if (p->ok && strcmp(p->state, "leader") == 0) {
            leader = st.members[i].id;
            term = p->term;
        }
    }

    msgpack_packer pk;
    struct rp_mp_map ans;
    auth_reply_ok(&ans, &pk, out);
    rp_mp_map_str(&ans, "cluster_name", s->id.cluster_name);
    rp_mp_map_str(&ans, "ca_pin", s->id.ca_pin);
    rp_mp_map_u64(&ans, "leader_id", leader);
    rp_mp_map_u64(&ans, "term", term);
    msgpack_pack_array(rp_mp_map_key(&ans, "members"), st.n_members);
    for (unsigned i = 0; i < st.n_members; i++) {
        const struct rp_member *m = &st.members[i];
        struct peer_probe *p = &probes[i];
        uint64_t applied = p->ok ? p->last_applied : m->match_index;
        struct rp_mp_map e;
        rp_mp_map_begin(&pk, &e);
        rp_mp_map_u64(&e, "id", m->id);
        rp_mp_map_str(&e, "address", m->address);
        rp_mp_map_str(&e, "role", rp_member_role_name(m->role));
        rp_mp_map_str(&e, "state", p->ok ? p->state : "unreachable");
        rp_mp_map_u64(&e, "last_applied", applied);
        /* Extra fields for the text view; tctl's JSON keeps only the documented ones. */
        rp_mp_map_str(&e, "api_address", m->id == st.id ? public_api_addr(s->cfg) : p->addr);
        rp_mp_map_u64(&e, "disk_free", p->ok ? p->disk_free : 0);
        rp_mp_map_bool(&e, "reachable", p->ok);
        rp_mp_map_end(&e);
    }
    rp_mp_map_end(&ans);
    return 0;
}

/* ---- tokens ------------------------------------------------------------- */

static const char *token_role(const char *type)
{
    if (strcmp(type, "auth") == 0)
        return RP_ROLE_AUTH;
    if (strcmp(type, "node") == 0)
        return RP_ROLE_NODE;
    if (strcmp(type, "proxy") == 0)
        return RP_ROLE_PROXY;
    return NULL;
}

int auth_h_token_add(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    char type[16], token[33], rid[33];
    uint64_t ttl = 30 * 60 * 1000;
    int rv = auth_arg_str(r->args, "type", type, sizeof type, true);
    if (rv != 0)
        return rv;
    const char *role = token_role(type);
    if (role == NULL)
        return rp_err(RP_EINVAL, "unknown token type '%s', expected auth, node or proxy", type);
    rv = rp_mp_get_u64(r->args, "ttl_ms", &ttl);
    if (rv == RP_EINVAL)
        return rv;
    if (ttl < 1000 || ttl > TOKEN_MAX_TTL_MS)
        return rp_err(RP_EINVAL, "token ttl must be between 1s and 48h");
    if ((rv = rp_random_hex(token, 16)) != 0)
        return rv;
    uint64_t expires = rp_now_ms() + ttl;
    struct rp_buf res, cmd;
    msgpack_packer pk;
    struct rp_mp_map m, spec;
    struct state_result sr;
    rp_buf_init(&res);
    rp_buf_init(&cmd);
    rp_mp_packer_init(&pk, &res);
    auth_resource_begin(&pk, &m, &spec, AUTH_KIND_TOKEN, "v2", token, expires);
    msgpack_pack_array(rp_mp_map_key(&spec, "roles"), 1);
    rp_mp_pack_str(&pk, role);
    rp_mp_map_str(&spec, "join_method", "token");
    auth_resource_end(&m, &spec);
    auth_new_rid(rid);
    struct state_cmd c = {.op = "create", .rid = rid, .res = res.data, .res_len = res.len};
    rv = state_cmd_encode(&c, &cmd);
    if (rv == 0)
        rv = auth_propose(s, cmd.data, cmd.len, &sr);
    if (rv == 0 && sr.code != 0)
        rv = rp_err(sr.code, "%s", sr.message);
    rp_buf_free(&res);
    rp_buf_free(&cmd);
    if (rv != 0)
        return rv;
    rp_info("auth", "join token of type %s created by %s, expires in %llus", type,
            r->caller ? r->caller->name : "?", (unsigned long long)(ttl / 1000));
    struct audit_event e;
    const char *role_name = type;
    char label[AUTH_TOKEN_LABEL_LEN];
    auth_token_label(token, strlen(token), label);
    audit_event_init(&e, "join_token.create", "TJT00I");
    audit_event_str(&e, "user", r->caller ? r->caller->name : "?");
    audit_event_str(&e, "token_name", label);
    audit_event_strs(&e, "roles", &role_name, 1);
    audit_event_str(&e, "join_method", "token");
    audit_event_u64(&e, "expires", expires);
    audit_emit(s, &e, AUDIT_WAIT); /* a failure is logged by the audit log itself */
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "token", token);
    rp_mp_map_str(&m, "type", type);
    rp_mp_map_u64(&m, "expires", expires);
    rp_mp_map_str(&m, "ca_pin", s->id.ca_pin);
    rp_mp_map_end(&m);
    return 0;
}

/* ---- join --------------------------------------------------------------- */

static bool valid_host_id(const char *s)
{
    if (*s == '\0')
        return false;
    for (; *s; s++) {
        if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' && *s != '_')
            return false;
    }
    return true;
}

/* Checks the token: present, of @role, not expired. Every failure is the same
 * answer to the caller (no oracle); the log says which. */
/* "instance.join" (our code TJ001I, TJ001E when refused): a server or agent joined. */
static void audit_join(struct auth_server *s, const char *nodename, const char *host_id,
                       const char *role, const char *token, const char *remote, const char *error)
{
    struct audit_event e;
    char label[AUTH_TOKEN_LABEL_LEN];
    auth_token_label(token, strlen(token), label);
    audit_event_init(&e, "instance.join", error ? "TJ001E" : "TJ001I");
    audit_event_str(&e, "token_name", label);
    audit_event_str(&e, "nodename", nodename);
    audit_event_str(&e, "host_id", host_id);
    audit_event_str(&e, "role", role);
    audit_event_str(&e, "join_method", "token");
    audit_event_str(&e, "addr.remote", remote);
    audit_event_bool(&e, "success", error == NULL);
    audit_event_str(&e, "error", error);
    audit_emit(s, &e, error ? AUDIT_ASYNC : AUDIT_WAIT);
}

/* Checks the token: present, joining by join_method token, of @role, not expired;
 * *@rev gets its revision, at which the join consumes it. Every failure is the
 * same answer to the caller (no oracle), except a join method Raftport does not
 * have, which only the token's holder can learn; the log says which, naming the
 * token by its hash prefix only. */
static int check_token(struct auth_server *s, const char *token, const char *role, const char *who,
                       uint64_t *rev)
{
    struct rp_buf res;
    msgpack_unpacked u;
    const char *why = NULL;
    char method[32] = "";
    rp_buf_init(&res);
    int rv = rp_node_barrier(s->node, AUTH_READ_TIMEOUT_MS);
    if (rv != 0) {
        rp_buf_free(&res);
        return rp_err(rv, "checking join token: %s", rp_errmsg());
    }
    if (state_get(s->state, AUTH_KIND_TOKEN, token, &res, NULL) != 0) {
        why = "no such token (or already used)";
    } else if (rp_mp_parse(res.data, res.len, &u) != 0) {
        why = "stored token is malformed";
    } else {
        uint64_t expires = 0;
        const msgpack_object *md = rp_mp_get(&u.data, "metadata");
        rp_mp_get_u64(md, "expires", &expires);
        const msgpack_object *spec = rp_mp_get(&u.data, "spec");
        const msgpack_object *roles = rp_mp_get(spec, "roles");
        const msgpack_object *jm = rp_mp_get(spec, "join_method");
        bool has = false;
        if (roles && roles->type == MSGPACK_OBJECT_ARRAY) {
            for (uint32_t i = 0; i < roles->via.array.size; i++)
                has = has || rp_mp_str_eq(&roles->via.array.ptr[i], role);
        }
        if (rp_mp_get_u64(md, "revision", rev) != 0 || *rev == 0)
            why = "stored token has no revision";
        else if (expires == 0)
            why = "token has no expiry"; /* only written before admission existed */
        else if (expires <= rp_now_ms())
            why = "token expired";
        else if (!has)
            why = "token is of another type";
        else if (jm != NULL && jm->type == MSGPACK_OBJECT_STR && !rp_mp_str_eq(jm, "token"))
            snprintf(method, sizeof method, "%.*s",
                     (int)(jm->via.str.size < 31 ? jm->via.str.size : 31), jm->via.str.ptr);
        msgpack_unpacked_destroy(&u);
    }
    if (res.data)
        OPENSSL_cleanse(res.data, res.cap);
    rp_buf_free(&res);
    char label[AUTH_TOKEN_LABEL_LEN];
    auth_token_label(token, strlen(token), label);
    if (why == NULL && method[0]) {
        rp_warn("auth", "join refused for %s: token %s has join method %s", who, label, method);
        return rp_err(RP_EDENIED,
                      "join refused: the token's join method is '%s'; Raftport joins only "
                      "with join_method token",
                      method);
    }
    if (why != NULL) {
        rp_warn("auth", "join refused for %s: token %s: %s", who, label, why);
        return rp_err(RP_EDENIED, "join refused: the token is invalid, expired, already used, or "
                                  "not for this role");
    }
    return 0;
}

/* Appends the op that consumes the join token: deleted at the revision checked, so
 * of two joins racing with one token, only the first to commit succeeds. */
static int append_consume(struct rp_buf *ops, const char *token, uint64_t rev)
{
    struct state_cmd c = {.op = "cdelete", .kind = AUTH_KIND_TOKEN, .name = token, .rev = rev};
    return state_cmd_encode(&c, ops);
}

/* SANs a joining proxy may ask for (auth/agents' principals, the first this many). */
#define JOIN_PROXY_MAX_SANS 8

/* Extracts the host part of "host:port" into @out. */
static void host_of(const char *addr, char *out, size_t outlen)
{
    const char *colon = strrchr(addr, ':');
    size_t n = colon ? (size_t)(colon - addr) : strlen(addr);
    if (n > 0 && addr[0] == '[' && addr[n - 1] == ']') {
        addr++;
        n -= 2;
    }
    if (n >= outlen)
        n = outlen - 1;
    memcpy(out, addr, n);
    out[n] = '\0';
}

int auth_h_join(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    char token[80], type[16], host_id[64], nodename[256], raft_addr[64], api_addr[64];
    char host_pub_pem[1024], admin_pub_pem[1024], who[700], ssh_pub_line[8192];
    uint64_t raft_id = 0;
    int rv;
    char *ssh_cert = NULL, *user_ca = NULL, *host_ca = NULL;
    if ((rv = auth_arg_str(r->args, "ssh_pubkey", ssh_pub_line, sizeof ssh_pub_line, false)) != 0)
        return rv;
    if ((rv = auth_arg_str(r->args, "token", token, sizeof token, true)) != 0 ||
        (rv = auth_arg_str(r->args, "type", type, sizeof type, true)) != 0 ||
        (rv = auth_arg_str(r->args, "host_id", host_id, sizeof host_id, true)) != 0 ||
        (rv = auth_arg_str(r->args, "nodename", nodename, sizeof nodename, true)) != 0 ||
        (rv = auth_arg_str(r->args, "host_pubkey", host_pub_pem, sizeof host_pub_pem, true)) != 0)
        return rv;
    const char *role = token_role(type);
    if (role == NULL)
        return rp_err(RP_EINVAL, "unknown join type '%s', expected auth, node or proxy", type);
    if (!valid_host_id(host_id) || !valid_host_id(nodename))
        return rp_err(RP_EINVAL,
                      "host_id and nodename may hold only letters, digits, '.', '-', '_'");
    bool is_auth = strcmp(type, "auth") == 0;
    if (is_auth) {
        if ((rv = auth_arg_str(r->args, "raft_addr", raft_addr, sizeof raft_addr, true)) != 0 ||
            (rv = auth_arg_str(r->args, "api_addr", api_addr, sizeof api_addr, true)) != 0 ||
            (rv = auth_arg_str(r->args, "admin_pubkey", admin_pub_pem, sizeof admin_pub_pem,
                               true)) != 0)
            return rv;
        if (rp_mp_get_u64(r->args, "raft_id", &raft_id) != 0 || raft_id == 0)
            return rp_err(RP_EINVAL, "argument 'raft_id' (a positive integer) is required");
        if (rp_check_hostport(raft_addr) != 0 || rp_check_hostport(api_addr) != 0)
            return rp_err(RP_EINVAL, "join: %s", rp_errmsg());
    }
    snprintf(who, sizeof who, "%s (%s, type %s, from %s)", nodename, host_id, type, r->remote);

    uint64_t token_rev = 0;
    if ((rv = check_token(s, token, role, who, &token_rev)) != 0) {
        audit_join(s, nodename, host_id, role, token, r->remote, rp_errmsg());
        return rv;
    }

    unsigned char host_spki[RP_TLS_P256_SPKI_LEN], admin_spki[RP_TLS_P256_SPKI_LEN];
    char *host_pem = NULL, *admin_pem = NULL, *ca_pem = NULL;
    bool already_member = false;
    if ((rv = rp_tls_pubkey_spki(host_pub_pem, strlen(host_pub_pem), host_spki)) != 0) {
        rv = rp_err(rv, "host_pubkey: %s", rp_errmsg());
        goto out;
    }
    if (is_auth) {
        if ((rv = rp_tls_pubkey_spki(admin_pub_pem, strlen(admin_pub_pem), admin_spki)) != 0) {
            rv = rp_err(rv, "admin_pubkey: %s", rp_errmsg());
            goto out;
        }
        struct rp_node_status st;
        if ((rv = rp_node_status(s->node, &st)) != 0)
            goto out;
        for (unsigned i = 0; i < st.n_members; i++) {
            const struct rp_member *m = &st.members[i];
            bool same_id = m->id == raft_id, same_addr = strcmp(m->address, raft_addr) == 0;
            if (same_id && same_addr) {
                already_member = true; /* a retried join whose answer was lost */
            } else if (same_id || same_addr) {
                rv = rp_err(
                    RP_EEXISTS, "raft id %llu or address %s is already used by member %llu (%s)",
                    (unsigned long long)raft_id, raft_addr, (unsigned long long)m->id, m->address);
                goto out;
            }
        }
    }

    char api_host[64], raft_host[64];
    /* A proxy's X.509 certificate is also the default web certificate clients check by
     * host name: its SANs are the names it asks for (its principals), which only a
     * proxy token holder may choose. Nodes' and auth servers' names are fixed. */
    char proxy_names[JOIN_PROXY_MAX_SANS][254];
    const char *sans[4 + JOIN_PROXY_MAX_SANS];
    size_t n_sans = 0;
    sans[n_sans++] = nodename;
    if (strcmp(type, "proxy") == 0) {
        const msgpack_object *pr = rp_mp_get(r->args, "principals");
        for (uint32_t i = 0; pr != NULL && pr->type == MSGPACK_OBJECT_ARRAY &&
                             i < pr->via.array.size && i < JOIN_PROXY_MAX_SANS;
             i++) {
            const msgpack_object *o = &pr->via.array.ptr[i];
            if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > 253 ||
                memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL) {
                rv = rp_err(RP_EINVAL, "principals[%u]: expected a host name or address", i);
                goto out;
            }
            snprintf(proxy_names[i], sizeof proxy_names[i], "%.*s", (int)o->via.str.size,
                     o->via.str.ptr);
            sans[n_sans++] = proxy_names[i];
        }
    }
    if (is_auth) {
        host_of(api_addr, api_host, sizeof api_host);
        host_of(raft_addr, raft_host, sizeof raft_host);
        sans[n_sans++] = api_host;
        if (strcmp(raft_host, api_host) != 0)
            sans[n_sans++] = raft_host;
    }
    /* Host identities are long-lived, renewed by CA rotation (Teleport does the same); a
     * removed host is cut off by the lock on its host id, not by expiry. */
    if ((rv = auth_sign_host_identity(s, host_spki, host_id, role, sans, n_sans, AUTH_HOST_TTL_S,
                                      &host_pem)) != 0)
        goto out;
    if (is_auth) {
        char *admin_groups[1] = {RP_ROLE_ADMIN};
        char admin_name[300];
        snprintf(admin_name, sizeof admin_name, "admin@%s", nodename);
        struct rp_identity aid = {.name = admin_name,
                                  .groups = admin_groups,
                                  .n_groups = 1,
                                  .cluster = s->id.cluster_name,
                                  .system_role = RP_SYS_ADMIN,
                                  .host_id = host_id};
        if ((rv = auth_sign_identity(s, admin_spki, &aid, NULL, 0,
                                     (long)(s->cfg->admin_identity_ttl_ms / 1000), &admin_pem)) !=
            0)
            goto out;
    }

    /* An auth token is used up in the same Raft write that registers the joiner: it
     * makes a Raft member and an admin, so one token makes one. Node and proxy tokens
     * are multi-use until they expire, as Teleport's are, so a fleet can join with one. */
    struct rp_buf res, ops;
    char rid[33];
    uint32_t n_ops = 0;
    rp_buf_init(&res);
    rp_buf_init(&ops);
    rv = 0;
    if (is_auth) {
        rv = append_consume(&ops, token, token_rev);
        n_ops++;
    }
    if (rv == 0 && is_auth && !already_member) {
        msgpack_packer rpk;
        rp_mp_packer_init(&rpk, &res);
        pack_auth_server(&rpk, host_id, nodename, raft_id, raft_addr, api_addr);
        rv = append_put(&ops, &res);
        n_ops++;
    }
    auth_new_rid(rid);
    if (rv == 0 && n_ops > 0)
        rv = propose_puts(s, rid, &ops, n_ops);
    OPENSSL_cleanse(ops.data, ops.cap);
    rp_buf_free(&res);
    rp_buf_free(&ops);
    if (rv == RP_ECONFLICT || rv == RP_ENOTFOUND) {
        rp_warn("auth", "join refused for %s: its token was used meanwhile", who);
        rv = rp_err(RP_EDENIED, "join refused: the token is invalid, expired, already used, or "
                                "not for this role");
        audit_join(s, nodename, host_id, role, token, r->remote, rp_errmsg());
        goto out;
    }
    if (rv != 0)
        goto out;

    if (is_auth && !already_member) {
        /* One membership change at a time: wait out a promotion in flight. */
        uint64_t deadline = rp_mono_ms() + 15000;
        do {
            rv = rp_node_add(s->node, raft_id, raft_addr, 5000);
            if (rv != RP_EBUSY)
                break;
            struct timespec ts = {0, 100 * 1000000L};
            nanosleep(&ts, NULL);
        } while (rp_mono_ms() < deadline);
        if (rv != 0)
            goto out;
        rp_info("auth",
                "auth server %s joined as spare %llu at %s; it becomes a voter once caught up", who,
                (unsigned long long)raft_id, raft_addr);
    } else {
        rp_info("auth", "%s joined", who);
    }
    audit_join(s, nodename, host_id, role, token, r->remote, NULL);

    if ((ca_pem = strdup(s->id.ca_pem)) == NULL) {
        rv = rp_err(RP_ENOMEM, "CA PEM");
        goto out;
    }
    msgpack_packer pk;
    /* Register-with-token for agents: their SSH host certificate and the CA public
     * keys come with the X.509 identity. */
    if (ssh_pub_line[0]) {
        if ((rv = auth_issue_host_ssh(s, host_id, nodename, role, ssh_pub_line,
                                      rp_mp_get(r->args, "principals"), AUTH_HOST_SSH_TTL_MS,
                                      &ssh_cert, NULL, NULL)) != 0 ||
            (rv = auth_ssh_ca_public_lines(s, &user_ca, &host_ca)) != 0)
            goto out;
    }
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "host_cert", host_pem);
    rp_mp_map_str(&m, "admin_cert", admin_pem);
    rp_mp_map_str(&m, "ca_cert", ca_pem);
    rp_mp_map_str(&m, "cluster_name", s->id.cluster_name);
    if (ssh_cert) {
        rp_mp_map_str(&m, "ssh_cert", ssh_cert);
        rp_mp_map_str(&m, "ssh_user_ca", user_ca);
        rp_mp_map_str(&m, "ssh_host_ca", host_ca);
    }
    rp_mp_map_end(&m);
out:
    free(ssh_cert);
    free(user_ca);
    free(host_ca);
    free(host_pem);
    free(admin_pem);
    free(ca_pem);
    return rv;
}

/* ---- membership --------------------------------------------------------- */

struct name_by_id {
    uint64_t id;
    char names[4][256];
    unsigned n;
};

static int name_by_id_cb(void *arg, const void *res, size_t len)
{
    struct name_by_id *nb = arg;
    struct state_res_meta meta;
    msgpack_unpacked u;
    if (nb->n >= 4 || state_resource_check(res, len, &meta) != 0 || rp_mp_parse(res, len, &u) != 0)
        return 0;
    uint64_t id = 0;
    if (rp_mp_get_u64(rp_mp_get(&u.data, "spec"), "raft_id", &id) == 0 && id == nb->id &&
        meta.name_len < 256) {
        memcpy(nb->names[nb->n], meta.name, meta.name_len);
        nb->names[nb->n][meta.name_len] = '\0';
        nb->n++;
    }
    msgpack_unpacked_destroy(&u);
    return 0;
}

/* A lock on @host_id (no expiry): what removing an auth server leaves behind. */
static int lock_removed_host(struct auth_server *s, const char *host_id, const char *by)
{
    char name[320], now[64], rid[33];
    snprintf(name, sizeof name, "removed-auth-server-%s", host_id);
    rp_format_time(rp_now_ms(), now, sizeof now);
    struct rp_buf res;
    msgpack_packer pk;
    rp_buf_init(&res);
    struct rp_mp_map m, spec, target;
    rp_mp_packer_init(&pk, &res);
    auth_resource_begin(&pk, &m, &spec, AUTH_KIND_LOCK, "v2", name, 0);
    rp_mp_map_begin_map(&spec, "target", &target);
    rp_mp_map_str(&target, "server_id", host_id);
    rp_mp_map_end(&target);
    rp_mp_map_str(&spec, "message", "auth server removed from the cluster");
    rp_mp_map_str(&spec, "created_by", by);
    rp_mp_map_str(&spec, "created_at", now);
    auth_resource_end(&m, &spec);
    auth_new_rid(rid);
    struct state_cmd c = {.op = "put", .rid = rid, .res = res.data, .res_len = res.len};
    int rv = auth_propose_cmd(s, &c, NULL);
    rp_buf_free(&res);
    return rv;
}

int auth_h_member_rm(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    uint64_t id = 0;
    if (rp_mp_get_u64(r->args, "id", &id) != 0 || id == 0)
        return rp_err(RP_EINVAL, "argument 'id' (the member's raft id) is required");
    struct rp_node_status st;
    int rv = rp_node_status(s->node, &st);
    if (rv != 0)
        return rv;
    bool found = false;
    unsigned voters = 0;
    for (unsigned i = 0; i < st.n_members; i++) {
        found = found || st.members[i].id == id;
        voters += st.members[i].role == RP_MEMBER_VOTER;
    }
    if (!found)
        return rp_err(RP_ENOTFOUND, "no member with raft id %llu", (unsigned long long)id);
    if (voters <= 1 && st.n_members <= 1)
        return rp_err(RP_EINVAL, "refusing to remove the last member of the cluster");
    /* Before the removal, lock the member's host id: its Auth and Admin identities
     * stop working everywhere at once and its Raft connections are refused, even if
     * this leader is the one leaving and cannot write afterwards. */
    struct name_by_id nb = {.id = id, .n = 0};
    state_list(s->state, AUTH_KIND_AUTH_SERVER, NULL, 0, name_by_id_cb, &nb, NULL);
    for (unsigned i = 0; i < nb.n; i++) {
        if ((rv = lock_removed_host(s, nb.names[i], r->caller ? r->caller->name : "?")) != 0)
            return rp_err(rv, "locking host %s before its removal: %s", nb.names[i], rp_errmsg());
    }
    /* Audited first: a leader that removes itself can no longer write through Raft
     * once the change commits (found by the Jepsen membership nemesis). A removal
     * that then fails is recorded as a second, failed event. */
    struct audit_event e;
    audit_event_init(&e, "auth_server.remove", "TAS01I");
    audit_event_str(&e, "user", r->caller ? r->caller->name : "?");
    audit_event_u64(&e, "raft_id", id);
    audit_event_str(&e, "addr.remote", r->remote);
    if ((rv = audit_emit(s, &e, AUDIT_WAIT)) != 0)
        return rv; /* no record, no removal */
    rv = rp_node_remove(s->node, id, 10000);
    if (rv != 0) {
        char why[256];
        snprintf(why, sizeof why, "%s", rp_errmsg());
        audit_event_init(&e, "auth_server.remove", "TAS01E");
        audit_event_str(&e, "user", r->caller ? r->caller->name : "?");
        audit_event_u64(&e, "raft_id", id);
        audit_event_bool(&e, "success", false);
        audit_event_str(&e, "error", why);
        audit_emit(s, &e, AUDIT_ASYNC);
        return rp_err(rv, "%s", why);
    }
    rp_info("auth", "member %llu removed by %s", (unsigned long long)id,
            r->caller ? r->caller->name : "?");
    /* Its record goes too, so that nobody forwards to it any more. If this server just
     * removed itself it no longer leads; the next leader keeps the stale record,
     * which only costs a failed probe in status. */
    for (unsigned i = 0; i < nb.n && auth_is_leader(s); i++) {
        struct rp_buf cmd;
        struct state_result sr;
        char rid[33];
        auth_new_rid(rid);
        struct state_cmd c = {
            .op = "delete", .rid = rid, .kind = AUTH_KIND_AUTH_SERVER, .name = nb.names[i]};
        rp_buf_init(&cmd);
        if (state_cmd_encode(&c, &cmd) == 0)
            auth_propose(s, cmd.data, cmd.len, &sr);
        rp_buf_free(&cmd);
    }
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_end(&m);
    return 0;
}
