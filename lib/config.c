/* lib/config.c: raftport.yaml into struct rp_config.
 *
 * The file is parsed into a tree of rp_ynode first (lib/yaml.c), then walked with
 * one table per section. A table lists every field its section accepts, so an
 * unknown field is an error that can name the alternatives. Each value is checked
 * where it is read, with the line it came from; rp_config_validate() repeats the
 * format checks without lines (flags may have changed values since) and adds the
 * rules that involve several fields. */
#include "lib/config.h"

#include <arpa/inet.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "lib/util.h"
#include "lib/yaml.h"

#define MAX_NAME_LEN 253 /* a DNS name */
#define MAX_TOKEN_LEN 1024

static void die_oom(void)
{
    fputs("raftport: out of memory\n", stderr);
    abort();
}

static char *dup_or_die(const char *s)
{
    if (s == NULL)
        return NULL;
    char *copy = strdup(s);
    if (copy == NULL)
        die_oom();
    return copy;
}

void rp_config_set(char **field, const char *value)
{
    char *copy = dup_or_die(value); /* before free: @value may be *@field */
    free(*field);
    *field = copy;
}

/* "0.0.0.0:3025" -> "127.0.0.1:3025", "[::]:3025" -> "[::1]:3025", others unchanged.
 * Returns a malloc'd string or NULL. */
static char *public_from_listen(const char *listen)
{
    char *out = NULL;
    if (listen == NULL)
        return NULL;
    if (strncmp(listen, "0.0.0.0:", 8) == 0) {
        if (asprintf(&out, "127.0.0.1:%s", listen + 8) < 0)
            return NULL;
        return out;
    }
    if (strncmp(listen, "[::]:", 5) == 0) {
        if (asprintf(&out, "[::1]:%s", listen + 5) < 0)
            return NULL;
        return out;
    }
    return strdup(listen);
}

void rp_config_finish(struct rp_config *c)
{
    if (c->auth_public_addr_set || c->auth_listen_addr == NULL)
        return;
    char *pub = public_from_listen(c->auth_listen_addr);
    if (pub == NULL)
        die_oom();
    free(c->auth_public_addr);
    c->auth_public_addr = pub;
}

void rp_config_init(struct rp_config *c)
{
    char host[256];

    memset(c, 0, sizeof(*c));
    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        strcpy(host, "localhost");
    host[sizeof(host) - 1] = '\0';
    c->nodename = dup_or_die(host);
    c->data_dir = dup_or_die("/var/lib/raftport");
    c->log_severity = dup_or_die("INFO");
    c->auth_listen_addr = dup_or_die("0.0.0.0:3025");
    rp_config_finish(c);
    c->min_free_disk = 64ull << 20;
    c->max_map_size = 8ull << 30;
    c->audit_retention_ms = 8760ull * 3600 * 1000; /* one year, as Teleport keeps events */
    c->rec_retention_ms = 720ull * 3600 * 1000;    /* 30 days */
    c->rec_max_size = 2ull << 30;
    c->max_login_attempts = 5;
    c->lockout_ms = 30 * 60 * 1000;
    c->max_session_ttl_ms = 30ull * 3600 * 1000; /* Teleport's default max_session_ttl */
    c->admin_identity_ttl_ms = 8ull * 3600 * 1000;
    c->password_hash_workers = 0;
    c->password_hash_queue = 64;
    c->password_hash_wait_ms = 2000;
    c->login_rate_per_address = 20;
    c->login_burst_per_address = 40;
    c->login_rate_per_user = 10;
    c->login_burst_per_user = 20;
    c->raft_listen_addr = dup_or_die("0.0.0.0:3030");
    c->election_timeout_ms = 1000;
    c->heartbeat_timeout_ms = 100;
    c->snapshot_threshold = 8192; /* each snapshot stalls the loop ~30 ms: docs/benchmarks.md */
    c->snapshot_trailing = 8192;
    c->web_listen_addr = dup_or_die("0.0.0.0:3080");
    c->tunnel_listen_addr = dup_or_die("0.0.0.0:3024");
    c->proxy_listen_addr = dup_or_die("0.0.0.0:3023");
    c->ssh_listen_addr = dup_or_die("0.0.0.0:3022");
    c->keep_alive_interval_ms = 30000;
    c->heartbeat_period_ms = 60000;
    c->shutdown_grace_ms = 30000;
    c->spool_max_size = 256ull << 20;
    c->auth_deadline_ms = 20000;
    /* As OpenSSH's Debian default (AcceptEnv LANG LC_*). */
    c->accept_env = calloc(3, sizeof *c->accept_env);
    if (c->accept_env == NULL)
        die_oom();
    c->accept_env[0] = dup_or_die("LANG");
    c->accept_env[1] = dup_or_die("LC_*");
    c->n_accept_env = 2;
}

static void free_strings(char **v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++)
        free(v[i]);
    free(v);
}

static void free_commands(struct rp_config_command *cmds, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(cmds[i].name);
        free_strings(cmds[i].argv, cmds[i].argc);
    }
    free(cmds);
}

static void free_labels(struct rp_config_label *labels, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(labels[i].name);
        free(labels[i].value);
    }
    free(labels);
}

static void free_keypairs(struct rp_config_keypair *kp, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(kp[i].key_file);
        free(kp[i].cert_file);
    }
    free(kp);
}

void rp_config_free(struct rp_config *c)
{
    char **strings[] = {
        &c->path,
        &c->nodename,
        &c->data_dir,
        &c->auth_server,
        &c->ca_pin,
        &c->proxy_server,
        &c->join_token,
        &c->log_severity,
        &c->cluster_name,
        &c->auth_listen_addr,
        &c->auth_public_addr,
        &c->raft_listen_addr,
        &c->web_listen_addr,
        &c->tunnel_listen_addr,
        &c->proxy_listen_addr,
        &c->proxy_public_addr,
        &c->ssh_listen_addr,
        &c->ssh_public_addr,
    };
    for (size_t i = 0; i < sizeof(strings) / sizeof(strings[0]); i++)
        free(*strings[i]);
    free_labels(c->ssh_labels, c->ssh_n_labels);
    free_strings(c->auth_servers, c->n_auth_servers);
    free_strings(c->accept_env, c->n_accept_env);
    free_commands(c->ssh_commands, c->ssh_n_commands);
    free_keypairs(c->https_keypairs, c->n_https_keypairs);
    memset(c, 0, sizeof(*c));
}

/* ---- sizes ---- */

