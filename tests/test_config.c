/* tests/test_config.c: lib/config.c, raftport.yaml into struct rp_config. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/config.h"
#include "lib/errors.h"
#include "lib/yaml.h"

#define PIN "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* Writes @text to a fresh temporary file; its path goes to @path (>= 64 bytes). */
static void write_temp(const char *text, size_t n, char *path)
{
    strcpy(path, "/tmp/rp-config-XXXXXX");
    int fd = mkstemp(path);
    cr_assert(fd >= 0);
    size_t off = 0;
    while (off < n) {
        ssize_t w = write(fd, text + off, n - off);
        cr_assert(w > 0);
        off += (size_t)w;
    }
    close(fd);
}

/* Loads @text over the defaults into @c (rp_config_init'ed here); the file path used
 * goes to @path. Returns what rp_config_load returned. */
static int load_text(struct rp_config *c, const char *text, char *path)
{
    write_temp(text, strlen(text), path);
    rp_config_init(c);
    int rv = rp_config_load(c, path);
    unlink(path);
    return rv;
}

/* Loads @text and expects RP_EINVAL with the message "PATH:" followed by @fmt. */
static void load_fails(const char *text, const char *fmt, ...)
{
    struct rp_config c;
    char path[64], want[600], tail[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(tail, sizeof(tail), fmt, ap);
    va_end(ap);
    int rv = load_text(&c, text, path);
    snprintf(want, sizeof(want), "%s:%s", path, tail);
    cr_assert_eq(rv, RP_EINVAL, "expected RP_EINVAL for:\n%s\ngot %d", text, rv);
    cr_assert_str_eq(rp_errmsg(), want);
    rp_config_free(&c);
}

static void load_ok(struct rp_config *c, const char *text)
{
    char path[64];
    int rv = load_text(c, text, path);
    cr_assert_eq(rv, 0, "load failed: %s", rp_errmsg());
}

/* Expects rp_config_validate(@c) to fail with exactly @msg. */
static void validate_fails(const struct rp_config *c, const char *msg)
{
    cr_assert_eq(rp_config_validate(c), RP_EINVAL, "expected '%s' to be found", msg);
    cr_assert_str_eq(rp_errmsg(), msg);
}

static const char *full_config = "version: v3\n"
                                 "teleport:\n"
                                 "  nodename: auth-1.example\n"
                                 "  data_dir: /srv/raftport\n"
                                 "  auth_server: 10.0.0.1:3025\n"
                                 "  ca_pin: " PIN "\n"
                                 "  join_params:\n"
                                 "    token_name: abcdef0123456789\n"
                                 "    method: token\n"
                                 "  log:\n"
                                 "    output: stderr\n"
                                 "    severity: warning\n"
                                 "auth_service:\n"
                                 "  enabled: yes\n"
                                 "  cluster_name: example.raftport\n"
                                 "  listen_addr: 10.0.0.2:4025\n"
                                 "  public_addr: auth.example.com:4025\n"
                                 "  min_free_disk: 1GiB\n"
                                 "  raft:\n"
                                 "    id: 2\n"
                                 "    listen_addr: 10.0.0.2:4030\n"
                                 "    election_timeout: 2s\n"
                                 "    heartbeat_timeout: 150ms\n"
                                 "    snapshot_threshold: 500\n"
                                 "    snapshot_trailing: 600\n"
                                 "proxy_service:\n"
                                 "  enabled: \"yes\"\n"
                                 "  listen_addr: 0.0.0.0:4023\n"
                                 "  web_listen_addr: '[::]:4080'\n"
                                 "  tunnel_listen_addr: 0.0.0.0:4024\n"
                                 "  public_addr: proxy.example.com:443\n"
                                 "ssh_service:\n"
                                 "  enabled: on\n"
                                 "  listen_addr: 127.0.0.1:4022\n"
                                 "  public_addr: node1.example.com:4022\n"
                                 "  labels:\n"
                                 "    env: prod\n"
                                 "    team/name: infra\n"
                                 "    empty: ''\n";

Test(config, defaults_are_set_by_init)
{
    struct rp_config c;
    char host[256] = "";
    gethostname(host, sizeof(host));

    rp_config_init(&c);
    cr_assert_null(c.path);
    cr_assert_str_eq(c.nodename, host[0] ? host : "localhost");
    cr_assert_str_eq(c.data_dir, "/var/lib/raftport");
    cr_assert_null(c.auth_server);
    cr_assert_null(c.ca_pin);
    cr_assert_null(c.join_token);
    cr_assert_str_eq(c.log_severity, "INFO");
    cr_assert(!c.auth_enabled);
    cr_assert_null(c.cluster_name);
    cr_assert_str_eq(c.auth_listen_addr, "0.0.0.0:3025");
    cr_assert_str_eq(c.auth_public_addr, "127.0.0.1:3025");
    cr_assert_eq(c.min_free_disk, 64ull << 20);
    cr_assert_eq(c.max_map_size, 8ull << 30);
    cr_assert_eq(c.raft_id, 0);
    cr_assert_str_eq(c.raft_listen_addr, "0.0.0.0:3030");
    cr_assert_eq(c.election_timeout_ms, 1000);
    cr_assert_eq(c.heartbeat_timeout_ms, 100);
    cr_assert_eq(c.snapshot_threshold, 8192);
    cr_assert_eq(c.snapshot_trailing, 8192);
    cr_assert(!c.proxy_enabled);
    cr_assert_str_eq(c.web_listen_addr, "0.0.0.0:3080");
    cr_assert_str_eq(c.tunnel_listen_addr, "0.0.0.0:3024");
    cr_assert_str_eq(c.proxy_listen_addr, "0.0.0.0:3023");
    cr_assert_null(c.proxy_public_addr);
    cr_assert(!c.ssh_enabled);
    cr_assert_str_eq(c.ssh_listen_addr, "0.0.0.0:3022");
    cr_assert_null(c.ssh_public_addr);
    cr_assert_eq(c.ssh_n_labels, 0);
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);
}

