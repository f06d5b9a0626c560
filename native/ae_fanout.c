/* ae_fanout.c: an Opus sink's fan-out. The mixer hands it each mixed frame;
 * it encodes Opus once and passes the packet to the lean transport's ring
 * (when that has listeners on this sink) and to the appsrc -> tee pipeline
 * that webrtcbin listeners hang off (when those exist). */
#define _GNU_SOURCE
#include "ae_fanout.h"

#include <gst/app/gstappsrc.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GLIB_CALL_TIMEOUT_MS 5000

/* ---- the pipeline for webrtcbin listeners ------------------------------------------------ */

static gboolean on_bus(GstBus *bus, GstMessage *msg, gpointer data)
{
    (void)bus;
    ae_fanout *k = data;
    if (GST_MESSAGE_TYPE(msg) == GST_MESSAGE_ERROR) {
        GError *err = NULL;
        gst_message_parse_error(msg, &err, NULL);
        g_printerr("ae: pipeline of sink %" G_GUINT64_FORMAT ": %s: %s\n", k->sink_id,
                   GST_OBJECT_NAME(GST_MESSAGE_SRC(msg)), err ? err->message : "?");
        g_clear_error(&err);
    }
    return G_SOURCE_CONTINUE;
}

/* The fan-out thread (appsrc's) is on the audio path: give it the audio
 * threads' real-time priority. Stream-status ENTER is posted from the new
 * thread itself, so the sync handler runs in it. */
static GstBusSyncReply on_bus_sync(GstBus *bus, GstMessage *msg, gpointer data)
{
    (void)bus;
    ae_fanout *k = data;
    if (GST_MESSAGE_TYPE(msg) != GST_MESSAGE_STREAM_STATUS) return GST_BUS_PASS;
    GstStreamStatusType type;
    GstElement *owner = NULL;
    gst_message_parse_stream_status(msg, &type, &owner);
    int prio = k->env->rt_priority;
    if (type == GST_STREAM_STATUS_TYPE_ENTER && owner == k->appsrc && prio > 0) {
        struct sched_param sp = {.sched_priority = prio};
        pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp);
    }
    /* Dropping means owning: a stream-status message left alive keeps its
     * element and task alive (every listener's nicesrc, its ICE agent and
     * sockets: 4 file descriptors a listener, measured). */
    gst_message_unref(msg);
    return GST_BUS_DROP;
}

static int pipeline_start(void *data)
{
    ae_fanout *k = data;
    k->pipeline = gst_pipeline_new(NULL);
    k->appsrc = gst_element_factory_make("appsrc", NULL);
    k->tee = gst_element_factory_make("tee", NULL);
    if (!k->pipeline || !k->appsrc || !k->tee) {
        if (k->appsrc) gst_object_unref(k->appsrc);
        if (k->tee) gst_object_unref(k->tee);
        return ae_fail(AE_ERR_MEDIA, "cannot create the sink's appsrc and tee");
    }
    GstCaps *caps = gst_caps_new_simple("audio/x-opus", "rate", G_TYPE_INT, k->sink->graph->rate,
                                        "channels", G_TYPE_INT, k->channels,
                                        "channel-mapping-family", G_TYPE_INT, 0, NULL);
    /* Live, timestamped by us, and never blocking the mixer: when the
     * fan-out falls behind, the oldest packets go. */
    g_object_set(k->appsrc, "caps", caps, "is-live", TRUE, "format", GST_FORMAT_TIME,
                 "do-timestamp", FALSE, "block", FALSE, "max-buffers", (guint64)50,
                 "leaky-type", 2 /* downstream */, NULL);
    gst_caps_unref(caps);
    g_object_set(k->tee, "allow-not-linked", TRUE, NULL);
    gst_bin_add_many(GST_BIN(k->pipeline), k->appsrc, k->tee, NULL);
    if (!gst_element_link(k->appsrc, k->tee))
        return ae_fail(AE_ERR_MEDIA, "cannot link appsrc to tee");
    GstBus *bus = gst_pipeline_get_bus(GST_PIPELINE(k->pipeline));
    gst_bus_set_sync_handler(bus, on_bus_sync, k, NULL);
    GSource *src = gst_bus_create_watch(bus);
    g_source_set_callback(src, (GSourceFunc)(void (*)(void))on_bus, k, NULL);
    k->bus_watch = g_source_attach(src, k->env->glib->ctx);
    g_source_unref(src);
    gst_object_unref(bus);
    if (gst_element_set_state(k->pipeline, GST_STATE_PLAYING) == GST_STATE_CHANGE_FAILURE)
        return ae_fail(AE_ERR_MEDIA, "the sink's pipeline would not start");
    return AE_OK;
}



static int pipeline_stop(void *data)
{
    ae_fanout *k = data;
    if (k->bus_watch) {
        GSource *src = g_main_context_find_source_by_id(k->env->glib->ctx, k->bus_watch);
        if (src) g_source_destroy(src);
        k->bus_watch = 0;
    }
    if (k->pipeline) {
        gst_element_set_state(k->pipeline, GST_STATE_NULL);
        gst_object_unref(k->pipeline);
        k->pipeline = NULL;
    }
    return AE_OK;
}



