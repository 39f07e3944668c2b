/* auth/identity.c: this auth server's keys and certificates in data_dir/keys:
 * created at bootstrap, obtained by joining, loaded on every later start.
 *
 *   keys/ca.crt           the cluster TLS CA certificate
 *   keys/host.key, .crt   this server's identity (O = Auth), used for peers and the API
 *   keys/admin.key, .crt  the local admin identity tctl uses (O = Admin)
 *   keys/host_uuid        this server's host id
 *   keys/cluster_name
 *   keys/bootstrapped     present on the server that created the cluster
 *   keys/ca.key.bootstrap the CA key until it is in the replicated state */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/internal.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define JOIN_DEADLINE_MS 120000

static void key_path(char *out, size_t n, const char *data_dir, const char *file)
{
    snprintf(out, n, "%s/%s/%s", data_dir, AUTH_KEYS_DIR, file);
}

static int read_small(const char *data_dir, const char *file, char *out, size_t outlen)
{
    char path[1200], *buf;
    size_t n;
    key_path(path, sizeof path, data_dir, file);
    int rv = rp_read_file(path, outlen - 1, &buf, &n);
    if (rv != 0)
        return rv;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        n--;
    memcpy(out, buf, n);
    out[n] = '\0';
    free(buf);
    return 0;
}

static int write_small(const char *data_dir, const char *file, const char *text, unsigned mode)
{
    char path[1200];
    key_path(path, sizeof path, data_dir, file);
    return rp_write_file(path, text, strlen(text), mode);
}

void auth_identity_free(struct auth_identity *id)
{
    X509_free(id->ca_cert);
    free(id->ca_pem);
    X509_free(id->host_cert);
    EVP_PKEY_free(id->host_key);
    EVP_PKEY_free(id->ca_key_pending);
    memset(id, 0, sizeof *id);
}

int auth_identity_load(struct auth_identity *id, const char *data_dir)
{
    char path[1200];
    int rv;
    memset(id, 0, sizeof *id);
    if ((rv = read_small(data_dir, "host_uuid", id->host_id, sizeof id->host_id)) != 0 ||
        (rv = read_small(data_dir, "cluster_name", id->cluster_name, sizeof id->cluster_name)) != 0)
        goto err;
    key_path(path, sizeof path, data_dir, "ca.crt");
    if ((rv = rp_tls_read_cert(path, &id->ca_cert)) != 0 ||
        (rv = rp_tls_cert_to_pem(id->ca_cert, &id->ca_pem)) != 0)
        goto err;
    key_path(path, sizeof path, data_dir, "host.crt");
    if ((rv = rp_tls_read_cert(path, &id->host_cert)) != 0)
        goto err;
    key_path(path, sizeof path, data_dir, "host.key");
    if ((rv = rp_tls_read_key(path, &id->host_key)) != 0)
        goto err;
    key_path(path, sizeof path, data_dir, "bootstrapped");
    id->bootstrapped_here = rp_file_exists(path);
    key_path(path, sizeof path, data_dir, "ca.key.bootstrap");
    if (rp_file_exists(path) && (rv = rp_tls_read_key(path, &id->ca_key_pending)) != 0)
        goto err;
    if ((rv = rp_tls_ca_pin(id->ca_cert, id->ca_pin, sizeof id->ca_pin)) != 0)
        goto err;
    return 0;
err:
    rv = rp_err(rv, "loading identity from %s/%s: %s", data_dir, AUTH_KEYS_DIR, rp_errmsg());
    auth_identity_free(id);
    return rv;
}

static void new_host_id(char *out)
{
    char hex[33];
    rp_random_hex(hex, 16);
    snprintf(out, 37, "%.8s-%.4s-%.4s-%.4s-%.12s", hex, hex + 8, hex + 12, hex + 16, hex + 20);
}

/* Writes a key and its certificate under keys/. */
static int save_pair(const char *data_dir, const char *name, EVP_PKEY *key, X509 *cert)
{
    char path[1200], file[64];
    snprintf(file, sizeof file, "%s.key", name);
    key_path(path, sizeof path, data_dir, file);
    int rv = rp_tls_write_key(path, key);
    if (rv != 0)
        return rv;
    snprintf(file, sizeof file, "%s.crt", name);
    key_path(path, sizeof path, data_dir, file);
    return rp_tls_write_cert(path, cert);
}

static int make_keys_dir(const char *data_dir)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", data_dir, AUTH_KEYS_DIR);
    return rp_mkdir_p(path, 0700);
}

