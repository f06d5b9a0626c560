/* ae_netsrc.c: a network source's receiver thread, its allow list, the
 * Scream parser and the drift-steered resampler. See ae_netsrc.h. */
#define _GNU_SOURCE
#include "ae_netsrc.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <math.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <opus/opus.h>
#include <speex/speex_resampler.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#define SCREAM_HEADER 5
#define SCREAM_PAYLOAD 1152
#define SCREAM_PACKET (SCREAM_HEADER + SCREAM_PAYLOAD)
#define PER_PROCESS_PACKET (AE_SCREAM_PROGRAM_LEN + SCREAM_PACKET)
#define MAX_LOCAL 64
#define LOCAL_REFRESH_US 5000000
/* datagrams taken per wake before the stop flag is looked at again: a flood
 * cannot keep the thread from stopping */
#define BURST 256
/* the steering: a buffer error is corrected over this long, at most this fast */
#define STEER_S 2.0
#define MAX_CORRECTION 0.002
#define RESAMPLER_QUALITY 5
#define MAX_DATAGRAM 2048                /* larger ones are cut short: not ours */
/* one datagram's frames at most: Opus's longest packet (120 ms at 48 kHz),
 * more than 8-bit G.711 or 16-bit mono PCM fill */
#define OPUS_MAX_FRAMES 5760
#define MAX_IN_FRAMES (OPUS_MAX_FRAMES + 8)
#define MAX_OUT_FRAMES 4096              /* resampled a piece at a time */
/* RTP: packets held while an earlier one may still come, before it is lost
 * (at most REORDER_WAIT of them: see reorder_wait) */
#define REORDER_SLOTS 8
#define REORDER_WAIT 3
/* RTP: a sequence number this far from the expected one is a new stream */
#define SEQ_JUMP 100
/* silence for lost packets at most this long at once (a longer gap is a pause) */
#define MAX_CONCEAL_FRAMES 48000
/* after a gap the stream comes back over this many frames, not with a click */
#define FADE_FRAMES 48
/* nothing taken for this long: the source is lost (its channel says so) */
#define SILENT_US 1000000
#define POLL_MS 250

typedef struct held_packet {
    bool used;
    uint16_t seq;
    int len;
    unsigned char data[MAX_DATAGRAM];
} held_packet;

typedef struct prefix {
    int family;                          /* AF_INET, AF_INET6 */
    unsigned char addr[16], mask[16];
} prefix;

struct ae_netsrc {
    int rate, channels;                  /* the engine's rate, the source's channels */
    int64_t target;                      /* frames kept ahead of the reader, as set */
    _Atomic int64_t packet_target;       /* at least two of the stream's packets */
    ae_netsrc_io io;
    int sock, wake;                      /* wake: an eventfd that ends the thread */
    int feed;                            /* whip: the socket pair's writing end, else -1 */
    pthread_t thread;
    bool started;
    int kind;                            /* AE_SOURCE_SCREAM, AE_SOURCE_RTP (also for whip) */
    bool fed;                            /* whip: packets from our own transport, no allow list */
    char program[AE_SCREAM_PROGRAM_LEN];
    bool per_process;
    bool big_endian;                     /* RTP's L16 and L24 */
    int encoding;                        /* RTP: ae_rtp_encoding */
    OpusDecoder *opus;
    /* RTP (receiver thread only) */
    int payload_type;
    bool have_ssrc;
    uint32_t ssrc;
    uint16_t expected;                   /* the next sequence number to play */
    int packet_frames;                   /* of the last one played: a lost one's length */
    int fade;                            /* frames of fade-in left after a gap */
    held_packet held[REORDER_SLOTS];
    int nheld;
    uint32_t last_ts;                    /* RTP timestamp and arrival of the last in order */
    int64_t last_arrival_us;
    double jitter;                       /* RFC 3550 6.4.1, in the stream's clock units */
    /* whether anything is coming (receiver thread only) */
    bool receiving;
    int64_t last_taken_us;
    _Atomic int64_t last_taken_atomic_us; /* the same, for the stats' reader */
    prefix allow[AE_MAX_SENDER_PREFIXES];   /* the model's bound (ae_limits.h) */
    int nallow;
    bool allow_local;
    char ifname[IF_NAMESIZE];            /* "local" means this interface's subnets ("": all) */
    prefix local[MAX_LOCAL];             /* those subnets, refreshed */
    int nlocal;
    int64_t local_at;
    /* the stream (receiver thread only) */
    int s_rate, s_bits, s_channels;
    unsigned char carry[32];             /* a frame cut between two packets */
    int ncarry;
    struct sockaddr_storage from;
    SpeexResamplerState *resampler;
    uint32_t ratio_num;                  /* the sender's rate as the resampler takes it */
    double error_avg;
    float last[AE_MAX_CHANNELS];         /* the last frame taken: a gap fades out from it */
    float in[MAX_IN_FRAMES * AE_MAX_CHANNELS];
    float mid[MAX_OUT_FRAMES * AE_MAX_CHANNELS];   /* resampled, the stream's channels */
    float out[MAX_OUT_FRAMES * AE_MAX_CHANNELS];   /* the source's channels */
    pthread_mutex_t lock;                /* stats */
    ae_net_source_stats stats;
};

/* ---- addresses ----------------------------------------------------------- */

static void set_mask(prefix *p, int bits)
{
    memset(p->mask, 0, sizeof p->mask);
    for (int i = 0; i < 16 && bits > 0; i++, bits -= 8)
        p->mask[i] = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));
}

