/* tsh/tsh.h: what the parts of tsh share: the global flags, the user's profile (keys,
 * certificates and the proxy they came from), the proxy's web API as a client, and the
 * entry points of the commands that tools/tsh.c's verb table calls.
 *
 * Profiles live under tsh_home() ($RAFTPORT_HOME, else ~/.tsh), as
 * ISSUE12-DESIGN.md §5 fixes them:
 *
 *   current-profile                  the proxy ("HOST:PORT") of the active profile
 *   <proxy>.yaml                     proxy, user, cluster, logins, valid_before, ca_pin
 *   keys/<proxy>/<user>              Ed25519 private key, OpenSSH format
 *   keys/<proxy>/<user>.pub          its public key line
 *   keys/<proxy>/<user>-cert.pub     the SSH user certificate
 *   keys/<proxy>/<user>-x509.pem     the X.509 user certificate
 *   keys/<proxy>/<user>.key.pem      the private key of the X.509 certificate (PKCS#8)
 *   keys/<proxy>/cas/<cluster>.pem   the cluster's TLS CA
 *   keys/<proxy>/known_hosts         "@cert-authority * <host CA line>"
 *
 * Every file is written atomically with mode 0600, every directory 0700. The X.509
 * key is ECDSA P-256, not the Ed25519 SSH key: the cluster's TLS identities are P-256
 * only (lib/tls.h), so <user>.key.pem holds the key the X.509 certificate is for.
 *
 * Library functions here return 0 or a negative RP_E* code with rp_errmsg() set to a
 * sentence that names what failed and what to do; the tsh_cmd_* entry points print
 * and return the process's exit status (0 ok, 1 failure, 2 usage error). */
#ifndef TSH_TSH_H
#define TSH_TSH_H

#include <getopt.h>
#include <jansson.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define TSH_NAME_MAX 256
#define TSH_PATH_MAX 1024
#define TSH_MAX_LOGINS 32
#define TSH_MAX_ROLES 32

/* ---- global flags ---------------------------------------------------------------- */

/* Flags every command accepts (before or after its name). Strings point into argv
 * or the environment; NULL when not given. */
struct tsh_globals {
    const char *proxy;       /* --proxy HOST:PORT (else $RAFTPORT_PROXY) */
    const char *user;        /* --user NAME (else $RAFTPORT_USER) */
    const char *ca_pin;      /* --ca-pin sha256:<hex>: first contact with a proxy */
    const char *home;        /* the profile directory: tsh_home() */
    bool insecure;           /* --insecure: do not verify the proxy (warned) */
    bool skip_version_check; /* --skip-version-check */
    bool debug;              /* -d/--debug */
    /* Set by tools/tsh.c for the command being run: its words ("ls"), synopsis and
     * help text (-h prints them). */
    const char *verb_words, *verb_synopsis, *verb_help;
};

/* ---- flags: each command's own, with the global ones among them ------------------ */

/* Codes of the global long flags (a command's own long-only codes are 256..999). */
enum {
    TSH_OPT_PROXY = 1000,
    TSH_OPT_USER,
    TSH_OPT_CA_PIN,
    TSH_OPT_INSECURE,
    TSH_OPT_SKIP_VERSION_CHECK,
};
enum { TSH_FLAGS_END = 0, TSH_FLAGS_HELP = -1, TSH_FLAGS_BAD = -2 };

struct tsh_flags {
    struct tsh_globals *g; /* global flags met among the command's go here */
    const char *label;     /* "tsh ls": how messages name the command */
    int argc;
    char **argv;
    struct option opts[48];
    char shorts[64];
};

/* Prepares parsing argv[1..] of a command: its own table @own (ending with a zero row;
 * may be NULL) and short flags @own_shorts (getopt syntax; may be NULL) plus the
 * globals. @stop_at_arg: flags end at the first positional argument (tsh ssh NODE
 * COMMAND... keeps the command's own flags for the command); else flags and arguments
 * may be mixed. argv[0] is the label. */
void tsh_flags_init(struct tsh_flags *f, struct tsh_globals *g, int argc, char **argv,
                    const struct option *own, const char *own_shorts, bool stop_at_arg);
