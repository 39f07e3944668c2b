/* agent/recorder.c: recorded sessions, from the session's bytes to chunk files.
 *
 * The session's thread does the work of its own session (escaping, compressing,
 * writing the chunk file), so a session that prints fast is slowed by its own
 * recording and no queue between threads has to be bounded. The flusher thread only
 * writes out what idle sessions left in memory (part files every flush_ms, chunks
 * every chunk_ms); the uploader (agent/spool.c) sends what is in the spool. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "agent/spool.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/util.h"

/* A chunk never grows past this even when the spool cannot be written: its zstd
 * frame then still fits AGENT_REC_MAX_COMPRESSED whatever the bytes (zstd's bound
 * for incompressible input is the size plus 1/256). */
#define CHUNK_HARD_MAX (1000u * 1024)

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

static int errno_code(int e)
{
    return e == ENOSPC || e == EDQUOT ? RP_ENOSPC : RP_EIO;
}

/* ---- spool byte accounting ----------------------------------------------------- */

/* Reserves @n bytes of the cap, or RP_ENOSPC. */
static int spool_reserve(struct agent_recorder *r, uint64_t n)
{
    int rv = 0;
    pthread_mutex_lock(&r->mu);
    if (r->max_bytes != 0 && r->spool_bytes + n > r->max_bytes)
        rv = rp_err(RP_ENOSPC, "spool %s is at its cap: %llu of %llu bytes used, %llu more asked",
                    r->dir, (unsigned long long)r->spool_bytes, (unsigned long long)r->max_bytes,
                    (unsigned long long)n);
    else
        r->spool_bytes += n;
    pthread_mutex_unlock(&r->mu);
    return rv;
}

static void spool_release(struct agent_recorder *r, uint64_t n)
{
    pthread_mutex_lock(&r->mu);
    r->spool_bytes = r->spool_bytes >= n ? r->spool_bytes - n : 0;
    pthread_mutex_unlock(&r->mu);
}

/* ---- writing a session's chunk ------------------------------------------------ */

/* Appends the lines not yet in the part file to it. rec->mu held. */
static int rec_write_part(struct agent_rec *rec)
{
    struct agent_recorder *r = rec->r;
    char path[PATH_MAX];

    if (rec->part_written == rec->chunk.len)
        return 0;
    if (rec->part_fd < 0) {
        int rv = spool_chunk_path(path, sizeof path, r, rec->sid, rec->seq, "part");
        if (rv != 0)
            return rv;
        rec->part_fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0600);
        if (rec->part_fd < 0)
            return rp_err(errno_code(errno), "create %s: %s", path, strerror(errno));
    }
    while (rec->part_written < rec->chunk.len) {
        ssize_t w = write(rec->part_fd, rec->chunk.data + rec->part_written,
                          rec->chunk.len - rec->part_written);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return rp_err(errno_code(errno), "session %s: write part of chunk %llu: %s", rec->sid,
                          (unsigned long long)rec->seq, strerror(errno));
        }
        rec->part_written += (size_t)w;
    }
    rec->unflushed_since_ms = 0;
    return 0;
}

/* Writes @n bytes at @p to @path through a temp file and a rename, so that the name
 * only ever holds a whole chunk (a dead writer leaves a temp file, which the next
 * recorder deletes, and the part file, which it uses). Not synced: fsync of each chunk
 * on the session's thread would cap what a session can print at a few hundred chunks
 * a second on a loaded disk; rec_sync_chunks does it off that path within a tick. */
static int write_unsynced(const char *path, const void *p, size_t n)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp.w", path) >= (int)sizeof tmp)
        return rp_err(RP_EINVAL, "path too long: %s", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return rp_err(errno_code(errno), "create %s: %s", tmp, strerror(errno));
    const uint8_t *c = p;
    while (n > 0) {
        ssize_t w = write(fd, c, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            int e = errno;
            close(fd);
            unlink(tmp);
            return rp_err(errno_code(e), "write %s: %s", tmp, strerror(e));
        }
        c += w;
        n -= (size_t)w;
    }
    if (close(fd) != 0 || rename(tmp, path) != 0) {
        int e = errno;
        unlink(tmp);
        return rp_err(errno_code(e), "write %s: %s", path, strerror(e));
    }
    return 0;
}

