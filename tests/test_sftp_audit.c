/* tests/test_sftp_audit.c: the SFTP observer's bounds (agent/sftp_audit.h), on streams
 * built here packet by packet. What real clients do is tested with stock sftp and scp
 * in test_int_sshd_agent.c. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/sftp_audit.h"
#include "lib/buf.h"
#include "lib/errors.h"

struct seen {
    char lines[2048][256];
    size_t n;
};

static void on_event(void *arg, const struct sftp_audit_event *e)
{
    struct seen *s = arg;
    if (s->n >= 2048)
        return;
    snprintf(s->lines[s->n++], 256, "%s %s%s%s%s%s r=%llu w=%llu", e->action,
             e->path ? e->path : "-", e->target_path ? " -> " : "",
             e->target_path ? e->target_path : "", e->error ? " error: " : "",
             e->error ? e->error : "", (unsigned long long)e->bytes_read,
             (unsigned long long)e->bytes_written);
}

static void be32(struct rp_buf *b, uint32_t v)
{
    cr_assert_eq(rp_buf_put_be32(b, v), 0);
}

static void str(struct rp_buf *b, const char *s, size_t n)
{
    be32(b, (uint32_t)n);
    rp_buf_append(b, s, n);
}

/* A packet of @type with @body / @n. */
static void packet(struct rp_buf *out, uint8_t type, const struct rp_buf *body)
{
    be32(out, (uint32_t)body->len + 1);
    rp_buf_append(out, &type, 1);
    rp_buf_append(out, body->data, body->len);
}

static void id_path(struct rp_buf *out, uint8_t type, uint32_t id, const char *path)
{
    struct rp_buf b;
    rp_buf_init(&b);
    be32(&b, id);
    str(&b, path, strlen(path));
    if (type == 14) /* MKDIR: attributes */
        be32(&b, 0);
    packet(out, type, &b);
    rp_buf_free(&b);
}

static void status(struct rp_buf *out, uint32_t id, uint32_t code)
{
    struct rp_buf b;
    rp_buf_init(&b);
    be32(&b, id);
    be32(&b, code);
    str(&b, "", 0);
    str(&b, "", 0);
    packet(out, 101, &b);
    rp_buf_free(&b);
}

static void feed(struct sftp_audit *a, bool client, const struct rp_buf *b)
{
    cr_assert_eq(sftp_audit_feed(a, client, b->data, b->len), 0, "%s", rp_errmsg());
}

Test(sftp_audit, events_stop_at_the_limit_after_one_truncation_notice)
{
    static struct seen s;
    s.n = 0;
    struct sftp_audit *a = NULL;
    cr_assert_eq(sftp_audit_new(&a, on_event, &s, 0), 0);
    struct rp_buf c, v;
    rp_buf_init(&c);
    rp_buf_init(&v);
    for (uint32_t i = 0; i < SFTP_AUDIT_DEFAULT_EVENTS + 50; i++) {
        char p[32];
        snprintf(p, sizeof p, "/d%u", i);
        c.len = v.len = 0;
        id_path(&c, 14, i, p);
        status(&v, i, 0);
        feed(a, true, &c);
        feed(a, false, &v);
    }
    cr_assert_eq(s.n, SFTP_AUDIT_DEFAULT_EVENTS + 1);
    cr_assert_eq(sftp_audit_events(a), SFTP_AUDIT_DEFAULT_EVENTS + 1);
    cr_assert(strncmp(s.lines[s.n - 1], "events_truncated", 16) == 0, "%s", s.lines[s.n - 1]);
    cr_assert_str_eq(s.lines[0], "mkdir /d0 r=0 w=0");
    rp_buf_free(&c);
    rp_buf_free(&v);
    sftp_audit_free(a);
}

