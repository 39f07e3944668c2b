/* tests/fuzz/fuzz_agent_cache.c: the node agent's cache file (agent/cache.h).
 *
 * The file is an input from disk: whatever it holds, loading must end in a cache or
 * in RP_EINVAL, never in a crash, and a file refused must leave the cache empty. Most
 * mutations break the checksum, which would keep the fuzzer at the header; so the
 * first byte chooses: even, the rest is the whole file; odd, the rest is a payload
 * that gets a correct header (length, SHA-256) around it, so the fuzzer reaches the
 * msgpack and item checks. A file that loads is used as the SSH server would (lock
 * check, user CAs, the role set of every cached role) and must encode into a file that
 * loads again with the same items. */
#include <openssl/evp.h>

#include "agent/cache.h"
#include "lib/buf.h"
#include "lib/mp.h"
#include "tests/fuzz/check.h"

static void wrap(const uint8_t *payload, size_t n, struct rp_buf *out)
{
    unsigned char sum[32];
    unsigned int len = 0;
    EVP_Digest(payload, n, sum, &len, EVP_sha256(), NULL);
    rp_buf_append(out, "RPAGCACH", 8);
    rp_buf_put_be32(out, 1);
    rp_buf_put_be32(out, 0);
    rp_buf_put_be64(out, n);
    rp_buf_append(out, sum, 32);
    rp_buf_append(out, payload, n);
}

/* Asks what the SSH server asks; answers may be anything but a crash. */
static void exercise(struct agent_cache *c)
{
    struct agent_authority a = agent_cache_authority(c);
    char why[256];
    const char *roles[1] = {"access"};
    int rv = a.lock_check(a.arg, "alice", roles, 1, "root", "host", why, sizeof why);
    FUZZ_CHECK(rv == 0 || rv == RP_EDENIED);
    EVP_PKEY **keys = NULL;
    size_t n = 0;
    if (a.user_cas(a.arg, &keys, &n) == 0) {
        for (size_t i = 0; i < n; i++)
            EVP_PKEY_free(keys[i]);
        free(keys);
    }
    struct rbac_set *set = NULL;
    if (a.role_set(a.arg, roles, 1, "{\"logins\": [\"x\"]}", &set, why, sizeof why) == 0)
        rbac_set_free(set);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    struct rp_buf file;
    rp_buf_init(&file);
    if (data[0] & 1)
        wrap(data + 1, size - 1, &file);
    else
        rp_buf_append(&file, data + 1, size - 1);

    struct agent_cache *c = NULL;
    FUZZ_CHECK(agent_cache_open(&c, NULL) == 0);
    int rv = agent_cache_load_bytes(c, file.data, file.len);
    FUZZ_CHECK(rv == 0 || rv == RP_EINVAL || rv == RP_ETOOBIG);
    if (rv != 0) {
        FUZZ_CHECK(agent_cache_count(c, NULL) == 0);
    } else {
        exercise(c);
        struct rp_buf again;
        rp_buf_init(&again);
        FUZZ_CHECK(agent_cache_encode(c, &again) == 0);
        struct agent_cache *d = NULL;
        FUZZ_CHECK(agent_cache_open(&d, NULL) == 0);
        FUZZ_CHECK(agent_cache_load_bytes(d, again.data, again.len) == 0);
        FUZZ_CHECK(agent_cache_count(d, NULL) == agent_cache_count(c, NULL));
        FUZZ_CHECK(agent_cache_rev(d) == agent_cache_rev(c));
        agent_cache_free(d);
        rp_buf_free(&again);
    }
    agent_cache_free(c);
    rp_buf_free(&file);
    return 0;
}
