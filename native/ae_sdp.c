/* ae_sdp.c: an offer, read once for both transports.
 *
 * The Python side (appliance/sdp.py) has already refused every offer shape
 * outside the tested ones; this is the engine's own check (its API is public)
 * and the parse that tells which transport can serve the offer. */
#define _GNU_SOURCE
#include "ae_sdp.h"

#include <gst/sdp/sdp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static const char *attr_of(const GstSDPMessage *msg, const GstSDPMedia *m, const char *key)
{
    const char *v = gst_sdp_media_get_attribute_val(m, key);
    return v ? v : gst_sdp_message_get_attribute_val(msg, key);
}

static void copy_text(char *dst, size_t size, const char *src)
{
    snprintf(dst, size, "%s", src ? src : "");
}

/* "sha-256 AB:CD:..." -> algorithm and bytes; false when malformed. */
static bool parse_fingerprint(const char *value, char *alg, size_t alg_size, unsigned char *md,
                              unsigned *len)
{
    const char *sp = strchr(value, ' ');
    if (!sp || (size_t)(sp - value) >= alg_size) return false;
    memcpy(alg, value, (size_t)(sp - value));
    alg[sp - value] = '\0';
    const char *p = sp + 1;
    unsigned n = 0;
    while (*p && n < 64) {
        unsigned byte;
        if (sscanf(p, "%2x", &byte) != 1 || !p[1]) return false;
        md[n++] = (unsigned char)byte;
        p += 2;
        if (*p == ':') p++;
        else if (*p) return false;
    }
    *len = n;
    return n >= 20 && !*p;
}

static void read_transport(const GstSDPMessage *msg, const GstSDPMedia *m, ae_offer *o)
{
    copy_text(o->ice_ufrag, sizeof o->ice_ufrag, attr_of(msg, m, "ice-ufrag"));
    copy_text(o->ice_pwd, sizeof o->ice_pwd, attr_of(msg, m, "ice-pwd"));
    copy_text(o->setup, sizeof o->setup, attr_of(msg, m, "setup"));
    copy_text(o->mid, sizeof o->mid, gst_sdp_media_get_attribute_val(m, "mid"));
    o->rtcp_mux = gst_sdp_media_get_attribute_val(m, "rtcp-mux") != NULL;
    /* Fingerprints at media level win over session level. */
    for (int level = 0; level < 2 && !o->nfingerprints; level++) {
        guint n = level == 0 ? gst_sdp_media_attributes_len(m) : gst_sdp_message_attributes_len(msg);
        for (guint a = 0; a < n && o->nfingerprints < AE_OFFER_MAX_FINGERPRINTS; a++) {
            const GstSDPAttribute *attr = level == 0 ? gst_sdp_media_get_attribute(m, a)
                                                     : gst_sdp_message_get_attribute(msg, a);
            if (g_strcmp0(attr->key, "fingerprint") || !attr->value) continue;
            int i = o->nfingerprints;
            if (parse_fingerprint(attr->value, o->fingerprints[i].alg,
                                  sizeof o->fingerprints[i].alg, o->fingerprints[i].md,
                                  &o->fingerprints[i].len))
                o->nfingerprints++;
        }
    }
}

