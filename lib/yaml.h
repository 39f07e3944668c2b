/* lib/yaml.h: YAML documents as a tree that remembers where each node was.
 *
 * Built on libyaml's event parser. Every node keeps its 1-based line and column so
 * that callers can say "FILE:LINE: what is wrong, what was expected". Anchors and
 * aliases are refused; duplicate keys in one map are refused; depth is limited. */
#ifndef RP_YAML_H
#define RP_YAML_H

#include <stdbool.h>
#include <stddef.h>

enum rp_ynode_type { RP_Y_SCALAR, RP_Y_MAP, RP_Y_SEQ };

struct rp_ynode {
    enum rp_ynode_type type;
    int line, col;
    /* scalar */
    char *value; /* NUL-terminated; never NULL for a scalar */
    bool quoted; /* written in quotes, as a block scalar (| or >) or tagged !!str:
                  * a string, never null/bool/number-like */
    /* map: keys[i] -> vals[i]; seq: vals[i] (keys NULL) */
    char **keys;
    int *key_lines;
    struct rp_ynode **vals;
    size_t n;
};

/* Limits: inputs larger than RP_YAML_MAX_BYTES and collections nested deeper than
 * RP_YAML_MAX_DEPTH are refused. Scalars containing NUL and tags other than !!str
 * are refused too. */
#define RP_YAML_MAX_BYTES (4u << 20)
#define RP_YAML_MAX_DEPTH 64

/* Parses the one document of @path / of @n bytes at @s (@name is used in messages);
 * a stream with a second document is refused, so nothing in the input is ignored.
 * On error returns RP_EINVAL (RP_EIO if the file cannot be read, RP_ENOMEM) and
 * rp_errmsg() is "NAME:LINE: problem" ("NAME:LINE:COL: problem context" for syntax
 * errors found by libyaml). An empty document yields an empty map, as does a root
 * that is null ("~", "null"). The caller owns *@out: rp_ynode_free() it. */
int rp_yaml_parse_file(const char *path, struct rp_ynode **out);
int rp_yaml_parse_str(const char *name, const char *s, size_t n, struct rp_ynode **out);
/* Parses every document of a multi-document stream ("---" separated). Empty documents
 * are kept as empty maps (callers may skip them); a stream with no document at all
 * gives *@n_docs == 0 and *@docs == NULL. The caller owns *@docs and each document:
 * rp_yaml_docs_free() them. Nothing is returned on error. */
int rp_yaml_parse_all(const char *name, const char *s, size_t n, struct rp_ynode ***docs,
                      size_t *n_docs);
void rp_ynode_free(struct rp_ynode *node); /* NULL is fine */
void rp_yaml_docs_free(struct rp_ynode **docs, size_t n_docs);

/* Map lookup (linear); NULL if @map is not a map or has no @key. */
const struct rp_ynode *rp_ynode_get(const struct rp_ynode *map, const char *key);
/* A scalar that reads as YAML null ("", "~", "null" unquoted). */
bool rp_ynode_is_null(const struct rp_ynode *node);

/* Copies @s into @out for quoting in an error message: at most 100 bytes of it,
 * control and non-ASCII bytes as \xNN, "..." appended when cut. @outlen >= 4. */
void rp_yaml_excerpt(const char *s, char *out, size_t outlen);

#endif
