/* agent/sshd_int.h: what the files of the SSH server share (not a public header).
 *
 *   sshd.c     the listener, the connection registry, the deadline watchdog, stop,
 *              lock re-checks on the authority's changes, audit events;
 *   sshauth.c  the login decision from a certificate (pure: no libssh);
 *   session.c  one connection's thread: key exchange, authentication, channels,
 *              child processes, the pump, direct-tcpip (ssh -L) and agent
 *              forwarding (they share the channel pump and its structures). */
#ifndef RP_AGENT_SSHD_INT_H
#define RP_AGENT_SSHD_INT_H

#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "agent/sshd.h"
#include "lib/buf.h"

#define SSHD_LOG "sshd"
#define SSHD_WHY 512

/* ---- sshauth.c ------------------------------------------------------------------- */

/* What an accepted certificate grants. Owned strings; sshd_grant_free. */
struct sshd_grant {
    char *user; /* the certificate's key id: the Teleport user */
    char **roles;
    size_t n_roles;
    char *traits_json;
    struct rbac_options opt;
    bool permit_pty;
    bool permit_port_forwarding;  /* certificate AND roles */
    bool permit_agent_forwarding; /* certificate AND roles */
    char *force_command;          /* NULL if none */
    uint64_t valid_before;        /* seconds since the epoch (RP_SSH_CERT_FOREVER: never) */
    uint64_t serial;
    char **principals; /* the certificate's (the user's logins) */
    size_t n_principals;
};
void sshd_grant_free(struct sshd_grant *g);

struct sshd_decide_in {
    const struct agent_authority *authority;
    const char *host_id;
    const char *login;
    const char *cert_type; /* libssh's name of the offered key's type */
    const char *cert_b64;  /* the whole offered blob, base64 */
    const struct sockaddr_storage *peer;
    uint64_t now_s;
    /* A jump host (proxy/sshjump.c): the SSH user name is the Teleport user, so
     * @login may also equal the certificate's key id instead of one of its
     * principals. False on a node. */
    bool login_may_be_key_id;
};

/* Decides whether the offered key may log in as @in->login. 0 and *@out filled, or
 * RP_EDENIED (or another code when the authority could not answer) with the reason
 * in @why. out->user is set whenever the certificate parsed, for the audit of a
 * refusal too; sshd_grant_free *@out in both cases. */
int sshd_decide(const struct sshd_decide_in *in, struct sshd_grant *out, char *why, size_t why_len);

/* The checks of the certificate alone, the first half of sshd_decide, shared with
 * the proxy's jump host: a certificate (no plain key), its shape, a trusted user CA,
 * type, validity, @in->login among its principals, critical options, the
 * teleport-roles extension (parsed into out->roles, not resolved), traits. Nothing
 * about a node (labels, the roles' logins) or locks. Same results as sshd_decide. */
int sshd_cert_decide(const struct sshd_decide_in *in, struct sshd_grant *out, char *why,
                     size_t why_len);

/* Re-checks locks for an accepted grant: 0, or non-zero with the reason in @why. */
int sshd_lock_recheck(const struct agent_authority *a, const struct sshd_grant *g,
                      const char *login, const char *host_id, char *why, size_t why_len);

/* Does the peer address match the source-address list @list ("10.0.0.0/8,::1")?
 * RP_EINVAL for a malformed list (which refuses the certificate). */
int sshd_source_address_match(const char *list, const struct sockaddr_storage *peer, bool *match);

/* ---- sshd.c ---------------------------------------------------------------------- */

struct sshd_conn;

struct agent_sshd {
    /* copies of the options */
    char *listen_addr, *host_key_path, *host_id, *nodename, *sftp_server;
    char **accept_env;
    size_t n_accept_env;
    const struct agent_authority *authority;
    const struct agent_sshd_recording *recording;
    int (*emit)(void *arg, const void *ev, size_t len);
    void *emit_arg;
    uint64_t auth_deadline_ms;
    unsigned max_unauthenticated;

    int listen_fd;
    int port;
    int wake[2]; /* wakes the listener thread (stop) */
    ssh_bind bind;
    pthread_mutex_t bind_mu; /* ssh_bind_accept_fd from the listener and from tunnels */
    pthread_t listener;
    bool listener_running;

    pthread_mutex_t mu; /* guards the fields below and every conn's list links */
    pthread_cond_t cond;
    struct sshd_conn *conns;
    size_t n_conns;
    size_t n_unauth;
    size_t n_sessions;
    bool stopping;
    uint64_t stop_deadline_mono; /* when sessions are closed regardless */
    uint64_t refused_log_mono;   /* the last "too many unauthenticated" line */
    unsigned refused_since_log;
    bool running_as_root;
    uid_t self_uid;
};

/* One connection; shared fields under srv->mu, the rest the thread's own. */
struct sshd_conn {
    struct agent_sshd *srv;
    struct sshd_conn *prev, *next;
    int fd;      /* owned by the libssh session once accepted */
    int wake[2]; /* wakes this connection's thread: lock changes, stop */
    ssh_session ses;
    char remote[80], local[80]; /* "ip:port" */
    struct sockaddr_storage peer;
    uint64_t accepted_mono;
    bool authed;         /* under srv->mu */
    bool cut;            /* the deadline watchdog shut the socket down (under srv->mu) */
    atomic_bool recheck; /* the authority changed: re-check locks */
    atomic_bool stop;    /* the server stops */
};

/* Audit: a map with the common fields of a connection (event, code, time, uid,
 * server_id, server_hostname, addr.*, user and login when known) and the extra
 * key/values of @extra: pairs of strings (NULL-terminated list). Also ints. */
struct sshd_ev {
    const char *event, *code;
    const char *user, *login, *sid;
    const char *k[8]; /* extra string fields */
    const char *v[8];
    const char *ik[4]; /* extra integer fields */
    int64_t iv[4];
};
void sshd_emit(struct agent_sshd *s, const struct sshd_conn *c, const struct sshd_ev *ev);

void sshd_conn_authed(struct sshd_conn *c);
void sshd_sessions_add(struct agent_sshd *s, int delta);

/* ---- session.c ------------------------------------------------------------------- */

/* The connection thread's body: owns @c (and frees it, leaving the registry). */
void *sshd_conn_main(void *arg);

#endif
