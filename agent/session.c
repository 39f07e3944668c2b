/* agent/session.c: one SSH connection, from key exchange to its last channel.
 *
 * The connection's thread owns its libssh session and every channel of it (libssh
 * sessions are not shared between threads). It runs in three stages:
 *
 *  1. key exchange and authentication, blocking: the listener's watchdog shuts the
 *     socket down at the authentication deadline, which ends any blocked call;
 *  2. the channel loop, non-blocking: one poll() over the SSH socket, the wake pipe
 *     (lock changes, stop), the agent socket and every channel's fds. libssh handles
 *     the SSH socket (ssh_event_dopoll with a zero timeout); the channels are pumped
 *     here, never with ssh_connector (it stalls in 0.10):
 *       - child/socket -> client: read only while the client's window is open, at
 *         most the window, so libssh never buffers more than the client allowed;
 *       - client -> child/socket: ssh_channel_read_nonblocking into a bounded buffer
 *         only while that buffer has room (reading is what reopens the client's
 *         window, so a slow child slows the client, not our memory);
 *  3. teardown: children signalled and reaped, recordings closed, events audited.
 *
 * Libssh callbacks only record what was asked (and start children); channels are
 * freed only by the loop, after their callbacks are removed (0.10 may otherwise call
 * them after ssh_channel_free). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <grp.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pty.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "agent/sftp_audit.h"
#include "agent/sshd_int.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/ssh_cert.h"
#include "lib/util.h"

#define MAX_AUTH_ATTEMPTS 10
#define MAX_ENV 64
#define MAX_ENV_NAME 256
#define MAX_ENV_VALUE 4096
#define MAX_COMMAND 65536
/* Client bytes held for a child that does not read: past this, the channel is not
 * read and the client's window closes. */
#define INBUF_CAP (512 * 1024)
#define IO_CHUNK (64 * 1024)
#define MAX_CHANNELS 256 /* channels of any kind on one connection */
#define PIPE_SIZE (1024 * 1024)

enum chan_kind { CH_SESSION, CH_TCPIP, CH_AGENT };
enum sess_type { T_NONE, T_SHELL, T_EXEC, T_SUBSYSTEM };

struct chan {
    struct conn_state *cs;
    struct chan *next;
    ssh_channel ch; /* NULL once freed (a child may still need reaping) */
    struct ssh_channel_callbacks_struct cb;
    enum chan_kind kind;
    bool opening;      /* CH_AGENT: the open is not answered yet */
    bool client_eof;   /* the client sent EOF */
    bool eof_drained;  /* ... and libssh holds none of the bytes sent before it */
    bool client_close; /* the client closed the channel */
    bool done;         /* we closed the channel (or it is gone): free when reaped */
    bool eof_sent;
    bool refused; /* its shell/exec/subsystem request was refused: close it */

    int in_fd;  /* client bytes go here (child stdin, socket, PTY master); -1 when closed */
    int out_fd; /* child stdout / socket / PTY master */
    int err_fd; /* child stderr (no PTY) */
    bool out_eof, err_eof, in_broken;
    bool out_drained; /* the last read of out_fd found nothing (EAGAIN) */
    /* What the last poll() said, so that the pump only touches fds that are ready
     * (a read that finds nothing costs a syscall per loop). */
    bool out_ready, err_ready, in_ready, pid_ready;
    bool more_input;     /* libssh may hold client bytes for this channel */
    struct rp_buf inbuf; /* client bytes not yet written to in_fd */
    size_t inoff;
    struct rp_buf outpend; /* bytes read from a fd that libssh did not take yet */
    bool outpend_stderr;

    /* CH_SESSION */
    bool counted; /* in the server's session count */
    bool pty;
    int pty_slave;
    char tty_name[64];
    struct winsize ws;
    char term[64];
    char **env; /* "NAME=value", accepted ones */
    size_t n_env;
    bool agent_fwd;
    enum sess_type type;
    char *command; /* exec command or subsystem name */
    char *original_command;
    pid_t pid;
    int pidfd;
    bool exited;
    int wstatus;
    char sid[37];
    void *rec;
    bool rec_failed;
    uint64_t tx, rx;
    uint64_t start_ms;
    bool stop_told;
    struct sftp_audit *sftp; /* the sftp subsystem's file operations, observed */
};

struct conn_state {
    /* Scratch for the pumps (one at a time, on this connection's thread); here rather
     * than thread-local, so that threads which never pump (the auth servers' hashing
     * pool, in the same binary) do not each carry it as static TLS. */
    char io[IO_CHUNK];
    struct sshd_conn *c;
    struct agent_sshd *s;
    ssh_session ses;
    ssh_event ev;
    struct ssh_server_callbacks_struct scb;
    int auth_attempts;
    bool authed;
    char login[33];
    struct sshd_grant g;
    /* the login's account, looked up before any fork */
    uid_t uid;
    gid_t gid;
    gid_t *groups;
    int n_groups;
    char *home, *shell;
    bool drop_privileges;

    struct chan *chans;
    unsigned n_chans;
    unsigned n_sessions;
    uint64_t last_activity_mono;
    bool stop_seen;
    char close_reason[SSHD_WHY];

    int agent_listen_fd;
    char agent_dir[64];
    char agent_sock[96];
};

static void audit_refusal(struct conn_state *cs, const char *user, const char *why)
{
    struct sshd_ev ev = {.event = "auth",
                         .code = "T3007W",
                         .user = user ? user : "",
                         .login = cs->login,
                         .k = {"reason", "error", "method"},
                         .v = {why, why, "publickey"}};
    sshd_emit(cs->s, cs->c, &ev);
    rp_warn(SSHD_LOG, "refused %s@%s (user %s): %s", cs->login, cs->c->remote,
            user && user[0] ? user : "?", why);
}

/* ---- the login's account ---------------------------------------------------------- */

static bool valid_login(const char *l)
{
    size_t n = strlen(l);
    if (n == 0 || n > 32 || l[0] == '-')
        return false;
    for (size_t i = 0; i < n; i++)
        if (!((l[i] >= 'a' && l[i] <= 'z') || (l[i] >= 'A' && l[i] <= 'Z') ||
              (l[i] >= '0' && l[i] <= '9') || l[i] == '_' || l[i] == '-' || l[i] == '.' ||
              (l[i] == '$' && i == n - 1)))
            return false;
    return true;
}

/* Looks the login up (passwd, groups) and keeps what the child needs, so that nothing
 * but async-signal-safe calls run between fork and exec. */
static int lookup_account(struct conn_state *cs, const char *login, char *why, size_t why_len)
{
    struct passwd pw, *res = NULL;
    long sz = sysconf(_SC_GETPW_R_SIZE_MAX);
    size_t bufsz = sz > 0 ? (size_t)sz : 16384;
    char *buf = malloc(bufsz);
    if (buf == NULL)
        return snprintf(why, why_len, "out of memory"), RP_ENOMEM;
    int err = getpwnam_r(login, &pw, buf, bufsz, &res);
    if (err != 0 || res == NULL) {
        free(buf);
        snprintf(why, why_len, "login \"%s\" has no account on this node", login);
        return RP_EDENIED;
    }
    if (!cs->s->running_as_root && pw.pw_uid != cs->s->self_uid) {
        free(buf);
        snprintf(why, why_len,
                 "this node's SSH server does not run as root and serves only its own login "
                 "(uid %u), not \"%s\"",
                 (unsigned)cs->s->self_uid, login);
        return RP_EDENIED;
    }
    free(cs->home);
    free(cs->shell);
    free(cs->groups);
    cs->groups = NULL;
    cs->uid = pw.pw_uid;
    cs->gid = pw.pw_gid;
    cs->home = strdup(pw.pw_dir && pw.pw_dir[0] ? pw.pw_dir : "/");
    cs->shell = strdup(pw.pw_shell && pw.pw_shell[0] ? pw.pw_shell : "/bin/sh");
    cs->drop_privileges = cs->s->running_as_root;
    int n = 64;
    for (int tries = 0; tries < 4; tries++) {
        gid_t *g = realloc(cs->groups, (size_t)n * sizeof *g);
        if (g == NULL)
            break;
        cs->groups = g;
        int got = n;
        if (getgrouplist(login, pw.pw_gid, g, &got) >= 0) {
            cs->n_groups = got;
            break;
        }
        n = got > n ? got : n * 4;
        if (n > 65536)
            break;
    }
    free(buf);
    if (cs->home == NULL || cs->shell == NULL || cs->groups == NULL || cs->n_groups <= 0) {
        snprintf(why, why_len, "the groups of login \"%s\" cannot be read", login);
        return RP_EDENIED;
    }
    return 0;
}

/* ---- authentication ----------------------------------------------------------------- */

