/* tests/test_tls.c: the cluster CA, issued identities, pins, PEM files and the
 * mutual-TLS contexts, over real TLS on 127.0.0.1. */
#include <criterion/criterion.h>
#include <limits.h>
#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/conn.h"
#include "lib/errors.h"
#include "lib/tls.h"
#include "lib/util.h"

/* ---- helpers ----------------------------------------------------------------------- */

struct pki {
    EVP_PKEY *ca_key;
    X509 *ca;
};

static void pki_new(struct pki *p, const char *cluster)
{
    cr_assert_eq(rp_tls_ca_create(cluster, &p->ca_key, &p->ca), 0, "%s", rp_errmsg());
}

static void pki_free(struct pki *p)
{
    EVP_PKEY_free(p->ca_key);
    X509_free(p->ca);
}

/* A user identity with every field set, for the round-trip tests. */
static char *alice_groups[] = {"admin", "dev", "auditor"};
static char *alice_logins[] = {"root", "ubuntu", "élodie"};

static struct rp_identity alice_identity(void)
{
    return (struct rp_identity){.name = "alice@example.com",
                                .groups = alice_groups,
                                .n_groups = 3,
                                .logins = alice_logins,
                                .n_logins = 3,
                                .cluster = "example.com",
                                .route_cluster = "leaf.example.com"};
}

/* @got, read back from a certificate, is alice_identity() field for field. */
static void assert_is_alice(const struct rp_identity *got)
{
    cr_assert_str_eq(got->name, "alice@example.com");
    cr_assert_eq(got->n_groups, 3);
    cr_assert_eq(got->n_logins, 3);
    for (size_t i = 0; i < 3; i++) {
        cr_assert_str_eq(got->groups[i], alice_groups[i]);
        cr_assert_str_eq(got->logins[i], alice_logins[i]);
    }
    cr_assert_str_eq(got->cluster, "example.com");
    cr_assert_str_eq(got->route_cluster, "leaf.example.com");
}

/* A key and a certificate for @name with system role @role, from @p. */
static void pki_issue(struct pki *p, const char *name, const char *role, EVP_PKEY **key,
                      X509 **cert)
{
    char *groups[] = {(char *)role};
    struct rp_identity id = {.name = (char *)name,
                             .groups = groups,
                             .n_groups = 1,
                             .cluster = "example.com",
                             .system_role = rp_system_role_from_name(role)};
    if (id.system_role != RP_SYS_NONE)
        id.host_id = (char *)name;
    const char *sans[] = {"localhost", "127.0.0.1"};
    *key = rp_tls_keygen();
    cr_assert_not_null(*key, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_issue(p->ca_key, p->ca, *key, &id, sans, 2, 3600, cert), 0, "%s",
                 rp_errmsg());
}

/* One TLS server connection on 127.0.0.1:<free port>, accepted in a thread. */
struct server {
    int lfd;
    char addr[64];
    SSL_CTX *ctx;
    pthread_t th;
    int accept_rv;
    char accept_err[512];
    int id_rv;
    struct rp_identity id;
    int echo; /* read one frame and send it back */
};

static void *server_main(void *arg)
{
    struct server *s = arg;
    struct pollfd p = {.fd = s->lfd, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) {
        s->accept_rv = RP_ETIMEDOUT;
        return NULL;
    }
    int fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
    if (fd < 0) {
        s->accept_rv = RP_EIO;
        return NULL;
    }
    struct rp_conn c;
    s->accept_rv = rp_conn_accept(&c, s->ctx, fd, 5000);
    snprintf(s->accept_err, sizeof s->accept_err, "%s", rp_errmsg());
    if (s->accept_rv == 0) {
        s->id_rv = rp_tls_peer_identity(c.ssl, &s->id);
        if (s->echo) {
            struct rp_buf b;
            rp_buf_init(&b);
            rp_conn_set_timeout(&c, 5000);
            if (rp_conn_read_frame(&c, &b) == 0)
                rp_conn_write_frame(&c, b.data, b.len);
            rp_buf_free(&b);
        }
    }
    rp_conn_close(&c);
    return NULL;
}

static void server_start(struct server *s, SSL_CTX *ctx, int echo)
{
    memset(s, 0, sizeof *s);
    s->ctx = ctx;
    s->echo = echo;
    s->lfd = rp_listen_tcp("127.0.0.1:0", 16);
    cr_assert_geq(s->lfd, 0, "%s", rp_errmsg());
    cr_assert_eq(rp_sock_local_addr(s->lfd, s->addr, sizeof s->addr), 0);
    cr_assert_eq(pthread_create(&s->th, NULL, server_main, s), 0);
}

static void server_join(struct server *s)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    cr_assert_eq(pthread_timedjoin_np(s->th, NULL, &ts), 0, "server thread did not finish");
    close(s->lfd);
    rp_identity_free(&s->id);
}

/* Dials @s with @ctx, sends one frame, expects it back; returns the first error. */
static int client_roundtrip(struct server *s, SSL_CTX *ctx)
{
    struct rp_conn c;
    int rv = rp_conn_dial(&c, ctx, s->addr, 5000);
    if (rv != 0)
        return rv;
    rp_conn_set_timeout(&c, 5000);
    struct rp_buf b;
    rp_buf_init(&b);
    rv = rp_conn_write_frame(&c, "ping", 4);
    if (rv == 0)
        rv = rp_conn_read_frame(&c, &b);
    if (rv == 0 && (b.len != 4 || memcmp(b.data, "ping", 4) != 0))
        rv = RP_EPROTO;
    rp_buf_free(&b);
    rp_conn_close(&c);
    return rv;
}

/* Runs @cmd in a shell and returns the first line of its output. */
static void run_capture(const char *cmd, char *out, size_t outlen)
{
    FILE *f = popen(cmd, "r");
    cr_assert_not_null(f);
    out[0] = '\0';
    if (fgets(out, (int)outlen, f) == NULL)
        out[0] = '\0';
    cr_assert_eq(pclose(f), 0, "command failed: %s", cmd);
    out[strcspn(out, "\n")] = '\0';
}

static void tmpdir(char *out, size_t outlen)
{
    snprintf(out, outlen, "/tmp/rp_test_tls.XXXXXX");
    cr_assert_not_null(mkdtemp(out));
}

static void rmtree(const char *dir)
{
    char cmd[512];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

/* ---- CA and issuance --------------------------------------------------------------- */

Test(tls, ca_is_self_signed_ca_for_cluster)
{
    struct pki p;
    pki_new(&p, "example.com");
    cr_assert_eq(X509_check_ca(p.ca), 1);
    cr_assert_eq(X509_self_signed(p.ca, 1), 1);
    cr_assert_eq(X509_check_private_key(p.ca, p.ca_key), 1);
    cr_assert_eq(X509_get_version(p.ca), X509_VERSION_3);

    char buf[256];
    X509_NAME *n = X509_get_subject_name(p.ca);
    cr_assert_gt(X509_NAME_get_text_by_NID(n, NID_commonName, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "example.com");
    cr_assert_gt(X509_NAME_get_text_by_NID(n, NID_organizationName, buf, sizeof buf), 0);
    cr_assert_str_eq(buf, "example.com");

    /* keyCertSign + cRLSign, basicConstraints critical, an SKID. */
    cr_assert_eq(X509_get_key_usage(p.ca) & (KU_KEY_CERT_SIGN | KU_CRL_SIGN),
                 KU_KEY_CERT_SIGN | KU_CRL_SIGN);
    int crit = -1;
    BASIC_CONSTRAINTS *bc = X509_get_ext_d2i(p.ca, NID_basic_constraints, &crit, NULL);
    cr_assert_not_null(bc);
    cr_assert(bc->ca);
    cr_assert_eq(crit, 1);
    BASIC_CONSTRAINTS_free(bc);
    cr_assert_not_null(X509_get0_subject_key_id(p.ca));

    /* ~10 years, 128-bit serial. */
    int days = 0, secs = 0;
    cr_assert(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(p.ca), X509_get0_notAfter(p.ca)));
    cr_assert(days >= 3650 && days <= 3670, "CA valid for %d days", days);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(p.ca), NULL);
    cr_assert(BN_num_bits(bn) <= 128 && !BN_is_zero(bn) && !BN_is_negative(bn));
    BN_free(bn);

    /* Two CAs never share a serial or a key. */
    struct pki q;
    pki_new(&q, "example.com");
    cr_assert_neq(ASN1_INTEGER_cmp(X509_get0_serialNumber(p.ca), X509_get0_serialNumber(q.ca)), 0);
    cr_assert_neq(EVP_PKEY_eq(p.ca_key, q.ca_key), 1);
    pki_free(&q);
    pki_free(&p);
}

Test(tls, ca_create_refuses_bad_cluster_name)
{
    EVP_PKEY *k = NULL;
    X509 *x = NULL;
    cr_assert_eq(rp_tls_ca_create("", &k, &x), RP_EINVAL);
    cr_assert_eq(rp_tls_ca_create("bad\nname", &k, &x), RP_EINVAL);
    cr_assert_null(k);
    cr_assert_null(x);
}

