/* cm_conf: parser and accessors for INI-style configuration and profile files. */
#include "cm_conf.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_FILE (4u << 20)
#define MAX_LINE 4096

typedef struct entry {
    char *section;
    char *key;
    char *value;
    int line;
} entry;

struct cm_conf {
    char *name;
    entry *entries;
    size_t n_entries, cap_entries;
    char **sections;
    int *section_lines;
    size_t n_sections, cap_sections;
};

static char *trim(char *s)
{
    while (*s && isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = '\0';
    return s;
}

static int grow(void **p, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return 0;
    size_t nc = *cap ? *cap * 2 : 16;
    while (nc < need)
        nc *= 2;
    void *np = realloc(*p, nc * elem);
    if (!np)
        return -1;
    *p = np;
    *cap = nc;
    return 0;
}

void cm_conf_destroy(cm_conf **cp)
{
    if (!cp || !*cp)
        return;
    cm_conf *c = *cp;
    for (size_t i = 0; i < c->n_entries; i++) {
        free(c->entries[i].key);
        free(c->entries[i].value);
    }
    for (size_t i = 0; i < c->n_sections; i++)
        free(c->sections[i]);
    free(c->entries);
    free(c->sections);
    free(c->section_lines);
    free(c->name);
    free(c);
    *cp = NULL;
}

static int valid_ident(const char *s)
{
    if (!*s)
        return 0;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && !strchr("_-./:", *s))
            return 0;
    return 1;
}

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        snprintf(err, CM_CONF_ERRLEN, __VA_ARGS__);                                                \
        rc = CM_ERR_CONFIG;                                                                        \
        goto out;                                                                                  \
    } while (0)

cm_err cm_conf_parse(const char *name, const char *text, size_t len, cm_conf **out,
                     char err[CM_CONF_ERRLEN])
{
    cm_err rc = CM_OK;
    *out = NULL;
    err[0] = '\0';
    cm_conf *c = calloc(1, sizeof *c);
    if (!c || !(c->name = strdup(name))) {
        free(c);
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", name);
        return CM_ERR_NOMEM;
    }
    if (memchr(text, '\0', len))
        FAIL("%s: contains a NUL byte", name);
    size_t pos = 0;
    int lineno = 0;
    const char *cur = NULL;
    char line[MAX_LINE + 2];
    while (pos < len) {
        lineno++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - (text + pos)) : len - pos;
        if (ll > MAX_LINE)
            FAIL("%s:%d: line longer than %d bytes", name, lineno, MAX_LINE);
        memcpy(line, text + pos, ll);
        line[ll] = '\0';
        pos += ll + (nl ? 1 : 0);
        char *s = trim(line);
        if (*s == '\0' || *s == '#' || *s == ';')
            continue;
        if (*s == '[') {
            char *e = strchr(s, ']');
            if (!e || trim(e + 1)[0] != '\0')
                FAIL("%s:%d: malformed section header", name, lineno);
            *e = '\0';
            char *sec = trim(s + 1);
            /* normalise "type   name" to "type name" and check each word */
            char *sp = strpbrk(sec, " \t");
            char norm[MAX_LINE];
            if (sp) {
                *sp = '\0';
                char *nm = trim(sp + 1);
                if (!valid_ident(sec) || !valid_ident(nm))
                    FAIL("%s:%d: invalid section name", name, lineno);
                snprintf(norm, sizeof norm, "%s %s", sec, nm);
            } else {
                if (!valid_ident(sec))
                    FAIL("%s:%d: invalid section name", name, lineno);
                snprintf(norm, sizeof norm, "%s", sec);
            }
            for (size_t i = 0; i < c->n_sections; i++)
                if (strcmp(c->sections[i], norm) == 0)
                    FAIL("%s:%d: section [%s] repeated (first at line %d)", name, lineno, norm,
                         c->section_lines[i]);
            size_t cap = c->cap_sections;
            if (grow((void **)&c->sections, &cap, c->n_sections + 1, sizeof(char *)) ||
                grow((void **)&c->section_lines, &c->cap_sections, c->n_sections + 1,
                     sizeof(int)))
                FAIL("%s: out of memory", name);
            c->cap_sections = cap;
            if (!(c->sections[c->n_sections] = strdup(norm)))
                FAIL("%s: out of memory", name);
            c->section_lines[c->n_sections] = lineno;
            cur = c->sections[c->n_sections++];
            continue;
        }
        char *eq = strchr(s, '=');
        if (!eq)
            FAIL("%s:%d: expected 'key = value'", name, lineno);
        *eq = '\0';
        char *key = trim(s);
        char *val = eq + 1;
        /* an inline comment starts at a '#' that follows white space */
        for (char *h = val; *h; h++)
            if (*h == '#' && (h == val || h[-1] == ' ' || h[-1] == '\t')) {
                *h = '\0';
                break;
            }
        val = trim(val);
        if (!cur)
            FAIL("%s:%d: key '%s' outside any [section]", name, lineno, key);
        if (!valid_ident(key))
            FAIL("%s:%d: invalid key name", name, lineno);
        for (size_t i = 0; i < c->n_entries; i++)
            if (c->entries[i].section == cur && strcmp(c->entries[i].key, key) == 0)
                FAIL("%s:%d: duplicate key '%s' in [%s] (first at line %d)", name, lineno, key,
                     cur, c->entries[i].line);
        if (grow((void **)&c->entries, &c->cap_entries, c->n_entries + 1, sizeof(entry)))
            FAIL("%s: out of memory", name);
        entry *en = &c->entries[c->n_entries];
        en->section = (char *)cur;
        en->key = strdup(key);
        en->value = strdup(val);
        en->line = lineno;
        if (!en->key || !en->value) {
            free(en->key);
            free(en->value);
            FAIL("%s: out of memory", name);
        }
        c->n_entries++;
    }
