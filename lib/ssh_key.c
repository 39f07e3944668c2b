/* lib/ssh_key.c: OpenSSH key blobs, key lines, fingerprints, openssh-key-v1 private
 * keys and signature blobs, over OpenSSL 3 EVP_PKEY.
 *
 * Every parser reads through struct rp_rd, so no length can take us past the input;
 * on top of that each field is checked against what its type allows (point sizes,
 * curve names, RSA moduli) before OpenSSL builds a key from it. */
#include "lib/ssh_key.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/obj_mac.h>
#include <openssl/objects.h>
#include <openssl/param_build.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

/* What OpenSSH calls each key type, and what OpenSSL needs to handle it. */
struct keyinfo {
    enum rp_ssh_keytype type;
    const char *name;      /* key type and signature algorithm name */
    const char *cert_name; /* PROTOCOL.certkeys type of its certificates */
    const char *curve;     /* ECDSA: the curve identifier inside blobs; NULL otherwise */
    const char *group;     /* ECDSA: OpenSSL's group name */
    int nid;               /* ECDSA: the curve's NID */
    size_t field_len;      /* ECDSA: bytes per point coordinate */
    const char *md;        /* ECDSA: the hash RFC 5656 6.2.1 ties to the curve */
};

static const struct keyinfo keyinfos[] = {
    {RP_SSH_KEY_ED25519, "ssh-ed25519", "ssh-ed25519-cert-v01@openssh.com", NULL, NULL, NID_undef,
     0, NULL},
    {RP_SSH_KEY_ECDSA_P256, "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp256-cert-v01@openssh.com",
     "nistp256", "P-256", NID_X9_62_prime256v1, 32, "SHA256"},
    {RP_SSH_KEY_ECDSA_P384, "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp384-cert-v01@openssh.com",
     "nistp384", "P-384", NID_secp384r1, 48, "SHA384"},
    {RP_SSH_KEY_ECDSA_P521, "ecdsa-sha2-nistp521", "ecdsa-sha2-nistp521-cert-v01@openssh.com",
     "nistp521", "P-521", NID_secp521r1, 66, "SHA512"},
    {RP_SSH_KEY_RSA, "ssh-rsa", "ssh-rsa-cert-v01@openssh.com", NULL, NULL, NID_undef, 0, NULL},
};
#define N_KEYINFOS (sizeof keyinfos / sizeof keyinfos[0])

/* The largest ECDSA point: 0x04 || x || y on P-521. */
#define MAX_POINT_LEN (1 + 2 * 66)
/* RSA public exponents are small in practice; a cap keeps verification cheap. */
#define RSA_MAX_E_BYTES 8

/* PROTOCOL.key: the armour, the magic (its NUL included), and the block size the
 * "none" cipher pads the private section to. OpenSSH wraps base64 at 70 columns. */
#define PRIV_BEGIN "-----BEGIN OPENSSH PRIVATE KEY-----"
#define PRIV_END "-----END OPENSSH PRIVATE KEY-----"
static const char priv_magic[] = "openssh-key-v1";
#define PRIV_BLOCK 8
#define PRIV_WRAP 70

static const struct keyinfo *info_of(enum rp_ssh_keytype type)
{
    for (size_t i = 0; i < N_KEYINFOS; i++) {
        if (keyinfos[i].type == type)
            return &keyinfos[i];
    }
    return NULL;
}

static bool is_ecdsa(const struct keyinfo *ki)
{
    return ki->curve != NULL;
}

/* Turns the newest OpenSSL error into our message and empties OpenSSL's queue, so a
 * stale entry never surfaces in some later, unrelated failure. */
static int ossl_err(int code, const char *what)
{
    char reason[256] = "no detail";
    unsigned long e = ERR_peek_last_error();
    if (e != 0)
        ERR_error_string_n(e, reason, sizeof reason);
    ERR_clear_error();
    return rp_err(code, "%s: %s", what, reason);
}

/* Frees a buffer that held key material, wiping it first. */
static void buf_wipe_free(struct rp_buf *b)
{
    if (b->data != NULL)
        OPENSSL_cleanse(b->data, b->cap);
    rp_buf_free(b);
}

/* ---- key types ---------------------------------------------------------------------- */

static int identify(EVP_PKEY *key, const struct keyinfo **out)
{
    if (key == NULL)
        return rp_err(RP_EINVAL, "no key given");
    if (EVP_PKEY_is_a(key, "ED25519")) {
        *out = info_of(RP_SSH_KEY_ED25519);
        return 0;
    }
    if (EVP_PKEY_is_a(key, "EC")) {
        char group[64];
        if (EVP_PKEY_get_utf8_string_param(key, OSSL_PKEY_PARAM_GROUP_NAME, group, sizeof group,
                                           NULL) != 1) {
            ERR_clear_error();
            return rp_err(RP_EINVAL, "EC key has no named curve: expected nistp256, nistp384 "
                                     "or nistp521");
        }
        /* OpenSSL reports "prime256v1" for keys it made and "P-256" for some it read. */
        int nid = OBJ_sn2nid(group);
        if (nid == NID_undef)
            nid = EC_curve_nist2nid(group);
        for (size_t i = 0; i < N_KEYINFOS; i++) {
            if (is_ecdsa(&keyinfos[i]) && keyinfos[i].nid == nid) {
                *out = &keyinfos[i];
                return 0;
            }
        }
        return rp_err(RP_EINVAL,
                      "EC curve %s is not usable with OpenSSH: expected nistp256, "
                      "nistp384 or nistp521",
                      group);
    }
    if (EVP_PKEY_is_a(key, "RSA")) {
        int bits = EVP_PKEY_get_bits(key);
        if (bits < RP_SSH_RSA_MIN_BITS)
            return rp_err(RP_EINVAL,
                          "RSA key of %d bits is too small: at least %d bits are "
                          "required",
                          bits, RP_SSH_RSA_MIN_BITS);
        if (bits > RP_SSH_RSA_MAX_BITS)
            return rp_err(RP_EINVAL, "RSA key of %d bits is too large: at most %d bits", bits,
                          RP_SSH_RSA_MAX_BITS);
        *out = info_of(RP_SSH_KEY_RSA);
        return 0;
    }
    const char *alg = EVP_PKEY_get0_type_name(key);
    return rp_err(RP_EINVAL,
                  "key algorithm %s is not supported: expected Ed25519, ECDSA "
                  "(P-256, P-384, P-521) or RSA",
                  alg ? alg : "(unknown)");
}

int rp_ssh_key_type(EVP_PKEY *key, enum rp_ssh_keytype *type)
{
    const struct keyinfo *ki;
    int rv = identify(key, &ki);
    if (rv == 0)
        *type = ki->type;
    return rv;
}

const char *rp_ssh_key_type_name(enum rp_ssh_keytype type)
{
    const struct keyinfo *ki = info_of(type);
    return ki ? ki->name : "unknown";
}

const char *rp_ssh_key_cert_type_name(enum rp_ssh_keytype type)
{
    const struct keyinfo *ki = info_of(type);
    return ki ? ki->cert_name : "unknown";
}

