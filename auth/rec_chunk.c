/* auth/rec_chunk.c: checks a recording chunk (zstd frame of asciicast v2 lines)
 * before it enters the cluster, and decompresses it for export.
 *
 * Everything here reads bytes a node sent: the frame is decompressed in bounded
 * steps into a buffer capped at AUTH_REC_MAX_PLAIN (a frame's declared content
 * size is not trusted), and the JSON of each line is walked by a validator with a
 * depth limit that allocates nothing. */
#include "auth/recordings.h"

#include <stdlib.h>
#include <string.h>
#include <zstd.h>

#include "lib/errors.h"

int auth_rec_decompress(const void *data, size_t len, struct rp_buf *out)
{
    if (len == 0 || len > AUTH_REC_MAX_COMPRESSED)
        return rp_err(RP_ETOOBIG, "chunk of %zu bytes, expected 1 to %u", len,
                      AUTH_REC_MAX_COMPRESSED);
    /* Exactly one whole frame: the same bytes must not mean different content to
     * a decoder that stops after the first frame. */
    size_t frame = ZSTD_findFrameCompressedSize(data, len);
    if (ZSTD_isError(frame))
        return rp_err(RP_EINVAL, "chunk is not a zstd frame: %s", ZSTD_getErrorName(frame));
    if (frame != len)
        return rp_err(RP_EINVAL, "chunk holds %zu bytes after its zstd frame, expected one frame",
                      len - frame);
    unsigned long long declared = ZSTD_getFrameContentSize(data, len);
    if (declared != ZSTD_CONTENTSIZE_UNKNOWN &&
        (declared == ZSTD_CONTENTSIZE_ERROR || declared > AUTH_REC_MAX_PLAIN))
        return rp_err(RP_ETOOBIG, "chunk declares %llu bytes of content, at most %u", declared,
                      AUTH_REC_MAX_PLAIN);
    ZSTD_DCtx *dctx = ZSTD_createDCtx();
    if (dctx == NULL)
        return rp_err(RP_ENOMEM, "allocating a zstd decoder");
    /* A window larger than the cap could only describe more than the cap. */
    ZSTD_DCtx_setParameter(dctx, ZSTD_d_windowLogMax, 23);
    size_t start = out->len;
    ZSTD_inBuffer in = {data, len, 0};
    size_t rc = 1;
    int rv = 0;
    while (rc != 0) {
        size_t room = 64 << 10;
        if (out->len - start + room > AUTH_REC_MAX_PLAIN)
            room = AUTH_REC_MAX_PLAIN - (out->len - start);
        if (room == 0) {
            /* Full: one more byte of output means too much. */
            uint8_t probe;
            ZSTD_outBuffer po = {&probe, 1, 0};
            rc = ZSTD_decompressStream(dctx, &po, &in);
            if (!ZSTD_isError(rc) && (po.pos > 0 || rc != 0)) {
                rv = rp_err(RP_ETOOBIG, "chunk content exceeds %u bytes", AUTH_REC_MAX_PLAIN);
                break;
            }
            if (ZSTD_isError(rc))
                break;
            continue;
        }
        if ((rv = rp_buf_reserve(out, room)) != 0)
            break;
        ZSTD_outBuffer o = {out->data + out->len, room, 0};
        size_t before_in = in.pos;
        rc = ZSTD_decompressStream(dctx, &o, &in);
        if (ZSTD_isError(rc))
            break;
        out->len += o.pos;
        if (rc != 0 && o.pos == 0 && in.pos == before_in && in.pos == in.size) {
            rv = rp_err(RP_EINVAL, "chunk's zstd frame is truncated");
            break;
        }
    }
    ZSTD_freeDCtx(dctx);
    if (rv == 0 && ZSTD_isError(rc))
        rv = rp_err(RP_EINVAL, "chunk's zstd frame is corrupt: %s", ZSTD_getErrorName(rc));
    if (rv != 0)
        out->len = start;
    return rv;
}

/* ---- lines ----------------------------------------------------------------- */

/* Length of the UTF-8 sequence at @p (at most @n bytes), 0 if invalid: shortest
 * form only, no surrogates, nothing above U+10FFFF. */
static size_t utf8_seq(const unsigned char *p, size_t n)
{
    unsigned char c = p[0];
    if (c < 0x80)
        return 1;
    size_t len;
    uint32_t cp;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (p[i] & 0x3f);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* A cursor over one line; @err set at the first problem. */
struct jcur {
    const unsigned char *p, *end;
    const char *err;
};

static void ws(struct jcur *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\r'))
        j->p++;
}

static bool lit(struct jcur *j, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, word, n) != 0) {
        j->err = "an unknown literal";
        return false;
    }
    j->p += n;
    return true;
}

