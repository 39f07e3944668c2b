/* lib/password.h: the password policy and argon2id password hashes.
 *
 * Hashes are libargon2's standard encoded strings
 * ($argon2id$v=19$m=65536,t=1,p=1$<salt>$<hash>, salt and hash in unpadded
 * base64), so they can be checked by any argon2 implementation and carry their
 * own parameters: raising the defaults later leaves old hashes verifiable, and
 * rp_password_needs_rehash() says when to replace one after a successful login.
 *
 * Passwords are taken as (pointer, length) so that embedded NULs are seen and
 * refused. No function here copies, logs or puts a password into an error
 * message; the caller owns the password's buffer and wipes it
 * (OPENSSL_cleanse) when done. */
#ifndef RP_PASSWORD_H
#define RP_PASSWORD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Policy (Teleport's MinPasswordLength = 12). The minimum counts Unicode code
 * points, so "çççççççççççç" (24 bytes) is 12 characters; the maximum counts bytes
 * and bounds the work done on a request. */
#define RP_PASSWORD_MIN_CHARS 12
#define RP_PASSWORD_MAX_BYTES 1024

/* The argon2id cost of new hashes; see password.c for how they were chosen. */
#define RP_PASSWORD_M_KIB 65536u /* memory, KiB (64 MiB) */
#define RP_PASSWORD_T_COST 1u    /* passes over the memory */
#define RP_PASSWORD_P_LANES 1u   /* lanes (one thread) */
#define RP_PASSWORD_SALT_BYTES 16
#define RP_PASSWORD_HASH_BYTES 32

/* Bounds a stored hash's parameters must lie within before it is computed, so a
 * tampered or foreign hash cannot make verification take minutes or gigabytes.
 * The upper bounds allow raising the defaults about 4x; m_kib * t_cost is capped too. */
#define RP_PASSWORD_MIN_M_KIB 8192u   /* 8 MiB */
#define RP_PASSWORD_MAX_M_KIB 262144u /* 256 MiB */
#define RP_PASSWORD_MAX_T_COST 8u
#define RP_PASSWORD_MAX_P_LANES 8u
#define RP_PASSWORD_MAX_COST_KIB 524288u /* m_kib * t_cost: 512 MiB-passes */

/* Large enough for any encoded hash within the bounds above. */
#define RP_PASSWORD_ENCODED_MAX 192

struct rp_password_params {
    uint32_t m_kib;
    uint32_t t_cost;
    uint32_t p_lanes;
};

/* Counts the code points of @n bytes at @s if they are well-formed UTF-8
 * (no overlong forms, no surrogates, nothing above U+10FFFF) into *@chars.
 * Returns 0, or RP_EINVAL naming the offset of the first bad byte. */
int rp_utf8_count(const char *s, size_t n, size_t *chars);

/* Checks a new password against the policy: valid UTF-8, no NUL, at least
 * RP_PASSWORD_MIN_CHARS code points, at most RP_PASSWORD_MAX_BYTES bytes.
 * Returns 0, or RP_EINVAL with a message such as
 * "password is 9 characters; at least 12 are required". */
int rp_password_check_policy(const char *pw, size_t n);

/* Checks @pw against the policy, then hashes it with argon2id, the default
 * parameters and a fresh random 16-byte salt into @out (NUL-terminated, at most
 * RP_PASSWORD_ENCODED_MAX bytes including the NUL). Returns 0, RP_EINVAL (policy,
 * message says what was wrong), RP_ETOOBIG (@outlen too small), RP_EIO (no
 * randomness) or RP_ENOMEM (argon2 could not allocate its memory). */
int rp_password_hash(const char *pw, size_t n, char *out, size_t outlen);

/* As rp_password_hash with explicit parameters, which must lie within the bounds
 * above (RP_EINVAL otherwise). For tests and for measuring new defaults. */
int rp_password_hash_params(const char *pw, size_t n, const struct rp_password_params *params,
                            char *out, size_t outlen);

/* Checks @pw against the stored hash @encoded (NUL-terminated). The hash's
 * parameters are checked against the bounds before any work is done, and the
 * digests are compared in constant time. The policy is not applied (it may have
 * changed since the password was set), but passwords over RP_PASSWORD_MAX_BYTES
 * or holding NUL are refused without hashing.
 *
 * @encoded may be NULL (the user does not exist): a hash with the default
 * parameters is still computed and RP_EDENIED returned, so that the time taken
 * does not tell which user names exist. (The auth service instead passes a dummy
 * hash made at start, so that the parameters match its own.)
 *
 * Each call maps its argon2 memory (m KiB) and unmaps it before returning, and
 * computes every lane on the calling thread: a caller that bounds the number of
 * concurrent calls bounds both memory and cores (lib/hashpool.h).
 *
 * Returns 0 when the password matches; RP_EDENIED when it does not (or is
 * refused by the size/NUL check); RP_EINVAL when @encoded is not an argon2id
 * v=19 hash within bounds (message says which part); RP_ENOMEM. */
int rp_password_verify(const char *pw, size_t n, const char *encoded);

/* Parses the parameters of @encoded without computing anything. Same RP_EINVAL
 * cases as rp_password_verify. */
int rp_password_parse_params(const char *encoded, struct rp_password_params *params);

/* True if @encoded is well-formed but was made with parameters other than the
 * current defaults or a salt/hash length other than 16/32 bytes, so that it should
 * be replaced by a fresh rp_password_hash() after a successful verification.
 * False for malformed hashes (rp_password_verify refuses those anyway). */
bool rp_password_needs_rehash(const char *encoded);

#endif
