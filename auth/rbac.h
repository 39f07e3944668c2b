/* auth/rbac.h: Teleport's role resource and the access decisions made from it.
 *
 * Every service asks this module the same questions: may this user log in as L on a
 * node with labels K=V? may they do verb V on resource kind R? which logins go into
 * their certificate, and which session options apply? The answers follow Teleport's
 * rules (../shared/reference/teleport-facts.md 3.1, 3.2):
 *
 *  - Nothing is allowed by default. Deny is checked first, in every role, and wins.
 *  - SSH: a role denies login L on node N if L is among its deny.logins or if its
 *    deny.node_labels match N (either is enough: deny is greedy). Otherwise access is
 *    allowed only if ONE role both lists L in allow.logins and has allow.node_labels
 *    matching N (logins and labels pair up per role).
 *  - Label selectors: in allow, every key must match (AND across keys); in deny, any one
 *    key matching is enough. A key's value list is an OR. '*': '*' matches every node,
 *    even one without labels; key: '*' matches any value of a present key. A value with
 *    '*' is a glob ('*' is its only special character); a value starting with '^' and
 *    ending with '$' is a regular expression, matched unanchored like RE2 (so
 *    '^a|b$' is '^a' or 'b$'); anything else matches exactly. An empty selector
 *    matches nothing. Label keys are exact strings; a key of '*' must have the value '*'.
 *  - Regular expressions are POSIX extended (glibc regcomp) with RE2's shorthands
 *    translated: \d \D, \s \S \w \W \b \B, \n \t \r \f \v, and \d \s \w inside [...].
 *    (?flags) and (?:...) groups, lazy quantifiers (*? +? ??), backreferences and other
 *    escapes (\pL, \A, \z, \Q) are refused when the role is parsed, and so are
 *    patterns longer than 1024 bytes or whose counted repetitions add up to more than
 *    1000 (auth/predicate.h: pred_re_compile).
 *  - Rules: a role's deny rule matching (resource or '*', verb or '*') denies; else a
 *    matching allow rule allows. A rule with a `where` condition is kept but not
 *    evaluated here: in deny it applies unconditionally (fail closed), in allow it
 *    grants nothing unconditional (rbac_check_rule says so in its reason).
 *  - Templates in logins and label values: "{{internal.NAME}}" (NAME one of Teleport's
 *    internal traits: logins, windows_logins, kubernetes_groups, kubernetes_users,
 *    db_names, db_users, db_roles, aws_role_arns, azure_identities,
 *    gcp_service_accounts, jwt, github_orgs), "{{external.NAME}}" or
 *    external["NAME"], "{{email.local(VAR)}}", and
 *    "{{regexp.replace(VAR, \"RE\", \"REPL\")}}" (REPL may use $1 / ${1}); literal
 *    text may surround the braces ("adm-{{internal.logins}}"). Both namespaces look
 *    up the user's traits by NAME. A template expands to one value per trait value; a
 *    missing trait expands to nothing (the entry is dropped); email.local() drops
 *    values that are not addresses, regexp.replace() drops values the RE does not
 *    match. Expanded logins that are not valid Unix logins (empty, longer than 32
 *    bytes, starting with '-', holding ':' or white space) are dropped. Label keys may
 *    not hold templates.
 *  - Certificate logins: the union of every role's expanded allow.logins, in role
 *    order, minus every role's expanded deny.logins.
 *  - Options combine to the most restrictive value: max_session_ttl the smallest set
 *    (RBAC_DEFAULT_SESSION_TTL_MS, 12h, when no role sets one); forward_agent,
 *    permit_x11_forwarding, disconnect_expired_cert, pin_source_ip: OR; ssh_file_copy:
 *    AND (default true); client_idle_timeout, max_sessions, max_connections: the
 *    smallest non-zero; record_session.ssh: strict wins (a mode other than best_effort
 *    or strict, which Teleport does not check, counts as strict);
 *    record_session.desktop: OR (default true); record_session.ssh_input (Raftport's
 *    own, not Teleport's: PTY sessions record what the user types too): OR (default
 *    false); lock: strict wins;
 *    require_session_mfa: the strongest; enhanced_recording: the union; port
 *    forwarding as below.
 *  - node_labels_expression (auth/predicate.h): in allow, a role admits a node only if
 *    its node_labels (when it has any) and its expression (when it has one) both do;
 *    in deny, node_labels or the expression matching is enough. An expression that
 *    cannot be evaluated admits nothing in allow and denies in deny.
 *  - Port forwarding: the legacy port_forwarding: true in any role allows both
 *    directions (Teleport then ignores ssh_port_forwarding). Otherwise a direction
 *    that any role's ssh_port_forwarding disables is denied, and it is allowed if a
 *    role allows it, explicitly or by default (a role that sets neither option allows
 *    both). rbac_options.port_forwarding is the local direction, remote_port_forwarding the
 *    remote one; the certificate's permit-port-forwarding needs both (OpenSSH cannot
 *    tell them apart).
 *
 * The resource, as msgpack (lib/yaml_mp turns YAML into it):
 *   {kind: role, version: v3..v8, metadata: {name, description, labels, namespace,
 *    expires, revision}, spec: {options: {...}, allow: {...}, deny: {...}}}
 * Every field of Teleport's role spec, v3 to v8, is accepted, in three classes:
 *  - enforced here: allow/deny logins, node_labels, node_labels_expression, rules,
 *    namespaces; options max_session_ttl, forward_agent, port_forwarding,
 *    ssh_port_forwarding, ssh_file_copy, client_idle_timeout, disconnect_expired_cert,
 *    max_sessions, max_connections, permit_x11_forwarding, lock, record_session,
 *    enhanced_recording, create_host_user_mode, cert_extensions (rbac_options reports
 *    them for the services that apply them);
 *  - failing closed: fields that restrict SSH access in a way Raftport does not
 *    enforce yet (rbac_role_unenforced): options.require_session_mfa other than no,
 *    options.device_trust_mode required, required-for-humans or a mode Raftport does
 *    not know (Teleport does not check the value), options.pin_source_ip
 *    true, allow.require_session_join with a policy for SSH sessions, and any field
 *    Raftport does not know under spec, spec.options or spec.deny. The role loads; its
 *    holders get no logins and rbac_check_ssh refuses them, naming the field;
 *  - kept: the fields of services Raftport does not have (kubernetes_*, db_*, app_*,
 *    windows_desktop_*, group_*, cluster_labels, aws_role_arns, azure_identities,
 *    gcp_service_accounts, host_groups, host_sudoers, desktop_groups, spiffe,
 *    account_assignments, github_permissions, workload_identity_*, impersonate,
 *    request, review_requests, join_sessions, the other *_labels_expression fields,
 *    rule actions; options cert_format, request_access, request_prompt,
 *    max_kubernetes_connections, desktop_clipboard, desktop_directory_sharing,
 *    create_host_user, create_host_user_default_shell, create_desktop_user,
 *    create_db_user, create_db_user_mode, mfa_verification_interval, idp) are checked
 *    for type and written back as given (canonically ordered); a field Raftport does
 *    not know is kept exactly as written (rbac_role_unknown lists them).
 * Booleans also accept "yes"/"no"/"true"/"false"/"on"/"off", which YAML 1.1
 * (Teleport) reads as booleans. Durations are Go's ("8h", "30m", "1h30m", "1.5h",
 * "90s"); 0 means unset; access request durations also take days ("7d").
 *
 * Version defaults (filled in at parse, so they show in the canonical form): v3 roles
 * without allow.node_labels get {'*': '*'} if they have logins and {} otherwise, and
 * '*': '*' for app/kubernetes/db labels; every version gets forward_agent false,
 * ssh_file_copy true, record_session {default: best_effort, desktop: true},
 * enhanced_recording [command, network]. port_forwarding is not filled in (see above),
 * nor is max_session_ttl (Teleport writes 30h there; leaving it unset keeps the 12h
 * default of the options).
 *
 * Errors: RP_EINVAL with rp_errmsg() = "PATH: what is wrong, what was expected", PATH
 * as lib/yaml_mp builds it ("spec.allow.node_labels.env"), so that rp_ymp_locate()
 * can add "FILE:LINE: ". RP_ENOMEM on allocation failure. */
