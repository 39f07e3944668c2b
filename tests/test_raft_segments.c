/* tests/test_raft_segments.c: the scan and repair of libraft open segments
 * (raft/segments.c) on synthetic files: intact segments are left alone byte for
 * byte; a file cut anywhere inside its last batch is cut back to the last
 * complete batch and zero-filled to at least 8 MiB; what cannot be a segment of
 * ours (an unknown format) is refused without being touched; closed segments and
 * metadata are never looked at. */
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/errors.h"
#include "raft/rp_raft.h"
#include "tests/lib/raft_helpers.h"

#define SEG_SIZE (8u << 20) /* libraft's preallocated open segment */
#define MAX_BATCHES 16

static char *dir;

static void setup(void)
{
    dir = rt_tmpdir("segments");
}

static void teardown(void)
{
    if (dir != NULL)
        rt_rmtree(dir);
    free(dir);
    dir = NULL;
}

TestSuite(raft_segments, .init = setup, .fini = teardown, .timeout = 60);

/* ---- building segments ------------------------------------------------------ */

/* An open segment being built in memory, with where each batch starts, so that a
 * test can cut it at a known point. */
struct seg {
    unsigned char *buf;
    size_t len; /* bytes written so far (the rest of buf is zeros) */
    size_t cap;
    unsigned n_batches;
    size_t batch_start[MAX_BATCHES + 1];      /* [n_batches] = len */
    unsigned entries_before[MAX_BATCHES + 1]; /* entries in the batches before batch b */
};

static void put64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A segment of format @format in a buffer of @cap bytes. */
static void seg_init_cap(struct seg *s, uint64_t format, size_t cap)
{
    memset(s, 0, sizeof *s);
    s->cap = cap;
    s->buf = calloc(1, s->cap);
    cr_assert_not_null(s->buf);
    put64(s->buf, format);
    s->len = 8;
    s->batch_start[0] = s->len;
}

static void seg_init(struct seg *s, uint64_t format)
{
    seg_init_cap(s, format, SEG_SIZE);
}

static void seg_free(struct seg *s)
{
    free(s->buf);
}

/* Appends a batch of @n entries with data lengths @lens, as libraft lays it out:
 * checksums (not checked by the scan, so arbitrary but non-zero), count, entry
 * headers, then each entry's data padded with zeros to 8 bytes. The data bytes
 * are never zero, so that a zero-filled tail is told apart from kept data. */
static void seg_batch(struct seg *s, unsigned n, const uint32_t *lens)
{
    cr_assert_lt(s->n_batches, MAX_BATCHES);
    size_t need = 16 + 16 * (size_t)n;
    for (unsigned i = 0; i < n; i++)
        need += ((size_t)lens[i] + 7) / 8 * 8;
    cr_assert_leq(s->len + need, s->cap, "test segment too small");
    unsigned char *p = s->buf + s->len;
    put32(p, 0xC0FFEE00u + s->n_batches);
    put32(p + 4, 0xDA7A0000u + s->n_batches);
    put64(p + 8, n);
    p += 16;
    for (unsigned i = 0; i < n; i++, p += 16) {
        put64(p, 3); /* term */
        p[8] = 1;    /* RAFT_COMMAND */
        put32(p + 12, lens[i]);
    }
    for (unsigned i = 0; i < n; i++) {
        memset(p, 0xA0 + (int)((s->entries_before[s->n_batches] + i) % 16), lens[i]);
        p += ((size_t)lens[i] + 7) / 8 * 8;
    }
    s->len += need;
    s->n_batches++;
    s->batch_start[s->n_batches] = s->len;
    s->entries_before[s->n_batches] = s->entries_before[s->n_batches - 1] + n;
}

/* Four batches of 1, 3, 1 and 4 entries, with data lengths that are multiples of
 * 8 (8, 0, 24, 64) and that are not (13, 1, 100, 7, 5: padded on disk). */
static void seg_standard(struct seg *s)
{
    seg_init(s, 1);
    seg_batch(s, 1, (uint32_t[]){8});
    seg_batch(s, 3, (uint32_t[]){13, 1, 0});
    seg_batch(s, 1, (uint32_t[]){100});
    seg_batch(s, 4, (uint32_t[]){7, 24, 5, 64});
}