int auth_identity_bootstrap(struct auth_identity *id, const struct rp_config *cfg,
                            const char *data_dir)
{
    EVP_PKEY *ca_key = NULL, *host_key = NULL, *admin_key = NULL;
    X509 *ca = NULL, *host = NULL, *admin = NULL;
    char path[1200];
    int rv;
    memset(id, 0, sizeof *id);
    if (cfg->cluster_name == NULL)
        return rp_err(RP_EINVAL, "auth_service.cluster_name is required to bootstrap a new cluster "
                                 "(or give a join token to join an existing one)");
    if ((rv = make_keys_dir(data_dir)) != 0)
        return rv;
    new_host_id(id->host_id);
    snprintf(id->cluster_name, sizeof id->cluster_name, "%s", cfg->cluster_name);

    if ((rv = rp_tls_ca_create(cfg->cluster_name, &ca_key, &ca)) != 0)
        goto out;
    host_key = rp_tls_keygen();
    admin_key = rp_tls_keygen();
    if (host_key == NULL || admin_key == NULL) {
        rv = rp_err(RP_ENOMEM, "key generation: %s", rp_errmsg());
        goto out;
    }
    char *host_groups[1] = {RP_ROLE_AUTH}, *admin_groups[1] = {RP_ROLE_ADMIN};
    char admin_name[300], api_host[64], raft_host[64];
    snprintf(admin_name, sizeof admin_name, "admin@%s", cfg->nodename);
    const char *api = cfg->auth_public_addr ? cfg->auth_public_addr : cfg->auth_listen_addr;
    snprintf(api_host, sizeof api_host, "%.*s", (int)(strrchr(api, ':') - api), api);
    snprintf(raft_host, sizeof raft_host, "%.*s",
             (int)(strrchr(cfg->raft_listen_addr, ':') - cfg->raft_listen_addr),
             cfg->raft_listen_addr);
    const char *sans[3] = {cfg->nodename, api_host, raft_host};
    struct rp_identity hid = {.name = id->host_id,
                              .groups = host_groups,
                              .n_groups = 1,
                              .cluster = id->cluster_name,
                              .system_role = RP_SYS_AUTH,
                              .host_id = id->host_id};
    struct rp_identity aid = {.name = admin_name,
                              .groups = admin_groups,
                              .n_groups = 1,
                              .cluster = id->cluster_name,
                              .system_role = RP_SYS_ADMIN,
                              .host_id = id->host_id};
    if ((rv = rp_tls_issue(ca_key, ca, host_key, &hid, sans, 3, AUTH_HOST_TTL_S, &host)) != 0 ||
        (rv = rp_tls_issue(ca_key, ca, admin_key, &aid, NULL, 0,
                           (long)(cfg->admin_identity_ttl_ms / 1000), &admin)) != 0)
        goto out;

    /* The CA key goes to disk first, so that a crash before it reaches the
     * replicated state cannot lose it; it is removed once replicated. */
    key_path(path, sizeof path, data_dir, "ca.key.bootstrap");
    if ((rv = rp_tls_write_key(path, ca_key)) != 0)
        goto out;
    key_path(path, sizeof path, data_dir, "ca.crt");
    if ((rv = rp_tls_write_cert(path, ca)) != 0 ||
        (rv = save_pair(data_dir, "admin", admin_key, admin)) != 0 ||
        (rv = write_small(data_dir, "host_uuid", id->host_id, 0644)) != 0 ||
        (rv = write_small(data_dir, "cluster_name", id->cluster_name, 0644)) != 0 ||
        (rv = write_small(data_dir, "bootstrapped", "1\n", 0644)) != 0)
        goto out;
    /* host.crt last: its presence marks the identity complete. */
    if ((rv = save_pair(data_dir, "host", host_key, host)) != 0)
        goto out;
    rp_info("auth", "bootstrapped a new cluster %s: created its TLS CA", cfg->cluster_name);
    X509_free(host);
    X509_free(admin);
    EVP_PKEY_free(admin_key);
    EVP_PKEY_free(host_key);
    EVP_PKEY_free(ca_key);
    X509_free(ca);
    return auth_identity_load(id, data_dir);
out:
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(host_key);
    EVP_PKEY_free(admin_key);
    X509_free(ca);
    X509_free(host);
    X509_free(admin);
    return rv;
}

/* One join attempt against @addr. Transient failures return RP_EUNAVAILABLE,
 * RP_ENOTLEADER or RP_EBUSY; the rest are final. */