#ifndef RP_AUTH_RBAC_H
#define RP_AUTH_RBAC_H

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "lib/buf.h"

#define RBAC_DEFAULT_SESSION_TTL_MS (12ull * 3600 * 1000) /* CertDuration */
#define RBAC_MIN_VERSION 3
#define RBAC_MAX_VERSION 8

/* A validated role. Opaque; immutable once parsed, so it may be shared by threads. */
struct rbac_role;

/* Parses and validates the role resource @res. On success *@out is the caller's
 * (rbac_role_free it); on error *@out is NULL and rp_errmsg() names the field path. */
int rbac_role_parse(const msgpack_object *res, struct rbac_role **out);
/* The same from YAML text (one document) through lib/yaml and lib/yaml_mp; errors read
 * "NAME:LINE: PATH: ...". */
int rbac_role_parse_yaml(const char *name, const char *text, size_t n, struct rbac_role **out);
void rbac_role_free(struct rbac_role *role); /* NULL is fine */

const char *rbac_role_name(const struct rbac_role *role); /* borrowed from @role */
int rbac_role_version(const struct rbac_role *role);      /* 3..8 */

/* Appends the canonical msgpack form of @role to @out: every map's keys sorted (as
 * `tctl get` prints them), defaults filled in, durations in Go's format ("8h0m0s"),
 * a label with one value as a string and with several as a list. Parsing that form
 * gives the same bytes again. */