Test(config, every_field_is_parsed)
{
    struct rp_config c;
    load_ok(&c, full_config);
    cr_assert_not_null(c.path);
    cr_assert_str_eq(c.nodename, "auth-1.example");
    cr_assert_str_eq(c.data_dir, "/srv/raftport");
    cr_assert_str_eq(c.auth_server, "10.0.0.1:3025");
    cr_assert_str_eq(c.ca_pin, PIN);
    cr_assert_str_eq(c.join_token, "abcdef0123456789");
    cr_assert_str_eq(c.log_severity, "WARN");
    cr_assert(c.auth_enabled);
    cr_assert_str_eq(c.cluster_name, "example.raftport");
    cr_assert_str_eq(c.auth_listen_addr, "10.0.0.2:4025");
    cr_assert_str_eq(c.auth_public_addr, "auth.example.com:4025");
    cr_assert_eq(c.min_free_disk, 1ull << 30);
    cr_assert_eq(c.raft_id, 2);
    cr_assert_str_eq(c.raft_listen_addr, "10.0.0.2:4030");
    cr_assert_eq(c.election_timeout_ms, 2000);
    cr_assert_eq(c.heartbeat_timeout_ms, 150);
    cr_assert_eq(c.snapshot_threshold, 500);
    cr_assert_eq(c.snapshot_trailing, 600);
    cr_assert(c.proxy_enabled);
    cr_assert_str_eq(c.proxy_listen_addr, "0.0.0.0:4023");
    cr_assert_str_eq(c.web_listen_addr, "[::]:4080");
    cr_assert_str_eq(c.tunnel_listen_addr, "0.0.0.0:4024");
    cr_assert_str_eq(c.proxy_public_addr, "proxy.example.com:443");
    cr_assert(c.ssh_enabled);
    cr_assert_str_eq(c.ssh_listen_addr, "127.0.0.1:4022");
    cr_assert_str_eq(c.ssh_public_addr, "node1.example.com:4022");
    cr_assert_eq(c.ssh_n_labels, 3);
    cr_assert_str_eq(c.ssh_labels[0].name, "env");
    cr_assert_str_eq(c.ssh_labels[0].value, "prod");
    cr_assert_str_eq(c.ssh_labels[1].name, "team/name");
    cr_assert_str_eq(c.ssh_labels[1].value, "infra");
    cr_assert_str_eq(c.ssh_labels[2].value, "");
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);
}

Test(config, empty_file_gives_the_defaults)
{
    const char *texts[] = {"", "# nothing here\n", "---\n", "version: v3\n"};
    for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
        struct rp_config c, d;
        load_ok(&c, texts[i]);
        rp_config_init(&d);
        cr_assert_str_eq(c.data_dir, d.data_dir);
        cr_assert_str_eq(c.auth_public_addr, d.auth_public_addr);
        cr_assert(!c.auth_enabled && !c.proxy_enabled && !c.ssh_enabled);
        cr_assert_eq(c.election_timeout_ms, d.election_timeout_ms);
        cr_assert_eq(c.min_free_disk, d.min_free_disk);
        rp_config_free(&c);
        rp_config_free(&d);
    }
}

Test(config, present_section_enables_its_service)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  cluster_name: x\nssh_service:\nproxy_service: {}\n");
    cr_assert(c.auth_enabled);
    cr_assert(c.ssh_enabled, "a null section is present too");
    cr_assert(c.proxy_enabled);
    rp_config_free(&c);

    load_ok(&c, "auth_service:\n  enabled: no\nproxy_service:\n  enabled: 'No'\n"
                "ssh_service:\n  enabled: OFF\n");
    cr_assert(!c.auth_enabled);
    cr_assert(!c.proxy_enabled);
    cr_assert(!c.ssh_enabled);
    rp_config_free(&c);

    load_ok(&c, "auth_service: {enabled: TRUE}\nproxy_service: {enabled: false}\n");
    cr_assert(c.auth_enabled);
    cr_assert(!c.proxy_enabled);
    rp_config_free(&c);
}

Test(config, auth_public_addr_follows_listen_addr_unless_set)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  listen_addr: 0.0.0.0:4025\n");
    cr_assert_str_eq(c.auth_public_addr, "127.0.0.1:4025");
    rp_config_free(&c);
    load_ok(&c, "auth_service:\n  listen_addr: '[::]:4025'\n");
    cr_assert_str_eq(c.auth_public_addr, "[::1]:4025");
    rp_config_free(&c);
    load_ok(&c, "auth_service:\n  listen_addr: 10.1.2.3:4025\n");
    cr_assert_str_eq(c.auth_public_addr, "10.1.2.3:4025");
    rp_config_free(&c);
    load_ok(&c, "auth_service:\n  listen_addr: 0.0.0.0:4025\n  public_addr: a.example:1\n");
    cr_assert_str_eq(c.auth_public_addr, "a.example:1");
    rp_config_free(&c);
}

Test(config, finish_rederives_public_addr_after_a_listen_flag)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  listen_addr: 0.0.0.0:4025\n");
    rp_config_set(&c.auth_listen_addr, "10.9.8.7:5025"); /* as a --listen-addr flag does */
    rp_config_finish(&c);
    cr_assert_str_eq(c.auth_public_addr, "10.9.8.7:5025");
    rp_config_free(&c);

    load_ok(&c, "auth_service:\n  public_addr: auth.example:4025\n");
    cr_assert(c.auth_public_addr_set);
    rp_config_set(&c.auth_listen_addr, "10.9.8.7:5025");
    rp_config_finish(&c);
    cr_assert_str_eq(c.auth_public_addr, "auth.example:4025");
    rp_config_free(&c);
}

Test(config, severity_is_stored_in_canonical_form)
{
    const char *in[] = {"debug", "Info", "WARN", "warning", "error"};
    const char *out[] = {"DEBUG", "INFO", "WARN", "WARN", "ERROR"};
    for (int i = 0; i < 5; i++) {
        struct rp_config c;
        char text[128];
        snprintf(text, sizeof(text), "teleport:\n  log:\n    severity: %s\n", in[i]);
        load_ok(&c, text);
        cr_assert_str_eq(c.log_severity, out[i]);
        rp_config_free(&c);
    }
}

