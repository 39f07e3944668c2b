/* tests/test_password_totp.c: argon2id password hashes and the password policy,
 * TOTP (RFC 6238/4226 vectors, base32, window, replay, oathtool cross-check),
 * and the login lockout rules with their msgpack fields. */
#include <argon2.h>
#include <criterion/criterion.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/lockout.h"
#include "lib/mp.h"
#include "lib/password.h"
#include "lib/totp.h"

/* ---- helpers ------------------------------------------------------------------ */

static int verify_str(const char *pw, const char *encoded)
{
    return rp_password_verify(pw, strlen(pw), encoded);
}

static void hash_str(const char *pw, char out[RP_PASSWORD_ENCODED_MAX])
{
    int rv = rp_password_hash(pw, strlen(pw), out, RP_PASSWORD_ENCODED_MAX);
    cr_assert_eq(rv, 0, "hash failed: %s", rp_errmsg());
}

/* Copies @encoded with the first occurrence of @from replaced by @to. */
static void replace(const char *encoded, const char *from, const char *to, char *out, size_t cap)
{
    const char *at = strstr(encoded, from);
    cr_assert_not_null(at, "'%s' not in '%s'", from, encoded);
    int n = snprintf(out, cap, "%.*s%s%s", (int)(at - encoded), encoded, to, at + strlen(from));
    cr_assert(n > 0 && (size_t)n < cap);
}

/* @s repeated @times (UTF-8 text), into a static buffer. */
static const char *repeat(const char *s, int times)
{
    static char buf[2048];
    buf[0] = '\0';
    for (int i = 0; i < times; i++)
        strcat(buf, s);
    return buf;
}

static const char *PW = "correct horse battery staple";

/* ---- argon2id hashes ---------------------------------------------------------- */

Test(password, hash_then_verify_round_trips_with_default_parameters)
{
    char enc[RP_PASSWORD_ENCODED_MAX];
    hash_str(PW, enc);
    cr_assert(strncmp(enc, "$argon2id$v=19$m=65536,t=1,p=1$", 31) == 0, "%s", enc);
    cr_assert_eq(verify_str(PW, enc), 0, "%s", rp_errmsg());
    struct rp_password_params pp;
    cr_assert_eq(rp_password_parse_params(enc, &pp), 0);
    cr_assert_eq(pp.m_kib, RP_PASSWORD_M_KIB);
    cr_assert_eq(pp.t_cost, RP_PASSWORD_T_COST);
    cr_assert_eq(pp.p_lanes, RP_PASSWORD_P_LANES);
    cr_assert_not(rp_password_needs_rehash(enc));
}

/* Hashes are encoded by our own code (argon2 runs with our allocator): libargon2's
 * own verifier must accept them, and ours must accept libargon2's. */
Test(password, hashes_interoperate_with_libargon2_encoding)
{
    char enc[RP_PASSWORD_ENCODED_MAX];
    hash_str(PW, enc);
    cr_assert_eq(argon2id_verify(enc, PW, strlen(PW)), ARGON2_OK, "libargon2 refused %s", enc);
    char theirs[RP_PASSWORD_ENCODED_MAX];
    const uint8_t salt[16] = "0123456789abcdef";
    cr_assert_eq(argon2id_hash_encoded(1, 8192, 2, PW, strlen(PW), salt, sizeof salt, 32, theirs,
                                       sizeof theirs),
                 ARGON2_OK);
    cr_assert_eq(verify_str(PW, theirs), 0, "%s: %s", theirs, rp_errmsg());
    cr_assert_eq(verify_str("not the password!", theirs), RP_EDENIED);
}

Test(password, wrong_password_is_refused)
{
    char enc[RP_PASSWORD_ENCODED_MAX];
    hash_str(PW, enc);
    cr_assert_eq(verify_str("correct horse battery stapler", enc), RP_EDENIED);
    cr_assert_eq(verify_str("Correct horse battery staple", enc), RP_EDENIED);
    cr_assert_eq(verify_str("", enc), RP_EDENIED);
    cr_assert(strstr(rp_errmsg(), "does not match") != NULL, "%s", rp_errmsg());
}

Test(password, same_password_hashes_differ_by_salt)
{
    char a[RP_PASSWORD_ENCODED_MAX], b[RP_PASSWORD_ENCODED_MAX];
    hash_str(PW, a);
    hash_str(PW, b);
    cr_assert_str_neq(a, b);
    /* The salts (between the 4th and 5th '$') differ, not just the digests. */
    const char *sa = strchr(strchr(strchr(strchr(a + 1, '$') + 1, '$') + 1, '$'), '$');
    const char *sb = strchr(strchr(strchr(strchr(b + 1, '$') + 1, '$') + 1, '$'), '$');
    cr_assert(strncmp(sa, sb, 23) != 0, "%s vs %s", a, b);
    cr_assert_eq(verify_str(PW, a), 0);
    cr_assert_eq(verify_str(PW, b), 0);
}

Test(password, unknown_user_is_refused_after_the_same_work)
{
    cr_assert_eq(verify_str(PW, NULL), RP_EDENIED);
}

