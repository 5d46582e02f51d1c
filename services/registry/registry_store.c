/* registry_store: SQLite persistence of the registry. */
#include "registry_store.h"

#include <errno.h>
#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cm_crypto.h"
#include "cm_log.h"
#include "cm_zmq.h"
#include "cm_time.h"

#define SCHEMA_VERSION 3 /* 2: services, 3: expiry warnings */

struct registry_store {
    sqlite3 *db;
    sqlite3_stmt *get;
};

static const char SCHEMA[] =
    "PRAGMA journal_mode=WAL;"
    "PRAGMA synchronous=FULL;"
    "CREATE TABLE IF NOT EXISTS gateways("
    " id TEXT PRIMARY KEY,"
    " state INTEGER NOT NULL,"
    " site TEXT NOT NULL,"
    " kind TEXT NOT NULL,"
    " model TEXT NOT NULL DEFAULT '',"
    " firmware TEXT NOT NULL DEFAULT '',"
    " sign_pub BLOB NOT NULL,"
    " key_id TEXT NOT NULL,"
    " cert_serial TEXT NOT NULL,"
    " cert_sha256 TEXT NOT NULL,"
    " cert_not_after_ms INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " last_seen_ms INTEGER NOT NULL DEFAULT 0,"
    " cert_warned INTEGER NOT NULL DEFAULT 0,"
    " cmd_pub BLOB NOT NULL DEFAULT x'',"
    " protocol TEXT NOT NULL DEFAULT 'suido');"
    "CREATE TABLE IF NOT EXISTS services("
    " id TEXT PRIMARY KEY,"
    " state INTEGER NOT NULL,"
    " curve_pub TEXT NOT NULL,"
    " cert_serial TEXT NOT NULL,"
    " cert_sha256 TEXT NOT NULL,"
    " cert_not_after_ms INTEGER NOT NULL,"
    " created_ms INTEGER NOT NULL,"
    " cert_warned INTEGER NOT NULL DEFAULT 0);"
    /* what each gateway declared in its last birth: its channels and their units */
    "CREATE TABLE IF NOT EXISTS gateway_channels("
    " gateway TEXT NOT NULL, channel TEXT NOT NULL, unit TEXT NOT NULL,"
    " PRIMARY KEY(gateway, channel)) WITHOUT ROWID;"
    /* the boot epoch of the birth those channels come from: an older birth may not replace them */
    "CREATE TABLE IF NOT EXISTS gateway_births("
    " gateway TEXT PRIMARY KEY, boot_epoch INTEGER NOT NULL) WITHOUT ROWID;";

/* The database holds password hashes and sealed seeds: it, and its -wal and -shm (which SQLite
 * creates with the database's mode), are the registry's alone. An older file with a wider mode
 * is narrowed. */
static cm_err make_private(const char *path)
{
    if (strcmp(path, ":memory:") == 0)
        return CM_OK;
    int fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0 || fchmod(fd, 0600) != 0) {
        cm_error("path=%s error=\"%s\"", path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return CM_ERR_IO;
    }
    close(fd);
    static const char *const side[] = {"-wal", "-shm", "-journal"};
    for (size_t i = 0; i < sizeof side / sizeof side[0]; i++) {
        char p[4200];
        snprintf(p, sizeof p, "%s%s", path, side[i]);
        if (chmod(p, 0600) != 0 && errno != ENOENT) {
            cm_error("path=%s error=\"%s\"", p, strerror(errno));
            return CM_ERR_IO;
        }
    }
    return CM_OK;
}

/* Columns of the gateways table that came after schema version 3: the RSA command keys (empty:
 * none), then the protocol (suido, or sparkplug for an edge node fed through the Sparkplug host).
 * A database made before gets them, whatever its version number says. */
static int add_gateway_column(sqlite3 *db, const char *name, const char *decl, char **errmsg)
{
    sqlite3_stmt *st;
    int have = 0;
    if (sqlite3_prepare_v2(db, "SELECT count(*) FROM pragma_table_info('gateways') WHERE name=?",
                           -1, &st, NULL) != SQLITE_OK)
        return SQLITE_ERROR;
    sqlite3_bind_text(st, 1, name, -1, SQLITE_STATIC);
    if (sqlite3_step(st) == SQLITE_ROW)
        have = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    if (have)
        return SQLITE_OK;
    char sql[200];
    snprintf(sql, sizeof sql, "ALTER TABLE gateways ADD COLUMN %s %s", name, decl);
    return sqlite3_exec(db, sql, NULL, NULL, errmsg);
}

