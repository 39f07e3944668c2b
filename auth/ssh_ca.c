/* auth/ssh_ca.c: the user and host SSH certificate authorities, and host
 * certificates.
 *
 * Each CA is a resource cert_authority/user or cert_authority/host:
 *
 *   spec {type, cluster_name, rotation {state: "standby"},
 *         active_keys {ssh: [{public_key: "ssh-ed25519 AAAA...", private_key: PEM}]}}
 *
 * The leader creates a missing one (Ed25519) with "create", so however many
 * servers try at once, exactly one key becomes the CA. Readers other than
 * Admin/Auth identities never see private_key (auth/secrets.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "auth/audit.h"
#include "auth/ca_cache.h"
#include "auth/internal.h"
#include "auth/rbac.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "state/state.h"

#define HOST_CERT_DEFAULT_TTL_MS (365ull * 24 * 3600 * 1000)
#define HOST_CERT_MAX_TTL_MS (5ull * 365 * 24 * 3600 * 1000)

static int create_ca(struct auth_server *s, const char *type)
{
    EVP_PKEY *key = NULL;
    char *priv = NULL, *pub = NULL, fp[128] = "";
    struct rp_buf res;
    rp_buf_init(&res);
    int rv = rp_ssh_keygen(RP_SSH_KEY_ED25519, &key);
    if (rv == 0)
        rv = rp_ssh_privkey_format(key, type, &priv);
    if (rv == 0)
        rv = rp_ssh_pubkey_format(key, NULL, &pub);
    if (rv == 0)
        rv = rp_ssh_fingerprint(key, fp, sizeof fp);
    if (rv == 0) {
        msgpack_packer pk;
        struct rp_mp_map m, meta, spec, rotation, keys, active;
        rp_mp_packer_init(&pk, &res);
        rp_mp_map_begin(&pk, &m);
        rp_mp_map_str(&m, "kind", AUTH_KIND_CA);
        rp_mp_map_str(&m, "version", "v2");
        rp_mp_map_begin_map(&m, "metadata", &meta);
        rp_mp_map_str(&meta, "name", type);
        rp_mp_map_end(&meta);
        rp_mp_map_begin_map(&m, "spec", &spec);
        rp_mp_map_str(&spec, "type", type);
        rp_mp_map_str(&spec, "cluster_name", s->id.cluster_name);
        rp_mp_map_begin_map(&spec, "rotation", &rotation);
        rp_mp_map_str(&rotation, "state", "standby");
        rp_mp_map_end(&rotation);
        rp_mp_map_begin_map(&spec, "active_keys", &keys);
        msgpack_pack_array(rp_mp_map_key(&keys, "ssh"), 1);
        rp_mp_map_begin(&pk, &active);
        rp_mp_map_str(&active, "public_key", pub);
        rp_mp_map_str(&active, "private_key", priv);
        rp_mp_map_end(&active);
        rp_mp_map_end(&keys);
        rp_mp_map_end(&spec);
        rp_mp_map_end(&m);
        char rid[33];
        auth_new_rid(rid);
        struct state_cmd c = {.op = "create", .rid = rid, .res = res.data, .res_len = res.len};
        rv = auth_propose_cmd(s, &c, NULL);
        if (rv == RP_EEXISTS)
            rv = 0; /* another leader made it first: theirs is the CA */
        else if (rv == 0)
            rp_info("auth", "created the %s SSH CA (ssh-ed25519 %s)", type, fp);
    }
    if (priv) {
        OPENSSL_cleanse(priv, strlen(priv));
        free(priv);
    }
    free(pub);
    if (res.data)
        OPENSSL_cleanse(res.data, res.cap);
    rp_buf_free(&res);
    EVP_PKEY_free(key);
    return rv;
}

/* The preset roles (access, editor, auditor), created once like the CAs. */
static int presets_ensure(struct auth_server *s)
{
    for (size_t i = 0; rbac_preset_names[i]; i++) {
        struct rp_buf b;
        rp_buf_init(&b);
        int rv = state_get(s->state, "role", rbac_preset_names[i], &b, NULL);
        if (rv == RP_ENOTFOUND) {
            rp_buf_reset(&b);
            char rid[33];
            auth_new_rid(rid);
            rv = rbac_preset_pack(rbac_preset_names[i], &b);
            struct state_cmd c = {.op = "create", .rid = rid, .res = b.data, .res_len = b.len};
            if (rv == 0)
                rv = auth_propose_cmd(s, &c, NULL);
            if (rv == 0)
                rp_info("auth", "created the preset role %s", rbac_preset_names[i]);
            else if (rv == RP_EEXISTS)
                rv = 0;
        }
        rp_buf_free(&b);
        if (rv != 0)
            return rv;
    }
    return 0;
}

