/* lib/password.c: the password policy and argon2id hashes (libargon2).
 *
 * Parameters. An auth server verifies a password on every local login, so the
 * cost is paid by the server per attempt and by an attacker per guess. We want a
 * hash that takes roughly 50-100 ms on one core, with as much memory as that
 * allows (memory is what makes GPU/ASIC guessing expensive), and one lane
 * (p=1) so that concurrent logins do not compete for cores within one hash.
 *
 * Measured on the development machine (2 vCPU AMD EPYC, Debian 12 libargon2
 * 0~20171227, through rp_password_hash_params, 15 hashes per setting, four
 * runs, while a long test run kept the load average at 2-2.5; the spread of the
 * medians is that load, the minimum is close to an idle core):
 *
 *     m=19 MiB t=2  median 23-26 ms  (min 21)  OWASP's low-memory argon2id choice
 *     m=46 MiB t=1  median 56-83 ms  (min 53)  OWASP's first argon2id choice
 *     m=64 MiB t=1  median 84-124 ms (min 80)  <- chosen; 84 ms in the quietest run
 *     m=64 MiB t=2  median 133-172 ms (min 121)
 *     m=64 MiB t=3  median 180-211 ms (min 167) RFC 9106's second choice (with p=4)
 *
 * m=64 MiB, t=1, p=1 is the most memory within the 100 ms budget (80-85 ms on a
 * free core; a busy server or a slower CPU may want m=46 MiB). Memory is the
 * figure to watch in operation: each login holds 64 MiB while it hashes, so N
 * concurrent logins need N * 64 MiB; the caller bounds how many run at once.
 * The encoded string carries the parameters, so raising them later keeps old
 * hashes valid (rp_password_needs_rehash tells when to upgrade one).
 *
 * Verification parses the stored string itself, strictly, and checks the
 * parameters against the bounds in password.h before computing anything,
 * then compares digests with CRYPTO_memcmp.
 *
 * Memory. argon2 allocates its m KiB on every call and frees it at the end. We
 * give it an allocator of our own that maps the memory directly and unmaps it
 * when done, so it goes back to the kernel at once whatever its size: through
 * malloc, a block under glibc's mmap threshold (which adapts upwards to 32 MiB)
 * could stay in an arena and keep the process's RSS up after the hash. All lanes
 * are computed on the calling thread (threads = 1): the caller's bound on
 * concurrent hashes is then also the bound on the cores they use. */
#include "lib/password.h"

#include <argon2.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <string.h>
#include <sys/mman.h>

#include "lib/buf.h"
#include "lib/errors.h"

#define SALT_MIN_BYTES 8 /* argon2's own minimum */
#define SALT_MAX_BYTES 32
#define HASH_MIN_BYTES 16
#define HASH_MAX_BYTES 64

/* ---- UTF-8 and policy --------------------------------------------------- */

int rp_utf8_count(const char *s, size_t n, size_t *chars)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, count = 0;
    while (i < n) {
        unsigned char c = p[i];
        size_t len;
        uint32_t cp, min;
        if (c < 0x80) {
            i++, count++;
            continue;
        } else if ((c & 0xE0) == 0xC0) {
            len = 2, cp = c & 0x1F, min = 0x80;
        } else if ((c & 0xF0) == 0xE0) {
            len = 3, cp = c & 0x0F, min = 0x800;
        } else if ((c & 0xF8) == 0xF0) {
            len = 4, cp = c & 0x07, min = 0x10000;
        } else {
            return rp_err(RP_EINVAL, "not valid UTF-8: byte %zu (0x%02x) cannot start a character",
                          i, c);
        }
        if (n - i < len)
            return rp_err(RP_EINVAL, "not valid UTF-8: character at byte %zu is truncated", i);
        for (size_t k = 1; k < len; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return rp_err(RP_EINVAL,
                              "not valid UTF-8: byte %zu should continue the character at byte %zu",
                              i + k, i);
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if (cp < min)
            return rp_err(RP_EINVAL, "not valid UTF-8: overlong encoding at byte %zu", i);
        if (cp >= 0xD800 && cp <= 0xDFFF)
            return rp_err(RP_EINVAL, "not valid UTF-8: UTF-16 surrogate at byte %zu", i);
        if (cp > 0x10FFFF)
            return rp_err(RP_EINVAL, "not valid UTF-8: code point above U+10FFFF at byte %zu", i);
        i += len, count++;
    }
    *chars = count;
    return 0;
}