Test(tls, issued_identity_round_trips)
{
    struct pki p;
    pki_new(&p, "example.com");
    struct rp_identity id = alice_identity();
    const char *sans[] = {"auth.example.com", "127.0.0.1", "::1"};
    EVP_PKEY *k = rp_tls_keygen();
    X509 *x = NULL;
    time_t before = time(NULL);
    cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, k, &id, sans, 3, 7200, &x), 0, "%s", rp_errmsg());

    struct rp_identity got;
    cr_assert_eq(rp_identity_from_cert(x, &got), 0, "%s", rp_errmsg());
    assert_is_alice(&got);
    cr_assert(got.not_after >= before + 7200 && got.not_after <= time(NULL) + 7200,
              "not_after %lld", got.not_after);
    cr_assert(rp_identity_has_group(&got, "dev"));
    cr_assert_not(rp_identity_has_group(&got, "Dev"));
    rp_identity_free(&got);
    cr_assert_null(got.name);

    /* The cluster is a subject attribute under 1.3.9999.1.7, as a UTF8String. */
    ASN1_OBJECT *oid = OBJ_txt2obj("1.3.9999.1.7", 1);
    X509_NAME *n = X509_get_subject_name(x);
    int at = X509_NAME_get_index_by_OBJ(n, oid, -1);
    cr_assert_geq(at, 0);
    cr_assert_eq(ASN1_STRING_type(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(n, at))),
                 V_ASN1_UTF8STRING);
    ASN1_OBJECT_free(oid);

    /* Issued by the CA, leaf, usable for both TLS ends, SANs as given. */
    cr_assert_eq(X509_verify(x, p.ca_key), 1);
    cr_assert_eq(X509_check_issued(p.ca, x), X509_V_OK);
    cr_assert_eq(X509_check_ca(x), 0);
    cr_assert_eq(X509_get_extended_key_usage(x) & (XKU_SSL_SERVER | XKU_SSL_CLIENT),
                 XKU_SSL_SERVER | XKU_SSL_CLIENT);
    cr_assert(X509_get_key_usage(x) & KU_DIGITAL_SIGNATURE);
    cr_assert_not_null(X509_get0_authority_key_id(x));
    cr_assert_eq(X509_check_host(x, "auth.example.com", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    cr_assert_eq(X509_check_ip_asc(x, "::1", 0), 1);
    cr_assert_neq(X509_check_host(x, "127.0.0.1", 0, 0, NULL), 1);
    int days = 0, secs = 0;
    cr_assert(ASN1_TIME_diff(&days, &secs, X509_get0_notBefore(x), X509_get0_notAfter(x)));
    cr_assert_eq(days * 86400 + secs, 7200 + 60);

    /* And it chains to the CA in a store holding only the CA. */
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, p.ca);
    X509_STORE_CTX *sc = X509_STORE_CTX_new();
    X509_STORE_CTX_init(sc, st, x, NULL);
    X509_STORE_CTX_set_purpose(sc, X509_PURPOSE_SSL_CLIENT);
    cr_assert_eq(X509_verify_cert(sc), 1, "%s",
                 X509_verify_cert_error_string(X509_STORE_CTX_get_error(sc)));
    X509_STORE_CTX_free(sc);
    X509_STORE_free(st);

    X509_free(x);
    EVP_PKEY_free(k);
    pki_free(&p);
}

Test(tls, identity_without_optional_fields_reads_back_null)
{
    struct pki p;
    pki_new(&p, "example.com");
    struct rp_identity id = {.name = "host-1"};
    EVP_PKEY *k = rp_tls_keygen();
    X509 *x = NULL;
    cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, k, &id, NULL, 0, 60, &x), 0, "%s", rp_errmsg());
    struct rp_identity got;
    cr_assert_eq(rp_identity_from_cert(x, &got), 0, "%s", rp_errmsg());
    cr_assert_str_eq(got.name, "host-1");
    cr_assert_eq(got.n_groups, 0);
    cr_assert_eq(got.n_logins, 0);
    cr_assert_null(got.cluster);
    cr_assert_null(got.route_cluster);
    rp_identity_free(&got);
    X509_free(x);
    EVP_PKEY_free(k);
    pki_free(&p);
}

Test(tls, issue_refuses_what_it_could_not_read_back)
{
    struct pki p;
    pki_new(&p, "example.com");
    EVP_PKEY *k = rp_tls_keygen();
    X509 *x = NULL;
    char *bad_group[] = {"ok", "with\ttab"};
    char *empty_login[] = {""};
    struct rp_identity ids[] = {
        {.name = NULL},
        {.name = ""},
        {.name = "line\nbreak"},
        {.name = "bad\xff utf8"},
        {.name = "x", .groups = bad_group, .n_groups = 2},
        {.name = "x", .logins = empty_login, .n_logins = 1},
        {.name = "x", .cluster = "c\x7f"},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, k, &ids[i], NULL, 0, 60, &x), RP_EINVAL,
                     "identity %zu accepted", i);
        cr_assert_null(x);
    }
    struct rp_identity ok = {.name = "x"};
    const char *bad_san[] = {"host name"};
    cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, k, &ok, bad_san, 1, 60, &x), RP_EINVAL);
    cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, k, &ok, NULL, 0, 0, &x), RP_EINVAL);
    /* A CA key that is not the CA certificate's. */
    cr_assert_eq(rp_tls_issue(k, p.ca, k, &ok, NULL, 0, 60, &x), RP_EINVAL);
    cr_assert_null(x);
    EVP_PKEY_free(k);
    pki_free(&p);
}

/* A certificate signed by @p whose subject has one entry @nid = @v (@n bytes, @type). */
static X509 *crafted_cert(struct pki *p, int nid, int type, const char *v, int n)
{
    X509 *x = X509_new();
    X509_set_version(x, X509_VERSION_3);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_NAME *name = X509_get_subject_name(x);
    if (nid != NID_commonName)
        X509_NAME_add_entry_by_NID(name, NID_commonName, MBSTRING_UTF8, (unsigned char *)"ok", -1,
                                   -1, 0);
    X509_NAME_ENTRY *e = X509_NAME_ENTRY_create_by_NID(NULL, nid, type, (unsigned char *)v, n);
    cr_assert_not_null(e);
    cr_assert(X509_NAME_add_entry(name, e, -1, 0), "nid %d type %d n %d: %s", nid, type, n,
              ERR_error_string(ERR_peek_last_error(), NULL));
    X509_NAME_ENTRY_free(e);
    X509_set_issuer_name(x, X509_get_subject_name(p->ca));
    X509_gmtime_adj(X509_getm_notBefore(x), 0);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, p->ca_key);
    cr_assert_gt(X509_sign(x, p->ca_key, EVP_sha256()), 0, "nid %d type %d n %d: %s", nid, type, n,
                 ERR_error_string(ERR_peek_last_error(), NULL));
    return x;
}

Test(tls, identity_parsing_refuses_hostile_subjects)
{
    struct pki p;
    pki_new(&p, "example.com");
    char longname[400];
    memset(longname, 'a', sizeof longname);
    struct {
        int nid, type;
        const char *v;
        int n;
        const char *why;
    } cases[] = {
        {NID_commonName, V_ASN1_UTF8STRING, "adm\0in", 6, "NUL in CN"},
        {NID_commonName, V_ASN1_UTF8STRING, "adm\nin", 6, "newline in CN"},
        {NID_organizationName, V_ASN1_UTF8STRING, "adm\0in", 6, "NUL in O"},
        {NID_localityName, V_ASN1_UTF8STRING, "ro\x1bot", 5, "escape in L"},
        {NID_commonName, V_ASN1_UTF8STRING, longname, (int)sizeof longname, "400-byte CN"},
        /* (Malformed UTF-8 never gets this far: OpenSSL will not encode or decode a
         * name holding it.) A C1 control character is well-formed but refused. */
        {NID_commonName, V_ASN1_UTF8STRING, "nel\xc2\x85x", 6, "C1 control in CN"},
        {NID_commonName, V_ASN1_BMPSTRING, "\0a\0d\0m\0i\0n", 10, "CN as BMPString"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        X509 *x = crafted_cert(&p, cases[i].nid, cases[i].type, cases[i].v, cases[i].n);
        struct rp_identity got;
        memset(&got, 0xa5, sizeof got);
        int rv = rp_identity_from_cert(x, &got);
        cr_assert_eq(rv, RP_EINVAL, "%s accepted", cases[i].why);
        cr_assert_neq(strlen(rp_errmsg()), 0);
        X509_free(x);
    }

    /* Two CNs are ambiguous: refused. */
    X509 *x = crafted_cert(&p, NID_organizationName, MBSTRING_UTF8, "admin", -1);
    X509_NAME_add_entry_by_NID(X509_get_subject_name(x), NID_commonName, MBSTRING_UTF8,
                               (unsigned char *)"root", -1, -1, 0);
    struct rp_identity got;
    cr_assert_eq(rp_identity_from_cert(x, &got), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "more than one CN") != NULL, "%s", rp_errmsg());
    X509_free(x);

    /* No CN at all. */
    x = X509_new();
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    cr_assert_eq(rp_identity_from_cert(x, &got), RP_EINVAL);
    X509_free(x);
    pki_free(&p);
}

/* Issuing and parsing from many threads at once with one shared CA. */
struct issuer {
    struct pki *p;
    int n;
    int rv;
};

static void *issuer_main(void *arg)
{
    struct issuer *is = arg;
    for (int i = 0; i < 20 && is->rv == 0; i++) {
        char name[32];
        snprintf(name, sizeof name, "host-%d-%d", is->n, i);
        char *groups[] = {"Node"};
        struct rp_identity id = {.name = name, .groups = groups, .n_groups = 1, .cluster = "c"};
        EVP_PKEY *k = rp_tls_keygen();
        X509 *x = NULL;
        struct rp_identity got;
        is->rv = rp_tls_issue(is->p->ca_key, is->p->ca, k, &id, NULL, 0, 60, &x);
        if (is->rv == 0)
            is->rv = rp_identity_from_cert(x, &got);
        if (is->rv == 0) {
            if (strcmp(got.name, name) != 0 || strcmp(got.cluster, "c") != 0)
                is->rv = RP_EPROTO;
            rp_identity_free(&got);
        }
        X509_free(x);
        EVP_PKEY_free(k);
    }
    return NULL;
}

