/* ae_engine.c: engine lifetime, errors, the event queue and its thread, the
 * glib thread, and small shared utilities (time, threads, levels). */
#define _GNU_SOURCE
#include "ae_internal.h"

#include <errno.h>
#include <malloc.h>
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

int ae_live_threads(void) { return atomic_load(&live_threads); }

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

void ae_thread_exiting(void) { atomic_fetch_sub(&live_threads, 1); }

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

/* ---- event queue ------------------------------------------------------- */

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

uint64_t ae_new_id(void)
{
    static _Atomic uint64_t next = 1;
    return atomic_fetch_add(&next, 1);
}

void ae_post_unless(ae_engine *e, const ae_event *ev, const atomic_bool *muted)
{
    pthread_mutex_lock(&e->ev_lock);
    if (e->ev_stop || (muted && atomic_load(muted))) {
        pthread_mutex_unlock(&e->ev_lock);
        return;
    }
    if (ev->type == AE_EVENT_LEVELS) {
        /* Coalesce: a newer measurement replaces a pending one. */
        for (ae_event_node *n = e->ev_head; n; n = n->next) {
            if (n->ev.type == AE_EVENT_LEVELS && same_entity(&n->ev, ev)) {
                n->ev = *ev;
                n->ev.text = NULL;
                e->events_coalesced++;
                pthread_mutex_unlock(&e->ev_lock);
                return;
            }
        }
    }
    pthread_mutex_unlock(&e->ev_lock);

    ae_event_node *n = calloc(1, sizeof *n);
    if (!n) return;
    n->ev = *ev;
    if (ev->text) n->text = strdup(ev->text);
    n->ev.text = n->text;
    if (!n->ev.time_us) n->ev.time_us = ae_now_us();

    pthread_mutex_lock(&e->ev_lock);
    if (e->ev_stop || (muted && atomic_load(muted))) {
        pthread_mutex_unlock(&e->ev_lock);
        free(n->text);
        free(n);
        return;
    }
    if (e->ev_tail) e->ev_tail->next = n;
    else e->ev_head = n;
    e->ev_tail = n;
    e->events_posted++;
    pthread_cond_signal(&e->ev_cond);
    pthread_mutex_unlock(&e->ev_lock);
}

void ae_post(ae_engine *e, const ae_event *ev) { ae_post_unless(e, ev, NULL); }

static void free_nodes(ae_event_node *n)
{
    while (n) {
        ae_event_node *next = n->next;
        free(n->text);
        free(n);
        n = next;
    }
}

