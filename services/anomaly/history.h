/* history: a historian's CSV export loaded into memory, one row per timestamp, for training and
 * replaying the learned checker (learned.h). The format, as SCADA historians write it:
 *
 *   DATETIME,L_T1,L_T2,...,ATT_FLAG          header: first column is the timestamp, any name
 *   04/07/16 00, 2.44, 5.24, ..., -999        one row per instant
 *
 * - The first column is a timestamp: "DD/MM/YY HH", "DD/MM/YYYY HH:MM[:SS]" (2- or 4-digit year,
 *   the hour alone or with minutes), ISO 8601 "YYYY-MM-DDTHH:MM[:SS][.fff][Z|+HH:MM]" and
 *   "YYYY-MM-DD HH:MM[:SS]". A stamp without a zone is taken as it reads (the plant's clock); one
 *   with Z or an offset is converted to UTC.
 * - The other columns are channels, named as the header writes them (trimmed of spaces). A column
 *   named ATT_FLAG or label (any case) is the label column, not a channel: 1 = attack/anomaly,
 *   0 = normal, -999 or empty = unknown.
 * - Fields may carry leading/trailing spaces and may be double-quoted ("" escapes a quote); lines
 *   may end in CRLF or LF; a UTF-8 BOM, blank lines and lines starting with '#' are skipped.
 * - A value that is empty, -999, NA or NaN is missing (NAN in the table).
 * - A file may hold labels only (timestamp and label columns): a label file for other exports.
 *
 * Parsing is by hand rather than with libcsv: the format above is small, and hand parsing lets
 * every error name the file and line ("d04.csv:17: expected 45 fields, got 44"). Rows are not
 * required to be evenly spaced or ordered; the caller decides what a gap means. */
#ifndef HISTORY_H
#define HISTORY_H
#include <stddef.h>
#include <stdint.h>
#include "cm_err.h"

#define HISTORY_ERRLEN 512
#define HISTORY_MAX_FILE (512u << 20) /* refuse larger files rather than exhaust memory */

typedef enum history_label {
    HISTORY_UNKNOWN = -1,
    HISTORY_NORMAL = 0,
    HISTORY_ATTACK = 1,
} history_label;

/* A loaded table. Read-only for callers; freed with history_destroy. */
typedef struct history {
    char *name;         /* file name, for messages */
    char *time_col;     /* header of the timestamp column */
    size_t n_cols;      /* channel columns (timestamp and label excluded) */
    char **cols;        /* their header names, trimmed */
    size_t n_rows;
    int64_t *ts;        /* per row: seconds since 1970-01-01 00:00 of the stamp (see above) */
    int *line;          /* per row: line number in the file */
    double *v;          /* n_rows x n_cols, row-major; NAN = missing */
    int has_label;      /* 1 if the file has a label column */
    signed char *label; /* per row: history_label; HISTORY_NORMAL everywhere if !has_label */
} history;

/* Loads path. On error *out is NULL and err holds "path:line: reason". */
cm_err history_load(const char *path, history **out, char err[HISTORY_ERRLEN]);
/* Parses an in-memory text; name is used in messages. */
cm_err history_parse(const char *name, const char *text, size_t len, history **out,
                     char err[HISTORY_ERRLEN]);
void history_destroy(history **h);

/* Index of the channel column whose trimmed header equals name ignoring case, or -1. */
int history_column(const history *h, const char *name);

/* Parses one timestamp in any of the formats above (surrounding spaces allowed) into seconds;
 * returns 0, or -1 if it is not a valid date and time. */
int history_parse_time(const char *s, int64_t *out);
/* Writes t as "YYYY-MM-DD HH:MM:SS" (20 bytes with the NUL). */
void history_format_time(int64_t t, char out[20]);

#endif
