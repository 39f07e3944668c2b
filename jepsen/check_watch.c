/* jepsen/check_watch.c: watchers that follow the store through faults.
 *
 * Every watcher gets the same changes, in revision order, with nothing left
 * out: that is what lets an agent or proxy rebuild the auth state from a
 * watch. Revision numbers need not be consecutive (the store may spend a
 * revision on something no watcher sees), so gaps are judged relative to the
 * other watchers: a revision one watcher saw inside another's span must be in
 * the other's too. The history shape is in jepsen/history.h. */
#include "jepsen/check.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/json.h"

#define LIST_MAX 100
#define DIFF_MAX 10 /* resources listed per final or snapshot mismatch */
#define ABSENT INT64_MIN

enum wop { W_INIT, W_INIT_DONE, W_PUT, W_DELETE };
static const char *const wop_names[] = {"init", "init_done", "put", "delete"};

struct wevent {
    int64_t rev;
    uint8_t op;   /* enum wop */
    uint32_t res; /* resource id, unused for init_done */
    size_t comp;  /* history position of the completion that carried it */
};

struct watcher {
    int64_t process;
    size_t first_comp;   /* history position of its first completion with events */
    struct wevent *init; /* its snapshot */
    size_t n_init, cap_init;
    struct wevent *ev; /* put and delete events, as received */
    size_t n_ev, cap_ev;
    int64_t start_rev; /* the init_done revision */
    int64_t last_rev;  /* newest change revision received, start_rev if none */
    bool resumed;      /* init_done said "resumed": no snapshot, state unknown */
    bool following;    /* every completion so far was ok */
    bool has_init_done;
};

/* A resource state: sorted (resource, revision) pairs of the present resources. */
struct pair {
    uint32_t res;
    int64_t rev;
};

struct anomalies {
    struct rp_buf list; /* JSON items, comma separated */
    size_t count;
};

enum { A_REORDERED, A_DUPLICATED, A_DIVERGENT, A_GAPS, A_SNAPSHOT, A_FINAL, A_KINDS };
static const char *const anomaly_names[] = {"reordered", "duplicated",        "divergent",
                                            "gaps",      "snapshot_mismatch", "final_mismatch"};

struct watch_check {
    const struct jepsen_history *h;
    struct jepsen_map res_ids; /* "kind\0name" -> resource id */
    struct rp_buf res_text;    /* the names, back to back */
    size_t *res_off;           /* resource i is res_text[res_off[i], res_off[i+1]) */
    size_t n_res, cap_res;
    struct watcher *w;
    size_t n_w, cap_w;
    struct jepsen_map current; /* process -> index of its current watcher + 1 (0: none) */
    int64_t *scratch_state;    /* per resource, ABSENT when not present */
    struct anomalies a[A_KINDS];
    size_t n_events;
    struct rp_buf tmp;
};

/* ---- Resources -------------------------------------------------------- */

static int res_intern(struct watch_check *c, const char *kind, size_t kind_len, const char *name,
                      size_t name_len, uint32_t *id)
{
    rp_buf_reset(&c->tmp);
    int rv = rp_buf_append(&c->tmp, kind, kind_len);
    if (rv == 0)
        rv = rp_buf_append(&c->tmp, "", 1);
    if (rv == 0)
        rv = rp_buf_append(&c->tmp, name, name_len);
    if (rv != 0)
        return rv;
    size_t *slot;
    bool added;
    rv = jepsen_map_put(&c->res_ids, c->tmp.data, c->tmp.len, c->n_res, &slot, &added);
    if (rv != 0)
        return rv;
    if (added) {
        if (c->n_res + 2 > c->cap_res) {
            size_t cap = c->cap_res ? c->cap_res * 2 : 256;
            size_t *off = realloc(c->res_off, cap * sizeof *off);
            if (off == NULL)
                return rp_err(RP_ENOMEM, "out of memory");
            c->res_off = off;
            c->cap_res = cap;
        }
        if (c->n_res == 0)
            c->res_off[0] = 0;
        rv = rp_buf_append(&c->res_text, c->tmp.data, c->tmp.len);
        if (rv != 0)
            return rv;
        c->res_off[++c->n_res] = c->res_text.len;
    }
    *id = (uint32_t)*slot;
    return 0;
}

