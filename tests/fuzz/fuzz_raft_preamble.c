/* tests/fuzz/fuzz_raft_preamble.c: the preamble a Raft peer sends after the TLS
 * handshake (raft/rp_raft.h, rp_raft_preamble_head and rp_raft_preamble_addr).
 *
 * The input is what the accepting side reads: RP_RAFT_PREAMBLE_HEAD_LEN bytes, then as
 * many address bytes as the head announced (the transport reads exactly that many;
 * anything after them belongs to libraft). Our own raft id is 1, as the first member
 * of a cluster has.
 *
 * Checked: an accepted head claims an id other than 0 and ours and announces 1..255
 * address bytes; an accepted address is exactly those bytes, printable, with a port;
 * a refused one leaves the address empty. */
#include "raft/rp_raft.h"
#include "tests/fuzz/check.h"

#define SELF_ID 1

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t id = 0;
    size_t alen = 0;
    char addr[RP_RAFT_PREAMBLE_ADDR_MAX + 1];

    if (size < RP_RAFT_PREAMBLE_HEAD_LEN)
        return 0; /* the transport is still reading (or times out) */
    if (rp_raft_preamble_head(data, SELF_ID, &id, &alen) != 0)
        return 0;
    FUZZ_CHECK(id != 0 && id != SELF_ID);
    FUZZ_CHECK(alen >= 1 && alen <= RP_RAFT_PREAMBLE_ADDR_MAX);
    size_t rest = size - RP_RAFT_PREAMBLE_HEAD_LEN;
    if (rest < alen)
        return 0;
    /* An exact-size copy: the transport reads into a buffer of alen bytes. */
    uint8_t *p = fuzz_dup(data + RP_RAFT_PREAMBLE_HEAD_LEN, alen);
    memset(addr, 'x', sizeof addr);
    if (rp_raft_preamble_addr(p, alen, addr) == 0) {
        FUZZ_CHECK(strlen(addr) == alen && memcmp(addr, p, alen) == 0);
        FUZZ_CHECK(strrchr(addr, ':') != NULL);
        for (size_t i = 0; i < alen; i++)
            FUZZ_CHECK(addr[i] > 0x20 && addr[i] < 0x7f);
    } else {
        FUZZ_CHECK(addr[0] == '\0');
    }
    free(p);
    return 0;
}
