/* agent/spool.c: the recorder's files on disk, read back, finished and uploaded.
 *
 * Everything read back from the spool is untrusted: a disk corrupts, an operator
 * edits, an agent dies mid-write. Each meta file goes through agent_spool_meta_parse,
 * each chunk through a zstd frame check and a line check before it is sent, and a
 * file that fails is moved to spool/quarantine/ with an error line naming it; where
 * that leaves a hole in a session, a stand-in chunk holding a marker event says what
 * was lost, so the session still reaches auth whole and in order. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <zstd.h>

#include "agent/spool.h"
#include "auth/client.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/util.h"

#define META_MAX_BYTES (128u * 1024)
#define NAME_MAX_BYTES 1024u
#define COMMAND_MAX_BYTES (64u * 1024)
/* A part file holds at most one chunk of lines (CHUNK_HARD_MAX in recorder.c) and the
 * last line that went past it. */
#define PART_MAX_BYTES (2u * 1024 * 1024)
#define SEQ_MAX 100000000ull

/* ---- names and paths ---------------------------------------------------------- */

bool spool_sid_valid(const char *s)
{
    static const int dash_at[] = {8, 13, 18, 23};
    size_t n = strnlen(s, 37);
    if (n != 36)
        return false;
    for (size_t i = 0, d = 0; i < 36; i++) {
        if (d < 4 && (int)i == dash_at[d]) {
            if (s[i] != '-')
                return false;
            d++;
            continue;
        }
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return false;
    }
    return true;
}

int spool_path(char *out, size_t len, const struct agent_recorder *r, const char *sid,
               const char *name)
{
    int n = name != NULL ? snprintf(out, len, "%s/%s/%s", r->dir, sid, name)
                         : snprintf(out, len, "%s/%s", r->dir, sid);
    if (n < 0 || (size_t)n >= len)
        return rp_err(RP_EINVAL, "spool path too long under %s", r->dir);
    return 0;
}

int spool_chunk_path(char *out, size_t len, const struct agent_recorder *r, const char *sid,
                     uint64_t seq, const char *ext)
{
    char name[48];
    snprintf(name, sizeof name, "%llu.%s", (unsigned long long)seq, ext);
    return spool_path(out, len, r, sid, name);
}

/* Parses "<seq>.zst" / "<seq>.part": decimal without leading zeros. */
static bool parse_chunk_name(const char *name, uint64_t *seq, const char **ext)
{
    uint64_t v = 0;
    size_t i = 0;
    if (name[0] < '0' || name[0] > '9' || (name[0] == '0' && name[1] != '.'))
        return false;
    for (; name[i] >= '0' && name[i] <= '9'; i++) {
        v = v * 10 + (uint64_t)(name[i] - '0');
        if (v > SEQ_MAX)
            return false;
    }
    if (strcmp(name + i, ".zst") != 0 && strcmp(name + i, ".part") != 0)
        return false;
    *seq = v;
    *ext = name + i + 1;
    return true;
}

bool spool_sess_sendable(const struct spool_sess *ss)
{
    if (ss->broken || ss->first_seq >= ss->next_seq)
        return false;
    return ss->ended || ss->first_seq + 1 < ss->next_seq;
}

bool spool_sess_needs_finish(const struct spool_sess *ss)
{
    return !ss->broken && !ss->live && !ss->ended;
}

/* ---- the meta file ------------------------------------------------------------- */

int agent_spool_meta_encode(struct rp_buf *b, const struct agent_rec_meta *m)
{
    msgpack_packer pk;
    struct rp_mp_map map;
    rp_mp_packer_init(&pk, b);
    rp_mp_map_begin(&pk, &map);
    rp_mp_map_u64(&map, "v", 1);
    rp_mp_map_str(&map, "sid", m->sid);
    rp_mp_map_str(&map, "user", m->user);
    rp_mp_map_str(&map, "login", m->login);
    rp_mp_map_str(&map, "server_id", m->server_id);
    rp_mp_map_str(&map, "hostname", m->hostname);
    if (m->term != NULL)
        rp_mp_map_str(&map, "term", m->term);
    if (m->shell != NULL)
        rp_mp_map_str(&map, "shell", m->shell);
    if (m->command != NULL)
        rp_mp_map_str(&map, "command", m->command);
    rp_mp_map_u64(&map, "cols", m->cols);
    rp_mp_map_u64(&map, "rows", m->rows);
    rp_mp_map_u64(&map, "start", m->start_ms);
    rp_mp_map_bool(&map, "interactive", m->interactive);
    rp_mp_map_bool(&map, "record_input", m->record_input);
    rp_mp_map_end(&map);
    return b->data != NULL ? 0 : rp_err(RP_ENOMEM, "encoding the recording's metadata");
}