/* Appends "kind":..,"name":.. of resource @id. */
static int append_res(const struct watch_check *c, uint32_t id, struct rp_buf *out)
{
    const char *s = (const char *)c->res_text.data + c->res_off[id];
    size_t len = c->res_off[id + 1] - c->res_off[id];
    size_t kind_len = strlen(s); /* kind has no NUL: the separator ends it */
    int rv = rp_buf_append_str(out, "\"kind\":");
    if (rv == 0)
        rv = rp_json_str(out, s, kind_len);
    if (rv == 0)
        rv = rp_buf_append_str(out, ",\"name\":");
    if (rv == 0)
        rv = rp_json_str(out, s + kind_len + 1, len - kind_len - 1);
    return rv;
}

/* ---- Reading the events ------------------------------------------------ */

static int event_str(const struct jepsen_json *ev, const char *name, size_t line, size_t item,
                     const struct jepsen_json **out)
{
    const struct jepsen_json *v = jepsen_json_get(ev, name);
    if (v == NULL || v->type != JEPSEN_JSON_STRING || v->len == 0)
        return rp_err(RP_EINVAL, "line %zu: watch event %zu: \"%s\" must be a non-empty string",
                      line, item, name);
    *out = v;
    return 0;
}

static int push_event(struct wevent **arr, size_t *n, size_t *cap, const struct wevent *e)
{
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 64;
        struct wevent *a = realloc(*arr, ncap * sizeof *a);
        if (a == NULL)
            return rp_err(RP_ENOMEM, "out of memory");
        *arr = a;
        *cap = ncap;
    }
    (*arr)[(*n)++] = *e;
    return 0;
}

static int new_watcher(struct watch_check *c, int64_t process, size_t comp, size_t *slot)
{
    if (c->n_w == c->cap_w) {
        size_t cap = c->cap_w ? c->cap_w * 2 : 16;
        struct watcher *w = realloc(c->w, cap * sizeof *w);
        if (w == NULL)
            return rp_err(RP_ENOMEM, "out of memory");
        c->w = w;
        c->cap_w = cap;
    }
    struct watcher *w = &c->w[c->n_w++];
    memset(w, 0, sizeof *w);
    w->process = process;
    w->first_comp = comp;
    w->following = true;
    *slot = c->n_w; /* index + 1 */
    return 0;
}

