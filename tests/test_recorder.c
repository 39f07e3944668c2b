/* tests/test_recorder.c: the node's session recorder (agent/recorder.h).
 *
 * Real files in a temporary spool, real zstd, real threads; the upload function
 * stores chunks in memory (as auth's rec_put would) or fails on demand. Recordings
 * are read back the way auth serves them: chunks in seq order, decompressed and
 * joined, and shown by `asciinema cat` 2.2. An agent killed with SIGKILL is a forked
 * child that records until the test kills it. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <errno.h>
#include <msgpack.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "agent/recorder.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"

/* ---- an in-memory auth ------------------------------------------------------------ */

struct stored {
    char sid[37];
    uint64_t seq;
    uint8_t *data;
    size_t len;
    bool last;
    uint8_t *meta;
    size_t meta_len;
};

struct sink {
    pthread_mutex_t mu;
    bool fail;
    int fail_code;
    unsigned calls, failures;
    struct stored *items;
    size_t n;
};

static struct sink g_sink;
static char g_dir[] = "/tmp/rp-rec-XXXXXX";
static char g_spool[256];

static int sink_upload(void *arg, const char *sid, uint64_t seq, const void *data, size_t len,
                       bool last, const void *meta, size_t meta_len)
{
    struct sink *s = arg;
    int rv = 0;
    pthread_mutex_lock(&s->mu);
    s->calls++;
    if (s->fail) {
        s->failures++;
        rv = rp_err(s->fail_code, "test sink refuses (as an unreachable auth would)");
        goto out;
    }
    for (size_t i = 0; i < s->n; i++) {
        if (strcmp(s->items[i].sid, sid) == 0 && s->items[i].seq == seq)
            goto out; /* idempotent, as rec_put is */
    }
    s->items = realloc(s->items, (s->n + 1) * sizeof *s->items);
    struct stored *it = &s->items[s->n++];
    memset(it, 0, sizeof *it);
    snprintf(it->sid, sizeof it->sid, "%s", sid);
    it->seq = seq;
    it->data = malloc(len);
    memcpy(it->data, data, len);
    it->len = len;
    it->last = last;
    if (meta != NULL) {
        it->meta = malloc(meta_len);
        memcpy(it->meta, meta, meta_len);
        it->meta_len = meta_len;
    }
out:
    pthread_mutex_unlock(&s->mu);
    return rv;
}

static void sink_set_fail(bool fail)
{
    pthread_mutex_lock(&g_sink.mu);
    g_sink.fail = fail;
    pthread_mutex_unlock(&g_sink.mu);
}

/* Chunks of @sid stored so far; *@complete when the last one is in. */
static size_t sink_count(const char *sid, bool *complete)
{
    size_t n = 0;
    pthread_mutex_lock(&g_sink.mu);
    if (complete != NULL)
        *complete = false;
    for (size_t i = 0; i < g_sink.n; i++) {
        if (strcmp(g_sink.items[i].sid, sid) != 0)
            continue;
        n++;
        if (g_sink.items[i].last && complete != NULL)
            *complete = true;
    }
    pthread_mutex_unlock(&g_sink.mu);
    return n;
}

/* The recording of @sid as auth would export it: every chunk, in seq order, with
 * no gap, last only on the final one, decompressed and joined. */
static void sink_assemble(const char *sid, struct rp_buf *cast)
{
    rp_buf_init(cast);
    pthread_mutex_lock(&g_sink.mu);
    size_t count = 0;
    for (size_t i = 0; i < g_sink.n; i++)
        count += strcmp(g_sink.items[i].sid, sid) == 0;
    cr_assert_gt(count, 0, "no chunk of %s was uploaded", sid);
    for (uint64_t seq = 0; seq < count; seq++) {
        struct stored *it = NULL;
        for (size_t i = 0; i < g_sink.n; i++)
            if (strcmp(g_sink.items[i].sid, sid) == 0 && g_sink.items[i].seq == seq)
                it = &g_sink.items[i];
        cr_assert_not_null(it, "chunk %llu of %s missing (%zu chunks)", (unsigned long long)seq,
                           sid, count);
        cr_assert_eq(it->last, seq + 1 == count, "chunk %llu: last=%d of %zu chunks",
                     (unsigned long long)seq, it->last, count);
        cr_assert_eq(it->meta != NULL, seq == 0, "meta on chunk %llu", (unsigned long long)seq);
        cr_assert_leq(it->len, AGENT_REC_MAX_COMPRESSED);
        unsigned long long size = ZSTD_getFrameContentSize(it->data, it->len);
        cr_assert(size != ZSTD_CONTENTSIZE_ERROR && size != ZSTD_CONTENTSIZE_UNKNOWN);
        cr_assert_leq(size, AGENT_REC_MAX_DECOMPRESSED);
        cr_assert_eq(rp_buf_reserve(cast, size), 0);
        size_t got = ZSTD_decompress(cast->data + cast->len, size, it->data, it->len);
        cr_assert(!ZSTD_isError(got) && got == size, "chunk %llu does not decompress",
                  (unsigned long long)seq);
        cast->len += got;
    }
    pthread_mutex_unlock(&g_sink.mu);
}

