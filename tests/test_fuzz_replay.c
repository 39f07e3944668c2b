/* tests/test_fuzz_replay.c: the fuzzers' seed corpora and crash reproducers, replayed.
 *
 * Each fuzz target (tests/fuzz/fuzz_NAME.c) is compiled into this binary with the
 * normal compiler and contributes one test, fuzz_replay::NAME (tests/fuzz/replay.h),
 * which runs here every file of tests/fuzz/corpus/NAME/ and tests/fuzz/crashes/NAME/.
 * A reproducer is kept once its bug is fixed, so the bug cannot come back unnoticed;
 * one whose fix is not in yet waits in crashes/NAME/pending/, which is skipped and
 * reported. Targets abort() when a property they check fails, so an input "fails" by
 * crashing; the file it crashed on is printed to stderr. docs/fuzzing.md has more.
 *
 * The inputs are found under $RP_FUZZ_DIR, by default tests/fuzz of the current
 * directory (make test runs from the repository root). */
#include "tests/fuzz/replay.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* One input may take this long; more means a hang (inputs are small). */
#define INPUT_DEADLINE_S 20.0

/* The input being run, printed if the process dies on it. */
static char g_current[PATH_MAX + 64];
static struct sigaction g_old[NSIG];

static void say_current(void)
{
    if (g_current[0] == '\0')
        return;
    static const char pre[] = "fuzz replay: died on input ";
    ssize_t ignored = write(STDERR_FILENO, pre, sizeof pre - 1);
    ignored = write(STDERR_FILENO, g_current, strlen(g_current));
    ignored = write(STDERR_FILENO, "\n", 1);
    (void)ignored;
}

/* Says which input it was, then hands the signal to the handler that was there before
 * (the sanitizer's, in the ASan build) or to the default action. */
static void on_fatal_signal(int sig, siginfo_t *info, void *ctx)
{
    say_current();
    struct sigaction *old = &g_old[sig];
    if ((old->sa_flags & SA_SIGINFO) && old->sa_sigaction != NULL) {
        old->sa_sigaction(sig, info, ctx);
        return;
    }
    if (old->sa_handler != SIG_DFL && old->sa_handler != SIG_IGN) {
        old->sa_handler(sig);
        return;
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

/* Sanitizers report most errors without a signal and call this before exiting. */
void __sanitizer_set_death_callback(void (*callback)(void)) __attribute__((weak));

static void catch_deaths(void)
{
    static const int sigs[] = {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT};
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_fatal_signal;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&sa.sa_mask);
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        sigaction(sigs[i], &sa, &g_old[sigs[i]]);
    if (__sanitizer_set_death_callback != NULL)
        __sanitizer_set_death_callback(say_current);
}

static const char *fuzz_dir(void)
{
    const char *d = getenv("RP_FUZZ_DIR");
    return d != NULL && *d != '\0' ? d : "tests/fuzz";
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files of @dir, sorted (*@n = 0 if @dir does not exist); the number of
 * files in its subdirectory "pending" goes to *@pending. */
static char **list_inputs(const char *dir, size_t *n, size_t *pending)
{
    char **names = NULL;
    size_t cap = 0;
    *n = 0;
    DIR *d = opendir(dir);
    if (d == NULL) {
        cr_assert_eq(errno, ENOENT, "cannot open %s: %s", dir, strerror(errno));
        return NULL;
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        char path[PATH_MAX];
        struct stat st;
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        cr_assert_eq(stat(path, &st), 0, "stat %s: %s", path, strerror(errno));
        if (S_ISDIR(st.st_mode) && strcmp(e->d_name, "pending") == 0 && pending != NULL) {
            size_t np = 0;
            char **p = list_inputs(path, &np, NULL);
            for (size_t i = 0; i < np; i++)
                free(p[i]);
            free(p);
            *pending += np;
            continue;
        }
        cr_assert(S_ISREG(st.st_mode), "%s: only input files belong here", path);
        if (*n == cap) {
            cap = cap ? cap * 2 : 64;
            names = realloc(names, cap * sizeof *names);
            cr_assert_not_null(names);
        }
        names[(*n)++] = strdup(path);
    }
    closedir(d);
    if (*n > 0)
        qsort(names, *n, sizeof *names, cmp_names);
    return names;
}

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Runs the file @path through @one from a buffer of exactly its size, so that the
 * sanitizers see a read past the end. */
static void run_input(const char *path, fuzz_one_fn one)
{
    FILE *f = fopen(path, "rb");
    cr_assert_not_null(f, "open %s: %s", path, strerror(errno));
    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    long len = ftell(f);
    cr_assert_geq(len, 0);
    rewind(f);
    uint8_t *data = malloc(len > 0 ? (size_t)len : 1);
    cr_assert_not_null(data);
    cr_assert_eq(fread(data, 1, (size_t)len, f), (size_t)len, "read %s", path);
    fclose(f);

    snprintf(g_current, sizeof g_current, "%s", path);
    double start = now_s();
    int rv = one(data, (size_t)len);
    double took = now_s() - start;
    g_current[0] = '\0';
    free(data);
    cr_assert_eq(rv, 0, "%s: the target returned %d", path, rv);
    cr_assert_lt(took, INPUT_DEADLINE_S, "%s took %.1f s (a hang?)", path, took);
}

static size_t run_dir(const char *dir, fuzz_one_fn one, size_t *pending)
{
    size_t n;
    char **inputs = list_inputs(dir, &n, pending);
    for (size_t i = 0; i < n; i++) {
        run_input(inputs[i], one);
        free(inputs[i]);
    }
    free(inputs);
    return n;
}

void fuzz_replay_target(const char *name, fuzz_one_fn one, fuzz_init_fn init)
{
    char corpus[PATH_MAX], crashes[PATH_MAX];
    size_t pending = 0;

    catch_deaths();
    if (init != NULL) {
        char arg0[] = "test_fuzz_replay";
        char *argv_buf[] = {arg0, NULL};
        char **argv = argv_buf;
        int argc = 1;
        cr_assert_eq(init(&argc, &argv), 0, "%s: LLVMFuzzerInitialize failed", name);
    }
    snprintf(corpus, sizeof corpus, "%s/corpus/%s", fuzz_dir(), name);
    snprintf(crashes, sizeof crashes, "%s/crashes/%s", fuzz_dir(), name);
    size_t n_corpus = run_dir(corpus, one, NULL);
    cr_assert_gt(n_corpus, 0,
                 "%s: no seed inputs in %s (run from the repository root or set "
                 "RP_FUZZ_DIR)",
                 name, corpus);
    size_t n_crashes = run_dir(crashes, one, &pending);
    cr_log_info("%s: %zu seed inputs and %zu crash reproducers replayed", name, n_corpus,
                n_crashes);
    /* Not cr_log_warn: Criterion makes the binary exit 1 after any warning. */
    if (pending > 0)
        fprintf(stderr,
                "fuzz replay: %s: %zu reproducer(s) of unfixed bugs in %s/pending not replayed\n",
                name, pending, crashes);
}