int auth_ssh_cas_ensure(struct auth_server *s)
{
    static const char *const types[] = {"user", "host"};
    int prv = presets_ensure(s);
    if (prv != 0)
        return prv;
    for (size_t i = 0; i < 2; i++) {
        struct rp_buf b;
        rp_buf_init(&b);
        int rv = state_get(s->state, AUTH_KIND_CA, types[i], &b, NULL);
        rp_buf_free(&b);
        if (rv == RP_ENOTFOUND)
            rv = create_ca(s, types[i]);
        if (rv != 0)
            return rv;
    }
    return 0;
}

int auth_ssh_ca_key(struct auth_server *s, const char *type, EVP_PKEY **key)
{
    return auth_ca_cache_ssh_key(s->ca, s->state, type, key);
}

static void add_principal(char **list, size_t *n, size_t max, const char *fmt, const char *a,
                          const char *b)
{
    char buf[600];
    snprintf(buf, sizeof buf, fmt, a, b);
    for (size_t i = 0; i < *n; i++)
        if (strcmp(list[i], buf) == 0)
            return;
    if (*n < max && (list[*n] = strdup(buf)) != NULL)
        (*n)++;
}

int auth_sign_host_ssh(struct auth_server *s, const char *host_id, const char *nodename,
                       const char *role, EVP_PKEY *pub, const char *const *extra, size_t n_extra,
                       uint64_t ttl_ms, char **line, char ***principals_out, size_t *n_out)
{
    char **principals = calloc(40, sizeof *principals);
    size_t np = 0;
    EVP_PKEY *ca = NULL;
    struct rp_buf blob;
    rp_buf_init(&blob);
    if (principals == NULL)
        return rp_err(RP_ENOMEM, "principals");
    const char *cluster = s->id.cluster_name;
    add_principal(principals, &np, 40, "%s%s", host_id, "");
    add_principal(principals, &np, 40, "%s.%s", host_id, cluster);
    add_principal(principals, &np, 40, "%s%s", nodename, "");
    add_principal(principals, &np, 40, "%s.%s", nodename, cluster);
    for (size_t i = 0; i < n_extra; i++)
        add_principal(principals, &np, 40, "%s%s", extra[i], "");
    int rv = auth_ssh_ca_key(s, "host", &ca);
    if (rv == 0) {
        uint64_t now = rp_now_ms() / 1000;
        struct rp_ssh_cert_opt exts[2] = {{"x-teleport-authority", (char *)cluster},
                                          {"x-teleport-role", (char *)role}};
        struct rp_ssh_cert cert = {
            .type = RP_SSH_CERT_HOST,
            .key = pub,
            .key_id = (char *)host_id,
            .principals = principals,
            .n_principals = np,
            .valid_after = now - 60, /* as for TLS: tolerate a little clock skew */
            .valid_before = now + ttl_ms / 1000,
            .extensions = exts,
            .n_extensions = 2,
        };
        if ((rv = rp_ssh_cert_sign(&cert, ca, &blob)) == 0)
            rv = rp_ssh_cert_format(blob.data, blob.len, nodename, line);
    }
    EVP_PKEY_free(ca);
    rp_buf_free(&blob);
    if (rv == 0 && principals_out) {
        *principals_out = principals;
        *n_out = np;
    } else {
        for (size_t i = 0; i < np; i++)
            free(principals[i]);
        free(principals);
    }
    return rv;
}

int auth_ssh_ca_public_lines(struct auth_server *s, char **user_ca, char **host_ca)
{
    const char *types[2] = {"user", "host"};
    char **outs[2] = {user_ca, host_ca};
    *user_ca = *host_ca = NULL;
    for (int i = 0; i < 2; i++) {
        EVP_PKEY *k = NULL;
        int rv = auth_ssh_ca_key(s, types[i], &k);
        if (rv == 0)
            rv = rp_ssh_pubkey_format(k, NULL, outs[i]);
        EVP_PKEY_free(k);
        if (rv != 0) {
            free(*user_ca);
            *user_ca = NULL;
            return rv;
        }
    }
    return 0;
}

