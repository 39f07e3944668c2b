/* tools/tctl.c: the administrator's tool.
 *
 *   tctl [-c CONFIG | -i IDENTITY --auth-server ADDR] COMMAND [flags]
 *
 * Run on an auth host with -c, it uses that host's admin identity from
 * data_dir and talks to the local auth server first, failing over to the
 * other members.
 *
 * Every command is one row of the verb table at the end of this file: its
 * words, its synopsis and its help, and a handler that parses its own flags
 * (getopt_long with the command's own option table, plus the global flags) and
 * checks them before anything is dialed. The usage text is generated from the
 * table, so a command cannot be missing from it. All calls to the auth service
 * go through the typed client of auth/client.h. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/audit.h"
#include "auth/auth.h"
#include "auth/rbac.h"
#include "auth/recordings.h"
#include "lib/config.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "lib/yaml.h"
#include "lib/yaml_mp.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

enum format { FMT_DEFAULT, FMT_TEXT, FMT_JSON, FMT_YAML };

struct verb;

struct tctl {
    struct rp_config cfg;
    const char *config_path;
    const char *identity; /* -i: an identity file from tctl auth sign --format=file */
    const char *auth_server;
    const struct verb *verb;
    char label[64]; /* "tctl tokens add": how messages name the command */
    enum format format;
    struct auth_client *client;
};

/* A command: @words select it ("tokens add"), @synopsis shows its arguments and
 * flags, @summary says in a line what it does, @help (may be NULL) more. @run gets
 * argv[0] = the label and then every argument after the words. */
struct verb {
    const char *words;
    const char *synopsis;
    const char *summary;
    const char *help;
    int (*run)(struct tctl *t, int argc, char **argv);
};

static const struct verb verbs[];
static const size_t n_verbs;

/* ---- usage, generated from the verb table --------------------------------- */

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
    fprintf(f, "usage: tctl [-c CONFIG | -i IDENTITY --auth-server ADDR] COMMAND [flags]\n"
               "\n"
               "Commands:\n");
    for (size_t i = 0; i < n_verbs; i++)
        print_verb_line(f, &verbs[i]);
    fprintf(
        f, "\n"
           "Global flags (before or after the command):\n"
           "  -c, --config FILE       the auth server's raftport.yaml (its data_dir holds the\n"
           "                          identity)\n"
           "  -i, --identity FILE     a user's identity file (tctl auth sign --format=file);\n"
           "                          needs --auth-server; the user's roles decide what it may do\n"
           "      --auth-server ADDR  address of an auth server (default: from the config)\n"
           "  -d, --debug             log at debug level\n"
           "  -h, --help              this text; after a command, that command's help\n"
           "\n"
           "Run 'tctl help COMMAND' for the flags of a command.\n");
}

static void verb_help(FILE *f, const struct verb *v)
{
    fprintf(f, "usage: tctl %s%s%s\n\n%s\n", v->words, v->synopsis[0] ? " " : "", v->synopsis,
            v->summary);
    if (v->help)
        fprintf(f, "\n%s", v->help);
}

/* Prints "tctl WORDS: MESSAGE; usage: tctl WORDS SYNOPSIS" and returns 2, the exit
 * status of a usage error. */
static int usage_error(const struct tctl *t, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_error(const struct tctl *t, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "%s: ", t->label);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "; usage: tctl %s%s%s\n", t->verb->words, t->verb->synopsis[0] ? " " : "",
            t->verb->synopsis);
    return 2;
}

/* ---- flags ------------------------------------------------------------------ */

/* Codes of the long-only flags; each command's table uses the ones it takes. */
enum {
    O_AUTH = 256,
    O_FORMAT,
    O_TTL,
    O_TYPE,
    O_STALE,
    O_SINCE,
    O_UNTIL,
    O_USER,
    O_LIMIT,
    O_ROLES,
    O_LOGINS,
    O_SET_ROLES,
    O_WITH_SECRETS,
    O_HOST,
    O_ROLE,
    O_LOGIN,
    O_SERVER_ID,
    O_MESSAGE,
    O_PARTIAL,
};

/* Accepted by every command, before it or among its own flags (as before the
 * verb table, so that `tctl status -c FILE` keeps working). */
static const struct option global_opts[] = {
    {"config", required_argument, NULL, 'c'},
    {"identity", required_argument, NULL, 'i'},
    {"auth-server", required_argument, NULL, O_AUTH},
    {"debug", no_argument, NULL, 'd'},
    {"help", no_argument, NULL, 'h'},
};
#define GLOBAL_SHORTS "c:i:dh"

enum { FLAGS_END = 0, FLAGS_HELP = -1, FLAGS_BAD = -2 };

struct flags {
    struct tctl *t;
    int argc;
    char **argv;
    struct option opts[32];
    char shorts[32];
};

/* Prepares parsing of a command's flags: its own table @own (ending with a zero
 * row) and short flags @own_shorts (getopt syntax; may be NULL) plus the globals. */
static void flags_init(struct flags *f, struct tctl *t, int argc, char **argv,
                       const struct option *own, const char *own_shorts)
{
    size_t n = 0;
    f->t = t;
    f->argc = argc;
    f->argv = argv;
    for (; own != NULL && own->name != NULL; own++) {
        if (n + ARRAY_LEN(global_opts) + 1 >= ARRAY_LEN(f->opts))
            abort(); /* a command's table outgrew struct flags: a programming error */
        f->opts[n++] = *own;
    }
    for (size_t i = 0; i < ARRAY_LEN(global_opts); i++)
        f->opts[n++] = global_opts[i];
    memset(&f->opts[n], 0, sizeof f->opts[n]);
    /* ':' first: a missing value is reported as such, not as an unknown flag. */
    snprintf(f->shorts, sizeof f->shorts, ":%s%s", own_shorts ? own_shorts : "", GLOBAL_SHORTS);
    optind = 0; /* glibc: start over, with the new option string */
    opterr = 0; /* the messages are ours */
}

/* The flag that getopt could not take, as the user wrote it (without "=value"). */
static void bad_flag_name(const struct flags *f, char *out, size_t n)
{
    const char *arg = optind > 0 && optind <= f->argc ? f->argv[optind - 1] : "";
    if (optopt != 0 && (arg[0] != '-' || arg[1] != '-')) {
        snprintf(out, n, "-%c", optopt);
        return;
    }
    size_t len = strcspn(arg, "=");
    snprintf(out, n, "%.*s", (int)len, arg);
}

/* True if @name ("--stale") is a long flag of the command: getopt refuses a known
 * flag that takes no value when it is given one ("--stale=1"). */
static bool flag_known(const struct flags *f, const char *name)
{
    if (strncmp(name, "--", 2) != 0)
        return false;
    for (const struct option *o = f->opts; o->name != NULL; o++) {
        if (strcmp(o->name, name + 2) == 0)
            return true;
    }
    return false;
}

/* The next flag of the command: its code (> 0), FLAGS_END when only positional
 * arguments are left (from optind), FLAGS_HELP after printing the command's help,
 * FLAGS_BAD after printing a usage error. Global flags are handled here. */
static int flags_next(struct flags *f)
{
    struct tctl *t = f->t;
    for (;;) {
        int c = getopt_long(f->argc, f->argv, f->shorts, f->opts, NULL);
        char name[64];
        switch (c) {
        case -1:
            return FLAGS_END;
        case 'c':
            t->config_path = optarg;
            break;
        case 'i':
            t->identity = optarg;
            break;
        case O_AUTH:
            if (rp_check_hostport(optarg) != 0) {
                fprintf(stderr, "%s: --auth-server: %s\n", t->label, rp_errmsg());
                return FLAGS_BAD;
            }
            t->auth_server = optarg;
            break;
        case 'd':
            rp_log_set_level(RP_LOG_DEBUG);
            break;
        case 'h':
            verb_help(stdout, t->verb);
            return FLAGS_HELP;
        case ':':
            bad_flag_name(f, name, sizeof name);
            usage_error(t, "flag %s needs a value", name);
            return FLAGS_BAD;
        case '?':
            bad_flag_name(f, name, sizeof name);
            usage_error(t, flag_known(f, name) ? "flag %s takes no value" : "unknown flag %s",
                        name);
            return FLAGS_BAD;
        default:
            return c;
        }
    }
}

/* After a command's flag loop ended with @c: returns the exit status for help (0)
 * or a usage error (2), or -1 to go on, with @args/@nargs the positional arguments,
 * checked to number between @min and @max. */
static int flags_done(struct flags *f, int c, int min, int max, char ***args, int *nargs)
{
    if (c == FLAGS_HELP)
        return 0;
    if (c == FLAGS_BAD)
        return 2;
    *args = f->argv + optind;
    *nargs = f->argc - optind;
    if (*nargs > max)
        return usage_error(f->t, "unexpected argument '%s'", (*args)[max]);
    if (*nargs < min)
        return usage_error(f->t, "missing argument%s", min - *nargs > 1 ? "s" : "");
    return -1;
}

/* The flag parsing of a command that has only the global flags: -1 to go on with
 * @min..@max positional arguments in @args/@nargs, else the exit status. */
static int no_own_flags(struct tctl *t, int argc, char **argv, int min, int max, char ***args,
                        int *nargs)
{
    struct flags f;
    int c;
    flags_init(&f, t, argc, argv, NULL, NULL);
    while ((c = flags_next(&f)) > 0) {
        /* flags_next handles every global flag; there are no others */
    }
    return flags_done(&f, c, min, max, args, nargs);
}

/* The flag parsing of a command whose one own flag, --@name (code @code), takes a
 * value: *@value gets it (NULL if not given); otherwise as no_own_flags. */
static int one_value_flag(struct tctl *t, int argc, char **argv, const char *name, int code,
                          const char **value, int min, int max, char ***args, int *nargs)
{
    const struct option own[] = {
        {name, required_argument, NULL, code},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    int c;
    *value = NULL;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        if (c == code)
            *value = optarg;
    }
    return flags_done(&f, c, min, max, args, nargs);
}

static int parse_format(struct tctl *t, const char *arg)
{
    if (strcmp(arg, "json") == 0)
        t->format = FMT_JSON;
    else if (strcmp(arg, "text") == 0)
        t->format = FMT_TEXT;
    else if (strcmp(arg, "yaml") == 0)
        t->format = FMT_YAML;
    else {
        fprintf(stderr, "%s: --format=%s: expected text, json or yaml\n", t->label, arg);
        return 2;
    }
    return 0;
}

static int parse_ttl(const struct tctl *t, const char *arg, uint64_t *ms)
{
    if (rp_parse_duration_ms(arg, ms) != 0) {
        fprintf(stderr, "%s: --ttl: %s\n", t->label, rp_errmsg());
        return 2;
    }
    return 0;
}

/* Splits "a,b,c" (at most 64 items, none empty) into @items, pointing into @buf.
 * 0, or 2 after printing the error. */
static int split_list(const char *flag, const char *list, char *buf, size_t buflen,
                      const char *items[64], size_t *n)
{
    snprintf(buf, buflen, "%s", list);
    *n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (*n == 64) {
            fprintf(stderr, "tctl: %s: at most 64 items\n", flag);
            return 2;
        }
        items[(*n)++] = tok;
    }
    if (*n == 0 || strlen(list) >= buflen || strstr(list, ",,") || list[0] == ',' ||
        list[strlen(list) - 1] == ',') {
        fprintf(stderr, "tctl: %s=%s: expected a comma-separated list without empty items\n", flag,
                list);
        return 2;
    }
    return 0;
}

/* ---- connecting ------------------------------------------------------------- */

static int fail(const char *what)
{
    fprintf(stderr, "tctl: %s: %s\n", what, rp_errmsg());
    return 1;
}

/* Prints a failed call as "tctl WHAT: message (code)"; returns 1. */
static int call_failed(const struct tctl *t, int rv)
{
    fprintf(stderr, "%s: %s (%s)\n", t->label, rp_errmsg(), rp_strerror(rv));
    return 1;
}

static char *local_addr(const char *listen)
{
    /* A wildcard listener is reached on loopback from the same host. */
    char *a = strdup(listen);
    if (a && strncmp(a, "0.0.0.0:", 8) == 0) {
        char *b = malloc(strlen(a) + 3);
        if (b)
            sprintf(b, "127.0.0.1:%s", a + 8);
        free(a);
        a = b;
    }
    return a;
}

/* A TLS client context from an identity file: the OpenSSH private key, then PEM
 * certificates, the first ours and the rest the CA. */
