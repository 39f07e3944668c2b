/* tests/test_agent_cache.c: the node agent's cache (agent/cache.h) and the authority
 * over it: what is kept, how locks and roles decide, and what survives on disk. */
#include <criterion/criterion.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/agent.h"
#include "agent/cache.h"
#include "auth/client.h"
#include "auth/locks.h"
#include "auth/rbac.h"
#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/util.h"

#define HOST "5b1c0f3e-2a4d-4c6b-8e7f-9a0b1c2d3e4f"

static char dir[64];

static void make_dir(void)
{
    strcpy(dir, "/tmp/rp-agcache-XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
}

static void remove_dir(void)
{
    char path[128];
    snprintf(path, sizeof path, "%s/cache", dir);
    unlink(path);
    rmdir(dir);
}

TestSuite(agent_cache, .init = make_dir, .fini = remove_dir);

static void put_lock(struct agent_cache *c, const char *name, const struct auth_lock_spec *spec)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(auth_lock_encode(spec, name, rp_now_ms(), &b), 0, "%s", rp_errmsg());
    cr_assert_eq(agent_cache_put(c, "lock", name, b.data, b.len), 0, "%s", rp_errmsg());
    rp_buf_free(&b);
}

static void put_preset(struct agent_cache *c, const char *name)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rbac_preset_pack(name, &b), 0);
    cr_assert_eq(agent_cache_put(c, "role", name, b.data, b.len), 0, "%s", rp_errmsg());
    rp_buf_free(&b);
}

/* A role resource {kind: role, version: v7, metadata: {name}, spec: {allow: {logins:
 * [@login], node_labels: {'*': '*'}}}}. */
static void put_role(struct agent_cache *c, const char *name, const char *login)
{
    struct rp_buf b;
    msgpack_packer pk;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "kind", "role");
    rp_mp_kv_str(&pk, "version", "v7");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "name", name);
    rp_mp_pack_str(&pk, "spec");
    msgpack_pack_map(&pk, 1);
    rp_mp_pack_str(&pk, "allow");
    msgpack_pack_map(&pk, 2);
    rp_mp_pack_str(&pk, "logins");
    msgpack_pack_array(&pk, 1);
    rp_mp_pack_str(&pk, login);
    rp_mp_pack_str(&pk, "node_labels");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "*", "*");
    cr_assert_eq(agent_cache_put(c, "role", name, b.data, b.len), 0, "%s", rp_errmsg());
    rp_buf_free(&b);
}

/* cert_authority/user with @n_active active and @n_extra additional trusted keys. */
static void put_user_ca(struct agent_cache *c, int n_active, int n_extra)
{
    struct rp_buf b;
    msgpack_packer pk;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    msgpack_pack_map(&pk, 4);
    rp_mp_kv_str(&pk, "kind", "cert_authority");
    rp_mp_kv_str(&pk, "version", "v2");
    rp_mp_pack_str(&pk, "metadata");
    msgpack_pack_map(&pk, 1);
    rp_mp_kv_str(&pk, "name", "user");
    rp_mp_pack_str(&pk, "spec");
    msgpack_pack_map(&pk, 2);
    const char *sets[2] = {"active_keys", "additional_trusted_keys"};
    int counts[2] = {n_active, n_extra};
    for (int s = 0; s < 2; s++) {
        rp_mp_pack_str(&pk, sets[s]);
        msgpack_pack_map(&pk, 1);
        rp_mp_pack_str(&pk, "ssh");
        msgpack_pack_array(&pk, (uint32_t)counts[s]);
        for (int i = 0; i < counts[s]; i++) {
            EVP_PKEY *k = NULL;
            char *line = NULL;
            cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &k), 0);
            cr_assert_eq(rp_ssh_pubkey_format(k, NULL, &line), 0);
            msgpack_pack_map(&pk, 1);
            rp_mp_kv_str(&pk, "public_key", line);
            free(line);
            EVP_PKEY_free(k);
        }
    }
    cr_assert_eq(agent_cache_put(c, "cert_authority", "user", b.data, b.len), 0, "%s", rp_errmsg());
    rp_buf_free(&b);
}

