/* auth/rbac.c: Teleport's role resource, parsed from msgpack, and the access
 * decisions every service makes from a user's roles and traits (auth/rbac.h).
 *
 * A role is parsed once into plain C structures (strings as written, templates
 * unexpanded) and packed once into its canonical msgpack form. A user's roles and
 * traits become a struct rbac_set: templates expanded, label values compiled into
 * matchers. Every check reads only the set, so checks never allocate or fail on a
 * user's data. */
#include "auth/rbac.h"
#include "auth/predicate.h"

#include <ctype.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "lib/yaml.h"
#include "lib/yaml_mp.h"

#define MAX_MAP_FIELDS 64 /* fields of one map of a role: known ones and kept ones */
#define MAX_UNIX_LOGIN 32 /* Debian's useradd limit, as Teleport checks */
#define MAX_NAME 253
#define NS_PER_MS 1000000ull
#define MAX_LABEL_KEYS 1000 /* per selector: duplicate checks are quadratic */
#define MAX_LABEL_VALUES 1000

/* ---- small helpers -------------------------------------------------------------- */

struct strv {
    char **v;
    size_t n, cap;
};

static void strv_free(struct strv *s)
{
    for (size_t i = 0; i < s->n; i++)
        free(s->v[i]);
    free(s->v);
    memset(s, 0, sizeof(*s));
}

static bool strv_has(const struct strv *s, const char *p)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], p) == 0)
            return true;
    return false;
}

/* Appends a copy of @p (@n bytes). */
static int strv_pushn(struct strv *s, const char *p, size_t n)
{
    if (s->n == s->cap) {
        size_t cap = s->cap == 0 ? 4 : s->cap * 2;
        char **v = realloc(s->v, cap * sizeof(*v));
        if (v == NULL)
            return RP_ENOMEM;
        s->v = v;
        s->cap = cap;
    }
    char *copy = strndup(p, n);
    if (copy == NULL)
        return RP_ENOMEM;
    s->v[s->n++] = copy;
    return 0;
}

static int strv_push(struct strv *s, const char *p)
{
    return strv_pushn(s, p, strlen(p));
}

static int oom(void)
{
    return rp_err(RP_ENOMEM, "out of memory handling a role");
}

/* @s (@n bytes, not NUL-terminated) shortened for a message into @out. */
static const char *excerpt(const char *s, size_t n, char *out, size_t outlen)
{
    char tmp[128];
    size_t k = n < sizeof tmp - 1 ? n : sizeof tmp - 1;
    if (k > 0) /* an empty msgpack string may come with a NULL pointer */
        memcpy(tmp, s, k);
    tmp[k] = '\0';
    rp_yaml_excerpt(tmp, out, outlen);
    return out;
}

static const char *type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        return "null";
    case MSGPACK_OBJECT_BOOLEAN:
        return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        return "an integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return "a number";
    case MSGPACK_OBJECT_STR:
        return "a string";
    case MSGPACK_OBJECT_ARRAY:
        return "a list";
    case MSGPACK_OBJECT_MAP:
        return "a map";
    default:
        return "binary data";
    }
}

/* ", quote it" when a scalar of another type stands where a string was expected:
 * YAML turned `tier: 1` or `env: yes` into a number or a boolean. */
static const char *quote_hint(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_BOOLEAN:
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        return " (put it in quotes to make it a string)";
    default:
        return "";
    }
}

/* Levenshtein distance of two short ASCII words, capped at 9. */
static int edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    int prev[64], cur[64];
    if (la >= 63 || lb >= 63)
        return 9;
    for (size_t j = 0; j <= lb; j++)
        prev[j] = (int)j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = (int)i;
        for (size_t j = 1; j <= lb; j++) {
            int sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            int del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, sizeof(int) * (lb + 1));
    }
    return prev[lb] > 9 ? 9 : prev[lb];
}

/* ---- parse context: the field path and errors that name it ---------------------- */

struct pctx {
    struct rp_buf path;
    int version;            /* known once the top level was read; 0 before */
    struct rbac_role *role; /* the role being read: where unknown fields are noted */
    struct extras *keep;    /* where the map being walked keeps its extra fields */
    bool restrictive;       /* inside spec, spec.options or spec.deny: an unknown field
                             * there may restrict access, so it fails closed */
};

