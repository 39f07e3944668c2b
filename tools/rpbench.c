/* tools/rpbench.c: a load generator for the auth API, and for etcd beside it.
 *
 *   rpbench -c CONFIG --op=OP --clients=N --duration=S [flags]
 *   rpbench --etcd=URL[,URL...] [--cacert=F --cert=F --key=F] --op=OP --clients=N ...
 *
 * N clients each hold one persistent connection with one request in flight and
 * issue requests back to back for S seconds (after --warmup seconds that are not
 * counted). The result is one line of JSON: operations per second (requests that
 * started in the window and were answered in it), latency percentiles in
 * microseconds (every request that started in the window, also those answered after
 * it: "late" counts them), errors.
 *
 * Against Raftport the clients use the admin identity of the config's data_dir, over
 * mutual TLS 1.3. put, get and get-stale run on --loop-threads threads (2) that each
 * drive their share of the clients' connections from an epoll loop, as etcd's Go
 * client drives its clients from goroutines (see loop_main); fill, issue and
 * --loop-threads=0 run a thread per client, each with its own auth client
 * (auth/auth.h). Against etcd each
 * thread speaks HTTP/1.1 keep-alive to etcd's v3 gRPC-JSON gateway (POST
 * /v3/kv/put, /v3/kv/range), over TLS 1.3 with a client certificate when the URL
 * is https, plain TCP when it is http.
 *
 * The etcd side of scripts/bench.sh is tools/etcdbench (etcd's native gRPC client); this
 * JSON-gateway client stays for the footnote that script prints with BENCH_ETCD_GATEWAY=1.
 *
 * Operations (keys are "<prefix><i>", "k<i>" by default, with i uniform in [0, --keys)):
 *   put        Raftport: put of {kind: bench, version: v1, metadata: {name: k<i>},
 *              spec: {value: <value-size bytes>}} with a fresh rid; etcd: kv/put.
 *   get        linearizable read of one key.
 *   get-stale  Raftport: get with stale: true; etcd: range with serializable: true.
 *   fill       writes every key once (<prefix>0 .. <prefix><keys-1>, split between the threads),
 *              ignoring --duration, so that later gets find what they read.
 *   issue      Raftport only: sign_user {user: --user, ssh_pubkey, tls_pubkey}, the
 *              issuance of a user's SSH and X.509 certificates (auth/certs.c). Each
 *              thread makes one Ed25519 SSH key and one ECDSA P-256 TLS key before
 *              the run and sends the same request over and over (the server signs
 *              anew each time and commits a cert.create audit event before it
 *              answers). Only answers with ok and both certificates count.
 *
 * Failed requests are counted by error code ("errors_by_code" in the JSON). For
 * issue, the JSON also says on which auth server (raft id) each client's connection
 * ended up ("clients_on"): the client fails over to another server on "busy",
 * "not_leader" and "unavailable", so clients can drift from where they started. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "auth/auth.h"
#include "lib/buf.h"
#include "lib/config.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/frame.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"

#define MAX_CLIENTS 1024
#define MAX_ENDPOINTS 16
#define CALL_TIMEOUT_MS 10000
#define HTTP_MAX_HEADER 16384
#define HTTP_MAX_BODY (1u << 20)
#define MAX_ERR_CODES 16
#define MAX_RAFT_IDS 16
#define MAX_KEY_PREFIX 8

enum op { OP_PUT, OP_GET, OP_GET_STALE, OP_FILL, OP_ISSUE };
enum system { SYS_RAFTPORT, SYS_ETCD };

struct endpoint {
    char addr[64]; /* host:port */
    bool tls;      /* etcd only: https */
};

struct bench {
    enum system sys;
    enum op op;
    const char *op_name;
    int clients;
    double duration_s;
    double warmup_s;
    size_t value_size;
    uint32_t keys;
    const char *key_prefix; /* names are <key_prefix><i>: 1..MAX_KEY_PREFIX of [a-z0-9-] */
    struct endpoint endpoints[MAX_ENDPOINTS];
    size_t n_endpoints;

    /* Raftport */
    struct rp_config cfg;
    SSL_CTX *rp_ctx;
    char *rp_value;   /* value_size bytes, no NUL needed */
    const char *user; /* issue: whose certificates */
    /* etcd */
    SSL_CTX *etcd_ctx;
    char *etcd_value_b64; /* base64 of the value, NUL-terminated */

    /* Event-loop mode: this many threads share the clients (0: a thread per client). */
    int loop_threads;

    /* Run control: set by the main thread between the two barriers. */
    pthread_barrier_t ready, go;
    uint64_t measure_from_ns, measure_until_ns;
};

/* ---- measurements ---------------------------------------------------------------- */