static void setup(void)
{
    cr_assert_not_null(mkdtemp(g_dir));
    snprintf(g_spool, sizeof g_spool, "%s/spool", g_dir);
    pthread_mutex_init(&g_sink.mu, NULL);
    g_sink.fail_code = RP_EUNAVAILABLE;
}

static void teardown(void)
{
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", g_dir);
    cr_assert_eq(system(cmd), 0);
    for (size_t i = 0; i < g_sink.n; i++) {
        free(g_sink.items[i].data);
        free(g_sink.items[i].meta);
    }
    free(g_sink.items);
}

TestSuite(recorder, .init = setup, .fini = teardown, .timeout = 120);

/* ---- helpers ------------------------------------------------------------------------ */

static const struct agent_recorder_tuning fast = {
    .chunk_bytes = 0, /* default 256 KiB */
    .chunk_ms = 300,
    .flush_ms = 100,
    .backoff_min_ms = 50,
    .backoff_max_ms = 400,
};

static struct agent_recorder *new_recorder(uint64_t cap)
{
    struct agent_recorder *r = NULL;
    cr_assert_eq(agent_recorder_new(&r, g_spool, cap, sink_upload, &g_sink), 0, "%s", rp_errmsg());
    agent_recorder_tune(r, &fast);
    return r;
}

static struct agent_rec_meta meta_of(const char *sid)
{
    return (struct agent_rec_meta){.sid = sid,
                                   .user = "alice",
                                   .login = "root",
                                   .server_id = "0a5b7e2c-node",
                                   .hostname = "node1",
                                   .term = "xterm",
                                   .shell = "/bin/sh",
                                   .cols = 80,
                                   .rows = 24,
                                   .start_ms = rp_now_ms(),
                                   .interactive = true};
}

static void new_sid(char sid[37])
{
    cr_assert_eq(rp_uuid_v4(sid), 0);
}

static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* Every line of @cast is JSON to Python, the first the v2 header. */
static void assert_python_reads(const struct rp_buf *cast)
{
    char path[300], cmd[1024];
    snprintf(path, sizeof path, "%s/check.cast", g_dir);
    cr_assert_eq(rp_write_file(path, cast->data, cast->len, 0600), 0);
    snprintf(cmd, sizeof cmd,
             "/usr/bin/python3 -c 'import json,sys\n"
             "ls=open(sys.argv[1],encoding=\"utf-8\").read().split(\"\\n\")\n"
             "assert ls[-1]==\"\" and json.loads(ls[0])[\"version\"]==2\n"
             "ts=[json.loads(l)[0] for l in ls[1:-1]]\n"
             "assert ts==sorted(ts)' %s",
             path);
    cr_assert_eq(run(cmd), 0, "Python does not read the recording as asciicast v2");
}

/* What `asciinema cat` prints of @cast. */
static char *asciinema_cat(const struct rp_buf *cast, size_t *len)
{
    char path[300], out[300], cmd[1024], *data = NULL;
    snprintf(path, sizeof path, "%s/play.cast", g_dir);
    snprintf(out, sizeof out, "%s/play.out", g_dir);
    cr_assert_eq(rp_write_file(path, cast->data, cast->len, 0600), 0);
    snprintf(cmd, sizeof cmd, "script -qec 'asciinema cat %s' /dev/null > %s 2>&1", path, out);
    cr_assert_eq(run(cmd), 0, "asciinema cat failed");
    cr_assert_eq(rp_read_file(out, 256u << 20, &data, len), 0);
    return data;
}