static int on_auth_pubkey(ssh_session ses, const char *user, struct ssh_key_struct *pubkey,
                          char state, void *ud)
{
    struct conn_state *cs = ud;
    char why[SSHD_WHY];
    snprintf(cs->login, sizeof cs->login, "%s", user ? user : "");
    if (state != SSH_PUBLICKEY_STATE_NONE && state != SSH_PUBLICKEY_STATE_VALID)
        return SSH_AUTH_DENIED;
    if (++cs->auth_attempts > MAX_AUTH_ATTEMPTS) {
        if (cs->auth_attempts == MAX_AUTH_ATTEMPTS + 1)
            audit_refusal(cs, NULL, "too many authentication attempts");
        return SSH_AUTH_DENIED;
    }
    if (user == NULL || !valid_login(user)) {
        audit_refusal(cs, NULL, "the requested login is not a valid Unix login name");
        return SSH_AUTH_DENIED;
    }
    char *b64 = NULL;
    if (ssh_pki_export_pubkey_base64(pubkey, &b64) != SSH_OK || b64 == NULL) {
        audit_refusal(cs, NULL, "the offered key cannot be read");
        return SSH_AUTH_DENIED;
    }
    const char *type = ssh_key_type_to_char(ssh_key_type(pubkey));
    struct sshd_decide_in in = {.authority = cs->s->authority,
                                .host_id = cs->s->host_id,
                                .login = user,
                                .cert_type = type ? type : "unknown",
                                .cert_b64 = b64,
                                .peer = &cs->c->peer,
                                .now_s = (uint64_t)time(NULL)};
    struct sshd_grant g;
    int rv = sshd_decide(&in, &g, why, sizeof why);
    ssh_string_free_char(b64);
    if (rv == 0)
        rv = lookup_account(cs, user, why, sizeof why);
    if (rv != 0) {
        audit_refusal(cs, g.user, why);
        sshd_grant_free(&g);
        return SSH_AUTH_DENIED;
    }
    if (state == SSH_PUBLICKEY_STATE_NONE) {
        sshd_grant_free(&g); /* decided again once the signature is proven */
        return SSH_AUTH_SUCCESS;
    }
    sshd_grant_free(&cs->g);
    cs->g = g;
    cs->authed = true;
    rp_info(SSHD_LOG, "accepted %s@%s from %s (certificate serial %llu)", cs->g.user, cs->login,
            cs->c->remote, (unsigned long long)cs->g.serial);
    return SSH_AUTH_SUCCESS;
}

/* ---- channels: bookkeeping ---------------------------------------------------------- */

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

static void close_fd(int *fd)
{
    if (*fd >= 0)
        close(*fd);
    *fd = -1;
}

static void chan_close_fds(struct chan *h)
{
    if (h->in_fd == h->out_fd)
        h->out_fd = -1;
    close_fd(&h->in_fd);
    close_fd(&h->out_fd);
    close_fd(&h->err_fd);
    close_fd(&h->pty_slave);
}

static struct chan *chan_new(struct conn_state *cs, enum chan_kind kind)
{
    if (cs->n_chans >= MAX_CHANNELS)
        return NULL;
    struct chan *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->cs = cs;
    h->kind = kind;
    h->in_fd = h->out_fd = h->err_fd = h->pty_slave = h->pidfd = -1;
    h->pid = -1;
    rp_buf_init(&h->inbuf);
    rp_buf_init(&h->outpend);
    h->start_ms = rp_now_ms();
    if (rp_uuid_v4(h->sid) != 0)
        h->sid[0] = '\0';
    h->next = cs->chans;
    cs->chans = h;
    cs->n_chans++;
    return h;
}

static void chan_release_channel(struct chan *h)
{
    if (h->ch == NULL)
        return;
    ssh_remove_channel_callbacks(h->ch, &h->cb);
    ssh_channel_free(h->ch);
    h->ch = NULL;
}

static void rec_close(struct chan *h)
{
    const struct agent_sshd_recording *r = h->cs->s->recording;
    if (h->rec != NULL && r != NULL)
        r->close(h->rec);
    h->rec = NULL;
}

/* What the role's record_session mode makes of a failed recording write: strict ends
 * the session (false), best_effort goes on once audited (true). */
static bool rec_failure_ok(struct chan *h, const char *what)
{
    struct conn_state *cs = h->cs;
    bool strict = cs->g.opt.record_ssh == RBAC_RECORD_STRICT;
    if (!h->rec_failed) {
        char why[SSHD_WHY];
        snprintf(why, sizeof why, "session recording could not be written (%s): %s", what,
                 strict ? "record_session is strict, the session ends"
                        : "record_session is best_effort, the session goes on unrecorded");
        struct sshd_ev ev = {.event = strict ? "session.rejected" : "session.upload",
                             .code = strict ? "T1006W" : "T2005E",
                             .user = cs->g.user,
                             .login = cs->login,
                             .sid = h->sid,
                             .k = {"reason", "error"},
                             .v = {why, why}};
        sshd_emit(cs->s, cs->c, &ev);
        rp_warn(SSHD_LOG, "session %s of %s@%s: %s", h->sid, cs->g.user, cs->login, why);
    }
    h->rec_failed = true;
    rec_close(h);
    return !strict;
}

static void send_to_client(struct chan *h, const char *msg)
{
    if (h->ch != NULL && !h->done && ssh_channel_is_open(h->ch))
        ssh_channel_write(h->ch, msg, (uint32_t)strlen(msg));
}

/* Ends a session channel from our side (policy: strict recording, stop, locks): the
 * child is hung up and the loop finishes the channel once it is reaped. */
static void chan_hangup(struct chan *h, const char *msg)
{
    if (msg != NULL)
        send_to_client(h, msg);
    if (h->pid > 0 && !h->exited)
        kill(-h->pid, SIGHUP);
    if (h->pid > 0 && !h->exited)
        kill(h->pid, SIGHUP);
}

static const struct {
    const char *name;
    int sig;
} signals[] = {{"ABRT", SIGABRT}, {"ALRM", SIGALRM}, {"FPE", SIGFPE},   {"HUP", SIGHUP},
               {"ILL", SIGILL},   {"INT", SIGINT},   {"KILL", SIGKILL}, {"PIPE", SIGPIPE},
               {"QUIT", SIGQUIT}, {"SEGV", SIGSEGV}, {"TERM", SIGTERM}, {"USR1", SIGUSR1},
               {"USR2", SIGUSR2}};

static const char *signal_name(int sig)
{
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
        if (signals[i].sig == sig)
            return signals[i].name;
    return "KILL";
}

/* The session's last events, once its child is gone. */
static void chan_session_end_events(struct chan *h)
{
    struct conn_state *cs = h->cs;
    int code = 0;
    char status[32];
    if (WIFEXITED(h->wstatus))
        code = WEXITSTATUS(h->wstatus);
    else if (WIFSIGNALED(h->wstatus))
        code = 128 + WTERMSIG(h->wstatus);
    snprintf(status, sizeof status, "%d", code);
    if (h->sftp != NULL)
        sftp_audit_finish(h->sftp); /* transfers cut short */
    if (h->type == T_EXEC) {
        struct sshd_ev ev = {.event = "exec",
                             .code = code == 0 ? "T3002I" : "T3002E",
                             .user = cs->g.user,
                             .login = cs->login,
                             .sid = h->sid,
                             .k = {"command", "exitCode"},
                             .v = {h->command, status}};
        sshd_emit(cs->s, cs->c, &ev);
    }
    struct sshd_ev data = {.event = "session.data",
                           .code = "T2006I",
                           .user = cs->g.user,
                           .login = cs->login,
                           .sid = h->sid,
                           .ik = {"tx", "rx"},
                           .iv = {(int64_t)h->tx, (int64_t)h->rx}};
    sshd_emit(cs->s, cs->c, &data);
    if (h->type == T_SHELL || h->pty) {
        struct sshd_ev end = {.event = "session.end",
                              .code = "T2004I",
                              .user = cs->g.user,
                              .login = cs->login,
                              .sid = h->sid,
                              .k = {"interactive"},
                              .v = {h->pty ? "true" : "false"},
                              .ik = {"session_start", "session_stop"},
                              .iv = {(int64_t)h->start_ms, (int64_t)rp_now_ms()}};
        sshd_emit(cs->s, cs->c, &end);
    }
}

/* The child has exited and its output is drained: exit status, EOF, close. */
static void chan_finish_session(struct chan *h)
{
    if (h->ch != NULL && ssh_channel_is_open(h->ch)) {
        if (h->outpend.len > 0)
            return; /* still flushing */
        if (WIFSIGNALED(h->wstatus))
            ssh_channel_request_send_exit_signal(h->ch, signal_name(WTERMSIG(h->wstatus)),
                                                 WCOREDUMP(h->wstatus), "", "");
        else
            ssh_channel_request_send_exit_status(
                h->ch, WIFEXITED(h->wstatus) ? WEXITSTATUS(h->wstatus) : 255);
        ssh_channel_send_eof(h->ch);
        ssh_channel_close(h->ch);
    }
    chan_close_fds(h);
    rec_close(h);
    chan_session_end_events(h);
    h->done = true;
}

/* ---- children ----------------------------------------------------------------------- */