static int identity_ctx(const char *path, SSL_CTX **out)
{
    char *text = NULL;
    size_t n = 0;
    int rv = rp_read_file(path, 1 << 20, &text, &n);
    if (rv != 0)
        return rv;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL, *ca = NULL;
    const char *kb = strstr(text, "-----BEGIN OPENSSH PRIVATE KEY-----");
    const char *ke = kb ? strstr(kb, "-----END OPENSSH PRIVATE KEY-----") : NULL;
    const char *c1 = strstr(text, "-----BEGIN CERTIFICATE-----");
    const char *c2 = c1 ? strstr(c1 + 1, "-----BEGIN CERTIFICATE-----") : NULL;
    if (kb == NULL || ke == NULL || c1 == NULL || c2 == NULL) {
        rv = rp_err(RP_EINVAL,
                    "%s: not an identity file (expected an OpenSSH private key and two "
                    "PEM certificates: make one with tctl auth sign --user=NAME --format=file)",
                    path);
    } else if ((rv = rp_ssh_privkey_parse(kb, (size_t)(ke - kb) + 33, &key, NULL)) != 0 ||
               (rv = rp_tls_cert_from_pem(c1, (size_t)(c2 - c1), &cert)) != 0 ||
               (rv = rp_tls_cert_from_pem(c2, strlen(c2), &ca)) != 0) {
        rv = rp_err(rv, "%s: %s", path, rp_errmsg());
    } else if ((*out = rp_tls_client_ctx(ca, cert, key)) == NULL) {
        rv = rp_err(RP_ETLS, "%s: the key does not match the certificate", path);
    }
    OPENSSL_cleanse(text, n);
    free(text);
    EVP_PKEY_free(key);
    X509_free(cert);
    X509_free(ca);
    return rv;
}

/* Makes t->client from -i or -c. 0, or the exit status after printing why not. */
static int connect_client(struct tctl *t)
{
    SSL_CTX *ctx = NULL;
    const char *addrs[3];
    size_t n = 0;
    char *local = NULL;
    if (t->identity != NULL) {
        if (t->auth_server == NULL) {
            fprintf(stderr, "tctl: -i needs --auth-server=HOST:PORT\n");
            return 2;
        }
        if (identity_ctx(t->identity, &ctx) != 0)
            return fail("identity");
        addrs[0] = t->auth_server;
        int rv = auth_client_new(&t->client, ctx, addrs, 1);
        SSL_CTX_free(ctx);
        return rv != 0 ? fail("connect") : 0;
    }
    if (t->config_path == NULL) {
        rp_err(RP_EINVAL, "no identity: run tctl on an auth host with -c CONFIG");
        return fail("connect");
    }
    if (rp_config_load(&t->cfg, t->config_path) != 0) {
        fprintf(stderr, "tctl: %s\n", rp_errmsg());
        return 1;
    }
    if (auth_load_admin_ctx(t->cfg.data_dir, &ctx) != 0)
        return fail("loading the admin identity (has this auth server started once?)");
    if (t->auth_server)
        addrs[n++] = t->auth_server;
    if (t->cfg.auth_enabled) {
        local =
            local_addr(t->cfg.auth_public_addr ? t->cfg.auth_public_addr : t->cfg.auth_listen_addr);
        addrs[n++] = local;
    }
    if (t->cfg.auth_server)
        addrs[n++] = t->cfg.auth_server;
    int rv = auth_client_new(&t->client, ctx, addrs, n);
    SSL_CTX_free(ctx);
    free(local);
    if (rv != 0)
        return fail("connect");
    return 0;
}

/* ---- printing --------------------------------------------------------------- */

static void print_json(const msgpack_object *o)
{
    struct rp_buf out;
    rp_buf_init(&out);
    rp_json_from_mp(&out, o, 2);
    fwrite(out.data, 1, out.len, stdout);
    fputc('\n', stdout);
    rp_buf_free(&out);
}

/* Copies a string field for printing ("" if absent). */
static const char *field(const msgpack_object *map, const char *key, char *buf, size_t n)
{
    const char *s;
    size_t len;
    if (rp_mp_get_str(map, key, &s, &len) != 0)
        return "";
    snprintf(buf, n, "%.*s", (int)len, s);
    return buf;
}

static uint64_t ufield(const msgpack_object *map, const char *key)
{
    uint64_t v = 0;
    rp_mp_get_u64(map, key, &v);
    return v;
}

static void human_bytes(uint64_t b, char *out, size_t n)
{
    if (b >= (1ull << 30))
        snprintf(out, n, "%.1f GiB", (double)b / (1ull << 30));
    else
        snprintf(out, n, "%.1f MiB", (double)b / (1ull << 20));
}

/* ---- status ----------------------------------------------------------------- */

/* The certificate authorities: type, algorithm, fingerprint, rotation state. A CA
 * that cannot be read is shown as such; status itself does not fail for it. */
static void print_ca_table(struct tctl *t)
{
    static const char *const types[] = {"tls", "user", "host"};
    printf("\n%-5s %-10s %-52s %s\n", "CA", "Algorithm", "Fingerprint", "Rotation");
    for (size_t i = 0; i < 3; i++) {
        struct auth_reply reply;
        const msgpack_object *res;
        if (auth_client_get(t->client, AUTH_KIND_CA, types[i], 0, &reply, &res, NULL) != 0) {
            printf("%-5s %-10s %-52s %s\n", types[i], "-", "(not readable)", "-");
            continue;
        }
        const msgpack_object *spec = rp_mp_get(res, "spec");
        const msgpack_object *keys = rp_mp_get(rp_mp_get(spec, "active_keys"), i ? "ssh" : "tls");
        char fp[128] = "-", alg[16] = "-", rot[32] = "standby";
        field(rp_mp_get(spec, "rotation"), "state", rot, sizeof rot);
        if (rot[0] == '\0')
            snprintf(rot, sizeof rot, "standby");
        if (keys && keys->type == MSGPACK_OBJECT_ARRAY && keys->via.array.size > 0) {
            const char *v;
            size_t n;
            const msgpack_object *k = &keys->via.array.ptr[0];
            if (i == 0 && rp_mp_get_str(k, "cert", &v, &n) == 0) {
                X509 *x = NULL;
                if (rp_tls_cert_from_pem(v, n, &x) == 0) {
                    unsigned char md[32];
                    unsigned mdlen = 0;
                    X509_digest(x, EVP_sha256(), md, &mdlen);
                    int len = snprintf(fp, sizeof fp, "SHA256:");
                    for (unsigned j = 0; j < 16 && len < (int)sizeof fp - 3; j++)
                        len += snprintf(fp + len, sizeof fp - (size_t)len, "%02x", md[j]);
                    snprintf(alg, sizeof alg, "ECDSA-P256");
                    X509_free(x);
                }
            } else if (i > 0 && rp_mp_get_str(k, "public_key", &v, &n) == 0) {
                char line[1024];
                EVP_PKEY *pk = NULL;
                snprintf(line, sizeof line, "%.*s", (int)n, v);
                if (rp_ssh_pubkey_parse(line, &pk, NULL) == 0) {
                    rp_ssh_fingerprint(pk, fp, sizeof fp);
                    snprintf(alg, sizeof alg, "%s",
                             EVP_PKEY_id(pk) == EVP_PKEY_ED25519 ? "Ed25519" : "other");
                    EVP_PKEY_free(pk);
                }
            }
        }
        printf("%-5s %-10s %-52s %s\n", types[i], alg, fp, rot);
        auth_reply_free(&reply);
    }
}

static int show_status(struct tctl *t)
{
    struct auth_status *st = calloc(1, sizeof *st);
    if (st == NULL)
        return fail("status");
    int rv = auth_client_status(t->client, st);
    if (rv != 0) {
        free(st);
        return call_failed(t, rv);
    }
    if (t->format == FMT_JSON) {
        /* Exactly the documented fields, so that scripts can rely on them. */
        struct rp_buf doc;
        msgpack_packer pk;
        struct rp_mp_map m;
        rp_buf_init(&doc);
        rp_mp_packer_init(&pk, &doc);
        rp_mp_map_begin(&pk, &m);
        rp_mp_map_str(&m, "cluster_name", st->cluster_name);
        rp_mp_map_str(&m, "ca_pin", st->ca_pin);
        rp_mp_map_u64(&m, "leader_id", st->leader_id);
        rp_mp_map_u64(&m, "term", st->term);
        msgpack_pack_array(rp_mp_map_key(&m, "members"), (uint32_t)st->n_members);
        for (size_t i = 0; i < st->n_members; i++) {
            const struct auth_member *mb = &st->members[i];
            struct rp_mp_map mm;
            rp_mp_map_begin(&pk, &mm);
            rp_mp_map_u64(&mm, "id", mb->id);
            rp_mp_map_str(&mm, "address", mb->address);
            rp_mp_map_str(&mm, "role", mb->role);
            rp_mp_map_str(&mm, "state", mb->state);
            rp_mp_map_u64(&mm, "last_applied", mb->last_applied);
            rp_mp_map_end(&mm);
        }
        rp_mp_map_end(&m);
        msgpack_unpacked out;
        if (rp_mp_parse(doc.data, doc.len, &out) == 0) {
            print_json(&out.data);
            msgpack_unpacked_destroy(&out);
        }
        rp_buf_free(&doc);
        free(st);
        return 0;
    }
    printf("Cluster:  %s\n", st->cluster_name);
    printf("CA pin:   %s\n", st->ca_pin);
    if (st->leader_id)
        printf("Leader:   %" PRIu64 " (term %" PRIu64 ")\n", st->leader_id, st->term);
    else
        printf("Leader:   none (term %" PRIu64 "): no quorum, or an election is running\n",
               st->term);
    printf("\n%-4s %-21s %-21s %-8s %-12s %-13s %s\n", "ID", "Raft address", "API address", "Role",
           "State", "Last applied", "Disk free");
    for (size_t i = 0; i < st->n_members; i++) {
        const struct auth_member *mb = &st->members[i];
        char disk[32];
        if (mb->reachable)
            human_bytes(mb->disk_free, disk, sizeof disk);
        else
            snprintf(disk, sizeof disk, "-");
        printf("%-4" PRIu64 " %-21s %-21s %-8s %-12s %-13" PRIu64 " %s\n", mb->id, mb->address,
               mb->api_address, mb->role, mb->state, mb->last_applied, disk);
    }
    free(st);
    print_ca_table(t);
    return 0;
}

static const struct option format_opts[] = {
    {"format", required_argument, NULL, O_FORMAT},
    {NULL, 0, NULL, 0},
};

