/* auth/pinned.c: one request to an auth server known only by its CA pin.
 *
 * Joining hosts (auth servers, node agents) hold a token and a pin, not the CA: they
 * dial without a client certificate, find the pinned CA in the chain the server
 * presents (rp_tls_check_pin) and send nothing until it is found. */
#include <stdio.h>
#include <string.h>

#include "auth/client.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/tls.h"

int auth_ctx_set_alpn(SSL_CTX *ctx, const char *alpn)
{
    unsigned char wire[256];
    size_t n = strlen(alpn);
    if (n == 0 || n > 255)
        return rp_err(RP_EINVAL, "ALPN protocol \"%s\": expected 1 to 255 bytes", alpn);
    wire[0] = (unsigned char)n;
    memcpy(wire + 1, alpn, n);
    /* OpenSSL's inverted convention: 0 is success. */
    if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)n + 1) != 0)
        return rp_err(RP_ETLS, "cannot offer ALPN protocol %s", alpn);
    return 0;
}

int auth_pinned_call(const char *addr, const char *pin, const void *req, size_t len, int timeout_ms,
                     struct rp_buf *frame, msgpack_unpacked *resp)
{
    return auth_pinned_call_alpn(addr, NULL, pin, req, len, timeout_ms, frame, resp);
}

int auth_pinned_call_alpn(const char *addr, const char *alpn, const char *pin, const void *req,
                          size_t len, int timeout_ms, struct rp_buf *frame, msgpack_unpacked *resp)
{
    SSL_CTX *ctx = rp_tls_client_ctx_pinned();
    struct rp_conn c;
    X509 *ca = NULL;
    int rv;
    msgpack_unpacked_init(resp);
    if (ctx == NULL)
        return rp_err(RP_ETLS, "TLS context: %s", rp_errmsg());
    if (alpn != NULL && (rv = auth_ctx_set_alpn(ctx, alpn)) != 0) {
        SSL_CTX_free(ctx);
        return rv;
    }
    rv = rp_conn_dial(&c, ctx, addr, timeout_ms < 3000 ? timeout_ms : 3000);
    SSL_CTX_free(ctx);
    if (rv != 0)
        return rp_err(RP_EUNAVAILABLE, "cannot reach auth server %s: %s", addr, rp_errmsg());
    /* Nothing (a token least of all) travels before the server proved it holds a
     * certificate of the CA the operator pinned. */
    rv = rp_tls_check_pin(c.ssl, pin, &ca);
    if (rv != 0) {
        rp_conn_close(&c);
        return rp_err(rv == RP_EINVAL ? RP_EINVAL : RP_ETLS, "auth server %s: %s", addr,
                      rp_errmsg());
    }
    X509_free(ca);
    rp_conn_set_timeout(&c, timeout_ms);
    rv = rp_conn_write_frame(&c, req, len);
    if (rv == 0)
        rv = rp_conn_read_frame(&c, frame);
    rp_conn_close(&c);
    if (rv != 0)
        return rp_err(RP_EUNAVAILABLE, "auth server %s: %s", addr, rp_errmsg());
    if ((rv = rp_mp_parse(frame->data, frame->len, resp)) != 0)
        return rp_err(RP_EPROTO, "auth server %s sent a malformed answer: %s", addr, rp_errmsg());
    bool ok = false;
    if (resp->data.type != MSGPACK_OBJECT_MAP || rp_mp_get_bool(&resp->data, "ok", &ok) != 0) {
        msgpack_unpacked_destroy(resp);
        msgpack_unpacked_init(resp);
        return rp_err(RP_EPROTO, "auth server %s answered without an \"ok\" field", addr);
    }
    if (!ok) {
        const char *code = "", *msg = "";
        size_t cn = 0, mn = 0;
        char cbuf[32];
        rp_mp_get_str(&resp->data, "code", &code, &cn);
        rp_mp_get_str(&resp->data, "error", &msg, &mn);
        snprintf(cbuf, sizeof cbuf, "%.*s", (int)cn, code);
        rv = rp_err(rp_error_from_name(cbuf), "%.*s", (int)mn, msg);
        msgpack_unpacked_destroy(resp);
        msgpack_unpacked_init(resp);
    }
    return rv;
}