cm_err registry_store_open(const char *path, registry_store **out)
{
    *out = NULL;
    if (make_private(path) != CM_OK)
        return CM_ERR_IO;
    registry_store *s = calloc(1, sizeof *s);
    if (!s)
        return CM_ERR_NOMEM;
    int version = -1;
    if (sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) !=
        SQLITE_OK)
        goto fail;
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "PRAGMA user_version", -1, &st, NULL) != SQLITE_OK)
        goto fail;
    if (sqlite3_step(st) == SQLITE_ROW)
        version = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    /* versions 1 and 2 lack only what the schema and migrations below add */
    if (version < 0 || version > SCHEMA_VERSION) {
        cm_error("path=%s schema_version=%d expected=%d error=\"wrong database version\"", path,
                 version, SCHEMA_VERSION);
        goto fail;
    }
    char *errmsg = NULL;
    if (sqlite3_exec(s->db, SCHEMA, NULL, NULL, &errmsg) != SQLITE_OK ||
        (version < 3 && version > 0 &&
         sqlite3_exec(s->db,
                      "ALTER TABLE gateways ADD COLUMN cert_warned INTEGER NOT NULL DEFAULT 0;"
                      "ALTER TABLE services ADD COLUMN cert_warned INTEGER NOT NULL DEFAULT 0;",
                      NULL, NULL, &errmsg) != SQLITE_OK) ||
        add_gateway_column(s->db, "cmd_pub", "BLOB NOT NULL DEFAULT x''", &errmsg) != SQLITE_OK ||
        add_gateway_column(s->db, "protocol", "TEXT NOT NULL DEFAULT 'suido'", &errmsg) !=
            SQLITE_OK ||
        sqlite3_exec(s->db, "PRAGMA user_version=3", NULL, NULL, &errmsg) != SQLITE_OK) {
        cm_error("path=%s error=\"%s\"", path, errmsg ? errmsg : "schema");
        sqlite3_free(errmsg);
        goto fail;
    }
    if (sqlite3_prepare_v2(s->db,
                           "SELECT id,state,site,kind,sign_pub,key_id,cert_serial,"
                           "cert_not_after_ms,model,firmware,cert_sha256,created_ms,last_seen_ms,"
                           "cmd_pub,protocol FROM gateways WHERE id=?",
                           -1, &s->get, NULL) != SQLITE_OK)
        goto fail;
    *out = s;
    return CM_OK;
fail:
    if (s->db)
        cm_error("path=%s error=\"%s\"", path, sqlite3_errmsg(s->db));
    registry_store_close(&s);
    return CM_ERR_DB;
}

void registry_store_close(registry_store **sp)
{
    if (!sp || !*sp)
        return;
    sqlite3_finalize((*sp)->get);
    sqlite3_close((*sp)->db);
    free(*sp);
    *sp = NULL;
}

static int valid_id(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '-'))
            return 0;
    return 1;
}

