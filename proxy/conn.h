/* proxy/conn.h: a TLS connection accepted by the proxy, after the handshake, as the
 * module chosen by its ALPN protocol sees it (proxy/web.c for http/1.1,
 * proxy/tunnel.c for teleport-reversetunnel, proxy/dial.c for teleport-proxy-ssh).
 *
 * The connection belongs to one loop (proxy/loop.h); every function here is for that
 * loop's thread only. Reads and writes never block: px_tls_write queues what the
 * socket does not take at once and flushes it as the socket drains; the module bounds
 * what it queues (px_tls_pending) and stops reading its own source while the queue is
 * over its limit, which is how back-pressure crosses the proxy. */
#ifndef RP_PROXY_CONN_H
#define RP_PROXY_CONN_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "lib/tls.h"
#include "proxy/loop.h"

struct proxy;

struct px_tls {
    struct px_watch w; /* the socket; owned by proxy/conn.c */
    SSL *ssl;
    struct proxy *proxy;
    char peer[64];             /* "a.b.c.d:port" of the client */
    char alpn[32];             /* the protocol chosen */
    struct rp_identity *ident; /* the verified client certificate's identity, or NULL
                                * when the client sent none (web clients may not) */
    /* Set by the module in its attach function: */
    void *mod;                             /* the module's state for this connection */
    void (*on_readable)(struct px_tls *c); /* bytes (or EOF) can be read: px_tls_read */
    void (*on_drained)(struct px_tls *c);  /* the write queue fell to 0 (NULL: not told) */
    /* Called once when the connection ends, for any reason (peer closed, error,
     * px_tls_close, proxy stopping): the module frees @mod. The px_tls is freed right
     * after it returns. */
    void (*on_close)(struct px_tls *c);
    /* private to proxy/conn.c */
    struct px_tls_priv *priv;
};

/* Reads decrypted bytes into @buf. Returns > 0 bytes read; 0 when the peer closed;
 * RP_EAGAIN when nothing is available now (on_readable will be called again);
 * another negative RP_E* on a TLS or socket error (the connection is then closing:
 * return from the callback). */
ssize_t px_tls_read(struct px_tls *c, void *buf, size_t n);
/* Queues @n bytes and writes what the socket takes now. RP_ECLOSED if the connection
 * is closing; RP_ENOMEM. */
int px_tls_write(struct px_tls *c, const void *p, size_t n);
/* Between px_tls_cork and px_tls_uncork, px_tls_write only queues, and uncork writes
 * the queue: many small writes (HTTP/2 frames, pieces of them) leave in full TLS
 * records rather than a record each. */
void px_tls_cork(struct px_tls *c);
void px_tls_uncork(struct px_tls *c);
/* Bytes queued and not yet taken by the socket. */
size_t px_tls_pending(const struct px_tls *c);
/* Stops (false) or resumes (true) on_readable calls: back-pressure towards the peer. */
void px_tls_pause_reading(struct px_tls *c, bool paused);
/* Hands @c to loop @to (proxy/loop.h): it leaves its loop now, and on @to's thread,
 * once watched there, @moved(@c, @arg) runs; from then on only @to's thread may touch
 * @c. What was queued and what the peer sent meanwhile are kept. From @c's loop thread,
 * outside @c's own callbacks (e.g. from a posted function), while @c is open. On
 * RP_ECLOSED (the proxy is stopping) @c is closing and @moved never runs; RP_EINVAL
 * when @c is closing or in a callback (nothing changed). With @to being @c's loop,
 * @moved runs at once. */
int px_tls_move(struct px_tls *c, struct px_loop *to, void (*moved)(struct px_tls *c, void *arg),
                void *arg);
/* Flushes what is queued (for at most a few seconds), sends close_notify and closes;
 * on_close is called (possibly later, on this loop). Safe from any of the module's
 * callbacks; the module must not use @c after on_close. */
void px_tls_close(struct px_tls *c);
/* Closes at once without flushing (an abusive or broken peer). */
void px_tls_abort(struct px_tls *c);

/* ---- accepting (proxy/listen.c; tests) ------------------------------------------------ */

/* Called once the server handshake of @c ended, on its loop. @rv 0: c->alpn and c->ident
 * are set and the callee attaches a module (sets mod and the callbacks) or closes @c.
 * @rv < 0: the handshake failed or @c was aborted before it finished (the reason is in
 * rp_errmsg()); @c is freed right after the callback returns and on_close is never
 * called. */
typedef void (*px_tls_handshake_fn)(struct px_tls *c, int rv, void *arg);

/* Starts the TLS server handshake of the accepted, non-blocking socket @fd (taken in
 * every case: closed on failure) with @ctx on loop @l (the caller's thread), which must
 * end within @deadline_ms. @peer is the client's address for logs. The SSL's app data
 * is the px_tls, so @ctx's callbacks (ALPN selection) find it and, through
 * px_tls_handshake_arg, @arg. *@out (may be NULL) is set before the handshake is first
 * tried. RP_ENOMEM, RP_ETLS. The SSL is in SSL_MODE_RELEASE_BUFFERS: an idle
 * connection holds no record buffers. */
int px_tls_accept(struct px_loop *l, struct proxy *p, int fd, SSL_CTX *ctx, const char *peer,
                  uint64_t deadline_ms, px_tls_handshake_fn done, void *arg, struct px_tls **out);
/* Ends every connection still held by a loop of @ls, as px_tls_abort would (the
 * handshake callback or on_close is called, then the connection is freed). Only from a
 * stop hook of @ls (px_loops_on_stop): the loop threads have ended. */
void px_tls_close_all(struct px_loops *ls);

/* The @arg given to px_tls_accept. */
void *px_tls_handshake_arg(const struct px_tls *c);
/* True while the handshake has not finished. */
bool px_tls_in_handshake(const struct px_tls *c);

/* The modules' attach functions, called by proxy/conn.c on the connection's loop once
 * the handshake is done and the ALPN protocol is known. Each sets mod and the
 * callbacks (or calls px_tls_close with a reason logged). */
void px_web_attach(struct px_tls *c);    /* proxy/web.c: "http/1.1" (and no ALPN) */
void px_tunnel_attach(struct px_tls *c); /* proxy/tunnel.c: "teleport-reversetunnel" */
void px_dial_attach(struct px_tls *c);   /* proxy/dial.c: "teleport-proxy-ssh" */

#endif