Test(tls, issue_and_parse_from_many_threads, .timeout = 60)
{
    struct pki p;
    pki_new(&p, "example.com");
    pthread_t th[8];
    struct issuer is[8];
    for (int i = 0; i < 8; i++) {
        is[i] = (struct issuer){.p = &p, .n = i};
        cr_assert_eq(pthread_create(&th[i], NULL, issuer_main, &is[i]), 0);
    }
    for (int i = 0; i < 8; i++) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 30;
        cr_assert_eq(pthread_timedjoin_np(th[i], NULL, &ts), 0);
        cr_assert_eq(is[i].rv, 0, "thread %d: %d", i, is[i].rv);
    }
    pki_free(&p);
}

/* ---- certificates written as DER (rp_tls_issue_pem) ------------------------------------ */

/* The P-256 SubjectPublicKeyInfo of @k, through rp_tls_pubkey_spki as a server gets it. */
static void spki_of(EVP_PKEY *k, unsigned char spki[RP_TLS_P256_SPKI_LEN])
{
    char *pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &pub), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_pubkey_spki(pub, strlen(pub), spki), 0, "%s", rp_errmsg());
    free(pub);
}

/* rp_tls_issue_pem for @k, parsed back; the PEM goes to *@pem_out when non-NULL. */
static X509 *issue_pem_x509(struct pki *p, EVP_PKEY *k, const struct rp_identity *id,
                            const char *const *sans, size_t n_sans, long ttl_s, char **pem_out)
{
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    char *pem = NULL;
    X509 *x = NULL;
    spki_of(k, spki);
    cr_assert_eq(
        rp_tls_issue_pem(p->ca_key, p->ca, spki, sizeof spki, id, sans, n_sans, ttl_s, &pem), 0,
        "%s", rp_errmsg());
    cr_assert_eq(rp_tls_cert_from_pem(pem, strlen(pem), &x), 0, "%s", rp_errmsg());
    if (pem_out != NULL)
        *pem_out = pem;
    else
        free(pem);
    return x;
}

/* The TBSCertificate of @x, as the DER it was signed over. */
static void tbs_of(X509 *x, unsigned char **out, size_t *outlen)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    cr_assert_gt(n, 0);
    const unsigned char *p = der, *tbs;
    long len;
    int tag, cls;
    cr_assert_eq(ASN1_get_object(&p, &len, &tag, &cls, n) & 0x80, 0);
    tbs = p;
    cr_assert_eq(ASN1_get_object(&p, &len, &tag, &cls, n - (p - der)) & 0x80, 0);
    *outlen = (size_t)(p - tbs) + (size_t)len;
    *out = malloc(*outlen);
    memcpy(*out, tbs, *outlen);
    OPENSSL_free(der);
}

static void ext_conf(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    cr_assert_not_null(e, "%s", value);
    cr_assert(X509_add_ext(x, e, -1));
    X509_EXTENSION_free(e);
}

/* The certificate rp_tls_issue built with OpenSSL's objects before it wrote DER itself,
 * with @got's serial and validity, so that the two TBSCertificates must be equal. */
static X509 *openssl_built(struct pki *p, X509 *got, EVP_PKEY *k, const struct rp_identity *id,
                           const char *san_conf)
{
    X509 *r = X509_new();
    cr_assert(X509_set_version(r, X509_VERSION_3));
    cr_assert(X509_set_serialNumber(r, (ASN1_INTEGER *)X509_get0_serialNumber(got)));
    cr_assert(X509_set_issuer_name(r, X509_get_subject_name(p->ca)));
    cr_assert(X509_set1_notBefore(r, X509_get0_notBefore(got)));
    cr_assert(X509_set1_notAfter(r, X509_get0_notAfter(got)));
    X509_NAME *n = X509_get_subject_name(r);
    const unsigned char *u = (const unsigned char *)id->name;
    cr_assert(X509_NAME_add_entry_by_NID(n, NID_commonName, MBSTRING_UTF8, u, -1, -1, 0));
    for (size_t i = 0; i < id->n_groups; i++)
        cr_assert(X509_NAME_add_entry_by_NID(n, NID_organizationName, MBSTRING_UTF8,
                                             (const unsigned char *)id->groups[i], -1, -1, 0));
    for (size_t i = 0; i < id->n_logins; i++)
        cr_assert(X509_NAME_add_entry_by_NID(n, NID_localityName, MBSTRING_UTF8,
                                             (const unsigned char *)id->logins[i], -1, -1, 0));
    if (id->route_cluster)
        cr_assert(X509_NAME_add_entry_by_NID(n, NID_streetAddress, MBSTRING_UTF8,
                                             (const unsigned char *)id->route_cluster, -1, -1, 0));
    if (id->cluster) {
        ASN1_OBJECT *oid = OBJ_txt2obj("1.3.9999.1.7", 1);
        cr_assert(X509_NAME_add_entry_by_OBJ(n, oid, MBSTRING_UTF8,
                                             (const unsigned char *)id->cluster, -1, -1, 0));
        ASN1_OBJECT_free(oid);
    }
    cr_assert(X509_set_pubkey(r, k));
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, p->ca, r, NULL, NULL, 0);
    ext_conf(r, &ctx, NID_basic_constraints, "critical,CA:FALSE");
    ext_conf(r, &ctx, NID_key_usage, "critical,digitalSignature,keyAgreement");
    ext_conf(r, &ctx, NID_ext_key_usage, "serverAuth,clientAuth");
    ext_conf(r, &ctx, NID_authority_key_identifier, "keyid:always");
    if (san_conf != NULL)
        ext_conf(r, &ctx, NID_subject_alt_name, san_conf);
    cr_assert_gt(X509_sign(r, p->ca_key, EVP_sha256()), 0);
    return r;
}

Test(tls, der_certificate_is_byte_identical_to_openssl_built_one)
{
    struct pki p;
    pki_new(&p, "example.com");
    char *groups[] = {"admin", "dev"};
    char *logins[] = {"root", "élodie"};
    struct rp_identity full = {.name = "alice@example.com",
                               .groups = groups,
                               .n_groups = 2,
                               .logins = logins,
                               .n_logins = 2,
                               .cluster = "example.com",
                               .route_cluster = "leaf.example.com"};
    struct rp_identity bare = {.name = "host-1"};
    const char *sans[] = {"auth.example.com", "127.0.0.1", "::1", "*.nodes.example.com"};
    const char *san_conf = "DNS:auth.example.com,IP:127.0.0.1,IP:::1,DNS:*.nodes.example.com";
    struct {
        const struct rp_identity *id;
        const char *const *sans;
        size_t n_sans;
        const char *san_conf;
        long ttl;
    } cases[] = {
        {&full, sans, 4, san_conf, 3600},
        {&bare, NULL, 0, NULL, 60},
        {&full, NULL, 0, NULL, 40L * 366 * 86400}, /* GeneralizedTime notAfter */
    };
    EVP_PKEY *k = rp_tls_keygen();
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        /* Both builders' way in: the PEM one and rp_tls_issue. */
        for (int via_x509 = 0; via_x509 < 2; via_x509++) {
            X509 *got = NULL;
            if (via_x509)
                cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, k, cases[c].id, cases[c].sans,
                                          cases[c].n_sans, cases[c].ttl, &got),
                             0, "%s", rp_errmsg());
            else
                got = issue_pem_x509(&p, k, cases[c].id, cases[c].sans, cases[c].n_sans,
                                     cases[c].ttl, NULL);
            X509 *ref = openssl_built(&p, got, k, cases[c].id, cases[c].san_conf);
            unsigned char *a, *b;
            size_t an, bn;
            tbs_of(got, &a, &an);
            tbs_of(ref, &b, &bn);
            cr_assert_eq(an, bn, "case %zu: TBS of %zu bytes, OpenSSL's %zu", c, an, bn);
            cr_assert_eq(memcmp(a, b, an), 0, "case %zu (via X509 %d): TBS differs", c, via_x509);
            /* And OpenSSL re-encodes what it parsed to the same bytes: canonical DER. */
            unsigned char *re = NULL;
            int rn = i2d_re_X509_tbs(got, &re);
            cr_assert_eq((size_t)rn, an);
            cr_assert_eq(memcmp(re, a, an), 0);
            OPENSSL_free(re);
            free(a);
            free(b);
            X509_free(ref);
            X509_free(got);
        }
    }
    EVP_PKEY_free(k);
    pki_free(&p);
}

static long long asn1_time_epoch(const ASN1_TIME *t)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    cr_assert(ASN1_TIME_to_tm(t, &tm));
    return (long long)timegm(&tm);
}