struct worker {
    struct bench *b;
    int idx;
    pthread_t thread;
    uint64_t rng;
    int setup_rv;
    char setup_err[256];
    /* latencies of the successful requests that started in the window, answered in it
     * or after it, in microseconds; done: those answered inside the window */
    uint32_t *lat;
    size_t n_lat, cap_lat;
    uint64_t done;
    uint64_t errors;
    char first_err[512];
    /* errors counted by code name (rp_strerror, or "no_certs" for issue) */
    struct {
        const char *code;
        uint64_t n;
    } err_codes[MAX_ERR_CODES];
    size_t n_err_codes;
    /* issue: the encoded sign_user request, built once; the raft id of the server the
     * client's connection ended on (0: unknown) */
    struct rp_buf issue_req;
    uint64_t end_raft_id;
    uint64_t ok_all; /* successful requests, warm-up and stragglers included */
    /* fill: when this worker wrote its last key */
    uint64_t fill_done_ns;
    /* event-loop mode (see loop_main): the client's own connection and answer */
    struct rp_conn conn;
    bool conn_open, in_flight;
    uint64_t sent_ns;
    struct rp_frame_reader fr;
    /* clients */
    struct auth_client *rp;
    struct http_conn *http;
    struct rp_buf req;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static uint32_t next_key(struct worker *w)
{
    /* xorshift64: cheap, per thread, good enough to spread keys. */
    uint64_t x = w->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    w->rng = x;
    return (uint32_t)(x % w->b->keys);
}

static void record_ok(struct worker *w, uint64_t ns)
{
    if (w->n_lat == w->cap_lat) {
        size_t cap = w->cap_lat ? w->cap_lat * 2 : 4096;
        uint32_t *p = realloc(w->lat, cap * sizeof *p);
        if (p == NULL)
            return; /* keep going: one sample fewer */
        w->lat = p;
        w->cap_lat = cap;
    }
    uint64_t us = ns / 1000;
    w->lat[w->n_lat++] = us > UINT32_MAX ? UINT32_MAX : (uint32_t)us;
}

/* @code: an error code name with static storage (rp_strerror's names, literals). */
static void record_err(struct worker *w, const char *code, const char *msg)
{
    if (w->errors++ == 0)
        snprintf(w->first_err, sizeof w->first_err, "%s", msg);
    size_t i;
    for (i = 0; i < w->n_err_codes; i++) {
        if (strcmp(w->err_codes[i].code, code) == 0)
            break;
    }
    if (i == w->n_err_codes) {
        if (i == MAX_ERR_CODES)
            i--; /* the last slot collects the rest */
        else
            w->n_err_codes++;
        w->err_codes[i].code = code;
    }
    w->err_codes[i].n++;
}

/* ---- a minimal HTTP/1.1 client (keep-alive, optional TLS) ---------------------------- */

struct http_conn {
    const struct endpoint *ep;
    SSL_CTX *ctx; /* NULL: plain TCP */
    int fd;
    SSL *ssl;
    bool open;
    uint8_t *in; /* received, not yet consumed bytes: in[0..in_len) */
    size_t in_len, in_cap;
    struct rp_buf out;
};

static void http_close(struct http_conn *h)
{
    if (h->ssl != NULL) {
        SSL_free(h->ssl);
        h->ssl = NULL;
    }
    if (h->fd >= 0) {
        close(h->fd);
        h->fd = -1;
    }
    h->open = false;
    h->in_len = 0;
}

static int http_open(struct http_conn *h)
{
    struct sockaddr_storage ss;
    socklen_t sl;
    int rv = rp_addr_parse(h->ep->addr, &ss, &sl);
    if (rv != 0)
        return rv;
    h->fd = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (h->fd < 0)
        return rp_err(RP_EIO, "socket: %s", strerror(errno));
    struct timeval tv = {CALL_TIMEOUT_MS / 1000, 0};
    int one = 1;
    setsockopt(h->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(h->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    setsockopt(h->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(h->fd, (struct sockaddr *)&ss, sl) != 0) {
        rv = rp_err(RP_EIO, "connect %s: %s", h->ep->addr, strerror(errno));
        http_close(h);
        return rv;
    }
    if (h->ctx != NULL) {
        h->ssl = SSL_new(h->ctx);
        if (h->ssl == NULL || SSL_set_fd(h->ssl, h->fd) != 1 || SSL_connect(h->ssl) != 1) {
            unsigned long e = ERR_get_error();
            char eb[200];
            ERR_error_string_n(e, eb, sizeof eb);
            ERR_clear_error();
            http_close(h);
            return rp_err(RP_ETLS, "TLS handshake with %s: %s", h->ep->addr, eb);
        }
    }
    h->open = true;
    return 0;
}

static int http_write_all(struct http_conn *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    while (n > 0) {
        ssize_t k;
        if (h->ssl != NULL) {
            int r = SSL_write(h->ssl, b, n > INT32_MAX ? INT32_MAX : (int)n);
            k = r > 0 ? r : -1;
        } else {
            k = send(h->fd, b, n, MSG_NOSIGNAL);
            if (k < 0 && errno == EINTR)
                continue;
        }
        if (k <= 0)
            return rp_err(RP_EIO, "write to %s failed", h->ep->addr);
        b += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Reads more bytes into h->in, never holding more than @limit in all. */
static int http_fill(struct http_conn *h, size_t limit)
{
    if (h->in_len >= limit)
        return rp_err(RP_ETOOBIG, "HTTP response from %s larger than %zu bytes", h->ep->addr,
                      limit);
    if (h->in_cap < limit) {
        uint8_t *p = realloc(h->in, limit);
        if (p == NULL)
            return rp_err(RP_ENOMEM, "HTTP buffer");
        h->in = p;
        h->in_cap = limit;
    }
    size_t room = limit - h->in_len;
    ssize_t k;
    for (;;) {
        if (h->ssl != NULL) {
            int r = SSL_read(h->ssl, h->in + h->in_len, room > INT32_MAX ? INT32_MAX : (int)room);
            k = r > 0 ? r : (SSL_get_error(h->ssl, r) == SSL_ERROR_ZERO_RETURN ? 0 : -1);
        } else {
            k = recv(h->fd, h->in + h->in_len, room, 0);
            if (k < 0 && errno == EINTR)
                continue;
        }
        break;
    }
    if (k == 0)
        return rp_err(RP_ECLOSED, "%s closed the connection", h->ep->addr);
    if (k < 0)
        return rp_err(errno == EAGAIN ? RP_ETIMEDOUT : RP_EIO, "read from %s failed", h->ep->addr);
    h->in_len += (size_t)k;
    return 0;
}

static void http_consume(struct http_conn *h, size_t n)
{
    memmove(h->in, h->in + n, h->in_len - n);
    h->in_len -= n;
}

/* Finds "\r\n" in in[from..in_len); returns its offset or -1. */
static long find_crlf(const struct http_conn *h, size_t from)
{
    for (size_t i = from; i + 1 < h->in_len; i++) {
        if (h->in[i] == '\r' && h->in[i + 1] == '\n')
            return (long)i;
    }
    return -1;
}

/* Value of header @name in the header block in[0..hlen), copied into @out. */
static bool header_value(const struct http_conn *h, size_t hlen, const char *name, char *out,
                         size_t outlen)
{
    size_t nl = strlen(name);
    size_t line = 0;
    while (line < hlen) {
        size_t end = line;
        while (end + 1 < hlen && !(h->in[end] == '\r' && h->in[end + 1] == '\n'))
            end++;
        if (end - line > nl && h->in[line + nl] == ':' &&
            strncasecmp((const char *)h->in + line, name, nl) == 0) {
            size_t v = line + nl + 1;
            while (v < end && (h->in[v] == ' ' || h->in[v] == '\t'))
                v++;
            size_t n = end - v;
            if (n >= outlen)
                n = outlen - 1;
            memcpy(out, h->in + v, n);
            out[n] = '\0';
            return true;
        }
        line = end + 2;
    }
    return false;
}

/* Parses a decimal or hex number of at most 9 digits (bounded lengths only). */
static int parse_len(const char *s, int base, size_t *out)
{
    char *end;
    if (*s == '\0' || strlen(s) > 9)
        return -1;
    unsigned long v = strtoul(s, &end, base);
    while (*end == ' ' || *end == '\t')
        end++;
    if (*end != '\0' && *end != ';') /* chunk extensions after ';' */
        return -1;
    *out = v;
    return 0;
}

/* Reads a chunked body into @body. */
static int http_read_chunked(struct http_conn *h, struct rp_buf *body)
{
    for (;;) {
        long eol;
        while ((eol = find_crlf(h, 0)) < 0) {
            int rv = http_fill(h, HTTP_MAX_HEADER + HTTP_MAX_BODY);
            if (rv != 0)
                return rv;
        }
        char line[32];
        size_t n = (size_t)eol < sizeof line - 1 ? (size_t)eol : sizeof line - 1;
        memcpy(line, h->in, n);
        line[n] = '\0';
        size_t sz;
        if (parse_len(line, 16, &sz) != 0)
            return rp_err(RP_EPROTO, "bad chunk size line from %s", h->ep->addr);
        http_consume(h, (size_t)eol + 2);
        if (sz == 0)
            break;
        if (body->len + sz > HTTP_MAX_BODY)
            return rp_err(RP_ETOOBIG, "chunked body from %s over %u bytes", h->ep->addr,
                          HTTP_MAX_BODY);
        while (h->in_len < sz + 2) {
            int rv = http_fill(h, HTTP_MAX_HEADER + HTTP_MAX_BODY);
            if (rv != 0)
                return rv;
        }
        rp_buf_append(body, h->in, sz);
        http_consume(h, sz + 2);
    }
    /* Trailer lines up to the empty one. */
    for (;;) {
        long eol;
        while ((eol = find_crlf(h, 0)) < 0) {
            int rv = http_fill(h, HTTP_MAX_HEADER + HTTP_MAX_BODY);
            if (rv != 0)
                return rv;
        }
        http_consume(h, (size_t)eol + 2);
        if (eol == 0)
            return 0;
    }
}

/* One POST and its answer: *status and the body (bounded). Transport or protocol
 * failures close the connection; the next call reconnects. */
static int http_post(struct http_conn *h, const char *path, const char *json, size_t json_len,
                     int *status, struct rp_buf *body)
{
    int rv;
    rp_buf_reset(body);
    if (!h->open && (rv = http_open(h)) != 0)
        return rv;
    rp_buf_reset(&h->out);
    rp_buf_printf(&h->out,
                  "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n"
                  "Content-Length: %zu\r\n\r\n",
                  path, h->ep->addr, json_len);
    rp_buf_append(&h->out, json, json_len);
    if ((rv = http_write_all(h, h->out.data, h->out.len)) != 0)
        goto fail;

    /* Header block. */
    size_t hlen = 0;
    for (;;) {
        for (size_t i = 0; i + 3 < h->in_len; i++) {
            if (memcmp(h->in + i, "\r\n\r\n", 4) == 0) {
                hlen = i + 2; /* through the last header's CRLF */
                break;
            }
        }
        if (hlen > 0)
            break;
        if ((rv = http_fill(h, HTTP_MAX_HEADER)) != 0)
            goto fail;
    }
    /* Status line: HTTP/1.x NNN ... */
    if (hlen < 12 || memcmp(h->in, "HTTP/1.", 7) != 0 || h->in[8] != ' ' || h->in[9] < '1' ||
        h->in[9] > '5' || h->in[10] < '0' || h->in[10] > '9' || h->in[11] < '0' ||
        h->in[11] > '9') {
        rv = rp_err(RP_EPROTO, "%s: not an HTTP/1.x status line", h->ep->addr);
        goto fail;
    }
    *status = (h->in[9] - '0') * 100 + (h->in[10] - '0') * 10 + (h->in[11] - '0');
    char v[64];
    bool chunked =
        header_value(h, hlen, "Transfer-Encoding", v, sizeof v) && strcasestr(v, "chunked") != NULL;
    bool close_after =
        header_value(h, hlen, "Connection", v, sizeof v) && strcasecmp(v, "close") == 0;
    size_t clen = 0;
    bool has_len = header_value(h, hlen, "Content-Length", v, sizeof v);
    if (has_len && parse_len(v, 10, &clen) != 0) {
        rv = rp_err(RP_EPROTO, "%s: bad Content-Length '%s'", h->ep->addr, v);
        goto fail;
    }
    http_consume(h, hlen + 2);
    if (chunked) {
        if ((rv = http_read_chunked(h, body)) != 0)
            goto fail;
    } else if (has_len) {
        if (clen > HTTP_MAX_BODY) {
            rv = rp_err(RP_ETOOBIG, "%s: body of %zu bytes", h->ep->addr, clen);
            goto fail;
        }
        while (h->in_len < clen) {
            if ((rv = http_fill(h, HTTP_MAX_HEADER + HTTP_MAX_BODY)) != 0)
                goto fail;
        }
        rp_buf_append(body, h->in, clen);
        http_consume(h, clen);
    } else {
        /* Neither: the body runs to EOF, which a keep-alive benchmark cannot use. */
        rv =
            rp_err(RP_EPROTO, "%s: answer without Content-Length or chunked encoding", h->ep->addr);
        goto fail;
    }
    if (close_after)
        http_close(h);
    return 0;

fail:
    http_close(h);
    return rv;
}

static struct http_conn *http_new(const struct endpoint *ep, SSL_CTX *ctx)
{
    struct http_conn *h = calloc(1, sizeof *h);
    if (h == NULL)
        return NULL;
    h->ep = ep;
    h->ctx = ep->tls ? ctx : NULL;
    h->fd = -1;
    rp_buf_init(&h->out);
    return h;
}

static void http_free(struct http_conn *h)
{
    if (h == NULL)
        return;
    http_close(h);
    free(h->in);
    rp_buf_free(&h->out);
    free(h);
}

static char *base64(const void *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out != NULL)
        EVP_EncodeBlock((unsigned char *)out, p, (int)n);
    return out;
}

/* ---- one request of each kind ------------------------------------------------------------ */

static void key_name(const struct bench *b, uint32_t i, char *out, size_t n)
{
    snprintf(out, n, "%s%" PRIu32, b->key_prefix, i);
}

/* Encodes the request of @op on key @key into w->req. */
static void build_rp_request(struct worker *w, enum op op, uint32_t key)
{
    struct bench *b = w->b;
    char name[24], rid[33];
    msgpack_packer pk;
    key_name(b, key, name, sizeof name);
    rp_buf_reset(&w->req);
    rp_mp_packer_init(&pk, &w->req);
    if (op == OP_PUT || op == OP_FILL) {
        auth_new_rid(rid);
        msgpack_pack_map(&pk, 3);
        rp_mp_kv_str(&pk, "m", "put");
        rp_mp_pack_str(&pk, "res");
        msgpack_pack_map(&pk, 4);
        rp_mp_kv_str(&pk, "kind", "bench");
        rp_mp_kv_str(&pk, "version", "v1");
        rp_mp_pack_str(&pk, "metadata");
        msgpack_pack_map(&pk, 1);
        rp_mp_kv_str(&pk, "name", name);
        rp_mp_pack_str(&pk, "spec");
        msgpack_pack_map(&pk, 1);
        rp_mp_pack_str(&pk, "value");
        rp_mp_pack_strn(&pk, b->rp_value, b->value_size);
        rp_mp_kv_str(&pk, "rid", rid);
    } else {
        msgpack_pack_map(&pk, op == OP_GET_STALE ? 4 : 3);
        rp_mp_kv_str(&pk, "m", "get");
        rp_mp_kv_str(&pk, "kind", "bench");
        rp_mp_kv_str(&pk, "name", name);
        if (op == OP_GET_STALE)
            rp_mp_kv_bool(&pk, "stale", true);
    }
}

/* Returns 0 on success; on failure records nothing and leaves the reason in @err. */
static int rp_request(struct worker *w, enum op op, uint32_t key, char *err, size_t errlen)
{
    msgpack_unpacked resp;
    build_rp_request(w, op, key);
    int rv = auth_client_call(w->rp, w->req.data, w->req.len, &resp);
    if (rv != 0)
        snprintf(err, errlen, "%s: %s", rp_strerror(rv), rp_errmsg());
    msgpack_unpacked_destroy(&resp);
    return rv;
}

/* Error code for an answer that was ok but lacked a certificate. */
#define ERR_NO_CERTS 1

/* One sign_user call with the worker's prepared request. 0 only for an ok answer
 * that carries both an SSH and an X.509 certificate. */
static int issue_request(struct worker *w, char *err, size_t errlen)
{
    msgpack_unpacked resp;
    int rv = auth_client_call(w->rp, w->issue_req.data, w->issue_req.len, &resp);
    if (rv != 0) {
        snprintf(err, errlen, "%s: %s", rp_strerror(rv), rp_errmsg());
    } else {
        const char *ssh, *tls;
        size_t sn = 0, tn = 0;
        if (rp_mp_get_str(&resp.data, "ssh_cert", &ssh, &sn) != 0 || sn == 0 ||
            rp_mp_get_str(&resp.data, "tls_cert", &tls, &tn) != 0 || tn == 0) {
            snprintf(err, errlen, "no_certs: answer ok but without ssh_cert and tls_cert");
            rv = ERR_NO_CERTS;
        }
    }
    msgpack_unpacked_destroy(&resp);
    return rv;
}

static const char *err_code_name(int rv)
{
    return rv == ERR_NO_CERTS ? "no_certs" : rp_strerror(rv);
}

/* issue: one SSH key and one TLS key for this thread, and the request carrying them. */
static int issue_setup(struct worker *w)
{
    EVP_PKEY *ssh = NULL, *tls = NULL;
    char *line = NULL, *pem = NULL;
    int rv = rp_ssh_keygen(RP_SSH_KEY_ED25519, &ssh);
    if (rv == 0)
        rv = rp_ssh_pubkey_format(ssh, NULL, &line);
    if (rv == 0 && (tls = rp_tls_keygen()) == NULL)
        rv = RP_ETLS;
    if (rv == 0)
        rv = rp_tls_pubkey_to_pem(tls, &pem);
    if (rv == 0) {
        msgpack_packer pk;
        rp_buf_reset(&w->issue_req);
        rp_mp_packer_init(&pk, &w->issue_req);
        msgpack_pack_map(&pk, 4);
        rp_mp_kv_str(&pk, "m", "sign_user");
        rp_mp_kv_str(&pk, "user", w->b->user);
        rp_mp_kv_str(&pk, "ssh_pubkey", line);
        rp_mp_kv_str(&pk, "tls_pubkey", pem);
    } else {
        rv = rp_err(rv, "making the client's keys: %s", rp_errmsg());
    }
    EVP_PKEY_free(ssh);
    EVP_PKEY_free(tls);
    free(line);
    free(pem);
    return rv;
}

/* issue: asks the server this client is connected to for its raft id. */
static void note_server(struct worker *w)
{
    msgpack_unpacked resp;
    msgpack_packer pk;
    rp_buf_reset(&w->req);
    rp_mp_packer_init(&pk, &w->req);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "m", "ping");
    if (auth_client_call(w->rp, w->req.data, w->req.len, &resp) == 0)
        rp_mp_get_u64(&resp.data, "raft_id", &w->end_raft_id);
    msgpack_unpacked_destroy(&resp);
}

static int etcd_request(struct worker *w, enum op op, uint32_t key, struct rp_buf *json,
                        struct rp_buf *body, char *err, size_t errlen)
{
    char name[24];
    key_name(w->b, key, name, sizeof name);
    char *k64 = base64(name, strlen(name));
    if (k64 == NULL) {
        snprintf(err, errlen, "out of memory");
        return RP_ENOMEM;
    }
    const char *path;
    rp_buf_reset(json);
    if (op == OP_PUT || op == OP_FILL) {
        path = "/v3/kv/put";
        rp_buf_printf(json, "{\"key\":\"%s\",\"value\":\"%s\"}", k64, w->b->etcd_value_b64);
    } else {
        path = "/v3/kv/range";
        rp_buf_printf(json, "{\"key\":\"%s\"%s}", k64,
                      op == OP_GET_STALE ? ",\"serializable\":true" : "");
    }
    free(k64);
    int status = 0;
    int rv = http_post(w->http, path, (const char *)json->data, json->len, &status, body);
    if (rv != 0) {
        snprintf(err, errlen, "%s: %s", rp_strerror(rv), rp_errmsg());
        return rv;
    }
    if (status != 200) {
        snprintf(err, errlen, "HTTP %d: %.*s", status, (int)(body->len > 160 ? 160 : body->len),
                 body->data ? (const char *)body->data : "");
        return RP_EPROTO;
    }
    /* A range that found nothing has no "kvs" field: count it as an error, as the
     * not_found answer of a Raftport get is. */
    if ((op == OP_GET || op == OP_GET_STALE) &&
        (body->len == 0 || memmem(body->data, body->len, "\"kvs\"", 5) == NULL)) {
        snprintf(err, errlen, "not_found: key %s", name);
        return RP_ENOTFOUND;
    }
    return 0;
}

/* ---- workers ---------------------------------------------------------------------------- */

static int worker_setup(struct worker *w)
{
    struct bench *b = w->b;
    const struct endpoint *first = &b->endpoints[w->idx % b->n_endpoints];
    if (b->sys == SYS_ETCD) {
        w->http = http_new(first, b->etcd_ctx);
        if (w->http == NULL)
            return rp_err(RP_ENOMEM, "http client");
        return http_open(w->http);
    }
    /* Our endpoint first, the others as fallbacks (the client also learns every
     * auth server from its first ping). */
    const char *addrs[MAX_ENDPOINTS];
    for (size_t i = 0; i < b->n_endpoints; i++)
        addrs[i] = b->endpoints[(w->idx + i) % b->n_endpoints].addr;
    int rv = auth_client_new(&w->rp, b->rp_ctx, addrs, b->n_endpoints);
    if (rv != 0)
        return rv;
    if (b->op == OP_ISSUE && (rv = issue_setup(w)) != 0)
        return rv;
    auth_client_set_timeout(w->rp, CALL_TIMEOUT_MS);
    /* Connect (TLS handshake and the client's server discovery) before timing. */
    msgpack_unpacked resp;
    rp_buf_reset(&w->req);
    msgpack_packer pk;
    rp_mp_packer_init(&pk, &w->req);
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "m", "ping");
    rv = auth_client_call(w->rp, w->req.data, w->req.len, &resp);
    msgpack_unpacked_destroy(&resp);
    return rv;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    struct bench *b = w->b;
    struct rp_buf json, body;
    char err[512];
    rp_buf_init(&json);
    rp_buf_init(&body);
    rp_buf_init(&w->req);
    rp_buf_init(&w->issue_req);
    w->setup_rv = worker_setup(w);
    if (w->setup_rv != 0)
        snprintf(w->setup_err, sizeof w->setup_err, "%s", rp_errmsg());
    pthread_barrier_wait(&b->ready);
    pthread_barrier_wait(&b->go);
    if (w->setup_rv != 0)
        goto out;

    if (b->op == OP_FILL) {
        for (uint32_t k = (uint32_t)w->idx; k < b->keys; k += (uint32_t)b->clients) {
            uint64_t t0 = now_ns();
            int rv = b->sys == SYS_ETCD ? etcd_request(w, OP_FILL, k, &json, &body, err, sizeof err)
                                        : rp_request(w, OP_FILL, k, err, sizeof err);
            if (rv == 0) {
                record_ok(w, now_ns() - t0);
                w->done++;
            } else {
                record_err(w, err_code_name(rv), err);
            }
        }
        w->fill_done_ns = now_ns();
        goto out;
    }

    for (;;) {
        uint64_t t0 = now_ns();
        if (t0 >= b->measure_until_ns)
            break;
        uint32_t k = next_key(w);
        int rv = b->op == OP_ISSUE    ? issue_request(w, err, sizeof err)
                 : b->sys == SYS_ETCD ? etcd_request(w, b->op, k, &json, &body, err, sizeof err)
                                      : rp_request(w, b->op, k, err, sizeof err);
        uint64_t t1 = now_ns();
        w->ok_all += rv == 0;
        /* Throughput counts what started in the window and was answered in it. The
         * latency figures take every request that started in the window, also one
         * answered after it: a client kept waiting past the end keeps its wait in the
         * percentiles instead of vanishing from them. */
        if (t0 < b->measure_from_ns)
            continue;
        if (rv == 0) {
            record_ok(w, t1 - t0);
            w->done += t1 <= b->measure_until_ns;
        } else {
            record_err(w, err_code_name(rv), err);
        }
    }
    if (b->op == OP_ISSUE)
        note_server(w);
out:
    rp_buf_free(&json);
    rp_buf_free(&body);
    return NULL;
}

/* ---- event-loop mode ------------------------------------------------------------------------ */

/* Against Raftport, put/get/get-stale run on --loop-threads threads (2 by default)
 * that each drive their share of the clients from one epoll loop, as etcd's Go client
 * drives its clients from goroutines: each client still has its own connection and one
 * request in flight, but 256 clients no longer cost 256 threads switching on the
 * machine that also runs the servers (a thread per client spent a third of its CPU in
 * the scheduler). The timing rules are those of worker_main. No failover: a request
 * that fails counts as an error and the client reconnects to its endpoint. */
struct loop {
    struct bench *b;
    struct worker *ws; /* every client; this loop drives idx % n == k */
    int k, n;
    pthread_t thread;
};

static int loop_dial(struct worker *w)
{
    struct bench *b = w->b;
    const struct endpoint *ep = &b->endpoints[w->idx % b->n_endpoints];
    int rv = rp_conn_dial(&w->conn, b->rp_ctx, ep->addr, CALL_TIMEOUT_MS);
    if (rv != 0)
        return rv;
    w->conn_open = true;
    rp_frame_reader_init(&w->fr, RP_FRAME_MAX);
    /* Writes of a request wait in poll() if the socket is full (never, with one small
     * request in flight); reads are driven by epoll. */
    if ((rv = rp_conn_set_blocking(&w->conn, 0)) != 0 ||
        (rv = rp_conn_set_timeout(&w->conn, CALL_TIMEOUT_MS)) != 0)
        return rv;
    return 0;
}

static void loop_close(struct worker *w)
{
    if (w->conn_open)
        rp_conn_close(&w->conn);
    w->conn_open = false;
    w->in_flight = false;
    rp_frame_reader_free(&w->fr);
}

/* Sends the client's next request. 0, or an error after which the client reconnects. */
static int loop_send(struct worker *w, int ep_fd)
{
    int rv = 0;
    if (!w->conn_open) {
        if ((rv = loop_dial(w)) != 0)
            return rv;
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
        if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, w->conn.fd, &ev) != 0)
            return rp_err(RP_EIO, "epoll_ctl: %s", strerror(errno));
    }
    build_rp_request(w, w->b->op, next_key(w));
    w->sent_ns = now_ns();
    if ((rv = rp_conn_write_frame(&w->conn, w->req.data, w->req.len)) != 0)
        return rv;
    w->in_flight = true;
    return 0;
}

