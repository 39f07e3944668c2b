/* tests/test_state_apply.c: applying commands: every op, idempotent retries,
 * request-id pruning, expiry, skipping re-applied indexes, malformed input. */
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

TestSuite(state_apply, .init = sth_setup, .fini = sth_teardown, .timeout = 60);

Test(state_apply, put_stores_the_resource_at_the_entry_index)
{
    struct state_result r = sth_put(7, "node", "n1", "a");
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.revision, 7);
    cr_assert_eq(r.n_changed, 1);
    char spec[16];
    uint64_t rev, read_at;
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "a");
    cr_assert_eq(rev, 7, "metadata.revision is the index");
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(state_get(sth_state, "node", "n1", &b, &read_at), 0);
    cr_assert_eq(read_at, 7);
    rp_buf_free(&b);
    cr_assert_eq(state_applied_index(sth_state), 7);
    /* put replaces. */
    r = sth_put(8, "node", "n1", "b");
    cr_assert_eq(r.code, 0);
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "b");
    cr_assert_eq(rev, 8);
}

Test(state_apply, create_on_present_fails_and_changes_nothing)
{
    cr_assert_eq(sth_put_to(sth_state, 1, "create", "node", "n1", 0, "a").code, 0);
    struct state_result r = sth_put_to(sth_state, 2, "create", "node", "n1", 0, "b");
    cr_assert_eq(r.code, RP_EEXISTS);
    cr_assert_eq(r.current_rev, 1);
    cr_assert_eq(r.revision, 2);
    cr_assert_eq(r.n_changed, 0);
    cr_assert_not_null(strstr(r.message, "node/n1 already exists"), "%s", r.message);
    char spec[16];
    uint64_t rev;
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "a");
    cr_assert_eq(rev, 1);
    cr_assert_eq(state_applied_index(sth_state), 2, "the failed entry still advances the index");
}

Test(state_apply, update_on_absent_fails_and_on_present_replaces)
{
    struct state_result r = sth_put_to(sth_state, 1, "update", "node", "n1", 0, "a");
    cr_assert_eq(r.code, RP_ENOTFOUND);
    cr_assert_not_null(strstr(r.message, "does not exist"));
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
    sth_put(2, "node", "n1", "a");
    r = sth_put_to(sth_state, 3, "update", "node", "n1", 0, "b");
    cr_assert_eq(r.code, 0);
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), 0);
    cr_assert_str_eq(spec, "b");
}

Test(state_apply, delete_removes_and_delete_of_absent_is_not_found)
{
    sth_put(1, "node", "n1", "a");
    struct state_result r = sth_del(2, "node", "n1");
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.n_changed, 1);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
    r = sth_del(3, "node", "n1");
    cr_assert_eq(r.code, RP_ENOTFOUND);
}

static void batch_of(struct rp_buf *cmd, const char *rid, struct state_cmd *subs, size_t n)
{
    struct rp_buf ops;
    rp_buf_init(&ops);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq(state_cmd_encode(&subs[i], &ops), 0);
    sth_encode(
        cmd,
        (struct state_cmd){
            .op = "batch", .rid = rid, .ops = ops.data, .ops_len = ops.len, .n_ops = (uint32_t)n},
        NULL);
    rp_buf_free(&ops);
}

