/* agent/asciicast.c: asciicast v2 header and event lines, with UTF-8 repair.
 *
 * This runs on every byte a recorded terminal prints, so the escaper writes straight
 * into space reserved for the worst case (6 bytes out per byte in: \u00XX) and copies
 * runs of plain ASCII without looking at them twice. */
#include "agent/asciicast.h"

#include <stdio.h>
#include <string.h>

#include "lib/errors.h"

enum utf8_res { UTF8_OK, UTF8_BAD, UTF8_SHORT };

/* Classifies the sequence starting at @p (@n > 0 bytes available). UTF8_OK: a
 * well-formed character of *@len bytes. UTF8_BAD: *@len bytes form a maximal ill-formed
 * subpart (one U+FFFD). UTF8_SHORT: the *@len bytes left are a well-formed prefix cut by
 * the end of the input. The ranges are those of Unicode's table 3-7, which refuses
 * overlong forms, surrogates and code points above U+10FFFF. */
static enum utf8_res utf8_classify(const uint8_t *p, size_t n, size_t *len)
{
    uint8_t b = p[0];
    uint8_t lo = 0x80, hi = 0xBF;
    size_t need;

    if (b < 0x80) {
        *len = 1;
        return UTF8_OK;
    }
    if (b < 0xC2 || b > 0xF4) {
        *len = 1;
        return UTF8_BAD;
    }
    if (b < 0xE0) {
        need = 2;
    } else if (b < 0xF0) {
        need = 3;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else {
        need = 4;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= n) {
            *len = i;
            return UTF8_SHORT;
        }
        if (p[i] < lo || p[i] > hi) {
            *len = i;
            return UTF8_BAD;
        }
        lo = 0x80;
        hi = 0xBF;
    }
    *len = need;
    return UTF8_OK;
}

static const char hex_digits[] = "0123456789abcdef";

static inline bool ascii_plain(uint8_t c)
{
    return c >= 0x20 && c < 0x7F && c != '"' && c != '\\';
}

/* Escapes @p[0..n) into @o (room for 6 * n bytes) and returns the end of what it wrote.
 * Stops at the first character boundary at or after @stop_at (n for all of it), or
 * before a sequence cut short by the end when !@final; *@used says how many input
 * bytes were consumed. */
static uint8_t *escape_into(uint8_t *o, const uint8_t *p, size_t n, size_t stop_at, bool final,
                            size_t *used)
{
    size_t i = 0;
    while (i < n && i < stop_at) {
        uint8_t c = p[i];
        if (ascii_plain(c)) {
            size_t j = i + 1;
            while (j < n && ascii_plain(p[j]))
                j++;
            memcpy(o, p + i, j - i);
            o += j - i;
            i = j;
            continue;
        }
        if (c < 0x80) {
            *o++ = '\\';
            if (c == '"' || c == '\\') {
                *o++ = c;
            } else {
                *o++ = 'u';
                *o++ = '0';
                *o++ = '0';
                *o++ = (uint8_t)hex_digits[c >> 4];
                *o++ = (uint8_t)hex_digits[c & 15];
            }
            i++;
            continue;
        }
        size_t len;
        enum utf8_res res = utf8_classify(p + i, n - i, &len);
        if (res == UTF8_SHORT && !final)
            break;
        if (res == UTF8_OK) {
            memcpy(o, p + i, len);
            o += len;
        } else {
            /* U+FFFD */
            *o++ = 0xEF;
            *o++ = 0xBF;
            *o++ = 0xBD;
        }
        i += len;
    }
    *used = i;
    return o;
}

size_t agent_cast_event_max_line(size_t n)
{
    /* "[" + 20 digits + "." + 6 + ", \"x\", \"" + data + "\"]\n", the carry's 3 bytes too */
    return 48 + 6 * (n + 3);
}

static int append_time(struct rp_buf *b, uint64_t t_us)
{
    return rp_buf_printf(b, "%llu.%06llu", (unsigned long long)(t_us / 1000000),
                         (unsigned long long)(t_us % 1000000));
}

/* Appends the escaped body (no quotes) of @carry + @p to @b, which has room reserved.
 * Returns the number of bytes appended. */
static size_t append_body(struct rp_buf *b, struct agent_cast_utf8 *carry, const uint8_t *p,
                          size_t n, bool final)
{
    uint8_t *start = b->data + b->len, *o = start;
    size_t used, skip = 0;

    if (carry != NULL && carry->len > 0) {
        /* The carried bytes begin one character; join them with up to 3 bytes of @p,
         * enough to finish any sequence they start, and escape that character alone. */
        uint8_t tmp[6];
        size_t k = carry->len, take = n < 3 ? n : 3;
        memcpy(tmp, carry->tail, k);
        if (take > 0)
            memcpy(tmp + k, p, take);
        o = escape_into(o, tmp, k + take, k, final, &used);
        if (used < k) {
            /* Still incomplete: all of @p went into the sequence (take == n). */
            size_t rest = k + take - used;
            memmove(carry->tail, tmp + used, rest);
            carry->len = (uint8_t)rest;
            n = 0;
        } else {
            carry->len = 0;
            skip = used - k;
        }
    }
    /* @p may be NULL when @n is 0 (a flush): no pointer arithmetic on it then. */
    if (n > skip) {
        const uint8_t *q = p + skip;
        size_t m = n - skip;
        o = escape_into(o, q, m, m, final || carry == NULL, &used);
        if (used < m) {
            memcpy(carry->tail, q + used, m - used);
            carry->len = (uint8_t)(m - used);
        }
    }
    return (size_t)(o - start);
}