/* One answer has arrived whole in w->fr: 0 for ok, else its error code. */
static int loop_answer(struct worker *w, char *err, size_t errlen)
{
    msgpack_unpacked resp;
    const struct rp_buf *f = rp_frame_reader_frame(&w->fr);
    int rv = rp_mp_parse(f->data, f->len, &resp);
    bool ok = false;
    if (rv != 0) {
        snprintf(err, errlen, "malformed answer: %s", rp_errmsg());
        return RP_EPROTO;
    }
    if (resp.data.type != MSGPACK_OBJECT_MAP || rp_mp_get_bool(&resp.data, "ok", &ok) != 0) {
        rv = RP_EPROTO;
        snprintf(err, errlen, "answer without an \"ok\" field");
    } else if (!ok) {
        const char *code = "", *msg = "";
        size_t cn = 0, mn = 0;
        char cbuf[32];
        rp_mp_get_str(&resp.data, "code", &code, &cn);
        rp_mp_get_str(&resp.data, "error", &msg, &mn);
        snprintf(cbuf, sizeof cbuf, "%.*s", (int)cn, code);
        rv = rp_error_from_name(cbuf);
        snprintf(err, errlen, "%s: %.*s", cbuf, (int)mn, msg);
    }
    msgpack_unpacked_destroy(&resp);
    return rv;
}

