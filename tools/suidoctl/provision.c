/* provision: see provision.h. */
#include "provision.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cm_conf.h"
#include "cm_crypto.h"
#include "ctl_msg.h"

#define MAX_FILE (64 * 1024)


/* Runs SCRIPT PKI OPTION ID without a shell; 0 when it exits 0. Its messages go to stderr. */
static int run_pki(const char *script, const char *pki, const char *option, const char *id)
{
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        /* its progress lines are for someone running it by hand (they point to this very
         * command); its errors go to stderr and stay visible */
        int null = open("/dev/null", O_WRONLY);
        if (null >= 0)
            dup2(null, STDOUT_FILENO);
        execl("/bin/bash", "bash", script, pki, option, id, (char *)NULL);
        _exit(127);
    }
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

/* Reads a whole (small) file; *len bytes, NUL terminated. Caller frees. */
static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    uint8_t *buf = malloc(MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, MAX_FILE + 1, f) : 0;
    int bad = ferror(f) || n > MAX_FILE;
    fclose(f);
    if (!buf || bad) {
        free(buf);
        return NULL;
    }
    buf[n] = 0;
    *len = n;
    return buf;
}

/* Writes len bytes to dir/name with mode, fsynced; 0 on success. */
static int put(const char *dir, const char *name, const void *data, size_t len, mode_t mode)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
    if (fd < 0)
        return -1;
    int ok = write(fd, data, len) == (ssize_t)len && fsync(fd) == 0;
    return close(fd) == 0 && ok ? 0 : -1;
}

static int copy_into(const char *dir, const char *name, const char *from, mode_t mode)
{
    size_t len;
    uint8_t *b = slurp(from, &len);
    if (!b)
        return -1;
    int rc = put(dir, name, b, len, mode);
    free(b);
    return rc;
}

static int write_bundle(const cm_conf *conf, const provision_request *r, const char *gwdir)
{
    const char *pki = cm_conf_get(conf, "pki", "dir");
    char ca[4096], wrap[4096], cmd[4096], from[4096];
    snprintf(ca, sizeof ca, "%s/ca/ca.crt", pki);
    snprintf(wrap, sizeof wrap, "%s/platform/wrap.pub", pki);
    snprintf(cmd, sizeof cmd, "%s/platform/command.pub", pki);
    if (mkdir(r->out, 0700) != 0)
        return ctl_say("%s: cannot create the bundle directory: %s", r->out, strerror(errno));
    static const struct { const char *name; mode_t mode; } KEYS[] = {
        {"client.crt", 0644}, {"client.key", 0600}, {"sign.key", 0600}, {"sign.pub", 0644},
        {"cmdwrap.key", 0600}, {"cmdwrap.pub", 0644}};
    for (size_t i = 0; i < sizeof KEYS / sizeof KEYS[0]; i++) {
        snprintf(from, sizeof from, "%s/%s", gwdir, KEYS[i].name);
        if (copy_into(r->out, KEYS[i].name, from, KEYS[i].mode) != 0)
            return ctl_say("%s: cannot copy into the bundle (%s)", from, strerror(errno));
    }
    if (copy_into(r->out, "ca.crt", ca, 0644) != 0 || copy_into(r->out, "wrap.pub", wrap, 0644))
        return ctl_say("%s or %s: cannot copy into the bundle", ca, wrap);
    if (access(cmd, R_OK) == 0 && copy_into(r->out, "command.pub", cmd, 0644) != 0)
        return ctl_say("%s: cannot copy into the bundle", cmd);
    const char *broker = cm_conf_get(conf, "pki", "broker");
    char text[2048];
    int n = snprintf(text, sizeof text,
                     "# Field bundle of gateway %s, made by suidoctl gateway provision.\n"
                     "# Keep client.key, sign.key and cmdwrap.key secret; the rest is public.\n"
                     "[gateway]\nid = %s\nsite = %s\nkind = %s\nmodel = %s\nfirmware = %s\n"
                     "broker = %s\ncert = client.crt\nkey = client.key\nsign_key = sign.key\n"
                     "command_unwrap_key = cmdwrap.key\nca = ca.crt\nwrap_pub = wrap.pub\n%s",
                     r->id, r->id, r->site, r->kind, r->model ? r->model : "",
                     r->firmware ? r->firmware : "", broker ? broker : "",
                     access(cmd, R_OK) == 0 ? "command_pub = command.pub\n" : "");
    if (n < 0 || (size_t)n >= sizeof text || put(r->out, "gateway.conf", text, (size_t)n, 0644))
        return ctl_say("%s: cannot write gateway.conf", r->out);
    return 0;
}

