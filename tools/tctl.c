/* tools/tctl.c: the administrator's tool.
 *
 *   tctl [-c CONFIG] [--auth-server ADDR] COMMAND [--format=text|json]
 *
 * Run on an auth host with -c, it uses that host's admin identity from
 * data_dir and talks to the local auth server first, failing over to the
 * other members. */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/audit.h"
#include "auth/auth.h"
#include "lib/config.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "lib/yaml.h"
#include "lib/yaml_mp.h"
#include "auth/rbac.h"

enum format { FMT_DEFAULT, FMT_TEXT, FMT_JSON, FMT_YAML };

struct tctl {
    struct rp_config cfg;
    const char *config_path;
    const char *identity; /* -i: an identity file from tctl auth sign --format=file */
    const char *auth_server;
    enum format format;
    uint64_t ttl_ms;
    const char *type;
    bool stale, with_secrets, force;
    const char *since, *until, *user;
    const char *roles, *logins, *set_roles;
    const char *sign_user, *sign_host, *sign_format, *out_path;
    bool ttl_set;
    uint64_t limit;
    struct auth_client *client;
};

static void usage(FILE *f)
{
    fprintf(
        f,
        "usage: tctl [-c CONFIG] [--auth-server ADDR] COMMAND [flags]\n"
        "\n"
        "Commands:\n"
        "  status                       cluster, CA pin, Raft members and their state\n"
        "  tokens add --type=TYPE       create a join token (auth, node or proxy) [--ttl=30m]\n"
        "  tokens ls                    list join tokens\n"
        "  tokens rm TOKEN              delete a join token\n"
        "  auth members ls              list the auth servers of the Raft group\n"
        "  auth members rm ID           remove auth server ID from the Raft group\n"
        "  get KIND[/NAME] | get all    print resources as YAML (--format=json|text)\n"
        "                               [--stale] [--with-secrets: private keys and\n"
        "                               password hashes too]\n"
        "  create [-f] FILE.yaml        create the role, user and token resources of FILE\n"
        "                               (-f: overwrite existing ones)\n"
        "  rm KIND/NAME                 delete a role, user or token\n"
        "  users add NAME --roles=R1,R2 [--logins=L1,L2] [--ttl=1h]\n"
        "                               create a user; prints a one-time invite token\n"
        "  users ls                     list users\n"
        "  users rm NAME                delete a user\n"
        "  users reset NAME [--ttl=1h]  drop the user's password and second factor; new invite\n"
        "  users update NAME --set-roles=R1,R2\n"
        "                               replace the user's roles\n"
        "  auth export --type=TYPE      public CA keys: user (TrustedUserCAKeys line), host\n"
        "                               (@cert-authority known_hosts line) or tls (PEM)\n"
        "  auth sign --user=NAME|--host=NAME -o PATH [--format=openssh|file|tls] [--ttl=D]\n"
        "                               a key with its certificates (openssh: PATH and\n"
        "                               PATH-cert.pub; tls: PATH.key, PATH.crt, PATH.cas)\n"
        "  events ls                    search the audit log [--since=1h|TIME] [--until=TIME]\n"
        "                               [--type=EVENT] [--user=NAME] [--limit=N (1000)]\n"
        "                               [--stale: this server's copy, no leader needed]\n"
        "  version\n"
        "\n"
        "Flags:\n"
        "  -c, --config FILE   the auth server's raftport.yaml (its data_dir holds the identity)\n"
        "  -i, --identity FILE a user's identity file (tctl auth sign --format=file); needs\n"
        "                      --auth-server; the user's roles decide what it may do\n"
        "      --auth-server   address of an auth server (default: from the config)\n"
        "      --format        text (default) or json\n");
}