/* The checks that also apply on verification: bounded size and no NUL. */
static int check_size_and_nul(const char *pw, size_t n)
{
    if (pw == NULL && n != 0)
        return rp_err(RP_EINVAL, "password is NULL but its length is %zu", n);
    if (n > RP_PASSWORD_MAX_BYTES)
        return rp_err(RP_EINVAL, "password is %zu bytes; at most %d are allowed", n,
                      RP_PASSWORD_MAX_BYTES);
    if (n > 0 && memchr(pw, '\0', n) != NULL)
        return rp_err(RP_EINVAL, "password contains a NUL character; it must not");
    return 0;
}

int rp_password_check_policy(const char *pw, size_t n)
{
    int rv = check_size_and_nul(pw, n);
    if (rv != 0)
        return rv;
    size_t chars;
    if (rp_utf8_count(pw, n, &chars) != 0)
        return rp_err(RP_EINVAL, "password is %s", rp_errmsg());
    if (chars < RP_PASSWORD_MIN_CHARS)
        return rp_err(RP_EINVAL, "password is %zu character%s; at least %d are required", chars,
                      chars == 1 ? "" : "s", RP_PASSWORD_MIN_CHARS);
    return 0;
}

/* ---- parameters and the encoded string ---------------------------------- */

static int check_params(const struct rp_password_params *pp)
{
    if (pp->m_kib < RP_PASSWORD_MIN_M_KIB || pp->m_kib > RP_PASSWORD_MAX_M_KIB)
        return rp_err(RP_EINVAL, "argon2 memory m=%u KiB is outside %u..%u", pp->m_kib,
                      RP_PASSWORD_MIN_M_KIB, RP_PASSWORD_MAX_M_KIB);
    if (pp->t_cost < 1 || pp->t_cost > RP_PASSWORD_MAX_T_COST)
        return rp_err(RP_EINVAL, "argon2 passes t=%u is outside 1..%u", pp->t_cost,
                      RP_PASSWORD_MAX_T_COST);
    if (pp->p_lanes < 1 || pp->p_lanes > RP_PASSWORD_MAX_P_LANES)
        return rp_err(RP_EINVAL, "argon2 lanes p=%u is outside 1..%u", pp->p_lanes,
                      RP_PASSWORD_MAX_P_LANES);
    if ((uint64_t)pp->m_kib * pp->t_cost > RP_PASSWORD_MAX_COST_KIB)
        return rp_err(RP_EINVAL, "argon2 cost m*t = %u KiB * %u exceeds %u KiB", pp->m_kib,
                      pp->t_cost, RP_PASSWORD_MAX_COST_KIB);
    return 0;
}

/* Consumes the literal @lit at the cursor. */
static bool take_lit(struct rp_rd *r, const char *lit)
{
    size_t n = strlen(lit);
    if (rp_rd_left(r) < n || memcmp(r->p + r->off, lit, n) != 0)
        return false;
    r->off += n;
    return true;
}

/* Consumes a decimal number without sign or leading zeros that fits 32 bits. */
static bool take_u32(struct rp_rd *r, uint32_t *v)
{
    uint64_t acc = 0;
    size_t start = r->off;
    while (r->off < r->len && r->p[r->off] >= '0' && r->p[r->off] <= '9') {
        acc = acc * 10 + (uint64_t)(r->p[r->off] - '0');
        if (acc > UINT32_MAX)
            return false;
        r->off++;
    }
    size_t digits = r->off - start;
    if (digits == 0 || (digits > 1 && r->p[start] == '0'))
        return false;
    *v = (uint32_t)acc;
    return true;
}

static int b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

/* Decodes unpadded base64 up to the next '$' or the end, canonically (unused
 * trailing bits must be zero), into at most @cap bytes. */
static bool take_b64(struct rp_rd *r, uint8_t *out, size_t cap, size_t *outlen)
{
    uint32_t acc = 0;
    unsigned bits = 0;
    size_t n = 0;
    while (r->off < r->len && r->p[r->off] != '$') {
        int v = b64_value(r->p[r->off]);
        if (v < 0)
            return false;
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n == cap)
                return false;
            out[n++] = (uint8_t)(acc >> bits);
        }
        acc &= (1u << bits) - 1;
        r->off++;
    }
    /* 6 leftover bits means a lone character: no whole byte, never canonical. */
    if (bits >= 6 || acc != 0)
        return false;
    *outlen = n;
    return true;
}

struct parsed_hash {
    struct rp_password_params params;
    uint8_t salt[SALT_MAX_BYTES];
    size_t salt_len;
    uint8_t hash[HASH_MAX_BYTES];
    size_t hash_len;
};