/* "192.0.2.0/24", "2001:db8::/32", or an address alone. */
static int parse_prefix(const char *text, prefix *p)
{
    char buf[INET6_ADDRSTRLEN + 8];
    if (strlen(text) >= sizeof buf) return -1;
    strcpy(buf, text);
    char *slash = strchr(buf, '/');
    int bits = -1;
    if (slash) {
        *slash = '\0';
        char *end;
        long v = strtol(slash + 1, &end, 10);
        if (end == slash + 1 || *end || v < 0 || v > 128) return -1;
        bits = (int)v;
    }
    memset(p, 0, sizeof *p);
    if (inet_pton(AF_INET, buf, p->addr) == 1) {
        p->family = AF_INET;
        if (bits > 32) return -1;
        set_mask(p, bits < 0 ? 32 : bits);
    } else if (inet_pton(AF_INET6, buf, p->addr) == 1) {
        p->family = AF_INET6;
        set_mask(p, bits < 0 ? 128 : bits);
    } else {
        return -1;
    }
    for (int i = 0; i < 16; i++) p->addr[i] &= p->mask[i];
    return 0;
}

_Static_assert(sizeof(((ae_net_source_stats *)0)->program_refused) > AE_SCREAM_PROGRAM_LEN,
               "the stats' program_refused holds a tag and its NUL");

static int parse_allow(ae_netsrc *n, const char *list)
{
    if (!list) return AE_OK;
    char *copy = strdup(list);
    if (!copy) return ae_fail(AE_ERR_NOMEM, "out of memory");
    int rc = AE_OK;
    char *save = NULL;
    for (char *item = strtok_r(copy, ", ", &save); item; item = strtok_r(NULL, ", ", &save)) {
        if (strcmp(item, "local") == 0) {
            n->allow_local = true;
        } else if (n->nallow >= AE_MAX_SENDER_PREFIXES) {
            rc = ae_fail(AE_ERR_INVALID, "allow_from names more than %d prefixes",
                         AE_MAX_SENDER_PREFIXES);
            break;
        } else if (parse_prefix(item, &n->allow[n->nallow]) != 0) {
            rc = ae_fail(AE_ERR_INVALID, "allow_from: %.60s is not an address or a prefix", item);
            break;
        } else {
            n->nallow++;
        }
    }
    free(copy);
    return rc;
}

/* The sender as a family and 4 or 16 bytes (an IPv4-mapped IPv6 address is IPv4). */
static int sender_bytes(const struct sockaddr_storage *ss, unsigned char out[16])
{
    if (ss->ss_family == AF_INET) {
        memcpy(out, &((const struct sockaddr_in *)ss)->sin_addr, 4);
        return AF_INET;
    }
    const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
    if (IN6_IS_ADDR_V4MAPPED(a)) {
        memcpy(out, &a->s6_addr[12], 4);
        return AF_INET;
    }
    memcpy(out, a->s6_addr, 16);
    return AF_INET6;
}

static bool in_prefix(const prefix *p, int family, const unsigned char *addr)
{
    if (p->family != family) return false;
    int len = family == AF_INET ? 4 : 16;
    for (int i = 0; i < len; i++)
        if ((addr[i] & p->mask[i]) != p->addr[i]) return false;
    return true;
}

static void refresh_local(ae_netsrc *n, int64_t now)
{
    if (n->local_at && now - n->local_at < LOCAL_REFRESH_US) return;
    n->local_at = now;
    n->nlocal = 0;
    struct ifaddrs *all;
    if (getifaddrs(&all) != 0) return;
    for (struct ifaddrs *i = all; i && n->nlocal < MAX_LOCAL; i = i->ifa_next) {
        if (!i->ifa_addr || !i->ifa_netmask) continue;
        if (n->ifname[0] && strcmp(i->ifa_name, n->ifname) != 0) continue;
        prefix *p = &n->local[n->nlocal];
        memset(p, 0, sizeof *p);
        if (i->ifa_addr->sa_family == AF_INET) {
            p->family = AF_INET;
            memcpy(p->addr, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, 4);
            memcpy(p->mask, &((struct sockaddr_in *)i->ifa_netmask)->sin_addr, 4);
        } else if (i->ifa_addr->sa_family == AF_INET6) {
            p->family = AF_INET6;
            memcpy(p->addr, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, 16);
            memcpy(p->mask, &((struct sockaddr_in6 *)i->ifa_netmask)->sin6_addr, 16);
        } else {
            continue;
        }
        for (int b = 0; b < 16; b++) p->addr[b] &= p->mask[b];
        n->nlocal++;
    }
    freeifaddrs(all);
}

static bool allowed(ae_netsrc *n, const struct sockaddr_storage *from, int64_t now)
{
    unsigned char addr[16];
    int family = sender_bytes(from, addr);
    for (int i = 0; i < n->nallow; i++)
        if (in_prefix(&n->allow[i], family, addr)) return true;
    if (n->allow_local) {
        refresh_local(n, now);
        for (int i = 0; i < n->nlocal; i++)
            if (in_prefix(&n->local[i], family, addr)) return true;
    }
    return false;
}

static void address_text(const struct sockaddr_storage *ss, char *out, size_t size)
{
    unsigned char addr[16];
    int family = sender_bytes(ss, addr);
    if (ss->ss_family == AF_UNIX) *out = '\0';   /* whip: the publisher's transport */
    else if (!inet_ntop(family, addr, out, (socklen_t)size)) snprintf(out, size, "?");
}

