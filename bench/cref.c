/*
 * cref.c -- plain C libca reference client for the capar benchmark.
 *
 * Compiled at run time by bench/run.py against the epicscorelibs headers and libraries.
 * It does the minimum libca needs for a bulk read, so its time is the floor that the
 * Python clients are compared to.
 *
 *   cref oneshot  NAMESFILE          create all channels (no callbacks), ONE ca_pend_io,
 *                                    ca_array_get of each, ONE ca_pend_io; timed from
 *                                    before the first create to after the last pend_io
 *   cref repeat   NAMESFILE R        connect outside the timer, then time R rounds of
 *                                    (ca_array_get of each + ca_pend_io)
 *   cref waveform NAMESFILE COUNT    connect outside the timer, then time one round of
 *                                    ca_array_get of COUNT doubles of each + ca_pend_io
 *   cref cycles   NAMESFILE R        R one-shot cycles in ONE context: create all channels, wait until
 *                                    all are connected (ca_pend_io, then ca_state polls), clear them;
 *                                    one JSON line per cycle: seconds to all connected, how many were
 *                                    connected after 1 s (libca's search retries show as late channels)
 *   cref memory   NAMESFILE SUBSCRIBE  resident size before and after connecting every channel (and, with
 *                                    SUBSCRIBE=1, a DBR_TIME_DOUBLE subscription each, events for 2 s)
 *   cref monitor  NAMESFILE SECONDS  subscribe (DBR_TIME_DOUBLE) to every channel, warm up 1 s, then
 *                                    count events per PV for SECONDS; reports delivered, expected
 *                                    (last - first + 1 per PV: the names are +1 counters) and CPU
 *
 * Prints ONE JSON line on stdout: {"seconds": S, "ok": N, "n": NAMES, ...}.
 * "ok" counts values that actually arrived (buffers are pre-filled with NaN).
 * The ca_pend_io timeout is CREF_TIMEOUT seconds (default 60).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/resource.h>

#include <cadef.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char **read_names(const char *path, long *n_out)
{
    FILE *f = fopen(path, "r");
    char line[1024];
    long cap = 1024, n = 0;
    char **names;
    if (!f) {
        perror(path);
        exit(2);
    }
    names = malloc(cap * sizeof(*names));
    while (fgets(line, sizeof(line), f)) {
        size_t len = strcspn(line, "\r\n");
        line[len] = '\0';
        if (len == 0)
            continue;
        if (n == cap) {
            cap *= 2;
            names = realloc(names, cap * sizeof(*names));
        }
        names[n++] = strdup(line);
    }
    fclose(f);
    *n_out = n;
    return names;
}

static void fail(const char *what, int status)
{
    printf("{\"error\": \"%s: %s\"}\n", what, ca_message(status));
    fflush(stdout);
    exit(1);
}

/* Create every channel without a connection callback, then ONE ca_pend_io. Returns the
 * number connected (ca_pend_io waits for all of them, or until the timeout). */
static long connect_all(char **names, long n, chid *chids, double timeout)
{
    long i, connected = 0;
    int status;
    for (i = 0; i < n; i++) {
        status = ca_create_channel(names[i], NULL, NULL, CA_PRIORITY_DEFAULT, &chids[i]);
        if (status != ECA_NORMAL)
            fail("ca_create_channel", status);
    }
    ca_pend_io(timeout); /* ECA_TIMEOUT when some did not connect: counted below */
    for (i = 0; i < n; i++)
        if (ca_state(chids[i]) == cs_conn)
            connected++;
    return connected;
}

/* Issue one ca_array_get per connected channel into buf[i*count ...], then ONE ca_pend_io. */
static void get_all(chid *chids, long n, long count, double *buf, double timeout)
{
    long i, k;
    int status;
    for (i = 0; i < n * count; i++)
        buf[i] = NAN;
    for (i = 0; i < n; i++) {
        if (ca_state(chids[i]) != cs_conn)
            continue;
        k = count;
        if ((long)ca_element_count(chids[i]) < k)
            k = (long)ca_element_count(chids[i]);
        status = ca_array_get(DBR_DOUBLE, k, chids[i], &buf[i * count]);
        if (status != ECA_NORMAL)
            fail("ca_array_get", status);
    }
    ca_pend_io(timeout);
}

/* A value is OK when its first element arrived. */
static long count_ok(long n, long count, const double *buf)
{
    long i, ok = 0;
    for (i = 0; i < n; i++)
        if (!isnan(buf[i * count]))
            ok++;
    return ok;
}

