/* lib/tls.c: keys, the cluster TLS CA, X.509 identities and mutual-TLS contexts.
 *
 * The identity lives in the certificate subject as Teleport encodes it
 * (lib/tlsca/ca.go): CN = name, one O per group, one L per login,
 * StreetAddress = route cluster, 1.3.9999.1.7 = origin cluster. Certificates
 * reach rp_identity_from_cert from the network, so every string read back is
 * checked (type, length, UTF-8, no control characters) before it is handed on,
 * and rp_tls_issue refuses to sign anything it would refuse to read. */
#include "lib/tls.h"

#include <limits.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ec.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/errors.h"
#include "lib/util.h"

#define CA_VALIDITY_S (10L * 366 * 24 * 3600)
#define BACKDATE_S 60
/* Bounds on what an identity may carry; a certificate beyond them is refused. */
#define ID_STR_MAX 255
#define ID_LIST_MAX 256
#define PEM_FILE_MAX (1u << 20)

/* ---- errors ---------------------------------------------------------------------- */

/* Sets the thread's message to "@what: <first OpenSSL reason>" and clears the
 * OpenSSL error queue so that it does not leak into the next call. */
static int ssl_err(int code, const char *what)
{
    unsigned long e = ERR_peek_last_error();
    char reason[256] = "unknown error";
    if (e != 0)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return rp_err(code, "%s: %s", what, reason);
}

/* Prefixes this thread's current message with @ctx ("@ctx: <message>"). The message
 * is copied first: rp_err must not format from its own buffer. */
static int err_ctx(int code, const char *ctx)
{
    char prev[512];
    snprintf(prev, sizeof prev, "%s", rp_errmsg());
    return rp_err(code, "%s: %s", ctx, prev);
}

/* ---- the cluster-name OID ---------------------------------------------------------- */

#define OID_TELEPORT_CLUSTER "1.3.9999.1.7"

static pthread_once_t oid_once = PTHREAD_ONCE_INIT;
static ASN1_OBJECT *oid_cluster;

/* Built once and only read afterwards: OBJ_txt2obj with no_name does not touch
 * OpenSSL's global object table, so nothing here needs a lock after the once. */
static void oid_init(void)
{
    oid_cluster = OBJ_txt2obj(OID_TELEPORT_CLUSTER, 1);
}

static const ASN1_OBJECT *cluster_oid(void)
{
    pthread_once(&oid_once, oid_init);
    return oid_cluster;
}

/* ---- identity strings -------------------------------------------------------------- */

/* True if @s[0..n) is well-formed UTF-8 (no overlongs, surrogates or values past
 * U+10FFFF) without ASCII or C1 control characters. */
static int utf8_clean(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        unsigned c = s[i];
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7f)
                return 0;
            i++;
            continue;
        }
        size_t len;
        unsigned cp, min;
        if ((c & 0xe0) == 0xc0) {
            len = 2, cp = c & 0x1f, min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            len = 3, cp = c & 0x0f, min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return 0;
        }
        if (n - i < len)
            return 0;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return 0;
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff) ||
            (cp >= 0x80 && cp <= 0x9f))
            return 0;
        i += len;
    }
    return 1;
}

static int check_id_string(const char *what, const char *s, size_t n)
{
    if (n == 0)
        return rp_err(RP_EINVAL, "identity %s is empty", what);
    if (n > ID_STR_MAX)
        return rp_err(RP_EINVAL, "identity %s is %zu bytes, more than %d", what, n, ID_STR_MAX);
    if (memchr(s, '\0', n) != NULL)
        return rp_err(RP_EINVAL, "identity %s contains a NUL byte", what);
    if (!utf8_clean((const unsigned char *)s, n))
        return rp_err(RP_EINVAL,
                      "identity %s is not clean UTF-8 (control character or bad encoding)", what);
    return 0;
}

void rp_identity_free(struct rp_identity *id)
{
    if (id == NULL)
        return;
    free(id->name);
    for (size_t i = 0; i < id->n_groups; i++)
        free(id->groups[i]);
    free(id->groups);
    for (size_t i = 0; i < id->n_logins; i++)
        free(id->logins[i]);
    free(id->logins);
    free(id->cluster);
    free(id->route_cluster);
    memset(id, 0, sizeof *id);
}

int rp_identity_has_group(const struct rp_identity *id, const char *group)
{
    if (id == NULL || group == NULL)
        return 0;
    for (size_t i = 0; i < id->n_groups; i++) {
        if (id->groups[i] != NULL && strcmp(id->groups[i], group) == 0)
            return 1;
    }
    return 0;
}

/* ---- keys ---------------------------------------------------------------------------- */

EVP_PKEY *rp_tls_keygen(void)
{
    EVP_PKEY *k = EVP_EC_gen("P-256");
    if (k == NULL)
        ssl_err(RP_ETLS, "generating a P-256 key");
    return k;
}

