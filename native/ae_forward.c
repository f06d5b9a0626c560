/* ae_forward.c: RTP forwards (see ae_forward.h).
 *
 *   fan-out --Opus--> appsrc --> tee --> queue (leaky) --> rtpopuspay pt ssrc
 *                                    --> [srtpenc AES_CM_128_HMAC_SHA1_80] --> udpsink
 *
 * Nothing waits for the far end: UDP, a leaky queue, udpsink neither syncs
 * nor prerolls, so a relay that is gone never holds up the tee. */
#include "ae_forward.h"

#include <gio/gio.h>
#include <stdlib.h>
#include <string.h>

#define GLIB_CALL_TIMEOUT_MS 5000
#define SRTP_KEY_BYTES 30   /* AES-128 master key + 112-bit salt */

struct ae_fwd {
    ae_loop *glib;
    ae_fanout *fanout;
    ae_forward_config cfg;              /* host points at host below */
    char host[64];
    unsigned char key[SRTP_KEY_BYTES];
    GstElement *queue, *pay, *srtp, *udp;
    GstPad *tee_pad;
    _Atomic uint64_t packets_sent, bytes_sent;
};

static GstPadProbeReturn count_packet(GstPad *pad, GstPadProbeInfo *info, gpointer data)
{
    (void)pad;
    ae_fwd *w = data;
    GstBuffer *buf = GST_PAD_PROBE_INFO_BUFFER(info);
    atomic_fetch_add(&w->packets_sent, 1);
    if (buf) atomic_fetch_add(&w->bytes_sent, gst_buffer_get_size(buf));
    atomic_fetch_add(&w->fanout->packets_out, 1);
    return GST_PAD_PROBE_OK;
}

static bool link_pads(GstElement *a, const char *a_pad, GstElement *b, const char *b_pad)
{
    GstPad *src = gst_element_get_static_pad(a, a_pad);
    if (!src) src = gst_element_request_pad_simple(a, a_pad);
    GstPad *sink = gst_element_get_static_pad(b, b_pad);
    if (!sink) sink = gst_element_request_pad_simple(b, b_pad);
    bool ok = src && sink && gst_pad_link(src, sink) == GST_PAD_LINK_OK;
    if (src) gst_object_unref(src);
    if (sink) gst_object_unref(sink);
    return ok;
}

/* Glib thread: build the branch, start it, link the tee last. */
static int attach(void *data)
{
    ae_fwd *w = data;
    GstBin *bin = GST_BIN(w->fanout->pipeline);
    w->queue = gst_element_factory_make("queue", NULL);
    w->pay = gst_element_factory_make("rtpopuspay", NULL);
    w->udp = gst_element_factory_make("udpsink", NULL);
    if (w->cfg.srtp_key) w->srtp = gst_element_factory_make("srtpenc", NULL);
    if (!w->queue || !w->pay || !w->udp || (w->cfg.srtp_key && !w->srtp))
        return ae_fail(AE_ERR_MEDIA, "cannot create queue/rtpopuspay/srtpenc/udpsink");
    GstElement *all[] = {w->queue, w->pay, w->srtp, w->udp};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i]) gst_object_ref_sink(all[i]);
    /* a few packets of slack, then the oldest go */
    g_object_set(w->queue, "max-size-buffers", 16u, "max-size-bytes", 0u, "max-size-time",
                 (guint64)0, "leaky", 2 /* downstream */, NULL);
    g_object_set(w->pay, "pt", (guint)w->cfg.payload_type, "ssrc", (guint)w->cfg.ssrc, NULL);
    g_object_set(w->udp, "host", w->host, "port", w->cfg.port, "sync", FALSE, "async", FALSE,
                 NULL);
    if (w->srtp) {
        GstBuffer *key = gst_buffer_new_memdup(w->key, SRTP_KEY_BYTES);
        /* AES_CM_128_HMAC_SHA1_80 for RTP; no RTCP goes out */
        g_object_set(w->srtp, "key", key, "rtp-cipher", 1, "rtp-auth", 2, NULL);
        gst_buffer_unref(key);
    }
    gst_bin_add_many(bin, w->queue, w->pay, w->udp, NULL);
    if (w->srtp) gst_bin_add(bin, w->srtp);
    bool linked = link_pads(w->queue, "src", w->pay, "sink") &&
                  (w->srtp ? link_pads(w->pay, "src", w->srtp, "rtp_sink_0") &&
                                 link_pads(w->srtp, "rtp_src_0", w->udp, "sink")
                           : link_pads(w->pay, "src", w->udp, "sink"));
    if (!linked) return ae_fail(AE_ERR_MEDIA, "cannot link the forward's elements");
    GstPad *payout = gst_element_get_static_pad(w->pay, "src");
    gst_pad_add_probe(payout, GST_PAD_PROBE_TYPE_BUFFER, count_packet, w, NULL);
    gst_object_unref(payout);
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i]) gst_element_sync_state_with_parent(all[i]);
    w->tee_pad = gst_element_request_pad_simple(w->fanout->tee, "src_%u");
    GstPad *qin = gst_element_get_static_pad(w->queue, "sink");
    GstPadLinkReturn lr = gst_pad_link(w->tee_pad, qin);
    gst_object_unref(qin);
    if (lr != GST_PAD_LINK_OK) return ae_fail(AE_ERR_MEDIA, "cannot link the forward to its sink");
    return AE_OK;
}

