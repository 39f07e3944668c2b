/* tests/test_client_lock.c: the lock resource the client builds (auth_lock_encode)
 * has Teleport's shape, carries an expiry only when asked, and refuses a lock
 * without a target or with fields that cannot be shown on one line. */
#include <criterion/criterion.h>
#include <string.h>

#include "auth/client.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/util.h"

#define NAME "0b7e2c44-1f0a-4c8e-9d3b-5a6f7e8d9c0b"
#define NOW 1800000000000ull /* 2027-01-15T08:00:00Z */

static void encode(const struct auth_lock_spec *spec, msgpack_unpacked *u, struct rp_buf *b)
{
    rp_buf_init(b);
    cr_assert_eq(auth_lock_encode(spec, NAME, NOW, b), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_mp_parse(b->data, b->len, u), 0, "%s", rp_errmsg());
}

static bool str_is(const msgpack_object *map, const char *key, const char *want)
{
    return rp_mp_str_eq(rp_mp_get(map, key), want);
}

Test(client_lock, lock_with_every_target_and_ttl_has_teleport_shape)
{
    struct auth_lock_spec spec = {.user = "alice",
                                  .role = "dev",
                                  .login = "root",
                                  .server_id = "host-1",
                                  .message = "incident 42",
                                  .ttl_ms = 3600 * 1000,
                                  .created_by = "admin@auth1"};
    msgpack_unpacked u;
    struct rp_buf b;
    encode(&spec, &u, &b);
    const msgpack_object *res = &u.data;
    cr_assert(str_is(res, "kind", "lock") && str_is(res, "version", "v2"));
    const msgpack_object *md = rp_mp_get(res, "metadata");
    cr_assert(str_is(md, "name", NAME));
    uint64_t expires = 0;
    cr_assert_eq(rp_mp_get_u64(md, "expires", &expires), 0);
    cr_assert_eq(expires, NOW + 3600 * 1000, "metadata.expires is ms since the epoch");
    const msgpack_object *sp = rp_mp_get(res, "spec");
    const msgpack_object *target = rp_mp_get(sp, "target");
    cr_assert_eq(target->via.map.size, 4);
    cr_assert(str_is(target, "user", "alice") && str_is(target, "role", "dev") &&
              str_is(target, "login", "root") && str_is(target, "server_id", "host-1"));
    cr_assert(str_is(sp, "message", "incident 42"));
    cr_assert(str_is(sp, "expires", "2027-01-15T09:00:00Z"), "spec.expires is RFC 3339");
    cr_assert(str_is(sp, "created_at", "2027-01-15T08:00:00Z"));
    cr_assert(str_is(sp, "created_by", "admin@auth1"));
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
}

Test(client_lock, lock_without_ttl_never_expires_and_omits_what_was_not_given)
{
    struct auth_lock_spec spec = {.login = "root"};
    msgpack_unpacked u;
    struct rp_buf b;
    encode(&spec, &u, &b);
    cr_assert_null(rp_mp_get(rp_mp_get(&u.data, "metadata"), "expires"));
    const msgpack_object *sp = rp_mp_get(&u.data, "spec");
    cr_assert_null(rp_mp_get(sp, "expires"));
    cr_assert_null(rp_mp_get(sp, "message"));
    cr_assert_null(rp_mp_get(sp, "created_by"));
    cr_assert_eq(sp->via.map.size, 2, "target and created_at only");
    const msgpack_object *target = rp_mp_get(sp, "target");
    cr_assert_eq(target->via.map.size, 1);
    cr_assert(str_is(target, "login", "root"));
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);
}

static void refused(const struct auth_lock_spec *spec, const char *why)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(auth_lock_encode(spec, NAME, NOW, &b), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), why) != NULL, "'%s' does not say '%s'", rp_errmsg(), why);
    rp_buf_free(&b);
}

Test(client_lock, lock_without_target_or_with_bad_fields_is_refused)
{
    struct auth_lock_spec none = {.message = "no target"};
    refused(&none, "needs a target");
    struct auth_lock_spec empty = {.user = ""};
    refused(&empty, "lock user is empty");
    struct auth_lock_spec ctrl = {.role = "dev", .message = "two\nlines"};
    refused(&ctrl, "message holds a control character");
    struct auth_lock_spec del = {.server_id = "h\x7f"};
    refused(&del, "server_id holds a control character");
}
