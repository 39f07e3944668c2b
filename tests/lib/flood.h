/* tests/lib/flood.h: connection floods from one foreign address, for the tests that
 * check a port stays usable under them (tests/test_int_exhaust_conn.c).
 *
 * Every socket is bound to 127.0.0.2 (loopback, but another address than the
 * cluster's 127.0.0.1), so the servers see one stranger, unless the flood's src
 * names another address. The server may close any
 * of them (that is what the caps do); a flood only counts the ones it opened. */
#ifndef RP_TESTS_FLOOD_H
#define RP_TESTS_FLOOD_H

#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#define FLOOD_SRC "127.0.0.2"

struct flood {
    char src[32]; /* source address; "" for FLOOD_SRC */
    int *fds;     /* -1 once closed */
    SSL **ssl;    /* per connection, for floods that speak TLS; NULL otherwise */
    SSL_CTX *ctx;
    int n; /* connections opened */
    int cap;
    /* What flood_keep reopens (set by flood_idle / flood_stalled_tls). */
    char addr[64];
    const void *hello;
    size_t hello_len;
    pthread_t keeper;
    bool keeping;
    atomic_bool stop;
    atomic_ulong reopened;
};

/* Raises this process's open-file limit to its hard limit. */
void flood_raise_nofile(void);

/* Opens @n TCP connections to @addr ("ip:port") and sends nothing. Returns how many
 * connected within 10 s. */
int flood_idle(struct flood *f, const char *addr, int n);
/* Opens @n TCP connections and sends the first bytes of a TLS ClientHello (a record
 * header announcing more), then stalls. */
int flood_stalled_tls(struct flood *f, const char *addr, int n);
/* Opens @n TLS connections without a client certificate, one after another, and on
 * each announces a 16 MiB frame and sends its first bytes. */
int flood_big_frames(struct flood *f, const char *addr, int n);
/* Sends one more byte on every connection still open (TLS ones inside TLS).
 * Returns how many were still open. */
int flood_trickle(struct flood *f);
/* Keeps an idle or stalled flood at full strength: a thread reopens every
 * connection the server closes, as an attacker would, until flood_close. */
void flood_keep(struct flood *f);
/* Closes everything (stopping the keeper first). */
void flood_close(struct flood *f);

/* The resident set of process @pid in KiB (VmRSS), or 0. */
unsigned long proc_rss_kib(int pid);
/* How many descriptors process @pid holds, or -1. */
int proc_fd_count(int pid);
/* The size of file @path in bytes, or 0. */
unsigned long file_size(const char *path);

#endif