static bool same_sender(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
    if (a->ss_family != b->ss_family) return false;
    if (a->ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
        return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
    }
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port && memcmp(&x->sin6_addr, &y->sin6_addr, 16) == 0;
}

/* ---- the stream ---------------------------------------------------------- */

/* A datagram of the stream was taken: it is coming (again). */
static void taken(ae_netsrc *n, int64_t now)
{
    n->last_taken_us = now;
    atomic_store_explicit(&n->last_taken_atomic_us, now, memory_order_relaxed);
    if (!n->receiving) {
        n->receiving = true;
        n->io.state(n->io.ctx, true, NULL);
    }
}

/* Between datagrams: a stream that stopped coming is lost. */
static void check_silence(ae_netsrc *n, int64_t now)
{
    if (n->receiving && now - n->last_taken_us > SILENT_US) {
        n->receiving = false;
        n->io.state(n->io.ctx, false, "nothing received for a second");
    }
}

static void set_ratio(ae_netsrc *n, double correction)
{
    /* the sender's rate as taken, in whole Hz (21 ppm steps at 48 kHz): a
     * faster one gives fewer frames out. Whole rates keep speex's ratio
     * small (fractions of millions of phases crash it) */
    uint32_t in = (uint32_t)((double)n->s_rate * (1.0 + correction) + 0.5);
    if (in == n->ratio_num) return;
    n->ratio_num = in;
    speex_resampler_set_rate(n->resampler, in, (uint32_t)n->rate);
}

/* A new format or a new sender: the stream starts again. */
static bool restart_stream(ae_netsrc *n, int rate, int bits, int channels)
{
    if (n->resampler) speex_resampler_destroy(n->resampler);
    int err = 0;
    n->resampler = speex_resampler_init((spx_uint32_t)channels, (spx_uint32_t)rate,
                                        (spx_uint32_t)n->rate, RESAMPLER_QUALITY, &err);
    n->s_rate = rate;
    n->s_bits = bits;
    n->s_channels = channels;
    n->ncarry = 0;
    memset(n->last, 0, sizeof n->last);
    n->ratio_num = 0;
    n->error_avg = 0;
    if (!n->resampler) return false;
    speex_resampler_skip_zeros(n->resampler);
    set_ratio(n, 0.0);
    return true;
}

