/* tsh/profile.c: the user's profiles under $RAFTPORT_HOME or ~/.tsh (tsh/tsh.h says
 * what each file holds).
 *
 * A profile is one small YAML file per proxy plus a directory of keys. The YAML file
 * is what tsh reads on every command; it is written last and atomically, so a login
 * that fails half-way leaves the previous profile usable, and a profile never points
 * at key files that were not written yet. */
#include <errno.h>
#include <ftw.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "lib/yaml.h"
#include "tsh/tsh.h"

#define PROFILE_FILE_MAX (64u << 10)

const char *tsh_home(void)
{
    static char home[TSH_PATH_MAX];
    if (home[0] != '\0')
        return home;
    const char *env = getenv("RAFTPORT_HOME");
    if (env != NULL && env[0] != '\0') {
        snprintf(home, sizeof home, "%s", env);
        return home;
    }
    const char *h = getenv("HOME");
    if (h == NULL || h[0] == '\0') {
        struct passwd *pw = getpwuid(getuid());
        h = pw != NULL && pw->pw_dir != NULL ? pw->pw_dir : "/";
    }
    snprintf(home, sizeof home, "%s/.tsh", h);
    return home;
}

static const char *home_or_default(const char *home)
{
    return home != NULL ? home : tsh_home();
}

int tsh_check_proxy_name(const char *proxy)
{
    size_t n = strlen(proxy);
    if (n == 0 || n > 200)
        return rp_err(RP_EINVAL, "proxy name of %zu bytes: expected HOST:PORT of 1 to 200 bytes",
                      n);
    if (strchr(proxy, '/') != NULL || strcmp(proxy, ".") == 0 || strcmp(proxy, "..") == 0 ||
        proxy[0] == '.')
        return rp_err(RP_EINVAL,
                      "proxy name '%s' cannot name a profile file (no '/' or leading '.')", proxy);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)proxy[i];
        if (ch < 0x21 || ch == 0x7f)
            return rp_err(RP_EINVAL, "proxy name holds a control character or a blank");
    }
    return 0;
}

/* A user or cluster name that can be a file name. */
static int check_file_name(const char *what, const char *name)
{
    size_t n = strlen(name);
    if (n == 0 || n >= TSH_NAME_MAX)
        return rp_err(RP_EINVAL, "%s name of %zu bytes: expected 1 to %d", what, n,
                      TSH_NAME_MAX - 1);
    if (strchr(name, '/') != NULL || name[0] == '.')
        return rp_err(RP_EINVAL, "%s name '%s' cannot be a file name (no '/' or leading '.')", what,
                      name);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (ch < 0x20 || ch == 0x7f)
            return rp_err(RP_EINVAL, "%s name holds a control character", what);
    }
    return 0;
}

static int path_fmt(char *out, const char *fmt, const char *a, const char *b)
{
    int n = snprintf(out, TSH_PATH_MAX, fmt, a, b);
    if (n < 0 || n >= TSH_PATH_MAX)
        return rp_err(RP_EINVAL, "profile path too long under %s", a);
    return 0;
}

int tsh_profile_set_paths(struct tsh_profile *p, const char *home)
{
    int rv;
    home = home_or_default(home);
    if ((rv = tsh_check_proxy_name(p->proxy)) != 0 ||
        (rv = check_file_name("user", p->user)) != 0 ||
        (rv = check_file_name("cluster", p->cluster)) != 0)
        return rv;
    if (strlen(home) >= TSH_PATH_MAX - 512)
        return rp_err(RP_EINVAL, "profile directory %s: path too long", home);
    snprintf(p->home, sizeof p->home, "%s", home);
    if ((rv = path_fmt(p->dir, "%s/keys/%s", home, p->proxy)) != 0 ||
        (rv = path_fmt(p->key_path, "%s/%s", p->dir, p->user)) != 0 ||
        (rv = path_fmt(p->pub_path, "%s/%s.pub", p->dir, p->user)) != 0 ||
        (rv = path_fmt(p->cert_path, "%s/%s-cert.pub", p->dir, p->user)) != 0 ||
        (rv = path_fmt(p->x509_path, "%s/%s-x509.pem", p->dir, p->user)) != 0 ||
        (rv = path_fmt(p->tls_key_path, "%s/%s.key.pem", p->dir, p->user)) != 0 ||
        (rv = path_fmt(p->ca_path, "%s/cas/%s.pem", p->dir, p->cluster)) != 0 ||
        (rv = path_fmt(p->known_hosts_path, "%s/%s", p->dir, "known_hosts")) != 0)
        return rv;
    return 0;
}

