/* ae_internal.h: the engine's upper layers, shared by their C files: the
 * graph (ae_graph.c), the fan-out (ae_fanout.c: a sink's encoder and what
 * sends its packets on), the webrtcbin transport and the listener seam
 * (ae_webrtc.c), the lean transport (ae_lean.c) and the engine itself
 * (ae_engine.c).
 *
 * Below them, a one-way chain of modules with a header each, none of which
 * knows the engine: ae_core (errors, time, threads, ids, levels) ->
 * ae_events (event queue and its thread, glib loop) -> ae_alsa (one PCM),
 * ae_sdp (offers). A sink holds its fan-out as an opaque pointer: the graph
 * calls only ae_fanout.h's functions.
 *
 * Still to cut (the upper layers share struct ae_engine): the graph and
 * devices behind an ae_graph context of their own, the public create calls
 * for sinks and listeners in the engine layer, so that graph -> fan-out ->
 * transports -> engine is one-way too.
 *
 * Threads and locks
 *  - glib thread: runs the engine's GMainContext; every GStreamer/webrtcbin
 *    control call happens there (ae_glib_call).
 *  - event thread: drains the event queue into the user's callback and
 *    samples levels on a timer.
 *  - mixer thread: pulls sources through routes into sinks, encodes Opus
 *    and hands packets to each sink's appsrc and the lean transport.
 *    Real-time; never calls out.
 *  - network thread (ae-net): the lean transport, for all its listeners.
 *  - one capture thread per ALSA source, one playback thread per ALSA sink.
 *  - graph_lock guards the source/sink/route lists and route parameters. The
 *    mixer holds it only while producing a frame (microseconds); control
 *    calls hold it only to link or unlink.
 */
#ifndef AE_INTERNAL_H
#define AE_INTERNAL_H

#include "ae_alsa.h"
#include "ae_core.h"
#include "ae_events.h"
#include "ae_fanout.h"
#include "ae_sdp.h"

#include <alsa/asoundlib.h>
#include <gst/gst.h>
#include <opus/opus.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>

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
    uint64_t xruns;
    bool lost;
    int64_t retry_at, backoff, silence_t;
} ae_device;

/* ---- graph ---- */
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
    ae_engine *engine;
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
    /* ALSA */
    ae_ring ring;
    ae_device dev;
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
    uint64_t rpos;                       /* ALSA: next frame to read */
    double phase;                        /* tone */
    uint64_t gen_pos;                    /* file / clicks: frames generated */
};

struct ae_sink {
    ae_engine *engine;
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
    /* Opus: the encoder and what sends its packets on (ae_fanout.c) */
    ae_fanout *fanout;
    /* ALSA playback */
    ae_ring out_ring;
    _Atomic uint64_t out_rpos;
    ae_device dev;
};

/* ---- engine ---- */
struct ae_engine {
    ae_engine_config cfg;
    char *stun_server;
    char *ice_addresses;

    pthread_mutex_t graph_lock;
    ae_source *sources;
    ae_sink *sinks;
    int nsources, nsinks, nroutes;
    _Atomic int nlisteners;

    /* mixer */
    pthread_t mixer_thread;
    bool mixer_started;
    sem_t mixer_wake;
    atomic_bool stopping;

    ae_events events;                    /* the queue and its thread */
    ae_loop glib;                        /* the glib thread */
    pthread_mutex_t listeners_lock;      /* the listener list */
    ae_listener *listeners;

    struct ae_lean *lean;                /* the lean transport, or NULL */
};

/* Run fn(data) on the engine's glib thread and wait (bounded) for it. */
static inline int ae_glib_call(ae_engine *e, int (*fn)(void *), void *data, int timeout_ms)
{
    return ae_loop_call(&e->glib, fn, data, timeout_ms);
}
void ae_wake_mixer(ae_engine *e);

/* ---- audio graph (ae_graph.c) ---- */
void *ae_mixer_main(void *arg);

/* ---- the lean transport (ae_lean.c) ---- */
typedef struct ae_lean ae_lean;
typedef struct ae_lean_peer ae_lean_peer;

int ae_lean_start(ae_engine *e, ae_lean **out);
void ae_lean_stop(ae_lean *t);
void ae_lean_stats(ae_lean *t, ae_engine_stats *out);
/* NULL when the lean transport can serve the offer, else why not. */
const char *ae_lean_declines(const ae_offer *o);
/* The answer is ready at once (malloc'd into *answer). Events are posted
 * under listener_id unless *closing is set. */
int ae_lean_peer_create(ae_lean *t, ae_sink *k, uint64_t listener_id, const atomic_bool *closing,
                        const ae_offer *o, char **answer, ae_lean_peer **out);
/* Waits (bounded) until the network thread has let go of it, then frees it. */
void ae_lean_peer_destroy(ae_lean *t, ae_lean_peer *p);
void ae_lean_peer_stats(ae_lean_peer *p, ae_listener_stats *out);
/* Mixer thread: one Opus packet of a sink for its lean listeners. */
void ae_lean_push(ae_lean *t, ae_fanout *f, const unsigned char *data, int len, uint64_t index,
                  int64_t capture_us);

/* ---- WebRTC fan-out (ae_webrtc.c) ---- */
void ae_listener_destroy_all(ae_engine *e);

#endif
