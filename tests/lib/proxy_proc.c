/* tests/lib/proxy_proc.c: proxy processes for integration tests. */
#include "tests/lib/proxy_proc.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/util.h"
#include "tests/lib/cluster.h"

struct px_proc PX[PX_MAX + 1];

static int free_port(void)
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

void px_prepare(int i, const char *token, const char *extra_proxy)
{
    cr_assert(i >= 1 && i <= PX_MAX);
    struct px_proc *x = &PX[i];
    cr_assert(x->pid == 0, "proxy %d is running", i);
    if (!x->used) {
        memset(x, 0, sizeof *x);
        x->used = true;
        snprintf(x->name, sizeof x->name, "proxy%d", i);
        snprintf(x->dir, sizeof x->dir, "%s/proxy%d", CL->dir, i);
        snprintf(x->cfg, sizeof x->cfg, "%s/proxy%d.yaml", CL->dir, i);
        snprintf(x->log, sizeof x->log, "%s/proxy%d.log", CL->dir, i);
        snprintf(x->web_addr, sizeof x->web_addr, "127.0.0.1:%d", free_port());
        snprintf(x->tunnel_addr, sizeof x->tunnel_addr, "127.0.0.1:%d", free_port());
        snprintf(x->ssh_addr, sizeof x->ssh_addr, "127.0.0.1:%d", free_port());
    }
    FILE *f = fopen(x->cfg, "w");
    cr_assert_not_null(f, "%s: %s", x->cfg, strerror(errno));
    fchmod(fileno(f), 0600);
    fprintf(f, "version: v3\nteleport:\n  nodename: %s\n  data_dir: %s\n", x->name, x->dir);
    fprintf(f, "  auth_servers:\n");
    for (int n = 1; n <= CL_MAX_NODES; n++)
        if (CL->nodes[n].used)
            fprintf(f, "  - %s\n", CL->nodes[n].api_addr);
    fprintf(f, "  ca_pin: %s\n", CL->ca_pin);
    if (token != NULL)
        fprintf(f, "  join_params: {token_name: %s, method: token}\n", token);
    fprintf(f, "  log: {output: stderr, severity: INFO}\n");
    fprintf(f, "proxy_service:\n  enabled: yes\n  web_listen_addr: %s\n", x->web_addr);
    if (extra_proxy == NULL || strstr(extra_proxy, "tunnel_listen_addr:") == NULL)
        fprintf(f, "  tunnel_listen_addr: %s\n", x->tunnel_addr);
    fprintf(f, "  listen_addr: %s\n", x->ssh_addr);
    if (extra_proxy != NULL)
        fprintf(f, "%s", extra_proxy);
    cr_assert_eq(fclose(f), 0);
}

pid_t px_spawn_with(int i, const char *const *args, const char *const *env)
{
    char name[64];
    snprintf(name, sizeof name, "proxy %s", PX[i].name);
    return cl_spawn_daemon(&PX[i].d, "--roles=proxy", PX[i].cfg, PX[i].log, name, args, env);
}

pid_t px_spawn(int i)
{
    return px_spawn_with(i, NULL, NULL);
}

bool px_alive(int i)
{
    return cl_daemon_alive(&PX[i].d);
}

void px_kill9(int i)
{
    cl_daemon_kill9(&PX[i].d);
}

int px_term(int i, int timeout_ms)
{
    return cl_daemon_term(&PX[i].d, timeout_ms);
}

static char *read_log(int i)
{
    char *buf = NULL;
    size_t n = 0;
    if (rp_read_file(PX[i].log, 64u << 20, &buf, &n) != 0)
        return NULL;
    return buf;
}

int px_log_count(int i, const char *needle)
{
    char *log = read_log(i);
    int n = 0;
    for (const char *p = log; p && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    free(log);
    return n;
}

bool px_log_contains(int i, const char *needle)
{
    return px_log_count(i, needle) > 0;
}

bool px_wait_log(int i, const char *needle, int timeout_ms)
{
    uint64_t end = cl_now_ms() + (uint64_t)timeout_ms;
    for (;;) {
        if (px_log_contains(i, needle))
            return true;
        if (cl_now_ms() >= end || !px_alive(i))
            return px_log_contains(i, needle);
        cl_sleep_ms(50);
    }
}

bool px_wait_ready(int i, int timeout_ms)
{
    bool ok = px_wait_log(i, "serving on", timeout_ms);
    if (!ok)
        px_print_log_tail(i, 40);
    return ok;
}

void px_print_log_tail(int i, int lines)
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
    fprintf(stderr, "---- %s (last %d lines) ----\n%s\n", PX[i].log, lines, log + start);
    free(log);
}

void px_host_id(int i, char *out, size_t n)
{
    char path[600];
    snprintf(path, sizeof path, "%s/host_uuid", PX[i].dir);
    FILE *f = fopen(path, "r");
    cr_assert_not_null(f, "%s is missing", path);
    cr_assert_not_null(fgets(out, (int)n, f));
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
}

void px_stop_all(void)
{
    for (int i = 1; i <= PX_MAX; i++)
        if (PX[i].used)
            px_kill9(i);
    for (int i = 1; i <= PX_MAX; i++) {
        if (!PX[i].used)
            continue;
        bool report = px_log_contains(i, "AddressSanitizer") ||
                      px_log_contains(i, "LeakSanitizer") || px_log_contains(i, "runtime error:");
        if (report)
            px_print_log_tail(i, 60);
        cr_assert_not(report, "proxy %s logged a sanitizer report", PX[i].name);
    }
    memset(PX, 0, sizeof PX);
}