Test(config, unknown_fields_are_errors_naming_the_alternatives)
{
    load_fails("auth_service:\n  enabled: yes\n  listen_adr: 127.0.0.1:3025\n",
               "3: unknown field 'listen_adr' in auth_service, expected one of: enabled, "
               "cluster_name, listen_addr, public_addr, min_free_disk, audit_retention, "
               "max_login_attempts, lockout_duration, max_session_ttl, admin_identity_ttl, raft, "
               "password_hash_workers, "
               "password_hash_queue, password_hash_wait, login_rate_per_address, "
               "login_burst_per_address, login_rate_per_user, login_burst_per_user, recordings, "
               "max_map_size");
    load_fails("version: v3\nteleprot:\n  nodename: a\n",
               "2: unknown field 'teleprot' at the top level, expected one of: version, "
               "teleport, auth_service, proxy_service, ssh_service");
    load_fails("auth_service:\n  raft:\n    id: 1\n    peers: []\n",
               "4: unknown field 'peers' in auth_service.raft, expected one of: id, listen_addr, "
               "election_timeout, heartbeat_timeout, snapshot_threshold, snapshot_trailing");
    load_fails("teleport:\n  log:\n    format: json\n",
               "3: unknown field 'format' in teleport.log, expected one of: output, severity");
    load_fails("teleport:\n  join_params:\n    token: x\n",
               "3: unknown field 'token' in teleport.join_params, expected one of: token_name, "
               "method");
    load_fails("teleport:\n  auth_serverz: [a:1]\n",
               "2: unknown field 'auth_serverz' in teleport, expected one of: nodename, "
               "data_dir, auth_server, auth_servers, ca_pin, proxy_server, keep_alive_interval, "
               "join_params, log");
    load_fails("proxy_service:\n  labels: {a: b}\n",
               "2: unknown field 'labels' in proxy_service, expected one of: enabled, "
               "listen_addr, web_listen_addr, tunnel_listen_addr, public_addr, https_keypairs");
    load_fails("ssh_service:\n  command: []\n",
               "2: unknown field 'command' in ssh_service, expected one of: enabled, "
               "listen_addr, public_addr, labels, commands, heartbeat_period, shutdown_grace, "
               "accept_env, spool_max_size, auth_deadline");
}

Test(config, wrong_types_name_the_field_and_value)
{
    load_fails("auth_service:\n  raft:\n    id: abc\n",
               "3: auth_service.raft.id: expected a positive integer, got 'abc'");
    load_fails("auth_service:\n  raft:\n    id: 0\n",
               "3: auth_service.raft.id: expected a positive integer, got '0'");
    load_fails("auth_service:\n  raft:\n    id: -1\n",
               "3: auth_service.raft.id: expected a positive integer, got '-1'");
    load_fails("auth_service:\n  raft:\n    id: 18446744073709551616\n",
               "3: auth_service.raft.id: expected a positive integer up to "
               "18446744073709551615, got '18446744073709551616'");
    load_fails("auth_service:\n  raft:\n    id:\n",
               "3: auth_service.raft.id: expected a positive integer, got nothing");
    load_fails("auth_service:\n  raft:\n    snapshot_threshold: 4294967296\n",
               "3: auth_service.raft.snapshot_threshold: expected a positive integer up to "
               "4294967295, got '4294967296'");
    load_fails("auth_service:\n  raft:\n    snapshot_trailing: [1]\n",
               "3: auth_service.raft.snapshot_trailing: expected a positive integer, got a list");
    load_fails("auth_service:\n  enabled: maybe\n",
               "2: auth_service.enabled: expected yes or no (or true/false, on/off), got 'maybe'");
    load_fails("auth_service:\n  enabled: {a: 1}\n",
               "2: auth_service.enabled: expected yes or no (or true/false, on/off), got a map");
    load_fails("auth_service: yes\n", "1: auth_service: expected a map of fields, got 'yes'");
    load_fails("teleport:\n  - nodename\n", "2: teleport: expected a map of fields, got a list");
    load_fails("- a\n- b\n", "1: the file: expected a map of fields, got a list");
    load_fails("version: v2\n", "1: version: expected 'v3', got 'v2'");
    load_fails("teleport:\n  nodename: 'my node'\n",
               "2: teleport.nodename: expected a node name of 1 to 253 characters from A-Z a-z "
               "0-9 . _ -, got 'my node'");
    load_fails("teleport:\n  nodename: ~\n",
               "2: teleport.nodename: expected a node name of 1 to 253 characters from A-Z a-z "
               "0-9 . _ -, got '~'");
    load_fails("teleport:\n  data_dir: ''\n",
               "2: teleport.data_dir: expected a directory path, got ''");
    load_fails("teleport:\n  log:\n    severity: TRACE\n",
               "3: teleport.log.severity: expected one of DEBUG, INFO, WARN, WARNING, ERROR, got "
               "'TRACE'");
    load_fails("teleport:\n  log:\n    output: /var/log/raftport.log\n",
               "3: teleport.log.output: expected 'stderr' (the only log output supported for "
               "now), got '/var/log/raftport.log'");
    load_fails("teleport:\n  join_params:\n    method: iam\n",
               "3: teleport.join_params.method: expected 'token' (the only join method "
               "supported for now), got 'iam'");
    /* A token is a secret: a bad one is described, never echoed. */
    load_fails("teleport:\n  join_params:\n    token_name: 'a b'\n",
               "3: teleport.join_params.token_name: expected a join token (1 to 1024 printable "
               "characters, no spaces), got a value of 3 bytes (not shown: it is a secret)");
    load_fails("auth_service:\n  cluster_name: 'a/b'\n",
               "2: auth_service.cluster_name: expected a cluster name of 1 to 253 characters "
               "from A-Z a-z 0-9 . _ -, got 'a/b'");
    load_fails("teleport:\n  nodename: \"a\\nb\"\n",
               "2: teleport.nodename: expected a node name of 1 to 253 characters from A-Z a-z "
               "0-9 . _ -, got 'a\\x0ab'");
}

Test(config, bad_durations_and_sizes_are_errors)
{
    load_fails("auth_service:\n  raft:\n    election_timeout: 1x\n",
               "3: auth_service.raft.election_timeout: expected a duration with a unit, like "
               "100ms, 1s or 1m30s, got '1x'");
    load_fails("auth_service:\n  raft:\n    heartbeat_timeout: 100\n",
               "3: auth_service.raft.heartbeat_timeout: expected a duration with a unit, like "
               "100ms, 1s or 1m30s, got '100'");
    load_fails("auth_service:\n  raft:\n    heartbeat_timeout: 0s\n",
               "3: auth_service.raft.heartbeat_timeout: expected a duration with a unit, like "
               "100ms, 1s or 1m30s, got '0s'");
    load_fails("auth_service:\n  raft:\n    election_timeout: 50d\n",
               "3: auth_service.raft.election_timeout: expected a duration shorter than 49 days, "
               "got '50d'");
    load_fails("auth_service:\n  min_free_disk: 64XB\n",
               "2: auth_service.min_free_disk: expected a size like 64MB, 1GiB or 1048576 "
               "(bytes), got '64XB'");
    load_fails("auth_service:\n  min_free_disk: 20000000TiB\n",
               "2: auth_service.min_free_disk: expected a size like 64MB, 1GiB or 1048576 "
               "(bytes), got '20000000TiB'");
}

