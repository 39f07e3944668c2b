/* tests/test_tsh.c: tsh's local parts: profiles on disk (layout, modes, errors),
 * flag parsing with global flags among a command's, label filters, the QR code
 * drawing, the version warning, and asciicast decoding for tsh play. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tsh/tsh.h"

static char home[256];

static void make_home(void)
{
    snprintf(home, sizeof home, "/tmp/test_tsh.XXXXXX");
    cr_assert_not_null(mkdtemp(home));
}

static void rm_home(void)
{
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", home);
    cr_assert_eq(system(cmd), 0);
}

static unsigned mode_of(const char *path)
{
    struct stat st;
    cr_assert_eq(stat(path, &st), 0, "%s missing", path);
    return st.st_mode & 0777;
}

/* A profile of user alice with real keys and a certificate valid for @ttl_s seconds
 * (negative: already expired) with roles access and dev, written as tsh login does. */
static void write_profile(const char *proxy, long ttl_s, uint64_t valid_before_ms)
{
    struct tsh_profile p;
    memset(&p, 0, sizeof p);
    snprintf(p.proxy, sizeof p.proxy, "%s", proxy);
    snprintf(p.user, sizeof p.user, "alice");
    snprintf(p.cluster, sizeof p.cluster, "example");
    snprintf(p.logins[0], TSH_NAME_MAX, "root");
    snprintf(p.logins[1], TSH_NAME_MAX, "al ice \"quoted\"");
    p.n_logins = 2;
    p.valid_before_ms = valid_before_ms;
    cr_assert_eq(tsh_profile_set_paths(&p, home), 0, "%s", rp_errmsg());

    EVP_PKEY *ca_key = NULL, *ssh_key = NULL, *tls_key = rp_tls_keygen();
    X509 *ca = NULL, *cert = NULL;
    cr_assert_eq(rp_tls_ca_create("example", &ca_key, &ca), 0);
    cr_assert_eq(rp_tls_ca_pin(ca, p.ca_pin, sizeof p.ca_pin), 0);
    char *groups[] = {"access", "dev"}, *logins[] = {"root"};
    struct rp_identity id = {.name = "alice",
                             .groups = groups,
                             .n_groups = 2,
                             .logins = logins,
                             .n_logins = 1,
                             .cluster = "example"};
    cr_assert_eq(rp_tls_issue(ca_key, ca, tls_key, &id, NULL, 0, ttl_s > 0 ? ttl_s : 60, &cert), 0,
                 "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &ssh_key), 0);
    char *priv = NULL, *pem = NULL, *ca_pem = NULL, *key_pem = NULL;
    cr_assert_eq(rp_ssh_privkey_format(ssh_key, "alice", &priv), 0);
    cr_assert_eq(rp_tls_cert_to_pem(cert, &pem), 0);
    cr_assert_eq(rp_tls_cert_to_pem(ca, &ca_pem), 0);
    cr_assert_eq(rp_tls_key_to_pem(tls_key, &key_pem), 0);
    cr_assert_eq(tsh_write_private(p.key_path, priv, strlen(priv)), 0);
    cr_assert_eq(tsh_write_private(p.pub_path, "x\n", 2), 0);
    cr_assert_eq(tsh_write_private(p.cert_path, "x\n", 2), 0);
    cr_assert_eq(tsh_write_private(p.x509_path, pem, strlen(pem)), 0);
    cr_assert_eq(tsh_write_private(p.tls_key_path, key_pem, strlen(key_pem)), 0);
    cr_assert_eq(tsh_write_private(p.ca_path, ca_pem, strlen(ca_pem)), 0);
    cr_assert_eq(tsh_write_private(p.known_hosts_path, "", 0), 0);
    cr_assert_eq(tsh_profile_save(&p), 0, "%s", rp_errmsg());
    free(priv);
    free(pem);
    free(ca_pem);
    free(key_pem);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(ssh_key);
    EVP_PKEY_free(tls_key);
    X509_free(ca);
    X509_free(cert);
}

TestSuite(tsh_profile, .init = make_home, .fini = rm_home);

Test(tsh_profile, saved_profile_loads_back_with_roles_from_the_certificate)
{
    uint64_t vb = (rp_now_ms() / 1000 + 3600) * 1000;
    write_profile("proxy.example.com:3080", 3600, vb);
    struct tsh_profile p;
    cr_assert_eq(tsh_profile_load(home, NULL, &p), 0, "%s", rp_errmsg());
    cr_assert_str_eq(p.proxy, "proxy.example.com:3080");
    cr_assert_str_eq(p.user, "alice");
    cr_assert_str_eq(p.cluster, "example");
    cr_assert_eq(p.valid_before_ms, vb);
    cr_assert_eq(p.n_logins, 2);
    cr_assert_str_eq(p.logins[1], "al ice \"quoted\"");
    cr_assert_eq(p.n_roles, 2);
    cr_assert_str_eq(p.roles[0], "access");
    cr_assert_str_eq(p.roles[1], "dev");
    cr_assert(strncmp(p.ca_pin, "sha256:", 7) == 0);
    char want[512];
    snprintf(want, sizeof want, "%s/keys/proxy.example.com:3080/alice-x509.pem", home);
    cr_assert_str_eq(p.x509_path, want);
    snprintf(want, sizeof want, "%s/keys/proxy.example.com:3080/cas/example.pem", home);
    cr_assert_str_eq(p.ca_path, want);
    SSL_CTX *ctx = tsh_profile_tls_ctx(&p);
    cr_assert_not_null(ctx, "%s", rp_errmsg());
    SSL_CTX_free(ctx);
}

Test(tsh_profile, files_are_0600_and_directories_0700)
{
    write_profile("p:3080", 3600, rp_now_ms() + 3600000);
    struct tsh_profile p;
    cr_assert_eq(tsh_profile_load(home, "p:3080", &p), 0, "%s", rp_errmsg());
    const char *files[] = {p.key_path,     p.pub_path, p.cert_path,       p.x509_path,
                           p.tls_key_path, p.ca_path,  p.known_hosts_path};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
        cr_assert_eq(mode_of(files[i]), 0600, "%s is %o", files[i], mode_of(files[i]));
    char path[TSH_PATH_MAX + 16];
    snprintf(path, sizeof path, "%s/p:3080.yaml", home);
    cr_assert_eq(mode_of(path), 0600);
    snprintf(path, sizeof path, "%s/current-profile", home);
    cr_assert_eq(mode_of(path), 0600);
    snprintf(path, sizeof path, "%s/keys", home);
    cr_assert_eq(mode_of(path), 0700);
    cr_assert_eq(mode_of(p.dir), 0700);
    snprintf(path, sizeof path, "%s/cas", p.dir);
    cr_assert_eq(mode_of(path), 0700);
}

Test(tsh_profile, no_profile_says_not_logged_in_and_how_to_log_in)
{
    struct tsh_profile p;
    cr_assert_eq(tsh_profile_load(home, NULL, &p), RP_ENOTFOUND);
    cr_assert(strstr(rp_errmsg(), "not logged in: run tsh login --proxy=HOST:PORT --user=NAME"),
              "%s", rp_errmsg());
    cr_assert_eq(tsh_profile_load(home, "other:3080", &p), RP_ENOTFOUND);
    cr_assert(strstr(rp_errmsg(), "tsh login --proxy=other:3080"), "%s", rp_errmsg());
}

Test(tsh_profile, expired_certificate_names_the_time_and_the_login_command)
{
    uint64_t vb = (rp_now_ms() / 1000 - 60) * 1000;
    write_profile("p:3080", 3600, vb);
    struct tsh_profile p;
    cr_assert_eq(tsh_profile_load(home, NULL, &p), RP_EDENIED);
    char when[40], want[256];
    rp_format_time(vb, when, sizeof when);
    snprintf(want, sizeof want,
             "your certificate expired at %s: run tsh login --proxy=p:3080 --user=alice", when);
    cr_assert_str_eq(rp_errmsg(), want);
    /* Filled all the same, so that a caller can log in again. */
    cr_assert_str_eq(p.proxy, "p:3080");
    cr_assert_str_eq(p.user, "alice");
}

Test(tsh_profile, missing_key_file_asks_for_a_new_login)
{
    write_profile("p:3080", 3600, rp_now_ms() + 3600000);
    struct tsh_profile p;
    cr_assert_eq(tsh_profile_load(home, NULL, &p), 0);
    cr_assert_eq(unlink(p.tls_key_path), 0);
    cr_assert_eq(tsh_profile_load(home, NULL, &p), RP_ENOTFOUND);
    cr_assert(strstr(rp_errmsg(), "run tsh login --proxy=p:3080 --user=alice again"), "%s",
              rp_errmsg());
}

Test(tsh_profile, corrupt_profile_names_the_file)
{
    write_profile("p:3080", 3600, rp_now_ms() + 3600000);
    char path[512];
    snprintf(path, sizeof path, "%s/p:3080.yaml", home);
    cr_assert_eq(rp_write_file(path, "proxy: [unclosed\n", 17, 0600), 0);
    struct tsh_profile p;
    cr_assert_eq(tsh_profile_load(home, NULL, &p), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "p:3080.yaml"), "%s", rp_errmsg());
}

