/* tests/test_connlimit.c: per-address counts and the rate-limited refusal log
 * (lib/connlimit.c). */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

#include "lib/connlimit.h"
#include "lib/errors.h"

static struct rp_addr_key v4(const char *ip, uint16_t port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    struct rp_addr_key k;
    rp_addr_key_from_sockaddr((struct sockaddr *)&sa, sizeof sa, &k);
    return k;
}

Test(connlimit, an_address_is_its_ip_without_the_port)
{
    struct rp_addr_key a = v4("127.0.0.2", 4000), b = v4("127.0.0.2", 5000);
    struct rp_addr_key c = v4("127.0.0.1", 4000);
    cr_assert(rp_addr_key_equal(&a, &b));
    cr_assert_not(rp_addr_key_equal(&a, &c));
    char text[64];
    rp_addr_key_format(&a, text, sizeof text);
    cr_assert_str_eq(text, "127.0.0.2");
}

Test(connlimit, a_v4_mapped_v6_peer_counts_as_its_v4_address)
{
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:10.1.2.3", &sa.sin6_addr);
    struct rp_addr_key k, want = v4("10.1.2.3", 1);
    rp_addr_key_from_sockaddr((struct sockaddr *)&sa, sizeof sa, &k);
    cr_assert(rp_addr_key_equal(&k, &want));
}

Test(connlimit, counts_go_up_and_down_per_address)
{
    struct rp_addr_counts c;
    cr_assert_eq(rp_addr_counts_init(&c, 64), 0);
    struct rp_addr_key a = v4("127.0.0.2", 1), b = v4("127.0.0.3", 1);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(rp_addr_counts_add(&c, &a), 0);
    cr_assert_eq(rp_addr_counts_add(&c, &b), 0);
    cr_assert_eq(rp_addr_counts_get(&c, &a), 5);
    cr_assert_eq(rp_addr_counts_get(&c, &b), 1);
    rp_addr_counts_remove(&c, &b);
    rp_addr_counts_remove(&c, &b); /* below zero: nothing */
    cr_assert_eq(rp_addr_counts_get(&c, &b), 0);
    cr_assert_eq(rp_addr_counts_get(&c, &a), 5);
    cr_assert_eq(c.used, 1);
    rp_addr_counts_free(&c);
}

Test(connlimit, the_table_refuses_addresses_beyond_its_capacity_and_survives_churn)
{
    struct rp_addr_counts c;
    cr_assert_eq(rp_addr_counts_init(&c, 100), 0);
    char ip[32];
    for (int round = 0; round < 50; round++) {
        for (int i = 0; i < 100; i++) {
            snprintf(ip, sizeof ip, "10.0.%d.%d", round, i);
            struct rp_addr_key k = v4(ip, 1);
            cr_assert_eq(rp_addr_counts_add(&c, &k), 0, "round %d address %d", round, i);
        }
        struct rp_addr_key extra = v4("192.168.0.1", 1);
        cr_assert_eq(rp_addr_counts_add(&c, &extra), RP_EBUSY);
        /* Remove every other address, check the rest are still found, then all. */
        for (int i = 0; i < 100; i += 2) {
            snprintf(ip, sizeof ip, "10.0.%d.%d", round, i);
            struct rp_addr_key k = v4(ip, 1);
            rp_addr_counts_remove(&c, &k);
        }
        for (int i = 1; i < 100; i += 2) {
            snprintf(ip, sizeof ip, "10.0.%d.%d", round, i);
            struct rp_addr_key k = v4(ip, 1);
            cr_assert_eq(rp_addr_counts_get(&c, &k), 1, "address %s lost", ip);
            rp_addr_counts_remove(&c, &k);
        }
        cr_assert_eq(c.used, 0);
    }
    rp_addr_counts_free(&c);
}

Test(connlimit, refusals_from_one_address_make_one_line_per_minute_with_a_count)
{
    struct rp_refusal_log l;
    rp_refusal_log_init(&l, "test", "test connection");
    struct rp_addr_key a = v4("127.0.0.2", 1);
    uint64_t t = 1000000;
    for (int i = 0; i < 10000; i++)
        rp_refusal_log_note(&l, &a, "too many", t + (uint64_t)i);
    cr_assert_eq(rp_refusal_log_lines(&l), 1, "only the first refusal is logged at once");
    rp_refusal_log_flush(&l, t + 30000);
    cr_assert_eq(rp_refusal_log_lines(&l), 1);
    rp_refusal_log_flush(&l, t + RP_REFUSAL_WINDOW_MS);
    cr_assert_eq(rp_refusal_log_lines(&l), 2, "the count is logged when the minute ends");
    rp_refusal_log_flush(&l, t + 2 * RP_REFUSAL_WINDOW_MS);
    cr_assert_eq(rp_refusal_log_lines(&l), 2, "a quiet minute writes nothing");
    rp_refusal_log_note(&l, &a, "too many", t + 2 * RP_REFUSAL_WINDOW_MS + 1);
    cr_assert_eq(rp_refusal_log_lines(&l), 3, "after a quiet minute a refusal is logged at once");
    rp_refusal_log_destroy(&l);
}

Test(connlimit, many_addresses_cannot_grow_the_log_without_bound)
{
    struct rp_refusal_log l;
    rp_refusal_log_init(&l, "test", "test connection");
    char ip[32];
    uint64_t t = 5000000;
    for (int i = 0; i < 5000; i++) {
        snprintf(ip, sizeof ip, "10.%d.%d.1", i / 250, i % 250);
        struct rp_addr_key k = v4(ip, 1);
        rp_refusal_log_note(&l, &k, "too many", t);
    }
    cr_assert_eq(rp_refusal_log_lines(&l), RP_REFUSAL_SLOTS,
                 "one line per tracked address, the rest share a line");
    for (int i = 0; i < 100; i++)
        rp_refusal_log_flush(&l, t + RP_REFUSAL_WINDOW_MS + (uint64_t)i);
    cr_assert_eq(rp_refusal_log_lines(&l), RP_REFUSAL_SLOTS + 1);
    rp_refusal_log_destroy(&l);
}
