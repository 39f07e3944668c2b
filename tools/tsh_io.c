/* tools/tsh_io.c: poll(), recv() and send() for build/tsh (tsh/tlsfd.h).
 *
 * An executable's definitions come first in the dynamic linker's search, so these are
 * the ones libssh's calls reach. For a tlsfd (a TLS connection to the proxy that
 * tsh_dial handed to libssh) they serve the call in process; for every other
 * descriptor, and whenever no tlsfd is open, they call libc's own functions, found
 * once before main with dlsym(RTLD_NEXT).
 *
 * Only build/tsh links this file (the Makefile names it), never libraftport.a: an
 * archive member defining poll() would be pulled into any program that calls it. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "tsh/tlsfd.h"

static struct tsh_tlsfd_libc libc;

static void tsh_io_init(void);

__attribute__((constructor)) static void tsh_io_init(void)
{
    libc.poll = (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
    libc.recv = (ssize_t(*)(int, void *, size_t, int))dlsym(RTLD_NEXT, "recv");
    libc.send = (ssize_t(*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    if (libc.poll == NULL || libc.recv == NULL || libc.send == NULL) {
        fprintf(stderr, "tsh: cannot find libc's poll, recv and send: %s\n", dlerror());
        abort();
    }
    tsh_tlsfd_enable(&libc);
}

int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    if (libc.poll == NULL) /* called before our constructor ran */
        tsh_io_init();
    if (!tsh_tlsfd_any())
        return libc.poll(fds, n, timeout);
    return tsh_tlsfd_poll(fds, n, timeout);
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    if (libc.recv == NULL)
        tsh_io_init();
    if (tsh_tlsfd_any() && tsh_tlsfd_is(fd))
        return tsh_tlsfd_recv(fd, buf, len, flags);
    return libc.recv(fd, buf, len, flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    if (libc.send == NULL)
        tsh_io_init();
    if (tsh_tlsfd_any() && tsh_tlsfd_is(fd))
        return tsh_tlsfd_send(fd, buf, len);
    return libc.send(fd, buf, len, flags);
}
