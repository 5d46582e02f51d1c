/* bundle: loading a field bundle (see bundle.h). */
#include "bundle.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cm_crypto.h"

static const cm_conf_spec SPEC[] = {
    {"gateway", "id", 1, "the gateway's unique id (certificate CN, MQTT client id)"},
    {"gateway", "site", 1, "the site it serves"},
    {"gateway", "kind", 1, "the site kind: the profile's channels are <kind>.<channel>"},
    {"gateway", "model", 0, "hardware model, reported in births"},
    {"gateway", "firmware", 0, "firmware version, reported in births"},
    {"gateway", "broker", 1, "ssl://host:port of the platform's broker"},
    {"gateway", "cert", 1, "TLS client certificate"},
    {"gateway", "key", 1, "TLS client key (0600)"},
    {"gateway", "sign_key", 1, "P-256 signing key (0600)"},
    {"gateway", "command_unwrap_key", 0, "RSA key commands are encrypted to (0600)"},
    {"gateway", "ca", 1, "the deployment CA"},
    {"gateway", "wrap_pub", 1, "the platform's RSA key that session keys are wrapped to"},
    {"gateway", "command_pub", 0, "the command gate's public key (none: no commands)"},
    {NULL, NULL, 0, NULL},
};

/* DIR/<value of key> into out ("" when the key is absent and optional). */
static cm_err file_of(const gw_bundle *b, const char *dir, const char *key, int secret, char *out,
                      char err[CM_CONF_ERRLEN])
{
    const char *v = cm_conf_get(b->conf, "gateway", key);
    out[0] = '\0';
    if (!v || !*v)
        return CM_OK;
    int n = v[0] == '/' ? snprintf(out, GW_PATH_MAX, "%s", v)
                        : snprintf(out, GW_PATH_MAX, "%s/%s", dir, v);
    if (n < 0 || n >= GW_PATH_MAX) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: %s: path too long", cm_conf_name(b->conf),
                 cm_conf_line(b->conf, "gateway", key), key);
        return CM_ERR_CONFIG;
    }
    if (access(out, R_OK) != 0) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: %s: %s: %s", cm_conf_name(b->conf),
                 cm_conf_line(b->conf, "gateway", key), key, out, strerror(errno));
        return CM_ERR_KEY;
    }
    if (secret && cm_key_file_check(out) != CM_OK) {
        snprintf(err, CM_CONF_ERRLEN, "%s: a private key must be a regular file readable by its "
                 "owner only (chmod 0600)", out);
        return CM_ERR_KEY;
    }
    return CM_OK;
}

cm_err gw_bundle_load(const char *dir, gw_bundle *b, char err[CM_CONF_ERRLEN])
{
    memset(b, 0, sizeof *b);
    char path[GW_PATH_MAX];
    if (snprintf(path, sizeof path, "%s/gateway.conf", dir) >= (int)sizeof path) {
        snprintf(err, CM_CONF_ERRLEN, "%s: path too long", dir);
        return CM_ERR_CONFIG;
    }
    cm_err e = cm_conf_load(path, &b->conf, err);
    if (e == CM_OK)
        e = cm_conf_check(b->conf, SPEC, err);
    if (e != CM_OK) {
        gw_bundle_free(b);
        return e;
    }
    b->id = cm_conf_get(b->conf, "gateway", "id");
    b->site = cm_conf_get(b->conf, "gateway", "site");
    b->kind = cm_conf_get(b->conf, "gateway", "kind");
    b->model = cm_conf_get(b->conf, "gateway", "model");
    b->firmware = cm_conf_get(b->conf, "gateway", "firmware");
    b->broker = cm_conf_get(b->conf, "gateway", "broker");
    const char *labels[][2] = {{"id", b->id}, {"site", b->site}, {"kind", b->kind}};
    for (size_t i = 0; i < 3; i++)
        if (!cm_valid_label(labels[i][1])) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: %s must be 1-%d of [A-Za-z0-9._-]", path,
                     cm_conf_line(b->conf, "gateway", labels[i][0]), labels[i][0], CM_LABEL_MAX);
            gw_bundle_free(b);
            return CM_ERR_CONFIG;
        }
    const struct {
        const char *key;
        int secret;
        char *out;
    } files[] = {
        {"cert", 0, b->cert},         {"key", 1, b->key},
        {"sign_key", 1, b->sign_key}, {"command_unwrap_key", 1, b->cmd_unwrap_key},
        {"ca", 0, b->ca},             {"wrap_pub", 0, b->wrap_pub},
        {"command_pub", 0, b->command_pub},
    };
    for (size_t i = 0; e == CM_OK && i < sizeof files / sizeof files[0]; i++)
        e = file_of(b, dir, files[i].key, files[i].secret, files[i].out, err);
    if (e != CM_OK)
        gw_bundle_free(b);
    return e;
}

void gw_bundle_identity(const gw_bundle *b, gw_identity *id)
{
    id->id = b->id;
    id->site = b->site;
    id->kind = b->kind;
    id->model = b->model ? b->model : "";
    id->firmware = b->firmware ? b->firmware : "";
    id->files = (gw_files){
        .cert = b->cert,
        .key = b->key,
        .sign_key = b->sign_key,
        .cmd_unwrap_key = b->cmd_unwrap_key[0] ? b->cmd_unwrap_key : NULL,
        .ca = b->ca,
    };
}

void gw_bundle_free(gw_bundle *b)
{
    cm_conf_destroy(&b->conf);
    memset(b, 0, sizeof *b);
}