static float sample_at(const unsigned char *p, int bits, bool big_endian)
{
    if (big_endian) {
        if (bits == 16) return (float)(int16_t)(p[0] << 8 | p[1]) / 32768.0f;
        return (float)((int32_t)((uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
                                 (uint32_t)p[2] << 8) >> 8) / 8388608.0f;
    }
    switch (bits) {
    case 16: return (float)(int16_t)(p[0] | p[1] << 8) / 32768.0f;
    case 24: return (float)((int32_t)((uint32_t)p[0] << 8 | (uint32_t)p[1] << 16 |
                                      (uint32_t)p[2] << 24) >> 8) / 8388608.0f;
    default: return (float)(int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 |
                                     (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24) / 2147483648.0f;
    }
}

/* Steer the resampler by the reader's distance behind the newest frame. */
static void steer(ae_netsrc *n)
{
    int64_t buffered = n->io.buffered(n->io.ctx);
    double correction = 0.0;
    if (buffered < 0) {
        n->error_avg = 0;
    } else {
        /* averaged over packets: one packet's sawtooth is not drift */
        n->error_avg += ((double)(buffered - ae_netsrc_target_frames(n)) - n->error_avg) * 0.05;
        correction = n->error_avg / ((double)n->rate * STEER_S);
        if (correction > MAX_CORRECTION) correction = MAX_CORRECTION;
        if (correction < -MAX_CORRECTION) correction = -MAX_CORRECTION;
    }
    set_ratio(n, correction);
    pthread_mutex_lock(&n->lock);
    n->stats.buffered_ms = buffered < 0 ? -1.0 : (double)buffered * 1000.0 / n->rate;
    n->stats.correction_ppm = correction * 1e6;
    pthread_mutex_unlock(&n->lock);
}

static void count(ae_netsrc *n, uint64_t *counter, uint64_t by)
{
    pthread_mutex_lock(&n->lock);
    *counter += by;
    pthread_mutex_unlock(&n->lock);
}

/* n->in's first frames (the stream's channels): faded in after a gap,
 * resampled, laid out as the source's channels, written. */
static void take_frames(ae_netsrc *n, int frames, int64_t now)
{
    if (!n->resampler) return;   /* its making failed (no memory): the stream is dropped */
    int sch = n->s_channels, ch = n->channels;
    /* a buffer shorter than two packets runs dry between any two of them */
    atomic_store_explicit(&n->packet_target,
                          2 * (int64_t)n->packet_frames * n->rate / n->s_rate, memory_order_relaxed);
    for (int i = 0; i < frames && n->fade > 0; i++, n->fade--) {
        float g = 1.0f - (float)n->fade / FADE_FRAMES;
        for (int c = 0; c < sch; c++) n->in[i * sch + c] *= g;
    }
    if (frames > 0) memcpy(n->last, &n->in[(frames - 1) * sch], (size_t)sch * sizeof(float));
    /* as much as the output holds at a time: 8 kHz G.711 grows six times */
    const float *in = n->in, *mid = n->mid;
    for (spx_uint32_t left = (spx_uint32_t)frames; left > 0;) {
        spx_uint32_t in_len = left, out_len = MAX_OUT_FRAMES;
        speex_resampler_process_interleaved_float(n->resampler, in, &in_len, n->mid, &out_len);
        int out = (int)out_len;
        for (int i = 0; i < out; i++)
            for (int c = 0; c < ch; c++)
                n->out[i * ch + c] = sch == 1 ? mid[i] : c < sch ? mid[i * sch + c] : 0.0f;
        if (out > 0) n->io.write(n->io.ctx, n->out, out, now);
        if (in_len == 0) break;
        in += in_len * (spx_uint32_t)sch;
        left -= in_len;
    }
    steer(n);
}

/* Where packets were lost: the last frame held and faded out (no step to
 * silence, no click), silence, then a fade back in (take_frames). */
static void conceal(ae_netsrc *n, int64_t frames, int64_t now)
{
    if (frames > MAX_CONCEAL_FRAMES) frames = MAX_CONCEAL_FRAMES;
    int sch = n->s_channels;
    float from[AE_MAX_CHANNELS];
    memcpy(from, n->last, sizeof from);
    for (int64_t done = 0; done < frames;) {
        int chunk = frames - done < MAX_IN_FRAMES ? (int)(frames - done) : MAX_IN_FRAMES;
        memset(n->in, 0, (size_t)chunk * (size_t)sch * sizeof(float));
        for (int i = 0; i < chunk && done + i < FADE_FRAMES; i++) {
            float g = 1.0f - (float)(done + i + 1) / FADE_FRAMES;
            for (int c = 0; c < sch; c++) n->in[i * sch + c] = from[c] * g;
        }
        take_frames(n, chunk, now);
        done += chunk;
    }
    n->fade = FADE_FRAMES;
}

/* G.711 (ITU-T G.711's expansion): mu-law and A-law bytes to linear. */
static float ulaw(unsigned char u)
{
    u = (unsigned char)~u;
    int t = (((u & 0x0f) << 3) + 0x84) << ((u & 0x70) >> 4);
    return (float)((u & 0x80) ? 0x84 - t : t - 0x84) / 32768.0f;
}

static float alaw(unsigned char a)
{
    a ^= 0x55;
    int t = (a & 0x0f) << 4, segment = (a & 0x70) >> 4;
    t += segment ? 0x108 : 8;
    if (segment > 1) t <<= segment - 1;
    return (float)((a & 0x80) ? t : -t) / 32768.0f;
}

/* An Opus packet decoded (data NULL: a lost one concealed by the decoder;
 * fec: the lost one before data, from data's redundancy). */
static void take_opus(ae_netsrc *n, const unsigned char *data, int len, int fec, int64_t now)
{
    int frames = opus_decode_float(n->opus, data, data ? len : 0, n->in,
                                   data && !fec ? OPUS_MAX_FRAMES : n->packet_frames, fec);
    if (frames < 0) {
        count(n, &n->stats.malformed, 1);
        return;
    }
    if (data && !fec) n->packet_frames = frames;
    take_frames(n, frames, now);
}

/* One payload: whole frames (with the carry of a frame cut by the last one)
 * decoded, then taken. */
static void take_pcm(ae_netsrc *n, const unsigned char *pcm, int len, int64_t now)
{
    if (n->encoding == AE_RTP_OPUS) {
        take_opus(n, pcm, len, 0, now);
        return;
    }
    if (n->encoding == AE_RTP_PCMU || n->encoding == AE_RTP_PCMA) {
        int frames = len / n->s_channels;
        if (frames > MAX_IN_FRAMES) frames = MAX_IN_FRAMES;
        for (int i = 0; i < frames * n->s_channels; i++)
            n->in[i] = n->encoding == AE_RTP_PCMU ? ulaw(pcm[i]) : alaw(pcm[i]);
        n->packet_frames = frames;
        take_frames(n, frames, now);
        return;
    }
    int width = n->s_bits / 8, stride = width * n->s_channels;
    int frames = 0;
    int pos = 0;
    while (frames < MAX_IN_FRAMES) {
        const unsigned char *frame;
        if (n->ncarry > 0) {
            int need = stride - n->ncarry;
            if (len - pos < need) break;
            memcpy(n->carry + n->ncarry, pcm + pos, (size_t)need);
            pos += need;
            n->ncarry = 0;
            frame = n->carry;
        } else {
            if (len - pos < stride) break;
            frame = pcm + pos;
            pos += stride;
        }
        for (int c = 0; c < n->s_channels; c++)
            n->in[frames * n->s_channels + c] = sample_at(frame + c * width, n->s_bits,
                                                          n->big_endian);
        frames++;
    }
    if (len - pos > 0 && len - pos < stride) {
        memcpy(n->carry, pcm + pos, (size_t)(len - pos));
        n->ncarry = len - pos;
    }
    n->packet_frames = frames;
    take_frames(n, frames, now);
}

/* ---- RTP: order, loss, restarts ------------------------------------------ */

static void drop_held(ae_netsrc *n)
{
    for (int i = 0; i < REORDER_SLOTS; i++) n->held[i].used = false;
    n->nheld = 0;
}

/* Play the held packet with this sequence number, if there is one. */
static bool play_held(ae_netsrc *n, uint16_t seq, int64_t now)
{
    for (int i = 0; i < REORDER_SLOTS; i++) {
        held_packet *h = &n->held[i];
        if (h->used && h->seq == seq) {
            take_pcm(n, h->data, h->len, now);
            h->used = false;
            n->nheld--;
            return true;
        }
    }
    return false;
}

/* Play the held packets that are next in order. */
static void drain(ae_netsrc *n, int64_t now)
{
    while (n->nheld > 0 && play_held(n, n->expected, now)) n->expected++;
}

/* Packets that never came, before next (the one after them, if here):
 * Opus's decoder conceals them, the last from next's redundancy (FEC);
 * PCM becomes silence and then fades back in. */
static void lose(ae_netsrc *n, int packets, const unsigned char *next, int next_len,
                 int64_t now)
{
    count(n, &n->stats.lost, (uint64_t)packets);
    if (n->encoding != AE_RTP_OPUS) {
        conceal(n, (int64_t)packets * n->packet_frames, now);
        return;
    }
    for (int i = 0; i < packets && n->packet_frames > 0; i++) {
        bool last = i == packets - 1 && next;
        take_opus(n, last ? next : NULL, last ? next_len : 0, last, now);
    }
}

/* How many later packets may come before a missing one is lost: up to
 * REORDER_WAIT, as long as waiting for them takes at most half the buffer
 * (1 ms AES67 packets: 3; 20 ms Opus packets: 1). */
static int reorder_wait(const ae_netsrc *n)
{
    int64_t half = ae_netsrc_target_frames(n) * n->s_rate / n->rate / 2;
    int64_t packets = n->packet_frames > 0 ? half / n->packet_frames : REORDER_WAIT;
    return packets < 1 ? 1 : packets > REORDER_WAIT ? REORDER_WAIT : (int)packets;
}

/* The expected packet did not come while later ones did (reorder_wait of
 * them): it is lost (and any before the earliest held one). */
static void skip_lost(ae_netsrc *n, int64_t now)
{
    int gap = SEQ_JUMP;
    const held_packet *next = NULL;
    for (int i = 0; i < REORDER_SLOTS; i++) {
        int d = (int16_t)(uint16_t)(n->held[i].seq - n->expected);
        if (n->held[i].used && d > 0 && d < gap) {
            gap = d;
            next = &n->held[i];
        }
    }
    lose(n, gap, next ? next->data : NULL, next ? next->len : 0, now);
    n->expected = (uint16_t)(n->expected + gap);
    drain(n, now);
}

static void take_rtp(ae_netsrc *n, const unsigned char *d, ssize_t len,
                     const struct sockaddr_storage *from, int64_t now)
{
    /* RFC 3550 section 5.1: version 2, CSRCs, an extension, padding */
    if (len < 12 || (d[0] >> 6) != 2) goto malformed;
    ssize_t off = 12 + 4 * (d[0] & 0x0f), end = len;
    if (d[0] & 0x10) {
        if (len < off + 4) goto malformed;
        off += 4 + 4 * (d[off + 2] << 8 | d[off + 3]);
    }
    if (d[0] & 0x20) end -= d[len - 1];
    if (off >= end || (d[0] & 0x20 && d[len - 1] == 0)) goto malformed;
    if ((d[1] & 0x7f) != n->payload_type) {
        count(n, &n->stats.other_program, 1);
        return;
    }
    int plen = (int)(end - off);
    bool pcm = n->encoding == AE_RTP_L16 || n->encoding == AE_RTP_L24;
    if (pcm && plen % (n->s_bits / 8 * n->s_channels) != 0)
        goto malformed;   /* L16 and L24 carry whole frames */
    uint16_t seq = (uint16_t)(d[2] << 8 | d[3]);
    uint32_t ssrc = (uint32_t)d[8] << 24 | (uint32_t)d[9] << 16 | (uint32_t)d[10] << 8 | d[11];
    int ahead = (int16_t)(uint16_t)(seq - n->expected);
    bool restart = !n->have_ssrc || ssrc != n->ssrc || ahead >= SEQ_JUMP || ahead <= -SEQ_JUMP;
    if (restart) {
        if (n->have_ssrc) count(n, &n->stats.restarts, 1);
        n->have_ssrc = true;
        n->ssrc = ssrc;
        n->expected = seq;
        n->from = *from;
        drop_held(n);
        if (n->packet_frames) n->fade = FADE_FRAMES;
        if (n->opus) opus_decoder_ctl(n->opus, OPUS_RESET_STATE);
        ahead = 0;
    }
    taken(n, now);
    pthread_mutex_lock(&n->lock);
    n->stats.packets++;
    address_text(from, n->stats.sender, sizeof n->stats.sender);
    pthread_mutex_unlock(&n->lock);
    uint32_t ts = (uint32_t)d[4] << 24 | (uint32_t)d[5] << 16 | (uint32_t)d[6] << 8 | d[7];
    if (ahead == 0 && !restart && n->last_arrival_us) {
        /* interarrival jitter: the arrival spacing against the timestamps' */
        double transit = (double)(now - n->last_arrival_us) * n->s_rate / 1e6 -
                         (double)(int32_t)(ts - n->last_ts);
        n->jitter += (fabs(transit) - n->jitter) / 16.0;
        pthread_mutex_lock(&n->lock);
        n->stats.jitter_ms = n->jitter * 1000.0 / n->s_rate;
        pthread_mutex_unlock(&n->lock);
    }
    if (ahead == 0) {
        n->last_ts = ts;
        n->last_arrival_us = now;
    }
    if (ahead < 0) {                               /* late, or a repeat */
        count(n, &n->stats.late, 1);
        return;
    }
    if (ahead == 0) {
        if (n->nheld > 0) count(n, &n->stats.reordered, 1);   /* later ones came first */
        take_pcm(n, d + off, plen, now);
        n->expected++;
        drain(n, now);
        return;
    }
    for (int i = 0; i < REORDER_SLOTS; i++) {
        if (n->held[i].used && n->held[i].seq == seq) {
            count(n, &n->stats.late, 1);           /* held already */
            return;
        }
    }
    if (ahead >= REORDER_SLOTS) {   /* too far ahead to wait for what is missing */
        for (; n->expected != seq; n->expected++) {
            if (!play_held(n, n->expected, now))
                lose(n, 1, (uint16_t)(n->expected + 1) == seq ? d + off : NULL,
                     (int)(end - off), now);
        }
        take_pcm(n, d + off, plen, now);
        n->expected++;
        drain(n, now);
        return;
    }
    for (int i = 0; i < REORDER_SLOTS; i++) {
        held_packet *h = &n->held[i];
        if (!h->used) {
            h->used = true;
            h->seq = seq;
            h->len = plen;
            memcpy(h->data, d + off, (size_t)plen);
            n->nheld++;
            break;
        }
    }
    if (n->nheld >= reorder_wait(n)) skip_lost(n, now);
    return;
malformed:
    count(n, &n->stats.malformed, 1);
}

static void take_datagram(ae_netsrc *n, const unsigned char *d, ssize_t len,
                          const struct sockaddr_storage *from, int64_t now)
{
    if (!n->fed && !allowed(n, from, now)) {
        pthread_mutex_lock(&n->lock);
        n->stats.refused++;
        address_text(from, n->stats.refused_from, sizeof n->stats.refused_from);
        pthread_mutex_unlock(&n->lock);
        return;
    }
    if (n->kind == AE_SOURCE_RTP) {
        take_rtp(n, d, len, from, now);
        return;
    }
    const unsigned char *h;
    if (len == SCREAM_PACKET && !n->per_process) {
        h = d;
    } else if (len == PER_PROCESS_PACKET && n->per_process) {
        if (memcmp(d, n->program, AE_SCREAM_PROGRAM_LEN) != 0) {
            pthread_mutex_lock(&n->lock);
            n->stats.other_program++;
            memcpy(n->stats.program_refused, d, AE_SCREAM_PROGRAM_LEN);
            n->stats.program_refused[AE_SCREAM_PROGRAM_LEN] = '\0';
            pthread_mutex_unlock(&n->lock);
            return;
        }
        h = d + AE_SCREAM_PROGRAM_LEN;
    } else {
        if (len == PER_PROCESS_PACKET || len == SCREAM_PACKET) {
            count(n, &n->stats.other_program, 1);
            return;
        }
        goto malformed;
    }
    /* rate: bit 7 picks 44.1 kHz over 48 kHz, the rest multiplies it */
    int mult = h[0] & 0x7f, bits = h[1], channels = h[2];
    int rate = ((h[0] & 0x80) ? 44100 : 48000) * mult;
    if (mult < 1 || mult > 4 || (bits != 16 && bits != 24 && bits != 32) || channels < 1 ||
        channels > AE_MAX_CHANNELS)
        goto malformed;
    bool restart = rate != n->s_rate || bits != n->s_bits || channels != n->s_channels;
    if (restart || !same_sender(from, &n->from)) {
        if (restart && n->s_rate) {
            count(n, &n->stats.format_changes, 1);
        }
        n->from = *from;
        if (!restart_stream(n, rate, bits, channels)) goto malformed;
    }
    take_pcm(n, h + SCREAM_HEADER, SCREAM_PAYLOAD, now);
    taken(n, now);
    pthread_mutex_lock(&n->lock);
    n->stats.packets++;
    n->stats.rate = rate;
    n->stats.bits = bits;
    n->stats.channels = channels;
    address_text(from, n->stats.sender, sizeof n->stats.sender);
    pthread_mutex_unlock(&n->lock);
    return;
malformed:
    count(n, &n->stats.malformed, 1);
}

static void *receiver_main(void *arg)
{
    ae_netsrc *n = arg;
    unsigned char buf[MAX_DATAGRAM];
    struct pollfd fds[2] = {{.fd = n->sock, .events = POLLIN}, {.fd = n->wake, .events = POLLIN}};
    n->io.state(n->io.ctx, false, "nothing received yet");
    for (;;) {
        if (poll(fds, 2, POLL_MS) < 0 && errno != EINTR) break;
        if (fds[1].revents) break;
        check_silence(n, ae_now_us());
        for (int i = 0; i < BURST; i++) {
            struct sockaddr_storage from;
            socklen_t flen = sizeof from;
            ssize_t len = recvfrom(n->sock, buf, sizeof buf, MSG_DONTWAIT | MSG_TRUNC,
                                   (struct sockaddr *)&from, &flen);
            if (len < 0) break;
            if (len > (ssize_t)sizeof buf) len = 0;   /* cut short: not ours */
            take_datagram(n, buf, len, &from, ae_now_us());
        }
    }
    ae_thread_exiting();
    return NULL;
}

/* ---- the socket ---------------------------------------------------------- */

static int open_socket(ae_netsrc *n, const ae_source_config *cfg)
{
    const char *address = cfg->address && *cfg->address ? cfg->address : NULL;
    struct sockaddr_in6 a6 = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)cfg->port)};
    struct sockaddr_in a4 = {.sin_family = AF_INET, .sin_port = htons((uint16_t)cfg->port)};
    int family = AF_INET6;
    if (address && inet_pton(AF_INET, address, &a4.sin_addr) == 1) family = AF_INET;
    else if (address && inet_pton(AF_INET6, address, &a6.sin6_addr) != 1)
        return ae_fail(AE_ERR_INVALID, "%.60s is not an IP address", address);
    unsigned ifindex = 0;
    if (cfg->interface && *cfg->interface && !(ifindex = if_nametoindex(cfg->interface)))
        return ae_fail(AE_ERR_NETWORK, "no network interface %.40s", cfg->interface);
    int fd = socket(family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return ae_fail(AE_ERR_NETWORK, "socket: %s", strerror(errno));
    int one = 1, zero = 0;
    bool multicast = family == AF_INET ? IN_MULTICAST(ntohl(a4.sin_addr.s_addr))
                                       : (address && IN6_IS_ADDR_MULTICAST(&a6.sin6_addr));
    /* a group's port is shared with other receivers of it; a unicast port
     * is this source's alone (a second taker would get half the datagrams) */
    if (multicast) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (family == AF_INET6 && !address) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
    int rcvbuf = 1 << 20;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    if (multicast && family == AF_INET6) a6.sin6_scope_id = ifindex;
    int rc = family == AF_INET ? bind(fd, (struct sockaddr *)&a4, sizeof a4)
                               : bind(fd, (struct sockaddr *)&a6, sizeof a6);
    if (rc != 0) {
        int err = errno;
        close(fd);
        return ae_fail(err == EADDRINUSE ? AE_ERR_BUSY : AE_ERR_NETWORK,
                       "cannot take UDP port %d on %.60s: %s", cfg->port, address ? address : "*",
                       strerror(err));
    }
    if (multicast) {
        if (family == AF_INET) {
            struct ip_mreqn m = {.imr_multiaddr = a4.sin_addr, .imr_ifindex = (int)ifindex};
            rc = setsockopt(fd, IPPROTO_IP, IP_ADD_MEMBERSHIP, &m, sizeof m);
            /* only the group's traffic, not every group this port hears */
            setsockopt(fd, IPPROTO_IP, IP_MULTICAST_ALL, &zero, sizeof zero);
        } else {
            struct ipv6_mreq m = {.ipv6mr_multiaddr = a6.sin6_addr, .ipv6mr_interface = ifindex};
            rc = setsockopt(fd, IPPROTO_IPV6, IPV6_JOIN_GROUP, &m, sizeof m);
            setsockopt(fd, IPPROTO_IPV6, IPV6_MULTICAST_ALL, &zero, sizeof zero);
        }
        if (rc != 0) {
            int err = errno;
            close(fd);
            return ae_fail(AE_ERR_NETWORK, "cannot join %.60s%s%.40s: %s", address,
                           ifindex ? " on " : "", ifindex ? cfg->interface : "", strerror(err));
        }
    }
    n->sock = fd;
    return AE_OK;
}