static int join_once(const struct rp_config *cfg, const char *addr, const char *host_id,
                     const char *host_pub, const char *admin_pub, msgpack_unpacked *resp,
                     struct rp_buf *frame)
{
    struct rp_buf req;
    int rv;
    msgpack_packer pk;
    rp_buf_init(&req);
    rp_mp_packer_init(&pk, &req);
    msgpack_pack_map(&pk, 10);
    rp_mp_kv_str(&pk, "m", "join");
    rp_mp_kv_str(&pk, "token", cfg->join_token);
    rp_mp_kv_str(&pk, "type", "auth");
    rp_mp_kv_str(&pk, "host_id", host_id);
    rp_mp_kv_str(&pk, "nodename", cfg->nodename);
    rp_mp_kv_u64(&pk, "raft_id", cfg->raft_id);
    rp_mp_kv_str(&pk, "raft_addr", cfg->raft_listen_addr);
    rp_mp_kv_str(&pk, "api_addr",
                 cfg->auth_public_addr ? cfg->auth_public_addr : cfg->auth_listen_addr);
    rp_mp_kv_str(&pk, "host_pubkey", host_pub);
    rp_mp_kv_str(&pk, "admin_pubkey", admin_pub);
    rv = auth_pinned_call(addr, cfg->ca_pin, req.data, req.len, 30000, frame, resp);
    rp_buf_free(&req);
    if (rv != 0)
        msgpack_unpacked_destroy(resp);
    return rv;
}

int auth_identity_join(struct auth_identity *id, const struct rp_config *cfg, const char *data_dir)
{
    EVP_PKEY *host_key = rp_tls_keygen(), *admin_key = rp_tls_keygen();
    char *host_pub = NULL, *admin_pub = NULL, path[1200];
    X509 *host = NULL, *admin = NULL, *ca = NULL;
    struct rp_buf frame;
    msgpack_unpacked resp;
    bool have_resp = false;
    int rv;
    memset(id, 0, sizeof *id);
    rp_buf_init(&frame);
    if (cfg->auth_server == NULL || cfg->ca_pin == NULL) {
        rv = rp_err(RP_EINVAL, "joining needs teleport.auth_server (an existing member) and "
                               "teleport.ca_pin (from `tctl tokens add --type=auth`)");
        goto out;
    }
    if (host_key == NULL || admin_key == NULL) {
        rv = rp_err(RP_ENOMEM, "key generation: %s", rp_errmsg());
        goto out;
    }
    if ((rv = make_keys_dir(data_dir)) != 0)
        goto out;
    /* Keep the host id across retries of a join whose answer was lost. */
    if (read_small(data_dir, "host_uuid", id->host_id, sizeof id->host_id) != 0) {
        new_host_id(id->host_id);
        if ((rv = write_small(data_dir, "host_uuid", id->host_id, 0644)) != 0)
            goto out;
    }
    if ((rv = rp_tls_pubkey_to_pem(host_key, &host_pub)) != 0 ||
        (rv = rp_tls_pubkey_to_pem(admin_key, &admin_pub)) != 0)
        goto out;

    uint64_t deadline = rp_mono_ms() + JOIN_DEADLINE_MS, backoff = 250;
    for (;;) {
        rv = join_once(cfg, cfg->auth_server, id->host_id, host_pub, admin_pub, &resp, &frame);
        if (rv == 0) {
            have_resp = true;
            break;
        }
        bool transient = rv == RP_EUNAVAILABLE || rv == RP_ENOTLEADER || rv == RP_EBUSY ||
                         rv == RP_EUNKNOWN || rv == RP_ETIMEDOUT;
        if (!transient || rp_mono_ms() + backoff > deadline)
            goto out;
        rp_warn("auth", "join via %s: %s; retrying", cfg->auth_server, rp_errmsg());
        struct timespec ts = {(time_t)(backoff / 1000), (long)(backoff % 1000) * 1000000L};
        nanosleep(&ts, NULL);
        backoff = backoff * 2 > 4000 ? 4000 : backoff * 2;
    }

    const char *pem, *cn;
    size_t n, cnn;
    if ((rv = rp_mp_get_str(&resp.data, "host_cert", &pem, &n)) != 0 ||
        (rv = rp_tls_cert_from_pem(pem, n, &host)) != 0 ||
        (rv = rp_mp_get_str(&resp.data, "admin_cert", &pem, &n)) != 0 ||
        (rv = rp_tls_cert_from_pem(pem, n, &admin)) != 0 ||
        (rv = rp_mp_get_str(&resp.data, "ca_cert", &pem, &n)) != 0 ||
        (rv = rp_tls_cert_from_pem(pem, n, &ca)) != 0 ||
        (rv = rp_mp_get_str(&resp.data, "cluster_name", &cn, &cnn)) != 0) {
        rv = rp_err(RP_EPROTO, "join answer: %s", rp_errmsg());
        goto out;
    }
    char pin[80];
    if ((rv = rp_tls_ca_pin(ca, pin, sizeof pin)) != 0)
        goto out;
    if (strcmp(pin, cfg->ca_pin) != 0) {
        rv = rp_err(RP_ETLS, "join answer carries CA %s, expected the pinned %s", pin, cfg->ca_pin);
        goto out;
    }
    if (cnn == 0 || cnn >= sizeof id->cluster_name || memchr(cn, '\0', cnn)) {
        rv = rp_err(RP_EPROTO, "join answer: bad cluster name");
        goto out;
    }
    char cluster[256];
    memcpy(cluster, cn, cnn);
    cluster[cnn] = '\0';
    key_path(path, sizeof path, data_dir, "ca.crt");
    if ((rv = rp_tls_write_cert(path, ca)) != 0 ||
        (rv = save_pair(data_dir, "admin", admin_key, admin)) != 0 ||
        (rv = write_small(data_dir, "cluster_name", cluster, 0644)) != 0 ||
        (rv = save_pair(data_dir, "host", host_key, host)) != 0)
        goto out;
    rp_info("auth", "joined cluster %s through %s", cluster, cfg->auth_server);
    rv = auth_identity_load(id, data_dir);
out:
    if (have_resp)
        msgpack_unpacked_destroy(&resp);
    rp_buf_free(&frame);
    EVP_PKEY_free(host_key);
    EVP_PKEY_free(admin_key);
    X509_free(host);
    X509_free(admin);
    X509_free(ca);
    free(host_pub);
    free(admin_pub);
    return rv;
}