static int check_lock(struct agent_cache *c, const char *user, const char *role, const char *login,
                      const char *host, char *why, size_t n)
{
    const char *roles[1] = {role};
    return agent_cache_lock_check(c, user, roles, 1, login, host, rp_now_ms(), why, n);
}

Test(agent_cache, refuses_kinds_it_does_not_keep_and_resources_that_do_not_match)
{
    struct agent_cache *c;
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rbac_preset_pack("access", &b), 0);
    cr_assert_eq(agent_cache_put(c, "token", "access", b.data, b.len), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "not one the node cache keeps") != NULL, "%s", rp_errmsg());
    cr_assert_eq(agent_cache_put(c, "role", "other", b.data, b.len), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "metadata.name") != NULL, "%s", rp_errmsg());
    cr_assert_eq(agent_cache_put(c, "role", "access", b.data, b.len - 1), RP_EINVAL,
                 "truncated msgpack accepted");
    cr_assert_eq(agent_cache_count(c, NULL), 0);
    cr_assert_eq(agent_cache_put(c, "role", "access", b.data, b.len), 0);
    void *got;
    size_t len;
    cr_assert_eq(agent_cache_get(c, "role", "access", &got, &len), 0);
    cr_assert_eq(len, b.len);
    cr_assert_eq(memcmp(got, b.data, len), 0);
    free(got);
    rp_buf_free(&b);
    agent_cache_free(c);
}

Test(agent_cache, lock_on_user_refuses_that_user_only)
{
    struct agent_cache *c;
    char why[256];
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    struct auth_lock_spec s = {.user = "alice", .message = "on leave"};
    put_lock(c, "l1", &s);
    cr_assert_eq(check_lock(c, "alice", "access", "root", HOST, why, sizeof why), RP_EDENIED);
    cr_assert_str_eq(why, "alice is locked (lock l1): on leave");
    cr_assert_eq(check_lock(c, "bob", "access", "root", HOST, why, sizeof why), 0);
    agent_cache_free(c);
}

Test(agent_cache, lock_on_role_or_login_matches_what_the_login_uses)
{
    struct agent_cache *c;
    char why[256];
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    put_lock(c, "r", &(struct auth_lock_spec){.role = "dev"});
    put_lock(c, "g", &(struct auth_lock_spec){.login = "root"});
    cr_assert_eq(check_lock(c, "bob", "dev", "bob", HOST, why, sizeof why), RP_EDENIED);
    cr_assert_eq(check_lock(c, "bob", "ops", "root", HOST, why, sizeof why), RP_EDENIED);
    cr_assert_eq(check_lock(c, "bob", "ops", "bob", HOST, why, sizeof why), 0);
    agent_cache_free(c);
}

Test(agent_cache, lock_on_this_node_refuses_everyone_and_on_another_node_no_one)
{
    struct agent_cache *c;
    char why[256];
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    put_lock(c, "n", &(struct auth_lock_spec){.server_id = HOST});
    cr_assert_eq(check_lock(c, "bob", "ops", "bob", HOST, why, sizeof why), RP_EDENIED);
    cr_assert_str_eq(why, HOST " is locked (lock n)");
    cr_assert_eq(check_lock(c, "bob", "ops", "bob", "another-host", why, sizeof why), 0);
    agent_cache_free(c);
}

Test(agent_cache, lock_with_several_targets_needs_all_of_them)
{
    struct agent_cache *c;
    char why[256];
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    put_lock(c, "both", &(struct auth_lock_spec){.user = "alice", .login = "root"});
    cr_assert_eq(check_lock(c, "alice", "x", "alice", HOST, why, sizeof why), 0);
    cr_assert_eq(check_lock(c, "alice", "x", "root", HOST, why, sizeof why), RP_EDENIED);
    agent_cache_free(c);
}

