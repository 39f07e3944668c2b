/* tsh/web.c: the proxy's web API (ISSUE12-DESIGN.md §4) as a client, over libcurl.
 *
 * Trust. With the system roots curl verifies the proxy as any HTTPS client does (chain
 * and host name). With the cluster CA (a profile's cas/<cluster>.pem, or --ca-pin on
 * the first contact) tsh verifies the chain itself, in an OpenSSL certificate callback
 * that curl lets us install: the CA is the only trust anchor, and the leaf must be a
 * Proxy identity of the cluster (the system-role extension), because the same CA
 * signs every node's certificate too and a node must not pass for the proxy. A proxy
 * configured with https_keypairs shows a certificate of a public CA instead: with a
 * profile's CA, tsh then falls back to the system roots with the host name checked.
 *
 * Answers are bounded (TSH_WEB_MAX_ANSWER) and decoded with jansson. */
#include <curl/curl.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/log.h"
#include "lib/tls.h"
#include "lib/version.h"
#include "tsh/tsh.h"

/* tsh ls of a large cluster: 10,000 nodes of ~2 KiB each fit. */
#define TSH_WEB_MAX_ANSWER (32u << 20)

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

void tsh_web_from_profile(struct tsh_web *w, const struct tsh_profile *p)
{
    memset(w, 0, sizeof *w);
    w->proxy = p->proxy;
    w->ca_path = p->ca_path;
    w->cert_path = p->x509_path;
    w->key_path = p->tls_key_path;
}

/* What one request carries through curl's callbacks. */
struct call {
    const struct tsh_web *w;
    struct rp_buf body;
    bool too_big;
    X509 *cluster_ca; /* from w->ca_path (the caller's copy; freed at the end) */
    char host[TSH_NAME_MAX];
    char verify_error[1024]; /* why our own verification refused the proxy */
};

static size_t on_body(char *p, size_t size, size_t n, void *arg)
{
    struct call *c = arg;
    size_t len = size * n;
    if (c->body.len + len > TSH_WEB_MAX_ANSWER) {
        c->too_big = true;
        return 0;
    }
    return rp_buf_append(&c->body, p, len) == 0 ? len : 0;
}

/* Verifies @leaf against @ca alone, with @chain as intermediates. */
static bool verify_with_ca(X509 *ca, X509 *leaf, STACK_OF(X509) * chain, char *why, size_t whylen)
{
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *sctx = X509_STORE_CTX_new();
    bool ok = false;
    if (store != NULL && sctx != NULL && X509_STORE_add_cert(store, ca) == 1 &&
        X509_STORE_CTX_init(sctx, store, leaf, chain) == 1) {
        X509_STORE_CTX_set_purpose(sctx, X509_PURPOSE_SSL_SERVER);
        ok = X509_verify_cert(sctx) == 1;
        if (!ok)
            snprintf(why, whylen, "%s",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(sctx)));
    } else {
        snprintf(why, whylen, "out of memory");
    }
    X509_STORE_CTX_free(sctx);
    X509_STORE_free(store);
    return ok;
}

/* The chain's certificate whose CA pin is @pin (not owned: it lives in @chain). */
static X509 *find_pinned(STACK_OF(X509) * chain, const char *pin, char *seen, size_t seenlen)
{
    seen[0] = '\0';
    for (int i = 0; chain != NULL && i < sk_X509_num(chain); i++) {
        char p[96];
        X509 *x = sk_X509_value(chain, i);
        if (rp_tls_ca_pin(x, p, sizeof p) != 0)
            continue;
        if (strcasecmp(p, pin) == 0)
            return x;
        if (X509_check_ca(x) > 0)
            snprintf(seen, seenlen, "%s", p);
    }
    return NULL;
}

/* OpenSSL's verification of the proxy's chain, replaced when tsh trusts the cluster CA
 * (see the top of the file). Returns 1 to accept. */