int rp_ssh_key_type_from_name(const char *name, enum rp_ssh_keytype *type, bool *is_cert)
{
    for (size_t i = 0; i < N_KEYINFOS; i++) {
        bool plain = strcmp(name, keyinfos[i].name) == 0;
        if (plain || strcmp(name, keyinfos[i].cert_name) == 0) {
            *type = keyinfos[i].type;
            *is_cert = !plain;
            return 0;
        }
    }
    return rp_err(RP_EINVAL,
                  "unknown key type '%.80s': expected ssh-ed25519, "
                  "ecdsa-sha2-nistp256/384/521 or ssh-rsa, or their "
                  "-cert-v01@openssh.com certificates",
                  name);
}

int rp_ssh_keygen(enum rp_ssh_keytype type, EVP_PKEY **out)
{
    const struct keyinfo *ki = info_of(type);
    EVP_PKEY *key;
    if (ki == NULL)
        return rp_err(RP_EINVAL, "cannot generate a key of unknown type %d", (int)type);
    if (type == RP_SSH_KEY_ED25519)
        key = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    else if (is_ecdsa(ki))
        key = EVP_PKEY_Q_keygen(NULL, NULL, "EC", ki->group);
    else
        key = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)3072);
    if (key == NULL)
        return ossl_err(RP_EIO, "key generation failed");
    *out = key;
    return 0;
}

/* ---- wire primitives ---------------------------------------------------------------- */

int rp_ssh_put_string(struct rp_buf *b, const void *p, size_t n)
{
    if (n > UINT32_MAX)
        return rp_err(RP_ETOOBIG, "string of %zu bytes does not fit an SSH length", n);
    int rv = rp_buf_put_be32(b, (uint32_t)n);
    return rv ? rv : rp_buf_append(b, p, n);
}

int rp_ssh_put_cstring(struct rp_buf *b, const char *s)
{
    return rp_ssh_put_string(b, s, strlen(s));
}

int rp_ssh_put_mpint(struct rp_buf *b, const BIGNUM *bn)
{
    if (BN_is_negative(bn))
        return rp_err(RP_EINVAL, "negative mpint: keys and signatures never hold one");
    size_t nb = (size_t)BN_num_bytes(bn);
    /* A set top bit would read as negative: RFC 4251 wants a zero byte in front. */
    size_t pad = nb > 0 && BN_is_bit_set(bn, (int)(nb * 8 - 1)) ? 1 : 0;
    int rv = rp_buf_put_be32(b, (uint32_t)(nb + pad));
    if (rv == 0)
        rv = rp_buf_reserve(b, nb + pad);
    if (rv != 0)
        return rv;
    if (pad)
        b->data[b->len++] = 0;
    BN_bn2bin(bn, b->data + b->len);
    b->len += nb;
    return 0;
}

int rp_ssh_get_string(struct rp_rd *r, const char *what, const uint8_t **p, size_t *n)
{
    uint32_t len;
    int rv = rp_rd_be32(r, &len);
    if (rv == 0)
        rv = rp_rd_bytes(r, len, p);
    if (rv != 0)
        return rp_err(RP_EINVAL, "%s: %s", what, rp_errmsg());
    *n = len;
    return 0;
}

int rp_ssh_get_cstring(struct rp_rd *r, const char *what, char **out)
{
    const uint8_t *p;
    size_t n;
    int rv = rp_ssh_get_string(r, what, &p, &n);
    if (rv != 0)
        return rv;
    if (memchr(p, '\0', n) != NULL)
        return rp_err(RP_EINVAL, "%s contains a NUL byte", what);
    char *s = malloc(n + 1);
    if (s == NULL)
        return rp_err(RP_ENOMEM, "%s of %zu bytes", what, n);
    memcpy(s, p, n);
    s[n] = '\0';
    *out = s;
    return 0;
}

int rp_ssh_get_mpint(struct rp_rd *r, const char *what, size_t max_bytes, BIGNUM **out)
{
    const uint8_t *p;
    size_t n;
    int rv = rp_ssh_get_string(r, what, &p, &n);
    if (rv != 0)
        return rv;
    if (n > 0 && (p[0] & 0x80))
        return rp_err(RP_EINVAL, "%s is a negative mpint", what);
    /* RFC 4251 5: a leading zero is only there to clear the sign bit of the next byte. */
    if (n > 0 && p[0] == 0 && (n == 1 || !(p[1] & 0x80)))
        return rp_err(RP_EINVAL, "%s: mpint has a needless leading zero byte", what);
    if (n > 0 && p[0] == 0) {
        p++;
        n--;
    }
    if (n > max_bytes)
        return rp_err(RP_EINVAL, "%s: mpint of %zu bytes is longer than the %zu allowed", what, n,
                      max_bytes);
    BIGNUM *bn = BN_bin2bn(p, (int)n, NULL);
    if (bn == NULL)
        return ossl_err(RP_ENOMEM, what);
    *out = bn;
    return 0;
}

/* ---- base64 (RFC 4648, padded, as key lines and key files use it) ------------------ */

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static int b64_encode(const uint8_t *p, size_t n, struct rp_buf *out)
{
    int rv = rp_buf_reserve(out, (n + 2) / 3 * 4 + 1);
    if (rv != 0)
        return rv;
    char *o = (char *)out->data + out->len;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t w = (uint32_t)p[i] << 16;
        if (i + 1 < n)
            w |= (uint32_t)p[i + 1] << 8;
        if (i + 2 < n)
            w |= p[i + 2];
        *o++ = b64_alphabet[(w >> 18) & 63];
        *o++ = b64_alphabet[(w >> 12) & 63];
        *o++ = i + 1 < n ? b64_alphabet[(w >> 6) & 63] : '=';
        *o++ = i + 2 < n ? b64_alphabet[w & 63] : '=';
    }
    out->len = (size_t)((uint8_t *)o - out->data);
    *o = '\0'; /* not counted in len: the text can be used as a C string */
    return 0;
}

static int b64_value(unsigned char c)
{
    const char *at = c ? strchr(b64_alphabet, c) : NULL;
    return at ? (int)(at - b64_alphabet) : -1;
}

/* Strict decoding: whole quads, '=' only as the last one or two characters, and the
 * bits the padding drops must be zero, so that one text always means one blob. */
