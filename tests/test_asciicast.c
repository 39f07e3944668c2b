/* tests/test_asciicast.c: asciicast v2 lines (agent/asciicast.h).
 *
 * What is written must read back in real readers: Python's json module (what the
 * asciinema player is written in) and `asciinema cat` 2.2, run in a pseudo-terminal
 * through script(1) because it writes to /dev/tty. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "agent/asciicast.h"
#include "lib/errors.h"
#include "lib/util.h"

static char g_dir[] = "/tmp/rp-cast-XXXXXX";

static void setup(void)
{
    cr_assert_not_null(mkdtemp(g_dir));
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    cr_assert_eq(system(cmd), 0);
}

TestSuite(asciicast, .init = setup, .fini = teardown);

static void write_file(const char *name, const void *p, size_t n, char *path, size_t path_len)
{
    snprintf(path, path_len, "%s/%s", g_dir, name);
    cr_assert_eq(rp_write_file(path, p, n, 0600), 0, "%s", rp_errmsg());
}

/* Runs @cmd (a shell line); returns its exit status. */
static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static char *slurp(const char *path, size_t *len)
{
    char *data = NULL;
    cr_assert_eq(rp_read_file(path, 64u << 20, &data, len), 0, "%s", rp_errmsg());
    return data;
}

static const char *line_of(struct rp_buf *b)
{
    cr_assert(b->len > 0 && b->data[b->len - 1] == '\n');
    b->data[b->len - 1] = '\0';
    return (const char *)b->data;
}

Test(asciicast, control_characters_are_escaped_as_u00xx)
{
    struct rp_buf b;
    rp_buf_init(&b);
    const char in[] = "a\x01\x1b[0m\"q\\\t\n\x7f";
    cr_assert_eq(agent_cast_event(&b, 1500000, 'o', NULL, in, sizeof in - 1), 0);
    cr_assert_str_eq(line_of(&b),
                     "[1.500000, \"o\", \"a\\u0001\\u001b[0m\\\"q\\\\\\u0009\\u000a\\u007f\"]");
    rp_buf_free(&b);
}

Test(asciicast, time_has_microsecond_precision)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(agent_cast_event(&b, 3000007, 'o', NULL, "x", 1), 0);
    cr_assert_str_eq(line_of(&b), "[3.000007, \"o\", \"x\"]");
    uint64_t t;
    cr_assert_eq(agent_cast_line_time((const char *)b.data, b.len, &t), 0);
    cr_assert_eq(t, 3000007);
    rp_buf_free(&b);
}

Test(asciicast, utf8_split_across_writes_is_carried_to_the_next_event)
{
    struct rp_buf b;
    struct agent_cast_utf8 carry = {0};
    rp_buf_init(&b);
    /* "é" = C3 A9 cut after its first byte: the first event keeps "a" only. */
    cr_assert_eq(agent_cast_event(&b, 0, 'o', &carry, "a\xC3", 2), 0);
    cr_assert_eq(carry.len, 1);
    cr_assert_eq(agent_cast_event(&b, 1, 'o', &carry,
                                  "\xA9"
                                  "b",
                                  2),
                 0);
    cr_assert_eq(carry.len, 0);
    rp_buf_append(&b, "", 1);
    cr_assert_str_eq((const char *)b.data, "[0.000000, \"o\", \"a\"]\n"
                                           "[0.000001, \"o\", \"\xC3\xA9"
                                           "b\"]\n");
    rp_buf_reset(&b);

    /* U+1F600 (F0 9F 98 80) in four writes of one byte: no line until it is whole. */
    const uint8_t smile[] = {0xF0, 0x9F, 0x98, 0x80};
    for (int i = 0; i < 3; i++) {
        cr_assert_eq(agent_cast_event(&b, 2, 'o', &carry, smile + i, 1), 0);
        cr_assert_eq(b.len, 0, "a line was written for an incomplete sequence");
    }
    cr_assert_eq(agent_cast_event(&b, 2, 'o', &carry, smile + 3, 1), 0);
    rp_buf_append(&b, "", 1);
    cr_assert_str_eq((const char *)b.data, "[0.000002, \"o\", \"\xF0\x9F\x98\x80\"]\n");
    rp_buf_reset(&b);

    /* A stream that ends inside a sequence: the flush writes U+FFFD. */
    cr_assert_eq(agent_cast_event(&b, 3, 'o', &carry, "\xE2\x82", 2), 0);
    cr_assert_eq(b.len, 0);
    cr_assert_eq(agent_cast_event_flush(&b, 4, 'o', &carry), 0);
    rp_buf_append(&b, "", 1);
    cr_assert_str_eq((const char *)b.data, "[0.000004, \"o\", \"\xEF\xBF\xBD\"]\n");
    cr_assert_eq(carry.len, 0);
    rp_buf_free(&b);
}

