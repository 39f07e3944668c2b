/* proxy/web.h: the parts of the web API (proxy/web.c), internal to the proxy and its
 * tests. docs/web-api.md is the user's view.
 *
 * Three layers, so that everything an unauthenticated client's bytes reach can be
 * tested and fuzzed without sockets or auth servers:
 *   proxy/web_http.c  bytes -> one request at a time (http-parser), with the bounds
 *                     below; nothing else;
 *   proxy/web_api.c   a request -> an endpoint, its JSON body -> the auth request,
 *                     auth's answer and the cache -> the JSON answer; pure functions;
 *   proxy/web.c       the connection on its loop: rate limits, version check, workers
 *                     for the auth calls, keep-alive and the idle timer, audit. */
#ifndef RP_PROXY_WEB_H
#define RP_PROXY_WEB_H

#include <http_parser.h>
#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/tls.h"

#define PX_WEB_HEAD_MAX 8192        /* request line and headers, bytes */
#define PX_WEB_BODY_MAX 65536       /* body, bytes */
#define PX_WEB_HEADERS_MAX 40       /* header lines */
#define PX_WEB_PATH_MAX 2048        /* the request target, bytes */
#define PX_WEB_IDLE_MS 60000        /* a connection between requests, or slow to send one */
#define PX_WEB_RATE_AVERAGE 20      /* requests without a client certificate ... */
#define PX_WEB_RATE_PERIOD_MS 60000 /* ... per minute on average, per source address, */
#define PX_WEB_RATE_BURST 40        /* ... in bursts of at most this many */
#define PX_WEB_AUTH_TIMEOUT_MS 15000
#define PX_WEB_CONNS_PER_ADDR 64 /* open connections without a certificate, per address ... */
#define PX_WEB_CONNS_MAX 4096    /* ... and in all */

/* ---- one request off the wire (proxy/web_http.c) ----------------------------------- */

struct px_web_req {
    unsigned method; /* enum http_method */
    char path[PX_WEB_PATH_MAX + 1];
    char version[40]; /* X-Raftport-Version as sent ("" when absent) */
    bool version_too_long;
    bool expect_continue; /* Expect: 100-continue */
    bool keep_alive;      /* the connection may serve another request after this one */
    struct rp_buf body;
};

enum px_http_state {
    PX_HTTP_HEAD,    /* reading the request line and headers */
    PX_HTTP_HEADERS, /* headers complete, body not read yet (paused) */
    PX_HTTP_BODY,    /* reading the body */
    PX_HTTP_DONE,    /* one whole request is in @req (paused) */
    PX_HTTP_ERROR,   /* refused: err_status and err_msg say why; the connection ends */
};

/* One connection's request parser. Memory: the struct plus the body (at most
 * PX_WEB_BODY_MAX), whatever the client sends. */
struct px_http {
    http_parser hp;
    enum px_http_state state;
    size_t head_bytes;
    unsigned n_headers;
    char field[32]; /* the header name being read, lower case, cut at 31 bytes */
    size_t field_len;
    bool field_done; /* the name is complete: value bytes follow */
    size_t path_len;
    char expect[16]; /* the Expect header's value, cut */
    int err_status;  /* 400, 413, 414, 431 */
    char err_msg[160];
    struct px_web_req req;
};

void px_http_init(struct px_http *h);
void px_http_free(struct px_http *h);
/* Feeds up to @n bytes; *@used says how many were taken. Returns the state after them:
 * PX_HTTP_HEAD or PX_HTTP_BODY (all taken, more needed), PX_HTTP_HEADERS (the head is
 * complete and within bounds: the caller may answer "100 Continue", then calls
 * px_http_feed again, with nothing new or with the bytes not taken), PX_HTTP_DONE (a
 * request is complete: answer it, then px_http_next and feed the bytes not taken),
 * PX_HTTP_ERROR. */
enum px_http_state px_http_feed(struct px_http *h, const char *p, size_t n, size_t *used);
/* Makes @h ready for the next request on the connection (after PX_HTTP_DONE). */
void px_http_next(struct px_http *h);
/* The client closed its side: PX_HTTP_ERROR if it did so inside a request. */
enum px_http_state px_http_eof(struct px_http *h);

/* ---- endpoints and answers (proxy/web_api.c) ----------------------------------------- */

enum px_web_endpoint {
    PX_WEB_NONE,
    PX_WEB_PING,          /* GET /webapi/ping */
    PX_WEB_LOGIN,         /* POST /webapi/ssh/certs */
    PX_WEB_INVITE_REDEEM, /* PUT /webapi/invite */
    PX_WEB_INVITE_INFO,   /* GET /webapi/invite/TOKEN */
    PX_WEB_NODES,         /* GET /webapi/nodes: a user certificate required */
};

