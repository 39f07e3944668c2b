/* tools/sshd-fixture.c: the node's SSH server (agent/sshd.h) over a fixture authority.
 *
 * For the SSH server's integration test and `make bench-ssh`, before the agent wires
 * the server to its cache: trust comes from files instead of the auth cluster.
 *
 *   sshd-fixture --host-key FILE --user-ca FILE [--listen HOST:PORT] [--roles DIR]
 *                [--labels k=v,...] [--locks FILE] [--audit FILE] [--rec-dir DIR]
 *                [--rec-fail] [--accept-env PAT,...] [--auth-deadline-ms N]
 *                [--max-unauth N] [--grace-ms N] [--port-file FILE]
 *
 *   --user-ca   authorized_keys-style lines: the trusted user CA keys
 *   --roles     every DIR/NAME.yaml is the role NAME
 *   --locks     lines "user NAME", "role NAME" or "login NAME"; re-read when it
 *               changes, and then every open connection is re-checked
 *   --audit     each audit event as one JSON line
 *   --rec-dir   interactive sessions' output as DIR/SID.out (resizes as DIR/SID.resize;
 *               input as DIR/SID.in when a role sets record_session.ssh_input)
 *   --rec-fail  every recording write fails (for record_session tests)
 *
 * Prints "listening PORT" on stdout once it accepts. SIGTERM or SIGINT: graceful
 * stop (agent_sshd_stop with --grace-ms, default 2000). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "agent/sshd.h"
#include "lib/errors.h"
#include "lib/json.h"
#include "lib/log.h"
#include "lib/mp.h"
#include "lib/ssh_key.h"
#include "lib/util.h"
#include "lib/yaml_mp.h"

struct fixture {
    EVP_PKEY *cas[16];
    size_t n_cas;
    struct rbac_role *roles[64];
    size_t n_roles;
    struct rbac_label labels[32];
    size_t n_labels;
    const char *locks_path;
    pthread_mutex_t mu;
    char locks[64][2][128]; /* kind, name */
    size_t n_locks;
    void (*changed)(void *);
    void *changed_arg;
    FILE *audit;
    const char *rec_dir;
    bool rec_fail;
};

static struct fixture fx = {.mu = PTHREAD_MUTEX_INITIALIZER};

static int fx_user_cas(void *arg, EVP_PKEY ***keys, size_t *n)
{
    if (fx.n_cas == 0)
        return rp_err(RP_ENOTFOUND, "no user CA");
    *keys = calloc(fx.n_cas, sizeof **keys);
    if (*keys == NULL)
        return RP_ENOMEM;
    for (size_t i = 0; i < fx.n_cas; i++) {
        EVP_PKEY_up_ref(fx.cas[i]);
        (*keys)[i] = fx.cas[i];
    }
    *n = fx.n_cas;
    return 0;
}

static int fx_role_set(void *arg, const char *const *roles, size_t n_roles, const char *traits_json,
                       struct rbac_set **out, char *why, size_t why_len)
{
    struct rbac_role *picked[64];
    if (n_roles > 64)
        return rp_err(RP_EINVAL, "too many roles");
    for (size_t i = 0; i < n_roles; i++) {
        picked[i] = NULL;
        for (size_t j = 0; j < fx.n_roles; j++)
            if (strcmp(rbac_role_name(fx.roles[j]), roles[i]) == 0)
                picked[i] = fx.roles[j];
        if (picked[i] == NULL) {
            snprintf(why, why_len, "role %s is not known to this node", roles[i]);
            return rp_err(RP_ENOTFOUND, "role %s is not known", roles[i]);
        }
    }
    struct rp_buf mp;
    rp_buf_init(&mp);
    msgpack_unpacked u;
    msgpack_unpacked_init(&u);
    const msgpack_object *traits = NULL;
    if (traits_json != NULL && traits_json[0] != '\0') {
        if (rp_ymp_parse_str("traits", traits_json, strlen(traits_json), &mp, NULL) != 0 ||
            rp_mp_parse(mp.data, mp.len, &u) != 0) {
            rp_buf_free(&mp);
            snprintf(why, why_len, "teleport-traits is not valid JSON");
            return RP_EINVAL;
        }
        traits = &u.data;
    }
    int rv = rbac_set_new(picked, n_roles, traits, out);
    if (rv != 0)
        snprintf(why, why_len, "%s", rp_errmsg());
    msgpack_unpacked_destroy(&u);
    rp_buf_free(&mp);
    return rv;
}

