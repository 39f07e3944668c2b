/* tools/tsh.c: the user's tool.
 *
 *   tsh [--proxy=HOST:PORT] [--user=NAME] [global flags] COMMAND [flags] [arguments]
 *
 * Every command is one row of the verb table below: its words, synopsis, help and the
 * entry point (tsh/tsh.h) that parses its own flags and runs it. The usage text is
 * generated from the table. Global flags may come before the command or among its
 * flags (tsh/flags.c).
 *
 * The entry points live in the files of tsh/. Each has a weak definition here that says the
 * command is not part of this build, so that the parts of tsh can be built and merged
 * separately; the Makefile links every tsh/ object into build/tsh explicitly (not
 * through the archive, which would not replace a weak definition), so a strong
 * definition always wins. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/log.h"
#include "lib/version.h"
#include "tsh/tsh.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

struct verb {
    const char *words;
    const char *synopsis;
    const char *summary;
    const char *help;
    int (*run)(int argc, char **argv, const struct tsh_globals *g);
};

static int cmd_help(int argc, char **argv, const struct tsh_globals *g);

static int not_built(const char *what)
{
    fprintf(stderr, "tsh %s: not built into this tsh (its part of tsh is missing from the build)\n",
            what);
    return 1;
}

#define WEAK_COMMAND(fn, name)                                                                     \
    __attribute__((weak)) int fn(int argc, char **argv, const struct tsh_globals *g)               \
    {                                                                                              \
        (void)argc;                                                                                \
        (void)argv;                                                                                \
        (void)g;                                                                                   \
        return not_built(name);                                                                    \
    }

WEAK_COMMAND(tsh_cmd_login, "login")
WEAK_COMMAND(tsh_cmd_logout, "logout")
WEAK_COMMAND(tsh_cmd_status, "status")
WEAK_COMMAND(tsh_cmd_ls, "ls")
WEAK_COMMAND(tsh_cmd_recordings_ls, "recordings ls")
WEAK_COMMAND(tsh_cmd_play, "play")
WEAK_COMMAND(tsh_cmd_config, "config")
WEAK_COMMAND(tsh_cmd_version, "version")
WEAK_COMMAND(tsh_cmd_ssh, "ssh")
WEAK_COMMAND(tsh_cmd_scp, "scp")
WEAK_COMMAND(tsh_cmd_proxy_ssh, "proxy ssh")

static const struct verb verbs[] = {
    {"login", "--proxy=HOST:PORT --user=NAME [--ttl=12h] [--ca-pin=sha256:..|--insecure]",
     "log in at a proxy: password (and TOTP code), then a fresh key and certificates",
     "The password is read from the terminal without echo, or as one line from standard\n"
     "input when that is not a terminal. --invite=TOKEN sets the password and enrolls a\n"
     "TOTP authenticator (QR code in the terminal) with a token from tctl users add,\n"
     "then logs in. The first contact with a proxy checks its certificate against the\n"
     "system roots, or the cluster CA pin (--ca-pin, as tctl status prints it); later\n"
     "logins trust the cluster CA saved in the profile.\n",
     tsh_cmd_login},
    {"logout", "[--proxy=HOST:PORT]", "remove the keys and profile of the current (or given) proxy",
     NULL, tsh_cmd_logout},
    {"status", "[--format=text|json]", "who you are logged in as, where, and until when", NULL,
     tsh_cmd_status},
    {"ls", "[LABEL=VALUE[,LABEL=VALUE...]] [--format=text|json|names]",
     "list the nodes you may reach",
     "Only nodes with every given label value are shown; nodes reached through a reverse\n"
     "tunnel show the address \"\xE2\x9F\xB5 Tunnel\".\n",
     tsh_cmd_ls},
    {"ssh",
     "[-l LOGIN] [-p PORT] [-t|-tt|-T] [-A] [-L [ADDR:]PORT:HOST:PORT]... [LOGIN@]NODE "
     "[COMMAND...]",
     "open a shell or run a command on a node through the proxy",
     "The remote command's exit status is tsh's own (128+N when it died of signal N);\n"
     "tsh's own failures exit 255. -t asks for a terminal for a command (-tt even without a\n"
     "local one), -T never; -A forwards $SSH_AUTH_SOCK; -L may be repeated.\n",
     tsh_cmd_ssh},
    {"scp", "[-r] [-p] [-q] [-P PORT] SOURCE... DEST",
     "copy files to or from a node ([LOGIN@]NODE:PATH)",
     "-r: directories; -p: keep modification times too (modes are always kept); -q: no\n"
     "progress bar; -P: the node's SSH port. Exits 1 when any file failed (each is named).\n",
     tsh_cmd_scp},
    {"proxy ssh", "[--cluster=NAME] [LOGIN@]NODE[:PORT]",
     "connect stdin/stdout to a node's SSH server (OpenSSH's ProxyCommand)",
     "tsh config prints an OpenSSH configuration that uses it.\n", tsh_cmd_proxy_ssh},
    {"recordings ls", "[--format=text|json]", "list the session recordings you may see", NULL,
     tsh_cmd_recordings_ls},
    {"play", "SESSION_ID [--speed=N] [--format=pty|json|asciicast]",
     "replay a recorded session in the terminal",
     "--speed: 0.25 to 16 times the recorded pace (idle gaps are cut to 2 s).\n"
     "--format=asciicast writes the asciicast v2 file to stdout (asciinema play can play\n"
     "it); --format=json prints the recording's events.\n",
     tsh_cmd_play},
    {"config", "[--proxy=HOST:PORT]",
     "an OpenSSH client configuration that reaches the cluster's nodes through the proxy",
     "Append it to ~/.ssh/config: tsh config >> ~/.ssh/config; then ssh LOGIN@NODE.CLUSTER.\n",
     tsh_cmd_config},
    {"version", "", "the client's version, and the proxy's when logged in", NULL, tsh_cmd_version},
    {"help", "[COMMAND]", "this text, or a command's flags", NULL, cmd_help},
};

#define USAGE_COLUMN 34

static void print_verb_line(FILE *f, const struct verb *v)
{
    char head[256];
    int n =
        snprintf(head, sizeof head, "  %s%s%s", v->words, v->synopsis[0] ? " " : "", v->synopsis);
    if (n < USAGE_COLUMN - 1)
        fprintf(f, "%-*s%s\n", USAGE_COLUMN, head, v->summary);
    else
        fprintf(f, "%s\n%*s%s\n", head, USAGE_COLUMN, "", v->summary);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: tsh [global flags] COMMAND [flags] [arguments]\n\nCommands:\n");
    for (size_t i = 0; i < ARRAY_LEN(verbs); i++)
        print_verb_line(f, &verbs[i]);
    fprintf(f,
            "\n"
            "Global flags (before or after the command):\n"
            "      --proxy=HOST:PORT     the proxy's web address (default: the current profile;\n"
            "                            $RAFTPORT_PROXY)\n"
            "      --user=NAME           the cluster user (default: $RAFTPORT_USER, else your\n"
            "                            login name)\n"
            "      --ca-pin=sha256:HEX   trust a proxy whose chain holds the cluster CA with this\n"
            "                            pin (tctl status prints it); for the first login\n"
            "      --insecure            do not verify the proxy's certificate (testing only)\n"
            "      --skip-version-check  do not warn about the proxy's version\n"
            "  -d, --debug               log at debug level\n"
            "  -h, --help                this text; after a command, that command's help\n"
            "\n"
            "Profiles are kept in $RAFTPORT_HOME, else ~/.tsh. Run 'tsh help COMMAND' for the\n"
            "flags of a command.\n");
}

static void verb_help(FILE *f, const struct verb *v)
{
    fprintf(f, "usage: tsh %s%s%s\n\n%s\n", v->words, v->synopsis[0] ? " " : "", v->synopsis,
            v->summary);
    if (v->help)
        fprintf(f, "\n%s", v->help);
}

/* The row whose words begin @args, the longest if several do; @n_words: how many
 * arguments its words took. */
