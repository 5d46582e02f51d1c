/* retired: see retired.h. Reads DEPLOYDIR/gateways/<id>/{sign.key,client.crt} and
 * DEPLOYDIR/ca/crl.pem; no network. */
#include "retired.h"

#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

static X509 *read_cert(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    X509 *x = PEM_read_X509(f, NULL, NULL, NULL);
    fclose(f);
    return x;
}

static X509_CRL *read_crl(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return NULL;
    X509_CRL *c = PEM_read_X509_CRL(f, NULL, NULL, NULL);
    fclose(f);
    return c;
}

int gateway_retired(const char *deploy_dir, const char *id, char *why, size_t cap)
{
    char path[4096];
    struct stat st;
    snprintf(path, sizeof path, "%s/gateways/%s/sign.key", deploy_dir, id);
    if (stat(path, &st) != 0) {
        snprintf(why, cap, "disposed: no signing key at %s", path);
        return 1;
    }
    snprintf(path, sizeof path, "%s/gateways/%s/client.crt", deploy_dir, id);
    X509 *cert = read_cert(path);
    if (!cert) {
        snprintf(why, cap, "disposed: no readable certificate at %s", path);
        return 1;
    }
    snprintf(path, sizeof path, "%s/ca/crl.pem", deploy_dir);
    X509_CRL *crl = read_crl(path);
    X509_REVOKED *rev = NULL;
    int revoked = crl && X509_CRL_get0_by_cert(crl, &rev, cert) == 1;
    if (revoked)
        snprintf(why, cap, "revoked: its certificate is on %s", path);
    X509_CRL_free(crl);
    X509_free(cert);
    return revoked;
}
