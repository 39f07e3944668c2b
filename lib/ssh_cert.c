/* lib/ssh_cert.c: signing, parsing and checking OpenSSH certificates.
 *
 * The layout (PROTOCOL.certkeys) is the same for every key type except for the
 * subject key's own fields after the nonce:
 *
 *   string  certificate key type ("ssh-ed25519-cert-v01@openssh.com", ...)
 *   string  nonce
 *   ....    the subject key's fields (as in its public key blob, minus the type)
 *   uint64  serial
 *   uint32  type (1 user, 2 host)
 *   string  key id
 *   string  valid principals (a sequence of strings)
 *   uint64  valid after
 *   uint64  valid before
 *   string  critical options (sequence of string name, string data)
 *   string  extensions (same)
 *   string  reserved
 *   string  signature key (a public key blob)
 *   string  signature (over everything above)
 *
 * A certificate is the credential sshd trusts, so the parser is deliberately
 * stricter than it needs to be for our own certificates: anything OpenSSH would
 * not produce is refused with the field named. */
#include "lib/ssh_cert.h"

#include <openssl/err.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/errors.h"

/* OpenSSH uses 32 random bytes; the nonce keeps signatures over chosen data unguessable. */
#define NONCE_LEN 32

/* ---- signing ------------------------------------------------------------------------ */

static int cmp_opt_names(const void *a, const void *b)
{
    const struct rp_ssh_cert_opt *const *x = a, *const *y = b;
    return strcmp((*x)->name, (*y)->name);
}

/* Appends the string holding @opts sorted by name (strcmp order, which is what
 * OpenSSH checks). @what names the list in errors. */
static int put_opts(struct rp_buf *out, const struct rp_ssh_cert_opt *opts, size_t n,
                    const char *what)
{
    const struct rp_ssh_cert_opt **sorted = NULL;
    struct rp_buf list, data;
    int rv = 0;
    rp_buf_init(&list);
    rp_buf_init(&data);
    if (n > 0) {
        sorted = malloc(n * sizeof *sorted);
        if (sorted == NULL)
            return rp_err(RP_ENOMEM, "sorting %zu %ss", n, what);
    }
    for (size_t i = 0; i < n; i++) {
        if (opts[i].name == NULL || opts[i].name[0] == '\0') {
            rv = rp_err(RP_EINVAL, "%s %zu has no name", what, i);
            goto out;
        }
        sorted[i] = &opts[i];
    }
    if (n > 1)
        qsort(sorted, n, sizeof *sorted, cmp_opt_names);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        const char *v = sorted[i]->value;
        if (i > 0 && strcmp(sorted[i - 1]->name, sorted[i]->name) == 0) {
            rv = rp_err(RP_EINVAL, "%s '%s' is given twice", what, sorted[i]->name);
            break;
        }
        /* A value is wrapped in a string of its own; a flag (no value) is empty data,
         * which is how OpenSSH writes permit-pty and friends. */
        rp_buf_reset(&data);
        if (v != NULL && v[0] != '\0')
            rv = rp_ssh_put_cstring(&data, v);
        if (rv == 0)
            rv = rp_ssh_put_cstring(&list, sorted[i]->name);
        if (rv == 0)
            rv = rp_ssh_put_string(&list, data.data, data.len);
    }
    if (rv == 0)
        rv = rp_ssh_put_string(out, list.data, list.len);
out:
    free(sorted);
    rp_buf_free(&list);
    rp_buf_free(&data);
    return rv;
}

static int put_principals(struct rp_buf *out, char *const *principals, size_t n)
{
    struct rp_buf list;
    int rv = 0;
    if (n > RP_SSH_CERT_MAX_PRINCIPALS)
        return rp_err(RP_EINVAL, "%zu principals: OpenSSH accepts at most %d", n,
                      RP_SSH_CERT_MAX_PRINCIPALS);
    rp_buf_init(&list);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        if (principals[i] == NULL)
            rv = rp_err(RP_EINVAL, "principal %zu is NULL", i);
        else
            rv = rp_ssh_put_cstring(&list, principals[i]);
    }
    if (rv == 0)
        rv = rp_ssh_put_string(out, list.data, list.len);
    rp_buf_free(&list);
    return rv;
}

