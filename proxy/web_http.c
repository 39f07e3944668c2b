/* proxy/web_http.c: HTTP/1.1 requests off a connection, one at a time, through
 * http-parser, within the web API's bounds (proxy/web.h).
 *
 * The parser is paused twice per request: when the head is complete (so the bounds on
 * the head and the declared body are checked, and "100 Continue" can be sent, before
 * any body byte is taken) and when the request is complete (so a pipelined next
 * request waits in the caller's buffer until this one is answered). Only what the
 * endpoints read is kept: the method, the target, X-Raftport-Version, Expect, and the
 * body; every other header is counted and dropped. */
#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/errors.h"
#include "proxy/web.h"

static struct px_http *of(http_parser *hp)
{
    return hp->data;
}

/* Refuses the request with @status; the callback returning 1 stops the parser. */
static int refuse(struct px_http *h, int status, const char *msg)
{
    if (h->err_status == 0) {
        h->err_status = status;
        snprintf(h->err_msg, sizeof h->err_msg, "%s", msg);
    }
    return 1;
}

/* Counts head bytes as the callbacks see them, so an oversized head is refused while
 * it arrives, before http-parser's own (larger) limit. */
static int count_head(struct px_http *h, size_t n)
{
    h->head_bytes += n;
    if (h->head_bytes > PX_WEB_HEAD_MAX)
        return refuse(h, 431,
                      "the request head (request line and headers) is larger than "
                      "8 KiB");
    return 0;
}

static void reset_request(struct px_http *h)
{
    h->state = PX_HTTP_HEAD;
    h->head_bytes = 0;
    h->n_headers = 0;
    h->field_len = 0;
    h->field_done = true;
    h->path_len = 0;
    h->req.method = 0;
    h->req.path[0] = '\0';
    h->req.version[0] = '\0';
    h->req.version_too_long = false;
    h->req.expect_continue = false;
    h->expect[0] = '\0';
    h->req.keep_alive = false;
    h->req.body.len = 0;
}

static int on_message_begin(http_parser *hp)
{
    reset_request(of(hp));
    return 0;
}

static int on_url(http_parser *hp, const char *at, size_t n)
{
    struct px_http *h = of(hp);
    if (count_head(h, n))
        return 1;
    if (h->path_len + n > PX_WEB_PATH_MAX)
        return refuse(h, 414, "the request target is longer than 2048 bytes");
    memcpy(h->req.path + h->path_len, at, n);
    h->path_len += n;
    h->req.path[h->path_len] = '\0';
    return 0;
}

static int on_header_field(http_parser *hp, const char *at, size_t n)
{
    struct px_http *h = of(hp);
    if (h->field_done) { /* a new header begins */
        if (++h->n_headers > PX_WEB_HEADERS_MAX)
            return refuse(h, 431, "the request has more than 40 header lines");
        if (count_head(h, 4)) /* ": " and CRLF */
            return 1;
        h->field_len = 0;
        h->field_done = false;
    }
    if (count_head(h, n))
        return 1;
    for (size_t i = 0; i < n && h->field_len + 1 < sizeof h->field; i++)
        h->field[h->field_len++] = (char)tolower((unsigned char)at[i]);
    h->field[h->field_len] = '\0';
    return 0;
}

static void append_bounded(char *dst, size_t cap, const char *at, size_t n, bool *too_long)
{
    size_t have = strlen(dst);
    if (have + n >= cap) {
        *too_long = true;
        return;
    }
    memcpy(dst + have, at, n);
    dst[have + n] = '\0';
}

static int on_header_value(http_parser *hp, const char *at, size_t n)
{
    struct px_http *h = of(hp);
    if (count_head(h, n))
        return 1;
    h->field_done = true;
    /* A name cut at 31 bytes is longer than any name read here. */
    if (h->field_len + 1 >= sizeof h->field)
        return 0;
    if (strcmp(h->field, "x-raftport-version") == 0) {
        append_bounded(h->req.version, sizeof h->req.version, at, n, &h->req.version_too_long);
    } else if (strcmp(h->field, "expect") == 0) {
        bool too_long = false;
        append_bounded(h->expect, sizeof h->expect, at, n, &too_long);
        h->req.expect_continue = !too_long && strcasecmp(h->expect, "100-continue") == 0;
    }
    return 0;
}

