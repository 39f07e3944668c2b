/* tsh/login.c: tsh login (password, TOTP, invites), tsh logout, and the check every
 * command makes first (tsh_require_profile).
 *
 * A login is: ping the proxy (trusting it as tsh/web.c says), warn about versions,
 * read the password (and a TOTP code when the cluster asks for one), make fresh keys,
 * POST them to /webapi/ssh/certs, check what came back against the CA that came with
 * it (and against the pin or the previous profile's CA), then write the key files and
 * last the profile. Nothing of the old profile is touched until the new certificates
 * are in hand, so a failed login leaves the old one as it was.
 *
 * Secrets (password, TOTP secret and codes, private keys) are wiped from our buffers
 * once used and never printed, except the TOTP enrolment URI, which the user must see
 * to enrol an authenticator. */
#include <errno.h>
#include <openssl/crypto.h>
#include <pwd.h>
#include <qrencode.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "lib/ssh_key.h"
#include "lib/tls.h"
#include "lib/totp.h"
#include "lib/util.h"
#include "lib/version.h"
#include "tsh/tsh.h"

/* ---- reading from the user ----------------------------------------------------------- */

static struct termios saved_termios;
static volatile sig_atomic_t echo_off;

/* Ctrl-C while the password is typed must not leave the terminal silent. */
static void restore_echo_and_die(int sig)
{
    if (echo_off)
        tcsetattr(STDIN_FILENO, TCSANOW, &saved_termios);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int read_one_line(char *out, size_t outlen)
{
    if (fgets(out, (int)outlen, stdin) == NULL)
        return rp_err(RP_EIO, "standard input ended before the expected line");
    size_t n = strlen(out);
    if (n > 0 && out[n - 1] == '\n') {
        out[--n] = '\0';
        if (n > 0 && out[n - 1] == '\r')
            out[--n] = '\0';
        return 0;
    }
    if (feof(stdin))
        return 0; /* a last line without newline */
    /* Drop the rest of the long line so that the next read starts after it. */
    int ch;
    while ((ch = getchar()) != EOF && ch != '\n') {
    }
    OPENSSL_cleanse(out, outlen);
    return rp_err(RP_ETOOBIG, "a line of standard input is longer than %zu bytes", outlen - 1);
}

static int read_line(const char *prompt, char *out, size_t outlen, bool secret)
{
    if (!isatty(STDIN_FILENO))
        return read_one_line(out, outlen);
    struct termios quiet;
    if (!secret || tcgetattr(STDIN_FILENO, &saved_termios) != 0) {
        fprintf(stderr, "%s", prompt);
        fflush(stderr);
        return read_one_line(out, outlen);
    }
    quiet = saved_termios;
    quiet.c_lflag &= (tcflag_t) ~(ECHO | ECHONL);
    quiet.c_lflag |= ICANON;
    struct sigaction sa = {0}, old_int, old_term;
    sa.sa_handler = restore_echo_and_die;
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    echo_off = 1;
    /* Echo goes off before the prompt shows: what is typed as soon as it appears must
     * not be echoed. TCSANOW keeps what was typed ahead. */
    tcsetattr(STDIN_FILENO, TCSANOW, &quiet);
    fprintf(stderr, "%s", prompt);
    fflush(stderr);
    int rv = read_one_line(out, outlen);
    tcsetattr(STDIN_FILENO, TCSANOW, &saved_termios);
    echo_off = 0;
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    fprintf(stderr, "\n");
    return rv;
}

int tsh_read_secret(const char *prompt, char *out, size_t outlen)
{
    return read_line(prompt, out, outlen, true);
}

int tsh_read_line(const char *prompt, char *out, size_t outlen)
{
    return read_line(prompt, out, outlen, false);
}

/* ---- QR codes --------------------------------------------------------------------- */

#define QR_QUIET 2

int tsh_qr_render(const char *text, struct rp_buf *out)
{
    QRcode *qr = QRcode_encodeString(text, 0, QR_ECLEVEL_L, QR_MODE_8, 1);
    if (qr == NULL)
        return rp_err(RP_EINVAL, "cannot encode %zu bytes as a QR code: %s", strlen(text),
                      strerror(errno));
    int w = qr->width, size = w + 2 * QR_QUIET;
    /* Light modules are drawn, dark ones left to the terminal's background, as qrencode
     * -t UTF8 does: a dark-themed terminal then shows dark-on-light, what scanners want.
     * One text row holds two module rows (upper and lower half blocks). */
    for (int y = 0; y < size; y += 2) {
        for (int x = 0; x < size; x++) {
            bool top = true, bottom = true; /* light */
            int qx = x - QR_QUIET, qy = y - QR_QUIET;
            if (qx >= 0 && qx < w && qy >= 0 && qy < w)
                top = !(qr->data[qy * w + qx] & 1);
            if (qx >= 0 && qx < w && qy + 1 >= 0 && qy + 1 < w)
                bottom = !(qr->data[(qy + 1) * w + qx] & 1);
            const char *glyph = top && bottom ? "\xE2\x96\x88" /* U+2588 full block */
                                : top         ? "\xE2\x96\x80" /* U+2580 upper half */
                                : bottom      ? "\xE2\x96\x84" /* U+2584 lower half */
                                              : " ";
            rp_buf_append_str(out, glyph);
        }
        rp_buf_append_str(out, "\n");
    }
    QRcode_free(qr);
    return out->data != NULL ? 0 : rp_err(RP_ENOMEM, "QR code text");
}

/* ---- trust and ping --------------------------------------------------------------- */

/* How this login trusts the proxy, and the previous profile of that proxy if any. */
struct login_ctx {
    const struct tsh_globals *g;
    struct tsh_web w;
    struct tsh_ping ping;
    struct tsh_profile old;
    bool have_old;
    char proxy[TSH_NAME_MAX];
};

static int login_prepare(struct login_ctx *lc, const struct tsh_globals *g, const char *proxy)
{
    memset(lc, 0, sizeof *lc);
    lc->g = g;
    snprintf(lc->proxy, sizeof lc->proxy, "%s", proxy);
    int rv = tsh_profile_load(g->home, proxy, &lc->old);
    lc->have_old = (rv == 0 || rv == RP_EDENIED) && rp_file_exists(lc->old.ca_path);
    lc->w.proxy = lc->proxy;
    /* What the user says on this command line wins over what the profile remembers. */
    if (g->ca_pin != NULL) {
        lc->w.ca_pin = g->ca_pin;
    } else if (g->insecure) {
        lc->w.insecure = true;
        fprintf(stderr,
                "WARNING: --insecure: the proxy's certificate is not checked; anyone between "
                "you and %s can read your password. Use it only for a test cluster.\n",
                proxy);
    } else if (lc->have_old) {
        lc->w.ca_path = lc->old.ca_path;
    }
    if ((rv = tsh_web_ping(&lc->w, &lc->ping)) != 0) {
        fprintf(stderr, "tsh login: %s\n", rp_errmsg());
        return 1;
    }
    char warn[1024];
    if (!g->skip_version_check &&
        tsh_version_warning(rp_version_self(), lc->ping.server_version, lc->ping.min_client_version,
                            warn, sizeof warn))
        fprintf(stderr, "%s", warn);
    return 0;
}

/* ---- the login itself --------------------------------------------------------------- */

static const char *jstr(json_t *o, const char *key)
{
    return json_string_value(json_object_get(o, key));
}

/* The first string of the array @key of @o. */
static const char *jfirst(json_t *o, const char *key)
{
    return json_string_value(json_array_get(json_object_get(o, key), 0));
}

/* What the proxy answered, checked: the X.509 certificate is for @user and signed by
 * the CA that came with it, and that CA is the one this login trusts. */
struct issued {
    X509 *cert, *ca;
    char ca_pin[96];
    char cluster[TSH_NAME_MAX];
    struct rp_identity id;
};

static void issued_free(struct issued *is)
{
    X509_free(is->cert);
    X509_free(is->ca);
    rp_identity_free(&is->id);
}

static int check_issued(struct login_ctx *lc, const char *user, EVP_PKEY *tls_key, json_t *a,
                        struct issued *is)
{
    json_t *signer = json_array_get(json_object_get(a, "host_signers"), 0);
    const char *tls = jstr(a, "tls_cert"), *ssh = jstr(a, "cert");
    const char *ca_pem = jfirst(signer, "tls_certs");
    if (tls == NULL || ssh == NULL || ca_pem == NULL || jfirst(signer, "authorized_keys") == NULL)
        return rp_err(RP_EPROTO, "the proxy's answer lacks cert, tls_cert or host_signers[0] "
                                 "(tls_certs, authorized_keys)");
    /* One line of our key's certificate type: it goes to a file ssh reads as such. */
    const char *want_type = "ssh-ed25519-cert-v01@openssh.com ";
    if (strncmp(ssh, want_type, strlen(want_type)) != 0 || strpbrk(ssh, "\r\n") != NULL ||
        strlen(ssh) > 16000)
        return rp_err(RP_EPROTO, "the proxy's SSH certificate is not one ssh-ed25519-cert-v01 "
                                 "line");
    int rv;
    if ((rv = rp_tls_cert_from_pem(tls, strlen(tls), &is->cert)) != 0 ||
        (rv = rp_tls_cert_from_pem(ca_pem, strlen(ca_pem), &is->ca)) != 0)
        return rp_err(rv, "the proxy's answer: %s", rp_errmsg());
    EVP_PKEY *ca_key = X509_get0_pubkey(is->ca);
    if (ca_key == NULL || X509_verify(is->cert, ca_key) != 1)
        return rp_err(RP_ETLS, "the certificate the proxy returned is not signed by the cluster "
                               "CA it returned with it");
    if (X509_check_private_key(is->cert, tls_key) != 1)
        return rp_err(RP_EPROTO, "the X.509 certificate the proxy returned is not for the key "
                                 "tsh sent");
    if ((rv = rp_tls_ca_pin(is->ca, is->ca_pin, sizeof is->ca_pin)) != 0)
        return rv;
    const char *want = lc->w.ca_pin != NULL ? lc->w.ca_pin : lc->have_old ? lc->old.ca_pin : NULL;
    if (want != NULL && want[0] != '\0' && strcasecmp(want, is->ca_pin) != 0)
        return rp_err(RP_ETLS,
                      "the cluster CA changed: it was %s, the proxy now presents %s; if the "
                      "cluster was rebuilt on purpose, run tsh logout --proxy=%s and log in "
                      "with --ca-pin",
                      want, is->ca_pin, lc->proxy);
    if ((rv = rp_identity_from_cert(is->cert, &is->id)) != 0)
        return rv;
    if (is->id.name == NULL || strcmp(is->id.name, user) != 0)
        return rp_err(RP_EPROTO, "the proxy returned a certificate for '%s', not '%s'",
                      is->id.name ? is->id.name : "", user);
    const char *cluster = is->id.cluster;
    if (cluster == NULL || cluster[0] == '\0')
        cluster = jstr(signer, "cluster_name");
    if (cluster == NULL || cluster[0] == '\0')
        cluster = lc->ping.cluster_name;
    snprintf(is->cluster, sizeof is->cluster, "%s", cluster);
    return 0;
}

/* Writes the key files of @p from the fresh keys and the checked answer. */
static int write_files(struct tsh_profile *p, EVP_PKEY *ssh_key, EVP_PKEY *tls_key, json_t *a,
                       const struct issued *is)
{
    char *priv = NULL, *pub = NULL, *tls_priv = NULL, *ca_pem = NULL;
    struct rp_buf kh;
    int rv;
    rp_buf_init(&kh);
    if ((rv = rp_ssh_privkey_format(ssh_key, p->user, &priv)) != 0 ||
        (rv = rp_ssh_pubkey_format(ssh_key, p->user, &pub)) != 0 ||
        (rv = rp_tls_key_to_pem(tls_key, &tls_priv)) != 0 ||
        (rv = rp_tls_cert_to_pem(is->ca, &ca_pem)) != 0)
        goto out;
    const char *ssh_cert = jstr(a, "cert"), *x509 = jstr(a, "tls_cert");
    json_t *signers = json_object_get(a, "host_signers");
    size_t i, j;
    json_t *s, *line;
    json_array_foreach(signers, i, s)
    {
        json_array_foreach(json_object_get(s, "authorized_keys"), j, line)
        {
            const char *l = json_string_value(line);
            if (l == NULL || strpbrk(l, "\r\n") != NULL)
                continue;
            rp_buf_printf(&kh, "@cert-authority * %s\n", l);
        }
    }
    char pubnl[8192], certnl[16384];
    snprintf(pubnl, sizeof pubnl, "%s\n", pub);
    snprintf(certnl, sizeof certnl, "%s\n", ssh_cert);
    if ((rv = tsh_write_private(p->key_path, priv, strlen(priv))) != 0 ||
        (rv = tsh_write_private(p->pub_path, pubnl, strlen(pubnl))) != 0 ||
        (rv = tsh_write_private(p->cert_path, certnl, strlen(certnl))) != 0 ||
        (rv = tsh_write_private(p->x509_path, x509, strlen(x509))) != 0 ||
        (rv = tsh_write_private(p->tls_key_path, tls_priv, strlen(tls_priv))) != 0 ||
        (rv = tsh_write_private(p->ca_path, ca_pem, strlen(ca_pem))) != 0 ||
        (rv = tsh_write_private(p->known_hosts_path, kh.data ? (char *)kh.data : "", kh.len)) != 0)
        goto out;
out:
    if (priv != NULL)
        OPENSSL_cleanse(priv, strlen(priv));
    if (tls_priv != NULL)
        OPENSSL_cleanse(tls_priv, strlen(tls_priv));
    free(priv);
    free(pub);
    free(tls_priv);
    free(ca_pem);
    rp_buf_free(&kh);
    return rv;
}

/* The login with a known password and code (@otp NULL or ""): 0 or 1 after printing. */
static int do_login(struct login_ctx *lc, const char *user, const char *password, const char *otp,
                    uint64_t ttl_ms)
{
    EVP_PKEY *ssh_key = NULL, *tls_key = NULL;
    char *pub = NULL, *tls_pub = NULL;
    json_t *req = NULL, *a = NULL;
    struct issued is;
    struct tsh_profile p;
    int rv, status = 1;
    memset(&is, 0, sizeof is);
    if ((rv = rp_ssh_keygen(RP_SSH_KEY_ED25519, &ssh_key)) != 0 ||
        (tls_key = rp_tls_keygen()) == NULL ||
        (rv = rp_ssh_pubkey_format(ssh_key, user, &pub)) != 0 ||
        (rv = rp_tls_pubkey_to_pem(tls_key, &tls_pub)) != 0) {
        fprintf(stderr, "tsh login: making keys: %s\n", rp_errmsg());
        goto out;
    }
    req = json_pack("{s:s, s:s, s:s, s:s}", "user", user, "password", password, "pub_key", pub,
                    "tls_pub_key", tls_pub);
    if (req == NULL) {
        fprintf(stderr, "tsh login: the request cannot be encoded (is the user name UTF-8?)\n");
        goto out;
    }
    if (otp != NULL && otp[0] != '\0')
        json_object_set_new(req, "otp_token", json_string(otp));
    if (ttl_ms > 0)
        json_object_set_new(req, "ttl", json_integer((json_int_t)(ttl_ms * 1000000)));
    rv = tsh_web_call(&lc->w, "POST", "/webapi/ssh/certs", req, &a, NULL);
    if (rv == RP_EDENIED && strstr(rp_errmsg(), "code") != NULL && (otp == NULL || !otp[0])) {
        fprintf(stderr,
                "tsh login: %s (proxy %s, user %s): give the code of your authenticator app when "
                "asked, or on the line after the password on standard input\n",
                rp_errmsg(), lc->proxy, user);
        goto out;
    }
    if (rv == RP_EDENIED) {
        fprintf(stderr,
                "tsh login: %s (proxy %s, user %s): check the user name, password%s; an "
                "administrator can reset them with tctl users reset %s\n",
                rp_errmsg(), lc->proxy, user, otp != NULL && otp[0] ? " and code" : "", user);
        goto out;
    }
    if (rv != 0) {
        fprintf(stderr, "tsh login: %s\n", rp_errmsg());
        goto out;
    }
    if ((rv = check_issued(lc, user, tls_key, a, &is)) != 0) {
        fprintf(stderr, "tsh login: %s\n", rp_errmsg());
        goto out;
    }
    /* The previous profile of this proxy goes when the new user differs: one user per
     * proxy, and no keys of a user who is no longer logged in. */
    if (lc->have_old && strcmp(lc->old.user, user) != 0)
        tsh_profile_remove(lc->g->home, lc->proxy, NULL, 0);
    memset(&p, 0, sizeof p);
    snprintf(p.proxy, sizeof p.proxy, "%s", lc->proxy);
    snprintf(p.user, sizeof p.user, "%s", user);
    snprintf(p.cluster, sizeof p.cluster, "%s", is.cluster);
    snprintf(p.ca_pin, sizeof p.ca_pin, "%s", is.ca_pin);
    for (size_t i = 0; i < is.id.n_logins && p.n_logins < TSH_MAX_LOGINS; i++)
        snprintf(p.logins[p.n_logins++], TSH_NAME_MAX, "%s", is.id.logins[i]);
    p.valid_before_ms = is.id.not_after > 0 ? (uint64_t)is.id.not_after * 1000 : 0;
    if ((rv = tsh_profile_set_paths(&p, lc->g->home)) != 0 ||
        (rv = write_files(&p, ssh_key, tls_key, a, &is)) != 0 || (rv = tsh_profile_save(&p)) != 0) {
        fprintf(stderr, "tsh login: saving the profile: %s\n", rp_errmsg());
        goto out;
    }
    struct tsh_profile loaded;
    if (tsh_profile_load(lc->g->home, lc->proxy, &loaded) != 0) {
        fprintf(stderr, "tsh login: the profile just written does not load: %s\n", rp_errmsg());
        goto out;
    }
    tsh_status_print(stdout, &loaded, true);
    const char *refused = jstr(a, "ssh_refused");
    if (refused != NULL && refused[0] != '\0')
        fprintf(stderr,
                "WARNING: your certificate grants no SSH login: %s (ask an administrator to fix "
                "your roles)\n",
                refused);
    status = 0;
out:
    EVP_PKEY_free(ssh_key);
    EVP_PKEY_free(tls_key);
    free(pub);
    free(tls_pub);
    json_decref(req);
    json_decref(a);
    issued_free(&is);
    return status;
}

static void default_user(const struct tsh_globals *g, const struct login_ctx *lc, char *out,
                         size_t outlen)
{
    const char *u = g->user;
    if (u == NULL && lc != NULL && lc->have_old)
        u = lc->old.user;
    if (u == NULL) {
        struct passwd *pw = getpwuid(getuid());
        u = pw != NULL ? pw->pw_name : getenv("USER");
    }
    snprintf(out, outlen, "%s", u != NULL ? u : "");
}

static bool six_digits(const char *s)
{
    return strlen(s) == RP_TOTP_DIGITS && strspn(s, "0123456789") == RP_TOTP_DIGITS;
}

static int read_otp(const char *what, char *code, size_t codelen)
{
    char prompt[160];
    snprintf(prompt, sizeof prompt, "Enter the 6-digit code of your authenticator app%s: ", what);
    if (tsh_read_line(prompt, code, codelen) != 0) {
        fprintf(stderr, "tsh login: reading the code: %s\n", rp_errmsg());
        return 1;
    }
    if (!six_digits(code)) {
        fprintf(stderr,
                "tsh login: the code must be 6 digits, as your authenticator app shows it\n");
        return 1;
    }
    return 0;
}

/* "optional" (Teleport's word when each user may or may not have enrolled a second
 * factor): the proxy cannot say whether this user has one, so tsh asks, and an empty
 * answer (or the end of standard input after the password) means none. */
static int read_optional_otp(char *code, size_t codelen)
{
    int rv = tsh_read_line("Enter the 6-digit code of your authenticator app (press Enter if "
                           "you have none): ",
                           code, codelen);
    if (rv == RP_EIO) {
        code[0] = '\0';
        return 0;
    }
    if (rv != 0) {
        fprintf(stderr, "tsh login: reading the code: %s\n", rp_errmsg());
        return 1;
    }
    if (code[0] != '\0' && !six_digits(code)) {
        fprintf(stderr,
                "tsh login: the code must be 6 digits, as your authenticator app shows it\n");
        return 1;
    }
    return 0;
}

int tsh_login_interactive(const struct tsh_globals *g, const char *proxy, const char *user,
                          uint64_t ttl_ms)
{
    struct login_ctx lc;
    char name[TSH_NAME_MAX], password[1024], otp[16] = "", prompt[TSH_NAME_MAX + 64];
    if (login_prepare(&lc, g, proxy) != 0)
        return 1;
    if (user == NULL) {
        default_user(g, &lc, name, sizeof name);
        user = name;
    }
    if (user[0] == '\0') {
        fprintf(stderr, "tsh login: no user name: pass --user=NAME\n");
        return 1;
    }
    snprintf(prompt, sizeof prompt, "Enter password for Raftport user %s: ", user);
    if (tsh_read_secret(prompt, password, sizeof password) != 0) {
        fprintf(stderr,
                "tsh login: reading the password: %s (pipe it on standard input or type it "
                "on a terminal)\n",
                rp_errmsg());
        return 1;
    }
    int rv = 1;
    if (strcmp(lc.ping.second_factor, "otp") == 0 || strcmp(lc.ping.second_factor, "on") == 0) {
        if (read_otp("", otp, sizeof otp) != 0)
            goto out;
    } else if (strcmp(lc.ping.second_factor, "off") != 0 &&
               read_optional_otp(otp, sizeof otp) != 0) {
        goto out;
    }
    rv = do_login(&lc, user, password, otp, ttl_ms);
out:
    OPENSSL_cleanse(password, sizeof password);
    OPENSSL_cleanse(otp, sizeof otp);
    return rv;
}

/* ---- invites ------------------------------------------------------------------------ */

static bool token_ok(const char *t)
{
    size_t n = strlen(t);
    return n > 0 && n < 128 &&
           strspn(t, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") == n;
}

/* The step (now - 1 .. now + 1) whose code is @code, or 0 if none. */
static uint64_t step_of_code(const uint8_t *secret, const char *code)
{
    uint64_t now = rp_totp_step(rp_now_ms());
    for (uint64_t s = now - 1; s <= now + 1; s++) {
        char c[RP_TOTP_DIGITS + 1];
        if (rp_totp_code(secret, RP_TOTP_SECRET_BYTES, s, c) == 0 && strcmp(c, code) == 0)
            return s;
    }
    return 0;
}

/* @no_otp: set only the password (a cluster whose second factor is "optional" allows
 * it; scripts such as the demo use it). */
static int login_invite(const struct tsh_globals *g, const char *proxy, const char *token,
                        uint64_t ttl_ms, bool no_otp)
{
    struct login_ctx lc;
    char user[TSH_NAME_MAX] = "", second_factor[16], path[256];
    char password[1024] = "", again[1024] = "", code[16] = "", next[RP_TOTP_DIGITS + 1] = "";
    uint8_t secret[RP_TOTP_SECRET_BYTES];
    char secret_b32[RP_BASE32_ENCODED_LEN(RP_TOTP_SECRET_BYTES)] = "";
    struct rp_buf uri, qr;
    json_t *info = NULL, *req = NULL, *ans = NULL;
    int status = 1, rv;
    rp_buf_init(&uri);
    rp_buf_init(&qr);
    if (!token_ok(token)) {
        fprintf(stderr,
                "tsh login: --invite=%s is not an invite token (letters, digits, '-' and "
                "'_', as tctl users add prints it)\n",
                token);
        return 2;
    }
    if (login_prepare(&lc, g, proxy) != 0)
        return 1;
    snprintf(second_factor, sizeof second_factor, "%s", lc.ping.second_factor);
    snprintf(path, sizeof path, "/webapi/invite/%s", token);
    rv = g->user != NULL ? RP_ENOTFOUND : tsh_web_call(&lc.w, "GET", path, NULL, &info, NULL);
    if (rv == 0) {
        const char *u = jstr(info, "user"), *sf = jstr(info, "second_factor");
        if (u != NULL)
            snprintf(user, sizeof user, "%s", u);
        if (sf != NULL)
            snprintf(second_factor, sizeof second_factor, "%s", sf);
    } else if (g->user == NULL) {
        fprintf(stderr,
                "tsh login: the proxy does not say whose invite this is (%s): pass --user=NAME, "
                "the name tctl users add was given\n",
                rp_errmsg());
        goto out;
    }
    if (g->user != NULL) {
        if (user[0] != '\0' && strcmp(user, g->user) != 0) {
            fprintf(stderr, "tsh login: the invite is for user %s, not %s\n", user, g->user);
            goto out;
        }
        snprintf(user, sizeof user, "%s", g->user);
    }
    printf("Setting the password of Raftport user %s on cluster %s.\n", user, lc.ping.cluster_name);
    fflush(stdout);
    if (tsh_read_secret("New password: ", password, sizeof password) != 0) {
        fprintf(stderr, "tsh login: reading the password: %s\n", rp_errmsg());
        goto out;
    }
    if (isatty(STDIN_FILENO)) {
        if (tsh_read_secret("Repeat the password: ", again, sizeof again) != 0 ||
            strcmp(password, again) != 0) {
            fprintf(stderr, "tsh login: the two passwords differ; run tsh login --invite again\n");
            goto out;
        }
    }
    req = json_pack("{s:s, s:s}", "token", token, "password", password);
    if (req == NULL)
        goto out;
    /* "optional": each user chooses; an invite enrols one, as the issue asks. */
    bool otp = strcmp(second_factor, "off") != 0;
    if (no_otp && strcmp(second_factor, "optional") != 0 && otp) {
        fprintf(stderr,
                "tsh login: --no-otp: the cluster requires a second factor (%s); "
                "enrol one instead\n",
                second_factor);
        goto out;
    }
    otp = otp && !no_otp;
    if (otp) {
        if (rp_totp_generate_secret(secret) != 0 ||
            rp_base32_encode(secret, sizeof secret, secret_b32, sizeof secret_b32) != 0 ||
            rp_totp_uri(lc.ping.cluster_name, user, secret, sizeof secret, &uri) != 0 ||
            tsh_qr_render((const char *)uri.data, &qr) != 0) {
            fprintf(stderr, "tsh login: making the TOTP secret: %s\n", rp_errmsg());
            goto out;
        }
        printf("\nScan this QR code with your authenticator app (Google Authenticator, andOTP, "
               "1Password, ...):\n\n%.*s\n"
               "or add this URI by hand:\n%s\n\n",
               (int)qr.len, (const char *)qr.data, (const char *)uri.data);
        fflush(stdout);
        if (read_otp(" for it", code, sizeof code) != 0)
            goto out;
        json_object_set_new(req, "totp_secret", json_string(secret_b32));
        json_object_set_new(req, "otp_token", json_string(code));
    }
    if ((rv = tsh_web_call(&lc.w, "PUT", "/webapi/invite", req, &ans, NULL)) != 0) {
        fprintf(stderr, "tsh login: redeeming the invite: %s\n", rp_errmsg());
        goto out;
    }
    printf("Password set%s for %s.\n", otp ? " and authenticator enrolled" : "", user);
    if (otp) {
        /* A code logs in once: the one just typed is spent. tsh holds the secret, so it
         * takes the next step's code itself instead of asking again. */
        uint64_t used = step_of_code(secret, code);
        if (used == 0) {
            if (read_otp(" (a new one)", next, sizeof next) != 0)
                goto out;
        } else {
            uint64_t now_ms = rp_now_ms();
            if (rp_totp_step(now_ms) <= used) {
                uint64_t wait = (used + 1) * RP_TOTP_PERIOD_S * 1000 - now_ms;
                printf("Waiting %llu s for the next code of your authenticator to log in...\n",
                       (unsigned long long)(wait + 999) / 1000);
                fflush(stdout);
                /* Past the step boundary by a little, in case our clock and the
                 * step arithmetic round differently. */
                uint64_t until = rp_mono_ms() + wait + 100;
                while (rp_totp_step(rp_now_ms()) <= used && rp_mono_ms() < until + 2000) {
                    uint64_t left = until > rp_mono_ms() ? until - rp_mono_ms() : 100;
                    struct timespec ts = {(time_t)(left / 1000), (long)(left % 1000) * 1000000L};
                    nanosleep(&ts, NULL);
                }
            }
            rp_totp_code(secret, sizeof secret, rp_totp_step(rp_now_ms()), next);
        }
    }
    status = do_login(&lc, user, password, next, ttl_ms);
out:
    OPENSSL_cleanse(password, sizeof password);
    OPENSSL_cleanse(again, sizeof again);
    OPENSSL_cleanse(code, sizeof code);
    OPENSSL_cleanse(next, sizeof next);
    OPENSSL_cleanse(secret, sizeof secret);
    OPENSSL_cleanse(secret_b32, sizeof secret_b32);
    if (uri.data != NULL)
        OPENSSL_cleanse(uri.data, uri.cap);
    if (qr.data != NULL)
        OPENSSL_cleanse(qr.data, qr.cap);
    rp_buf_free(&uri);
    rp_buf_free(&qr);
    json_decref(info);
    json_decref(req);
    json_decref(ans);
    return status;
}

/* ---- the commands --------------------------------------------------------------------- */

enum { O_TTL = 256, O_INVITE, O_NO_OTP };

int tsh_cmd_login(int argc, char **argv, const struct tsh_globals *gin)
{
    static const struct option own[] = {
        {"ttl", required_argument, NULL, O_TTL},
        {"invite", required_argument, NULL, O_INVITE},
        {"no-otp", no_argument, NULL, O_NO_OTP},
        {NULL, 0, NULL, 0},
    };
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    char **args;
    int c, nargs, rv;
    uint64_t ttl_ms = 0;
    const char *invite = NULL;
    bool no_otp = false;
    tsh_flags_init(&f, &g, argc, argv, own, NULL, false);
    while ((c = tsh_flags_next(&f)) > 0) {
        if (c == O_TTL) {
            if (rp_parse_duration_ms(optarg, &ttl_ms) != 0 || ttl_ms < 60000) {
                tsh_usage_error(&f, "--ttl=%s: expected a duration of at least 1m, as 8h or 30m",
                                optarg);
                return 2;
            }
        } else if (c == O_INVITE) {
            invite = optarg;
        } else if (c == O_NO_OTP) {
            no_otp = true;
        }
    }
    if ((rv = tsh_flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    char current[TSH_NAME_MAX];
    const char *proxy = g.proxy;
    if (proxy == NULL && tsh_profile_current(g.home, current, sizeof current) == 0)
        proxy = current;
    if (proxy == NULL)
        return tsh_usage_error(&f, "--proxy=HOST:PORT is needed (the proxy's web address, e.g. "
                                   "proxy.example.com:3080)");
    if (no_otp && invite == NULL)
        return tsh_usage_error(&f, "--no-otp goes with --invite=TOKEN");
    if (invite != NULL)
        return login_invite(&g, proxy, invite, ttl_ms, no_otp);
    return tsh_login_interactive(&g, proxy, g.user, ttl_ms);
}

int tsh_cmd_logout(int argc, char **argv, const struct tsh_globals *gin)
{
    struct tsh_globals g = *gin;
    struct tsh_flags f;
    char **args, removed[TSH_NAME_MAX];
    int c, nargs, rv;
    tsh_flags_init(&f, &g, argc, argv, NULL, NULL, false);
    while ((c = tsh_flags_next(&f)) > 0) {
    }
    if ((rv = tsh_flags_done(&f, c, 0, 0, &args, &nargs)) >= 0)
        return rv;
    struct tsh_profile p;
    rv = tsh_profile_load(g.home, g.proxy, &p);
    bool named = (rv == 0 || rv == RP_EDENIED) && p.user[0] != '\0';
    char user[TSH_NAME_MAX];
    snprintf(user, sizeof user, "%s", named ? p.user : "");
    if ((rv = tsh_profile_remove(g.home, g.proxy, removed, sizeof removed)) != 0) {
        fprintf(stderr, "tsh logout: %s\n", rp_errmsg());
        return 1;
    }
    if (user[0] != '\0')
        printf("Logged out %s from %s.\n", user, removed);
    else
        printf("Logged out from %s.\n", removed);
    return 0;
}

int tsh_require_profile(const struct tsh_globals *g, const char *cmd, struct tsh_profile *p)
{
    int rv = tsh_profile_load(g->home, g->proxy, p);
    if (rv == 0)
        return 0;
    fprintf(stderr, "%s: %s\n", cmd, rp_errmsg());
    if (rv != RP_EDENIED || !isatty(STDIN_FILENO) || !isatty(STDERR_FILENO))
        return 1;
    char answer[16], proxy[TSH_NAME_MAX], user[TSH_NAME_MAX];
    snprintf(proxy, sizeof proxy, "%s", p->proxy);
    snprintf(user, sizeof user, "%s", p->user);
    if (tsh_read_line("Log in again now? [Y/n] ", answer, sizeof answer) != 0 ||
        (answer[0] != '\0' && answer[0] != 'y' && answer[0] != 'Y'))
        return 1;
    if (tsh_login_interactive(g, proxy, user, 0) != 0)
        return 1;
    if ((rv = tsh_profile_load(g->home, proxy, p)) != 0) {
        fprintf(stderr, "%s: %s\n", cmd, rp_errmsg());
        return 1;
    }
    return 0;
}