/* The Opus payload type of an audio m-line (and its fmtp), or -1. */
static int find_opus(const GstSDPMedia *m, char **fmtp_out)
{
    for (guint a = 0; a < gst_sdp_media_attributes_len(m); a++) {
        const GstSDPAttribute *attr = gst_sdp_media_get_attribute(m, a);
        if (g_strcmp0(attr->key, "rtpmap") != 0 || !attr->value) continue;
        int pt = -1;
        char codec[64] = {0};
        if (sscanf(attr->value, "%d %63[^/]/48000", &pt, codec) != 2 || strcasecmp(codec, "opus") ||
            pt < 0 || pt >= 128)
            continue;
        char pts[8];
        snprintf(pts, sizeof pts, "%d", pt);
        bool listed = false;
        for (guint f = 0; f < gst_sdp_media_formats_len(m); f++)
            if (!strcmp(gst_sdp_media_get_format(m, f), pts)) listed = true;
        if (!listed) continue;
        *fmtp_out = NULL;
        size_t plen = strlen(pts);
        for (guint b = 0; b < gst_sdp_media_attributes_len(m); b++) {
            const GstSDPAttribute *fa = gst_sdp_media_get_attribute(m, b);
            if (!g_strcmp0(fa->key, "fmtp") && fa->value && !strncmp(fa->value, pts, plen) &&
                fa->value[plen] == ' ' && !*fmtp_out)
                *fmtp_out = strdup(fa->value + plen + 1);
        }
        return pt;
    }
    return -1;
}

void ae_offer_clear(ae_offer *o)
{
    free(o->fmtp);
    memset(o, 0, sizeof *o);
}

int ae_offer_parse(const char *sdp, ae_offer *o)
{
    return ae_offer_parse_for(sdp, false, o);
}

int ae_offer_parse_for(const char *sdp, bool publish, ae_offer *o)
{
    memset(o, 0, sizeof *o);
    o->pt = -1;
    if (!sdp || !*sdp) return ae_fail(AE_ERR_SDP, "the offer is empty");
    if (strncmp(sdp, "v=0", 3) != 0) return ae_fail(AE_ERR_SDP, "the offer is not SDP (no v=0 line)");
    GstSDPMessage *msg = NULL;
    gst_sdp_message_new(&msg);
    if (gst_sdp_message_parse_buffer((const guint8 *)sdp, (guint)strlen(sdp), msg) != GST_SDP_OK) {
        gst_sdp_message_free(msg);
        return ae_fail(AE_ERR_SDP, "the offer is not valid SDP");
    }
    char **group = NULL;
    for (guint a = 0; a < gst_sdp_message_attributes_len(msg); a++) {
        const GstSDPAttribute *attr = gst_sdp_message_get_attribute(msg, a);
        if (!o->bundle && !g_strcmp0(attr->key, "group") && attr->value &&
            !strncmp(attr->value, "BUNDLE ", 7)) {
            o->bundle = true;
            group = g_strsplit(attr->value + 7, " ", -1);
            copy_text(o->bundle_tag, sizeof o->bundle_tag, group[0]);
        }
    }
    guint nm = gst_sdp_message_medias_len(msg);
    o->too_many_mlines = nm > AE_OFFER_MAX_MLINES;
    for (guint i = 0; i < nm && i < AE_OFFER_MAX_MLINES; i++) {
        const GstSDPMedia *m = gst_sdp_message_get_media(msg, i);
        copy_text(o->mlines[i].media, sizeof o->mlines[i].media, gst_sdp_media_get_media(m));
        copy_text(o->mlines[i].proto, sizeof o->mlines[i].proto, gst_sdp_media_get_proto(m));
        copy_text(o->mlines[i].fmt, sizeof o->mlines[i].fmt,
                  gst_sdp_media_formats_len(m) ? gst_sdp_media_get_format(m, 0) : "0");
        copy_text(o->mlines[i].mid, sizeof o->mlines[i].mid,
                  gst_sdp_media_get_attribute_val(m, "mid"));
        o->mlines[i].bundled = group && o->mlines[i].mid[0] &&
                               g_strv_contains((const char *const *)group, o->mlines[i].mid);
        o->mlines[i].port0 = gst_sdp_media_get_port(m) == 0;
        o->mlines[i].live = !o->mlines[i].port0 ||
                            (o->mlines[i].bundled &&
                             gst_sdp_media_get_attribute_val(m, "bundle-only") != NULL);
        o->nmlines = (int)i + 1;
    }
    g_strfreev(group);
    int rc = ae_fail(AE_ERR_SDP, "the offer has no audio to receive");
    bool saw_audio = false;
    for (guint i = 0; i < nm; i++) {
        const GstSDPMedia *m = gst_sdp_message_get_media(msg, i);
        if (!g_strcmp0(gst_sdp_media_get_media(m), "application")) o->datachannel = true;
        if (g_strcmp0(gst_sdp_media_get_media(m), "audio") != 0 || o->pt >= 0) continue;
        saw_audio = true;
        /* port 0 with a=bundle-only is an offer to bundle it (Firefox's
         * max-bundle), not a rejection */
        if (i >= AE_OFFER_MAX_MLINES || !o->mlines[i].live) continue;
        if (gst_sdp_media_get_attribute_val(m, publish ? "recvonly" : "sendonly") ||
            gst_sdp_media_get_attribute_val(m, "inactive")) {
            rc = ae_fail(AE_ERR_SDP, publish
                             ? "the offer's audio is recvonly or inactive: nothing is published"
                             : "the offer's audio is sendonly or inactive: nothing to receive");
            continue;
        }
        const char *proto = gst_sdp_media_get_proto(m);
        if (!proto || !strstr(proto, "SAVPF")) {
            rc = ae_fail(AE_ERR_SDP, "the offer's audio is not DTLS-SRTP (%s)", proto ? proto : "?");
            continue;
        }
        if (!attr_of(msg, m, "ice-ufrag") || !attr_of(msg, m, "ice-pwd")) {
            rc = ae_fail(AE_ERR_SDP, "the offer has no ICE credentials");
            continue;
        }
        if (!attr_of(msg, m, "fingerprint")) {
            rc = ae_fail(AE_ERR_SDP, "the offer has no DTLS fingerprint");
            continue;
        }
        char *fmtp = NULL;
        int pt = find_opus(m, &fmtp);
        if (pt < 0) {
            rc = ae_fail(AE_ERR_SDP, "the offer's audio does not include Opus/48000");
            continue;
        }
        o->pt = pt;
        o->mline = (int)i;
        o->fmtp = fmtp;
        read_transport(msg, m, o);
    }
    gst_sdp_message_free(msg);
    if (o->pt >= 0) {
        ae_clear_error();
        return AE_OK;
    }
    if (!saw_audio) rc = ae_fail(AE_ERR_SDP, "the offer has no audio m-line");
    ae_offer_clear(o);
    return rc;
}