/* One [service ID] section: its CURVE public key and certificate. */
static cm_err import_service(registry_store *s, const cm_conf *inv, const char *sec,
                             const char *id, int *added, char err[CM_CONF_ERRLEN])
{
    const char *curvef, *certf;
    cm_err rc;
    if (!valid_id(id)) {
        snprintf(err, CM_CONF_ERRLEN, "%s: [%s] service id must be 1-64 of [a-z0-9-]",
                 cm_conf_name(inv), sec);
        return CM_ERR_CONFIG;
    }
    if ((rc = cm_conf_req(inv, sec, "curve_pub", &curvef, err)) ||
        (rc = cm_conf_req(inv, sec, "cert", &certf, err)))
        return rc;
    char key[CM_Z85_LEN + 1];
    cm_cert_info ci;
    if (cm_curve_load_public(curvef, key) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: %s: not a CURVE public key", cm_conf_name(inv),
                 cm_conf_line(inv, sec, "curve_pub"), curvef);
        return CM_ERR_CONFIG;
    }
    if (cm_cert_info_load(certf, &ci) != CM_OK || strcmp(ci.subject_cn, id) != 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: %s: not a readable certificate with CN=%s",
                 cm_conf_name(inv), cm_conf_line(inv, sec, "cert"), certf, id);
        return CM_ERR_CONFIG;
    }
    /* A new service is added active. A known one that is neither revoked nor disposed takes the
     * key and certificate the inventory names now (a rotated CURVE key, a renewed certificate):
     * a later revocation then announces the key in use, not the one rotated away. A revoked
     * service keeps its row as it is (its key stays the one every socket refuses). */
    sqlite3_stmt *ins;
    if (sqlite3_prepare_v2(s->db,
                           "INSERT INTO services(id,state,curve_pub,cert_serial,"
                           "cert_sha256,cert_not_after_ms,created_ms) VALUES(?,?,?,?,?,?,?)"
                           " ON CONFLICT(id) DO UPDATE SET curve_pub = excluded.curve_pub,"
                           " cert_serial = excluded.cert_serial, cert_sha256 = excluded.cert_sha256,"
                           " cert_not_after_ms = excluded.cert_not_after_ms, cert_warned = 0"
                           " WHERE services.state IN (?8, ?9) AND (services.curve_pub <>"
                           " excluded.curve_pub OR services.cert_sha256 <> excluded.cert_sha256)",
                           -1, &ins, NULL) != SQLITE_OK) {
        snprintf(err, CM_CONF_ERRLEN, "registry database: %s", sqlite3_errmsg(s->db));
        return CM_ERR_DB;
    }
    sqlite3_bind_text(ins, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(ins, 2, SUIDO__ENTITY_STATE__STATE_ACTIVE);
    sqlite3_bind_text(ins, 3, key, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 4, ci.serial, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 5, ci.sha256, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(ins, 6, (sqlite3_int64)ci.not_after_ms);
    sqlite3_bind_int64(ins, 7, (sqlite3_int64)cm_now_ms());
    sqlite3_bind_int(ins, 8, SUIDO__ENTITY_STATE__STATE_ACTIVE);
    sqlite3_bind_int(ins, 9, SUIDO__ENTITY_STATE__STATE_SUSPENDED);
    int known = 0;
    sqlite3_stmt *q;
    if (sqlite3_prepare_v2(s->db, "SELECT 1 FROM services WHERE id=?", -1, &q, NULL) == SQLITE_OK) {
        sqlite3_bind_text(q, 1, id, -1, SQLITE_TRANSIENT);
        known = sqlite3_step(q) == SQLITE_ROW;
        sqlite3_finalize(q);
    }
    int st = sqlite3_step(ins);
    sqlite3_finalize(ins);
    if (st != SQLITE_DONE) {
        snprintf(err, CM_CONF_ERRLEN, "registry database: %s", sqlite3_errmsg(s->db));
        return CM_ERR_DB;
    }
    if (!known)
        *added += sqlite3_changes(s->db);
    else if (sqlite3_changes(s->db))
        cm_info("service=%s curve_pub=%s cert_serial=%s event=service_key_or_certificate_updated",
                id, key, ci.serial);
    return CM_OK;
}

/* Inserts one gateway. if_absent: an existing id is left alone (*added = 0); otherwise an id that
 * was ever used (disposed ones included) is CM_ERR_DUPLICATE. */
static cm_err insert_gateway(registry_store *s, const registry_new_gateway *g, int if_absent,
                             int *added)
{
    *added = 0;
    cm_pubkey *pk = NULL;
    if (cm_pubkey_from_der(g->sign_pub_der, g->sign_pub_len, &pk) != CM_OK)
        return CM_ERR_KEY;
    cm_rsa *ck = NULL;
    if (g->cmd_pub_len && cm_rsa_from_public_der(g->cmd_pub_der, g->cmd_pub_len, &ck) != CM_OK) {
        cm_pubkey_destroy(&pk);
        return CM_ERR_KEY;
    }
    cm_rsa_destroy(&ck);
    sqlite3_stmt *ins = NULL;
    cm_err rc = CM_ERR_DB;
    if (sqlite3_prepare_v2(s->db,
                           if_absent ? "INSERT OR IGNORE INTO gateways(id,state,site,kind,model,"
                                       "firmware,sign_pub,key_id,cert_serial,cert_sha256,"
                                       "cert_not_after_ms,created_ms,cmd_pub,protocol) "
                                       "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
                                     : "INSERT INTO gateways(id,state,site,kind,model,"
                                       "firmware,sign_pub,key_id,cert_serial,cert_sha256,"
                                       "cert_not_after_ms,created_ms,cmd_pub,protocol) "
                                       "VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           -1, &ins, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(ins, 1, g->id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(ins, 2, g->state);
    sqlite3_bind_text(ins, 3, g->site, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 4, g->kind, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 5, g->model ? g->model : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 6, g->firmware ? g->firmware : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(ins, 7, g->sign_pub_der, (int)g->sign_pub_len, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 8, cm_pubkey_key_id(pk), -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 9, g->cert->serial, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 10, g->cert->sha256, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(ins, 11, (sqlite3_int64)g->cert->not_after_ms);
    sqlite3_bind_int64(ins, 12, (sqlite3_int64)cm_now_ms());
    sqlite3_bind_blob(ins, 13, g->cmd_pub_len ? g->cmd_pub_der : (const uint8_t *)"",
                      (int)g->cmd_pub_len, SQLITE_TRANSIENT);
    sqlite3_bind_text(ins, 14, g->protocol && *g->protocol ? g->protocol : "suido", -1,
                      SQLITE_TRANSIENT);
    int st = sqlite3_step(ins);
    if (st == SQLITE_CONSTRAINT) {
        rc = CM_ERR_DUPLICATE;
    } else if (st == SQLITE_DONE) {
        *added = sqlite3_changes(s->db);
        rc = CM_OK;
    }
out:
    sqlite3_finalize(ins);
    cm_pubkey_destroy(&pk);
    return rc;
}

/* Site and kind are required, model and firmware optional; all are labels (cm_valid_label). */
static int valid_names(const char *site, const char *kind, const char *model, const char *fw)
{
    return cm_valid_label(site) && cm_valid_label(kind) &&
           (!model || !*model || cm_valid_label(model)) && (!fw || !*fw || cm_valid_label(fw));
}

cm_err registry_store_add_gateway(registry_store *s, const registry_new_gateway *g)
{
    if (!valid_id(g->id) || !valid_names(g->site, g->kind, g->model, g->firmware))
        return CM_ERR_INVAL;
    int added = 0;
    return insert_gateway(s, g, 0, &added);
}

cm_err registry_store_import(registry_store *s, const cm_conf *inv, int *added,
                             char err[CM_CONF_ERRLEN])
{
    *added = 0;
    cm_err rc = CM_OK;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK) {
        snprintf(err, CM_CONF_ERRLEN, "registry database: %s", sqlite3_errmsg(s->db));
        rc = CM_ERR_DB;
        goto out;
    }
    for (size_t i = 0; i < cm_conf_section_count(inv); i++) {
        const char *sec = cm_conf_section(inv, i);
        const char *id = cm_conf_section_name(sec, "service");
        if (id) {
            if ((rc = import_service(s, inv, sec, id, added, err)) != CM_OK)
                goto out;
            continue;
        }
        id = cm_conf_section_name(sec, "gateway");
        if (!id) {
            snprintf(err, CM_CONF_ERRLEN, "%s: unknown section [%s]", cm_conf_name(inv), sec);
            rc = CM_ERR_CONFIG;
            goto out;
        }
        const char *site, *kind, *pubf, *certf;
        if (!valid_id(id)) {
            snprintf(err, CM_CONF_ERRLEN, "%s: [%s] gateway id must be 1-64 of [a-z0-9-]",
                     cm_conf_name(inv), sec);
            rc = CM_ERR_CONFIG;
            goto out;
        }
        if ((rc = cm_conf_req(inv, sec, "site", &site, err)) ||
            (rc = cm_conf_req(inv, sec, "kind", &kind, err)) ||
            (rc = cm_conf_req(inv, sec, "sign_pub", &pubf, err)) ||
            (rc = cm_conf_req(inv, sec, "cert", &certf, err)))
            goto out;
        const char *model = cm_conf_get(inv, sec, "model");
        const char *fw = cm_conf_get(inv, sec, "firmware");
        if (!valid_names(site, kind, model, fw)) {
            snprintf(err, CM_CONF_ERRLEN,
                     "%s: [%s] site, kind, model and firmware must be 1-%d of [A-Za-z0-9._-]",
                     cm_conf_name(inv), sec, CM_LABEL_MAX);
            rc = CM_ERR_CONFIG;
            goto out;
        }
        const char *cmdf = cm_conf_get(inv, sec, "cmd_pub"); /* optional: older gateways */
        uint8_t *cmd_der = NULL;
        size_t cmd_len = 0;
        if (cmdf) {
            cm_rsa *ck = NULL;
            if (cm_rsa_load_public(cmdf, &ck) != CM_OK ||
                cm_rsa_public_der(ck, &cmd_der, &cmd_len) != CM_OK) {
                cm_rsa_destroy(&ck);
                snprintf(err, CM_CONF_ERRLEN, "%s:%d: %s: not an RSA-2048 public key",
                         cm_conf_name(inv), cm_conf_line(inv, sec, "cmd_pub"), cmdf);
                rc = CM_ERR_CONFIG;
                goto out;
            }
            cm_rsa_destroy(&ck);
        }
        cm_pubkey *pk = NULL;
        cm_cert_info ci;
        if (cm_pubkey_load_pem(pubf, &pk) != CM_OK) {
            free(cmd_der);
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: %s: not a P-256 public key", cm_conf_name(inv),
                     cm_conf_line(inv, sec, "sign_pub"), pubf);
            rc = CM_ERR_CONFIG;
            goto out;
        }
        if (cm_cert_info_load(certf, &ci) != CM_OK || strcmp(ci.subject_cn, id) != 0) {
            free(cmd_der);
            cm_pubkey_destroy(&pk);
            snprintf(err, CM_CONF_ERRLEN,
                     "%s:%d: %s: not a readable certificate with CN=%s", cm_conf_name(inv),
                     cm_conf_line(inv, sec, "cert"), certf, id);
            rc = CM_ERR_CONFIG;
            goto out;
        }
        uint8_t *der = NULL;
        size_t derlen = 0;
        if (cm_pubkey_der(pk, &der, &derlen) != CM_OK) {
            free(cmd_der);
            cm_pubkey_destroy(&pk);
            rc = CM_ERR_CRYPTO;
            goto out;
        }
        registry_new_gateway g = {id, site, kind, model, fw, der, derlen, &ci,
                                  SUIDO__ENTITY_STATE__STATE_ACTIVE, cmd_der, cmd_len};
        int one = 0;
        rc = insert_gateway(s, &g, 1, &one);
        free(der);
        free(cmd_der);
        cm_pubkey_destroy(&pk);
        if (rc != CM_OK) {
            snprintf(err, CM_CONF_ERRLEN, "registry database: %s", sqlite3_errmsg(s->db));
            goto out;
        }
        *added += one;
    }
out:
    if (sqlite3_exec(s->db, rc == CM_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK &&
        rc == CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "registry database: %s", sqlite3_errmsg(s->db));
        rc = CM_ERR_DB;
    }
    return rc;
}

static char *col_text(sqlite3_stmt *st, int i)
{
    const unsigned char *t = sqlite3_column_text(st, i);
    return strdup(t ? (const char *)t : "");
}

static cm_err fill_info(sqlite3_stmt *st, Suido__GatewayInfo *info)
{
    suido__gateway_info__init(info);
    info->id = col_text(st, 0);
    info->state = sqlite3_column_int(st, 1);
    info->site = col_text(st, 2);
    info->kind = col_text(st, 3);
    int n = sqlite3_column_bytes(st, 4);
    info->sign_pub_der.data = malloc(n > 0 ? (size_t)n : 1);
    if (info->sign_pub_der.data && n > 0)
        memcpy(info->sign_pub_der.data, sqlite3_column_blob(st, 4), (size_t)n);
    info->sign_pub_der.len = (size_t)n;
    info->key_id = col_text(st, 5);
    info->cert_serial = col_text(st, 6);
    info->cert_not_after_ms = (uint64_t)sqlite3_column_int64(st, 7);
    info->model = col_text(st, 8);
    info->firmware = col_text(st, 9);
    info->cert_sha256 = col_text(st, 10);
    info->created_ms = (uint64_t)sqlite3_column_int64(st, 11);
    info->last_seen_ms = (uint64_t)sqlite3_column_int64(st, 12);
    int cn = sqlite3_column_bytes(st, 13);
    info->cmd_pub_der.data = malloc(cn > 0 ? (size_t)cn : 1);
    if (info->cmd_pub_der.data && cn > 0)
        memcpy(info->cmd_pub_der.data, sqlite3_column_blob(st, 13), (size_t)cn);
    info->cmd_pub_der.len = (size_t)cn;
    info->protocol = col_text(st, 14);
    if (!info->protocol || !info->id || !info->site || !info->kind || !info->sign_pub_der.data ||
        !info->cmd_pub_der.data || !info->key_id ||
        !info->cert_serial || !info->model || !info->firmware || !info->cert_sha256) {
        registry_info_clear(info);
        return CM_ERR_NOMEM;
    }
    return CM_OK;
}

void registry_info_clear(Suido__GatewayInfo *info)
{
    free(info->id);
    free(info->site);
    free(info->kind);
    free(info->sign_pub_der.data);
    free(info->cmd_pub_der.data);
    free(info->key_id);
    free(info->cert_serial);
    free(info->model);
    free(info->firmware);
    free(info->cert_sha256);
    free(info->protocol);
    /* all pointers NULL (not protobuf-c's shared empty string), so clearing twice is harmless */
    memset(info, 0, sizeof *info);
}

cm_err registry_store_get(registry_store *s, const char *id, Suido__GatewayInfo *info)
{
    sqlite3_reset(s->get);
    sqlite3_bind_text(s->get, 1, id, -1, SQLITE_TRANSIENT);
    int st = sqlite3_step(s->get);
    cm_err rc = st == SQLITE_ROW ? fill_info(s->get, info)
                : st == SQLITE_DONE ? CM_ERR_UNKNOWN
                                    : CM_ERR_DB;
    sqlite3_reset(s->get);
    return rc;
}

cm_err registry_store_each(registry_store *s, void (*fn)(void *ctx, Suido__GatewayInfo *info),
                           void *ctx)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT id,state,site,kind,sign_pub,key_id,cert_serial,"
                           "cert_not_after_ms,model,firmware,cert_sha256,created_ms,last_seen_ms,"
                           "cmd_pub,protocol FROM gateways ORDER BY id",
                           -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    cm_err rc = CM_OK;
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW) {
        Suido__GatewayInfo info;
        if ((rc = fill_info(st, &info)) != CM_OK)
            break;
        fn(ctx, &info);
        registry_info_clear(&info);
    }
    if (rc == CM_OK && r != SQLITE_DONE)
        rc = CM_ERR_DB;
    sqlite3_finalize(st);
    return rc;
}

int registry_store_count(registry_store *s)
{
    sqlite3_stmt *st;
    int n = -1;
    if (sqlite3_prepare_v2(s->db, "SELECT count(*) FROM gateways", -1, &st, NULL) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW)
        n = sqlite3_column_int(st, 0);
    sqlite3_finalize(st);
    return n;
}

const char *registry_state_name(int state)
{
    switch (state) {
    case SUIDO__ENTITY_STATE__STATE_PROVISIONED:
        return "provisioned";
    case SUIDO__ENTITY_STATE__STATE_ACTIVE:
        return "active";
    case SUIDO__ENTITY_STATE__STATE_SUSPENDED:
        return "suspended";
    case SUIDO__ENTITY_STATE__STATE_REVOKED:
        return "revoked";
    case SUIDO__ENTITY_STATE__STATE_DISPOSED:
        return "disposed";
    default:
        return "unknown";
    }
}

int registry_lifecycle_allows(int from, int to)
{
    enum { P = SUIDO__ENTITY_STATE__STATE_PROVISIONED, A = SUIDO__ENTITY_STATE__STATE_ACTIVE,
           S = SUIDO__ENTITY_STATE__STATE_SUSPENDED, R = SUIDO__ENTITY_STATE__STATE_REVOKED,
           D = SUIDO__ENTITY_STATE__STATE_DISPOSED };
    switch (to) {
    case A:
        return from == P || from == S;
    case S:
        return from == A;
    case R:
        return from == P || from == A || from == S;
    case D:
        return from == R;
    default:
        return 0;
    }
}

cm_err registry_store_set_state(registry_store *s, const char *kind, const char *id, int state,
                                int *old, char curve_pub[41])
{
    int gw = strcmp(kind, "gateway") == 0;
    if (!gw && strcmp(kind, "service") != 0)
        return CM_ERR_INVAL;
    char sql[160];
    snprintf(sql, sizeof sql, "SELECT state%s FROM %s WHERE id=?", gw ? "" : ", curve_pub",
             gw ? "gateways" : "services");
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    int r = sqlite3_step(st);
    if (r != SQLITE_ROW) {
        sqlite3_finalize(st);
        return r == SQLITE_DONE ? CM_ERR_UNKNOWN : CM_ERR_DB;
    }
    *old = sqlite3_column_int(st, 0);
    if (!gw && curve_pub) {
        const unsigned char *k = sqlite3_column_text(st, 1);
        snprintf(curve_pub, 41, "%s", k ? (const char *)k : "");
    }
    sqlite3_finalize(st);
    if (!registry_lifecycle_allows(*old, state))
        return CM_ERR_INVAL;
    /* disposal makes the keys unusable: the stored public keys are wiped with the state */
    if (state == SUIDO__ENTITY_STATE__STATE_DISPOSED)
        snprintf(sql, sizeof sql, "UPDATE %s SET state=?, %s WHERE id=?",
                 gw ? "gateways" : "services",
                 gw ? "sign_pub=x'', cmd_pub=x'', key_id=''" : "curve_pub=''");
    else
        snprintf(sql, sizeof sql, "UPDATE %s SET state=? WHERE id=?", gw ? "gateways" : "services");
    if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    sqlite3_bind_int(st, 1, state);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    r = sqlite3_step(st);
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

cm_err registry_store_write_identities(registry_store *s, const char *path)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return CM_ERR_IO;
    fprintf(f, "# Identities the broker lets in, written by suido-registry on every change.\n");
    sqlite3_stmt *st;
    cm_err rc = CM_OK;
    if (sqlite3_prepare_v2(s->db,
                           "SELECT id, state, CASE protocol WHEN 'sparkplug' THEN ' sparkplug'"
                           " ELSE ' gateway' END FROM gateways"
                           " UNION ALL SELECT id, state, '' FROM services ORDER BY 1",
                           -1, &st, NULL) != SQLITE_OK) {
        rc = CM_ERR_DB;
    } else {
        while (sqlite3_step(st) == SQLITE_ROW)
            fprintf(f, "%s %s%s\n", (const char *)sqlite3_column_text(st, 0),
                    registry_state_name(sqlite3_column_int(st, 1)),
                    (const char *)sqlite3_column_text(st, 2));
        sqlite3_finalize(st);
    }
    if (fflush(f) != 0 || fsync(fileno(f)) != 0)
        rc = CM_ERR_IO;
    if (fclose(f) != 0 || rc != CM_OK || rename(tmp, path) != 0) {
        unlink(tmp);
        return rc == CM_OK ? CM_ERR_IO : rc;
    }
    return CM_OK;
}

sqlite3 *registry_store_db(registry_store *s) { return s->db; }

cm_err registry_store_set_channels(registry_store *s, const char *gw, uint64_t boot_epoch,
                                   Suido__ChannelDecl *const *decl, size_t n)
{
    sqlite3_stmt *del = NULL, *ins = NULL, *epoch = NULL, *birth = NULL;
    cm_err rc = CM_ERR_DB;
    if (!valid_id(gw) || n > 4096 || boot_epoch > INT64_MAX)
        return CM_ERR_INVAL;
    for (size_t i = 0; i < n; i++)
        if (!decl[i]->name || !*decl[i]->name || strlen(decl[i]->name) > 64 || !decl[i]->unit ||
            strlen(decl[i]->unit) > 15)
            return CM_ERR_INVAL;
    if (sqlite3_exec(s->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    if (sqlite3_prepare_v2(s->db, "SELECT boot_epoch FROM gateway_births WHERE gateway=?", -1,
                           &epoch, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(epoch, 1, gw, -1, SQLITE_STATIC);
    int step = sqlite3_step(epoch);
    if (step == SQLITE_ROW && (uint64_t)sqlite3_column_int64(epoch, 0) > boot_epoch) {
        rc = CM_ERR_STALE;
        goto out;
    }
    if ((step != SQLITE_ROW && step != SQLITE_DONE) ||
        sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO gateway_births(gateway, boot_epoch)"
                                  " VALUES(?,?)", -1, &birth, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(birth, 1, gw, -1, SQLITE_STATIC);
    sqlite3_bind_int64(birth, 2, (sqlite3_int64)boot_epoch);
    if (sqlite3_step(birth) != SQLITE_DONE)
        goto out;
    if (sqlite3_prepare_v2(s->db, "DELETE FROM gateway_channels WHERE gateway=?", -1, &del,
                           NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(s->db, "INSERT OR REPLACE INTO gateway_channels(gateway, channel, unit)"
                                  " VALUES(?,?,?)", -1, &ins, NULL) != SQLITE_OK)
        goto out;
    sqlite3_bind_text(del, 1, gw, -1, SQLITE_STATIC);
    if (sqlite3_step(del) != SQLITE_DONE)
        goto out;
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(ins);
        sqlite3_bind_text(ins, 1, gw, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 2, decl[i]->name, -1, SQLITE_STATIC);
        sqlite3_bind_text(ins, 3, decl[i]->unit, -1, SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE)
            goto out;
    }
    rc = CM_OK;
out:
    sqlite3_finalize(epoch);
    sqlite3_finalize(birth);
    sqlite3_finalize(del);
    sqlite3_finalize(ins);
    if (sqlite3_exec(s->db, rc == CM_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK)
        rc = CM_ERR_DB;
    return rc;
}

cm_err registry_store_get_channels(registry_store *s, const char *gw,
                                   void (*fn)(void *ctx, const char *channel, const char *unit),
                                   void *ctx)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "SELECT channel, unit FROM gateway_channels WHERE gateway=?"
                                  " ORDER BY channel", -1, &st, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, gw, -1, SQLITE_STATIC);
    int r;
    while ((r = sqlite3_step(st)) == SQLITE_ROW)
        fn(ctx, (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 1));
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

cm_err registry_store_expiry(registry_store *s, uint64_t now_ms, const long thresholds[3],
                             registry_expiry_fn fn, void *ctx)
{
    static const char *const KINDS[2][2] = {{"gateway", "gateways"}, {"service", "services"}};
    for (int k = 0; k < 2; k++) {
        char sql[256];
        snprintf(sql, sizeof sql,
                 "SELECT id, %s, cert_not_after_ms, cert_warned FROM %s WHERE state=%d",
                 k == 0 ? "site" : "''", KINDS[k][1], SUIDO__ENTITY_STATE__STATE_ACTIVE);
        sqlite3_stmt *st, *up;
        if (sqlite3_prepare_v2(s->db, sql, -1, &st, NULL) != SQLITE_OK)
            return CM_ERR_DB;
        snprintf(sql, sizeof sql, "UPDATE %s SET cert_warned=? WHERE id=?", KINDS[k][1]);
        if (sqlite3_prepare_v2(s->db, sql, -1, &up, NULL) != SQLITE_OK) {
            sqlite3_finalize(st);
            return CM_ERR_DB;
        }
        while (sqlite3_step(st) == SQLITE_ROW) {
            const char *id = (const char *)sqlite3_column_text(st, 0);
            const char *site = (const char *)sqlite3_column_text(st, 1);
            int64_t left_ms = sqlite3_column_int64(st, 2) - (int64_t)now_ms;
            long days = (long)(left_ms / 86400000);
            if (left_ms < 0)
                days = -1;
            int level = 0; /* how many thresholds the certificate is past */
            while (level < 3 && days <= thresholds[level])
                level++;
            int warned = sqlite3_column_int(st, 3);
            if (level == warned)
                continue;
            if (level > warned)
                fn(ctx, KINDS[k][0], id, site ? site : "", days, thresholds[level - 1]);
            /* a renewed certificate (level went down) is simply remembered */
            sqlite3_reset(up);
            sqlite3_bind_int(up, 1, level);
            sqlite3_bind_text(up, 2, id, -1, SQLITE_TRANSIENT);
            sqlite3_step(up);
        }
        sqlite3_finalize(st);
        sqlite3_finalize(up);
    }
    return CM_OK;
}

cm_err registry_store_seen(registry_store *s, char **ids, size_t n, uint64_t now_ms)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(s->db, "UPDATE gateways SET last_seen_ms=? WHERE id=?", -1, &st,
                           NULL) != SQLITE_OK)
        return CM_ERR_DB;
    sqlite3_exec(s->db, "BEGIN", NULL, NULL, NULL);
    for (size_t i = 0; i < n; i++) {
        sqlite3_reset(st);
        sqlite3_bind_int64(st, 1, (sqlite3_int64)now_ms);
        sqlite3_bind_text(st, 2, ids[i], -1, SQLITE_TRANSIENT);
        sqlite3_step(st);
    }
    sqlite3_finalize(st);
    return sqlite3_exec(s->db, "COMMIT", NULL, NULL, NULL) == SQLITE_OK ? CM_OK : CM_ERR_DB;
}
