/* Fuzz target: the historian CSV loader of the anomaly checker (services/anomaly/history.c,
 * BATADAL-style exports: timestamps in several formats, quoted fields, label columns), which
 * `suido-anomaly train/replay` and suido-score read from files an operator is handed. */
#include <math.h>

#include "fuzz_util.h"
#include "history.h"

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    fuzz_quiet();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[HISTORY_ERRLEN];
    history *h = NULL;
    /* history_parse reads the text as len bytes; the copy ends in a NUL the parser must not need */
    char *t = fuzz_text(data, size);
    if (!t)
        return 0;
    if (history_parse("fuzz.csv", t, size, &h, err) == CM_OK) {
        for (size_t c = 0; c < h->n_cols; c++)
            if (history_column(h, h->cols[c]) < 0)
                abort(); /* a column is found by its own header */
        double sum = 0;
        for (size_t i = 0; i < h->n_rows * h->n_cols; i++)
            if (!isnan(h->v[i]))
                sum += h->v[i];
        char out[20];
        for (size_t r = 0; r < h->n_rows; r++)
            history_format_time(h->ts[r], out);
        (void)sum;
        history_destroy(&h);
    }
    /* the timestamp parser alone, on the first line */
    char *nl = strchr(t, '\n');
    if (nl)
        *nl = '\0';
    int64_t ts;
    (void)history_parse_time(t, &ts);
    free(t);
    return 0;
}
