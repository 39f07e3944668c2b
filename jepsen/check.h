/* jepsen/check.h: the checkers that judge a history (jepsen/history.h).
 *
 * Each checker reads a parsed history, sets a verdict and appends one JSON
 * object, its report, to @report:
 *
 *   {"valid": true|false|"unknown", "model": "...", ..., "warnings": [str, ...]}
 *
 * A checker returns 0 once it has judged, whatever the verdict; it returns a
 * negative RP_E* code only when the history does not fit the model (RP_EINVAL,
 * message "line N: ...") or memory runs out (RP_ENOMEM). @report then holds
 * nothing useful. Nemesis ops are skipped by every checker.
 *
 * Models and the ops they read (everything else in the history is ignored):
 *
 * register   f "read" | "write" | "cas" on "key" (any JSON, compared by value).
 *            write: invoke value = the value written. read: invoke value null,
 *            ok completion value = the value read (null = empty; every register
 *            starts empty). cas: invoke value = [expected, new]; ok means it
 *            happened and expected matched, fail means it did not happen.
 *            Linearizability per key (Wing-Gong search with Lowe's memo).
 * set        f "add" with value = the element (each element added at most
 *            once), f "read" with ok value = array of the elements present.
 *            One set per history (a "key", if given, must be the same on all).
 * watch      f "watch" and the final f "read": see jepsen/history.h.
 * unique     f "consume" with key = the item (a conditional delete: ok = this
 *            process consumed it, fail = it did not). Optional: f "create" with
 *            key = the item, and a final f "read" whose ok value is the array of
 *            items still present. */
#ifndef JEPSEN_CHECK_H
#define JEPSEN_CHECK_H

#include <stddef.h>
#include <stdint.h>

#include "jepsen/history.h"
#include "lib/buf.h"

enum jepsen_verdict {
    JEPSEN_VALID = 0,   /* exit status 0 of jepsen-check */
    JEPSEN_INVALID = 1, /* 1 */
    JEPSEN_UNKNOWN = 2, /* 2: out of time or memory, or not enough in the history */
};

/* "true", "false" or "\"unknown\"": the JSON of @v for the "valid" field. */
const char *jepsen_verdict_json(enum jepsen_verdict v);

#define JEPSEN_DEFAULT_TIME_LIMIT_S 60.0
#define JEPSEN_DEFAULT_MEMORY_LIMIT ((size_t)2 << 30) /* 2 GiB */

struct jepsen_check_opts {
    double time_limit_s; /* for the whole check; <= 0: JEPSEN_DEFAULT_TIME_LIMIT_S */
    size_t memory_limit; /* bytes one key's search may hold; 0: JEPSEN_DEFAULT_MEMORY_LIMIT */
};

/* Linearizability of a compare-and-swap register per key.
 *
 * Keys are independent (a history is linearizable iff each key's is), so each
 * is searched alone: the Wing-Gong/Lowe search with just-in-time linearization
 * (only ops invoked before the earliest pending completion are candidates), a
 * memo of visited (linearized set, value) configurations, info ops kept open
 * to the end, and reads linearized greedily. A key whose search runs out of
 * time or memory is "unknown"; the verdict is false if any key is invalid,
 * else unknown if any key is unknown, else true.
 *
 * The time is shared in two rounds: first every key gets an equal part of half
 * the limit, then the keys left unknown share what remains (skipped once a key
 * is invalid). @opts may be NULL for the defaults.
 *
 * Report: {"valid", "model":"register", "key_count", "op_count", "ok_count",
 * "keys_invalid", "keys_unknown", "time_s", "anomaly": {...} (first invalid
 * key), "keys": [{"key", "valid", "ops", "ok", "fail", "info", "info_pruned",
 * "configs", "time_s", "reason"?, "anomaly"?}], "warnings"}. Per key, "info"
 * counts info and unfinished ops, "info_pruned" those of them dropped before
 * the search (reads, and writes or cas whose value no op observed), "configs"
 * the configurations the search memoized, "reason" why a key is unknown
 * ("time limit" or "memory limit"). time_s excludes reading the file. An anomaly names
 * the key, "op" (the op whose completion the search could not get past, at the
 * deepest point it reached), "state" (the register there), "previous" (the
 * last op linearized there, null if none), "pending" (the ops it could have linearized next)
 * and "linearized" (how many ok ops it had placed). Ops are given as
 * {"process", "f", "value", "type", "invoke_index", "complete_index"}. */
