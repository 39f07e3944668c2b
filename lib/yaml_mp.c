/* lib/yaml_mp.c: YAML trees into msgpack with a path -> line table, and msgpack
 * back into block-style YAML that reads back to the same bytes.
 *
 * The two directions share one scalar resolver (resolve()): the converter uses it to
 * type unquoted scalars, the writer uses it to decide whether a string may be written
 * plain, so that whatever the writer leaves unquoted resolves to a string again. */
#include "lib/yaml_mp.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"

/* ---- paths ------------------------------------------------------------------- */

/* Keeps @path NUL-terminated past its length. */
static int path_terminate(struct rp_buf *path)
{
    if (rp_buf_reserve(path, 1) != 0)
        return -1;
    path->data[path->len] = '\0';
    return 0;
}

const char *rp_ymp_path_str(const struct rp_buf *path)
{
    return path->len == 0 || path->data == NULL ? "" : (const char *)path->data;
}

void rp_ymp_path_pop(struct rp_buf *path, size_t len)
{
    if (len == (size_t)-1 || len > path->len)
        return;
    path->len = len;
    if (path->data != NULL)
        path->data[len] = '\0';
}

/* A key that would be ambiguous or unreadable after a '.' goes in brackets. */
static bool key_needs_brackets(const char *key, size_t n)
{
    if (n == 0)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)key[i];
        if (ch <= 0x20 || ch == 0x7f || ch == '.' || ch == '[' || ch == ']' || ch == '"' ||
            ch == '\\')
            return true;
    }
    return false;
}

size_t rp_ymp_path_key(struct rp_buf *path, const char *key, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t old = path->len;
    int rv = 0;

    if (!key_needs_brackets(key, n)) {
        if (old > 0)
            rv |= rp_buf_append(path, ".", 1);
        rv |= rp_buf_append(path, key, n);
    } else {
        rv |= rp_buf_append(path, "[\"", 2);
        for (size_t i = 0; i < n && rv == 0; i++) {
            unsigned char ch = (unsigned char)key[i];
            if (ch == '"' || ch == '\\') {
                char esc[2] = {'\\', (char)ch};
                rv |= rp_buf_append(path, esc, 2);
            } else if (ch < 0x20 || ch == 0x7f) {
                char esc[4] = {'\\', 'x', hex[ch >> 4], hex[ch & 15]};
                rv |= rp_buf_append(path, esc, 4);
            } else {
                rv |= rp_buf_append(path, &key[i], 1);
            }
        }
        rv |= rp_buf_append(path, "\"]", 2);
    }
    if (rv != 0 || path_terminate(path) != 0) {
        rp_ymp_path_pop(path, old);
        return (size_t)-1;
    }
    return old;
}

size_t rp_ymp_path_index(struct rp_buf *path, size_t i)
{
    size_t old = path->len;
    if (rp_buf_printf(path, "[%zu]", i) != 0 || path_terminate(path) != 0) {
        rp_ymp_path_pop(path, old);
        return (size_t)-1;
    }
    return old;
}

/* Length of the parent of the path @p (@n bytes): up to its last '.' or '[' that is
 * not inside a bracketed, quoted key. 0 for a top-level field. */
static size_t path_parent_len(const char *p, size_t n)
{
    size_t last = 0;
    bool in_quote = false;
    for (size_t i = 0; i < n; i++) {
        if (in_quote) {
            if (p[i] == '\\')
                i++;
            else if (p[i] == '"')
                in_quote = false;
        } else if (p[i] == '"') {
            in_quote = true;
        } else if (p[i] == '.' || p[i] == '[') {
            last = i;
        }
    }
    return last;
}

/* ---- the path -> line table ---------------------------------------------------- */

void rp_ymp_lines_init(struct rp_ymp_lines *l)
{
    memset(l, 0, sizeof(*l));
}

