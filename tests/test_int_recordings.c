/* tests/test_int_recordings.c: session recordings stored by a real 3-member auth
 * cluster: a Node identity (joined with a node token) uploads the zstd chunks of an
 * asciicast recording made here, tctl lists and exports it, the real player
 * (asciinema cat) reads the export, and the recording outlives its leader and
 * reaches a member that was down through a snapshot. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <zstd.h>

#include "auth/client.h"
#include "auth/recordings.h"
#include "lib/errors.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"
#include "tests/lib/node_identity.h"

TestSuite(int_recordings, .init = cluster_setup, .fini = cluster_teardown, .timeout = 240);

static void random_sid(char out[37])
{
    uint8_t b[16];
    cr_assert_eq(getrandom(b, sizeof b, 0), (ssize_t)sizeof b);
    b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
    b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
    snprintf(out, 37, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
             b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13],
             b[14], b[15]);
}

/* One zstd frame of @text into @out (replaced). */
static void compress_into(struct rp_buf *out, const char *text, size_t n, int level)
{
    size_t cap = ZSTD_compressBound(n);
    rp_buf_reset(out);
    cr_assert_eq(rp_buf_reserve(out, cap), 0);
    size_t z = ZSTD_compress(out->data, cap, text, n, level);
    cr_assert(!ZSTD_isError(z), "%s", ZSTD_getErrorName(z));
    out->len = z;
}

struct recording {
    char sid[37];
    char marker[64];
    char *chunks[3]; /* asciicast lines of each chunk */
};

/* A 3-chunk recording whose last chunk prints @r->marker. */
static void make_recording(struct recording *r)
{
    random_sid(r->sid);
    uint8_t m[6];
    cr_assert_eq(getrandom(m, sizeof m, 0), (ssize_t)sizeof m);
    snprintf(r->marker, sizeof r->marker, "rp-marker-%02x%02x%02x%02x%02x%02x", m[0], m[1], m[2],
             m[3], m[4], m[5]);
    cr_assert_geq(asprintf(&r->chunks[0],
                           "{\"version\": 2, \"width\": 80, \"height\": 24, \"timestamp\": "
                           "1764000000, \"env\": {\"SHELL\": \"/bin/bash\", \"TERM\": "
                           "\"xterm-256color\"}}\n"
                           "[0.105, \"o\", \"$ \"]\n"
                           "[0.9, \"i\", \"echo hello\\r\"]\n"),
                  0);
    cr_assert_geq(asprintf(&r->chunks[1], "[1.002, \"o\", \"echo hello\\r\\nhello\\r\\n\"]\n"
                                          "[1.5, \"r\", \"100x30\"]\n"
                                          "[1.6, \"o\", \"caf\\u00e9 \xe2\x9c\x93\\r\\n\"]\n"),
                  0);
    cr_assert_geq(
        asprintf(&r->chunks[2], "[2.25, \"o\", \"%s\\r\\n\"]\n[3.5, \"o\", \"$ \"]\n", r->marker),
        0);
}

static void free_recording(struct recording *r)
{
    for (int i = 0; i < 3; i++)
        free(r->chunks[i]);
}

static int put_chunk(struct auth_client *c, const struct recording *r, uint32_t seq, bool *stored)
{
    struct rp_buf z, meta;
    rp_buf_init(&z);
    rp_buf_init(&meta);
    compress_into(&z, r->chunks[seq], strlen(r->chunks[seq]), 3);
    if (seq == 0) {
        struct auth_rec_meta m = {.user = "alice",
                                  .login = "root",
                                  .hostname = "node-rec-1",
                                  .start_ms = rp_now_ms(),
                                  .cols = 80,
                                  .rows = 24,
                                  .interactive = true};
        cr_assert_eq(auth_rec_meta_encode(&m, &meta), 0);
    }
    int rv = auth_client_rec_put(c, r->sid, seq, z.data, z.len, seq == 2,
                                 seq == 0 ? meta.data : NULL, meta.len, stored);
    rp_buf_free(&z);
    rp_buf_free(&meta);
    return rv;
}

/* `tctl recordings export SID -o PATH` on node @i (quietly, for polling); @stale:
 * from node @i's own copy. */