static int on_headers_complete(http_parser *hp)
{
    struct px_http *h = of(hp);
    if ((hp->flags & F_CONTENTLENGTH) && hp->content_length > PX_WEB_BODY_MAX) {
        refuse(h, 413, "the request body is larger than 64 KiB");
        return -1; /* any value but 0, 1, 2 stops the parser */
    }
    h->req.method = hp->method;
    h->req.keep_alive = http_should_keep_alive(hp) && !hp->upgrade;
    h->state = PX_HTTP_HEADERS;
    http_parser_pause(hp, 1);
    return 0;
}

static int on_body(http_parser *hp, const char *at, size_t n)
{
    struct px_http *h = of(hp);
    /* A chunked body declares no length: it is refused when it grows past the bound. */
    if (h->req.body.len + n > PX_WEB_BODY_MAX)
        return refuse(h, 413, "the request body is larger than 64 KiB");
    if (rp_buf_append(&h->req.body, at, n) != 0)
        return refuse(h, 503, "out of memory for the request body");
    return 0;
}

static int on_message_complete(http_parser *hp)
{
    struct px_http *h = of(hp);
    h->req.keep_alive = http_should_keep_alive(hp) && !hp->upgrade;
    h->state = PX_HTTP_DONE;
    http_parser_pause(hp, 1);
    return 0;
}

static const http_parser_settings settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void px_http_init(struct px_http *h)
{
    memset(h, 0, sizeof *h);
    http_parser_init(&h->hp, HTTP_REQUEST);
    h->hp.data = h;
    rp_buf_init(&h->req.body);
    reset_request(h);
}

void px_http_free(struct px_http *h)
{
    rp_buf_free(&h->req.body);
}

static enum px_http_state fail(struct px_http *h)
{
    if (h->err_status == 0) {
        enum http_errno e = HTTP_PARSER_ERRNO(&h->hp);
        if (e == HPE_HEADER_OVERFLOW)
            refuse(h, 431, "the request head is too large");
        else {
            char msg[160];
            snprintf(msg, sizeof msg, "malformed HTTP/1.1 request: %s", http_errno_description(e));
            refuse(h, 400, msg);
        }
    }
    h->state = PX_HTTP_ERROR;
    return h->state;
}

enum px_http_state px_http_feed(struct px_http *h, const char *p, size_t n, size_t *used)
{
    *used = 0;
    if (h->state == PX_HTTP_DONE || h->state == PX_HTTP_ERROR)
        return h->state;
    if (h->state == PX_HTTP_HEADERS) {
        /* The caller saw the head: go on with the body. */
        h->state = PX_HTTP_BODY;
        http_parser_pause(&h->hp, 0);
    }
    while (*used < n) {
        size_t k = http_parser_execute(&h->hp, &settings, p + *used, n - *used);
        *used += k;
        enum http_errno e = HTTP_PARSER_ERRNO(&h->hp);
        if (e == HPE_PAUSED)
            return h->state; /* PX_HTTP_HEADERS or PX_HTTP_DONE */
        if (e != HPE_OK || h->err_status != 0)
            return fail(h);
        if (k == 0)
            break; /* nothing taken without an error: wait for more */
    }
    return h->state;
}

void px_http_next(struct px_http *h)
{
    if (h->state != PX_HTTP_DONE)
        return;
    reset_request(h);
    http_parser_pause(&h->hp, 0);
}

enum px_http_state px_http_eof(struct px_http *h)
{
    if (h->state == PX_HTTP_ERROR || h->state == PX_HTTP_DONE)
        return h->state;
    /* Requests never end with the connection (their bodies have a length or chunks): a
     * close after the first byte of a request cuts it. */
    if (h->state != PX_HTTP_HEAD || h->head_bytes > 0 || h->hp.nread > 0) {
        refuse(h, 400, "the connection closed in the middle of a request");
        h->state = PX_HTTP_ERROR;
    }
    return h->state;
}
