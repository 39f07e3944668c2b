/* tests/test_int_agent_follow.c: a node agent following a real 3-server cluster.
 *
 * A lock written with tctl reaches the node's cache (on disk) within seconds; the
 * stream fails over when the server it came from dies; with every auth server gone
 * a restarted agent starts from the cache on disk and keeps trying with growing,
 * jittered delays, and catches up when auth returns. */
#include <criterion/criterion.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/client.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "tests/lib/agent_proc.h"
#include "tests/lib/cluster.h"

TestSuite(agent_follow, .init = cluster_setup, .fini = cluster_teardown, .timeout = 180);

struct needle {
    const char *text;
};

/* True if the agent's cache file holds @arg's text (resources are stored as msgpack,
 * whose strings are plain bytes). */
static bool cache_holds(void *arg)
{
    const struct needle *n = arg;
    char path[600], *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof path, "%s/cache", AG[1].dir);
    if (rp_read_file(path, 64 << 20, &buf, &len) != 0)
        return false;
    bool found = memmem(buf, len, n->text, strlen(n->text)) != NULL;
    free(buf);
    return found;
}

static void start_agent(void)
{
    char token[128];
    cl_add_token(1, "node", NULL, token, sizeof token);
    ag_prepare(1, token, NULL);
    ag_spawn(1);
    bool ok = ag_wait_log(1, "cache in step with auth", 30000);
    if (!ok)
        ag_print_log_tail(1, 30);
    cr_assert(ok, "the agent never synced its cache");
}

Test(agent_follow, tctl_lock_reaches_the_node_cache_within_seconds)
{
    cluster_start(3);
    start_agent();
    uint64_t t0 = cl_now_ms();
    cr_assert_eq(run_tctl(1, NULL, "lock", "--user=mallory", "--message=compromised", NULL), 0);
    struct needle n = {"compromised"};
    cr_assert(wait_until(5000, cache_holds, &n), "the lock did not reach the node's cache in 5 s");
    cr_log_info("lock reached the node cache file in %llu ms",
                (unsigned long long)(cl_now_ms() - t0));
    /* The file is written before the change is logged: wait for the line too. */
    cr_assert(ag_wait_log(1, "cache: lock/", 5000));
    ag_stop_all();
    cluster_pass();
}

Test(agent_follow, stream_fails_over_when_its_auth_server_dies)
{
    cluster_start(3);
    start_agent();
    /* The agent streams from the first server it reaches (node 1, first in its list):
     * kill it; the others must take over. */
    node_kill9(1);
    bool ok = ag_wait_log(1, "no watch stream from auth", 20000);
    cr_assert(ok, "the agent did not notice the loss of its stream");
    uint64_t deadline = cl_now_ms() + 30000;
    while (ag_log_count(1, "cache in step with auth") < 2 && cl_now_ms() < deadline)
        cl_sleep_ms(100);
    if (ag_log_count(1, "cache in step with auth") < 2)
        ag_print_log_tail(1, 30);
    cr_assert_geq(ag_log_count(1, "cache in step with auth"), 2, "no new stream from the others");
    int via = node_any_running(0);
    cr_assert_eq(run_tctl(via, NULL, "lock", "--user=eve", "--message=after-failover", NULL), 0);
    struct needle n = {"after-failover"};
    cr_assert(wait_until(10000, cache_holds, &n), "a lock after failover did not arrive");
    ag_stop_all();
    cluster_pass();
}

Test(agent_follow, restarted_agent_serves_from_disk_and_backs_off_while_auth_is_gone)
{
    cluster_start(3);
    start_agent();
    cr_assert_eq(run_tctl(1, NULL, "lock", "--user=mallory", "--message=kept-on-disk", NULL), 0);
    struct needle n = {"kept-on-disk"};
    cr_assert(wait_until(5000, cache_holds, &n));

    for (int i = 1; i <= 3; i++)
        node_kill9(i);
    uint64_t t0 = cl_now_ms();
    int st = ag_term(1, 15000);
    cr_assert_neq(st, -1, "the agent did not stop on SIGTERM with auth gone");
    cr_log_info("SIGTERM with every auth server gone: stopped in %llu ms",
                (unsigned long long)(cl_now_ms() - t0));
    ag_spawn(1);
    cr_assert(ag_wait_log(1, "loaded the cache from disk", 15000));
    cr_assert(ag_wait_log(1, "node agent running", 15000), "a joined node must start without auth");
    /* Attempts 1, 2, 3, 4: each waits about twice as long as the one before. */
    bool ok = ag_wait_log(1, "(attempt 4); serving from the cache on disk", 60000);
    if (!ok)
        ag_print_log_tail(1, 30);
    cr_assert(ok, "the agent does not keep retrying");
    cr_assert(cache_holds(&n), "the lock is gone from the cache while auth is away");
    cr_assert(ag_alive(1));

    /* Auth returns: the agent catches up by itself. */
    int before = ag_log_count(1, "cache in step with auth");
    for (int i = 1; i <= 3; i++)
        node_restart(i);
    uint64_t deadline = cl_now_ms() + 90000;
    while (ag_log_count(1, "cache in step with auth") <= before && cl_now_ms() < deadline)
        cl_sleep_ms(200);
    cr_assert_gt(ag_log_count(1, "cache in step with auth"), before,
                 "the agent did not resync after auth returned");
    ag_stop_all();
    cluster_pass();
}

