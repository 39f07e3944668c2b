/* tests/test_state_group.c: group commit: independent commands in one entry, each
 * with its own result; a member that fails neither fails nor changes the others. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "state/state.h"
#include "tests/lib/state_helpers.h"

TestSuite(state_group, .init = sth_setup, .fini = sth_teardown, .timeout = 60);

/* Up to 8 members, each an encoded command owned by the struct. */
struct group {
    struct rp_buf cmds[8];
    struct raft_buffer bufs[8];
    unsigned n;
};

static void add_put(struct group *g, const char *op, const char *rid, const char *name,
                    uint64_t rev, const char *spec)
{
    struct rp_buf res;
    sth_make_res(&res, "node", name, 0, NULL, spec);
    sth_encode(&g->cmds[g->n], (struct state_cmd){.op = op, .rid = rid, .rev = rev}, &res);
    rp_buf_free(&res);
    g->bufs[g->n].base = g->cmds[g->n].data;
    g->bufs[g->n].len = g->cmds[g->n].len;
    g->n++;
}

static void add_del(struct group *g, const char *rid, const char *name)
{
    sth_encode(&g->cmds[g->n],
               (struct state_cmd){.op = "delete", .rid = rid, .kind = "node", .name = name}, NULL);
    g->bufs[g->n].base = g->cmds[g->n].data;
    g->bufs[g->n].len = g->cmds[g->n].len;
    g->n++;
}

/* Applies the group at @index as Raft carries it (the entry is padded; the FSM
 * strips the padding, so apply sees the command's own length) and copies each
 * member's result into @out. Returns the entry's result. */
static struct state_result apply_group(struct group *g, uint64_t index, struct state_result *out)
{
    struct raft_buffer entry;
    cr_assert_eq(state_group_encode(g->bufs, g->n, &entry), 0, "%s", rp_errmsg());
    cr_assert_eq(entry.len % 8, 0, "a group entry is padded to a multiple of 8");
    size_t len = 19; /* {"op":"group","ops": + an array32 header */
    for (unsigned i = 0; i < g->n; i++)
        len += g->bufs[i].len;
    cr_assert_eq(entry.len, STATE_ENTRY_LEN(len));
    struct state_result res;
    cr_assert_eq(state_apply(sth_state, index, entry.base, len, &res), 0, "%s", rp_errmsg());
    for (unsigned i = 0; i < g->n; i++)
        out[i] = *state_group_result(sth_state, &res, i);
    raft_free(entry.base);
    for (unsigned i = 0; i < g->n; i++)
        rp_buf_free(&g->cmds[i]);
    g->n = 0;
    return res;
}