Test(state_apply, batch_is_all_or_nothing)
{
    struct rp_buf a, b, cmd;
    sth_put(1, "node", "existing", "x");
    sth_make_res(&a, "node", "n1", 0, NULL, "a");
    sth_make_res(&b, "node", "existing", 0, NULL, "b");
    struct state_cmd subs[] = {
        {.op = "put", .res = a.data, .res_len = a.len},
        {.op = "delete", .kind = "node", .name = "existing"},
        {.op = "create", .res = b.data, .res_len = b.len},
        {.op = "create", .res = b.data, .res_len = b.len}, /* fails: created just before */
    };
    batch_of(&cmd, "b1", subs, 4);
    struct state_result r = sth_apply_raw_to(sth_state, 2, cmd.data, cmd.len);
    cr_assert_eq(r.code, RP_EEXISTS);
    cr_assert_eq(r.failed_op, 3);
    cr_assert_eq(r.n_changed, 0);
    cr_assert_eq(r.current_rev, 2, "the batch's own create, seen by the later op");
    cr_assert_not_null(strstr(r.message, "ops[3]:"), "%s", r.message);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
    cr_assert_eq(sth_get_spec("node", "existing", spec, sizeof spec, NULL), 0);
    cr_assert_str_eq(spec, "x");
    cr_assert_eq(state_applied_index(sth_state), 2);
    rp_buf_free(&cmd);

    /* The first three alone succeed, each seeing the one before. */
    batch_of(&cmd, "b2", subs, 3);
    r = sth_apply_raw_to(sth_state, 3, cmd.data, cmd.len);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 3);
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), 0);
    cr_assert_eq(sth_get_spec("node", "existing", spec, sizeof spec, NULL), 0);
    cr_assert_str_eq(spec, "b");
    rp_buf_free(&cmd);
    rp_buf_free(&a);
    rp_buf_free(&b);
}

Test(state_apply, retry_with_the_same_rid_returns_the_first_result_and_changes_nothing)
{
    struct rp_buf res1, res2;
    sth_make_res(&res1, "node", "n1", 0, NULL, "first");
    sth_make_res(&res2, "node", "n1", 0, NULL, "second");
    struct state_result r1 =
        sth_apply_cmd(5, (struct state_cmd){.op = "put", .rid = "req-1"}, &res1);
    cr_assert_eq(r1.code, 0);
    struct state_result r2 =
        sth_apply_cmd(9, (struct state_cmd){.op = "put", .rid = "req-1"}, &res2);
    cr_assert_eq(r2.code, 0);
    cr_assert_eq(r2.revision, 5, "the first result, with its revision");
    cr_assert_eq(r2.n_changed, 1);
    char spec[16];
    uint64_t rev;
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "first");
    cr_assert_eq(rev, 5);
    cr_assert_eq(state_applied_index(sth_state), 9);
    rp_buf_free(&res1);
    rp_buf_free(&res2);
}

Test(state_apply, a_failed_result_is_remembered_too)
{
    sth_put(1, "node", "n1", "a");
    struct rp_buf res;
    sth_make_res(&res, "node", "n1", 0, NULL, "b");
    struct state_result r = sth_apply_cmd(2, (struct state_cmd){.op = "create", .rid = "c"}, &res);
    cr_assert_eq(r.code, RP_EEXISTS);
    sth_del(3, "node", "n1");
    /* The retry would now succeed, but a retry is not a new request. */
    r = sth_apply_cmd(4, (struct state_cmd){.op = "create", .rid = "c"}, &res);
    cr_assert_eq(r.code, RP_EEXISTS);
    cr_assert_eq(r.revision, 2);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "n1", spec, sizeof spec, NULL), RP_ENOTFOUND);
    rp_buf_free(&res);
}

Test(state_apply, request_ids_are_forgotten_after_rid_keep_revisions)
{
    state_close(sth_state);
    struct state_opts o = {.rid_keep = 10};
    sth_state = sth_open_state_in(sth_tmpdir, &o);
    struct rp_buf res;
    sth_make_res(&res, "node", "n1", 0, NULL, "a");
    cr_assert_eq(sth_apply_cmd(1, (struct state_cmd){.op = "create", .rid = "old"}, &res).code, 0);
    /* At index 10 (< 1 + 10) it is still a retry. */
    struct state_result r =
        sth_apply_cmd(10, (struct state_cmd){.op = "create", .rid = "old"}, &res);
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.revision, 1);
    /* At index 11 it has been pruned: the create runs again and fails. */
    r = sth_apply_cmd(11, (struct state_cmd){.op = "create", .rid = "old"}, &res);
    cr_assert_eq(r.code, RP_EEXISTS);
    cr_assert_eq(r.revision, 11);
    rp_buf_free(&res);
}