static int b64_decode(const char *s, size_t n, struct rp_buf *out, const char *what)
{
    if (n == 0 || n % 4 != 0)
        return rp_err(RP_EINVAL,
                      "%s: base64 of %zu characters is not a whole number of "
                      "4-character groups",
                      what, n);
    int rv = rp_buf_reserve(out, n / 4 * 3);
    if (rv != 0)
        return rv;
    for (size_t i = 0; i < n; i += 4) {
        int v[4], pad = 0;
        for (int j = 0; j < 4; j++) {
            unsigned char c = (unsigned char)s[i + j];
            if (c == '=') {
                if (i + 4 != n || j < 2)
                    return rp_err(RP_EINVAL, "%s: misplaced '=' at character %zu", what, i + j);
                pad++;
                v[j] = 0;
                continue;
            }
            if (pad > 0)
                return rp_err(RP_EINVAL, "%s: data after '=' at character %zu", what, i + j);
            v[j] = b64_value(c);
            if (v[j] < 0)
                return rp_err(RP_EINVAL, "%s: character 0x%02x at %zu is not base64", what, c,
                              i + j);
        }
        if ((pad == 1 && (v[2] & 3) != 0) || (pad == 2 && (v[1] & 15) != 0))
            return rp_err(RP_EINVAL, "%s: non-canonical base64 (padding bits set)", what);
        uint32_t w =
            (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | (uint32_t)v[3];
        uint8_t bytes[3] = {(uint8_t)(w >> 16), (uint8_t)(w >> 8), (uint8_t)w};
        rp_buf_append(out, bytes, (size_t)(3 - pad)); /* cannot fail: reserved above */
    }
    return 0;
}

/* ---- public keys -------------------------------------------------------------------- */

/* 0x04 || x || y, each coordinate left-padded to the field size (SEC1 uncompressed). We
 * ask for the coordinates rather than OpenSSL's encoded point, whose form (compressed
 * or not) depends on how the key was made. */
static int ec_point_bytes(EVP_PKEY *key, const struct keyinfo *ki, uint8_t *out)
{
    BIGNUM *x = NULL, *y = NULL;
    int rv = 0;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_X, &x) != 1 ||
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_EC_PUB_Y, &y) != 1) {
        rv = ossl_err(RP_EINVAL, "ECDSA key has no public point");
        goto out;
    }
    out[0] = 0x04;
    if (BN_bn2binpad(x, out + 1, (int)ki->field_len) < 0 ||
        BN_bn2binpad(y, out + 1 + ki->field_len, (int)ki->field_len) < 0)
        rv = ossl_err(RP_EINVAL, "ECDSA point coordinate larger than its field");
out:
    BN_free(x);
    BN_free(y);
    return rv;
}

/* Builds an EC key from a public point and, for key pairs, the private scalar @d, then
 * has OpenSSL check all of it: the point lies on the curve, is not the point at
 * infinity and has the group's order; for pairs, d is in range and d*G is the point.
 * An unchecked point from the wire is how invalid-curve attacks start. */
static int ec_from_parts(const struct keyinfo *ki, const uint8_t *q, size_t qlen, const BIGNUM *d,
                         EVP_PKEY **out)
{
    OSSL_PARAM_BLD *bld = OSSL_PARAM_BLD_new();
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL, *chk = NULL;
    EVP_PKEY *key = NULL;
    int rv = 0;
    if (bld == NULL ||
        !OSSL_PARAM_BLD_push_utf8_string(bld, OSSL_PKEY_PARAM_GROUP_NAME, ki->group, 0) ||
        !OSSL_PARAM_BLD_push_octet_string(bld, OSSL_PKEY_PARAM_PUB_KEY, q, qlen) ||
        (d != NULL && !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_PRIV_KEY, d)) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
        (ctx = EVP_PKEY_CTX_new_from_name(NULL, "EC", NULL)) == NULL) {
        rv = ossl_err(RP_ENOMEM, "building an ECDSA key");
        goto out;
    }
    if (EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &key, d ? EVP_PKEY_KEYPAIR : EVP_PKEY_PUBLIC_KEY, params) != 1) {
        rv = ossl_err(RP_EINVAL, "ECDSA public point is not a point of the curve");
        goto out;
    }
    chk = EVP_PKEY_CTX_new_from_pkey(NULL, key, NULL);
    if (chk == NULL) {
        rv = ossl_err(RP_ENOMEM, "checking an ECDSA key");
        goto out;
    }
    if (EVP_PKEY_public_check(chk) != 1) {
        rv = ossl_err(RP_EINVAL, "ECDSA public point fails validation");
        goto out;
    }
    if (d != NULL && (EVP_PKEY_private_check(chk) != 1 || EVP_PKEY_pairwise_check(chk) != 1)) {
        rv = ossl_err(RP_EINVAL, "ECDSA private scalar does not match the public point");
        goto out;
    }
    *out = key;
    key = NULL;
out:
    EVP_PKEY_free(key);
    EVP_PKEY_CTX_free(chk);
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return rv;
}

static int rsa_from_parts(const BIGNUM *n, const BIGNUM *e, EVP_PKEY **out)
{
    OSSL_PARAM_BLD *bld = NULL;
    OSSL_PARAM *params = NULL;
    EVP_PKEY_CTX *ctx = NULL;
    EVP_PKEY *key = NULL;
    int rv = 0;
    if (BN_num_bits(n) < RP_SSH_RSA_MIN_BITS)
        return rp_err(RP_EINVAL, "RSA key of %d bits is too small: at least %d bits are required",
                      BN_num_bits(n), RP_SSH_RSA_MIN_BITS);
    if (!BN_is_odd(n))
        return rp_err(RP_EINVAL, "RSA modulus is even: not an RSA key");
    if (BN_num_bits(e) < 2 || !BN_is_odd(e))
        return rp_err(RP_EINVAL, "RSA public exponent must be odd and at least 3");
    if ((bld = OSSL_PARAM_BLD_new()) == NULL ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_N, n) ||
        !OSSL_PARAM_BLD_push_BN(bld, OSSL_PKEY_PARAM_RSA_E, e) ||
        (params = OSSL_PARAM_BLD_to_param(bld)) == NULL ||
        (ctx = EVP_PKEY_CTX_new_from_name(NULL, "RSA", NULL)) == NULL) {
        rv = ossl_err(RP_ENOMEM, "building an RSA key");
        goto out;
    }
    if (EVP_PKEY_fromdata_init(ctx) != 1 ||
        EVP_PKEY_fromdata(ctx, &key, EVP_PKEY_PUBLIC_KEY, params) != 1) {
        rv = ossl_err(RP_EINVAL, "RSA key refused by OpenSSL");
        goto out;
    }
    *out = key;
out:
    EVP_PKEY_CTX_free(ctx);
    OSSL_PARAM_free(params);
    OSSL_PARAM_BLD_free(bld);
    return rv;
}

int rp_ssh_key_put_fields(struct rp_buf *b, EVP_PKEY *key)
{
    const struct keyinfo *ki;
    int rv = identify(key, &ki);
    if (rv != 0)
        return rv;
    if (ki->type == RP_SSH_KEY_ED25519) {
        uint8_t pk[32];
        size_t len = sizeof pk;
        if (EVP_PKEY_get_raw_public_key(key, pk, &len) != 1 || len != sizeof pk)
            return ossl_err(RP_EINVAL, "Ed25519 key has no 32-byte public key");
        return rp_ssh_put_string(b, pk, sizeof pk);
    }
    if (is_ecdsa(ki)) {
        uint8_t q[MAX_POINT_LEN];
        rv = ec_point_bytes(key, ki, q);
        if (rv == 0)
            rv = rp_ssh_put_cstring(b, ki->curve);
        return rv ? rv : rp_ssh_put_string(b, q, 1 + 2 * ki->field_len);
    }
    BIGNUM *n = NULL, *e = NULL;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_N, &n) != 1 ||
        EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_RSA_E, &e) != 1)
        rv = ossl_err(RP_EINVAL, "RSA key without modulus or exponent");
    /* RFC 4253 6.6: the exponent comes first. */
    if (rv == 0)
        rv = rp_ssh_put_mpint(b, e);
    if (rv == 0)
        rv = rp_ssh_put_mpint(b, n);
    BN_free(n);
    BN_free(e);
    return rv;
}

