/* lib/totp.c: RFC 6238 TOTP over RFC 4226 HOTP (HMAC-SHA1), base32 and
 * otpauth:// URIs. */
#include "lib/totp.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdbool.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/password.h" /* rp_utf8_count */

#define URI_FIELD_MAX 256

/* ---- base32 ---------------------------------------------------------------- */

static const char b32_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

int rp_base32_encode(const void *p, size_t n, char *out, size_t outlen)
{
    if (n > (SIZE_MAX - 5) / 8 || outlen < RP_BASE32_ENCODED_LEN(n))
        return rp_err(RP_ETOOBIG, "base32 of %zu bytes needs %zu characters; the buffer holds %zu",
                      n, n > (SIZE_MAX - 5) / 8 ? SIZE_MAX : RP_BASE32_ENCODED_LEN(n), outlen);
    const uint8_t *in = p;
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | in[i];
        bits += 8;
        while (bits >= 5) {
            bits -= 5;
            out[o++] = b32_alphabet[(acc >> bits) & 31];
        }
        acc &= (1u << bits) - 1;
    }
    if (bits > 0)
        out[o++] = b32_alphabet[(acc << (5 - bits)) & 31];
    out[o] = '\0';
    return 0;
}

static int b32_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a';
    if (c >= '2' && c <= '7')
        return c - '2' + 26;
    return -1;
}

int rp_base32_decode(const char *s, uint8_t *out, size_t cap, size_t *outlen)
{
    size_t len = strlen(s);
    size_t data = len;
    while (data > 0 && s[data - 1] == '=')
        data--;
    size_t pad = len - data;

    /* Characters after the last group: 8 chars = 5 bytes, so 2, 4, 5 or 7
     * leftover characters hold 1..4 bytes; 1, 3 or 6 cannot come from any input. */
    static const int pad_for_rem[8] = {0, -1, 6, -1, 4, 3, -1, 1};
    int want_pad = pad_for_rem[data % 8];
    if (want_pad < 0)
        return rp_err(RP_EINVAL,
                      "base32 text of %zu characters (before padding) has an "
                      "impossible length; no byte string encodes to it",
                      data);
    if (pad != 0 && (size_t)want_pad != pad)
        return rp_err(RP_EINVAL,
                      "base32 text has %zu '=' of padding; %d expected after %zu "
                      "characters",
                      pad, want_pad, data);

    size_t need = data * 5 / 8;
    if (need > cap)
        return rp_err(RP_ETOOBIG, "base32 text decodes to %zu bytes; at most %zu fit", need, cap);
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < data; i++) {
        int v = b32_value((unsigned char)s[i]);
        if (v < 0)
            return rp_err(RP_EINVAL, "base32 character %zu (0x%02x) is not in A-Z, 2-7", i,
                          (unsigned char)s[i]);
        acc = (acc << 5) | (uint32_t)v;
        bits += 5;
        if (bits >= 8) {
            bits -= 8;
            out[o++] = (uint8_t)(acc >> bits);
        }
        acc &= (1u << bits) - 1;
    }
    if (acc != 0)
        return rp_err(RP_EINVAL, "base32 text has non-zero unused bits in its last character");
    *outlen = o;
    return 0;
}

/* ---- codes ------------------------------------------------------------------ */

int rp_totp_generate_secret(uint8_t secret[RP_TOTP_SECRET_BYTES])
{
    if (RAND_bytes(secret, RP_TOTP_SECRET_BYTES) != 1)
        return rp_err(RP_EIO, "no randomness for the TOTP secret (RAND_bytes failed)");
    return 0;
}

uint64_t rp_totp_step(uint64_t now_ms)
{
    return now_ms / 1000 / RP_TOTP_PERIOD_S;
}