static int fail(const char *what)
{
    fprintf(stderr, "tctl: %s: %s\n", what, rp_errmsg());
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

/* Sends a request built by the caller; prints the error and returns 1 on failure. */
static int call(struct tctl *t, struct rp_buf *req, msgpack_unpacked *resp, const char *what)
{
    int rv = auth_client_call(t->client, req->data, req->len, resp);
    rp_buf_free(req);
    if (rv != 0) {
        fprintf(stderr, "tctl: %s: %s (%s)\n", what, rp_errmsg(), rp_strerror(rv));
        msgpack_unpacked_destroy(resp);
        return 1;
    }
    return 0;
}

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

static int get_ca(struct tctl *t, const char *type, msgpack_unpacked *resp);

/* The certificate authorities: type, algorithm, fingerprint, rotation state. A CA
 * that cannot be read is shown as such; status itself does not fail for it. */
static void print_ca_table(struct tctl *t)
{
    static const char *const types[] = {"tls", "user", "host"};
    printf("\n%-5s %-10s %-52s %s\n", "CA", "Algorithm", "Fingerprint", "Rotation");
    for (size_t i = 0; i < 3; i++) {
        msgpack_unpacked resp;
        if (get_ca(t, types[i], &resp) != 0) {
            printf("%-5s %-10s %-52s %s\n", types[i], "-", "(not readable)", "-");
            continue;
        }
        const msgpack_object *spec = rp_mp_get(rp_mp_get(&resp.data, "res"), "spec");
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
        msgpack_unpacked_destroy(&resp);
    }
}

static int cmd_status(struct tctl *t)
{
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "m", "status");
    if (call(t, &req, &resp, "status") != 0)
        return 1;
    const msgpack_object *st = &resp.data;
    const msgpack_object *members = rp_mp_get(st, "members");
    uint32_t nm = members && members->type == MSGPACK_OBJECT_ARRAY ? members->via.array.size : 0;
    char b1[256], b2[128];
    if (t->format == FMT_JSON) {
        /* Exactly the documented fields, so that scripts can rely on them. */
        struct rp_buf doc;
        rp_buf_init(&doc);
        rp_mp_packer_init(&pk, &doc);
        msgpack_pack_map(&pk, 5);
        rp_mp_kv_str(&pk, "cluster_name", field(st, "cluster_name", b1, sizeof b1));
        rp_mp_kv_str(&pk, "ca_pin", field(st, "ca_pin", b2, sizeof b2));
        rp_mp_kv_u64(&pk, "leader_id", ufield(st, "leader_id"));
        rp_mp_kv_u64(&pk, "term", ufield(st, "term"));
        rp_mp_pack_str(&pk, "members");
        msgpack_pack_array(&pk, nm);
        for (uint32_t i = 0; i < nm; i++) {
            const msgpack_object *m = &members->via.array.ptr[i];
            char a[128], r[32], s[32];
            msgpack_pack_map(&pk, 5);
            rp_mp_kv_u64(&pk, "id", ufield(m, "id"));
            rp_mp_kv_str(&pk, "address", field(m, "address", a, sizeof a));
            rp_mp_kv_str(&pk, "role", field(m, "role", r, sizeof r));
            rp_mp_kv_str(&pk, "state", field(m, "state", s, sizeof s));
            rp_mp_kv_u64(&pk, "last_applied", ufield(m, "last_applied"));
        }
        msgpack_unpacked out;
        if (rp_mp_parse(doc.data, doc.len, &out) == 0) {
            print_json(&out.data);
            msgpack_unpacked_destroy(&out);
        }
        rp_buf_free(&doc);
        msgpack_unpacked_destroy(&resp);
        return 0;
    }
    printf("Cluster:  %s\n", field(st, "cluster_name", b1, sizeof b1));
    printf("CA pin:   %s\n", field(st, "ca_pin", b1, sizeof b1));
    uint64_t leader = ufield(st, "leader_id");
    if (leader)
        printf("Leader:   %" PRIu64 " (term %" PRIu64 ")\n", leader, ufield(st, "term"));
    else
        printf("Leader:   none (term %" PRIu64 "): no quorum, or an election is running\n",
               ufield(st, "term"));
    printf("\n%-4s %-21s %-21s %-8s %-12s %-13s %s\n", "ID", "Raft address", "API address", "Role",
           "State", "Last applied", "Disk free");
    for (uint32_t i = 0; i < nm; i++) {
        const msgpack_object *m = &members->via.array.ptr[i];
        char a[128], api[128], r[32], s[32], disk[32];
        bool reachable = false;
        rp_mp_get_bool(m, "reachable", &reachable);
        if (reachable)
            human_bytes(ufield(m, "disk_free"), disk, sizeof disk);
        else
            snprintf(disk, sizeof disk, "-");
        printf("%-4" PRIu64 " %-21s %-21s %-8s %-12s %-13" PRIu64 " %s\n", ufield(m, "id"),
               field(m, "address", a, sizeof a), field(m, "api_address", api, sizeof api),
               field(m, "role", r, sizeof r), field(m, "state", s, sizeof s),
               ufield(m, "last_applied"), disk);
    }
    msgpack_unpacked_destroy(&resp);
    print_ca_table(t);
    return 0;
}

static int cmd_tokens_add(struct tctl *t)
{
    if (t->type == NULL) {
        fprintf(stderr, "tctl tokens add: --type is required (auth, node or proxy)\n");
        return 2;
    }
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 3);
    rp_mp_kv_str(&pk, "m", "token_add");
    rp_mp_kv_str(&pk, "type", t->type);
    rp_mp_kv_u64(&pk, "ttl_ms", t->ttl_ms);
    if (call(t, &req, &resp, "tokens add") != 0)
        return 1;
    char token[80], type[16], pin[96], when[40];
    field(&resp.data, "token", token, sizeof token);
    field(&resp.data, "type", type, sizeof type);
    field(&resp.data, "ca_pin", pin, sizeof pin);
    uint64_t expires = ufield(&resp.data, "expires");
    rp_format_time(expires, when, sizeof when);
    if (t->format == FMT_JSON) {
        struct rp_buf out;
        rp_buf_init(&out);
        rp_buf_append_str(&out, "{\"token\": ");
        rp_json_str(&out, token, strlen(token));
        rp_buf_append_str(&out, ", \"type\": ");
        rp_json_str(&out, type, strlen(type));
        rp_buf_printf(&out, ", \"expires\": \"%s\", \"ca_pin\": ", when);
        rp_json_str(&out, pin, strlen(pin));
        rp_buf_append_str(&out, "}\n");
        fwrite(out.data, 1, out.len, stdout);
        rp_buf_free(&out);
    } else {
        char ttl[32];
        const char *server = t->auth_server ? t->auth_server
                                            : (t->cfg.auth_public_addr ? t->cfg.auth_public_addr
                                                                       : t->cfg.auth_listen_addr);
        rp_format_duration(t->ttl_ms, ttl, sizeof ttl);
        printf("The invite token: %s\n", token);
        printf("This token will expire in %s (at %s).\n\n", ttl, when);
        if (strcmp(type, "auth") == 0) {
            printf("Run this on the new auth server, with its own raft id and addresses in its\n"
                   "config file, to join the cluster:\n\n");
            printf("> raftport start -c /path/to/raftport.yaml --token=%s --ca-pin=%s "
                   "--auth-server=%s\n",
                   token, pin, server);
        } else {
            printf("Give it to the new %s with the CA pin and an auth server address:\n\n", type);
            printf("  token:       %s\n  ca_pin:      %s\n  auth_server: %s\n", token, pin, server);
        }
    }
    msgpack_unpacked_destroy(&resp);
    return 0;
}