/* Counts a finished request the way worker_main does. */
static void loop_record(struct worker *w, int rv, uint64_t t1, const char *err)
{
    struct bench *b = w->b;
    w->ok_all += rv == 0;
    if (w->sent_ns < b->measure_from_ns)
        return;
    if (rv == 0) {
        record_ok(w, t1 - w->sent_ns);
        w->done += t1 <= b->measure_until_ns;
    } else {
        record_err(w, err_code_name(rv), err);
    }
}

/* Reads what the client's socket holds. 1 once an answer is whole, 0 when it waits
 * for more, <0 when the connection broke. */
static int loop_read(struct worker *w)
{
    uint8_t buf[16384];
    for (;;) {
        size_t need = rp_frame_reader_need(&w->fr);
        size_t got, used;
        short events;
        int rv =
            rp_conn_read_some(&w->conn, buf, need < sizeof buf ? need : sizeof buf, &got, &events);
        if (rv == 1)
            return 0;
        if (rv != 0)
            return rv;
        rv = rp_frame_reader_feed(&w->fr, buf, got, &used);
        if (rv < 0)
            return rv;
        if (rv == 1)
            return 1;
    }
}

static void *loop_main(void *arg)
{
    struct loop *lp = arg;
    struct bench *b = lp->b;
    char err[512];
    int ep_fd = epoll_create1(EPOLL_CLOEXEC);
    for (int i = lp->k; i < b->clients; i += lp->n) {
        struct worker *w = &lp->ws[i];
        rp_buf_init(&w->req);
        rp_buf_init(&w->issue_req);
        w->setup_rv = ep_fd < 0 ? RP_EIO : loop_dial(w);
        if (w->setup_rv != 0) {
            snprintf(w->setup_err, sizeof w->setup_err, "%s", rp_errmsg());
            continue;
        }
        struct epoll_event ev = {.events = EPOLLIN, .data.ptr = w};
        if (epoll_ctl(ep_fd, EPOLL_CTL_ADD, w->conn.fd, &ev) != 0) {
            w->setup_rv = RP_EIO;
            snprintf(w->setup_err, sizeof w->setup_err, "epoll_ctl: %s", strerror(errno));
        }
    }
    pthread_barrier_wait(&b->ready);
    pthread_barrier_wait(&b->go);
    int active = 0;
    for (int i = lp->k; i < b->clients && b->measure_until_ns != 0; i += lp->n) {
        struct worker *w = &lp->ws[i];
        if (loop_send(w, ep_fd) != 0) {
            record_err(w, err_code_name(RP_EUNAVAILABLE), rp_errmsg());
            loop_close(w);
            continue;
        }
        active++;
    }
    struct epoll_event evs[64];
    while (active > 0) {
        int n = epoll_wait(ep_fd, evs, 64, 1000);
        uint64_t now = now_ns();
        for (int e = 0; e < n; e++) {
            struct worker *w = evs[e].data.ptr;
            if (!w->in_flight)
                continue;
            /* OpenSSL may hold a whole answer after the read that ended the last one. */
            int rv;
            while ((rv = loop_read(w)) == 1) {
                uint64_t t1 = now_ns();
                int arv = loop_answer(w, err, sizeof err);
                loop_record(w, arv, t1, err);
                rp_frame_reader_next(&w->fr, 65536);
                w->in_flight = false;
                if (t1 >= b->measure_until_ns) {
                    active--;
                    break;
                }
                if ((rv = loop_send(w, ep_fd)) != 0)
                    break;
            }
            if (rv < 0) {
                /* Broken (reading the answer or sending the next request): count it,
                 * reconnect and go on with one request in flight. */
                snprintf(err, sizeof err, "%s", rp_errmsg());
                loop_record(w, RP_EUNAVAILABLE, now_ns(), err);
                epoll_ctl(ep_fd, EPOLL_CTL_DEL, w->conn.fd, NULL);
                loop_close(w);
                if (now_ns() >= b->measure_until_ns || loop_send(w, ep_fd) != 0) {
                    if (now_ns() < b->measure_until_ns)
                        record_err(w, err_code_name(RP_EUNAVAILABLE), rp_errmsg());
                    loop_close(w);
                    active--;
                }
            }
        }
        /* A request unanswered for CALL_TIMEOUT_MS fails, as auth_client_call's would. */
        for (int i = lp->k; i < b->clients && n == 0; i += lp->n) {
            struct worker *w = &lp->ws[i];
            if (w->in_flight && now - w->sent_ns > (uint64_t)CALL_TIMEOUT_MS * 1000000u) {
                loop_record(w, RP_ETIMEDOUT, now, "no answer in time");
                epoll_ctl(ep_fd, EPOLL_CTL_DEL, w->conn.fd, NULL);
                loop_close(w);
                active--;
            }
        }
    }
    for (int i = lp->k; i < b->clients; i += lp->n)
        loop_close(&lp->ws[i]);
    if (ep_fd >= 0)
        close(ep_fd);
    return NULL;
}

