/* ae_rtcp.h: RTP's fixed header and RTCP (RFC 3550) for the lean
 * transport: the sender reports we send, the peer's receiver reports and
 * the figures drawn from them. Packets only: SRTP and the sockets are the
 * caller's. */
#ifndef AE_RTCP_H
#define AE_RTCP_H

#include "ae_core.h"

/* RTP's fixed header (12 bytes) with payload type 0: each listener's goes
 * in before SRTP. */
void ae_rtp_header(unsigned char *b, uint16_t seq, uint32_t ts, uint32_t ssrc);

/* What a listener's receiver reports say; written by the network thread,
 * read by any. */
typedef struct ae_rtcp_figures {
    pthread_mutex_t lock;
    uint64_t reports;
    double fraction_lost, jitter_ms, rtt_ms;
    int64_t packets_lost;
} ae_rtcp_figures;

void ae_rtcp_figures_init(ae_rtcp_figures *f);
void ae_rtcp_figures_clear(ae_rtcp_figures *f);
void ae_rtcp_figures_get(ae_rtcp_figures *f, ae_listener_stats *out);
/* A compound RTCP packet, SRTCP taken off: its report blocks about ssrc
 * (ours) go into the figures. */
void ae_rtcp_receive(ae_rtcp_figures *f, uint32_t ssrc, const unsigned char *b, int n);

/* The most a sender report takes, with a CNAME of up to 89 characters. */
#define AE_RTCP_SR_MAX 128
/* A sender report for ssrc, now, with our CNAME (a compound packet must
 * carry one), into b; returns its length. */
int ae_rtcp_sender_report(unsigned char *b, uint32_t ssrc, const char *cname, uint32_t ts,
                          uint32_t packets, uint32_t octets);

#endif