/* Glib thread: the branch off the tee and out of the pipeline. */
static int detach(void *data)
{
    ae_fwd *w = data;
    if (w->tee_pad) {
        ae_fanout_release_branch(w->fanout, w->tee_pad, 0);
        w->tee_pad = NULL;
    }
    GstElement *all[] = {w->queue, w->pay, w->srtp, w->udp};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) {
        if (!all[i]) continue;
        if (GST_OBJECT_PARENT(all[i])) gst_bin_remove(GST_BIN(w->fanout->pipeline), all[i]);
        gst_element_set_state(all[i], GST_STATE_NULL);
    }
    return AE_OK;
}

static void free_fwd(ae_fwd *w)
{
    GstElement *all[] = {w->queue, w->pay, w->srtp, w->udp};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++)
        if (all[i]) gst_object_unref(all[i]);
    memset(w->key, 0, sizeof w->key);
    free(w);
}

int ae_fwd_create(ae_loop *glib, ae_fanout *f, const ae_forward_config *cfg, ae_fwd **out)
{
    *out = NULL;
    if (!cfg || !cfg->host) return ae_fail(AE_ERR_INVALID, "a forward needs a host");
    GInetAddress *addr = g_inet_address_new_from_string(cfg->host);
    if (!addr) return ae_fail(AE_ERR_INVALID, "a forward needs a numeric address, not '%.60s'", cfg->host);
    g_object_unref(addr);
    if (strlen(cfg->host) >= sizeof ((ae_fwd *)0)->host)
        return ae_fail(AE_ERR_INVALID, "address too long");
    if (cfg->port < 1 || cfg->port > 65535) return ae_fail(AE_ERR_INVALID, "port %d out of range", cfg->port);
    if (cfg->payload_type < 96 || cfg->payload_type > 127)
        return ae_fail(AE_ERR_INVALID, "payload type %d is not dynamic (96..127)", cfg->payload_type);
    if (cfg->srtp_key && cfg->srtp_key_len != SRTP_KEY_BYTES)
        return ae_fail(AE_ERR_INVALID, "an SRTP key is %d bytes (key and salt)", SRTP_KEY_BYTES);
    ae_fwd *w = calloc(1, sizeof *w);
    if (!w) return ae_fail(AE_ERR_NOMEM, "out of memory");
    w->glib = glib;
    w->fanout = f;
    w->cfg = *cfg;
    strcpy(w->host, cfg->host);
    w->cfg.host = w->host;
    if (cfg->srtp_key) {
        memcpy(w->key, cfg->srtp_key, SRTP_KEY_BYTES);
        w->cfg.srtp_key = w->key;
    }
    int rc = ae_loop_call(glib, attach, w, GLIB_CALL_TIMEOUT_MS);
    if (rc != AE_OK) {
        ae_loop_call(glib, detach, w, GLIB_CALL_TIMEOUT_MS);
        free_fwd(w);
        return rc;
    }
    *out = w;
    return AE_OK;
}

void ae_fwd_stats(ae_fwd *w, ae_listener_stats *out)
{
    out->transport = AE_TRANSPORT_FORWARD;
    out->state = AE_LISTENER_CONNECTED;   /* UDP: nothing to connect */
    out->packets_sent = atomic_load(&w->packets_sent);
    out->bytes_sent = atomic_load(&w->bytes_sent);
    out->rtt_ms = -1;
}

int ae_fwd_destroy(ae_fwd *w)
{
    int rc = ae_loop_call(w->glib, detach, w, GLIB_CALL_TIMEOUT_MS);
    if (rc != AE_OK) return rc;   /* the glib thread is wedged: leak rather than free in use */
    free_fwd(w);
    return AE_OK;
}
