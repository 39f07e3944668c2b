/* agent/join.c: the node's identity: joining with a token once, loading it on every
 * start, renewing it.
 *
 * A node that has keys/node.crt has joined: the token is not used again (a config
 * that still holds it is fine). Joining checks the CA pin before anything is sent
 * (auth_pinned_call), and checks the answer too: its CA must be the pinned one and
 * must have signed the Node certificate issued for our key and host id. node.crt is
 * written last, so a crash half-way leaves a node that simply joins again (with the
 * same host id, kept in host_uuid). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/x509.h>

#include "agent/agent.h"
#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "lib/version.h"

/* How long a join keeps retrying auth servers that do not answer (or have no
 * leader) before it gives up with "cannot reach". */
#define JOIN_DEADLINE_MS 10000
/* Names a proxy asks to be certified for (auth takes at most 8). */
#define PROXY_MAX_NAMES 6

void agent_key_path(const char *data_dir, const char *file, char *out, size_t outlen)
{
    snprintf(out, outlen, "%s/%s/%s", data_dir, AGENT_KEYS_DIR, file);
}

static int write_key_file(const char *data_dir, const char *file, const char *text)
{
    char path[1200];
    agent_key_path(data_dir, file, path, sizeof path);
    return rp_write_file(path, text, strlen(text), 0600);
}

/* A small text file under keys/ without its trailing newline, malloc'd. */
static int read_key_text(const char *data_dir, const char *file, char **out)
{
    char path[1200];
    size_t n;
    agent_key_path(data_dir, file, path, sizeof path);
    int rv = rp_read_file(path, 64 * 1024, out, &n);
    if (rv != 0)
        return rv;
    while (n > 0 && ((*out)[n - 1] == '\n' || (*out)[n - 1] == '\r' || (*out)[n - 1] == ' '))
        (*out)[--n] = '\0';
    return 0;
}

/* data_dir/host_uuid: read, or created as a fresh UUID v4. */
static int host_uuid(const char *data_dir, char out[40])
{
    char path[1200], *buf = NULL;
    size_t n;
    snprintf(path, sizeof path, "%s/host_uuid", data_dir);
    if (rp_file_exists(path)) {
        int rv = rp_read_file(path, 64, &buf, &n);
        if (rv != 0)
            return rv;
        while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
            buf[--n] = '\0';
        bool ok = n == 36;
        for (size_t i = 0; ok && i < n; i++)
            ok = (i == 8 || i == 13 || i == 18 || i == 23)
                     ? buf[i] == '-'
                     : buf[i] != 0 && strchr("0123456789abcdef", buf[i]) != NULL;
        if (!ok) {
            free(buf);
            return rp_err(RP_EINVAL, "%s does not hold a UUID (36 lower-case characters)", path);
        }
        memcpy(out, buf, 37);
        free(buf);
        return 0;
    }
    char id[37];
    int rv = rp_uuid_v4(id);
    if (rv != 0)
        return rv;
    char line[40];
    snprintf(line, sizeof line, "%s\n", id);
    if ((rv = rp_write_file(path, line, strlen(line), 0600)) != 0)
        return rv;
    memcpy(out, id, 37);
    return 0;
}

static uint64_t asn1_ms(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
        return 0;
    return (uint64_t)timegm(&tm) * 1000;
}

/* Checks the X.509 certificate @cert against @ca and our @host_id, key and role. */
static int check_node_cert(X509 *cert, X509 *ca, EVP_PKEY *key, const char *host_id,
                           enum rp_system_role role)
{
    struct rp_identity who;
    EVP_PKEY *ca_pub = X509_get0_pubkey(ca);
    if (ca_pub == NULL || X509_verify(cert, ca_pub) != 1)
        return rp_err(RP_ETLS, "the node certificate is not signed by the cluster CA");
    if (X509_check_private_key(cert, key) != 1)
        return rp_err(RP_ETLS, "the node certificate is not for this node's key");
    int rv = rp_identity_from_cert(cert, &who);
    if (rv != 0)
        return rv;
    if (who.system_role != role || who.host_id == NULL || strcmp(who.host_id, host_id) != 0)
        rv = rp_err(RP_ETLS, "the host certificate is not a %s identity of host %s",
                    rp_system_role_name(role), host_id);
    rp_identity_free(&who);
    return rv;
}