/* A whip source's socket pair: the thread reads one end, publishers write
 * duplicates of the other. */
static int open_feed(ae_netsrc *n)
{
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0, fds) != 0)
        return ae_fail(AE_ERR_NETWORK, "socketpair: %s", strerror(errno));
    int rcvbuf = 1 << 18;
    setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    n->sock = fds[0];
    n->feed = fds[1];
    return AE_OK;
}

int ae_netsrc_open(const ae_source_config *cfg, int rate, int channels, int rt_priority,
                   ae_netsrc_io io, ae_netsrc **out)
{
    *out = NULL;
    if (cfg->kind != AE_SOURCE_SCREAM && cfg->kind != AE_SOURCE_RTP &&
        cfg->kind != AE_SOURCE_WHIP)
        return ae_fail(AE_ERR_INVALID, "not a network source");
    ae_source_config whip;
    if (cfg->kind == AE_SOURCE_WHIP) {
        /* what the publisher's answer agreed: Opus, as the transport rewrites it */
        whip = (ae_source_config){.kind = AE_SOURCE_RTP, .port = 1, .latency_ms = cfg->latency_ms,
                                  .rtp_encoding = AE_RTP_OPUS, .payload_type = AE_NETSRC_FED_PT,
                                  .clock_rate = 48000, .stream_channels = 2};
        cfg = &whip;
    }
    bool fed = cfg == &whip;
    if (cfg->kind == AE_SOURCE_RTP) {
        if (cfg->rtp_encoding < AE_RTP_L16 || cfg->rtp_encoding > AE_RTP_PCMA)
            return ae_fail(AE_ERR_INVALID, "unknown RTP encoding %d", cfg->rtp_encoding);
        int e = cfg->rtp_encoding;
        if ((e == AE_RTP_OPUS &&
             (cfg->clock_rate != 48000 || cfg->stream_channels > AE_OPUS_MAX_CHANNELS)) ||
            ((e == AE_RTP_PCMU || e == AE_RTP_PCMA) && cfg->clock_rate != 8000) ||
            ((e == AE_RTP_L16 || e == AE_RTP_L24) && cfg->clock_rate < 44100))
            return ae_fail(AE_ERR_INVALID, "%s is not carried at %d Hz with %d channels",
                           e == AE_RTP_OPUS ? "Opus" : e == AE_RTP_PCMU ? "PCMU" :
                           e == AE_RTP_PCMA ? "PCMA" : "L16/L24", cfg->clock_rate,
                           cfg->stream_channels);
        if (!AE_IN_RANGE(cfg->payload_type, AE_SOURCE_PAYLOAD_TYPE))
            return ae_fail(AE_ERR_INVALID, "payload type must be %d..%d, not %d",
                           AE_SOURCE_PAYLOAD_TYPE_MIN, AE_SOURCE_PAYLOAD_TYPE_MAX,
                           cfg->payload_type);
        if (!AE_ONE_OF(cfg->clock_rate, AE_SOURCE_CLOCK_RATE))
            return ae_fail(AE_ERR_INVALID, "a clock rate of %d Hz is not one taken",
                           cfg->clock_rate);
        if (!AE_IN_RANGE(cfg->stream_channels, AE_SOURCE_STREAM_CHANNELS))
            return ae_fail(AE_ERR_INVALID, "an RTP stream has %d..%d channels, not %d",
                           AE_SOURCE_STREAM_CHANNELS_MIN, AE_SOURCE_STREAM_CHANNELS_MAX,
                           cfg->stream_channels);
    }
    if (!AE_IN_RANGE(cfg->port, AE_SOURCE_PORT))
        return ae_fail(AE_ERR_INVALID, "port must be %d..%d, not %d", AE_SOURCE_PORT_MIN,
                       AE_SOURCE_PORT_MAX, cfg->port);
    int latency = cfg->latency_ms ? cfg->latency_ms : 20;
    if (!AE_IN_RANGE(latency, AE_SOURCE_LATENCY_MS))
        return ae_fail(AE_ERR_INVALID, "latency must be %d..%d ms, not %d", AE_SOURCE_LATENCY_MS_MIN,
                       AE_SOURCE_LATENCY_MS_MAX, latency);
    const char *program = cfg->program ? cfg->program : "";
    if (strlen(program) > AE_SCREAM_PROGRAM_LEN)
        return ae_fail(AE_ERR_INVALID, "a program tag has at most %d bytes",
                       AE_SCREAM_PROGRAM_LEN);
    ae_netsrc *n = calloc(1, sizeof *n);
    if (!n) return ae_fail(AE_ERR_NOMEM, "out of memory");
    n->rate = rate;
    n->channels = channels;
    n->target = (int64_t)rate * latency / 1000;
    n->io = io;
    n->sock = n->wake = n->feed = -1;
    n->fed = fed;
    strncpy(n->program, program, sizeof n->program);   /* NUL-padded, as senders tag */
    n->kind = cfg->kind;
    n->per_process = *program != '\0';
    n->payload_type = cfg->payload_type;
    if (cfg->interface) snprintf(n->ifname, sizeof n->ifname, "%s", cfg->interface);
    n->stats.buffered_ms = -1.0;
    pthread_mutex_init(&n->lock, NULL);
    int rc = parse_allow(n, cfg->allow_from);
    if (rc == AE_OK && n->kind == AE_SOURCE_RTP) {
        /* the SDP fixes the format: network byte order */
        n->big_endian = true;
        n->encoding = cfg->rtp_encoding;
        int err = OPUS_OK;
        if (n->encoding == AE_RTP_OPUS &&
            !(n->opus = opus_decoder_create(48000, cfg->stream_channels, &err)))
            rc = ae_fail(AE_ERR_CODEC, "no Opus decoder: %s", opus_strerror(err));
        /* the samples' width on the wire (Opus: none, it is coded) */
        int bits = n->encoding == AE_RTP_L24 ? 24 : n->encoding == AE_RTP_L16 ? 16 :
                   n->encoding == AE_RTP_OPUS ? 0 : 8;
        if (rc != AE_OK) {
        } else if (!restart_stream(n, cfg->clock_rate, bits, cfg->stream_channels))
            rc = ae_fail(AE_ERR_NOMEM, "no resampler for %d Hz", cfg->clock_rate);
        else {
            n->stats.rate = n->s_rate;
            n->stats.bits = n->s_bits;
            n->stats.channels = n->s_channels;
        }
    }
    if (rc == AE_OK) rc = fed ? open_feed(n) : open_socket(n, cfg);
    if (rc == AE_OK && (n->wake = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) < 0)
        rc = ae_fail(AE_ERR_NETWORK, "eventfd: %s", strerror(errno));
    if (rc == AE_OK) {
        rc = ae_thread_start(&n->thread, "ae-netsrc", receiver_main, n, rt_priority);
        n->started = rc == AE_OK;
    }
    if (rc != AE_OK) {
        ae_netsrc_close(n);
        return rc;
    }
    *out = n;
    return AE_OK;
}

