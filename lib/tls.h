/* lib/tls.h: keys, the cluster TLS CA, X.509 identities and mutual-TLS contexts.
 *
 * Every internal connection is TLS 1.3 with both sides' certificates checked
 * against the cluster TLS CA. Keys are ECDSA P-256. An identity is encoded in
 * the certificate subject as Teleport does: CN = user or host id, O = roles, L =
 * logins; the cluster name sits in the private-arc attribute 1.3.9999.1.7 and
 * route-to-cluster in StreetAddress.
 *
 * A system identity (Admin, Auth, Node, Proxy) is marked by an X.509 extension of its
 * own, 1.3.9999.2.11, holding SEQUENCE { UTF8String role, UTF8String host_id }; it is
 * never read from O. A user chooses the names of its roles (they travel in O), so no
 * string in the subject can make a certificate a system identity: only the signer,
 * by adding the extension, can.
 *
 * Objects returned here are the caller's: EVP_PKEY_free / X509_free /
 * SSL_CTX_free / rp_identity_free them. */
#ifndef RP_TLS_H
#define RP_TLS_H

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stddef.h>

/* Display names of the system roles (also written to O of system certificates, as
 * Teleport does for host certificates; authorization never reads them from there). */
#define RP_ROLE_AUTH "Auth"
#define RP_ROLE_PROXY "Proxy"
#define RP_ROLE_NODE "Node"
#define RP_ROLE_ADMIN "Admin"

/* What a certificate's holder is, from the system-role extension alone. */
enum rp_system_role {
    RP_SYS_NONE = 0, /* a user: name, roles (O), logins (L) */
    RP_SYS_ADMIN,    /* an auth server's local administrator identity (tctl on that host) */
    RP_SYS_AUTH,     /* an auth server */
    RP_SYS_NODE,     /* a node agent */
    RP_SYS_PROXY,    /* a proxy */
};

struct rp_identity {
    char *name;    /* CN: user name or host id */
    char **groups; /* O: a user's roles (for system identities: display only) */
    size_t n_groups;
    char **logins; /* L: logins (users) */
    size_t n_logins;
    char *cluster;       /* 1.3.9999.1.7 extension: the issuing cluster, NULL if absent */
    char *route_cluster; /* StreetAddress: cluster to route to, NULL if absent */
    long long not_after; /* seconds since the epoch (filled by rp_identity_from_cert) */
    enum rp_system_role system_role; /* from the 1.3.9999.2.11 extension only */
    char *host_id;                   /* system identities: the host the identity belongs to */
};

void rp_identity_free(struct rp_identity *id);
/* True if @id carries @group in O. Only meaningful for user identities' roles. */
int rp_identity_has_group(const struct rp_identity *id, const char *group);
/* True if @id is not NULL and is the system identity @role. */
int rp_identity_is(const struct rp_identity *id, enum rp_system_role role);
/* "Admin", "Auth", "Node", "Proxy"; "" for RP_SYS_NONE. */
const char *rp_system_role_name(enum rp_system_role role);
/* The system role named exactly @name ("Auth"...), or RP_SYS_NONE. */
enum rp_system_role rp_system_role_from_name(const char *name);
/* Deep copy of @src into @dst (rp_identity_free it). RP_ENOMEM. */
int rp_identity_copy(struct rp_identity *dst, const struct rp_identity *src);

/* A fresh ECDSA P-256 key, or NULL (rp_errmsg says why). */
EVP_PKEY *rp_tls_keygen(void);

/* Self-signed CA for @cluster (CN = @cluster), valid 10 years. */
int rp_tls_ca_create(const char *cluster, EVP_PKEY **key_out, X509 **cert_out);

/* Signs a certificate for @pubkey (EC P-256; other keys are refused) carrying @id
 * (a system identity, @id->system_role set, must name its @id->host_id),
 * valid from one minute ago for @ttl_s seconds, with the given DNS names / IP
 * addresses as subjectAltName (either may be NULL). Usable for both TLS client and
 * server auth. The CA key must be the EC key of @ca_cert. Built by the same code as
 * rp_tls_issue_pem, then parsed into an X509, which in OpenSSL 3.0 costs several times
 * the building and signing (~150 us of public key decoder set-up): when the
 * certificate only goes on the wire, use rp_tls_issue_pem. */
int rp_tls_issue(EVP_PKEY *ca_key, X509 *ca_cert, EVP_PKEY *pubkey, const struct rp_identity *id,
                 const char *const *sans, size_t n_sans, long ttl_s, X509 **out);

/* Length of the DER SubjectPublicKeyInfo of a P-256 key (uncompressed point). */
#define RP_TLS_P256_SPKI_LEN 91

/* The same certificate as rp_tls_issue, for the P-256 key whose SubjectPublicKeyInfo
 * is @spki (@spki_len must be RP_TLS_P256_SPKI_LEN; take it from rp_tls_pubkey_spki,
 * which checks the point), written straight to *@pem_out as a malloc'd
 * "-----BEGIN CERTIFICATE-----" PEM string without building an X509: the cheap way to
 * issue when the certificate only goes on the wire. */
