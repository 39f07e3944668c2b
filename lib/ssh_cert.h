/* lib/ssh_cert.h: OpenSSH certificates (PROTOCOL.certkeys), signed and checked.
 *
 * A certificate binds a subject public key to a type (user or host), a key id,
 * principals (logins for users, host names for hosts), a validity window, critical
 * options and extensions, under the signature of a CA key. Raftport's CAs are
 * Ed25519; ECDSA and RSA CAs are accepted too (RSA signs with rsa-sha2-512).
 *
 * Options and extensions are name/value lists. On the wire each value is either
 * empty or one string; the struct holds that inner string ("" when empty). OpenSSH
 * requires both lists in strict lexical (strcmp) order without repeated names:
 * rp_ssh_cert_sign sorts what it is given and refuses duplicates, and
 * rp_ssh_cert_parse refuses lists that break the rule.
 *
 * Trusting a certificate takes rp_ssh_cert_check (which verifies the signature
 * itself); parsing alone proves nothing about who signed it. Critical options are
 * the caller's to enforce: like sshd, refuse certificates carrying ones you do not
 * implement. */
#ifndef RP_SSH_CERT_H
#define RP_SSH_CERT_H

#include <openssl/evp.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"
#include "lib/ssh_key.h"

#define RP_SSH_CERT_USER 1
#define RP_SSH_CERT_HOST 2

/* valid_after = 0 and valid_before = RP_SSH_CERT_FOREVER: valid at every time. */
#define RP_SSH_CERT_FOREVER UINT64_MAX

/* OpenSSH critical options (user certificates). */
#define RP_SSH_OPT_FORCE_COMMAND "force-command"
#define RP_SSH_OPT_SOURCE_ADDRESS "source-address"

/* OpenSSH extensions of user certificates; their values are empty. */
#define RP_SSH_EXT_PERMIT_X11_FORWARDING "permit-X11-forwarding"
#define RP_SSH_EXT_PERMIT_AGENT_FORWARDING "permit-agent-forwarding"
#define RP_SSH_EXT_PERMIT_PORT_FORWARDING "permit-port-forwarding"
#define RP_SSH_EXT_PERMIT_PTY "permit-pty"
#define RP_SSH_EXT_PERMIT_USER_RC "permit-user-rc"

/* Teleport's extensions of user certificates (values: JSON roles and traits, the
 * cluster to route to). */
#define RP_SSH_EXT_TELEPORT_ROLES "teleport-roles"
#define RP_SSH_EXT_TELEPORT_TRAITS "teleport-traits"
#define RP_SSH_EXT_TELEPORT_ROUTE_TO_CLUSTER "teleport-route-to-cluster"

/* Teleport's extensions of host certificates (values: the system role, the cluster). */
#define RP_SSH_EXT_TELEPORT_ROLE "x-teleport-role"
#define RP_SSH_EXT_TELEPORT_AUTHORITY "x-teleport-authority"

/* OpenSSH's limit (SSHKEY_CERT_MAX_PRINCIPALS); we hold signing to it as well. */
#define RP_SSH_CERT_MAX_PRINCIPALS 256

struct rp_ssh_cert_opt {
    char *name;
    char *value; /* the inner string; "" when the option carries no data */
};

/* A certificate. To sign one, fill the fields marked "in" (pointers are only read);
 * rp_ssh_cert_parse fills every field with memory the struct owns, released by
 * rp_ssh_cert_free. */
struct rp_ssh_cert {
    uint32_t type;  /* in: RP_SSH_CERT_USER or RP_SSH_CERT_HOST */
    uint8_t *nonce; /* in: NULL = 32 fresh random bytes */
    size_t nonce_len;
    EVP_PKEY *key;           /* in: the subject public key, or: */
    const uint8_t *key_blob; /* in: its public blob, from rp_ssh_pubkey_blob_check */
    size_t key_blob_len;
    enum rp_ssh_keytype key_type; /* parse: the subject key's type */
    uint64_t serial;              /* in */
    char *key_id;                 /* in: NULL = "" */
    char **principals;            /* in */
    size_t n_principals;
    uint64_t valid_after;             /* in: seconds since the epoch; valid from this second on */
    uint64_t valid_before;            /* in: ... and up to, not including, this one */
    struct rp_ssh_cert_opt *critical; /* in: any order */
    size_t n_critical;
    struct rp_ssh_cert_opt *extensions; /* in: any order */
    size_t n_extensions;
    EVP_PKEY *signature_key; /* parse: the CA public key (ignored when signing) */

