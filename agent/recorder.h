/* agent/recorder.h: session recordings, spooled on the node and uploaded to auth.
 *
 * One recorder per agent owns data_dir/spool. Each recorded session writes asciicast v2
 * lines (agent/asciicast.h) into a chunk; a chunk is cut when it holds about
 * AGENT_REC_CHUNK_BYTES or is AGENT_REC_CHUNK_MS old, compressed as one zstd frame and
 * written to the spool as its own file (temp file, rename; the flusher thread fsyncs it
 * within a quarter of AGENT_REC_FLUSH_MS, off the session's path). Between cuts, the
 * lines of the chunk being filled are appended to a part file at least every
 * AGENT_REC_FLUSH_MS, so an agent killed with SIGKILL loses at most that last stretch
 * (part files are not fsynced: a power cut may lose the last seconds of writeback).
 * Every chunk carries zstd's content checksum, and whatever reads back damaged is
 * quarantined, not sent. An uploader thread
 * sends the spooled chunks in order through the caller's upload function (one
 * `rec_put` each) and deletes each once sent; failures are retried with exponential
 * backoff and jitter. A recorder started on a spool that holds the files of an agent
 * that died (it takes a lock on the spool, so a live agent's spool is refused)
 * finishes those sessions as they were at its death and uploads them, the final chunk
 * with last = true.
 *
 * Layout of the spool directory:
 *
 *   spool/.lock                   flock()ed by the recorder that owns the spool
 *   spool/<sid>/meta              the session's metadata (msgpack, agent_spool_meta_parse)
 *   spool/<sid>/<seq>.zst         chunk <seq>, one zstd frame of asciicast lines
 *   spool/<sid>/<seq>.part        the lines of chunk <seq> so far (not compressed)
 *   spool/<sid>/end               written when the session is over: <seq>.zst with the
 *                                 highest seq is the last chunk
 *   spool/quarantine/             what could not be read back or was refused for good,
 *                                 kept for an operator and logged
 *
 * Thread-safety: the recorder's functions may be called from any thread. One session
 * (struct agent_rec) is used by one thread at a time (its own background flushes are
 * serialised with it internally). */
#ifndef RP_AGENT_RECORDER_H
#define RP_AGENT_RECORDER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AGENT_REC_CHUNK_BYTES (256u * 1024)     /* cut a chunk at this many bytes of lines */
#define AGENT_REC_CHUNK_MS 5000u                /* ... or when it is this old */
#define AGENT_REC_FLUSH_MS 1000u                /* lines reach the spool within this */
#define AGENT_REC_MAX_COMPRESSED (1024u * 1024) /* what auth accepts per chunk */
#define AGENT_REC_MAX_DECOMPRESSED (8u * 1024 * 1024)
#define AGENT_REC_ZSTD_LEVEL 1 /* 7.2x on `ls -lR` output, as 3 gives 7.3x, for 40 % less CPU */

/* Sends one chunk to the auth cluster (a `rec_put`): chunk @seq (0, 1, 2, ...) of
 * session @sid, @data / @len one zstd frame of asciicast lines, @last on the final
 * chunk, @meta_msgpack / @meta_len the session's metadata map ({user, login, hostname,
 * start, cols, rows, interactive, command?}) on seq 0 and NULL / 0 on the others.
 * Called from the uploader thread only, one call at a time; the buffers are the
 * recorder's and valid during the call. Returns 0 once auth has stored the chunk (or
 * had it already); a negative RP_E* code to have it sent again later. RP_EINVAL,
 * RP_EDENIED and RP_ETOOBIG mean auth refuses this session's chunks for good: after
 * AGENT_REC_REFUSALS of them in a row, the session's spool files are moved to
 * quarantine (logged as an error) instead of being retried forever. */
typedef int (*agent_rec_upload_fn)(void *arg, const char *sid, uint64_t seq, const void *data,
                                   size_t len, bool last, const void *meta_msgpack,
                                   size_t meta_len);
#define AGENT_REC_REFUSALS 3

/* What a session is recorded with. Strings are copied by agent_rec_open. */
struct agent_rec_meta {
    const char *sid;       /* session id: a UUID (36 characters, lower-case hex) */
    const char *user;      /* the Raftport user */
    const char *login;     /* the Unix login */
    const char *server_id; /* this node's host id */
    const char *hostname;  /* this node's name */
    const char *term;      /* TERM of the PTY; NULL: none (exec without PTY) */
    const char *shell;     /* the login's shell (asciicast env.SHELL); NULL: omitted */
    unsigned cols, rows;
    uint64_t start_ms;   /* wall clock, ms since the epoch */
    bool interactive;    /* a shell (true) or a command (false) */
    const char *command; /* the command of an exec session; NULL for a shell */
    bool record_input;   /* the role asks for input to be recorded too */
};

