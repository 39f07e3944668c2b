/* agent/sshauth.c: may this certificate log in as this login on this node?
 *
 * libssh 0.10 checks only that the client holds the key inside the certificate; it
 * checks nothing of the certificate itself. Every rule lives here, in the order a
 * refusal is cheapest to reach: the blob's shape, the CA, type and validity, the
 * principal, critical options, then the roles (deny first) on this node's labels,
 * then locks. The reasons name what failed for the audit log; they never quote key
 * material. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "agent/sshd_int.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/yaml_mp.h"

/* More roles than this in one certificate is not a real user: refuse it rather than
 * spend on it. */
#define MAX_CERT_ROLES 256

void sshd_grant_free(struct sshd_grant *g)
{
    if (g == NULL)
        return;
    free(g->user);
    for (size_t i = 0; i < g->n_roles; i++)
        free(g->roles[i]);
    free(g->roles);
    free(g->traits_json);
    free(g->force_command);
    for (size_t i = 0; i < g->n_principals; i++)
        free(g->principals[i]);
    free(g->principals);
    memset(g, 0, sizeof *g);
}

/* The role names of the teleport-roles extension: {"version":"v1","roles":[...]}. */
static int parse_roles(const char *json, struct sshd_grant *g, char *why, size_t why_len)
{
    struct rp_buf mp;
    rp_buf_init(&mp);
    int rv = rp_ymp_parse_str("teleport-roles", json, strlen(json), &mp, NULL);
    if (rv != 0) {
        snprintf(why, why_len, "certificate extension teleport-roles is not valid JSON");
        rp_buf_free(&mp);
        return RP_EDENIED;
    }
    msgpack_unpacked u;
    /* The unpacked strings point into @mp: it lives until the end. */
    rv = rp_mp_parse(mp.data, mp.len, &u);
    if (rv != 0) {
        rp_buf_free(&mp);
        snprintf(why, why_len, "certificate extension teleport-roles cannot be read");
        return RP_EDENIED;
    }
    const msgpack_object *roles = rp_mp_get(&u.data, "roles");
    rv = RP_EDENIED;
    if (roles == NULL || roles->type != MSGPACK_OBJECT_ARRAY || roles->via.array.size == 0 ||
        roles->via.array.size > MAX_CERT_ROLES) {
        snprintf(why, why_len,
                 "certificate extension teleport-roles holds no list of 1 to %d role names",
                 MAX_CERT_ROLES);
        goto out;
    }
    g->roles = calloc(roles->via.array.size, sizeof *g->roles);
    if (g->roles == NULL) {
        rv = RP_ENOMEM;
        snprintf(why, why_len, "out of memory");
        goto out;
    }
    for (uint32_t i = 0; i < roles->via.array.size; i++) {
        const msgpack_object *r = &roles->via.array.ptr[i];
        if (r->type != MSGPACK_OBJECT_STR || r->via.str.size == 0 || r->via.str.size > 255 ||
            memchr(r->via.str.ptr, 0, r->via.str.size) != NULL) {
            snprintf(why, why_len,
                     "certificate extension teleport-roles: item %u is not a role name", i);
            goto out;
        }
        g->roles[i] = strndup(r->via.str.ptr, r->via.str.size);
        if (g->roles[i] == NULL) {
            rv = RP_ENOMEM;
            snprintf(why, why_len, "out of memory");
            goto out;
        }
        g->n_roles++;
    }
    rv = 0;
out:
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
    return rv;
}

/* The peer as an address family and bytes, IPv4-mapped IPv6 folded to IPv4. */
static void peer_bytes(const struct sockaddr_storage *peer, int *family, uint8_t addr[16])
{
    if (peer->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)peer;
        if (IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr)) {
            *family = AF_INET;
            memcpy(addr, &s6->sin6_addr.s6_addr[12], 4);
            return;
        }
        *family = AF_INET6;
        memcpy(addr, &s6->sin6_addr, 16);
        return;
    }
    *family = AF_INET;
    memcpy(addr, &((const struct sockaddr_in *)peer)->sin_addr, 4);
}