static bool digits(struct jcur *j)
{
    const unsigned char *s = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
        j->p++;
    return j->p > s;
}

/* A JSON number; its value (as a double) in *@v when @v is not NULL. */
static bool number(struct jcur *j, double *v)
{
    const unsigned char *s = j->p;
    if (j->p < j->end && *j->p == '-')
        j->p++;
    if (j->p < j->end && *j->p == '0')
        j->p++;
    else if (!digits(j))
        goto bad;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (!digits(j))
            goto bad;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (!digits(j))
            goto bad;
    }
    if (v != NULL) {
        char tmp[40];
        size_t n = (size_t)(j->p - s);
        if (n >= sizeof tmp) {
            j->err = "a number of more than 39 characters";
            return false;
        }
        memcpy(tmp, s, n);
        tmp[n] = '\0';
        *v = strtod(tmp, NULL);
    }
    return true;
bad:
    j->err = "a malformed number";
    return false;
}

static int hex4(const unsigned char *p)
{
    int v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned char c = p[i];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* A JSON string (UTF-8 checked by the caller for the whole chunk). If @out is not
 * NULL, the string when it is plain ASCII without escapes and fits @cap. */
static bool string(struct jcur *j, char *out, size_t cap)
{
    if (j->p >= j->end || *j->p != '"') {
        j->err = "a string";
        return false;
    }
    j->p++;
    const unsigned char *s = j->p;
    bool plain = true;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = *j->p;
        if (c < 0x20) {
            j->err = "a string without raw control characters";
            return false;
        }
        if (c == '\\') {
            plain = false;
            if (j->end - j->p < 2) {
                j->err = "a complete escape";
                return false;
            }
            unsigned char e = j->p[1];
            if (e == 'u') {
                if (j->end - j->p < 6 || hex4(j->p + 2) < 0) {
                    j->err = "\\u and four hex digits";
                    return false;
                }
                j->p += 6;
                continue;
            }
            if (strchr("\"\\/bfnrt", e) == NULL || e == '\0') {
                j->err = "a known escape";
                return false;
            }
            j->p += 2;
            continue;
        }
        j->p++;
    }
    if (j->p >= j->end) {
        j->err = "a closing quote";
        return false;
    }
    if (out != NULL) {
        size_t n = (size_t)(j->p - s);
        out[0] = '\0';
        if (plain && n < cap) {
            memcpy(out, s, n);
            out[n] = '\0';
        }
    }
    j->p++;
    return true;
}

static bool value(struct jcur *j, int depth);

static bool container(struct jcur *j, int depth, bool object)
{
    unsigned char close = object ? '}' : ']';
    if (depth >= AUTH_REC_MAX_LINE_DEPTH) {
        j->err = "nesting of at most 16 levels";
        return false;
    }
    j->p++;
    ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return true;
    }
    for (;;) {
        ws(j);
        if (object) {
            if (!string(j, NULL, 0))
                return false;
            ws(j);
            if (j->p >= j->end || *j->p != ':') {
                j->err = "':' after a key";
                return false;
            }
            j->p++;
            ws(j);
        }
        if (!value(j, depth + 1))
            return false;
        ws(j);
        if (j->p < j->end && *j->p == ',') {
            j->p++;
            continue;
        }
        if (j->p < j->end && *j->p == close) {
            j->p++;
            return true;
        }
        j->err = object ? "',' or '}'" : "',' or ']'";
        return false;
    }
}

static bool value(struct jcur *j, int depth)
{
    if (j->p >= j->end) {
        j->err = "a value";
        return false;
    }
    switch (*j->p) {
    case '{':
        return container(j, depth, true);
    case '[':
        return container(j, depth, false);
    case '"':
        return string(j, NULL, 0);
    case 't':
        return lit(j, "true");
    case 'f':
        return lit(j, "false");
    case 'n':
        return lit(j, "null");
    default:
        return number(j, NULL);
    }
}

/* The header: an object with "version": 2 and a positive "width" and "height" (what
 * the asciicast v2 format requires; players size the terminal from them). */
