/* mon_text: the monitor's checks of everything a browser sends, and the escaping of what it
 * writes into logs, audit details and CSV files. Pure functions; no allocation.
 *
 * Every value from a request passes one of these checks before it is used or sent on to the
 * registry or the archive: identifiers by character set and length, numbers by digits and range,
 * free text (an operator's cause and action) as valid UTF-8 without control characters. */
#ifndef MON_TEXT_H
#define MON_TEXT_H
#include <stddef.h>
#include <stdint.h>

/* Gateway id: 1..64 of [a-z0-9-] (the registry's and the broker's rule). */
int mon_valid_gateway(const char *s);
/* Operator id: 1..64 of [a-z0-9._-] (the registry's rule). */
int mon_valid_operator(const char *s);
/* Profile channel id "<kind>.<name>": 3..95 of [a-z0-9_.-] with a dot inside. */
int mon_valid_channel(const char *s);
/* A TOTP code: exactly 6 digits. */
int mon_valid_totp(const char *s);
/* Free text of len bytes: 1..max bytes of valid UTF-8 (no overlong forms, no surrogates), no
 * C0/C1 control characters, no DEL; len must be strlen (no NUL inside). */
int mon_valid_text(const char *s, size_t len, size_t max);
/* A password: 1..max bytes, no NUL inside (len must be strlen), anything else allowed. */
int mon_valid_password(const char *s, size_t len, size_t max);
/* Decimal digits only (1..20 of them), value in [min, max]. */
int mon_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);
/* "YYYY-MM-DD" of a real day in 2000..2199, as milliseconds of its UTC midnight. */
int mon_parse_date(const char *s, uint64_t *ms);
/* ms as "YYYY-MM-DD" (UTC) into out (at least 11 bytes). */
void mon_format_date(uint64_t ms, char out[11]);

/* Copies src into dst (size n) for a log line or an audit detail: at most n-1 bytes, bytes outside
 * printable ASCII and the quote character become '?', so nothing can forge another key=value or
 * line. Returns dst. */
char *mon_safe(char *dst, size_t n, const char *src);

/* Appends one CSV text cell (RFC 4180 quoting) to buf at *pos (size n), preceded by a comma
 * unless first. A cell that a spreadsheet would take for a formula (starting with = + - @, tab or
 * CR) is prefixed with an apostrophe. 0 when it does not fit (buf then ends at the last whole
 * cell). */
int mon_csv_text(char *buf, size_t n, size_t *pos, const char *cell, int first);
/* The same for a number with that many decimals (at most 9); NaN and infinities give an empty
 * cell. A cell is at most MON_CSV_NUMBER_MAX characters besides its comma: the whole number, never
 * cut short (-DBL_MAX has 309 digits before the point). */
#define MON_CSV_NUMBER_MAX 330
int mon_csv_number(char *buf, size_t n, size_t *pos, double v, int decimals, int first);

#endif
