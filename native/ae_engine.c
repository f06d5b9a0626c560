/* ae_engine.c: engine lifetime (create, destroy, stats) on top of every
 * other part: the event queue and glib loop (ae_events.c), the graph, the
 * fan-out and its transports. */
#define _GNU_SOURCE
#include "ae_internal.h"

#include <errno.h>
#include <malloc.h>
#include <math.h>
#include <sched.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- the public create calls for the graph's entities ------------------- */

int ae_source_create(ae_engine *e, const ae_source_config *cfg, ae_source **out)
{
    ae_clear_error();
    if (!e) return ae_fail(AE_ERR_INVALID, "engine, config and out are required");
    return ae_graph_source_create(&e->graph, cfg, out);
}

/* An Opus sink's output is its fan-out (encoder, transports). */
int ae_sink_create(ae_engine *e, const ae_sink_config *cfg, ae_sink **out)
{
    ae_clear_error();
    if (!e) return ae_fail(AE_ERR_INVALID, "engine, config and out are required");
    return ae_graph_sink_create(&e->graph, cfg, ae_fanout_attach, &e->fanout_env, out);
}

/* A variant's output is a fan-out of its own: one more encoder, not one per
 * listener. */
int ae_sink_create_variant(ae_sink *parent, const ae_variant_config *variant,
                           const ae_sink_config *cfg, ae_sink **out)
{
    ae_clear_error();
    if (!parent) return ae_fail(AE_ERR_INVALID, "parent, variant and out are required");
    ae_engine *e = (ae_engine *)((char *)parent->graph - offsetof(ae_engine, graph));
    return ae_graph_variant_create(parent, variant, cfg, ae_fanout_attach, &e->fanout_env, out);
}

/* ---- levels, sampled on the event thread ------------------------------ */

static void post_levels(ae_engine *e, ae_levels *lv, uint64_t source_id, uint64_t sink_id)
{
    ae_event ev = {0};
    ev.type = AE_EVENT_LEVELS;
    ev.source_id = source_id;
    ev.sink_id = sink_id;
    ev.channels = lv->channels;
    if (ae_levels_take(lv, ev.peak_dbfs, ev.rms_dbfs, &ev.since_us)) ae_post(&e->events, &ev);
}

/* The event thread's tick. */
static void sample_levels(void *ctx)
{
    ae_engine *e = ctx;
    pthread_mutex_lock(&e->graph.lock);
    for (ae_source *s = e->graph.sources; s; s = s->next) post_levels(e, &s->levels, s->id, 0);
    for (ae_sink *k = e->graph.sinks; k; k = k->next) post_levels(e, &k->levels, 0, k->id);
    pthread_mutex_unlock(&e->graph.lock);
}

/* ---- engine ------------------------------------------------------------ */

/* Only zero means "default": anything else is checked against the model's
 * bounds (check_config). */
static void apply_defaults(ae_engine_config *c)
{
    if (c->sample_rate == 0) c->sample_rate = 48000;
    if (c->level_interval_ms == 0) c->level_interval_ms = 50;
    if (c->gather_timeout_ms == 0) c->gather_timeout_ms = 2000;
    if (c->max_listeners == 0) c->max_listeners = 500;
    if (c->consent_timeout_ms == 0) c->consent_timeout_ms = 30000;
    /* A test and benchmark knob: run a whole suite on one transport
     * without touching its settings. Only when the setting says auto. */
    const char *forced = getenv("AE_TRANSPORT");
    if (c->transport == AE_TRANSPORT_AUTO && forced) {
        if (!strcmp(forced, "lean")) c->transport = AE_TRANSPORT_LEAN;
        else if (!strcmp(forced, "webrtcbin")) c->transport = AE_TRANSPORT_WEBRTCBIN;
    }
}