static int verify_proxy(X509_STORE_CTX *sctx, void *arg)
{
    struct call *c = arg;
    const struct tsh_web *w = c->w;
    X509 *leaf = X509_STORE_CTX_get0_cert(sctx);
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_untrusted(sctx);
    char why[256] = "";
    X509 *ca = c->cluster_ca;
    if (ca == NULL && w->ca_pin != NULL) {
        char seen[96];
        ca = find_pinned(chain, w->ca_pin, seen, sizeof seen);
        if (ca == NULL) {
            snprintf(c->verify_error, sizeof c->verify_error,
                     "the proxy's certificate chain holds no CA with pin %s%s%s: check the pin "
                     "with tctl status on an auth server",
                     w->ca_pin, seen[0] ? " (it holds " : "", seen[0] ? seen : "");
            if (seen[0])
                strncat(c->verify_error, ")", sizeof c->verify_error - strlen(c->verify_error) - 1);
            return 0;
        }
    }
    if (ca != NULL && leaf != NULL && verify_with_ca(ca, leaf, chain, why, sizeof why)) {
        struct rp_identity id;
        memset(&id, 0, sizeof id);
        bool proxy = rp_identity_from_cert(leaf, &id) == 0 && id.system_role == RP_SYS_PROXY;
        rp_identity_free(&id);
        if (proxy)
            return 1;
        snprintf(why, sizeof why, "its certificate is from the cluster CA but not a Proxy's");
    }
    if (c->cluster_ca != NULL) {
        /* A profile's CA: the proxy may show a public certificate (https_keypairs). */
        X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(sctx);
        X509_VERIFY_PARAM_set1_host(param, c->host, 0);
        if (X509_verify_cert(sctx) == 1)
            return 1;
        snprintf(c->verify_error, sizeof c->verify_error,
                 "the proxy's certificate verifies neither against the cluster CA of the profile "
                 "(%s) nor against the system roots for %s (%s): if the cluster was rebuilt, run "
                 "tsh logout, then tsh login with --ca-pin",
                 why[0] ? why : "no chain", c->host,
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(sctx)));
        return 0;
    }
    snprintf(c->verify_error, sizeof c->verify_error,
             "the proxy's certificate does not verify against the pinned cluster CA: %s", why);
    return 0;
}

static CURLcode on_ssl_ctx(CURL *curl, void *sslctx, void *arg)
{
    (void)curl;
    SSL_CTX *ctx = sslctx;
    /* curl was told not to verify (it would check against its own roots); the chain is
     * verified here instead, and a refusal must fail the handshake. */
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_cert_verify_callback(ctx, verify_proxy, arg);
    return CURLE_OK;
}

/* "host" of "host:port" or "[v6]:port". */
static void host_of(const char *proxy, char *out, size_t outlen)
{
    if (proxy[0] == '[') {
        const char *end = strchr(proxy, ']');
        size_t n = end ? (size_t)(end - proxy - 1) : 0;
        snprintf(out, outlen, "%.*s", (int)n, proxy + 1);
        return;
    }
    const char *colon = strrchr(proxy, ':');
    size_t n = colon ? (size_t)(colon - proxy) : strlen(proxy);
    snprintf(out, outlen, "%.*s", (int)n, proxy);
}

static int map_status(long status, const char *msg, const char *path, const char *retry_after)
{
    switch (status) {
    case 400:
    case 413:
        return rp_err(RP_EINVAL, "%s", msg);
    case 401:
    case 403:
        return rp_err(RP_EDENIED, "%s", msg);
    case 404:
        return rp_err(RP_ENOTFOUND, "%s", msg);
    case 429:
        return rp_err(RP_EBUSY, "%s (too many requests: try again in %s seconds)", msg,
                      retry_after[0] ? retry_after : "a few");
    case 503:
        return rp_err(RP_EUNAVAILABLE, "%s", msg);
    default:
        return rp_err(RP_EPROTO, "%s answered HTTP %ld: %s", path, status, msg);
    }
}

static size_t on_header(char *p, size_t size, size_t n, void *arg)
{
    char *retry = arg;
    size_t len = size * n;
    if (len > 12 && strncasecmp(p, "Retry-After:", 12) == 0) {
        size_t i = 12;
        while (i < len && p[i] == ' ')
            i++;
        size_t m = 0;
        while (i < len && m < 15 && p[i] >= '0' && p[i] <= '9')
            retry[m++] = p[i++];
        retry[m] = '\0';
    }
    return len;
}

