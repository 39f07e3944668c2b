/* tsh/status.c: tsh status (who is logged in where, until when) and tsh version.
 *
 * status reads only local files: it works without the proxy, and shows an expired
 * certificate as EXPIRED instead of failing, so that the user sees what to renew. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/util.h"
#include "lib/version.h"
#include "tsh/tsh.h"

static void print_list(FILE *f, const char (*items)[TSH_NAME_MAX], size_t n)
{
    if (n == 0)
        fprintf(f, "-");
    for (size_t i = 0; i < n; i++)
        fprintf(f, "%s%s", i ? ", " : "", items[i]);
    fprintf(f, "\n");
}

void tsh_status_print(FILE *f, const struct tsh_profile *p, bool current)
{
    char when[40], left[48];
    uint64_t now = rp_now_ms();
    rp_format_time(p->valid_before_ms, when, sizeof when);
    fprintf(f, "%s Profile URL:        https://%s\n", current ? ">" : " ", p->proxy);
    fprintf(f, "  Logged in as:       %s\n", p->user);
    fprintf(f, "  Cluster:            %s\n", p->cluster);
    fprintf(f, "  Roles:              ");
    print_list(f, p->roles, p->n_roles);
    fprintf(f, "  Logins:             ");
    print_list(f, p->logins, p->n_logins);
    if (now >= p->valid_before_ms) {
        fprintf(f, "  Valid until:        %s [EXPIRED: run tsh login --proxy=%s --user=%s]\n", when,
                p->proxy, p->user);
    } else {
        rp_format_duration((p->valid_before_ms - now) / 1000 * 1000, left, sizeof left);
        fprintf(f, "  Valid until:        %s [valid for %s]\n", when, left);
    }
    fprintf(f, "  CA pin:             %s\n", p->ca_pin[0] ? p->ca_pin : "-");
}

static json_t *status_json(const struct tsh_profile *p)
{
    char when[40];
    rp_format_time(p->valid_before_ms, when, sizeof when);
    json_t *roles = json_array(), *logins = json_array();
    for (size_t i = 0; i < p->n_roles; i++)
        json_array_append_new(roles, json_string(p->roles[i]));
    for (size_t i = 0; i < p->n_logins; i++)
        json_array_append_new(logins, json_string(p->logins[i]));
    return json_pack("{s:s, s:s, s:s, s:s, s:o, s:o, s:s, s:b, s:s}", "profile_url", "", "username",
                     p->user, "cluster", p->cluster, "proxy", p->proxy, "roles", roles, "logins",
                     logins, "valid_until", when, "expired", rp_now_ms() >= p->valid_before_ms,
                     "ca_pin", p->ca_pin);
}

enum { O_FORMAT = 256 };

int tsh_cmd_status(int argc, char **argv, const struct tsh_globals *gin)
{
    static const struct option own[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {NULL, 0, NULL, 0},
    };
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    char **args;
    int c, nargs, rv;
    bool json = false;
    tsh_flags_init(&f, &g, argc, argv, own, "f:", false);
    while ((c = tsh_flags_next(&f)) > 0) {
        if (c == O_FORMAT || c == 'f') {
            if (strcmp(optarg, "json") == 0)
                json = true;
            else if (strcmp(optarg, "text") != 0)
                return tsh_usage_error(&f, "--format=%s: expected text or json", optarg);
        }
    }
    if ((rv = tsh_flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    struct tsh_profile p;
    rv = tsh_profile_load(g.home, g.proxy, &p);
    if (rv != 0 && rv != RP_EDENIED) {
        fprintf(stderr, "tsh status: %s\n", rp_errmsg());
        return 1;
    }
    if (json) {
        json_t *doc = status_json(&p);
        char url[TSH_NAME_MAX + 16];
        snprintf(url, sizeof url, "https://%s", p.proxy);
        json_object_set_new(doc, "profile_url", json_string(url));
        json_t *wrap = json_pack("{s:o}", "active", doc);
        char *text = json_dumps(wrap, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        printf("%s\n", text ? text : "{}");
        free(text);
        json_decref(wrap);
    } else {
        tsh_status_print(stdout, &p, true);
    }
    /* An expired certificate is what status is for showing; the exit status says so
     * too, for scripts. */
    return rv == RP_EDENIED ? 1 : 0;
}

int tsh_cmd_version(int argc, char **argv, const struct tsh_globals *gin)
{
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    char **args;
    int c, nargs, rv;
    tsh_flags_init(&f, &g, argc, argv, NULL, NULL, false);
    while ((c = tsh_flags_next(&f)) > 0) {
    }
    if ((rv = tsh_flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    printf("tsh %s\n", rp_version_self());
    struct tsh_profile p;
    if (tsh_profile_load(g.home, g.proxy, &p) != 0 && p.proxy[0] == '\0')
        return 0; /* not logged in: the client's version is all there is */
    struct tsh_web w;
    struct tsh_ping ping;
    tsh_web_from_profile(&w, &p);
    w.cert_path = w.key_path = NULL; /* ping is anonymous; an expired cert must not matter */
    w.timeout_ms = 5000;
    if (tsh_web_ping(&w, &ping) != 0) {
        printf("Proxy %s: unreachable (%s)\n", p.proxy, rp_errmsg());
        return 0;
    }
    printf("Proxy %s: raftport %s (cluster %s, oldest client served %s)\n", p.proxy,
           ping.server_version, ping.cluster_name,
           ping.min_client_version[0] ? ping.min_client_version : "-");
    char warn[1024];
    if (!g.skip_version_check && tsh_version_warning(rp_version_self(), ping.server_version,
                                                     ping.min_client_version, warn, sizeof warn))
        fprintf(stderr, "%s", warn);
    return 0;
}