static bool contains(const struct rp_buf *b, const char *s)
{
    return memmem(b->data, b->len, s, strlen(s)) != NULL;
}

static bool wait_until(bool (*cond)(void *), void *arg, uint64_t ms)
{
    uint64_t deadline = rp_mono_ms() + ms;
    while (rp_mono_ms() < deadline) {
        if (cond(arg))
            return true;
        usleep(10000);
    }
    return cond(arg);
}

/* Typical terminal output: a listing with colours, CR LF line ends. */
static void terminal_text(struct rp_buf *b, size_t bytes)
{
    for (unsigned i = 0; b->len < bytes; i++)
        rp_buf_printf(b,
                      "-rw-r--r-- 1 root root %6u Dec  6 19:%02u \x1b[01;34mfile-%u.txt\x1b[0m "
                      "r\xC3\xA9sum\xC3\xA9\r\n",
                      (i * 7919) % 100000, i % 60, i);
}

/* ---- tests ---------------------------------------------------------------------------- */

Test(recorder, session_output_arrives_in_order_and_plays_back_in_asciinema)
{
    struct agent_recorder *r = new_recorder(0);
    char sid[37];
    new_sid(sid);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    cr_assert_eq(agent_rec_open(r, &m, &rec), 0, "%s", rp_errmsg());

    /* 3 MiB written in pieces of every size: several chunks cut by size. */
    struct rp_buf want;
    rp_buf_init(&want);
    terminal_text(&want, 3u << 20);
    size_t off = 0;
    while (off < want.len) {
        size_t n = 1 + rp_rand_below(rp_rand_below(4) == 0 ? 70000 : 300);
        if (n > want.len - off)
            n = want.len - off;
        cr_assert_eq(agent_rec_output(rec, want.data + off, n), 0, "%s", rp_errmsg());
        off += n;
    }
    cr_assert_eq(agent_rec_resize(rec, 132, 43), 0);
    cr_assert_eq(agent_rec_close(rec), 0, "%s", rp_errmsg());
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 20000), 0, "%s", rp_errmsg());

    /* Everything is there when flush returns. */
    bool complete;
    size_t chunks = sink_count(sid, &complete);
    cr_assert(complete, "flush returned before the last chunk was uploaded");
    cr_assert_geq(chunks, 4, "3 MiB of lines made %zu chunks", chunks);
    cr_assert_eq(agent_recorder_spool_bytes(r), 0, "the spool still counts %llu bytes",
                 (unsigned long long)agent_recorder_spool_bytes(r));
    char path[300];
    snprintf(path, sizeof path, "%s/%s", g_spool, sid);
    cr_assert_not(rp_file_exists(path), "the session's spool directory was not removed");

    /* Chunk 0 carries the metadata auth lists recordings by. */
    pthread_mutex_lock(&g_sink.mu);
    struct stored *first = NULL;
    for (size_t i = 0; i < g_sink.n; i++)
        if (g_sink.items[i].seq == 0)
            first = &g_sink.items[i];
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(first->meta, first->meta_len, &u), 0);
    const char *s;
    size_t sn;
    uint64_t v;
    cr_assert_eq(rp_mp_get_str(&u.data, "user", &s, &sn), 0);
    cr_assert(sn == 5 && memcmp(s, "alice", 5) == 0);
    cr_assert_eq(rp_mp_get_str(&u.data, "login", &s, &sn), 0);
    cr_assert_eq(rp_mp_get_str(&u.data, "hostname", &s, &sn), 0);
    cr_assert_eq(rp_mp_get_u64(&u.data, "cols", &v), 0);
    cr_assert_eq(v, 80);
    cr_assert_eq(rp_mp_get_u64(&u.data, "start", &v), 0);
    cr_assert_eq(v, m.start_ms);
    msgpack_unpacked_destroy(&u);
    pthread_mutex_unlock(&g_sink.mu);

    struct rp_buf cast;
    sink_assemble(sid, &cast);
    assert_python_reads(&cast);
    cr_assert(contains(&cast, "[") && contains(&cast, "\"r\", \"132x43\""), "resize missing");
    size_t len;
    char *out = asciinema_cat(&cast, &len);
    cr_assert_eq(len, want.len, "asciinema cat printed %zu bytes of %zu", len, want.len);
    cr_assert(memcmp(out, want.data, len) == 0, "asciinema cat printed other bytes");
    free(out);
    rp_buf_free(&cast);
    rp_buf_free(&want);
    agent_recorder_free(r);
}

