/* registry_operators: operator accounts, second factor, lockout, sessions, access history. */
#include "registry_operators.h"

#include <argon2.h>
#include <liboath/oath.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>

#include "cm_crypto.h"
#include "cm_log.h"
#include "registry_store.h"

/* Argon2id, OWASP's baseline: 19 MiB, 2 passes, 1 lane (about 50 ms here) */
#define ARGON_T 2
#define ARGON_M 19456
#define ARGON_P 1
#define TOTP_STEP 30
#define SOURCE_LIMIT 20                     /* failures from one source in SOURCE_WINDOW_MS */
#define SOURCE_WINDOW_MS (10u * 60u * 1000u)
#define MAX_LOCK_MS (24ull * 3600u * 1000u)

#define SEED_LEN 20
/* a sealed seed: 'S', the IV, the ciphertext and the GCM tag */
#define SEALED_LEN (1 + CM_GCM_IV_LEN + SEED_LEN + CM_GCM_TAG_LEN)
#define ACCOUNT_LOCK_MS (15ull * 60u * 1000u)

struct registry_operators {
    sqlite3 *db;
    cm_aead *seal;
};

static const char SCHEMA[] =
    "CREATE TABLE IF NOT EXISTS operators("
    " id TEXT PRIMARY KEY, state INTEGER NOT NULL, role TEXT NOT NULL,"
    " pw_hash TEXT NOT NULL, totp_secret BLOB NOT NULL, last_totp_step INTEGER NOT NULL DEFAULT 0,"
    " created_ms INTEGER NOT NULL, last_login_ms INTEGER NOT NULL DEFAULT 0);"
    "CREATE TABLE IF NOT EXISTS lockouts("
    " operator TEXT NOT NULL, source TEXT NOT NULL, failures INTEGER NOT NULL,"
    " locked_until_ms INTEGER NOT NULL, lockouts INTEGER NOT NULL,"
    " PRIMARY KEY(operator, source));"
    /* consecutive failures of an account across all sources since its last success */
    "CREATE TABLE IF NOT EXISTS account_locks("
    " operator TEXT PRIMARY KEY, failures INTEGER NOT NULL, locked_until_ms INTEGER NOT NULL,"
    " lockouts INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS sessions("
    " token_hash BLOB PRIMARY KEY, operator TEXT NOT NULL, source TEXT NOT NULL,"
    " expires_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS access("
    " id INTEGER PRIMARY KEY, ts_ms INTEGER NOT NULL, operator TEXT NOT NULL,"
    " source TEXT NOT NULL, action TEXT NOT NULL, result TEXT NOT NULL);"
    "CREATE INDEX IF NOT EXISTS access_by_operator ON access(operator, ts_ms);";

op_role op_role_parse(const char *s)
{
    if (!s)
        return ROLE_NONE;
    if (strcmp(s, "viewer") == 0)
        return ROLE_VIEWER;
    if (strcmp(s, "operator") == 0)
        return ROLE_OPERATOR;
    if (strcmp(s, "admin") == 0)
        return ROLE_ADMIN;
    return ROLE_NONE;
}

const char *op_role_name(op_role r)
{
    static const char *const n[] = {"none", "viewer", "operator", "admin"};
    return (unsigned)r < 4 ? n[r] : "none";
}

static cm_err seal_clear_seeds(registry_operators *o, int *sealed_now);

cm_err registry_operators_open(sqlite3 *db, const uint8_t seal_key[OP_SEAL_KEY_LEN],
                               int *sealed_now, registry_operators **out)
{
    *out = NULL;
    *sealed_now = 0;
    char *err = NULL;
    if (sqlite3_exec(db, SCHEMA, NULL, NULL, &err) != SQLITE_OK) {
        cm_error("error=\"operators schema: %s\"", err ? err : "");
        sqlite3_free(err);
        return CM_ERR_DB;
    }
    registry_operators *o = calloc(1, sizeof *o);
    if (!o)
        return CM_ERR_NOMEM;
    o->db = db;
    if (cm_aead_new(seal_key, OP_SEAL_KEY_LEN, &o->seal) != CM_OK) {
        free(o);
        return CM_ERR_CRYPTO;
    }
    if (oath_init() != OATH_OK) {
        cm_aead_destroy(&o->seal);
        free(o);
        return CM_ERR_CRYPTO;
    }
    cm_err rc = seal_clear_seeds(o, sealed_now);
    if (rc != CM_OK) {
        registry_operators_close(&o);
        return rc;
    }
    *out = o;
    return CM_OK;
}

