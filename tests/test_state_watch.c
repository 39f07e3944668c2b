/* tests/test_state_watch.c: watch streams: init snapshot, ordering, filters,
 * resuming from the ring, overflow, cancel, and a concurrent writer. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "state/state.h"
#include "tests/lib/state_helpers.h"
#include <poll.h>
#include <pthread.h>
#include <time.h>

TestSuite(state_watch, .init = sth_setup, .fini = sth_teardown, .timeout = 120);

static struct state_watch *watch(struct state *s, const char *const *kinds, size_t n_kinds,
                                 const char *prefix, uint64_t start_rev)
{
    struct state_watch *w;
    struct state_watch_opts o = {
        .kinds = kinds, .n_kinds = n_kinds, .prefix = prefix, .start_rev = start_rev};
    cr_assert_eq(state_watch_open(s, &o, &w), 0, "state_watch_open: %s", rp_errmsg());
    return w;
}

/* Takes the next event and checks its type, revision (unless 0) and kind/name. */
static void expect(struct state_watch *w, struct state_event *ev, enum state_event_type type,
                   uint64_t rev, const char *kind, const char *name)
{
    int rv = state_watch_next(w, ev, 2000);
    cr_assert_eq(rv, 0, "state_watch_next: %d %s", rv, rp_errmsg());
    cr_assert_eq(ev->type, type, "type %d, want %d (rev %llu %s/%s)", ev->type, type,
                 (unsigned long long)ev->revision, ev->kind, ev->name);
    if (rev != 0)
        cr_assert_eq(ev->revision, rev, "revision %llu, want %llu",
                     (unsigned long long)ev->revision, (unsigned long long)rev);
    if (kind != NULL) {
        cr_assert_str_eq(ev->kind, kind);
        cr_assert_str_eq(ev->name, name);
    }
}

static void expect_nothing(struct state_watch *w, struct state_event *ev)
{
    cr_assert_eq(state_watch_next(w, ev, 0), RP_ETIMEDOUT);
}

Test(state_watch, init_snapshot_then_puts_and_deletes_in_order)
{
    sth_put(1, "node", "b", "1");
    sth_put(2, "node", "a", "2");
    sth_put(3, "role", "r", "3");
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_PUT, 2, "node", "a");
    char spec[8];
    sth_res_spec(ev.res.data, ev.res.len, spec, sizeof spec);
    cr_assert_str_eq(spec, "2");
    expect(w, &ev, STATE_EV_INIT_PUT, 1, "node", "b");
    expect(w, &ev, STATE_EV_INIT_PUT, 3, "role", "r");
    expect(w, &ev, STATE_EV_INIT_DONE, 3, NULL, NULL);
    expect_nothing(w, &ev);

    sth_put(4, "node", "c", "4");
    sth_del(5, "node", "a");
    sth_put(6, "node", "b", "6");
    expect(w, &ev, STATE_EV_PUT, 4, "node", "c");
    sth_res_spec(ev.res.data, ev.res.len, spec, sizeof spec);
    cr_assert_str_eq(spec, "4");
    struct state_res_meta m;
    cr_assert_eq(state_resource_check(ev.res.data, ev.res.len, &m), 0);
    cr_assert_eq(m.revision, 4);
    expect(w, &ev, STATE_EV_DELETE, 5, "node", "a");
    cr_assert_eq(ev.res.len, 0);
    expect(w, &ev, STATE_EV_PUT, 6, "node", "b");
    expect_nothing(w, &ev);
    /* Failed commands produce no event. */
    sth_del(7, "node", "absent");
    expect_nothing(w, &ev);
    state_event_free(&ev);
    state_watch_close(w);
}

Test(state_watch, an_empty_state_gives_init_done_at_the_applied_index)
{
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_DONE, 0, NULL, NULL);
    cr_assert_eq(ev.revision, 0);
    sth_put(1, "node", "a", "1");
    expect(w, &ev, STATE_EV_PUT, 1, "node", "a");
    state_event_free(&ev);
    state_watch_close(w);
}

