/* auth/forward.c: followers pass writes and linearizable reads to the leader
 * over a small pool of mutually authenticated connections. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/internal.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"

#define FORWARD_TIMEOUT_MS 15000

bool auth_is_leader(struct auth_server *s)
{
    return rp_node_is_leader(s->node);
}

struct find_addr {
    uint64_t id;
    char *out;
    size_t outlen;
    bool found;
};

static int find_addr_cb(void *arg, const void *res, size_t len)
{
    struct find_addr *fa = arg;
    msgpack_unpacked u;
    if (rp_mp_parse(res, len, &u) != 0)
        return 0;
    const msgpack_object *spec = rp_mp_get(&u.data, "spec");
    uint64_t rid = 0;
    const char *a;
    size_t an;
    if (rp_mp_get_u64(spec, "raft_id", &rid) == 0 && rid == fa->id &&
        rp_mp_get_str(spec, "api_addr", &a, &an) == 0 && an < fa->outlen) {
        memcpy(fa->out, a, an);
        fa->out[an] = '\0';
        fa->found = true;
    }
    msgpack_unpacked_destroy(&u);
    return fa->found ? 1 : 0;
}

int auth_api_addr_of(struct auth_server *s, uint64_t id, char *out, size_t outlen)
{
    struct find_addr fa = {id, out, outlen, false};
    state_list(s->state, AUTH_KIND_AUTH_SERVER, NULL, 0, find_addr_cb, &fa, NULL);
    if (!fa.found)
        return rp_err(RP_ENOTFOUND, "no auth_server record for raft id %llu",
                      (unsigned long long)id);
    return 0;
}

/* The connections to the leader, shared by the request threads of this follower. */
struct auth_fwd_conn {
    struct rp_conn conn;
    char addr[64];
    bool in_use; /* a request thread holds it (or is dialing it) */
    bool open;
};

struct auth_fwd_pool {
    pthread_mutex_t mu;
    /* The leader's API address as last looked up: good while the leader and the
     * auth_server records (state_resources_changed) stay the same. */
    uint64_t leader_id, leader_changed;
    char leader_addr[64];
    struct auth_fwd_conn conn[AUTH_FWD_POOL];
};

int auth_fwd_pool_new(struct auth_fwd_pool **out)
{
    struct auth_fwd_pool *p = calloc(1, sizeof *p);
    if (p == NULL)
        return rp_err(RP_ENOMEM, "forwarding pool");
    pthread_mutex_init(&p->mu, NULL);
    *out = p;
    return 0;
}

void auth_fwd_pool_reset(struct auth_fwd_pool *p)
{
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < AUTH_FWD_POOL; i++) {
        if (p->conn[i].open && !p->conn[i].in_use) {
            rp_conn_close(&p->conn[i].conn);
            p->conn[i].open = false;
        }
    }
    pthread_mutex_unlock(&p->mu);
}