void registry_operators_close(registry_operators **op)
{
    if (!op || !*op)
        return;
    oath_done();
    cm_aead_destroy(&(*op)->seal);
    free(*op);
    *op = NULL;
}

/* Prepares sql (caller binds, steps and finalizes); NULL on error, which is logged. */
static sqlite3_stmt *q(registry_operators *o, const char *sql)
{
    sqlite3_stmt *st;
    if (sqlite3_prepare_v2(o->db, sql, -1, &st, NULL) != SQLITE_OK) {
        cm_error("sql=\"%s\" error=\"%s\"", sql, sqlite3_errmsg(o->db));
        return NULL;
    }
    return st;
}

static int64_t one_int(registry_operators *o, const char *sql, const char *a, const char *b,
                       int64_t c)
{
    sqlite3_stmt *st = q(o, sql);
    int64_t v = -1;
    if (!st)
        return -1;
    if (a)
        sqlite3_bind_text(st, 1, a, -1, SQLITE_TRANSIENT);
    if (b)
        sqlite3_bind_text(st, 2, b, -1, SQLITE_TRANSIENT);
    if (c >= 0)
        sqlite3_bind_int64(st, b ? 3 : 2, c);
    if (sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

int registry_operators_count(registry_operators *o)
{
    return (int)one_int(o, "SELECT count(*) FROM operators", NULL, NULL, -1);
}

/* Seals a seed for operator id into out (SEALED_LEN bytes). */
static cm_err seal_seed(registry_operators *o, const char *id, const uint8_t seed[SEED_LEN],
                        uint8_t out[SEALED_LEN])
{
    out[0] = 'S';
    if (cm_random(out + 1, CM_GCM_IV_LEN) != CM_OK)
        return CM_ERR_CRYPTO;
    return cm_aead_seal(o->seal, out + 1, (const uint8_t *)id, strlen(id), seed, SEED_LEN,
                        out + 1 + CM_GCM_IV_LEN);
}

/* Opens a stored seed; CM_ERR_DECRYPT for anything but a seed sealed for this id and key. */
static cm_err open_seed(registry_operators *o, const char *id, const uint8_t *blob, size_t len,
                        uint8_t seed[SEED_LEN])
{
    if (!blob || len != SEALED_LEN || blob[0] != 'S')
        return CM_ERR_DECRYPT;
    return cm_aead_open(o->seal, blob + 1, CM_GCM_IV_LEN, (const uint8_t *)id, strlen(id),
                        blob + 1 + CM_GCM_IV_LEN, SEED_LEN + CM_GCM_TAG_LEN, seed);
}

/* Seeds stored in clear (SEED_LEN bytes, before sealing existed) are sealed in place, in one
 * transaction. */
static cm_err seal_clear_seeds(registry_operators *o, int *sealed_now)
{
    cm_err rc = CM_ERR_DB;
    sqlite3_stmt *sel = NULL, *upd = NULL;
    if (sqlite3_exec(o->db, "BEGIN IMMEDIATE", NULL, NULL, NULL) != SQLITE_OK)
        return CM_ERR_DB;
    sel = q(o, "SELECT id, totp_secret FROM operators WHERE length(totp_secret)=?");
    upd = q(o, "UPDATE operators SET totp_secret=? WHERE id=?");
    if (!sel || !upd)
        goto out;
    sqlite3_bind_int(sel, 1, SEED_LEN);
    int st;
    while ((st = sqlite3_step(sel)) == SQLITE_ROW) {
        const char *id = (const char *)sqlite3_column_text(sel, 0);
        uint8_t sealed[SEALED_LEN];
        if ((rc = seal_seed(o, id, sqlite3_column_blob(sel, 1), sealed)) != CM_OK)
            goto out;
        sqlite3_reset(upd);
        sqlite3_bind_blob(upd, 1, sealed, sizeof sealed, SQLITE_TRANSIENT);
        sqlite3_bind_text(upd, 2, id, -1, SQLITE_TRANSIENT);
        if (sqlite3_step(upd) != SQLITE_DONE) {
            rc = CM_ERR_DB;
            goto out;
        }
        (*sealed_now)++;
    }
    rc = st == SQLITE_DONE ? CM_OK : CM_ERR_DB;
out:
    sqlite3_finalize(sel);
    sqlite3_finalize(upd);
    if (sqlite3_exec(o->db, rc == CM_OK ? "COMMIT" : "ROLLBACK", NULL, NULL, NULL) != SQLITE_OK &&
        rc == CM_OK)
        rc = CM_ERR_DB;
    if (rc != CM_OK)
        *sealed_now = 0;
    return rc;
}

static int valid_id(const char *id)
{
    size_t n = id ? strlen(id) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9') || id[i] == '-' ||
              id[i] == '.' || id[i] == '_'))
            return 0;
    return 1;
}