int rbac_role_pack(const struct rbac_role *role, struct rp_buf *out);
/* Appends @role as the YAML document Teleport users expect (the canonical form). */
int rbac_role_to_yaml(const struct rbac_role *role, struct rp_buf *out);

/* How many fields of @role restrict SSH access in a way Raftport does not enforce yet
 * (see above); the first @max of their paths ("spec.options.device_trust_mode") go to
 * @fields, strings borrowed from @role or static. A user holding such a role is
 * refused SSH access (rbac_check_ssh, rbac_logins); `tctl create` warns with these. */
size_t rbac_role_unenforced(const struct rbac_role *role, const char **fields, size_t max);
/* How many fields of @role Raftport does not know (kept as written); the first @max of
 * their paths go to @fields, borrowed from @role, each followed by " (did you mean
 * NAME?)" when it looks like a typo of a known field. */
size_t rbac_role_unknown(const struct rbac_role *role, const char **fields, size_t max);

/* The roles of one user with their traits expanded: what every check below reads. */
struct rbac_set;

/* Builds the set of @n_roles roles (borrowed: they must outlive the set) for a user
 * with @traits: NULL, nil, or a map of trait name -> list of strings (a single string
 * is taken as a one-item list). Expands every template. Returns 0, RP_ENOMEM, or
 * RP_EINVAL if @traits has another shape or a trait value turns a label value into an
 * invalid regular expression (message "role NAME: PATH: ..."), so a user whose traits
 * cannot be applied is refused rather than given partial roles. */
int rbac_set_new(struct rbac_role *const *roles, size_t n_roles, const msgpack_object *traits,
                 struct rbac_set **out);
void rbac_set_free(struct rbac_set *set); /* NULL is fine */

struct rbac_label {
    const char *name;
    const char *value;
};

/* May the user log in as @login on a node with the @n_labels labels @labels (a key
 * given twice: the first counts)? 0 if allowed; RP_EDENIED if not, with a reason in
 * @why (@why_len bytes, may be 0): "role 'R' denies login 'L' (deny.logins)", "role
 * 'R' denies nodes with labels env=prod (deny.node_labels)", or "no role allows login
 * 'L' on a node with labels env=prod[ (role 'R' allows 'L' but its node_labels do not
 * match)]". RP_EINVAL for an empty @login. */