/* ---- setup and report -------------------------------------------------------------------- */

static int cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return x < y ? -1 : x > y;
}

static uint32_t percentile(const uint32_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)n);
    if (i >= n)
        i = n - 1;
    return v[i];
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void report(struct bench *b, struct worker *ws, double elapsed_s)
{
    size_t total = 0;
    uint64_t errors = 0, done = 0;
    const char *first_err = NULL;
    for (int i = 0; i < b->clients; i++) {
        total += ws[i].n_lat;
        done += ws[i].done;
        errors += ws[i].errors;
        if (first_err == NULL && ws[i].errors > 0)
            first_err = ws[i].first_err;
    }
    uint32_t *all = malloc((total ? total : 1) * sizeof *all);
    size_t n = 0;
    double sum = 0;
    if (all != NULL) {
        for (int i = 0; i < b->clients; i++) {
            memcpy(all + n, ws[i].lat, ws[i].n_lat * sizeof *all);
            n += ws[i].n_lat;
        }
        qsort(all, n, sizeof *all, cmp_u32);
        for (size_t i = 0; i < n; i++)
            sum += all[i];
    }
    /* How evenly the clients were served: the fewest and the median answers one client
     * had in the window (a server that serves some connections and leaves others
     * waiting shows a minimum far below the median). */
    uint64_t *per = malloc((size_t)b->clients * sizeof *per);
    uint64_t per_min = 0, per_med = 0;
    if (per != NULL) {
        for (int i = 0; i < b->clients; i++)
            per[i] = ws[i].done;
        qsort(per, (size_t)b->clients, sizeof *per, cmp_u64);
        per_min = per[0];
        per_med = per[b->clients / 2];
        free(per);
    }
    struct rp_buf out;
    rp_buf_init(&out);
    rp_buf_printf(
        &out,
        "{\"system\": \"%s\", \"op\": \"%s\", \"clients\": %d, \"duration_s\": %.3f, "
        "\"value_size\": %zu, \"keys\": %" PRIu32 ", \"ops\": %" PRIu64 ", "
        "\"ops_per_s\": %.1f, \"mean_us\": %.0f, \"p50_us\": %" PRIu32 ", \"p90_us\": %" PRIu32
        ", \"p99_us\": %" PRIu32 ", \"max_us\": %" PRIu32 ", \"errors\": %" PRIu64
        ", \"late\": %" PRIu64 ", \"client_ops_min\": %" PRIu64 ", \"client_ops_median\": %" PRIu64,
        b->sys == SYS_ETCD ? "etcd" : "raftport", b->op_name, b->clients, elapsed_s, b->value_size,
        b->keys, done, elapsed_s > 0 ? (double)done / elapsed_s : 0.0, n ? sum / (double)n : 0.0,
        percentile(all, n, 0.50), percentile(all, n, 0.90), percentile(all, n, 0.99),
        n ? all[n - 1] : 0, errors, (uint64_t)n - done, per_min, per_med);
    if (b->op == OP_ISSUE) {
        uint64_t all_ok = 0;
        for (int i = 0; i < b->clients; i++)
            all_ok += ws[i].ok_all;
        rp_buf_append_str(&out, ", \"user\": ");
        rp_json_str(&out, b->user, strlen(b->user));
        /* Every successful issuance, the warm-up's included: what the servers did. */
        rp_buf_printf(&out, ", \"ops_all\": %" PRIu64, all_ok);
    }
    if (errors > 0) {
        /* Merge the workers' counts by code. */
        const char *codes[MAX_ERR_CODES * 4];
        uint64_t counts[MAX_ERR_CODES * 4];
        size_t nc = 0;
        for (int i = 0; i < b->clients; i++) {
            for (size_t j = 0; j < ws[i].n_err_codes; j++) {
                size_t k;
                for (k = 0; k < nc; k++)
                    if (strcmp(codes[k], ws[i].err_codes[j].code) == 0)
                        break;
                if (k == nc) {
                    if (nc == sizeof codes / sizeof codes[0]) {
                        k = nc - 1; /* the last slot collects the rest */
                    } else {
                        codes[nc] = ws[i].err_codes[j].code;
                        counts[nc++] = 0;
                    }
                }
                counts[k] += ws[i].err_codes[j].n;
            }
        }
        rp_buf_append_str(&out, ", \"errors_by_code\": {");
        for (size_t k = 0; k < nc; k++) {
            rp_buf_append_str(&out, k ? ", " : "");
            rp_json_str(&out, codes[k], strlen(codes[k]));
            rp_buf_printf(&out, ": %" PRIu64, counts[k]);
        }
        rp_buf_append_str(&out, "}");
    }
    if (b->op == OP_ISSUE) {
        /* Where each client's connection was at the end (raft id; 0: no answer). */
        uint64_t ids[MAX_RAFT_IDS];
        unsigned cnt[MAX_RAFT_IDS];
        size_t ni = 0;
        for (int i = 0; i < b->clients; i++) {
            size_t k;
            for (k = 0; k < ni; k++)
                if (ids[k] == ws[i].end_raft_id)
                    break;
            if (k == ni) {
                if (ni == MAX_RAFT_IDS)
                    continue;
                ids[ni] = ws[i].end_raft_id;
                cnt[ni++] = 0;
            }
            cnt[k]++;
        }
        rp_buf_append_str(&out, ", \"clients_on\": {");
        for (size_t k = 0; k < ni; k++)
            rp_buf_printf(&out, "%s\"%" PRIu64 "\": %u", k ? ", " : "", ids[k], cnt[k]);
        rp_buf_append_str(&out, "}");
    }
    if (first_err != NULL) {
        rp_buf_append_str(&out, ", \"first_error\": ");
        rp_json_str(&out, first_err, strlen(first_err));
    }
    rp_buf_append_str(&out, "}\n");
    fwrite(out.data, 1, out.len, stdout);
    fflush(stdout);
    rp_buf_free(&out);
    free(all);
}

