/* Unit tests of cm_metrics: the rendered text (families together, typed once), histograms, and
 * registering, counting and rendering from several threads at once. */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cm_metrics.h"

static char *render(cm_metrics *m)
{
    char *text = NULL;
    size_t len = 0;
    assert_int_equal(cm_metrics_render(m, &text, &len), CM_OK);
    assert_int_equal(strlen(text), len);
    return text;
}

static int count_of(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

static void test_families_render_together_whatever_the_order(void **state)
{
    (void)state;
    cm_metrics *m = cm_metrics_new("t", NULL);
    cm_metric_inc(cm_metric_counter(m, "a_total{reason=\"x\"}", "refused"));
    cm_metric_set(cm_metric_gauge(m, "b", "a gauge"), -3);
    cm_metric_add(cm_metric_counter(m, "a_total{reason=\"y\"}", "refused"), 5);
    assert_ptr_equal(cm_metric_counter(m, "a_total{reason=\"x\"}", "refused"),
                     cm_metric_counter(m, "a_total{reason=\"x\"}", ""));
    char *t = render(m);
    assert_string_equal(t, "# HELP a_total refused\n# TYPE a_total counter\n"
                           "a_total{reason=\"x\"} 1\na_total{reason=\"y\"} 5\n"
                           "# HELP b a gauge\n# TYPE b gauge\nb -3\n");
    free(t);
    cm_metrics_destroy(&m);
    assert_null(m);
}

static void test_histogram_buckets_are_cumulative(void **state)
{
    (void)state;
    cm_metrics *m = cm_metrics_new("t", NULL);
    cm_metric *h = cm_metric_histogram(m, "lat_seconds{stage=\"v\"}", "latency");
    assert_non_null(h);
    assert_ptr_equal(cm_metric_histogram(m, "lat_seconds{stage=\"v\"}", "latency"), h);
    cm_metric_observe_us(h, 50);         /* <= 0.0001 */
    cm_metric_observe_us(h, 1000);       /* == 0.001: in le="0.001" */
    cm_metric_observe_us(h, 3000000);    /* 3 s */
    cm_metric_observe_us(h, 60000000);   /* beyond 10 s: +Inf only */
    char *t = render(m);
    assert_int_equal(count_of(t, "# TYPE lat_seconds histogram\n"), 1);
    assert_non_null(strstr(t, "lat_seconds_bucket{stage=\"v\",le=\"0.0001\"} 1\n"));
    assert_non_null(strstr(t, "lat_seconds_bucket{stage=\"v\",le=\"0.0005\"} 1\n"));
    assert_non_null(strstr(t, "lat_seconds_bucket{stage=\"v\",le=\"0.001\"} 2\n"));
    assert_non_null(strstr(t, "lat_seconds_bucket{stage=\"v\",le=\"2.5\"} 2\n"));
    assert_non_null(strstr(t, "lat_seconds_bucket{stage=\"v\",le=\"10\"} 3\n"));
    assert_non_null(strstr(t, "lat_seconds_bucket{stage=\"v\",le=\"+Inf\"} 4\n"));
    assert_non_null(strstr(t, "lat_seconds_sum{stage=\"v\"} 63.001050\n"));
    assert_non_null(strstr(t, "lat_seconds_count{stage=\"v\"} 4\n"));
    free(t);
    cm_metric_observe_us(NULL, 1); /* a table that was full: counting is a no-op */
    cm_metrics_destroy(&m);
}

static void test_a_full_table_gives_null(void **state)
{
    (void)state;
    cm_metrics *m = cm_metrics_new("t", NULL);
    char name[64];
    int i = 0;
    for (;; i++) {
        snprintf(name, sizeof name, "c_total{i=\"%d\"}", i);
        if (!cm_metric_counter(m, name, "c"))
            break;
    }
    assert_int_equal(i, 512);
    assert_null(cm_metric_histogram(m, "h_seconds", "h"));
    cm_metric_inc(NULL);
    cm_metrics_destroy(&m);
}

typedef struct worker {
    cm_metrics *m;
    int id;
} worker;

static void *work(void *arg)
{
    worker *w = arg;
    char name[64];
    for (int i = 0; i < 2000; i++) {
        snprintf(name, sizeof name, "w_total{worker=\"%d\",k=\"%d\"}", w->id, i % 20);
        cm_metric_inc(cm_metric_counter(w->m, name, "work"));
        cm_metric_inc(cm_metric_counter(w->m, "shared_total", "shared"));
        if (i % 100 == 0) {
            char *t = NULL;
            size_t len;
            cm_metrics_render(w->m, &t, &len);
            free(t);
        }
    }
    return NULL;
}

static void test_threads_register_count_and_render_at_once(void **state)
{
    (void)state;
    cm_metrics *m = cm_metrics_new("t", NULL);
    pthread_t th[4];
    worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (worker){m, i};
        assert_int_equal(pthread_create(&th[i], NULL, work, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(cm_metric_value(cm_metric_counter(m, "shared_total", "")), 8000);
    char *t = render(m);
    assert_int_equal(count_of(t, "# TYPE w_total counter\n"), 1);
    assert_int_equal(count_of(t, "\nw_total{"), 80);
    assert_non_null(strstr(t, "w_total{worker=\"3\",k=\"19\"} 100\n"));
    free(t);
    cm_metrics_destroy(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_families_render_together_whatever_the_order),
        cmocka_unit_test(test_histogram_buckets_are_cumulative),
        cmocka_unit_test(test_a_full_table_gives_null),
        cmocka_unit_test(test_threads_register_count_and_render_at_once),
    };
    return cmocka_run_group_tests_name("cm_metrics", tests, NULL, NULL);
}
