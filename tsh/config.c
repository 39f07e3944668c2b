/* tsh/config.c: tsh config, an OpenSSH client configuration that makes a stock
 * `ssh LOGIN@NODE.CLUSTER` go through the proxy (tsh proxy ssh as ProxyCommand) with
 * the profile's key and certificate, trusting hosts by the cluster's host CA. */
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "lib/errors.h"
#include "tsh/tsh.h"

/* Host certificates of every key type Raftport nodes may have, newest first; then the
 * plain keys: a node on libssh 0.10 cannot present a host certificate, and
 * `tsh proxy ssh` records its plain key (once its published certificate verified
 * against the host CA) in the same known_hosts file. */
#define HOST_KEY_ALGORITHMS                                                                        \
    "ssh-ed25519-cert-v01@openssh.com,ecdsa-sha2-nistp256-cert-v01@openssh.com,"                   \
    "ecdsa-sha2-nistp384-cert-v01@openssh.com,ecdsa-sha2-nistp521-cert-v01@openssh.com,"           \
    "rsa-sha2-512-cert-v01@openssh.com,rsa-sha2-256-cert-v01@openssh.com,"                         \
    "ssh-ed25519,ecdsa-sha2-nistp256,ecdsa-sha2-nistp384,ecdsa-sha2-nistp521,rsa-sha2-512,"        \
    "rsa-sha2-256"

/* ssh_config quotes: a path with blanks stays one argument. */
static void quoted(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\')
            fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

/* "host" of "host:port" (brackets of an IPv6 address dropped) and its port. */
static void split_hostport(const char *hp, char *host, size_t hostlen, char *port, size_t portlen)
{
    const char *colon = strrchr(hp, ':');
    size_t n = colon ? (size_t)(colon - hp) : strlen(hp);
    if (n >= 2 && hp[0] == '[' && hp[n - 1] == ']')
        snprintf(host, hostlen, "%.*s", (int)(n - 2), hp + 1);
    else
        snprintf(host, hostlen, "%.*s", (int)n, hp);
    snprintf(port, portlen, "%s", colon ? colon + 1 : "");
}

int tsh_cmd_config(int argc, char **argv, const struct tsh_globals *gin)
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
    struct tsh_profile p;
    rv = tsh_profile_load(g.home, g.proxy, &p);
    if (rv == RP_EDENIED) {
        /* The configuration names files, not their contents: it stays right after the
         * next login. Say so, and print it anyway. */
        fprintf(stderr, "tsh config: note: %s\n", rp_errmsg());
    } else if (rv != 0) {
        fprintf(stderr, "tsh config: %s\n", rp_errmsg());
        return 1;
    }
    char self[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0)
        snprintf(self, sizeof self, "tsh");
    else
        self[n] = '\0';

    /* The proxy's own SSH listener, for ssh -J; ping says where it is (optional). */
    struct tsh_web w;
    struct tsh_ping ping;
    tsh_web_from_profile(&w, &p);
    w.cert_path = w.key_path = NULL;
    w.timeout_ms = 3000;
    bool pinged = tsh_web_ping(&w, &ping) == 0;

    FILE *o = stdout;
    fprintf(o, "# Begin generated Raftport configuration for %s by tsh\n\n", p.proxy);
    fprintf(o, "# Nodes of cluster %s: ssh LOGIN@NODE.%s goes through the proxy %s\n", p.cluster,
            p.cluster, p.proxy);
    fprintf(o, "Host *.%s %s\n", p.cluster, p.cluster);
    fprintf(o, "    Port 3022\n");
    fprintf(o, "    UserKnownHostsFile ");
    quoted(o, p.known_hosts_path);
    fprintf(o, "\n    IdentityFile ");
    quoted(o, p.key_path);
    fprintf(o, "\n    CertificateFile ");
    quoted(o, p.cert_path);
    fprintf(o, "\n    IdentitiesOnly yes\n");
    fprintf(o, "    HostKeyAlgorithms " HOST_KEY_ALGORITHMS "\n");
    fprintf(o, "    ProxyCommand ");
    quoted(o, self);
    fprintf(o, " proxy ssh --cluster=%s --proxy=%s %%r@%%h:%%p\n", p.cluster, p.proxy);
    const char *jump =
        pinged ? (ping.ssh_public_addr[0] ? ping.ssh_public_addr : ping.ssh_listen_addr) : "";
    if (jump[0] != '\0') {
        char host[TSH_NAME_MAX], port[16], phost[TSH_NAME_MAX], pport[16];
        split_hostport(jump, host, sizeof host, port, sizeof port);
        split_hostport(p.proxy, phost, sizeof phost, pport, sizeof pport);
        if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0 || host[0] == '\0')
            snprintf(host, sizeof host, "%s", phost);
        fprintf(o, "\n# The proxy's SSH port, for ssh -J %s:%s LOGIN@NODE without tsh\n", host,
                port);
        fprintf(o, "Host %s\n", host);
        if (port[0] != '\0')
            fprintf(o, "    Port %s\n", port);
        fprintf(o, "    UserKnownHostsFile ");
        quoted(o, p.known_hosts_path);
        fprintf(o, "\n    IdentityFile ");
        quoted(o, p.key_path);
        fprintf(o, "\n    CertificateFile ");
        quoted(o, p.cert_path);
        fprintf(o, "\n    HostKeyAlgorithms " HOST_KEY_ALGORITHMS "\n");
    }
    fprintf(o, "\n# End generated Raftport configuration\n");
    return 0;
}