int rp_ssh_cert_sign(const struct rp_ssh_cert *c, EVP_PKEY *ca, struct rp_buf *out)
{
    enum rp_ssh_keytype key_type, ca_type;
    uint8_t fresh_nonce[NONCE_LEN];
    const uint8_t *nonce = c->nonce;
    size_t nonce_len = c->nonce_len;
    struct rp_buf b, ca_blob, sig;
    int rv;

    if (c->type != RP_SSH_CERT_USER && c->type != RP_SSH_CERT_HOST)
        return rp_err(RP_EINVAL, "certificate type %u: expected %d (user) or %d (host)", c->type,
                      RP_SSH_CERT_USER, RP_SSH_CERT_HOST);
    if (c->valid_after >= c->valid_before)
        return rp_err(RP_EINVAL,
                      "certificate validity is empty: valid_after %llu is not before "
                      "valid_before %llu",
                      (unsigned long long)c->valid_after, (unsigned long long)c->valid_before);
    /* The subject key's fields: from its blob (past the type name) or from the key. */
    struct rp_rd kr;
    memset(&kr, 0, sizeof kr);
    if (c->key_blob != NULL) {
        char *name = NULL;
        bool is_cert = false;
        rp_rd_init(&kr, c->key_blob, c->key_blob_len);
        rv = rp_ssh_get_cstring(&kr, "key type", &name);
        if (rv == 0)
            rv = rp_ssh_key_type_from_name(name, &key_type, &is_cert);
        if (rv == 0 && is_cert)
            rv = rp_err(RP_EINVAL, "the subject key blob is a certificate");
        free(name);
    } else {
        rv = rp_ssh_key_type(c->key, &key_type);
    }
    if (rv != 0)
        return rp_err(rv, "certificate subject key: %s", rp_errmsg());
    rv = rp_ssh_key_type(ca, &ca_type);
    if (rv != 0)
        return rp_err(rv, "CA key: %s", rp_errmsg());
    if (nonce == NULL) {
        if (RAND_bytes(fresh_nonce, sizeof fresh_nonce) != 1) {
            ERR_clear_error();
            return rp_err(RP_EIO, "no randomness for the certificate nonce");
        }
        nonce = fresh_nonce;
        nonce_len = sizeof fresh_nonce;
    }

    rp_buf_init(&b);
    rp_buf_init(&ca_blob);
    rp_buf_init(&sig);
    rv = rp_ssh_put_cstring(&b, rp_ssh_key_cert_type_name(key_type));
    if (rv == 0)
        rv = rp_ssh_put_string(&b, nonce, nonce_len);
    if (rv == 0)
        rv = c->key_blob ? rp_buf_append(&b, c->key_blob + (c->key_blob_len - rp_rd_left(&kr)),
                                         rp_rd_left(&kr))
                         : rp_ssh_key_put_fields(&b, c->key);
    if (rv == 0)
        rv = rp_buf_put_be64(&b, c->serial);
    if (rv == 0)
        rv = rp_buf_put_be32(&b, c->type);
    if (rv == 0)
        rv = rp_ssh_put_cstring(&b, c->key_id ? c->key_id : "");
    if (rv == 0)
        rv = put_principals(&b, c->principals, c->n_principals);
    if (rv == 0)
        rv = rp_buf_put_be64(&b, c->valid_after);
    if (rv == 0)
        rv = rp_buf_put_be64(&b, c->valid_before);
    if (rv == 0)
        rv = put_opts(&b, c->critical, c->n_critical, "critical option");
    if (rv == 0)
        rv = put_opts(&b, c->extensions, c->n_extensions, "extension");
    if (rv == 0)
        rv = rp_ssh_put_string(&b, "", 0); /* reserved */
    if (rv == 0)
        rv = rp_ssh_pubkey_to_blob(ca, &ca_blob);
    if (rv == 0)
        rv = rp_ssh_put_string(&b, ca_blob.data, ca_blob.len);
    if (rv == 0)
        rv = rp_ssh_sign(ca, NULL, b.data, b.len, &sig);
    if (rv == 0)
        rv = rp_ssh_put_string(&b, sig.data, sig.len);
    if (rv == 0)
        rv = rp_buf_append(out, b.data, b.len);
    rp_buf_free(&b);
    rp_buf_free(&ca_blob);
    rp_buf_free(&sig);
    return rv;
}

