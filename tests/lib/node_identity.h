/* tests/lib/node_identity.h: a Node identity for integration tests, obtained the
 * way a node agent gets one: a node join token (tctl tokens add --type=node) and
 * the real `join` method, called anonymously with a fresh P-256 key. */
#ifndef RP_TESTS_NODE_IDENTITY_H
#define RP_TESTS_NODE_IDENTITY_H

#include "auth/client.h"

/* Joins as node @nodename (cl_join_node: a fresh host id, into @host_id unless NULL)
 * through cluster node @via, and returns a client presenting the Node certificate it
 * got, bound to every running member's API address (it fails over like any client).
 * Fails the test on any error. auth_client_free it. */
struct auth_client *cl_node_identity_client(int via, const char *nodename, char host_id[40]);

#endif