static int export_on_stale(int i, const char *sid, const char *path, bool stale)
{
    char o[600];
    snprintf(o, sizeof o, "-o%s", path);
    char cfg[600];
    snprintf(cfg, sizeof cfg, "%s", CL->nodes[i].cfg);
    char tctl[600];
    snprintf(tctl, sizeof tctl, "%s/tctl", CL->build);
    char *argv[] = {
        tctl, "-c", cfg, "recordings", "export", (char *)sid, o, stale ? "--stale" : NULL, NULL};
    struct cl_run r;
    int status = cl_run_argv(argv, 30000, &r); /* the exit status, -1 if killed */
    cl_run_free(&r);
    return status;
}

static int export_on(int i, const char *sid, const char *path)
{
    return export_on_stale(i, sid, path, false);
}

static char *read_all(const char *path, size_t *n)
{
    char *text = NULL;
    cr_assert_eq(rp_read_file(path, 64 << 20, &text, n), 0, "%s: %s", path, rp_errmsg());
    return text;
}

struct export_poll {
    int node;
    const char *sid;
    const char *path;
};

/* From the node's own copy (--stale): what that member holds, not the leader. */
static bool export_works(void *arg)
{
    struct export_poll *p = arg;
    return export_on_stale(p->node, p->sid, p->path, true) == 0;
}

static void assert_same_file(const char *a, const char *b)
{
    size_t na, nb;
    char *ta = read_all(a, &na), *tb = read_all(b, &nb);
    cr_assert_eq(na, nb, "%s: %zu bytes, %s: %zu bytes", a, na, b, nb);
    cr_assert_eq(memcmp(ta, tb, na), 0, "%s and %s differ", a, b);
    free(ta);
    free(tb);
}

static bool upload_audited(void *arg)
{
    const char *sid = arg;
    char *out = NULL;
    int rc = run_tctl(1, &out, "events", "ls", "--type=session.upload", "--format=json", NULL);
    bool found = rc == 0 && out != NULL && strstr(out, sid) != NULL;
    free(out);
    return found;
}

