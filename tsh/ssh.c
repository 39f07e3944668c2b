/* tsh/ssh.c: the SSH client of tsh on libssh 0.10: key exchange with a pinned host key,
 * user certificate authentication, and one session with its forwardings.
 *
 * One thread owns the session and all its channels. Setup (channel open, PTY, agent,
 * shell or exec) runs blocking; then the session turns non-blocking and one poll()
 * loop serves everything: the SSH socket (libssh reads it in ssh_event_dopoll), the
 * local stdin, the -L listeners and their connections, the forwarded agent
 * connections, and a self-pipe for SIGWINCH. The channels are pumped here, never with
 * ssh_connector (it stalls under back-pressure in 0.10):
 *   - local -> node: read a local fd only while the channel's remote window is open,
 *     at most the window, so libssh never buffers more than the node allowed;
 *   - node -> local: ssh_channel_read_nonblocking into a bounded buffer only while the
 *     buffer is empty (reading is what reopens our window, so a slow local reader
 *     slows the node, not our memory).
 * Channel callbacks only record exit status and signal. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <libssh/callbacks.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "tsh/ssh.h"
#include "tsh/tsh.h"

#define IO_CHUNK (64 * 1024)
#define MAX_CONNS 128 /* forwarded connections (-L and agent) open at once */
#define CONNECT_TIMEOUT_S 30

/* ---- connecting ----------------------------------------------------------------------- */

static int key_blob_of_line(const char *line, uint8_t **blob, size_t *n)
{
    char *comment = NULL;
    int rv = rp_ssh_line_split(line, blob, n, &comment);
    free(comment);
    return rv;
}

/* The blob of a libssh key (plain keys: the public key blob). */
static int libssh_key_blob(ssh_key k, uint8_t **blob, size_t *n)
{
    char *b64 = NULL;
    if (ssh_pki_export_pubkey_base64(k, &b64) != SSH_OK)
        return rp_err(RP_EINVAL, "cannot export the key libssh holds");
    char line[16384];
    snprintf(line, sizeof line, "%s %s", ssh_key_type_to_char(ssh_key_type(k)), b64);
    ssh_string_free_char(b64);
    return key_blob_of_line(line, blob, n);
}

/* The node presented @server: it must be the key the proxy vouched for. */
static int check_host_key(ssh_session s, const struct tsh_ssh_auth *a)
{
    ssh_key server = NULL;
    uint8_t *want = NULL, *got = NULL;
    size_t want_len = 0, got_len = 0;
    int rv;
    if (a->host_key == NULL || a->host_key[0] == '\0')
        return rp_err(RP_EDENIED, "no verified host key for node '%s': refusing to connect",
                      a->host);
    if ((rv = key_blob_of_line(a->host_key, &want, &want_len)) != 0)
        return rp_err(rv, "node '%s': the published host key is malformed: %s", a->host,
                      rp_errmsg());
    if (ssh_get_server_publickey(s, &server) != SSH_OK) {
        free(want);
        return rp_err(RP_EPROTO, "node '%s' presented no host key", a->host);
    }
    rv = libssh_key_blob(server, &got, &got_len);
    ssh_key_free(server);
    if (rv == 0 && (got_len != want_len || memcmp(got, want, want_len) != 0))
        rv = rp_err(RP_EDENIED,
                    "node '%s' presented a host key other than the one its host certificate "
                    "certifies: refusing to connect (someone may be intercepting the connection)",
                    a->host);
    free(want);
    free(got);
    return rv;
}

/* Loads the private key and its certificate, checking that the certificate is for
 * that key (libssh 0.10 does not). *@out: the private key carrying the certificate. */
static int load_identity(const struct tsh_ssh_auth *a, ssh_key *out)
{
    ssh_key priv = NULL, cert = NULL, pub = NULL;
    char *line = NULL;
    size_t len = 0;
    uint8_t *pub_blob = NULL;
    size_t pub_len = 0;
    struct rp_ssh_cert c;
    struct rp_buf cb;
    int rv;
    memset(&c, 0, sizeof c);
    rp_buf_init(&cb);
    if (ssh_pki_import_privkey_file(a->key_path, NULL, NULL, NULL, &priv) != SSH_OK) {
        rv = rp_err(RP_EINVAL, "cannot read the private key %s: run tsh login", a->key_path);
        goto out;
    }
    if ((rv = rp_read_file(a->cert_path, 64 * 1024, &line, &len)) != 0) {
        rv = rp_err(rv, "cannot read the certificate %s: run tsh login", a->cert_path);
        goto out;
    }
    if ((rv = rp_ssh_cert_parse_line(line, &c, NULL)) != 0) {
        rv = rp_err(rv, "%s is not an SSH certificate: %s", a->cert_path, rp_errmsg());
        goto out;
    }
    if (c.valid_before != RP_SSH_CERT_FOREVER && (uint64_t)time(NULL) >= c.valid_before) {
        rv = rp_err(RP_EDENIED, "your SSH certificate %s has expired: run tsh login", a->cert_path);
        goto out;
    }
    if (ssh_pki_export_privkey_to_pubkey(priv, &pub) != SSH_OK ||
        libssh_key_blob(pub, &pub_blob, &pub_len) != 0 || rp_ssh_pubkey_to_blob(c.key, &cb) != 0) {
        rv = rp_err(RP_EINVAL, "cannot compare %s with %s", a->key_path, a->cert_path);
        goto out;
    }
    if (cb.len != pub_len || memcmp(cb.data, pub_blob, pub_len) != 0) {
        rv = rp_err(RP_EINVAL, "the certificate %s is for another key than %s: run tsh login",
                    a->cert_path, a->key_path);
        goto out;
    }
    if (ssh_pki_import_cert_file(a->cert_path, &cert) != SSH_OK ||
        ssh_pki_copy_cert_to_privkey(cert, priv) != SSH_OK) {
        rv = rp_err(RP_EINVAL, "libssh cannot use the certificate %s", a->cert_path);
        goto out;
    }
    *out = priv;
    priv = NULL;
    rv = 0;
out:
    ssh_key_free(priv);
    ssh_key_free(cert);
    ssh_key_free(pub);
    free(pub_blob);
    free(line);
    rp_ssh_cert_free(&c);
    rp_buf_free(&cb);
    return rv;
}