void ae_netsrc_close(ae_netsrc *n)
{
    if (!n) return;
    if (n->started) {
        uint64_t one = 1;
        ssize_t w = write(n->wake, &one, sizeof one);
        (void)w;
        pthread_join(n->thread, NULL);
    }
    if (n->sock >= 0) close(n->sock);
    if (n->feed >= 0) close(n->feed);
    if (n->wake >= 0) close(n->wake);
    if (n->resampler) speex_resampler_destroy(n->resampler);
    if (n->opus) opus_decoder_destroy(n->opus);
    pthread_mutex_destroy(&n->lock);
    free(n);
}

int ae_netsrc_feed_fd(ae_netsrc *n)
{
    return n && n->feed >= 0 ? fcntl(n->feed, F_DUPFD_CLOEXEC, 0) : -1;
}

void ae_netsrc_stats(ae_netsrc *n, ae_net_source_stats *out)
{
    pthread_mutex_lock(&n->lock);
    *out = n->stats;
    pthread_mutex_unlock(&n->lock);
    out->receiving = ae_now_us() - atomic_load(&n->last_taken_atomic_us) <= SILENT_US;
}

int64_t ae_netsrc_target_frames(const ae_netsrc *n)
{
    int64_t packets = atomic_load_explicit(&n->packet_target, memory_order_relaxed);
    return packets > n->target ? packets : n->target;
}