void agent_spool_meta_free(struct agent_spool_meta *m)
{
    free(m->sid);
    free(m->user);
    free(m->login);
    free(m->server_id);
    free(m->hostname);
    free(m->term);
    free(m->shell);
    free(m->command);
    memset(m, 0, sizeof *m);
}

/* A string field: present (unless @optional), at most @max bytes, and without control
 * characters unless @any_bytes. */
static int meta_str(const msgpack_object *map, const char *key, bool optional, size_t max,
                    bool any_bytes, char **out)
{
    int rv = rp_mp_get_strdup(map, key, out);
    if (rv == RP_ENOTFOUND && optional) {
        *out = NULL;
        return 0;
    }
    if (rv != 0)
        return rp_err(rv == RP_ENOTFOUND ? RP_EINVAL : rv, "spool meta: field '%s': %s", key,
                      rp_errmsg());
    size_t n = strlen(*out);
    if (n > max)
        return rp_err(RP_EINVAL, "spool meta: field '%s' is %zu bytes, at most %zu expected", key,
                      n, max);
    if (!any_bytes) {
        for (size_t i = 0; i < n; i++) {
            unsigned char c = (unsigned char)(*out)[i];
            if (c < 0x20 || c == 0x7F)
                return rp_err(RP_EINVAL,
                              "spool meta: field '%s' holds control character 0x%02x at %zu", key,
                              c, i);
        }
    }
    return 0;
}

static int meta_u64(const msgpack_object *map, const char *key, uint64_t max, uint64_t *out)
{
    int rv = rp_mp_get_u64(map, key, out);
    if (rv != 0)
        return rp_err(RP_EINVAL, "spool meta: field '%s': %s", key,
                      rv == RP_ENOTFOUND ? "missing" : rp_errmsg());
    if (*out > max)
        return rp_err(RP_EINVAL, "spool meta: field '%s' is %llu, at most %llu expected", key,
                      (unsigned long long)*out, (unsigned long long)max);
    return 0;
}

static int meta_bool(const msgpack_object *map, const char *key, bool *out)
{
    int rv = rp_mp_get_bool(map, key, out);
    if (rv != 0)
        return rp_err(RP_EINVAL, "spool meta: field '%s': %s", key,
                      rv == RP_ENOTFOUND ? "missing" : rp_errmsg());
    return 0;
}

int agent_spool_meta_parse(const void *p, size_t n, struct agent_spool_meta *out)
{
    msgpack_unpacked u;
    uint64_t v;
    int rv;

    memset(out, 0, sizeof *out);
    if (n > META_MAX_BYTES)
        return rp_err(RP_EINVAL, "spool meta is %zu bytes, at most %u expected", n, META_MAX_BYTES);
    rv = rp_mp_parse(p, n, &u);
    if (rv != 0)
        return rp_err(RP_EINVAL, "spool meta: %s", rp_errmsg());
    const msgpack_object *map = &u.data;
    if (map->type != MSGPACK_OBJECT_MAP) {
        rv = rp_err(RP_EINVAL, "spool meta is not a map");
        goto out;
    }
    rv = meta_u64(map, "v", UINT64_MAX, &v);
    if (rv == 0 && v != 1)
        rv = rp_err(RP_EINVAL, "spool meta version %llu, 1 expected", (unsigned long long)v);
    if (rv == 0)
        rv = meta_str(map, "sid", false, 36, false, &out->sid);
    if (rv == 0 && !spool_sid_valid(out->sid))
        rv = rp_err(RP_EINVAL, "spool meta: sid is not a lower-case UUID");
    if (rv == 0)
        rv = meta_str(map, "user", false, NAME_MAX_BYTES, false, &out->user);
    if (rv == 0)
        rv = meta_str(map, "login", false, NAME_MAX_BYTES, false, &out->login);
    if (rv == 0)
        rv = meta_str(map, "server_id", false, NAME_MAX_BYTES, false, &out->server_id);
    if (rv == 0)
        rv = meta_str(map, "hostname", false, NAME_MAX_BYTES, false, &out->hostname);
    if (rv == 0)
        rv = meta_str(map, "term", true, NAME_MAX_BYTES, false, &out->term);
    if (rv == 0)
        rv = meta_str(map, "shell", true, NAME_MAX_BYTES, false, &out->shell);
    if (rv == 0)
        rv = meta_str(map, "command", true, COMMAND_MAX_BYTES, true, &out->command);
    if (rv == 0 && (rv = meta_u64(map, "cols", 65535, &v)) == 0)
        out->cols = (uint32_t)v;
    if (rv == 0 && (rv = meta_u64(map, "rows", 65535, &v)) == 0)
        out->rows = (uint32_t)v;
    if (rv == 0)
        rv = meta_u64(map, "start", UINT64_MAX / 2, &out->start_ms);
    if (rv == 0)
        rv = meta_bool(map, "interactive", &out->interactive);
    if (rv == 0)
        rv = meta_bool(map, "record_input", &out->record_input);
out:
    msgpack_unpacked_destroy(&u);
    if (rv != 0)
        agent_spool_meta_free(out);
    return rv;
}