int rp_tls_issue_pem(EVP_PKEY *ca_key, X509 *ca_cert, const unsigned char *spki, size_t spki_len,
                     const struct rp_identity *id, const char *const *sans, size_t n_sans,
                     long ttl_s, char **pem_out);

/* Reads the identity back out of a certificate (the inverse of rp_tls_issue). */
int rp_identity_from_cert(X509 *cert, struct rp_identity *out);

/* "sha256:<64 hex>" of the CA's DER SubjectPublicKeyInfo into @out (>= 72 bytes). */
int rp_tls_ca_pin(X509 *ca, char *out, size_t outlen);

/* PEM files. Keys are written mode 0600 (write to a temp file, fsync, rename). */
int rp_tls_write_key(const char *path, EVP_PKEY *key);
int rp_tls_write_cert(const char *path, X509 *cert);
int rp_tls_read_key(const char *path, EVP_PKEY **out);
int rp_tls_read_cert(const char *path, X509 **out);

/* PEM in memory (for the wire). The *_to_pem return malloc'd NUL-terminated strings. */
int rp_tls_key_to_pem(EVP_PKEY *key, char **out);
int rp_tls_pubkey_to_pem(EVP_PKEY *key, char **out);
int rp_tls_cert_to_pem(X509 *cert, char **out);
int rp_tls_key_from_pem(const char *pem, size_t n, EVP_PKEY **out);
int rp_tls_pubkey_from_pem(const char *pem, size_t n, EVP_PKEY **out);
int rp_tls_cert_from_pem(const char *pem, size_t n, X509 **out);
/* The SubjectPublicKeyInfo DER of the P-256 public key in @pem, which must be exactly
 * one "PUBLIC KEY" block without headers (whitespace around it is allowed) holding a
 * named-curve key whose uncompressed point is on the curve. RP_EINVAL, saying what was
 * wrong, for anything else. Under half the cost of rp_tls_pubkey_from_pem: no EVP_PKEY. */
int rp_tls_pubkey_spki(const char *pem, size_t n, unsigned char spki[RP_TLS_P256_SPKI_LEN]);

/* TLS 1.3 only. The server context sends @cert with @ca as chain and asks for a
 * client certificate, which must chain to @ca when presented; with @require_client
 * a client without one fails the handshake. The client context verifies the
 * server against @ca (no host name check: identity is checked from the
 * certificate's subject by the caller) and presents @cert/@key when non-NULL. */
SSL_CTX *rp_tls_server_ctx(X509 *ca, X509 *cert, EVP_PKEY *key, int require_client);
SSL_CTX *rp_tls_client_ctx(X509 *ca, X509 *cert, EVP_PKEY *key);
/* A client context that checks nothing, for the one moment a joining server has only
 * a CA pin: the caller must then compare rp_tls_ca_pin() of the chain's CA with the pin
 * and verify the server certificate against that CA before sending anything secret. */
SSL_CTX *rp_tls_client_ctx_pinned(void);

/* For a connection made with rp_tls_client_ctx_pinned(): finds in the server's chain
 * the self-signed CA certificate whose rp_tls_ca_pin() equals @pin ("sha256:<hex>"),
 * checks that it is a CA, that the server's leaf certificate was issued and signed by
 * it, and that both are within their validity. On success *@ca_out (if non-NULL) is
 * the CA certificate (the caller's: X509_free it). RP_ETLS otherwise, with
 * "CA pin mismatch: server presented sha256:..., expected sha256:..." when no
 * certificate matches; RP_EINVAL for a malformed @pin. */
int rp_tls_check_pin(SSL *ssl, const char *pin, X509 **ca_out);

/* Identity of the peer of an established connection, or RP_EDENIED if it showed no
 * certificate or its certificate did not verify against the CA (so on a pinned,
 * unverified connection this refuses: read the leaf with rp_identity_from_cert after
 * rp_tls_check_pin instead). */
int rp_tls_peer_identity(SSL *ssl, struct rp_identity *out);

/* ---- tls_gather.c: records sent together -------------------------------------------- */

/* Ciphertext gathered for one send(). */
#define RP_TLS_GATHER_BYTES (64 * 1024)

/* Makes @ssl (set up on socket @fd by SSL_set_fd) seal its records into a buffer of
 * @bytes that goes out in one send() when it fills or at rp_tls_gather_push, instead of
 * one send() per record; the buffer is allocated only while records wait. With @bytes
 * 0 each record is sent at once. Either way the socket is written with MSG_NOSIGNAL: a
 * peer that vanished fails the write instead of raising SIGPIPE. 0 or RP_ENOMEM. */
int rp_tls_gather_writes(SSL *ssl, int fd, size_t bytes);
/* Sends what the socket takes of the gathered records: 1 all went, 0 the socket is full
 * (poll for writing and push again), -1 the connection failed (errno says why). Call it
 * after every burst of SSL_write. */
int rp_tls_gather_push(SSL *ssl);
/* Bytes gathered and not yet sent: while non-zero, wait for the socket to be writable. */
size_t rp_tls_gather_held(SSL *ssl);

#endif
