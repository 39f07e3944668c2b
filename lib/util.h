/* lib/util.h: small helpers shared by every layer: durations, time, files, random ids. */
#ifndef RP_UTIL_H
#define RP_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Parses a Go-style duration: "250ms", "30s", "5m", "1h30m", "2h"; a bare integer is
 * seconds. 0 and negative values are refused. RP_EINVAL with a message otherwise. */
int rp_parse_duration_ms(const char *s, uint64_t *ms);
/* Formats @ms as "1h30m0s"/"250ms" into @out. */
void rp_format_duration(uint64_t ms, char *out, size_t outlen);

uint64_t rp_now_ms(void);  /* wall clock, ms since the epoch */
uint64_t rp_mono_ms(void); /* monotonic clock, ms */
/* "2026-11-25T11:40:00Z" (UTC) of @ms into @out (>= 32 bytes). */
void rp_format_time(uint64_t ms, char *out, size_t outlen);

/* @n random bytes from the OS CSPRNG as lower-case hex into @out (>= 2n+1). */
int rp_random_hex(char *out, size_t n);

/* Non-cryptographic random numbers for jitter and sampling: a splitmix64 stream
 * seeded from getrandom the first time a process draws, and again in a child
 * after fork, so that no two processes (and no two runs) back off on the same
 * schedule. Thread-safe. Never use it for secrets: rp_random_hex is for those. */
uint64_t rp_rand_u64(void);
/* Uniform in [0, @n) (0 when @n is 0). */
uint64_t rp_rand_below(uint64_t n);
/* @base plus a uniform jitter in [0, @base / 2]: a backoff delay in ms. */
uint64_t rp_jitter_ms(uint64_t base);

/* A random (version 4) UUID, 36 characters in groups of 8-4-4-4-12 lower-case hex
 * digits (the third group starts with 4, the fourth with 8, 9, a or b), into @out, from
 * the OS CSPRNG. RP_EIO if it gives no randomness. */
int rp_uuid_v4(char out[37]);

/* mkdir -p with @mode for each created component. */
int rp_mkdir_p(const char *path, unsigned mode);
/* Writes @n bytes to @path atomically (temp file in the same dir, fsync, rename) with @mode. */
int rp_write_file(const char *path, const void *p, size_t n, unsigned mode);
/* Reads a whole file (at most @max bytes) into a malloc'd NUL-terminated buffer. */
int rp_read_file(const char *path, size_t max, char **out, size_t *len);
bool rp_file_exists(const char *path);
/* Free bytes available to unprivileged writers on the file system holding @path. */
int rp_disk_free(const char *path, uint64_t *free_bytes, uint64_t *total_bytes);

/* Checks "host:port": host an IPv4 dotted quad, [IPv6] or a DNS name; port 1..65535. */
int rp_check_hostport(const char *s);

#endif