Test(state_apply, expire_deletes_exactly_those_expiring_before_t)
{
    sth_put_to(sth_state, 1, "put", "token", "t100", 100, "x");
    sth_put_to(sth_state, 2, "put", "token", "t200", 200, "x");
    sth_put_to(sth_state, 3, "put", "token", "t300", 300, "x");
    sth_put_to(sth_state, 4, "put", "token", "never", 0, "x");
    sth_put_to(sth_state, 5, "put", "node", "n199", 199, "x");
    uint64_t next;
    cr_assert_eq(state_next_expiry(sth_state, &next), 0);
    cr_assert_eq(next, 100);

    struct state_watch *w;
    struct state_watch_opts wo = {.start_rev = 5};
    cr_assert_eq(state_watch_open(sth_state, &wo, &w), 0, "%s", rp_errmsg());

    struct state_result r =
        sth_apply_cmd(6, (struct state_cmd){.op = "expire", .before = 200}, NULL);
    cr_assert_eq(r.code, 0, "%s", r.message);
    cr_assert_eq(r.n_changed, 2);
    char spec[16];
    cr_assert_eq(sth_get_spec("token", "t100", spec, sizeof spec, NULL), RP_ENOTFOUND);
    cr_assert_eq(sth_get_spec("node", "n199", spec, sizeof spec, NULL), RP_ENOTFOUND);
    cr_assert_eq(sth_get_spec("token", "t200", spec, sizeof spec, NULL), 0, "200 is not < 200");
    cr_assert_eq(sth_get_spec("token", "t300", spec, sizeof spec, NULL), 0);
    cr_assert_eq(sth_get_spec("token", "never", spec, sizeof spec, NULL), 0);
    cr_assert_eq(state_next_expiry(sth_state, &next), 0);
    cr_assert_eq(next, 200);

    struct state_event ev;
    state_event_init(&ev);
    cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
    cr_assert_eq(ev.type, STATE_EV_INIT_DONE);
    /* Oldest expiry first. */
    const char *want[] = {"token/t100", "node/n199"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(state_watch_next(w, &ev, 1000), 0);
        char kn[400];
        snprintf(kn, sizeof kn, "%s/%s", ev.kind, ev.name);
        cr_assert_eq(ev.type, STATE_EV_DELETE);
        cr_assert_eq(ev.revision, 6);
        cr_assert_str_eq(kn, want[i]);
    }
    cr_assert_eq(state_watch_next(w, &ev, 0), RP_ETIMEDOUT);
    state_event_free(&ev);
    state_watch_close(w);

    /* Everything expiring goes, "never" stays. */
    r = sth_apply_cmd(7, (struct state_cmd){.op = "expire", .before = UINT64_MAX}, NULL);
    cr_assert_eq(r.n_changed, 2);
    cr_assert_eq(sth_count(sth_state, NULL, NULL), 1);
    cr_assert_eq(state_next_expiry(sth_state, &next), 0);
    cr_assert_eq(next, 0);
}

Test(state_apply, rewriting_a_resource_moves_its_expiry)
{
    sth_put_to(sth_state, 1, "put", "token", "t", 100, "x");
    sth_put_to(sth_state, 2, "put", "token", "t", 500, "y");
    uint64_t next;
    cr_assert_eq(state_next_expiry(sth_state, &next), 0);
    cr_assert_eq(next, 500);
    cr_assert_eq(
        sth_apply_cmd(3, (struct state_cmd){.op = "expire", .before = 200}, NULL).n_changed, 0);
    sth_put_to(sth_state, 4, "put", "token", "t", 0, "z");
    cr_assert_eq(state_next_expiry(sth_state, &next), 0);
    cr_assert_eq(next, 0);
    sth_del(5, "node", "absent");
    sth_put_to(sth_state, 6, "put", "token", "t", 50, "z");
    sth_del(7, "token", "t");
    cr_assert_eq(state_next_expiry(sth_state, &next), 0);
    cr_assert_eq(next, 0, "deleting drops the expiry entry");
}

