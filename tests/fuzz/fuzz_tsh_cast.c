/* tests/fuzz/fuzz_tsh_cast.c: libFuzzer target for tsh play's asciicast decoding
 * (tsh_play_cast, tsh/play.c), which reads recordings as the auth service hands them out:
 * the terminal output of whatever ran in a session.
 *
 * Checked on every input: the result is 0 or RP_EINVAL; on success the JSON output
 * parses back, holds a header object and one event per event line; the asciicast
 * output is the input unchanged. (The pty format only sleeps and writes the same data.) */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "tsh/tsh.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > (1u << 16))
        return 0;
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    if (out == NULL)
        return 0;
    int rv = tsh_play_cast((const char *)data, size, TSH_PLAY_JSON, 1, out);
    fclose(out);
    if (rv != 0 && rv != RP_EINVAL)
        abort();
    if (rv == 0) {
        json_error_t e;
        json_t *doc = json_loadb(buf, len, 0, &e);
        if (!json_is_object(json_object_get(doc, "header")) ||
            !json_is_array(json_object_get(doc, "events")))
            abort();
        size_t lines = 0;
        for (size_t i = 0, start = 0; i <= size; i++) {
            if (i == size || data[i] == '\n') {
                lines += i > start;
                start = i + 1;
            }
        }
        if (json_array_size(json_object_get(doc, "events")) + 1 != lines)
            abort();
        json_decref(doc);
    }
    free(buf);
    buf = NULL;
    out = open_memstream(&buf, &len);
    if (out == NULL)
        return 0;
    rv = tsh_play_cast((const char *)data, size, TSH_PLAY_ASCIICAST, 1, out);
    fclose(out);
    if (rv != 0 || len != size || (size > 0 && memcmp(buf, data, size) != 0))
        abort();
    free(buf);
    return 0;
}