Test(state_watch, kinds_and_prefix_filter_the_snapshot_and_the_stream)
{
    sth_put(1, "node", "web-1", "x");
    sth_put(2, "node", "db-1", "x");
    sth_put(3, "nodes", "web-2", "x");
    sth_put(4, "role", "web-3", "x");
    sth_put(5, "user", "web-4", "x");
    const char *kinds[] = {"role", "node", "node"}; /* unsorted, with a duplicate */
    struct state_watch *w = watch(sth_state, kinds, 3, "web-", 0);
    struct state_watch *all_web = watch(sth_state, NULL, 0, "web-", 0);
    struct state_watch *users = watch(sth_state, (const char *[]){"user"}, 1, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_PUT, 1, "node", "web-1");
    expect(w, &ev, STATE_EV_INIT_PUT, 4, "role", "web-3");
    expect(w, &ev, STATE_EV_INIT_DONE, 5, NULL, NULL);
    expect(all_web, &ev, STATE_EV_INIT_PUT, 1, "node", "web-1");
    expect(all_web, &ev, STATE_EV_INIT_PUT, 3, "nodes", "web-2");
    expect(all_web, &ev, STATE_EV_INIT_PUT, 4, "role", "web-3");
    expect(all_web, &ev, STATE_EV_INIT_PUT, 5, "user", "web-4");
    expect(all_web, &ev, STATE_EV_INIT_DONE, 5, NULL, NULL);
    expect(users, &ev, STATE_EV_INIT_PUT, 5, "user", "web-4");
    expect(users, &ev, STATE_EV_INIT_DONE, 5, NULL, NULL);

    sth_put(6, "node", "db-2", "x");
    sth_put(7, "nodes", "web-5", "x");
    sth_put(8, "role", "web-6", "x");
    sth_del(9, "node", "web-1");
    sth_put(10, "user", "u", "x");
    expect(w, &ev, STATE_EV_PUT, 8, "role", "web-6");
    expect(w, &ev, STATE_EV_DELETE, 9, "node", "web-1");
    expect_nothing(w, &ev);
    expect(all_web, &ev, STATE_EV_PUT, 7, "nodes", "web-5");
    expect(all_web, &ev, STATE_EV_PUT, 8, "role", "web-6");
    expect(all_web, &ev, STATE_EV_DELETE, 9, "node", "web-1");
    expect_nothing(all_web, &ev);
    expect(users, &ev, STATE_EV_PUT, 10, "user", "u");
    expect_nothing(users, &ev);
    state_event_free(&ev);
    state_watch_close(w);
    state_watch_close(all_web);
    state_watch_close(users);

    /* A bad kind is refused. */
    struct state_watch *bad;
    struct state_watch_opts o = {.kinds = (const char *[]){"No"}, .n_kinds = 1};
    cr_assert_eq(state_watch_open(sth_state, &o, &bad), RP_EINVAL);
}

Test(state_watch, the_events_of_a_batch_share_its_revision_in_op_order)
{
    sth_put(1, "node", "old", "x");
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_PUT, 1, "node", "old");
    expect(w, &ev, STATE_EV_INIT_DONE, 1, NULL, NULL);
    struct rp_buf a, b, ops, cmd;
    sth_make_res(&a, "node", "z", 0, NULL, "x");
    sth_make_res(&b, "node", "a", 0, NULL, "x");
    rp_buf_init(&ops);
    struct state_cmd subs[] = {
        {.op = "put", .res = a.data, .res_len = a.len},
        {.op = "delete", .kind = "node", .name = "old"},
        {.op = "create", .res = b.data, .res_len = b.len},
    };
    for (int i = 0; i < 3; i++)
        state_cmd_encode(&subs[i], &ops);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 3},
               NULL);
    cr_assert_eq(sth_apply_raw_to(sth_state, 2, cmd.data, cmd.len).code, 0);
    expect(w, &ev, STATE_EV_PUT, 2, "node", "z");
    expect(w, &ev, STATE_EV_DELETE, 2, "node", "old");
    expect(w, &ev, STATE_EV_PUT, 2, "node", "a");
    /* A failing batch publishes nothing. */
    cr_assert_eq(sth_apply_raw_to(sth_state, 3, cmd.data, cmd.len).code, 0,
                 "a retry: remembered result");
    rp_buf_free(&cmd);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "c", .ops = ops.data, .ops_len = ops.len, .n_ops = 3},
               NULL);
    cr_assert_eq(sth_apply_raw_to(sth_state, 4, cmd.data, cmd.len).code, RP_ENOTFOUND);
    expect_nothing(w, &ev);
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&a);
    rp_buf_free(&b);
    state_event_free(&ev);
    state_watch_close(w);
}