static int read_completion(struct watch_check *c, size_t pos)
{
    const struct jepsen_op *op = &c->h->ops[pos];
    size_t *cur;
    bool added;
    int rv = jepsen_map_put(&c->current, &op->process, sizeof op->process, 0, &cur, &added);
    if (rv != 0)
        return rv;
    const struct jepsen_json *events = op->value;
    size_t n = 0;
    if (events != NULL && events->type != JEPSEN_JSON_NULL) {
        if (events->type != JEPSEN_JSON_ARRAY)
            return rp_err(RP_EINVAL,
                          "line %zu: a watch completion's value must be an array of "
                          "events",
                          op->line);
        n = events->len;
    }
    for (size_t i = 0; i < n; i++) {
        const struct jepsen_json *ev = &events->u.items[i];
        if (ev->type != JEPSEN_JSON_OBJECT)
            return rp_err(RP_EINVAL, "line %zu: watch event %zu is not an object", op->line, i);
        const struct jepsen_json *rev = jepsen_json_get(ev, "revision");
        const struct jepsen_json *kop = jepsen_json_get(ev, "op");
        if (rev == NULL || rev->type != JEPSEN_JSON_INT || rev->u.i < 0)
            return rp_err(RP_EINVAL,
                          "line %zu: watch event %zu: \"revision\" must be an integer "
                          ">= 0",
                          op->line, i);
        struct wevent e = {.rev = rev->u.i, .comp = pos};
        if (jepsen_json_is_str(kop, "init"))
            e.op = W_INIT;
        else if (jepsen_json_is_str(kop, "init_done"))
            e.op = W_INIT_DONE;
        else if (jepsen_json_is_str(kop, "put"))
            e.op = W_PUT;
        else if (jepsen_json_is_str(kop, "delete"))
            e.op = W_DELETE;
        else
            return rp_err(RP_EINVAL,
                          "line %zu: watch event %zu: \"op\" must be init, init_done, put or "
                          "delete",
                          op->line, i);
        if (e.op != W_INIT_DONE) {
            const struct jepsen_json *kind = NULL, *name = NULL;
            rv = event_str(ev, "kind", op->line, i, &kind);
            if (rv == 0)
                rv = event_str(ev, "name", op->line, i, &name);
            if (rv == 0)
                rv = res_intern(c, kind->u.s, kind->len, name->u.s, name->len, &e.res);
            if (rv != 0)
                return rv;
        }
        /* A snapshot after a complete one starts a new watcher (a new stream). */
        struct watcher *w = *cur ? &c->w[*cur - 1] : NULL;
        if ((e.op == W_INIT || e.op == W_INIT_DONE) && (w == NULL || w->has_init_done)) {
            size_t slot = 0;
            rv = new_watcher(c, op->process, pos, &slot);
            if (rv != 0)
                return rv;
            /* new_watcher may move c->w, and the map slot stays valid (no insert since). */
            *cur = slot;
            w = &c->w[slot - 1];
        }
        if (w == NULL || (!w->has_init_done && e.op >= W_PUT))
            return rp_err(RP_EINVAL,
                          "line %zu: watch event %zu (%s) before the watcher's init_done: each "
                          "watcher starts with its snapshot",
                          op->line, i, wop_names[e.op]);
        c->n_events++;
        switch (e.op) {
        case W_INIT:
            rv = push_event(&w->init, &w->n_init, &w->cap_init, &e);
            break;
        case W_INIT_DONE: {
            const struct jepsen_json *resumed = jepsen_json_get(ev, "resumed");
            w->has_init_done = true;
            w->start_rev = w->last_rev = e.rev;
            w->resumed = resumed != NULL && resumed->type == JEPSEN_JSON_TRUE;
            if (w->resumed && w->n_init > 0)
                return rp_err(RP_EINVAL,
                              "line %zu: watch event %zu: a resumed init_done after init events",
                              op->line, i);
            break;
        }
        default:
            rv = push_event(&w->ev, &w->n_ev, &w->cap_ev, &e);
            if (e.rev > w->last_rev)
                w->last_rev = e.rev;
            break;
        }
        if (rv != 0)
            return rv;
    }
    /* An info or fail completion ends the watch; the process's next events
     * must start with a new snapshot. */
    if (op->type != JEPSEN_OK) {
        if (*cur)
            c->w[*cur - 1].following = false;
        *cur = 0;
    }
    return 0;
}

/* ---- States ------------------------------------------------------------ */

static int cmp_pair(const void *a, const void *b)
{
    const struct pair *x = a, *y = b;
    return x->res < y->res ? -1 : x->res > y->res;
}

/* The state watcher @w had reconstructed at revision @at (its snapshot plus
 * its changes up to @at), as sorted pairs in *@out (malloc'd). */
static int state_at(struct watch_check *c, const struct watcher *w, int64_t at, struct pair **out,
                    size_t *n_out)
{
    int64_t *st = c->scratch_state;
    size_t touched_cap = w->n_init + w->n_ev + 1, n_touched = 0;
    uint32_t *touched = malloc(touched_cap * sizeof *touched);
    struct pair *pairs = malloc(touched_cap * sizeof *pairs);
    if (touched == NULL || pairs == NULL) {
        free(touched);
        free(pairs);
        return rp_err(RP_ENOMEM, "out of memory");
    }
    for (size_t i = 0; i < w->n_init; i++) {
        if (st[w->init[i].res] == ABSENT)
            touched[n_touched++] = w->init[i].res;
        st[w->init[i].res] = w->init[i].rev;
    }
    for (size_t i = 0; i < w->n_ev; i++) {
        const struct wevent *e = &w->ev[i];
        if (e->rev > at)
            continue;
        if (e->op == W_PUT) {
            if (st[e->res] == ABSENT)
                touched[n_touched++] = e->res;
            st[e->res] = e->rev;
        } else {
            st[e->res] = ABSENT; /* stays in @touched; skipped below */
        }
    }
    size_t n = 0;
    for (size_t i = 0; i < n_touched; i++) {
        uint32_t r = touched[i];
        if (st[r] != ABSENT) {
            pairs[n++] = (struct pair){r, st[r]};
            st[r] = ABSENT;
        }
    }
    free(touched);
    qsort(pairs, n, sizeof *pairs, cmp_pair);
    *out = pairs;
    *n_out = n;
    return 0;
}