void rp_ymp_lines_free(struct rp_ymp_lines *l)
{
    if (l == NULL)
        return;
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i].path);
    free(l->v);
    free(l->name);
    rp_ymp_lines_init(l);
}

static int lines_add(struct rp_ymp_lines *l, const char *path, int line)
{
    if (l->n == l->cap) {
        size_t cap = l->cap == 0 ? 32 : l->cap * 2;
        struct rp_ymp_line *v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return RP_ENOMEM;
        l->v = v;
        l->cap = cap;
    }
    char *copy = strdup(path);
    if (copy == NULL)
        return RP_ENOMEM;
    l->v[l->n].path = copy;
    l->v[l->n].line = line;
    l->n++;
    return 0;
}

/* Line of exactly @p (@n bytes), or 0. */
static int lines_find(const struct rp_ymp_lines *l, const char *p, size_t n)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->v[i].path) == n && memcmp(l->v[i].path, p, n) == 0)
            return l->v[i].line;
    return 0;
}

int rp_ymp_line(const struct rp_ymp_lines *l, const char *path)
{
    if (l == NULL || l->n == 0)
        return 0;
    size_t n = strlen(path);
    for (;;) {
        int line = lines_find(l, path, n);
        if (line > 0 || n == 0)
            return line;
        n = path_parent_len(path, n);
    }
}

int rp_ymp_err(const struct rp_ymp_lines *l, int code, const char *path, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (l == NULL)
        return rp_err(code, "%s: %s", path, msg);
    return rp_err(code, "%s:%d: %s: %s", l->name != NULL ? l->name : "-", rp_ymp_line(l, path),
                  path, msg);
}

int rp_ymp_locate(const struct rp_ymp_lines *l, int code)
{
    if (l == NULL)
        return code;
    char msg[512];
    snprintf(msg, sizeof msg, "%s", rp_errmsg());

    /* The path ends at the first ": " outside a bracketed key; a space before it
     * means the message does not start with a path. */
    char path[512];
    size_t plen = 0;
    bool in_quote = false, found = false;
    for (size_t i = 0; msg[i] != '\0'; i++) {
        if (in_quote) {
            if (msg[i] == '\\' && msg[i + 1] != '\0')
                i++;
            else if (msg[i] == '"')
                in_quote = false;
            continue;
        }
        if (msg[i] == '"') {
            in_quote = true;
        } else if (msg[i] == ':' && msg[i + 1] == ' ') {
            plen = i;
            found = true;
            break;
        } else if (msg[i] == ' ') {
            break;
        }
    }
    if (!found)
        plen = 0;
    memcpy(path, msg, plen);
    path[plen] = '\0';
    return rp_err(code, "%s:%d: %s", l->name != NULL ? l->name : "-", rp_ymp_line(l, path), msg);
}

/* ---- scalars ------------------------------------------------------------------- */

enum skind { SK_NULL, SK_BOOL, SK_UINT, SK_INT, SK_FLOAT, SK_STR };

struct scalar {
    enum skind kind;
    bool b;
    uint64_t u;
    int64_t i;
    double d;
};

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

static bool is_one_of(const char *v, const char *const *words)
{
    for (; *words != NULL; words++)
        if (strcmp(v, *words) == 0)
            return true;
    return false;
}

/* [-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)? */
static bool is_core_float(const char *v)
{
    const char *p = v;
    if (*p == '-' || *p == '+')
        p++;
    bool digits = false;
    while (is_digit(*p))
        p++, digits = true;
    if (*p == '.') {
        p++;
        bool frac = false;
        while (is_digit(*p))
            p++, frac = true;
        if (!digits && !frac)
            return false;
    } else if (!digits) {
        return false;
    }
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '-' || *p == '+')
            p++;
        if (!is_digit(*p))
            return false;
        while (is_digit(*p))
            p++;
    }
    return *p == '\0';
}

/* Digits of @p in @base into *@u; false if empty, a bad digit, or overflow. The value
 * as a double goes to *@d in every case where the digits are valid. */
