/* tests/lib/jepsen_helpers.h: helpers of the jepsen/ checker tests: histories
 * written as short specs, run through a checker, and the JSON report read back.
 *
 * Every helper asserts (cr_assert) on unexpected failure, so it may only be
 * called from a Criterion test. */
#ifndef RP_TEST_JEPSEN_HELPERS_H
#define RP_TEST_JEPSEN_HELPERS_H

#include <stdbool.h>
#include <stdint.h>

#include "jepsen/check.h"
#include "jepsen/history.h"
#include "lib/buf.h"

/* Turns lines "PROCESS TYPE F [KEY [VALUE]]" into a JSON-lines history: "n" as
 * process is the nemesis, "_" leaves KEY out; index and time count up. Returns
 * a NUL-terminated string the caller frees with free(). */
char *jth_spec_to_jsonl(const char *spec);

/* The report of checking a history with a checker, parsed; the verdict in v.
 * Owns its text and arena: release with jth_result_free. */
struct jth_result {
    enum jepsen_verdict v;
    struct rp_buf text;
    struct jepsen_arena arena;
    struct jepsen_json root;
};

/* A checker with the signature of jepsen_check_set, jepsen_check_unique, ... */
typedef int (*jth_checker_fn)(const struct jepsen_history *, const struct jepsen_check_opts *,
                              enum jepsen_verdict *, struct rp_buf *);

/* Checks the JSON-lines history @jsonl (borrowed) with @fn into @r (caller frees with
 * jth_result_free). */
void jth_run_jsonl(jth_checker_fn fn, const char *jsonl, struct jth_result *r);
/* jth_run_jsonl on jth_spec_to_jsonl(@spec). */
void jth_run_spec(jth_checker_fn fn, const char *spec, struct jth_result *r);
/* Asserts that checking @spec with @fn fails with RP_EINVAL and a message containing @needle. */
void jth_refused_spec(jth_checker_fn fn, const char *spec, const char *needle);
/* Frees what @r owns (not @r itself). */
void jth_result_free(struct jth_result *r);

/* Report field @name of @r (borrowed from r's arena); asserts it is there. */
const struct jepsen_json *jth_field(const struct jth_result *r, const char *name);
/* Report field @name of @r, which must be an integer. */
int64_t jth_count(const struct jth_result *r, const char *name);
/* Asserts that the canonical JSON of report field @name of @r equals @want. */
void jth_field_is(const struct jth_result *r, const char *name, const char *want);
/* Whether the JSON array of strings @warnings has one starting with @prefix. */
bool jth_warnings_have(const struct jepsen_json *warnings, const char *prefix);
/* Whether the report's "warnings" (which must be there) has one starting with @prefix. */
bool jth_has_warning(const struct jth_result *r, const char *prefix);

#endif
