/* ae_webrtc.c: the webrtcbin listener transport, on the fan-out's pipeline
 * (ae_fanout.c).
 *
 *   fan-out --Opus--> appsrc --> tee -[gate]-> rtpopuspay pt=<offer's> --> webrtcbin (listener 1)
 *                                    \-[gate]-> rtpopuspay pt=<offer's> --> webrtcbin (listener N)
 *
 * The gate (a probe on the tee pad) drops packets until the listener's DTLS
 * is up and its certificate is the offer's: webrtcbin blocks its input
 * until then, which would stall the tee. Opus is encoded once per sink;
 * each listener only adds a payloader (its own, since browsers pick
 * different payload types) and a webrtcbin. Every GStreamer control call
 * runs on the engine's glib thread.
 *
 * A publication (WHIP out, ae_wr_create_offer) is the same branch the other
 * way round in signalling: webrtcbin offers the sink's Opus (full ICE, the
 * controlling agent, so it reaches ICE-lite servers), the offer goes out
 * with every candidate (AE_EVENT_OFFER_READY), the server's answer comes
 * back through ae_wr_set_answer and its fingerprint is what DTLS must meet. */
#define _GNU_SOURCE
#define GST_USE_UNSTABLE_API /* webrtcbin's library API is marked unstable */
#include "ae_webrtc.h"
#include "ae_stun.h"

#include <arpa/inet.h>
#include <gst/sdp/sdp.h>
#include <gst/webrtc/webrtc.h>
#include <ifaddrs.h>
#include <malloc.h>
#include <net/if.h>
#include <netinet/in.h>
#include <nice/agent.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define GLIB_CALL_TIMEOUT_MS 5000
#define MAX_REMOTE_CANDIDATES 8    /* kept per m-line, from the offer and trickled together */
#define CHECK_PACING_MS 50         /* Ta, RFC 8445 14.2's default (libnice's is 20) */

struct ae_wr {
    const ae_wr_env *env;
    ae_sink *sink;
    ae_fanout *fanout;                   /* the sink's */
    uint64_t id;                         /* names it in events */
    _Atomic int refs;
    atomic_bool closing;                 /* set (ae_wr_close) when it is being removed */
    char *offer;
    char *fmtp;                          /* the offer's Opus parameters, or NULL */
    char **ice_servers;                  /* a publication's STUN/TURN URIs, or NULL */
    int pt, mline;
    ae_fingerprint fp[AE_OFFER_MAX_FINGERPRINTS]; /* the offer's, for its DTLS certificate */
    int nfp;
    atomic_bool cert_refused;            /* its certificate is not the offer's */
    bool offering;                       /* a publication: we offer, the server answers */
    GstElement *pay, *webrtc;
    GstPad *tee_pad;
    gulong gate_probe;
    GstPad *rx_pad;                      /* nicesrc's, with our probe on it */
    gulong rx_probe;
    GSource *gather_timeout;
    /* negotiation progress, glib thread (answered is also read elsewhere) */
    bool local_set, gathered;
    atomic_bool answered;
    /* the peer's candidates handed to webrtcbin, per m-line (glib thread) */
    uint8_t remote_candidates[AE_OFFER_MAX_MLINES];
    /* candidates gathered locally, for the answer (webrtcbin's thread) */
    GMutex cand_lock;
    GPtrArray *candidates;               /* "mline\ncandidate:..." strings */
    /* statistics, written by streaming threads */
    _Atomic int state;
    atomic_bool media_open;              /* DTLS is up: let media through */
    _Atomic int64_t last_rx_us;
    _Atomic uint64_t packets_sent, bytes_sent;
    _Atomic uint64_t last_in_offset;
    atomic_bool rtp_base_known;
    uint32_t rtp_base_ts;
    uint64_t rtp_base_offset;
    /* the peer's receiver reports, from webrtcbin's get-stats (asked for at
     * most once a second, when someone reads the stats) */
    pthread_mutex_t health_lock;
    uint64_t health_reports;
    double fraction_lost, jitter_ms, rtt_ms;
    int64_t packets_lost;
    _Atomic int64_t health_asked_us;
};

static ae_wr *listener_ref(ae_wr *l)
{
    atomic_fetch_add(&l->refs, 1);
    return l;
}

static void listener_unref(gpointer p)
{
    ae_wr *l = p;
    if (atomic_fetch_sub(&l->refs, 1) != 1) return;
    if (l->candidates) {
        g_ptr_array_unref(l->candidates);
        g_mutex_clear(&l->cand_lock);
    }
    pthread_mutex_destroy(&l->health_lock);
    free(l->offer);
    free(l->fmtp);
    g_strfreev(l->ice_servers);
    free(l);
}

/* ---- events from a listener --------------------------------------------- */

static void post_listener(ae_wr *l, int type, const char *text, int mline, int state,
                          int code)
{
    ae_event ev = {0};
    ev.type = type;
    ev.listener_id = l->id;
    ev.text = text;
    ev.mline = mline;
    ev.state = state;
    ev.code = code;
    ae_post_unless(l->env->events, &ev, &l->closing);
}

static void answer_failed(ae_wr *l, int code, const char *why)
{
    if (l->answered) {
        /* a publication whose answer came and was refused: it has failed */
        if (l->offering)
            post_listener(l, AE_EVENT_LISTENER_STATE, why, 0, AE_LISTENER_FAILED, code);
        return;
    }
    l->answered = true;
    post_listener(l, AE_EVENT_ANSWER_FAILED, why, 0, 0, code);
}

/* Run fn on the glib thread with a reference to the listener. */
static void invoke(ae_wr *l, GSourceFunc fn)
{
    g_main_context_invoke_full(l->env->glib->ctx, G_PRIORITY_DEFAULT, fn, listener_ref(l),
                               listener_unref);
}

/* ---- probes: what leaves and what arrives ------------------------------- */

static void count_sent(ae_wr *l, GstBuffer *buf)
{
    GstMapInfo map;
    if (!gst_buffer_map(buf, &map, GST_MAP_READ)) return;
    const guint8 *b = map.data;
    /* SRTP keeps the RTP header in clear: RTP version 2 and our payload
     * type, not RTCP (packet types 192..223 in the second byte). */
    if (map.size >= 12 && (b[0] >> 6) == 2 && !(b[1] >= 192 && b[1] <= 223) &&
        (b[1] & 0x7f) == l->pt) {
        atomic_fetch_add(&l->packets_sent, 1);
        atomic_fetch_add(&l->bytes_sent, map.size);
        atomic_fetch_add(&l->fanout->packets_out, 1);
        if (atomic_load(&l->rtp_base_known)) {
            uint32_t ts = (uint32_t)b[4] << 24 | (uint32_t)b[5] << 16 | (uint32_t)b[6] << 8 | b[7];
            uint64_t offset = l->rtp_base_offset + (uint32_t)(ts - l->rtp_base_ts);
            ae_fanout *k = l->fanout;
            uint64_t index = offset / (uint64_t)k->frame_samples;
            if (k->frame_index_at[index % AE_FRAME_RING] == index)
                ae_fanout_record_latency(k, ae_now_us() - k->frame_capture_us[index % AE_FRAME_RING]);
        }
    }
    gst_buffer_unmap(buf, &map);
}

static gboolean count_sent_in_list(GstBuffer **buf, guint idx, gpointer data)
{
    (void)idx;
    count_sent(data, *buf);
    return TRUE;
}