static bool some_chunk_uploaded(void *sid)
{
    return sink_count(sid, NULL) > 0;
}

Test(recorder, chunks_are_uploaded_while_the_session_goes_on)
{
    struct agent_recorder *r = new_recorder(0);
    char sid[37];
    new_sid(sid);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    cr_assert_eq(agent_rec_open(r, &m, &rec), 0, "%s", rp_errmsg());
    /* A slow interactive session: a line every 20 ms, chunks cut every 300 ms. */
    uint64_t deadline = rp_mono_ms() + 10000;
    bool seen = false;
    for (int i = 0; rp_mono_ms() < deadline && !seen; i++) {
        char line[64];
        int n = snprintf(line, sizeof line, "$ echo %d\r\n%d\r\n", i, i);
        cr_assert_eq(agent_rec_output(rec, line, (size_t)n), 0);
        usleep(20000);
        seen = some_chunk_uploaded(sid);
    }
    cr_assert(seen, "nothing was uploaded during 10 s of an open session");
    bool complete;
    sink_count(sid, &complete);
    cr_assert_not(complete, "a chunk was marked last while the session is open");
    cr_assert_eq(agent_rec_close(rec), 0);
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0, "%s", rp_errmsg());
    sink_count(sid, &complete);
    cr_assert(complete);
    struct rp_buf cast;
    sink_assemble(sid, &cast);
    assert_python_reads(&cast);
    rp_buf_free(&cast);
    agent_recorder_free(r);
}

static bool three_failures(void *unused)
{
    (void)unused;
    pthread_mutex_lock(&g_sink.mu);
    bool ok = g_sink.failures >= 3;
    pthread_mutex_unlock(&g_sink.mu);
    return ok;
}

static bool complete_sid(void *sid)
{
    bool complete;
    sink_count(sid, &complete);
    return complete;
}

Test(recorder, failed_uploads_are_retried_until_they_succeed)
{
    sink_set_fail(true);
    struct agent_recorder *r = new_recorder(0);
    char sid[37];
    new_sid(sid);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    cr_assert_eq(agent_rec_open(r, &m, &rec), 0);
    cr_assert_eq(agent_rec_output(rec, "hello while auth is away\r\n", 26), 0);
    cr_assert_eq(agent_rec_close(rec), 0);
    cr_assert(wait_until(three_failures, NULL, 10000), "the uploader did not retry");
    cr_assert_eq(sink_count(sid, NULL), 0);
    sink_set_fail(false);
    cr_assert(wait_until(complete_sid, sid, 10000), "not uploaded once auth came back");
    struct rp_buf cast;
    sink_assemble(sid, &cast);
    cr_assert(contains(&cast, "hello while auth is away"));
    rp_buf_free(&cast);
    agent_recorder_free(r);
}

/* True once a part file of the spool holds @needle. */
static bool part_holds(const char *sid, const char *needle)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s/%s", g_spool, sid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return false;
    bool found = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && !found) {
        if (strstr(e->d_name, ".part") == NULL)
            continue;
        char path[600], *data = NULL;
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (rp_read_file(path, 8u << 20, &data, &len) == 0) {
            found = memmem(data, len, needle, strlen(needle)) != NULL;
            free(data);
        }
    }
    closedir(d);
    return found;
}

struct part_wait {
    const char *sid, *needle;
};

/* True once the spool holds @needle for @sid, in a part file or a chunk. */
static bool spool_holds(const char *sid, const char *needle)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s/%s", g_spool, sid);
    DIR *d = opendir(dir);
    if (d == NULL)
        return false;
    bool found = false;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && !found) {
        const char *dot = strrchr(e->d_name, '.');
        if (dot == NULL || (strcmp(dot, ".part") != 0 && strcmp(dot, ".zst") != 0))
            continue;
        char path[600], *data = NULL;
        size_t len;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (rp_read_file(path, 8u << 20, &data, &len) != 0)
            continue;
        if (strcmp(dot, ".part") == 0) {
            found = memmem(data, len, needle, strlen(needle)) != NULL;
        } else {
            unsigned long long size = ZSTD_getFrameContentSize(data, len);
            if (size <= AGENT_REC_MAX_DECOMPRESSED) {
                char *plain = malloc(size + 1);
                size_t got = ZSTD_decompress(plain, size, data, len);
                found = !ZSTD_isError(got) && memmem(plain, got, needle, strlen(needle)) != NULL;
                free(plain);
            }
        }
        free(data);
    }
    closedir(d);
    return found;
}