Test(asciicast, invalid_utf8_becomes_one_replacement_per_maximal_subpart)
{
    struct rp_buf b;
    rp_buf_init(&b);
    /* C0 AF: overlong (2 x FFFD); ED A0 80: surrogate (3 x FFFD); F4 90: above
     * U+10FFFF (2); E2 82 then 'x': truncated sequence (1); FF (1). */
    const char in[] = "\xC0\xAF|\xED\xA0\x80|\xF4\x90|\xE2\x82x|\xFF";
    cr_assert_eq(agent_cast_json_string(&b, in, sizeof in - 1), 0);
    rp_buf_append(&b, "", 1);
#define R "\xEF\xBF\xBD"
    cr_assert_str_eq((const char *)b.data, "\"" R R "|" R R R "|" R R "|" R "x|" R "\"");
#undef R
    rp_buf_free(&b);
}

Test(asciicast, header_carries_size_time_env_and_title)
{
    struct rp_buf b;
    rp_buf_init(&b);
    struct agent_cast_header h = {.width = 120,
                                  .height = 40,
                                  .timestamp_s = 1796000000,
                                  .term = "xterm-256color",
                                  .shell = "/bin/bash",
                                  .title = "alice@node \"1\""};
    cr_assert_eq(agent_cast_header(&b, &h), 0);
    char path[256], cmd[1024];
    write_file("h.json", b.data, b.len, path, sizeof path);
    snprintf(
        cmd, sizeof cmd,
        "/usr/bin/python3 -c 'import json,sys; h=json.loads(open(sys.argv[1]).read()); "
        "sys.exit(0 if h==dict(version=2,width=120,height=40,timestamp=1796000000,"
        "env=dict(TERM=\"xterm-256color\",SHELL=\"/bin/bash\"),title=\"alice@node \\\"1\\\"\") "
        "else 1)' %s",
        path);
    cr_assert_eq(run(cmd), 0, "python reads another header than written: %.*s", (int)b.len, b.data);
    rp_buf_free(&b);
}

/* Random bytes, mostly of the kinds that go wrong (high bytes, controls, quotes). */
static void random_bytes(uint8_t *p, size_t n)
{
    static const uint8_t pool[] = {0x00, 0x1b, '"',  '\\', '\n', 'a',  0x7f, 0x80,
                                   0xBF, 0xC2, 0xC3, 0xDF, 0xE0, 0xE2, 0xED, 0xEF,
                                   0xF0, 0xF4, 0xF5, 0xFF, 0x9F, 0xA0, 0x90, 0x8F};
    for (size_t i = 0; i < n; i++) {
        uint64_t r = rp_rand_u64();
        p[i] = (r & 1) ? pool[(r >> 8) % sizeof pool] : (uint8_t)(r >> 16);
    }
}

Test(asciicast, random_bytes_split_anywhere_read_back_as_pythons_replace_decoding)
{
    /* Python decodes with "replace" by maximal subparts too: the data of the "o"
     * events, joined, must equal the raw bytes decoded in one piece, wherever the
     * writes were cut (the carry makes cuts invisible). */
    enum { N = 200000 };
    uint8_t *raw = malloc(N);
    random_bytes(raw, N);
    struct rp_buf cast;
    struct agent_cast_utf8 carry = {0};
    rp_buf_init(&cast);
    struct agent_cast_header h = {.width = 80, .height = 24, .timestamp_s = 1};
    cr_assert_eq(agent_cast_header(&cast, &h), 0);
    size_t off = 0;
    uint64_t t = 0;
    while (off < N) {
        size_t n = 1 + rp_rand_below(9);
        if (rp_rand_below(4) == 0)
            n = 1 + rp_rand_below(4000);
        if (n > N - off)
            n = N - off;
        cr_assert_eq(agent_cast_event(&cast, t++, 'o', &carry, raw + off, n), 0);
        off += n;
    }
    cr_assert_eq(agent_cast_event_flush(&cast, t, 'o', &carry), 0);

    char cast_path[256], raw_path[256], cmd[1024];
    write_file("r.cast", cast.data, cast.len, cast_path, sizeof cast_path);
    write_file("r.raw", raw, N, raw_path, sizeof raw_path);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import json,sys\n"
             "lines=open(sys.argv[1],encoding=\"utf-8\").read().split(\"\\n\")\n"
             "assert lines[-1]==\"\"\n"
             "json.loads(lines[0])\n"
             "got=\"\".join(json.loads(l)[2] for l in lines[1:-1])\n"
             "want=open(sys.argv[2],\"rb\").read().decode(\"utf-8\",\"replace\")\n"
             "sys.exit(0 if got==want else 1)' %s %s",
             cast_path, raw_path);
    cr_assert_eq(run(cmd), 0, "the cast's data differs from Python's decoding of the bytes");
    rp_buf_free(&cast);
    free(raw);
}

