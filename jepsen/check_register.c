/* jepsen/check_register.c: linearizability of compare-and-swap registers.
 *
 * The search is Wing & Gong's, with the two improvements that make it
 * practical (Lowe, "Testing for linearizability", 2017; also Knossos' wgl and
 * Porcupine):
 *
 * - Just-in-time linearization. The invokes and completions of the ok ops of
 *   one key sit in a doubly linked list in history order. The only ops that may
 *   be linearized next are those invoked before the first completion still in
 *   the list: that completion's op must take effect before it returns. Placing
 *   an op unlinks its invoke and completion; backtracking relinks them.
 * - A memo of the configurations already explored, (set of linearized ops,
 *   register value): reaching one again cannot succeed where it failed before.
 *   The set is a bitset over the key's ops in invoke order, stored compactly
 *   as (first word that is not all ones, the words up to the last non-zero
 *   one), and hashed incrementally (one random 64-bit word per op, xored).
 *
 * Info ops (and ops never completed) may take effect at any time after their
 * invoke, or never: they have no completion in the list and sit in a second
 * list, tried only after every ok candidate. The search succeeds as soon as
 * every ok op is placed: open info ops can then be placed last, or not at all.
 * Before searching, an info write or cas whose value no remaining op observes
 * (no read returns it, no cas expects it) is dropped: placing it can never
 * explain anything, and dropping it never hides a violation. Info and failed
 * reads are dropped too (they constrain nothing), and so are failed ops.
 *
 * A read whose value equals the current register value is placed at once and
 * never reconsidered: it changes nothing and every other candidate could come
 * after it (all of them complete after it was invoked), so if a linearization
 * exists from here, one exists that starts with that read. */
#include "jepsen/check.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/errors.h"
#include "lib/json.h"

#define NIL (-1)
#define MAX_PENDING 16 /* ops listed as "pending" in an anomaly */

enum reg_f { REG_READ, REG_WRITE, REG_CAS };

static const char *const reg_f_names[] = {"read", "write", "cas"};

/* One read, write or cas of a key, as the search sees it. */
struct reg_op {
    uint8_t f;     /* enum reg_f */
    bool info;     /* completion unknown: may take effect any time after invoke */
    bool pruned;   /* dropped before the search */
    uint32_t a, b; /* read: value read; write: value; cas: expected, new (value ids) */
    size_t inv;    /* history position of the invoke */
    size_t comp;   /* history position of the completion, JEPSEN_NONE if none */
    /* Search-time links. */
    int32_t call_ent, ret_ent; /* ok ops: entries in the main list */
    int32_t node;              /* info ops: node in the info list */
};

struct reg_key {
    const struct jepsen_json *key; /* borrowed from the history */
    struct reg_op *ops;            /* owned; in invoke order */
    size_t n, cap;
    size_t n_invokes, n_ok, n_fail, n_info, n_pruned;
    enum jepsen_verdict verdict;
    bool decided;
    const char *reason; /* why unknown */
    uint64_t configs;
    double seconds;
    struct rp_buf anomaly; /* JSON object, set when invalid */
};