/* Creates the directories above @path (not @path itself) with mode 0700. */
static int mkdirs_above(const char *path)
{
    char dir[TSH_PATH_MAX];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == NULL || slash == dir)
        return 0;
    *slash = '\0';
    return rp_mkdir_p(dir, 0700);
}

int tsh_write_private(const char *path, const void *data, size_t n)
{
    int rv = mkdirs_above(path);
    if (rv != 0)
        return rp_err(rv, "creating the directory of %s: %s", path, rp_errmsg());
    rv = rp_write_file(path, data, n, 0600);
    if (rv != 0)
        return rp_err(rv, "writing %s: %s", path, rp_errmsg());
    return 0;
}

/* ---- the YAML file ----------------------------------------------------------------- */

/* JSON strings are YAML double-quoted scalars: names with any character read back as
 * written. */
static void put_str(struct rp_buf *b, const char *key, const char *value)
{
    rp_buf_printf(b, "%s: ", key);
    rp_json_str(b, value, strlen(value));
    rp_buf_append_str(b, "\n");
}

static int yaml_path(const char *home, const char *proxy, char out[TSH_PATH_MAX])
{
    int n = snprintf(out, TSH_PATH_MAX, "%s/%s.yaml", home, proxy);
    return n < 0 || n >= TSH_PATH_MAX ? rp_err(RP_EINVAL, "profile path too long") : 0;
}

int tsh_profile_save(const struct tsh_profile *p)
{
    char path[TSH_PATH_MAX], when[40];
    int rv;
    if ((rv = tsh_check_proxy_name(p->proxy)) != 0 ||
        (rv = yaml_path(p->home, p->proxy, path)) != 0)
        return rv;
    if ((rv = rp_mkdir_p(p->home, 0700)) != 0)
        return rp_err(rv, "creating the profile directory %s: %s", p->home, rp_errmsg());
    struct rp_buf b;
    rp_buf_init(&b);
    rp_buf_append_str(&b, "# tsh profile: written by tsh login; tsh logout removes it\n");
    put_str(&b, "proxy", p->proxy);
    put_str(&b, "user", p->user);
    put_str(&b, "cluster", p->cluster);
    rp_buf_append_str(&b, "logins: [");
    for (size_t i = 0; i < p->n_logins; i++) {
        if (i > 0)
            rp_buf_append_str(&b, ", ");
        rp_json_str(&b, p->logins[i], strlen(p->logins[i]));
    }
    rp_buf_append_str(&b, "]\n");
    rp_format_time(p->valid_before_ms, when, sizeof when);
    put_str(&b, "valid_before", when);
    put_str(&b, "ca_pin", p->ca_pin);
    rv =
        b.data == NULL ? rp_err(RP_ENOMEM, "profile text") : tsh_write_private(path, b.data, b.len);
    rp_buf_free(&b);
    if (rv != 0)
        return rv;
    char cur[TSH_PATH_MAX];
    if (snprintf(cur, sizeof cur, "%s/current-profile", p->home) >= (int)sizeof cur)
        return rp_err(RP_EINVAL, "profile path too long");
    char line[TSH_NAME_MAX + 2];
    int n = snprintf(line, sizeof line, "%s\n", p->proxy);
    return tsh_write_private(cur, line, (size_t)n);
}

int tsh_profile_current(const char *home, char *out, size_t outlen)
{
    char path[TSH_PATH_MAX], *text = NULL;
    size_t n = 0;
    home = home_or_default(home);
    if (snprintf(path, sizeof path, "%s/current-profile", home) >= (int)sizeof path)
        return rp_err(RP_EINVAL, "profile path too long");
    if (!rp_file_exists(path))
        return rp_err(RP_ENOTFOUND, "not logged in: run tsh login --proxy=HOST:PORT --user=NAME");
    int rv = rp_read_file(path, 1024, &text, &n);
    if (rv != 0)
        return rp_err(rv, "reading %s: %s", path, rp_errmsg());
    text[strcspn(text, "\r\n")] = '\0';
    rv = tsh_check_proxy_name(text);
    if (rv == 0 && strlen(text) >= outlen)
        rv = rp_err(RP_ETOOBIG, "proxy name too long");
    if (rv == 0)
        snprintf(out, outlen, "%s", text);
    else
        rv = rp_err(rv, "%s: %s; remove it and run tsh login", path, rp_errmsg());
    free(text);
    return rv;
}

