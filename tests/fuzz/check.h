/* tests/fuzz/check.h: what every fuzz target shares.
 *
 * A target feeds outside bytes to a parser and, when the parser accepts them, checks
 * properties its header promises (a round trip gives the same bytes, two functions
 * documented to agree do agree). A property that does not hold ends the process
 * with abort(), which libFuzzer records as a crash and the replay test reports with
 * the input's name. */
#ifndef RP_FUZZ_CHECK_H
#define RP_FUZZ_CHECK_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

#define FUZZ_CHECK(cond) fuzz_check_at((cond), #cond, __FILE__, __LINE__)

static inline void fuzz_check_at(bool ok, const char *what, const char *file, int line)
{
    if (ok)
        return;
    fprintf(stderr, "%s:%d: fuzz property does not hold: %s (last error: %s)\n", file, line, what,
            rp_errmsg());
    abort();
}

/* A NUL-terminated copy of @data (the caller frees it), for parsers of C strings. */
static inline char *fuzz_cstr(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    FUZZ_CHECK(s != NULL);
    memcpy(s, data, size);
    s[size] = '\0';
    return s;
}

/* An exact-size copy of @n bytes at @p, so that a read past the end is caught. */
static inline uint8_t *fuzz_dup(const void *p, size_t n)
{
    uint8_t *d = malloc(n > 0 ? n : 1);
    FUZZ_CHECK(d != NULL);
    if (n > 0)
        memcpy(d, p, n);
    return d;
}

#endif