out:
    if (rc != CM_OK)
        cm_conf_destroy(&c);
    *out = c;
    return rc;
}

cm_err cm_conf_read_file(const char *path, char **text, size_t *len, char err[CM_CONF_ERRLEN])
{
    *text = NULL;
    *len = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, CM_CONF_ERRLEN, "%s: cannot open: %s", path, strerror(errno));
        return CM_ERR_CONFIG;
    }
    char *buf = malloc(MAX_FILE + 1);
    if (!buf) {
        fclose(f);
        snprintf(err, CM_CONF_ERRLEN, "%s: out of memory", path);
        return CM_ERR_NOMEM;
    }
    size_t n = fread(buf, 1, MAX_FILE + 1, f);
    int rerr = ferror(f);
    fclose(f);
    cm_err rc = CM_ERR_CONFIG;
    if (rerr)
        snprintf(err, CM_CONF_ERRLEN, "%s: read error", path);
    else if (n > MAX_FILE)
        snprintf(err, CM_CONF_ERRLEN, "%s: larger than %u bytes", path, MAX_FILE);
    else if (n == 0)
        snprintf(err, CM_CONF_ERRLEN, "%s: file is empty", path);
    else
        rc = CM_OK;
    if (rc != CM_OK) {
        free(buf);
        return rc;
    }
    buf[n] = '\0';
    *text = buf;
    *len = n;
    return CM_OK;
}

cm_err cm_conf_load(const char *path, cm_conf **out, char err[CM_CONF_ERRLEN])
{
    *out = NULL;
    char *buf;
    size_t n;
    cm_err rc = cm_conf_read_file(path, &buf, &n, err);
    if (rc != CM_OK)
        return rc;
    rc = cm_conf_parse(path, buf, n, out, err);
    free(buf);
    return rc;
}

static const entry *find(const cm_conf *c, const char *section, const char *key)
{
    for (size_t i = 0; i < c->n_entries; i++)
        if (strcmp(c->entries[i].section, section) == 0 && strcmp(c->entries[i].key, key) == 0)
            return &c->entries[i];
    return NULL;
}

int cm_conf_entry(const cm_conf *c, const char *section, size_t i, const char **key,
                  const char **value, int *line)
{
    for (size_t k = 0; k < c->n_entries; k++) {
        if (strcmp(c->entries[k].section, section) != 0)
            continue;
        if (i-- == 0) {
            *key = c->entries[k].key;
            *value = c->entries[k].value;
            *line = c->entries[k].line;
            return 1;
        }
    }
    return 0;
}

const char *cm_conf_get(const cm_conf *c, const char *section, const char *key)
{
    const entry *e = find(c, section, key);
    return e ? e->value : NULL;
}

int cm_conf_line(const cm_conf *c, const char *section, const char *key)
{
    const entry *e = find(c, section, key);
    return e ? e->line : 0;
}

const char *cm_conf_name(const cm_conf *c) { return c->name; }

size_t cm_conf_section_count(const cm_conf *c) { return c->n_sections; }

const char *cm_conf_section(const cm_conf *c, size_t i)
{
    return i < c->n_sections ? c->sections[i] : NULL;
}

