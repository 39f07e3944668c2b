/* agent/sshd.h: the node's SSH server (libssh 0.10, server side).
 *
 * Accepts OpenSSH user certificates only. libssh proves that the client holds the
 * key inside the certificate; everything else is decided here (agent/sshauth.c):
 * the CA signature against the user CAs the authority trusts, the certificate type,
 * its validity window, the requested login among its principals, its critical
 * options (force-command, source-address; any other refuses), then the role set
 * named by its teleport-roles extension (rbac: deny first, on this node's labels),
 * then locks. Every refusal is audited ("auth", T3007W) and logged with its reason.
 *
 * Each connection is served by its own thread (a libssh session and its channels
 * belong to one thread). Until it authenticates, a connection counts against
 * max_unauthenticated and has auth_deadline_ms to finish: libssh 0.10 never answers
 * a bad signature, so without the deadline such a client would hang forever.
 *
 * Sessions run as the login's Unix user (when the server runs as root; otherwise
 * only the server's own user may be the login): PTY shells, exec, the sftp
 * subsystem (OpenSSH's sftp-server, which `scp` uses too), env requests filtered by
 * accept_env, window changes, signals, exit status and signal; local port forwarding
 * (direct-tcpip) and agent forwarding when both the certificate and the roles permit
 * them. Channels are pumped by hand (ssh_connector stalls in 0.10), within the SSH
 * windows in both directions, so memory per channel stays bounded. */
#ifndef RP_AGENT_SSHD_H
#define RP_AGENT_SSHD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "agent/authority.h"

/* What a recording of one interactive session starts with. Strings are borrowed for
 * the call. */
struct agent_sshd_rec_meta {
    const char *sid;      /* the session's UUID (also the audit events' sid) */
    const char *user;     /* the Teleport user (the certificate's key id) */
    const char *login;    /* the Unix login */
    const char *hostname; /* this node's name */
    const char *command;  /* NULL for a shell */
    const char *term;     /* the PTY's TERM as the client asked ("" if none) */
    const char *shell;    /* the login's shell */
    uint64_t start_ms;    /* wall clock */
    int cols, rows;
    bool interactive;  /* true: a PTY session */
    bool record_input; /* a role sets record_session.ssh_input: input is recorded too */
};

/* The recorder as the SSH server sees it: bound by the agent to agent/recorder.h,
 * by tests to fixtures. Every function may be called from any connection thread.
 * A non-zero return from open, output or resize is a write failure: the role's
 * record_session mode decides (strict: the session is refused or ended with a
 * message; best_effort: it goes on, and the failure is audited once). */
struct agent_sshd_recording {
    void *arg;
    /* Starts a recording; *@rec is handed to the other functions. */
    int (*open)(void *arg, const struct agent_sshd_rec_meta *meta, void **rec);
    /* Bytes as the server sent them to the client. */
    int (*output)(void *rec, const void *p, size_t n);
    /* Bytes the client typed, as the server received them; called only for sessions
     * opened with record_input. */
    int (*input)(void *rec, const void *p, size_t n);
    int (*resize)(void *rec, int cols, int rows);
    /* Ends the recording and releases @rec (also after a failed write). */
    int (*close)(void *rec);
};

struct agent_sshd_opts {
    const char *listen_addr;   /* "HOST:PORT" ("[::]:3022"); NULL: "0.0.0.0:3022"; port 0: any */
    bool no_listener;          /* no TCP listener: connections come only through
                                * agent_sshd_serve_fd (a node behind a reverse tunnel) */
    const char *host_key_path; /* the Ed25519 host key, OpenSSH private key format */
    const char *host_id;       /* this node's UUID: audit server_id, locks on the node */
    const char *nodename;      /* audit server_hostname, recordings */
    const struct agent_authority *authority;      /* required; must outlive the server */
    const struct agent_sshd_recording *recording; /* NULL: sessions are not recorded */
    /* The audit sink: one msgpack map per event. Called from connection threads;
     * must be thread-safe and should not block for long. NULL: events are dropped. */
    int (*emit)(void *arg, const void *event_msgpack, size_t len);
    void *emit_arg;
    const char *const *accept_env; /* fnmatch patterns of env names a client may set */
    size_t n_accept_env;
    uint64_t auth_deadline_ms;    /* 0: 20 s */
    unsigned max_unauthenticated; /* 0: 64 */
    const char *sftp_server;      /* NULL: /usr/lib/openssh/sftp-server */
};

struct agent_sshd;

/* Loads the host key, binds the listener and starts accepting. Strings and arrays in
 * @opts are copied; the authority and recording tables are borrowed. On success
 * *@out is the caller's, released by agent_sshd_stop. */
int agent_sshd_start(struct agent_sshd **out, const struct agent_sshd_opts *opts);

/* Serves the connected stream socket @fd (owned from here: closed on every failure)
 * exactly as a connection accepted by the listener: the same max_unauthenticated cap,
 * authentication deadline, sessions and audit. @peer is the client's address as
 * "ip:port" (from the reverse tunnel, for audit and the source-address option; NULL
 * or unparsable: "tunnel", which source-address never matches). Any thread.
 * RP_EBUSY at the cap, RP_ECLOSED while stopping, RP_ENOMEM/RP_EIO. */
int agent_sshd_serve_fd(struct agent_sshd *s, int fd, const char *peer);

/* The port the server listens on (useful with port 0). */
int agent_sshd_port(const struct agent_sshd *s);

/* Open session channels (shells, exec, subsystems) over all connections. */
size_t agent_sshd_sessions(struct agent_sshd *s);
/* Open connections, authenticated or not. */
size_t agent_sshd_connections(struct agent_sshd *s);

/* Stops accepting, tells interactive sessions (a line on their terminal), waits up to
 * @grace_ms for sessions to end by themselves, then closes every connection (ending
 * their recordings) and frees @s. Returns when every connection thread is gone. */
void agent_sshd_stop(struct agent_sshd *s, uint64_t grace_ms);

#endif
