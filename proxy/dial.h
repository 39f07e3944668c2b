/* proxy/dial.h: the dial frame of teleport-proxy-ssh connections (design §2), as the
 * proxy reads it. proxy/dial.c serves the connections (px_dial_attach, proxy/conn.h).
 *
 * Frame: u32 big-endian length (1..PX_DIAL_MAX_FRAME) + a msgpack map
 *   {target: "HOST[:PORT]", login: "root" | nil, version: "x.y.z"}
 * Answer: the same framing, {ok: true, host_id, hostname, addr, tunnel, host_key,
 * host_cert} or {ok: false, code, error}; after ok the connection carries the SSH
 * bytes of the node. */
#ifndef RP_PROXY_DIAL_H
#define RP_PROXY_DIAL_H

#include <stdbool.h>
#include <stddef.h>

#define PX_DIAL_MAX_FRAME 4096

struct px_dial_request {
    char target[300];
    char login[64];
    bool has_login;
    char version[32]; /* "" when not given */
};

/* Parses the frame body @body (@len bytes, without the length prefix) into @out.
 * RP_EINVAL naming the field that is wrong. Reads only inside @body. */
int px_dial_frame_parse(const void *body, size_t len, struct px_dial_request *out);

#endif