Test(config, bad_addresses_and_pins_are_errors)
{
    load_fails("auth_service:\n  listen_addr: 127.0.0.1\n",
               "2: auth_service.listen_addr: expected host:port (IPv4 address, [IPv6 address] or "
               "DNS name; port 1-65535), got '127.0.0.1'");
    load_fails("auth_service:\n  listen_addr: 127.0.0.1:70000\n",
               "2: auth_service.listen_addr: expected host:port (IPv4 address, [IPv6 address] or "
               "DNS name; port 1-65535), got '127.0.0.1:70000'");
    load_fails("proxy_service:\n  web_listen_addr: '[zz::1]:3080'\n",
               "2: proxy_service.web_listen_addr: expected host:port (IPv4 address, [IPv6 "
               "address] or DNS name; port 1-65535), got '[zz::1]:3080'");
    load_fails("teleport:\n  auth_server: 'a b:1'\n",
               "2: teleport.auth_server: expected host:port (IPv4 address, [IPv6 address] or DNS "
               "name; port 1-65535), got 'a b:1'");
    load_fails("auth_service:\n  public_addr: 0.0.0.0:3025\n",
               "2: auth_service.public_addr: expected an address others can dial (not 0.0.0.0 "
               "or [::]), got '0.0.0.0:3025'");
    load_fails("auth_service:\n  raft:\n    listen_addr: localhost:3030\n",
               "3: auth_service.raft.listen_addr: expected an IPv4 address and port like "
               "10.0.0.1:3030 (Raft peers are dialled by IPv4 address), got 'localhost:3030'");
    load_fails("auth_service:\n  raft:\n    listen_addr: '[::1]:3030'\n",
               "3: auth_service.raft.listen_addr: expected an IPv4 address and port like "
               "10.0.0.1:3030 (Raft peers are dialled by IPv4 address), got '[::1]:3030'");
    load_fails("auth_service:\n  raft:\n    listen_addr: 10.0.0.256:3030\n",
               "3: auth_service.raft.listen_addr: expected an IPv4 address and port like "
               "10.0.0.1:3030 (Raft peers are dialled by IPv4 address), got '10.0.0.256:3030'");
    load_fails("teleport:\n  ca_pin: "
               "sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef\n",
               "2: teleport.ca_pin: expected 'sha256:' followed by 64 lower-case hex digits, got "
               "'sha256:0123456789ABCDEF0123456789abcdef0123456789abcdef0123456789abcdef'");
    load_fails("teleport:\n  ca_pin: sha256:0123\n",
               "2: teleport.ca_pin: expected 'sha256:' followed by 64 lower-case hex digits, got "
               "'sha256:0123'");
    load_fails("teleport:\n  ca_pin: [" PIN "]\n",
               "2: teleport.ca_pin: expected 'sha256:' followed by 64 lower-case hex digits, got "
               "a list");
}

Test(config, labels_are_checked)
{
    load_fails("ssh_service:\n  labels:\n    env: prod\n    'bad name': x\n",
               "4: ssh_service.labels: bad label name 'bad name', expected 1 to 253 characters "
               "from A-Z a-z 0-9 / . _ : * -");
    load_fails("ssh_service:\n  labels:\n    env: [a, b]\n",
               "3: ssh_service.labels.env: expected a label value (a string), got a list");
    load_fails("ssh_service:\n  labels: [env]\n",
               "2: ssh_service.labels: expected a map of label names to values, got a list");
    struct rp_config c;
    load_ok(&c, "ssh_service:\n  labels:\n    a:\n    b: ~\n    c: 3\n");
    cr_assert_eq(c.ssh_n_labels, 3);
    cr_assert_str_eq(c.ssh_labels[0].value, "");
    cr_assert_str_eq(c.ssh_labels[1].value, "");
    cr_assert_str_eq(c.ssh_labels[2].value, "3");
    rp_config_free(&c);
    load_ok(&c, "ssh_service:\n  labels:\n");
    cr_assert_eq(c.ssh_n_labels, 0);
    rp_config_free(&c);
}

Test(config, yaml_errors_carry_the_file_and_line)
{
    load_fails("teleport:\n  nodename: a\n  nodename: b\n",
               "3: duplicate key 'nodename' (first at line 2)");
    load_fails("teleport:\n  nodename: &n a\n", "2: YAML anchors and aliases are not supported");
    load_fails("teleport:\n\tnodename: a\n",
               "2:1: found character that cannot start any token while scanning for the next "
               "token (YAML does not allow tabs for indentation; use spaces)");
    load_fails("teleport: [\n", "2:1: did not find expected node content while parsing a flow "
                                "node");
    load_fails("auth_service:\n  enabled: yes\n---\nssh_service: {}\n",
               "3: found a second YAML document ('---'); only one is expected here");
}

Test(config, five_mib_file_is_refused)
{
    size_t n = 5u << 20;
    char *text = malloc(n), path[64];
    memset(text, ' ', n);
    text[0] = '#';
    text[n - 1] = '\n';
    write_temp(text, n, path);
    free(text);

    struct rp_config c;
    rp_config_init(&c);
    int rv = rp_config_load(&c, path);
    unlink(path);
    cr_assert_eq(rv, RP_EINVAL);
    char want[128];
    snprintf(want, sizeof(want), "%s: larger than the 4 MiB limit for a YAML document", path);
    cr_assert_str_eq(rp_errmsg(), want);
    rp_config_free(&c);
}

Test(config, missing_file_is_an_io_error)
{
    struct rp_config c;
    rp_config_init(&c);
    cr_assert_eq(rp_config_load(&c, "/nonexistent/raftport.yaml"), RP_EIO);
    cr_assert_str_eq(rp_errmsg(),
                     "/nonexistent/raftport.yaml: cannot open: No such file or directory");
    rp_config_free(&c);
}