static int parse_encoded(const char *encoded, struct parsed_hash *ph)
{
    if (encoded == NULL)
        return rp_err(RP_EINVAL, "password hash is missing");
    size_t len = strnlen(encoded, RP_PASSWORD_ENCODED_MAX);
    if (len == RP_PASSWORD_ENCODED_MAX)
        return rp_err(RP_EINVAL, "password hash is longer than %d bytes",
                      RP_PASSWORD_ENCODED_MAX - 1);
    struct rp_rd r;
    rp_rd_init(&r, encoded, len);
    if (!take_lit(&r, "$argon2id$"))
        return rp_err(RP_EINVAL, "password hash is not an argon2id hash; expected it to start "
                                 "with $argon2id$");
    if (!take_lit(&r, "v=19$"))
        return rp_err(RP_EINVAL,
                      "password hash is not argon2 version 19; expected $argon2id$v=19$");
    struct rp_password_params *pp = &ph->params;
    if (!take_lit(&r, "m=") || !take_u32(&r, &pp->m_kib) || !take_lit(&r, ",t=") ||
        !take_u32(&r, &pp->t_cost) || !take_lit(&r, ",p=") || !take_u32(&r, &pp->p_lanes) ||
        !take_lit(&r, "$"))
        return rp_err(RP_EINVAL, "password hash parameters are malformed; expected "
                                 "m=<KiB>,t=<passes>,p=<lanes>$ after $argon2id$v=19$");
    int rv = check_params(pp);
    if (rv != 0)
        return rp_err(rv, "password hash refused: %s", rp_errmsg());
    if (!take_b64(&r, ph->salt, sizeof ph->salt, &ph->salt_len) || !take_lit(&r, "$"))
        return rp_err(RP_EINVAL,
                      "password hash salt is not canonical unpadded base64 of at most "
                      "%d bytes followed by $",
                      SALT_MAX_BYTES);
    if (ph->salt_len < SALT_MIN_BYTES)
        return rp_err(RP_EINVAL, "password hash salt is %zu bytes; at least %d are required",
                      ph->salt_len, SALT_MIN_BYTES);
    if (!take_b64(&r, ph->hash, sizeof ph->hash, &ph->hash_len) || rp_rd_left(&r) != 0)
        return rp_err(RP_EINVAL,
                      "password hash digest is not canonical unpadded base64 of at "
                      "most %d bytes ending the string",
                      HASH_MAX_BYTES);
    if (ph->hash_len < HASH_MIN_BYTES)
        return rp_err(RP_EINVAL, "password hash digest is %zu bytes; at least %d are required",
                      ph->hash_len, HASH_MIN_BYTES);
    return 0;
}

int rp_password_parse_params(const char *encoded, struct rp_password_params *params)
{
    struct parsed_hash ph;
    int rv = parse_encoded(encoded, &ph);
    if (rv == 0)
        *params = ph.params;
    return rv;
}

bool rp_password_needs_rehash(const char *encoded)
{
    struct parsed_hash ph;
    if (parse_encoded(encoded, &ph) != 0)
        return false;
    return ph.params.m_kib != RP_PASSWORD_M_KIB || ph.params.t_cost != RP_PASSWORD_T_COST ||
           ph.params.p_lanes != RP_PASSWORD_P_LANES || ph.salt_len != RP_PASSWORD_SALT_BYTES ||
           ph.hash_len != RP_PASSWORD_HASH_BYTES;
}

static int argon2_failure(int code, const char *what)
{
    if (code == ARGON2_MEMORY_ALLOCATION_ERROR)
        return rp_err(RP_ENOMEM, "%s: argon2 could not allocate its memory", what);
    return rp_err(RP_EINVAL, "%s: argon2: %s", what, argon2_error_message(code));
}

/* ---- hash and verify ---------------------------------------------------- */

static int map_memory(uint8_t **memory, size_t bytes)
{
    void *m = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return ARGON2_MEMORY_ALLOCATION_ERROR;
    *memory = m;
    return ARGON2_OK;
}

static void unmap_memory(uint8_t *memory, size_t bytes)
{
    munmap(memory, bytes);
}