struct spawn {
    const char *path;
    char **argv;
    char **envp;
};

static void strv_free(char **v)
{
    if (v == NULL)
        return;
    for (size_t i = 0; v[i] != NULL; i++)
        free(v[i]);
    free(v);
}

static int env_add(char ***envp, size_t *n, const char *name, const char *value)
{
    size_t len = strlen(name);
    for (size_t i = 0; i < *n; i++)
        if (strncmp((*envp)[i], name, len) == 0 && (*envp)[i][len] == '=')
            return 0; /* the first setting wins: fixed variables come first */
    char **v = realloc(*envp, (*n + 2) * sizeof *v);
    if (v == NULL)
        return RP_ENOMEM;
    *envp = v;
    size_t sz = len + strlen(value) + 2;
    v[*n] = malloc(sz);
    if (v[*n] == NULL)
        return RP_ENOMEM;
    snprintf(v[*n], sz, "%s=%s", name, value);
    (*n)++;
    v[*n] = NULL;
    return 0;
}

static void addr_split(const char *addr, char *host, size_t hn, char *port, size_t pn)
{
    const char *colon = strrchr(addr, ':');
    size_t l = colon ? (size_t)(colon - addr) : strlen(addr);
    if (l > 0 && addr[0] == '[') {
        addr++;
        l -= 2;
    }
    snprintf(host, hn, "%.*s", (int)l, addr);
    snprintf(port, pn, "%s", colon ? colon + 1 : "0");
}

static char **build_env(struct chan *h)
{
    struct conn_state *cs = h->cs;
    char **envp = NULL;
    size_t n = 0;
    char rh[64], rp[8], lh[64], lp[8], buf[256];
    addr_split(cs->c->remote, rh, sizeof rh, rp, sizeof rp);
    addr_split(cs->c->local, lh, sizeof lh, lp, sizeof lp);
    int rv = 0;
    rv |= env_add(&envp, &n, "HOME", cs->home);
    rv |= env_add(&envp, &n, "USER", cs->login);
    rv |= env_add(&envp, &n, "LOGNAME", cs->login);
    rv |= env_add(&envp, &n, "SHELL", cs->shell);
    rv |= env_add(&envp, &n, "PATH",
                  cs->uid == 0 ? "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
                               : "/usr/local/bin:/usr/bin:/bin:/usr/games");
    snprintf(buf, sizeof buf, "/var/mail/%s", cs->login);
    rv |= env_add(&envp, &n, "MAIL", buf);
    snprintf(buf, sizeof buf, "%s %s %s %s", rh, rp, lh, lp);
    rv |= env_add(&envp, &n, "SSH_CONNECTION", buf);
    snprintf(buf, sizeof buf, "%s %s %s", rh, rp, lp);
    rv |= env_add(&envp, &n, "SSH_CLIENT", buf);
    if (h->pty) {
        rv |= env_add(&envp, &n, "TERM", h->term[0] ? h->term : "dumb");
        rv |= env_add(&envp, &n, "SSH_TTY", h->tty_name);
    }
    if (h->agent_fwd && cs->agent_sock[0])
        rv |= env_add(&envp, &n, "SSH_AUTH_SOCK", cs->agent_sock);
    if (h->original_command != NULL)
        rv |= env_add(&envp, &n, "SSH_ORIGINAL_COMMAND", h->original_command);
    for (size_t i = 0; i < h->n_env; i++) {
        char *eq = strchr(h->env[i], '=');
        *eq = '\0';
        rv |= env_add(&envp, &n, h->env[i], eq + 1);
        *eq = '=';
    }
    if (rv != 0 || envp == NULL) {
        strv_free(envp);
        return NULL;
    }
    return envp;
}

/* In the child, between fork and exec: async-signal-safe calls only. */
static void child_fail(const char *msg)
{
    ssize_t n = write(2, msg, strlen(msg));
    (void)n;
    _exit(127);
}

static int spawn_child(struct chan *h, const struct spawn *sp, char *why, size_t why_len)
{
    struct conn_state *cs = h->cs;
    int in_p[2] = {-1, -1}, out_p[2] = {-1, -1}, err_p[2] = {-1, -1};
    if (!h->pty) {
        if (pipe2(in_p, O_CLOEXEC) != 0 || pipe2(out_p, O_CLOEXEC) != 0 ||
            pipe2(err_p, O_CLOEXEC) != 0) {
            snprintf(why, why_len, "pipe: %s", strerror(errno));
            goto fail;
        }
        /* Bigger pipes: fewer wakeups per MiB copied (sftp-server reads and writes
         * 32 KiB at a time). Best effort. */
        fcntl(in_p[1], F_SETPIPE_SZ, PIPE_SIZE);
        fcntl(out_p[1], F_SETPIPE_SZ, PIPE_SIZE);
    }
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pid_t pid = fork();
    if (pid == 0) {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        for (int sig = 1; sig < NSIG; sig++)
            sigaction(sig, &dfl, NULL);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        if (setsid() < 0)
            child_fail("setsid failed\n");
        if (h->pty) {
            if (ioctl(h->pty_slave, TIOCSCTTY, 0) != 0)
                child_fail("cannot take the terminal\n");
            if (dup2(h->pty_slave, 0) < 0 || dup2(h->pty_slave, 1) < 0 || dup2(h->pty_slave, 2) < 0)
                child_fail("dup2 failed\n");
        } else if (dup2(in_p[0], 0) < 0 || dup2(out_p[1], 1) < 0 || dup2(err_p[1], 2) < 0) {
            child_fail("dup2 failed\n");
        }
        syscall(SYS_close_range, 3U, ~0U, 0U);
        if (cs->drop_privileges) {
            if (setgroups((size_t)cs->n_groups, cs->groups) != 0 || setgid(cs->gid) != 0 ||
                setuid(cs->uid) != 0)
                child_fail("cannot switch to the login's user\n");
            if (getuid() != cs->uid || geteuid() != cs->uid || getgid() != cs->gid ||
                getegid() != cs->gid)
                child_fail("the switch to the login's user did not stick\n");
            if (cs->uid != 0 && setuid(0) == 0)
                child_fail("privileges could be regained after the switch\n");
        }
        if (chdir(cs->home) != 0) {
            static const char m[] = "Could not chdir to home directory\n";
            ssize_t n = write(2, m, sizeof m - 1);
            (void)n;
            if (chdir("/") != 0)
                child_fail("cannot chdir to /\n");
        }
        execve(sp->path, sp->argv, sp->envp);
        child_fail("cannot execute the login shell\n");
    }
    int fork_errno = errno;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (pid < 0) {
        snprintf(why, why_len, "fork: %s", strerror(fork_errno));
        goto fail;
    }
    h->pid = pid;
    h->pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
    if (h->pty) {
        close_fd(&h->pty_slave);
    } else {
        close(in_p[0]);
        close(out_p[1]);
        close(err_p[1]);
        h->in_fd = in_p[1];
        h->out_fd = out_p[0];
        h->err_fd = err_p[0];
        set_nonblock(h->in_fd);
        set_nonblock(h->out_fd);
        set_nonblock(h->err_fd);
    }
    return 0;
fail:
    for (int i = 0; i < 2; i++) {
        close_fd(&in_p[i]);
        close_fd(&out_p[i]);
        close_fd(&err_p[i]);
    }
    return RP_EIO;
}

/* One file operation of an sftp channel (agent/sftp_audit.h) as an "sftp" event. */
static void on_sftp_event(void *arg, const struct sftp_audit_event *e)
{
    struct chan *h = arg;
    struct conn_state *cs = h->cs;
    struct sshd_ev ev = {.event = "sftp",
                         .code = e->error != NULL ? "TS001E" : "TS001I",
                         .user = cs->g.user,
                         .login = cs->login,
                         .sid = h->sid};
    size_t k = 0;
    const char *keys[] = {"action", "path", "target_path", "flags", "attributes", "error"};
    const char *vals[] = {e->action, e->path, e->target_path, e->flags, e->attributes, e->error};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
        if (vals[i] != NULL) {
            ev.k[k] = keys[i];
            ev.v[k++] = vals[i];
        }
    if (e->has_bytes) {
        ev.ik[0] = "bytes_read";
        ev.iv[0] = (int64_t)e->bytes_read;
        ev.ik[1] = "bytes_written";
        ev.iv[1] = (int64_t)e->bytes_written;
    }
    sshd_emit(cs->s, cs->c, &ev);
}

/* Shows the sftp observer bytes already handed on; a stream it cannot read stops it,
 * audited once (sftp-server ends such a session itself). */