cm_err registry_operators_add(registry_operators *o, const char *id, const char *role,
                              const char *password, char secret_b32[64])
{
    if (!valid_id(id) || op_role_parse(role) == ROLE_NONE || !password ||
        strlen(password) < 12 || strlen(password) > 1024)
        return CM_ERR_INVAL;
    if (one_int(o, "SELECT count(*) FROM operators WHERE id=?", id, NULL, -1) != 0)
        return CM_ERR_DUPLICATE;
    uint8_t salt[16], secret[SEED_LEN], sealed[SEALED_LEN];
    char hash[256];
    if (cm_random(salt, sizeof salt) != CM_OK || cm_random(secret, sizeof secret) != CM_OK)
        return CM_ERR_CRYPTO;
    if (argon2id_hash_encoded(ARGON_T, ARGON_M, ARGON_P, password, strlen(password), salt,
                              sizeof salt, 32, hash, sizeof hash) != ARGON2_OK)
        return CM_ERR_CRYPTO;
    char *b32 = NULL;
    size_t b32len = 0;
    if (oath_base32_encode((const char *)secret, sizeof secret, &b32, &b32len) != OATH_OK ||
        b32len >= 64) {
        free(b32);
        return CM_ERR_CRYPTO;
    }
    snprintf(secret_b32, 64, "%s", b32);
    OPENSSL_cleanse(b32, b32len);
    free(b32);
    cm_err sealed_rc = seal_seed(o, id, secret, sealed);
    OPENSSL_cleanse(secret, sizeof secret);
    if (sealed_rc != CM_OK)
        return sealed_rc;
    sqlite3_stmt *st = q(o, "INSERT INTO operators(id,state,role,pw_hash,totp_secret,created_ms)"
                            " VALUES(?,?,?,?,?,?)");
    if (!st)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, SUIDO__ENTITY_STATE__STATE_ACTIVE);
    sqlite3_bind_text(st, 3, role, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, hash, -1, SQLITE_TRANSIENT);
    sqlite3_bind_blob(st, 5, sealed, sizeof sealed, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)(time(NULL) * 1000LL));
    int r = sqlite3_step(st);
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

void registry_operators_record(registry_operators *o, uint64_t now_ms, const char *op,
                               const char *source, const char *action, const char *result)
{
    sqlite3_stmt *st = q(o, "INSERT INTO access(ts_ms,operator,source,action,result)"
                            " VALUES(?,?,?,?,?)");
    if (!st)
        return;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)now_ms);
    sqlite3_bind_text(st, 2, op ? op : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 3, source ? source : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 4, action, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 5, result, -1, SQLITE_TRANSIENT);
    sqlite3_step(st);
    sqlite3_finalize(st);
}

/* One more failure on a stored counter (failures and lockouts as read, -1 when none yet): after
 * max_failures in a row a lock starts, base_ms doubled for each earlier lock, at most
 * MAX_LOCK_MS, and the count starts again. Returns when that lock ends, 0 when none starts; the
 * caller stores the updated counters. */
static uint64_t one_more_failure(int64_t *failures, int64_t *lockouts, int64_t max_failures,
                                 uint64_t base_ms, uint64_t now_ms)
{
    if (*failures < 0) {
        *failures = 0;
        *lockouts = 0;
    }
    if (++*failures < max_failures)
        return 0;
    uint64_t lock = base_ms << (*lockouts < 20 ? *lockouts : 20);
    if (lock > MAX_LOCK_MS)
        lock = MAX_LOCK_MS;
    ++*lockouts;
    *failures = 0;
    return now_ms + lock;
}

