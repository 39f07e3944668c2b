/* tests/test_int_bootstrap.c: a cluster of real daemons boots from one node and
 * tokens: members, leader, status document, identity files, replication of a
 * write sent to a follower, tokens seen cluster-wide, config errors. */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "lib/errors.h"
#include "tests/lib/cluster.h"

TestSuite(int_bootstrap, .init = cluster_setup, .fini = cluster_teardown, .timeout = 60);

/* Status as seen from every running node: @n voters, one leader, the others
 * followers, the cluster's name and pin. */
static void assert_healthy_everywhere(int n)
{
    for (int i = 1; i <= n; i++) {
        struct cl_status st;
        cr_assert_eq(cluster_status(i, &st), 0, "tctl status on auth%d failed", i);
        cr_assert_eq(st.n_members, (unsigned)n, "auth%d sees %u members, want %d", i, st.n_members,
                     n);
        cr_assert_eq(cl_status_count_role(&st, "voter"), (unsigned)n, "auth%d: not all voters", i);
        cr_assert_str_eq(st.cluster_name, CL->cluster_name);
        cr_assert_str_eq(st.ca_pin, CL->ca_pin, "auth%d reports another CA pin", i);
        cr_assert_neq(st.leader_id, 0, "auth%d knows no leader", i);
        unsigned leaders = 0, followers = 0;
        for (unsigned k = 0; k < st.n_members; k++) {
            const struct cl_member *m = &st.members[k];
            cr_assert(m->id >= 1 && m->id <= (uint64_t)n, "unexpected member id %llu",
                      (unsigned long long)m->id);
            cr_assert_str_eq(m->address, CL->nodes[m->id].raft_addr, "member %llu's address",
                             (unsigned long long)m->id);
            leaders += strcmp(m->state, "leader") == 0;
            followers += strcmp(m->state, "follower") == 0;
        }
        cr_assert_eq(leaders, 1, "auth%d: %u members say leader", i, leaders);
        cr_assert_eq(followers, (unsigned)n - 1, "auth%d: %u followers", i, followers);
        cr_assert_eq(strcmp(cl_status_member(&st, st.leader_id)->state, "leader"), 0);
    }
}

Test(int_bootstrap, three_nodes_join_with_tokens_and_elect_one_leader)
{
    cluster_start(3);
    assert_healthy_everywhere(3);
    cluster_pass();
}

Test(int_bootstrap, five_nodes_join_with_tokens_and_elect_one_leader)
{
    cluster_start(5);
    assert_healthy_everywhere(5);
    cluster_pass();
}

static void assert_keys_exactly(const struct cl_json *obj, const char *const *keys, size_t n,
                                const char *what)
{
    cr_assert(obj != NULL && obj->type == CLJ_OBJ, "%s is not a JSON object", what);
    cr_assert_eq(obj->n, n, "%s has %zu fields, want %zu", what, obj->n, n);
    for (size_t k = 0; k < n; k++)
        cr_assert_not_null(cl_json_get(obj, keys[k]), "%s lacks \"%s\"", what, keys[k]);
}

Test(int_bootstrap, status_json_has_exactly_the_documented_fields)
{
    cluster_start(3);
    char *out = NULL;
    cr_assert_eq(run_tctl(2, &out, "status", "--format=json", NULL), 0);
    struct cl_json *j = cl_json_parse(out);
    cr_assert_not_null(j, "status --format=json is not JSON:\n%s", out);
    static const char *const top[] = {"cluster_name", "ca_pin", "leader_id", "term", "members"};
    static const char *const mem[] = {"id", "address", "role", "state", "last_applied"};
    assert_keys_exactly(j, top, 5, "the status document");
    cr_assert_eq(cl_json_get(j, "cluster_name")->type, CLJ_STR);
    cr_assert_eq(cl_json_get(j, "ca_pin")->type, CLJ_STR);
    cr_assert_eq(cl_json_get(j, "leader_id")->type, CLJ_NUM);
    cr_assert_eq(cl_json_get(j, "term")->type, CLJ_NUM);
    cr_assert_geq(cl_json_u64(j, "term"), 1);
    const struct cl_json *members = cl_json_get(j, "members");
    cr_assert_eq(members->type, CLJ_ARR);
    cr_assert_eq(members->n, 3);
    for (size_t k = 0; k < members->n; k++) {
        const struct cl_json *m = &members->items[k];
        assert_keys_exactly(m, mem, 5, "a member");
        cr_assert_eq(cl_json_get(m, "id")->type, CLJ_NUM);
        cr_assert_eq(cl_json_get(m, "address")->type, CLJ_STR);
        cr_assert_eq(cl_json_get(m, "role")->type, CLJ_STR);
        cr_assert_eq(cl_json_get(m, "state")->type, CLJ_STR);
        cr_assert_eq(cl_json_get(m, "last_applied")->type, CLJ_NUM);
        cr_assert_gt(cl_json_u64(m, "last_applied"), 0, "member %zu applied nothing", k);
    }
    cl_json_free(j);
    free(out);
    cluster_pass();
}