int rp_parse_size(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        uint64_t mult;
    } units[] = {
        {"", 1},
        {"b", 1},
        {"k", 1000},
        {"kb", 1000},
        {"kib", 1ull << 10},
        {"m", 1000000},
        {"mb", 1000000},
        {"mib", 1ull << 20},
        {"g", 1000000000},
        {"gb", 1000000000},
        {"gib", 1ull << 30},
        {"t", 1000000000000ull},
        {"tb", 1000000000000ull},
        {"tib", 1ull << 40},
    };
    const char *p = s;
    uint64_t v = 0;

    if (s == NULL || !(*p >= '0' && *p <= '9'))
        return rp_err(RP_EINVAL,
                      "bad size '%s', expected an integer with an optional unit "
                      "like 64MB, 1GiB, 512k",
                      s != NULL ? s : "");
    for (; *p >= '0' && *p <= '9'; p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return rp_err(RP_EINVAL, "size '%s' is too large", s);
        v = v * 10 + d;
    }
    if (*p == ' ' && p[1] != '\0')
        p++; /* "64 MB" reads as well as "64MB" */
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        if (strcasecmp(p, units[i].unit) != 0)
            continue;
        if (v > UINT64_MAX / units[i].mult)
            return rp_err(RP_EINVAL, "size '%s' is too large", s);
        *bytes = v * units[i].mult;
        return 0;
    }
    return rp_err(RP_EINVAL,
                  "bad size '%s': unknown unit, expected B, k/KB, KiB, M/MB, MiB, "
                  "G/GB, GiB, T/TB or TiB",
                  s);
}

/* ---- value formats, shared by the loader and rp_config_validate() ----
 * Each returns NULL when @s is acceptable, else what was expected. */

static bool is_name_char(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '.' || ch == '_' || ch == '-';
}

static const char *check_name(const char *s, const char *expected)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_NAME_LEN)
        return expected;
    for (size_t i = 0; i < n; i++)
        if (!is_name_char(s[i]))
            return expected;
    return NULL;
}

static const char *check_nodename(const char *s)
{
    return check_name(s, "a node name of 1 to 253 characters from A-Z a-z 0-9 . _ -");
}

static const char *check_cluster_name(const char *s)
{
    return check_name(s, "a cluster name of 1 to 253 characters from A-Z a-z 0-9 . _ -");
}

static const char *check_dir(const char *s)
{
    if (s[0] == '\0' || strlen(s) >= PATH_MAX)
        return "a directory path";
    return NULL;
}

static const char *addr_expected = "host:port (IPv4 address, [IPv6 address] or DNS name; "
                                   "port 1-65535)";

static const char *check_addr(const char *s)
{
    if (rp_check_hostport(s) != 0)
        return addr_expected;
    if (s[0] == '[') {
        /* rp_check_hostport() does not look inside the brackets. */
        char host[INET6_ADDRSTRLEN + 1];
        struct in6_addr a6;
        size_t n = (size_t)(strchr(s, ']') - s - 1);
        if (n >= sizeof(host))
            return addr_expected;
        memcpy(host, s + 1, n);
        host[n] = '\0';
        if (inet_pton(AF_INET6, host, &a6) != 1)
            return addr_expected;
    }
    return NULL;
}

/* An address others dial: 0.0.0.0 and [::] only make sense to listen on. */
static const char *check_public_addr(const char *s)
{
    if (check_addr(s) != NULL)
        return addr_expected;
    if (strncmp(s, "0.0.0.0:", 8) == 0 || strncmp(s, "[::]:", 5) == 0)
        return "an address others can dial (not 0.0.0.0 or [::])";
    return NULL;
}

static const char *check_raft_addr(const char *s)
{
    static const char *expected = "an IPv4 address and port like 10.0.0.1:3030 (Raft peers "
                                  "are dialled by IPv4 address)";
    const char *colon = strrchr(s, ':');
    char host[INET_ADDRSTRLEN + 1];
    struct in_addr a4;

    if (colon == NULL || (size_t)(colon - s) >= sizeof(host) || rp_check_hostport(s) != 0)
        return expected;
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    if (inet_pton(AF_INET, host, &a4) != 1)
        return expected;
    return NULL;
}

static const char *check_ca_pin(const char *s)
{
    static const char *expected = "'sha256:' followed by 64 lower-case hex digits";
    if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 7 + 64)
        return expected;
    for (const char *p = s + 7; *p != '\0'; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return expected;
    return NULL;
}

static const char *check_token(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > MAX_TOKEN_LEN)
        return "a join token (1 to 1024 printable characters, no spaces)";
    for (size_t i = 0; i < n; i++)
        if (s[i] <= ' ' || s[i] >= 0x7f)
            return "a join token (1 to 1024 printable characters, no spaces)";
    return NULL;
}

static const char *check_severity(const char *s)
{
    return rp_log_level_parse(s) < 0 ? "one of DEBUG, INFO, WARN, WARNING, ERROR" : NULL;
}

static const char *check_log_output(const char *s)
{
    return strcmp(s, "stderr") == 0 ? NULL : "'stderr' (the only log output supported for now)";
}

static const char *check_join_method(const char *s)
{
    return strcmp(s, "token") == 0 ? NULL : "'token' (the only join method supported for now)";
}

static const char *check_version(const char *s)
{
    return strcmp(s, "v3") == 0 ? NULL : "'v3'";
}

static bool label_name_ok(const char *s)
{
    if (s[0] == '\0' || strlen(s) > MAX_NAME_LEN)
        return false;
    for (; *s != '\0'; s++)
        if (!is_name_char(*s) && *s != '/' && *s != ':' && *s != '*')
            return false;
    return true;
}

/* ---- the loader ---- */

struct loader {
    struct rp_config *c;
    const char *file;
    bool secret; /* the field being read is a secret (type_error does not quote it) */
};

struct field;
typedef int (*field_fn)(struct loader *ld, const struct field *f, const char *path,
                        const struct rp_ynode *v);

struct section {
    const char *path;           /* "auth_service.raft"; "" at the top level */
    const struct field *fields; /* ends with a NULL name */
};

struct field {
    const char *name;
    field_fn parse;                     /* reads and stores the value */
    size_t off;                         /* where parse stores, in struct rp_config */
    const char *(*check)(const char *); /* string fields: the format */
    const struct section *sub;          /* for parse_sub: the nested section */
    bool secret;                        /* never echo the value in a message */
};

#define AT(member) offsetof(struct rp_config, member)
#define NOT_STORED SIZE_MAX /* .off of a field that is checked, not stored */

static void *field_ptr(struct loader *ld, const struct field *f)
{
    return (char *)ld->c + f->off;
}

/* "FILE:LINE: PATH: expected EXPECTED, got 'VALUE'" for the value at @v. */
static int type_error(struct loader *ld, const struct rp_ynode *v, const char *path,
                      const char *expected)
{
    char got[300];

    if (v->type == RP_Y_SCALAR && v->value[0] != '\0' && ld->secret)
        snprintf(got, sizeof(got), "a value of %zu bytes (not shown: it is a secret)",
                 strlen(v->value));
    else if (v->type == RP_Y_MAP)
        snprintf(got, sizeof(got), "a map");
    else if (v->type == RP_Y_SEQ)
        snprintf(got, sizeof(got), "a list");
    else if (v->value[0] == '\0' && !v->quoted)
        snprintf(got, sizeof(got), "nothing");
    else {
        char ex[280];
        rp_yaml_excerpt(v->value, ex, sizeof(ex));
        snprintf(got, sizeof(got), "'%s'", ex);
    }
    return rp_err(RP_EINVAL, "%s:%d: %s: expected %s, got %s", ld->file, v->line, path, expected,
                  got);
}

/* The text of @v, which must be a scalar and not null. */
static int scalar_text(struct loader *ld, const struct rp_ynode *v, const char *path,
                       const char *expected, const char **out)
{
    if (v->type != RP_Y_SCALAR || rp_ynode_is_null(v))
        return type_error(ld, v, path, expected);
    *out = v->value;
    return 0;
}