static int perr(struct pctx *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int perr(struct pctx *c, const char *fmt, ...)
{
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *p = rp_ymp_path_str(&c->path);
    return rp_err(RP_EINVAL, "%s: %s", *p != '\0' ? p : "(role)", msg);
}

static int push_key(struct pctx *c, const char *key, size_t n, size_t *old)
{
    *old = rp_ymp_path_key(&c->path, key, n);
    return *old == (size_t)-1 ? oom() : 0;
}

static int push_index(struct pctx *c, size_t i, size_t *old)
{
    *old = rp_ymp_path_index(&c->path, i);
    return *old == (size_t)-1 ? oom() : 0;
}

static void pop(struct pctx *c, size_t old)
{
    rp_ymp_path_pop(&c->path, old);
}

/* Copies the string @o into a fresh NUL-terminated string, refusing other types,
 * NUL bytes and (unless @empty_ok) the empty string. */
static int get_str(struct pctx *c, const msgpack_object *o, bool empty_ok, char **out)
{
    if (o->type != MSGPACK_OBJECT_STR)
        return perr(c, "expected a string, found %s%s", type_name(o), quote_hint(o));
    if (memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL)
        return perr(c, "a NUL byte is not allowed here");
    if (!empty_ok && o->via.str.size == 0)
        return perr(c, "expected a non-empty string");
    *out = strndup(o->via.str.ptr, o->via.str.size);
    return *out == NULL ? oom() : 0;
}

/* ---- Go durations ----------------------------------------------------------------- */

/* Parses Go's time.ParseDuration syntax ("8h", "1h30m", "1.5h", "250ms", "0") into
 * nanoseconds. Negative durations are refused. Returns NULL, or what was wrong. */
static const char *go_duration_parse(const char *s, uint64_t *ns)
{
    static const struct {
        const char *unit;
        uint64_t ns;
    } units[] = {
        {"ns", 1},       {"us", 1000},         {"\xc2\xb5s", 1000},   {"\xce\xbcs", 1000},
        {"ms", 1000000}, {"s", 1000000000ull}, {"m", 60000000000ull}, {"h", 3600000000000ull},
    };
    const char *p = s;
    uint64_t total = 0;

    if (*p == '+')
        p++;
    else if (*p == '-')
        return "negative durations are not allowed";
    if (strcmp(p, "0") == 0) {
        *ns = 0;
        return NULL;
    }
    if (*p == '\0')
        return "empty";
    while (*p != '\0') {
        uint64_t whole = 0, frac = 0, scale = 1;
        bool digits = false;
        while (isdigit((unsigned char)*p)) {
            if (whole > (UINT64_MAX - 9) / 10)
                return "too large";
            whole = whole * 10 + (uint64_t)(*p++ - '0');
            digits = true;
        }
        if (*p == '.') {
            p++;
            while (isdigit((unsigned char)*p)) {
                if (scale < 1000000000000000000ull) {
                    frac = frac * 10 + (uint64_t)(*p - '0');
                    scale *= 10;
                }
                p++;
                digits = true;
            }
        }
        if (!digits)
            return "expected a number before each unit";
        const char *u = p;
        while (*p != '\0' && *p != '.' && !isdigit((unsigned char)*p))
            p++;
        size_t ulen = (size_t)(p - u);
        uint64_t mult = 0;
        for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
            if (strlen(units[i].unit) == ulen && memcmp(units[i].unit, u, ulen) == 0)
                mult = units[i].ns;
        if (ulen == 0)
            return "missing unit (one of h, m, s, ms, us, ns)";
        if (mult == 0)
            return "unknown unit (expected h, m, s, ms, us or ns)";
        if (whole > (uint64_t)INT64_MAX / mult)
            return "too large";
        uint64_t v = whole * mult + (uint64_t)((long double)frac * mult / scale);
        if (v > (uint64_t)INT64_MAX - total)
            return "too large";
        total += v;
    }
    *ns = total;
    return NULL;
}

/* Writes @v as decimal digits with its @prec (<= 9) low digits as a fraction, trailing
 * zeros and a bare '.' dropped: Go's fmtFrac + fmtInt. At most 30 characters. */
static void fmt_frac(char out[32], uint64_t v, int prec)
{
    uint64_t div = 1;
    for (int i = 0; i < prec; i++)
        div *= 10;
    uint64_t whole = v / div, frac = v % div;
    char digits[10];
    int n = prec < 9 ? prec : 9;
    digits[n] = '\0';
    for (int i = n - 1; i >= 0; i--, frac /= 10)
        digits[i] = (char)('0' + frac % 10);
    while (n > 0 && digits[n - 1] == '0')
        digits[--n] = '\0';
    snprintf(out, 32, n > 0 ? "%llu.%s" : "%llu", (unsigned long long)whole, digits);
}

/* Go's Duration.String(): "8h0m0s", "30m0s", "1.5s", "250ms". */
static void go_duration_format(uint64_t ns, char out[96])
{
    char num[32];
    if (ns == 0) {
        snprintf(out, 96, "0s");
    } else if (ns < 1000) {
        snprintf(out, 96, "%lluns", (unsigned long long)ns);
    } else if (ns < 1000000) {
        fmt_frac(num, ns, 3);
        snprintf(out, 96, "%s\xc2\xb5s", num);
    } else if (ns < 1000000000) {
        fmt_frac(num, ns, 6);
        snprintf(out, 96, "%sms", num);
    } else {
        uint64_t secs = ns / 1000000000ull, sub = ns % 1000000000ull;
        fmt_frac(num, (secs % 60) * 1000000000ull + sub, 9);
        uint64_t mins = secs / 60, hours = mins / 60;
        if (hours > 0)
            snprintf(out, 96, "%lluh%llum%ss", (unsigned long long)hours,
                     (unsigned long long)(mins % 60), num);
        else if (mins > 0)
            snprintf(out, 96, "%llum%ss", (unsigned long long)mins, num);
        else
            snprintf(out, 96, "%ss", num);
    }
}

/* A label value between '^' and '$' is a regular expression. */
static bool is_regex_value(const char *v)
{
    size_t n = strlen(v);
    return n >= 2 && v[0] == '^' && v[n - 1] == '$';
}

/* ---- templates ---------------------------------------------------------------------- */

static const char *const internal_traits[] = {
    "logins",
    "windows_logins",
    "kubernetes_groups",
    "kubernetes_users",
    "db_names",
    "db_users",
    "db_roles",
    "aws_role_arns",
    "azure_identities",
    "gcp_service_accounts",
    "jwt",
    "github_orgs",
    NULL,
};

enum tmpl_fn { T_VAR, T_EMAIL_LOCAL, T_REGEXP_REPLACE };

/* One value with at most one {{expression}}: prefix + f(trait values) + suffix. */
struct tmpl {
    bool is_tmpl;
    char *prefix, *suffix;
    enum tmpl_fn fn;
    char *trait;
    char *re_src, *repl; /* regexp.replace */
};

static void tmpl_free(struct tmpl *t)
{
    free(t->prefix);
    free(t->suffix);
    free(t->trait);
    free(t->re_src);
    free(t->repl);
    memset(t, 0, sizeof(*t));
}

struct scan {
    const char *p;
};

static void skip_ws(struct scan *s)
{
    while (*s->p == ' ' || *s->p == '\t')
        s->p++;
}

static bool eat(struct scan *s, const char *tok)
{
    skip_ws(s);
    size_t n = strlen(tok);
    if (strncmp(s->p, tok, n) != 0)
        return false;
    s->p += n;
    return true;
}

/* An identifier [A-Za-z_][A-Za-z0-9_]* into a fresh string, or NULL. */
static char *ident(struct scan *s)
{
    skip_ws(s);
    const char *b = s->p;
    if (!(isalpha((unsigned char)*b) || *b == '_'))
        return NULL;
    while (isalnum((unsigned char)*s->p) || *s->p == '_')
        s->p++;
    return strndup(b, (size_t)(s->p - b));
}

/* A Go string literal, "..." (with \" \\ \n \t escapes) or `...`, into a fresh string. */
static char *string_lit(struct scan *s)
{
    skip_ws(s);
    char q = *s->p;
    if (q != '"' && q != '`')
        return NULL;
    struct rp_buf b;
    rp_buf_init(&b);
    for (s->p++; *s->p != q; s->p++) {
        char ch = *s->p;
        if (ch == '\0')
            goto fail;
        if (q == '"' && ch == '\\') {
            char n = *++s->p;
            ch = n == 'n' ? '\n' : n == 't' ? '\t' : n;
            if (n != '"' && n != '\\' && n != 'n' && n != 't')
                goto fail;
        }
        if (rp_buf_append(&b, &ch, 1) != 0)
            goto fail;
    }
    s->p++;
    if (rp_buf_append(&b, "", 1) != 0)
        goto fail;
    return (char *)rp_buf_steal(&b, NULL);
fail:
    rp_buf_free(&b);
    return NULL;
}

/* Writes a template error into @err and returns -1. */
static int tmpl_fail(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int tmpl_fail(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* internal.NAME | external.NAME | internal["NAME"] | external["NAME"] */
static int trait_ref(struct scan *s, struct tmpl *t, char *err, size_t errlen)
{
    char *ns = ident(s);
    if (ns == NULL)
        return tmpl_fail(err, errlen, "expected internal.NAME or external.NAME");
    bool internal = strcmp(ns, "internal") == 0;
    if (!internal && strcmp(ns, "external") != 0) {
        tmpl_fail(err, errlen, "unknown namespace '%.40s', expected internal or external", ns);
        free(ns);
        return -1;
    }
    free(ns);
    if (eat(s, ".")) {
        t->trait = ident(s);
    } else if (eat(s, "[")) {
        t->trait = string_lit(s);
        if (t->trait != NULL && (!eat(s, "]") || t->trait[0] == '\0')) {
            free(t->trait);
            t->trait = NULL;
        }
    }
    if (t->trait == NULL)
        return tmpl_fail(err, errlen, "expected a trait name after the namespace");
    if (internal) {
        bool known = false;
        for (const char *const *n = internal_traits; *n != NULL && !known; n++)
            known = strcmp(*n, t->trait) == 0;
        if (!known)
            return tmpl_fail(err, errlen,
                             "unsupported variable internal.%.40s (internal traits: logins, "
                             "windows_logins, kubernetes_groups, kubernetes_users, db_names, "
                             "db_users, db_roles, aws_role_arns, ...)",
                             t->trait);
    }
    return 0;
}

/* Parses @v. A value without "{{" or "}}" is a literal (t->is_tmpl false). Returns 0,
 * or -1 with the reason in @err. */
static int tmpl_parse(const char *v, struct tmpl *t, char *err, size_t errlen)
{
    memset(t, 0, sizeof(*t));
    const char *open = strstr(v, "{{");
    const char *close = open != NULL ? strstr(open + 2, "}}") : NULL;
    if (open == NULL && strstr(v, "}}") == NULL)
        return 0;
    if (open == NULL || close == NULL || strpbrk(close + 2, "{}") != NULL ||
        memchr(v, '{', (size_t)(open - v)) != NULL || memchr(v, '}', (size_t)(open - v)) ||
        memchr(open + 2, '{', (size_t)(close - open - 2)) != NULL ||
        memchr(open + 2, '}', (size_t)(close - open - 2)) != NULL) {
        snprintf(err, errlen,
                 "uses template brackets but is not of the form prefix{{expression}}suffix");
        return -1;
    }
    t->is_tmpl = true;
    char *expr = strndup(open + 2, (size_t)(close - open - 2));
    t->prefix = strndup(v, (size_t)(open - v));
    t->suffix = strdup(close + 2);
    if (expr == NULL || t->prefix == NULL || t->suffix == NULL) {
        free(expr);
        snprintf(err, errlen, "out of memory");
        return -1;
    }

    struct scan s = {.p = expr};
    int rv = -1;
    skip_ws(&s);
    /* NAME.NAME( is a function call; anything else must be a trait reference. */
    struct scan look = s;
    char *pkg = ident(&look), *fn = NULL;
    if (pkg != NULL && eat(&look, "."))
        fn = ident(&look);
    bool call = fn != NULL && eat(&look, "(");
    free(pkg);
    free(fn);
    if (call) {
        pkg = ident(&s);
        eat(&s, ".");
        fn = ident(&s);
        bool email =
            pkg != NULL && fn != NULL && strcmp(pkg, "email") == 0 && strcmp(fn, "local") == 0;
        bool replace =
            pkg != NULL && fn != NULL && strcmp(pkg, "regexp") == 0 && strcmp(fn, "replace") == 0;
        free(pkg);
        free(fn);
        if (!email && !replace) {
            snprintf(err, errlen,
                     "unsupported function, expected email.local(TRAIT) or "
                     "regexp.replace(TRAIT, \"expression\", \"replacement\")");
            goto out;
        }
        t->fn = email ? T_EMAIL_LOCAL : T_REGEXP_REPLACE;
        if (!eat(&s, "(")) {
            snprintf(err, errlen, "expected '(' after the function name");
            goto out;
        }
        if (trait_ref(&s, t, err, errlen) != 0)
            goto out;
        if (replace) {
            if (!eat(&s, ",") || (t->re_src = string_lit(&s)) == NULL || !eat(&s, ",") ||
                (t->repl = string_lit(&s)) == NULL) {
                snprintf(err, errlen,
                         "expected regexp.replace(TRAIT, \"expression\", "
                         "\"replacement\")");
                goto out;
            }
            regex_t re;
            char why[200];
            if (pred_re_compile(t->re_src, false, &re, why, sizeof why) != 0) {
                snprintf(err, errlen,
                         "invalid regular expression '%.60s' in regexp.replace: %.150s", t->re_src,
                         why);
                goto out;
            }
            regfree(&re);
        }
        if (!eat(&s, ")")) {
            snprintf(err, errlen, "expected ')' to close the function call");
            goto out;
        }
    } else if (trait_ref(&s, t, err, errlen) != 0) {
        goto out;
    }
    skip_ws(&s);
    if (*s.p != '\0') {
        snprintf(err, errlen, "unexpected '%.20s' after the expression", s.p);
        goto out;
    }
    rv = 0;
out:
    free(expr);
    if (rv != 0)
        tmpl_free(t);
    return rv;
}

/* Validates @v (@n bytes) as a literal or a template; reports at the current path. */
static int check_template(struct pctx *c, const char *v)
{
    struct tmpl t;
    char why[300], ex[128];
    if (tmpl_parse(v, &t, why, sizeof why) != 0)
        return perr(c, "'%s' %s", excerpt(v, strlen(v), ex, sizeof ex), why);
    tmpl_free(&t);
    return 0;
}

/* The user's traits, taken from a msgpack map. */
struct trait {
    char *name;
    struct strv vals;
};

struct traits {
    struct trait *v;
    size_t n;
};

static void traits_free(struct traits *t)
{
    for (size_t i = 0; i < t->n; i++) {
        free(t->v[i].name);
        strv_free(&t->v[i].vals);
    }
    free(t->v);
    memset(t, 0, sizeof(*t));
}

static const struct strv *traits_get(const struct traits *t, const char *name)
{
    for (size_t i = 0; i < t->n; i++)
        if (strcmp(t->v[i].name, name) == 0)
            return &t->v[i].vals;
    return NULL;
}

/* Appends the values @raw expands to under @traits to @out (nothing if a trait is
 * missing or every value is dropped). Returns 0 or RP_ENOMEM. */
static int expand(const char *raw, const struct traits *traits, struct strv *out)
{
    struct tmpl t;
    char why[200];
    if (tmpl_parse(raw, &t, why, sizeof why) != 0)
        return 0; /* validated when the role was parsed; cannot happen */
    if (!t.is_tmpl)
        return strv_push(out, raw) == 0 ? 0 : RP_ENOMEM;

    int rv = 0;
    regex_t re;
    bool have_re = false;
    const struct strv *vals = traits_get(traits, t.trait);
    if (vals == NULL)
        goto out;
    if (t.fn == T_REGEXP_REPLACE) {
        if (pred_re_compile(t.re_src, false, &re, why, sizeof why) != 0)
            goto out;
        have_re = true;
    }
    for (size_t i = 0; i < vals->n && rv == 0; i++) {
        const char *v = vals->v[i];
        struct rp_buf b;
        rp_buf_init(&b);
        if (t.fn == T_EMAIL_LOCAL) {
            const char *at = strchr(v, '@');
            if (at == NULL || at == v || at[1] == '\0' || strchr(at + 1, '@') != NULL)
                continue; /* not an address: dropped */
            rv |= rp_buf_append(&b, v, (size_t)(at - v));
            rv |= rp_buf_append(&b, "", 1);
        } else if (t.fn == T_REGEXP_REPLACE) {
            if (regexec(&re, v, 0, NULL, 0) != 0)
                continue; /* no match: dropped */
            rv |= pred_regexp_replace(&re, v, t.repl, &b);
        } else {
            rv |= rp_buf_append(&b, v, strlen(v) + 1);
        }
        if (rv == 0) {
            char *s = NULL;
            if (asprintf(&s, "%s%s%s", t.prefix, (const char *)b.data, t.suffix) < 0)
                rv = RP_ENOMEM;
            else if (!strv_has(out, s))
                rv = strv_push(out, s);
            free(s);
        }
        rp_buf_free(&b);
    }
out:
    if (have_re)
        regfree(&re);
    tmpl_free(&t);
    return rv != 0 ? RP_ENOMEM : 0;
}

/* Debian's rule, as Teleport applies it to expanded logins. */
static bool valid_unix_login(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_UNIX_LOGIN || s[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == ':' || ch <= 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

/* ---- the parsed role ---------------------------------------------------------------- */

/* One key of a label selector, as written. */
struct lkey {
    char *key;
    struct strv vals;
};

struct lsel {
    struct lkey *k;
    size_t n, cap;
    bool set; /* written (possibly as {}), or filled in by a version default */
};

/* A field kept as written (checked for shape, not enforced), in canonical msgpack
 * form: a known field Raftport has no use for yet, or a field it does not know. */
struct extra {
    char *name;
    struct rp_buf raw;
};

struct extras {
    struct extra *v;
    size_t n, cap;
};

struct rule {
    struct strv resources, verbs;
    char *where; /* NULL if none */
    struct extras kept;
};

struct cond {
    struct strv logins;
    struct strv namespaces;
    struct lsel node_labels;
    char *node_expr;             /* node_labels_expression as written; NULL if none */
    struct pred_expr *node_pred; /* ... and parsed */
    bool require_join_ssh;       /* require_session_join has a policy for SSH sessions */
    struct rule *rules;
    size_t n_rules, cap_rules;
    struct extras kept;
};

enum { REC_BEST_EFFORT, REC_STRICT };

struct opts {
    bool ttl_set;
    uint64_t ttl_ns;
    uint64_t idle_ns; /* 0: unset or never */
    bool forward_agent, ssh_file_copy;
    int port_forwarding;                    /* the legacy option: -1 unset, else 0/1 */
    int pf_local, pf_remote;                /* ssh_port_forwarding: -1 unset, else 0/1 */
    struct rp_buf ssh_port_forwarding;      /* canonical map; empty when unset */
    int disconnect, x11, pin;               /* -1 unset, else 0/1 */
    uint32_t max_sessions, max_connections; /* 0 unset */
    int mfa;                                /* -1 unset, else enum rbac_mfa */
    int device_trust;     /* -1 unset, else index in device_trust_modes, or DEVICE_TRUST_UNKNOWN */
    char *device_trust_s; /* ... as written */
    int lock;             /* -1 unset, else 0 best_effort, 1 strict */
    int rec_default, rec_ssh;        /* REC_*; rec_ssh -1 when unset */
    char *rec_default_s, *rec_ssh_s; /* ... as written; NULL when not written */
    bool rec_desktop;
    int rec_input;                 /* record_session.ssh_input (ours): -1 unset, else 0/1 */
    struct extras rec_kept;        /* record_session fields we do not know */
    unsigned enhanced;             /* RBAC_ENHANCED_* */
    int host_user_mode;            /* -1 unset, else index in host_user_modes */
    struct rp_buf cert_extensions; /* canonical list; empty when unset */
    struct extras kept;
};

#define MAX_UNENFORCED 8

struct rbac_role {
    char *name;
    int version;
    bool kind_seen;
    struct extras top_kept, meta, spec_kept;
    struct opts opt;
    struct cond allow, deny;
    struct strv unknown;    /* paths of the fields Raftport does not know */
    struct strv unknown_fc; /* those that may restrict access (options, deny, spec) */
    const char *unenforced[MAX_UNENFORCED]; /* static names of known fail-closed fields */
    size_t n_unenforced;
    struct rp_buf canonical;
};

static const char *const host_user_modes[] = {"off", "keep", "drop", "insecure-drop", NULL};
static const char *const mfa_names[] = {"no",
                                        "yes",
                                        "hardware_key",
                                        "hardware_key_touch",
                                        "hardware_key_pin",
                                        "hardware_key_touch_and_pin",
                                        NULL};
/* "required" and "required-for-humans" are the modes that restrict access. */
static const char *const device_trust_modes[] = {
    "", "off", "optional", "required", "required-for-humans", NULL};
#define DEVICE_TRUST_REQUIRED 3
/* A mode Raftport does not know (Teleport does not check the value: its own reference
 * shows "optional|required|off") may mean "required", so it counts as that. */
#define DEVICE_TRUST_UNKNOWN 5

static void lsel_free(struct lsel *s)
{
    for (size_t i = 0; i < s->n; i++) {
        free(s->k[i].key);
        strv_free(&s->k[i].vals);
    }
    free(s->k);
    memset(s, 0, sizeof(*s));
}

static void extras_free(struct extras *x)
{
    for (size_t i = 0; i < x->n; i++) {
        free(x->v[i].name);
        rp_buf_free(&x->v[i].raw);
    }
    free(x->v);
    memset(x, 0, sizeof(*x));
}

/* A new entry named @name (@n bytes) in @x, its raw buffer empty; NULL when out of
 * memory. */
static struct extra *extras_add(struct extras *x, const char *name, size_t n)
{
    if (x->n == x->cap) {
        size_t cap = x->cap == 0 ? 4 : x->cap * 2;
        struct extra *v = realloc(x->v, cap * sizeof(*v));
        if (v == NULL)
            return NULL;
        x->v = v;
        x->cap = cap;
    }
    struct extra *e = &x->v[x->n];
    /* msgpack-c leaves the pointer of an empty string NULL. */
    if ((e->name = strndup(n ? name : "", n)) == NULL)
        return NULL;
    rp_buf_init(&e->raw);
    x->n++;
    return e;
}

static void cond_free(struct cond *c)
{
    strv_free(&c->logins);
    strv_free(&c->namespaces);
    lsel_free(&c->node_labels);
    for (size_t i = 0; i < c->n_rules; i++) {
        strv_free(&c->rules[i].resources);
        strv_free(&c->rules[i].verbs);
        free(c->rules[i].where);
        extras_free(&c->rules[i].kept);
    }
    free(c->rules);
    free(c->node_expr);
    pred_free(c->node_pred);
    extras_free(&c->kept);
    memset(c, 0, sizeof(*c));
}

void rbac_role_free(struct rbac_role *role)
{
    if (role == NULL)
        return;
    free(role->name);
    extras_free(&role->top_kept);
    extras_free(&role->meta);
    extras_free(&role->spec_kept);
    extras_free(&role->opt.kept);
    extras_free(&role->opt.rec_kept);
    rp_buf_free(&role->opt.ssh_port_forwarding);
    free(role->opt.device_trust_s);
    free(role->opt.rec_default_s);
    free(role->opt.rec_ssh_s);
    rp_buf_free(&role->opt.cert_extensions);
    strv_free(&role->unknown);
    strv_free(&role->unknown_fc);
    cond_free(&role->allow);
    cond_free(&role->deny);
    rp_buf_free(&role->canonical);
    free(role);
}

const char *rbac_role_name(const struct rbac_role *role)
{
    return role->name;
}

int rbac_role_version(const struct rbac_role *role)
{
    return role->version;
}

/* ---- canonical packing --------------------------------------------------------------- */

/* A packer over an rp_buf that remembers whether any append failed. */
struct sink {
    struct rp_buf *b;
    bool failed;
};

static int sink_write(void *data, const char *p, size_t n)
{
    struct sink *s = data;
    if (rp_buf_append(s->b, p, n) != 0) {
        s->failed = true;
        return -1;
    }
    return 0;
}

static void sink_init(struct sink *s, msgpack_packer *pk, struct rp_buf *b)
{
    s->b = b;
    s->failed = false;
    msgpack_packer_init(pk, s, sink_write);
}

static void pack_str(msgpack_packer *pk, const char *s)
{
    rp_mp_pack_str(pk, s);
}

static void pack_bool(msgpack_packer *pk, bool v)
{
    if (v)
        msgpack_pack_true(pk);
    else
        msgpack_pack_false(pk);
}

static void pack_strv(msgpack_packer *pk, const struct strv *s)
{
    msgpack_pack_array(pk, s->n);
    for (size_t i = 0; i < s->n; i++)
        pack_str(pk, s->v[i]);
}

static int cmp_keys(const msgpack_object *a, const msgpack_object *b)
{
    if (a->type == MSGPACK_OBJECT_STR && b->type == MSGPACK_OBJECT_STR) {
        size_t n = a->via.str.size < b->via.str.size ? a->via.str.size : b->via.str.size;
        int c = memcmp(a->via.str.ptr, b->via.str.ptr, n);
        if (c != 0)
            return c;
        return a->via.str.size < b->via.str.size ? -1 : a->via.str.size > b->via.str.size;
    }
    return (int)a->type - (int)b->type;
}

static int cmp_kv(const void *a, const void *b)
{
    return cmp_keys(&(*(const msgpack_object_kv *const *)a)->key,
                    &(*(const msgpack_object_kv *const *)b)->key);
}

/* Packs @o with the keys of every map sorted, so that equal content packs equally. */
static int pack_sorted(msgpack_packer *pk, const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_ARRAY) {
        msgpack_pack_array(pk, o->via.array.size);
        for (uint32_t i = 0; i < o->via.array.size; i++)
            if (pack_sorted(pk, &o->via.array.ptr[i]) != 0)
                return RP_ENOMEM;
        return 0;
    }
    if (o->type != MSGPACK_OBJECT_MAP) {
        msgpack_pack_object(pk, *o);
        return 0;
    }
    uint32_t n = o->via.map.size;
    const msgpack_object_kv **order = malloc((n > 0 ? n : 1) * sizeof(*order));
    if (order == NULL)
        return RP_ENOMEM;
    for (uint32_t i = 0; i < n; i++)
        order[i] = &o->via.map.ptr[i];
    qsort(order, n, sizeof(*order), cmp_kv);
    msgpack_pack_map(pk, n);
    int rv = 0;
    for (uint32_t i = 0; i < n && rv == 0; i++) {
        msgpack_pack_object(pk, order[i]->key);
        rv = pack_sorted(pk, &order[i]->val);
    }
    free(order);
    return rv;
}

/* Sorted-key map builder: add entries in any order, then pack them sorted. */
struct kv {
    const char *key;
    struct rp_buf val;
    struct sink sink;
    msgpack_packer pk;
};

struct kvl {
    struct kv v[MAX_MAP_FIELDS + 8]; /* + the defaults a version fills in */
    size_t n;
    bool failed;
};

static msgpack_packer *kvl_add(struct kvl *l, const char *key)
{
    if (l->n == sizeof l->v / sizeof l->v[0]) {
        l->failed = true;
        l->n--; /* overwrite the last entry; the result is discarded anyway */
        rp_buf_free(&l->v[l->n].val);
    }
    struct kv *e = &l->v[l->n++];
    e->key = key;
    rp_buf_init(&e->val);
    sink_init(&e->sink, &e->pk, &e->val);
    return &e->pk;
}

static void kvl_add_raw(struct kvl *l, const char *key, const struct rp_buf *raw)
{
    msgpack_packer *pk = kvl_add(l, key);
    pk->callback(pk->data, (const char *)raw->data, raw->len);
}

static void kvl_add_extras(struct kvl *l, const struct extras *x)
{
    for (size_t i = 0; i < x->n; i++)
        kvl_add_raw(l, x->v[i].name, &x->v[i].raw);
}

static int cmp_kv_entry(const void *a, const void *b)
{
    return strcmp(((const struct kv *)a)->key, ((const struct kv *)b)->key);
}

/* Packs the entries of @l as one map into @pk and frees them. */
static int kvl_pack(struct kvl *l, msgpack_packer *pk)
{
    bool failed = l->failed;
    qsort(l->v, l->n, sizeof(l->v[0]), cmp_kv_entry);
    msgpack_pack_map(pk, l->n);
    for (size_t i = 0; i < l->n; i++) {
        failed = failed || l->v[i].sink.failed;
        pack_str(pk, l->v[i].key);
        pk->callback(pk->data, (const char *)l->v[i].val.data, l->v[i].val.len);
        rp_buf_free(&l->v[i].val);
    }
    l->n = 0;
    return failed ? RP_ENOMEM : 0;
}

/* {key: value or [values]} with keys sorted. */
static int pack_labels(msgpack_packer *pk, const struct lsel *s)
{
    struct kvl l = {.n = 0};
    struct kvl *lp = &l;
    /* A selector may have more keys than a kvl holds: pack those by hand. */
    if (s->n > sizeof l.v / sizeof l.v[0]) {
        size_t *order = malloc(s->n * sizeof(*order));
        if (order == NULL)
            return RP_ENOMEM;
        for (size_t i = 0; i < s->n; i++)
            order[i] = i;
        for (size_t i = 1; i < s->n; i++) /* insertion sort by key */
            for (size_t j = i; j > 0 && strcmp(s->k[order[j - 1]].key, s->k[order[j]].key) > 0;
                 j--) {
                size_t t = order[j];
                order[j] = order[j - 1];
                order[j - 1] = t;
            }
        msgpack_pack_map(pk, s->n);
        for (size_t i = 0; i < s->n; i++) {
            const struct lkey *k = &s->k[order[i]];
            pack_str(pk, k->key);
            if (k->vals.n == 1)
                pack_str(pk, k->vals.v[0]);
            else
                pack_strv(pk, &k->vals);
        }
        free(order);
        return 0;
    }
    for (size_t i = 0; i < s->n; i++) {
        msgpack_packer *v = kvl_add(lp, s->k[i].key);
        if (s->k[i].vals.n == 1)
            pack_str(v, s->k[i].vals.v[0]);
        else
            pack_strv(v, &s->k[i].vals);
    }
    return kvl_pack(lp, pk);
}

/* ---- field tables ---------------------------------------------------------------------- */

struct field;
typedef int (*field_fn)(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f);

struct schema;

struct field {
    const char *name;
    field_fn fn;
    int arg;                     /* handler-specific */
    const struct schema *schema; /* f_kept: the shape of the kept value */
};

/* The known field of @fields closest to @key (a likely typo), or NULL. */
static const char *closest_field(const struct field *fields, const char *key)
{
    const char *best = NULL;
    int best_d = 3;
    for (const struct field *g = fields; g->name != NULL; g++) {
        int d = edit_distance(key, g->name);
        if (d < best_d) {
            best = g->name;
            best_d = d;
        }
    }
    return best;
}

/* Keeps the unknown field @v at the current path in @keep under @key (@n bytes), and
 * notes its path (with a suggestion when it looks like a typo of one of @fields). */
static int keep_unknown(struct pctx *c, const char *key, size_t n, const msgpack_object *v,
                        const struct field *fields, struct extras *keep)
{
    char name[64], note[400];
    struct extra *e = extras_add(keep, key, n);
    msgpack_packer pk;
    struct sink sk;
    if (e == NULL)
        return oom();
    sink_init(&sk, &pk, &e->raw);
    if (pack_sorted(&pk, v) != 0 || sk.failed)
        return oom();
    excerpt(key, n, name, sizeof name);
    const char *best = closest_field(fields, name);
    snprintf(note, sizeof note, "%s%s%s%s", rp_ymp_path_str(&c->path),
             best != NULL ? " (did you mean " : "", best != NULL ? best : "",
             best != NULL ? "?)" : "");
    if (strv_push(&c->role->unknown, note) != 0 ||
        (c->restrictive && strv_push(&c->role->unknown_fc, rp_ymp_path_str(&c->path)) != 0))
        return oom();
    return 0;
}

/* Walks the map @m, calling the handler of each key's field in @fields (a nil value
 * counts as absent). A key no field names is kept in @keep, or refused when @keep is
 * NULL. @what names the kind of key in messages ("field", "option"). */
static int walk_map(struct pctx *c, const msgpack_object *m, const struct field *fields, void *dst,
                    struct extras *keep, const char *what)
{
    char ex[128];
    int rv;

    if (m->type != MSGPACK_OBJECT_MAP)
        return perr(c, "expected a map, found %s", type_name(m));
    if (m->via.map.size > MAX_MAP_FIELDS)
        return perr(c, "%u fields is more than the %d a map of a role may hold", m->via.map.size,
                    MAX_MAP_FIELDS);
    struct extras *outer_keep = c->keep;
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        const msgpack_object *v = &m->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            return perr(c, "map keys must be strings, found %s", type_name(k));
        for (uint32_t j = 0; j < i; j++)
            if (cmp_keys(&m->via.map.ptr[j].key, k) == 0)
                return perr(c, "duplicate key '%s'",
                            excerpt(k->via.str.ptr, k->via.str.size, ex, sizeof ex));
        const struct field *f = fields;
        while (f->name != NULL && !(strlen(f->name) == k->via.str.size &&
                                    memcmp(f->name, k->via.str.ptr, k->via.str.size) == 0))
            f++;
        size_t old;
        if ((rv = push_key(c, k->via.str.ptr, k->via.str.size, &old)) != 0)
            return rv;
        if (f->name == NULL && keep != NULL) {
            if ((rv = keep_unknown(c, k->via.str.ptr, k->via.str.size, v, fields, keep)) != 0)
                return rv;
        } else if (f->name == NULL) {
            /* Suggest the closest name; list them all when nothing is close. */
            char key[64], list[300] = "";
            excerpt(k->via.str.ptr, k->via.str.size, key, sizeof key);
            const char *best = closest_field(fields, key);
            for (const struct field *g = fields; g->name != NULL; g++)
                if (strlen(list) + strlen(g->name) + 3 < sizeof list)
                    strcat(strcat(list, list[0] != '\0' ? ", " : ""), g->name);
            if (best != NULL)
                return perr(c, "unknown %s '%s', did you mean '%s'?", what, key, best);
            return perr(c, "unknown %s '%s', expected one of: %s", what, key, list);
        } else if (v->type != MSGPACK_OBJECT_NIL) {
            c->keep = keep;
            rv = f->fn(c, v, dst, f);
            c->keep = outer_keep;
            if (rv != 0)
                return rv;
        }
        pop(c, old);
    }
    return 0;
}

/* A list of strings. @templates: each may be a template. @ident: each must be '*' or
 * [a-z0-9_]+ (rule resources and verbs). Empty strings are refused. */
static int parse_strlist(struct pctx *c, const msgpack_object *v, struct strv *out, bool templates,
                         bool ident_only)
{
    int rv;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return perr(c, "expected a list of strings, found %s", type_name(v));
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        size_t old;
        char *s = NULL;
        if ((rv = push_index(c, i, &old)) != 0)
            return rv;
        if ((rv = get_str(c, &v->via.array.ptr[i], false, &s)) != 0)
            return rv;
        if (templates && (rv = check_template(c, s)) != 0) {
            free(s);
            return rv;
        }
        if (ident_only && strcmp(s, "*") != 0) {
            for (const char *p = s; *p != '\0'; p++)
                if (!(islower((unsigned char)*p) || isdigit((unsigned char)*p) || *p == '_')) {
                    char ex[128];
                    rv = perr(c,
                              "'%s' is not a valid name, expected '*' or lower-case "
                              "letters, digits and '_'",
                              excerpt(s, strlen(s), ex, sizeof ex));
                    free(s);
                    return rv;
                }
        }
        for (const char *p = s; *p != '\0'; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f) {
                free(s);
                return perr(c, "control characters are not allowed");
            }
        rv = strv_push(out, s);
        free(s);
        if (rv != 0)
            return oom();
        pop(c, old);
    }
    return 0;
}

/* Checks one label value (literal, glob, regex or template) at the current path. */
static int check_label_value(struct pctx *c, const char *v)
{
    char ex[128], why[200];
    if (strstr(v, "{{") != NULL || strstr(v, "}}") != NULL)
        return check_template(c, v);
    if (is_regex_value(v)) {
        regex_t re;
        if (pred_re_compile(v, true, &re, why, sizeof why) != 0)
            return perr(c, "invalid regular expression '%s': %s",
                        excerpt(v, strlen(v), ex, sizeof ex), why);
        regfree(&re);
    }
    return 0;
}

/* A label selector: {key: value or [values]}. @check_values: check regular
 * expressions and templates in values (for the selectors Raftport enforces). */
static int parse_labels(struct pctx *c, const msgpack_object *v, struct lsel *out,
                        bool check_values)
{
    char ex[128];
    int rv;
    if (v->type != MSGPACK_OBJECT_MAP)
        return perr(c,
                    "expected a map of label names to a value or a list of values, "
                    "found %s",
                    type_name(v));
    if (v->via.map.size > MAX_LABEL_KEYS)
        return perr(c, "%u labels is more than the %d a selector may hold", v->via.map.size,
                    MAX_LABEL_KEYS);
    out->set = true;
    for (uint32_t i = 0; i < v->via.map.size; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key;
        const msgpack_object *val = &v->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR)
            return perr(c, "label names must be strings, found %s", type_name(k));
        for (uint32_t j = 0; j < i; j++)
            if (cmp_keys(&v->via.map.ptr[j].key, k) == 0)
                return perr(c, "duplicate label '%s'",
                            excerpt(k->via.str.ptr, k->via.str.size, ex, sizeof ex));
        size_t old;
        if ((rv = push_key(c, k->via.str.ptr, k->via.str.size, &old)) != 0)
            return rv;
        if (k->via.str.size == 0)
            return perr(c, "a label name must not be empty");
        if (memchr(k->via.str.ptr, '\0', k->via.str.size) != NULL)
            return perr(c, "a NUL byte is not allowed in a label name");
        if (memmem(k->via.str.ptr, k->via.str.size, "{{", 2) != NULL)
            return perr(c, "templates are only supported in label values, not in label names");
        if (out->n == out->cap) {
            size_t cap = out->cap == 0 ? 4 : out->cap * 2;
            struct lkey *nk = realloc(out->k, cap * sizeof(*nk));
            if (nk == NULL)
                return oom();
            out->k = nk;
            out->cap = cap;
        }
        struct lkey *lk = &out->k[out->n];
        memset(lk, 0, sizeof(*lk));
        if ((lk->key = strndup(k->via.str.ptr, k->via.str.size)) == NULL)
            return oom();
        out->n++;
        if (val->type == MSGPACK_OBJECT_STR) {
            char *s = NULL;
            if ((rv = get_str(c, val, true, &s)) != 0)
                return rv;
            rv = strv_push(&lk->vals, s);
            free(s);
            if (rv != 0)
                return oom();
            if (check_values && (rv = check_label_value(c, lk->vals.v[0])) != 0)
                return rv;
        } else if (val->type == MSGPACK_OBJECT_ARRAY) {
            if (val->via.array.size > MAX_LABEL_VALUES)
                return perr(c, "%u values is more than the %d a label may list",
                            val->via.array.size, MAX_LABEL_VALUES);
            for (uint32_t j = 0; j < val->via.array.size; j++) {
                size_t old2;
                char *s = NULL;
                if ((rv = push_index(c, j, &old2)) != 0)
                    return rv;
                if ((rv = get_str(c, &val->via.array.ptr[j], true, &s)) != 0)
                    return rv;
                rv = strv_push(&lk->vals, s);
                free(s);
                if (rv != 0)
                    return oom();
                if (check_values && (rv = check_label_value(c, lk->vals.v[lk->vals.n - 1])) != 0)
                    return rv;
                pop(c, old2);
            }
        } else {
            return perr(c, "expected a label value or a list of values, found %s%s", type_name(val),
                        quote_hint(val));
        }
        if (strcmp(lk->key, "*") == 0 && !(lk->vals.n == 1 && strcmp(lk->vals.v[0], "*") == 0))
            return perr(c, "the label name '*' matches every node only with the value '*'; "
                           "other values are not supported");
        pop(c, old);
    }
    return 0;
}

/* ---- kept fields: checked against a schema, written back in canonical form ---------- */

/* The shape of a field Raftport keeps without enforcing it. Known fields are checked
 * (a wrong type names the path and the type expected); maps keep the keys they do not
 * know, as written. */
enum skind {
    K_ANY,      /* anything YAML can hold */
    K_STR,      /* a string */
    K_BOOL,     /* true/false (or yes/no/on/off) */
    K_INT,      /* an integer */
    K_DURATION, /* "8h", "30m", "7d", or a number of nanoseconds */
    K_STRLIST,  /* a list of strings */
    K_STRMAP,   /* a map of names to a string or a list of strings */
    K_LABELS,   /* a label selector: name -> value or list of values */
    K_EXPR,     /* a label expression (auth/predicate.h) */
    K_ENUM,     /* one of sub's NULL-terminated names, or "" */
    K_MAP,      /* sub: the known fields, NULL-terminated */
    K_LIST,     /* sub: the schema of each item */
};

struct schema {
    enum skind kind;
    const void *sub;
};

struct sfield {
    const char *name;
    const struct schema *s;
};

static int get_bool(struct pctx *c, const msgpack_object *v, bool *out);
static int get_enum(struct pctx *c, const msgpack_object *v, const char *const *names, int *idx);

static const struct schema sch_str = {K_STR, NULL}, sch_bool = {K_BOOL, NULL},
                           sch_int = {K_INT, NULL}, sch_duration = {K_DURATION, NULL},
                           sch_strlist = {K_STRLIST, NULL}, sch_strmap = {K_STRMAP, NULL},
                           sch_labels = {K_LABELS, NULL}, sch_expr = {K_EXPR, NULL};

/* Notes the field at the current path as unknown (with @suggest, a likely intended
 * name, or NULL). */
static int note_unknown(struct pctx *c, const char *suggest)
{
    char note[400];
    snprintf(note, sizeof note, "%s%s%s%s", rp_ymp_path_str(&c->path),
             suggest != NULL ? " (did you mean " : "", suggest != NULL ? suggest : "",
             suggest != NULL ? "?)" : "");
    if (strv_push(&c->role->unknown, note) != 0 ||
        (c->restrictive && strv_push(&c->role->unknown_fc, rp_ymp_path_str(&c->path)) != 0))
        return oom();
    return 0;
}

static bool valid_duration(const char *s)
{
    uint64_t ns;
    size_t n = strlen(s);
    if (go_duration_parse(s, &ns) == NULL)
        return true;
    /* Access request durations also take days ("7d"). */
    if (n < 2 || s[n - 1] != 'd')
        return false;
    for (size_t i = 0; i + 1 < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

static int schema_pack(struct pctx *c, const msgpack_object *v, const struct schema *s,
                       msgpack_packer *pk);

/* A map of known fields @fields; the keys it does not know are kept as written. */
static int schema_pack_map(struct pctx *c, const msgpack_object *v, const struct sfield *fields,
                           msgpack_packer *pk)
{
    char ex[128];
    struct kvl l = {.n = 0};
    struct strv names = {0}; /* the unknown keys, alive until packed */
    int rv = 0;
    if (v->type != MSGPACK_OBJECT_MAP)
        return perr(c, "expected a map, found %s", type_name(v));
    if (v->via.map.size > MAX_MAP_FIELDS)
        return perr(c, "%u fields is more than the %d a map of a role may hold", v->via.map.size,
                    MAX_MAP_FIELDS);
    for (uint32_t i = 0; i < v->via.map.size && rv == 0; i++) {
        const msgpack_object *k = &v->via.map.ptr[i].key, *val = &v->via.map.ptr[i].val;
        size_t old;
        if (k->type != MSGPACK_OBJECT_STR) {
            rv = perr(c, "map keys must be strings, found %s", type_name(k));
            break;
        }
        for (uint32_t j = 0; j < i && rv == 0; j++)
            if (cmp_keys(&v->via.map.ptr[j].key, k) == 0)
                rv = perr(c, "duplicate key '%s'",
                          excerpt(k->via.str.ptr, k->via.str.size, ex, sizeof ex));
        if (rv != 0 || (rv = push_key(c, k->via.str.ptr, k->via.str.size, &old)) != 0)
            break;
        const struct sfield *f = fields;
        while (f != NULL && f->name != NULL &&
               !(strlen(f->name) == k->via.str.size &&
                 memcmp(f->name, k->via.str.ptr, k->via.str.size) == 0))
            f++;
        if (f != NULL && f->name != NULL) {
            msgpack_packer *fp = kvl_add(&l, f->name);
            if (val->type == MSGPACK_OBJECT_NIL)
                msgpack_pack_nil(fp);
            else
                rv = schema_pack(c, val, f->s, fp);
        } else if ((rv = fields != NULL ? note_unknown(c, NULL) : 0) == 0) {
            if (strv_pushn(&names, k->via.str.ptr, k->via.str.size) != 0)
                rv = oom();
            else if (pack_sorted(kvl_add(&l, names.v[names.n - 1]), val) != 0)
                rv = oom();
        }
        if (rv == 0)
            pop(c, old);
    }
    if (rv == 0 && kvl_pack(&l, pk) != 0)
        rv = oom();
    for (size_t i = 0; i < l.n; i++) /* entries left by an error */
        rp_buf_free(&l.v[i].val);
    strv_free(&names);
    return rv;
}

/* Checks @v against @s and packs its canonical form into @pk. */
static int schema_pack(struct pctx *c, const msgpack_object *v, const struct schema *s,
                       msgpack_packer *pk)
{
    char ex[128];
    char *str = NULL;
    int rv = 0;
    switch (s->kind) {
    case K_ANY:
        return pack_sorted(pk, v) != 0 ? oom() : 0;
    case K_STR:
        if (v->type != MSGPACK_OBJECT_STR)
            return perr(c, "expected a string, found %s%s", type_name(v), quote_hint(v));
        break;
    case K_BOOL: {
        bool b = false;
        if ((rv = get_bool(c, v, &b)) != 0)
            return rv;
        pack_bool(pk, b);
        return 0;
    }
    case K_INT:
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER &&
            v->type != MSGPACK_OBJECT_NEGATIVE_INTEGER)
            return perr(c, "expected an integer, found %s", type_name(v));
        break;
    case K_DURATION:
        if (v->type == MSGPACK_OBJECT_POSITIVE_INTEGER)
            break;
        if (v->type != MSGPACK_OBJECT_STR)
            return perr(c, "expected a duration such as 8h, 30m or 7d, found %s", type_name(v));
        if ((rv = get_str(c, v, true, &str)) != 0)
            return rv;
        if (!valid_duration(str))
            rv = perr(c, "invalid duration '%s', expected a duration such as 8h, 30m or 7d",
                      excerpt(str, strlen(str), ex, sizeof ex));
        free(str);
        if (rv != 0)
            return rv;
        break;
    case K_STRLIST:
        if (v->type != MSGPACK_OBJECT_ARRAY)
            return perr(c, "expected a list of strings, found %s", type_name(v));
        for (uint32_t i = 0; i < v->via.array.size; i++) {
            size_t old;
            if ((rv = push_index(c, i, &old)) != 0)
                return rv;
            if (v->via.array.ptr[i].type != MSGPACK_OBJECT_STR)
                return perr(c, "expected a string, found %s%s", type_name(&v->via.array.ptr[i]),
                            quote_hint(&v->via.array.ptr[i]));
            pop(c, old);
        }
        break;
    case K_STRMAP:
        if (v->type != MSGPACK_OBJECT_MAP)
            return perr(c, "expected a map of names to lists of strings, found %s", type_name(v));
        for (uint32_t i = 0; i < v->via.map.size; i++) {
            const msgpack_object *k = &v->via.map.ptr[i].key, *val = &v->via.map.ptr[i].val;
            static const struct schema one = {K_STR, NULL};
            size_t old;
            if (k->type != MSGPACK_OBJECT_STR)
                return perr(c, "map keys must be strings, found %s", type_name(k));
            if ((rv = push_key(c, k->via.str.ptr, k->via.str.size, &old)) != 0)
                return rv;
            struct rp_buf scratch;
            struct sink sk;
            msgpack_packer sp;
            rp_buf_init(&scratch);
            sink_init(&sk, &sp, &scratch);
            rv = schema_pack(c, val, val->type == MSGPACK_OBJECT_ARRAY ? &sch_strlist : &one, &sp);
            rp_buf_free(&scratch);
            if (rv != 0)
                return rv;
            pop(c, old);
        }
        return pack_sorted(pk, v) != 0 ? oom() : 0;
    case K_LABELS: {
        struct lsel sel = {0};
        if ((rv = parse_labels(c, v, &sel, false)) == 0)
            rv = pack_labels(pk, &sel);
        lsel_free(&sel);
        return rv;
    }
    case K_EXPR: {
        struct pred_expr *e = NULL;
        if ((rv = get_str(c, v, true, &str)) != 0)
            return rv;
        if (str[0] != '\0' && pred_parse(str, &e) != 0) {
            char why[300];
            snprintf(why, sizeof why, "%s", rp_errmsg());
            rv = perr(c, "invalid label expression: %s", why);
        }
        pred_free(e);
        free(str);
        if (rv != 0)
            return rv;
        break;
    }
    case K_ENUM: {
        int idx;
        if (v->type == MSGPACK_OBJECT_STR && v->via.str.size == 0)
            break;
        if ((rv = get_enum(c, v, s->sub, &idx)) != 0)
            return rv;
        break;
    }
    case K_MAP:
        return schema_pack_map(c, v, s->sub, pk);
    case K_LIST:
        if (v->type != MSGPACK_OBJECT_ARRAY)
            return perr(c, "expected a list, found %s", type_name(v));
        msgpack_pack_array(pk, v->via.array.size);
        for (uint32_t i = 0; i < v->via.array.size; i++) {
            size_t old;
            if ((rv = push_index(c, i, &old)) != 0)
                return rv;
            if ((rv = schema_pack(c, &v->via.array.ptr[i], s->sub, pk)) != 0)
                return rv;
            pop(c, old);
        }
        return 0;
    }
    return pack_sorted(pk, v) != 0 ? oom() : 0;
}

/* A known field kept as written: checked against f->schema. */
static int f_kept(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct extra *e = extras_add(c->keep, f->name, strlen(f->name));
    msgpack_packer pk;
    struct sink sk;
    if (e == NULL)
        return oom();
    sink_init(&sk, &pk, &e->raw);
    int rv = schema_pack(c, v, f->schema, &pk);
    if (rv == 0 && sk.failed)
        rv = oom();
    return rv;
}

/* The schemas of the fields of allow and deny that are kept. */
static const struct sfield kube_resource_fields[] = {
    {"kind", &sch_str},      {"name", &sch_str},      {"namespace", &sch_str},
    {"verbs", &sch_strlist}, {"api_group", &sch_str}, {NULL, NULL},
};
static const struct schema sch_kube_resource = {K_MAP, kube_resource_fields};
static const struct schema sch_kube_resources = {K_LIST, &sch_kube_resource};

static const struct sfield db_permission_fields[] = {
    {"match", &sch_labels}, {"permissions", &sch_strlist}, {NULL, NULL}};
static const struct schema sch_db_permission = {K_MAP, db_permission_fields};
static const struct schema sch_db_permissions = {K_LIST, &sch_db_permission};

static const struct sfield spiffe_fields[] = {
    {"path", &sch_str}, {"dns_sans", &sch_strlist}, {"ip_sans", &sch_strlist}, {NULL, NULL}};
static const struct schema sch_spiffe_item = {K_MAP, spiffe_fields};
static const struct schema sch_spiffe = {K_LIST, &sch_spiffe_item};

static const struct sfield account_assignment_fields[] = {
    {"account", &sch_str}, {"name", &sch_str}, {"permission_set", &sch_str}, {NULL, NULL}};
static const struct schema sch_account_assignment = {K_MAP, account_assignment_fields};
static const struct schema sch_account_assignments = {K_LIST, &sch_account_assignment};

static const struct sfield github_permission_fields[] = {{"orgs", &sch_strlist}, {NULL, NULL}};
static const struct schema sch_github_permission = {K_MAP, github_permission_fields};
static const struct schema sch_github_permissions = {K_LIST, &sch_github_permission};

static const struct sfield join_session_fields[] = {
    {"name", &sch_str}, {"roles", &sch_strlist}, {"kinds", &sch_strlist}, {"modes", &sch_strlist},
    {NULL, NULL},
};
static const struct schema sch_join_session = {K_MAP, join_session_fields};
static const struct schema sch_join_sessions = {K_LIST, &sch_join_session};

static const struct sfield require_join_fields[] = {
    {"name", &sch_str},
    {"filter", &sch_str},
    {"kinds", &sch_strlist},
    {"modes", &sch_strlist},
    {"count", &sch_int},
    {"on_leave", &sch_str},
    {NULL, NULL},
};
static const struct schema sch_require_join = {K_MAP, require_join_fields};
static const struct schema sch_require_joins = {K_LIST, &sch_require_join};

static const struct sfield impersonate_fields[] = {
    {"users", &sch_strlist}, {"roles", &sch_strlist}, {"where", &sch_str}, {NULL, NULL}};
static const struct schema sch_impersonate = {K_MAP, impersonate_fields};

static const struct sfield claim_mapping_fields[] = {
    {"claim", &sch_str}, {"value", &sch_str}, {"roles", &sch_strlist}, {NULL, NULL}};
static const struct schema sch_claim_mapping = {K_MAP, claim_mapping_fields};
static const struct schema sch_claims_to_roles = {K_LIST, &sch_claim_mapping};

static const struct sfield threshold_fields[] = {{"name", &sch_str},
                                                 {"filter", &sch_str},
                                                 {"approve", &sch_int},
                                                 {"deny", &sch_int},
                                                 {NULL, NULL}};
static const struct schema sch_threshold = {K_MAP, threshold_fields};
static const struct schema sch_thresholds = {K_LIST, &sch_threshold};

static const struct sfield request_kube_resource_fields[] = {{"kind", &sch_str},
                                                             {"name", &sch_str},
                                                             {"namespace", &sch_str},
                                                             {"api_group", &sch_str},
                                                             {NULL, NULL}};
static const struct schema sch_request_kube_resource = {K_MAP, request_kube_resource_fields};
static const struct schema sch_request_kube_resources = {K_LIST, &sch_request_kube_resource};

static const struct sfield reason_fields[] = {{"mode", &sch_str}, {NULL, NULL}};
static const struct schema sch_reason = {K_MAP, reason_fields};

static const struct sfield request_fields[] = {
    {"roles", &sch_strlist},
    {"claims_to_roles", &sch_claims_to_roles},
    {"annotations", &sch_strmap},
    {"thresholds", &sch_thresholds},
    {"suggested_reviewers", &sch_strlist},
    {"search_as_roles", &sch_strlist},
    {"max_duration", &sch_duration},
    {"kubernetes_resources", &sch_request_kube_resources},
    {"reason", &sch_reason},
    {NULL, NULL},
};
static const struct schema sch_request = {K_MAP, request_fields};

static const struct sfield review_fields[] = {
    {"roles", &sch_strlist},
    {"claims_to_roles", &sch_claims_to_roles},
    {"where", &sch_str},
    {"preview_as_roles", &sch_strlist},
    {NULL, NULL},
};
static const struct schema sch_review = {K_MAP, review_fields};

/* ---- allow / deny ------------------------------------------------------------------------ */

static int f_logins(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return parse_strlist(c, v, &((struct cond *)dst)->logins, true, false);
}

static int f_namespaces(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return parse_strlist(c, v, &((struct cond *)dst)->namespaces, false, false);
}

static int f_node_labels(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return parse_labels(c, v, &((struct cond *)dst)->node_labels, true);
}

static int f_node_expr(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct cond *cd = dst;
    char *src = NULL;
    int rv = get_str(c, v, true, &src);
    if (rv != 0)
        return rv;
    if (src[0] == '\0') { /* Teleport's "not set" */
        free(src);
        return 0;
    }
    if ((rv = pred_parse(src, &cd->node_pred)) != 0) {
        char why[300];
        snprintf(why, sizeof why, "%s", rp_errmsg());
        free(src);
        return rv == RP_EINVAL ? perr(c, "invalid label expression: %s", why) : rv;
    }
    cd->node_expr = src;
    return 0;
}

/* Kept, and noted when a policy covers SSH sessions: moderated sessions do not exist
 * yet, so such a role fails closed. */
static int f_require_join(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct cond *cd = dst;
    int rv = f_kept(c, v, dst, f);
    if (rv != 0)
        return rv;
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *kinds = rp_mp_get(&v->via.array.ptr[i], "kinds");
        bool ssh =
            kinds == NULL || kinds->type != MSGPACK_OBJECT_ARRAY || kinds->via.array.size == 0;
        for (uint32_t j = 0; !ssh && j < kinds->via.array.size; j++)
            ssh = rp_mp_str_eq(&kinds->via.array.ptr[j], "ssh") ||
                  rp_mp_str_eq(&kinds->via.array.ptr[j], "*");
        cd->require_join_ssh |= ssh;
    }
    return 0;
}

static int rule_resources(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return parse_strlist(c, v, &((struct rule *)dst)->resources, false, true);
}

static int rule_verbs(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return parse_strlist(c, v, &((struct rule *)dst)->verbs, false, true);
}

static int rule_where(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct rule *r = dst;
    free(r->where);
    r->where = NULL;
    return get_str(c, v, false, &r->where);
}

static const struct field rule_fields[] = {
    {"resources", rule_resources, 0, NULL},
    {"verbs", rule_verbs, 0, NULL},
    {"where", rule_where, 0, NULL},
    {"actions", f_kept, 0, &sch_strlist},
    {NULL, NULL, 0, NULL},
};

static int f_rules(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct cond *cd = dst;
    int rv;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return perr(c, "expected a list of rules ({resources: [...], verbs: [...]}), found %s",
                    type_name(v));
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        size_t old;
        if ((rv = push_index(c, i, &old)) != 0)
            return rv;
        if (cd->n_rules == cd->cap_rules) {
            size_t cap = cd->cap_rules == 0 ? 4 : cd->cap_rules * 2;
            struct rule *nr = realloc(cd->rules, cap * sizeof(*nr));
            if (nr == NULL)
                return oom();
            cd->rules = nr;
            cd->cap_rules = cap;
        }
        struct rule *r = &cd->rules[cd->n_rules++];
        memset(r, 0, sizeof(*r));
        if ((rv = walk_map(c, &v->via.array.ptr[i], rule_fields, r, &r->kept, "rule field")) != 0)
            return rv;
        if (r->resources.n == 0)
            return perr(c, "resources: missing, expected a list of resource kinds "
                           "(role, user, token, ..., or '*')");
        if (r->verbs.n == 0)
            return perr(c, "verbs: missing, expected a list of verbs (list, create, read, "
                           "update, delete, or '*')");
        pop(c, old);
    }
    return 0;
}

