/* tests/test_int_group_commit.c: group commit on a real cluster: concurrent
 * clients' writes share Raft entries, each still gets its own answer, and a large
 * write goes through beside small ones. */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/client.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "tests/lib/cluster.h"

TestSuite(int_group_commit, .init = cluster_setup, .fini = cluster_teardown, .timeout = 180);

#define WRITERS 32
#define WRITES_EACH 40

struct writer {
    struct auth_client *c; /* made and freed by the test's own thread */
    int id;
    size_t value_len;
    int n_writes;
    int failures;
    uint64_t last_rev;
    char err[200];
};

/* A put request of {kind: bench, metadata.name: @name, spec.value: @value_len bytes}. */
static void put_request(struct rp_buf *req, const char *name, size_t value_len, char fill)
{
    char *value = malloc(value_len);
    cr_assert_not_null(value);
    memset(value, fill, value_len);
    msgpack_packer pk;
    rp_buf_init(req);
    rp_mp_packer_init(&pk, req);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "put");
    rp_mp_pack_str(&pk, "res");
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "kind", "bench");
    rp_mp_kv_str(&pk, "version", "v1");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "name", name);
    rp_mp_pack_str(&pk, "spec");
    msgpack_pack_map(&pk, 1);
    rp_mp_pack_str(&pk, "value");
    rp_mp_pack_strn(&pk, value, value_len);
    free(value);
}

/* Not a Criterion thread: records failures for the test to assert on (the
 * request is built here with plain calls; put_request's assert cannot fail short
 * of running out of memory). */
static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct auth_client *c = w->c;
    for (int i = 0; i < w->n_writes; i++) {
        char name[64];
        struct rp_buf req;
        msgpack_unpacked resp;
        snprintf(name, sizeof name, "w%d-%d", w->id, i);
        put_request(&req, name, w->value_len, (char)('a' + i % 26));
        int rv = auth_client_call(c, req.data, req.len, &resp);
        const msgpack_object *ok = rv == 0 ? rp_mp_get(&resp.data, "ok") : NULL;
        uint64_t rev = 0;
        if (rv != 0 || ok == NULL || ok->type != MSGPACK_OBJECT_BOOLEAN || !ok->via.boolean ||
            rp_mp_get_u64(&resp.data, "rev", &rev) != 0 || rev <= w->last_rev) {
            if (w->failures++ == 0)
                snprintf(w->err, sizeof w->err, "%s: %s", name,
                         rv != 0 ? rp_errmsg() : "not ok, or no increasing rev");
        }
        w->last_rev = rev;
        msgpack_unpacked_destroy(&resp);
        rp_buf_free(&req);
    }
    return NULL;
}

static void member_status(int node, struct auth_member_status *ms)
{
    struct auth_client *c = node_client(node);
    cr_assert_eq(auth_client_member_status(c, ms), 0, "%s", rp_errmsg());
    auth_client_free(c);
}

Test(int_group_commit, concurrent_writes_share_entries_and_each_gets_its_answer)
{
    cluster_start(3);
    uint64_t leader = cluster_wait_ready(1, 3, 0, 30000);
    cr_assert_neq(leader, 0, "no leader");
    int ln = node_by_raft_id(leader);

    struct auth_member_status before, after;
    member_status(ln, &before);
    struct writer w[WRITERS];
    pthread_t t[WRITERS];
    for (int i = 0; i < WRITERS; i++) {
        w[i] = (struct writer){
            .c = node_client(ln), .id = i, .value_len = 256, .n_writes = WRITES_EACH};
        cr_assert_eq(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < WRITERS; i++) {
        pthread_join(t[i], NULL);
        auth_client_free(w[i].c);
    }
    member_status(ln, &after);
    for (int i = 0; i < WRITERS; i++)
        cr_assert_eq(w[i].failures, 0, "writer %d: %d failed writes, first: %s", i, w[i].failures,
                     w[i].err);

    /* Every write was answered with its own revision; far fewer entries were
     * appended than writes were made (the leader's own duties add a few). */
    unsigned writes = WRITERS * WRITES_EACH;
    uint64_t entries = after.last_index - before.last_index;
    cr_log_info("%u writes from %d clients in %llu entries", writes, WRITERS,
                (unsigned long long)entries);
    cr_assert_lt(entries, writes / 3, "%u concurrent writes took %llu entries: not grouped", writes,
                 (unsigned long long)entries);

    /* Every write is there, readable from a follower's copy once it has applied. */
    int follower = ln == 1 ? 2 : 1;
    struct auth_client *c = node_client(follower);
    for (int i = 0; i < WRITERS; i += 7) {
        char name[64];
        struct auth_reply r;
        const msgpack_object *res;
        snprintf(name, sizeof name, "w%d-%d", i, WRITES_EACH - 1);
        cr_assert_eq(auth_client_get(c, "bench", name, 0, &r, &res, NULL), 0, "%s: %s", name,
                     rp_errmsg());
        auth_reply_free(&r);
    }
    auth_client_free(c);
    cluster_pass();
}

Test(int_group_commit, small_writes_go_through_beside_large_ones)
{
    cluster_start(3);
    uint64_t leader = cluster_wait_ready(1, 3, 0, 30000);
    cr_assert_neq(leader, 0, "no leader");
    int ln = node_by_raft_id(leader);

    /* 4 writers of 1 MiB values beside 8 writers of small ones. */
    struct writer w[12];
    pthread_t t[12];
    for (int i = 0; i < 12; i++) {
        bool large = i < 4;
        w[i] = (struct writer){.c = node_client(ln),
                               .id = i,
                               .value_len = large ? (1u << 20) : 256,
                               .n_writes = large ? 5 : 40};
        cr_assert_eq(pthread_create(&t[i], NULL, writer_main, &w[i]), 0);
    }
    for (int i = 0; i < 12; i++) {
        pthread_join(t[i], NULL);
        auth_client_free(w[i].c);
    }
    for (int i = 0; i < 12; i++)
        cr_assert_eq(w[i].failures, 0, "writer %d (%zu-byte values): %d failed, first: %s", i,
                     w[i].value_len, w[i].failures, w[i].err);

    struct auth_client *c = node_client(ln);
    struct auth_reply r;
    const msgpack_object *res;
    cr_assert_eq(auth_client_get(c, "bench", "w0-4", 0, &r, &res, NULL), 0, "%s", rp_errmsg());
    const msgpack_object *spec = rp_mp_get(res, "spec");
    const msgpack_object *value = spec ? rp_mp_get(spec, "value") : NULL;
    cr_assert(value != NULL && value->type == MSGPACK_OBJECT_STR &&
                  value->via.str.size == (1u << 20),
              "the 1 MiB value reads back whole");
    auth_reply_free(&r);
    auth_client_free(c);
    cluster_pass();
}