Test(config, validate_requires_raft_id_and_cluster_name_for_auth)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  cluster_name: a\n");
    validate_fails(&c, "auth_service.raft.id is required when auth_service is enabled");
    rp_config_free(&c);

    load_ok(&c, "auth_service:\n  raft: {id: 1}\n");
    validate_fails(&c, "auth_service.cluster_name is required to bootstrap a new cluster (an auth "
                       "server joining with teleport.join_params learns it from the cluster)");
    /* A joining auth server needs no cluster name. */
    rp_config_set(&c.join_token, "tok");
    rp_config_set(&c.ca_pin, PIN);
    rp_config_set(&c.auth_server, "10.0.0.1:3025");
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);
}

Test(config, recordings_have_defaults_and_bounds)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft: {id: 1}\n");
    cr_assert_eq(c.rec_retention_ms, 720ull * 3600 * 1000, "30 days");
    cr_assert_eq(c.rec_max_size, 2ull << 30);
    cr_assert_eq(c.rec_max_map_size, 0, "derived from max_size");
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);

    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft: {id: 1}\n  recordings:\n"
                "    retention: 168h\n    max_size: 10GiB\n    max_map_size: 32GiB\n");
    cr_assert_eq(c.rec_retention_ms, 168ull * 3600 * 1000);
    cr_assert_eq(c.rec_max_size, 10ull << 30);
    cr_assert_eq(c.rec_max_map_size, 32ull << 30);
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);

    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft: {id: 1}\n  recordings:\n"
                "    max_size: 100KiB\n");
    validate_fails(&c, "auth_service.recordings.max_size (102400 bytes) must be 1MiB to 1TiB");
    rp_config_free(&c);
    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft: {id: 1}\n  recordings:\n"
                "    max_size: 1GiB\n    max_map_size: 1GiB\n");
    validate_fails(&c, "auth_service.recordings.max_map_size (1073741824 bytes) must be at least "
                       "max_size + 64MiB (1140850688 bytes), or left out (2 x max_size + 256MiB)");
    rp_config_free(&c);
    load_fails("auth_service:\n  recordings:\n    retention: 10s\n",
               "3: auth_service.recordings.retention: expected a duration of at least 1m, got "
               "'10s'");
    load_fails("auth_service:\n  recordings:\n    max_size: lots\n",
               "3: auth_service.recordings.max_size: expected a size like 64MB, 1GiB or 1048576 "
               "(bytes), got 'lots'");
    load_fails("auth_service:\n  recordings:\n    keep: 1h\n",
               "3: unknown field 'keep' in auth_service.recordings, expected one of: retention, "
               "max_size, max_map_size");
}

Test(config, login_limits_have_defaults_and_bounds)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft: {id: 1}\n");
    cr_assert_eq(c.password_hash_workers, 0, "default workers are chosen at start");
    cr_assert_eq(c.password_hash_queue, 64);
    cr_assert_eq(c.password_hash_wait_ms, 2000);
    cr_assert_eq(c.login_rate_per_address, 20);
    cr_assert_eq(c.login_burst_per_address, 40);
    cr_assert_eq(c.login_rate_per_user, 10);
    cr_assert_eq(c.login_burst_per_user, 20);
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);

    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft: {id: 1}\n"
                "  password_hash_workers: 4\n  password_hash_queue: 10\n"
                "  password_hash_wait: 500ms\n  login_rate_per_address: 100\n"
                "  login_burst_per_address: 200\n  login_rate_per_user: 5\n"
                "  login_burst_per_user: 6\n");
    cr_assert_eq(c.password_hash_workers, 4);
    cr_assert_eq(c.password_hash_queue, 10);
    cr_assert_eq(c.password_hash_wait_ms, 500);
    cr_assert_eq(c.login_rate_per_address, 100);
    cr_assert_eq(c.login_burst_per_address, 200);
    cr_assert_eq(c.login_rate_per_user, 5);
    cr_assert_eq(c.login_burst_per_user, 6);
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    c.password_hash_workers = 65;
    validate_fails(&c, "auth_service.password_hash_workers (65) must be 1 to 64");
    c.password_hash_workers = 2;
    c.max_map_size = 1ull << 20;
    validate_fails(&c, "auth_service.max_map_size (1048576 bytes) must be 64MiB to 16TiB");
    c.max_map_size = 8ull << 30;
    c.password_hash_workers = 2;
    c.password_hash_wait_ms = 61000;
    validate_fails(&c, "auth_service.password_hash_wait must be between 1ms and 1m");
    c.password_hash_wait_ms = 2000;
    c.login_burst_per_user = 1000001;
    validate_fails(&c, "auth_service.login_burst_per_user (1000001) must be 1 to 1000000");
    rp_config_free(&c);
    load_fails("auth_service:\n  login_rate_per_address: 0\n",
               "2: auth_service.login_rate_per_address: expected a positive integer, got '0'");
}

Test(config, validate_requires_pin_and_auth_server_to_join)
{
    struct rp_config c;
    load_ok(&c, "teleport:\n  join_params: {token_name: tok}\n");
    validate_fails(&c, "teleport.ca_pin is required with teleport.join_params.token_name: a "
                       "joining server checks the cluster's CA against it");
    rp_config_set(&c.ca_pin, PIN);
    validate_fails(&c, "teleport.auth_server (or auth_servers, or proxy_server) is required with "
                       "teleport.join_params.token_name: it is the auth server (or proxy) to join "
                       "through");
    rp_config_set(&c.auth_server, "auth.example:3025");
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);
}

Test(config, validate_checks_raft_timing_and_snapshots)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft:\n    id: 1\n"
                "    election_timeout: 500ms\n    heartbeat_timeout: 500ms\n");
    validate_fails(&c, "auth_service.raft.heartbeat_timeout (500ms) must be shorter than "
                       "election_timeout (500ms)");
    c.heartbeat_timeout_ms = 100;
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    c.snapshot_threshold = 100;
    c.snapshot_trailing = 99;
    validate_fails(&c, "auth_service.raft.snapshot_trailing (99) must be at least "
                       "snapshot_threshold (100)");
    c.snapshot_trailing = 100;
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);
}