int agent_spool_meta_upload(struct rp_buf *b, const struct agent_spool_meta *m)
{
    struct auth_rec_meta am = {.user = m->user,
                               .login = m->login,
                               .hostname = m->hostname,
                               .command = m->command,
                               .start_ms = m->start_ms,
                               .cols = m->cols,
                               .rows = m->rows,
                               .interactive = m->interactive};
    return auth_rec_meta_encode(&am, b);
}

static int read_meta(struct agent_recorder *r, const char *sid, struct agent_spool_meta *m)
{
    char path[PATH_MAX], *data = NULL;
    size_t len = 0;
    int rv = spool_path(path, sizeof path, r, sid, "meta");
    if (rv == 0)
        rv = rp_read_file(path, META_MAX_BYTES, &data, &len);
    if (rv == 0)
        rv = agent_spool_meta_parse(data, len, m);
    if (rv == 0 && strcmp(m->sid, sid) != 0) {
        agent_spool_meta_free(m);
        rv = rp_err(RP_EINVAL, "spool meta of %s names another session", sid);
    }
    free(data);
    return rv;
}

/* ---- compression and checks ------------------------------------------------------ */

int spool_compress(struct agent_recorder *r, const struct rp_buf *lines, struct rp_buf *out)
{
    ZSTD_CCtx *c = NULL;
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < 2 && c == NULL; i++) {
        c = r->cctx_pool[i];
        r->cctx_pool[i] = NULL;
    }
    int level = r->tune.zstd_level;
    pthread_mutex_unlock(&r->mu);
    if (c == NULL && (c = ZSTD_createCCtx()) == NULL)
        return rp_err(RP_ENOMEM, "zstd: no compression context");

    int rv = 0;
    size_t bound = ZSTD_compressBound(lines->len);
    rp_buf_reset(out);
    if (rp_buf_reserve(out, bound) != 0) {
        rv = rp_err(RP_ENOMEM, "zstd: no room for %zu bytes", bound);
        goto out;
    }
    ZSTD_CCtx_reset(c, ZSTD_reset_session_and_parameters);
    ZSTD_CCtx_setParameter(c, ZSTD_c_compressionLevel, level);
    /* The frame's checksum lets the uploader tell a chunk the disk damaged. */
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 1);
    size_t z = ZSTD_compress2(c, out->data, bound, lines->data, lines->len);
    if (ZSTD_isError(z)) {
        rv = rp_err(RP_EIO, "zstd: %s", ZSTD_getErrorName(z));
        goto out;
    }
    if (z > AGENT_REC_MAX_COMPRESSED) {
        rv = rp_err(RP_ETOOBIG, "chunk of %zu bytes compressed to %zu, more than %u", lines->len, z,
                    AGENT_REC_MAX_COMPRESSED);
        goto out;
    }
    out->len = z;
out:
    pthread_mutex_lock(&r->mu);
    for (size_t i = 0; i < 2 && c != NULL; i++) {
        if (r->cctx_pool[i] == NULL) {
            r->cctx_pool[i] = c;
            c = NULL;
        }
    }
    pthread_mutex_unlock(&r->mu);
    ZSTD_freeCCtx(c);
    return rv;
}

void spool_cctx_pool_free(struct agent_recorder *r)
{
    for (size_t i = 0; i < 2; i++) {
        ZSTD_freeCCtx(r->cctx_pool[i]);
        r->cctx_pool[i] = NULL;
    }
}

/* Checks that @p / @n are asciicast lines as this recorder writes them: the header
 * object first in chunk 0 and only there, then event arrays, each line ended by '\n',
 * no NUL. *@last_t_us: the time of the last event (unchanged if there is none). */
