/* lib/version.c: see version.h. */
#include "lib/version.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"

static int parse_part(const char **p, unsigned *out)
{
    const char *s = *p;
    if (*s < '0' || *s > '9')
        return -1;
    unsigned long v = 0;
    while (*s >= '0' && *s <= '9') {
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > 1000000)
            return -1;
        s++;
    }
    *out = (unsigned)v;
    *p = s;
    return 0;
}

int rp_version_parse(const char *s, struct rp_version *out)
{
    if (s == NULL)
        return rp_err(RP_EINVAL, "no version given: expected MAJOR.MINOR.PATCH");
    const char *p = s;
    if (*p == 'v')
        p++;
    struct rp_version v;
    if (parse_part(&p, &v.major) != 0 || *p++ != '.' || parse_part(&p, &v.minor) != 0 ||
        *p++ != '.' || parse_part(&p, &v.patch) != 0 || (*p != '\0' && *p != '-' && *p != '+'))
        return rp_err(RP_EINVAL, "version '%.40s' is not MAJOR.MINOR.PATCH", s);
    *out = v;
    return 0;
}

static const char *self_version;
static pthread_once_t self_once = PTHREAD_ONCE_INIT;

static void pick_self(void)
{
    const char *o = getenv("RAFTPORT_VERSION_OVERRIDE");
    struct rp_version v;
    self_version = RP_VERSION;
    if (o == NULL || *o == '\0')
        return;
    if (rp_version_parse(o, &v) == 0 && strlen(o) < 64) {
        self_version = strdup(o);
        if (self_version == NULL)
            self_version = RP_VERSION;
    } else {
        fprintf(stderr,
                "warning: RAFTPORT_VERSION_OVERRIDE='%.40s' is not MAJOR.MINOR.PATCH; "
                "announcing %s\n",
                o, RP_VERSION);
    }
}

const char *rp_version_self(void)
{
    pthread_once(&self_once, pick_self);
    return self_version;
}

void rp_version_min_client(const char *server, char *out, unsigned outlen)
{
    struct rp_version v;
    if (rp_version_parse(server, &v) != 0 || v.major == 0)
        snprintf(out, outlen, "0.0.0");
    else
        snprintf(out, outlen, "%u.0.0", v.major - 1);
}

enum rp_version_verdict rp_version_check_client(const char *server, const char *client)
{
    struct rp_version s, c;
    if (rp_version_parse(server, &s) != 0 || rp_version_parse(client, &c) != 0)
        return RP_VERSION_UNPARSED;
    if (c.major > s.major)
        return RP_VERSION_TOO_NEW;
    if (c.major + 1 < s.major)
        return RP_VERSION_TOO_OLD;
    return RP_VERSION_OK;
}

enum rp_version_verdict rp_version_check_auth(const char *self, const char *auth)
{
    struct rp_version s, a;
    if (rp_version_parse(self, &s) != 0 || rp_version_parse(auth, &a) != 0)
        return RP_VERSION_UNPARSED;
    if (a.major < s.major)
        return RP_VERSION_TOO_OLD;
    if (a.major > s.major + 1)
        return RP_VERSION_TOO_NEW;
    return RP_VERSION_OK;
}

void rp_version_explain(enum rp_version_verdict v, const char *ours, const char *theirs, char *out,
                        unsigned outlen)
{
    switch (v) {
    case RP_VERSION_OK:
        snprintf(out, outlen, "versions %s and %s are compatible", ours, theirs);
        break;
    case RP_VERSION_TOO_OLD:
        snprintf(out, outlen, "version %s is too old for %s: upgrade it", theirs, ours);
        break;
    case RP_VERSION_TOO_NEW:
        snprintf(out, outlen, "version %s is on a newer major than %s: upgrade %s first", theirs,
                 ours, ours);
        break;
    default:
        snprintf(out, outlen, "version '%.40s' is not MAJOR.MINOR.PATCH", theirs ? theirs : "");
        break;
    }
}