static int parse_string(struct loader *ld, const struct field *f, const char *path,
                        const struct rp_ynode *v)
{
    const char *s = NULL;
    /* Asked with an empty string, every check answers what it expects. */
    const char *expected = f->check("");
    int rv = scalar_text(ld, v, path, expected != NULL ? expected : "a string", &s);
    if (rv != 0)
        return rv;
    if ((expected = f->check(s)) != NULL)
        return type_error(ld, v, path, expected);
    if (f->off != NOT_STORED)
        rp_config_set(field_ptr(ld, f), s);
    return 0;
}

static int parse_severity(struct loader *ld, const struct field *f, const char *path,
                          const struct rp_ynode *v)
{
    static const char *names[] = {"DEBUG", "INFO", "WARN", "ERROR"};
    int rv = parse_string(ld, f, path, v); /* NOT_STORED: checks only */
    if (rv != 0)
        return rv;
    rp_config_set(&ld->c->log_severity, names[rp_log_level_parse(v->value)]);
    return 0;
}

static int parse_bool(struct loader *ld, const struct field *f, const char *path,
                      const struct rp_ynode *v)
{
    static const char *expected = "yes or no (or true/false, on/off)";
    static const char *yes[] = {"yes", "true", "on"}, *no[] = {"no", "false", "off"};
    const char *s = NULL;
    int rv = scalar_text(ld, v, path, expected, &s);
    if (rv != 0)
        return rv;
    /* Quoted "yes" is accepted too: Teleport's own examples write enabled: "yes". */
    for (int i = 0; i < 3; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *(bool *)field_ptr(ld, f) = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *(bool *)field_ptr(ld, f) = false;
            return 0;
        }
    }
    return type_error(ld, v, path, expected);
}

/* A duration with a unit into *@ms. */
static int duration_ms(struct loader *ld, const char *path, const struct rp_ynode *v, uint64_t *ms)
{
    static const char *expected = "a duration with a unit, like 100ms, 1s or 1m30s";
    const char *s = NULL;
    int rv = scalar_text(ld, v, path, expected, &s);
    if (rv != 0)
        return rv;
    /* rp_parse_duration_ms() reads a bare number as seconds; in a file that sits next
     * to "100ms" values, "election_timeout: 1000" is far more likely to mean ms. */
    if (strspn(s, "0123456789") == strlen(s) || rp_parse_duration_ms(s, ms) != 0)
        return type_error(ld, v, path, expected);
    return 0;
}

static int parse_duration(struct loader *ld, const struct field *f, const char *path,
                          const struct rp_ynode *v)
{
    uint64_t ms;
    int rv = duration_ms(ld, path, v, &ms);
    if (rv != 0)
        return rv;
    if (ms > UINT_MAX)
        return type_error(ld, v, path, "a duration shorter than 49 days");
    *(unsigned *)field_ptr(ld, f) = (unsigned)ms;
    return 0;
}

/* The local admin identity's lifetime: short (a stolen copy expires soon), but long
 * enough for its server to renew it at half-life: 1m to 24h, in a uint64_t of ms. */
static int parse_admin_ttl(struct loader *ld, const struct field *f, const char *path,
                           const struct rp_ynode *v)
{
    uint64_t ms;
    int rv = duration_ms(ld, path, v, &ms);
    if (rv != 0)
        return rv;
    if (ms < 60000 || ms > 24ull * 3600 * 1000)
        return type_error(ld, v, path, "a duration from 1m to 24h");
    *(uint64_t *)field_ptr(ld, f) = ms;
    return 0;
}

/* Durations of days or years (e.g. audit retention: 8760h), in a uint64_t of ms. */
static int parse_long_duration(struct loader *ld, const struct field *f, const char *path,
                               const struct rp_ynode *v)
{
    uint64_t ms;
    int rv = duration_ms(ld, path, v, &ms);
    if (rv != 0)
        return rv;
    if (ms < 60000)
        return type_error(ld, v, path, "a duration of at least 1m");
    *(uint64_t *)field_ptr(ld, f) = ms;
    return 0;
}

static int parse_size(struct loader *ld, const struct field *f, const char *path,
                      const struct rp_ynode *v)
{
    static const char *expected = "a size like 64MB, 1GiB or 1048576 (bytes)";
    const char *s = NULL;
    int rv = scalar_text(ld, v, path, expected, &s);
    if (rv != 0)
        return rv;
    if (rp_parse_size(s, field_ptr(ld, f)) != 0)
        return type_error(ld, v, path, expected);
    return 0;
}

/* A positive decimal integer no larger than @max. */
static int positive_int(struct loader *ld, const struct rp_ynode *v, const char *path, uint64_t max,
                        uint64_t *out)
{
    static const char *expected = "a positive integer";
    const char *s = NULL;
    uint64_t n = 0;
    int rv = scalar_text(ld, v, path, expected, &s);
    if (rv != 0)
        return rv;
    if (*s == '\0')
        return type_error(ld, v, path, expected);
    for (const char *p = s; *p != '\0'; p++) {
        if (*p < '0' || *p > '9')
            return type_error(ld, v, path, expected);
        if (n > (max - (uint64_t)(*p - '0')) / 10) {
            char what[64];
            snprintf(what, sizeof(what), "a positive integer up to %llu", (unsigned long long)max);
            return type_error(ld, v, path, what);
        }
        n = n * 10 + (uint64_t)(*p - '0');
    }
    if (n == 0)
        return type_error(ld, v, path, expected);
    *out = n;
    return 0;
}

static int parse_u64(struct loader *ld, const struct field *f, const char *path,
                     const struct rp_ynode *v)
{
    return positive_int(ld, v, path, UINT64_MAX, field_ptr(ld, f));
}

static int parse_unsigned(struct loader *ld, const struct field *f, const char *path,
                          const struct rp_ynode *v)
{
    uint64_t n;
    int rv = positive_int(ld, v, path, UINT_MAX, &n);
    if (rv == 0)
        *(unsigned *)field_ptr(ld, f) = (unsigned)n;
    return rv;
}

static int parse_labels(struct loader *ld, const struct field *f, const char *path,
                        const struct rp_ynode *v)
{
    static const char *expected = "a map of label names to values";
    struct rp_config_label *labels = NULL;
    size_t n = 0;

    if (rp_ynode_is_null(v))
        goto done; /* "labels:" with nothing: no labels */
    if (v->type != RP_Y_MAP)
        return type_error(ld, v, path, expected);
    labels = calloc(v->n + 1, sizeof(*labels));
    if (labels == NULL)
        return rp_err(RP_ENOMEM, "%s: out of memory", ld->file);
    for (; n < v->n; n++) {
        const struct rp_ynode *val = v->vals[n];
        char ex[280];
        if (!label_name_ok(v->keys[n])) {
            rp_yaml_excerpt(v->keys[n], ex, sizeof(ex));
            free_labels(labels, n);
            return rp_err(RP_EINVAL,
                          "%s:%d: %s: bad label name '%s', expected 1 to 253 "
                          "characters from A-Z a-z 0-9 / . _ : * -",
                          ld->file, v->key_lines[n], path, ex);
        }
        if (val->type != RP_Y_SCALAR) {
            char sub[300];
            rp_yaml_excerpt(v->keys[n], ex, sizeof(ex));
            snprintf(sub, sizeof(sub), "%s.%s", path, ex);
            free_labels(labels, n);
            return type_error(ld, val, sub, "a label value (a string)");
        }
        labels[n].name = strdup(v->keys[n]);
        /* As in Teleport, "env:" or "env: ~" is the empty value. */
        labels[n].value = strdup(rp_ynode_is_null(val) ? "" : val->value);
        if (labels[n].name == NULL || labels[n].value == NULL) {
            free_labels(labels, n + 1);
            return rp_err(RP_ENOMEM, "%s: out of memory", ld->file);
        }
    }
done:
    free_labels(ld->c->ssh_labels, ld->c->ssh_n_labels);
    ld->c->ssh_labels = labels;
    ld->c->ssh_n_labels = n;
    return 0;
}