/* The validity of the SSH certificate line @line into @after/@before (ms). */
static int ssh_validity(const char *line, uint64_t *after, uint64_t *before)
{
    struct rp_ssh_cert cert;
    int rv = rp_ssh_cert_parse_line(line, &cert, NULL);
    if (rv != 0)
        return rv;
    *after = cert.valid_after * 1000;
    *before = cert.valid_before > UINT64_MAX / 1000 ? UINT64_MAX : cert.valid_before * 1000;
    rp_ssh_cert_free(&cert);
    return 0;
}

/* Loads keys/ into @id (a fresh TLS context, lines, validity), bumping its generation. */
static int load_ident(struct agent_ident *id)
{
    char path[1200];
    X509 *cert = NULL, *ca = NULL;
    EVP_PKEY *key = NULL;
    char *pub = NULL, *sshcert = NULL, *cluster = NULL;
    SSL_CTX *ctx = NULL;
    uint64_t after = 0, before = 0;
    int rv;
    agent_key_path(id->data_dir, "node.crt", path, sizeof path);
    if ((rv = rp_tls_read_cert(path, &cert)) != 0)
        goto out;
    agent_key_path(id->data_dir, "node.key", path, sizeof path);
    if ((rv = rp_tls_read_key(path, &key)) != 0)
        goto out;
    agent_key_path(id->data_dir, "ca.crt", path, sizeof path);
    if ((rv = rp_tls_read_cert(path, &ca)) != 0)
        goto out;
    if ((rv = check_node_cert(cert, ca, key, id->host_id, id->role)) != 0 ||
        (rv = read_key_text(id->data_dir, "ssh_host_key.pub", &pub)) != 0 ||
        (rv = read_key_text(id->data_dir, "ssh_host_key-cert.pub", &sshcert)) != 0 ||
        (rv = read_key_text(id->data_dir, "cluster_name", &cluster)) != 0 ||
        (rv = ssh_validity(sshcert, &after, &before)) != 0)
        goto out;
    if ((ctx = rp_tls_client_ctx(ca, cert, key)) == NULL) {
        rv = rp_err(RP_ETLS, "TLS context: %s", rp_errmsg());
        goto out;
    }
    if (id->via_proxy && (rv = auth_ctx_set_alpn(ctx, AUTH_ALPN_VIA_PROXY)) != 0)
        goto out;
    pthread_mutex_lock(&id->mu);
    SSL_CTX_free(id->ctx);
    free(id->ssh_pub);
    free(id->ssh_cert);
    id->ctx = ctx;
    id->ssh_pub = pub;
    id->ssh_cert = sshcert;
    snprintf(id->cluster_name, sizeof id->cluster_name, "%s", cluster);
    id->tls_not_before_ms = asn1_ms(X509_get0_notBefore(cert));
    id->tls_not_after_ms = asn1_ms(X509_get0_notAfter(cert));
    id->ssh_valid_after_ms = after;
    id->ssh_valid_before_ms = before;
    id->generation++;
    pthread_mutex_unlock(&id->mu);
    ctx = NULL;
    pub = sshcert = NULL;
out:
    if (rv != 0)
        rv = rp_err(rv, "loading the node identity from %s/%s: %s", id->data_dir, AGENT_KEYS_DIR,
                    rp_errmsg());
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(key);
    free(pub);
    free(sshcert);
    free(cluster);
    SSL_CTX_free(ctx);
    return rv;
}

/* Stores the certificates of a join or renew_host answer (@certs: ssh_cert, the Node
 * X.509 certificate PEM, the CA PEM, the user and host CA lines), after checking them
 * against @pin (NULL on renewal: the server that answered was already trusted through
 * our CA) and our keys. */
