/* tools/raftport.c: the Raftport daemon.
 *
 *   raftport start -c FILE [flags]   run the roles the configuration enables
 *   raftport version
 *
 * Flags override the file. SIGTERM and SIGINT stop the daemon gracefully (a
 * leading auth server hands leadership over first). */
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "agent/agent.h"
#include "auth/auth.h"
#include "lib/config.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/version.h"
#include "proxy/proxy.h"

#define RAFTPORT_VERSION rp_version_self()

static void usage(FILE *f)
{
    fprintf(f, "usage: raftport start -c FILE [flags]\n"
               "       raftport version\n"
               "\n"
               "Flags of start (each overrides the configuration file):\n"
               "  -c, --config FILE        configuration file (YAML)\n"
               "      --roles LIST         roles to run: auth, node or proxy (one per process)\n"
               "      --nodename NAME      teleport.nodename\n"
               "      --data-dir DIR       teleport.data_dir\n"
               "      --auth-server ADDR   teleport.auth_server: a member to join through;\n"
               "                           a node takes a list: HOST:PORT[,HOST:PORT...]\n"
               "      --proxy-server ADDR  teleport.proxy_server: a node reaches auth and serves\n"
               "                           sessions through this proxy (reverse tunnel)\n"
               "      --token TOKEN        teleport.join_params.token_name: join with this token\n"
               "      --ca-pin PIN         teleport.ca_pin: sha256:<hex> of the cluster CA\n"
               "      --cluster-name NAME  auth_service.cluster_name (bootstrap only)\n"
               "      --listen-addr ADDR   auth_service.listen_addr (auth API)\n"
               "      --raft-id N          auth_service.raft.id\n"
               "      --raft-addr ADDR     auth_service.raft.listen_addr\n"
               "      --skip-version-check start even if the auth server runs an older major\n"
               "                           version (proxy and node)\n"
               "  -d, --debug              log at DEBUG level\n");
}