/* Keys we accept from files and the wire: ECDSA P-256 only. */
static int check_key_type(EVP_PKEY *k, const char *what)
{
    char group[64] = "";
    size_t glen = 0;
    if (!EVP_PKEY_is_a(k, "EC"))
        return rp_err(RP_EINVAL, "%s: key type %s is not EC P-256", what,
                      EVP_PKEY_get0_type_name(k) ? EVP_PKEY_get0_type_name(k) : "?");
    if (!EVP_PKEY_get_utf8_string_param(k, "group", group, sizeof group, &glen) ||
        (strcmp(group, "prime256v1") != 0 && strcmp(group, "P-256") != 0)) {
        ERR_clear_error();
        return rp_err(RP_EINVAL, "%s: EC curve %s is not P-256", what, group[0] ? group : "?");
    }
    return 0;
}

/* ---- certificate building -------------------------------------------------------------- */

static int set_random_serial(X509 *x)
{
    /* 128 random bits as a positive INTEGER (at most 17 DER octets, within
     * RFC 5280's 20); zero is not a valid serial, so draw again. */
    unsigned char b[16];
    BIGNUM *bn = NULL;
    do {
        BN_free(bn);
        if (RAND_bytes(b, sizeof b) != 1)
            return ssl_err(RP_ETLS, "random serial");
        bn = BN_bin2bn(b, sizeof b, NULL);
        if (bn == NULL)
            return ssl_err(RP_ENOMEM, "serial");
    } while (BN_is_zero(bn));
    ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
    BN_free(bn);
    if (ai == NULL)
        return ssl_err(RP_ENOMEM, "serial");
    return 0;
}

static int add_ext_conf(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (ext == NULL)
        return ssl_err(RP_ETLS, OBJ_nid2sn(nid));
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    if (!ok)
        return ssl_err(RP_ETLS, OBJ_nid2sn(nid));
    return 0;
}

static int name_add(X509_NAME *n, int nid, const char *v)
{
    if (!X509_NAME_add_entry_by_NID(n, nid, MBSTRING_UTF8, (const unsigned char *)v, -1, -1, 0))
        return ssl_err(RP_ETLS, "building the subject");
    return 0;
}

static int set_validity(X509 *x, long from_s, long to_s)
{
    if (X509_gmtime_adj(X509_getm_notBefore(x), from_s) == NULL ||
        X509_gmtime_adj(X509_getm_notAfter(x), to_s) == NULL)
        return ssl_err(RP_ETLS, "setting validity");
    return 0;
}

