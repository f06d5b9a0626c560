/* ae_dtls.h: DTLS-SRTP for the lean transport, with OpenSSL through memory
 * BIOs and libsrtp2: one certificate and context for every listener; per
 * listener the handshake as the DTLS server over a path that passed ICE,
 * the peer's certificate against its offer's fingerprints, and the keys
 * exported into two libsrtp sessions. */
#ifndef AE_DTLS_H
#define AE_DTLS_H

#include "ae_sdp.h"
#include "ae_stun.h"

#include <openssl/ssl.h>
#include <srtp2/srtp.h>

/* libsrtp started, once a process (NSS under it first): false if it would
 * not start. */
bool ae_srtp_start(void);

/* What every listener's DTLS shares. */
typedef struct ae_dtls_ctx {
    SSL_CTX *ctx;
    BIO_METHOD *bio_method;              /* the BIO that sends */
    char fingerprint[32 * 3];            /* our certificate's SHA-256, for the answer */
} ae_dtls_ctx;

/* A fresh certificate (ECDSA P-256) and the context around it. */
int ae_dtls_ctx_init(ae_dtls_ctx *c);
void ae_dtls_ctx_clear(ae_dtls_ctx *c);

/* One listener's DTLS connection and the SRTP sessions it keyed. */
typedef struct ae_dtls {
    SSL *ssl;
    BIO *rbio;
    srtp_t tx, rx;                       /* ours out (RTP, sender reports); the peer's reports in */
    bool fatal;                          /* OpenSSL reported a fatal error: no SSL_shutdown */
} ae_dtls;

typedef enum {
    AE_DTLS_WAITING,                     /* nothing for the caller to do */
    AE_DTLS_HANDSHAKEN,                  /* the handshake completed: ae_dtls_keys next */
    AE_DTLS_CLOSED,                      /* the peer closed DTLS */
    AE_DTLS_FAILED,                      /* a fatal error (fatal is set) */
} ae_dtls_event;

/* The SSL of a handshake as the server; every record it writes goes as one
 * datagram to *to, read at each send (the caller keeps it where the peer's
 * DTLS comes from). false when OpenSSL cannot make one. */
bool ae_dtls_new(const ae_dtls_ctx *c, ae_dtls *d, const ae_path *to);
/* One datagram of the peer's, into the handshake while it is not finished:
 * WAITING, HANDSHAKEN or FAILED. */
ae_dtls_event ae_dtls_handshake(ae_dtls *d, const uint8_t *buf, size_t len);
/* After the handshake, what the peer sent: WAITING, CLOSED or FAILED. */
ae_dtls_event ae_dtls_read(ae_dtls *d);
/* Once a datagram is done with: nothing half-read carries over, and a
 * connected listener's buffers go back. */
void ae_dtls_settle(ae_dtls *d, bool connected);
/* The handshake done: the peer's certificate must match one of the offer's
 * fingerprints (RFC 8122), then the exported keys make the session in and,
 * when `out`, the one out for `ssrc`. NULL, or why not. */
const char *ae_dtls_keys(ae_dtls *d, const ae_fingerprint *fps, int nfps, bool out,
                         uint32_t ssrc);
/* Before the handshake completes, from the housekeeping tick: retransmits a
 * flight when it is due. false when that failed. */
bool ae_dtls_retransmit(ae_dtls *d);
/* Frees the connection and its SRTP sessions; close_notify first when
 * `notify` and the connection is whole. */
void ae_dtls_end(ae_dtls *d, bool notify);

#endif
