/* tests/test_version.c: version strings and the compatibility rules (lib/version.c):
 * minor and patch never matter, clients may be one major behind, never ahead, and
 * proxies and agents never follow an auth server on an older major. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/version.h"

Test(version, well_formed_versions_parse)
{
    struct rp_version v;
    cr_assert_eq(rp_version_parse("17.2.3", &v), 0);
    cr_expect(v.major == 17 && v.minor == 2 && v.patch == 3);
    cr_assert_eq(rp_version_parse("v1.0.0-beta.1", &v), 0);
    cr_expect(v.major == 1 && v.minor == 0 && v.patch == 0);
    cr_assert_eq(rp_version_parse(RP_VERSION, &v), 0, "our own version must parse");
}

Test(version, malformed_versions_are_refused_with_the_expected_form)
{
    static const char *const bad[] = {"",       "1",    "1.2",          "1.2.",   "a.b.c",
                                      "1.2.3x", "1..3", "99999999.0.0", "-1.0.0", " 1.0.0"};
    struct rp_version v;
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        cr_expect_eq(rp_version_parse(bad[i], &v), RP_EINVAL, "'%s' parsed", bad[i]);
        cr_expect(strstr(rp_errmsg(), "MAJOR.MINOR.PATCH") != NULL, "%s", rp_errmsg());
    }
    cr_expect_eq(rp_version_parse(NULL, &v), RP_EINVAL);
}

Test(version, clients_of_the_same_or_previous_major_are_served)
{
    cr_expect_eq(rp_version_check_client("17.3.0", "17.0.1"), RP_VERSION_OK);
    cr_expect_eq(rp_version_check_client("17.3.0", "17.9.9"), RP_VERSION_OK, "newer minor");
    cr_expect_eq(rp_version_check_client("17.3.0", "16.0.0"), RP_VERSION_OK, "one major behind");
}

Test(version, clients_of_a_newer_major_or_two_behind_are_refused)
{
    cr_expect_eq(rp_version_check_client("17.3.0", "18.0.0"), RP_VERSION_TOO_NEW);
    cr_expect_eq(rp_version_check_client("17.3.0", "15.9.9"), RP_VERSION_TOO_OLD);
    cr_expect_eq(rp_version_check_client("17.3.0", "junk"), RP_VERSION_UNPARSED);
}

Test(version, an_auth_server_on_an_older_major_is_refused)
{
    cr_expect_eq(rp_version_check_auth("2.0.0", "1.9.9"), RP_VERSION_TOO_OLD);
    cr_expect_eq(rp_version_check_auth("2.0.0", "2.0.0"), RP_VERSION_OK);
    cr_expect_eq(rp_version_check_auth("2.1.0", "2.0.5"), RP_VERSION_OK, "older minor is fine");
    cr_expect_eq(rp_version_check_auth("2.0.0", "3.1.0"), RP_VERSION_OK, "auth may lead by one");
    cr_expect_eq(rp_version_check_auth("2.0.0", "4.0.0"), RP_VERSION_TOO_NEW);
}

Test(version, the_minimum_client_is_one_major_behind)
{
    char out[32];
    rp_version_min_client("17.3.1", out, sizeof out);
    cr_expect_str_eq(out, "16.0.0");
    rp_version_min_client("0.1.0", out, sizeof out);
    cr_expect_str_eq(out, "0.0.0");
}

Test(version, explanations_name_both_versions)
{
    char out[200];
    rp_version_explain(RP_VERSION_TOO_OLD, "2.0.0", "1.0.0", out, sizeof out);
    cr_expect(strstr(out, "1.0.0") && strstr(out, "2.0.0"), "%s", out);
    rp_version_explain(RP_VERSION_TOO_NEW, "2.0.0", "3.0.0", out, sizeof out);
    cr_expect(strstr(out, "3.0.0") && strstr(out, "upgrade"), "%s", out);
}
