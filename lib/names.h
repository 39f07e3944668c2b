/* lib/names.h: what a name of a user, role, token, lock or node may be.
 *
 * Names travel into paths, Unix accounts, certificate fields and command lines
 * (the node agent makes home directories and accounts from them; tctl takes them
 * as KIND/NAME), so one rule holds on every path that writes one:
 *
 *   1..RP_NAME_MAX bytes of valid UTF-8; no '/', no "..", not "." ; no control
 *   characters (C0, DEL, C1), no white space of any script (U+0020, U+00A0,
 *   U+2000..U+200A, ...), no invisible format characters (zero width, bidi
 *   overrides, BOM); not starting with '-' (it would read as a flag).
 *
 * Teleport's system role names (Auth, Node, Proxy, Admin, ... in any case) are
 * kept here too: they name system identities, never a role or user of the
 * cluster, and token resources name them in spec.roles. */
#ifndef RP_NAMES_H
#define RP_NAMES_H

#include <stdbool.h>
#include <stddef.h>

#define RP_NAME_MAX 253

/* 0 if @name (@n bytes) is a valid name, else RP_EINVAL with a message
 * "<what> '<name>': <why>, expected ..." (@what: "user name", "role name", ...).
 * The name in the message is cut at 64 bytes and its unprintable bytes shown as
 * '?', so the message is safe to print and log. */
int rp_name_check(const char *what, const char *name, size_t n);

/* As rp_name_check, for a name that is a secret (a join token's name is its
 * value): the message never contains the name. */
int rp_name_check_secret(const char *what, const char *name, size_t n);

/* Teleport's spelling of the system role @name names in any case ("node" ->
 * "Node", "TRUSTED_CLUSTER" -> "Trusted_cluster"), or NULL if it names none. */
const char *rp_system_role(const char *name, size_t n);

/* 0 if @login (@n bytes) is a Unix login name (1..32 of a-z 0-9 _ . -, not
 * starting with '-' or '.') or a trait template "{{...}}" of at most 128 bytes
 * without control characters; RP_EINVAL with a message otherwise. */
int rp_login_check(const char *login, size_t n);

#endif
