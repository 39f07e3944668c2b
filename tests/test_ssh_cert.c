/* tests/test_ssh_cert.c: OpenSSH keys and certificates (lib/ssh_key, lib/ssh_cert),
 * checked against OpenSSH's own ssh-keygen: what we write it must read the same way,
 * what it writes we must read, and damaged input must be refused, never crash. */
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"
#include "tests/lib/raft_helpers.h"

#define SSH_KEYGEN "/usr/bin/ssh-keygen"

static char *dir;

static void setup(void)
{
    dir = rt_tmpdir("sshcert");
    /* ssh-keygen -L prints validity in local time; pin it so output can be compared. */
    setenv("TZ", "UTC", 1);
    tzset();
}

static void teardown(void)
{
    rt_rmtree(dir);
    free(dir);
}

TestSuite(ssh_cert, .init = setup, .fini = teardown);

/* ---- helpers ------------------------------------------------------------------------ */

static const enum rp_ssh_keytype all_types[] = {RP_SSH_KEY_ED25519, RP_SSH_KEY_ECDSA_P256,
                                                RP_SSH_KEY_ECDSA_P384, RP_SSH_KEY_ECDSA_P521,
                                                RP_SSH_KEY_RSA};
#define N_TYPES (sizeof all_types / sizeof all_types[0])

static EVP_PKEY *gen(enum rp_ssh_keytype t)
{
    EVP_PKEY *k = NULL;
    cr_assert_eq(rp_ssh_keygen(t, &k), 0, "keygen %s: %s", rp_ssh_key_type_name(t), rp_errmsg());
    return k;
}

/* @dir/@name into @out. */
static void mkpath(char *out, size_t outlen, const char *name)
{
    cr_assert_lt(snprintf(out, outlen, "%s/%s", dir, name), (int)outlen);
}

static void write_text(const char *path, const char *text, unsigned mode)
{
    cr_assert_eq(rp_write_file(path, text, strlen(text), mode), 0, "%s", rp_errmsg());
}

static char *read_text(const char *path, size_t *len)
{
    char *s;
    size_t n;
    cr_assert_eq(rp_read_file(path, 1 << 20, &s, &n), 0, "%s", rp_errmsg());
    if (len)
        *len = n;
    return s;
}

/* Runs ssh-keygen with the NULL-terminated arguments; asserts it exits 0 unless
 * @may_fail. The caller frees @r with cl_run_free. */
static int keygen_run(struct cl_run *r, int may_fail, ...)
{
    char *argv[32];
    int n = 0;
    va_list ap;
    argv[n++] = SSH_KEYGEN;
    va_start(ap, may_fail);
    for (char *a; (a = va_arg(ap, char *)) != NULL && n < 31;)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    cl_run_argv(argv, 60000, r);
    if (!may_fail)
        cr_assert_eq(r->status, 0, "ssh-keygen %s %s failed (%d): %s%s", argv[1],
                     n > 2 ? argv[2] : "", r->status, r->out, r->err);
    return r->status;
}

/* Writes @key's public line to @dir/@name. */
static void write_pub(EVP_PKEY *key, const char *name, const char *comment)
{
    char p[512], *line;
    mkpath(p, sizeof p, name);
    cr_assert_eq(rp_ssh_pubkey_format(key, comment, &line), 0, "%s", rp_errmsg());
    size_t n = strlen(line);
    line = realloc(line, n + 2);
    memcpy(line + n, "\n", 2);
    write_text(p, line, 0644);
    free(line);
}

static void fingerprint(EVP_PKEY *key, char *out)
{
    cr_assert_eq(rp_ssh_fingerprint(key, out, RP_SSH_FINGERPRINT_LEN), 0, "%s", rp_errmsg());
}

/* Signs @c with @ca, asserting success; the blob goes to @out. */
static void sign_cert(const struct rp_ssh_cert *c, EVP_PKEY *ca, struct rp_buf *out)
{
    rp_buf_init(out);
    cr_assert_eq(rp_ssh_cert_sign(c, ca, out), 0, "sign: %s", rp_errmsg());
}

/* Writes the one-line form of @blob to @dir/@name (+ newline). */
static void write_cert(const struct rp_buf *blob, const char *name)
{
    char p[512], *line;
    mkpath(p, sizeof p, name);
    cr_assert_eq(rp_ssh_cert_format(blob->data, blob->len, "test", &line), 0, "%s", rp_errmsg());
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_printf(&b, "%s\n", line);
    write_text(p, (char *)b.data, 0644);
    rp_buf_free(&b);
    free(line);
}

/* What ssh-keygen -L prints for an option it does not know: the hex of its data. */
static void unknown_option_text(struct rp_buf *out, const char *name, const char *value)
{
    size_t n = strlen(value);
    rp_buf_printf(out, "                %s UNKNOWN OPTION: %08zx", name, n);
    for (size_t i = 0; i < n; i++)
        rp_buf_printf(out, "%02x", (unsigned char)value[i]);
    rp_buf_printf(out, " (len %zu)\n", n + 4);
}

/* ssh-keygen's label of a key type ("ED25519", "ECDSA", "RSA"). */
static const char *keygen_label(enum rp_ssh_keytype t)
{
    return t == RP_SSH_KEY_ED25519 ? "ED25519" : t == RP_SSH_KEY_RSA ? "RSA" : "ECDSA";
}

/* The signature algorithm our signer uses with a CA of type @t. */
static const char *sig_alg_of(enum rp_ssh_keytype t)
{
    return t == RP_SSH_KEY_RSA ? "rsa-sha2-512" : rp_ssh_key_type_name(t);
}

/* A user certificate template for @key: principals root and alice, valid for the hour
 * around now. */
static char *default_principals[] = {"root", "alice"};
static struct rp_ssh_cert user_template(EVP_PKEY *key)
{
    uint64_t now = (uint64_t)time(NULL);
    struct rp_ssh_cert c = {
        .type = RP_SSH_CERT_USER,
        .key = key,
        .serial = 7,
        .key_id = "alice",
        .principals = default_principals,
        .n_principals = 2,
        .valid_after = now - 60,
        .valid_before = now + 3600,
    };
    return c;
}

/* ---- public keys -------------------------------------------------------------------- */

Test(ssh_cert, public_key_blob_and_line_round_trip_for_every_key_type)
{
    for (size_t i = 0; i < N_TYPES; i++) {
        const char *name = rp_ssh_key_type_name(all_types[i]);
        EVP_PKEY *k = gen(all_types[i]), *back = NULL, *back2 = NULL;
        struct rp_buf blob, blob2;
        rp_buf_init(&blob);
        rp_buf_init(&blob2);
        cr_assert_eq(rp_ssh_pubkey_to_blob(k, &blob), 0, "%s: %s", name, rp_errmsg());
        cr_assert_eq(rp_ssh_pubkey_from_blob(blob.data, blob.len, &back), 0, "%s: %s", name,
                     rp_errmsg());
        cr_assert_eq(EVP_PKEY_eq(k, back), 1, "%s: key changed through its blob", name);
        cr_assert_eq(rp_ssh_pubkey_to_blob(back, &blob2), 0);
        cr_assert(blob.len == blob2.len && memcmp(blob.data, blob2.data, blob.len) == 0,
                  "%s: blob not stable", name);

        char *line, *comment = NULL;
        cr_assert_eq(rp_ssh_pubkey_format(k, "user@host", &line), 0, "%s", rp_errmsg());
        cr_assert_eq(strncmp(line, name, strlen(name)), 0, "%s: line %s", name, line);
        cr_assert_eq(line[strlen(name)], ' ');
        cr_assert_eq(rp_ssh_pubkey_parse(line, &back2, &comment), 0, "%s: %s", name, rp_errmsg());
        cr_assert_str_eq(comment, "user@host");
        cr_assert_eq(EVP_PKEY_eq(k, back2), 1);
        free(line);
        free(comment);
        EVP_PKEY_free(back2);

        /* No comment: no trailing blank, and the parse gives "". */
        cr_assert_eq(rp_ssh_pubkey_format(k, NULL, &line), 0);
        cr_assert_neq(line[strlen(line) - 1], ' ');
        cr_assert_eq(rp_ssh_pubkey_parse(line, &back2, &comment), 0, "%s", rp_errmsg());
        cr_assert_str_eq(comment, "");
        free(line);
        free(comment);

        EVP_PKEY_free(k);
        EVP_PKEY_free(back);
        EVP_PKEY_free(back2);
        rp_buf_free(&blob);
        rp_buf_free(&blob2);
    }
}

