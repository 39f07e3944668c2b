/* proxy/dial.c: tsh's SSH sessions through the proxy (ALPN "teleport-proxy-ssh",
 * design §2).
 *
 * The client sends one frame (u32 big-endian length <= PX_DIAL_MAX_FRAME, then a
 * msgpack map {target, login, version}); a worker finds the node and connects to it
 * (proxy_route_find, proxy_route_dial); the proxy answers one frame and, after an ok,
 * carries the bytes both ways untouched: the SSH session stays end to end between the
 * client and the node.
 *
 * A node reached through its reverse tunnel: the client's connection moves to the
 * tunnel's loop (px_tls_move) and is joined to the tunnel's stream there
 * (px_tunnel_stream_join): bytes go between the two TLS connections with no socket or
 * thread between them, and the stream's HTTP/2 window is the back-pressure.
 *
 * A node reached over TCP: the byte pump runs on the connection's loop, with
 * back-pressure both ways: bytes from the node are read only while the TLS write queue
 * is under PUMP_QUEUE_MAX, bytes from the client only while the node socket takes them
 * (at most one chunk is held). */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "lib/version.h"
#include "proxy/dial.h"
#include "proxy/internal.h"
#include "proxy/tunnel.h"

#define FRAME_DEADLINE_MS 10000
#define DIAL_TIMEOUT_MS 10000
#define PUMP_CHUNK 16384
#define PUMP_QUEUE_MAX (256 * 1024)

enum dial_state { D_FRAME, D_WORKING, D_MOVING, D_PUMP };

struct dial {
    struct px_tls *c;
    struct proxy *p;
    struct px_loop *loop;
    enum dial_state state;
    struct px_timer timer;
    uint8_t hdr[4];
    size_t hdr_len;
    uint8_t *body;
    uint32_t want;
    size_t have;
    /* the node */
    struct px_watch nw;
    uint8_t *out; /* client -> node bytes the node has not taken yet */
    size_t out_off, out_len;
    bool client_eof, node_eof, node_shut;
    /* or the node's tunnel stream (ours to end), and whether it is joined yet */
    struct px_tunnel_stream *stream;
    bool joined;
    /* Set by whichever of the connection's end and a worker that could not deliver its
     * result comes first while a worker holds the dial; the second frees it. */
    atomic_bool orphan;
    char peer[64];
};

/* What a worker does for one dial frame, and its result. */
struct dial_job {
    struct dial *d;
    struct px_loop *loop;
    struct proxy *p;
    struct rp_identity user;
    char target[300];
    char login[64];
    bool has_login;
    char client[64];
    /* result */
    int rv;
    char error[512];
    struct px_route route;
    int fd;
    struct px_tunnel_stream *stream;
};

/* ---- frames -------------------------------------------------------------------------- */

