/* jepsen/history.c: the strict JSON-lines reader of histories.
 *
 * Histories come from a harness under test, so they are parsed as untrusted
 * input: every byte goes through the bounded reader (struct rp_rd), every line,
 * depth and number has a limit, and every error names the line (and column). */
#include "jepsen/history.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/json.h"

/* ---- Arena ------------------------------------------------------------ */

struct jepsen_arena_chunk {
    struct jepsen_arena_chunk *next;
    size_t used;
    size_t cap;
    uint64_t data[]; /* uint64_t keeps every allocation 8-aligned */
};

#define ARENA_CHUNK (64 * 1024)

void jepsen_arena_init(struct jepsen_arena *a)
{
    a->head = NULL;
    a->bytes = 0;
}

void *jepsen_arena_alloc(struct jepsen_arena *a, size_t n)
{
    n = (n + 7) & ~(size_t)7;
    if (n == 0)
        n = 8;
    struct jepsen_arena_chunk *c = a->head;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > ARENA_CHUNK / 2 ? n : ARENA_CHUNK;
        c = malloc(sizeof *c + cap);
        if (c == NULL)
            return NULL;
        c->used = 0;
        c->cap = cap;
        /* A big allocation gets a chunk of its own, behind the current one, so
         * the current chunk's free space is not wasted. */
        if (cap != ARENA_CHUNK && a->head != NULL) {
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
        a->bytes += sizeof *c + cap;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    return p;
}

void jepsen_arena_free(struct jepsen_arena *a)
{
    struct jepsen_arena_chunk *c = a->head;
    while (c != NULL) {
        struct jepsen_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->bytes = 0;
}

/* ---- Hashing and the byte-string map ---------------------------------- */

uint64_t jepsen_mix64(uint64_t x)
{
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ULL;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebULL;
    x ^= x >> 31;
    return x;
}

uint64_t jepsen_hash_bytes(const void *p, size_t len)
{
    const unsigned char *b = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= b[i];
        h *= 0x100000001b3ULL;
    }
    return jepsen_mix64(h ^ len);
}

struct jepsen_map_slot {
    uint64_t hash;
    const char *key; /* NULL: empty slot */
    size_t len;
    size_t v;
};

void jepsen_map_init(struct jepsen_map *m)
{
    m->slots = NULL;
    m->cap = 0;
    m->n = 0;
    jepsen_arena_init(&m->keys);
}

void jepsen_map_free(struct jepsen_map *m)
{
    free(m->slots);
    jepsen_arena_free(&m->keys);
    jepsen_map_init(m);
}

static struct jepsen_map_slot *map_lookup(const struct jepsen_map *m, uint64_t hash,
                                          const void *key, size_t len)
{
    size_t mask = m->cap - 1;
    for (size_t i = hash & mask;; i = (i + 1) & mask) {
        struct jepsen_map_slot *s = &m->slots[i];
        if (s->key == NULL)
            return s;
        if (s->hash == hash && s->len == len && memcmp(s->key, key, len) == 0)
            return s;
    }
}

static int map_grow(struct jepsen_map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 16;
    struct jepsen_map_slot *slots = calloc(cap, sizeof *slots);
    if (slots == NULL)
        return rp_err(RP_ENOMEM, "out of memory growing a map to %zu slots", cap);
    struct jepsen_map old = *m;
    m->slots = slots;
    m->cap = cap;
    for (size_t i = 0; i < old.cap; i++) {
        if (old.slots[i].key != NULL)
            *map_lookup(m, old.slots[i].hash, old.slots[i].key, old.slots[i].len) = old.slots[i];
    }
    free(old.slots);
    return 0;
}

size_t *jepsen_map_find(const struct jepsen_map *m, const void *key, size_t len)
{
    if (m->cap == 0)
        return NULL;
    struct jepsen_map_slot *s = map_lookup(m, jepsen_hash_bytes(key, len), key, len);
    return s->key != NULL ? &s->v : NULL;
}

int jepsen_map_put(struct jepsen_map *m, const void *key, size_t len, size_t v, size_t **slot,
                   bool *added)
{
    if ((m->n + 1) * 2 > m->cap) {
        int rv = map_grow(m);
        if (rv != 0)
            return rv;
    }
    uint64_t hash = jepsen_hash_bytes(key, len);
    struct jepsen_map_slot *s = map_lookup(m, hash, key, len);
    if (s->key == NULL) {
        char *copy = jepsen_arena_alloc(&m->keys, len + 1);
        if (copy == NULL)
            return rp_err(RP_ENOMEM, "out of memory copying a map key");
        memcpy(copy, key, len);
        copy[len] = '\0';
        s->hash = hash;
        s->key = copy;
        s->len = len;
        s->v = v;
        m->n++;
        if (added != NULL)
            *added = true;
    } else if (added != NULL) {
        *added = false;
    }
    if (slot != NULL)
        *slot = &s->v;
    return 0;
}

/* ---- JSON parser ------------------------------------------------------ */

struct parser {
    struct rp_rd rd;
    struct jepsen_arena *arena;
    int depth;
    /* Items and members of the containers being parsed, innermost on top: a
     * container copies its own into the arena and pops them when it closes. */
    struct jepsen_json *items;
    size_t n_items, cap_items;
    struct jepsen_json_member *members;
    size_t n_members, cap_members;
    struct rp_buf str; /* decoded bytes of the string being parsed */
};

static int parse_value(struct parser *p, struct jepsen_json *out);

static int peek(const struct parser *p)
{
    return rp_rd_left(&p->rd) > 0 ? p->rd.p[p->rd.off] : -1;
}

static int next(struct parser *p)
{
    uint8_t c;
    if (rp_rd_u8(&p->rd, &c) != 0)
        return -1;
    return c;
}

static size_t column(const struct parser *p)
{
    return p->rd.off + 1;
}

static int perr(const struct parser *p, const char *what)
{
    int c = peek(p);
    if (c < 0)
        return rp_err(RP_EINVAL, "column %zu: %s, found end of line", column(p), what);
    if (c >= 0x20 && c < 0x7f)
        return rp_err(RP_EINVAL, "column %zu: %s, found '%c'", column(p), what, c);
    return rp_err(RP_EINVAL, "column %zu: %s, found byte 0x%02x", column(p), what, c);
}

static void skip_ws(struct parser *p)
{
    for (;;) {
        int c = peek(p);
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            return;
        rp_rd_skip(&p->rd, 1);
    }
}

static int expect_word(struct parser *p, const char *word)
{
    size_t n = strlen(word);
    if (rp_rd_left(&p->rd) < n || memcmp(p->rd.p + p->rd.off, word, n) != 0)
        return perr(p, "expected a JSON value");
    return rp_rd_skip(&p->rd, n);
}

/* Length of the valid UTF-8 sequence at the cursor (1..4), 0 if invalid. */
static size_t utf8_seq(const struct parser *p)
{
    const uint8_t *s = p->rd.p + p->rd.off;
    size_t left = rp_rd_left(&p->rd);
    size_t len;
    uint32_t cp;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0)
        len = 2, cp = s[0] & 0x1f;
    else if ((s[0] & 0xf0) == 0xe0)
        len = 3, cp = s[0] & 0x0f;
    else if ((s[0] & 0xf8) == 0xf0)
        len = 4, cp = s[0] & 0x07;
    else
        return 0;
    if (len > left)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
        cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

static int put_utf8(struct rp_buf *b, uint32_t cp)
{
    uint8_t u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (uint8_t)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (uint8_t)(0xc0 | (cp >> 6));
        u[1] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (uint8_t)(0xe0 | (cp >> 12));
        u[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        u[2] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 3;
    } else {
        u[0] = (uint8_t)(0xf0 | (cp >> 18));
        u[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
        u[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
        u[3] = (uint8_t)(0x80 | (cp & 0x3f));
        n = 4;
    }
    return rp_buf_append(b, u, n);
}

static int hex4(struct parser *p, uint32_t *out)
{
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int c = peek(p);
        int d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if (c >= 'a' && c <= 'f')
            d = c - 'a' + 10;
        else if (c >= 'A' && c <= 'F')
            d = c - 'A' + 10;
        else
            return perr(p, "expected 4 hex digits after \\u");
        v = v * 16 + (uint32_t)d;
        next(p);
    }
    *out = v;
    return 0;
}

static int parse_escape(struct parser *p)
{
    int c = peek(p);
    char ch;
    switch (c) {
    case '"':
        ch = '"';
        break;
    case '\\':
        ch = '\\';
        break;
    case '/':
        ch = '/';
        break;
    case 'b':
        ch = '\b';
        break;
    case 'f':
        ch = '\f';
        break;
    case 'n':
        ch = '\n';
        break;
    case 'r':
        ch = '\r';
        break;
    case 't':
        ch = '\t';
        break;
    case 'u': {
        next(p);
        uint32_t cp;
        size_t at = p->rd.off;
        int rv = hex4(p, &cp);
        if (rv != 0)
            return rv;
        if (cp >= 0xdc00 && cp <= 0xdfff) {
            p->rd.off = at;
            return perr(p, "lone low surrogate in \\u escape");
        }
        if (cp >= 0xd800 && cp <= 0xdbff) {
            uint32_t lo;
            if (peek(p) != '\\')
                return perr(p, "high surrogate not followed by a \\u low surrogate");
            next(p);
            if (peek(p) != 'u')
                return perr(p, "high surrogate not followed by a \\u low surrogate");
            next(p);
            at = p->rd.off;
            rv = hex4(p, &lo);
            if (rv != 0)
                return rv;
            if (lo < 0xdc00 || lo > 0xdfff) {
                p->rd.off = at;
                return perr(p, "high surrogate not followed by a low surrogate");
            }
            cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        }
        if (cp == 0) {
            p->rd.off = at;
            return perr(p, "\\u0000 is not accepted in strings");
        }
        return put_utf8(&p->str, cp);
    }
    default:
        return perr(p, "invalid escape");
    }
    next(p);
    return rp_buf_append(&p->str, &ch, 1);
}

/* Parses a string at the cursor (on its opening quote); *@s and *@len point at
 * a NUL-terminated copy in the arena. */
static int parse_string(struct parser *p, const char **s, size_t *len)
{
    int rv;
    next(p); /* the opening quote */
    rp_buf_reset(&p->str);
    for (;;) {
        int c = peek(p);
        if (c < 0)
            return perr(p, "unterminated string");
        if (c == '"') {
            next(p);
            break;
        }
        if (c < 0x20)
            return perr(p, "control character in string (must be escaped)");
        if (c == '\\') {
            next(p);
            rv = parse_escape(p);
            if (rv != 0)
                return rv;
            continue;
        }
        size_t n = utf8_seq(p);
        if (n == 0)
            return perr(p, "invalid UTF-8 in string");
        const uint8_t *b;
        rp_rd_bytes(&p->rd, n, &b);
        rv = rp_buf_append(&p->str, b, n);
        if (rv != 0)
            return rv;
    }
    char *copy = jepsen_arena_alloc(p->arena, p->str.len + 1);
    if (copy == NULL)
        return rp_err(RP_ENOMEM, "out of memory copying a string of %zu bytes", p->str.len);
    if (p->str.len > 0)
        memcpy(copy, p->str.data, p->str.len);
    copy[p->str.len] = '\0';
    *s = copy;
    *len = p->str.len;
    return 0;
}

static bool is_digit(int c)
{
    return c >= '0' && c <= '9';
}

static int parse_number(struct parser *p, struct jepsen_json *out)
{
    size_t start = p->rd.off;
    bool negative = false, integer = true;
    if (peek(p) == '-') {
        negative = true;
        next(p);
    }
    if (peek(p) == '0') {
        next(p);
        if (is_digit(peek(p)))
            return perr(p, "leading zeros are not allowed in numbers");
    } else if (is_digit(peek(p))) {
        while (is_digit(peek(p)))
            next(p);
    } else {
        return perr(p, "expected a digit");
    }
    if (peek(p) == '.') {
        integer = false;
        next(p);
        if (!is_digit(peek(p)))
            return perr(p, "expected a digit after the decimal point");
        while (is_digit(peek(p)))
            next(p);
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        integer = false;
        next(p);
        if (peek(p) == '+' || peek(p) == '-')
            next(p);
        if (!is_digit(peek(p)))
            return perr(p, "expected a digit in the exponent");
        while (is_digit(peek(p)))
            next(p);
    }
    const char *text = (const char *)p->rd.p + start;
    size_t n = p->rd.off - start;
    if (integer) {
        /* Accumulate the magnitude; INT64_MIN's is one more than INT64_MAX's. */
        uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        uint64_t v = 0;
        for (size_t i = negative ? 1 : 0; i < n; i++) {
            uint64_t d = (uint64_t)(text[i] - '0');
            if (v > (limit - d) / 10) {
                return rp_err(RP_EINVAL, "column %zu: integer %.*s%s overflows 64 bits", start + 1,
                              (int)(n < 40 ? n : 40), text, n < 40 ? "" : "...");
            }
            v = v * 10 + d;
        }
        out->type = JEPSEN_JSON_INT;
        out->u.i = negative ? (int64_t)(0 - v) : (int64_t)v;
        return 0;
    }
    char small[64];
    char *copy = n < sizeof small ? small : malloc(n + 1);
    if (copy == NULL)
        return rp_err(RP_ENOMEM, "out of memory copying a number of %zu bytes", n);
    memcpy(copy, text, n);
    copy[n] = '\0';
    errno = 0;
    double d = strtod(copy, NULL);
    bool overflow = isinf(d) || (errno == ERANGE && fabs(d) > 1.0);
    if (copy != small)
        free(copy);
    if (overflow) {
        return rp_err(RP_EINVAL, "column %zu: number %.*s%s overflows a double", start + 1,
                      (int)(n < 40 ? n : 40), text, n < 40 ? "" : "...");
    }
    out->type = JEPSEN_JSON_FLOAT;
    out->u.d = d;
    return 0;
}

static int push_item(struct parser *p, const struct jepsen_json *v)
{
    if (p->n_items == p->cap_items) {
        size_t cap = p->cap_items ? p->cap_items * 2 : 64;
        struct jepsen_json *items = realloc(p->items, cap * sizeof *items);
        if (items == NULL)
            return rp_err(RP_ENOMEM, "out of memory parsing an array");
        p->items = items;
        p->cap_items = cap;
    }
    p->items[p->n_items++] = *v;
    return 0;
}

static int push_member(struct parser *p, const struct jepsen_json_member *m)
{
    if (p->n_members == p->cap_members) {
        size_t cap = p->cap_members ? p->cap_members * 2 : 64;
        struct jepsen_json_member *members = realloc(p->members, cap * sizeof *members);
        if (members == NULL)
            return rp_err(RP_ENOMEM, "out of memory parsing an object");
        p->members = members;
        p->cap_members = cap;
    }
    p->members[p->n_members++] = *m;
    return 0;
}

static int parse_array(struct parser *p, struct jepsen_json *out)
{
    size_t base = p->n_items;
    int rv;
    next(p); /* [ */
    skip_ws(p);
    if (peek(p) == ']') {
        next(p);
    } else {
        for (;;) {
            struct jepsen_json v;
            rv = parse_value(p, &v);
            if (rv != 0)
                return rv;
            rv = push_item(p, &v);
            if (rv != 0)
                return rv;
            skip_ws(p);
            if (peek(p) == ',') {
                next(p);
                continue;
            }
            if (peek(p) == ']') {
                next(p);
                break;
            }
            return perr(p, "expected ',' or ']' in array");
        }
    }
    size_t n = p->n_items - base;
    struct jepsen_json *items = NULL;
    if (n > 0) {
        items = jepsen_arena_alloc(p->arena, n * sizeof *items);
        if (items == NULL)
            return rp_err(RP_ENOMEM, "out of memory storing an array of %zu items", n);
        memcpy(items, p->items + base, n * sizeof *items);
    }
    p->n_items = base;
    out->type = JEPSEN_JSON_ARRAY;
    out->len = n;
    out->u.items = items;
    return 0;
}

static int cmp_member_name(const void *a, const void *b)
{
    const struct jepsen_json_member *x = *(const struct jepsen_json_member *const *)a;
    const struct jepsen_json_member *y = *(const struct jepsen_json_member *const *)b;
    size_t n = x->name_len < y->name_len ? x->name_len : y->name_len;
    int c = memcmp(x->name, y->name, n);
    if (c != 0)
        return c;
    return x->name_len < y->name_len ? -1 : x->name_len > y->name_len;
}

/* The name that occurs twice among @n members, or NULL. */
static const char *duplicate_member(const struct jepsen_json_member *m, size_t n, int *rv)
{
    *rv = 0;
    if (n < 16) {
        for (size_t i = 1; i < n; i++) {
            for (size_t j = 0; j < i; j++) {
                if (m[i].name_len == m[j].name_len &&
                    memcmp(m[i].name, m[j].name, m[i].name_len) == 0)
                    return m[i].name;
            }
        }
        return NULL;
    }
    const struct jepsen_json_member **sorted = malloc(n * sizeof *sorted);
    if (sorted == NULL) {
        *rv = rp_err(RP_ENOMEM, "out of memory checking an object of %zu members", n);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        sorted[i] = &m[i];
    qsort(sorted, n, sizeof *sorted, cmp_member_name);
    const char *dup = NULL;
    for (size_t i = 1; i < n && dup == NULL; i++) {
        if (cmp_member_name(&sorted[i - 1], &sorted[i]) == 0)
            dup = sorted[i]->name;
    }
    free(sorted);
    return dup;
}

static int parse_object(struct parser *p, struct jepsen_json *out)
{
    size_t base = p->n_members;
    size_t open_col = column(p);
    int rv;
    next(p); /* { */
    skip_ws(p);
    if (peek(p) == '}') {
        next(p);
    } else {
        for (;;) {
            struct jepsen_json_member m;
            skip_ws(p);
            if (peek(p) != '"')
                return perr(p, "expected a string as object member name");
            rv = parse_string(p, &m.name, &m.name_len);
            if (rv != 0)
                return rv;
            skip_ws(p);
            if (peek(p) != ':')
                return perr(p, "expected ':' after object member name");
            next(p);
            rv = parse_value(p, &m.value);
            if (rv != 0)
                return rv;
            rv = push_member(p, &m);
            if (rv != 0)
                return rv;
            skip_ws(p);
            if (peek(p) == ',') {
                next(p);
                continue;
            }
            if (peek(p) == '}') {
                next(p);
                break;
            }
            return perr(p, "expected ',' or '}' in object");
        }
    }
    size_t n = p->n_members - base;
    struct jepsen_json_member *members = NULL;
    /* Only with members: before the first, p->members is NULL, and NULL + 0 is undefined. */
    if (n > 0) {
        const char *dup = duplicate_member(p->members + base, n, &rv);
        if (rv != 0)
            return rv;
        if (dup != NULL)
            return rp_err(RP_EINVAL, "column %zu: member \"%.64s\" occurs twice in the object",
                          open_col, dup);
        members = jepsen_arena_alloc(p->arena, n * sizeof *members);
        if (members == NULL)
            return rp_err(RP_ENOMEM, "out of memory storing an object of %zu members", n);
        memcpy(members, p->members + base, n * sizeof *members);
    }
    p->n_members = base;
    out->type = JEPSEN_JSON_OBJECT;
    out->len = n;
    out->u.members = members;
    return 0;
}

static int parse_value(struct parser *p, struct jepsen_json *out)
{
    int rv;
    memset(out, 0, sizeof *out);
    skip_ws(p);
    int c = peek(p);
    switch (c) {
    case '{':
    case '[':
        if (p->depth >= JEPSEN_MAX_DEPTH)
            return rp_err(RP_EINVAL, "column %zu: nesting deeper than %d", column(p),
                          JEPSEN_MAX_DEPTH);
        p->depth++;
        rv = c == '{' ? parse_object(p, out) : parse_array(p, out);
        p->depth--;
        return rv;
    case '"':
        out->type = JEPSEN_JSON_STRING;
        return parse_string(p, &out->u.s, &out->len);
    case 't':
        out->type = JEPSEN_JSON_TRUE;
        return expect_word(p, "true");
    case 'f':
        out->type = JEPSEN_JSON_FALSE;
        return expect_word(p, "false");
    case 'n':
        out->type = JEPSEN_JSON_NULL;
        return expect_word(p, "null");
    default:
        if (c == '-' || is_digit(c))
            return parse_number(p, out);
        return perr(p, "expected a JSON value");
    }
}

int jepsen_json_parse(const char *text, size_t len, struct jepsen_arena *arena,
                      struct jepsen_json *out)
{
    struct parser p;
    memset(&p, 0, sizeof p);
    rp_rd_init(&p.rd, text, len);
    p.arena = arena;
    rp_buf_init(&p.str);
    int rv = parse_value(&p, out);
    if (rv == 0) {
        skip_ws(&p);
        if (rp_rd_left(&p.rd) > 0)
            rv = perr(&p, "expected the end of the line after the JSON value");
    }
    free(p.items);
    free(p.members);
    rp_buf_free(&p.str);
    return rv;
}

/* ---- JSON helpers ----------------------------------------------------- */

const struct jepsen_json *jepsen_json_get(const struct jepsen_json *obj, const char *name)
{
    if (obj == NULL || obj->type != JEPSEN_JSON_OBJECT)
        return NULL;
    size_t n = strlen(name);
    for (size_t i = 0; i < obj->len; i++) {
        const struct jepsen_json_member *m = &obj->u.members[i];
        if (m->name_len == n && memcmp(m->name, name, n) == 0)
            return &m->value;
    }
    return NULL;
}

bool jepsen_json_is_str(const struct jepsen_json *v, const char *s)
{
    return v != NULL && v->type == JEPSEN_JSON_STRING && v->len == strlen(s) &&
           memcmp(v->u.s, s, v->len) == 0;
}

static int cmp_member_ptr(const void *a, const void *b)
{
    return cmp_member_name(a, b);
}

int jepsen_json_canonical(const struct jepsen_json *v, struct rp_buf *out)
{
    int rv = 0;
    switch (v->type) {
    case JEPSEN_JSON_NULL:
        return rp_buf_append_str(out, "null");
    case JEPSEN_JSON_FALSE:
        return rp_buf_append_str(out, "false");
    case JEPSEN_JSON_TRUE:
        return rp_buf_append_str(out, "true");
    case JEPSEN_JSON_INT:
        return rp_buf_printf(out, "%" PRId64, v->u.i);
    case JEPSEN_JSON_FLOAT:
        /* -0.0 as "0": "-0" would read back as the integer 0, whose form is "0". */
        return rp_buf_printf(out, "%.17g", v->u.d == 0 ? 0.0 : v->u.d);
    case JEPSEN_JSON_STRING:
        return rp_json_str(out, v->u.s, v->len);
    case JEPSEN_JSON_ARRAY:
        rv = rp_buf_append_str(out, "[");
        for (size_t i = 0; rv == 0 && i < v->len; i++) {
            if (i > 0)
                rv = rp_buf_append_str(out, ",");
            if (rv == 0)
                rv = jepsen_json_canonical(&v->u.items[i], out);
        }
        return rv != 0 ? rv : rp_buf_append_str(out, "]");
    case JEPSEN_JSON_OBJECT: {
        const struct jepsen_json_member **sorted = NULL;
        if (v->len > 0) {
            sorted = malloc(v->len * sizeof *sorted);
            if (sorted == NULL)
                return rp_err(RP_ENOMEM, "out of memory sorting an object");
            for (size_t i = 0; i < v->len; i++)
                sorted[i] = &v->u.members[i];
            qsort(sorted, v->len, sizeof *sorted, cmp_member_ptr);
        }
        rv = rp_buf_append_str(out, "{");
        for (size_t i = 0; rv == 0 && i < v->len; i++) {
            if (i > 0)
                rv = rp_buf_append_str(out, ",");
            if (rv == 0)
                rv = rp_json_str(out, sorted[i]->name, sorted[i]->name_len);
            if (rv == 0)
                rv = rp_buf_append_str(out, ":");
            if (rv == 0)
                rv = jepsen_json_canonical(&sorted[i]->value, out);
        }
        free(sorted);
        return rv != 0 ? rv : rp_buf_append_str(out, "}");
    }
    }
    return rp_err(RP_EINVAL, "bad JSON value type %d", (int)v->type);
}

bool jepsen_json_equal(const struct jepsen_json *a, const struct jepsen_json *b)
{
    struct rp_buf x, y;
    rp_buf_init(&x);
    rp_buf_init(&y);
    bool eq = jepsen_json_canonical(a, &x) == 0 && jepsen_json_canonical(b, &y) == 0 &&
              x.len == y.len && (x.len == 0 || memcmp(x.data, y.data, x.len) == 0);
    rp_buf_free(&x);
    rp_buf_free(&y);
    return eq;
}

/* ---- Histories -------------------------------------------------------- */

/* What the reader remembers of each client process while pairing. */
struct proc_state {
    size_t open;    /* position of its open invoke, JEPSEN_NONE if none */
    bool last_info; /* its last op ended in info */
};

struct builder {
    struct jepsen_history *h;
    size_t cap_ops;
    struct jepsen_map procs; /* process id (8 bytes) -> index in @states */
    struct proc_state *states;
    size_t n_states, cap_states;
    bool have_index;
    int64_t last_index;
    size_t last_index_line;
};

static const char *type_name(enum jepsen_op_type t)
{
    switch (t) {
    case JEPSEN_INVOKE:
        return "invoke";
    case JEPSEN_OK:
        return "ok";
    case JEPSEN_FAIL:
        return "fail";
    case JEPSEN_INFO:
        return "info";
    }
    return "?";
}

static int get_int(const struct jepsen_json *obj, const char *name, size_t line, int64_t *out)
{
    const struct jepsen_json *v = jepsen_json_get(obj, name);
    if (v == NULL)
        return rp_err(RP_EINVAL, "line %zu: \"%s\" is missing", line, name);
    if (v->type != JEPSEN_JSON_INT)
        return rp_err(RP_EINVAL, "line %zu: \"%s\" must be an integer", line, name);
    *out = v->u.i;
    return 0;
}

static struct proc_state *proc_get(struct builder *b, int64_t process)
{
    size_t *slot;
    bool added;
    if (jepsen_map_put(&b->procs, &process, sizeof process, b->n_states, &slot, &added) != 0)
        return NULL;
    if (added) {
        if (b->n_states == b->cap_states) {
            size_t cap = b->cap_states ? b->cap_states * 2 : 64;
            struct proc_state *s = realloc(b->states, cap * sizeof *s);
            if (s == NULL) {
                rp_err(RP_ENOMEM, "out of memory tracking processes");
                return NULL;
            }
            b->states = s;
            b->cap_states = cap;
        }
        b->states[b->n_states].open = JEPSEN_NONE;
        b->states[b->n_states].last_info = false;
        b->n_states++;
    }
    return &b->states[*slot];
}

static int builder_line(struct builder *b, const char *text, size_t len, size_t line)
{
    struct jepsen_history *h = b->h;
    int rv;

    /* Blank lines (e.g. a trailing CRLF) carry nothing. */
    size_t i = 0;
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r'))
        i++;
    if (i == len)
        return 0;

    struct jepsen_json *obj = jepsen_arena_alloc(&h->arena, sizeof *obj);
    if (obj == NULL)
        return rp_err(RP_ENOMEM, "line %zu: out of memory", line);
    rv = jepsen_json_parse(text, len, &h->arena, obj);
    if (rv != 0)
        return rp_err(rv, "line %zu, %s", line, rp_errmsg());
    if (obj->type != JEPSEN_JSON_OBJECT)
        return rp_err(RP_EINVAL, "line %zu: expected a JSON object", line);

    struct jepsen_op op;
    memset(&op, 0, sizeof op);
    op.line = line;
    op.obj = obj;
    op.peer = JEPSEN_NONE;
    rv = get_int(obj, "index", line, &op.index);
    if (rv != 0)
        return rv;
    if (b->have_index && op.index <= b->last_index)
        return rp_err(RP_EINVAL,
                      "line %zu: index %" PRId64 " is not greater than index %" PRId64
                      " of line %zu",
                      line, op.index, b->last_index, b->last_index_line);
    b->have_index = true;
    b->last_index = op.index;
    b->last_index_line = line;
    rv = get_int(obj, "time", line, &op.time);
    if (rv != 0)
        return rv;
    if (op.time < 0)
        return rp_err(RP_EINVAL, "line %zu: \"time\" must not be negative", line);

    const struct jepsen_json *type = jepsen_json_get(obj, "type");
    if (type == NULL)
        return rp_err(RP_EINVAL, "line %zu: \"type\" is missing", line);
    if (jepsen_json_is_str(type, "invoke"))
        op.type = JEPSEN_INVOKE;
    else if (jepsen_json_is_str(type, "ok"))
        op.type = JEPSEN_OK;
    else if (jepsen_json_is_str(type, "fail"))
        op.type = JEPSEN_FAIL;
    else if (jepsen_json_is_str(type, "info"))
        op.type = JEPSEN_INFO;
    else
        return rp_err(RP_EINVAL,
                      "line %zu: \"type\" must be \"invoke\", \"ok\", \"fail\" or \"info\"", line);

    const struct jepsen_json *proc = jepsen_json_get(obj, "process");
    if (proc == NULL)
        return rp_err(RP_EINVAL, "line %zu: \"process\" is missing", line);
    if (jepsen_json_is_str(proc, "nemesis")) {
        op.nemesis = true;
        op.process = -1;
    } else if (proc->type == JEPSEN_JSON_INT && proc->u.i >= 0) {
        op.process = proc->u.i;
    } else {
        return rp_err(RP_EINVAL, "line %zu: \"process\" must be an integer >= 0 or \"nemesis\"",
                      line);
    }

    const struct jepsen_json *f = jepsen_json_get(obj, "f");
    if (f == NULL)
        return rp_err(RP_EINVAL, "line %zu: \"f\" is missing", line);
    if (f->type != JEPSEN_JSON_STRING)
        return rp_err(RP_EINVAL, "line %zu: \"f\" must be a string", line);
    op.f = f->u.s;
    op.key = jepsen_json_get(obj, "key");
    op.value = jepsen_json_get(obj, "value");
    op.error = jepsen_json_get(obj, "error");

    size_t pos = h->n_ops;
    if (!op.nemesis) {
        struct proc_state *ps = proc_get(b, op.process);
        if (ps == NULL)
            return rp_err(RP_ENOMEM, "line %zu: out of memory", line);
        if (op.type == JEPSEN_INVOKE) {
            if (ps->open != JEPSEN_NONE)
                return rp_err(RP_EINVAL,
                              "line %zu: process %" PRId64
                              " invokes while its op invoked at line %zu is still open",
                              line, op.process, h->ops[ps->open].line);
            if (ps->last_info) {
                if (h->reused_after_info++ == 0)
                    h->first_reuse_line = line;
                ps->last_info = false;
            }
            ps->open = pos;
        } else {
            if (ps->open == JEPSEN_NONE)
                return rp_err(RP_EINVAL,
                              "line %zu: \"%s\" for process %" PRId64 ", which has no open invoke",
                              line, type_name(op.type), op.process);
            struct jepsen_op *inv = &h->ops[ps->open];
            if (strcmp(inv->f, op.f) != 0)
                return rp_err(RP_EINVAL,
                              "line %zu: completion f \"%.64s\" differs from f \"%.64s\" of "
                              "its invoke at line %zu",
                              line, op.f, inv->f, inv->line);
            if (op.key != NULL && inv->key != NULL && !jepsen_json_equal(op.key, inv->key))
                return rp_err(RP_EINVAL,
                              "line %zu: completion key differs from the key of its invoke at "
                              "line %zu",
                              line, inv->line);
            if (op.key == NULL)
                op.key = inv->key;
            inv->peer = pos;
            op.peer = ps->open;
            ps->open = JEPSEN_NONE;
            ps->last_info = op.type == JEPSEN_INFO;
        }
    }

    if (h->n_ops == b->cap_ops) {
        size_t cap = b->cap_ops ? b->cap_ops * 2 : 1024;
        struct jepsen_op *ops = realloc(h->ops, cap * sizeof *ops);
        if (ops == NULL)
            return rp_err(RP_ENOMEM, "line %zu: out of memory", line);
        h->ops = ops;
        b->cap_ops = cap;
    }
    h->ops[h->n_ops++] = op;
    return 0;
}

static int builder_init(struct builder *b)
{
    memset(b, 0, sizeof *b);
    b->h = calloc(1, sizeof *b->h);
    if (b->h == NULL)
        return rp_err(RP_ENOMEM, "out of memory");
    jepsen_arena_init(&b->h->arena);
    jepsen_map_init(&b->procs);
    return 0;
}

static void builder_done(struct builder *b, int rv, struct jepsen_history **out)
{
    jepsen_map_free(&b->procs);
    free(b->states);
    if (rv == 0)
        *out = b->h;
    else
        jepsen_history_free(b->h);
}

static int too_long(size_t line)
{
    return rp_err(RP_EINVAL, "line %zu: longer than %d bytes", line, JEPSEN_MAX_LINE);
}

int jepsen_history_parse(const char *text, size_t len, struct jepsen_history **out)
{
    struct builder b;
    int rv = builder_init(&b);
    if (rv != 0)
        return rv;
    size_t line = 1, start = 0;
    while (rv == 0 && start < len) {
        const char *nl = memchr(text + start, '\n', len - start);
        size_t end = nl != NULL ? (size_t)(nl - text) : len;
        if (end - start > JEPSEN_MAX_LINE)
            rv = too_long(line);
        else
            rv = builder_line(&b, text + start, end - start, line);
        start = end + 1;
        line++;
    }
    builder_done(&b, rv, out);
    return rv;
}

int jepsen_history_read_file(const char *path, struct jepsen_history **out)
{
    FILE *fp = fopen(path, "rb");
    if (fp == NULL)
        return rp_err(RP_EIO, "%s: %s", path, strerror(errno));
    struct builder b;
    int rv = builder_init(&b);
    if (rv != 0) {
        fclose(fp);
        return rv;
    }
    /* Stream the file: @pending holds the bytes after the last newline seen; it
     * never grows past one maximal line plus one read. */
    struct rp_buf pending;
    rp_buf_init(&pending);
    size_t line = 1;
    bool eof = false;
    while (rv == 0 && !eof) {
        rv = rp_buf_reserve(&pending, 65536);
        if (rv != 0)
            break;
        size_t n = fread(pending.data + pending.len, 1, 65536, fp);
        if (n == 0) {
            if (ferror(fp)) {
                rv = rp_err(RP_EIO, "read failed: %s", strerror(errno));
                break;
            }
            eof = true;
        }
        size_t scan_from = pending.len;
        pending.len += n;
        size_t start = 0;
        for (;;) {
            const char *base = (const char *)pending.data;
            const char *nl = memchr(base + scan_from, '\n', pending.len - scan_from);
            if (nl == NULL)
                break;
            size_t end = (size_t)(nl - base);
            if (end - start > JEPSEN_MAX_LINE)
                rv = too_long(line);
            else
                rv = builder_line(&b, base + start, end - start, line);
            if (rv != 0)
                break;
            line++;
            start = scan_from = end + 1;
        }
        if (rv != 0)
            break;
        memmove(pending.data, pending.data + start, pending.len - start);
        pending.len -= start;
        if (pending.len > JEPSEN_MAX_LINE)
            rv = too_long(line);
        else if (eof && pending.len > 0)
            rv = builder_line(&b, (const char *)pending.data, pending.len, line);
    }
    rp_buf_free(&pending);
    fclose(fp);
    if (rv != 0)
        rv = rp_err(rv, "%s: %s", path, rp_errmsg());
    builder_done(&b, rv, out);
    return rv;
}

void jepsen_history_free(struct jepsen_history *h)
{
    if (h == NULL)
        return;
    free(h->ops);
    jepsen_arena_free(&h->arena);
    free(h);
}

const struct jepsen_op *jepsen_history_completion(const struct jepsen_history *h, size_t i)
{
    size_t c = h->ops[i].peer;
    return c == JEPSEN_NONE ? NULL : &h->ops[c];
}

int jepsen_op_json(const struct jepsen_history *h, size_t i, struct rp_buf *out)
{
    const struct jepsen_op *op = &h->ops[i];
    int rv = rp_buf_printf(out, "{\"index\":%" PRId64 ",\"line\":%zu,", op->index, op->line);
    if (rv == 0) {
        if (op->nemesis)
            rv = rp_buf_append_str(out, "\"process\":\"nemesis\"");
        else
            rv = rp_buf_printf(out, "\"process\":%" PRId64, op->process);
    }
    if (rv == 0)
        rv = rp_buf_printf(out, ",\"type\":\"%s\",\"f\":", type_name(op->type));
    if (rv == 0)
        rv = rp_json_str(out, op->f, strlen(op->f));
    if (rv == 0 && op->key != NULL) {
        rv = rp_buf_append_str(out, ",\"key\":");
        if (rv == 0)
            rv = jepsen_json_canonical(op->key, out);
    }
    if (rv == 0 && op->value != NULL) {
        rv = rp_buf_append_str(out, ",\"value\":");
        if (rv == 0)
            rv = jepsen_json_canonical(op->value, out);
    }
    return rv != 0 ? rv : rp_buf_append_str(out, "}");
}