static int fx_lock_check(void *arg, const char *user, const char *const *roles, size_t n_roles,
                         const char *login, const char *host_id, char *why, size_t why_len)
{
    int rv = 0;
    pthread_mutex_lock(&fx.mu);
    for (size_t i = 0; i < fx.n_locks && rv == 0; i++) {
        const char *kind = fx.locks[i][0], *name = fx.locks[i][1];
        bool hit = (strcmp(kind, "user") == 0 && strcmp(name, user) == 0) ||
                   (strcmp(kind, "login") == 0 && strcmp(name, login) == 0);
        for (size_t r = 0; r < n_roles && !hit; r++)
            hit = strcmp(kind, "role") == 0 && strcmp(name, roles[r]) == 0;
        if (hit) {
            snprintf(why, why_len, "%s %s is locked (lock fixture-%zu): locked by the test", kind,
                     name, i);
            rv = RP_EDENIED;
        }
    }
    pthread_mutex_unlock(&fx.mu);
    return rv;
}

static int fx_labels(void *arg, struct agent_labels *out)
{
    out->items = calloc(fx.n_labels + 1, sizeof *out->items);
    if (out->items == NULL)
        return RP_ENOMEM;
    for (size_t i = 0; i < fx.n_labels; i++) {
        out->items[i].name = strdup(fx.labels[i].name);
        out->items[i].value = strdup(fx.labels[i].value);
        out->n++;
    }
    return 0;
}

static int fx_on_change(void *arg, void (*fn)(void *), void *fn_arg)
{
    pthread_mutex_lock(&fx.mu);
    fx.changed = fn;
    fx.changed_arg = fn_arg;
    pthread_mutex_unlock(&fx.mu);
    return 0;
}

static void load_locks(void)
{
    char *text = NULL;
    size_t len = 0;
    pthread_mutex_lock(&fx.mu);
    fx.n_locks = 0;
    if (rp_read_file(fx.locks_path, 1 << 20, &text, &len) == 0) {
        char *save = NULL;
        for (char *line = strtok_r(text, "\n", &save); line && fx.n_locks < 64;
             line = strtok_r(NULL, "\n", &save)) {
            char kind[128], name[128];
            if (sscanf(line, "%127s %127s", kind, name) == 2) {
                snprintf(fx.locks[fx.n_locks][0], 128, "%s", kind);
                snprintf(fx.locks[fx.n_locks][1], 128, "%s", name);
                fx.n_locks++;
            }
        }
        free(text);
    }
    void (*fn)(void *) = fx.changed;
    void *fn_arg = fx.changed_arg;
    pthread_mutex_unlock(&fx.mu);
    if (fn != NULL)
        fn(fn_arg);
}

/* ---- audit and recordings ----------------------------------------------------------- */

static pthread_mutex_t audit_mu = PTHREAD_MUTEX_INITIALIZER;

static int fx_emit(void *arg, const void *ev, size_t len)
{
    msgpack_unpacked u;
    if (rp_mp_parse(ev, len, &u) != 0)
        return RP_EINVAL;
    struct rp_buf b;
    rp_buf_init(&b);
    rp_json_from_mp(&b, &u.data, 0);
    rp_buf_append(&b, "\n", 1);
    msgpack_unpacked_destroy(&u);
    pthread_mutex_lock(&audit_mu);
    if (fx.audit != NULL) {
        fwrite(b.data, 1, b.len, fx.audit);
        fflush(fx.audit);
    }
    pthread_mutex_unlock(&audit_mu);
    rp_buf_free(&b);
    return 0;
}

struct fx_rec {
    FILE *out;
    FILE *resize;
    FILE *in; /* NULL: input is not recorded */
};