int provision_gateway(const cm_conf *conf, const provision_request *r, provision_register_fn reg,
                      void *ctx)
{
    const char *pki = cm_conf_get(conf, "pki", "dir");
    const char *script = cm_conf_get(conf, "pki", "script");
    if (!pki || !script)
        return ctl_say("%s: provisioning needs [pki] dir and script", cm_conf_name(conf));
    if (!r->out || !r->site || !r->kind) {
        fprintf(stderr, "suidoctl: gateway provision needs --site, --kind and --out\n");
        return 2;
    }
    /* checked before anything is issued: these go into gateway.conf and MQTT topics (an empty
     * site or kind is the registry's to refuse) */
    const char *const names[][2] = {{"--site", r->site}, {"--kind", r->kind},
                                    {"--model", r->model}, {"--firmware", r->firmware}};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (names[i][1] && *names[i][1] && !cm_valid_label(names[i][1])) {
            fprintf(stderr, "suidoctl: %s must be 1-%d of [A-Za-z0-9._-]\n", names[i][0],
                    CM_LABEL_MAX);
            return 2;
        }
    struct stat st;
    if (lstat(r->out, &st) == 0)
        return ctl_say("%s: already exists (a bundle is never overwritten)", r->out);
    if (run_pki(script, pki, "--add-gateway", r->id) != 0)
        return ctl_say("%s: could not issue credentials for %s", script, r->id);
    char gwdir[4096], crt[4096], pub[4096], cmdpub[4096];
    snprintf(gwdir, sizeof gwdir, "%s/gateways/%s", pki, r->id);
    snprintf(crt, sizeof crt, "%s/client.crt", gwdir);
    snprintf(pub, sizeof pub, "%s/sign.pub", gwdir);
    snprintf(cmdpub, sizeof cmdpub, "%s/cmdwrap.pub", gwdir);
    size_t crt_len = 0;
    uint8_t *crt_pem = slurp(crt, &crt_len);
    cm_pubkey *pk = NULL;
    cm_rsa *ck = NULL;
    uint8_t *der = NULL, *cmd_der = NULL;
    size_t der_len = 0, cmd_der_len = 0;
    int rc = 1;
    /* the RSA key every command to this gateway is encrypted to, registered with its identity */
    if (!crt_pem || cm_pubkey_load_pem(pub, &pk) != CM_OK || cm_pubkey_der(pk, &der, &der_len) ||
        cm_rsa_load_public(cmdpub, &ck) != CM_OK ||
        cm_rsa_public_der(ck, &cmd_der, &cmd_der_len) != CM_OK) {
        ctl_say("%s: the issued credentials are unreadable", gwdir);
        goto revoke;
    }
    Suido__GatewayInfo g = SUIDO__GATEWAY_INFO__INIT;
    g.id = (char *)r->id;
    g.site = (char *)r->site;
    g.kind = (char *)r->kind;
    g.model = (char *)(r->model ? r->model : "");
    g.firmware = (char *)(r->firmware ? r->firmware : "");
    g.sign_pub_der.data = der;
    g.sign_pub_der.len = der_len;
    g.cmd_pub_der.data = cmd_der;
    g.cmd_pub_der.len = cmd_der_len;
    g.protocol = (char *)(r->protocol ? r->protocol : "suido");
    Suido__RegistryRequest req = SUIDO__REGISTRY_REQUEST__INIT;
    req.op = SUIDO__REGISTRY_OP__REG_ADD_GATEWAY;
    req.gateway = &g;
    req.cert_pem.data = crt_pem;
    req.cert_pem.len = crt_len;
    if (reg(ctx, &req) != 0)
        goto revoke;
    rc = write_bundle(conf, r, gwdir);
    goto out;
revoke:
    /* Nothing half-made stays usable: the certificate the registry does not know is revoked. */
    if (run_pki(script, pki, "--revoke", r->id) != 0)
        ctl_say("%s: could not revoke the certificate issued for %s; revoke it by hand", script, r->id);
out:
    free(crt_pem);
    free(der);
    free(cmd_der);
    cm_pubkey_destroy(&pk);
    cm_rsa_destroy(&ck);
    return rc;
}
