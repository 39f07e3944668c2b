/* tsh/tlsfd.h: a TLS connection that libssh drives as if it were a socket.
 *
 * libssh 0.10 takes a session's transport only as a file descriptor: it polls it and
 * calls recv() and send() on it, 4 KiB per poll. A TLS connection to the proxy is not
 * a descriptor, so tsh once bridged it to one end of a socketpair with a thread: every
 * byte of a download crossed the kernel twice more, and each 4 KiB read cost a poll and
 * a recv (512k system calls per GiB).
 *
 * A tlsfd is a descriptor number libssh can hold (a socket whose peer is already
 * closed, so that a call that reaches the kernel fails cleanly) registered here with
 * the TLS connection behind it. tools/tsh_io.c, linked into build/tsh alone, defines
 * poll(), recv() and send(): for a registered descriptor they call tsh_tlsfd_poll /
 * _recv / _send, which serve libssh from OpenSSL's decrypted records (no system call
 * while a record lasts) and queue what it sends; every other descriptor goes to libc.
 * docs/design-decisions.md, "tsh's connection to the proxy", says why.
 *
 * Without that file linked in (the library as the tests link it) tsh_tlsfd_enabled() is
 * false and tsh_dial keeps its socketpair and thread.
 *
 * One thread drives a tlsfd at a time (libssh's sessions are not shared between
 * threads); the registry itself is locked. */
#ifndef TSH_TLSFD_H
#define TSH_TLSFD_H

#include <openssl/ssl.h>
#include <poll.h>
#include <stdbool.h>
#include <sys/types.h>

struct tsh_tlsfd;

/* Called once by the interposer (before main) with libc's own poll(): from then on
 * tsh_dial hands out tlsfds. */
void tsh_tlsfd_enable(int (*libc_poll)(struct pollfd *fds, nfds_t n, int timeout));
bool tsh_tlsfd_enabled(void);

/* Registers the connected, handshaken @ssl, set up on TCP socket @tcp by SSL_set_fd
 * (ownership of both passes here on success), and stores the descriptor libssh is to
 * use in *@fd. Its records are then sent with MSG_NOSIGNAL (rp_tls_gather_writes).
 * 0, or RP_EIO / RP_ENOMEM (nothing taken, @ssl unchanged). */
int tsh_tlsfd_open(SSL *ssl, int tcp, int *fd);
/* If @fd is a tlsfd: sends what is still queued, then close_notify, waits up to
 * @linger_ms for the proxy's own end, frees everything and returns true. False (and
 * nothing done) for any other descriptor. */
bool tsh_tlsfd_close(int fd, int linger_ms);

/* True while any tlsfd is open. */
bool tsh_tlsfd_any(void);
/* The tlsfd behind @fd, or NULL (at once, without a lock, while none is open). */
struct tsh_tlsfd *tsh_tlsfd_get(int fd);

/* poll() over a set that may hold tlsfds: a tlsfd is readable while decrypted bytes or
 * the end of the stream wait, writable while less than 1 MiB is queued; the TCP
 * socket is polled in its place only when that is not already so. While no tlsfd is
 * open it is libc's poll(). */
int tsh_tlsfd_poll(struct pollfd *fds, nfds_t n, int timeout);
/* recv() and send() on a tlsfd. recv never blocks: it returns decrypted bytes, 0 at
 * the end of the stream (close_notify, or the connection ended or failed in any way),
 * or -1 with EAGAIN (nothing decrypted yet). send takes all @len bytes (what the socket
 * does not take at once is queued and sent as it drains); once the connection failed
 * it returns what it wrote before the failure, and -1 with EPIPE from then on, as a
 * socket does. */
ssize_t tsh_tlsfd_recv(struct tsh_tlsfd *t, void *buf, size_t len, int flags);
ssize_t tsh_tlsfd_send(struct tsh_tlsfd *t, const void *buf, size_t len);

#endif
