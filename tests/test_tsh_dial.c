/* tests/test_tsh_dial.c: what tsh decides from bytes and text others give it: the proxy's
 * dial answer, a node's host certificate against the host CA, -L and scp arguments. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/mp.h"
#include "lib/ssh_cert.h"
#include "lib/ssh_key.h"
#include "tsh/ssh.h"

/* ---- dial frame and answer ------------------------------------------------------------ */

Test(tsh_dial, the_dial_frame_is_a_length_and_a_map_of_target_login_version)
{
    struct rp_buf b;
    rp_buf_init(&b);
    cr_assert_eq(tsh_dial_frame("node1:3022", "root", &b), 0);
    cr_assert_geq(b.len, 5);
    uint32_t len = (uint32_t)b.data[0] << 24 | (uint32_t)b.data[1] << 16 |
                   (uint32_t)b.data[2] << 8 | b.data[3];
    cr_assert_eq(len, b.len - 4);
    msgpack_unpacked u;
    cr_assert_eq(rp_mp_parse(b.data + 4, len, &u), 0);
    const char *s;
    size_t n;
    cr_assert_eq(rp_mp_get_str(&u.data, "target", &s, &n), 0);
    cr_assert_eq(n, 10);
    cr_assert_eq(memcmp(s, "node1:3022", n), 0);
    cr_assert_eq(rp_mp_get_str(&u.data, "login", &s, &n), 0);
    cr_assert_eq(rp_mp_get_str(&u.data, "version", &s, &n), 0);
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&b);

    rp_buf_init(&b);
    cr_assert_eq(tsh_dial_frame("node1", NULL, &b), 0, "no login packs nil");
    rp_buf_free(&b);

    char big[5000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    rp_buf_init(&b);
    cr_assert_eq(tsh_dial_frame(big, "root", &b), RP_ETOOBIG, "frames stay under 4096 bytes");
    rp_buf_free(&b);
}