/* "sha-256" (SDP) -> "sha256" (OpenSSL) */
static const EVP_MD *digest_named(const char *alg)
{
    char name[16];
    size_t j = 0;
    for (const char *c = alg; *c && j + 1 < sizeof name; c++)
        if (*c != '-') name[j++] = (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c);
    name[j] = '\0';
    if (strncmp(name, "sha", 3) != 0) return NULL;
    const EVP_MD *md = EVP_get_digestbyname(name);
    return md;
}

bool ae_cert_matches(const ae_fingerprint *fps, int n, const unsigned char *der, int der_len)
{
    int strongest = 0;
    for (int i = 0; i < n; i++) {
        const EVP_MD *md = digest_named(fps[i].alg);
        if (md && (unsigned)EVP_MD_get_size(md) == fps[i].len && EVP_MD_get_size(md) > strongest)
            strongest = EVP_MD_get_size(md);
    }
    for (int i = 0; i < n && strongest; i++) {
        const EVP_MD *md = digest_named(fps[i].alg);
        if (!md || EVP_MD_get_size(md) != strongest || fps[i].len != (unsigned)strongest) continue;
        unsigned char out[EVP_MAX_MD_SIZE];
        unsigned len = 0;
        if (EVP_Digest(der, (size_t)der_len, out, &len, md, NULL) && len == fps[i].len &&
            CRYPTO_memcmp(out, fps[i].md, len) == 0)
            return true;
    }
    return false;
}

bool ae_fingerprint_usable(const ae_fingerprint *fp)
{
    const EVP_MD *md = digest_named(fp->alg);
    return md && (unsigned)EVP_MD_get_size(md) == fp->len;
}