Test(tls, der_certificate_round_trips_identity_sans_and_validity)
{
    struct pki p;
    pki_new(&p, "example.com");
    struct rp_identity id = alice_identity();
    const char *sans[] = {"auth.example.com", "10.1.2.3", "2001:db8::7"};
    EVP_PKEY *k = rp_tls_keygen();
    char *pem = NULL;
    long long before = (long long)time(NULL);
    X509 *x = issue_pem_x509(&p, k, &id, sans, 3, 7200, &pem);
    long long after = (long long)time(NULL);

    /* PEM as OpenSSL writes it: the same bytes as PEM_write_bio_X509 of the parsed copy. */
    char *again = NULL;
    cr_assert_eq(rp_tls_cert_to_pem(x, &again), 0);
    cr_assert_str_eq(pem, again);
    cr_assert_eq(strncmp(pem, "-----BEGIN CERTIFICATE-----\n", 28), 0);
    free(again);

    cr_assert_eq(X509_get_version(x), X509_VERSION_3);
    cr_assert_eq(X509_verify(x, p.ca_key), 1);
    cr_assert_eq(X509_check_issued(p.ca, x), X509_V_OK);
    cr_assert_eq(EVP_PKEY_eq(X509_get0_pubkey(x), k), 1);
    cr_assert_eq(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
    cr_assert_eq(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(p.ca)), 0);

    struct rp_identity got;
    cr_assert_eq(rp_identity_from_cert(x, &got), 0, "%s", rp_errmsg());
    assert_is_alice(&got);
    rp_identity_free(&got);

    /* Exactly the SANs given, in order: DNS as IA5String, IPs as 4 and 16 octets. */
    GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    cr_assert_not_null(gens);
    cr_assert_eq(sk_GENERAL_NAME_num(gens), 3);
    GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, 0);
    cr_assert_eq(g->type, GEN_DNS);
    cr_assert_str_eq((const char *)ASN1_STRING_get0_data(g->d.dNSName), "auth.example.com");
    g = sk_GENERAL_NAME_value(gens, 1);
    cr_assert_eq(g->type, GEN_IPADD);
    cr_assert_eq(ASN1_STRING_length(g->d.iPAddress), 4);
    cr_assert_eq(memcmp(ASN1_STRING_get0_data(g->d.iPAddress), "\x0a\x01\x02\x03", 4), 0);
    g = sk_GENERAL_NAME_value(gens, 2);
    cr_assert_eq(g->type, GEN_IPADD);
    cr_assert_eq(ASN1_STRING_length(g->d.iPAddress), 16);
    cr_assert_eq(memcmp(ASN1_STRING_get0_data(g->d.iPAddress),
                        "\x20\x01\x0d\xb8\0\0\0\0\0\0\0\0\0\0\0\x07", 16),
                 0);
    GENERAL_NAMES_free(gens);
    cr_assert_eq(X509_check_host(x, "auth.example.com", 0, 0, NULL), 1);
    cr_assert_eq(X509_check_ip_asc(x, "10.1.2.3", 0), 1);
    cr_assert_eq(X509_check_ip_asc(x, "2001:db8::7", 0), 1);

    /* Extensions: leaf, both TLS ends, the CA's key id. */
    cr_assert_eq(X509_check_ca(x), 0);
    cr_assert_eq(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT);
    cr_assert_eq(X509_get_extended_key_usage(x), XKU_SSL_SERVER | XKU_SSL_CLIENT);
    cr_assert_eq(
        ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(x), X509_get0_subject_key_id(p.ca)), 0);

    /* Valid from a minute before issuance for the ttl, as UTCTime. */
    long long nb = asn1_time_epoch(X509_get0_notBefore(x));
    long long na = asn1_time_epoch(X509_get0_notAfter(x));
    cr_assert(nb >= before - 60 && nb <= after - 60, "notBefore %lld, issued %lld..%lld", nb,
              before, after);
    cr_assert_eq(na - nb, 7200 + 60);
    cr_assert_eq(ASN1_STRING_type(X509_get0_notBefore(x)), V_ASN1_UTCTIME);
    cr_assert_eq(ASN1_STRING_type(X509_get0_notAfter(x)), V_ASN1_UTCTIME);

    /* It chains to the CA for both purposes. */
    int purposes[] = {X509_PURPOSE_SSL_CLIENT, X509_PURPOSE_SSL_SERVER};
    for (int i = 0; i < 2; i++) {
        X509_STORE *st = X509_STORE_new();
        X509_STORE_add_cert(st, p.ca);
        X509_STORE_CTX *sc = X509_STORE_CTX_new();
        X509_STORE_CTX_init(sc, st, x, NULL);
        X509_STORE_CTX_set_purpose(sc, purposes[i]);
        cr_assert_eq(X509_verify_cert(sc), 1, "%s",
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(sc)));
        X509_STORE_CTX_free(sc);
        X509_STORE_free(st);
    }
    free(pem);
    X509_free(x);
    EVP_PKEY_free(k);
    pki_free(&p);
}

/* The serial's DER content octets in @x's TBSCertificate. */
static void serial_octets(X509 *x, unsigned char *out, size_t *n)
{
    unsigned char *tbs;
    size_t tn;
    tbs_of(x, &tbs, &tn);
    const unsigned char *p = tbs;
    long len;
    int tag, cls;
    cr_assert_eq(ASN1_get_object(&p, &len, &tag, &cls, (long)tn) & 0x80, 0); /* TBS */
    cr_assert_eq(memcmp(p, "\xa0\x03\x02\x01\x02", 5), 0);                   /* v3 */
    p += 5;
    cr_assert_eq(*p, V_ASN1_INTEGER);
    cr_assert_eq(ASN1_get_object(&p, &len, &tag, &cls, (long)tn - (p - tbs)) & 0x80, 0);
    cr_assert(len >= 1 && len <= 17, "serial of %ld octets", len);
    memcpy(out, p, (size_t)len);
    *n = (size_t)len;
    free(tbs);
}

Test(tls, der_certificate_serials_are_random_positive_minimal)
{
    struct pki p;
    pki_new(&p, "example.com");
    struct rp_identity id = {.name = "host-1"};
    EVP_PKEY *k = rp_tls_keygen();
    enum { N = 64 };
    unsigned char serials[N][17];
    size_t lens[N];
    int padded = 0;
    for (int i = 0; i < N; i++) {
        X509 *x = issue_pem_x509(&p, k, &id, NULL, 0, 60, NULL);
        serial_octets(x, serials[i], &lens[i]);
        /* Minimal DER: a leading 0x00 only before a set top bit, none otherwise. */
        if (serials[i][0] == 0) {
            cr_assert(lens[i] >= 2 && (serials[i][1] & 0x80), "non-minimal serial");
            padded++;
        } else {
            cr_assert_eq(serials[i][0] & 0x80, 0, "negative serial");
            cr_assert_leq(lens[i], 16);
        }
        BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
        cr_assert(!BN_is_zero(bn) && !BN_is_negative(bn) && BN_num_bits(bn) <= 128);
        BN_free(bn);
        for (int j = 0; j < i; j++)
            cr_assert(lens[i] != lens[j] || memcmp(serials[i], serials[j], lens[i]) != 0,
                      "serials %d and %d are equal", i, j);
        X509_free(x);
    }
    /* Half of all 128-bit serials have the top bit set: 64 without one is 2^-64. */
    cr_assert_gt(padded, 0);
    EVP_PKEY_free(k);
    pki_free(&p);
}

/* Seconds from now until @y-@mo-@d @h:00:00 UTC. */
static long ttl_until(int y, int mo, int d, int h)
{
    struct tm tm = {.tm_year = y - 1900, .tm_mon = mo - 1, .tm_mday = d, .tm_hour = h};
    return (long)(timegm(&tm) - time(NULL));
}

Test(tls, der_certificate_past_2049_uses_generalized_time)
{
    struct pki p;
    pki_new(&p, "example.com");
    struct rp_identity id = {.name = "host-1", .cluster = "example.com"};
    EVP_PKEY *k = rp_tls_keygen();
    struct {
        long ttl;
        int type;
        const char *prefix;
    } cases[] = {
        {ttl_until(2049, 12, 31, 23), V_ASN1_UTCTIME, "4912312"},
        {ttl_until(2050, 1, 1, 1), V_ASN1_GENERALIZEDTIME, "205001010"},
        {ttl_until(2197, 6, 1, 12), V_ASN1_GENERALIZEDTIME, "219706011"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        X509 *x = issue_pem_x509(&p, k, &id, NULL, 0, cases[i].ttl, NULL);
        const ASN1_TIME *na = X509_get0_notAfter(x);
        cr_assert_eq(ASN1_STRING_type(na), cases[i].type, "case %zu", i);
        const char *s = (const char *)ASN1_STRING_get0_data(na);
        cr_assert_eq(strncmp(s, cases[i].prefix, strlen(cases[i].prefix)), 0, "case %zu: %s", i, s);
        cr_assert_eq((size_t)ASN1_STRING_length(na), cases[i].type == V_ASN1_UTCTIME ? 13u : 15u);
        cr_assert_eq(ASN1_STRING_type(X509_get0_notBefore(x)), V_ASN1_UTCTIME);
        cr_assert_eq(X509_verify(x, p.ca_key), 1);
        struct rp_identity got;
        cr_assert_eq(rp_identity_from_cert(x, &got), 0, "%s", rp_errmsg());
        cr_assert_eq(got.not_after, asn1_time_epoch(na));
        rp_identity_free(&got);
        X509_free(x);
    }
    /* Nothing past 9999-12-31, and no overflow on the way. */
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    spki_of(k, spki);
    char *pem = NULL;
    long far[] = {ttl_until(10000, 1, 1, 0), LONG_MAX};
    for (size_t i = 0; i < 2; i++) {
        cr_assert_eq(
            rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &id, NULL, 0, far[i], &pem),
            RP_EINVAL);
        cr_assert(strstr(rp_errmsg(), "9999") != NULL, "%s", rp_errmsg());
    }
    cr_assert_null(pem);
    EVP_PKEY_free(k);
    pki_free(&p);
}

