/* tsh/play.c: tsh recordings ls and tsh play, through the proxy's auth pass-through.
 *
 * Recordings live in the auth service (rec_list, rec_get). tsh reaches it through the
 * proxy's web port with ALPN "teleport-auth@": the proxy pipes the bytes to an auth
 * server untouched, so the user's X.509 identity is checked by auth itself, end to
 * end, and the user's roles decide (rules on "session": list, read).
 *
 * A recording is asciicast v2 (auth/recordings.h): a header line, then event lines
 * [seconds, code, data]. tsh play writes the "o" (output) events to the terminal at
 * the recorded pace times --speed, with idle gaps cut to TSH_PLAY_MAX_IDLE_S. */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "auth/client.h"
#include "auth/recordings.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/mp.h"
#include "lib/util.h"
#include "tsh/tsh.h"

#define TSH_PLAY_MAX_IDLE_S 2.0
#define ALPN_AUTH "\x0eteleport-auth@"

/* An auth client that goes through @p's proxy with @p's identity. */
static int auth_through_proxy(const struct tsh_profile *p, struct auth_client **out)
{
    SSL_CTX *ctx = tsh_profile_tls_ctx(p);
    if (ctx == NULL)
        return RP_ETLS;
    if (SSL_CTX_set_alpn_protos(ctx, (const unsigned char *)ALPN_AUTH, sizeof ALPN_AUTH - 1) != 0) {
        SSL_CTX_free(ctx);
        return rp_err(RP_ETLS, "cannot offer ALPN teleport-auth@");
    }
    const char *addrs[] = {p->proxy};
    int rv = auth_client_new(out, ctx, addrs, 1);
    SSL_CTX_free(ctx); /* the client holds its own reference */
    if (rv == 0)
        auth_client_set_timeout(*out, 20000);
    return rv;
}

static const char *mp_str(const msgpack_object *o, const char *key, char *buf, size_t n)
{
    const char *s = NULL;
    size_t len = 0;
    if (rp_mp_get_str(o, key, &s, &len) != 0 || s == NULL)
        len = 0;
    snprintf(buf, n, "%.*s", (int)len, s ? s : "");
    return buf;
}

static uint64_t mp_u64(const msgpack_object *o, const char *key)
{
    uint64_t v = 0;
    rp_mp_get_u64(o, key, &v);
    return v;
}

static int call_failed(const char *label, const struct tsh_profile *p, int rv)
{
    if (rv == RP_EDENIED)
        fprintf(stderr,
                "%s: %s: your roles do not allow this (a role rule on resource 'session' "
                "with verbs list and read does); ask an administrator\n",
                label, rp_errmsg());
    else if (rv == RP_EUNAVAILABLE || rv == RP_ETLS)
        fprintf(stderr, "%s: %s (through the proxy %s): is the proxy up?\n", label, rp_errmsg(),
                p->proxy);
    else
        fprintf(stderr, "%s: %s (%s)\n", label, rp_errmsg(), rp_strerror(rv));
    return 1;
}

enum { O_FORMAT = 256, O_SPEED, O_LIMIT };