int sshd_source_address_match(const char *list, const struct sockaddr_storage *peer, bool *match)
{
    int fam;
    uint8_t addr[16];
    *match = false;
    /* A tunnelled connection whose client address is unknown matches no list. */
    if (peer->ss_family != AF_INET && peer->ss_family != AF_INET6)
        return 0;
    peer_bytes(peer, &fam, addr);
    const char *p = list;
    while (*p != '\0') {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char item[64];
        if (n == 0 || n >= sizeof item)
            return rp_err(RP_EINVAL, "source-address: an entry is empty or longer than 63 bytes");
        memcpy(item, p, n);
        item[n] = '\0';
        char *slash = strchr(item, '/');
        long bits = -1;
        if (slash != NULL) {
            char *e;
            *slash = '\0';
            bits = strtol(slash + 1, &e, 10);
            if (*e != '\0' || slash[1] == '\0')
                return rp_err(RP_EINVAL, "source-address: %s: the prefix length is not a number",
                              item);
        }
        uint8_t want[16];
        int wfam;
        if (inet_pton(AF_INET, item, want) == 1)
            wfam = AF_INET;
        else if (inet_pton(AF_INET6, item, want) == 1)
            wfam = AF_INET6;
        else
            return rp_err(RP_EINVAL, "source-address: %s is not an IP address", item);
        long max = wfam == AF_INET ? 32 : 128;
        if (bits < 0)
            bits = max;
        if (bits > max)
            return rp_err(RP_EINVAL, "source-address: prefix /%ld is longer than %ld", bits, max);
        if (wfam == fam) {
            bool same = true;
            for (long b = 0; b < bits && same; b += 8) {
                long take = bits - b >= 8 ? 8 : bits - b;
                uint8_t mask = (uint8_t)(0xff00u >> take);
                same = (addr[b / 8] & mask) == (want[b / 8] & mask);
            }
            if (same)
                *match = true;
        }
        p += n;
        if (*p == ',')
            p++;
    }
    return 0;
}

static const char *verdict_text(enum rp_ssh_cert_verdict v)
{
    switch (v) {
    case RP_SSH_CERT_OK:
        return "ok";
    case RP_SSH_CERT_WRONG_CA:
        return "certificate is not signed by a trusted user CA";
    case RP_SSH_CERT_BAD_SIGNATURE:
        return "certificate signature does not verify";
    case RP_SSH_CERT_WRONG_TYPE:
        return "certificate is not a user certificate";
    case RP_SSH_CERT_NOT_YET_VALID:
        return "certificate is not yet valid";
    case RP_SSH_CERT_EXPIRED:
        return "certificate has expired";
    case RP_SSH_CERT_PRINCIPAL_NOT_LISTED:
        return "login is not among the certificate's principals";
    }
    return "certificate refused";
}

/* Which refusal says the most: a CA that signed is better news than a wrong CA, so a
 * later, more specific verdict wins when several CAs are tried. */
static int verdict_rank(enum rp_ssh_cert_verdict v)
{
    return v == RP_SSH_CERT_WRONG_CA ? 0 : v == RP_SSH_CERT_BAD_SIGNATURE ? 1 : 2;
}

static int check_ca(const struct sshd_decide_in *in, const struct rp_ssh_cert *cert, char *why,
                    size_t why_len)
{
    EVP_PKEY **cas = NULL;
    size_t n_cas = 0;
    int rv = in->authority->user_cas(in->authority->arg, &cas, &n_cas);
    if (rv != 0) {
        snprintf(why, why_len, "no trusted user CA is known to this node (%s)", rp_errmsg());
        return rv == RP_ENOTFOUND ? RP_EDENIED : rv;
    }
    enum rp_ssh_cert_verdict best = RP_SSH_CERT_WRONG_CA;
    bool ok = false;
    /* A jump host's user name may be the Teleport user (the key id): then any
     * principal will do, and the CA, type and validity are still checked. */
    const char *principal = in->login;
    if (in->login_may_be_key_id && cert->key_id != NULL && strcmp(cert->key_id, in->login) == 0)
        principal = NULL;
    for (size_t i = 0; i < n_cas; i++) {
        enum rp_ssh_cert_verdict v = RP_SSH_CERT_WRONG_CA;
        if (!ok && rp_ssh_cert_check(cert, cas[i], RP_SSH_CERT_USER, in->now_s, principal, &v) == 0)
            ok = true;
        else if (!ok && verdict_rank(v) >= verdict_rank(best))
            best = v;
        EVP_PKEY_free(cas[i]);
    }
    free(cas);
    rp_err_clear();
    if (ok)
        return 0;
    if (best == RP_SSH_CERT_PRINCIPAL_NOT_LISTED)
        snprintf(why, why_len, "ssh: principal \"%s\" not in the set of valid principals",
                 in->login);
    else
        snprintf(why, why_len, "%s", verdict_text(best));
    return RP_EDENIED;
}