Test(tls, der_certificate_passes_openssl_cli_verify)
{
    struct pki p;
    pki_new(&p, "example.com");
    char *groups[] = {"Node"};
    struct rp_identity id = {
        .name = "node-1", .groups = groups, .n_groups = 1, .cluster = "example.com"};
    const char *sans[] = {"node-1.example.com", "192.0.2.1"};
    EVP_PKEY *k = rp_tls_keygen();
    char dir[64], ca[128], leaf[128], far[128], cmd[768], out[256];
    tmpdir(dir, sizeof dir);
    snprintf(ca, sizeof ca, "%s/ca.pem", dir);
    snprintf(leaf, sizeof leaf, "%s/leaf.pem", dir);
    snprintf(far, sizeof far, "%s/far.pem", dir);
    cr_assert_eq(rp_tls_write_cert(ca, p.ca), 0, "%s", rp_errmsg());
    char *pem = NULL;
    X509 *x = issue_pem_x509(&p, k, &id, sans, 2, 3600, &pem);
    cr_assert_eq(rp_write_file(leaf, pem, strlen(pem), 0644), 0, "%s", rp_errmsg());
    free(pem);
    X509_free(x);
    x = issue_pem_x509(&p, k, &id, NULL, 0, ttl_until(2060, 1, 1, 0), &pem);
    cr_assert_eq(rp_write_file(far, pem, strlen(pem), 0644), 0, "%s", rp_errmsg());
    free(pem);
    X509_free(x);

    const char *purposes[] = {"sslclient", "sslserver"};
    for (int i = 0; i < 2; i++) {
        snprintf(cmd, sizeof cmd, "/usr/bin/openssl verify -CAfile '%s' -purpose %s '%s' '%s' 2>&1",
                 ca, purposes[i], leaf, far);
        run_capture(cmd, out, sizeof out);
        char want[160];
        snprintf(want, sizeof want, "%s: OK", leaf);
        cr_assert_str_eq(out, want);
    }
    snprintf(cmd, sizeof cmd,
             "/usr/bin/openssl x509 -in '%s' -noout -subject -nameopt RFC2253 2>&1", leaf);
    run_capture(cmd, out, sizeof out);
    cr_assert_str_eq(out, "subject=1.3.9999.1.7=#0C0B6578616D706C652E636F6D,O=Node,CN=node-1");
    snprintf(cmd, sizeof cmd,
             "/usr/bin/openssl x509 -in '%s' -noout -ext subjectAltName 2>&1 | tail -1", leaf);
    run_capture(cmd, out, sizeof out);
    cr_assert(strstr(out, "DNS:node-1.example.com, IP Address:192.0.2.1") != NULL, "%s", out);
    rmtree(dir);
    EVP_PKEY_free(k);
    pki_free(&p);
}

Test(tls, der_certificate_refuses_bad_input)
{
    struct pki p, other;
    pki_new(&p, "example.com");
    pki_new(&other, "example.com");
    EVP_PKEY *k = rp_tls_keygen();
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    spki_of(k, spki);
    char *pem = NULL;
    char *bad_group[] = {"ok", "with\ttab"};
    char *empty_login[] = {""};
    char *null_group[] = {NULL};
    char cn65[66], cn64[65], l129[130];
    memset(cn65, 'a', 65), cn65[65] = '\0';
    memset(cn64, 'a', 64), cn64[64] = '\0';
    memset(l129, 'l', 129), l129[129] = '\0';
    char *long_login[] = {l129};
    char *long_group[] = {cn65};
    struct rp_identity ids[] = {
        {.name = NULL},
        {.name = ""},
        {.name = "line\nbreak"},
        {.name = "bad\xff utf8"},
        {.name = "x", .groups = bad_group, .n_groups = 2},
        {.name = "x", .groups = null_group, .n_groups = 1},
        {.name = "x", .logins = empty_login, .n_logins = 1},
        {.name = "x", .cluster = "c\x7f"},
        {.name = "x", .route_cluster = "r\n"},
        /* X.520 bounds, as OpenSSL's X509_NAME applied them. */
        {.name = cn65},
        {.name = "x", .groups = long_group, .n_groups = 1},
        {.name = "x", .logins = long_login, .n_logins = 1},
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++) {
        cr_assert_eq(
            rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &ids[i], NULL, 0, 60, &pem),
            RP_EINVAL, "identity %zu accepted", i);
        cr_assert_neq(strlen(rp_errmsg()), 0);
    }
    struct rp_identity ok = {.name = cn64};
    const char *bad_sans[][1] = {{"host name"}, {""}, {"a/b"}, {"x*.example.com"}};
    for (size_t i = 0; i < sizeof bad_sans / sizeof bad_sans[0]; i++) {
        cr_assert_eq(
            rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &ok, bad_sans[i], 1, 60, &pem),
            RP_EINVAL, "SAN \"%s\" accepted", bad_sans[i][0]);
        cr_assert(strstr(rp_errmsg(), "subjectAltName") != NULL, "%s", rp_errmsg());
    }
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &ok, NULL, 2, 60, &pem),
                 RP_EINVAL);
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &ok, NULL, 0, 0, &pem),
                 RP_EINVAL);
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &ok, NULL, 0, -5, &pem),
                 RP_EINVAL);
    /* A CA key that is not the CA certificate's. */
    cr_assert_eq(rp_tls_issue_pem(other.ca_key, p.ca, spki, sizeof spki, &ok, NULL, 0, 60, &pem),
                 RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), "does not match") != NULL, "%s", rp_errmsg());
    /* Bytes that are not a P-256 SubjectPublicKeyInfo. */
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki - 1, &ok, NULL, 0, 60, &pem),
                 RP_EINVAL);
    unsigned char bad[RP_TLS_P256_SPKI_LEN];
    memcpy(bad, spki, sizeof bad);
    bad[20] ^= 1; /* the curve OID */
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, bad, sizeof bad, &ok, NULL, 0, 60, &pem),
                 RP_EINVAL);
    memcpy(bad, spki, sizeof bad);
    bad[26] = 0x06; /* hybrid point form */
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, bad, sizeof bad, &ok, NULL, 0, 60, &pem),
                 RP_EINVAL);
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, NULL, 0, &ok, NULL, 0, 60, &pem), RP_EINVAL);
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &ok, NULL, 0, 60, NULL),
                 RP_EINVAL);
    cr_assert_null(pem);
    /* The 64-character CN is within bounds. */
    cr_assert_eq(rp_tls_issue_pem(p.ca_key, p.ca, spki, sizeof spki, &ok, NULL, 0, 60, &pem), 0,
                 "%s", rp_errmsg());
    free(pem);
    EVP_PKEY_free(k);
    pki_free(&other);
    pki_free(&p);
}

Test(tls, issue_takes_p256_keys_of_both_kinds_and_refuses_others)
{
    struct pki p;
    pki_new(&p, "example.com");
    struct rp_identity id = {.name = "x"};
    /* A provider key (rp_tls_keygen) and a legacy one (rp_tls_pubkey_from_pem). */
    EVP_PKEY *k = rp_tls_keygen(), *legacy = NULL;
    char *pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &pub), 0);
    cr_assert_eq(rp_tls_pubkey_from_pem(pub, strlen(pub), &legacy), 0, "%s", rp_errmsg());
    free(pub);
    EVP_PKEY *keys[] = {k, legacy};
    for (int i = 0; i < 2; i++) {
        X509 *x = NULL;
        cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, keys[i], &id, NULL, 0, 60, &x), 0, "%s",
                     rp_errmsg());
        cr_assert_eq(EVP_PKEY_eq(X509_get0_pubkey(x), k), 1);
        cr_assert_eq(X509_verify(x, p.ca_key), 1);
        X509_free(x);
    }
    EVP_PKEY *other[] = {EVP_EC_gen("P-384"), EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")};
    for (int i = 0; i < 2; i++) {
        X509 *x = NULL;
        cr_assert_eq(rp_tls_issue(p.ca_key, p.ca, other[i], &id, NULL, 0, 60, &x), RP_EINVAL);
        cr_assert(strstr(rp_errmsg(), "P-256") != NULL, "%s", rp_errmsg());
        cr_assert_null(x);
        EVP_PKEY_free(other[i]);
    }
    EVP_PKEY_free(legacy);
    EVP_PKEY_free(k);
    pki_free(&p);
}

/* ---- P-256 public keys from PEM (rp_tls_pubkey_spki) ------------------------------------- */

/* @der as a PEM block labelled @label, malloc'd. */
static char *pem_block(const char *label, const unsigned char *der, long n)
{
    BIO *b = BIO_new(BIO_s_mem());
    cr_assert(PEM_write_bio(b, label, "", der, n) > 0);
    char *p = NULL;
    long len = BIO_get_mem_data(b, &p);
    char *s = strndup(p, (size_t)len);
    BIO_free(b);
    return s;
}

static char *pubkey_pem(EVP_PKEY *k)
{
    char *pub = NULL;
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &pub), 0, "%s", rp_errmsg());
    if (pub == NULL)
        abort(); /* (tells gcc's format checks it is not NULL below) */
    return pub;
}

Test(tls, pubkey_spki_accepts_what_pubkey_to_pem_writes)
{
    for (int i = 0; i < 16; i++) {
        EVP_PKEY *k = rp_tls_keygen();
        char *pub = pubkey_pem(k);
        unsigned char spki[RP_TLS_P256_SPKI_LEN], *der = NULL;
        cr_assert_eq(rp_tls_pubkey_spki(pub, strlen(pub), spki), 0, "%s", rp_errmsg());
        cr_assert_eq(i2d_PUBKEY(k, &der), RP_TLS_P256_SPKI_LEN);
        cr_assert_eq(memcmp(spki, der, RP_TLS_P256_SPKI_LEN), 0);
        OPENSSL_free(der);

        /* CRLF line ends and whitespace around the block are fine; the length given is
         * what counts, not a NUL. */
        char crlf[512], *o = crlf;
        o += sprintf(o, "\n  ");
        for (const char *c = pub; *c; c++) {
            if (*c == '\n')
                *o++ = '\r';
            *o++ = *c;
        }
        o += sprintf(o, "\r\n\t\n");
        unsigned char spki2[RP_TLS_P256_SPKI_LEN];
        cr_assert_eq(rp_tls_pubkey_spki(crlf, (size_t)(o - crlf), spki2), 0, "%s", rp_errmsg());
        cr_assert_eq(memcmp(spki, spki2, sizeof spki), 0);
        size_t n = strlen(pub);
        pub[n - 1] = 'X'; /* past @n */
        cr_assert_eq(rp_tls_pubkey_spki(pub, n - 1, spki2), 0, "%s", rp_errmsg());
        free(pub);
        EVP_PKEY_free(k);
    }
}