static int list_kind(struct tctl *t, const char *kind, msgpack_unpacked *resp)
{
    struct rp_buf req;
    rp_buf_init(&req);
    auth_req_list(&req, kind, NULL, 0, t->stale, t->with_secrets);
    return call(t, &req, resp, "list");
}

static int cmd_tokens_ls(struct tctl *t)
{
    msgpack_unpacked resp;
    if (list_kind(t, "token", &resp) != 0)
        return 1;
    const msgpack_object *items = rp_mp_get(&resp.data, "items");
    uint32_t n = items && items->type == MSGPACK_OBJECT_ARRAY ? items->via.array.size : 0;
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
    if (t->format == FMT_JSON)
        rp_buf_append_str(&out, n ? "\n]\n" : "]\n");
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
    msgpack_unpacked_destroy(&resp);
    return 0;
}

static int delete_resource(struct tctl *t, const char *kind, const char *name)
{
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    char rid[33];
    auth_new_rid(rid);
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "m", "delete");
    rp_mp_kv_str(&pk, "kind", kind);
    rp_mp_kv_str(&pk, "name", name);
    rp_mp_kv_str(&pk, "rid", rid);
    if (call(t, &req, &resp, "rm") != 0)
        return 1;
    msgpack_unpacked_destroy(&resp);
    return 0;
}

static int cmd_members_rm(struct tctl *t, const char *id_s)
{
    char *end;
    unsigned long long id = strtoull(id_s, &end, 10);
    if (*id_s == '\0' || *end != '\0' || id == 0) {
        fprintf(stderr, "tctl auth members rm: '%s' is not a member id (a positive integer)\n",
                id_s);
        return 2;
    }
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_str(&pk, "m", "member_rm");
    rp_mp_kv_u64(&pk, "id", id);
    if (call(t, &req, &resp, "auth members rm") != 0)
        return 1;
    msgpack_unpacked_destroy(&resp);
    printf("Auth server %llu has been removed from the cluster.\n", id);
    return 0;
}

/* Prints resources (one object, or an array of them) as --format asks: YAML
 * documents (the default, what tctl create reads back), JSON, or a table. */
