/* tsh/ssh.h: the SSH half of tsh: reaching a node through the proxy (dial.c), an
 * SSH session on the connection (ssh.c) and file copies over SFTP (scp.c).
 *
 * The layers are separable on purpose: tsh_dial only produces a connected fd and the
 * node's verified host key; tsh_ssh_connect and everything above take any connected
 * fd, so the SSH client can be driven over a plain TCP connection to a node too (the
 * tests do that, and a future direct mode could). */
#ifndef TSH_SSH_H
#define TSH_SSH_H

#include <libssh/libssh.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct tsh_profile;

/* Exit code for tsh's own failures (connection, authentication, usage of a remote),
 * as OpenSSH's ssh uses it. */
#define TSH_EXIT_CONN 255

/* ---- dial.c: a connection to a node through the proxy -------------------------------- */

/* What the proxy said about the node it connected us to (design §2). Strings are
 * malloc'd; tsh_dial_answer_free releases them. */
struct tsh_dial_answer {
    char *host_id;
    char *hostname;
    char *addr; /* "" for a node reached through its reverse tunnel */
    bool tunnel;
    char *host_key;  /* "ssh-ed25519 AAAA..." : verified against host_cert and the host CA */
    char *host_cert; /* the certificate line as published */
};

void tsh_dial_answer_free(struct tsh_dial_answer *a);

/* The dial frame (design §2), packed into @out (length prefix included). */
struct rp_buf;
int tsh_dial_frame(const char *target, const char *login, struct rp_buf *out);
/* Decodes the proxy's answer frame body (without its length prefix). On {ok: true}
 * fills @ans and returns 0; on {ok: false} returns RP_ENOTFOUND (not_found),
 * RP_EDENIED (access_denied), RP_EUNAVAILABLE (unreachable, busy), RP_EPROTO
 * (version) or RP_EINVAL (ambiguous, anything else) with a message that names the
 * target and what to do; malformed answers are RP_EPROTO. */
int tsh_dial_parse_answer(const char *target, const uint8_t *p, size_t n,
                          struct tsh_dial_answer *ans);
/* Checks that @host_cert (a certificate line) is a host certificate signed by one of
 * the host CA lines in @known_hosts_text (lines "@cert-authority * <CA line>"), valid
 * now, naming @host_id, and certifying exactly @host_key. 0 or RP_EDENIED/RP_EINVAL
 * with the reason. */
int tsh_verify_host_cert(const char *known_hosts_text, const char *host_id, const char *host_key,
                         const char *host_cert);

/* Connects to @target ("HOST[:PORT]" as tsh ls shows it) through the proxy of
 * profile @p: TLS with ALPN teleport-proxy-ssh and the profile's user certificate,
 * the proxy's certificate checked against the cluster CA, the dial frame, the answer,
 * and the node's published host certificate verified against the profile's host CA.
 * On success *@fd carries the node's SSH byte stream for libssh: in build/tsh a tlsfd
 * (tsh/tlsfd.h: libssh's poll/recv/send on it are served from the TLS connection in
 * this thread); in a program without tools/tsh_io.c, one end of a socketpair whose
 * other end a thread bridges to the TLS connection. The caller ends it with
 * tsh_dial_close; @ans holds what the proxy said. Errors name the target
 * and what to do: RP_ENOTFOUND "node 'x' not found: run tsh ls", RP_EDENIED, RP_ETLS, ... */
int tsh_dial(const struct tsh_profile *p, const char *target, const char *login,
             struct tsh_dial_answer *ans, int *fd);

/* Closes @fd from tsh_dial: sends what is queued and close_notify, and waits (a few
 * seconds at most) for the proxy's end (or for the bridging thread to finish), so that
 * the process does not exit under the TLS connection. Any other fd is only closed. */
void tsh_dial_close(int fd);

/* ---- ssh.c: the SSH client ------------------------------------------------------------ */

/* Who we are and whom we expect: the strings are borrowed for the call. */
struct tsh_ssh_auth {
    const char *login;     /* the Unix login on the node */
    const char *host;      /* the name in messages (node name as the user typed it) */
    const char *key_path;  /* OpenSSH private key (Ed25519 or ECDSA, unencrypted) */
    const char *cert_path; /* the user's SSH certificate line for that key */
    const char *host_key;  /* "TYPE BASE64": the node must present exactly this key */
};