/* The model's bounds (ae_limits.h); the consent timeout is stated in seconds there. */
static int check_config(const ae_engine_config *c)
{
    if (!AE_ONE_OF(c->sample_rate, AE_ENGINE_SAMPLE_RATE))
        return ae_fail(AE_ERR_INVALID, "sample_rate %d is not one the engine mixes at (Opus: 48000)",
                       c->sample_rate);
    if (!AE_IN_RANGE(c->level_interval_ms, AE_ENGINE_LEVEL_INTERVAL_MS) ||
        !AE_IN_RANGE(c->gather_timeout_ms, AE_ENGINE_GATHER_TIMEOUT_MS) ||
        !AE_IN_RANGE(c->max_listeners, AE_ENGINE_MAX_LISTENERS) ||
        !AE_IN_RANGE(c->realtime_priority, AE_ENGINE_REALTIME_PRIORITY) ||
        !AE_IN_RANGE(c->consent_timeout_ms / 1000.0, AE_ENGINE_CONSENT_TIMEOUT_S))
        return ae_fail(AE_ERR_INVALID, "level interval %d ms, gather timeout %d ms, "
                       "max listeners %d, realtime priority %d or consent timeout %d ms "
                       "out of range", c->level_interval_ms, c->gather_timeout_ms,
                       c->max_listeners, c->realtime_priority, c->consent_timeout_ms);
    if (!AE_IN_RANGE(c->min_port, AE_ENGINE_MIN_PORT) ||
        !AE_IN_RANGE(c->max_port, AE_ENGINE_MAX_PORT) || (c->max_port && c->min_port > c->max_port))
        return ae_fail(AE_ERR_INVALID, "bad ICE port range %d-%d", c->min_port, c->max_port);
    if (c->transport < AE_TRANSPORT_AUTO || c->transport > AE_TRANSPORT_WEBRTCBIN)
        return ae_fail(AE_ERR_INVALID, "unknown transport %d", c->transport);
    if (!AE_IN_RANGE(c->lean_port, AE_ENGINE_LEAN_PORT))
        return ae_fail(AE_ERR_INVALID, "bad UDP port %d for listeners", c->lean_port);
    return AE_OK;
}

static void engine_free(ae_engine *e)
{
    free(e->stun_server);
    free(e->ice_addresses);
    ae_graph_destroy(&e->graph);
    pthread_mutex_destroy(&e->listeners_lock);
    ae_events_destroy(&e->events);
    free(e);
}

static int stop_threads(ae_engine *e);

static _Atomic int live_engines;   /* created and not destroyed, in this process */