Test(ssh_cert, key_lines_with_mismatched_type_or_garbage_are_refused)
{
    EVP_PKEY *k = gen(RP_SSH_KEY_ED25519), *out = NULL;
    char *line;
    cr_assert_eq(rp_ssh_pubkey_format(k, "c", &line), 0);
    /* Same blob, other type word: OpenSSH refuses this too. */
    char *swapped = malloc(strlen(line) + 32);
    sprintf(swapped, "ecdsa-sha2-nistp256%s", line + strlen("ssh-ed25519"));
    cr_assert_eq(rp_ssh_pubkey_parse(swapped, &out, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "says 'ecdsa-sha2-nistp256'"), "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_pubkey_parse("ssh-ed25519 not*base64", &out, NULL), RP_EINVAL);
    cr_assert_eq(rp_ssh_pubkey_parse("ssh-ed25519", &out, NULL), RP_EINVAL);
    cr_assert_eq(rp_ssh_pubkey_parse("cert-authority ssh-ed25519 AAAA", &out, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "unknown key type 'cert-authority'"), "%s", rp_errmsg());
    sprintf(swapped, "%s\nsecond line", line);
    cr_assert_eq(rp_ssh_pubkey_parse(swapped, &out, NULL), RP_EINVAL);
    sprintf(swapped, "  %s\r\n", line);
    cr_assert_eq(rp_ssh_pubkey_parse(swapped, &out, NULL), 0, "%s", rp_errmsg());
    EVP_PKEY_free(out);
    free(swapped);
    free(line);
    EVP_PKEY_free(k);
}

Test(ssh_cert, rsa_keys_under_2048_bits_are_refused)
{
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024), *out = NULL;
    cr_assert_not_null(small);
    struct rp_buf blob;
    rp_buf_init(&blob);
    cr_assert_eq(rp_ssh_pubkey_to_blob(small, &blob), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "1024 bits is too small: at least 2048"), "%s", rp_errmsg());
    EVP_PKEY_free(small);

    /* The same refusal for a key that comes from the outside. */
    char p[512];
    struct cl_run r;
    mkpath(p, sizeof p, "rsa1024");
    keygen_run(&r, false, "-q", "-t", "rsa", "-b", "1024", "-N", "", "-f", p, NULL);
    cl_run_free(&r);
    mkpath(p, sizeof p, "rsa1024.pub");
    char *line = read_text(p, NULL);
    cr_assert_eq(rp_ssh_pubkey_parse(line, &out, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "at least 2048 bits"), "%s", rp_errmsg());
    free(line);
    rp_buf_free(&blob);
}

Test(ssh_cert, fingerprints_equal_ssh_keygen_output)
{
    for (size_t i = 0; i < N_TYPES; i++) {
        char p[512], fp[RP_SSH_FINGERPRINT_LEN];
        struct cl_run r;
        EVP_PKEY *k = gen(all_types[i]);
        fingerprint(k, fp);
        cr_assert_eq(strlen(fp), strlen("SHA256:") + 43, "%s", fp);
        write_pub(k, "fp.pub", "fp-test");
        mkpath(p, sizeof p, "fp.pub");
        keygen_run(&r, false, "-l", "-f", p, NULL);
        /* "256 SHA256:... fp-test (ED25519)" */
        char want[128];
        snprintf(want, sizeof want, " %s fp-test (%s)\n", fp, keygen_label(all_types[i]));
        cr_assert(strstr(r.out, want) != NULL, "%s: ssh-keygen says '%s', we say '%s'",
                  rp_ssh_key_type_name(all_types[i]), r.out, fp);
        cl_run_free(&r);
        EVP_PKEY_free(k);
    }
}

/* ---- private keys ------------------------------------------------------------------- */

Test(ssh_cert, private_keys_we_write_are_read_by_ssh_keygen)
{
    for (size_t i = 0; i < N_TYPES; i++) {
        if (all_types[i] == RP_SSH_KEY_RSA)
            continue;
        const char *name = rp_ssh_key_type_name(all_types[i]);
        char p[512], *text, *line, *comment = NULL;
        struct cl_run r;
        EVP_PKEY *k = gen(all_types[i]), *back = NULL;
        cr_assert_eq(rp_ssh_privkey_format(k, "written-by-raftport", &text), 0, "%s: %s", name,
                     rp_errmsg());
        cr_assert(strncmp(text, "-----BEGIN OPENSSH PRIVATE KEY-----\n", 36) == 0);
        mkpath(p, sizeof p, "id");
        write_text(p, text, 0600);

        keygen_run(&r, false, "-y", "-f", p, NULL);
        cr_assert_eq(rp_ssh_pubkey_format(k, NULL, &line), 0);
        cr_assert(strncmp(r.out, line, strlen(line)) == 0 &&
                      (r.out[strlen(line)] == ' ' || r.out[strlen(line)] == '\n'),
                  "%s: ssh-keygen -y gives '%s', expected '%s'", name, r.out, line);
        cr_assert(strstr(r.out, "written-by-raftport") != NULL, "%s: comment lost: %s", name,
                  r.out);
        cl_run_free(&r);

        /* And our own reader takes it back, private half included. */
        cr_assert_eq(rp_ssh_privkey_parse(text, strlen(text), &back, &comment), 0, "%s: %s", name,
                     rp_errmsg());
        cr_assert_str_eq(comment, "written-by-raftport");
        cr_assert_eq(EVP_PKEY_eq(k, back), 1);
        struct rp_buf sig;
        rp_buf_init(&sig);
        cr_assert_eq(rp_ssh_sign(back, NULL, "msg", 3, &sig), 0, "%s", rp_errmsg());
        cr_assert_eq(rp_ssh_verify(k, sig.data, sig.len, "msg", 3), 0, "%s", rp_errmsg());
        rp_buf_free(&sig);
        free(text);
        free(line);
        free(comment);
        EVP_PKEY_free(k);
        EVP_PKEY_free(back);
    }
}

Test(ssh_cert, private_keys_made_by_ssh_keygen_are_read)
{
    static const struct {
        const char *t, *bits;
    } kinds[] = {{"ed25519", NULL}, {"ecdsa", "256"}, {"ecdsa", "384"}, {"ecdsa", "521"}};
    for (size_t i = 0; i < sizeof kinds / sizeof kinds[0]; i++) {
        char p[512], pub[520];
        struct cl_run r;
        snprintf(p, sizeof p, "%s/k%zu", dir, i);
        snprintf(pub, sizeof pub, "%s.pub", p);
        if (kinds[i].bits)
            keygen_run(&r, false, "-q", "-t", kinds[i].t, "-b", kinds[i].bits, "-N", "", "-C",
                       "made-by-ssh-keygen", "-f", p, NULL);
        else
            keygen_run(&r, false, "-q", "-t", kinds[i].t, "-N", "", "-C", "made-by-ssh-keygen",
                       "-f", p, NULL);
        cl_run_free(&r);
        size_t n;
        char *text = read_text(p, &n), *line = read_text(pub, NULL), *comment = NULL;
        EVP_PKEY *priv = NULL, *pk = NULL;
        cr_assert_eq(rp_ssh_privkey_parse(text, n, &priv, &comment), 0, "%s %s: %s", kinds[i].t,
                     kinds[i].bits ? kinds[i].bits : "", rp_errmsg());
        cr_assert_str_eq(comment, "made-by-ssh-keygen");
        cr_assert_eq(rp_ssh_pubkey_parse(line, &pk, NULL), 0, "%s", rp_errmsg());
        cr_assert_eq(EVP_PKEY_eq(priv, pk), 1, "%s: private and .pub disagree", kinds[i].t);
        free(text);
        free(line);
        free(comment);
        EVP_PKEY_free(priv);
        EVP_PKEY_free(pk);
    }
}