int rp_ssh_cert_format(const uint8_t *blob, size_t n, const char *comment, char **out)
{
    struct rp_rd r;
    enum rp_ssh_keytype type;
    bool is_cert;
    char *name = NULL;
    rp_rd_init(&r, blob, n);
    int rv = rp_ssh_get_cstring(&r, "certificate key type", &name);
    if (rv == 0)
        rv = rp_ssh_key_type_from_name(name, &type, &is_cert);
    if (rv == 0 && !is_cert)
        rv = rp_err(RP_EINVAL, "'%s' is a plain key, not a certificate", name);
    free(name);
    return rv ? rv : rp_ssh_line_format(blob, n, comment, out);
}

/* ---- parsing ------------------------------------------------------------------------ */

static int parse_principals(const uint8_t *p, size_t n, struct rp_ssh_cert *c)
{
    struct rp_rd r;
    rp_rd_init(&r, p, n);
    while (rp_rd_left(&r) > 0) {
        char what[64];
        if (c->n_principals == RP_SSH_CERT_MAX_PRINCIPALS)
            return rp_err(RP_EINVAL, "certificate lists more than %d principals",
                          RP_SSH_CERT_MAX_PRINCIPALS);
        char **grown = realloc(c->principals, (c->n_principals + 1) * sizeof *grown);
        if (grown == NULL)
            return rp_err(RP_ENOMEM, "certificate principals");
        c->principals = grown;
        snprintf(what, sizeof what, "certificate principal %zu", c->n_principals);
        int rv = rp_ssh_get_cstring(&r, what, &c->principals[c->n_principals]);
        if (rv != 0)
            return rv;
        c->n_principals++;
    }
    return 0;
}

/* Parses a list of (string name, string data) into *opts, which @c owns from the first
 * entry on (so that rp_ssh_cert_free releases a half-read list). */
static int parse_opts(const uint8_t *p, size_t n, const char *what, struct rp_ssh_cert_opt **opts,
                      size_t *count)
{
    struct rp_rd r;
    char label[96];
    rp_rd_init(&r, p, n);
    while (rp_rd_left(&r) > 0) {
        struct rp_ssh_cert_opt *grown = realloc(*opts, (*count + 1) * sizeof *grown);
        if (grown == NULL)
            return rp_err(RP_ENOMEM, "certificate %ss", what);
        *opts = grown;
        struct rp_ssh_cert_opt *o = &grown[*count];
        o->name = o->value = NULL;
        (*count)++;

        snprintf(label, sizeof label, "certificate %s name", what);
        int rv = rp_ssh_get_cstring(&r, label, &o->name);
        if (rv != 0)
            return rv;
        if (o->name[0] == '\0')
            return rp_err(RP_EINVAL, "certificate %s with an empty name", what);
        /* PROTOCOL.certkeys: lexically ordered, each name at most once. */
        if (*count > 1) {
            int order = strcmp(grown[*count - 2].name, o->name);
            if (order == 0)
                return rp_err(RP_EINVAL, "certificate %s '%.64s' appears twice", what, o->name);
            if (order > 0)
                return rp_err(RP_EINVAL,
                              "certificate %ss are not in lexical order: '%.64s' "
                              "after '%.64s'",
                              what, o->name, grown[*count - 2].name);
        }

        const uint8_t *d;
        size_t dlen;
        snprintf(label, sizeof label, "certificate %s '%.40s' data", what, o->name);
        rv = rp_ssh_get_string(&r, label, &d, &dlen);
        if (rv != 0)
            return rv;
        if (dlen == 0) {
            o->value = strdup("");
            if (o->value == NULL)
                return rp_err(RP_ENOMEM, "certificate %s value", what);
            continue;
        }
        /* Non-empty data is exactly one string: the value. */
        struct rp_rd dr;
        rp_rd_init(&dr, d, dlen);
        snprintf(label, sizeof label, "certificate %s '%.40s' value", what, o->name);
        rv = rp_ssh_get_cstring(&dr, label, &o->value);
        if (rv != 0)
            return rv;
        if (rp_rd_left(&dr) != 0)
            return rp_err(RP_EINVAL, "certificate %s '%.64s' has %zu bytes after its value", what,
                          o->name, rp_rd_left(&dr));
    }
    return 0;
}