int rp_hotp(const uint8_t *key, size_t keylen, uint64_t counter, unsigned digits, uint32_t *code)
{
    if (digits < 6 || digits > 8)
        return rp_err(RP_EINVAL, "HOTP digits is %u; 6 to 8 are supported", digits);
    if (keylen < 1 || keylen > RP_TOTP_SECRET_MAX_BYTES)
        return rp_err(RP_EINVAL, "HOTP key is %zu bytes; 1 to %d are supported", keylen,
                      RP_TOTP_SECRET_MAX_BYTES);
    uint8_t msg[8];
    for (int i = 7; i >= 0; i--, counter >>= 8)
        msg[i] = (uint8_t)counter;
    uint8_t mac[EVP_MAX_MD_SIZE];
    unsigned maclen = 0;
    if (HMAC(EVP_sha1(), key, (int)keylen, msg, sizeof msg, mac, &maclen) == NULL || maclen != 20)
        return rp_err(RP_EINVAL, "HMAC-SHA1 failed");
    /* RFC 4226 5.3 dynamic truncation. */
    unsigned off = mac[19] & 0x0f;
    uint32_t bin = ((uint32_t)(mac[off] & 0x7f) << 24) | ((uint32_t)mac[off + 1] << 16) |
                   ((uint32_t)mac[off + 2] << 8) | mac[off + 3];
    OPENSSL_cleanse(mac, sizeof mac);
    uint32_t mod = 1;
    for (unsigned i = 0; i < digits; i++)
        mod *= 10;
    *code = bin % mod;
    return 0;
}

static int check_key(size_t keylen)
{
    if (keylen < RP_TOTP_SECRET_MIN_BYTES || keylen > RP_TOTP_SECRET_MAX_BYTES)
        return rp_err(RP_EINVAL, "TOTP secret is %zu bytes; %d to %d are required", keylen,
                      RP_TOTP_SECRET_MIN_BYTES, RP_TOTP_SECRET_MAX_BYTES);
    return 0;
}

int rp_totp_code(const uint8_t *key, size_t keylen, uint64_t step, char out[RP_TOTP_DIGITS + 1])
{
    int rv = check_key(keylen);
    if (rv != 0)
        return rv;
    uint32_t v;
    rv = rp_hotp(key, keylen, step, RP_TOTP_DIGITS, &v);
    if (rv != 0)
        return rv;
    for (int i = RP_TOTP_DIGITS - 1; i >= 0; i--, v /= 10)
        out[i] = (char)('0' + v % 10);
    out[RP_TOTP_DIGITS] = '\0';
    return 0;
}

int rp_totp_verify(const uint8_t *key, size_t keylen, const char *code, uint64_t now_ms,
                   uint64_t last_step, uint64_t *matched_step)
{
    int rv = check_key(keylen);
    if (rv != 0)
        return rv;
    if (code == NULL)
        return rp_err(RP_EINVAL, "TOTP code is missing; expected %d digits", RP_TOTP_DIGITS);
    /* Never echo the code itself: say only what shape was wrong. */
    size_t len = strnlen(code, RP_TOTP_DIGITS + 1);
    if (len != RP_TOTP_DIGITS)
        return rp_err(RP_EINVAL, "TOTP code is %s%zu characters; exactly %d digits are required",
                      len > RP_TOTP_DIGITS ? "more than " : "",
                      len > RP_TOTP_DIGITS ? len - 1 : len, RP_TOTP_DIGITS);
    for (size_t i = 0; i < len; i++) {
        if (code[i] < '0' || code[i] > '9')
            return rp_err(RP_EINVAL,
                          "TOTP code character %zu is not a digit 0-9; exactly %d "
                          "digits are required",
                          i + 1, RP_TOTP_DIGITS);
    }

    uint64_t now_step = rp_totp_step(now_ms);
    bool accepted = false, replayed = false;
    uint64_t best = 0;
    /* Compute and compare every candidate, without stopping at the first match. */
    for (int d = -RP_TOTP_WINDOW; d <= RP_TOTP_WINDOW; d++) {
        if (d < 0 && now_step < (uint64_t)-d)
            continue;
        uint64_t step = now_step + (uint64_t)(int64_t)d;
        char want[RP_TOTP_DIGITS + 1];
        rv = rp_totp_code(key, keylen, step, want);
        if (rv != 0)
            return rv;
        int match = CRYPTO_memcmp(want, code, RP_TOTP_DIGITS) == 0;
        OPENSSL_cleanse(want, sizeof want);
        if (match && step > last_step) {
            accepted = true;
            best = step; /* steps ascend: the latest acceptable match wins */
        } else if (match) {
            replayed = true;
        }
    }
    if (accepted) {
        *matched_step = best;
        return 0;
    }
    if (replayed)
        return rp_err(RP_EDENIED, "TOTP code was already used; wait for the next code");
    return rp_err(RP_EDENIED, "TOTP code is not valid at this time");
}