Test(password, tampered_encoded_strings_are_refused)
{
    char enc[RP_PASSWORD_ENCODED_MAX], bad[2 * RP_PASSWORD_ENCODED_MAX];
    hash_str(PW, enc);
    size_t n = strlen(enc);
    const char *salt = strrchr(enc, '$') - 22;

    /* A flipped digest or salt character: still well-formed, no longer matching. */
    snprintf(bad, sizeof bad, "%s", enc);
    bad[n - 5] = bad[n - 5] == 'A' ? 'B' : 'A';
    cr_assert_eq(verify_str(PW, bad), RP_EDENIED);
    snprintf(bad, sizeof bad, "%s", enc);
    bad[salt - enc + 3] = bad[salt - enc + 3] == 'A' ? 'B' : 'A';
    cr_assert_eq(verify_str(PW, bad), RP_EDENIED);

    /* Other algorithms and versions. */
    replace(enc, "$argon2id$", "$argon2i$", bad, sizeof bad);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "not an argon2id hash") != NULL, "%s", rp_errmsg());
    replace(enc, "$argon2id$", "$argon2d$", bad, sizeof bad);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL);
    replace(enc, "$v=19$", "$v=16$", bad, sizeof bad);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "version 19") != NULL, "%s", rp_errmsg());
    replace(enc, "$v=19$", "$", bad, sizeof bad);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL);

    /* Structure. */
    snprintf(bad, sizeof bad, "%s$", enc);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL, "trailing '$'");
    snprintf(bad, sizeof bad, "%sAA", enc);
    cr_assert_neq(verify_str(PW, bad), 0, "longer digest");
    snprintf(bad, sizeof bad, "%.*s", (int)(n - 1), enc);
    cr_assert_neq(verify_str(PW, bad), 0, "truncated digest");
    snprintf(bad, sizeof bad, "%.*s", (int)(n - 43), enc);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL, "no digest");
    replace(enc, ",t=", ";t=", bad, sizeof bad);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL);
    replace(enc, "m=65536", "m=065536", bad, sizeof bad);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL, "leading zero");
    replace(enc, "m=65536", "m=+65536", bad, sizeof bad);
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL);
    snprintf(bad, sizeof bad, "%s", enc);
    bad[n - 3] = '*';
    cr_assert_eq(verify_str(PW, bad), RP_EINVAL, "not base64");
    cr_assert_eq(verify_str(PW, ""), RP_EINVAL);
    cr_assert_eq(verify_str(PW, "$argon2id$v=19$m=65536,t=1,p=1$$"), RP_EINVAL);
    /* A salt shorter than argon2's 8-byte minimum. */
    cr_assert_eq(verify_str(PW, "$argon2id$v=19$m=65536,t=1,p=1$AAAAAA$"
                                "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
                 RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "salt is 4 bytes") != NULL, "%s", rp_errmsg());
    /* Far longer than any hash we make. */
    char huge[600];
    memset(huge, 'A', sizeof huge - 1);
    huge[sizeof huge - 1] = '\0';
    memcpy(huge, enc, n);
    cr_assert_eq(verify_str(PW, huge), RP_EINVAL);
}

Test(password, parameters_outside_bounds_are_refused_before_hashing)
{
    char enc[RP_PASSWORD_ENCODED_MAX], bad[2 * RP_PASSWORD_ENCODED_MAX];
    hash_str(PW, enc);
    static const struct {
        const char *params;
        const char *why;
    } cases[] = {
        {"m=4194304,t=1,p=1", "memory"},        /* 4 GiB */
        {"m=4294967295,t=1,p=1", "memory"},     /* UINT32_MAX KiB */
        {"m=99999999999,t=1,p=1", "malformed"}, /* overflows 32 bits */
        {"m=4096,t=1,p=1", "memory"},           /* 4 MiB: below the floor */
        {"m=65536,t=1000,p=1", "passes"},       {"m=65536,t=0,p=1", "passes"},
        {"m=65536,t=1,p=64", "lanes"},          {"m=65536,t=1,p=0", "lanes"},
        {"m=262144,t=4,p=1", "cost"}, /* each within bounds, the product not */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        replace(enc, "m=65536,t=1,p=1", cases[i].params, bad, sizeof bad);
        cr_assert_eq(verify_str(PW, bad), RP_EINVAL, "%s", cases[i].params);
        cr_assert(strstr(rp_errmsg(), cases[i].why) != NULL, "%s: %s", cases[i].params,
                  rp_errmsg());
    }
    /* Hashing refuses them too. */
    struct rp_password_params pp = {1u << 22, 1, 1};
    cr_assert_eq(rp_password_hash_params(PW, strlen(PW), &pp, enc, sizeof enc), RP_EINVAL);
}

Test(password, other_parameters_within_bounds_verify_and_want_a_rehash)
{
    char enc[RP_PASSWORD_ENCODED_MAX];
    struct rp_password_params pp = {RP_PASSWORD_MIN_M_KIB, 2, 2};
    cr_assert_eq(rp_password_hash_params(PW, strlen(PW), &pp, enc, sizeof enc), 0, "%s",
                 rp_errmsg());
    cr_assert(strstr(enc, "$m=8192,t=2,p=2$") != NULL, "%s", enc);
    cr_assert_eq(verify_str(PW, enc), 0, "%s", rp_errmsg());
    cr_assert_eq(verify_str("not the password", enc), RP_EDENIED);
    cr_assert(rp_password_needs_rehash(enc));
    cr_assert_not(rp_password_needs_rehash("garbage"));
}

