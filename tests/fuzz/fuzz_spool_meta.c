/* tests/fuzz/fuzz_spool_meta.c: the recorder's spool meta file (agent/recorder.h).
 *
 * The spool lives on the node's disk, which can be damaged or edited: a restarted
 * agent reads each session's meta file back with agent_spool_meta_parse before it
 * uploads anything. Each input goes to the parser, and also, as terminal output, to
 * the asciicast escaper (agent/asciicast.h), which sees every byte a session prints.
 *
 * Checked: an accepted meta has a valid sid and fields within the documented limits;
 * encoded again from its fields it parses to the same fields; its upload map and its
 * asciicast header are well-formed (msgpack; one line of valid UTF-8 without control
 * characters). The escaper's output is valid UTF-8 without control characters, the
 * same whether the input comes in one piece or byte by byte. */
#include "agent/asciicast.h"
#include "agent/recorder.h"
#include "lib/buf.h"
#include "lib/mp.h"
#include "tests/fuzz/check.h"

static bool same_str(const char *a, const char *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    return strcmp(a, b) == 0;
}

/* Well-formed UTF-8 (no surrogates, overlongs, or code points above U+10FFFF) and no
 * control character. */
static bool clean_utf8(const uint8_t *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = p[i];
        if (c < 0x80) {
            if (c < 0x20 || c == 0x7F)
                return false;
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if (c >= 0xC2 && c <= 0xDF) {
            need = 2;
            cp = c & 0x1F;
        } else if (c >= 0xE0 && c <= 0xEF) {
            need = 3;
            cp = c & 0x0F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 4;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + need > n)
            return false;
        for (size_t k = 1; k < need; k++) {
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (p[i + k] & 0x3F);
        }
        if ((need == 3 && cp < 0x800) || (need == 4 && (cp < 0x10000 || cp > 0x10FFFF)) ||
            (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += need;
    }
    return true;
}

static void check_escaper(const uint8_t *data, size_t size)
{
    struct rp_buf whole, pieces;
    struct agent_cast_utf8 carry = {0};
    rp_buf_init(&whole);
    rp_buf_init(&pieces);
    FUZZ_CHECK(agent_cast_json_string(&whole, data, size) == 0);
    FUZZ_CHECK(whole.len >= 2 && clean_utf8(whole.data, whole.len));

    /* Byte by byte through the carry, the event bodies joined must equal the string. */
    rp_buf_append(&pieces, "\"", 1);
    for (size_t i = 0; i <= size; i++) {
        struct rp_buf line;
        rp_buf_init(&line);
        if (i < size)
            FUZZ_CHECK(agent_cast_event(&line, 0, 'o', &carry, data + i, 1) == 0);
        else
            FUZZ_CHECK(agent_cast_event_flush(&line, 0, 'o', &carry) == 0);
        if (line.len > 0) {
            static const char pre[] = "[0.000000, \"o\", \"";
            FUZZ_CHECK(line.len > sizeof pre - 1 + 3);
            FUZZ_CHECK(memcmp(line.data, pre, sizeof pre - 1) == 0);
            FUZZ_CHECK(memcmp(line.data + line.len - 3, "\"]\n", 3) == 0);
            rp_buf_append(&pieces, line.data + sizeof pre - 1, line.len - (sizeof pre - 1) - 3);
        }
        rp_buf_free(&line);
    }
    FUZZ_CHECK(carry.len == 0);
    rp_buf_append(&pieces, "\"", 1);
    FUZZ_CHECK(pieces.len == whole.len && memcmp(pieces.data, whole.data, whole.len) == 0);
    rp_buf_free(&whole);
    rp_buf_free(&pieces);
}

static void check_meta(const uint8_t *data, size_t size)
{
    struct agent_spool_meta m;
    if (agent_spool_meta_parse(data, size, &m) != 0)
        return;
    FUZZ_CHECK(m.sid != NULL && strlen(m.sid) == 36);
    FUZZ_CHECK(m.user != NULL && m.login != NULL && m.server_id != NULL && m.hostname != NULL);
    FUZZ_CHECK(m.cols <= 65535 && m.rows <= 65535);

    struct agent_rec_meta again = {.sid = m.sid,
                                   .user = m.user,
                                   .login = m.login,
                                   .server_id = m.server_id,
                                   .hostname = m.hostname,
                                   .term = m.term,
                                   .shell = m.shell,
                                   .cols = m.cols,
                                   .rows = m.rows,
                                   .start_ms = m.start_ms,
                                   .interactive = m.interactive,
                                   .command = m.command,
                                   .record_input = m.record_input};
    struct rp_buf b;
    rp_buf_init(&b);
    FUZZ_CHECK(agent_spool_meta_encode(&b, &again) == 0);
    struct agent_spool_meta m2;
    FUZZ_CHECK(agent_spool_meta_parse(b.data, b.len, &m2) == 0);
    FUZZ_CHECK(same_str(m.sid, m2.sid) && same_str(m.user, m2.user) &&
               same_str(m.login, m2.login) && same_str(m.server_id, m2.server_id) &&
               same_str(m.hostname, m2.hostname) && same_str(m.term, m2.term) &&
               same_str(m.shell, m2.shell) && same_str(m.command, m2.command));
    FUZZ_CHECK(m.cols == m2.cols && m.rows == m2.rows && m.start_ms == m2.start_ms &&
               m.interactive == m2.interactive && m.record_input == m2.record_input);
    agent_spool_meta_free(&m2);

    rp_buf_reset(&b);
    FUZZ_CHECK(agent_spool_meta_upload(&b, &m) == 0);
    FUZZ_CHECK(rp_mp_validate(b.data, b.len) == 0);

    rp_buf_reset(&b);
    struct agent_cast_header h = {.width = m.cols,
                                  .height = m.rows,
                                  .timestamp_s = m.start_ms / 1000,
                                  .term = m.term,
                                  .shell = m.shell,
                                  .title = m.hostname,
                                  .command = m.command};
    FUZZ_CHECK(agent_cast_header(&b, &h) == 0);
    FUZZ_CHECK(b.len > 1 && b.data[0] == '{' && b.data[b.len - 1] == '\n');
    FUZZ_CHECK(clean_utf8(b.data, b.len - 1));
    rp_buf_free(&b);
    agent_spool_meta_free(&m);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* Both libFuzzer and the replay hand over a buffer of exactly @size bytes. */
    check_meta(data, size);
    if (size <= 4096)
        check_escaper(data, size);
    return 0;
}
