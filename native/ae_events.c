/* ae_events.c: the event queue and the thread that hands events to the
 * user's callback (and ticks, for levels); the glib loop thread. */
#define _GNU_SOURCE
#include "ae_events.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- event queue --------------------------------------------------------- */

struct ae_event_node {
    ae_event ev;
    char *text;
    ae_event_node *next;
};

static bool names(const ae_event *ev, uint64_t id)
{
    return id && (ev->listener_id == id || ev->source_id == id || ev->sink_id == id);
}

static bool same_entity(const ae_event *a, const ae_event *b)
{
    return a->listener_id == b->listener_id && a->source_id == b->source_id &&
           a->sink_id == b->sink_id;
}

void ae_events_init(ae_events *q, ae_event_cb callback, void *user, ae_tick_fn tick,
                    void *tick_ctx, int tick_ms)
{
    memset(q, 0, sizeof *q);
    q->callback = callback;
    q->user = user;
    q->tick = tick;
    q->tick_ctx = tick_ctx;
    q->tick_ms = tick_ms;
    pthread_mutex_init(&q->lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&q->cond, &ca);
    pthread_cond_init(&q->done, &ca);
    pthread_condattr_destroy(&ca);
}

void ae_post_unless(ae_events *q, const ae_event *ev, const atomic_bool *muted)
{
    pthread_mutex_lock(&q->lock);
    if (q->stop || (muted && atomic_load(muted))) {
        pthread_mutex_unlock(&q->lock);
        return;
    }
    if (ev->type == AE_EVENT_LEVELS) {
        /* Coalesce: a newer measurement replaces a pending one. */
        for (ae_event_node *n = q->head; n; n = n->next) {
            if (n->ev.type == AE_EVENT_LEVELS && same_entity(&n->ev, ev)) {
                n->ev = *ev;
                n->ev.text = NULL;
                q->coalesced++;
                pthread_mutex_unlock(&q->lock);
                return;
            }
        }
    }
    pthread_mutex_unlock(&q->lock);

    ae_event_node *n = calloc(1, sizeof *n);
    if (!n) return;
    n->ev = *ev;
    if (ev->text) n->text = strdup(ev->text);
    n->ev.text = n->text;
    if (!n->ev.time_us) n->ev.time_us = ae_now_us();

    pthread_mutex_lock(&q->lock);
    if (q->stop || (muted && atomic_load(muted))) {
        pthread_mutex_unlock(&q->lock);
        free(n->text);
        free(n);
        return;
    }
    if (q->tail) q->tail->next = n;
    else q->head = n;
    q->tail = n;
    q->posted++;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
}

void ae_post(ae_events *q, const ae_event *ev) { ae_post_unless(q, ev, NULL); }

static void free_nodes(ae_event_node *n)
{
    while (n) {
        ae_event_node *next = n->next;
        free(n->text);
        free(n);
        n = next;
    }
}

bool ae_events_on_thread(const ae_events *q)
{
    return q->started && pthread_equal(pthread_self(), q->thread);
}

static void forget(ae_events *q, uint64_t id, bool wait);

void ae_events_forget(ae_events *q, uint64_t id) { forget(q, id, true); }

void ae_events_forget_queued(ae_events *q, uint64_t id) { forget(q, id, false); }

static void forget(ae_events *q, uint64_t id, bool wait)
{
    pthread_mutex_lock(&q->lock);
    ae_event_node *keep_head = NULL, *keep_tail = NULL, *drop = NULL;
    for (ae_event_node *n = q->head, *next; n; n = next) {
        next = n->next;
        n->next = NULL;
        if (names(&n->ev, id)) {
            n->next = drop;
            drop = n;
        } else {
            if (keep_tail) keep_tail->next = n;
            else keep_head = n;
            keep_tail = n;
        }
    }
    q->head = keep_head;
    q->tail = keep_tail;
    /* An event for it may be in the callback right now: wait it out. The
     * event thread never waits for us, so this cannot deadlock. */
    if (wait && !ae_events_on_thread(q)) {
        for (;;) {
            bool busy = false;
            for (int i = 0; i < 3; i++)
                if (q->delivering[i] == id) busy = true;
            if (!busy) break;
            pthread_cond_wait(&q->done, &q->lock);
        }
    }
    pthread_mutex_unlock(&q->lock);
    free_nodes(drop);
}

void ae_events_counts(ae_events *q, int64_t *posted, int64_t *coalesced)
{
    pthread_mutex_lock(&q->lock);
    *posted = q->posted;
    *coalesced = q->coalesced;
    pthread_mutex_unlock(&q->lock);
}

static void *event_main(void *arg)
{
    ae_events *q = arg;
    int interval = q->tick ? q->tick_ms : 0;
    int64_t next_tick = ae_now_us() + (int64_t)interval * 1000;
    pthread_mutex_lock(&q->lock);
    while (!q->stop) {
        if (!q->head) {
            if (interval > 0) {
                struct timespec ts = {.tv_sec = next_tick / 1000000,
                                      .tv_nsec = (next_tick % 1000000) * 1000};
                pthread_cond_timedwait(&q->cond, &q->lock, &ts);
            } else {
                pthread_cond_wait(&q->cond, &q->lock);
            }
        }
        if (q->stop) break;
        if (interval > 0 && ae_now_us() >= next_tick) {
            next_tick += (int64_t)interval * 1000;
            if (next_tick < ae_now_us()) next_tick = ae_now_us() + (int64_t)interval * 1000;
            pthread_mutex_unlock(&q->lock);
            q->tick(q->tick_ctx);
            pthread_mutex_lock(&q->lock);
            continue;
        }
        ae_event_node *n = q->head;
        if (!n) continue;
        q->head = n->next;
        if (!q->head) q->tail = NULL;
        q->delivering[0] = n->ev.listener_id;
        q->delivering[1] = n->ev.source_id;
        q->delivering[2] = n->ev.sink_id;
        pthread_mutex_unlock(&q->lock);

        q->callback(q->user, &n->ev);
        free(n->text);
        free(n);

        pthread_mutex_lock(&q->lock);
        memset(q->delivering, 0, sizeof q->delivering);
        q->delivered++;
        pthread_cond_broadcast(&q->done);
    }
    pthread_mutex_unlock(&q->lock);
    ae_thread_exiting();
    return NULL;
}

