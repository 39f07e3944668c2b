/* auth/server.c: the auth API server: start-up and shutdown, leader duties, the
 * Raft peer check. Connections are handled by auth/listener.c, requests by
 * auth/dispatch.c. */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "auth/audit.h"
#include "auth/ca_cache.h"
#include "auth/internal.h"
#include "auth/locks.h"
#include "auth/login_guard.h"
#include "auth/role_cache.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

int auth_arg_str(const msgpack_object *args, const char *key, char *out, size_t outlen,
                 bool required)
{
    const char *s;
    size_t n;
    int rv = rp_mp_get_str(args, key, &s, &n);
    if (rv == RP_ENOTFOUND) {
        out[0] = '\0';
        return required ? rp_err(RP_EINVAL, "argument '%s' is required", key) : 0;
    }
    if (rv != 0)
        return rv;
    if (n >= outlen)
        return rp_err(RP_EINVAL, "argument '%s' is %zu bytes, at most %zu allowed", key, n,
                      outlen - 1);
    if (memchr(s, '\0', n) != NULL)
        return rp_err(RP_EINVAL, "argument '%s' contains a NUL byte", key);
    memcpy(out, s, n);
    out[n] = '\0';
    return 0;
}

/* Leader duties that need no client: writing the bootstrap records, proposing
 * expiry, watching free disk space. */
static void *duty_main(void *arg)
{
    struct auth_server *s = arg;
    uint64_t last_expire = 0, last_trim = 0;
    bool ssh_cas_ok = false;
    uint64_t last_admin_renew = 0;
    while (!atomic_load(&s->stopping)) {
        struct timespec ts = {0, 200 * 1000000L};
        nanosleep(&ts, NULL);
        /* Every member renews its own admin identity; it needs the CA from the state,
         * so until the state has one this fails and is tried again. */
        uint64_t renew_every =
            s->cfg->admin_identity_ttl_ms / 8 < 30000 ? s->cfg->admin_identity_ttl_ms / 8 : 30000;
        if (s->id.ca_key_pending == NULL && rp_mono_ms() - last_admin_renew >= renew_every) {
            last_admin_renew = rp_mono_ms();
            if (auth_admin_identity_renew(s, false) != 0)
                rp_warn("auth", "%s (will retry)", rp_errmsg());
        }
        auth_login_guard_duty(s);
        if (!auth_is_leader(s)) {
            ssh_cas_ok = false;
            continue;
        }
        if (s->id.ca_key_pending != NULL) {
            if (auth_bootstrap_write(s) != 0)
                rp_warn("auth", "writing bootstrap records: %s (will retry)", rp_errmsg());
        } else if (!ssh_cas_ok) {
            /* Once per leadership: create the SSH CAs if they are missing. */
            ssh_cas_ok = auth_ssh_cas_ensure(s) == 0;
            if (!ssh_cas_ok)
                rp_warn("auth", "creating the SSH CAs: %s (will retry)", rp_errmsg());
        }
        uint64_t now = rp_mono_ms();
        if (now - last_expire >= 1000) {
            last_expire = now;
            if (auth_expire_due(s) != 0)
                rp_warn("auth", "expiry: %s", rp_errmsg());
        }
        if (now - last_trim >= 60000) {
            last_trim = now;
            if (audit_trim_due(s) != 0)
                rp_warn("audit", "trimming old events: %s", rp_errmsg());
            if (auth_rec_trim_due(s) != 0)
                rp_warn("auth", "trimming recordings: %s", rp_errmsg());
        }
    }
    return NULL;
}

struct raft_id_owner {
    uint64_t raft_id;
    char host_id[64];
    bool found;
};

static int raft_id_owner_cb(void *arg, const void *res, size_t len)
{
    struct raft_id_owner *o = arg;
    struct state_res_meta meta;
    msgpack_unpacked u;
    if (state_resource_check(res, len, &meta) != 0 || rp_mp_parse(res, len, &u) != 0)
        return 0;
    uint64_t id = 0;
    if (rp_mp_get_u64(rp_mp_get(&u.data, "spec"), "raft_id", &id) == 0 && id == o->raft_id &&
        meta.name_len < sizeof o->host_id) {
        memcpy(o->host_id, meta.name, meta.name_len);
        o->host_id[meta.name_len] = '\0';
        o->found = true;
    }
    msgpack_unpacked_destroy(&u);
    return o->found ? 1 : 0;
}

/* Raft peers must carry the Auth role (checked by the transport) and, when the
 * state knows which host holds @raft_id, be that host: a stolen or re-issued Auth
 * certificate cannot speak for another member. A raft id with no record yet (a
 * server joining, before it has caught up) is let through on the role alone. */
