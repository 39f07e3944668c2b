/* jepsen/history.h: histories as JSON lines, read strictly, and the small
 * JSON tree and hash map the checkers share.
 *
 * ---- The history format ------------------------------------------------
 *
 * One JSON object per line (blank lines are skipped), in the order the harness
 * recorded them:
 *
 *   {"index": int, "time": int, "type": "invoke"|"ok"|"fail"|"info",
 *    "process": int >= 0 | "nemesis", "f": str,
 *    "key": any, "value": any, "error": any}
 *
 * - index (required) strictly increases from line to line.
 * - time (required) is nanoseconds since the start of the run. It is for
 *   reports only: the ORDER OF THE LINES is the real-time order the checkers
 *   use. The harness writes an invoke line before it sends the request and the
 *   completion line after it has the answer.
 * - process (required): the client that issued the op, or "nemesis" for fault
 *   injection (the checkers skip nemesis lines; they are not paired).
 * - type: an "invoke" is paired with the next completion of the same process.
 *   "ok" = the op happened exactly once between invoke and completion; "fail"
 *   = it definitely did not happen; "info" = it may or may not have happened,
 *   at any time after its invoke (its completion time is taken as +infinity).
 *   An invoke with no completion by the end of the history counts as "info".
 *   A process that got "info" should continue under a new id; if it invokes
 *   again anyway, its earlier op stays open to the end and the reader counts
 *   the reuse (jepsen_history.reused_after_info) so reports can warn.
 * - f (required): the operation, a string; key, value, error are optional and
 *   any JSON. A completion's f must equal its invoke's.
 *
 * Refused with RP_EINVAL and a message "line N: ..." (column too when the
 * JSON itself is wrong): lines over JEPSEN_MAX_LINE bytes, nesting deeper than
 * JEPSEN_MAX_DEPTH, integers outside int64, floats that overflow a double,
 * invalid UTF-8, lone surrogates, "\u0000", duplicate member names, trailing
 * bytes, a completion without an open invoke, an invoke while the process
 * already has one open.
 *
 * What f, key and value mean is up to each model; see jepsen/check.h.
 *
 * ---- Watch ops (model "watch") -----------------------------------------
 *
 * A watcher is a process that repeatedly invokes f "watch"; each completion's
 * value is the array of events it received since its previous completion (the
 * events count whatever the completion type; an "info" or "fail" completion
 * ends the watcher, and it continues as a new process):
 *
 *   {"type":"invoke","process":7,"f":"watch","value":null, ...}
 *   {"type":"ok","process":7,"f":"watch","value":[EVENT, ...], ...}
 *
 *   EVENT = {"revision": int, "op": "init"|"init_done"|"put"|"delete",
 *            "kind": str, "name": str}       (kind, name absent for init_done)
 *
 * A watcher's events start with its initial snapshot, as the store's watch API
 * delivers it: zero or more "init" events (one per existing resource, revision
 * = that resource's revision), then one "init_done" (revision = the point from
 * which the watcher sees every change). Then "put" and "delete" events, each at
 * the revision that made it. A new "init" after "init_done" starts a new
 * watcher (a resumed stream) under the same process.
 *
 * The final state is one ok read after healing:
 *
 *   {"type":"ok","process":3,"f":"read","value":
 *     {"revision": int, "resources": [{"kind": str, "name": str, "revision": int}, ...]}}
 *
 * Other ops (the writes that cause the events) may be present and are ignored
 * by the watch checker. */
#ifndef JEPSEN_HISTORY_H
#define JEPSEN_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define JEPSEN_MAX_LINE (1024 * 1024) /* bytes per line, newline excluded */
#define JEPSEN_MAX_DEPTH 32           /* nesting of arrays and objects */
#define JEPSEN_NONE SIZE_MAX          /* "no such op" in jepsen_op.peer */

/* ---- Arena: memory freed all at once --------------------------------- */

struct jepsen_arena_chunk;
struct jepsen_arena {
    struct jepsen_arena_chunk *head; /* owned chain of chunks */
    size_t bytes;                    /* total allocated, for reports */
};

void jepsen_arena_init(struct jepsen_arena *a);
/* Returns @n bytes aligned to 8, or NULL when out of memory. */
void *jepsen_arena_alloc(struct jepsen_arena *a, size_t n);
void jepsen_arena_free(struct jepsen_arena *a);

/* ---- JSON values ------------------------------------------------------ */

enum jepsen_json_type {
    JEPSEN_JSON_NULL,
    JEPSEN_JSON_FALSE,
    JEPSEN_JSON_TRUE,
    JEPSEN_JSON_INT,    /* an integer literal (no fraction, no exponent) */
    JEPSEN_JSON_FLOAT,  /* any other number */
    JEPSEN_JSON_STRING, /* valid UTF-8 without NUL, NUL-terminated for convenience */
    JEPSEN_JSON_ARRAY,
    JEPSEN_JSON_OBJECT,
};

struct jepsen_json_member;