/* RFC 3339 UTC with whole seconds ("2026-11-25T11:40:00Z") to ms. */
static int parse_time(const char *s, uint64_t *ms)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (end == NULL || (strcmp(end, "Z") != 0 && strcmp(end, "+00:00") != 0))
        return rp_err(RP_EINVAL, "'%s' is not a UTC time as 2026-11-25T11:40:00Z", s);
    time_t t = timegm(&tm);
    if (t < 0)
        return rp_err(RP_EINVAL, "'%s' is before 1970", s);
    *ms = (uint64_t)t * 1000;
    return 0;
}

static int scalar_field(const struct rp_ynode *doc, const char *path, const char *key, char *out,
                        size_t outlen, bool required)
{
    const struct rp_ynode *n = rp_ynode_get(doc, key);
    if (n == NULL || (n->type == RP_Y_SCALAR && rp_ynode_is_null(n) && !n->quoted)) {
        out[0] = '\0';
        return required ? rp_err(RP_EINVAL, "%s: no '%s'; run tsh login again", path, key) : 0;
    }
    if (n->type != RP_Y_SCALAR || strlen(n->value) >= outlen)
        return rp_err(RP_EINVAL, "%s:%d: '%s' must be a string of at most %zu bytes", path, n->line,
                      key, outlen - 1);
    snprintf(out, outlen, "%s", n->value);
    return 0;
}

static int parse_profile(const char *path, const struct rp_ynode *doc, struct tsh_profile *p)
{
    char when[64];
    int rv;
    if (doc->type != RP_Y_MAP)
        return rp_err(RP_EINVAL, "%s: expected a map of proxy, user, cluster, ...", path);
    if ((rv = scalar_field(doc, path, "proxy", p->proxy, sizeof p->proxy, true)) != 0 ||
        (rv = scalar_field(doc, path, "user", p->user, sizeof p->user, true)) != 0 ||
        (rv = scalar_field(doc, path, "cluster", p->cluster, sizeof p->cluster, true)) != 0 ||
        (rv = scalar_field(doc, path, "ca_pin", p->ca_pin, sizeof p->ca_pin, false)) != 0 ||
        (rv = scalar_field(doc, path, "valid_before", when, sizeof when, true)) != 0)
        return rv;
    if ((rv = parse_time(when, &p->valid_before_ms)) != 0)
        return rp_err(rv, "%s: valid_before: %s", path, rp_errmsg());
    const struct rp_ynode *logins = rp_ynode_get(doc, "logins");
    p->n_logins = 0;
    if (logins != NULL && !(logins->type == RP_Y_SCALAR && rp_ynode_is_null(logins))) {
        if (logins->type != RP_Y_SEQ)
            return rp_err(RP_EINVAL, "%s:%d: logins must be a list", path, logins->line);
        for (size_t i = 0; i < logins->n && p->n_logins < TSH_MAX_LOGINS; i++) {
            const struct rp_ynode *l = logins->vals[i];
            if (l->type != RP_Y_SCALAR || strlen(l->value) >= TSH_NAME_MAX)
                return rp_err(RP_EINVAL, "%s:%d: a login must be a short string", path, l->line);
            snprintf(p->logins[p->n_logins++], TSH_NAME_MAX, "%s", l->value);
        }
    }
    return 0;
}

/* The roles the X.509 certificate carries (O), for tsh status. */
static int load_roles(struct tsh_profile *p)
{
    X509 *cert = NULL;
    struct rp_identity id;
    memset(&id, 0, sizeof id);
    int rv = rp_tls_read_cert(p->x509_path, &cert);
    if (rv != 0)
        return rv;
    rv = rp_identity_from_cert(cert, &id);
    X509_free(cert);
    if (rv != 0)
        return rv;
    p->n_roles = 0;
    for (size_t i = 0; i < id.n_groups && p->n_roles < TSH_MAX_ROLES; i++)
        snprintf(p->roles[p->n_roles++], TSH_NAME_MAX, "%s", id.groups[i]);
    rp_identity_free(&id);
    return 0;
}

