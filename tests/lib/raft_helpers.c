/* tests/lib/raft_helpers.c: see raft_helpers.h. */
#include "tests/lib/raft_helpers.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <ftw.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "lib/tls.h"

/* ---- PKI ------------------------------------------------------------------ */

void rt_pki_new(struct rt_pki *p, const char *cluster)
{
    cr_assert_eq(rp_tls_ca_create(cluster, &p->ca_key, &p->ca), 0, "%s", rp_errmsg());
}

void rt_pki_free(struct rt_pki *p)
{
    EVP_PKEY_free(p->ca_key);
    X509_free(p->ca);
    p->ca_key = NULL;
    p->ca = NULL;
}

void rt_pki_issue(struct rt_pki *p, const char *name, const char *role, EVP_PKEY **key, X509 **cert)
{
    char *groups[] = {(char *)role};
    struct rp_identity id = {.name = (char *)name,
                             .groups = groups,
                             .n_groups = 1,
                             .cluster = "raft-test",
                             .system_role = rp_system_role_from_name(role)};
    if (id.system_role != RP_SYS_NONE)
        id.host_id = (char *)name;
    const char *sans[] = {"localhost", "127.0.0.1"};
    *key = rp_tls_keygen();
    cr_assert_not_null(*key, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_issue(p->ca_key, p->ca, *key, &id, sans, 2, 3600, cert), 0, "%s",
                 rp_errmsg());
}

void rt_pki_contexts(struct rt_pki *p, const char *name, const char *role, SSL_CTX **server,
                     SSL_CTX **client)
{
    EVP_PKEY *key;
    X509 *cert;
    rt_pki_issue(p, name, role, &key, &cert);
    *server = rp_tls_server_ctx(p->ca, cert, key, 1);
    cr_assert_not_null(*server, "%s", rp_errmsg());
    *client = rp_tls_client_ctx(p->ca, cert, key);
    cr_assert_not_null(*client, "%s", rp_errmsg());
    EVP_PKEY_free(key);
    X509_free(cert);
}

/* ---- environment ------------------------------------------------------------ */

int rt_free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof sa;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    cr_assert_geq(fd, 0);
    cr_assert_eq(bind(fd, (struct sockaddr *)&sa, sizeof sa), 0, "bind: %s", strerror(errno));
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
    close(fd);
    return ntohs(sa.sin_port);
}

char *rt_tmpdir(const char *tag)
{
    char tmpl[256];
    snprintf(tmpl, sizeof tmpl, "/tmp/rp-%s-XXXXXX", tag);
    char *d = mkdtemp(tmpl);
    cr_assert_not_null(d, "mkdtemp: %s", strerror(errno));
    return strdup(d);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

void rt_rmtree(const char *path)
{
    if (path != NULL)
        nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

uint64_t rt_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

bool rt_wait(bool (*cond)(void *arg), void *arg, int timeout_ms)
{
    uint64_t deadline = rt_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (cond(arg))
            return true;
        if (rt_now_ms() >= deadline)
            return false;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000000L};
        nanosleep(&ts, NULL);
    }
}

/* ---- counting FSM ------------------------------------------------------------ */

static int fsm_apply(struct raft_fsm *fsm, const struct raft_buffer *buf, void **result)
{
    struct rt_fsm *f = fsm->data;
    uint64_t v = 0;
    if (buf->len == 8)
        for (int i = 7; i >= 0; i--)
            v = (v << 8) | ((const uint8_t *)buf->base)[i];
    pthread_mutex_lock(&f->mu);
    f->count++;
    f->sum += v;
    f->result = f->count;
    pthread_mutex_unlock(&f->mu);
    *result = &f->result;
    return 0;
}

static void put_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_u64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint8_t pad_byte(size_t i)
{
    return (uint8_t)((i * 31 + 7) & 0xff);
}

static int fsm_snapshot(struct raft_fsm *fsm, struct raft_buffer *bufs[], unsigned *n_bufs)
{
    struct rt_fsm *f = fsm->data;
    struct raft_buffer *b = raft_malloc(sizeof *b);
    if (b == NULL)
        return RAFT_NOMEM;
    b->len = 16 + f->pad;
    b->base = raft_malloc(b->len);
    if (b->base == NULL) {
        raft_free(b);
        return RAFT_NOMEM;
    }
    uint8_t *p = b->base;
    for (size_t i = 0; i < f->pad; i++)
        p[16 + i] = pad_byte(i);
    pthread_mutex_lock(&f->mu);
    put_u64(p, f->count);
    put_u64(p + 8, f->sum);
    f->snapshots++;
    pthread_mutex_unlock(&f->mu);
    *bufs = b;
    *n_bufs = 1;
    return 0;
}