static void path_of(char *out, size_t len, const char *name)
{
    snprintf(out, len, "%s/%s", dir, name);
}

/* Writes the first @len bytes of @buf as @name. */
static void write_file(const char *name, const void *buf, size_t len)
{
    char path[512];
    path_of(path, sizeof path, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    size_t done = 0;
    while (done < len) {
        ssize_t w = write(fd, (const char *)buf + done, len - done);
        cr_assert_gt(w, 0, "write %s: %s", path, strerror(errno));
        done += (size_t)w;
    }
    close(fd);
}

/* The whole content of @name (size in *len). */
static unsigned char *read_file(const char *name, size_t *len)
{
    char path[512];
    path_of(path, sizeof path, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    unsigned char *buf = malloc((size_t)st.st_size + 1);
    cr_assert_not_null(buf);
    size_t done = 0;
    while (done < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + done, (size_t)st.st_size - done);
        cr_assert_gt(r, 0, "read %s: %s", path, strerror(errno));
        done += (size_t)r;
    }
    close(fd);
    *len = done;
    return buf;
}

static struct rp_segment_scan scan_file(const char *name)
{
    char path[512];
    path_of(path, sizeof path, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0, "%s: %s", path, strerror(errno));
    struct stat st;
    cr_assert_eq(fstat(fd, &st), 0);
    struct rp_segment_scan sc;
    int rv = rp_raft_segment_scan(fd, (uint64_t)st.st_size, &sc);
    close(fd);
    cr_assert_eq(rv, 0, "scan %s: %s", name, rp_errmsg());
    return sc;
}

static void repair(void)
{
    int rv = rp_raft_repair_open_segments(dir);
    cr_assert_eq(rv, 0, "repair: %s (%s)", rp_errmsg(), rp_strerror(rv));
}

static void assert_scan(struct rp_segment_scan sc, bool torn, uint64_t complete_end,
                        uint64_t batches, uint64_t entries)
{
    cr_assert_eq(sc.torn, torn, "torn: %d, expected %d", sc.torn, torn);
    cr_assert_eq(sc.complete_end, complete_end, "complete_end %llu, expected %llu",
                 (unsigned long long)sc.complete_end, (unsigned long long)complete_end);
    cr_assert_eq(sc.batches, batches, "batches %llu, expected %llu", (unsigned long long)sc.batches,
                 (unsigned long long)batches);
    cr_assert_eq(sc.entries, entries, "entries %llu, expected %llu", (unsigned long long)sc.entries,
                 (unsigned long long)entries);
}

/* @name holds exactly the @len bytes of @orig. */
static void assert_unchanged(const char *name, const void *orig, size_t len)
{
    size_t got;
    unsigned char *now = read_file(name, &got);
    cr_assert_eq(got, len, "%s: %zu bytes, was %zu", name, got, len);
    cr_assert(memcmp(now, orig, len) == 0, "%s changed", name);
    free(now);
}

/* What a repaired file must look like: at least 8 MiB (libraft's shape: a
 * preallocated segment), the first @keep bytes of @orig kept, zeros after them
 * (libraft's end marker), and no longer torn, with the same complete batches. */
static void assert_repaired(const char *name, const unsigned char *orig, size_t keep,
                            uint64_t batches, uint64_t entries)
{
    size_t got;
    unsigned char *now = read_file(name, &got);
    cr_assert_geq(got, SEG_SIZE, "%s: %zu bytes after repair", name, got);
    cr_assert(memcmp(now, orig, keep) == 0, "%s: the complete batches changed", name);
    for (size_t i = keep; i < got; i++)
        cr_assert_eq(now[i], 0, "%s: byte %zu of the tail is 0x%02x, not zero", name, i, now[i]);
    free(now);
    struct rp_segment_scan sc = scan_file(name);
    /* An all-zero file (nothing kept) is an unused segment: format 0, end 8. */
    assert_scan(sc, false, keep >= 8 ? keep : 8, batches, entries);
}

/* Writes the standard segment cut to @cut bytes as open-1, checks that the scan
 * finds it torn with the first @complete batches whole, repairs, and checks the
 * result. */
static void cut_and_repair(size_t cut, unsigned complete)
{
    struct seg s;
    seg_standard(&s);
    cr_assert_lt(cut, s.len);
    write_file("open-1", s.buf, cut);
    uint64_t entries = s.entries_before[complete];
    assert_scan(scan_file("open-1"), true, s.batch_start[complete], complete, entries);
    repair();
    assert_repaired("open-1", s.buf, s.batch_start[complete], complete, entries);
    seg_free(&s);
}

/* ---- intact segments ------------------------------------------------------------ */

Test(raft_segments, intact_full_size_segment_is_not_torn_and_repair_leaves_it_byte_for_byte)
{
    struct seg s;
    seg_standard(&s);
    write_file("open-1", s.buf, SEG_SIZE);
    assert_scan(scan_file("open-1"), false, s.len, 4, 9);
    repair();
    assert_unchanged("open-1", s.buf, SEG_SIZE);
    seg_free(&s);
}

Test(raft_segments, all_zero_unused_segment_is_not_torn_and_left_alone)
{
    /* libraft preallocates the next segment before writing to it: all zeros. */
    unsigned char *zeros = calloc(1, SEG_SIZE);
    cr_assert_not_null(zeros);
    write_file("open-2", zeros, SEG_SIZE);
    assert_scan(scan_file("open-2"), false, 8, 0, 0);
    repair();
    assert_unchanged("open-2", zeros, SEG_SIZE);
    free(zeros);
}

Test(raft_segments, short_segment_ending_in_zeros_after_its_last_batch_is_not_torn)
{
    /* The zeros after the last batch mark the end, whatever the file length. */
    struct seg s;
    seg_standard(&s);
    size_t len = s.len + 64;
    write_file("open-1", s.buf, len);
    assert_scan(scan_file("open-1"), false, s.len, 4, 9);
    repair();
    assert_unchanged("open-1", s.buf, len);
    seg_free(&s);
}

/* ---- torn segments ---------------------------------------------------------------- */

Test(raft_segments, cut_in_the_data_of_the_last_batch)
{
    struct seg s;
    seg_standard(&s);
    /* Inside the 100-byte entry's data... */
    size_t b2 = s.batch_start[2];
    cut_and_repair(b2 + 16 + 16 + 50, 2);
    /* ...inside the padding of the last entry of the last batch (64 is not padded;
     * 5 is: 3 bytes of padding follow it)... */
    size_t b3 = s.batch_start[3], data3 = b3 + 16 + 4 * 16;
    cut_and_repair(data3 + 8 + 24 + 6, 3);
    /* ...and one byte short of its end. */
    cut_and_repair(s.len - 1, 3);
    seg_free(&s);
}

Test(raft_segments, cut_in_the_entry_headers_of_the_last_batch)
{
    struct seg s;
    seg_standard(&s);
    size_t b3 = s.batch_start[3];
    cut_and_repair(b3 + 16 + 5, 3);      /* inside the first entry header */
    cut_and_repair(b3 + 16 + 2 * 16, 3); /* between two entry headers */
    cut_and_repair(b3 + 16 + 4 * 16, 3); /* after the headers, before any data */
    seg_free(&s);
}

Test(raft_segments, cut_in_the_16_byte_batch_header)
{
    struct seg s;
    seg_standard(&s);
    size_t b3 = s.batch_start[3];
    cut_and_repair(b3 + 4, 3);               /* inside the checksums */
    cut_and_repair(b3 + 8, 3);               /* after the checksums */
    cut_and_repair(b3 + 13, 3);              /* inside the entry count */
    cut_and_repair(s.batch_start[0] + 9, 0); /* in the first batch: nothing kept */
    seg_free(&s);
}

Test(raft_segments, cut_exactly_at_a_batch_boundary_with_no_zeros_after)
{
    /* The batches are whole, but the zeros that end them are missing: libraft
     * would read past the end for the next batch header. Nothing is lost. */
    struct seg s;
    seg_standard(&s);
    write_file("open-1", s.buf, s.len);
    assert_scan(scan_file("open-1"), true, s.len, 4, 9);
    repair();
    assert_repaired("open-1", s.buf, s.len, 4, 9);
    /* Cut after the format header alone: no batch at all. */
    write_file("open-1", s.buf, 8);
    assert_scan(scan_file("open-1"), true, 8, 0, 0);
    repair();
    assert_repaired("open-1", s.buf, 8, 0, 0);
    seg_free(&s);
}

Test(raft_segments, file_shorter_than_the_format_header)
{
    struct seg s;
    seg_standard(&s);
    write_file("open-1", s.buf, 5);
    assert_scan(scan_file("open-1"), true, 0, 0, 0);
    repair();
    /* Nothing kept: an all-zero file, which libraft treats as unused. */
    assert_repaired("open-1", s.buf, 0, 0, 0);
    seg_free(&s);
}

Test(raft_segments, empty_file)
{
    write_file("open-1", "", 0);
    assert_scan(scan_file("open-1"), true, 0, 0, 0);
    repair();
    assert_repaired("open-1", (const unsigned char *)"", 0, 0, 0);
}

Test(raft_segments, garbage_entry_count_is_cut_off)
{
    /* A count no batch can have, in a full-size file: what follows the last good
     * batch is garbage, not a batch. */
    struct seg s;
    seg_init(&s, 1);
    seg_batch(&s, 2, (uint32_t[]){16, 3});
    seg_batch(&s, 1, (uint32_t[]){40});
    size_t good = s.len;
    memset(s.buf + good, 0x5A, 4096);
    put64(s.buf + good + 8, 0x7FFFFFFFFFFFull);
    write_file("open-1", s.buf, SEG_SIZE);
    assert_scan(scan_file("open-1"), true, good, 2, 3);
    repair();
    assert_repaired("open-1", s.buf, good, 2, 3);
    seg_free(&s);
}

Test(raft_segments, garbage_entry_lengths_running_past_the_end_are_cut_off)
{
    /* A plausible count whose entry lengths announce more data than the file has. */
    struct seg s;
    seg_init(&s, 1);
    seg_batch(&s, 1, (uint32_t[]){24});
    size_t good = s.len;
    unsigned char *p = s.buf + good;
    memset(p, 0x5A, 16 + 3 * 16);
    put64(p + 8, 3);
    for (int i = 0; i < 3; i++)
        put32(p + 16 + 16 * i + 12, 0xFFFFFFF0u);
    write_file("open-1", s.buf, SEG_SIZE);
    assert_scan(scan_file("open-1"), true, good, 1, 1);
    repair();
    assert_repaired("open-1", s.buf, good, 1, 1);
    seg_free(&s);
}

Test(raft_segments, torn_file_longer_than_8_MiB_keeps_its_length)
{
    /* libraft writes a batch larger than a segment into a larger file: the repair
     * zero-fills to the file's own length, never shrinks it. */
    struct seg s;
    seg_init_cap(&s, 1, SEG_SIZE + (2u << 20));
    seg_batch(&s, 1, (uint32_t[]){64});
    seg_batch(&s, 1, (uint32_t[]){SEG_SIZE + (1u << 20)});
    size_t cut = SEG_SIZE + (1u << 19);
    write_file("open-1", s.buf, cut);
    assert_scan(scan_file("open-1"), true, s.batch_start[1], 1, 1);
    repair();
    size_t got;
    free(read_file("open-1", &got));
    cr_assert_eq(got, cut, "length %zu after repair, was %zu", got, cut);
    assert_repaired("open-1", s.buf, s.batch_start[1], 1, 1);
    seg_free(&s);
}

/* ---- refusals and the directory --------------------------------------------------- */

Test(raft_segments, unknown_format_fails_naming_the_file_and_is_not_touched)
{
    struct seg s;
    seg_init(&s, 7);
    seg_batch(&s, 1, (uint32_t[]){8});
    size_t len = s.len + 3; /* torn, were it ours */
    write_file("open-3", s.buf, len);

    char path[512];
    path_of(path, sizeof path, "open-3");
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    cr_assert_geq(fd, 0);
    struct rp_segment_scan sc;
    cr_assert_eq(rp_raft_segment_scan(fd, len, &sc), RP_EINVAL);
    close(fd);

    rp_err_clear();
    int rv = rp_raft_repair_open_segments(dir);
    cr_assert_neq(rv, 0, "repair accepted a segment of format 7");
    cr_assert_not_null(strstr(rp_errmsg(), path), "error does not name the file: \"%s\"",
                       rp_errmsg());
    cr_assert_not_null(strstr(rp_errmsg(), "format 7"), "error does not say why: \"%s\"",
                       rp_errmsg());
    assert_unchanged("open-3", s.buf, len);
    seg_free(&s);
}

Test(raft_segments, missing_directory_is_not_an_error)
{
    /* A data dir where Raft never ran has no segments to repair. */
    char path[512];
    path_of(path, sizeof path, "no-such-dir");
    cr_assert_eq(rp_raft_repair_open_segments(path), 0, "%s", rp_errmsg());
}

Test(raft_segments, closed_segments_and_metadata_are_never_touched)
{
    /* Closed segments are exactly as long as their batches (no zeros after them),
     * and metadata files are not segments: to the scan both look torn. Neither
     * may be cut or extended; only the torn open segment next to them is. */
    struct seg s;
    seg_standard(&s);
    const char *closed = "0000000000000001-0000000000000019";
    write_file(closed, s.buf, s.len);
    write_file("0000000000000020-0000000000000021", s.buf, s.batch_start[2] + 5);
    unsigned char meta[32];
    memset(meta, 0, sizeof meta);
    put64(meta, 1);
    put64(meta + 8, 4);
    put64(meta + 16, 3);
    write_file("metadata1", meta, sizeof meta);
    write_file("metadata2", meta, 12);
    write_file("snapshot-1-19-1700000000", s.buf, 21);
    size_t cut = s.batch_start[3] + 20;
    write_file("open-4", s.buf, cut);

    repair();
    assert_unchanged(closed, s.buf, s.len);
    assert_unchanged("0000000000000020-0000000000000021", s.buf, s.batch_start[2] + 5);
    assert_unchanged("metadata1", meta, sizeof meta);
    assert_unchanged("metadata2", meta, 12);
    assert_unchanged("snapshot-1-19-1700000000", s.buf, 21);
    assert_repaired("open-4", s.buf, s.batch_start[3], 3, 5);
    seg_free(&s);
}

Test(raft_segments, every_torn_open_segment_of_the_dir_is_repaired_and_intact_ones_kept)
{
    /* libraft keeps several open segments (the one being written and the next,
     * preallocated): each is checked on its own. */
    struct seg s;
    seg_standard(&s);
    write_file("open-1", s.buf, SEG_SIZE);
    write_file("open-2", s.buf, s.batch_start[1] + 30);
    write_file("open-3", s.buf, s.batch_start[3] + 3);
    unsigned char *zeros = calloc(1, SEG_SIZE);
    cr_assert_not_null(zeros);
    write_file("open-4", zeros, SEG_SIZE);

    repair();
    assert_unchanged("open-1", s.buf, SEG_SIZE);
    assert_repaired("open-2", s.buf, s.batch_start[1], 1, 1);
    assert_repaired("open-3", s.buf, s.batch_start[3], 3, 5);
    assert_unchanged("open-4", zeros, SEG_SIZE);
    /* A second repair finds nothing left to do. */
    repair();
    assert_repaired("open-2", s.buf, s.batch_start[1], 1, 1);
    assert_repaired("open-3", s.buf, s.batch_start[3], 3, 5);
    free(zeros);
    seg_free(&s);
}

Test(raft_segments, repair_logs_what_it_dropped)
{
    /* The integration tests and operators look for this line in the daemon's log. */
    struct seg s;
    seg_standard(&s);
    write_file("open-7", s.buf, s.batch_start[3] + 40);
    char logpath[512];
    path_of(logpath, sizeof logpath, "stderr.log");
    int saved = dup(STDERR_FILENO);
    int lfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(saved >= 0 && lfd >= 0);
    fflush(stderr);
    dup2(lfd, STDERR_FILENO);
    int rv = rp_raft_repair_open_segments(dir);
    fflush(stderr);
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(lfd);
    cr_assert_eq(rv, 0, "%s", rp_errmsg());

    size_t len;
    char *log = (char *)read_file("stderr.log", &len);
    log[len] = '\0';
    cr_assert_not_null(strstr(log, "open-7 ended inside an entry batch"), "log: %s", log);
    char expect[128];
    snprintf(expect, sizeof expect, "last complete batch ends at %zu", s.batch_start[3]);
    cr_assert_not_null(strstr(log, expect), "log: %s", log);
    cr_assert_not_null(strstr(log, "5 complete entries kept"), "log: %s", log);
    free(log);
    seg_free(&s);
}