/* The client's order decides. With AES instructions AES-GCM goes first, as Go's
 * x/crypto/ssh (Teleport's SSH stack) orders them: AES-128-GCM then costs tsh and the
 * node less per byte than libssh's default first choice, chacha20-poly1305
 * (docs/benchmarks.md). Without them chacha20-poly1305 is the faster one. */
static const char *ciphers(void)
{
#if defined(__x86_64__) || defined(__i386__)
    if (__builtin_cpu_supports("aes") && __builtin_cpu_supports("pclmul"))
        return "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,"
               "aes128-ctr,aes256-ctr";
#endif
    return "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,aes256-gcm@openssh.com,"
           "aes128-ctr,aes256-ctr";
}

static int connect_with_callbacks(int fd, const struct tsh_ssh_auth *a, ssh_callbacks session_cb,
                                  ssh_session *out)
{
    ssh_key id = NULL;
    int rv = load_identity(a, &id);
    if (rv != 0)
        return rv;
    ssh_session s = ssh_new();
    if (s == NULL) {
        ssh_key_free(id);
        return rp_err(RP_ENOMEM, "ssh_new");
    }
    /* Small packets (SFTP requests, window adjustments, keystrokes) must not wait for
     * the peer's delayed ACK: on a TCP fd (a direct connection) Nagle goes off. A
     * socketpair from tsh_dial refuses the option, which is fine. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    long timeout = CONNECT_TIMEOUT_S;
    int no = 0;
    socket_t sfd = fd;
    /* The node's key is checked against what the proxy vouched for: no known_hosts
     * and no ~/.ssh/config (it would change how we talk to a node we reach by name). */
    if (ssh_options_set(s, SSH_OPTIONS_FD, &sfd) != 0 ||
        ssh_options_set(s, SSH_OPTIONS_HOST, a->host) != 0 ||
        ssh_options_set(s, SSH_OPTIONS_USER, a->login) != 0 ||
        ssh_options_set(s, SSH_OPTIONS_PROCESS_CONFIG, &no) != 0 ||
        ssh_options_set(s, SSH_OPTIONS_KNOWNHOSTS, "/dev/null") != 0 ||
        ssh_options_set(s, SSH_OPTIONS_GLOBAL_KNOWNHOSTS, "/dev/null") != 0 ||
        ssh_options_set(s, SSH_OPTIONS_TIMEOUT, &timeout) != 0 ||
        ssh_options_set(s, SSH_OPTIONS_CIPHERS_C_S, ciphers()) != 0 ||
        ssh_options_set(s, SSH_OPTIONS_CIPHERS_S_C, ciphers()) != 0) {
        rv = rp_err(RP_EINVAL, "cannot set SSH options for login '%s': %s", a->login,
                    ssh_get_error(s));
        goto fail;
    }
    if (session_cb != NULL && ssh_set_callbacks(s, session_cb) != SSH_OK) {
        rv = rp_err(RP_EINVAL, "cannot install SSH callbacks");
        goto fail;
    }
    if (ssh_connect(s) != SSH_OK) {
        rv = rp_err(RP_EIO, "SSH handshake with node '%s' failed: %s", a->host, ssh_get_error(s));
        goto fail;
    }
    if ((rv = check_host_key(s, a)) != 0)
        goto fail;
    int ar = ssh_userauth_publickey(s, NULL, id);
    if (ar != SSH_AUTH_SUCCESS) {
        rv = rp_err(RP_EDENIED,
                    "node '%s' refused your certificate for login '%s'%s%s: check that your "
                    "roles allow this login (tsh status) or run tsh login again",
                    a->host, a->login, ar == SSH_AUTH_ERROR ? ": " : "",
                    ar == SSH_AUTH_ERROR ? ssh_get_error(s) : "");
        goto fail;
    }
    ssh_key_free(id);
    *out = s;
    return 0;
fail:
    ssh_key_free(id);
    tsh_ssh_close(s);
    return rv;
}

int tsh_ssh_connect(int fd, const struct tsh_ssh_auth *a, ssh_session *out)
{
    return connect_with_callbacks(fd, a, NULL, out);
}

void tsh_ssh_close(ssh_session s)
{
    if (s == NULL)
        return;
    /* libssh 0.10 leaves a user-supplied fd open after ssh_disconnect (the caller owns
     * it); a session freed without a disconnect would close it behind our back, also
     * after a failed handshake. */
    ssh_disconnect(s);
    ssh_free(s);
}

/* ---- -L specs ------------------------------------------------------------------------- */

static int parse_port(const char *s, size_t n, int *port)
{
    if (n == 0 || n > 5)
        return -1;
    int v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    if (v < 1 || v > 65535)
        return -1;
    *port = v;
    return 0;
}

