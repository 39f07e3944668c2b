/* auth/predicate.h: Teleport's label expression language, and the regular
 * expressions every role field shares.
 *
 * A role's node_labels_expression (and its app_, db_, kubernetes_, ...
 * _labels_expression siblings) is a small boolean language over the labels of the
 * resource being reached and the traits of the user reaching it
 * (../shared/reference/teleport-facts.md 3.2, and Teleport's "Label expressions"
 * reference). It is parsed once, when the role is parsed, into an immutable tree
 * that any number of threads may evaluate at once.
 *
 *   expr     := and ('||' and)*
 *   and      := unary ('&&' unary)*
 *   unary    := '!' unary | compare
 *   compare  := primary (('==' | '!=') primary)?
 *   primary  := '(' expr ')' | STRING | 'true' | 'false' | variable | call
 *   variable := labels '[' STRING ']' | labels '.' NAME
 *             | TRAITS '[' STRING ']' | TRAITS '.' NAME
 *   TRAITS   := user.spec.traits | external | internal   (the same traits, as in
 *               role templates)
 *   call     := FUNCTION '(' expr (',' expr)* ')'
 *
 * STRING is "..." or '...' (escapes of the quote, \\, \n and \t; any other backslash
 * stays as written, so a regular expression needs no doubled backslashes) or `...`
 * (raw). Spaces, tabs and
 * newlines between tokens are ignored (YAML's `|` blocks span lines).
 *
 * Values are booleans, strings and lists of strings:
 *   labels["k"]                  string: the label's value, "" when the resource lacks it
 *   user.spec.traits["k"]        list: the trait's values, empty when the user lacks it
 *   contains(list, s)            bool: an item of list equals s
 *   contains_any(list, items)    bool: an item of list equals an item of items
 *   contains_all(list, items)    bool: every item of items is in list (false if none)
 *   regexp.match(list, "re")     bool: an item of list matches re, unanchored as in
 *                                RE2 (anchor it with ^ and $)
 *   regexp.replace(list, "re", "repl")  list: the items re matches, each match
 *                                replaced by repl ($1, ${1}); the others dropped
 *   email.local(list)            list: the local part of each item that is an address
 *   strings.upper(list), strings.lower(list)
 *   labels_matching("pattern")   list: the values of the labels whose name matches
 *                                pattern as a whole: a regular expression when
 *                                written ^...$, else a glob whose '*' matches anything
 *   a == b, a != b               strings
 *   !a, a && b, a || b           booleans
 * Where a list is expected a string is a list of one. Types are checked at parse
 * time and the whole expression must be a boolean. Patterns (the second argument
 * of regexp.match and regexp.replace, the argument of labels_matching) must be
 * string literals, so that each is compiled and checked once.
 *
 * Limits, so that a role cannot make parsing or evaluation unbounded: 4096 bytes of
 * source, 256 nodes, nesting 32 deep, 1024 bytes per string literal; patterns as
 * pred_re_compile allows; evaluation refuses to build more than 1 MiB of
 * intermediate strings.
 *
 * Regular expressions are RE2's syntax as far as POSIX extended expressions (glibc)
 * can carry it: \d \D \s \S \w \W \b \B \n \t \r \f \v, and \d \s \w inside [...],
 * are translated; (?flags), (?:...), lazy quantifiers, backreferences and other
 * escapes (\pL, \A, \z, \Q) are refused. A pattern is at most 1024 bytes and its
 * counted repetitions ({n}, {n,m}) add up to at most 1000, which keeps regcomp's
 * expansion small; without backreferences glibc's matcher does not backtrack
 * exponentially. */
#ifndef RP_AUTH_PREDICATE_H
#define RP_AUTH_PREDICATE_H

#include <regex.h>
#include <stdbool.h>
#include <stddef.h>

#include "auth/rbac.h"
#include "lib/buf.h"

#define PRED_MAX_SOURCE 4096
#define PRED_MAX_NODES 256
#define PRED_MAX_DEPTH 32
#define PRED_MAX_LITERAL 1024
#define PRED_MAX_PATTERN 1024
#define PRED_MAX_REPEAT 1000

/* A parsed expression. Immutable: may be evaluated by several threads at once. */
struct pred_expr;

/* What an expression reads: the resource's labels (a name given twice: the first
 * counts) and the user's traits, looked up by @trait (NULL: the user has none). */
struct pred_env {
    const struct rbac_label *labels;
    size_t n_labels;
    /* Returns the values of trait @name and their count in *@n, or NULL and 0. The
     * strings are borrowed for the evaluation. */
    const char *const *(*trait)(const void *ctx, const char *name, size_t *n);
    const void *ctx;
};

/* Parses @src (NUL-terminated). On success *@out is the caller's (pred_free it).
 * RP_EINVAL with rp_errmsg() = "line L, column C: what is wrong, what was expected"
 * (positions in @src, 1-based); RP_ENOMEM. */
int pred_parse(const char *src, struct pred_expr **out);
void pred_free(struct pred_expr *e); /* NULL is fine */

/* Evaluates @e under @env: 1 (true), 0 (false), or RP_ENOMEM / RP_ETOOBIG (more
 * intermediate data than the limit) with rp_errmsg() set. A caller deciding access
 * treats an error as "no" in allow and as "yes" in deny. */
int pred_eval(const struct pred_expr *e, const struct pred_env *env);

/* Compiles the RE2-style @pattern into @re (regfree it), REG_EXTENDED, plus
 * REG_NOSUB when @nosub. On error returns -1 with the reason in @err. */
int pred_re_compile(const char *pattern, bool nosub, regex_t *re, char *err, size_t errlen);

/* Go's Regexp.ReplaceAllString: appends @in with every match of @re replaced by
 * @repl ($1, ${1}, $$; other names expand to nothing) to @out, NUL-terminated.
 * Returns 0 or RP_ENOMEM. */
int pred_regexp_replace(const regex_t *re, const char *in, const char *repl, struct rp_buf *out);

/* Glob with '*' as its only special character, matched against all of @s. */
bool pred_glob_match(const char *pat, const char *s);

#endif
