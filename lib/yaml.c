/* lib/yaml.c: YAML text into a tree of rp_ynode, on libyaml's event parser.
 *
 * libyaml hands us events (mapping start, scalar, ...) in document order. The tree
 * is built with an explicit stack of open collections, so nesting is bounded by
 * RP_YAML_MAX_DEPTH and not by the C stack. Each node is attached to its parent as
 * soon as it exists: freeing the documents built so far frees everything, which
 * keeps every error path one line long. */
#include "lib/yaml.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <yaml.h> /* libyaml: -I. has no yaml.h at its root, so this is the system one */

#include "lib/errors.h"

#define STR_TAG "tag:yaml.org,2002:str"

/* One open map or sequence. */
struct frame {
    struct rp_ynode *node;
    size_t cap;    /* entries allocated in keys/key_lines/vals */
    bool want_key; /* map: the next node is a key */
    size_t *index; /* map: open-addressing table of (key position + 1), 0 = empty */
    size_t index_cap;
};

struct builder {
    const char *name;
    const char *input; /* for locating reader errors and tab hints */
    size_t input_len;
    struct frame stack[RP_YAML_MAX_DEPTH];
    int depth;
    struct rp_ynode *root; /* of the document being built; owned by @docs once done */
    struct rp_ynode **docs;
    size_t n_docs, cap_docs;
    bool many; /* a second document is allowed */
};

static int line_of(const yaml_mark_t *m)
{
    return m->line >= INT32_MAX ? INT32_MAX : (int)m->line + 1;
}

void rp_yaml_excerpt(const char *s, char *out, size_t outlen)
{
    static const char hex[] = "0123456789abcdef";
    size_t o = 0, i;

    for (i = 0; s[i] != '\0' && i < 100; i++) {
        unsigned char ch = (unsigned char)s[i];
        size_t need = (ch < 0x20 || ch >= 0x7f) ? 4 : 1;
        if (o + need + 4 > outlen) /* keep room for "..." and NUL */
            break;
        if (need == 4) {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[ch >> 4];
            out[o++] = hex[ch & 15];
        } else {
            out[o++] = (char)ch;
        }
    }
    if (s[i] != '\0')
        memcpy(out + o, "...", 3), o += 3;
    out[o] = '\0';
}

void rp_ynode_free(struct rp_ynode *node)
{
    if (node == NULL)
        return;
    free(node->value);
    for (size_t i = 0; i < node->n; i++) {
        if (node->keys != NULL)
            free(node->keys[i]);
        if (node->vals != NULL)
            rp_ynode_free(node->vals[i]);
    }
    free(node->keys);
    free(node->key_lines);
    free(node->vals);
    free(node);
}

void rp_yaml_docs_free(struct rp_ynode **docs, size_t n_docs)
{
    if (docs == NULL)
        return;
    for (size_t i = 0; i < n_docs; i++)
        rp_ynode_free(docs[i]);
    free(docs);
}

const struct rp_ynode *rp_ynode_get(const struct rp_ynode *map, const char *key)
{
    if (map == NULL || map->type != RP_Y_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++)
        if (strcmp(map->keys[i], key) == 0)
            return map->vals[i];
    return NULL;
}

bool rp_ynode_is_null(const struct rp_ynode *node)
{
    if (node == NULL || node->type != RP_Y_SCALAR || node->quoted)
        return false;
    const char *v = node->value;
    return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
           strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static struct rp_ynode *node_new(enum rp_ynode_type type, const yaml_mark_t *m)
{
    struct rp_ynode *node = calloc(1, sizeof(*node));
    if (node == NULL)
        return NULL;
    node->type = type;
    node->line = line_of(m);
    node->col = m->column >= INT32_MAX ? INT32_MAX : (int)m->column + 1;
    return node;
}

/* Makes room in @f for one more entry. */
static int frame_reserve(struct frame *f)
{
    struct rp_ynode *node = f->node;
    if (node->n < f->cap)
        return 0;
    size_t cap = f->cap == 0 ? 4 : f->cap * 2;
    struct rp_ynode **vals = realloc(node->vals, cap * sizeof(*vals));
    if (vals == NULL)
        return RP_ENOMEM;
    node->vals = vals;
    if (node->type == RP_Y_MAP) {
        char **keys = realloc(node->keys, cap * sizeof(*keys));
        if (keys == NULL)
            return RP_ENOMEM;
        node->keys = keys;
        int *lines = realloc(node->key_lines, cap * sizeof(*lines));
        if (lines == NULL)
            return RP_ENOMEM;
        node->key_lines = lines;
    }
    f->cap = cap;
    return 0;
}

static size_t key_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s != '\0'; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return (size_t)h;
}