/* tctl status, tctl auth members ls. */
static int cmd_status(struct tctl *t, int argc, char **argv)
{
    struct flags f;
    char **args;
    int c, nargs, rv;
    flags_init(&f, t, argc, argv, format_opts, NULL);
    while ((c = flags_next(&f)) > 0) {
        if (c == O_FORMAT && parse_format(t, optarg) != 0)
            return 2;
    }
    if ((rv = flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    if ((rv = connect_client(t)) != 0)
        return rv;
    return show_status(t);
}

static int cmd_members_rm(struct tctl *t, int argc, char **argv)
{
    char **args;
    int nargs, rv;
    if ((rv = no_own_flags(t, argc, argv, 1, 1, &args, &nargs)) >= 0)
        return rv;
    char *end;
    unsigned long long id = strtoull(args[0], &end, 10);
    if (args[0][0] == '\0' || *end != '\0' || id == 0) {
        fprintf(stderr, "tctl auth members rm: '%s' is not a member id (a positive integer)\n",
                args[0]);
        return 2;
    }
    if ((rv = connect_client(t)) != 0)
        return rv;
    if ((rv = auth_client_member_rm(t->client, id)) != 0)
        return call_failed(t, rv);
    printf("Auth server %llu has been removed from the cluster.\n", id);
    return 0;
}

/* ---- tokens ----------------------------------------------------------------- */

static const char *advertised_server(const struct tctl *t)
{
    return t->auth_server
               ? t->auth_server
               : (t->cfg.auth_public_addr ? t->cfg.auth_public_addr : t->cfg.auth_listen_addr);
}

static int cmd_tokens_add(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"type", required_argument, NULL, O_TYPE},
        {"ttl", required_argument, NULL, O_TTL},
        {"format", required_argument, NULL, O_FORMAT},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    const char *type = NULL;
    uint64_t ttl = 30 * 60 * 1000;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        if (c == O_TYPE)
            type = optarg;
        if ((c == O_TTL && parse_ttl(t, optarg, &ttl) != 0) ||
            (c == O_FORMAT && parse_format(t, optarg) != 0))
            return 2;
    }
    if ((rv = flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    /* Checked here, so that a typo is named even when no auth server answers. */
    if (type == NULL ||
        (strcmp(type, "auth") != 0 && strcmp(type, "node") != 0 && strcmp(type, "proxy") != 0)) {
        fprintf(stderr, "tctl tokens add: --type=%s: expected auth, node or proxy\n",
                type ? type : "");
        return 2;
    }
    if (ttl > 48ull * 3600 * 1000) {
        fprintf(stderr, "tctl tokens add: --ttl: at most 48h\n");
        return 2;
    }
    if ((rv = connect_client(t)) != 0)
        return rv;
    struct auth_token tok;
    if ((rv = auth_client_token_add(t->client, type, ttl, &tok)) != 0)
        return call_failed(t, rv);
    char when[40];
    rp_format_time(tok.expires_ms, when, sizeof when);
    if (t->format == FMT_JSON) {
        struct rp_buf out;
        rp_buf_init(&out);
        rp_buf_append_str(&out, "{\"token\": ");
        rp_json_str(&out, tok.token, strlen(tok.token));
        rp_buf_append_str(&out, ", \"type\": ");
        rp_json_str(&out, tok.type, strlen(tok.type));
        rp_buf_printf(&out, ", \"expires\": \"%s\", \"ca_pin\": ", when);
        rp_json_str(&out, tok.ca_pin, strlen(tok.ca_pin));
        rp_buf_append_str(&out, "}\n");
        fwrite(out.data, 1, out.len, stdout);
        OPENSSL_cleanse(out.data, out.cap);
        rp_buf_free(&out);
    } else {
        char ttl_s[32];
        const char *server = advertised_server(t);
        rp_format_duration(ttl, ttl_s, sizeof ttl_s);
        printf("The invite token: %s\n", tok.token);
        printf("This token will expire in %s (at %s).\n\n", ttl_s, when);
        if (strcmp(tok.type, "auth") == 0) {
            printf("Run this on the new auth server, with its own raft id and addresses in its\n"
                   "config file, to join the cluster:\n\n");
            printf("> raftport start -c /path/to/raftport.yaml --token=%s --ca-pin=%s "
                   "--auth-server=%s\n",
                   tok.token, tok.ca_pin, server);
        } else {
            printf("Give it to the new %s with the CA pin and an auth server address:\n\n",
                   tok.type);
            printf("  token:       %s\n  ca_pin:      %s\n  auth_server: %s\n", tok.token,
                   tok.ca_pin, server);
        }
    }
    OPENSSL_cleanse(&tok, sizeof tok);
    return 0;
}

/* The read flags of the listing commands. */
struct list_flags {
    bool stale, with_secrets;
};

static unsigned read_flags(const struct list_flags *lf)
{
    return (lf->stale ? AUTH_READ_STALE : 0) | (lf->with_secrets ? AUTH_READ_SECRETS : 0);
}

/* Parses the flags of a listing command (--format, --stale) with no arguments. -1
 * to go on, else the exit status. */
static int list_cmd_flags(struct tctl *t, int argc, char **argv, struct list_flags *lf)
{
    static const struct option own[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {"stale", no_argument, NULL, O_STALE},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs;
    memset(lf, 0, sizeof *lf);
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        if (c == O_FORMAT && parse_format(t, optarg) != 0)
            return 2;
        if (c == O_STALE)
            lf->stale = true;
    }
    return flags_done(&f, c, 0, 0, &args, &nargs);
}

/* The start of "<kind> ls": parses its flags, connects and lists every @kind
 * resource into @reply (auth_reply_free it) and @items. -1 to go on, else the exit
 * status. */
static int list_all(struct tctl *t, int argc, char **argv, const char *kind,
                    struct auth_reply *reply, const msgpack_object **items)
{
    struct list_flags lf;
    int rv;
    if ((rv = list_cmd_flags(t, argc, argv, &lf)) >= 0 || (rv = connect_client(t)) != 0)
        return rv;
    if ((rv = auth_client_list(t->client, kind, NULL, 0, read_flags(&lf), reply, items, NULL)) != 0)
        return call_failed(t, rv);
    return -1;
}

/* The end of a listing printed into @out: closes its JSON array of @n items when
 * printing JSON, writes it to stdout and frees it and @reply. */
static int print_listing(const struct tctl *t, struct rp_buf *out, uint32_t n,
                         struct auth_reply *reply)
{
    if (t->format == FMT_JSON)
        rp_buf_append_str(out, n ? "\n]\n" : "]\n");
    fwrite(out->data, 1, out->len, stdout);
    rp_buf_free(out);
    auth_reply_free(reply);
    return 0;
}

static int cmd_tokens_ls(struct tctl *t, int argc, char **argv)
{
    struct auth_reply reply;
    const msgpack_object *items;
    int rv = list_all(t, argc, argv, AUTH_KIND_TOKEN, &reply, &items);
    if (rv >= 0)
        return rv;
    uint32_t n = items->via.array.size;
    struct rp_buf out;
    rp_buf_init(&out);
    if (t->format == FMT_JSON)
        rp_buf_append_str(&out, "[");
    else
        rp_buf_printf(&out, "%-34s %-6s %s\n", "Token", "Type", "Expiry Time (UTC)");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *it = &items->via.array.ptr[i];
        const msgpack_object *md = rp_mp_get(it, "metadata");
        const msgpack_object *roles = rp_mp_get(rp_mp_get(it, "spec"), "roles");
        char name[128], when[40], type[16] = "";
        field(md, "name", name, sizeof name);
        rp_format_time(ufield(md, "expires"), when, sizeof when);
        if (roles && roles->type == MSGPACK_OBJECT_ARRAY && roles->via.array.size > 0 &&
            roles->via.array.ptr[0].type == MSGPACK_OBJECT_STR) {
            const msgpack_object *r = &roles->via.array.ptr[0];
            snprintf(type, sizeof type, "%.*s", (int)r->via.str.size, r->via.str.ptr);
            for (char *p = type; *p; p++)
                *p = (char)(*p >= 'A' && *p <= 'Z' ? *p + 32 : *p);
        }
        if (t->format == FMT_JSON) {
            rp_buf_append_str(&out, i ? ",\n  {\"token\": " : "\n  {\"token\": ");
            rp_json_str(&out, name, strlen(name));
            rp_buf_append_str(&out, ", \"type\": ");
            rp_json_str(&out, type, strlen(type));
            rp_buf_printf(&out, ", \"expires\": \"%s\"}", when);
        } else {
            rp_buf_printf(&out, "%-34s %-6s %s\n", name, type, when);
        }
    }
    return print_listing(t, &out, n, &reply);
}

static int cmd_tokens_rm(struct tctl *t, int argc, char **argv)
{
    char **args;
    int nargs, rv;
    if ((rv = no_own_flags(t, argc, argv, 1, 1, &args, &nargs)) >= 0 ||
        (rv = connect_client(t)) != 0)
        return rv;
    if ((rv = auth_client_delete(t->client, AUTH_KIND_TOKEN, args[0], NULL)) != 0)
        return call_failed(t, rv);
    printf("Token %s has been deleted.\n", args[0]);
    return 0;
}

/* ---- resources -------------------------------------------------------------- */

/* Teleport accepts a kind's plural wherever it takes the kind. */
static const char *const kind_plurals[][2] = {
    {"locks", "lock"},
    {"roles", "role"},
    {"users", "user"},
    {"tokens", "token"},
    {"cert_authorities", "cert_authority"},
    {"auth_servers", "auth_server"},
};

static const char *singular_kind(const char *kind)
{
    for (size_t i = 0; i < ARRAY_LEN(kind_plurals); i++) {
        if (strcmp(kind, kind_plurals[i][0]) == 0)
            return kind_plurals[i][1];
    }
    return kind;
}

/* "user=alice,role=dev" of a lock's spec.target into @out. */
static void lock_target(const msgpack_object *spec, char *out, size_t n)
{
    static const char *const keys[] = {"user", "role", "login", "server_id"};
    const msgpack_object *target = rp_mp_get(spec, "target");
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < ARRAY_LEN(keys); i++) {
        char v[256];
        if (field(target, keys[i], v, sizeof v)[0] == '\0' || len >= n)
            continue;
        len += (size_t)snprintf(out + len, n - len, "%s%s=%s", len ? "," : "", keys[i], v);
    }
}

/* The table of tctl locks ls / get locks --format=text: one lock a line. */
static void print_lock_table(const msgpack_object *o)
{
    uint32_t n = o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 1;
    struct rp_buf out;
    rp_buf_init(&out);
    rp_buf_printf(&out, "%-36s %-32s %-30s %s\n", "ID", "Target", "Message", "Expires (UTC)");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *res = o->type == MSGPACK_OBJECT_ARRAY ? &o->via.array.ptr[i] : o;
        const msgpack_object *spec = rp_mp_get(res, "spec");
        char name[64], target[512], msg[512], when[40] = "never";
        uint64_t expires = ufield(rp_mp_get(res, "metadata"), "expires");
        if (expires)
            rp_format_time(expires, when, sizeof when);
        lock_target(spec, target, sizeof target);
        field(spec, "message", msg, sizeof msg);
        rp_buf_printf(&out, "%-36s %-32s %-30s %s\n",
                      field(rp_mp_get(res, "metadata"), "name", name, sizeof name), target,
                      msg[0] ? msg : "-", when);
    }
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
}

/* Prints resources (one object, or an array of them) as --format asks: YAML
 * documents (the default, what tctl create reads back), JSON, or a table. */
static void print_resources(struct tctl *t, const char *kind, const msgpack_object *o,
                            bool *first_doc)
{
    if (o == NULL)
        return;
    if (t->format == FMT_JSON) {
        print_json(o);
        return;
    }
    if (t->format == FMT_TEXT && strcmp(kind, AUTH_KIND_LOCK) == 0) {
        print_lock_table(o);
        return;
    }
    uint32_t n = o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 1;
    struct rp_buf out;
    rp_buf_init(&out);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *res = o->type == MSGPACK_OBJECT_ARRAY ? &o->via.array.ptr[i] : o;
        if (t->format == FMT_TEXT) {
            char k[64], name[256];
            if (*first_doc)
                rp_buf_printf(&out, "%-16s %s\n", "Kind", "Name");
            rp_buf_printf(&out, "%-16s %s\n", field(res, "kind", k, sizeof k),
                          field(rp_mp_get(res, "metadata"), "name", name, sizeof name));
        } else {
            rp_buf_append_str(&out, *first_doc ? "" : "---\n");
            rp_ymp_to_yaml(&out, res);
        }
        *first_doc = false;
    }
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
}

/* The kinds `tctl get all` exports: what tctl create -f can restore on another
 * cluster. Certificate authorities and auth servers belong to the cluster that
 * made them and are left out. */
static const char *const all_kinds[] = {"role", "user", "token", NULL};
/* The kinds tctl create takes. */
static const char *const create_kinds[] = {"role", "user", "token", AUTH_KIND_LOCK, NULL};

static int cmd_get(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {"stale", no_argument, NULL, O_STALE},
        {"with-secrets", no_argument, NULL, O_WITH_SECRETS},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    struct list_flags lf = {0};
    char **args;
    int c, nargs, rv;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        if (c == O_FORMAT && parse_format(t, optarg) != 0)
            return 2;
        lf.stale = lf.stale || c == O_STALE;
        lf.with_secrets = lf.with_secrets || c == O_WITH_SECRETS;
    }
    if ((rv = flags_done(&f, c, 1, 1, &args, &nargs)) >= 0)
        return rv;
    const char *what = args[0];
    char kind[64], name[256] = "";
    const char *slash = strchr(what, '/');
    size_t kl = slash ? (size_t)(slash - what) : strlen(what);
    if (kl == 0 || kl >= sizeof kind || (slash && strlen(slash + 1) >= sizeof name)) {
        fprintf(stderr, "tctl get: expected KIND, KIND/NAME or all, got '%s'\n", what);
        return 2;
    }
    memcpy(kind, what, kl);
    kind[kl] = '\0';
    const char *singular = singular_kind(kind);
    if (singular != kind)
        snprintf(kind, sizeof kind, "%s", singular);
    if (slash)
        snprintf(name, sizeof name, "%s", slash + 1);
    if ((rv = connect_client(t)) != 0)
        return rv;
    struct auth_reply reply;
    const msgpack_object *items;
    bool first = true;
    if (strcmp(kind, "all") == 0 && !slash) {
        if (t->format == FMT_JSON)
            printf("[\n");
        for (size_t k = 0; all_kinds[k]; k++) {
            if ((rv = auth_client_list(t->client, all_kinds[k], NULL, 0, read_flags(&lf), &reply,
                                       &items, NULL)) != 0)
                return call_failed(t, rv);
            if (t->format == FMT_JSON) {
                for (uint32_t i = 0; i < items->via.array.size; i++) {
                    struct rp_buf j;
                    rp_buf_init(&j);
                    rp_json_from_mp(&j, &items->via.array.ptr[i], 2);
                    printf("%s%.*s", first ? "" : ",\n", (int)j.len, (char *)j.data);
                    first = false;
                    rp_buf_free(&j);
                }
            } else {
                print_resources(t, all_kinds[k], items, &first);
            }
            auth_reply_free(&reply);
        }
        if (t->format == FMT_JSON)
            printf("\n]\n");
        return 0;
    }
    if (name[0]) {
        const msgpack_object *res;
        if ((rv = auth_client_get(t->client, kind, name, read_flags(&lf), &reply, &res, NULL)) != 0)
            return call_failed(t, rv);
        print_resources(t, kind, res, &first);
    } else {
        if ((rv = auth_client_list(t->client, kind, NULL, 0, read_flags(&lf), &reply, &items,
                                   NULL)) != 0)
            return call_failed(t, rv);
        print_resources(t, kind, items, &first);
    }
    auth_reply_free(&reply);
    return 0;
}

