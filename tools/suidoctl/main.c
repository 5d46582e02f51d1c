/* suidoctl: the operator's command line for a suido deployment.
 *
 *   suidoctl [-c CONF] [--json] gateway list | show ID
 *   suidoctl [-c CONF] gateway suspend|activate|revoke|dispose ID [--reason TEXT]
 *   suidoctl [-c CONF] [--json] gateway provision ID --site S --kind K --out DIR
 *                                [--model M] [--firmware F] [--sparkplug]
 *   suidoctl [-c CONF] service suspend|activate|revoke ID [--reason TEXT]
 *   suidoctl [-c CONF] [--json] inventory
 *   suidoctl [-c CONF] [--json] certs [--days N]
 *   suidoctl [-c CONF] [--json] [--offline] audit verify [--db PATH]
 *   suidoctl [-c CONF] [--json] [--offline] archive gaps [--gateway ID] | verify
 *   suidoctl [-c CONF] [--json] archive status | promote [--force]
 *   suidoctl [-c CONF] [--json] backup create DIR
 *   suidoctl [-c CONF] [--json] [--offline] backup verify DIR
 *   suidoctl [-c CONF] [--json] backup restore DIR --to STATEDIR [--force]
 *   suidoctl [-c CONF] [--json] backup restore DIR --postgresql CONNINFO_FILE [--to STATEDIR]
 *   suidoctl [-c CONF] [--json] login ID --totp CODE [--password-file F] [--source S]
 *   suidoctl [-c CONF] logout
 *   suidoctl [-c CONF] [--json] operator add ID --role viewer|operator|admin [--password-file F]
 *   suidoctl [-c CONF] [--json] operator list | suspend|activate|revoke|dispose ID
 *   suidoctl [-c CONF] [--json] access [--operator ID]
 *   suidoctl [-c CONF] [--json] command GATEWAY ACTUATOR VALUE [--unit U] [--reason TEXT]
 *   suidoctl [-c CONF] [--json] command status COMMAND_ID
 *   suidoctl [-c CONF] [--json] alert list [--all] | show CASE | ack CASE
 *   suidoctl [-c CONF] alert close CASE --cause TEXT --action TEXT
 *
 * Everything but login needs an operator session: --token TOKEN or $SUIDO_TOKEN (printed by
 * login; password + TOTP code; 30 minutes). Changes of state and operator administration need
 * the admin role. The very first operator of a deployment is added without a session.
 * Passwords are read from --password-file or the first line of standard input, never from the
 * command line.
 *
 * archive gaps (viewer), archive verify, audit verify, backup create and backup verify (admin)
 * read the databases themselves; the registry checks the session's role for the command and
 * audits the access (ctl_access) before anything is read. --offline is the administrator's
 * recovery path for archive gaps, archive verify, audit verify and backup verify on a stopped
 * deployment: no registry, no session, the state files read directly (the operating system's
 * file permissions are the only control), one line on stderr saying that this access is not in
 * the audit log. backup restore is always offline (the services are stopped for it).
 *
 * It talks to the registry over ZeroMQ/CURVE as the identity "suidoctl" (the registry's dispatch
 * table lets only that identity change states) and reads the archive's audit log read-only.
 * Disposal also destroys the gateway's private key files kept in the deployment (overwritten,
 * then removed), so nothing of the identity remains usable.
 *
 * Commands go to the command gate ([gate] section: connect, server_key), which decides, signs
 * and sends them; an operator or admin session is needed.
 *
 * Exit codes: 0 done; 1 refused or failed, or a problem found (gaps, a broken chain, a bad
 * signature; the reason is printed); 2 usage; 3 cannot check: the registry, gate or archive could
 * not be reached, or a database cannot be opened (path and reason printed); 4 archive gaps:
 * nothing missing, but batches recorded as lost to a restore (acknowledged, then not held) exist. CONF defaults to
 * $SUIDO_CONF, else run/etc/suidoctl.conf. */
#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <zmq.h>

#include <openssl/crypto.h>

#include "audit_check.h"
#include "archive_gaps.h"
#include "backup.h"
#include "cm_audit.h"
#include "cm_audit_checkpoint.h"
#include "cm_conf.h"
#include "cm_log.h"
#include "cm_registry.h"
#include "cm_sql.h"
#include "cm_time.h"
#include "cm_zmq.h"
#include "provision.h"
#include "suido.pb-c.h"

enum { EXIT_OK = 0, EXIT_FAILED = 1, EXIT_USAGE = 2, EXIT_UNAVAILABLE = 3 };

static const cm_conf_spec SPEC[] = {
    {"service", "name", 1, "suidoctl"},
    {"service", "curve_public", 1, "suidoctl's CURVE public key"},
    {"service", "curve_secret", 1, "suidoctl's CURVE secret key (0600)"},
    {"service", "*", 0, "other daemon keys are ignored"},
    CM_REGISTRY_SPEC_ROWS("registry"),
    {"registry", "checkpoint_key", 0,
     "the registry's profile public key (PEM): checks its signed audit checkpoints"},
    {"archive", "database", 0, "archive database (read-only) for audit verify"},
    {"archive", "postgresql", 0, "instead of database: file (0600) with the libpq connection "
                                 "string of a PostgreSQL archive"},
    {"archive", "connect", 0, "archive API endpoint (alert cases)"},
    {"archive", "server_key", 0, "archive CURVE public key file"},
    {"archive", "timeout_ms", 0, "how long to wait for the archive (default 10000)"},
    {"gate", "connect", 0, "command gate API endpoint"},
    {"gate", "server_key", 0, "command gate CURVE public key file"},
    {"gate", "timeout_ms", 0, "how long to wait for the gate (default 10000)"},
    {"pki", "dir", 0, "deployment PKI folder (gateways/<id>/ private keys destroyed at disposal)"},
    {"pki", "script", 0, "keys/mkpki.sh, which issues a provisioned gateway's credentials"},
    {"pki", "broker", 0, "broker URL written into field bundles, e.g. ssl://host:8883"},
    {"backup", "registry_database", 0, "registry database that backup create snapshots"},
    {"backup", "signing_key", 0, "backup manifest signing key (PEM, 0600), for backup create"},
    {"backup", "verify_key", 0, "backup manifest public key (PEM), for backup verify/restore"},
    {"backup", "ca", 0, "deployment CA certificate: its SHA-256 is a backup's deployment id"},
    {NULL, NULL, 0, NULL},
};

typedef struct ctl {
    cm_conf *conf;
    const char *token;
    int json;
    void *zctx;
    cm_registry *reg;
    cm_curve_keypair keys;
    char subject[200]; /* what the request is about ("case 12", "gateway gw-0003"), for refusals */
    int offline;       /* --offline: the recovery path, reading state files with no session */
    const char *unanswered_hint; /* added when the registry does not answer */
} ctl;

static void usage(void)
{
    fprintf(stderr,
            "usage: suidoctl [-c CONF] [--json] COMMAND\n"
            "  gateway list | show ID\n"
            "  gateway suspend|activate|revoke|dispose ID [--reason TEXT]\n"
            "  gateway provision ID --site S --kind K --out DIR [--model M] [--firmware F]\n"
            "                            [--sparkplug: a Sparkplug B edge node, node id = ID]\n"
            "  service suspend|activate|revoke ID [--reason TEXT]\n"
            "  inventory\n"
            "  certs [--days N]          certificates expiring within N days (default 30)\n"
            "  audit verify [--db PATH]  check the audit log's hash chain (admin)\n"
            "  archive gaps [--gateway ID]  missing sequences per gateway and boot epoch (viewer)\n"
            "  archive verify            re-verify every stored batch signature and the audit chain\n"
            "                            (admin)\n"
            "  archive status            replication: role, position, each standby's lag\n"
            "  archive promote [--force] make the standby ([archive] connect) the primary\n"
            "  backup create DIR         signed online snapshot of the archive and registry (admin)\n"
            "  backup verify DIR         check a backup: signature, hashes, audit chain, batches\n"
            "                            (admin)\n"
            "  backup restore DIR --to STATEDIR [--force]  verify, then restore; services stopped\n"
            "  backup restore DIR --postgresql FILE  load the archive into an empty PostgreSQL\n"
            "                            database (FILE: its connection string, mode 0600)\n"
            "  login ID --totp CODE [--password-file F] [--source S]\n"
            "  logout\n"
            "  operator add ID --role viewer|operator|admin [--password-file F]\n"
            "  operator list | suspend|activate|revoke|dispose ID\n"
            "  access [--operator ID]\n"
            "  command GATEWAY ACTUATOR VALUE [--unit U] [--reason TEXT]\n"
            "  command status COMMAND_ID\n"
            "  alert list [--all] | show CASE | ack CASE\n"
            "  alert close CASE --cause TEXT --action TEXT   (once the condition has cleared)\n"
            "options: --token TOKEN (or $SUIDO_TOKEN), --json, -c CONF\n"
            "  --offline  archive gaps|verify, audit verify, backup verify on a stopped\n"
            "             deployment: the files read directly, no session, not audited\n"
            "             (the administrator's recovery path; restore is always offline)\n"
            "exit: 0 ok, 1 refused or a problem found, 2 usage, 3 cannot check (a service or\n"
            "      database unavailable), 4 archive gaps: nothing missing, but batches lost to a\n"
            "      restore are recorded (acknowledged to the gateway, then not held)\n");
    exit(EXIT_USAGE);
}