/* Syncs the chunk files of @rec written since the last call, and its directory (for
 * the renames). Called without rec->mu (fsync takes milliseconds), by the one thread
 * that may (the flusher while it holds recs_mu, or the session's owner at close). */
static void rec_sync_chunks(struct agent_rec *rec)
{
    char path[PATH_MAX];
    pthread_mutex_lock(&rec->mu);
    uint64_t from = rec->synced_to, to = rec->seq;
    pthread_mutex_unlock(&rec->mu);
    if (from >= to)
        return;
    for (uint64_t seq = from; seq < to; seq++) {
        if (spool_chunk_path(path, sizeof path, rec->r, rec->sid, seq, "zst") != 0)
            continue;
        /* Already sent and deleted: nothing to keep. */
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            continue;
        if (fsync(fd) != 0)
            rp_warn("recorder", "fsync %s: %s", path, strerror(errno));
        close(fd);
    }
    if (spool_path(path, sizeof path, rec->r, rec->sid, NULL) == 0) {
        int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (fd >= 0) {
            fsync(fd);
            close(fd);
        }
    }
    pthread_mutex_lock(&rec->mu);
    if (rec->synced_to < to)
        rec->synced_to = to;
    pthread_mutex_unlock(&rec->mu);
}

/* Compresses the chunk being filled into <seq>.zst, removes its part file and hands
 * the chunk to the uploader. rec->mu held. On error the lines stay in memory and the
 * next attempt retries. */
static int rec_cut(struct agent_rec *rec)
{
    struct agent_recorder *r = rec->r;
    struct rp_buf z;
    char path[PATH_MAX];
    int rv;

    if (rec->chunk.len == 0)
        return 0;
    rp_buf_init(&z);
    rv = spool_compress(r, &rec->chunk, &z);
    if (rv != 0)
        goto out;
    rv = spool_chunk_path(path, sizeof path, r, rec->sid, rec->seq, "zst");
    if (rv != 0)
        goto out;
    /* The cap was reserved for the lines; the compressed file is smaller, but the two
     * exist side by side for a moment, which the cap does not need to count. */
    rv = write_unsynced(path, z.data, z.len);
    if (rv != 0) {
        rv = rp_err(rv, "session %s: %s", rec->sid, rp_errmsg());
        goto out;
    }
    if (rec->part_fd >= 0) {
        close(rec->part_fd);
        rec->part_fd = -1;
    }
    if (spool_chunk_path(path, sizeof path, r, rec->sid, rec->seq, "part") == 0)
        unlink(path);

    pthread_mutex_lock(&r->mu);
    r->spool_bytes += z.len;
    r->spool_bytes = r->spool_bytes >= rec->chunk.len ? r->spool_bytes - rec->chunk.len : 0;
    rec->ss->next_seq = rec->seq + 1;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->mu);

    rec->seq++;
    /* A chunk cut by size comes from a session printing fast: keep its buffer for the
     * next. One cut by time comes from a quiet session: give the memory back, so that
     * a hundred idle sessions do not each hold a chunk's worth. */
    if (rec->chunk.len >= r->tune.chunk_bytes)
        rp_buf_reset(&rec->chunk);
    else
        rp_buf_free(&rec->chunk);
    rec->part_written = 0;
    rec->unflushed_since_ms = 0;
    rec->chunk_started_ms = 0;
out:
    rp_buf_free(&z);
    return rv;
}

/* What is due after lines were added or time passed. rec->mu held. */
static int rec_maintain(struct agent_rec *rec, uint64_t now_ms)
{
    const struct agent_recorder_tuning *t = &rec->r->tune;
    if (rec->chunk.len >= t->chunk_bytes ||
        (rec->chunk.len > 0 && now_ms - rec->chunk_started_ms >= t->chunk_ms))
        return rec_cut(rec);
    if (rec->unflushed_since_ms != 0 && now_ms - rec->unflushed_since_ms >= t->flush_ms)
        return rec_write_part(rec);
    return 0;
}