Test(state_apply, an_index_already_applied_is_skipped)
{
    struct state_result r = sth_put(5, "node", "n1", "a");
    cr_assert_eq(r.code, 0);
    struct rp_buf before, after;
    sth_dump(sth_state, &before);
    /* The same entry again (libraft re-applying its log after a restart). */
    r = sth_put(5, "node", "n1", "a");
    cr_assert_eq(r.code, 0);
    cr_assert_eq(r.revision, 5, "the remembered result of its rid");
    /* A different command at an old index changes nothing either. */
    r = sth_put(3, "node", "n2", "b");
    cr_assert_eq(r.code, 0);
    cr_assert_not_null(strstr(r.message, "already applied"), "%s", r.message);
    sth_dump(sth_state, &after);
    cr_assert_eq(before.len, after.len);
    cr_assert_eq(memcmp(before.data, after.data, before.len), 0);
    cr_assert_eq(state_applied_index(sth_state), 5);
    rp_buf_free(&before);
    rp_buf_free(&after);
}

Test(state_apply, state_survives_close_and_reopen_and_replay_is_skipped)
{
    sth_put(1, "node", "n1", "a");
    sth_put(2, "node", "n2", "b");
    state_close(sth_state);
    sth_state = sth_open_state_in(sth_tmpdir, NULL);
    cr_assert_eq(state_applied_index(sth_state), 2);
    cr_assert_eq(sth_count(sth_state, "node", NULL), 2);
    /* Replaying from index 1 (no snapshot yet) leaves it as it is. */
    sth_put(1, "node", "n1", "a");
    cr_assert_eq(sth_del(2, "node", "n2").code, 0);
    cr_assert_eq(sth_count(sth_state, "node", NULL), 2);
    cr_assert_eq(sth_put(3, "node", "n3", "c").code, 0);
    cr_assert_eq(sth_count(sth_state, "node", NULL), 3);
}

static void write_marker(const char *dir, const char *content)
{
    char path[256];
    snprintf(path, sizeof path, "%s/state.open", dir);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(content, f);
    fclose(f);
}

Test(state_apply, state_left_open_by_another_boot_is_discarded)
{
    sth_put(1, "node", "n1", "a");
    state_close(sth_state);
    write_marker(sth_tmpdir, "00000000-0000-0000-0000-000000000000");
    sth_state = sth_open_state_in(sth_tmpdir, NULL);
    cr_assert_eq(state_applied_index(sth_state), 0);
    cr_assert_eq(sth_count(sth_state, NULL, NULL), 0);
}

Test(state_apply, state_left_open_by_a_crashed_process_of_this_boot_is_kept)
{
    char id[64] = "";
    FILE *f = fopen("/proc/sys/kernel/random/boot_id", "r");
    if (f == NULL)
        cr_skip_test("no boot id on this system");
    cr_assert_not_null(fgets(id, sizeof id, f));
    fclose(f);
    id[strcspn(id, "\n")] = '\0';
    sth_put(1, "node", "n1", "a");
    state_close(sth_state);
    write_marker(sth_tmpdir, id);
    sth_state = sth_open_state_in(sth_tmpdir, NULL);
    cr_assert_eq(state_applied_index(sth_state), 1);
    cr_assert_eq(sth_count(sth_state, NULL, NULL), 1);
}

