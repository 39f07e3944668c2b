/* auth/agents.c: the methods node agents (and proxies) call: heartbeat (their
 * presence resource), emit_events (their audit events) and renew_host (their
 * certificates).
 *
 * The method table lets Node (and Proxy) identities in; everything here holds a
 * caller to its own host: a Node writes node/<its host id> and nothing else, its
 * events carry its host id as server_id whatever it sent, and it gets certificates
 * for its own host id, system role and node name only. A heartbeat for another
 * host is refused and audited like any denial (auth_deny).
 *
 * Heartbeats are gathered. 10,000 agents heartbeating once a minute are ~167 puts a
 * second; each its own Raft entry would be ~167 fsyncs a second on every member.
 * They are unconditional puts of the caller's own resource, so none can fail
 * another: the leader queues them, and whichever heartbeat finds nobody proposing
 * waits a moment for others (HB_GATHER_MS) and proposes everything queued as one
 * "batch" entry, while the heartbeats that arrive meanwhile queue for the next one.
 * No thread of its own: a waiter whose batch is done hands the proposing to the first
 * one still queued. Each waiter answers with the revision of the entry that carried
 * its put (docs/presence.md). */
#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/x509v3.h>

#include "auth/audit.h"
#include "auth/internal.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/names.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "lib/util.h"

/* ---- limits ------------------------------------------------------------------------ */

#define HB_MIN_TTL_MS 3000ull
#define HB_MAX_TTL_MS 3600000ull
#define HB_MAX_RES_BYTES (64u << 10)  /* one presence resource */
#define HB_BATCH_MAX_OPS 512          /* puts in one entry (STATE_MAX_BATCH is 1024) */
#define HB_BATCH_MAX_BYTES (8u << 20) /* half of STATE_MAX_COMMAND */
/* How long the first heartbeat of an entry waits for others to join it. */
#define HB_GATHER_MS 20
#define HB_MAX_LABELS 128                /* static labels (the state allows 256) */
#define HB_MAX_CMD_LABELS 64             /* command labels */
#define HB_LABEL_VALUE_MAX 1024          /* a label's value, or a command label's result */
#define HB_CMD_MAX_ARGS 64               /* argv of a command label */
#define HB_CMD_ARG_MAX 4096              /* one argument */
#define HB_LABEL_NAME_MAX 253            /* as lib/config's label names */
#define EMIT_MAX_EVENTS 256              /* events in one emit_events */
#define EMIT_MAX_EVENT_BYTES (64u << 10) /* one encoded event */
#define EMIT_MAX_FIELDS 256              /* fields of one event */

/* ---- small checks ------------------------------------------------------------------ */

/* A string of 1..@max bytes without control characters (C0, DEL). */
static bool text_ok(const msgpack_object *o, size_t max)
{
    if (o == NULL || o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 || o->via.str.size > max)
        return false;
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        unsigned char ch = (unsigned char)o->via.str.ptr[i];
        if (ch < 0x20 || ch == 0x7f)
            return false;
    }
    return true;
}

/* @o's text (cut at 64 bytes, unprintable bytes as '?') into @out, for messages. */
static const char *shown(const msgpack_object *o, char *out, size_t n)
{
    size_t k = 0;
    if (o != NULL && o->type == MSGPACK_OBJECT_STR) {
        for (uint32_t i = 0; i < o->via.str.size && k + 1 < n && i < 64; i++) {
            unsigned char ch = (unsigned char)o->via.str.ptr[i];
            out[k++] = ch < 0x20 || ch >= 0x7f ? '?' : (char)ch;
        }
    } else {
        k = (size_t)snprintf(out, n, "%s", o == NULL ? "(none)" : "(not a string)");
        if (k >= n)
            k = n - 1;
    }
    out[k] = '\0';
    return out;
}

/* A label name, by the rule lib/config.h gives ssh_service.labels:
 * [A-Za-z0-9/._:*-]+, at most 253 bytes. */
static bool label_name_ok(const msgpack_object *o)
{
    if (o->type != MSGPACK_OBJECT_STR || o->via.str.size == 0 ||
        o->via.str.size > HB_LABEL_NAME_MAX)
        return false;
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        char ch = o->via.str.ptr[i];
        bool ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
                  (ch >= '0' && ch <= '9') || strchr("/._:*-", ch) != NULL;
        if (!ok || ch == '\0')
            return false;
    }
    return true;
}

/* A host name as join takes it: letters, digits, '.', '-', '_'. */
static bool hostname_ok(const msgpack_object *o)
{
    if (!text_ok(o, 253))
        return false;
    for (uint32_t i = 0; i < o->via.str.size; i++) {
        char ch = o->via.str.ptr[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '.' || ch == '-' || ch == '_'))
            return false;
    }
    return true;
}