Test(password, small_output_buffer_is_refused)
{
    char enc[40];
    cr_assert_eq(rp_password_hash(PW, strlen(PW), enc, sizeof enc), RP_ETOOBIG);
}

/* ---- policy ----------------------------------------------------------------- */

Test(policy, counts_code_points_not_bytes)
{
    /* é is 2 bytes, € 3, 😀 4: 11 of them are 11 characters however many bytes. */
    const char *chars[] = {"a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80"};
    for (size_t i = 0; i < 4; i++) {
        const char *pw = repeat(chars[i], 11);
        cr_assert_eq(rp_password_check_policy(pw, strlen(pw)), RP_EINVAL, "%s", chars[i]);
        cr_assert_str_eq(rp_errmsg(), "password is 11 characters; at least 12 are required");
        pw = repeat(chars[i], 12);
        cr_assert_eq(rp_password_check_policy(pw, strlen(pw)), 0, "%s: %s", chars[i], rp_errmsg());
    }
    /* Mixed: 6 ASCII + 5 multi-byte = 11 characters in 6+2+3+4+2+3 = 20 bytes. */
    const char *mixed = "abcdef\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xc3\xa9\xe2\x82\xac";
    cr_assert_eq(rp_password_check_policy(mixed, strlen(mixed)), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "password is 11 characters; at least 12 are required");
    cr_assert_eq(rp_password_check_policy("abcdefghi", 9), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "password is 9 characters; at least 12 are required");
    cr_assert_eq(rp_password_check_policy("", 0), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "password is 0 characters; at least 12 are required");
}

Test(policy, refuses_invalid_utf8)
{
    static const char *bad[] = {
        "abcdefghijkl\xff",             /* never valid */
        "abcdefghijkl\xc0\xaf",         /* overlong '/' */
        "abcdefghijkl\xe0\x80\xaf",     /* overlong, 3 bytes */
        "abcdefghijkl\xed\xa0\x80",     /* surrogate U+D800 */
        "abcdefghijkl\xf4\x90\x80\x80", /* U+110000 */
        "abcdefghijkl\xe2\x82",         /* truncated € */
        "abcdefghijkl\x80",             /* lone continuation byte */
        "abcdef\xc3ghijkl",             /* lead byte without continuation */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(rp_password_check_policy(bad[i], strlen(bad[i])), RP_EINVAL, "case %zu", i);
        cr_assert(strstr(rp_errmsg(), "password is not valid UTF-8") != NULL, "%s", rp_errmsg());
    }
    char enc[RP_PASSWORD_ENCODED_MAX];
    cr_assert_eq(rp_password_hash(bad[0], strlen(bad[0]), enc, sizeof enc), RP_EINVAL);
}

Test(policy, refuses_nul_and_more_than_1024_bytes)
{
    const char withnul[] = "abcdefgh\0ijklmnop";
    cr_assert_eq(rp_password_check_policy(withnul, sizeof withnul - 1), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "NUL") != NULL, "%s", rp_errmsg());

    char big[1100];
    memset(big, 'x', sizeof big);
    cr_assert_eq(rp_password_check_policy(big, 1024), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_password_check_policy(big, 1025), RP_EINVAL);
    cr_assert_str_eq(rp_errmsg(), "password is 1025 bytes; at most 1024 are allowed");
    /* 342 x 3-byte characters = 1026 bytes: the byte limit applies, not the count. */
    const char *euros = repeat("\xe2\x82\xac", 342);
    cr_assert_eq(rp_password_check_policy(euros, strlen(euros)), RP_EINVAL);

    /* Verification refuses them without hashing, as a mismatch. */
    char enc[RP_PASSWORD_ENCODED_MAX];
    hash_str(PW, enc);
    cr_assert_eq(rp_password_verify(big, 1025, enc), RP_EDENIED);
    cr_assert_eq(rp_password_verify(withnul, sizeof withnul - 1, enc), RP_EDENIED);
}

Test(policy, a_password_set_under_an_older_policy_still_verifies)
{
    /* The policy applies when setting a password, not when checking one. */
    char enc[RP_PASSWORD_ENCODED_MAX];
    struct rp_password_params pp = {RP_PASSWORD_MIN_M_KIB, 1, 1};
    cr_assert_eq(rp_password_hash_params("twelve chars", 12, &pp, enc, sizeof enc), 0);
    cr_assert_eq(rp_password_verify("twelve chars", 12, enc), 0);
}

/* ---- TOTP: RFC vectors -------------------------------------------------------- */

static const uint8_t RFC_KEY[] = "12345678901234567890"; /* 20 bytes (+ NUL) */
#define RFC_KEYLEN 20