Test(agent_cache, expired_or_deleted_lock_applies_to_no_one)
{
    struct agent_cache *c;
    char why[256];
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    put_lock(c, "short", &(struct auth_lock_spec){.user = "alice", .ttl_ms = 60000});
    const char *roles[1] = {"x"};
    uint64_t later = rp_now_ms() + 120000;
    cr_assert_eq(agent_cache_lock_check(c, "alice", roles, 1, "a", HOST, later, why, sizeof why), 0,
                 "an expired lock still applies");
    cr_assert_eq(check_lock(c, "alice", "x", "a", HOST, why, sizeof why), RP_EDENIED);
    cr_assert_eq(agent_cache_delete(c, "lock", "short", 0), 0);
    cr_assert_eq(check_lock(c, "alice", "x", "a", HOST, why, sizeof why), 0);
    agent_cache_free(c);
}

Test(agent_cache, roles_become_a_role_set_with_the_certificate_traits)
{
    struct agent_cache *c;
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    put_preset(c, "access");
    struct agent_authority a = agent_cache_authority(c);
    const char *roles[1] = {"access"};
    struct rbac_set *set = NULL;
    char why[256];
    cr_assert_eq(
        a.role_set(a.arg, roles, 1, "{\"logins\": [\"alice\", \"deploy\"]}", &set, why, sizeof why),
        0, "%s", why);
    struct rbac_label env = {"env", "test"};
    cr_assert_eq(rbac_check_ssh(set, "deploy", &env, 1, why, sizeof why), 0, "%s", why);
    cr_assert_eq(rbac_check_ssh(set, "root", &env, 1, why, sizeof why), RP_EDENIED);
    rbac_set_free(set);

    const char *missing[2] = {"access", "nope"};
    cr_assert_eq(a.role_set(a.arg, missing, 2, NULL, &set, why, sizeof why), RP_ENOTFOUND);
    cr_assert(strstr(why, "role 'nope'") != NULL, "%s", why);
    cr_assert_null(set);
    cr_assert_eq(a.role_set(a.arg, roles, 1, "{not json", &set, why, sizeof why), RP_EINVAL);
    agent_cache_free(c);
}

Test(agent_cache, a_role_set_stays_valid_after_its_role_changes)
{
    struct agent_cache *c;
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    put_role(c, "ops", "alpha");
    struct agent_authority a = agent_cache_authority(c);
    const char *roles[1] = {"ops"};
    struct rbac_set *old = NULL, *now = NULL;
    char why[256];
    cr_assert_eq(a.role_set(a.arg, roles, 1, NULL, &old, why, sizeof why), 0, "%s", why);
    put_role(c, "ops", "beta");
    cr_assert_eq(a.role_set(a.arg, roles, 1, NULL, &now, why, sizeof why), 0, "%s", why);
    cr_assert_eq(rbac_check_ssh(old, "alpha", NULL, 0, why, sizeof why), 0, "%s", why);
    cr_assert_eq(rbac_check_ssh(now, "beta", NULL, 0, why, sizeof why), 0, "%s", why);
    cr_assert_eq(rbac_check_ssh(now, "alpha", NULL, 0, why, sizeof why), RP_EDENIED);
    rbac_set_free(old);
    rbac_set_free(now);
    agent_cache_free(c);
}

Test(agent_cache, user_cas_are_the_active_and_additional_trusted_keys)
{
    struct agent_cache *c;
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    struct agent_authority a = agent_cache_authority(c);
    EVP_PKEY **keys = NULL;
    size_t n = 0;
    cr_assert_eq(a.user_cas(a.arg, &keys, &n), RP_ENOTFOUND, "an empty cache must refuse");
    put_user_ca(c, 1, 1);
    cr_assert_eq(a.user_cas(a.arg, &keys, &n), 0);
    cr_assert_eq(n, 2);
    for (size_t i = 0; i < n; i++)
        EVP_PKEY_free(keys[i]);
    free(keys);
    agent_cache_free(c);
}

static int changes;
static void count_change(void *arg)
{
    (void)arg;
    changes++;
}

