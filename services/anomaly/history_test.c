/* Unit tests of history: timestamp formats, CSV traps (leading spaces, CRLF, BOM, quotes, -999,
 * empty values), the label column, and errors that name file and line. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "history.h"

/* Seconds of y-m-d h:mi:s, computed independently of history.c (days since 1970 by loop). */
static int64_t at(int y, int mo, int d, int h, int mi, int s)
{
    static const int DAYS[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int64_t days = 0;
    for (int yy = 1970; yy < y; yy++)
        days += (yy % 4 == 0 && yy % 100 != 0) || yy % 400 == 0 ? 366 : 365;
    for (int mm = 1; mm < mo; mm++)
        days += DAYS[mm - 1] + (mm == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0));
    days += d - 1;
    return days * 86400 + h * 3600 + mi * 60 + s;
}

static int64_t parse_ok(const char *s)
{
    int64_t t = -1;
    if (history_parse_time(s, &t) != 0)
        fail_msg("'%s' should parse", s);
    return t;
}

static void test_timestamp_formats(void **state)
{
    (void)state;
    assert_int_equal(parse_ok("06/01/14 00"), at(2014, 1, 6, 0, 0, 0));
    assert_int_equal(parse_ok(" 04/07/16 23 "), at(2016, 7, 4, 23, 0, 0));
    assert_int_equal(parse_ok("6/1/2014 7"), at(2014, 1, 6, 7, 0, 0));
    assert_int_equal(parse_ok("29/02/2016 13:45"), at(2016, 2, 29, 13, 45, 0));
    assert_int_equal(parse_ok("29/02/16 13:45:07"), at(2016, 2, 29, 13, 45, 7));
    assert_int_equal(parse_ok("2016-07-04T00:00"), at(2016, 7, 4, 0, 0, 0));
    assert_int_equal(parse_ok("2016-07-04T05:06:07Z"), at(2016, 7, 4, 5, 6, 7));
    assert_int_equal(parse_ok("2016-07-04T05:06:07.250Z"), at(2016, 7, 4, 5, 6, 7));
    assert_int_equal(parse_ok("2016-07-04 05:06:07"), at(2016, 7, 4, 5, 6, 7));
    assert_int_equal(parse_ok("2016-07-04T05:06:07+02:00"), at(2016, 7, 4, 3, 6, 7));
    assert_int_equal(parse_ok("2016-07-04T01:00-0130"), at(2016, 7, 4, 2, 30, 0));
    assert_int_equal(parse_ok("1969-12-31 23:00:00"), -3600);
    const char *bad[] = {"", "abc", "32/01/14 00", "29/02/15 00", "06/13/14 00", "06/01/14 24",
                         "06/01/14", "06/01/141 00", "2016-07-04", "2016-7-04 00:00",
                         "2016-07-04T00", "2016-07-04 00:60", "2016-07-04 00:00:00 x",
                         "2016/07/04 00:00", "06-01-14 00", NULL};
    for (int i = 0; bad[i]; i++) {
        int64_t t;
        if (history_parse_time(bad[i], &t) == 0)
            fail_msg("'%s' should be refused", bad[i]);
    }
    char buf[20];
    history_format_time(at(2016, 12, 25, 0, 0, 0), buf);
    assert_string_equal(buf, "2016-12-25 00:00:00");
    history_format_time(at(2000, 2, 29, 23, 59, 59), buf);
    assert_string_equal(buf, "2000-02-29 23:59:59");
    history_format_time(-3600, buf);
    assert_string_equal(buf, "1969-12-31 23:00:00");
}

static history *parse(const char *text, char err[HISTORY_ERRLEN])
{
    history *h = NULL;
    err[0] = '\0';
    history_parse("t.csv", text, strlen(text), &h, err);
    return h;
}

