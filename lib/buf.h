/* lib/buf.h: growable byte buffers and the bounded reader all parsing goes through.
 *
 * struct rp_buf owns its bytes. struct rp_rd borrows them and never reads
 * past @len: every accessor checks the length first and returns RP_EINVAL
 * (with a message naming what was short) instead of reading out of bounds. */
#ifndef RP_BUF_H
#define RP_BUF_H

#include <stddef.h>
#include <stdint.h>

struct rp_buf {
    uint8_t *data; /* owned; NULL while empty */
    size_t len;
    size_t cap;
};

void rp_buf_init(struct rp_buf *b);
void rp_buf_free(struct rp_buf *b);
void rp_buf_reset(struct rp_buf *b); /* len = 0, keeps the allocation */
int rp_buf_reserve(struct rp_buf *b, size_t extra);
int rp_buf_append(struct rp_buf *b, const void *p, size_t n);
int rp_buf_append_str(struct rp_buf *b, const char *s);
int rp_buf_printf(struct rp_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int rp_buf_put_be32(struct rp_buf *b, uint32_t v);
int rp_buf_put_be64(struct rp_buf *b, uint64_t v);
/* A write queue whose first *@off bytes were already sent: appends @n bytes. Once all
 * was sent the queue starts over at the front; when the bytes do not fit, the unsent
 * rest moves to the front before the buffer grows. 0 or RP_ENOMEM (nothing appended). */
int rp_buf_queue(struct rp_buf *b, size_t *off, const void *p, size_t n);
/* Hands the bytes to the caller (free() them) and leaves @b empty. */
uint8_t *rp_buf_steal(struct rp_buf *b, size_t *len);

struct rp_rd {
    const uint8_t *p;
    size_t len;
    size_t off;
};

void rp_rd_init(struct rp_rd *r, const void *p, size_t len);
size_t rp_rd_left(const struct rp_rd *r);
int rp_rd_u8(struct rp_rd *r, uint8_t *v);
int rp_rd_be16(struct rp_rd *r, uint16_t *v);
int rp_rd_be32(struct rp_rd *r, uint32_t *v);
int rp_rd_be64(struct rp_rd *r, uint64_t *v);
/* Borrows @n bytes at the cursor and advances past them. */
int rp_rd_bytes(struct rp_rd *r, size_t n, const uint8_t **out);
int rp_rd_skip(struct rp_rd *r, size_t n);

#endif
