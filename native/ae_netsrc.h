/* ae_netsrc.h: audio from the network for one source. A receiver thread
 * takes datagrams on one UDP port (a multicast group joined on one interface,
 * or unicast), drops what comes from an address allow_from does not name,
 * parses what is left (Scream, and ScreamRouter's per-process variant), and
 * hands frames at the engine's rate to the graph through ae_netsrc_io.
 *
 * The sender's clock is not the box's: an adaptive resampler (libspeexdsp)
 * is steered by how far the graph's reader is behind the newest frame, so
 * that distance stays at latency_ms however the two clocks drift.
 *
 * Knows nothing of the graph (only ae_core below it). */
#ifndef AE_NETSRC_H
#define AE_NETSRC_H

#include "ae_core.h"

typedef struct ae_netsrc ae_netsrc;

typedef struct ae_netsrc_io {
    void *ctx;
    /* receiver thread: n frames, the source's channels, the engine's rate,
     * that arrived at arrival_us (monotonic) */
    void (*write)(void *ctx, const float *frames, int n, int64_t arrival_us);
    /* frames written that the newest reader has not read; < 0: nobody reads */
    int64_t (*buffered)(void *ctx);
    /* receiver thread: the stream came (why NULL) or stopped coming */
    void (*state)(void *ctx, bool receiving, const char *why);
} ae_netsrc_io;

/* A whip source's packets come from the engine's WebRTC transport, already
 * authenticated and decrypted, rewritten to this payload type. */
#define AE_NETSRC_FED_PT 111

/* Opens the socket and starts the thread; the config's network fields. A
 * whip source has no socket on the network: its publisher's transport
 * writes RTP into a socket pair (ae_netsrc_feed_fd). */
int ae_netsrc_open(const ae_source_config *cfg, int rate, int channels, int rt_priority,
                   ae_netsrc_io io, ae_netsrc **out);
/* A whip source: a new descriptor of its feeding end, for one publisher
 * (the caller closes it; writes after the source is gone just fail). -1 on
 * error or for another kind. */
int ae_netsrc_feed_fd(ae_netsrc *n);
/* Stops the thread (at once) and frees everything. NULL is fine. */
void ae_netsrc_close(ae_netsrc *n);
void ae_netsrc_stats(ae_netsrc *n, ae_net_source_stats *out);
/* The buffer kept ahead of the reader, in frames at the engine's rate. */
int64_t ae_netsrc_target_frames(const ae_netsrc *n);

#endif