/* The BATADAL dataset04 traps: BOM, leading spaces in names and values, CRLF, -999 labels. */
static void test_batadal_style_file(void **state)
{
    (void)state;
    char err[HISTORY_ERRLEN];
    history *h = parse("\xEF\xBB\xBF"
                       "DATETIME, L_T1, F_PU1, ATT_FLAG\r\n"
                       "04/07/16 00, 2.44, 93.63, -999\r\n"
                       "04/07/16 01, 2.66, , 1\r\n"
                       "\r\n"
                       "04/07/16 02,-999,  89.5 ,0\r\n",
                       err);
    assert_non_null(h);
    assert_string_equal(h->time_col, "DATETIME");
    assert_int_equal(h->n_cols, 2);
    assert_string_equal(h->cols[0], "L_T1");
    assert_string_equal(h->cols[1], "F_PU1");
    assert_int_equal(h->n_rows, 3);
    assert_true(h->has_label);
    assert_int_equal(h->label[0], HISTORY_UNKNOWN);
    assert_int_equal(h->label[1], HISTORY_ATTACK);
    assert_int_equal(h->label[2], HISTORY_NORMAL);
    assert_true(h->v[0] == 2.44 && h->v[1] == 93.63);
    assert_true(h->v[2] == 2.66 && isnan(h->v[3])); /* empty: missing */
    assert_true(isnan(h->v[4]) && h->v[5] == 89.5); /* -999: missing */
    assert_int_equal(h->ts[1] - h->ts[0], 3600);
    assert_int_equal(h->line[2], 5);
    assert_int_equal(history_column(h, "l_t1"), 0);
    assert_int_equal(history_column(h, "F_PU1"), 1);
    assert_int_equal(history_column(h, "ATT_FLAG"), -1);
    history_destroy(&h);
    assert_null(h);
}

static void test_iso_quotes_comments_and_no_label(void **state)
{
    (void)state;
    char err[HISTORY_ERRLEN];
    history *h = parse("# exported by a historian\n"
                       "\"time\",\"Level, tank 1\",flow\n"
                       "2016-07-04T00:00:00Z,\"1.5\",NaN\n"
                       "  # a comment line\n"
                       "2016-07-04 01:00:00, \"2\" ,NA",
                       err);
    assert_non_null(h);
    assert_false(h->has_label);
    assert_string_equal(h->cols[0], "Level, tank 1");
    assert_int_equal(h->n_rows, 2);
    assert_int_equal(h->label[0], HISTORY_NORMAL);
    assert_true(h->v[0] == 1.5 && isnan(h->v[1]) && h->v[2] == 2.0 && isnan(h->v[3]));
    history_destroy(&h);

    h = parse("DATETIME,label\n06/01/14 00,1\n06/01/14 01,0\n", err); /* labels only */
    assert_non_null(h);
    assert_int_equal(h->n_cols, 0);
    assert_int_equal(h->label[0], HISTORY_ATTACK);
    history_destroy(&h);
}

static void expect_error(const char *text, const char *needle)
{
    char err[HISTORY_ERRLEN];
    history *h = parse(text, err);
    if (h || !strstr(err, needle))
        fail_msg("expected an error containing '%s', got '%s'", needle, h ? "(parsed)" : err);
}

static void test_errors_name_file_and_line(void **state)
{
    (void)state;
    expect_error("t,a\r\n06/01/14 00,1\r\n06/01/14 01,1,2\r\n", "t.csv:3: expected 2 fields");
    expect_error("t,a\n06/01/14 00,x\n", "t.csv:2: column 'a': 'x' is not a number");
    expect_error("t,a\n06/01/14 00,1e999\n", "t.csv:2:");
    expect_error("t,a,ATT_FLAG\n06/01/14 00,1,2\n", "t.csv:2: label '2'");
    expect_error("t,a,A\n", "t.csv:1: column 'A' appears twice");
    expect_error("t,a,,b\n", "t.csv:1: column 3 has an empty name");
    expect_error("t,a,att_flag,LABEL\n", "t.csv:1: two label columns");
    expect_error("t,a\n31/04/16 00,1\n", "t.csv:2: bad timestamp '31/04/16 00'");
    expect_error("t,a\n06/01/14 00,\"1\n", "t.csv:2: unterminated quoted field");
    expect_error("only\n", "t.csv:1: header needs");
    expect_error("\n# nothing\n", "t.csv: no header line");
    char err[HISTORY_ERRLEN];
    history *h = NULL;
    assert_int_equal(history_load("/nonexistent/x.csv", &h, err), CM_ERR_IO);
    assert_non_null(strstr(err, "/nonexistent/x.csv"));
    assert_null(h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_timestamp_formats),
        cmocka_unit_test(test_batadal_style_file),
        cmocka_unit_test(test_iso_quotes_comments_and_no_label),
        cmocka_unit_test(test_errors_name_file_and_line),
    };
    return cmocka_run_group_tests_name("history", tests, NULL, NULL);
}