static int fsm_restore(struct raft_fsm *fsm, struct raft_buffer *buf)
{
    struct rt_fsm *f = fsm->data;
    const uint8_t *p = buf->base;
    if (buf->len != 16 + f->pad)
        return RAFT_MALFORMED;
    for (size_t i = 0; i < f->pad; i++) {
        if (p[16 + i] != pad_byte(i))
            return RAFT_MALFORMED;
    }
    pthread_mutex_lock(&f->mu);
    f->count = get_u64(p);
    f->sum = get_u64(p + 8);
    f->restores++;
    f->last_restored_count = f->count;
    pthread_mutex_unlock(&f->mu);
    raft_free(buf->base); /* ours on success */
    return 0;
}

void rt_fsm_init(struct rt_fsm *f)
{
    memset(f, 0, sizeof *f);
    pthread_mutex_init(&f->mu, NULL);
    f->fsm.version = 1;
    f->fsm.data = f;
    f->fsm.apply = fsm_apply;
    f->fsm.snapshot = fsm_snapshot;
    f->fsm.restore = fsm_restore;
}

void rt_fsm_reset(struct rt_fsm *f)
{
    pthread_mutex_lock(&f->mu);
    f->count = f->sum = f->result = 0;
    f->snapshots = f->restores = f->last_restored_count = 0;
    pthread_mutex_unlock(&f->mu);
}

void rt_fsm_close(struct rt_fsm *f)
{
    pthread_mutex_destroy(&f->mu);
}

void rt_fsm_read(struct rt_fsm *f, uint64_t *count, uint64_t *sum)
{
    pthread_mutex_lock(&f->mu);
    if (count != NULL)
        *count = f->count;
    if (sum != NULL)
        *sum = f->sum;
    pthread_mutex_unlock(&f->mu);
}

struct raft_fsm *rt_make_fsm(void *arg, struct raft *r)
{
    (void)r;
    return &((struct rt_fsm *)arg)->fsm;
}

void rt_copy_u64(void *arg, void *fsm_result)
{
    *(uint64_t *)arg = *(uint64_t *)fsm_result;
}

int rt_apply_u64(struct rp_node *n, uint64_t v, int timeout_ms, uint64_t *result)
{
    uint8_t b[8];
    uint64_t dummy;
    put_u64(b, v);
    return rp_node_apply(n, b, sizeof b, timeout_ms, rt_copy_u64, result ? result : &dummy);
}

/* ---- clusters ----------------------------------------------------------------- */

int rt_check_cn_is_node_id(void *arg, const struct rp_identity *peer, uint64_t raft_id,
                           const char *address, bool inbound)
{
    char want[32];
    (void)arg;
    snprintf(want, sizeof want, "node-%llu", (unsigned long long)raft_id);
    if (peer->name == NULL || strcmp(peer->name, want) != 0)
        return rp_err(RP_EDENIED, "certificate CN=%s may not act as raft id %llu (%s, %s)",
                      peer->name ? peer->name : "?", (unsigned long long)raft_id, address,
                      inbound ? "inbound" : "outbound");
    return 0;
}

void rt_cluster_init(struct rt_cluster *c, unsigned n, const char *cluster_name)
{
    const char *lvl = getenv("RP_LOG");
    rp_log_set_level(lvl && rp_log_level_parse(lvl) >= 0
                         ? (enum rp_log_level)rp_log_level_parse(lvl)
                         : RP_LOG_WARN);
    memset(c, 0, sizeof *c);
    cr_assert_leq(n, RT_MAX_NODES);
    c->n = n;
    c->election_ms = 600;
    c->heartbeat_ms = 60;
    c->threshold = 64;
    c->trailing = 128;
    rt_pki_new(&c->pki, cluster_name);
    c->root = rt_tmpdir("raft");
    for (unsigned i = 0; i < n; i++) {
        struct rt_node *nd = &c->nodes[i];
        char name[32];
        nd->id = i + 1;
        snprintf(nd->addr, sizeof nd->addr, "127.0.0.1:%d", rt_free_port());
        snprintf(nd->dir, sizeof nd->dir, "%s/node%u", c->root, i + 1);
        cr_assert_eq(mkdir(nd->dir, 0700), 0, "mkdir %s: %s", nd->dir, strerror(errno));
        snprintf(name, sizeof name, "node-%u", i + 1);
        rt_pki_contexts(&c->pki, name, RP_ROLE_AUTH, &nd->server_ctx, &nd->client_ctx);
        rt_fsm_init(&nd->fsm);
    }
}

