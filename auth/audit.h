/* auth/audit.h: the audit log of the auth service.
 *
 * Every decision and change is an event in Teleport's shape: "event" (type,
 * e.g. "user.login"), "code" (e.g. "T1000I"), "uid" (random, 32 hex), "time"
 * (ms since the epoch), "server_id" (the auth server's host id) and the
 * event's own fields ("user", "sid", "error", ...). Events are appended
 * through Raft into the state machine's audit log (state/audit.c): a batcher
 * thread gathers whatever was emitted while the previous batch was in flight
 * into one "audit" command, so a burst of N events costs about one Raft round
 * and one fsync, not N. A follower hands its batches to the leader over the
 * peer API ("audit_append"). The leader trims events older than the retention.
 *
 * Usage:
 *
 *   struct audit_event e;
 *   audit_event_init(&e, "join_token.create", "TJT00I");
 *   audit_event_str(&e, "user", caller);
 *   audit_emit(srv, &e, AUDIT_WAIT);    // consumes e
 */
#ifndef RP_AUTH_AUDIT_H
#define RP_AUTH_AUDIT_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

struct auth_server;
struct auth_audit;

#define AUDIT_DEFAULT_RETENTION_MS (365ull * 24 * 3600 * 1000) /* Teleport's default: 1 year */
#define AUDIT_MAX_QUEUED 100000 /* events waiting; beyond this, async events are dropped */

/* An event being built: its fields after event and code, as msgpack key/values. */
struct audit_event {
    struct rp_buf body;
    msgpack_packer pk;
    uint32_t n_fields;
};

void audit_event_init(struct audit_event *e, const char *type, const char *code);
void audit_event_str(struct audit_event *e, const char *key, const char *val); /* NULL: skipped */
void audit_event_u64(struct audit_event *e, const char *key, uint64_t val);
void audit_event_bool(struct audit_event *e, const char *key, bool val);
void audit_event_strs(struct audit_event *e, const char *key, const char *const *vals, size_t n);
void audit_event_free(struct audit_event *e); /* only for an event never emitted */

enum audit_mode {
    AUDIT_WAIT,  /* return once the event is committed (or with the error that stopped it) */
    AUDIT_ASYNC, /* queue and return; failures are logged */
};

/* Queues @e (consumed, whatever the result). With AUDIT_WAIT: 0 once the event is
 * in the replicated log; RP_EUNAVAILABLE/RP_ETIMEDOUT/RP_EUNKNOWN when no leader
 * took it in time. With AUDIT_ASYNC: 0, or RP_EBUSY when the queue is full. */
int audit_emit(struct auth_server *s, struct audit_event *e, enum audit_mode mode);
/* AUDIT_WAIT, and the event must also commit in an entry this server appended as
 * leader in @term: what was read from local state after rp_node_read_term()
 * returned @term is then known to have been current (raft/rp_raft.h). If the event
 * committed otherwise (leadership moved meanwhile), it stays in the log but the
 * call fails with RP_ENOTLEADER: the caller must not act on what it read. */
int audit_emit_in_term(struct auth_server *s, struct audit_event *e, uint64_t term);

int audit_start(struct auth_server *s, uint64_t retention_ms);
/* Flushes what is queued (briefly) and stops the batcher; emits fail from then on.
 * audit_free releases it once no thread can emit any more. */
void audit_stop(struct auth_server *s);
void audit_free(struct auth_server *s);

/* Leader duty: trims events older than the retention. Called about once a minute. */
int audit_trim_due(struct auth_server *s);

/* Appends @n events (encoded maps back to back in @events, each in the stored form:
 * event, code, uid, time, ...) to the audit log in one Raft entry under request id
 * @rid, on the leader: the path audit_append (events a follower gathered) and
 * emit_events (a node's) share. *@rev gets the revision. RP_ENOTLEADER on a follower;
 * RP_EINVAL with the state's message for an event it refuses. */
int audit_append_events(struct auth_server *s, const char *rid, const void *events, size_t len,
                        uint32_t n, uint64_t *rev);
/* The same for @n events packed in @events, answering the caller with {ok, rev} in @out:
 * the end of both audit_append and emit_events. */
int audit_append_answer(struct auth_server *s, const char *rid, const struct rp_buf *events,
                        uint32_t n, struct rp_buf *out);

/* Counters for status and benchmarks. */
struct audit_stats {
    uint64_t events, batches, dropped, failed;
};
void audit_get_stats(struct auth_server *s, struct audit_stats *out);

/* Converts a stored event to JSON with "time" as RFC 3339 (UTC, ms). */
int audit_event_to_json(const msgpack_object *ev, struct rp_buf *out);

#endif