static void sftp_observe(struct chan *h, bool from_client, const void *p, size_t n)
{
    if (h->sftp == NULL || sftp_audit_feed(h->sftp, from_client, p, n) == 0)
        return;
    struct conn_state *cs = h->cs;
    char why[SSHD_WHY];
    snprintf(why, sizeof why, "file operations are no longer audited: %s", rp_errmsg());
    struct sshd_ev ev = {.event = "sftp",
                         .code = "TS001E",
                         .user = cs->g.user,
                         .login = cs->login,
                         .sid = h->sid,
                         .k = {"action", "error"},
                         .v = {"audit_stopped", why}};
    sshd_emit(cs->s, cs->c, &ev);
    rp_warn(SSHD_LOG, "session %s of %s@%s: %s", h->sid, cs->g.user, cs->login, why);
}

static bool command_is_scp(const char *cmd)
{
    while (*cmd == ' ' || *cmd == '\t')
        cmd++;
    const char *base = cmd;
    for (const char *p = cmd; *p && *p != ' '; p++)
        if (*p == '/')
            base = p + 1;
    return strncmp(base, "scp", 3) == 0 && (base[3] == ' ' || base[3] == '\0');
}

/* Starts what the client asked for on a session channel: 0 (the request succeeds)
 * or -1 (it fails; the reason is logged and audited). */
static int start_session(struct chan *h, enum sess_type type, const char *what)
{
    struct conn_state *cs = h->cs;
    struct agent_sshd *s = cs->s;
    char why[SSHD_WHY] = "";
    if (type == T_NONE || h->type != T_NONE || h->done || cs->stop_seen)
        return -1;
    const char *command = type == T_SHELL ? NULL : what;
    if (type == T_SUBSYSTEM) {
        if (strcmp(what, "sftp") != 0) {
            rp_info(SSHD_LOG, "%s@%s: subsystem %.64s refused: only sftp is served", cs->g.user,
                    cs->login, what);
            return -1;
        }
        if (!cs->g.opt.ssh_file_copy) {
            snprintf(why, sizeof why,
                     "file copying (sftp, scp) is not allowed by the user's "
                     "roles (ssh_file_copy: false)");
            struct sshd_ev ev = {.event = "sftp",
                                 .code = "TS001E",
                                 .user = cs->g.user,
                                 .login = cs->login,
                                 .sid = h->sid,
                                 .k = {"error", "reason"},
                                 .v = {why, why}};
            sshd_emit(s, cs->c, &ev);
            rp_warn(SSHD_LOG, "%s@%s from %s: %s", cs->g.user, cs->login, cs->c->remote, why);
            return -1;
        }
    }
    if (cs->g.force_command != NULL) {
        free(h->original_command);
        h->original_command = command ? strdup(command) : NULL;
        command = cs->g.force_command;
        type = T_EXEC;
    }
    if (type == T_EXEC && !cs->g.opt.ssh_file_copy && command_is_scp(command)) {
        snprintf(why, sizeof why,
                 "file copying (sftp, scp) is not allowed by the user's roles "
                 "(ssh_file_copy: false)");
        struct sshd_ev ev = {.event = "scp",
                             .code = "T3004E",
                             .user = cs->g.user,
                             .login = cs->login,
                             .sid = h->sid,
                             .k = {"command", "error"},
                             .v = {command, why}};
        sshd_emit(s, cs->c, &ev);
        rp_warn(SSHD_LOG, "%s@%s from %s: %s", cs->g.user, cs->login, cs->c->remote, why);
        if (h->ch != NULL)
            ssh_channel_write_stderr(h->ch, why, (uint32_t)strlen(why));
        return -1;
    }
    h->type = type;
    free(h->command);
    h->command = command ? strdup(command) : NULL;
    if (command && h->command == NULL)
        return -1;

    /* Interactive sessions are recorded before anything runs: a strict role refuses
     * the session if the recording cannot start. */
    if (h->pty && s->recording != NULL) {
        struct agent_sshd_rec_meta meta = {.sid = h->sid,
                                           .user = cs->g.user,
                                           .login = cs->login,
                                           .hostname = s->nodename,
                                           .command = h->command,
                                           .term = h->term,
                                           .shell = cs->shell,
                                           .start_ms = h->start_ms,
                                           .cols = h->ws.ws_col,
                                           .rows = h->ws.ws_row,
                                           .interactive = true,
                                           .record_input = cs->g.opt.record_ssh_input};
        if (s->recording->open(s->recording->arg, &meta, &h->rec) != 0) {
            h->rec = NULL;
            if (!rec_failure_ok(h, "open")) {
                if (h->ch != NULL) {
                    const char *m = "This session must be recorded and its recording cannot be "
                                    "written: the session is refused.\r\n";
                    ssh_channel_write_stderr(h->ch, m, (uint32_t)strlen(m));
                }
                return -1;
            }
        }
    }

    struct spawn sp = {0};
    char *argv0 = NULL;
    const char *base = strrchr(cs->shell, '/');
    base = base ? base + 1 : cs->shell;
    if (type == T_SUBSYSTEM && cs->g.force_command == NULL) {
        sp.path = s->sftp_server;
        sp.argv = calloc(2, sizeof *sp.argv);
        if (sp.argv != NULL)
            sp.argv[0] = strdup(s->sftp_server);
    } else if (type == T_SHELL) {
        sp.path = cs->shell;
        sp.argv = calloc(2, sizeof *sp.argv);
        size_t l = strlen(base) + 2;
        if (sp.argv != NULL && (argv0 = malloc(l)) != NULL) {
            snprintf(argv0, l, "-%s", base); /* a login shell */
            sp.argv[0] = argv0;
        }
    } else {
        sp.path = cs->shell;
        sp.argv = calloc(4, sizeof *sp.argv);
        if (sp.argv != NULL) {
            sp.argv[0] = strdup(base);
            sp.argv[1] = strdup("-c");
            sp.argv[2] = strdup(command);
        }
    }
    sp.envp = build_env(h);
    int rv = -1;
    if (sp.argv == NULL || sp.argv[0] == NULL || sp.envp == NULL) {
        snprintf(why, sizeof why, "out of memory");
    } else {
        rv = spawn_child(h, &sp, why, sizeof why);
    }
    strv_free(sp.argv);
    strv_free(sp.envp);
    if (rv != 0) {
        rp_warn(SSHD_LOG, "%s@%s: the session could not start: %s", cs->g.user, cs->login, why);
        rec_close(h);
        h->type = T_NONE;
        return -1;
    }
    if (type == T_SUBSYSTEM && cs->g.force_command == NULL &&
        sftp_audit_new(&h->sftp, on_sftp_event, h, 0) != 0)
        rp_warn(SSHD_LOG, "session %s: out of memory: its file operations are not audited", h->sid);
    char size[32];
    snprintf(size, sizeof size, "%u:%u", h->ws.ws_col, h->ws.ws_row);
    if (type == T_SUBSYSTEM) {
        struct sshd_ev ev = {.event = "subsystem",
                             .code = "T3001I",
                             .user = cs->g.user,
                             .login = cs->login,
                             .sid = h->sid,
                             .k = {"name"},
                             .v = {"sftp"}};
        sshd_emit(s, cs->c, &ev);
    } else if (type == T_SHELL || h->pty) {
        struct sshd_ev ev = {.event = "session.start",
                             .code = "T2000I",
                             .user = cs->g.user,
                             .login = cs->login,
                             .sid = h->sid,
                             .k = {"size", "command", "interactive"},
                             .v = {size, h->command ? h->command : "", h->pty ? "true" : "false"}};
        sshd_emit(s, cs->c, &ev);
    }
    rp_info(SSHD_LOG, "session %s: %s@%s %s%s%s", h->sid, cs->g.user, cs->login,
            type == T_SHELL       ? "shell"
            : type == T_SUBSYSTEM ? "subsystem "
                                  : "exec ",
            type == T_SHELL ? "" : h->command, h->pty ? " (pty)" : "");
    return 0;
}

/* ---- channel callbacks (flags and children only: the loop does the I/O) ------------- */

static int on_pty_request(ssh_session ses, ssh_channel ch, const char *term, int w, int hgt,
                          int pxw, int pxh, void *ud)
{
    struct chan *h = ud;
    struct conn_state *cs = h->cs;
    if (!cs->g.permit_pty || h->pty || h->type != T_NONE) {
        rp_info(SSHD_LOG, "%s@%s: PTY refused (%s)", cs->g.user, cs->login,
                cs->g.permit_pty ? "already requested" : "the certificate lacks permit-pty");
        return -1;
    }
    h->ws.ws_col = (unsigned short)(w > 0 && w < 10000 ? w : 80);
    h->ws.ws_row = (unsigned short)(hgt > 0 && hgt < 10000 ? hgt : 24);
    h->ws.ws_xpixel = (unsigned short)(pxw > 0 && pxw < 65536 ? pxw : 0);
    h->ws.ws_ypixel = (unsigned short)(pxh > 0 && pxh < 65536 ? pxh : 0);
    size_t i = 0;
    for (; term && term[i] && i < sizeof h->term - 1; i++) {
        char c = term[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '+'))
            break;
        h->term[i] = c;
    }
    h->term[i] = '\0';
    int master = -1, slave = -1;
    if (openpty(&master, &slave, h->tty_name, NULL, &h->ws) != 0) {
        rp_warn(SSHD_LOG, "openpty: %s", strerror(errno));
        return -1;
    }
    fcntl(master, F_SETFD, FD_CLOEXEC);
    fcntl(slave, F_SETFD, FD_CLOEXEC);
    set_nonblock(master);
    if (cs->drop_privileges) {
        /* The login owns its terminal, as with sshd. */
        if (fchown(slave, cs->uid, (gid_t)-1) != 0 || fchmod(slave, 0620) != 0)
            rp_warn(SSHD_LOG, "%s: cannot hand the terminal to uid %u: %s", h->tty_name,
                    (unsigned)cs->uid, strerror(errno));
    }
    h->pty = true;
    h->in_fd = h->out_fd = master;
    h->pty_slave = slave;
    return 0;
}

