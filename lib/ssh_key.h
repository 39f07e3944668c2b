/* lib/ssh_key.h: OpenSSH keys and signatures on top of OpenSSL EVP_PKEY.
 *
 * Keys stay EVP_PKEY objects everywhere in Raftport; this layer only knows how
 * OpenSSH writes them down:
 *   - the wire blob of a public key (RFC 4253 6.6, RFC 5656 3.1, RFC 8709 4):
 *     string type, then the type's fields;
 *   - the one-line form of authorized_keys and *.pub files: "TYPE BASE64 [comment]";
 *   - the SHA256 fingerprint exactly as `ssh-keygen -l` prints it;
 *   - the unencrypted "openssh-key-v1" private key file (PROTOCOL.key), for
 *     Ed25519 and ECDSA keys;
 *   - signature blobs: string algorithm, string signature.
 *
 * Supported key types: ssh-ed25519, ecdsa-sha2-nistp256/384/521 and ssh-rsa with a
 * modulus of at least 2048 bits (smaller RSA keys are refused everywhere). RSA keys
 * sign with rsa-sha2-256/512 only: SHA-1 "ssh-rsa" signatures are refused.
 *
 * Parsing is bounded (struct rp_rd) and strict: every length is checked, trailing
 * bytes are refused, and errors are RP_EINVAL with a message naming the field.
 * EVP_PKEY objects returned here are the caller's (EVP_PKEY_free); strings
 * returned through char ** are malloc'd (free). */
#ifndef RP_SSH_KEY_H
#define RP_SSH_KEY_H

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

enum rp_ssh_keytype {
    RP_SSH_KEY_ED25519 = 1,
    RP_SSH_KEY_ECDSA_P256,
    RP_SSH_KEY_ECDSA_P384,
    RP_SSH_KEY_ECDSA_P521,
    RP_SSH_KEY_RSA,
};

#define RP_SSH_RSA_MIN_BITS 2048
/* OpenSSH's own ceiling (SSHBUF_MAX_BIGNUM): bigger moduli only cost CPU. */
#define RP_SSH_RSA_MAX_BITS 16384
/* "SHA256:" + 43 characters of unpadded base64 + NUL fits. */
#define RP_SSH_FINGERPRINT_LEN 64

/* ---- key types ---------------------------------------------------------------------- */

/* Says which OpenSSH type @key is. RP_EINVAL for other algorithms, other curves and
 * RSA keys under RP_SSH_RSA_MIN_BITS bits. */
int rp_ssh_key_type(EVP_PKEY *key, enum rp_ssh_keytype *type);
/* "ssh-ed25519", "ecdsa-sha2-nistp256", ..., "ssh-rsa". */
const char *rp_ssh_key_type_name(enum rp_ssh_keytype type);
/* "ssh-ed25519-cert-v01@openssh.com", ... : the certificate type for keys of @type. */
const char *rp_ssh_key_cert_type_name(enum rp_ssh_keytype type);
/* Looks a wire type name up: plain key types set *is_cert = false, certificate types
 * true. RP_EINVAL naming @name if it is neither. */
int rp_ssh_key_type_from_name(const char *name, enum rp_ssh_keytype *type, bool *is_cert);

/* A fresh key of @type (RSA: 3072 bits) into *out. */
int rp_ssh_keygen(enum rp_ssh_keytype type, EVP_PKEY **out);

/* ---- wire primitives (RFC 4251 5), shared with lib/ssh_cert ------------------------- */

/* Append a uint32 length and the bytes. */
int rp_ssh_put_string(struct rp_buf *b, const void *p, size_t n);
int rp_ssh_put_cstring(struct rp_buf *b, const char *s);
/* Appends @bn (which must not be negative) as an mpint: big-endian, minimal, with a
 * leading zero byte when the top bit is set. */
int rp_ssh_put_mpint(struct rp_buf *b, const BIGNUM *bn);

/* Reads a string; *p borrows from @r's bytes. @what names the field in errors. */
int rp_ssh_get_string(struct rp_rd *r, const char *what, const uint8_t **p, size_t *n);
/* Reads a string into a malloc'd NUL-terminated copy; refuses embedded NUL bytes. */
int rp_ssh_get_cstring(struct rp_rd *r, const char *what, char **out);
/* Reads a positive or zero mpint of at most @max_bytes significant bytes; refuses
 * negative values and non-minimal encodings. *out is the caller's (BN_free). */
int rp_ssh_get_mpint(struct rp_rd *r, const char *what, size_t max_bytes, BIGNUM **out);

