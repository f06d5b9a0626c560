/* ae_fanout.h: an Opus sink's fan-out: the encoder (once per sink) and what
 * takes its packets to listeners: the ring to the lean transport's network
 * thread, and the appsrc/tee pipeline feeding webrtcbin listeners.
 *
 * The graph sees only the functions below (a sink holds an opaque
 * ae_fanout); the struct is for the transports built on it. */
#ifndef AE_FANOUT_H
#define AE_FANOUT_H

#include "ae_core.h"

#include <gst/gst.h>
#include <opus/opus.h>

#define AE_LAT_RING 1024      /* send-latency samples kept per sink */
#define AE_FRAME_RING 1024    /* capture times of recent frames per sink */

typedef struct ae_fanout ae_fanout;

/* For an Opus sink (k's id, channels and frame size are set). */
int ae_fanout_create(ae_sink *k, const ae_sink_config *cfg, ae_fanout **out);
void ae_fanout_destroy(ae_fanout *f);
/* Mixer thread: encode one mixed frame and send it on. */
void ae_fanout_frame(ae_fanout *f, const float *mix, uint64_t index, int64_t capture_us);
int ae_fanout_listeners(ae_fanout *f);
/* listeners, packets_out and the send latency of ae_sink_stats */
void ae_fanout_stats(ae_fanout *f, ae_sink_stats *out);

typedef struct ae_lat_stats {
    pthread_mutex_t lock;
    int64_t samples[AE_LAT_RING];
    uint64_t count;
} ae_lat_stats;

struct ae_fanout {
    ae_sink *sink;
    ae_engine *engine;
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
    _Atomic uint64_t packets_out;
    ae_lat_stats latency;
};

/* A packet's capture-to-network latency, for ae_sink_stats. */
void ae_fanout_record_latency(ae_fanout *f, int64_t latency_us);

#endif
