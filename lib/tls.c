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
#include <openssl/core_names.h>
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

#define OID_SYSTEM_ROLE "1.3.9999.2.11"

static pthread_once_t oid_once = PTHREAD_ONCE_INIT;
static ASN1_OBJECT *oid_cluster, *oid_system_role;

/* Built once and only read afterwards: OBJ_txt2obj with no_name does not touch
 * OpenSSL's global object table, so nothing here needs a lock after the once. */
static void oid_init(void)
{
    oid_cluster = OBJ_txt2obj(OID_TELEPORT_CLUSTER, 1);
    oid_system_role = OBJ_txt2obj(OID_SYSTEM_ROLE, 1);
}

static const ASN1_OBJECT *system_role_oid(void)
{
    pthread_once(&oid_once, oid_init);
    return oid_system_role;
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
    free(id->host_id);
    memset(id, 0, sizeof *id);
}

static const char *const system_role_names[] = {
    [RP_SYS_NONE] = "",           [RP_SYS_ADMIN] = RP_ROLE_ADMIN, [RP_SYS_AUTH] = RP_ROLE_AUTH,
    [RP_SYS_NODE] = RP_ROLE_NODE, [RP_SYS_PROXY] = RP_ROLE_PROXY,
};
#define N_SYSTEM_ROLES (sizeof system_role_names / sizeof system_role_names[0])

const char *rp_system_role_name(enum rp_system_role role)
{
    return (unsigned)role < N_SYSTEM_ROLES ? system_role_names[role] : "";
}

enum rp_system_role rp_system_role_from_name(const char *name)
{
    for (unsigned i = 1; name != NULL && i < N_SYSTEM_ROLES; i++)
        if (strcmp(name, system_role_names[i]) == 0)
            return (enum rp_system_role)i;
    return RP_SYS_NONE;
}

int rp_identity_is(const struct rp_identity *id, enum rp_system_role role)
{
    return id != NULL && role != RP_SYS_NONE && id->system_role == role;
}

static int strv_copy(char ***dst, size_t *n_dst, char *const *src, size_t n)
{
    *dst = NULL;
    *n_dst = 0;
    if (n == 0)
        return 0;
    if ((*dst = calloc(n, sizeof **dst)) == NULL)
        return RP_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (((*dst)[i] = strdup(src[i])) == NULL)
            return RP_ENOMEM;
        (*n_dst)++;
    }
    return 0;
}