static int check_lines(const uint8_t *p, size_t n, uint64_t seq, uint64_t *last_t_us)
{
    if (n == 0)
        return rp_err(RP_EINVAL, "chunk %llu holds no lines", (unsigned long long)seq);
    if (p[n - 1] != '\n')
        return rp_err(RP_EINVAL, "chunk %llu does not end with a newline", (unsigned long long)seq);
    if (memchr(p, '\0', n) != NULL)
        return rp_err(RP_EINVAL, "chunk %llu holds a NUL byte", (unsigned long long)seq);
    size_t off = 0, line_no = 0;
    const uint8_t *last = NULL;
    size_t last_len = 0;
    while (off < n) {
        const uint8_t *nl = memchr(p + off, '\n', n - off);
        size_t len = (size_t)(nl - (p + off));
        bool want_header = seq == 0 && line_no == 0;
        if (len == 0 || p[off] != (want_header ? '{' : '['))
            return rp_err(RP_EINVAL, "chunk %llu line %zu does not start with '%c'",
                          (unsigned long long)seq, line_no + 1, want_header ? '{' : '[');
        if (!want_header) {
            last = p + off;
            last_len = len;
        }
        off += len + 1;
        line_no++;
    }
    if (last != NULL) {
        uint64_t t;
        if (agent_cast_line_time((const char *)last, last_len, &t) != 0)
            return rp_err(RP_EINVAL, "chunk %llu: last line: %s", (unsigned long long)seq,
                          rp_errmsg());
        *last_t_us = t;
    }
    return 0;
}

/* Checks a chunk file's bytes: exactly one zstd frame within auth's limits, whose
 * checksum holds and whose content is lines (check_lines). */
static int check_chunk(const uint8_t *z, size_t n, uint64_t seq, uint64_t *last_t_us)
{
    if (n > AGENT_REC_MAX_COMPRESSED)
        return rp_err(RP_EINVAL, "chunk %llu is %zu bytes, at most %u expected",
                      (unsigned long long)seq, n, AGENT_REC_MAX_COMPRESSED);
    size_t frame = ZSTD_findFrameCompressedSize(z, n);
    if (ZSTD_isError(frame) || frame != n)
        return rp_err(RP_EINVAL, "chunk %llu is not one zstd frame", (unsigned long long)seq);
    unsigned long long size = ZSTD_getFrameContentSize(z, n);
    if (size == ZSTD_CONTENTSIZE_ERROR || size == ZSTD_CONTENTSIZE_UNKNOWN ||
        size > AGENT_REC_MAX_DECOMPRESSED)
        return rp_err(RP_EINVAL, "chunk %llu: content size missing or above %u",
                      (unsigned long long)seq, AGENT_REC_MAX_DECOMPRESSED);
    uint8_t *plain = malloc(size > 0 ? size : 1);
    if (plain == NULL)
        return rp_err(RP_ENOMEM, "chunk %llu: %llu bytes", (unsigned long long)seq, size);
    size_t got = ZSTD_decompress(plain, size, z, n);
    int rv = 0;
    if (ZSTD_isError(got) || got != size)
        rv = rp_err(RP_EINVAL, "chunk %llu does not decompress: %s", (unsigned long long)seq,
                    ZSTD_isError(got) ? ZSTD_getErrorName(got) : "short content");
    else
        rv = check_lines(plain, got, seq, last_t_us);
    free(plain);
    return rv;
}

/* ---- quarantine ------------------------------------------------------------------ */

/* Moves @path to spool/quarantine/<label>, logging @why. Returns the bytes it held
 * (a directory counts as its own size only). */
static uint64_t quarantine(struct agent_recorder *r, const char *path, const char *label,
                           const char *why)
{
    char dst[PATH_MAX], suffix[9];
    struct stat st;
    uint64_t bytes = stat(path, &st) == 0 ? (uint64_t)st.st_size : 0;
    if (rp_random_hex(suffix, 4) != 0)
        snprintf(suffix, sizeof suffix, "%08llx", (unsigned long long)rp_mono_ms());
    snprintf(dst, sizeof dst, "%s/quarantine/%s.%s", r->dir, label, suffix);
    if (rename(path, dst) != 0) {
        rp_error("recorder", "spool: %s: %s; moving it to quarantine failed (%s): deleting it",
                 path, why, strerror(errno));
        unlink(path);
        return bytes;
    }
    rp_error("recorder", "spool: %s (%llu bytes): %s; moved to %s", path, (unsigned long long)bytes,
             why, dst);
    return bytes;
}

/* Removes a finished session's directory. */
static void remove_session_dir(struct agent_recorder *r, const char *sid)
{
    char path[PATH_MAX];
    DIR *d;
    if (spool_path(path, sizeof path, r, sid, NULL) != 0 || (d = opendir(path)) == NULL)
        return;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        char f[PATH_MAX];
        if (spool_path(f, sizeof f, r, sid, e->d_name) == 0)
            unlink(f);
    }
    closedir(d);
    rmdir(path);
}

/* ---- finishing a session whose writer is gone --------------------------------- */