int rp_tls_ca_create(const char *cluster, EVP_PKEY **key_out, X509 **cert_out)
{
    int rv;
    if (cluster == NULL)
        return rp_err(RP_EINVAL, "CA cluster name missing");
    rv = check_id_string("cluster name", cluster, strlen(cluster));
    if (rv != 0)
        return rv;

    EVP_PKEY *key = rp_tls_keygen();
    if (key == NULL)
        return RP_ETLS;
    X509 *x = X509_new();
    if (x == NULL) {
        rv = ssl_err(RP_ENOMEM, "new certificate");
        goto err;
    }
    if (!X509_set_version(x, X509_VERSION_3)) {
        rv = ssl_err(RP_ETLS, "version");
        goto err;
    }
    if ((rv = set_random_serial(x)) != 0)
        goto err;
    X509_NAME *name = X509_get_subject_name(x);
    if ((rv = name_add(name, NID_commonName, cluster)) != 0 ||
        (rv = name_add(name, NID_organizationName, cluster)) != 0)
        goto err;
    if (!X509_set_issuer_name(x, name) || !X509_set_pubkey(x, key)) {
        rv = ssl_err(RP_ETLS, "CA issuer/public key");
        goto err;
    }
    if ((rv = set_validity(x, -BACKDATE_S, CA_VALIDITY_S)) != 0)
        goto err;

    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
    if ((rv = add_ext_conf(x, &ctx, NID_basic_constraints, "critical,CA:TRUE")) != 0 ||
        (rv = add_ext_conf(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign")) != 0 ||
        (rv = add_ext_conf(x, &ctx, NID_subject_key_identifier, "hash")) != 0)
        goto err;
    if (X509_sign(x, key, EVP_sha256()) <= 0) {
        rv = ssl_err(RP_ETLS, "signing the CA certificate");
        goto err;
    }
    *key_out = key;
    *cert_out = x;
    return 0;

err:
    X509_free(x);
    EVP_PKEY_free(key);
    return rv;
}

/* Adds @sans as subjectAltName: an entry that parses as an IPv4/IPv6 address is an
 * IP SAN, anything else must look like a DNS name (letters, digits, '-', '.', '_',
 * a leading "*." wildcard). */
static int add_sans(X509 *x, const char *const *sans, size_t n)
{
    if (n == 0)
        return 0;
    int rv = 0;
    GENERAL_NAMES *gens = sk_GENERAL_NAME_new_null();
    if (gens == NULL)
        return ssl_err(RP_ENOMEM, "subjectAltName");
    for (size_t i = 0; i < n; i++) {
        const char *s = sans[i];
        if (s == NULL || s[0] == '\0' || strlen(s) > 253) {
            rv = rp_err(RP_EINVAL, "subjectAltName %zu is empty or too long", i);
            goto out;
        }
        GENERAL_NAME *g = GENERAL_NAME_new();
        if (g == NULL) {
            rv = ssl_err(RP_ENOMEM, "subjectAltName");
            goto out;
        }
        ASN1_OCTET_STRING *ip = a2i_IPADDRESS(s);
        if (ip != NULL) {
            GENERAL_NAME_set0_value(g, GEN_IPADD, ip);
        } else {
            ERR_clear_error();
            for (const char *p = s; *p; p++) {
                int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                         (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' ||
                         (*p == '*' && p == s && p[1] == '.');
                if (!ok) {
                    GENERAL_NAME_free(g);
                    rv = rp_err(RP_EINVAL,
                                "subjectAltName \"%.64s\" is neither an IP address nor a DNS name",
                                s);
                    goto out;
                }
            }
            ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
            if (ia5 == NULL || !ASN1_STRING_set(ia5, s, -1)) {
                ASN1_IA5STRING_free(ia5);
                GENERAL_NAME_free(g);
                rv = ssl_err(RP_ENOMEM, "subjectAltName");
                goto out;
            }
            GENERAL_NAME_set0_value(g, GEN_DNS, ia5);
        }
        if (!sk_GENERAL_NAME_push(gens, g)) {
            GENERAL_NAME_free(g);
            rv = ssl_err(RP_ENOMEM, "subjectAltName");
            goto out;
        }
    }
    if (!X509_add1_ext_i2d(x, NID_subject_alt_name, gens, 0, X509V3_ADD_REPLACE))
        rv = ssl_err(RP_ETLS, "adding subjectAltName");
out:
    GENERAL_NAMES_free(gens);
    return rv;
}

static int check_identity(const struct rp_identity *id)
{
    int rv;
    if (id == NULL || id->name == NULL)
        return rp_err(RP_EINVAL, "identity has no name");
    if ((rv = check_id_string("name", id->name, strlen(id->name))) != 0)
        return rv;
    if (id->n_groups > ID_LIST_MAX || id->n_logins > ID_LIST_MAX)
        return rp_err(RP_EINVAL, "identity has %zu groups and %zu logins, limit %d each",
                      id->n_groups, id->n_logins, ID_LIST_MAX);
    for (size_t i = 0; i < id->n_groups; i++) {
        if (id->groups[i] == NULL)
            return rp_err(RP_EINVAL, "identity group %zu is NULL", i);
        if ((rv = check_id_string("group", id->groups[i], strlen(id->groups[i]))) != 0)
            return rv;
    }
    for (size_t i = 0; i < id->n_logins; i++) {
        if (id->logins[i] == NULL)
            return rp_err(RP_EINVAL, "identity login %zu is NULL", i);
        if ((rv = check_id_string("login", id->logins[i], strlen(id->logins[i]))) != 0)
            return rv;
    }
    if (id->cluster && (rv = check_id_string("cluster", id->cluster, strlen(id->cluster))) != 0)
        return rv;
    if (id->route_cluster &&
        (rv = check_id_string("route cluster", id->route_cluster, strlen(id->route_cluster))) != 0)
        return rv;
    return 0;
}

int rp_tls_issue(EVP_PKEY *ca_key, X509 *ca_cert, EVP_PKEY *pubkey, const struct rp_identity *id,
                 const char *const *sans, size_t n_sans, long ttl_s, X509 **out)
{
    int rv;
    if (ca_key == NULL || ca_cert == NULL || pubkey == NULL || out == NULL)
        return rp_err(RP_EINVAL, "rp_tls_issue: missing CA key, CA certificate or public key");
    if (ttl_s <= 0)
        return rp_err(RP_EINVAL, "certificate ttl %ld must be positive", ttl_s);
    if (sans == NULL && n_sans > 0)
        return rp_err(RP_EINVAL, "rp_tls_issue: %zu SANs but no array", n_sans);
    if ((rv = check_identity(id)) != 0)
        return rv;
    if (X509_check_private_key(ca_cert, ca_key) != 1)
        return ssl_err(RP_EINVAL, "CA key does not match the CA certificate");

    X509 *x = X509_new();
    if (x == NULL)
        return ssl_err(RP_ENOMEM, "new certificate");
    if (!X509_set_version(x, X509_VERSION_3)) {
        rv = ssl_err(RP_ETLS, "version");
        goto err;
    }
    if ((rv = set_random_serial(x)) != 0)
        goto err;

    X509_NAME *name = X509_get_subject_name(x);
    if ((rv = name_add(name, NID_commonName, id->name)) != 0)
        goto err;
    for (size_t i = 0; i < id->n_groups; i++) {
        if ((rv = name_add(name, NID_organizationName, id->groups[i])) != 0)
            goto err;
    }
    for (size_t i = 0; i < id->n_logins; i++) {
        if ((rv = name_add(name, NID_localityName, id->logins[i])) != 0)
            goto err;
    }
    if (id->route_cluster && (rv = name_add(name, NID_streetAddress, id->route_cluster)) != 0)
        goto err;
    if (id->cluster) {
        const ASN1_OBJECT *oid = cluster_oid();
        if (oid == NULL) {
            rv = ssl_err(RP_ETLS, "OID " OID_TELEPORT_CLUSTER);
            goto err;
        }
        if (!X509_NAME_add_entry_by_OBJ(name, oid, MBSTRING_UTF8,
                                        (const unsigned char *)id->cluster, -1, -1, 0)) {
            rv = ssl_err(RP_ETLS, "building the subject");
            goto err;
        }
    }
    if (!X509_set_issuer_name(x, X509_get_subject_name(ca_cert)) || !X509_set_pubkey(x, pubkey)) {
        rv = ssl_err(RP_ETLS, "issuer/public key");
        goto err;
    }
    if ((rv = set_validity(x, -BACKDATE_S, ttl_s)) != 0)
        goto err;

    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca_cert, x, NULL, NULL, 0);
    if ((rv = add_ext_conf(x, &ctx, NID_basic_constraints, "critical,CA:FALSE")) != 0 ||
        (rv = add_ext_conf(x, &ctx, NID_key_usage, "critical,digitalSignature,keyAgreement")) !=
            0 ||
        (rv = add_ext_conf(x, &ctx, NID_ext_key_usage, "serverAuth,clientAuth")) != 0 ||
        (rv = add_ext_conf(x, &ctx, NID_authority_key_identifier, "keyid:always")) != 0)
        goto err;
    if ((rv = add_sans(x, sans, n_sans)) != 0)
        goto err;
    if (X509_sign(x, ca_key, EVP_sha256()) <= 0) {
        rv = ssl_err(RP_ETLS, "signing the certificate");
        goto err;
    }
    *out = x;
    return 0;
err:
    X509_free(x);
    return rv;
}

/* ---- identity from a certificate -------------------------------------------------------- */

/* Copies a subject attribute value out as a checked, NUL-terminated UTF-8 string. */
static int entry_string(X509_NAME_ENTRY *e, const char *what, char **out)
{
    const ASN1_STRING *v = X509_NAME_ENTRY_get_data(e);
    int t = ASN1_STRING_type(v);
    if (t != V_ASN1_UTF8STRING && t != V_ASN1_PRINTABLESTRING && t != V_ASN1_IA5STRING)
        return rp_err(RP_EINVAL, "certificate %s has string type %d, want UTF8String", what, t);
    int raw = ASN1_STRING_length(v);
    if (raw <= 0 || raw > ID_STR_MAX)
        return rp_err(RP_EINVAL, "certificate %s is %d bytes, want 1..%d", what, raw, ID_STR_MAX);
    unsigned char *u = NULL;
    int n = ASN1_STRING_to_UTF8(&u, v);
    if (n < 0)
        return ssl_err(RP_EINVAL, "certificate attribute is not valid UTF-8");
    int rv = check_id_string(what, (const char *)u, (size_t)n);
    if (rv != 0) {
        OPENSSL_free(u);
        /* Reword: this string came from a certificate, not from our caller. */
        char ctx[64];
        snprintf(ctx, sizeof ctx, "certificate %s refused", what);
        return err_ctx(rv, ctx);
    }
    char *s = strndup((const char *)u, (size_t)n);
    OPENSSL_free(u);
    if (s == NULL)
        return rp_err(RP_ENOMEM, "certificate %s", what);
    *out = s;
    return 0;
}

static int list_push(char ***list, size_t *n, char *s, const char *what)
{
    if (*n >= ID_LIST_MAX) {
        free(s);
        return rp_err(RP_EINVAL, "certificate carries more than %d %s entries", ID_LIST_MAX, what);
    }
    char **nl = realloc(*list, (*n + 1) * sizeof *nl);
    if (nl == NULL) {
        free(s);
        return rp_err(RP_ENOMEM, "certificate %s list", what);
    }
    nl[(*n)++] = s;
    *list = nl;
    return 0;
}

static int time_to_epoch(const ASN1_TIME *t, long long *out)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    if (t == NULL || !ASN1_TIME_to_tm(t, &tm))
        return ssl_err(RP_EINVAL, "certificate has an unreadable validity time");
    *out = (long long)timegm(&tm);
    return 0;
}

int rp_identity_from_cert(X509 *cert, struct rp_identity *out)
{
    int rv = 0;
    struct rp_identity id;
    memset(&id, 0, sizeof id);
    if (cert == NULL || out == NULL)
        return rp_err(RP_EINVAL, "rp_identity_from_cert: no certificate");
    const ASN1_OBJECT *oid = cluster_oid();
    if (oid == NULL)
        return ssl_err(RP_ETLS, "OID " OID_TELEPORT_CLUSTER);

    const X509_NAME *name = X509_get_subject_name(cert);
    int count = X509_NAME_entry_count(name);
    for (int i = 0; i < count; i++) {
        X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
        const ASN1_OBJECT *obj = X509_NAME_ENTRY_get_object(e);
        int nid = OBJ_obj2nid(obj);
        char *s = NULL;
        if (nid == NID_commonName) {
            if (id.name != NULL) {
                rv = rp_err(RP_EINVAL, "certificate subject has more than one CN");
                goto err;
            }
            if ((rv = entry_string(e, "CN", &id.name)) != 0)
                goto err;
        } else if (nid == NID_organizationName) {
            if ((rv = entry_string(e, "O", &s)) != 0 ||
                (rv = list_push(&id.groups, &id.n_groups, s, "O")) != 0)
                goto err;
        } else if (nid == NID_localityName) {
            if ((rv = entry_string(e, "L", &s)) != 0 ||
                (rv = list_push(&id.logins, &id.n_logins, s, "L")) != 0)
                goto err;
        } else if (nid == NID_streetAddress) {
            if (id.route_cluster != NULL) {
                rv = rp_err(RP_EINVAL, "certificate subject has more than one StreetAddress");
                goto err;
            }
            if ((rv = entry_string(e, "StreetAddress", &id.route_cluster)) != 0)
                goto err;
        } else if (OBJ_cmp(obj, oid) == 0) {
            if (id.cluster != NULL) {
                rv = rp_err(RP_EINVAL,
                            "certificate subject has more than one " OID_TELEPORT_CLUSTER);
                goto err;
            }
            if ((rv = entry_string(e, "cluster (" OID_TELEPORT_CLUSTER ")", &id.cluster)) != 0)
                goto err;
        }
        /* Other attributes (OU, PostalCode, other private OIDs) are not part of
         * this identity and are ignored, as Teleport's FromSubject does. */
    }
    if (id.name == NULL) {
        rv = rp_err(RP_EINVAL, "certificate subject has no CN");
        goto err;
    }
    if ((rv = time_to_epoch(X509_get0_notAfter(cert), &id.not_after)) != 0)
        goto err;
    *out = id;
    return 0;
err:
    rp_identity_free(&id);
    return rv;
}

/* ---- pins ------------------------------------------------------------------------------ */

int rp_tls_ca_pin(X509 *ca, char *out, size_t outlen)
{
    if (ca == NULL || out == NULL)
        return rp_err(RP_EINVAL, "rp_tls_ca_pin: no certificate");
    if (outlen < 7 + 64 + 1)
        return rp_err(RP_EINVAL, "rp_tls_ca_pin: output of %zu bytes, need 72", outlen);
    unsigned char *der = NULL;
    int n = i2d_X509_PUBKEY(X509_get_X509_PUBKEY(ca), &der);
    if (n <= 0)
        return ssl_err(RP_ETLS, "encoding the CA public key");
    unsigned char md[32];
    unsigned int mdlen = 0;
    int ok = EVP_Digest(der, (size_t)n, md, &mdlen, EVP_sha256(), NULL);
    OPENSSL_free(der);
    if (!ok || mdlen != sizeof md)
        return ssl_err(RP_ETLS, "hashing the CA public key");
    memcpy(out, "sha256:", 7);
    for (unsigned i = 0; i < sizeof md; i++)
        snprintf(out + 7 + 2 * i, 3, "%02x", md[i]);
    return 0;
}

/* ---- PEM ------------------------------------------------------------------------------- */

/* Never prompt for a pass phrase: an encrypted key is an error, not a tty read. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

static int bio_to_string(BIO *b, char **out, const char *what)
{
    char *p = NULL;
    long n = BIO_get_mem_data(b, &p);
    if (n <= 0) {
        BIO_free(b);
        return rp_err(RP_ETLS, "%s: empty PEM", what);
    }
    char *s = malloc((size_t)n + 1);
    if (s == NULL) {
        BIO_free(b);
        return rp_err(RP_ENOMEM, "%s", what);
    }
    memcpy(s, p, (size_t)n);
    s[n] = '\0';
    BIO_free(b);
    *out = s;
    return 0;
}

int rp_tls_key_to_pem(EVP_PKEY *key, char **out)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return ssl_err(RP_ENOMEM, "key to PEM");
    if (!PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL)) {
        BIO_free(b);
        return ssl_err(RP_ETLS, "key to PEM");
    }
    return bio_to_string(b, out, "key to PEM");
}

int rp_tls_pubkey_to_pem(EVP_PKEY *key, char **out)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return ssl_err(RP_ENOMEM, "public key to PEM");
    if (!PEM_write_bio_PUBKEY(b, key)) {
        BIO_free(b);
        return ssl_err(RP_ETLS, "public key to PEM");
    }
    return bio_to_string(b, out, "public key to PEM");
}

int rp_tls_cert_to_pem(X509 *cert, char **out)
{
    BIO *b = BIO_new(BIO_s_mem());
    if (b == NULL)
        return ssl_err(RP_ENOMEM, "certificate to PEM");
    if (!PEM_write_bio_X509(b, cert)) {
        BIO_free(b);
        return ssl_err(RP_ETLS, "certificate to PEM");
    }
    return bio_to_string(b, out, "certificate to PEM");
}

static BIO *pem_bio(const char *pem, size_t n)
{
    if (pem == NULL || n == 0 || n > INT_MAX)
        return NULL;
    return BIO_new_mem_buf(pem, (int)n);
}

int rp_tls_key_from_pem(const char *pem, size_t n, EVP_PKEY **out)
{
    BIO *b = pem_bio(pem, n);
    if (b == NULL)
        return rp_err(RP_EINVAL, "private key PEM is empty or too large (%zu bytes)", n);
    EVP_PKEY *k = PEM_read_bio_PrivateKey(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    if (k == NULL)
        return ssl_err(RP_EINVAL, "no readable private key in PEM");
    int rv = check_key_type(k, "private key");
    if (rv != 0) {
        EVP_PKEY_free(k);
        return rv;
    }
    *out = k;
    return 0;
}

/* The DER prefix of every P-256 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { ecPublicKey,
 * prime256v1 }, BIT STRING (66 bytes: 0x00 then the 65-byte uncompressed point) }. */
static const unsigned char P256_SPKI_PREFIX[26] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

/* P-256 keys, the only kind clients send, without OpenSSL 3's decoder set-up: that
 * took about 330 us a call (a third of a certificate issuance, measured with perf),
 * building the key from the point takes a few. EC_KEY is deprecated in OpenSSL 3 but
 * its point decoding checks the point is on the curve just the same. NULL when the
 * PEM is anything else: the general path below then decides. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static EVP_PKEY *p256_pubkey_fast(const char *pem, size_t n)
{
    BIO *b = pem_bio(pem, n);
    char *name = NULL, *hdr = NULL;
    unsigned char *der = NULL;
    long len = 0;
    EVP_PKEY *k = NULL;
    if (b == NULL)
        return NULL;
    if (PEM_read_bio(b, &name, &hdr, &der, &len) == 1 && strcmp(name, "PUBLIC KEY") == 0 &&
        hdr[0] == '\0' && len == 91 && memcmp(der, P256_SPKI_PREFIX, 26) == 0) {
        EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
        if (ec && EC_KEY_oct2key(ec, der + 26, 65, NULL) == 1 && (k = EVP_PKEY_new()) != NULL &&
            EVP_PKEY_assign_EC_KEY(k, ec) == 1) {
            ec = NULL;
        } else {
            EVP_PKEY_free(k);
            k = NULL;
        }
        EC_KEY_free(ec);
    }
    ERR_clear_error();
    OPENSSL_free(name);
    OPENSSL_free(hdr);
    OPENSSL_free(der);
    BIO_free(b);
    return k;
}
#pragma GCC diagnostic pop

int rp_tls_pubkey_from_pem(const char *pem, size_t n, EVP_PKEY **out)
{
    EVP_PKEY *fast = p256_pubkey_fast(pem, n);
    if (fast != NULL) {
        *out = fast;
        return 0;
    }
    BIO *b = pem_bio(pem, n);
    if (b == NULL)
        return rp_err(RP_EINVAL, "public key PEM is empty or too large (%zu bytes)", n);
    EVP_PKEY *k = PEM_read_bio_PUBKEY(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    if (k == NULL)
        return ssl_err(RP_EINVAL, "no readable public key in PEM");
    int rv = check_key_type(k, "public key");
    if (rv != 0) {
        EVP_PKEY_free(k);
        return rv;
    }
    *out = k;
    return 0;
}

int rp_tls_cert_from_pem(const char *pem, size_t n, X509 **out)
{
    BIO *b = pem_bio(pem, n);
    if (b == NULL)
        return rp_err(RP_EINVAL, "certificate PEM is empty or too large (%zu bytes)", n);
    X509 *x = PEM_read_bio_X509(b, NULL, no_passphrase, NULL);
    BIO_free(b);
    if (x == NULL)
        return ssl_err(RP_EINVAL, "no readable certificate in PEM");
    *out = x;
    return 0;
}

static int path_err(int code, const char *what, const char *path)
{
    char ctx[512];
    snprintf(ctx, sizeof ctx, "%s %s", what, path);
    return err_ctx(code, ctx);
}

/* ---- files ----------------------------------------------------------------------------- */

int rp_tls_write_key(const char *path, EVP_PKEY *key)
{
    char *pem = NULL;
    int rv = rp_tls_key_to_pem(key, &pem);
    if (rv != 0)
        return rv;
    size_t n = strlen(pem);
    rv = rp_write_file(path, pem, n, 0600);
    OPENSSL_cleanse(pem, n);
    free(pem);
    return rv;
}

int rp_tls_write_cert(const char *path, X509 *cert)
{
    char *pem = NULL;
    int rv = rp_tls_cert_to_pem(cert, &pem);
    if (rv != 0)
        return rv;
    rv = rp_write_file(path, pem, strlen(pem), 0644);
    free(pem);
    return rv;
}

int rp_tls_read_key(const char *path, EVP_PKEY **out)
{
    char *pem = NULL;
    size_t n = 0;
    int rv = rp_read_file(path, PEM_FILE_MAX, &pem, &n);
    if (rv != 0)
        return err_ctx(rv, "reading key");
    rv = rp_tls_key_from_pem(pem, n, out);
    OPENSSL_cleanse(pem, n);
    free(pem);
    if (rv != 0)
        return path_err(rv, "key file", path);
    return 0;
}

int rp_tls_read_cert(const char *path, X509 **out)
{
    char *pem = NULL;
    size_t n = 0;
    int rv = rp_read_file(path, PEM_FILE_MAX, &pem, &n);
    if (rv != 0)
        return err_ctx(rv, "reading certificate");
    rv = rp_tls_cert_from_pem(pem, n, out);
    free(pem);
    if (rv != 0)
        return path_err(rv, "certificate file", path);
    return 0;
}

/* ---- SSL contexts ------------------------------------------------------------------------ */

/* What every context shares: TLS 1.3 only, no session resumption (every
 * connection proves its identity afresh), no compression or renegotiation. */
static SSL_CTX *ctx_new(const SSL_METHOD *m)
{
    SSL_CTX *ctx = SSL_CTX_new(m);
    if (ctx == NULL) {
        ssl_err(RP_ETLS, "SSL_CTX_new");
        return NULL;
    }
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION)) {
        SSL_CTX_free(ctx);
        ssl_err(RP_ETLS, "limiting to TLS 1.3");
        return NULL;
    }
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET | SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_num_tickets(ctx, 0);
    return ctx;
}