Test(sftp_audit, large_writes_are_counted_not_buffered_and_split_anywhere)
{
    static struct seen s;
    s.n = 0;
    struct sftp_audit *a = NULL;
    cr_assert_eq(sftp_audit_new(&a, on_event, &s, 0), 0);
    struct rp_buf c, v, b;
    rp_buf_init(&c);
    rp_buf_init(&v);
    rp_buf_init(&b);
    /* OPEN id 1 "/f" write|create, answered with handle "H1". */
    be32(&b, 1);
    str(&b, "/f", 2);
    be32(&b, 2 | 8);
    be32(&b, 0);
    packet(&c, 3, &b);
    feed(a, true, &c);
    b.len = c.len = 0;
    be32(&b, 1);
    str(&b, "H1", 2);
    packet(&v, 102, &b);
    feed(a, false, &v);
    /* Two WRITEs of 200 KiB each (more than a packet head holds), fed 1000 bytes at a
     * time; both acknowledged. */
    static char data[200 * 1024];
    memset(data, 'x', sizeof data);
    for (uint32_t id = 2; id <= 3; id++) {
        b.len = c.len = 0;
        be32(&b, id);
        str(&b, "H1", 2);
        cr_assert_eq(rp_buf_put_be64(&b, 0), 0);
        str(&b, data, sizeof data);
        packet(&c, 6, &b);
        for (size_t off = 0; off < c.len; off += 1000) {
            size_t n = c.len - off < 1000 ? c.len - off : 1000;
            cr_assert_eq(sftp_audit_feed(a, true, c.data + off, n), 0);
        }
    }
    v.len = 0;
    status(&v, 2, 0);
    status(&v, 3, 4); /* the second write failed: not counted */
    feed(a, false, &v);
    cr_assert_eq(s.n, 1);
    cr_assert_str_eq(s.lines[0], "open /f r=0 w=0");
    /* The channel ends with the file open: its close is reported with the count. */
    sftp_audit_finish(a);
    cr_assert_eq(s.n, 2);
    cr_assert_str_eq(s.lines[1],
                     "close /f error: the channel ended with the file open r=0 w=204800");
    rp_buf_free(&c);
    rp_buf_free(&v);
    rp_buf_free(&b);
    sftp_audit_free(a);
}

Test(sftp_audit, a_stream_that_is_not_sftp_stops_the_observer_once)
{
    static struct seen s;
    s.n = 0;
    struct sftp_audit *a = NULL;
    cr_assert_eq(sftp_audit_new(&a, on_event, &s, 0), 0);
    const char *junk = "GET / HTTP/1.1\r\n\r\n";
    cr_assert_eq(sftp_audit_feed(a, true, junk, strlen(junk)), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "not SFTP") != NULL, "%s", rp_errmsg());
    /* Later bytes, even valid ones, are ignored without a second error. */
    struct rp_buf c;
    rp_buf_init(&c);
    id_path(&c, 13, 1, "/x");
    cr_assert_eq(sftp_audit_feed(a, true, c.data, c.len), 0);
    cr_assert_eq(s.n, 0);
    rp_buf_free(&c);
    sftp_audit_free(a);
}

Test(sftp_audit, requests_beyond_the_pending_table_are_reported_at_once)
{
    static struct seen s;
    s.n = 0;
    struct sftp_audit *a = NULL;
    cr_assert_eq(sftp_audit_new(&a, on_event, &s, 5000), 0);
    struct rp_buf c;
    rp_buf_init(&c);
    /* Never answered: the table fills (3/4 of SFTP_AUDIT_PENDING), the rest go out at
     * once, without an outcome. */
    for (uint32_t i = 0; i < SFTP_AUDIT_PENDING; i++)
        id_path(&c, 13, i, "/gone");
    feed(a, true, &c);
    cr_assert_eq(s.n, SFTP_AUDIT_PENDING - SFTP_AUDIT_PENDING * 3 / 4);
    /* A control character in a path is not written as is. */
    c.len = 0;
    id_path(&c, 15, 99999, "/a\nb\xff");
    feed(a, true, &c);
    cr_assert_str_eq(s.lines[s.n - 1], "rmdir /a?b? r=0 w=0");
    rp_buf_free(&c);
    sftp_audit_free(a);
}
