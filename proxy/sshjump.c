/* proxy/sshjump.c: the proxy's SSH jump host (proxy/sshjump.h says what it serves).
 *
 * The listener thread accepts within the caps, hands each socket to a libssh session
 * (ssh_bind_accept_fd does no I/O) and starts the connection's thread; it is also the
 * watchdog of the authentication deadline: a connection not authenticated in time
 * gets its socket shut down, which ends whatever libssh call its thread is in.
 *
 * A connection's thread owns its libssh session and channels. It runs the key
 * exchange and authentication (blocking, bounded by the watchdog), then one poll()
 * loop over the SSH socket, a wake pipe (stop) and each tunnel's socket. The tunnels
 * are pumped by hand, never with ssh_connector (it stalls in 0.10):
 *   node -> client: read only while the client's window is open, at most the window,
 *     so libssh never holds more than the client allowed;
 *   client -> node: ssh_channel_read_nonblocking into a bounded buffer, only while it
 *     has room; a node that does not read closes the client's window.
 * libssh callbacks only record what was asked; the loop does all I/O and frees
 * channels only after removing their callbacks (0.10 may call them after a free). */
#include "proxy/sshjump.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libssh/callbacks.h>
#include <libssh/libssh.h>
#include <libssh/server.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "agent/sshd_int.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/util.h"

#define JUMP_LOG "sshjump"
#define DEFAULT_LISTEN "0.0.0.0:3023"
#define DEFAULT_AUTH_DEADLINE_MS 20000
#define DEFAULT_MAX_UNAUTH 64
#define DEFAULT_MAX_CONNS 512
#define DEFAULT_DIAL_TIMEOUT_MS 15000
#define MAX_AUTH_ATTEMPTS 10
#define MAX_CHANNELS 64
#define MAX_USER 255
#define REFUSED_LOG_EVERY_MS 10000
#define LOCK_RECHECK_MS 1000
/* An authenticated connection with no channel this long is closed: a jump host's
 * connections exist for their tunnels, and the connection cap must not fill up with
 * forgotten ones. */
#define IDLE_NO_CHANNEL_MS (5 * 60 * 1000)
/* Client bytes held for a node that does not read: past this the channel is not read
 * and the client's window closes. */
#define INBUF_CAP (512 * 1024)
#define IO_CHUNK (64 * 1024)
#define WHY 512

static const char jump_refusal[] =
    "raftport: this is a jump host: use ssh -J USER@PROXY:PORT LOGIN@NODE (see `tsh ls` for "
    "the nodes)\r\n";

struct jconn;

struct px_sshjump {
    char *listen_addr, *host_key_path, *server_id, *hostname;
    char fingerprint[128]; /* of the host key, for the log */
    struct agent_authority authority;
    px_sshjump_route_fn route;
    void *route_arg;
    int (*emit)(void *arg, const void *ev, size_t len);
    void *emit_arg;
    uint64_t auth_deadline_ms;
    unsigned max_unauthenticated, max_connections;
    int dial_timeout_ms;

    int listen_fd;
    int port;
    int wake[2];
    ssh_bind bind;
    pthread_t listener;
    bool listener_running;

    pthread_mutex_t mu; /* guards the fields below and every conn's links, authed, cut */
    pthread_cond_t cond;
    struct jconn *conns;
    size_t n_conns, n_unauth;
    bool stopping;
    uint64_t refused_log_mono;
    unsigned refused_since_log;
};

struct jconn {
    struct px_sshjump *srv;
    struct jconn *prev, *next;
    int fd; /* owned by the libssh session once accepted */
    int wake[2];
    ssh_session ses;
    char remote[80], local[80];
    struct sockaddr_storage peer;
    uint64_t accepted_mono;
    bool authed; /* under srv->mu */
    bool cut;    /* the watchdog or stop shut the socket down (under srv->mu) */
    atomic_bool stop;
};

enum chan_kind { CH_SESSION, CH_TUNNEL };

struct jchan {
    struct jstate *cs;
    struct jchan *next;
    ssh_channel ch; /* NULL once released */
    struct ssh_channel_callbacks_struct cb;
    enum chan_kind kind;
    bool client_eof, eof_drained, client_close, done, eof_sent;
    /* CH_SESSION: a shell, exec or subsystem was asked for: refuse it (once). */
    bool refuse, refused;
    char what[64];
    /* CH_TUNNEL */
    int fd;
    bool fd_eof, in_broken, shut_wr;
    bool out_ready, in_ready, more_input;
    struct rp_buf inbuf; /* client bytes not yet written to fd */
    size_t inoff;
    struct rp_buf outpend; /* node bytes libssh did not take yet */
    char target[300];
    uint64_t tx, rx;
};

struct jstate {
    struct jconn *c;
    struct px_sshjump *s;
    ssh_session ses;
    ssh_event ev;
    struct ssh_server_callbacks_struct scb;
    int auth_attempts;
    bool authed;
    char login[MAX_USER + 1]; /* the SSH user name the client gave */
    struct sshd_grant g;
    struct rp_identity ident; /* borrows from g: never rp_identity_free'd */
    struct jchan *chans;
    unsigned n_chans;
    uint64_t next_lock_check;
    uint64_t last_busy_mono; /* the last time a channel was open */
    char close_reason[WHY * 2];
    /* The pump's scratch buffer. Not thread-local: static TLS is reserved in every
     * thread of the process, whose stacks are small (256 KiB for the hash pool's). */
    char *io;
    bool disconnect; /* close the connection, telling the client close_reason */
};

/* ---- audit ------------------------------------------------------------------------ */

/* A proxy emits only its refusals (auth accepts "auth" and "session.rejected" from a
 * Proxy identity): what a tunnel carries is the user's session with the node, which the
 * node audits itself. Tunnels opened and closed go to the log. */