static void push(ae_fanout *k, const unsigned char *data, int len, uint64_t index,
                 int64_t capture_us)
{
    k->frame_capture_us[index % AE_FRAME_RING] = capture_us;
    k->frame_index_at[index % AE_FRAME_RING] = index;
    int lean = atomic_load(&k->lean_listeners);
    if (lean > 0 && k->env->push) k->env->push(k->env->push_ctx, k, data, len, index, capture_us);
    if (atomic_load(&k->listeners) - lean + atomic_load(&k->publications) <= 0)
        return; /* nobody on webrtcbin */
    GstBuffer *buf = gst_buffer_new_memdup(data, (gsize)len);
    GstClockTime dur = (GstClockTime)k->frame_us * GST_USECOND;
    /* Perfect timestamps, frame after frame: the payloader derives RTP
     * timestamps from them, and receivers need those to step by exactly one
     * frame. Anchored to running time once; nothing downstream syncs to the
     * clock, so slow drift against it does no harm. */
    if (!k->pts_started) {
        GstClock *clock = gst_element_get_clock(k->pipeline);
        GstClockTime now = 0;
        if (clock) {
            GstClockTime t = gst_clock_get_time(clock), base = gst_element_get_base_time(k->pipeline);
            now = t > base ? t - base : 0;
            gst_object_unref(clock);
        }
        k->base_pts = (GstClockTimeDiff)now - (GstClockTimeDiff)(index * dur);
        k->pts_started = true;
    }
    GstClockTimeDiff pts = k->base_pts + (GstClockTimeDiff)(index * dur);
    GST_BUFFER_PTS(buf) = pts > 0 ? (GstClockTime)pts : 0;
    GST_BUFFER_DURATION(buf) = dur;
    GST_BUFFER_OFFSET(buf) = index * (uint64_t)k->frame_samples;
    GST_BUFFER_OFFSET_END(buf) = (index + 1) * (uint64_t)k->frame_samples;
    gst_app_src_push_buffer(GST_APP_SRC(k->appsrc), buf);
}

/* ---- branches on the tee ------------------------------------------------- */

typedef struct unlink_wait {
    GMutex lock;
    GCond cond;
    bool done;
    GstPad *peer;
} unlink_wait;

static GstPadProbeReturn unlink_when_idle(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    (void)info;
    unlink_wait *w = data;
    if (w->peer) gst_pad_unlink(pad, w->peer);
    g_mutex_lock(&w->lock);
    w->done = true;
    g_cond_signal(&w->cond);
    g_mutex_unlock(&w->lock);
    return GST_PAD_PROBE_REMOVE;
}

void ae_fanout_release_branch(ae_fanout *f, GstPad *tee_pad, gulong gate_probe)
{
    unlink_wait w = {0};
    g_mutex_init(&w.lock);
    g_cond_init(&w.cond);
    w.peer = gst_pad_get_peer(tee_pad);
    gst_pad_add_probe(tee_pad, GST_PAD_PROBE_TYPE_IDLE, unlink_when_idle, &w, NULL);
    if (gate_probe) gst_pad_remove_probe(tee_pad, gate_probe);
    gint64 deadline = g_get_monotonic_time() + G_TIME_SPAN_SECOND;
    g_mutex_lock(&w.lock);
    while (!w.done && g_cond_wait_until(&w.cond, &w.lock, deadline)) {
    }
    bool done = w.done;
    g_mutex_unlock(&w.lock);
    if (!done && w.peer) gst_pad_unlink(tee_pad, w.peer); /* a wedged branch: cut it */
    if (w.peer) gst_object_unref(w.peer);
    g_mutex_clear(&w.lock);
    g_cond_clear(&w.cond);
    gst_element_release_request_pad(f->tee, tee_pad);
    gst_object_unref(tee_pad);
}

/* ---- the fan-out --------------------------------------------------------- */

static void fanout_destroy(void *self);
static void fanout_frame(void *self, const float *mix, uint64_t index, int64_t capture_us);
static int fanout_listeners(void *self);
static int fanout_heard(void *self);
static void fanout_stats(void *self, ae_sink_stats *out);
static void fanout_forget_latency(void *self);