/* sha256:<hex> of the certificate's public key, computed by the openssl CLI. */
static void openssl_pin(const char *cert, char *out, size_t outlen)
{
    char cmd[1400];
    snprintf(cmd, sizeof cmd,
             "openssl x509 -in '%s' -pubkey -noout | openssl pkey -pubin -outform der | "
             "sha256sum",
             cert);
    FILE *p = popen(cmd, "r");
    cr_assert_not_null(p);
    char line[256] = "";
    char *got = fgets(line, sizeof line, p);
    int rc = pclose(p);
    cr_assert(got != NULL && rc == 0, "`%s` failed (%d)", cmd, rc);
    line[strcspn(line, " \n")] = '\0';
    cr_assert_eq(strlen(line), 64, "sha256sum printed '%s'", line);
    snprintf(out, outlen, "sha256:%.64s", line);
}

Test(int_bootstrap, ca_pin_matches_openssl_and_key_files_are_mode_0600)
{
    cluster_start(3);
    for (int i = 1; i <= 3; i++) {
        char path[700], pin[128];
        snprintf(path, sizeof path, "%s/keys/ca.crt", CL->nodes[i].dir);
        openssl_pin(path, pin, sizeof pin);
        cr_assert_str_eq(pin, CL->ca_pin, "auth%d: ca.crt pin %s, status says %s", i, pin,
                         CL->ca_pin);

        snprintf(path, sizeof path, "%s/keys", CL->nodes[i].dir);
        DIR *d = opendir(path);
        cr_assert_not_null(d, "%s", path);
        unsigned n_keys = 0;
        struct dirent *e;
        while ((e = readdir(d)) != NULL) {
            if (strstr(e->d_name, ".key") == NULL)
                continue;
            char f[1000];
            struct stat sb;
            snprintf(f, sizeof f, "%s/%s", path, e->d_name);
            cr_assert_eq(stat(f, &sb), 0, "%s", f);
            cr_assert_eq(sb.st_mode & 07777, 0600, "%s has mode %04o, want 0600", f,
                         (unsigned)(sb.st_mode & 07777));
            n_keys++;
        }
        closedir(d);
        /* host.key and admin.key at least. */
        cr_assert_geq(n_keys, 2, "auth%d: only %u key files in %s", i, n_keys, path);
    }
    cluster_pass();
}

Test(int_bootstrap, write_sent_to_a_follower_is_visible_on_every_node)
{
    cluster_start(3);
    uint64_t leader = cluster_leader_id();
    cr_assert_neq(leader, 0);
    int follower = node_by_raft_id(leader == 1 ? 2 : 1);
    int rv = node_put(follower, "itest", "from-follower", "hello");
    cr_assert_eq(rv, 0, "put through follower auth%d: %s (%s)", follower, rp_errmsg(),
                 rp_strerror(rv));
    for (int i = 1; i <= 3; i++)
        cr_assert(node_wait_value(i, "itest", "from-follower", "hello", 10000),
                  "auth%d never served the write on a stale read", i);
    /* And a linearizable read on the other follower agrees. */
    char v[64];
    int other = 6 - node_by_raft_id(leader) - follower;
    cr_assert_eq(node_get(other, "itest", "from-follower", false, v, sizeof v), 0, "%s",
                 rp_errmsg());
    cr_assert_str_eq(v, "hello");
    cluster_pass();
}

/* True if `tokens ls --format=json` on node @i lists @token with type @type. */
static bool tokens_ls_has(int i, const char *token, const char *type)
{
    char *out = NULL;
    int rc = run_tctl(i, &out, "tokens", "ls", "--format=json", NULL);
    cr_assert_eq(rc, 0, "tokens ls on auth%d", i);
    struct cl_json *j = cl_json_parse(out);
    cr_assert(j != NULL && j->type == CLJ_ARR, "tokens ls --format=json printed:\n%s", out);
    bool found = false;
    for (size_t k = 0; k < j->n; k++) {
        if (strcmp(cl_json_str(&j->items[k], "token"), token) == 0)
            found = strcmp(cl_json_str(&j->items[k], "type"), type) == 0;
    }
    cl_json_free(j);
    free(out);
    return found;
}