static const struct verb *find_verb(int nargs, char **args, int *n_words)
{
    const struct verb *best = NULL;
    for (size_t i = 0; i < ARRAY_LEN(verbs); i++) {
        const char *w = verbs[i].words;
        int k = 0;
        while (k < nargs) {
            size_t len = strlen(args[k]);
            if (len == 0 || strncmp(w, args[k], len) != 0 || (w[len] != ' ' && w[len] != '\0'))
                break;
            w += len;
            k++;
            if (*w == '\0')
                break;
            w++;
        }
        if (*w == '\0' && k > 0 && (best == NULL || k > *n_words)) {
            best = &verbs[i];
            *n_words = k;
        }
    }
    return best;
}

static int cmd_help(int argc, char **argv, const struct tsh_globals *g)
{
    (void)g;
    int n_words = 0;
    const struct verb *v = argc > 1 ? find_verb(argc - 1, argv + 1, &n_words) : NULL;
    if (argc > 1 && v == NULL) {
        fprintf(stderr, "tsh help: no command '%s'\n", argv[1]);
        usage(stderr);
        return 2;
    }
    if (v != NULL)
        verb_help(stdout, v);
    else
        usage(stdout);
    return 0;
}

static int unknown_command(int nargs, char **args)
{
    fprintf(stderr, "tsh: unknown command '");
    for (int i = 0; i < nargs && i < 2; i++)
        fprintf(stderr, "%s%s", i ? " " : "", args[i]);
    fprintf(stderr, "'\n");
    size_t len = strlen(args[0]);
    bool any = false;
    for (size_t i = 0; i < ARRAY_LEN(verbs); i++) {
        if (strncmp(verbs[i].words, args[0], len) == 0 && verbs[i].words[len] == ' ') {
            if (!any)
                fprintf(stderr, "Commands of '%s':\n", args[0]);
            print_verb_line(stderr, &verbs[i]);
            any = true;
        }
    }
    if (!any)
        usage(stderr);
    return 2;
}