int ae_fanout_attach(ae_sink *k, const ae_sink_config *cfg, void *env)
{
    ae_fanout *f = calloc(1, sizeof *f);
    if (!f) return ae_fail(AE_ERR_NOMEM, "out of memory");
    f->sink = k;
    f->env = env;
    f->sink_id = k->id;
    f->channels = k->channels;
    f->frame_samples = k->frame_samples;
    f->frame_us = k->frame_us;
    pthread_mutex_init(&f->latency.lock, NULL);
    int rc = AE_OK;
    int app = cfg->low_delay >= 0 ? OPUS_APPLICATION_RESTRICTED_LOWDELAY : OPUS_APPLICATION_AUDIO;
    int err = 0;
    f->encoder = opus_encoder_create(k->graph->rate, k->channels, app, &err);
    if (!f->encoder) {
        rc = ae_fail(AE_ERR_CODEC, "Opus encoder: %s", opus_strerror(err));
    } else {
        int bitrate = cfg->bitrate ? cfg->bitrate : 128000;
        int complexity = cfg->complexity ? cfg->complexity : 5;
        if (!AE_IN_RANGE(bitrate, AE_SINK_BITRATE) || !AE_IN_RANGE(complexity, AE_SINK_COMPLEXITY))
            rc = ae_fail(AE_ERR_INVALID, "Opus needs %d..%d bit/s and complexity %d..%d",
                         AE_SINK_BITRATE_MIN, AE_SINK_BITRATE_MAX, AE_SINK_COMPLEXITY_MIN,
                         AE_SINK_COMPLEXITY_MAX);
        else if (opus_encoder_ctl(f->encoder, OPUS_SET_BITRATE(bitrate)) != OPUS_OK ||
                 opus_encoder_ctl(f->encoder, OPUS_SET_COMPLEXITY(complexity)) != OPUS_OK)
            rc = ae_fail(AE_ERR_CODEC, "Opus refused bitrate %d or complexity %d", bitrate,
                         complexity);
        opus_encoder_ctl(f->encoder, OPUS_SET_SIGNAL(OPUS_SIGNAL_MUSIC));
    }
    if (rc == AE_OK) rc = ae_loop_call(f->env->glib, pipeline_start, f, GLIB_CALL_TIMEOUT_MS);
    if (rc != AE_OK) {
        fanout_destroy(f);
        return rc;
    }
    k->output = (ae_sink_output){.self = f, .frame = fanout_frame, .listeners = fanout_listeners,
                                 .heard = fanout_heard,
                                 .stats = fanout_stats, .forget_latency = fanout_forget_latency,
                                 .destroy = fanout_destroy};
    return AE_OK;
}

ae_fanout *ae_fanout_of(ae_sink *k)
{
    return k && k->kind == AE_SINK_OPUS && k->output.frame == fanout_frame ? k->output.self : NULL;
}

static void fanout_destroy(void *self)
{
    ae_fanout *f = self;
    if (f->env->forget) f->env->forget(f->env->push_ctx, f);
    if (f->pipeline) ae_loop_call(f->env->glib, pipeline_stop, f, GLIB_CALL_TIMEOUT_MS);
    if (f->encoder) opus_encoder_destroy(f->encoder);
    pthread_mutex_destroy(&f->latency.lock);
    free(f);
}

/* Mixer thread: encode one mixed frame and send it on, when someone hears it. */
static void fanout_frame(void *self, const float *mix, uint64_t index, int64_t capture_us)
{
    ae_fanout *f = self;
    if (atomic_load_explicit(&f->heard_by, memory_order_relaxed) <= 0) return;
    int len = opus_encode_float(f->encoder, mix, f->frame_samples, f->packet, sizeof f->packet);
    if (len > 0) push(f, f->packet, len, index, capture_us);
}

static int fanout_listeners(void *self)
{
    ae_fanout *f = self;
    /* publications too: a sink is busy while a branch hangs off it */
    return atomic_load(&f->listeners) + atomic_load(&f->publications);
}

static int fanout_heard(void *self)
{
    ae_fanout *f = self;
    return atomic_load_explicit(&f->heard_by, memory_order_relaxed);
}

void ae_fanout_heard(ae_fanout *f, int delta) { atomic_fetch_add(&f->heard_by, delta); }

void ae_fanout_record_latency(ae_fanout *f, int64_t latency_us)
{
    pthread_mutex_lock(&f->latency.lock);
    f->latency.samples[f->latency.count++ % AE_LAT_RING] = latency_us;
    pthread_mutex_unlock(&f->latency.lock);
}

static void fanout_forget_latency(void *self)
{
    ae_fanout *f = self;
    pthread_mutex_lock(&f->latency.lock);
    f->latency.count = 0;
    pthread_mutex_unlock(&f->latency.lock);
}

/* listeners, packets_out and the send latency of ae_sink_stats */
static void fanout_stats(void *self, ae_sink_stats *out)
{
    ae_fanout *f = self;
    out->listeners = atomic_load(&f->listeners);
    out->packets_out = atomic_load(&f->packets_out);
    int64_t sorted[AE_LAT_RING];
    pthread_mutex_lock(&f->latency.lock);
    int n = f->latency.count < AE_LAT_RING ? (int)f->latency.count : AE_LAT_RING;
    memcpy(sorted, f->latency.samples, (size_t)n * sizeof *sorted);
    pthread_mutex_unlock(&f->latency.lock);
    for (int i = 1; i < n; i++) { /* insertion sort: n <= 1024, called rarely */
        int64_t v = sorted[i];
        int j = i - 1;
        while (j >= 0 && sorted[j] > v) {
            sorted[j + 1] = sorted[j];
            j--;
        }
        sorted[j + 1] = v;
    }
    out->send_latency_samples = n;
    if (n) {
        out->send_latency_p50_us = sorted[n / 2];
        out->send_latency_p95_us = sorted[(n * 95) / 100 < n ? (n * 95) / 100 : n - 1];
    }
}
