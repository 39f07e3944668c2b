/* jepsen/check_unique.c: single-use items consumed by conditional delete.
 *
 * One-time invites and tokens rely on this: of all the processes racing to
 * consume an item, at most one may be told it succeeded. "info" consumptions
 * may or may not have happened, so they only make duplicates possible, never
 * certain. */
#include "jepsen/check.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

#define LIST_MAX 100
#define CONSUMERS_MAX 8 /* ok consumers listed per duplicated item */

struct item {
    size_t text_off, text_len;    /* canonical JSON in unique_check.text */
    size_t n_ok, n_info, n_fail;  /* consumptions by outcome (unfinished = info) */
    size_t ok_inv[CONSUMERS_MAX]; /* history positions of the first ok consumes' invokes */
    size_t first_ok_comp;         /* earliest ok consume completion, SIZE_MAX if none */
    size_t created_comp;          /* earliest ok create completion, SIZE_MAX if none */
    bool create_attempted;
    bool in_final;
    bool duplicated, unexpected, resurrected, vanished, possible;
};

struct unique_check {
    const struct jepsen_history *h;
    struct jepsen_map ids;
    struct item *items;
    size_t n_items, cap_items;
    struct rp_buf text, scratch;
};

static int item_index(struct unique_check *c, const struct jepsen_json *v, size_t *out)
{
    rp_buf_reset(&c->scratch);
    int rv = jepsen_json_canonical(v, &c->scratch);
    if (rv != 0)
        return rv;
    size_t *slot;
    bool added;
    rv = jepsen_map_put(&c->ids, c->scratch.data, c->scratch.len, c->n_items, &slot, &added);
    if (rv != 0)
        return rv;
    if (added) {
        if (c->n_items == c->cap_items) {
            size_t cap = c->cap_items ? c->cap_items * 2 : 256;
            struct item *it = realloc(c->items, cap * sizeof *it);
            if (it == NULL)
                return rp_err(RP_ENOMEM, "out of memory");
            c->items = it;
            c->cap_items = cap;
        }
        struct item *it = &c->items[c->n_items++];
        memset(it, 0, sizeof *it);
        it->text_off = c->text.len;
        it->text_len = c->scratch.len;
        it->first_ok_comp = SIZE_MAX;
        it->created_comp = SIZE_MAX;
        rv = rp_buf_append(&c->text, c->scratch.data, c->scratch.len);
        if (rv != 0)
            return rv;
    }
    *out = *slot;
    return 0;
}

static int append_item_text(const struct unique_check *c, const struct item *it, struct rp_buf *out)
{
    return rp_buf_append(out, c->text.data + it->text_off, it->text_len);
}

static int append_duplicated(const struct unique_check *c, struct rp_buf *out)
{
    const struct jepsen_history *h = c->h;
    size_t count = 0;
    int rv = rp_buf_append_str(out, ",\"duplicated\":[");
    for (size_t i = 0; rv == 0 && i < c->n_items; i++) {
        const struct item *it = &c->items[i];
        if (!it->duplicated)
            continue;
        if (count++ >= LIST_MAX)
            continue;
        rv = rp_buf_append_str(out, count > 1 ? ",{\"item\":" : "{\"item\":");
        if (rv == 0)
            rv = append_item_text(c, it, out);
        if (rv == 0)
            rv = rp_buf_printf(out, ",\"ok_count\":%zu,\"consumers\":[", it->n_ok);
        size_t listed = it->n_ok < CONSUMERS_MAX ? it->n_ok : CONSUMERS_MAX;
        for (size_t j = 0; rv == 0 && j < listed; j++) {
            const struct jepsen_op *inv = &h->ops[it->ok_inv[j]];
            rv = rp_buf_printf(out,
                               "%s{\"process\":%" PRId64 ",\"invoke_index\":%" PRId64
                               ",\"complete_index\":%" PRId64 "}",
                               j > 0 ? "," : "", inv->process, inv->index, h->ops[inv->peer].index);
        }
        if (rv == 0)
            rv = rp_buf_append_str(out, "]}");
    }
    return rv != 0 ? rv : rp_buf_printf(out, "],\"duplicated_count\":%zu", count);
}

static int append_list(const struct unique_check *c, struct rp_buf *out, const char *name,
                       size_t offset_of_flag)
{
    size_t count = 0;
    int rv = rp_buf_printf(out, ",\"%s\":[", name);
    for (size_t i = 0; rv == 0 && i < c->n_items; i++) {
        const struct item *it = &c->items[i];
        if (!*(const bool *)((const char *)it + offset_of_flag))
            continue;
        if (count < LIST_MAX) {
            if (count > 0)
                rv = rp_buf_append_str(out, ",");
            if (rv == 0)
                rv = append_item_text(c, it, out);
        }
        count++;
    }
    return rv != 0 ? rv : rp_buf_printf(out, "],\"%s_count\":%zu", name, count);
}