/* Trust exactly @ca: a fresh store, no system defaults. */
static int ctx_trust_ca(SSL_CTX *ctx, X509 *ca)
{
    X509_STORE *st = X509_STORE_new();
    if (st == NULL)
        return ssl_err(RP_ENOMEM, "X509_STORE_new");
    if (!X509_STORE_add_cert(st, ca)) {
        X509_STORE_free(st);
        return ssl_err(RP_ETLS, "adding the CA to the trust store");
    }
    SSL_CTX_set_cert_store(ctx, st); /* takes @st */
    SSL_CTX_set_verify_depth(ctx, 1);
    return 0;
}

static int ctx_own_cert(SSL_CTX *ctx, X509 *ca, X509 *cert, EVP_PKEY *key)
{
    if (SSL_CTX_use_certificate(ctx, cert) != 1 || SSL_CTX_use_PrivateKey(ctx, key) != 1)
        return ssl_err(RP_ETLS, "loading certificate and key");
    if (SSL_CTX_check_private_key(ctx) != 1)
        return ssl_err(RP_ETLS, "certificate does not match its key");
    /* The CA goes out as chain so a client holding only a pin can find it. */
    if (ca != NULL && SSL_CTX_add1_chain_cert(ctx, ca) != 1)
        return ssl_err(RP_ETLS, "adding the CA as chain");
    return 0;
}

