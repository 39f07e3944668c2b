/* tests/lib/lsan_runner.c: LeakSanitizer suppressions for Criterion's runner process.
 *
 * Every test binary is two kinds of process: the runner (Criterion's main, which runs
 * none of our code) and one child per test (boxfort re-executes the binary with
 * BXFI_MAP in its environment), where the test, its fixtures and everything they call
 * run. The runner's timeout watchdog (boxfort's bxfi_push_timeout, used by every test
 * with .timeout) loses a 48-byte request now and then when tests run in parallel, and
 * LeakSanitizer then fails the whole binary at exit.
 *
 * A suppressions file in LSAN_OPTIONS cannot say "only there": LeakSanitizer matches a
 * pattern against every frame of a leak's stack, and the stack of a leak made by a
 * test runs through libcriterion's criterion_internal_test_main, so "libcriterion"
 * would hide our own leaks too. Hence this hook: the runner suppresses leaks from
 * libcriterion's frames, the test children suppress nothing. LeakSanitizer reads it
 * when it checks for leaks at exit; builds without the sanitizer never call it. */
#include <stdlib.h>

const char *__lsan_default_suppressions(void);

const char *__lsan_default_suppressions(void)
{
    if (getenv("BXFI_MAP") != NULL)
        return ""; /* a test child: every leak counts */
    return "leak:libcriterion.so\n";
}