int px_dial_frame_parse(const void *body, size_t len, struct px_dial_request *out)
{
    msgpack_unpacked u;
    memset(out, 0, sizeof *out);
    if (len == 0 || len > PX_DIAL_MAX_FRAME)
        return rp_err(RP_EINVAL, "dial frame of %zu bytes (expected 1..%d)", len,
                      PX_DIAL_MAX_FRAME);
    if (rp_mp_parse(body, len, &u) != 0)
        return rp_err(RP_EINVAL, "the dial frame is not one msgpack map");
    int rv = 0;
    const msgpack_object *m = &u.data;
    const msgpack_object *target = rp_mp_get(m, "target");
    const msgpack_object *login = rp_mp_get(m, "login");
    const msgpack_object *version = rp_mp_get(m, "version");
    if (m->type != MSGPACK_OBJECT_MAP) {
        rv = rp_err(RP_EINVAL, "the dial frame is not a map {target, login, version}");
    } else if (target == NULL || target->type != MSGPACK_OBJECT_STR || target->via.str.size == 0 ||
               target->via.str.size >= sizeof out->target ||
               memchr(target->via.str.ptr, 0, target->via.str.size) != NULL) {
        rv = rp_err(RP_EINVAL, "dial frame: 'target' must be HOST[:PORT], 1 to %zu bytes",
                    sizeof out->target - 1);
    } else if (login != NULL && login->type != MSGPACK_OBJECT_NIL &&
               (login->type != MSGPACK_OBJECT_STR || login->via.str.size == 0 ||
                login->via.str.size >= sizeof out->login ||
                memchr(login->via.str.ptr, 0, login->via.str.size) != NULL)) {
        rv = rp_err(RP_EINVAL, "dial frame: 'login' must be a login name (1 to %zu bytes) or nil",
                    sizeof out->login - 1);
    } else if (version != NULL && version->type != MSGPACK_OBJECT_NIL &&
               (version->type != MSGPACK_OBJECT_STR ||
                version->via.str.size >= sizeof out->version ||
                memchr(version->via.str.ptr, 0, version->via.str.size) != NULL)) {
        rv = rp_err(RP_EINVAL, "dial frame: 'version' must be the client's version, x.y.z");
    } else {
        memcpy(out->target, target->via.str.ptr, target->via.str.size);
        if (login != NULL && login->type == MSGPACK_OBJECT_STR) {
            memcpy(out->login, login->via.str.ptr, login->via.str.size);
            out->has_login = true;
        }
        if (version != NULL && version->type == MSGPACK_OBJECT_STR)
            memcpy(out->version, version->via.str.ptr, version->via.str.size);
    }
    msgpack_unpacked_destroy(&u);
    return rv;
}

/* The error code of the answer for @rv. */
static const char *code_of(int rv)
{
    switch (rv) {
    case RP_ENOTFOUND:
        return "not_found";
    case RP_EINVAL:
        return "ambiguous";
    case RP_EDENIED:
        return "access_denied";
    case RP_EBUSY:
        return "busy";
    case RP_EPROTO:
        return "version";
    default:
        return "unreachable";
    }
}

static void write_frame(struct px_tls *c, const struct rp_buf *map)
{
    uint8_t hdr[4] = {(uint8_t)(map->len >> 24), (uint8_t)(map->len >> 16),
                      (uint8_t)(map->len >> 8), (uint8_t)map->len};
    if (px_tls_write(c, hdr, 4) == 0)
        px_tls_write(c, map->data, map->len);
}

/* Audits a refusal (a session.rejected event) and answers it. */
static void refuse(struct dial *d, const struct rp_identity *user, const char *login,
                   const char *target, const char *code, const char *error)
{
    struct rp_buf b;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "event", "session.rejected");
    rp_mp_map_str(&m, "code", "T1006W");
    rp_mp_map_u64(&m, "time", rp_now_ms());
    rp_mp_map_str(&m, "user", user && user->name ? user->name : "");
    rp_mp_map_str(&m, "login", login ? login : "");
    rp_mp_map_str(&m, "target", target ? target : "");
    rp_mp_map_str(&m, "proxy_id", proxy_host_id(d->p));
    rp_mp_map_str(&m, "addr.remote", d->peer);
    rp_mp_map_str(&m, "reason", error);
    rp_mp_map_end(&m);
    proxy_emit(d->p, b.data, b.len);
    rp_buf_reset(&b);
    rp_mp_packer_init(&pk, &b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_bool(&m, "ok", false);
    rp_mp_map_str(&m, "code", code);
    rp_mp_map_str(&m, "error", error);
    rp_mp_map_end(&m);
    write_frame(d->c, &b);
    rp_buf_free(&b);
    rp_info("proxy", "%s: dial to '%s' as %s refused (%s): %s", d->peer, target ? target : "",
            user && user->name ? user->name : "(no user)", code, error);
    px_tls_close(d->c);
}

/* ---- the pump ------------------------------------------------------------------------ */

static void dial_free(struct dial *d)
{
    px_timer_cancel(&d->timer);
    if (d->nw.loop != NULL)
        px_watch_del(&d->nw);
    if (d->nw.fd >= 0)
        close(d->nw.fd);
    free(d->body);
    free(d->out);
    free(d);
}

