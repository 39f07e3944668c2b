/* tests/fuzz/fuzz_role.c: role resources and the template expander (auth/rbac.h).
 *
 * Roles arrive as YAML (tctl create -f) or msgpack (the API, the store); their logins
 * and label values hold templates ("{{internal.logins}}", "{{email.local(...)}}",
 * "{{regexp.replace(...)}}") that are expanded against a user's traits, which come
 * from user resources and, later, from SSO. An input is a role, then optionally a NUL
 * byte and the traits as a YAML map of lists (a fixed set of traits otherwise). The
 * role part is read as msgpack when it is one valid msgpack object, else as YAML.
 *
 * Checked for an accepted role: its canonical form parses to the same bytes again, as
 * does its YAML form (both promised by auth/rbac.h); a set built from it with the
 * traits answers every question (logins, SSH access, rules, options). */
#include <msgpack.h>

#include "auth/rbac.h"
#include "lib/buf.h"
#include "lib/mp.h"
#include "lib/yaml_mp.h"
#include "tests/fuzz/check.h"

static const char default_traits[] = "logins: [root, alice, adm-1]\n"
                                     "email: [alice@example.com, 'bob@']\n"
                                     "teams: [dev, ops]\n";

/* Parses the traits part into @u; false if there are none usable. */
static bool traits_parse(const char *text, size_t n, struct rp_buf *mp, msgpack_unpacked *u)
{
    if (rp_ymp_parse_str("traits.yaml", text, n, mp, NULL) != 0)
        return false;
    return rp_mp_parse(mp->data, mp->len, u) == 0;
}

/* Parses the role part: msgpack if it is msgpack, YAML otherwise. */
static int role_parse(const uint8_t *data, size_t n, struct rbac_role **role)
{
    msgpack_unpacked u;
    if (rp_mp_parse(data, n, &u) == 0) {
        int rv = rbac_role_parse(&u.data, role);
        msgpack_unpacked_destroy(&u);
        return rv;
    }
    return rbac_role_parse_yaml("role.yaml", (const char *)data, n, role);
}

/* Parsing the canonical form, and the YAML form, of @role gives @role's bytes again. */
static void check_forms(const struct rbac_role *role)
{
    struct rp_buf canon, again, yaml;
    msgpack_unpacked u;
    struct rbac_role *r2 = NULL;

    rp_buf_init(&canon);
    rp_buf_init(&again);
    rp_buf_init(&yaml);
    FUZZ_CHECK(rbac_role_pack(role, &canon) == 0);
    FUZZ_CHECK(rp_mp_parse(canon.data, canon.len, &u) == 0);
    FUZZ_CHECK(rbac_role_parse(&u.data, &r2) == 0);
    msgpack_unpacked_destroy(&u);
    FUZZ_CHECK(rbac_role_pack(r2, &again) == 0);
    FUZZ_CHECK(again.len == canon.len && memcmp(again.data, canon.data, canon.len) == 0);
    rbac_role_free(r2);

    r2 = NULL;
    rp_buf_reset(&again);
    FUZZ_CHECK(rbac_role_to_yaml(role, &yaml) == 0);
    FUZZ_CHECK(rbac_role_parse_yaml("printed.yaml", (const char *)yaml.data, yaml.len, &r2) == 0);
    FUZZ_CHECK(rbac_role_pack(r2, &again) == 0);
    FUZZ_CHECK(again.len == canon.len && memcmp(again.data, canon.data, canon.len) == 0);
    rbac_role_free(r2);

    rp_buf_free(&canon);
    rp_buf_free(&again);
    rp_buf_free(&yaml);
}

static void check_set(struct rbac_role *role, const msgpack_object *traits)
{
    static const struct rbac_label prod[] = {{"env", "prod"}, {"team", "dev"}};
    static const struct rbac_label odd[] = {{"env", ""}, {"*", "*"}, {"host", "a.b-c"}};
    static const char *const resources[] = {"role", "user", "token", "event", "*"};
    static const char *const verbs[] = {"list", "read", "create", "update", "delete"};
    struct rbac_set *set = NULL;
    struct rbac_role *roles[2] = {role, role};
    char why[256];

    if (rbac_set_new(roles, 2, traits, &set) != 0)
        return;
    char **logins = NULL;
    size_t n = 0;
    FUZZ_CHECK(rbac_logins(set, &logins, &n) == 0);
    for (size_t i = 0; i <= n && i < 8; i++) {
        const char *login = i < n ? logins[i] : "root";
        rbac_check_ssh(set, login, prod, 2, why, sizeof why);
        rbac_check_ssh(set, login, odd, 3, why, sizeof why);
        rbac_check_ssh(set, login, NULL, 0, why, sizeof why);
    }
    rbac_logins_free(logins, n);
    for (size_t i = 0; i < sizeof resources / sizeof resources[0]; i++)
        for (size_t j = 0; j < sizeof verbs / sizeof verbs[0]; j++)
            rbac_check_rule(set, resources[i], verbs[j], why, sizeof why);
    struct rbac_options opts;
    rbac_options(set, &opts);
    FUZZ_CHECK(opts.max_session_ttl_ms > 0);
    rbac_set_free(set);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const uint8_t *nul = memchr(data, '\0', size);
    size_t role_len = nul != NULL ? (size_t)(nul - data) : size;
    struct rbac_role *role = NULL;

    if (role_parse(data, role_len, &role) != 0) {
        FUZZ_CHECK(role == NULL);
        return 0;
    }
    FUZZ_CHECK(role != NULL && rbac_role_name(role) != NULL);
    check_forms(role);

    struct rp_buf tmp;
    msgpack_unpacked traits;
    rp_buf_init(&tmp);
    bool own =
        nul != NULL && traits_parse((const char *)nul + 1, size - role_len - 1, &tmp, &traits);
    if (!own) {
        rp_buf_reset(&tmp);
        FUZZ_CHECK(traits_parse(default_traits, sizeof default_traits - 1, &tmp, &traits));
    }
    check_set(role, &traits.data);
    msgpack_unpacked_destroy(&traits);
    rp_buf_free(&tmp);
    rbac_role_free(role);
    return 0;
}