/* Position of @key in the map of @f, or -1. @f->index has room (load <= 1/2). */
static size_t *index_slot(const struct frame *f, const char *key)
{
    size_t mask = f->index_cap - 1;
    for (size_t i = key_hash(key) & mask;; i = (i + 1) & mask) {
        size_t *slot = &f->index[i];
        if (*slot == 0 || strcmp(f->node->keys[*slot - 1], key) == 0)
            return slot;
    }
}

/* Grows the duplicate-key index of @f so that one more key keeps its load <= 1/2. */
static int index_reserve(struct frame *f)
{
    if ((f->node->n + 1) * 2 <= f->index_cap)
        return 0;
    size_t cap = f->index_cap == 0 ? 16 : f->index_cap * 2;
    size_t *index = calloc(cap, sizeof(*index));
    if (index == NULL)
        return RP_ENOMEM;
    free(f->index);
    f->index = index;
    f->index_cap = cap;
    for (size_t i = 0; i < f->node->n; i++)
        *index_slot(f, f->node->keys[i]) = i + 1;
    return 0;
}

static int oom(const struct builder *b)
{
    return rp_err(RP_ENOMEM, "%s: out of memory while parsing YAML", b->name);
}

/* Adds @key (a copy is taken) to the map open on top of the stack, with no value yet. */
static int map_add_key(struct builder *b, const char *key, int line)
{
    struct frame *f = &b->stack[b->depth - 1];
    struct rp_ynode *map = f->node;

    if (index_reserve(f) != 0 || frame_reserve(f) != 0)
        return oom(b);
    size_t *slot = index_slot(f, key);
    if (*slot != 0) {
        char ex[300];
        rp_yaml_excerpt(key, ex, sizeof(ex));
        return rp_err(RP_EINVAL, "%s:%d: duplicate key '%s' (first at line %d)", b->name, line, ex,
                      map->key_lines[*slot - 1]);
    }
    char *copy = strdup(key);
    if (copy == NULL)
        return oom(b);
    map->keys[map->n] = copy;
    map->key_lines[map->n] = line;
    map->vals[map->n] = NULL;
    map->n++;
    *slot = map->n;
    f->want_key = false;
    return 0;
}

/* Hands @node to the document: as its root, a sequence item or a map value. On error
 * @node is freed. */
static int attach(struct builder *b, struct rp_ynode *node)
{
    if (b->depth == 0) {
        b->root = node;
        return 0;
    }
    struct frame *f = &b->stack[b->depth - 1];
    if (f->node->type == RP_Y_MAP) {
        if (f->want_key) {
            int line = node->line;
            const char *what = node->type == RP_Y_MAP ? "a map" : "a list";
            rp_ynode_free(node);
            return rp_err(RP_EINVAL, "%s:%d: map keys must be scalars, found %s used as a key",
                          b->name, line, what);
        }
        f->node->vals[f->node->n - 1] = node;
        f->want_key = true;
        return 0;
    }
    if (frame_reserve(f) != 0) {
        rp_ynode_free(node);
        return oom(b);
    }
    f->node->vals[f->node->n++] = node;
    return 0;
}