#define KEPT(name, schema)                                                                         \
    {                                                                                              \
        name, f_kept, 0, schema                                                                    \
    }

static const struct field cond_fields[] = {
    {"logins", f_logins, 0, NULL},
    {"node_labels", f_node_labels, 0, NULL},
    {"node_labels_expression", f_node_expr, 0, NULL},
    {"rules", f_rules, 0, NULL},
    {"namespaces", f_namespaces, 0, NULL},
    {"require_session_join", f_require_join, 0, &sch_require_joins},
    KEPT("app_labels", &sch_labels),
    KEPT("cluster_labels", &sch_labels),
    KEPT("db_labels", &sch_labels),
    KEPT("db_service_labels", &sch_labels),
    KEPT("kubernetes_labels", &sch_labels),
    KEPT("windows_desktop_labels", &sch_labels),
    KEPT("group_labels", &sch_labels),
    KEPT("workload_identity_labels", &sch_labels),
    KEPT("app_labels_expression", &sch_expr),
    KEPT("cluster_labels_expression", &sch_expr),
    KEPT("db_labels_expression", &sch_expr),
    KEPT("db_service_labels_expression", &sch_expr),
    KEPT("kubernetes_labels_expression", &sch_expr),
    KEPT("windows_desktop_labels_expression", &sch_expr),
    KEPT("group_labels_expression", &sch_expr),
    KEPT("workload_identity_labels_expression", &sch_expr),
    KEPT("kubernetes_groups", &sch_strlist),
    KEPT("kubernetes_users", &sch_strlist),
    KEPT("db_names", &sch_strlist),
    KEPT("db_users", &sch_strlist),
    KEPT("db_roles", &sch_strlist),
    KEPT("windows_desktop_logins", &sch_strlist),
    KEPT("aws_role_arns", &sch_strlist),
    KEPT("azure_identities", &sch_strlist),
    KEPT("gcp_service_accounts", &sch_strlist),
    KEPT("host_groups", &sch_strlist),
    KEPT("host_sudoers", &sch_strlist),
    KEPT("desktop_groups", &sch_strlist),
    KEPT("kubernetes_resources", &sch_kube_resources),
    KEPT("db_permissions", &sch_db_permissions),
    KEPT("spiffe", &sch_spiffe),
    KEPT("account_assignments", &sch_account_assignments),
    KEPT("github_permissions", &sch_github_permissions),
    KEPT("join_sessions", &sch_join_sessions),
    KEPT("impersonate", &sch_impersonate),
    KEPT("request", &sch_request),
    KEPT("review_requests", &sch_review),
    {NULL, NULL, 0, NULL},
};

