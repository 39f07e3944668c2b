/* lib/conn.h: blocking TLS connections carrying length-prefixed msgpack frames.
 *
 * A frame is a 4-byte big-endian length followed by that many bytes of one
 * msgpack object. Frames larger than the connection's limit (default
 * RP_FRAME_MAX) are refused without being read: the connection is closed. */
#ifndef RP_CONN_H
#define RP_CONN_H

#include <openssl/ssl.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "lib/buf.h"

#define RP_FRAME_MAX (16u << 20)
/* What a server reads from a peer that presented no client certificate: enough
 * for the anonymous requests (join, authenticate, invite_redeem: a few public keys
 * and names, under 2 KiB), small enough that thousands of such peers cost little. */
#define RP_FRAME_ANON_MAX 8192u

struct rp_conn {
    int fd;
    SSL *ssl;
    size_t max_frame; /* frames written and read are 1..max_frame bytes */
    size_t max_read;  /* if not 0, a lower limit for frames read (see rp_conn_accept) */
    int timeout_ms;   /* as set by rp_conn_set_timeout (0: none) */
    int nonblocking;  /* the socket is non-blocking: reads and writes wait with poll() */
    char peer[64];    /* "ip:port", for messages */
};

/* Parses "host:port" (IPv4 dotted quad, "localhost", or [v6]) into a sockaddr. */
int rp_addr_parse(const char *addr, struct sockaddr_storage *ss, socklen_t *len);

/* Binds and listens on @addr ("ip:port"); returns the fd or a negative code.
 * Port 0 picks a free port: read it back with rp_sock_local_addr. */
int rp_listen_tcp(const char *addr, int backlog);
/* The local address of socket @fd as "ip:port" ("[v6]:port") into @out. */
int rp_sock_local_addr(int fd, char *out, size_t outlen);

/* Connects to @addr within @timeout_ms and completes a TLS handshake with @ctx
 * (the whole of both within the deadline). On success max_frame is RP_FRAME_MAX and
 * no read/write timeout is set. On failure @c is left closed (rp_conn_close on it is
 * harmless). RP_ETIMEDOUT, RP_EIO (connect), RP_ETLS (handshake). Note that with
 * TLS 1.3 a server that refuses our client certificate does so after the client's
 * handshake completed: the client learns it on its first read. */
int rp_conn_dial(struct rp_conn *c, SSL_CTX *ctx, const char *addr, int timeout_ms);
/* rp_conn_dial from local address @src ("ip" or "ip:port"; NULL: any). */
int rp_conn_dial_from(struct rp_conn *c, SSL_CTX *ctx, const char *src, const char *addr,
                      int timeout_ms);
/* Completes the server side of the handshake on an accepted socket (takes @fd, also
 * on failure). Same results as rp_conn_dial, except the read limit: a peer without
 * a client certificate may send frames of at most RP_FRAME_ANON_MAX bytes
 * (max_read), one with a verified certificate up to max_frame. */
int rp_conn_accept(struct rp_conn *c, SSL_CTX *ctx, int fd, int timeout_ms);

/* For event loops: the same in non-blocking steps. rp_conn_accept_start takes
 * @fd (also on failure, when @c is left closed), makes it non-blocking and
 * prepares TLS; rp_conn_handshake_step then advances the handshake: 0 when done
 * (the read limit set as by rp_conn_accept), 1 when it waits for the socket
 * (*@events: POLLIN or POLLOUT), RP_ETLS when it failed. The socket stays
 * non-blocking until rp_conn_set_blocking. */
int rp_conn_accept_start(struct rp_conn *c, SSL_CTX *ctx, int fd);
int rp_conn_handshake_step(struct rp_conn *c, short *events);
/* Non-blocking read of up to @n decrypted bytes: 0 with *@got > 0, 1 when it waits
 * for the socket (*@events), RP_ECLOSED at the peer's end, RP_EIO (the connection is
 * then broken as by a failed rp_conn_read_frame). */
int rp_conn_read_some(struct rp_conn *c, void *p, size_t n, size_t *got, short *events);
/* Bytes OpenSSL already holds for reading: a loop must drain them before it waits
 * on the socket. */
int rp_conn_pending(struct rp_conn *c);
/* Switches the socket between blocking and non-blocking. rp_conn_read_frame and
 * rp_conn_write_frame work on both, with the same timeouts (on a non-blocking
 * socket they wait in poll()), so a loop may hand a non-blocking connection to a
 * thread that writes its answer without switching it. */
int rp_conn_set_blocking(struct rp_conn *c, int blocking);
/* Sends close_notify if it can without blocking, frees and closes. Idempotent on a
 * struct that went through rp_conn_dial/rp_conn_accept (successful or not). */
void rp_conn_close(struct rp_conn *c);

/* Sets send/receive timeouts (0 = block forever). */
int rp_conn_set_timeout(struct rp_conn *c, int timeout_ms);

/* Sends one frame of @n bytes (1..max_frame; RP_EINVAL for 0, RP_ETOOBIG above). */
int rp_conn_write_frame(struct rp_conn *c, const void *p, size_t n);
/* Reads one frame into @out (reset first); @out grows with the bytes that arrive,
 * not with the length announced. RP_ECLOSED on a clean EOF before a frame,
 * RP_ETOOBIG for one above max_read/max_frame, RP_EINVAL for a zero-length one,
 * RP_ETIMEDOUT, RP_EIO otherwise (EOF mid-frame included).
 *
 * A timeout before the first byte of a frame leaves the connection usable. Any other
 * failure, and a timeout in the middle of a frame or of a write, loses the frame
 * boundary: the socket is shut down at once (the peer sees EOF) and every later
 * read/write returns RP_ECLOSED. The caller still calls rp_conn_close. */
int rp_conn_read_frame(struct rp_conn *c, struct rp_buf *out);

#endif