int rbac_check_ssh(const struct rbac_set *set, const char *login, const struct rbac_label *labels,
                   size_t n_labels, char *why, size_t why_len);

/* Is SSH access refused to the whole set because a role of it fails closed? 0 if not;
 * RP_EDENIED with the reason in @why ("role 'R' sets spec.options.device_trust_mode,
 * which restricts SSH access in a way Raftport does not enforce yet, ..."). */
int rbac_set_ssh_refused(const struct rbac_set *set, char *why, size_t why_len);

/* May the user do @verb ("list", "read", ...) on resources of kind @resource ("role",
 * "token", ...)? 0 or RP_EDENIED with a reason naming the denying role and rule
 * ("role 'R' denies delete on role (deny.rules[0])") or "no role allows VERB on
 * RESOURCE". */
int rbac_check_rule(const struct rbac_set *set, const char *resource, const char *verb, char *why,
                    size_t why_len);

/* The logins (SSH principals) for the user's certificate, deduplicated, in the order of
 * the roles and of their lists; none when rbac_set_ssh_refused refuses the set. *@out is a malloc'd
 * array of *@n malloc'd strings (NULL and 0 when there are none): free with rbac_logins_free. */
int rbac_logins(const struct rbac_set *set, char ***out, size_t *n);
void rbac_logins_free(char **logins, size_t n);

enum rbac_record_mode { RBAC_RECORD_BEST_EFFORT, RBAC_RECORD_STRICT };
enum rbac_lock_mode { RBAC_LOCK_UNSET, RBAC_LOCK_BEST_EFFORT, RBAC_LOCK_STRICT };
enum rbac_mfa {
    RBAC_MFA_NO,
    RBAC_MFA_YES,
    RBAC_MFA_HARDWARE_KEY,
    RBAC_MFA_HARDWARE_KEY_TOUCH,
    RBAC_MFA_HARDWARE_KEY_PIN,
    RBAC_MFA_HARDWARE_KEY_TOUCH_AND_PIN,
};
enum {
    RBAC_ENHANCED_COMMAND = 1,
    RBAC_ENHANCED_DISK = 2,
    RBAC_ENHANCED_NETWORK = 4,
};

/* The session options of a set, combined as described above. */
struct rbac_options {
    uint64_t max_session_ttl_ms;     /* > 0 */
    uint64_t client_idle_timeout_ms; /* 0 = never */
    uint32_t max_sessions;           /* 0 = no limit */
    uint32_t max_connections;        /* 0 = no limit */
    bool forward_agent;
    bool port_forwarding;        /* local forwarding: the permit-port-forwarding extension */
    bool remote_port_forwarding; /* remote forwarding (ssh -R), for the SSH service */
    bool ssh_file_copy;
    bool disconnect_expired_cert;
    bool permit_x11_forwarding;
    bool pin_source_ip;
    bool record_desktop;
    enum rbac_record_mode record_ssh;
    bool record_ssh_input;    /* record_session.ssh_input (Raftport's own): keystrokes too */
    enum rbac_lock_mode lock; /* UNSET: the cluster's default applies */
    enum rbac_mfa require_session_mfa;
    unsigned enhanced_recording; /* RBAC_ENHANCED_* bits */
};

void rbac_options(const struct rbac_set *set, struct rbac_options *out);

/* Teleport's preset roles, v7: "access" (logins {{internal.logins}} on every node,
 * read events and one's own sessions), "editor" (read and write cluster
 * configuration: users, roles, connectors, tokens, trusted clusters, locks, ...),
 * "auditor" (read sessions and events; one random "no-login-<uuid>" login so that its
 * certificates are never valid for a real account). NULL-terminated. */
extern const char *const rbac_preset_names[];
/* Appends the canonical msgpack resource of preset @name to @out, ready to be stored.
 * RP_ENOTFOUND for another name. */
int rbac_preset_pack(const char *name, struct rp_buf *out);

#endif