/* Reads the curve name and point of an ECDSA key of type @ki; *q borrows from @r. */
static int get_ec_point(struct rp_rd *r, const struct keyinfo *ki, const uint8_t **q)
{
    const uint8_t *c;
    size_t clen, qlen;
    int rv = rp_ssh_get_string(r, "ECDSA curve name", &c, &clen);
    if (rv != 0)
        return rv;
    if (clen != strlen(ki->curve) || memcmp(c, ki->curve, clen) != 0)
        return rp_err(RP_EINVAL, "ECDSA curve name '%.*s' does not match key type %s",
                      (int)(clen > 32 ? 32 : clen), (const char *)c, ki->name);
    rv = rp_ssh_get_string(r, "ECDSA public point", q, &qlen);
    if (rv != 0)
        return rv;
    if (qlen != 1 + 2 * ki->field_len || (*q)[0] != 0x04)
        return rp_err(RP_EINVAL,
                      "ECDSA public point must be an uncompressed %s point of %zu "
                      "bytes, got %zu bytes",
                      ki->curve, 1 + 2 * ki->field_len, qlen);
    return 0;
}

int rp_ssh_key_get_fields(struct rp_rd *r, enum rp_ssh_keytype type, EVP_PKEY **out)
{
    const struct keyinfo *ki = info_of(type);
    const uint8_t *p;
    size_t n;
    int rv;
    if (ki == NULL)
        return rp_err(RP_EINVAL, "unknown key type %d", (int)type);
    if (type == RP_SSH_KEY_ED25519) {
        rv = rp_ssh_get_string(r, "Ed25519 public key", &p, &n);
        if (rv != 0)
            return rv;
        if (n != 32)
            return rp_err(RP_EINVAL, "Ed25519 public key is %zu bytes, expected 32", n);
        EVP_PKEY *key = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, NULL, p, n);
        if (key == NULL)
            return ossl_err(RP_EINVAL, "Ed25519 public key refused");
        *out = key;
        return 0;
    }
    if (is_ecdsa(ki)) {
        rv = get_ec_point(r, ki, &p);
        return rv ? rv : ec_from_parts(ki, p, 1 + 2 * ki->field_len, NULL, out);
    }
    BIGNUM *e = NULL, *mod = NULL;
    rv = rp_ssh_get_mpint(r, "RSA public exponent", RSA_MAX_E_BYTES, &e);
    if (rv == 0)
        rv = rp_ssh_get_mpint(r, "RSA modulus", RP_SSH_RSA_MAX_BITS / 8, &mod);
    if (rv == 0)
        rv = rsa_from_parts(mod, e, out);
    BN_free(e);
    BN_free(mod);
    return rv;
}

int rp_ssh_pubkey_to_blob(EVP_PKEY *key, struct rp_buf *out)
{
    const struct keyinfo *ki;
    int rv = identify(key, &ki);
    if (rv == 0)
        rv = rp_ssh_put_cstring(out, ki->name);
    return rv ? rv : rp_ssh_key_put_fields(out, key);
}

int rp_ssh_pubkey_from_blob(const uint8_t *p, size_t n, EVP_PKEY **out)
{
    struct rp_rd r;
    enum rp_ssh_keytype type;
    bool is_cert;
    char *name = NULL;
    EVP_PKEY *key = NULL;
    rp_rd_init(&r, p, n);
    int rv = rp_ssh_get_cstring(&r, "key type", &name);
    if (rv == 0)
        rv = rp_ssh_key_type_from_name(name, &type, &is_cert);
    if (rv == 0 && is_cert)
        rv = rp_err(RP_EINVAL, "blob is a %s certificate, expected a plain public key", name);
    if (rv == 0)
        rv = rp_ssh_key_get_fields(&r, type, &key);
    if (rv == 0 && rp_rd_left(&r) != 0)
        rv = rp_err(RP_EINVAL, "%zu trailing bytes after the %s public key", rp_rd_left(&r), name);
    free(name);
    if (rv != 0) {
        EVP_PKEY_free(key);
        return rv;
    }
    *out = key;
    return 0;
}

int rp_ssh_fingerprint(EVP_PKEY *key, char *out, size_t outlen)
{
    struct rp_buf blob, b64;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    rp_buf_init(&blob);
    rp_buf_init(&b64);
    int rv = rp_ssh_pubkey_to_blob(key, &blob);
    if (rv == 0 && EVP_Digest(blob.data, blob.len, md, &mdlen, EVP_sha256(), NULL) != 1)
        rv = ossl_err(RP_ENOMEM, "SHA-256 of the key blob");
    if (rv == 0)
        rv = b64_encode(md, mdlen, &b64);
    if (rv == 0) {
        /* ssh-keygen drops the padding. */
        while (b64.len > 0 && b64.data[b64.len - 1] == '=')
            b64.len--;
        if (snprintf(out, outlen, "SHA256:%.*s", (int)b64.len, (char *)b64.data) >= (int)outlen)
            rv = rp_err(RP_EINVAL, "fingerprint needs %d bytes, have %zu", RP_SSH_FINGERPRINT_LEN,
                        outlen);
    }
    rp_buf_free(&blob);
    rp_buf_free(&b64);
    return rv;
}

/* ---- the one-line form -------------------------------------------------------------- */

