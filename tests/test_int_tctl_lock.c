/* tests/test_int_tctl_lock.c: locks through tctl against a real cluster: tctl lock
 * writes Teleport's lock resource (targets, message, creator, expiry), tctl get
 * locks and tctl locks ls show it, tctl rm lock/NAME removes it, and a lock made
 * with --ttl is gone once its expiry passes. */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/util.h"
#include "tests/lib/cluster.h"

TestSuite(int_tctl_lock, .init = cluster_setup, .fini = cluster_teardown, .timeout = 120);

/* The name in "Created a lock with name \"NAME\".", into @name (a UUID). */
static void lock_name(const char *out, char name[37])
{
    const char *p = strstr(out, "Created a lock with name \"");
    cr_assert_not_null(p, "tctl lock printed:\n%s", out);
    p += strlen("Created a lock with name \"");
    const char *q = strchr(p, '"');
    cr_assert(q != NULL && q - p == 36, "not a UUID: %s", out);
    memcpy(name, p, 36);
    name[36] = '\0';
    cr_assert(name[8] == '-' && name[14] == '4', "not a UUID v4: %s", name);
}

static char *tctl_ok(const char *a1, const char *a2, const char *a3, const char *a4, const char *a5)
{
    char *out = NULL;
    int rv = run_tctl(1, &out, a1, a2, a3, a4, a5, NULL);
    cr_assert_eq(rv, 0, "tctl %s %s %s failed: %s", a1, a2 ? a2 : "", a3 ? a3 : "", out ? out : "");
    return out;
}

/* `tctl get lock/NAME --format=json`, parsed. */
static struct cl_json *get_lock_json(const char *name)
{
    char what[64];
    snprintf(what, sizeof what, "lock/%s", name);
    char *out = tctl_ok("get", what, "--format=json", NULL, NULL);
    struct cl_json *j = cl_json_parse(out);
    cr_assert(j != NULL && j->type == CLJ_OBJ, "not a JSON object:\n%s", out);
    free(out);
    return j;
}

static bool listed(const char *name)
{
    char *out = NULL;
    int rv = run_tctl(1, &out, "locks", "ls", NULL);
    bool found = rv == 0 && out != NULL && strstr(out, name) != NULL;
    free(out);
    return found;
}

/* Gone from a listing that worked: a failing `locks ls` is not a vanished lock. */
static bool lock_gone(void *arg)
{
    char *out = NULL;
    int rv = run_tctl(1, &out, "locks", "ls", NULL);
    bool gone = rv == 0 && out != NULL && strstr(out, (const char *)arg) == NULL;
    free(out);
    return gone;
}