Test(ssh_cert, encrypted_and_rsa_private_keys_are_refused)
{
    char p[512];
    struct cl_run r;
    size_t n;
    EVP_PKEY *k = NULL;
    mkpath(p, sizeof p, "enc");
    keygen_run(&r, false, "-q", "-t", "ed25519", "-N", "a passphrase", "-f", p, NULL);
    cl_run_free(&r);
    char *text = read_text(p, &n);
    cr_assert_eq(rp_ssh_privkey_parse(text, n, &k, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "private key is encrypted (cipher aes256-ctr"), "%s",
              rp_errmsg());
    free(text);

    mkpath(p, sizeof p, "rsa");
    keygen_run(&r, false, "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", p, NULL);
    cl_run_free(&r);
    text = read_text(p, &n);
    cr_assert_eq(rp_ssh_privkey_parse(text, n, &k, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "RSA private keys"), "%s", rp_errmsg());
    free(text);

    EVP_PKEY *rsa = gen(RP_SSH_KEY_RSA);
    cr_assert_eq(rp_ssh_privkey_format(rsa, NULL, &text), RP_EINVAL);
    EVP_PKEY_free(rsa);

    const char *pem = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n"
                      "-----END PRIVATE KEY-----\n";
    cr_assert_eq(rp_ssh_privkey_parse(pem, strlen(pem), &k, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "not an OpenSSH private key"), "%s", rp_errmsg());
}

/* Base64 of an openssh-key-v1 file in and out, so tests can damage the binary. */
static size_t unarmour_for_test(const char *text, uint8_t *out)
{
    char b64[4096];
    size_t n = 0;
    const char *p = strchr(text, '\n') + 1;
    for (; *p != '-'; p++) {
        if (*p != '\n')
            b64[n++] = *p;
    }
    b64[n] = '\0';
    int len = EVP_DecodeBlock(out, (unsigned char *)b64, (int)n);
    cr_assert_gt(len, 0);
    /* EVP_DecodeBlock counts the bytes standing for the padding. */
    while (n > 0 && b64[--n] == '=')
        len--;
    return (size_t)len;
}

static char *armour_for_test(const uint8_t *bin, size_t n)
{
    char *b64 = malloc(n * 2 + 8), *text = malloc(n * 2 + 200);
    EVP_EncodeBlock((unsigned char *)b64, bin, (int)n);
    sprintf(text, "-----BEGIN OPENSSH PRIVATE KEY-----\n%s\n-----END OPENSSH PRIVATE KEY-----\n",
            b64);
    free(b64);
    return text;
}

Test(ssh_cert, damaged_private_keys_are_refused)
{
    EVP_PKEY *k = gen(RP_SSH_KEY_ED25519), *out = NULL;
    char *text, *bad;
    uint8_t bin[2048], copy[2048];
    /* Comment "c" leaves 4 bytes of padding in the private section (131 + 1 bytes). */
    cr_assert_eq(rp_ssh_privkey_format(k, "c", &text), 0, "%s", rp_errmsg());
    size_t n = unarmour_for_test(text, bin);
    /* magic 15, cipher 8, kdf 8, kdf options 4, count 4, public key 4 + 51, section
     * length 4: the check bytes start at 98. */
    const size_t check_at = 15 + 8 + 8 + 4 + 4 + 4 + 51 + 4;

    bad = armour_for_test(bin, n);
    cr_assert_eq(rp_ssh_privkey_parse(bad, strlen(bad), &out, NULL), 0, "%s", rp_errmsg());
    EVP_PKEY_free(out);
    free(bad);

    memcpy(copy, bin, n);
    copy[check_at] ^= 1;
    bad = armour_for_test(copy, n);
    cr_assert_eq(rp_ssh_privkey_parse(bad, strlen(bad), &out, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "check bytes differ"), "%s", rp_errmsg());
    free(bad);

    memcpy(copy, bin, n);
    copy[n - 1] ^= 0x10;
    bad = armour_for_test(copy, n);
    cr_assert_eq(rp_ssh_privkey_parse(bad, strlen(bad), &out, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "padding"), "%s", rp_errmsg());
    free(bad);

    memcpy(copy, bin, n);
    copy[15 + 8 + 8 + 4 + 3] = 2; /* two keys */
    bad = armour_for_test(copy, n);
    cr_assert_eq(rp_ssh_privkey_parse(bad, strlen(bad), &out, NULL), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "holds 2 keys"), "%s", rp_errmsg());
    free(bad);

    /* The public key of the file's public section, one bit off. */
    memcpy(copy, bin, n);
    copy[15 + 8 + 8 + 4 + 4 + 4 + 51 - 1] ^= 1;
    bad = armour_for_test(copy, n);
    cr_assert_eq(rp_ssh_privkey_parse(bad, strlen(bad), &out, NULL), RP_EINVAL);
    free(bad);

    /* No END line. */
    text[strlen(text) - 10] = '\0';
    cr_assert_eq(rp_ssh_privkey_parse(text, strlen(text), &out, NULL), RP_EINVAL);
    free(text);
    EVP_PKEY_free(k);
}

/* ---- signatures --------------------------------------------------------------------- */

Test(ssh_cert, signatures_verify_and_tampering_fails)
{
    for (size_t i = 0; i < N_TYPES; i++) {
        const char *name = rp_ssh_key_type_name(all_types[i]);
        EVP_PKEY *k = gen(all_types[i]), *other = gen(all_types[i]);
        struct rp_buf sig;
        rp_buf_init(&sig);
        cr_assert_eq(rp_ssh_sign(k, NULL, "hello", 5, &sig), 0, "%s: %s", name, rp_errmsg());
        cr_assert_eq(rp_ssh_verify(k, sig.data, sig.len, "hello", 5), 0, "%s: %s", name,
                     rp_errmsg());
        cr_assert_eq(rp_ssh_verify(k, sig.data, sig.len, "hellp", 5), RP_EDENIED, "%s", name);
        cr_assert_eq(rp_ssh_verify(other, sig.data, sig.len, "hello", 5), RP_EDENIED, "%s", name);
        sig.data[sig.len - 1] ^= 1;
        cr_assert_neq(rp_ssh_verify(k, sig.data, sig.len, "hello", 5), 0, "%s", name);
        rp_buf_free(&sig);
        EVP_PKEY_free(k);
        EVP_PKEY_free(other);
    }

    EVP_PKEY *rsa = gen(RP_SSH_KEY_RSA), *ed = gen(RP_SSH_KEY_ED25519);
    struct rp_buf sig;
    rp_buf_init(&sig);
    cr_assert_eq(rp_ssh_sign(rsa, "rsa-sha2-256", "x", 1, &sig), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_verify(rsa, sig.data, sig.len, "x", 1), 0, "%s", rp_errmsg());
    rp_buf_reset(&sig);
    cr_assert_eq(rp_ssh_sign(rsa, "ssh-rsa", "x", 1, &sig), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "SHA-1"), "%s", rp_errmsg());
    /* A signature of one key type offered for another is malformed, not just wrong. */
    cr_assert_eq(rp_ssh_sign(ed, NULL, "x", 1, &sig), 0);
    cr_assert_eq(rp_ssh_verify(rsa, sig.data, sig.len, "x", 1), RP_EINVAL);
    rp_buf_free(&sig);
    EVP_PKEY_free(rsa);
    EVP_PKEY_free(ed);
}

/* ---- certificates as ssh-keygen reads them ------------------------------------------ */