/* Tuning for tests and benchmarks; agent_recorder_new uses the AGENT_REC_* defaults. */
struct agent_recorder_tuning {
    uint32_t chunk_bytes;
    uint32_t chunk_ms;
    uint32_t flush_ms;
    uint32_t backoff_min_ms; /* first retry delay, doubled per failure (default 500) */
    uint32_t backoff_max_ms; /* cap of the delay (default 30000) */
    int zstd_level;
};

struct agent_recorder;
struct agent_rec;

/* Opens the spool at @spool_dir (created 0700 if missing), takes its lock (RP_EBUSY if
 * another live recorder holds it), reads what it holds (finishing sessions whose
 * writer died, quarantining files that do not read back), and starts the background
 * threads, which upload through @upload_fn(@upload_arg, ...). @max_spool_bytes caps
 * the bytes the spool may hold (files plus lines not yet written); 0: no cap.
 * *@out is the caller's (agent_recorder_free). Returns 0, RP_EIO, RP_EBUSY, RP_ENOMEM. */
int agent_recorder_new(struct agent_recorder **out, const char *spool_dir, uint64_t max_spool_bytes,
                       agent_rec_upload_fn upload_fn, void *upload_arg);
/* Replaces the defaults (call before the first agent_rec_open). */
void agent_recorder_tune(struct agent_recorder *r, const struct agent_recorder_tuning *t);
/* Stops the threads and frees @r, as a killed agent would stop: sessions still open
 * are neither closed nor flushed (their part files stay in the spool; the next
 * recorder finishes them). Their struct agent_rec are freed too: do not use them
 * after. It waits for an upload in progress to return (the upload function's own
 * deadline bounds that). Call agent_recorder_flush first for a graceful stop. NULL is
 * ignored. */
void agent_recorder_free(struct agent_recorder *r);
/* Writes every open session's lines to the spool, then waits until the uploader has
 * sent every chunk it may send or until @deadline_ms (on the rp_mono_ms() clock),
 * retrying failed uploads at the shortest backoff meanwhile. A session that is still
 * open keeps its newest chunk (it will carry last = true). Returns 0 when nothing
 * sendable is left, RP_ETIMEDOUT at the deadline. */
int agent_recorder_flush(struct agent_recorder *r, uint64_t deadline_ms);

/* Bytes the spool holds now (files and lines not yet written), for tests and metrics. */
uint64_t agent_recorder_spool_bytes(struct agent_recorder *r);
/* Chunks uploaded since agent_recorder_new. */
uint64_t agent_recorder_uploaded(struct agent_recorder *r);

/* Starts recording session @meta: writes its metadata and the asciicast header to the
 * spool. *@out is the caller's until agent_rec_close. Returns 0; RP_EINVAL (bad sid or
 * missing field), RP_EEXISTS (the sid is in the spool already), RP_ENOSPC (the spool
 * is at its cap), RP_EIO. */
int agent_rec_open(struct agent_recorder *r, const struct agent_rec_meta *meta,
                   struct agent_rec **out);
/* Records @n bytes the session printed (input: the user typed; ignored unless the
 * meta asked for input). Returns 0; RP_ENOSPC when the spool is at its cap, RP_EIO
 * when the spool cannot be written: those bytes are not recorded (the session's
 * record_session mode decides whether it goes on; if it does, a marker event in the
 * recording says how many bytes are missing). */
int agent_rec_output(struct agent_rec *rec, const void *p, size_t n);
int agent_rec_input(struct agent_rec *rec, const void *p, size_t n);
/* Records a window change to @cols x @rows. */
int agent_rec_resize(struct agent_rec *rec, unsigned cols, unsigned rows);
/* Ends the recording: writes the last chunk and the end marker, and frees @rec (in
 * every case). The uploader sends what is left. Returns 0, RP_ENOSPC or RP_EIO (the
 * tail could not be written: the files already in the spool are still sent, and the
 * session is finished at its last chunk by the next recorder). NULL is ignored. */
int agent_rec_close(struct agent_rec *rec);

/* The spool's meta file, exposed for the fuzz target (tests/fuzz/fuzz_spool_meta.c). */
struct agent_spool_meta {
    char *sid, *user, *login, *server_id, *hostname, *term, *shell, *command; /* owned */
    uint32_t cols, rows;
    uint64_t start_ms;
    bool interactive, record_input;
};
/* Encodes @m into @b (msgpack map). Returns 0 or RP_ENOMEM. */
struct rp_buf;
int agent_spool_meta_encode(struct rp_buf *b, const struct agent_rec_meta *m);
/* Parses untrusted bytes @p / @n (read back from disk) into @out: every field checked
 * (sid a UUID, names within rp_names rules' length, no control characters, sizes in
 * range). Returns 0 or RP_EINVAL with a message; on success free with
 * agent_spool_meta_free. */
int agent_spool_meta_parse(const void *p, size_t n, struct agent_spool_meta *out);
void agent_spool_meta_free(struct agent_spool_meta *m);
/* The metadata map sent with chunk 0. */
int agent_spool_meta_upload(struct rp_buf *b, const struct agent_spool_meta *m);

#endif