static char *local_addr(const char *listen)
{
    /* A wildcard listener is reached on loopback from the same host. */
    char buf[80];
    if (strncmp(listen, "0.0.0.0:", 8) == 0) {
        snprintf(buf, sizeof buf, "127.0.0.1:%s", listen + 8);
        return strdup(buf);
    }
    return strdup(listen);
}

static int add_endpoint(struct bench *b, const char *s, size_t n, bool etcd)
{
    struct endpoint *e;
    if (b->n_endpoints >= MAX_ENDPOINTS)
        return rp_err(RP_EINVAL, "at most %d endpoints", MAX_ENDPOINTS);
    e = &b->endpoints[b->n_endpoints];
    e->tls = false;
    if (etcd) {
        if (n > 8 && strncmp(s, "https://", 8) == 0) {
            e->tls = true;
            s += 8;
            n -= 8;
        } else if (n > 7 && strncmp(s, "http://", 7) == 0) {
            s += 7;
            n -= 7;
        } else {
            return rp_err(RP_EINVAL,
                          "etcd endpoint '%.*s': expected http://HOST:PORT or "
                          "https://HOST:PORT",
                          (int)n, s);
        }
        while (n > 0 && s[n - 1] == '/')
            n--;
    }
    if (n == 0 || n >= sizeof e->addr)
        return rp_err(RP_EINVAL, "endpoint '%.*s': expected HOST:PORT", (int)n, s);
    memcpy(e->addr, s, n);
    e->addr[n] = '\0';
    if (rp_check_hostport(e->addr) != 0)
        return rp_err(RP_EINVAL, "endpoint '%s': %s", e->addr, rp_errmsg());
    b->n_endpoints++;
    return 0;
}