int jepsen_check_register(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                          enum jepsen_verdict *verdict, struct rp_buf *report);

/* Set: lost = acknowledged adds (ok, or seen by an ok read) missing from a
 * final read invoked after they were acknowledged; unexpected = elements read
 * that were never added or whose add failed; recovered = info adds present in
 * a final read. A final read is an ok read invoked after every add was invoked
 * and after every add that completed had completed. Valid iff a final read
 * exists and nothing is lost or unexpected; with no final read: unknown.
 *
 * Report: {"valid", "model":"set", "attempt_count", "ok_count", "fail_count",
 * "info_count", "read_count", "final_read_count", "lost_count", "lost",
 * "unexpected_count", "unexpected", "recovered_count", "recovered",
 * "warnings"}; lists hold at most 100 elements each. */
int jepsen_check_set(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                     enum jepsen_verdict *verdict, struct rp_buf *report);

/* Watch: for every watcher (see jepsen/history.h): revisions never go down
 * ("reordered"), no event is delivered twice ("duplicated"); watchers agree on
 * the events of every revision they both saw ("divergent"); each watcher saw
 * every revision any watcher saw between its start and its last event, and up
 * to the final read's revision if it was still following at the end ("gaps");
 * a watcher's initial snapshot matches what an older watcher had reconstructed
 * at that revision ("snapshot_mismatch"); and the state a still-following
 * watcher reconstructs at the final read's revision equals the final read
 * ("final_mismatch"). Valid iff none of these; unknown without a final read or
 * without watchers.
 *
 * Report: {"valid", "model":"watch", "watcher_count", "following_count",
 * "event_count", "revision_count", "final_revision", and for each anomaly kind
 * "<kind>_count" and "<kind>" (at most 100 listed), "warnings"}. */
int jepsen_check_watch(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                       enum jepsen_verdict *verdict, struct rp_buf *report);

/* Unique: no item is consumed (ok) twice ("duplicated"). Info (or unfinished)
 * consumptions may have happened: items with one ok and some info, or several
 * info, are listed as "possible_duplicates" (a warning, not an anomaly). With
 * creates in the history, an ok consume of an item never created is
 * "unexpected". With a final read (the last ok read): an item consumed (ok)
 * before the read was invoked but present in it is "resurrected"; an item
 * created (ok) before the read, absent from it and never consumed (ok, info or
 * unfinished) is "vanished". Valid iff no duplicated, unexpected, resurrected
 * or vanished items.
 *
 * Report: {"valid", "model":"unique", "item_count", "attempt_count",
 * "ok_count", "fail_count", "info_count", "final_read": bool, and for each
 * kind "<kind>_count" and "<kind>" (at most 100 listed), "warnings"}. */
int jepsen_check_unique(const struct jepsen_history *h, const struct jepsen_check_opts *opts,
                        enum jepsen_verdict *verdict, struct rp_buf *report);

/* ---- Synthetic register histories (tests, harness self-checks) ------- */

struct jepsen_gen_opts {
    uint64_t seed;
    unsigned keys;        /* independent registers, keys 0..keys-1 */
    unsigned processes;   /* concurrent clients per key */
    unsigned ops_per_key; /* invocations per key */
    double info_rate;     /* share of ops that end "info" (0..1) */
    double fail_rate;     /* share of ops that end "fail" without effect (0..1) */
    double late_rate;     /* share of info writes/cas that take effect long after */
    int mutate;           /* 0: linearizable; 1: one ok read gets a stale value */
};

/* Simulates a linearizable register per key under concurrency and appends the
 * history as JSON lines to @out: each op takes effect at one instant between
 * its invoke and completion; info ops took effect before completing, or take
 * effect later, or never; cas compares against the simulated value. Written
 * values are unique per key. With @mutate, one ok read (about the middle of
 * the history) is given a value that had been overwritten before the read
 * was invoked (or null when no such value exists): no longer linearizable.
 * *@mutated_index (may be NULL) gets the index of the changed completion, -1
 * when nothing was changed. RP_ENOMEM, RP_EINVAL for bad options. */
int jepsen_gen_register(const struct jepsen_gen_opts *opts, struct rp_buf *out,
                        int64_t *mutated_index);

#endif