Test(state_watch, resume_from_the_ring_replays_without_an_init_snapshot)
{
    for (uint64_t i = 1; i <= 10; i++) {
        char name[8];
        snprintf(name, sizeof name, "n%llu", (unsigned long long)i);
        sth_put(i, "node", name, "x");
    }
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 7);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_DONE, 7, NULL, NULL);
    expect(w, &ev, STATE_EV_PUT, 8, "node", "n8");
    expect(w, &ev, STATE_EV_PUT, 9, "node", "n9");
    expect(w, &ev, STATE_EV_PUT, 10, "node", "n10");
    expect_nothing(w, &ev);
    sth_put(11, "node", "n11", "x");
    expect(w, &ev, STATE_EV_PUT, 11, "node", "n11");
    state_watch_close(w);

    /* Resuming at the head: nothing to replay. */
    w = watch(sth_state, NULL, 0, NULL, 11);
    expect(w, &ev, STATE_EV_INIT_DONE, 11, NULL, NULL);
    expect_nothing(w, &ev);
    sth_put(12, "node", "n12", "x");
    expect(w, &ev, STATE_EV_PUT, 12, "node", "n12");
    state_event_free(&ev);
    state_watch_close(w);
}

Test(state_watch, resume_from_before_the_ring_falls_back_to_an_init_snapshot)
{
    state_close(sth_state);
    struct state_opts o = {.event_ring_len = 4};
    sth_state = sth_open_state_in(sth_tmpdir, &o);
    for (uint64_t i = 1; i <= 10; i++)
        sth_put(i, "node", "same", "x");
    struct state_event ev;
    state_event_init(&ev);
    /* The ring holds 7..10, so 6 is the oldest point it can resume from. */
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 6);
    expect(w, &ev, STATE_EV_INIT_DONE, 6, NULL, NULL);
    for (uint64_t r = 7; r <= 10; r++)
        expect(w, &ev, STATE_EV_PUT, r, "node", "same");
    state_watch_close(w);
    w = watch(sth_state, NULL, 0, NULL, 5);
    expect(w, &ev, STATE_EV_INIT_PUT, 10, "node", "same");
    expect(w, &ev, STATE_EV_INIT_DONE, 10, NULL, NULL);
    expect_nothing(w, &ev);
    state_event_free(&ev);
    state_watch_close(w);
}