Test(int_bootstrap, token_added_on_one_node_is_listed_on_the_others)
{
    cluster_start(3);
    int leader = node_by_raft_id(cluster_leader_id());
    cr_assert_neq(leader, 0);
    int f1 = leader == 1 ? 2 : 1, f2 = 6 - leader - f1;
    /* Added on a follower (forwarded to the leader), listed on the other two. */
    char *out = NULL;
    cr_assert_eq(run_tctl(f1, &out, "tokens", "add", "--type=node", "--format=json", NULL), 0);
    struct cl_json *j = cl_json_parse(out);
    cr_assert_not_null(j, "tokens add --format=json printed:\n%s", out);
    char token[128];
    snprintf(token, sizeof token, "%s", cl_json_str(j, "token"));
    cr_assert_str_eq(cl_json_str(j, "type"), "node");
    cr_assert_str_eq(cl_json_str(j, "ca_pin"), CL->ca_pin);
    cr_assert(strlen(token) >= 16, "token '%s'", token);
    cl_json_free(j);
    free(out);
    cr_assert(tokens_ls_has(f2, token, "node"), "tokens ls on auth%d lacks %s", f2, token);
    cr_assert(tokens_ls_has(leader, token, "node"), "tokens ls on auth%d lacks %s", leader, token);
    /* The text form lists it too. */
    cr_assert_eq(run_tctl(f2, &out, "tokens", "ls", NULL), 0);
    cr_assert_not_null(strstr(out, token), "text tokens ls:\n%s", out);
    free(out);
    cluster_pass();
}

/* Runs `raftport start -c FILE` on a config whose line @line is wrong. */
static void assert_bad_config_refused(const char *name, const char *text, int line)
{
    char path[600];
    snprintf(path, sizeof path, "%s/%s.yaml", CL->dir, name);
    FILE *f = fopen(path, "w");
    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
    char exe[600];
    snprintf(exe, sizeof exe, "%s/raftport", CL->build);
    char *argv[] = {exe, "start", "-c", path, NULL};
    struct cl_run r;
    uint64_t t0 = cl_now_ms();
    int rc = cl_run_argv(argv, 15000, &r);
    cr_assert_neq(rc, -1, "%s: raftport did not exit in 15 s", name);
    cr_assert_neq(rc, 0, "%s: raftport exited 0 on a bad config", name);
    char want[700];
    snprintf(want, sizeof want, "%s:%d", path, line);
    const char *at = strstr(r.err, want);
    cr_assert(at != NULL && !(at[strlen(want)] >= '0' && at[strlen(want)] <= '9'),
              "%s: stderr does not name %s:\n%s", name, want, r.err);
    cr_log_info("%s: exit %d in %llu ms: %s", name, rc, (unsigned long long)(cl_now_ms() - t0),
                r.err);
    cl_run_free(&r);
}

Test(int_bootstrap, bad_config_names_file_and_line_and_exits_nonzero)
{
    cluster_start(1);
    char text[2048];
    /* An unknown field (line 8). */
    snprintf(text, sizeof text,
             "version: v3\n"
             "teleport:\n"
             "  nodename: bad1\n"
             "  data_dir: %s/bad1\n"
             "auth_service:\n"
             "  enabled: yes\n"
             "  cluster_name: bad.raftport\n"
             "  listen_adr: 127.0.0.1:1\n"
             "  raft:\n"
             "    id: 1\n",
             CL->dir);
    assert_bad_config_refused("unknown-field", text, 8);
    /* A value of the wrong form (line 10). */
    snprintf(text, sizeof text,
             "version: v3\n"
             "teleport:\n"
             "  nodename: bad2\n"
             "  data_dir: %s/bad2\n"
             "auth_service:\n"
             "  enabled: yes\n"
             "  cluster_name: bad.raftport\n"
             "  raft:\n"
             "    id: 1\n"
             "    election_timeout: soon\n",
             CL->dir);
    assert_bad_config_refused("bad-duration", text, 10);
    /* Broken YAML (line 4: a key at an indentation that closes nothing). */
    snprintf(text, sizeof text,
             "version: v3\n"
             "teleport:\n"
             "    nodename: bad3\n"
             "  data_dir: [unclosed\n");
    assert_bad_config_refused("broken-yaml", text, 4);
    /* The running member did not notice. */
    cr_assert(node_alive(1));
    cr_assert_eq(cluster_wait_ready(1, 1, 0, 5000), 1);
    cluster_pass();
}
