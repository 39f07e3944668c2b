/* raft/names.c: printable names of raft states and member roles, for logs,
 * `tctl status` and tests. */
#include "raft/rp_raft.h"

const char *rp_raft_state_name(int state)
{
    switch (state) {
    case RAFT_LEADER:
        return "leader";
    case RAFT_FOLLOWER:
        return "follower";
    case RAFT_CANDIDATE:
        return "candidate";
    case RAFT_UNAVAILABLE:
        return "unavailable";
    default:
        return "unknown";
    }
}

const char *rp_member_role_name(enum rp_member_role role)
{
    switch (role) {
    case RP_MEMBER_VOTER:
        return "voter";
    case RP_MEMBER_STANDBY:
        return "standby";
    case RP_MEMBER_SPARE:
        return "spare";
    default:
        return "unknown";
    }
}
