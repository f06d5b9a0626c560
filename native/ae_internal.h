/* ae_internal.h: the engine's top layers, shared by their C files: the
 * listener transports (ae_webrtc.c: webrtcbin and the listener seam;
 * ae_lean.c: ICE-lite, DTLS-SRTP on one port) and the engine itself
 * (ae_engine.c: create, destroy, stats, the public create calls).
 *
 * Below them, a one-way chain of modules with a header each; none knows
 * what is above it:
 *   ae_core (errors, time, threads, ids, levels)
 *   -> ae_events (event queue and its thread, glib loop)
 *   -> ae_alsa (one PCM), ae_sdp (offers)
 *   -> ae_graph (sources, sinks, routes, device threads, the mixer; an Opus
 *      sink hands its frames to an opaque ae_sink_output)
 *   -> ae_fanout (the encoder, the lean ring, the webrtcbin pipeline: it
 *      attaches itself as an Opus sink's output)
 *   -> the transports -> the engine.
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
#include "ae_graph.h"
#include "ae_sdp.h"

#include <alsa/asoundlib.h>
#include <gst/gst.h>
#include <opus/opus.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdbool.h>

/* ---- engine ---- */
struct ae_engine {
    ae_engine_config cfg;
    char *stun_server;
    char *ice_addresses;

    ae_graph graph;                      /* sources, sinks, routes, the mixer */
    _Atomic int nlisteners;
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
