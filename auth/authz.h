/* auth/authz.h: the auth API's method table and who may call what.
 *
 * Every method is one row of one table (auth/dispatch.c): its handler, the
 * permission it needs, how it is routed in the Raft group, and the audit event a
 * successful call leaves. Dispatch, authorization, forwarding and the method list
 * in auth/auth.h all follow the table (tests/test_auth_methods.c checks the last).
 *
 * A permission never names a string the caller chose. A caller is anonymous (no
 * client certificate), a system identity (its role from the certificate's system
 * role extension, lib/tls.h), or a user, whose roles' rules are checked for a
 * (resource, verb) pair, deny rules first. Depends on lib/ and auth/rbac.h only, so
 * the decision can be tested without a server. */
#ifndef RP_AUTH_AUTHZ_H
#define RP_AUTH_AUTHZ_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>

#include "lib/buf.h"
#include "lib/tls.h"

struct auth_req;
struct rbac_set;

/* A bit per system role, for auth_method.system. */
#define AUTH_SYS(role) (1u << (role))
#define AUTH_SYS_ADMINS (AUTH_SYS(RP_SYS_ADMIN) | AUTH_SYS(RP_SYS_AUTH))
#define AUTH_SYS_ALL                                                                               \
    (AUTH_SYS(RP_SYS_ADMIN) | AUTH_SYS(RP_SYS_AUTH) | AUTH_SYS(RP_SYS_NODE) |                      \
     AUTH_SYS(RP_SYS_PROXY))

/* auth_method.resource for methods whose resource is the kind the request names
 * (get, list, put, delete...). */
#define AUTH_RES_OF_REQUEST "*kind*"

enum auth_route {
    AUTH_ROUTE_UNSET = 0, /* a row without a route fails the table test */
    AUTH_ROUTE_LOCAL,     /* any server answers from what it has */
    AUTH_ROUTE_LEADER,    /* followers forward it to the leader */
    AUTH_ROUTE_READ,      /* linearizable read: the leader behind a barrier, unless "stale" */
    AUTH_ROUTE_OWN,       /* the handler forwards to the leader itself, after bounding what
                             the caller may cost here (rate limits before a forward) */
};

struct auth_method {
    const char *name;
    /* Writes exactly one answer into @out and returns 0, or returns a negative code
     * to be answered with rp_errmsg(). A streaming method returns when its stream
     * ends and writes nothing into @out. */
    int (*handler)(struct auth_req *r, struct rp_buf *out);
    bool stream;
    /* Who may call. */
    bool anonymous;       /* anyone, with or without a certificate */
    unsigned system;      /* AUTH_SYS() bits of the system roles that may call it */
    const char *resource; /* users: the rule's resource (AUTH_RES_OF_REQUEST: the
                             request's kind); NULL: not for user identities */
    const char *verb;     /* users: the rule's verb ("put" decides create or update) */
    /* users: a check of the request's arguments, run before the rule; with
     * user_args_decide it is the whole check (a batch checks each of its ops). */
    int (*user_args)(const struct rp_identity *caller, const struct rbac_set *roles,
                     const msgpack_object *args);
    bool user_args_decide;
    enum auth_route route;
    const char *audit; /* event type a successful call writes; NULL for reads */
};

/* Argument checks for auth_method.user_args (auth/authz.c). 0 or RP_EDENIED. */
int auth_authorize_batch_ops(const struct rp_identity *caller, const struct rbac_set *roles,
                             const msgpack_object *args);
int auth_authorize_token_type(const struct rp_identity *caller, const struct rbac_set *roles,
                              const msgpack_object *args);

/* The table, in the order auth/auth.h lists it. */
const struct auth_method *auth_methods(size_t *n);
const struct auth_method *auth_method_find(const char *name);

/* What authorization concluded for a request it allowed. */
struct auth_grant {
    /* For "put" by a user allowed only to create (or only to update): the write to
     * perform instead, so a race cannot turn it into the other ("create"/"update");
     * NULL: as asked. */
    const char *write_op;
};

/* Whether @caller (NULL: anonymous) may call @m with @args. @roles are a user's
 * roles as stored now (NULL for anonymous and system callers). @exists says, for a
 * user's "put", whether the resource exists now. 0 with @grant filled in, or
 * RP_EDENIED with "access denied: ..." in rp_errmsg(). Pure: reads nothing else. */
int auth_authorize(const struct auth_method *m, const struct rp_identity *caller,
                   const struct rbac_set *roles, const msgpack_object *args, bool exists,
                   struct auth_grant *grant);

#endif