/* Key exchange and certificate authentication on the connected @fd. The server's host
 * key must equal @a->host_key (libssh 0.10 cannot check host certificates, so the
 * verified key is pinned instead), and the certificate must be for the private key.
 * On success *@out is a connected, authenticated blocking session; tsh_ssh_close ends
 * it. @fd stays the caller's in every case (close it after tsh_ssh_close).
 * Errors: RP_EDENIED (host key mismatch, certificate refused), RP_EIO, RP_EINVAL. */
int tsh_ssh_connect(int fd, const struct tsh_ssh_auth *a, ssh_session *out);
/* Disconnects and frees @s (NULL is fine). */
void tsh_ssh_close(ssh_session s);

/* -L [bind:]port:host:port */
struct tsh_fwd {
    char bind[256]; /* "" = 127.0.0.1 (ssh's default without GatewayPorts) */
    int lport;
    char host[256];
    int rport;
};
/* Parses a -L spec. RP_EINVAL naming the part that is wrong. */
int tsh_fwd_parse(const char *spec, struct tsh_fwd *out);

enum tsh_tty {
    TSH_TTY_AUTO,  /* a PTY for an interactive shell when stdin is a terminal */
    TSH_TTY_NO,    /* -T */
    TSH_TTY_YES,   /* -t: a PTY when stdin is a terminal (else a warning) */
    TSH_TTY_FORCE, /* -tt: always */
};

struct tsh_ssh_opts {
    struct tsh_ssh_auth auth;
    const char *command; /* NULL: an interactive shell */
    enum tsh_tty tty;
    const struct tsh_fwd *fwds;
    size_t n_fwds;
    bool forward_agent;        /* -A: the node may use $SSH_AUTH_SOCK through the session */
    int in_fd, out_fd, err_fd; /* normally 0, 1, 2 */
};

/* Runs one SSH session (shell or command, with forwardings) on the connected @fd,
 * which stays the caller's. Returns 0 when the session ran, with *@exit_code the
 * remote command's exit status, or 128+N when it died of signal N, or 255 when the
 * node said neither; or a negative RP_E* code with rp_errmsg() when the connection
 * could not be made or broke (tsh exits 255 then). The terminal is put in raw mode
 * for a PTY session and restored on every way out, signals included. */
int tsh_ssh_session_run(int fd, const struct tsh_ssh_opts *o, int *exit_code);

/* ---- scp.c: copies over SFTP ---------------------------------------------------------- */

/* One side of a copy: a local path, or [login@]node:path. */
struct tsh_scp_spec {
    char *login; /* NULL: none given */
    char *host;  /* NULL: local */
    char *path;  /* "" for the remote home */
};
/* Splits @arg as scp does: "host:path" / "login@host:path" is remote unless the part
 * before the first ':' holds a '/' (a local path with a colon). Strings are malloc'd. */
int tsh_scp_spec_parse(const char *arg, struct tsh_scp_spec *out);
void tsh_scp_spec_free(struct tsh_scp_spec *s);

struct tsh_scp_opts {
    bool recursive;      /* -r */
    bool preserve_times; /* -p: modification and access times too */
    bool quiet;          /* -q: no progress bar */
    int progress_fd;     /* where the progress bar goes when it is a terminal; -1: none */
};

/* Copies @n_src local paths to the remote @dst path (upload), or @n_src remote paths
 * to the local @dst (download), over the authenticated session @s (a subsystem
 * channel "sftp" is opened on it). Modes are kept; a directory needs @o->recursive.
 * Every failure names the file; the copy goes on with the next source and the call
 * returns the first error. */
int tsh_scp_upload(ssh_session s, const char *const *src, size_t n_src, const char *dst,
                   const struct tsh_scp_opts *o);
int tsh_scp_download(ssh_session s, const char *const *src, size_t n_src, const char *dst,
                     const struct tsh_scp_opts *o);

/* The dial target for @node and an optional @port (0: none): "node" or "node:port".
 * RP_EINVAL when it does not fit @n bytes. */
int tsh_ssh_target(const char *node, int port, char *out, size_t n);

/* ---- command-line entry points (tools/tsh.c's verb table) ----------------------------- */

struct tsh_globals;
int tsh_cmd_ssh(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_scp(int argc, char **argv, const struct tsh_globals *g);
int tsh_cmd_proxy_ssh(int argc, char **argv, const struct tsh_globals *g);

#endif