/* ---- public keys -------------------------------------------------------------------- */

/* Appends the fields that follow the type name in @key's blob (certificates embed the
 * subject key this way, after their nonce). */
int rp_ssh_key_put_fields(struct rp_buf *b, EVP_PKEY *key);
/* Reads the fields of a public key of @type (the inverse of rp_ssh_key_put_fields),
 * checking point validity and RSA sizes. */
int rp_ssh_key_get_fields(struct rp_rd *r, enum rp_ssh_keytype type, EVP_PKEY **out);

/* Appends @key's public key blob (string type + fields) to @out. */
int rp_ssh_pubkey_to_blob(EVP_PKEY *key, struct rp_buf *out);
/* Parses a public key blob; certificates and trailing bytes are refused. */
int rp_ssh_pubkey_from_blob(const uint8_t *p, size_t n, EVP_PKEY **out);
/* Checks a public key blob as rp_ssh_pubkey_from_blob does, without keeping a key:
 * for Ed25519 there is nothing to build (any 32 bytes are taken, as OpenSSL takes
 * them), so this costs nothing next to making an EVP_PKEY. */
int rp_ssh_pubkey_blob_check(const uint8_t *p, size_t n, enum rp_ssh_keytype *type);
/* rp_ssh_pubkey_parse, keeping the checked blob (malloc'd) instead of a key. */
int rp_ssh_pubkey_parse_blob(const char *line, uint8_t **blob, size_t *n,
                             enum rp_ssh_keytype *type);

/* "TYPE BASE64 comment" (no newline) for @key; @comment may be NULL or "". */
int rp_ssh_pubkey_format(EVP_PKEY *key, const char *comment, char **out);
/* Parses one authorized_keys-style line (no options prefix). *comment gets the
 * comment ("" if none) when @comment is not NULL. */
int rp_ssh_pubkey_parse(const char *line, EVP_PKEY **out, char **comment);

/* "SHA256:" + unpadded base64 of SHA-256(blob), as `ssh-keygen -l` prints it; @out
 * holds at least RP_SSH_FINGERPRINT_LEN bytes. */
int rp_ssh_fingerprint(EVP_PKEY *key, char *out, size_t outlen);

/* ---- the one-line form, shared by keys and certificates ----------------------------- */

/* "TYPE BASE64[ comment]" where TYPE is the first string inside @blob. */
int rp_ssh_line_format(const uint8_t *blob, size_t n, const char *comment, char **out);
/* Splits "TYPE BASE64 [comment]" (surrounding blanks and one trailing newline allowed),
 * decodes the base64 into *blob (malloc'd, *blob_len bytes) and checks that TYPE is
 * the type named inside the blob. *comment as for rp_ssh_pubkey_parse. */
int rp_ssh_line_split(const char *line, uint8_t **blob, size_t *blob_len, char **comment);

/* ---- private keys (PROTOCOL.key, "openssh-key-v1", cipher "none") ------------------ */

/* The whole "-----BEGIN OPENSSH PRIVATE KEY-----" text (with final newline) of an
 * Ed25519 or ECDSA private key, unencrypted, as `ssh-keygen -N ''` writes it. RSA is
 * refused. The caller writes it with mode 0600 (ssh refuses looser modes). */
int rp_ssh_privkey_format(EVP_PKEY *key, const char *comment, char **out);
/* Reads such a text back: one Ed25519 or ECDSA key, cipher "none". Encrypted keys,
 * RSA keys, corrupt check bytes or padding, and a public half that does not match
 * the private half are refused. *comment as for rp_ssh_pubkey_parse. */
int rp_ssh_privkey_parse(const char *text, size_t n, EVP_PKEY **out, char **comment);

/* ---- signatures --------------------------------------------------------------------- */

/* Signs @data with the private @key and appends the signature blob (string
 * algorithm, string signature) to @sig. @alg NULL picks the key's algorithm
 * (rsa-sha2-512 for RSA); for RSA it may be "rsa-sha2-256" or "rsa-sha2-512". */
int rp_ssh_sign(EVP_PKEY *key, const char *alg, const void *data, size_t n, struct rp_buf *sig);
/* Checks the signature blob @sig over @data against @key: 0 if it verifies,
 * RP_EDENIED if it does not, RP_EINVAL if the blob is malformed or its algorithm
 * does not belong to @key's type. */
int rp_ssh_verify(EVP_PKEY *key, const uint8_t *sig, size_t sig_len, const void *data, size_t n);

#endif