/* Splits @spec at ':' outside [brackets] into at most 4 fields. */
static int split_fwd(const char *spec, const char **f, size_t *fl, int max)
{
    int n = 0;
    const char *p = spec, *start = spec;
    int depth = 0;
    for (;; p++) {
        if (*p == '[')
            depth++;
        else if (*p == ']')
            depth--;
        if (*p == '\0' || (*p == ':' && depth == 0)) {
            if (n == max)
                return -1;
            f[n] = start;
            fl[n++] = (size_t)(p - start);
            if (*p == '\0')
                break;
            start = p + 1;
        }
    }
    return n;
}

static void copy_host(char *dst, size_t cap, const char *s, size_t n)
{
    if (n >= 2 && s[0] == '[' && s[n - 1] == ']') {
        s++;
        n -= 2;
    }
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

int tsh_fwd_parse(const char *spec, struct tsh_fwd *out)
{
    const char *f[4];
    size_t fl[4];
    memset(out, 0, sizeof *out);
    int n = split_fwd(spec, f, fl, 4);
    if (n != 3 && n != 4)
        return rp_err(RP_EINVAL, "-L %s: expected [bind_address:]port:host:hostport", spec);
    int i = 0;
    if (n == 4) {
        if (fl[0] >= sizeof out->bind)
            return rp_err(RP_EINVAL, "-L %s: bind address too long", spec);
        copy_host(out->bind, sizeof out->bind, f[0], fl[0]);
        i = 1;
    }
    if (parse_port(f[i], fl[i], &out->lport) != 0)
        return rp_err(RP_EINVAL, "-L %s: '%.*s' is not a port (1-65535)", spec, (int)fl[i], f[i]);
    if (fl[i + 1] == 0 || fl[i + 1] >= sizeof out->host)
        return rp_err(RP_EINVAL, "-L %s: the destination host is empty or too long", spec);
    copy_host(out->host, sizeof out->host, f[i + 1], fl[i + 1]);
    if (out->host[0] == '\0')
        return rp_err(RP_EINVAL, "-L %s: the destination host is empty", spec);
    if (parse_port(f[i + 2], fl[i + 2], &out->rport) != 0)
        return rp_err(RP_EINVAL, "-L %s: '%.*s' is not a port (1-65535)", spec, (int)fl[i + 2],
                      f[i + 2]);
    return 0;
}

/* ---- the terminal --------------------------------------------------------------------- */

/* The terminal state to restore; written before raw mode starts, read by signal
 * handlers (tcsetattr is async-signal-safe). */
static struct termios saved_tio;
static volatile sig_atomic_t tio_fd = -1;
static int winch_pipe[2] = {-1, -1};

static void restore_terminal(void)
{
    if (tio_fd >= 0) {
        tcsetattr(tio_fd, TCSADRAIN, &saved_tio);
        tio_fd = -1;
    }
}

static void on_fatal_signal(int sig)
{
    if (tio_fd >= 0)
        tcsetattr(tio_fd, TCSADRAIN, &saved_tio);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void on_winch(int sig)
{
    (void)sig;
    int e = errno;
    if (winch_pipe[1] >= 0 && write(winch_pipe[1], "w", 1) < 0) {
        /* the pipe is full: a resize is already pending */
    }
    errno = e;
}

static const int fatal_signals[] = {SIGHUP, SIGINT, SIGQUIT, SIGTERM};

static void enter_raw_mode(int fd)
{
    struct termios tio;
    if (tcgetattr(fd, &saved_tio) != 0)
        return;
    tio = saved_tio;
    /* What OpenSSH's enter_raw_mode does: bytes pass untouched both ways (the remote
     * PTY does the line discipline), output post-processing off. */
    tio.c_iflag |= IGNPAR;
    tio.c_iflag &= ~(ISTRIP | INLCR | IGNCR | ICRNL | IXON | IXANY | IXOFF | IUCLC);
    tio.c_lflag &= ~(ISIG | ICANON | ECHO | ECHOE | ECHOK | ECHONL | IEXTEN);
    tio.c_oflag &= ~OPOST;
    tio.c_cc[VMIN] = 1;
    tio.c_cc[VTIME] = 0;
    tio_fd = fd;
    if (tcsetattr(fd, TCSADRAIN, &tio) != 0)
        tio_fd = -1;
}

static void window_size(int fd, int *cols, int *rows)
{
    struct winsize ws;
    *cols = 80;
    *rows = 24;
    if (ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
        *cols = ws.ws_col;
        *rows = ws.ws_row;
    }
}

/* ---- forwarded connections ------------------------------------------------------------ */

/* Bytes on their way to one side, kept when that side could not take them all. */
struct pend {
    struct rp_buf b;
    size_t off;
};

enum conn_kind { C_LOCAL_FWD, C_AGENT };

struct fconn {
    struct fconn *next;
    enum conn_kind kind;
    ssh_channel ch;
    int fd;
    bool opening; /* -L: the channel open is not answered yet */
    const struct tsh_fwd *fwd;
    char peer[64];
    bool local_eof;       /* fd read 0: EOF sent to the node */
    bool remote_eof_done; /* node's EOF drained and passed on (SHUT_WR) */
    struct pend pend;     /* node bytes not yet written to fd */
    struct pend up;       /* local bytes the channel did not take yet */
    short polled;         /* revents of the last poll */
    bool done;
};

struct listener {
    int fd;
    const struct tsh_fwd *fwd;
};

struct run {
    ssh_session s;
    ssh_event ev;
    const struct tsh_ssh_opts *o;
    ssh_channel ch; /* the session channel */
    struct ssh_channel_callbacks_struct chan_cb;
    struct ssh_callbacks_struct sess_cb;
    bool pty;
    bool in_eof;  /* our stdin ended; EOF sent */
    bool out_eof; /* node stdout drained to EOF */
    bool err_eof;
    int exit_status; /* -1 until the node says */
    int exit_signal; /* 0 until the node says */
    struct listener *ls;
    size_t n_ls;
    struct fconn *conns;
    size_t n_conns;
    char agent_sock[sizeof(((struct sockaddr_un *)0)->sun_path)];
};

static int signal_number(const char *name)
{
    static const struct {
        const char *n;
        int v;
    } t[] = {{"ABRT", SIGABRT}, {"ALRM", SIGALRM}, {"FPE", SIGFPE},   {"HUP", SIGHUP},
             {"ILL", SIGILL},   {"INT", SIGINT},   {"KILL", SIGKILL}, {"PIPE", SIGPIPE},
             {"QUIT", SIGQUIT}, {"SEGV", SIGSEGV}, {"TERM", SIGTERM}, {"USR1", SIGUSR1},
             {"USR2", SIGUSR2}};
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++)
        if (name != NULL && strcmp(name, t[i].n) == 0)
            return t[i].v;
    return 0;
}

static void on_exit_status(ssh_session s, ssh_channel ch, int status, void *ud)
{
    struct run *r = ud;
    r->exit_status = status;
}

static void on_exit_signal(ssh_session s, ssh_channel ch, const char *sig, int core,
                           const char *errmsg, const char *lang, void *ud)
{
    struct run *r = ud;
    int n = signal_number(sig);
    r->exit_signal = n > 0 ? n : SIGTERM;
}

/* The node asks for our agent: a channel bridged to $SSH_AUTH_SOCK. */
static ssh_channel on_agent_open(ssh_session s, void *ud)
{
    struct run *r = ud;
    if (r == NULL || r->agent_sock[0] == '\0' || r->n_conns >= MAX_CONNS)
        return NULL;
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path, r->agent_sock, sizeof sa.sun_path);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return NULL;
    }
    struct fconn *c = calloc(1, sizeof *c);
    ssh_channel ch = c != NULL ? ssh_channel_new(s) : NULL;
    if (ch == NULL) {
        free(c);
        close(fd);
        return NULL;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    c->kind = C_AGENT;
    c->ch = ch;
    c->fd = fd;
    snprintf(c->peer, sizeof c->peer, "agent");
    rp_buf_init(&c->pend.b);
    rp_buf_init(&c->up.b);
    c->next = r->conns;
    r->conns = c;
    r->n_conns++;
    return ch;
}

