/* lib/tunnel_h2.h: what both ends of a reverse tunnel's HTTP/2 session agree on
 * (agent/tunnel.c is the server, proxy/tunnel.c the client; docs/design-decisions.md,
 * "Reverse tunnels"). */
#ifndef RP_TUNNEL_H2_H
#define RP_TUNNEL_H2_H

#include <nghttp2/nghttp2.h>
#include <stdint.h>

/* SETTINGS_MAX_FRAME_SIZE each end announces, and the DATA frames each sends when the
 * windows allow: a bulk copy then costs one frame (one read of the stream's socket, one
 * callback) per 64 KiB instead of per 16 KiB, HTTP/2's default. */
#define RP_TUNNEL_FRAME_MAX (64 * 1024)

/* nghttp2's data_source_read_length_callback: DATA frames as large as both windows,
 * the peer's SETTINGS_MAX_FRAME_SIZE and RP_TUNNEL_FRAME_MAX allow. */
ssize_t rp_tunnel_h2_frame_len(nghttp2_session *h2, uint8_t frame_type, int32_t stream_id,
                               int32_t session_window, int32_t stream_window,
                               uint32_t remote_max_frame, void *ud);

#endif
