/* lib/names.c: the one rule for names of users, roles, tokens, locks and nodes. */
#include "lib/names.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "lib/errors.h"

/* Decodes one UTF-8 sequence at @p (@n bytes left) into *@cp; returns its length,
 * or 0 if it is not the shortest well-formed encoding of a scalar value. */
static size_t utf8_next(const unsigned char *p, size_t n, uint32_t *cp)
{
    if (p[0] < 0x80) {
        *cp = p[0];
        return 1;
    }
    size_t len;
    uint32_t c, min;
    if ((p[0] & 0xe0) == 0xc0) {
        len = 2, c = p[0] & 0x1f, min = 0x80;
    } else if ((p[0] & 0xf0) == 0xe0) {
        len = 3, c = p[0] & 0x0f, min = 0x800;
    } else if ((p[0] & 0xf8) == 0xf0) {
        len = 4, c = p[0] & 0x07, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (p[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    return len;
}

/* Characters that print as nothing or as blank space, or that control the terminal:
 * two names differing only in them look the same to a person reading a list. */
static bool invisible(uint32_t c)
{
    return c < 0x20 || c == ' ' || (c >= 0x7f && c <= 0xa0) || c == 0xad || c == 0x1680 ||
           c == 0x180e || (c >= 0x2000 && c <= 0x200f) || (c >= 0x2028 && c <= 0x202f) ||
           (c >= 0x205f && c <= 0x206f) || c == 0x3000 || c == 0xfeff ||
           (c >= 0xfff9 && c <= 0xfffb);
}

/* The reason @name breaks the rule, or NULL if it does not. */
static const char *name_problem(const char *name, size_t n)
{
    if (n == 0)
        return "empty";
    if (n > RP_NAME_MAX)
        return "too long";
    if (name[0] == '-')
        return "starts with '-'";
    if (n == 1 && name[0] == '.')
        return "is '.'";
    if (memchr(name, '/', n) != NULL)
        return "holds '/'";
    for (size_t i = 0; i + 1 < n; i++) {
        if (name[i] == '.' && name[i + 1] == '.')
            return "holds '..'";
    }
    const unsigned char *p = (const unsigned char *)name;
    for (size_t i = 0; i < n;) {
        uint32_t c;
        size_t len = utf8_next(p + i, n - i, &c);
        if (len == 0)
            return "is not valid UTF-8";
        if (invisible(c))
            return c == ' ' ? "holds a space" : "holds a control, space or invisible character";
        i += len;
    }
    return NULL;
}

#define NAME_EXPECTED                                                                              \
    "expected 1-253 bytes of printable UTF-8 without '/', '..', spaces or control characters, "    \
    "not starting with '-'"

int rp_name_check(const char *what, const char *name, size_t n)
{
    const char *why = name_problem(name, n);
    if (why == NULL)
        return 0;
    char shown[65];
    size_t k = n < 64 ? n : 64;
    for (size_t i = 0; i < k; i++) {
        unsigned char ch = (unsigned char)name[i];
        shown[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    shown[k] = '\0';
    return rp_err(RP_EINVAL, "%s '%s%s': %s, " NAME_EXPECTED, what, shown, n > 64 ? "..." : "",
                  why);
}

int rp_name_check_secret(const char *what, const char *name, size_t n)
{
    const char *why = name_problem(name, n);
    if (why == NULL)
        return 0;
    return rp_err(RP_EINVAL, "%s (not shown: it is a secret): %s, " NAME_EXPECTED, what, why);
}

/* Teleport's system roles by the lower-case names it accepts for them
 * (api/types/system_role.go, roleMappings). */
static const struct {
    const char *lower, *canonical;
} system_roles[] = {
    {"auth", "Auth"},
    {"node", "Node"},
    {"proxy", "Proxy"},
    {"admin", "Admin"},
    {"provisiontoken", "ProvisionToken"},
    {"trusted_cluster", "Trusted_cluster"},
    {"trustedcluster", "Trusted_cluster"},
    {"signup", "Signup"},
    {"nop", "Nop"},
    {"remoteproxy", "RemoteProxy"},
    {"remote_proxy", "RemoteProxy"},
    {"kube", "Kube"},
    {"app", "App"},
    {"db", "Db"},
    {"windowsdesktop", "WindowsDesktop"},
    {"windows_desktop", "WindowsDesktop"},
    {"bot", "Bot"},
    {"instance", "Instance"},
    {"discovery", "Discovery"},
    {"okta", "Okta"},
    {"mdm", "MDM"},
    {"accessgraphplugin", "AccessGraphPlugin"},
};

const char *rp_system_role(const char *name, size_t n)
{
    for (size_t i = 0; i < sizeof system_roles / sizeof system_roles[0]; i++) {
        if (strlen(system_roles[i].lower) == n && strncasecmp(system_roles[i].lower, name, n) == 0)
            return system_roles[i].canonical;
    }
    return NULL;
}

int rp_login_check(const char *l, size_t n)
{
    bool tmpl = n > 4 && memcmp(l, "{{", 2) == 0 && memcmp(l + n - 2, "}}", 2) == 0;
    bool ok = n > 0 && (tmpl ? n <= 128 : n <= 32) && l[0] != '-' && l[0] != '.';
    for (size_t i = 0; ok && i < n; i++) {
        unsigned char c = (unsigned char)l[i];
        ok = tmpl ? c >= 0x20 && c < 0x7f
                  : (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.' ||
                        c == '-';
    }
    if (!ok) {
        char shown[41];
        size_t k = n < 40 ? n : 40;
        for (size_t i = 0; i < k; i++)
            shown[i] = l[i] >= 0x20 && l[i] < 0x7f ? l[i] : '?';
        shown[k] = '\0';
        return rp_err(RP_EINVAL,
                      "login '%s': expected a Unix user name (1-32 of a-z 0-9 _ . -, not "
                      "starting with - or .) or a trait template like {{internal.logins}}",
                      shown);
    }
    return 0;
}