    /* parse: a copy of the blob, the length of its signed part (everything before the
     * signature), and where the signature blob lies in it. */
    uint8_t *blob;
    size_t blob_len;
    size_t signed_len;
    size_t sig_off;
    size_t sig_len;
};

/* Why rp_ssh_cert_check refused a certificate. */
enum rp_ssh_cert_verdict {
    RP_SSH_CERT_OK = 0,
    RP_SSH_CERT_WRONG_CA,      /* signature key is not the trusted CA */
    RP_SSH_CERT_BAD_SIGNATURE, /* signature does not verify */
    RP_SSH_CERT_WRONG_TYPE,    /* user certificate where a host one was wanted, or back */
    RP_SSH_CERT_NOT_YET_VALID, /* now < valid_after */
    RP_SSH_CERT_EXPIRED,       /* now >= valid_before */
    RP_SSH_CERT_PRINCIPAL_NOT_LISTED,
};

/* Signs @cert (see the "in" fields) with the private @ca key and appends the
 * certificate blob to @out. The certificate type follows the subject key
 * (ssh-ed25519-cert-v01@openssh.com for Ed25519 keys, ...). Refuses an unknown
 * type, valid_after >= valid_before, more than RP_SSH_CERT_MAX_PRINCIPALS
 * principals, empty or repeated option names. */
int rp_ssh_cert_sign(const struct rp_ssh_cert *cert, EVP_PKEY *ca, struct rp_buf *out);

/* The one-line form "ssh-ed25519-cert-v01@openssh.com BASE64[ comment]" of a
 * certificate blob (no newline), as *-cert.pub files and ssh-keygen hold it. */
int rp_ssh_cert_format(const uint8_t *blob, size_t n, const char *comment, char **out);

/* Parses a certificate blob into *out, checking every length and field: known
 * certificate key type, subject key, type 1 or 2, principals, options and extensions
 * (well formed, sorted, not repeated), the signature key (a plain key), and no bytes
 * after the signature. The signature is not verified here. On error *out is left
 * empty (nothing to free) and the message names the field. */
int rp_ssh_cert_parse(const uint8_t *blob, size_t n, struct rp_ssh_cert *out);
/* rp_ssh_cert_parse on the blob of a one-line form; *comment as in rp_ssh_pubkey_parse. */
int rp_ssh_cert_parse_line(const char *line, struct rp_ssh_cert *out, char **comment);

/* Verifies a parsed certificate's signature with its own signature key: 0, or
 * RP_EDENIED / RP_EINVAL as rp_ssh_verify. Says nothing about whether that key is
 * trusted: see rp_ssh_cert_check. */
int rp_ssh_cert_verify(const struct rp_ssh_cert *cert);

/* Decides whether the parsed @cert is acceptable: signed by @trusted_ca (and the
 * signature verifies), of type @want_type, valid at @now (seconds since the epoch:
 * valid_after <= now < valid_before, as OpenSSH), and, unless @principal is NULL,
 * listing @principal (a certificate without principals lists none). Returns 0, or
 * RP_EDENIED with a message saying why and *why (if not NULL) set accordingly. */
int rp_ssh_cert_check(const struct rp_ssh_cert *cert, EVP_PKEY *trusted_ca, uint32_t want_type,
                      uint64_t now, const char *principal, enum rp_ssh_cert_verdict *why);

/* The value of option @name in @opts, or NULL if absent. */
const char *rp_ssh_cert_opt_find(const struct rp_ssh_cert_opt *opts, size_t n, const char *name);

/* Releases what rp_ssh_cert_parse stored in @cert and zeroes it. */
void rp_ssh_cert_free(struct rp_ssh_cert *cert);

#endif
