/* jepsen/main_check.c: build/jepsen-check judges a history.
 *
 *   jepsen-check --model=register|set|watch|unique [--time-limit SECONDS]
 *                [--memory-limit MIB] HISTORY
 *
 * Prints the checker's report, one JSON object {"valid": true|false|"unknown",
 * ...}, on stdout and exits 0 (valid), 1 (invalid) or 2 (unknown, or a bad
 * history or usage, explained on stderr with the line number). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "jepsen/check.h"
#include "jepsen/history.h"
#include "lib/buf.h"
#include "lib/errors.h"

static void usage(FILE *fp)
{
    fprintf(fp, "usage: jepsen-check --model=register|set|watch|unique [--time-limit SECONDS]\n"
                "                    [--memory-limit MIB] HISTORY\n"
                "Prints {\"valid\": true|false|\"unknown\", ...}; exits 0 valid, 1 invalid,\n"
                "2 unknown or bad input. HISTORY is JSON lines (see jepsen/README.md); - reads "
                "stdin.\n");
}

typedef int (*checker_fn)(const struct jepsen_history *, const struct jepsen_check_opts *,
                          enum jepsen_verdict *, struct rp_buf *);

static const struct {
    const char *name;
    checker_fn fn;
} models[] = {
    {"register", jepsen_check_register},
    {"set", jepsen_check_set},
    {"watch", jepsen_check_watch},
    {"unique", jepsen_check_unique},
};

/* Splits "--name=value" or "--name value"; returns the value or NULL when @a is not @name. */
static const char *option(const char *name, int argc, char **argv, int *i)
{
    size_t n = strlen(name);
    const char *a = argv[*i];
    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        fprintf(stderr, "jepsen-check: %s needs a value\n", name);
        exit(2);
    }
    return argv[++*i];
}

static int read_stdin(struct jepsen_history **h)
{
    struct rp_buf in;
    rp_buf_init(&in);
    int rv = 0;
    for (;;) {
        rv = rp_buf_reserve(&in, 65536);
        if (rv != 0)
            break;
        size_t n = fread(in.data + in.len, 1, 65536, stdin);
        in.len += n;
        if (n == 0) {
            if (ferror(stdin))
                rv = rp_err(RP_EIO, "reading stdin: %s", strerror(errno));
            break;
        }
    }
    if (rv == 0)
        rv = jepsen_history_parse((const char *)in.data, in.len, h);
    if (rv != 0)
        rv = rp_err(rv, "stdin: %s", rp_errmsg());
    rp_buf_free(&in);
    return rv;
}

int main(int argc, char **argv)
{
    const char *model = NULL, *path = NULL;
    struct jepsen_check_opts opts = {JEPSEN_DEFAULT_TIME_LIMIT_S, JEPSEN_DEFAULT_MEMORY_LIMIT};

    for (int i = 1; i < argc; i++) {
        const char *v;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            return 0;
        } else if ((v = option("--model", argc, argv, &i)) != NULL) {
            model = v;
        } else if ((v = option("--time-limit", argc, argv, &i)) != NULL) {
            char *end;
            errno = 0;
            double t = strtod(v, &end);
            if (errno != 0 || end == v || *end != '\0' || !(t > 0) || !isfinite(t) || t > 1e7) {
                fprintf(stderr,
                        "jepsen-check: --time-limit: \"%s\" is not a number of seconds > 0\n", v);
                return 2;
            }
            opts.time_limit_s = t;
        } else if ((v = option("--memory-limit", argc, argv, &i)) != NULL) {
            char *end;
            errno = 0;
            unsigned long long mib = strtoull(v, &end, 10);
            if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || mib == 0 ||
                mib > ((size_t)-1 >> 20)) {
                fprintf(stderr, "jepsen-check: --memory-limit: \"%s\" is not a number of MiB > 0\n",
                        v);
                return 2;
            }
            opts.memory_limit = (size_t)mib << 20;
        } else if (argv[i][0] == '-' && argv[i][1] != '\0') {
            fprintf(stderr, "jepsen-check: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (path != NULL) {
            fprintf(stderr, "jepsen-check: one HISTORY only (got %s and %s)\n", path, argv[i]);
            return 2;
        } else {
            path = argv[i];
        }
    }
    if (model == NULL || path == NULL) {
        fprintf(stderr, "jepsen-check: %s is required\n", model == NULL ? "--model" : "HISTORY");
        usage(stderr);
        return 2;
    }
    checker_fn fn = NULL;
    for (size_t i = 0; i < sizeof models / sizeof models[0]; i++) {
        if (strcmp(models[i].name, model) == 0)
            fn = models[i].fn;
    }
    if (fn == NULL) {
        fprintf(stderr, "jepsen-check: unknown model \"%s\" (register, set, watch, unique)\n",
                model);
        return 2;
    }

    struct jepsen_history *h = NULL;
    int rv = strcmp(path, "-") == 0 ? read_stdin(&h) : jepsen_history_read_file(path, &h);
    if (rv != 0) {
        fprintf(stderr, "jepsen-check: bad history: %s\n", rp_errmsg());
        return 2;
    }
    struct rp_buf report;
    rp_buf_init(&report);
    enum jepsen_verdict verdict = JEPSEN_UNKNOWN;
    rv = fn(h, &opts, &verdict, &report);
    if (rv != 0) {
        fprintf(stderr, "jepsen-check: %s: %s\n", strcmp(path, "-") == 0 ? "stdin" : path,
                rp_errmsg());
        rp_buf_free(&report);
        jepsen_history_free(h);
        return 2;
    }
    fwrite(report.data, 1, report.len, stdout);
    fputc('\n', stdout);
    if (fflush(stdout) != 0)
        verdict = JEPSEN_UNKNOWN;
    rp_buf_free(&report);
    jepsen_history_free(h);
    return (int)verdict;
}