static bool parse_digits(const char *p, unsigned base, uint64_t *u, double *d, bool *overflow)
{
    uint64_t v = 0;
    double dv = 0;
    *overflow = false;
    if (*p == '\0')
        return false;
    for (; *p != '\0'; p++) {
        unsigned digit;
        if (is_digit(*p))
            digit = (unsigned)(*p - '0');
        else if (*p >= 'a' && *p <= 'f')
            digit = (unsigned)(*p - 'a' + 10);
        else if (*p >= 'A' && *p <= 'F')
            digit = (unsigned)(*p - 'A' + 10);
        else
            return false;
        if (digit >= base)
            return false;
        if (v > (UINT64_MAX - digit) / base)
            *overflow = true;
        v = v * base + digit;
        dv = dv * base + digit;
    }
    *u = v;
    *d = dv;
    return true;
}

/* Types the unquoted scalar @v the way the YAML 1.2 core schema does. */
static enum skind resolve(const char *v, struct scalar *s)
{
    static const char *const nulls[] = {"", "~", "null", "Null", "NULL", NULL};
    static const char *const trues[] = {"true", "True", "TRUE", NULL};
    static const char *const falses[] = {"false", "False", "FALSE", NULL};
    static const char *const infs[] = {".inf", ".Inf", ".INF", NULL};
    static const char *const nans[] = {".nan", ".NaN", ".NAN", NULL};
    bool overflow;

    memset(s, 0, sizeof(*s));
    if (is_one_of(v, nulls))
        return s->kind = SK_NULL;
    if (is_one_of(v, trues) || is_one_of(v, falses)) {
        s->b = is_one_of(v, trues);
        return s->kind = SK_BOOL;
    }
    if (is_one_of(v, nans)) {
        s->d = NAN;
        return s->kind = SK_FLOAT;
    }
    const char *unsigned_part = (v[0] == '-' || v[0] == '+') ? v + 1 : v;
    if (is_one_of(unsigned_part, infs)) {
        s->d = v[0] == '-' ? -INFINITY : INFINITY;
        return s->kind = SK_FLOAT;
    }
    if (v[0] == '0' && (v[1] == 'o' || v[1] == 'x')) {
        if (parse_digits(v + 2, v[1] == 'o' ? 8 : 16, &s->u, &s->d, &overflow)) {
            if (overflow)
                return s->kind = SK_FLOAT;
            return s->kind = SK_UINT;
        }
        return s->kind = SK_STR;
    }
    if (parse_digits(unsigned_part, 10, &s->u, &s->d, &overflow)) {
        if (v[0] == '-') {
            s->d = -s->d;
            if (overflow || s->u > (uint64_t)INT64_MAX + 1)
                return s->kind = SK_FLOAT;
            s->i = s->u == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)s->u;
            return s->kind = SK_INT;
        }
        return s->kind = overflow ? SK_FLOAT : SK_UINT;
    }
    if (is_core_float(v)) {
        errno = 0;
        s->d = strtod(v, NULL);
        return s->kind = SK_FLOAT;
    }
    return s->kind = SK_STR;
}

/* ---- YAML tree -> msgpack -------------------------------------------------------- */

struct conv {
    msgpack_packer pk;
    struct rp_buf path;
    struct rp_ymp_lines *lines;
    const char *name;
    int rv; /* packer failures, ORed */
};

static int conv_record(struct conv *c, int line)
{
    if (c->lines == NULL)
        return 0;
    return lines_add(c->lines, rp_ymp_path_str(&c->path), line);
}