/* An environment variable name pattern: [A-Za-z_][A-Za-z0-9_]*, optionally ending in '*'. */
static const char *check_env_pattern(const char *s)
{
    static const char *expected = "a variable name like LANG or a prefix pattern like LC_*";
    size_t n = strlen(s);
    if (n == 0 || n > 128)
        return expected;
    for (size_t i = 0; i < n; i++) {
        char ch = s[i];
        bool alpha = (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || ch == '_';
        if (ch == '*' && i == n - 1 && i > 0)
            continue;
        if (!alpha && !(i > 0 && ch >= '0' && ch <= '9'))
            return expected;
    }
    return NULL;
}

/* A list of scalars, each passing @check, at most @max of them, into a malloc'd
 * array (*@out, *@n; replacing what was there). */
static int parse_list(struct loader *ld, const char *path, const struct rp_ynode *v, size_t max,
                      const char *(*check)(const char *), char ***out, size_t *n_out)
{
    char expected[200];
    snprintf(expected, sizeof expected, "a list of at most %zu entries, each %s", max, check(""));
    if (rp_ynode_is_null(v)) {
        free_strings(*out, *n_out);
        *out = NULL;
        *n_out = 0;
        return 0;
    }
    if (v->type != RP_Y_SEQ || v->n > max)
        return type_error(ld, v, path, expected);
    char **list = calloc(v->n + 1, sizeof *list);
    if (list == NULL)
        return rp_err(RP_ENOMEM, "%s: out of memory", ld->file);
    for (size_t i = 0; i < v->n; i++) {
        const struct rp_ynode *e = v->vals[i];
        char sub[160];
        snprintf(sub, sizeof sub, "%s[%zu]", path, i);
        const char *why = NULL;
        if (e->type != RP_Y_SCALAR || rp_ynode_is_null(e) || (why = check(e->value)) != NULL) {
            free_strings(list, i);
            return type_error(ld, e, sub, why ? why : check(""));
        }
        list[i] = dup_or_die(e->value);
    }
    free_strings(*out, *n_out);
    *out = list;
    *n_out = v->n;
    return 0;
}

static int parse_auth_servers(struct loader *ld, const struct field *f, const char *path,
                              const struct rp_ynode *v)
{
    return parse_list(ld, path, v, RP_CONFIG_MAX_AUTH_SERVERS, check_addr, &ld->c->auth_servers,
                      &ld->c->n_auth_servers);
}

static int parse_accept_env(struct loader *ld, const struct field *f, const char *path,
                            const struct rp_ynode *v)
{
    return parse_list(ld, path, v, RP_CONFIG_MAX_ACCEPT_ENV, check_env_pattern, &ld->c->accept_env,
                      &ld->c->n_accept_env);
}

/* A duration from @min_ms to @max_ms into the uint64_t field. */
static int duration_in(struct loader *ld, const struct field *f, const char *path,
                       const struct rp_ynode *v, uint64_t min_ms, uint64_t max_ms,
                       const char *range)
{
    uint64_t ms;
    int rv = duration_ms(ld, path, v, &ms);
    if (rv != 0)
        return rv;
    if (ms < min_ms || ms > max_ms)
        return type_error(ld, v, path, range);
    *(uint64_t *)field_ptr(ld, f) = ms;
    return 0;
}

static int parse_heartbeat_period(struct loader *ld, const struct field *f, const char *path,
                                  const struct rp_ynode *v)
{
    return duration_in(ld, f, path, v, 1000, 3600000, "a duration from 1s to 1h");
}

static int parse_shutdown_grace(struct loader *ld, const struct field *f, const char *path,
                                const struct rp_ynode *v)
{
    return duration_in(ld, f, path, v, 1, 3600000, "a duration up to 1h");
}

static int parse_keep_alive(struct loader *ld, const struct field *f, const char *path,
                            const struct rp_ynode *v)
{
    return duration_in(ld, f, path, v, 1000, 3600000, "a duration from 1s to 1h");
}

/* ssh_service.listen_addr, remembering that the file set it (proxy mode listens only
 * then). */
static int parse_ssh_listen(struct loader *ld, const struct field *f, const char *path,
                            const struct rp_ynode *v)
{
    int rv = parse_string(ld, f, path, v);
    if (rv == 0)
        ld->c->ssh_listen_addr_set = true;
    return rv;
}

static int parse_auth_deadline(struct loader *ld, const struct field *f, const char *path,
                               const struct rp_ynode *v)
{
    return duration_in(ld, f, path, v, 1000, 600000, "a duration from 1s to 10m");
}

static int parse_spool_size(struct loader *ld, const struct field *f, const char *path,
                            const struct rp_ynode *v)
{
    int rv = parse_size(ld, f, path, v);
    if (rv == 0 && *(uint64_t *)field_ptr(ld, f) < (1u << 20))
        return type_error(ld, v, path, "a size of at least 1MiB");
    return rv;
}

static const char *check_command_name(const char *s)
{
    return label_name_ok(s) ? NULL
                            : "a label name of 1 to 253 characters from A-Z a-z 0-9 / . _ : * -";
}

static const char *check_argv_item(const char *s)
{
    return strlen(s) <= 4096 ? NULL : "an argument of at most 4096 bytes";
}

/* One entry of ssh_service.commands: {name, command: [argv...], period}. */
static int parse_command(struct loader *ld, const char *path, const struct rp_ynode *v,
                         struct rp_config_command *out)
{
    static const char *expected = "a map with name, command (a list: the program and its "
                                  "arguments) and period (optional, default 1m)";
    char sub[200];
    if (v->type != RP_Y_MAP)
        return type_error(ld, v, path, expected);
    memset(out, 0, sizeof *out);
    out->period_ms = 60000;
    for (size_t i = 0; i < v->n; i++) {
        const char *key = v->keys[i];
        const struct rp_ynode *val = v->vals[i];
        snprintf(sub, sizeof sub, "%s.%s", path, key);
        int rv = 0;
        if (strcmp(key, "name") == 0) {
            const char *why;
            if (val->type != RP_Y_SCALAR || rp_ynode_is_null(val) ||
                (why = check_command_name(val->value)) != NULL)
                rv = type_error(ld, val, sub, check_command_name(""));
            else
                rp_config_set(&out->name, val->value);
        } else if (strcmp(key, "command") == 0) {
            rv = parse_list(ld, sub, val, 64, check_argv_item, &out->argv, &out->argc);
            if (rv == 0 && out->argc == 0)
                rv = type_error(ld, val, sub, "a list holding at least the program to run");
        } else if (strcmp(key, "period") == 0) {
            uint64_t ms;
            rv = duration_ms(ld, sub, val, &ms);
            if (rv == 0 && (ms < 1000 || ms > 24ull * 3600 * 1000))
                rv = type_error(ld, val, sub, "a duration from 1s to 24h");
            if (rv == 0)
                out->period_ms = ms;
        } else {
            rv = rp_err(RP_EINVAL,
                        "%s:%d: unknown field '%s' in %s, expected one of: name, command, period",
                        ld->file, v->key_lines[i], key, path);
        }
        if (rv != 0)
            return rv;
    }
    if (out->name == NULL || out->argv == NULL)
        return type_error(ld, v, path, expected);
    return 0;
}

static int parse_commands(struct loader *ld, const struct field *f, const char *path,
                          const struct rp_ynode *v)
{
    struct rp_config_command *cmds = NULL;
    size_t n = 0;
    if (!rp_ynode_is_null(v)) {
        if (v->type != RP_Y_SEQ || v->n > RP_CONFIG_MAX_COMMANDS)
            return type_error(ld, v, path, "a list of at most 64 commands");
        cmds = calloc(v->n + 1, sizeof *cmds);
        if (cmds == NULL)
            return rp_err(RP_ENOMEM, "%s: out of memory", ld->file);
        for (; n < v->n; n++) {
            char sub[160];
            snprintf(sub, sizeof sub, "%s[%zu]", path, n);
            int rv = parse_command(ld, sub, v->vals[n], &cmds[n]);
            for (size_t j = 0; rv == 0 && j < n; j++)
                if (strcmp(cmds[j].name, cmds[n].name) == 0)
                    rv = rp_err(RP_EINVAL, "%s:%d: %s.name: '%s' is already the name of %s[%zu]",
                                ld->file, v->vals[n]->line, sub, cmds[n].name, path, j);
            if (rv != 0) {
                free_commands(cmds, n + 1);
                return rv;
            }
        }
    }
    free_commands(ld->c->ssh_commands, ld->c->ssh_n_commands);
    ld->c->ssh_commands = cmds;
    ld->c->ssh_n_commands = n;
    return 0;
}

static int parse_keypair(struct loader *ld, const char *path, const struct rp_ynode *v,
                         struct rp_config_keypair *out)
{
    static const char *expected = "a map with key_file and cert_file (PEM file paths)";
    char sub[200];
    if (v->type != RP_Y_MAP)
        return type_error(ld, v, path, expected);
    for (size_t i = 0; i < v->n; i++) {
        const char *key = v->keys[i];
        const struct rp_ynode *val = v->vals[i];
        char **dst = strcmp(key, "key_file") == 0    ? &out->key_file
                     : strcmp(key, "cert_file") == 0 ? &out->cert_file
                                                     : NULL;
        snprintf(sub, sizeof sub, "%s.%s", path, key);
        if (dst == NULL)
            return rp_err(RP_EINVAL,
                          "%s:%d: unknown field '%s' in %s, expected one of: key_file, cert_file",
                          ld->file, v->key_lines[i], key, path);
        if (val->type != RP_Y_SCALAR || rp_ynode_is_null(val) || check_dir(val->value) != NULL)
            return type_error(ld, val, sub, "a file path");
        rp_config_set(dst, val->value);
    }
    if (out->key_file == NULL || out->cert_file == NULL)
        return type_error(ld, v, path, expected);
    return 0;
}

static int parse_keypairs(struct loader *ld, const struct field *f, const char *path,
                          const struct rp_ynode *v)
{
    struct rp_config_keypair *kp = NULL;
    size_t n = 0;
    if (!rp_ynode_is_null(v)) {
        if (v->type != RP_Y_SEQ || v->n > RP_CONFIG_MAX_KEYPAIRS)
            return type_error(ld, v, path, "a list of at most 8 {key_file, cert_file} maps");
        kp = calloc(v->n + 1, sizeof *kp);
        if (kp == NULL)
            return rp_err(RP_ENOMEM, "%s: out of memory", ld->file);
        for (; n < v->n; n++) {
            char sub[160];
            snprintf(sub, sizeof sub, "%s[%zu]", path, n);
            int rv = parse_keypair(ld, sub, v->vals[n], &kp[n]);
            if (rv != 0) {
                free_keypairs(kp, n + 1);
                return rv;
            }
        }
    }
    free_keypairs(ld->c->https_keypairs, ld->c->n_https_keypairs);
    ld->c->https_keypairs = kp;
    ld->c->n_https_keypairs = n;
    return 0;
}

int rp_config_set_auth_servers(struct rp_config *c, const char *list)
{
    char **v = NULL;
    size_t n = 0;
    const char *p = list;
    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);
        char one[300];
        if (len == 0 || len >= sizeof one || n == RP_CONFIG_MAX_AUTH_SERVERS) {
            free_strings(v, n);
            return rp_err(RP_EINVAL, "auth servers '%.200s': expected 1 to %d comma-separated %s",
                          list, RP_CONFIG_MAX_AUTH_SERVERS, addr_expected);
        }
        memcpy(one, p, len);
        one[len] = '\0';
        if (check_addr(one) != NULL) {
            char ex[280];
            rp_yaml_excerpt(one, ex, sizeof ex);
            free_strings(v, n);
            return rp_err(RP_EINVAL, "auth server '%s': expected %s", ex, addr_expected);
        }
        char **grown = realloc(v, (n + 1) * sizeof *v);
        if (grown == NULL)
            die_oom();
        v = grown;
        v[n++] = dup_or_die(one);
        p += len;
        if (*p == ',')
            p++;
    }
    if (n == 0)
        return rp_err(RP_EINVAL, "auth servers: expected at least one %s", addr_expected);
    free_strings(c->auth_servers, c->n_auth_servers);
    c->auth_servers = v;
    c->n_auth_servers = n;
    return 0;
}