/* Writes @lines as chunk @seq of @sid. */
static int write_chunk(struct agent_recorder *r, const char *sid, uint64_t seq,
                       const struct rp_buf *lines, uint64_t *bytes)
{
    struct rp_buf z;
    char path[PATH_MAX];
    rp_buf_init(&z);
    int rv = spool_compress(r, lines, &z);
    if (rv == 0)
        rv = spool_chunk_path(path, sizeof path, r, sid, seq, "zst");
    if (rv == 0)
        rv = rp_write_file(path, z.data, z.len, 0600);
    if (rv == 0)
        *bytes = z.len;
    rp_buf_free(&z);
    return rv;
}

/* The header line of @m into @b. */
static int header_from_meta(struct rp_buf *b, const struct agent_spool_meta *m)
{
    char *title = NULL;
    if (asprintf(&title, "%s@%s", m->login, m->hostname) < 0)
        return rp_err(RP_ENOMEM, "header");
    struct agent_cast_header h = {
        .width = m->cols,
        .height = m->rows,
        .timestamp_s = m->start_ms / 1000,
        .term = m->term,
        .shell = m->shell,
        .title = title,
        .command = m->command,
    };
    int rv = agent_cast_header(b, &h);
    free(title);
    return rv;
}

struct dir_listing {
    uint64_t min_zst, max_zst;
    bool any_zst;
    bool has_end, has_meta;
    uint64_t bytes;
};

/* Lists a session directory: chunk numbers, markers, and byte count. With @clean (no
 * writer is left: start-up, or a session whose writer is gone), deletes temp files a
 * dead writer left and quarantines names that do not belong; without, only counts
 * bytes. */
static int list_session(struct agent_recorder *r, const char *sid, bool clean,
                        struct dir_listing *l)
{
    char path[PATH_MAX];
    memset(l, 0, sizeof *l);
    int rv = spool_path(path, sizeof path, r, sid, NULL);
    if (rv != 0)
        return rv;
    DIR *d = opendir(path);
    if (d == NULL)
        return rp_err(RP_EIO, "spool: open %s: %s", path, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        char f[PATH_MAX];
        uint64_t seq;
        const char *ext;
        struct stat st;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0)
            continue;
        if (spool_path(f, sizeof f, r, sid, name) != 0)
            continue;
        if (lstat(f, &st) != 0)
            continue;
        if (!clean) {
            l->bytes += (uint64_t)st.st_size;
            continue;
        }
        if (strstr(name, ".tmp.") != NULL && S_ISREG(st.st_mode)) {
            /* An atomic write that did not finish: its file never took the name. */
            unlink(f);
            continue;
        }
        if (!S_ISREG(st.st_mode)) {
            quarantine(r, f, name, "not a regular file");
            continue;
        }
        if (strcmp(name, "end") == 0) {
            l->has_end = true;
        } else if (strcmp(name, "meta") == 0) {
            l->has_meta = true;
        } else if (parse_chunk_name(name, &seq, &ext)) {
            if (strcmp(ext, "zst") == 0) {
                if (!l->any_zst || seq < l->min_zst)
                    l->min_zst = seq;
                if (!l->any_zst || seq > l->max_zst)
                    l->max_zst = seq;
                l->any_zst = true;
            }
        } else {
            char label[PATH_MAX];
            snprintf(label, sizeof label, "%s.%s", sid, name);
            quarantine(r, f, label, "not a file the recorder writes");
            continue;
        }
        l->bytes += (uint64_t)st.st_size;
    }
    closedir(d);
    return 0;
}

/* Turns the part files of @sid into chunks: the part of the chunk a dead writer was
 * filling holds its lines up to its death (a torn last line is cut off). */
static int finish_parts(struct agent_recorder *r, const char *sid)
{
    char path[PATH_MAX];
    int rv = spool_path(path, sizeof path, r, sid, NULL);
    if (rv != 0)
        return rv;
    DIR *d = opendir(path);
    if (d == NULL)
        return rp_err(RP_EIO, "spool: open %s: %s", path, strerror(errno));
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        uint64_t seq, ignored_t = 0, zbytes;
        const char *ext;
        char part[PATH_MAX], zst[PATH_MAX], *data = NULL, label[128];
        size_t len = 0;
        if (!parse_chunk_name(e->d_name, &seq, &ext) || strcmp(ext, "part") != 0)
            continue;
        if (spool_chunk_path(part, sizeof part, r, sid, seq, "part") != 0 ||
            spool_chunk_path(zst, sizeof zst, r, sid, seq, "zst") != 0)
            continue;
        snprintf(label, sizeof label, "%s.%llu.part", sid, (unsigned long long)seq);
        if (rp_file_exists(zst)) {
            /* The chunk was written; only the part's removal was lost. */
            unlink(part);
            continue;
        }
        rv = rp_read_file(part, PART_MAX_BYTES, &data, &len);
        if (rv != 0) {
            quarantine(r, part, label, rp_errmsg());
            continue;
        }
        while (len > 0 && data[len - 1] != '\n')
            len--;
        if (len == 0) {
            free(data);
            unlink(part);
            continue;
        }
        rv = check_lines((const uint8_t *)data, len, seq, &ignored_t);
        if (rv != 0) {
            free(data);
            quarantine(r, part, label, rp_errmsg());
            continue;
        }
        struct rp_buf lines = {.data = (uint8_t *)data, .len = len, .cap = len};
        rv = write_chunk(r, sid, seq, &lines, &zbytes);
        free(data);
        if (rv != 0) {
            closedir(d);
            return rv;
        }
        unlink(part);
    }
    closedir(d);
    return 0;
}