static int conv_node(struct conv *c, const struct rp_ynode *node, int depth)
{
    int rv;

    if (depth > RP_YAML_MAX_DEPTH)
        return rp_err(RP_EINVAL, "%s: %s: nested deeper than %d levels", c->name,
                      rp_ymp_path_str(&c->path), RP_YAML_MAX_DEPTH);
    if (node == NULL) {
        c->rv |= msgpack_pack_nil(&c->pk);
        return 0;
    }
    switch (node->type) {
    case RP_Y_SCALAR: {
        struct scalar s;
        if (node->quoted || resolve(node->value, &s) == SK_STR) {
            rp_mp_pack_str(&c->pk, node->value);
            return 0;
        }
        switch (s.kind) {
        case SK_NULL:
            c->rv |= msgpack_pack_nil(&c->pk);
            break;
        case SK_BOOL:
            c->rv |= s.b ? msgpack_pack_true(&c->pk) : msgpack_pack_false(&c->pk);
            break;
        case SK_UINT:
            c->rv |= msgpack_pack_uint64(&c->pk, s.u);
            break;
        case SK_INT:
            c->rv |= msgpack_pack_int64(&c->pk, s.i);
            break;
        default:
            c->rv |= msgpack_pack_double(&c->pk, s.d);
            break;
        }
        return 0;
    }
    case RP_Y_MAP:
        c->rv |= msgpack_pack_map(&c->pk, node->n);
        for (size_t i = 0; i < node->n; i++) {
            size_t old = rp_ymp_path_key(&c->path, node->keys[i], strlen(node->keys[i]));
            if (old == (size_t)-1)
                return RP_ENOMEM;
            int line = node->key_lines != NULL ? node->key_lines[i] : node->line;
            if ((rv = conv_record(c, line)) != 0)
                return rv;
            rp_mp_pack_str(&c->pk, node->keys[i]);
            if ((rv = conv_node(c, node->vals[i], depth + 1)) != 0)
                return rv;
            rp_ymp_path_pop(&c->path, old);
        }
        return 0;
    case RP_Y_SEQ:
        c->rv |= msgpack_pack_array(&c->pk, node->n);
        for (size_t i = 0; i < node->n; i++) {
            size_t old = rp_ymp_path_index(&c->path, i);
            if (old == (size_t)-1)
                return RP_ENOMEM;
            int line = node->vals[i] != NULL ? node->vals[i]->line : node->line;
            if ((rv = conv_record(c, line)) != 0)
                return rv;
            if ((rv = conv_node(c, node->vals[i], depth + 1)) != 0)
                return rv;
            rp_ymp_path_pop(&c->path, old);
        }
        return 0;
    }
    return rp_err(RP_EINVAL, "%s: %s: YAML node of unknown type %d", c->name,
                  rp_ymp_path_str(&c->path), (int)node->type);
}

int rp_ymp_from_yaml(const struct rp_ynode *root, const char *name, struct rp_buf *out,
                     struct rp_ymp_lines *lines)
{
    struct conv c = {.lines = lines, .name = name != NULL ? name : "-"};
    size_t old_len = out->len;
    int rv = 0;

    rp_buf_init(&c.path);
    rp_mp_packer_init(&c.pk, out);
    if (lines != NULL) {
        rp_ymp_lines_free(lines);
        if ((lines->name = strdup(c.name)) == NULL)
            rv = RP_ENOMEM;
    }
    if (rv == 0)
        rv = conv_record(&c, root != NULL ? root->line : 1);
    if (rv == 0)
        rv = conv_node(&c, root, 0);
    if (rv == 0 && c.rv != 0)
        rv = RP_ENOMEM;
    rp_buf_free(&c.path);
    if (rv != 0) {
        out->len = old_len;
        rp_ymp_lines_free(lines);
        if (rv == RP_ENOMEM)
            return rp_err(RP_ENOMEM, "%s: out of memory converting YAML to msgpack", c.name);
    }
    return rv;
}

int rp_ymp_parse_str(const char *name, const char *s, size_t n, struct rp_buf *out,
                     struct rp_ymp_lines *lines)
{
    struct rp_ynode *root = NULL;
    int rv = rp_yaml_parse_str(name, s, n, &root);
    if (rv != 0) {
        rp_ymp_lines_free(lines);
        return rv;
    }
    rv = rp_ymp_from_yaml(root, name, out, lines);
    rp_ynode_free(root);
    return rv;
}

