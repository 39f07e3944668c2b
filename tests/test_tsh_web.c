/* tests/test_tsh_web.c: how tsh trusts a proxy (tsh/web.c) and reads its answers,
 * against a real TLS server: `openssl s_server -HTTP` serving files that hold whole
 * HTTP answers, with certificates from a cluster CA made here.
 *
 * The rules checked: a CA pin trusts only a chain holding that CA, and then only a
 * Proxy identity (a node's certificate from the same CA must not pass for the proxy);
 * a profile's CA file is trusted the same way; without either, the system roots
 * refuse the cluster CA and the error says what to pass; --insecure checks nothing;
 * HTTP errors become RP_E* codes with the proxy's message. */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lib/errors.h"
#include "lib/tls.h"
#include "lib/util.h"
#include "tsh/tsh.h"

static char dir[256], proxy_addr[64], ca_path[300], pin[96], other_pin[96];
static pid_t server;

static void write_pem(const char *name, X509 *cert, EVP_PKEY *key)
{
    char path[400];
    snprintf(path, sizeof path, "%s/%s.pem", dir, name);
    cr_assert_eq(rp_tls_write_cert(path, cert), 0);
    if (key != NULL) {
        snprintf(path, sizeof path, "%s/%s.key", dir, name);
        cr_assert_eq(rp_tls_write_key(path, key), 0);
    }
}

static void issue(EVP_PKEY *ca_key, X509 *ca, const char *name, enum rp_system_role role)
{
    EVP_PKEY *key = rp_tls_keygen();
    X509 *cert = NULL;
    struct rp_identity id = {
        .name = "host-1", .system_role = role, .host_id = "host-1", .cluster = "example"};
    const char *sans[] = {"127.0.0.1", "localhost"};
    cr_assert_eq(rp_tls_issue(ca_key, ca, key, &id, sans, 2, 3600, &cert), 0, "%s", rp_errmsg());
    write_pem(name, cert, key);
    X509_free(cert);
    EVP_PKEY_free(key);
}

static void write_answer(const char *path, const char *status, const char *extra_headers,
                         const char *body)
{
    char full[512], text[4096];
    snprintf(full, sizeof full, "%s/www/%s", dir, path);
    int n = snprintf(text, sizeof text,
                     "HTTP/1.0 %s\r\nContent-Type: application/json\r\n%sContent-Length: %zu\r\n"
                     "\r\n%s",
                     status, extra_headers, strlen(body), body);
    char sub[512];
    snprintf(sub, sizeof sub, "%s", full);
    *strrchr(sub, '/') = '\0';
    cr_assert_eq(rp_mkdir_p(sub, 0700), 0);
    cr_assert_eq(rp_write_file(full, text, (size_t)n, 0600), 0);
}

static void setup(void)
{
    snprintf(dir, sizeof dir, "/tmp/test_tsh_web.XXXXXX");
    cr_assert_not_null(mkdtemp(dir));
    EVP_PKEY *ca_key = NULL, *other_key = NULL;
    X509 *ca = NULL, *other = NULL;
    cr_assert_eq(rp_tls_ca_create("example", &ca_key, &ca), 0);
    cr_assert_eq(rp_tls_ca_create("other", &other_key, &other), 0);
    cr_assert_eq(rp_tls_ca_pin(ca, pin, sizeof pin), 0);
    cr_assert_eq(rp_tls_ca_pin(other, other_pin, sizeof other_pin), 0);
    write_pem("ca", ca, NULL);
    snprintf(ca_path, sizeof ca_path, "%s/ca.pem", dir);
    issue(ca_key, ca, "proxy", RP_SYS_PROXY);
    issue(ca_key, ca, "node", RP_SYS_NODE);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(other_key);
    X509_free(ca);
    X509_free(other);
    write_answer(
        "webapi/ping", "200 OK", "",
        "{\"cluster_name\":\"example\",\"server_version\":\"0.1.0\",\"min_client_version\":"
        "\"0.0.0\",\"auth\":{\"type\":\"local\",\"second_factor\":\"optional\"},"
        "\"proxy\":{\"ssh\":{\"listen_addr\":\"0.0.0.0:3023\",\"ssh_public_addr\":\"\"},"
        "\"tls_routing_enabled\":true}}");
    write_answer("webapi/denied", "401 Unauthorized", "",
                 "{\"error\":{\"message\":\"invalid user name or password\"}}");
    write_answer("webapi/slow", "429 Too Many Requests", "Retry-After: 17\r\n",
                 "{\"error\":{\"message\":\"too many login attempts from 127.0.0.1\"}}");
    write_answer("webapi/garbage", "200 OK", "", "<html>not json</html>");
}

static void teardown(void)
{
    if (server > 0) {
        kill(server, SIGKILL);
        waitpid(server, NULL, 0);
        server = 0;
    }
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    cr_assert_eq(system(cmd), 0);
}

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof a;
    cr_assert_eq(bind(fd, (struct sockaddr *)&a, sizeof a), 0);
    cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0);
    close(fd);
    return ntohs(a.sin_port);
}

/* Serves the www/ directory over TLS with the certificate @name (and the CA as its
 * chain), until the test ends. */