/* Counts a failure for (op, source); starts a lock after OP_MAX_FAILURES. */
static void count_failure(registry_operators *o, const char *id, const char *source,
                          uint64_t now_ms, op_login *res)
{
    int64_t lockouts = one_int(o, "SELECT lockouts FROM lockouts WHERE operator=? AND source=?",
                               id, source, -1);
    int64_t failures = one_int(o, "SELECT failures FROM lockouts WHERE operator=? AND source=?",
                               id, source, -1);
    uint64_t until = one_more_failure(&failures, &lockouts, OP_MAX_FAILURES, 60000, now_ms);
    if (until) {
        res->locked_now = 1;
        res->retry_after_ms = until;
    }
    sqlite3_stmt *st = q(o, "INSERT INTO lockouts(operator,source,failures,locked_until_ms,"
                            "lockouts) VALUES(?,?,?,?,?) ON CONFLICT(operator,source) DO UPDATE"
                            " SET failures=excluded.failures, lockouts=excluded.lockouts,"
                            " locked_until_ms=CASE WHEN excluded.locked_until_ms > 0 THEN"
                            " excluded.locked_until_ms ELSE locked_until_ms END");
    if (!st)
        return;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_text(st, 2, source, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 3, failures);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)until);
    sqlite3_bind_int64(st, 5, lockouts);
    sqlite3_step(st);
    sqlite3_finalize(st);
}

/* Counts a failure of an existing account whatever its source; locks the account everywhere
 * after OP_ACCOUNT_MAX_FAILURES in a row (15 min, doubling, at most 24 h). */
static void count_account_failure(registry_operators *o, const char *id, uint64_t now_ms,
                                   op_login *res)
{
    int64_t failures = one_int(o, "SELECT failures FROM account_locks WHERE operator=?", id,
                               NULL, -1);
    int64_t lockouts = one_int(o, "SELECT lockouts FROM account_locks WHERE operator=?", id,
                               NULL, -1);
    uint64_t until = one_more_failure(&failures, &lockouts, OP_ACCOUNT_MAX_FAILURES,
                                      ACCOUNT_LOCK_MS, now_ms);
    if (until) {
        res->account_locked_now = 1;
        if (until > res->retry_after_ms)
            res->retry_after_ms = until;
    }
    sqlite3_stmt *st = q(o, "INSERT INTO account_locks(operator,failures,locked_until_ms,"
                            "lockouts) VALUES(?,?,?,?) ON CONFLICT(operator) DO UPDATE"
                            " SET failures=excluded.failures, lockouts=excluded.lockouts,"
                            " locked_until_ms=CASE WHEN excluded.locked_until_ms > 0 THEN"
                            " excluded.locked_until_ms ELSE locked_until_ms END");
    if (!st)
        return;
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    sqlite3_bind_int64(st, 2, failures);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)until);
    sqlite3_bind_int64(st, 4, lockouts);
    sqlite3_step(st);
    sqlite3_finalize(st);
}

static void token_hash(const char *token, uint8_t out[32])
{
    unsigned int n = 0;
    EVP_Digest(token, strlen(token), out, &n, EVP_sha256(), NULL);
}

static int valid_address(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == ':' || s[i] == '_' ||
              s[i] == '-'))
            return 0;
    return 1;
}

void registry_operators_source_key(const char *peer, const char *claimed,
                                   char out[OP_SOURCE_LEN])
{
    if (!peer || !*peer)
        peer = "unknown";
    if (strcmp(peer, "monitor") == 0)
        snprintf(out, OP_SOURCE_LEN, "monitor/%s", valid_address(claimed) ? claimed : "unknown");
    else
        snprintf(out, OP_SOURCE_LEN, "%s", peer);
}

#define FAIL(why)                                                                                  \
    do {                                                                                           \
        res->status = CM_ERR_DENIED;                                                               \
        res->reason = (why);                                                                       \
        goto failed;                                                                               \
    } while (0)