static void rec_lines_added(struct agent_rec *rec, size_t before, uint64_t now_ms)
{
    if (before == 0)
        rec->chunk_started_ms = now_ms;
    if (rec->unflushed_since_ms == 0 && rec->chunk.len > rec->part_written)
        rec->unflushed_since_ms = now_ms;
}

static uint64_t rec_time_us(struct agent_rec *rec)
{
    uint64_t t = mono_us() - rec->mono_start_us;
    /* Lines of one session never go back in time, whichever thread wrote them. */
    if (t < rec->last_t_us)
        t = rec->last_t_us;
    rec->last_t_us = t;
    return t;
}

/* Counts the @before.. tail of the chunk against the cap, or takes it back out (and
 * restores @carry to @saved) when the spool has no room for it. rec->mu held. */
static int rec_commit(struct agent_rec *rec, size_t before, struct agent_cast_utf8 *carry,
                      const struct agent_cast_utf8 *saved)
{
    int rv = spool_reserve(rec->r, rec->chunk.len - before);
    if (rv != 0) {
        rec->chunk.len = before;
        if (carry != NULL)
            *carry = *saved;
    }
    return rv;
}

/* Notes in the recording how many bytes were refused since the last line that went
 * in, so that a gap is visible to whoever plays it. rec->mu held. */
static int rec_add_marker_if_dropped(struct agent_rec *rec, uint64_t t_us)
{
    char text[160];
    if (rec->dropped_bytes == 0)
        return 0;
    int n = snprintf(text, sizeof text,
                     "raftport: %llu bytes of this session were not recorded (spool full or "
                     "not writable)",
                     (unsigned long long)rec->dropped_bytes);
    size_t before = rec->chunk.len;
    int rv = agent_cast_event(&rec->chunk, t_us, AGENT_CAST_MARKER, NULL, text, (size_t)n);
    if (rv == 0)
        rv = rec_commit(rec, before, NULL, NULL);
    if (rv == 0)
        rec->dropped_bytes = 0;
    return rv;
}

static int rec_record(struct agent_rec *rec, char code, struct agent_cast_utf8 *carry,
                      const uint8_t *p, size_t n)
{
    int rv = 0;
    pthread_mutex_lock(&rec->mu);
    uint64_t now = rp_mono_ms();
    uint64_t t_us = rec_time_us(rec);
    while (n > 0) {
        size_t piece = n < AGENT_CAST_MAX_EVENT_DATA ? n : AGENT_CAST_MAX_EVENT_DATA;
        if (rec->chunk.len + agent_cast_event_max_line(piece) > CHUNK_HARD_MAX) {
            /* The spool failed to take the last cuts: keep what is held, refuse more. */
            rv = rec_cut(rec);
            if (rv != 0)
                break;
        }
        size_t before = rec->chunk.len;
        rv = rec_add_marker_if_dropped(rec, t_us);
        if (rv != 0)
            break;
        size_t line_at = rec->chunk.len;
        struct agent_cast_utf8 saved = *carry;
        rv = agent_cast_event(&rec->chunk, t_us, code, carry, p, piece);
        if (rv == 0)
            rv = rec_commit(rec, line_at, carry, &saved);
        if (rv != 0)
            break;
        rec_lines_added(rec, before, now);
        p += piece;
        n -= piece;
        rv = rec_maintain(rec, now);
        if (rv != 0) {
            /* These lines are held in memory and written by a later attempt. */
            break;
        }
    }
    if (rv != 0)
        rec->dropped_bytes += n;
    pthread_mutex_unlock(&rec->mu);
    return rv;
}

int agent_rec_output(struct agent_rec *rec, const void *p, size_t n)
{
    return rec_record(rec, AGENT_CAST_OUTPUT, &rec->out_carry, p, n);
}