struct answer_certs {
    const char *ssh_cert, *tls_pem, *ca_pem, *user_ca, *host_ca;
};

static int store_certs(struct agent_ident *id, const struct answer_certs *ac, const char *pin,
                       EVP_PKEY *tls_priv, const char *ssh_pub, const char *cluster)
{
    X509 *cert = NULL, *ca = NULL;
    const char *strs[3] = {ac->ssh_cert, ac->user_ca, ac->host_ca};
    int rv = 0;
    for (int i = 0; i < 3 && rv == 0; i++)
        if (strs[i] == NULL || strs[i][0] == '\0' || strlen(strs[i]) > 65536)
            rv = rp_err(RP_EPROTO, "the answer lacks an SSH certificate or CA key");
    if (rv == 0 &&
        (ac->tls_pem == NULL || rp_tls_cert_from_pem(ac->tls_pem, strlen(ac->tls_pem), &cert) != 0))
        rv = rp_err(RP_EPROTO, "the answer has no valid X.509 certificate");
    if (rv == 0 &&
        (ac->ca_pem == NULL || rp_tls_cert_from_pem(ac->ca_pem, strlen(ac->ca_pem), &ca) != 0))
        rv = rp_err(RP_EPROTO, "the answer has no valid CA certificate");
    if (rv == 0) {
        char got[96];
        if ((rv = rp_tls_ca_pin(ca, got, sizeof got)) == 0 && pin != NULL && strcmp(got, pin))
            rv = rp_err(RP_ETLS, "the join answer carries CA %s, expected the pinned %s", got, pin);
    }
    if (rv == 0)
        rv = check_node_cert(cert, ca, tls_priv, id->host_id, id->role);
    if (rv == 0) {
        /* The SSH certificate must certify our host key. */
        struct rp_ssh_cert sc;
        if ((rv = rp_ssh_cert_parse_line(strs[0], &sc, NULL)) == 0) {
            struct rp_buf want, got;
            rp_buf_init(&want);
            rp_buf_init(&got);
            EVP_PKEY *pk = NULL;
            if (rp_ssh_pubkey_parse(ssh_pub, &pk, NULL) != 0 ||
                rp_ssh_pubkey_to_blob(pk, &want) != 0 || rp_ssh_pubkey_to_blob(sc.key, &got) != 0 ||
                want.len != got.len || memcmp(want.data, got.data, got.len) != 0 ||
                sc.type != RP_SSH_CERT_HOST)
                rv = rp_err(RP_EPROTO, "the SSH host certificate is not for this node's host key");
            EVP_PKEY_free(pk);
            rp_buf_free(&want);
            rp_buf_free(&got);
            rp_ssh_cert_free(&sc);
        }
    }
    char path[1200];
    if (rv == 0) {
        char *line = NULL;
        for (int i = 0; i < 3 && rv == 0; i++) {
            static const char *files[3] = {"ssh_host_key-cert.pub", "user_ca.pub", "host_ca.pub"};
            if (asprintf(&line, "%s\n", strs[i]) < 0)
                rv = rp_err(RP_ENOMEM, "answer");
            else
                rv = write_key_file(id->data_dir, files[i], line);
            free(line);
            line = NULL;
        }
    }
    if (rv == 0 && cluster != NULL) {
        char line[300];
        snprintf(line, sizeof line, "%s\n", cluster);
        rv = write_key_file(id->data_dir, "cluster_name", line);
    }
    if (rv == 0) {
        agent_key_path(id->data_dir, "ca.crt", path, sizeof path);
        rv = rp_tls_write_cert(path, ca);
    }
    if (rv == 0) {
        agent_key_path(id->data_dir, "node.crt", path, sizeof path);
        rv = rp_tls_write_cert(path, cert);
        if (rv == 0)
            chmod(path, 0600);
        agent_key_path(id->data_dir, "ca.crt", path, sizeof path);
        if (rv == 0)
            chmod(path, 0600);
    }
    X509_free(cert);
    X509_free(ca);
    return rv;
}