static GstPadProbeReturn on_sending(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    (void)pad;
    if (info->type & GST_PAD_PROBE_TYPE_BUFFER)
        count_sent(data, GST_PAD_PROBE_INFO_BUFFER(info));
    else if (info->type & GST_PAD_PROBE_TYPE_BUFFER_LIST)
        gst_buffer_list_foreach(GST_PAD_PROBE_INFO_BUFFER_LIST(info), count_sent_in_list, data);
    return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn on_received(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    (void)pad;
    (void)info;
    ae_wr *l = data;
    atomic_store(&l->last_rx_us, ae_now_us());
    return GST_PAD_PROBE_OK;
}

/* The payloader's input offset, and on its first output packet the pairing
 * of RTP timestamp and sample offset that maps packets back to frames. */
static GstPadProbeReturn on_pay_in(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    (void)pad;
    ae_wr *l = data;
    GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
    if (buf) atomic_store(&l->last_in_offset, GST_BUFFER_OFFSET(buf));
    return GST_PAD_PROBE_OK;
}

static GstPadProbeReturn on_pay_out(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    (void)pad;
    ae_wr *l = data;
    GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
    GstMapInfo map;
    if (!buf || !gst_buffer_map(buf, &map, GST_MAP_READ)) return GST_PAD_PROBE_OK;
    if (map.size >= 12) {
        l->rtp_base_ts = (uint32_t)map.data[4] << 24 | (uint32_t)map.data[5] << 16 |
                         (uint32_t)map.data[6] << 8 | map.data[7];
        l->rtp_base_offset = atomic_load(&l->last_in_offset);
        atomic_store(&l->rtp_base_known, true);
    }
    gst_buffer_unmap(buf, &map);
    return GST_PAD_PROBE_REMOVE;
}

static GstPadProbeReturn gate_until_connected(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    (void)pad;
    (void)info;
    ae_wr *l = data;
    return atomic_load(&l->media_open) ? GST_PAD_PROBE_OK : GST_PAD_PROBE_DROP;
}

/* webrtcbin (1.22) accepts any peer certificate; the offer's a=fingerprint
 * is what vouches for it, so check it before media flows. */
static bool peer_certificate_matches(ae_wr *l)
{
    GstWebRTCRTPTransceiver *trans = NULL;
    g_signal_emit_by_name(l->webrtc, "get-transceiver", 0, &trans);
    GstWebRTCRTPSender *sender = NULL;
    GstWebRTCDTLSTransport *dtls = NULL;
    char *pem = NULL;
    if (trans) g_object_get(trans, "sender", &sender, NULL);
    if (sender) g_object_get(sender, "transport", &dtls, NULL);
    if (dtls) g_object_get(dtls, "remote-certificate", &pem, NULL);
    bool ok = false;
    if (pem) {
        BIO *bio = BIO_new_mem_buf(pem, -1);
        X509 *cert = bio ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
        unsigned char *der = NULL;
        int len = cert ? i2d_X509(cert, &der) : 0;
        ok = len > 0 && ae_cert_matches(l->fp, l->nfp, der, len);
        OPENSSL_free(der);
        X509_free(cert);
        BIO_free(bio);
        ERR_clear_error();
    }
    g_free(pem);
    if (dtls) gst_object_unref(dtls);
    if (sender) gst_object_unref(sender);
    if (trans) gst_object_unref(trans);
    return ok;
}

static void on_peer_connection_state(GObject *obj, GParamSpec *ps, gpointer data)
{
    (void)ps;
    ae_wr *l = data;
    GstWebRTCPeerConnectionState s;
    g_object_get(obj, "connection-state", &s, NULL);
    bool open = s == GST_WEBRTC_PEER_CONNECTION_STATE_CONNECTED;
    if (open && !atomic_load(&l->cert_refused) && !peer_certificate_matches(l)) {
        atomic_store(&l->cert_refused, true);
        atomic_store(&l->state, AE_LISTENER_FAILED);
        post_listener(l, AE_EVENT_LISTENER_STATE, NULL, 0, AE_LISTENER_FAILED, 0);
    }
    atomic_store(&l->media_open, open && !atomic_load(&l->cert_refused));
}

static void on_deep_element_added(GstBin *bin, GstBin *sub, GstElement *el, gpointer data)
{
    (void)bin;
    (void)sub;
    ae_wr *l = data;
    GstElementFactory *f = gst_element_get_factory(el);
    const char *name = f ? GST_OBJECT_NAME(f) : "";
    if (!strcmp(name, "nicesink")) {
        /* Packets are paced by the mixer already; a clock-synced sink would
         * hold each one back by the pipeline latency. Send at once. */
        g_object_set(el, "sync", FALSE, "async", FALSE, NULL);
        GstPad *pad = gst_element_get_static_pad(el, "sink");
        gst_pad_add_probe(pad, GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_BUFFER_LIST,
                          on_sending, listener_ref(l), listener_unref);
        gst_object_unref(pad);
    } else if (!strcmp(name, "queue")) {
        /* webrtcbin's own send queue already puts a thread between the tee
         * and the network; leaky and short, a stalled peer loses its own
         * packets instead of holding up the tee. */
        g_object_set(el, "leaky", 2 /* downstream */, "max-size-buffers", 16u,
                     "max-size-bytes", 0u, "max-size-time", (guint64)0, "silent", TRUE, NULL);
    } else if (!strcmp(name, "nicesrc") && !l->rx_pad) {
        /* Kept so detach can take the probe (and its reference to us) off
         * at once, rather than whenever webrtcbin frees its nicesrc. */
        l->rx_pad = gst_element_get_static_pad(el, "src");
        l->rx_probe = gst_pad_add_probe(l->rx_pad,
                                        GST_PAD_PROBE_TYPE_BUFFER | GST_PAD_PROBE_TYPE_BUFFER_LIST,
                                        on_received, listener_ref(l), listener_unref);
    }
}

/* ---- the peer's candidates ------------------------------------------------ */

/* webrtcbin sends connectivity checks to every candidate it is given (an
 * offer with 200 made the box send 296 Binding requests to 100 of them, 50
 * a second, measured), so the addresses an offer or a PATCH names are checked before
 * any packet leaves: UDP (TCP only with ICE-TCP on), a port a peer's agent can
 * have bound (1024 and up), never an address no peer has: unspecified,
 * "this network" (0/8), multicast, broadcast (255.255.255.255, an
 * interface's), the reserved 240/4, link-local (169.254/16, fe80::/10:
 * only meaningful on one link, which SDP cannot name, and never one of our
 * own candidates), nor one of the box's own addresses or loopback: checks
 * aimed at the box itself. Loopback (the box's own ones included) is kept
 * when the engine's own ICE addresses are loopback: peer and box on one
 * machine, as in the tests. A host name is no address (the web layer drops
 * them already). At most MAX_REMOTE_CANDIDATES per m-line are kept, from
 * the offer and trickled together; the peer's own checks still reach us
 * from wherever it is (peer-reflexive), so a real peer loses nothing. */
static bool loopback_ip(int family, const unsigned char *ip)
{
    return family == AF_INET ? ip[0] == 127
                             : IN6_IS_ADDR_LOOPBACK((const struct in6_addr *)ip);
}

static bool same_ip(int family, const unsigned char *ip, const struct sockaddr *sa)
{
    if (!sa || sa->sa_family != family) return false;
    if (family == AF_INET) return !memcmp(ip, &((const struct sockaddr_in *)sa)->sin_addr, 4);
    return !memcmp(ip, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

static bool loopback_allowed(const ae_engine_config *cfg)
{
    bool any = false;
    char **addrs = cfg->ice_addresses ? g_strsplit(cfg->ice_addresses, ",", -1) : NULL;
    for (char **a = addrs; a && *a; a++) {
        unsigned char ip[16];
        char *s = g_strstrip(*a);
        if ((inet_pton(AF_INET, s, ip) == 1 && ip[0] == 127) ||
            (inet_pton(AF_INET6, s, ip) == 1 && loopback_ip(AF_INET6, ip)))
            any = true;
    }
    g_strfreev(addrs);
    return any;
}

/* cand: "candidate:..." or the a=candidate value without it; ifs: the
 * box's interfaces (getifaddrs), or NULL. */
static bool candidate_allowed(const ae_engine_config *cfg, const char *cand,
                              const struct ifaddrs *ifs)
{
    if (!strncmp(cand, "candidate:", 10)) cand += 10;
    char foundation[40], transport[8], addr[64];
    unsigned component;
    unsigned long priority;
    int port;
    if (sscanf(cand, "%39s %u %7s %lu %63s %d", foundation, &component, transport, &priority,
               addr, &port) != 6)
        return false;
    /* TCP only with ICE-TCP on, and with its tcptype: without one,
     * webrtcbin 1.22 hit a GLib-CRITICAL (g_ascii_strcasecmp on NULL) */
    bool tcp = !strcasecmp(transport, "tcp") && cfg->ice_tcp && strstr(cand, " tcptype ");
    if ((strcasecmp(transport, "udp") && !tcp) || port < 1024 || port > 65535) return false;
    unsigned char ip[16];
    int family = inet_pton(AF_INET, addr, ip) == 1    ? AF_INET
                 : inet_pton(AF_INET6, addr, ip) == 1 ? AF_INET6
                                                      : 0;
    if (!family) return false;
    const struct in6_addr *in6 = (const struct in6_addr *)ip;
    if (family == AF_INET6 && (IN6_IS_ADDR_V4MAPPED(in6) || IN6_IS_ADDR_V4COMPAT(in6))) {
        memmove(ip, ip + 12, 4); /* the IPv4 address it stands for */
        family = AF_INET;
    }
    bool loopback = loopback_ip(family, ip);
    if (family == AF_INET) {
        if (ip[0] == 0 || ip[0] >= 224 || (ip[0] == 169 && ip[1] == 254)) return false;
    } else if (IN6_IS_ADDR_UNSPECIFIED(in6) || IN6_IS_ADDR_MULTICAST(in6) ||
               IN6_IS_ADDR_LINKLOCAL(in6)) {
        return false;
    }
    if (loopback) return loopback_allowed(cfg);
    for (const struct ifaddrs *i = ifs; i; i = i->ifa_next) {
        if (same_ip(family, ip, i->ifa_addr)) return false;
        if ((i->ifa_flags & IFF_BROADCAST) && same_ip(family, ip, i->ifa_broadaddr)) return false;
    }
    char **own = cfg->ice_addresses ? g_strsplit(cfg->ice_addresses, ",", -1) : NULL;
    bool mine = false;
    for (char **a = own; a && *a && !mine; a++) {
        unsigned char o[16];
        mine = inet_pton(family, g_strstrip(*a), o) == 1 && !memcmp(o, ip, family == AF_INET ? 4 : 16);
    }
    g_strfreev(own);
    return !mine;
}

/* Whether webrtcbin gets this candidate of m-line `mline` (glib thread). */
static bool take_remote_candidate(ae_wr *l, guint mline, const char *cand,
                                  const struct ifaddrs *ifs)
{
    if (mline >= AE_OFFER_MAX_MLINES || l->remote_candidates[mline] >= MAX_REMOTE_CANDIDATES ||
        !candidate_allowed(l->env->cfg, cand, ifs))
        return false;
    l->remote_candidates[mline]++;
    return true;
}

/* The offer's candidates webrtcbin may not have are taken out of it;
 * candidates at session level have no place there (RFC 8839) and go. */
static void filter_offer_candidates(ae_wr *l, GstSDPMessage *sdp)
{
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) ifs = NULL;
    int dropped = 0;
    for (guint a = gst_sdp_message_attributes_len(sdp); a-- > 0;)
        if (!g_strcmp0(gst_sdp_message_get_attribute(sdp, a)->key, "candidate")) {
            gst_sdp_message_remove_attribute(sdp, a);
            dropped++;
        }
    for (guint m = 0; m < gst_sdp_message_medias_len(sdp); m++) {
        GstSDPMedia *media = (GstSDPMedia *)gst_sdp_message_get_media(sdp, m);
        for (guint a = 0; a < gst_sdp_media_attributes_len(media);) {
            const GstSDPAttribute *attr = gst_sdp_media_get_attribute(media, a);
            if (g_strcmp0(attr->key, "candidate") ||
                take_remote_candidate(l, m, attr->value ? attr->value : "", ifs)) {
                a++;
                continue;
            }
            gst_sdp_media_remove_attribute(media, a);
            dropped++;
        }
    }
    if (ifs) freeifaddrs(ifs);
    if (dropped)
        g_printerr("ae: a webrtcbin listener's offer: %d candidates left out (see "
                   "candidate_allowed; at most %d an m-line)\n", dropped, MAX_REMOTE_CANDIDATES);
}

/* ---- negotiation -------------------------------------------------------- */

static void on_ice_candidate(GstElement *webrtc, guint mline, gchar *candidate, gpointer data)
{
    (void)webrtc;
    ae_wr *l = data;
    /* GStreamer 1.26's webrtcbin (not 1.22's) signals the end of an
     * m-line's gathering as an empty candidate: not one to answer with (an
     * empty "a=candidate" line makes aiortc refuse the answer) nor to trickle;
     * answer_text adds a=end-of-candidates itself. */
    if (!candidate || !*candidate) return;
    g_mutex_lock(&l->cand_lock);
    g_ptr_array_add(l->candidates, g_strdup_printf("%u\n%s", mline, candidate));
    g_mutex_unlock(&l->cand_lock);
    /* After the answer went out, the client learns new ones by asking. */
    if (l->answered) post_listener(l, AE_EVENT_CANDIDATE_GATHERED, candidate, (int)mline, 0, 0);
}

static void on_connection_state(GObject *obj, GParamSpec *ps, gpointer data)
{
    (void)ps;
    ae_wr *l = data;
    GstWebRTCICEConnectionState s;
    g_object_get(obj, "ice-connection-state", &s, NULL);
    if (atomic_load(&l->cert_refused)) return; /* it has failed for good */
    atomic_store(&l->state, (int)s);
    post_listener(l, AE_EVENT_LISTENER_STATE, NULL, 0, (int)s, 0);
}

/* The answer with every gathered candidate in it: the server cannot trickle
 * over WHEP, so the client must get them all at once. */
static char *answer_text(ae_wr *l)
{
    GstWebRTCSessionDescription *desc = NULL;
    g_object_get(l->webrtc, "local-description", &desc, NULL);
    if (!desc) return NULL;
    GstSDPMessage *sdp = NULL;
    gst_sdp_message_copy(desc->sdp, &sdp);
    gst_webrtc_session_description_free(desc);
    g_mutex_lock(&l->cand_lock);
    for (guint i = 0; i < l->candidates->len; i++) {
        const char *entry = g_ptr_array_index(l->candidates, i);
        guint mline = (guint)strtoul(entry, NULL, 10);
        const char *cand = strchr(entry, '\n') + 1;
        if (strncmp(cand, "candidate:", 10) == 0) cand += 10;
        else if (strncmp(cand, "a=candidate:", 12) == 0) cand += 12;
        if (mline >= gst_sdp_message_medias_len(sdp)) continue;
        GstSDPMedia *m = (GstSDPMedia *)gst_sdp_message_get_media(sdp, mline);
        bool present = false;
        for (guint a = 0; a < gst_sdp_media_attributes_len(m); a++) {
            const GstSDPAttribute *attr = gst_sdp_media_get_attribute(m, a);
            if (!g_strcmp0(attr->key, "candidate") && !g_strcmp0(attr->value, cand))
                present = true;
        }
        if (!present) gst_sdp_media_add_attribute(m, "candidate", cand);
    }
    guint ncand = l->candidates->len;
    g_mutex_unlock(&l->cand_lock);
    for (guint i = 0; i < gst_sdp_message_medias_len(sdp) && ncand; i++) {
        GstSDPMedia *m = (GstSDPMedia *)gst_sdp_message_get_media(sdp, i);
        if (!gst_sdp_media_get_attribute_val(m, "end-of-candidates") && gst_sdp_media_get_port(m))
            gst_sdp_media_add_attribute(m, "end-of-candidates", NULL);
    }
    char *text = gst_sdp_message_as_text(sdp);
    gst_sdp_message_free(sdp);
    return text;
}

static void finish_answer(ae_wr *l)
{
    if (l->answered || atomic_load(&l->closing)) return;
    if (l->gather_timeout) {
        g_source_destroy(l->gather_timeout);
        g_source_unref(l->gather_timeout);
        l->gather_timeout = NULL;
    }
    char *text = answer_text(l);
    if (!text) {
        answer_failed(l, AE_ERR_MEDIA, "webrtcbin produced no local description");
        return;
    }
    l->answered = true;
    post_listener(l, l->offering ? AE_EVENT_OFFER_READY : AE_EVENT_ANSWER_READY, text, 0, 0, 0);
    g_free(text);
}

static gboolean on_gather_timeout(gpointer data)
{
    ae_wr *l = data;
    l->gathered = true;
    if (l->local_set) finish_answer(l);
    return G_SOURCE_REMOVE;
}

static gboolean gathering_complete_main(gpointer data)
{
    ae_wr *l = data;
    l->gathered = true;
    if (l->local_set) finish_answer(l);
    return G_SOURCE_REMOVE;
}

static void on_gathering_state(GObject *obj, GParamSpec *ps, gpointer data)
{
    (void)ps;
    ae_wr *l = data;
    GstWebRTCICEGatheringState s;
    g_object_get(obj, "ice-gathering-state", &s, NULL);
    if (s == GST_WEBRTC_ICE_GATHERING_STATE_COMPLETE) invoke(l, gathering_complete_main);
}

/* Promise replies arrive on webrtcbin's thread: carry them to ours. */
typedef struct promise_step {
    ae_wr *listener;
    GstPromise *promise;
    void (*next)(ae_wr *, GstPromise *);
} promise_step;

static gboolean promise_step_main(gpointer data)
{
    promise_step *s = data;
    if (!atomic_load(&s->listener->closing)) s->next(s->listener, s->promise);
    return G_SOURCE_REMOVE;
}

static void promise_step_free(gpointer data)
{
    promise_step *s = data;
    gst_promise_unref(s->promise);
    listener_unref(s->listener);
    g_free(s);
}

static void on_promise(GstPromise *promise, gpointer data)
{
    promise_step *s = data;
    promise_step *copy = g_new0(promise_step, 1);
    copy->listener = listener_ref(s->listener);
    copy->promise = gst_promise_ref(promise);
    copy->next = s->next;
    g_main_context_invoke_full(s->listener->env->glib->ctx, G_PRIORITY_DEFAULT, promise_step_main,
                               copy, promise_step_free);
}

static void promise_data_free(gpointer data)
{
    promise_step *s = data;
    listener_unref(s->listener);
    g_free(s);
}

static GstPromise *promise_then(ae_wr *l, void (*next)(ae_wr *, GstPromise *))
{
    promise_step *s = g_new0(promise_step, 1);
    s->listener = listener_ref(l);
    s->next = next;
    return gst_promise_new_with_change_func(on_promise, s, promise_data_free);
}

static bool promise_failed(ae_wr *l, GstPromise *p, const char *step)
{
    if (gst_promise_wait(p) != GST_PROMISE_RESULT_REPLIED) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s was interrupted", step);
        answer_failed(l, AE_ERR_MEDIA, msg);
        return true;
    }
    const GstStructure *reply = gst_promise_get_reply(p);
    GError *err = NULL;
    if (reply && gst_structure_has_field(reply, "error")) {
        gst_structure_get(reply, "error", G_TYPE_ERROR, &err, NULL);
        char msg[512];
        snprintf(msg, sizeof msg, "%s failed: %s", step, err ? err->message : "?");
        g_clear_error(&err);
        answer_failed(l, AE_ERR_SDP, msg);
        return true;
    }
    return false;
}

static void link_to_tee(ae_wr *l)
{
    /* Elements are PLAYING already; link the tee last, so a new branch can
     * never stall the ones that are running. */
    l->tee_pad = gst_element_request_pad_simple(l->fanout->tee, "src_%u");
    /* Nothing passes until DTLS is up: until then webrtcbin blocks its
     * input, which would block the tee and with it every listener. */
    l->gate_probe = gst_pad_add_probe(l->tee_pad, GST_PAD_PROBE_TYPE_BUFFER,
                                      gate_until_connected, listener_ref(l), listener_unref);
    GstPad *sinkpad = gst_element_get_static_pad(l->pay, "sink");
    if (gst_pad_link(l->tee_pad, sinkpad) != GST_PAD_LINK_OK)
        answer_failed(l, AE_ERR_MEDIA, "cannot link the listener to its sink");
    gst_object_unref(sinkpad);
}

static void on_local_set(ae_wr *l, GstPromise *p)
{
    if (promise_failed(l, p, "setting the local description")) return;
    l->local_set = true;
    link_to_tee(l);
    if (l->gathered) finish_answer(l);
}

/* Our side (a listener's answer, a publication's offer) as the local
 * description; takes desc. */
static void set_local(ae_wr *l, GstWebRTCSessionDescription *desc)
{
    GstPromise *p = promise_then(l, on_local_set);
    g_signal_emit_by_name(l->webrtc, "set-local-description", desc, p);
    gst_promise_unref(p);
    gst_webrtc_session_description_free(desc);
}

static void on_answer_created(ae_wr *l, GstPromise *p)
{
    if (promise_failed(l, p, "creating the answer")) return;
    GstWebRTCSessionDescription *answer = NULL;
    gst_structure_get(gst_promise_get_reply(p), "answer",
                      GST_TYPE_WEBRTC_SESSION_DESCRIPTION, &answer, NULL);
    if (!answer) {
        answer_failed(l, AE_ERR_SDP, "webrtcbin could not answer the offer");
        return;
    }
    const GstSDPMedia *m = (guint)l->mline < gst_sdp_message_medias_len(answer->sdp)
                               ? gst_sdp_message_get_media(answer->sdp, (guint)l->mline)
                               : NULL;
    if (!m || !gst_sdp_media_get_port(m) || gst_sdp_media_get_attribute_val(m, "inactive")) {
        /* Never send an answer that connects and then plays nothing. */
        gst_webrtc_session_description_free(answer);
        answer_failed(l, AE_ERR_SDP, "could not agree on Opus with the offer's parameters");
        return;
    }
    set_local(l, answer);
}

/* Credentials of ours (ae_ice_text) in place of webrtcbin's, whose '+' and
 * '/' some servers mishandle; webrtcbin hands libnice the ones of the
 * description it sets as local. */
static void own_ice_credentials(GstSDPMessage *sdp)
{
    char ufrag[AE_ICE_UFRAG_LEN + 1], pwd[AE_ICE_PWD_LEN + 1];
    ae_ice_text(ufrag, AE_ICE_UFRAG_LEN);
    ae_ice_text(pwd, AE_ICE_PWD_LEN);
    for (guint i = 0; i < gst_sdp_message_medias_len(sdp); i++) {
        GstSDPMedia *m = (GstSDPMedia *)gst_sdp_message_get_media(sdp, i);
        for (guint a = 0; a < gst_sdp_media_attributes_len(m); a++) {
            const char *key = gst_sdp_media_get_attribute(m, a)->key;
            const char *value = strcmp(key, "ice-ufrag") == 0 ? ufrag
                                : strcmp(key, "ice-pwd") == 0 ? pwd : NULL;
            if (!value) continue;
            GstSDPAttribute fresh;
            gst_sdp_attribute_set(&fresh, key, value);
            gst_sdp_media_replace_attribute(m, a, &fresh);
        }
    }
}

/* A publication's offer: the sink's Opus, sendonly (opus_caps). */
static void on_offer_created(ae_wr *l, GstPromise *p)
{
    if (promise_failed(l, p, "creating the offer")) return;
    GstWebRTCSessionDescription *offer = NULL;
    gst_structure_get(gst_promise_get_reply(p), "offer", GST_TYPE_WEBRTC_SESSION_DESCRIPTION,
                      &offer, NULL);
    if (!offer) {
        answer_failed(l, AE_ERR_MEDIA, "webrtcbin made no offer");
        return;
    }
    own_ice_credentials(offer->sdp);
    set_local(l, offer);
}

static void on_answer_set(ae_wr *l, GstPromise *p)
{
    promise_failed(l, p, "setting the server's answer");
}

static void on_remote_set(ae_wr *l, GstPromise *p)
{
    if (promise_failed(l, p, "setting the offer")) return;
    GstPromise *next = promise_then(l, on_answer_created);
    g_signal_emit_by_name(l->webrtc, "create-answer", NULL, next);
    gst_promise_unref(next);
}

static void configure_ice(ae_wr *l)
{
    const ae_engine_config *cfg = l->env->cfg;
    GstWebRTCICE *ice = NULL;
    g_object_get(l->webrtc, "ice-agent", &ice, NULL);
    if (!ice) return;
    g_object_set(ice, "ice-tcp", cfg->ice_tcp != 0, NULL);
    if (cfg->min_port) g_object_set(ice, "min-rtp-port", (guint)cfg->min_port, NULL);
    if (cfg->max_port) g_object_set(ice, "max-rtp-port", (guint)cfg->max_port, NULL);
    if (g_object_class_find_property(G_OBJECT_GET_CLASS(ice), "agent")) {
        NiceAgent *agent = NULL;
        g_object_get(ice, "agent", &agent, NULL);
        if (agent) {
            /* UPnP-IGD lookups held answers back by seconds; a LAN needs none. */
            g_object_set(agent, "upnp", cfg->upnp != 0, "ice-tcp", cfg->ice_tcp != 0, NULL);
            /* its checks at most one per Ta, to at most MAX_REMOTE_CANDIDATES
             * addresses an m-line (take_remote_candidate), each sent at most
             * 1 + stun-max-retransmissions (3) times */
            g_object_set(agent, "stun-pacing-timer", (guint)CHECK_PACING_MS, NULL);
            if (cfg->ice_addresses) {
                char **addrs = g_strsplit(cfg->ice_addresses, ",", -1);
                for (char **a = addrs; *a; a++) {
                    NiceAddress addr;
                    nice_address_init(&addr);
                    if (nice_address_set_from_string(&addr, g_strstrip(*a)))
                        nice_agent_add_local_address(agent, &addr);
                }
                g_strfreev(addrs);
            }
            g_object_unref(agent);
        }
    }
    gst_object_unref(ice);
}

/* What we send, as webrtcbin must match it against the offer: the client's
 * payload type and its own Opus parameters verbatim (webrtcbin answers
 * a=inactive when a parameter differs: Chromium offers useinbandfec=1,
 * Firefox stereo=1), plus stereo when the client did not say: browsers play
 * stereo Opus as mono unless the answer says stereo=1. */
static GstCaps *opus_caps(const ae_wr *l)
{
    GstCaps *caps = gst_caps_new_simple(
        "application/x-rtp", "media", G_TYPE_STRING, "audio", "encoding-name", G_TYPE_STRING,
        "OPUS", "clock-rate", G_TYPE_INT, 48000, "payload", G_TYPE_INT, l->pt,
        "encoding-params", G_TYPE_STRING, "2", NULL);
    GstStructure *st = gst_caps_get_structure(caps, 0);
    if (l->fmtp) {
        char **params = g_strsplit(l->fmtp, ";", -1);
        for (char **p = params; *p; p++) {
            char *eq = strchr(*p, '=');
            if (!eq) continue;
            *eq = '\0';
            char *key = g_strstrip(*p), *value = g_strstrip(eq + 1);
            if (*key && *value && g_utf8_validate(key, -1, NULL) &&
                g_utf8_validate(value, -1, NULL))
                gst_structure_set(st, key, G_TYPE_STRING, value, NULL);
        }
        g_strfreev(params);
    }
    const char *stereo = l->sink->channels == 2 ? "1" : "0";
    if (!gst_structure_has_field(st, "stereo"))
        gst_structure_set(st, "stereo", G_TYPE_STRING, stereo, NULL);
    if (!gst_structure_has_field(st, "sprop-stereo"))
        gst_structure_set(st, "sprop-stereo", G_TYPE_STRING, stereo, NULL);
    return caps;
}

/* A publication's STUN and TURN servers (from its WHIP server's Link
 * headers, checked by the caller and by ice_servers_valid). */
static void use_ice_servers(ae_wr *l)
{
    bool stun_set = false;
    for (char **s = l->ice_servers; s && *s; s++) {
        if (!strncmp(*s, "stun://", 7) && !stun_set) {
            g_object_set(l->webrtc, "stun-server", *s, NULL);
            stun_set = true;
        } else if (!strncmp(*s, "turn://", 7) || !strncmp(*s, "turns://", 8)) {
            gboolean ok = FALSE;
            g_signal_emit_by_name(l->webrtc, "add-turn-server", *s, &ok);
            if (!ok) g_printerr("ae: webrtcbin refused a publication's TURN server\n");
        }
    }
}

/* At most AE_MAX_ICE_SERVERS lines, each a stun://, turn:// or turns:// URI
 * of printable ASCII within AE_MAX_ICE_SERVER_LEN. */
static bool ice_servers_valid(const char *text)
{
    int lines = 0;
    for (const char *p = text; *p;) {
        const char *end = strchr(p, '\n');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        if (++lines > AE_MAX_ICE_SERVERS || len == 0 || len > AE_MAX_ICE_SERVER_LEN) return false;
        if (strncmp(p, "stun://", 7) && strncmp(p, "turn://", 7) && strncmp(p, "turns://", 8))
            return false;
        for (size_t i = 0; i < len; i++)
            if (p[i] <= ' ' || p[i] > '~') return false;
        p += len + (end ? 1 : 0);
    }
    return true;
}

static int start_listener(ae_wr *l)
{
    const ae_engine_config *cfg = l->env->cfg;
    l->pay = gst_element_factory_make("rtpopuspay", NULL);
    l->webrtc = gst_element_factory_make("webrtcbin", NULL);
    if (!l->pay || !l->webrtc) {
        if (l->pay) gst_object_unref(l->pay);
        if (l->webrtc) gst_object_unref(l->webrtc);
        l->pay = l->webrtc = NULL;
        return ae_fail(AE_ERR_MEDIA, "cannot create rtpopuspay/webrtcbin");
    }
    gst_object_ref_sink(l->pay);
    gst_object_ref_sink(l->webrtc);
    g_object_set(l->pay, "pt", (guint)l->pt, NULL);
    g_object_set(l->webrtc, "bundle-policy", GST_WEBRTC_BUNDLE_POLICY_MAX_BUNDLE, NULL);
    if (cfg->stun_server) g_object_set(l->webrtc, "stun-server", cfg->stun_server, NULL);
    use_ice_servers(l);
    configure_ice(l);

    g_signal_connect_data(l->webrtc, "on-ice-candidate", G_CALLBACK(on_ice_candidate),
                          listener_ref(l), (GClosureNotify)(void (*)(void))listener_unref, 0);
    g_signal_connect_data(l->webrtc, "notify::ice-gathering-state",
                          G_CALLBACK(on_gathering_state), listener_ref(l),
                          (GClosureNotify)(void (*)(void))listener_unref, 0);
    g_signal_connect_data(l->webrtc, "notify::ice-connection-state",
                          G_CALLBACK(on_connection_state), listener_ref(l),
                          (GClosureNotify)(void (*)(void))listener_unref, 0);
    g_signal_connect_data(l->webrtc, "notify::connection-state",
                          G_CALLBACK(on_peer_connection_state), listener_ref(l),
                          (GClosureNotify)(void (*)(void))listener_unref, 0);
    g_signal_connect_data(l->webrtc, "deep-element-added", G_CALLBACK(on_deep_element_added),
                          listener_ref(l), (GClosureNotify)(void (*)(void))listener_unref, 0);

    GstPad *payin = gst_element_get_static_pad(l->pay, "sink");
    gst_pad_add_probe(payin, GST_PAD_PROBE_TYPE_BUFFER, on_pay_in, listener_ref(l),
                      listener_unref);
    gst_object_unref(payin);
    GstPad *payout = gst_element_get_static_pad(l->pay, "src");
    gst_pad_add_probe(payout, GST_PAD_PROBE_TYPE_BUFFER, on_pay_out, listener_ref(l),
                      listener_unref);

    gst_bin_add_many(GST_BIN(l->fanout->pipeline), l->pay, l->webrtc, NULL);
    /* A send-only transceiver that offers exactly the client's Opus payload
     * type, stereo: browsers downmix unless the answer says stereo=1. */
    GstPad *wsink = gst_element_request_pad_simple(l->webrtc, "sink_%u");
    GstWebRTCRTPTransceiver *trans = NULL;
    g_object_get(wsink, "transceiver", &trans, NULL);
    if (trans) {
        GstCaps *caps = opus_caps(l);
        if (l->offering) {
            /* The offer names the stream's SSRC (a=ssrc): a server that
             * demultiplexes by SSRC, as Janus's VideoRoom does without the
             * mid header extension, drops packets from an SSRC it was not
             * told of (measured: "Unknown SSRC, dropping packet"). webrtcbin
             * writes a=ssrc for an ssrc in the codec preferences. */
            guint ssrc = g_random_int_range(1, G_MAXINT32);
            g_object_set(l->pay, "ssrc", ssrc, NULL);
            gst_caps_set_simple(caps, "ssrc", G_TYPE_UINT, ssrc, NULL);
        }
        g_object_set(trans, "direction", GST_WEBRTC_RTP_TRANSCEIVER_DIRECTION_SENDONLY,
                     "codec-preferences", caps, NULL);
        gst_caps_unref(caps);
        gst_object_unref(trans);
    }
    GstPadLinkReturn lr = gst_pad_link(payout, wsink);
    gst_object_unref(payout);
    gst_object_unref(wsink);
    if (lr != GST_PAD_LINK_OK) return ae_fail(AE_ERR_MEDIA, "cannot link payloader to webrtcbin");
    gst_element_sync_state_with_parent(l->pay);
    gst_element_sync_state_with_parent(l->webrtc);

    if (l->offering) {
        GstPromise *promise = promise_then(l, on_offer_created);
        g_signal_emit_by_name(l->webrtc, "create-offer", NULL, promise);
        gst_promise_unref(promise);
    } else {
        GstSDPMessage *sdp = NULL;
        gst_sdp_message_new(&sdp);
        gst_sdp_message_parse_buffer((const guint8 *)l->offer, (guint)strlen(l->offer), sdp);
        filter_offer_candidates(l, sdp);
        GstWebRTCSessionDescription *offer =
            gst_webrtc_session_description_new(GST_WEBRTC_SDP_TYPE_OFFER, sdp);
        GstPromise *promise = promise_then(l, on_remote_set);
        g_signal_emit_by_name(l->webrtc, "set-remote-description", offer, promise);
        gst_promise_unref(promise);
        gst_webrtc_session_description_free(offer);
    }

    l->gather_timeout = g_timeout_source_new((guint)cfg->gather_timeout_ms);
    g_source_set_callback(l->gather_timeout, on_gather_timeout, listener_ref(l), listener_unref);
    g_source_attach(l->gather_timeout, l->env->glib->ctx);
    return AE_OK;
}

static gboolean start_listener_main(gpointer data)
{
    ae_wr *l = data;
    if (atomic_load(&l->closing)) return G_SOURCE_REMOVE;
    if (start_listener(l) != AE_OK) answer_failed(l, AE_ERR_MEDIA, ae_last_error());
    return G_SOURCE_REMOVE;
}

/* ---- the webrtcbin listener's life ---------------------------------------- */

const char *ae_wr_declines(const ae_offer *o)
{
    if (o->too_many_mlines) return "the offer has too many m-lines";
    if (o->mline != 0) return "the audio is not the first m-line";
    if (o->bundle && strcmp(o->bundle_tag, o->mid)) return "the BUNDLE group does not start with the audio";
    for (int m = 1; m < o->nmlines; m++) {
        if (strcmp(o->mlines[m].media, "application")) return "the offer has video";
        if (o->mlines[m].bundled && o->mlines[m].port0)
            return "an m-line with port 0 is in the BUNDLE group";
    }
    return NULL;
}

/* What every branch starts with, either way round; NULL without memory.
 * listener_unref frees it. */
static ae_wr *wr_new(const ae_wr_env *env, ae_sink *k, ae_fanout *f, uint64_t id)
{
    ae_wr *l = calloc(1, sizeof *l);
    if (!l) return NULL;
    l->env = env;
    l->id = id;
    l->sink = k;
    l->fanout = f;
    l->refs = 1;
    pthread_mutex_init(&l->health_lock, NULL);
    l->rtt_ms = -1;
    g_mutex_init(&l->cand_lock);
    l->candidates = g_ptr_array_new_with_free_func(g_free);
    return l;
}

int ae_wr_create(const ae_wr_env *env, ae_sink *k, ae_fanout *f, uint64_t id,
                 const char *offer_sdp, ae_offer *o, ae_wr **out)
{
    *out = NULL;
    char *offer = strdup(offer_sdp);
    ae_wr *l = offer ? wr_new(env, k, f, id) : NULL;
    if (!l) {
        free(offer);
        return ae_fail(AE_ERR_NOMEM, "out of memory");
    }
    l->pt = o->pt;
    l->mline = o->mline;
    l->nfp = o->nfingerprints;
    memcpy(l->fp, o->fingerprints, sizeof l->fp);
    l->fmtp = o->fmtp; /* taken over */
    o->fmtp = NULL;
    l->offer = offer;
    invoke(l, start_listener_main);
    *out = l;
    return AE_OK;
}

/* A publication's Opus parameters: stereo as the sink is, in-band FEC. */
#define PUBLICATION_PT 111

int ae_wr_create_offer(const ae_wr_env *env, ae_sink *k, ae_fanout *f, uint64_t id,
                       const char *ice_servers, ae_wr **out)
{
    *out = NULL;
    if (ice_servers && *ice_servers && !ice_servers_valid(ice_servers))
        return ae_fail(AE_ERR_INVALID, "ice_servers: at most %d stun://, turn:// or turns:// "
                       "URIs, one a line", AE_MAX_ICE_SERVERS);
    ae_wr *l = wr_new(env, k, f, id);
    if (!l || !(l->fmtp = strdup("minptime=10;useinbandfec=1"))) {
        if (l) listener_unref(l);
        return ae_fail(AE_ERR_NOMEM, "out of memory");
    }
    l->offering = true;
    l->pt = PUBLICATION_PT;
    if (ice_servers && *ice_servers) l->ice_servers = g_strsplit(ice_servers, "\n", -1);
    invoke(l, start_listener_main);
    *out = l;
    return AE_OK;
}

static gboolean set_answer_main(gpointer data)
{
    ae_wr *l = data;
    if (atomic_load(&l->closing) || !l->offer) return G_SOURCE_REMOVE;
    GstSDPMessage *sdp = NULL;
    gst_sdp_message_new(&sdp);
    gst_sdp_message_parse_buffer((const guint8 *)l->offer, (guint)strlen(l->offer), sdp);
    filter_offer_candidates(l, sdp);
    GstWebRTCSessionDescription *answer =
        gst_webrtc_session_description_new(GST_WEBRTC_SDP_TYPE_ANSWER, sdp);
    GstPromise *promise = promise_then(l, on_answer_set);
    g_signal_emit_by_name(l->webrtc, "set-remote-description", answer, promise);
    gst_promise_unref(promise);
    gst_webrtc_session_description_free(answer);
    return G_SOURCE_REMOVE;
}

int ae_wr_set_answer(ae_wr *l, const char *answer_sdp)
{
    if (!l->offering) return ae_fail(AE_ERR_INVALID, "only a publication takes an answer");
    if (!atomic_load(&l->answered)) return ae_fail(AE_ERR_INVALID, "its offer is not out yet");
    if (l->offer) return ae_fail(AE_ERR_INVALID, "it has its answer already");
    /* the answer read with the offers' own checks: ICE, a fingerprint, Opus */
    ae_offer o;
    int rc = ae_offer_parse(answer_sdp, &o);
    if (rc != AE_OK) return rc;
    if (o.pt != l->pt || o.mline != 0) {
        ae_offer_clear(&o);
        return ae_fail(AE_ERR_SDP, "the answer does not take our Opus (payload type %d)", l->pt);
    }
    l->nfp = o.nfingerprints;
    memcpy(l->fp, o.fingerprints, sizeof l->fp);
    ae_offer_clear(&o);
    if (!(l->offer = strdup(answer_sdp))) return ae_fail(AE_ERR_NOMEM, "out of memory");
    invoke(l, set_answer_main);
    return AE_OK;
}

typedef struct candidate_call {
    ae_wr *listener;
    guint mline;
    char *candidate;
} candidate_call;

static gboolean add_candidate_main(gpointer data)
{
    candidate_call *c = data;
    ae_wr *l = c->listener;
    /* its address was checked by ae_wr_add_candidate; here the count */
    if (!atomic_load(&l->closing) && l->webrtc && c->mline < AE_OFFER_MAX_MLINES &&
        l->remote_candidates[c->mline] < MAX_REMOTE_CANDIDATES) {
        l->remote_candidates[c->mline]++;
        g_signal_emit_by_name(l->webrtc, "add-ice-candidate", c->mline, c->candidate);
    }
    return G_SOURCE_REMOVE;
}

static void candidate_call_free(gpointer data)
{
    candidate_call *c = data;
    listener_unref(c->listener);
    g_free(c->candidate);
    g_free(c);
}

void ae_wr_add_candidate(ae_wr *l, int mline, const char *candidate)
{
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) ifs = NULL;
    bool allowed = candidate_allowed(l->env->cfg, candidate, ifs);
    if (ifs) freeifaddrs(ifs);
    if (!allowed) return; /* see candidate_allowed */
    candidate_call *c = g_new0(candidate_call, 1);
    c->listener = listener_ref(l);
    c->mline = (guint)mline;
    c->candidate = g_strdup(candidate);
    g_main_context_invoke_full(l->env->glib->ctx, G_PRIORITY_DEFAULT, add_candidate_main, c,
                               candidate_call_free);
}