static void fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3), noreturn));
static void fail(int code, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "suidoctl: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    exit(code);
}

/* A whole number written in plain decimal digits (no sign, no space, no suffix) that is at most
 * max; 0 and *out, or -1. */
static int parse_whole(const char *s, unsigned long long max, unsigned long long *out)
{
    if (!s || !*s || strspn(s, "0123456789") != strlen(s) || strlen(s) > 19)
        return -1;
    unsigned long long v = strtoull(s, NULL, 10);
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* ms since the epoch as local time, e.g. "2026-12-07 14:03:51 CET"; "-" for 0. */
static const char *local_time(uint64_t ms, char *buf, size_t cap)
{
    if (ms == 0) {
        snprintf(buf, cap, "-");
        return buf;
    }
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&t, &tm) || strftime(buf, cap, "%Y-%m-%d %H:%M:%S %Z", &tm) == 0)
        snprintf(buf, cap, "%llu ms", (unsigned long long)ms);
    return buf;
}

static void connect_registry(ctl *c)
{
    char err[CM_CONF_ERRLEN];
    if (cm_curve_load_keypair(cm_conf_get(c->conf, "service", "curve_public"),
                              cm_conf_get(c->conf, "service", "curve_secret"), &c->keys) != CM_OK)
        fail(EXIT_FAILED, "%s: suidoctl's CURVE keys are unusable", cm_conf_name(c->conf));
    c->zctx = zmq_ctx_new();
    if (cm_registry_new(c->zctx, c->conf, "registry", &c->keys, &c->reg, err) != CM_OK)
        fail(EXIT_FAILED, "%s", err);
}

/* Sends req; on a transport failure or a refusal prints why and exits. */
static Suido__RegistryReply *call(ctl *c, const Suido__RegistryRequest *req)
{
    if (!c->reg)
        connect_registry(c);
    Suido__RegistryReply *rep = NULL;
    Suido__RegistryRequest with_token = *req;
    if (!req->token || !*req->token)
        with_token.token = (char *)(c->token ? c->token : "");
    if (cm_registry_call(c->reg, &with_token, &rep) != CM_OK)
        fail(EXIT_UNAVAILABLE, "the registry did not answer%s",
             c->unanswered_hint ? c->unanswered_hint : "");
    if (rep->status != 0) {
        const char *why = rep->error && *rep->error ? rep->error : cm_strerror(rep->status);
        if (rep->status == CM_ERR_INVAL)
            why = "not allowed by the lifecycle (provisioned -> active <-> suspended -> revoked -> "
                  "disposed) or invalid";
        if (rep->status == CM_ERR_DENIED && req->op != SUIDO__REGISTRY_OP__REG_LOGIN)
            why = "denied: log in first (--token or $SUIDO_TOKEN) with a role that may do this";
        /* the same words for a wrong password and a wrong code, for the operator as for anyone
         * trying; which one it was is in the audit log */
        if (rep->status == CM_ERR_DENIED && req->op == SUIDO__REGISTRY_OP__REG_LOGIN)
            why = "login failed (password or code)";
        if (rep->status == CM_ERR_UNKNOWN && req->id && *req->id)
            fail(EXIT_FAILED, "refused: unknown: no %s '%s'",
                 req->op == SUIDO__REGISTRY_OP__REG_SET_OPERATOR_STATE ||
                         req->op == SUIDO__REGISTRY_OP__REG_ACCESS_HISTORY
                     ? "operator"
                 : req->op == SUIDO__REGISTRY_OP__REG_SET_SERVICE_STATE ? "service"
                                                                         : "gateway",
                 req->id);
        if (rep->status == CM_ERR_REVOKED && rep->retry_after_ms)
            fail(EXIT_FAILED, "refused: locked out for this source, retry in %llu s",
                 (unsigned long long)((rep->retry_after_ms - cm_now_ms()) / 1000 + 1));
        fail(EXIT_FAILED, "refused: %s", why);
    }
    return rep;
}

static void json_str(const char *k, const char *v, int comma);

/* provision_register_fn: like call(), but a refusal returns instead of exiting, so that the
 * provisioning can undo what it issued. */
static int register_gateway(void *ctx, const Suido__RegistryRequest *req)
{
    ctl *c = ctx;
    if (!c->reg)
        connect_registry(c);
    Suido__RegistryRequest with_token = *req;
    with_token.token = (char *)(c->token ? c->token : "");
    Suido__RegistryReply *rep = NULL;
    if (cm_registry_call(c->reg, &with_token, &rep) != CM_OK) {
        fprintf(stderr, "suidoctl: the registry did not answer\n");
        return 1;
    }
    int rc = (int)rep->status;
    if (rc != 0)
        fprintf(stderr, "suidoctl: refused: %s\n",
                rep->status == CM_ERR_DENIED
                    ? "denied: log in first (--token or $SUIDO_TOKEN) with the admin role"
                    : (rep->error && *rep->error ? rep->error : cm_strerror(rep->status)));
    suido__registry_reply__free_unpacked(rep, NULL);
    return rc;
}

static int cmd_provision(ctl *c, const provision_request *r)
{
    /* Checked before anything is issued, so that a stale token does not burn the id (the CA
     * never issues an id twice). The registry checks the role again when the gateway is added. */
    Suido__RegistryRequest check = SUIDO__REGISTRY_REQUEST__INIT;
    check.op = SUIDO__REGISTRY_OP__REG_SESSION_CHECK;
    Suido__RegistryReply *who = call(c, &check);
    int admin = who->operator_ && who->operator_->role && strcmp(who->operator_->role, "admin") == 0;
    suido__registry_reply__free_unpacked(who, NULL);
    if (!admin)
        fail(EXIT_FAILED, "refused: provisioning needs an operator session with the admin role");
    int rc = provision_gateway(c->conf, r, register_gateway, c);
    if (rc != 0)
        return rc == 2 ? EXIT_USAGE : EXIT_FAILED;
    if (c->json) {
        printf("{");
        json_str("id", r->id, 1);
        json_str("state", "provisioned", 1);
        json_str("bundle", r->out, 0);
        printf("}\n");
    } else {
        printf("gateway %s: provisioned; field bundle in %s\n"
               "activate it when it is installed: suidoctl gateway activate %s\n",
               r->id, r->out, r->id);
    }
    return EXIT_OK;
}

/* The commands that read the deployment's state themselves (the archive's and registry's
 * databases, a backup) rather than ask a service. Online, before anything is read, the registry
 * checks the session against the command's least role and audits the access (ctl_access); a
 * refusal exits like any other. --offline (the rows marked so) is the administrator's recovery
 * path on a stopped deployment: no registry, no session, the files read directly with whatever
 * the operating system lets this user read; it says so on stderr, since nothing of it reaches
 * the audit log. */
static const struct {
    const char *verb[2];
    int nargs;   /* with its operand: the command's whole form, so usage errors stay usage errors */
    int offline; /* may run --offline */
} STATE_COMMANDS[] = {
    {{"archive", "gaps"}, 2, 1},   {{"archive", "verify"}, 2, 1}, {{"audit", "verify"}, 2, 1},
    {{"backup", "verify"}, 3, 1},  {{"backup", "restore"}, 3, 1}, {{"backup", "create"}, 3, 0},
};