Test(config, validate_rechecks_formats_after_flags)
{
    struct rp_config c;
    load_ok(&c, "auth_service:\n  cluster_name: a\n  raft: {id: 1}\n");
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_set(&c.raft_listen_addr, "raft.example:3030");
    validate_fails(&c, "auth_service.raft.listen_addr: expected an IPv4 address and port like "
                       "10.0.0.1:3030 (Raft peers are dialled by IPv4 address), got "
                       "'raft.example:3030'");
    rp_config_set(&c.raft_listen_addr, "127.0.0.1:3030");
    rp_config_set(&c.nodename, "");
    validate_fails(&c, "teleport.nodename: expected a node name of 1 to 253 characters from A-Z "
                       "a-z 0-9 . _ -, got ''");
    rp_config_set(&c.nodename, "n1");
    rp_config_set(&c.data_dir, NULL);
    validate_fails(&c, "teleport.data_dir is not set, expected a directory path");
    rp_config_set(&c.data_dir, "/tmp/x");
    rp_config_set(&c.ca_pin, "sha1:abc");
    validate_fails(&c, "teleport.ca_pin: expected 'sha256:' followed by 64 lower-case hex "
                       "digits, got 'sha1:abc'");
    rp_config_free(&c);
}

Test(config, validate_requires_auth_server_for_proxy_or_node_without_auth)
{
    struct rp_config c;
    load_ok(&c, "ssh_service:\n  labels: {env: dev}\n");
    validate_fails(&c, "teleport.auth_server (or auth_servers) is required when proxy_service "
                       "or ssh_service runs without auth_service");
    rp_config_set(&c.auth_server, "proxy.example:3025");
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    c.auth_enabled = true;
    c.raft_id = 1;
    rp_config_set(&c.cluster_name, "x");
    rp_config_set(&c.auth_server, NULL);
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    rp_config_free(&c);
}

Test(config, set_replaces_and_accepts_its_own_value)
{
    char *field = NULL;
    rp_config_set(&field, "a");
    cr_assert_str_eq(field, "a");
    rp_config_set(&field, field);
    cr_assert_str_eq(field, "a");
    rp_config_set(&field, "bb");
    cr_assert_str_eq(field, "bb");
    rp_config_set(&field, NULL);
    cr_assert_null(field);
}

Test(config, parse_size_units)
{
    static const struct {
        const char *s;
        uint64_t v;
    } ok[] = {
        {"0", 0},
        {"1024", 1024},
        {"12B", 12},
        {"512k", 512000},
        {"512K", 512000},
        {"1KB", 1000},
        {"1kb", 1000},
        {"1KiB", 1024},
        {"64MB", 64000000},
        {"64M", 64000000},
        {"64 MiB", 64ull << 20},
        {"1G", 1000000000},
        {"1GB", 1000000000},
        {"1GiB", 1ull << 30},
        {"2TB", 2000000000000ull},
        {"2TiB", 2ull << 40},
        {"18446744073709551615", UINT64_MAX},
        {"16777215TiB", 16777215ull << 40},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t v = 1;
        cr_assert_eq(rp_parse_size(ok[i].s, &v), 0, "%s: %s", ok[i].s, rp_errmsg());
        cr_assert_eq(v, ok[i].v, "%s", ok[i].s);
    }
    const char *bad[] = {"",
                         "MB",
                         "-1",
                         "1.5GB",
                         "1 ",
                         "1  MB",
                         "1MBB",
                         "1 iB",
                         " 1",
                         "1e6",
                         "0x10",
                         "18446744073709551616",
                         "16777216TiB",
                         "20000000000GB"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t v = 7;
        cr_assert_eq(rp_parse_size(bad[i], &v), RP_EINVAL, "'%s' was accepted", bad[i]);
        cr_assert_eq(v, 7);
        cr_assert(strstr(rp_errmsg(), bad[i]) != NULL, "%s", rp_errmsg());
    }
    uint64_t v;
    rp_parse_size("16777216TiB", &v);
    cr_assert_str_eq(rp_errmsg(), "size '16777216TiB' is too large");
    rp_parse_size("1XB", &v);
    cr_assert_str_eq(rp_errmsg(), "bad size '1XB': unknown unit, expected B, k/KB, KiB, M/MB, "
                                  "MiB, G/GB, GiB, T/TB or TiB");
    cr_assert_eq(rp_parse_size(NULL, &v), RP_EINVAL);
}

/* Every ```yaml block of the reference page loads; the first one also validates. */
Test(config, reference_page_examples_load)
{
    const char *candidates[] = {"docs/configuration.md", "../docs/configuration.md",
                                "../../docs/configuration.md"};
    FILE *f = NULL;
    for (size_t i = 0; i < 3 && f == NULL; i++)
        f = fopen(candidates[i], "r");
    cr_assert_not_null(f, "docs/configuration.md not found: run from the repository root");

    char line[1024], block[16384];
    size_t len = 0, n_blocks = 0;
    bool in = false;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (!in && strncmp(line, "```yaml", 7) == 0) {
            in = true, len = 0;
            continue;
        }
        if (in && strncmp(line, "```", 3) == 0) {
            in = false;
            block[len] = '\0';
            struct rp_config c;
            char path[64];
            int rv = load_text(&c, block, path);
            cr_assert_eq(rv, 0, "block %zu of docs/configuration.md: %s\n%s", n_blocks, rp_errmsg(),
                         block);
            if (n_blocks == 0)
                cr_assert_eq(rp_config_validate(&c), 0, "first block: %s", rp_errmsg());
            rp_config_free(&c);
            n_blocks++;
            continue;
        }
        if (in) {
            size_t l = strlen(line);
            cr_assert(len + l < sizeof(block));
            memcpy(block + len, line, l);
            len += l;
        }
    }
    fclose(f);
    cr_assert(n_blocks >= 3, "only %zu yaml blocks found", n_blocks);
}

/* Random byte mutations of a valid config: every outcome is a clean success or a
 * clean RP_EINVAL naming the file, never a crash (run under ASan too). */