static bool pend_empty(const struct pend *p)
{
    return p->off >= p->b.len;
}

static void pend_consumed(struct pend *p, size_t n)
{
    p->off += n;
    if (p->off >= p->b.len) {
        p->off = 0;
        p->b.len = 0;
    }
}

/* Sends what @p holds on @ch as far as the node's window allows. -1 when the channel
 * broke. */
static int pend_to_channel(struct pend *p, ssh_channel ch)
{
    while (!pend_empty(p)) {
        uint32_t w = ssh_channel_window_size(ch);
        size_t n = p->b.len - p->off;
        if (w == 0)
            return 0;
        if (n > w)
            n = w;
        int wr = ssh_channel_write(ch, p->b.data + p->off, (uint32_t)n);
        if (wr == SSH_AGAIN || wr == 0)
            return 0; /* key re-exchange running: later */
        if (wr < 0)
            return -1;
        pend_consumed(p, (size_t)wr);
    }
    return 0;
}

/* Writes what @p holds to the non-blocking @fd. -1 when the fd is broken. */
static int pend_to_fd(struct pend *p, int fd)
{
    while (!pend_empty(p)) {
        ssize_t n = write(fd, p->b.data + p->off, p->b.len - p->off);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return 0;
        if (n <= 0)
            return -1;
        pend_consumed(p, (size_t)n);
    }
    return 0;
}

/* Reads at most the channel's window from @fd into @p (which is empty) and sends it.
 * 1 on EOF or a read error, 0 otherwise, -1 when the channel broke. */
static int fd_to_channel(int fd, ssh_channel ch, struct pend *p)
{
    static char buf[IO_CHUNK];
    uint32_t w = ssh_channel_window_size(ch);
    if (w == 0)
        return 0;
    ssize_t n = read(fd, buf, w < sizeof buf ? w : sizeof buf);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0)
        return 1;
    if (rp_buf_append(&p->b, buf, (size_t)n) != 0)
        return -1;
    return pend_to_channel(p, ch);
}

static int write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) {
            struct pollfd pf = {fd, POLLOUT, 0};
            poll(&pf, 1, 1000);
            continue;
        }
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* ---- -L listeners and forwarded connections ------------------------------------------ */

