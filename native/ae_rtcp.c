/* ae_rtcp.c: RTP's fixed header and RTCP for the lean transport: sender
 * reports out, the peer's receiver reports in (loss, jitter, and the round
 * trip from LSR/DLSR). */
#include "ae_rtcp.h"

#include <string.h>
#include <time.h>

static void put16(unsigned char *b, uint16_t v)
{
    b[0] = (unsigned char)(v >> 8);
    b[1] = (unsigned char)v;
}

static void put32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}

static uint32_t get32(const unsigned char *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* NTP time (RFC 3550 sender reports): wall clock, 32.32 fixed point. */
static uint64_t ntp_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t sec = (uint64_t)ts.tv_sec + 2208988800u;
    uint64_t frac = ((uint64_t)ts.tv_nsec << 32) / 1000000000u;
    return sec << 32 | frac;
}

void ae_rtp_header(unsigned char *b, uint16_t seq, uint32_t ts, uint32_t ssrc)
{
    b[0] = 0x80;
    b[1] = 0;
    put16(b + 2, seq);
    put32(b + 4, ts);
    put32(b + 8, ssrc);
}

/* ---- receiver reports ---------------------------------------------------- */

void ae_rtcp_figures_init(ae_rtcp_figures *f)
{
    f->rtt_ms = -1;
    pthread_mutex_init(&f->lock, NULL);
}

void ae_rtcp_figures_clear(ae_rtcp_figures *f)
{
    pthread_mutex_destroy(&f->lock);
}

void ae_rtcp_figures_get(ae_rtcp_figures *f, ae_listener_stats *out)
{
    pthread_mutex_lock(&f->lock);
    out->rtcp_reports = f->reports;
    out->fraction_lost = f->fraction_lost;
    out->packets_lost = f->packets_lost;
    out->jitter_ms = f->jitter_ms;
    out->rtt_ms = f->rtt_ms;
    pthread_mutex_unlock(&f->lock);
}

/* b: one report block, from its SSRC on */
static void on_report_block(ae_rtcp_figures *f, const unsigned char *b)
{
    int32_t lost = (int32_t)((uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 | b[7]);
    if (lost & 0x800000) lost -= 0x1000000;
    uint32_t jitter = get32(b + 12), lsr = get32(b + 16), dlsr = get32(b + 20);
    double rtt = -1;
    if (lsr) {
        uint32_t a = (uint32_t)(ntp_now() >> 16);
        uint32_t d = a - lsr - dlsr;
        if (d < 0x80000000u) rtt = d * 1000.0 / 65536.0;
    }
    pthread_mutex_lock(&f->lock);
    f->reports++;
    f->fraction_lost = b[4] / 256.0;
    f->packets_lost = lost;
    f->jitter_ms = jitter / 48.0; /* Opus's RTP clock is 48 kHz */
    if (rtt >= 0) f->rtt_ms = rtt;
    pthread_mutex_unlock(&f->lock);
}

void ae_rtcp_receive(ae_rtcp_figures *f, uint32_t ssrc, const unsigned char *b, int n)
{
    int off = 0;
    while (off + 8 <= n) {
        const unsigned char *h = b + off;
        int count = h[0] & 0x1f, type = h[1];
        int plen = ((h[2] << 8 | h[3]) + 1) * 4;
        if ((h[0] >> 6) != 2 || off + plen > n) break;
        int first = type == 201 ? 8 : type == 200 ? 28 : -1; /* RR, SR */
        for (int i = 0; first >= 0 && i < count; i++) {
            int at = first + 24 * i;
            if (at + 24 > plen) break;
            if (get32(h + at) == ssrc) on_report_block(f, h + at);
        }
        off += plen;
    }
}

/* ---- sender reports ------------------------------------------------------ */

int ae_rtcp_sender_report(unsigned char *b, uint32_t ssrc, const char *cname, uint32_t ts,
                          uint32_t packets, uint32_t octets)
{
    uint64_t ntp = ntp_now();
    b[0] = 0x80;
    b[1] = 200;
    put16(b + 2, 6);
    put32(b + 4, ssrc);
    put32(b + 8, (uint32_t)(ntp >> 32));
    put32(b + 12, (uint32_t)ntp);
    put32(b + 16, ts);
    put32(b + 20, packets);
    put32(b + 24, octets);
    /* SDES with our CNAME: a compound packet must carry one */
    int n = 28, clen = (int)strlen(cname);
    int chunk = 4 + 2 + clen + 1;
    chunk = (chunk + 3) & ~3;
    memset(b + n, 0, (size_t)(4 + chunk));
    b[n] = 0x81;
    b[n + 1] = 202;
    put16(b + n + 2, (uint16_t)(chunk / 4));
    put32(b + n + 4, ssrc);
    b[n + 8] = 1;
    b[n + 9] = (unsigned char)clen;
    memcpy(b + n + 10, cname, (size_t)clen);
    n += 4 + chunk;
    return n;
}
