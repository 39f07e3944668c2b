/* agent/tunnel.h: the agent's side of reverse tunnels (a node behind a firewall that
 * only dials out).
 *
 * For each proxy the agent keeps one long-lived connection: TLS to the proxy's tunnel
 * address with ALPN "teleport-reversetunnel" and the node's X.509 identity, then
 * HTTP/2 (RFC 9113) with the agent as the HTTP/2 server. The proxy opens one CONNECT
 * stream per SSH session (`:authority <host_id>:22`, `x-raftport-client: <addr>`);
 * the agent answers 200 and hands one end of a socket pair to its SSH server
 * (agent_sshd_serve_fd), pumping the stream's DATA to and from the other end within
 * HTTP/2 flow control, or answers 503 with the reason in `x-raftport-error`.
 * docs/design-decisions.md ("Reverse tunnels") says why HTTP/2 and not SSH channels.
 *
 * The set of proxies is discovered from the cluster's `proxy` presence resources
 * (spec.tunnel_addr), listed through the configured proxy.
 *
 * Each tunnel runs on a thread of its own (an agent has a few proxies, not
 * thousands). A tunnel pings every keepalive period and closes after 3 unanswered
 * pings; a lost tunnel is dialled again after a jittered exponential backoff from 1 s
 * to 60 s. */
#ifndef RP_AGENT_TUNNEL_H
#define RP_AGENT_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/agent.h"

#define AGENT_TUNNEL_ALPN "teleport-reversetunnel"
/* Most tunnels one agent keeps (one per proxy). */
#define AGENT_TUNNEL_MAX_PROXIES 16
#define AGENT_TUNNEL_MIN_BACKOFF_MS 1000
#define AGENT_TUNNEL_MAX_BACKOFF_MS 60000
/* How often the cluster's proxies are listed (discovery). */
#define AGENT_TUNNEL_DISCOVER_MS 10000

struct agent_tunnels_opts {
    struct agent_ident *id; /* the node's identity: its TLS context, its host id */
    /* Takes the connected socket @fd of one session (owned from here, closed on failure)
     * for the SSH server; @peer is the client's address from the proxy (may be NULL).
     * The agent binds it to agent_sshd_serve_fd. Called on the tunnel's thread; must
     * not block for long. A negative RP_E* refuses the stream (503, rp_errmsg()). */
    int (*serve)(void *arg, int fd, const char *peer);
    void *serve_arg;
    uint64_t keepalive_ms;      /* PING period; 0: 30 s */
    const char *const *proxies; /* "HOST:PORT" of each proxy's tunnel address */
    size_t n_proxies;           /* 1 .. AGENT_TUNNEL_MAX_PROXIES */
    /* Discovery: the auth address (in proxy mode, the proxy itself) through which the
     * cluster's `proxy` presence resources are listed every discover_ms (0:
     * AGENT_TUNNEL_DISCOVER_MS); the agent then keeps one tunnel to each one's
     * spec.tunnel_addr, and to @proxies while none is found. NULL: @proxies only. */
    const char *discover_via;
    uint64_t discover_ms;
};

struct agent_tunnels;

/* Starts one thread per proxy; each dials at once and keeps its tunnel up until
 * agent_tunnels_stop. Strings are copied. RP_EINVAL, RP_ENOMEM. */
int agent_tunnels_start(struct agent_tunnels **out, const struct agent_tunnels_opts *o);
/* Tunnels established right now. Thread-safe. */
size_t agent_tunnels_up(struct agent_tunnels *t);
/* Closes every tunnel (GOAWAY, then the connection; the sessions' sockets are closed,
 * which ends their SSH connections) and joins the threads. NULL is fine. */
void agent_tunnels_stop(struct agent_tunnels *t);

#endif