/* ---- options -------------------------------------------------------------------------- */

static int get_bool(struct pctx *c, const msgpack_object *v, bool *out)
{
    static const char *const yes[] = {"true", "yes", "on", NULL};
    static const char *const no[] = {"false", "no", "off", NULL};
    if (v->type == MSGPACK_OBJECT_BOOLEAN) {
        *out = v->via.boolean;
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_STR && v->via.str.size < 8) {
        char s[8];
        memcpy(s, v->via.str.ptr, v->via.str.size);
        s[v->via.str.size] = '\0';
        for (int i = 0; yes[i] != NULL; i++)
            if (strcasecmp(s, yes[i]) == 0) {
                *out = true;
                return 0;
            }
        for (int i = 0; no[i] != NULL; i++)
            if (strcasecmp(s, no[i]) == 0) {
                *out = false;
                return 0;
            }
    }
    return perr(c, "expected true or false, found %s", type_name(v));
}

/* One of the NULL-terminated @names; returns its index in *@idx. */
static int get_enum(struct pctx *c, const msgpack_object *v, const char *const *names, int *idx)
{
    char ex[128], list[200] = "";
    if (v->type == MSGPACK_OBJECT_STR) {
        for (int i = 0; names[i] != NULL; i++)
            if (strlen(names[i]) == v->via.str.size &&
                memcmp(names[i], v->via.str.ptr, v->via.str.size) == 0) {
                *idx = i;
                return 0;
            }
    }
    for (int i = 0; names[i] != NULL; i++)
        if (strlen(list) + strlen(names[i]) + 3 < sizeof list)
            strcat(strcat(list, i > 0 ? ", " : ""), names[i]);
    if (v->type == MSGPACK_OBJECT_STR)
        return perr(c, "unknown value '%s', expected one of: %s",
                    excerpt(v->via.str.ptr, v->via.str.size, ex, sizeof ex), list);
    return perr(c, "expected one of: %s, found %s", list, type_name(v));
}