struct holds_wait {
    const char *sid, *needle;
};

static bool holds_cond(void *arg)
{
    struct holds_wait *w = arg;
    return spool_holds(w->sid, w->needle);
}

/* Appends @text to the part file of @sid (there is one). */
static void append_to_part(const char *sid, const char *text)
{
    char dir[300];
    snprintf(dir, sizeof dir, "%s/%s", g_spool, sid);
    DIR *d = opendir(dir);
    cr_assert_not_null(d);
    struct dirent *e;
    bool done = false;
    while ((e = readdir(d)) != NULL && !done) {
        if (strstr(e->d_name, ".part") == NULL)
            continue;
        char path[600];
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        FILE *f = fopen(path, "a");
        cr_assert_not_null(f);
        fputs(text, f);
        fclose(f);
        done = true;
    }
    closedir(d);
    cr_assert(done, "no part file in %s", dir);
}

static bool part_wait_cond(void *arg)
{
    struct part_wait *w = arg;
    return part_holds(w->sid, w->needle);
}

Test(recorder, recorder_freed_mid_session_is_finished_by_the_next_one)
{
    struct agent_recorder *r = new_recorder(0);
    /* Chunks cut by size only, so that the tail stays in the part file. */
    struct agent_recorder_tuning by_size = fast;
    by_size.chunk_ms = 60000;
    agent_recorder_tune(r, &by_size);
    char sid[37];
    new_sid(sid);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    cr_assert_eq(agent_rec_open(r, &m, &rec), 0);
    /* Enough for chunks to be uploaded by this recorder, then a tail in the part. */
    struct rp_buf want;
    rp_buf_init(&want);
    terminal_text(&want, 600000);
    cr_assert_eq(agent_rec_output(rec, want.data, want.len), 0);
    cr_assert(wait_until(some_chunk_uploaded, sid, 10000));
    static const char tail[] = "the last words before the crash\r\n";
    cr_assert_eq(agent_rec_output(rec, tail, sizeof tail - 1), 0);
    rp_buf_append(&want, tail, sizeof tail - 1);
    struct part_wait w = {sid, "the last words"};
    cr_assert(wait_until(part_wait_cond, &w, 5000), "the tail never reached the part file");
    agent_recorder_free(r); /* as if killed: no close, no flush */
    /* Killed in the middle of a write: the part ends with a torn line. */
    append_to_part(sid, "[9.25, \"o\", \"torn li");

    r = new_recorder(0);
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0, "%s", rp_errmsg());
    bool complete;
    sink_count(sid, &complete);
    cr_assert(complete, "the next recorder did not finish the session");
    struct rp_buf cast;
    sink_assemble(sid, &cast);
    assert_python_reads(&cast);
    size_t len;
    char *out = asciinema_cat(&cast, &len);
    cr_assert_eq(len, want.len, "played %zu bytes of %zu", len, want.len);
    cr_assert(memcmp(out, want.data, len) == 0);
    free(out);
    rp_buf_free(&cast);
    rp_buf_free(&want);
    agent_recorder_free(r);
}

/* The child: an agent recording one session until it is killed; it reports the
 * number of each line once agent_rec_output has taken it. */
static void child_agent(const char *sid, int report_fd)
{
    struct agent_recorder *r = NULL;
    if (agent_recorder_new(&r, g_spool, 0, sink_upload, &g_sink) != 0)
        _exit(2);
    agent_recorder_tune(r, &fast);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    if (agent_rec_open(r, &m, &rec) != 0)
        _exit(3);
    for (uint32_t i = 0;; i++) {
        char line[64];
        int n = snprintf(line, sizeof line, "child line %u\r\n", i);
        if (agent_rec_output(rec, line, (size_t)n) != 0)
            _exit(4);
        if (write(report_fd, &i, sizeof i) != sizeof i)
            _exit(5);
        usleep(2000);
    }
}