struct reg_check {
    const struct jepsen_history *h;
    struct jepsen_map key_ids; /* canonical key -> index in @keys */
    struct reg_key *keys;
    size_t n_keys, cap_keys;
    struct jepsen_map value_ids; /* canonical value -> id; id 0 is null */
    struct rp_buf value_text;    /* canonical values, back to back */
    size_t *value_off;           /* value i is value_text[value_off[i], value_off[i+1]) */
    size_t n_values, cap_values;
    size_t n_invokes, n_ok;
    struct rp_buf scratch;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- Values ------------------------------------------------------------ */

static int intern_text(struct reg_check *c, const char *text, size_t len, uint32_t *id)
{
    size_t *slot;
    bool added;
    int rv = jepsen_map_put(&c->value_ids, text, len, c->n_values, &slot, &added);
    if (rv != 0)
        return rv;
    if (added) {
        if (c->n_values + 2 > c->cap_values) {
            size_t cap = c->cap_values ? c->cap_values * 2 : 256;
            size_t *off = realloc(c->value_off, cap * sizeof *off);
            if (off == NULL)
                return rp_err(RP_ENOMEM, "out of memory interning values");
            c->value_off = off;
            c->cap_values = cap;
        }
        if (c->n_values == 0)
            c->value_off[0] = 0;
        rv = rp_buf_append(&c->value_text, text, len);
        if (rv != 0)
            return rv;
        c->n_values++;
        c->value_off[c->n_values] = c->value_text.len;
        if (c->n_values > UINT32_MAX - 1)
            return rp_err(RP_ENOMEM, "more than 2^32 distinct values");
    }
    *id = (uint32_t)*slot;
    return 0;
}

static int intern(struct reg_check *c, const struct jepsen_json *v, uint32_t *id)
{
    rp_buf_reset(&c->scratch);
    int rv = jepsen_json_canonical(v, &c->scratch);
    if (rv != 0)
        return rv;
    return intern_text(c, (const char *)c->scratch.data, c->scratch.len, id);
}

static int append_value(const struct reg_check *c, uint32_t id, struct rp_buf *out)
{
    return rp_buf_append(out, c->value_text.data + c->value_off[id],
                         c->value_off[id + 1] - c->value_off[id]);
}

/* ---- Collecting the ops of each key ----------------------------------- */

static int key_index(struct reg_check *c, const struct jepsen_json *key, size_t *out)
{
    rp_buf_reset(&c->scratch);
    int rv = jepsen_json_canonical(key, &c->scratch);
    if (rv != 0)
        return rv;
    size_t *slot;
    bool added;
    rv = jepsen_map_put(&c->key_ids, c->scratch.data, c->scratch.len, c->n_keys, &slot, &added);
    if (rv != 0)
        return rv;
    if (added) {
        if (c->n_keys == c->cap_keys) {
            size_t cap = c->cap_keys ? c->cap_keys * 2 : 16;
            struct reg_key *keys = realloc(c->keys, cap * sizeof *keys);
            if (keys == NULL)
                return rp_err(RP_ENOMEM, "out of memory");
            c->keys = keys;
            c->cap_keys = cap;
        }
        struct reg_key *k = &c->keys[c->n_keys++];
        memset(k, 0, sizeof *k);
        k->key = key;
        rp_buf_init(&k->anomaly);
    }
    *out = *slot;
    return 0;
}

static int push_op(struct reg_key *k, const struct reg_op *op)
{
    if (k->n == k->cap) {
        size_t cap = k->cap ? k->cap * 2 : 64;
        struct reg_op *ops = realloc(k->ops, cap * sizeof *ops);
        if (ops == NULL)
            return rp_err(RP_ENOMEM, "out of memory");
        k->ops = ops;
        k->cap = cap;
    }
    k->ops[k->n++] = *op;
    return 0;
}

/* A completion may repeat the invoke's value; if it gives another, the
 * harness recorded something inconsistent. */
static int check_echo(const struct jepsen_op *inv, const struct jepsen_op *comp)
{
    if (comp == NULL || comp->value == NULL || comp->value->type == JEPSEN_JSON_NULL)
        return 0;
    if (!jepsen_json_equal(comp->value, inv->value))
        return rp_err(RP_EINVAL,
                      "line %zu: %s completion value differs from the value of its invoke at "
                      "line %zu",
                      comp->line, inv->f, inv->line);
    return 0;
}

static int collect_op(struct reg_check *c, size_t i)
{
    const struct jepsen_history *h = c->h;
    const struct jepsen_op *inv = &h->ops[i];
    const struct jepsen_op *comp = jepsen_history_completion(h, i);
    struct reg_op op;
    int rv;

    memset(&op, 0, sizeof op);
    if (strcmp(inv->f, "read") == 0)
        op.f = REG_READ;
    else if (strcmp(inv->f, "write") == 0)
        op.f = REG_WRITE;
    else if (strcmp(inv->f, "cas") == 0)
        op.f = REG_CAS;
    else
        return rp_err(RP_EINVAL, "line %zu: register model: f \"%.64s\" is not read, write or cas",
                      inv->line, inv->f);
    if (inv->key == NULL)
        return rp_err(RP_EINVAL, "line %zu: register model: %s without \"key\"", inv->line, inv->f);
    op.inv = i;
    op.comp = inv->peer;

    switch (op.f) {
    case REG_READ:
        if (comp != NULL && comp->type == JEPSEN_OK) {
            if (comp->value == NULL)
                return rp_err(RP_EINVAL,
                              "line %zu: register model: ok read without \"value\" (use null "
                              "for an empty register)",
                              comp->line);
            rv = intern(c, comp->value, &op.a);
            if (rv != 0)
                return rv;
        }
        break;
    case REG_WRITE:
        if (inv->value == NULL)
            return rp_err(RP_EINVAL, "line %zu: register model: write without \"value\"",
                          inv->line);
        rv = check_echo(inv, comp);
        if (rv == 0)
            rv = intern(c, inv->value, &op.a);
        if (rv != 0)
            return rv;
        break;
    case REG_CAS:
        if (inv->value == NULL || inv->value->type != JEPSEN_JSON_ARRAY || inv->value->len != 2)
            return rp_err(RP_EINVAL, "line %zu: register model: cas value must be [expected, new]",
                          inv->line);
        rv = check_echo(inv, comp);
        if (rv == 0)
            rv = intern(c, &inv->value->u.items[0], &op.a);
        if (rv == 0)
            rv = intern(c, &inv->value->u.items[1], &op.b);
        if (rv != 0)
            return rv;
        break;
    }

    size_t ki = 0;
    rv = key_index(c, inv->key, &ki);
    if (rv != 0)
        return rv;
    struct reg_key *k = &c->keys[ki];
    k->n_invokes++;
    c->n_invokes++;
    if (comp != NULL && comp->type == JEPSEN_FAIL) {
        k->n_fail++; /* did not happen: nothing to place */
        return 0;
    }
    if (comp == NULL || comp->type == JEPSEN_INFO) {
        k->n_info++;
        if (op.f == REG_READ) {
            k->n_pruned++; /* an unknown read constrains nothing */
            return 0;
        }
        op.info = true;
    } else {
        k->n_ok++;
        c->n_ok++;
    }
    return push_op(k, &op);
}

/* Drops info writes and cas whose value no remaining op observes, until none
 * is left to drop (dropping an info cas may unobserve its expected value).
 * @obs is scratch of c->n_values counters, all zero on entry and on return. */
static void prune_unobserved(struct reg_key *k, uint32_t *obs)
{
    for (size_t i = 0; i < k->n; i++) {
        const struct reg_op *op = &k->ops[i];
        if (op->f == REG_CAS || (op->f == REG_READ && !op->info))
            obs[op->a]++;
    }
    bool changed = true;
    while (changed) {
        changed = false;
        for (size_t i = 0; i < k->n; i++) {
            struct reg_op *op = &k->ops[i];
            if (!op->info || op->pruned)
                continue;
            uint32_t produced = op->f == REG_WRITE ? op->a : op->b;
            if (obs[produced] > 0)
                continue;
            op->pruned = true;
            k->n_pruned++;
            if (op->f == REG_CAS) {
                obs[op->a]--;
                changed = true;
            }
        }
    }
    for (size_t i = 0; i < k->n; i++) {
        const struct reg_op *op = &k->ops[i];
        obs[op->a] = 0;
        obs[op->b] = 0;
    }
}

/* ---- The search -------------------------------------------------------- */

/* An entry of the main list (invokes and completions of ok ops) or of the
 * info list (invokes of info ops). Index 0 of each list is its head. */
struct ent {
    int32_t op;
    int32_t prev, next;
    bool is_ret;
};

struct frame {
    int32_t op;          /* the op placed */
    uint32_t prev_state; /* register value before it */
    int32_t bound;       /* info ops: the main-list completion that bounded the choice */
    bool forced;         /* a greedy read: no alternative to try when popped */
};

struct memo_entry {
    uint64_t hash;
    size_t off;     /* first word in memo_words */
    uint32_t state; /* register value */
    uint32_t lo;    /* words below lo are all ones */
    uint32_t nw;    /* words stored; words from lo + nw on are zero */
};

enum { TRY_SKIP, TRY_PLACED, TRY_SEEN, TRY_NOMEM };
enum { RESULT_VALID, RESULT_INVALID, RESULT_TIME, RESULT_MEMORY };

struct search {
    const struct reg_check *c;
    struct reg_op *ops; /* the key's ops that are not pruned, in invoke order */
    size_t n, n_ok;
    size_t remaining; /* ok ops not placed yet */
    struct ent *ent, *inf;
    uint64_t *bits;
    size_t nwords, lo, end; /* see struct memo_entry */
    uint64_t hset;          /* xor of the placed ops' random words */
    uint32_t state;
    struct frame *stack;
    size_t sp;
    /* Memo. */
    struct memo_entry *memo;
    size_t n_memo, cap_memo;
    uint64_t *words;
    size_t n_words, cap_words;
    uint32_t *table; /* entry index + 1, 0 = empty */
    size_t cap_table;
    size_t mem_fixed, mem_limit;
    /* Budget. */
    uint64_t deadline;
    uint64_t steps;
    /* The deepest dead end, for the report. */
    bool have_best;
    size_t best_depth;
    int32_t best_op, best_prev;
    uint32_t best_state;
    int32_t best_pending[MAX_PENDING];
    size_t n_best_pending, best_pending_total;
};

static uint64_t op_word(int32_t id)
{
    return jepsen_mix64((uint64_t)id * 0x9e3779b97f4a7c15ULL + 0x2545f4914f6cdd1dULL);
}

static void bits_set(struct search *s, int32_t id)
{
    size_t w = (size_t)id >> 6;
    s->bits[w] |= 1ULL << (id & 63);
    s->hset ^= op_word(id);
    while (s->lo < s->nwords && s->bits[s->lo] == ~0ULL)
        s->lo++;
    if (w + 1 > s->end)
        s->end = w + 1;
}

static void bits_clear(struct search *s, int32_t id)
{
    size_t w = (size_t)id >> 6;
    s->bits[w] &= ~(1ULL << (id & 63));
    s->hset ^= op_word(id);
    if (w < s->lo)
        s->lo = w;
    while (s->end > 0 && s->bits[s->end - 1] == 0)
        s->end--;
}

static size_t memo_bytes(const struct search *s)
{
    return s->mem_fixed + s->cap_memo * sizeof *s->memo + s->cap_words * sizeof *s->words +
           s->cap_table * sizeof *s->table;
}

static bool memo_grow_table(struct search *s)
{
    size_t cap = s->cap_table ? s->cap_table * 2 : 1024;
    if (s->mem_fixed + s->cap_memo * sizeof *s->memo + s->cap_words * sizeof *s->words +
            cap * sizeof *s->table >
        s->mem_limit)
        return false;
    uint32_t *t = calloc(cap, sizeof *t);
    if (t == NULL)
        return false;
    for (size_t e = 0; e < s->n_memo; e++) {
        size_t i = s->memo[e].hash & (cap - 1);
        while (t[i] != 0)
            i = (i + 1) & (cap - 1);
        t[i] = (uint32_t)(e + 1);
    }
    free(s->table);
    s->table = t;
    s->cap_table = cap;
    return true;
}

/* 1 when the configuration (current set, @state) was new and is now recorded,
 * 0 when it was seen before, -1 when the memory limit is reached. */
static int memo_add(struct search *s, uint32_t state)
{
    uint64_t hash = s->hset ^ jepsen_mix64((uint64_t)state + 0x632be59bd9b4e019ULL);
    size_t nw = s->end > s->lo ? s->end - s->lo : 0;
    const uint64_t *w = s->bits + s->lo;
    if ((s->n_memo + 1) * 2 > s->cap_table && !memo_grow_table(s))
        return -1;
    size_t mask = s->cap_table - 1, i;
    for (i = hash & mask; s->table[i] != 0; i = (i + 1) & mask) {
        const struct memo_entry *m = &s->memo[s->table[i] - 1];
        if (m->hash == hash && m->state == state && m->lo == s->lo && m->nw == nw &&
            memcmp(s->words + m->off, w, nw * sizeof *w) == 0)
            return 0;
    }
    if (s->n_memo == s->cap_memo) {
        size_t cap = s->cap_memo ? s->cap_memo * 2 : 1024;
        if (s->n_memo >= UINT32_MAX - 1 ||
            memo_bytes(s) + (cap - s->cap_memo) * sizeof *s->memo > s->mem_limit)
            return -1;
        struct memo_entry *m = realloc(s->memo, cap * sizeof *m);
        if (m == NULL)
            return -1;
        s->memo = m;
        s->cap_memo = cap;
    }
    if (s->n_words + nw > s->cap_words) {
        size_t cap = s->cap_words ? s->cap_words * 2 : 4096;
        while (cap < s->n_words + nw)
            cap *= 2;
        if (memo_bytes(s) + (cap - s->cap_words) * sizeof *s->words > s->mem_limit)
            return -1;
        uint64_t *words = realloc(s->words, cap * sizeof *words);
        if (words == NULL)
            return -1;
        s->words = words;
        s->cap_words = cap;
    }
    struct memo_entry *m = &s->memo[s->n_memo];
    m->hash = hash;
    m->off = s->n_words;
    m->state = state;
    m->lo = (uint32_t)s->lo;
    m->nw = (uint32_t)nw;
    if (nw > 0)
        memcpy(s->words + s->n_words, w, nw * sizeof *w);
    s->n_words += nw;
    s->table[i] = (uint32_t)(++s->n_memo);
    return 1;
}

static bool step(const struct reg_op *op, uint32_t state, uint32_t *next)
{
    switch (op->f) {
    case REG_READ:
        *next = state;
        return op->a == state;
    case REG_WRITE:
        *next = op->a;
        return true;
    default:
        *next = op->b;
        return op->a == state;
    }
}

static void list_remove(struct ent *l, int32_t e)
{
    l[l[e].prev].next = l[e].next;
    if (l[e].next != NIL)
        l[l[e].next].prev = l[e].prev;
}

/* Undoes list_remove(@l, @e); removals must be undone in reverse order. */
static void list_restore(struct ent *l, int32_t e)
{
    l[l[e].prev].next = e;
    if (l[e].next != NIL)
        l[l[e].next].prev = e;
}

static int try_place(struct search *s, int32_t id, int32_t bound, bool forced)
{
    struct reg_op *op = &s->ops[id];
    uint32_t next;
    if (!step(op, s->state, &next))
        return TRY_SKIP;
    bits_set(s, id);
    int added = memo_add(s, next);
    if (added <= 0) {
        bits_clear(s, id);
        return added == 0 ? TRY_SEEN : TRY_NOMEM;
    }
    struct frame *f = &s->stack[s->sp++];
    f->op = id;
    f->prev_state = s->state;
    f->bound = bound;
    f->forced = forced;
    s->state = next;
    if (op->info) {
        list_remove(s->inf, op->node);
    } else {
        list_remove(s->ent, op->call_ent);
        list_remove(s->ent, op->ret_ent);
        s->remaining--;
    }
    return TRY_PLACED;
}

static void undo(struct search *s, const struct frame *f)
{
    struct reg_op *op = &s->ops[f->op];
    if (op->info) {
        list_restore(s->inf, op->node);
    } else {
        list_restore(s->ent, op->ret_ent);
        list_restore(s->ent, op->call_ent);
        s->remaining++;
    }
    bits_clear(s, f->op);
    s->state = f->prev_state;
}

/* Remembers the deepest configuration where no candidate could be placed
 * before the completion @bound (a main-list entry). */
static void note_dead_end(struct search *s, int32_t bound)
{
    size_t depth = s->n_ok - s->remaining;
    if (s->have_best && depth <= s->best_depth)
        return;
    s->have_best = true;
    s->best_depth = depth;
    s->best_op = s->ent[bound].op;
    s->best_state = s->state;
    s->best_prev = s->sp > 0 ? s->stack[s->sp - 1].op : NIL;
    s->n_best_pending = 0;
    s->best_pending_total = 0;
    for (int32_t e = s->ent[0].next; e != NIL && e != bound; e = s->ent[e].next) {
        if (s->n_best_pending < MAX_PENDING)
            s->best_pending[s->n_best_pending++] = s->ent[e].op;
        s->best_pending_total++;
    }
    size_t limit = s->ops[s->ent[bound].op].comp;
    for (int32_t e = s->inf[0].next; e != NIL; e = s->inf[e].next) {
        if (s->ops[s->inf[e].op].inv > limit)
            break;
        if (s->n_best_pending < MAX_PENDING)
            s->best_pending[s->n_best_pending++] = s->inf[e].op;
        s->best_pending_total++;
    }
}

static int run(struct search *s)
{
    int32_t cur, bound = NIL;
    bool in_info;

restart:
    if (s->remaining == 0)
        return RESULT_VALID;
    /* Greedy reads first: see the top of the file. */
    for (int32_t e = s->ent[0].next; e != NIL && !s->ent[e].is_ret; e = s->ent[e].next) {
        const struct reg_op *op = &s->ops[s->ent[e].op];
        if (op->f != REG_READ || op->a != s->state)
            continue;
        int r = try_place(s, s->ent[e].op, NIL, true);
        if (r == TRY_PLACED)
            goto restart;
        if (r == TRY_SEEN)
            goto backtrack; /* this configuration was explored from its read on */
        return RESULT_MEMORY;
    }
    in_info = false;
    cur = s->ent[0].next;

scan:
    for (;;) {
        if ((++s->steps & 255) == 0 && now_ns() > s->deadline)
            return RESULT_TIME;
        int32_t id;
        if (!in_info) {
            if (cur == NIL)
                return RESULT_VALID; /* unreachable while ok ops remain */
            if (s->ent[cur].is_ret) {
                bound = cur;
                in_info = true;
                cur = s->inf[0].next;
                continue;
            }
            id = s->ent[cur].op;
            cur = s->ent[cur].next;
            if (s->ops[id].f == REG_READ)
                continue; /* the greedy pass found no read that fits */
        } else {
            if (cur == NIL || s->ops[s->inf[cur].op].inv > s->ops[s->ent[bound].op].comp) {
                note_dead_end(s, bound);
                goto backtrack;
            }
            id = s->inf[cur].op;
            cur = s->inf[cur].next;
        }
        int r = try_place(s, id, in_info ? bound : NIL, false);
        if (r == TRY_PLACED)
            goto restart;
        if (r == TRY_NOMEM)
            return RESULT_MEMORY;
    }

backtrack:
    for (;;) {
        if (s->sp == 0)
            return RESULT_INVALID;
        struct frame f = s->stack[--s->sp];
        undo(s, &f);
        if (f.forced)
            continue;
        const struct reg_op *op = &s->ops[f.op];
        if (op->info) {
            in_info = true;
            bound = f.bound;
            cur = s->inf[op->node].next;
        } else {
            in_info = false;
            cur = s->ent[op->call_ent].next;
        }
        goto scan;
    }
}

static int cmp_comp(const void *a, const void *b, void *arg)
{
    const struct reg_op *ops = arg;
    size_t x = ops[*(const int32_t *)a].comp, y = ops[*(const int32_t *)b].comp;
    return x < y ? -1 : x > y;
}

static void search_free(struct search *s)
{
    free(s->ops);
    free(s->ent);
    free(s->inf);
    free(s->bits);
    free(s->stack);
    free(s->memo);
    free(s->words);
    free(s->table);
}

/* Builds the lists of key @k's remaining ops. */
static int search_init(struct search *s, const struct reg_check *c, const struct reg_key *k,
                       size_t mem_limit, uint64_t deadline)
{
    memset(s, 0, sizeof *s);
    s->c = c;
    s->mem_limit = mem_limit;
    s->deadline = deadline;
    size_t n = 0, n_ok = 0;
    for (size_t i = 0; i < k->n; i++) {
        if (!k->ops[i].pruned) {
            n++;
            n_ok += !k->ops[i].info;
        }
    }
    if (n > INT32_MAX / 2)
        return rp_err(RP_ENOMEM, "key has too many ops (%zu)", n);
    s->n = n;
    s->n_ok = n_ok;
    s->remaining = n_ok;
    s->nwords = (n + 63) / 64;
    s->ops = malloc((n ? n : 1) * sizeof *s->ops);
    s->ent = malloc((2 * n_ok + 1) * sizeof *s->ent);
    s->inf = malloc((n - n_ok + 1) * sizeof *s->inf);
    s->bits = calloc(s->nwords ? s->nwords : 1, sizeof *s->bits);
    s->stack = malloc((n ? n : 1) * sizeof *s->stack);
    int32_t *by_comp = malloc((n_ok ? n_ok : 1) * sizeof *by_comp);
    if (s->ops == NULL || s->ent == NULL || s->inf == NULL || s->bits == NULL || s->stack == NULL ||
        by_comp == NULL) {
        free(by_comp);
        return rp_err(RP_ENOMEM, "out of memory for a key of %zu ops", n);
    }
    s->mem_fixed =
        n * (sizeof *s->ops + sizeof *s->stack + 2 * sizeof *s->ent) + s->nwords * sizeof *s->bits;

    n = 0;
    size_t n_info = 0, m = 0;
    s->inf[0] = (struct ent){NIL, NIL, NIL, false};
    for (size_t i = 0; i < k->n; i++) {
        if (k->ops[i].pruned)
            continue;
        struct reg_op *op = &s->ops[n];
        *op = k->ops[i];
        if (op->info) {
            int32_t node = (int32_t)++n_info;
            op->node = node;
            s->inf[node] = (struct ent){(int32_t)n, node - 1, NIL, false};
            s->inf[node - 1].next = node;
        } else {
            by_comp[m++] = (int32_t)n;
        }
        n++;
    }
    qsort_r(by_comp, n_ok, sizeof *by_comp, cmp_comp, s->ops);

    /* Merge invokes (in op order) and completions (by position) into the main list. */
    int32_t e = 0;
    s->ent[0] = (struct ent){NIL, NIL, NIL, false};
    size_t ci = 0, ri = 0;
    while (ci < n || ri < n_ok) {
        while (ci < n && s->ops[ci].info)
            ci++;
        bool take_call = ci < n && (ri == n_ok || s->ops[ci].inv < s->ops[by_comp[ri]].comp);
        if (!take_call && ri == n_ok)
            break;
        int32_t id = take_call ? (int32_t)ci++ : by_comp[ri++];
        e++;
        s->ent[e] = (struct ent){id, e - 1, NIL, !take_call};
        s->ent[e - 1].next = e;
        if (take_call)
            s->ops[id].call_ent = e;
        else
            s->ops[id].ret_ent = e;
    }
    free(by_comp);
    return 0;
}

static int append_op(const struct reg_check *c, const struct reg_op *op, struct rp_buf *out)
{
    const struct jepsen_history *h = c->h;
    const struct jepsen_op *inv = &h->ops[op->inv];
    int rv = rp_buf_printf(out, "{\"process\":%" PRId64 ",\"f\":\"%s\",\"value\":", inv->process,
                           reg_f_names[op->f]);
    if (rv == 0 && op->f == REG_CAS) {
        rv = rp_buf_append_str(out, "[");
        if (rv == 0)
            rv = append_value(c, op->a, out);
        if (rv == 0)
            rv = rp_buf_append_str(out, ",");
        if (rv == 0)
            rv = append_value(c, op->b, out);
        if (rv == 0)
            rv = rp_buf_append_str(out, "]");
    } else if (rv == 0) {
        rv = append_value(c, op->a, out);
    }
    if (rv == 0)
        rv = rp_buf_printf(out, ",\"type\":\"%s\",\"invoke_index\":%" PRId64,
                           op->info ? "info" : "ok", inv->index);
    if (rv == 0) {
        if (op->comp == JEPSEN_NONE)
            rv = rp_buf_append_str(out, ",\"complete_index\":null}");
        else
            rv = rp_buf_printf(out, ",\"complete_index\":%" PRId64 "}", h->ops[op->comp].index);
    }
    return rv;
}

static int write_anomaly(const struct search *s, const struct reg_key *k, struct rp_buf *out)
{
    const struct reg_check *c = s->c;
    int rv = rp_buf_append_str(out, "{\"key\":");
    if (rv == 0)
        rv = jepsen_json_canonical(k->key, out);
    if (!s->have_best)
        return rv != 0 ? rv : rp_buf_append_str(out, "}");
    if (rv == 0)
        rv = rp_buf_append_str(out, ",\"op\":");
    if (rv == 0)
        rv = append_op(c, &s->ops[s->best_op], out);
    if (rv == 0)
        rv = rp_buf_append_str(out, ",\"state\":");
    if (rv == 0)
        rv = append_value(c, s->best_state, out);
    if (rv == 0)
        rv = rp_buf_append_str(out, ",\"previous\":");
    if (rv == 0) {
        if (s->best_prev == NIL)
            rv = rp_buf_append_str(out, "null");
        else
            rv = append_op(c, &s->ops[s->best_prev], out);
    }
    if (rv == 0)
        rv = rp_buf_append_str(out, ",\"pending\":[");
    for (size_t i = 0; rv == 0 && i < s->n_best_pending; i++) {
        if (i > 0)
            rv = rp_buf_append_str(out, ",");
        if (rv == 0)
            rv = append_op(c, &s->ops[s->best_pending[i]], out);
    }
    if (rv == 0)
        rv = rp_buf_printf(out, "],\"pending_count\":%zu,\"linearized\":%zu}",
                           s->best_pending_total, s->best_depth);
    return rv;
}

/* Searches key @k within @budget_ns and @mem_limit bytes; sets its verdict,
 * or leaves it undecided (unknown) with a reason. */
static int check_key(const struct reg_check *c, struct reg_key *k, uint64_t budget_ns,
                     size_t mem_limit)
{
    struct search s;
    uint64_t start = now_ns();
    int rv = search_init(&s, c, k, mem_limit, start + budget_ns);
    if (rv != 0) {
        search_free(&s);
        return rv;
    }
    int result = run(&s);
    k->seconds += (double)(now_ns() - start) / 1e9;
    k->configs = s.n_memo;
    switch (result) {
    case RESULT_VALID:
        k->verdict = JEPSEN_VALID;
        k->decided = true;
        break;
    case RESULT_INVALID:
        k->verdict = JEPSEN_INVALID;
        k->decided = true;
        rp_buf_reset(&k->anomaly);
        rv = write_anomaly(&s, k, &k->anomaly);
        break;
    case RESULT_TIME:
        k->verdict = JEPSEN_UNKNOWN;
        k->reason = "time limit";
        break;
    default:
        k->verdict = JEPSEN_UNKNOWN;
        k->reason = "memory limit";
        k->decided = true; /* more time would not help */
        break;
    }
    search_free(&s);
    return rv;
}

/* ---- Report ------------------------------------------------------------ */

const char *jepsen_verdict_json(enum jepsen_verdict v)
{
    switch (v) {
    case JEPSEN_VALID:
        return "true";
    case JEPSEN_INVALID:
        return "false";
    default:
        return "\"unknown\"";
    }
}

static int write_report(const struct reg_check *c, enum jepsen_verdict verdict, double seconds,
                        struct rp_buf *out)
{
    size_t n_invalid = 0, n_unknown = 0;
    const struct reg_key *first_bad = NULL;
    for (size_t i = 0; i < c->n_keys; i++) {
        if (c->keys[i].verdict == JEPSEN_INVALID) {
            n_invalid++;
            if (first_bad == NULL)
                first_bad = &c->keys[i];
        } else if (c->keys[i].verdict == JEPSEN_UNKNOWN) {
            n_unknown++;
        }
    }
    int rv = rp_buf_printf(out,
                           "{\"valid\":%s,\"model\":\"register\",\"key_count\":%zu,"
                           "\"op_count\":%zu,\"ok_count\":%zu,\"keys_invalid\":%zu,"
                           "\"keys_unknown\":%zu,\"time_s\":%.3f",
                           jepsen_verdict_json(verdict), c->n_keys, c->n_invokes, c->n_ok,
                           n_invalid, n_unknown, seconds);
    if (rv == 0 && first_bad != NULL) {
        rv = rp_buf_append_str(out, ",\"anomaly\":");
        if (rv == 0)
            rv = rp_buf_append(out, first_bad->anomaly.data, first_bad->anomaly.len);
    }
    if (rv == 0)
        rv = rp_buf_append_str(out, ",\"keys\":[");
    for (size_t i = 0; rv == 0 && i < c->n_keys; i++) {
        const struct reg_key *k = &c->keys[i];
        rv = rp_buf_append_str(out, i > 0 ? ",{\"key\":" : "{\"key\":");
        if (rv == 0)
            rv = jepsen_json_canonical(k->key, out);
        if (rv == 0)
            rv = rp_buf_printf(out,
                               ",\"valid\":%s,\"ops\":%zu,\"ok\":%zu,\"fail\":%zu,\"info\":%zu,"
                               "\"info_pruned\":%zu,\"configs\":%" PRIu64 ",\"time_s\":%.3f",
                               jepsen_verdict_json(k->verdict), k->n_invokes, k->n_ok, k->n_fail,
                               k->n_info, k->n_pruned, k->configs, k->seconds);
        if (rv == 0 && k->verdict == JEPSEN_UNKNOWN)
            rv = rp_buf_printf(out, ",\"reason\":\"%s\"", k->reason);
        if (rv == 0 && k->verdict == JEPSEN_INVALID) {
            rv = rp_buf_append_str(out, ",\"anomaly\":");
            if (rv == 0)
                rv = rp_buf_append(out, k->anomaly.data, k->anomaly.len);
        }
        if (rv == 0)
            rv = rp_buf_append_str(out, "}");
    }
    if (rv == 0)
        rv = rp_buf_append_str(out, "],\"warnings\":[");
    bool first = true;
    if (rv == 0 && c->n_invokes == 0) {
        rv = rp_buf_append_str(out, "\"no operations: nothing to check\"");
        first = false;
    } else if (rv == 0 && c->n_ok == 0) {
        rv = rp_buf_append_str(out, "\"nothing succeeded: no op completed ok\"");
        first = false;
    }
    if (rv == 0 && c->h->reused_after_info > 0) {
        rv = rp_buf_printf(out,
                           "%s\"a process invoked again after an info result (%zu times, first "
                           "at line %zu); its earlier op was kept open to the end\"",
                           first ? "" : ",", c->h->reused_after_info, c->h->first_reuse_line);
    }
    return rv != 0 ? rv : rp_buf_append_str(out, "]}");
}

/* ---- Entry point ------------------------------------------------------- */

static void reg_check_free(struct reg_check *c)
{
    for (size_t i = 0; i < c->n_keys; i++) {
        free(c->keys[i].ops);
        rp_buf_free(&c->keys[i].anomaly);
    }
    free(c->keys);
    jepsen_map_free(&c->key_ids);
    jepsen_map_free(&c->value_ids);
    rp_buf_free(&c->value_text);
    free(c->value_off);
    rp_buf_free(&c->scratch);
}

int jepsen_check_register(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                          enum jepsen_verdict *verdict, struct rp_buf *report)
{
    uint64_t start = now_ns();
    double limit_s =
        opts != NULL && opts->time_limit_s > 0 ? opts->time_limit_s : JEPSEN_DEFAULT_TIME_LIMIT_S;
    size_t mem_limit =
        opts != NULL && opts->memory_limit > 0 ? opts->memory_limit : JEPSEN_DEFAULT_MEMORY_LIMIT;
    uint64_t limit_ns = (uint64_t)(limit_s * 1e9);
    struct reg_check c;
    int rv = 0;

    memset(&c, 0, sizeof c);
    c.h = h;
    jepsen_map_init(&c.key_ids);
    jepsen_map_init(&c.value_ids);
    rp_buf_init(&c.value_text);
    rp_buf_init(&c.scratch);
    uint32_t null_id;
    rv = intern_text(&c, "null", 4, &null_id); /* id 0: the empty register */

    for (size_t i = 0; rv == 0 && i < h->n_ops; i++) {
        if (!h->ops[i].nemesis && h->ops[i].type == JEPSEN_INVOKE)
            rv = collect_op(&c, i);
    }
    if (rv == 0) {
        uint32_t *obs = calloc(c.n_values, sizeof *obs);
        if (obs == NULL)
            rv = rp_err(RP_ENOMEM, "out of memory");
        for (size_t i = 0; rv == 0 && i < c.n_keys; i++)
            prune_unobserved(&c.keys[i], obs);
        free(obs);
    }

    /* Round one: every key gets an equal share of half the time. */
    bool any_invalid = false;
    for (size_t i = 0; rv == 0 && i < c.n_keys; i++) {
        uint64_t share = limit_ns / 2 / c.n_keys;
        rv = check_key(&c, &c.keys[i], share, mem_limit);
        any_invalid |= c.keys[i].verdict == JEPSEN_INVALID;
    }
    /* Round two: the keys that ran out of time share what is left. */
    if (rv == 0 && !any_invalid) {
        size_t left = 0;
        for (size_t i = 0; i < c.n_keys; i++)
            left += !c.keys[i].decided;
        for (size_t i = 0; rv == 0 && i < c.n_keys && left > 0; i++) {
            if (c.keys[i].decided)
                continue;
            uint64_t used = now_ns() - start;
            uint64_t remaining = used < limit_ns ? limit_ns - used : 0;
            rv = check_key(&c, &c.keys[i], remaining / left, mem_limit);
            left--;
            if (c.keys[i].verdict == JEPSEN_INVALID)
                break;
        }
    }

    if (rv == 0) {
        enum jepsen_verdict v = JEPSEN_VALID;
        for (size_t i = 0; i < c.n_keys; i++) {
            if (c.keys[i].verdict == JEPSEN_INVALID)
                v = JEPSEN_INVALID;
            else if (c.keys[i].verdict == JEPSEN_UNKNOWN && v == JEPSEN_VALID)
                v = JEPSEN_UNKNOWN;
        }
        rv = write_report(&c, v, (double)(now_ns() - start) / 1e9, report);
        if (rv == 0)
            *verdict = v;
    }
    reg_check_free(&c);
    return rv;
}

/* ---- Synthetic histories ----------------------------------------------- */

#define GEN_NULL INT64_MIN /* the empty register */

struct gen_rng {
    uint64_t s;
};

static uint64_t gen_next(struct gen_rng *r)
{
    r->s += 0x9e3779b97f4a7c15ULL;
    return jepsen_mix64(r->s);
}

static double gen_unit(struct gen_rng *r)
{
    return (double)(gen_next(r) >> 11) / 9007199254740992.0;
}

static size_t gen_below(struct gen_rng *r, size_t n)
{
    return (size_t)(gen_next(r) % n);
}

/* One line of the generated history. */
struct gen_rec {
    int64_t process; /* -1: nemesis */
    uint8_t type;    /* enum jepsen_op_type */
    uint8_t f;       /* enum reg_f */
    unsigned key;
    int64_t a, b;     /* write value; cas expected, new */
    int64_t value;    /* ok read: the value read */
    int64_t stale;    /* ok read: a value overwritten before it was invoked, or GEN_NULL */
    bool after_write; /* ok read: some write had completed ok before it was invoked */
    const char *nemesis;
};

enum gen_phase { GEN_IDLE, GEN_INVOKED, GEN_APPLIED };

struct gen_client {
    unsigned key;
    int64_t process;
    enum gen_phase phase;
    uint8_t f;
    int64_t a, b, value;
    bool cas_failed;
    int64_t prev_done; /* write/cas: value of the newest ok write done when invoked */
    bool prev_valid;
    int64_t stale; /* read: the key's superseded value when invoked */
    bool after_write;
};

struct gen_key {
    int64_t reg;        /* the simulated register */
    int64_t next_value; /* unique values written */
    unsigned left;      /* invocations still to make */
    int64_t last_done;  /* value of the newest ok write/cas completed */
    bool done_valid;
    int64_t superseded; /* a value overwritten by an op invoked after it completed */
};

struct gen_late {
    unsigned key;
    uint8_t f;
    int64_t a, b;
    uint64_t at;
};

struct gen {
    struct gen_rec *recs;
    size_t n, cap;
    struct gen_late *late;
    size_t n_late, cap_late;
};

static int gen_push(struct gen *g, const struct gen_rec *r)
{
    if (g->n == g->cap) {
        size_t cap = g->cap ? g->cap * 2 : 4096;
        struct gen_rec *recs = realloc(g->recs, cap * sizeof *recs);
        if (recs == NULL)
            return rp_err(RP_ENOMEM, "out of memory generating a history");
        g->recs = recs;
        g->cap = cap;
    }
    g->recs[g->n++] = *r;
    return 0;
}

static void gen_apply(struct gen_key *k, uint8_t f, int64_t a, int64_t b, bool *cas_failed)
{
    *cas_failed = false;
    if (f == REG_WRITE) {
        k->reg = a;
    } else if (f == REG_CAS) {
        if (k->reg == a)
            k->reg = b;
        else
            *cas_failed = true;
    }
}

static int gen_value(struct rp_buf *out, int64_t v)
{
    return v == GEN_NULL ? rp_buf_append_str(out, "null") : rp_buf_printf(out, "%" PRId64, v);
}

static int gen_write(const struct gen *g, struct rp_buf *out)
{
    static const char *const types[] = {"invoke", "ok", "fail", "info"};
    int rv = 0;
    for (size_t i = 0; rv == 0 && i < g->n; i++) {
        const struct gen_rec *r = &g->recs[i];
        uint64_t t = (uint64_t)i * 1000 + 17;
        if (r->process < 0) {
            rv = rp_buf_printf(out,
                               "{\"index\":%zu,\"time\":%" PRIu64 ",\"type\":\"info\","
                               "\"process\":\"nemesis\",\"f\":\"%s\",\"value\":null}\n",
                               i, t, r->nemesis);
            continue;
        }
        rv =
            rp_buf_printf(out,
                          "{\"index\":%zu,\"time\":%" PRIu64 ",\"type\":\"%s\",\"process\":%" PRId64
                          ",\"f\":\"%s\",\"key\":%u,\"value\":",
                          i, t, types[r->type], r->process, reg_f_names[r->f], r->key);
        if (rv != 0)
            break;
        if (r->f == REG_READ)
            rv = gen_value(out, r->type == JEPSEN_OK ? r->value : GEN_NULL);
        else if (r->f == REG_WRITE)
            rv = gen_value(out, r->a);
        else if ((rv = rp_buf_append_str(out, "[")) == 0 && (rv = gen_value(out, r->a)) == 0 &&
                 (rv = rp_buf_append_str(out, ",")) == 0 && (rv = gen_value(out, r->b)) == 0)
            rv = rp_buf_append_str(out, "]");
        if (rv == 0 && r->type == JEPSEN_INFO)
            rv = rp_buf_append_str(out, ",\"error\":\"timeout\"");
        if (rv == 0 && r->type == JEPSEN_FAIL)
            rv = rp_buf_append_str(out, ",\"error\":\"conflict\"");
        if (rv == 0)
            rv = rp_buf_append_str(out, "}\n");
    }
    return rv;
}

/* Gives one ok read about the middle a value it cannot have seen. */
static int64_t gen_mutate(struct gen *g)
{
    size_t best = SIZE_MAX;
    for (int pass = 0; pass < 2 && best == SIZE_MAX; pass++) {
        for (size_t d = 0; d < g->n && best == SIZE_MAX; d++) {
            for (int side = 0; side < 2; side++) {
                size_t i = side ? g->n / 2 + d : g->n / 2 - d;
                if (i >= g->n || (side && d == 0))
                    continue;
                struct gen_rec *r = &g->recs[i];
                if (r->process < 0 || r->type != JEPSEN_OK || r->f != REG_READ)
                    continue;
                if (pass == 0 && r->stale != GEN_NULL && r->stale != r->value) {
                    r->value = r->stale;
                    best = i;
                    break;
                }
                if (pass == 1 && r->after_write && r->value != GEN_NULL) {
                    r->value = GEN_NULL; /* the empty register, after a write completed */
                    best = i;
                    break;
                }
            }
        }
    }
    return best == SIZE_MAX ? -1 : (int64_t)best;
}

int jepsen_gen_register(const struct jepsen_gen_opts *o, struct rp_buf *out, int64_t *mutated_index)
{
    if (o->keys == 0 || o->processes == 0 || o->info_rate < 0 || o->info_rate > 1 ||
        o->fail_rate < 0 || o->fail_rate > 1 || o->late_rate < 0 || o->late_rate > 1)
        return rp_err(RP_EINVAL, "generator: keys and processes must be > 0, rates in [0, 1]");
    struct gen_rng rng = {o->seed * 0x2545f4914f6cdd1dULL + 1};
    size_t n_clients = (size_t)o->keys * o->processes;
    struct gen g;
    memset(&g, 0, sizeof g);
    struct gen_client *cl = calloc(n_clients, sizeof *cl);
    struct gen_key *keys = calloc(o->keys, sizeof *keys);
    int rv = 0;
    if (cl == NULL || keys == NULL) {
        rv = rp_err(RP_ENOMEM, "out of memory generating a history");
        goto out;
    }
    for (unsigned k = 0; k < o->keys; k++) {
        keys[k].reg = GEN_NULL;
        keys[k].next_value = 1;
        keys[k].left = o->ops_per_key;
        keys[k].superseded = GEN_NULL;
    }
    for (size_t i = 0; i < n_clients; i++) {
        cl[i].key = (unsigned)(i / o->processes);
        cl[i].process = (int64_t)i;
    }
    int64_t next_process = (int64_t)n_clients;
    size_t busy = 0;
    uint64_t clock = 0;
    unsigned keys_left = o->ops_per_key > 0 ? o->keys : 0;

    while (rv == 0 && (keys_left > 0 || busy > 0)) {
        clock++;
        /* Info ops that take effect late. */
        for (size_t i = 0; i < g.n_late;) {
            if (g.late[i].at <= clock) {
                bool failed;
                gen_apply(&keys[g.late[i].key], g.late[i].f, g.late[i].a, g.late[i].b, &failed);
                g.late[i] = g.late[--g.n_late];
            } else {
                i++;
            }
        }
        if (clock % 5000 == 0) {
            struct gen_rec r = {.process = -1,
                                .nemesis =
                                    (clock / 5000) % 2 ? "start-partition" : "stop-partition"};
            rv = gen_push(&g, &r);
            if (rv != 0)
                break;
        }
        struct gen_client *c = &cl[gen_below(&rng, n_clients)];
        struct gen_key *k = &keys[c->key];
        struct gen_rec r = {.process = c->process,
                            .f = c->f,
                            .key = c->key,
                            .a = c->a,
                            .b = c->b,
                            .value = GEN_NULL,
                            .stale = GEN_NULL};
        switch (c->phase) {
        case GEN_IDLE: {
            if (k->left == 0)
                continue;
            if (--k->left == 0)
                keys_left--;
            double x = gen_unit(&rng);
            c->f = x < 0.5 ? REG_READ : x < 0.75 ? REG_WRITE : REG_CAS;
            if (c->f == REG_WRITE) {
                c->a = k->next_value++;
            } else if (c->f == REG_CAS) {
                /* Mostly the current value, so that many cas succeed. */
                c->a = gen_unit(&rng) < 0.7 ? k->reg
                       : k->next_value > 1 ? 1 + (int64_t)gen_below(&rng, (size_t)k->next_value - 1)
                                           : GEN_NULL;
                c->b = k->next_value++;
            }
            c->prev_valid = k->done_valid;
            c->prev_done = k->last_done;
            c->stale = k->superseded;
            c->after_write = k->done_valid;
            c->phase = GEN_INVOKED;
            busy++;
            r = (struct gen_rec){.process = c->process,
                                 .type = JEPSEN_INVOKE,
                                 .f = c->f,
                                 .key = c->key,
                                 .a = c->a,
                                 .b = c->b,
                                 .value = GEN_NULL,
                                 .stale = GEN_NULL};
            rv = gen_push(&g, &r);
            continue;
        }
        case GEN_INVOKED: {
            double x = gen_unit(&rng);
            if (x < o->fail_rate) {
                r.type = JEPSEN_FAIL; /* refused before taking effect */
            } else if (x < o->fail_rate + o->info_rate / 2) {
                r.type = JEPSEN_INFO; /* timed out before taking effect */
                if (c->f != REG_READ && gen_unit(&rng) < o->late_rate) {
                    if (g.n_late == g.cap_late) {
                        size_t cap = g.cap_late ? g.cap_late * 2 : 64;
                        struct gen_late *l = realloc(g.late, cap * sizeof *l);
                        if (l == NULL) {
                            rv = rp_err(RP_ENOMEM, "out of memory generating a history");
                            break;
                        }
                        g.late = l;
                        g.cap_late = cap;
                    }
                    g.late[g.n_late++] = (struct gen_late){
                        c->key, c->f, c->a, c->b, clock + 1 + gen_below(&rng, 20 * n_clients)};
                }
            } else {
                c->value = k->reg;
                gen_apply(k, c->f, c->a, c->b, &c->cas_failed);
                c->phase = GEN_APPLIED;
                continue;
            }
            break;
        }
        case GEN_APPLIED:
            if (c->cas_failed)
                r.type = JEPSEN_FAIL; /* expected value did not match */
            else if (gen_unit(&rng) < o->info_rate / 2)
                r.type = JEPSEN_INFO; /* took effect, but the answer was lost */
            else
                r.type = JEPSEN_OK;
            if (r.type == JEPSEN_OK && c->f == REG_READ) {
                r.value = c->value;
                r.stale = c->stale;
                r.after_write = c->after_write;
            }
            if (r.type == JEPSEN_OK && c->f != REG_READ) {
                int64_t written = c->f == REG_WRITE ? c->a : c->b;
                if (c->prev_valid)
                    k->superseded = c->prev_done;
                k->last_done = written;
                k->done_valid = true;
            }
            break;
        }
        if (rv != 0)
            break;
        rv = gen_push(&g, &r);
        c->phase = GEN_IDLE;
        busy--;
        if (r.type == JEPSEN_INFO)
            c->process = next_process++; /* a crashed client continues as a new process */
    }
    int64_t mutated = -1;
    if (rv == 0 && o->mutate)
        mutated = gen_mutate(&g);
    if (rv == 0)
        rv = gen_write(&g, out);
    if (rv == 0 && mutated_index != NULL)
        *mutated_index = mutated;
out:
    free(cl);
    free(keys);
    free(g.recs);
    free(g.late);
    return rv;
}