void ae_events_forget(ae_engine *e, uint64_t id)
{
    pthread_mutex_lock(&e->ev_lock);
    ae_event_node *keep_head = NULL, *keep_tail = NULL, *drop = NULL;
    for (ae_event_node *n = e->ev_head, *next; n; n = next) {
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
    e->ev_head = keep_head;
    e->ev_tail = keep_tail;
    /* An event for it may be in the callback right now: wait it out. The
     * event thread never waits for us, so this cannot deadlock. */
    if (!pthread_equal(pthread_self(), e->event_thread) || !e->event_started) {
        for (;;) {
            bool busy = false;
            for (int i = 0; i < 3; i++)
                if (e->ev_delivering[i] == id) busy = true;
            if (!busy) break;
            pthread_cond_wait(&e->ev_done, &e->ev_lock);
        }
    }
    pthread_mutex_unlock(&e->ev_lock);
    free_nodes(drop);
}

static void post_levels(ae_engine *e, ae_levels *lv, uint64_t source_id, uint64_t sink_id)
{
    ae_event ev = {0};
    ev.type = AE_EVENT_LEVELS;
    ev.source_id = source_id;
    ev.sink_id = sink_id;
    ev.channels = lv->channels;
    if (ae_levels_take(lv, ev.peak_dbfs, ev.rms_dbfs, &ev.since_us)) ae_post(e, &ev);
}

static void sample_levels(ae_engine *e)
{
    pthread_mutex_lock(&e->graph_lock);
    for (ae_source *s = e->sources; s; s = s->next) post_levels(e, &s->levels, s->id, 0);
    for (ae_sink *k = e->sinks; k; k = k->next) post_levels(e, &k->levels, 0, k->id);
    pthread_mutex_unlock(&e->graph_lock);
}

static void *event_main(void *arg)
{
    ae_engine *e = arg;
    int interval = e->cfg.level_interval_ms;
    int64_t next_levels = ae_now_us() + (int64_t)interval * 1000;
    pthread_mutex_lock(&e->ev_lock);
    while (!e->ev_stop) {
        if (!e->ev_head) {
            if (interval > 0) {
                int64_t wait_until = next_levels;
                struct timespec ts = {.tv_sec = wait_until / 1000000,
                                      .tv_nsec = (wait_until % 1000000) * 1000};
                pthread_cond_timedwait(&e->ev_cond, &e->ev_lock, &ts);
            } else {
                pthread_cond_wait(&e->ev_cond, &e->ev_lock);
            }
        }
        if (e->ev_stop) break;
        if (interval > 0 && ae_now_us() >= next_levels) {
            next_levels += (int64_t)interval * 1000;
            if (next_levels < ae_now_us()) next_levels = ae_now_us() + (int64_t)interval * 1000;
            pthread_mutex_unlock(&e->ev_lock);
            sample_levels(e);
            pthread_mutex_lock(&e->ev_lock);
            continue;
        }
        ae_event_node *n = e->ev_head;
        if (!n) continue;
        e->ev_head = n->next;
        if (!e->ev_head) e->ev_tail = NULL;
        e->ev_delivering[0] = n->ev.listener_id;
        e->ev_delivering[1] = n->ev.source_id;
        e->ev_delivering[2] = n->ev.sink_id;
        pthread_mutex_unlock(&e->ev_lock);

        e->callback(e->user, &n->ev);
        free(n->text);
        free(n);

        pthread_mutex_lock(&e->ev_lock);
        memset(e->ev_delivering, 0, sizeof e->ev_delivering);
        e->ev_delivered++;
        pthread_cond_broadcast(&e->ev_done);
    }
    pthread_mutex_unlock(&e->ev_lock);
    ae_thread_exiting();
    return NULL;
}

/* ---- glib thread ------------------------------------------------------- */

static gpointer glib_main(gpointer arg)
{
    ae_engine *e = arg;
    g_main_context_push_thread_default(e->ctx);
    g_main_loop_run(e->loop);
    g_main_context_pop_thread_default(e->ctx);
    ae_thread_exiting();
    return NULL;
}

typedef struct glib_call {
    int (*fn)(void *);
    void *data;
    int rc;
    char error[512];
    bool done;
    int refs;
    GMutex lock;
    GCond cond;
} glib_call;

static void glib_call_unref(glib_call *c)
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

static gboolean glib_call_run(gpointer p)
{
    glib_call *c = p;
    ae_clear_error();
    int rc = c->fn(c->data);
    /* The error detail belongs to the caller's thread: pass it along. */
    g_mutex_lock(&c->lock);
    snprintf(c->error, sizeof c->error, "%s", last_error);
    c->rc = rc;
    c->done = true;
    g_cond_signal(&c->cond);
    g_mutex_unlock(&c->lock);
    glib_call_unref(c);
    return G_SOURCE_REMOVE;
}

int ae_glib_call(ae_engine *e, int (*fn)(void *), void *data, int timeout_ms)
{
    if (g_main_context_is_owner(e->ctx)) return fn(data);
    glib_call *c = g_new0(glib_call, 1);
    c->fn = fn;
    c->data = data;
    c->refs = 2;
    g_mutex_init(&c->lock);
    g_cond_init(&c->cond);
    g_main_context_invoke(e->ctx, glib_call_run, c);
    gint64 deadline = g_get_monotonic_time() + (gint64)timeout_ms * 1000;
    g_mutex_lock(&c->lock);
    while (!c->done) {
        if (!g_cond_wait_until(&c->cond, &c->lock, deadline)) break;
    }
    bool done = c->done;
    int rc = c->rc;
    if (done) snprintf(last_error, sizeof last_error, "%s", c->error);
    g_mutex_unlock(&c->lock);
    glib_call_unref(c);
    if (!done) return ae_fail(AE_ERR_TIMEOUT, "the engine's media thread did not answer in %d ms",
                              timeout_ms);
    return rc;
}

void ae_wake_mixer(ae_engine *e) { sem_post(&e->mixer_wake); }

/* ---- engine ------------------------------------------------------------ */

static void apply_defaults(ae_engine_config *c)
{
    if (c->sample_rate <= 0) c->sample_rate = 48000;
    if (c->level_interval_ms == 0) c->level_interval_ms = 50;
    if (c->gather_timeout_ms <= 0) c->gather_timeout_ms = 2000;
    if (c->max_listeners <= 0) c->max_listeners = 500;
    if (c->consent_timeout_ms <= 0) c->consent_timeout_ms = 30000;
    /* A test and benchmark knob: run a whole suite on one transport
     * without touching its settings. Only when the setting says auto. */
    const char *forced = getenv("AE_TRANSPORT");
    if (c->transport == AE_TRANSPORT_AUTO && forced) {
        if (!strcmp(forced, "lean")) c->transport = AE_TRANSPORT_LEAN;
        else if (!strcmp(forced, "webrtcbin")) c->transport = AE_TRANSPORT_WEBRTCBIN;
    }
}

static void engine_free(ae_engine *e)
{
    if (e->ctx) g_main_context_unref(e->ctx);
    if (e->loop) g_main_loop_unref(e->loop);
    free(e->stun_server);
    free(e->ice_addresses);
    pthread_mutex_destroy(&e->graph_lock);
    pthread_mutex_destroy(&e->ev_lock);
    pthread_mutex_destroy(&e->listeners_lock);
    pthread_cond_destroy(&e->ev_cond);
    pthread_cond_destroy(&e->ev_done);
    sem_destroy(&e->mixer_wake);
    free(e);
}

static int stop_threads(ae_engine *e);

int ae_engine_create(const ae_engine_config *config, ae_event_cb callback, void *user,
                     ae_engine **out)
{
    ae_clear_error();
    if (!callback || !out) return ae_fail(AE_ERR_INVALID, "callback and out are required");
    *out = NULL;
    ae_engine_config cfg = {0};
    if (config) cfg = *config;
    apply_defaults(&cfg);
    if (cfg.sample_rate != 48000)
        return ae_fail(AE_ERR_INVALID, "sample_rate must be 48000 (Opus/WebRTC rate), not %d",
                       cfg.sample_rate);
    if (cfg.min_port < 0 || cfg.max_port < 0 || cfg.max_port > 65535 ||
        (cfg.max_port && cfg.min_port > cfg.max_port))
        return ae_fail(AE_ERR_INVALID, "bad ICE port range %d-%d", cfg.min_port, cfg.max_port);
    if (cfg.transport < AE_TRANSPORT_AUTO || cfg.transport > AE_TRANSPORT_WEBRTCBIN)
        return ae_fail(AE_ERR_INVALID, "unknown transport %d", cfg.transport);
    if (cfg.lean_port < 0 || cfg.lean_port > 65535)
        return ae_fail(AE_ERR_INVALID, "bad UDP port %d for listeners", cfg.lean_port);

    /* Every GStreamer thread would otherwise get a malloc arena of its own
     * (up to 8 per core), and memory freed in one is not reused by the
     * others: with hundreds of listener threads that is most of the RSS. */
    if (!getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 2);
    GError *err = NULL;
    if (!gst_init_check(NULL, NULL, &err)) {
        int rc = ae_fail(AE_ERR_MEDIA, "GStreamer would not start: %s",
                         err ? err->message : "?");
        g_clear_error(&err);
        return rc;
    }
    const char *needed[] = {"webrtcbin", "rtpopuspay", "appsrc", "tee", "nicesink"};
    for (size_t i = 0; i < sizeof needed / sizeof *needed; i++) {
        GstElementFactory *f = gst_element_factory_find(needed[i]);
        if (!f) return ae_fail(AE_ERR_MEDIA, "GStreamer element '%s' is missing", needed[i]);
        gst_object_unref(f);
    }

    ae_engine *e = calloc(1, sizeof *e);
    if (!e) return ae_fail(AE_ERR_NOMEM, "out of memory");
    e->cfg = cfg;
    e->callback = callback;
    e->user = user;
    if (cfg.stun_server && *cfg.stun_server) e->stun_server = strdup(cfg.stun_server);
    if (cfg.ice_addresses && *cfg.ice_addresses) e->ice_addresses = strdup(cfg.ice_addresses);
    e->cfg.stun_server = e->stun_server;
    e->cfg.ice_addresses = e->ice_addresses;
    pthread_mutex_init(&e->graph_lock, NULL);
    pthread_mutex_init(&e->ev_lock, NULL);
    pthread_mutex_init(&e->listeners_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&e->ev_cond, &ca);
    pthread_cond_init(&e->ev_done, &ca);
    pthread_condattr_destroy(&ca);
    sem_init(&e->mixer_wake, 0, 0);

    e->ctx = g_main_context_new();
    e->loop = g_main_loop_new(e->ctx, FALSE);
    atomic_fetch_add(&live_threads, 1);
    e->glib_thread = g_thread_try_new("ae-glib", glib_main, e, &err);
    if (!e->glib_thread) {
        atomic_fetch_sub(&live_threads, 1);
        g_clear_error(&err);
        engine_free(e);
        return ae_fail(AE_ERR_NOMEM, "cannot start the media thread");
    }
    int rc = ae_thread_start(&e->event_thread, "ae-events", event_main, e, 0);
    if (rc == AE_OK) e->event_started = true;
    if (rc == AE_OK && cfg.transport != AE_TRANSPORT_WEBRTCBIN) rc = ae_lean_start(e, &e->lean);
    if (rc == AE_OK) {
        rc = ae_thread_start(&e->mixer_thread, "ae-mixer", ae_mixer_main, e, cfg.realtime_priority);
        if (rc == AE_OK) e->mixer_started = true;
    }
    if (rc != AE_OK) {
        stop_threads(e);
        engine_free(e);
        return rc;
    }
    *out = e;
    return AE_OK;
}

/* Runs on the glib thread: quits the loop it runs in. */
static gboolean quit_loop(gpointer data)
{
    g_main_loop_quit(data);
    return G_SOURCE_REMOVE;
}

static int stop_threads(ae_engine *e)
{
    atomic_store(&e->stopping, true);
    if (e->mixer_started) {
        ae_wake_mixer(e);
        pthread_join(e->mixer_thread, NULL);
        e->mixer_started = false;
    }
    ae_lean_stop(e->lean); /* after the mixer: it pushes packets to it */
    e->lean = NULL;
    pthread_mutex_lock(&e->ev_lock);
    e->ev_stop = true;
    pthread_cond_broadcast(&e->ev_cond);
    pthread_mutex_unlock(&e->ev_lock);
    if (e->event_started) {
        pthread_join(e->event_thread, NULL);
        e->event_started = false;
    }
    pthread_mutex_lock(&e->ev_lock);
    free_nodes(e->ev_head);
    e->ev_head = e->ev_tail = NULL;
    pthread_mutex_unlock(&e->ev_lock);
    if (e->glib_thread) {
        /* Not g_main_loop_quit() from here: a quit that lands before the
         * glib thread has entered g_main_loop_run() is forgotten (run sets
         * the loop running again) and the join waits forever. A source on
         * the loop's own context quits it whenever it runs. */
        GSource *quit = g_idle_source_new();
        g_source_set_priority(quit, G_PRIORITY_HIGH);
        g_source_set_callback(quit, quit_loop, e->loop, NULL);
        g_source_attach(quit, e->ctx);
        g_source_unref(quit);
        g_thread_join(e->glib_thread);
        e->glib_thread = NULL;
    }
    return AE_OK;
}

int ae_engine_destroy(ae_engine *e)
{
    ae_clear_error();
    if (!e) return ae_fail(AE_ERR_INVALID, "no engine");
    if (e->event_started && pthread_equal(pthread_self(), e->event_thread))
        return ae_fail(AE_ERR_INVALID, "ae_engine_destroy called from the event callback");
    /* Listeners first (they hang off sinks), then routes, sinks, sources. */
    ae_listener_destroy_all(e);
    for (;;) {
        pthread_mutex_lock(&e->graph_lock);
        ae_route *r = NULL;
        for (ae_sink *k = e->sinks; k && !r; k = k->next) r = k->routes;
        pthread_mutex_unlock(&e->graph_lock);
        if (!r) break;
        ae_route_destroy(r);
    }
    while (e->sinks) {
        if (ae_sink_destroy(e->sinks) != AE_OK) break;
    }
    while (e->sources) {
        if (ae_source_destroy(e->sources) != AE_OK) break;
    }
    stop_threads(e);
    engine_free(e);
    /* GStreamer and GLib keep idle pooled threads around for reuse; end
     * them so a closed engine leaves no thread behind. */
    g_thread_pool_set_max_unused_threads(0);
    g_thread_pool_stop_unused_threads();
    gst_task_cleanup_all();
    return AE_OK;
}

int ae_engine_stats_get(ae_engine *e, ae_engine_stats *out)
{
    ae_clear_error();
    if (!e || !out) return ae_fail(AE_ERR_INVALID, "engine and out are required");
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&e->graph_lock);
    out->sources = e->nsources;
    out->sinks = e->nsinks;
    out->routes = e->nroutes;
    out->threads = 3 + (e->lean != NULL);
    for (ae_source *s = e->sources; s; s = s->next) out->threads += s->dev.thread_started;
    for (ae_sink *k = e->sinks; k; k = k->next) out->threads += k->dev.thread_started;
    pthread_mutex_unlock(&e->graph_lock);
    out->listeners = atomic_load(&e->nlisteners);
    ae_lean_stats(e->lean, out);
    pthread_mutex_lock(&e->ev_lock);
    out->events_posted = e->events_posted;
    out->events_coalesced = e->events_coalesced;
    pthread_mutex_unlock(&e->ev_lock);
    return AE_OK;
}