Test(ssh_cert, user_cert_is_printed_by_ssh_keygen_with_every_field)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519), *key = gen(RP_SSH_KEY_ECDSA_P256);
    const char *roles = "{\"version\":\"v1\",\"roles\":[\"access\"]}";
    const char *traits = "{\"logins\":[\"root\"]}";
    /* Deliberately out of order: the signer must sort them as OpenSSH requires. */
    struct rp_ssh_cert_opt crit[] = {
        {RP_SSH_OPT_SOURCE_ADDRESS, "127.0.0.1/32,::1/128"},
        {RP_SSH_OPT_FORCE_COMMAND, "/usr/bin/id"},
    };
    struct rp_ssh_cert_opt ext[] = {
        {RP_SSH_EXT_TELEPORT_TRAITS, (char *)traits},
        {RP_SSH_EXT_PERMIT_PTY, ""},
        {RP_SSH_EXT_TELEPORT_ROLES, (char *)roles},
        {RP_SSH_EXT_PERMIT_X11_FORWARDING, NULL},
        {RP_SSH_EXT_PERMIT_PORT_FORWARDING, ""},
        {RP_SSH_EXT_TELEPORT_ROUTE_TO_CLUSTER, "leaf"},
        {RP_SSH_EXT_PERMIT_AGENT_FORWARDING, ""},
    };
    char *principals[] = {"root", "alice"};
    struct rp_ssh_cert c = {
        .type = RP_SSH_CERT_USER,
        .key = key,
        .serial = 1234567890123ULL,
        .key_id = "alice@example.com",
        .principals = principals,
        .n_principals = 2,
        .valid_after = 1767225600,  /* 2026-01-01T00:00:00Z */
        .valid_before = 1767229200, /* one hour later */
        .critical = crit,
        .n_critical = 2,
        .extensions = ext,
        .n_extensions = 7,
    };
    struct rp_buf blob;
    sign_cert(&c, ca, &blob);
    write_cert(&blob, "user-cert.pub");

    char p[512], key_fp[RP_SSH_FINGERPRINT_LEN], ca_fp[RP_SSH_FINGERPRINT_LEN];
    struct cl_run r;
    mkpath(p, sizeof p, "user-cert.pub");
    keygen_run(&r, false, "-L", "-f", p, NULL);
    fingerprint(key, key_fp);
    fingerprint(ca, ca_fp);

    struct rp_buf want;
    rp_buf_init(&want);
    rp_buf_printf(&want,
                  "%s:\n"
                  "        Type: ecdsa-sha2-nistp256-cert-v01@openssh.com user certificate\n"
                  "        Public key: ECDSA-CERT %s\n"
                  "        Signing CA: ED25519 %s (using ssh-ed25519)\n"
                  "        Key ID: \"alice@example.com\"\n"
                  "        Serial: 1234567890123\n"
                  "        Valid: from 2026-01-01T00:00:00 to 2026-01-01T01:00:00\n"
                  "        Principals: \n"
                  "                root\n"
                  "                alice\n"
                  "        Critical Options: \n"
                  "                force-command /usr/bin/id\n"
                  "                source-address 127.0.0.1/32,::1/128\n"
                  "        Extensions: \n"
                  "                permit-X11-forwarding\n"
                  "                permit-agent-forwarding\n"
                  "                permit-port-forwarding\n"
                  "                permit-pty\n",
                  p, key_fp, ca_fp);
    unknown_option_text(&want, "teleport-roles", roles);
    unknown_option_text(&want, "teleport-route-to-cluster", "leaf");
    unknown_option_text(&want, "teleport-traits", traits);
    rp_buf_append(&want, "", 1);
    cr_assert_str_eq(r.out, (char *)want.data);
    cl_run_free(&r);

    /* Our parser reads back what we signed. */
    struct rp_ssh_cert back;
    char *line = read_text(p, NULL);
    cr_assert_eq(rp_ssh_cert_parse_line(line, &back, NULL), 0, "%s", rp_errmsg());
    cr_assert_eq(back.type, RP_SSH_CERT_USER);
    cr_assert_eq(back.key_type, RP_SSH_KEY_ECDSA_P256);
    cr_assert_eq(back.serial, 1234567890123ULL);
    cr_assert_str_eq(back.key_id, "alice@example.com");
    cr_assert_eq(back.n_principals, 2);
    cr_assert_str_eq(back.principals[1], "alice");
    cr_assert_eq(back.n_extensions, 7);
    cr_assert_str_eq(back.extensions[0].name, "permit-X11-forwarding");
    cr_assert_str_eq(back.extensions[0].value, "");
    cr_assert_str_eq(
        rp_ssh_cert_opt_find(back.extensions, back.n_extensions, RP_SSH_EXT_TELEPORT_ROLES), roles);
    cr_assert_str_eq(rp_ssh_cert_opt_find(back.critical, back.n_critical, RP_SSH_OPT_FORCE_COMMAND),
                     "/usr/bin/id");
    cr_assert_eq(back.nonce_len, 32);
    cr_assert_eq(EVP_PKEY_eq(back.key, key), 1);
    cr_assert_eq(EVP_PKEY_eq(back.signature_key, ca), 1);
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 1767225600, "root", NULL), 0, "%s",
                 rp_errmsg());
    rp_ssh_cert_free(&back);
    free(line);
    rp_buf_free(&want);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(key);
}

Test(ssh_cert, host_cert_is_printed_by_ssh_keygen_with_every_field)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519), *key = gen(RP_SSH_KEY_ED25519);
    struct rp_ssh_cert_opt ext[] = {
        {RP_SSH_EXT_TELEPORT_ROLE, "Node"},
        {RP_SSH_EXT_TELEPORT_AUTHORITY, "example.com"},
    };
    char *principals[] = {"3f2a.example.com", "3f2a", "node-1", "localhost", "127.0.0.1"};
    struct rp_ssh_cert c = {
        .type = RP_SSH_CERT_HOST,
        .key = key,
        .serial = 0,
        .key_id = "3f2a",
        .principals = principals,
        .n_principals = 5,
        .valid_after = 0,
        .valid_before = RP_SSH_CERT_FOREVER,
        .extensions = ext,
        .n_extensions = 2,
    };
    struct rp_buf blob;
    sign_cert(&c, ca, &blob);
    write_cert(&blob, "host-cert.pub");

    char p[512], key_fp[RP_SSH_FINGERPRINT_LEN], ca_fp[RP_SSH_FINGERPRINT_LEN];
    struct cl_run r;
    mkpath(p, sizeof p, "host-cert.pub");
    keygen_run(&r, false, "-L", "-f", p, NULL);
    fingerprint(key, key_fp);
    fingerprint(ca, ca_fp);
    struct rp_buf want;
    rp_buf_init(&want);
    rp_buf_printf(&want,
                  "%s:\n"
                  "        Type: ssh-ed25519-cert-v01@openssh.com host certificate\n"
                  "        Public key: ED25519-CERT %s\n"
                  "        Signing CA: ED25519 %s (using ssh-ed25519)\n"
                  "        Key ID: \"3f2a\"\n"
                  "        Serial: 0\n"
                  "        Valid: forever\n"
                  "        Principals: \n"
                  "                3f2a.example.com\n"
                  "                3f2a\n"
                  "                node-1\n"
                  "                localhost\n"
                  "                127.0.0.1\n"
                  "        Critical Options: (none)\n"
                  "        Extensions: \n",
                  p, key_fp, ca_fp);
    unknown_option_text(&want, "x-teleport-authority", "example.com");
    unknown_option_text(&want, "x-teleport-role", "Node");
    rp_buf_append(&want, "", 1);
    cr_assert_str_eq(r.out, (char *)want.data);
    cl_run_free(&r);

    struct rp_ssh_cert back;
    cr_assert_eq(rp_ssh_cert_parse(blob.data, blob.len, &back), 0, "%s", rp_errmsg());
    cr_assert_eq(back.valid_after, 0);
    cr_assert_eq(back.valid_before, RP_SSH_CERT_FOREVER);
    cr_assert_str_eq(rp_ssh_cert_opt_find(back.extensions, 2, RP_SSH_EXT_TELEPORT_ROLE), "Node");
    cr_assert_eq(
        rp_ssh_cert_check(&back, ca, RP_SSH_CERT_HOST, (uint64_t)time(NULL), "node-1", NULL), 0,
        "%s", rp_errmsg());
    rp_ssh_cert_free(&back);
    rp_buf_free(&want);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(key);
}