Test(recorder, agent_killed_with_sigkill_has_its_session_uploaded_after_restart)
{
    char sid[37];
    new_sid(sid);
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    /* Auth unreachable for the child: everything it records stays in the spool. */
    sink_set_fail(true);
    pid_t pid = fork();
    cr_assert_neq(pid, -1);
    if (pid == 0) {
        close(fds[0]);
        child_agent(sid, fds[1]);
    }
    close(fds[1]);
    uint32_t line = 0;
    uint64_t deadline = rp_mono_ms() + 20000;
    while (line < 300 && rp_mono_ms() < deadline && read(fds[0], &line, sizeof line) == sizeof line)
        ;
    /* Lines reach the spool within flush_ms (a part file) or at a cut (a chunk):
     * once line 300 is there, kill the child while it goes on writing. */
    struct holds_wait w = {sid, "child line 300\\u000d"};
    bool reached = line >= 300 && wait_until(holds_cond, &w, 10000);
    kill(pid, SIGKILL);
    int st;
    waitpid(pid, &st, 0);
    close(fds[0]);
    cr_assert(reached, "the child did not record 300 lines (last %u)", line);
    cr_assert(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL, "the child exited by itself (%d)", st);

    sink_set_fail(false);
    struct agent_recorder *r = new_recorder(0);
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0, "%s", rp_errmsg());
    bool complete;
    sink_count(sid, &complete);
    cr_assert(complete, "the killed agent's session was not uploaded with last=true");
    struct rp_buf cast;
    sink_assemble(sid, &cast);
    assert_python_reads(&cast);
    size_t len;
    char *out = asciinema_cat(&cast, &len);
    /* What it shows is the child's output from the first line on, in order, up to at
     * least line 300: a prefix of what the child printed. */
    struct rp_buf want;
    rp_buf_init(&want);
    for (unsigned i = 0; want.len < len; i++)
        rp_buf_printf(&want, "child line %u\r\n", i);
    cr_assert(memcmp(out, want.data, len) == 0, "the recording is not the child's output");
    cr_assert(memmem(out, len, "child line 300\r\n", 16) != NULL,
              "line 300 was lost with the kill");
    free(out);
    rp_buf_free(&want);
    rp_buf_free(&cast);
    agent_recorder_free(r);
}

static bool output_fits_again(void *rec)
{
    return agent_rec_output(rec, "again\r\n", 7) == 0;
}

Test(recorder, spool_cap_refuses_output_with_enospc)
{
    sink_set_fail(true);
    struct agent_recorder *r = new_recorder(96 * 1024);
    char sid[37];
    new_sid(sid);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    cr_assert_eq(agent_rec_open(r, &m, &rec), 0);
    char block[4096];
    memset(block, 'x', sizeof block);
    int rv = 0;
    size_t written = 0;
    while (written < (4u << 20) && (rv = agent_rec_output(rec, block, sizeof block)) == 0)
        written += sizeof block;
    cr_assert_eq(rv, RP_ENOSPC, "a full spool answered %d (%s)", rv, rp_errmsg());
    cr_assert_leq(written, 96 * 1024, "%zu bytes accepted by a 96 KiB spool", written);
    /* Small writes fill what is left, to the byte. */
    while ((rv = agent_rec_output(rec, block, 16)) == 0)
        written += 16;
    cr_assert_eq(rv, RP_ENOSPC);
    cr_assert_leq(agent_recorder_spool_bytes(r), 96 * 1024);
    /* A new session is refused too. */
    char sid2[37];
    new_sid(sid2);
    struct agent_rec_meta m2 = meta_of(sid2);
    struct agent_rec *rec2 = NULL;
    cr_assert_eq(agent_rec_open(r, &m2, &rec2), RP_ENOSPC);

    /* Once auth takes the chunks, the spool drains and the session records again; the
     * recording says how much it missed. */
    sink_set_fail(false);
    cr_assert(wait_until(output_fits_again, rec, 10000), "the spool never drained");
    cr_assert_eq(agent_rec_close(rec), 0);
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0);
    struct rp_buf cast;
    sink_assemble(sid, &cast);
    assert_python_reads(&cast);
    cr_assert(contains(&cast, "\"m\", \"raftport: "), "no marker of the bytes not recorded");
    cr_assert(contains(&cast, "were not recorded"));
    rp_buf_free(&cast);
    agent_recorder_free(r);
}

static void put_file(const char *rel, const void *p, size_t n)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s", g_spool, rel);
    cr_assert_eq(rp_write_file(path, p, n, 0600), 0, "%s", rp_errmsg());
}