/* The STATE_COMMANDS row of args, or -1. */
static int state_command(const char *const *args, int nargs)
{
    for (size_t i = 0; i < sizeof STATE_COMMANDS / sizeof STATE_COMMANDS[0]; i++)
        if (nargs == STATE_COMMANDS[i].nargs && strcmp(args[0], STATE_COMMANDS[i].verb[0]) == 0 &&
            strcmp(args[1], STATE_COMMANDS[i].verb[1]) == 0)
            return (int)i;
    return -1;
}

/* Before the STATE_COMMANDS row k runs: its session, or the offline notice. */
static void state_access(ctl *c, int k)
{
    char command[64];
    snprintf(command, sizeof command, "%s %s", STATE_COMMANDS[k].verb[0],
             STATE_COMMANDS[k].verb[1]);
    if (c->offline || strcmp(command, "backup restore") == 0) {
        /* restore is offline by nature: the services are stopped for it */
        fprintf(stderr, "suidoctl: offline: %s reads the state files directly, without a "
                        "session; this access is not in the audit log\n", command);
        return;
    }
    if (STATE_COMMANDS[k].offline)
        c->unanswered_hint = " (with the services stopped, an administrator can check the "
                             "files with --offline)";
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_CTL_ACCESS;
    req.command = command;
    suido__registry_reply__free_unpacked(call(c, &req), NULL);
    c->unanswered_hint = NULL;
}

/* One request to the service whose API is configured in [section] (connect, server_key,
 * timeout_ms) and its reply, unpacked with d (caller frees). Exits when it does not answer. */
static ProtobufCMessage *rpc(ctl *c, const char *section, const ProtobufCMessage *req,
                             const ProtobufCMessageDescriptor *d)
{
    char err[CM_CONF_ERRLEN];
    const char *ep = cm_conf_get(c->conf, section, "connect");
    const char *keyf = cm_conf_get(c->conf, section, "server_key");
    char key[CM_Z85_LEN + 1];
    long timeout = 10000;
    if (!ep || !keyf)
        fail(EXIT_USAGE, "%s: this needs [%s] connect and server_key", cm_conf_name(c->conf),
             section);
    if (cm_conf_long(c->conf, section, "timeout_ms", 10000, 100, 600000, &timeout, err) != CM_OK)
        fail(EXIT_USAGE, "%s", err);
    if (cm_curve_load_public(keyf, key) != CM_OK)
        fail(EXIT_FAILED, "%s: not a CURVE public key", keyf);
    if (!c->zctx) {
        if (cm_curve_load_keypair(cm_conf_get(c->conf, "service", "curve_public"),
                                  cm_conf_get(c->conf, "service", "curve_secret"),
                                  &c->keys) != CM_OK)
            fail(EXIT_FAILED, "%s: suidoctl's CURVE keys are unusable", cm_conf_name(c->conf));
        c->zctx = zmq_ctx_new();
    }
    void *sock = NULL;
    if (cm_zsock_client(c->zctx, ZMQ_DEALER, ep, key, &c->keys, &sock) != CM_OK)
        fail(EXIT_UNAVAILABLE, "cannot connect to %s at %s", section, ep);
    zmq_pollitem_t it = {.socket = sock, .events = ZMQ_POLLIN};
    ProtobufCMessage *rep = NULL;
    if (cm_zsend_pb(sock, req, 0) == CM_OK && zmq_poll(&it, 1, timeout) == 1) {
        zmq_msg_t m;
        zmq_msg_init(&m);
        if (zmq_msg_recv(&m, sock, 0) >= 0)
            rep = protobuf_c_message_unpack(d, NULL, zmq_msg_size(&m), zmq_msg_data(&m));
        zmq_msg_close(&m);
    }
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    zmq_close(sock);
    if (!rep)
        fail(EXIT_UNAVAILABLE, "the %s did not answer", section);
    return rep;
}

/* Exits with the reply's refusal unless status is 0; an unknown subject is named. */
static void check_status(const ctl *c, uint32_t status, const char *error)
{
    if (status == 0)
        return;
    if (status == CM_ERR_UNKNOWN && c->subject[0])
        fail(EXIT_FAILED, "refused: unknown: no %s", c->subject);
    if (status == CM_ERR_DENIED && (!error || strcmp(error, cm_strerror(CM_ERR_DENIED)) == 0))
        error = "denied: log in first (--token or $SUIDO_TOKEN) with a role that may do this";
    fail(status == CM_ERR_UNAVAILABLE ? EXIT_UNAVAILABLE : EXIT_FAILED, "refused: %s",
         error && *error ? error : cm_strerror(status));
}

static Suido__GateReply *gate_call(ctl *c, Suido__GateRequest *req)
{
    req->token = (char *)(c->token ? c->token : "");
    Suido__GateReply *rep =
        (Suido__GateReply *)rpc(c, "gate", &req->base, &suido__gate_reply__descriptor);
    check_status(c, rep->status, rep->error);
    return rep;
}

static Suido__ArchiveReply *archive_call(ctl *c, Suido__ArchiveRequest *req)
{
    req->token = (char *)(c->token ? c->token : "");
    Suido__ArchiveReply *rep =
        (Suido__ArchiveReply *)rpc(c, "archive", &req->base, &suido__archive_reply__descriptor);
    check_status(c, rep->status, rep->error);
    return rep;
}

/* `archive status` and `archive promote`: the replication state of the archive named by
 * [archive] connect (a primary: each standby's acknowledged position and lag; a standby: what it
 * applied, how far behind, when the primary last answered). Promotion is refused by the standby
 * while its primary still answers, unless forced. */
