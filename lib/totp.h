/* lib/totp.h: time-based one-time passwords (RFC 6238) as authenticator apps
 * use them: HMAC-SHA1, 30-second steps, 6 digits; base32 secrets (RFC 4648);
 * otpauth:// enrolment URIs.
 *
 * Replay: a code is valid for a whole step (and, with the clock-skew window,
 * for the neighbouring steps), so a code seen over a shoulder or in a log could
 * be used again. rp_totp_verify() therefore takes the last step accepted for
 * this device and returns the step that matched; the caller stores that step
 * (replicated with the device) and codes for it or any earlier step are refused.
 *
 * Secrets are the caller's memory; nothing here keeps, logs or prints them or
 * the codes. */
#ifndef RP_TOTP_H
#define RP_TOTP_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define RP_TOTP_PERIOD_S 30
#define RP_TOTP_DIGITS 6
#define RP_TOTP_SECRET_BYTES 20     /* 160 bits, as RFC 4226 recommends */
#define RP_TOTP_SECRET_MIN_BYTES 16 /* RFC 4226: at least 128 bits */
#define RP_TOTP_SECRET_MAX_BYTES 64
#define RP_TOTP_WINDOW 1 /* steps accepted either side of now, for clock skew */

/* ---- base32 (RFC 4648 section 6) ----------------------------------------- */

/* Characters (including the NUL) rp_base32_encode writes for @n bytes. */
#define RP_BASE32_ENCODED_LEN(n) ((((n)*8) + 4) / 5 + 1)

/* Encodes @n bytes at @p as upper-case base32 without padding into @out,
 * NUL-terminated. Returns 0 or RP_ETOOBIG if @outlen < RP_BASE32_ENCODED_LEN(@n). */
int rp_base32_encode(const void *p, size_t n, char *out, size_t outlen);

/* Decodes the NUL-terminated base32 text @s into @out (at most @cap bytes),
 * setting *@outlen. Accepts lower case and correct '=' padding; refuses other
 * characters, impossible lengths, wrong padding and non-zero unused trailing bits.
 * Returns 0, RP_EINVAL (message names the offset and the problem) or RP_ETOOBIG. */
int rp_base32_decode(const char *s, uint8_t *out, size_t cap, size_t *outlen);

/* ---- codes ---------------------------------------------------------------- */

/* Fills @secret with RP_TOTP_SECRET_BYTES random bytes (OpenSSL RAND_bytes).
 * Returns 0 or RP_EIO. */
int rp_totp_generate_secret(uint8_t secret[RP_TOTP_SECRET_BYTES]);

/* The time step of @now_ms: floor(seconds since the epoch / 30). */
uint64_t rp_totp_step(uint64_t now_ms);

/* RFC 4226 HOTP with HMAC-SHA1: the @digits-digit (6..8) code of counter @counter
 * as a number (print with leading zeros). @key is @keylen (1..64) bytes.
 * Returns 0 or RP_EINVAL. Exposed for the RFC test vectors (8 digits). */
int rp_hotp(const uint8_t *key, size_t keylen, uint64_t counter, unsigned digits, uint32_t *code);

/* The 6-digit code for time step @step as text ("012345") into @out.
 * @keylen must be within RP_TOTP_SECRET_MIN_BYTES..RP_TOTP_SECRET_MAX_BYTES.
 * Returns 0 or RP_EINVAL. */
int rp_totp_code(const uint8_t *key, size_t keylen, uint64_t step, char out[RP_TOTP_DIGITS + 1]);

/* Checks the user's @code (NUL-terminated; exactly 6 ASCII digits) at time
 * @now_ms, accepting the steps within RP_TOTP_WINDOW of now that are later than
 * @last_step (the step last accepted for this secret; 0 if none). Every
 * candidate is computed and compared in constant time.
 *
 * On success returns 0 and sets *@matched_step, which the caller stores as the
 * new last step. Returns RP_EINVAL if @code is not 6 digits or the key length is
 * out of bounds, RP_EDENIED if the code matches no acceptable step (the message
 * says "already used" when it matched only a step at or before @last_step). */
int rp_totp_verify(const uint8_t *key, size_t keylen, const char *code, uint64_t now_ms,
                   uint64_t last_step, uint64_t *matched_step);

/* ---- enrolment ------------------------------------------------------------- */

/* Appends to @out the key URI authenticator apps read from a QR code:
 *   otpauth://totp/ISSUER:ACCOUNT?secret=BASE32&issuer=ISSUER&algorithm=SHA1&digits=6&period=30
 * with ISSUER and ACCOUNT percent-encoded (RFC 3986: all but A-Z a-z 0-9 - . _ ~,
 * and '@' in the label). Both must be non-empty valid UTF-8 of at most 256 bytes
 * without control characters or ':' (the label separator).
 * The URI is NUL-terminated in @out (the NUL not counted in out->len).
 * Returns 0, RP_EINVAL (message names the bad argument) or RP_ENOMEM; on error
 * @out->len is as before. The URI holds the secret: wipe @out after use
 * (OPENSSL_cleanse(out->data, out->cap)). */
int rp_totp_uri(const char *issuer, const char *account, const uint8_t *secret, size_t secretlen,
                struct rp_buf *out);

#endif