int cm_conf_section_line(const cm_conf *c, size_t i)
{
    return i < c->n_sections ? c->section_lines[i] : 0;
}

const char *cm_conf_section_name(const char *section, const char *type)
{
    size_t tl = strlen(type);
    if (strncmp(section, type, tl) != 0)
        return NULL;
    if (section[tl] == '\0')
        return section + tl;
    if (section[tl] == ' ')
        return section + tl + 1;
    return NULL;
}

static int section_line(const cm_conf *c, const char *section)
{
    for (size_t i = 0; i < c->n_sections; i++)
        if (strcmp(c->sections[i], section) == 0)
            return c->section_lines[i];
    return 0;
}

cm_err cm_conf_check(const cm_conf *c, const cm_conf_spec *spec, char err[CM_CONF_ERRLEN])
{
    for (size_t i = 0; i < c->n_entries; i++) {
        const entry *e = &c->entries[i];
        int known_section = 0, known_key = 0;
        for (const cm_conf_spec *s = spec; s->section_type; s++) {
            if (!cm_conf_section_name(e->section, s->section_type))
                continue;
            known_section = 1;
            if (strcmp(s->key, "*") == 0 || strcmp(s->key, e->key) == 0)
                known_key = 1;
        }
        if (!known_section) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: unknown section [%s]", c->name,
                     section_line(c, e->section), e->section);
            return CM_ERR_CONFIG;
        }
        if (!known_key) {
            snprintf(err, CM_CONF_ERRLEN, "%s:%d: unknown key '%s' in [%s]", c->name, e->line,
                     e->key, e->section);
            return CM_ERR_CONFIG;
        }
    }
    for (size_t i = 0; i < c->n_sections; i++) {
        for (const cm_conf_spec *s = spec; s->section_type; s++) {
            if (!s->required || !cm_conf_section_name(c->sections[i], s->section_type))
                continue;
            const char *v = cm_conf_get(c, c->sections[i], s->key);
            if (!v || !*v) {
                snprintf(err, CM_CONF_ERRLEN, "%s:%d: [%s] missing required key '%s'", c->name,
                         c->section_lines[i], c->sections[i], s->key);
                return CM_ERR_CONFIG;
            }
        }
    }
    return CM_OK;
}

cm_err cm_conf_req(const cm_conf *c, const char *section, const char *key, const char **out,
                   char err[CM_CONF_ERRLEN])
{
    const char *v = cm_conf_get(c, section, key);
    if (!v || !*v) {
        snprintf(err, CM_CONF_ERRLEN, "%s: [%s] missing required key '%s'", c->name, section, key);
        return CM_ERR_CONFIG;
    }
    *out = v;
    return CM_OK;
}

cm_err cm_conf_long(const cm_conf *c, const char *section, const char *key, long dflt, long min,
                    long max, long *out, char err[CM_CONF_ERRLEN])
{
    const entry *e = find(c, section, key);
    if (!e) {
        *out = dflt;
        return CM_OK;
    }
    char *end;
    errno = 0;
    long v = strtol(e->value, &end, 10);
    if (errno || end == e->value || *end || v < min || v > max) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: '%s' must be an integer in [%ld, %ld]", c->name,
                 e->line, key, min, max);
        return CM_ERR_CONFIG;
    }
    *out = v;
    return CM_OK;
}

cm_err cm_conf_double(const cm_conf *c, const char *section, const char *key, double dflt,
                      double *out, char err[CM_CONF_ERRLEN])
{
    const entry *e = find(c, section, key);
    if (!e) {
        *out = dflt;
        return CM_OK;
    }
    char *end;
    errno = 0;
    double v = strtod(e->value, &end);
    if (errno || end == e->value || *end || !isfinite(v)) {
        snprintf(err, CM_CONF_ERRLEN, "%s:%d: '%s' must be a finite number", c->name, e->line,
                 key);
        return CM_ERR_CONFIG;
    }
    *out = v;
    return CM_OK;
}

int cm_conf_split(const char *value, char *buf, size_t bufsize, const char **items, int max)
{
    size_t vl = strlen(value);
    if (vl + 1 > bufsize)
        return -1;
    memcpy(buf, value, vl + 1);
    int n = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
        char *t = trim(tok);
        if (!*t)
            continue;
        if (n >= max)
            return -1;
        items[n++] = t;
    }
    return n;
}

int cm_valid_label(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > CM_LABEL_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
              (s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}