/* ---- enrolment ------------------------------------------------------------- */

static int check_uri_field(const char *what, const char *s)
{
    if (s == NULL || *s == '\0')
        return rp_err(RP_EINVAL, "TOTP %s is empty; a name is required", what);
    size_t n = strnlen(s, URI_FIELD_MAX + 1);
    if (n > URI_FIELD_MAX)
        return rp_err(RP_EINVAL, "TOTP %s is longer than %d bytes", what, URI_FIELD_MAX);
    size_t chars;
    if (rp_utf8_count(s, n, &chars) != 0)
        return rp_err(RP_EINVAL, "TOTP %s is %s", what, rp_errmsg());
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return rp_err(RP_EINVAL, "TOTP %s has a control character at byte %zu", what, i);
        if (c == ':')
            return rp_err(RP_EINVAL,
                          "TOTP %s '%s' contains ':', which separates issuer and "
                          "account in the label",
                          what, s);
    }
    return 0;
}

static int append_pct(struct rp_buf *b, const char *s, bool label)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        unsigned char c = *p;
        bool plain = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                     c == '-' || c == '.' || c == '_' || c == '~' || (label && c == '@');
        char esc[3] = {'%', hex[c >> 4], hex[c & 15]};
        int rv = plain ? rp_buf_append(b, &c, 1) : rp_buf_append(b, esc, 3);
        if (rv != 0)
            return rv;
    }
    return 0;
}

int rp_totp_uri(const char *issuer, const char *account, const uint8_t *secret, size_t secretlen,
                struct rp_buf *out)
{
    int rv = check_uri_field("issuer", issuer);
    if (rv == 0)
        rv = check_uri_field("account", account);
    if (rv == 0)
        rv = check_key(secretlen);
    if (rv != 0)
        return rv;
    char b32[RP_BASE32_ENCODED_LEN(RP_TOTP_SECRET_MAX_BYTES)];
    rv = rp_base32_encode(secret, secretlen, b32, sizeof b32);
    if (rv != 0)
        return rv;

    /* Reserve the worst case at once: growing by realloc would leave copies of
     * the secret in freed memory that could not be wiped. */
    size_t start = out->len;
    rv = rp_buf_reserve(out, 128 + 6 * strlen(issuer) + 3 * strlen(account) + strlen(b32));
    if (rv == 0)
        rv = rp_buf_append_str(out, "otpauth://totp/");
    if (rv == 0)
        rv = append_pct(out, issuer, true);
    if (rv == 0)
        rv = rp_buf_append_str(out, ":");
    if (rv == 0)
        rv = append_pct(out, account, true);
    if (rv == 0)
        rv = rp_buf_printf(out, "?secret=%s&issuer=", b32);
    if (rv == 0)
        rv = append_pct(out, issuer, false);
    if (rv == 0)
        rv = rp_buf_printf(out, "&algorithm=SHA1&digits=%d&period=%d", RP_TOTP_DIGITS,
                           RP_TOTP_PERIOD_S);
    OPENSSL_cleanse(b32, sizeof b32);
    if (rv != 0) {
        if (out->data != NULL)
            OPENSSL_cleanse(out->data + start, out->len - start);
        out->len = start;
        return rv;
    }
    return 0;
}
