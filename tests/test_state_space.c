/* tests/test_state_space.c: the state database's disk grows with its data up to
 * its ceiling (state_opts.map_size), and at the ceiling writes are refused with
 * RP_ENOSPC before they are proposed instead of failing apply. With MDB_WRITEMAP
 * data.mdb is a sparse file of the map's size: what grows is its allocated
 * blocks, kept ahead of the pages in use (state__disk_reserve). */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "state/state.h"
#include "tests/lib/state_helpers.h"

TestSuite(state_space, .init = sth_setup, .fini = sth_teardown, .timeout = 60);

#define CEILING (4u << 20)
#define VALUE_LEN (32u << 10)

/* The bytes of disk data.mdb takes (its allocated blocks, not its length). */
static off_t data_size(const char *dir)
{
    char path[128];
    struct stat st;
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    cr_assert_eq(stat(path, &st), 0, "%s", path);
    return (off_t)st.st_blocks * 512;
}

/* A put of kind "blob", name @name, with a spec of VALUE_LEN bytes. */
static void make_put(struct rp_buf *cmd, const char *name, char fill)
{
    char *spec = malloc(VALUE_LEN + 1);
    cr_assert_not_null(spec);
    memset(spec, fill, VALUE_LEN);
    spec[VALUE_LEN] = '\0';
    struct rp_buf res;
    sth_make_res(&res, "blob", name, 0, NULL, spec);
    free(spec);
    sth_encode(cmd, (struct state_cmd){.op = "put", .rid = name}, &res);
    rp_buf_free(&res);
}

Test(state_space, the_file_grows_to_the_ceiling_then_writes_get_no_space)
{
    char dir[64];
    sth_make_tmpdir(dir);
    struct state_opts opts = {.map_size = CEILING};
    struct state *s = sth_open_state_in(dir, &opts);
    off_t start = data_size(dir);
    cr_assert_lt(start, CEILING / 4, "the file starts small (%lld bytes)", (long long)start);

    uint64_t index = 0;
    int refused = 0;
    for (int i = 0; i < 1000 && refused == 0; i++) {
        struct rp_buf cmd;
        char name[32];
        snprintf(name, sizeof name, "b%d", i);
        make_put(&cmd, name, (char)('a' + i % 26));
        refused = state_space_check(s, cmd.len);
        if (refused == 0) {
            struct state_result r = sth_apply_raw_to(s, ++index, cmd.data, cmd.len);
            cr_assert_eq(r.code, 0, "%s", r.message);
        }
        rp_buf_free(&cmd);
    }
    cr_assert_eq(refused, RP_ENOSPC, "the check refuses once the map is nearly full");
    cr_assert_not_null(strstr(rp_errmsg(), "max_map_size"), "%s", rp_errmsg());
    cr_assert_gt(index, 40, "most of the ceiling was usable (%llu writes of 32 KiB in 4 MiB)",
                 (unsigned long long)index);
    off_t end = data_size(dir);
    cr_assert_gt(end, 2 * start, "the file grew with the data (%lld -> %lld bytes)",
                 (long long)start, (long long)end);
    cr_assert_leq(
        end, CEILING + (64 << 10),
        "no more disk than the ceiling (and the file system's own blocks for the file): %lld bytes",
        (long long)end);
    /* Everything that was admitted is there. */
    cr_assert_eq(sth_count(s, "blob", NULL), index);

    /* Applying past the check: apply fails with RP_ENOSPC (Raft would retry the
     * entry) and changes nothing, never a half-written entry. */
    uint64_t applied = state_applied_index(s);
    size_t over_applied = 0;
    int rv = 0;
    for (int i = 0; i < 200 && rv == 0; i++) {
        struct rp_buf cmd;
        char name[32];
        struct state_result r;
        snprintf(name, sizeof name, "over%d", i);
        make_put(&cmd, name, 'z');
        rv = state_apply(s, applied + 1, cmd.data, cmd.len, &r);
        rp_buf_free(&cmd);
        if (rv == 0) {
            applied++;
            over_applied++;
        }
    }
    cr_assert_eq(rv, RP_ENOSPC, "a full map fails apply with no_space: %s", rp_errmsg());
    cr_assert_eq(state_applied_index(s), applied, "the failed entry is not applied");
    cr_assert_eq(sth_count(s, "blob", "over"), over_applied, "nothing of it was written");
    state_close(s);
}

/* The end of the allocated blocks of the file at @path that run without a gap from
 * offset 0 (FIEMAP: unwritten extents from fallocate count as allocated, as they do
 * for a store through the map; SEEK_HOLE would call them holes). */
static off_t allocated_from_start(const char *path)
{
    int fd = open(path, O_RDONLY);
    cr_assert_geq(fd, 0, "%s", path);
    size_t n = 256;
    struct fiemap *fm = calloc(1, sizeof *fm + n * sizeof(struct fiemap_extent));
    cr_assert_not_null(fm);
    fm->fm_start = 0;
    fm->fm_length = FIEMAP_MAX_OFFSET;
    fm->fm_flags = FIEMAP_FLAG_SYNC;
    fm->fm_extent_count = (uint32_t)n;
    cr_assert_eq(ioctl(fd, FS_IOC_FIEMAP, fm), 0, "FIEMAP on %s", path);
    close(fd);
    off_t end = 0;
    for (uint32_t i = 0; i < fm->fm_mapped_extents; i++) {
        const struct fiemap_extent *e = &fm->fm_extents[i];
        if ((off_t)e->fe_logical > end)
            break; /* a gap */
        end = (off_t)(e->fe_logical + e->fe_length);
    }
    free(fm);
    return end;
}

/* With MDB_WRITEMAP a store into a hole of data.mdb would take its block at the page
 * fault, and with the disk full that is SIGBUS: the blocks from the start of the file
 * to well past the data must be allocated, whatever has been written. */
Test(state_space, blocks_are_allocated_ahead_of_the_data)
{
    char dir[64], path[128];
    sth_make_tmpdir(dir);
    struct state *s = sth_open_state_in(dir, NULL); /* the default 8 GiB map */
    snprintf(path, sizeof path, "%s/data.mdb", dir);
    for (int i = 0; i < 100; i++) {
        struct rp_buf cmd;
        char name[32];
        snprintf(name, sizeof name, "b%d", i);
        make_put(&cmd, name, 'x');
        struct state_result r = sth_apply_raw_to(s, (uint64_t)i + 1, cmd.data, cmd.len);
        cr_assert_eq(r.code, 0, "%s", r.message);
        rp_buf_free(&cmd);
        struct stat st;
        cr_assert_eq(stat(path, &st), 0);
        off_t ahead = allocated_from_start(path);
        off_t written = (off_t)(i + 1) * VALUE_LEN;
        cr_assert_geq(ahead, written + (256 << 10),
                      "after %d puts of 32 KiB, blocks are allocated up to %lld only: no margin "
                      "of 256 KiB",
                      i + 1, (long long)ahead);
        cr_assert_lt(ahead, st.st_size / 64,
                     "the map's size is not all allocated (%lld of %lld bytes)", (long long)ahead,
                     (long long)st.st_size);
    }
    state_close(s);
}
