/* tests/fuzz/fuzz_client_hello.c: libFuzzer target for the ClientHello reader
 * (proxy/hello.c), which reads the first bytes any client sends to the proxy's port.
 *
 * Checked on every input: the result is one of the four promised; a parsed hello's
 * names are within bounds and NUL-terminated; bytes after a whole ClientHello change
 * nothing; a prefix of a valid prefix is still a valid prefix (RP_EAGAIN), so a
 * client sending its hello byte by byte is never refused early. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "proxy/hello.h"

static void check_hello(const struct px_hello *h)
{
    if (h->n_alpn > PX_HELLO_MAX_ALPN)
        abort();
    for (size_t i = 0; i < h->n_alpn; i++)
        if (h->alpn_len[i] == 0 || h->alpn[i][h->alpn_len[i]] != '\0')
            abort();
    if (memchr(h->sni, 0, sizeof h->sni) == NULL)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static struct px_hello h, again;
    if (size > PX_HELLO_PEEK_BYTES * 2)
        return 0;
    int rv = px_hello_parse(data, size, &h);
    if (rv != 0 && rv != RP_EAGAIN && rv != RP_EPROTO && rv != RP_ETOOBIG)
        abort();
    if (rv == 0) {
        check_hello(&h);
        uint8_t *more = malloc(size + 7);
        if (more == NULL)
            return 0;
        memcpy(more, data, size);
        memcpy(more + size, "\x16\x03\x01\x00\x01\xff\x00", 7);
        if (px_hello_parse(more, size + 7, &again) != 0 || memcmp(&h, &again, sizeof h) != 0)
            abort();
        free(more);
    }
    if (rv == RP_EAGAIN) {
        size_t cuts[3] = {size / 2, size > 0 ? size - 1 : 0, size / 3};
        for (int i = 0; i < 3; i++)
            if (px_hello_parse(data, cuts[i], &again) != RP_EAGAIN)
                abort();
    }
    return 0;
}