Test(config, random_mutations_never_crash, .timeout = 300)
{
    const char *seed_env = getenv("RP_FUZZ_SEED");
    unsigned seed = seed_env != NULL ? (unsigned)strtoul(seed_env, NULL, 10) : 20261125u;
    static const char specials[] = "{}[]:-&*!|>'\"#\t\n ?,%@`~\\0123456789";
    size_t base_len = strlen(full_config);
    char *buf = malloc(base_len * 2 + 64);
    char path[64];
    int accepted = 0;

    srand(seed);
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = base_len;
        memcpy(buf, full_config, n);
        int mutations = 1 + rand() % 8;
        for (int m = 0; m < mutations; m++) {
            size_t pos = (size_t)rand() % (n + 1);
            int kind = rand() % 4;
            char ch = rand() % 2 ? (char)(rand() % 256) : specials[rand() % (sizeof(specials) - 1)];
            if (kind == 0 && pos < n) {
                buf[pos] = ch; /* replace */
            } else if (kind == 1 && n < base_len * 2) {
                memmove(buf + pos + 1, buf + pos, n - pos); /* insert */
                buf[pos] = ch;
                n++;
            } else if (kind == 2 && pos < n) {
                memmove(buf + pos, buf + pos + 1, n - pos - 1); /* delete */
                n--;
            } else if (kind == 3 && pos < n) {
                size_t span = 1 + (size_t)rand() % 16; /* duplicate a short run */
                if (pos + span > n)
                    span = n - pos;
                if (n + span <= base_len * 2) {
                    memmove(buf + pos + span, buf + pos, n - pos);
                    n += span;
                }
            }
        }

        struct rp_ynode *root = NULL;
        int rv = rp_yaml_parse_str("fuzz.yaml", buf, n, &root);
        cr_assert(rv == 0 || rv == RP_EINVAL, "seed %u iter %d: rv %d", seed, iter, rv);
        if (rv == 0)
            cr_assert_not_null(root);
        else
            cr_assert(strncmp(rp_errmsg(), "fuzz.yaml:", 10) == 0, "seed %u iter %d: '%s'", seed,
                      iter, rp_errmsg());
        rp_ynode_free(root);

        struct ynode_docs {
            struct rp_ynode **d;
            size_t n;
        } all = {NULL, 0};
        rv = rp_yaml_parse_all("fuzz.yaml", buf, n, &all.d, &all.n);
        cr_assert(rv == 0 || rv == RP_EINVAL);
        rp_yaml_docs_free(all.d, all.n);

        write_temp(buf, n, path);
        struct rp_config c;
        rp_config_init(&c);
        rv = rp_config_load(&c, path);
        unlink(path);
        cr_assert(rv == 0 || rv == RP_EINVAL, "seed %u iter %d: rv %d", seed, iter, rv);
        if (rv == 0) {
            accepted++;
            rv = rp_config_validate(&c);
            cr_assert(rv == 0 || rv == RP_EINVAL);
        } else {
            cr_assert(strncmp(rp_errmsg(), path, strlen(path)) == 0 &&
                          rp_errmsg()[strlen(path)] == ':',
                      "seed %u iter %d: '%s'", seed, iter, rp_errmsg());
        }
        rp_config_free(&c);
    }
    free(buf);
    /* Some mutations land in comments or values that stay valid; most do not. */
    cr_log_info("seed %u: %d of 2000 mutations still loaded", seed, accepted);
}

Test(config, max_session_ttl_defaults_to_30h_and_takes_teleport_durations)
{
    struct rp_config c;
    rp_config_init(&c);
    cr_assert_eq(c.max_session_ttl_ms, 30ull * 3600 * 1000);
    rp_config_free(&c);
    load_ok(&c, "auth_service:\n  max_session_ttl: 8h30m\n");
    cr_assert_eq(c.max_session_ttl_ms, (8ull * 60 + 30) * 60 * 1000);
    rp_config_free(&c);
    load_fails("auth_service:\n  max_session_ttl: 30s\n",
               "2: auth_service.max_session_ttl: expected a duration of at least 1m, got '30s'");
}

Test(config, node_agent_fields_have_their_defaults)
{
    struct rp_config c;
    rp_config_init(&c);
    cr_assert_eq(c.heartbeat_period_ms, 60000);
    cr_assert_eq(c.shutdown_grace_ms, 30000);
    cr_assert_eq(c.auth_deadline_ms, 20000);
    cr_assert_eq(c.spool_max_size, 256ull << 20);
    cr_assert_eq(c.n_accept_env, 2);
    cr_assert_str_eq(c.accept_env[0], "LANG");
    cr_assert_str_eq(c.accept_env[1], "LC_*");
    cr_assert_eq(c.n_auth_servers, 0);
    cr_assert_eq(c.ssh_n_commands, 0);
    rp_config_free(&c);
}

Test(config, node_agent_fields_load_from_the_file)
{
    struct rp_config c;
    load_ok(&c, "teleport:\n"
                "  auth_servers: [10.0.0.1:3025, \"auth2.example:3025\"]\n"
                "  join_params: {token_name: tok, method: token}\n"
                "  ca_pin: " PIN "\n"
                "ssh_service:\n"
                "  labels: {env: dev}\n"
                "  commands:\n"
                "  - name: arch\n"
                "    command: [uname, -m]\n"
                "    period: 10s\n"
                "  - name: up\n"
                "    command: [uptime]\n"
                "  heartbeat_period: 1s\n"
                "  shutdown_grace: 5s\n"
                "  accept_env: [LANG, TERM_PROGRAM, \"LC_*\"]\n"
                "  spool_max_size: 64MB\n"
                "  auth_deadline: 3s\n");
    cr_assert(c.ssh_enabled);
    cr_assert_eq(c.n_auth_servers, 2);
    cr_assert_str_eq(c.auth_servers[1], "auth2.example:3025");
    cr_assert_eq(c.ssh_n_commands, 2);
    cr_assert_str_eq(c.ssh_commands[0].name, "arch");
    cr_assert_eq(c.ssh_commands[0].argc, 2);
    cr_assert_str_eq(c.ssh_commands[0].argv[1], "-m");
    cr_assert_null(c.ssh_commands[0].argv[2]);
    cr_assert_eq(c.ssh_commands[0].period_ms, 10000);
    cr_assert_eq(c.ssh_commands[1].period_ms, 60000, "period defaults to 1m");
    cr_assert_eq(c.heartbeat_period_ms, 1000);
    cr_assert_eq(c.shutdown_grace_ms, 5000);
    cr_assert_eq(c.n_accept_env, 3);
    cr_assert_str_eq(c.accept_env[2], "LC_*");
    cr_assert_eq(c.spool_max_size, 64000000);
    cr_assert_eq(c.auth_deadline_ms, 3000);
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    const char *addrs[8];
    cr_assert_eq(rp_config_auth_addrs(&c, addrs, 8), 2);
    rp_config_set(&c.auth_server, "10.0.0.1:3025");
    cr_assert_eq(rp_config_auth_addrs(&c, addrs, 8), 2, "auth_server is not listed twice");
    rp_config_free(&c);
}