int jepsen_check_unique(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                        enum jepsen_verdict *verdict, struct rp_buf *report)
{
    (void)opts;
    struct unique_check c;
    memset(&c, 0, sizeof c);
    c.h = h;
    jepsen_map_init(&c.ids);
    rp_buf_init(&c.text);
    rp_buf_init(&c.scratch);
    int rv = 0;
    size_t n_attempts = 0, n_ok = 0, n_fail = 0, n_info = 0;
    bool any_create = false;
    const struct jepsen_op *final = NULL;

    for (size_t i = 0; rv == 0 && i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (op->nemesis)
            continue;
        if (op->type == JEPSEN_OK && strcmp(op->f, "read") == 0) {
            if (op->value == NULL || op->value->type != JEPSEN_JSON_ARRAY) {
                rv = rp_err(RP_EINVAL,
                            "line %zu: unique model: an ok read's value must be the array of "
                            "items present",
                            op->line);
                break;
            }
            final = op;
            continue;
        }
        if (op->type != JEPSEN_INVOKE)
            continue;
        bool consume = strcmp(op->f, "consume") == 0;
        if (!consume && strcmp(op->f, "create") != 0)
            continue;
        if (op->key == NULL) {
            rv = rp_err(RP_EINVAL, "line %zu: unique model: %s without \"key\" (the item)",
                        op->line, op->f);
            break;
        }
        size_t idx;
        rv = item_index(&c, op->key, &idx);
        if (rv != 0)
            break;
        struct item *it = &c.items[idx];
        const struct jepsen_op *comp = jepsen_history_completion(h, i);
        enum jepsen_op_type outcome = comp == NULL ? JEPSEN_INFO : comp->type;
        if (!consume) {
            any_create = true;
            it->create_attempted = true;
            if (outcome == JEPSEN_OK && op->peer < it->created_comp)
                it->created_comp = op->peer;
            continue;
        }
        n_attempts++;
        if (outcome == JEPSEN_OK) {
            if (it->n_ok < CONSUMERS_MAX)
                it->ok_inv[it->n_ok] = i;
            it->n_ok++;
            n_ok++;
            if (op->peer < it->first_ok_comp)
                it->first_ok_comp = op->peer;
        } else if (outcome == JEPSEN_FAIL) {
            it->n_fail++;
            n_fail++;
        } else {
            it->n_info++;
            n_info++;
        }
    }

    if (rv == 0 && final != NULL) {
        for (size_t j = 0; rv == 0 && j < final->value->len; j++) {
            size_t idx;
            rv = item_index(&c, &final->value->u.items[j], &idx);
            if (rv == 0)
                c.items[idx].in_final = true;
        }
    }

    if (rv == 0) {
        size_t final_inv = final != NULL ? final->peer : 0;
        size_t n_bad = 0, n_possible = 0;
        for (size_t i = 0; i < c.n_items; i++) {
            struct item *it = &c.items[i];
            it->duplicated = it->n_ok >= 2;
            it->unexpected = any_create && it->n_ok > 0 && !it->create_attempted;
            if (final != NULL) {
                it->resurrected = it->in_final && it->first_ok_comp < final_inv;
                it->vanished = !it->in_final && it->created_comp < final_inv && it->n_ok == 0 &&
                               it->n_info == 0;
            }
            it->possible = !it->duplicated && it->n_ok + it->n_info >= 2 && it->n_info > 0;
            n_bad += it->duplicated || it->unexpected || it->resurrected || it->vanished;
            n_possible += it->possible;
        }
        enum jepsen_verdict v = n_bad > 0 ? JEPSEN_INVALID : JEPSEN_VALID;
        rv = rp_buf_printf(report,
                           "{\"valid\":%s,\"model\":\"unique\",\"item_count\":%zu,"
                           "\"attempt_count\":%zu,\"ok_count\":%zu,\"fail_count\":%zu,"
                           "\"info_count\":%zu,\"final_read\":%s",
                           jepsen_verdict_json(v), c.n_items, n_attempts, n_ok, n_fail, n_info,
                           final != NULL ? "true" : "false");
        if (rv == 0)
            rv = append_duplicated(&c, report);
        if (rv == 0)
            rv = append_list(&c, report, "unexpected", offsetof(struct item, unexpected));
        if (rv == 0)
            rv = append_list(&c, report, "resurrected", offsetof(struct item, resurrected));
        if (rv == 0)
            rv = append_list(&c, report, "vanished", offsetof(struct item, vanished));
        if (rv == 0)
            rv = append_list(&c, report, "possible_duplicates", offsetof(struct item, possible));
        if (rv == 0)
            rv = rp_buf_append_str(report, ",\"warnings\":[");
        const char *sep = "";
        if (rv == 0 && n_ok == 0) {
            rv = rp_buf_append_str(report, "\"nothing succeeded: no consume completed ok\"");
            sep = ",";
        }
        if (rv == 0 && n_possible > 0) {
            rv = rp_buf_printf(report,
                               "%s\"%zu items may have been consumed twice (info outcomes)\"", sep,
                               n_possible);
            sep = ",";
        }
        if (rv == 0 && h->reused_after_info > 0)
            rv = rp_buf_printf(report,
                               "%s\"a process invoked again after an info result (%zu times, "
                               "first at line %zu)\"",
                               sep, h->reused_after_info, h->first_reuse_line);
        if (rv == 0)
            rv = rp_buf_append_str(report, "]}");
        if (rv == 0)
            *verdict = v;
    }
    jepsen_map_free(&c.ids);
    free(c.items);
    rp_buf_free(&c.text);
    rp_buf_free(&c.scratch);
    return rv;
}