static size_t count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    cr_assert_not_null(d, "%s", dir);
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

Test(recorder, corrupt_spool_files_are_quarantined_and_the_rest_is_uploaded)
{
    char a[37], b[37], c[37];
    new_sid(a);
    new_sid(b);
    new_sid(c);
    /* A first agent spools three sessions and cannot upload them. */
    sink_set_fail(true);
    struct agent_recorder *r = new_recorder(0);
    struct agent_recorder_tuning small = fast;
    small.chunk_bytes = 2048;
    agent_recorder_tune(r, &small);
    const char *sids[] = {a, b, c};
    for (int i = 0; i < 3; i++) {
        struct agent_rec_meta m = meta_of(sids[i]);
        struct agent_rec *rec;
        cr_assert_eq(agent_rec_open(r, &m, &rec), 0);
        struct rp_buf text;
        rp_buf_init(&text);
        terminal_text(&text, 20000);
        for (size_t off = 0; off < text.len; off += 1000)
            cr_assert_eq(agent_rec_output(rec, text.data + off,
                                          text.len - off < 1000 ? text.len - off : 1000),
                         0);
        rp_buf_free(&text);
        if (i < 2)
            cr_assert_eq(agent_rec_close(rec), 0);
    }
    agent_recorder_free(r); /* session c left open */

    /* The disk then damages some of it. */
    char rel[200];
    snprintf(rel, sizeof rel, "%s/1.zst", a);
    put_file(rel, "\x28\xb5\x2f\xfd garbage", 12); /* zstd magic, then nonsense */
    snprintf(rel, sizeof rel, "%s/2.zst", a);
    put_file(rel, "", 0);
    snprintf(rel, sizeof rel, "%s/stray-file", a);
    put_file(rel, "?", 1);
    snprintf(rel, sizeof rel, "%s/meta", b);
    put_file(rel, "\xde\xad\xbe\xef", 4);
    snprintf(rel, sizeof rel, "%s/999.part", c);
    put_file(rel, "[1.0, \"o\", \"x\0y\"]\n", 18);
    put_file("not-a-session", "x", 1);
    char junk_dir[300];
    snprintf(junk_dir, sizeof junk_dir, "%s/not-a-uuid", g_spool);
    cr_assert_eq(mkdir(junk_dir, 0700), 0);

    sink_set_fail(false);
    r = new_recorder(0);
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0, "%s", rp_errmsg());

    /* a: whole, with stand-ins saying what was lost. */
    bool complete;
    sink_count(a, &complete);
    cr_assert(complete, "session a was not finished");
    struct rp_buf cast;
    sink_assemble(a, &cast);
    assert_python_reads(&cast);
    cr_assert(contains(&cast, "part 1 of this recording was lost"));
    cr_assert(contains(&cast, "part 2 of this recording was lost"));
    rp_buf_free(&cast);
    /* b: its metadata is unreadable, so nothing of it can be sent: quarantined. */
    cr_assert_eq(sink_count(b, NULL), 0);
    /* c: its agent died; its damaged part is set aside, the rest is sent. */
    sink_count(c, &complete);
    cr_assert(complete, "session c was not finished");
    sink_assemble(c, &cast);
    assert_python_reads(&cast);
    rp_buf_free(&cast);

    char qdir[300];
    snprintf(qdir, sizeof qdir, "%s/quarantine", g_spool);
    /* a/1.zst, a/2.zst, a/stray-file, b, c/999.part, not-a-session, not-a-uuid */
    cr_assert_eq(count_entries(qdir), 7, "%zu entries in quarantine", count_entries(qdir));
    cr_assert_eq(count_entries(g_spool), 1, "the spool still holds %zu entries",
                 count_entries(g_spool)); /* quarantine/ */
    agent_recorder_free(r);
}

Test(recorder, flush_returns_at_its_deadline_when_uploads_fail)
{
    sink_set_fail(true);
    struct agent_recorder *r = new_recorder(0);
    char sid[37];
    new_sid(sid);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    cr_assert_eq(agent_rec_open(r, &m, &rec), 0);
    cr_assert_eq(agent_rec_output(rec, "x", 1), 0);
    cr_assert_eq(agent_rec_close(rec), 0);
    uint64_t start = rp_mono_ms();
    cr_assert_eq(agent_recorder_flush(r, start + 500), RP_ETIMEDOUT);
    uint64_t took = rp_mono_ms() - start;
    cr_assert(took >= 500 && took < 5000, "flush took %llu ms for a 500 ms deadline",
              (unsigned long long)took);
    agent_recorder_free(r);
    /* Nothing was lost: the next recorder sends it. */
    sink_set_fail(false);
    r = new_recorder(0);
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0);
    cr_assert(complete_sid(sid));
    agent_recorder_free(r);
}

