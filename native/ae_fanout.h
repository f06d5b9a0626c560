/* ae_fanout.h: an Opus sink's fan-out: the encoder (once per sink) and what
 * takes its packets to listeners: the ring to the lean transport's network
 * thread, and the appsrc/tee pipeline feeding webrtcbin listeners.
 *
 * It sits above the graph: it attaches itself to an Opus sink as the sink's
 * output (ae_sink_output), so the graph never calls it by name. The struct
 * is for the transports built on it. */
#ifndef AE_FANOUT_H
#define AE_FANOUT_H

#include "ae_core.h"
#include "ae_graph.h"

#include <gst/gst.h>
#include <opus/opus.h>

#define AE_LAT_RING 1024      /* send-latency samples kept per sink */
#define AE_FRAME_RING 1024    /* capture times of recent frames per sink */

typedef struct ae_fanout ae_fanout;

/* What a fan-out needs from above it, given by the engine for every sink. */
typedef struct ae_fanout_env {
    ae_loop *glib;                       /* GStreamer control calls run there */
    int rt_priority;                     /* for the pipeline's streaming thread */
    void *owner;                         /* the engine, opaque here */
    /* where packets for lean listeners go (the lean transport's ring) */
    void (*push)(void *ctx, ae_fanout *f, const unsigned char *data, int len, uint64_t index,
                 int64_t capture_us);
    void *push_ctx;
    /* called before a fan-out is freed, with push_ctx: returns once that
     * transport holds nothing of it (it frees listeners in the background) */
    void (*forget)(void *ctx, ae_fanout *f);
} ae_fanout_env;

/* An ae_output_maker for Opus sinks: ctx is an ae_fanout_env that outlives
 * the sink. */
int ae_fanout_attach(ae_sink *k, const ae_sink_config *cfg, void *env);
/* The fan-out of an Opus sink, or NULL. */
ae_fanout *ae_fanout_of(ae_sink *k);

typedef struct ae_lat_stats {
    pthread_mutex_t lock;
    int64_t samples[AE_LAT_RING];
    uint64_t count;
} ae_lat_stats;

struct ae_fanout {
    ae_sink *sink;
    const ae_fanout_env *env;
    uint64_t sink_id;
    int channels, frame_samples;
    int64_t frame_us;
    OpusEncoder *encoder;
    unsigned char packet[4000];
    GstElement *pipeline, *appsrc, *tee;
    guint bus_watch;
    GstClockTimeDiff base_pts;
    bool pts_started;
    int64_t frame_capture_us[AE_FRAME_RING];
    uint64_t frame_index_at[AE_FRAME_RING];
    _Atomic int listeners;               /* all transports */
    _Atomic int lean_listeners;          /* of those, on the lean transport */
    _Atomic int heard_by;                /* connected ones (lean: DTLS done; webrtcbin: all) */
    _Atomic int publications;            /* WHIP out and RTP forwards: branches, not listeners */
    _Atomic uint64_t packets_out;
    ae_lat_stats latency;
};

/* A listener of the fan-out connected (+1) or left after connecting (-1).
 * Nobody connected: the sink is not encoded (a session that never connects
 * costs no encoder time). */
void ae_fanout_heard(ae_fanout *f, int delta);

/* Glib thread: take a branch off the tee once no buffer is in it (at most a
 * second: a wedged branch is cut), remove its gate probe (0 = none) and
 * release the tee's pad (tee_pad's reference is taken). */
void ae_fanout_release_branch(ae_fanout *f, GstPad *tee_pad, gulong gate_probe);

/* A packet's capture-to-network latency, for ae_sink_stats. */
void ae_fanout_record_latency(ae_fanout *f, int64_t latency_us);

#endif