/* "host:port" by rp_check_hostport. */
static bool hostport_ok(const msgpack_object *o)
{
    char buf[300];
    if (!text_ok(o, 261))
        return false;
    snprintf(buf, sizeof buf, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    return rp_check_hostport(buf) == 0;
}

/* Every key of map @m is a string among @allowed (NULL-terminated), none twice. */
static int check_keys(const msgpack_object *m, const char *what, const char *const *allowed)
{
    for (uint32_t i = 0; i < m->via.map.size; i++) {
        const msgpack_object *k = &m->via.map.ptr[i].key;
        char sk[80];
        size_t a;
        for (a = 0; allowed[a] && !rp_mp_str_eq(k, allowed[a]); a++)
            ;
        if (allowed[a] == NULL) {
            char list[400] = "";
            size_t len = 0;
            for (size_t j = 0; allowed[j] && len < sizeof list; j++)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", j ? ", " : "",
                                        allowed[j]);
            return rp_err(RP_EINVAL, "%s: unknown field '%s', expected %s", what,
                          shown(k, sk, sizeof sk), list);
        }
        for (uint32_t j = 0; j < i; j++)
            if (rp_mp_str_eq(&m->via.map.ptr[j].key, allowed[a]))
                return rp_err(RP_EINVAL, "%s: field '%s' appears twice", what, allowed[a]);
    }
    return 0;
}

/* ---- the presence resource ----------------------------------------------------------- */

static int check_labels(const msgpack_object *labels)
{
    if (labels->type != MSGPACK_OBJECT_MAP || labels->via.map.size > HB_MAX_LABELS)
        return rp_err(RP_EINVAL, "metadata.labels: expected a map of at most %d labels",
                      HB_MAX_LABELS);
    for (uint32_t i = 0; i < labels->via.map.size; i++) {
        const msgpack_object_kv *kv = &labels->via.map.ptr[i];
        char sk[80];
        if (!label_name_ok(&kv->key))
            return rp_err(RP_EINVAL,
                          "metadata.labels: name '%s': expected 1-%d of A-Z a-z 0-9 / . _ : * -",
                          shown(&kv->key, sk, sizeof sk), HB_LABEL_NAME_MAX);
        if (kv->val.type != MSGPACK_OBJECT_STR || kv->val.via.str.size > HB_LABEL_VALUE_MAX ||
            (kv->val.via.str.size > 0 && !text_ok(&kv->val, HB_LABEL_VALUE_MAX)))
            return rp_err(RP_EINVAL,
                          "metadata.labels.%s: expected a string of at most %d bytes without "
                          "control characters",
                          shown(&kv->key, sk, sizeof sk), HB_LABEL_VALUE_MAX);
    }
    return 0;
}

/* spec.cmd_labels: {name: {period, command: [argv...], result?}}; no name of a static
 * label too (a node's labels are one set). */
static int check_cmd_labels(const msgpack_object *cl, const msgpack_object *labels)
{
    static const char *const fields[] = {"period", "command", "result", NULL};
    if (cl->type != MSGPACK_OBJECT_MAP || cl->via.map.size > HB_MAX_CMD_LABELS)
        return rp_err(RP_EINVAL, "spec.cmd_labels: expected a map of at most %d command labels",
                      HB_MAX_CMD_LABELS);
    for (uint32_t i = 0; i < cl->via.map.size; i++) {
        const msgpack_object_kv *kv = &cl->via.map.ptr[i];
        char sk[80], what[128];
        if (!label_name_ok(&kv->key))
            return rp_err(RP_EINVAL,
                          "spec.cmd_labels: name '%s': expected 1-%d of A-Z a-z 0-9 / . _ : * -",
                          shown(&kv->key, sk, sizeof sk), HB_LABEL_NAME_MAX);
        shown(&kv->key, sk, sizeof sk);
        for (uint32_t j = 0; labels && j < labels->via.map.size; j++)
            if (labels->via.map.ptr[j].key.via.str.size == kv->key.via.str.size &&
                memcmp(labels->via.map.ptr[j].key.via.str.ptr, kv->key.via.str.ptr,
                       kv->key.via.str.size) == 0)
                return rp_err(RP_EINVAL,
                              "spec.cmd_labels.%s: a static label has the same name; expected "
                              "each label name once",
                              sk);
        snprintf(what, sizeof what, "spec.cmd_labels.%s", sk);
        if (kv->val.type != MSGPACK_OBJECT_MAP)
            return rp_err(RP_EINVAL, "%s: expected a map {period, command, result}", what);
        int rv = check_keys(&kv->val, what, fields);
        if (rv != 0)
            return rv;
        if (!text_ok(rp_mp_get(&kv->val, "period"), 32))
            return rp_err(RP_EINVAL, "%s.period: expected a duration such as \"1m0s\"", what);
        const msgpack_object *cmd = rp_mp_get(&kv->val, "command");
        if (cmd == NULL || cmd->type != MSGPACK_OBJECT_ARRAY || cmd->via.array.size == 0 ||
            cmd->via.array.size > HB_CMD_MAX_ARGS)
            return rp_err(RP_EINVAL, "%s.command: expected an argv array of 1-%d strings", what,
                          HB_CMD_MAX_ARGS);
        for (uint32_t a = 0; a < cmd->via.array.size; a++) {
            const msgpack_object *arg = &cmd->via.array.ptr[a];
            if (arg->type != MSGPACK_OBJECT_STR || arg->via.str.size > HB_CMD_ARG_MAX ||
                memchr(arg->via.str.ptr, '\0', arg->via.str.size) != NULL)
                return rp_err(RP_EINVAL,
                              "%s.command[%u]: expected a string of at most %d bytes without NUL",
                              what, a, HB_CMD_ARG_MAX);
        }
        const msgpack_object *res = rp_mp_get(&kv->val, "result");
        if (res != NULL && res->type != MSGPACK_OBJECT_NIL &&
            (res->type != MSGPACK_OBJECT_STR || res->via.str.size > HB_LABEL_VALUE_MAX ||
             (res->via.str.size > 0 && !text_ok(res, HB_LABEL_VALUE_MAX))))
            return rp_err(RP_EINVAL,
                          "%s.result: expected a string of at most %d bytes without control "
                          "characters",
                          what, HB_LABEL_VALUE_MAX);
    }
    return 0;
}

