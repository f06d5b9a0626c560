/* ae_webrtc.h: the webrtcbin listener transport, for offers the lean one
 * declines: an rtpopuspay and a webrtcbin per listener on the fan-out's
 * pipeline. */
#ifndef AE_WEBRTC_H
#define AE_WEBRTC_H

#include "ae_events.h"
#include "ae_fanout.h"
#include "ae_sdp.h"

typedef struct ae_wr ae_wr;

/* What webrtcbin listeners need from the engine; outlives them. */
typedef struct ae_wr_env {
    ae_loop *glib;                       /* every GStreamer control call runs there */
    ae_events *events;
    const ae_engine_config *cfg;         /* ICE settings, gather timeout */
} ae_wr_env;

/* NULL when webrtcbin can take this offer, else why not. It only ever gets
 * the shapes it was tested with: a GLib assertion inside it (an offer whose
 * first m-line is not the audio, a rejected m-line in its BUNDLE group)
 * aborts the whole process. */
const char *ae_wr_declines(const ae_offer *o);
/* Negotiates in the background; AE_EVENT_ANSWER_READY or _FAILED follows
 * under `id` until ae_wr_close. Takes over o->fmtp. */
int ae_wr_create(const ae_wr_env *env, ae_sink *k, ae_fanout *f, uint64_t id,
                 const char *offer_sdp, ae_offer *o, ae_wr **out);
/* A publication (WHIP out): webrtcbin offers the sink's Opus sendonly;
 * AE_EVENT_OFFER_READY (the offer with every candidate) or _ANSWER_FAILED
 * follows under `id`; ice_servers as ae_publication_open takes them. */
int ae_wr_create_offer(const ae_wr_env *env, ae_sink *k, ae_fanout *f, uint64_t id,
                       const char *ice_servers, ae_wr **out);
/* The server's answer to a publication's offer (checked here: ICE, DTLS
 * fingerprint, our Opus); a later failure is a LISTENER_STATE FAILED. */
int ae_wr_set_answer(ae_wr *w, const char *answer_sdp);
/* ae_publication_ice_restart, ae_publication_restart_answer (arguments
 * checked by the caller). */
int ae_wr_ice_restart(ae_wr *w, char *ufrag, char *pwd);
int ae_wr_restart_answer(ae_wr *w, const char *ufrag, const char *pwd, const char *candidates);
/* From now on it posts no event (call before ae_events_forget). */
void ae_wr_close(ae_wr *w);
/* candidate: "candidate:..." (checked by the caller) */
void ae_wr_add_candidate(ae_wr *w, int mline, const char *candidate);
void ae_wr_stats(ae_wr *w, ae_listener_stats *out);
/* After ae_wr_close: takes the branch off the pipeline and stops webrtcbin
 * in the caller's thread. */
int ae_wr_destroy(ae_wr *w);

#endif
