/* lib/log.c: levelled log lines on stderr, one write(2) per line so that
 * lines from several threads never interleave. */
#include "lib/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static atomic_int min_level = RP_LOG_INFO;
static char prefix[64];

void rp_log_set_level(enum rp_log_level level)
{
    atomic_store(&min_level, (int)level);
}

int rp_log_level_parse(const char *s)
{
    if (strcasecmp(s, "debug") == 0)
        return RP_LOG_DEBUG;
    if (strcasecmp(s, "info") == 0)
        return RP_LOG_INFO;
    if (strcasecmp(s, "warn") == 0 || strcasecmp(s, "warning") == 0)
        return RP_LOG_WARN;
    if (strcasecmp(s, "error") == 0)
        return RP_LOG_ERROR;
    return -1;
}

void rp_log_set_prefix(const char *name)
{
    snprintf(prefix, sizeof prefix, "%s", name ? name : "");
}

static const char *level_names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void rp_log(enum rp_log_level level, const char *component, const char *fmt, ...)
{
    if ((int)level < atomic_load(&min_level))
        return;
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof line, "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s%s[%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), level_names[level], prefix, prefix[0] ? " " : "",
                     component);
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line)
        n += vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line - 1)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    /* Best effort: a log line that cannot be written is dropped. */
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