struct jev {
    const char *event, *code;
    const char *k[6];
    const char *v[6];
};

static void jump_emit(struct jstate *cs, const struct jev *ev)
{
    struct px_sshjump *s = cs->s;
    if (s->emit == NULL)
        return;
    struct rp_buf b;
    rp_buf_init(&b);
    msgpack_packer pk;
    rp_mp_packer_init(&pk, &b);
    struct rp_mp_map m;
    rp_mp_map_begin(&pk, &m);
    char uid[37];
    if (rp_uuid_v4(uid) != 0)
        uid[0] = '\0';
    rp_mp_map_str(&m, "event", ev->event);
    rp_mp_map_str(&m, "code", ev->code);
    rp_mp_map_u64(&m, "time", rp_now_ms());
    rp_mp_map_str(&m, "uid", uid);
    rp_mp_map_str(&m, "server_id", s->server_id);
    rp_mp_map_str(&m, "server_hostname", s->hostname);
    rp_mp_map_str(&m, "addr.remote", cs->c->remote);
    rp_mp_map_str(&m, "addr.local", cs->c->local);
    rp_mp_map_str(&m, "user", cs->g.user ? cs->g.user : "");
    rp_mp_map_str(&m, "login", cs->login);
    for (size_t i = 0; i < 6 && ev->k[i] != NULL; i++)
        rp_mp_map_str(&m, ev->k[i], ev->v[i] ? ev->v[i] : "");
    rp_mp_map_end(&m);
    if (b.data != NULL && s->emit(s->emit_arg, b.data, b.len) != 0)
        rp_warn(JUMP_LOG, "audit event %s could not be emitted: %s", ev->event, rp_errmsg());
    rp_buf_free(&b);
}

static void audit_auth_refusal(struct jstate *cs, const char *user, const char *why)
{
    struct jev ev = {.event = "auth",
                     .code = "T3007W",
                     .k = {"reason", "error", "method", "teleport_user"},
                     .v = {why, why, "publickey", user ? user : ""}};
    jump_emit(cs, &ev);
    rp_warn(JUMP_LOG, "refused %s from %s (user %s): %s", cs->login[0] ? cs->login : "?",
            cs->c->remote, user && user[0] ? user : "?", why);
}

static void audit_rejected(struct jstate *cs, const char *target, const char *why)
{
    struct jev ev = {.event = "session.rejected",
                     .code = "T1006W",
                     .k = {"reason", "error", "target"},
                     .v = {why, why, target}};
    jump_emit(cs, &ev);
    rp_warn(JUMP_LOG, "%s from %s: %s refused: %s", cs->g.user ? cs->g.user : "?", cs->c->remote,
            target, why);
}

/* ---- authentication ----------------------------------------------------------------- */

/* A Teleport user name as an SSH user name: printable, no spaces. */
static bool valid_user(const char *u)
{
    size_t n = strlen(u);
    if (n == 0 || n > MAX_USER)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)u[i] <= ' ' || u[i] == 0x7f)
            return false;
    return true;
}

static int check_locks(struct jstate *cs, char *why, size_t why_len)
{
    const struct agent_authority *a = &cs->s->authority;
    why[0] = '\0';
    int rv = a->lock_check(a->arg, cs->g.user, (const char *const *)cs->g.roles, cs->g.n_roles,
                           NULL, NULL, why, why_len);
    if (rv != 0 && why[0] == '\0')
        snprintf(why, why_len, "the locks cannot be read: %s", rp_errmsg());
    return rv;
}

static int on_auth_pubkey(ssh_session ses, const char *user, struct ssh_key_struct *pubkey,
                          char state, void *ud)
{
    struct jstate *cs = ud;
    char why[WHY];
    /* Only a name that passes valid_user is ever quoted (logs, audit). */
    bool user_ok = user != NULL && valid_user(user);
    snprintf(cs->login, sizeof cs->login, "%s", user_ok ? user : "(invalid)");
    if (state != SSH_PUBLICKEY_STATE_NONE && state != SSH_PUBLICKEY_STATE_VALID)
        return SSH_AUTH_DENIED;
    if (++cs->auth_attempts > MAX_AUTH_ATTEMPTS) {
        if (cs->auth_attempts == MAX_AUTH_ATTEMPTS + 1)
            audit_auth_refusal(cs, NULL, "too many authentication attempts");
        return SSH_AUTH_DENIED;
    }
    if (!user_ok) {
        audit_auth_refusal(cs, NULL, "the user name is empty, too long or not printable");
        return SSH_AUTH_DENIED;
    }
    char *b64 = NULL;
    if (ssh_pki_export_pubkey_base64(pubkey, &b64) != SSH_OK || b64 == NULL) {
        audit_auth_refusal(cs, NULL, "the offered key cannot be read");
        return SSH_AUTH_DENIED;
    }
    const char *type = ssh_key_type_to_char(ssh_key_type(pubkey));
    struct sshd_decide_in in = {.authority = &cs->s->authority,
                                .host_id = NULL,
                                .login = user,
                                .cert_type = type ? type : "unknown",
                                .cert_b64 = b64,
                                .peer = &cs->c->peer,
                                .now_s = (uint64_t)time(NULL),
                                .login_may_be_key_id = true};
    struct sshd_grant g;
    int rv = sshd_cert_decide(&in, &g, why, sizeof why);
    ssh_string_free_char(b64);
    if (rv != 0) {
        audit_auth_refusal(cs, g.user, why);
        sshd_grant_free(&g);
        return SSH_AUTH_DENIED;
    }
    if (state == SSH_PUBLICKEY_STATE_NONE) {
        sshd_grant_free(&g); /* decided again once the signature is proven */
        return SSH_AUTH_SUCCESS;
    }
    sshd_grant_free(&cs->g);
    cs->g = g;
    rv = check_locks(cs, why, sizeof why);
    if (rv != 0) {
        audit_auth_refusal(cs, cs->g.user, why);
        sshd_grant_free(&cs->g);
        return SSH_AUTH_DENIED;
    }
    cs->ident = (struct rp_identity){
        .name = cs->g.user,
        .groups = cs->g.roles,
        .n_groups = cs->g.n_roles,
        .logins = cs->g.principals,
        .n_logins = cs->g.n_principals,
        .not_after = cs->g.valid_before == RP_SSH_CERT_FOREVER ? 0 : (long long)cs->g.valid_before,
        .system_role = RP_SYS_NONE};
    cs->authed = true;
    /* Out of the unauthenticated count now, not after this dispatch returns: a
     * direct-tcpip open that came with the authentication is routed (a dial of up to
     * dial_timeout_ms) before it does, and the watchdog must not cut it meanwhile. */
    pthread_mutex_lock(&cs->s->mu);
    cs->c->authed = true;
    cs->s->n_unauth--;
    pthread_mutex_unlock(&cs->s->mu);
    rp_info(JUMP_LOG, "accepted %s (as %s) from %s (certificate serial %llu)", cs->g.user,
            cs->login, cs->c->remote, (unsigned long long)cs->g.serial);
    return SSH_AUTH_SUCCESS;
}