Test(state_watch, overflow_ends_with_reinit_at_the_last_whole_revision)
{
    state_close(sth_state);
    struct state_opts o = {.watch_queue_len = 4};
    sth_state = sth_open_state_in(sth_tmpdir, &o);
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_DONE, 0, NULL, NULL);
    sth_put(1, "node", "a", "x");
    sth_put(2, "node", "b", "x");
    /* A batch of three at revision 3: only one of its events fits. */
    struct rp_buf r1, r2, r3, ops, cmd;
    sth_make_res(&r1, "node", "c", 0, NULL, "x");
    sth_make_res(&r2, "node", "d", 0, NULL, "x");
    sth_make_res(&r3, "node", "e", 0, NULL, "x");
    rp_buf_init(&ops);
    struct state_cmd subs[] = {{.op = "put", .res = r1.data, .res_len = r1.len},
                               {.op = "put", .res = r2.data, .res_len = r2.len},
                               {.op = "put", .res = r3.data, .res_len = r3.len}};
    for (int i = 0; i < 3; i++)
        state_cmd_encode(&subs[i], &ops);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "b", .ops = ops.data, .ops_len = ops.len, .n_ops = 3},
               NULL);
    cr_assert_eq(sth_apply_raw_to(sth_state, 3, cmd.data, cmd.len).code, 0);
    sth_put(4, "node", "f", "x");
    expect(w, &ev, STATE_EV_PUT, 1, "node", "a");
    expect(w, &ev, STATE_EV_PUT, 2, "node", "b");
    expect(w, &ev, STATE_EV_REINIT, 2, NULL, NULL);
    cr_assert_eq(state_watch_next(w, &ev, 0), RP_ECLOSED);
    cr_assert_eq(state_watch_next(w, &ev, 100), RP_ECLOSED);
    state_watch_close(w);

    /* Resuming from the REINIT revision brings it back without a snapshot. */
    w = watch(sth_state, NULL, 0, NULL, 2);
    expect(w, &ev, STATE_EV_INIT_DONE, 2, NULL, NULL);
    expect(w, &ev, STATE_EV_PUT, 3, "node", "c");
    expect(w, &ev, STATE_EV_PUT, 3, "node", "d");
    expect(w, &ev, STATE_EV_PUT, 3, "node", "e");
    expect(w, &ev, STATE_EV_PUT, 4, "node", "f");
    expect_nothing(w, &ev);
    state_watch_close(w);
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&r1);
    rp_buf_free(&r2);
    rp_buf_free(&r3);
    state_event_free(&ev);
}

Test(state_watch, overflow_during_the_init_snapshot_still_delivers_it_then_reinit)
{
    state_close(sth_state);
    struct state_opts o = {.watch_queue_len = 2};
    sth_state = sth_open_state_in(sth_tmpdir, &o);
    sth_put(1, "node", "a", "x");
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    for (uint64_t i = 2; i <= 6; i++)
        sth_put(i, "node", "b", "x");
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_PUT, 1, "node", "a");
    expect(w, &ev, STATE_EV_INIT_DONE, 1, NULL, NULL);
    expect(w, &ev, STATE_EV_PUT, 2, "node", "b");
    expect(w, &ev, STATE_EV_PUT, 3, "node", "b");
    expect(w, &ev, STATE_EV_REINIT, 3, NULL, NULL);
    cr_assert_eq(state_watch_next(w, &ev, 0), RP_ECLOSED);
    state_event_free(&ev);
    state_watch_close(w);
}

struct blocked {
    struct state_watch *w;
    int rv;
    uint64_t took_ms;
};

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void *block_in_next(void *arg)
{
    struct blocked *b = arg;
    struct state_event ev;
    state_event_init(&ev);
    uint64_t t0 = now_ms();
    b->rv = state_watch_next(b->w, &ev, -1);
    b->took_ms = now_ms() - t0;
    state_event_free(&ev);
    return NULL;
}

Test(state_watch, cancel_wakes_a_blocked_next)
{
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_DONE, 0, NULL, NULL);
    struct blocked b = {.w = w, .rv = 1};
    pthread_t t;
    pthread_create(&t, NULL, block_in_next, &b);
    usleep(200 * 1000);
    state_watch_cancel(w);
    pthread_join(t, NULL);
    cr_assert_eq(b.rv, RP_ECLOSED);
    cr_assert_geq(b.took_ms, 150, "it was blocked");
    cr_assert_eq(state_watch_next(w, &ev, 0), RP_ECLOSED);
    state_event_free(&ev);
    state_watch_close(w);
}

Test(state_watch, next_times_out_and_a_blocked_next_wakes_on_an_event)
{
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_DONE, 0, NULL, NULL);
    uint64_t t0 = now_ms();
    cr_assert_eq(state_watch_next(w, &ev, 150), RP_ETIMEDOUT);
    cr_assert_geq(now_ms() - t0, 140);
    struct blocked b = {.w = w, .rv = 1};
    pthread_t t;
    pthread_create(&t, NULL, block_in_next, &b);
    usleep(100 * 1000);
    sth_put(1, "node", "a", "x");
    pthread_join(t, NULL);
    cr_assert_eq(b.rv, 0);
    state_event_free(&ev);
    state_watch_close(w);
}