/* ---- the local admin identity ------------------------------------------------- */

int auth_admin_identity_renew(struct auth_server *s, bool force)
{
    long ttl_s = (long)(s->cfg->admin_identity_ttl_ms / 1000);
    char path[1200], key_file[1200];
    key_path(path, sizeof path, s->data_dir, "admin.crt");
    key_path(key_file, sizeof key_file, s->data_dir, "admin.key");
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    char *pub = NULL, *pem = NULL;
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    int rv = rp_tls_read_cert(path, &cert);
    if (rv == 0 && !force) {
        /* Renewed once half its life is gone, so a server that was down for a while
         * still renews before tctl on its host finds the identity expired. */
        struct rp_identity cur;
        if (rp_identity_from_cert(cert, &cur) == 0) {
            long long left = cur.not_after - (long long)(rp_now_ms() / 1000);
            rp_identity_free(&cur);
            /* Also renewed when it outlives the configured lifetime (the setting was
             * lowered since it was issued). */
            if (left > ttl_s / 2 && left <= ttl_s + 60) {
                X509_free(cert);
                return 0;
            }
        }
    }
    X509_free(cert);
    if ((rv = rp_tls_read_key(key_file, &key)) != 0 ||
        (rv = rp_tls_pubkey_to_pem(key, &pub)) != 0 ||
        (rv = rp_tls_pubkey_spki(pub, strlen(pub), spki)) != 0)
        goto out;
    char admin_name[300], *groups[1] = {RP_ROLE_ADMIN};
    snprintf(admin_name, sizeof admin_name, "admin@%s", s->cfg->nodename);
    struct rp_identity aid = {.name = admin_name,
                              .groups = groups,
                              .n_groups = 1,
                              .cluster = s->id.cluster_name,
                              .system_role = RP_SYS_ADMIN,
                              .host_id = s->id.host_id};
    if ((rv = auth_sign_identity(s, spki, &aid, NULL, 0, ttl_s, &pem)) != 0)
        goto out;
    /* rp_write_file replaces the file atomically: tctl never reads half a certificate. */
    rv = rp_write_file(path, pem, strlen(pem), 0644);
    if (rv == 0)
        rp_info("auth", "renewed the local admin identity (%s), valid %ld s", admin_name, ttl_s);
out:
    if (rv != 0)
        rv = rp_err(rv, "renewing the admin identity: %s", rp_errmsg());
    EVP_PKEY_free(key);
    free(pub);
    free(pem);
    return rv;
}
