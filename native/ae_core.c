/* ae_core.c: errors, time, threads, ids and levels: what every other part
 * of the engine uses, and which uses none of them. */
#define _GNU_SOURCE
#include "ae_core.h"

#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- errors ------------------------------------------------------------ */

static __thread char last_error[512];

int ae_fail(int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_error, sizeof last_error, fmt, ap);
    va_end(ap);
    return code;
}

void ae_clear_error(void) { last_error[0] = '\0'; }

void ae_set_error_text(const char *text)
{
    snprintf(last_error, sizeof last_error, "%s", text);
}

const char *ae_last_error(void) { return last_error; }

const char *ae_strerror(int code)
{
    switch (code) {
    case AE_OK: return "ok";
    case AE_ERR_INVALID: return "invalid argument";
    case AE_ERR_NOMEM: return "out of memory";
    case AE_ERR_DEVICE: return "audio device error";
    case AE_ERR_SDP: return "unusable SDP offer";
    case AE_ERR_BUSY: return "still in use";
    case AE_ERR_LIMIT: return "limit reached";
    case AE_ERR_TIMEOUT: return "engine did not answer in time";
    case AE_ERR_CODEC: return "codec error";
    case AE_ERR_MEDIA: return "media framework error";
    case AE_ERR_FILE: return "file error";
    case AE_ERR_CLOSED: return "engine is closing";
    default: return "unknown error";
    }
}

/* ---- time and threads -------------------------------------------------- */

int64_t ae_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void ae_sleep_until_us(int64_t t_us)
{
    struct timespec ts = {.tv_sec = t_us / 1000000, .tv_nsec = (t_us % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
}

static _Atomic int live_threads;
static _Atomic int abandoned_threads;

int ae_live_threads(void) { return atomic_load(&live_threads); }

int ae_abandoned_threads(void) { return atomic_load(&abandoned_threads); }

int ae_thread_start(pthread_t *thread, const char *name, void *(*fn)(void *), void *arg,
                    int rt_priority)
{
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    /* Audio threads need little stack; keep the footprint small. */
    pthread_attr_setstacksize(&attr, 256 * 1024);
    atomic_fetch_add(&live_threads, 1);
    int rc = pthread_create(thread, &attr, fn, arg);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        atomic_fetch_sub(&live_threads, 1);
        return ae_fail(AE_ERR_NOMEM, "cannot start a thread: %s", strerror(rc));
    }
    pthread_setname_np(*thread, name);
    if (rt_priority > 0) {
        struct sched_param sp = {.sched_priority = rt_priority};
        /* Without the privilege this fails; the thread then runs at normal
         * priority, which is fine on an idle machine. */
        pthread_setschedparam(*thread, SCHED_FIFO, &sp);
    }
    return AE_OK;
}

void ae_thread_counted(void) { atomic_fetch_add(&live_threads, 1); }

void ae_thread_exiting(void) { atomic_fetch_sub(&live_threads, 1); }

void ae_thread_abandoned(void)
{
    atomic_fetch_sub(&live_threads, 1);
    atomic_fetch_add(&abandoned_threads, 1);
}

/* ---- levels ------------------------------------------------------------ */

void ae_levels_init(ae_levels *lv, int channels)
{
    memset(lv, 0, sizeof *lv);
    pthread_mutex_init(&lv->lock, NULL);
    lv->channels = channels > AE_MAX_CHANNELS ? AE_MAX_CHANNELS : channels;
}

void ae_levels_add(ae_levels *lv, const float *x, int frames)
{
    float peak[AE_MAX_CHANNELS] = {0};
    double sumsq[AE_MAX_CHANNELS] = {0};
    int ch = lv->channels;
    for (int i = 0; i < frames; i++) {
        for (int c = 0; c < ch; c++) {
            float v = x[i * ch + c];
            float a = fabsf(v);
            if (a > peak[c]) peak[c] = a;
            sumsq[c] += (double)v * v;
        }
    }
    pthread_mutex_lock(&lv->lock);
    if (lv->frames == 0) lv->since_us = ae_now_us();
    for (int c = 0; c < ch; c++) {
        if (peak[c] > lv->peak[c]) lv->peak[c] = peak[c];
        lv->sumsq[c] += sumsq[c];
    }
    lv->frames += (uint64_t)frames;
    pthread_mutex_unlock(&lv->lock);
}

static double to_db(double amplitude)
{
    return amplitude > 1e-10 ? 20.0 * log10(amplitude) : -200.0;
}

int ae_levels_take(ae_levels *lv, double *peak_db, double *rms_db, int64_t *since_us)
{
    pthread_mutex_lock(&lv->lock);
    uint64_t n = lv->frames;
    *since_us = lv->since_us;
    for (int c = 0; c < lv->channels; c++) {
        peak_db[c] = to_db(lv->peak[c]);
        rms_db[c] = n ? to_db(sqrt(lv->sumsq[c] / (double)n)) : -200.0;
        lv->peak[c] = 0;
        lv->sumsq[c] = 0;
    }
    lv->frames = 0;
    pthread_mutex_unlock(&lv->lock);
    return n > 0;
}

/* ---- ids ---------------------------------------------------------------- */

uint64_t ae_new_id(void)
{
    static _Atomic uint64_t next = 1;
    return atomic_fetch_add(&next, 1);
}
