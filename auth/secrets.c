/* auth/secrets.c: what of a resource a caller may read.
 *
 * Some kinds are secrets as a whole (join tokens, invites, password hashes) and
 * certificate authorities carry their private keys. Proxies and nodes read the
 * cluster state to do their work; they never see those. Admin and Auth
 * identities see tokens and invites (tctl tokens ls), but password hashes and
 * CA private keys only when they ask for them (--with-secrets). */
#include <string.h>

#include "auth/internal.h"
#include "lib/errors.h"
#include "lib/mp.h"

static bool kind_is(const char *kind, size_t n, const char *want)
{
    return strlen(want) == n && memcmp(kind, want, n) == 0;
}

enum auth_view auth_view_of(const struct rp_identity *caller, const char *kind, size_t kind_len,
                            bool with_secrets)
{
    bool admin = auth_caller_is_admin(caller);
    if (kind_is(kind, kind_len, "user_secret"))
        return admin && with_secrets ? AUTH_VIEW_FULL : AUTH_VIEW_NONE;
    if (kind_is(kind, kind_len, "token") || kind_is(kind, kind_len, "user_token"))
        return admin ? AUTH_VIEW_FULL : AUTH_VIEW_NONE;
    if (kind_is(kind, kind_len, AUTH_KIND_CA))
        return admin && with_secrets ? AUTH_VIEW_FULL : AUTH_VIEW_REDACTED;
    return AUTH_VIEW_FULL;
}

static bool secret_key(const msgpack_object *k)
{
    return rp_mp_str_eq(k, "key") || rp_mp_str_eq(k, "private_key");
}

/* Packs @o without any map entry named key or private_key, at any depth. */
static void pack_redacted(msgpack_packer *pk, const msgpack_object *o)
{
    if (o->type == MSGPACK_OBJECT_MAP) {
        uint32_t n = 0;
        for (uint32_t i = 0; i < o->via.map.size; i++)
            n += !secret_key(&o->via.map.ptr[i].key);
        msgpack_pack_map(pk, n);
        for (uint32_t i = 0; i < o->via.map.size; i++) {
            if (secret_key(&o->via.map.ptr[i].key))
                continue;
            msgpack_pack_object(pk, o->via.map.ptr[i].key);
            pack_redacted(pk, &o->via.map.ptr[i].val);
        }
    } else if (o->type == MSGPACK_OBJECT_ARRAY) {
        msgpack_pack_array(pk, o->via.array.size);
        for (uint32_t i = 0; i < o->via.array.size; i++)
            pack_redacted(pk, &o->via.array.ptr[i]);
    } else {
        msgpack_pack_object(pk, *o);
    }
}

int auth_view_append(enum auth_view view, const void *res, size_t len, struct rp_buf *out)
{
    if (view == AUTH_VIEW_FULL)
        return rp_buf_append(out, res, len);
    if (view == AUTH_VIEW_NONE)
        return 0;
    msgpack_unpacked u;
    int rv = rp_mp_parse(res, len, &u);
    if (rv != 0)
        return rv;
    msgpack_packer pk;
    rp_mp_packer_init(&pk, out);
    pack_redacted(&pk, &u.data);
    msgpack_unpacked_destroy(&u);
    return 0;
}