/* ---- ICE restart (a publication) ----------------------------------------- */

/* On the heap, one reference the caller's and one the glib thread's: a
 * call that timed out may still run. */
typedef struct restart_call {
    _Atomic int refs;
    ae_wr *listener;                     /* a reference */
    char ufrag[AE_ICE_CREDENTIAL_MAX], pwd[AE_ICE_CREDENTIAL_MAX]; /* ours (restart) */
    char *remote_ufrag, *remote_pwd, *candidates; /* the server's (answer) */
    char why[160];
} restart_call;

static restart_call *restart_call_new(ae_wr *l)
{
    restart_call *c = g_new0(restart_call, 1);
    c->refs = 2;
    c->listener = listener_ref(l);
    return c;
}

static void restart_call_unref(restart_call *c)
{
    if (atomic_fetch_sub(&c->refs, 1) != 1) return;
    listener_unref(c->listener);
    g_free(c->remote_ufrag);
    g_free(c->remote_pwd);
    g_free(c->candidates);
    g_free(c);
}

/* Runs fn on the glib thread with the call; its failure carries c->why. */
static int restart_call_run(ae_wr *l, restart_call *c, int (*fn)(void *))
{
    int rc = ae_loop_call(l->env->glib, fn, c, GLIB_CALL_TIMEOUT_MS);
    if (rc != AE_OK && *c->why) ae_fail(rc, "ICE restart: %s", c->why);
    return rc;
}