size_t rp_config_auth_addrs(const struct rp_config *c, const char **out, size_t max)
{
    size_t n = 0;
    if (c->proxy_server != NULL && c->auth_server == NULL && c->n_auth_servers == 0) {
        if (max > 0)
            out[n++] = c->proxy_server;
        return n;
    }
    if (c->auth_server != NULL && n < max)
        out[n++] = c->auth_server;
    for (size_t i = 0; i < c->n_auth_servers && n < max; i++) {
        bool dup = false;
        for (size_t j = 0; j < n && !dup; j++)
            dup = strcmp(out[j], c->auth_servers[i]) == 0;
        if (!dup)
            out[n++] = c->auth_servers[i];
    }
    return n;
}

static int walk_section(struct loader *ld, const struct section *sec, const struct rp_ynode *map,
                        const char *path);

static int parse_sub(struct loader *ld, const struct field *f, const char *path,
                     const struct rp_ynode *v)
{
    return walk_section(ld, f->sub, v, path);
}

static const struct field join_fields[] = {
    {.name = "token_name",
     .parse = parse_string,
     .off = AT(join_token),
     .check = check_token,
     .secret = true},
    {.name = "method", .parse = parse_string, .off = NOT_STORED, .check = check_join_method},
    {.name = NULL},
};
static const struct section join_section = {"teleport.join_params", join_fields};