/* Generates (or reuses, after an interrupted join) the node's keys. */
static int node_keys(struct agent_ident *id, EVP_PKEY **tls, char **tls_pub, char **ssh_pub)
{
    char path[1200];
    EVP_PKEY *ssh = NULL;
    char *priv = NULL;
    int rv = 0;
    *tls = NULL;
    *tls_pub = *ssh_pub = NULL;
    agent_key_path(id->data_dir, "node.key", path, sizeof path);
    if (rp_file_exists(path)) {
        rv = rp_tls_read_key(path, tls);
    } else {
        if ((*tls = rp_tls_keygen()) == NULL)
            rv = rp_err(RP_ENOMEM, "key generation: %s", rp_errmsg());
        else
            rv = rp_tls_write_key(path, *tls);
    }
    if (rv == 0)
        rv = rp_tls_pubkey_to_pem(*tls, tls_pub);
    agent_key_path(id->data_dir, "ssh_host_key", path, sizeof path);
    if (rv == 0 && !rp_file_exists(path)) {
        if ((rv = rp_ssh_keygen(RP_SSH_KEY_ED25519, &ssh)) == 0 &&
            (rv = rp_ssh_privkey_format(ssh, id->host_id, &priv)) == 0 &&
            (rv = write_key_file(id->data_dir, "ssh_host_key", priv)) == 0) {
            char *line = NULL, *nl = NULL;
            if ((rv = rp_ssh_pubkey_format(ssh, NULL, &line)) == 0) {
                if (asprintf(&nl, "%s\n", line) < 0)
                    rv = rp_err(RP_ENOMEM, "key");
                else
                    rv = write_key_file(id->data_dir, "ssh_host_key.pub", nl);
            }
            free(line);
            free(nl);
        }
        if (priv) {
            OPENSSL_cleanse(priv, strlen(priv));
            free(priv);
        }
        EVP_PKEY_free(ssh);
    }
    if (rv == 0)
        rv = read_key_text(id->data_dir, "ssh_host_key.pub", ssh_pub);
    if (rv != 0) {
        EVP_PKEY_free(*tls);
        *tls = NULL;
        free(*tls_pub);
        *tls_pub = NULL;
    }
    return rv;
}

/* Appends the host of "host:port" @addr to @out (unless it is a wildcard, empty, or
 * already there). */