int rp_identity_copy(struct rp_identity *dst, const struct rp_identity *src)
{
    memset(dst, 0, sizeof *dst);
    dst->not_after = src->not_after;
    dst->system_role = src->system_role;
    if ((src->name && (dst->name = strdup(src->name)) == NULL) ||
        (src->cluster && (dst->cluster = strdup(src->cluster)) == NULL) ||
        (src->route_cluster && (dst->route_cluster = strdup(src->route_cluster)) == NULL) ||
        (src->host_id && (dst->host_id = strdup(src->host_id)) == NULL) ||
        strv_copy(&dst->groups, &dst->n_groups, src->groups, src->n_groups) != 0 ||
        strv_copy(&dst->logins, &dst->n_logins, src->logins, src->n_logins) != 0) {
        rp_identity_free(dst);
        return rp_err(RP_ENOMEM, "copying an identity");
    }
    return 0;
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

/* The DER prefix of every P-256 SubjectPublicKeyInfo: SEQUENCE { SEQUENCE { ecPublicKey,
 * prime256v1 }, BIT STRING (66 bytes: 0x00 then the 65-byte uncompressed point) }. */
static const unsigned char P256_SPKI_PREFIX[26] = {
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01,
    0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00};

/* P-256, made once: making the group anew costs several times what decoding a point
 * does. Shared read-only by every thread (EC_KEY_set_group copies it, EC_POINT
 * functions only read it). */
static EC_GROUP *p256_group_v;
static pthread_once_t p256_group_once = PTHREAD_ONCE_INIT;

static void p256_group_init(void)
{
    p256_group_v = EC_GROUP_new_by_curve_name(NID_X9_62_prime256v1);
}

static const EC_GROUP *p256_group(void)
{
    pthread_once(&p256_group_once, p256_group_init);
    return p256_group_v;
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

/* X.520 upper bounds (RFC 5280 appendix A), in characters, that OpenSSL's X509_NAME
 * applied while leaf subjects were built with it: kept so that issuance refuses what
 * it refused before. StreetAddress and the cluster attribute have none. */
#define UB_COMMON_NAME 64
#define UB_ORGANIZATION_NAME 64
#define UB_LOCALITY_NAME 128

/* Characters of a string already checked by utf8_clean: its non-continuation bytes. */
static size_t utf8_chars(const char *s)
{
    size_t n = 0;
    for (; *s; s++)
        n += ((unsigned char)*s & 0xc0) != 0x80;
    return n;
}

static int check_id_entry(const char *what, const char *s, size_t ub)
{
    int rv = check_id_string(what, s, strlen(s));
    if (rv != 0)
        return rv;
    size_t chars = utf8_chars(s);
    if (chars > ub)
        return rp_err(RP_EINVAL, "identity %s is %zu characters, more than %zu (X.520 bound)", what,
                      chars, ub);
    return 0;
}

static int check_identity(const struct rp_identity *id)
{
    int rv;
    if (id == NULL || id->name == NULL)
        return rp_err(RP_EINVAL, "identity has no name");
    if ((rv = check_id_entry("name", id->name, UB_COMMON_NAME)) != 0)
        return rv;
    if (id->n_groups > ID_LIST_MAX || id->n_logins > ID_LIST_MAX)
        return rp_err(RP_EINVAL, "identity has %zu groups and %zu logins, limit %d each",
                      id->n_groups, id->n_logins, ID_LIST_MAX);
    for (size_t i = 0; i < id->n_groups; i++) {
        if (id->groups[i] == NULL)
            return rp_err(RP_EINVAL, "identity group %zu is NULL", i);
        if ((rv = check_id_entry("group", id->groups[i], UB_ORGANIZATION_NAME)) != 0)
            return rv;
    }
    for (size_t i = 0; i < id->n_logins; i++) {
        if (id->logins[i] == NULL)
            return rp_err(RP_EINVAL, "identity login %zu is NULL", i);
        if ((rv = check_id_entry("login", id->logins[i], UB_LOCALITY_NAME)) != 0)
            return rv;
    }
    if (id->cluster && (rv = check_id_string("cluster", id->cluster, strlen(id->cluster))) != 0)
        return rv;
    if (id->route_cluster &&
        (rv = check_id_string("route cluster", id->route_cluster, strlen(id->route_cluster))) != 0)
        return rv;
    if ((unsigned)id->system_role >= N_SYSTEM_ROLES)
        return rp_err(RP_EINVAL, "identity has unknown system role %d", (int)id->system_role);
    if (id->system_role != RP_SYS_NONE) {
        if (id->host_id == NULL || id->host_id[0] == '\0')
            return rp_err(RP_EINVAL, "system identity %s has no host id", id->name);
        if ((rv = check_id_entry("host id", id->host_id, ID_STR_MAX)) != 0)
            return rv;
    } else if (id->host_id != NULL) {
        return rp_err(RP_EINVAL, "identity %s has a host id but no system role", id->name);
    }
    return 0;
}

/* ---- a DER writer ------------------------------------------------------------------------ */

/* Leaf certificates are written as DER directly rather than through X509 objects:
 * OpenSSL's generic ASN.1 machinery (names, public key, encoding the TBS twice, the
 * frees) cost more than the ECDSA signature itself. A constructed value reserves the
 * longest header it may need and closes the gap once its length is known; the
 * memmoves are a few hundred bytes per certificate. */
struct der {
    unsigned char *p;
    size_t len, cap;
    int err; /* out of memory or a value over 4 GiB: the bytes are garbage */
};

#define DER_HDR_MAX 6 /* tag, 0x84, four length octets */

static int der_reserve(struct der *d, size_t n)
{
    if (d->err)
        return 0;
    if (n <= d->cap - d->len)
        return 1;
    size_t cap = d->cap ? d->cap : 1024;
    while (cap - d->len < n) {
        if (cap > SIZE_MAX / 2) {
            d->err = 1;
            return 0;
        }
        cap *= 2;
    }
    unsigned char *np = realloc(d->p, cap);
    if (np == NULL) {
        d->err = 1;
        return 0;
    }
    d->p = np;
    d->cap = cap;
    return 1;
}

static void der_raw(struct der *d, const void *b, size_t n)
{
    if (n > 0 && der_reserve(d, n)) {
        memcpy(d->p + d->len, b, n);
        d->len += n;
    }
}

/* Octets of the DER length of @n: short form below 128, else 0x8k and k octets. */
static size_t der_len_size(size_t n)
{
    return n < 0x80 ? 1 : n <= 0xff ? 2 : n <= 0xffff ? 3 : n <= 0xffffff ? 4 : 5;
}

static void der_put_len(unsigned char *out, size_t n, size_t size)
{
    if (size == 1) {
        out[0] = (unsigned char)n;
        return;
    }
    out[0] = (unsigned char)(0x80 | (size - 1));
    for (size_t i = size - 1; i > 0; i--, n >>= 8)
        out[i] = (unsigned char)(n & 0xff);
}

static void der_tlv(struct der *d, unsigned char tag, const void *v, size_t n)
{
    unsigned char h[DER_HDR_MAX];
    if (n > 0xffffffffu) {
        d->err = 1;
        return;
    }
    size_t ls = der_len_size(n);
    h[0] = tag;
    der_put_len(h + 1, n, ls);
    der_raw(d, h, 1 + ls);
    der_raw(d, v, n);
}

/* Opens a constructed value; returns where it starts, for der_end. */
static size_t der_begin(struct der *d, unsigned char tag)
{
    size_t at = d->len;
    if (der_reserve(d, DER_HDR_MAX)) {
        d->p[at] = tag;
        d->len += DER_HDR_MAX;
    }
    return at;
}

static void der_end(struct der *d, size_t at)
{
    if (d->err)
        return;
    size_t body = d->len - at - DER_HDR_MAX;
    if (body > 0xffffffffu) {
        d->err = 1;
        return;
    }
    size_t ls = der_len_size(body);
    der_put_len(d->p + at + 1, body, ls);
    memmove(d->p + at + 1 + ls, d->p + at + DER_HDR_MAX, body);
    d->len = at + 1 + ls + body;
}

/* ---- leaf certificates --------------------------------------------------------------- */

#define TAG_INTEGER 0x02
#define TAG_BIT_STRING 0x03
#define TAG_OCTET_STRING 0x04
#define TAG_OID 0x06
#define TAG_UTF8STRING 0x0c
#define TAG_UTCTIME 0x17
#define TAG_GENERALIZEDTIME 0x18
#define TAG_SEQUENCE 0x30
#define TAG_SET 0x31
#define TAG_CTX0_PRIM 0x80 /* [0] IMPLICIT: AuthorityKeyIdentifier.keyIdentifier */
#define TAG_GN_DNS 0x82    /* GeneralName dNSName [2] IMPLICIT IA5String */
#define TAG_GN_IP 0x87     /* GeneralName iPAddress [7] IMPLICIT OCTET STRING */
#define TAG_EXTENSIONS 0xa3

/* [0] EXPLICIT INTEGER 2: version v3. */
static const unsigned char DER_VERSION_V3[] = {0xa0, 0x03, 0x02, 0x01, 0x02};
/* AlgorithmIdentifier ecdsa-with-SHA256 (1.2.840.10045.4.3.2), parameters absent. */
static const unsigned char DER_ALG_ECDSA_SHA256[] = {0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86,
                                                     0x48, 0xce, 0x3d, 0x04, 0x03, 0x02};
static const unsigned char OID_CN[] = {0x55, 0x04, 0x03};                  /* 2.5.4.3 */
static const unsigned char OID_L[] = {0x55, 0x04, 0x07};                   /* 2.5.4.7 */
static const unsigned char OID_STREET[] = {0x55, 0x04, 0x09};              /* 2.5.4.9 */
static const unsigned char OID_O[] = {0x55, 0x04, 0x0a};                   /* 2.5.4.10 */
static const unsigned char OID_CLUSTER[] = {0x2b, 0xce, 0x0f, 0x01, 0x07}; /* 1.3.9999.1.7 */
static const unsigned char OID_SYSROLE[] = {0x2b, 0xce, 0x0f, 0x02, 0x0b}; /* 1.3.9999.2.11 */
static const unsigned char OID_SAN[] = {0x55, 0x1d, 0x11};                 /* 2.5.29.17 */
static const unsigned char OID_AKID[] = {0x55, 0x1d, 0x23};                /* 2.5.29.35 */
/* The extensions every leaf carries first, as add_leaf_exts made them with OpenSSL. */
static const unsigned char DER_LEAF_EXTS[] = {
    /* basicConstraints (2.5.29.19), critical: SEQUENCE {}, cA FALSE being the default */
    0x30, 0x0c, 0x06, 0x03, 0x55, 0x1d, 0x13, 0x01, 0x01, 0xff, 0x04, 0x02, 0x30, 0x00,
    /* keyUsage (2.5.29.15), critical: digitalSignature (bit 0) and keyAgreement (bit 4) */
    0x30, 0x0e, 0x06, 0x03, 0x55, 0x1d, 0x0f, 0x01, 0x01, 0xff, 0x04, 0x04, 0x03, 0x02, 0x03, 0x88,
    /* extKeyUsage (2.5.29.37): serverAuth (1.3.6.1.5.5.7.3.1), clientAuth (...3.2) */
    0x30, 0x1d, 0x06, 0x03, 0x55, 0x1d, 0x25, 0x04, 0x16, 0x30, 0x14, 0x06, 0x08, 0x2b, 0x06, 0x01,
    0x05, 0x05, 0x07, 0x03, 0x01, 0x06, 0x08, 0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02};

/* The latest instant a certificate time can name: 9999-12-31T23:59:59Z. */
#define CERT_TIME_MAX 253402300799LL

/* 128 random bits as a positive INTEGER (at most 17 DER octets, within RFC 5280's
 * 20); zero is not a valid serial, so draw again. */
static int put_serial(struct der *d)
{
    unsigned char b[17];
    size_t i;
    do {
        if (RAND_bytes(b + 1, 16) != 1)
            return ssl_err(RP_ETLS, "random serial");
        for (i = 1; i < sizeof b && b[i] == 0; i++)
            ;
    } while (i == sizeof b);
    /* Minimal DER: no leading zero octets but one before a set top bit, which
     * would otherwise make the number negative. */
    if (b[i] & 0x80)
        b[--i] = 0;
    der_tlv(d, TAG_INTEGER, b + i, sizeof b - i);
    return 0;
}

static char *put2(char *s, int v)
{
    s[0] = (char)('0' + v / 10 % 10);
    s[1] = (char)('0' + v % 10);
    return s + 2;
}

/* RFC 5280 4.1.2.5: UTCTime for the years 1950 through 2049, GeneralizedTime
 * otherwise. The caller keeps @t within years 1..9999. */
static void put_time(struct der *d, long long t)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char s[16], *e = s;
    if (gmtime_r(&tt, &tm) == NULL) {
        d->err = 1;
        return;
    }
    int year = tm.tm_year + 1900;
    int utc = year >= 1950 && year <= 2049;
    if (!utc)
        e = put2(e, year / 100);
    e = put2(e, year % 100);
    e = put2(e, tm.tm_mon + 1);
    e = put2(e, tm.tm_mday);
    e = put2(e, tm.tm_hour);
    e = put2(e, tm.tm_min);
    e = put2(e, tm.tm_sec);
    *e++ = 'Z';
    der_tlv(d, utc ? TAG_UTCTIME : TAG_GENERALIZEDTIME, s, (size_t)(e - s));
}

/* One single-valued RDN: SET { SEQUENCE { type, UTF8String value } }. */
static void put_rdn(struct der *d, const unsigned char *oid, size_t oid_len, const char *v)
{
    size_t set = der_begin(d, TAG_SET);
    size_t atv = der_begin(d, TAG_SEQUENCE);
    der_tlv(d, TAG_OID, oid, oid_len);
    der_tlv(d, TAG_UTF8STRING, v, strlen(v));
    der_end(d, atv);
    der_end(d, set);
}

/* The subject as Teleport encodes an identity, one RDN per attribute. */
static void put_subject(struct der *d, const struct rp_identity *id)
{
    size_t name = der_begin(d, TAG_SEQUENCE);
    put_rdn(d, OID_CN, sizeof OID_CN, id->name);
    for (size_t i = 0; i < id->n_groups; i++)
        put_rdn(d, OID_O, sizeof OID_O, id->groups[i]);
    for (size_t i = 0; i < id->n_logins; i++)
        put_rdn(d, OID_L, sizeof OID_L, id->logins[i]);
    if (id->route_cluster)
        put_rdn(d, OID_STREET, sizeof OID_STREET, id->route_cluster);
    if (id->cluster)
        put_rdn(d, OID_CLUSTER, sizeof OID_CLUSTER, id->cluster);
    der_end(d, name);
}

/* The system-role extension (non-critical, so that peers that do not know it still
 * accept the certificate; they simply see no system rights in it). */
static void put_system_role(struct der *d, const struct rp_identity *id)
{
    const char *role = rp_system_role_name(id->system_role);
    size_t ext = der_begin(d, TAG_SEQUENCE);
    der_tlv(d, TAG_OID, OID_SYSROLE, sizeof OID_SYSROLE);
    size_t os = der_begin(d, TAG_OCTET_STRING);
    size_t seq = der_begin(d, TAG_SEQUENCE);
    der_tlv(d, TAG_UTF8STRING, role, strlen(role));
    der_tlv(d, TAG_UTF8STRING, id->host_id, strlen(id->host_id));
    der_end(d, seq);
    der_end(d, os);
    der_end(d, ext);
}

/* subjectAltName from @sans: an entry that parses as an IPv4/IPv6 address is an IP
 * SAN, anything else must look like a DNS name (letters, digits, '-', '.', '_', a
 * leading "*." wildcard). */
static int put_sans(struct der *d, const char *const *sans, size_t n)
{
    size_t ext = der_begin(d, TAG_SEQUENCE);
    der_tlv(d, TAG_OID, OID_SAN, sizeof OID_SAN);
    size_t os = der_begin(d, TAG_OCTET_STRING);
    size_t gens = der_begin(d, TAG_SEQUENCE);
    for (size_t i = 0; i < n; i++) {
        const char *s = sans[i];
        if (s == NULL || s[0] == '\0' || strlen(s) > 253)
            return rp_err(RP_EINVAL, "subjectAltName %zu is empty or too long", i);
        /* OpenSSL's parser, so that what counts as an address is what it was. */
        ASN1_OCTET_STRING *ip = a2i_IPADDRESS(s);
        if (ip != NULL) {
            der_tlv(d, TAG_GN_IP, ASN1_STRING_get0_data(ip), (size_t)ASN1_STRING_length(ip));
            ASN1_OCTET_STRING_free(ip);
            continue;
        }
        ERR_clear_error();
        for (const char *p = s; *p; p++) {
            int ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '.' || *p == '_' ||
                     (*p == '*' && p == s && p[1] == '.');
            if (!ok)
                return rp_err(RP_EINVAL,
                              "subjectAltName \"%.64s\" is neither an IP address nor a DNS name",
                              s);
        }
        der_tlv(d, TAG_GN_DNS, s, strlen(s));
    }
    der_end(d, gens);
    der_end(d, os);
    der_end(d, ext);
    return 0;
}

/* What both issuing functions check before building anything, @now being the time
 * the certificate will be issued at. */
static int issue_check(const char *fn, EVP_PKEY *ca_key, X509 *ca_cert,
                       const struct rp_identity *id, const char *const *sans, size_t n_sans,
                       long ttl_s, long long now)
{
    int rv;
    if (ttl_s <= 0)
        return rp_err(RP_EINVAL, "certificate ttl %ld must be positive", ttl_s);
    if ((long long)ttl_s > CERT_TIME_MAX - now)
        return rp_err(RP_EINVAL, "certificate ttl %ld reaches past the year 9999", ttl_s);
    if (sans == NULL && n_sans > 0)
        return rp_err(RP_EINVAL, "%s: %zu SANs but no array", fn, n_sans);
    if ((rv = check_identity(id)) != 0)
        return rv;
    /* The signature algorithm written is ECDSA; the CA is P-256 like every key here. */
    if (EVP_PKEY_get_base_id(ca_key) != EVP_PKEY_EC)
        return rp_err(RP_EINVAL, "%s: the CA key is %s, not EC", fn,
                      EVP_PKEY_get0_type_name(ca_key) ? EVP_PKEY_get0_type_name(ca_key) : "?");
    if (X509_check_private_key(ca_cert, ca_key) != 1)
        return ssl_err(RP_EINVAL, "CA key does not match the CA certificate");
    return 0;
}

static int sign_sha256(EVP_PKEY *key, const unsigned char *m, size_t n, unsigned char *sig,
                       size_t *siglen)
{
    EVP_MD_CTX *mc = EVP_MD_CTX_new();
    int ok = mc != NULL && EVP_DigestSignInit(mc, NULL, EVP_sha256(), NULL, key) == 1 &&
             EVP_DigestSign(mc, sig, siglen, m, n) == 1;
    EVP_MD_CTX_free(mc);
    return ok ? 0 : ssl_err(RP_ETLS, "signing the certificate");
}

/* The one leaf certificate builder: the DER Certificate for @spki (a P-256
 * SubjectPublicKeyInfo) carrying @id, valid from @now - BACKDATE_S to @now + @ttl_s,
 * signed by @ca_key, into @d. Byte for byte what OpenSSL's X509 objects produced
 * before (tests/test_tls.c compares), so rp_identity_from_cert and peers read it
 * alike. The caller has run issue_check. */
static int leaf_der(EVP_PKEY *ca_key, X509 *ca_cert, const unsigned char *spki,
                    const struct rp_identity *id, const char *const *sans, size_t n_sans,
                    long ttl_s, long long now, struct der *d)
{
    int rv;
    const ASN1_OCTET_STRING *skid = X509_get0_subject_key_id(ca_cert);
    if (skid == NULL)
        return rp_err(RP_ETLS, "the CA certificate has no subject key identifier");
    /* The issuer is the CA's subject as encoded in the CA certificate, copied as is
     * (X509_NAME keeps its DER, so this costs no encoding). */
    const unsigned char *issuer = NULL;
    size_t issuer_len = 0;
    if (!X509_NAME_get0_der(X509_get_subject_name(ca_cert), &issuer, &issuer_len))
        return ssl_err(RP_ETLS, "encoding the CA subject");

    size_t cert = der_begin(d, TAG_SEQUENCE);
    size_t tbs = der_begin(d, TAG_SEQUENCE);
    der_raw(d, DER_VERSION_V3, sizeof DER_VERSION_V3);
    if ((rv = put_serial(d)) != 0)
        return rv;
    der_raw(d, DER_ALG_ECDSA_SHA256, sizeof DER_ALG_ECDSA_SHA256);
    der_raw(d, issuer, issuer_len);
    size_t validity = der_begin(d, TAG_SEQUENCE);
    put_time(d, now - BACKDATE_S);
    put_time(d, now + ttl_s);
    der_end(d, validity);
    put_subject(d, id);
    der_raw(d, spki, RP_TLS_P256_SPKI_LEN);

    size_t x3 = der_begin(d, TAG_EXTENSIONS);
    size_t exts = der_begin(d, TAG_SEQUENCE);
    der_raw(d, DER_LEAF_EXTS, sizeof DER_LEAF_EXTS);
    size_t akid = der_begin(d, TAG_SEQUENCE);
    der_tlv(d, TAG_OID, OID_AKID, sizeof OID_AKID);
    size_t akid_os = der_begin(d, TAG_OCTET_STRING);
    size_t akid_seq = der_begin(d, TAG_SEQUENCE);
    der_tlv(d, TAG_CTX0_PRIM, ASN1_STRING_get0_data(skid), (size_t)ASN1_STRING_length(skid));
    der_end(d, akid_seq);
    der_end(d, akid_os);
    der_end(d, akid);
    if (n_sans > 0 && (rv = put_sans(d, sans, n_sans)) != 0)
        return rv;
    if (id->system_role != RP_SYS_NONE)
        put_system_role(d, id);
    der_end(d, exts);
    der_end(d, x3);
    der_end(d, tbs);
    if (d->err)
        return rp_err(RP_ENOMEM, "building the certificate");

    unsigned char sig[160]; /* ECDSA signature DER: 72 octets for P-256, 139 for P-521 */
    size_t siglen = sizeof sig;
    if (EVP_PKEY_get_size(ca_key) > (int)sizeof sig)
        return rp_err(RP_EINVAL, "CA key signatures of %d bytes are too large",
                      EVP_PKEY_get_size(ca_key));
    if ((rv = sign_sha256(ca_key, d->p + tbs, d->len - tbs, sig, &siglen)) != 0)
        return rv;
    der_raw(d, DER_ALG_ECDSA_SHA256, sizeof DER_ALG_ECDSA_SHA256);
    size_t bits = der_begin(d, TAG_BIT_STRING);
    der_raw(d, "", 1); /* no unused bits */
    der_raw(d, sig, siglen);
    der_end(d, bits);
    der_end(d, cert);
    if (d->err)
        return rp_err(RP_ENOMEM, "building the certificate");
    return 0;
}

/* "-----BEGIN @label-----\n", base64 in 64-character lines, "-----END @label-----\n". */
static int der_to_pem(const unsigned char *der, size_t n, const char *label, char **out)
{
    size_t ll = strlen(label);
    size_t lines = (n + 47) / 48;
    size_t cap = 11 + ll + 6 + lines * 65 + 9 + ll + 6 + 1;
    char *s = malloc(cap), *o = s;
    if (s == NULL)
        return rp_err(RP_ENOMEM, "%s to PEM", label);
    o += sprintf(o, "-----BEGIN %s-----\n", label);
    for (size_t i = 0; i < n; i += 48) {
        size_t k = n - i < 48 ? n - i : 48;
        o += EVP_EncodeBlock((unsigned char *)o, der + i, (int)k);
        *o++ = '\n';
    }
    sprintf(o, "-----END %s-----\n", label);
    *out = s;
    return 0;
}

/* @k's SubjectPublicKeyInfo, which must be that of a P-256 key. Keys made by
 * OpenSSL 3's providers (rp_tls_keygen) hand out their point directly, where
 * i2d_PUBKEY would set up an encoder (~90 us); keys read by rp_tls_pubkey_from_pem
 * are legacy EC_KEYs, which do not answer that parameter but encode cheaply. */
static int pkey_spki(EVP_PKEY *k, unsigned char spki[RP_TLS_P256_SPKI_LEN])
{
    unsigned char pt[RP_TLS_P256_SPKI_LEN - sizeof P256_SPKI_PREFIX];
    size_t n = 0;
    int rv = check_key_type(k, "public key");
    if (rv != 0)
        return rv;
    int got =
        EVP_PKEY_get_octet_string_param(k, OSSL_PKEY_PARAM_ENCODED_PUBLIC_KEY, pt, sizeof pt, &n);
    if (got == 1 && n == sizeof pt && pt[0] == 0x04) {
        memcpy(spki, P256_SPKI_PREFIX, sizeof P256_SPKI_PREFIX);
        memcpy(spki + sizeof P256_SPKI_PREFIX, pt, sizeof pt);
        return 0;
    }
    ERR_clear_error();
    unsigned char *der = NULL;
    int len = i2d_PUBKEY(k, &der);
    int ok = len == RP_TLS_P256_SPKI_LEN &&
             memcmp(der, P256_SPKI_PREFIX, sizeof P256_SPKI_PREFIX) == 0 &&
             der[sizeof P256_SPKI_PREFIX] == 0x04;
    if (ok)
        memcpy(spki, der, RP_TLS_P256_SPKI_LEN);
    OPENSSL_free(der);
    if (ok)
        return 0;
    if (len <= 0)
        return ssl_err(RP_EINVAL, "encoding the public key");
    return rp_err(RP_EINVAL,
                  "public key is P-256 but not a named curve with an uncompressed point");
}

int rp_tls_issue(EVP_PKEY *ca_key, X509 *ca_cert, EVP_PKEY *pubkey, const struct rp_identity *id,
                 const char *const *sans, size_t n_sans, long ttl_s, X509 **out)
{
    int rv;
    if (ca_key == NULL || ca_cert == NULL || pubkey == NULL || out == NULL)
        return rp_err(RP_EINVAL, "rp_tls_issue: missing CA key, CA certificate or public key");
    long long now = (long long)time(NULL);
    if ((rv = issue_check("rp_tls_issue", ca_key, ca_cert, id, sans, n_sans, ttl_s, now)) != 0)
        return rv;
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    if ((rv = pkey_spki(pubkey, spki)) != 0)
        return rv;
    struct der d = {0};
    if ((rv = leaf_der(ca_key, ca_cert, spki, id, sans, n_sans, ttl_s, now, &d)) == 0) {
        const unsigned char *p = d.p;
        X509 *x = d2i_X509(NULL, &p, (long)d.len);
        if (x == NULL)
            rv = ssl_err(RP_ETLS, "reading back the certificate just built");
        else
            *out = x;
    }
    free(d.p);
    return rv;
}

int rp_tls_issue_pem(EVP_PKEY *ca_key, X509 *ca_cert, const unsigned char *spki, size_t spki_len,
                     const struct rp_identity *id, const char *const *sans, size_t n_sans,
                     long ttl_s, char **pem_out)
{
    int rv;
    if (ca_key == NULL || ca_cert == NULL || spki == NULL || pem_out == NULL)
        return rp_err(RP_EINVAL,
                      "rp_tls_issue_pem: missing CA key, CA certificate, public key or output");
    /* The point itself was checked by rp_tls_pubkey_spki (checking it again would be
     * a microsecond a certificate); this only keeps other bytes from being signed. */
    if (spki_len != RP_TLS_P256_SPKI_LEN ||
        memcmp(spki, P256_SPKI_PREFIX, sizeof P256_SPKI_PREFIX) != 0 ||
        spki[sizeof P256_SPKI_PREFIX] != 0x04)
        return rp_err(RP_EINVAL,
                      "rp_tls_issue_pem: %zu bytes are not a P-256 SubjectPublicKeyInfo with an "
                      "uncompressed point",
                      spki_len);
    long long now = (long long)time(NULL);
    if ((rv = issue_check("rp_tls_issue_pem", ca_key, ca_cert, id, sans, n_sans, ttl_s, now)) != 0)
        return rv;
    struct der d = {0};
    if ((rv = leaf_der(ca_key, ca_cert, spki, id, sans, n_sans, ttl_s, now, &d)) == 0)
        rv = der_to_pem(d.p, d.len, "CERTIFICATE", pem_out);
    free(d.p);
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

/* One UTF8String of the system-role extension, checked like a subject attribute. */
static int sysrole_string(const ASN1_TYPE *t, const char *what, char **out)
{
    if (t == NULL || t->type != V_ASN1_UTF8STRING)
        return rp_err(RP_EINVAL, "certificate system role extension: %s is not a UTF8String", what);
    const ASN1_STRING *v = t->value.utf8string;
    int n = ASN1_STRING_length(v);
    if (n <= 0 || n > ID_STR_MAX)
        return rp_err(RP_EINVAL, "certificate system role extension: %s is %d bytes, want 1..%d",
                      what, n, ID_STR_MAX);
    int rv = check_id_string(what, (const char *)ASN1_STRING_get0_data(v), (size_t)n);
    if (rv != 0)
        return err_ctx(rv, "certificate system role extension");
    if ((*out = strndup((const char *)ASN1_STRING_get0_data(v), (size_t)n)) == NULL)
        return rp_err(RP_ENOMEM, "certificate system role");
    return 0;
}

/* The system role, from the 1.3.9999.2.11 extension alone: absent means a user. A
 * certificate with two of them, or one that does not parse, is refused outright
 * rather than read as a user. */
static int read_system_role(X509 *cert, struct rp_identity *id)
{
    const ASN1_OBJECT *oid = system_role_oid();
    if (oid == NULL)
        return ssl_err(RP_ETLS, "OID " OID_SYSTEM_ROLE);
    int idx = X509_get_ext_by_OBJ(cert, oid, -1);
    if (idx < 0)
        return 0;
    if (X509_get_ext_by_OBJ(cert, oid, idx) >= 0)
        return rp_err(RP_EINVAL, "certificate has more than one system role extension");
    const ASN1_OCTET_STRING *os = X509_EXTENSION_get_data(X509_get_ext(cert, idx));
    const unsigned char *p = ASN1_STRING_get0_data(os);
    long len = ASN1_STRING_length(os);
    const unsigned char *end = p + len;
    STACK_OF(ASN1_TYPE) *seq = d2i_ASN1_SEQUENCE_ANY(NULL, &p, len);
    char *role = NULL;
    int rv = 0;
    if (seq == NULL || p != end || sk_ASN1_TYPE_num(seq) != 2) {
        ERR_clear_error();
        rv = rp_err(RP_EINVAL, "certificate system role extension is not "
                               "SEQUENCE { UTF8String role, UTF8String host_id }");
        goto out;
    }
    if ((rv = sysrole_string(sk_ASN1_TYPE_value(seq, 0), "role", &role)) != 0 ||
        (rv = sysrole_string(sk_ASN1_TYPE_value(seq, 1), "host id", &id->host_id)) != 0)
        goto out;
    id->system_role = rp_system_role_from_name(role);
    if (id->system_role == RP_SYS_NONE)
        rv = rp_err(RP_EINVAL, "certificate names unknown system role \"%s\"", role);
out:
    free(role);
    sk_ASN1_TYPE_pop_free(seq, ASN1_TYPE_free);
    return rv;
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
    if ((rv = read_system_role(cert, &id)) != 0)
        goto err;
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

/* P-256 keys, the only kind clients send, without OpenSSL 3's decoder set-up: that
 * took about 330 us a call (a third of a certificate issuance, measured with perf).
 * rp_tls_pubkey_spki parses and checks the PEM; the key is then built from the point
 * on the shared group. EC_KEY is deprecated in OpenSSL 3 but cheap to build. NULL
 * when the PEM is anything else: the general path below then decides, and says why. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
static EVP_PKEY *p256_pubkey_fast(const char *pem, size_t n)
{
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    const EC_GROUP *g = p256_group();
    EC_KEY *ec = NULL;
    EVP_PKEY *k = NULL;
    if (g != NULL && rp_tls_pubkey_spki(pem, n, spki) == 0 && (ec = EC_KEY_new()) != NULL &&
        EC_KEY_set_group(ec, g) == 1 &&
        EC_KEY_oct2key(ec, spki + sizeof P256_SPKI_PREFIX,
                       RP_TLS_P256_SPKI_LEN - sizeof P256_SPKI_PREFIX, NULL) == 1 &&
        (k = EVP_PKEY_new()) != NULL && EVP_PKEY_assign_EC_KEY(k, ec) == 1) {
        ec = NULL;
    } else {
        EVP_PKEY_free(k);
        k = NULL;
    }
    EC_KEY_free(ec);
    ERR_clear_error();
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

/* Longest public key PEM looked at: room for RSA keys, so that the error can say
 * what the key is rather than only that it is too long. */
#define PUBKEY_PEM_MAX 4096

/* Value of a base64 character, -1 for anything else ('=' included). */
static int b64_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Strict base64: whole quanta, '=' only as the padding of the last, and no bits set
 * past the data (one encoding per byte string). Returns the byte count, or -1. */
static long b64_decode(const char *in, size_t n, unsigned char *out)
{
    size_t o = 0;
    if (n == 0 || n % 4 != 0)
        return -1;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int k = 0; k < 4; k++) {
            v[k] = b64_val((unsigned char)in[i + k]);
            if (v[k] < 0) {
                /* Padding only in the last group of four: two data characters
                 * then "==", or three then "=". */
                if (in[i + k] != '=' || i + 4 != n || k < 2 || (k == 2 && in[i + 3] != '='))
                    return -1;
                v[k] = 0;
                pad++;
            }
        }
        if ((pad == 1 && (v[2] & 0x03) != 0) || (pad == 2 && (v[1] & 0x0f) != 0))
            return -1;
        unsigned q =
            (unsigned)v[0] << 18 | (unsigned)v[1] << 12 | (unsigned)v[2] << 6 | (unsigned)v[3];
        out[o++] = (unsigned char)(q >> 16);
        if (pad < 2)
            out[o++] = (unsigned char)(q >> 8);
        if (pad < 1)
            out[o++] = (unsigned char)q;
    }
    return (long)o;
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Consumes a line end ("\n" or "\r\n") at *@p; false if there is none. */
static int eat_eol(const char **p, const char *e)
{
    if (*p < e && **p == '\r')
        (*p)++;
    if (*p < e && **p == '\n') {
        (*p)++;
        return 1;
    }
    return 0;
}

/* Why a well-formed SubjectPublicKeyInfo that is not our 91-byte P-256 form was
 * refused, in the words rp_tls_pubkey_from_pem uses. Error path only: the decoder
 * is slow. */
static int spki_refusal(const unsigned char *der, long n)
{
    const unsigned char *q = der;
    EVP_PKEY *k = d2i_PUBKEY(NULL, &q, n);
    if (k == NULL || q != der + n) {
        EVP_PKEY_free(k);
        ERR_clear_error();
        return rp_err(RP_EINVAL, "public key PEM holds no readable SubjectPublicKeyInfo");
    }
    int rv = check_key_type(k, "public key");
    EVP_PKEY_free(k);
    if (rv != 0)
        return rv;
    return rp_err(RP_EINVAL,
                  "public key is P-256 but not a named curve with an uncompressed point");
}

int rp_tls_pubkey_spki(const char *pem, size_t n, unsigned char spki[RP_TLS_P256_SPKI_LEN])
{
    static const char begin[] = "-----BEGIN ", dashes[] = "-----";
    static const char end_line[] = "-----END PUBLIC KEY-----";
    char b64[PUBKEY_PEM_MAX];
    unsigned char der[PUBKEY_PEM_MAX / 4 * 3];
    size_t nb = 0;
    if (pem == NULL || spki == NULL || n == 0 || n > PUBKEY_PEM_MAX)
        return rp_err(RP_EINVAL, "public key PEM is empty or too large (%zu bytes)", n);
    const char *p = pem, *e = pem + n;
    while (p < e && is_space(*p))
        p++;
    if ((size_t)(e - p) < sizeof begin - 1 || memcmp(p, begin, sizeof begin - 1) != 0)
        return rp_err(RP_EINVAL, "public key PEM does not start with -----BEGIN");
    p += sizeof begin - 1;
    const char *label = p;
    while (p < e && *p != '-' && *p != '\n')
        p++;
    size_t label_len = (size_t)(p - label);
    if ((size_t)(e - p) < sizeof dashes - 1 || memcmp(p, dashes, sizeof dashes - 1) != 0)
        return rp_err(RP_EINVAL, "public key PEM has a malformed BEGIN line");
    if (label_len != 10 || memcmp(label, "PUBLIC KEY", 10) != 0) {
        /* Named in the message only if printable: this text comes from the network. */
        int show = label_len <= 40;
        for (size_t i = 0; show && i < label_len; i++)
            show = label[i] >= 0x20 && label[i] < 0x7f;
        return rp_err(RP_EINVAL, "public key PEM holds a \"%.*s\" block, not PUBLIC KEY",
                      show ? (int)label_len : 1, show ? label : "?");
    }
    p += sizeof dashes - 1;
    if (!eat_eol(&p, e))
        return rp_err(RP_EINVAL, "public key PEM has a malformed BEGIN line");

    /* Body lines up to the END line. nb cannot overflow b64: it only holds bytes of @pem. */
    while (p < e && *p != '-') {
        const char *line = p, *nl = memchr(p, '\n', (size_t)(e - p));
        const char *le = nl != NULL && nl > p && nl[-1] == '\r' ? nl - 1 : nl;
        if (nl == NULL)
            return rp_err(RP_EINVAL, "public key PEM is truncated (no END line)");
        if (le == line)
            return rp_err(RP_EINVAL, "public key PEM has an empty line in its body");
        if (memchr(line, ':', (size_t)(le - line)) != NULL)
            return rp_err(RP_EINVAL, "public key PEM has a header line, which is not allowed");
        for (; p < le; p++) {
            if (b64_val((unsigned char)*p) < 0 && *p != '=')
                return rp_err(RP_EINVAL, "public key PEM has a byte 0x%02x that is not base64",
                              (unsigned char)*p);
            b64[nb++] = *p;
        }
        p = nl + 1;
    }
    if ((size_t)(e - p) < sizeof end_line - 1 || memcmp(p, end_line, sizeof end_line - 1) != 0)
        return rp_err(RP_EINVAL, "public key PEM is truncated or its END line is not "
                                 "\"-----END PUBLIC KEY-----\"");
    p += sizeof end_line - 1;
    if (p < e && !eat_eol(&p, e))
        return rp_err(RP_EINVAL, "public key PEM has data after its END line");
    while (p < e && is_space(*p))
        p++;
    if (p < e) {
        if ((size_t)(e - p) >= sizeof begin - 1 && memcmp(p, begin, sizeof begin - 1) == 0)
            return rp_err(RP_EINVAL, "public key PEM holds more than one PEM block");
        return rp_err(RP_EINVAL, "public key PEM has data after its END line");
    }

    long len = b64_decode(b64, nb, der);
    if (len < 0)
        return rp_err(RP_EINVAL, "public key PEM body is not valid base64 (%zu characters)", nb);
    if (len != RP_TLS_P256_SPKI_LEN ||
        memcmp(der, P256_SPKI_PREFIX, sizeof P256_SPKI_PREFIX) != 0 ||
        der[sizeof P256_SPKI_PREFIX] != 0x04)
        return spki_refusal(der, len);
    /* On the curve: a certificate for a point that is not would be signed nonsense,
     * and peers doing ECDH with it could leak their key (invalid-curve attacks). */
    const EC_GROUP *g = p256_group();
    EC_POINT *pt = g ? EC_POINT_new(g) : NULL;
    if (pt == NULL)
        return ssl_err(RP_ENOMEM, "P-256 point");
    int on = EC_POINT_oct2point(g, pt, der + sizeof P256_SPKI_PREFIX,
                                RP_TLS_P256_SPKI_LEN - sizeof P256_SPKI_PREFIX, NULL) == 1;
    EC_POINT_free(pt);
    if (!on) {
        ERR_clear_error();
        return rp_err(RP_EINVAL, "public key point is not on the P-256 curve");
    }
    memcpy(spki, der, RP_TLS_P256_SPKI_LEN);
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
    /* AES-128-GCM first (as Go's TLS orders them on CPUs with AES instructions): on this
     * kind of machine it encrypts 1.7x as fast as OpenSSL's default first choice,
     * AES-256-GCM, and every byte of a session through the proxy and a tunnel passes
     * four TLS ciphers more than a direct one. The client's order decides. */
    if (!SSL_CTX_set_ciphersuites(ctx, "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                                       "TLS_CHACHA20_POLY1305_SHA256")) {
        SSL_CTX_free(ctx);
        ssl_err(RP_ETLS, "setting the TLS 1.3 cipher suites");
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
