/*
 * _core.c -- capar's optional compiled core: the per-PV loops of the bulk path and the monitor event handler.
 *
 * Plain C.  It includes neither Python.h nor any EPICS header and links against neither: every libca function
 * is called through an address that capar/ca/core.py takes from capar's already-loaded libca handle and hands
 * over in a `capar_fns` table.  So loading this library loads no libca (the fork rule of DESIGN.md) and there is
 * no build-time ABI pin on epicscorelibs.  The structures below are libca's public ones (cadef.h), which have
 * not changed since EPICS 3.14.
 *
 * Every function here does what capar/ca/bulk.py and capar/ca/monitor.py do without this library, with the
 * same results bit for bit (tests/test_core.py runs both paths against one IOC); the pure-Python path stays
 * for machines without a compiler and for CAPAR_CORE=0.
 *
 * Threads: capar_on_get and capar_on_event run on libca's threads (or inside ca_pend_event in a
 * non-preemptive context) and only copy bytes under the request's / ring's own mutex; they never call
 * Python and never call libca.  Everything else runs in the caller's thread, called through ctypes, which
 * releases the GIL for the duration of the call.
 */
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CAPAR_CORE_ABI 1 /* capar/ca/core.py refuses a library reporting another number (stale build) */
#define ECA_NORMAL 1
#define CS_CONN 2
#define ROW 24                           /* bytes per monitor ring row (capar/ca/monitor.py: ROW) */
#define NEVER ((uint64_t)1 << 62)        /* wake_at when no consumer waits */

/* libca's struct event_handler_args (cadef.h) */
struct event_handler_args {
    void *usr;
    void *chid;
    long type;
    long count;
    const void *dbr;
    int status;
};
typedef void (*event_cb)(struct event_handler_args);

/* The libca functions the core calls, in the order of capar/ca/core.py's _Fns structure. */
typedef struct {
    int (*create_channel)(const char *, void *, void *, unsigned, void **);
    int (*clear_channel)(void *);
    int (*state)(void *);
    short (*field_type)(void *);
    unsigned long (*element_count)(void *);
    int (*array_get_callback)(long, unsigned long, void *, event_cb, void *);
    int (*pend_event)(double);
    int (*flush_io)(void);
} capar_fns;

int capar_core_abi(void) { return CAPAR_CORE_ABI; }

/* -------------------------------------------------------------------------------------------------------- */
/* time */

static double mono(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void abs_after(struct timespec *ts, double seconds)
{
    double whole;
    clock_gettime(CLOCK_MONOTONIC, ts);
    if (seconds < 0)
        seconds = 0;
    if (seconds > 1e6)
        seconds = 1e6;
    whole = (double)(long)seconds;
    ts->tv_sec += (time_t)whole;
    ts->tv_nsec += (long)((seconds - whole) * 1e9);
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec += 1;
        ts->tv_nsec -= 1000000000L;
    }
}

