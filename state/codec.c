/* state/codec.c: the shapes the state machine accepts: commands and resources,
 * checked field by field, and the encoders clients use to build them.
 *
 * Everything untrusted enters through rp_mp_parse (bounded sizes and depth), and
 * is then checked here before apply looks at it, so apply can rely on the shape.
 * Messages name the field and what was expected; they land in a caller's buffer
 * (state_result.message) because apply must not depend on thread-local state. */
#define STATE_INTERNAL
#include "state/state.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"

#define MAX_FIELDS 64 /* keys in a resource or its metadata */

static int failf(char *msg, size_t n, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failf(char *msg, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, n, fmt, ap);
    va_end(ap);
    return RP_EINVAL;
}

bool state__kind_ok(const char *kind, size_t n)
{
    if (n == 0 || n > STATE_KIND_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = kind[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
            return false;
    }
    return true;
}

/* Names, request ids: no NUL (keys are kind \0 name) and no control bytes. */
static bool printable_ok(const char *s, size_t n, size_t max)
{
    if (n == 0 || n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            return false;
    }
    return true;
}

bool state__name_ok(const char *name, size_t n)
{
    return printable_ok(name, n, STATE_NAME_MAX);
}

size_t state__res_key(uint8_t *key, const char *kind, size_t kind_len, const char *name,
                      size_t name_len)
{
    memcpy(key, kind, kind_len);
    key[kind_len] = '\0';
    memcpy(key + kind_len + 1, name, name_len);
    return kind_len + 1 + name_len;
}

bool state__split_key(const uint8_t *key, size_t len, const char **kind, size_t *kind_len,
                      const char **name, size_t *name_len)
{
    const uint8_t *z = memchr(key, '\0', len);
    if (z == NULL)
        return false;
    size_t kl = (size_t)(z - key);
    const char *nm = (const char *)z + 1;
    size_t nl = len - kl - 1;
    if (!state__kind_ok((const char *)key, kl) || !state__name_ok(nm, nl))
        return false;
    *kind = (const char *)key;
    *kind_len = kl;
    *name = nm;
    *name_len = nl;
    return true;
}

void state__put_be64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

uint64_t state__get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

int state__err_prefix(int code, const char *fmt, ...)
{
    char prefix[160], was[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    snprintf(was, sizeof was, "%s", rp_errmsg());
    return rp_err(code, "%s: %s", prefix, was);
}

static bool is_nil(const msgpack_object *o)
{
    return o == NULL || o->type == MSGPACK_OBJECT_NIL;
}

/* Every key a string, no key twice, at most @max of them. Quadratic, which is why
 * the maps it sees are capped. */
static int check_keys(const msgpack_object *m, uint32_t max, const char *what, char *msg, size_t n)
{
    uint32_t size = m->via.map.size;
    if (size > max)
        return failf(msg, n, "%s: at most %u fields, got %u", what, max, size);
    for (uint32_t i = 0; i < size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        if (k->type != MSGPACK_OBJECT_STR)
            return failf(msg, n, "%s: keys must be strings", what);
        for (uint32_t j = 0; j < i; j++) {
            const msgpack_object *o = &m->via.map.ptr[j].key;
            if (o->via.str.size == k->via.str.size &&
                memcmp(o->via.str.ptr, k->via.str.ptr, k->via.str.size) == 0)
                return failf(msg, n, "%s: duplicate key '%.*s'", what,
                             (int)(k->via.str.size > 40 ? 40 : k->via.str.size), k->via.str.ptr);
        }
    }
    return 0;
}

static int get_u64_opt(const msgpack_object *map, const char *key, const char *what, uint64_t *v,
                       char *msg, size_t n)
{
    const msgpack_object *o = rp_mp_get(map, key);
    *v = 0;
    if (is_nil(o))
        return 0;
    if (o->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return failf(msg, n, "%s: expected a non-negative integer", what);
    *v = o->via.u64;
    return 0;
}

int state__res_check(const msgpack_object *res, struct state_res_meta *meta, char *msg,
                     size_t msglen)
{
    int rv;
    memset(meta, 0, sizeof *meta);
    if (res->type != MSGPACK_OBJECT_MAP)
        return failf(msg, msglen, "res: expected a map (the resource)");
    if ((rv = check_keys(res, MAX_FIELDS, "res", msg, msglen)) != 0)
        return rv;

    const msgpack_object *kind = rp_mp_get(res, "kind");
    if (is_nil(kind))
        return failf(msg, msglen, "res.kind: missing (expected 1-63 bytes of [a-z0-9_])");
    if (kind->type != MSGPACK_OBJECT_STR || !state__kind_ok(kind->via.str.ptr, kind->via.str.size))
        return failf(msg, msglen, "res.kind: expected a string of 1-63 bytes of [a-z0-9_]");

    const msgpack_object *version = rp_mp_get(res, "version");
    if (!is_nil(version) && (version->type != MSGPACK_OBJECT_STR || version->via.str.size == 0 ||
                             version->via.str.size > 32))
        return failf(msg, msglen, "res.version: expected a string of 1-32 bytes");

    const msgpack_object *md = rp_mp_get(res, "metadata");
    if (is_nil(md))
        return failf(msg, msglen, "res.metadata: missing (expected a map with a name)");
    if (md->type != MSGPACK_OBJECT_MAP)
        return failf(msg, msglen, "res.metadata: expected a map");
    if ((rv = check_keys(md, MAX_FIELDS, "res.metadata", msg, msglen)) != 0)
        return rv;

    const msgpack_object *name = rp_mp_get(md, "name");
    if (is_nil(name))
        return failf(msg, msglen, "res.metadata.name: missing");
    if (name->type != MSGPACK_OBJECT_STR || !state__name_ok(name->via.str.ptr, name->via.str.size))
        return failf(msg, msglen,
                     "res.metadata.name: expected a string of 1-255 bytes without control "
                     "characters");

    const msgpack_object *labels = rp_mp_get(md, "labels");
    if (!is_nil(labels)) {
        if (labels->type != MSGPACK_OBJECT_MAP)
            return failf(msg, msglen, "res.metadata.labels: expected a map of string to string");
        if ((rv = check_keys(labels, STATE_MAX_LABELS, "res.metadata.labels", msg, msglen)) != 0)
            return rv;
        for (uint32_t i = 0; i < labels->via.map.size; i++) {
            const msgpack_object_kv *kv = &labels->via.map.ptr[i];
            if (kv->key.via.str.size == 0 || kv->val.type != MSGPACK_OBJECT_STR)
                return failf(msg, msglen,
                             "res.metadata.labels: expected a map of non-empty string to string");
        }
    }
    if ((rv = get_u64_opt(md, "expires", "res.metadata.expires", &meta->expires, msg, msglen)) != 0)
        return rv;
    if ((rv = get_u64_opt(md, "revision", "res.metadata.revision", &meta->revision, msg, msglen)) !=
        0)
        return rv;

    meta->kind = kind->via.str.ptr;
    meta->kind_len = kind->via.str.size;
    meta->name = name->via.str.ptr;
    meta->name_len = name->via.str.size;
    return 0;
}

/* ---- Commands ----------------------------------------------------------- */

enum {
    F_OP = 1 << 0,
    F_RID = 1 << 1,
    F_RES = 1 << 2,
    F_KIND = 1 << 3,
    F_NAME = 1 << 4,
    F_REV = 1 << 5,
    F_OPS = 1 << 6,
    F_BEFORE = 1 << 7,
    F_EVENTS = 1 << 8,
    F_REC = 1 << 9,
};

static const struct {
    const char *name;
    unsigned bit;
} fields[] = {
    {"op", F_OP},   {"rid", F_RID}, {"res", F_RES},       {"kind", F_KIND},     {"name", F_NAME},
    {"rev", F_REV}, {"ops", F_OPS}, {"before", F_BEFORE}, {"events", F_EVENTS}, {"rec", F_REC},
};

static const struct {
    const char *name;
    enum state__op op;
    unsigned allowed;
} ops[] = {
    {"put", STATE__OP_PUT, F_OP | F_RID | F_RES},
    {"create", STATE__OP_CREATE, F_OP | F_RID | F_RES},
    {"update", STATE__OP_UPDATE, F_OP | F_RID | F_RES},
    {"cas", STATE__OP_CAS, F_OP | F_RID | F_RES | F_REV},
    {"delete", STATE__OP_DELETE, F_OP | F_RID | F_KIND | F_NAME},
    {"cdelete", STATE__OP_CDELETE, F_OP | F_RID | F_KIND | F_NAME | F_REV},
    {"batch", STATE__OP_BATCH, F_OP | F_RID | F_OPS},
    {"expire", STATE__OP_EXPIRE, F_OP | F_RID | F_BEFORE},
    {"audit", STATE__OP_AUDIT, F_OP | F_RID | F_EVENTS},
    {"audit_trim", STATE__OP_AUDIT_TRIM, F_OP | F_RID | F_BEFORE},
    {"rec_put", STATE__OP_REC_PUT, F_OP | F_RID | F_REC},
    {"rec_trim", STATE__OP_REC_TRIM, F_OP | F_RID | F_REC},
    {"group", STATE__OP_GROUP, F_OP | F_OPS},
};

static int parse_batch(const msgpack_object *arr, struct state__cmd *c, char *msg, size_t n)
{
    if (arr->type != MSGPACK_OBJECT_ARRAY)
        return failf(msg, n, "ops: expected an array of commands");
    uint32_t size = arr->via.array.size;
    if (size == 0 || size > STATE_MAX_BATCH)
        return failf(msg, n, "ops: expected 1-%u commands, got %u", STATE_MAX_BATCH, size);
    for (uint32_t i = 0; i < size; i++) {
        struct state__cmd sub;
        char sub_msg[sizeof((struct state_result *)0)->message];
        if (state__cmd_parse(&arr->via.array.ptr[i], true, &sub, sub_msg, sizeof sub_msg) != 0)
            return failf(msg, n, "ops[%u]: %s", i, sub_msg);
    }
    c->ops = arr;
    return 0;
}

int state__cmd_parse(const msgpack_object *o, bool in_batch, struct state__cmd *c, char *msg,
                     size_t msglen)
{
    int rv;
    memset(c, 0, sizeof *c);
    if (o->type != MSGPACK_OBJECT_MAP)
        return failf(msg, msglen, "command: expected a map");
    if ((rv = check_keys(o, 8, "command", msg, msglen)) != 0)
        return rv;

    const msgpack_object *op = rp_mp_get(o, "op");
    if (is_nil(op) || op->type != MSGPACK_OBJECT_STR)
        return failf(msg, msglen,
                     "op: expected one of put, create, update, cas, delete, cdelete, batch, "
                     "expire, audit, audit_trim, rec_put, rec_trim, group");
    size_t k;
    for (k = 0; k < sizeof ops / sizeof ops[0]; k++) {
        if (rp_mp_str_eq(op, ops[k].name))
            break;
    }
    if (k == sizeof ops / sizeof ops[0])
        return failf(msg, msglen, "op: unknown op '%.*s'",
                     (int)(op->via.str.size > 20 ? 20 : op->via.str.size), op->via.str.ptr);
    c->op = ops[k].op;
    if (in_batch &&
        (c->op == STATE__OP_BATCH || c->op == STATE__OP_EXPIRE || c->op == STATE__OP_AUDIT ||
         c->op == STATE__OP_AUDIT_TRIM || c->op == STATE__OP_REC_PUT ||
         c->op == STATE__OP_REC_TRIM || c->op == STATE__OP_GROUP))
        return failf(msg, msglen, "op: '%s' is not allowed inside a batch", ops[k].name);

    /* Only the fields this op uses: a misspelt or misplaced field is an error
     * rather than something silently ignored on some replicas' versions. */
    for (uint32_t i = 0; i < o->via.map.size; i++) {
        const msgpack_object *key = &o->via.map.ptr[i].key;
        size_t f;
        for (f = 0; f < sizeof fields / sizeof fields[0]; f++) {
            if (rp_mp_str_eq(key, fields[f].name))
                break;
        }
        if (f == sizeof fields / sizeof fields[0])
            return failf(msg, msglen, "command: unknown field '%.*s'",
                         (int)(key->via.str.size > 20 ? 20 : key->via.str.size), key->via.str.ptr);
        if (!(ops[k].allowed & fields[f].bit))
            return failf(msg, msglen, "%s: not a field of op '%s'", fields[f].name, ops[k].name);
    }

    const msgpack_object *rid = rp_mp_get(o, "rid");
    if (!is_nil(rid)) {
        if (in_batch)
            return failf(msg, msglen,
                         "rid: not allowed inside a batch (the batch's rid covers it)");
        if (rid->type != MSGPACK_OBJECT_STR ||
            !printable_ok(rid->via.str.ptr, rid->via.str.size, STATE_RID_MAX))
            return failf(msg, msglen,
                         "rid: expected a request id of 1-64 bytes without control characters");
        c->rid = rid->via.str.ptr;
        c->rid_len = rid->via.str.size;
    } else if (!in_batch && c->op != STATE__OP_EXPIRE && c->op != STATE__OP_AUDIT_TRIM &&
               c->op != STATE__OP_REC_PUT && c->op != STATE__OP_REC_TRIM &&
               c->op != STATE__OP_GROUP) {
        return failf(msg, msglen, "rid: missing (every %s needs a request id)", ops[k].name);
    }

    switch (c->op) {
    case STATE__OP_PUT:
    case STATE__OP_CREATE:
    case STATE__OP_UPDATE:
    case STATE__OP_CAS:
        c->res = rp_mp_get(o, "res");
        if (is_nil(c->res))
            return failf(msg, msglen, "res: missing (%s needs a resource)", ops[k].name);
        if ((rv = state__res_check(c->res, &c->meta, msg, msglen)) != 0)
            return rv;
        break;
    case STATE__OP_DELETE:
    case STATE__OP_CDELETE: {
        const msgpack_object *kind = rp_mp_get(o, "kind");
        const msgpack_object *name = rp_mp_get(o, "name");
        if (is_nil(kind) || kind->type != MSGPACK_OBJECT_STR ||
            !state__kind_ok(kind->via.str.ptr, kind->via.str.size))
            return failf(msg, msglen, "kind: expected a string of 1-63 bytes of [a-z0-9_]");
        if (is_nil(name) || name->type != MSGPACK_OBJECT_STR ||
            !state__name_ok(name->via.str.ptr, name->via.str.size))
            return failf(msg, msglen,
                         "name: expected a string of 1-255 bytes without control characters");
        c->meta.kind = kind->via.str.ptr;
        c->meta.kind_len = kind->via.str.size;
        c->meta.name = name->via.str.ptr;
        c->meta.name_len = name->via.str.size;
        break;
    }
    case STATE__OP_BATCH: {
        const msgpack_object *arr = rp_mp_get(o, "ops");
        if (is_nil(arr))
            return failf(msg, msglen, "ops: missing (batch needs an array of commands)");
        if ((rv = parse_batch(arr, c, msg, msglen)) != 0)
            return rv;
        break;
    }
    case STATE__OP_GROUP: {
        /* Only the shape: each member is checked when it is applied, so a bad one
         * fails alone (state/apply.c, exec_group). */
        const msgpack_object *arr = rp_mp_get(o, "ops");
        if (is_nil(arr) || arr->type != MSGPACK_OBJECT_ARRAY || arr->via.array.size == 0 ||
            arr->via.array.size > STATE_MAX_GROUP)
            return failf(msg, msglen, "ops: expected an array of 1-%u commands", STATE_MAX_GROUP);
        c->ops = arr;
        break;
    }
    case STATE__OP_AUDIT: {
        const msgpack_object *events = rp_mp_get(o, "events");
        if (is_nil(events))
            return failf(msg, msglen, "events: missing (audit needs an array of events)");
        if ((rv = state__audit_check(events, msg, msglen)) != 0)
            return rv;
        c->events = events;
        break;
    }
    case STATE__OP_REC_PUT:
    case STATE__OP_REC_TRIM:
        c->rec = rp_mp_get(o, "rec");
        if ((rv = state__rec_check(c->op, c->rec, msg, msglen)) != 0)
            return rv;
        break;
    case STATE__OP_EXPIRE:
    case STATE__OP_AUDIT_TRIM: {
        const msgpack_object *before = rp_mp_get(o, "before");
        if (is_nil(before) || before->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return failf(msg, msglen, "before: expected a time in ms (a non-negative integer)");
        c->before = before->via.u64;
        break;
    }
    }

    if (c->op == STATE__OP_CAS || c->op == STATE__OP_CDELETE) {
        const msgpack_object *rev = rp_mp_get(o, "rev");
        if (is_nil(rev) || rev->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
            return failf(msg, msglen,
                         "rev: expected the revision to compare (a non-negative "
                         "integer, 0 = must be absent)");
        c->rev = rev->via.u64;
        if (c->op == STATE__OP_CDELETE && c->rev == 0)
            return failf(msg, msglen, "rev: cdelete needs a revision >= 1");
    }
    return 0;
}

/* ---- Resources with their revision -------------------------------------- */

int state__res_pack(struct rp_buf *b, const msgpack_object *res, uint64_t rev)
{
    msgpack_packer pk;
    size_t start = b->len;
    int rv = 0;
    rp_mp_packer_init(&pk, b);
    rv |= msgpack_pack_map(&pk, res->via.map.size);
    for (uint32_t i = 0; i < res->via.map.size; i++) {
        const msgpack_object_kv *kv = &res->via.map.ptr[i];
        rv |= msgpack_pack_object(&pk, kv->key);
        if (!rp_mp_str_eq(&kv->key, "metadata") || kv->val.type != MSGPACK_OBJECT_MAP) {
            rv |= msgpack_pack_object(&pk, kv->val);
            continue;
        }
        const msgpack_object *md = &kv->val;
        bool has_rev = rp_mp_get(md, "revision") != NULL;
        rv |= msgpack_pack_map(&pk, md->via.map.size + (has_rev ? 0 : 1));
        for (uint32_t j = 0; j < md->via.map.size; j++) {
            const msgpack_object_kv *m = &md->via.map.ptr[j];
            rv |= msgpack_pack_object(&pk, m->key);
            if (rp_mp_str_eq(&m->key, "revision"))
                rv |= msgpack_pack_uint64(&pk, rev);
            else
                rv |= msgpack_pack_object(&pk, m->val);
        }
        if (!has_rev) {
            rp_mp_pack_str(&pk, "revision");
            rv |= msgpack_pack_uint64(&pk, rev);
        }
    }
    if (rv != 0) {
        b->len = start;
        return rp_err(RP_ENOMEM, "encoding a resource");
    }
    return 0;
}

int state_resource_check(const void *res, size_t len, struct state_res_meta *meta)
{
    msgpack_unpacked u;
    char msg[160];
    int rv = rp_mp_parse(res, len, &u);
    if (rv != 0)
        return state__err_prefix(RP_EINVAL, "res");
    rv = state__res_check(&u.data, meta, msg, sizeof msg);
    /* The strings msgpack-c hands back point into @res, not into its zone, so
     * @meta stays valid after the zone is gone (tests/test_state_codec.c checks). */
    msgpack_unpacked_destroy(&u);
    if (rv != 0)
        return rp_err(rv, "%s", msg);
    return 0;
}

int state_resource_with_revision(const void *res, size_t len, uint64_t rev, struct rp_buf *out)
{
    msgpack_unpacked u;
    struct state_res_meta meta;
    char msg[160];
    int rv = rp_mp_parse(res, len, &u);
    if (rv != 0)
        return state__err_prefix(RP_EINVAL, "res");
    rv = state__res_check(&u.data, &meta, msg, sizeof msg);
    if (rv != 0)
        rv = rp_err(rv, "%s", msg);
    else
        rv = state__res_pack(out, &u.data, rev);
    msgpack_unpacked_destroy(&u);
    return rv;
}

int state_command_check(const void *cmd, size_t len)
{
    msgpack_unpacked u;
    struct state__cmd c;
    char msg[160];
    if (len > STATE_MAX_COMMAND)
        return rp_err(RP_EINVAL, "command of %zu bytes exceeds the limit of %u", len,
                      STATE_MAX_COMMAND);
    int rv = rp_mp_parse(cmd, len, &u);
    if (rv != 0)
        return state__err_prefix(RP_EINVAL, "command");
    rv = state__cmd_parse(&u.data, false, &c, msg, sizeof msg);
    msgpack_unpacked_destroy(&u);
    if (rv != 0)
        return rp_err(rv, "%s", msg);
    return 0;
}

/* ---- Group commit ------------------------------------------------------- */

uint64_t state__cmd_key(const struct state__cmd *c)
{
    switch (c->op) {
    case STATE__OP_PUT:
    case STATE__OP_CREATE:
    case STATE__OP_UPDATE:
    case STATE__OP_CAS:
    case STATE__OP_DELETE:
    case STATE__OP_CDELETE:
        break;
    default:
        return 0;
    }
    /* FNV-1a over kind \0 name: deterministic, so every replica agrees on which
     * members of a group collide (a false collision only fails a member with a
     * retryable conflict, at odds of 2^-64). */
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < c->meta.kind_len; i++)
        h = (h ^ (uint8_t)c->meta.kind[i]) * 0x100000001b3ull;
    h *= 0x100000001b3ull; /* the \0 separator */
    for (size_t i = 0; i < c->meta.name_len; i++)
        h = (h ^ (uint8_t)c->meta.name[i]) * 0x100000001b3ull;
    return h == 0 ? 1 : h;
}

int state_command_key(const void *cmd, size_t len, uint64_t *key)
{
    msgpack_unpacked u;
    struct state__cmd c;
    char msg[160];
    *key = 0;
    if (len > STATE_MAX_COMMAND)
        return rp_err(RP_EINVAL, "command of %zu bytes exceeds the limit of %u", len,
                      STATE_MAX_COMMAND);
    int rv = rp_mp_parse(cmd, len, &u);
    if (rv != 0)
        return state__err_prefix(RP_EINVAL, "command");
    rv = state__cmd_parse(&u.data, false, &c, msg, sizeof msg);
    if (rv == 0)
        *key = state__cmd_key(&c);
    msgpack_unpacked_destroy(&u);
    if (rv != 0)
        return rp_err(rv, "%s", msg);
    return 0;
}

int state_group_encode(const struct raft_buffer *cmds, unsigned n, struct raft_buffer *entry)
{
    /* {"op": "group", "ops": [members]}: a fixmap of 2, fixstrs, an array32. */
    static const uint8_t head[] = {0x82, 0xa2, 'o',  'p', 0xa5, 'g', 'r', 'o',
                                   'u',  'p',  0xa3, 'o', 'p',  's', 0xdd};
    if (n == 0 || n > STATE_MAX_GROUP)
        return rp_err(RP_EINVAL, "a group holds 1-%u commands, not %u", STATE_MAX_GROUP, n);
    size_t len = sizeof head + 4;
    for (unsigned i = 0; i < n; i++)
        len += cmds[i].len;
    if (len > STATE_MAX_COMMAND)
        return rp_err(RP_EINVAL, "a group of %zu bytes exceeds the limit of %u", len,
                      STATE_MAX_COMMAND);
    size_t padded = STATE_ENTRY_LEN(len);
    uint8_t *p = raft_malloc(padded);
    if (p == NULL)
        return rp_err(RP_ENOMEM, "out of memory for a group of %zu bytes", len);
    memcpy(p, head, sizeof head);
    size_t off = sizeof head;
    p[off++] = (uint8_t)(n >> 24);
    p[off++] = (uint8_t)(n >> 16);
    p[off++] = (uint8_t)(n >> 8);
    p[off++] = (uint8_t)n;
    for (unsigned i = 0; i < n; i++) {
        memcpy(p + off, cmds[i].base, cmds[i].len);
        off += cmds[i].len;
    }
    memset(p + off, 0, padded - off);
    entry->base = p;
    entry->len = padded;
    return 0;
}

int state_cmd_encode(const struct state_cmd *cmd, struct rp_buf *out)
{
    if (cmd->op == NULL)
        return rp_err(RP_EINVAL, "command without op");
    if (cmd->res != NULL && rp_mp_validate(cmd->res, cmd->res_len) != 0)
        return state__err_prefix(RP_EINVAL, "res");
    bool rev_always = strcmp(cmd->op, "cas") == 0 || strcmp(cmd->op, "cdelete") == 0;
    bool has_rev = rev_always || cmd->rev != 0;
    uint32_t n = 1 + (cmd->rid != NULL) + (cmd->res != NULL) + (cmd->kind != NULL) +
                 (cmd->name != NULL) + has_rev + (cmd->ops != NULL) + (cmd->before != 0) +
                 (cmd->events != NULL);
    size_t start = out->len;
    msgpack_packer pk;
    int rv = 0;
    rp_mp_packer_init(&pk, out);
    rv |= msgpack_pack_map(&pk, n);
    rp_mp_kv_str(&pk, "op", cmd->op);
    if (cmd->rid != NULL)
        rp_mp_kv_str(&pk, "rid", cmd->rid);
    if (cmd->res != NULL)
        rp_mp_kv_raw(&pk, "res", cmd->res, cmd->res_len);
    if (cmd->kind != NULL)
        rp_mp_kv_str(&pk, "kind", cmd->kind);
    if (cmd->name != NULL)
        rp_mp_kv_str(&pk, "name", cmd->name);
    if (has_rev)
        rp_mp_kv_u64(&pk, "rev", cmd->rev);
    if (cmd->ops != NULL) {
        rp_mp_pack_str(&pk, "ops");
        rv |= msgpack_pack_array(&pk, cmd->n_ops);
        rv |= rp_buf_append(out, cmd->ops, cmd->ops_len);
    }
    if (cmd->before != 0)
        rp_mp_kv_u64(&pk, "before", cmd->before);
    if (cmd->events != NULL) {
        rp_mp_pack_str(&pk, "events");
        rv |= msgpack_pack_array(&pk, cmd->n_events);
        rv |= rp_buf_append(out, cmd->events, cmd->events_len);
    }
    if (rv != 0) {
        out->len = start;
        return rp_err(RP_ENOMEM, "encoding a command");
    }
    return 0;
}

size_t state__unpad(const uint8_t *p, size_t len)
{
    if (len == 0 || rp_mp_validate(p, len) == 0)
        return len;
    /* msgpack is prefix-free: at most one of these lengths is a whole object. */
    for (size_t pad = 1; pad <= 7 && pad <= len && p[len - pad] == 0; pad++) {
        if (rp_mp_validate(p, len - pad) == 0)
            return len - pad;
    }
    return len;
}

/* ---- Results remembered per request id ---------------------------------- */

/* be32 code, be64 current_rev, be32 failed_op, be32 n_changed, u8 length, message. */
int state__result_encode(const struct state_result *r, struct rp_buf *b)
{
    size_t mlen = strnlen(r->message, sizeof r->message - 1);
    int rv = 0;
    if (mlen > 255)
        mlen = 255;
    rv |= rp_buf_put_be32(b, (uint32_t)r->code);
    rv |= rp_buf_put_be64(b, r->current_rev);
    rv |= rp_buf_put_be32(b, r->failed_op);
    rv |= rp_buf_put_be32(b, r->n_changed);
    uint8_t l = (uint8_t)mlen;
    rv |= rp_buf_append(b, &l, 1);
    rv |= rp_buf_append(b, r->message, mlen);
    return rv != 0 ? RP_ENOMEM : 0;
}

int state__result_decode(const uint8_t *p, size_t n, uint64_t revision, struct state_result *r)
{
    struct rp_rd rd;
    uint32_t code, failed, changed;
    uint64_t cur;
    uint8_t mlen;
    const uint8_t *m;
    rp_rd_init(&rd, p, n);
    if (rp_rd_be32(&rd, &code) || rp_rd_be64(&rd, &cur) || rp_rd_be32(&rd, &failed) ||
        rp_rd_be32(&rd, &changed) || rp_rd_u8(&rd, &mlen) || mlen >= sizeof r->message ||
        rp_rd_bytes(&rd, mlen, &m) || rp_rd_left(&rd) != 0)
        return rp_err(RP_EINVAL, "malformed stored result of %zu bytes", n);
    memset(r, 0, sizeof *r);
    r->code = (int)(int32_t)code;
    r->revision = revision;
    r->current_rev = cur;
    r->failed_op = failed;
    r->n_changed = changed;
    memcpy(r->message, m, mlen);
    r->message[mlen] = '\0';
    return 0;
}