Test(tls, pubkey_spki_refuses_anything_else)
{
    EVP_PKEY *k = rp_tls_keygen();
    char *pub = pubkey_pem(k), *priv = NULL;
    cr_assert_eq(rp_tls_key_to_pem(k, &priv), 0);
    unsigned char *der = NULL;
    int dn = i2d_PUBKEY(k, &der);
    cr_assert_eq(dn, RP_TLS_P256_SPKI_LEN);

    /* A point off the curve: one bit of y flipped. */
    unsigned char off[RP_TLS_P256_SPKI_LEN];
    memcpy(off, der, sizeof off);
    off[sizeof off - 1] ^= 1;
    char *off_pem = pem_block("PUBLIC KEY", off, sizeof off);
    /* A compressed P-256 point. */
    EVP_PKEY *kc = EVP_EC_gen("P-256");
    cr_assert(EVP_PKEY_set_utf8_string_param(kc, "point-format", "compressed"));
    unsigned char *cder = NULL;
    int cn = i2d_PUBKEY(kc, &cder);
    cr_assert_eq(cn, 59);
    char *compressed = pem_block("PUBLIC KEY", cder, cn);
    /* Other key types. */
    EVP_PKEY *rsa = EVP_RSA_gen(1024), *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"),
             *p384 = EVP_EC_gen("P-384");
    cr_assert(rsa && ed && p384);
    char *rsa_pem = pubkey_pem(rsa), *ed_pem = pubkey_pem(ed), *p384_pem = pubkey_pem(p384);
    struct pki p;
    pki_new(&p, "example.com");
    char *cert_pem = NULL;
    cr_assert_eq(rp_tls_cert_to_pem(p.ca, &cert_pem), 0);

    /* Variations of the good PEM. */
    size_t pn = strlen(pub);
    char two[1024], hdr[1024], trail[1024], badchar[512], short1[512], short4[512];
    snprintf(two, sizeof two, "%s%s", pub, pub);
    snprintf(hdr, sizeof hdr, "-----BEGIN PUBLIC KEY-----\nProc-Type: 4,ENCRYPTED\n\n%s",
             pub + strlen("-----BEGIN PUBLIC KEY-----\n"));
    snprintf(trail, sizeof trail, "%sjunk\n", pub);
    snprintf(badchar, sizeof badchar, "%s", pub);
    badchar[40] = '*';
    /* The body without its last character, then without its last four. */
    const char *end = strstr(pub, "\n-----END");
    cr_assert_not_null(end);
    size_t body_end = (size_t)(end - pub);
    snprintf(short1, sizeof short1, "%.*s%s", (int)body_end - 1, pub, end);
    snprintf(short4, sizeof short4, "%.*s%s", (int)body_end - 4, pub, end);
    /* The same bytes with bits set past the data in the last quantum ("xx=="): a
     * second spelling of the key that strict base64 refuses. */
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char noncanon[512];
    snprintf(noncanon, sizeof noncanon, "%s", pub);
    char *last = noncanon + body_end - 3;
    cr_assert_eq(memcmp(last + 1, "==", 2), 0, "%s", pub);
    *last = b64[(strchr(b64, *last) - b64) ^ 1];

    const char *esc = "-----BEGIN \x1b[2J-----\nAAAA\n-----END \x1b[2J-----\n";
    struct {
        const char *pem;
        size_t n;
        const char *why;
    } cases[] = {
        {"", 0, "empty"},
        {"garbage", 7, "does not start with -----BEGIN"},
        {pub, pn / 2, "truncated"},
        {pub, pn - 3, "END line"},
        {two, strlen(two), "more than one PEM block"},
        {priv, strlen(priv), "\"PRIVATE KEY\" block"},
        {cert_pem, strlen(cert_pem), "\"CERTIFICATE\" block"},
        {esc, strlen(esc), "\"?\" block"}, /* not echoed into the message */
        {hdr, strlen(hdr), "header"},
        {trail, strlen(trail), "data after its END line"},
        {badchar, strlen(badchar), "not base64"},
        {short1, strlen(short1), "not valid base64"},
        {short4, strlen(short4), "no readable SubjectPublicKeyInfo"},
        {noncanon, strlen(noncanon), "not valid base64"},
        {rsa_pem, strlen(rsa_pem), "RSA is not EC P-256"},
        {ed_pem, strlen(ed_pem), "ED25519 is not EC P-256"},
        {p384_pem, strlen(p384_pem), "secp384r1 is not P-256"},
        {off_pem, strlen(off_pem), "not on the P-256 curve"},
        {compressed, strlen(compressed), "uncompressed point"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        unsigned char spki[RP_TLS_P256_SPKI_LEN];
        cr_assert_eq(rp_tls_pubkey_spki(cases[i].pem, cases[i].n, spki), RP_EINVAL,
                     "case %zu (%s) accepted", i, cases[i].why);
        cr_assert(strstr(rp_errmsg(), cases[i].why) != NULL, "case %zu: want \"%s\", got \"%s\"", i,
                  cases[i].why, rp_errmsg());
    }
    /* Too large to be a public key PEM at all, and no key at all. */
    char *big = malloc(8192);
    memset(big, 'A', 8192);
    unsigned char spki[RP_TLS_P256_SPKI_LEN];
    cr_assert_eq(rp_tls_pubkey_spki(big, 8192, spki), RP_EINVAL);
    cr_assert_eq(rp_tls_pubkey_spki(NULL, 10, spki), RP_EINVAL);
    free(big);

    free(cert_pem);
    pki_free(&p);
    free(rsa_pem), free(ed_pem), free(p384_pem);
    EVP_PKEY_free(rsa), EVP_PKEY_free(ed), EVP_PKEY_free(p384), EVP_PKEY_free(kc);
    free(compressed), free(off_pem);
    OPENSSL_free(cder);
    OPENSSL_free(der);
    free(priv);
    free(pub);
    EVP_PKEY_free(k);
}

/* ---- pins, PEM, files -------------------------------------------------------------- */

Test(tls, ca_pin_is_stable_and_matches_openssl_cli)
{
    struct pki p;
    pki_new(&p, "example.com");
    char pin[80], pin2[80];
    cr_assert_eq(rp_tls_ca_pin(p.ca, pin, sizeof pin), 0, "%s", rp_errmsg());
    cr_assert_eq(strlen(pin), 71);
    cr_assert_eq(strncmp(pin, "sha256:", 7), 0);
    cr_assert_eq(rp_tls_ca_pin(p.ca, pin2, 71), RP_EINVAL);

    char *pem = NULL;
    cr_assert_eq(rp_tls_cert_to_pem(p.ca, &pem), 0);
    X509 *back = NULL;
    cr_assert_eq(rp_tls_cert_from_pem(pem, strlen(pem), &back), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_ca_pin(back, pin2, sizeof pin2), 0);
    cr_assert_str_eq(pin, pin2);
    free(pem);
    X509_free(back);

    char dir[64], path[128], cmd[512], out[256];
    tmpdir(dir, sizeof dir);
    snprintf(path, sizeof path, "%s/ca.pem", dir);
    cr_assert_eq(rp_tls_write_cert(path, p.ca), 0, "%s", rp_errmsg());
    snprintf(cmd, sizeof cmd,
             "openssl x509 -in '%s' -pubkey -noout | openssl pkey -pubin -outform der | sha256sum",
             path);
    run_capture(cmd, out, sizeof out);
    out[64] = '\0';
    cr_assert_str_eq(pin + 7, out, "ours %s, openssl %s", pin + 7, out);
    rmtree(dir);
    pki_free(&p);
}

Test(tls, key_file_is_0600_and_reads_back)
{
    struct pki p;
    pki_new(&p, "example.com");
    char dir[64], kpath[128], cpath[128];
    tmpdir(dir, sizeof dir);
    snprintf(kpath, sizeof kpath, "%s/ca.key", dir);
    snprintf(cpath, sizeof cpath, "%s/ca.crt", dir);
    mode_t old = umask(0);
    cr_assert_eq(rp_tls_write_key(kpath, p.ca_key), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_write_cert(cpath, p.ca), 0, "%s", rp_errmsg());
    umask(old);
    struct stat st;
    cr_assert_eq(stat(kpath, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0600, "key mode %o", st.st_mode & 07777);
    cr_assert_eq(stat(cpath, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0644, "cert mode %o", st.st_mode & 07777);

    /* Overwriting keeps 0600 and leaves no temp file behind. */
    cr_assert_eq(rp_tls_write_key(kpath, p.ca_key), 0, "%s", rp_errmsg());
    cr_assert_eq(stat(kpath, &st), 0);
    cr_assert_eq(st.st_mode & 07777, 0600);
    char cmd[256], out[64];
    snprintf(cmd, sizeof cmd, "ls -A '%s' | wc -l", dir);
    run_capture(cmd, out, sizeof out);
    cr_assert_str_eq(out, "2");

    EVP_PKEY *k = NULL;
    X509 *x = NULL;
    cr_assert_eq(rp_tls_read_key(kpath, &k), 0, "%s", rp_errmsg());
    cr_assert_eq(EVP_PKEY_eq(k, p.ca_key), 1);
    cr_assert_eq(rp_tls_read_cert(cpath, &x), 0, "%s", rp_errmsg());
    cr_assert_eq(X509_cmp(x, p.ca), 0);
    EVP_PKEY_free(k);
    X509_free(x);

    /* Errors name the path and the problem. */
    char missing[160];
    snprintf(missing, sizeof missing, "%s/nope.key", dir);
    cr_assert_eq(rp_tls_read_key(missing, &k), RP_ENOTFOUND);
    cr_assert(strstr(rp_errmsg(), missing) != NULL, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_read_key(cpath, &k), RP_EINVAL); /* a cert is not a key */
    cr_assert(strstr(rp_errmsg(), cpath) != NULL, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_read_cert(kpath, &x), RP_EINVAL);
    cr_assert(strstr(rp_errmsg(), kpath) != NULL, "%s", rp_errmsg());
    rmtree(dir);
    pki_free(&p);
}

Test(tls, pem_round_trips_and_refuses_other_key_types)
{
    EVP_PKEY *k = rp_tls_keygen();
    char *pem = NULL, *pub = NULL;
    cr_assert_eq(rp_tls_key_to_pem(k, &pem), 0);
    cr_assert_eq(rp_tls_pubkey_to_pem(k, &pub), 0);
    cr_assert(strstr(pem, "PRIVATE KEY") != NULL);
    cr_assert(strstr(pub, "PUBLIC KEY") != NULL);
    EVP_PKEY *k2 = NULL, *p2 = NULL;
    cr_assert_eq(rp_tls_key_from_pem(pem, strlen(pem), &k2), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_pubkey_from_pem(pub, strlen(pub), &p2), 0, "%s", rp_errmsg());
    cr_assert_eq(EVP_PKEY_eq(k, k2), 1);
    cr_assert_eq(EVP_PKEY_eq(k, p2), 1);
    /* Truncated PEM and garbage. */
    cr_assert_eq(rp_tls_key_from_pem(pem, strlen(pem) / 2, &k2), RP_EINVAL);
    cr_assert_eq(rp_tls_cert_from_pem("garbage", 7, NULL), RP_EINVAL);
    cr_assert_eq(rp_tls_pubkey_from_pem("", 0, &p2), RP_EINVAL);
    free(pem);
    free(pub);
    EVP_PKEY_free(k2);
    EVP_PKEY_free(p2);

    /* P-384 and Ed25519 keys are not ours. */
    EVP_PKEY *other[] = {EVP_EC_gen("P-384"), EVP_PKEY_Q_keygen(NULL, NULL, "ED25519")};
    for (size_t i = 0; i < 2; i++) {
        cr_assert_not_null(other[i]);
        cr_assert_eq(rp_tls_pubkey_to_pem(other[i], &pub), 0);
        cr_assert_eq(rp_tls_pubkey_from_pem(pub, strlen(pub), &p2), RP_EINVAL);
        cr_assert(strstr(rp_errmsg(), "P-256") != NULL, "%s", rp_errmsg());
        free(pub);
        EVP_PKEY_free(other[i]);
    }
    EVP_PKEY_free(k);
}

/* ---- mutual TLS ---------------------------------------------------------------------- */

struct two_ends {
    struct pki p;
    EVP_PKEY *skey, *ckey;
    X509 *scert, *ccert;
};

static void two_ends_new(struct two_ends *t)
{
    pki_new(&t->p, "example.com");
    pki_issue(&t->p, "auth-1", RP_ROLE_AUTH, &t->skey, &t->scert);
    pki_issue(&t->p, "node-1", RP_ROLE_NODE, &t->ckey, &t->ccert);
}

static void two_ends_free(struct two_ends *t)
{
    EVP_PKEY_free(t->skey);
    EVP_PKEY_free(t->ckey);
    X509_free(t->scert);
    X509_free(t->ccert);
    pki_free(&t->p);
}

Test(tls, mtls_handshake_with_same_ca_carries_identities, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    SSL_CTX *sctx = rp_tls_server_ctx(t.p.ca, t.scert, t.skey, 1);
    SSL_CTX *cctx = rp_tls_client_ctx(t.p.ca, t.ccert, t.ckey);
    cr_assert_not_null(sctx, "%s", rp_errmsg());
    cr_assert_not_null(cctx, "%s", rp_errmsg());

    struct server s;
    server_start(&s, sctx, 1);
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, cctx, s.addr, 5000), 0, "%s", rp_errmsg());
    cr_assert_eq(strcmp(SSL_get_version(c.ssl), "TLSv1.3"), 0);
    cr_assert_not(SSL_session_reused(c.ssl));
    struct rp_identity sid;
    cr_assert_eq(rp_tls_peer_identity(c.ssl, &sid), 0, "%s", rp_errmsg());
    cr_assert_str_eq(sid.name, "auth-1");
    cr_assert(rp_identity_has_group(&sid, RP_ROLE_AUTH));
    cr_assert_str_eq(sid.cluster, "example.com");
    rp_identity_free(&sid);
    cr_assert_eq(rp_conn_set_timeout(&c, 5000), 0);
    cr_assert_eq(rp_conn_write_frame(&c, "hello", 5), 0, "%s", rp_errmsg());
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_read_frame(&c, &b), 0, "%s", rp_errmsg());
    cr_assert_eq(b.len, 5);
    rp_buf_free(&b);
    rp_conn_close(&c);
    rp_conn_close(&c); /* idempotent */
    cr_assert_eq(c.fd, -1);

    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    cr_assert_eq(pthread_timedjoin_np(s.th, NULL, &ts), 0);
    cr_assert_eq(s.accept_rv, 0, "%s", s.accept_err);
    cr_assert_eq(s.id_rv, 0);
    cr_assert_str_eq(s.id.name, "node-1");
    cr_assert(rp_identity_has_group(&s.id, RP_ROLE_NODE));
    rp_identity_free(&s.id);
    close(s.lfd);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    two_ends_free(&t);
}

