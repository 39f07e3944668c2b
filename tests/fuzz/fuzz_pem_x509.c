/* tests/fuzz/fuzz_pem_x509.c: PEM keys and certificates, and identities read from
 * X.509 (lib/tls.h).
 *
 * Joining servers and users send public keys as PEM to be certified (the P-256 path
 * is our own parser, rp_tls_pubkey_spki), clients read certificates back, and every
 * connection's identity is read from its peer's certificate by rp_identity_from_cert.
 * Each input is tried as PEM (public key, private key, certificate) and as a DER
 * certificate, so that the fuzzer reaches the identity reader without learning
 * base64.
 *
 * Checked: rp_tls_pubkey_spki accepts only what rp_tls_pubkey_from_pem accepts, and
 * its DER is that key's; keys and certificates written back as PEM read back equal;
 * an identity read from a certificate is the same after a PEM round trip. */
#include <openssl/evp.h>
#include <openssl/x509.h>

#include "lib/tls.h"
#include "tests/fuzz/check.h"

static void check_pubkey(const char *pem, size_t n)
{
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    EVP_PKEY *key = NULL, *again = NULL;
    char *out = NULL;

    int fast = rp_tls_pubkey_spki(pem, n, spki);
    if (rp_tls_pubkey_from_pem(pem, n, &key) != 0) {
        FUZZ_CHECK(fast != 0);
        return;
    }
    if (fast == 0) {
        unsigned char *der = NULL;
        int len = i2d_PUBKEY(key, &der);
        FUZZ_CHECK(len == RP_TLS_P256_SPKI_LEN && memcmp(der, spki, (size_t)len) == 0);
        OPENSSL_free(der);
    }
    FUZZ_CHECK(rp_tls_pubkey_to_pem(key, &out) == 0);
    FUZZ_CHECK(rp_tls_pubkey_from_pem(out, strlen(out), &again) == 0);
    FUZZ_CHECK(EVP_PKEY_eq(key, again) == 1);
    EVP_PKEY_free(key);
    EVP_PKEY_free(again);
    free(out);
}

static void check_private(const char *pem, size_t n)
{
    EVP_PKEY *key = NULL, *again = NULL;
    char *out = NULL;

    if (rp_tls_key_from_pem(pem, n, &key) != 0)
        return;
    FUZZ_CHECK(rp_tls_key_to_pem(key, &out) == 0);
    FUZZ_CHECK(rp_tls_key_from_pem(out, strlen(out), &again) == 0);
    FUZZ_CHECK(EVP_PKEY_eq(key, again) == 1);
    EVP_PKEY_free(key);
    EVP_PKEY_free(again);
    free(out);
}

static bool same_list(char **a, size_t na, char **b, size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        if (strcmp(a[i], b[i]) != 0)
            return false;
    }
    return true;
}

static bool same_str(const char *a, const char *b)
{
    return (a == NULL && b == NULL) || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* Reads @x's identity, and checks that its PEM form reads back to the same one. */
static void check_cert(X509 *x)
{
    struct rp_identity id, id2;
    X509 *again = NULL;
    char *pem = NULL;

    memset(&id, 0, sizeof id);
    memset(&id2, 0, sizeof id2);
    int rv = rp_identity_from_cert(x, &id);
    FUZZ_CHECK(rp_tls_cert_to_pem(x, &pem) == 0);
    FUZZ_CHECK(rp_tls_cert_from_pem(pem, strlen(pem), &again) == 0);
    FUZZ_CHECK(X509_cmp(x, again) == 0);
    int rv2 = rp_identity_from_cert(again, &id2);
    FUZZ_CHECK(rv == rv2);
    if (rv == 0) {
        FUZZ_CHECK(same_str(id.name, id2.name) && same_str(id.cluster, id2.cluster) &&
                   same_str(id.route_cluster, id2.route_cluster));
        FUZZ_CHECK(same_list(id.groups, id.n_groups, id2.groups, id2.n_groups));
        FUZZ_CHECK(same_list(id.logins, id.n_logins, id2.logins, id2.n_logins));
        FUZZ_CHECK(id.not_after == id2.not_after);
        rp_identity_has_group(&id, RP_ROLE_ADMIN);
    }
    rp_identity_free(&id);
    rp_identity_free(&id2);
    X509_free(again);
    free(pem);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    X509 *x = NULL;

    check_pubkey(text, size);
    check_private(text, size);
    if (rp_tls_cert_from_pem(text, size, &x) == 0) {
        check_cert(x);
        X509_free(x);
    }

    const unsigned char *p = data;
    x = d2i_X509(NULL, &p, (long)size);
    if (x != NULL) {
        check_cert(x);
        X509_free(x);
    }
    return 0;
}