static bool readable(struct state_watch *w)
{
    struct pollfd p = {.fd = state_watch_fd(w), .events = POLLIN};
    return poll(&p, 1, 0) == 1 && (p.revents & POLLIN);
}

Test(state_watch, the_fd_is_readable_exactly_when_next_has_something)
{
    sth_put(1, "node", "a", "x");
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    cr_assert(readable(w), "init pending");
    expect(w, &ev, STATE_EV_INIT_PUT, 1, NULL, NULL);
    cr_assert(readable(w));
    expect(w, &ev, STATE_EV_INIT_DONE, 1, NULL, NULL);
    expect_nothing(w, &ev);
    cr_assert(!readable(w));
    sth_put(2, "node", "b", "x");
    sth_put(3, "node", "c", "x");
    cr_assert(readable(w));
    expect(w, &ev, STATE_EV_PUT, 2, NULL, NULL);
    expect(w, &ev, STATE_EV_PUT, 3, NULL, NULL);
    expect_nothing(w, &ev);
    cr_assert(!readable(w));
    state_watch_cancel(w);
    cr_assert(readable(w));
    cr_assert_eq(state_watch_next(w, &ev, 0), RP_ECLOSED);
    cr_assert(readable(w), "stays readable once closed");
    state_event_free(&ev);
    state_watch_close(w);
}

/* ---- A writer thread and watchers ------------------------------------------ */

#define N_NAMES 40
#define N_WRITES 3000

struct writer {
    struct state *s;
    uint32_t changed[N_WRITES + 1]; /* index -> number of events it produced */
};

static void *write_loop(void *arg)
{
    struct writer *wr = arg;
    srand(7);
    for (uint64_t i = 1; i <= N_WRITES; i++) {
        char name[16], spec[16], rid[16];
        snprintf(name, sizeof name, "k%d", rand() % N_NAMES);
        snprintf(spec, sizeof spec, "v%llu", (unsigned long long)i);
        snprintf(rid, sizeof rid, "r%llu", (unsigned long long)i);
        struct state_result r;
        int kind = rand() % 10;
        if (kind < 6) {
            r = sth_put_to(wr->s, i, "put", "node", name, 0, spec);
        } else if (kind < 9) {
            r = sth_apply_to(
                wr->s, i,
                (struct state_cmd){.op = "delete", .rid = rid, .kind = "node", .name = name}, NULL);
        } else {
            struct rp_buf a, b, ops, cmd;
            char name2[16];
            snprintf(name2, sizeof name2, "k%d", rand() % N_NAMES);
            sth_make_res(&a, "node", name, 0, NULL, spec);
            sth_make_res(&b, "node", name2, 0, NULL, spec);
            rp_buf_init(&ops);
            struct state_cmd s1 = {.op = "put", .res = a.data, .res_len = a.len};
            struct state_cmd s2 = {.op = "put", .res = b.data, .res_len = b.len};
            state_cmd_encode(&s1, &ops);
            state_cmd_encode(&s2, &ops);
            sth_encode(
                &cmd,
                (struct state_cmd){
                    .op = "batch", .rid = rid, .ops = ops.data, .ops_len = ops.len, .n_ops = 2},
                NULL);
            r = sth_apply_raw_to(wr->s, i, cmd.data, cmd.len);
            rp_buf_free(&cmd);
            rp_buf_free(&ops);
            rp_buf_free(&a);
            rp_buf_free(&b);
        }
        wr->changed[i] = r.code == 0 ? r.n_changed : 0;
        if (i % 100 == 0)
            usleep(1000);
    }
    return NULL;
}

struct reader {
    struct state *s;
    uint64_t start_rev;
    uint64_t init_rev;
    char specs[N_NAMES][16];     /* "" = absent */
    uint64_t seen[N_WRITES + 1]; /* events per revision */
    bool ok;
    char why[200];
};

static int name_index(const char *name)
{
    return atoi(name + 1);
}