/* ---- channels ------------------------------------------------------------------------ */

static struct jchan *chan_new(struct jstate *cs, enum chan_kind kind)
{
    if (cs->n_chans >= MAX_CHANNELS)
        return NULL;
    struct jchan *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->cs = cs;
    h->kind = kind;
    h->fd = -1;
    rp_buf_init(&h->inbuf);
    rp_buf_init(&h->outpend);
    h->next = cs->chans;
    cs->chans = h;
    cs->n_chans++;
    return h;
}

static unsigned open_channels(struct jstate *cs)
{
    unsigned n = 0;
    for (struct jchan *h = cs->chans; h != NULL; h = h->next)
        n += !h->done;
    return n;
}

/* Client bytes stay in libssh (0 consumed) until the pump has room for them. */
static int on_data(ssh_session ses, ssh_channel ch, void *data, uint32_t len, int is_stderr,
                   void *ud)
{
    if (!is_stderr)
        ((struct jchan *)ud)->more_input = true;
    return 0;
}

static void on_eof(ssh_session ses, ssh_channel ch, void *ud)
{
    ((struct jchan *)ud)->client_eof = true;
}

static void on_close(ssh_session ses, ssh_channel ch, void *ud)
{
    struct jchan *h = ud;
    h->client_eof = h->client_close = true;
}

/* A PTY is granted so that the refusal below reaches an interactive client as text. */
static int on_pty_request(ssh_session ses, ssh_channel ch, const char *term, int w, int hgt,
                          int pxw, int pxh, void *ud)
{
    return 0;
}

static void refuse_session(struct jchan *h, const char *what)
{
    if (!h->refuse) {
        h->refuse = true;
        snprintf(h->what, sizeof h->what, "%s", what);
    }
}

/* Accepted (0) so that OpenSSH shows our message and exit status instead of a bare
 * "request failed"; the loop then refuses the session. */
static int on_shell_request(ssh_session ses, ssh_channel ch, void *ud)
{
    refuse_session(ud, "a shell");
    return 0;
}

static int on_exec_request(ssh_session ses, ssh_channel ch, const char *command, void *ud)
{
    refuse_session(ud, "a command");
    return 0;
}

static int on_subsystem_request(ssh_session ses, ssh_channel ch, const char *name, void *ud)
{
    refuse_session(ud, "a subsystem");
    return 0;
}

static void chan_set_callbacks(struct jchan *h)
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
    }
    ssh_callbacks_init(&h->cb);
    ssh_set_channel_callbacks(h->ch, &h->cb);
}

static ssh_channel on_channel_open_session(ssh_session ses, void *ud)
{
    struct jstate *cs = ud;
    if (!cs->authed || atomic_load(&cs->c->stop))
        return NULL;
    struct jchan *h = chan_new(cs, CH_SESSION);
    if (h == NULL)
        return NULL;
    h->ch = ssh_channel_new(ses);
    if (h->ch == NULL) {
        h->done = true;
        return NULL;
    }
    chan_set_callbacks(h);
    return h->ch;
}

/* A destination host as the client sent it: printable, no spaces, at most 255. */
static bool valid_host(const char *host)
{
    size_t n = host ? strlen(host) : 0;
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)host[i] <= ' ' || host[i] == 0x7f)
            return false;
    return true;
}

/* direct-tcpip: the one thing this server forwards. The route (a dial through a
 * tunnel or TCP, bounded by dial_timeout_ms) runs here, inside libssh's dispatch:
 * the connection's other channels wait meanwhile, which for a jump host's usual
 * one channel per connection costs nothing. libssh 0.10 frees the message when this
 * returns, so the channel cannot be accepted later. */