/* Checks one document of tctl create: a kind it takes, a name, and for roles what
 * the RBAC module says. 0, or 1 after printing the error with FILE:LINE. */
static int check_document(const msgpack_object *doc, struct rp_ymp_lines *lines)
{
    const msgpack_object *kind = rp_mp_get(doc, "kind");
    bool known = false;
    for (size_t k = 0; create_kinds[k]; k++)
        known = known || rp_mp_str_eq(kind, create_kinds[k]);
    if (!known) {
        char kb[64] = "";
        field(doc, "kind", kb, sizeof kb);
        rp_ymp_err(lines, RP_EINVAL, "kind",
                   kb[0] ? "unknown kind '%s', expected role, user, token or lock"
                         : "missing%s, expected role, user, token or lock",
                   kb);
        fprintf(stderr, "tctl create: %s\n", rp_errmsg());
        return 1;
    }
    if (rp_mp_get(rp_mp_get(doc, "metadata"), "name") == NULL) {
        rp_ymp_err(lines, RP_EINVAL, "metadata.name", "missing, expected the name");
        fprintf(stderr, "tctl create: %s\n", rp_errmsg());
        return 1;
    }
    if (rp_mp_str_eq(kind, "role")) {
        struct rbac_role *role = NULL;
        int rv = rbac_role_parse(doc, &role);
        rbac_role_free(role);
        if (rv != 0) {
            rp_ymp_locate(lines, RP_EINVAL);
            fprintf(stderr, "tctl create: %s\n", rp_errmsg());
            return 1;
        }
    }
    return 0;
}

/* tctl create [-f] FILE: every document is checked (kind, and roles by the RBAC
 * module, with FILE:LINE in the message) before the first is sent. */
static int cmd_create(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"force", no_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    bool force = false;
    flags_init(&f, t, argc, argv, own, "f");
    while ((c = flags_next(&f)) > 0)
        force = force || c == 'f';
    if ((rv = flags_done(&f, c, 1, 1, &args, &nargs)) >= 0)
        return rv;
    const char *path = args[0];
    char *text = NULL;
    size_t len = 0;
    if (rp_read_file(path, RP_YAML_MAX_BYTES, &text, &len) != 0) {
        fprintf(stderr, "tctl create: %s\n", rp_errmsg());
        return 1;
    }
    struct rp_ynode **docs = NULL;
    size_t n_docs = 0;
    rv = rp_yaml_parse_all(path, text, len, &docs, &n_docs);
    free(text);
    if (rv != 0) {
        fprintf(stderr, "tctl create: %s\n", rp_errmsg());
        return 1;
    }
    struct rp_buf *res = calloc(n_docs ? n_docs : 1, sizeof *res);
    if (res == NULL) {
        rp_yaml_docs_free(docs, n_docs);
        return fail("create");
    }
    int status = 0;
    size_t n_res = 0;
    for (size_t i = 0; i < n_docs && status == 0; i++) {
        if (docs[i]->type == RP_Y_MAP && docs[i]->n == 0)
            continue; /* an empty document, e.g. after a trailing --- */
        struct rp_ymp_lines lines;
        rp_ymp_lines_init(&lines);
        rp_buf_init(&res[n_res]);
        msgpack_unpacked u;
        if (rp_ymp_from_yaml(docs[i], path, &res[n_res], &lines) != 0 ||
            rp_mp_parse(res[n_res].data, res[n_res].len, &u) != 0) {
            fprintf(stderr, "tctl create: %s\n", rp_errmsg());
            status = 1;
        } else {
            status = check_document(&u.data, &lines);
            msgpack_unpacked_destroy(&u);
        }
        n_res++;
        rp_ymp_lines_free(&lines);
    }
    rp_yaml_docs_free(docs, n_docs);
    if (status == 0 && (rv = connect_client(t)) != 0)
        status = rv;
    for (size_t i = 0; i < n_res && status == 0; i++) {
        msgpack_unpacked u;
        char kind[64] = "", name[256] = "";
        if (rp_mp_parse(res[i].data, res[i].len, &u) == 0) {
            field(&u.data, "kind", kind, sizeof kind);
            field(rp_mp_get(&u.data, "metadata"), "name", name, sizeof name);
            msgpack_unpacked_destroy(&u);
        }
        struct auth_write_result w;
        rv = force ? auth_client_put(t->client, res[i].data, res[i].len, &w)
                   : auth_client_create(t->client, res[i].data, res[i].len, &w);
        if (rv == RP_EEXISTS) {
            fprintf(stderr, "tctl create: %s %s already exists: use -f to overwrite it\n", kind,
                    name);
        } else if (rv != 0) {
            fprintf(stderr, "tctl create: %s %s: %s (%s)\n", kind, name, rp_errmsg(),
                    rp_strerror(rv));
        } else {
            printf("%s \"%s\" has been %s\n", kind, name, force ? "created or updated" : "created");
            fflush(stdout);
            for (size_t k = 0; k < w.n_warnings; k++)
                fprintf(stderr, "warning: %s\n", w.warnings[k]);
            auth_write_result_free(&w);
        }
        if (rv != 0)
            status = 1;
    }
    for (size_t i = 0; i < n_res; i++)
        rp_buf_free(&res[i]);
    free(res);
    return status;
}

static int delete_user(struct tctl *t, const char *name);

static int cmd_rm(struct tctl *t, int argc, char **argv)
{
    char **args;
    int nargs, rv;
    if ((rv = no_own_flags(t, argc, argv, 1, 1, &args, &nargs)) >= 0)
        return rv;
    const char *what = args[0];
    const char *slash = strchr(what, '/');
    if (slash == NULL || slash == what || slash[1] == '\0' || (size_t)(slash - what) >= 64) {
        fprintf(stderr, "tctl rm: expected KIND/NAME (e.g. role/dev), got '%s'\n", what);
        return 2;
    }
    char kind[64];
    snprintf(kind, sizeof kind, "%.*s", (int)(slash - what), what);
    const char *singular = singular_kind(kind);
    if (singular != kind)
        snprintf(kind, sizeof kind, "%s", singular);
    if ((rv = connect_client(t)) != 0)
        return rv;
    if (strcmp(kind, "user") == 0) /* a user's secrets go with it: the users API */
        return delete_user(t, slash + 1);
    if ((rv = auth_client_delete(t->client, kind, slash + 1, NULL)) != 0)
        return call_failed(t, rv);
    printf("%s \"%s\" has been deleted\n", kind, slash + 1);
    return 0;
}

/* ---- users ------------------------------------------------------------------ */

static void print_invite(struct tctl *t, const char *verb, const struct auth_invite *inv,
                         const char *user)
{
    uint64_t now = rp_now_ms();
    uint64_t ttl_min = (inv->expires_ms > now ? inv->expires_ms - now + 30000 : 0) / 60000;
    if (t->format == FMT_JSON) {
        char when[40];
        rp_format_time(inv->expires_ms, when, sizeof when);
        printf("{\"user\": \"%s\", \"token\": \"%s\", \"expires\": \"%s\"}\n", user, inv->token,
               when);
        return;
    }
    printf("User \"%s\" has been %s but requires a password. Share this invite token with the "
           "user to complete the setup; it can be used once, within %lluh%02llum:\n\n  %s\n",
           user, verb, (unsigned long long)(ttl_min / 60), (unsigned long long)(ttl_min % 60),
           inv->token);
}

/* The end of users add / reset: reports the failure @rv of the call, or prints the
 * invite @inv; wipes the token either way. */
static int finish_invite(struct tctl *t, int rv, const char *verb, struct auth_invite *inv,
                         const char *user)
{
    if (rv == 0)
        print_invite(t, verb, inv, user);
    OPENSSL_cleanse(inv, sizeof *inv);
    return rv != 0 ? call_failed(t, rv) : 0;
}

/* The invite TTL of users add / reset: 1h unless --ttl, which must be 1m..48h. */
static int invite_ttl(const struct tctl *t, bool set, uint64_t *ttl)
{
    if (!set) {
        *ttl = 3600 * 1000;
        return 0;
    }
    if (*ttl < 60000 || *ttl > 48ull * 3600 * 1000) {
        fprintf(stderr, "%s: --ttl: between 1m and 48h\n", t->label);
        return 2;
    }
    return 0;
}

static int cmd_users_add(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"roles", required_argument, NULL, O_ROLES},
        {"logins", required_argument, NULL, O_LOGINS},
        {"ttl", required_argument, NULL, O_TTL},
        {"format", required_argument, NULL, O_FORMAT},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    const char *roles = NULL, *logins = NULL;
    uint64_t ttl = 0;
    bool ttl_set = false;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        switch (c) {
        case O_ROLES:
            roles = optarg;
            break;
        case O_LOGINS:
            logins = optarg;
            break;
        case O_TTL:
            ttl_set = true;
            if (parse_ttl(t, optarg, &ttl) != 0)
                return 2;
            break;
        case O_FORMAT:
            if (parse_format(t, optarg) != 0)
                return 2;
            break;
        }
    }
    if ((rv = flags_done(&f, c, 1, 1, &args, &nargs)) >= 0)
        return rv;
    if (roles == NULL) {
        fprintf(stderr, "tctl users add: --roles is required (e.g. --roles=access)\n");
        return 2;
    }
    char rbuf[4096], lbuf[4096];
    const char *role_v[64], *login_v[64];
    size_t n_roles = 0, n_logins = 0;
    if ((rv = invite_ttl(t, ttl_set, &ttl)) != 0 ||
        (rv = split_list("--roles", roles, rbuf, sizeof rbuf, role_v, &n_roles)) != 0 ||
        (logins &&
         (rv = split_list("--logins", logins, lbuf, sizeof lbuf, login_v, &n_logins)) != 0) ||
        (rv = connect_client(t)) != 0)
        return rv;
    struct auth_invite inv;
    rv = auth_client_user_add(t->client, args[0], role_v, n_roles, login_v, n_logins, ttl, &inv);
    return finish_invite(t, rv, "created", &inv, args[0]);
}

static int cmd_users_reset(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"ttl", required_argument, NULL, O_TTL},
        {"format", required_argument, NULL, O_FORMAT},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    uint64_t ttl = 0;
    bool ttl_set = false;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        if (c == O_TTL) {
            ttl_set = true;
            if (parse_ttl(t, optarg, &ttl) != 0)
                return 2;
        }
        if (c == O_FORMAT && parse_format(t, optarg) != 0)
            return 2;
    }
    if ((rv = flags_done(&f, c, 1, 1, &args, &nargs)) >= 0 ||
        (rv = invite_ttl(t, ttl_set, &ttl)) != 0 || (rv = connect_client(t)) != 0)
        return rv;
    struct auth_invite inv;
    rv = auth_client_user_reset(t->client, args[0], ttl, &inv);
    return finish_invite(t, rv, "reset", &inv, args[0]);
}

static int cmd_users_update(struct tctl *t, int argc, char **argv)
{
    char **args;
    int nargs, rv;
    const char *set_roles;
    if ((rv = one_value_flag(t, argc, argv, "set-roles", O_SET_ROLES, &set_roles, 1, 1, &args,
                             &nargs)) >= 0)
        return rv;
    if (set_roles == NULL) {
        fprintf(stderr, "tctl users update: --set-roles=R1,R2 is required\n");
        return 2;
    }
    char rbuf[4096];
    const char *role_v[64];
    size_t n_roles = 0;
    if ((rv = split_list("--set-roles", set_roles, rbuf, sizeof rbuf, role_v, &n_roles)) != 0 ||
        (rv = connect_client(t)) != 0)
        return rv;
    if ((rv = auth_client_user_update(t->client, args[0], role_v, n_roles)) != 0)
        return call_failed(t, rv);
    printf("User %s has been updated: roles %s.\n", args[0], set_roles);
    return 0;
}

static int delete_user(struct tctl *t, const char *name)
{
    int rv = auth_client_user_rm(t->client, name);
    if (rv != 0)
        return call_failed(t, rv);
    printf("User \"%s\" has been deleted.\n", name);
    return 0;
}