static void *read_loop(void *arg)
{
    struct reader *rd = arg;
    struct state_watch *w;
    struct state_watch_opts o = {.start_rev = rd->start_rev};
    struct state_event ev;
    uint64_t last = 0;
    rd->ok = false;
    if (state_watch_open(rd->s, &o, &w) != 0) {
        snprintf(rd->why, sizeof rd->why, "open: %s", rp_errmsg());
        return NULL;
    }
    state_event_init(&ev);
    for (;;) {
        int rv = state_watch_next(w, &ev, 5000);
        if (rv != 0) {
            snprintf(rd->why, sizeof rd->why, "next: %d after %llu", rv, (unsigned long long)last);
            break;
        }
        if (ev.type == STATE_EV_INIT_PUT) {
            sth_res_spec(ev.res.data, ev.res.len, rd->specs[name_index(ev.name)], 16);
            continue;
        }
        if (ev.type == STATE_EV_INIT_DONE) {
            rd->init_rev = last = ev.revision;
            if (last == N_WRITES) {
                rd->ok = true;
                break;
            }
            continue;
        }
        if (ev.type == STATE_EV_REINIT) {
            snprintf(rd->why, sizeof rd->why, "reinit at %llu", (unsigned long long)ev.revision);
            break;
        }
        if (ev.revision < last) {
            snprintf(rd->why, sizeof rd->why, "revision %llu after %llu",
                     (unsigned long long)ev.revision, (unsigned long long)last);
            break;
        }
        /* Non-decreasing revisions: the events of one revision are contiguous. */
        last = ev.revision;
        rd->seen[ev.revision]++;
        if (ev.type == STATE_EV_PUT)
            sth_res_spec(ev.res.data, ev.res.len, rd->specs[name_index(ev.name)], 16);
        else
            rd->specs[name_index(ev.name)][0] = '\0';
        if (ev.revision == N_WRITES) {
            /* The last entry may have more events (a batch): take those too. */
            while (state_watch_next(w, &ev, 200) == 0) {
                rd->seen[ev.revision]++;
                if (ev.type == STATE_EV_PUT)
                    sth_res_spec(ev.res.data, ev.res.len, rd->specs[name_index(ev.name)], 16);
                else
                    rd->specs[name_index(ev.name)][0] = '\0';
            }
            rd->ok = true;
            break;
        }
    }
    state_event_free(&ev);
    state_watch_close(w);
    return NULL;
}

static void check_reader(struct reader *rd, struct writer *wr)
{
    cr_assert(rd->ok, "reader: %s", rd->why);
    for (uint64_t i = rd->init_rev + 1; i <= N_WRITES; i++)
        cr_assert_eq(rd->seen[i], wr->changed[i], "revision %llu: %llu events, %u changes",
                     (unsigned long long)i, (unsigned long long)rd->seen[i], wr->changed[i]);
    for (int n = 0; n < N_NAMES; n++) {
        char name[16], spec[16];
        snprintf(name, sizeof name, "k%d", n);
        int rv = sth_get_spec_in(wr->s, "node", name, spec, sizeof spec, NULL);
        if (rv == RP_ENOTFOUND)
            spec[0] = '\0';
        cr_assert_str_eq(rd->specs[n], spec, "%s: watcher has '%s', state has '%s'", name,
                         rd->specs[n], spec);
    }
}