static int append_pairs_diff(const struct watch_check *c, const struct pair *mine, size_t n_mine,
                             const struct pair *ref, size_t n_ref, struct rp_buf *out, bool *differ)
{
    /* Three lists: in @ref only ("missing"), in @mine only ("extra"), both
     * with different revisions ("different"). */
    int rv = 0;
    *differ = false;
    for (int list = 0; rv == 0 && list < 3; list++) {
        static const char *const names[] = {"missing", "extra", "different"};
        size_t i = 0, j = 0, listed = 0, count = 0;
        rv = rp_buf_printf(out, ",\"%s\":[", names[list]);
        while (rv == 0 && (i < n_mine || j < n_ref)) {
            const struct pair *m = i < n_mine ? &mine[i] : NULL;
            const struct pair *r = j < n_ref ? &ref[j] : NULL;
            const struct pair *show = NULL;
            int64_t other = ABSENT;
            if (m != NULL && (r == NULL || m->res < r->res)) {
                if (list == 1)
                    show = m;
                i++;
            } else if (r != NULL && (m == NULL || r->res < m->res)) {
                if (list == 0)
                    show = r;
                j++;
            } else {
                if (list == 2 && m->rev != r->rev) {
                    show = m;
                    other = r->rev;
                }
                i++;
                j++;
            }
            if (show == NULL)
                continue;
            *differ = true;
            count++;
            if (listed++ >= DIFF_MAX)
                continue;
            rv = rp_buf_append_str(out, listed > 1 ? ",{" : "{");
            if (rv == 0)
                rv = append_res(c, show->res, out);
            if (rv == 0)
                rv = rp_buf_printf(out, ",\"revision\":%" PRId64, show->rev);
            if (rv == 0 && other != ABSENT)
                rv = rp_buf_printf(out, ",\"expected_revision\":%" PRId64, other);
            if (rv == 0)
                rv = rp_buf_append_str(out, "}");
        }
        if (rv == 0)
            rv = rp_buf_printf(out, "],\"%s_count\":%zu", names[list], count);
    }
    return rv;
}

/* ---- Anomalies ---------------------------------------------------------- */

/* Starts one more item of anomaly list @kind; returns NULL when the list is full
 * (the item is counted but not written). */
static struct rp_buf *anomaly_item(struct watch_check *c, int kind)
{
    struct anomalies *a = &c->a[kind];
    if (a->count++ >= LIST_MAX)
        return NULL;
    if (a->list.len > 0 && rp_buf_append_str(&a->list, ",") != 0)
        return NULL;
    return &a->list;
}

static int64_t op_index(const struct watch_check *c, size_t pos)
{
    return c->h->ops[pos].index;
}

/* Per watcher: revisions never go down, and no event comes twice. */
static int check_order(struct watch_check *c, const struct watcher *w)
{
    int rv = 0;
    int64_t prev = w->start_rev;
    size_t group = 0; /* first event of the current revision */
    for (size_t i = 0; rv == 0 && i < w->n_ev; i++) {
        const struct wevent *e = &w->ev[i];
        if (e->rev < prev || (e->rev == prev && i == 0)) {
            struct rp_buf *b = anomaly_item(c, A_REORDERED);
            if (b != NULL)
                rv = rp_buf_printf(b,
                                   "{\"process\":%" PRId64 ",\"revision\":%" PRId64
                                   ",\"after\":%" PRId64 ",\"complete_index\":%" PRId64 "}",
                                   w->process, e->rev, prev, op_index(c, e->comp));
            group = i;
            prev = e->rev > prev ? e->rev : prev;
            continue;
        }
        if (e->rev > prev) {
            group = i;
            prev = e->rev;
            continue;
        }
        for (size_t j = group; j < i; j++) {
            if (w->ev[j].op == e->op && w->ev[j].res == e->res) {
                struct rp_buf *b = anomaly_item(c, A_DUPLICATED);
                if (b != NULL) {
                    rv = rp_buf_printf(
                        b, "{\"process\":%" PRId64 ",\"revision\":%" PRId64 ",\"op\":\"%s\",",
                        w->process, e->rev, wop_names[e->op]);
                    if (rv == 0)
                        rv = append_res(c, e->res, b);
                    if (rv == 0)
                        rv = rp_buf_printf(b, ",\"complete_index\":%" PRId64 "}",
                                           op_index(c, e->comp));
                }
                break;
            }
        }
    }
    return rv;
}

