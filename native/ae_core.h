/* ae_core.h: the bottom of the engine: errors, time, threads, ids, levels.
 *
 * Module chain (each includes only the ones before it):
 *   ae_core -> ae_events (event queue, glib loop) -> ae_alsa (one PCM)
 *   -> ae_netsrc (a network source's receiver)
 *   -> ae_sdp (offers) -> ae_internal.h (graph, fan-out, transports, engine)
 * and beside it, the lean transport's protocols (ae_lean.c alone includes
 * them): ae_core -> ae_stun (ICE-lite), ae_rtcp (RTP/RTCP packets);
 * ae_stun, ae_sdp -> ae_dtls (DTLS-SRTP).
 */
#ifndef AE_CORE_H
#define AE_CORE_H

#include "ae_engine.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

/* ---- limits ---- */
/* The model's bounds (ae_limits.h, generated from appliance/model.py):
 * v within NAME_MIN..NAME_MAX; v one of NAME_CHOICES (compared as double). */
#define AE_IN_RANGE(v, name) ((v) >= name##_MIN && (v) <= name##_MAX)
#define AE_ONE_OF(v, name) ae_one_of((v), (const double[]){name##_CHOICES}, \
    (int)(sizeof((const double[]){name##_CHOICES}) / sizeof(double)))
static inline bool ae_one_of(double v, const double *choices, int n)
{
    for (int i = 0; i < n; i++)
        if (v == choices[i]) return true;
    return false;
}

/* ---- errors ---- */
int ae_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void ae_clear_error(void);
/* Set the calling thread's error text (to carry it across threads). */
void ae_set_error_text(const char *text);

/* ---- time ---- */
int64_t ae_now_us(void);                 /* CLOCK_MONOTONIC */
void ae_sleep_until_us(int64_t t_us);

/* ---- threads ---- */
int ae_thread_start(pthread_t *thread, const char *name, void *(*fn)(void *), void *arg,
                    int rt_priority);
/* Count a thread started by other means (GLib's); ae_thread_exiting() ends it. */
void ae_thread_counted(void);
void ae_thread_exiting(void);            /* call as a thread's last act */
/* A thread given up on while still running (stuck in a driver): no longer
 * live, counted apart so that it is seen. */
void ae_thread_abandoned(void);

/* ---- ids ---- */
/* A new event id: unique in the process, never reused. */
uint64_t ae_new_id(void);

/* ---- levels ---- */
typedef struct ae_levels {
    pthread_mutex_t lock;
    int channels;
    float peak[AE_MAX_CHANNELS];
    double sumsq[AE_MAX_CHANNELS];
    uint64_t frames;
    int64_t since_us;                   /* when the first of those frames was added */
} ae_levels;

void ae_levels_init(ae_levels *lv, int channels);
void ae_levels_add(ae_levels *lv, const float *interleaved, int frames);
/* Returns 0 when nothing was measured since the last take; since_us gets
 * the time the first measured frame was added. */
int ae_levels_take(ae_levels *lv, double *peak_db, double *rms_db, int64_t *since_us);

#endif