/* The same handshake with both certificates written by rp_tls_issue_pem and read back
 * from PEM, as clients of the auth server get them. */
Test(tls, mtls_handshake_with_pem_issued_certs, .timeout = 30)
{
    struct pki p;
    pki_new(&p, "example.com");
    char *sgroups[] = {RP_ROLE_AUTH}, *cgroups[] = {"editor"}, *logins[] = {"root"};
    struct rp_identity sid = {
        .name = "auth-1", .groups = sgroups, .n_groups = 1, .cluster = "example.com"};
    struct rp_identity cid = {.name = "alice",
                              .groups = cgroups,
                              .n_groups = 1,
                              .logins = logins,
                              .n_logins = 1,
                              .cluster = "example.com",
                              .route_cluster = "example.com"};
    const char *sans[] = {"localhost", "127.0.0.1"};
    EVP_PKEY *skey = rp_tls_keygen(), *ckey = rp_tls_keygen();
    X509 *scert = issue_pem_x509(&p, skey, &sid, sans, 2, 3600, NULL);
    X509 *ccert = issue_pem_x509(&p, ckey, &cid, NULL, 0, 3600, NULL);
    SSL_CTX *sctx = rp_tls_server_ctx(p.ca, scert, skey, 1);
    SSL_CTX *cctx = rp_tls_client_ctx(p.ca, ccert, ckey);
    cr_assert_not_null(sctx, "%s", rp_errmsg());
    cr_assert_not_null(cctx, "%s", rp_errmsg());
    struct server s;
    server_start(&s, sctx, 1);
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, cctx, s.addr, 5000), 0, "%s", rp_errmsg());
    struct rp_identity peer;
    cr_assert_eq(rp_tls_peer_identity(c.ssl, &peer), 0, "%s", rp_errmsg());
    cr_assert_str_eq(peer.name, "auth-1");
    cr_assert(rp_identity_has_group(&peer, RP_ROLE_AUTH));
    rp_identity_free(&peer);
    cr_assert_eq(rp_conn_set_timeout(&c, 5000), 0);
    cr_assert_eq(rp_conn_write_frame(&c, "hi", 2), 0, "%s", rp_errmsg());
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_read_frame(&c, &b), 0, "%s", rp_errmsg());
    rp_buf_free(&b);
    rp_conn_close(&c);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    cr_assert_eq(pthread_timedjoin_np(s.th, NULL, &ts), 0);
    cr_assert_eq(s.accept_rv, 0, "%s", s.accept_err);
    cr_assert_eq(s.id_rv, 0);
    cr_assert_str_eq(s.id.name, "alice");
    cr_assert_eq(s.id.n_logins, 1);
    cr_assert_str_eq(s.id.logins[0], "root");
    cr_assert_str_eq(s.id.route_cluster, "example.com");
    rp_identity_free(&s.id);
    close(s.lfd);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    X509_free(scert);
    X509_free(ccert);
    EVP_PKEY_free(skey);
    EVP_PKEY_free(ckey);
    pki_free(&p);
}

Test(tls, client_cert_from_other_ca_is_refused, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    struct pki other;
    pki_new(&other, "example.com"); /* same name, different key */
    EVP_PKEY *k;
    X509 *x;
    pki_issue(&other, "node-1", RP_ROLE_ADMIN, &k, &x);

    SSL_CTX *sctx = rp_tls_server_ctx(t.p.ca, t.scert, t.skey, 1);
    SSL_CTX *cctx = rp_tls_client_ctx(t.p.ca, x, k);
    cr_assert_not_null(cctx, "%s", rp_errmsg());
    struct server s;
    server_start(&s, sctx, 1);
    /* TLS 1.3: the client's handshake may complete before the server's verdict, which
     * then arrives as an alert on the first read. Either way no frame comes back. */
    int rv = client_roundtrip(&s, cctx);
    cr_assert_neq(rv, 0);
    server_join(&s);
    cr_assert_eq(s.accept_rv, RP_ETLS, "server accepted: %d", s.accept_rv);
    cr_assert(strstr(s.accept_err, "certificate") != NULL, "%s", s.accept_err);

    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    EVP_PKEY_free(k);
    X509_free(x);
    pki_free(&other);
    two_ends_free(&t);
}