static void add_host_of(const char *addr, char out[][256], size_t *n, size_t max)
{
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    if (colon == NULL || *n >= max || (size_t)(colon - addr) >= 256)
        return;
    size_t len = (size_t)(colon - addr);
    if (len > 2 && addr[0] == '[') {
        addr++;
        len -= 2;
    }
    char host[256];
    memcpy(host, addr, len);
    host[len] = '\0';
    if (host[0] == '\0' || strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
        return;
    for (size_t i = 0; i < *n; i++)
        if (strcmp(out[i], host) == 0)
            return;
    snprintf(out[(*n)++], 256, "%s", host);
}

/* A proxy's names, for its SSH host certificate and (auth adds them as SANs) its X.509
 * certificate, which is the default web certificate: localhost, 127.0.0.1 and the hosts
 * of its public and listening addresses, into @out. Returns the count. */
static size_t proxy_principals(const struct rp_config *cfg, char out[PROXY_MAX_NAMES][256])
{
    size_t n = 0;
    snprintf(out[n++], 256, "localhost");
    snprintf(out[n++], 256, "127.0.0.1");
    add_host_of(cfg->proxy_public_addr, out, &n, PROXY_MAX_NAMES);
    add_host_of(cfg->web_listen_addr, out, &n, PROXY_MAX_NAMES);
    add_host_of(cfg->tunnel_listen_addr, out, &n, PROXY_MAX_NAMES);
    add_host_of(cfg->proxy_listen_addr, out, &n, PROXY_MAX_NAMES);
    return n;
}

/* Extra principals of the SSH host certificate: localhost and the host of the address
 * clients dial, into @out (2 entries of 256 bytes). Returns the count. */
static size_t principals(const struct rp_config *cfg, char out[2][256])
{
    const char *addr = cfg->ssh_public_addr ? cfg->ssh_public_addr : cfg->ssh_listen_addr;
    const char *colon = addr ? strrchr(addr, ':') : NULL;
    size_t n = 0;
    snprintf(out[n++], 256, "localhost");
    if (colon != NULL && (size_t)(colon - addr) < 256) {
        size_t len = (size_t)(colon - addr);
        if (len > 2 && addr[0] == '[') {
            addr++;
            len -= 2;
        }
        memcpy(out[n], addr, len);
        out[n][len] = '\0';
        if (out[n][0] && strcmp(out[n], "0.0.0.0") != 0 && strcmp(out[n], "::") != 0)
            n++;
    }
    return n;
}

/* The extra principals of @id's role into @out. */
static size_t role_principals(const struct agent_ident *id, const struct rp_config *cfg,
                              char out[PROXY_MAX_NAMES][256])
{
    if (id->role == RP_SYS_PROXY)
        return proxy_principals(cfg, out);
    return principals(cfg, out);
}

/* A NUL-terminated copy of the string @key of @map, or NULL. */
static char *answer_str(const msgpack_object *map, const char *key)
{
    const char *s;
    size_t n;
    if (rp_mp_get_str(map, key, &s, &n) != 0 || n > 65536 || memchr(s, 0, n) != NULL)
        return NULL;
    return strndup(s, n);
}

static int do_join(struct agent_ident *id, const struct rp_config *cfg)
{
    const char *addrs[RP_CONFIG_MAX_AUTH_SERVERS + 1];
    size_t n_addrs = rp_config_auth_addrs(cfg, addrs, RP_CONFIG_MAX_AUTH_SERVERS + 1);
    EVP_PKEY *tls = NULL;
    char *tls_pub = NULL, *ssh_pub = NULL;
    struct rp_buf req, frame;
    msgpack_unpacked resp;
    int rv;
    const char *type = id->role == RP_SYS_PROXY ? "proxy" : "node";
    if (cfg->join_token == NULL)
        return rp_err(RP_EINVAL,
                      "this %s has not joined a cluster yet: give a join token "
                      "(--token or teleport.join_params.token_name, from `tctl "
                      "tokens add --type=%s`)",
                      type, type);
    if (cfg->ca_pin == NULL || n_addrs == 0)
        return rp_err(RP_EINVAL, "joining needs the CA pin (--ca-pin) and an auth server "
                                 "(--auth-server) or a proxy (--proxy-server)");
    if ((rv = node_keys(id, &tls, &tls_pub, &ssh_pub)) != 0)
        return rv;
    rp_buf_init(&req);
    rp_buf_init(&frame);
    msgpack_packer pk;
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 8);
    rp_mp_kv_str(&pk, "m", "join");
    rp_mp_kv_str(&pk, "token", cfg->join_token);
    rp_mp_kv_str(&pk, "type", type);
    rp_mp_kv_str(&pk, "host_id", id->host_id);
    rp_mp_kv_str(&pk, "nodename", cfg->nodename);
    rp_mp_kv_str(&pk, "host_pubkey", tls_pub);
    rp_mp_kv_str(&pk, "ssh_pubkey", ssh_pub);
    char extra[PROXY_MAX_NAMES][256];
    size_t n_extra = role_principals(id, cfg, extra);
    rp_mp_pack_str(&pk, "principals");
    msgpack_pack_array(&pk, (uint32_t)n_extra);
    for (size_t k = 0; k < n_extra; k++)
        rp_mp_pack_str(&pk, extra[k]);

    /* Servers that cannot be reached, have no leader or are busy are tried in turn
     * until the deadline; anything else (a refused token, a wrong pin) is final. */
    uint64_t deadline = rp_mono_ms() + JOIN_DEADLINE_MS, backoff = 200;
    size_t i = 0;
    for (;;) {
        const char *addr = addrs[i % n_addrs];
        rv = auth_pinned_call_alpn(addr, cfg->proxy_server ? AUTH_ALPN_VIA_PROXY : NULL,
                                   cfg->ca_pin, req.data, req.len, 15000, &frame, &resp);
        if (rv == 0)
            break;
        msgpack_unpacked_destroy(&resp);
        bool transient = rv == RP_EUNAVAILABLE || rv == RP_ENOTLEADER || rv == RP_EBUSY ||
                         rv == RP_EUNKNOWN || rv == RP_ETIMEDOUT;
        if (!transient)
            goto out;
        if (rp_mono_ms() + backoff > deadline) {
            rv = rp_err(RP_EUNAVAILABLE, "no auth server answered within %d s (last: %s)",
                        JOIN_DEADLINE_MS / 1000, rp_errmsg());
            goto out;
        }
        rp_debug("agent", "join via %s: %s; trying again", addr, rp_errmsg());
        i++;
        if (i % n_addrs == 0) {
            uint64_t d = rp_jitter_ms(backoff);
            struct timespec ts = {(time_t)(d / 1000), (long)(d % 1000) * 1000000L};
            nanosleep(&ts, NULL);
            backoff = backoff * 2 > 2000 ? 2000 : backoff * 2;
        }
    }
    const char *cn;
    size_t cnn;
    char cluster[256];
    if (rp_mp_get_str(&resp.data, "cluster_name", &cn, &cnn) != 0 || cnn == 0 ||
        cnn >= sizeof cluster || memchr(cn, 0, cnn)) {
        rv = rp_err(RP_EPROTO, "the join answer has no cluster name");
    } else {
        memcpy(cluster, cn, cnn);
        cluster[cnn] = '\0';
        char *f[5] = {answer_str(&resp.data, "ssh_cert"), answer_str(&resp.data, "host_cert"),
                      answer_str(&resp.data, "ca_cert"), answer_str(&resp.data, "ssh_user_ca"),
                      answer_str(&resp.data, "ssh_host_ca")};
        struct answer_certs ac = {f[0], f[1], f[2], f[3], f[4]};
        rv = store_certs(id, &ac, cfg->ca_pin, tls, ssh_pub, cluster);
        for (int k = 0; k < 5; k++)
            free(f[k]);
    }
    msgpack_unpacked_destroy(&resp);
    if (rv == 0)
        rp_info("agent", "joined cluster %s as %s %s (%s)", cluster, type, cfg->nodename,
                id->host_id);
out:
    OPENSSL_cleanse(req.data, req.cap);
    rp_buf_free(&req);
    rp_buf_free(&frame);
    EVP_PKEY_free(tls);
    free(tls_pub);
    free(ssh_pub);
    return rv;
}