int agent_rec_input(struct agent_rec *rec, const void *p, size_t n)
{
    if (!rec->record_input)
        return 0;
    return rec_record(rec, AGENT_CAST_INPUT, &rec->in_carry, p, n);
}

int agent_rec_resize(struct agent_rec *rec, unsigned cols, unsigned rows)
{
    pthread_mutex_lock(&rec->mu);
    uint64_t now = rp_mono_ms();
    size_t before = rec->chunk.len;
    int rv = agent_cast_resize(&rec->chunk, rec_time_us(rec), cols, rows);
    if (rv == 0)
        rv = rec_commit(rec, before, NULL, NULL);
    if (rv == 0) {
        rec_lines_added(rec, before, now);
        rv = rec_maintain(rec, now);
    }
    pthread_mutex_unlock(&rec->mu);
    return rv;
}

/* ---- opening and closing sessions ---------------------------------------------- */

static void rec_free(struct agent_rec *rec)
{
    if (rec->part_fd >= 0)
        close(rec->part_fd);
    rp_buf_free(&rec->chunk);
    pthread_mutex_destroy(&rec->mu);
    free(rec);
}

static char *title_of(const struct agent_rec_meta *m)
{
    char *t = NULL;
    if (asprintf(&t, "%s@%s", m->login, m->hostname) < 0)
        return NULL;
    return t;
}

/* Undoes the files agent_rec_open made for @sid (keeping the error message). */
static void remove_new_session(struct agent_recorder *r, const char *sid)
{
    char path[PATH_MAX];
    if (spool_chunk_path(path, sizeof path, r, sid, 0, "part") == 0)
        unlink(path);
    if (spool_path(path, sizeof path, r, sid, "meta") == 0)
        unlink(path);
    if (spool_path(path, sizeof path, r, sid, NULL) == 0)
        rmdir(path);
}

int agent_rec_open(struct agent_recorder *r, const struct agent_rec_meta *meta,
                   struct agent_rec **out)
{
    char path[PATH_MAX];
    struct rp_buf mb;
    int rv;

    *out = NULL;
    if (meta->sid == NULL || !spool_sid_valid(meta->sid))
        return rp_err(RP_EINVAL, "recording: session id \"%s\" is not a lower-case UUID",
                      meta->sid != NULL ? meta->sid : "");
    if (meta->user == NULL || meta->login == NULL || meta->hostname == NULL ||
        meta->server_id == NULL)
        return rp_err(RP_EINVAL, "recording %s: user, login, hostname and server_id are needed",
                      meta->sid);

    rp_buf_init(&mb);
    rv = agent_spool_meta_encode(&mb, meta);
    if (rv != 0)
        goto err;
    /* Checked through the same parser a restarted agent reads it with, so that what
     * cannot be read back is refused now rather than quarantined later. */
    struct agent_spool_meta check;
    rv = agent_spool_meta_parse(mb.data, mb.len, &check);
    if (rv != 0)
        goto err;
    agent_spool_meta_free(&check);

    struct agent_rec *rec = calloc(1, sizeof *rec);
    struct spool_sess *ss = calloc(1, sizeof *ss);
    if (rec == NULL || ss == NULL) {
        free(rec);
        free(ss);
        rv = rp_err(RP_ENOMEM, "recording %s: out of memory", meta->sid);
        goto err;
    }
    pthread_mutex_init(&rec->mu, NULL);
    rec->r = r;
    rec->ss = ss;
    rec->part_fd = -1;
    rp_buf_init(&rec->chunk);
    snprintf(rec->sid, sizeof rec->sid, "%s", meta->sid);
    snprintf(ss->sid, sizeof ss->sid, "%s", meta->sid);
    ss->live = true;
    rec->record_input = meta->record_input;
    rec->mono_start_us = mono_us();

    char *title = title_of(meta);
    struct agent_cast_header h = {
        .width = meta->cols,
        .height = meta->rows,
        .timestamp_s = meta->start_ms / 1000,
        .term = meta->term,
        .shell = meta->shell,
        .title = title,
        .command = meta->command,
    };
    rv = agent_cast_header(&rec->chunk, &h);
    free(title);
    if (rv != 0)
        goto err_rec;