Test(tsh_profile, remove_deletes_keys_profile_and_current)
{
    write_profile("a:3080", 3600, rp_now_ms() + 3600000);
    write_profile("b:3080", 3600, rp_now_ms() + 3600000); /* now current */
    char removed[64], cur[64], path[512];
    cr_assert_eq(tsh_profile_remove(home, "a:3080", removed, sizeof removed), 0, "%s", rp_errmsg());
    cr_assert_str_eq(removed, "a:3080");
    snprintf(path, sizeof path, "%s/keys/a:3080", home);
    cr_assert_not(rp_file_exists(path));
    cr_assert_eq(tsh_profile_current(home, cur, sizeof cur), 0);
    cr_assert_str_eq(cur, "b:3080", "removing another profile keeps the current one");
    cr_assert_eq(tsh_profile_remove(home, NULL, removed, sizeof removed), 0);
    cr_assert_str_eq(removed, "b:3080");
    cr_assert_eq(tsh_profile_current(home, cur, sizeof cur), RP_ENOTFOUND);
    snprintf(path, sizeof path, "%s/b:3080.yaml", home);
    cr_assert_not(rp_file_exists(path));
    cr_assert_eq(tsh_profile_remove(home, NULL, removed, sizeof removed), RP_ENOTFOUND);
}