Test(state_group, failed_cas_between_two_puts_fails_alone)
{
    sth_put(3, "node", "c", "old");
    struct group g = {.n = 0};
    add_put(&g, "put", "p1", "a", 0, "A");
    add_put(&g, "cas", "c1", "c", 2, "C"); /* c is at revision 3: conflict */
    add_put(&g, "put", "p2", "b", 0, "B");
    struct state_result r[3];
    struct state_result whole = apply_group(&g, 4, r);
    cr_assert_eq(whole.code, 0, "%s", whole.message);
    cr_assert_eq(whole.n_changed, 2);

    cr_assert_eq(r[0].code, 0, "%s", r[0].message);
    cr_assert_eq(r[0].revision, 4);
    cr_assert_eq(r[0].n_changed, 1);
    cr_assert_eq(r[1].code, RP_ECONFLICT);
    cr_assert_eq(r[1].current_rev, 3);
    cr_assert_eq(r[1].n_changed, 0);
    cr_assert_not_null(strstr(r[1].message, "revision 3, expected 2"), "%s", r[1].message);
    cr_assert_eq(r[2].code, 0, "%s", r[2].message);
    cr_assert_eq(r[2].revision, 4);

    char spec[16];
    uint64_t rev;
    cr_assert_eq(sth_get_spec("node", "a", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "A");
    cr_assert_eq(rev, 4);
    cr_assert_eq(sth_get_spec("node", "b", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "B");
    cr_assert_eq(rev, 4);
    /* The failed member changed nothing. */
    cr_assert_eq(sth_get_spec("node", "c", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "old");
    cr_assert_eq(rev, 3);
    cr_assert_eq(state_applied_index(sth_state), 4);
}

Test(state_group, a_replayed_member_gets_its_first_result_and_changes_nothing)
{
    struct group g = {.n = 0};
    add_put(&g, "put", "p1", "a", 0, "A");
    add_put(&g, "create", "k1", "b", 0, "B");
    struct state_result r[3];
    apply_group(&g, 5, r);
    cr_assert_eq(r[0].code, 0);
    cr_assert_eq(r[1].code, 0);

    /* Later entry: a retry of p1 (with another value: the retry must not apply)
     * next to a fresh write, and a retry of k1 that would now fail with EEXISTS. */
    add_put(&g, "put", "p1", "a", 0, "A-again");
    add_put(&g, "put", "p3", "c", 0, "C");
    add_put(&g, "create", "k1", "b", 0, "B-again");
    struct state_result whole = apply_group(&g, 9, r);
    cr_assert_eq(whole.n_changed, 1, "only the fresh write changes anything");
    cr_assert_eq(r[0].code, 0, "%s", r[0].message);
    cr_assert_eq(r[0].revision, 5, "the replay answers with the first revision");
    cr_assert_eq(r[1].code, 0, "%s", r[1].message);
    cr_assert_eq(r[1].revision, 9);
    cr_assert_eq(r[2].code, 0, "the replayed create reports its first outcome: %s", r[2].message);
    cr_assert_eq(r[2].revision, 5);

    char spec[16];
    uint64_t rev;
    cr_assert_eq(sth_get_spec("node", "a", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "A");
    cr_assert_eq(rev, 5);
    cr_assert_eq(sth_get_spec("node", "b", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "B");

    /* And a member replayed as a single command, outside any group. */
    struct rp_buf res;
    sth_make_res(&res, "node", "c", 0, NULL, "C-single");
    struct state_result s = sth_apply_cmd(10, (struct state_cmd){.op = "put", .rid = "p3"}, &res);
    rp_buf_free(&res);
    cr_assert_eq(s.code, 0);
    cr_assert_eq(s.revision, 9);
    cr_assert_eq(sth_get_spec("node", "c", spec, sizeof spec, &rev), 0);
    cr_assert_str_eq(spec, "C");
}

Test(state_group, two_changes_of_one_resource_never_share_a_revision)
{
    struct group g = {.n = 0};
    add_put(&g, "put", "p1", "a", 0, "first");
    add_put(&g, "put", "p2", "a", 0, "second");
    add_del(&g, "d1", "a");
    add_put(&g, "put", "p3", "b", 0, "B");
    struct state_result r[4];
    apply_group(&g, 7, r);
    cr_assert_eq(r[0].code, 0);
    cr_assert_eq(r[1].code, RP_ECONFLICT, "%s", r[1].message);
    cr_assert_not_null(strstr(r[1].message, "same entry"), "%s", r[1].message);
    cr_assert_eq(r[2].code, RP_ECONFLICT);
    cr_assert_eq(r[3].code, 0);
    char spec[16];
    cr_assert_eq(sth_get_spec("node", "a", spec, sizeof spec, NULL), 0);
    cr_assert_str_eq(spec, "first");

    /* The conflict was not remembered: the same rid succeeds in a later entry. */
    add_put(&g, "put", "p2", "a", 0, "second");
    apply_group(&g, 8, r);
    cr_assert_eq(r[0].code, 0, "%s", r[0].message);
    cr_assert_eq(r[0].revision, 8);
}

Test(state_group, a_malformed_member_fails_alone)
{
    struct group g = {.n = 0};
    add_put(&g, "put", "p1", "a", 0, "A");
    /* A batch may not be a member. */
    struct rp_buf op, batch;
    rp_buf_init(&op);
    struct rp_buf res;
    sth_make_res(&res, "node", "x", 0, NULL, "X");
    cr_assert_eq(state_cmd_encode(
                     &(struct state_cmd){.op = "put", .res = res.data, .res_len = res.len}, &op),
                 0);
    rp_buf_free(&res);
    sth_encode(&batch,
               (struct state_cmd){
                   .op = "batch", .rid = "b1", .ops = op.data, .ops_len = op.len, .n_ops = 1},
               NULL);
    rp_buf_free(&op);
    g.cmds[g.n] = batch;
    g.bufs[g.n].base = batch.data;
    g.bufs[g.n].len = batch.len;
    g.n++;
    add_put(&g, "put", "p2", "b", 0, "B");
    struct state_result r[3];
    apply_group(&g, 2, r);
    cr_assert_eq(r[0].code, 0);
    cr_assert_eq(r[1].code, RP_EINVAL);
    cr_assert_eq(r[2].code, 0);
    cr_assert_eq(sth_count(sth_state, "node", NULL), 2);
}

Test(state_group, command_keys_tell_which_commands_may_share_an_entry)
{
    struct rp_buf a1, a2, b, batch, ops;
    struct rp_buf res;
    uint64_t ka1, ka2, kb, kbatch;
    sth_make_res(&res, "node", "a", 0, NULL, "1");
    sth_encode(&a1, (struct state_cmd){.op = "put", .rid = "x1"}, &res);
    rp_buf_free(&res);
    sth_encode(&a2, (struct state_cmd){.op = "delete", .rid = "x2", .kind = "node", .name = "a"},
               NULL);
    sth_make_res(&res, "node", "b", 0, NULL, "1");
    sth_encode(&b, (struct state_cmd){.op = "put", .rid = "x3"}, &res);
    rp_buf_init(&ops);
    cr_assert_eq(state_cmd_encode(
                     &(struct state_cmd){.op = "put", .res = res.data, .res_len = res.len}, &ops),
                 0);
    rp_buf_free(&res);
    sth_encode(&batch,
               (struct state_cmd){
                   .op = "batch", .rid = "x4", .ops = ops.data, .ops_len = ops.len, .n_ops = 1},
               NULL);
    cr_assert_eq(state_command_key(a1.data, a1.len, &ka1), 0);
    cr_assert_eq(state_command_key(a2.data, a2.len, &ka2), 0);
    cr_assert_eq(state_command_key(b.data, b.len, &kb), 0);
    cr_assert_eq(state_command_key(batch.data, batch.len, &kbatch), 0);
    cr_assert_neq(ka1, 0);
    cr_assert_eq(ka1, ka2, "a put and a delete of one resource share a key");
    cr_assert_neq(ka1, kb);
    cr_assert_eq(kbatch, 0, "a batch never joins a group");
    uint64_t k = 1;
    cr_assert_eq(state_command_key("\xc0", 1, &k), RP_EINVAL);
    cr_assert_eq(k, 0);
    rp_buf_free(&a1);
    rp_buf_free(&a2);
    rp_buf_free(&b);
    rp_buf_free(&batch);
    rp_buf_free(&ops);
}