static int cmd_users_rm(struct tctl *t, int argc, char **argv)
{
    char **args;
    int nargs, rv;
    if ((rv = no_own_flags(t, argc, argv, 1, 1, &args, &nargs)) >= 0 ||
        (rv = connect_client(t)) != 0)
        return rv;
    return delete_user(t, args[0]);
}

static int cmd_users_ls(struct tctl *t, int argc, char **argv)
{
    struct auth_reply reply;
    const msgpack_object *items;
    int rv = list_all(t, argc, argv, "user", &reply, &items);
    if (rv >= 0)
        return rv;
    if (t->format == FMT_JSON) {
        print_json(items);
        auth_reply_free(&reply);
        return 0;
    }
    struct rp_buf out;
    rp_buf_init(&out);
    rp_buf_printf(&out, "%-24s %s\n", "User", "Roles");
    for (uint32_t i = 0; i < items->via.array.size; i++) {
        const msgpack_object *it = &items->via.array.ptr[i];
        char name[160];
        field(rp_mp_get(it, "metadata"), "name", name, sizeof name);
        rp_buf_printf(&out, "%-24s ", name);
        const msgpack_object *roles = rp_mp_get(rp_mp_get(it, "spec"), "roles");
        for (uint32_t k = 0;
             roles && roles->type == MSGPACK_OBJECT_ARRAY && k < roles->via.array.size; k++) {
            const msgpack_object *r = &roles->via.array.ptr[k];
            if (r->type == MSGPACK_OBJECT_STR)
                rp_buf_printf(&out, "%s%.*s", k ? "," : "", (int)r->via.str.size, r->via.str.ptr);
        }
        rp_buf_append_str(&out, "\n");
    }
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
    auth_reply_free(&reply);
    return 0;
}

/* ---- auth export / sign --------------------------------------------------------- */

static int cmd_auth_export(struct tctl *t, int argc, char **argv)
{
    char **args;
    int nargs, rv;
    const char *type;
    if ((rv = one_value_flag(t, argc, argv, "type", O_TYPE, &type, 0, 0, &args, &nargs)) >= 0)
        return rv;
    if (type == NULL || (strcmp(type, "user") && strcmp(type, "host") && strcmp(type, "tls"))) {
        fprintf(stderr, "tctl auth export: --type=%s: expected user, host or tls\n",
                type ? type : "");
        return 2;
    }
    if ((rv = connect_client(t)) != 0)
        return rv;
    struct auth_reply reply;
    const msgpack_object *res;
    if ((rv = auth_client_get(t->client, AUTH_KIND_CA, type, 0, &reply, &res, NULL)) != 0)
        return call_failed(t, rv);
    const msgpack_object *spec = rp_mp_get(res, "spec");
    const msgpack_object *keys =
        rp_mp_get(rp_mp_get(spec, "active_keys"), strcmp(type, "tls") == 0 ? "tls" : "ssh");
    char cluster[256];
    field(spec, "cluster_name", cluster, sizeof cluster);
    rv = 0;
    for (uint32_t i = 0; keys && keys->type == MSGPACK_OBJECT_ARRAY && i < keys->via.array.size;
         i++) {
        const msgpack_object *k = &keys->via.array.ptr[i];
        const char *s;
        size_t n;
        if (strcmp(type, "tls") == 0 && rp_mp_get_str(k, "cert", &s, &n) == 0)
            printf("%.*s%s", (int)n, s, n && s[n - 1] == '\n' ? "" : "\n");
        else if (strcmp(type, "user") == 0 && rp_mp_get_str(k, "public_key", &s, &n) == 0)
            printf("%.*s user-ca@%s\n", (int)n, s, cluster);
        else if (strcmp(type, "host") == 0 && rp_mp_get_str(k, "public_key", &s, &n) == 0)
            printf("@cert-authority * %.*s host-ca@%s\n", (int)n, s, cluster);
        else
            rv = 1;
    }
    if (rv != 0 || keys == NULL)
        fprintf(stderr, "tctl auth export: cert_authority/%s holds no %s key\n", type, type);
    auth_reply_free(&reply);
    return rv || keys == NULL;
}

/* Writes @data to @path with @mode, saying what it wrote. */
static int write_out(const char *path, const char *data, unsigned mode)
{
    if (rp_write_file(path, data, strlen(data), mode) != 0) {
        fprintf(stderr, "tctl auth sign: %s: %s\n", path, rp_errmsg());
        return 1;
    }
    printf("  %s\n", path);
    return 0;
}

/* Writes the key and certificates as @fmt says. 0, or 1 after printing why not. */
static int write_identity(const char *fmt, const char *out_path, const char *priv,
                          const char *tls_key, const struct auth_certs *certs)
{
    char path[4096];
    struct rp_buf cert;
    int rv;
    rp_buf_init(&cert);
    rp_buf_printf(&cert, "%s\n", certs->ssh_cert);
    if (strcmp(fmt, "openssh") == 0) {
        snprintf(path, sizeof path, "%s-cert.pub", out_path);
        rv = write_out(out_path, priv, 0600) || write_out(path, (char *)cert.data, 0644);
    } else if (strcmp(fmt, "file") == 0) {
        /* One identity file: private key, SSH certificate, then for users the X.509
         * certificate and the CA that signed it. */
        struct rp_buf all;
        rp_buf_init(&all);
        rp_buf_printf(&all, "%s%s", priv, (char *)cert.data);
        if (certs->tls_cert && certs->tls_ca)
            rp_buf_printf(&all, "%s%s", certs->tls_cert, certs->tls_ca);
        rp_buf_append(&all, "", 1);
        rv = write_out(out_path, (char *)all.data, 0600);
        OPENSSL_cleanse(all.data, all.cap);
        rp_buf_free(&all);
    } else { /* tls: PATH.key, PATH.crt, PATH.cas */
        char a[4096], b[4096];
        snprintf(path, sizeof path, "%s.key", out_path);
        snprintf(a, sizeof a, "%s.crt", out_path);
        snprintf(b, sizeof b, "%s.cas", out_path);
        rv = write_out(path, tls_key, 0600) || write_out(a, certs->tls_cert, 0644) ||
             write_out(b, certs->tls_ca, 0644);
    }
    rp_buf_free(&cert);
    return rv;
}

/* tctl auth sign --user=NAME | --host=NAME: a fresh key (Ed25519; ECDSA P-256 when an
 * X.509 certificate is wanted too, the key type of the cluster's TLS) and its
 * certificates. */
static int cmd_auth_sign(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"user", required_argument, NULL, O_USER}, {"host", required_argument, NULL, O_HOST},
        {"out", required_argument, NULL, 'o'},     {"format", required_argument, NULL, O_FORMAT},
        {"ttl", required_argument, NULL, O_TTL},   {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    const char *user = NULL, *host = NULL, *out_path = NULL, *fmt = "openssh";
    uint64_t ttl = 0;
    flags_init(&f, t, argc, argv, own, "o:");
    while ((c = flags_next(&f)) > 0) {
        switch (c) {
        case O_USER:
            user = optarg;
            break;
        case O_HOST:
            host = optarg;
            break;
        case 'o':
            out_path = optarg;
            break;
        case O_FORMAT:
            fmt = optarg;
            if (strcmp(fmt, "openssh") != 0 && strcmp(fmt, "file") != 0 &&
                strcmp(fmt, "tls") != 0) {
                fprintf(stderr, "tctl auth sign: --format=%s: expected openssh, file or tls\n",
                        fmt);
                return 2;
            }
            break;
        case O_TTL:
            if (parse_ttl(t, optarg, &ttl) != 0)
                return 2;
            break;
        }
    }
    if ((rv = flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    if ((host == NULL) == (user == NULL)) {
        fprintf(stderr, "tctl auth sign: give exactly one of --host=NAME or --user=NAME\n");
        return 2;
    }
    if (out_path == NULL) {
        fprintf(stderr,
                "tctl auth sign: -o PATH is required (where the key and certificates go)\n");
        return 2;
    }
    if ((rv = connect_client(t)) != 0)
        return rv;
    bool want_tls = strcmp(fmt, "tls") == 0 || (user && strcmp(fmt, "file") == 0);
    const char *who = user ? user : host;
    EVP_PKEY *key = NULL;
    char *priv = NULL, *pub = NULL, *tls_pub = NULL, *tls_key = NULL;
    struct auth_certs certs = {0};
    rv = 1;
    if (want_tls) /* one ECDSA P-256 key serves SSH and the cluster's TLS */
        key = rp_tls_keygen();
    else if (rp_ssh_keygen(RP_SSH_KEY_ED25519, &key) != 0)
        key = NULL;
    if (key == NULL || rp_ssh_privkey_format(key, who, &priv) != 0 ||
        rp_ssh_pubkey_format(key, NULL, &pub) != 0 ||
        (want_tls &&
         (rp_tls_pubkey_to_pem(key, &tls_pub) != 0 || rp_tls_key_to_pem(key, &tls_key) != 0))) {
        fail("making a key");
        goto out;
    }
    int crv;
    if (user) {
        crv = auth_client_sign_user(t->client, user, pub, tls_pub, ttl, &certs);
    } else {
        struct auth_host_sign req = {
            .host_id = host,
            .nodename = host,
            .role = "Node",
            .ssh_pubkey = pub,
            .tls_pubkey = tls_pub,
            .ttl_ms = ttl ? ttl : 8760ull * 3600 * 1000,
        };
        crv = auth_client_sign_host(t->client, &req, &certs);
    }
    if (crv != 0) {
        call_failed(t, crv);
        goto out;
    }
    printf("The %s certificates of %s were written to:\n", user ? "user" : "host", who);
    rv = write_identity(fmt, out_path, priv, tls_key, &certs);
out:
    if (priv) {
        OPENSSL_cleanse(priv, strlen(priv));
        free(priv);
    }
    if (tls_key) {
        OPENSSL_cleanse(tls_key, strlen(tls_key));
        free(tls_key);
    }
    auth_certs_free(&certs);
    free(pub);
    free(tls_pub);
    EVP_PKEY_free(key);
    return rv;
}

/* ---- events ----------------------------------------------------------------- */

/* --since / --until: a duration back from now ("1h", "30m") or an RFC 3339 UTC
 * time ("2026-11-25T14:00:00Z"); 0 with *ms set, 2 after printing the error. */
static int parse_when(const char *flag, const char *s, uint64_t *ms)
{
    uint64_t d;
    if (rp_parse_duration_ms(s, &d) == 0) {
        uint64_t now = rp_now_ms();
        *ms = d < now ? now - d : 1;
        return 0;
    }
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    unsigned frac = 0;
    if (rest && *rest == '.') {
        int digits = 0;
        for (rest++; *rest >= '0' && *rest <= '9'; rest++, digits++)
            if (digits < 3)
                frac = frac * 10 + (unsigned)(*rest - '0');
        for (; digits < 3; digits++)
            frac *= 10;
    }
    if (rest == NULL || strcmp(rest, "Z") != 0) {
        fprintf(stderr,
                "tctl events ls: %s=%s: expected a duration back from now (1h, 30m) or "
                "a UTC time like 2026-11-25T14:00:00Z\n",
                flag, s);
        return 2;
    }
    *ms = (uint64_t)timegm(&tm) * 1000 + frac;
    return 0;
}

static int cmd_events_ls(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"since", required_argument, NULL, O_SINCE},   {"until", required_argument, NULL, O_UNTIL},
        {"type", required_argument, NULL, O_TYPE},     {"user", required_argument, NULL, O_USER},
        {"limit", required_argument, NULL, O_LIMIT},   {"stale", no_argument, NULL, O_STALE},
        {"format", required_argument, NULL, O_FORMAT}, {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    struct auth_events_query q = {.limit = 1000};
    char *end;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        switch (c) {
        case O_SINCE:
            if (parse_when("--since", optarg, &q.from_ms) != 0)
                return 2;
            break;
        case O_UNTIL:
            if (parse_when("--until", optarg, &q.to_ms) != 0)
                return 2;
            break;
        case O_TYPE:
            q.type = optarg;
            break;
        case O_USER:
            q.user = optarg;
            break;
        case O_LIMIT:
            q.limit = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || q.limit == 0 || q.limit > 10000) {
                fprintf(stderr, "tctl: --limit=%s: expected a number of events from 1 to 10000\n",
                        optarg);
                return 2;
            }
            break;
        case O_STALE:
            q.stale = true;
            break;
        case O_FORMAT:
            if (parse_format(t, optarg) != 0)
                return 2;
            break;
        }
    }
    if ((rv = flags_done(&f, c, 0, 0, &args, &nargs)) >= 0 || (rv = connect_client(t)) != 0)
        return rv;
    struct auth_reply reply;
    const msgpack_object *items;
    if ((rv = auth_client_events(t->client, &q, &reply, &items)) != 0)
        return call_failed(t, rv);
    uint32_t n = items->via.array.size;
    struct rp_buf out;
    rp_buf_init(&out);
    if (t->format == FMT_JSON)
        rp_buf_append_str(&out, "[");
    else
        rp_buf_printf(&out, "%-24s %-20s %-7s %-24s %s\n", "Time (UTC)", "Event", "Code", "User",
                      "Details");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *ev = &items->via.array.ptr[i];
        if (t->format == FMT_JSON) {
            rp_buf_append_str(&out, i ? ",\n  " : "\n  ");
            audit_event_to_json(ev, &out);
            continue;
        }
        char when[40], type[72], code[20], user[128];
        rp_format_time(ufield(ev, "time"), when, sizeof when);
        const char *u = field(ev, "user", user, sizeof user);
        rp_buf_printf(&out, "%-24s %-20s %-7s %-24s", when, field(ev, "event", type, sizeof type),
                      field(ev, "code", code, sizeof code), u[0] ? u : "-");
        /* Details: the event's other string and number fields, key=value. */
        for (uint32_t k = 0; ev->type == MSGPACK_OBJECT_MAP && k < ev->via.map.size; k++) {
            const msgpack_object_kv *kv = &ev->via.map.ptr[k];
            static const char *skip[] = {"event", "code", "user", "time", "uid", "server_id"};
            bool skipped = kv->key.type != MSGPACK_OBJECT_STR;
            for (size_t j = 0; !skipped && j < ARRAY_LEN(skip); j++)
                skipped = rp_mp_str_eq(&kv->key, skip[j]);
            if (skipped)
                continue;
            rp_buf_printf(&out, " %.*s=", (int)kv->key.via.str.size, kv->key.via.str.ptr);
            rp_json_from_mp(&out, &kv->val, 0);
        }
        rp_buf_append_str(&out, "\n");
    }
    return print_listing(t, &out, n, &reply);
}