Test(ssh_cert, certs_for_every_subject_and_ca_type_verify_and_print)
{
    EVP_PKEY *keys[N_TYPES];
    for (size_t i = 0; i < N_TYPES; i++)
        keys[i] = gen(all_types[i]);
    uint64_t now = (uint64_t)time(NULL);
    for (size_t s = 0; s < N_TYPES; s++) {
        for (size_t a = 0; a < N_TYPES; a++) {
            const char *sname = rp_ssh_key_type_name(all_types[s]);
            const char *aname = rp_ssh_key_type_name(all_types[a]);
            struct rp_ssh_cert c = user_template(keys[s]), back;
            struct rp_buf blob;
            char *line, ca_fp[RP_SSH_FINGERPRINT_LEN], want[256], p[512];
            sign_cert(&c, keys[a], &blob);
            cr_assert_eq(rp_ssh_cert_format(blob.data, blob.len, NULL, &line), 0);
            cr_assert_eq(strncmp(line, rp_ssh_key_cert_type_name(all_types[s]),
                                 strlen(rp_ssh_key_cert_type_name(all_types[s]))),
                         0, "%s", line);
            cr_assert_eq(rp_ssh_cert_parse_line(line, &back, NULL), 0, "%s by %s: %s", sname, aname,
                         rp_errmsg());
            cr_assert_eq(back.key_type, all_types[s]);
            cr_assert_eq(EVP_PKEY_eq(back.key, keys[s]), 1);
            cr_assert_eq(rp_ssh_cert_verify(&back), 0, "%s by %s: %s", sname, aname, rp_errmsg());
            cr_assert_eq(rp_ssh_cert_check(&back, keys[a], RP_SSH_CERT_USER, now, "alice", NULL), 0,
                         "%s by %s: %s", sname, aname, rp_errmsg());
            rp_ssh_cert_free(&back);
            free(line);

            struct cl_run r;
            write_cert(&blob, "any-cert.pub");
            mkpath(p, sizeof p, "any-cert.pub");
            keygen_run(&r, false, "-L", "-f", p, NULL);
            fingerprint(keys[a], ca_fp);
            snprintf(want, sizeof want, "Type: %s user certificate\n",
                     rp_ssh_key_cert_type_name(all_types[s]));
            cr_assert(strstr(r.out, want), "%s by %s: %s", sname, aname, r.out);
            snprintf(want, sizeof want, "Signing CA: %s %s (using %s)\n",
                     keygen_label(all_types[a]), ca_fp, sig_alg_of(all_types[a]));
            cr_assert(strstr(r.out, want), "%s by %s: %s", sname, aname, r.out);
            cl_run_free(&r);
            rp_buf_free(&blob);
        }
    }
    for (size_t i = 0; i < N_TYPES; i++)
        EVP_PKEY_free(keys[i]);
}

Test(ssh_cert, certs_signed_by_ssh_keygen_are_parsed_and_verified)
{
    static const struct {
        const char *t, *bits, *label;
    } cas[] = {{"ed25519", "256", "ed25519"}, {"ecdsa", "384", "ecdsa"}, {"rsa", "2048", "rsa"}};
    char user[512], user_pub[512], cert_path[512];
    struct cl_run r;
    mkpath(user, sizeof user, "user");
    mkpath(user_pub, sizeof user_pub, "user.pub");
    mkpath(cert_path, sizeof cert_path, "user-cert.pub");
    keygen_run(&r, false, "-q", "-t", "ed25519", "-N", "", "-f", user, NULL);
    cl_run_free(&r);
    char *user_line = read_text(user_pub, NULL);
    EVP_PKEY *user_key = NULL, *stranger = gen(RP_SSH_KEY_ED25519);
    cr_assert_eq(rp_ssh_pubkey_parse(user_line, &user_key, NULL), 0, "%s", rp_errmsg());

    for (size_t i = 0; i < sizeof cas / sizeof cas[0]; i++) {
        char ca[512], ca_pub[520];
        snprintf(ca, sizeof ca, "%s/ca-%s", dir, cas[i].label);
        snprintf(ca_pub, sizeof ca_pub, "%s.pub", ca);
        keygen_run(&r, false, "-q", "-t", cas[i].t, "-b", cas[i].bits, "-N", "", "-f", ca, NULL);
        cl_run_free(&r);
        uint64_t before = (uint64_t)time(NULL);
        keygen_run(&r, false, "-q", "-s", ca, "-I", "id", "-n", "a,b", "-V", "+1h", "-z", "77",
                   user_pub, NULL);
        cl_run_free(&r);
        uint64_t after = (uint64_t)time(NULL);

        char *ca_line = read_text(ca_pub, NULL), *cert_line = read_text(cert_path, NULL);
        EVP_PKEY *ca_key = NULL;
        struct rp_ssh_cert c;
        enum rp_ssh_cert_verdict why;
        cr_assert_eq(rp_ssh_pubkey_parse(ca_line, &ca_key, NULL), 0, "%s", rp_errmsg());
        cr_assert_eq(rp_ssh_cert_parse_line(cert_line, &c, NULL), 0, "%s CA: %s", cas[i].t,
                     rp_errmsg());
        cr_assert_eq(rp_ssh_cert_verify(&c), 0, "%s CA: %s", cas[i].t, rp_errmsg());
        cr_assert_eq(c.type, RP_SSH_CERT_USER);
        cr_assert_str_eq(c.key_id, "id");
        cr_assert_eq(c.serial, 77);
        cr_assert_eq(c.n_principals, 2);
        cr_assert_str_eq(c.principals[0], "a");
        cr_assert_str_eq(c.principals[1], "b");
        cr_assert_eq(EVP_PKEY_eq(c.key, user_key), 1);
        cr_assert_eq(EVP_PKEY_eq(c.signature_key, ca_key), 1);
        /* -V +1h: from a little before signing until an hour after it. */
        cr_assert_leq(c.valid_after, before);
        cr_assert_geq(c.valid_before, after + 3600 - 1);
        cr_assert_leq(c.valid_before, after + 3600 + 60);
        cr_assert_eq(c.n_critical, 0);
        cr_assert_eq(c.n_extensions, 5);
        cr_assert_str_eq(c.extensions[0].name, "permit-X11-forwarding");
        cr_assert_str_eq(c.extensions[4].name, "permit-user-rc");

        uint64_t now = (uint64_t)time(NULL);
        cr_assert_eq(rp_ssh_cert_check(&c, ca_key, RP_SSH_CERT_USER, now, "b", &why), 0, "%s",
                     rp_errmsg());
        cr_assert_eq(why, RP_SSH_CERT_OK);
        cr_assert_eq(rp_ssh_cert_check(&c, ca_key, RP_SSH_CERT_USER, now, "c", &why), RP_EDENIED);
        cr_assert_eq(why, RP_SSH_CERT_PRINCIPAL_NOT_LISTED);
        cr_assert(strstr(rp_errmsg(), "principal 'c' is not in the certificate's principals "
                                      "(a, b)"),
                  "%s", rp_errmsg());
        rp_ssh_cert_check(&c, ca_key, RP_SSH_CERT_USER, now + 7200, "a", &why);
        cr_assert_eq(why, RP_SSH_CERT_EXPIRED);
        rp_ssh_cert_check(&c, ca_key, RP_SSH_CERT_USER, now - 7200, "a", &why);
        cr_assert_eq(why, RP_SSH_CERT_NOT_YET_VALID);
        rp_ssh_cert_check(&c, ca_key, RP_SSH_CERT_HOST, now, "a", &why);
        cr_assert_eq(why, RP_SSH_CERT_WRONG_TYPE);
        rp_ssh_cert_check(&c, stranger, RP_SSH_CERT_USER, now, "a", &why);
        cr_assert_eq(why, RP_SSH_CERT_WRONG_CA);

        rp_ssh_cert_free(&c);
        EVP_PKEY_free(ca_key);
        free(ca_line);
        free(cert_line);
    }

    /* A host certificate from ssh-keygen, too. */
    char ca[512];
    mkpath(ca, sizeof ca, "ca-ed25519");
    keygen_run(&r, false, "-q", "-s", ca, "-h", "-I", "host", "-n", "node-1", user_pub, NULL);
    cl_run_free(&r);
    char *cert_line = read_text(cert_path, NULL);
    struct rp_ssh_cert c;
    cr_assert_eq(rp_ssh_cert_parse_line(cert_line, &c, NULL), 0, "%s", rp_errmsg());
    cr_assert_eq(c.type, RP_SSH_CERT_HOST);
    cr_assert_eq(c.valid_after, 0);
    cr_assert_eq(c.valid_before, RP_SSH_CERT_FOREVER);
    cr_assert_eq(rp_ssh_cert_verify(&c), 0, "%s", rp_errmsg());
    rp_ssh_cert_free(&c);
    free(cert_line);
    free(user_line);
    EVP_PKEY_free(user_key);
    EVP_PKEY_free(stranger);
}