static void node_events(struct dial *d)
{
    if (d->nw.loop == NULL)
        return;
    uint32_t ev = 0;
    if (!d->node_eof && px_tls_pending(d->c) < PUMP_QUEUE_MAX)
        ev |= EPOLLIN;
    if (d->out_len > d->out_off)
        ev |= EPOLLOUT;
    px_watch_mod(&d->nw, ev);
}

/* Writes what the node has not taken yet; true once nothing is held. */
static bool node_flush(struct dial *d)
{
    while (d->out_len > d->out_off) {
        ssize_t w = send(d->nw.fd, d->out + d->out_off, d->out_len - d->out_off,
                         MSG_NOSIGNAL | MSG_DONTWAIT);
        if (w < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return false;
            rp_debug("proxy", "%s: writing to the node: %s", d->peer, strerror(errno));
            px_tls_close(d->c);
            return false;
        }
        d->out_off += (size_t)w;
    }
    d->out_off = d->out_len = 0;
    if (d->client_eof && !d->node_shut) {
        shutdown(d->nw.fd, SHUT_WR);
        d->node_shut = true;
    }
    return true;
}

static void client_readable(struct px_tls *c)
{
    struct dial *d = c->mod;
    if (d->state != D_PUMP)
        return;
    if (d->stream != NULL) {
        if (d->joined)
            px_tunnel_stream_client_readable(d->stream, c);
        else
            px_tls_pause_reading(c, true);
        return;
    }
    while (d->out_len == d->out_off && !d->client_eof) {
        if (d->out == NULL && (d->out = malloc(PUMP_CHUNK)) == NULL) {
            px_tls_close(c);
            return;
        }
        ssize_t n = px_tls_read(c, d->out, PUMP_CHUNK);
        if (n == RP_EAGAIN)
            break;
        if (n < 0) {
            px_tls_close(c);
            return;
        }
        if (n == 0) {
            d->client_eof = true;
            break;
        }
        d->out_off = 0;
        d->out_len = (size_t)n;
        if (!node_flush(d))
            break;
    }
    if (d->out_len == d->out_off) {
        /* Idle: give the chunk back. */
        free(d->out);
        d->out = NULL;
        d->out_off = d->out_len = 0;
        if (d->client_eof)
            node_flush(d);
    }
    px_tls_pause_reading(c, d->out_len > d->out_off || d->client_eof);
    node_events(d);
}

static void node_event(struct px_watch *w, uint32_t events)
{
    struct dial *d = (struct dial *)((char *)w - offsetof(struct dial, nw));
    if (events & EPOLLOUT) {
        if (node_flush(d)) {
            free(d->out);
            d->out = NULL;
            px_tls_pause_reading(d->c, d->client_eof);
        }
    }
    if ((events & (EPOLLIN | EPOLLHUP | EPOLLERR)) && !d->node_eof) {
        uint8_t buf[PUMP_CHUNK];
        while (px_tls_pending(d->c) < PUMP_QUEUE_MAX) {
            ssize_t n = recv(w->fd, buf, sizeof buf, MSG_DONTWAIT);
            if (n > 0) {
                if (px_tls_write(d->c, buf, (size_t)n) != 0)
                    return;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EINTR))
                break;
            /* The node closed (or failed): flush what it said, then close. */
            d->node_eof = true;
            px_watch_del(&d->nw);
            px_tls_close(d->c);
            return;
        }
    }
    node_events(d);
}

static void client_drained(struct px_tls *c)
{
    struct dial *d = c->mod;
    if (d->state != D_PUMP)
        return;
    if (d->stream != NULL) {
        if (d->joined)
            px_tunnel_stream_client_drained(d->stream);
        return;
    }
    node_events(d);
}

static void client_closed(struct px_tls *c)
{
    struct dial *d = c->mod;
    if (d->state == D_WORKING) {
        d->c = NULL;
        if (atomic_exchange(&d->orphan, true))
            dial_free(d); /* the worker gave up on it already */
        return;
    }
    if (d->stream != NULL) {
        if (d->joined)
            px_tunnel_stream_client_closed(d->stream);
        else
            px_tunnel_stream_drop(d->stream);
        d->stream = NULL;
    }
    dial_free(d);
}

/* ---- the worker ---------------------------------------------------------------------- */

