/* proxy/sshjump_proxy.c: the jump host bound to the proxy process (the hooks
 * px_sshjump_start/stop of proxy/proxy.h).
 *
 * Kept apart from proxy/sshjump.c so that the server itself needs nothing of the
 * proxy's core: tests run it with their own trust and routes. A process runs one
 * proxy, so its jump host is kept here. */
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#include "agent/cache.h"
#include "lib/errors.h"
#include "proxy/proxy.h"
#include "proxy/sshjump.h"

static pthread_mutex_t jump_mu = PTHREAD_MUTEX_INITIALIZER;
static struct px_sshjump *jump; /* the process's, between start and stop */

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

int px_sshjump_start(struct proxy *p)
{
    const struct rp_config *cfg = proxy_config(p);
    char host_key[1200];
    proxy_key_path(p, "ssh_host_key", host_key, sizeof host_key);
    struct px_sshjump_opts o = {
        .listen_addr = cfg->proxy_listen_addr,
        .host_key_path = host_key,
        .server_id = proxy_host_id(p),
        .hostname = cfg->nodename,
        .authority = agent_cache_authority(proxy_cache(p)),
        .route = route_through_proxy,
        .route_arg = p,
        .emit = emit_through_proxy,
        .emit_arg = p,
        .auth_deadline_ms = cfg->auth_deadline_ms,
    };
    pthread_mutex_lock(&jump_mu);
    int rv = jump != NULL ? rp_err(RP_EEXISTS, "the proxy's SSH jump host is already running")
                          : px_sshjump_start_opts(&jump, &o);
    pthread_mutex_unlock(&jump_mu);
    return rv;
}

void px_sshjump_stop(struct proxy *p)
{
    (void)p;
    pthread_mutex_lock(&jump_mu);
    struct px_sshjump *j = jump;
    jump = NULL;
    pthread_mutex_unlock(&jump_mu);
    px_sshjump_close(j);
}
