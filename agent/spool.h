/* agent/spool.h: internal to the recorder (agent/recorder.c, agent/spool.c).
 *
 * The recorder's state, shared by the session side (recorder.c: sessions write
 * chunks) and the spool side (spool.c: the files on disk, reading them back, the
 * uploader). Nothing outside agent/recorder.c and agent/spool.c includes this. */
#ifndef RP_AGENT_SPOOL_H
#define RP_AGENT_SPOOL_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "agent/asciicast.h"
#include "agent/recorder.h"
#include "lib/buf.h"

/* A session the spool holds: chunks [first_seq, next_seq) are spooled, not yet sent.
 * Guarded by recorder.mu. Entries are created by agent_rec_open and the start-up scan
 * and removed only by the uploader thread, which may hold a pointer unlocked. */
struct spool_sess {
    char sid[37];
    uint64_t first_seq;
    uint64_t next_seq;
    bool live;          /* an agent_rec of this process writes it */
    bool ended;         /* the end marker is written: chunk next_seq - 1 is the last */
    bool broken;        /* moved to quarantine: nothing more is sent */
    uint64_t last_t_us; /* time of the last event sent (for a stand-in chunk) */
    unsigned refusals;  /* consecutive permanent refusals by auth */
    struct spool_sess *next;
};

/* An open session. mu serialises the session's thread with the flusher thread. */
struct agent_rec {
    struct agent_recorder *r;
    struct spool_sess *ss;
    pthread_mutex_t mu;
    char sid[37];
    bool record_input;
    uint64_t mono_start_us;
    struct agent_cast_utf8 out_carry, in_carry;
    struct rp_buf chunk;         /* lines of chunk seq */
    size_t part_written;         /* bytes of chunk already in <seq>.part */
    int part_fd;                 /* -1 until the part file is opened */
    uint64_t seq;                /* the chunk being filled */
    uint64_t synced_to;          /* chunks below this are fsync()ed */
    uint64_t chunk_started_ms;   /* rp_mono_ms when its first line came */
    uint64_t unflushed_since_ms; /* rp_mono_ms of the oldest line not in the part; 0: none */
    uint64_t last_t_us;
    uint64_t dropped_bytes; /* refused since the last line that was recorded */
    uint64_t warned_ms;     /* rp_mono_ms of the flusher's last warning about it */
    struct agent_rec *next; /* in recorder.recs, under recorder.recs_mu */
};

struct agent_recorder {
    char dir[PATH_MAX - 64];
    uint64_t max_bytes;
    agent_rec_upload_fn upload;
    void *upload_arg;
    struct agent_recorder_tuning tune;
    int lock_fd;
    bool locked;
    dev_t lock_dev; /* the lock file, in this process's list of held spools */
    ino_t lock_ino;

    /* Lock order: recs_mu, then an agent_rec's mu, then mu. */
    pthread_mutex_t recs_mu;
    struct agent_rec *recs;

    pthread_mutex_t mu;
    pthread_cond_t wake;    /* the uploader and the flusher wait on it */
    pthread_cond_t changed; /* signalled after each upload (flush waits on it) */
    bool stop;
    bool urgent; /* a flush waits: retry at the shortest backoff */
    struct spool_sess *sessions;
    uint64_t spool_bytes;
    uint64_t uploaded;
    uint64_t backoff_ms;
    uint64_t retry_at_ms; /* rp_mono_ms before which the uploader waits */
    void *cctx_pool[2];   /* idle ZSTD_CCtx, reused across cuts */

    pthread_t uploader, flusher;
    bool threads_started;
};

/* Paths inside the spool: "<dir>/<sid>/<name>". */
int spool_path(char *out, size_t len, const struct agent_recorder *r, const char *sid,
               const char *name);
int spool_chunk_path(char *out, size_t len, const struct agent_recorder *r, const char *sid,
                     uint64_t seq, const char *ext);
bool spool_sid_valid(const char *s);

/* Compresses @lines into one zstd frame in @out (reset first). */
int spool_compress(struct agent_recorder *r, const struct rp_buf *lines, struct rp_buf *out);

/* A chunk may be sent: the newest chunk of a session still being written waits for
 * the next one (or the end), so that the last chunk is always there to carry last. */
bool spool_sess_sendable(const struct spool_sess *ss);
/* The session's writer is gone without its end marker (a close that failed). */
bool spool_sess_needs_finish(const struct spool_sess *ss);
void spool_cctx_pool_free(struct agent_recorder *r);

/* Scans the spool at start: builds r->sessions and r->spool_bytes, finishing sessions
 * whose writer died and quarantining what does not read back. */
int spool_scan(struct agent_recorder *r);
/* The uploader thread. */
void *spool_uploader_main(void *arg);

#endif
