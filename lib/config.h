/* lib/config.h: raftport.yaml, the daemon's configuration.
 *
 * Section and field names follow teleport.yaml wherever Teleport has the field:
 *
 *   version: v3
 *   teleport:
 *     nodename: auth1
 *     data_dir: /var/lib/raftport
 *     auth_server: 127.0.0.1:3025        # an auth server to join through / talk to
 *     auth_servers: [10.0.0.1:3025, 10.0.0.2:3025]  # more of them (agents fail over)
 *     ca_pin: sha256:...                 # pin of the cluster TLS CA (joining only)
 *     proxy_server: proxy.example.com:3080  # agents: reach auth and serve sessions
 *                                        # through this proxy (no auth_server then)
 *     keep_alive_interval: 30s           # reverse tunnels: PING period (3 missed: closed)
 *     join_params: {token_name: <token>, method: token}
 *     log: {output: stderr, severity: INFO}
 *   auth_service:
 *     enabled: yes
 *     cluster_name: example.raftport
 *     listen_addr: 127.0.0.1:3025
 *     public_addr: 127.0.0.1:3025        # what others dial (default: listen_addr)
 *     min_free_disk: 256MB               # refuse writes below this
 *     max_map_size: 8GiB                 # most the state database may hold
 *     audit_retention: 8760h             # audit events older than this are dropped
 *     max_login_attempts: 5              # failed logins that lock a user ...
 *     lockout_duration: 30m              # ... for this long
 *     max_session_ttl: 30h               # ceiling of user certificates, whatever roles say
 *     admin_identity_ttl: 8h             # the local admin identity (renewed at half-life)
 *     password_hash_workers: 2           # concurrent password checks (default min(2, cores))
 *     password_hash_queue: 64            # checks waiting for a worker ...
 *     password_hash_wait: 2s             # ... at most this long, then "busy"
 *     login_rate_per_address: 20         # logins a minute per source address ...
 *     login_burst_per_address: 40        # ... with bursts of this many
 *     login_rate_per_user: 10            # logins a minute per user name ...
 *     login_burst_per_user: 20           # ... with bursts of this many
 *     raft:
 *       id: 1
 *       listen_addr: 127.0.0.1:3030
 *       election_timeout: 1s
 *       heartbeat_timeout: 100ms
 *       snapshot_threshold: 8192
 *       snapshot_trailing: 8192
 *   proxy_service:
 *     enabled: no
 *     listen_addr: 0.0.0.0:3023          # SSH proxy
 *     web_listen_addr: 0.0.0.0:3080
 *     tunnel_listen_addr: 0.0.0.0:3024
 *     public_addr: proxy.example.com:3080
 *     https_keypairs:                    # the web certificate (default: one from the
 *       - key_file: /etc/raftport/web.key  # cluster CA for the proxy's names)
 *         cert_file: /etc/raftport/web.crt
 *   ssh_service:
 *     enabled: no
 *     listen_addr: 0.0.0.0:3022
 *     public_addr: node1.example.com:3022
 *     labels: {env: dev}
 *     commands: [{name: arch, command: [uname, -m], period: 1m}]
 *     heartbeat_period: 1m               # presence heartbeats (ttl: 3 periods)
 *     shutdown_grace: 30s                # SIGTERM: sessions get this long to end
 *     accept_env: [LANG, "LC_*"]         # environment a client may set
 *     spool_max_size: 256MB              # recordings waiting for upload
 *     auth_deadline: 20s                 # a connection must authenticate by then
 *
 * docs/configuration.md is the reference for every field.
 * Unknown fields are errors, not silently ignored. */
#ifndef RP_CONFIG_H
#define RP_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One static label: a name matching [A-Za-z0-9/._:*-]+ and any string value. */
struct rp_config_label {
    char *name;
    char *value;
};

/* One command label: @argv run every @period_ms, its trimmed output the label's value. */
struct rp_config_command {
    char *name;
    char **argv; /* NULL-terminated */
    size_t argc;
    uint64_t period_ms; /* default 1m, at least 1s */
};