static void init_sync(pthread_mutex_t *m, pthread_cond_t *c)
{
    pthread_condattr_t ca;
    pthread_mutex_init(m, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(c, &ca);
    pthread_condattr_destroy(&ca);
}

/* -------------------------------------------------------------------------------------------------------- */
/* channels */

/* ca_create_channel for names[offsets[k]] (NUL-terminated, packed in one buffer); chids[k] and status[k]
 * written; conn_cb / pusers[k] (pusers may be NULL) as libca's connection callback and user pointer.
 * Returns how many were created. */
long capar_create(const capar_fns *f, long n, const char *names, const int64_t *offsets, void *conn_cb,
                  void *const *pusers, unsigned priority, void **chids, int32_t *status)
{
    long k, ok = 0;
    for (k = 0; k < n; k++) {
        int st = f->create_channel(names + offsets[k], conn_cb, pusers ? pusers[k] : NULL, priority, &chids[k]);
        status[k] = st;
        ok += st == ECA_NORMAL;
    }
    return ok;
}

/* ca_state of each channel (-1 for a NULL chid); returns how many are connected. */
long capar_states(const capar_fns *f, long n, void *const *chids, int8_t *out)
{
    long k, conn = 0;
    for (k = 0; k < n; k++) {
        int s = chids[k] ? f->state(chids[k]) : -1;
        out[k] = (int8_t)s;
        conn += s == CS_CONN;
    }
    return conn;
}

/* native field type and element count of each channel; -1 / 0 where it is not connected (any more). */
void capar_info(const capar_fns *f, long n, void *const *chids, int16_t *ftype, int64_t *count)
{
    long k;
    for (k = 0; k < n; k++) {
        short t = f->field_type(chids[k]);
        ftype[k] = t;
        count[k] = t < 0 ? 0 : (int64_t)f->element_count(chids[k]);
    }
}

/* ca_clear_channel of every non-NULL chid. */
void capar_clear(const capar_fns *f, long n, void *const *chids)
{
    long k;
    for (k = 0; k < n; k++)
        if (chids[k])
            f->clear_channel(chids[k]);
}

/* -------------------------------------------------------------------------------------------------------- */
/* one read of many channels: ca_array_get_callback each, completions counted under one mutex */

typedef struct capar_req capar_req;
typedef struct {
    capar_req *req;
    long k;
} capar_entry;

struct capar_req {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    long remaining;   /* issued requests not answered yet (the waiter's count) */
    long outstanding; /* issued requests whose callback has not run yet (the request's lifetime) */
    int active;       /* the caller's arrays may be written (cleared by capar_get_finish) */
    char *buf;
    long itemsize, copysize;
    uint8_t *done;
    int32_t *status;
    capar_entry entries[];
};

static void on_get(struct event_handler_args a)
{
    capar_entry *e = (capar_entry *)a.usr;
    capar_req *r = e->req;
    pthread_mutex_lock(&r->lock);
    if (r->active) {
        if (a.status == ECA_NORMAL && a.dbr) {
            memcpy(r->buf + e->k * r->itemsize, a.dbr, (size_t)r->copysize);
            r->done[e->k] = 1;
        } else {
            r->status[e->k] = a.status == ECA_NORMAL ? -1 : a.status;
        }
        if (--r->remaining == 0)
            pthread_cond_broadcast(&r->cond);
    }
    r->outstanding--;
    pthread_mutex_unlock(&r->lock);
}

/* Issue ca_array_get_callback(type, 1) for every chid; replies are copied (copysize bytes) to
 * buf[k * itemsize] and done[k] set.  status[k]: the issue status, or the callback's error status.
 * Flushes once.  Returns the request (NULL when out of memory), to be waited for and finished. */
capar_req *capar_get_start(const capar_fns *f, long type, long n, void *const *chids, char *buf, long itemsize,
                           long copysize, uint8_t *done, int32_t *status)
{
    long k, failed = 0;
    capar_req *r = (capar_req *)calloc(1, sizeof(*r) + (size_t)n * sizeof(capar_entry));
    if (!r)
        return NULL;
    init_sync(&r->lock, &r->cond);
    r->buf = buf;
    r->itemsize = itemsize;
    r->copysize = copysize;
    r->done = done;
    r->status = status;
    r->active = 1;
    r->remaining = r->outstanding = n; /* lowered below by what could not be issued */
    for (k = 0; k < n; k++) {
        capar_entry *e = &r->entries[k];
        int st;
        e->req = r;
        e->k = k;
        done[k] = 0;
        status[k] = ECA_NORMAL; /* before the call: its callback may run before it returns */
        st = f->array_get_callback(type, 1, chids[k], on_get, e);
        if (st != ECA_NORMAL) {
            status[k] = st; /* no callback will come */
            failed++;
        }
    }
    pthread_mutex_lock(&r->lock);
    r->remaining -= failed;
    r->outstanding -= failed;
    pthread_mutex_unlock(&r->lock);
    f->flush_io();
    return r;
}

/* Wait up to timeout seconds for the replies; returns how many are still missing.  In a preemptive context
 * (libca's threads run the callbacks) a condition wait; otherwise ca_pend_event slices of at most 1 ms. */
long capar_get_wait(const capar_fns *f, capar_req *r, double timeout, int preemptive)
{
    long left;
    if (preemptive) {
        struct timespec until;
        abs_after(&until, timeout);
        pthread_mutex_lock(&r->lock);
        while (r->remaining > 0)
            if (pthread_cond_timedwait(&r->cond, &r->lock, &until) == ETIMEDOUT)
                break;
        left = r->remaining;
        pthread_mutex_unlock(&r->lock);
        return left;
    } else {
        double end = mono() + timeout, now;
        for (;;) {
            pthread_mutex_lock(&r->lock);
            left = r->remaining;
            pthread_mutex_unlock(&r->lock);
            now = mono();
            if (left == 0 || now >= end)
                return left;
            f->pend_event(end - now < 1e-3 ? end - now : 1e-3);
        }
    }
}

static void req_free(capar_req *r)
{
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* Stop writing into the caller's arrays (late replies are dropped from now on).  Returns 1 when the request
 * was freed, 0 when callbacks are still due: the caller keeps the pointer and frees it with capar_req_reap
 * once they ran (ca_clear_channel cancels them: such a request is never freed, a few bytes per channel). */
int capar_get_finish(capar_req *r)
{
    long out;
    pthread_mutex_lock(&r->lock);
    r->active = 0;
    out = r->outstanding;
    pthread_mutex_unlock(&r->lock);
    if (out == 0) {
        req_free(r);
        return 1;
    }
    return 0;
}

/* Free a finished request whose callbacks have all run; returns 1 if freed. */
int capar_req_reap(capar_req *r)
{
    long out;
    pthread_mutex_lock(&r->lock);
    out = r->outstanding;
    pthread_mutex_unlock(&r->lock);
    if (out == 0) {
        req_free(r);
        return 1;
    }
    return 0;
}

/* -------------------------------------------------------------------------------------------------------- */
/* monitor ring: the layout of capar/ca/monitor.py (rows of 24 bytes, int64 codes), written by libca's
 * threads through capar_on_event without entering Python. */

typedef struct {
    uint64_t head, tail, overflow, wake_at, cap; /* first: read by Python as hints (capar/ca/core.py _Ring) */
    int32_t closed, pad;
    uint8_t *raw;
    int64_t *codes;
    pthread_mutex_t lock;
    pthread_cond_t cond;
} capar_ring;

typedef struct {
    capar_ring *ring;
    int64_t index;
    int32_t off, size; /* where in the row and how many bytes of the event's DBR to copy */
} capar_slot;

long capar_slot_size(void) { return (long)sizeof(capar_slot); }

capar_ring *capar_ring_new(uint8_t *raw, int64_t *codes, uint64_t cap)
{
    capar_ring *r = (capar_ring *)calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    init_sync(&r->lock, &r->cond);
    r->raw = raw;
    r->codes = codes;
    r->cap = cap;
    r->wake_at = NEVER;
    return r;
}

capar_slot *capar_slots_new(capar_ring *ring, long n)
{
    long i;
    capar_slot *s = (capar_slot *)calloc((size_t)(n > 0 ? n : 1), sizeof(*s));
    if (!s)
        return NULL;
    for (i = 0; i < n; i++) {
        s[i].ring = ring;
        s[i].index = i;
    }
    return s;
}

/* Set what PV i's events copy (before its subscription is made). */
void capar_slot_set(capar_slot *s, long i, int32_t off, int32_t size)
{
    s[i].off = off;
    s[i].size = size;
}

/* Reserve the next row under the lock held; -1 when closed or full (then an overflow is counted). */
static int64_t reserve(capar_ring *r, uint64_t *pending)
{
    uint64_t p;
    if (r->closed)
        return -1;
    p = r->head - r->tail;
    if (p >= r->cap) {
        r->overflow++;
        return -1;
    }
    *pending = p;
    return (int64_t)(r->head % r->cap);
}

static void commit(capar_ring *r, uint64_t pending)
{
    r->head++;
    if (pending >= r->wake_at) {
        r->wake_at = NEVER;
        pthread_cond_broadcast(&r->cond);
    }
}

/* The subscription callback of scalar PVs (usr: the PV's capar_slot). */
void capar_on_event(struct event_handler_args a)
{
    capar_slot *s = (capar_slot *)a.usr;
    capar_ring *r;
    uint64_t p;
    int64_t slot;
    if (a.status != ECA_NORMAL || !a.dbr || !s)
        return;
    r = s->ring;
    pthread_mutex_lock(&r->lock);
    slot = reserve(r, &p);
    if (slot >= 0) {
        memcpy(r->raw + slot * ROW + s->off, a.dbr, (size_t)s->size);
        r->codes[slot] = s->index;
        commit(r, p);
    }
    pthread_mutex_unlock(&r->lock);
}

/* One event written by Python (connections, strings, arrays): nbytes of src at the start of the row.
 * Returns the row used, or -1 (closed or full). */
int64_t capar_ring_push(capar_ring *r, int64_t code, const void *src, long nbytes)
{
    uint64_t p;
    int64_t slot;
    pthread_mutex_lock(&r->lock);
    slot = reserve(r, &p);
    if (slot >= 0) {
        if (nbytes > 0)
            memcpy(r->raw + slot * ROW, src, (size_t)(nbytes < ROW ? nbytes : ROW));
        r->codes[slot] = code;
        commit(r, p);
    }
    pthread_mutex_unlock(&r->lock);
    return slot;
}

/* out[0] = head, out[1] = tail, read under the lock. */
void capar_ring_bounds(capar_ring *r, uint64_t *out)
{
    pthread_mutex_lock(&r->lock);
    out[0] = r->head;
    out[1] = r->tail;
    pthread_mutex_unlock(&r->lock);
}

/* Mark n rows consumed; returns the overflow count since the previous call (and resets it). */
uint64_t capar_ring_consume(capar_ring *r, uint64_t n)
{
    uint64_t ov;
    pthread_mutex_lock(&r->lock);
    r->tail += n;
    ov = r->overflow;
    r->overflow = 0;
    pthread_mutex_unlock(&r->lock);
    return ov;
}

/* Wait up to timeout seconds until more than wake_at events are pending or the ring is closed; returns the
 * number pending.  In a non-preemptive context the caller pends events instead (capar_ring_pending). */
uint64_t capar_ring_wait(capar_ring *r, uint64_t wake_at, double timeout)
{
    struct timespec until;
    uint64_t p;
    abs_after(&until, timeout);
    pthread_mutex_lock(&r->lock);
    while (!r->closed && r->head - r->tail <= wake_at) {
        r->wake_at = wake_at;
        if (pthread_cond_timedwait(&r->cond, &r->lock, &until) == ETIMEDOUT)
            break;
    }
    r->wake_at = NEVER;
    p = r->head - r->tail;
    pthread_mutex_unlock(&r->lock);
    return p;
}

/* Events written and not consumed yet. */
uint64_t capar_ring_pending(capar_ring *r)
{
    uint64_t p;
    pthread_mutex_lock(&r->lock);
    p = r->head - r->tail;
    pthread_mutex_unlock(&r->lock);
    return p;
}

/* From now on every write is dropped and waiters return. */
void capar_ring_close(capar_ring *r)
{
    pthread_mutex_lock(&r->lock);
    r->closed = 1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Free the ring and its slots: only once no subscription can call capar_on_event with them any more. */
void capar_ring_free(capar_ring *r, capar_slot *slots)
{
    free(slots);
    pthread_cond_destroy(&r->cond);
    pthread_mutex_destroy(&r->lock);
    free(r);
}

/* -------------------------------------------------------------------------------------------------------- */
/* decoding drained rows: capar/ca/monitor.py's decode() in one pass, with the same arithmetic */

#define EPICS2UNIX 631152000.0 /* POSIX seconds at the EPICS epoch (1990-01-01) */

/* the value of a scalar event of native type t (DBR_SHORT 1 .. DBR_DOUBLE 6) in a TIME-struct row */
static double row_value(const uint8_t *row, int t)
{
    double d;
    float f;
    int32_t l;
    int16_t h;
    uint16_t e;
    switch (t) {
    case 6: memcpy(&d, row + 16, 8); return d;
    case 5: memcpy(&l, row + 12, 4); return (double)l;
    case 2: memcpy(&f, row + 12, 4); return (double)f;
    case 1: memcpy(&h, row + 14, 2); return (double)h;
    case 3: memcpy(&e, row + 14, 2); return (double)e;
    case 4: return (double)row[15];
    default: return NAN; /* strings, arrays, connection events (NAN: numpy's positive quiet NaN) */
    }
}

/* rows[k] (24 bytes, codes[k]) -> index, kind (0 value, 1 connected, 2 disconnected), value (float64, NaN for
 * objects and connection events), timestamp (POSIX seconds), status, severity and, for the TIME form,
 * stamp_ns (EPICS-epoch nanoseconds).  vtype[i]: native type of scalar numeric PV i, -1 otherwise. */
void capar_decode(const uint8_t *raw, const int64_t *codes, long n, const int8_t *vtype, int time_form,
                  int64_t *index, int8_t *kind, double *value, double *timestamp, int16_t *status,
                  int16_t *severity, int64_t *stamp_ns)
{
    long k;
    for (k = 0; k < n; k++) {
        const uint8_t *row = raw + k * ROW;
        int64_t c = codes[k];
        uint32_t secs, nsec;
        int16_t st, sv;
        int conn = c < 0;
        memcpy(&st, row, 2);
        memcpy(&sv, row + 2, 2);
        memcpy(&secs, row + 4, 4);
        memcpy(&nsec, row + 8, 4);
        if (conn) {
            int64_t m = -1 - c;
            index[k] = m >> 1;
            kind[k] = (int8_t)(1 + (m & 1));
            value[k] = NAN;
        } else {
            index[k] = c;
            kind[k] = 0;
            value[k] = row_value(row, vtype[c]);
        }
        if (time_form || conn) {
            timestamp[k] = ((double)secs + EPICS2UNIX) + (double)nsec * 1e-9;
            status[k] = st;
            severity[k] = sv;
        } else {
            timestamp[k] = NAN;
            status[k] = 0;
            severity[k] = 0;
        }
        if (time_form)
            stamp_ns[k] = (int64_t)secs * 1000000000 + (int64_t)nsec;
    }
}

/* setuptools names the library like an extension module; it is loaded with ctypes, never imported. */
void *PyInit__core(void) { return NULL; }