    rv = spool_reserve(r, mb.len + rec->chunk.len);
    if (rv != 0)
        goto err_rec;

    pthread_mutex_lock(&r->mu);
    for (struct spool_sess *s = r->sessions; s != NULL; s = s->next) {
        if (strcmp(s->sid, meta->sid) == 0) {
            pthread_mutex_unlock(&r->mu);
            rv =
                rp_err(RP_EEXISTS, "recording %s: the spool holds this session already", meta->sid);
            goto err_reserved;
        }
    }
    pthread_mutex_unlock(&r->mu);

    rv = spool_path(path, sizeof path, r, meta->sid, NULL);
    if (rv != 0)
        goto err_reserved;
    if (mkdir(path, 0700) != 0) {
        rv = errno == EEXIST
                 ? rp_err(RP_EEXISTS, "recording %s: %s exists already", meta->sid, path)
                 : rp_err(errno_code(errno), "recording %s: mkdir %s: %s", meta->sid, path,
                          strerror(errno));
        goto err_reserved;
    }
    rv = spool_path(path, sizeof path, r, meta->sid, "meta");
    if (rv == 0)
        rv = rp_write_file(path, mb.data, mb.len, 0600);
    if (rv != 0)
        goto err_dir;
    /* The header goes to disk at once: a session killed in its first second is still
     * found, with its terminal size, by the next recorder. */
    rec->chunk_started_ms = rp_mono_ms();
    rv = rec_write_part(rec);
    if (rv != 0)
        goto err_dir;

    pthread_mutex_lock(&r->recs_mu);
    pthread_mutex_lock(&r->mu);
    ss->next = r->sessions;
    r->sessions = ss;
    pthread_mutex_unlock(&r->mu);
    rec->next = r->recs;
    r->recs = rec;
    pthread_mutex_unlock(&r->recs_mu);
    rp_buf_free(&mb);
    *out = rec;
    return 0;

err_dir:
    remove_new_session(r, meta->sid);
err_reserved:
    spool_release(r, mb.len + rec->chunk.len);
err_rec:
    free(ss);
    rec_free(rec);
err:
    rp_buf_free(&mb);
    return rv;
}

int agent_rec_close(struct agent_rec *rec)
{
    if (rec == NULL)
        return 0;
    struct agent_recorder *r = rec->r;
    char path[PATH_MAX];
    int rv;

    pthread_mutex_lock(&r->recs_mu);
    for (struct agent_rec **pp = &r->recs; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == rec) {
            *pp = rec->next;
            break;
        }
    }
    pthread_mutex_unlock(&r->recs_mu);

    pthread_mutex_lock(&rec->mu);
    uint64_t t_us = rec_time_us(rec);
    /* A sequence the program left unfinished is shown as U+FFFD. */
    rv = agent_cast_event_flush(&rec->chunk, t_us, AGENT_CAST_OUTPUT, &rec->out_carry);
    if (rv == 0)
        rv = agent_cast_event_flush(&rec->chunk, t_us, AGENT_CAST_INPUT, &rec->in_carry);
    if (rv == 0)
        rv = rec_add_marker_if_dropped(rec, t_us);
    if (rv == 0)
        rv = rec_cut(rec);
    pthread_mutex_unlock(&rec->mu);
    rec_sync_chunks(rec);
    pthread_mutex_lock(&rec->mu);
    if (rv == 0)
        rv = spool_path(path, sizeof path, r, rec->sid, "end");
    if (rv == 0)
        rv = rp_write_file(path, "end\n", 4, 0600);
    size_t unwritten = rec->chunk.len;
    pthread_mutex_unlock(&rec->mu);

    pthread_mutex_lock(&r->mu);
    rec->ss->live = false;
    if (rv == 0) {
        rec->ss->ended = true;
        r->spool_bytes += 4;
    } else {
        /* The part file holds what reached it; the uploader finishes the session
         * from the files as a restarted agent would. */
        r->spool_bytes = r->spool_bytes >= unwritten ? r->spool_bytes - unwritten : 0;
        rp_warn("recorder",
                "session %s: closing its recording failed (%s); it ends at what the "
                "spool holds",
                rec->sid, rp_errmsg());
    }
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->mu);
    rec_free(rec);
    return rv;
}