SSL_CTX *rp_tls_server_ctx(X509 *ca, X509 *cert, EVP_PKEY *key, int require_client)
{
    if (ca == NULL || cert == NULL || key == NULL) {
        rp_err(RP_EINVAL, "server TLS context needs CA, certificate and key");
        return NULL;
    }
    SSL_CTX *ctx = ctx_new(TLS_server_method());
    if (ctx == NULL)
        return NULL;
    if (ctx_own_cert(ctx, ca, cert, key) != 0 || ctx_trust_ca(ctx, ca) != 0)
        goto err;
    if (SSL_CTX_add_client_CA(ctx, ca) != 1) {
        ssl_err(RP_ETLS, "client CA list");
        goto err;
    }
    SSL_CTX_set_verify(
        ctx, SSL_VERIFY_PEER | (require_client ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0), NULL);
    return ctx;
err:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *rp_tls_client_ctx(X509 *ca, X509 *cert, EVP_PKEY *key)
{
    if (ca == NULL || (cert == NULL) != (key == NULL)) {
        rp_err(RP_EINVAL,
               "client TLS context needs the CA, and a certificate with its key or neither");
        return NULL;
    }
    SSL_CTX *ctx = ctx_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    if (ctx_trust_ca(ctx, ca) != 0)
        goto err;
    if (cert != NULL && ctx_own_cert(ctx, ca, cert, key) != 0)
        goto err;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    return ctx;
err:
    SSL_CTX_free(ctx);
    return NULL;
}

SSL_CTX *rp_tls_client_ctx_pinned(void)
{
    SSL_CTX *ctx = ctx_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    return ctx;
}

/* ---- peers ---------------------------------------------------------------------------- */

static int cert_time_ok(X509 *x)
{
    return X509_cmp_current_time(X509_get0_notBefore(x)) < 0 &&
           X509_cmp_current_time(X509_get0_notAfter(x)) > 0;
}

int rp_tls_check_pin(SSL *ssl, const char *pin, X509 **ca_out)
{
    char want[80], got[80] = "(none)", p[80];
    if (ssl == NULL || pin == NULL)
        return rp_err(RP_EINVAL, "rp_tls_check_pin: no connection or pin");
    size_t pl = strlen(pin);
    if (pl != 71 || strncmp(pin, "sha256:", 7) != 0)
        return rp_err(RP_EINVAL, "CA pin \"%.80s\" is not sha256:<64 hex digits>", pin);
    for (size_t i = 0; i < pl; i++)
        want[i] = (char)(i >= 7 && pin[i] >= 'A' && pin[i] <= 'F' ? pin[i] - 'A' + 'a' : pin[i]);
    want[pl] = '\0';

    X509 *leaf = SSL_get0_peer_certificate(ssl);
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    if (leaf == NULL || chain == NULL)
        return rp_err(RP_ETLS, "CA pin check: server presented no certificate");

    X509 *ca = NULL;
    for (int i = 0; i < sk_X509_num(chain); i++) {
        X509 *c = sk_X509_value(chain, i);
        if (rp_tls_ca_pin(c, p, sizeof p) != 0)
            continue;
        if (X509_self_signed(c, 0) == 1 || i == sk_X509_num(chain) - 1)
            snprintf(got, sizeof got, "%s", p);
        if (strcmp(p, want) == 0) {
            ca = c;
            break;
        }
    }
    ERR_clear_error();
    if (ca == NULL)
        return rp_err(RP_ETLS, "CA pin mismatch: server presented %s, expected %s", got, want);
    if (X509_self_signed(ca, 1) != 1 || X509_check_ca(ca) < 1) {
        ERR_clear_error();
        return rp_err(RP_ETLS, "CA pin check: the pinned certificate is not a self-signed CA");
    }
    if (X509_check_issued(ca, leaf) != X509_V_OK) {
        ERR_clear_error();
        return rp_err(RP_ETLS, "CA pin check: server certificate was not issued by the pinned CA");
    }
    EVP_PKEY *capub = X509_get0_pubkey(ca);
    if (capub == NULL || X509_verify(leaf, capub) != 1) {
        ERR_clear_error();
        return rp_err(
            RP_ETLS,
            "CA pin check: server certificate signature does not verify with the pinned CA");
    }
    if (!cert_time_ok(ca) || !cert_time_ok(leaf))
        return rp_err(RP_ETLS,
                      "CA pin check: server or CA certificate is expired or not yet valid");
    if (ca_out != NULL) {
        if (!X509_up_ref(ca))
            return ssl_err(RP_ETLS, "X509_up_ref");
        *ca_out = ca;
    }
    return 0;
}

int rp_tls_peer_identity(SSL *ssl, struct rp_identity *out)
{
    if (ssl == NULL)
        return rp_err(RP_EINVAL, "rp_tls_peer_identity: no connection");
    X509 *peer = SSL_get1_peer_certificate(ssl);
    if (peer == NULL)
        return rp_err(RP_EDENIED, "peer presented no certificate");
    /* Only a certificate that verified against the CA is an identity; on a pinned
     * (unverified) connection the caller checks the pin and reads the leaf itself. */
    long vr = SSL_get_verify_result(ssl);
    if (vr != X509_V_OK) {
        X509_free(peer);
        return rp_err(RP_EDENIED, "peer certificate did not verify: %s",
                      X509_verify_cert_error_string(vr));
    }
    int rv = rp_identity_from_cert(peer, out);
    X509_free(peer);
    return rv;
}