Test(state_apply, malformed_commands_change_only_the_applied_index)
{
    sth_put(1, "node", "n1", "a");
    struct rp_buf before, after, b;
    sth_dump(sth_state, &before);
    uint64_t index = 2;

    struct state_result r =
        sth_apply_raw_to(sth_state, index++, "\x93\x01", 2); /* truncated array */
    cr_assert_eq(r.code, RP_EINVAL);
    cr_assert_not_null(strstr(r.message, "command:"), "%s", r.message);
    r = sth_apply_raw_to(sth_state, index++, "", 0);
    cr_assert_eq(r.code, RP_EINVAL);
    r = sth_apply_raw_to(sth_state, index++, "\xc1", 1);
    cr_assert_eq(r.code, RP_EINVAL);

    struct rp_buf res;
    sth_make_res(&res, "Bad-Kind", "n", 0, NULL, "x");
    sth_encode(&b, (struct state_cmd){.op = "put", .rid = "x"}, &res);
    r = sth_apply_raw_to(sth_state, index++, b.data, b.len);
    cr_assert_eq(r.code, RP_EINVAL);
    cr_assert_not_null(strstr(r.message, "res.kind"), "%s", r.message);
    /* Its rid was not remembered: a malformed command is no request. */
    rp_buf_free(&b);
    rp_buf_free(&res);

    sth_encode(&b, (struct state_cmd){.op = "delete", .rid = "d", .kind = "node"}, NULL);
    r = sth_apply_raw_to(sth_state, index++, b.data, b.len);
    cr_assert_eq(r.code, RP_EINVAL);
    cr_assert_not_null(strstr(r.message, "name:"), "%s", r.message);
    rp_buf_free(&b);

    size_t n = STATE_MAX_COMMAND + 1;
    char *big = calloc(1, n);
    r = sth_apply_raw_to(sth_state, index++, big, n);
    free(big);
    cr_assert_eq(r.code, RP_EINVAL);

    sth_dump(sth_state, &after);
    cr_assert_eq(before.len, after.len);
    cr_assert_eq(memcmp(before.data, after.data, before.len), 0);
    cr_assert_eq(state_applied_index(sth_state), index - 1);
    rp_buf_free(&before);
    rp_buf_free(&after);
}

Test(state_apply, random_corruption_of_commands_never_crashes_apply)
{
    struct rp_buf res, ops, cmd;
    sth_make_res(&res, "node", "n1", 5, "prod", "spec");
    rp_buf_init(&ops);
    struct state_cmd sub = {.op = "put", .res = res.data, .res_len = res.len};
    state_cmd_encode(&sub, &ops);
    sub = (struct state_cmd){.op = "cdelete", .kind = "node", .name = "n1", .rev = 3};
    state_cmd_encode(&sub, &ops);
    sth_encode(&cmd,
               (struct state_cmd){
                   .op = "batch", .rid = "r", .ops = ops.data, .ops_len = ops.len, .n_ops = 2},
               NULL);
    srand(99);
    uint64_t index = 1;
    for (int i = 0; i < 3000; i++) {
        uint8_t *copy = malloc(cmd.len);
        memcpy(copy, cmd.data, cmd.len);
        int flips = 1 + rand() % 3;
        for (int f = 0; f < flips; f++)
            copy[rand() % cmd.len] = (uint8_t)rand();
        struct state_result r;
        cr_assert_eq(state_apply(sth_state, index, copy, cmd.len, &r), 0, "%s", rp_errmsg());
        cr_assert_eq(state_applied_index(sth_state), index);
        index++;
        free(copy);
    }
    rp_buf_free(&cmd);
    rp_buf_free(&ops);
    rp_buf_free(&res);
}