/* ---- the recorder ------------------------------------------------------------- */

static void tuning_defaults(struct agent_recorder_tuning *t)
{
    if (t->chunk_bytes == 0)
        t->chunk_bytes = AGENT_REC_CHUNK_BYTES;
    if (t->chunk_bytes > CHUNK_HARD_MAX / 2)
        t->chunk_bytes = CHUNK_HARD_MAX / 2;
    if (t->chunk_ms == 0)
        t->chunk_ms = AGENT_REC_CHUNK_MS;
    if (t->flush_ms == 0)
        t->flush_ms = AGENT_REC_FLUSH_MS;
    if (t->backoff_min_ms == 0)
        t->backoff_min_ms = 500;
    if (t->backoff_max_ms == 0)
        t->backoff_max_ms = 30000;
    if (t->backoff_max_ms < t->backoff_min_ms)
        t->backoff_max_ms = t->backoff_min_ms;
    if (t->zstd_level == 0)
        t->zstd_level = AGENT_REC_ZSTD_LEVEL;
}

void agent_recorder_tune(struct agent_recorder *r, const struct agent_recorder_tuning *t)
{
    pthread_mutex_lock(&r->mu);
    r->tune = *t;
    tuning_defaults(&r->tune);
    r->backoff_ms = r->tune.backoff_min_ms;
    pthread_cond_broadcast(&r->wake);
    pthread_mutex_unlock(&r->mu);
}

/* Writes out what idle sessions hold: part files every flush_ms, chunks every
 * chunk_ms. A failure is retried at the next tick and reported to the session's
 * next write. */
static void *flusher_main(void *arg)
{
    struct agent_recorder *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        uint32_t tick = r->tune.flush_ms / 4;
        if (tick < 20)
            tick = 20;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        ts.tv_sec += tick / 1000;
        ts.tv_nsec += (long)(tick % 1000) * 1000000;
        if (ts.tv_nsec >= 1000000000) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000;
        }
        pthread_cond_timedwait(&r->wake, &r->mu, &ts);
        if (r->stop)
            break;
        pthread_mutex_unlock(&r->mu);

        pthread_mutex_lock(&r->recs_mu);
        for (struct agent_rec *rec = r->recs; rec != NULL; rec = rec->next) {
            pthread_mutex_lock(&rec->mu);
            uint64_t now = rp_mono_ms();
            if (rec_maintain(rec, now) != 0 && now - rec->warned_ms >= 10000) {
                /* Retried every tick; said once per 10 s. */
                rp_warn("recorder", "session %s: %s (retrying)", rec->sid, rp_errmsg());
                rec->warned_ms = now;
            }
            pthread_mutex_unlock(&rec->mu);
            rec_sync_chunks(rec);
        }
        pthread_mutex_unlock(&r->recs_mu);
        pthread_mutex_lock(&r->mu);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

/* The spool lock. A POSIX record lock, because it is not inherited by fork(): a
 * session's child process that outlives a killed agent must not keep the restarted
 * agent out of its spool. POSIX locks do not exclude their own process, so the spools
 * this process holds are listed here too; and since closing any descriptor of the
 * file drops the lock, a second recorder of this process is refused before it opens
 * the file. */
struct held_spool {
    dev_t dev;
    ino_t ino;
    struct held_spool *next;
};
static pthread_mutex_t g_held_mu = PTHREAD_MUTEX_INITIALIZER;
static struct held_spool *g_held;

static bool held_here(dev_t dev, ino_t ino)
{
    for (struct held_spool *h = g_held; h != NULL; h = h->next)
        if (h->dev == dev && h->ino == ino)
            return true;
    return false;
}