/* One proxy_service.https_keypairs entry: a PEM private key and its certificate chain. */
struct rp_config_keypair {
    char *key_file;
    char *cert_file;
};

#define RP_CONFIG_MAX_AUTH_SERVERS 16
#define RP_CONFIG_MAX_KEYPAIRS 8
#define RP_CONFIG_MAX_COMMANDS 64
#define RP_CONFIG_MAX_ACCEPT_ENV 64

struct rp_config {
    char *path; /* file it came from (NULL when built from flags only) */
    /* teleport: */
    char *nodename;      /* default: gethostname() */
    char *data_dir;      /* default: /var/lib/raftport */
    char *auth_server;   /* host:port */
    char **auth_servers; /* teleport.auth_servers (and --auth-server=A,B), in order */
    size_t n_auth_servers;
    char *ca_pin; /* "sha256:<64 hex>" */
    /* teleport.proxy_server (and --proxy-server): an agent in proxy mode reaches auth
     * through this proxy (ALPN teleport-auth@) and serves SSH over a reverse tunnel to
     * it. Excludes auth_server/auth_servers. */
    char *proxy_server;
    uint64_t keep_alive_interval_ms; /* teleport.keep_alive_interval; default 30s, 1s..1h */
    char *join_token;                /* join_params.token_name */
    char *log_severity;              /* default "INFO" */
    /* auth_service: */
    bool auth_enabled;
    char *cluster_name;
    char *auth_listen_addr;      /* default 0.0.0.0:3025 */
    char *auth_public_addr;      /* default: auth_listen_addr (0.0.0.0 replaced by 127.0.0.1,
                                  * [::] by [::1]) unless auth_public_addr_set */
    bool auth_public_addr_set;   /* public_addr came from the file (or a flag: set it then) */
    uint64_t min_free_disk;      /* bytes; default 64 MiB */
    uint64_t audit_retention_ms; /* default one year */
    /* auth_service.recordings (docs/recordings.md): session recordings kept in the cluster. */
    uint64_t rec_retention_ms;      /* retention; default 30 days (720h), at least 1m */
    uint64_t rec_max_size;          /* budget of stored chunks; default 2 GiB, 1 MiB to 1 TiB */
    uint64_t rec_max_map_size;      /* LMDB map ceiling; 0 (default): 2 x max_size + 256 MiB */
    uint64_t max_map_size;          /* bytes the state database may hold; default 8 GiB */
    unsigned max_login_attempts;    /* default 5 */
    unsigned lockout_ms;            /* default 30 minutes */
    uint64_t max_session_ttl_ms;    /* user certificate ceiling; default 30 hours */
    uint64_t admin_identity_ttl_ms; /* keys/admin.crt lifetime; default 8 hours, 1m to 24h */
    /* Password logins (auth/login_guard.c): the hashing pool and the rate limits. */
    unsigned password_hash_workers;   /* default 0: min(2, cores); at most 64 */
    unsigned password_hash_queue;     /* default 64; at most 100000 */
    unsigned password_hash_wait_ms;   /* default 2000; 1 ms to 60 s */
    unsigned login_rate_per_address;  /* per minute, default 20 (Teleport's unauthenticated rate) */
    unsigned login_burst_per_address; /* default 40 */
    unsigned login_rate_per_user;     /* per minute, default 10 */
    unsigned login_burst_per_user;    /* default 20 */
    uint64_t raft_id;                 /* required when auth is enabled */
    char *raft_listen_addr;           /* default 0.0.0.0:3030; must be an IPv4 "a.b.c.d:port" */
    unsigned election_timeout_ms;     /* default 1000 */
    unsigned heartbeat_timeout_ms;    /* default 100 */
    unsigned snapshot_threshold;      /* default 1024 */
    unsigned snapshot_trailing;       /* default 8192; must be >= threshold */
    /* proxy_service / ssh_service. A service section present in the file turns the
     * service on unless it says "enabled: no"; an absent section leaves it off. */
    bool proxy_enabled;
    char *web_listen_addr;    /* default 0.0.0.0:3080 */
    char *tunnel_listen_addr; /* default 0.0.0.0:3024 */
    char *proxy_listen_addr;  /* proxy_service.listen_addr (SSH proxy); default 0.0.0.0:3023 */
    char *proxy_public_addr;  /* proxy_service.public_addr; NULL unless set */
    struct rp_config_keypair *https_keypairs; /* proxy_service.https_keypairs */
    size_t n_https_keypairs;
    /* --skip-version-check: a proxy or agent starts even against an auth server on an
     * older major version (lib/version.h). Flag only, as in Teleport. */
    bool skip_version_check;
    bool ssh_enabled;
    char *ssh_listen_addr;              /* default 0.0.0.0:3022 */
    bool ssh_listen_addr_set;           /* listen_addr came from the file: an agent in
                                         * proxy mode listens on TCP only then */
    char *ssh_public_addr;              /* ssh_service.public_addr; NULL unless set */
    struct rp_config_label *ssh_labels; /* ssh_service.labels, in file order */
    size_t ssh_n_labels;
    struct rp_config_command *ssh_commands; /* ssh_service.commands */
    size_t ssh_n_commands;
    uint64_t heartbeat_period_ms; /* default 1m; 1s to 1h */
    uint64_t shutdown_grace_ms;   /* default 30s; up to 1h */
    char **accept_env;            /* patterns (a trailing '*' matches any suffix) */
    size_t n_accept_env;          /* default LANG, LC_* */
    uint64_t spool_max_size;      /* bytes; default 256 MiB */
    uint64_t auth_deadline_ms;    /* default 20s; 1s to 10m */
};