int rt_node_start(struct rt_cluster *c, unsigned i, bool bootstrap)
{
    struct rt_node *nd = &c->nodes[i];
    cr_assert_null(nd->node, "node %u already running", i + 1);
    rt_fsm_reset(&nd->fsm);
    struct rp_node_config cfg = {
        .id = nd->id,
        .address = nd->addr,
        .dir = nd->dir,
        .election_timeout_ms = c->election_ms,
        .heartbeat_timeout_ms = c->heartbeat_ms,
        .snapshot_threshold = c->threshold,
        .snapshot_trailing = c->trailing,
        .server_ctx = nd->server_ctx,
        .client_ctx = nd->client_ctx,
        .bootstrap = bootstrap,
        .make_fsm = rt_make_fsm,
        .make_fsm_arg = &nd->fsm,
        .peer_check = c->peer_check,
        .peer_check_arg = c->peer_check_arg,
    };
    return rp_node_start(&nd->node, &cfg);
}

void rt_node_stop(struct rt_cluster *c, unsigned i)
{
    if (c->nodes[i].node != NULL) {
        rp_node_stop(c->nodes[i].node);
        c->nodes[i].node = NULL;
    }
}

void rt_cluster_destroy(struct rt_cluster *c)
{
    /* Followers first: a leader stopped last has nobody to hand over to and
     * closes at once. */
    for (unsigned i = 0; i < c->n; i++) {
        if (c->nodes[i].node != NULL && !rp_node_is_leader(c->nodes[i].node))
            rt_node_stop(c, i);
    }
    for (unsigned i = 0; i < c->n; i++)
        rt_node_stop(c, i);
    for (unsigned i = 0; i < c->n; i++) {
        SSL_CTX_free(c->nodes[i].server_ctx);
        SSL_CTX_free(c->nodes[i].client_ctx);
        rt_fsm_close(&c->nodes[i].fsm);
    }
    rt_pki_free(&c->pki);
    rt_rmtree(c->root);
    free(c->root);
    c->root = NULL;
}

int rt_wait_leader(struct rt_cluster *c, int timeout_ms)
{
    uint64_t deadline = rt_now_ms() + (uint64_t)timeout_ms;
    do {
        for (unsigned i = 0; i < c->n; i++) {
            struct rp_node_status st;
            if (c->nodes[i].node == NULL)
                continue;
            if (rp_node_status(c->nodes[i].node, &st) == 0 && st.state == RAFT_LEADER && st.ready)
                return (int)i;
        }
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 10 * 1000000L};
        nanosleep(&ts, NULL);
    } while (rt_now_ms() < deadline);
    return -1;
}

static bool is_voter(struct rp_node *leader, uint64_t id)
{
    struct rp_node_status st;
    if (rp_node_status(leader, &st) != 0)
        return false;
    for (unsigned i = 0; i < st.n_members; i++) {
        if (st.members[i].id == id)
            return st.members[i].role == RP_MEMBER_VOTER;
    }
    return false;
}

int rt_add_voter(struct rt_cluster *c, unsigned leader, unsigned i, int timeout_ms)
{
    uint64_t deadline = rt_now_ms() + (uint64_t)timeout_ms;
    struct rp_node *l = c->nodes[leader].node;
    int rv;
    for (;;) {
        rv = rp_node_add(l, c->nodes[i].id, c->nodes[i].addr, 5000);
        if (rv == 0 || rv == RP_EEXISTS)
            break;
        if (rv != RP_EBUSY || rt_now_ms() >= deadline)
            return rv;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 50 * 1000000L};
        nanosleep(&ts, NULL);
    }
    while (!is_voter(l, c->nodes[i].id)) {
        if (rt_now_ms() >= deadline)
            return RP_ETIMEDOUT;
        struct timespec ts = {.tv_sec = 0, .tv_nsec = 20 * 1000000L};
        nanosleep(&ts, NULL);
    }
    return 0;
}

struct count_arg {
    struct rt_cluster *c;
    uint64_t count;
};

static bool all_counts(void *arg)
{
    struct count_arg *a = arg;
    for (unsigned i = 0; i < a->c->n; i++) {
        uint64_t n;
        if (a->c->nodes[i].node == NULL)
            continue;
        rt_fsm_read(&a->c->nodes[i].fsm, &n, NULL);
        if (n != a->count)
            return false;
    }
    return true;
}

bool rt_wait_count(struct rt_cluster *c, uint64_t count, int timeout_ms)
{
    struct count_arg a = {c, count};
    return rt_wait(all_counts, &a, timeout_ms);
}
