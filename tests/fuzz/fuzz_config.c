/* tests/fuzz/fuzz_config.c: raftport.yaml (lib/config.c), read from text.
 *
 * The daemon's configuration is written by an operator, or by a script from values a
 * user supplied; a wrong file must end in a message, never a crash. The text goes
 * through rp_config_load_str over the defaults, then through the cross-field checks
 * of rp_config_validate, and the configuration is freed whatever happened (the header
 * promises it stays valid to free after an error). Short inputs are also tried as a
 * size ("64MB"), the one value parser exported on its own. */
#include "lib/config.h"
#include "tests/fuzz/check.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct rp_config c;

    rp_config_init(&c);
    if (rp_config_load_str(&c, "fuzz.yaml", (const char *)data, size) == 0)
        rp_config_validate(&c);
    rp_config_free(&c);

    if (size <= 64) {
        char *s = fuzz_cstr(data, size);
        uint64_t bytes;
        rp_parse_size(s, &bytes);
        free(s);
    }
    return 0;
}