int tsh_profile_load(const char *home, const char *proxy, struct tsh_profile *p)
{
    char name[TSH_NAME_MAX], path[TSH_PATH_MAX];
    int rv;
    home = home_or_default(home);
    memset(p, 0, sizeof *p);
    if (proxy == NULL) {
        if ((rv = tsh_profile_current(home, name, sizeof name)) != 0)
            return rv;
        proxy = name;
    } else if ((rv = tsh_check_proxy_name(proxy)) != 0) {
        return rv;
    }
    if ((rv = yaml_path(home, proxy, path)) != 0)
        return rv;
    if (!rp_file_exists(path))
        return rp_err(RP_ENOTFOUND, "not logged in to %s: run tsh login --proxy=%s --user=NAME",
                      proxy, proxy);
    struct rp_ynode *doc = NULL;
    if ((rv = rp_yaml_parse_file(path, &doc)) != 0)
        return rp_err(rv, "%s; remove it and run tsh login --proxy=%s", rp_errmsg(), proxy);
    rv = parse_profile(path, doc, p);
    rp_ynode_free(doc);
    if (rv != 0)
        return rv;
    if (strcmp(p->proxy, proxy) != 0)
        return rp_err(RP_EINVAL, "%s names proxy %s, not %s; remove it and run tsh login", path,
                      p->proxy, proxy);
    if ((rv = tsh_profile_set_paths(p, home)) != 0)
        return rp_err(rv, "%s: %s", path, rp_errmsg());
    const char *need[] = {p->key_path, p->cert_path, p->x509_path, p->tls_key_path, p->ca_path};
    for (size_t i = 0; i < sizeof need / sizeof need[0]; i++) {
        if (!rp_file_exists(need[i]))
            return rp_err(RP_ENOTFOUND,
                          "the profile of %s lacks %s: run tsh login --proxy=%s --user=%s again",
                          p->proxy, need[i], p->proxy, p->user);
    }
    if ((rv = load_roles(p)) != 0)
        return rp_err(rv, "%s; run tsh login --proxy=%s --user=%s again", rp_errmsg(), p->proxy,
                      p->user);
    if (rp_now_ms() >= p->valid_before_ms) {
        char when[40];
        rp_format_time(p->valid_before_ms, when, sizeof when);
        return rp_err(RP_EDENIED,
                      "your certificate expired at %s: run tsh login --proxy=%s --user=%s", when,
                      p->proxy, p->user);
    }
    return 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)ftw;
    int r = flag == FTW_DP ? rmdir(path) : unlink(path);
    return r != 0 && errno != ENOENT ? -1 : 0;
}

int tsh_profile_remove(const char *home, const char *proxy, char *removed, size_t removed_len)
{
    char cur[TSH_NAME_MAX] = "", path[TSH_PATH_MAX];
    int rv;
    home = home_or_default(home);
    bool have_current = tsh_profile_current(home, cur, sizeof cur) == 0;
    if (proxy == NULL) {
        if (!have_current)
            return rp_err(RP_ENOTFOUND, "not logged in: nothing to log out of");
        proxy = cur;
    } else if ((rv = tsh_check_proxy_name(proxy)) != 0) {
        return rv;
    }
    if ((rv = yaml_path(home, proxy, path)) != 0)
        return rv;
    char keys[TSH_PATH_MAX];
    if (snprintf(keys, sizeof keys, "%s/keys/%s", home, proxy) >= (int)sizeof keys)
        return rp_err(RP_EINVAL, "profile path too long");
    bool had_yaml = rp_file_exists(path), had_keys = rp_file_exists(keys);
    if (!had_yaml && !had_keys)
        return rp_err(RP_ENOTFOUND, "not logged in to %s: nothing to log out of", proxy);
    /* Keys first: a profile file without keys still says who was logged in. */
    if (had_keys && nftw(keys, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
        return rp_err(RP_EIO, "removing %s: %s", keys, strerror(errno));
    if (had_yaml && unlink(path) != 0 && errno != ENOENT)
        return rp_err(RP_EIO, "removing %s: %s", path, strerror(errno));
    if (have_current && strcmp(cur, proxy) == 0) {
        char curpath[TSH_PATH_MAX];
        snprintf(curpath, sizeof curpath, "%s/current-profile", home);
        if (unlink(curpath) != 0 && errno != ENOENT)
            return rp_err(RP_EIO, "removing %s: %s", curpath, strerror(errno));
    }
    if (removed != NULL)
        snprintf(removed, removed_len, "%s", proxy);
    return 0;
}

SSL_CTX *tsh_profile_tls_ctx(const struct tsh_profile *p)
{
    X509 *ca = NULL, *cert = NULL;
    EVP_PKEY *key = NULL;
    SSL_CTX *ctx = NULL;
    if (rp_tls_read_cert(p->ca_path, &ca) != 0 || rp_tls_read_cert(p->x509_path, &cert) != 0 ||
        rp_tls_read_key(p->tls_key_path, &key) != 0) {
        rp_err(RP_EINVAL, "%s; run tsh login --proxy=%s --user=%s again", rp_errmsg(), p->proxy,
               p->user);
        goto out;
    }
    ctx = rp_tls_client_ctx(ca, cert, key);
out:
    X509_free(ca);
    X509_free(cert);
    EVP_PKEY_free(key);
    return ctx;
}