static int on_message(ssh_session ses, ssh_message msg, void *ud)
{
    struct jstate *cs = ud;
    if (ssh_message_type(msg) != SSH_REQUEST_CHANNEL_OPEN ||
        ssh_message_subtype(msg) != SSH_CHANNEL_DIRECT_TCPIP || !cs->authed)
        return 1; /* libssh's default answer: refused */
    const char *host = ssh_message_channel_request_open_destination(msg);
    int port = ssh_message_channel_request_open_destination_port(msg);
    struct px_sshjump *s = cs->s;
    char target[300], why[WHY];
    /* Only a host that passes valid_host is ever quoted (logs, audit, the client). */
    bool host_ok = valid_host(host);
    snprintf(target, sizeof target, "%.255s:%d", host_ok ? host : "(invalid host)", port);
    /* Refusing with an SSH disconnect tells the client why (OpenSSH prints it); a
     * bare open failure would not. Other channels of the connection must not pay
     * for it, so then only this one is refused. */
    bool alone = open_channels(cs) == 0;
    int rv;
    if (!host_ok || port <= 0 || port > 65535) {
        snprintf(why, sizeof why, "the destination %s is not HOST:PORT", target);
        rv = RP_EINVAL;
    } else if (atomic_load(&cs->c->stop)) {
        snprintf(why, sizeof why, "the proxy is shutting down");
        rv = RP_ECLOSED;
    } else if (cs->n_chans >= MAX_CHANNELS) {
        snprintf(why, sizeof why, "%d channels are open on this connection: open another one",
                 MAX_CHANNELS);
        rv = RP_EBUSY;
    } else {
        int fd = -1;
        rp_err_clear();
        rv = s->route(s->route_arg, &cs->ident, target, cs->c->remote, s->dial_timeout_ms, &fd);
        if (rv != 0) {
            snprintf(why, sizeof why, "%s", rp_errmsg()[0] ? rp_errmsg() : rp_strerror(rv));
        } else {
            struct jchan *h = chan_new(cs, CH_TUNNEL);
            if (h == NULL) {
                close(fd);
                snprintf(why, sizeof why, "out of memory");
                rv = RP_ENOMEM;
            } else {
                h->ch = ssh_message_channel_request_open_reply_accept(msg);
                if (h->ch == NULL) {
                    close(fd);
                    h->done = true;
                    return 0;
                }
                int fl = fcntl(fd, F_GETFL);
                if (fl >= 0)
                    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                h->fd = fd;
                snprintf(h->target, sizeof h->target, "%s", target);
                chan_set_callbacks(h);
                rp_info(JUMP_LOG, "%s from %s: tunnel to %s", cs->g.user, cs->c->remote, target);
                return 0;
            }
        }
    }
    audit_rejected(cs, target, why);
    if (!alone)
        return 1;
    snprintf(cs->close_reason, sizeof cs->close_reason, "raftport proxy: cannot reach %s: %.400s",
             target, why);
    cs->disconnect = true;
    return 0; /* no open failure: the disconnect message is the answer */
}

/* ---- the pump ----------------------------------------------------------------------- */

static void chan_fail(struct jchan *h)
{
    if (h->ch != NULL && ssh_channel_is_open(h->ch))
        ssh_channel_close(h->ch);
    h->client_close = true;
}

/* node -> client, within the client's window. */
static void pump_out(struct jchan *h)
{
    char *buf = h->cs->io;
    if (h->outpend.len > 0) {
        uint32_t w = ssh_channel_window_size(h->ch);
        size_t n = h->outpend.len < w ? h->outpend.len : w;
        if (n == 0)
            return;
        int wr = ssh_channel_write(h->ch, h->outpend.data, (uint32_t)n);
        if (wr < 0) {
            chan_fail(h);
            return;
        }
        memmove(h->outpend.data, h->outpend.data + wr, h->outpend.len - (size_t)wr);
        h->outpend.len -= (size_t)wr;
        if (h->outpend.len > 0)
            return;
    }
    for (int i = 0; i < 32 && !h->fd_eof; i++) {
        uint32_t w = ssh_channel_window_size(h->ch);
        if (w == 0 || (i > 0 && (ssh_get_poll_flags(h->cs->ses) & SSH_WRITE_PENDING)))
            return;
        ssize_t n = read(h->fd, buf, w < IO_CHUNK ? w : IO_CHUNK);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            h->fd_eof = true;
            return;
        }
        if (n < 0)
            return;
        int wr = ssh_channel_write(h->ch, buf, (uint32_t)n);
        if (wr < 0) {
            chan_fail(h);
            return;
        }
        h->tx += (uint64_t)n;
        if (wr < n) {
            /* libssh took less (a key re-exchange runs): keep the rest. */
            if (rp_buf_append(&h->outpend, buf + wr, (size_t)(n - wr)) != 0)
                chan_fail(h);
            return;
        }
    }
}

/* client -> node, through a bounded buffer. */
static void pump_in(struct jchan *h)
{
    char *buf = h->cs->io;
    for (int i = 0; i < 64; i++) {
        if (h->inoff < h->inbuf.len && !h->in_broken) {
            ssize_t n = write(h->fd, h->inbuf.data + h->inoff, h->inbuf.len - h->inoff);
            if (n > 0)
                h->inoff += (size_t)n;
            else if (n < 0 && errno != EAGAIN && errno != EINTR)
                h->in_broken = true; /* the node is gone: drop what comes */
        }
        if (h->inoff == h->inbuf.len || h->in_broken) {
            h->inoff = 0;
            h->inbuf.len = 0;
        }
        if (h->inbuf.len >= INBUF_CAP || h->eof_drained)
            break;
        if (h->inbuf.len > 0 && h->inoff == 0 && i > 0)
            break; /* the node's side is full: the rest stays in libssh */
        int n = ssh_channel_read_nonblocking(h->ch, buf, IO_CHUNK, 0);
        if (n == SSH_ERROR) {
            chan_fail(h);
            return;
        }
        if (n <= 0) {
            /* Bytes sent just before the EOF may arrive with it: EOF counts once
             * libssh holds none. */
            h->more_input = false;
            h->eof_drained = h->client_eof;
            break;
        }
        if ((size_t)n < IO_CHUNK)
            h->more_input = false;
        h->rx += (uint64_t)n;
        if (rp_buf_append(&h->inbuf, buf, (size_t)n) != 0) {
            chan_fail(h);
            return;
        }
        if (!h->more_input)
            break;
    }
    if (h->eof_drained && h->inoff == h->inbuf.len && !h->shut_wr) {
        shutdown(h->fd, SHUT_WR);
        h->shut_wr = true;
    }
}