static int no_anchor(const struct builder *b, const yaml_char_t *anchor, const yaml_mark_t *m)
{
    if (anchor == NULL)
        return 0;
    return rp_err(RP_EINVAL, "%s:%d: YAML anchors and aliases are not supported", b->name,
                  line_of(m));
}

static int unsupported_tag(const struct builder *b, const yaml_char_t *tag, const yaml_mark_t *m)
{
    char ex[100];
    rp_yaml_excerpt((const char *)tag, ex, sizeof(ex));
    return rp_err(RP_EINVAL, "%s:%d: YAML tag '%s' is not supported", b->name, line_of(m), ex);
}

static int on_scalar(struct builder *b, const yaml_event_t *ev)
{
    const yaml_mark_t *m = &ev->start_mark;
    const char *value = (const char *)ev->data.scalar.value;
    size_t len = ev->data.scalar.length;
    const char *tag = (const char *)ev->data.scalar.tag;
    int rv;

    if ((rv = no_anchor(b, ev->data.scalar.anchor, m)) != 0)
        return rv;
    /* An explicit "!" (non-specific tag) also just means "a string". */
    if (tag != NULL && strcmp(tag, STR_TAG) != 0 && strcmp(tag, "!") != 0)
        return unsupported_tag(b, ev->data.scalar.tag, m);
    if (memchr(value, '\0', len) != NULL)
        return rp_err(RP_EINVAL, "%s:%d: NUL characters in a scalar are not supported", b->name,
                      line_of(m));

    if (b->depth > 0) {
        struct frame *f = &b->stack[b->depth - 1];
        if (f->node->type == RP_Y_MAP && f->want_key)
            return map_add_key(b, value, line_of(m));
    }

    struct rp_ynode *node = node_new(RP_Y_SCALAR, m);
    if (node == NULL)
        return oom(b);
    node->value = malloc(len + 1);
    if (node->value == NULL) {
        free(node);
        return oom(b);
    }
    memcpy(node->value, value, len);
    node->value[len] = '\0';
    node->quoted = ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE || tag != NULL;
    return attach(b, node);
}

static int on_collection_start(struct builder *b, const yaml_event_t *ev, enum rp_ynode_type type)
{
    const yaml_mark_t *m = &ev->start_mark;
    const yaml_char_t *anchor, *tag;
    const char *std_tag;
    int rv;

    if (type == RP_Y_MAP) {
        anchor = ev->data.mapping_start.anchor;
        tag = ev->data.mapping_start.tag;
        std_tag = "tag:yaml.org,2002:map";
    } else {
        anchor = ev->data.sequence_start.anchor;
        tag = ev->data.sequence_start.tag;
        std_tag = "tag:yaml.org,2002:seq";
    }
    if ((rv = no_anchor(b, anchor, m)) != 0)
        return rv;
    if (tag != NULL && strcmp((const char *)tag, std_tag) != 0 && strcmp((const char *)tag, "!"))
        return unsupported_tag(b, tag, m);
    if (b->depth == RP_YAML_MAX_DEPTH)
        return rp_err(RP_EINVAL,
                      "%s:%d: maps and lists nested deeper than %d levels are not "
                      "supported",
                      b->name, line_of(m), RP_YAML_MAX_DEPTH);

    struct rp_ynode *node = node_new(type, m);
    if (node == NULL)
        return oom(b);
    if ((rv = attach(b, node)) != 0)
        return rv;
    b->stack[b->depth++] = (struct frame){.node = node, .want_key = type == RP_Y_MAP};
    return 0;
}

static void on_collection_end(struct builder *b)
{
    struct frame *f = &b->stack[--b->depth];
    free(f->index);
    f->index = NULL;
}

static int on_document_start(struct builder *b, const yaml_event_t *ev)
{
    if (!b->many && b->n_docs > 0)
        return rp_err(RP_EINVAL,
                      "%s:%d: found a second YAML document ('---'); only one is "
                      "expected here",
                      b->name, line_of(&ev->start_mark));
    b->root = NULL;
    return 0;
}

