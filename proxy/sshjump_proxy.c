/* proxy/sshjump_proxy.c: the jump host bound to the proxy process (proxy/proxy.h).
 *
 * Kept apart from proxy/sshjump.c so that the server itself needs nothing of the
 * proxy's core: tests run it with their own trust and routes. */
#include <string.h>

#include "agent/cache.h"
#include "lib/errors.h"
#include "proxy/proxy.h"
#include "proxy/sshjump.h"

/* Any login the roles allow on the node (login NULL), then the dial. */
static int route_through_proxy(void *arg, const struct rp_identity *user, const char *target,
                               const char *client_addr, int timeout_ms, int *fd)
{
    struct proxy *p = arg;
    struct px_route r;
    memset(&r, 0, sizeof r);
    int rv = proxy_route_find(p, user, NULL, target, &r);
    if (rv != 0)
        return rv;
    rv = proxy_route_dial(p, &r, client_addr, timeout_ms, fd);
    px_route_free(&r);
    return rv;
}

static int emit_through_proxy(void *arg, const void *event, size_t len)
{
    return proxy_emit(arg, event, len);
}

int px_sshjump_start(struct px_sshjump **out, struct proxy *p, const char *listen_addr,
                     const char *host_key_path)
{
    const struct rp_config *cfg = proxy_config(p);
    struct px_sshjump_opts o = {
        .listen_addr = listen_addr,
        .host_key_path = host_key_path,
        .server_id = proxy_host_id(p),
        .hostname = cfg->nodename,
        .authority = agent_cache_authority(proxy_cache(p)),
        .route = route_through_proxy,
        .route_arg = p,
        .emit = emit_through_proxy,
        .emit_arg = p,
        .auth_deadline_ms = cfg->auth_deadline_ms,
    };
    return px_sshjump_start_opts(out, &o);
}