static void service_session(struct jchan *h)
{
    struct jstate *cs = h->cs;
    if (h->client_close) {
        h->done = true;
        return;
    }
    /* What the client sends on a refused session is read and dropped, so that its
     * window never blocks the connection. */
    while (h->more_input && ssh_channel_read_nonblocking(h->ch, cs->io, IO_CHUNK, 0) > 0)
        ;
    h->more_input = false;
    if (!h->refuse || h->refused)
        return;
    h->refused = true;
    char why[128];
    snprintf(why, sizeof why, "%s on the proxy itself: this is a jump host: use ssh -J", h->what);
    audit_rejected(cs, "proxy", why);
    ssh_channel_write_stderr(h->ch, jump_refusal, (uint32_t)strlen(jump_refusal));
    ssh_channel_request_send_exit_status(h->ch, 1);
    ssh_channel_send_eof(h->ch);
    ssh_channel_close(h->ch);
    h->done = true;
}

static void service_tunnel(struct jchan *h)
{
    if (h->client_close) {
        h->done = true;
        return;
    }
    if (h->more_input || h->in_ready || (h->client_eof && !h->eof_drained) ||
        h->inoff < h->inbuf.len)
        pump_in(h);
    if (h->client_close)
        return;
    if (!h->fd_eof && (h->out_ready || h->outpend.len > 0))
        pump_out(h);
    if (h->fd_eof && !h->eof_sent && h->outpend.len == 0 && !h->client_close) {
        ssh_channel_send_eof(h->ch);
        h->eof_sent = true;
    }
    if (h->eof_sent && ((h->eof_drained && h->inoff == h->inbuf.len) || h->in_broken)) {
        ssh_channel_close(h->ch);
        h->done = true;
    }
}

static void sweep(struct jstate *cs)
{
    struct jchan **pp = &cs->chans;
    while (*pp != NULL) {
        struct jchan *h = *pp;
        if (!h->done) {
            pp = &h->next;
            continue;
        }
        *pp = h->next;
        if (h->ch != NULL) {
            ssh_remove_channel_callbacks(h->ch, &h->cb);
            ssh_channel_free(h->ch);
        }
        if (h->fd >= 0) {
            close(h->fd);
            rp_info(JUMP_LOG,
                    "%s from %s: tunnel to %s closed (%llu bytes to the client, %llu "
                    "from it)",
                    cs->g.user, cs->c->remote, h->target, (unsigned long long)h->tx,
                    (unsigned long long)h->rx);
        }
        rp_buf_free(&h->inbuf);
        rp_buf_free(&h->outpend);
        cs->n_chans--;
        free(h);
    }
}

static void close_all(struct jstate *cs)
{
    for (struct jchan *h = cs->chans; h != NULL; h = h->next) {
        if (h->ch != NULL && !h->done && ssh_channel_is_open(h->ch))
            ssh_channel_close(h->ch);
        h->done = true;
    }
    sweep(cs);
}

/* Why the connection must end now, into close_reason. */
static bool must_close(struct jstate *cs)
{
    if (cs->disconnect)
        return true;
    if (atomic_load(&cs->c->stop)) {
        snprintf(cs->close_reason, sizeof cs->close_reason,
                 "raftport proxy: the proxy is shutting down");
        return true;
    }
    uint64_t now = rp_mono_ms();
    if (cs->n_chans > 0)
        cs->last_busy_mono = now;
    else if (now - cs->last_busy_mono >= IDLE_NO_CHANNEL_MS) {
        snprintf(cs->close_reason, sizeof cs->close_reason,
                 "raftport proxy: no channel for %d s: closing (this is a jump host: use ssh -J)",
                 IDLE_NO_CHANNEL_MS / 1000);
        return true;
    }
    if (now >= cs->next_lock_check) {
        cs->next_lock_check = now + LOCK_RECHECK_MS;
        char why[WHY];
        if (check_locks(cs, why, sizeof why) != 0) {
            snprintf(cs->close_reason, sizeof cs->close_reason, "raftport proxy: %s", why);
            audit_rejected(cs, "proxy", why);
            return true;
        }
    }
    return false;
}

enum { W_NONE, W_OUT, W_IN };