/* webrtcbin's libnice agent and its stream (max-bundle: the only one), or
 * NULL; the caller unrefs the agent. */
static NiceAgent *nice_stream(ae_wr *l, guint *stream_id)
{
    GstWebRTCICE *ice = NULL;
    g_object_get(l->webrtc, "ice-agent", &ice, NULL);
    if (!ice) return NULL;
    NiceAgent *agent = NULL;
    if (g_object_class_find_property(G_OBJECT_GET_CLASS(ice), "agent"))
        g_object_get(ice, "agent", &agent, NULL);
    gst_object_unref(ice);
    if (!agent) return NULL;
    for (guint id = 1; id <= AE_OFFER_MAX_MLINES; id++) {
        gchar *ufrag = NULL, *pwd = NULL;
        bool found = nice_agent_get_local_credentials(agent, id, &ufrag, &pwd);
        g_free(ufrag);
        g_free(pwd);
        if (found) {
            *stream_id = id;
            return agent;
        }
    }
    g_object_unref(agent);
    return NULL;
}

/* The publication's libnice agent and stream for a restart step, or NULL
 * with c->why said (closing, or webrtcbin has none); the caller unrefs it. */
static NiceAgent *restart_agent(restart_call *c, guint *stream_id)
{
    ae_wr *l = c->listener;
    NiceAgent *agent = atomic_load(&l->closing) || !l->webrtc ? NULL : nice_stream(l, stream_id);
    if (!agent) snprintf(c->why, sizeof c->why, "webrtcbin has no ICE stream");
    return agent;
}

