/* proxy/hello.h: reading the ALPN protocols (and server name) a TLS client offers,
 * from the first bytes of its connection, before any TLS is terminated.
 *
 * The listener peeks (MSG_PEEK) the ClientHello and routes on what it offers:
 * "teleport-auth@..." goes to an auth server untouched, anything else to the proxy's
 * own TLS. The bytes are an unauthenticated client's: the parser reads only inside
 * the buffer it is given, allocates nothing, and refuses a ClientHello larger than
 * PX_HELLO_MAX_BYTES (RFC 8446 4.1.2: the record layer and handshake framing, the
 * legacy fields, then the extensions; RFC 7301 for ALPN, RFC 6066 3 for SNI). */
#ifndef RP_PROXY_HELLO_H
#define RP_PROXY_HELLO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The largest ClientHello handshake message accepted (a post-quantum key share makes
 * them a few KiB today). */
#define PX_HELLO_MAX_BYTES 16384
/* Bytes a listener peeks at most: the message, its 4-byte header, and the headers of
 * the (at most 4, at least 4 KiB each in practice) records it may be split into. */
#define PX_HELLO_PEEK_BYTES (PX_HELLO_MAX_BYTES + 4 + 4 * 5)
/* ALPN names kept; a client offering more has the rest ignored (alpn_truncated). */
#define PX_HELLO_MAX_ALPN 16

struct px_hello {
    size_t n_alpn;
    uint8_t alpn_len[PX_HELLO_MAX_ALPN];
    char alpn[PX_HELLO_MAX_ALPN][256]; /* NUL-terminated copies (names may hold any
                                        * byte: compare with alpn_len) */
    bool alpn_truncated;
    char sni[256]; /* the first host_name of server_name, "" if none (or too long) */
};

/* Parses the ClientHello at the start of @p (@n bytes) into @out.
 *   0            a whole ClientHello was read
 *   RP_EAGAIN    @p is a valid prefix of one: more bytes are needed
 *   RP_EPROTO    the bytes are not a TLS ClientHello (the message says what was found)
 *   RP_ETOOBIG   the ClientHello announces more than PX_HELLO_MAX_BYTES
 * Never reads outside [@p, @p + @n). */
int px_hello_parse(const uint8_t *p, size_t n, struct px_hello *out);

/* True if @h offers the protocol @name exactly. */
bool px_hello_offers(const struct px_hello *h, const char *name);
/* True if @h offers a protocol starting with @prefix. */
bool px_hello_offers_prefix(const struct px_hello *h, const char *prefix);

#endif