/* Checks that the signature field is string algorithm, string bytes and nothing else;
 * whether it verifies is rp_ssh_cert_verify's business. */
static int check_signature_shape(const uint8_t *p, size_t n)
{
    struct rp_rd r;
    const uint8_t *s;
    size_t slen;
    rp_rd_init(&r, p, n);
    int rv = rp_ssh_get_string(&r, "certificate signature algorithm", &s, &slen);
    if (rv == 0)
        rv = rp_ssh_get_string(&r, "certificate signature bytes", &s, &slen);
    if (rv == 0 && rp_rd_left(&r) != 0)
        rv = rp_err(RP_EINVAL, "certificate signature has %zu trailing bytes", rp_rd_left(&r));
    return rv;
}

/* Reads a big-endian integer field, naming it on failure. */
static int get_u64(struct rp_rd *r, const char *what, uint64_t *v)
{
    int rv = rp_rd_be64(r, v);
    return rv ? rp_err(RP_EINVAL, "certificate %s: %s", what, rp_errmsg()) : 0;
}

static int parse_fields(struct rp_rd *r, struct rp_ssh_cert *c)
{
    const uint8_t *p;
    size_t n;
    char *tname = NULL;
    bool is_cert;

    int rv = rp_ssh_get_cstring(r, "certificate key type", &tname);
    if (rv != 0)
        return rv;
    rv = rp_ssh_key_type_from_name(tname, &c->key_type, &is_cert);
    if (rv == 0 && !is_cert)
        rv = rp_err(RP_EINVAL, "'%s' is a plain key, not a certificate", tname);
    free(tname);
    if (rv != 0)
        return rv;

    rv = rp_ssh_get_string(r, "certificate nonce", &p, &n);
    if (rv != 0)
        return rv;
    c->nonce = malloc(n ? n : 1);
    if (c->nonce == NULL)
        return rp_err(RP_ENOMEM, "certificate nonce");
    memcpy(c->nonce, p, n);
    c->nonce_len = n;

    rv = rp_ssh_key_get_fields(r, c->key_type, &c->key);
    if (rv != 0)
        return rp_err(rv, "certificate subject key: %s", rp_errmsg());
    rv = get_u64(r, "serial", &c->serial);
    if (rv == 0) {
        rv = rp_rd_be32(r, &c->type);
        if (rv != 0)
            rv = rp_err(RP_EINVAL, "certificate type: %s", rp_errmsg());
    }
    if (rv == 0 && c->type != RP_SSH_CERT_USER && c->type != RP_SSH_CERT_HOST)
        rv = rp_err(RP_EINVAL, "certificate type %u is neither %d (user) nor %d (host)", c->type,
                    RP_SSH_CERT_USER, RP_SSH_CERT_HOST);
    if (rv == 0)
        rv = rp_ssh_get_cstring(r, "certificate key id", &c->key_id);
    if (rv == 0)
        rv = rp_ssh_get_string(r, "certificate principals", &p, &n);
    if (rv == 0)
        rv = parse_principals(p, n, c);
    if (rv == 0)
        rv = get_u64(r, "valid after", &c->valid_after);
    if (rv == 0)
        rv = get_u64(r, "valid before", &c->valid_before);
    if (rv == 0)
        rv = rp_ssh_get_string(r, "certificate critical options", &p, &n);
    if (rv == 0)
        rv = parse_opts(p, n, "critical option", &c->critical, &c->n_critical);
    if (rv == 0)
        rv = rp_ssh_get_string(r, "certificate extensions", &p, &n);
    if (rv == 0)
        rv = parse_opts(p, n, "extension", &c->extensions, &c->n_extensions);
    /* PROTOCOL.certkeys: "reserved" is ignored by this version of the protocol (it
     * is still covered by the signature). */
    if (rv == 0)
        rv = rp_ssh_get_string(r, "certificate reserved field", &p, &n);
    if (rv == 0)
        rv = rp_ssh_get_string(r, "certificate signature key", &p, &n);
    if (rv != 0)
        return rv;
    /* A plain key only: OpenSSH does not chain certificates. */
    rv = rp_ssh_pubkey_from_blob(p, n, &c->signature_key);
    if (rv != 0)
        return rp_err(rv, "certificate signature key: %s", rp_errmsg());
    c->signed_len = r->off;
    rv = rp_ssh_get_string(r, "certificate signature", &p, &n);
    if (rv != 0)
        return rv;
    c->sig_off = r->off - n;
    c->sig_len = n;
    rv = check_signature_shape(p, n);
    if (rv == 0 && rp_rd_left(r) != 0)
        rv = rp_err(RP_EINVAL, "%zu trailing bytes after the certificate signature", rp_rd_left(r));
    return rv;
}