/* spec.host_key (a plain public key line) and spec.host_cert (an OpenSSH host
 * certificate line for that same key). Who signed the certificate is not checked
 * here: whoever trusts it checks that against the host CA it trusts (tctl nodes ls
 * --format=known_hosts, tsh), as with any certificate, also across a CA rotation. */
static int check_host_key(const msgpack_object *key, const msgpack_object *cert)
{
    char line[8192];
    uint8_t *blob = NULL;
    size_t blob_len = 0;
    struct rp_ssh_cert c;
    struct rp_buf cb;
    int rv;
    if (key == NULL || key->type == MSGPACK_OBJECT_NIL) {
        if (cert != NULL && cert->type != MSGPACK_OBJECT_NIL)
            return rp_err(RP_EINVAL, "spec.host_cert: given without spec.host_key");
        return 0;
    }
    if (!text_ok(key, sizeof line - 1))
        return rp_err(RP_EINVAL, "spec.host_key: expected an authorized_keys line");
    snprintf(line, sizeof line, "%.*s", (int)key->via.str.size, key->via.str.ptr);
    enum rp_ssh_keytype type;
    if ((rv = rp_ssh_pubkey_parse_blob(line, &blob, &blob_len, &type)) != 0)
        return rp_err(rv, "spec.host_key: %s", rp_errmsg());
    if (cert == NULL || cert->type == MSGPACK_OBJECT_NIL) {
        free(blob);
        return 0;
    }
    if (!text_ok(cert, sizeof line - 1)) {
        free(blob);
        return rp_err(RP_EINVAL, "spec.host_cert: expected an OpenSSH certificate line");
    }
    snprintf(line, sizeof line, "%.*s", (int)cert->via.str.size, cert->via.str.ptr);
    if ((rv = rp_ssh_cert_parse_line(line, &c, NULL)) != 0) {
        free(blob);
        return rp_err(rv, "spec.host_cert: %s", rp_errmsg());
    }
    rp_buf_init(&cb);
    if (c.type != RP_SSH_CERT_HOST)
        rv = rp_err(RP_EINVAL, "spec.host_cert: a user certificate, expected a host certificate");
    else if ((rv = rp_ssh_pubkey_to_blob(c.key, &cb)) == 0 &&
             (cb.len != blob_len || memcmp(cb.data, blob, blob_len) != 0))
        rv = rp_err(RP_EINVAL, "spec.host_cert: certifies another key than spec.host_key");
    rp_buf_free(&cb);
    rp_ssh_cert_free(&c);
    free(blob);
    return rv;
}

static int check_spec(const msgpack_object *spec, const msgpack_object *labels, bool is_node)
{
    static const char *const fields[] = {"addr",       "public_addr", "hostname",  "version",
                                         "cmd_labels", "host_key",    "host_cert", "rotation",
                                         "use_tunnel", "tunnel_addr", NULL};
    if (spec == NULL || spec->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "spec: expected a map {addr, hostname, version, ...}");
    int rv = check_keys(spec, "spec", fields);
    if (rv != 0)
        return rv;
    const msgpack_object *addr = rp_mp_get(spec, "addr");
    const msgpack_object *tun = rp_mp_get(spec, "use_tunnel");
    if (tun != NULL && tun->type != MSGPACK_OBJECT_NIL && tun->type != MSGPACK_OBJECT_BOOLEAN)
        return rp_err(RP_EINVAL, "spec.use_tunnel: expected a boolean");
    /* A node reached only through its reverse tunnels has no address to dial. */
    bool tunnel_only = is_node && tun != NULL && tun->type == MSGPACK_OBJECT_BOOLEAN &&
                       tun->via.boolean && addr != NULL && addr->type == MSGPACK_OBJECT_STR &&
                       addr->via.str.size == 0;
    if (!tunnel_only && (addr != NULL || is_node) && !hostport_ok(addr))
        return rp_err(RP_EINVAL, "spec.addr: expected the address the %s serves on, host:port",
                      is_node ? "node's SSH server" : "proxy");
    const msgpack_object *pub = rp_mp_get(spec, "public_addr");
    if (pub != NULL && pub->type != MSGPACK_OBJECT_NIL && !hostport_ok(pub))
        return rp_err(RP_EINVAL, "spec.public_addr: expected host:port");
    if (!hostname_ok(rp_mp_get(spec, "hostname")))
        return rp_err(RP_EINVAL, "spec.hostname: expected a host name (letters, digits, '.', '-', "
                                 "'_', at most 253)");
    if (!text_ok(rp_mp_get(spec, "version"), 32))
        return rp_err(RP_EINVAL, "spec.version: expected the agent's version, 1-32 bytes");
    const msgpack_object *cl = rp_mp_get(spec, "cmd_labels");
    if (cl != NULL && cl->type != MSGPACK_OBJECT_NIL && (rv = check_cmd_labels(cl, labels)) != 0)
        return rv;
    if ((rv = check_host_key(rp_mp_get(spec, "host_key"), rp_mp_get(spec, "host_cert"))) != 0)
        return rv;
    const msgpack_object *rot = rp_mp_get(spec, "rotation");
    if (rot != NULL && rot->type != MSGPACK_OBJECT_NIL && rot->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "spec.rotation: expected a map");
    /* A proxy's reverse tunnel address, which agents discover proxies by. */
    const msgpack_object *taddr = rp_mp_get(spec, "tunnel_addr");
    if (taddr != NULL && taddr->type != MSGPACK_OBJECT_NIL && (is_node || !hostport_ok(taddr)))
        return rp_err(RP_EINVAL, "spec.tunnel_addr: expected host:port, on a proxy only");
    return 0;
}

