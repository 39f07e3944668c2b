/* agent/sshd.c: the SSH server's listener, its connections, their bounds, and stop.
 *
 * The listener thread accepts, refuses beyond max_unauthenticated connections that
 * have not authenticated yet, hands each accepted socket to a libssh session
 * (ssh_bind_accept_fd: no I/O, so it stays on this thread, which owns the bind) and
 * starts the connection's thread (session.c). It is also the watchdog of the
 * authentication deadline: a connection that has not authenticated in time gets its
 * socket shut down, which fails whatever libssh call its thread is blocked in (libssh
 * has no timers, and a client with a bad signature is never answered).
 *
 * The authority's change notifications mark every connection for a lock re-check
 * and wake it; each connection re-checks on its own thread, where its libssh session
 * lives. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/sshd_int.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define DEFAULT_LISTEN "0.0.0.0:3022"
#define DEFAULT_SFTP "/usr/lib/openssh/sftp-server"
#define DEFAULT_AUTH_DEADLINE_MS 20000
#define DEFAULT_MAX_UNAUTH 64
/* One line at most this often about connections refused at accept. */
#define REFUSED_LOG_EVERY_MS 10000

/* ---- audit ------------------------------------------------------------------------ */

void sshd_emit(struct agent_sshd *s, const struct sshd_conn *c, const struct sshd_ev *ev)
{
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
    rp_mp_map_str(&m, "server_id", s->host_id);
    rp_mp_map_str(&m, "server_hostname", s->nodename);
    if (c != NULL) {
        rp_mp_map_str(&m, "addr.remote", c->remote);
        rp_mp_map_str(&m, "addr.local", c->local);
    }
    if (ev->user != NULL)
        rp_mp_map_str(&m, "user", ev->user);
    if (ev->login != NULL)
        rp_mp_map_str(&m, "login", ev->login);
    if (ev->sid != NULL)
        rp_mp_map_str(&m, "sid", ev->sid);
    for (size_t i = 0; i < 8 && ev->k[i] != NULL; i++)
        rp_mp_map_str(&m, ev->k[i], ev->v[i] ? ev->v[i] : "");
    for (size_t i = 0; i < 4 && ev->ik[i] != NULL; i++)
        rp_mp_map_i64(&m, ev->ik[i], ev->iv[i]);
    rp_mp_map_end(&m);
    if (b.data != NULL) {
        int rv = s->emit(s->emit_arg, b.data, b.len);
        if (rv != 0)
            rp_warn(SSHD_LOG, "audit event %s could not be emitted: %s", ev->event, rp_errmsg());
    }
    rp_buf_free(&b);
}

/* ---- the servers alive, for the authority's change notifications ------------------- */

/* The authority has no way to unregister a callback, and it may outlive a server:
 * the callback's argument is an id looked up here, never a pointer to a server. */
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static struct live {
    uintptr_t id;
    struct agent_sshd *s;
} live[32];
static uintptr_t live_next_id = 1;

static void wake_fd(int fd)
{
    char x = 1;
    ssize_t n = write(fd, &x, 1);
    (void)n; /* a full pipe already wakes the reader */
}

static void authority_changed(void *arg)
{
    uintptr_t id = (uintptr_t)arg;
    pthread_mutex_lock(&live_mu);
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (live[i].id != id || live[i].s == NULL)
            continue;
        struct agent_sshd *s = live[i].s;
        pthread_mutex_lock(&s->mu);
        for (struct sshd_conn *c = s->conns; c != NULL; c = c->next) {
            atomic_store(&c->recheck, true);
            wake_fd(c->wake[1]);
        }
        pthread_mutex_unlock(&s->mu);
    }
    pthread_mutex_unlock(&live_mu);
}

static int live_add(struct agent_sshd *s, uintptr_t *id)
{
    pthread_mutex_lock(&live_mu);
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++) {
        if (live[i].s == NULL) {
            live[i].s = s;
            live[i].id = *id = live_next_id++;
            pthread_mutex_unlock(&live_mu);
            return 0;
        }
    }
    pthread_mutex_unlock(&live_mu);
    return rp_err(RP_EBUSY, "more than %zu SSH servers in one process",
                  sizeof live / sizeof live[0]);
}