Test(tsh_profile, proxy_names_that_are_paths_are_refused)
{
    static const char *bad[] = {"../x:1", "a/b:1", ".hidden:1", "", "a b:1"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(tsh_check_proxy_name(bad[i]), RP_EINVAL, "'%s' accepted", bad[i]);
    cr_assert_eq(tsh_check_proxy_name("proxy.example.com:3080"), 0);
    cr_assert_eq(tsh_check_proxy_name("[::1]:3080"), 0);
}

/* ---- flags -------------------------------------------------------------------------- */

enum { O_FORMAT = 256 };

/* Parses @argv as a command with --format, returning the exit status (-1: go on). */
static int parse(struct tsh_globals *g, int argc, char **argv, const char **format, bool stop,
                 int *nargs)
{
    static const struct option own[] = {{"format", required_argument, NULL, O_FORMAT},
                                        {NULL, 0, NULL, 0}};
    struct tsh_flags f;
    char **args;
    int c;
    g->verb_words = "ls";
    g->verb_synopsis = "[--format=F]";
    tsh_flags_init(&f, g, argc, argv, own, "f:", stop);
    while ((c = tsh_flags_next(&f)) > 0) {
        if (c == O_FORMAT || c == 'f')
            *format = optarg;
    }
    return tsh_flags_done(&f, c, 0, -1, &args, nargs);
}

Test(tsh_flags, global_flags_are_taken_among_a_commands_flags)
{
    struct tsh_globals g = {0};
    const char *format = NULL;
    int nargs;
    char *argv[] = {"tsh ls",
                    "env=prod",
                    "--proxy=p.example.com:3080",
                    "--format=json",
                    "--user",
                    "bob",
                    "--insecure",
                    "--skip-version-check",
                    NULL};
    cr_assert_eq(parse(&g, 8, argv, &format, false, &nargs), -1);
    cr_assert_str_eq(g.proxy, "p.example.com:3080");
    cr_assert_str_eq(g.user, "bob");
    cr_assert(g.insecure && g.skip_version_check);
    cr_assert_str_eq(format, "json");
    cr_assert_eq(nargs, 1);
}

Test(tsh_flags, stop_at_arg_leaves_the_remote_commands_flags_alone)
{
    struct tsh_globals g = {0};
    const char *format = NULL;
    int nargs;
    char *argv[] = {"tsh ssh", "--proxy=p:3080", "node", "ls", "--format=x", NULL};
    cr_assert_eq(parse(&g, 5, argv, &format, true, &nargs), -1);
    cr_assert_str_eq(g.proxy, "p:3080");
    cr_assert_null(format);
    cr_assert_eq(nargs, 3);
}

Test(tsh_flags, bad_values_and_unknown_flags_are_usage_errors)
{
    const char *format = NULL;
    int nargs;
    struct tsh_globals g = {0};
    char *a1[] = {"tsh ls", "--proxy=no-port", NULL};
    cr_assert_eq(parse(&g, 2, a1, &format, false, &nargs), 2);
    char *a2[] = {"tsh ls", "--ca-pin=sha256:abc", NULL};
    cr_assert_eq(parse(&g, 2, a2, &format, false, &nargs), 2);
    char *a3[] = {"tsh ls", "--bogus", NULL};
    cr_assert_eq(parse(&g, 2, a3, &format, false, &nargs), 2);
    char *a4[] = {"tsh ls", "--format", NULL};
    cr_assert_eq(parse(&g, 2, a4, &format, false, &nargs), 2);
    char *a5[] = {"tsh ls", "--insecure=yes", NULL};
    cr_assert_eq(parse(&g, 2, a5, &format, false, &nargs), 2);
    char pin[96];
    snprintf(pin, sizeof pin, "--ca-pin=sha256:%064d", 0);
    char *a6[] = {"tsh ls", pin, NULL};
    cr_assert_eq(parse(&g, 2, a6, &format, false, &nargs), -1);
    cr_assert_str_eq(g.ca_pin, pin + 9);
}

/* ---- label filters ------------------------------------------------------------------ */

Test(tsh_labels, filter_needs_every_pair)
{
    struct tsh_label_filter f = {0};
    cr_assert_eq(tsh_label_filter_parse("env=prod,team=db", &f), 0, "%s", rp_errmsg());
    cr_assert_eq(tsh_label_filter_parse("os=", &f), 0);
    cr_assert_eq(f.n, 3);
    json_t *yes =
        json_pack("{s:s, s:s, s:s, s:s}", "env", "prod", "team", "db", "os", "", "x", "y");
    json_t *no = json_pack("{s:s, s:s, s:s}", "env", "prod", "team", "web", "os", "");
    json_t *missing = json_pack("{s:s, s:s}", "env", "prod", "team", "db");
    cr_assert(tsh_labels_match(&f, yes));
    cr_assert_not(tsh_labels_match(&f, no));
    cr_assert_not(tsh_labels_match(&f, missing));
    struct tsh_label_filter none = {0};
    cr_assert(tsh_labels_match(&none, no), "no filter matches every node");
    cr_assert(tsh_labels_match(&none, NULL));
    json_decref(yes);
    json_decref(no);
    json_decref(missing);
}

Test(tsh_labels, malformed_filters_are_refused)
{
    static const char *bad[] = {"env", "=prod", "env=prod,", "", "a=b,,c=d"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        struct tsh_label_filter f = {0};
        cr_assert_eq(tsh_label_filter_parse(bad[i], &f), RP_EINVAL, "'%s' accepted", bad[i]);
    }
    struct tsh_label_filter f = {0};
    for (int i = 0; i < TSH_MAX_LABEL_FILTERS; i++)
        cr_assert_eq(tsh_label_filter_parse("k=v", &f), 0);
    cr_assert_eq(tsh_label_filter_parse("k=v", &f), RP_EINVAL);
}

/* ---- QR codes ----------------------------------------------------------------------- */

#define FULL "\xE2\x96\x88"
#define UPPER "\xE2\x96\x80"
#define LOWER "\xE2\x96\x84"

/* The glyph at column @x of line @y as 0 (blank), 1 (upper), 2 (lower), 3 (full). */
static int glyph_at(const char *text, int y, int x)
{
    const char *p = text;
    for (int i = 0; i < y; i++)
        p = strchr(p, '\n') + 1;
    for (int i = 0; i < x; i++)
        p += *p == ' ' ? 1 : 3;
    if (*p == ' ')
        return 0;
    if (strncmp(p, UPPER, 3) == 0)
        return 1;
    if (strncmp(p, LOWER, 3) == 0)
        return 2;
    cr_assert(strncmp(p, FULL, 3) == 0, "unexpected byte at %d,%d", y, x);
    return 3;
}

Test(tsh_qr, otpauth_uri_renders_as_half_blocks_with_finder_patterns)
{
    const char *uri = "otpauth://totp/example:alice?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer="
                      "example&algorithm=SHA1&digits=6&period=30";
    struct rp_buf out;
    rp_buf_init(&out);
    cr_assert_eq(tsh_qr_render(uri, &out), 0, "%s", rp_errmsg());
    rp_buf_append(&out, "", 1);
    const char *text = (const char *)out.data;
    /* Every line has the same number of glyphs: width + 2 quiet modules each side. */
    int lines = 0, width = -1;
    for (const char *p = text; *p; lines++) {
        const char *nl = strchr(p, '\n');
        cr_assert_not_null(nl);
        int glyphs = 0;
        for (const char *q = p; q < nl; glyphs++)
            q += *q == ' ' ? 1 : 3;
        if (width < 0)
            width = glyphs;
        cr_assert_eq(glyphs, width, "line %d has %d glyphs, not %d", lines, glyphs, width);
        p = nl + 1;
    }
    int modules = width - 4;
    cr_assert(modules >= 21 && (modules - 17) % 4 == 0, "%d modules is not a QR size", modules);
    cr_assert_eq(lines, (width + 1) / 2);
    /* The quiet zone: the first line is all light. */
    for (int x = 0; x < width; x++)
        cr_assert_eq(glyph_at(text, 0, x), 3);
    /* Line 1 holds module rows 0 and 1: the top-left finder's dark border (blank) from
     * column 2 for 7 modules; column 1 is quiet zone (light). */
    cr_assert_eq(glyph_at(text, 1, 1), 3);
    for (int x = 2; x < 9; x++)
        cr_assert_eq(glyph_at(text, 1, x), x == 2 || x == 8 ? 0 : 2, "finder row 0/1 at column %d",
                     x);
    /* The top-right finder likewise ends two modules before the edge. */
    cr_assert_eq(glyph_at(text, 1, width - 3), 0);
    rp_buf_free(&out);
}

/* ---- versions ----------------------------------------------------------------------- */

Test(tsh_version, warns_when_client_is_older_than_the_minimum)
{
    char w[1024];
    cr_assert(tsh_version_warning("1.2.0", "3.0.0", "2.0.0", w, sizeof w));
    cr_assert(strstr(w, "Minimum client version supported by the server is 2.0.0 but you are "
                        "using 1.2.0."),
              "%s", w);
    cr_assert(strstr(w, "Please upgrade tsh to 2.0.0 or newer or use the --skip-version-check "
                        "flag to bypass this check."),
              "%s", w);
    const char *head = "WARNING\nDetected potentially incompatible client and server versions.\n";
    cr_assert(strncmp(w, head, strlen(head)) == 0, "%s", w);
}

Test(tsh_version, warns_when_client_is_on_a_newer_major)
{
    char w[1024];
    cr_assert(tsh_version_warning("2.0.0", "1.4.2", "0.0.0", w, sizeof w));
    cr_assert(strstr(w, "Maximum client version supported by the server is 1.x.x but you are "
                        "using 2.0.0."),
              "%s", w);
}

Test(tsh_version, same_major_and_one_behind_are_quiet)
{
    char w[1024];
    cr_assert_not(tsh_version_warning("1.9.0", "1.2.0", "0.0.0", w, sizeof w),
                  "a newer minor gets no warning");
    cr_assert_not(tsh_version_warning("1.0.0", "2.3.0", "1.0.0", w, sizeof w));
    cr_assert_not(tsh_version_warning("0.1.0", "0.1.0", "", w, sizeof w));
    cr_assert_str_eq(w, "");
    /* Without min_client_version the rule of lib/version.h applies. */
    cr_assert(tsh_version_warning("1.0.0", "3.0.0", NULL, w, sizeof w));
}

/* ---- asciicast ----------------------------------------------------------------------- */

static const char cast[] = "{\"version\":2,\"width\":80,\"height\":24,\"timestamp\":1700000000}\n"
                           "[0.01,\"o\",\"$ echo hi\\r\\n\"]\n"
                           "[0.02,\"i\",\"typed\"]\n"
                           "[0.03,\"r\",\"100x30\"]\n"
                           "[0.04,\"o\",\"hi\\r\\n\\u00e9\"]\n";

static char *play(enum tsh_play_format format, const char *text, size_t len, int *rv)
{
    char *buf = NULL;
    size_t n = 0;
    FILE *out = open_memstream(&buf, &n);
    *rv = tsh_play_cast(text, len, format, 16, out);
    fclose(out);
    return buf;
}

Test(tsh_play, pty_writes_only_output_events)
{
    int rv;
    char *out = play(TSH_PLAY_PTY, cast, strlen(cast), &rv);
    cr_assert_eq(rv, 0, "%s", rp_errmsg());
    cr_assert_str_eq(out, "$ echo hi\r\nhi\r\n\xc3\xa9");
    free(out);
}

Test(tsh_play, json_lists_every_event_with_the_header)
{
    int rv;
    char *out = play(TSH_PLAY_JSON, cast, strlen(cast), &rv);
    cr_assert_eq(rv, 0, "%s", rp_errmsg());
    json_error_t e;
    json_t *doc = json_loads(out, 0, &e);
    cr_assert_not_null(doc, "%s", e.text);
    cr_assert_eq(json_integer_value(json_object_get(json_object_get(doc, "header"), "width")), 80);
    json_t *events = json_object_get(doc, "events");
    cr_assert_eq(json_array_size(events), 4);
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(events, 1), "type")), "i");
    cr_assert_str_eq(json_string_value(json_object_get(json_array_get(events, 3), "data")),
                     "hi\r\n\xc3\xa9");
    json_decref(doc);
    free(out);
}