static const struct field log_fields[] = {
    {.name = "output", .parse = parse_string, .off = NOT_STORED, .check = check_log_output},
    {.name = "severity", .parse = parse_severity, .off = NOT_STORED, .check = check_severity},
    {.name = NULL},
};
static const struct section log_section = {"teleport.log", log_fields};

static const struct field teleport_fields[] = {
    {.name = "nodename", .parse = parse_string, .off = AT(nodename), .check = check_nodename},
    {.name = "data_dir", .parse = parse_string, .off = AT(data_dir), .check = check_dir},
    {.name = "auth_server", .parse = parse_string, .off = AT(auth_server), .check = check_addr},
    {.name = "auth_servers", .parse = parse_auth_servers},
    {.name = "ca_pin", .parse = parse_string, .off = AT(ca_pin), .check = check_ca_pin},
    {.name = "proxy_server", .parse = parse_string, .off = AT(proxy_server), .check = check_addr},
    {.name = "keep_alive_interval", .parse = parse_keep_alive, .off = AT(keep_alive_interval_ms)},
    {.name = "join_params", .parse = parse_sub, .sub = &join_section},
    {.name = "log", .parse = parse_sub, .sub = &log_section},
    {.name = NULL},
};
static const struct section teleport_section = {"teleport", teleport_fields};

static const struct field raft_fields[] = {
    {.name = "id", .parse = parse_u64, .off = AT(raft_id)},
    {.name = "listen_addr",
     .parse = parse_string,
     .off = AT(raft_listen_addr),
     .check = check_raft_addr},
    {.name = "election_timeout", .parse = parse_duration, .off = AT(election_timeout_ms)},
    {.name = "heartbeat_timeout", .parse = parse_duration, .off = AT(heartbeat_timeout_ms)},
    {.name = "snapshot_threshold", .parse = parse_unsigned, .off = AT(snapshot_threshold)},
    {.name = "snapshot_trailing", .parse = parse_unsigned, .off = AT(snapshot_trailing)},
    {.name = NULL},
};
static const struct section raft_section = {"auth_service.raft", raft_fields};

static const struct field recordings_fields[] = {
    {.name = "retention", .parse = parse_long_duration, .off = AT(rec_retention_ms)},
    {.name = "max_size", .parse = parse_size, .off = AT(rec_max_size)},
    {.name = "max_map_size", .parse = parse_size, .off = AT(rec_max_map_size)},
    {.name = NULL},
};
static const struct section recordings_section = {"auth_service.recordings", recordings_fields};

static const struct field auth_fields[] = {
    {.name = "enabled", .parse = parse_bool, .off = AT(auth_enabled)},
    {.name = "cluster_name",
     .parse = parse_string,
     .off = AT(cluster_name),
     .check = check_cluster_name},
    {.name = "listen_addr",
     .parse = parse_string,
     .off = AT(auth_listen_addr),
     .check = check_addr},
    {.name = "public_addr",
     .parse = parse_string,
     .off = AT(auth_public_addr),
     .check = check_public_addr},
    {.name = "min_free_disk", .parse = parse_size, .off = AT(min_free_disk)},
    {.name = "audit_retention", .parse = parse_long_duration, .off = AT(audit_retention_ms)},
    {.name = "max_login_attempts", .parse = parse_unsigned, .off = AT(max_login_attempts)},
    {.name = "lockout_duration", .parse = parse_duration, .off = AT(lockout_ms)},
    {.name = "max_session_ttl", .parse = parse_long_duration, .off = AT(max_session_ttl_ms)},
    {.name = "admin_identity_ttl", .parse = parse_admin_ttl, .off = AT(admin_identity_ttl_ms)},
    {.name = "raft", .parse = parse_sub, .sub = &raft_section},
    {.name = "password_hash_workers", .parse = parse_unsigned, .off = AT(password_hash_workers)},
    {.name = "password_hash_queue", .parse = parse_unsigned, .off = AT(password_hash_queue)},
    {.name = "password_hash_wait", .parse = parse_duration, .off = AT(password_hash_wait_ms)},
    {.name = "login_rate_per_address", .parse = parse_unsigned, .off = AT(login_rate_per_address)},
    {.name = "login_burst_per_address",
     .parse = parse_unsigned,
     .off = AT(login_burst_per_address)},
    {.name = "login_rate_per_user", .parse = parse_unsigned, .off = AT(login_rate_per_user)},
    {.name = "login_burst_per_user", .parse = parse_unsigned, .off = AT(login_burst_per_user)},
    {.name = "recordings", .parse = parse_sub, .sub = &recordings_section},
    {.name = "max_map_size", .parse = parse_size, .off = AT(max_map_size)},
    {.name = NULL},
};
static const struct section auth_section = {"auth_service", auth_fields};

static const struct field proxy_fields[] = {
    {.name = "enabled", .parse = parse_bool, .off = AT(proxy_enabled)},
    {.name = "listen_addr",
     .parse = parse_string,
     .off = AT(proxy_listen_addr),
     .check = check_addr},
    {.name = "web_listen_addr",
     .parse = parse_string,
     .off = AT(web_listen_addr),
     .check = check_addr},
    {.name = "tunnel_listen_addr",
     .parse = parse_string,
     .off = AT(tunnel_listen_addr),
     .check = check_addr},
    {.name = "public_addr",
     .parse = parse_string,
     .off = AT(proxy_public_addr),
     .check = check_public_addr},
    {.name = "https_keypairs", .parse = parse_keypairs},
    {.name = NULL},
};
static const struct section proxy_section = {"proxy_service", proxy_fields};

static const struct field ssh_fields[] = {
    {.name = "enabled", .parse = parse_bool, .off = AT(ssh_enabled)},
    {.name = "listen_addr",
     .parse = parse_ssh_listen,
     .off = AT(ssh_listen_addr),
     .check = check_addr},
    {.name = "public_addr",
     .parse = parse_string,
     .off = AT(ssh_public_addr),
     .check = check_public_addr},
    {.name = "labels", .parse = parse_labels},
    {.name = "commands", .parse = parse_commands},
    {.name = "heartbeat_period", .parse = parse_heartbeat_period, .off = AT(heartbeat_period_ms)},
    {.name = "shutdown_grace", .parse = parse_shutdown_grace, .off = AT(shutdown_grace_ms)},
    {.name = "accept_env", .parse = parse_accept_env},
    {.name = "spool_max_size", .parse = parse_spool_size, .off = AT(spool_max_size)},
    {.name = "auth_deadline", .parse = parse_auth_deadline, .off = AT(auth_deadline_ms)},
    {.name = NULL},
};
static const struct section ssh_section = {"ssh_service", ssh_fields};