static bool header(struct jcur *j)
{
    double version = 0, width = 0, height = 0;
    if (j->p >= j->end || *j->p != '{') {
        j->err = "the header, a JSON object";
        return false;
    }
    j->p++;
    ws(j);
    if (j->p < j->end && *j->p == '}') {
        j->p++;
    } else {
        for (;;) {
            char key[16];
            ws(j);
            if (!string(j, key, sizeof key))
                return false;
            ws(j);
            if (j->p >= j->end || *j->p != ':') {
                j->err = "':' after a key";
                return false;
            }
            j->p++;
            ws(j);
            double *num = strcmp(key, "version") == 0  ? &version
                          : strcmp(key, "width") == 0  ? &width
                          : strcmp(key, "height") == 0 ? &height
                                                       : NULL;
            if (num != NULL) {
                if (j->p >= j->end || !((*j->p >= '0' && *j->p <= '9') || *j->p == '-')) {
                    j->err = "a number for version, width and height";
                    return false;
                }
                if (!number(j, num))
                    return false;
            } else if (!value(j, 1)) {
                return false;
            }
            ws(j);
            if (j->p < j->end && *j->p == ',') {
                j->p++;
                continue;
            }
            if (j->p < j->end && *j->p == '}') {
                j->p++;
                break;
            }
            j->err = "',' or '}'";
            return false;
        }
    }
    if (version != 2.0) {
        j->err = "a header with \"version\": 2";
        return false;
    }
    if (!(width >= 1 && width <= 65535 && height >= 1 && height <= 65535)) {
        j->err = "a header with \"width\" and \"height\" of 1 to 65535";
        return false;
    }
    return true;
}

/* An event: [time >= 0, "code", "data"]; its time in *@t. */
static bool event(struct jcur *j, double *t)
{
    if (j->p >= j->end || *j->p != '[') {
        j->err = "an event, a JSON array [time, code, data]";
        return false;
    }
    j->p++;
    ws(j);
    if (j->p >= j->end || *j->p == '-' || !number(j, t) || !(*t >= 0 && *t < 1e12)) {
        if (j->err == NULL)
            j->err = "an event time in seconds (a non-negative number)";
        return false;
    }
    for (int field = 0; field < 2; field++) {
        ws(j);
        if (j->p >= j->end || *j->p != ',') {
            j->err = "an event of three elements [time, code, data]";
            return false;
        }
        j->p++;
        ws(j);
        if (!string(j, NULL, 0))
            return false;
    }
    ws(j);
    if (j->p >= j->end || *j->p != ']') {
        j->err = "']' after an event's three elements";
        return false;
    }
    j->p++;
    return true;
}

int auth_rec_lines_check(const char *text, size_t n, bool first, struct auth_rec_chunk_info *info)
{
    const unsigned char *p = (const unsigned char *)text, *end = p + n;
    struct auth_rec_chunk_info got = {.plain_len = n};
    if (n == 0)
        return rp_err(RP_EINVAL, "chunk content is empty, expected asciicast lines");
    for (size_t i = 0; i < n;) {
        size_t k = utf8_seq(p + i, n - i);
        if (k == 0)
            return rp_err(RP_EINVAL, "chunk content is not UTF-8 (byte %zu)", i);
        i += k;
    }
    if (end[-1] != '\n')
        return rp_err(RP_EINVAL, "chunk content does not end with a newline (whole lines only)");
    double max_t = 0;
    while (p < end) {
        const unsigned char *nl = memchr(p, '\n', (size_t)(end - p));
        struct jcur j = {.p = p, .end = nl, .err = NULL};
        got.lines++;
        ws(&j);
        bool ok;
        double t = 0;
        if (first && got.lines == 1) {
            ok = header(&j);
            got.has_header = ok;
        } else {
            ok = event(&j, &t);
        }
        if (ok) {
            ws(&j);
            if (j.p != j.end) {
                ok = false;
                j.err = "the end of the line after one JSON value";
            }
        }
        if (!ok)
            return rp_err(RP_EINVAL, "chunk line %u (byte %zu): expected %s", got.lines,
                          (size_t)(j.p - (const unsigned char *)text),
                          j.err ? j.err : "a JSON value");
        if (t > max_t)
            max_t = t;
        p = nl + 1;
    }
    got.last_ms = (uint64_t)(max_t * 1000.0);
    if (info != NULL)
        *info = got;
    return 0;
}

int auth_rec_chunk_check(const void *data, size_t len, bool first, struct auth_rec_chunk_info *info,
                         struct rp_buf *scratch)
{
    struct rp_buf own;
    struct rp_buf *b = scratch;
    if (b == NULL) {
        rp_buf_init(&own);
        b = &own;
    }
    size_t start = b->len;
    int rv = auth_rec_decompress(data, len, b);
    if (rv == 0)
        rv = auth_rec_lines_check((const char *)b->data + start, b->len - start, first, info);
    if (rv != 0)
        b->len = start;
    if (b == &own)
        rp_buf_free(&own);
    return rv;
}