Test(tls, server_cert_from_other_ca_is_refused_by_client, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    struct pki other;
    pki_new(&other, "example.com");
    EVP_PKEY *k;
    X509 *x;
    pki_issue(&other, "auth-1", RP_ROLE_AUTH, &k, &x);
    SSL_CTX *sctx = rp_tls_server_ctx(other.ca, x, k, 0);
    SSL_CTX *cctx = rp_tls_client_ctx(t.p.ca, t.ccert, t.ckey);
    struct server s;
    server_start(&s, sctx, 0);
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, cctx, s.addr, 5000), RP_ETLS);
    cr_assert(strstr(rp_errmsg(), "certificate verify failed") != NULL, "%s", rp_errmsg());
    cr_assert(strstr(rp_errmsg(), s.addr) != NULL, "%s", rp_errmsg());
    rp_conn_close(&c); /* harmless after a failed dial */
    server_join(&s);
    cr_assert_neq(s.accept_rv, 0);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    EVP_PKEY_free(k);
    X509_free(x);
    pki_free(&other);
    two_ends_free(&t);
}

Test(tls, expired_client_cert_is_refused, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    /* Move the client certificate's notAfter into the past and re-sign it. */
    X509_gmtime_adj(X509_getm_notAfter(t.ccert), -10);
    cr_assert_gt(X509_sign(t.ccert, t.p.ca_key, EVP_sha256()), 0);
    SSL_CTX *sctx = rp_tls_server_ctx(t.p.ca, t.scert, t.skey, 1);
    SSL_CTX *cctx = rp_tls_client_ctx(t.p.ca, t.ccert, t.ckey);
    struct server s;
    server_start(&s, sctx, 1);
    cr_assert_neq(client_roundtrip(&s, cctx), 0);
    server_join(&s);
    cr_assert_eq(s.accept_rv, RP_ETLS);
    cr_assert(strstr(s.accept_err, "expired") != NULL, "%s", s.accept_err);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    two_ends_free(&t);
}

Test(tls, client_without_cert_refused_when_required, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    SSL_CTX *sctx = rp_tls_server_ctx(t.p.ca, t.scert, t.skey, 1);
    SSL_CTX *cctx = rp_tls_client_ctx(t.p.ca, NULL, NULL);
    cr_assert_not_null(cctx, "%s", rp_errmsg());
    struct server s;
    server_start(&s, sctx, 1);
    cr_assert_neq(client_roundtrip(&s, cctx), 0);
    server_join(&s);
    cr_assert_eq(s.accept_rv, RP_ETLS);
    cr_assert(strstr(s.accept_err, "certificate") != NULL, "%s", s.accept_err);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    two_ends_free(&t);
}

Test(tls, client_without_cert_accepted_when_optional_but_has_no_identity, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    SSL_CTX *sctx = rp_tls_server_ctx(t.p.ca, t.scert, t.skey, 0);
    SSL_CTX *cctx = rp_tls_client_ctx(t.p.ca, NULL, NULL);
    struct server s;
    server_start(&s, sctx, 1);
    cr_assert_eq(client_roundtrip(&s, cctx), 0, "%s", rp_errmsg());
    server_join(&s);
    cr_assert_eq(s.accept_rv, 0, "%s", s.accept_err);
    cr_assert_eq(s.id_rv, RP_EDENIED);
    SSL_CTX_free(sctx);
    SSL_CTX_free(cctx);
    two_ends_free(&t);
}

Test(tls, pinned_client_accepts_right_pin_and_refuses_wrong_one, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    char pin[80];
    cr_assert_eq(rp_tls_ca_pin(t.p.ca, pin, sizeof pin), 0);
    SSL_CTX *sctx = rp_tls_server_ctx(t.p.ca, t.scert, t.skey, 0);
    SSL_CTX *pctx = rp_tls_client_ctx_pinned();
    cr_assert_not_null(pctx, "%s", rp_errmsg());

    /* Right pin: the CA comes back, the leaf reads as the auth server. */
    struct server s;
    server_start(&s, sctx, 1);
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, pctx, s.addr, 5000), 0, "%s", rp_errmsg());
    X509 *ca = NULL;
    cr_assert_eq(rp_tls_check_pin(c.ssl, pin, &ca), 0, "%s", rp_errmsg());
    cr_assert_eq(X509_cmp(ca, t.p.ca), 0);
    X509_free(ca);
    /* Upper-case hex is the same pin. */
    char upper[80];
    snprintf(upper, sizeof upper, "%s", pin);
    for (char *q = upper + 7; *q; q++)
        if (*q >= 'a' && *q <= 'f')
            *q = (char)(*q - 'a' + 'A');
    cr_assert_eq(rp_tls_check_pin(c.ssl, upper, NULL), 0, "%s", rp_errmsg());
    /* Unverified connection: no identity from rp_tls_peer_identity. */
    struct rp_identity id;
    cr_assert_eq(rp_tls_peer_identity(c.ssl, &id), RP_EDENIED);
    struct rp_identity leaf;
    cr_assert_eq(rp_identity_from_cert(SSL_get0_peer_certificate(c.ssl), &leaf), 0);
    cr_assert_str_eq(leaf.name, "auth-1");
    rp_identity_free(&leaf);

    /* Wrong pin: refused, saying both. */
    char wrong[80];
    snprintf(wrong, sizeof wrong, "sha256:%064d", 0);
    ca = NULL;
    cr_assert_eq(rp_tls_check_pin(c.ssl, wrong, &ca), RP_ETLS);
    cr_assert_null(ca);
    char want[256];
    snprintf(want, sizeof want, "CA pin mismatch: server presented %s, expected %s", pin, wrong);
    cr_assert_str_eq(rp_errmsg(), want);
    cr_assert_eq(rp_tls_check_pin(c.ssl, "sha256:abc", NULL), RP_EINVAL);
    cr_assert_eq(rp_conn_set_timeout(&c, 5000), 0);
    cr_assert_eq(rp_conn_write_frame(&c, "x", 1), 0);
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(rp_conn_read_frame(&c, &b), 0, "%s", rp_errmsg());
    rp_buf_free(&b);
    rp_conn_close(&c);
    server_join(&s);
    cr_assert_eq(s.accept_rv, 0, "%s", s.accept_err);

    SSL_CTX_free(sctx);
    SSL_CTX_free(pctx);
    two_ends_free(&t);
}

Test(tls, pinned_client_refuses_leaf_not_signed_by_pinned_ca, .timeout = 30)
{
    /* A server that forwards the real CA as chain but holds a leaf from another CA. */
    struct two_ends t;
    two_ends_new(&t);
    struct pki other;
    pki_new(&other, "example.com");
    EVP_PKEY *k;
    X509 *x;
    pki_issue(&other, "auth-1", RP_ROLE_AUTH, &k, &x);
    SSL_CTX *sctx = SSL_CTX_new(TLS_server_method());
    cr_assert_eq(SSL_CTX_use_certificate(sctx, x), 1);
    cr_assert_eq(SSL_CTX_use_PrivateKey(sctx, k), 1);
    cr_assert_eq(SSL_CTX_add1_chain_cert(sctx, t.p.ca), 1);
    char pin[80];
    cr_assert_eq(rp_tls_ca_pin(t.p.ca, pin, sizeof pin), 0);
    SSL_CTX *pctx = rp_tls_client_ctx_pinned();
    struct server s;
    server_start(&s, sctx, 0);
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, pctx, s.addr, 5000), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_tls_check_pin(c.ssl, pin, NULL), RP_ETLS);
    cr_assert(strstr(rp_errmsg(), "not issued") != NULL || strstr(rp_errmsg(), "signature") != NULL,
              "%s", rp_errmsg());
    rp_conn_close(&c);
    server_join(&s);
    SSL_CTX_free(sctx);
    SSL_CTX_free(pctx);
    EVP_PKEY_free(k);
    X509_free(x);
    pki_free(&other);
    two_ends_free(&t);
}

Test(tls, tls12_client_is_refused, .timeout = 30)
{
    struct two_ends t;
    two_ends_new(&t);
    SSL_CTX *sctx = rp_tls_server_ctx(t.p.ca, t.scert, t.skey, 0);
    SSL_CTX *old = SSL_CTX_new(TLS_client_method());
    cr_assert_eq(SSL_CTX_set_max_proto_version(old, TLS1_2_VERSION), 1);
    SSL_CTX_set_verify(old, SSL_VERIFY_NONE, NULL);
    struct server s;
    server_start(&s, sctx, 0);
    struct rp_conn c;
    cr_assert_eq(rp_conn_dial(&c, old, s.addr, 5000), RP_ETLS);
    cr_assert(strstr(rp_errmsg(), "protocol version") != NULL, "%s", rp_errmsg());
    server_join(&s);
    cr_assert_eq(s.accept_rv, RP_ETLS);
    cr_assert(strstr(s.accept_err, "protocol") != NULL, "%s", s.accept_err);
    SSL_CTX_free(old);

    /* And the openssl CLI agrees. */
    server_start(&s, sctx, 0);
    char cmd[256], out[64];
    snprintf(cmd, sizeof cmd,
             "openssl s_client -tls1_2 -connect %s </dev/null >/dev/null 2>&1; echo $?", s.addr);
    run_capture(cmd, out, sizeof out);
    cr_assert_str_neq(out, "0");
    server_join(&s);
    cr_assert_eq(s.accept_rv, RP_ETLS);
    SSL_CTX_free(sctx);
    two_ends_free(&t);
}
