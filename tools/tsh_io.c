/* tools/tsh_io.c: poll(), recv() and send() for build/tsh (tsh/tlsfd.h).
 *
 * An executable's definitions come first in the dynamic linker's search, so these are
 * the ones libssh's calls reach. For a tlsfd (a TLS connection to the proxy that
 * tsh_dial handed to libssh) they serve the call in process; for every other
 * descriptor, and whenever no tlsfd is open, they call libc's own functions, found
 * once with dlsym(RTLD_NEXT).
 *
 * Only build/tsh links this file (the Makefile names it), never libraftport.a: an
 * archive member defining poll() would be pulled into any program that calls it. */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>

#include "tsh/tlsfd.h"

static int (*libc_poll)(struct pollfd *, nfds_t, int);
static ssize_t (*libc_recv)(int, void *, size_t, int);
static ssize_t (*libc_send)(int, const void *, size_t, int);

/* Before main, or at the first call if another library's constructor polls earlier. */
__attribute__((constructor)) static void tsh_io_init(void)
{
    if (libc_poll != NULL)
        return;
    libc_recv = (ssize_t(*)(int, void *, size_t, int))dlsym(RTLD_NEXT, "recv");
    libc_send = (ssize_t(*)(int, const void *, size_t, int))dlsym(RTLD_NEXT, "send");
    int (*p)(struct pollfd *, nfds_t, int) =
        (int (*)(struct pollfd *, nfds_t, int))dlsym(RTLD_NEXT, "poll");
    if (p == NULL || libc_recv == NULL || libc_send == NULL) {
        fprintf(stderr, "tsh: cannot find libc's poll, recv and send: %s\n", dlerror());
        abort();
    }
    tsh_tlsfd_enable(p);
    libc_poll = p;
}

int poll(struct pollfd *fds, nfds_t n, int timeout)
{
    tsh_io_init();
    return tsh_tlsfd_poll(fds, n, timeout); /* libc's own while no tlsfd is open */
}

ssize_t recv(int fd, void *buf, size_t len, int flags)
{
    tsh_io_init();
    struct tsh_tlsfd *t = tsh_tlsfd_get(fd);
    return t != NULL ? tsh_tlsfd_recv(t, buf, len, flags) : libc_recv(fd, buf, len, flags);
}

ssize_t send(int fd, const void *buf, size_t len, int flags)
{
    tsh_io_init();
    struct tsh_tlsfd *t = tsh_tlsfd_get(fd);
    return t != NULL ? tsh_tlsfd_send(t, buf, len) : libc_send(fd, buf, len, flags);
}