static int ice_restart_step(restart_call *c)
{
    ae_wr *l = c->listener;
    guint sid = 0;
    NiceAgent *agent = restart_agent(c, &sid);
    if (!agent) return AE_ERR_MEDIA;
    ae_ice_text(c->ufrag, AE_ICE_UFRAG_LEN);
    ae_ice_text(c->pwd, AE_ICE_PWD_LEN);
    int rc = AE_OK;
    /* new local credentials of ours (ae_ice_text, as in the offer); the
     * remote candidates go (but the selected pair's): the server's come
     * with its answer */
    if (!nice_agent_restart_stream(agent, sid) ||
        !nice_agent_set_local_credentials(agent, sid, c->ufrag, c->pwd)) {
        snprintf(c->why, sizeof c->why, "libnice could not restart the ICE stream");
        rc = AE_ERR_MEDIA;
    } else {
        memset(l->remote_candidates, 0, sizeof l->remote_candidates);
    }
    g_object_unref(agent);
    return rc;
}

static int ice_restart_main(void *data)
{
    int rc = ice_restart_step(data);
    restart_call_unref(data);
    return rc;
}

int ae_wr_ice_restart(ae_wr *l, char *ufrag, char *pwd)
{
    if (!l->offering || !l->offer)
        return ae_fail(AE_ERR_INVALID, "only a publication with its answer restarts ICE");
    restart_call *c = restart_call_new(l);
    int rc = restart_call_run(l, c, ice_restart_main);
    if (rc == AE_OK) {
        strcpy(ufrag, c->ufrag);
        strcpy(pwd, c->pwd);
    }
    restart_call_unref(c);
    return rc;
}

