/* ae_internal.h: the top of the engine: struct ae_engine, shared by the
 * listener seam (ae_listener.c: which transport serves an offer, and the
 * public listener calls) and the engine itself (ae_engine.c: create,
 * destroy, stats, the public create calls).
 *
 * Below them, a one-way chain of modules with a header each; none knows
 * what is above it:
 *   ae_core (errors, time, threads, ids, levels)
 *   -> ae_events (event queue and its thread, glib loop)
 *   -> ae_alsa (one PCM), ae_sdp (offers, certificate fingerprints),
 *      ae_dsp (the alignment delay line, the hearing variants' processing)
 *   -> ae_graph (sources, sinks, routes, device threads, the mixer; an Opus
 *      sink hands its frames to an opaque ae_sink_output)
 *   -> ae_fanout (the encoder and the webrtcbin pipeline; attaches itself as
 *      an Opus sink's output; what it needs from above is an ae_fanout_env)
 *   -> ae_lean, ae_webrtc (the two listener transports; each gets what it
 *      needs from the engine at create), ae_forward (RTP out to a relay)
 *   -> ae_listener.c, ae_engine.c.
 * The lean transport's protocols are modules of their own, included by
 * ae_lean.c alone and knowing nothing of it (it hands each what it needs):
 *   ae_core -> ae_stun (ICE-lite: credentials, Binding requests, which of a
 *              peer's paths media takes),
 *              ae_rtcp (RTP's header, sender and receiver reports)
 *   ae_stun, ae_sdp -> ae_dtls (DTLS-SRTP: the handshake, the fingerprint
 *              check, the keys into libsrtp)
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
#include "ae_forward.h"
#include "ae_graph.h"
#include "ae_lean.h"
#include "ae_webrtc.h"
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
    ae_fanout_env fanout_env;            /* what every Opus sink's fan-out gets */
    ae_wr_env wr_env;                    /* what every webrtcbin listener gets */
};

/* Run fn(data) on the engine's glib thread and wait (bounded) for it. */
static inline int ae_glib_call(ae_engine *e, int (*fn)(void *), void *data, int timeout_ms)
{
    return ae_loop_call(&e->glib, fn, data, timeout_ms);
}

/* ---- listeners (ae_listener.c) ---- */
void ae_listener_destroy_all(ae_engine *e);

#endif
