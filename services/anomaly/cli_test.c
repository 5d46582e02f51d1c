/* Unit tests of cli: `train` and `replay` end to end on small CSV files written here (BATADAL
 * traps included: leading spaces, CRLF, -999 labels, upper-case headers), the FLAGS.csv contract
 * (header, one row per input row, causal prefix), and the refusals with their exit codes. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cli.h"

static char dir[64];

static const char *path(const char *name)
{
    static char buf[16][256];
    static int k;
    k = (k + 1) % 16;
    snprintf(buf[k], sizeof buf[k], "%s/%s", dir, name);
    return buf[k];
}

static void write_text(const char *p, const char *text)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static const char *PROFILE =
    "[profile]\nname = Synthetic plant\nversion = 1\n"
    "[channel plant.level]\nquantity = level\nunit = m\nrange = 0, 6\n"
    "[channel plant.flow]\nquantity = flow\nunit = L/s\nrange = 0, 100\n"
    "[channel plant.status]\nquantity = status\nunit = 1\nrange = 0, 1\n"
    "[channel plant.pressure]\nquantity = pressure\nunit = m\nrange = 0, 100\n";

/* Writes n hourly rows from 01/01/16 00 of a tank under level control (see learned_test.c);
 * from row `attack` the level reading is offset. `labels`: add an ATT_FLAG column (-999 on
 * every third row). The same seed gives the same rows, so a shorter file is a prefix. */
static void write_csv(const char *p, size_t n, size_t attack, int labels, unsigned seed)
{
    FILE *f = fopen(p, "w");
    assert_non_null(f);
    fprintf(f, "DATETIME, LEVEL, Flow, STATUS, Pressure%s\r\n", labels ? ", ATT_FLAG" : "");
    srand(seed);
    double level = 3, status = 1;
    for (size_t t = 0; t < n; t++) {
        double noise = (double)rand() / RAND_MAX - 0.5;
        double demand = 1.0 + 0.5 * sin(2 * M_PI * (double)(t % 24) / 24) + 0.1 * noise;
        if (level < 2)
            status = 1;
        if (level > 4)
            status = 0;
        double flow = status * (40 + noise);
        level += 0.02 * flow - 0.4 * demand;
        int day = (int)(t / 24), hour = (int)(t % 24);
        fprintf(f, "%02d/%02d/16 %02d, %.2f, %.2f, %.2f, %.2f", 1 + day % 28, 1 + day / 28,
                hour, level + (t >= attack ? 0.8 : 0), flow, status,
                20 + 3 * level + 5 * status + 0.2 * noise);
        if (labels)
            fprintf(f, ", %s", t % 3 == 0 ? "-999" : t >= attack ? "1" : "0");
        fputs("\r\n", f);
    }
    fclose(f);
}

static int cli(const char *const *args)
{
    char *argv[32];
    int argc = 0;
    argv[argc++] = "suido-anomaly";
    for (; args[argc - 1]; argc++)
        argv[argc] = (char *)args[argc - 1];
    argv[argc] = NULL;
    return anomaly_cli(argc, argv);
}

/* Reads FLAGS.csv: returns the row count (header excluded) and the flag column in flags[]. */
static size_t read_flags(const char *p, int *flags, size_t max, char *header, size_t hlen)
{
    FILE *f = fopen(p, "r");
    assert_non_null(f);
    char line[256];
    assert_non_null(fgets(line, sizeof line, f));
    snprintf(header, hlen, "%s", line);
    size_t n = 0;
    while (fgets(line, sizeof line, f)) {
        char *c1 = strchr(line, ',');
        assert_non_null(c1);
        if (n < max)
            flags[n] = atoi(c1 + 1);
        assert_true(c1[1] == '0' || c1[1] == '1');
        n++;
    }
    fclose(f);
    return n;
}

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof dir, "/tmp/suido-cli-test-XXXXXX");
    assert_non_null(mkdtemp(dir));
    write_text(path("plant.conf"), PROFILE);
    write_csv(path("normal.csv"), 1500, (size_t)-1, 0, 1);
    write_csv(path("attacked.csv"), 600, 400, 1, 2);
    write_csv(path("cut.csv"), 300, 400, 1, 2); /* the first 300 rows of attacked.csv */
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    const char *files[] = {"plant.conf", "normal.csv", "attacked.csv", "cut.csv", "m.model",
                           "flags.csv", "cut_flags.csv", "explain.csv", "other.conf", "labels.csv",
                           NULL};
    for (int i = 0; files[i]; i++)
        unlink(path(files[i]));
    rmdir(dir);
    return 0;
}

