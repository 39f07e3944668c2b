/* tests/test_names.c: the one name rule (lib/names.c) for users, roles, tokens,
 * locks and nodes, Teleport's system role names, and login names. */
#include <criterion/criterion.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/names.h"

static int check(const char *name)
{
    return rp_name_check("user name", name, strlen(name));
}

Test(names, ordinary_names_are_accepted)
{
    static const char *const ok[] = {
        "alice", "alice@example.com", "dev-team_2", "a.b", "Zoë", "用户", "x", "a+b=c"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        cr_assert_eq(check(ok[i]), 0, "'%s' refused: %s", ok[i], rp_errmsg());
}

Test(names, path_characters_are_refused)
{
    static const char *const bad[] = {"../../etc/passwd", "a/b", "/", "..", ".", "a..b", "x/.."};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(check(bad[i]), RP_EINVAL, "'%s' accepted", bad[i]);
}

Test(names, spaces_controls_and_invisible_characters_are_refused)
{
    static const char *const bad[] = {
        "a b",
        "a\tb",
        "a\nb",
        "a\x7f",
        "\x1b[31m",
        "a\xc2\xa0"
        "b",             /* U+00A0 no-break space */
        "a\xe2\x80\x8b", /* U+200B zero width space */
        "a\xe2\x80\xae", /* U+202E right-to-left override */
        "a\xe3\x80\x80", /* U+3000 ideographic space */
        "\xef\xbb\xbf",  /* U+FEFF byte order mark */
        "a\xc2\x85",     /* U+0085 (C1 control) */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(check(bad[i]), RP_EINVAL, "case %zu accepted", i);
}

Test(names, invalid_utf8_is_refused)
{
    static const char *const bad[] = {"\xff", "a\xc0\xaf", /* overlong '/' */
                                      "\xed\xa0\x80",      /* a surrogate */
                                      "\xe2\x82", "\xf4\x90\x80\x80"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(check(bad[i]), RP_EINVAL, "case %zu accepted", i);
}

Test(names, length_is_limited_and_a_leading_dash_refused)
{
    char name[RP_NAME_MAX + 2];
    memset(name, 'a', sizeof name);
    name[RP_NAME_MAX] = '\0';
    cr_assert_eq(check(name), 0);
    name[RP_NAME_MAX] = 'a';
    name[RP_NAME_MAX + 1] = '\0';
    cr_assert_eq(check(name), RP_EINVAL);
    cr_assert_eq(check(""), RP_EINVAL);
    cr_assert_eq(check("-rf"), RP_EINVAL);
    /* A NUL inside the bytes is a control character, not the end. */
    cr_assert_eq(rp_name_check("user name", "ab\0cd", 5), RP_EINVAL);
}

Test(names, messages_name_the_problem_and_never_echo_a_secret)
{
    cr_assert_eq(check("a/b"), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "user name 'a/b'") && strstr(rp_errmsg(), "'/'"), "%s",
              rp_errmsg());
    cr_assert_eq(check("a\x1b[2Jb c"), RP_EINVAL);
    cr_assert(strchr(rp_errmsg(), '\x1b') == NULL, "escape byte echoed: %s", rp_errmsg());
    const char *secret = "0123456789abcdef 0123456789abcdef";
    cr_assert_eq(rp_name_check_secret("token name", secret, strlen(secret)), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "0123456789abcdef") == NULL, "secret echoed: %s", rp_errmsg());
    cr_assert(strstr(rp_errmsg(), "space") != NULL, "%s", rp_errmsg());
}

Test(names, system_role_names_match_in_any_case)
{
    static const struct {
        const char *in, *want;
    } cases[] = {
        {"Admin", "Admin"},
        {"admin", "Admin"},
        {"ADMIN", "Admin"},
        {"aDmIn", "Admin"},
        {"node", "Node"},
        {"PROXY", "Proxy"},
        {"auth", "Auth"},
        {"windows_desktop", "WindowsDesktop"},
        {"WindowsDesktop", "WindowsDesktop"},
        {"trusted_cluster", "Trusted_cluster"},
        {"remote_proxy", "RemoteProxy"},
        {"db", "Db"},
        {"mdm", "MDM"},
        {"Bot", "Bot"},
        {"instance", "Instance"},
        {"signup", "Signup"},
        {"NOP", "Nop"},
        {"okta", "Okta"},
        {"discovery", "Discovery"},
        {"kube", "Kube"},
        {"app", "App"},
        {"provisiontoken", "ProvisionToken"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *got = rp_system_role(cases[i].in, strlen(cases[i].in));
        cr_assert(got != NULL && strcmp(got, cases[i].want) == 0, "%s -> %s", cases[i].in,
                  got ? got : "(none)");
    }
    static const char *const not [] = {"access", "editor", "auditor", "admins", "nodes", "Adm"};
    for (size_t i = 0; i < sizeof not / sizeof not [0]; i++)
        cr_assert_null(rp_system_role(not [i], strlen(not [i])), "%s", not [i]);
}

Test(names, logins_are_unix_names_or_trait_templates)
{
    static const char *const ok[] = {"root",
                                     "ubuntu",
                                     "ec2-user",
                                     "a_b.c",
                                     "{{internal.logins}}",
                                     "{{ external.logins }}",
                                     "{{email.local(external.email)}}"};
    for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++)
        cr_assert_eq(rp_login_check(ok[i], strlen(ok[i])), 0, "'%s' refused: %s", ok[i],
                     rp_errmsg());
    static const char *const bad[] = {
        "Root", "../x", "a b", "-oProxyCommand", ".",
        "..",   "a/b",  "",    "{{a\nb}}",       "abcdefghijklmnopqrstuvwxyz0123456"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(rp_login_check(bad[i], strlen(bad[i])), RP_EINVAL, "'%s' accepted", bad[i]);
}
