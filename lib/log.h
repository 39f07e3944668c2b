/* lib/log.h: levelled logging to stderr.
 *
 * One line per event: "2026-11-25T11:40:00.123Z INFO  [raft] message". Daemons
 * log an error once, where it is handled. Secrets are never passed here. */
#ifndef RP_LOG_H
#define RP_LOG_H

enum rp_log_level { RP_LOG_DEBUG, RP_LOG_INFO, RP_LOG_WARN, RP_LOG_ERROR };

/* Sets the minimum level printed (default INFO). Thread-safe. */
void rp_log_set_level(enum rp_log_level level);
/* Parses "debug", "info", "warn"/"warning", "error" (any case); returns -1 if unknown. */
int rp_log_level_parse(const char *s);
/* Tags every following line of this process with @name (e.g. the node name). */
void rp_log_set_prefix(const char *name);

void rp_log(enum rp_log_level level, const char *component, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define rp_debug(c, ...) rp_log(RP_LOG_DEBUG, c, __VA_ARGS__)
#define rp_info(c, ...) rp_log(RP_LOG_INFO, c, __VA_ARGS__)
#define rp_warn(c, ...) rp_log(RP_LOG_WARN, c, __VA_ARGS__)
#define rp_error(c, ...) rp_log(RP_LOG_ERROR, c, __VA_ARGS__)

#endif