/* RFC 6238 Appendix B, SHA1 column. */
static const struct {
    uint64_t t;
    uint32_t code8;
} rfc6238[] = {
    {59, 94287082},         {1111111109, 7081804},  {1111111111, 14050471},
    {1234567890, 89005924}, {2000000000, 69279037}, {20000000000ull, 65353130},
};

Test(totp, rfc6238_appendix_b_sha1_vectors)
{
    for (size_t i = 0; i < sizeof rfc6238 / sizeof rfc6238[0]; i++) {
        uint64_t step = rp_totp_step(rfc6238[i].t * 1000);
        cr_assert_eq(step, rfc6238[i].t / 30);
        uint32_t code;
        cr_assert_eq(rp_hotp(RFC_KEY, RFC_KEYLEN, step, 8, &code), 0);
        cr_assert_eq(code, rfc6238[i].code8, "T=%llu: %08u, want %08u",
                     (unsigned long long)rfc6238[i].t, code, rfc6238[i].code8);
        /* Six digits are the last six of the eight. */
        char six[7], want[7];
        snprintf(want, sizeof want, "%06u", rfc6238[i].code8 % 1000000);
        cr_assert_eq(rp_totp_code(RFC_KEY, RFC_KEYLEN, step, six), 0);
        cr_assert_str_eq(six, want);
        uint64_t matched = 0;
        cr_assert_eq(rp_totp_verify(RFC_KEY, RFC_KEYLEN, want, rfc6238[i].t * 1000, 0, &matched), 0,
                     "%s", rp_errmsg());
        cr_assert_eq(matched, step);
    }
}

Test(totp, rfc4226_appendix_d_hotp_vectors)
{
    static const uint32_t want[] = {755224, 287082, 359152, 969429, 338314,
                                    254676, 287922, 162583, 399871, 520489};
    for (uint64_t c = 0; c < 10; c++) {
        uint32_t code;
        cr_assert_eq(rp_hotp(RFC_KEY, RFC_KEYLEN, c, 6, &code), 0);
        cr_assert_eq(code, want[c], "counter %llu", (unsigned long long)c);
    }
}

/* ---- TOTP: base32 ------------------------------------------------------------- */

Test(base32, rfc4648_vectors)
{
    static const struct {
        const char *raw, *padded;
    } v[] = {
        {"", ""},
        {"f", "MY======"},
        {"fo", "MZXQ===="},
        {"foo", "MZXW6==="},
        {"foob", "MZXW6YQ="},
        {"fooba", "MZXW6YTB"},
        {"foobar", "MZXW6YTBOI======"},
    };
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        char enc[32], unpadded[32], lower[32];
        size_t rawlen = strlen(v[i].raw);
        cr_assert_eq(rp_base32_encode(v[i].raw, rawlen, enc, sizeof enc), 0);
        snprintf(unpadded, sizeof unpadded, "%.*s", (int)strcspn(v[i].padded, "="), v[i].padded);
        cr_assert_str_eq(enc, unpadded, "encode '%s'", v[i].raw);

        uint8_t out[16];
        size_t n = 99;
        cr_assert_eq(rp_base32_decode(v[i].padded, out, sizeof out, &n), 0, "%s: %s", v[i].padded,
                     rp_errmsg());
        cr_assert_eq(n, rawlen);
        cr_assert(memcmp(out, v[i].raw, n) == 0);
        cr_assert_eq(rp_base32_decode(unpadded, out, sizeof out, &n), 0);
        cr_assert_eq(n, rawlen);
        cr_assert(memcmp(out, v[i].raw, n) == 0);
        size_t k;
        for (k = 0; v[i].padded[k] != '\0'; k++) {
            char c = v[i].padded[k];
            lower[k] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
        }
        lower[k] = '\0';
        cr_assert_eq(rp_base32_decode(lower, out, sizeof out, &n), 0, "%s", lower);
        cr_assert_eq(n, rawlen);
        cr_assert(memcmp(out, v[i].raw, n) == 0);
    }
    /* The RFC 6238 key in base32, as oathtool and authenticator apps take it. */
    char enc[64];
    cr_assert_eq(rp_base32_encode(RFC_KEY, RFC_KEYLEN, enc, sizeof enc), 0);
    cr_assert_str_eq(enc, "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
}

Test(base32, random_round_trips)
{
    for (size_t len = 0; len <= 64; len++) {
        uint8_t raw[64], back[64];
        char enc[RP_BASE32_ENCODED_LEN(64)];
        cr_assert_eq(RAND_bytes(raw, (int)sizeof raw), 1);
        cr_assert_eq(rp_base32_encode(raw, len, enc, RP_BASE32_ENCODED_LEN(len)), 0);
        cr_assert_eq(strlen(enc), RP_BASE32_ENCODED_LEN(len) - 1);
        cr_assert_eq(strspn(enc, "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"), strlen(enc));
        size_t n;
        cr_assert_eq(rp_base32_decode(enc, back, sizeof back, &n), 0, "%s: %s", enc, rp_errmsg());
        cr_assert_eq(n, len);
        cr_assert(memcmp(raw, back, len) == 0);
    }
}