void auth_fwd_pool_free(struct auth_fwd_pool *p)
{
    if (p == NULL)
        return;
    for (int i = 0; i < AUTH_FWD_POOL; i++)
        if (p->conn[i].open)
            rp_conn_close(&p->conn[i].conn);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* Takes an idle pooled connection to @addr, or reserves a slot for a new one.
 * Returns the slot, -1 if the pool is exhausted. *fresh says whether to dial. */
static int pool_take(struct auth_fwd_pool *p, const char *addr, bool *fresh)
{
    int slot = -1;
    pthread_mutex_lock(&p->mu);
    for (int i = 0; i < AUTH_FWD_POOL; i++) {
        struct auth_fwd_conn *f = &p->conn[i];
        if (f->in_use)
            continue;
        if (f->open && strcmp(f->addr, addr) == 0) {
            slot = i;
            *fresh = false;
            break;
        }
        if (slot < 0 || (p->conn[slot].open && !f->open))
            slot = i;
    }
    if (slot >= 0) {
        struct auth_fwd_conn *f = &p->conn[slot];
        f->in_use = true;
        if (f->open && strcmp(f->addr, addr) != 0) {
            rp_conn_close(&f->conn); /* an old leader's connection */
            f->open = false;
        }
        *fresh = !f->open;
        snprintf(f->addr, sizeof f->addr, "%s", addr);
    }
    pthread_mutex_unlock(&p->mu);
    return slot;
}

static void pool_give(struct auth_fwd_pool *p, int slot, bool keep)
{
    pthread_mutex_lock(&p->mu);
    struct auth_fwd_conn *f = &p->conn[slot];
    if (!keep && f->open) {
        rp_conn_close(&f->conn);
        f->open = false;
    }
    f->in_use = false;
    pthread_mutex_unlock(&p->mu);
}

int auth_forward_req(struct auth_req *r, struct rp_buf *out)
{
    const msgpack_object *args = r->args;
    const struct rp_identity *id = r->caller;
    struct rp_buf req;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    /* The original map minus any "_as" (a follower never passes one on), plus ours. */
    uint32_t n = 0;
    for (uint32_t i = 0; i < args->via.map.size; i++)
        n += !rp_mp_str_eq(&args->via.map.ptr[i].key, "_as");
    msgpack_pack_map(&pk, n + 1);
    for (uint32_t i = 0; i < args->via.map.size; i++) {
        const msgpack_object_kv *kv = &args->via.map.ptr[i];
        if (rp_mp_str_eq(&kv->key, "_as"))
            continue;
        msgpack_pack_object(&pk, kv->key);
        msgpack_pack_object(&pk, kv->val);
    }
    struct rp_mp_map as;
    rp_mp_pack_str(&pk, "_as");
    rp_mp_map_begin(&pk, &as);
    rp_mp_map_str(&as, "addr", r->remote);
    if (id) {
        rp_mp_map_str(&as, "name", id->name);
        msgpack_pack_array(rp_mp_map_key(&as, "groups"), (uint32_t)id->n_groups);
        for (size_t i = 0; i < id->n_groups; i++)
            rp_mp_pack_str(&pk, id->groups[i]);
        msgpack_pack_array(rp_mp_map_key(&as, "logins"), (uint32_t)id->n_logins);
        for (size_t i = 0; i < id->n_logins; i++)
            rp_mp_pack_str(&pk, id->logins[i]);
        rp_mp_map_str(&as, "cluster", id->cluster);
        rp_mp_map_str(&as, "route_cluster", id->route_cluster);
        if (id->system_role != RP_SYS_NONE) {
            rp_mp_map_str(&as, "sys", rp_system_role_name(id->system_role));
            rp_mp_map_str(&as, "host_id", id->host_id);
            /* What only the caller's certificate says, which the leader cannot see:
             * renew_host re-issues a host's certificates under this name. */
            char nodename[256];
            if ((id->system_role == RP_SYS_NODE || id->system_role == RP_SYS_PROXY) &&
                r->conn != NULL && auth_conn_nodename(r->conn, id, nodename, sizeof nodename) == 0)
                rp_mp_map_str(&as, "nodename", nodename);
        }
    }
    rp_mp_map_end(&as);
    int rv = auth_forward(r->srv, req.data, req.len, out);
    rp_buf_free(&req);
    return rv;
}

/* The API address of leader @id, looked up in the auth_server records once per leader
 * and per change of the records, not once per forwarded request. */
static int leader_addr(struct auth_server *s, uint64_t id, char *addr, size_t n)
{
    struct auth_fwd_pool *p = s->fwd;
    uint64_t changed = state_resources_changed(s->state);
    pthread_mutex_lock(&p->mu);
    bool hit = p->leader_id == id && p->leader_changed == changed;
    if (hit)
        snprintf(addr, n, "%s", p->leader_addr);
    pthread_mutex_unlock(&p->mu);
    if (hit)
        return 0;
    int rv = auth_api_addr_of(s, id, addr, n);
    if (rv != 0)
        return rv;
    pthread_mutex_lock(&p->mu);
    p->leader_id = id;
    p->leader_changed = changed;
    snprintf(p->leader_addr, sizeof p->leader_addr, "%s", addr);
    pthread_mutex_unlock(&p->mu);
    return 0;
}

int auth_forward(struct auth_server *s, const void *raw, size_t len, struct rp_buf *out)
{
    char addr[64];
    uint64_t lid = rp_node_leader_id(s->node);
    if (lid == 0 || lid == s->cfg->raft_id)
        return rp_err(RP_EUNAVAILABLE, "no auth server leads right now (election in progress)");
    int rv = leader_addr(s, lid, addr, sizeof addr);
    if (rv != 0)
        return rp_err(RP_EUNAVAILABLE, "leader %llu: %s", (unsigned long long)lid, rp_errmsg());

    for (int attempt = 0; attempt < 2; attempt++) {
        bool fresh;
        int slot = pool_take(s->fwd, addr, &fresh);
        if (slot < 0)
            return rp_err(RP_EBUSY, "too many requests being forwarded to the leader");
        struct auth_fwd_conn *f = &s->fwd->conn[slot];
        if (fresh) {
            rv = rp_conn_dial(&f->conn, s->peer_ctx, addr, 3000);
            if (rv != 0) {
                pool_give(s->fwd, slot, false);
                return rp_err(RP_EUNAVAILABLE, "forwarding to leader %s: %s", addr, rp_errmsg());
            }
            f->open = true;
            rp_conn_set_timeout(&f->conn, FORWARD_TIMEOUT_MS);
        }
        rv = rp_conn_write_frame(&f->conn, raw, len);
        if (rv != 0) {
            pool_give(s->fwd, slot, false);
            if (!fresh)
                continue; /* the pooled connection had gone stale: nothing was sent */
            return rp_err(RP_EUNAVAILABLE, "forwarding to leader %s: %s", addr, rp_errmsg());
        }
        rv = rp_conn_read_frame(&f->conn, out);
        if (rv != 0) {
            pool_give(s->fwd, slot, false);
            if (!fresh && rv == RP_ECLOSED)
                continue; /* closed before answering: the leader closed an idle connection */
            return rp_err(RP_EUNKNOWN,
                          "leader %s did not answer (%s): a write may or may not have been "
                          "applied; retry with the same request id",
                          addr, rp_errmsg());
        }
        pool_give(s->fwd, slot, true);
        return 0;
    }
    return rp_err(RP_EUNAVAILABLE, "forwarding to leader %s failed twice", addr);
}
