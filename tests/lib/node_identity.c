/* tests/lib/node_identity.c: see node_identity.h. */
#include "tests/lib/node_identity.h"

#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/tls.h"
#include "tests/lib/cluster.h"

struct auth_client *cl_node_identity_client(int via, const char *host_id)
{
    char token[128];
    cl_add_token(via, "node", NULL, token, sizeof token);
    EVP_PKEY *key = rp_tls_keygen();
    cr_assert_not_null(key, "%s", rp_errmsg());
    char *pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(key, &pub), 0, "%s", rp_errmsg());

    struct rp_buf req, ans;
    msgpack_packer pk;
    struct rp_mp_map m;
    msgpack_unpacked u;
    rp_buf_init(&req);
    rp_buf_init(&ans);
    rp_mp_packer_init(&pk, &req);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_str(&m, "m", "join");
    rp_mp_map_str(&m, "token", token);
    rp_mp_map_str(&m, "type", "node");
    rp_mp_map_str(&m, "host_id", host_id);
    rp_mp_map_str(&m, "nodename", host_id);
    rp_mp_map_str(&m, "host_pubkey", pub);
    rp_mp_map_end(&m);
    node_call_anon(via, &req, &ans, &u);
    bool ok = false;
    rp_mp_get_bool(&u.data, "ok", &ok);
    char err[256];
    cr_assert(ok, "join as node %s: %s", host_id, cl_mp_str(&u.data, "error", err, sizeof err));
    const char *cert_pem, *ca_pem;
    size_t cert_n, ca_n;
    cr_assert_eq(rp_mp_get_str(&u.data, "host_cert", &cert_pem, &cert_n), 0);
    cr_assert_eq(rp_mp_get_str(&u.data, "ca_cert", &ca_pem, &ca_n), 0);
    X509 *cert = NULL, *ca = NULL;
    cr_assert_eq(rp_tls_cert_from_pem(cert_pem, cert_n, &cert), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_cert_from_pem(ca_pem, ca_n, &ca), 0, "%s", rp_errmsg());
    SSL_CTX *ctx = rp_tls_client_ctx(ca, cert, key);
    cr_assert_not_null(ctx);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&req);
    rp_buf_free(&ans);
    free(pub);
    X509_free(cert);
    X509_free(ca);
    EVP_PKEY_free(key);

    const char *addrs[CL_MAX_NODES];
    size_t n = 0;
    for (int i = 1; i <= CL_MAX_NODES; i++)
        if (CL->nodes[i].used && CL->nodes[i].pid != 0)
            addrs[n++] = CL->nodes[i].api_addr;
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, ctx, addrs, n), 0, "%s", rp_errmsg());
    SSL_CTX_free(ctx);
    auth_client_set_timeout(c, 20000);
    return c;
}