/* ---- recordings --------------------------------------------------------------- */

static void format_duration(uint64_t ms, char *out, size_t n)
{
    uint64_t s = ms / 1000;
    if (s >= 3600)
        snprintf(out, n, "%lluh%02llum%02llus", (unsigned long long)(s / 3600),
                 (unsigned long long)(s / 60 % 60), (unsigned long long)(s % 60));
    else if (s >= 60)
        snprintf(out, n, "%llum%02llus", (unsigned long long)(s / 60),
                 (unsigned long long)(s % 60));
    else
        snprintf(out, n, "%llu.%01llus", (unsigned long long)s,
                 (unsigned long long)(ms % 1000 / 100));
}

static int cmd_recordings_ls(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"since", required_argument, NULL, O_SINCE}, {"until", required_argument, NULL, O_UNTIL},
        {"limit", required_argument, NULL, O_LIMIT}, {"format", required_argument, NULL, O_FORMAT},
        {"stale", no_argument, NULL, O_STALE},       {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    struct auth_rec_query q = {0};
    char *end;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        switch (c) {
        case O_SINCE:
            if (parse_when("--since", optarg, &q.from_ms) != 0)
                return 2;
            break;
        case O_UNTIL:
            if (parse_when("--until", optarg, &q.to_ms) != 0)
                return 2;
            break;
        case O_LIMIT: {
            unsigned long long v = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v == 0 || v > 10000) {
                fprintf(stderr,
                        "tctl: --limit=%s: expected a number of recordings from 1 to 10000\n",
                        optarg);
                return 2;
            }
            q.limit = (uint32_t)v;
            break;
        }
        case O_STALE:
            q.stale = true;
            break;
        case O_FORMAT:
            if (parse_format(t, optarg) != 0)
                return 2;
            if (t->format == FMT_YAML) {
                fprintf(stderr, "%s: --format=yaml: expected text or json\n", t->label);
                return 2;
            }
            break;
        }
    }
    if ((rv = flags_done(&f, c, 0, 0, &args, &nargs)) >= 0 || (rv = connect_client(t)) != 0)
        return rv;
    struct auth_reply reply;
    const msgpack_object *items;
    if ((rv = auth_client_rec_list(t->client, &q, &reply, &items)) != 0)
        return call_failed(t, rv);
    uint32_t n = items->via.array.size;
    struct rp_buf out;
    rp_buf_init(&out);
    if (t->format == FMT_JSON)
        rp_buf_append_str(&out, "[");
    else
        rp_buf_printf(&out, "%-36s %-16s %-12s %-20s %-24s %-11s %-9s %s\n", "ID", "User", "Login",
                      "Node", "Started (UTC)", "Duration", "Size", "Complete");
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *it = &items->via.array.ptr[i];
        if (t->format == FMT_JSON) {
            rp_buf_append_str(&out, i ? ",\n  " : "\n  ");
            rp_json_from_mp(&out, it, 0);
            continue;
        }
        char sid[40], user[64], login[40], host[64], server[64], when[40], dur[24], size[24];
        const char *node = field(it, "hostname", host, sizeof host);
        if (node[0] == '\0')
            node = field(it, "server_id", server, sizeof server);
        rp_format_time(ufield(it, "start"), when, sizeof when);
        uint64_t endt = ufield(it, "end");
        if (endt >= ufield(it, "start") && rp_mp_get(it, "end") != NULL)
            format_duration(endt - ufield(it, "start"), dur, sizeof dur);
        else
            snprintf(dur, sizeof dur, "(active)");
        uint64_t b = ufield(it, "bytes");
        if (b < (1u << 20))
            snprintf(size, sizeof size, "%.1f KiB", (double)b / 1024);
        else
            human_bytes(b, size, sizeof size);
        bool complete = false;
        rp_mp_get_bool(it, "complete", &complete);
        const char *u = field(it, "user", user, sizeof user);
        const char *l = field(it, "login", login, sizeof login);
        rp_buf_printf(&out, "%-36s %-16s %-12s %-20s %-24s %-11s %-9s %s\n",
                      field(it, "sid", sid, sizeof sid), u[0] ? u : "-", l[0] ? l : "-", node, when,
                      dur, size, complete ? "yes" : "no");
    }
    return print_listing(t, &out, n, &reply);
}

/* Fetches chunk @seq into @plain (decompressed, appended). 0, RP_ENOTFOUND for a
 * chunk the cluster does not hold, or 1 after printing why not. */
static int export_chunk(struct tctl *t, const char *sid, uint32_t seq, bool stale,
                        struct rp_buf *plain, struct auth_rec_chunk *ch)
{
    struct auth_reply reply;
    int rv = auth_client_rec_get(t->client, sid, seq, stale, &reply, ch);
    if (rv == RP_ENOTFOUND && seq > 0)
        return rv;
    if (rv != 0)
        return call_failed(t, rv);
    rv = auth_rec_decompress(ch->data, ch->len, plain);
    auth_reply_free(&reply);
    if (rv != 0) {
        fprintf(stderr, "%s: chunk %u of %s: %s\n", t->label, seq, sid, rp_errmsg());
        return 1;
    }
    return 0;
}

static int cmd_recordings_export(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"out", required_argument, NULL, 'o'},
        {"partial", no_argument, NULL, O_PARTIAL},
        {"stale", no_argument, NULL, O_STALE},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    const char *path = NULL;
    bool partial = false, stale = false;
    flags_init(&f, t, argc, argv, own, "o:");
    while ((c = flags_next(&f)) > 0) {
        if (c == 'o')
            path = optarg;
        else if (c == O_PARTIAL)
            partial = true;
        else if (c == O_STALE)
            stale = true;
    }
    if ((rv = flags_done(&f, c, 1, 1, &args, &nargs)) >= 0)
        return rv;
    const char *sid = args[0];
    if (strlen(sid) != 36 || strspn(sid, "0123456789abcdefABCDEF-") != 36)
        return usage_error(t, "'%s' is not a session id (a UUID)", sid);
    char def[64];
    if (path == NULL) {
        snprintf(def, sizeof def, "%s.cast", sid);
        path = def;
    }
    if ((rv = connect_client(t)) != 0)
        return rv;

    /* Chunk 0 holds the header and says how many chunks there are. */
    struct rp_buf plain;
    struct auth_rec_chunk ch;
    rp_buf_init(&plain);
    if ((rv = export_chunk(t, sid, 0, stale, &plain, &ch)) != 0) {
        rp_buf_free(&plain);
        return rv == RP_ENOTFOUND ? 1 : rv;
    }
    uint32_t chunks = ch.chunks, missing = 0;
    if (!ch.complete && !partial) {
        fprintf(stderr,
                "%s: recording %s is incomplete (its node has not uploaded every chunk yet, or "
                "some were lost); --partial exports the chunks the cluster holds\n",
                t->label, sid);
        rp_buf_free(&plain);
        return 1;
    }
    for (uint32_t seq = 1; seq < chunks; seq++) {
        rv = export_chunk(t, sid, seq, stale, &plain, &ch);
        if (rv == RP_ENOTFOUND) {
            missing++;
            continue;
        }
        if (rv != 0) {
            rp_buf_free(&plain);
            return rv;
        }
    }
    if (missing > 0)
        fprintf(stderr, "%s: %u of %u chunks of %s are missing; exporting the rest\n", t->label,
                missing, chunks, sid);
    FILE *out = strcmp(path, "-") == 0 ? stdout : fopen(path, "w");
    if (out == NULL) {
        fprintf(stderr, "%s: %s: %s\n", t->label, path, strerror(errno));
        rp_buf_free(&plain);
        return 1;
    }
    bool ok = fwrite(plain.data, 1, plain.len, out) == plain.len;
    ok = (out == stdout ? fflush(out) : fclose(out)) == 0 && ok;
    if (!ok) {
        fprintf(stderr, "%s: writing %s: %s\n", t->label, path, strerror(errno));
        rp_buf_free(&plain);
        return 1;
    }
    if (out != stdout)
        fprintf(stderr, "wrote %s (%zu bytes, %u chunks)\n", path, plain.len, chunks - missing);
    rp_buf_free(&plain);
    return 0;
}

/* ---- locks ------------------------------------------------------------------ */

