/* bundle: a field bundle as `suidoctl gateway provision` writes it — a folder with gateway.conf
 * ([gateway] id, site, kind, model, firmware, broker, and the file names below, relative to the
 * folder) beside the gateway's keys and certificates. Loading it checks what a gateway needs
 * before it dials: every named file exists, the private keys are the owner's alone (0600), and
 * the names that go into topics are labels. */
#ifndef GW_BUNDLE_H
#define GW_BUNDLE_H
#include "cm_conf.h"
#include "gateway.h"

#define GW_PATH_MAX 4096

typedef struct gw_bundle {
    cm_conf *conf;
    const char *id, *site, *kind, *model, *firmware, *broker; /* live as long as conf */
    char cert[GW_PATH_MAX], key[GW_PATH_MAX], sign_key[GW_PATH_MAX], ca[GW_PATH_MAX];
    char cmd_unwrap_key[GW_PATH_MAX]; /* "" when the bundle has none */
    char wrap_pub[GW_PATH_MAX];       /* the platform's key the session keys are wrapped to */
    char command_pub[GW_PATH_MAX];    /* the command gate's key; "" when commands are off */
} gw_bundle;

/* Loads DIR/gateway.conf. On error err says which file or key and why (CM_ERR_CONFIG for the
 * file's content, CM_ERR_KEY for a missing or too open key). */
cm_err gw_bundle_load(const char *dir, gw_bundle *b, char err[CM_CONF_ERRLEN]);
/* The identity fields a bundle gives (id, site, kind, model, firmware, files); the caller adds
 * channels, actuators and its field callbacks. */
void gw_bundle_identity(const gw_bundle *b, gw_identity *id);
void gw_bundle_free(gw_bundle *b);

#endif
