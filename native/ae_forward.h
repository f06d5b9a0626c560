/* ae_forward.h: a sink's Opus forwarded as RTP (or SRTP) to one UDP
 * address, a relay's ingest (a Janus streaming mountpoint): a branch on the
 * fan-out's pipeline, the listeners' encode, no second encoder. */
#ifndef AE_FORWARD_H
#define AE_FORWARD_H

#include "ae_events.h"
#include "ae_fanout.h"

typedef struct ae_fwd ae_fwd;

/* Checks cfg (a numeric address: nothing here waits for DNS), then puts the
 * branch on the tee; packets flow at once. */
int ae_fwd_create(ae_loop *glib, ae_fanout *f, const ae_forward_config *cfg, ae_fwd **out);
void ae_fwd_stats(ae_fwd *w, ae_listener_stats *out);
/* Takes the branch off the pipeline and frees it. */
int ae_fwd_destroy(ae_fwd *w);

#endif
