/* ae_lean.h: the lean listener (and publisher) transport (ICE-lite, DTLS-SRTP, one UDP
 * port and one thread for every listener), on the fan-out's packets. */
#ifndef AE_LEAN_H
#define AE_LEAN_H

#include "ae_events.h"
#include "ae_fanout.h"
#include "ae_sdp.h"

typedef struct ae_lean ae_lean;
typedef struct ae_lean_peer ae_lean_peer;

int ae_lean_start(ae_events *events, const ae_engine_config *cfg, ae_lean **out);
void ae_lean_stop(ae_lean *t);
void ae_lean_stats(ae_lean *t, ae_engine_stats *out);
/* NULL when the lean transport can serve the offer, else why not. */
const char *ae_lean_declines(const ae_offer *o);
/* The answer is ready at once (malloc'd into *answer). Events are posted
 * under listener_id unless *closing is set. */
int ae_lean_peer_create(ae_lean *t, ae_sink *k, uint64_t listener_id, const atomic_bool *closing,
                        const ae_offer *o, char **answer, ae_lean_peer **out);
/* A publisher (WHIP): the peer sends Opus, which goes, authenticated and
 * rewritten to AE_NETSRC_FED_PT, to feed_fd (its source's receiver: taken
 * over, closed with the peer, even on failure). channels: 2 asks for stereo. */
int ae_lean_publisher_create(ae_lean *t, int feed_fd, int channels, uint64_t listener_id,
                             const atomic_bool *closing, const ae_offer *o, char **answer,
                             ae_lean_peer **out);
/* Hands the peer to the network thread, which ends it (no event: the
 * caller mutes them through closing first), frees it and then calls
 * done(arg), so closing may live until then. Does not wait and cannot fail. */
void ae_lean_peer_release(ae_lean *t, ae_lean_peer *p, void (*done)(void *), void *arg);
/* An ae_fanout_env forget: returns once every peer released before the
 * call is gone, so nothing of the fan-out is used after it is freed. */
void ae_lean_forget(void *lean, ae_fanout *f);
void ae_lean_peer_stats(ae_lean_peer *p, ae_listener_stats *out);
/* Mixer thread: one Opus packet of a sink for its lean listeners (an
 * ae_fanout_env push; lean is the ae_lean). */
void ae_lean_push(void *lean, ae_fanout *f, const unsigned char *data, int len, uint64_t index,
                  int64_t capture_us);

#endif