static const struct field top_fields[] = {
    {.name = "version", .parse = parse_string, .off = NOT_STORED, .check = check_version},
    {.name = "teleport", .parse = parse_sub, .sub = &teleport_section},
    {.name = "auth_service", .parse = parse_sub, .sub = &auth_section},
    {.name = "proxy_service", .parse = parse_sub, .sub = &proxy_section},
    {.name = "ssh_service", .parse = parse_sub, .sub = &ssh_section},
    {.name = NULL},
};
static const struct section top_section = {"", top_fields};

static int unknown_field(struct loader *ld, const struct section *sec, const char *key, int line)
{
    char ex[200], names[700];
    size_t o = 0;

    rp_yaml_excerpt(key, ex, sizeof(ex));
    names[0] = '\0';
    /* Stops at the buffer's end: snprintf returns what it would have written, and the
     * offset must never pass the size it is subtracted from. */
    for (const struct field *f = sec->fields; f->name != NULL && o < sizeof(names) - 1; f++) {
        int n = snprintf(names + o, sizeof(names) - o, "%s%s", o ? ", " : "", f->name);
        o = n < 0 ? sizeof(names) - 1 : o + (size_t)n;
    }
    if (sec->path[0] == '\0')
        return rp_err(RP_EINVAL, "%s:%d: unknown field '%s' at the top level, expected one of: %s",
                      ld->file, line, ex, names);
    return rp_err(RP_EINVAL, "%s:%d: unknown field '%s' in %s, expected one of: %s", ld->file, line,
                  ex, sec->path, names);
}

