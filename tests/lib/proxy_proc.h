/* tests/lib/proxy_proc.h: proxies (`raftport start --roles=proxy`) next to a test
 * cluster (tests/lib/cluster.h), for integration tests.
 *
 * A proxy N lives in the cluster's temp dir: proxyN.yaml (config), proxyN.log (its
 * stdout and stderr, appended over restarts), proxyN/ (data_dir). Its addresses are
 * free loopback ports picked once: web_addr (web_listen_addr), tunnel_addr and
 * ssh_addr. It dies with the test process (PR_SET_PDEATHSIG) and px_stop_all() (call
 * it before cluster_pass) kills what is left. */
#ifndef RP_TESTS_PROXY_PROC_H
#define RP_TESTS_PROXY_PROC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "tests/lib/cluster.h"

#define PX_MAX 4

struct px_proc {
    bool used;
    union { /* the process, as tests/lib/cluster.h's helpers and the tests see it */
        struct cl_daemon d;
        struct {
            pid_t pid; /* 0: not running */
            int last_status;
        };
    };
    char name[32];
    char dir[512], cfg[512], log[512];
    char web_addr[64];    /* proxy_service.web_listen_addr, 127.0.0.1:PORT */
    char tunnel_addr[64]; /* proxy_service.tunnel_listen_addr */
    char ssh_addr[64];    /* proxy_service.listen_addr */
};

extern struct px_proc PX[PX_MAX + 1];

/* Writes proxy @i's config: every running auth node as auth_servers, the cluster's CA
 * pin, @token (a proxy token; NULL: none), the three addresses (the tunnel on its own
 * port unless @extra_proxy sets tunnel_listen_addr), then @extra_proxy (lines under
 * proxy_service, each indented by two spaces; may be NULL). */
void px_prepare(int i, const char *token, const char *extra_proxy);
/* Starts proxy @i with `raftport start --roles=proxy -c CFG`, @args (NULL-terminated
 * extra flags; may be NULL) and @env (NULL-terminated "NAME=VALUE" added to the
 * environment; may be NULL). */
pid_t px_spawn_with(int i, const char *const *args, const char *const *env);
pid_t px_spawn(int i);
/* Polls the log for the line that says the proxy serves (true) until @timeout_ms. */
bool px_wait_ready(int i, int timeout_ms);
void px_kill9(int i);
/* SIGTERM, then the wait status within @timeout_ms (-1: killed after the timeout). */
int px_term(int i, int timeout_ms);
bool px_alive(int i);
bool px_log_contains(int i, const char *needle);
bool px_wait_log(int i, const char *needle, int timeout_ms);
int px_log_count(int i, const char *needle);
void px_print_log_tail(int i, int lines);
/* The host id the proxy joined with (data_dir/host_uuid) into @out. */
void px_host_id(int i, char *out, size_t n);
/* Kills every proxy still running; fails the test if a log holds a sanitizer report. */
void px_stop_all(void);

#endif