/* ---- policy ------------------------------------------------------------------------- */

Test(ssh_cert, check_says_why_a_cert_is_refused)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519), *other = gen(RP_SSH_KEY_ED25519);
    EVP_PKEY *key = gen(RP_SSH_KEY_ED25519);
    struct rp_ssh_cert c = user_template(key), back;
    enum rp_ssh_cert_verdict why;
    struct rp_buf blob;
    c.valid_after = 1000;
    c.valid_before = 2000;
    sign_cert(&c, ca, &blob);
    cr_assert_eq(rp_ssh_cert_parse(blob.data, blob.len, &back), 0, "%s", rp_errmsg());

    /* The window is [valid_after, valid_before), as OpenSSH has it. */
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 1000, "root", &why), 0, "%s",
                 rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 1999, NULL, &why), 0);
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 999, "root", &why), RP_EDENIED);
    cr_assert_eq(why, RP_SSH_CERT_NOT_YET_VALID);
    cr_assert(strstr(rp_errmsg(), "not valid before 1970-01-01T00:16:40Z"), "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 2000, "root", &why), RP_EDENIED);
    cr_assert_eq(why, RP_SSH_CERT_EXPIRED);
    cr_assert(strstr(rp_errmsg(), "expired at 1970-01-01T00:33:20Z"), "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 1500, "bob", &why), RP_EDENIED);
    cr_assert_eq(why, RP_SSH_CERT_PRINCIPAL_NOT_LISTED);
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_HOST, 1500, "root", &why), RP_EDENIED);
    cr_assert_eq(why, RP_SSH_CERT_WRONG_TYPE);
    cr_assert(strstr(rp_errmsg(), "user certificate, expected a host"), "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&back, other, RP_SSH_CERT_USER, 1500, "root", &why), RP_EDENIED);
    cr_assert_eq(why, RP_SSH_CERT_WRONG_CA);
    cr_assert(strstr(rp_errmsg(), "not by the trusted CA SHA256:"), "%s", rp_errmsg());
    rp_ssh_cert_free(&back);
    rp_buf_free(&blob);

    /* Forever, and no principals: any time, but no principal is listed. */
    c.valid_after = 0;
    c.valid_before = RP_SSH_CERT_FOREVER;
    c.n_principals = 0;
    sign_cert(&c, ca, &blob);
    cr_assert_eq(rp_ssh_cert_parse(blob.data, blob.len, &back), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 0, NULL, &why), 0);
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, UINT64_MAX - 1, NULL, &why), 0);
    cr_assert_eq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, 5, "root", &why), RP_EDENIED);
    cr_assert_eq(why, RP_SSH_CERT_PRINCIPAL_NOT_LISTED);
    cr_assert(strstr(rp_errmsg(), "lists no principals"), "%s", rp_errmsg());
    rp_ssh_cert_free(&back);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(other);
    EVP_PKEY_free(key);
}

Test(ssh_cert, sign_refuses_bad_templates)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519), *key = gen(RP_SSH_KEY_ED25519);
    EVP_PKEY *small = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    struct rp_buf blob;
    rp_buf_init(&blob);
    struct rp_ssh_cert c = user_template(key);

    c.type = 3;
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), RP_EINVAL);
    c = user_template(key);
    c.valid_before = c.valid_after;
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "validity is empty"), "%s", rp_errmsg());

    struct rp_ssh_cert_opt twice[] = {{"permit-pty", ""}, {"x", "1"}, {"permit-pty", ""}};
    c = user_template(key);
    c.extensions = twice;
    c.n_extensions = 3;
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "extension 'permit-pty' is given twice"), "%s", rp_errmsg());
    struct rp_ssh_cert_opt unnamed[] = {{"", "1"}};
    c.critical = unnamed;
    c.n_critical = 1;
    c.n_extensions = 0;
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), RP_EINVAL);

    c = user_template(small);
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "subject key: RSA key of 1024 bits"), "%s", rp_errmsg());
    c = user_template(key);
    cr_assert_eq(rp_ssh_cert_sign(&c, small, &blob), RP_EINVAL);

    char *many[RP_SSH_CERT_MAX_PRINCIPALS + 1];
    for (size_t i = 0; i <= RP_SSH_CERT_MAX_PRINCIPALS; i++)
        many[i] = "p";
    c.principals = many;
    c.n_principals = RP_SSH_CERT_MAX_PRINCIPALS + 1;
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), RP_EINVAL);
    c.n_principals = RP_SSH_CERT_MAX_PRINCIPALS;
    cr_assert_eq(rp_ssh_cert_sign(&c, ca, &blob), 0, "%s", rp_errmsg());

    /* A public key cannot sign. */
    EVP_PKEY *ca_pub = NULL;
    struct rp_buf ca_blob;
    rp_buf_init(&ca_blob);
    rp_ssh_pubkey_to_blob(ca, &ca_blob);
    cr_assert_eq(rp_ssh_pubkey_from_blob(ca_blob.data, ca_blob.len, &ca_pub), 0);
    c = user_template(key);
    cr_assert_neq(rp_ssh_cert_sign(&c, ca_pub, &blob), 0);
    EVP_PKEY_free(ca_pub);
    rp_buf_free(&ca_blob);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(key);
    EVP_PKEY_free(small);
}

/* ---- damaged certificates ----------------------------------------------------------- */

/* A certificate written field by field, so that tests can break the rules the signer
 * keeps (order, known types, type values). Options carry empty data. */
struct raw_cert {
    const char *type_name;
    uint32_t cert_type;
    const char *const *crit;
    size_t n_crit;
    const char *const *ext;
    size_t n_ext;
};

static void put_names(struct rp_buf *b, const char *const *names, size_t n)
{
    struct rp_buf list;
    rp_buf_init(&list);
    for (size_t i = 0; i < n; i++) {
        rp_ssh_put_cstring(&list, names[i]);
        rp_ssh_put_string(&list, "", 0);
    }
    rp_ssh_put_string(b, list.data, list.len);
    rp_buf_free(&list);
}

static void build_raw(const struct raw_cert *rc, EVP_PKEY *key, EVP_PKEY *ca, struct rp_buf *out)
{
    struct rp_buf principals, ca_blob, sig;
    rp_buf_init(out);
    rp_buf_init(&principals);
    rp_buf_init(&ca_blob);
    rp_buf_init(&sig);
    rp_ssh_put_cstring(out, rc->type_name);
    rp_ssh_put_string(out, "0123456789abcdef0123456789abcdef", 32);
    cr_assert_eq(rp_ssh_key_put_fields(out, key), 0);
    rp_buf_put_be64(out, 1);
    rp_buf_put_be32(out, rc->cert_type);
    rp_ssh_put_cstring(out, "raw");
    rp_ssh_put_cstring(&principals, "root");
    rp_ssh_put_string(out, principals.data, principals.len);
    rp_buf_put_be64(out, 0);
    rp_buf_put_be64(out, RP_SSH_CERT_FOREVER);
    put_names(out, rc->crit, rc->n_crit);
    put_names(out, rc->ext, rc->n_ext);
    rp_ssh_put_string(out, "", 0);
    rp_ssh_pubkey_to_blob(ca, &ca_blob);
    rp_ssh_put_string(out, ca_blob.data, ca_blob.len);
    cr_assert_eq(rp_ssh_sign(ca, NULL, out->data, out->len, &sig), 0);
    rp_ssh_put_string(out, sig.data, sig.len);
    rp_buf_free(&principals);
    rp_buf_free(&ca_blob);
    rp_buf_free(&sig);
}