int rp_ssh_cert_parse(const uint8_t *blob, size_t n, struct rp_ssh_cert *out)
{
    struct rp_ssh_cert c;
    struct rp_rd r;
    memset(&c, 0, sizeof c);
    memset(out, 0, sizeof *out);
    rp_rd_init(&r, blob, n);
    int rv = parse_fields(&r, &c);
    if (rv == 0) {
        c.blob = malloc(n);
        if (c.blob == NULL)
            rv = rp_err(RP_ENOMEM, "certificate copy of %zu bytes", n);
        else
            memcpy(c.blob, blob, n);
        c.blob_len = n;
    }
    if (rv != 0) {
        rp_ssh_cert_free(&c);
        return rv;
    }
    *out = c;
    return 0;
}

int rp_ssh_cert_parse_line(const char *line, struct rp_ssh_cert *out, char **comment)
{
    uint8_t *blob;
    size_t n;
    char *c = NULL;
    memset(out, 0, sizeof *out);
    int rv = rp_ssh_line_split(line, &blob, &n, comment ? &c : NULL);
    if (rv != 0)
        return rv;
    rv = rp_ssh_cert_parse(blob, n, out);
    free(blob);
    if (rv != 0) {
        free(c);
        return rv;
    }
    if (comment != NULL)
        *comment = c;
    return 0;
}

/* ---- verification and policy -------------------------------------------------------- */

int rp_ssh_cert_verify(const struct rp_ssh_cert *c)
{
    if (c->blob == NULL || c->signature_key == NULL)
        return rp_err(RP_EINVAL, "certificate was not parsed: nothing to verify");
    return rp_ssh_verify(c->signature_key, c->blob + c->sig_off, c->sig_len, c->blob,
                         c->signed_len);
}

