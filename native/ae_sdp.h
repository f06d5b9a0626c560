/* ae_sdp.h: an offer, read once for both listener transports. */
#ifndef AE_SDP_H
#define AE_SDP_H

#include "ae_core.h"

#define AE_OFFER_MAX_FINGERPRINTS 4
#define AE_OFFER_MAX_MLINES 16

/* An a=fingerprint line: the hash function's SDP name and the digest. */
typedef struct ae_fingerprint {
    char alg[16];                        /* "sha-256", ... */
    unsigned char md[64];
    unsigned len;
} ae_fingerprint;

typedef struct ae_offer {
    int pt, mline;                       /* the Opus payload type and its m-line */
    char *fmtp;                          /* its Opus parameters, or NULL */
    char mid[64];                        /* the audio m-line's mid, "" = none */
    bool bundle;                         /* the offer has a BUNDLE group */
    char bundle_tag[64];                 /* the group's first mid (RFC 8843's offerer tag) */
    char ice_ufrag[257], ice_pwd[257];
    char setup[16];                      /* "" when absent */
    bool rtcp_mux, datachannel;
    int nfingerprints;
    ae_fingerprint fingerprints[AE_OFFER_MAX_FINGERPRINTS];
    int nmlines;                         /* every m-line, for the answer to reject the others */
    struct {
        char media[16], proto[48], fmt[32], mid[64];   /* fmt: "webrtc-datachannel" */
        bool port0;                      /* port 0: rejected, or bundle-only */
        bool live;                       /* a port, or port 0 with a=bundle-only (RFC 8843) */
        bool bundled;                    /* named in the BUNDLE group */
    } mlines[AE_OFFER_MAX_MLINES];
    bool too_many_mlines;
} ae_offer;

/* Parse and check an offer: AE_OK, or AE_ERR_SDP with the reason set. */
int ae_offer_parse(const char *sdp, ae_offer *o);
/* The same for a publisher's offer (publish): its audio is sent to us. */
int ae_offer_parse_for(const char *sdp, bool publish, ae_offer *o);
void ae_offer_clear(ae_offer *o);

/* RFC 8122 section 5: of the hash functions the fingerprints use, take the
 * strongest the library knows; the certificate (DER) must match one
 * fingerprint made with it. */
bool ae_cert_matches(const ae_fingerprint *fps, int n, const unsigned char *der, int der_len);
/* A hash function the library knows, and a digest of its size. */
bool ae_fingerprint_usable(const ae_fingerprint *fp);

#endif