/* The raw argon2id digest of @pw under @pp and @salt, into @out (@outlen bytes). */
static int argon2id_raw(const struct rp_password_params *pp, const char *pw, size_t n,
                        const uint8_t *salt, size_t saltlen, uint8_t *out, size_t outlen,
                        const char *what)
{
    argon2_context ctx = {
        .out = out,
        .outlen = (uint32_t)outlen,
        .pwd = (uint8_t *)pw,
        .pwdlen = (uint32_t)n,
        .salt = (uint8_t *)salt,
        .saltlen = (uint32_t)saltlen,
        .t_cost = pp->t_cost,
        .m_cost = pp->m_kib,
        .lanes = pp->p_lanes,
        .threads = 1,
        .version = ARGON2_VERSION_13,
        .allocate_cbk = map_memory,
        .free_cbk = unmap_memory,
        .flags = ARGON2_DEFAULT_FLAGS,
    };
    int code = argon2id_ctx(&ctx);
    if (code != ARGON2_OK)
        return argon2_failure(code, what);
    return 0;
}

static void b64_append(char *out, size_t *pos, const uint8_t *p, size_t n)
{
    static const char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = (acc << 8) | p[i];
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out[(*pos)++] = digits[(acc >> bits) & 0x3F];
        }
    }
    if (bits > 0)
        out[(*pos)++] = digits[(acc << (6 - bits)) & 0x3F];
}

int rp_password_hash_params(const char *pw, size_t n, const struct rp_password_params *params,
                            char *out, size_t outlen)
{
    int rv = rp_password_check_policy(pw, n);
    if (rv != 0)
        return rv;
    rv = check_params(params);
    if (rv != 0)
        return rv;
    size_t need = argon2_encodedlen(params->t_cost, params->m_kib, params->p_lanes,
                                    RP_PASSWORD_SALT_BYTES, RP_PASSWORD_HASH_BYTES, Argon2_id);
    if (outlen < need)
        return rp_err(RP_ETOOBIG, "password hash needs %zu bytes; the buffer holds %zu", need,
                      outlen);
    uint8_t salt[RP_PASSWORD_SALT_BYTES], digest[RP_PASSWORD_HASH_BYTES];
    if (RAND_bytes(salt, sizeof salt) != 1)
        return rp_err(RP_EIO, "no randomness for the password salt (RAND_bytes failed)");
    rv = argon2id_raw(params, pw, n, salt, sizeof salt, digest, sizeof digest, "hashing password");
    if (rv != 0) {
        OPENSSL_cleanse(digest, sizeof digest);
        return rv;
    }
    /* libargon2's encoding: $argon2id$v=19$m=..,t=..,p=..$salt$hash, unpadded base64;
     * argon2_encodedlen() above counted the same characters and the NUL. */
    int head = snprintf(out, outlen, "$argon2id$v=19$m=%u,t=%u,p=%u$", params->m_kib,
                        params->t_cost, params->p_lanes);
    size_t pos = (size_t)head;
    b64_append(out, &pos, salt, sizeof salt);
    out[pos++] = '$';
    b64_append(out, &pos, digest, sizeof digest);
    out[pos] = '\0';
    OPENSSL_cleanse(digest, sizeof digest);
    return 0;
}

int rp_password_hash(const char *pw, size_t n, char *out, size_t outlen)
{
    const struct rp_password_params def = {RP_PASSWORD_M_KIB, RP_PASSWORD_T_COST,
                                           RP_PASSWORD_P_LANES};
    return rp_password_hash_params(pw, n, &def, out, outlen);
}

int rp_password_verify(const char *pw, size_t n, const char *encoded)
{
    struct parsed_hash ph;
    int rv;
    if (encoded == NULL) {
        /* Unknown user: spend the same time as for a real one, then refuse. */
        memset(&ph, 0, sizeof ph);
        ph.params =
            (struct rp_password_params){RP_PASSWORD_M_KIB, RP_PASSWORD_T_COST, RP_PASSWORD_P_LANES};
        ph.salt_len = RP_PASSWORD_SALT_BYTES;
        ph.hash_len = RP_PASSWORD_HASH_BYTES;
    } else {
        rv = parse_encoded(encoded, &ph);
        if (rv != 0)
            return rv;
    }
    if (check_size_and_nul(pw, n) != 0)
        return rp_err(RP_EDENIED, "password refused: %s", rp_errmsg());

    uint8_t got[HASH_MAX_BYTES];
    rv = argon2id_raw(&ph.params, pw, n, ph.salt, ph.salt_len, got, ph.hash_len,
                      "verifying password");
    if (rv != 0) {
        OPENSSL_cleanse(got, sizeof got);
        return rv;
    }
    int differ = CRYPTO_memcmp(got, ph.hash, ph.hash_len);
    OPENSSL_cleanse(got, sizeof got);
    OPENSSL_cleanse(ph.hash, sizeof ph.hash);
    if (encoded == NULL || differ != 0)
        return rp_err(RP_EDENIED, "password does not match");
    return 0;
}