int ae_events_start(ae_events *q)
{
    int rc = ae_thread_start(&q->thread, "ae-events", event_main, q, 0);
    q->started = rc == AE_OK;
    return rc;
}

void ae_events_stop(ae_events *q)
{
    pthread_mutex_lock(&q->lock);
    q->stop = true;
    pthread_cond_broadcast(&q->cond);
    pthread_mutex_unlock(&q->lock);
    if (q->started) {
        pthread_join(q->thread, NULL);
        q->started = false;
    }
    pthread_mutex_lock(&q->lock);
    free_nodes(q->head);
    q->head = q->tail = NULL;
    pthread_mutex_unlock(&q->lock);
}

void ae_events_destroy(ae_events *q)
{
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->cond);
    pthread_cond_destroy(&q->done);
}

/* ---- glib loop ------------------------------------------------------------ */

static gpointer loop_main(gpointer arg)
{
    ae_loop *l = arg;
    g_main_context_push_thread_default(l->ctx);
    g_main_loop_run(l->loop);
    g_main_context_pop_thread_default(l->ctx);
    ae_thread_exiting();
    return NULL;
}

int ae_loop_start(ae_loop *l)
{
    l->ctx = g_main_context_new();
    l->loop = g_main_loop_new(l->ctx, FALSE);
    GError *err = NULL;
    ae_thread_counted();
    l->thread = g_thread_try_new("ae-glib", loop_main, l, &err);
    if (!l->thread) {
        ae_thread_exiting();
        g_clear_error(&err);
        return ae_fail(AE_ERR_NOMEM, "cannot start the media thread");
    }
    return AE_OK;
}

/* Runs on the loop's thread: quits the loop it runs in. */
static gboolean quit_loop(gpointer data)
{
    g_main_loop_quit(data);
    return G_SOURCE_REMOVE;
}

void ae_loop_stop(ae_loop *l)
{
    if (l->thread) {
        /* Not g_main_loop_quit() from here: a quit that lands before the
         * glib thread has entered g_main_loop_run() is forgotten (run sets
         * the loop running again) and the join waits forever. A source on
         * the loop's own context quits it whenever it runs. */
        GSource *quit = g_idle_source_new();
        g_source_set_priority(quit, G_PRIORITY_HIGH);
        g_source_set_callback(quit, quit_loop, l->loop, NULL);
        g_source_attach(quit, l->ctx);
        g_source_unref(quit);
        g_thread_join(l->thread);
        l->thread = NULL;
    }
    if (l->ctx) g_main_context_unref(l->ctx);
    if (l->loop) g_main_loop_unref(l->loop);
    l->ctx = NULL;
    l->loop = NULL;
}

typedef struct loop_call {
    int (*fn)(void *);
    void *data;
    int rc;
    char error[512];
    bool done;
    int refs;
    GMutex lock;
    GCond cond;
} loop_call;

static void loop_call_unref(loop_call *c)
{
    g_mutex_lock(&c->lock);
    bool last = --c->refs == 0;
    g_mutex_unlock(&c->lock);
    if (last) {
        g_mutex_clear(&c->lock);
        g_cond_clear(&c->cond);
        g_free(c);
    }
}

static gboolean loop_call_run(gpointer p)
{
    loop_call *c = p;
    ae_clear_error();
    int rc = c->fn(c->data);
    /* The error detail belongs to the caller's thread: pass it along. */
    g_mutex_lock(&c->lock);
    snprintf(c->error, sizeof c->error, "%s", ae_last_error());
    c->rc = rc;
    c->done = true;
    g_cond_signal(&c->cond);
    g_mutex_unlock(&c->lock);
    loop_call_unref(c);
    return G_SOURCE_REMOVE;
}

int ae_loop_call(ae_loop *l, int (*fn)(void *), void *data, int timeout_ms)
{
    if (g_main_context_is_owner(l->ctx)) return fn(data);
    loop_call *c = g_new0(loop_call, 1);
    c->fn = fn;
    c->data = data;
    c->refs = 2;
    g_mutex_init(&c->lock);
    g_cond_init(&c->cond);
    g_main_context_invoke(l->ctx, loop_call_run, c);
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_mutex_lock(&c->lock);
    while (!c->done) {
        if (!g_cond_wait_until(&c->cond, &c->lock, deadline)) break;
    }
    bool done = c->done;
    int rc = c->rc;
    if (done) ae_set_error_text(c->error);
    g_mutex_unlock(&c->lock);
    loop_call_unref(c);
    if (!done) return ae_fail(AE_ERR_TIMEOUT, "the engine's media thread did not answer in %d ms",
                              timeout_ms);
    return rc;
}