static int check_critical(const struct sshd_decide_in *in, const struct rp_ssh_cert *cert,
                          struct sshd_grant *g, char *why, size_t why_len)
{
    for (size_t i = 0; i < cert->n_critical; i++) {
        const struct rp_ssh_cert_opt *o = &cert->critical[i];
        if (strcmp(o->name, RP_SSH_OPT_FORCE_COMMAND) == 0) {
            g->force_command = strdup(o->value);
            if (g->force_command == NULL) {
                snprintf(why, why_len, "out of memory");
                return RP_ENOMEM;
            }
        } else if (strcmp(o->name, RP_SSH_OPT_SOURCE_ADDRESS) == 0) {
            bool match = false;
            if (sshd_source_address_match(o->value, in->peer, &match) != 0) {
                snprintf(why, why_len, "certificate critical option %s", rp_errmsg());
                return RP_EDENIED;
            }
            if (!match) {
                snprintf(why, why_len,
                         "client address is not allowed by the certificate's source-address");
                return RP_EDENIED;
            }
        } else {
            snprintf(why, why_len, "certificate carries unsupported critical option %.64s",
                     o->name);
            return RP_EDENIED;
        }
    }
    return 0;
}

static int check_roles(const struct sshd_decide_in *in, struct sshd_grant *g, char *why,
                       size_t why_len)
{
    const struct agent_authority *a = in->authority;
    struct rbac_set *set = NULL;
    int rv = a->role_set(a->arg, (const char *const *)g->roles, g->n_roles, g->traits_json, &set,
                         why, why_len);
    if (rv != 0) {
        if (why[0] == '\0')
            snprintf(why, why_len, "the user's roles cannot be resolved: %s", rp_errmsg());
        return rv == RP_ENOTFOUND || rv == RP_EINVAL ? RP_EDENIED : rv;
    }
    rv = rbac_set_ssh_refused(set, why, why_len);
    if (rv != 0)
        goto out;
    struct agent_labels labels = {0};
    rv = a->labels(a->arg, &labels);
    if (rv != 0) {
        snprintf(why, why_len, "this node's labels cannot be read: %s", rp_errmsg());
        goto out;
    }
    rv = rbac_check_ssh(set, in->login, labels.items, labels.n, why, why_len);
    agent_labels_free(&labels);
    if (rv != 0)
        goto out;
    rbac_options(set, &g->opt);
out:
    rbac_set_free(set);
    return rv;
}

int sshd_lock_recheck(const struct agent_authority *a, const struct sshd_grant *g,
                      const char *login, const char *host_id, char *why, size_t why_len)
{
    why[0] = '\0';
    int rv = a->lock_check(a->arg, g->user, (const char *const *)g->roles, g->n_roles, login,
                           host_id, why, why_len);
    if (rv != 0 && why[0] == '\0')
        snprintf(why, why_len, "the locks cannot be read: %s", rp_errmsg());
    return rv;
}

static int copy_principals(const struct rp_ssh_cert *cert, struct sshd_grant *g)
{
    if (cert->n_principals == 0)
        return 0;
    g->principals = calloc(cert->n_principals, sizeof *g->principals);
    if (g->principals == NULL)
        return RP_ENOMEM;
    for (size_t i = 0; i < cert->n_principals; i++) {
        if ((g->principals[i] = strdup(cert->principals[i])) == NULL)
            return RP_ENOMEM;
        g->n_principals++;
    }
    return 0;
}