/* ---- msgpack -> YAML text -------------------------------------------------------- */

struct emit {
    struct rp_buf *out;
    struct rp_buf path;
    int rv; /* buffer failures, ORed */
};

static void put(struct emit *e, const char *s, size_t n)
{
    e->rv |= rp_buf_append(e->out, s, n);
}

static void puts_(struct emit *e, const char *s)
{
    put(e, s, strlen(s));
}

static void indent(struct emit *e, int n)
{
    static const char spaces[] = "                                ";
    while (n > 0) {
        int k = n > 32 ? 32 : n;
        put(e, spaces, (size_t)k);
        n -= k;
    }
}

static int emit_fail(struct emit *e, const char *what)
{
    const char *p = rp_ymp_path_str(&e->path);
    return rp_err(RP_EINVAL, "%s: %s", *p != '\0' ? p : "(document)", what);
}

static bool plain_char(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || is_digit((char)ch) ||
           ch == '_' || ch == '.' || ch == '/' || ch == '@' || ch == '+' || ch == '=' ||
           ch == '-' || ch == ' ';
}

/* True if @s (@n bytes) can be written without quotes and reads back as the same
 * string, under YAML 1.2 and under the 1.1 rules other tools still apply. */
static bool plain_ok(const char *s, size_t n)
{
    static const char *const yaml11_bools[] = {"y",  "Y",   "yes", "Yes", "YES", "n",
                                               "N",  "no",  "No",  "NO",  "on",  "On",
                                               "ON", "off", "Off", "OFF", NULL};
    if (n == 0 || n > 200)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!plain_char((unsigned char)s[i]))
            return false;
    unsigned char first = (unsigned char)s[0];
    if (!((first >= 'a' && first <= 'z') || (first >= 'A' && first <= 'Z') ||
          is_digit((char)first) || first == '_' || first == '.' || first == '/'))
        return false;
    if (s[n - 1] == ' ')
        return false;

    char tmp[201];
    memcpy(tmp, s, n);
    tmp[n] = '\0';
    struct scalar sc;
    if (resolve(tmp, &sc) != SK_STR || is_one_of(tmp, yaml11_bools))
        return false;
    /* Anything number-like in some YAML version (0b101, 1_000, 12e, 1.2.3) is quoted. */
    if (is_digit((char)first) || first == '.') {
        bool numberish = true;
        for (size_t i = 0; i < n && numberish; i++)
            numberish = strchr("0123456789_.+-eExXoObBaAcCdDfF", s[i]) != NULL;
        if (numberish)
            return false;
    }
    return true;
}

/* Decodes one UTF-8 sequence at @s (@n bytes left); returns its length or 0 if invalid. */
static size_t utf8_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    if (s[0] < 0x80) {
        *cp = s[0];
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if ((s[0] & 0xe0) == 0xc0)
        len = 2, c = s[0] & 0x1f, min = 0x80;
    else if ((s[0] & 0xf0) == 0xe0)
        len = 3, c = s[0] & 0x0f, min = 0x800;
    else if ((s[0] & 0xf8) == 0xf0)
        len = 4, c = s[0] & 0x07, min = 0x10000;
    else
        return 0;
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

bool rp_ymp_str_ok(const char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        size_t len = s[i] == '\0' ? 0 : utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (len == 0)
            return false;
        i += len;
    }
    return true;
}