int rp_ssh_line_format(const uint8_t *blob, size_t n, const char *comment, char **out)
{
    struct rp_rd r;
    struct rp_buf line;
    enum rp_ssh_keytype type;
    bool is_cert;
    char *name = NULL;
    rp_rd_init(&r, blob, n);
    rp_buf_init(&line);
    int rv = rp_ssh_get_cstring(&r, "key type", &name);
    if (rv == 0)
        rv = rp_ssh_key_type_from_name(name, &type, &is_cert);
    if (rv == 0 && comment != NULL && strpbrk(comment, "\r\n") != NULL)
        rv = rp_err(RP_EINVAL, "key comment must fit on one line");
    if (rv == 0)
        rv = rp_buf_append_str(&line, name);
    if (rv == 0)
        rv = rp_buf_append(&line, " ", 1);
    if (rv == 0)
        rv = b64_encode(blob, n, &line);
    if (rv == 0 && comment != NULL && comment[0] != '\0')
        rv = rp_buf_printf(&line, " %s", comment);
    if (rv == 0)
        rv = rp_buf_append(&line, "", 1);
    free(name);
    if (rv != 0) {
        rp_buf_free(&line);
        return rv;
    }
    *out = (char *)rp_buf_steal(&line, NULL);
    return 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

/* Advances past the token at *p (up to a blank or the end of the line). */
static size_t token(const char **p)
{
    const char *s = *p;
    while (**p != '\0' && !is_blank(**p) && **p != '\r' && **p != '\n')
        (*p)++;
    return (size_t)(*p - s);
}

int rp_ssh_line_split(const char *line, uint8_t **blob, size_t *blob_len, char **comment)
{
    const char *p = line;
    enum rp_ssh_keytype type;
    bool is_cert;
    while (is_blank(*p))
        p++;
    const char *tname = p;
    size_t tlen = token(&p);
    if (tlen == 0)
        return rp_err(RP_EINVAL, "empty key line: expected 'TYPE BASE64 [comment]'");
    char name[128];
    if (tlen >= sizeof name)
        return rp_err(RP_EINVAL, "key line starts with a %zu-byte word, not a key type", tlen);
    memcpy(name, tname, tlen);
    name[tlen] = '\0';
    int rv = rp_ssh_key_type_from_name(name, &type, &is_cert);
    if (rv != 0)
        return rv;
    while (is_blank(*p))
        p++;
    const char *b64 = p;
    size_t blen = token(&p);
    if (blen == 0)
        return rp_err(RP_EINVAL, "key line has no base64 key after '%s'", name);
    while (is_blank(*p))
        p++;
    const char *c = p;
    size_t clen = strcspn(c, "\r\n");
    const char *end = c + clen;
    /* One line only: at most a final "\n" or "\r\n" after the comment. */
    if (!(end[0] == '\0' || (end[0] == '\n' && end[1] == '\0') ||
          (end[0] == '\r' && end[1] == '\n' && end[2] == '\0')))
        return rp_err(RP_EINVAL, "key line for %s continues on a second line", name);
    while (clen > 0 && is_blank(c[clen - 1]))
        clen--;

    struct rp_buf bin;
    struct rp_rd r;
    char *inner = NULL;
    rp_buf_init(&bin);
    rv = b64_decode(b64, blen, &bin, "key line base64");
    if (rv == 0) {
        rp_rd_init(&r, bin.data, bin.len);
        rv = rp_ssh_get_cstring(&r, "key type inside the base64", &inner);
    }
    if (rv == 0 && strcmp(inner, name) != 0)
        rv = rp_err(RP_EINVAL, "key line says '%s' but holds a '%.80s' key", name, inner);
    free(inner);
    if (rv == 0 && comment != NULL) {
        *comment = strndup(c, clen);
        if (*comment == NULL)
            rv = rp_err(RP_ENOMEM, "key comment of %zu bytes", clen);
    }
    if (rv != 0) {
        rp_buf_free(&bin);
        return rv;
    }
    *blob = rp_buf_steal(&bin, blob_len);
    return 0;
}

int rp_ssh_pubkey_format(EVP_PKEY *key, const char *comment, char **out)
{
    struct rp_buf blob;
    rp_buf_init(&blob);
    int rv = rp_ssh_pubkey_to_blob(key, &blob);
    if (rv == 0)
        rv = rp_ssh_line_format(blob.data, blob.len, comment, out);
    rp_buf_free(&blob);
    return rv;
}

int rp_ssh_pubkey_blob_check(const uint8_t *p, size_t n, enum rp_ssh_keytype *type)
{
    struct rp_rd r;
    bool is_cert;
    char *name = NULL;
    const uint8_t *k;
    size_t klen;
    EVP_PKEY *key = NULL;
    rp_rd_init(&r, p, n);
    int rv = rp_ssh_get_cstring(&r, "key type", &name);
    if (rv == 0)
        rv = rp_ssh_key_type_from_name(name, type, &is_cert);
    if (rv == 0 && is_cert)
        rv = rp_err(RP_EINVAL, "blob is a %s certificate, expected a plain public key", name);
    if (rv == 0 && *type == RP_SSH_KEY_ED25519) {
        rv = rp_ssh_get_string(&r, "Ed25519 public key", &k, &klen);
        if (rv == 0 && klen != 32)
            rv = rp_err(RP_EINVAL, "Ed25519 public key is %zu bytes, expected 32", klen);
    } else if (rv == 0) {
        rv = rp_ssh_key_get_fields(&r, *type, &key); /* checks points and RSA sizes */
        EVP_PKEY_free(key);
    }
    if (rv == 0 && rp_rd_left(&r) != 0)
        rv = rp_err(RP_EINVAL, "%zu trailing bytes after the %s public key", rp_rd_left(&r), name);
    free(name);
    return rv;
}

int rp_ssh_pubkey_parse_blob(const char *line, uint8_t **blob, size_t *n, enum rp_ssh_keytype *type)
{
    int rv = rp_ssh_line_split(line, blob, n, NULL);
    if (rv != 0)
        return rv;
    if ((rv = rp_ssh_pubkey_blob_check(*blob, *n, type)) != 0) {
        free(*blob);
        *blob = NULL;
    }
    return rv;
}

int rp_ssh_pubkey_parse(const char *line, EVP_PKEY **out, char **comment)
{
    uint8_t *blob;
    size_t n;
    char *c = NULL;
    int rv = rp_ssh_line_split(line, &blob, &n, comment ? &c : NULL);
    if (rv != 0)
        return rv;
    rv = rp_ssh_pubkey_from_blob(blob, n, out);
    free(blob);
    if (rv != 0) {
        free(c);
        return rv;
    }
    if (comment != NULL)
        *comment = c;
    return 0;
}

/* ---- private keys ------------------------------------------------------------------- */

/* Appends the private section's key fields (PROTOCOL.key; OpenSSH's own layout). */
static int put_private_fields(struct rp_buf *b, EVP_PKEY *key, const struct keyinfo *ki)
{
    int rv;
    if (ki->type == RP_SSH_KEY_ED25519) {
        /* OpenSSH keeps the 32-byte seed followed by the public key as its "secret key". */
        uint8_t sk[64];
        size_t slen = 32, plen = 32;
        if (EVP_PKEY_get_raw_private_key(key, sk, &slen) != 1 || slen != 32 ||
            EVP_PKEY_get_raw_public_key(key, sk + 32, &plen) != 1 || plen != 32) {
            OPENSSL_cleanse(sk, sizeof sk);
            return ossl_err(RP_EINVAL, "Ed25519 key has no private half");
        }
        rv = rp_ssh_put_string(b, sk + 32, 32);
        if (rv == 0)
            rv = rp_ssh_put_string(b, sk, sizeof sk);
        OPENSSL_cleanse(sk, sizeof sk);
        return rv;
    }
    uint8_t q[MAX_POINT_LEN];
    BIGNUM *d = NULL;
    if (EVP_PKEY_get_bn_param(key, OSSL_PKEY_PARAM_PRIV_KEY, &d) != 1)
        return ossl_err(RP_EINVAL, "ECDSA key has no private half");
    rv = ec_point_bytes(key, ki, q);
    if (rv == 0)
        rv = rp_ssh_put_cstring(b, ki->curve);
    if (rv == 0)
        rv = rp_ssh_put_string(b, q, 1 + 2 * ki->field_len);
    if (rv == 0)
        rv = rp_ssh_put_mpint(b, d);
    BN_clear_free(d);
    return rv;
}

int rp_ssh_privkey_format(EVP_PKEY *key, const char *comment, char **out)
{
    const struct keyinfo *ki;
    struct rp_buf pub, priv, file, b64, text;
    uint32_t check;
    int rv = identify(key, &ki);
    if (rv != 0)
        return rv;
    if (ki->type == RP_SSH_KEY_RSA)
        return rp_err(RP_EINVAL, "RSA private keys are not written in OpenSSH format: use an "
                                 "Ed25519 or ECDSA key");
    rp_buf_init(&pub);
    rp_buf_init(&priv);
    rp_buf_init(&file);
    rp_buf_init(&b64);
    rp_buf_init(&text);
    /* Buffers holding the secret are sized up front so that realloc never leaves a
     * copy of it behind in freed memory. */
    size_t clen = comment ? strlen(comment) : 0;
    rv = rp_ssh_pubkey_to_blob(key, &pub);
    if (rv == 0)
        rv = rp_buf_reserve(&priv, 512 + clen);
    if (rv == 0 && RAND_bytes((unsigned char *)&check, sizeof check) != 1)
        rv = ossl_err(RP_EIO, "no randomness for the check bytes");
    /* The check bytes let a reader tell a wrong passphrase from a key; written twice. */
    if (rv == 0)
        rv = rp_buf_put_be32(&priv, check);
    if (rv == 0)
        rv = rp_buf_put_be32(&priv, check);
    if (rv == 0)
        rv = rp_ssh_put_cstring(&priv, ki->name);
    if (rv == 0)
        rv = put_private_fields(&priv, key, ki);
    if (rv == 0)
        rv = rp_ssh_put_cstring(&priv, comment ? comment : "");
    for (uint8_t pad = 1; rv == 0 && priv.len % PRIV_BLOCK != 0; pad++)
        rv = rp_buf_append(&priv, &pad, 1);

    if (rv == 0)
        rv = rp_buf_reserve(&file, sizeof priv_magic + 64 + pub.len + priv.len);
    if (rv == 0)
        rv = rp_buf_append(&file, priv_magic, sizeof priv_magic);
    if (rv == 0)
        rv = rp_ssh_put_cstring(&file, "none"); /* cipher */
    if (rv == 0)
        rv = rp_ssh_put_cstring(&file, "none"); /* kdf */
    if (rv == 0)
        rv = rp_ssh_put_string(&file, "", 0); /* kdf options */
    if (rv == 0)
        rv = rp_buf_put_be32(&file, 1); /* number of keys */
    if (rv == 0)
        rv = rp_ssh_put_string(&file, pub.data, pub.len);
    if (rv == 0)
        rv = rp_ssh_put_string(&file, priv.data, priv.len);
    if (rv == 0)
        rv = b64_encode(file.data, file.len, &b64);
    if (rv == 0)
        rv = rp_buf_reserve(&text, sizeof PRIV_BEGIN + sizeof PRIV_END + b64.len +
                                       b64.len / PRIV_WRAP + 8);
    if (rv == 0) {
        rp_buf_append_str(&text, PRIV_BEGIN "\n");
        for (size_t i = 0; i < b64.len; i += PRIV_WRAP) {
            size_t n = b64.len - i < PRIV_WRAP ? b64.len - i : PRIV_WRAP;
            rp_buf_append(&text, b64.data + i, n);
            rp_buf_append(&text, "\n", 1);
        }
        rp_buf_append(&text, PRIV_END "\n", sizeof(PRIV_END "\n")); /* with the NUL */
        text.len--;
    }
    rp_buf_free(&pub);
    buf_wipe_free(&priv);
    buf_wipe_free(&file);
    buf_wipe_free(&b64);
    if (rv != 0) {
        buf_wipe_free(&text);
        return rv;
    }
    *out = (char *)rp_buf_steal(&text, NULL);
    return 0;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

/* Strips the armour and the line breaks from a key file, leaving the base64 in @b64. */
static int unarmour(const char *text, size_t n, struct rp_buf *b64)
{
    size_t i = 0;
    const size_t blen = strlen(PRIV_BEGIN), elen = strlen(PRIV_END);
    while (i < n && is_space(text[i]))
        i++;
    if (n - i < blen || memcmp(text + i, PRIV_BEGIN, blen) != 0) {
        size_t l = 0;
        while (i + l < n && l < 64 && text[i + l] != '\n' && text[i + l] != '\0')
            l++;
        return rp_err(RP_EINVAL, "not an OpenSSH private key: expected '%s', found '%.*s'",
                      PRIV_BEGIN, (int)l, text + i);
    }
    i += blen;
    int rv = rp_buf_reserve(b64, n - i);
    if (rv != 0)
        return rv;
    for (; i < n && text[i] != '-'; i++) {
        if (is_space(text[i]))
            continue;
        rp_buf_append(b64, text + i, 1); /* cannot fail: reserved */
    }
    if (n - i < elen || memcmp(text + i, PRIV_END, elen) != 0)
        return rp_err(RP_EINVAL, "OpenSSH private key has no '%s' line", PRIV_END);
    for (i += elen; i < n; i++) {
        if (!is_space(text[i]))
            return rp_err(RP_EINVAL, "text after '%s'", PRIV_END);
    }
    return 0;
}

/* Reads the private section's key fields of type @ki into a key pair. */
static int get_private_fields(struct rp_rd *r, const struct keyinfo *ki, EVP_PKEY **out)
{
    const uint8_t *p, *sk;
    size_t n, sklen;
    int rv;
    if (ki->type == RP_SSH_KEY_ED25519) {
        rv = rp_ssh_get_string(r, "Ed25519 public key", &p, &n);
        if (rv == 0)
            rv = rp_ssh_get_string(r, "Ed25519 private key", &sk, &sklen);
        if (rv != 0)
            return rv;
        if (n != 32 || sklen != 64)
            return rp_err(RP_EINVAL,
                          "Ed25519 key fields are %zu and %zu bytes, expected 32 "
                          "and 64",
                          n, sklen);
        uint8_t derived[32];
        size_t dlen = sizeof derived;
        EVP_PKEY *key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, NULL, sk, 32);
        if (key == NULL)
            return ossl_err(RP_EINVAL, "Ed25519 private key refused");
        /* The seed determines the public key: both stored copies must agree with it. */
        if (EVP_PKEY_get_raw_public_key(key, derived, &dlen) != 1 || memcmp(derived, p, 32) != 0 ||
            memcmp(sk + 32, p, 32) != 0) {
            EVP_PKEY_free(key);
            ERR_clear_error();
            return rp_err(RP_EINVAL, "Ed25519 private key does not match its public key");
        }
        *out = key;
        return 0;
    }
    BIGNUM *d = NULL;
    rv = get_ec_point(r, ki, &p);
    if (rv == 0)
        rv = rp_ssh_get_mpint(r, "ECDSA private scalar", ki->field_len, &d);
    if (rv == 0)
        rv = ec_from_parts(ki, p, 1 + 2 * ki->field_len, d, out);
    BN_clear_free(d);
    return rv;
}

/* Parses the private section: check bytes, key, comment, padding. */
static int parse_private_section(const uint8_t *p, size_t n, EVP_PKEY *pub, EVP_PKEY **out,
                                 char **comment)
{
    struct rp_rd r;
    uint32_t check1, check2;
    char *tname = NULL, *c = NULL;
    enum rp_ssh_keytype type, pub_type;
    bool is_cert;
    EVP_PKEY *key = NULL;
    rp_rd_init(&r, p, n);
    if (n % PRIV_BLOCK != 0)
        return rp_err(RP_EINVAL,
                      "private section of %zu bytes is not a multiple of the "
                      "%d-byte block",
                      n, PRIV_BLOCK);
    int rv = rp_rd_be32(&r, &check1);
    if (rv == 0)
        rv = rp_rd_be32(&r, &check2);
    if (rv != 0)
        return rp_err(RP_EINVAL, "private section check bytes: %s", rp_errmsg());
    if (check1 != check2)
        return rp_err(RP_EINVAL, "private key check bytes differ: the key is corrupt");
    rv = rp_ssh_get_cstring(&r, "private key type", &tname);
    if (rv == 0)
        rv = rp_ssh_key_type_from_name(tname, &type, &is_cert);
    if (rv == 0 && is_cert)
        rv = rp_err(RP_EINVAL, "private key section holds a certificate (%s)", tname);
    if (rv == 0 && type == RP_SSH_KEY_RSA)
        rv = rp_err(RP_EINVAL, "RSA private keys in OpenSSH format are not supported: use an "
                               "Ed25519 or ECDSA key");
    if (rv == 0)
        rv = rp_ssh_key_type(pub, &pub_type);
    if (rv == 0 && pub_type != type)
        rv = rp_err(RP_EINVAL, "private key is %s but the file's public key is %s", tname,
                    rp_ssh_key_type_name(pub_type));
    if (rv == 0)
        rv = get_private_fields(&r, info_of(type), &key);
    if (rv == 0)
        rv = rp_ssh_get_cstring(&r, "private key comment", &c);
    /* Padding is 1, 2, 3, ...: anything else means the section was damaged. */
    for (uint8_t want = 1; rv == 0 && rp_rd_left(&r) > 0; want++) {
        uint8_t got;
        rp_rd_u8(&r, &got);
        if (got != want)
            rv = rp_err(RP_EINVAL, "private key padding is corrupt");
    }
    if (rv == 0 && EVP_PKEY_eq(pub, key) != 1) {
        ERR_clear_error();
        rv = rp_err(RP_EINVAL, "the file's public key does not match its private key");
    }
    free(tname);
    if (rv != 0) {
        EVP_PKEY_free(key);
        free(c);
        return rv;
    }
    *out = key;
    if (comment != NULL)
        *comment = c;
    else
        free(c);
    return 0;
}

int rp_ssh_privkey_parse(const char *text, size_t n, EVP_PKEY **out, char **comment)
{
    struct rp_buf b64, bin;
    struct rp_rd r;
    const uint8_t *magic, *kdfopts, *pubblob, *priv;
    size_t kdfopts_len, pub_len, priv_len;
    uint32_t nkeys;
    char *cipher = NULL, *kdf = NULL;
    EVP_PKEY *pub = NULL;
    rp_buf_init(&b64);
    rp_buf_init(&bin);
    int rv = unarmour(text, n, &b64);
    if (rv == 0)
        rv = b64_decode((const char *)b64.data, b64.len, &bin, "OpenSSH private key base64");
    if (rv != 0)
        goto out;
    rp_rd_init(&r, bin.data, bin.len);
    if (rp_rd_bytes(&r, sizeof priv_magic, &magic) != 0 ||
        memcmp(magic, priv_magic, sizeof priv_magic) != 0) {
        rv = rp_err(RP_EINVAL, "OpenSSH private key does not start with 'openssh-key-v1'");
        goto out;
    }
    rv = rp_ssh_get_cstring(&r, "private key cipher name", &cipher);
    if (rv == 0)
        rv = rp_ssh_get_cstring(&r, "private key kdf name", &kdf);
    if (rv == 0)
        rv = rp_ssh_get_string(&r, "private key kdf options", &kdfopts, &kdfopts_len);
    if (rv != 0)
        goto out;
    if (strcmp(cipher, "none") != 0) {
        rv = rp_err(RP_EINVAL,
                    "private key is encrypted (cipher %.32s, kdf %.32s): only "
                    "unencrypted keys are read; remove the passphrase with "
                    "'ssh-keygen -p -N \"\"'",
                    cipher, kdf);
        goto out;
    }
    if (strcmp(kdf, "none") != 0 || kdfopts_len != 0) {
        rv = rp_err(RP_EINVAL,
                    "unencrypted private key names kdf '%.32s' with %zu bytes of "
                    "options, expected kdf 'none' and none",
                    kdf, kdfopts_len);
        goto out;
    }
    rv = rp_rd_be32(&r, &nkeys);
    if (rv != 0) {
        rv = rp_err(RP_EINVAL, "private key count: %s", rp_errmsg());
        goto out;
    }
    if (nkeys != 1) {
        rv = rp_err(RP_EINVAL, "private key file holds %u keys, expected 1", nkeys);
        goto out;
    }
    rv = rp_ssh_get_string(&r, "private key file's public key", &pubblob, &pub_len);
    if (rv == 0)
        rv = rp_ssh_pubkey_from_blob(pubblob, pub_len, &pub);
    if (rv == 0)
        rv = rp_ssh_get_string(&r, "private section", &priv, &priv_len);
    if (rv == 0 && rp_rd_left(&r) != 0)
        rv = rp_err(RP_EINVAL, "%zu trailing bytes after the private section", rp_rd_left(&r));
    if (rv == 0)
        rv = parse_private_section(priv, priv_len, pub, out, comment);
out:
    EVP_PKEY_free(pub);
    free(cipher);
    free(kdf);
    buf_wipe_free(&b64);
    buf_wipe_free(&bin);
    return rv;
}

/* ---- signatures --------------------------------------------------------------------- */

/* The signature algorithm @key signs with when asked for @alg (NULL: its default), and
 * the hash behind it (NULL for Ed25519, which hashes internally). */
static int sig_alg(const struct keyinfo *ki, const char *alg, const char **name, const char **md)
{
    if (ki->type == RP_SSH_KEY_RSA) {
        *name = alg ? alg : "rsa-sha2-512";
        if (strcmp(*name, "rsa-sha2-256") == 0)
            *md = "SHA256";
        else if (strcmp(*name, "rsa-sha2-512") == 0)
            *md = "SHA512";
        else if (strcmp(*name, "ssh-rsa") == 0)
            return rp_err(RP_EINVAL, "ssh-rsa signatures use SHA-1 and are refused: expected "
                                     "rsa-sha2-256 or rsa-sha2-512");
        else
            return rp_err(RP_EINVAL,
                          "signature algorithm '%.64s' does not belong to an "
                          "ssh-rsa key: expected rsa-sha2-256 or rsa-sha2-512",
                          *name);
        return 0;
    }
    *name = ki->name;
    *md = ki->md;
    if (alg != NULL && strcmp(alg, ki->name) != 0)
        return rp_err(RP_EINVAL, "signature algorithm '%.64s' does not belong to an %s key", alg,
                      ki->name);
    return 0;
}

int rp_ssh_sign(EVP_PKEY *key, const char *alg, const void *data, size_t n, struct rp_buf *sig)
{
    const struct keyinfo *ki;
    const char *name, *mdname;
    EVP_MD_CTX *ctx = NULL;
    ECDSA_SIG *es = NULL;
    uint8_t *raw = NULL;
    size_t rawlen = 0;
    struct rp_buf inner;
    rp_buf_init(&inner);
    int rv = identify(key, &ki);
    if (rv == 0)
        rv = sig_alg(ki, alg, &name, &mdname);
    if (rv != 0)
        return rv;
    const EVP_MD *md = mdname ? EVP_get_digestbyname(mdname) : NULL;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || (mdname != NULL && md == NULL)) {
        rv = ossl_err(RP_ENOMEM, "preparing to sign");
        goto out;
    }
    if (EVP_DigestSignInit(ctx, NULL, md, NULL, key) != 1 ||
        EVP_DigestSign(ctx, NULL, &rawlen, data, n) != 1 || (raw = malloc(rawlen)) == NULL ||
        EVP_DigestSign(ctx, raw, &rawlen, data, n) != 1) {
        rv = ossl_err(RP_EINVAL, "signing failed (is this a private key?)");
        goto out;
    }
    if (is_ecdsa(ki)) {
        /* OpenSSL gives DER; RFC 5656 3.1.2 wants string(mpint r, mpint s). */
        const unsigned char *pp = raw;
        const BIGNUM *r, *s;
        es = d2i_ECDSA_SIG(NULL, &pp, (long)rawlen);
        if (es == NULL) {
            rv = ossl_err(RP_EINVAL, "OpenSSL returned an unreadable ECDSA signature");
            goto out;
        }
        ECDSA_SIG_get0(es, &r, &s);
        rv = rp_ssh_put_mpint(&inner, r);
        if (rv == 0)
            rv = rp_ssh_put_mpint(&inner, s);
    } else {
        rv = rp_buf_append(&inner, raw, rawlen);
    }
    if (rv == 0)
        rv = rp_ssh_put_cstring(sig, name);
    if (rv == 0)
        rv = rp_ssh_put_string(sig, inner.data, inner.len);
out:
    ECDSA_SIG_free(es);
    free(raw);
    EVP_MD_CTX_free(ctx);
    rp_buf_free(&inner);
    return rv;
}