static int open_listener(const struct tsh_fwd *f, int *out)
{
    const char *bind_host = f->bind[0] ? f->bind : "127.0.0.1";
    if (strcmp(bind_host, "*") == 0)
        bind_host = "0.0.0.0";
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", f->lport);
    int gai = getaddrinfo(bind_host, port, &hints, &ai);
    if (gai != 0)
        return rp_err(RP_EINVAL, "-L %d:%s:%d: cannot resolve bind address '%s': %s", f->lport,
                      f->host, f->rport, bind_host, gai_strerror(gai));
    int fd = socket(ai->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    int rv = 0;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0 ||
        bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || listen(fd, 64) != 0) {
        rv = rp_err(RP_EIO, "-L %d:%s:%d: cannot listen on %s:%d: %s", f->lport, f->host, f->rport,
                    bind_host, f->lport, strerror(errno));
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    freeaddrinfo(ai);
    *out = fd;
    return rv;
}

static void fconn_free(struct fconn *c)
{
    if (c->ch != NULL) {
        if (ssh_channel_is_open(c->ch))
            ssh_channel_close(c->ch);
        ssh_channel_free(c->ch);
    }
    if (c->fd >= 0)
        close(c->fd);
    rp_buf_free(&c->pend.b);
    rp_buf_free(&c->up.b);
    free(c);
}

static void accept_local(struct run *r, struct listener *l)
{
    for (int i = 0; i < 16; i++) {
        struct sockaddr_storage ss;
        socklen_t sl = sizeof ss;
        int fd = accept4(l->fd, (struct sockaddr *)&ss, &sl, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            return;
        if (r->n_conns >= MAX_CONNS) {
            dprintf(r->o->err_fd,
                    "tsh: -L %d: %d forwarded connections are open already: "
                    "refusing another\r\n",
                    l->fwd->lport, MAX_CONNS);
            close(fd);
            continue;
        }
        struct fconn *c = calloc(1, sizeof *c);
        ssh_channel ch = c != NULL ? ssh_channel_new(r->s) : NULL;
        if (ch == NULL) {
            free(c);
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        c->kind = C_LOCAL_FWD;
        rp_buf_init(&c->pend.b);
        rp_buf_init(&c->up.b);
        c->ch = ch;
        c->fd = fd;
        c->fwd = l->fwd;
        c->opening = true;
        c->next = r->conns;
        r->conns = c;
        r->n_conns++;
    }
}

static void service_conn(struct run *r, struct fconn *c, short revents)
{
    static char buf[IO_CHUNK];
    if (c->done)
        return;
    if (c->opening) {
        int rc = ssh_channel_open_forward(c->ch, c->fwd->host, c->fwd->rport, "127.0.0.1",
                                          c->fwd->lport);
        if (rc == SSH_AGAIN)
            return;
        c->opening = false;
        if (rc != SSH_OK) {
            dprintf(r->o->err_fd,
                    "tsh: -L %d: the node refused to connect to %s:%d: %s (the certificate "
                    "needs permit-port-forwarding and your roles port forwarding)\r\n",
                    c->fwd->lport, c->fwd->host, c->fwd->rport, ssh_get_error(r->s));
            c->done = true;
            return;
        }
    }
    /* node -> local */
    if (pend_to_fd(&c->pend, c->fd) != 0) {
        c->done = true;
        return;
    }
    while (pend_empty(&c->pend) && !c->remote_eof_done) {
        int n = ssh_channel_read_nonblocking(c->ch, buf, sizeof buf, 0);
        if (n == SSH_EOF) {
            shutdown(c->fd, SHUT_WR);
            c->remote_eof_done = true;
            break;
        }
        if (n == SSH_ERROR) {
            c->done = true;
            return;
        }
        if (n <= 0)
            break;
        if (rp_buf_append(&c->pend.b, buf, (size_t)n) != 0 || pend_to_fd(&c->pend, c->fd) != 0) {
            c->done = true;
            return;
        }
    }
    /* local -> node */
    if (pend_to_channel(&c->up, c->ch) != 0) {
        c->done = true;
        return;
    }
    if (!c->local_eof && pend_empty(&c->up) && (revents & (POLLIN | POLLHUP | POLLERR))) {
        int rv = fd_to_channel(c->fd, c->ch, &c->up);
        if (rv < 0) {
            c->done = true;
            return;
        }
        if (rv > 0) {
            ssh_channel_send_eof(c->ch);
            c->local_eof = true;
        }
    }
    if ((c->local_eof && c->remote_eof_done && pend_empty(&c->pend)) ||
        (ssh_channel_is_closed(c->ch) && pend_empty(&c->pend)))
        c->done = true;
}

static void sweep_conns(struct run *r)
{
    struct fconn **pp = &r->conns;
    while (*pp != NULL) {
        struct fconn *c = *pp;
        if (!c->done) {
            pp = &c->next;
            continue;
        }
        *pp = c->next;
        r->n_conns--;
        fconn_free(c);
    }
}

/* ---- the session channel -------------------------------------------------------------- */

/* Drains the node's stdout or stderr into @fd. 0, or -1 when the channel broke. */
static int drain_output(struct run *r, int is_stderr, int fd, bool *eof)
{
    static char buf[IO_CHUNK];
    for (int i = 0; i < 64 && !*eof; i++) {
        int n = ssh_channel_read_nonblocking(r->ch, buf, sizeof buf, is_stderr);
        if (n == SSH_EOF) {
            *eof = true;
            break;
        }
        if (n == SSH_ERROR)
            return -1;
        if (n <= 0)
            break;
        /* A local reader that went away (EPIPE) drops the rest, as ssh does. */
        write_all(fd, buf, (size_t)n);
    }
    return 0;
}

static int setup_channel(struct run *r)
{
    const struct tsh_ssh_opts *o = r->o;
    ssh_session s = r->s;
    r->ch = ssh_channel_new(s);
    if (r->ch == NULL || ssh_channel_open_session(r->ch) != SSH_OK)
        return rp_err(RP_EIO, "node '%s' refused a session channel: %s", o->auth.host,
                      ssh_get_error(s));
    ssh_callbacks_init(&r->chan_cb);
    r->chan_cb.userdata = r;
    r->chan_cb.channel_exit_status_function = on_exit_status;
    r->chan_cb.channel_exit_signal_function = on_exit_signal;
    if (ssh_set_channel_callbacks(r->ch, &r->chan_cb) != SSH_OK)
        return rp_err(RP_EIO, "cannot watch the session channel");
    if (o->forward_agent) {
        if (r->agent_sock[0] == '\0')
            dprintf(o->err_fd, "tsh: -A: SSH_AUTH_SOCK is not set: no agent to forward\n");
        else if (ssh_channel_request_auth_agent(r->ch) != SSH_OK)
            dprintf(o->err_fd,
                    "tsh: node '%s' refused agent forwarding (the certificate needs "
                    "permit-agent-forwarding and your roles forward_agent)\n",
                    o->auth.host);
    }
    const char *lang = getenv("LANG");
    if (lang != NULL && lang[0] != '\0')
        ssh_channel_request_env(r->ch, "LANG", lang); /* a node may refuse: not an error */
    if (r->pty) {
        const char *term = getenv("TERM");
        int cols, rows;
        window_size(o->in_fd, &cols, &rows);
        if (ssh_channel_request_pty_size(r->ch, term && term[0] ? term : "xterm", cols, rows) !=
            SSH_OK)
            return rp_err(RP_EDENIED,
                          "node '%s' refused a terminal (PTY) for login '%s': run a command "
                          "without one (-T), or ask for permit-pty in your roles",
                          o->auth.host, o->auth.login);
    }
    int rc = o->command != NULL ? ssh_channel_request_exec(r->ch, o->command)
                                : ssh_channel_request_shell(r->ch);
    if (rc != SSH_OK)
        return rp_err(RP_EDENIED, "node '%s' refused to run %s for login '%s': %s", o->auth.host,
                      o->command != NULL ? "the command" : "a shell", o->auth.login,
                      ssh_get_error(s));
    return 0;
}

/* Done once both output streams are drained to their EOF and the node either closed
 * the channel or said how the command ended (a close without EOF counts as EOF). */
static bool session_finished(struct run *r)
{
    return r->out_eof && r->err_eof &&
           (ssh_channel_is_closed(r->ch) || r->exit_status >= 0 || r->exit_signal != 0);
}

static int session_loop(struct run *r)
{
    const struct tsh_ssh_opts *o = r->o;
    struct pend up = {0};
    rp_buf_init(&up.b);
    struct pollfd *p = NULL;
    struct fconn **owner = NULL;
    size_t cap = 0;
    int rv = 0;
    for (;;) {
        size_t need = 3 + r->n_ls + r->n_conns;
        if (need > cap) {
            cap = need + 16;
            struct pollfd *np = realloc(p, cap * sizeof *p);
            if (np != NULL)
                p = np;
            struct fconn **no = realloc(owner, cap * sizeof *owner);
            if (no != NULL)
                owner = no;
            if (np == NULL || no == NULL) {
                rv = rp_err(RP_ENOMEM, "poll set");
                break;
            }
        }
        size_t n = 0;
        short sev = POLLIN;
        if (ssh_get_poll_flags(r->s) & SSH_WRITE_PENDING)
            sev |= POLLOUT;
        p[n] = (struct pollfd){ssh_get_fd(r->s), sev, 0};
        owner[n++] = NULL;
        p[n] = (struct pollfd){winch_pipe[0], POLLIN, 0};
        owner[n++] = NULL;
        size_t in_at = 0;
        if (!r->in_eof && pend_empty(&up) && ssh_channel_window_size(r->ch) > 0) {
            in_at = n;
            p[n] = (struct pollfd){o->in_fd, POLLIN, 0};
            owner[n++] = NULL;
        }
        size_t ls_at = n;
        for (size_t i = 0; i < r->n_ls; i++) {
            p[n] = (struct pollfd){r->ls[i].fd, POLLIN, 0};
            owner[n++] = NULL;
        }
        for (struct fconn *c = r->conns; c != NULL; c = c->next) {
            short ev = 0;
            if (!c->opening && !c->local_eof && pend_empty(&c->up) &&
                ssh_channel_window_size(c->ch) > 0)
                ev |= POLLIN;
            if (!pend_empty(&c->pend))
                ev |= POLLOUT;
            p[n] = (struct pollfd){ev ? c->fd : -1, ev, 0};
            owner[n++] = c;
        }
        int prc = poll(p, (nfds_t)n, 1000);
        if (prc < 0 && errno != EINTR) {
            rv = rp_err(RP_EIO, "poll: %s", strerror(errno));
            break;
        }
        if (prc > 0 && p[1].revents) {
            char drain[64];
            while (read(winch_pipe[0], drain, sizeof drain) > 0)
                ;
            if (r->pty) {
                int cols, rows;
                window_size(o->in_fd, &cols, &rows);
                ssh_channel_change_pty_size(r->ch, cols, rows);
            }
        }
        if (ssh_event_dopoll(r->ev, 0) == SSH_ERROR || !ssh_is_connected(r->s)) {
            rv = rp_err(RP_EIO, "the connection to node '%s' broke: %s", o->auth.host,
                        ssh_get_error(r->s));
            break;
        }
        /* node -> local first: it is what reopens the node's view of our window. */
        if (drain_output(r, 0, o->out_fd, &r->out_eof) != 0 ||
            drain_output(r, 1, o->err_fd, &r->err_eof) != 0) {
            rv = rp_err(RP_EIO, "the session channel to node '%s' broke: %s", o->auth.host,
                        ssh_get_error(r->s));
            break;
        }
        if (pend_to_channel(&up, r->ch) != 0) {
            rv = rp_err(RP_EIO, "cannot send to node '%s': %s", o->auth.host, ssh_get_error(r->s));
            break;
        }
        if (in_at > 0 && p[in_at].revents && !ssh_channel_is_closed(r->ch)) {
            int frv = fd_to_channel(o->in_fd, r->ch, &up);
            if (frv < 0) {
                rv = rp_err(RP_EIO, "cannot send to node '%s': %s", o->auth.host,
                            ssh_get_error(r->s));
                break;
            }
            if (frv > 0) {
                r->in_eof = true;
                ssh_channel_send_eof(r->ch);
            }
        }
        for (size_t i = 0; i < r->n_ls; i++)
            if (p[ls_at + i].revents)
                accept_local(r, &r->ls[i]);
        for (size_t i = 0; i < n; i++)
            if (owner[i] != NULL)
                owner[i]->polled = p[i].revents;
        for (struct fconn *c = r->conns; c != NULL; c = c->next) {
            service_conn(r, c, c->polled);
            c->polled = 0;
        }
        sweep_conns(r);
        if (session_finished(r))
            break;
    }
    free(p);
    free(owner);
    rp_buf_free(&up.b);
    return rv;
}

int tsh_ssh_session_run(int fd, const struct tsh_ssh_opts *o, int *exit_code)
{
    struct run *r = calloc(1, sizeof *r);
    if (r == NULL)
        return rp_err(RP_ENOMEM, "session");
    int rv = 0;
    *exit_code = TSH_EXIT_CONN;
    r->o = o;
    r->exit_status = -1;
    const char *sock = getenv("SSH_AUTH_SOCK");
    if (o->forward_agent && sock != NULL && strlen(sock) < sizeof r->agent_sock)
        snprintf(r->agent_sock, sizeof r->agent_sock, "%s", sock);
    bool in_tty = isatty(o->in_fd);
    switch (o->tty) {
    case TSH_TTY_AUTO:
        r->pty = o->command == NULL && in_tty;
        break;
    case TSH_TTY_NO:
        break;
    case TSH_TTY_YES:
        r->pty = in_tty;
        if (!in_tty)
            dprintf(o->err_fd, "tsh: no terminal (PTY) is allocated because standard input is "
                               "not a terminal: use -tt to force one\n");
        break;
    case TSH_TTY_FORCE:
        r->pty = true;
        break;
    }

    ssh_callbacks_init(&r->sess_cb);
    r->sess_cb.userdata = r;
    if (r->agent_sock[0] != '\0')
        r->sess_cb.channel_open_request_auth_agent_function = on_agent_open;
    /* Listeners first: a port that is taken fails the command before we log in. */
    if (o->n_fwds > 0) {
        r->ls = calloc(o->n_fwds, sizeof *r->ls);
        if (r->ls == NULL) {
            free(r);
            return rp_err(RP_ENOMEM, "listeners");
        }
        for (size_t i = 0; i < o->n_fwds; i++) {
            r->ls[i].fwd = &o->fwds[i];
            if ((rv = open_listener(&o->fwds[i], &r->ls[i].fd)) != 0)
                goto out;
            r->n_ls++;
        }
    }
    if ((rv = connect_with_callbacks(fd, &o->auth, &r->sess_cb, &r->s)) != 0)
        goto out;
    if ((rv = setup_channel(r)) != 0)
        goto out;
    if (pipe2(winch_pipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        rv = rp_err(RP_EIO, "pipe: %s", strerror(errno));
        goto out;
    }
    struct sigaction sa_winch = {.sa_handler = on_winch}, old_winch, sa_fatal = {0},
                     old_fatal[sizeof fatal_signals / sizeof fatal_signals[0]],
                     sa_ign = {.sa_handler = SIG_IGN}, old_pipe;
    sa_fatal.sa_handler = on_fatal_signal;
    sigaction(SIGWINCH, &sa_winch, &old_winch);
    sigaction(SIGPIPE, &sa_ign, &old_pipe);
    if (r->pty && in_tty) {
        for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
            sigaction(fatal_signals[i], &sa_fatal, &old_fatal[i]);
        enter_raw_mode(o->in_fd);
    }
    r->ev = ssh_event_new();
    if (r->ev == NULL || ssh_event_add_session(r->ev, r->s) != SSH_OK) {
        rv = rp_err(RP_ENOMEM, "ssh_event");
    } else {
        ssh_set_blocking(r->s, 0);
        rv = session_loop(r);
        ssh_set_blocking(r->s, 1);
    }
    restore_terminal();
    if (r->pty && in_tty)
        for (size_t i = 0; i < sizeof fatal_signals / sizeof fatal_signals[0]; i++)
            sigaction(fatal_signals[i], &old_fatal[i], NULL);
    sigaction(SIGWINCH, &old_winch, NULL);
    sigaction(SIGPIPE, &old_pipe, NULL);
    if (rv == 0) {
        if (r->exit_signal > 0)
            *exit_code = 128 + r->exit_signal;
        else if (r->exit_status >= 0)
            *exit_code = r->exit_status & 0xff;
        else
            *exit_code = TSH_EXIT_CONN;
    }
out:
    while (r->conns != NULL) {
        struct fconn *c = r->conns;
        r->conns = c->next;
        fconn_free(c);
    }
    if (r->ev != NULL) {
        if (r->s != NULL)
            ssh_event_remove_session(r->ev, r->s);
        ssh_event_free(r->ev);
    }
    if (r->ch != NULL) {
        ssh_remove_channel_callbacks(r->ch, &r->chan_cb);
        if (ssh_channel_is_open(r->ch))
            ssh_channel_close(r->ch);
        ssh_channel_free(r->ch);
    }
    tsh_ssh_close(r->s);
    for (size_t i = 0; i < r->n_ls; i++)
        close(r->ls[i].fd);
    free(r->ls);
    for (int i = 0; i < 2; i++) {
        if (winch_pipe[i] >= 0)
            close(winch_pipe[i]);
        winch_pipe[i] = -1;
    }
    free(r);
    return rv;
}

/* ---- tsh ssh -------------------------------------------------------------------------- */

/* The login to use: -l, else login@, else the profile's first. */
static const char *pick_login(const char *flag, const char *at, const struct tsh_profile *p)
{
    if (flag != NULL)
        return flag;
    if (at != NULL)
        return at;
    return p->n_logins > 0 ? p->logins[0] : NULL;
}

int tsh_ssh_target(const char *node, int port, char *out, size_t n)
{
    if (port > 0 && strchr(node, ':') == NULL)
        snprintf(out, n, "%s:%d", node, port);
    else
        snprintf(out, n, "%s", node);
    return strlen(node) + 8 < n ? 0 : rp_err(RP_EINVAL, "node name too long");
}

int tsh_cmd_ssh(int argc, char **argv, const struct tsh_globals *gin)
{
    static const struct option own[] = {{NULL, 0, NULL, 0}};
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    const char *login_flag = NULL;
    int port = 0, n_t = 0;
    bool no_tty = false, agent = false;
    struct tsh_fwd *fwds = NULL;
    size_t n_fwds = 0;
    int c, rc = 2;
    tsh_flags_init(&f, &g, argc, argv, own, "l:p:tTAL:", true);
    while ((c = tsh_flags_next(&f)) > 0) {
        switch (c) {
        case 'l':
            login_flag = optarg;
            break;
        case 'p':
            if (parse_port(optarg, strlen(optarg), &port) != 0) {
                rc = tsh_usage_error(&f, "-p %s: expected a port (1-65535)", optarg);
                goto out;
            }
            break;
        case 't':
            n_t++;
            break;
        case 'T':
            no_tty = true;
            break;
        case 'A':
            agent = true;
            break;
        case 'L': {
            struct tsh_fwd *nf = realloc(fwds, (n_fwds + 1) * sizeof *fwds);
            if (nf == NULL) {
                rc = 1;
                goto out;
            }
            fwds = nf;
            if (tsh_fwd_parse(optarg, &fwds[n_fwds]) != 0) {
                rc = tsh_usage_error(&f, "%s", rp_errmsg());
                goto out;
            }
            n_fwds++;
            break;
        }
        default:
            rc = tsh_usage_error(&f, "unexpected flag");
            goto out;
        }
    }
    char **args = NULL;
    int nargs = 0;
    int done = tsh_flags_done(&f, c, 1, -1, &args, &nargs);
    if (done >= 0) {
        rc = done;
        goto out;
    }
    /* [login@]node */
    char node[512], *at_login = NULL;
    snprintf(node, sizeof node, "%s", args[0]);
    char *at = strrchr(node, '@');
    char *host = node;
    if (at != NULL) {
        *at = '\0';
        at_login = node;
        host = at + 1;
    }
    if (host[0] == '\0' || (at_login != NULL && at_login[0] == '\0')) {
        rc = tsh_usage_error(&f, "'%s': expected [LOGIN@]NODE", args[0]);
        goto out;
    }
    /* The remote command: the remaining words, joined as ssh joins them. */
    struct rp_buf cmd;
    rp_buf_init(&cmd);
    for (int i = 1; i < nargs; i++) {
        if (i > 1)
            rp_buf_append(&cmd, " ", 1);
        rp_buf_append_str(&cmd, args[i]);
    }
    rp_buf_append(&cmd, "", 1);

    struct tsh_profile p;
    if (tsh_require_profile(&g, "tsh ssh", &p) != 0) {
        rc = TSH_EXIT_CONN;
        rp_buf_free(&cmd);
        goto out;
    }
    const char *login = pick_login(login_flag, at_login, &p);
    if (login == NULL) {
        fprintf(stderr, "tsh ssh: no login given and your roles list none: use -l LOGIN or "
                        "LOGIN@NODE (tsh status shows your logins)\n");
        rc = 2;
        rp_buf_free(&cmd);
        goto out;
    }
    char target[600];
    tsh_ssh_target(host, port, target, sizeof target);
    struct tsh_dial_answer ans;
    int fd = -1;
    if (tsh_dial(&p, target, login, &ans, &fd) != 0) {
        fprintf(stderr, "tsh ssh: %s\n", rp_errmsg());
        rc = TSH_EXIT_CONN;
        rp_buf_free(&cmd);
        goto out;
    }
    struct tsh_ssh_opts o = {
        .auth = {.login = login,
                 .host = host,
                 .key_path = p.key_path,
                 .cert_path = p.cert_path,
                 .host_key = ans.host_key},
        .command = nargs > 1 ? (const char *)cmd.data : NULL,
        .tty = no_tty     ? TSH_TTY_NO
               : n_t >= 2 ? TSH_TTY_FORCE
               : n_t == 1 ? TSH_TTY_YES
                          : TSH_TTY_AUTO,
        .fwds = fwds,
        .n_fwds = n_fwds,
        .forward_agent = agent,
        .in_fd = 0,
        .out_fd = 1,
        .err_fd = 2,
    };
    int code = TSH_EXIT_CONN;
    if (tsh_ssh_session_run(fd, &o, &code) != 0) {
        fprintf(stderr, "tsh ssh: %s\n", rp_errmsg());
        code = TSH_EXIT_CONN;
    }
    tsh_dial_close(fd);
    tsh_dial_answer_free(&ans);
    rp_buf_free(&cmd);
    rc = code;
out:
    free(fwds);
    return rc;
}