Test(int_recordings, an_uploaded_recording_is_listed_exported_played_and_outlives_its_leader)
{
    cluster_set_snapshot(16, 16);
    cluster_start(3);
    char host_id[40];
    struct auth_client *node = cl_node_identity_client(1, "node-rec-1", host_id);
    struct recording r;
    make_recording(&r);

    /* Chunks in order; a retry of one already stored is an ok "not stored". */
    bool stored = false;
    for (uint32_t seq = 0; seq < 3; seq++) {
        cr_assert_eq(put_chunk(node, &r, seq, &stored), 0, "chunk %u: %s", seq, rp_errmsg());
        cr_assert(stored, "chunk %u stored", seq);
    }
    cr_assert_eq(put_chunk(node, &r, 1, &stored), 0, "%s", rp_errmsg());
    cr_assert_not(stored, "a retry stores nothing");

    /* Listed, complete, with its meta. */
    char *out = NULL;
    cr_assert_eq(run_tctl(1, &out, "recordings", "ls", "--format=json", NULL), 0);
    struct cl_json *j = cl_json_parse(out);
    cr_assert_not_null(j, "%s", out);
    cr_assert_eq(j->type, CLJ_ARR);
    const struct cl_json *it = NULL;
    for (size_t k = 0; k < j->n; k++)
        if (strcmp(cl_json_str(&j->items[k], "sid"), r.sid) == 0)
            it = &j->items[k];
    cr_assert_not_null(it, "%s not in %s", r.sid, out);
    cr_assert_str_eq(cl_json_str(it, "user"), "alice");
    cr_assert_str_eq(cl_json_str(it, "login"), "root");
    cr_assert_str_eq(cl_json_str(it, "hostname"), "node-rec-1");
    cr_assert_str_eq(cl_json_str(it, "server_id"), host_id);
    cr_assert_eq(cl_json_u64(it, "chunks"), 3);
    cr_assert_eq(cl_json_get(it, "complete")->b, true);
    cr_assert_eq(cl_json_u64(it, "end") - cl_json_u64(it, "start"), 3500, "last event at 3.5 s");
    cl_json_free(j);
    free(out);
    cr_assert_eq(run_tctl(2, &out, "recordings", "ls", NULL), 0);
    cr_assert(strstr(out, r.sid) != NULL && strstr(out, "alice") != NULL, "%s", out);
    cr_assert(strstr(out, "3.5s") != NULL && strstr(out, "yes") != NULL, "%s", out);
    free(out);

    /* Exported, and read back by the real player. */
    char first[600], path[600];
    snprintf(first, sizeof first, "%s/first.cast", CL->dir);
    cr_assert_eq(export_on(1, r.sid, first), 0);
    size_t n;
    char *text = read_all(first, &n);
    size_t expect = strlen(r.chunks[0]) + strlen(r.chunks[1]) + strlen(r.chunks[2]);
    cr_assert_eq(n, expect, "the chunks' lines, concatenated");
    free(text);
    /* asciinema 2.2's cat opens /dev/tty: give it a terminal with script(1). */
    char cmd[700];
    snprintf(cmd, sizeof cmd, "/usr/bin/asciinema cat %s", first);
    char *play[] = {"/usr/bin/script", "-qec", cmd, "/dev/null", NULL};
    struct cl_run pr;
    cr_assert_eq(cl_run_argv(play, 30000, &pr), 0);
    cr_assert_eq(pr.status, 0, "asciinema cat: %s", pr.err);
    cr_assert(strstr(pr.out, r.marker) != NULL, "asciinema cat printed: %s", pr.out);
    cr_assert(strstr(pr.out, "hello") != NULL);
    cl_run_free(&pr);
    cr_assert(wait_until(20000, upload_audited, r.sid), "session.upload audited for %s", r.sid);

    /* The leader dies: the others still have it, byte for byte. */
    int li = node_by_raft_id(cluster_leader_id());
    cr_assert_neq(li, 0);
    node_kill9(li);
    for (int i = 1; i <= 3; i++) {
        if (i == li)
            continue;
        snprintf(path, sizeof path, "%s/after-leader-%d.cast", CL->dir, i);
        struct export_poll p = {i, r.sid, path};
        cr_assert(wait_until(30000, export_works, &p), "export from auth%d without the leader", i);
        assert_same_file(first, path);
    }

    /* The old leader comes back after the log moved on by more than the trailing
     * entries kept behind a snapshot (16): it can only catch up from a snapshot, which
     * must carry the recordings, old and new. */
    struct recording r2;
    make_recording(&r2);
    for (uint32_t seq = 0; seq < 3; seq++)
        cr_assert_eq(put_chunk(node, &r2, seq, &stored), 0, "%s", rp_errmsg());
    struct auth_client *admin = node_client(li == 1 ? 2 : 1);
    for (int k = 0; k < 40; k++) {
        char name[32];
        snprintf(name, sizeof name, "filler-%d", k);
        cr_assert_eq(cl_put(admin, "itest", name, "x"), 0, "%s", rp_errmsg());
    }
    auth_client_free(admin);
    node_restart(li);
    cr_assert_neq(cluster_wait_ready(0, 3, 0, 40000), 0);
    snprintf(path, sizeof path, "%s/restarted-%d.cast", CL->dir, li);
    struct export_poll p = {li, r.sid, path};
    cr_assert(wait_until(30000, export_works, &p), "export from the restarted auth%d", li);
    assert_same_file(first, path);
    cr_assert(node_log_contains(li, "restored a snapshot"), "auth%d caught up through a snapshot",
              li);

    auth_client_free(node);
    free_recording(&r);
    free_recording(&r2);
    cluster_pass();
}

