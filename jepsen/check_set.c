/* jepsen/check_set.c: the set checker: unique adds, then final reads.
 *
 * What counts, and why:
 * - An add is known to have happened once it completed ok, or once an ok read
 *   returned its element (an info add that shows up did happen).
 * - A read is final when it was invoked after every add was invoked and after
 *   every add that completed had completed: nothing may be in flight but
 *   info adds, which may or may not show up.
 * - lost: an add known to have happened before a final read was invoked, but
 *   missing from that read. unexpected: an element read that no add attempted,
 *   or whose add failed ("fail" must mean it did not happen).
 * - recovered: an info (or unfinished) add present in a final read. */
#include "jepsen/check.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

#define LIST_MAX 100

struct set_elem {
    size_t text_off, text_len;   /* canonical JSON in set_check.text */
    size_t inv;                  /* history position of the add, JEPSEN_NONE if never added */
    enum jepsen_op_type outcome; /* JEPSEN_OK, JEPSEN_FAIL or JEPSEN_INFO (also unfinished) */
    size_t known_at;             /* position after which it is known present; SIZE_MAX if not */
    size_t stamp;                /* last final read (1-based) that contained it */
    bool lost, unexpected, recovered;
};

struct set_check {
    const struct jepsen_history *h;
    struct jepsen_map ids; /* canonical element -> index in @elems */
    struct set_elem *elems;
    size_t n_elems, cap_elems;
    struct rp_buf text;
    struct rp_buf scratch;
    const struct jepsen_json *key; /* the set's key, from the first op that names one */
    size_t key_line;
};

static int elem_index(struct set_check *c, const struct jepsen_json *v, size_t *out, bool *added)
{
    rp_buf_reset(&c->scratch);
    int rv = jepsen_json_canonical(v, &c->scratch);
    if (rv != 0)
        return rv;
    size_t *slot;
    rv = jepsen_map_put(&c->ids, c->scratch.data, c->scratch.len, c->n_elems, &slot, added);
    if (rv != 0)
        return rv;
    if (*added) {
        if (c->n_elems == c->cap_elems) {
            size_t cap = c->cap_elems ? c->cap_elems * 2 : 256;
            struct set_elem *e = realloc(c->elems, cap * sizeof *e);
            if (e == NULL)
                return rp_err(RP_ENOMEM, "out of memory");
            c->elems = e;
            c->cap_elems = cap;
        }
        struct set_elem *e = &c->elems[c->n_elems++];
        memset(e, 0, sizeof *e);
        e->text_off = c->text.len;
        e->text_len = c->scratch.len;
        e->inv = JEPSEN_NONE;
        e->known_at = SIZE_MAX;
        rv = rp_buf_append(&c->text, c->scratch.data, c->scratch.len);
        if (rv != 0)
            return rv;
    }
    *out = *slot;
    return 0;
}

static int check_key(struct set_check *c, const struct jepsen_op *op)
{
    if (op->key == NULL)
        return 0;
    if (c->key == NULL) {
        c->key = op->key;
        c->key_line = op->line;
        return 0;
    }
    if (!jepsen_json_equal(c->key, op->key))
        return rp_err(RP_EINVAL,
                      "line %zu: set model: key differs from the key at line %zu (one set per "
                      "history)",
                      op->line, c->key_line);
    return 0;
}

static int append_list(const struct set_check *c, struct rp_buf *out, const char *name,
                       size_t offset_of_flag)
{
    size_t count = 0;
    int rv = rp_buf_printf(out, ",\"%s\":[", name);
    for (size_t i = 0; rv == 0 && i < c->n_elems; i++) {
        const struct set_elem *e = &c->elems[i];
        if (!*(const bool *)((const char *)e + offset_of_flag))
            continue;
        if (count < LIST_MAX) {
            if (count > 0)
                rv = rp_buf_append_str(out, ",");
            if (rv == 0)
                rv = rp_buf_append(out, c->text.data + e->text_off, e->text_len);
        }
        count++;
    }
    return rv != 0 ? rv : rp_buf_printf(out, "],\"%s_count\":%zu", name, count);
}