/* Finishes @ss, whose writer died without an end marker: its part becomes its last
 * chunk (a session that wrote nothing gets its header as chunk 0), and the end marker
 * is written. r->mu not held; @ss is not live, so nobody else writes its files. */
static int finish_session(struct agent_recorder *r, struct spool_sess *ss, uint64_t *bytes)
{
    struct dir_listing l;
    char path[PATH_MAX];
    int rv = finish_parts(r, ss->sid);
    if (rv == 0)
        rv = list_session(r, ss->sid, true, &l);
    if (rv != 0)
        return rv;
    if (!l.any_zst) {
        /* Killed before anything reached the disk but its meta: the recording is the
         * header alone, so auth still learns the session took place. */
        struct agent_spool_meta m;
        struct rp_buf lines;
        uint64_t z;
        rv = read_meta(r, ss->sid, &m);
        if (rv != 0)
            return rv;
        rp_buf_init(&lines);
        rv = header_from_meta(&lines, &m);
        agent_spool_meta_free(&m);
        if (rv == 0)
            rv = write_chunk(r, ss->sid, 0, &lines, &z);
        rp_buf_free(&lines);
        if (rv != 0)
            return rv;
        l.bytes += z;
        l.min_zst = l.max_zst = 0;
        l.any_zst = true;
    }
    rv = spool_path(path, sizeof path, r, ss->sid, "end");
    if (rv == 0)
        rv = rp_write_file(path, "end\n", 4, 0600);
    if (rv != 0)
        return rv;
    *bytes = l.bytes + (l.has_end ? 0 : 4);
    pthread_mutex_lock(&r->mu);
    ss->first_seq = l.min_zst;
    ss->next_seq = l.max_zst + 1;
    ss->ended = true;
    pthread_mutex_unlock(&r->mu);
    rp_info("recorder",
            "session %s: its agent stopped without ending the recording; it ends "
            "at chunk %llu",
            ss->sid, (unsigned long long)l.max_zst);
    return 0;
}

/* ---- start-up scan -------------------------------------------------------------- */

static void unlink_session(struct agent_recorder *r, struct spool_sess *ss)
{
    for (struct spool_sess **pp = &r->sessions; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == ss) {
            *pp = ss->next;
            return;
        }
    }
}

/* Moves a whole session to quarantine. */
static void quarantine_session(struct agent_recorder *r, const char *sid, const char *why)
{
    char path[PATH_MAX];
    if (spool_path(path, sizeof path, r, sid, NULL) == 0)
        quarantine(r, path, sid, why);
}

int spool_scan(struct agent_recorder *r)
{
    DIR *d = opendir(r->dir);
    if (d == NULL)
        return rp_err(RP_EIO, "spool: open %s: %s", r->dir, strerror(errno));
    struct dirent *e;
    uint64_t total = 0;
    unsigned resumed = 0;
    while ((e = readdir(d)) != NULL) {
        const char *name = e->d_name;
        char path[PATH_MAX];
        struct stat st;
        struct dir_listing l;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0 || strcmp(name, ".lock") == 0 ||
            strcmp(name, "quarantine") == 0)
            continue;
        if (snprintf(path, sizeof path, "%s/%s", r->dir, name) >= (int)sizeof path)
            continue;
        if (lstat(path, &st) != 0)
            continue;
        if (!S_ISDIR(st.st_mode) || !spool_sid_valid(name)) {
            quarantine(r, path, name, "not a session directory of the spool");
            continue;
        }
        if (list_session(r, name, true, &l) != 0) {
            rp_error("recorder", "spool: %s", rp_errmsg());
            continue;
        }
        if (l.has_end && !l.any_zst) {
            /* Everything was sent; only the clean-up was cut short. */
            remove_session_dir(r, name);
            continue;
        }
        struct spool_sess *ss = calloc(1, sizeof *ss);
        if (ss == NULL) {
            closedir(d);
            return rp_err(RP_ENOMEM, "spool scan");
        }
        memcpy(ss->sid, name, 36); /* spool_sid_valid: exactly 36 */
        ss->sid[36] = '\0';
        uint64_t bytes = l.bytes;
        if (l.has_end) {
            ss->first_seq = l.min_zst;
            ss->next_seq = l.max_zst + 1;
            ss->ended = true;
        } else if (finish_session(r, ss, &bytes) != 0) {
            char why[512];
            snprintf(why, sizeof why, "cannot finish the session: %s", rp_errmsg());
            free(ss);
            quarantine_session(r, name, why);
            continue;
        }
        ss->next = r->sessions;
        r->sessions = ss;
        total += bytes;
        resumed++;
    }
    closedir(d);
    r->spool_bytes = total;
    if (resumed > 0)
        rp_info("recorder", "spool %s: %u recording(s), %llu bytes, left to upload", r->dir,
                resumed, (unsigned long long)total);
    return 0;
}