static void test_train_and_replay(void **state)
{
    (void)state;
    const char *train[] = {"train", "--profile", path("plant.conf"), "--history",
                           path("normal.csv"), "--history", path("attacked.csv"), "--model",
                           path("m.model"), NULL};
    assert_int_equal(cli(train), 0);
    const char *replay[] = {"replay", "--profile", path("plant.conf"), "--model",
                            path("m.model"), "--csv", path("attacked.csv"), "--out",
                            path("flags.csv"), "--explain", path("explain.csv"), NULL};
    assert_int_equal(cli(replay), 0);
    int flags[600], cut[300];
    char header[64];
    assert_int_equal(read_flags(path("flags.csv"), flags, 600, header, sizeof header), 600);
    assert_string_equal(header, "timestamp,flag,score\n");
    int before = 0, after = 0;
    for (int t = 0; t < 600; t++)
        *(t < 400 ? &before : &after) += flags[t];
    assert_true(before <= 4);
    assert_true(after >= 150);

    /* Causal: replaying the first 300 rows gives the same flags for them. */
    const char *replay_cut[] = {"replay", "--profile", path("plant.conf"), "--model",
                                path("m.model"), "--csv", path("cut.csv"), "--out",
                                path("cut_flags.csv"), NULL};
    assert_int_equal(cli(replay_cut), 0);
    assert_int_equal(read_flags(path("cut_flags.csv"), cut, 300, header, sizeof header), 300);
    assert_memory_equal(cut, flags, sizeof cut);
}

/* A separate label file, joined on the timestamp: its attack rows are not fitted. */
static void test_labels_file(void **state)
{
    (void)state;
    write_text(path("labels.csv"), "time,ATT_FLAG\r\n01/01/16 00,1\r\n 01/01/16 01 , 1\r\n"
                                   "2016-01-01T02:00,-999\r\n");
    const char *train[] = {"train", "--profile", path("plant.conf"), "--history",
                           path("normal.csv"), "--labels", path("labels.csv"), "--model",
                           path("m.model"), NULL};
    assert_int_equal(cli(train), 0);
    write_text(path("labels.csv"), "time,x\n01/01/16 00,1\n");
    assert_int_equal(cli(train), 1); /* no label column */
}

static void test_refusals(void **state)
{
    (void)state;
    const char *usage1[] = {"train", "--profile", path("plant.conf"), NULL};
    assert_int_equal(cli(usage1), 2);
    const char *usage2[] = {"replay", "--bogus", "x", NULL};
    assert_int_equal(cli(usage2), 2);
    /* A profile without one of the CSV's columns. */
    write_text(path("other.conf"), "[profile]\nname = Synthetic plant\nversion = 2\n"
                                   "[channel plant.level]\nquantity = level\nunit = m\n"
                                   "range = 0, 6\n");
    const char *unknown[] = {"train", "--profile", path("other.conf"), "--history",
                             path("normal.csv"), "--model", path("m.model"), NULL};
    assert_int_equal(cli(unknown), 1);
    /* A model replayed against a profile whose channel set differs. */
    const char *train[] = {"train", "--profile", path("plant.conf"), "--history",
                           path("normal.csv"), "--model", path("m.model"), NULL};
    assert_int_equal(cli(train), 0);
    const char *mismatch[] = {"replay", "--profile", path("other.conf"), "--model",
                              path("m.model"), "--csv", path("attacked.csv"), "--out",
                              path("flags.csv"), NULL};
    assert_int_equal(cli(mismatch), 1);
    const char *missing[] = {"replay", "--profile", path("plant.conf"), "--model",
                             path("m.model"), "--csv", path("nonexistent.csv"), "--out",
                             path("flags.csv"), NULL};
    assert_int_equal(cli(missing), 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_and_replay),
        cmocka_unit_test(test_labels_file),
        cmocka_unit_test(test_refusals),
    };
    return cmocka_run_group_tests_name("anomaly_cli", tests, setup, teardown);
}