/* A Go duration string; 0 means unset. "never" is accepted when @never_ok. */
static int get_duration(struct pctx *c, const msgpack_object *v, bool never_ok, uint64_t *ns)
{
    char ex[128], *s = NULL;
    const char *why;
    int rv;
    if (v->type != MSGPACK_OBJECT_STR)
        return perr(c, "expected a duration such as 8h, 30m or 1h30m, found %s", type_name(v));
    if ((rv = get_str(c, v, true, &s)) != 0)
        return rv;
    if (never_ok && strcmp(s, "never") == 0) {
        *ns = 0;
    } else if ((why = go_duration_parse(s, ns)) != NULL) {
        rv = perr(c, "invalid duration '%s': %s; expected a duration such as 8h, 30m or 1h30m",
                  excerpt(s, strlen(s), ex, sizeof ex), why);
    }
    free(s);
    return rv;
}

static int get_count(struct pctx *c, const msgpack_object *v, uint32_t *out)
{
    if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER || v->via.u64 > UINT32_MAX)
        return perr(c, "expected a non-negative integer (0 for no limit), found %s",
                    v->type == MSGPACK_OBJECT_POSITIVE_INTEGER ? "a larger number" : type_name(v));
    *out = (uint32_t)v->via.u64;
    return 0;
}

static int o_ttl(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct opts *o = dst;
    int rv = get_duration(c, v, false, &o->ttl_ns);
    o->ttl_set = rv == 0 && o->ttl_ns > 0;
    return rv;
}

static int o_idle(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return get_duration(c, v, true, &((struct opts *)dst)->idle_ns);
}

enum { B_FORWARD_AGENT, B_PORT_FORWARDING, B_FILE_COPY, B_DISCONNECT, B_X11, B_PIN };

static int o_bool(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct opts *o = dst;
    bool b = false;
    int rv = get_bool(c, v, &b);
    if (rv != 0)
        return rv;
    switch (f->arg) {
    case B_FORWARD_AGENT:
        o->forward_agent = b;
        break;
    case B_PORT_FORWARDING:
        o->port_forwarding = b;
        break;
    case B_FILE_COPY:
        o->ssh_file_copy = b;
        break;
    case B_DISCONNECT:
        o->disconnect = b;
        break;
    case B_X11:
        o->x11 = b;
        break;
    default:
        o->pin = b;
        break;
    }
    return 0;
}

static int o_count(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct opts *o = dst;
    return get_count(c, v, f->arg == 0 ? &o->max_sessions : &o->max_connections);
}

static int o_mfa(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct opts *o = dst;
    if (v->type == MSGPACK_OBJECT_BOOLEAN) { /* YAML 1.1 reads yes/no as booleans */
        o->mfa = v->via.boolean ? RBAC_MFA_YES : RBAC_MFA_NO;
        return 0;
    }
    return get_enum(c, v, mfa_names, &o->mfa);
}

/* Finds @str among the NULL-terminated @names: its index, or -1. */
static int name_index(const char *const *names, const char *str)
{
    for (int i = 0; names[i] != NULL; i++)
        if (strcmp(names[i], str) == 0)
            return i;
    return -1;
}

/* Any string is kept, as Teleport does; see DEVICE_TRUST_UNKNOWN. */
static int o_device_trust(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct opts *o = dst;
    char *str = NULL;
    int rv;
    if (v->type == MSGPACK_OBJECT_BOOLEAN && !v->via.boolean) /* YAML 1.1 "off" */
        str = strdup("off");
    else if ((rv = get_str(c, v, true, &str)) != 0)
        return rv;
    if (str == NULL)
        return oom();
    free(o->device_trust_s);
    o->device_trust_s = str;
    o->device_trust = name_index(device_trust_modes, str);
    if (o->device_trust < 0)
        o->device_trust = DEVICE_TRUST_UNKNOWN;
    return 0;
}

/* ssh_port_forwarding: {local: {enabled: B}, remote: {enabled: B}}, v7's form of
 * port_forwarding that tells the two directions apart. */
static int o_ssh_port_forwarding(struct pctx *c, const msgpack_object *v, void *dst,
                                 const struct field *f)
{
    static const struct sfield enabled_fields[] = {{"enabled", &sch_bool}, {NULL, NULL}};
    static const struct schema sch_enabled = {K_MAP, enabled_fields};
    static const struct sfield pf_fields[] = {
        {"local", &sch_enabled}, {"remote", &sch_enabled}, {NULL, NULL}};
    static const struct schema sch_pf = {K_MAP, pf_fields};
    static const char *const directions[] = {"local", "remote"};
    struct opts *o = dst;
    msgpack_packer pk;
    struct sink sk;
    int rv;

    rp_buf_reset(&o->ssh_port_forwarding);
    sink_init(&sk, &pk, &o->ssh_port_forwarding);
    if ((rv = schema_pack(c, v, &sch_pf, &pk)) != 0)
        return rv;
    if (sk.failed)
        return oom();
    for (int i = 0; i < 2; i++) {
        const msgpack_object *enabled = rp_mp_get(rp_mp_get(v, directions[i]), "enabled");
        bool b = true;
        if (enabled == NULL || enabled->type == MSGPACK_OBJECT_NIL)
            continue;
        if ((rv = get_bool(c, enabled, &b)) != 0) /* checked above: cannot fail */
            return rv;
        *(i == 0 ? &o->pf_local : &o->pf_remote) = b;
    }
    return 0;
}

static int o_lock(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    static const char *const names[] = {"best_effort", "strict", NULL};
    return get_enum(c, v, names, &((struct opts *)dst)->lock);
}

static int o_host_user_mode(struct pctx *c, const msgpack_object *v, void *dst,
                            const struct field *f)
{
    struct opts *o = dst;
    if (v->type == MSGPACK_OBJECT_BOOLEAN && !v->via.boolean) { /* YAML 1.1 "off" */
        o->host_user_mode = 0;
        return 0;
    }
    return get_enum(c, v, host_user_modes, &o->host_user_mode);
}

static int o_enhanced(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    static const char *const names[] = {"command", "disk", "network", NULL};
    struct opts *o = dst;
    int rv;
    if (v->type != MSGPACK_OBJECT_ARRAY)
        return perr(c, "expected a list of command, disk, network; found %s", type_name(v));
    unsigned bits = 0;
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        size_t old;
        int idx;
        if ((rv = push_index(c, i, &old)) != 0)
            return rv;
        if ((rv = get_enum(c, &v->via.array.ptr[i], names, &idx)) != 0)
            return rv;
        bits |= 1u << idx;
        pop(c, old);
    }
    if (bits != 0) /* an empty list means the default, as in Teleport */
        o->enhanced = bits;
    return 0;
}

/* Any string is kept, as Teleport does; one that is not best_effort counts as strict,
 * the mode that refuses a session it cannot record. */
static int rec_mode(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    static const char *const names[] = {"best_effort", "strict", NULL};
    struct opts *o = dst;
    char *str = NULL;
    int rv = get_str(c, v, true, &str);
    if (rv != 0)
        return rv;
    int mode = name_index(names, str);
    if (mode < 0)
        mode = str[0] == '\0' ? (f->arg == 0 ? REC_BEST_EFFORT : -1) : REC_STRICT;
    if (f->arg == 0) {
        free(o->rec_default_s);
        o->rec_default_s = str;
        o->rec_default = mode;
    } else {
        free(o->rec_ssh_s);
        o->rec_ssh_s = str;
        o->rec_ssh = mode;
    }
    return 0;
}

static int rec_desktop(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return get_bool(c, v, &((struct opts *)dst)->rec_desktop);
}

/* Raftport's own: Teleport has no switch to record what the user types. */
static int rec_ssh_input(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    bool b = false;
    int rv = get_bool(c, v, &b);
    if (rv == 0)
        ((struct opts *)dst)->rec_input = b;
    return rv;
}

static const struct field record_fields[] = {
    {"default", rec_mode, 0, NULL},
    {"ssh", rec_mode, 1, NULL},
    {"desktop", rec_desktop, 0, NULL},
    {"ssh_input", rec_ssh_input, 0, NULL},
    {NULL, NULL, 0, NULL},
};

static int o_record(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct opts *o = dst;
    return walk_map(c, v, record_fields, dst, &o->rec_kept, "record_session field");
}

/* cert_extensions: [{type: ssh, mode: extension, name: NAME, value: VALUE}] */
static int o_cert_ext(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    static const char *const types[] = {"ssh", NULL};
    static const char *const modes[] = {"extension", NULL};
    struct opts *o = dst;
    msgpack_packer pk;
    struct sink sk;
    int rv, idx;

    if (v->type != MSGPACK_OBJECT_ARRAY)
        return perr(c, "expected a list of {type, mode, name, value}, found %s", type_name(v));
    rp_buf_reset(&o->cert_extensions);
    sink_init(&sk, &pk, &o->cert_extensions);
    msgpack_pack_array(&pk, v->via.array.size);
    for (uint32_t i = 0; i < v->via.array.size; i++) {
        const msgpack_object *e = &v->via.array.ptr[i];
        size_t old, old2;
        if ((rv = push_index(c, i, &old)) != 0)
            return rv;
        if (e->type != MSGPACK_OBJECT_MAP)
            return perr(c, "expected a map {type, mode, name, value}, found %s", type_name(e));
        static const char *const keys[] = {"mode", "name", "type", "value", NULL};
        for (uint32_t j = 0; j < e->via.map.size; j++) {
            const msgpack_object *k = &e->via.map.ptr[j].key;
            bool known = false;
            for (int n = 0; keys[n] != NULL && !known; n++)
                known = rp_mp_str_eq(k, keys[n]);
            if (!known)
                return perr(c, "unknown field, expected type, mode, name and value");
        }
        for (int n = 0; keys[n] != NULL; n++) {
            const msgpack_object *fv = rp_mp_get(e, keys[n]);
            if ((rv = push_key(c, keys[n], strlen(keys[n]), &old2)) != 0)
                return rv;
            if (fv == NULL || fv->type == MSGPACK_OBJECT_NIL)
                return perr(c, "missing");
            if (strcmp(keys[n], "type") == 0)
                rv = get_enum(c, fv, types, &idx);
            else if (strcmp(keys[n], "mode") == 0)
                rv = get_enum(c, fv, modes, &idx);
            else {
                char *s = NULL;
                rv = get_str(c, fv, strcmp(keys[n], "value") == 0, &s);
                if (rv == 0 && strcmp(keys[n], "value") == 0)
                    rv = check_template(c, s);
                free(s);
            }
            if (rv != 0)
                return rv;
            pop(c, old2);
        }
        if (pack_sorted(&pk, e) != 0)
            return oom();
        pop(c, old);
    }
    return sk.failed ? oom() : 0;
}

static const char *const db_user_modes[] = {"off", "keep", "best_effort_drop", NULL};
static const struct schema sch_db_user_mode = {K_ENUM, db_user_modes};
static const struct sfield idp_saml_fields[] = {{"enabled", &sch_bool}, {NULL, NULL}};
static const struct schema sch_idp_saml = {K_MAP, idp_saml_fields};
static const struct sfield idp_fields[] = {{"saml", &sch_idp_saml}, {NULL, NULL}};
static const struct schema sch_idp = {K_MAP, idp_fields};