int tsh_web_call(const struct tsh_web *w, const char *method, const char *path, json_t *body,
                 json_t **answer, long *status_out)
{
    struct call c;
    char url[TSH_PATH_MAX], errbuf[CURL_ERROR_SIZE] = "", hdr[64], retry[16] = "";
    char *sent = NULL;
    struct curl_slist *headers = NULL;
    long status = 0;
    int rv;
    *answer = NULL;
    if (status_out != NULL)
        *status_out = 0;
    memset(&c, 0, sizeof c);
    c.w = w;
    rp_buf_init(&c.body);
    host_of(w->proxy, c.host, sizeof c.host);
    pthread_once(&curl_once, curl_init_once);
    if (snprintf(url, sizeof url, "https://%s%s", w->proxy, path) >= (int)sizeof url)
        return rp_err(RP_EINVAL, "URL too long for %s", path);
    if (w->ca_path != NULL && rp_tls_read_cert(w->ca_path, &c.cluster_ca) != 0)
        return rp_err(RP_EINVAL, "%s: run tsh login again", rp_errmsg());

    CURL *curl = curl_easy_init();
    if (curl == NULL) {
        X509_free(c.cluster_ca);
        return rp_err(RP_ENOMEM, "libcurl: cannot start a request");
    }
    long timeout = w->timeout_ms > 0 ? w->timeout_ms : 15000;
    /* Ping goes without our version, so that the proxy answers whatever it is and tsh
     * can warn as Teleport's does; every other request carries it and the proxy
     * applies its rule (ISSUE12-DESIGN.md §4). */
    if (strcmp(path, "/webapi/ping") != 0) {
        snprintf(hdr, sizeof hdr, "X-Raftport-Version: %s", rp_version_self());
        headers = curl_slist_append(headers, hdr);
    }
    headers = curl_slist_append(headers, "Accept: application/json");
    if (body != NULL) {
        sent = json_dumps(body, JSON_COMPACT);
        headers = curl_slist_append(headers, "Content-Type: application/json");
    }
    curl_easy_setopt(curl, CURLOPT_URL, url);
    curl_easy_setopt(curl, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(curl, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    curl_easy_setopt(curl, CURLOPT_PROTOCOLS_STR, "https");
    curl_easy_setopt(curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(curl, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(curl, CURLOPT_CONNECTTIMEOUT_MS, timeout < 5000 ? timeout : 5000L);
    curl_easy_setopt(curl, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(curl, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(curl, CURLOPT_WRITEDATA, &c);
    curl_easy_setopt(curl, CURLOPT_HEADERFUNCTION, on_header);
    curl_easy_setopt(curl, CURLOPT_HEADERDATA, retry);
    curl_easy_setopt(curl, CURLOPT_USERAGENT, "tsh/" RP_VERSION);
    if (sent != NULL) {
        curl_easy_setopt(curl, CURLOPT_POSTFIELDS, sent);
        curl_easy_setopt(curl, CURLOPT_POSTFIELDSIZE, (long)strlen(sent));
    }
    if (w->cert_path != NULL && w->key_path != NULL) {
        curl_easy_setopt(curl, CURLOPT_SSLCERT, w->cert_path);
        curl_easy_setopt(curl, CURLOPT_SSLKEY, w->key_path);
    }
    if (c.cluster_ca != NULL || w->ca_pin != NULL) {
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
        curl_easy_setopt(curl, CURLOPT_SSL_CTX_FUNCTION, on_ssl_ctx);
        curl_easy_setopt(curl, CURLOPT_SSL_CTX_DATA, &c);
    } else if (w->insecure) {
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYPEER, 0L);
        curl_easy_setopt(curl, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    rp_debug("tsh", "%s %s", method, url);
    CURLcode res = curl_easy_perform(curl);
    curl_easy_getinfo(curl, CURLINFO_RESPONSE_CODE, &status);
    if (status_out != NULL)
        *status_out = status;

    if (res != CURLE_OK) {
        if (c.verify_error[0] != '\0')
            rv = rp_err(RP_ETLS, "%s", c.verify_error);
        else if (res == CURLE_PEER_FAILED_VERIFICATION || res == CURLE_SSL_CACERT_BADFILE)
            rv = rp_err(RP_ETLS,
                        "the proxy %s is not trusted: %s; pass --ca-pin=sha256:... (the cluster "
                        "CA pin that tctl status prints) or, for a test cluster, --insecure",
                        w->proxy, errbuf[0] ? errbuf : curl_easy_strerror(res));
        else if (c.too_big)
            rv = rp_err(RP_ETOOBIG, "the proxy's answer to %s exceeds %u MiB", path,
                        TSH_WEB_MAX_ANSWER >> 20);
        else if (res == CURLE_COULDNT_CONNECT || res == CURLE_COULDNT_RESOLVE_HOST ||
                 res == CURLE_OPERATION_TIMEDOUT)
            rv = rp_err(RP_EUNAVAILABLE, "cannot reach the proxy at %s: %s; check --proxy",
                        w->proxy, errbuf[0] ? errbuf : curl_easy_strerror(res));
        else if (res == CURLE_SSL_CONNECT_ERROR)
            rv = rp_err(RP_ETLS, "TLS with the proxy at %s failed: %s", w->proxy,
                        errbuf[0] ? errbuf : curl_easy_strerror(res));
        else
            rv = rp_err(RP_EUNAVAILABLE, "request to the proxy at %s failed: %s", w->proxy,
                        errbuf[0] ? errbuf : curl_easy_strerror(res));
        goto out;
    }
    json_error_t jerr;
    json_t *doc =
        c.body.len > 0 ? json_loadb((const char *)c.body.data, c.body.len, 0, &jerr) : NULL;
    if (status >= 200 && status < 300) {
        if (doc == NULL) {
            rv = rp_err(RP_EPROTO, "the proxy's answer to %s %s is not JSON%s%s", method, path,
                        c.body.len > 0 ? ": " : "", c.body.len > 0 ? jerr.text : "");
            goto out;
        }
        *answer = doc;
        rv = 0;
        goto out;
    }
    const char *msg = NULL;
    json_t *e = json_object_get(doc, "error");
    if (json_is_object(e))
        msg = json_string_value(json_object_get(e, "message"));
    else if (json_is_string(e))
        msg = json_string_value(e);
    char fallback[160];
    if (msg == NULL) {
        snprintf(fallback, sizeof fallback, "HTTP %ld from %s %s", status, method, path);
        msg = fallback;
    }
    rv = map_status(status, msg, path, retry);
    json_decref(doc);
out:
    if (sent != NULL)
        OPENSSL_cleanse(sent, strlen(sent)); /* it may hold a password */
    free(sent);
    curl_slist_free_all(headers);
    curl_easy_cleanup(curl);
    X509_free(c.cluster_ca);
    rp_buf_free(&c.body);
    return rv;
}

static void copy_str(json_t *obj, const char *key, char *out, size_t outlen)
{
    const char *s = json_string_value(json_object_get(obj, key));
    snprintf(out, outlen, "%s", s != NULL ? s : "");
}

int tsh_web_ping(const struct tsh_web *w, struct tsh_ping *out)
{
    json_t *a = NULL;
    memset(out, 0, sizeof *out);
    int rv = tsh_web_call(w, "GET", "/webapi/ping", NULL, &a, NULL);
    if (rv != 0)
        return rv;
    copy_str(a, "cluster_name", out->cluster_name, sizeof out->cluster_name);
    copy_str(a, "server_version", out->server_version, sizeof out->server_version);
    copy_str(a, "min_client_version", out->min_client_version, sizeof out->min_client_version);
    json_t *auth = json_object_get(a, "auth");
    copy_str(auth, "type", out->auth_type, sizeof out->auth_type);
    copy_str(auth, "second_factor", out->second_factor, sizeof out->second_factor);
    json_t *proxy = json_object_get(a, "proxy");
    json_t *ssh = json_object_get(proxy, "ssh");
    copy_str(ssh, "listen_addr", out->ssh_listen_addr, sizeof out->ssh_listen_addr);
    copy_str(ssh, "ssh_public_addr", out->ssh_public_addr, sizeof out->ssh_public_addr);
    copy_str(ssh, "tunnel_listen_addr", out->tunnel_listen_addr, sizeof out->tunnel_listen_addr);
    copy_str(ssh, "public_addr", out->public_addr, sizeof out->public_addr);
    out->tls_routing_enabled = json_is_true(json_object_get(proxy, "tls_routing_enabled"));
    json_decref(a);
    if (out->cluster_name[0] == '\0' || out->server_version[0] == '\0')
        return rp_err(RP_EPROTO,
                      "the proxy at %s answered /webapi/ping without cluster_name or "
                      "server_version: is it a Raftport proxy?",
                      w->proxy);
    if (out->second_factor[0] == '\0')
        snprintf(out->second_factor, sizeof out->second_factor, "off");
    return 0;
}

bool tsh_version_warning(const char *client, const char *server, const char *min_client, char *out,
                         size_t outlen)
{
    struct rp_version c, s, m;
    out[0] = '\0';
    if (rp_version_parse(client, &c) != 0 || rp_version_parse(server, &s) != 0)
        return false;
    char min_buf[32];
    if (min_client == NULL || min_client[0] == '\0' || rp_version_parse(min_client, &m) != 0) {
        rp_version_min_client(server, min_buf, sizeof min_buf);
        min_client = min_buf;
        if (rp_version_parse(min_client, &m) != 0)
            return false;
    }
    bool too_old = c.major < m.major || (c.major == m.major && c.minor < m.minor) ||
                   (c.major == m.major && c.minor == m.minor && c.patch < m.patch);
    if (too_old) {
        snprintf(out, outlen,
                 "WARNING\n"
                 "Detected potentially incompatible client and server versions.\n"
                 "Minimum client version supported by the server is %s but you are using %s.\n"
                 "Please upgrade tsh to %s or newer or use the --skip-version-check flag to "
                 "bypass this check.\n"
                 "Future versions of tsh will fail when incompatible versions are detected.\n",
                 min_client, client, min_client);
        return true;
    }
    if (c.major > s.major) {
        char max[32];
        snprintf(max, sizeof max, "%u.x.x", s.major);
        snprintf(out, outlen,
                 "WARNING\n"
                 "Detected potentially incompatible client and server versions.\n"
                 "Maximum client version supported by the server is %s but you are using %s.\n"
                 "Please downgrade tsh to %s or use the --skip-version-check flag to bypass "
                 "this check.\n"
                 "Future versions of tsh will fail when incompatible versions are detected.\n",
                 max, client, max);
        return true;
    }
    return false;
}