static int cmd_archive_repl(ctl *c, int promote, int force)
{
    Suido__ArchiveRequest req = SUIDO__ARCHIVE_REQUEST__INIT;
    req.op = promote ? SUIDO__ARCHIVE_OP__REPL_PROMOTE : SUIDO__ARCHIVE_OP__REPL_STATUS;
    req.force = force;
    Suido__ArchiveReply *rep = archive_call(c, &req);
    const Suido__ReplicationStatus *st = rep->replication;
    if (!st)
        fail(EXIT_FAILED, "%s", "the archive answered without its replication status");
    double silent_s = st->primary_answered_ms && st->now_ms >= st->primary_answered_ms
                          ? (double)(st->now_ms - st->primary_answered_ms) / 1000.0
                          : -1;
    if (c->json) {
        printf("{");
        json_str("role", st->role, 1);
        printf("\"position\":%llu,\"head\":%llu,\"behind\":%llu,\"primary_answered_ms\":%llu,"
               "\"primary_silent_s\":%.3f,\"handshakes_refused\":%llu,\"applied_ms\":%llu,"
               "\"now_ms\":%llu,",
               (unsigned long long)st->position, (unsigned long long)st->head,
               (unsigned long long)st->behind, (unsigned long long)st->primary_answered_ms,
               silent_s, (unsigned long long)st->handshakes_refused,
               (unsigned long long)st->applied_ms, (unsigned long long)st->now_ms);
        json_str("stopped", st->stopped, 1);
        printf("\"promoted\":%s,\"standbys\":[", promote ? "true" : "false");
        for (size_t i = 0; i < st->n_standbys; i++) {
            const Suido__StandbyState *b = st->standbys[i];
            printf("%s{", i ? "," : "");
            json_str("name", b->name, 1);
            printf("\"acked\":%llu,\"acked_ms\":%llu,\"behind\":%llu,\"lag_s\":%.3f,"
                   "\"live\":%s}",
                   (unsigned long long)b->acked, (unsigned long long)b->acked_ms,
                   (unsigned long long)b->behind, b->lag_s, b->live ? "true" : "false");
        }
        printf("]}\n");
    } else if (strcmp(st->role, "primary") == 0) {
        printf("archive: primary, newest input %llu, %zu standby(s)\n",
               (unsigned long long)st->position, st->n_standbys);
        for (size_t i = 0; i < st->n_standbys; i++) {
            const Suido__StandbyState *b = st->standbys[i];
            printf("  %-20s %-5s acknowledged %llu (%.1f s ago), behind %llu, lag %.1f s\n",
                   b->name, b->live ? "live" : "GONE", (unsigned long long)b->acked,
                   (double)(st->now_ms - b->acked_ms) / 1000.0, (unsigned long long)b->behind,
                   b->lag_s);
        }
    } else if (strcmp(st->role, "standby") == 0) {
        printf("archive: standby, applied %llu of %llu (behind %llu)",
               (unsigned long long)st->position, (unsigned long long)st->head,
               (unsigned long long)st->behind);
        if (silent_s >= 0)
            printf(", primary answered %.1f s ago\n", silent_s);
        else
            printf(", the primary never answered\n");
        if (*st->stopped)
            printf("  APPLYING STOPPED: %s\n", st->stopped);
        if (st->handshakes_refused)
            printf("  handshakes with the primary refused: %llu (key not on its allow-list?)\n",
                   (unsigned long long)st->handshakes_refused);
    } else {
        printf("archive: %s%s, position %llu\n", st->role,
               promote ? " (now the primary: it stores the pipeline's input and acknowledges)" : "",
               (unsigned long long)st->position);
    }
    suido__archive_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

static void print_case(const ctl *c, const Suido__AlertCase *k, int first)
{
    static const char *const SEV[] = {"info", "warning", "alarm", "critical"};
    const char *sev = k->severity >= 0 && k->severity <= 3 ? SEV[k->severity] : "?";
    char raised[32];
    cm_time_iso(k->raised_ms, raised, sizeof raised);
    if (c->json) {
        printf("%s{\"case_id\":%llu,", first ? "" : ",", (unsigned long long)k->case_id);
        json_str("alert_id", k->alert_id, 1);
        json_str("gateway", k->gateway_id, 1);
        json_str("site", k->site, 1);
        json_str("channel", k->channel, 1);
        json_str("rule", k->rule, 1);
        json_str("severity", sev, 1);
        json_str("state", k->state, 1);
        json_str("evidence", k->evidence, 1);
        json_str("acked_by", k->acked_by, 1);
        json_str("closed_by", k->closed_by, 1);
        json_str("cause", k->cause, 1);
        json_str("action", k->action, 1);
        printf("\"active\":%s,\"occurrences\":%u,\"raised_ms\":%llu}", k->active ? "true" : "false",
               k->occurrences, (unsigned long long)k->raised_ms);
    } else {
        printf("%-6llu %-12s %-8s %-10s %-8s %-22s %-14s x%-3u %s\n",
               (unsigned long long)k->case_id, k->state, sev, k->active ? "active" : "cleared",
               k->gateway_id, k->channel, k->rule, k->occurrences, k->evidence);
        if (*k->cause)
            printf("       closed by %s: cause: %s; action: %s\n", k->closed_by, k->cause,
                   k->action);
    }
}

static int cmd_alert(ctl *c, const char *verb, const char *id, int all, const char *cause,
                     const char *action)
{
    Suido__ArchiveRequest req = SUIDO__ARCHIVE_REQUEST__INIT;
    if (id) {
        unsigned long long n;
        if (parse_whole(id, INT64_MAX, &n) != 0)
            fail(EXIT_USAGE, "CASE must be a case number (got '%s')", id);
        req.case_id = n;
        snprintf(c->subject, sizeof c->subject, "case %llu", n);
    }
    if (strcmp(verb, "list") == 0 && !id) {
        req.op = SUIDO__ARCHIVE_OP__ALERT_LIST;
        req.all = all;
    } else if (strcmp(verb, "show") == 0 && id) {
        req.op = SUIDO__ARCHIVE_OP__ALERT_SHOW;
    } else if (strcmp(verb, "ack") == 0 && id) {
        req.op = SUIDO__ARCHIVE_OP__ALERT_ACK;
    } else if (strcmp(verb, "close") == 0 && id) {
        if (!cause || !action || !*cause || !*action)
            fail(EXIT_USAGE, "alert close needs --cause TEXT and --action TEXT: what was found "
                             "and what was done, for whoever meets this alert next");
        req.op = SUIDO__ARCHIVE_OP__ALERT_CLOSE;
        req.cause = (char *)cause;
        req.action = (char *)action;
    } else {
        usage();
    }
    Suido__ArchiveReply *rep = archive_call(c, &req);
    if (c->json) {
        printf("{\"cases\":[");
        for (size_t i = 0; i < rep->n_cases; i++)
            print_case(c, rep->cases[i], i == 0);
        printf("],\"past\":[");
        for (size_t i = 0; i < rep->n_past; i++)
            print_case(c, rep->past[i], i == 0);
        printf("]}\n");
    } else {
        printf("%-6s %-12s %-8s %-10s %-8s %-22s %-14s %-4s %s\n", "CASE", "STATE", "SEVERITY",
               "CONDITION", "GATEWAY", "CHANNEL", "RULE", "N", "EVIDENCE");
        for (size_t i = 0; i < rep->n_cases; i++)
            print_case(c, rep->cases[i], i == 0);
        if (req.op == SUIDO__ARCHIVE_OP__ALERT_SHOW) {
            printf("past cases of this kind on this asset: %zu\n", rep->n_past);
            for (size_t i = 0; i < rep->n_past; i++)
                print_case(c, rep->past[i], 0);
        }
    }
    suido__archive_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

static int cmd_command(ctl *c, const char *gw, const char *actuator, const char *value,
                       const char *unit, const char *reason)
{
    char *end;
    double v = strtod(value, &end);
    if (end == value || *end)
        fail(EXIT_USAGE, "VALUE must be a number (got '%s')", value);
    snprintf(c->subject, sizeof c->subject, "gateway '%s' with actuator '%s'", gw, actuator);
    Suido__GateRequest req = SUIDO__GATE_REQUEST__INIT;
    req.op = SUIDO__GATE_OP__GATE_COMMAND;
    req.gateway_id = (char *)gw;
    req.actuator = (char *)actuator;
    req.value = v; /* NaN and Inf too: the gate refuses them, and that refusal is audited */
    req.unit = (char *)(unit ? unit : "");
    req.reason = (char *)(reason ? reason : "");
    Suido__GateReply *rep = gate_call(c, &req);
    int sent = rep->decision && strcmp(rep->decision, "sent") == 0;
    if (c->json) {
        printf("{");
        json_str("decision", rep->decision, 1);
        json_str("reason", rep->reason, 1);
        json_str("detail", rep->detail, 1);
        json_str("command_id", rep->command_id, 1);
        /* the unit the gate checked, else the one asked for (a refusal may come before the
         * gate looked the actuator up) */
        json_str("unit", rep->unit && *rep->unit ? rep->unit : (unit ? unit : ""), 1);
        double shown = sent ? rep->value : v;
        if (isfinite(shown))
            printf("\"value\":%.17g,", shown);
        else
            printf("\"value\":null,"); /* JSON has no NaN or infinity */
        printf("\"expires_ms\":%llu}\n", (unsigned long long)rep->expires_ms);
    } else if (sent) {
        printf("sent %s: %s (expires in %llu s)\n", rep->command_id, rep->detail,
               (unsigned long long)((rep->expires_ms - cm_now_ms()) / 1000));
    } else {
        fprintf(stderr, "suidoctl: refused: %s: %s\n", rep->reason, rep->detail);
    }
    suido__gate_reply__free_unpacked(rep, NULL);
    return sent ? EXIT_OK : EXIT_FAILED;
}

static int cmd_command_status(ctl *c, const char *id)
{
    snprintf(c->subject, sizeof c->subject, "command '%s'", id);
    Suido__GateRequest req = SUIDO__GATE_REQUEST__INIT;
    req.op = SUIDO__GATE_OP__GATE_STATUS;
    req.command_id = (char *)id;
    Suido__GateReply *rep = gate_call(c, &req);
    if (c->json) {
        printf("{");
        json_str("command_id", rep->command_id, 1);
        json_str("outcome", rep->outcome, 1);
        json_str("unit", rep->unit, 1);
        printf("\"value\":%.17g,\"expires_ms\":%llu}\n", rep->value,
               (unsigned long long)rep->expires_ms);
    } else {
        printf("%s: %s (%.6g %s)\n", rep->command_id, rep->outcome, rep->value, rep->unit);
    }
    suido__gate_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

static const char *state_name(int s)
{
    static const char *const n[] = {"unknown", "provisioned", "active", "suspended", "revoked",
                                    "disposed"};
    return s >= 0 && s <= 5 ? n[s] : "unknown";
}

static void json_str(const char *k, const char *v, int comma)
{
    printf("\"%s\":\"", k);
    for (const char *p = v ? v : ""; *p; p++) {
        if (*p == '"' || *p == '\\')
            printf("\\%c", *p);
        else if ((unsigned char)*p < 0x20)
            printf("\\u%04x", *p);
        else
            putchar(*p);
    }
    printf("\"%s", comma ? "," : "");
}

static void print_gateway(const ctl *c, const Suido__GatewayInfo *g, int first)
{
    long days = (long)(((int64_t)g->cert_not_after_ms - (int64_t)cm_now_ms()) / 86400000);
    if (c->json) {
        printf("%s{", first ? "" : ",");
        json_str("id", g->id, 1);
        json_str("state", state_name(g->state), 1);
        json_str("site", g->site, 1);
        json_str("kind", g->kind, 1);
        json_str("model", g->model, 1);
        json_str("firmware", g->firmware, 1);
        json_str("protocol", g->protocol && *g->protocol ? g->protocol : "suido", 1);
        json_str("key_id", g->key_id, 1);
        json_str("cert_serial", g->cert_serial, 1);
        printf("\"cert_days_left\":%ld,\"last_seen_ms\":%llu}", days,
               (unsigned long long)g->last_seen_ms);
    } else {
        char seen[32] = "never";
        if (g->last_seen_ms)
            snprintf(seen, sizeof seen, "%llus ago",
                     (unsigned long long)((cm_now_ms() - g->last_seen_ms) / 1000));
        printf("%-10s %-11s %-16s %-10s %-8s %-7s %5ld  %-12s %s\n", g->id, state_name(g->state),
               g->site, g->kind, g->model ? g->model : "", g->firmware ? g->firmware : "", days,
               seen,
               g->protocol && strcmp(g->protocol, "sparkplug") == 0 ? "(sparkplug: TLS only)"
               : g->key_id && *g->key_id                             ? g->key_id
                                                                     : "(no key)");
    }
}

static void header_line(const ctl *c)
{
    if (!c->json)
        printf("%-10s %-11s %-16s %-10s %-8s %-7s %5s  %-12s %s\n", "ID", "STATE", "SITE",
               "KIND", "MODEL", "FIRMWARE", "DAYS", "LAST SEEN", "KEY");
}

/* One certificate of the PKI folder dir (rel: its path there), shown when it expires within
 * within_days; *shown counts what was printed, shown_before what the list held already. */
static void show_cert(const ctl *c, const char *dir, const char *rel, long within_days,
                      int shown_before, int *shown)
{
    char path[4096 + 600];
    cm_cert_info ci;
    snprintf(path, sizeof path, "%s/%s", dir, rel);
    if (access(path, F_OK) != 0 || cm_cert_info_load(path, &ci) != CM_OK)
        return;
    long days = (long)(((int64_t)ci.not_after_ms - (int64_t)cm_now_ms()) / 86400000);
    if (days > within_days)
        return;
    if (c->json) {
        printf("%s{", shown_before + *shown ? "," : "");
        json_str("certificate", rel, 1);
        json_str("subject", ci.subject_cn, 1);
        printf("\"cert_days_left\":%ld}", days);
    } else {
        if (*shown == 0)
            printf("\n%-40s %-24s %5s\n", "CERTIFICATE", "SUBJECT", "DAYS");
        printf("%-40s %-24s %5ld\n", rel, ci.subject_cn, days);
    }
    (*shown)++;
}

/* The deployment's own certificates besides the gateways' (the CA, the broker, the scraper, and
 * every service's client, metrics and HTTPS certificates), from the PKI folder named in [pki]
 * dir, each one that expires within within_days. Returns how many were shown; -1 when this
 * configuration names no PKI folder (a containerised suidoctl). */
static int list_other_certs(const ctl *c, long within_days, int shown_before)
{
    const char *dir = cm_conf_get(c->conf, "pki", "dir");
    if (!dir || !*dir)
        return -1;
    static const char *const fixed[] = {"ca/ca.crt", "broker/server.crt", "prometheus/client.crt"};
    static const char *const kinds[] = {"client.crt", "metrics.crt", "https.crt"};
    int shown = 0;
    for (size_t i = 0; i < sizeof fixed / sizeof *fixed; i++)
        show_cert(c, dir, fixed[i], within_days, shown_before, &shown);
    char path[4096 + 16];
    snprintf(path, sizeof path, "%s/services", dir);
    struct dirent **svc = NULL;
    int n = scandir(path, &svc, NULL, alphasort);
    for (int i = 0; i < n; i++) {
        for (size_t k = 0; k < sizeof kinds / sizeof *kinds && svc[i]->d_name[0] != '.'; k++) {
            char rel[600];
            snprintf(rel, sizeof rel, "services/%s/%s", svc[i]->d_name, kinds[k]);
            show_cert(c, dir, rel, within_days, shown_before, &shown);
        }
        free(svc[i]);
    }
    free(svc);
    return shown;
}

static int cmd_list(ctl *c, long within_days)
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_LIST_GATEWAYS;
    Suido__RegistryReply *rep = call(c, &req);
    int shown = 0;
    header_line(c);
    if (c->json)
        printf("[");
    for (size_t i = 0; i < rep->n_gateways; i++) {
        const Suido__GatewayInfo *g = rep->gateways[i];
        long days = (long)(((int64_t)g->cert_not_after_ms - (int64_t)cm_now_ms()) / 86400000);
        if (within_days >= 0 && days > within_days)
            continue;
        /* a revoked or disposed gateway's certificate is no longer one to renew */
        if (within_days >= 0 && (g->state == SUIDO__ENTITY_STATE__STATE_REVOKED ||
                                 g->state == SUIDO__ENTITY_STATE__STATE_DISPOSED))
            continue;
        print_gateway(c, g, shown++ == 0);
    }
    int others = within_days >= 0 ? list_other_certs(c, within_days, shown) : 0;
    if (c->json)
        printf("]\n");
    else if (within_days >= 0) {
        printf("%d certificate(s) expire within %ld days\n", shown + (others > 0 ? others : 0),
               within_days);
        if (others < 0)
            printf("(gateways only: this configuration names no [pki] dir for the deployment's "
                   "other certificates)\n");
    }
    suido__registry_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

static int cmd_show(ctl *c, const char *id)
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_GET_GATEWAY;
    req.id = (char *)id;
    Suido__RegistryReply *rep = call(c, &req);
    header_line(c);
    print_gateway(c, rep->gateway, 1);
    if (c->json)
        printf("\n");
    suido__registry_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

/* Overwrites a file with zeros, syncs and removes it (credentials unreadable at disposal).
 * Only a regular file named by path itself: a symbolic link (which could point anywhere outside
 * the bundle) or anything else is refused and left alone. 0 when done or absent. */
static int shred(const char *path)
{
    struct stat lst, st;
    if (lstat(path, &lst) != 0)
        return errno == ENOENT ? 0 : -1;
    if (!S_ISREG(lst.st_mode)) {
        fprintf(stderr, "suidoctl: %s: not a regular file, left alone\n", path);
        return -1;
    }
    int fd = open(path, O_WRONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return -1;
    /* the file opened is the one looked at (not swapped in between) */
    int ok = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == lst.st_dev &&
             st.st_ino == lst.st_ino;
    char zero[4096] = {0};
    for (off_t done = 0; ok && done < st.st_size; done += (off_t)sizeof zero)
        ok = write(fd, zero, sizeof zero) > 0;
    ok = ok && fsync(fd) == 0;
    close(fd);
    return ok && unlink(path) == 0 ? 0 : -1;
}

/* The lifecycle state a command verb asks for, or -1. */
static int verb_state(const char *verb)
{
    static const struct { const char *verb; int state; } VERBS[] = {
        {"suspend", SUIDO__ENTITY_STATE__STATE_SUSPENDED},
        {"activate", SUIDO__ENTITY_STATE__STATE_ACTIVE},
        {"revoke", SUIDO__ENTITY_STATE__STATE_REVOKED},
        {"dispose", SUIDO__ENTITY_STATE__STATE_DISPOSED},
    };
    for (size_t i = 0; i < sizeof VERBS / sizeof VERBS[0]; i++)
        if (strcmp(VERBS[i].verb, verb) == 0)
            return VERBS[i].state;
    return -1;
}

static int cmd_set_state(ctl *c, const char *kind, const char *verb, const char *id,
                         const char *reason)
{
    int state = verb_state(verb);
    int gw = strcmp(kind, "gateway") == 0;
    if (state < 0 || (!gw && state == SUIDO__ENTITY_STATE__STATE_DISPOSED))
        usage();
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = gw ? SUIDO__REGISTRY_OP__REG_SET_GATEWAY_STATE
                : SUIDO__REGISTRY_OP__REG_SET_SERVICE_STATE;
    req.id = (char *)id;
    req.state = state;
    req.reason = (char *)(reason ? reason : "");
    Suido__RegistryReply *rep = call(c, &req);
    suido__registry_reply__free_unpacked(rep, NULL);
    const char *pki = cm_conf_get(c->conf, "pki", "dir");
    int shredded = 0;
    if (gw && state == SUIDO__ENTITY_STATE__STATE_DISPOSED && pki) {
        /* the command key is absent for a gateway made before commands were encrypted */
        static const struct { const char *name; int optional; } files[] = {
            {"client.key", 0}, {"sign.key", 0}, {"cmdwrap.key", 1}};
        for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
            char path[4096];
            snprintf(path, sizeof path, "%s/gateways/%s/%s", pki, id, files[i].name);
            if (files[i].optional && access(path, F_OK) != 0)
                continue;
            if (shred(path) != 0)
                fail(EXIT_FAILED, "%s: could not destroy the key file", path);
            shredded++;
        }
    }
    if (c->json) {
        printf("{");
        json_str("id", id, 1);
        json_str("state", state_name(state), 0);
        printf(",\"key_files_destroyed\":%d}\n", shredded);
    } else {
        printf("%s %s: %s%s\n", kind, id, state_name(state),
               shredded ? " (private key files destroyed)" : "");
    }
    return EXIT_OK;
}

/* The password read by read_password: one buffer, wiped at exit whichever way suidoctl ends
 * (a refusal exits from call()). */
static char g_password[1100];

static void wipe_password(void) { OPENSSL_cleanse(g_password, sizeof g_password); }

/* The password: the first line of --password-file, or of standard input, into g_password.
 * Read unbuffered, so that no stdio buffer keeps a copy. */
static char *read_password(const char *file)
{
    FILE *f = file ? fopen(file, "r") : stdin;
    if (!f)
        fail(EXIT_USAGE, "%s: %s", file, strerror(errno));
    setvbuf(f, NULL, _IONBF, 0);
    atexit(wipe_password);
    char *out = g_password;
    if (!fgets(out, (int)sizeof g_password, f))
        out[0] = '\0';
    if (file)
        fclose(f);
    out[strcspn(out, "\r\n")] = '\0';
    if (!out[0])
        fail(EXIT_USAGE, "%s", "no password given (first line of --password-file or stdin)");
    return out;
}

static int cmd_login(ctl *c, const char *id, const char *pwfile, const char *totp,
                     const char *source)
{
    if (!totp)
        fail(EXIT_USAGE, "%s", "login needs --totp CODE (the 6 digits of the authenticator)");
    char *pw = read_password(pwfile);
    char host[256] = "";
    if (!source) {
        gethostname(host, sizeof host - 1);
        source = host;
    }
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_LOGIN;
    req.id = (char *)id;
    req.password = pw;
    req.totp = (char *)totp;
    req.source = (char *)source;
    Suido__RegistryReply *rep = call(c, &req);
    wipe_password();
    if (c->json) {
        printf("{");
        json_str("token", rep->token, 0);
        char until[32];
        cm_time_iso(rep->expires_ms, until, sizeof until);
        printf(",\"expires_ms\":%llu,\"expires\":\"%s\"}\n", (unsigned long long)rep->expires_ms,
               until);
    } else {
        char until[64];
        printf("%s\n", rep->token);
        fprintf(stderr, "suidoctl: logged in as %s until %s (export SUIDO_TOKEN=<token>)\n", id,
                local_time(rep->expires_ms, until, sizeof until));
    }
    suido__registry_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

static int cmd_simple(ctl *c, int op, const char *id)
{
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = op;
    req.id = (char *)(id ? id : "");
    Suido__RegistryReply *rep = call(c, &req);
    if (op == SUIDO__REGISTRY_OP__REG_LIST_OPERATORS) {
        if (c->json)
            printf("[");
        else
            printf("%-20s %-11s %-9s %8s  %s\n", "ID", "STATE", "ROLE", "FAILURES", "LOCKED UNTIL");
        for (size_t i = 0; i < rep->n_operators; i++) {
            const Suido__OperatorInfo *o = rep->operators[i];
            if (c->json) {
                printf("%s{", i ? "," : "");
                json_str("id", o->id, 1);
                json_str("state", state_name(o->state), 1);
                json_str("role", o->role, 0);
                printf(",\"failures\":%u,\"locked_until_ms\":%llu}", o->failures,
                       (unsigned long long)o->locked_until_ms);
            } else {
                char until[64];
                printf("%-20s %-11s %-9s %8u  %s\n", o->id, state_name(o->state), o->role,
                       o->failures,
                       o->locked_until_ms > cm_now_ms()
                           ? local_time(o->locked_until_ms, until, sizeof until)
                           : "-");
            }
        }
        if (!c->json && rep->n_operators == 0)
            printf("no entries\n");
        if (c->json)
            printf("]\n");
    } else if (op == SUIDO__REGISTRY_OP__REG_ACCESS_HISTORY) {
        if (c->json)
            printf("[");
        for (size_t i = 0; i < rep->n_access; i++) {
            const Suido__AccessEntry *e = rep->access[i];
            if (c->json) {
                printf("%s{\"ts_ms\":%llu,", i ? "," : "", (unsigned long long)e->ts_ms);
                json_str("operator", e->operator_, 1);
                json_str("source", e->source, 1);
                json_str("action", e->action, 1);
                json_str("result", e->result, 0);
                printf("}");
            } else {
                char when[64];
                printf("%-23s %-20s %-24s %-18s %s\n", local_time(e->ts_ms, when, sizeof when),
                       e->operator_, e->source, e->action, e->result);
            }
        }
        if (!c->json && rep->n_access == 0)
            printf("no entries\n");
        if (c->json)
            printf("]\n");
    }
    if (op == SUIDO__REGISTRY_OP__REG_LOGOUT)
        printf(c->json ? "{\"logged_out\":true}\n" : "logged out: the session has ended\n");
    suido__registry_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

static int cmd_operator_add(ctl *c, const char *id, const char *role, const char *pwfile)
{
    if (!role)
        fail(EXIT_USAGE, "%s", "operator add needs --role viewer|operator|admin");
    char *pw = read_password(pwfile);
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_OPERATOR_ADD;
    req.id = (char *)id;
    req.role = (char *)role;
    req.password = pw;
    Suido__RegistryReply *rep = call(c, &req);
    wipe_password();
    if (c->json) {
        printf("{");
        json_str("id", id, 1);
        json_str("role", role, 1);
        json_str("totp_secret", rep->totp_secret, 0);
        printf("}\n");
    } else {
        printf("operator %s (%s) added. TOTP secret (shown once): %s\n"
               "otpauth://totp/suido:%s?secret=%s&issuer=suido&digits=6&period=30\n",
               id, role, rep->totp_secret, id, rep->totp_secret);
    }
    suido__registry_reply__free_unpacked(rep, NULL);
    return EXIT_OK;
}

static int cmd_operator_state(ctl *c, const char *verb, const char *id)
{
    int state = verb_state(verb);
    if (state < 0)
        usage();
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_SET_OPERATOR_STATE;
    req.id = (char *)id;
    req.state = state;
    Suido__RegistryReply *rep = call(c, &req);
    suido__registry_reply__free_unpacked(rep, NULL);
    printf("operator %s: %s\n", id, state_name(state));
    return EXIT_OK;
}

/* The registry's latest signed audit checkpoint, its signature checked against [registry]
 * checkpoint_key: CM_OK and *out (caller frees), CM_ERR_CONFIG (no key), CM_ERR_UNKNOWN (none
 * signed yet), CM_ERR_UNAVAILABLE, CM_ERR_SIGNATURE. why names the problem. Offline it is read
 * from the registry's database file ([backup] registry_database) instead of asked for. */
static cm_err fetch_checkpoint(ctl *c, Suido__AuditCheckpoint **out, char *why, size_t len)
{
    *out = NULL;
    const char *path = cm_conf_get(c->conf, "registry", "checkpoint_key");
    const char *regdb = cm_conf_get(c->conf, "backup", "registry_database");
    cm_pubkey *key = NULL;
    if (c->offline && (!regdb || !*regdb)) {
        snprintf(why, len, "[backup] registry_database is not set in %s (offline, the checkpoint "
                           "is read from the registry's database)", cm_conf_name(c->conf));
        return CM_ERR_CONFIG;
    }
    if (!path || !*path) {
        snprintf(why, len, "[registry] checkpoint_key is not set in %s", cm_conf_name(c->conf));
        return CM_ERR_CONFIG;
    }
    if (cm_pubkey_load_pem(path, &key) != CM_OK) {
        snprintf(why, len, "[registry] checkpoint_key %s: not a P-256 public key (PEM)", path);
        return CM_ERR_CONFIG;
    }
    Suido__AuditCheckpoint *cp = NULL;
    cm_err rc = CM_OK;
    if (c->offline) {
        rc = backup_registry_checkpoint(regdb, &cp, why, len);
    } else {
        if (!c->reg)
            connect_registry(c);
        Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
        req.op = SUIDO__REGISTRY_OP__REG_GET_AUDIT_CHECKPOINT;
        req.token = (char *)(c->token ? c->token : "");
        Suido__RegistryReply *rep = NULL;
        rc = cm_registry_call(c->reg, &req, &rep);
        if (rc != CM_OK) {
            snprintf(why, len, "the registry did not answer");
            rc = CM_ERR_UNAVAILABLE;
        } else if (rep->status == CM_ERR_UNKNOWN) {
            snprintf(why, len, "the registry has signed no checkpoint yet");
            rc = CM_ERR_UNKNOWN;
        } else if (rep->status != CM_OK) {
            snprintf(why, len, "the registry refused: %s", cm_strerror(rep->status));
            rc = CM_ERR_UNAVAILABLE;
        } else {
            cp = rep->checkpoint; /* moved out of the reply */
            rep->checkpoint = NULL;
        }
        if (rep)
            suido__registry_reply__free_unpacked(rep, NULL);
    }
    if (cp && cm_audit_checkpoint_verify(key, cp) != CM_OK) {
        snprintf(why, len, "the checkpoint's signature is not the registry's (%s)", path);
        rc = CM_ERR_SIGNATURE;
        suido__audit_checkpoint__free_unpacked(cp, NULL);
        cp = NULL;
    }
    *out = cp;
    cm_pubkey_destroy(&key);
    return rc;
}

/* Recomputes the hash chain of the audit log and reports the first entry that does not fit;
 * for the live archive, also whether the log still reaches the registry's latest signed
 * checkpoint (entries cut off its end leave a chain that checks good). A copy named with --db
 * (a backup, a standby) may rightly be older than the checkpoint: its chain alone is checked
 * (`backup verify` checks a backup against the checkpoint its manifest carries). */
static int cmd_audit_verify(ctl *c, const char *db)
{
    cm_sql *h = NULL;
    char label[4200], why[600];
    cm_audit_check_result r;
    if (db) { /* a SQLite archive named on the command line */
        snprintf(label, sizeof label, "%s", db);
        if (!ctl_sqlite_open(db, &h, why, sizeof why))
            fail(EXIT_UNAVAILABLE, "%s: cannot open: %s", db, why);
    } else {
        int orc = ctl_archive_open(c->conf, &h, label, sizeof label);
        if (orc != 0)
            return orc;
    }
    /* the checkpoint: verified, truncated, none, unavailable, bad_signature, not_configured,
     * not_checked (a copy). Fetched before the log is read: the registry signs only heads the
     * archive has committed, so the log read afterwards holds the checkpoint's entry, however
     * many entries (this check's own ctl_access among them) are written meanwhile. */
    const char *cp_state = "not_checked";
    char cp_why[600] = "";
    Suido__AuditCheckpoint *cp = NULL;
    uint64_t cp_seq = 0;
    if (!db) {
        cm_err got = fetch_checkpoint(c, &cp, cp_why, sizeof cp_why);
        cp_state = got == CM_ERR_CONFIG      ? "not_configured"
                   : got == CM_ERR_UNKNOWN   ? "none"
                   : got == CM_ERR_SIGNATURE ? "bad_signature"
                   : got != CM_OK            ? "unavailable"
                                             : "verified";
    }
    if (cm_audit_check_db(h, &r) != CM_OK) {
        fprintf(stderr, "suidoctl: %s: %s\n", label, cm_sql_error(h));
        if (cp)
            suido__audit_checkpoint__free_unpacked(cp, NULL);
        cm_sql_close(&h);
        return EXIT_UNAVAILABLE;
    }
    if (!db) {
        if (cp) {
            cp_seq = cp->seq;
            int reached = cm_audit_checkpoint_reached(h, &r, cp, cp_why, sizeof cp_why);
            if (reached < 0) {
                fprintf(stderr, "suidoctl: %s: %s\n", label, cm_sql_error(h));
                suido__audit_checkpoint__free_unpacked(cp, NULL);
                cm_sql_close(&h);
                return EXIT_UNAVAILABLE;
            }
            cp_state = reached ? "verified" : "truncated";
            suido__audit_checkpoint__free_unpacked(cp, NULL);
        }
    }
    cm_sql_close(&h);
    int truncated = strcmp(cp_state, "truncated") == 0;
    int bad_sig = strcmp(cp_state, "bad_signature") == 0;
    if (c->json)
        printf("{\"ok\":%s,\"entries\":%llu,\"first_bad\":%llu,\"head\":\"%s\","
               "\"checkpoint\":\"%s\",\"checkpoint_seq\":%llu}\n",
               r.why || truncated || bad_sig ? "false" : "true", (unsigned long long)r.entries,
               (unsigned long long)r.bad_seq, r.head_hex, cp_state, (unsigned long long)cp_seq);
    if (r.why) {
        fprintf(stderr, "suidoctl: audit log BROKEN at entry %llu (position %llu): %s\n",
                (unsigned long long)r.bad_seq, (unsigned long long)r.rows, r.why);
        return EXIT_FAILED;
    }
    if (truncated) {
        fprintf(stderr, "suidoctl: audit log TRUNCATED: %s\n", cp_why);
        return EXIT_FAILED;
    }
    if (bad_sig) {
        fprintf(stderr, "suidoctl: audit checkpoint REFUSED: %s\n", cp_why);
        return EXIT_FAILED;
    }
    if (strcmp(cp_state, "unavailable") == 0) {
        fprintf(stderr, "suidoctl: the chain of %llu entries is intact, but whether its newest "
                        "entries were removed cannot be told: %s\n",
                (unsigned long long)r.rows, cp_why);
        return EXIT_UNAVAILABLE;
    }
    if (*cp_why && strcmp(cp_state, "verified") != 0)
        fprintf(stderr, "suidoctl: note: end of the log not checked: %s\n", cp_why);
    if (!c->json)
        printf("audit log intact: %llu entries, head %s%s\n", (unsigned long long)r.rows,
               r.head_hex,
               strcmp(cp_state, "verified") == 0 ? ", reaches the registry's signed checkpoint"
                                                 : "");
    return EXIT_OK;
}

int main(int argc, char **argv)
{
    ctl c = {0};
    const char *conf_path = getenv("SUIDO_CONF");
    const char *args[8];
    int nargs = 0;
    const char *reason = NULL, *db = NULL, *pwfile = NULL, *totp = NULL, *source = NULL;
    const char *role = NULL, *who = NULL, *unit = NULL, *cause = NULL, *action = NULL;
    int all = 0;
    const char *gateway = NULL;
    const char *restore_to = NULL, *restore_pg = NULL;
    int force = 0;
    provision_request prov = {0};
    long days = 30;
    c.token = getenv("SUIDO_TOKEN");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc)
            conf_path = argv[++i];
        else if (strcmp(argv[i], "--json") == 0)
            c.json = 1;
        else if (strcmp(argv[i], "--reason") == 0 && i + 1 < argc)
            reason = argv[++i];
        else if (strcmp(argv[i], "--db") == 0 && i + 1 < argc)
            db = argv[++i];
        else if (strcmp(argv[i], "--days") == 0 && i + 1 < argc) {
            unsigned long long d;
            if (parse_whole(argv[++i], 36500, &d) != 0)
                fail(EXIT_USAGE, "--days takes a whole number of days from 0 to 36500 (got '%s')",
                     argv[i]);
            days = (long)d;
        }
        else if (strcmp(argv[i], "--token") == 0 && i + 1 < argc)
            c.token = argv[++i];
        else if (strcmp(argv[i], "--password-file") == 0 && i + 1 < argc)
            pwfile = argv[++i];
        else if (strcmp(argv[i], "--totp") == 0 && i + 1 < argc)
            totp = argv[++i];
        else if (strcmp(argv[i], "--source") == 0 && i + 1 < argc)
            source = argv[++i];
        else if (strcmp(argv[i], "--role") == 0 && i + 1 < argc)
            role = argv[++i];
        else if (strcmp(argv[i], "--operator") == 0 && i + 1 < argc)
            who = argv[++i];
        else if (strcmp(argv[i], "--gateway") == 0 && i + 1 < argc)
            gateway = argv[++i];
        else if (strcmp(argv[i], "--cause") == 0 && i + 1 < argc)
            cause = argv[++i];
        else if (strcmp(argv[i], "--action") == 0 && i + 1 < argc)
            action = argv[++i];
        else if (strcmp(argv[i], "--all") == 0)
            all = 1;
        else if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
            restore_to = argv[++i];
        else if (strcmp(argv[i], "--postgresql") == 0 && i + 1 < argc)
            restore_pg = argv[++i];
        else if (strcmp(argv[i], "--force") == 0)
            force = 1;
        else if (strcmp(argv[i], "--offline") == 0)
            c.offline = 1;
        else if (strcmp(argv[i], "--unit") == 0 && i + 1 < argc)
            unit = argv[++i];
        else if (strcmp(argv[i], "--site") == 0 && i + 1 < argc)
            prov.site = argv[++i];
        else if (strcmp(argv[i], "--kind") == 0 && i + 1 < argc)
            prov.kind = argv[++i];
        else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
            prov.model = argv[++i];
        else if (strcmp(argv[i], "--firmware") == 0 && i + 1 < argc)
            prov.firmware = argv[++i];
        else if (strcmp(argv[i], "--sparkplug") == 0)
            prov.protocol = "sparkplug";
        else if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
            prov.out = argv[++i];
        else if (argv[i][0] == '-' || nargs == 8)
            usage();
        else
            args[nargs++] = argv[i];
    }
    if (nargs == 0)
        usage();
    cm_log_init("suidoctl", CM_LOG_ERROR);
    char err[CM_CONF_ERRLEN];
    if (!conf_path)
        conf_path = "run/etc/suidoctl.conf";
    if (cm_conf_load(conf_path, &c.conf, err) != CM_OK || cm_conf_check(c.conf, SPEC, err) != CM_OK)
        fail(EXIT_USAGE, "%s", err);
    int rc = EXIT_USAGE;
    const char *cmd = args[0];
    int sc = state_command(args, nargs);
    if (c.offline && (sc < 0 || !STATE_COMMANDS[sc].offline))
        fail(EXIT_USAGE, "%s", "--offline is only for archive gaps, archive verify, audit verify, "
                               "backup verify and backup restore (the recovery path)");
    if (sc >= 0)
        state_access(&c, sc);
    if (strcmp(cmd, "gateway") == 0 && nargs == 2 && strcmp(args[1], "list") == 0)
        rc = cmd_list(&c, -1);
    else if (strcmp(cmd, "inventory") == 0 && nargs == 1)
        rc = cmd_list(&c, -1);
    else if (strcmp(cmd, "certs") == 0 && nargs == 1)
        rc = cmd_list(&c, days);
    else if (strcmp(cmd, "gateway") == 0 && nargs == 3 && strcmp(args[1], "show") == 0)
        rc = cmd_show(&c, args[2]);
    else if (strcmp(cmd, "gateway") == 0 && nargs == 3 && strcmp(args[1], "provision") == 0) {
        prov.id = args[2];
        rc = cmd_provision(&c, &prov);
    } else if ((strcmp(cmd, "gateway") == 0 || strcmp(cmd, "service") == 0) && nargs == 3)
        rc = cmd_set_state(&c, cmd, args[1], args[2], reason);
    else if (strcmp(cmd, "audit") == 0 && nargs == 2 && strcmp(args[1], "verify") == 0)
        rc = cmd_audit_verify(&c, db);
    else if (strcmp(cmd, "archive") == 0 && nargs == 2 && strcmp(args[1], "gaps") == 0)
        rc = archive_gaps(c.conf, gateway, c.json);
    else if (strcmp(cmd, "archive") == 0 && nargs == 2 && strcmp(args[1], "status") == 0)
        rc = cmd_archive_repl(&c, 0, 0);
    else if (strcmp(cmd, "archive") == 0 && nargs == 2 && strcmp(args[1], "promote") == 0)
        rc = cmd_archive_repl(&c, 1, force);
    else if (strcmp(cmd, "archive") == 0 && nargs == 2 && strcmp(args[1], "verify") == 0)
        rc = archive_verify_live(c.conf, c.json);
    else if (strcmp(cmd, "backup") == 0 && nargs == 3 && strcmp(args[1], "create") == 0)
        rc = backup_create(c.conf, args[2], c.json);
    else if (strcmp(cmd, "backup") == 0 && nargs == 3 && strcmp(args[1], "verify") == 0)
        rc = backup_verify(c.conf, args[2], c.json);
    else if (strcmp(cmd, "backup") == 0 && nargs == 3 && strcmp(args[1], "restore") == 0) {
        /* --postgresql: the archive into PostgreSQL; --to: the files into a state directory */
        rc = restore_pg ? backup_restore_pg(c.conf, args[2], restore_pg, c.json) : EXIT_OK;
        if (rc == EXIT_OK && (restore_to || !restore_pg))
            rc = backup_restore(c.conf, args[2], restore_to, force, c.json);
    } else if (strcmp(cmd, "login") == 0 && nargs == 2)
        rc = cmd_login(&c, args[1], pwfile, totp, source);
    else if (strcmp(cmd, "logout") == 0 && nargs == 1)
        rc = cmd_simple(&c, SUIDO__REGISTRY_OP__REG_LOGOUT, NULL);
    else if (strcmp(cmd, "access") == 0 && nargs == 1)
        rc = cmd_simple(&c, SUIDO__REGISTRY_OP__REG_ACCESS_HISTORY, who ? who : "*");
    else if (strcmp(cmd, "operator") == 0 && nargs == 2 && strcmp(args[1], "list") == 0)
        rc = cmd_simple(&c, SUIDO__REGISTRY_OP__REG_LIST_OPERATORS, NULL);
    else if (strcmp(cmd, "operator") == 0 && nargs == 3 && strcmp(args[1], "add") == 0)
        rc = cmd_operator_add(&c, args[2], role, pwfile);
    else if (strcmp(cmd, "operator") == 0 && nargs == 3)
        rc = cmd_operator_state(&c, args[1], args[2]);
    else if (strcmp(cmd, "command") == 0 && nargs == 3 && strcmp(args[1], "status") == 0)
        rc = cmd_command_status(&c, args[2]);
    else if (strcmp(cmd, "alert") == 0 && (nargs == 2 || nargs == 3))
        rc = cmd_alert(&c, args[1], nargs == 3 ? args[2] : NULL, all, cause, action);
    else if (strcmp(cmd, "command") == 0 && nargs == 4)
        rc = cmd_command(&c, args[1], args[2], args[3], unit, reason);
    else
        usage();
    cm_registry_destroy(&c.reg);
    if (c.zctx)
        zmq_ctx_term(c.zctx);
    cm_conf_destroy(&c.conf);
    return rc;
}