static void channel_loop(struct jstate *cs)
{
    size_t cap = 0;
    struct pollfd *p = NULL;
    struct jchan **owner = NULL;
    unsigned char *what = NULL;
    cs->next_lock_check = rp_mono_ms() + LOCK_RECHECK_MS;
    cs->last_busy_mono = rp_mono_ms();
    for (;;) {
        if (must_close(cs))
            break;
        size_t need = 2 + (size_t)cs->n_chans * 2;
        if (cap < need) {
            size_t ncap = need + 8;
            struct pollfd *np = realloc(p, ncap * sizeof *p);
            if (np != NULL)
                p = np;
            struct jchan **no = realloc(owner, ncap * sizeof *owner);
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
        p[n] = (struct pollfd){cs->c->wake[0], POLLIN, 0};
        owner[n] = NULL;
        what[n++] = W_NONE;
        for (struct jchan *h = cs->chans; h != NULL; h = h->next) {
            if (h->done || h->ch == NULL || h->fd < 0)
                continue;
            if (!h->fd_eof && h->outpend.len == 0 && ssh_channel_window_size(h->ch) > 0) {
                p[n] = (struct pollfd){h->fd, POLLIN, 0};
                owner[n] = h;
                what[n++] = W_OUT;
            }
            if (!h->in_broken && h->inoff < h->inbuf.len) {
                p[n] = (struct pollfd){h->fd, POLLOUT, 0};
                owner[n] = h;
                what[n++] = W_IN;
            }
        }
        int rc = poll(p, (nfds_t)n, LOCK_RECHECK_MS);
        if (rc < 0 && errno != EINTR)
            break;
        if (p[1].revents) {
            char drain[64];
            while (read(cs->c->wake[0], drain, sizeof drain) > 0)
                ;
        }
        if (p[0].revents || (ssh_get_poll_flags(cs->ses) & SSH_WRITE_PENDING)) {
            if (ssh_event_dopoll(cs->ev, 0) == SSH_ERROR)
                break;
        }
        if (cs->disconnect)
            break;
        for (size_t i = 2; i < n; i++) {
            if (p[i].revents == 0)
                continue;
            owner[i]->out_ready |= what[i] == W_OUT;
            owner[i]->in_ready |= what[i] == W_IN;
        }
        for (struct jchan *h = cs->chans; h != NULL; h = h->next) {
            if (!h->done) {
                if (h->kind == CH_SESSION)
                    service_session(h);
                else
                    service_tunnel(h);
            }
            h->out_ready = h->in_ready = false;
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

static bool conn_cut(struct jconn *c)
{
    pthread_mutex_lock(&c->srv->mu);
    bool cut = c->cut;
    pthread_mutex_unlock(&c->srv->mu);
    return cut;
}

static void *conn_main(void *arg)
{
    struct jconn *c = arg;
    struct px_sshjump *s = c->srv;
    struct jstate *cs = calloc(1, sizeof *cs);
    if (cs == NULL)
        goto unregister;
    cs->c = c;
    cs->s = s;
    cs->ses = c->ses;
    cs->io = malloc(IO_CHUNK);
    if (cs->io == NULL) {
        free(cs);
        goto unregister;
    }

    ssh_set_auth_methods(cs->ses, SSH_AUTH_METHOD_PUBLICKEY);
    cs->scb.userdata = cs;
    cs->scb.auth_pubkey_function = on_auth_pubkey;
    cs->scb.channel_open_request_session_function = on_channel_open_session;
    ssh_callbacks_init(&cs->scb);
    ssh_set_server_callbacks(cs->ses, &cs->scb);
    /* Before the key exchange: a CHANNEL_OPEN arriving with the auth success would
     * otherwise be queued where a later callback never sees it. */
    ssh_set_message_callback(cs->ses, on_message, cs);

    if (!atomic_load(&c->stop) && ssh_handle_key_exchange(cs->ses) == SSH_OK) {
        cs->ev = ssh_event_new();
        if (cs->ev != NULL && ssh_event_add_session(cs->ev, cs->ses) == SSH_OK) {
            while (!cs->authed && !atomic_load(&c->stop)) {
                if (ssh_event_dopoll(cs->ev, 200) == SSH_ERROR)
                    break;
                if (conn_cut(c) || !ssh_is_connected(cs->ses))
                    break;
            }
        }
    }
    if (!cs->authed) {
        if (conn_cut(c) && !atomic_load(&c->stop)) {
            char why[128];
            snprintf(why, sizeof why, "authentication did not finish within %llu ms",
                     (unsigned long long)s->auth_deadline_ms);
            audit_auth_refusal(cs, NULL, why);
        } else {
            rp_debug(JUMP_LOG, "connection from %s ended before authentication: %s", c->remote,
                     ssh_get_error(cs->ses));
        }
        goto teardown;
    }
    ssh_set_blocking(cs->ses, 0);
    channel_loop(cs);
    if (cs->close_reason[0] != '\0') {
        rp_info(JUMP_LOG, "closing %s from %s: %s", cs->g.user, c->remote, cs->close_reason);
        ssh_session_set_disconnect_message(cs->ses, cs->close_reason);
    }
    close_all(cs);
    /* The disconnect message is small: let it go out before the socket closes, but
     * never wait long on a client that does not read. */
    struct timeval tv = {.tv_sec = 5};
    setsockopt(ssh_get_fd(cs->ses), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    ssh_set_blocking(cs->ses, 1);

teardown:
    if (cs->ev != NULL) {
        ssh_event_remove_session(cs->ev, cs->ses);
        ssh_event_free(cs->ev);
    }
    sshd_grant_free(&cs->g);
    free(cs->io);
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

/* ---- the listener ------------------------------------------------------------------- */

static void wake_fd(int fd)
{
    char x = 1;
    ssize_t n = write(fd, &x, 1);
    (void)n; /* a full pipe already wakes the reader */
}

static void format_addr(const struct sockaddr_storage *sa, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr))
            inet_ntop(AF_INET, &s6->sin6_addr.s6_addr[12], host, sizeof host);
        else
            inet_ntop(AF_INET6, &s6->sin6_addr, host, sizeof host);
        port = ntohs(s6->sin6_port);
        if (strchr(host, ':') != NULL) {
            snprintf(out, n, "[%s]:%d", host, port);
            return;
        }
    } else if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &s4->sin_addr, host, sizeof host);
        port = ntohs(s4->sin_port);
    }
    snprintf(out, n, "%s:%d", host, port);
}

/* Counts a connection refused at accept; one log line at most every 10 s. */
static void refused_at_accept(struct px_sshjump *s, const struct sockaddr_storage *peer,
                              const char *why)
{
    pthread_mutex_lock(&s->mu);
    s->refused_since_log++;
    uint64_t now = rp_mono_ms();
    unsigned refused = 0;
    if (s->refused_log_mono == 0 || now - s->refused_log_mono >= REFUSED_LOG_EVERY_MS) {
        refused = s->refused_since_log;
        s->refused_since_log = 0;
        s->refused_log_mono = now;
    }
    pthread_mutex_unlock(&s->mu);
    if (refused > 0) {
        char addr[80];
        format_addr(peer, addr, sizeof addr);
        rp_warn(JUMP_LOG, "refused %u connection(s) at accept (latest from %s): %s", refused, addr,
                why);
    }
}

static void accept_one(struct px_sshjump *s)
{
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(s->listen_fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
    if (fd < 0)
        return;
    pthread_mutex_lock(&s->mu);
    bool unauth_full = s->n_unauth >= s->max_unauthenticated;
    bool conns_full = s->n_conns >= s->max_connections;
    pthread_mutex_unlock(&s->mu);
    if (unauth_full || conns_full) {
        close(fd);
        char why[160];
        if (unauth_full)
            snprintf(why, sizeof why,
                     "%u connections have not authenticated yet (max_unauthenticated)",
                     s->max_unauthenticated);
        else
            snprintf(why, sizeof why, "%u connections are open (max_connections)",
                     s->max_connections);
        refused_at_accept(s, &peer, why);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct jconn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return;
    }
    c->srv = s;
    c->fd = fd;
    c->peer = peer;
    c->accepted_mono = rp_mono_ms();
    format_addr(&peer, c->remote, sizeof c->remote);
    struct sockaddr_storage local;
    socklen_t llen = sizeof local;
    if (getsockname(fd, (struct sockaddr *)&local, &llen) == 0)
        format_addr(&local, c->local, sizeof c->local);
    if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        close(fd);
        free(c);
        return;
    }
    c->ses = ssh_new();
    if (c->ses == NULL || ssh_bind_accept_fd(s->bind, c->ses, fd) != SSH_OK) {
        rp_warn(JUMP_LOG, "connection from %s: libssh could not take it: %s", c->remote,
                c->ses ? ssh_get_error(s->bind) : "out of memory");
        if (c->ses != NULL)
            ssh_free(c->ses);
        close(fd);
        close(c->wake[0]);
        close(c->wake[1]);
        free(c);
        return;
    }
    pthread_mutex_lock(&s->mu);
    c->next = s->conns;
    if (s->conns != NULL)
        s->conns->prev = c;
    s->conns = c;
    s->n_conns++;
    s->n_unauth++;
    if (s->stopping)
        atomic_store(&c->stop, true);
    pthread_mutex_unlock(&s->mu);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    /* Static TLS of everything linked into the process is carved out of each thread's
     * stack (about 210 KiB in raftport today): 512 KiB leaves libssh enough. */
    pthread_attr_setstacksize(&attr, 512 * 1024);
    pthread_t t;
    int err = pthread_create(&t, &attr, conn_main, c);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        rp_warn(JUMP_LOG, "connection from %s: no thread for it: %s", c->remote, strerror(err));
        /* The thread body unwinds and frees the connection: run it here. */
        atomic_store(&c->stop, true);
        shutdown(fd, SHUT_RDWR);
        conn_main(c);
    }
}

