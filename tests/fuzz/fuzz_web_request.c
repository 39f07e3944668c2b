/* tests/fuzz/fuzz_web_request.c: libFuzzer target for the web API's request path
 * (proxy/web_http.c, proxy/web_api.c): the bytes an anonymous client sends to the
 * proxy's web port, through http-parser, the routing, the version check and the JSON
 * bodies of the login and invite endpoints. No auth server is called.
 *
 * Input: byte 0 seeds the sizes of the pieces the rest is fed in (a client may split its
 * bytes anywhere). Checked on every input: pieces fed never exceed what was offered;
 * the head and body kept stay within their bounds; every refusal has a status of the
 * documented set; feeding the same bytes whole gives the same requests and the same
 * outcome; every answer formats into a response whose Content-Length is its body. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "lib/mp.h"
#include "proxy/web.h"

#define MAX_REQUESTS 16

struct outcome {
    unsigned n;
    unsigned method[MAX_REQUESTS];
    char path[MAX_REQUESTS][64];
    size_t path_len[MAX_REQUESTS];
    size_t body_len[MAX_REQUESTS];
    int err_status;
};

static void serve(const struct px_web_req *req)
{
    struct px_web_answer a;
    px_web_answer_init(&a);
    if (px_web_check_version(req, "5.2.0", &a) == 0) {
        enum px_web_endpoint ep = px_web_route(req->method, req->path, &a);
        struct rp_buf mp;
        char user[160];
        rp_buf_init(&mp);
        int rv = 0;
        if (ep == PX_WEB_LOGIN) {
            rv = px_web_login_request((const char *)req->body.data, req->body.len, "authenticate",
                                      "203.0.113.7:51000", &mp, user, sizeof user);
            FUZZ_CHECK(strlen(user) < sizeof user);
        } else if (ep == PX_WEB_INVITE_REDEEM) {
            rv = px_web_invite_request((const char *)req->body.data, req->body.len, "invite_redeem",
                                       "203.0.113.7:51000", &mp);
        }
        FUZZ_CHECK(rv == 0 || rv == RP_EINVAL);
        if (rv == 0 && mp.len > 0) {
            /* What goes to auth is one valid msgpack map naming the client. */
            msgpack_unpacked u;
            FUZZ_CHECK(rp_mp_parse(mp.data, mp.len, &u) == 0);
            FUZZ_CHECK(u.data.type == MSGPACK_OBJECT_MAP);
            const char *s;
            size_t n;
            FUZZ_CHECK(rp_mp_get_str(&u.data, "client_addr", &s, &n) == 0);
            FUZZ_CHECK(rp_mp_get_str(&u.data, "password", &s, &n) == 0 && n > 0);
            msgpack_unpacked_destroy(&u);
        } else if (rv != 0) {
            px_web_answer_error(&a, 400, "%s", rp_errmsg());
        }
        rp_buf_free(&mp);
        if (ep == PX_WEB_NONE)
            FUZZ_CHECK(a.status == 404 || a.status == 405);
    } else {
        FUZZ_CHECK(a.status == 400);
    }
    struct rp_buf out;
    rp_buf_init(&out);
    FUZZ_CHECK(px_web_answer_format(&a, &out) == 0);
    char want[64];
    snprintf(want, sizeof want, "Content-Length: %zu\r\n", a.body.len);
    FUZZ_CHECK(memmem(out.data, out.len, want, strlen(want)) != NULL);
    rp_buf_free(&out);
    px_web_answer_free(&a);
}

/* Feeds @in in pieces (@seed 0: whole) and records the requests and the outcome. */
static void run(const uint8_t *in, size_t n, uint32_t seed, struct outcome *o)
{
    struct px_http h;
    px_http_init(&h);
    memset(o, 0, sizeof *o);
    size_t pos = 0, pending = 0; /* pending: offered to the parser, not taken yet */
    while (o->n < MAX_REQUESTS) {
        size_t piece;
        if (seed == 0) {
            piece = n - pos;
        } else {
            seed = seed * 1103515245u + 12345u;
            piece = 1 + (seed >> 16) % 61;
            if (piece > n - pos - pending)
                piece = n - pos - pending;
        }
        pending = seed == 0 ? piece : pending + piece;
        size_t used = 0;
        enum px_http_state st = px_http_feed(&h, (const char *)in + pos, pending, &used);
        FUZZ_CHECK(used <= pending);
        pos += used;
        pending -= used;
        FUZZ_CHECK(h.req.body.len <= PX_WEB_BODY_MAX);
        FUZZ_CHECK(strlen(h.req.path) <= PX_WEB_PATH_MAX);
        FUZZ_CHECK(h.n_headers <= PX_WEB_HEADERS_MAX + 1);
        if (st == PX_HTTP_HEADERS)
            continue;
        if (st == PX_HTTP_DONE) {
            o->method[o->n] = h.req.method;
            /* Paths are compared by their first 63 bytes (and their length, below). */
            size_t pl = strlen(h.req.path);
            memcpy(o->path[o->n], h.req.path, pl < 63 ? pl : 63);
            o->path[o->n][pl < 63 ? pl : 63] = '\0';
            o->path_len[o->n] = pl;
            o->body_len[o->n] = h.req.body.len;
            o->n++;
            serve(&h.req);
            px_http_next(&h);
            continue;
        }
        if (st == PX_HTTP_ERROR) {
            int s = h.err_status;
            FUZZ_CHECK(s == 400 || s == 413 || s == 414 || s == 431 || s == 503);
            o->err_status = s;
            break;
        }
        if (pos + pending >= n) {
            if (px_http_eof(&h) == PX_HTTP_ERROR)
                o->err_status = h.err_status;
            break;
        }
    }
    px_http_free(&h);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 200000)
        return 0;
    struct outcome split, whole;
    run(data + 1, size - 1, data[0] | 1u, &split);
    run(data + 1, size - 1, 0, &whole);
    /* Where a client splits its bytes changes nothing: the same requests, and a refusal
     * of the same request. (Its status may differ between 400 and 431 when a head is
     * both too large and malformed: which is seen first depends on the pieces.) */
    FUZZ_CHECK(split.n == whole.n);
    for (unsigned i = 0; i < split.n; i++) {
        FUZZ_CHECK(split.method[i] == whole.method[i]);
        FUZZ_CHECK(strcmp(split.path[i], whole.path[i]) == 0);
        FUZZ_CHECK(split.path_len[i] == whole.path_len[i]);
        FUZZ_CHECK(split.body_len[i] == whole.body_len[i]);
    }
    FUZZ_CHECK((split.err_status != 0) == (whole.err_status != 0));
    return 0;
}