static void pack_answer(struct rp_buf *b, bool ok, const char *code, const char *error)
{
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(b);
    rp_mp_packer_init(&pk, b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_bool(&m, "ok", ok);
    if (ok) {
        rp_mp_map_str(&m, "host_id", "4dd6611e");
        rp_mp_map_str(&m, "hostname", "node1");
        rp_mp_map_str(&m, "addr", "");
        rp_mp_map_bool(&m, "tunnel", true);
        rp_mp_map_str(&m, "host_key", "ssh-ed25519 AAAA");
        rp_mp_map_str(&m, "host_cert", "ssh-ed25519-cert-v01@openssh.com AAAA");
    } else {
        rp_mp_map_str(&m, "code", code);
        if (error != NULL)
            rp_mp_map_str(&m, "error", error);
    }
    rp_mp_map_end(&m);
}

Test(tsh_dial, an_ok_answer_gives_the_node_and_its_key)
{
    struct rp_buf b;
    struct tsh_dial_answer a;
    pack_answer(&b, true, NULL, NULL);
    cr_assert_eq(tsh_dial_parse_answer("node1", b.data, b.len, &a), 0, "%s", rp_errmsg());
    cr_assert_str_eq(a.host_id, "4dd6611e");
    cr_assert_str_eq(a.hostname, "node1");
    cr_assert_str_eq(a.addr, "");
    cr_assert(a.tunnel);
    cr_assert_str_eq(a.host_key, "ssh-ed25519 AAAA");
    tsh_dial_answer_free(&a);
    rp_buf_free(&b);
}

Test(tsh_dial, refusals_map_to_errors_that_say_what_to_do)
{
    static const struct {
        const char *code;
        int rv;
        const char *says;
    } cases[] = {
        {"not_found", RP_ENOTFOUND, "tsh ls"},
        {"access_denied", RP_EDENIED, "roles"},
        {"ambiguous", RP_EINVAL, "host id"},
        {"unreachable", RP_EUNAVAILABLE, "try again"},
        {"busy", RP_EUNAVAILABLE, "try again"},
        {"version", RP_EPROTO, "upgrade tsh"},
        {"something-new", RP_EPROTO, "something-new"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct rp_buf b;
        struct tsh_dial_answer a;
        pack_answer(&b, false, cases[i].code, NULL);
        cr_assert_eq(tsh_dial_parse_answer("web-7", b.data, b.len, &a), cases[i].rv, "%s",
                     cases[i].code);
        cr_assert(strstr(rp_errmsg(), cases[i].says), "%s: '%s' lacks '%s'", cases[i].code,
                  rp_errmsg(), cases[i].says);
        cr_assert(strstr(rp_errmsg(), "web-7"), "names the node: %s", rp_errmsg());
        rp_buf_free(&b);
    }
    /* The proxy's own sentence wins when it gives one. */
    struct rp_buf b;
    struct tsh_dial_answer a;
    pack_answer(&b, false, "access_denied", "node web-7 is locked: ask an admin");
    cr_assert_eq(tsh_dial_parse_answer("web-7", b.data, b.len, &a), RP_EDENIED);
    cr_assert_str_eq(rp_errmsg(), "node web-7 is locked: ask an admin");
    rp_buf_free(&b);
}

Test(tsh_dial, malformed_answers_are_protocol_errors)
{
    struct tsh_dial_answer a;
    const uint8_t not_msgpack[] = {0xc1};
    cr_assert_eq(tsh_dial_parse_answer("n", not_msgpack, sizeof not_msgpack, &a), RP_EPROTO);
    const uint8_t empty_map[] = {0x80};
    cr_assert_eq(tsh_dial_parse_answer("n", empty_map, sizeof empty_map, &a), RP_EPROTO);
    /* ok without a host key: nothing to pin, so no session. */
    struct rp_buf b;
    msgpack_packer pk;
    struct rp_mp_map m;
    rp_buf_init(&b);
    rp_mp_packer_init(&pk, &b);
    rp_mp_map_begin(&pk, &m);
    rp_mp_map_bool(&m, "ok", true);
    rp_mp_map_str(&m, "host_id", "x");
    rp_mp_map_end(&m);
    cr_assert_eq(tsh_dial_parse_answer("n", b.data, b.len, &a), RP_EPROTO);
    rp_buf_free(&b);
}

/* ---- host certificates ---------------------------------------------------------------- */

struct hostca {
    EVP_PKEY *ca, *host;
    char *ca_line, *key_line, *cert_line;
};

static void make_host_cert(struct hostca *h, const char *principal, uint64_t after, uint64_t before,
                           uint32_t type)
{
    memset(h, 0, sizeof *h);
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &h->ca), 0);
    cr_assert_eq(rp_ssh_keygen(RP_SSH_KEY_ED25519, &h->host), 0);
    char *principals[] = {(char *)principal};
    struct rp_ssh_cert c = {.type = type,
                            .key = h->host,
                            .key_id = "node",
                            .principals = principals,
                            .n_principals = 1,
                            .valid_after = after,
                            .valid_before = before};
    struct rp_buf blob;
    rp_buf_init(&blob);
    cr_assert_eq(rp_ssh_cert_sign(&c, h->ca, &blob), 0, "%s", rp_errmsg());
    cr_assert_eq(rp_ssh_cert_format(blob.data, blob.len, NULL, &h->cert_line), 0);
    rp_buf_free(&blob);
    char *ca = NULL;
    cr_assert_eq(rp_ssh_pubkey_format(h->ca, NULL, &ca), 0);
    cr_assert(asprintf(&h->ca_line, "@cert-authority * %s\n", ca) > 0);
    free(ca);
    cr_assert_eq(rp_ssh_pubkey_format(h->host, NULL, &h->key_line), 0);
}

static void hostca_free(struct hostca *h)
{
    EVP_PKEY_free(h->ca);
    EVP_PKEY_free(h->host);
    free(h->ca_line);
    free(h->key_line);
    free(h->cert_line);
}

static uint64_t now_s(void)
{
    return (uint64_t)time(NULL);
}

Test(tsh_dial, a_host_certificate_from_the_host_ca_for_the_key_is_accepted)
{
    struct hostca h;
    make_host_cert(&h, "4dd6611e", now_s() - 60, now_s() + 3600, RP_SSH_CERT_HOST);
    char *kh = NULL;
    cr_assert(asprintf(&kh, "# comment\nsomehost ssh-ed25519 AAAA\n%s", h.ca_line) > 0);
    cr_assert_eq(tsh_verify_host_cert(kh, "4dd6611e", h.key_line, h.cert_line), 0, "%s",
                 rp_errmsg());
    free(kh);
    hostca_free(&h);
}

