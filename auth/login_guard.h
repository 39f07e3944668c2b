/* auth/login_guard.h: what stands between anonymous password logins and the
 * auth server's memory and CPU.
 *
 * `authenticate` needs no client certificate, and each password check is an
 * argon2id hash of 64 MiB and about 100 ms. Three bounds keep a flood of them
 * from taking the server down (docs/users-and-roles.md has the figures):
 *
 *   - rate limits, checked before any work: per source address (IPv6 by /64),
 *     and per user name; a refusal costs a table lookup;
 *   - a fixed pool of hashing workers (lib/hashpool.h) with a bounded queue and a
 *     deadline to start: at most `password_hash_workers` hashes exist at once,
 *     whatever the number of requests, and a check that cannot start in time is
 *     answered "busy";
 *   - unknown users are checked against a dummy hash made once at start with the
 *     default parameters, through the same pool: the same time as a real user,
 *     and no memory of their own.
 *
 * Refusals are audited in summary, not one event each: the first refusal of a
 * source (or user) at once, then one `user.login.throttled` event per source per
 * minute with the count, and one log line a minute for the whole server
 * (docs/audit.md). */
#ifndef RP_AUTH_LOGIN_GUARD_H
#define RP_AUTH_LOGIN_GUARD_H

#include <stddef.h>

struct auth_server;
struct auth_login_guard;

/* Starts the pool and the tables from s->cfg and makes the dummy hash (one
 * argon2id hash, on this thread). Sets s->login. Returns 0, RP_EINVAL (config),
 * RP_ENOMEM or RP_EIO. */
int auth_login_guard_start(struct auth_server *s);
/* Stops the pool (waiting for running hashes) and frees everything; s->login is
 * NULL after it. No request may be in auth_login_* then. */
void auth_login_guard_free(struct auth_server *s);

/* Reports refusal counts that are due (audit events, one log line a minute).
 * Called about once a second, on every server. */
void auth_login_guard_duty(struct auth_server *s);

/* Takes a token for the source address of @remote ("ip:port" or "[ip6]:port").
 * Returns 0, or RP_EBUSY with a message saying when to try again. */
int auth_login_admit_address(struct auth_server *s, const char *remote);
/* The same for the user name @user (on the leader, which sees every attempt). */
int auth_login_admit_user(struct auth_server *s, const char *user, const char *remote);

/* A follower forwards logins to the leader over its pool of AUTH_FWD_POOL
 * connections, each held while the leader checks the password (seconds, when its
 * pool is busy). At most half of them may carry logins, so that a flood of logins
 * through a follower leaves it room to forward writes. Returns 0 (then call
 * auth_login_forward_end after forwarding) or RP_EBUSY. */
int auth_login_forward_begin(struct auth_server *s);
void auth_login_forward_end(struct auth_server *s);

/* Checks @pw (@n bytes) against @hash on the hashing pool; @hash NULL (unknown
 * user, or no password set): against the dummy hash, and refused. Returns 0 on a
 * match; RP_EDENIED on a mismatch or an unusable stored hash; RP_EBUSY when the
 * pool could not start the check in time (counted for the per-minute summary);
 * RP_ENOMEM. */
int auth_login_verify(struct auth_server *s, const char *pw, size_t n, const char *hash);

#endif