static int add_endpoints(struct bench *b, const char *list, bool etcd)
{
    while (*list) {
        size_t n = strcspn(list, ",");
        if (n > 0) {
            int rv = add_endpoint(b, list, n, etcd);
            if (rv != 0)
                return rv;
        }
        list += n;
        if (*list == ',')
            list++;
    }
    return 0;
}

static SSL_CTX *etcd_tls_ctx(const char *cacert, const char *cert, const char *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL)
        return NULL;
    /* The same protocol version Raftport's API uses. */
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    if ((cacert && SSL_CTX_load_verify_locations(ctx, cacert, NULL) != 1) ||
        (cert && SSL_CTX_use_certificate_chain_file(ctx, cert) != 1) ||
        (key && SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1)) {
        char eb[200];
        ERR_error_string_n(ERR_get_error(), eb, sizeof eb);
        rp_err(RP_ETLS, "etcd TLS files: %s", eb);
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, cacert ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    return ctx;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: rpbench -c CONFIG --op=OP --clients=N --duration=S [flags]\n"
               "       rpbench --etcd=URL[,URL...] [--cacert=F --cert=F --key=F] --op=OP ...\n"
               "\n"
               "Ops: put, get (linearizable), get-stale (stale / serializable), fill (write every\n"
               "key once, ignoring --duration), issue (Raftport: sign_user, a user's SSH and\n"
               "X.509 certificates). Prints one line of JSON.\n"
               "\n"
               "Flags:\n"
               "  -c, --config FILE     an auth server's raftport.yaml (admin identity, address)\n"
               "      --endpoints LIST  host:port[,host:port...] of auth servers; client i starts\n"
               "                        at entry i mod n (default: the config's own address)\n"
               "      --etcd URLS       benchmark etcd's v3 JSON gateway instead (client i uses\n"
               "                        URL i mod n); https URLs use TLS 1.3 with the files below\n"
               "      --cacert/--cert/--key FILE   etcd CA, client certificate and key (PEM)\n"
               "      --clients N       concurrent clients, one connection each (default 1)\n"
               "      --duration S      measured seconds (default 10)\n"
               "      --warmup S        seconds run before measuring (default 1)\n"
               "      --value-size B    bytes per value (default 256)\n"
               "      --keys K          key space <prefix>0..<prefix><K-1> (default 10000)\n"
               "      --key-prefix P    key names' prefix, 1..8 of [a-z0-9-] (default k): a\n"
               "                        separate key space, e.g. for large values\n"
               "      --user NAME       issue: the user whose certificates are signed (default\n"
               "                        bench; it must exist, with roles)\n"
               "      --loop-threads T  Raftport put/get/get-stale: T threads drive all the\n"
               "                        clients from epoll loops (default 2); 0: a thread per\n"
               "                        client, through the auth client library\n");
}

static int parse_double(const char *s, double *out)
{
    char *end;
    double v = strtod(s, &end);
    if (*s == '\0' || *end != '\0' || v < 0 || v > 86400)
        return -1;
    *out = v;
    return 0;
}