int tsh_cmd_recordings_ls(int argc, char **argv, const struct tsh_globals *gin)
{
    static const struct option own[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {"limit", required_argument, NULL, O_LIMIT},
        {NULL, 0, NULL, 0},
    };
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    char **args;
    int c, nargs, rv;
    bool json = false;
    struct auth_rec_query q = {0};
    tsh_flags_init(&f, &g, argc, argv, own, "f:", false);
    while ((c = tsh_flags_next(&f)) > 0) {
        if (c == O_LIMIT) {
            char *end;
            unsigned long v = strtoul(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v == 0 || v > 10000)
                return tsh_usage_error(&f, "--limit=%s: expected 1 to 10000", optarg);
            q.limit = (uint32_t)v;
        } else if (strcmp(optarg, "json") == 0) {
            json = true;
        } else if (strcmp(optarg, "text") != 0) {
            return tsh_usage_error(&f, "--format=%s: expected text or json", optarg);
        }
    }
    if ((rv = tsh_flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    struct tsh_profile p;
    struct auth_client *ac = NULL;
    if ((rv = tsh_require_profile(&g, f.label, &p)) != 0)
        return rv;
    if ((rv = auth_through_proxy(&p, &ac)) != 0)
        return call_failed(f.label, &p, rv);
    struct auth_reply reply;
    const msgpack_object *items;
    memset(&reply, 0, sizeof reply);
    if ((rv = auth_client_rec_list(ac, &q, &reply, &items)) != 0) {
        auth_client_free(ac);
        return call_failed(f.label, &p, rv);
    }
    struct rp_buf out;
    rp_buf_init(&out);
    uint32_t n = items->via.array.size;
    if (json) {
        rp_buf_append_str(&out, "[");
        for (uint32_t i = 0; i < n; i++) {
            rp_buf_append_str(&out, i ? ",\n  " : "\n  ");
            rp_json_from_mp(&out, &items->via.array.ptr[i], 0);
        }
        rp_buf_append_str(&out, n ? "\n]\n" : "]\n");
    } else {
        rp_buf_printf(&out, "%-36s %-16s %-12s %-20s %-20s %s\n", "Session ID", "User", "Login",
                      "Node", "Started (UTC)", "Duration");
        for (uint32_t i = 0; i < n; i++) {
            const msgpack_object *it = &items->via.array.ptr[i];
            char sid[40], user[64], login[40], host[64], when[40], dur[32];
            mp_str(it, "hostname", host, sizeof host);
            if (host[0] == '\0')
                mp_str(it, "server_id", host, sizeof host);
            uint64_t start = mp_u64(it, "start"), end = mp_u64(it, "end");
            rp_format_time(start, when, sizeof when);
            if (rp_mp_get(it, "end") != NULL && end >= start)
                rp_format_duration((end - start) / 1000 * 1000 + 1000 * ((end - start) < 1000), dur,
                                   sizeof dur);
            else
                snprintf(dur, sizeof dur, "(active)");
            rp_buf_printf(&out, "%-36s %-16s %-12s %-20s %-20s %s\n",
                          mp_str(it, "sid", sid, sizeof sid), mp_str(it, "user", user, sizeof user),
                          mp_str(it, "login", login, sizeof login), host, when, dur);
        }
    }
    fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
    auth_reply_free(&reply);
    auth_client_free(ac);
    return 0;
}

/* ---- decoding and playing ------------------------------------------------------------ */

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts = {(time_t)s, (long)((s - floor(s)) * 1e9)};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

int tsh_play_cast(const char *cast, size_t len, enum tsh_play_format format, double speed,
                  FILE *out)
{
    const char *p = cast, *end = cast + len;
    bool header_seen = false;
    double prev = 0;
    json_t *events = format == TSH_PLAY_JSON ? json_array() : NULL, *header = NULL;
    int rv = 0;
    unsigned line_no = 0;
    if (format == TSH_PLAY_ASCIICAST) {
        if (fwrite(cast, 1, len, out) != len)
            return rp_err(RP_EIO, "writing the recording: %s", strerror(errno));
        return 0;
    }
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
        line_no++;
        json_error_t jerr;
        json_t *v = n > 0 ? json_loadb(p, n, JSON_DECODE_ANY, &jerr) : NULL;
        p += n + (nl != NULL);
        if (n == 0)
            continue;
        if (v == NULL) {
            rv = rp_err(RP_EINVAL, "line %u of the recording is not JSON: %s", line_no, jerr.text);
            break;
        }
        if (!header_seen) {
            header_seen = true;
            if (!json_is_object(v) || json_integer_value(json_object_get(v, "version")) != 2) {
                json_decref(v);
                rv = rp_err(RP_EINVAL, "the recording does not start with an asciicast v2 header");
                break;
            }
            header = v;
            continue;
        }
        double t = json_number_value(json_array_get(v, 0));
        const char *code = json_string_value(json_array_get(v, 1));
        const char *data = json_string_value(json_array_get(v, 2));
        size_t dlen = json_string_length(json_array_get(v, 2));
        if (!json_is_array(v) || code == NULL || data == NULL || t < 0) {
            json_decref(v);
            rv = rp_err(RP_EINVAL, "line %u of the recording is not [time, code, data]", line_no);
            break;
        }
        if (events != NULL) {
            json_array_append_new(
                events, json_pack("{s:f, s:s, s:s%}", "time", t, "type", code, "data", data, dlen));
        } else if (strcmp(code, "o") == 0) {
            double gap = (t - prev) / speed;
            sleep_s(gap > TSH_PLAY_MAX_IDLE_S ? TSH_PLAY_MAX_IDLE_S : gap);
            prev = t;
            if (fwrite(data, 1, dlen, out) != dlen || fflush(out) != 0) {
                json_decref(v);
                rv = rp_err(RP_EIO, "writing the recording: %s", strerror(errno));
                break;
            }
        }
        json_decref(v);
    }
    if (rv == 0 && !header_seen)
        rv = rp_err(RP_EINVAL, "the recording is empty");
    if (rv == 0 && events != NULL) {
        json_t *doc = json_pack("{s:O, s:O}", "header", header, "events", events);
        char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        if (text == NULL || fprintf(out, "%s\n", text) < 0)
            rv = rp_err(RP_EIO, "writing the events");
        free(text);
        json_decref(doc);
    }
    json_decref(header);
    json_decref(events);
    return rv;
}

/* Every chunk of @sid, decompressed and concatenated, into @plain. 0 or 1 after printing. */
static int fetch_recording(const char *label, const struct tsh_profile *p, struct auth_client *ac,
                           const char *sid, struct rp_buf *plain)
{
    struct auth_reply reply;
    struct auth_rec_chunk ch;
    uint32_t chunks = 1, missing = 0;
    bool complete = true;
    for (uint32_t seq = 0; seq < chunks; seq++) {
        memset(&reply, 0, sizeof reply);
        int rv = auth_client_rec_get(ac, sid, seq, false, &reply, &ch);
        if (rv == RP_ENOTFOUND && seq > 0) {
            missing++;
            auth_reply_free(&reply);
            continue;
        }
        if (rv == RP_ENOTFOUND) {
            auth_reply_free(&reply);
            fprintf(stderr, "%s: no recording %s in the cluster: tsh recordings ls lists them\n",
                    label, sid);
            return 1;
        }
        if (rv != 0) {
            auth_reply_free(&reply);
            return call_failed(label, p, rv);
        }
        if (seq == 0) {
            chunks = ch.chunks;
            complete = ch.complete;
        }
        rv = auth_rec_decompress(ch.data, ch.len, plain);
        auth_reply_free(&reply);
        if (rv != 0) {
            fprintf(stderr, "%s: chunk %u of %s: %s\n", label, seq, sid, rp_errmsg());
            return 1;
        }
    }
    if (!complete || missing > 0)
        fprintf(stderr,
                "%s: recording %s is incomplete (%u of %u chunks missing: its node may still be "
                "uploading); playing what the cluster holds\n",
                label, sid, missing, chunks);
    return 0;
}

int tsh_cmd_play(int argc, char **argv, const struct tsh_globals *gin)
{
    static const struct option own[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {"speed", required_argument, NULL, O_SPEED},
        {NULL, 0, NULL, 0},
    };
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    char **args;
    int c, nargs, rv;
    double speed = 1;
    enum tsh_play_format format = TSH_PLAY_PTY;
    tsh_flags_init(&f, &g, argc, argv, own, "f:", false);
    while ((c = tsh_flags_next(&f)) > 0) {
        if (c == O_SPEED) {
            char *end;
            speed = strtod(optarg, &end);
            if (*end == 'x')
                end++;
            if (end == optarg || *end != '\0' || !(speed >= 0.25 && speed <= 16))
                return tsh_usage_error(&f, "--speed=%s: expected 0.25 to 16 (e.g. 2 or 0.5x)",
                                       optarg);
        } else if (strcmp(optarg, "pty") == 0 || strcmp(optarg, "text") == 0) {
            format = TSH_PLAY_PTY;
        } else if (strcmp(optarg, "json") == 0) {
            format = TSH_PLAY_JSON;
        } else if (strcmp(optarg, "asciicast") == 0) {
            format = TSH_PLAY_ASCIICAST;
        } else {
            return tsh_usage_error(&f, "--format=%s: expected pty, json or asciicast", optarg);
        }
    }
    if ((rv = tsh_flags_done(&f, c, 1, 1, &args, &nargs)) >= 0)
        return rv;
    const char *sid = args[0];
    if (strlen(sid) != 36 || strspn(sid, "0123456789abcdefABCDEF-") != 36)
        return tsh_usage_error(&f, "'%s' is not a session id (a UUID, as tsh recordings ls shows)",
                               sid);
    struct tsh_profile p;
    struct auth_client *ac = NULL;
    if ((rv = tsh_require_profile(&g, f.label, &p)) != 0)
        return rv;
    if ((rv = auth_through_proxy(&p, &ac)) != 0)
        return call_failed(f.label, &p, rv);
    struct rp_buf plain;
    rp_buf_init(&plain);
    rv = fetch_recording(f.label, &p, ac, sid, &plain);
    auth_client_free(ac);
    if (rv == 0 && tsh_play_cast((const char *)plain.data, plain.len, format, speed, stdout) != 0) {
        fprintf(stderr, "%s: %s\n", f.label, rp_errmsg());
        rv = 1;
    }
    rp_buf_free(&plain);
    return rv;
}