struct jepsen_json {
    enum jepsen_json_type type;
    size_t len; /* bytes of a string, items of an array, members of an object */
    union {
        int64_t i;
        double d;
        const char *s;
        const struct jepsen_json *items;
        const struct jepsen_json_member *members; /* in input order */
    } u;
};

struct jepsen_json_member {
    const char *name; /* NUL-terminated */
    size_t name_len;
    struct jepsen_json value;
};

/* Parses one JSON document of @len bytes at @text (leading and trailing
 * whitespace allowed, nothing else). Every part of *@out lives in @arena.
 * RP_EINVAL with a message "column C: ..." (1-based byte column), RP_ENOMEM. */
int jepsen_json_parse(const char *text, size_t len, struct jepsen_arena *arena,
                      struct jepsen_json *out);

/* The member @name of object @obj, or NULL (also when @obj is not an object). */
const struct jepsen_json *jepsen_json_get(const struct jepsen_json *obj, const char *name);
/* True when @v is the string @s. */
bool jepsen_json_is_str(const struct jepsen_json *v, const char *s);
/* Appends @v to @out as canonical JSON: no spaces, object members sorted by
 * name, floats as %.17g. Two values are equal iff their canonical forms are. */
int jepsen_json_canonical(const struct jepsen_json *v, struct rp_buf *out);
bool jepsen_json_equal(const struct jepsen_json *a, const struct jepsen_json *b);

/* ---- Histories ------------------------------------------------------- */

enum jepsen_op_type {
    JEPSEN_INVOKE,
    JEPSEN_OK,
    JEPSEN_FAIL,
    JEPSEN_INFO,
};

struct jepsen_op {
    size_t line;   /* 1-based line of the file */
    int64_t index; /* the "index" field */
    int64_t time;  /* the "time" field, ns */
    enum jepsen_op_type type;
    bool nemesis;    /* process was "nemesis"; then process is -1 and peer JEPSEN_NONE */
    int64_t process; /* >= 0 for clients */
    const char *f;   /* NUL-terminated */
    /* The optional fields, NULL when absent (a JSON null is a jepsen_json of type NULL). */
    const struct jepsen_json *key;
    const struct jepsen_json *value;
    const struct jepsen_json *error;
    const struct jepsen_json *obj; /* the whole line, for model-specific fields */
    /* Invoke: position in jepsen_history.ops of its completion, JEPSEN_NONE when the
     * history ends first. Completion: position of its invoke. */
    size_t peer;
};

struct jepsen_history {
    struct jepsen_op *ops; /* owned; in line order */
    size_t n_ops;
    size_t reused_after_info;  /* invokes by a process whose previous op ended in info */
    size_t first_reuse_line;   /* line of the first such invoke, 0 if none */
    struct jepsen_arena arena; /* owns every string and value of ops */
};

/* Reads the history in file @path. The caller frees *@out with jepsen_history_free.
 * RP_EINVAL ("PATH: line N: ..."), RP_EIO, RP_ENOMEM; *@out is untouched on error. */
int jepsen_history_read_file(const char *path, struct jepsen_history **out);
/* Same from @len bytes at @text (tests, pipes); messages start with "line N". */
int jepsen_history_parse(const char *text, size_t len, struct jepsen_history **out);
void jepsen_history_free(struct jepsen_history *h);

/* The completion of the op invoked at ops[@i], NULL when it never completed.
 * @i must be an invoke of a client. */
const struct jepsen_op *jepsen_history_completion(const struct jepsen_history *h, size_t i);

/* Appends a JSON description of ops[@i] for reports: {"index", "line", "process",
 * "type", "f", "key"?, "value"?}. */
int jepsen_op_json(const struct jepsen_history *h, size_t i, struct rp_buf *out);

/* ---- Byte-string hash map -------------------------------------------- */

/* Maps byte strings (copied in) to size_t values. Used to intern keys, values,
 * elements and processes. */
struct jepsen_map_slot;
struct jepsen_map {
    struct jepsen_map_slot *slots; /* owned */
    size_t cap;                    /* power of two, 0 while empty */
    size_t n;
    struct jepsen_arena keys; /* owns the copies of the keys */
};

void jepsen_map_init(struct jepsen_map *m);
void jepsen_map_free(struct jepsen_map *m);
/* The value of @key, or NULL when absent. The pointer stays valid until the next put. */
size_t *jepsen_map_find(const struct jepsen_map *m, const void *key, size_t len);
/* Inserts @key with value @v unless present; *@slot points at the stored value
 * (old or new), *@added tells which. RP_ENOMEM. */
int jepsen_map_put(struct jepsen_map *m, const void *key, size_t len, size_t v, size_t **slot,
                   bool *added);

/* 64-bit hash of @len bytes (FNV-1a followed by a finalizer). */
uint64_t jepsen_hash_bytes(const void *p, size_t len);
/* Bijective 64-bit mixer (splitmix64 finalizer). */
uint64_t jepsen_mix64(uint64_t x);

#endif
