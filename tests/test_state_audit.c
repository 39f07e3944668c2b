/* tests/test_state_audit.c: the audit log of the state machine (state/audit.c):
 * append in batches, query by time, type, user and session id in both orders,
 * trim by age, refuse malformed events, survive a snapshot. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "tests/lib/state_helpers.h"

TestSuite(state_audit, .init = sth_setup, .fini = sth_teardown, .timeout = 60);

/* Appends one event map to @b. */
static void pack_event(struct rp_buf *b, uint64_t time, const char *type, const char *uid,
                       const char *user, const char *sid)
{
    msgpack_packer pk;
    rp_mp_packer_init(&pk, b);
    msgpack_pack_map(&pk, 4 + (user != NULL) + (sid != NULL) + 1);
    rp_mp_kv_str(&pk, "event", type);
    rp_mp_kv_str(&pk, "code", "T0000I");
    rp_mp_kv_str(&pk, "uid", uid);
    rp_mp_kv_u64(&pk, "time", time);
    if (user)
        rp_mp_kv_str(&pk, "user", user);
    if (sid)
        rp_mp_kv_str(&pk, "sid", sid);
    rp_mp_kv_str(&pk, "note", "extra fields are kept");
}

static struct state_result apply_events(uint64_t index, const struct rp_buf *events, uint32_t n)
{
    char rid[32];
    snprintf(rid, sizeof rid, "a%llu", (unsigned long long)index);
    struct state_cmd c = {.op = "audit",
                          .rid = rid,
                          .events = events->data,
                          .events_len = events->len,
                          .n_events = n};
    return sth_apply_cmd(index, c, NULL);
}

struct collected {
    char uids[64][40];
    size_t n;
};

static int collect_cb(void *arg, const void *ev, size_t len)
{
    struct collected *c = arg;
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(ev, len, &u), 0);
    const char *s;
    size_t n;
    cr_assert_eq(rp_mp_get_str(&u.data, "uid", &s, &n), 0);
    cr_assert(rp_mp_str_eq(rp_mp_get(&u.data, "note"), "extra fields are kept"));
    if (c->n < 64)
        snprintf(c->uids[c->n++], 40, "%.*s", (int)n, s);
    msgpack_unpacked_destroy(&u);
    return 0;
}

static struct collected query(struct state_audit_query q)
{
    struct collected c = {.n = 0};
    cr_assert_eq(state_audit_query(sth_state, &q, collect_cb, &c, NULL), 0, "%s", rp_errmsg());
    return c;
}

static void expect_uids(struct collected c, const char *want)
{
    char got[1024] = "";
    for (size_t i = 0; i < c.n; i++) {
        strcat(got, i ? "," : "");
        strcat(got, c.uids[i]);
    }
    cr_assert_str_eq(got, want);
}

/* Ten events: e1..e10 at times 1000..10000; users alice/bob alternate; types
 * user.login (odd) and session.start (even); sessions s1 for e2, e4. */
static void seed(void)
{
    struct rp_buf b;
    rp_buf_init(&b);
    for (int i = 1; i <= 10; i++) {
        char uid[16], sid[8];
        snprintf(uid, sizeof uid, "e%d", i);
        snprintf(sid, sizeof sid, "s1");
        pack_event(&b, (uint64_t)i * 1000, i % 2 ? "user.login" : "session.start", uid,
                   i % 2 ? "alice" : "bob", i == 2 || i == 4 ? sid : NULL);
    }
    struct state_result r = apply_events(5, &b, 10);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 10);
    rp_buf_free(&b);
}

Test(state_audit, queries_by_time_type_user_and_session)
{
    seed();
    expect_uids(query((struct state_audit_query){0}), "e1,e2,e3,e4,e5,e6,e7,e8,e9,e10");
    expect_uids(query((struct state_audit_query){.from_ms = 3000, .to_ms = 6000}), "e3,e4,e5");
    expect_uids(query((struct state_audit_query){.type = "session.start"}), "e2,e4,e6,e8,e10");
    expect_uids(query((struct state_audit_query){.user = "alice", .from_ms = 4000}), "e5,e7,e9");
    expect_uids(query((struct state_audit_query){.sid = "s1"}), "e2,e4");
    expect_uids(query((struct state_audit_query){.user = "bob", .type = "user.login"}), "");
    expect_uids(query((struct state_audit_query){.newest_first = true, .limit = 3}), "e10,e9,e8");
    expect_uids(query((struct state_audit_query){
                    .type = "user.login", .newest_first = true, .to_ms = 9000}),
                "e7,e5,e3,e1");
    expect_uids(query((struct state_audit_query){.user = "nobody"}), "");
    expect_uids(query((struct state_audit_query){.from_ms = 20000}), "");
}

Test(state_audit, trim_drops_old_events_and_their_index_entries)
{
    seed();
    struct state_cmd c = {.op = "audit_trim", .before = 4500};
    struct state_result r = sth_apply_cmd(6, c, NULL);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 4);
    expect_uids(query((struct state_audit_query){0}), "e5,e6,e7,e8,e9,e10");
    expect_uids(query((struct state_audit_query){.sid = "s1"}), "");
    expect_uids(query((struct state_audit_query){.user = "bob"}), "e6,e8,e10");
}