Test(agent_cache, every_change_is_announced_and_labels_are_copies)
{
    struct agent_cache *c;
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    struct agent_authority a = agent_cache_authority(c);
    changes = 0;
    cr_assert_eq(a.on_change(a.arg, count_change, NULL), 0);
    put_lock(c, "l", &(struct auth_lock_spec){.user = "x"});
    agent_cache_delete(c, "lock", "l", 0);
    agent_cache_delete(c, "lock", "absent", 0);
    cr_assert_eq(changes, 2);

    struct rbac_label items[1] = {{"env", "prod"}};
    struct agent_labels l = {items, 1}, got = {0};
    cr_assert_eq(agent_cache_set_labels(c, &l), 0);
    cr_assert_eq(a.labels(a.arg, &got), 0);
    cr_assert_eq(got.n, 1);
    cr_assert_str_eq(got.items[0].value, "prod");
    cr_assert_neq((void *)got.items[0].value, (void *)items[0].value);
    agent_labels_free(&got);
    agent_cache_free(c);
}

static void fill(struct agent_cache *c)
{
    put_preset(c, "access");
    put_user_ca(c, 1, 0);
    put_lock(c, "l1", &(struct auth_lock_spec){.user = "alice"});
}

static char *cache_file(void)
{
    static char path[128];
    snprintf(path, sizeof path, "%s/cache", dir);
    return path;
}

Test(agent_cache, survives_a_restart_from_disk_owner_only)
{
    struct agent_cache *c;
    char why[256];
    cr_assert_eq(agent_cache_open(&c, dir), 0);
    cr_assert_not(agent_cache_from_disk(c));
    fill(c);
    agent_cache_free(c);
    struct stat st;
    cr_assert_eq(stat(cache_file(), &st), 0);
    cr_assert_eq(st.st_mode & 0777, 0600);

    cr_assert_eq(agent_cache_open(&c, dir), 0, "%s", rp_errmsg());
    cr_assert(agent_cache_from_disk(c));
    cr_assert_eq(agent_cache_count(c, NULL), 3);
    cr_assert_eq(check_lock(c, "alice", "x", "a", HOST, why, sizeof why), RP_EDENIED);
    struct agent_authority a = agent_cache_authority(c);
    EVP_PKEY **keys = NULL;
    size_t n = 0;
    cr_assert_eq(a.user_cas(a.arg, &keys, &n), 0);
    EVP_PKEY_free(keys[0]);
    free(keys);
    agent_cache_free(c);
}

/* Rewrites the cache file through @edit, then expects opening it to fail with @msg. */
static void refused_after(void (*edit)(char *buf, size_t *n), const char *msg)
{
    struct agent_cache *c;
    cr_assert_eq(agent_cache_open(&c, dir), 0);
    fill(c);
    agent_cache_free(c);
    char *buf;
    size_t n;
    cr_assert_eq(rp_read_file(cache_file(), 1 << 20, &buf, &n), 0);
    edit(buf, &n);
    cr_assert_eq(rp_write_file(cache_file(), buf, n, 0600), 0);
    free(buf);
    int rv = agent_cache_open(&c, dir);
    cr_assert_eq(rv, RP_EINVAL, "a damaged cache loaded");
    cr_assert(strstr(rp_errmsg(), msg) != NULL, "message '%s' lacks '%s'", rp_errmsg(), msg);
    cr_assert_not_null(c, "a refused file must still give an empty, usable cache");
    cr_assert_eq(agent_cache_count(c, NULL), 0);
    cr_assert_not(agent_cache_from_disk(c));
    agent_cache_free(c);
}

static void flip_payload_byte(char *buf, size_t *n)
{
    buf[*n - 5] ^= 0x40;
}
static void truncate_half(char *buf, size_t *n)
{
    (void)buf;
    *n = *n / 2;
}
static void truncate_header(char *buf, size_t *n)
{
    (void)buf;
    *n = 20;
}
static void bad_magic(char *buf, size_t *n)
{
    (void)n;
    buf[0] = 'X';
}
static void future_version(char *buf, size_t *n)
{
    (void)n;
    buf[11] = 9;
}

Test(agent_cache, corrupted_cache_file_is_refused_by_its_checksum)
{
    refused_after(flip_payload_byte, "checksum mismatch");
}

Test(agent_cache, truncated_cache_file_is_refused)
{
    refused_after(truncate_half, "truncated or appended to");
}