static int peer_check(void *arg, const struct rp_identity *peer, uint64_t raft_id,
                      const char *address, bool inbound)
{
    struct auth_server *s = arg;
    char why[512];
    /* A removed member's host id is locked: its Raft connections are refused too. */
    if (auth_locks_check(s->locks, peer, why, sizeof why) != 0)
        return rp_err(RP_EDENIED, "raft peer %s at %s refused: %s", peer->name, address, why);
    struct raft_id_owner o = {.raft_id = raft_id, .found = false};
    state_list(s->state, AUTH_KIND_AUTH_SERVER, NULL, 0, raft_id_owner_cb, &o, NULL);
    if (o.found && strcmp(o.host_id, peer->name) != 0)
        return rp_err(RP_EDENIED, "raft id %llu belongs to host %s, but the peer at %s is %s",
                      (unsigned long long)raft_id, o.host_id, address, peer->name);
    return 0;
}

static struct raft_fsm *make_fsm(void *arg, struct raft *r)
{
    struct auth_server *s = arg;
    s->fsm = calloc(1, sizeof *s->fsm);
    if (s->fsm)
        state_fsm_init(s->fsm, s->state, r);
    return s->fsm;
}

/* Group commit (struct rp_node_grouping): the state machine's "group" command. */
static int group_encode(void *arg, const struct raft_buffer *cmds, unsigned n,
                        struct raft_buffer *entry)
{
    (void)arg;
    return state_group_encode(cmds, n, entry);
}

static void *group_member_result(void *arg, void *fsm_result, unsigned i)
{
    struct auth_server *s = arg;
    return (void *)state_group_result(s->state, fsm_result, i);
}

static int make_contexts(struct auth_server *s)
{
    s->api_ctx = rp_tls_server_ctx(s->id.ca_cert, s->id.host_cert, s->id.host_key, 0);
    s->raft_srv_ctx = rp_tls_server_ctx(s->id.ca_cert, s->id.host_cert, s->id.host_key, 1);
    s->peer_ctx = rp_tls_client_ctx(s->id.ca_cert, s->id.host_cert, s->id.host_key);
    if (!s->api_ctx || !s->raft_srv_ctx || !s->peer_ctx)
        return rp_err(RP_ETLS, "building TLS contexts: %s", rp_errmsg());
    return 0;
}