/* Packs @o (a map) with @key's value replaced by the result of @fn (or added). */
static void pack_with(msgpack_packer *pk, const msgpack_object *o, const char *key,
                      void (*fn)(msgpack_packer *pk, const msgpack_object *old))
{
    const msgpack_object *old = rp_mp_get(o, key);
    msgpack_pack_map(pk, o->via.map.size + (old ? 0 : 1));
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        msgpack_pack_object(pk, o->via.map.ptr[i].key);
        if (rp_mp_str_eq(&o->via.map.ptr[i].key, key))
            fn(pk, old);
        else
            msgpack_pack_object(pk, o->via.map.ptr[i].val);
    }
    if (!old) {
        rp_mp_pack_str(pk, key);
        fn(pk, NULL);
    }
}

static void new_trusted_keys(msgpack_packer *pk, const msgpack_object *old)
{
    (void)old;
    char *line = cl_ssh_pubkey();
    msgpack_pack_map(pk, 1);
    rp_mp_pack_str(pk, "ssh");
    msgpack_pack_array(pk, 1);
    msgpack_pack_map(pk, 1);
    rp_mp_kv_str(pk, "public_key", line);
    free(line);
}

static void spec_with_new_keys(msgpack_packer *pk, const msgpack_object *old)
{
    pack_with(pk, old, "additional_trusted_keys", new_trusted_keys);
}

Test(agent_follow, a_changed_host_ca_renews_the_host_certificates)
{
    cluster_start(1);
    start_agent();
    char path[600], *before = NULL, *after = NULL;
    size_t n;
    snprintf(path, sizeof path, "%s/keys/ssh_host_key-cert.pub", AG[1].dir);
    cr_assert_eq(rp_read_file(path, 65536, &before, &n), 0);

    /* An admin adds a trusted key to the host CA, as a rotation does. */
    struct auth_client *c = node_client(1);
    struct auth_reply r = {0};
    const msgpack_object *res = NULL;
    cr_assert_eq(auth_client_get(c, "cert_authority", "host", AUTH_READ_SECRETS, &r, &res, NULL), 0,
                 "%s", rp_errmsg());
    struct rp_buf b;
    msgpack_packer pk;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    pack_with(&pk, res, "spec", spec_with_new_keys);
    cr_assert_eq(auth_client_put(c, b.data, b.len, NULL), 0, "%s", rp_errmsg());
    rp_buf_free(&b);
    auth_reply_free(&r);
    auth_client_free(c);

    bool ok = ag_wait_log(1, "CA rotation): renewing the host certificates: done", 20000);
    if (!ok)
        ag_print_log_tail(1, 30);
    cr_assert(ok, "the agent did not renew after the host CA changed");
    cr_assert_eq(rp_read_file(path, 65536, &after, &n), 0);
    cr_assert_str_neq(before, after, "the host certificate file did not change");
    free(before);
    free(after);
    ag_stop_all();
    cluster_pass();
}

Test(agent_follow, stream_from_a_hung_auth_server_is_probed_and_replaced, .timeout = 240)
{
    cluster_start(3);
    start_agent();
    /* SIGSTOP keeps the server's sockets open: nothing tells the agent but its probe,
     * after a minute of silence. The agent streams from node 1, first in its list. */
    pid_t hung = CL->nodes[1].pid;
    cr_assert_gt(hung, 0, "auth node 1 is not running");
    kill(hung, SIGSTOP);
    bool ok = ag_wait_log(1, "stopped answering (a quiet stream probed by ping)", 100000);
    uint64_t deadline = cl_now_ms() + 30000;
    while (ok && ag_log_count(1, "cache in step with auth") < 2 && cl_now_ms() < deadline)
        cl_sleep_ms(100);
    kill(hung, SIGCONT);
    if (!ok || ag_log_count(1, "cache in step with auth") < 2)
        ag_print_log_tail(1, 30);
    cr_assert(ok, "the agent never noticed its stream's server hung");
    cr_assert_geq(ag_log_count(1, "cache in step with auth"), 2, "no new stream from the others");
    ag_stop_all();
    cluster_pass();
}