Test(state_watch, a_concurrent_writer_and_watchers_see_every_revision_once_in_order)
{
    state_close(sth_state);
    struct state_opts o = {.watch_queue_len = 100000, .event_ring_len = 100000};
    sth_state = sth_open_state_in(sth_tmpdir, &o);
    static struct writer wr;
    static struct reader from_start, mid_init, resumed;
    memset(&wr, 0, sizeof wr);
    wr.s = sth_state;
    memset(&from_start, 0, sizeof from_start);
    from_start.s = sth_state;
    memset(&mid_init, 0, sizeof mid_init);
    mid_init.s = sth_state;
    memset(&resumed, 0, sizeof resumed);
    resumed.s = sth_state;
    pthread_t tw, t1, t2, t3;
    pthread_create(&t1, NULL, read_loop, &from_start);
    pthread_create(&tw, NULL, write_loop, &wr);
    /* One joins while writes are under way (init snapshot racing the writer),
     * one resumes from a revision it claims to have. */
    while (state_applied_index(sth_state) < N_WRITES / 3)
        usleep(1000);
    pthread_create(&t2, NULL, read_loop, &mid_init);
    pthread_join(t1, NULL);
    pthread_join(t2, NULL);
    pthread_join(tw, NULL);
    check_reader(&from_start, &wr);
    check_reader(&mid_init, &wr);
    cr_assert(mid_init.init_rev > 0 && mid_init.init_rev < N_WRITES,
              "the second watcher's snapshot raced the writer (init at %llu)",
              (unsigned long long)mid_init.init_rev);

    /* Resume at N_WRITES/2 with the state a watcher had then: replaying the
     * ring from an empty map reproduces only the changed names, so compare the
     * revisions seen. */
    resumed.start_rev = N_WRITES / 2;
    pthread_create(&t3, NULL, read_loop, &resumed);
    pthread_join(t3, NULL);
    cr_assert(resumed.ok, "%s", resumed.why);
    cr_assert_eq(resumed.init_rev, N_WRITES / 2);
    for (uint64_t i = N_WRITES / 2 + 1; i <= N_WRITES; i++)
        cr_assert_eq(resumed.seen[i], from_start.seen[i], "revision %llu", (unsigned long long)i);
}

/* The ring of recent events is bounded by the bytes its resources hold, not only by
 * its count: with 1 MiB values the default 8192 events held 8 GiB. 100 puts of 1 MiB
 * leave the newest 64 MiB of them: resuming within those replays, from before them
 * starts over from an init snapshot. */
Test(state_watch, the_ring_keeps_at_most_64_mib_of_resources)
{
    size_t big = 1u << 20;
    char *spec = malloc(big + 1);
    cr_assert_not_null(spec);
    memset(spec, 'v', big);
    spec[big] = '\0';
    for (uint64_t i = 1; i <= 100; i++)
        sth_put(i, "blob", "big", spec);
    free(spec);
    struct state_event ev;
    state_event_init(&ev);
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 95);
    expect(w, &ev, STATE_EV_INIT_DONE, 95, NULL, NULL);
    for (uint64_t r = 96; r <= 100; r++)
        expect(w, &ev, STATE_EV_PUT, r, "blob", "big");
    state_watch_close(w);
    w = watch(sth_state, NULL, 0, NULL, 30);
    expect(w, &ev, STATE_EV_INIT_PUT, 100, "blob", "big");
    expect(w, &ev, STATE_EV_INIT_DONE, 100, NULL, NULL);
    expect_nothing(w, &ev);
    state_event_free(&ev);
    state_watch_close(w);
}

/* A watcher's queue is bounded by bytes too: one that reads nothing while 100 puts of
 * 1 MiB are applied gets the first 63 (64 MiB, with the rest of each resource) and then
 * REINIT, instead of holding 100 MiB. */
Test(state_watch, a_watcher_behind_by_64_mib_starts_over)
{
    size_t big = 1u << 20;
    char *spec = malloc(big + 1);
    cr_assert_not_null(spec);
    memset(spec, 'v', big);
    spec[big] = '\0';
    struct state_watch *w = watch(sth_state, NULL, 0, NULL, 0);
    struct state_event ev;
    state_event_init(&ev);
    expect(w, &ev, STATE_EV_INIT_DONE, 0, NULL, NULL);
    for (uint64_t i = 1; i <= 100; i++)
        sth_put(i, "blob", "big", spec);
    free(spec);
    uint64_t last = 0;
    for (;;) {
        cr_assert_eq(state_watch_next(w, &ev, 2000), 0, "%s", rp_errmsg());
        if (ev.type != STATE_EV_PUT)
            break;
        cr_assert_eq(ev.revision, last + 1);
        last = ev.revision;
    }
    cr_assert_eq(ev.type, STATE_EV_REINIT, "type %d", ev.type);
    cr_assert_eq(ev.revision, last);
    cr_assert(last >= 32 && last < 64, "%llu events of 1 MiB were queued",
              (unsigned long long)last);
    state_event_free(&ev);
    state_watch_close(w);
}