static int cmd_lock(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"user", required_argument, NULL, O_USER},
        {"role", required_argument, NULL, O_ROLE},
        {"login", required_argument, NULL, O_LOGIN},
        {"server-id", required_argument, NULL, O_SERVER_ID},
        {"message", required_argument, NULL, O_MESSAGE},
        {"ttl", required_argument, NULL, O_TTL},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    struct auth_lock_spec spec = {0};
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        switch (c) {
        case O_USER:
            spec.user = optarg;
            break;
        case O_ROLE:
            spec.role = optarg;
            break;
        case O_LOGIN:
            spec.login = optarg;
            break;
        case O_SERVER_ID:
            spec.server_id = optarg;
            break;
        case O_MESSAGE:
            spec.message = optarg;
            break;
        case O_TTL:
            if (parse_ttl(t, optarg, &spec.ttl_ms) != 0)
                return 2;
            break;
        }
    }
    if ((rv = flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    if (spec.user == NULL && spec.role == NULL && spec.login == NULL && spec.server_id == NULL)
        return usage_error(t, "give at least one target: --user, --role, --login or --server-id");
    /* The same checks the lock gets when it is built, before anything is dialed. */
    struct rp_buf probe;
    rp_buf_init(&probe);
    rv = auth_lock_encode(&spec, "00000000-0000-4000-8000-000000000000", rp_now_ms(), &probe);
    rp_buf_free(&probe);
    if (rv != 0)
        return usage_error(t, "%s", rp_errmsg());
    if ((rv = connect_client(t)) != 0)
        return rv;
    char who[256], name[37];
    if (auth_client_identity_name(t->client, who, sizeof who) == 0)
        spec.created_by = who;
    struct auth_write_result w;
    if ((rv = auth_client_lock_add(t->client, &spec, name, &w)) != 0)
        return call_failed(t, rv);
    printf("Created a lock with name \"%s\".\n", name);
    fflush(stdout);
    for (size_t k = 0; k < w.n_warnings; k++)
        fprintf(stderr, "warning: %s\n", w.warnings[k]);
    auth_write_result_free(&w);
    return 0;
}

/* ---- nodes ------------------------------------------------------------------ */

/* The node resources read so far, pointing into the replies (each allocated once, so
 * what points into it stays put). */
struct node_set {
    struct auth_reply **replies;
    size_t n_replies;
    const msgpack_object **nodes;
    size_t n, cap;
};

static void node_set_free(struct node_set *ns)
{
    for (size_t i = 0; i < ns->n_replies; i++) {
        auth_reply_free(ns->replies[i]);
        free(ns->replies[i]);
    }
    free(ns->replies);
    free(ns->nodes);
    memset(ns, 0, sizeof *ns);
}

/* Keeps @res in @ns unless it expired before @now. */
static int node_set_add(struct node_set *ns, const msgpack_object *res, uint64_t now)
{
    uint64_t exp = ufield(rp_mp_get(res, "metadata"), "expires");
    if (exp != 0 && exp < now)
        return 0; /* the leader expires it soon; a stale read may still hold it */
    if (ns->n == ns->cap) {
        size_t cap = ns->cap ? ns->cap * 2 : 64;
        const msgpack_object **nodes = realloc(ns->nodes, cap * sizeof *nodes);
        if (nodes == NULL)
            return rp_err(RP_ENOMEM, "node listing");
        ns->nodes = nodes;
        ns->cap = cap;
    }
    ns->nodes[ns->n++] = res;
    return 0;
}

/* A zeroed reply owned by @ns. */
static struct auth_reply *node_set_reply(struct node_set *ns)
{
    struct auth_reply **rs = realloc(ns->replies, (ns->n_replies + 1) * sizeof *rs);
    if (rs == NULL)
        return NULL;
    ns->replies = rs;
    if ((rs[ns->n_replies] = calloc(1, sizeof **rs)) == NULL)
        return NULL;
    return rs[ns->n_replies++];
}

/* Name characters of host ids (join takes letters, digits, '.', '-', '_'). */
static const char node_name_chars[] =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-_";

/* Lists the nodes whose name starts with @prefix into @ns, keeping those not expired
 * at @now. A listing too big for one answer (thousands of nodes) is split by the next
 * character of the name, as many times as needed. */
static int list_nodes(struct tctl *t, const char *prefix, unsigned flags, uint64_t now,
                      struct node_set *ns)
{
    const msgpack_object *items, *res;
    struct auth_reply *reply = node_set_reply(ns);
    if (reply == NULL)
        return rp_err(RP_ENOMEM, "node listing");
    int rv = auth_client_list(t->client, "node", prefix[0] ? prefix : NULL, 0, flags, reply, &items,
                              NULL);
    if (rv == 0) {
        for (uint32_t i = 0; i < items->via.array.size && rv == 0; i++)
            rv = node_set_add(ns, &items->via.array.ptr[i], now);
        return rv;
    }
    if (rv != RP_ETOOBIG || strlen(prefix) >= 64)
        return rv;
    /* The node named exactly @prefix, then those with one more character. */
    if (prefix[0] != '\0') {
        auth_reply_free(reply);
        rv = auth_client_get(t->client, "node", prefix, flags, reply, &res, NULL);
        if (rv == 0)
            rv = node_set_add(ns, res, now);
        if (rv != 0 && rv != RP_ENOTFOUND)
            return rv;
    }
    for (const char *c = node_name_chars; *c; c++) {
        char sub[80];
        snprintf(sub, sizeof sub, "%s%c", prefix, *c);
        if ((rv = list_nodes(t, sub, flags, now, ns)) != 0)
            return rv;
    }
    return 0;
}

static int node_cmp(const void *a, const void *b)
{
    const msgpack_object *x = *(const msgpack_object *const *)a;
    const msgpack_object *y = *(const msgpack_object *const *)b;
    char hx[256], hy[256], nx[256], ny[256];
    int c = strcmp(field(rp_mp_get(x, "spec"), "hostname", hx, sizeof hx),
                   field(rp_mp_get(y, "spec"), "hostname", hy, sizeof hy));
    return c != 0 ? c
                  : strcmp(field(rp_mp_get(x, "metadata"), "name", nx, sizeof nx),
                           field(rp_mp_get(y, "metadata"), "name", ny, sizeof ny));
}

/* One label of a node: static (metadata.labels) or a command's last result. */
struct node_label {
    char name[256];
    char value[1100];
};

static int label_cmp(const void *a, const void *b)
{
    return strcmp(((const struct node_label *)a)->name, ((const struct node_label *)b)->name);
}

/* The labels of @node, static and command labels together, sorted by name; the
 * count (at most @max) is returned. */
static size_t node_labels(const msgpack_object *node, struct node_label *out, size_t max)
{
    size_t n = 0;
    const msgpack_object *labels = rp_mp_get(rp_mp_get(node, "metadata"), "labels");
    const msgpack_object *cmd = rp_mp_get(rp_mp_get(node, "spec"), "cmd_labels");
    for (int pass = 0; pass < 2; pass++) {
        const msgpack_object *m = pass == 0 ? labels : cmd;
        for (uint32_t i = 0; m && m->type == MSGPACK_OBJECT_MAP && i < m->via.map.size && n < max;
             i++) {
            const msgpack_object_kv *kv = &m->via.map.ptr[i];
            if (kv->key.type != MSGPACK_OBJECT_STR)
                continue;
            snprintf(out[n].name, sizeof out[n].name, "%.*s", (int)kv->key.via.str.size,
                     kv->key.via.str.ptr);
            const msgpack_object *v = pass == 0 ? &kv->val : rp_mp_get(&kv->val, "result");
            out[n].value[0] = '\0';
            if (v && v->type == MSGPACK_OBJECT_STR)
                snprintf(out[n].value, sizeof out[n].value, "%.*s", (int)v->via.str.size,
                         v->via.str.ptr);
            n++;
        }
    }
    qsort(out, n, sizeof *out, label_cmp);
    return n;
}

#define NODE_MAX_LABELS 256

static void print_nodes_text(const struct node_set *ns)
{
    struct node_label *labels = calloc(NODE_MAX_LABELS, sizeof *labels);
    struct rp_buf out, lb;
    rp_buf_init(&out);
    rp_buf_init(&lb);
    rp_buf_printf(&out, "%-24s %-36s %-21s %-30s %s\n", "Host", "UUID", "Address", "Labels",
                  "Version");
    for (size_t i = 0; labels && i < ns->n; i++) {
        const msgpack_object *md = rp_mp_get(ns->nodes[i], "metadata");
        const msgpack_object *spec = rp_mp_get(ns->nodes[i], "spec");
        char host[256], uuid[256], addr[300], version[64];
        size_t nl = node_labels(ns->nodes[i], labels, NODE_MAX_LABELS);
        rp_buf_reset(&lb);
        for (size_t k = 0; k < nl; k++)
            rp_buf_printf(&lb, "%s%s=%s", k ? "," : "", labels[k].name, labels[k].value);
        rp_buf_append(&lb, "", 1);
        rp_buf_printf(&out, "%-24s %-36s %-21s %-30s %s\n",
                      field(spec, "hostname", host, sizeof host),
                      field(md, "name", uuid, sizeof uuid), field(spec, "addr", addr, sizeof addr),
                      lb.data, field(spec, "version", version, sizeof version));
    }
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
    rp_buf_free(&lb);
    free(labels);
}

static void json_kv_str(struct rp_buf *out, const char *key, const char *val, bool first)
{
    rp_buf_append_str(out, first ? "" : ", ");
    rp_json_str(out, key, strlen(key));
    rp_buf_append_str(out, ": ");
    rp_json_str(out, val, strlen(val));
}

static void print_nodes_json(const struct node_set *ns)
{
    struct node_label *labels = calloc(NODE_MAX_LABELS, sizeof *labels);
    struct rp_buf out;
    rp_buf_init(&out);
    rp_buf_append_str(&out, "[");
    for (size_t i = 0; labels && i < ns->n; i++) {
        const msgpack_object *md = rp_mp_get(ns->nodes[i], "metadata");
        const msgpack_object *spec = rp_mp_get(ns->nodes[i], "spec");
        char buf[8192], when[40];
        rp_buf_append_str(&out, i ? ",\n  {" : "\n  {");
        json_kv_str(&out, "name", field(md, "name", buf, sizeof buf), true);
        json_kv_str(&out, "hostname", field(spec, "hostname", buf, sizeof buf), false);
        json_kv_str(&out, "addr", field(spec, "addr", buf, sizeof buf), false);
        json_kv_str(&out, "version", field(spec, "version", buf, sizeof buf), false);
        size_t nl = node_labels(ns->nodes[i], labels, NODE_MAX_LABELS);
        rp_buf_append_str(&out, ", \"labels\": {");
        for (size_t k = 0; k < nl; k++)
            json_kv_str(&out, labels[k].name, labels[k].value, k == 0);
        rp_buf_append_str(&out, "}");
        const msgpack_object *cmd = rp_mp_get(spec, "cmd_labels");
        if (cmd && cmd->type == MSGPACK_OBJECT_MAP) {
            rp_buf_append_str(&out, ", \"cmd_labels\": ");
            rp_json_from_mp(&out, cmd, 0);
        }
        uint64_t exp = ufield(md, "expires");
        rp_format_time(exp, when, sizeof when);
        json_kv_str(&out, "expires", exp ? when : "", false);
        json_kv_str(&out, "host_key", field(spec, "host_key", buf, sizeof buf), false);
        rp_buf_append_str(&out, "}");
    }
    rp_buf_append_str(&out, ns->n ? "\n]\n" : "]\n");
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
    free(labels);
}

/* The host CA's public keys (every key it trusts, as cert_authority/host holds them). */
static int host_ca_keys(struct tctl *t, EVP_PKEY **keys, size_t max, size_t *n)
{
    struct auth_reply reply;
    const msgpack_object *res;
    *n = 0;
    memset(&reply, 0, sizeof reply);
    int rv = auth_client_get(t->client, AUTH_KIND_CA, "host", 0, &reply, &res, NULL);
    if (rv != 0) {
        auth_reply_free(&reply);
        return rv;
    }
    const msgpack_object *spec = rp_mp_get(res, "spec");
    static const char *const sets[] = {"active_keys", "additional_trusted_keys"};
    for (size_t s = 0; s < 2; s++) {
        const msgpack_object *ks = rp_mp_get(rp_mp_get(spec, sets[s]), "ssh");
        for (uint32_t i = 0; ks && ks->type == MSGPACK_OBJECT_ARRAY && i < ks->via.array.size;
             i++) {
            char line[8192];
            if (*n < max && field(&ks->via.array.ptr[i], "public_key", line, sizeof line)[0] &&
                rp_ssh_pubkey_parse(line, &keys[*n], NULL) == 0)
                (*n)++;
        }
    }
    auth_reply_free(&reply);
    if (*n == 0)
        return rp_err(RP_ENOTFOUND, "cert_authority/host holds no SSH public key");
    return 0;
}

/* Whether @node's host certificate is signed by one of @cas, names its host id, is
 * valid now and certifies spec.host_key. 0, or an error saying why not. On success
 * *@key_line is the host key line without comment (free it). */
static int node_host_key(const msgpack_object *node, EVP_PKEY *const *cas, size_t n_cas,
                         char **key_line)
{
    const msgpack_object *spec = rp_mp_get(node, "spec");
    char host_id[256], key[8192], cert_line[8192];
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    struct rp_ssh_cert cert;
    struct rp_buf cb;
    *key_line = NULL;
    field(rp_mp_get(node, "metadata"), "name", host_id, sizeof host_id);
    if (!field(spec, "host_key", key, sizeof key)[0] ||
        !field(spec, "host_cert", cert_line, sizeof cert_line)[0])
        return rp_err(RP_ENOTFOUND, "it publishes no host key and certificate");
    enum rp_ssh_keytype type;
    int rv = rp_ssh_pubkey_parse_blob(key, &blob, &blob_len, &type);
    if (rv != 0)
        return rp_err(rv, "host_key: %s", rp_errmsg());
    if ((rv = rp_ssh_cert_parse_line(cert_line, &cert, NULL)) != 0) {
        free(blob);
        return rp_err(rv, "host_cert: %s", rp_errmsg());
    }
    rv = RP_EDENIED;
    char why[256] = "no host CA key";
    for (size_t i = 0; i < n_cas && rv != 0; i++) {
        rv =
            rp_ssh_cert_check(&cert, cas[i], RP_SSH_CERT_HOST, (uint64_t)time(NULL), host_id, NULL);
        if (rv != 0)
            snprintf(why, sizeof why, "%s", rp_errmsg());
    }
    if (rv != 0) {
        rv = rp_err(RP_EDENIED, "host_cert does not verify against the cluster's host CA: %s", why);
        goto out;
    }
    rp_buf_init(&cb);
    rv = rp_ssh_pubkey_to_blob(cert.key, &cb);
    if (rv == 0 && (cb.len != blob_len || memcmp(cb.data, blob, blob_len) != 0))
        rv = rp_err(RP_EDENIED, "host_cert certifies another key than host_key");
    rp_buf_free(&cb);
    if (rv == 0)
        rv = rp_ssh_line_format(blob, blob_len, NULL, key_line);
out:
    rp_ssh_cert_free(&cert);
    free(blob);
    return rv;
}

/* known_hosts names of a node's address: "host" for port 22, "[host]:port" otherwise
 * (OpenSSH's form for other ports). */
static void known_hosts_addr(const char *addr, char *out, size_t n)
{
    const char *colon = strrchr(addr, ':');
    if (colon == NULL) {
        snprintf(out, n, "%s", addr);
        return;
    }
    int hl = (int)(colon - addr);
    const char *host = addr;
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host++;
        hl -= 2;
    }
    if (strcmp(colon + 1, "22") == 0)
        snprintf(out, n, "%.*s", hl, host);
    else
        snprintf(out, n, "[%.*s]:%s", hl, host, colon + 1);
}