int auth_server_start(struct auth_server **out, const struct rp_config *cfg)
{
    struct auth_server *s = calloc(1, sizeof *s);
    char path[1200];
    int rv;
    if (s == NULL)
        return rp_err(RP_ENOMEM, "auth server");
    s->cfg = cfg;
    snprintf(s->data_dir, sizeof s->data_dir, "%s", cfg->data_dir);
    if ((rv = auth_ca_cache_new(&s->ca)) != 0 || (rv = auth_role_cache_new(&s->roles)) != 0 ||
        (rv = auth_issue_cache_new(&s->issued)) != 0 || (rv = auth_fwd_pool_new(&s->fwd)) != 0)
        goto err;

    rv = rp_mkdir_p(s->data_dir, 0700);
    if (rv != 0)
        goto err;
    /* Take the ports before anything else, above all before joining: a server that
     * joined and then found its port taken would leave an unreachable member behind. */
    rv = auth_listener_open(&s->api, cfg->auth_listen_addr, NULL);
    if (rv != 0) {
        rv = rp_err(rv, "auth_service.listen_addr: %s", rp_errmsg());
        goto err;
    }
    int probe = rp_listen_tcp(cfg->raft_listen_addr, 1);
    if (probe < 0) {
        rv = rp_err(probe, "auth_service.raft.listen_addr: %s", rp_errmsg());
        goto err;
    }
    close(probe); /* the Raft transport binds it again when Raft starts */
    snprintf(path, sizeof path, "%s/%s/host.crt", s->data_dir, AUTH_KEYS_DIR);
    if (rp_file_exists(path)) {
        rv = auth_identity_load(&s->id, s->data_dir);
    } else if (cfg->join_token != NULL) {
        rv = auth_identity_join(&s->id, cfg, s->data_dir);
    } else {
        rv = auth_identity_bootstrap(&s->id, cfg, s->data_dir);
    }
    if (rv != 0)
        goto err;
    rp_info("auth", "cluster %s, host id %s, raft id %llu, CA pin %s", s->id.cluster_name,
            s->id.host_id, (unsigned long long)cfg->raft_id, s->id.ca_pin);
    rv = make_contexts(s);
    if (rv != 0)
        goto err;

    snprintf(path, sizeof path, "%s/%s", s->data_dir, AUTH_STATE_DIR);
    if ((rv = rp_mkdir_p(path, 0700)) != 0)
        goto err;
    /* The recordings map's ceiling: twice the budget (LMDB keeps freed pages until
     * no reader needs them, and copies on write) plus room for the index. */
    struct state_opts so = {.map_size = cfg->max_map_size,
                            .rec_map_max = cfg->rec_max_map_size
                                               ? cfg->rec_max_map_size
                                               : 2 * cfg->rec_max_size + ((uint64_t)256 << 20)};
    rv = state_open(&s->state, path, &so);
    if (rv != 0)
        goto err;
    if ((rv = auth_locks_new(&s->locks, s->state)) != 0 ||
        (rv = auth_presence_new(&s->presence)) != 0)
        goto err;
    snprintf(path, sizeof path, "%s/%s", s->data_dir, AUTH_RAFT_DIR);
    if ((rv = rp_mkdir_p(path, 0700)) != 0)
        goto err;

    /* 256 KiB of commands per group: a group is written, sent and applied as one,
     * so a cap keeps one entry from holding up the next for long; a single write
     * above it goes alone (after the small ones that arrived with it). */
    static const struct rp_node_grouping grouping_tmpl = {
        .encode = group_encode,
        .member_result = group_member_result,
        .max_members = 512,
        .max_bytes = 256u << 10,
    };
    struct rp_node_grouping grouping = grouping_tmpl;
    grouping.arg = s;
    struct rp_node_config nc = {
        .id = cfg->raft_id,
        .address = cfg->raft_listen_addr,
        .dir = path,
        .election_timeout_ms = cfg->election_timeout_ms,
        .heartbeat_timeout_ms = cfg->heartbeat_timeout_ms,
        .snapshot_threshold = cfg->snapshot_threshold,
        .snapshot_trailing = cfg->snapshot_trailing,
        .server_ctx = s->raft_srv_ctx,
        .client_ctx = s->peer_ctx,
        .bootstrap = s->id.bootstrapped_here,
        .make_fsm = make_fsm,
        .make_fsm_arg = s,
        .peer_check = peer_check,
        .peer_check_arg = s,
        .grouping = &grouping,
    };
    rv = rp_node_start(&s->node, &nc);
    if (rv != 0)
        goto err;
    if ((rv = audit_start(s, cfg->audit_retention_ms)) != 0)
        goto err_node;
    if ((rv = auth_login_guard_start(s)) != 0)
        goto err_node;

    if ((rv = auth_listener_start(s->api, s, s->api_ctx)) != 0)
        goto err_api;
    if (pthread_create(&s->duty_thread, NULL, duty_main, s) != 0) {
        rv = rp_err(RP_ENOMEM, "cannot start the duty thread");
        goto err_api;
    }
    rp_info("auth", "auth API listening on %s, raft peers on %s", cfg->auth_listen_addr,
            cfg->raft_listen_addr);
    *out = s;
    return 0;

err_api:
    atomic_store(&s->stopping, true);
    if (auth_listener_stop(s->api, 5000) != 0) {
        /* A request thread is stuck in the server: leave it all to the exiting process. */
        return rv;
    }
err_node:
    auth_login_guard_free(s);
    audit_stop(s);
    audit_free(s);
    rp_node_stop(s->node);
err : {
    char msg[512];
    snprintf(msg, sizeof msg, "%s", rp_errmsg());
    auth_listener_free(s->api);
    auth_locks_free(s->locks);
    auth_presence_free(s->presence);
    if (s->state)
        state_close(s->state);
    free(s->fsm);
    SSL_CTX_free(s->api_ctx);
    SSL_CTX_free(s->raft_srv_ctx);
    SSL_CTX_free(s->peer_ctx);
    auth_identity_free(&s->id);
    auth_fwd_pool_free(s->fwd);
    auth_issue_cache_free(s->issued);
    auth_role_cache_free(s->roles);
    auth_ca_cache_free(s->ca);
    free(s);
    rp_err(rv, "%s", msg);
}
    return rv;
}

void auth_server_stop(struct auth_server *s)
{
    atomic_store(&s->stopping, true);
    pthread_join(s->duty_thread, NULL);
    /* Closes every connection and waits for requests in progress (watch streams
     * see s->stopping and end). */
    int busy = auth_listener_stop(s->api, 5000);
    audit_stop(s); /* flushes what is queued while Raft still runs */
    rp_node_stop(s->node);
    auth_fwd_pool_reset(s->fwd);
    if (busy == 0) {
        auth_listener_free(s->api);
        auth_login_guard_free(s);
        audit_free(s);
        auth_locks_free(s->locks);
        auth_presence_free(s->presence);
        state_close(s->state);
        free(s->fsm);
        SSL_CTX_free(s->api_ctx);
        SSL_CTX_free(s->raft_srv_ctx);
        SSL_CTX_free(s->peer_ctx);
        auth_fwd_pool_free(s->fwd);
        auth_issue_cache_free(s->issued);
        auth_role_cache_free(s->roles);
        auth_ca_cache_free(s->ca);
        auth_identity_free(&s->id);
        free(s);
    } else {
        /* A request thread is stuck; leave the memory to the exiting process. */
        rp_warn("auth", "%d request threads did not finish in time", busy);
    }
}