int jepsen_check_set(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                     enum jepsen_verdict *verdict, struct rp_buf *report)
{
    (void)opts;
    struct set_check c;
    memset(&c, 0, sizeof c);
    c.h = h;
    jepsen_map_init(&c.ids);
    rp_buf_init(&c.text);
    rp_buf_init(&c.scratch);
    int rv = 0;
    size_t n_attempts = 0, n_ok = 0, n_fail = 0, n_info = 0, n_reads = 0, n_final = 0;
    size_t last_add_inv = 0, last_add_comp = 0;
    bool any_add = false;

    /* Pass 1: the adds. */
    for (size_t i = 0; rv == 0 && i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (op->nemesis || op->type != JEPSEN_INVOKE)
            continue;
        if (strcmp(op->f, "add") == 0 || strcmp(op->f, "read") == 0)
            rv = check_key(&c, op);
        if (rv != 0 || strcmp(op->f, "add") != 0)
            continue;
        if (op->value == NULL) {
            rv = rp_err(RP_EINVAL, "line %zu: set model: add without \"value\"", op->line);
            break;
        }
        size_t idx;
        bool added;
        rv = elem_index(&c, op->value, &idx, &added);
        if (rv != 0)
            break;
        struct set_elem *e = &c.elems[idx];
        if (!added) {
            rv = rp_err(RP_EINVAL,
                        "line %zu: set model: element %.*s is added twice (first at line %zu)",
                        op->line, (int)(e->text_len < 64 ? e->text_len : 64),
                        (const char *)c.text.data + e->text_off, h->ops[e->inv].line);
            break;
        }
        const struct jepsen_op *comp = jepsen_history_completion(h, i);
        e->inv = i;
        e->outcome = comp == NULL ? JEPSEN_INFO : comp->type;
        n_attempts++;
        any_add = true;
        last_add_inv = i;
        if (comp != NULL && op->peer > last_add_comp)
            last_add_comp = op->peer;
        if (e->outcome == JEPSEN_OK) {
            n_ok++;
            e->known_at = op->peer;
        } else if (e->outcome == JEPSEN_FAIL) {
            n_fail++;
        } else {
            n_info++;
        }
    }

    /* Pass 2: every ok read; unexpected elements, and adds seen. */
    for (size_t i = 0; rv == 0 && i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (op->nemesis || op->type != JEPSEN_OK || strcmp(op->f, "read") != 0)
            continue;
        if (op->value == NULL || op->value->type != JEPSEN_JSON_ARRAY) {
            rv = rp_err(RP_EINVAL, "line %zu: set model: an ok read's value must be an array",
                        op->line);
            break;
        }
        n_reads++;
        for (size_t j = 0; rv == 0 && j < op->value->len; j++) {
            size_t idx;
            bool added;
            rv = elem_index(&c, &op->value->u.items[j], &idx, &added);
            if (rv != 0)
                break;
            struct set_elem *e = &c.elems[idx];
            if (e->inv == JEPSEN_NONE || e->outcome == JEPSEN_FAIL)
                e->unexpected = true;
            else if (i < e->known_at)
                e->known_at = i;
        }
    }

    /* Pass 3: the final reads; lost and recovered. */
    for (size_t i = 0; rv == 0 && i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (op->nemesis || op->type != JEPSEN_OK || strcmp(op->f, "read") != 0)
            continue;
        size_t inv = op->peer;
        if (any_add && (inv < last_add_inv || inv < last_add_comp))
            continue;
        size_t stamp = ++n_final;
        for (size_t j = 0; j < op->value->len; j++) {
            size_t *idx = NULL;
            rp_buf_reset(&c.scratch);
            rv = jepsen_json_canonical(&op->value->u.items[j], &c.scratch);
            if (rv != 0)
                break;
            idx = jepsen_map_find(&c.ids, c.scratch.data, c.scratch.len);
            struct set_elem *e = &c.elems[*idx]; /* every element read was added in pass 2 */
            e->stamp = stamp;
            if (e->inv != JEPSEN_NONE && e->outcome == JEPSEN_INFO)
                e->recovered = true;
        }
        for (size_t k = 0; k < c.n_elems; k++) {
            struct set_elem *e = &c.elems[k];
            if (e->known_at < inv && e->stamp != stamp && !e->unexpected)
                e->lost = true;
        }
    }

    if (rv == 0) {
        size_t n_lost = 0, n_unexpected = 0;
        for (size_t k = 0; k < c.n_elems; k++) {
            n_lost += c.elems[k].lost;
            n_unexpected += c.elems[k].unexpected;
        }
        enum jepsen_verdict v = n_lost > 0 || n_unexpected > 0 ? JEPSEN_INVALID
                                : n_final == 0                 ? JEPSEN_UNKNOWN
                                                               : JEPSEN_VALID;
        rv = rp_buf_printf(report,
                           "{\"valid\":%s,\"model\":\"set\",\"attempt_count\":%zu,"
                           "\"ok_count\":%zu,\"fail_count\":%zu,\"info_count\":%zu,"
                           "\"read_count\":%zu,\"final_read_count\":%zu",
                           jepsen_verdict_json(v), n_attempts, n_ok, n_fail, n_info, n_reads,
                           n_final);
        if (rv == 0)
            rv = append_list(&c, report, "lost", offsetof(struct set_elem, lost));
        if (rv == 0)
            rv = append_list(&c, report, "unexpected", offsetof(struct set_elem, unexpected));
        if (rv == 0)
            rv = append_list(&c, report, "recovered", offsetof(struct set_elem, recovered));
        if (rv == 0)
            rv = rp_buf_append_str(report, ",\"warnings\":[");
        const char *sep = "";
        if (rv == 0 && n_final == 0) {
            rv = rp_buf_append_str(report, "\"no final read: the set was never read after "
                                           "the last add\"");
            sep = ",";
        }
        if (rv == 0 && n_ok == 0) {
            rv = rp_buf_printf(report, "%s\"nothing succeeded: no add completed ok\"", sep);
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
    free(c.elems);
    rp_buf_free(&c.text);
    rp_buf_free(&c.scratch);
    return rv;
}