/* Checks the rest of @res (kind and name were checked by the caller) and packs the
 * form to store into @out: metadata.expires set to @expires, metadata.revision
 * dropped (the state sets it). */
static int admit_presence(const msgpack_object *res, bool is_node, uint64_t expires,
                          struct rp_buf *out)
{
    static const char *const top[] = {"kind", "version", "sub_kind", "metadata", "spec", NULL};
    static const char *const meta_fields[] = {"name",      "labels",      "expires", "revision",
                                              "namespace", "description", NULL};
    int rv = check_keys(res, "resource", top);
    if (rv != 0)
        return rv;
    if (!rp_mp_str_eq(rp_mp_get(res, "version"), "v2"))
        return rp_err(RP_EINVAL, "version: expected \"v2\"");
    const msgpack_object *sub = rp_mp_get(res, "sub_kind");
    if (sub != NULL && sub->type != MSGPACK_OBJECT_NIL && !rp_mp_str_eq(sub, "teleport"))
        return rp_err(RP_EINVAL, "sub_kind: expected \"teleport\" or none");
    const msgpack_object *md = rp_mp_get(res, "metadata");
    if ((rv = check_keys(md, "metadata", meta_fields)) != 0)
        return rv;
    const msgpack_object *labels = rp_mp_get(md, "labels");
    if (labels != NULL && labels->type == MSGPACK_OBJECT_NIL)
        labels = NULL;
    if (labels != NULL && (rv = check_labels(labels)) != 0)
        return rv;
    const msgpack_object *ns = rp_mp_get(md, "namespace");
    if (ns != NULL && ns->type != MSGPACK_OBJECT_NIL && !rp_mp_str_eq(ns, "default"))
        return rp_err(RP_EINVAL, "metadata.namespace: expected \"default\" or none");
    const msgpack_object *desc = rp_mp_get(md, "description");
    if (desc != NULL && desc->type != MSGPACK_OBJECT_NIL && !text_ok(desc, 256))
        return rp_err(RP_EINVAL, "metadata.description: expected at most 256 bytes of text");
    const msgpack_object *spec = rp_mp_get(res, "spec");
    if ((rv = check_spec(spec, labels, is_node)) != 0)
        return rv;

    msgpack_packer pk;
    struct rp_mp_map m, meta;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    msgpack_pack_object(rp_mp_map_key(&m, "kind"), *rp_mp_get(res, "kind"));
    rp_mp_map_str(&m, "version", "v2");
    if (sub != NULL && sub->type != MSGPACK_OBJECT_NIL)
        rp_mp_map_str(&m, "sub_kind", "teleport");
    rp_mp_map_begin_map(&m, "metadata", &meta);
    msgpack_pack_object(rp_mp_map_key(&meta, "name"), *rp_mp_get(md, "name"));
    if (labels != NULL)
        msgpack_pack_object(rp_mp_map_key(&meta, "labels"), *labels);
    if (desc != NULL && desc->type != MSGPACK_OBJECT_NIL)
        msgpack_pack_object(rp_mp_map_key(&meta, "description"), *desc);
    rp_mp_map_u64(&meta, "expires", expires);
    rp_mp_map_end(&meta);
    msgpack_pack_object(rp_mp_map_key(&m, "spec"), *spec);
    rp_mp_map_end(&m);
    if (out->len > HB_MAX_RES_BYTES)
        return rp_err(RP_ETOOBIG, "the resource is %zu bytes encoded, expected at most %u",
                      out->len, HB_MAX_RES_BYTES);
    return 0;
}

/* ---- gathering heartbeats ------------------------------------------------------------ */

/* A heartbeat waiting for its entry, on its request thread's stack. Everything in it
 * is under the presence mutex. */
struct hb_item {
    const struct rp_buf *op; /* the encoded put sub-command */
    uint64_t queued_ms;      /* monotonic */
    pthread_cond_t cv;       /* done, its turn to propose, or a full entry to propose */
    bool done;
    int rv;
    uint64_t rev;
    char msg[256];
    struct hb_item *next;
};

struct auth_presence {
    pthread_mutex_t mu;
    struct hb_item *head, *tail;
    uint32_t n_queued;
    bool proposing;
    struct hb_item *gathering; /* the proposer while it waits out HB_GATHER_MS */
};

int auth_presence_new(struct auth_presence **out)
{
    struct auth_presence *p = calloc(1, sizeof *p);
    if (p == NULL)
        return rp_err(RP_ENOMEM, "heartbeat queue");
    pthread_mutex_init(&p->mu, NULL);
    *out = p;
    return 0;
}