static void job_free(struct dial_job *j)
{
    rp_identity_free(&j->user);
    px_route_free(&j->route);
    if (j->fd >= 0)
        close(j->fd);
    px_tunnel_stream_drop(j->stream);
    free(j);
}

/* On the tunnel's loop, where the client's connection now is: joins the two. */
static void moved_to_tunnel(struct px_tls *c, void *arg)
{
    struct dial *d = arg;
    d->loop = c->w.loop;
    d->state = D_PUMP;
    if (px_tunnel_stream_join(d->stream, c) != 0) {
        rp_info("proxy", "%s: %s", d->peer, rp_errmsg());
        px_tls_close(c);
        return;
    }
    d->joined = true;
}

/* On the loop: answers the client and starts the pump. */
static void job_done(void *arg)
{
    struct dial_job *j = arg;
    struct dial *d = j->d;
    if (atomic_load(&d->orphan)) {
        dial_free(d);
        job_free(j);
        return;
    }
    d->state = D_PUMP;
    if (j->rv != 0) {
        refuse(d, &j->user, j->has_login ? j->login : NULL, j->target, code_of(j->rv), j->error);
        job_free(j);
        return;
    }
    struct rp_buf b;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_bool(&m, "ok", true);
    rp_mp_map_str(&m, "host_id", j->route.host_id);
    rp_mp_map_str(&m, "hostname", j->route.hostname);
    rp_mp_map_str(&m, "addr", j->route.addr);
    rp_mp_map_bool(&m, "tunnel", j->route.tunnel);
    rp_mp_map_str(&m, "host_key", j->route.host_key);
    rp_mp_map_str(&m, "host_cert", j->route.host_cert);
    rp_mp_map_end(&m);
    write_frame(d->c, &b);
    rp_buf_free(&b);
    rp_info("proxy", "%s: %s -> %s (%s) as %s%s", d->peer, j->user.name, j->route.hostname,
            j->route.host_id, j->has_login ? j->login : "(any login)",
            j->stream != NULL ? " through its tunnel" : "");
    if (j->stream != NULL) {
        d->stream = j->stream;
        j->stream = NULL;
        job_free(j);
        d->state = D_MOVING;
        if (px_tls_move(d->c, px_tunnel_stream_loop(d->stream), moved_to_tunnel, d) != 0) {
            rp_warn("proxy", "%s: %s", d->peer, rp_errmsg());
            d->state = D_PUMP;
            px_tls_close(d->c);
        }
        return;
    }
    d->nw.fd = j->fd;
    j->fd = -1;
    d->nw.on_event = node_event;
    job_free(j);
    if (px_watch_add(d->loop, &d->nw, EPOLLIN) != 0) {
        d->nw.loop = NULL;
        px_tls_close(d->c);
        return;
    }
    px_tls_pause_reading(d->c, false);
}

static void job_run(void *arg)
{
    struct dial_job *j = arg;
    j->rv = proxy_route_find(j->p, &j->user, j->has_login ? j->login : NULL, j->target, &j->route);
    if (j->rv == 0)
        j->rv = proxy_route_open(j->p, &j->route, j->client, DIAL_TIMEOUT_MS, &j->fd, &j->stream);
    if (j->rv != 0)
        snprintf(j->error, sizeof j->error, "%s", rp_errmsg());
    if (px_loop_post(j->loop, job_done, j) != 0) {
        /* The proxy is stopping: its loops no longer run. The dial's frame timer is
         * off and its node socket not watched, so it may be freed here. */
        if (atomic_exchange(&j->d->orphan, true))
            dial_free(j->d);
        job_free(j);
    }
}

/* ---- the frame ------------------------------------------------------------------------- */