/* A refused shell, exec or subsystem leaves nothing to run on the channel: the loop
 * closes it once the failure reply is out (OpenSSH's client waits for that close). */
static int start_or_close(struct chan *h, enum sess_type type, const char *what)
{
    int rv = start_session(h, type, what);
    if (rv != 0 && h->type == T_NONE)
        h->refused = true;
    return rv;
}

static int on_shell_request(ssh_session ses, ssh_channel ch, void *ud)
{
    return start_or_close(ud, T_SHELL, NULL);
}

static int on_exec_request(ssh_session ses, ssh_channel ch, const char *command, void *ud)
{
    if (command == NULL || strlen(command) > MAX_COMMAND)
        return start_or_close(ud, T_NONE, NULL);
    return start_or_close(ud, T_EXEC, command);
}

static int on_subsystem_request(ssh_session ses, ssh_channel ch, const char *name, void *ud)
{
    return start_or_close(ud, T_SUBSYSTEM, name ? name : "");
}

static int on_env_request(ssh_session ses, ssh_channel ch, const char *name, const char *value,
                          void *ud)
{
    struct chan *h = ud;
    struct agent_sshd *s = h->cs->s;
    if (name == NULL || value == NULL || h->type != T_NONE || h->n_env >= MAX_ENV ||
        name[0] == '\0' || strlen(name) > MAX_ENV_NAME || strlen(value) > MAX_ENV_VALUE ||
        strchr(name, '=') != NULL)
        return -1;
    bool ok = false;
    for (size_t i = 0; i < s->n_accept_env && !ok; i++)
        ok = fnmatch(s->accept_env[i], name, 0) == 0;
    if (!ok) {
        rp_debug(SSHD_LOG, "env %.64s not accepted (accept_env)", name);
        return -1;
    }
    char **v = realloc(h->env, (h->n_env + 1) * sizeof *v);
    if (v == NULL)
        return -1;
    h->env = v;
    size_t l = strlen(name) + strlen(value) + 2;
    if ((v[h->n_env] = malloc(l)) == NULL)
        return -1;
    snprintf(v[h->n_env], l, "%s=%s", name, value);
    h->n_env++;
    return 0;
}

static int on_window_change(ssh_session ses, ssh_channel ch, int w, int hgt, int pxw, int pxh,
                            void *ud)
{
    struct chan *h = ud;
    if (!h->pty || w <= 0 || hgt <= 0 || w >= 10000 || hgt >= 10000)
        return -1;
    h->ws.ws_col = (unsigned short)w;
    h->ws.ws_row = (unsigned short)hgt;
    h->ws.ws_xpixel = (unsigned short)(pxw > 0 && pxw < 65536 ? pxw : 0);
    h->ws.ws_ypixel = (unsigned short)(pxh > 0 && pxh < 65536 ? pxh : 0);
    if (h->in_fd >= 0)
        ioctl(h->in_fd, TIOCSWINSZ, &h->ws);
    const struct agent_sshd_recording *r = h->cs->s->recording;
    if (h->rec != NULL && r != NULL && r->resize(h->rec, w, hgt) != 0 &&
        !rec_failure_ok(h, "resize"))
        chan_hangup(h, "\r\nThe session recording cannot be written: the session ends.\r\n");
    char size[32];
    snprintf(size, sizeof size, "%d:%d", w, hgt);
    struct sshd_ev ev = {.event = "resize",
                         .code = "T2002I",
                         .user = h->cs->g.user,
                         .login = h->cs->login,
                         .sid = h->sid,
                         .k = {"size"},
                         .v = {size}};
    sshd_emit(h->cs->s, h->cs->c, &ev);
    return 0;
}

static void on_signal(ssh_session ses, ssh_channel ch, const char *sig, void *ud)
{
    struct chan *h = ud;
    if (sig == NULL || h->pid <= 0 || h->exited)
        return;
    for (size_t i = 0; i < sizeof signals / sizeof signals[0]; i++)
        if (strcmp(signals[i].name, sig) == 0) {
            kill(h->pid, signals[i].sig);
            return;
        }
}

/* Client bytes stay in libssh (0 consumed) until the pump has room for them: this
 * only says that there are some, whichever libssh call happened to read them. */
static int on_data(ssh_session ses, ssh_channel ch, void *data, uint32_t len, int is_stderr,
                   void *ud)
{
    if (!is_stderr)
        ((struct chan *)ud)->more_input = true;
    return 0;
}

static void on_eof(ssh_session ses, ssh_channel ch, void *ud)
{
    ((struct chan *)ud)->client_eof = true;
}

static void on_close(ssh_session ses, ssh_channel ch, void *ud)
{
    struct chan *h = ud;
    h->client_eof = true;
    h->client_close = true;
}

static int agent_listen(struct conn_state *cs);

/* libssh 0.10 gives this callback no say in the reply: a refused request simply
 * gets no socket (and no SSH_AUTH_SOCK). */
static void on_auth_agent_req(ssh_session ses, ssh_channel ch, void *ud)
{
    struct chan *h = ud;
    struct conn_state *cs = h->cs;
    if (!cs->g.permit_agent_forwarding) {
        rp_info(SSHD_LOG,
                "%s@%s: agent forwarding refused (needs permit-agent-forwarding in "
                "the certificate and forward_agent in a role)",
                cs->g.user, cs->login);
        return;
    }
    if (agent_listen(cs) != 0)
        return;
    h->agent_fwd = true;
}

static void chan_set_callbacks(struct chan *h)
{
    memset(&h->cb, 0, sizeof h->cb);
    h->cb.userdata = h;
    h->cb.channel_eof_function = on_eof;
    h->cb.channel_data_function = on_data;
    h->cb.channel_close_function = on_close;
    if (h->kind == CH_SESSION) {
        h->cb.channel_pty_request_function = on_pty_request;
        h->cb.channel_shell_request_function = on_shell_request;
        h->cb.channel_exec_request_function = on_exec_request;
        h->cb.channel_subsystem_request_function = on_subsystem_request;
        h->cb.channel_env_request_function = on_env_request;
        h->cb.channel_pty_window_change_function = on_window_change;
        h->cb.channel_signal_function = on_signal;
        h->cb.channel_auth_agent_req_function = on_auth_agent_req;
    }
    ssh_callbacks_init(&h->cb);
    ssh_set_channel_callbacks(h->ch, &h->cb);
}

static ssh_channel on_channel_open_session(ssh_session ses, void *ud)
{
    struct conn_state *cs = ud;
    uint32_t max = cs->g.opt.max_sessions;
    if (!cs->authed || cs->stop_seen)
        return NULL;
    if (max > 0 && cs->n_sessions >= max) {
        char why[128];
        snprintf(why, sizeof why, "%u sessions are open on this connection, max_sessions is %u",
                 cs->n_sessions, max);
        struct sshd_ev ev = {.event = "session.rejected",
                             .code = "T1006W",
                             .user = cs->g.user,
                             .login = cs->login,
                             .k = {"reason"},
                             .v = {why}};
        sshd_emit(cs->s, cs->c, &ev);
        rp_warn(SSHD_LOG, "%s@%s from %s: session refused: %s", cs->g.user, cs->login,
                cs->c->remote, why);
        return NULL;
    }
    struct chan *h = chan_new(cs, CH_SESSION);
    if (h == NULL)
        return NULL;
    h->ch = ssh_channel_new(ses);
    if (h->ch == NULL) {
        h->done = true;
        return NULL;
    }
    chan_set_callbacks(h);
    h->counted = true;
    cs->n_sessions++;
    sshd_sessions_add(cs->s, 1);
    return h->ch;
}

/* ---- forwarding: direct-tcpip (ssh -L) and the agent --------------------------------- */