int ae_engine_create(const ae_engine_config *config, ae_event_cb callback, void *user,
                     ae_engine **out)
{
    ae_clear_error();
    if (!callback || !out) return ae_fail(AE_ERR_INVALID, "callback and out are required");
    *out = NULL;
    ae_engine_config cfg = {0};
    if (config) cfg = *config;
    apply_defaults(&cfg);
    int rc = check_config(&cfg);
    if (rc != AE_OK) return rc;

    /* Every GStreamer thread would otherwise get a malloc arena of its own
     * (up to 8 per core), and memory freed in one is not reused by the
     * others: with hundreds of listener threads that is most of the RSS. */
    if (!getenv("MALLOC_ARENA_MAX")) mallopt(M_ARENA_MAX, 2);
    GError *err = NULL;
    if (!gst_init_check(NULL, NULL, &err)) {
        rc = ae_fail(AE_ERR_MEDIA, "GStreamer would not start: %s",
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
    if (cfg.stun_server && *cfg.stun_server) e->stun_server = strdup(cfg.stun_server);
    if (cfg.ice_addresses && *cfg.ice_addresses) e->ice_addresses = strdup(cfg.ice_addresses);
    e->cfg.stun_server = e->stun_server;
    e->cfg.ice_addresses = e->ice_addresses;
    ae_graph_init(&e->graph, cfg.sample_rate, cfg.realtime_priority, &e->events);
    pthread_mutex_init(&e->listeners_lock, NULL);
    ae_events_init(&e->events, callback, user, sample_levels, e, cfg.level_interval_ms);

    rc = ae_loop_start(&e->glib);
    if (rc != AE_OK) {
        engine_free(e);
        return rc;
    }
    rc = ae_events_start(&e->events);
    if (rc == AE_OK && cfg.transport != AE_TRANSPORT_WEBRTCBIN) rc = ae_lean_start(&e->events, &e->cfg, &e->lean);
    if (rc == AE_OK) {
        e->fanout_env = (ae_fanout_env){.glib = &e->glib, .rt_priority = cfg.realtime_priority,
                                        .owner = e, .push = e->lean ? ae_lean_push : NULL,
                                        .push_ctx = e->lean,
                                        .forget = e->lean ? ae_lean_forget : NULL};
        e->wr_env = (ae_wr_env){.glib = &e->glib, .events = &e->events, .cfg = &e->cfg};
        rc = ae_graph_start(&e->graph);
    }
    if (rc != AE_OK) {
        stop_threads(e);
        engine_free(e);
        return rc;
    }
    atomic_fetch_add(&live_engines, 1);
    *out = e;
    return AE_OK;
}

static int stop_threads(ae_engine *e)
{
    ae_graph_stop(&e->graph);
    ae_lean_stop(e->lean); /* after the mixer: it pushes packets to it */
    e->lean = NULL;
    e->fanout_env.push = NULL;
    e->fanout_env.forget = NULL;
    ae_events_stop(&e->events);
    ae_loop_stop(&e->glib);
    return AE_OK;
}

int ae_engine_destroy(ae_engine *e)
{
    ae_clear_error();
    if (!e) return ae_fail(AE_ERR_INVALID, "no engine");
    if (ae_events_on_thread(&e->events))
        return ae_fail(AE_ERR_INVALID, "ae_engine_destroy called from the event callback");
    /* Listeners first (they hang off sinks), then routes, sinks, sources. */
    ae_listener_destroy_all(e);
    for (;;) {
        pthread_mutex_lock(&e->graph.lock);
        ae_route *r = NULL;
        for (ae_sink *k = e->graph.sinks; k && !r; k = k->next) r = k->routes;
        pthread_mutex_unlock(&e->graph.lock);
        if (!r) break;
        ae_route_destroy(r);
    }
    for (;;) {   /* variants before their parents */
        pthread_mutex_lock(&e->graph.lock);
        ae_sink *k = e->graph.sinks;
        while (k && k->variants) k = k->next;
        pthread_mutex_unlock(&e->graph.lock);
        if (!k || ae_sink_destroy(k) != AE_OK) break;
    }
    while (e->graph.sources) {
        if (ae_source_destroy(e->graph.sources) != AE_OK) break;
    }
    stop_threads(e);
    engine_free(e);
    /* GStreamer and GLib keep idle pooled threads around for reuse; end
     * them so a closed engine leaves no thread behind. gst_task_cleanup_all
     * waits for every task in the process: only the last engine may (one
     * box publishing to another in one test process hung here). */
    if (atomic_fetch_sub(&live_engines, 1) == 1) {
        g_thread_pool_set_max_unused_threads(0);
        g_thread_pool_stop_unused_threads();
        gst_task_cleanup_all();
    }
    return AE_OK;
}

int ae_engine_stats_get(ae_engine *e, ae_engine_stats *out)
{
    ae_clear_error();
    if (!e || !out) return ae_fail(AE_ERR_INVALID, "engine and out are required");
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&e->graph.lock);
    out->sources = e->graph.nsources;
    out->sinks = e->graph.nsinks;
    out->routes = e->graph.nroutes;
    out->threads = 3 + (e->lean != NULL);
    for (ae_source *s = e->graph.sources; s; s = s->next) out->threads += s->dev.thread_started;
    for (ae_sink *k = e->graph.sinks; k; k = k->next) out->threads += k->dev.thread_started;
    pthread_mutex_unlock(&e->graph.lock);
    out->listeners = atomic_load(&e->nlisteners);
    ae_lean_stats(e->lean, out);
    ae_events_counts(&e->events, &out->events_posted, &out->events_coalesced);
    return AE_OK;
}