static void print_resources(struct tctl *t, const msgpack_object *o, bool *first_doc)
{
    if (o == NULL)
        return;
    if (t->format == FMT_JSON) {
        print_json(o);
        return;
    }
    uint32_t n = o->type == MSGPACK_OBJECT_ARRAY ? o->via.array.size : 1;
    struct rp_buf out;
    rp_buf_init(&out);
    for (uint32_t i = 0; i < n; i++) {
        const msgpack_object *res = o->type == MSGPACK_OBJECT_ARRAY ? &o->via.array.ptr[i] : o;
        if (t->format == FMT_TEXT) {
            char kind[64], name[256];
            if (*first_doc)
                rp_buf_printf(&out, "%-16s %s\n", "Kind", "Name");
            rp_buf_printf(&out, "%-16s %s\n", field(res, "kind", kind, sizeof kind),
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

static int cmd_get(struct tctl *t, const char *what)
{
    char kind[64], name[256] = "";
    const char *slash = strchr(what, '/');
    size_t kl = slash ? (size_t)(slash - what) : strlen(what);
    if (kl == 0 || kl >= sizeof kind || (slash && strlen(slash + 1) >= sizeof name)) {
        fprintf(stderr, "tctl get: expected KIND, KIND/NAME or all, got '%s'\n", what);
        return 2;
    }
    memcpy(kind, what, kl);
    kind[kl] = '\0';
    if (slash)
        snprintf(name, sizeof name, "%s", slash + 1);
    msgpack_unpacked resp;
    bool first = true;
    if (strcmp(kind, "all") == 0 && !slash) {
        if (t->format == FMT_JSON)
            printf("[\n");
        for (size_t k = 0; all_kinds[k]; k++) {
            if (list_kind(t, all_kinds[k], &resp) != 0)
                return 1;
            const msgpack_object *items = rp_mp_get(&resp.data, "items");
            if (t->format == FMT_JSON) {
                for (uint32_t i = 0; items && i < items->via.array.size; i++) {
                    struct rp_buf j;
                    rp_buf_init(&j);
                    rp_json_from_mp(&j, &items->via.array.ptr[i], 2);
                    printf("%s%.*s", first ? "" : ",\n", (int)j.len, (char *)j.data);
                    first = false;
                    rp_buf_free(&j);
                }
            } else {
                print_resources(t, items, &first);
            }
            msgpack_unpacked_destroy(&resp);
        }
        if (t->format == FMT_JSON)
            printf("\n]\n");
        return 0;
    }
    if (name[0]) {
        struct rp_buf req;
        rp_buf_init(&req);
        auth_req_get(&req, kind, name, t->stale, t->with_secrets);
        if (call(t, &req, &resp, "get") != 0)
            return 1;
        print_resources(t, rp_mp_get(&resp.data, "res"), &first);
    } else {
        if (list_kind(t, kind, &resp) != 0)
            return 1;
        print_resources(t, rp_mp_get(&resp.data, "items"), &first);
    }
    msgpack_unpacked_destroy(&resp);
    return 0;
}

/* tctl create [-f] FILE: every document is checked (kind, and roles by the RBAC
 * module, with FILE:LINE in the message) before the first is sent. */
static int cmd_create(struct tctl *t, const char *path)
{
    char *text = NULL;
    size_t len = 0;
    if (rp_read_file(path, RP_YAML_MAX_BYTES, &text, &len) != 0) {
        fprintf(stderr, "tctl create: %s\n", rp_errmsg());
        return 1;
    }
    struct rp_ynode **docs = NULL;
    size_t n_docs = 0;
    int rv = rp_yaml_parse_all(path, text, len, &docs, &n_docs);
    free(text);
    if (rv != 0) {
        fprintf(stderr, "tctl create: %s\n", rp_errmsg());
        return 1;
    }
    struct rp_buf *res = calloc(n_docs ? n_docs : 1, sizeof *res);
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
            const msgpack_object *kind = rp_mp_get(&u.data, "kind");
            bool known = false;
            for (size_t k = 0; all_kinds[k]; k++)
                known = known || rp_mp_str_eq(kind, all_kinds[k]);
            if (!known) {
                char kb[64] = "";
                field(&u.data, "kind", kb, sizeof kb);
                rp_ymp_err(&lines, RP_EINVAL, "kind",
                           kb[0] ? "unknown kind '%s', expected role, user or token"
                                 : "missing%s, expected role, user or token",
                           kb);
                fprintf(stderr, "tctl create: %s\n", rp_errmsg());
                status = 1;
            } else if (rp_mp_get(rp_mp_get(&u.data, "metadata"), "name") == NULL) {
                rp_ymp_err(&lines, RP_EINVAL, "metadata.name", "missing, expected the name");
                fprintf(stderr, "tctl create: %s\n", rp_errmsg());
                status = 1;
            } else if (rp_mp_str_eq(kind, "role")) {
                struct rbac_role *role = NULL;
                if (rbac_role_parse(&u.data, &role) != 0) {
                    rp_ymp_locate(&lines, RP_EINVAL);
                    fprintf(stderr, "tctl create: %s\n", rp_errmsg());
                    status = 1;
                }
                rbac_role_free(role);
            }
            msgpack_unpacked_destroy(&u);
            n_res++;
        }
        rp_ymp_lines_free(&lines);
    }
    rp_yaml_docs_free(docs, n_docs);
    for (size_t i = 0; i < n_res && status == 0; i++) {
        struct rp_buf req;
        msgpack_packer pk;
        msgpack_unpacked resp, u;
        char rid[33], kind[64], name[256];
        rp_mp_parse(res[i].data, res[i].len, &u);
        field(&u.data, "kind", kind, sizeof kind);
        field(rp_mp_get(&u.data, "metadata"), "name", name, sizeof name);
        msgpack_unpacked_destroy(&u);
        auth_new_rid(rid);
        rp_buf_init(&req);
        rp_mp_packer_init(&pk, &req);
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_str(&pk, "m", t->force ? "put" : "create");
        rp_mp_kv_raw(&pk, "res", res[i].data, res[i].len);
        rp_mp_kv_str(&pk, "rid", rid);
        rv = auth_client_call(t->client, req.data, req.len, &resp);
        rp_buf_free(&req);
        if (rv == RP_EEXISTS)
            fprintf(stderr, "tctl create: %s %s already exists: use -f to overwrite it\n", kind,
                    name);
        else if (rv != 0)
            fprintf(stderr, "tctl create: %s %s: %s (%s)\n", kind, name, rp_errmsg(),
                    rp_strerror(rv));
        else
            printf("%s \"%s\" has been %s\n", kind, name,
                   t->force ? "created or updated" : "created");
        msgpack_unpacked_destroy(&resp);
        if (rv != 0)
            status = 1;
    }
    for (size_t i = 0; i < n_res; i++)
        rp_buf_free(&res[i]);
    free(res);
    return status;
}

static int cmd_users(struct tctl *t, int nargs, char **args);

static int cmd_rm(struct tctl *t, const char *what)
{
    const char *slash = strchr(what, '/');
    if (slash == NULL || slash == what || slash[1] == '\0' || (size_t)(slash - what) >= 64) {
        fprintf(stderr, "tctl rm: expected KIND/NAME (e.g. role/dev), got '%s'\n", what);
        return 2;
    }
    char kind[64];
    snprintf(kind, sizeof kind, "%.*s", (int)(slash - what), what);
    if (strcmp(kind, "user") == 0) {
        char *args[] = {"users", "rm", (char *)slash + 1};
        return cmd_users(t, 3, args);
    }
    int rv = delete_resource(t, kind, slash + 1);
    if (rv == 0)
        printf("%s \"%s\" has been deleted\n", kind, slash + 1);
    return rv;
}

/* Packs "a,b,c" as an array of strings under @key; empty items are refused. */
static int pack_list(msgpack_packer *pk, const char *key, const char *list, const char *flag)
{
    char buf[4096];
    snprintf(buf, sizeof buf, "%s", list);
    const char *items[64];
    size_t n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        if (n == 64) {
            fprintf(stderr, "tctl: %s: at most 64 items\n", flag);
            return 2;
        }
        items[n++] = tok;
    }
    if (n == 0 || strstr(list, ",,") || list[0] == ',' || list[strlen(list) - 1] == ',') {
        fprintf(stderr, "tctl: %s=%s: expected a comma-separated list without empty items\n", flag,
                list);
        return 2;
    }
    rp_mp_pack_str(pk, key);
    msgpack_pack_array(pk, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        rp_mp_pack_str(pk, items[i]);
    return 0;
}

static void print_invite(struct tctl *t, const char *verb, const msgpack_object *resp,
                         const char *user)
{
    char token[64];
    uint64_t expires = ufield(resp, "expires");
    uint64_t ttl_min = (expires > rp_now_ms() ? expires - rp_now_ms() + 30000 : 0) / 60000;
    field(resp, "token", token, sizeof token);
    if (t->format == FMT_JSON) {
        char when[40];
        rp_format_time(expires, when, sizeof when);
        printf("{\"user\": \"%s\", \"token\": \"%s\", \"expires\": \"%s\"}\n", user, token, when);
        return;
    }
    printf("User \"%s\" has been %s but requires a password. Share this invite token with the "
           "user to complete the setup; it can be used once, within %lluh%02llum:\n\n  %s\n",
           user, verb, (unsigned long long)(ttl_min / 60), (unsigned long long)(ttl_min % 60),
           token);
}

static int cmd_users(struct tctl *t, int nargs, char **args)
{
    const char *sub = args[1], *name = nargs >= 3 ? args[2] : NULL;
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    uint64_t ttl = t->ttl_set ? t->ttl_ms : 3600 * 1000;
    int rv = 0;
    if (strcmp(sub, "add") == 0) {
        msgpack_pack_map(&pk, 4 + (t->logins != NULL));
        rp_mp_kv_str(&pk, "m", "user_add");
        rp_mp_kv_str(&pk, "name", name);
        rp_mp_kv_u64(&pk, "ttl_ms", ttl);
        rv = pack_list(&pk, "roles", t->roles, "--roles");
        if (rv == 0 && t->logins)
            rv = pack_list(&pk, "logins", t->logins, "--logins");
    } else if (strcmp(sub, "reset") == 0) {
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_str(&pk, "m", "user_reset");
        rp_mp_kv_str(&pk, "name", name);
        rp_mp_kv_u64(&pk, "ttl_ms", ttl);
    } else if (strcmp(sub, "update") == 0) {
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_str(&pk, "m", "user_update");
        rp_mp_kv_str(&pk, "name", name);
        rv = pack_list(&pk, "roles", t->set_roles, "--set-roles");
    } else { /* rm */
        msgpack_pack_map(&pk, 2);
        rp_mp_kv_str(&pk, "m", "user_rm");
        rp_mp_kv_str(&pk, "name", name);
    }
    if (rv != 0) {
        rp_buf_free(&req);
        return rv;
    }
    char what[32];
    snprintf(what, sizeof what, "users %s", sub);
    if (call(t, &req, &resp, what) != 0)
        return 1;
    if (strcmp(sub, "add") == 0)
        print_invite(t, "created", &resp.data, name);
    else if (strcmp(sub, "reset") == 0)
        print_invite(t, "reset", &resp.data, name);
    else if (strcmp(sub, "update") == 0)
        printf("User %s has been updated: roles %s.\n", name, t->set_roles);
    else
        printf("User \"%s\" has been deleted.\n", name);
    msgpack_unpacked_destroy(&resp);
    return 0;
}

static int cmd_users_ls(struct tctl *t)
{
    msgpack_unpacked resp;
    if (list_kind(t, "user", &resp) != 0)
        return 1;
    const msgpack_object *items = rp_mp_get(&resp.data, "items");
    uint32_t n = items && items->type == MSGPACK_OBJECT_ARRAY ? items->via.array.size : 0;
    if (t->format == FMT_JSON) {
        print_json(items);
        msgpack_unpacked_destroy(&resp);
        return 0;
    }
    struct rp_buf out;
    rp_buf_init(&out);
    rp_buf_printf(&out, "%-24s %s\n", "User", "Roles");
    for (uint32_t i = 0; i < n; i++) {
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
    msgpack_unpacked_destroy(&resp);
    return 0;
}

/* The CA resource cert_authority/@type (public parts). */
static int get_ca(struct tctl *t, const char *type, msgpack_unpacked *resp)
{
    struct rp_buf req;
    rp_buf_init(&req);
    auth_req_get(&req, AUTH_KIND_CA, type, false, false);
    return call(t, &req, resp, "auth export");
}

static int cmd_auth_export(struct tctl *t)
{
    msgpack_unpacked resp;
    const char *type = t->type;
    if (get_ca(t, type, &resp) != 0)
        return 1;
    const msgpack_object *spec = rp_mp_get(rp_mp_get(&resp.data, "res"), "spec");
    const msgpack_object *keys =
        rp_mp_get(rp_mp_get(spec, "active_keys"), strcmp(type, "tls") == 0 ? "tls" : "ssh");
    char cluster[256];
    field(spec, "cluster_name", cluster, sizeof cluster);
    int rv = 0;
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
    msgpack_unpacked_destroy(&resp);
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

/* tctl auth sign --user=NAME | --host=NAME: a fresh key (Ed25519; ECDSA P-256 when an
 * X.509 certificate is wanted too, the key type of the cluster's TLS) and its
 * certificates. */
static int cmd_auth_sign(struct tctl *t)
{
    const char *fmt = t->sign_format ? t->sign_format : "openssh";
    bool user = t->user != NULL,
         want_tls = strcmp(fmt, "tls") == 0 || (user && strcmp(fmt, "file") == 0);
    const char *who = user ? t->user : t->sign_host;
    EVP_PKEY *key = NULL;
    char *priv = NULL, *pub = NULL, *tls_pub = NULL, *tls_key = NULL;
    int rv = 1;
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
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    if (user) {
        msgpack_pack_map(&pk, 3 + t->ttl_set + (tls_pub != NULL));
        rp_mp_kv_str(&pk, "m", "sign_user");
        rp_mp_kv_str(&pk, "user", t->user);
        if (t->ttl_set)
            rp_mp_kv_u64(&pk, "ttl_ms", t->ttl_ms);
    } else {
        msgpack_pack_map(&pk, 6 + (tls_pub != NULL));
        rp_mp_kv_str(&pk, "m", "sign_host");
        rp_mp_kv_str(&pk, "host_id", t->sign_host);
        rp_mp_kv_str(&pk, "nodename", t->sign_host);
        rp_mp_kv_str(&pk, "role", "Node");
        rp_mp_kv_u64(&pk, "ttl_ms", t->ttl_set ? t->ttl_ms : 8760ull * 3600 * 1000);
    }
    rp_mp_kv_str(&pk, "ssh_pubkey", pub);
    if (tls_pub)
        rp_mp_kv_str(&pk, "tls_pubkey", tls_pub);
    if (call(t, &req, &resp, "auth sign") != 0)
        goto out;
    char path[4096];
    struct rp_buf cert;
    rp_buf_init(&cert);
    const char *s;
    size_t n;
    rp_mp_get_str(&resp.data, "ssh_cert", &s, &n);
    rp_buf_printf(&cert, "%.*s\n", (int)n, s);
    rp_buf_append(&cert, "", 1);
    printf("The %s certificates of %s were written to:\n", user ? "user" : "host", who);
    if (strcmp(fmt, "openssh") == 0) {
        snprintf(path, sizeof path, "%s-cert.pub", t->out_path);
        rv = write_out(t->out_path, priv, 0600) || write_out(path, (char *)cert.data, 0644);
    } else if (strcmp(fmt, "file") == 0) {
        /* One identity file: private key, SSH certificate, then for users the X.509
         * certificate and the CA that signed it. */
        struct rp_buf all;
        rp_buf_init(&all);
        rp_buf_printf(&all, "%s%s", priv, (char *)cert.data);
        const char *tc, *ca;
        size_t tn, cn;
        if (rp_mp_get_str(&resp.data, "tls_cert", &tc, &tn) == 0 &&
            rp_mp_get_str(&resp.data, "tls_ca", &ca, &cn) == 0)
            rp_buf_printf(&all, "%.*s%.*s", (int)tn, tc, (int)cn, ca);
        rp_buf_append(&all, "", 1);
        rv = write_out(t->out_path, (char *)all.data, 0600);
        OPENSSL_cleanse(all.data, all.cap);
        rp_buf_free(&all);
    } else { /* tls: PATH.key, PATH.crt, PATH.cas */
        char a[4096], b[4096];
        const char *tc, *ca;
        size_t tn, cn;
        rp_mp_get_str(&resp.data, "tls_cert", &tc, &tn);
        rp_mp_get_str(&resp.data, "tls_ca", &ca, &cn);
        char *tcs = strndup(tc, tn), *cas = strndup(ca, cn);
        snprintf(path, sizeof path, "%s.key", t->out_path);
        snprintf(a, sizeof a, "%s.crt", t->out_path);
        snprintf(b, sizeof b, "%s.cas", t->out_path);
        rv = write_out(path, tls_key, 0600) || write_out(a, tcs, 0644) || write_out(b, cas, 0644);
        free(tcs);
        free(cas);
    }
    rp_buf_free(&cert);
    msgpack_unpacked_destroy(&resp);
out:
    if (priv) {
        OPENSSL_cleanse(priv, strlen(priv));
        free(priv);
    }
    if (tls_key) {
        OPENSSL_cleanse(tls_key, strlen(tls_key));
        free(tls_key);
    }
    free(pub);
    free(tls_pub);
    EVP_PKEY_free(key);
    return rv;
}

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

static int cmd_events_ls(struct tctl *t)
{
    uint64_t from = 0, to = 0;
    if ((t->since && parse_when("--since", t->since, &from) != 0) ||
        (t->until && parse_when("--until", t->until, &to) != 0))
        return 2;
    struct rp_buf req;
    msgpack_packer pk;
    msgpack_unpacked resp;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 2 + (from != 0) + (to != 0) + (t->type != NULL) + (t->user != NULL) +
                              t->stale);
    rp_mp_kv_str(&pk, "m", "events");
    if (t->stale)
        rp_mp_kv_bool(&pk, "stale", true);
    rp_mp_kv_u64(&pk, "limit", t->limit ? t->limit : 1000);
    if (from)
        rp_mp_kv_u64(&pk, "from", from);
    if (to)
        rp_mp_kv_u64(&pk, "to", to);
    if (t->type)
        rp_mp_kv_str(&pk, "type", t->type);
    if (t->user)
        rp_mp_kv_str(&pk, "user", t->user);
    if (call(t, &req, &resp, "events ls") != 0)
        return 1;
    const msgpack_object *items = rp_mp_get(&resp.data, "items");
    uint32_t n = items && items->type == MSGPACK_OBJECT_ARRAY ? items->via.array.size : 0;
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
        for (uint32_t k = 0; k < ev->via.map.size; k++) {
            const msgpack_object_kv *kv = &ev->via.map.ptr[k];
            static const char *skip[] = {"event", "code", "user", "time", "uid", "server_id"};
            bool skipped = kv->key.type != MSGPACK_OBJECT_STR;
            for (size_t j = 0; !skipped && j < sizeof skip / sizeof skip[0]; j++)
                skipped = rp_mp_str_eq(&kv->key, skip[j]);
            if (skipped)
                continue;
            rp_buf_printf(&out, " %.*s=", (int)kv->key.via.str.size, kv->key.via.str.ptr);
            rp_json_from_mp(&out, &kv->val, 0);
        }
        rp_buf_append_str(&out, "\n");
    }
    if (t->format == FMT_JSON)
        rp_buf_append_str(&out, n ? "\n]\n" : "]\n");
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
    msgpack_unpacked_destroy(&resp);
    return 0;
}

int main(int argc, char **argv)
{
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
        O_SIGN_USER,
        O_SIGN_HOST
    };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"auth-server", required_argument, NULL, O_AUTH},
        {"format", required_argument, NULL, O_FORMAT},
        {"ttl", required_argument, NULL, O_TTL},
        {"type", required_argument, NULL, O_TYPE},
        {"stale", no_argument, NULL, O_STALE},
        {"since", required_argument, NULL, O_SINCE},
        {"until", required_argument, NULL, O_UNTIL},
        {"user", required_argument, NULL, O_USER},
        {"limit", required_argument, NULL, O_LIMIT},
        {"roles", required_argument, NULL, O_ROLES},
        {"logins", required_argument, NULL, O_LOGINS},
        {"set-roles", required_argument, NULL, O_SET_ROLES},
        {"with-secrets", no_argument, NULL, O_WITH_SECRETS},
        {"user", required_argument, NULL, O_USER},
        {"host", required_argument, NULL, O_SIGN_HOST},
        {"out", required_argument, NULL, 'o'},
        {"debug", no_argument, NULL, 'd'},
        {"force", no_argument, NULL, 'f'},
        {"identity", required_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct tctl t = {.format = FMT_DEFAULT, .ttl_ms = 30 * 60 * 1000};
    int c;
    rp_log_set_level(RP_LOG_WARN);
    while ((c = getopt_long(argc, argv, "c:fi:o:dh", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            t.config_path = optarg;
            break;
        case O_AUTH:
            if (rp_check_hostport(optarg) != 0) {
                fprintf(stderr, "tctl: --auth-server: %s\n", rp_errmsg());
                return 2;
            }
            t.auth_server = optarg;
            break;
        case O_FORMAT:
            t.sign_format = optarg; /* auth sign takes openssh, file or tls */
            if (strcmp(optarg, "openssh") == 0 || strcmp(optarg, "file") == 0 ||
                strcmp(optarg, "tls") == 0)
                break;
            if (strcmp(optarg, "json") == 0)
                t.format = FMT_JSON;
            else if (strcmp(optarg, "text") == 0)
                t.format = FMT_TEXT;
            else if (strcmp(optarg, "yaml") == 0)
                t.format = FMT_YAML;
            else {
                fprintf(stderr, "tctl: --format=%s: expected text, json or yaml\n", optarg);
                return 2;
            }
            break;
        case 'f':
            t.force = true;
            break;
        case 'i':
            t.identity = optarg;
            break;
        case O_TTL:
            if (rp_parse_duration_ms(optarg, &t.ttl_ms) != 0) {
                fprintf(stderr, "tctl: --ttl: %s\n", rp_errmsg());
                return 2;
            }
            t.ttl_set = true;
            break;
        case O_TYPE:
            t.type = optarg;
            break;
        case O_STALE:
            t.stale = true;
            break;
        case O_SINCE:
            t.since = optarg;
            break;
        case O_ROLES:
            t.roles = optarg;
            break;
        case O_LOGINS:
            t.logins = optarg;
            break;
        case O_SET_ROLES:
            t.set_roles = optarg;
            break;
        case O_WITH_SECRETS:
            t.with_secrets = true;
            break;
        case O_SIGN_HOST:
            t.sign_host = optarg;
            break;
        case 'o':
            t.out_path = optarg;
            break;
        case O_UNTIL:
            t.until = optarg;
            break;
        case O_USER:
            t.user = optarg;
            break;
        case O_LIMIT: {
            char *end;
            t.limit = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || t.limit == 0 || t.limit > 10000) {
                fprintf(stderr, "tctl: --limit=%s: expected a number of events from 1 to 10000\n",
                        optarg);
                return 2;
            }
            break;
        }
        case 'd':
            rp_log_set_level(RP_LOG_DEBUG);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    int nargs = argc - optind;
    char **args = argv + optind;
    if (nargs == 0) {
        usage(stderr);
        return 2;
    }
    if (strcmp(args[0], "version") == 0) {
        printf("tctl 0.1.0\n");
        return 0;
    }
    int rv;
    bool known = (strcmp(args[0], "status") == 0 && nargs == 1) ||
                 (strcmp(args[0], "tokens") == 0 && nargs >= 2) ||
                 (strcmp(args[0], "auth") == 0 && nargs >= 3 && strcmp(args[1], "members") == 0) ||
                 (strcmp(args[0], "get") == 0 && nargs == 2) ||
                 (strcmp(args[0], "create") == 0 && nargs == 2) ||
                 (strcmp(args[0], "rm") == 0 && nargs == 2) ||
                 (strcmp(args[0], "events") == 0 && nargs == 2 && strcmp(args[1], "ls") == 0) ||
                 (strcmp(args[0], "users") == 0 && nargs == 2 && strcmp(args[1], "ls") == 0) ||
                 (strcmp(args[0], "auth") == 0 && nargs == 2 &&
                  (strcmp(args[1], "export") == 0 || strcmp(args[1], "sign") == 0)) ||
                 (strcmp(args[0], "users") == 0 && nargs == 3 &&
                  (strcmp(args[1], "add") == 0 || strcmp(args[1], "rm") == 0 ||
                   strcmp(args[1], "reset") == 0 || strcmp(args[1], "update") == 0));
    if (!known) {
        fprintf(stderr, "tctl: unknown command or wrong arguments: '%s'\n", args[0]);
        usage(stderr);
        return 2;
    }
    if (strcmp(args[0], "tokens") == 0 && strcmp(args[1], "add") == 0) {
        /* Checked here too, so a typo is named even when no auth server answers. */
        if (t.type == NULL || (strcmp(t.type, "auth") != 0 && strcmp(t.type, "node") != 0 &&
                               strcmp(t.type, "proxy") != 0)) {
            fprintf(stderr, "tctl tokens add: --type=%s: expected auth, node or proxy\n",
                    t.type ? t.type : "");
            return 2;
        }
        if (t.ttl_ms > 48ull * 3600 * 1000) {
            fprintf(stderr, "tctl tokens add: --ttl: at most 48h\n");
            return 2;
        }
    }
    if (strcmp(args[0], "auth") == 0 && nargs == 4 && strcmp(args[2], "rm") == 0) {
        char *end;
        unsigned long long id = strtoull(args[3], &end, 10);
        if (args[3][0] == '\0' || *end != '\0' || id == 0) {
            fprintf(stderr, "tctl auth members rm: '%s' is not a member id (a positive integer)\n",
                    args[3]);
            return 2;
        }
    }
    if (strcmp(args[0], "auth") == 0 && nargs == 2 && strcmp(args[1], "export") == 0 &&
        (t.type == NULL ||
         (strcmp(t.type, "user") && strcmp(t.type, "host") && strcmp(t.type, "tls")))) {
        fprintf(stderr, "tctl auth export: --type=%s: expected user, host or tls\n",
                t.type ? t.type : "");
        return 2;
    }
    if (strcmp(args[0], "auth") == 0 && nargs == 2 && strcmp(args[1], "sign") == 0) {
        if ((t.sign_host == NULL) == (t.user == NULL)) {
            fprintf(stderr, "tctl auth sign: give exactly one of --host=NAME or --user=NAME\n");
            return 2;
        }
        if (t.out_path == NULL) {
            fprintf(stderr,
                    "tctl auth sign: -o PATH is required (where the key and certificates go)\n");
            return 2;
        }
    }
    if (strcmp(args[0], "users") == 0 && nargs == 3) {
        if (strcmp(args[1], "add") == 0 && t.roles == NULL) {
            fprintf(stderr, "tctl users add: --roles is required (e.g. --roles=access)\n");
            return 2;
        }
        if (strcmp(args[1], "update") == 0 && t.set_roles == NULL) {
            fprintf(stderr, "tctl users update: --set-roles=R1,R2 is required\n");
            return 2;
        }
        if ((strcmp(args[1], "add") == 0 || strcmp(args[1], "reset") == 0) && t.ttl_set &&
            (t.ttl_ms < 60000 || t.ttl_ms > 48ull * 3600 * 1000)) {
            fprintf(stderr, "tctl users %s: --ttl: between 1m and 48h\n", args[1]);
            return 2;
        }
    }
    if (strcmp(args[0], "events") == 0) {
        uint64_t ms; /* flags checked before dialing, like the others */
        if ((t.since && parse_when("--since", t.since, &ms) != 0) ||
            (t.until && parse_when("--until", t.until, &ms) != 0))
            return 2;
    }
    /* Only now: every return above is a usage error, and must not leak the config. */
    rp_config_init(&t.cfg);
    if (connect_client(&t) != 0) {
        rp_config_free(&t.cfg);
        return 1;
    }
    if (strcmp(args[0], "status") == 0) {
        rv = cmd_status(&t);
    } else if (strcmp(args[0], "get") == 0) {
        rv = cmd_get(&t, args[1]);
    } else if (strcmp(args[0], "create") == 0) {
        rv = cmd_create(&t, args[1]);
    } else if (strcmp(args[0], "rm") == 0) {
        rv = cmd_rm(&t, args[1]);
    } else if (strcmp(args[0], "events") == 0) {
        rv = cmd_events_ls(&t);
    } else if (strcmp(args[0], "auth") == 0 && nargs == 2) {
        rv = strcmp(args[1], "export") == 0 ? cmd_auth_export(&t) : cmd_auth_sign(&t);
    } else if (strcmp(args[0], "users") == 0) {
        rv = nargs == 2 ? cmd_users_ls(&t) : cmd_users(&t, nargs, args);
    } else if (strcmp(args[0], "tokens") == 0) {
        if (strcmp(args[1], "add") == 0 && nargs == 2)
            rv = cmd_tokens_add(&t);
        else if (strcmp(args[1], "ls") == 0 && nargs == 2)
            rv = cmd_tokens_ls(&t);
        else if (strcmp(args[1], "rm") == 0 && nargs == 3) {
            rv = delete_resource(&t, "token", args[2]);
            if (rv == 0)
                printf("Token %s has been deleted.\n", args[2]);
        } else {
            fprintf(stderr, "tctl tokens: expected add --type=TYPE, ls, or rm TOKEN\n");
            rv = 2;
        }
    } else {
        if (strcmp(args[2], "rm") == 0 && nargs == 4)
            rv = cmd_members_rm(&t, args[3]);
        else if (strcmp(args[2], "ls") == 0 && nargs == 3)
            rv = cmd_status(&t);
        else {
            fprintf(stderr, "tctl auth members: expected ls, or rm ID\n");
            rv = 2;
        }
    }
    auth_client_free(t.client);
    rp_config_free(&t.cfg);
    return rv;
}