/* One "candidate:..." (or "a=candidate:...") of the server's for libnice,
 * checked like a trickled one (take_remote_candidate), or NULL. */
static NiceCandidate *restart_candidate(ae_wr *l, NiceAgent *agent, guint sid, const char *line,
                                        const struct ifaddrs *ifs)
{
    if (strncmp(line, "a=", 2) == 0) line += 2;
    if (strncmp(line, "candidate:", 10) != 0 || !take_remote_candidate(l, 0, line, ifs))
        return NULL;
    gchar *sdp = g_strconcat("a=", line, NULL);
    NiceCandidate *cand = nice_agent_parse_remote_candidate_sdp(agent, sid, sdp);
    g_free(sdp);
    if (cand && cand->component_id != 1) {
        nice_candidate_free(cand);
        cand = NULL;
    }
    return cand;
}

static int restart_answer_step(restart_call *c)
{
    ae_wr *l = c->listener;
    guint sid = 0;
    NiceAgent *agent = restart_agent(c, &sid);
    if (!agent) return AE_ERR_MEDIA;
    if (!nice_agent_set_remote_credentials(agent, sid, c->remote_ufrag, c->remote_pwd)) {
        g_object_unref(agent);
        snprintf(c->why, sizeof c->why, "libnice refused the server's credentials");
        return AE_ERR_SDP;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) ifs = NULL;
    /* the server's new candidates, else the ones of its answer again */
    char **lines = g_strsplit(c->candidates ? c->candidates : l->offer, "\n", -1);
    GSList *cands = NULL;
    for (char **line = lines; *line; line++) {
        NiceCandidate *cand = restart_candidate(l, agent, sid, g_strstrip(*line), ifs);
        if (cand) cands = g_slist_append(cands, cand);
    }
    g_strfreev(lines);
    if (ifs) freeifaddrs(ifs);
    /* none may pass (candidate_allowed: one on our own address): the
     * server's checks, with the new credentials, still reach us */
    if (cands) nice_agent_set_remote_candidates(agent, sid, 1, cands);
    g_slist_free_full(cands, (GDestroyNotify)nice_candidate_free);
    g_object_unref(agent);
    return AE_OK;
}