static int cmd_start(int argc, char **argv)
{
    enum {
        O_ROLES = 256,
        O_NODENAME,
        O_DATA_DIR,
        O_AUTH_SERVER,
        O_TOKEN,
        O_CA_PIN,
        O_CLUSTER,
        O_LISTEN,
        O_RAFT_ID,
        O_RAFT_ADDR,
        O_PROXY_SERVER,
        O_SKIP_VERSION
    };
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"debug", no_argument, NULL, 'd'},
        {"roles", required_argument, NULL, O_ROLES},
        {"nodename", required_argument, NULL, O_NODENAME},
        {"data-dir", required_argument, NULL, O_DATA_DIR},
        {"auth-server", required_argument, NULL, O_AUTH_SERVER},
        {"token", required_argument, NULL, O_TOKEN},
        {"ca-pin", required_argument, NULL, O_CA_PIN},
        {"cluster-name", required_argument, NULL, O_CLUSTER},
        {"listen-addr", required_argument, NULL, O_LISTEN},
        {"raft-id", required_argument, NULL, O_RAFT_ID},
        {"raft-addr", required_argument, NULL, O_RAFT_ADDR},
        {"proxy-server", required_argument, NULL, O_PROXY_SERVER},
        {"skip-version-check", no_argument, NULL, O_SKIP_VERSION},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct rp_config cfg;
    const char *path = NULL;
    bool debug = false;
    int c;
    rp_config_init(&cfg);
    /* First pass: find the file, which the flags then override. */
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:dh", opts, NULL)) != -1) {
        if (c == 'c')
            path = optarg;
        else if (c == 'h') {
            usage(stdout);
            return 0;
        } else if (c == '?') {
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "raftport start: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (path != NULL && rp_config_load(&cfg, path) != 0) {
        fprintf(stderr, "raftport: %s\n", rp_errmsg());
        rp_config_free(&cfg);
        return 1;
    }
    optind = 1;
    while ((c = getopt_long(argc, argv, "c:dh", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            debug = true;
            break;
        case O_ROLES:
            if (strcmp(optarg, "auth") == 0) {
                cfg.auth_enabled = true;
            } else if (strcmp(optarg, "node") == 0) {
                cfg.ssh_enabled = true;
            } else if (strcmp(optarg, "proxy") == 0) {
                cfg.proxy_enabled = true;
            } else {
                fprintf(stderr,
                        "raftport: --roles=%s: expected auth, node or proxy (one role per "
                        "process in this version)\n",
                        optarg);
                rp_config_free(&cfg);
                return 2;
            }
            break;
        case O_PROXY_SERVER:
            rp_config_set(&cfg.proxy_server, optarg);
            break;
        case O_NODENAME:
            rp_config_set(&cfg.nodename, optarg);
            break;
        case O_DATA_DIR:
            rp_config_set(&cfg.data_dir, optarg);
            break;
        case O_AUTH_SERVER:
            if (strchr(optarg, ',') != NULL) {
                /* A list: the node fails over between them; auth_server is the first. */
                if (rp_config_set_auth_servers(&cfg, optarg) != 0) {
                    fprintf(stderr, "raftport: --auth-server: %s\n", rp_errmsg());
                    rp_config_free(&cfg);
                    return 2;
                }
                rp_config_set(&cfg.auth_server, cfg.auth_servers[0]);
            } else {
                rp_config_set(&cfg.auth_server, optarg);
            }
            break;
        case O_TOKEN:
            rp_config_set(&cfg.join_token, optarg);
            break;
        case O_CA_PIN:
            rp_config_set(&cfg.ca_pin, optarg);
            break;
        case O_SKIP_VERSION:
            cfg.skip_version_check = true;
            break;
        case O_CLUSTER:
            rp_config_set(&cfg.cluster_name, optarg);
            break;
        case O_LISTEN:
            rp_config_set(&cfg.auth_listen_addr, optarg);
            break;
        case O_RAFT_ADDR:
            rp_config_set(&cfg.raft_listen_addr, optarg);
            break;
        case O_RAFT_ID: {
            char *end;
            unsigned long long v = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v == 0) {
                fprintf(stderr, "raftport: --raft-id=%s: expected a positive integer\n", optarg);
                rp_config_free(&cfg);
                return 2;
            }
            cfg.raft_id = v;
            break;
        }
        default:
            break;
        }
    }
    rp_config_finish(&cfg);
    if (rp_config_validate(&cfg) != 0) {
        fprintf(stderr, "raftport: %s%s%s\n", path ? path : "", path ? ": " : "", rp_errmsg());
        rp_config_free(&cfg);
        return 1;
    }
    int level = rp_log_level_parse(cfg.log_severity ? cfg.log_severity : "info");
    rp_log_set_level(debug ? RP_LOG_DEBUG : level < 0 ? RP_LOG_INFO : (enum rp_log_level)level);
    rp_log_set_prefix(cfg.nodename);
    if (cfg.proxy_enabled && (cfg.auth_enabled || cfg.ssh_enabled)) {
        fprintf(stderr, "raftport: proxy_service runs in a process of its own in this version: "
                        "start it with --roles=proxy and the other services separately\n");
        rp_config_free(&cfg);
        return 1;
    }
    if (cfg.proxy_enabled) {
        int code = proxy_main(&cfg);
        rp_config_free(&cfg);
        return code;
    }
    if (cfg.ssh_enabled && cfg.auth_enabled) {
        fprintf(stderr, "raftport: auth_service and ssh_service run in separate processes in "
                        "this version: start one with --roles=auth and one with --roles=node\n");
        rp_config_free(&cfg);
        return 1;
    }
    if (cfg.ssh_enabled) {
        int code = agent_main(&cfg, RAFTPORT_VERSION);
        rp_config_free(&cfg);
        return code;
    }
    if (cfg.auth_enabled && strncmp(cfg.raft_listen_addr, "0.0.0.0:", 8) == 0) {
        /* The Raft address is also what peers dial: it must name this host. */
        fprintf(stderr,
                "raftport: auth_service.raft.listen_addr %s is not an address other "
                "auth servers can reach; give this host's IP address (e.g. 10.0.0.5:3030)\n",
                cfg.raft_listen_addr);
        rp_config_free(&cfg);
        return 1;
    }
    if (!cfg.auth_enabled) {
        fprintf(stderr, "raftport: no role enabled: set auth_service.enabled: yes or "
                        "ssh_service.enabled: yes (or --roles=auth|node)\n");
        rp_config_free(&cfg);
        return 1;
    }

    /* Signals are taken by sigwait below, never by a worker thread. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
    /* The API port holds up to 1024 connections besides Raft peers, LMDB and logs:
     * more than the usual soft limit of 1024 descriptors. */
    struct rlimit nofile;
    if (getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
        nofile.rlim_cur = nofile.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &nofile) != 0)
            rp_warn("main", "cannot raise the open-file limit to %llu",
                    (unsigned long long)nofile.rlim_max);
    }

    struct auth_server *srv;
    if (auth_server_start(&srv, &cfg) != 0) {
        rp_error("main", "cannot start the auth service: %s", rp_errmsg());
        rp_config_free(&cfg);
        return 1;
    }
    rp_info("main", "raftport %s started (pid %d)", RAFTPORT_VERSION, (int)getpid());
#ifdef RP_TEST_STALE_READS
    rp_warn("main", "TEST BUILD: followers answer reads from local state without a barrier "
                    "(stale reads); never run this binary outside the Jepsen harness");
#endif
    int sig = 0;
    sigwait(&set, &sig);
    rp_info("main", "received %s, stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    auth_server_stop(srv);
    rp_info("main", "stopped");
    rp_config_free(&cfg);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "start") == 0)
        return cmd_start(argc - 1, argv + 1);
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("raftport %s\n", RAFTPORT_VERSION);
        return 0;
    }
    if (strcmp(argv[1], "help") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "raftport: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