static int on_document_end(struct builder *b)
{
    struct rp_ynode *root = b->root;

    /* An empty document (or one that says only "~") is an empty map. */
    if (root == NULL || rp_ynode_is_null(root)) {
        int line = root != NULL ? root->line : 1, col = root != NULL ? root->col : 1;
        rp_ynode_free(root);
        b->root = root = calloc(1, sizeof(*root));
        if (root == NULL)
            return oom(b);
        root->type = RP_Y_MAP;
        root->line = line;
        root->col = col;
    }
    if (b->n_docs == b->cap_docs) {
        size_t cap = b->cap_docs == 0 ? 4 : b->cap_docs * 2;
        struct rp_ynode **docs = realloc(b->docs, cap * sizeof(*docs));
        if (docs == NULL)
            return oom(b); /* b->root is freed by the caller */
        b->docs = docs;
        b->cap_docs = cap;
    }
    b->docs[b->n_docs++] = root;
    b->root = NULL;
    return 0;
}

/* Turns libyaml's error into "NAME:LINE:COL: problem context". */
static int syntax_error(const struct builder *b, const yaml_parser_t *p)
{
    if (p->error == YAML_MEMORY_ERROR)
        return oom(b);
    const char *problem = p->problem != NULL ? p->problem : "invalid YAML";

    if (p->error == YAML_READER_ERROR) {
        /* Reader errors carry a byte offset, not a mark: count lines ourselves. */
        size_t off = p->problem_offset < b->input_len ? p->problem_offset : b->input_len;
        size_t line = 1, line_start = 0;
        for (size_t i = 0; i < off; i++)
            if (b->input[i] == '\n')
                line++, line_start = i + 1;
        if (p->problem_value != -1)
            return rp_err(RP_EINVAL, "%s:%zu:%zu: %s (byte 0x%02x)", b->name, line,
                          off - line_start + 1, problem, (unsigned)p->problem_value & 0xffu);
        return rp_err(RP_EINVAL, "%s:%zu:%zu: %s", b->name, line, off - line_start + 1, problem);
    }

    const yaml_mark_t *m = &p->problem_mark;
    const char *hint = "";
    if (m->index < b->input_len && b->input[m->index] == '\t')
        hint = " (YAML does not allow tabs for indentation; use spaces)";
    if (p->context == NULL)
        return rp_err(RP_EINVAL, "%s:%d:%zu: %s%s", b->name, line_of(m), m->column + 1, problem,
                      hint);
    if (p->context_mark.line != m->line)
        return rp_err(RP_EINVAL, "%s:%d:%zu: %s %s at line %d%s", b->name, line_of(m),
                      m->column + 1, problem, p->context, line_of(&p->context_mark), hint);
    return rp_err(RP_EINVAL, "%s:%d:%zu: %s %s%s", b->name, line_of(m), m->column + 1, problem,
                  p->context, hint);
}

static int handle_event(struct builder *b, const yaml_event_t *ev)
{
    switch (ev->type) {
    case YAML_DOCUMENT_START_EVENT:
        return on_document_start(b, ev);
    case YAML_DOCUMENT_END_EVENT:
        return on_document_end(b);
    case YAML_SCALAR_EVENT:
        return on_scalar(b, ev);
    case YAML_SEQUENCE_START_EVENT:
        return on_collection_start(b, ev, RP_Y_SEQ);
    case YAML_MAPPING_START_EVENT:
        return on_collection_start(b, ev, RP_Y_MAP);
    case YAML_SEQUENCE_END_EVENT:
    case YAML_MAPPING_END_EVENT:
        on_collection_end(b);
        return 0;
    case YAML_ALIAS_EVENT:
        return rp_err(RP_EINVAL, "%s:%d: YAML anchors and aliases are not supported", b->name,
                      line_of(&ev->start_mark));
    default: /* stream start/end, no event */
        return 0;
    }
}

