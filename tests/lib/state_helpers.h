/* tests/lib/state_helpers.h: the fixture and helpers of the state/ unit tests:
 * temp dirs, an open state, building resources and commands, applying them and
 * reading the results back.
 *
 * Use the fixture through a suite:
 *
 *   TestSuite(state_apply, .init = sth_setup, .fini = sth_teardown, .timeout = 60);
 *
 * Every helper asserts (cr_assert) on unexpected failure, so it may only be
 * called from a Criterion test or fixture. Commands made by sth_put_to and
 * sth_del carry the request id "r<index>". */
#ifndef RP_TEST_STATE_HELPERS_H
#define RP_TEST_STATE_HELPERS_H

#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "state/state.h"

/* The directory sth_setup made and the state it opened there (closed by sth_teardown). */
extern char sth_tmpdir[64];
extern struct state *sth_state;

/* Fixture: makes sth_tmpdir and opens sth_state in it with default options. */
void sth_setup(void);
/* Fixture: closes sth_state and removes every dir sth_make_tmpdir made, even after a failure. */
void sth_teardown(void);

/* Removes @dir and everything below it (errors ignored). */
void sth_remove_tree(const char *dir);
/* Makes a fresh /tmp/rp_state_test_XXXXXX in @dir (>= 64 bytes); sth_teardown removes it. */
void sth_make_tmpdir(char *dir);
/* Opens a state in @dir with @opts (NULL: defaults); the caller closes it with state_close. */
struct state *sth_open_state_in(const char *dir, const struct state_opts *opts);

/* Packs into @b (initialised here, caller frees) a resource kind/name with
 * metadata.expires @expires if != 0, labels {"env": @env} if @env != NULL, and
 * spec {"v": @spec} (@spec NULL: ""). */
void sth_make_res(struct rp_buf *b, const char *kind, const char *name, uint64_t expires,
                  const char *env, const char *spec);
/* Encodes @c, with @res (may be NULL) as its resource, into @out (initialised here, caller frees).
 */
void sth_encode(struct rp_buf *out, struct state_cmd c, const struct rp_buf *res);

/* Applies the encoded command @cmd/@len to @s at @index; the result (messages
 * point into @s, valid until its next call) is returned, state_apply must return 0. */
struct state_result sth_apply_raw_to(struct state *s, uint64_t index, const void *cmd, size_t len);
/* Encodes @c (with @res, may be NULL) and applies it to @s at @index. */
struct state_result sth_apply_to(struct state *s, uint64_t index, struct state_cmd c,
                                 const struct rp_buf *res);
/* sth_apply_to on sth_state. */
struct state_result sth_apply_cmd(uint64_t index, struct state_cmd c, const struct rp_buf *res);
/* Applies @op ("put", "create", ...) of resource kind/name (expiry @expires, 0:
 * none; spec @spec) to @s at @index under request id "r<index>". */
struct state_result sth_put_to(struct state *s, uint64_t index, const char *op, const char *kind,
                               const char *name, uint64_t expires, const char *spec);
/* sth_put_to(sth_state, @index, "put", @kind, @name, 0, @spec). */
struct state_result sth_put(uint64_t index, const char *kind, const char *name, const char *spec);
/* Applies a delete of kind/name to sth_state at @index under request id "r<index>". */
struct state_result sth_del(uint64_t index, const char *kind, const char *name);

/* The metadata.revision of the stored resource in @b. */
uint64_t sth_res_revision(const struct rp_buf *b);
/* Copies spec.v of the stored resource @p/@n into @out (NUL-terminated, truncated to @outlen). */
void sth_res_spec(const void *p, size_t n, char *out, size_t outlen);
/* 0 with spec.v of kind/name in @out and (if @rev != NULL) its revision in *@rev,
 * or the negative state_get error with @out untouched. */
int sth_get_spec_in(struct state *s, const char *kind, const char *name, char *out, size_t outlen,
                    uint64_t *rev);
/* sth_get_spec_in on sth_state. */
int sth_get_spec(const char *kind, const char *name, char *out, size_t outlen, uint64_t *rev);

/* state_list callback: appends the resource to the struct rp_buf @arg, prefixed
 * by its length as a big-endian u32. */
int sth_dump_cb(void *arg, const void *res, size_t len);
/* Every resource of @s, length-prefixed, in key order, into @out (initialised here, caller frees).
 */
void sth_dump(struct state *s, struct rp_buf *out);
/* How many resources of @s match @kind and @prefix (NULL: any). */
size_t sth_count(struct state *s, const char *kind, const char *prefix);

#endif
