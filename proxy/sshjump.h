/* proxy/sshjump.h: the proxy's SSH listener (proxy_service.listen_addr, 3023), a jump
 * host for stock OpenSSH:
 *
 *   ssh -J alice@proxy.example.com:3023 root@node1
 *
 * (docs/ssh-jump-host.md is the user's page). The client authenticates to the proxy
 * with the same OpenSSH user certificate it uses on nodes: the SSH user name is the
 * Teleport user (the certificate's key id) or any of its principals. The checks are
 * the node's (agent/sshauth.c, sshd_cert_decide): a trusted user CA, a user
 * certificate, valid now, its critical options (source-address), a teleport-roles
 * extension; then locks on the user and its roles. After that the connection serves
 * only `direct-tcpip` channels (what `ssh -J` and `ssh -W` open): the target
 * "HOST:PORT" goes to the route function (the proxy's proxy_route_find with any login
 * the roles allow on that node, then proxy_route_dial) and the channel is pumped to
 * the node's byte stream by hand within the SSH windows. The user's SSH session to the
 * node runs end to end inside that channel: the proxy never sees its keys or its
 * bytes in clear. Sessions on the proxy itself (shell, exec, subsystems) are answered
 * with "this is a jump host: use ssh -J ..." on stderr and exit status 1.
 *
 * A refused target (unknown, ambiguous, forbidden, unreachable) is audited and, when
 * the connection has no other open channel (the case of ssh -J, one channel per
 * connection), the connection is closed with an SSH disconnect message naming the
 * reason, which OpenSSH prints on stderr; libssh 0.10 cannot put our text in a channel
 * open failure. With other channels open only that channel is refused.
 *
 * Bounds: each connection has its own thread (a libssh session belongs to one thread)
 * and at most max_connections connections exist at once (accepted beyond that: closed
 * at once, logged at most every 10 s). These are connections of people using the
 * jump host, not agents' idle tunnels (proxy/tunnel.c holds those on its loops), so a
 * thread each is affordable. Of them at most max_unauthenticated (64) may be
 * unauthenticated; each has auth_deadline_ms to authenticate (libssh 0.10 never
 * answers a bad signature, so without it a client could hang a thread forever) and
 * at most 10 authentication attempts. A connection has at most 64 channels, and one
 * without any channel for 5 minutes is closed. Locks are re-checked every second on
 * authenticated connections: a lock that applies disconnects them. */
#ifndef RP_PROXY_SSHJUMP_H
#define RP_PROXY_SSHJUMP_H

#include <stddef.h>
#include <stdint.h>

#include "agent/authority.h"
#include "lib/tls.h"

struct proxy;
struct px_sshjump;

/* Opens a byte stream to the node @target ("HOST:PORT" as the client asked) names, if
 * @user may reach it with some login: 0 and *@fd (a connected socket the caller then
 * owns, blocking or not), or RP_ENOTFOUND (no such node), RP_EINVAL (ambiguous),
 * RP_EDENIED (roles or locks refuse), another code (unreachable), each with a message
 * in rp_errmsg() meant for the user. Blocking up to @timeout_ms. Called from
 * connection threads: must be thread-safe. */
typedef int (*px_sshjump_route_fn)(void *arg, const struct rp_identity *user, const char *target,
                                   const char *client_addr, int timeout_ms, int *fd);

struct px_sshjump_opts {
    const char *listen_addr;   /* "HOST:PORT"; NULL: "0.0.0.0:3023"; port 0: any */
    const char *host_key_path; /* Ed25519, OpenSSH private key format */
    const char *server_id;     /* the proxy's host id (audit server_id) */
    const char *hostname;      /* the proxy's name (audit server_hostname) */
    /* Trust: user CAs, role names (only user_cas, lock_check are used). Borrowed: its
     * arg must outlive the server. */
    struct agent_authority authority;
    px_sshjump_route_fn route;
    void *route_arg;
    /* The audit sink: one msgpack map per event; thread-safe, non-blocking. NULL:
     * events are dropped. */
    int (*emit)(void *arg, const void *event_msgpack, size_t len);
    void *emit_arg;
    uint64_t auth_deadline_ms;    /* 0: 20 s */
    unsigned max_unauthenticated; /* 0: 64 */
    unsigned max_connections;     /* 0: 512 */
    int dial_timeout_ms;          /* 0: 15 s */
};

/* Loads the host key, binds, starts the listener thread. Strings of @o are copied,
 * the authority's and callbacks' args borrowed. *@out is the caller's, released by
 * px_sshjump_stop. */
int px_sshjump_start_opts(struct px_sshjump **out, const struct px_sshjump_opts *o);

/* The jump host of the proxy @p (proxy/sshjump_proxy.c): trust from proxy_cache(p),
 * routes through proxy_route_find (login NULL: any login the roles allow on the node)
 * and proxy_route_dial, audit through proxy_emit, the auth deadline of
 * proxy_config(p). @listen_addr: proxy_service.listen_addr (NULL: 0.0.0.0:3023);
 * @host_key_path: the Ed25519 host key of the proxy's join (keys/ssh_host_key).
 * Released by px_sshjump_stop. */
int px_sshjump_start(struct px_sshjump **out, struct proxy *p, const char *listen_addr,
                     const char *host_key_path);

/* The port it listens on (useful with port 0). */
int px_sshjump_port(const struct px_sshjump *j);
/* Open connections, authenticated or not. */
size_t px_sshjump_connections(struct px_sshjump *j);

/* Stops accepting, closes every connection (their tunnels with them) and waits for
 * their threads; frees @j (NULL is fine). */
void px_sshjump_stop(struct px_sshjump *j);

#endif