Test(config, node_agent_fields_refuse_bad_values_with_the_field_named)
{
    load_fails("teleport:\n  auth_servers: [nope]\n",
               "2: teleport.auth_servers[0]: expected host:port (IPv4 address, [IPv6 address] or "
               "DNS name; port 1-65535), got 'nope'");
    load_fails("teleport:\n  auth_servers: 10.0.0.1:3025\n",
               "2: teleport.auth_servers: expected a list of at most 16 entries, each host:port "
               "(IPv4 address, [IPv6 address] or DNS name; port 1-65535), got '10.0.0.1:3025'");
    load_fails("ssh_service:\n  heartbeat_period: 100ms\n",
               "2: ssh_service.heartbeat_period: expected a duration from 1s to 1h, got '100ms'");
    load_fails("ssh_service:\n  auth_deadline: 1h\n",
               "2: ssh_service.auth_deadline: expected a duration from 1s to 10m, got '1h'");
    load_fails("ssh_service:\n  shutdown_grace: 2h\n",
               "2: ssh_service.shutdown_grace: expected a duration up to 1h, got '2h'");
    load_fails("ssh_service:\n  spool_max_size: 1000\n",
               "2: ssh_service.spool_max_size: expected a size of at least 1MiB, got '1000'");
    load_fails("ssh_service:\n  accept_env: [\"*\"]\n",
               "2: ssh_service.accept_env[0]: expected a variable name like LANG or a prefix "
               "pattern like LC_*, got '*'");
    load_fails("ssh_service:\n  commands:\n  - name: a\n",
               "3: ssh_service.commands[0]: expected "
               "a map with name, command (a list: the program and its arguments) and period "
               "(optional, default 1m), got a map");
    load_fails("ssh_service:\n  commands:\n  - {name: a, command: []}\n",
               "3: ssh_service.commands[0].command: expected a list holding at least the program "
               "to run, got a list");
    load_fails("ssh_service:\n  commands:\n  - {name: a, command: [x], period: 10ms}\n",
               "3: ssh_service.commands[0].period: expected a duration from 1s to 24h, got '10ms'");
    load_fails("ssh_service:\n  commands:\n  - {name: a, command: [x], every: 1m}\n",
               "3: unknown field 'every' in ssh_service.commands[0], expected one of: name, "
               "command, period");
    load_fails("ssh_service:\n  commands:\n  - {name: a, command: [x]}\n  - {name: a, command: "
               "[y]}\n",
               "4: ssh_service.commands[1].name: 'a' is already the name of "
               "ssh_service.commands[0]");
    load_fails("ssh_service:\n  commands:\n  - {name: \"a b\", command: [x]}\n",
               "3: ssh_service.commands[0].name: expected a label name of 1 to 253 characters "
               "from A-Z a-z 0-9 / . _ : * -, got 'a b'");
}

Test(config, a_command_label_may_not_shadow_a_static_one)
{
    struct rp_config c;
    load_ok(&c,
            "teleport: {auth_server: 10.0.0.1:3025}\n"
            "ssh_service:\n  labels: {arch: x}\n  commands: [{name: arch, command: [uname]}]\n");
    validate_fails(&c, "ssh_service.commands[0].name: 'arch' is also a static label in "
                       "ssh_service.labels; a label has one source");
    rp_config_free(&c);
}

Test(config, auth_servers_from_a_flag_are_checked_one_by_one)
{
    struct rp_config c;
    rp_config_init(&c);
    cr_assert_eq(rp_config_set_auth_servers(&c, "127.0.0.1:1,127.0.0.1:2"), 0, "%s", rp_errmsg());
    cr_assert_eq(c.n_auth_servers, 2);
    cr_assert_str_eq(c.auth_servers[1], "127.0.0.1:2");
    cr_assert_eq(rp_config_set_auth_servers(&c, "127.0.0.1:1,,x:2"), RP_EINVAL);
    cr_assert_eq(rp_config_set_auth_servers(&c, "127.0.0.1:1,bad"), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "auth server 'bad': expected host:port (IPv4 address, [IPv6 "
                                  "address] or DNS name; port 1-65535)");
    cr_assert_eq(c.n_auth_servers, 2, "a refused list leaves the old one");
    rp_config_free(&c);
}

/* ---- proxy mode (teleport.proxy_server) ----------------------------------------------- */

Test(config, proxy_server_replaces_auth_servers_for_a_node)
{
    struct rp_config c;
    load_ok(&c, "teleport:\n  proxy_server: proxy.example.com:3080\n  ca_pin: " PIN "\n"
                "  join_params: {token_name: abcdef0123456789}\n"
                "  keep_alive_interval: 5s\n"
                "ssh_service: {labels: {env: prod}}\n");
    cr_assert_eq(rp_config_validate(&c), 0, "%s", rp_errmsg());
    cr_assert_str_eq(c.proxy_server, "proxy.example.com:3080");
    cr_assert_eq(c.keep_alive_interval_ms, 5000);
    cr_assert(!c.ssh_listen_addr_set, "no listen_addr in the file: a tunnel-only node");
    const char *addrs[4];
    cr_assert_eq(rp_config_auth_addrs(&c, addrs, 4), 1, "auth is reached through the proxy");
    cr_assert_str_eq(addrs[0], "proxy.example.com:3080");
    rp_config_free(&c);

    load_ok(&c, "teleport: {proxy_server: 'p:3080'}\nssh_service: {listen_addr: '0.0.0.0:3022'}\n");
    cr_assert(c.ssh_listen_addr_set, "a listen_addr in the file is remembered");
    cr_assert_eq(c.keep_alive_interval_ms, 30000, "30 s by default");
    rp_config_free(&c);
}

Test(config, proxy_server_excludes_auth_servers_and_other_roles)
{
    struct rp_config c;
    load_ok(&c, "teleport: {proxy_server: 'p:3080', auth_server: 'a:3025'}\nssh_service: {}\n");
    validate_fails(&c, "teleport.proxy_server and teleport.auth_server (or auth_servers) exclude "
                       "each other: an agent reaches auth either directly or through the proxy");
    rp_config_free(&c);

    load_ok(&c, "teleport: {proxy_server: 'p:3080'}\nproxy_service: {}\n");
    validate_fails(&c, "teleport.proxy_server is for node agents (ssh_service); auth and proxy "
                       "servers name auth_server instead");
    rp_config_free(&c);

    load_fails("teleport: {proxy_server: 'nope'}\n",
               "1: teleport.proxy_server: expected host:port (IPv4 address, [IPv6 address] or DNS "
               "name; port 1-65535), got 'nope'");
    load_fails("teleport: {keep_alive_interval: 500ms}\n",
               "1: teleport.keep_alive_interval: expected a duration from 1s to 1h, got '500ms'");
}