/* monitor mode: per-PV first/last/count, updated on libca's thread */
static double *mon_first, *mon_last;
static long *mon_count;
static volatile int mon_recording;

static void on_event(struct event_handler_args args)
{
    long i = (long)(size_t)args.usr;
    double v;
    if (args.status != ECA_NORMAL || !mon_recording)
        return;
    v = ((const struct dbr_time_double *)args.dbr)->value;
    if (isnan(mon_first[i]) || v < mon_first[i])
        mon_first[i] = v;
    if (isnan(mon_last[i]) || v > mon_last[i])
        mon_last[i] = v;
    mon_count[i]++;
}

static double cpu_seconds(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + 1e-6 * ru.ru_utime.tv_usec + ru.ru_stime.tv_sec + 1e-6 * ru.ru_stime.tv_usec;
}

static int monitor_mode(char **names, long n, chid *chids, double seconds, double timeout)
{
    long i, delivered = 0, expected = 0, seen = 0, connected;
    double c0, c1, t0, t1;
    evid ev;
    mon_first = malloc((n ? n : 1) * sizeof(double));
    mon_last = malloc((n ? n : 1) * sizeof(double));
    mon_count = calloc(n ? n : 1, sizeof(long));
    for (i = 0; i < n; i++)
        mon_first[i] = mon_last[i] = NAN;
    connected = connect_all(names, n, chids, timeout);
    for (i = 0; i < n; i++)
        if (ca_state(chids[i]) == cs_conn)
            ca_create_subscription(DBR_TIME_DOUBLE, 1, chids[i], DBE_VALUE | DBE_ALARM, on_event,
                                   (void *)(size_t)i, &ev);
    ca_flush_io();
    ca_pend_event(1.0); /* warm-up */
    c0 = cpu_seconds();
    t0 = now();
    mon_recording = 1;
    ca_pend_event(seconds);
    mon_recording = 0;
    t1 = now();
    c1 = cpu_seconds();
    for (i = 0; i < n; i++) {
        delivered += mon_count[i];
        if (!isnan(mon_first[i])) {
            expected += (long)(mon_last[i] - mon_first[i] + 1);
            seen++;
        }
    }
    printf("{\"client\": \"C\", \"n\": %ld, \"seconds\": %.3f, \"delivered\": %ld, \"expected\": %ld, "
           "\"pvs_seen\": %ld, \"connected\": %ld, \"cpu\": %.4f, \"cpu_per_100k\": %.4f, "
           "\"us_per_event\": %.4f}\n",
           n, t1 - t0, delivered, expected, seen, connected, c1 - c0,
           delivered ? (c1 - c0) / delivered * 1e5 : 0.0, delivered ? (c1 - c0) / delivered * 1e6 : 0.0);
    return 0;
}

static long rss_kb(void)
{
    long pages = 0, rss = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
            rss = 0;
        fclose(f);
    }
    return rss * 4; /* 4 KiB pages */
}

static void count_event(struct event_handler_args args) { (void)args; }

static int memory_mode(char **names, long n, chid *chids, int subscribe, double timeout)
{
    long i, connected, before = rss_kb();
    evid ev;
    connected = connect_all(names, n, chids, timeout);
    if (subscribe) {
        for (i = 0; i < n; i++)
            if (ca_state(chids[i]) == cs_conn)
                ca_create_subscription(DBR_TIME_DOUBLE, 1, chids[i], DBE_VALUE | DBE_ALARM, count_event, NULL, &ev);
        ca_flush_io();
        ca_pend_event(2.0);
    }
    printf("{\"client\": \"C\", \"n\": %ld, \"connected\": %ld, \"rss_before_kb\": %ld, \"rss_after_kb\": %ld}\n",
           n, connected, before, rss_kb());
    return 0;
}