static int emit_quoted(struct emit *e, const char *s, size_t n)
{
    char esc[16];
    put(e, "\"", 1);
    for (size_t i = 0; i < n;) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\0')
            return emit_fail(e, "a string holding a NUL byte has no YAML form");
        if (ch < 0x80) {
            if (ch == '"')
                put(e, "\\\"", 2);
            else if (ch == '\\')
                put(e, "\\\\", 2);
            else if (ch == '\n')
                put(e, "\\n", 2);
            else if (ch == '\t')
                put(e, "\\t", 2);
            else if (ch == '\r')
                put(e, "\\r", 2);
            else if (ch < 0x20 || ch == 0x7f)
                put(e, esc, (size_t)snprintf(esc, sizeof esc, "\\x%02x", ch));
            else
                put(e, &s[i], 1);
            i++;
            continue;
        }
        uint32_t cp;
        size_t len = utf8_decode((const unsigned char *)s + i, n - i, &cp);
        if (len == 0)
            return emit_fail(e, "a string that is not valid UTF-8 has no YAML form");
        /* C1 controls, the line/paragraph separators, the BOM and non-characters are
         * not printable for YAML readers (or fold as line breaks): escape them. */
        if ((cp >= 0x80 && cp <= 0x9f) || cp == 0x2028 || cp == 0x2029 || cp == 0xfeff ||
            cp == 0xfffe || cp == 0xffff)
            put(e, esc, (size_t)snprintf(esc, sizeof esc, "\\u%04x", (unsigned)cp));
        else
            put(e, s + i, len);
        i += len;
    }
    put(e, "\"", 1);
    return 0;
}

static int emit_string(struct emit *e, const char *s, size_t n)
{
    if (plain_ok(s, n)) {
        put(e, s, n);
        return 0;
    }
    return emit_quoted(e, s, n);
}

/* Shortest text that reads back as exactly @d and reads as a float, not an int. */
static void emit_float(struct emit *e, double d)
{
    char tmp[64];
    if (isnan(d)) {
        puts_(e, ".nan");
        return;
    }
    if (isinf(d)) {
        puts_(e, d < 0 ? "-.inf" : ".inf");
        return;
    }
    int prec;
    for (prec = 1; prec <= 17; prec++) {
        snprintf(tmp, sizeof tmp, "%.*g", prec, d);
        if (strtod(tmp, NULL) == d)
            break;
    }
    /* %g switches to an exponent once it exceeds the precision ("1e+02" for 100):
     * write moderate magnitudes positionally, as people do. */
    char *ep = strpbrk(tmp, "eE");
    if (ep != NULL) {
        int exp = atoi(ep + 1);
        if (exp >= -4 && exp < 16) {
            int decimals = prec - 1 - exp;
            snprintf(tmp, sizeof tmp, "%.*f", decimals > 0 ? decimals : 0, d);
        }
    }
    if (strpbrk(tmp, ".eE") == NULL)
        strcat(tmp, ".0");
    puts_(e, tmp);
}

/* A non-empty map or array: written as an indented block. */
static bool is_block(const msgpack_object *o)
{
    return (o->type == MSGPACK_OBJECT_MAP && o->via.map.size > 0) ||
           (o->type == MSGPACK_OBJECT_ARRAY && o->via.array.size > 0);
}

static int emit_scalar(struct emit *e, const msgpack_object *o)
{
    char tmp[32];
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        puts_(e, "null");
        return 0;
    case MSGPACK_OBJECT_BOOLEAN:
        puts_(e, o->via.boolean ? "true" : "false");
        return 0;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        snprintf(tmp, sizeof tmp, "%llu", (unsigned long long)o->via.u64);
        puts_(e, tmp);
        return 0;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        snprintf(tmp, sizeof tmp, "%lld", (long long)o->via.i64);
        puts_(e, tmp);
        return 0;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        emit_float(e, o->via.f64);
        return 0;
    case MSGPACK_OBJECT_STR:
        return emit_string(e, o->via.str.ptr, o->via.str.size);
    case MSGPACK_OBJECT_MAP:
        puts_(e, "{}");
        return 0;
    case MSGPACK_OBJECT_ARRAY:
        puts_(e, "[]");
        return 0;
    default:
        return emit_fail(e, "binary and extension values have no YAML form");
    }
}