int auth_issue_host_ssh(struct auth_server *s, const char *host_id, const char *nodename,
                        const char *role, const char *ssh_pubkey, const msgpack_object *extra,
                        uint64_t ttl_ms, char **line, char ***principals_out, size_t *n_out)
{
    const char *extras[AUTH_HOST_MAX_EXTRA];
    char extra_buf[AUTH_HOST_MAX_EXTRA][256];
    size_t n_extra = 0;
    *line = NULL;
    if (extra && extra->type != MSGPACK_OBJECT_NIL &&
        (extra->type != MSGPACK_OBJECT_ARRAY || extra->via.array.size > AUTH_HOST_MAX_EXTRA))
        return rp_err(RP_EINVAL, "principals: expected an array of at most %d names",
                      AUTH_HOST_MAX_EXTRA);
    for (uint32_t i = 0; extra && extra->type == MSGPACK_OBJECT_ARRAY && i < extra->via.array.size;
         i++) {
        const msgpack_object *o = &extra->via.array.ptr[i];
        if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > 253 ||
            memchr(o->via.str.ptr, '\0', o->via.str.size) != NULL)
            return rp_err(RP_EINVAL, "principals[%u]: expected a host name or address", i);
        snprintf(extra_buf[n_extra], sizeof extra_buf[n_extra], "%.*s", (int)o->via.str.size,
                 o->via.str.ptr);
        extras[n_extra] = extra_buf[n_extra];
        n_extra++;
    }
    EVP_PKEY *pub = NULL;
    int rv = rp_ssh_pubkey_parse(ssh_pubkey, &pub, NULL);
    if (rv != 0)
        return rp_err(rv, "ssh_pubkey: %s", rp_errmsg());
    rv = auth_sign_host_ssh(s, host_id, nodename, role, pub, extras, n_extra, ttl_ms, line,
                            principals_out, n_out);
    EVP_PKEY_free(pub);
    return rv;
}

/* sign_host {host_id, nodename, role, ssh_pubkey, principals?[], ttl_ms?, tls_pubkey?}
 *   -> {ssh_cert, tls_cert?, tls_ca?}
 * Principals: host id, hostid.cluster, node name, nodename.cluster and the extra
 * ones given (addresses); extensions x-teleport-role and x-teleport-authority. */
int auth_h_sign_host(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    char host_id[128], nodename[256], role[16], publine[8192];
    uint64_t ttl = HOST_CERT_DEFAULT_TTL_MS;
    int rv;
    if ((rv = auth_arg_str(r->args, "host_id", host_id, sizeof host_id, true)) != 0 ||
        (rv = auth_arg_str(r->args, "nodename", nodename, sizeof nodename, true)) != 0 ||
        (rv = auth_arg_str(r->args, "role", role, sizeof role, true)) != 0 ||
        (rv = auth_arg_str(r->args, "ssh_pubkey", publine, sizeof publine, true)) != 0)
        return rv;
    if (strcmp(role, "Node") != 0 && strcmp(role, "Proxy") != 0 && strcmp(role, "Auth") != 0)
        return rp_err(RP_EINVAL, "role '%s': expected Node, Proxy or Auth", role);
    if (rp_mp_get_u64(r->args, "ttl_ms", &ttl) == RP_EINVAL || ttl < 60000 ||
        ttl > HOST_CERT_MAX_TTL_MS)
        return rp_err(RP_EINVAL, "ttl must be between 1m and 5 years");
    unsigned char tls_spki[RP_TLS_P256_SPKI_LEN];
    char **principals = NULL, *line = NULL, *tls_pem = NULL, *ca_pem = NULL;
    size_t np = 0;
    char tls_pub_pem[2048];
    if ((rv = auth_arg_str(r->args, "tls_pubkey", tls_pub_pem, sizeof tls_pub_pem, false)) != 0)
        return rv;
    if ((rv = auth_issue_host_ssh(s, host_id, nodename, role, publine,
                                  rp_mp_get(r->args, "principals"), ttl, &line, &principals,
                                  &np)) != 0)
        goto out;
    if (tls_pub_pem[0]) {
        if ((rv = rp_tls_pubkey_spki(tls_pub_pem, strlen(tls_pub_pem), tls_spki)) != 0) {
            rv = rp_err(rv, "tls_pubkey: %s", rp_errmsg());
            goto out;
        }
        if ((rv = auth_sign_host_identity(s, tls_spki, host_id, role,
                                          (const char *const *)principals, np, (long)(ttl / 1000),
                                          &tls_pem)) != 0)
            goto out;
        if ((ca_pem = strdup(s->id.ca_pem)) == NULL) {
            rv = rp_err(RP_ENOMEM, "CA PEM");
            goto out;
        }
    }
    struct audit_event e;
    audit_event_init(&e, "cert.create", "TC000I");
    audit_event_str(&e, "user", r->caller ? r->caller->name : "?");
    audit_event_str(&e, "cert_type", "host");
    audit_event_str(&e, "identity", host_id);
    audit_event_str(&e, "nodename", nodename);
    audit_event_str(&e, "role", role);
    audit_event_u64(&e, "ttl_s", ttl / 1000);
    if ((rv = audit_emit(s, &e, AUDIT_WAIT)) != 0)
        goto out; /* no audit record, no certificate */
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "ssh_cert", line);
    if (tls_pem) {
        rp_mp_map_str(&m, "tls_cert", tls_pem);
        rp_mp_map_str(&m, "tls_ca", ca_pem);
    }
    rp_mp_map_end(&m);
out:
    free(tls_pem);
    free(ca_pem);
    for (size_t i = 0; i < np; i++)
        free(principals[i]);
    free(principals);
    free(line);
    return rv;
}
