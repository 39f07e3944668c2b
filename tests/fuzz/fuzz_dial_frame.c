/* tests/fuzz/fuzz_dial_frame.c: libFuzzer target for the dial frame reader
 * (proxy/dial.c), which reads the first bytes an authenticated tsh sends for a session.
 *
 * Checked on every input: the result is 0 or RP_EINVAL; a parsed request holds a
 * non-empty NUL-terminated target, a login only when has_login, and NUL-terminated
 * strings within their arrays. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "proxy/dial.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct px_dial_request r;
    int rv = px_dial_frame_parse(data, size, &r);
    if (rv != 0 && rv != RP_EINVAL)
        abort();
    if (rv == 0) {
        if (memchr(r.target, 0, sizeof r.target) == NULL || r.target[0] == '\0')
            abort();
        if (memchr(r.login, 0, sizeof r.login) == NULL || (!r.has_login && r.login[0] != '\0'))
            abort();
        if (memchr(r.version, 0, sizeof r.version) == NULL)
            abort();
    }
    return 0;
}