struct rev_group {
    int64_t rev;
    size_t sig_off, sig_len; /* signature in watch_check.tmp-independent storage */
    size_t watcher;          /* the first watcher that saw it */
};

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Distinct change revisions of @w, sorted, in *@out (malloc'd). */
static int watcher_revs(const struct watcher *w, int64_t **out, size_t *n_out)
{
    int64_t *r = malloc((w->n_ev + 1) * sizeof *r);
    if (r == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    for (size_t i = 0; i < w->n_ev; i++)
        r[i] = w->ev[i].rev;
    qsort(r, w->n_ev, sizeof *r, cmp_i64);
    size_t n = 0;
    for (size_t i = 0; i < w->n_ev; i++) {
        if (n == 0 || r[n - 1] != r[i])
            r[n++] = r[i];
    }
    *out = r;
    *n_out = n;
    return 0;
}

/* Watchers agree on each revision's events; the signature of a revision is
 * its events in order, "op kind\0name" each. Fills @all with every revision
 * any watcher saw (sorted, distinct). */
static int check_divergence(struct watch_check *c, int64_t **all, size_t *n_all)
{
    struct jepsen_map first; /* revision -> index in @groups */
    struct rp_buf sigs, sig; /* stored signatures; the one being built */
    struct rev_group *groups = NULL;
    size_t n_groups = 0, cap_groups = 0;
    int rv = 0;
    jepsen_map_init(&first);
    rp_buf_init(&sigs);
    rp_buf_init(&sig);
    for (size_t wi = 0; rv == 0 && wi < c->n_w; wi++) {
        const struct watcher *w = &c->w[wi];
        size_t i = 0;
        while (rv == 0 && i < w->n_ev) {
            int64_t rev = w->ev[i].rev;
            rp_buf_reset(&sig);
            size_t j = i;
            for (; rv == 0 && j < w->n_ev && w->ev[j].rev == rev; j++) {
                rv = rp_buf_printf(&sig, "%u ", w->ev[j].op);
                if (rv == 0)
                    rv = rp_buf_append(&sig, c->res_text.data + c->res_off[w->ev[j].res],
                                       c->res_off[w->ev[j].res + 1] - c->res_off[w->ev[j].res]);
                if (rv == 0)
                    rv = rp_buf_append(&sig, "\n", 1);
            }
            i = j;
            if (rv != 0)
                break;
            size_t *slot;
            bool added;
            rv = jepsen_map_put(&first, &rev, sizeof rev, n_groups, &slot, &added);
            if (rv != 0)
                break;
            if (added) {
                if (n_groups == cap_groups) {
                    size_t cap = cap_groups ? cap_groups * 2 : 256;
                    struct rev_group *g = realloc(groups, cap * sizeof *g);
                    if (g == NULL) {
                        rv = rp_err(RP_ENOMEM, "out of memory");
                        break;
                    }
                    groups = g;
                    cap_groups = cap;
                }
                groups[n_groups++] = (struct rev_group){rev, sigs.len, sig.len, wi};
                rv = rp_buf_append(&sigs, sig.data, sig.len);
                continue;
            }
            const struct rev_group *g = &groups[*slot];
            if (g->watcher == wi)
                continue; /* the same watcher again: reported as reordered */
            if (g->sig_len == sig.len &&
                (sig.len == 0 || memcmp(sigs.data + g->sig_off, sig.data, sig.len) == 0))
                continue;
            struct rp_buf *b = anomaly_item(c, A_DIVERGENT);
            if (b != NULL)
                rv = rp_buf_printf(b,
                                   "{\"revision\":%" PRId64 ",\"process\":%" PRId64
                                   ",\"other_process\":%" PRId64 "}",
                                   rev, w->process, c->w[g->watcher].process);
        }
    }
    if (rv == 0) {
        int64_t *revs = malloc((n_groups + 1) * sizeof *revs);
        if (revs == NULL) {
            rv = rp_err(RP_ENOMEM, "out of memory");
        } else {
            for (size_t i = 0; i < n_groups; i++)
                revs[i] = groups[i].rev;
            qsort(revs, n_groups, sizeof *revs, cmp_i64);
            *all = revs;
            *n_all = n_groups;
        }
    }
    free(groups);
    jepsen_map_free(&first);
    rp_buf_free(&sigs);
    rp_buf_free(&sig);
    return rv;
}

/* Each watcher saw every revision any watcher saw inside its span: after its
 * start, up to its last event, or up to @final_rev if it is still following. */
static int check_gaps(struct watch_check *c, const int64_t *all, size_t n_all, bool have_final,
                      int64_t final_rev)
{
    int rv = 0;
    for (size_t wi = 0; rv == 0 && wi < c->n_w; wi++) {
        const struct watcher *w = &c->w[wi];
        int64_t hi = w->last_rev;
        if (w->following && have_final && final_rev > hi)
            hi = final_rev;
        int64_t *mine = NULL;
        size_t n_mine = 0;
        rv = watcher_revs(w, &mine, &n_mine);
        if (rv != 0)
            break;
        size_t j = 0;
        for (size_t i = 0; rv == 0 && i < n_all; i++) {
            int64_t r = all[i];
            if (r <= w->start_rev || r > hi)
                continue;
            while (j < n_mine && mine[j] < r)
                j++;
            if (j < n_mine && mine[j] == r)
                continue;
            struct rp_buf *b = anomaly_item(c, A_GAPS);
            if (b != NULL)
                rv = rp_buf_printf(b, "{\"process\":%" PRId64 ",\"missing_revision\":%" PRId64 "}",
                                   w->process, r);
        }
        free(mine);
    }
    return rv;
}

/* A watcher's snapshot equals the state an older watcher had rebuilt at that
 * revision (the first older watcher with a snapshot whose events reach it). */
static int check_snapshots(struct watch_check *c)
{
    int rv = 0;
    for (size_t wi = 0; rv == 0 && wi < c->n_w; wi++) {
        const struct watcher *w = &c->w[wi];
        if (w->resumed || !w->has_init_done)
            continue;
        const struct watcher *ref = NULL;
        for (size_t k = 0; k < c->n_w && ref == NULL; k++) {
            const struct watcher *o = &c->w[k];
            if (k != wi && !o->resumed && o->has_init_done && o->start_rev < w->start_rev &&
                o->last_rev >= w->start_rev)
                ref = o;
        }
        if (ref == NULL)
            continue;
        struct pair *mine = NULL, *theirs = NULL;
        size_t n_mine = 0, n_theirs = 0;
        struct watcher snap = *w;
        snap.n_ev = 0; /* the snapshot alone */
        rv = state_at(c, &snap, w->start_rev, &mine, &n_mine);
        if (rv == 0)
            rv = state_at(c, ref, w->start_rev, &theirs, &n_theirs);
        struct rp_buf item;
        rp_buf_init(&item);
        bool differ = false;
        if (rv == 0)
            rv = rp_buf_printf(&item,
                               "{\"process\":%" PRId64 ",\"revision\":%" PRId64
                               ",\"other_process\":%" PRId64,
                               w->process, w->start_rev, ref->process);
        if (rv == 0)
            rv = append_pairs_diff(c, mine, n_mine, theirs, n_theirs, &item, &differ);
        if (rv == 0 && differ) {
            struct rp_buf *b = anomaly_item(c, A_SNAPSHOT);
            if (b != NULL) {
                rv = rp_buf_append(b, item.data, item.len);
                if (rv == 0)
                    rv = rp_buf_append_str(b, "}");
            }
        }
        rp_buf_free(&item);
        free(mine);
        free(theirs);
    }
    return rv;
}

/* The final read as sorted pairs. */
static int final_state(struct watch_check *c, const struct jepsen_op *op, int64_t *rev,
                       struct pair **out, size_t *n_out)
{
    const struct jepsen_json *r = jepsen_json_get(op->value, "revision");
    const struct jepsen_json *list = jepsen_json_get(op->value, "resources");
    if (r == NULL || r->type != JEPSEN_JSON_INT || list == NULL || list->type != JEPSEN_JSON_ARRAY)
        return rp_err(RP_EINVAL,
                      "line %zu: watch model: the final read's value must be {\"revision\": int, "
                      "\"resources\": [...]}",
                      op->line);
    struct pair *pairs = malloc((list->len + 1) * sizeof *pairs);
    if (pairs == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    int rv = 0;
    for (size_t i = 0; rv == 0 && i < list->len; i++) {
        const struct jepsen_json *res = &list->u.items[i], *kind = NULL, *name = NULL;
        const struct jepsen_json *rr = jepsen_json_get(res, "revision");
        rv = event_str(res, "kind", op->line, i, &kind);
        if (rv == 0)
            rv = event_str(res, "name", op->line, i, &name);
        if (rv == 0 && (rr == NULL || rr->type != JEPSEN_JSON_INT))
            rv = rp_err(RP_EINVAL,
                        "line %zu: final read resource %zu: \"revision\" must be an "
                        "integer",
                        op->line, i);
        if (rv == 0)
            rv = res_intern(c, kind->u.s, kind->len, name->u.s, name->len, &pairs[i].res);
        if (rv == 0)
            pairs[i].rev = rr->u.i;
    }
    if (rv == 0) {
        qsort(pairs, list->len, sizeof *pairs, cmp_pair);
        for (size_t i = 1; rv == 0 && i < list->len; i++) {
            if (pairs[i].res == pairs[i - 1].res)
                rv = rp_err(RP_EINVAL, "line %zu: the final read lists a resource twice", op->line);
        }
    }
    if (rv != 0) {
        free(pairs);
        return rv;
    }
    *rev = r->u.i;
    *out = pairs;
    *n_out = list->len;
    return 0;
}

static int check_final(struct watch_check *c, int64_t final_rev, const struct pair *ref,
                       size_t n_ref, size_t *n_compared)
{
    int rv = 0;
    *n_compared = 0;
    for (size_t wi = 0; rv == 0 && wi < c->n_w; wi++) {
        const struct watcher *w = &c->w[wi];
        if (!w->following || w->resumed || !w->has_init_done)
            continue;
        (*n_compared)++;
        struct pair *mine = NULL;
        size_t n_mine = 0;
        rv = state_at(c, w, final_rev, &mine, &n_mine);
        if (rv != 0)
            break;
        struct rp_buf item;
        rp_buf_init(&item);
        bool differ = false;
        rv = rp_buf_printf(&item, "{\"process\":%" PRId64 ",\"last_revision\":%" PRId64, w->process,
                           w->last_rev);
        if (rv == 0)
            rv = append_pairs_diff(c, mine, n_mine, ref, n_ref, &item, &differ);
        if (rv == 0 && differ) {
            struct rp_buf *b = anomaly_item(c, A_FINAL);
            if (b != NULL) {
                rv = rp_buf_append(b, item.data, item.len);
                if (rv == 0)
                    rv = rp_buf_append_str(b, "}");
            }
        }
        rp_buf_free(&item);
        free(mine);
    }
    return rv;
}

/* ---- Entry point -------------------------------------------------------- */

int jepsen_check_watch(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                       enum jepsen_verdict *verdict, struct rp_buf *report)
{
    (void)opts;
    struct watch_check c;
    memset(&c, 0, sizeof c);
    c.h = h;
    jepsen_map_init(&c.res_ids);
    jepsen_map_init(&c.current);
    rp_buf_init(&c.res_text);
    rp_buf_init(&c.tmp);
    for (int k = 0; k < A_KINDS; k++)
        rp_buf_init(&c.a[k].list);
    int rv = 0;
    const struct jepsen_op *final = NULL;
    struct pair *final_pairs = NULL;
    size_t n_final_pairs = 0, n_all = 0, n_compared = 0;
    int64_t final_rev = 0, *all = NULL;

    for (size_t i = 0; rv == 0 && i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        if (op->nemesis || op->type == JEPSEN_INVOKE)
            continue;
        if (strcmp(op->f, "watch") == 0)
            rv = read_completion(&c, i);
        else if (strcmp(op->f, "read") == 0 && op->type == JEPSEN_OK)
            final = op;
    }
    if (rv == 0 && final != NULL)
        rv = final_state(&c, final, &final_rev, &final_pairs, &n_final_pairs);
    if (rv == 0) {
        c.scratch_state = malloc((c.n_res + 1) * sizeof *c.scratch_state);
        if (c.scratch_state == NULL)
            rv = rp_err(RP_ENOMEM, "out of memory");
        for (size_t i = 0; rv == 0 && i < c.n_res; i++)
            c.scratch_state[i] = ABSENT;
    }
    for (size_t wi = 0; rv == 0 && wi < c.n_w; wi++)
        rv = check_order(&c, &c.w[wi]);
    if (rv == 0)
        rv = check_divergence(&c, &all, &n_all);
    if (rv == 0)
        rv = check_gaps(&c, all, n_all, final != NULL, final_rev);
    if (rv == 0)
        rv = check_snapshots(&c);
    if (rv == 0 && final != NULL)
        rv = check_final(&c, final_rev, final_pairs, n_final_pairs, &n_compared);

    if (rv == 0) {
        size_t n_bad = 0, n_following = 0, n_resumed = 0;
        for (int k = 0; k < A_KINDS; k++)
            n_bad += c.a[k].count;
        for (size_t wi = 0; wi < c.n_w; wi++) {
            n_following += c.w[wi].following;
            n_resumed += c.w[wi].following && c.w[wi].resumed;
        }
        enum jepsen_verdict v = n_bad > 0                     ? JEPSEN_INVALID
                                : final == NULL || c.n_w == 0 ? JEPSEN_UNKNOWN
                                : n_compared == 0             ? JEPSEN_UNKNOWN
                                                              : JEPSEN_VALID;
        rv = rp_buf_printf(report,
                           "{\"valid\":%s,\"model\":\"watch\",\"watcher_count\":%zu,"
                           "\"following_count\":%zu,\"event_count\":%zu,\"revision_count\":%zu,"
                           "\"final_revision\":",
                           jepsen_verdict_json(v), c.n_w, n_following, c.n_events, n_all);
        if (rv == 0)
            rv = final != NULL ? rp_buf_printf(report, "%" PRId64, final_rev)
                               : rp_buf_append_str(report, "null");
        for (int k = 0; rv == 0 && k < A_KINDS; k++) {
            rv = rp_buf_printf(report, ",\"%s_count\":%zu,\"%s\":[", anomaly_names[k], c.a[k].count,
                               anomaly_names[k]);
            if (rv == 0 && c.a[k].list.len > 0)
                rv = rp_buf_append(report, c.a[k].list.data, c.a[k].list.len);
            if (rv == 0)
                rv = rp_buf_append_str(report, "]");
        }
        if (rv == 0)
            rv = rp_buf_append_str(report, ",\"warnings\":[");
        const char *sep = "";
        if (rv == 0 && c.n_w == 0) {
            rv = rp_buf_append_str(report, "\"no watcher events in the history\"");
            sep = ",";
        }
        if (rv == 0 && final == NULL) {
            rv = rp_buf_printf(report, "%s\"no final read: final states not compared\"", sep);
            sep = ",";
        }
        if (rv == 0 && final != NULL && c.n_w > 0 && n_compared == 0) {
            rv = rp_buf_printf(
                report, "%s\"no watcher with a snapshot was still following at the end\"", sep);
            sep = ",";
        }
        if (rv == 0 && n_resumed > 0) {
            rv = rp_buf_printf(report,
                               "%s\"%zu following watchers resumed without a snapshot: not "
                               "compared with the final read\"",
                               sep, n_resumed);
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

    for (size_t wi = 0; wi < c.n_w; wi++) {
        free(c.w[wi].init);
        free(c.w[wi].ev);
    }
    free(c.w);
    free(all);
    free(final_pairs);
    free(c.scratch_state);
    free(c.res_off);
    jepsen_map_free(&c.res_ids);
    jepsen_map_free(&c.current);
    rp_buf_free(&c.res_text);
    rp_buf_free(&c.tmp);
    for (int k = 0; k < A_KINDS; k++)
        rp_buf_free(&c.a[k].list);
    return rv;
}