/* "2026-11-25T14:00:00Z" for messages; the ends of time read as words. */
static void format_cert_time(uint64_t t, char *out, size_t outlen)
{
    struct tm tm;
    time_t tt = (time_t)t;
    if (t == 0) {
        snprintf(out, outlen, "the beginning of time");
        return;
    }
    if (t == RP_SSH_CERT_FOREVER) {
        snprintf(out, outlen, "forever");
        return;
    }
    /* Past year 9999 gmtime has nothing useful to say; print the number. */
    if (t > 253402300799ULL || gmtime_r(&tt, &tm) == NULL ||
        strftime(out, outlen, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        snprintf(out, outlen, "%llu", (unsigned long long)t);
}

static const char *type_word(uint32_t type)
{
    return type == RP_SSH_CERT_USER ? "user" : type == RP_SSH_CERT_HOST ? "host" : "unknown";
}

static int refuse_principal(const struct rp_ssh_cert *c, const char *principal)
{
    struct rp_buf list;
    if (c->n_principals == 0)
        return rp_err(RP_EDENIED, "principal '%s' refused: the certificate lists no principals",
                      principal);
    rp_buf_init(&list);
    for (size_t i = 0; i < c->n_principals; i++)
        rp_buf_printf(&list, "%s%s", i ? ", " : "", c->principals[i]);
    int rv = rp_err(RP_EDENIED, "principal '%s' is not in the certificate's principals (%.200s)",
                    principal, list.data ? (char *)list.data : "");
    rp_buf_free(&list);
    return rv;
}

int rp_ssh_cert_check(const struct rp_ssh_cert *c, EVP_PKEY *trusted_ca, uint32_t want_type,
                      uint64_t now, const char *principal, enum rp_ssh_cert_verdict *why)
{
    enum rp_ssh_cert_verdict verdict = RP_SSH_CERT_OK;
    char a[64], b[64];
    int rv = 0;
    if (c->blob == NULL || c->signature_key == NULL || trusted_ca == NULL)
        return rp_err(RP_EINVAL, "certificate check needs a parsed certificate and a CA key");

    /* Who signed comes first: nothing else in a certificate means anything before. */
    if (EVP_PKEY_eq(c->signature_key, trusted_ca) != 1) {
        ERR_clear_error();
        if (rp_ssh_fingerprint(c->signature_key, a, sizeof a) != 0)
            snprintf(a, sizeof a, "(unprintable)");
        if (rp_ssh_fingerprint(trusted_ca, b, sizeof b) != 0)
            snprintf(b, sizeof b, "(unprintable)");
        verdict = RP_SSH_CERT_WRONG_CA;
        rv = rp_err(RP_EDENIED, "certificate is signed by CA %s, not by the trusted CA %s", a, b);
        goto out;
    }
    rv = rp_ssh_cert_verify(c);
    if (rv != 0) {
        verdict = RP_SSH_CERT_BAD_SIGNATURE;
        rv = rp_err(RP_EDENIED, "certificate signature is invalid: %s", rp_errmsg());
        goto out;
    }
    if (c->type != want_type) {
        verdict = RP_SSH_CERT_WRONG_TYPE;
        rv = rp_err(RP_EDENIED, "certificate is a %s certificate, expected a %s certificate",
                    type_word(c->type), type_word(want_type));
        goto out;
    }
    if (now < c->valid_after) {
        format_cert_time(c->valid_after, a, sizeof a);
        format_cert_time(now, b, sizeof b);
        verdict = RP_SSH_CERT_NOT_YET_VALID;
        rv = rp_err(RP_EDENIED, "certificate is not valid before %s (now %s)", a, b);
        goto out;
    }
    if (now >= c->valid_before) {
        format_cert_time(c->valid_before, a, sizeof a);
        format_cert_time(now, b, sizeof b);
        verdict = RP_SSH_CERT_EXPIRED;
        rv = rp_err(RP_EDENIED, "certificate expired at %s (now %s)", a, b);
        goto out;
    }
    if (principal != NULL) {
        size_t i = 0;
        while (i < c->n_principals && strcmp(c->principals[i], principal) != 0)
            i++;
        if (i == c->n_principals) {
            verdict = RP_SSH_CERT_PRINCIPAL_NOT_LISTED;
            rv = refuse_principal(c, principal);
        }
    }
out:
    if (why != NULL)
        *why = verdict;
    return rv;
}

const char *rp_ssh_cert_opt_find(const struct rp_ssh_cert_opt *opts, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(opts[i].name, name) == 0)
            return opts[i].value;
    }
    return NULL;
}

static void free_opts(struct rp_ssh_cert_opt *opts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(opts[i].name);
        free(opts[i].value);
    }
    free(opts);
}

void rp_ssh_cert_free(struct rp_ssh_cert *c)
{
    free(c->nonce);
    EVP_PKEY_free(c->key);
    free(c->key_id);
    for (size_t i = 0; i < c->n_principals; i++)
        free(c->principals[i]);
    free(c->principals);
    free_opts(c->critical, c->n_critical);
    free_opts(c->extensions, c->n_extensions);
    EVP_PKEY_free(c->signature_key);
    free(c->blob);
    memset(c, 0, sizeof *c);
}