static int emit_seq(struct emit *e, const msgpack_object *o, int ind, bool first_inline, int depth);

static int emit_map(struct emit *e, const msgpack_object *o, int ind, bool first_inline, int depth)
{
    int rv;
    if (depth > RP_YAML_MAX_DEPTH)
        return emit_fail(e, "nested too deeply to be written as YAML");
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key;
        const msgpack_object *v = &o->via.map.ptr[i].val;
        size_t old;
        if (k->type == MSGPACK_OBJECT_STR) {
            old = rp_ymp_path_key(&e->path, k->via.str.ptr, k->via.str.size);
        } else {
            old = rp_ymp_path_key(&e->path, "?", 1);
        }
        if (old == (size_t)-1)
            return RP_ENOMEM;
        if (i > 0 || !first_inline)
            indent(e, ind);
        if (k->type == MSGPACK_OBJECT_MAP || k->type == MSGPACK_OBJECT_ARRAY)
            return emit_fail(e, "a map or list used as a map key has no YAML form here");
        size_t key_at = e->out->len;
        if ((rv = emit_scalar(e, k)) != 0)
            return rv;
        /* libyaml reads implicit keys of up to 1024 characters only, counted as written:
         * quotes and escapes included. */
        if (e->out->len - key_at > 1000)
            return emit_fail(e, "a map key longer than 1000 bytes as written has no YAML form "
                                "here");
        put(e, ":", 1);
        if (v->type == MSGPACK_OBJECT_MAP && is_block(v)) {
            put(e, "\n", 1);
            rv = emit_map(e, v, ind + 2, false, depth + 1);
        } else if (is_block(v)) {
            put(e, "\n", 1);
            rv = emit_seq(e, v, ind, false, depth + 1);
        } else {
            put(e, " ", 1);
            if ((rv = emit_scalar(e, v)) == 0)
                put(e, "\n", 1);
        }
        if (rv != 0)
            return rv;
        rp_ymp_path_pop(&e->path, old);
    }
    return 0;
}

static int emit_seq(struct emit *e, const msgpack_object *o, int ind, bool first_inline, int depth)
{
    int rv;
    if (depth > RP_YAML_MAX_DEPTH)
        return emit_fail(e, "nested too deeply to be written as YAML");
    for (uint32_t i = 0; i < o->via.array.size; i++) {
        const msgpack_object *v = &o->via.array.ptr[i];
        size_t old = rp_ymp_path_index(&e->path, i);
        if (old == (size_t)-1)
            return RP_ENOMEM;
        if (i > 0 || !first_inline)
            indent(e, ind);
        put(e, "- ", 2);
        if (v->type == MSGPACK_OBJECT_MAP && is_block(v)) {
            rv = emit_map(e, v, ind + 2, true, depth + 1);
        } else if (is_block(v)) {
            rv = emit_seq(e, v, ind + 2, true, depth + 1);
        } else {
            if ((rv = emit_scalar(e, v)) == 0)
                put(e, "\n", 1);
        }
        if (rv != 0)
            return rv;
        rp_ymp_path_pop(&e->path, old);
    }
    return 0;
}

int rp_ymp_to_yaml(struct rp_buf *out, const msgpack_object *o)
{
    struct emit e = {.out = out};
    size_t old_len = out->len;
    int rv;

    rp_buf_init(&e.path);
    if (o->type == MSGPACK_OBJECT_MAP && is_block(o)) {
        rv = emit_map(&e, o, 0, false, 1);
    } else if (is_block(o)) {
        rv = emit_seq(&e, o, 0, false, 1);
    } else {
        if ((rv = emit_scalar(&e, o)) == 0)
            put(&e, "\n", 1);
    }
    rp_buf_free(&e.path);
    if ((rv == 0 && e.rv != 0) || rv == RP_ENOMEM)
        rv = rp_err(RP_ENOMEM, "out of memory writing YAML");
    if (rv != 0)
        out->len = old_len;
    return rv;
}