int agent_ident_init(struct agent_ident *id, const struct rp_config *cfg)
{
    return agent_ident_init_as(id, cfg, RP_SYS_NODE);
}

int agent_ident_init_as(struct agent_ident *id, const struct rp_config *cfg,
                        enum rp_system_role role)
{
    char path[1200];
    int rv;
    memset(id, 0, sizeof *id);
    pthread_mutex_init(&id->mu, NULL);
    id->role = role;
    if (strlen(cfg->data_dir) >= sizeof id->data_dir)
        return rp_err(RP_EINVAL, "teleport.data_dir is too long");
    snprintf(id->data_dir, sizeof id->data_dir, "%s", cfg->data_dir);
    id->via_proxy = cfg->proxy_server != NULL;
    snprintf(path, sizeof path, "%s/%s", cfg->data_dir, AGENT_KEYS_DIR);
    if ((rv = rp_mkdir_p(path, 0700)) != 0 || (rv = chmod(cfg->data_dir, 0700)) != 0) {
        rv = rp_err(RP_EIO, "cannot create %s (mode 0700): %s", path,
                    rv == -1 ? strerror(errno) : rp_errmsg());
        return rv;
    }
    if ((rv = host_uuid(cfg->data_dir, id->host_id)) != 0)
        return rv;
    agent_key_path(cfg->data_dir, "node.crt", path, sizeof path);
    if (!rp_file_exists(path)) {
        if ((rv = do_join(id, cfg)) != 0)
            return rv;
    } else if (cfg->join_token != NULL) {
        rp_info("agent", "already joined (%s exists): the join token is not used again", path);
    }
    return load_ident(id);
}