void auth_presence_free(struct auth_presence *p)
{
    if (p == NULL)
        return;
    pthread_mutex_destroy(&p->mu);
    free(p);
}

/* Proposes what is queued (up to one entry's worth) as one batch and answers its
 * waiters; @me is the caller's own heartbeat. Called and returns with p->mu held;
 * drops it while proposing. First it lets heartbeats gather for up to HB_GATHER_MS
 * after the oldest one queued (less once an entry's worth is there): at the steady
 * rate of a large fleet a proposal takes a millisecond or two on a LAN, too short
 * for heartbeats to meet, and the window bounds the entries a second to
 * 1000 / HB_GATHER_MS whatever the fleet (docs/presence.md). */
static void propose_queued(struct auth_server *s, struct auth_presence *p, struct hb_item *me)
{
    p->proposing = true;
    p->gathering = me;
    for (;;) {
        uint64_t now = rp_mono_ms(), until = p->head->queued_ms + HB_GATHER_MS;
        if (p->n_queued >= HB_BATCH_MAX_OPS || now >= until)
            break;
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        uint64_t ns = (uint64_t)ts.tv_nsec + (until - now) * 1000000ull;
        ts.tv_sec += (time_t)(ns / 1000000000ull);
        ts.tv_nsec = (long)(ns % 1000000000ull);
        pthread_cond_timedwait(&me->cv, &p->mu, &ts);
    }
    p->gathering = NULL;
    struct hb_item *batch = p->head, *last = p->head;
    uint32_t n = 1;
    size_t bytes = batch->op->len;
    while (last->next && n < HB_BATCH_MAX_OPS &&
           bytes + last->next->op->len <= HB_BATCH_MAX_BYTES) {
        last = last->next;
        bytes += last->op->len;
        n++;
    }
    p->head = last->next;
    if (p->head == NULL)
        p->tail = NULL;
    last->next = NULL;
    p->n_queued -= n;
    pthread_mutex_unlock(&p->mu);

    /* The ops' bytes belong to their waiters, which wait until done: safe to read
     * without the lock. */
    struct rp_buf ops;
    struct state_result sr = {0};
    char rid[40] = "hb-";
    rp_buf_init(&ops);
    int rv = rp_random_hex(rid + 3, 16) != 0 ? rp_err(RP_EIO, "no randomness for a request id") : 0;
    for (struct hb_item *it = batch; it && rv == 0; it = it->next)
        rv = rp_buf_append(&ops, it->op->data, it->op->len);
    if (rv == 0) {
        struct state_cmd c = {
            .op = "batch", .rid = rid, .ops = ops.data, .ops_len = ops.len, .n_ops = n};
        rv = auth_propose_cmd(s, &c, &sr);
    }
    char msg[256];
    snprintf(msg, sizeof msg, "%s", rv != 0 ? rp_errmsg() : "");
    if (rv != 0)
        rp_warn("auth", "%u heartbeats not written: %s", n, msg);
    rp_buf_free(&ops);

    pthread_mutex_lock(&p->mu);
    p->proposing = false;
    while (batch) {
        struct hb_item *next = batch->next;
        batch->rv = rv;
        batch->rev = sr.revision;
        snprintf(batch->msg, sizeof batch->msg, "%s", msg);
        batch->done = true;
        pthread_cond_signal(&batch->cv);
        batch = next;
    }
    /* The first heartbeat still queued proposes next. */
    if (p->head)
        pthread_cond_signal(&p->head->cv);
}

/* Puts @op (an encoded "put" sub-command) through Raft with whatever heartbeats
 * gather with it. 0 with *@rev the revision of the entry, or the error of the entry. */
