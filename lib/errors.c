/* lib/errors.c: error names and the per-thread error message. */
#include "lib/errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static __thread char errmsg[1024];

static const struct {
    int code;
    const char *name;
} names[] = {
    {RP_OK, "ok"},
    {RP_ENOMEM, "out_of_memory"},
    {RP_EINVAL, "invalid"},
    {RP_EIO, "io_error"},
    {RP_ENOTFOUND, "not_found"},
    {RP_EEXISTS, "already_exists"},
    {RP_ECONFLICT, "conflict"},
    {RP_ETIMEDOUT, "timeout"},
    {RP_ENOTLEADER, "not_leader"},
    {RP_EUNKNOWN, "outcome_unknown"},
    {RP_EDENIED, "access_denied"},
    {RP_EPROTO, "protocol_error"},
    {RP_ENOSPC, "no_space"},
    {RP_EUNAVAILABLE, "unavailable"},
    {RP_ECLOSED, "closed"},
    {RP_ETOOBIG, "too_big"},
    {RP_EBUSY, "busy"},
    {RP_ETLS, "tls_error"},
    {RP_EAGAIN, "again"},
};

const char *rp_strerror(int code)
{
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (names[i].code == code)
            return names[i].name;
    }
    return "unknown_error";
}

int rp_error_from_name(const char *name)
{
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strcmp(names[i].name, name) == 0)
            return names[i].code;
    }
    return RP_EPROTO;
}

int rp_err(int code, const char *fmt, ...)
{
    /* Format into a local buffer first: callers often wrap the previous message,
     * rp_err(code, "context: %s", rp_errmsg()), which reads the buffer we write. */
    char tmp[sizeof errmsg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    memcpy(errmsg, tmp, sizeof errmsg);
    return code;
}

const char *rp_errmsg(void)
{
    return errmsg;
}

void rp_err_clear(void)
{
    errmsg[0] = '\0';
}