Test(tsh_dial, host_certificates_that_do_not_vouch_for_the_node_are_refused)
{
    struct hostca h, other;
    make_host_cert(&h, "4dd6611e", now_s() - 60, now_s() + 3600, RP_SSH_CERT_HOST);
    make_host_cert(&other, "4dd6611e", now_s() - 60, now_s() + 3600, RP_SSH_CERT_HOST);
    /* another CA */
    cr_assert_eq(tsh_verify_host_cert(other.ca_line, "4dd6611e", h.key_line, h.cert_line),
                 RP_EDENIED);
    cr_assert(strstr(rp_errmsg(), "host CA"), "%s", rp_errmsg());
    /* a certificate for another key than the one published */
    cr_assert_eq(tsh_verify_host_cert(h.ca_line, "4dd6611e", other.key_line, h.cert_line),
                 RP_EDENIED);
    cr_assert(strstr(rp_errmsg(), "another key"), "%s", rp_errmsg());
    /* another host's certificate */
    cr_assert_eq(tsh_verify_host_cert(h.ca_line, "someone-else", h.key_line, h.cert_line),
                 RP_EDENIED);
    /* no CA at all */
    cr_assert_eq(tsh_verify_host_cert("", "4dd6611e", h.key_line, h.cert_line), RP_EDENIED);
    cr_assert(strstr(rp_errmsg(), "tsh login"), "%s", rp_errmsg());
    hostca_free(&h);
    hostca_free(&other);

    struct hostca expired, user;
    make_host_cert(&expired, "4dd6611e", now_s() - 7200, now_s() - 3600, RP_SSH_CERT_HOST);
    cr_assert_eq(
        tsh_verify_host_cert(expired.ca_line, "4dd6611e", expired.key_line, expired.cert_line),
        RP_EDENIED);
    make_host_cert(&user, "4dd6611e", now_s() - 60, now_s() + 3600, RP_SSH_CERT_USER);
    cr_assert_eq(tsh_verify_host_cert(user.ca_line, "4dd6611e", user.key_line, user.cert_line),
                 RP_EDENIED, "a user certificate is no host certificate");
    hostca_free(&expired);
    hostca_free(&user);
}

/* ---- arguments ------------------------------------------------------------------------ */

Test(tsh_dial, local_forward_specs_parse_like_ssh)
{
    struct tsh_fwd f;
    cr_assert_eq(tsh_fwd_parse("8080:localhost:80", &f), 0);
    cr_assert_str_eq(f.bind, "");
    cr_assert_eq(f.lport, 8080);
    cr_assert_str_eq(f.host, "localhost");
    cr_assert_eq(f.rport, 80);
    cr_assert_eq(tsh_fwd_parse("0.0.0.0:5432:db.internal:5432", &f), 0);
    cr_assert_str_eq(f.bind, "0.0.0.0");
    cr_assert_str_eq(f.host, "db.internal");
    cr_assert_eq(tsh_fwd_parse("[::1]:8443:[fe80::1]:443", &f), 0);
    cr_assert_str_eq(f.bind, "::1");
    cr_assert_str_eq(f.host, "fe80::1");
    cr_assert_eq(f.rport, 443);
    const char *bad[] = {"8080",      "8080:host", "0:host:80", "8080:host:70000",
                         "x:host:80", "8080::80",  "a:b:c:d:e"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        cr_assert_eq(tsh_fwd_parse(bad[i], &f), RP_EINVAL, "%s", bad[i]);
}

Test(tsh_dial, scp_arguments_are_local_or_on_a_node_as_with_scp)
{
    struct tsh_scp_spec s;
    cr_assert_eq(tsh_scp_spec_parse("root@node1:/tmp/x", &s), 0);
    cr_assert_str_eq(s.login, "root");
    cr_assert_str_eq(s.host, "node1");
    cr_assert_str_eq(s.path, "/tmp/x");
    tsh_scp_spec_free(&s);
    cr_assert_eq(tsh_scp_spec_parse("node1:", &s), 0);
    cr_assert_null(s.login);
    cr_assert_str_eq(s.host, "node1");
    cr_assert_str_eq(s.path, "", "the remote home");
    tsh_scp_spec_free(&s);
    cr_assert_eq(tsh_scp_spec_parse("./a:b", &s), 0);
    cr_assert_null(s.host, "a slash before the colon: a local path");
    cr_assert_str_eq(s.path, "./a:b");
    tsh_scp_spec_free(&s);
    cr_assert_eq(tsh_scp_spec_parse("report.pdf", &s), 0);
    cr_assert_null(s.host);
    tsh_scp_spec_free(&s);
    cr_assert_eq(tsh_scp_spec_parse("@node1:/x", &s), RP_EINVAL);
    cr_assert_eq(tsh_scp_spec_parse("root@:/x", &s), RP_EINVAL);
    cr_assert_null(s.login, "nothing is left to free after a refusal");
}