static int spool_lock(struct agent_recorder *r)
{
    char path[PATH_MAX];
    struct stat st;
    int rv = 0;
    snprintf(path, sizeof path, "%s/.lock", r->dir);
    pthread_mutex_lock(&g_held_mu);
    if (stat(path, &st) == 0 && held_here(st.st_dev, st.st_ino)) {
        rv = rp_err(RP_EBUSY, "recorder: spool %s is in use by this process", r->dir);
        goto out;
    }
    r->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (r->lock_fd < 0 || fstat(r->lock_fd, &st) != 0) {
        rv = rp_err(RP_EIO, "recorder: open %s: %s", path, strerror(errno));
        goto out;
    }
    /* The lock dies with its process, so a spool whose lock is free has no writer:
     * every session in it that has no end marker was cut short by a dead agent. */
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
    if (fcntl(r->lock_fd, F_SETLK, &fl) != 0) {
        rv = errno == EACCES || errno == EAGAIN
                 ? rp_err(RP_EBUSY, "recorder: spool %s is in use by another process", r->dir)
                 : rp_err(RP_EIO, "recorder: lock %s: %s", path, strerror(errno));
        goto out;
    }
    struct held_spool *h = malloc(sizeof *h);
    if (h == NULL) {
        rv = rp_err(RP_ENOMEM, "recorder: out of memory");
        goto out;
    }
    h->dev = st.st_dev;
    h->ino = st.st_ino;
    h->next = g_held;
    g_held = h;
    r->lock_dev = st.st_dev;
    r->lock_ino = st.st_ino;
    r->locked = true;
out:
    pthread_mutex_unlock(&g_held_mu);
    return rv;
}

static void spool_unlock(struct agent_recorder *r)
{
    pthread_mutex_lock(&g_held_mu);
    if (r->locked) {
        for (struct held_spool **pp = &g_held; *pp != NULL; pp = &(*pp)->next) {
            if ((*pp)->dev == r->lock_dev && (*pp)->ino == r->lock_ino) {
                struct held_spool *h = *pp;
                *pp = h->next;
                free(h);
                break;
            }
        }
        r->locked = false;
    }
    if (r->lock_fd >= 0)
        close(r->lock_fd);
    r->lock_fd = -1;
    pthread_mutex_unlock(&g_held_mu);
}

static void recorder_release(struct agent_recorder *r)
{
    struct spool_sess *ss = r->sessions;
    while (ss != NULL) {
        struct spool_sess *next = ss->next;
        free(ss);
        ss = next;
    }
    spool_cctx_pool_free(r);
    spool_unlock(r);
    pthread_mutex_destroy(&r->recs_mu);
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->wake);
    pthread_cond_destroy(&r->changed);
    free(r);
}

int agent_recorder_new(struct agent_recorder **out, const char *spool_dir, uint64_t max_spool_bytes,
                       agent_rec_upload_fn upload_fn, void *upload_arg)
{
    char path[PATH_MAX];
    int rv;

    *out = NULL;
    if (upload_fn == NULL)
        return rp_err(RP_EINVAL, "recorder: an upload function is needed");
    struct agent_recorder *r = calloc(1, sizeof *r);
    if (r == NULL)
        return rp_err(RP_ENOMEM, "recorder: out of memory");
    if (snprintf(r->dir, sizeof r->dir, "%s", spool_dir) >= (int)sizeof r->dir) {
        free(r);
        return rp_err(RP_EINVAL, "recorder: spool path too long: %s", spool_dir);
    }
    r->lock_fd = -1;
    r->max_bytes = max_spool_bytes;
    r->upload = upload_fn;
    r->upload_arg = upload_arg;
    tuning_defaults(&r->tune);
    r->backoff_ms = r->tune.backoff_min_ms;
    pthread_mutex_init(&r->recs_mu, NULL);
    pthread_mutex_init(&r->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&r->wake, &ca);
    pthread_cond_init(&r->changed, &ca);
    pthread_condattr_destroy(&ca);

    rv = rp_mkdir_p(spool_dir, 0700);
    if (rv != 0)
        goto err;
    rv = spool_lock(r);
    if (rv != 0)
        goto err;
    snprintf(path, sizeof path, "%s/quarantine", r->dir);
    if (mkdir(path, 0700) != 0 && errno != EEXIST) {
        rv = rp_err(RP_EIO, "recorder: mkdir %s: %s", path, strerror(errno));
        goto err;
    }
    rv = spool_scan(r);
    if (rv != 0)
        goto err;

    if (pthread_create(&r->uploader, NULL, spool_uploader_main, r) != 0) {
        rv = rp_err(RP_ENOMEM, "recorder: cannot start the uploader thread");
        goto err;
    }
    if (pthread_create(&r->flusher, NULL, flusher_main, r) != 0) {
        pthread_mutex_lock(&r->mu);
        r->stop = true;
        pthread_cond_broadcast(&r->wake);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->uploader, NULL);
        rv = rp_err(RP_ENOMEM, "recorder: cannot start the flusher thread");
        goto err;
    }
    r->threads_started = true;
    *out = r;
    return 0;