static int append_event(struct rp_buf *b, uint64_t t_us, char code, struct agent_cast_utf8 *carry,
                        const void *p, size_t n, bool final)
{
    size_t mark = b->len;
    struct agent_cast_utf8 saved = carry != NULL ? *carry : (struct agent_cast_utf8){{0}, 0};
    int rv = rp_buf_reserve(b, agent_cast_event_max_line(n));
    if (rv != 0)
        return rv;
    rv = rp_buf_append_str(b, "[");
    if (rv == 0)
        rv = append_time(b, t_us);
    if (rv == 0)
        rv = rp_buf_printf(b, ", \"%c\", \"", code);
    if (rv != 0) {
        b->len = mark;
        return rv;
    }
    /* Reserved above: the body and the closing fit without growing. */
    size_t body = append_body(b, carry, p, n, final);
    if (body == 0) {
        b->len = mark;
        return 0;
    }
    b->len += body;
    rv = rp_buf_append(b, "\"]\n", 3);
    if (rv != 0) {
        b->len = mark;
        if (carry != NULL)
            *carry = saved;
    }
    return rv;
}

int agent_cast_event(struct rp_buf *b, uint64_t t_us, char code, struct agent_cast_utf8 *carry,
                     const void *p, size_t n)
{
    return append_event(b, t_us, code, carry, p, n, false);
}

int agent_cast_event_flush(struct rp_buf *b, uint64_t t_us, char code,
                           struct agent_cast_utf8 *carry)
{
    if (carry == NULL || carry->len == 0)
        return 0;
    return append_event(b, t_us, code, carry, NULL, 0, true);
}

int agent_cast_resize(struct rp_buf *b, uint64_t t_us, unsigned cols, unsigned rows)
{
    size_t mark = b->len;
    int rv = rp_buf_append_str(b, "[");
    if (rv == 0)
        rv = append_time(b, t_us);
    if (rv == 0)
        rv = rp_buf_printf(b, ", \"r\", \"%ux%u\"]\n", cols, rows);
    if (rv != 0)
        b->len = mark;
    return rv;
}

int agent_cast_json_string(struct rp_buf *b, const void *p, size_t n)
{
    int rv = rp_buf_reserve(b, 6 * n + 2);
    if (rv != 0)
        return rv;
    b->data[b->len++] = '"';
    b->len += append_body(b, NULL, p, n, true);
    b->data[b->len++] = '"';
    return 0;
}

static int append_kv_str(struct rp_buf *b, const char *key, const char *val)
{
    int rv = rp_buf_printf(b, ", \"%s\": ", key);
    if (rv == 0)
        rv = agent_cast_json_string(b, val, strlen(val));
    return rv;
}

int agent_cast_header(struct rp_buf *b, const struct agent_cast_header *h)
{
    size_t mark = b->len;
    int rv = rp_buf_printf(b, "{\"version\": 2, \"width\": %u, \"height\": %u, \"timestamp\": %llu",
                           h->width, h->height, (unsigned long long)h->timestamp_s);
    if (rv == 0 && (h->term != NULL || h->shell != NULL)) {
        rv = rp_buf_append_str(b, ", \"env\": {");
        if (rv == 0 && h->term != NULL) {
            rv = rp_buf_append_str(b, "\"TERM\": ");
            if (rv == 0)
                rv = agent_cast_json_string(b, h->term, strlen(h->term));
        }
        if (rv == 0 && h->shell != NULL) {
            rv = rp_buf_append_str(b, h->term != NULL ? ", \"SHELL\": " : "\"SHELL\": ");
            if (rv == 0)
                rv = agent_cast_json_string(b, h->shell, strlen(h->shell));
        }
        if (rv == 0)
            rv = rp_buf_append_str(b, "}");
    }
    if (rv == 0 && h->command != NULL)
        rv = append_kv_str(b, "command", h->command);
    if (rv == 0 && h->title != NULL)
        rv = append_kv_str(b, "title", h->title);
    if (rv == 0)
        rv = rp_buf_append_str(b, "}\n");
    if (rv != 0)
        b->len = mark;
    return rv;
}

int agent_cast_line_time(const char *line, size_t n, uint64_t *t_us)
{
    size_t i = 0;
    uint64_t secs = 0, frac = 0;
    unsigned frac_digits = 0;

    if (n < 2 || line[0] != '[')
        return rp_err(RP_EINVAL, "asciicast event line does not start with '['");
    i = 1;
    if (i >= n || line[i] < '0' || line[i] > '9')
        return rp_err(RP_EINVAL, "asciicast event line has no time after '['");
    for (; i < n && line[i] >= '0' && line[i] <= '9'; i++) {
        if (secs > (UINT64_MAX / 1000000 - 9) / 10)
            return rp_err(RP_EINVAL, "asciicast event time out of range");
        secs = secs * 10 + (uint64_t)(line[i] - '0');
    }
    if (i < n && line[i] == '.') {
        for (i++; i < n && line[i] >= '0' && line[i] <= '9'; i++) {
            if (frac_digits < 6) {
                frac = frac * 10 + (uint64_t)(line[i] - '0');
                frac_digits++;
            }
        }
    }
    if (i >= n || (line[i] != ',' && line[i] != ' '))
        return rp_err(RP_EINVAL, "asciicast event time is not followed by ','");
    for (; frac_digits < 6; frac_digits++)
        frac *= 10;
    *t_us = secs * 1000000 + frac;
    return 0;
}