Test(agent_cache, cache_file_cut_in_its_header_is_refused)
{
    refused_after(truncate_header, "truncated in its 56-byte header");
}

Test(agent_cache, file_that_is_no_cache_is_refused)
{
    refused_after(bad_magic, "bad magic");
}

Test(agent_cache, cache_file_of_another_format_is_refused)
{
    refused_after(future_version, "format 9, expected 1");
}

Test(agent_cache, well_checksummed_payload_with_a_bad_item_is_refused_whole)
{
    /* A payload that passes the checksum but holds an item whose resource does not
     * match its name: a file written by something else than this code. */
    struct agent_cache *c;
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    fill(c);
    struct rp_buf good;
    rp_buf_init(&good);
    cr_assert_eq(agent_cache_encode(c, &good), 0);
    agent_cache_free(c);
    struct rp_buf payload;
    msgpack_packer pk;
    rp_buf_init(&payload);
    rp_mp_packer_init(&pk, &payload);
    msgpack_pack_map(&pk, 2);
    rp_mp_kv_u64(&pk, "rev", 3);
    rp_mp_pack_str(&pk, "items");
    msgpack_pack_array(&pk, 1);
    msgpack_pack_array(&pk, 3);
    rp_mp_pack_str(&pk, "role");
    rp_mp_pack_str(&pk, "not-access");
    struct rp_buf role;
    rp_buf_init(&role);
    rbac_preset_pack("access", &role);
    msgpack_pack_bin(&pk, role.len);
    msgpack_pack_bin_body(&pk, role.data, role.len);
    /* Header of the good file with this payload's length and checksum. */
    struct rp_buf file;
    rp_buf_init(&file);
    rp_buf_append(&file, good.data, 16);
    rp_buf_put_be64(&file, payload.len);
    unsigned char sum[32];
    unsigned int sl;
    EVP_Digest(payload.data, payload.len, sum, &sl, EVP_sha256(), NULL);
    rp_buf_append(&file, sum, 32);
    rp_buf_append(&file, payload.data, payload.len);
    cr_assert_eq(agent_cache_open(&c, NULL), 0);
    put_lock(c, "keep", &(struct auth_lock_spec){.user = "x"});
    cr_assert_eq(agent_cache_load_bytes(c, file.data, file.len), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "item 0: role/not-access") != NULL, "%s", rp_errmsg());
    cr_assert_eq(agent_cache_count(c, "lock"), 1, "a refused file changed the cache");
    agent_cache_free(c);
    rp_buf_free(&good);
    rp_buf_free(&payload);
    rp_buf_free(&role);
    rp_buf_free(&file);
}

Test(agent_renewal, renews_at_two_thirds_of_the_shorter_lifetime_with_jitter)
{
    const uint64_t day = 86400000, year = 365 * day;
    /* X.509 for 10 years, SSH for one: the SSH certificate decides. */
    uint64_t lo = year / 3 * 2 - year / 30 - 1, hi = year / 3 * 2 + year / 30 + 1;
    uint64_t min = UINT64_MAX, max = 0;
    for (uint64_t draw = 0; draw < 5000; draw++) {
        uint64_t t =
            agent_renew_time(1000, 1000 + 10 * year, 1000, 1000 + year, draw * 2654435761u);
        cr_assert(t >= 1000 + lo && t <= 1000 + hi, "renewal at %llu is outside 2/3 +- 1/30",
                  (unsigned long long)t);
        min = t < min ? t : min;
        max = t > max ? t : max;
    }
    cr_assert_gt(max - min, year / 30, "the jitter does not spread renewals");
    /* The X.509 one when it is the shorter. */
    uint64_t t = agent_renew_time(0, 30 * day, 0, year, 0);
    cr_assert(t >= 20 * day - day && t <= 20 * day + day, "%llu", (unsigned long long)t);
    /* A certificate without a lifetime is ignored. */
    t = agent_renew_time(5, 5, 0, 30 * day, 0);
    cr_assert(t >= 19 * day && t <= 21 * day, "%llu", (unsigned long long)t);
}