static int rec_open(void *arg, const struct agent_sshd_rec_meta *m, void **rec)
{
    if (fx.rec_fail)
        return rp_err(RP_ENOSPC, "recording fixture: writes fail");
    char path[512];
    struct fx_rec *r = calloc(1, sizeof *r);
    if (r == NULL)
        return RP_ENOMEM;
    snprintf(path, sizeof path, "%s/%s.out", fx.rec_dir, m->sid);
    r->out = fopen(path, "w");
    snprintf(path, sizeof path, "%s/%s.resize", fx.rec_dir, m->sid);
    r->resize = fopen(path, "w");
    if (r->out == NULL || r->resize == NULL) {
        if (r->out)
            fclose(r->out);
        if (r->resize)
            fclose(r->resize);
        free(r);
        return RP_EIO;
    }
    if (m->record_input) {
        snprintf(path, sizeof path, "%s/%s.in", fx.rec_dir, m->sid);
        if ((r->in = fopen(path, "w")) == NULL) {
            fclose(r->out);
            fclose(r->resize);
            free(r);
            return RP_EIO;
        }
    }
    fprintf(r->resize, "%dx%d %s %s\n", m->cols, m->rows, m->user, m->login);
    *rec = r;
    return 0;
}

static int rec_output(void *rec, const void *p, size_t n)
{
    struct fx_rec *r = rec;
    return fwrite(p, 1, n, r->out) == n && fflush(r->out) == 0 ? 0 : RP_EIO;
}

static int rec_input(void *rec, const void *p, size_t n)
{
    struct fx_rec *r = rec;
    if (r->in == NULL)
        return rp_err(RP_EINVAL, "input recorded for a session opened without record_input");
    return fwrite(p, 1, n, r->in) == n && fflush(r->in) == 0 ? 0 : RP_EIO;
}

static int rec_resize(void *rec, int cols, int rows)
{
    struct fx_rec *r = rec;
    fprintf(r->resize, "%dx%d\n", cols, rows);
    return fflush(r->resize) == 0 ? 0 : RP_EIO;
}

static int rec_close(void *rec)
{
    struct fx_rec *r = rec;
    fclose(r->out);
    fclose(r->resize);
    if (r->in != NULL)
        fclose(r->in);
    free(r);
    return 0;
}

/* ---- setup ------------------------------------------------------------------------- */

static void die(const char *what)
{
    fprintf(stderr, "sshd-fixture: %s: %s\n", what, rp_errmsg());
    exit(1);
}

static void load_cas(const char *path)
{
    char *text = NULL;
    size_t len = 0;
    if (rp_read_file(path, 1 << 20, &text, &len) != 0)
        die(path);
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line && fx.n_cas < 16;
         line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '\0' || line[0] == '#')
            continue;
        if (rp_ssh_pubkey_parse(line, &fx.cas[fx.n_cas], NULL) != 0)
            die(path);
        fx.n_cas++;
    }
    free(text);
}

static void load_roles(const char *dir)
{
    DIR *d = opendir(dir);
    if (d == NULL) {
        rp_err(RP_EIO, "%s", strerror(errno));
        die(dir);
    }
    struct dirent *e;
    while ((e = readdir(d)) != NULL && fx.n_roles < 64) {
        size_t l = strlen(e->d_name);
        if (l < 6 || strcmp(e->d_name + l - 5, ".yaml") != 0)
            continue;
        char path[1024], *text = NULL;
        size_t len = 0;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (rp_read_file(path, 1 << 20, &text, &len) != 0 ||
            rbac_role_parse_yaml(e->d_name, text, len, &fx.roles[fx.n_roles]) != 0)
            die(path);
        free(text);
        fx.n_roles++;
    }
    closedir(d);
}

static void load_labels(char *spec)
{
    char *save = NULL;
    for (char *kv = strtok_r(spec, ",", &save); kv && fx.n_labels < 32;
         kv = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(kv, '=');
        if (eq == NULL)
            continue;
        *eq = '\0';
        fx.labels[fx.n_labels].name = kv;
        fx.labels[fx.n_labels].value = eq + 1;
        fx.n_labels++;
    }
}

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig)
{
    stop_requested = 1;
}