static int cycles_mode(char **names, long n, chid *chids, long rounds, double timeout)
{
    long r, i, at1;
    double t0, t, all;
    for (r = 0; r < rounds; r++) {
        t0 = now();
        for (i = 0; i < n; i++)
            if (ca_create_channel(names[i], NULL, NULL, CA_PRIORITY_DEFAULT, &chids[i]) != ECA_NORMAL)
                fail("ca_create_channel", ECA_ALLOCMEM);
        ca_pend_io(1.0); /* returns at once when all are connected; ECA_TIMEOUT after 1 s */
        at1 = 0;
        for (i = 0; i < n; i++)
            at1 += ca_state(chids[i]) == cs_conn;
        all = now() - t0;
        if (at1 < n) {
            long conn = at1;
            while (conn < n && (t = now() - t0) < timeout) {
                ca_pend_event(0.01);
                conn = 0;
                for (i = 0; i < n; i++)
                    conn += ca_state(chids[i]) == cs_conn;
            }
            all = now() - t0;
        }
        printf("{\"cycle\": %ld, \"seconds\": %.4f, \"connected_at_1s\": %ld, \"n\": %ld}\n", r, all, at1, n);
        fflush(stdout);
        for (i = 0; i < n; i++)
            ca_clear_channel(chids[i]);
        for (i = 0; i < n; i++)
            chids[i] = 0;
        ca_flush_io();
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *mode, *env;
    char **names;
    long n, i, arg = 0, connected, ok, count = 1;
    chid *chids;
    double *buf, timeout = 60.0, t0, t1;
    int status;

    if (argc < 3) {
        fprintf(stderr, "usage: %s oneshot|repeat|waveform|cycles|memory|monitor NAMESFILE [R|COUNT|SECONDS]\n", argv[0]);
        return 2;
    }
    mode = argv[1];
    if (argc > 3)
        arg = atol(argv[3]);
    env = getenv("CREF_TIMEOUT");
    if (env && atof(env) > 0)
        timeout = atof(env);

    names = read_names(argv[2], &n);
    chids = calloc(n ? n : 1, sizeof(*chids));

    status = ca_context_create(ca_enable_preemptive_callback);
    if (status != ECA_NORMAL)
        fail("ca_context_create", status);

    if (strcmp(mode, "oneshot") == 0) {
        buf = malloc((n ? n : 1) * sizeof(double));
        t0 = now();
        connected = connect_all(names, n, chids, timeout);
        get_all(chids, n, 1, buf, timeout);
        t1 = now();
        ok = count_ok(n, 1, buf);
        printf("{\"seconds\": %.6f, \"ok\": %ld, \"n\": %ld, \"connected\": %ld}\n",
               t1 - t0, ok, n, connected);
    } else if (strcmp(mode, "repeat") == 0) {
        long rounds = arg > 0 ? arg : 10, r;
        buf = malloc((n ? n : 1) * sizeof(double));
        connected = connect_all(names, n, chids, timeout);
        ok = n;
        t0 = now();
        for (r = 0; r < rounds; r++) {
            get_all(chids, n, 1, buf, timeout);
            i = count_ok(n, 1, buf);
            if (i < ok)
                ok = i; /* the worst round */
        }
        t1 = now();
        printf("{\"seconds\": %.6f, \"ok\": %ld, \"n\": %ld, \"connected\": %ld, \"rounds\": %ld}\n",
               t1 - t0, ok, n, connected, rounds);
    } else if (strcmp(mode, "waveform") == 0) {
        count = arg > 0 ? arg : 1;
        buf = malloc((n ? n : 1) * count * sizeof(double));
        if (!buf) {
            printf("{\"error\": \"cannot allocate %ld doubles\"}\n", n * count);
            return 1;
        }
        connected = connect_all(names, n, chids, timeout);
        t0 = now();
        get_all(chids, n, count, buf, timeout);
        t1 = now();
        /* OK when the first element arrived; "full" when the last requested one did too */
        ok = count_ok(n, count, buf);
        {
            long full = 0;
            for (i = 0; i < n; i++)
                if (!isnan(buf[i * count]) && !isnan(buf[i * count + count - 1]))
                    full++;
            printf("{\"seconds\": %.6f, \"ok\": %ld, \"n\": %ld, \"connected\": %ld, "
                   "\"count\": %ld, \"full\": %ld}\n",
                   t1 - t0, ok, n, connected, count, full);
        }
    } else if (strcmp(mode, "memory") == 0) {
        memory_mode(names, n, chids, arg > 0, timeout);
    } else if (strcmp(mode, "cycles") == 0) {
        cycles_mode(names, n, chids, arg > 0 ? arg : 25, timeout);
    } else if (strcmp(mode, "monitor") == 0) {
        monitor_mode(names, n, chids, arg > 0 ? (double)arg : 10.0, timeout);
    } else {
        fprintf(stderr, "unknown mode %s\n", mode);
        return 2;
    }
    fflush(stdout);

    for (i = 0; i < n; i++)
        if (chids[i])
            ca_clear_channel(chids[i]);
    ca_context_destroy();
    return 0;
}
