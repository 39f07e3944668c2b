/* jepsen/main_genhistory.c: build/jepsen-genhistory writes a synthetic register
 * history (a simulated linearizable register per key) as JSON lines, to test
 * the checker and anything that reads histories.
 *
 *   jepsen-genhistory [--keys N] [--processes N] [--ops-per-key N] [--seed N]
 *                     [--info-rate X] [--fail-rate X] [--late-rate X] [--mutate]
 *                     [-o FILE]
 *
 * With --mutate one ok read gets a stale value (the history is then not
 * linearizable); the index of the changed line goes to stderr. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jepsen/check.h"
#include "lib/buf.h"
#include "lib/errors.h"

static void usage(FILE *fp)
{
    fprintf(fp, "usage: jepsen-genhistory [--keys N] [--processes N] [--ops-per-key N] "
                "[--seed N]\n"
                "                         [--info-rate X] [--fail-rate X] [--late-rate X] "
                "[--mutate] [-o FILE]\n"
                "defaults: 20 keys, 10 processes, 5000 ops per key, seed 1, info rate 0.05,\n"
                "fail rate 0.05, late rate 0.5\n");
}

static int parse_uint(const char *opt, const char *s, unsigned long long max,
                      unsigned long long *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v > max) {
        fprintf(stderr, "jepsen-genhistory: %s: \"%s\" is not an integer in [0, %llu]\n", opt, s,
                max);
        return -1;
    }
    *out = v;
    return 0;
}

static int parse_rate(const char *opt, const char *s, double *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno != 0 || end == s || *end != '\0' || !(v >= 0 && v <= 1)) {
        fprintf(stderr, "jepsen-genhistory: %s: \"%s\" is not a number in [0, 1]\n", opt, s);
        return -1;
    }
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    struct jepsen_gen_opts o = {.seed = 1,
                                .keys = 20,
                                .processes = 10,
                                .ops_per_key = 5000,
                                .info_rate = 0.05,
                                .fail_rate = 0.05,
                                .late_rate = 0.5};
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        unsigned long long v;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            usage(stdout);
            return 0;
        }
        if (strcmp(a, "--mutate") == 0) {
            o.mutate = 1;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "jepsen-genhistory: %s: unknown option or missing value\n", a);
            usage(stderr);
            return 2;
        }
        const char *arg = argv[++i];
        int rv = 0;
        if (strcmp(a, "--keys") == 0) {
            rv = parse_uint(a, arg, 1000000, &v);
            o.keys = (unsigned)v;
        } else if (strcmp(a, "--processes") == 0) {
            rv = parse_uint(a, arg, 100000, &v);
            o.processes = (unsigned)v;
        } else if (strcmp(a, "--ops-per-key") == 0) {
            rv = parse_uint(a, arg, 100000000, &v);
            o.ops_per_key = (unsigned)v;
        } else if (strcmp(a, "--seed") == 0) {
            rv = parse_uint(a, arg, UINT64_MAX, &v);
            o.seed = v;
        } else if (strcmp(a, "--info-rate") == 0) {
            rv = parse_rate(a, arg, &o.info_rate);
        } else if (strcmp(a, "--fail-rate") == 0) {
            rv = parse_rate(a, arg, &o.fail_rate);
        } else if (strcmp(a, "--late-rate") == 0) {
            rv = parse_rate(a, arg, &o.late_rate);
        } else if (strcmp(a, "-o") == 0) {
            path = arg;
        } else {
            fprintf(stderr, "jepsen-genhistory: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
        if (rv != 0)
            return 2;
    }

    struct rp_buf out;
    rp_buf_init(&out);
    int64_t mutated = -1;
    int rv = jepsen_gen_register(&o, &out, &mutated);
    if (rv != 0) {
        fprintf(stderr, "jepsen-genhistory: %s\n", rp_errmsg());
        rp_buf_free(&out);
        return 2;
    }
    FILE *fp = path != NULL ? fopen(path, "wb") : stdout;
    if (fp == NULL) {
        fprintf(stderr, "jepsen-genhistory: %s: %s\n", path, strerror(errno));
        rp_buf_free(&out);
        return 2;
    }
    bool ok = (out.len == 0 || fwrite(out.data, 1, out.len, fp) == out.len);
    ok = (path != NULL ? fclose(fp) == 0 : fflush(fp) == 0) && ok;
    rp_buf_free(&out);
    if (!ok) {
        fprintf(stderr, "jepsen-genhistory: writing %s failed\n", path ? path : "stdout");
        return 2;
    }
    if (o.mutate) {
        if (mutated < 0) {
            fprintf(stderr, "jepsen-genhistory: no ok read could be mutated\n");
            return 2;
        }
        fprintf(stderr, "jepsen-genhistory: mutated the read completed at index %" PRId64 "\n",
                mutated);
    }
    return 0;
}
