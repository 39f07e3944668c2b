/* lib/version.h: this build's version and the compatibility rules between versions.
 *
 * Versions are "MAJOR.MINOR.PATCH" (an optional "-suffix" is kept for display and
 * ignored by the rules). The rules follow Teleport's promise:
 *   - patch and minor versions of one major are always compatible;
 *   - a server serves clients of its own major and of the major just before it, and
 *     refuses clients of a newer major (or older than one major behind);
 *   - proxies and agents refuse an auth server on an older major than their own
 *     (unless started with --skip-version-check).
 * RAFTPORT_VERSION_OVERRIDE in the environment replaces the version a process
 * announces (for upgrade drills and the version tests; docs/version-compatibility.md). */
#ifndef RP_VERSION_H
#define RP_VERSION_H

#include <stdbool.h>

#define RP_VERSION "0.1.0"

struct rp_version {
    unsigned major, minor, patch;
};

/* Parses "MAJOR.MINOR.PATCH[-suffix]" (a leading "v" is allowed). RP_EINVAL naming the
 * text and what was expected. */
int rp_version_parse(const char *s, struct rp_version *out);
/* The version this process announces: RP_VERSION, or RAFTPORT_VERSION_OVERRIDE when it
 * is set and parses (otherwise RP_VERSION, with a warning on stderr once). */
const char *rp_version_self(void);
/* The oldest client version a server of version @server serves: "MAJOR-1.0.0" (or
 * "0.0.0" for major 0) into @out (>= 32 bytes). */
void rp_version_min_client(const char *server, char *out, unsigned outlen);

enum rp_version_verdict {
    RP_VERSION_OK = 0,
    RP_VERSION_TOO_OLD,  /* the peer is more than one major behind */
    RP_VERSION_TOO_NEW,  /* the peer is on a newer major */
    RP_VERSION_UNPARSED, /* the peer's version did not parse */
};
/* How a server of version @server judges a client of version @client. */
enum rp_version_verdict rp_version_check_client(const char *server, const char *client);
/* How a proxy or agent of version @self judges an auth server of version @auth: an
 * older major is RP_VERSION_TOO_OLD; a newer major than self+1 is RP_VERSION_TOO_NEW. */
enum rp_version_verdict rp_version_check_auth(const char *self, const char *auth);
/* A sentence for a verdict (for logs and errors), naming both versions, into @out. */
void rp_version_explain(enum rp_version_verdict v, const char *ours, const char *theirs, char *out,
                        unsigned outlen);

#endif