static int put_gathered(struct auth_server *s, const struct rp_buf *op, uint64_t *rev)
{
    struct auth_presence *p = s->presence;
    struct hb_item it = {.op = op, .queued_ms = rp_mono_ms()};
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&it.cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_lock(&p->mu);
    if (p->tail)
        p->tail->next = &it;
    else
        p->head = &it;
    p->tail = &it;
    if (++p->n_queued >= HB_BATCH_MAX_OPS && p->gathering)
        pthread_cond_signal(&p->gathering->cv); /* an entry's worth: no need to wait */
    while (!it.done) {
        if (!p->proposing)
            propose_queued(s, p, &it);
        else
            pthread_cond_wait(&it.cv, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
    pthread_cond_destroy(&it.cv);
    *rev = it.rev;
    return it.rv != 0 ? rp_err(it.rv, "%s", it.msg) : 0;
}

/* ---- heartbeat ------------------------------------------------------------------------ */

int auth_h_heartbeat(struct auth_req *r, struct rp_buf *out)
{
    const struct rp_identity *who = r->caller;
    bool is_node = who->system_role == RP_SYS_NODE;
    const char *kind = is_node ? "node" : "proxy";
    const msgpack_object *res = rp_mp_get(r->args, "res");
    uint64_t ttl = 0;
    char shown_buf[80];
    if (res == NULL || res->type != MSGPACK_OBJECT_MAP)
        return rp_err(RP_EINVAL, "argument 'res' (the %s resource, a map) is required", kind);
    if (rp_mp_get_u64(r->args, "ttl_ms", &ttl) != 0)
        return rp_err(RP_EINVAL, "argument 'ttl_ms' (the time to live of the presence, ms) is "
                                 "required");
    const msgpack_object *k = rp_mp_get(res, "kind");
    if (!rp_mp_str_eq(k, kind))
        return auth_deny(r, "a %s identity heartbeats a resource of kind %s only, not '%s'",
                         rp_system_role_name(who->system_role), kind,
                         shown(k, shown_buf, sizeof shown_buf));
    const msgpack_object *md = rp_mp_get(res, "metadata");
    const msgpack_object *name = rp_mp_get(md, "name");
    if (md == NULL || md->type != MSGPACK_OBJECT_MAP || !rp_mp_str_eq(name, who->host_id))
        return auth_deny(r, "host %s may heartbeat only %s/%s, not %s/%s", who->host_id, kind,
                         who->host_id, kind, shown(name, shown_buf, sizeof shown_buf));
    /* Below 3 s a heartbeat would outlive its presence on a slow link; above 1 h a dead
     * node would be listed for too long. */
    if (ttl < HB_MIN_TTL_MS)
        ttl = HB_MIN_TTL_MS;
    if (ttl > HB_MAX_TTL_MS)
        ttl = HB_MAX_TTL_MS;
    uint64_t expires = rp_now_ms() + ttl, rev = 0;

    struct rp_buf canon, op;
    rp_buf_init(&canon);
    rp_buf_init(&op);
    int rv = admit_presence(res, is_node, expires, &canon);
    if (rv == 0) {
        struct state_cmd c = {.op = "put", .res = canon.data, .res_len = canon.len};
        rv = state_cmd_encode(&c, &op);
    }
    if (rv == 0)
        rv = put_gathered(r->srv, &op, &rev);
    if (rv == 0) {
        msgpack_packer pk;
        struct rp_mp_map m;
        auth_reply_ok(&m, &pk, out);
        rp_mp_map_u64(&m, "rev", rev);
        rp_mp_map_u64(&m, "expires", expires);
        rp_mp_map_end(&m);
    }
    rp_buf_free(&canon);
    rp_buf_free(&op);
    return rv;
}

/* ---- emit_events ------------------------------------------------------------------------ */

/* The event types a node agent or a proxy emits, with Teleport's code for each (used
 * when the event carries none). A proxy reports only its own refusals: sessions it
 * would not route, and web logins it refused before asking auth (over its rate limit,
 * malformed), so a user.login from a proxy must say success: false; successful logins
 * are audited by auth itself. */
enum { EMIT_NODE = 1, EMIT_PROXY = 2 };
static const struct {
    const char *type, *code;
    unsigned who;
} node_events[] = {
    {"session.start", "T2000I", EMIT_NODE},
    {"session.end", "T2004I", EMIT_NODE},
    {"session.data", "T2006I", EMIT_NODE},
    {"session.rejected", "T1006W", EMIT_NODE | EMIT_PROXY},
    {"exec", "T3002I", EMIT_NODE},
    {"subsystem", "T3001I", EMIT_NODE},
    {"scp", "T3004I", EMIT_NODE},
    {"sftp", "TS001I", EMIT_NODE},
    {"port", "T3003I", EMIT_NODE},
    {"auth", "T3007W", EMIT_NODE | EMIT_PROXY},
    {"session.upload", "T2005I", EMIT_NODE},
    {"resize", "T2002I", EMIT_NODE},
    {"x11-forward", "T3008I", EMIT_NODE},
    {"client.disconnect", "T3006I", EMIT_NODE | EMIT_PROXY},
    {"user.login", "T1000W", EMIT_PROXY},
    {"user.login.throttled", "T1001W", EMIT_PROXY},
};

static const char *node_event_code(const msgpack_object *type, unsigned who)
{
    for (size_t i = 0; i < sizeof node_events / sizeof node_events[0]; i++)
        if ((node_events[i].who & who) && rp_mp_str_eq(type, node_events[i].type))
            return node_events[i].code;
    return NULL;
}

/* Fields the server writes (server_id, uid) or takes only once (the indexed ones). */
static bool key_is(const msgpack_object *k, const char *const *names)
{
    for (size_t i = 0; names[i]; i++)
        if (rp_mp_str_eq(k, names[i]))
            return true;
    return false;
}

/* Checks event @i of a node and appends the stored form to @out: the node's fields,
 * with server_id its host id, a fresh uid, and code (Teleport's for the type when
 * absent). */
static int admit_event(const msgpack_object *ev, uint32_t i, const char *host_id, unsigned who,
                       struct rp_buf *out)
{
    static const char *const once[] = {"event", "time", "code", "user", "sid", NULL};
    static const char *const ours[] = {"server_id", "uid", NULL};
    char sk[80];
    if (ev->type != MSGPACK_OBJECT_MAP || ev->via.map.size > EMIT_MAX_FIELDS)
        return rp_err(RP_EINVAL, "events[%u]: expected a map of at most %d fields", i,
                      EMIT_MAX_FIELDS);
    const msgpack_object *type = rp_mp_get(ev, "event");
    const char *code = node_event_code(type, who);
    if (code == NULL) {
        char list[512] = "";
        size_t len = 0;
        for (size_t j = 0; j < sizeof node_events / sizeof node_events[0]; j++)
            if (node_events[j].who & who)
                len += (size_t)snprintf(list + len, sizeof list - len, "%s%s", len ? ", " : "",
                                        node_events[j].type);
        return rp_err(RP_EINVAL,
                      "events[%u].event: '%s' is not an event a %s emits, expected "
                      "one of %s",
                      i, shown(type, sk, sizeof sk), who == EMIT_PROXY ? "proxy" : "node", list);
    }
    bool success = false;
    if (who == EMIT_PROXY && rp_mp_str_eq(type, "user.login") &&
        (rp_mp_get_bool(ev, "success", &success) != 0 || success))
        return rp_err(RP_EINVAL,
                      "events[%u].success: a proxy reports only the logins it refused "
                      "(success: false); auth audits the others",
                      i);
    const msgpack_object *t = rp_mp_get(ev, "time");
    if (t == NULL || t->type != MSGPACK_OBJECT_POSITIVE_INTEGER || t->via.u64 == 0)
        return rp_err(RP_EINVAL, "events[%u].time: expected a time in ms since the epoch (> 0)", i);
    const msgpack_object *c = rp_mp_get(ev, "code");
    if (c != NULL && c->type != MSGPACK_OBJECT_NIL && !text_ok(c, 16))
        return rp_err(RP_EINVAL, "events[%u].code: expected an event code such as %s", i, code);
    static const char *const indexed[] = {"user", "sid"};
    for (size_t j = 0; j < 2; j++) {
        const msgpack_object *o = rp_mp_get(ev, indexed[j]);
        if (o != NULL && o->type != MSGPACK_OBJECT_NIL && !text_ok(o, 255))
            return rp_err(RP_EINVAL,
                          "events[%u].%s: expected a string of 1-255 bytes without control "
                          "characters",
                          i, indexed[j]);
    }
    for (uint32_t a = 0; a < ev->via.map.size; a++) {
        const msgpack_object *k = &ev->via.map.ptr[a].key;
        if (!text_ok(k, 64))
            return rp_err(RP_EINVAL,
                          "events[%u]: field names must be strings of 1-64 bytes without control "
                          "characters",
                          i);
        if (!key_is(k, once))
            continue;
        for (uint32_t b = 0; b < a; b++)
            if (k->via.str.size == ev->via.map.ptr[b].key.via.str.size &&
                memcmp(k->via.str.ptr, ev->via.map.ptr[b].key.via.str.ptr, k->via.str.size) == 0)
                return rp_err(RP_EINVAL, "events[%u]: field '%s' appears twice", i,
                              shown(k, sk, sizeof sk));
    }

    char uid[33];
    if (rp_random_hex(uid, 16) != 0)
        return rp_err(RP_EIO, "no randomness for an event id");
    size_t start = out->len;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_mp_packer_init(&pk, out);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "uid", uid);
    rp_mp_map_str(&m, "server_id", host_id);
    if (c == NULL || c->type == MSGPACK_OBJECT_NIL)
        rp_mp_map_str(&m, "code", code);
    for (uint32_t a = 0; a < ev->via.map.size; a++) {
        const msgpack_object_kv *kv = &ev->via.map.ptr[a];
        if (key_is(&kv->key, ours) ||
            (rp_mp_str_eq(&kv->key, "code") && kv->val.type == MSGPACK_OBJECT_NIL))
            continue;
        char key[65];
        snprintf(key, sizeof key, "%.*s", (int)kv->key.via.str.size, kv->key.via.str.ptr);
        msgpack_pack_object(rp_mp_map_key(&m, key), kv->val);
    }
    rp_mp_map_end(&m);
    size_t len = out->len - start;
    if (len > EMIT_MAX_EVENT_BYTES) {
        out->len = start;
        return rp_err(RP_ETOOBIG, "events[%u]: %zu bytes encoded, expected at most %u", i, len,
                      EMIT_MAX_EVENT_BYTES);
    }
    return 0;
}

int auth_h_emit_events(struct auth_req *r, struct rp_buf *out)
{
    char rid[STATE_RID_MAX + 1];
    int rv = auth_arg_str(r->args, "rid", rid, sizeof rid, true);
    if (rv != 0)
        return rv;
    const msgpack_object *evs = rp_mp_get(r->args, "events");
    if (evs == NULL || evs->type != MSGPACK_OBJECT_ARRAY || evs->via.array.size == 0 ||
        evs->via.array.size > EMIT_MAX_EVENTS)
        return rp_err(RP_EINVAL, "argument 'events': expected an array of 1-%d events",
                      EMIT_MAX_EVENTS);
    struct rp_buf packed;
    rp_buf_init(&packed);
    for (uint32_t i = 0; i < evs->via.array.size && rv == 0; i++)
        rv = admit_event(&evs->via.array.ptr[i], i, r->caller->host_id,
                         rp_identity_is(r->caller, RP_SYS_PROXY) ? EMIT_PROXY : EMIT_NODE, &packed);
    if (rv == 0)
        rv = audit_append_answer(r->srv, rid, &packed, evs->via.array.size, out);
    rp_buf_free(&packed);
    return rv;
}

/* ---- renew_host ---------------------------------------------------------------------------- */

int auth_conn_nodename(struct rp_conn *c, const struct rp_identity *id, char *out, size_t n)
{
    X509 *cert = c->ssl ? SSL_get1_peer_certificate(c->ssl) : NULL;
    if (cert == NULL)
        return rp_err(RP_ENOTFOUND, "the connection presented no certificate");
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    char qualified[400];
    snprintf(qualified, sizeof qualified, "%s.%s", id->host_id, id->cluster ? id->cluster : "");
    int rv = rp_err(RP_ENOTFOUND, "no node name");
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans) && rv != 0; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        char name[256];
        if (g->type == GEN_DNS) {
            const ASN1_IA5STRING *s = g->d.dNSName;
            if (s->length <= 0 || (size_t)s->length >= sizeof name ||
                memchr(s->data, '\0', (size_t)s->length) != NULL)
                continue;
            memcpy(name, s->data, (size_t)s->length);
            name[s->length] = '\0';
        } else if (g->type == GEN_IPADD && g->d.iPAddress->length == 4) {
            /* join writes a node name that reads as an IPv4 address as one */
            if (inet_ntop(AF_INET, g->d.iPAddress->data, name, sizeof name) == NULL)
                continue;
        } else {
            continue;
        }
        if (strcmp(name, id->host_id) == 0 || strcmp(name, qualified) == 0)
            continue;
        rv = strlen(name) < n ? 0 : rp_err(RP_EINVAL, "node name too long");
        if (rv == 0)
            snprintf(out, n, "%s", name);
    }
    GENERAL_NAMES_free(sans);
    X509_free(cert);
    if (rv == RP_ENOTFOUND && strlen(id->host_id) < n) {
        snprintf(out, n, "%s", id->host_id);
        rv = 0;
    }
    return rv;
}

