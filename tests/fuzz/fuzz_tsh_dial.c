/* tests/fuzz/fuzz_tsh_dial.c: libFuzzer target for what tsh parses of bytes others
 * choose: the proxy's answer to a dial frame (tsh/dial.c), and the command-line forms
 * of scp and -L (tsh/scp.c, tsh/ssh.c), which arrive from scripts and pasted text.
 *
 * Input: byte 0 picks the parser (answer, scp spec, -L spec, host certificate check);
 * the rest is its input. Checked: an accepted answer has every field a caller reads
 * (host id, host key, certificate, hostname, addr: never NULL); a refusal is one of the
 * documented codes with a message; scp specs are either local or have a non-empty
 * node; -L specs have ports in 1..65535 and a non-empty host. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "lib/buf.h"
#include "lib/errors.h"
#include "tests/fuzz/check.h"
#include "tsh/ssh.h"

static char *cstr(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);
    if (s == NULL)
        abort();
    memcpy(s, p, n);
    s[n] = '\0';
    return s;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *in = data + 1;
    size_t n = size - 1;
    switch (data[0] % 4) {
    case 0: {
        struct tsh_dial_answer a;
        int rv = tsh_dial_parse_answer("fuzz-node", in, n, &a);
        if (rv == 0) {
            FUZZ_CHECK(a.host_id != NULL && a.host_key != NULL && a.host_cert != NULL);
            FUZZ_CHECK(a.hostname != NULL && a.addr != NULL);
            tsh_dial_answer_free(&a);
        } else {
            FUZZ_CHECK(rv == RP_ENOTFOUND || rv == RP_EDENIED || rv == RP_EUNAVAILABLE ||
                       rv == RP_EPROTO || rv == RP_EINVAL || rv == RP_ENOMEM);
            FUZZ_CHECK(rp_errmsg()[0] != '\0');
            FUZZ_CHECK(a.host_id == NULL && a.host_key == NULL);
        }
        break;
    }
    case 1: {
        char *s = cstr(in, n);
        struct tsh_scp_spec sp;
        if (tsh_scp_spec_parse(s, &sp) == 0) {
            FUZZ_CHECK(sp.path != NULL);
            FUZZ_CHECK(sp.host == NULL || sp.host[0] != '\0');
            FUZZ_CHECK(sp.login == NULL || (sp.host != NULL && sp.login[0] != '\0'));
            tsh_scp_spec_free(&sp);
        }
        free(s);
        break;
    }
    case 2: {
        char *s = cstr(in, n);
        struct tsh_fwd f;
        if (tsh_fwd_parse(s, &f) == 0) {
            FUZZ_CHECK(f.lport >= 1 && f.lport <= 65535 && f.rport >= 1 && f.rport <= 65535);
            FUZZ_CHECK(f.host[0] != '\0');
        }
        free(s);
        break;
    }
    case 3: {
        /* A certificate line against no trusted CA: never accepted. */
        char *s = cstr(in, n);
        FUZZ_CHECK(tsh_verify_host_cert("", "host-id", s, s) != 0);
        free(s);
        break;
    }
    }
    return 0;
}