Test(base32, refuses_malformed_text)
{
    uint8_t out[32];
    size_t n;
    static const char *bad[] = {
        "M",         /* 1 character: impossible length */
        "MZX",       /* 3 */
        "MZXW6Y",    /* 6 */
        "MZ1",       /* '1' is not in the alphabet */
        "MZXW 6YQ",  /* space */
        "MZ=XW6YQ",  /* '=' inside */
        "MZXW6YQ==", /* too much padding */
        "MY=====",   /* too little padding */
        "MZ",        /* 'Z' leaves non-zero unused bits ("f" is "MY") */
        "=",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(rp_base32_decode(bad[i], out, sizeof out, &n), RP_EINVAL, "'%s'", bad[i]);
    cr_assert_eq(rp_base32_decode("MZXW6YTBOI", out, 5, &n), RP_ETOOBIG);
    char small[4];
    cr_assert_eq(rp_base32_encode("foo", 3, small, sizeof small), RP_ETOOBIG);
}

/* ---- TOTP: verification -------------------------------------------------------- */

static const uint64_t NOW_MS = 1764000000000ull + 12345; /* a Tuesday in 2025, mid-step */

static void code_at(const uint8_t *key, uint64_t step, char out[7])
{
    cr_assert_eq(rp_totp_code(key, RP_TOTP_SECRET_BYTES, step, out), 0);
}

Test(totp, window_accepts_one_step_either_side_and_refuses_two)
{
    uint8_t key[RP_TOTP_SECRET_BYTES];
    cr_assert_eq(rp_totp_generate_secret(key), 0);
    uint64_t now = rp_totp_step(NOW_MS);
    char code[7];
    uint64_t matched;
    for (int d = -1; d <= 1; d++) {
        code_at(key, now + (uint64_t)(int64_t)d, code);
        matched = 0;
        cr_assert_eq(rp_totp_verify(key, sizeof key, code, NOW_MS, 0, &matched), 0, "offset %d: %s",
                     d, rp_errmsg());
        cr_assert_eq(matched, now + (uint64_t)(int64_t)d);
    }
    for (int d = -2; d <= 2; d += 4) {
        code_at(key, now + (uint64_t)(int64_t)d, code);
        /* A 1-in-10^6 collision with a code in the window would make this flaky;
         * skip the rare key for which the codes coincide. */
        char c2[7];
        bool collides = false;
        for (int w = -1; w <= 1; w++) {
            code_at(key, now + (uint64_t)(int64_t)w, c2);
            collides |= strcmp(c2, code) == 0;
        }
        if (collides)
            continue;
        cr_assert_eq(rp_totp_verify(key, sizeof key, code, NOW_MS, 0, &matched), RP_EDENIED,
                     "offset %d", d);
        cr_assert(strstr(rp_errmsg(), "not valid at this time") != NULL, "%s", rp_errmsg());
    }
    /* The window follows the clock across a step boundary. */
    uint64_t boundary = (now + 1) * 30000;
    code_at(key, now - 1, code);
    cr_assert_eq(rp_totp_verify(key, sizeof key, code, boundary - 1, 0, &matched), 0);
}

Test(totp, replay_of_an_accepted_step_is_refused)
{
    uint8_t key[RP_TOTP_SECRET_BYTES];
    cr_assert_eq(rp_totp_generate_secret(key), 0);
    uint64_t now = rp_totp_step(NOW_MS);
    char code[7], prev[7], next[7];
    code_at(key, now, code);
    code_at(key, now - 1, prev);
    code_at(key, now + 1, next);

    uint64_t last = 0, matched = 0;
    cr_assert_eq(rp_totp_verify(key, sizeof key, code, NOW_MS, last, &matched), 0);
    cr_assert_eq(matched, now);
    last = matched;

    /* The same code again, even a second later within the same step. */
    matched = 12345;
    cr_assert_eq(rp_totp_verify(key, sizeof key, code, NOW_MS + 1000, last, &matched), RP_EDENIED);
    cr_assert(strstr(rp_errmsg(), "already used") != NULL, "%s", rp_errmsg());
    cr_assert_eq(matched, 12345, "matched_step must not be written on refusal");
    /* An older code still inside the skew window. */
    if (strcmp(prev, code) != 0)
        cr_assert_eq(rp_totp_verify(key, sizeof key, prev, NOW_MS, last, &matched), RP_EDENIED);
    /* The next step's code is new and moves the last step on. */
    cr_assert_eq(rp_totp_verify(key, sizeof key, next, NOW_MS + 30000, last, &matched), 0);
    cr_assert_eq(matched, now + 1);
}

Test(totp, malformed_codes_are_refused)
{
    uint8_t key[RP_TOTP_SECRET_BYTES];
    cr_assert_eq(rp_totp_generate_secret(key), 0);
    char good[7];
    code_at(key, rp_totp_step(NOW_MS), good);
    char spaced[9], trailing[8];
    snprintf(spaced, sizeof spaced, " %s", good);
    snprintf(trailing, sizeof trailing, "%s\n", good);
    const char *bad[] = {"12345",  "1234567",      "12a456",
                         "",       "12 456",       "-12345",
                         "+12345", "１２３４５６", /* full-width digits */
                         spaced,   trailing,       "1234567890123456789"};
    uint64_t matched;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_assert_eq(rp_totp_verify(key, sizeof key, bad[i], NOW_MS, 0, &matched), RP_EINVAL,
                     "'%s'", bad[i]);
        cr_assert(strstr(rp_errmsg(), "exactly 6 digits") != NULL, "%s", rp_errmsg());
    }
    cr_assert_eq(rp_totp_verify(key, sizeof key, NULL, NOW_MS, 0, &matched), RP_EINVAL);
    /* Short secrets are refused. */
    cr_assert_eq(rp_totp_verify(key, 10, good, NOW_MS, 0, &matched), RP_EINVAL);
    cr_assert_eq(rp_totp_verify(key, sizeof key, good, NOW_MS, 0, &matched), 0);
}