static int parse_ulong(const char *s, unsigned long lo, unsigned long hi, unsigned long *out)
{
    char *end;
    unsigned long v = strtoul(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

int main(int argc, char **argv)
{
    enum {
        O_OP = 256,
        O_CLIENTS,
        O_DURATION,
        O_WARMUP,
        O_VSIZE,
        O_KEYS,
        O_ENDPOINTS,
        O_ETCD,
        O_CACERT,
        O_CERT,
        O_KEY,
        O_USER,
        O_KEY_PREFIX,
        O_LOOP_THREADS
    };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"op", required_argument, NULL, O_OP},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"duration", required_argument, NULL, O_DURATION},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"value-size", required_argument, NULL, O_VSIZE},
        {"keys", required_argument, NULL, O_KEYS},
        {"endpoints", required_argument, NULL, O_ENDPOINTS},
        {"etcd", required_argument, NULL, O_ETCD},
        {"cacert", required_argument, NULL, O_CACERT},
        {"cert", required_argument, NULL, O_CERT},
        {"key", required_argument, NULL, O_KEY},
        {"user", required_argument, NULL, O_USER},
        {"key-prefix", required_argument, NULL, O_KEY_PREFIX},
        {"loop-threads", required_argument, NULL, O_LOOP_THREADS},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct bench b = {.clients = 1,
                      .duration_s = 10,
                      .warmup_s = 1,
                      .value_size = 256,
                      .keys = 10000,
                      .key_prefix = "k",
                      .loop_threads = 2,
                      .op_name = NULL,
                      .user = "bench"};
    const char *config_path = NULL, *endpoints = NULL, *etcd = NULL;
    const char *cacert = NULL, *cert = NULL, *key = NULL;
    unsigned long ul;
    int c, rv = 1;

    rp_config_init(&b.cfg);
    rp_log_set_level(RP_LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    while ((c = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        switch (c) {
        case 'c':
            config_path = optarg;
            break;
        case O_OP:
            b.op_name = optarg;
            if (strcmp(optarg, "put") == 0)
                b.op = OP_PUT;
            else if (strcmp(optarg, "get") == 0)
                b.op = OP_GET;
            else if (strcmp(optarg, "get-stale") == 0)
                b.op = OP_GET_STALE;
            else if (strcmp(optarg, "fill") == 0)
                b.op = OP_FILL;
            else if (strcmp(optarg, "issue") == 0)
                b.op = OP_ISSUE;
            else {
                fprintf(stderr, "rpbench: --op=%s: expected put, get, get-stale, fill or issue\n",
                        optarg);
                return 2;
            }
            break;
        case O_CLIENTS:
            if (parse_ulong(optarg, 1, MAX_CLIENTS, &ul) != 0) {
                fprintf(stderr, "rpbench: --clients: expected 1..%d\n", MAX_CLIENTS);
                return 2;
            }
            b.clients = (int)ul;
            break;
        case O_DURATION:
        case O_WARMUP:
            if (parse_double(optarg, c == O_DURATION ? &b.duration_s : &b.warmup_s) != 0 ||
                (c == O_DURATION && b.duration_s <= 0)) {
                fprintf(stderr, "rpbench: --%s: expected seconds\n",
                        c == O_DURATION ? "duration" : "warmup");
                return 2;
            }
            break;
        case O_VSIZE:
            if (parse_ulong(optarg, 1, 1u << 20, &ul) != 0) {
                fprintf(stderr, "rpbench: --value-size: expected 1..1048576 bytes\n");
                return 2;
            }
            b.value_size = ul;
            break;
        case O_KEYS:
            if (parse_ulong(optarg, 1, 100000000, &ul) != 0) {
                fprintf(stderr, "rpbench: --keys: expected 1..100000000\n");
                return 2;
            }
            b.keys = (uint32_t)ul;
            break;
        case O_ENDPOINTS:
            endpoints = optarg;
            break;
        case O_LOOP_THREADS:
            if (parse_ulong(optarg, 0, 64, &ul) != 0) {
                fprintf(stderr, "rpbench: --loop-threads: expected 0..64\n");
                return 2;
            }
            b.loop_threads = (int)ul;
            break;
        case O_ETCD:
            etcd = optarg;
            break;
        case O_CACERT:
            cacert = optarg;
            break;
        case O_CERT:
            cert = optarg;
            break;
        case O_KEY:
            key = optarg;
            break;
        case O_USER:
            if (optarg[0] == '\0' || strlen(optarg) >= 160) {
                fprintf(stderr, "rpbench: --user: expected a user name\n");
                return 2;
            }
            b.user = optarg;
            break;
        case O_KEY_PREFIX:
            if (optarg[0] == '\0' || strlen(optarg) > MAX_KEY_PREFIX ||
                strspn(optarg, "abcdefghijklmnopqrstuvwxyz0123456789-") != strlen(optarg)) {
                fprintf(stderr, "rpbench: --key-prefix: expected 1..%d of a-z, 0-9 and -\n",
                        MAX_KEY_PREFIX);
                return 2;
            }
            b.key_prefix = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || b.op_name == NULL || (etcd == NULL) == (config_path == NULL)) {
        fprintf(stderr, "rpbench: need --op and exactly one of -c CONFIG or --etcd URLS\n");
        usage(stderr);
        return 2;
    }

    if (etcd != NULL && b.op == OP_ISSUE) {
        fprintf(stderr, "rpbench: --op=issue is for Raftport only (-c CONFIG)\n");
        return 2;
    }
    if (etcd != NULL) {
        b.sys = SYS_ETCD;
        if (add_endpoints(&b, etcd, true) != 0) {
            fprintf(stderr, "rpbench: --etcd: %s\n", rp_errmsg());
            return 2;
        }
        b.etcd_ctx = etcd_tls_ctx(cacert, cert, key);
        if (b.etcd_ctx == NULL) {
            fprintf(stderr, "rpbench: %s\n", rp_errmsg());
            return 1;
        }
    } else {
        b.sys = SYS_RAFTPORT;
        if (rp_config_load(&b.cfg, config_path) != 0) {
            fprintf(stderr, "rpbench: %s\n", rp_errmsg());
            return 1;
        }
        if (auth_load_admin_ctx(b.cfg.data_dir, &b.rp_ctx) != 0) {
            fprintf(stderr, "rpbench: loading the admin identity from %s: %s\n", b.cfg.data_dir,
                    rp_errmsg());
            goto out_cfg;
        }
        if (endpoints != NULL && add_endpoints(&b, endpoints, false) != 0) {
            fprintf(stderr, "rpbench: --endpoints: %s\n", rp_errmsg());
            goto out_cfg;
        }
        if (b.n_endpoints == 0 && b.cfg.auth_enabled) {
            char *a = local_addr(b.cfg.auth_public_addr ? b.cfg.auth_public_addr
                                                        : b.cfg.auth_listen_addr);
            if (a != NULL)
                add_endpoint(&b, a, strlen(a), false);
            free(a);
        }
        if (b.n_endpoints == 0 && b.cfg.auth_server != NULL)
            add_endpoint(&b, b.cfg.auth_server, strlen(b.cfg.auth_server), false);
        if (b.n_endpoints == 0) {
            fprintf(stderr, "rpbench: no auth server address: give --endpoints\n");
            goto out_cfg;
        }
    }

    /* One value for every write: value_size bytes of printable text. */
    b.rp_value = malloc(b.value_size);
    if (b.rp_value == NULL)
        goto out_cfg;
    for (size_t i = 0; i < b.value_size; i++)
        b.rp_value[i] = (char)('a' + i % 26);
    b.etcd_value_b64 = base64(b.rp_value, b.value_size);
    if (b.etcd_value_b64 == NULL)
        goto out_value;

    struct worker *ws = calloc((size_t)b.clients, sizeof *ws);
    if (ws == NULL)
        goto out_value;
    bool looped = b.sys == SYS_RAFTPORT && b.loop_threads > 0 &&
                  (b.op == OP_PUT || b.op == OP_GET || b.op == OP_GET_STALE);
    int n_loops = looped ? (b.loop_threads < b.clients ? b.loop_threads : b.clients) : 0;
    struct loop *loops = looped ? calloc((size_t)n_loops, sizeof *loops) : NULL;
    if (looped && loops == NULL)
        goto out_value;
    int n_threads = looped ? n_loops : b.clients;
    pthread_barrier_init(&b.ready, NULL, (unsigned)n_threads + 1);
    pthread_barrier_init(&b.go, NULL, (unsigned)n_threads + 1);
    int started = 0;
    for (int i = 0; i < b.clients; i++) {
        ws[i].b = &b;
        ws[i].idx = i;
        ws[i].rng = 0x9E3779B97F4A7C15ull * (uint64_t)(i + 1) ^ (uint64_t)now_ns();
        if (ws[i].rng == 0)
            ws[i].rng = 1;
    }
    for (int i = 0; i < n_threads; i++) {
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        int crv;
        if (looped) {
            loops[i] = (struct loop){.b = &b, .ws = ws, .k = i, .n = n_loops};
            crv = pthread_create(&loops[i].thread, &attr, loop_main, &loops[i]);
        } else {
            crv = pthread_create(&ws[i].thread, &attr, worker_main, &ws[i]);
        }
        if (crv != 0) {
            pthread_attr_destroy(&attr);
            fprintf(stderr, "rpbench: cannot start client thread %d\n", i);
            /* The barriers count every client: we cannot run short-handed. */
            exit(1);
        }
        pthread_attr_destroy(&attr);
        started++;
    }
    pthread_barrier_wait(&b.ready);
    int setup_failed = 0;
    for (int i = 0; i < b.clients; i++) {
        if (ws[i].setup_rv != 0) {
            if (setup_failed++ == 0)
                fprintf(stderr, "rpbench: client %d could not connect: %s\n", i, ws[i].setup_err);
        }
    }
    uint64_t t_go = now_ns();
    b.measure_from_ns = t_go + (uint64_t)(b.warmup_s * 1e9);
    b.measure_until_ns = b.measure_from_ns + (uint64_t)(b.duration_s * 1e9);
    if (setup_failed)
        b.measure_until_ns = 0; /* workers stop at once */
    pthread_barrier_wait(&b.go);
    for (int i = 0; i < started; i++)
        pthread_join(looped ? loops[i].thread : ws[i].thread, NULL);
    free(loops);

    if (setup_failed) {
        fprintf(stderr, "rpbench: %d of %d clients could not connect; nothing measured\n",
                setup_failed, b.clients);
    } else {
        double elapsed = b.duration_s;
        if (b.op == OP_FILL) {
            uint64_t last = t_go;
            for (int i = 0; i < b.clients; i++)
                if (ws[i].fill_done_ns > last)
                    last = ws[i].fill_done_ns;
            elapsed = (double)(last - t_go) / 1e9;
        }
        report(&b, ws, elapsed);
        rv = 0;
    }
    for (int i = 0; i < b.clients; i++) {
        auth_client_free(ws[i].rp);
        http_free(ws[i].http);
        rp_buf_free(&ws[i].req);
        rp_buf_free(&ws[i].issue_req);
        free(ws[i].lat);
    }
    pthread_barrier_destroy(&b.ready);
    pthread_barrier_destroy(&b.go);
    free(ws);
out_value:
    free(b.rp_value);
    free(b.etcd_value_b64);
out_cfg:
    SSL_CTX_free(b.rp_ctx);
    SSL_CTX_free(b.etcd_ctx);
    rp_config_free(&b.cfg);
    return rv;
}