/* An answer to send: status, JSON body, and what the headers must add. */
struct px_web_answer {
    int status;
    struct rp_buf body;
    unsigned retry_after_s; /* > 0: Retry-After */
    const char *allow;      /* 405: the Allow header */
    bool close;             /* Connection: close, then close */
};
void px_web_answer_init(struct px_web_answer *a);
void px_web_answer_free(struct px_web_answer *a);
/* Sets @a to @status with {"error": {"message": ...}}. */
void px_web_answer_error(struct px_web_answer *a, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Sets @a to 200 with @json (a copy is taken). */
void px_web_answer_json(struct px_web_answer *a, const char *json, size_t n);
/* Appends the whole HTTP/1.1 response for @a (status line, headers, body) to @out. */
int px_web_answer_format(const struct px_web_answer *a, struct rp_buf *out);

/* The endpoint @method @path names (a query string is ignored). PX_WEB_NONE with @a set
 * to 404 (no such path) or 405 (another method: @a->allow). */
enum px_web_endpoint px_web_route(unsigned method, const char *path, struct px_web_answer *a);

/* Judges the X-Raftport-Version a client sent against @server (lib/version.h): 0, or
 * an error answer 400 naming the rule. Clients that send none (curl, browsers) pass. */
int px_web_check_version(const struct px_web_req *req, const char *server, struct px_web_answer *a);

/* What /webapi/ping says. Strings borrowed. */
struct px_web_info {
    const char *cluster_name;
    const char *server_version;
    const char *listen_addr;        /* proxy_service.listen_addr (SSH, 3023) */
    const char *tunnel_listen_addr; /* proxy_service.tunnel_listen_addr */
    const char *web_listen_addr;
    const char *public_addr;     /* proxy_service.public_addr, or NULL */
    const char *ssh_public_addr; /* NULL: public_addr's host with listen_addr's port */
};
int px_web_ping(const struct px_web_info *info, struct px_web_answer *a);

/* The JSON body of POST /webapi/ssh/certs turned into auth's authenticate request
 * {m?, user, password, totp_code?, ssh_pubkey, tls_pubkey?, ttl_ms?, client_addr},
 * appended to @out (@method NULL: without "m"). The user name goes to @user (@user_len
 * bytes, "" when the body did not name one) even when the body is refused, for the
 * audit event of the refusal. RP_EINVAL with a message for the client; RP_ENOMEM. */
int px_web_login_request(const char *body, size_t n, const char *method, const char *client_addr,
                         struct rp_buf *out, char *user, size_t user_len);
/* The same for PUT /webapi/invite -> invite_redeem {token, password, totp_secret?,
 * totp_code?, client_addr}. */
int px_web_invite_request(const char *body, size_t n, const char *method, const char *client_addr,
                          struct rp_buf *out);

/* The token of GET /webapi/invite/TOKEN (@path) turned into auth's invite_info request
 * {token, client_addr}. RP_EINVAL when the token is not letters, digits, '-' or '_' (1 to
 * 64 of them). */
int px_web_invite_info_request(const char *path, const char *client_addr, struct rp_buf *out);
/* invite_info's answer {user, expires} as {"user", "expires" (RFC 3339),
 * "second_factor"}. */
int px_web_invite_info_answer(const msgpack_object *ans, struct px_web_answer *a);

/* Turns a failed auth call (its code @rv and message @msg) into the client's answer. */
void px_web_auth_failure(int rv, const char *msg, struct px_web_answer *a);

/* The login answer from authenticate's @ans (ssh_cert, expires, tls_cert?, tls_ca?)
 * and the cluster's CA resources (cert_authority/host and /user as msgpack, NULL when
 * unknown). */
int px_web_login_answer(const msgpack_object *ans, const char *user, const char *cluster_name,
                        const void *host_ca, size_t host_ca_len, const void *user_ca,
                        size_t user_ca_len, struct px_web_answer *a);

struct rbac_set;
/* The nodes a user may see. The caller supplies the cache's view. */
struct px_web_nodes_src {
    void *arg;
    /* The user's role set (rbac_set_free'd by the caller of @role_set's result). */
    int (*role_set)(void *arg, const char *const *roles, size_t n_roles, struct rbac_set **out,
                    char *why, size_t why_len);
    /* 0 unless a lock applies to @user (with @roles and @login, on @host_id). */
    int (*lock_check)(void *arg, const char *user, const char *const *roles, size_t n_roles,
                      const char *login, const char *host_id, char *why, size_t why_len);
    /* True if node @host_id has a reverse tunnel to this proxy. NULL: none have. */
    bool (*has_tunnel)(void *arg, const char *host_id);
};
/* The items of GET /webapi/nodes from the node resources @nodes (@n msgpack objects)
 * for @user: a node is listed when one of the logins of the user's certificate is
 * allowed there (rbac_check_ssh, deny first) and no lock applies. */
int px_web_nodes(const struct px_web_nodes_src *src, const struct rp_identity *user,
                 const msgpack_object *const *nodes, size_t n, struct px_web_answer *a);

#endif
