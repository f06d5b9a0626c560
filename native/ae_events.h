/* ae_events.h: the event queue and its thread, and the glib loop thread.
 * Knows nothing of sources, sinks or listeners: events name them by id. */
#ifndef AE_EVENTS_H
#define AE_EVENTS_H

#include "ae_core.h"

#include <glib.h>

typedef struct ae_event_node ae_event_node;

/* Called on the event thread every tick_ms (levels are sampled this way). */
typedef void (*ae_tick_fn)(void *ctx);

typedef struct ae_events {
    ae_event_cb callback;
    void *user;
    ae_tick_fn tick;
    void *tick_ctx;
    int tick_ms;                        /* <= 0: no tick */
    pthread_t thread;
    bool started;
    pthread_mutex_t lock;
    pthread_cond_t cond;                /* new event, or stop */
    pthread_cond_t done;                /* a delivery finished */
    ae_event_node *head, *tail;
    uint64_t delivering[3];             /* ids named by the event being delivered */
    uint64_t delivered;
    bool stop;
    int64_t posted, coalesced;
} ae_events;

void ae_events_init(ae_events *q, ae_event_cb callback, void *user, ae_tick_fn tick,
                    void *tick_ctx, int tick_ms);
int ae_events_start(ae_events *q);
/* Stop the thread (no callback runs after this) and drop what is queued. */
void ae_events_stop(ae_events *q);
void ae_events_destroy(ae_events *q);
bool ae_events_on_thread(const ae_events *q);
void ae_events_counts(ae_events *q, int64_t *posted, int64_t *coalesced);

/* Post an event; text is copied. Never blocks for long: safe on audio
 * threads. With `muted` given, the event is dropped when *muted is set: it
 * is read under the queue's lock, so an event posted by a thread racing
 * ae_events_forget() is either removed by it or never queued. */
void ae_post(ae_events *q, const ae_event *ev);
void ae_post_unless(ae_events *q, const ae_event *ev, const atomic_bool *muted);
/* Remove the queued events naming `id` and wait until an event being
 * delivered for it has returned. Whoever may still post for it must have
 * stopped, or post through ae_post_unless() with a flag set before this. */
void ae_events_forget(ae_events *q, uint64_t id);
/* The same without waiting out a delivery in progress, for a caller that
 * must not block (the callback may be waiting for that caller's thread). */
void ae_events_forget_queued(ae_events *q, uint64_t id);

/* The engine's own GMainContext, run by one thread ("ae-glib"): every
 * GStreamer/webrtcbin control call happens there. */
typedef struct ae_loop {
    GMainContext *ctx;
    GMainLoop *loop;
    GThread *thread;
} ae_loop;

int ae_loop_start(ae_loop *l);
void ae_loop_stop(ae_loop *l);
/* Run fn(data) on the loop's thread and wait (bounded) for it; the error
 * text set there is carried back to the caller's thread. */
int ae_loop_call(ae_loop *l, int (*fn)(void *), void *data, int timeout_ms);

#endif