/* Shuts down the sockets of connections past the authentication deadline; the time
 * until the next deadline (-1 if none). */
static int enforce_deadlines(struct px_sshjump *s)
{
    uint64_t now = rp_mono_ms();
    int64_t next = -1;
    pthread_mutex_lock(&s->mu);
    for (struct jconn *c = s->conns; c != NULL; c = c->next) {
        if (c->authed || c->cut)
            continue;
        uint64_t due = c->accepted_mono + s->auth_deadline_ms;
        if (now >= due) {
            c->cut = true;
            shutdown(c->fd, SHUT_RDWR);
        } else if (next < 0 || (int64_t)(due - now) < next) {
            next = (int64_t)(due - now);
        }
    }
    pthread_mutex_unlock(&s->mu);
    return next < 0 ? -1 : (int)(next + 1);
}

static void *listener_main(void *arg)
{
    struct px_sshjump *s = arg;
    for (;;) {
        int timeout = enforce_deadlines(s);
        struct pollfd p[2] = {{s->listen_fd, POLLIN, 0}, {s->wake[0], POLLIN, 0}};
        int n = poll(p, 2, timeout);
        if (n < 0 && errno != EINTR)
            break;
        if (p[1].revents != 0)
            break; /* stop */
        if (p[0].revents & POLLIN)
            for (int i = 0; i < 16; i++)
                accept_one(s);
    }
    return NULL;
}

/* ---- start and stop --------------------------------------------------------------- */

static int bind_listener(struct px_sshjump *s)
{
    char host[256];
    const char *addr = s->listen_addr;
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || strlen(addr) >= sizeof host)
        return rp_err(RP_EINVAL, "proxy_service.listen_addr %s: expected HOST:PORT", addr);
    size_t hl = (size_t)(colon - addr);
    memcpy(host, addr, hl);
    host[hl] = '\0';
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (gai != 0)
        return rp_err(RP_EINVAL, "proxy_service.listen_addr %s: %s", addr, gai_strerror(gai));
    int fd = -1, err = 0;
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0) {
            err = errno;
            continue;
        }
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 && listen(fd, 128) == 0)
            break;
        err = errno;
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return rp_err(RP_EIO, "proxy_service.listen_addr %s: cannot listen: %s", addr,
                      strerror(err));
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    s->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                             : ((struct sockaddr_in *)&sa)->sin_port);
    s->listen_fd = fd;
    return 0;
}

static void free_server(struct px_sshjump *s)
{
    free(s->listen_addr);
    free(s->host_key_path);
    free(s->server_id);
    free(s->hostname);
    if (s->bind != NULL)
        ssh_bind_free(s->bind);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->wake[0] >= 0) {
        close(s->wake[0]);
        close(s->wake[1]);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
}

static char *dup_or(const char *v, const char *dflt)
{
    return strdup(v != NULL && v[0] != '\0' ? v : dflt);
}