int sshd_cert_decide(const struct sshd_decide_in *in, struct sshd_grant *out, char *why,
                     size_t why_len)
{
    memset(out, 0, sizeof *out);
    why[0] = '\0';
    enum rp_ssh_keytype kt;
    bool is_cert = false;
    if (rp_ssh_key_type_from_name(in->cert_type, &kt, &is_cert) != 0 || !is_cert) {
        snprintf(why, why_len, "a plain %s key is not accepted: log in with a user certificate",
                 in->cert_type);
        rp_err_clear();
        return RP_EDENIED;
    }
    size_t line_len = strlen(in->cert_type) + strlen(in->cert_b64) + 2;
    char *line = malloc(line_len);
    if (line == NULL) {
        snprintf(why, why_len, "out of memory");
        return RP_ENOMEM;
    }
    snprintf(line, line_len, "%s %s", in->cert_type, in->cert_b64);
    struct rp_ssh_cert cert;
    int rv = rp_ssh_cert_parse_line(line, &cert, NULL);
    free(line);
    if (rv != 0) {
        snprintf(why, why_len, "the certificate cannot be parsed: %s", rp_errmsg());
        return RP_EDENIED;
    }
    out->user = strdup(cert.key_id ? cert.key_id : "");
    out->valid_before = cert.valid_before;
    out->serial = cert.serial;
    if (out->user == NULL) {
        snprintf(why, why_len, "out of memory");
        rv = RP_ENOMEM;
        goto out;
    }
    rv = check_ca(in, &cert, why, why_len);
    if (rv != 0)
        goto out;
    rv = check_critical(in, &cert, out, why, why_len);
    if (rv != 0)
        goto out;
    out->permit_pty =
        rp_ssh_cert_opt_find(cert.extensions, cert.n_extensions, RP_SSH_EXT_PERMIT_PTY) != NULL;
    bool cert_pf = rp_ssh_cert_opt_find(cert.extensions, cert.n_extensions,
                                        RP_SSH_EXT_PERMIT_PORT_FORWARDING) != NULL;
    bool cert_agent = rp_ssh_cert_opt_find(cert.extensions, cert.n_extensions,
                                           RP_SSH_EXT_PERMIT_AGENT_FORWARDING) != NULL;
    const char *roles =
        rp_ssh_cert_opt_find(cert.extensions, cert.n_extensions, RP_SSH_EXT_TELEPORT_ROLES);
    const char *traits =
        rp_ssh_cert_opt_find(cert.extensions, cert.n_extensions, RP_SSH_EXT_TELEPORT_TRAITS);
    if (roles == NULL) {
        snprintf(why, why_len,
                 "certificate has no teleport-roles extension: not issued by Raftport");
        rv = RP_EDENIED;
        goto out;
    }
    rv = parse_roles(roles, out, why, why_len);
    if (rv != 0)
        goto out;
    if (traits != NULL && traits[0] != '\0' && (out->traits_json = strdup(traits)) == NULL) {
        snprintf(why, why_len, "out of memory");
        rv = RP_ENOMEM;
        goto out;
    }
    if (copy_principals(&cert, out) != 0) {
        snprintf(why, why_len, "out of memory");
        rv = RP_ENOMEM;
        goto out;
    }
    /* What the certificate permits; sshd_decide narrows these by the roles. */
    out->permit_port_forwarding = cert_pf;
    out->permit_agent_forwarding = cert_agent;
out:
    rp_ssh_cert_free(&cert);
    return rv;
}

int sshd_decide(const struct sshd_decide_in *in, struct sshd_grant *out, char *why, size_t why_len)
{
    int rv = sshd_cert_decide(in, out, why, why_len);
    if (rv != 0)
        return rv;
    bool cert_pf = out->permit_port_forwarding, cert_agent = out->permit_agent_forwarding;
    out->permit_port_forwarding = out->permit_agent_forwarding = false;
    rv = check_roles(in, out, why, why_len);
    if (rv != 0)
        return rv;
    out->permit_port_forwarding = cert_pf && out->opt.port_forwarding;
    out->permit_agent_forwarding = cert_agent && out->opt.forward_agent;
    return sshd_lock_recheck(in->authority, out, in->login, in->host_id, why, why_len);
}