void registry_operators_login(registry_operators *o, const char *id, const char *password,
                              const char *totp, const char *peer, const char *claimed,
                              uint64_t now_ms, op_login *res)
{
    memset(res, 0, sizeof *res);
    res->status = CM_OK;
    res->reason = "ok";
    registry_operators_source_key(peer, claimed, res->source);
    const char *source = res->source;
    sqlite3_stmt *st = NULL;
    uint8_t seed[SEED_LEN];
    int known = 0;
    if (!valid_id(id)) {
        res->status = CM_ERR_INVAL;
        res->reason = "malformed";
        return;
    }
    /* a source failing against many accounts is blocked, the accounts are not */
    int64_t recent = one_int(o, "SELECT count(*) FROM access WHERE source=? AND action='login' "
                                "AND result<>'ok' AND ts_ms>?",
                             source, NULL, (int64_t)(now_ms - SOURCE_WINDOW_MS));
    if (recent >= SOURCE_LIMIT) {
        res->status = CM_ERR_REVOKED;
        res->reason = "source_blocked";
        res->retry_after_ms = now_ms + SOURCE_WINDOW_MS;
        return;
    }
    int64_t until = one_int(o, "SELECT locked_until_ms FROM lockouts WHERE operator=? AND "
                               "source=?",
                            id, source, -1);
    if (until > 0 && (uint64_t)until > now_ms) {
        res->status = CM_ERR_REVOKED;
        res->reason = "locked_out";
        res->retry_after_ms = (uint64_t)until;
        return;
    }
    until = one_int(o, "SELECT locked_until_ms FROM account_locks WHERE operator=?", id, NULL, -1);
    if (until > 0 && (uint64_t)until > now_ms) {
        res->status = CM_ERR_REVOKED;
        res->reason = "account_locked";
        res->retry_after_ms = (uint64_t)until;
        return;
    }
    st = q(o, "SELECT state, role, pw_hash, totp_secret, last_totp_step FROM operators "
              "WHERE id=?");
    if (!st) {
        res->status = CM_ERR_DB;
        res->reason = "database";
        return;
    }
    sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
    if (sqlite3_step(st) != SQLITE_ROW) {
        /* same work as a real check, so a missing account does not answer faster */
        char dummy[256];
        uint8_t salt[16] = {0};
        argon2id_hash_encoded(ARGON_T, ARGON_M, ARGON_P, password ? password : "",
                              password ? strlen(password) : 0, salt, sizeof salt, 32, dummy,
                              sizeof dummy);
        FAIL("unknown_operator");
    }
    known = 1;
    if (sqlite3_column_int(st, 0) != SUIDO__ENTITY_STATE__STATE_ACTIVE)
        FAIL("operator_not_active");
    res->role = op_role_parse((const char *)sqlite3_column_text(st, 1));
    const char *hash = (const char *)sqlite3_column_text(st, 2);
    if (!password || !hash || argon2id_verify(hash, password, strlen(password)) != ARGON2_OK)
        FAIL("bad_password");
    if (open_seed(o, id, sqlite3_column_blob(st, 3), (size_t)sqlite3_column_bytes(st, 3),
                  seed) != CM_OK) {
        cm_error("operator=%s error=\"TOTP seed does not open with the seal key\"", id);
        FAIL("seed_unreadable");
    }
    int otp_pos = 0;
    uint64_t counter = 0;
    int otp_rc = totp && strlen(totp) == 6
                     ? oath_totp_validate3((const char *)seed, sizeof seed,
                                           (time_t)(now_ms / 1000), TOTP_STEP, 0, 1, &otp_pos,
                                           &counter, totp)
                     : -1;
    OPENSSL_cleanse(seed, sizeof seed);
    if (otp_rc < 0)
        FAIL("bad_totp");
    if ((int64_t)counter <= sqlite3_column_int64(st, 4))
        FAIL("totp_reused");
    sqlite3_finalize(st);
    st = NULL;

    /* success: remember the step, clear the failures, open a session */
    sqlite3_stmt *u = q(o, "UPDATE operators SET last_totp_step=?, last_login_ms=? WHERE id=?");
    if (u) {
        sqlite3_bind_int64(u, 1, (sqlite3_int64)counter);
        sqlite3_bind_int64(u, 2, (sqlite3_int64)now_ms);
        sqlite3_bind_text(u, 3, id, -1, SQLITE_TRANSIENT);
        sqlite3_step(u);
        sqlite3_finalize(u);
    }
    u = q(o, "UPDATE lockouts SET failures=0 WHERE operator=? AND source=?");
    if (u) {
        sqlite3_bind_text(u, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(u, 2, source, -1, SQLITE_TRANSIENT);
        sqlite3_step(u);
        sqlite3_finalize(u);
    }
    u = q(o, "UPDATE account_locks SET failures=0 WHERE operator=?");
    if (u) {
        sqlite3_bind_text(u, 1, id, -1, SQLITE_TRANSIENT);
        sqlite3_step(u);
        sqlite3_finalize(u);
    }
    res->new_source = one_int(o, "SELECT count(*) FROM access WHERE operator=? AND source=? AND "
                                 "action='login' AND result='ok'",
                              id, source, -1) == 0;
    time_t now_s = (time_t)(now_ms / 1000);
    struct tm tm;
    gmtime_r(&now_s, &tm);
    int64_t history = one_int(o, "SELECT count(*) FROM access WHERE operator=? AND "
                                 "action='login' AND result='ok'",
                              id, NULL, -1);
    int64_t same_hour = one_int(o, "SELECT count(*) FROM access WHERE operator=? AND "
                                   "action='login' AND result='ok' AND "
                                   "abs(((ts_ms / 3600000) % 24) - ?) IN (0, 1, 23)",
                                id, NULL, tm.tm_hour);
    res->unusual_hour = history >= 5 && same_hour == 0;
    uint8_t raw[32], th[32];
    if (cm_random(raw, sizeof raw) != CM_OK) {
        res->status = CM_ERR_CRYPTO;
        res->reason = "random";
        return;
    }
    for (int i = 0; i < 32; i++)
        snprintf(res->token + 2 * i, 3, "%02x", raw[i]);
    token_hash(res->token, th);
    res->expires_ms = now_ms + OP_SESSION_MS;
    u = q(o, "INSERT INTO sessions(token_hash,operator,source,expires_ms) VALUES(?,?,?,?)");
    if (u) {
        sqlite3_bind_blob(u, 1, th, 32, SQLITE_TRANSIENT);
        sqlite3_bind_text(u, 2, id, -1, SQLITE_TRANSIENT);
        sqlite3_bind_text(u, 3, source, -1, SQLITE_TRANSIENT);
        sqlite3_bind_int64(u, 4, (sqlite3_int64)res->expires_ms);
        sqlite3_step(u);
        sqlite3_finalize(u);
    }
    registry_operators_record(o, now_ms, id, source, "login", "ok");
    return;
failed:
    OPENSSL_cleanse(seed, sizeof seed); /* a failed open may have left plaintext behind */
    if (st)
        sqlite3_finalize(st);
    registry_operators_record(o, now_ms, id, source, "login", res->reason);
    count_failure(o, id, source, now_ms, res);
    if (known)
        count_account_failure(o, id, now_ms, res);
    res->failure_burst = one_int(o, "SELECT count(*) FROM access WHERE operator=? AND "
                                    "action='login' AND result<>'ok' AND ts_ms>?",
                                 id, NULL, (int64_t)(now_ms - 60000)) >= 3;
    if (res->locked_now || res->account_locked_now)
        res->status = CM_ERR_REVOKED;
}

cm_err registry_operators_session(registry_operators *o, const char *token, uint64_t now_ms,
                                  char op[65], op_role *role, uint64_t *expires_ms)
{
    if (!token || strlen(token) != 64)
        return CM_ERR_DENIED;
    uint8_t th[32];
    token_hash(token, th);
    sqlite3_stmt *st = q(o, "SELECT s.operator, o.role, s.expires_ms, o.state FROM sessions s "
                            "JOIN operators o ON o.id = s.operator WHERE s.token_hash=?");
    if (!st)
        return CM_ERR_DB;
    sqlite3_bind_blob(st, 1, th, 32, SQLITE_TRANSIENT);
    cm_err rc = CM_ERR_DENIED;
    if (sqlite3_step(st) == SQLITE_ROW && (uint64_t)sqlite3_column_int64(st, 2) > now_ms &&
        sqlite3_column_int(st, 3) == SUIDO__ENTITY_STATE__STATE_ACTIVE) {
        snprintf(op, 65, "%s", (const char *)sqlite3_column_text(st, 0));
        *role = op_role_parse((const char *)sqlite3_column_text(st, 1));
        *expires_ms = (uint64_t)sqlite3_column_int64(st, 2);
        rc = CM_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

cm_err registry_operators_logout(registry_operators *o, const char *token)
{
    if (!token || strlen(token) != 64)
        return CM_ERR_INVAL;
    uint8_t th[32];
    token_hash(token, th);
    sqlite3_stmt *st = q(o, "DELETE FROM sessions WHERE token_hash=?");
    if (!st)
        return CM_ERR_DB;
    sqlite3_bind_blob(st, 1, th, 32, SQLITE_TRANSIENT);
    int r = sqlite3_step(st);
    sqlite3_finalize(st);
    return r == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

cm_err registry_operators_set_state(registry_operators *o, const char *id, int state, int *old)
{
    int64_t cur = one_int(o, "SELECT state FROM operators WHERE id=?", id, NULL, -1);
    if (cur < 0)
        return CM_ERR_UNKNOWN;
    *old = (int)cur;
    if (!registry_lifecycle_allows((int)cur, state))
        return CM_ERR_INVAL;
    int disposed = state == SUIDO__ENTITY_STATE__STATE_DISPOSED;
    sqlite3_stmt *st = q(o, disposed ? "UPDATE operators SET state=?, pw_hash='', "
                                         "totp_secret=x'' WHERE id=?"
                                       : "UPDATE operators SET state=? WHERE id=?");
    if (!st)
        return CM_ERR_DB;
    sqlite3_bind_int(st, 1, state);
    sqlite3_bind_text(st, 2, id, -1, SQLITE_TRANSIENT);
    int r = sqlite3_step(st);
    sqlite3_finalize(st);
    if (r == SQLITE_DONE && state != SUIDO__ENTITY_STATE__STATE_ACTIVE) {
        st = q(o, "DELETE FROM sessions WHERE operator=?");
        if (st) {
            sqlite3_bind_text(st, 1, id, -1, SQLITE_TRANSIENT);
            sqlite3_step(st);
            sqlite3_finalize(st);
        }
    }
    return r == SQLITE_DONE ? CM_OK : CM_ERR_DB;
}

cm_err registry_operators_each(registry_operators *o,
                               void (*fn)(void *ctx, const Suido__OperatorInfo *op), void *ctx)
{
    sqlite3_stmt *st = q(o, "SELECT o.id, o.state, o.role, o.last_login_ms, "
                            "max(coalesce((SELECT max(locked_until_ms) FROM lockouts l "
                            "WHERE l.operator=o.id), 0), coalesce((SELECT locked_until_ms FROM "
                            "account_locks a WHERE a.operator=o.id), 0)), "
                            "(SELECT failures FROM account_locks a WHERE a.operator=o.id) "
                            "FROM operators o ORDER BY o.id");
    if (!st)
        return CM_ERR_DB;
    while (sqlite3_step(st) == SQLITE_ROW) {
        Suido__OperatorInfo info = SUIDO__OPERATOR_INFO__INIT;
        info.id = (char *)sqlite3_column_text(st, 0);
        info.state = sqlite3_column_int(st, 1);
        info.role = (char *)sqlite3_column_text(st, 2);
        info.last_login_ms = (uint64_t)sqlite3_column_int64(st, 3);
        info.locked_until_ms = (uint64_t)sqlite3_column_int64(st, 4);
        info.failures = (uint32_t)sqlite3_column_int64(st, 5);
        fn(ctx, &info);
    }
    sqlite3_finalize(st);
    return CM_OK;
}

cm_err registry_operators_access(registry_operators *o, const char *op, int limit,
                                 void (*fn)(void *ctx, const Suido__AccessEntry *e), void *ctx)
{
    sqlite3_stmt *st = q(o, "SELECT ts_ms, operator, source, action, result FROM access "
                            "WHERE ?1 = '' OR operator = ?1 ORDER BY id DESC LIMIT ?2");
    if (!st)
        return CM_ERR_DB;
    sqlite3_bind_text(st, 1, op ? op : "", -1, SQLITE_TRANSIENT);
    sqlite3_bind_int(st, 2, limit);
    while (sqlite3_step(st) == SQLITE_ROW) {
        Suido__AccessEntry e = SUIDO__ACCESS_ENTRY__INIT;
        e.ts_ms = (uint64_t)sqlite3_column_int64(st, 0);
        e.operator_ = (char *)sqlite3_column_text(st, 1);
        e.source = (char *)sqlite3_column_text(st, 2);
        e.action = (char *)sqlite3_column_text(st, 3);
        e.result = (char *)sqlite3_column_text(st, 4);
        fn(ctx, &e);
    }
    sqlite3_finalize(st);
    return CM_OK;
}