static const struct field option_fields[] = {
    {"max_session_ttl", o_ttl, 0, NULL},
    {"forward_agent", o_bool, B_FORWARD_AGENT, NULL},
    {"port_forwarding", o_bool, B_PORT_FORWARDING, NULL},
    {"ssh_port_forwarding", o_ssh_port_forwarding, 0, NULL},
    {"ssh_file_copy", o_bool, B_FILE_COPY, NULL},
    {"client_idle_timeout", o_idle, 0, NULL},
    {"disconnect_expired_cert", o_bool, B_DISCONNECT, NULL},
    {"max_sessions", o_count, 0, NULL},
    {"permit_x11_forwarding", o_bool, B_X11, NULL},
    {"require_session_mfa", o_mfa, 0, NULL},
    {"device_trust_mode", o_device_trust, 0, NULL},
    {"lock", o_lock, 0, NULL},
    {"record_session", o_record, 0, NULL},
    {"pin_source_ip", o_bool, B_PIN, NULL},
    {"cert_extensions", o_cert_ext, 0, NULL},
    {"create_host_user_mode", o_host_user_mode, 0, NULL},
    {"max_connections", o_count, 1, NULL},
    {"enhanced_recording", o_enhanced, 0, NULL},
    KEPT("cert_format", &sch_str),
    KEPT("request_access", &sch_str),
    KEPT("request_prompt", &sch_str),
    KEPT("max_kubernetes_connections", &sch_int),
    KEPT("desktop_clipboard", &sch_bool),
    KEPT("desktop_directory_sharing", &sch_bool),
    KEPT("create_host_user", &sch_bool),
    KEPT("create_host_user_default_shell", &sch_str),
    KEPT("create_desktop_user", &sch_bool),
    KEPT("create_db_user", &sch_bool),
    KEPT("create_db_user_mode", &sch_db_user_mode),
    KEPT("mfa_verification_interval", &sch_duration),
    KEPT("idp", &sch_idp),
    {NULL, NULL, 0, NULL},
};

/* ---- metadata, spec, the resource ---------------------------------------------------------- */

static int m_name(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct rbac_role *r = dst;
    char *s = NULL;
    int rv = get_str(c, v, false, &s);
    if (rv != 0)
        return rv;
    size_t n = strlen(s);
    bool ok = n <= MAX_NAME;
    for (size_t i = 0; i < n && ok; i++)
        ok = (unsigned char)s[i] > 0x20 && s[i] != 0x7f && s[i] != '/';
    if (!ok) {
        char ex[128];
        rv = perr(c,
                  "invalid role name '%s', expected at most %d characters without spaces, "
                  "control characters or '/'",
                  excerpt(s, n, ex, sizeof ex), MAX_NAME);
        free(s);
        return rv;
    }
    free(r->name);
    r->name = s;
    return 0;
}

/* description, namespace: strings; expires, revision: strings or (as stored) integers;
 * labels: map of strings; id: int. */
static int m_extra(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct rbac_role *r = dst;
    int rv;
    if (f->arg == 1) { /* labels */
        if (v->type != MSGPACK_OBJECT_MAP)
            return perr(c, "expected a map of label names to values, found %s", type_name(v));
        for (uint32_t i = 0; i < v->via.map.size; i++) {
            const msgpack_object *k = &v->via.map.ptr[i].key, *val = &v->via.map.ptr[i].val;
            size_t old;
            if (k->type != MSGPACK_OBJECT_STR)
                return perr(c, "label names must be strings, found %s", type_name(k));
            if ((rv = push_key(c, k->via.str.ptr, k->via.str.size, &old)) != 0)
                return rv;
            if (val->type != MSGPACK_OBJECT_STR)
                return perr(c, "expected a string, found %s%s", type_name(val), quote_hint(val));
            pop(c, old);
        }
    } else if (f->arg == 2) { /* id */
        if (v->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return perr(c, "expected a non-negative integer, found %s", type_name(v));
    } else if (f->arg == 3 && v->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        /* expires and revision as the store keeps them: integers (ms, Raft index) */
    } else {
        char *s = NULL;
        if ((rv = get_str(c, v, true, &s)) != 0)
            return rv;
        bool bad_ns = strcmp(f->name, "namespace") == 0 && strcmp(s, "default") != 0;
        free(s);
        if (bad_ns)
            return perr(c, "only the namespace 'default' exists");
    }
    struct extra *e = extras_add(&r->meta, f->name, strlen(f->name));
    msgpack_packer pk;
    struct sink sk;
    if (e == NULL)
        return oom();
    sink_init(&sk, &pk, &e->raw);
    if (pack_sorted(&pk, v) != 0 || sk.failed)
        return oom();
    return 0;
}

static const struct field meta_fields[] = {
    {"name", m_name, 0, NULL},     {"description", m_extra, 0, NULL},
    {"labels", m_extra, 1, NULL},  {"namespace", m_extra, 0, NULL},
    {"expires", m_extra, 3, NULL}, {"revision", m_extra, 3, NULL},
    {"id", m_extra, 2, NULL},      {NULL, NULL, 0, NULL},
};

/* Walks @v with c->restrictive set to @restrictive for the walk. */
static int walk_section(struct pctx *c, const msgpack_object *v, const struct field *fields,
                        void *dst, struct extras *keep, bool restrictive, const char *what)
{
    bool outer = c->restrictive;
    c->restrictive = restrictive;
    int rv = walk_map(c, v, fields, dst, keep, what);
    c->restrictive = outer;
    return rv;
}

static int s_options(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct opts *o = &((struct rbac_role *)dst)->opt;
    return walk_section(c, v, option_fields, o, &o->kept, true, "option");
}

static int s_cond(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    struct rbac_role *r = dst;
    struct cond *cd = f->arg == 0 ? &r->allow : &r->deny;
    return walk_section(c, v, cond_fields, cd, &cd->kept, f->arg == 1, "field");
}

static const struct field spec_fields[] = {
    {"options", s_options, 0, NULL},
    {"allow", s_cond, 0, NULL},
    {"deny", s_cond, 1, NULL},
    {NULL, NULL, 0, NULL},
};

static int t_kind(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    char ex[128];
    if (!rp_mp_str_eq(v, "role")) {
        if (v->type == MSGPACK_OBJECT_STR)
            return perr(c, "expected 'role', found '%s'",
                        excerpt(v->via.str.ptr, v->via.str.size, ex, sizeof ex));
        return perr(c, "expected 'role', found %s", type_name(v));
    }
    ((struct rbac_role *)dst)->kind_seen = true;
    return 0;
}

static int t_sub_kind(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    if (v->type == MSGPACK_OBJECT_STR && v->via.str.size == 0)
        return 0;
    return perr(c, "roles have no sub_kind");
}

static int t_version(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    char ex[128];
    struct rbac_role *r = dst;
    if (v->type == MSGPACK_OBJECT_STR && v->via.str.size == 2 && v->via.str.ptr[0] == 'v' &&
        v->via.str.ptr[1] >= '0' + RBAC_MIN_VERSION &&
        v->via.str.ptr[1] <= '0' + RBAC_MAX_VERSION) {
        r->version = v->via.str.ptr[1] - '0';
        return 0;
    }
    if (v->type == MSGPACK_OBJECT_STR)
        return perr(c,
                    "unsupported role version '%s', expected one of v3, v4, v5, v6, v7, v8 "
                    "(v7 is current)",
                    excerpt(v->via.str.ptr, v->via.str.size, ex, sizeof ex));
    return perr(c, "expected a version string such as 'v7', found %s", type_name(v));
}

static int t_metadata(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    return walk_section(c, v, meta_fields, dst, &((struct rbac_role *)dst)->meta, false,
                        "metadata field");
}

static int t_spec(struct pctx *c, const msgpack_object *v, void *dst, const struct field *f)
{
    /* A field of spec Raftport does not know may be a new kind of restriction. */
    return walk_section(c, v, spec_fields, dst, &((struct rbac_role *)dst)->spec_kept, true,
                        "field");
}

static const struct field top_fields[] = {
    {"kind", t_kind, 0, NULL},       {"sub_kind", t_sub_kind, 0, NULL},
    {"version", t_version, 0, NULL}, {"metadata", t_metadata, 0, NULL},
    {"spec", t_spec, 0, NULL},       {NULL, NULL, 0, NULL},
};

static int pack_cond(const struct cond *cd, msgpack_packer *pk)
{
    struct kvl l = {.n = 0};
    int rv = 0;
    if (cd->logins.n > 0)
        pack_strv(kvl_add(&l, "logins"), &cd->logins);
    if (cd->namespaces.n > 0)
        pack_strv(kvl_add(&l, "namespaces"), &cd->namespaces);
    if (cd->node_labels.set)
        rv |= pack_labels(kvl_add(&l, "node_labels"), &cd->node_labels);
    if (cd->n_rules > 0) {
        msgpack_packer *rp = kvl_add(&l, "rules");
        msgpack_pack_array(rp, cd->n_rules);
        for (size_t i = 0; i < cd->n_rules; i++) {
            const struct rule *r = &cd->rules[i];
            struct kvl rl = {.n = 0};
            pack_strv(kvl_add(&rl, "resources"), &r->resources);
            pack_strv(kvl_add(&rl, "verbs"), &r->verbs);
            if (r->where != NULL)
                pack_str(kvl_add(&rl, "where"), r->where);
            kvl_add_extras(&rl, &r->kept);
            rv |= kvl_pack(&rl, rp);
        }
    }
    if (cd->node_expr != NULL)
        pack_str(kvl_add(&l, "node_labels_expression"), cd->node_expr);
    kvl_add_extras(&l, &cd->kept);
    rv |= kvl_pack(&l, pk);
    return rv != 0 ? RP_ENOMEM : 0;
}

static void pack_duration(msgpack_packer *pk, uint64_t ns)
{
    char s[96];
    go_duration_format(ns, s);
    pack_str(pk, s);
}

static int pack_options(const struct opts *o, msgpack_packer *pk)
{
    static const char *const rec[] = {"best_effort", "strict"};
    struct kvl l = {.n = 0}, r = {.n = 0};
    int rv = 0;

    if (o->ttl_set)
        pack_duration(kvl_add(&l, "max_session_ttl"), o->ttl_ns);
    if (o->idle_ns > 0)
        pack_duration(kvl_add(&l, "client_idle_timeout"), o->idle_ns);
    pack_bool(kvl_add(&l, "forward_agent"), o->forward_agent);
    /* Only as written: a filled-in "port_forwarding: true" would, read back, override
     * every role's ssh_port_forwarding (Teleport gives the legacy option precedence). */
    if (o->port_forwarding >= 0)
        pack_bool(kvl_add(&l, "port_forwarding"), o->port_forwarding);
    if (o->ssh_port_forwarding.len > 0)
        kvl_add_raw(&l, "ssh_port_forwarding", &o->ssh_port_forwarding);
    pack_bool(kvl_add(&l, "ssh_file_copy"), o->ssh_file_copy);
    if (o->disconnect >= 0)
        pack_bool(kvl_add(&l, "disconnect_expired_cert"), o->disconnect);
    if (o->x11 >= 0)
        pack_bool(kvl_add(&l, "permit_x11_forwarding"), o->x11);
    if (o->pin >= 0)
        pack_bool(kvl_add(&l, "pin_source_ip"), o->pin);
    if (o->max_sessions > 0)
        msgpack_pack_uint32(kvl_add(&l, "max_sessions"), o->max_sessions);
    if (o->max_connections > 0)
        msgpack_pack_uint32(kvl_add(&l, "max_connections"), o->max_connections);
    if (o->mfa >= 0)
        pack_str(kvl_add(&l, "require_session_mfa"), mfa_names[o->mfa]);
    if (o->device_trust_s != NULL)
        pack_str(kvl_add(&l, "device_trust_mode"), o->device_trust_s);
    if (o->lock >= 0)
        pack_str(kvl_add(&l, "lock"), rec[o->lock]);
    if (o->host_user_mode >= 0)
        pack_str(kvl_add(&l, "create_host_user_mode"), host_user_modes[o->host_user_mode]);
    if (o->cert_extensions.len > 0)
        kvl_add_raw(&l, "cert_extensions", &o->cert_extensions);

    msgpack_packer *ep = kvl_add(&l, "enhanced_recording");
    static const char *const enh[] = {"command", "disk", "network"};
    msgpack_pack_array(ep, (size_t)__builtin_popcount(o->enhanced));
    for (int i = 0; i < 3; i++)
        if (o->enhanced & (1u << i))
            pack_str(ep, enh[i]);

    pack_str(kvl_add(&r, "default"),
             o->rec_default_s != NULL ? o->rec_default_s : rec[o->rec_default]);
    pack_bool(kvl_add(&r, "desktop"), o->rec_desktop);
    if (o->rec_ssh_s != NULL)
        pack_str(kvl_add(&r, "ssh"), o->rec_ssh_s);
    if (o->rec_input >= 0)
        pack_bool(kvl_add(&r, "ssh_input"), o->rec_input);
    kvl_add_extras(&r, &o->rec_kept);
    rv |= kvl_pack(&r, kvl_add(&l, "record_session"));
    kvl_add_extras(&l, &o->kept);
    rv |= kvl_pack(&l, pk);
    return rv != 0 ? RP_ENOMEM : 0;
}

static int role_pack(const struct rbac_role *role, struct rp_buf *out)
{
    struct kvl top = {.n = 0}, meta = {.n = 0}, spec = {.n = 0};
    struct sink sk;
    msgpack_packer pk;
    char version[8];
    int rv = 0;

    sink_init(&sk, &pk, out);
    pack_str(kvl_add(&top, "kind"), "role");
    snprintf(version, sizeof version, "v%d", role->version);
    pack_str(kvl_add(&top, "version"), version);
    pack_str(kvl_add(&meta, "name"), role->name);
    kvl_add_extras(&meta, &role->meta);
    rv |= kvl_pack(&meta, kvl_add(&top, "metadata"));
    rv |= pack_options(&role->opt, kvl_add(&spec, "options"));
    rv |= pack_cond(&role->allow, kvl_add(&spec, "allow"));
    rv |= pack_cond(&role->deny, kvl_add(&spec, "deny"));
    kvl_add_extras(&spec, &role->spec_kept);
    rv |= kvl_pack(&spec, kvl_add(&top, "spec"));
    kvl_add_extras(&top, &role->top_kept);
    rv |= kvl_pack(&top, &pk);
    return rv != 0 || sk.failed ? oom() : 0;
}

/* ---- parse: the entry points -------------------------------------------------------------- */

static bool cond_has_extra(const struct cond *cd, const char *name)
{
    for (size_t i = 0; i < cd->kept.n; i++)
        if (strcmp(cd->kept.v[i].name, name) == 0)
            return true;
    return false;
}

/* Teleport's per-version defaults (facts 3.1). */
static int apply_version_defaults(struct rbac_role *r)
{
    static const char *const v3_wildcards[] = {"app_labels", "kubernetes_labels", "db_labels",
                                               NULL};
    if (r->version != 3)
        return 0;
    struct lsel *nl = &r->allow.node_labels;
    if (!nl->set) {
        nl->set = true;
        if (r->allow.logins.n > 0) {
            if ((nl->k = calloc(1, sizeof(*nl->k))) == NULL)
                return oom();
            nl->cap = 1;
            if ((nl->k[0].key = strdup("*")) == NULL)
                return oom();
            nl->n = 1;
            if (strv_push(&nl->k[0].vals, "*") != 0)
                return oom();
        }
    }
    for (int i = 0; v3_wildcards[i] != NULL; i++) {
        if (cond_has_extra(&r->allow, v3_wildcards[i]))
            continue;
        struct extra *e = extras_add(&r->allow.kept, v3_wildcards[i], strlen(v3_wildcards[i]));
        msgpack_packer pk;
        struct sink sk;
        if (e == NULL)
            return oom();
        sink_init(&sk, &pk, &e->raw);
        msgpack_pack_map(&pk, 1);
        pack_str(&pk, "*");
        pack_str(&pk, "*");
        if (sk.failed)
            return oom();
    }
    return 0;
}

/* Notes the known fields of @r that restrict SSH access in a way Raftport does not
 * enforce yet: a user holding @r is refused SSH access until it does. */
static void note_unenforced(struct rbac_role *r)
{
    const struct opts *o = &r->opt;
    if (o->mfa > RBAC_MFA_NO) /* per-session MFA does not exist yet */
        r->unenforced[r->n_unenforced++] = "spec.options.require_session_mfa";
    if (o->device_trust >= DEVICE_TRUST_REQUIRED) /* nor do trusted devices */
        r->unenforced[r->n_unenforced++] = "spec.options.device_trust_mode";
    if (o->pin > 0) /* certificates carry no source-address yet */
        r->unenforced[r->n_unenforced++] = "spec.options.pin_source_ip";
    if (r->allow.require_join_ssh) /* nor are there moderated sessions */
        r->unenforced[r->n_unenforced++] = "spec.allow.require_session_join";
}

size_t rbac_role_unenforced(const struct rbac_role *role, const char **fields, size_t max)
{
    size_t n = 0;
    for (size_t i = 0; i < role->n_unenforced; i++, n++)
        if (n < max)
            fields[n] = role->unenforced[i];
    for (size_t i = 0; i < role->unknown_fc.n; i++, n++)
        if (n < max)
            fields[n] = role->unknown_fc.v[i];
    return n;
}

size_t rbac_role_unknown(const struct rbac_role *role, const char **fields, size_t max)
{
    for (size_t i = 0; i < role->unknown.n && i < max; i++)
        fields[i] = role->unknown.v[i];
    return role->unknown.n;
}

/* Every string of the resource, key or value, must be printable as YAML (tctl get),
 * so valid UTF-8 without NUL bytes: checked once, before the fields are read. */
static int check_strings(struct pctx *c, const msgpack_object *o, int depth)
{
    int rv;
    if (depth > RP_MP_MAX_DEPTH)
        return perr(c, "nested too deeply");
    if (o->type == MSGPACK_OBJECT_STR) {
        if (!rp_ymp_str_ok(o->via.str.ptr, o->via.str.size))
            return perr(c, "strings must be valid UTF-8 without NUL bytes");
    } else if (o->type == MSGPACK_OBJECT_BIN || o->type == MSGPACK_OBJECT_EXT) {
        return perr(c, "binary values are not allowed in a role");
    } else if (o->type == MSGPACK_OBJECT_ARRAY) {
        for (uint32_t i = 0; i < o->via.array.size; i++) {
            size_t old;
            if ((rv = push_index(c, i, &old)) != 0)
                return rv;
            if ((rv = check_strings(c, &o->via.array.ptr[i], depth + 1)) != 0)
                return rv;
            pop(c, old);
        }
    } else if (o->type == MSGPACK_OBJECT_MAP) {
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            const msgpack_object *k = &o->via.map.ptr[i].key;
            if (k->type != MSGPACK_OBJECT_STR || !rp_ymp_str_ok(k->via.str.ptr, k->via.str.size))
                return perr(c, "map keys must be strings of valid UTF-8 without NUL bytes");
            size_t old;
            if ((rv = push_key(c, k->via.str.ptr, k->via.str.size, &old)) != 0)
                return rv;
            if ((rv = check_strings(c, &o->via.map.ptr[i].val, depth + 1)) != 0)
                return rv;
            pop(c, old);
        }
    }
    return 0;
}