int main(int argc, char **argv)
{
    struct tsh_globals g = {0};
    int c;
    rp_log_set_level(RP_LOG_WARN);
    g.home = tsh_home();
    /* The environment first; flags override it. */
    const char *env_proxy = getenv("RAFTPORT_PROXY");
    const char *env_user = getenv("RAFTPORT_USER");
    if (env_proxy != NULL && env_proxy[0] != '\0' &&
        tsh_global_flag(&g, "tsh: $RAFTPORT_PROXY", TSH_OPT_PROXY, env_proxy) != 0)
        return 2;
    if (env_user != NULL && env_user[0] != '\0' &&
        tsh_global_flag(&g, "tsh: $RAFTPORT_USER", TSH_OPT_USER, env_user) != 0)
        return 2;
    if (argc >= 2 && strcmp(argv[1], "--version") == 0) {
        printf("tsh %s\n", rp_version_self());
        return 0;
    }
    /* The global flags before the command ('+': stop at the first word). */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:" TSH_GLOBAL_SHORTS, tsh_global_opts, NULL)) != -1) {
        if (c == 'h') {
            usage(stdout);
            return 0;
        }
        if (c == ':' || c == '?') {
            const char *arg = argv[optind - 1];
            fprintf(stderr, "tsh: %s %.*s before the command\n",
                    c == ':' ? "a value is missing for" : "unknown flag", (int)strcspn(arg, "="),
                    arg);
            usage(stderr);
            return 2;
        }
        if (tsh_global_flag(&g, "tsh", c, optarg) != 0)
            return 2;
    }
    int nargs = argc - optind;
    char **args = argv + optind;
    if (nargs == 0) {
        usage(stderr);
        return 2;
    }
    int n_words = 0;
    const struct verb *v = find_verb(nargs, args, &n_words);
    if (v == NULL)
        return unknown_command(nargs, args);
    char label[64];
    snprintf(label, sizeof label, "tsh %s", v->words);
    g.verb_words = v->words;
    g.verb_synopsis = v->synopsis;
    g.verb_help = v->help;
    /* The command sees its label as argv[0], then what follows its words. */
    int vargc = nargs - n_words + 1;
    char **vargv = calloc((size_t)vargc + 1, sizeof *vargv);
    if (vargv == NULL) {
        fprintf(stderr, "tsh: out of memory\n");
        return 1;
    }
    vargv[0] = label;
    for (int i = 1; i < vargc; i++)
        vargv[i] = args[n_words + i - 1];
    int rv = v->run(vargc, vargv, &g);
    free(vargv);
    return rv;
}
