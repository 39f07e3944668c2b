/* proxy/internal.h: what proxy/proxy.c, listen.c, dial.c and route.c share, and no
 * other module needs. */
#ifndef RP_PROXY_INTERNAL_H
#define RP_PROXY_INTERNAL_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "proxy/conn.h"
#include "proxy/proxy.h"

/* ALPN protocol names (Teleport's). */
#define PX_ALPN_HTTP "http/1.1"
#define PX_ALPN_SSH "teleport-proxy-ssh"
#define PX_ALPN_TUNNEL "teleport-reversetunnel"
#define PX_ALPN_AUTH_PREFIX "teleport-auth@"

/* Bounds on connections that have not finished their TLS handshake (design §1). */
#define PX_PENDING_MAX 1024
#define PX_PENDING_PER_ADDR 64
#define PX_HANDSHAKE_MS 10000

/* ---- listeners (proxy/listen.c) -------------------------------------------------------- */

struct px_listen;
/* Binds web_listen_addr (and tunnel_listen_addr when it differs) with the TLS context of
 * the web certificate, and watches them on every loop of @p. */
int px_listen_start(struct proxy *p, struct px_listen **out);
/* Stops accepting (each loop drops its watches, then the listening sockets are closed);
 * call while the loops run. Connections stay. NULL is fine. */
void px_listen_stop(struct px_listen *l);
/* Closes every teleport-auth@ pass-through connection: from a stop hook of the loops
 * (px_loops_on_stop), once their threads ended. NULL is fine. */
void px_listen_close_all(struct px_listen *l);
/* Frees @l (and what was still pending) once the loops stopped. NULL is fine. */
void px_listen_free(struct px_listen *l);
/* The address the web listener is bound to (with the real port when 0 was asked). */
const char *px_listen_web_addr(const struct px_listen *l);

/* Counters, for logs and tests. */
struct px_listen_stats {
    uint64_t accepted, pending, evicted, garbage, no_alpn_match, handshake_failed, passthrough;
};
void px_listen_stats(struct px_listen *l, struct px_listen_stats *out);

/* ---- the process (proxy/proxy.c) ------------------------------------------------------- */

/* The cluster TLS CA (borrowed; valid while the proxy runs). */
X509 *proxy_ca(struct proxy *p);
/* A reference on the proxy's own client TLS context (SSL_CTX_free it). */
SSL_CTX *proxy_client_ctx(struct proxy *p);
/* The proxy's data_dir key file paths. */
void proxy_key_path(struct proxy *p, const char *file, char *out, size_t outlen);
/* The auth servers the configuration names. */
size_t proxy_auth_addrs(struct proxy *p, const char *const **out);

/* Connects a TCP socket to @addr ("HOST:PORT") within @timeout_ms; *@fd is connected and
 * non-blocking. RP_EUNAVAILABLE naming the address and the reason, RP_ETIMEDOUT. */
int px_tcp_connect(const char *addr, int timeout_ms, int *fd);

#endif