static int restart_answer_main(void *data)
{
    int rc = restart_answer_step(data);
    restart_call_unref(data);
    return rc;
}

int ae_wr_restart_answer(ae_wr *l, const char *ufrag, const char *pwd, const char *candidates)
{
    if (!l->offering || !l->offer)
        return ae_fail(AE_ERR_INVALID, "only a publication with its answer restarts ICE");
    restart_call *c = restart_call_new(l);
    c->remote_ufrag = g_strdup(ufrag);
    c->remote_pwd = g_strdup(pwd);
    c->candidates = g_strdup(candidates);
    int rc = restart_call_run(l, c, restart_answer_main);
    restart_call_unref(c);
    return rc;
}

/* ---- the peer's health, from webrtcbin's statistics ------------------- */

static gboolean read_remote_inbound(GQuark field, const GValue *value, gpointer data)
{
    (void)field;
    ae_wr *l = data;
    if (!GST_VALUE_HOLDS_STRUCTURE(value)) return TRUE;
    const GstStructure *st = gst_value_get_structure(value);
    gint type = 0;
    if (!gst_structure_get_enum(st, "type", GST_TYPE_WEBRTC_STATS_TYPE, &type) ||
        type != GST_WEBRTC_STATS_REMOTE_INBOUND_RTP)
        return TRUE;
    double fraction = 0, jitter = 0, rtt = -1;
    gint64 lost = 0;
    gst_structure_get_double(st, "fraction-lost", &fraction);
    gst_structure_get_double(st, "jitter", &jitter);
    gst_structure_get_int64(st, "packets-lost", &lost);
    if (!gst_structure_get_double(st, "round-trip-time", &rtt)) rtt = -1;
    pthread_mutex_lock(&l->health_lock);
    l->health_reports++;
    l->fraction_lost = fraction;
    l->jitter_ms = jitter * 1000.0;
    l->packets_lost = lost;
    if (rtt >= 0) l->rtt_ms = rtt * 1000.0;
    pthread_mutex_unlock(&l->health_lock);
    return TRUE;
}

