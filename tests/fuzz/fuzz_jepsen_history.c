/* tests/fuzz/fuzz_jepsen_history.c: Jepsen histories, JSON lines (jepsen/history.h),
 * and the checkers that read them (jepsen/check.h).
 *
 * jepsen-check reads history files that a run wrote, or that someone hands it; a
 * damaged or hostile file must give a message, not a crash or a wrong verdict. Each
 * input is read as a history and, whole, as one JSON document.
 *
 * Checked: a JSON value's canonical form parses and prints to itself; every op of an
 * accepted history describes itself as JSON that parses; invokes and completions are
 * paired both ways; and each checker, given a small time and memory budget, either
 * judges with a report that is valid JSON or says the history does not fit its model. */
#include "jepsen/check.h"
#include "jepsen/history.h"
#include "lib/buf.h"
#include "tests/fuzz/check.h"

static void check_json_text(const char *text, size_t len)
{
    struct jepsen_arena arena;
    struct jepsen_json v;
    jepsen_arena_init(&arena);
    FUZZ_CHECK(jepsen_json_parse(text, len, &arena, &v) == 0);
    jepsen_arena_free(&arena);
}

static void check_canonical(const struct jepsen_json *v)
{
    struct rp_buf once, twice;
    struct jepsen_arena arena;
    struct jepsen_json back;

    rp_buf_init(&once);
    rp_buf_init(&twice);
    jepsen_arena_init(&arena);
    FUZZ_CHECK(jepsen_json_canonical(v, &once) == 0);
    FUZZ_CHECK(jepsen_json_parse((const char *)once.data, once.len, &arena, &back) == 0);
    FUZZ_CHECK(jepsen_json_equal(v, &back));
    FUZZ_CHECK(jepsen_json_canonical(&back, &twice) == 0);
    FUZZ_CHECK(once.len == twice.len && memcmp(once.data, twice.data, once.len) == 0);
    jepsen_arena_free(&arena);
    rp_buf_free(&once);
    rp_buf_free(&twice);
}

typedef int (*checker_fn)(const struct jepsen_history *, const struct jepsen_check_opts *,
                          enum jepsen_verdict *, struct rp_buf *);

static void check_history(const struct jepsen_history *h)
{
    static const checker_fn checkers[] = {jepsen_check_register, jepsen_check_set,
                                          jepsen_check_watch, jepsen_check_unique};
    const struct jepsen_check_opts opts = {.time_limit_s = 0.25, .memory_limit = 64u << 20};
    struct rp_buf b;
    rp_buf_init(&b);

    for (size_t i = 0; i < h->n_ops; i++) {
        const struct jepsen_op *op = &h->ops[i];
        rp_buf_reset(&b);
        FUZZ_CHECK(jepsen_op_json(h, i, &b) == 0);
        check_json_text((const char *)b.data, b.len);
        check_canonical(op->obj);
        if (op->nemesis || op->peer == JEPSEN_NONE)
            continue;
        FUZZ_CHECK(op->peer < h->n_ops && h->ops[op->peer].peer == i);
        if (op->type == JEPSEN_INVOKE)
            FUZZ_CHECK(jepsen_history_completion(h, i) == &h->ops[op->peer]);
    }
    for (size_t i = 0; i < sizeof checkers / sizeof checkers[0]; i++) {
        enum jepsen_verdict verdict;
        rp_buf_reset(&b);
        if (checkers[i](h, &opts, &verdict, &b) == 0)
            check_json_text((const char *)b.data, b.len);
    }
    rp_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *)data;
    struct jepsen_history *h = NULL;

    if (jepsen_history_parse(text, size, &h) == 0) {
        check_history(h);
        jepsen_history_free(h);
    }

    struct jepsen_arena arena;
    struct jepsen_json v;
    jepsen_arena_init(&arena);
    if (jepsen_json_parse(text, size, &arena, &v) == 0)
        check_canonical(&v);
    jepsen_arena_free(&arena);
    return 0;
}