Test(totp, generated_secrets_are_random)
{
    uint8_t a[RP_TOTP_SECRET_BYTES], b[RP_TOTP_SECRET_BYTES];
    cr_assert_eq(rp_totp_generate_secret(a), 0);
    cr_assert_eq(rp_totp_generate_secret(b), 0);
    cr_assert(memcmp(a, b, sizeof a) != 0);
}

Test(totp, otpauth_uri_is_percent_encoded)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_totp_uri("Raftport", "alice", RFC_KEY, RFC_KEYLEN, &b), 0, "%s", rp_errmsg());
    cr_assert_str_eq((char *)b.data, "otpauth://totp/Raftport:alice?secret="
                                     "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ&issuer=Raftport"
                                     "&algorithm=SHA1&digits=6&period=30");
    rp_buf_reset(&b);
    cr_assert_eq(rp_totp_uri("ACME Co/Prod", "bob+ops@example.com&x=1 é", RFC_KEY, RFC_KEYLEN, &b),
                 0, "%s", rp_errmsg());
    cr_assert_str_eq((char *)b.data, "otpauth://totp/ACME%20Co%2FProd:bob%2Bops@example.com"
                                     "%26x%3D1%20%C3%A9?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"
                                     "&issuer=ACME%20Co%2FProd&algorithm=SHA1&digits=6&period=30");

    size_t before = b.len;
    cr_assert_eq(rp_totp_uri("Evil:Corp", "alice", RFC_KEY, RFC_KEYLEN, &b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "issuer") != NULL, "%s", rp_errmsg());
    cr_assert_eq(rp_totp_uri("Raftport", "", RFC_KEY, RFC_KEYLEN, &b), RP_EINVAL);
    cr_assert_eq(rp_totp_uri("Raftport", "a\nb", RFC_KEY, RFC_KEYLEN, &b), RP_EINVAL);
    cr_assert_eq(rp_totp_uri("Raftport", "\xff", RFC_KEY, RFC_KEYLEN, &b), RP_EINVAL);
    cr_assert_eq(rp_totp_uri("Raftport", "alice", RFC_KEY, 8, &b), RP_EINVAL);
    cr_assert_eq(b.len, before);
    rp_buf_free(&b);
}

/* ---- TOTP: oathtool cross-check --------------------------------------------------- */

static bool have_oathtool(void)
{
    const char *path = getenv("PATH");
    if (path == NULL)
        path = "/usr/bin:/bin";
    char dirs[4096], file[4200];
    snprintf(dirs, sizeof dirs, "%s", path);
    for (char *save = NULL, *d = strtok_r(dirs, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        snprintf(file, sizeof file, "%s/oathtool", d);
        if (access(file, X_OK) == 0)
            return true;
    }
    return false;
}

/* The code oathtool computes for base32 @secret at @unix_s. */
static void oathtool_code(const char *secret, uint64_t unix_s, char out[7])
{
    char cmd[256];
    snprintf(cmd, sizeof cmd, "oathtool --totp --base32 --digits=6 --now=@%llu %s 2>&1",
             (unsigned long long)unix_s, secret);
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f);
    char line[64] = "";
    char *got = fgets(line, sizeof line, f);
    int status = pclose(f);
    cr_assert(got != NULL && status == 0, "%s: %s", cmd, line);
    line[strcspn(line, "\r\n")] = '\0';
    cr_assert_eq(strlen(line), 6, "oathtool printed '%s'", line);
    memcpy(out, line, 7);
}

Test(totp, agrees_with_oathtool)
{
    if (!have_oathtool())
        cr_skip_test("oathtool is not installed (Debian package oathtool); cross-check skipped");
    for (int i = 0; i < 8; i++) {
        uint8_t key[RP_TOTP_SECRET_BYTES];
        cr_assert_eq(rp_totp_generate_secret(key), 0);
        char b32[RP_BASE32_ENCODED_LEN(RP_TOTP_SECRET_BYTES)];
        cr_assert_eq(rp_base32_encode(key, sizeof key, b32, sizeof b32), 0);
        uint32_t r;
        cr_assert_eq(RAND_bytes((uint8_t *)&r, sizeof r), 1);
        uint64_t t = 1000000000ull + r % 2000000000u;
        char theirs[7], ours[7];
        oathtool_code(b32, t, theirs);
        cr_assert_eq(rp_totp_code(key, sizeof key, rp_totp_step(t * 1000), ours), 0);
        cr_assert_str_eq(ours, theirs, "secret %s at %llu", b32, (unsigned long long)t);
        uint64_t matched;
        cr_assert_eq(rp_totp_verify(key, sizeof key, theirs, t * 1000, 0, &matched), 0);
        cr_assert_eq(matched, t / 30);
    }
    char theirs[7];
    oathtool_code("GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ", 1111111109, theirs);
    cr_assert_str_eq(theirs, "081804");
}