/* Turns the signature bytes of an SSH signature blob into what OpenSSL verifies:
 * DER for ECDSA, the modulus-sized block for RSA, the 64 bytes for Ed25519. *out is
 * malloc'd. */
static int sig_to_openssl(EVP_PKEY *key, const struct keyinfo *ki, const uint8_t *p, size_t n,
                          uint8_t **out, size_t *outlen)
{
    if (ki->type == RP_SSH_KEY_ED25519) {
        if (n != 64)
            return rp_err(RP_EINVAL, "Ed25519 signature is %zu bytes, expected 64", n);
        *out = malloc(n);
        if (*out == NULL)
            return rp_err(RP_ENOMEM, "signature copy");
        memcpy(*out, p, n);
        *outlen = n;
        return 0;
    }
    if (ki->type == RP_SSH_KEY_RSA) {
        /* OpenSSH accepts a signature shorter than the modulus (leading zeros dropped
         * by some signers) and left-pads it; longer is always wrong. */
        size_t modlen = (size_t)EVP_PKEY_get_size(key);
        if (n == 0 || n > modlen)
            return rp_err(RP_EINVAL, "RSA signature is %zu bytes for a %zu-byte modulus", n,
                          modlen);
        *out = calloc(1, modlen);
        if (*out == NULL)
            return rp_err(RP_ENOMEM, "signature copy");
        memcpy(*out + modlen - n, p, n);
        *outlen = modlen;
        return 0;
    }
    struct rp_rd r;
    BIGNUM *br = NULL, *bs = NULL;
    ECDSA_SIG *es = NULL;
    unsigned char *der = NULL;
    rp_rd_init(&r, p, n);
    int rv = rp_ssh_get_mpint(&r, "ECDSA signature r", ki->field_len, &br);
    if (rv == 0)
        rv = rp_ssh_get_mpint(&r, "ECDSA signature s", ki->field_len, &bs);
    if (rv == 0 && rp_rd_left(&r) != 0)
        rv = rp_err(RP_EINVAL, "%zu trailing bytes after ECDSA signature s", rp_rd_left(&r));
    if (rv == 0 && (es = ECDSA_SIG_new()) == NULL)
        rv = ossl_err(RP_ENOMEM, "ECDSA signature");
    if (rv == 0) {
        ECDSA_SIG_set0(es, br, bs); /* es owns them now */
        br = bs = NULL;
        int len = i2d_ECDSA_SIG(es, &der);
        if (len <= 0) {
            rv = ossl_err(RP_ENOMEM, "ECDSA signature encoding");
        } else {
            *out = malloc((size_t)len);
            if (*out == NULL) {
                rv = rp_err(RP_ENOMEM, "signature copy");
            } else {
                memcpy(*out, der, (size_t)len);
                *outlen = (size_t)len;
            }
        }
    }
    OPENSSL_free(der);
    ECDSA_SIG_free(es);
    BN_free(br);
    BN_free(bs);
    return rv;
}

