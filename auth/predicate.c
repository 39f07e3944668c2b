/* auth/predicate.c: Teleport's label expression language (auth/predicate.h) and the
 * RE2-style regular expressions shared by every role field.
 *
 * An expression is parsed by recursive descent into an array of nodes that refer to
 * each other by index; every node carries its static type, so evaluation never meets
 * a type error. Patterns are compiled at parse time. Evaluation allocates only the
 * strings and lists that functions build, in an arena freed when it returns. */
#include "auth/predicate.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

/* ---- regular expressions ------------------------------------------------------------ */

/* Translates the RE2-style pattern @re into a POSIX extended expression in @out
 * (NUL-terminated). Returns NULL, or a message naming the construct we refuse. */
static const char *re2_to_ere(const char *re, struct rp_buf *out)
{
    bool in_class = false, in_count = false, after_quant = false;
    unsigned long repeats = 0;
    int rv = 0;
    for (size_t i = 0; re[i] != '\0'; i++) {
        char ch = re[i], next = re[i + 1];
        if (in_class) {
            if (ch == ']') {
                in_class = false;
                rv |= rp_buf_append(out, "]", 1);
            } else if (ch == '[' && next == ':') {
                const char *end = strstr(re + i + 2, ":]");
                if (end == NULL)
                    return "unterminated [:class:]";
                size_t n = (size_t)(end + 2 - (re + i));
                rv |= rp_buf_append(out, re + i, n);
                i += n - 1;
            } else if (ch == '\\') {
                const char *rep = NULL;
                char lit[2] = {next, 0};
                switch (next) {
                case 'd':
                    rep = "0-9";
                    break;
                case 's':
                    rep = " \t\n\r\f\v";
                    break;
                case 'w':
                    rep = "A-Za-z0-9_";
                    break;
                case 'n':
                    rep = "\n";
                    break;
                case 't':
                    rep = "\t";
                    break;
                case 'r':
                    rep = "\r";
                    break;
                case 'f':
                    rep = "\f";
                    break;
                case 'v':
                    rep = "\v";
                    break;
                case '\\':
                    rep = "\\";
                    break;
                case ']':
                case '-':
                case '^':
                case '[':
                    return "escaped ']', '-', '^' or '[' inside [...] are not supported "
                           "(put ']' first or '-' last instead)";
                default:
                    if (next == '\0' || isalnum((unsigned char)next))
                        return "this escape inside [...] is not supported";
                    rep = lit;
                }
                rv |= rp_buf_append_str(out, rep);
                i++;
            } else {
                rv |= rp_buf_append(out, &ch, 1);
            }
            continue;
        }
        /* A quantifier right after another ("a++", "a*{2}"): RE2 refuses it, and glibc's
         * regcomp copies its tree for each, so twenty of them take gigabytes. */
        bool quant =
            ch == '*' || ch == '+' || ch == '?' || (ch == '{' && isdigit((unsigned char)next));
        if (quant && after_quant)
            return "nested repetition operators (a++, a*{2}) are not supported";
        bool closes_count = ch == '}' && in_count;
        if (closes_count)
            in_count = false;
        after_quant = ch == '*' || ch == '+' || ch == '?' || closes_count;
        if (ch == '[') {
            in_class = true;
            rv |= rp_buf_append(out, "[", 1);
            if (re[i + 1] == '^')
                rv |= rp_buf_append(out, "^", 1), i++;
            if (re[i + 1] == ']')
                rv |= rp_buf_append(out, "]", 1), i++;
        } else if (ch == '\\') {
            switch (next) {
            case 'd':
                rv |= rp_buf_append_str(out, "[0-9]");
                break;
            case 'D':
                rv |= rp_buf_append_str(out, "[^0-9]");
                break;
            case 's':
            case 'S':
            case 'w':
            case 'W':
            case 'b':
            case 'B':
                rv |= rp_buf_append(out, re + i, 2);
                break;
            case 'n':
                rv |= rp_buf_append(out, "\n", 1);
                break;
            case 't':
                rv |= rp_buf_append(out, "\t", 1);
                break;
            case 'r':
                rv |= rp_buf_append(out, "\r", 1);
                break;
            case 'f':
                rv |= rp_buf_append(out, "\f", 1);
                break;
            case 'v':
                rv |= rp_buf_append(out, "\v", 1);
                break;
            case '\0':
                return "a trailing backslash escapes nothing";
            default:
                if (isdigit((unsigned char)next))
                    return "backreferences are not supported";
                if (isalpha((unsigned char)next))
                    return "this escape is not supported (only \\d \\D \\s \\S \\w \\W \\b "
                           "\\B \\n \\t \\r \\f \\v and escaped punctuation)";
                rv |= rp_buf_append(out, re + i, 2);
            }
            i++;
        } else if (ch == '{' && isdigit((unsigned char)next)) {
            /* glibc expands a counted repetition into copies of its operand, so
             * nested or large counts are bounded by their sum. */
            char *end;
            unsigned long lo = strtoul(re + i + 1, &end, 10), hi = lo;
            if (*end == ',' && isdigit((unsigned char)end[1])) /* {n,} counts as n */
                hi = strtoul(end + 1, NULL, 10);
            if (lo > PRED_MAX_REPEAT || hi > PRED_MAX_REPEAT ||
                (repeats += (lo > hi ? lo : hi)) > PRED_MAX_REPEAT)
                return "counted repetitions ({n,m}) add up to more than 1000";
            in_count = true;
            rv |= rp_buf_append(out, &ch, 1);
        } else if (ch == '(' && next == '?') {
            return "(?...) groups and flags are not supported";
        } else if ((ch == '*' || ch == '+' || ch == '?' || ch == '}') && next == '?') {
            return "lazy quantifiers (*? +? ?? {n,m}?) are not supported";
        } else {
            rv |= rp_buf_append(out, &ch, 1);
        }
    }
    if (in_class)
        return "missing ']' to close [...]";
    rv |= rp_buf_append(out, "", 1);
    return rv != 0 ? "out of memory" : NULL;
}