err:
    recorder_release(r);
    return rv;
}

void agent_recorder_free(struct agent_recorder *r)
{
    if (r == NULL)
        return;
    if (r->threads_started) {
        pthread_mutex_lock(&r->mu);
        r->stop = true;
        pthread_cond_broadcast(&r->wake);
        pthread_mutex_unlock(&r->mu);
        pthread_join(r->uploader, NULL);
        pthread_join(r->flusher, NULL);
    }
    struct agent_rec *rec = r->recs;
    while (rec != NULL) {
        struct agent_rec *next = rec->next;
        rec_free(rec);
        rec = next;
    }
    recorder_release(r);
}

/* True if the uploader has a chunk it may send now. r->mu held. */
static bool sendable_left(struct agent_recorder *r)
{
    for (struct spool_sess *ss = r->sessions; ss != NULL; ss = ss->next)
        if (spool_sess_sendable(ss) || spool_sess_needs_finish(ss))
            return true;
    return false;
}

int agent_recorder_flush(struct agent_recorder *r, uint64_t deadline_ms)
{
    int rv = 0;

    pthread_mutex_lock(&r->recs_mu);
    for (struct agent_rec *rec = r->recs; rec != NULL; rec = rec->next) {
        pthread_mutex_lock(&rec->mu);
        if (rec_cut(rec) != 0)
            rp_warn("recorder", "flush: session %s: %s", rec->sid, rp_errmsg());
        pthread_mutex_unlock(&rec->mu);
        rec_sync_chunks(rec);
    }
    pthread_mutex_unlock(&r->recs_mu);

    pthread_mutex_lock(&r->mu);
    r->urgent = true;
    r->backoff_ms = r->tune.backoff_min_ms;
    r->retry_at_ms = 0;
    pthread_cond_broadcast(&r->wake);
    while (sendable_left(r)) {
        uint64_t now = rp_mono_ms();
        if (now >= deadline_ms) {
            rv = rp_err(RP_ETIMEDOUT, "recorder: flush deadline passed with chunks left to send");
            break;
        }
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t wait = deadline_ms - now;
        if (wait > 100)
            wait = 100;
        ts.tv_nsec += (long)wait * 1000000;
        ts.tv_sec += ts.tv_nsec / 1000000000;
        ts.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&r->changed, &r->mu, &ts);
    }
    r->urgent = false;
    pthread_mutex_unlock(&r->mu);
    return rv;
}

uint64_t agent_recorder_spool_bytes(struct agent_recorder *r)
{
    pthread_mutex_lock(&r->mu);
    uint64_t n = r->spool_bytes;
    pthread_mutex_unlock(&r->mu);
    return n;
}

uint64_t agent_recorder_uploaded(struct agent_recorder *r)
{
    pthread_mutex_lock(&r->mu);
    uint64_t n = r->uploaded;
    pthread_mutex_unlock(&r->mu);
    return n;
}
