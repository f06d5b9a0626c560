/* ae_graph.h: sources, sinks, routes, their ALSA device threads and the
 * mixer thread. Knows nothing above it: an Opus sink's frames go to an
 * opaque output (the fan-out) through the functions in ae_sink_output. */
#ifndef AE_GRAPH_H
#define AE_GRAPH_H

#include "ae_alsa.h"
#include "ae_core.h"
#include "ae_dsp.h"
#include "ae_events.h"
#include "ae_netsrc.h"

#include <semaphore.h>

typedef struct ae_graph {
    int rate, rt_priority;
    ae_events *events;
    /* guards the lists and route parameters. The mixer holds it only while
     * producing a frame (microseconds); control calls only to link or unlink */
    pthread_mutex_t lock;
    ae_source *sources;
    ae_sink *sinks;
    int nsources, nsinks, nroutes;
    pthread_t mixer_thread;
    bool mixer_started;
    sem_t wake;
    atomic_bool stopping;
} ae_graph;

/* What an Opus sink hands its mixed frames to, and asks about it. */
typedef struct ae_sink_output {
    void *self;
    void (*frame)(void *self, const float *mix, uint64_t index, int64_t capture_us);
    int (*listeners)(void *self);
    int (*heard)(void *self);            /* of those, how many receive audio now */
    void (*stats)(void *self, ae_sink_stats *out);
    /* what was measured no longer holds (the sink's delay changed) */
    void (*forget_latency)(void *self);
    void (*destroy)(void *self);
} ae_sink_output;

/* Attaches an Opus sink's output before the sink is linked. */
typedef int (*ae_output_maker)(ae_sink *k, const ae_sink_config *cfg, void *ctx);

void ae_graph_init(ae_graph *g, int rate, int rt_priority, ae_events *events);
int ae_graph_start(ae_graph *g);          /* the mixer thread */
void ae_graph_stop(ae_graph *g);
void ae_graph_destroy(ae_graph *g);
void ae_graph_wake(ae_graph *g);
int ae_graph_source_create(ae_graph *g, const ae_source_config *cfg, ae_source **out);
int ae_graph_sink_create(ae_graph *g, const ae_sink_config *cfg, ae_output_maker make,
                         void *ctx, ae_sink **out);
/* A variant sink fed by parent's (delayed) mix; see ae_sink_create_variant. */
int ae_graph_variant_create(ae_sink *parent, const ae_variant_config *variant,
                            const ae_sink_config *cfg, ae_output_maker make, void *ctx,
                            ae_sink **out);

/* A whip source: a new descriptor its publisher's transport writes RTP to
 * (the caller closes it), or -1. */
int ae_source_feed_fd(ae_source *s);

#define AE_CLICK_RING 256

/* An ALSA device and its thread: what capture sources and playback sinks
 * share. The loss and retry fields belong to the device thread. */
typedef struct ae_device {
    ae_pcm pcm;
    char *name;
    snd_pcm_stream_t stream;
    int channels, period_frames, buffer_periods;
    pthread_t thread;
    bool thread_started;
    atomic_bool stop;
    /* Set once by whoever accounts for the thread's end: the thread as it
     * exits, or device_close when it gives up waiting (see there). */
    atomic_bool released;
    uint64_t xruns;
    bool lost;
    int64_t retry_at, backoff, silence_t;
} ae_device;

typedef struct ae_ring {
    float *data;                         /* interleaved */
    uint64_t capacity;                   /* frames, power of two */
    int channels;
    _Atomic uint64_t wpos;               /* frames ever written */
    /* capture time of recent periods, to timestamp frames for latency */
    int64_t period_time_us[256];
    uint64_t period_pos[256];
    _Atomic uint64_t periods;
} ae_ring;

int ae_ring_init(ae_ring *r, int channels, uint64_t min_frames);
void ae_ring_free(ae_ring *r);
void ae_ring_write(ae_ring *r, const float *in, uint64_t frames, int64_t capture_us);
/* Copy frames starting at absolute position pos (must still be held). */
void ae_ring_read(const ae_ring *r, uint64_t pos, float *out, uint64_t frames);
int64_t ae_ring_time_of(const ae_ring *r, uint64_t pos, int rate);

struct ae_source {
    ae_graph *graph;
    ae_source *next;
    uint64_t id;                        /* names it in events */
    int kind;
    int channels;
    int nroutes;
    ae_levels levels;
    /* tone / clicks: written by control calls, read by the mixer (graph_lock) */
    double tone_hz, tone_amp;
    int click_interval_ms;
    int64_t click_times[AE_CLICK_RING];
    _Atomic uint64_t clicks;
    /* file */
    float *file_data;
    uint64_t file_frames;
    /* ALSA, network: the ring the device or the receiver writes */
    ae_ring ring;
    ae_device dev;
    /* network: the receiver; how far the newest reader has read (its
     * distance behind wpos steers the receiver's resampler, 0: none yet) */
    ae_netsrc *net;
    _Atomic uint64_t read_pos;
    _Atomic int64_t read_at_us;          /* when it read there (the mixer's frames are steps) */
    _Atomic uint64_t net_resyncs;
};

struct ae_route {
    ae_source *source;
    ae_sink *sink;
    ae_route *next_in_sink;
    float gain_target;                   /* linear; 0 when muted */
    float gain_now;
    double gain_db;
    bool muted;
    int source_channel;
    /* per-route reading state */
    uint64_t rpos;                       /* ALSA, network: next frame to read */
    bool buffered;                       /* network: rpos is the target behind wpos */
    int64_t settling;                    /* network: frames left to move up to a burst's end */
    double phase;                        /* tone */
    uint64_t gen_pos;                    /* file / clicks: frames generated */
};

struct ae_sink {
    ae_graph *graph;
    ae_sink *next;
    uint64_t id;                        /* names it in events */
    int kind;
    int channels;
    int frame_samples;
    int64_t frame_us;
    ae_route *routes;
    int nroutes;
    float *mix, *tmp;
    ae_levels levels;
    int64_t next_due_us;                 /* pacing when no capture source clocks it */
    uint64_t frames, underruns;
    /* alignment delay of the mix (data NULL: none); swapped under the lock */
    ae_delay delay;
    /* hearing variants: a variant has a parent and no routes of its own; the
     * mixer runs it right after its parent's frame (graph lock) */
    ae_sink *parent;
    ae_sink *variants;                   /* this sink's variants */
    ae_sink *next_variant;               /* in the parent's list */
    ae_variant *variant;                 /* what a variant does to the parent's mix */
    bool on_demand;                      /* mixed only while heard (see ae_sink_config) */
    /* Opus: where mixed frames go (the fan-out above, opaque here) */
    ae_sink_output output;
    /* ALSA playback */
    ae_ring out_ring;
    _Atomic uint64_t out_rpos;
    ae_device dev;
};

#endif