/* Replaces c->auth_servers with the comma-separated @list ("a:1,b:2"). RP_EINVAL
 * naming the bad entry (the list is left as it was then). */
int rp_config_set_auth_servers(struct rp_config *c, const char *list);
/* Every auth server address the configuration names: auth_server first (if set),
 * then auth_servers, without duplicates, into @out (at most @max, borrowed from @c).
 * In proxy mode (proxy_server set, no auth server named) the one address is
 * proxy_server: auth is reached through the proxy's pass-through. Returns the count. */
size_t rp_config_auth_addrs(const struct rp_config *c, const char **out, size_t max);

/* Defaults. Allocation failure aborts: a process that cannot allocate a few strings
 * at start-up has nothing better to do. */
void rp_config_init(struct rp_config *c);
/* Loads @path over the defaults. RP_EINVAL/RP_EIO/RP_ENOMEM; rp_errmsg() reads
 * "FILE:LINE: what is wrong, what was expected". On error @c holds a mix of
 * defaults and values read, and is still valid to rp_config_free(). */
int rp_config_load(struct rp_config *c, const char *path);
/* The same from the @n bytes of YAML at @text, named @name in messages ("NAME:LINE:
 * ..."); @c->path is left as it was. */
int rp_config_load_str(struct rp_config *c, const char *name, const char *text, size_t n);
/* Completes @c after flags were applied: re-derives auth_public_addr from
 * auth_listen_addr unless auth_public_addr_set. Call it before rp_config_validate()
 * when a flag may have changed auth_listen_addr. Allocation failure aborts. */
void rp_config_finish(struct rp_config *c);
/* Checks every field's format and the cross-field rules after flags were applied
 * (ids, addresses, trailing >= threshold, joining needs ca_pin and auth_server).
 * RP_EINVAL with a message naming the field, as "auth_service.raft.id ...". */
int rp_config_validate(const struct rp_config *c);
/* Replaces a string field (frees the old value; @value may be NULL or the old value
 * itself). Allocation failure aborts. */
void rp_config_set(char **field, const char *value);
void rp_config_free(struct rp_config *c);

/* Parses "64MB", "1GiB", "512k", plain bytes: an integer with an optional unit,
 * case-insensitive: B; k/KB = 1000, KiB = 1024; M/MB, MiB; G/GB, GiB; T/TB, TiB.
 * RP_EINVAL (with a message) on anything else or on overflow of 64 bits. */
int rp_parse_size(const char *s, uint64_t *bytes);

#endif
