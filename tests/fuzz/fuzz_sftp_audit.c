/* tests/fuzz/fuzz_sftp_audit.c: the SFTP observer of the SSH server (agent/sftp_audit.h).
 *
 * The client side of an sftp channel is whatever an authenticated user sends; the
 * observer reads it (and sftp-server's answers) for the audit log. Input: a sequence
 * of chunks, each one header byte (bit 7: the chunk is from sftp-server rather than
 * the client; bits 0-6: its length) then that many bytes (fewer at the end of the
 * input). The seeds are real sessions of OpenSSH's sftp and scp with sftp-server.
 *
 * Checked: every event has an action, and its strings are printable UTF-8 without
 * control characters, each within SFTP_AUDIT_PATH_MAX + 3 bytes; at most the limit
 * of events plus the truncation notice; a feed fails at most once; the events are the
 * same, byte for byte, when every chunk is fed one byte at a time (the observer does
 * not depend on how the stream is split). */
#include "agent/sftp_audit.h"
#include "lib/buf.h"
#include "tests/fuzz/check.h"

#define MAX_EVENTS 40

struct log {
    struct rp_buf b;
    uint32_t n;
};

static bool clean(const char *s)
{
    const uint8_t *p = (const uint8_t *)s;
    size_t n = strlen(s);
    if (n > SFTP_AUDIT_PATH_MAX + 3)
        return false;
    for (size_t i = 0; i < n;) {
        if (p[i] < 0x20 || p[i] == 0x7F)
            return false;
        if (p[i] < 0x80) {
            i++;
            continue;
        }
        size_t need = p[i] >= 0xF0 ? 4 : p[i] >= 0xE0 ? 3 : 2;
        if (p[i] < 0xC2 || p[i] > 0xF4 || i + need > n)
            return false;
        for (size_t k = 1; k < need; k++)
            if ((p[i + k] & 0xC0) != 0x80)
                return false;
        i += need;
    }
    return true;
}

static void put(struct log *l, const char *name, const char *v)
{
    if (v == NULL)
        return;
    FUZZ_CHECK(clean(v));
    rp_buf_printf(&l->b, "%s=%s|", name, v);
}

static void on_event(void *arg, const struct sftp_audit_event *ev)
{
    struct log *l = arg;
    FUZZ_CHECK(ev->action != NULL && ev->action[0] != '\0');
    l->n++;
    put(l, "action", ev->action);
    put(l, "path", ev->path);
    put(l, "target", ev->target_path);
    put(l, "flags", ev->flags);
    put(l, "attrs", ev->attributes);
    put(l, "error", ev->error);
    if (ev->has_bytes)
        rp_buf_printf(&l->b, "r=%llu w=%llu", (unsigned long long)ev->bytes_read,
                      (unsigned long long)ev->bytes_written);
    rp_buf_append(&l->b, "\n", 1);
}

/* Feeds the chunks of @data, each whole or one byte at a time; fills @l. */
static void run(const uint8_t *data, size_t size, bool bytewise, struct log *l)
{
    struct sftp_audit *a = NULL;
    FUZZ_CHECK(sftp_audit_new(&a, on_event, l, MAX_EVENTS) == 0);
    int failures = 0;
    size_t i = 0;
    while (i < size) {
        bool from_server = data[i] & 0x80;
        size_t len = data[i] & 0x7F;
        i++;
        if (len > size - i)
            len = size - i;
        const uint8_t *chunk = fuzz_dup(data + i, len);
        if (bytewise) {
            for (size_t k = 0; k < len; k++)
                failures += sftp_audit_feed(a, !from_server, chunk + k, 1) != 0;
        } else {
            failures += sftp_audit_feed(a, !from_server, chunk, len) != 0;
        }
        free((void *)chunk);
        i += len;
    }
    FUZZ_CHECK(failures <= 1);
    rp_buf_printf(&l->b, "failed=%d\n", failures);
    sftp_audit_finish(a);
    FUZZ_CHECK(l->n <= MAX_EVENTS + 1);
    FUZZ_CHECK(sftp_audit_events(a) == l->n);
    sftp_audit_free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct log whole = {.n = 0}, bytes = {.n = 0};
    rp_buf_init(&whole.b);
    rp_buf_init(&bytes.b);
    run(data, size, false, &whole);
    run(data, size, true, &bytes);
    FUZZ_CHECK(whole.b.len == bytes.b.len &&
               (whole.b.len == 0 || memcmp(whole.b.data, bytes.b.data, whole.b.len) == 0));
    rp_buf_free(&whole.b);
    rp_buf_free(&bytes.b);
    return 0;
}
