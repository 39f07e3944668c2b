/* proxy/proxy.h: the proxy service (`raftport start --roles=proxy`), as its modules
 * see it. See docs/proxy.md for the operator's view.
 *
 * The proxy joins the cluster with a proxy token (role Proxy), follows the auth
 * cluster into a cache (nodes, proxies, users, roles, CAs, locks, cluster name),
 * heartbeats its own presence (kind "proxy"), and serves:
 *   web_listen_addr (3080): TLS routed by ALPN (proxy/hello.c reads it from the
 *     ClientHello before any TLS is terminated):
 *       "teleport-auth@"         passed through untouched to an auth server (tsh and
 *                                agents reach the auth API through the proxy, with
 *                                their own mutual TLS end to end)
 *       "http/1.1" or none       the web API (proxy/web.c)
 *       "teleport-proxy-ssh"     tsh's SSH sessions (proxy/dial.c)
 *       "teleport-reversetunnel" agents' reverse tunnels (proxy/tunnel.c), when
 *                                tunnel_listen_addr equals web_listen_addr
 *   tunnel_listen_addr (3024): TLS, reverse tunnels only
 *   listen_addr (3023): SSH for stock OpenSSH as a jump host (proxy/sshjump.c) */
#ifndef RP_PROXY_PROXY_H
#define RP_PROXY_PROXY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/config.h"
#include "lib/tls.h"

struct proxy;
struct agent_cache;
struct px_loops;
struct px_tunnels;

/* Runs the proxy of @cfg (validated) until SIGTERM or SIGINT; the process exit code.
 * On failure it has printed one line to stderr saying why. */
int proxy_main(const struct rp_config *cfg);

/* ---- what the modules use ------------------------------------------------------------ */

const struct rp_config *proxy_config(struct proxy *p);
const char *proxy_cluster_name(struct proxy *p);
const char *proxy_host_id(struct proxy *p);
struct px_loops *proxy_loops(struct proxy *p);
/* The followed resources (agent/cache.h, with the proxy's kinds). */
struct agent_cache *proxy_cache(struct proxy *p);
/* The reverse tunnels (proxy/tunnel.h). */
struct px_tunnels *proxy_tunnels(struct proxy *p);

/* One auth API call with the proxy's own identity (Proxy): @req is a msgpack map of
 * the method's arguments, the answer map is appended to @answer. Blocking (up to
 * @timeout_ms, failing over between auth servers): call it from a worker
 * (proxy_run_blocking), never from a loop thread. Thread-safe. */
int proxy_auth_call(struct proxy *p, const char *method, const void *req, size_t req_len,
                    struct rp_buf *answer, int timeout_ms);

/* Runs @fn(@arg) on one of a bounded pool of worker threads (blocking work: auth calls,
 * dials). RP_EBUSY when the pool's queue is full (the caller refuses its request as
 * busy). */
int proxy_run_blocking(struct proxy *p, void (*fn)(void *arg), void *arg);

/* Queues one audit event (a msgpack map of at most 64 KiB) for emit_events; never blocks
 * on auth. Thread-safe. */
int proxy_emit(struct proxy *p, const void *event, size_t len);

/* ---- routing (proxy/route.c) ------------------------------------------------------------ */

/* A node a session may go to, found in the cache. Strings owned by the struct. */
struct px_route {
    char host_id[40];
    char hostname[256];
    char addr[280];  /* "HOST:PORT" when reachable directly; "" when only tunnelled */
    bool tunnel;     /* the node has a reverse tunnel to this proxy */
    char *host_key;  /* "ssh-ed25519 AAAA..." as the node published it (may be NULL) */
    char *host_cert; /* its certificate line (may be NULL) */
};
void px_route_free(struct px_route *r);

/* Finds the node @target names (hostname, host id, or "HOST:PORT" address; an optional
 * ":PORT" after a hostname or host id is ignored) and checks that @user may reach it
 * as @login (roles: node labels and logins, deny first; locks on the user, its roles,
 * the login and the node). RP_ENOTFOUND "no node named ...", RP_EINVAL "... names N
 * nodes: use the host id", RP_EDENIED (roles or a lock refuse; the message says which; the caller
 * audits it). */
int proxy_route_find(struct proxy *p, const struct rp_identity *user, const char *login,
                     const char *target, struct px_route *out);
/* Opens a byte stream to the node of @r: its reverse tunnel if it has one to this proxy,
 * else a TCP connection to r->addr. On success *@fd is a connected, non-blocking socket
 * the caller owns. Blocking (up to @timeout_ms): call it from a worker. @client_addr is
 * the original client's address, passed to the node for its audit events. */
int proxy_route_dial(struct proxy *p, const struct px_route *r, const char *client_addr,
                     int timeout_ms, int *fd);
/* proxy_route_dial for a caller on the proxy's loops (proxy/dial.c): through a tunnel
 * the result is a stream to join to the client's connection (*@stream, *@fd = -1;
 * proxy/tunnel.h), else a socket (*@fd, *@stream = NULL). */
struct px_tunnel_stream;
int proxy_route_open(struct proxy *p, const struct px_route *r, const char *client_addr,
                     int timeout_ms, int *fd, struct px_tunnel_stream **stream);

#endif
