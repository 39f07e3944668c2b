/* tests/lib/agent_proc.c: node agent processes for integration tests. */
#include "tests/lib/agent_proc.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "tests/lib/cluster.h"

struct ag_proc AG[AG_MAX + 1];

static int loopback_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof sa;
    cr_assert(bind(fd, (struct sockaddr *)&sa, sizeof sa) == 0 &&
              getsockname(fd, (struct sockaddr *)&sa, &len) == 0);
    close(fd);
    return ntohs(sa.sin_port);
}

static void prepare(int i, const char *token, const char *extra_ssh, const char *proxy_server,
                    const char *keep_alive)
{
    cr_assert(i >= 1 && i <= AG_MAX);
    struct ag_proc *a = &AG[i];
    cr_assert(a->pid == 0, "agent %d is running", i);
    if (!a->used) {
        memset(a, 0, sizeof *a);
        a->used = true;
        snprintf(a->name, sizeof a->name, "node%d", i);
        snprintf(a->dir, sizeof a->dir, "%s/node%d", CL->dir, i);
        snprintf(a->cfg, sizeof a->cfg, "%s/node%d.yaml", CL->dir, i);
        snprintf(a->log, sizeof a->log, "%s/node%d.log", CL->dir, i);
        snprintf(a->ssh_addr, sizeof a->ssh_addr, "127.0.0.1:%d", loopback_port());
    }
    FILE *f = fopen(a->cfg, "w");
    cr_assert_not_null(f, "%s: %s", a->cfg, strerror(errno));
    fchmod(fileno(f), 0600);
    fprintf(f, "version: v3\nteleport:\n  nodename: %s\n  data_dir: %s\n", a->name, a->dir);
    if (proxy_server != NULL) {
        fprintf(f, "  proxy_server: %s\n", proxy_server);
        if (keep_alive != NULL)
            fprintf(f, "  keep_alive_interval: %s\n", keep_alive);
    } else {
        fprintf(f, "  auth_servers:\n");
        for (int n = 1; n <= CL_MAX_NODES; n++)
            if (CL->nodes[n].used)
                fprintf(f, "  - %s\n", CL->nodes[n].api_addr);
    }
    fprintf(f, "  ca_pin: %s\n", CL->ca_pin);
    if (token != NULL)
        fprintf(f, "  join_params: {token_name: %s, method: token}\n", token);
    fprintf(f, "  log: {output: stderr, severity: INFO}\n");
    fprintf(f, "ssh_service:\n  enabled: yes\n");
    /* In proxy mode the node listens only if told to: tests reach it through the tunnel. */
    if (proxy_server == NULL)
        fprintf(f, "  listen_addr: %s\n", a->ssh_addr);
    fprintf(f, "  labels: {env: test}\n");
    if (extra_ssh == NULL || strstr(extra_ssh, "commands:") == NULL)
        fprintf(f, "  commands: [{name: arch, command: [uname, -m], period: 1s}]\n");
    if (extra_ssh == NULL || strstr(extra_ssh, "heartbeat_period:") == NULL)
        fprintf(f, "  heartbeat_period: 1s\n");
    fprintf(f, "  shutdown_grace: 2s\n");
    if (extra_ssh != NULL)
        fprintf(f, "%s", extra_ssh);
    cr_assert_eq(fclose(f), 0);
}

void ag_prepare(int i, const char *token, const char *extra_ssh)
{
    prepare(i, token, extra_ssh, NULL, NULL);
}

void ag_prepare_proxy(int i, const char *token, const char *proxy_server, const char *keep_alive,
                      const char *extra_ssh)
{
    prepare(i, token, extra_ssh, proxy_server, keep_alive);
}

pid_t ag_spawn(int i)
{
    return ag_spawn_with(i, NULL, NULL);
}

pid_t ag_spawn_with(int i, const char *const *args, const char *const *env)
{
    char name[64];
    snprintf(name, sizeof name, "agent %s", AG[i].name);
    return cl_spawn_daemon(&AG[i].d, "--roles=node", AG[i].cfg, AG[i].log, name, args, env);
}

bool ag_alive(int i)
{
    return cl_daemon_alive(&AG[i].d);
}

void ag_kill9(int i)
{
    cl_daemon_kill9(&AG[i].d);
}

int ag_term(int i, int timeout_ms)
{
    return cl_daemon_term(&AG[i].d, timeout_ms);
}

static char *read_log(int i)
{
    FILE *f = fopen(AG[i].log, "r");
    if (f == NULL)
        return NULL;
    char *buf = NULL;
    size_t n = 0;
    FILE *m = open_memstream(&buf, &n);
    char chunk[4096];
    size_t got;
    while ((got = fread(chunk, 1, sizeof chunk, f)) > 0)
        fwrite(chunk, 1, got, m);
    fclose(m);
    fclose(f);
    return buf;
}

int ag_log_count(int i, const char *needle)
{
    char *log = read_log(i);
    int n = 0;
    for (const char *p = log; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    free(log);
    return n;
}

bool ag_log_contains(int i, const char *needle)
{
    return ag_log_count(i, needle) > 0;
}

bool ag_wait_log(int i, const char *needle, int timeout_ms)
{
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (ag_log_contains(i, needle))
            return true;
        if (cl_now_ms() >= end)
            return false;
        cl_sleep_ms(50);
    }
}

void ag_print_log_tail(int i, int lines)
{
    char *log = read_log(i);
    if (log == NULL)
        return;
    size_t n = strlen(log);
    int seen = 0;
    size_t start = n;
    while (start > 0 && seen <= lines)
        if (log[--start] == '\n')
            seen++;
    fprintf(stderr, "---- %s (last %d lines) ----\n%s\n", AG[i].log, lines, log + start);
    free(log);
}

void ag_stop_all(void)
{
    for (int i = 1; i <= AG_MAX; i++)
        if (AG[i].used)
            ag_kill9(i);
    /* An agent built with sanitizers (make asan) reports into its log. */
    for (int i = 1; i <= AG_MAX; i++) {
        if (!AG[i].used)
            continue;
        bool report = ag_log_contains(i, "AddressSanitizer") ||
                      ag_log_contains(i, "LeakSanitizer") || ag_log_contains(i, "runtime error:");
        if (report)
            ag_print_log_tail(i, 60);
        cr_assert_not(report, "agent %s logged a sanitizer report", AG[i].name);
    }
    memset(AG, 0, sizeof AG);
}