Test(int_recordings, only_the_node_that_started_a_recording_may_upload_to_it)
{
    cluster_start(3);
    cr_assert(cl_wait_presets(20000));
    char host_a[40];
    struct auth_client *node = cl_node_identity_client(1, "node-a", host_a);
    struct auth_client *other = cl_node_identity_client(1, "node-b", NULL);
    struct recording r;
    make_recording(&r);
    bool stored;
    cr_assert_eq(put_chunk(node, &r, 0, &stored), 0, "%s", rp_errmsg());
    cr_assert_eq(put_chunk(other, &r, 1, &stored), RP_EDENIED, "another host: %s", rp_errmsg());
    cr_assert(strstr(rp_errmsg(), host_a) != NULL, "%s", rp_errmsg());

    /* A user with the access preset: no rec_put (Node only), no listing (its rule on
     * sessions has a where clause, which grants nothing unconditionally). */
    cl_make_identity("alice", "access");
    char *out = NULL, prefix[600], cert[700], key[700], cas[700];
    snprintf(prefix, sizeof prefix, "%s/alice-tls", CL->dir);
    char o[700];
    snprintf(o, sizeof o, "-o%s", prefix);
    cr_assert_eq(run_tctl(1, &out, "auth", "sign", "--user=alice", "--format=tls", o, NULL), 0);
    free(out);
    snprintf(cert, sizeof cert, "%s.crt", prefix);
    snprintf(key, sizeof key, "%s.key", prefix);
    snprintf(cas, sizeof cas, "%s.cas", prefix);
    SSL_CTX *ctx = NULL;
    cr_assert_eq(auth_load_client_ctx(cert, key, cas, &ctx), 0, "%s", rp_errmsg());
    const char *addr = CL->nodes[2].api_addr;
    struct auth_client *user = NULL;
    cr_assert_eq(auth_client_new(&user, ctx, &addr, 1), 0);
    SSL_CTX_free(ctx);
    cr_assert_eq(put_chunk(user, &r, 1, &stored), RP_EDENIED, "access user: %s", rp_errmsg());
    struct auth_reply reply;
    const msgpack_object *items;
    cr_assert_eq(auth_client_rec_list(user, NULL, &reply, &items), RP_EDENIED);
    /* Nor may an admin upload: recordings come from nodes. */
    struct auth_client *admin = node_client(1);
    cr_assert_eq(put_chunk(admin, &r, 1, &stored), RP_EDENIED, "admin: %s", rp_errmsg());
    /* An auditor may read. */
    cl_make_identity("carol", "auditor");
    cr_assert_eq(cl_tctl_as("carol", &out, "recordings", "ls", NULL), 0, "%s", out);
    cr_assert(strstr(out, r.sid) != NULL, "%s", out);
    free(out);

    /* What a chunk must be: one zstd frame of asciicast lines, header first. */
    struct rp_buf z;
    rp_buf_init(&z);
    struct recording r3;
    make_recording(&r3);
    cr_assert_eq(auth_client_rec_put(node, r3.sid, 0, "not zstd", 8, false, NULL, 0, NULL),
                 RP_EINVAL);
    compress_into(&z, r3.chunks[1], strlen(r3.chunks[1]), 3);
    struct rp_buf meta;
    rp_buf_init(&meta);
    struct auth_rec_meta m = {.user = "u", .login = "l", .hostname = "h", .start_ms = 1};
    cr_assert_eq(auth_rec_meta_encode(&m, &meta), 0);
    cr_assert_eq(
        auth_client_rec_put(node, r3.sid, 0, z.data, z.len, false, meta.data, meta.len, NULL),
        RP_EINVAL, "chunk 0 without the header");
    cr_assert(strstr(rp_errmsg(), "header") != NULL, "%s", rp_errmsg());
    compress_into(&z, r3.chunks[0], strlen(r3.chunks[0]), 3);
    cr_assert_eq(auth_client_rec_put(node, r3.sid, 0, z.data, z.len, false, NULL, 0, NULL),
                 RP_EINVAL, "chunk 0 without meta");
    cr_assert_eq(auth_client_rec_put(node, "not-a-sid", 1, z.data, z.len, false, NULL, 0, NULL),
                 RP_EINVAL);
    rp_buf_free(&z);
    rp_buf_free(&meta);

    auth_client_free(admin);
    auth_client_free(user);
    auth_client_free(node);
    auth_client_free(other);
    free_recording(&r);
    free_recording(&r3);
    cluster_pass();
}

/* Asciicast lines of about @n bytes of random hex text: compresses to about half. */
static char *hex_lines(size_t n, size_t *len)
{
    char *s = malloc(n + 256);
    cr_assert_not_null(s);
    size_t o = 0;
    double t = 0;
    uint8_t rnd[512];
    while (o < n) {
        cr_assert_eq(getrandom(rnd, sizeof rnd, 0), (ssize_t)sizeof rnd);
        t += 0.01;
        o += (size_t)sprintf(s + o, "[%.2f, \"o\", \"", t);
        for (size_t k = 0; k < sizeof rnd && o < n; k++)
            o += (size_t)sprintf(s + o, "%02x", rnd[k]);
        o += (size_t)sprintf(s + o, "\"]\n");
    }
    *len = o;
    return s;
}