Test(state_apply, list_walks_a_kind_and_a_prefix_in_name_order)
{
    sth_put(1, "node", "web-2", "a");
    sth_put(2, "node", "web-1", "a");
    sth_put(3, "node", "db-1", "a");
    sth_put(4, "nodes", "web-9", "a"); /* a kind that shares a prefix with "node" */
    sth_put(5, "role", "web-admin", "a");
    cr_assert_eq(sth_count(sth_state, "node", NULL), 3);
    cr_assert_eq(sth_count(sth_state, "node", "web-"), 2);
    cr_assert_eq(sth_count(sth_state, "nodes", NULL), 1);
    cr_assert_eq(sth_count(sth_state, NULL, "web-"), 4);
    cr_assert_eq(sth_count(sth_state, NULL, NULL), 5);
    cr_assert_eq(sth_count(sth_state, "user", NULL), 0);

    struct rp_buf b;
    uint64_t rev;
    rp_buf_init(&b);
    cr_assert_eq(state_list(sth_state, "node", "web", 0, sth_dump_cb, &b, &rev), 0);
    cr_assert_eq(rev, 5);
    struct rp_rd rd;
    uint32_t l;
    const uint8_t *p;
    char spec[8];
    rp_rd_init(&rd, b.data, b.len);
    const char *want[] = {"web-1", "web-2"};
    for (int i = 0; i < 2; i++) {
        cr_assert_eq(rp_rd_be32(&rd, &l), 0);
        cr_assert_eq(rp_rd_bytes(&rd, l, &p), 0);
        struct state_res_meta m;
        cr_assert_eq(state_resource_check(p, l, &m), 0);
        cr_assert_eq(m.name_len, strlen(want[i]));
        cr_assert_eq(memcmp(m.name, want[i], m.name_len), 0);
        sth_res_spec(p, l, spec, sizeof spec);
    }
    rp_buf_free(&b);

    /* limit, and a callback that stops the walk. */
    rp_buf_init(&b);
    cr_assert_eq(state_list(sth_state, NULL, NULL, 2, sth_dump_cb, &b, NULL), 0);
    rp_rd_init(&rd, b.data, b.len);
    int n = 0;
    while (rp_rd_be32(&rd, &l) == 0 && rp_rd_skip(&rd, l) == 0)
        n++;
    cr_assert_eq(n, 2);
    rp_buf_free(&b);
    cr_assert_eq(state_list(sth_state, "Bad", NULL, 0, sth_dump_cb, &b, NULL), RP_EINVAL);
    cr_assert_eq(state_get(sth_state, "node", "", &b, NULL), RP_EINVAL);
}

static int stop_cb(void *arg, const void *res, size_t len)
{
    (void)res;
    (void)len;
    return ++*(int *)arg == 2 ? 42 : 0;
}

Test(state_apply, a_list_callback_can_stop_the_walk)
{
    sth_put(1, "node", "a", "a");
    sth_put(2, "node", "b", "a");
    sth_put(3, "node", "c", "a");
    int calls = 0;
    cr_assert_eq(state_list(sth_state, "node", NULL, 0, stop_cb, &calls, NULL), 42);
    cr_assert_eq(calls, 2);
}

Test(state_apply, same_commands_at_same_indexes_give_identical_contents)
{
    char dir2[64];
    sth_make_tmpdir(dir2);
    struct state *s2 = sth_open_state_in(dir2, NULL);
    struct state *both[] = {sth_state, s2};
    for (int k = 0; k < 2; k++) {
        sth_put_to(both[k], 1, "put", "node", "n1", 10, "a");
        sth_put_to(both[k], 2, "create", "node", "n2", 0, "b");
        sth_put_to(both[k], 3, "create", "node", "n2", 0, "c");
        sth_apply_to(both[k], 4, (struct state_cmd){.op = "expire", .before = 11}, NULL);
    }
    struct rp_buf a, b;
    sth_dump(sth_state, &a);
    sth_dump(s2, &b);
    cr_assert_eq(a.len, b.len);
    cr_assert_eq(memcmp(a.data, b.data, a.len), 0);
    rp_buf_free(&a);
    rp_buf_free(&b);
    state_close(s2);
    sth_remove_tree(dir2);
}
