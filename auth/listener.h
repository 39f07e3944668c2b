/* auth/listener.h: the auth API port: accepting connections, TLS handshakes and
 * reading request frames on one event loop, serving requests on a bounded pool.
 *
 * What a stranger (no client certificate) can hold is bounded: a handshake must
 * finish within handshake_ms, an anonymous connection must send a whole frame
 * within anon_idle_ms, its frames are at most RP_FRAME_ANON_MAX bytes and refused
 * from the header, at most per_addr_max unauthenticated connections come from one
 * address, and unauthenticated connections together leave `reserve` of the
 * max_total slots to peers that present a certificate. When a cap is reached the
 * oldest unauthenticated connection is closed to make room for the newcomer, so a
 * flood of idle sockets cannot lock out an operator. Refusals are logged at most
 * once per address per minute (lib/connlimit.h). */
#ifndef RP_AUTH_LISTENER_H
#define RP_AUTH_LISTENER_H

#include <openssl/ssl.h>

struct auth_server;
struct auth_listener;

struct auth_listener_limits {
    unsigned max_total;    /* connections open at once (default 1024) */
    unsigned reserve;      /* of those, kept for certificate holders (default 128) */
    unsigned per_addr_max; /* unauthenticated connections per address (default 64) */
    unsigned workers;      /* request-serving threads (default 256) */
    unsigned anon_workers; /* of which at most this many serve anonymous frames at once
                              (default 8; 0 or >= workers: half of them) */
    unsigned anon_wait_ms; /* an anonymous frame waiting longer for a worker is answered
                              "busy" unserved (default 2000) */
    unsigned max_watches;  /* watch streams at once, a thread each (default 256) */
    unsigned handshake_ms; /* TLS handshake deadline (default 5000) */
    unsigned anon_idle_ms; /* anonymous: a whole frame within this (default 10000) */
    unsigned idle_ms;      /* with a certificate: idle between frames (default 300000) */
};

/* The defaults above. */
void auth_listener_limits_default(struct auth_listener_limits *lim);

/* Binds @addr ("ip:port") and listens, so the port is taken early; serves nothing
 * until auth_listener_start. *@out is owned by the caller (auth_listener_free). */
int auth_listener_open(struct auth_listener **out, const char *addr,
                       const struct auth_listener_limits *lim);
/* Starts the loop and the workers serving @s's API over @ctx (borrowed; must
 * outlive the listener's threads). */
int auth_listener_start(struct auth_listener *l, struct auth_server *s, SSL_CTX *ctx);
/* Stops accepting, closes every connection and waits up to @wait_ms for requests
 * in progress to end. Returns the number of threads still busy (0: the listener may
 * be freed; otherwise it must be left to the exiting process). */
int auth_listener_stop(struct auth_listener *l, int wait_ms);
void auth_listener_free(struct auth_listener *l);

#endif