static void serve(const char *name)
{
    int port = free_port();
    snprintf(proxy_addr, sizeof proxy_addr, "127.0.0.1:%d", port);
    char accept[32], cert[400], key[400], www[300];
    snprintf(accept, sizeof accept, "127.0.0.1:%d", port);
    snprintf(cert, sizeof cert, "%s/%s.pem", dir, name);
    snprintf(key, sizeof key, "%s/%s.key", dir, name);
    snprintf(www, sizeof www, "%s/www", dir);
    server = fork();
    cr_assert_geq(server, 0);
    if (server == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (chdir(www) != 0)
            _exit(127);
        int devnull = open("/dev/null", O_WRONLY);
        dup2(devnull, 1);
        dup2(devnull, 2);
        execlp("openssl", "openssl", "s_server", "-quiet", "-accept", accept, "-cert", cert, "-key",
               key, "-cert_chain", ca_path, "-HTTP", (char *)NULL);
        _exit(127);
    }
    /* Ready when it accepts. */
    uint64_t deadline = rp_mono_ms() + 10000;
    for (;;) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)port),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        int ok = connect(fd, (struct sockaddr *)&a, sizeof a) == 0;
        close(fd);
        if (ok)
            break;
        cr_assert_lt(rp_mono_ms(), deadline, "openssl s_server did not start on %d", port);
        usleep(20000);
    }
}

TestSuite(tsh_web, .init = setup, .fini = teardown, .timeout = 60);

Test(tsh_web, cluster_ca_pin_trusts_the_proxy_and_ping_is_read)
{
    serve("proxy");
    struct tsh_web w = {.proxy = proxy_addr, .ca_pin = pin};
    struct tsh_ping p;
    cr_assert_eq(tsh_web_ping(&w, &p), 0, "%s", rp_errmsg());
    cr_assert_str_eq(p.cluster_name, "example");
    cr_assert_str_eq(p.server_version, "0.1.0");
    cr_assert_str_eq(p.second_factor, "optional");
    cr_assert_str_eq(p.ssh_listen_addr, "0.0.0.0:3023");
    cr_assert(p.tls_routing_enabled);
}

Test(tsh_web, wrong_pin_is_refused_naming_the_pin)
{
    serve("proxy");
    struct tsh_web w = {.proxy = proxy_addr, .ca_pin = other_pin};
    struct tsh_ping p;
    cr_assert_eq(tsh_web_ping(&w, &p), RP_ETLS);
    cr_assert(strstr(rp_errmsg(), other_pin) && strstr(rp_errmsg(), pin), "%s", rp_errmsg());
}

Test(tsh_web, node_certificate_of_the_cluster_does_not_pass_for_the_proxy)
{
    serve("node");
    struct tsh_web w = {.proxy = proxy_addr, .ca_pin = pin};
    struct tsh_ping p;
    cr_assert_eq(tsh_web_ping(&w, &p), RP_ETLS);
    cr_assert(strstr(rp_errmsg(), "not a Proxy's"), "%s", rp_errmsg());
    struct tsh_web w2 = {.proxy = proxy_addr, .ca_path = ca_path};
    cr_assert_eq(tsh_web_ping(&w2, &p), RP_ETLS);
}

Test(tsh_web, profile_ca_file_trusts_the_proxy)
{
    serve("proxy");
    struct tsh_web w = {.proxy = proxy_addr, .ca_path = ca_path};
    struct tsh_ping p;
    cr_assert_eq(tsh_web_ping(&w, &p), 0, "%s", rp_errmsg());
}

Test(tsh_web, system_roots_refuse_the_cluster_ca_and_say_what_to_pass)
{
    serve("proxy");
    struct tsh_web w = {.proxy = proxy_addr};
    struct tsh_ping p;
    cr_assert_eq(tsh_web_ping(&w, &p), RP_ETLS);
    cr_assert(strstr(rp_errmsg(), "--ca-pin") && strstr(rp_errmsg(), "--insecure"), "%s",
              rp_errmsg());
}

Test(tsh_web, insecure_checks_nothing)
{
    serve("node");
    struct tsh_web w = {.proxy = proxy_addr, .insecure = true};
    struct tsh_ping p;
    cr_assert_eq(tsh_web_ping(&w, &p), 0, "%s", rp_errmsg());
}

Test(tsh_web, http_errors_carry_the_proxys_message)
{
    serve("proxy");
    struct tsh_web w = {.proxy = proxy_addr, .ca_pin = pin};
    json_t *a = NULL;
    long status = 0;
    cr_assert_eq(tsh_web_call(&w, "GET", "/webapi/denied", NULL, &a, &status), RP_EDENIED);
    cr_assert_eq(status, 401);
    cr_assert_str_eq(rp_errmsg(), "invalid user name or password");
    cr_assert_eq(tsh_web_call(&w, "GET", "/webapi/slow", NULL, &a, &status), RP_EBUSY);
    cr_assert(strstr(rp_errmsg(), "too many login attempts") && strstr(rp_errmsg(), "17 seconds"),
              "%s", rp_errmsg());
    cr_assert_eq(tsh_web_call(&w, "GET", "/webapi/garbage", NULL, &a, &status), RP_EPROTO);
    cr_assert(strstr(rp_errmsg(), "not JSON"), "%s", rp_errmsg());
    cr_assert_null(a);
}

Test(tsh_web, unreachable_proxy_says_so)
{
    snprintf(proxy_addr, sizeof proxy_addr, "127.0.0.1:%d", free_port());
    struct tsh_web w = {.proxy = proxy_addr, .ca_pin = pin};
    struct tsh_ping p;
    cr_assert_eq(tsh_web_ping(&w, &p), RP_EUNAVAILABLE);
    cr_assert(strstr(rp_errmsg(), "cannot reach the proxy at"), "%s", rp_errmsg());
}
