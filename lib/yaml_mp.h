/* lib/yaml_mp.h: YAML trees as msgpack and msgpack as YAML text, keeping line numbers.
 *
 * Resources are validated as msgpack (the form they are stored and sent in), but
 * people write them as YAML. rp_ymp_from_yaml() converts a tree of lib/yaml.h into
 * one msgpack object and records, for every node, its field path and line:
 *
 *   spec.allow.node_labels.env     the value of key "env" in spec -> allow -> node_labels
 *   spec.allow.logins[1]           the second item of that list
 *   metadata.labels["a.b/c"]       a key that holds '.', '[', ']', '"', '\', space,
 *                                  a control byte, or is empty, is written in brackets
 *
 * A validator that walks the msgpack builds the same paths (rp_ymp_path_key/_index)
 * and reports "PATH: what is wrong, what was expected"; rp_ymp_locate() then turns
 * that message into "FILE:LINE: PATH: ...".
 *
 * Scalars are typed like YAML 1.2's core schema: unquoted null/Null/NULL/~/empty ->
 * nil, true/false (also True/TRUE/False/FALSE) -> bool, [-+]?[0-9]+, 0o[0-7]+,
 * 0x[0-9a-fA-F]+ -> int (float if out of the 64-bit range), other core-schema numbers
 * (1.5, 1e3, .inf, .nan) -> float64. Quoted, block (| >) and !!str scalars are strings
 * always; map keys are strings always.
 *
 * rp_ymp_to_yaml() writes block-style YAML: keys in stored order, lists under a key at
 * the key's indentation (as `tctl get` prints them), strings in double quotes whenever
 * they would otherwise read as another type (under YAML 1.2 or 1.1: "yes", "012",
 * "1.0", "null", "*") or hold characters with a meaning in YAML. Feeding that text
 * back through lib/yaml and rp_ymp_from_yaml() gives the same msgpack bytes. */
#ifndef RP_YAML_MP_H
#define RP_YAML_MP_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#include "lib/buf.h"
#include "lib/yaml.h"

/* Path -> line table of one converted document. */
struct rp_ymp_line {
    char *path; /* owned */
    int line;   /* 1-based */
};

struct rp_ymp_lines {
    char *name; /* the document's name for messages (a file name); owned */
    struct rp_ymp_line *v;
    size_t n, cap;
};

void rp_ymp_lines_init(struct rp_ymp_lines *l);
/* Frees what @l holds and leaves it initialised (empty). */
void rp_ymp_lines_free(struct rp_ymp_lines *l);

/* Appends @root as one msgpack object to @out. If @lines is not NULL, it must be
 * initialised; it is emptied and then receives @name and one entry per node (the root
 * is the path ""; a map entry has the line of its key). Returns 0, RP_ENOMEM, or
 * RP_EINVAL if a node is of an unknown type. On error @out is back at its old length
 * and @lines is empty. */
int rp_ymp_from_yaml(const struct rp_ynode *root, const char *name, struct rp_buf *out,
                     struct rp_ymp_lines *lines);

/* Parses the YAML document @s (@n bytes, one document, @name used in messages) and
 * converts it as above. Errors are lib/yaml's ("NAME:LINE: problem"). */
int rp_ymp_parse_str(const char *name, const char *s, size_t n, struct rp_buf *out,
                     struct rp_ymp_lines *lines);

/* Line of @path: its own entry if recorded, else the entry of its nearest recorded
 * ancestor ("spec.allow.logins[7]" -> "spec.allow.logins" -> "spec.allow" -> ...), so
 * that a missing field is reported at the map that should hold it. 0 if @l is empty. */
int rp_ymp_line(const struct rp_ymp_lines *l, const char *path);

/* Sets this thread's message to "NAME:LINE: PATH: <fmt...>" (just "PATH: ..." when @l
 * is NULL) and returns @code. */
int rp_ymp_err(const struct rp_ymp_lines *l, int code, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Prefixes this thread's current message, which a validator set as "PATH: rest", with
 * "NAME:LINE: ", the line being rp_ymp_line(PATH). A message whose beginning is not a
 * path gets the line of the document's root. Does nothing if @l is NULL. Returns @code,
 * so that `return rp_ymp_locate(&lines, rv);` reads well. */
int rp_ymp_locate(const struct rp_ymp_lines *l, int code);

/* Field paths. @path holds a NUL-terminated path (its len excludes the NUL; an empty
 * buffer is the root). Each push returns the previous length, for rp_ymp_path_pop.
 * On allocation failure the path is left unchanged and (size_t)-1 is returned; the
 * string read with rp_ymp_path_str() stays valid either way. */
size_t rp_ymp_path_key(struct rp_buf *path, const char *key, size_t n);
size_t rp_ymp_path_index(struct rp_buf *path, size_t i);
void rp_ymp_path_pop(struct rp_buf *path, size_t len);
const char *rp_ymp_path_str(const struct rp_buf *path); /* "" for the root */

/* True if the string @s (@n bytes) has a YAML form: valid UTF-8 without NUL bytes.
 * Validators of resources that are printed as YAML refuse other strings up front. */
bool rp_ymp_str_ok(const char *s, size_t n);

/* Appends @o as a block-style YAML document (ending in a newline, no "---") to @out.
 * Refuses (RP_EINVAL, message naming the path) binary and extension values, strings
 * that are not valid UTF-8 or hold NUL, map keys longer than 1000 bytes as written
 * (libyaml's limit for implicit keys), and nesting deeper than RP_YAML_MAX_DEPTH.
 * Non-string map keys are written as their scalar text (they read back as strings).
 * On error @out is back at its old length. */
int rp_ymp_to_yaml(struct rp_buf *out, const msgpack_object *o);

#endif
