/* proxy/tunnel.h: the proxy's side of agents' reverse tunnels.
 *
 * An agent dials the proxy (TLS, ALPN "teleport-reversetunnel", its Node X.509
 * identity), and the connection then carries HTTP/2 with the proxy as the HTTP/2
 * client (RFC 9113; the agent is the server): each session to the node is one CONNECT
 * stream (RFC 9113 8.5), its DATA frames the raw SSH bytes, flow-controlled per stream.
 * PING frames keep it alive. docs/design-decisions.md ("Reverse tunnels") says why.
 * Tunnels live on the proxy's loops (proxy/loop.h); px_tunnels_dial may be called from
 * any thread. */
#ifndef RP_PROXY_TUNNEL_H
#define RP_PROXY_TUNNEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct proxy;
struct px_tunnels;

int px_tunnels_new(struct px_tunnels **out, struct proxy *p);
/* Frees every tunnel's own state (streams, their socket pairs, the HTTP/2 sessions) and
 * detaches it from its px_tls, which stays the proxy core's to close. Call after the
 * loops stopped. NULL is fine. */
void px_tunnels_free(struct px_tunnels *t);
/* True if the node @host_id has a live tunnel to this proxy. Thread-safe. */
bool px_tunnels_has(struct px_tunnels *t, const char *host_id);
/* Open tunnels. Thread-safe. */
size_t px_tunnels_count(struct px_tunnels *t);
/* Opens a stream to the SSH server of node @host_id through its tunnel. On success *@fd
 * is the caller's end of a connected, non-blocking socket pair whose bytes are the
 * stream's. RP_ENOTFOUND (no tunnel), RP_ETIMEDOUT, RP_EUNAVAILABLE (the agent refused
 * or the tunnel died). Blocking up to @timeout_ms; any thread but a loop thread. */
int px_tunnels_dial(struct px_tunnels *t, const char *host_id, const char *client_addr,
                    int timeout_ms, int *fd);

/* A stream through a tunnel that the node accepted, to be joined to a client's TLS
 * connection on the tunnel's loop: the node's bytes are written straight into the
 * connection and the client's read straight into DATA frames, with no socket pair and
 * no thread between them (proxy/dial.c). */
struct px_tunnel_stream;
struct px_loop;
struct px_tls;
/* px_tunnels_dial, but *@out is a joinable stream (the caller's reference: it ends with
 * px_tunnel_stream_join then px_tunnel_stream_client_closed, or px_tunnel_stream_drop).
 * What the node sends before the join waits in the stream, within its window. */
int px_tunnels_open(struct px_tunnels *t, const char *host_id, const char *client_addr,
                    int timeout_ms, struct px_tunnel_stream **out);
/* The loop @h lives on: the client connection must be moved there (px_tls_move). */
struct px_loop *px_tunnel_stream_loop(const struct px_tunnel_stream *h);
/* On that loop: bytes flow between the stream and @c from now on. The caller keeps @c's
 * callbacks and forwards on_readable, on_drained and on_close to the three functions
 * below. When the node ends the stream, @c is closed (px_tls_close) once what it was
 * sent is written. RP_EUNAVAILABLE if the tunnel closed meanwhile (close @c, then
 * px_tunnel_stream_client_closed as usual). */
int px_tunnel_stream_join(struct px_tunnel_stream *h, struct px_tls *c);
void px_tunnel_stream_client_readable(struct px_tunnel_stream *h, struct px_tls *c);
void px_tunnel_stream_client_drained(struct px_tunnel_stream *h);
/* @c's on_close: the stream is reset unless it ended, and @h released. */
void px_tunnel_stream_client_closed(struct px_tunnel_stream *h);
/* Releases a stream never joined (any thread): the node's session is reset. NULL is
 * fine. */
void px_tunnel_stream_drop(struct px_tunnel_stream *h);

/* ---- for proxy/conn.c and tests --------------------------------------------------------- */

/* px_tunnel_attach (proxy/conn.h) with the registry given rather than the proxy's: the
 * connection @c must carry a Node identity (else it is closed, logged); it then
 * registers as that node's newest tunnel. Loop thread of @c. */
struct px_tls;
void px_tunnel_attach_to(struct px_tls *c, struct px_tunnels *t);
/* The PING period of tunnels attached from now on (default: the proxy's
 * teleport.keep_alive_interval, 30 s); a tunnel closes after 3 unanswered. */
void px_tunnels_set_keepalive(struct px_tunnels *t, uint64_t ms);

#endif