/* ---- lockout ---------------------------------------------------------------------- */

static const uint64_t T0 = 1764000000000ull;

/* Field by field: the struct has padding that memcmp would compare. */
static bool same_state(const struct rp_lockout *a, const struct rp_lockout *b)
{
    return a->failures == b->failures && a->locked_until_ms == b->locked_until_ms &&
           a->last_failure_ms == b->last_failure_ms;
}
#define MIN_MS (60ull * 1000)

Test(lockout, five_failures_lock_for_thirty_minutes)
{
    struct rp_lockout s = {0};
    for (int i = 0; i < 4; i++) {
        cr_assert_not(rp_lockout_record_failure(&s, T0 + (uint64_t)i * 1000, NULL));
        cr_assert_eq(rp_lockout_is_locked(&s, T0 + (uint64_t)i * 1000), 0);
    }
    cr_assert_eq(s.failures, 4);
    uint64_t t5 = T0 + 4000;
    cr_assert(rp_lockout_record_failure(&s, t5, NULL), "the 5th failure locks");
    cr_assert_eq(s.locked_until_ms, t5 + 30 * MIN_MS);
    cr_assert_eq(rp_lockout_is_locked(&s, t5), 30 * MIN_MS);
    cr_assert_eq(rp_lockout_is_locked(&s, t5 + 10 * MIN_MS), 20 * MIN_MS);
}

Test(lockout, attempts_while_locked_are_not_counted)
{
    struct rp_lockout s = {0};
    for (int i = 0; i < 5; i++)
        rp_lockout_record_failure(&s, T0 + (uint64_t)i, NULL);
    struct rp_lockout locked = s;
    uint64_t t6 = T0 + 29 * MIN_MS;
    cr_assert(rp_lockout_is_locked(&s, t6) > 0, "the 6th attempt is refused");
    cr_assert_not(rp_lockout_record_failure(&s, t6, NULL));
    cr_assert(same_state(&s, &locked), "and changes nothing");
}

Test(lockout, unlocks_after_the_interval)
{
    struct rp_lockout s = {0};
    for (int i = 0; i < 5; i++)
        rp_lockout_record_failure(&s, T0, NULL);
    uint64_t until = T0 + 30 * MIN_MS;
    cr_assert_eq(rp_lockout_is_locked(&s, until - 1), 1);
    cr_assert_eq(rp_lockout_is_locked(&s, until), 0);
    /* A failure after the lock starts a new series rather than re-locking at once. */
    cr_assert_not(rp_lockout_record_failure(&s, until + 1, NULL));
    cr_assert_eq(s.failures, 1);
    cr_assert_eq(s.locked_until_ms, 0);
    cr_assert_eq(rp_lockout_is_locked(&s, until + 1), 0);
    for (int i = 0; i < 3; i++)
        cr_assert_not(rp_lockout_record_failure(&s, until + 2, NULL));
    cr_assert(rp_lockout_record_failure(&s, until + 3, NULL));
}

Test(lockout, success_resets)
{
    struct rp_lockout s = {0};
    for (int i = 0; i < 4; i++)
        rp_lockout_record_failure(&s, T0, NULL);
    rp_lockout_record_success(&s);
    cr_assert_eq(s.failures, 0);
    cr_assert_eq(s.locked_until_ms, 0);
    cr_assert_eq(s.last_failure_ms, 0);
    for (int i = 0; i < 4; i++)
        cr_assert_not(rp_lockout_record_failure(&s, T0 + 1, NULL));
    cr_assert(rp_lockout_record_failure(&s, T0 + 2, NULL));
}

Test(lockout, failures_older_than_the_interval_are_forgotten)
{
    struct rp_lockout s = {0};
    for (int i = 0; i < 4; i++)
        rp_lockout_record_failure(&s, T0, NULL);
    cr_assert_not(rp_lockout_record_failure(&s, T0 + 30 * MIN_MS, NULL));
    cr_assert_eq(s.failures, 1);
    /* A clock that stepped back does not forget them. */
    for (int i = 0; i < 3; i++)
        rp_lockout_record_failure(&s, T0 + 30 * MIN_MS, NULL);
    cr_assert(rp_lockout_record_failure(&s, T0 + 29 * MIN_MS, NULL));
}