static void on_stats(GstPromise *promise, gpointer data)
{
    if (gst_promise_wait(promise) != GST_PROMISE_RESULT_REPLIED) return;
    const GstStructure *reply = gst_promise_get_reply(promise);
    if (reply) gst_structure_foreach(reply, read_remote_inbound, data);
}

static gboolean ask_stats_main(gpointer data)
{
    ae_wr *l = data;
    if (atomic_load(&l->closing) || !l->webrtc) return G_SOURCE_REMOVE;
    GstPromise *p = gst_promise_new_with_change_func(on_stats, listener_ref(l), listener_unref);
    g_signal_emit_by_name(l->webrtc, "get-stats", NULL, p);
    gst_promise_unref(p);
    return G_SOURCE_REMOVE;
}

void ae_wr_stats(ae_wr *l, ae_listener_stats *out)
{
    out->transport = AE_TRANSPORT_WEBRTCBIN;
    pthread_mutex_lock(&l->health_lock);
    out->rtcp_reports = l->health_reports;
    out->fraction_lost = l->fraction_lost;
    out->packets_lost = l->packets_lost;
    out->jitter_ms = l->jitter_ms;
    out->rtt_ms = l->rtt_ms;
    pthread_mutex_unlock(&l->health_lock);
    int64_t now = ae_now_us(), asked = atomic_load(&l->health_asked_us);
    if (atomic_load(&l->media_open) && now - asked > 1000000 &&
        atomic_compare_exchange_strong(&l->health_asked_us, &asked, now))
        invoke(l, ask_stats_main); /* the answer lands in the next read */
    out->state = atomic_load(&l->state);
    out->last_rx_us = atomic_load(&l->last_rx_us);
    out->packets_sent = atomic_load(&l->packets_sent);
    out->bytes_sent = atomic_load(&l->bytes_sent);
}

/* ---- teardown ----------------------------------------------------------- */

/* Glib thread: take the branch off the tee (when no buffer is in it) and
 * out of the pipeline. The slow part, stopping webrtcbin, happens in the
 * caller's thread afterwards. */
static int detach_listener(void *data)
{
    ae_wr *l = data;
    if (l->gather_timeout) {
        g_source_destroy(l->gather_timeout);
        g_source_unref(l->gather_timeout);
        l->gather_timeout = NULL;
    }
    if (l->tee_pad) {
        ae_fanout_release_branch(l->fanout, l->tee_pad, l->gate_probe);
        l->tee_pad = NULL;
    }
    if (l->webrtc) {
        g_signal_handlers_disconnect_matched(l->webrtc, G_SIGNAL_MATCH_DATA, 0, 0, NULL, NULL, l);
        if (l->rx_pad) {
            gst_pad_remove_probe(l->rx_pad, l->rx_probe);
            gst_object_unref(l->rx_pad);
            l->rx_pad = NULL;
        }
        gst_bin_remove(GST_BIN(l->fanout->pipeline), l->webrtc);
    }
    if (l->pay) gst_bin_remove(GST_BIN(l->fanout->pipeline), l->pay);
    return AE_OK;
}

void ae_wr_close(ae_wr *l) { atomic_store(&l->closing, true); }

int ae_wr_destroy(ae_wr *l)
{
    int rc = ae_loop_call(l->env->glib, detach_listener, l, GLIB_CALL_TIMEOUT_MS);
    if (rc == AE_OK) {
        if (l->webrtc) gst_element_set_state(l->webrtc, GST_STATE_NULL);
        if (l->pay) gst_element_set_state(l->pay, GST_STATE_NULL);
        if (l->webrtc) gst_object_unref(l->webrtc);
        if (l->pay) gst_object_unref(l->pay);
        l->webrtc = l->pay = NULL;
    }
    listener_unref(l);
    return rc;
}