Test(int_recordings, a_one_mib_chunk_goes_through_while_small_writes_keep_flowing)
{
    cluster_start(3);
    struct auth_client *node = cl_node_identity_client(1, "node-big", NULL);
    struct recording r;
    make_recording(&r);
    bool stored;
    cr_assert_eq(put_chunk(node, &r, 0, &stored), 0, "%s", rp_errmsg());

    /* A chunk just under the 1 MiB limit once compressed. */
    size_t plain_len = 0, target = 2000000;
    char *plain = NULL;
    struct rp_buf z;
    rp_buf_init(&z);
    for (int tries = 0; tries < 8; tries++) {
        free(plain);
        plain = hex_lines(target, &plain_len);
        compress_into(&z, plain, plain_len, 1);
        if (z.len <= AUTH_REC_MAX_COMPRESSED && z.len > AUTH_REC_MAX_COMPRESSED - (64 << 10))
            break;
        target = (size_t)((double)target * (AUTH_REC_MAX_COMPRESSED - (32 << 10)) / (double)z.len);
    }
    cr_assert_leq(z.len, AUTH_REC_MAX_COMPRESSED);
    cr_assert_gt(z.len, AUTH_REC_MAX_COMPRESSED - (64 << 10), "%zu bytes", z.len);

    cl_writer_start(1, "small");
    cl_sleep_ms(300);
    struct cl_writer_stats before, after;
    cl_writer_stop(&before);
    cl_writer_start(1, "small2");
    uint64_t t0 = cl_now_ms();
    for (uint32_t seq = 1; seq <= 4; seq++) {
        cr_assert_eq(auth_client_rec_put(node, r.sid, seq, z.data, z.len, false, NULL, 0, &stored),
                     0, "1 MiB chunk %u: %s", seq, rp_errmsg());
        cr_assert(stored);
    }
    uint64_t big_ms = cl_now_ms() - t0;
    cl_writer_stop(&after);
    cr_log_info("4 chunks of %zu bytes (%zu decompressed) in %llu ms; %u small writes meanwhile",
                z.len, plain_len, (unsigned long long)big_ms, after.ok);
    cr_assert_eq(after.failed, 0, "small writes failed: %s", after.first_error);
    cr_assert_geq(after.ok, 5, "small writes kept flowing: %u in %llu ms", after.ok,
                  (unsigned long long)big_ms);

    /* Read back as uploaded, from a follower's view of the leader. */
    struct auth_client *admin = node_client(2);
    struct auth_reply reply;
    struct auth_rec_chunk ch;
    cr_assert_eq(auth_client_rec_get(admin, r.sid, 3, false, &reply, &ch), 0, "%s", rp_errmsg());
    cr_assert_eq(ch.len, z.len);
    cr_assert_eq(memcmp(ch.data, z.data, z.len), 0);
    cr_assert_not(ch.complete);
    cr_assert_eq(ch.chunks, 5);
    auth_reply_free(&reply);

    /* One byte more than the limit is refused before Raft sees it. */
    uint8_t *too_big = malloc(AUTH_REC_MAX_COMPRESSED + 1);
    memset(too_big, 0, AUTH_REC_MAX_COMPRESSED + 1);
    cr_assert_neq(auth_client_rec_put(node, r.sid, 5, too_big, AUTH_REC_MAX_COMPRESSED + 1, false,
                                      NULL, 0, NULL),
                  0);
    free(too_big);
    /* An incomplete recording is not exported unless asked. */
    char path[600], *out = NULL;
    snprintf(path, sizeof path, "%s/partial.cast", CL->dir);
    cr_assert_neq(export_on(1, r.sid, path), 0);
    char o[700];
    snprintf(o, sizeof o, "-o%s", path);
    cr_assert_eq(run_tctl(1, &out, "recordings", "export", r.sid, o, "--partial", NULL), 0);
    free(out);
    size_t n;
    char *text = read_all(path, &n);
    cr_assert_eq(n, strlen(r.chunks[0]) + 4 * plain_len);
    free(text);

    auth_client_free(admin);
    auth_client_free(node);
    free(plain);
    rp_buf_free(&z);
    free_recording(&r);
    cluster_pass();
}