static void frame_ready(struct dial *d)
{
    struct px_dial_request req;
    px_timer_cancel(&d->timer);
    int rv = px_dial_frame_parse(d->body, d->want, &req);
    free(d->body);
    d->body = NULL;
    const struct rp_identity *user = d->c->ident;
    if (rv != 0) {
        refuse(d, user, NULL, NULL, "version", rp_errmsg());
        return;
    }
    if (req.version[0] != '\0') {
        enum rp_version_verdict v = rp_version_check_client(rp_version_self(), req.version);
        if (v != RP_VERSION_OK) {
            char why[300];
            rp_version_explain(v, rp_version_self(), req.version, why, sizeof why);
            refuse(d, user, req.has_login ? req.login : NULL, req.target, "version", why);
            return;
        }
    }
    if (user == NULL || user->system_role != RP_SYS_NONE) {
        refuse(d, user, req.has_login ? req.login : NULL, req.target, "access_denied",
               user == NULL ? "a user certificate is required: run tsh login"
                            : "only users may open SSH sessions through the proxy");
        return;
    }
    struct dial_job *j = calloc(1, sizeof *j);
    if (j == NULL || rp_identity_copy(&j->user, user) != 0) {
        free(j);
        refuse(d, user, NULL, req.target, "busy", "the proxy is out of memory");
        return;
    }
    j->d = d;
    j->loop = d->loop;
    j->p = d->p;
    j->fd = -1;
    memcpy(j->target, req.target, sizeof j->target);
    memcpy(j->login, req.login, sizeof j->login);
    j->has_login = req.has_login;
    snprintf(j->client, sizeof j->client, "%s", d->peer);
    d->state = D_WORKING;
    px_tls_pause_reading(d->c, true);
    if (proxy_run_blocking(d->p, job_run, j) != 0) {
        d->state = D_FRAME;
        refuse(d, &j->user, j->has_login ? j->login : NULL, j->target, "busy",
               "the proxy has too many sessions being set up: try again in a moment");
        job_free(j);
    }
}

static void frame_readable(struct px_tls *c)
{
    struct dial *d = c->mod;
    if (d->state == D_PUMP) {
        client_readable(c);
        return;
    }
    if (d->state != D_FRAME)
        return;
    while (d->hdr_len < 4) {
        ssize_t n = px_tls_read(c, d->hdr + d->hdr_len, 4 - d->hdr_len);
        if (n == RP_EAGAIN)
            return;
        if (n <= 0) {
            px_tls_close(c);
            return;
        }
        d->hdr_len += (size_t)n;
        if (d->hdr_len == 4) {
            d->want = (uint32_t)d->hdr[0] << 24 | (uint32_t)d->hdr[1] << 16 |
                      (uint32_t)d->hdr[2] << 8 | d->hdr[3];
            if (d->want == 0 || d->want > PX_DIAL_MAX_FRAME) {
                char why[160];
                snprintf(why, sizeof why, "a dial frame of %u bytes: expected 1..%d",
                         (unsigned)d->want, PX_DIAL_MAX_FRAME);
                refuse(d, c->ident, NULL, NULL, "version", why);
                return;
            }
            if ((d->body = malloc(d->want)) == NULL) {
                px_tls_close(c);
                return;
            }
        }
    }
    while (d->have < d->want) {
        ssize_t n = px_tls_read(c, d->body + d->have, d->want - d->have);
        if (n == RP_EAGAIN)
            return;
        if (n <= 0) {
            px_tls_close(c);
            return;
        }
        d->have += (size_t)n;
    }
    frame_ready(d);
}

static void frame_timeout(struct px_timer *t)
{
    struct dial *d = (struct dial *)((char *)t - offsetof(struct dial, timer));
    rp_info("proxy", "%s: no dial frame within %d s; closing", d->peer, FRAME_DEADLINE_MS / 1000);
    px_tls_abort(d->c);
}

void px_dial_attach(struct px_tls *c)
{
    struct dial *d = calloc(1, sizeof *d);
    if (d == NULL) {
        px_tls_abort(c);
        return;
    }
    d->c = c;
    d->p = c->proxy;
    d->loop = c->w.loop;
    d->nw.fd = -1;
    snprintf(d->peer, sizeof d->peer, "%s", c->peer);
    c->mod = d;
    c->on_readable = frame_readable;
    c->on_drained = client_drained;
    c->on_close = client_closed;
    px_timer_arm(d->loop, &d->timer, FRAME_DEADLINE_MS, frame_timeout);
}