Test(lockout, policy_is_configurable_and_checked)
{
    struct rp_lockout_policy pol = {.max_failures = 3, .lock_ms = 10 * MIN_MS};
    cr_assert_eq(rp_lockout_policy_check(&pol), 0);
    struct rp_lockout s = {0};
    cr_assert_not(rp_lockout_record_failure(&s, T0, &pol));
    cr_assert_not(rp_lockout_record_failure(&s, T0, &pol));
    cr_assert(rp_lockout_record_failure(&s, T0, &pol));
    cr_assert_eq(rp_lockout_is_locked(&s, T0), 10 * MIN_MS);
    cr_assert_eq(rp_lockout_is_locked(&s, T0 + 10 * MIN_MS), 0);

    pol = (struct rp_lockout_policy){.max_failures = 1, .lock_ms = 1000};
    rp_lockout_record_success(&s);
    cr_assert(rp_lockout_record_failure(&s, T0, &pol));
    cr_assert_eq(rp_lockout_is_locked(&s, T0), 1000);

    cr_assert_eq(rp_lockout_policy_check(&rp_lockout_default_policy), 0);
    cr_assert_eq(rp_lockout_default_policy.max_failures, 5);
    cr_assert_eq(rp_lockout_default_policy.lock_ms, 30 * MIN_MS);
    struct rp_lockout_policy bad[] = {
        {0, 30 * MIN_MS}, {1001, 30 * MIN_MS}, {5, 0}, {5, 999}, {5, 8ull * 24 * 60 * MIN_MS}};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(rp_lockout_policy_check(&bad[i]), RP_EINVAL, "case %zu", i);
    /* An unchecked zero policy is clamped, not a lock-on-nothing or divide. */
    struct rp_lockout_policy zero = {0, 0};
    rp_lockout_record_success(&s);
    cr_assert(rp_lockout_record_failure(&s, T0, &zero));
    cr_assert_eq(rp_lockout_is_locked(&s, T0), RP_LOCKOUT_MIN_LOCK_MS);
}

Test(lockout, msgpack_fields_round_trip_and_are_validated)
{
    struct rp_lockout s = {0}, back;
    for (int i = 0; i < 5; i++)
        rp_lockout_record_failure(&s, T0 + (uint64_t)i, NULL);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_lockout_encode(&s, &b), 0);
    memset(&back, 0xff, sizeof back);
    cr_assert_eq(rp_lockout_decode(b.data, b.len, &back), 0, "%s", rp_errmsg());
    cr_assert_eq(back.failures, 5);
    cr_assert_eq(back.locked_until_ms, s.locked_until_ms);
    cr_assert_eq(back.last_failure_ms, s.last_failure_ms);

    /* Embedded in a larger record, next to other fields. */
    rp_buf_reset(&b);
    msgpack_packer pk;
    rp_mp_packer_init(&pk, &b);
    msgpack_pack_map(&pk, 1 + RP_LOCKOUT_FIELDS);
    rp_mp_kv_str(&pk, "name", "alice");
    rp_lockout_pack_fields(&pk, &s);
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(b.data, b.len, &u), 0);
    cr_assert_eq(rp_lockout_decode_fields(&u.data, &back), 0, "%s", rp_errmsg());
    cr_assert(same_state(&back, &s));
    msgpack_unpacked_destroy(&u);

    /* Absent fields: no failures. */
    rp_buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "name", "bob");
    cr_assert_eq(rp_lockout_decode(b.data, b.len, &back), 0);
    cr_assert_eq(back.failures, 0);
    cr_assert_eq(back.locked_until_ms, 0);
    cr_assert_eq(back.last_failure_ms, 0);

    /* Wrong types and contradictions. */
    struct {
        uint64_t f, until, last;
        const char *why;
    } bad[] = {
        {0, T0, 0, "without failures"},  {0, 0, T0, "without failures"},
        {3, 0, 0, "no last_failure_ms"}, {5, T0, T0, "not after"},
        {5, T0 - 1, T0, "not after"},    {5, T0 + 8ull * 24 * 60 * MIN_MS, T0, "maximum"},
        {5000, 0, T0, "at most"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rp_buf_reset(&b);
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_u64(&pk, "login_failures", bad[i].f);
        rp_mp_kv_u64(&pk, "locked_until_ms", bad[i].until);
        rp_mp_kv_u64(&pk, "last_failure_ms", bad[i].last);
        back = s;
        cr_assert_eq(rp_lockout_decode(b.data, b.len, &back), RP_EINVAL, "case %zu", i);
        cr_assert(strstr(rp_errmsg(), bad[i].why) != NULL, "case %zu: %s", i, rp_errmsg());
        cr_assert(same_state(&back, &s), "unchanged on error");
    }
    rp_buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "login_failures", "5");
    cr_assert_eq(rp_lockout_decode(b.data, b.len, &back), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "login_failures") != NULL, "%s", rp_errmsg());
    rp_buf_reset(&b);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_i64(&pk, "locked_until_ms", -1);
    cr_assert_eq(rp_lockout_decode(b.data, b.len, &back), RP_EINVAL);
    rp_buf_reset(&b);
    msgpack_pack_array(&pk, 0);
    cr_assert_eq(rp_lockout_decode(b.data, b.len, &back), RP_EINVAL);
    static const uint8_t garbage[] = {0x83, 0xa1};
    cr_assert_eq(rp_lockout_decode(garbage, sizeof garbage, &back), RP_EINVAL);
    rp_buf_free(&b);
}
