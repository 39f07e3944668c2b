/* tests/lib/agent_proc.h: node agents (`raftport start --roles=node`) next to a test
 * cluster (tests/lib/cluster.h), for integration tests.
 *
 * An agent N lives in the cluster's temp dir: nodeN.yaml (config), nodeN.log (its
 * stdout and stderr, appended over restarts), nodeN/ (data_dir). It dies with the test
 * process (PR_SET_PDEATHSIG) and ag_stop_all() (call it before cluster_pass) kills
 * what is left. */
#ifndef RP_TESTS_AGENT_PROC_H
#define RP_TESTS_AGENT_PROC_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "tests/lib/cluster.h"

#define AG_MAX 8

struct ag_proc {
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
    char ssh_addr[64];
};

extern struct ag_proc AG[AG_MAX + 1];

/* Writes agent @i's config: every running auth node as auth_servers, the cluster's
 * CA pin, @token (NULL: none), a static label env=test, heartbeat_period 1s and a
 * command label arch (uname -m, every 1s) unless @extra_ssh sets its own, then
 * @extra_ssh (lines under ssh_service, each indented by two spaces; may be NULL). */
void ag_prepare(int i, const char *token, const char *extra_ssh);
/* The same for an agent in proxy mode: teleport.proxy_server @proxy_server instead of
 * auth servers (join, auth calls and sessions all go through the proxy),
 * keep_alive_interval @keep_alive (e.g. "1s"; NULL: the default), and no
 * ssh_service.listen_addr (a tunnel-only node) unless @extra_ssh sets one. */
void ag_prepare_proxy(int i, const char *token, const char *proxy_server, const char *keep_alive,
                      const char *extra_ssh);
pid_t ag_spawn(int i);
/* ag_spawn with @args (NULL-terminated extra flags; may be NULL) and @env
 * (NULL-terminated "NAME=VALUE" added to the agent's environment; may be NULL). */
pid_t ag_spawn_with(int i, const char *const *args, const char *const *env);
void ag_kill9(int i);
/* SIGTERM, then the wait status within @timeout_ms (-1: killed after the timeout). */
int ag_term(int i, int timeout_ms);
bool ag_alive(int i);
bool ag_log_contains(int i, const char *needle);
/* Polls the log for @needle for up to @timeout_ms. */
bool ag_wait_log(int i, const char *needle, int timeout_ms);
/* How many times @needle occurs in the log. */
int ag_log_count(int i, const char *needle);
void ag_print_log_tail(int i, int lines);
/* Kills every agent still running (SIGKILL); fails the test if an agent's log holds
 * a sanitizer report. */
void ag_stop_all(void);

#endif