static int parse_stream(struct builder *b, const char *s, size_t n)
{
    yaml_parser_t parser;
    int rv = 0;

    if (n > RP_YAML_MAX_BYTES)
        return rp_err(RP_EINVAL,
                      "%s: %zu bytes is larger than the %u MiB limit for a YAML "
                      "document",
                      b->name, n, RP_YAML_MAX_BYTES >> 20);
    if (s == NULL)
        s = ""; /* libyaml asserts a non-NULL input */
    b->input = s;
    b->input_len = n;
    if (!yaml_parser_initialize(&parser))
        return oom(b);
    yaml_parser_set_input_string(&parser, (const unsigned char *)s, n);

    for (bool done = false; !done && rv == 0;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&parser, &ev)) {
            rv = syntax_error(b, &parser);
            break;
        }
        done = ev.type == YAML_STREAM_END_EVENT;
        rv = handle_event(b, &ev);
        yaml_event_delete(&ev);
    }
    yaml_parser_delete(&parser);

    /* The partial document hangs off b->root; open frames only point into it. */
    while (b->depth > 0)
        on_collection_end(b);
    rp_ynode_free(b->root);
    b->root = NULL;
    if (rv != 0) {
        rp_yaml_docs_free(b->docs, b->n_docs);
        b->docs = NULL;
        b->n_docs = 0;
    }
    return rv;
}

int rp_yaml_parse_all(const char *name, const char *s, size_t n, struct rp_ynode ***docs,
                      size_t *n_docs)
{
    struct builder b = {.name = name, .many = true};
    int rv = parse_stream(&b, s, n);

    *docs = rv == 0 ? b.docs : NULL;
    *n_docs = rv == 0 ? b.n_docs : 0;
    return rv;
}

int rp_yaml_parse_str(const char *name, const char *s, size_t n, struct rp_ynode **out)
{
    struct builder b = {.name = name, .many = false};
    int rv = parse_stream(&b, s, n);

    *out = NULL;
    if (rv != 0)
        return rv;
    if (b.n_docs == 1) {
        *out = b.docs[0];
        free(b.docs);
        return 0;
    }
    free(b.docs); /* no document at all: empty input or only comments */
    *out = calloc(1, sizeof(**out));
    if (*out == NULL)
        return oom(&b);
    (*out)->type = RP_Y_MAP;
    (*out)->line = (*out)->col = 1;
    return 0;
}

/* Reads @path whole, refusing more than RP_YAML_MAX_BYTES without reading them all. */
static int read_limited(const char *path, char **out, size_t *len)
{
    size_t cap = 64 * 1024, n = 0;
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0)
        return rp_err(RP_EIO, "%s: cannot open: %s", path, strerror(errno));
    for (;;) {
        if (n == cap || buf == NULL) {
            /* One byte past the limit is enough to know the file is too large. */
            if (buf != NULL)
                cap = cap * 2 > RP_YAML_MAX_BYTES + 1 ? RP_YAML_MAX_BYTES + 1 : cap * 2;
            char *grown = realloc(buf, cap + 1);
            if (grown == NULL) {
                free(buf);
                close(fd);
                return rp_err(RP_ENOMEM, "%s: out of memory reading the file", path);
            }
            buf = grown;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            free(buf);
            close(fd);
            return rp_err(RP_EIO, "%s: cannot read: %s", path, strerror(e));
        }
        if (r == 0)
            break;
        n += (size_t)r;
        if (n > RP_YAML_MAX_BYTES) {
            free(buf);
            close(fd);
            return rp_err(RP_EINVAL, "%s: larger than the %u MiB limit for a YAML document", path,
                          RP_YAML_MAX_BYTES >> 20);
        }
    }
    close(fd);
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

int rp_yaml_parse_file(const char *path, struct rp_ynode **out)
{
    char *s = NULL;
    size_t n = 0;
    int rv;

    *out = NULL;
    if ((rv = read_limited(path, &s, &n)) != 0)
        return rv;
    rv = rp_yaml_parse_str(path, s, n, out);
    free(s);
    return rv;
}