/* ---- the uploader ---------------------------------------------------------------- */

static bool permanent_refusal(int rv)
{
    return rv == RP_EINVAL || rv == RP_EDENIED || rv == RP_ETOOBIG;
}

/* Builds the stand-in for chunk @seq of @ss, which could not be read back. */
static int stand_in_chunk(struct agent_recorder *r, struct spool_sess *ss, uint64_t seq,
                          const char *why, char **data, size_t *len)
{
    struct rp_buf lines, z;
    char text[512];
    int rv = 0;
    rp_buf_init(&lines);
    rp_buf_init(&z);
    if (seq == 0) {
        struct agent_spool_meta m;
        rv = read_meta(r, ss->sid, &m);
        if (rv != 0)
            goto out;
        rv = header_from_meta(&lines, &m);
        agent_spool_meta_free(&m);
        if (rv != 0)
            goto out;
    }
    int n = snprintf(text, sizeof text,
                     "raftport: part %llu of this recording was lost on the node (%s)",
                     (unsigned long long)seq, why);
    if (n >= (int)sizeof text)
        n = (int)sizeof text - 1;
    rv = agent_cast_event(&lines, ss->last_t_us, AGENT_CAST_MARKER, NULL, text, (size_t)n);
    if (rv == 0)
        rv = spool_compress(r, &lines, &z);
    if (rv == 0) {
        *len = z.len;
        *data = (char *)rp_buf_steal(&z, len);
    }
out:
    rp_buf_free(&lines);
    rp_buf_free(&z);
    return rv;
}

/* Sends chunk @seq of @ss. Returns 0 once sent, the upload function's error, or
 * another error; *@meta_lost when chunk 0 cannot be sent for want of metadata. */
static int send_chunk(struct agent_recorder *r, struct spool_sess *ss, uint64_t seq, bool last,
                      uint64_t *sent_bytes, bool *meta_lost)
{
    char path[PATH_MAX], *data = NULL, label[128];
    size_t len = 0;
    uint64_t last_t = ss->last_t_us;
    struct rp_buf meta;
    int rv = spool_chunk_path(path, sizeof path, r, ss->sid, seq, "zst");
    if (rv != 0)
        return rv;
    rp_buf_init(&meta);
    snprintf(label, sizeof label, "%s.%llu.zst", ss->sid, (unsigned long long)seq);

    if (seq == 0) {
        /* Chunk 0 goes with the metadata auth lists the recording by; without it the
         * session cannot be sent at all. */
        struct agent_spool_meta m;
        rv = read_meta(r, ss->sid, &m);
        if (rv != 0) {
            *meta_lost = true;
            goto out;
        }
        rv = agent_spool_meta_upload(&meta, &m);
        agent_spool_meta_free(&m);
        if (rv != 0)
            goto out;
    }
    rv = rp_read_file(path, 2 * AGENT_REC_MAX_COMPRESSED, &data, &len);
    if (rv == 0)
        rv = check_chunk((const uint8_t *)data, len, seq, &last_t);
    if (rv != 0) {
        char why[300];
        snprintf(why, sizeof why, "%s", rp_errmsg());
        free(data);
        data = NULL;
        if (rp_file_exists(path)) {
            uint64_t moved = quarantine(r, path, label, why);
            pthread_mutex_lock(&r->mu);
            r->spool_bytes -= r->spool_bytes >= moved ? moved : r->spool_bytes;
            pthread_mutex_unlock(&r->mu);
        } else
            rp_error("recorder", "spool: session %s: chunk %llu is missing", ss->sid,
                     (unsigned long long)seq);
        rv = stand_in_chunk(r, ss, seq, why, &data, &len);
        if (rv == 0)
            rv = rp_write_file(path, data, len, 0600);
        if (rv != 0)
            goto out;
        pthread_mutex_lock(&r->mu);
        r->spool_bytes += len;
        pthread_mutex_unlock(&r->mu);
    }
    rv = r->upload(r->upload_arg, ss->sid, seq, data, len, last, meta.data, meta.len);
    if (rv == 0) {
        unlink(path);
        ss->last_t_us = last_t;
        *sent_bytes = len;
    }
out:
    free(data);
    rp_buf_free(&meta);
    return rv;
}