int rbac_role_parse(const msgpack_object *res, struct rbac_role **out)
{
    struct pctx c = {.version = 0};
    struct rbac_role *r;
    int rv;

    *out = NULL;
    if ((r = calloc(1, sizeof(*r))) == NULL)
        return oom();
    c.role = r;
    r->opt = (struct opts){
        .port_forwarding = -1,
        .pf_local = -1,
        .pf_remote = -1,
        .device_trust = -1,
        .ssh_file_copy = true,
        .disconnect = -1,
        .x11 = -1,
        .pin = -1,
        .mfa = -1,
        .lock = -1,
        .rec_default = REC_BEST_EFFORT,
        .rec_ssh = -1,
        .rec_desktop = true,
        .rec_input = -1,
        .enhanced = RBAC_ENHANCED_COMMAND | RBAC_ENHANCED_NETWORK,
        .host_user_mode = -1,
    };
    rp_buf_init(&c.path);

    if (res->type != MSGPACK_OBJECT_MAP)
        rv = rp_err(RP_EINVAL, "(role): expected the role resource to be a map, found %s",
                    type_name(res));
    else if ((rv = check_strings(&c, res, 0)) == 0)
        rv = walk_map(&c, res, top_fields, r, &r->top_kept, "field");
    if (rv == 0 && !r->kind_seen)
        rv = rp_err(RP_EINVAL, "kind: missing, expected 'role'");
    if (rv == 0 && r->version == 0)
        rv = rp_err(RP_EINVAL, "version: missing, expected one of v3, v4, v5, v6, v7, v8 "
                               "(v7 is current)");
    if (rv == 0 && r->name == NULL)
        rv = rp_err(RP_EINVAL, "metadata.name: missing, expected the role's name");
    if (rv == 0)
        rv = apply_version_defaults(r);
    if (rv == 0)
        note_unenforced(r);
    if (rv == 0)
        rv = role_pack(r, &r->canonical);
    rp_buf_free(&c.path);
    if (rv != 0) {
        rbac_role_free(r);
        return rv;
    }
    *out = r;
    return 0;
}

int rbac_role_parse_yaml(const char *name, const char *text, size_t n, struct rbac_role **out)
{
    struct rp_buf mp;
    struct rp_ymp_lines lines;
    msgpack_unpacked u;
    int rv;

    *out = NULL;
    rp_buf_init(&mp);
    rp_ymp_lines_init(&lines);
    if ((rv = rp_ymp_parse_str(name, text, n, &mp, &lines)) != 0)
        goto out;
    if ((rv = rp_mp_parse(mp.data, mp.len, &u)) != 0) {
        rv = rp_err(rv, "%s: %s", name, rp_errmsg());
        goto out;
    }
    rv = rbac_role_parse(&u.data, out);
    msgpack_unpacked_destroy(&u);
    if (rv == RP_EINVAL)
        rp_ymp_locate(&lines, rv);
out:
    rp_ymp_lines_free(&lines);
    rp_buf_free(&mp);
    return rv;
}

int rbac_role_pack(const struct rbac_role *role, struct rp_buf *out)
{
    if (rp_buf_append(out, role->canonical.data, role->canonical.len) != 0)
        return oom();
    return 0;
}

int rbac_role_to_yaml(const struct rbac_role *role, struct rp_buf *out)
{
    msgpack_unpacked u;
    int rv = rp_mp_parse(role->canonical.data, role->canonical.len, &u);
    if (rv != 0)
        return rv;
    rv = rp_ymp_to_yaml(out, &u.data);
    msgpack_unpacked_destroy(&u);
    return rv;
}

/* ---- sets: roles with traits applied ------------------------------------------------------ */

enum { M_ANY, M_EXACT, M_GLOB, M_REGEX };

struct matcher {
    int kind;
    char *s;
    regex_t re;
};

struct xkey {
    const char *key; /* borrowed from the role */
    struct matcher *m;
    size_t n;
};

struct xsel {
    struct xkey *k;
    size_t n;
    bool all; /* '*': '*' */
};

struct xrole {
    const struct rbac_role *role;
    struct strv allow_logins, deny_logins;
    struct xsel allow_nodes, deny_nodes;
};

struct rbac_set {
    struct xrole *r;
    size_t n;
    struct traits traits; /* what label expressions read */
};

static void xsel_free(struct xsel *s)
{
    for (size_t i = 0; i < s->n; i++) {
        for (size_t j = 0; j < s->k[i].n; j++) {
            if (s->k[i].m[j].kind == M_REGEX)
                regfree(&s->k[i].m[j].re);
            free(s->k[i].m[j].s);
        }
        free(s->k[i].m);
    }
    free(s->k);
    memset(s, 0, sizeof(*s));
}

void rbac_set_free(struct rbac_set *set)
{
    if (set == NULL)
        return;
    for (size_t i = 0; i < set->n; i++) {
        strv_free(&set->r[i].allow_logins);
        strv_free(&set->r[i].deny_logins);
        xsel_free(&set->r[i].allow_nodes);
        xsel_free(&set->r[i].deny_nodes);
    }
    free(set->r);
    traits_free(&set->traits);
    free(set);
}

/* Reads the user's traits: nil, or {name: [strings] or string}. */
static int traits_read(const msgpack_object *o, struct traits *t)
{
    char ex[128];
    memset(t, 0, sizeof(*t));
    if (o == NULL || o->type == MSGPACK_OBJECT_NIL)
        return 0;
    if (o->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL,
                      "traits: expected a map of trait names to lists of strings, "
                      "found %s",
                      type_name(o));
    if ((t->v = calloc(o->via.map.size + 1, sizeof(*t->v))) == NULL)
        return oom();
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *k = &o->via.map.ptr[i].key, *v = &o->via.map.ptr[i].val;
        if (k->type != MSGPACK_OBJECT_STR || memchr(k->via.str.ptr, 0, k->via.str.size))
            return rp_err(RP_EINVAL, "traits: trait names must be strings");
        struct trait *tr = &t->v[t->n++];
        if ((tr->name = strndup(k->via.str.ptr, k->via.str.size)) == NULL)
            return oom();
        const msgpack_object *items = v;
        uint32_t n = 1;
        if (v->type == MSGPACK_OBJECT_ARRAY)
            items = v->via.array.ptr, n = v->via.array.size;
        else if (v->type == MSGPACK_OBJECT_NIL)
            n = 0;
        for (uint32_t j = 0; j < n; j++) {
            if (items[j].type != MSGPACK_OBJECT_STR ||
                memchr(items[j].via.str.ptr, 0, items[j].via.str.size) != NULL)
                return rp_err(RP_EINVAL, "traits.%s: expected a list of strings, found %s",
                              excerpt(tr->name, strlen(tr->name), ex, sizeof ex),
                              type_name(&items[j]));
            if (strv_pushn(&tr->vals, items[j].via.str.ptr, items[j].via.str.size) != 0)
                return oom();
        }
    }
    return 0;
}

/* Logins after expansion, with invalid ones dropped and duplicates removed. */
static int expand_logins(const struct strv *raw, const struct traits *t, struct strv *out)
{
    struct strv all = {0};
    int rv = 0;
    for (size_t i = 0; i < raw->n && rv == 0; i++)
        rv = expand(raw->v[i], t, &all);
    for (size_t i = 0; i < all.n && rv == 0; i++)
        if (valid_unix_login(all.v[i]) && !strv_has(out, all.v[i]))
            rv = strv_push(out, all.v[i]);
    strv_free(&all);
    return rv != 0 ? oom() : 0;
}

static int build_xsel(const struct rbac_role *role, const char *where, const struct lsel *in,
                      const struct traits *t, struct xsel *out)
{
    char why[200], ex[128];
    int rv = 0;
    if (in->n > 0 && (out->k = calloc(in->n, sizeof(*out->k))) == NULL)
        return oom();
    for (size_t i = 0; i < in->n; i++) {
        const struct lkey *lk = &in->k[i];
        if (strcmp(lk->key, "*") == 0) {
            out->all = true; /* validated: the value is '*' */
            continue;
        }
        struct xkey *xk = &out->k[out->n++];
        struct strv vals = {0};
        xk->key = lk->key;
        for (size_t j = 0; j < lk->vals.n && rv == 0; j++)
            rv = expand(lk->vals.v[j], t, &vals);
        if (rv == 0 && vals.n > 0 && (xk->m = calloc(vals.n, sizeof(*xk->m))) == NULL)
            rv = RP_ENOMEM;
        if (rv != 0) {
            strv_free(&vals);
            return oom();
        }
        for (size_t j = 0; j < vals.n; j++) {
            struct matcher *m = &xk->m[xk->n];
            const char *v = vals.v[j];
            if (strcmp(v, "*") == 0) {
                m->kind = M_ANY;
            } else if (is_regex_value(v)) {
                if (pred_re_compile(v, true, &m->re, why, sizeof why) != 0) {
                    struct rp_buf path;
                    rp_buf_init(&path);
                    rp_ymp_path_key(&path, lk->key, strlen(lk->key));
                    rv = rp_err(RP_EINVAL,
                                "role %s: spec.%s.node_labels%s%s: value '%s' (after applying "
                                "traits) is not a valid regular expression: %s",
                                role->name, where, rp_ymp_path_str(&path)[0] == '[' ? "" : ".",
                                rp_ymp_path_str(&path), excerpt(v, strlen(v), ex, sizeof ex), why);
                    rp_buf_free(&path);
                    strv_free(&vals);
                    return rv;
                }
                m->kind = M_REGEX;
            } else {
                m->kind = strchr(v, '*') != NULL ? M_GLOB : M_EXACT;
            }
            xk->n++;
            if ((m->s = strdup(v)) == NULL) {
                strv_free(&vals);
                return oom();
            }
        }
        strv_free(&vals);
    }
    return 0;
}

int rbac_set_new(struct rbac_role *const *roles, size_t n_roles, const msgpack_object *traits,
                 struct rbac_set **out)
{
    struct traits t;
    struct rbac_set *set;
    int rv;

    *out = NULL;
    if ((rv = traits_read(traits, &t)) != 0) {
        traits_free(&t);
        return rv;
    }
    if ((set = calloc(1, sizeof(*set))) == NULL ||
        (n_roles > 0 && (set->r = calloc(n_roles, sizeof(*set->r))) == NULL)) {
        free(set);
        traits_free(&t);
        return oom();
    }
    for (size_t i = 0; i < n_roles && rv == 0; i++) {
        struct xrole *x = &set->r[set->n++];
        x->role = roles[i];
        rv = expand_logins(&roles[i]->allow.logins, &t, &x->allow_logins);
        if (rv == 0)
            rv = expand_logins(&roles[i]->deny.logins, &t, &x->deny_logins);
        if (rv == 0)
            rv = build_xsel(roles[i], "allow", &roles[i]->allow.node_labels, &t, &x->allow_nodes);
        if (rv == 0)
            rv = build_xsel(roles[i], "deny", &roles[i]->deny.node_labels, &t, &x->deny_nodes);
    }
    set->traits = t; /* the set owns them now */
    if (rv != 0) {
        rbac_set_free(set);
        return rv;
    }
    *out = set;
    return 0;
}

/* ---- checks ------------------------------------------------------------------------------- */

static const char *label_get(const struct rbac_label *labels, size_t n, const char *key)
{
    for (size_t i = 0; i < n; i++)
        if (labels[i].name != NULL && strcmp(labels[i].name, key) == 0)
            return labels[i].value != NULL ? labels[i].value : "";
    return NULL;
}

static bool matcher_match(const struct matcher *m, const char *v)
{
    switch (m->kind) {
    case M_ANY:
        return true;
    case M_EXACT:
        return strcmp(m->s, v) == 0;
    case M_GLOB:
        return pred_glob_match(m->s, v);
    default:
        return regexec(&m->re, v, 0, NULL, 0) == 0;
    }
}

static bool key_match(const struct xkey *k, const char *v)
{
    for (size_t i = 0; i < k->n; i++)
        if (matcher_match(&k->m[i], v))
            return true;
    return false;
}

/* Allow: every key must match. An empty selector matches nothing. */
static bool sel_allows(const struct xsel *s, const struct rbac_label *labels, size_t n)
{
    if (s->all)
        return true;
    if (s->n == 0)
        return false;
    for (size_t i = 0; i < s->n; i++) {
        const char *v = label_get(labels, n, s->k[i].key);
        if (v == NULL || !key_match(&s->k[i], v))
            return false;
    }
    return true;
}

/* Deny: any key matching is enough. */
static bool sel_denies(const struct xsel *s, const struct rbac_label *labels, size_t n)
{
    if (s->all)
        return true;
    for (size_t i = 0; i < s->n; i++) {
        const char *v = label_get(labels, n, s->k[i].key);
        if (v != NULL && key_match(&s->k[i], v))
            return true;
    }
    return false;
}