int pred_re_compile(const char *pattern, bool nosub, regex_t *re, char *err, size_t errlen)
{
    struct rp_buf ere;
    if (strlen(pattern) > PRED_MAX_PATTERN) {
        snprintf(err, errlen, "longer than %d bytes", PRED_MAX_PATTERN);
        return -1;
    }
    rp_buf_init(&ere);
    const char *why = re2_to_ere(pattern, &ere);
    if (why != NULL) {
        snprintf(err, errlen, "%s", why);
        rp_buf_free(&ere);
        return -1;
    }
    int rc = regcomp(re, (const char *)ere.data, REG_EXTENDED | (nosub ? REG_NOSUB : 0));
    rp_buf_free(&ere);
    if (rc != 0) {
        regerror(rc, NULL, err, errlen);
        return -1;
    }
    return 0;
}

bool pred_glob_match(const char *pat, const char *s)
{
    const char *star = NULL, *resume = NULL;
    while (*s != '\0') {
        if (*pat == '*') {
            star = pat++;
            resume = s;
        } else if (*pat == *s) {
            pat++;
            s++;
        } else if (star != NULL) {
            pat = star + 1;
            s = ++resume;
        } else {
            return false;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == '\0';
}

/* ---- Go's regexp replacement ------------------------------------------------------- */

/* Expands the replacement @repl ($1, ${1}, $$) for the match @m of @in. */
static int expand_repl(struct rp_buf *b, const char *repl, const char *in, const regmatch_t *m,
                       size_t nm)
{
    int rv = 0;
    for (const char *p = repl; *p != '\0'; p++) {
        if (*p != '$') {
            rv |= rp_buf_append(b, p, 1);
            continue;
        }
        if (p[1] == '$') {
            rv |= rp_buf_append(b, "$", 1);
            p++;
            continue;
        }
        const char *name = p + 1, *end;
        bool braced = *name == '{';
        if (braced) {
            name++;
            end = strchr(name, '}');
            if (end == NULL) { /* Go writes a lone '$' as is */
                rv |= rp_buf_append(b, "$", 1);
                continue;
            }
        } else {
            end = name;
            while (isalnum((unsigned char)*end) || *end == '_')
                end++;
            if (end == name) {
                rv |= rp_buf_append(b, "$", 1);
                continue;
            }
        }
        /* Like Go: an all-digit name is a group number; other names (named groups,
         * which POSIX lacks) expand to nothing. */
        bool numeric = end > name;
        size_t idx = 0;
        for (const char *q = name; q < end; q++) {
            numeric = numeric && isdigit((unsigned char)*q);
            if (numeric && idx < 1000)
                idx = idx * 10 + (size_t)(*q - '0');
        }
        if (numeric && idx < nm && m[idx].rm_so >= 0)
            rv |= rp_buf_append(b, in + m[idx].rm_so, (size_t)(m[idx].rm_eo - m[idx].rm_so));
        p = braced ? end : end - 1;
    }
    return rv;
}

int pred_regexp_replace(const regex_t *re, const char *in, const char *repl, struct rp_buf *b)
{
    regmatch_t m[10];
    size_t len = strlen(in), pos = 0;
    int rv = 0;
    while (pos <= len) {
        if (regexec(re, in + pos, 10, m, pos > 0 ? REG_NOTBOL : 0) != 0)
            break;
        rv |= rp_buf_append(b, in + pos, (size_t)m[0].rm_so);
        rv |= expand_repl(b, repl, in + pos, m, 10);
        if (m[0].rm_eo == m[0].rm_so) {
            if (pos + (size_t)m[0].rm_eo < len)
                rv |= rp_buf_append(b, in + pos + m[0].rm_eo, 1);
            pos += (size_t)m[0].rm_eo + 1;
        } else {
            pos += (size_t)m[0].rm_eo;
        }
    }
    if (pos < len)
        rv |= rp_buf_append(b, in + pos, len - pos);
    rv |= rp_buf_append(b, "", 1);
    return rv;
}

/* ---- expressions: the tree ---------------------------------------------------------- */

enum ptype { T_BOOL, T_STR, T_LIST };

enum nkind { N_STR, N_BOOL, N_LABEL, N_TRAIT, N_NOT, N_AND, N_OR, N_EQ, N_NE, N_CALL };

enum fn {
    F_CONTAINS,
    F_CONTAINS_ANY,
    F_CONTAINS_ALL,
    F_RE_MATCH,
    F_RE_REPLACE,
    F_EMAIL_LOCAL,
    F_UPPER,
    F_LOWER,
    F_LABELS_MATCHING,
};

/* One row per function: its arguments' types (T_LIST also takes a string) and which
 * argument, if any, is a pattern that must be a literal. */
static const struct function {
    const char *name;
    enum fn fn;
    int nargs;
    enum ptype ret;
    enum ptype args[3];
    int pattern_arg; /* -1: none */
} functions[] = {
    {"contains", F_CONTAINS, 2, T_BOOL, {T_LIST, T_STR}, -1},
    {"contains_any", F_CONTAINS_ANY, 2, T_BOOL, {T_LIST, T_LIST}, -1},
    {"contains_all", F_CONTAINS_ALL, 2, T_BOOL, {T_LIST, T_LIST}, -1},
    {"regexp.match", F_RE_MATCH, 2, T_BOOL, {T_LIST, T_STR}, 1},
    {"regexp.replace", F_RE_REPLACE, 3, T_LIST, {T_LIST, T_STR, T_STR}, 1},
    {"email.local", F_EMAIL_LOCAL, 1, T_LIST, {T_LIST}, -1},
    {"strings.upper", F_UPPER, 1, T_LIST, {T_LIST}, -1},
    {"strings.lower", F_LOWER, 1, T_LIST, {T_LIST}, -1},
    {"labels_matching", F_LABELS_MATCHING, 1, T_LIST, {T_STR}, 0},
};
#define N_FUNCTIONS (sizeof functions / sizeof functions[0])

struct node {
    enum nkind kind;
    enum ptype type;
    const struct function *fn; /* N_CALL */
    int arg[3];                /* children, by index */
    char *s;                   /* N_STR: the literal; N_LABEL, N_TRAIT: the key */
    bool b;                    /* N_BOOL */
    bool has_re;               /* N_CALL: re holds the compiled pattern */
    bool glob;                 /* labels_matching: the pattern is a glob */
    regex_t re;
};

struct pred_expr {
    struct node *n;
    size_t count, cap;
    int root;
};

void pred_free(struct pred_expr *e)
{
    if (e == NULL)
        return;
    for (size_t i = 0; i < e->count; i++) {
        free(e->n[i].s);
        if (e->n[i].has_re)
            regfree(&e->n[i].re);
    }
    free(e->n);
    free(e);
}

static const char *type_word(enum ptype t)
{
    return t == T_BOOL ? "a boolean" : t == T_STR ? "a string" : "a list";
}

/* ---- expressions: parse ------------------------------------------------------------- */

struct parser {
    const char *src, *p;
    struct pred_expr *e;
    int depth;
};

/* Reports an error at @at (a position in the source) as "line L, column C: ...". */
static int perr_at(const struct parser *ps, const char *at, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int perr_at(const struct parser *ps, const char *at, const char *fmt, ...)
{
    char msg[300];
    int line = 1, col = 1;
    for (const char *q = ps->src; q < at && *q != '\0'; q++) {
        if (*q == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return rp_err(RP_EINVAL, "line %d, column %d: %s", line, col, msg);
}

static void skip_space(struct parser *ps)
{
    while (*ps->p == ' ' || *ps->p == '\t' || *ps->p == '\n' || *ps->p == '\r')
        ps->p++;
}

/* Skips space, then consumes @tok if it comes next. */
static bool eat_token(struct parser *ps, const char *tok)
{
    skip_space(ps);
    size_t n = strlen(tok);
    if (strncmp(ps->p, tok, n) != 0)
        return false;
    ps->p += n;
    return true;
}

/* A new node of @kind and @type; returns its index, or a negative error. */
static int add_node(struct parser *ps, const char *at, enum nkind kind, enum ptype type)
{
    struct pred_expr *e = ps->e;
    if (e->count == PRED_MAX_NODES)
        return perr_at(ps, at, "the expression has more than %d parts", PRED_MAX_NODES);
    if (e->count == e->cap) {
        size_t cap = e->cap == 0 ? 16 : e->cap * 2;
        struct node *n = realloc(e->n, cap * sizeof(*n));
        if (n == NULL)
            return rp_err(RP_ENOMEM, "out of memory parsing an expression");
        e->n = n;
        e->cap = cap;
    }
    struct node *nd = &e->n[e->count];
    memset(nd, 0, sizeof(*nd));
    nd->kind = kind;
    nd->type = type;
    nd->arg[0] = nd->arg[1] = nd->arg[2] = -1;
    return (int)e->count++;
}

/* "..." or '...' (escapes of the quote, \\, \n and \t; other backslashes are kept) or
 * `...` (raw), into *@out. */
static int string_literal(struct parser *ps, char **out)
{
    const char *open = ps->p;
    char q = *ps->p++;
    struct rp_buf b;
    rp_buf_init(&b);
    int rv = 0;
    while (rv == 0 && *ps->p != q) {
        char ch = *ps->p;
        if (ch == '\0') {
            rv = perr_at(ps, open, "this string has no closing %c", q);
            break;
        }
        if (q != '`' && ch == '\\' && ps->p[1] != '\0' &&
            (ps->p[1] == q || strchr("\\nt", ps->p[1]) != NULL)) {
            char n = ps->p[1];
            ch = n == 'n' ? '\n' : n == 't' ? '\t' : n;
            ps->p++;
        }
        ps->p++;
        if (b.len == PRED_MAX_LITERAL)
            rv = perr_at(ps, open, "string longer than %d bytes", PRED_MAX_LITERAL);
        else if (rp_buf_append(&b, &ch, 1) != 0)
            rv = rp_err(RP_ENOMEM, "out of memory parsing an expression");
    }
    if (rv == 0) {
        ps->p++;
        if (rp_buf_append(&b, "", 1) != 0)
            rv = rp_err(RP_ENOMEM, "out of memory parsing an expression");
    }
    if (rv != 0) {
        rp_buf_free(&b);
        return rv;
    }
    *out = (char *)rp_buf_steal(&b, NULL);
    return 0;
}

/* A dotted name (user.spec.traits, regexp.match, labels.env) into @out. */
static bool dotted_name(struct parser *ps, char *out, size_t outlen)
{
    const char *b = ps->p;
    for (;;) {
        if (!(isalpha((unsigned char)*ps->p) || *ps->p == '_'))
            return false;
        while (isalnum((unsigned char)*ps->p) || *ps->p == '_' || *ps->p == '-')
            ps->p++;
        if (*ps->p != '.')
            break;
        ps->p++;
    }
    size_t n = (size_t)(ps->p - b);
    if (n >= outlen)
        return false;
    memcpy(out, b, n);
    out[n] = '\0';
    return true;
}

static int parse_or(struct parser *ps);

static bool is_quote(char ch)
{
    return ch == '"' || ch == '\'' || ch == '`';
}

/* @prefix["k"] or @prefix.k: a label (labels) or a trait (user.spec.traits, and as in
 * role templates external and internal). */
static int variable(struct parser *ps, const char *at, const char *name, const char *prefix,
                    bool is_label)
{
    size_t plen = strlen(prefix);
    char *key = NULL;
    int rv;
    if (name[plen] == '.') {
        if ((key = strdup(name + plen + 1)) == NULL)
            return rp_err(RP_ENOMEM, "out of memory parsing an expression");
    } else {
        skip_space(ps);
        if (*ps->p != '[')
            return perr_at(ps, ps->p, "expected [\"key\"] after %s", prefix);
        ps->p++;
        skip_space(ps);
        if (!is_quote(*ps->p))
            return perr_at(ps, ps->p, "expected a quoted key, as in %s[\"team\"]", prefix);
        if ((rv = string_literal(ps, &key)) != 0)
            return rv;
        if (!eat_token(ps, "]")) {
            free(key);
            return perr_at(ps, ps->p, "expected ']' after the key");
        }
    }
    rv = add_node(ps, at, is_label ? N_LABEL : N_TRAIT, is_label ? T_STR : T_LIST);
    if (rv < 0) {
        free(key);
        return rv;
    }
    ps->e->n[rv].s = key;
    return rv;
}

/* Compiles the pattern of call @idx from its literal argument. */
static int compile_pattern(struct parser *ps, const char *at, int idx)
{
    struct node *nd = &ps->e->n[idx];
    const struct node *pat = &ps->e->n[nd->arg[nd->fn->pattern_arg]];
    char why[200];
    size_t len = strlen(pat->s);
    if (nd->fn->fn == F_LABELS_MATCHING &&
        !(len >= 2 && pat->s[0] == '^' && pat->s[len - 1] == '$')) {
        nd->glob = true;
        return 0;
    }
    if (pred_re_compile(pat->s, nd->fn->fn != F_RE_REPLACE, &nd->re, why, sizeof why) != 0)
        return perr_at(ps, at, "invalid regular expression \"%.60s\" in %s: %s", pat->s,
                       nd->fn->name, why);
    nd->has_re = true;
    return 0;
}

static int call(struct parser *ps, const char *at, const char *name)
{
    const struct function *fn = NULL;
    int args[3], nargs = 0, rv;
    const char *arg_at[3];
    for (size_t i = 0; i < N_FUNCTIONS && fn == NULL; i++)
        if (strcmp(functions[i].name, name) == 0)
            fn = &functions[i];
    if (fn == NULL)
        return perr_at(ps, at,
                       "unknown function '%s', expected contains, contains_any, contains_all, "
                       "regexp.match, regexp.replace, email.local, strings.upper, "
                       "strings.lower or labels_matching",
                       name);
    ps->p++; /* '(' */
    if (++ps->depth > PRED_MAX_DEPTH)
        return perr_at(ps, at, "nested more than %d deep", PRED_MAX_DEPTH);
    if (!eat_token(ps, ")")) {
        do {
            skip_space(ps);
            if (nargs == fn->nargs)
                return perr_at(ps, ps->p, "%s takes %d argument%s", fn->name, fn->nargs,
                               fn->nargs == 1 ? "" : "s");
            skip_space(ps);
            arg_at[nargs] = ps->p;
            if ((rv = parse_or(ps)) < 0)
                return rv;
            args[nargs++] = rv;
        } while (eat_token(ps, ","));
        if (!eat_token(ps, ")"))
            return perr_at(ps, ps->p, "expected ',' or ')' in the arguments of %s", fn->name);
    }
    ps->depth--;
    if (nargs != fn->nargs)
        return perr_at(ps, at, "%s takes %d argument%s, found %d", fn->name, fn->nargs,
                       fn->nargs == 1 ? "" : "s", nargs);
    for (int i = 0; i < nargs; i++) {
        enum ptype got = ps->e->n[args[i]].type, want = fn->args[i];
        if (got == T_BOOL || (want == T_STR && got != T_STR))
            return perr_at(ps, arg_at[i], "argument %d of %s must be %s, found %s", i + 1, fn->name,
                           want == T_STR ? "a string" : "a string or a list", type_word(got));
        if (i == fn->pattern_arg && ps->e->n[args[i]].kind != N_STR)
            return perr_at(ps, arg_at[i],
                           "the pattern of %s must be a string literal (\"...\" or `...`)",
                           fn->name);
    }
    if ((rv = add_node(ps, at, N_CALL, fn->ret)) < 0)
        return rv;
    struct node *nd = &ps->e->n[rv];
    nd->fn = fn;
    for (int i = 0; i < nargs; i++)
        nd->arg[i] = args[i];
    if (fn->pattern_arg >= 0) {
        int err = compile_pattern(ps, arg_at[fn->pattern_arg], rv);
        if (err != 0)
            return err;
    }
    return rv;
}

static int parse_primary(struct parser *ps)
{
    char name[64];
    int rv;
    skip_space(ps);
    const char *at = ps->p;
    if (*ps->p == '(') {
        ps->p++;
        if (++ps->depth > PRED_MAX_DEPTH)
            return perr_at(ps, at, "nested more than %d deep", PRED_MAX_DEPTH);
        if ((rv = parse_or(ps)) < 0)
            return rv;
        if (!eat_token(ps, ")"))
            return perr_at(ps, ps->p, "expected ')' to close the '(' at column %d",
                           (int)(at - ps->src) + 1);
        ps->depth--;
        return rv;
    }
    if (is_quote(*ps->p)) {
        char *s = NULL;
        if ((rv = string_literal(ps, &s)) != 0)
            return rv;
        if ((rv = add_node(ps, at, N_STR, T_STR)) < 0) {
            free(s);
            return rv;
        }
        ps->e->n[rv].s = s;
        return rv;
    }
    if (!dotted_name(ps, name, sizeof name)) {
        if (*at == '\0')
            return perr_at(ps, at, "the expression ends where a value was expected");
        return perr_at(ps, at,
                       "expected a value: a \"string\", labels[\"key\"], "
                       "user.spec.traits[\"key\"], a function call or '('");
    }
    if (strcmp(name, "true") == 0 || strcmp(name, "false") == 0) {
        if ((rv = add_node(ps, at, N_BOOL, T_BOOL)) >= 0)
            ps->e->n[rv].b = name[0] == 't';
        return rv;
    }
    static const char *const trait_prefixes[] = {"user.spec.traits", "external", "internal"};
    if (strcmp(name, "labels") == 0 || strncmp(name, "labels.", 7) == 0)
        return variable(ps, at, name, "labels", true);
    for (size_t i = 0; i < 3; i++) {
        size_t n = strlen(trait_prefixes[i]);
        if (strncmp(name, trait_prefixes[i], n) == 0 && (name[n] == '\0' || name[n] == '.'))
            return variable(ps, at, name, trait_prefixes[i], false);
    }
    skip_space(ps);
    if (*ps->p == '(')
        return call(ps, at, name);
    return perr_at(ps, at,
                   "unknown name '%s', expected labels[\"key\"], user.spec.traits[\"key\"], "
                   "true, false or a function",
                   name);
}

static int parse_compare(struct parser *ps)
{
    skip_space(ps);
    const char *at = ps->p;
    int left = parse_primary(ps), right, rv;
    if (left < 0)
        return left;
    bool eq = eat_token(ps, "==");
    if (!eq && !eat_token(ps, "!="))
        return left;
    skip_space(ps);
    const char *rat = ps->p;
    if ((right = parse_primary(ps)) < 0)
        return right;
    enum ptype lt = ps->e->n[left].type, rt = ps->e->n[right].type;
    if (lt != T_STR)
        return perr_at(ps, at, "%s compares strings, found %s on its left",
                       eq ? "==" : "!=", type_word(lt));
    if (rt != T_STR)
        return perr_at(ps, rat, "%s compares strings, found %s on its right",
                       eq ? "==" : "!=", type_word(rt));
    if ((rv = add_node(ps, at, eq ? N_EQ : N_NE, T_BOOL)) >= 0) {
        ps->e->n[rv].arg[0] = left;
        ps->e->n[rv].arg[1] = right;
    }
    return rv;
}

static int need_bool(struct parser *ps, const char *at, int idx, const char *op)
{
    if (idx >= 0 && ps->e->n[idx].type != T_BOOL)
        return perr_at(ps, at, "%s needs a boolean, found %s", op, type_word(ps->e->n[idx].type));
    return idx;
}

static int parse_unary(struct parser *ps)
{
    skip_space(ps);
    const char *at = ps->p;
    if (*ps->p == '!' && ps->p[1] != '=') {
        ps->p++;
        if (++ps->depth > PRED_MAX_DEPTH)
            return perr_at(ps, at, "nested more than %d deep", PRED_MAX_DEPTH);
        skip_space(ps);
        const char *oat = ps->p;
        int operand = need_bool(ps, oat, parse_unary(ps), "!");
        if (operand < 0)
            return operand;
        ps->depth--;
        int rv = add_node(ps, at, N_NOT, T_BOOL);
        if (rv >= 0)
            ps->e->n[rv].arg[0] = operand;
        return rv;
    }
    return parse_compare(ps);
}

/* and := unary ('&&' unary)*, or := and ('||' and)*: one function for both levels. */
static int parse_binary(struct parser *ps, bool is_or)
{
    const char *op = is_or ? "||" : "&&";
    skip_space(ps);
    const char *at = ps->p;
    int left = is_or ? parse_binary(ps, false) : parse_unary(ps);
    while (left >= 0 && eat_token(ps, op)) {
        if ((left = need_bool(ps, at, left, op)) < 0)
            return left;
        skip_space(ps);
        const char *rat = ps->p;
        int right = need_bool(ps, rat, is_or ? parse_binary(ps, false) : parse_unary(ps), op);
        if (right < 0)
            return right;
        int rv = add_node(ps, at, is_or ? N_OR : N_AND, T_BOOL);
        if (rv < 0)
            return rv;
        ps->e->n[rv].arg[0] = left;
        ps->e->n[rv].arg[1] = right;
        left = rv;
    }
    return left;
}

static int parse_or(struct parser *ps)
{
    return parse_binary(ps, true);
}

int pred_parse(const char *src, struct pred_expr **out)
{
    struct parser ps = {.src = src, .p = src};
    int rv;
    *out = NULL;
    if (strlen(src) > PRED_MAX_SOURCE)
        return rp_err(RP_EINVAL, "the expression is longer than %d bytes", PRED_MAX_SOURCE);
    if ((ps.e = calloc(1, sizeof(*ps.e))) == NULL)
        return rp_err(RP_ENOMEM, "out of memory parsing an expression");
    skip_space(&ps);
    if (*ps.p == '\0') {
        rv = perr_at(&ps, ps.p, "the expression is empty");
    } else if ((rv = parse_or(&ps)) >= 0) {
        skip_space(&ps);
        if (*ps.p != '\0')
            rv = perr_at(&ps, ps.p, "unexpected '%.20s', expected &&, || or the end", ps.p);
        else if (ps.e->n[rv].type != T_BOOL)
            rv = rp_err(RP_EINVAL, "the expression must be true or false, but it is %s",
                        type_word(ps.e->n[rv].type));
    }
    if (rv < 0) {
        pred_free(ps.e);
        return rv;
    }
    ps.e->root = rv;
    *out = ps.e;
    return 0;
}

/* ---- expressions: evaluate ---------------------------------------------------------- */

#define ARENA_LIMIT (1u << 20)

/* What one evaluation allocates, freed at its end. */
struct arena {
    void **blocks;
    size_t n, cap, bytes;
    int err; /* why the last allocation failed: RP_ENOMEM or RP_ETOOBIG */
};

static void *arena_alloc(struct arena *a, size_t size)
{
    if (size > ARENA_LIMIT || a->bytes + size > ARENA_LIMIT) {
        a->err =
            rp_err(RP_ETOOBIG, "evaluating the expression needs more than %u bytes", ARENA_LIMIT);
        return NULL;
    }
    if (a->n == a->cap) {
        size_t cap = a->cap == 0 ? 8 : a->cap * 2;
        void **b = realloc(a->blocks, cap * sizeof(*b));
        if (b == NULL)
            goto oom;
        a->blocks = b;
        a->cap = cap;
    }
    void *p = malloc(size > 0 ? size : 1);
    if (p == NULL)
        goto oom;
    a->blocks[a->n++] = p;
    a->bytes += size;
    return p;
oom:
    a->err = rp_err(RP_ENOMEM, "out of memory evaluating an expression");
    return NULL;
}

static void arena_free(struct arena *a)
{
    for (size_t i = 0; i < a->n; i++)
        free(a->blocks[i]);
    free(a->blocks);
}

static char *arena_strndup(struct arena *a, const char *s, size_t n)
{
    char *p = arena_alloc(a, n + 1);
    if (p != NULL) {
        memcpy(p, s, n);
        p[n] = '\0';
    }
    return p;
}

/* A boolean, or a string (n == 1), or a list: items borrowed from the tree, the
 * environment or the arena. */
struct val {
    bool b;
    const char *const *items;
    size_t n;
};

struct eval {
    const struct pred_expr *e;
    const struct pred_env *env;
    struct arena arena;
};

static int eval_node(struct eval *ev, int idx, struct val *out);

static const char *label_value(const struct pred_env *env, const char *key)
{
    for (size_t i = 0; i < env->n_labels; i++)
        if (env->labels[i].name != NULL && strcmp(env->labels[i].name, key) == 0)
            return env->labels[i].value != NULL ? env->labels[i].value : "";
    return "";
}

static bool list_has(const struct val *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->items[i], s) == 0)
            return true;
    return false;
}

/* Builds the list a function returns, item by item, in the arena. */
struct list_out {
    const char **items;
    size_t n;
};

static int list_out_init(struct eval *ev, struct list_out *lo, size_t max)
{
    lo->n = 0;
    lo->items = arena_alloc(&ev->arena, (max > 0 ? max : 1) * sizeof(char *));
    return lo->items == NULL ? ev->arena.err : 0;
}

static int call_fn(struct eval *ev, const struct node *nd, struct val *out)
{
    struct val a[3] = {{0}};
    int rv;
    if (nd->fn->fn != F_LABELS_MATCHING)
        for (int i = 0; i < nd->fn->nargs; i++)
            if ((rv = eval_node(ev, nd->arg[i], &a[i])) != 0)
                return rv;
    struct list_out lo;
    switch (nd->fn->fn) {
    case F_CONTAINS:
        out->b = list_has(&a[0], a[1].items[0]);
        return 0;
    case F_CONTAINS_ANY:
        out->b = false;
        for (size_t i = 0; i < a[1].n && !out->b; i++)
            out->b = list_has(&a[0], a[1].items[i]);
        return 0;
    case F_CONTAINS_ALL:
        out->b = a[1].n > 0;
        for (size_t i = 0; i < a[1].n && out->b; i++)
            out->b = list_has(&a[0], a[1].items[i]);
        return 0;
    case F_RE_MATCH:
        out->b = false;
        for (size_t i = 0; i < a[0].n && !out->b; i++)
            out->b = regexec(&nd->re, a[0].items[i], 0, NULL, 0) == 0;
        return 0;
    case F_LABELS_MATCHING: {
        const struct pred_env *env = ev->env;
        const char *pattern = ev->e->n[nd->arg[0]].s;
        if ((rv = list_out_init(ev, &lo, env->n_labels)) != 0)
            return rv;
        for (size_t i = 0; i < env->n_labels; i++) {
            const char *name = env->labels[i].name;
            bool seen = false;
            if (name == NULL)
                continue;
            for (size_t j = 0; j < i && !seen; j++)
                seen = env->labels[j].name != NULL && strcmp(env->labels[j].name, name) == 0;
            if (seen)
                continue;
            bool match =
                nd->glob ? pred_glob_match(pattern, name) : regexec(&nd->re, name, 0, NULL, 0) == 0;
            if (match)
                lo.items[lo.n++] = env->labels[i].value != NULL ? env->labels[i].value : "";
        }
        break;
    }
    default: { /* the functions that map a list to a list */
        if ((rv = list_out_init(ev, &lo, a[0].n)) != 0)
            return rv;
        for (size_t i = 0; i < a[0].n; i++) {
            const char *s = a[0].items[i];
            char *r = NULL;
            if (nd->fn->fn == F_EMAIL_LOCAL) {
                const char *at = strchr(s, '@');
                if (at == NULL || at == s || at[1] == '\0' || strchr(at + 1, '@') != NULL)
                    continue; /* not an address: dropped, as in role templates */
                r = arena_strndup(&ev->arena, s, (size_t)(at - s));
            } else if (nd->fn->fn == F_RE_REPLACE) {
                struct rp_buf b;
                if (regexec(&nd->re, s, 0, NULL, 0) != 0)
                    continue; /* no match: dropped, as in role templates */
                rp_buf_init(&b);
                if (pred_regexp_replace(&nd->re, s, a[2].items[0], &b) != 0) {
                    rp_buf_free(&b);
                    return rp_err(RP_ENOMEM, "out of memory evaluating an expression");
                }
                r = arena_strndup(&ev->arena, (const char *)b.data, b.len - 1);
                rp_buf_free(&b);
            } else {
                size_t n = strlen(s);
                if ((r = arena_strndup(&ev->arena, s, n)) != NULL)
                    for (size_t k = 0; k < n; k++)
                        r[k] = (char)(nd->fn->fn == F_UPPER ? toupper((unsigned char)r[k])
                                                            : tolower((unsigned char)r[k]));
            }
            if (r == NULL)
                return ev->arena.err;
            lo.items[lo.n++] = r;
        }
        break;
    }
    }
    out->items = lo.items;
    out->n = lo.n;
    return 0;
}

static int eval_node(struct eval *ev, int idx, struct val *out)
{
    const struct node *nd = &ev->e->n[idx];
    struct val l = {0}, r = {0};
    int rv;
    memset(out, 0, sizeof(*out));
    switch (nd->kind) {
    case N_STR:
        out->items = (const char *const *)&nd->s;
        out->n = 1;
        return 0;
    case N_BOOL:
        out->b = nd->b;
        return 0;
    case N_LABEL: {
        const char **slot = arena_alloc(&ev->arena, sizeof(*slot));
        if (slot == NULL)
            return ev->arena.err;
        *slot = label_value(ev->env, nd->s);
        out->items = slot;
        out->n = 1;
        return 0;
    }
    case N_TRAIT: {
        size_t n = 0;
        const char *const *v = NULL;
        if (ev->env->trait != NULL)
            v = ev->env->trait(ev->env->ctx, nd->s, &n);
        out->items = v;
        out->n = v != NULL ? n : 0;
        return 0;
    }
    case N_NOT:
        if ((rv = eval_node(ev, nd->arg[0], &l)) != 0)
            return rv;
        out->b = !l.b;
        return 0;
    case N_AND:
    case N_OR:
        if ((rv = eval_node(ev, nd->arg[0], &l)) != 0)
            return rv;
        if (l.b == (nd->kind == N_OR)) { /* decided by the left side */
            out->b = l.b;
            return 0;
        }
        if ((rv = eval_node(ev, nd->arg[1], &r)) != 0)
            return rv;
        out->b = r.b;
        return 0;
    case N_EQ:
    case N_NE:
        if ((rv = eval_node(ev, nd->arg[0], &l)) != 0 || (rv = eval_node(ev, nd->arg[1], &r)) != 0)
            return rv;
        out->b = (strcmp(l.items[0], r.items[0]) == 0) == (nd->kind == N_EQ);
        return 0;
    case N_CALL:
        return call_fn(ev, nd, out);
    }
    return rp_err(RP_EINVAL, "corrupt expression");
}

int pred_eval(const struct pred_expr *e, const struct pred_env *env)
{
    struct eval ev = {.e = e, .env = env};
    struct val v;
    int rv = eval_node(&ev, e->root, &v);
    arena_free(&ev.arena);
    if (rv != 0)
        return rv;
    return v.b ? 1 : 0;
}