Test(tsh_play, asciicast_is_the_recording_itself)
{
    int rv;
    char *out = play(TSH_PLAY_ASCIICAST, cast, strlen(cast), &rv);
    cr_assert_eq(rv, 0);
    cr_assert_str_eq(out, cast);
    free(out);
}

Test(tsh_play, idle_gaps_are_capped)
{
    /* An hour of idleness at speed 16 would be 225 s; the cap makes it 2 s at most. */
    const char text[] = "{\"version\":2,\"width\":80,\"height\":24}\n[0,\"o\",\"a\"]\n"
                        "[3600,\"o\",\"b\"]\n";
    int rv;
    uint64_t t0 = rp_mono_ms();
    char *out = play(TSH_PLAY_PTY, text, strlen(text), &rv);
    uint64_t took = rp_mono_ms() - t0;
    cr_assert_eq(rv, 0);
    cr_assert_str_eq(out, "ab");
    cr_assert(took >= 1900 && took < 5000, "played in %llu ms", (unsigned long long)took);
    free(out);
}

Test(tsh_play, malformed_recordings_name_the_line)
{
    int rv;
    const char *no_header = "[0.1,\"o\",\"x\"]\n";
    free(play(TSH_PLAY_PTY, no_header, strlen(no_header), &rv));
    cr_assert_eq(rv, RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "asciicast v2 header"), "%s", rp_errmsg());
    const char *bad = "{\"version\":2,\"width\":1,\"height\":1}\n[0.1,\"o\"]\n";
    free(play(TSH_PLAY_PTY, bad, strlen(bad), &rv));
    cr_assert_eq(rv, RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "line 2"), "%s", rp_errmsg());
    free(play(TSH_PLAY_JSON, "", 0, &rv));
    cr_assert_eq(rv, RP_EINVAL);
}