static void fmt_labels(const struct rbac_label *labels, size_t n, char *out, size_t outlen)
{
    size_t o = 0;
    out[0] = '\0';
    if (n == 0) {
        snprintf(out, outlen, "(none)");
        return;
    }
    for (size_t i = 0; i < n && o + 1 < outlen; i++) {
        int w = snprintf(out + o, outlen - o, "%s%s=%s", i > 0 ? ", " : "",
                         labels[i].name != NULL ? labels[i].name : "",
                         labels[i].value != NULL ? labels[i].value : "");
        if (w < 0)
            break;
        o += (size_t)w;
    }
}

static int deny_why(char *why, size_t why_len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int deny_why(char *why, size_t why_len, const char *fmt, ...)
{
    if (why != NULL && why_len > 0) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, why_len, fmt, ap);
        va_end(ap);
    }
    return RP_EDENIED;
}

int rbac_set_ssh_refused(const struct rbac_set *set, char *why, size_t why_len)
{
    for (size_t i = 0; i < set->n; i++) {
        const char *field = NULL;
        if (rbac_role_unenforced(set->r[i].role, &field, 1) > 0)
            return deny_why(why, why_len,
                            "role '%s' sets %s, which restricts SSH access in a way Raftport "
                            "does not enforce yet, so SSH access is refused to its holders",
                            set->r[i].role->name, field);
    }
    return 0;
}

static const char *const *set_trait(const void *ctx, const char *name, size_t *n)
{
    const struct strv *v = traits_get(ctx, name);
    *n = v != NULL ? v->n : 0;
    return v != NULL ? (const char *const *)v->v : NULL;
}

/* @e evaluated for a node with @labels: 1, 0, or a negative error. */
static int node_expr_eval(const struct rbac_set *set, const struct pred_expr *e,
                          const struct rbac_label *labels, size_t n_labels)
{
    struct pred_env env = {
        .labels = labels, .n_labels = n_labels, .trait = set_trait, .ctx = &set->traits};
    return pred_eval(e, &env);
}

/* Does role @x's allow.node_labels and allow.node_labels_expression admit the node?
 * Both must when both are set; an empty selector without an expression admits none. */
static bool node_allowed(const struct rbac_set *set, const struct xrole *x,
                         const struct rbac_label *labels, size_t n_labels)
{
    const struct pred_expr *e = x->role->allow.node_pred;
    bool have_selector = x->allow_nodes.all || x->allow_nodes.n > 0;
    if (have_selector && !sel_allows(&x->allow_nodes, labels, n_labels))
        return false;
    if (e != NULL)
        return node_expr_eval(set, e, labels, n_labels) == 1; /* an error admits none */
    return have_selector;
}

int rbac_check_ssh(const struct rbac_set *set, const char *login, const struct rbac_label *labels,
                   size_t n_labels, char *why, size_t why_len)
{
    char lbl[256];
    if (login == NULL || login[0] == '\0')
        return rp_err(RP_EINVAL, "login: expected a non-empty login");
    fmt_labels(labels, n_labels, lbl, sizeof lbl);
    if (rbac_set_ssh_refused(set, why, why_len) != 0)
        return RP_EDENIED;

    for (size_t i = 0; i < set->n; i++) {
        const struct xrole *x = &set->r[i];
        const struct pred_expr *deny_expr = x->role->deny.node_pred;
        if (strv_has(&x->deny_logins, login))
            return deny_why(why, why_len, "role '%s' denies login '%s' (deny.logins)",
                            x->role->name, login);
        if (sel_denies(&x->deny_nodes, labels, n_labels))
            return deny_why(why, why_len,
                            "role '%s' denies access to nodes with labels %s (deny.node_labels)",
                            x->role->name, lbl);
        /* An expression that cannot be evaluated denies: deny fails closed. */
        if (deny_expr != NULL && node_expr_eval(set, deny_expr, labels, n_labels) != 0)
            return deny_why(why, why_len,
                            "role '%s' denies access to nodes with labels %s "
                            "(deny.node_labels_expression)",
                            x->role->name, lbl);
    }
    const struct rbac_role *partial = NULL;
    for (size_t i = 0; i < set->n; i++) {
        const struct xrole *x = &set->r[i];
        if (!strv_has(&x->allow_logins, login))
            continue;
        if (node_allowed(set, x, labels, n_labels))
            return 0;
        if (partial == NULL)
            partial = x->role;
    }
    if (partial != NULL)
        return deny_why(why, why_len,
                        "no role allows login '%s' on a node with labels %s (role '%s' allows "
                        "'%s' but its node_labels%s do not match)",
                        login, lbl, partial->name, login,
                        partial->allow.node_pred != NULL ? " and node_labels_expression" : "");
    return deny_why(why, why_len, "no role allows login '%s' on a node with labels %s", login, lbl);
}

static bool rule_matches(const struct rule *r, const char *resource, const char *verb)
{
    return (strv_has(&r->resources, resource) || strv_has(&r->resources, "*")) &&
           (strv_has(&r->verbs, verb) || strv_has(&r->verbs, "*"));
}

int rbac_check_rule(const struct rbac_set *set, const char *resource, const char *verb, char *why,
                    size_t why_len)
{
    if (resource == NULL || resource[0] == '\0' || verb == NULL || verb[0] == '\0')
        return rp_err(RP_EINVAL, "rule check: expected a resource kind and a verb");
    for (size_t i = 0; i < set->n; i++) {
        const struct rbac_role *role = set->r[i].role;
        for (size_t j = 0; j < role->deny.n_rules; j++)
            if (rule_matches(&role->deny.rules[j], resource, verb))
                return deny_why(why, why_len, "role '%s' denies %s on %s (deny.rules[%zu]%s)",
                                role->name, verb, resource, j,
                                role->deny.rules[j].where != NULL
                                    ? "; its where condition is not evaluated, so it always "
                                      "applies"
                                    : "");
    }
    const struct rbac_role *cond_role = NULL;
    size_t cond_rule = 0;
    for (size_t i = 0; i < set->n; i++) {
        const struct rbac_role *role = set->r[i].role;
        for (size_t j = 0; j < role->allow.n_rules; j++) {
            if (!rule_matches(&role->allow.rules[j], resource, verb))
                continue;
            if (role->allow.rules[j].where == NULL)
                return 0;
            if (cond_role == NULL)
                cond_role = role, cond_rule = j;
        }
    }
    if (cond_role != NULL)
        return deny_why(why, why_len,
                        "role '%s' allows %s on %s only where %s (allow.rules[%zu]); where "
                        "conditions are not evaluated here",
                        cond_role->name, verb, resource, cond_role->allow.rules[cond_rule].where,
                        cond_rule);
    return deny_why(why, why_len, "no role allows %s on %s", verb, resource);
}

int rbac_logins(const struct rbac_set *set, char ***out, size_t *n)
{
    struct strv res = {0};
    *out = NULL;
    *n = 0;
    /* A role that fails closed grants no logins: the certificate's holder may not log
     * in anywhere until Raftport enforces what the role asks. */
    if (rbac_set_ssh_refused(set, NULL, 0) != 0)
        return 0;
    for (size_t i = 0; i < set->n; i++) {
        const struct strv *allow = &set->r[i].allow_logins;
        for (size_t j = 0; j < allow->n; j++) {
            const char *l = allow->v[j];
            bool denied = false;
            for (size_t k = 0; k < set->n && !denied; k++)
                denied = strv_has(&set->r[k].deny_logins, l);
            if (!denied && !strv_has(&res, l) && strv_push(&res, l) != 0) {
                strv_free(&res);
                return oom();
            }
        }
    }
    *out = res.v;
    *n = res.n;
    return 0;
}

void rbac_logins_free(char **logins, size_t n)
{
    if (logins == NULL)
        return;
    for (size_t i = 0; i < n; i++)
        free(logins[i]);
    free(logins);
}

/* Port forwarding in direction @remote (false: local). The legacy port_forwarding
 * set to true in any role allows both directions (Teleport then ignores
 * ssh_port_forwarding). Otherwise a direction that any role's ssh_port_forwarding
 * disables is denied (the most restrictive wins), and it is allowed if some role
 * allows it: by ssh_port_forwarding, by the legacy option, or by default (a role that
 * sets neither allows both, as in Teleport). */
static bool forwarding_allowed(const struct rbac_set *set, bool remote)
{
    bool allowed = false;
    for (size_t i = 0; i < set->n; i++)
        if (set->r[i].role->opt.port_forwarding == 1)
            return true;
    for (size_t i = 0; i < set->n; i++) {
        const struct opts *o = &set->r[i].role->opt;
        int dir = remote ? o->pf_remote : o->pf_local;
        if (dir == 0)
            return false;
        allowed |= dir == 1 || (dir < 0 && o->port_forwarding != 0);
    }
    return allowed;
}

void rbac_options(const struct rbac_set *set, struct rbac_options *out)
{
    uint64_t ttl = 0, idle = 0;
    memset(out, 0, sizeof(*out));
    out->ssh_file_copy = true;
    out->record_ssh = RBAC_RECORD_BEST_EFFORT;
    out->lock = RBAC_LOCK_UNSET;
    out->require_session_mfa = RBAC_MFA_NO;
    for (size_t i = 0; i < set->n; i++) {
        const struct opts *o = &set->r[i].role->opt;
        if (o->ttl_set && (ttl == 0 || o->ttl_ns < ttl))
            ttl = o->ttl_ns;
        if (o->idle_ns > 0 && (idle == 0 || o->idle_ns < idle))
            idle = o->idle_ns;
        if (o->max_sessions > 0 && (out->max_sessions == 0 || o->max_sessions < out->max_sessions))
            out->max_sessions = o->max_sessions;
        if (o->max_connections > 0 &&
            (out->max_connections == 0 || o->max_connections < out->max_connections))
            out->max_connections = o->max_connections;
        out->forward_agent |= o->forward_agent;
        out->ssh_file_copy &= o->ssh_file_copy;
        out->disconnect_expired_cert |= o->disconnect > 0;
        out->permit_x11_forwarding |= o->x11 > 0;
        out->pin_source_ip |= o->pin > 0;
        out->record_desktop |= o->rec_desktop;
        out->record_ssh_input |= o->rec_input > 0;
        int ssh = o->rec_ssh >= 0 ? o->rec_ssh : o->rec_default;
        if (ssh == REC_STRICT)
            out->record_ssh = RBAC_RECORD_STRICT;
        if (o->lock == 1)
            out->lock = RBAC_LOCK_STRICT;
        else if (o->lock == 0 && out->lock == RBAC_LOCK_UNSET)
            out->lock = RBAC_LOCK_BEST_EFFORT;
        if (o->mfa > (int)out->require_session_mfa)
            out->require_session_mfa = (enum rbac_mfa)o->mfa;
        out->enhanced_recording |= o->enhanced;
    }
    out->port_forwarding = forwarding_allowed(set, false);
    out->remote_port_forwarding = forwarding_allowed(set, true);
    /* Milliseconds, rounded up so that a sub-millisecond limit does not become "none". */
    out->max_session_ttl_ms =
        ttl > 0 ? (ttl + NS_PER_MS - 1) / NS_PER_MS : RBAC_DEFAULT_SESSION_TTL_MS;
    out->client_idle_timeout_ms = (idle + NS_PER_MS - 1) / NS_PER_MS;
}

/* ---- presets ------------------------------------------------------------------------------ */

const char *const rbac_preset_names[] = {"access", "editor", "auditor", NULL};

static const char preset_access[] =
    "kind: role\n"
    "version: v7\n"
    "metadata:\n"
    "  name: access\n"
    "  description: Access cluster resources\n"
    "  labels:\n"
    "    teleport.internal/resource-type: preset\n"
    "spec:\n"
    "  options:\n"
    "    max_session_ttl: 30h\n"
    "    forward_agent: true\n"
    "    port_forwarding: true\n"
    "    enhanced_recording: [command, network]\n"
    "    record_session: {desktop: true}\n"
    "  allow:\n"
    "    namespaces: [default]\n"
    "    logins: ['{{internal.logins}}']\n"
    "    node_labels: {'*': '*'}\n"
    "    rules:\n"
    "    - resources: [event]\n"
    "      verbs: [list, read]\n"
    "    - resources: [session]\n"
    "      verbs: [read, list]\n"
    "      where: contains(session.participants, user.metadata.name)\n";

static const char preset_editor[] = "kind: role\n"
                                    "version: v7\n"
                                    "metadata:\n"
                                    "  name: editor\n"
                                    "  description: Edit cluster configuration\n"
                                    "  labels:\n"
                                    "    teleport.internal/resource-type: preset\n"
                                    "spec:\n"
                                    "  options:\n"
                                    "    max_session_ttl: 30h\n"
                                    "    forward_agent: true\n"
                                    "    port_forwarding: true\n"
                                    "    enhanced_recording: [command, network]\n"
                                    "    record_session: {desktop: false}\n"
                                    "  allow:\n"
                                    "    namespaces: [default]\n"
                                    "    rules:\n";

/* The editor's rules, one per resource kind, all with the five CRUD verbs. */
static const char *const editor_resources[] = {
    "user",
    "role",
    "oidc",
    "saml",
    "github",
    "auth_connector",
    "trusted_cluster",
    "remote_cluster",
    "token",
    "lock",
    "cluster_name",
    "cluster_auth_preference",
    "cluster_networking_config",
    "session_recording_config",
    "cluster_audit_config",
    NULL,
};

static const char preset_auditor[] = "kind: role\n"
                                     "version: v7\n"
                                     "metadata:\n"
                                     "  name: auditor\n"
                                     "  description: Review cluster events and replay sessions\n"
                                     "  labels:\n"
                                     "    teleport.internal/resource-type: preset\n"
                                     "spec:\n"
                                     "  options:\n"
                                     "    max_session_ttl: 30h\n"
                                     "    record_session: {desktop: false}\n"
                                     "  allow:\n"
                                     "    namespaces: [default]\n"
                                     "    logins: ['no-login-%s']\n"
                                     "    rules:\n"
                                     "    - resources: [session]\n"
                                     "      verbs: [list, read]\n"
                                     "    - resources: [event]\n"
                                     "      verbs: [list, read]\n"
                                     "    - resources: [session_tracker]\n"
                                     "      verbs: [list, read]\n";

int rbac_preset_pack(const char *name, struct rp_buf *out)
{
    struct rp_buf text;
    struct rbac_role *role = NULL;
    int rv = 0;

    rp_buf_init(&text);
    if (strcmp(name, "access") == 0) {
        rv = rp_buf_append_str(&text, preset_access);
    } else if (strcmp(name, "editor") == 0) {
        rv = rp_buf_append_str(&text, preset_editor);
        for (int i = 0; editor_resources[i] != NULL && rv == 0; i++)
            rv = rp_buf_printf(&text,
                               "    - resources: [%s]\n"
                               "      verbs: [list, create, read, update, delete]\n",
                               editor_resources[i]);
    } else if (strcmp(name, "auditor") == 0) {
        /* A login no account has: an SSH certificate without principals would be valid
         * for every account, so the auditor gets one that matches none. */
        char hex[33], uuid[40];
        if ((rv = rp_random_hex(hex, 16)) != 0)
            return rv;
        snprintf(uuid, sizeof uuid, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16,
                 hex + 20);
        rv = rp_buf_printf(&text, preset_auditor, uuid);
    } else {
        return rp_err(RP_ENOTFOUND, "no preset role '%s' (presets: access, editor, auditor)", name);
    }
    if (rv != 0) {
        rp_buf_free(&text);
        return oom();
    }
    rv = rbac_role_parse_yaml(name, (const char *)text.data, text.len, &role);
    if (rv == 0)
        rv = rbac_role_pack(role, out);
    rbac_role_free(role);
    rp_buf_free(&text);
    return rv;
}