int rp_ssh_verify(EVP_PKEY *key, const uint8_t *sig, size_t sig_len, const void *data, size_t n)
{
    const struct keyinfo *ki;
    const char *name, *mdname;
    const uint8_t *p;
    size_t plen, rawlen = 0;
    uint8_t *raw = NULL;
    char *alg = NULL;
    EVP_MD_CTX *ctx = NULL;
    struct rp_rd r;
    rp_rd_init(&r, sig, sig_len);
    int rv = identify(key, &ki);
    if (rv == 0)
        rv = rp_ssh_get_cstring(&r, "signature algorithm", &alg);
    if (rv == 0)
        rv = sig_alg(ki, alg, &name, &mdname);
    if (rv == 0)
        rv = rp_ssh_get_string(&r, "signature bytes", &p, &plen);
    if (rv == 0 && rp_rd_left(&r) != 0)
        rv = rp_err(RP_EINVAL, "%zu trailing bytes after the signature", rp_rd_left(&r));
    if (rv == 0)
        rv = sig_to_openssl(key, ki, p, plen, &raw, &rawlen);
    if (rv != 0)
        goto out;
    const EVP_MD *md = mdname ? EVP_get_digestbyname(mdname) : NULL;
    ctx = EVP_MD_CTX_new();
    if (ctx == NULL || (mdname != NULL && md == NULL) ||
        EVP_DigestVerifyInit(ctx, NULL, md, NULL, key) != 1) {
        rv = ossl_err(RP_ENOMEM, "preparing to verify");
        goto out;
    }
    if (EVP_DigestVerify(ctx, raw, rawlen, data, n) != 1) {
        ERR_clear_error();
        rv = rp_err(RP_EDENIED, "%s signature does not verify", name);
    }
out:
    EVP_MD_CTX_free(ctx);
    free(raw);
    free(alg);
    return rv;
}