static int print_nodes_known_hosts(struct tctl *t, const struct node_set *ns)
{
    EVP_PKEY *cas[16];
    size_t n_cas = 0;
    int rv = host_ca_keys(t, cas, 16, &n_cas);
    if (rv != 0)
        return call_failed(t, rv);
    for (size_t i = 0; i < ns->n; i++) {
        const msgpack_object *md = rp_mp_get(ns->nodes[i], "metadata");
        const msgpack_object *spec = rp_mp_get(ns->nodes[i], "spec");
        char host[256], uuid[256], addr[300], kh_addr[320];
        char *key = NULL;
        field(spec, "hostname", host, sizeof host);
        field(md, "name", uuid, sizeof uuid);
        if (node_host_key(ns->nodes[i], cas, n_cas, &key) != 0) {
            fprintf(stderr, "%s: skipping node %s (%s): %s\n", t->label, host, uuid, rp_errmsg());
            continue;
        }
        known_hosts_addr(field(spec, "addr", addr, sizeof addr), kh_addr, sizeof kh_addr);
        printf("%s,%s%s%s %s\n", host, uuid, kh_addr[0] ? "," : "", kh_addr, key);
        free(key);
    }
    for (size_t i = 0; i < n_cas; i++)
        EVP_PKEY_free(cas[i]);
    return 0;
}

static int cmd_nodes_ls(struct tctl *t, int argc, char **argv)
{
    static const struct option own[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {"stale", no_argument, NULL, O_STALE},
        {NULL, 0, NULL, 0},
    };
    struct flags f;
    char **args;
    int c, nargs, rv;
    bool stale = false, known_hosts = false;
    flags_init(&f, t, argc, argv, own, NULL);
    while ((c = flags_next(&f)) > 0) {
        if (c == O_FORMAT) {
            known_hosts = strcmp(optarg, "known_hosts") == 0;
            if (!known_hosts && (parse_format(t, optarg) != 0 || t->format == FMT_YAML)) {
                if (t->format == FMT_YAML)
                    fprintf(stderr, "%s: --format=yaml: expected text, json or known_hosts\n",
                            t->label);
                return 2;
            }
        }
        if (c == O_STALE)
            stale = true;
    }
    if ((rv = flags_done(&f, c, 0, 0, &args, &nargs)) >= 0 || (rv = connect_client(t)) != 0)
        return rv;
    struct node_set ns;
    memset(&ns, 0, sizeof ns);
    if ((rv = list_nodes(t, "", stale ? AUTH_READ_STALE : 0, rp_now_ms(), &ns)) != 0) {
        node_set_free(&ns);
        return call_failed(t, rv);
    }
    if (ns.n > 0)
        qsort(ns.nodes, ns.n, sizeof *ns.nodes, node_cmp);
    rv = 0;
    if (known_hosts)
        rv = print_nodes_known_hosts(t, &ns);
    else if (t->format == FMT_JSON)
        print_nodes_json(&ns);
    else
        print_nodes_text(&ns);
    node_set_free(&ns);
    return rv;
}

static int cmd_locks_ls(struct tctl *t, int argc, char **argv)
{
    struct auth_reply reply;
    const msgpack_object *items;
    int rv = list_all(t, argc, argv, AUTH_KIND_LOCK, &reply, &items);
    if (rv >= 0)
        return rv;
    bool first = true;
    if (t->format == FMT_DEFAULT)
        t->format = FMT_TEXT; /* a table unless asked otherwise */
    print_resources(t, AUTH_KIND_LOCK, items, &first);
    auth_reply_free(&reply);
    return 0;
}

/* ---- version, help ---------------------------------------------------------- */

static int cmd_version(struct tctl *t, int argc, char **argv)
{
    char **args;
    int nargs, rv;
    if ((rv = no_own_flags(t, argc, argv, 0, 0, &args, &nargs)) >= 0)
        return rv;
    printf("tctl 0.1.0\n");
    return 0;
}

static const struct verb *find_verb(int nargs, char **args, int *n_words);

static int cmd_help(struct tctl *t, int argc, char **argv)
{
    int n_words = 0;
    const struct verb *v = argc > 1 ? find_verb(argc - 1, argv + 1, &n_words) : NULL;
    if (argc > 1 && (v == NULL || n_words != argc - 1)) {
        fprintf(stderr, "tctl help: no command '");
        for (int i = 1; i < argc; i++)
            fprintf(stderr, "%s%s", i > 1 ? " " : "", argv[i]);
        fprintf(stderr, "'\n");
        usage(stderr);
        return 2;
    }
    if (v)
        verb_help(stdout, v);
    else
        usage(stdout);
    return 0;
}

/* ---- the verb table ------------------------------------------------------------ */

static const struct verb verbs[] = {
    {"status", "[--format=text|json]", "cluster, CA pin, Raft members and their state", NULL,
     cmd_status},
    {"tokens add", "--type=TYPE [--ttl=30m] [--format=text|json]",
     "create a join token (auth, node or proxy)",
     "The token joins one auth server, node or proxy; it expires after --ttl (at most 48h).\n",
     cmd_tokens_add},
    {"tokens ls", "[--format=text|json] [--stale]", "list join tokens", NULL, cmd_tokens_ls},
    {"tokens rm", "TOKEN", "delete a join token", NULL, cmd_tokens_rm},
    {"auth members ls", "[--format=text|json]", "list the auth servers of the Raft group", NULL,
     cmd_status},
    {"auth members rm", "ID", "remove auth server ID from the Raft group", NULL, cmd_members_rm},
    {"auth export", "--type=user|host|tls", "the public keys of a certificate authority",
     "user: a TrustedUserCAKeys line for sshd; host: an @cert-authority known_hosts line;\n"
     "tls: the PEM certificate of the TLS CA.\n",
     cmd_auth_export},
    {"auth sign", "--user=NAME|--host=NAME -o PATH [--format=openssh|file|tls] [--ttl=D]",
     "a fresh key with its certificates",
     "openssh: PATH and PATH-cert.pub; file: one identity file for tctl -i (users);\n"
     "tls: PATH.key, PATH.crt, PATH.cas.\n",
     cmd_auth_sign},
    {"get", "KIND[/NAME] | all [--format=yaml|json|text] [--stale] [--with-secrets]",
     "print resources as YAML, or as JSON or a table",
     "KIND may be plural, as in Teleport: roles, users, tokens, locks.\n"
     "all: the roles, users and tokens, for tctl create -f on another cluster.\n"
     "--stale: this server's copy, no leader needed.\n"
     "--with-secrets: private keys and password hashes too (Admin only).\n",
     cmd_get},
    {"create", "[-f] FILE.yaml", "create the roles, users, tokens, locks of FILE",
     "-f, --force: overwrite existing ones. Every document is checked before the first is\n"
     "sent; warnings the auth server attaches are printed on stderr.\n",
     cmd_create},
    {"rm", "KIND/NAME", "delete a role, user, token or lock", NULL, cmd_rm},
    {"users add", "NAME --roles=R1,R2 [--logins=L1,L2] [--ttl=1h] [--format=text|json]",
     "create a user; prints a one-time invite token", NULL, cmd_users_add},
    {"users ls", "[--format=text|json] [--stale]", "list users", NULL, cmd_users_ls},
    {"users rm", "NAME", "delete a user", NULL, cmd_users_rm},
    {"users reset", "NAME [--ttl=1h] [--format=text|json]",
     "drop password and second factor; new invite", NULL, cmd_users_reset},
    {"users update", "NAME --set-roles=R1,R2", "replace the user's roles", NULL, cmd_users_update},
    {"events ls", "[--since=D|TIME] [--until=TIME] [--type=EVENT] [--user=NAME] [--limit=N]",
     "search the audit log",
     "--since: a duration back from now (1h) or a UTC time (2026-11-25T14:00:00Z).\n"
     "--limit: at most N events (1..10000, default 1000).\n"
     "--stale: this server's copy, no leader needed. --format=text|json.\n",
     cmd_events_ls},
    {"lock", "--user=NAME|--role=R|--login=L|--server-id=ID [--message=TEXT] [--ttl=D]",
     "lock an identity out of the auth service",
     "At least one target; with several, an identity must match all of them. --ttl: the\n"
     "lock expires after D (e.g. 1h); without it, it holds until tctl rm lock/NAME.\n",
     cmd_lock},
    {"locks ls", "[--format=text|json|yaml] [--stale]", "list locks: target, message, expiry", NULL,
     cmd_locks_ls},
    {"nodes ls", "[--format=text|json|known_hosts] [--stale]",
     "list live nodes: host, UUID, address, labels, version",
     "known_hosts: a line per node whose published host certificate verifies against the\n"
     "cluster's host CA and certifies its host key, for OpenSSH's known_hosts file; the\n"
     "others are named on stderr and left out.\n",
     cmd_nodes_ls},
    {"recordings ls", "[--since=D|TIME] [--until=TIME] [--limit=N] [--format=text|json] [--stale]",
     "list session recordings stored in the cluster",
     "Oldest first, by start time. --limit: at most N (1..10000, default 1000).\n"
     "--stale: this server's copy, no leader needed.\n",
     cmd_recordings_ls},
    {"recordings export", "SID [-o FILE] [--partial] [--stale]",
     "write a recording as an asciicast v2 file",
     "FILE defaults to SID.cast (- for stdout); play it with asciinema play FILE.\n"
     "A recording with chunks missing is refused unless --partial.\n"
     "--stale: from this server's copy, no leader needed.\n",
     cmd_recordings_export},
    {"version", "", "print the version", NULL, cmd_version},
    {"help", "[COMMAND]", "this text, or a command's flags", NULL, cmd_help},
};
static const size_t n_verbs = ARRAY_LEN(verbs);

/* The row whose words begin @args, the longest if several do; @n_words: how many
 * arguments its words took. */
static const struct verb *find_verb(int nargs, char **args, int *n_words)
{
    const struct verb *best = NULL;
    for (size_t i = 0; i < n_verbs; i++) {
        const char *w = verbs[i].words;
        int k = 0;
        while (k < nargs) {
            size_t len = strlen(args[k]);
            if (strncmp(w, args[k], len) != 0 || (w[len] != ' ' && w[len] != '\0'))
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

/* No row matched: names what was typed and lists the commands that start alike. */
static int unknown_command(int nargs, char **args)
{
    fprintf(stderr, "tctl: unknown command '");
    for (int i = 0; i < nargs && i < 3; i++)
        fprintf(stderr, "%s%s", i ? " " : "", args[i]);
    fprintf(stderr, "'\n");
    size_t len = strlen(args[0]);
    bool any = false;
    for (size_t i = 0; i < n_verbs; i++) {
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
    struct tctl t = {.format = FMT_DEFAULT};
    int c;
    rp_log_set_level(RP_LOG_WARN);
    /* The global flags before the command ('+': stop at the first word). */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "+:" GLOBAL_SHORTS, global_opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            t.config_path = optarg;
            break;
        case 'i':
            t.identity = optarg;
            break;
        case O_AUTH:
            if (rp_check_hostport(optarg) != 0) {
                fprintf(stderr, "tctl: --auth-server: %s\n", rp_errmsg());
                return 2;
            }
            t.auth_server = optarg;
            break;
        case 'd':
            rp_log_set_level(RP_LOG_DEBUG);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default: {
            const char *arg = argv[optind - 1];
            fprintf(stderr,
                    "tctl: %s %.*s before the command (its flags go after it, e.g. tctl status "
                    "--format=json)\n",
                    c == ':' ? "a value is missing for" : "unknown flag", (int)strcspn(arg, "="),
                    arg);
            usage(stderr);
            return 2;
        }
        }
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
    t.verb = v;
    snprintf(t.label, sizeof t.label, "tctl %s", v->words);
    /* The command sees its label as argv[0], then what follows its words. */
    int vargc = nargs - n_words + 1;
    char **vargv = calloc((size_t)vargc + 1, sizeof *vargv);
    if (vargv == NULL)
        return fail("arguments");
    vargv[0] = t.label;
    for (int i = 1; i < vargc; i++)
        vargv[i] = args[n_words + i - 1];
    /* Every return above is a usage error and has nothing to free; the command
     * loads the config into t.cfg when it connects. */
    rp_config_init(&t.cfg);
    int rv = v->run(&t, vargc, vargv);
    free(vargv);
    auth_client_free(t.client);
    rp_config_free(&t.cfg);
    return rv;
}