/* Builds @rc and asserts that parsing refuses it with a message containing @needle. */
static void assert_raw_refused(const struct raw_cert *rc, EVP_PKEY *key, EVP_PKEY *ca,
                               const char *needle)
{
    struct rp_buf blob;
    struct rp_ssh_cert c;
    build_raw(rc, key, ca, &blob);
    cr_assert_eq(rp_ssh_cert_parse(blob.data, blob.len, &c), RP_EINVAL, "accepted: %s", needle);
    cr_assert(strstr(rp_errmsg(), needle), "message '%s' does not say '%s'", rp_errmsg(), needle);
    rp_buf_free(&blob);
}

Test(ssh_cert, malformed_fields_are_refused_with_the_field_named)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519), *key = gen(RP_SSH_KEY_ED25519);
    const char *ed_cert = "ssh-ed25519-cert-v01@openssh.com";
    const char *sorted[] = {"permit-X11-forwarding", "permit-agent-forwarding", "permit-pty"};
    const char *case_order[] = {"permit-agent-forwarding", "permit-X11-forwarding"};
    const char *dup[] = {"permit-pty", "permit-pty"};
    const char *crit[] = {"source-address", "force-command"};

    /* The builder itself makes acceptable certificates. */
    struct raw_cert ok = {ed_cert, RP_SSH_CERT_USER, NULL, 0, sorted, 3};
    struct rp_buf blob;
    struct rp_ssh_cert c;
    build_raw(&ok, key, ca, &blob);
    cr_assert_eq(rp_ssh_cert_parse(blob.data, blob.len, &c), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_check(&c, ca, RP_SSH_CERT_USER, 1, "root", NULL), 0, "%s",
                 rp_errmsg());
    rp_ssh_cert_free(&c);
    rp_buf_free(&blob);

    struct raw_cert bad = ok;
    bad.ext = case_order; /* 'X' sorts before 'a' in byte order */
    bad.n_ext = 2;
    assert_raw_refused(&bad, key, ca,
                       "extensions are not in lexical order: 'permit-X11-forwarding' after "
                       "'permit-agent-forwarding'");
    bad.ext = dup;
    assert_raw_refused(&bad, key, ca, "extension 'permit-pty' appears twice");
    bad = ok;
    bad.crit = crit;
    bad.n_crit = 2;
    assert_raw_refused(&bad, key, ca, "critical options are not in lexical order");
    bad = ok;
    bad.type_name = "ssh-dss-cert-v01@openssh.com";
    assert_raw_refused(&bad, key, ca, "unknown key type 'ssh-dss-cert-v01@openssh.com'");
    bad.type_name = "ssh-ed25519";
    assert_raw_refused(&bad, key, ca, "'ssh-ed25519' is a plain key, not a certificate");
    bad.type_name = "ecdsa-sha2-nistp256-cert-v01@openssh.com"; /* with Ed25519 fields */
    assert_raw_refused(&bad, key, ca, "certificate subject key");
    bad = ok;
    bad.cert_type = 3;
    assert_raw_refused(&bad, key, ca, "certificate type 3 is neither");
    EVP_PKEY_free(ca);
    EVP_PKEY_free(key);
}

Test(ssh_cert, one_flipped_byte_anywhere_is_refused)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519), *key = gen(RP_SSH_KEY_ECDSA_P256);
    struct rp_ssh_cert_opt ext[] = {{RP_SSH_EXT_PERMIT_PTY, ""},
                                    {RP_SSH_EXT_TELEPORT_ROLES, "[\"access\"]"}};
    struct rp_ssh_cert_opt crit[] = {{RP_SSH_OPT_FORCE_COMMAND, "id"}};
    struct rp_ssh_cert c = user_template(key);
    c.extensions = ext;
    c.n_extensions = 2;
    c.critical = crit;
    c.n_critical = 1;
    struct rp_buf blob;
    sign_cert(&c, ca, &blob);
    uint64_t now = (uint64_t)time(NULL);
    size_t by_parse = 0, by_check = 0;
    for (size_t i = 0; i < blob.len; i++) {
        for (int bit = 0; bit < 8; bit += 7) {
            uint8_t *copy = malloc(blob.len);
            memcpy(copy, blob.data, blob.len);
            copy[i] ^= (uint8_t)(1u << bit);
            struct rp_ssh_cert back;
            if (rp_ssh_cert_parse(copy, blob.len, &back) != 0) {
                by_parse++;
            } else {
                cr_assert_neq(rp_ssh_cert_check(&back, ca, RP_SSH_CERT_USER, now, "root", NULL), 0,
                              "flip of bit %d at byte %zu of %zu was accepted", bit, i, blob.len);
                by_check++;
                rp_ssh_cert_free(&back);
            }
            free(copy);
        }
    }
    /* Both defences were exercised. */
    cr_assert_gt(by_parse, 0);
    cr_assert_gt(by_check, 0);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(key);
}

Test(ssh_cert, truncated_certs_and_trailing_garbage_are_refused)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ECDSA_P384), *key = gen(RP_SSH_KEY_ED25519);
    struct rp_ssh_cert c = user_template(key), back;
    struct rp_buf blob;
    sign_cert(&c, ca, &blob);
    for (size_t n = 0; n < blob.len; n++) {
        /* An exact-size copy: ASan sees any read past the end. */
        uint8_t *copy = malloc(n ? n : 1);
        memcpy(copy, blob.data, n);
        cr_assert_eq(rp_ssh_cert_parse(copy, n, &back), RP_EINVAL, "prefix of %zu accepted", n);
        free(copy);
    }
    rp_buf_append(&blob, "\0", 1);
    cr_assert_eq(rp_ssh_cert_parse(blob.data, blob.len, &back), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "1 trailing bytes after the certificate signature"), "%s",
              rp_errmsg());
    rp_buf_append(&blob, "junk", 4);
    cr_assert_eq(rp_ssh_cert_parse(blob.data, blob.len, &back), RP_EINVAL);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(key);
}

/* ---- fuzz-like: random damage never crashes, leaks or passes ------------------------ */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static uint32_t rnd(void)
{
    /* xorshift64*: a fixed seed keeps failures reproducible. */
    rng ^= rng >> 12;
    rng ^= rng << 25;
    rng ^= rng >> 27;
    return (uint32_t)((rng * 0x2545f4914f6cdd1dULL) >> 32);
}

/* Damages @in (n bytes) in 1 to 3 random ways; returns a malloc'd exact-size copy. */
static uint8_t *mutate(const uint8_t *in, size_t n, size_t *out_len)
{
    size_t cap = n + 16, len = n;
    uint8_t *b = malloc(cap);
    memcpy(b, in, n);
    int ops = 1 + (int)(rnd() % 3);
    for (int k = 0; k < ops; k++) {
        size_t at = len ? rnd() % len : 0;
        switch (rnd() % 5) {
        case 0: /* flip a bit */
            if (len)
                b[at] ^= (uint8_t)(1u << (rnd() % 8));
            break;
        case 1: /* a random byte */
            if (len)
                b[at] = (uint8_t)rnd();
            break;
        case 2: /* truncate */
            len = at;
            break;
        case 3: /* insert a byte */
            if (len < cap) {
                memmove(b + at + 1, b + at, len - at);
                b[at] = (uint8_t)rnd();
                len++;
            }
            break;
        case 4: { /* a length-like word: where lengths live, the parser must hold */
            static const uint32_t words[] = {0, 1, 3, 4, 0x7fffffff, 0xffffffff, 0x100};
            uint32_t w = words[rnd() % (sizeof words / sizeof words[0])];
            if (len >= 4) {
                at = rnd() % (len - 3);
                b[at] = (uint8_t)(w >> 24);
                b[at + 1] = (uint8_t)(w >> 16);
                b[at + 2] = (uint8_t)(w >> 8);
                b[at + 3] = (uint8_t)w;
            }
            break;
        }
        }
    }
    uint8_t *exact = malloc(len ? len : 1);
    memcpy(exact, b, len);
    free(b);
    *out_len = len;
    return exact;
}