static int load_host_key(struct px_sshjump *s)
{
    ssh_key key = NULL;
    if (ssh_pki_import_privkey_file(s->host_key_path, NULL, NULL, NULL, &key) != SSH_OK)
        return rp_err(RP_EINVAL, "SSH host key %s cannot be read (expected an OpenSSH private key)",
                      s->host_key_path);
    if (ssh_key_type(key) != SSH_KEYTYPE_ED25519) {
        ssh_key_free(key);
        return rp_err(RP_EINVAL, "SSH host key %s: expected an Ed25519 key", s->host_key_path);
    }
    /* Its fingerprint goes to the log: what users compare `ssh` prompts with. */
    unsigned char *hash = NULL;
    size_t hash_len = 0;
    if (ssh_get_publickey_hash(key, SSH_PUBLICKEY_HASH_SHA256, &hash, &hash_len) == 0) {
        char *fp = ssh_get_fingerprint_hash(SSH_PUBLICKEY_HASH_SHA256, hash, hash_len);
        snprintf(s->fingerprint, sizeof s->fingerprint, "%s", fp ? fp : "");
        ssh_string_free_char(fp);
        ssh_clean_pubkey_hash(&hash);
    }
    s->bind = ssh_bind_new();
    if (s->bind == NULL) {
        ssh_key_free(key);
        return rp_err(RP_ENOMEM, "px_sshjump_start: out of memory");
    }
    /* The bind owns the key from here (ssh_bind_free releases it). */
    if (ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_IMPORT_KEY, key) != SSH_OK) {
        ssh_key_free(key);
        return rp_err(RP_EINVAL, "SSH host key %s: libssh refused it: %s", s->host_key_path,
                      ssh_get_error(s->bind));
    }
    /* The fastest AEAD without AES instructions and OpenSSH's first choice; AES
     * stays for clients configured otherwise. */
    const char *ciphers = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,"
                          "aes128-gcm@openssh.com,aes256-ctr,aes128-ctr";
    ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_CIPHERS_C_S, ciphers);
    ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_CIPHERS_S_C, ciphers);
    return 0;
}

int px_sshjump_start_opts(struct px_sshjump **out, const struct px_sshjump_opts *o)
{
    *out = NULL;
    if (o->host_key_path == NULL || o->route == NULL || o->authority.user_cas == NULL ||
        o->authority.lock_check == NULL)
        return rp_err(RP_EINVAL, "px_sshjump_start: a host key, a route function and an "
                                 "authority (user CAs, locks) are required");
    struct px_sshjump *s = calloc(1, sizeof *s);
    if (s == NULL)
        return rp_err(RP_ENOMEM, "px_sshjump_start: out of memory");
    s->listen_fd = -1;
    s->wake[0] = s->wake[1] = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->authority = o->authority;
    s->route = o->route;
    s->route_arg = o->route_arg;
    s->emit = o->emit;
    s->emit_arg = o->emit_arg;
    s->auth_deadline_ms = o->auth_deadline_ms ? o->auth_deadline_ms : DEFAULT_AUTH_DEADLINE_MS;
    s->max_unauthenticated = o->max_unauthenticated ? o->max_unauthenticated : DEFAULT_MAX_UNAUTH;
    s->max_connections = o->max_connections ? o->max_connections : DEFAULT_MAX_CONNS;
    s->dial_timeout_ms = o->dial_timeout_ms > 0 ? o->dial_timeout_ms : DEFAULT_DIAL_TIMEOUT_MS;
    s->listen_addr = dup_or(o->listen_addr, DEFAULT_LISTEN);
    s->host_key_path = strdup(o->host_key_path);
    s->server_id = dup_or(o->server_id, "");
    s->hostname = dup_or(o->hostname, "");
    int rv;
    if (!s->listen_addr || !s->host_key_path || !s->server_id || !s->hostname) {
        rv = rp_err(RP_ENOMEM, "px_sshjump_start: out of memory");
        goto fail;
    }
    if ((rv = load_host_key(s)) != 0)
        goto fail;
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        rv = rp_err(RP_EIO, "px_sshjump_start: pipe: %s", strerror(errno));
        goto fail;
    }
    if ((rv = bind_listener(s)) != 0)
        goto fail;
    /* A client that disconnects while we write must not kill the proxy. */
    signal(SIGPIPE, SIG_IGN);
    if (pthread_create(&s->listener, NULL, listener_main, s) != 0) {
        rv = rp_err(RP_ENOMEM, "px_sshjump_start: no thread for the listener");
        goto fail;
    }
    s->listener_running = true;
    rp_info(JUMP_LOG, "SSH jump host listening on %s (port %d), host key %s", s->listen_addr,
            s->port, s->fingerprint);
    *out = s;
    return 0;
fail:
    free_server(s);
    return rv;
}

int px_sshjump_port(const struct px_sshjump *j)
{
    return j->port;
}

size_t px_sshjump_connections(struct px_sshjump *j)
{
    pthread_mutex_lock(&j->mu);
    size_t n = j->n_conns;
    pthread_mutex_unlock(&j->mu);
    return n;
}

void px_sshjump_stop(struct px_sshjump *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    for (struct jconn *c = s->conns; c != NULL; c = c->next) {
        atomic_store(&c->stop, true);
        wake_fd(c->wake[1]);
    }
    pthread_mutex_unlock(&s->mu);
    wake_fd(s->wake[1]);
    if (s->listener_running)
        pthread_join(s->listener, NULL);
    close(s->listen_fd);
    s->listen_fd = -1;
    pthread_mutex_lock(&s->mu);
    while (s->n_conns > 0) {
        /* Not yet authenticated: nothing to tell them, cut them now. */
        for (struct jconn *c = s->conns; c != NULL; c = c->next)
            if (!c->authed && !c->cut) {
                c->cut = true;
                shutdown(c->fd, SHUT_RDWR);
            }
        pthread_cond_wait(&s->cond, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    rp_info(JUMP_LOG, "SSH jump host on %s stopped", s->listen_addr);
    free_server(s);
}