static int connect_target(const char *host, int port, char *why, size_t why_len)
{
    char ps[8];
    snprintf(ps, sizeof ps, "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host, ps, &hints, &res);
    if (gai != 0) {
        snprintf(why, why_len, "%s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *ai = res; ai != NULL && fd < 0; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int rc = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rc != 0 && errno == EINPROGRESS) {
            /* Bounded: this runs inside libssh's dispatch of the connection. */
            struct pollfd p = {fd, POLLOUT, 0};
            int err = 0;
            socklen_t el = sizeof err;
            if (poll(&p, 1, 10000) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el) == 0 &&
                err == 0)
                rc = 0;
            else
                errno = err ? err : ETIMEDOUT;
        }
        if (rc != 0) {
            snprintf(why, why_len, "connect to %s:%d: %s", host, port, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

static void audit_port(struct conn_state *cs, const char *dst, const char *err)
{
    struct sshd_ev ev = {.event = "port",
                         .code = err ? "T3003E" : "T3003I",
                         .user = cs->g.user,
                         .login = cs->login,
                         .k = {"addr", err ? "error" : NULL},
                         .v = {dst, err}};
    sshd_emit(cs->s, cs->c, &ev);
}

static int on_message(ssh_session ses, ssh_message msg, void *ud)
{
    struct conn_state *cs = ud;
    if (ssh_message_type(msg) != SSH_REQUEST_CHANNEL_OPEN ||
        ssh_message_subtype(msg) != SSH_CHANNEL_DIRECT_TCPIP || !cs->authed)
        return 1; /* libssh's default answer: refused */
    const char *host = ssh_message_channel_request_open_destination(msg);
    int port = ssh_message_channel_request_open_destination_port(msg);
    char dst[300], why[SSHD_WHY];
    snprintf(dst, sizeof dst, "%.255s:%d", host ? host : "", port);
    if (!cs->g.permit_port_forwarding) {
        snprintf(why, sizeof why,
                 "port forwarding is not permitted (needs "
                 "permit-port-forwarding in the certificate and "
                 "port_forwarding in a role)");
        audit_port(cs, dst, why);
        rp_warn(SSHD_LOG, "%s@%s: forwarding to %s refused: %s", cs->g.user, cs->login, dst, why);
        return 1;
    }
    if (host == NULL || port <= 0 || port > 65535 || cs->stop_seen || cs->n_chans >= MAX_CHANNELS) {
        audit_port(cs, dst, "invalid destination or too many channels");
        return 1;
    }
    int fd = connect_target(host, port, why, sizeof why);
    if (fd < 0) {
        audit_port(cs, dst, why);
        return 1;
    }
    struct chan *h = chan_new(cs, CH_TCPIP);
    if (h == NULL) {
        close(fd);
        return 1;
    }
    h->ch = ssh_message_channel_request_open_reply_accept(msg);
    if (h->ch == NULL) {
        close(fd);
        h->done = true;
        return 0;
    }
    h->in_fd = h->out_fd = fd;
    chan_set_callbacks(h);
    audit_port(cs, dst, NULL);
    return 0;
}

/* A private directory owned by the login (0700) holding the socket its programs reach
 * the forwarded agent through. */
static int agent_listen(struct conn_state *cs)
{
    if (cs->agent_listen_fd >= 0)
        return 0;
    snprintf(cs->agent_dir, sizeof cs->agent_dir, "/tmp/rp-agent-XXXXXX");
    if (mkdtemp(cs->agent_dir) == NULL) {
        cs->agent_dir[0] = '\0';
        return -1;
    }
    snprintf(cs->agent_sock, sizeof cs->agent_sock, "%s/agent.sock", cs->agent_dir);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof sa.sun_path, "%s", cs->agent_sock);
    if (fd < 0 || bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 || listen(fd, 16) != 0 ||
        chmod(cs->agent_sock, 0600) != 0 ||
        (cs->drop_privileges && (chown(cs->agent_sock, cs->uid, cs->gid) != 0 ||
                                 chown(cs->agent_dir, cs->uid, cs->gid) != 0))) {
        rp_warn(SSHD_LOG, "agent forwarding for %s@%s: socket %s: %s", cs->g.user, cs->login,
                cs->agent_sock, strerror(errno));
        if (fd >= 0)
            close(fd);
        unlink(cs->agent_sock);
        rmdir(cs->agent_dir);
        cs->agent_dir[0] = cs->agent_sock[0] = '\0';
        return -1;
    }
    cs->agent_listen_fd = fd;
    return 0;
}

static void agent_accept(struct conn_state *cs)
{
    for (;;) {
        int fd = accept4(cs->agent_listen_fd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
        if (fd < 0)
            return;
        struct chan *h = chan_new(cs, CH_AGENT);
        if (h == NULL) {
            close(fd);
            continue;
        }
        h->in_fd = h->out_fd = fd;
        h->ch = ssh_channel_new(cs->ses);
        if (h->ch == NULL) {
            h->done = true;
            continue;
        }
        chan_set_callbacks(h);
        h->opening = true;
    }
}

/* ---- the pump ----------------------------------------------------------------------- */

static void chan_fail(struct chan *h)
{
    if (h->ch != NULL && ssh_channel_is_open(h->ch))
        ssh_channel_close(h->ch);
    h->client_close = true;
}

/* fd -> client, within the client's window. */
static void pump_out(struct chan *h, int fd, bool is_stderr, bool *eof)
{
    struct conn_state *cs = h->cs;
    char *buf = cs->io;
    if (h->outpend.len > 0) {
        uint32_t w = ssh_channel_window_size(h->ch);
        size_t n = h->outpend.len < w ? h->outpend.len : w;
        if (n == 0)
            return;
        int wr = h->outpend_stderr ? ssh_channel_write_stderr(h->ch, h->outpend.data, (uint32_t)n)
                                   : ssh_channel_write(h->ch, h->outpend.data, (uint32_t)n);
        if (wr < 0) {
            chan_fail(h);
            return;
        }
        memmove(h->outpend.data, h->outpend.data + wr, h->outpend.len - (size_t)wr);
        h->outpend.len -= (size_t)wr;
        if (h->outpend.len > 0)
            return;
    }
    for (int i = 0; i < 32 && !*eof; i++) {
        uint32_t w = ssh_channel_window_size(h->ch);
        if (w == 0 || (ssh_get_poll_flags(cs->ses) & SSH_WRITE_PENDING && i > 0))
            return;
        size_t want = w < IO_CHUNK ? w : IO_CHUNK;
        ssize_t n = read(fd, buf, want);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            *eof = true; /* EIO on a PTY master: the terminal hung up */
            return;
        }
        if (n < 0) {
            if (!is_stderr)
                h->out_drained = true;
            return;
        }
        int wr = is_stderr ? ssh_channel_write_stderr(h->ch, buf, (uint32_t)n)
                           : ssh_channel_write(h->ch, buf, (uint32_t)n);
        if (wr < 0) {
            chan_fail(h);
            return;
        }
        if (wr < n) {
            /* libssh took less (a key re-exchange is running): keep the rest. */
            rp_buf_append(&h->outpend, buf + wr, (size_t)(n - wr));
            h->outpend_stderr = is_stderr;
        }
        h->tx += (uint64_t)n;
        cs->last_activity_mono = rp_mono_ms();
        if (!is_stderr)
            sftp_observe(h, false, buf, (size_t)n);
        const struct agent_sshd_recording *r = cs->s->recording;
        if (h->rec != NULL && r != NULL && r->output(h->rec, buf, (size_t)n) != 0 &&
            !rec_failure_ok(h, "output"))
            chan_hangup(h, "\r\nThe session recording cannot be written: the session ends.\r\n");
        if (wr < n)
            return;
    }
}

/* client -> fd, through a bounded buffer. */
static void pump_in(struct chan *h)
{
    struct conn_state *cs = h->cs;
    char *buf = cs->io;
    for (int i = 0; i < 64; i++) {
        if (h->inoff < h->inbuf.len && h->in_fd >= 0 && !h->in_broken) {
            ssize_t n = write(h->in_fd, h->inbuf.data + h->inoff, h->inbuf.len - h->inoff);
            if (n > 0) {
                h->inoff += (size_t)n;
            } else if (n < 0 && errno != EAGAIN && errno != EINTR) {
                h->in_broken = true; /* the reader is gone: drop what comes */
            }
        }
        if (h->inoff == h->inbuf.len || h->in_broken) {
            h->inoff = 0;
            h->inbuf.len = 0;
        }
        /* Bytes the client sent just before its EOF can still sit in libssh (they may
         * arrive in the same read as the EOF): read until it has none. */
        if (h->inbuf.len >= INBUF_CAP || h->eof_drained)
            break;
        /* The child's side is full: leave the rest in libssh, the window closes. */
        if (h->inbuf.len > 0 && h->inoff == 0 && i > 0)
            break;
        int n = ssh_channel_read_nonblocking(h->ch, buf, IO_CHUNK, 0);
        if (n == SSH_ERROR) {
            chan_fail(h);
            return;
        }
        if (n <= 0) {
            h->more_input = false;
            h->eof_drained = h->client_eof;
            break;
        }
        /* Less than asked: libssh's buffer for the channel is empty (asking again
         * would poll the socket for nothing). */
        if ((size_t)n < IO_CHUNK)
            h->more_input = false;
        h->rx += (uint64_t)n;
        cs->last_activity_mono = rp_mono_ms();
        if (rp_buf_append(&h->inbuf, buf, (size_t)n) != 0) {
            chan_fail(h);
            return;
        }
        sftp_observe(h, true, buf, (size_t)n);
        const struct agent_sshd_recording *r = cs->s->recording;
        if (h->rec != NULL && r != NULL && cs->g.opt.record_ssh_input &&
            r->input(h->rec, buf, (size_t)n) != 0 && !rec_failure_ok(h, "input"))
            chan_hangup(h, "\r\nThe session recording cannot be written: the session ends.\r\n");
        if (!h->more_input)
            break;
    }
    if (h->eof_drained && h->inoff == h->inbuf.len && h->in_fd >= 0 && !h->pty) {
        if (h->kind == CH_SESSION) {
            close_fd(&h->in_fd); /* the child reads EOF */
        } else if (h->in_fd == h->out_fd) {
            shutdown(h->in_fd, SHUT_WR);
            h->in_broken = true;
        }
    }
}

static void reap(struct chan *h)
{
    if (h->pid <= 0 || h->exited)
        return;
    int st = 0;
    pid_t r = waitpid(h->pid, &st, WNOHANG);
    if (r == h->pid || (r < 0 && errno == ECHILD)) {
        h->exited = true;
        h->wstatus = r == h->pid ? st : (255 << 8);
        close_fd(&h->pidfd);
    }
}

static void service_chan(struct chan *h)
{
    if (h->done)
        return;
    if (h->kind == CH_AGENT && h->opening) {
        int rc = ssh_channel_open_auth_agent(h->ch);
        if (rc == SSH_AGAIN)
            return;
        h->opening = false;
        if (rc != SSH_OK) {
            h->client_close = true;
            chan_close_fds(h);
            h->done = true;
            return;
        }
    }
    if (h->client_close && h->kind != CH_SESSION) {
        chan_close_fds(h);
        h->done = true;
        return;
    }
    if (h->kind == CH_SESSION) {
        if (h->pid_ready || h->pidfd < 0)
            reap(h);
        if (h->type == T_NONE) {
            if (h->refused && h->ch != NULL && ssh_channel_is_open(h->ch)) {
                ssh_channel_send_eof(h->ch);
                ssh_channel_close(h->ch);
                h->done = true;
            }
            if (h->client_close)
                h->done = true;
            return;
        }
        if (h->client_close) {
            /* The client went away first: hang the child up, reap it, report. */
            if (!h->exited) {
                chan_hangup(h, NULL);
                chan_close_fds(h);
                return;
            }
            chan_close_fds(h);
            rec_close(h);
            chan_session_end_events(h);
            h->done = true;
            return;
        }
    }
    if (h->more_input || h->in_ready || (h->client_eof && !h->eof_drained) ||
        (h->eof_drained && h->inoff < h->inbuf.len))
        pump_in(h);
    h->out_drained = false;
    if (h->out_fd >= 0 && !h->out_eof && (h->out_ready || h->outpend.len > 0 || h->exited))
        pump_out(h, h->out_fd, false, &h->out_eof);
    if (h->err_fd >= 0 && !h->err_eof && (h->err_ready || h->outpend.len > 0 || h->exited))
        pump_out(h, h->err_fd, true, &h->err_eof);
    if (h->kind == CH_SESSION) {
        if (h->exited && h->pty && !h->out_eof && h->out_drained) {
            /* The shell is gone; what its terminal still holds was just read. Other
             * holders of the terminal (background jobs) do not keep the session. */
            h->out_eof = true;
        }
        bool out_done = h->out_eof || h->out_fd < 0;
        bool err_done = h->err_eof || h->err_fd < 0;
        if (h->exited && out_done && err_done)
            chan_finish_session(h);
        return;
    }
    /* Forwarded sockets: EOF each way, then close. */
    if (h->out_eof && !h->eof_sent && h->outpend.len == 0) {
        ssh_channel_send_eof(h->ch);
        h->eof_sent = true;
    }
    if (h->eof_sent && ((h->eof_drained && h->inoff == h->inbuf.len) || h->in_broken)) {
        ssh_channel_close(h->ch);
        chan_close_fds(h);
        h->done = true;
    }
}

static void sweep(struct conn_state *cs)
{
    struct chan **pp = &cs->chans;
    while (*pp != NULL) {
        struct chan *h = *pp;
        if (!h->done) {
            pp = &h->next;
            continue;
        }
        *pp = h->next;
        chan_release_channel(h);
        chan_close_fds(h);
        close_fd(&h->pidfd);
        if (h->counted) {
            cs->n_sessions--;
            sshd_sessions_add(cs->s, -1);
        }
        for (size_t i = 0; i < h->n_env; i++)
            free(h->env[i]);
        free(h->env);
        free(h->command);
        free(h->original_command);
        sftp_audit_free(h->sftp);
        rp_buf_free(&h->inbuf);
        rp_buf_free(&h->outpend);
        cs->n_chans--;
        free(h);
    }
}

/* Ends every channel now: children hung up, then killed if they linger, reaped. */
static void close_all(struct conn_state *cs)
{
    for (struct chan *h = cs->chans; h != NULL; h = h->next) {
        if (h->done)
            continue;
        if (h->kind == CH_SESSION && h->pid > 0 && !h->exited)
            chan_hangup(h, NULL);
    }
    uint64_t until = rp_mono_ms() + 2000;
    for (struct chan *h = cs->chans; h != NULL; h = h->next) {
        if (h->done || h->kind != CH_SESSION)
            continue;
        while (h->pid > 0 && !h->exited) {
            reap(h);
            if (h->exited)
                break;
            if (rp_mono_ms() >= until) {
                kill(-h->pid, SIGKILL);
                kill(h->pid, SIGKILL);
                int st;
                if (waitpid(h->pid, &st, 0) == h->pid)
                    h->wstatus = st;
                h->exited = true;
                break;
            }
            struct pollfd p = {h->pidfd, POLLIN, 0};
            poll(&p, h->pidfd >= 0 ? 1 : 0, 20);
        }
        if (h->type != T_NONE) {
            if (h->ch != NULL && ssh_channel_is_open(h->ch)) {
                if (h->exited)
                    chan_finish_session(h);
            } else {
                chan_close_fds(h);
                rec_close(h);
                chan_session_end_events(h);
            }
        }
        h->done = true;
    }
    for (struct chan *h = cs->chans; h != NULL; h = h->next) {
        if (h->ch != NULL && ssh_channel_is_open(h->ch))
            ssh_channel_close(h->ch);
        h->done = true;
    }
    sweep(cs);
}

static void audit_disconnect(struct conn_state *cs, const char *reason)
{
    struct sshd_ev ev = {.event = "client.disconnect",
                         .code = "T3006I",
                         .user = cs->g.user,
                         .login = cs->login,
                         .k = {"reason"},
                         .v = {reason}};
    sshd_emit(cs->s, cs->c, &ev);
    rp_warn(SSHD_LOG, "disconnecting %s@%s from %s: %s", cs->g.user, cs->login, cs->c->remote,
            reason);
}

/* Tells the PTY sessions that the node stops (once). */
static void tell_stop(struct conn_state *cs, uint64_t left_ms)
{
    char msg[160];
    snprintf(msg, sizeof msg,
             "\r\n[raftport] This node is shutting down: the session ends in %llu s.\r\n",
             (unsigned long long)((left_ms + 999) / 1000));
    for (struct chan *h = cs->chans; h != NULL; h = h->next)
        if (h->kind == CH_SESSION && h->pty && !h->done && !h->stop_told) {
            h->stop_told = true;
            send_to_client(h, msg);
        }
}

/* Why the connection must end now ("" if it need not). */
static bool must_close(struct conn_state *cs, uint64_t now, int *timeout)
{
    struct agent_sshd *s = cs->s;
    if (atomic_exchange(&cs->c->recheck, false)) {
        char why[SSHD_WHY];
        if (sshd_lock_recheck(s->authority, &cs->g, cs->login, s->host_id, why, sizeof why) != 0) {
            snprintf(cs->close_reason, sizeof cs->close_reason, "%s", why);
            return true;
        }
    }
    if (atomic_load(&cs->c->stop)) {
        pthread_mutex_lock(&s->mu);
        uint64_t deadline = s->stop_deadline_mono;
        pthread_mutex_unlock(&s->mu);
        if (!cs->stop_seen) {
            cs->stop_seen = true;
            tell_stop(cs, deadline > now ? deadline - now : 0);
        }
        if (now >= deadline || cs->n_chans == 0) {
            snprintf(cs->close_reason, sizeof cs->close_reason, "the node is shutting down");
            return true;
        }
        int left = (int)(deadline - now);
        if (left < *timeout)
            *timeout = left;
    }
    uint64_t idle = cs->g.opt.client_idle_timeout_ms;
    if (idle > 0) {
        uint64_t due = cs->last_activity_mono + idle;
        if (now >= due) {
            snprintf(cs->close_reason, sizeof cs->close_reason,
                     "client is idle for longer than client_idle_timeout (%llu ms)",
                     (unsigned long long)idle);
            return true;
        }
        if ((int64_t)(due - now) < *timeout)
            *timeout = (int)(due - now);
    }
    if (cs->g.opt.disconnect_expired_cert && cs->g.valid_before != RP_SSH_CERT_FOREVER) {
        uint64_t now_s = (uint64_t)time(NULL);
        if (now_s >= cs->g.valid_before) {
            snprintf(cs->close_reason, sizeof cs->close_reason,
                     "the client's certificate expired (disconnect_expired_cert)");
            return true;
        }
        uint64_t left = (cs->g.valid_before - now_s) * 1000;
        if (left < (uint64_t)*timeout)
            *timeout = (int)left;
    }
    return false;
}

enum { W_NONE, W_OUT, W_ERR, W_IN, W_PID };

static void channel_loop(struct conn_state *cs)
{
    struct sshd_conn *c = cs->c;
    size_t cap = 0;
    struct pollfd *p = NULL;
    struct chan **owner = NULL;
    unsigned char *what = NULL;
    cs->last_activity_mono = rp_mono_ms();
    for (;;) {
        int timeout = 1000;
        uint64_t now = rp_mono_ms();
        if (must_close(cs, now, &timeout)) {
            audit_disconnect(cs, cs->close_reason);
            if (!atomic_load(&c->stop) || cs->n_chans > 0) {
                char msg[SSHD_WHY + 16];
                snprintf(msg, sizeof msg, "\r\n%s\r\n", cs->close_reason);
                for (struct chan *h = cs->chans; h != NULL; h = h->next)
                    if (h->kind == CH_SESSION && h->pty)
                        send_to_client(h, msg);
            }
            break;
        }
        size_t need = 3 + (size_t)cs->n_chans * 4;
        if (cap < need) {
            size_t ncap = need + 16;
            struct pollfd *np = realloc(p, ncap * sizeof *p);
            if (np != NULL)
                p = np;
            struct chan **no = realloc(owner, ncap * sizeof *owner);
            if (no != NULL)
                owner = no;
            unsigned char *nw = realloc(what, ncap);
            if (nw != NULL)
                what = nw;
            if (np == NULL || no == NULL || nw == NULL)
                break;
            cap = ncap;
        }
        size_t n = 0;
        short sev = POLLIN;
        if (ssh_get_poll_flags(cs->ses) & SSH_WRITE_PENDING)
            sev |= POLLOUT;
        p[n] = (struct pollfd){ssh_get_fd(cs->ses), sev, 0};
        owner[n] = NULL;
        what[n++] = W_NONE;
        p[n] = (struct pollfd){c->wake[0], POLLIN, 0};
        owner[n] = NULL;
        what[n++] = W_NONE;
        size_t agent_at = 0;
        if (cs->agent_listen_fd >= 0) {
            agent_at = n;
            p[n] = (struct pollfd){cs->agent_listen_fd, POLLIN, 0};
            owner[n] = NULL;
            what[n++] = W_NONE;
        }
        for (struct chan *h = cs->chans; h != NULL; h = h->next) {
            if (h->done || h->ch == NULL || h->opening)
                continue;
            bool open_window = ssh_channel_window_size(h->ch) > 0 && h->outpend.len == 0;
            if (h->out_fd >= 0 && !h->out_eof && open_window) {
                p[n] = (struct pollfd){h->out_fd, POLLIN, 0};
                owner[n] = h;
                what[n++] = W_OUT;
            }
            if (h->in_fd >= 0 && !h->in_broken && h->inoff < h->inbuf.len) {
                p[n] = (struct pollfd){h->in_fd, POLLOUT, 0};
                owner[n] = h;
                what[n++] = W_IN;
            }
            if (h->err_fd >= 0 && !h->err_eof && open_window) {
                p[n] = (struct pollfd){h->err_fd, POLLIN, 0};
                owner[n] = h;
                what[n++] = W_ERR;
            }
            if (h->pid > 0 && !h->exited) {
                if (h->pidfd >= 0) {
                    p[n] = (struct pollfd){h->pidfd, POLLIN, 0};
                    owner[n] = h;
                    what[n++] = W_PID;
                } else if (timeout > 50) {
                    timeout = 50; /* no pidfd: look for the exit now and then */
                }
            }
        }
        int rc = poll(p, (nfds_t)n, timeout);
        if (rc < 0 && errno != EINTR)
            break;
        if (p[1].revents) {
            char drain[64];
            while (read(c->wake[0], drain, sizeof drain) > 0)
                ;
        }
        bool ssh_in = p[0].revents != 0;
        if (ssh_in || (ssh_get_poll_flags(cs->ses) & SSH_WRITE_PENDING)) {
            if (ssh_event_dopoll(cs->ev, 0) == SSH_ERROR)
                break;
        }
        if (agent_at > 0 && p[agent_at].revents)
            agent_accept(cs);
        for (size_t i = 0; i < n; i++) {
            struct chan *h = owner[i];
            if (h == NULL || p[i].revents == 0)
                continue;
            h->out_ready |= what[i] == W_OUT;
            h->err_ready |= what[i] == W_ERR;
            h->in_ready |= what[i] == W_IN;
            h->pid_ready |= what[i] == W_PID;
        }
        for (struct chan *h = cs->chans; h != NULL; h = h->next) {
            service_chan(h);
            h->out_ready = h->err_ready = h->in_ready = h->pid_ready = false;
        }
        sweep(cs);
        if (!ssh_is_connected(cs->ses) || ssh_get_status(cs->ses) & (SSH_CLOSED | SSH_CLOSED_ERROR))
            break;
    }
    free(p);
    free(owner);
    free(what);
}

/* ---- the connection ------------------------------------------------------------------ */

void *sshd_conn_main(void *arg)
{
    struct sshd_conn *c = arg;
    struct agent_sshd *s = c->srv;
    struct conn_state *cs = calloc(1, sizeof *cs);
    if (cs == NULL)
        goto unregister;
    cs->c = c;
    cs->s = s;
    cs->ses = c->ses;
    cs->agent_listen_fd = -1;

    ssh_set_auth_methods(cs->ses, SSH_AUTH_METHOD_PUBLICKEY);
    cs->scb.userdata = cs;
    cs->scb.auth_pubkey_function = on_auth_pubkey;
    cs->scb.channel_open_request_session_function = on_channel_open_session;
    ssh_callbacks_init(&cs->scb);
    ssh_set_server_callbacks(cs->ses, &cs->scb);
    /* Before anything else: a CHANNEL_OPEN that arrives with the auth success would
     * otherwise be queued where a later callback never sees it. */
    ssh_set_message_callback(cs->ses, on_message, cs);

    if (!atomic_load(&c->stop) && ssh_handle_key_exchange(cs->ses) == SSH_OK) {
        cs->ev = ssh_event_new();
        if (cs->ev != NULL && ssh_event_add_session(cs->ev, cs->ses) == SSH_OK) {
            while (!cs->authed && !atomic_load(&c->stop)) {
                if (ssh_event_dopoll(cs->ev, 200) == SSH_ERROR)
                    break;
                pthread_mutex_lock(&s->mu);
                bool cut = c->cut;
                pthread_mutex_unlock(&s->mu);
                if (cut || !ssh_is_connected(cs->ses))
                    break;
            }
        }
    }
    pthread_mutex_lock(&s->mu);
    bool cut = c->cut;
    pthread_mutex_unlock(&s->mu);
    if (!cs->authed) {
        if (cut && !atomic_load(&c->stop)) {
            char why[128];
            snprintf(why, sizeof why, "authentication did not finish within %llu ms",
                     (unsigned long long)s->auth_deadline_ms);
            audit_refusal(cs, NULL, why);
        } else {
            rp_debug(SSHD_LOG, "connection from %s ended before authentication: %s", c->remote,
                     ssh_get_error(cs->ses));
        }
        goto teardown;
    }
    sshd_conn_authed(c);
    ssh_set_blocking(cs->ses, 0);
    channel_loop(cs);
    close_all(cs);

teardown:
    if (cs->agent_listen_fd >= 0) {
        close(cs->agent_listen_fd);
        unlink(cs->agent_sock);
        rmdir(cs->agent_dir);
    }
    if (cs->ev != NULL) {
        ssh_event_remove_session(cs->ev, cs->ses);
        ssh_event_free(cs->ev);
    }
    sshd_grant_free(&cs->g);
    free(cs->home);
    free(cs->shell);
    free(cs->groups);
    free(cs);
unregister:
    pthread_mutex_lock(&s->mu);
    c->cut = true; /* the watchdog must not touch the fd once it is closed */
    pthread_mutex_unlock(&s->mu);
    ssh_disconnect(c->ses);
    ssh_free(c->ses);
    pthread_mutex_lock(&s->mu);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    s->n_conns--;
    if (!c->authed)
        s->n_unauth--;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    close(c->wake[0]);
    close(c->wake[1]);
    free(c);
    return NULL;
}