Test(ssh_cert, random_damage_never_crashes_and_never_passes)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519), *rsa_ca = gen(RP_SSH_KEY_RSA);
    EVP_PKEY *keys[3] = {gen(RP_SSH_KEY_ED25519), gen(RP_SSH_KEY_ECDSA_P521), gen(RP_SSH_KEY_RSA)};
    struct rp_ssh_cert_opt ext[] = {{RP_SSH_EXT_PERMIT_PTY, ""},
                                    {RP_SSH_EXT_TELEPORT_TRAITS, "{}"}};
    uint64_t now = (uint64_t)time(NULL);
    for (int which = 0; which < 3; which++) {
        EVP_PKEY *signer = which == 2 ? rsa_ca : ca;
        struct rp_ssh_cert c = user_template(keys[which]);
        c.extensions = ext;
        c.n_extensions = 2;
        struct rp_buf blob, pub, sig;
        sign_cert(&c, signer, &blob);
        rp_buf_init(&pub);
        rp_buf_init(&sig);
        cr_assert_eq(rp_ssh_pubkey_to_blob(keys[which], &pub), 0);
        cr_assert_eq(rp_ssh_sign(signer, NULL, "data", 4, &sig), 0);
        for (int iter = 0; iter < 1500; iter++) {
            size_t n;
            uint8_t *m = mutate(blob.data, blob.len, &n);
            struct rp_ssh_cert back;
            if (rp_ssh_cert_parse(m, n, &back) == 0) {
                int rv = rp_ssh_cert_check(&back, signer, RP_SSH_CERT_USER, now, "root", NULL);
                cr_assert(rv != 0 || (n == blob.len && memcmp(m, blob.data, n) == 0),
                          "damaged certificate accepted (iteration %d)", iter);
                rp_ssh_cert_free(&back);
            }
            free(m);

            EVP_PKEY *k = NULL;
            m = mutate(pub.data, pub.len, &n);
            if (rp_ssh_pubkey_from_blob(m, n, &k) == 0)
                EVP_PKEY_free(k);
            free(m);

            m = mutate(sig.data, sig.len, &n);
            int rv = rp_ssh_verify(signer, m, n, "data", 4);
            cr_assert(rv != 0 || (n == sig.len && memcmp(m, sig.data, n) == 0),
                      "damaged signature accepted (iteration %d)", iter);
            free(m);
        }
        rp_buf_free(&blob);
        rp_buf_free(&pub);
        rp_buf_free(&sig);
    }

    /* Private key files: damage the binary under the armour, and the text itself. */
    EVP_PKEY *eck = gen(RP_SSH_KEY_ECDSA_P256);
    for (int which = 0; which < 2; which++) {
        char *text;
        uint8_t bin[2048];
        cr_assert_eq(rp_ssh_privkey_format(which ? eck : keys[0], "fuzz", &text), 0);
        size_t bn = unarmour_for_test(text, bin);
        for (int iter = 0; iter < 1000; iter++) {
            size_t n;
            EVP_PKEY *k = NULL;
            uint8_t *m = mutate(bin, bn, &n);
            char *armoured = armour_for_test(m, n);
            if (rp_ssh_privkey_parse(armoured, strlen(armoured), &k, NULL) == 0)
                EVP_PKEY_free(k);
            free(armoured);
            free(m);
            m = mutate((uint8_t *)text, strlen(text), &n);
            if (rp_ssh_privkey_parse((char *)m, n, &k, NULL) == 0)
                EVP_PKEY_free(k);
            free(m);
        }
        free(text);
    }

    /* Key lines, as text. */
    char *line;
    cr_assert_eq(rp_ssh_pubkey_format(keys[1], "comment", &line), 0);
    for (int iter = 0; iter < 2000; iter++) {
        size_t n;
        uint8_t *m = mutate((uint8_t *)line, strlen(line) + 1, &n);
        m[n ? n - 1 : 0] = '\0';
        EVP_PKEY *k = NULL;
        char *comment = NULL;
        if (n > 0 && rp_ssh_pubkey_parse((char *)m, &k, &comment) == 0) {
            EVP_PKEY_free(k);
            free(comment);
        }
        free(m);
    }
    free(line);
    EVP_PKEY_free(eck);
    EVP_PKEY_free(ca);
    EVP_PKEY_free(rsa_ca);
    for (int i = 0; i < 3; i++)
        EVP_PKEY_free(keys[i]);
}

/* The auth server signs from the checked public blob of the request's key, never
 * building an EVP_PKEY for it: the certificate must be the very bytes a key-based
 * signature gives, and the check must refuse what rp_ssh_pubkey_parse refuses. */
Test(ssh_cert, certs_signed_from_a_key_blob_equal_those_from_the_key)
{
    EVP_PKEY *ca = gen(RP_SSH_KEY_ED25519); /* deterministic signatures: whole blobs compare */
    uint8_t nonce[32];
    memset(nonce, 7, sizeof nonce);
    for (size_t s = 0; s < N_TYPES; s++) {
        EVP_PKEY *key = gen(all_types[s]);
        char *line = NULL;
        uint8_t *kb = NULL;
        size_t kn = 0;
        enum rp_ssh_keytype t;
        cr_assert_eq(rp_ssh_pubkey_format(key, "c", &line), 0);
        cr_assert_eq(rp_ssh_pubkey_parse_blob(line, &kb, &kn, &t), 0, "%s", rp_errmsg());
        cr_assert_eq(t, all_types[s]);
        struct rp_ssh_cert by_key = user_template(key), by_blob = user_template(NULL);
        by_key.nonce = by_blob.nonce = nonce;
        by_key.nonce_len = by_blob.nonce_len = sizeof nonce;
        by_blob.key_blob = kb;
        by_blob.key_blob_len = kn;
        struct rp_buf a, b;
        sign_cert(&by_key, ca, &a);
        sign_cert(&by_blob, ca, &b);
        cr_assert_eq(a.len, b.len, "%s", rp_ssh_key_type_name(all_types[s]));
        cr_assert_eq(memcmp(a.data, b.data, a.len), 0, "%s", rp_ssh_key_type_name(all_types[s]));
        rp_buf_free(&a);
        rp_buf_free(&b);
        free(kb);
        free(line);
        EVP_PKEY_free(key);
    }

    /* Refused: a short Ed25519 key, trailing bytes, a certificate, an ECDSA point off
     * the curve. */
    struct rp_buf blob;
    rp_buf_init(&blob);
    uint8_t k31[31] = {1};
    rp_ssh_put_cstring(&blob, "ssh-ed25519");
    rp_ssh_put_string(&blob, k31, sizeof k31);
    enum rp_ssh_keytype t;
    cr_assert_eq(rp_ssh_pubkey_blob_check(blob.data, blob.len, &t), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "expected 32"), "%s", rp_errmsg());

    rp_buf_reset(&blob);
    uint8_t k32[32] = {2};
    rp_ssh_put_cstring(&blob, "ssh-ed25519");
    rp_ssh_put_string(&blob, k32, sizeof k32);
    cr_assert_eq(rp_ssh_pubkey_blob_check(blob.data, blob.len, &t), 0, "%s", rp_errmsg());
    rp_buf_append(&blob, "x", 1);
    cr_assert_eq(rp_ssh_pubkey_blob_check(blob.data, blob.len, &t), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "trailing"), "%s", rp_errmsg());

    struct rp_ssh_cert c = user_template(ca);
    struct rp_buf cert;
    sign_cert(&c, ca, &cert);
    cr_assert_eq(rp_ssh_pubkey_blob_check(cert.data, cert.len, &t), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "certificate"), "%s", rp_errmsg());
    rp_buf_free(&cert);

    EVP_PKEY *ec = gen(RP_SSH_KEY_ECDSA_P256);
    rp_buf_reset(&blob);
    cr_assert_eq(rp_ssh_pubkey_to_blob(ec, &blob), 0);
    blob.data[blob.len - 1] ^= 0x01; /* the point's last byte: off the curve */
    cr_assert_eq(rp_ssh_pubkey_blob_check(blob.data, blob.len, &t), RP_EINVAL);
    EVP_PKEY_free(ec);
    rp_buf_free(&blob);
    EVP_PKEY_free(ca);
}
