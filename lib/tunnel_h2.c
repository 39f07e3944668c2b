/* lib/tunnel_h2.c: what both ends of a reverse tunnel's HTTP/2 session share. */
#include "lib/tunnel_h2.h"

ssize_t rp_tunnel_h2_frame_len(nghttp2_session *h2, uint8_t frame_type, int32_t stream_id,
                               int32_t session_window, int32_t stream_window,
                               uint32_t remote_max_frame, void *ud)
{
    (void)h2;
    (void)frame_type;
    (void)stream_id;
    (void)ud;
    int64_t n = RP_TUNNEL_FRAME_MAX;
    if (remote_max_frame < n)
        n = remote_max_frame;
    if (session_window < n)
        n = session_window;
    if (stream_window < n)
        n = stream_window;
    return n > 0 ? (ssize_t)n : 1; /* nghttp2 calls us only when both windows are open */
}
