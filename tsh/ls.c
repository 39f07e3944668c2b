/* tsh/ls.c: tsh ls, the nodes the user may reach, from the proxy's GET /webapi/nodes
 * (already filtered by the user's roles and locks), further filtered by labels. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "tsh/tsh.h"

#define TUNNEL_ADDR "\xE2\x9F\xB5 Tunnel" /* "⟵ Tunnel", as Teleport shows it */

int tsh_label_filter_parse(const char *arg, struct tsh_label_filter *f)
{
    const char *p = arg;
    while (*p != '\0') {
        size_t len = strcspn(p, ",");
        const char *eq = memchr(p, '=', len);
        if (eq == NULL || eq == p)
            return rp_err(RP_EINVAL, "label filter '%.*s': expected KEY=VALUE", (int)len, p);
        size_t klen = (size_t)(eq - p), vlen = len - klen - 1;
        if (klen >= TSH_NAME_MAX || vlen >= TSH_NAME_MAX)
            return rp_err(RP_EINVAL, "label filter '%.*s...': keys and values are at most %d bytes",
                          20, p, TSH_NAME_MAX - 1);
        if (f->n == TSH_MAX_LABEL_FILTERS)
            return rp_err(RP_EINVAL, "at most %d label filters", TSH_MAX_LABEL_FILTERS);
        memcpy(f->keys[f->n], p, klen);
        f->keys[f->n][klen] = '\0';
        memcpy(f->values[f->n], eq + 1, vlen);
        f->values[f->n][vlen] = '\0';
        f->n++;
        p += len;
        if (*p == ',') {
            p++;
            if (*p == '\0')
                return rp_err(RP_EINVAL, "label filter '%s' ends with ','", arg);
        }
    }
    if (arg[0] == '\0')
        return rp_err(RP_EINVAL, "empty label filter: expected KEY=VALUE[,KEY=VALUE...]");
    return 0;
}

bool tsh_labels_match(const struct tsh_label_filter *f, json_t *labels)
{
    for (size_t i = 0; i < f->n; i++) {
        const char *v = json_string_value(json_object_get(labels, f->keys[i]));
        if (v == NULL || strcmp(v, f->values[i]) != 0)
            return false;
    }
    return true;
}

/* Columns on a terminal: UTF-8 continuation bytes take none. */
static size_t display_width(const char *s)
{
    size_t w = 0;
    for (; *s; s++)
        w += ((unsigned char)*s & 0xC0) != 0x80;
    return w;
}

static void pad(struct rp_buf *b, const char *s, size_t width)
{
    rp_buf_append_str(b, s);
    for (size_t w = display_width(s); w < width; w++)
        rp_buf_append_str(b, " ");
}

/* "k=v,k2=v2", keys sorted (jansson keeps insertion order otherwise). */
static void labels_text(json_t *labels, struct rp_buf *out)
{
    const char *keys[256];
    size_t n = 0;
    const char *k;
    json_t *v;
    json_object_foreach(labels, k, v)
    {
        if (n < 256 && json_is_string(v))
            keys[n++] = k;
    }
    for (size_t i = 1; i < n; i++) {
        for (size_t j = i; j > 0 && strcmp(keys[j - 1], keys[j]) > 0; j--) {
            const char *t = keys[j];
            keys[j] = keys[j - 1];
            keys[j - 1] = t;
        }
    }
    for (size_t i = 0; i < n; i++)
        rp_buf_printf(out, "%s%s=%s", i ? "," : "", keys[i],
                      json_string_value(json_object_get(labels, keys[i])));
    rp_buf_append(out, "", 1);
}

static int by_hostname(const void *a, const void *b)
{
    json_t *const *x = a, *const *y = b;
    const char *hx = json_string_value(json_object_get(*x, "hostname"));
    const char *hy = json_string_value(json_object_get(*y, "hostname"));
    int c = strcmp(hx ? hx : "", hy ? hy : "");
    if (c != 0)
        return c;
    const char *ix = json_string_value(json_object_get(*x, "id"));
    const char *iy = json_string_value(json_object_get(*y, "id"));
    return strcmp(ix ? ix : "", iy ? iy : "");
}

enum { O_FORMAT = 256 };
enum ls_format { LS_TEXT, LS_JSON, LS_NAMES };