static void cond_wait_ms(struct agent_recorder *r, uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000;
    if (ts.tv_nsec >= 1000000000) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000;
    }
    pthread_cond_timedwait(&r->wake, &r->mu, &ts);
}

static uint64_t session_dir_bytes(struct agent_recorder *r, const char *sid)
{
    struct dir_listing l;
    if (list_session(r, sid, false, &l) != 0)
        return 0;
    return l.bytes;
}

void *spool_uploader_main(void *arg)
{
    struct agent_recorder *r = arg;
    pthread_mutex_lock(&r->mu);
    while (!r->stop) {
        uint64_t now = rp_mono_ms();
        if (now < r->retry_at_ms) {
            cond_wait_ms(r, r->retry_at_ms - now);
            continue;
        }
        struct spool_sess *ss = r->sessions;
        while (ss != NULL && !spool_sess_sendable(ss) && !spool_sess_needs_finish(ss))
            ss = ss->next;
        if (ss == NULL) {
            pthread_cond_broadcast(&r->changed);
            cond_wait_ms(r, 1000);
            continue;
        }
        if (spool_sess_needs_finish(ss)) {
            /* A close that failed: finish it from its files, as a restart would. Only
             * this thread finishes sessions, and the session stays "to finish" (so a
             * flush keeps waiting for it) until finish_session marks it ended. */
            uint64_t bytes = 0;
            pthread_mutex_unlock(&r->mu);
            int rv = finish_session(r, ss, &bytes);
            pthread_mutex_lock(&r->mu);
            if (rv != 0) {
                rp_error("recorder", "session %s: %s", ss->sid, rp_errmsg());
                ss->broken = true;
            }
            continue;
        }
        uint64_t seq = ss->first_seq;
        bool last = ss->ended && seq + 1 == ss->next_seq;
        uint64_t sent = 0;
        pthread_mutex_unlock(&r->mu);

        bool meta_lost = false;
        int rv = send_chunk(r, ss, seq, last, &sent, &meta_lost);
        uint64_t leftover = 0;
        if (rv == 0 && last) {
            leftover = session_dir_bytes(r, ss->sid);
            remove_session_dir(r, ss->sid);
        }

        pthread_mutex_lock(&r->mu);
        /* Round robin: the session goes to the back of the line. */
        unlink_session(r, ss);
        if (rv == 0) {
            ss->first_seq++;
            ss->refusals = 0;
            r->uploaded++;
            r->spool_bytes -= r->spool_bytes >= sent + leftover ? sent + leftover : r->spool_bytes;
            r->backoff_ms = r->tune.backoff_min_ms;
            if (last) {
                free(ss);
                ss = NULL;
            }
        } else if (meta_lost || (permanent_refusal(rv) && ++ss->refusals >= AGENT_REC_REFUSALS)) {
            char why[400];
            if (meta_lost)
                snprintf(why, sizeof why, "its metadata does not read back (%s): not sent",
                         rp_errmsg());
            else
                snprintf(why, sizeof why, "auth refused chunk %llu %u times (%s): not retried",
                         (unsigned long long)seq, ss->refusals, rp_errmsg());
            uint64_t bytes = session_dir_bytes(r, ss->sid);
            pthread_mutex_unlock(&r->mu);
            quarantine_session(r, ss->sid, why);
            pthread_mutex_lock(&r->mu);
            r->spool_bytes -= r->spool_bytes >= bytes ? bytes : r->spool_bytes;
            ss->broken = true;
        } else {
            uint64_t delay = rp_jitter_ms(r->backoff_ms);
            rp_warn("recorder", "upload of session %s chunk %llu failed (%s): retrying in %llu ms",
                    ss->sid, (unsigned long long)seq, rp_errmsg(), (unsigned long long)delay);
            r->retry_at_ms = rp_mono_ms() + delay;
            if (!r->urgent) {
                r->backoff_ms *= 2;
                if (r->backoff_ms > r->tune.backoff_max_ms)
                    r->backoff_ms = r->tune.backoff_max_ms;
            }
        }
        if (ss != NULL) {
            struct spool_sess **pp = &r->sessions;
            while (*pp != NULL)
                pp = &(*pp)->next;
            ss->next = NULL;
            *pp = ss;
        }
        pthread_cond_broadcast(&r->changed);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}
