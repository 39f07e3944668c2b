/* tests/fuzz/fuzz_ssh_cert.c: OpenSSH certificates (lib/ssh_cert.h).
 *
 * Nodes and proxies will parse every certificate a client presents before deciding
 * anything, so the parser sees whatever an attacker sends. Each input is parsed as a
 * certificate blob and, as text, as a certificate line.
 *
 * Checked for an accepted certificate: the parse keeps the whole blob and places the
 * signature inside it; the signature check runs on it, and the policy check never
 * accepts it for a CA that did not sign it; its line form parses to the same blob; and
 * signed again by our CA from the parsed fields, it parses back to the same fields (what
 * we read is what we would write). */
#include <openssl/evp.h>

#include "lib/buf.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "tests/fuzz/check.h"

static EVP_PKEY *g_ca;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    FUZZ_CHECK(rp_ssh_keygen(RP_SSH_KEY_ED25519, &g_ca) == 0);
    return 0;
}

static bool same_opts(const struct rp_ssh_cert_opt *a, size_t na, const struct rp_ssh_cert_opt *b,
                      size_t nb)
{
    if (na != nb)
        return false;
    for (size_t i = 0; i < na; i++) {
        if (strcmp(a[i].name, b[i].name) != 0 || strcmp(a[i].value, b[i].value) != 0)
            return false;
    }
    return true;
}

static bool same_fields(const struct rp_ssh_cert *a, const struct rp_ssh_cert *b)
{
    if (a->type != b->type || a->key_type != b->key_type || a->serial != b->serial ||
        a->nonce_len != b->nonce_len || memcmp(a->nonce, b->nonce, a->nonce_len) != 0 ||
        strcmp(a->key_id, b->key_id) != 0 || a->valid_after != b->valid_after ||
        a->valid_before != b->valid_before || a->n_principals != b->n_principals ||
        EVP_PKEY_eq(a->key, b->key) != 1)
        return false;
    for (size_t i = 0; i < a->n_principals; i++) {
        if (strcmp(a->principals[i], b->principals[i]) != 0)
            return false;
    }
    return same_opts(a->critical, a->n_critical, b->critical, b->n_critical) &&
           same_opts(a->extensions, a->n_extensions, b->extensions, b->n_extensions);
}

static void check_resign(const struct rp_ssh_cert *c)
{
    struct rp_ssh_cert tmpl = *c, again;
    struct rp_buf blob;

    tmpl.key_blob = NULL;
    tmpl.key_blob_len = 0;
    rp_buf_init(&blob);
    if (rp_ssh_cert_sign(&tmpl, g_ca, &blob) == 0) {
        FUZZ_CHECK(rp_ssh_cert_parse(blob.data, blob.len, &again) == 0);
        FUZZ_CHECK(same_fields(c, &again));
        FUZZ_CHECK(rp_ssh_cert_verify(&again) == 0);
        FUZZ_CHECK(rp_ssh_cert_check(&again, g_ca, again.type, again.valid_after, NULL, NULL) == 0);
        rp_ssh_cert_free(&again);
    }
    rp_buf_free(&blob);
}

static void check_cert(const struct rp_ssh_cert *c, const uint8_t *data, size_t size)
{
    FUZZ_CHECK(c->blob_len == size && memcmp(c->blob, data, size) == 0);
    FUZZ_CHECK(c->signed_len <= c->sig_off && c->sig_off + c->sig_len == size);
    FUZZ_CHECK(c->key != NULL && c->signature_key != NULL && c->key_id != NULL);

    rp_ssh_cert_verify(c);
    enum rp_ssh_cert_verdict why;
    const char *who = c->n_principals > 0 ? c->principals[0] : "root";
    FUZZ_CHECK(rp_ssh_cert_check(c, g_ca, c->type, c->valid_after, who, &why) != 0);
    rp_ssh_cert_opt_find(c->critical, c->n_critical, RP_SSH_OPT_FORCE_COMMAND);
    rp_ssh_cert_opt_find(c->extensions, c->n_extensions, RP_SSH_EXT_TELEPORT_ROLES);

    char *line = NULL, *comment = NULL;
    struct rp_ssh_cert again;
    FUZZ_CHECK(rp_ssh_cert_format(c->blob, c->blob_len, "fuzz", &line) == 0);
    FUZZ_CHECK(rp_ssh_cert_parse_line(line, &again, &comment) == 0);
    FUZZ_CHECK(again.blob_len == size && memcmp(again.blob, data, size) == 0);
    FUZZ_CHECK(strcmp(comment, "fuzz") == 0);
    rp_ssh_cert_free(&again);
    free(line);
    free(comment);

    check_resign(c);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rp_ssh_cert c;
    if (rp_ssh_cert_parse(data, size, &c) == 0) {
        check_cert(&c, data, size);
        rp_ssh_cert_free(&c);
    }

    char *text = fuzz_cstr(data, size);
    char *comment = NULL;
    if (rp_ssh_cert_parse_line(text, &c, &comment) == 0) {
        FUZZ_CHECK(comment != NULL);
        rp_ssh_cert_free(&c);
        free(comment);
    }
    free(text);
    return 0;
}