/* The next own flag's code (> 0, with optarg set), TSH_FLAGS_END when only positional
 * arguments are left (from optind), TSH_FLAGS_HELP after printing the command's help,
 * TSH_FLAGS_BAD after printing a usage error. Global flags are taken here. */
int tsh_flags_next(struct tsh_flags *f);
/* After the flag loop ended with @c: the exit status for help (0) or a usage error
 * (2), or -1 to go on with the @min..@max (-1: any number) positional arguments in
 * @args/@nargs. */
int tsh_flags_done(struct tsh_flags *f, int c, int min, int max, char ***args, int *nargs);
/* Prints "LABEL: MESSAGE; usage: tsh WORDS SYNOPSIS" and returns 2. */
int tsh_usage_error(const struct tsh_flags *f, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Takes one global flag (@code as tsh_flags_next met it, @arg its value) into @g; 0,
 * or 2 after printing what was wrong with the value. */
int tsh_global_flag(struct tsh_globals *g, const char *label, int code, const char *arg);
/* The global flags' rows, for tools/tsh.c's parsing before the command. */
extern const struct option tsh_global_opts[];
#define TSH_GLOBAL_SHORTS "dh"

/* $RAFTPORT_HOME, else $HOME/.tsh (else the password database's home/.tsh). The
 * string is static: valid for the life of the process. */
const char *tsh_home(void);

/* ---- profiles -------------------------------------------------------------------- */

struct tsh_profile {
    char proxy[TSH_NAME_MAX];            /* HOST:PORT of the web listener */
    char user[TSH_NAME_MAX];             /* the cluster user */
    char cluster[TSH_NAME_MAX];          /* cluster name (from ping / the certificate) */
    char ca_pin[96];                     /* "sha256:<hex>" of the cluster CA ("" if unknown) */
    char home[TSH_PATH_MAX];             /* the profile directory this profile was loaded from */
    char dir[TSH_PATH_MAX];              /* home/keys/<proxy> */
    char key_path[TSH_PATH_MAX];         /* <dir>/<user> */
    char pub_path[TSH_PATH_MAX];         /* <dir>/<user>.pub */
    char cert_path[TSH_PATH_MAX];        /* <dir>/<user>-cert.pub */
    char x509_path[TSH_PATH_MAX];        /* <dir>/<user>-x509.pem */
    char tls_key_path[TSH_PATH_MAX];     /* <dir>/<user>.key.pem */
    char ca_path[TSH_PATH_MAX];          /* <dir>/cas/<cluster>.pem */
    char known_hosts_path[TSH_PATH_MAX]; /* <dir>/known_hosts */
    char logins[TSH_MAX_LOGINS][TSH_NAME_MAX];
    size_t n_logins;
    char roles[TSH_MAX_ROLES][TSH_NAME_MAX]; /* from the X.509 certificate, at load */
    size_t n_roles;
    uint64_t valid_before_ms; /* the certificates' expiry */
};

/* Checks that @proxy is "HOST:PORT" usable as a file name (no '/', not "." or "..",
 * at most 200 bytes). RP_EINVAL naming it otherwise. */
int tsh_check_proxy_name(const char *proxy);

/* Fills the path fields of @p from @home, @p->proxy, @p->user and @p->cluster (the
 * other fields are left alone). RP_EINVAL if a name is not usable in a path or a path
 * does not fit. */
int tsh_profile_set_paths(struct tsh_profile *p, const char *home);

/* Loads the profile of @proxy_or_NULL (NULL: the current profile) from @home_or_NULL
 * (NULL: tsh_home()) into @p, and the roles from its X.509 certificate.
 *   RP_ENOTFOUND "not logged in: run tsh login --proxy=HOST:PORT --user=NAME" when
 *     there is no such profile (or no current one);
 *   RP_EDENIED "your certificate expired at TIME: run tsh login --proxy=P --user=U"
 *     when valid_before has passed; @p is filled all the same, so that the caller can
 *     name the proxy and user or log in again;
 *   RP_EINVAL naming the file and line for a profile that does not parse, or key
 *     files that are missing (with "run tsh login again"). */
int tsh_profile_load(const char *home_or_NULL, const char *proxy_or_NULL, struct tsh_profile *p);

/* Writes @p's <proxy>.yaml into @p->home and makes it the current profile (atomic
 * writes, 0600; directories 0700). The key files are written by the caller. */
int tsh_profile_save(const struct tsh_profile *p);

/* Writes @n bytes of @data to @path atomically with mode 0600, creating missing
 * directories with mode 0700. */
int tsh_write_private(const char *path, const void *data, size_t n);

/* Removes the profile of @proxy_or_NULL (NULL: the current one): its yaml file, its
 * keys directory and, if it was current, current-profile. *@removed gets the proxy
 * name. RP_ENOTFOUND when there is none. */
int tsh_profile_remove(const char *home_or_NULL, const char *proxy_or_NULL, char *removed,
                       size_t removed_len);

/* The current profile's proxy name into @out. RP_ENOTFOUND when none is current. */
int tsh_profile_current(const char *home_or_NULL, char *out, size_t outlen);

/* A TLS client context for talking to the cluster as the profile's user: presents the
 * X.509 certificate and its key, and verifies the server against the cluster CA of
 * the profile. NULL with rp_errmsg() naming the file that failed. The caller frees it
 * (SSL_CTX_free). TLS 1.3 only; no host name check (identities are checked from the
 * certificate), as lib/tls.h's client contexts do. */
SSL_CTX *tsh_profile_tls_ctx(const struct tsh_profile *p);

/* What commands call first: loads the profile named by @g (its --proxy, else the
 * current one) into @p. On success returns 0. Otherwise prints the reason ("not
 * logged in: ..." or "your certificate expired at ...: run tsh login ...") prefixed
 * by @cmd and returns 1; on an expired certificate with a terminal on stdin and
 * stderr it offers to log in again and, if the user says yes and the login works,
 * loads the new profile and returns 0. */
int tsh_require_profile(const struct tsh_globals *g, const char *cmd, struct tsh_profile *p);

/* ---- the proxy's web API (libcurl) ----------------------------------------------- */

/* How to reach and trust a proxy. Exactly one trust source applies, in this order:
 * @ca_path (the cluster CA of a profile), @ca_pin (sha256 of the cluster CA's
 * SubjectPublicKeyInfo: some certificate of the server's chain must have it and the
 * chain must verify to it), @insecure (nothing checked), else the system roots. */
struct tsh_web {
    const char *proxy;     /* HOST:PORT */
    const char *ca_path;   /* PEM file of the cluster CA; may be NULL */
    const char *ca_pin;    /* "sha256:<hex>"; may be NULL */
    const char *cert_path; /* client certificate (PEM); may be NULL */
    const char *key_path;  /* its key (PEM); may be NULL */
    bool insecure;
    long timeout_ms; /* 0: 15 s */
};

/* Fills @w to talk to @p's proxy with @p's identity and CA. */
void tsh_web_from_profile(struct tsh_web *w, const struct tsh_profile *p);

/* One request: @method ("GET", "POST", "PUT"), @path ("/webapi/ping"), @body a JSON
 * value to send (NULL: none). On an HTTP 2xx answer returns 0 with *@answer the
 * decoded JSON body (the caller's: json_decref). Otherwise: RP_ETLS when the proxy's
 * certificate did not verify (naming the trust source and --ca-pin / --insecure);
 * RP_EUNAVAILABLE when the proxy could not be reached; an HTTP error maps to RP_EDENIED
 * (401/403), RP_ENOTFOUND (404), RP_EBUSY (429, with the Retry-After), RP_EINVAL (400,
 * 413), RP_EUNAVAILABLE (503) or RP_EPROTO, with rp_errmsg() the proxy's
 * error.message. *@status (may be NULL) gets the HTTP status (0 if none). */
int tsh_web_call(const struct tsh_web *w, const char *method, const char *path, json_t *body,
                 json_t **answer, long *status);

/* What GET /webapi/ping says. */
struct tsh_ping {
    char cluster_name[TSH_NAME_MAX];
    char server_version[32];
    char min_client_version[32];
    char auth_type[32];
    char second_factor[16]; /* "otp" or "off" */
    char ssh_listen_addr[TSH_NAME_MAX];
    char ssh_public_addr[TSH_NAME_MAX];
    char tunnel_listen_addr[TSH_NAME_MAX];
    char public_addr[TSH_NAME_MAX];
    bool tls_routing_enabled;
};
int tsh_web_ping(const struct tsh_web *w, struct tsh_ping *out);

/* The warning tsh prints when the proxy's version does not serve this client (client
 * older than min_client_version, or on a newer major than the server), with Teleport's
 * wording, into @out; returns false (and @out = "") when there is nothing to warn. */
bool tsh_version_warning(const char *client, const char *server, const char *min_client, char *out,
                         size_t outlen);

/* ---- the commands ----------------------------------------------------------------- */

/* Each takes argv[0] = "tsh VERB" and the arguments after the verb's words (global
 * flags among them are already parsed into @g and removed), and returns the exit
 * status. Implemented in tsh/login.c, status.c, ls.c, play.c, config.c; tsh_cmd_ssh,
 * tsh_cmd_scp and tsh_cmd_proxy_ssh in tsh/ssh.c and tsh/scp.c (helper tsh-ssh). */
int tsh_cmd_login(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_logout(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_status(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_ls(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_recordings_ls(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_play(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_config(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_version(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_ssh(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_scp(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_proxy_ssh(int argc, char **argv, const struct tsh_globals *g);

/* Logs in to @proxy as @user (the flow of tsh login, prompting on the terminal or
 * reading stdin) with the trust options of @g; on success the profile is saved and
 * becomes current. Prints what failed and returns 1, or 0. Used by tsh login and by
 * tsh_require_profile's offer to log in again. */
int tsh_login_interactive(const struct tsh_globals *g, const char *proxy, const char *user,
                          uint64_t ttl_ms);

/* ---- small helpers shared by the commands ---------------------------------------- */

/* Prints @p as tsh status does (Teleport's layout: "> Profile URL:", "Logged in as:",
 * ...; "EXPIRED" when valid_before has passed). @current marks the active profile. */
void tsh_status_print(FILE *f, const struct tsh_profile *p, bool current);

/* Appends @text as a QR code drawn with half-block characters (two module rows per
 * line, a quiet zone of two modules; light modules drawn, dark ones blank, as
 * qrencode -t UTF8 does). RP_EINVAL if the text does not fit a QR code. */
struct rp_buf;
int tsh_qr_render(const char *text, struct rp_buf *out);

/* Writes the asciicast v2 text @cast (@len bytes) to @out: TSH_PLAY_PTY the output
 * events at the recorded pace divided by @speed, idle gaps cut to 2 s;
 * TSH_PLAY_JSON {"header": {...}, "events": [{"time", "type", "data"}...]};
 * TSH_PLAY_ASCIICAST the text itself. RP_EINVAL naming the line that is not asciicast
 * v2; RP_EIO if @out fails. */
enum tsh_play_format { TSH_PLAY_PTY, TSH_PLAY_JSON, TSH_PLAY_ASCIICAST };
int tsh_play_cast(const char *cast, size_t len, enum tsh_play_format format, double speed,
                  FILE *out);

/* A tsh ls label filter: "k=v,k2=v2" (every pair must match). */
#define TSH_MAX_LABEL_FILTERS 16
struct tsh_label_filter {
    size_t n;
    char keys[TSH_MAX_LABEL_FILTERS][TSH_NAME_MAX];
    char values[TSH_MAX_LABEL_FILTERS][TSH_NAME_MAX];
};
/* Parses @arg into @f (appending to what is there). RP_EINVAL naming the bad item
 * (no '=', empty key, too many, too long). */
int tsh_label_filter_parse(const char *arg, struct tsh_label_filter *f);
/* True when the JSON object @labels has every key of @f with its value. */
bool tsh_labels_match(const struct tsh_label_filter *f, json_t *labels);

/* Reads one line from the terminal without echo (prompting with @prompt on stderr),
 * or, when stdin is not a terminal, one line from stdin (no prompt). The newline is
 * stripped. RP_EIO at end of input, RP_ETOOBIG for a line longer than @outlen - 1. */
int tsh_read_secret(const char *prompt, char *out, size_t outlen);
/* The same with echo (user names, yes/no answers, TOTP codes). */
int tsh_read_line(const char *prompt, char *out, size_t outlen);

#endif