Test(int_tctl_lock, lock_is_created_listed_and_removed_with_tctl)
{
    cluster_start(1);
    char name[37];
    char *out = tctl_ok("lock", "--user=alice", "--role=dev", "--message=maintenance window", NULL);
    lock_name(out, name);
    free(out);

    /* The resource: Teleport's shape, every target given, no expiry. */
    struct cl_json *j = get_lock_json(name);
    cr_assert_str_eq(cl_json_str(j, "kind"), "lock");
    cr_assert_str_eq(cl_json_str(j, "version"), "v2");
    const struct cl_json *md = cl_json_get(j, "metadata");
    cr_assert_str_eq(cl_json_str(md, "name"), name);
    cr_assert_null(cl_json_get(md, "expires"), "a lock without --ttl must not expire");
    const struct cl_json *spec = cl_json_get(j, "spec");
    const struct cl_json *target = cl_json_get(spec, "target");
    cr_assert_str_eq(cl_json_str(target, "user"), "alice");
    cr_assert_str_eq(cl_json_str(target, "role"), "dev");
    cr_assert_null(cl_json_get(target, "login"));
    cr_assert_str_eq(cl_json_str(spec, "message"), "maintenance window");
    cr_assert(strncmp(cl_json_str(spec, "created_by"), "admin", 5) == 0,
              "created_by '%s': expected the admin identity", cl_json_str(spec, "created_by"));
    cr_assert_eq(strlen(cl_json_str(spec, "created_at")), 20, "created_at '%s': RFC 3339",
                 cl_json_str(spec, "created_at"));
    cr_assert_null(cl_json_get(spec, "expires"));
    cl_json_free(j);

    /* The plural is the kind, as in Teleport. */
    out = tctl_ok("get", "locks", NULL, NULL, NULL);
    cr_assert(strstr(out, "kind: lock") && strstr(out, name), "get locks:\n%s", out);
    free(out);

    /* The table: id, target, message, expiry. */
    out = tctl_ok("locks", "ls", NULL, NULL, NULL);
    cr_assert(strstr(out, "ID") && strstr(out, "Target") && strstr(out, "Expires"), "%s", out);
    const char *row = strstr(out, name);
    cr_assert_not_null(row, "locks ls:\n%s", out);
    cr_assert(strstr(row, "user=alice,role=dev") && strstr(row, "maintenance window") &&
                  strstr(row, "never"),
              "locks ls row:\n%s", row);
    free(out);
    out = tctl_ok("get", "locks", "--format=text", NULL, NULL);
    cr_assert(strstr(out, name) && strstr(out, "user=alice,role=dev"), "%s", out);
    free(out);

    char what[64];
    snprintf(what, sizeof what, "lock/%s", name);
    out = tctl_ok("rm", what, NULL, NULL, NULL);
    char want[128];
    snprintf(want, sizeof want, "lock \"%s\" has been deleted", name);
    cr_assert(strstr(out, want) != NULL, "%s", out);
    free(out);
    cr_assert(lock_gone(name), "the removed lock is still listed");
    cr_assert_neq(run_tctl(1, NULL, "get", what, NULL), 0, "the removed lock is still readable");
    cluster_pass();
}

Test(int_tctl_lock, lock_with_ttl_disappears_after_expiry)
{
    cluster_start(1);
    char name[37];
    uint64_t before = rp_now_ms();
    char *out = tctl_ok("lock", "--login=root", "--server-id=node-7", "--ttl=3s", NULL);
    lock_name(out, name);
    free(out);
    struct cl_json *j = get_lock_json(name);
    uint64_t expires = cl_json_u64(cl_json_get(j, "metadata"), "expires");
    cr_assert(expires >= before + 3000 && expires <= rp_now_ms() + 3000,
              "metadata.expires %llu: expected 3 s after the lock was made",
              (unsigned long long)expires);
    const struct cl_json *spec = cl_json_get(j, "spec");
    const char *until = cl_json_str(spec, "expires");
    cr_assert(strlen(until) == 20 && until[19] == 'Z', "spec.expires '%s': RFC 3339", until);
    cr_assert_str_eq(cl_json_str(cl_json_get(spec, "target"), "server_id"), "node-7");
    cl_json_free(j);
    cr_assert(listed(name));
    /* The leader proposes expiry about once a second. */
    cr_assert(wait_until(20000, lock_gone, name), "the lock outlived its expiry");
    cr_assert_geq(rp_now_ms(), expires, "the lock went before its expiry");
    cluster_pass();
}

Test(int_tctl_lock, lock_file_goes_in_with_tctl_create)
{
    cluster_start(1);
    char path[600];
    static const char *const text = "kind: lock\n"
                                    "version: v2\n"
                                    "metadata:\n"
                                    "  name: freeze-bob\n"
                                    "spec:\n"
                                    "  target:\n"
                                    "    user: bob\n"
                                    "  message: account under review\n";
    snprintf(path, sizeof path, "%s/lock.yaml", CL->dir);
    cr_assert_eq(rp_write_file(path, text, strlen(text), 0644), 0, "%s", rp_errmsg());
    char *out = tctl_ok("create", path, NULL, NULL, NULL);
    cr_assert(strstr(out, "lock \"freeze-bob\" has been created") != NULL, "%s", out);
    free(out);
    out = tctl_ok("locks", "ls", NULL, NULL, NULL);
    cr_assert(strstr(out, "freeze-bob") && strstr(out, "user=bob") &&
                  strstr(out, "account under review"),
              "%s", out);
    free(out);
    cluster_pass();
}
