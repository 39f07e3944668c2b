/* tsh/flags.c: flag parsing shared by every tsh command.
 *
 * Each command parses its own flags with getopt_long and a table of its own, to which
 * the global flags are appended, so that `tsh ls --proxy=P` and `tsh --proxy=P ls`
 * mean the same. Messages are ours (opterr = 0): they name the flag as the user typed
 * it and end with the command's synopsis. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "lib/util.h"
#include "tsh/tsh.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

const struct option tsh_global_opts[] = {
    {"proxy", required_argument, NULL, TSH_OPT_PROXY},
    {"user", required_argument, NULL, TSH_OPT_USER},
    {"ca-pin", required_argument, NULL, TSH_OPT_CA_PIN},
    {"insecure", no_argument, NULL, TSH_OPT_INSECURE},
    {"skip-version-check", no_argument, NULL, TSH_OPT_SKIP_VERSION_CHECK},
    {"debug", no_argument, NULL, 'd'},
    {"help", no_argument, NULL, 'h'},
    {NULL, 0, NULL, 0},
};

int tsh_global_flag(struct tsh_globals *g, const char *label, int code, const char *arg)
{
    switch (code) {
    case TSH_OPT_PROXY:
        if (rp_check_hostport(arg) != 0 || tsh_check_proxy_name(arg) != 0) {
            fprintf(stderr, "%s: --proxy=%s: %s (e.g. proxy.example.com:3080)\n", label, arg,
                    rp_errmsg());
            return 2;
        }
        g->proxy = arg;
        return 0;
    case TSH_OPT_USER:
        if (arg[0] == '\0' || strlen(arg) >= TSH_NAME_MAX || strpbrk(arg, "/ \t\r\n:") != NULL) {
            fprintf(stderr, "%s: --user=%s: expected a user name (no '/', ':' or blanks)\n", label,
                    arg);
            return 2;
        }
        g->user = arg;
        return 0;
    case TSH_OPT_CA_PIN:
        if (strncmp(arg, "sha256:", 7) != 0 || strlen(arg) != 7 + 64 ||
            strspn(arg + 7, "0123456789abcdefABCDEF") != 64) {
            fprintf(stderr,
                    "%s: --ca-pin=%s: expected sha256: and 64 hex digits, as tctl status prints "
                    "the CA pin\n",
                    label, arg);
            return 2;
        }
        g->ca_pin = arg;
        return 0;
    case TSH_OPT_INSECURE:
        g->insecure = true;
        return 0;
    case TSH_OPT_SKIP_VERSION_CHECK:
        g->skip_version_check = true;
        return 0;
    case 'd':
        g->debug = true;
        rp_log_set_level(RP_LOG_DEBUG);
        return 0;
    }
    return 2;
}

void tsh_flags_init(struct tsh_flags *f, struct tsh_globals *g, int argc, char **argv,
                    const struct option *own, const char *own_shorts, bool stop_at_arg)
{
    size_t n = 0;
    f->g = g;
    f->label = argc > 0 ? argv[0] : "tsh";
    f->argc = argc;
    f->argv = argv;
    for (; own != NULL && own->name != NULL; own++) {
        if (n + 8 >= ARRAY_LEN(f->opts))
            abort(); /* a command's table outgrew struct tsh_flags: a programming error */
        f->opts[n++] = *own;
    }
    for (const struct option *o = tsh_global_opts; o->name != NULL; o++)
        f->opts[n++] = *o;
    memset(&f->opts[n], 0, sizeof f->opts[n]);
    /* '+' stops at the first argument; ':' reports a missing value as such. */
    snprintf(f->shorts, sizeof f->shorts, "%s:%s%s", stop_at_arg ? "+" : "",
             own_shorts ? own_shorts : "", TSH_GLOBAL_SHORTS);
    optind = 0; /* glibc: start over, with the new option string */
    opterr = 0;
}

/* The flag that getopt could not take, as the user wrote it (without "=value"). */
static void bad_flag_name(const struct tsh_flags *f, char *out, size_t n)
{
    const char *arg = optind > 0 && optind <= f->argc ? f->argv[optind - 1] : "";
    if (optopt != 0 && (arg[0] != '-' || arg[1] != '-')) {
        snprintf(out, n, "-%c", optopt);
        return;
    }
    size_t len = strcspn(arg, "=");
    snprintf(out, n, "%.*s", (int)len, arg);
}

static bool flag_known(const struct tsh_flags *f, const char *name)
{
    if (strncmp(name, "--", 2) != 0)
        return false;
    for (const struct option *o = f->opts; o->name != NULL; o++) {
        if (strcmp(o->name, name + 2) == 0)
            return true;
    }
    return false;
}

static void print_help(const struct tsh_globals *g)
{
    if (g->verb_words == NULL) {
        printf("usage: tsh COMMAND [flags]; tsh help lists the commands\n");
        return;
    }
    printf("usage: tsh %s%s%s\n", g->verb_words, g->verb_synopsis[0] ? " " : "", g->verb_synopsis);
    if (g->verb_help != NULL && g->verb_help[0] != '\0')
        printf("\n%s", g->verb_help);
}

int tsh_usage_error(const struct tsh_flags *f, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", f->label);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (f->g->verb_words != NULL)
        fprintf(stderr, "; usage: tsh %s%s%s\n", f->g->verb_words,
                f->g->verb_synopsis[0] ? " " : "", f->g->verb_synopsis);
    else
        fprintf(stderr, "\n");
    return 2;
}

int tsh_flags_next(struct tsh_flags *f)
{
    for (;;) {
        int c = getopt_long(f->argc, f->argv, f->shorts, f->opts, NULL);
        char name[64];
        switch (c) {
        case -1:
            return TSH_FLAGS_END;
        case 'h':
            print_help(f->g);
            return TSH_FLAGS_HELP;
        case ':':
            bad_flag_name(f, name, sizeof name);
            tsh_usage_error(f, "flag %s needs a value", name);
            return TSH_FLAGS_BAD;
        case '?':
            bad_flag_name(f, name, sizeof name);
            tsh_usage_error(f, flag_known(f, name) ? "flag %s takes no value" : "unknown flag %s",
                            name);
            return TSH_FLAGS_BAD;
        case 'd':
        case TSH_OPT_PROXY:
        case TSH_OPT_USER:
        case TSH_OPT_CA_PIN:
        case TSH_OPT_INSECURE:
        case TSH_OPT_SKIP_VERSION_CHECK:
            if (tsh_global_flag(f->g, f->label, c, optarg) != 0)
                return TSH_FLAGS_BAD;
            break;
        default:
            return c;
        }
    }
}

int tsh_flags_done(struct tsh_flags *f, int c, int min, int max, char ***args, int *nargs)
{
    if (c == TSH_FLAGS_HELP)
        return 0;
    if (c == TSH_FLAGS_BAD)
        return 2;
    *args = f->argv + optind;
    *nargs = f->argc - optind;
    if (max >= 0 && *nargs > max)
        return tsh_usage_error(f, "unexpected argument '%s'", (*args)[max]);
    if (*nargs < min)
        return tsh_usage_error(f, "missing argument%s", min - *nargs > 1 ? "s" : "");
    return -1;
}