/* Recording ids that `tctl recordings ls --stale --format=json` on node @i shows,
 * into @out; false if tctl failed. */
static bool stale_list(int i, char *out, size_t n)
{
    char *text = NULL;
    out[0] = '\0';
    char cfg[600], tctl[600];
    snprintf(cfg, sizeof cfg, "%s", CL->nodes[i].cfg);
    snprintf(tctl, sizeof tctl, "%s/tctl", CL->build);
    char *argv[] = {tctl, "-c", cfg, "recordings", "ls", "--stale", "--format=json", NULL};
    struct cl_run r;
    if (cl_run_argv(argv, 20000, &r) != 0 || r.status != 0) {
        cl_run_free(&r);
        return false;
    }
    text = r.out;
    struct cl_json *j = cl_json_parse(text);
    bool ok = j != NULL && j->type == CLJ_ARR;
    for (size_t k = 0; ok && k < j->n; k++) {
        size_t len = strlen(out);
        snprintf(out + len, n - len, "%s ", cl_json_str(&j->items[k], "sid"));
    }
    cl_json_free(j);
    cl_run_free(&r);
    return ok;
}

struct budget_poll {
    int node;
    const char *gone, *kept;
};

static bool member_evicted(void *arg)
{
    struct budget_poll *p = arg;
    char list[1024];
    return stale_list(p->node, list, sizeof list) && strstr(list, p->gone) == NULL &&
           strstr(list, p->kept) != NULL;
}

Test(int_recordings, the_budget_drops_the_oldest_recording_on_every_member)
{
    cluster_start(3);
    /* auth_service.recordings.max_size: 1MiB on every member (appended to the
     * auth_service section the harness writes last), then a rolling restart. */
    for (int i = 1; i <= 3; i++) {
        FILE *f = fopen(CL->nodes[i].cfg, "a");
        cr_assert_not_null(f);
        fprintf(f, "  recordings:\n    max_size: 1MiB\n");
        cr_assert_eq(fclose(f), 0);
        node_term(i, 10000);
        node_restart(i);
        cr_assert_neq(cluster_wait_ready(0, 3, 0, 40000), 0, "after restarting auth%d", i);
    }
    struct auth_client *node = cl_node_identity_client(1, "node-budget", NULL);
    struct recording a, b;
    make_recording(&a);
    make_recording(&b);
    bool stored;
    cr_assert_eq(put_chunk(node, &a, 0, &stored), 0, "%s", rp_errmsg());
    cl_sleep_ms(5); /* b starts later than a */
    cr_assert_eq(put_chunk(node, &b, 0, &stored), 0, "%s", rp_errmsg());
    /* About 400 KiB compressed per chunk: a grows to ~800 KiB, then b's 400 KiB does
     * not fit 1 MiB beside it, and a, the oldest, goes. */
    size_t plain_len;
    char *plain = hex_lines(800000, &plain_len);
    struct rp_buf z;
    rp_buf_init(&z);
    compress_into(&z, plain, plain_len, 1);
    cr_assert(z.len > 300000 && z.len < 500000, "%zu bytes", z.len);
    cr_assert_eq(auth_client_rec_put(node, a.sid, 1, z.data, z.len, false, NULL, 0, &stored), 0,
                 "%s", rp_errmsg());
    cr_assert_eq(auth_client_rec_put(node, a.sid, 2, z.data, z.len, true, NULL, 0, &stored), 0,
                 "%s", rp_errmsg());
    char list[1024];
    cr_assert(stale_list(1, list, sizeof list));
    cr_assert(strstr(list, a.sid) != NULL && strstr(list, b.sid) != NULL, "%s", list);
    cr_assert_eq(auth_client_rec_put(node, b.sid, 1, z.data, z.len, false, NULL, 0, &stored), 0,
                 "%s", rp_errmsg());
    cr_assert(stored);
    for (int i = 1; i <= 3; i++) {
        struct budget_poll p = {i, a.sid, b.sid};
        cr_assert(wait_until(20000, member_evicted, &p), "auth%d dropped %s and kept %s", i, a.sid,
                  b.sid);
    }
    auth_client_free(node);
    free(plain);
    rp_buf_free(&z);
    free_recording(&a);
    free_recording(&b);
    cluster_pass();
}
