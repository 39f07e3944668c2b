/* tests/lib/node_identity.c: see node_identity.h. */
#include "tests/lib/node_identity.h"

#include <criterion/criterion.h>
#include <stdio.h>

#include "lib/errors.h"
#include "tests/lib/cluster.h"

struct auth_client *cl_node_identity_client(int via, const char *nodename, char host_id[40])
{
    struct cl_node_id n;
    cl_join_node(via, NULL, nodename, &n);
    if (host_id)
        snprintf(host_id, 40, "%s", n.host_id);
    const char *addrs[CL_MAX_NODES];
    size_t k = 0;
    for (int i = 1; i <= CL_MAX_NODES; i++)
        if (CL->nodes[i].used && CL->nodes[i].pid != 0)
            addrs[k++] = CL->nodes[i].api_addr;
    struct auth_client *c = NULL;
    cr_assert_eq(auth_client_new(&c, n.ctx, addrs, k), 0, "%s", rp_errmsg());
    cl_node_id_free(&n);
    auth_client_set_timeout(c, 20000);
    return c;
}