Test(asciicast, asciinema_cat_prints_the_output_written)
{
    /* Valid UTF-8 terminal output (escape sequences, CR LF, accents, a wide emoji),
     * written in pieces that cut sequences: asciinema cat prints it back byte for byte. */
    struct rp_buf want, cast;
    struct agent_cast_utf8 carry = {0};
    rp_buf_init(&want);
    rp_buf_init(&cast);
    for (int i = 0; i < 200; i++)
        rp_buf_printf(&want,
                      "\x1b[1;3%dmline %d\x1b[0m caf\xC3\xA9 \xF0\x9F\x98\x80 \"q\" \\ \t\r\n",
                      i % 8, i);
    struct agent_cast_header h = {
        .width = 80, .height = 24, .timestamp_s = 1796000000, .term = "xterm"};
    cr_assert_eq(agent_cast_header(&cast, &h), 0);
    size_t off = 0;
    uint64_t t = 0;
    while (off < want.len) {
        size_t n = 1 + rp_rand_below(50);
        if (n > want.len - off)
            n = want.len - off;
        cr_assert_eq(agent_cast_event(&cast, t, 'o', &carry, want.data + off, n), 0);
        t += 10;
        off += n;
    }
    cr_assert_eq(carry.len, 0);
    cr_assert_eq(agent_cast_resize(&cast, t, 100, 30), 0);

    char cast_path[256], out_path[512], cmd[2048];
    write_file("cat.cast", cast.data, cast.len, cast_path, sizeof cast_path);
    snprintf(out_path, sizeof out_path, "%s/cat.out", g_dir);
    snprintf(cmd, sizeof cmd, "script -qec 'asciinema cat %s' /dev/null > %s 2>&1", cast_path,
             out_path);
    cr_assert_eq(run(cmd), 0, "asciinema cat failed");
    size_t len;
    char *out = slurp(out_path, &len);
    cr_assert_eq(len, want.len, "asciinema cat printed %zu bytes, %zu written: %.200s", len,
                 want.len, out);
    cr_assert(memcmp(out, want.data, len) == 0, "asciinema cat printed other bytes");
    free(out);
    rp_buf_free(&want);
    rp_buf_free(&cast);
}

Test(asciicast, event_line_stays_within_its_bound)
{
    /* The recorder sizes its cap and chunks by agent_cast_event_max_line: the worst
     * input (all controls, carried tail flushed) must fit it. */
    uint8_t worst[AGENT_CAST_MAX_EVENT_DATA];
    memset(worst, 0x01, sizeof worst);
    struct rp_buf b;
    struct agent_cast_utf8 carry = {.tail = {0xF0, 0x9F, 0x98}, .len = 3};
    rp_buf_init(&b);
    cr_assert_eq(agent_cast_event(&b, UINT64_MAX, 'o', &carry, worst, sizeof worst), 0);
    cr_assert_leq(b.len, agent_cast_event_max_line(sizeof worst));
    rp_buf_free(&b);
}

Test(asciicast, line_time_refuses_what_is_not_an_event)
{
    uint64_t t;
    cr_assert_neq(agent_cast_line_time("{\"version\": 2}", 14, &t), 0);
    cr_assert_neq(agent_cast_line_time("[", 1, &t), 0);
    cr_assert_neq(agent_cast_line_time("[x, \"o\"]", 8, &t), 0);
    cr_assert_neq(agent_cast_line_time("[99999999999999999999.0, \"o\"]", 29, &t), 0);
    cr_assert_eq(agent_cast_line_time("[12.5, \"o\", \"\"]", 15, &t), 0);
    cr_assert_eq(t, 12500000);
}