void agent_ident_free(struct agent_ident *id)
{
    SSL_CTX_free(id->ctx);
    free(id->ssh_pub);
    free(id->ssh_cert);
    pthread_mutex_destroy(&id->mu);
    memset(id, 0, sizeof *id);
}

SSL_CTX *agent_ident_ctx(struct agent_ident *id, uint64_t *generation)
{
    pthread_mutex_lock(&id->mu);
    SSL_CTX *ctx = id->ctx;
    if (ctx != NULL)
        SSL_CTX_up_ref(ctx);
    if (generation != NULL)
        *generation = id->generation;
    pthread_mutex_unlock(&id->mu);
    return ctx;
}

int agent_ident_ssh_lines(struct agent_ident *id, char **pub, char **cert)
{
    pthread_mutex_lock(&id->mu);
    *pub = id->ssh_pub ? strdup(id->ssh_pub) : NULL;
    *cert = id->ssh_cert ? strdup(id->ssh_cert) : NULL;
    pthread_mutex_unlock(&id->mu);
    if (*pub == NULL || *cert == NULL) {
        free(*pub);
        free(*cert);
        *pub = *cert = NULL;
        return rp_err(RP_ENOMEM, "host key lines");
    }
    return 0;
}

int agent_ident_renew(struct agent_ident *id, const struct rp_config *cfg, struct auth_client *c)
{
    EVP_PKEY *tls = NULL;
    char *tls_pub = NULL, *ssh_pub = NULL;
    struct auth_host_certs hc = {0};
    char extra[PROXY_MAX_NAMES][256];
    size_t n_extra = role_principals(id, cfg, extra);
    const char *pr[PROXY_MAX_NAMES];
    for (size_t k = 0; k < n_extra; k++)
        pr[k] = extra[k];
    int rv = node_keys(id, &tls, &tls_pub, &ssh_pub);
    if (rv != 0)
        return rv;
    rv = auth_client_renew_host(c, ssh_pub, tls_pub, pr, n_extra, &hc);
    if (rv == 0) {
        struct answer_certs ac = {hc.ssh_cert, hc.tls_cert, hc.ca_cert, hc.user_ca, hc.host_ca};
        rv = store_certs(id, &ac, NULL, tls, ssh_pub, NULL);
    }
    auth_host_certs_free(&hc);
    EVP_PKEY_free(tls);
    free(tls_pub);
    free(ssh_pub);
    if (rv == 0)
        rv = load_ident(id);
    if (rv != 0)
        return rp_err(rv, "renewing the host certificates: %s", rp_errmsg());
    rp_info("agent", "renewed the host certificates of %s", id->host_id);
    return 0;
}

/* ---- the version rule towards auth ----------------------------------------------------- */

int agent_version_gate(const char *what, const char *auth_version, bool skip)
{
    const char *self = rp_version_self();
    enum rp_version_verdict v = rp_version_check_auth(self, auth_version);
    if (v == RP_VERSION_OK)
        return 0;
    char why[300];
    rp_version_explain(v, self, auth_version, why, sizeof why);
    if (skip) {
        rp_warn(what, "%s; starting anyway (--skip-version-check)", why);
        return 0;
    }
    if (v == RP_VERSION_TOO_OLD)
        return rp_err(RP_EPROTO,
                      "auth server version %s is older than this %s's %s: upgrade auth "
                      "first, or start with --skip-version-check",
                      auth_version, what, self);
    return rp_err(RP_EPROTO, "%s: start with --skip-version-check to run anyway", why);
}