/* The caller's node name: from its certificate on this server, or as the follower
 * that forwarded the request read it from the certificate ("_as", auth/forward.c). */
static int caller_nodename(struct auth_req *r, char *out, size_t n)
{
    const msgpack_object *as = rp_mp_get(r->args, "_as");
    if (r->from_peer && as != NULL) {
        int rv = auth_arg_str(as, "nodename", out, n, true);
        if (rv != 0)
            return rp_err(RP_EUNAVAILABLE,
                          "the auth server that forwarded this request did not say the "
                          "caller's node name (an older version): retry on the leader");
        return 0;
    }
    return auth_conn_nodename(r->conn, r->caller, out, n);
}

int auth_h_renew_host(struct auth_req *r, struct rp_buf *out)
{
    struct auth_server *s = r->srv;
    const struct rp_identity *who = r->caller;
    const char *role = rp_system_role_name(who->system_role);
    char ssh_pub[8192], tls_pub[2048], nodename[256];
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    char *ssh_cert = NULL, *tls_pem = NULL, *ca_pem = NULL, *user_ca = NULL, *host_ca = NULL;
    int rv;
    if ((rv = auth_arg_str(r->args, "ssh_pubkey", ssh_pub, sizeof ssh_pub, true)) != 0 ||
        (rv = auth_arg_str(r->args, "tls_pubkey", tls_pub, sizeof tls_pub, true)) != 0)
        return rv;
    if ((rv = caller_nodename(r, nodename, sizeof nodename)) != 0)
        return rv;
    if ((rv = rp_tls_pubkey_spki(tls_pub, strlen(tls_pub), spki)) != 0)
        return rp_err(rv, "tls_pubkey: %s", rp_errmsg());
    /* What join issued, for the same host: the node name as the only subjectAltName,
     * long-lived identities (a removed host is cut off by a lock on its host id). */
    const char *sans[1] = {nodename};
    if ((rv = auth_issue_host_ssh(s, who->host_id, nodename, role, ssh_pub,
                                  rp_mp_get(r->args, "principals"), AUTH_HOST_SSH_TTL_MS, &ssh_cert,
                                  NULL, NULL)) != 0 ||
        (rv = auth_sign_host_identity(s, spki, who->host_id, role, sans, 1, AUTH_HOST_TTL_S,
                                      &tls_pem)) != 0 ||
        (rv = auth_ssh_ca_public_lines(s, &user_ca, &host_ca)) != 0)
        goto out;
    if ((ca_pem = strdup(s->id.ca_pem)) == NULL) {
        rv = rp_err(RP_ENOMEM, "CA PEM");
        goto out;
    }
    struct audit_event e;
    audit_event_init(&e, "cert.create", "TC000I");
    audit_event_str(&e, "user", who->host_id);
    audit_event_str(&e, "cert_type", "host");
    audit_event_str(&e, "identity", who->host_id);
    audit_event_str(&e, "nodename", nodename);
    audit_event_str(&e, "role", role);
    audit_event_str(&e, "reason", "renew_host");
    audit_event_str(&e, "addr.remote", r->remote);
    if ((rv = audit_emit(s, &e, AUDIT_WAIT)) != 0)
        goto out; /* no audit record, no certificate */
    msgpack_packer pk;
    struct rp_mp_map m;
    auth_reply_ok(&m, &pk, out);
    rp_mp_map_str(&m, "ssh_cert", ssh_cert);
    rp_mp_map_str(&m, "tls_cert", tls_pem);
    rp_mp_map_str(&m, "ca_cert", ca_pem);
    rp_mp_map_str(&m, "user_ca", user_ca);
    rp_mp_map_str(&m, "host_ca", host_ca);
    rp_mp_map_end(&m);
    rp_info("auth", "renewed the certificates of %s %s (%s) for %s", role, who->host_id, nodename,
            r->remote);
out:
    free(ssh_cert);
    free(tls_pem);
    free(ca_pem);
    free(user_ca);
    free(host_ca);
    return rv;
}