Test(state_audit, the_same_event_twice_is_written_once)
{
    seed();
    struct rp_buf b;
    rp_buf_init(&b);
    pack_event(&b, 3000, "user.login", "e3", "alice", NULL);
    pack_event(&b, 11000, "user.login", "e11", "alice", NULL);
    struct state_result r = apply_events(6, &b, 2);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 1);
    expect_uids(query((struct state_audit_query){.user = "alice"}), "e1,e3,e5,e7,e9,e11");
    rp_buf_free(&b);
}

Test(state_audit, malformed_events_are_refused_with_the_field_named)
{
    static const struct {
        const char *what, *want;
    } cases[] = {
        {"no time", "events[0].time"},
        {"no uid", "events[0].uid"},
        {"empty type", "events[0].event"},
        {"control char in user", "events[0].user"},
        {"not a map", "events[0]: expected a map"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rp_buf b;
        msgpack_packer pk;
        rp_buf_init(&b);
        rp_mp_packer_init(&pk, &b);
        if (i == 0) {
            msgpack_pack_map(&pk, 3);
            rp_mp_kv_str(&pk, "event", "x");
            rp_mp_kv_str(&pk, "code", "c");
            rp_mp_kv_str(&pk, "uid", "u");
        } else if (i == 1) {
            msgpack_pack_map(&pk, 3);
            rp_mp_kv_str(&pk, "event", "x");
            rp_mp_kv_str(&pk, "code", "c");
            rp_mp_kv_u64(&pk, "time", 5);
        } else if (i == 2) {
            pack_event(&b, 5, "", "u", NULL, NULL);
        } else if (i == 3) {
            pack_event(&b, 5, "x", "u", "al\nice", NULL);
        } else {
            rp_mp_pack_str(&pk, "event");
        }
        struct state_result r = apply_events(10 + i, &b, 1);
        cr_assert_eq(r.code, RP_EINVAL, "%s: code %d", cases[i].what, r.code);
        cr_assert(strstr(r.message, cases[i].want) != NULL, "%s: %s", cases[i].what, r.message);
        rp_buf_free(&b);
    }
    expect_uids(query((struct state_audit_query){0}), "");
}

Test(state_audit, audit_is_not_allowed_inside_a_batch)
{
    struct rp_buf ev, sub, cmd;
    rp_buf_init(&ev);
    rp_buf_init(&sub);
    pack_event(&ev, 5, "x", "u", NULL, NULL);
    struct state_cmd inner = {
        .op = "audit", .events = ev.data, .events_len = ev.len, .n_events = 1};
    cr_assert_eq(state_cmd_encode(&inner, &sub), 0);
    struct state_cmd c = {
        .op = "batch", .rid = "b1", .ops = sub.data, .ops_len = sub.len, .n_ops = 1};
    rp_buf_init(&cmd);
    cr_assert_eq(state_cmd_encode(&c, &cmd), 0);
    struct state_result r = sth_apply_raw_to(sth_state, 3, cmd.data, cmd.len);
    cr_assert_eq(r.code, RP_EINVAL);
    cr_assert(strstr(r.message, "not allowed inside a batch") != NULL, "%s", r.message);
    rp_buf_free(&ev);
    rp_buf_free(&sub);
    rp_buf_free(&cmd);
}

Test(state_audit, events_survive_a_snapshot_restore)
{
    seed();
    struct raft_fsm fsm;
    struct raft_buffer *bufs = NULL;
    unsigned n = 0;
    state_fsm_init(&fsm, sth_state, NULL);
    cr_assert_eq(fsm.snapshot(&fsm, &bufs, &n), 0);
    cr_assert_eq(n, 1);
    struct raft_buffer copy = {.base = raft_malloc(bufs[0].len), .len = bufs[0].len};
    memcpy(copy.base, bufs[0].base, bufs[0].len);
    cr_assert_eq(fsm.snapshot_finalize(&fsm, &bufs, &n), 0);

    char dir[64];
    sth_make_tmpdir(dir);
    struct state *other = sth_open_state_in(dir, NULL);
    struct raft_fsm fsm2;
    state_fsm_init(&fsm2, other, NULL);
    cr_assert_eq(fsm2.restore(&fsm2, &copy), 0, "%s", rp_errmsg());
    struct collected c = {.n = 0};
    struct state_audit_query q = {.user = "bob", .newest_first = true};
    cr_assert_eq(state_audit_query(other, &q, collect_cb, &c, NULL), 0);
    expect_uids(c, "e10,e8,e6,e4,e2");
    state_close(other);
}

/* Caches of what resources say (auth/certs.c keeps users' issuance views) are keyed
 * on state_resources_changed: resource writes move it, audit entries and writes that
 * change nothing do not. */
Test(state_audit, audit_entries_leave_resources_changed_alone)
{
    uint64_t before = state_resources_changed(sth_state);
    struct state_result r = sth_put(50, "role", "dev", "v1");
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(state_resources_changed(sth_state), 50);
    cr_assert_neq(before, 50);

    struct rp_buf b;
    rp_buf_init(&b);
    pack_event(&b, 1000, "user.login", "rc1", "alice", NULL);
    r = apply_events(51, &b, 1);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(state_resources_changed(sth_state), 50, "an audit entry changes no resource");
    rp_buf_free(&b);

    struct state_cmd del = {.op = "delete", .rid = "d52", .kind = "role", .name = "ghost"};
    r = sth_apply_cmd(52, del, NULL);
    cr_assert_eq(r.code, RP_ENOTFOUND);
    cr_assert_eq(state_resources_changed(sth_state), 50, "a failed delete changes nothing");

    r = sth_del(53, "role", "dev");
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(state_resources_changed(sth_state), 53);
}
