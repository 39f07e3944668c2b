/* tests/fuzz/replay.h: turns a fuzz target into a Criterion test for `make test`.
 *
 * The Makefile compiles every tests/fuzz/fuzz_NAME.c a second time, with the normal
 * compiler and this header included first (-include), with FUZZ_NAME=NAME and the
 * libFuzzer entry points renamed (LLVMFuzzerTestOneInput -> fuzz_NAME_one,
 * LLVMFuzzerInitialize -> fuzz_NAME_init), and links them all into
 * build/tests/test_fuzz_replay. The test below, one per target and named after it,
 * runs every file of tests/fuzz/corpus/NAME/ and tests/fuzz/crashes/NAME/ through the
 * target (tests/test_fuzz_replay.c). Targets keep their helpers static so that they
 * link side by side. */
#ifndef RP_FUZZ_REPLAY_H
#define RP_FUZZ_REPLAY_H

#include <criterion/criterion.h>
#include <stddef.h>
#include <stdint.h>

typedef int (*fuzz_one_fn)(const uint8_t *data, size_t size);
typedef int (*fuzz_init_fn)(int *argc, char ***argv);

/* Runs @init (if not NULL) once, then every input of target @name through @one,
 * asserting that each returns 0 and finishes in time. */
void fuzz_replay_target(const char *name, fuzz_one_fn one, fuzz_init_fn init);

#endif

#ifdef FUZZ_NAME
#define FUZZ_STR2(x) #x
#define FUZZ_STR(x) FUZZ_STR2(x)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
/* Weak: a target need not define it, and then its address is NULL. */
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

Test(fuzz_replay, FUZZ_NAME, .timeout = 300)
{
    fuzz_replay_target(FUZZ_STR(FUZZ_NAME), LLVMFuzzerTestOneInput, LLVMFuzzerInitialize);
}
#endif