int tsh_cmd_ls(int argc, char **argv, const struct tsh_globals *gin)
{
    static const struct option own[] = {
        {"format", required_argument, NULL, O_FORMAT},
        {NULL, 0, NULL, 0},
    };
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    struct tsh_label_filter filter = {0};
    char **args;
    int c, nargs, rv;
    enum ls_format format = LS_TEXT;
    tsh_flags_init(&f, &g, argc, argv, own, "f:", false);
    while ((c = tsh_flags_next(&f)) > 0) {
        if (strcmp(optarg, "text") == 0)
            format = LS_TEXT;
        else if (strcmp(optarg, "json") == 0)
            format = LS_JSON;
        else if (strcmp(optarg, "names") == 0)
            format = LS_NAMES;
        else
            return tsh_usage_error(&f, "--format=%s: expected text, json or names", optarg);
    }
    if ((rv = tsh_flags_done(&f, c, 0, -1, &args, &nargs)) >= 0)
        return rv;
    for (int i = 0; i < nargs; i++) {
        if (tsh_label_filter_parse(args[i], &filter) != 0)
            return tsh_usage_error(&f, "%s", rp_errmsg());
    }
    struct tsh_profile p;
    if ((rv = tsh_require_profile(&g, f.label, &p)) != 0)
        return rv;
    struct tsh_web w;
    json_t *a = NULL;
    tsh_web_from_profile(&w, &p);
    if ((rv = tsh_web_call(&w, "GET", "/webapi/nodes", NULL, &a, NULL)) != 0) {
        fprintf(stderr, "tsh ls: %s\n", rp_errmsg());
        return 1;
    }
    json_t *items = json_object_get(a, "items");
    if (!json_is_array(items)) {
        fprintf(stderr, "tsh ls: the proxy's answer has no items list\n");
        json_decref(a);
        return 1;
    }
    size_t n = 0, i;
    json_t *it;
    json_t **nodes = calloc(json_array_size(items) + 1, sizeof *nodes);
    if (nodes == NULL) {
        json_decref(a);
        fprintf(stderr, "tsh ls: out of memory\n");
        return 1;
    }
    json_array_foreach(items, i, it)
    {
        if (json_is_object(it) && tsh_labels_match(&filter, json_object_get(it, "labels")))
            nodes[n++] = it;
    }
    qsort(nodes, n, sizeof *nodes, by_hostname);

    struct rp_buf out;
    rp_buf_init(&out);
    if (format == LS_JSON) {
        json_t *arr = json_array();
        for (i = 0; i < n; i++)
            json_array_append(arr, nodes[i]);
        char *text = json_dumps(arr, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
        rp_buf_printf(&out, "%s\n", text ? text : "[]");
        free(text);
        json_decref(arr);
    } else if (format == LS_NAMES) {
        for (i = 0; i < n; i++) {
            const char *h = json_string_value(json_object_get(nodes[i], "hostname"));
            rp_buf_printf(&out, "%s\n", h ? h : "");
        }
    } else {
        /* Two passes: widths first, so the columns line up as Teleport's do. */
        struct rp_buf *labels = calloc(n + 1, sizeof *labels);
        size_t wn = strlen("Node Name"), wa = strlen("Address");
        for (i = 0; labels != NULL && i < n; i++) {
            const char *h = json_string_value(json_object_get(nodes[i], "hostname"));
            const char *ad = json_string_value(json_object_get(nodes[i], "addr"));
            bool tunnel = json_is_true(json_object_get(nodes[i], "tunnel")) || !ad || !ad[0];
            size_t hw = display_width(h ? h : ""), aw = display_width(tunnel ? TUNNEL_ADDR : ad);
            wn = hw > wn ? hw : wn;
            wa = aw > wa ? aw : wa;
            rp_buf_init(&labels[i]);
            labels_text(json_object_get(nodes[i], "labels"), &labels[i]);
        }
        pad(&out, "Node Name", wn + 1);
        pad(&out, "Address", wa + 1);
        rp_buf_append_str(&out, "Labels\n");
        for (size_t k = 0; k < wn; k++)
            rp_buf_append_str(&out, "-");
        rp_buf_append_str(&out, " ");
        for (size_t k = 0; k < wa; k++)
            rp_buf_append_str(&out, "-");
        rp_buf_append_str(&out, " ------\n");
        for (i = 0; labels != NULL && i < n; i++) {
            const char *h = json_string_value(json_object_get(nodes[i], "hostname"));
            const char *ad = json_string_value(json_object_get(nodes[i], "addr"));
            bool tunnel = json_is_true(json_object_get(nodes[i], "tunnel")) || !ad || !ad[0];
            pad(&out, h ? h : "", wn + 1);
            pad(&out, tunnel ? TUNNEL_ADDR : ad, wa + 1);
            rp_buf_printf(&out, "%s\n", labels[i].data ? (char *)labels[i].data : "");
            rp_buf_free(&labels[i]);
        }
        free(labels);
    }
    if (out.len > 0)
        fwrite(out.data, 1, out.len, stdout);
    rp_buf_free(&out);
    free(nodes);
    json_decref(a);
    return 0;
}
