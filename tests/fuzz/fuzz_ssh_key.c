/* tests/fuzz/fuzz_ssh_key.c: OpenSSH keys and signatures (lib/ssh_key.h).
 *
 * Users upload public keys (authorized_keys lines) to be certified, tsh reads private
 * key files, and signatures arrive in SSH authentication. Each input goes to every
 * parser: as a public key blob, as an authorized_keys line, as a private key file, as
 * a line to split, and as a signature blob checked against an Ed25519, an ECDSA and an
 * RSA key of our own.
 *
 * Checked: rp_ssh_pubkey_blob_check and rp_ssh_pubkey_from_blob accept the same blobs
 * with the same type; an accepted blob is canonical (the key writes it back byte for
 * byte, so one key has one fingerprint); a parsed line or private key is written and
 * read back to the same key and comment; the line parsers agree; and no input is a
 * valid signature of our keys. */
#include <openssl/evp.h>

#include "lib/buf.h"
#include "lib/ssh_key.h"
#include "tests/fuzz/check.h"

static EVP_PKEY *g_signers[3];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const enum rp_ssh_keytype types[] = {RP_SSH_KEY_ED25519, RP_SSH_KEY_ECDSA_P256,
                                                RP_SSH_KEY_RSA};
    (void)argc;
    (void)argv;
    for (size_t i = 0; i < 3; i++)
        FUZZ_CHECK(rp_ssh_keygen(types[i], &g_signers[i]) == 0);
    return 0;
}

static bool same_public(EVP_PKEY *a, EVP_PKEY *b)
{
    struct rp_buf ba, bb;
    rp_buf_init(&ba);
    rp_buf_init(&bb);
    FUZZ_CHECK(rp_ssh_pubkey_to_blob(a, &ba) == 0 && rp_ssh_pubkey_to_blob(b, &bb) == 0);
    bool same = ba.len == bb.len && memcmp(ba.data, bb.data, ba.len) == 0;
    rp_buf_free(&ba);
    rp_buf_free(&bb);
    return same;
}

static void check_blob(const uint8_t *data, size_t size)
{
    enum rp_ssh_keytype t1, t2;
    EVP_PKEY *key = NULL;
    int checked = rp_ssh_pubkey_blob_check(data, size, &t1);
    int parsed = rp_ssh_pubkey_from_blob(data, size, &key);
    FUZZ_CHECK((checked == 0) == (parsed == 0));
    if (parsed != 0)
        return;
    FUZZ_CHECK(rp_ssh_key_type(key, &t2) == 0 && t1 == t2);
    struct rp_buf b;
    rp_buf_init(&b);
    FUZZ_CHECK(rp_ssh_pubkey_to_blob(key, &b) == 0);
    FUZZ_CHECK(b.len == size && memcmp(b.data, data, size) == 0);
    rp_buf_free(&b);
    char fp[RP_SSH_FINGERPRINT_LEN];
    FUZZ_CHECK(rp_ssh_fingerprint(key, fp, sizeof fp) == 0);
    EVP_PKEY_free(key);
}

static void check_line(const char *line)
{
    EVP_PKEY *key = NULL, *again = NULL;
    char *comment = NULL, *comment2 = NULL, *formatted = NULL;
    uint8_t *blob = NULL;
    size_t blob_len;
    enum rp_ssh_keytype type;

    int parsed = rp_ssh_pubkey_parse(line, &key, &comment);
    int blob_parsed = rp_ssh_pubkey_parse_blob(line, &blob, &blob_len, &type);
    FUZZ_CHECK((parsed == 0) == (blob_parsed == 0));
    free(blob);
    if (parsed != 0)
        return;
    FUZZ_CHECK(rp_ssh_pubkey_format(key, comment, &formatted) == 0);
    FUZZ_CHECK(rp_ssh_pubkey_parse(formatted, &again, &comment2) == 0);
    FUZZ_CHECK(same_public(key, again));
    FUZZ_CHECK(strcmp(comment, comment2) == 0);
    EVP_PKEY_free(key);
    EVP_PKEY_free(again);
    free(comment);
    free(comment2);
    free(formatted);
}

static void check_private(const char *text, size_t n)
{
    EVP_PKEY *key = NULL, *again = NULL;
    char *comment = NULL, *comment2 = NULL, *formatted = NULL;

    if (rp_ssh_privkey_parse(text, n, &key, &comment) != 0)
        return;
    FUZZ_CHECK(rp_ssh_privkey_format(key, comment, &formatted) == 0);
    FUZZ_CHECK(rp_ssh_privkey_parse(formatted, strlen(formatted), &again, &comment2) == 0);
    FUZZ_CHECK(same_public(key, again));
    FUZZ_CHECK(strcmp(comment, comment2) == 0);
    EVP_PKEY_free(key);
    EVP_PKEY_free(again);
    free(comment);
    free(comment2);
    free(formatted);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = fuzz_cstr(data, size);

    check_blob(data, size);
    check_line(text);
    check_private((const char *)data, size);

    uint8_t *blob = NULL;
    size_t blob_len;
    char *comment = NULL;
    if (rp_ssh_line_split(text, &blob, &blob_len, &comment) == 0) {
        free(blob);
        free(comment);
    }
    for (size_t i = 0; i < 3; i++)
        FUZZ_CHECK(rp_ssh_verify(g_signers[i], data, size, "fuzz", 4) != 0);
    free(text);
    return 0;
}