Test(recorder, a_spool_is_owned_by_one_live_recorder)
{
    struct agent_recorder *r = new_recorder(0), *r2 = NULL;
    cr_assert_eq(agent_recorder_new(&r2, g_spool, 0, sink_upload, &g_sink), RP_EBUSY);
    agent_recorder_free(r);
    cr_assert_eq(agent_recorder_new(&r2, g_spool, 0, sink_upload, &g_sink), 0);
    agent_recorder_free(r2);
}

Test(recorder, input_is_recorded_only_when_the_role_asks)
{
    struct agent_recorder *r = new_recorder(0);
    char s1[37], s2[37];
    new_sid(s1);
    new_sid(s2);
    struct agent_rec_meta m1 = meta_of(s1), m2 = meta_of(s2);
    m2.record_input = true;
    struct agent_rec *r1, *r2;
    cr_assert_eq(agent_rec_open(r, &m1, &r1), 0);
    cr_assert_eq(agent_rec_open(r, &m2, &r2), 0);
    struct agent_rec *again = NULL;
    cr_assert_eq(agent_rec_open(r, &m2, &again), RP_EEXISTS);
    cr_assert_null(again);
    cr_assert_eq(agent_rec_input(r1, "secret-typed", 12), 0);
    cr_assert_eq(agent_rec_input(r2, "typed-text", 10), 0);
    cr_assert_eq(agent_rec_close(r1), 0);
    cr_assert_eq(agent_rec_close(r2), 0);
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0);
    struct rp_buf cast;
    sink_assemble(s1, &cast);
    cr_assert_not(contains(&cast, "secret-typed"));
    rp_buf_free(&cast);
    sink_assemble(s2, &cast);
    cr_assert(contains(&cast, "\"i\", \"typed-text\""));
    rp_buf_free(&cast);
    agent_recorder_free(r);
}

Test(recorder, bad_session_ids_are_refused)
{
    struct agent_recorder *r = new_recorder(0);
    struct agent_rec_meta m = meta_of("../../etc");
    struct agent_rec *rec = NULL;
    cr_assert_eq(agent_rec_open(r, &m, &rec), RP_EINVAL);
    m = meta_of("0A5B7E2C-0000-4000-8000-000000000000");
    cr_assert_eq(agent_rec_open(r, &m, &rec), RP_EINVAL);
    agent_recorder_free(r);
}

Test(recorder, a_close_that_cannot_write_is_finished_from_the_spool)
{
    struct agent_recorder *r = new_recorder(0);
    struct agent_recorder_tuning by_size = fast;
    by_size.chunk_ms = 60000;
    agent_recorder_tune(r, &by_size);
    char sid[37];
    new_sid(sid);
    struct agent_rec_meta m = meta_of(sid);
    struct agent_rec *rec;
    cr_assert_eq(agent_rec_open(r, &m, &rec), 0);
    cr_assert_eq(agent_rec_output(rec, "reached the part\r\n", 18), 0);
    struct part_wait w = {sid, "reached the part"};
    cr_assert(wait_until(part_wait_cond, &w, 5000));
    /* A directory where the chunk's temp file goes: the last chunk cannot be written. */
    char trap[400];
    snprintf(trap, sizeof trap, "%s/%s/0.zst.tmp.w", g_spool, sid);
    cr_assert_eq(mkdir(trap, 0700), 0);
    cr_assert_eq(agent_rec_close(rec), RP_EIO, "%s", rp_errmsg());
    /* The uploader finishes it from what the spool holds, as a restart would. */
    cr_assert_eq(agent_recorder_flush(r, rp_mono_ms() + 10000), 0, "%s", rp_errmsg());
    cr_assert(complete_sid(sid));
    struct rp_buf cast;
    sink_assemble(sid, &cast);
    assert_python_reads(&cast);
    cr_assert(contains(&cast, "reached the part"));
    rp_buf_free(&cast);
    agent_recorder_free(r);
}