int main(int argc, char **argv)
{
    struct agent_sshd_opts o = {.listen_addr = "127.0.0.1:0",
                                .nodename = "fixture-node",
                                .host_id = "00000000-0000-4000-8000-000000000001"};
    const char *port_file = NULL, *audit = NULL;
    const char *env[32];
    char *env_copy = NULL;
    uint64_t grace = 2000;
    struct agent_sshd_recording rec = {NULL,      rec_open,   rec_output,
                                       rec_input, rec_resize, rec_close};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (v == NULL) {
            fprintf(stderr, "sshd-fixture: %s needs a value\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--listen") == 0)
            o.listen_addr = v;
        else if (strcmp(a, "--host-key") == 0)
            o.host_key_path = v;
        else if (strcmp(a, "--user-ca") == 0)
            load_cas(v);
        else if (strcmp(a, "--roles") == 0)
            load_roles(v);
        else if (strcmp(a, "--labels") == 0)
            load_labels(strdup(v));
        else if (strcmp(a, "--locks") == 0)
            fx.locks_path = v;
        else if (strcmp(a, "--audit") == 0)
            audit = v;
        else if (strcmp(a, "--rec-dir") == 0)
            fx.rec_dir = v;
        else if (strcmp(a, "--rec-fail") == 0)
            fx.rec_fail = strcmp(v, "1") == 0;
        else if (strcmp(a, "--accept-env") == 0) {
            char *save = NULL;
            free(env_copy);
            env_copy = strdup(v);
            o.n_accept_env = 0;
            for (char *p = strtok_r(env_copy, ",", &save); p && o.n_accept_env < 32;
                 p = strtok_r(NULL, ",", &save))
                env[o.n_accept_env++] = p;
            o.accept_env = env;
        } else if (strcmp(a, "--auth-deadline-ms") == 0)
            o.auth_deadline_ms = strtoull(v, NULL, 10);
        else if (strcmp(a, "--max-unauth") == 0)
            o.max_unauthenticated = (unsigned)strtoul(v, NULL, 10);
        else if (strcmp(a, "--grace-ms") == 0)
            grace = strtoull(v, NULL, 10);
        else if (strcmp(a, "--port-file") == 0)
            port_file = v;
        else if (strcmp(a, "--log-level") == 0)
            rp_log_set_level(rp_log_level_parse(v));
        else {
            fprintf(stderr, "sshd-fixture: unknown option %s\n", a);
            return 2;
        }
    }
    if (audit != NULL && (fx.audit = fopen(audit, "a")) == NULL) {
        fprintf(stderr, "sshd-fixture: %s: %s\n", audit, strerror(errno));
        return 1;
    }
    struct agent_authority auth = {NULL,          fx_user_cas, fx_role_set,
                                   fx_lock_check, fx_labels,   fx_on_change};
    o.authority = &auth;
    o.emit = fx_emit;
    if (fx.rec_dir != NULL || fx.rec_fail)
        o.recording = &rec;
    if (fx.locks_path != NULL)
        load_locks();
    struct sigaction sa = {.sa_handler = on_stop_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigset_t stop_signals;
    sigemptyset(&stop_signals);
    sigaddset(&stop_signals, SIGTERM);
    sigaddset(&stop_signals, SIGINT);
    sigprocmask(SIG_UNBLOCK, &stop_signals, NULL);
    struct agent_sshd *s = NULL;
    if (agent_sshd_start(&s, &o) != 0)
        die("start");
    if (port_file != NULL) {
        char p[16];
        int n = snprintf(p, sizeof p, "%d\n", agent_sshd_port(s));
        if (rp_write_file(port_file, p, (size_t)n, 0644) != 0)
            die(port_file);
    }
    printf("listening %d\n", agent_sshd_port(s));
    fflush(stdout);
    struct timespec last = {0};
    while (!stop_requested) {
        usleep(50 * 1000);
        struct stat st;
        if (fx.locks_path != NULL && stat(fx.locks_path, &st) == 0 &&
            (st.st_mtim.tv_sec != last.tv_sec || st.st_mtim.tv_nsec != last.tv_nsec)) {
            last = st.st_mtim;
            load_locks();
        }
    }
    agent_sshd_stop(s, grace);
    for (size_t i = 0; i < fx.n_cas; i++)
        EVP_PKEY_free(fx.cas[i]);
    for (size_t i = 0; i < fx.n_roles; i++)
        rbac_role_free(fx.roles[i]);
    if (fx.audit != NULL)
        fclose(fx.audit);
    free(env_copy);
    return 0;
}