static int walk_section(struct loader *ld, const struct section *sec, const struct rp_ynode *map,
                        const char *path)
{
    if (rp_ynode_is_null(map))
        return 0; /* "ssh_service:" with nothing under it */
    if (map->type != RP_Y_MAP)
        return type_error(ld, map, path[0] ? path : "the file", "a map of fields");
    for (size_t i = 0; i < map->n; i++) {
        const struct field *f = sec->fields;
        while (f->name != NULL && strcmp(f->name, map->keys[i]) != 0)
            f++;
        if (f->name == NULL)
            return unknown_field(ld, sec, map->keys[i], map->key_lines[i]);
        char sub[128];
        snprintf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "", f->name);
        ld->secret = f->secret;
        int rv = f->parse(ld, f, sub, map->vals[i]);
        ld->secret = false;
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* A service section that is present turns its service on, unless it says otherwise. */
static void enable_present(const struct rp_ynode *root, const char *name, bool *enabled)
{
    const struct rp_ynode *sec = rp_ynode_get(root, name);
    if (sec != NULL && rp_ynode_get(sec, "enabled") == NULL)
        *enabled = true;
}

/* Applies the parsed file @root (named @name in messages) to @c; @root stays the
 * caller's. */
static int load_tree(struct rp_config *c, const char *name, const struct rp_ynode *root)
{
    struct loader ld = {.c = c, .file = name};
    int rv;

    if ((rv = walk_section(&ld, &top_section, root, "")) != 0)
        return rv;
    enable_present(root, "auth_service", &c->auth_enabled);
    enable_present(root, "proxy_service", &c->proxy_enabled);
    enable_present(root, "ssh_service", &c->ssh_enabled);
    if (rp_ynode_get(rp_ynode_get(root, "auth_service"), "public_addr") != NULL)
        c->auth_public_addr_set = true;
    rp_config_finish(c);
    return 0;
}

int rp_config_load(struct rp_config *c, const char *path)
{
    struct rp_ynode *root;
    int rv;

    if ((rv = rp_yaml_parse_file(path, &root)) != 0)
        return rv;
    rp_config_set(&c->path, path);
    rv = load_tree(c, path, root);
    rp_ynode_free(root);
    return rv;
}

int rp_config_load_str(struct rp_config *c, const char *name, const char *text, size_t n)
{
    struct rp_ynode *root;
    int rv;

    if ((rv = rp_yaml_parse_str(name, text, n, &root)) != 0)
        return rv;
    rv = load_tree(c, name, root);
    rp_ynode_free(root);
    return rv;
}

/* ---- cross-field rules ---- */

static int check_field(const char *path, const char *value, const char *(*check)(const char *))
{
    const char *expected;
    char ex[280];

    if (value == NULL)
        return rp_err(RP_EINVAL, "%s is not set, expected %s", path, check(""));
    if ((expected = check(value)) == NULL)
        return 0;
    rp_yaml_excerpt(value, ex, sizeof(ex));
    return rp_err(RP_EINVAL, "%s: expected %s, got '%s'", path, expected, ex);
}

static int check_optional(const char *path, const char *value, const char *(*check)(const char *))
{
    return value == NULL ? 0 : check_field(path, value, check);
}

int rp_config_validate(const struct rp_config *c)
{
    int rv;

#define CHECK(call)                                                                                \
    do {                                                                                           \
        if ((rv = (call)) != 0)                                                                    \
            return rv;                                                                             \
    } while (0)

    CHECK(check_field("teleport.nodename", c->nodename, check_nodename));
    CHECK(check_field("teleport.data_dir", c->data_dir, check_dir));
    CHECK(check_field("teleport.log.severity", c->log_severity, check_severity));
    CHECK(check_optional("teleport.auth_server", c->auth_server, check_addr));
    CHECK(check_optional("teleport.ca_pin", c->ca_pin, check_ca_pin));
    if (c->join_token != NULL && check_token(c->join_token) != NULL)
        return rp_err(RP_EINVAL,
                      "teleport.join_params.token_name: expected %s (the value is not "
                      "shown: it is a secret)",
                      check_token(""));
    if (c->join_token != NULL && c->ca_pin == NULL)
        return rp_err(RP_EINVAL, "teleport.ca_pin is required with teleport.join_params."
                                 "token_name: a joining server checks the cluster's CA against it");
    for (size_t i = 0; i < c->n_auth_servers; i++)
        CHECK(check_field("teleport.auth_servers", c->auth_servers[i], check_addr));
    CHECK(check_optional("teleport.proxy_server", c->proxy_server, check_addr));
    bool names_auth = c->auth_server != NULL || c->n_auth_servers > 0;
    if (c->proxy_server != NULL && names_auth)
        return rp_err(RP_EINVAL, "teleport.proxy_server and teleport.auth_server (or "
                                 "auth_servers) exclude each other: an agent reaches auth either "
                                 "directly or through the proxy");
    if (c->proxy_server != NULL && (c->auth_enabled || c->proxy_enabled))
        return rp_err(RP_EINVAL, "teleport.proxy_server is for node agents (ssh_service); "
                                 "auth and proxy servers name auth_server instead");
    if (c->keep_alive_interval_ms < 1000 || c->keep_alive_interval_ms > 3600000)
        return rp_err(RP_EINVAL, "teleport.keep_alive_interval must be between 1s and 1h");
    bool knows_auth = names_auth || c->proxy_server != NULL;
    if (c->join_token != NULL && !knows_auth)
        return rp_err(RP_EINVAL, "teleport.auth_server (or auth_servers, or proxy_server) is "
                                 "required with teleport.join_params.token_name: it is the auth "
                                 "server (or proxy) to join through");

    if (c->auth_enabled) {
        if (c->raft_id == 0)
            return rp_err(RP_EINVAL, "auth_service.raft.id is required when auth_service is "
                                     "enabled");
        /* A joining auth server learns the cluster name from the cluster it joins. */
        if (c->cluster_name == NULL && c->join_token == NULL)
            return rp_err(RP_EINVAL,
                          "auth_service.cluster_name is required to bootstrap a new "
                          "cluster (an auth server joining with teleport.join_params learns it "
                          "from the cluster)");
        CHECK(check_optional("auth_service.cluster_name", c->cluster_name, check_cluster_name));
        CHECK(check_field("auth_service.listen_addr", c->auth_listen_addr, check_addr));
        CHECK(check_field("auth_service.public_addr", c->auth_public_addr, check_public_addr));
        CHECK(check_field("auth_service.raft.listen_addr", c->raft_listen_addr, check_raft_addr));
        if (c->election_timeout_ms == 0 || c->heartbeat_timeout_ms == 0)
            return rp_err(RP_EINVAL, "auth_service.raft.election_timeout and heartbeat_timeout "
                                     "must be greater than zero");
        if (c->heartbeat_timeout_ms >= c->election_timeout_ms)
            return rp_err(RP_EINVAL,
                          "auth_service.raft.heartbeat_timeout (%ums) must be "
                          "shorter than election_timeout (%ums)",
                          c->heartbeat_timeout_ms, c->election_timeout_ms);
        if (c->snapshot_threshold == 0)
            return rp_err(RP_EINVAL, "auth_service.raft.snapshot_threshold must be a positive "
                                     "integer");
        if (c->rec_max_size < (1ull << 20) || c->rec_max_size > (1ull << 40))
            return rp_err(RP_EINVAL,
                          "auth_service.recordings.max_size (%llu bytes) must be 1MiB to 1TiB",
                          (unsigned long long)c->rec_max_size);
        if (c->rec_max_map_size != 0 && c->rec_max_map_size < c->rec_max_size + (64ull << 20))
            return rp_err(RP_EINVAL,
                          "auth_service.recordings.max_map_size (%llu bytes) must be at least "
                          "max_size + 64MiB (%llu bytes), or left out (2 x max_size + 256MiB)",
                          (unsigned long long)c->rec_max_map_size,
                          (unsigned long long)(c->rec_max_size + (64ull << 20)));
        if (c->max_login_attempts == 0 || c->max_login_attempts > 1000)
            return rp_err(RP_EINVAL, "auth_service.max_login_attempts (%u) must be 1 to 1000",
                          c->max_login_attempts);
        if (c->lockout_ms < 1000 || c->lockout_ms > 7u * 24 * 3600 * 1000)
            return rp_err(RP_EINVAL, "auth_service.lockout_duration must be between 1s and 168h");
        if (c->password_hash_workers > 64)
            return rp_err(RP_EINVAL, "auth_service.password_hash_workers (%u) must be 1 to 64",
                          c->password_hash_workers);
        if (c->password_hash_queue == 0 || c->password_hash_queue > 100000)
            return rp_err(RP_EINVAL, "auth_service.password_hash_queue (%u) must be 1 to 100000",
                          c->password_hash_queue);
        if (c->password_hash_wait_ms == 0 || c->password_hash_wait_ms > 60000)
            return rp_err(RP_EINVAL, "auth_service.password_hash_wait must be between 1ms and 1m");
        const struct {
            const char *name;
            unsigned v;
        } login_limits[] = {{"login_rate_per_address", c->login_rate_per_address},
                            {"login_burst_per_address", c->login_burst_per_address},
                            {"login_rate_per_user", c->login_rate_per_user},
                            {"login_burst_per_user", c->login_burst_per_user}};
        for (size_t i = 0; i < sizeof login_limits / sizeof login_limits[0]; i++)
            if (login_limits[i].v == 0 || login_limits[i].v > 1000000)
                return rp_err(RP_EINVAL, "auth_service.%s (%u) must be 1 to 1000000",
                              login_limits[i].name, login_limits[i].v);
        /* At least room for a few largest commands (16 MiB each); at most what a
         * 64-bit address space reserves without trouble. */
        if (c->max_map_size < (64ull << 20) || c->max_map_size > (16ull << 40))
            return rp_err(RP_EINVAL,
                          "auth_service.max_map_size (%llu bytes) must be 64MiB to 16TiB",
                          (unsigned long long)c->max_map_size);
        if (c->snapshot_trailing < c->snapshot_threshold)
            return rp_err(RP_EINVAL,
                          "auth_service.raft.snapshot_trailing (%u) must be at least "
                          "snapshot_threshold (%u)",
                          c->snapshot_trailing, c->snapshot_threshold);
    }
    if (c->proxy_enabled) {
        CHECK(check_field("proxy_service.listen_addr", c->proxy_listen_addr, check_addr));
        CHECK(check_field("proxy_service.web_listen_addr", c->web_listen_addr, check_addr));
        CHECK(check_field("proxy_service.tunnel_listen_addr", c->tunnel_listen_addr, check_addr));
        CHECK(check_optional("proxy_service.public_addr", c->proxy_public_addr, check_public_addr));
    }
    if (c->ssh_enabled) {
        CHECK(check_field("ssh_service.listen_addr", c->ssh_listen_addr, check_addr));
        CHECK(check_optional("ssh_service.public_addr", c->ssh_public_addr, check_public_addr));
        for (size_t i = 0; i < c->ssh_n_labels; i++)
            if (c->ssh_labels[i].name == NULL || !label_name_ok(c->ssh_labels[i].name) ||
                c->ssh_labels[i].value == NULL)
                return rp_err(RP_EINVAL,
                              "ssh_service.labels: label %zu: expected a name of 1 "
                              "to 253 characters from A-Z a-z 0-9 / . _ : * - and a value",
                              i);
        for (size_t i = 0; i < c->ssh_n_commands; i++)
            for (size_t j = 0; j < c->ssh_n_labels; j++)
                if (strcmp(c->ssh_commands[i].name, c->ssh_labels[j].name) == 0)
                    return rp_err(RP_EINVAL,
                                  "ssh_service.commands[%zu].name: '%s' is also a static label in "
                                  "ssh_service.labels; a label has one source",
                                  i, c->ssh_commands[i].name);
        if (c->heartbeat_period_ms < 1000 || c->heartbeat_period_ms > 3600000)
            return rp_err(RP_EINVAL, "ssh_service.heartbeat_period must be between 1s and 1h");
        if (c->auth_deadline_ms < 1000 || c->auth_deadline_ms > 600000)
            return rp_err(RP_EINVAL, "ssh_service.auth_deadline must be between 1s and 10m");
        if (c->shutdown_grace_ms > 3600000)
            return rp_err(RP_EINVAL, "ssh_service.shutdown_grace must be at most 1h");
        if (c->spool_max_size < (1u << 20))
            return rp_err(RP_EINVAL, "ssh_service.spool_max_size must be at least 1MiB");
    }
    /* Proxies and nodes talk to auth; in a process without auth they must know where. */
    if ((c->proxy_enabled || c->ssh_enabled) && !c->auth_enabled && !knows_auth)
        return rp_err(RP_EINVAL, "teleport.auth_server (or auth_servers) is required when "
                                 "proxy_service or ssh_service runs without auth_service");
#undef CHECK
    return 0;
}