static void live_remove(struct agent_sshd *s)
{
    pthread_mutex_lock(&live_mu);
    for (size_t i = 0; i < sizeof live / sizeof live[0]; i++)
        if (live[i].s == s)
            live[i] = (struct live){0, NULL};
    pthread_mutex_unlock(&live_mu);
}

/* ---- connection registry ---------------------------------------------------------- */

void sshd_conn_authed(struct sshd_conn *c)
{
    struct agent_sshd *s = c->srv;
    pthread_mutex_lock(&s->mu);
    if (!c->authed) {
        c->authed = true;
        s->n_unauth--;
    }
    pthread_mutex_unlock(&s->mu);
}

void sshd_sessions_add(struct agent_sshd *s, int delta)
{
    pthread_mutex_lock(&s->mu);
    s->n_sessions = (size_t)((long)s->n_sessions + delta);
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
}

size_t agent_sshd_sessions(struct agent_sshd *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n_sessions;
    pthread_mutex_unlock(&s->mu);
    return n;
}

size_t agent_sshd_connections(struct agent_sshd *s)
{
    pthread_mutex_lock(&s->mu);
    size_t n = s->n_conns;
    pthread_mutex_unlock(&s->mu);
    return n;
}

int agent_sshd_port(const struct agent_sshd *s)
{
    return s->port;
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

/* Counts a refusal at the max_unauthenticated cap; true if the caller should log
 * now (one line per REFUSED_LOG_EVERY_MS), with the refusals since the last line in
 * *@refused. Called with s->mu held. */
static bool count_refusal(struct agent_sshd *s, unsigned *refused)
{
    s->refused_since_log++;
    uint64_t now = rp_mono_ms();
    if (s->refused_log_mono != 0 && now - s->refused_log_mono < REFUSED_LOG_EVERY_MS)
        return false;
    *refused = s->refused_since_log;
    s->refused_since_log = 0;
    s->refused_log_mono = now;
    return true;
}

/* Hands the connected socket @fd (owned from here, closed on failure) to a libssh
 * session and a thread of its own. @peer is the client's address as far as it is
 * known (AF_UNSPEC when not: source-address options then refuse), @remote and @local
 * its text for logs and audit. The caller checked the max_unauthenticated cap. */
static int serve_socket(struct agent_sshd *s, int fd, const struct sockaddr_storage *peer,
                        const char *remote, const char *local)
{
    struct sshd_conn *c = calloc(1, sizeof *c);
    if (c == NULL) {
        close(fd);
        return rp_err(RP_ENOMEM, "SSH connection from %s", remote);
    }
    c->srv = s;
    c->fd = fd;
    c->peer = *peer;
    c->accepted_mono = rp_mono_ms();
    snprintf(c->remote, sizeof c->remote, "%s", remote);
    snprintf(c->local, sizeof c->local, "%s", local);
    if (pipe2(c->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        int err = errno;
        close(fd);
        free(c);
        return rp_err(RP_EIO, "SSH connection from %s: pipe: %s", remote, strerror(err));
    }
    c->ses = ssh_new();
    /* The listener thread and tunnel threads both hand sockets to the one bind. */
    pthread_mutex_lock(&s->bind_mu);
    int ok = c->ses != NULL && ssh_bind_accept_fd(s->bind, c->ses, fd) == SSH_OK;
    pthread_mutex_unlock(&s->bind_mu);
    if (!ok) {
        int rv = rp_err(RP_EIO, "connection from %s: libssh could not take it: %s", c->remote,
                        c->ses ? ssh_get_error(s->bind) : "out of memory");
        rp_warn(SSHD_LOG, "%s", rp_errmsg());
        if (c->ses != NULL)
            ssh_free(c->ses);
        close(fd);
        close(c->wake[0]);
        close(c->wake[1]);
        free(c);
        return rv;
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
    /* libssh's stack needs are modest; a smaller stack keeps 100 sessions light. */
    pthread_attr_setstacksize(&attr, 512 * 1024);
    pthread_t t;
    int err = pthread_create(&t, &attr, sshd_conn_main, c);
    pthread_attr_destroy(&attr);
    if (err != 0) {
        rp_warn(SSHD_LOG, "connection from %s: no thread for it: %s", c->remote, strerror(err));
        /* The thread body frees the connection; run it here to unwind the same way. */
        atomic_store(&c->stop, true);
        shutdown(fd, SHUT_RDWR);
        sshd_conn_main(c);
        return rp_err(RP_ENOMEM, "SSH connection from %s: no thread for it", remote);
    }
    return 0;
}

static void accept_one(struct agent_sshd *s)
{
    struct sockaddr_storage peer;
    socklen_t plen = sizeof peer;
    int fd = accept4(s->listen_fd, (struct sockaddr *)&peer, &plen, SOCK_CLOEXEC);
    if (fd < 0)
        return; /* EAGAIN, or the client gave up: nothing to do */
    pthread_mutex_lock(&s->mu);
    bool full = s->n_unauth >= s->max_unauthenticated;
    unsigned refused = 0;
    bool log_now = full && count_refusal(s, &refused);
    pthread_mutex_unlock(&s->mu);
    char remote[80], local[80] = "";
    format_addr(&peer, remote, sizeof remote);
    if (full) {
        close(fd);
        if (log_now)
            rp_warn(SSHD_LOG,
                    "refused %u connection(s) at accept (latest from %s): %u connections have "
                    "not authenticated yet (max_unauthenticated)",
                    refused, remote, s->max_unauthenticated);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    struct sockaddr_storage la;
    socklen_t llen = sizeof la;
    if (getsockname(fd, (struct sockaddr *)&la, &llen) == 0)
        format_addr(&la, local, sizeof local);
    serve_socket(s, fd, &peer, remote, local);
}

/* "a.b.c.d:port" or "[v6]:port" into @out (AF_UNSPEC if it is neither). */
static void parse_peer(const char *text, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    char host[64];
    const char *colon = strrchr(text, ':');
    if (colon == NULL || (size_t)(colon - text) >= sizeof host)
        return;
    memcpy(host, text, (size_t)(colon - text));
    host[colon - text] = '\0';
    char *end = NULL;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (end == colon + 1 || *end != '\0' || port > 65535)
        return;
    struct sockaddr_in *s4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)out;
    size_t hl = strlen(host);
    if (inet_pton(AF_INET, host, &s4->sin_addr) == 1) {
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
    } else if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
        host[hl - 1] = '\0';
        if (inet_pton(AF_INET6, host + 1, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            s6->sin6_port = htons((uint16_t)port);
        }
    }
}

int agent_sshd_serve_fd(struct agent_sshd *s, int fd, const char *peer)
{
    const char *remote = peer != NULL && peer[0] != '\0' ? peer : "tunnel";
    pthread_mutex_lock(&s->mu);
    bool stopping = s->stopping;
    bool full = s->n_unauth >= s->max_unauthenticated;
    unsigned refused = 0;
    bool log_now = !stopping && full && count_refusal(s, &refused);
    pthread_mutex_unlock(&s->mu);
    if (stopping) {
        close(fd);
        return rp_err(RP_ECLOSED, "the SSH server is stopping");
    }
    if (full) {
        close(fd);
        if (log_now)
            rp_warn(SSHD_LOG,
                    "refused %u tunnelled connection(s) (latest from %s): %u connections have "
                    "not authenticated yet (max_unauthenticated)",
                    refused, remote, s->max_unauthenticated);
        return rp_err(RP_EBUSY,
                      "%u SSH connections have not authenticated yet "
                      "(max_unauthenticated): try again later",
                      s->max_unauthenticated);
    }
    /* libssh does blocking I/O on its session's socket. */
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0 && (fl & O_NONBLOCK))
        fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    struct sockaddr_storage ss;
    parse_peer(remote, &ss);
    return serve_socket(s, fd, &ss, remote, "tunnel");
}

/* Shuts down the sockets of connections past the authentication deadline; returns
 * the time until the next deadline (-1 if none). */
static int enforce_deadlines(struct agent_sshd *s)
{
    uint64_t now = rp_mono_ms();
    int64_t next = -1;
    pthread_mutex_lock(&s->mu);
    for (struct sshd_conn *c = s->conns; c != NULL; c = c->next) {
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
    struct agent_sshd *s = arg;
    for (;;) {
        int timeout = enforce_deadlines(s);
        /* No listening socket (a tunnel-only node): poll skips a negative fd. */
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

static int bind_listener(struct agent_sshd *s)
{
    char host[256];
    const char *addr = s->listen_addr;
    const char *colon = strrchr(addr, ':');
    if (colon == NULL || colon == addr || strlen(addr) >= sizeof host)
        return rp_err(RP_EINVAL, "ssh_service.listen_addr %s: expected HOST:PORT", addr);
    size_t hl = (size_t)(colon - addr);
    memcpy(host, addr, hl);
    host[hl] = '\0';
    if (host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = '\0';
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC,
                             .ai_socktype = SOCK_STREAM,
                             .ai_flags = AI_PASSIVE | AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    int gai = getaddrinfo(host[0] ? host : NULL, colon + 1, &hints, &res);
    if (gai != 0)
        return rp_err(RP_EINVAL, "ssh_service.listen_addr %s: %s", addr, gai_strerror(gai));
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
        return rp_err(RP_EIO, "ssh_service.listen_addr %s: cannot listen: %s", addr, strerror(err));
    struct sockaddr_storage sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    s->port = ntohs(sa.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&sa)->sin6_port
                                             : ((struct sockaddr_in *)&sa)->sin_port);
    s->listen_fd = fd;
    return 0;
}

static void free_server(struct agent_sshd *s)
{
    free(s->listen_addr);
    free(s->host_key_path);
    free(s->host_id);
    free(s->nodename);
    free(s->sftp_server);
    for (size_t i = 0; i < s->n_accept_env; i++)
        free(s->accept_env[i]);
    free(s->accept_env);
    if (s->bind != NULL)
        ssh_bind_free(s->bind);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    if (s->wake[0] >= 0) {
        close(s->wake[0]);
        close(s->wake[1]);
    }
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->bind_mu);
    pthread_cond_destroy(&s->cond);
    free(s);
}

static char *dup_or(const char *v, const char *dflt)
{
    return strdup(v != NULL && v[0] != '\0' ? v : dflt);
}

int agent_sshd_start(struct agent_sshd **out, const struct agent_sshd_opts *o)
{
    *out = NULL;
    if (o->authority == NULL || o->host_key_path == NULL)
        return rp_err(RP_EINVAL, "agent_sshd_start: an authority and a host key path are required");
    struct agent_sshd *s = calloc(1, sizeof *s);
    if (s == NULL)
        return rp_err(RP_ENOMEM, "agent_sshd_start: out of memory");
    s->listen_fd = -1;
    s->wake[0] = s->wake[1] = -1;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->bind_mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    s->authority = o->authority;
    s->recording = o->recording;
    s->emit = o->emit;
    s->emit_arg = o->emit_arg;
    s->auth_deadline_ms = o->auth_deadline_ms ? o->auth_deadline_ms : DEFAULT_AUTH_DEADLINE_MS;
    s->max_unauthenticated = o->max_unauthenticated ? o->max_unauthenticated : DEFAULT_MAX_UNAUTH;
    s->running_as_root = geteuid() == 0;
    s->self_uid = geteuid();
    s->listen_addr = dup_or(o->listen_addr, DEFAULT_LISTEN);
    s->host_key_path = strdup(o->host_key_path);
    s->host_id = dup_or(o->host_id, "");
    s->nodename = dup_or(o->nodename, "");
    s->sftp_server = dup_or(o->sftp_server, DEFAULT_SFTP);
    int rv = RP_ENOMEM;
    if (!s->listen_addr || !s->host_key_path || !s->host_id || !s->nodename || !s->sftp_server)
        goto fail_msg;
    if (o->n_accept_env > 0) {
        s->accept_env = calloc(o->n_accept_env, sizeof *s->accept_env);
        if (s->accept_env == NULL)
            goto fail_msg;
        for (size_t i = 0; i < o->n_accept_env; i++) {
            if ((s->accept_env[i] = strdup(o->accept_env[i])) == NULL)
                goto fail_msg;
            s->n_accept_env++;
        }
    }
    ssh_key key = NULL;
    if (ssh_pki_import_privkey_file(s->host_key_path, NULL, NULL, NULL, &key) != SSH_OK) {
        rv = rp_err(RP_EINVAL, "SSH host key %s cannot be read (expected an OpenSSH private key)",
                    s->host_key_path);
        goto fail;
    }
    if (ssh_key_type(key) != SSH_KEYTYPE_ED25519) {
        ssh_key_free(key);
        rv = rp_err(RP_EINVAL, "SSH host key %s: expected an Ed25519 key", s->host_key_path);
        goto fail;
    }
    s->bind = ssh_bind_new();
    if (s->bind == NULL) {
        ssh_key_free(key);
        goto fail_msg;
    }
    /* The bind owns the key from here (ssh_bind_free releases it). */
    if (ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_IMPORT_KEY, key) != SSH_OK) {
        ssh_key_free(key);
        rv = rp_err(RP_EINVAL, "SSH host key %s: libssh refused it: %s", s->host_key_path,
                    ssh_get_error(s->bind));
        goto fail;
    }
    /* The fastest AEAD on machines without AES instructions and what OpenSSH prefers;
     * AES-GCM/CTR stay for clients configured otherwise. */
    const char *ciphers = "chacha20-poly1305@openssh.com,aes256-gcm@openssh.com,"
                          "aes128-gcm@openssh.com,aes256-ctr,aes128-ctr";
    ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_CIPHERS_C_S, ciphers);
    ssh_bind_options_set(s->bind, SSH_BIND_OPTIONS_CIPHERS_S_C, ciphers);
    if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0) {
        rv = rp_err(RP_EIO, "agent_sshd_start: pipe: %s", strerror(errno));
        goto fail;
    }
    rv = o->no_listener ? 0 : bind_listener(s);
    if (rv != 0)
        goto fail;
    /* A client that disconnects while we write must not kill the agent. */
    signal(SIGPIPE, SIG_IGN);
    uintptr_t id = 0;
    rv = live_add(s, &id);
    if (rv != 0)
        goto fail;
    rv = s->authority->on_change(s->authority->arg, authority_changed, (void *)id);
    if (rv != 0) {
        live_remove(s);
        goto fail;
    }
    if (pthread_create(&s->listener, NULL, listener_main, s) != 0) {
        live_remove(s);
        rv = rp_err(RP_ENOMEM, "agent_sshd_start: no thread for the listener");
        goto fail;
    }
    s->listener_running = true;
    if (o->no_listener)
        rp_info(SSHD_LOG, "SSH server serving reverse tunnels only (no TCP listener)");
    else
        rp_info(SSHD_LOG, "SSH server listening on %s (port %d)", s->listen_addr, s->port);
    *out = s;
    return 0;

fail_msg:
    rv = rp_err(RP_ENOMEM, "agent_sshd_start: out of memory");
fail:
    free_server(s);
    return rv;
}

void agent_sshd_stop(struct agent_sshd *s, uint64_t grace_ms)
{
    if (s == NULL)
        return;
    live_remove(s);
    pthread_mutex_lock(&s->mu);
    s->stopping = true;
    s->stop_deadline_mono = rp_mono_ms() + grace_ms;
    for (struct sshd_conn *c = s->conns; c != NULL; c = c->next) {
        atomic_store(&c->stop, true);
        wake_fd(c->wake[1]);
    }
    pthread_mutex_unlock(&s->mu);
    wake_fd(s->wake[1]);
    if (s->listener_running)
        pthread_join(s->listener, NULL);
    if (s->listen_fd >= 0)
        close(s->listen_fd);
    s->listen_fd = -1;
    pthread_mutex_lock(&s->mu);
    while (s->n_conns > 0) {
        /* Connections not yet authenticated are not sessions: cut them now. */
        for (struct sshd_conn *c = s->conns; c != NULL; c = c->next)
            if (!c->authed && !c->cut) {
                c->cut = true;
                shutdown(c->fd, SHUT_RDWR);
            }
        pthread_cond_wait(&s->cond, &s->mu);
    }
    pthread_mutex_unlock(&s->mu);
    rp_info(SSHD_LOG, "SSH server on %s stopped", s->listen_addr);
    free_server(s);
}
