/* ae_dtls.c: DTLS-SRTP for the lean transport.
 *
 * The server is the DTLS server: the peer's DTLS ClientHello from an address
 * that passed ICE starts the handshake, its certificate must match the
 * offer's fingerprint, and the exported keys feed libsrtp. OpenSSL works
 * through memory BIOs (datagrams in, each record out as one datagram); no
 * cryptography or DTLS is written here. Everything here runs on the lean
 * transport's network thread, but the context and libsrtp's start. */
#define _GNU_SOURCE
#include "ae_dtls.h"

#include <dlfcn.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#define DTLS_MTU 1200
#define READ_BUF 2048         /* as large as any datagram the transport takes */

/* ---- libsrtp ------------------------------------------------------------ */

static pthread_once_t srtp_once = PTHREAD_ONCE_INIT;
static bool srtp_ready;

/* Debian's libsrtp2 does its crypto through NSS, and srtp_init starts NSS
 * "optimised for space": the softoken then keeps every key and session in
 * 32-bucket hash tables that each srtp_protect searches, so the cost of a
 * packet grew with the number of listeners (5.9 us at 1000, 0.7 us at 10).
 * Starting NSS first, with the same flags but full-sized tables, keeps it
 * near flat (1.5 us at 1000). A libsrtp on another backend has no NSS loaded:
 * then nothing is done. */
static void nss_start(void)
{
    void *nss = dlopen("libnss3.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!nss) return;
    typedef void *(*init_context_fn)(const char *, const char *, const char *, const char *,
                                     void *, uint32_t);
    typedef int (*is_initialized_fn)(void);
    init_context_fn init = (init_context_fn)dlsym(nss, "NSS_InitContext");
    is_initialized_fn initialized = (is_initialized_fn)dlsym(nss, "NSS_IsInitialized");
    /* NSS_INIT_READONLY | NOCERTDB | NOMODDB | FORCEOPEN | NOROOTINIT, as
     * libsrtp asks, without NSS_INIT_OPTIMIZESPACE (0x20) */
    if (init && initialized && !initialized()) init("", "", "", "", NULL, 0x1f);
    dlclose(nss);
}

static void srtp_start(void)
{
    nss_start();
    srtp_ready = srtp_init() == srtp_err_status_ok;
}

bool ae_srtp_start(void)
{
    pthread_once(&srtp_once, srtp_start);
    return srtp_ready;
}

/* ---- certificate, context, the BIO that sends --------------------------- */

static int bio_write(BIO *b, const char *data, int len)
{
    const ae_path *to = BIO_get_data(b);
    if (to && to->len)
        sendto(to->fd, data, (size_t)len, MSG_DONTWAIT, (const struct sockaddr *)&to->sa,
               to->len);
    return len;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1;
    case BIO_CTRL_DGRAM_QUERY_MTU: return DTLS_MTU;
    default: return 0;
    }
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

/* The peer's certificate is self-signed: what vouches for it is the
 * fingerprint in its offer, checked once the handshake is done. */
static int accept_any_cert(int ok, X509_STORE_CTX *ctx)
{
    (void)ok;
    (void)ctx;
    return 1;
}

int ae_dtls_ctx_init(ae_dtls_ctx *c)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    int rc = AE_OK;
    if (!key || !cert) {
        rc = ae_fail(AE_ERR_MEDIA, "cannot make the DTLS key");
        goto out;
    }
    uint32_t serial;
    RAND_bytes((unsigned char *)&serial, sizeof serial);
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), (long)(serial >> 1));
    X509_gmtime_adj(X509_getm_notBefore(cert), -86400);
    X509_gmtime_adj(X509_getm_notAfter(cert), 365L * 86400);
    X509_set_pubkey(cert, key);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"appliance", -1,
                               -1, 0);
    X509_set_issuer_name(cert, name);
    if (!X509_sign(cert, key, EVP_sha256())) {
        rc = ae_fail(AE_ERR_MEDIA, "cannot sign the DTLS certificate");
        goto out;
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    X509_digest(cert, EVP_sha256(), md, &mdlen);
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(c->fingerprint + 3 * i, 4, i + 1 < mdlen ? "%02X:" : "%02X", md[i]);

    c->ctx = SSL_CTX_new(DTLS_server_method());
    if (!c->ctx || !SSL_CTX_use_certificate(c->ctx, cert) || !SSL_CTX_use_PrivateKey(c->ctx, key) ||
        !SSL_CTX_check_private_key(c->ctx)) {
        rc = ae_fail(AE_ERR_MEDIA, "cannot set up DTLS");
        goto out;
    }
    SSL_CTX_set_min_proto_version(c->ctx, DTLS1_2_VERSION);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, accept_any_cert);
    SSL_CTX_set_session_cache_mode(c->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(c->ctx, 1);
    /* nothing but handshake and alerts is ever written, and those fit the
     * MTU: a 1.2 KiB write buffer per listener instead of 17 KiB */
    SSL_CTX_set_max_send_fragment(c->ctx, DTLS_MTU);
    /* 0 means success here */
    if (SSL_CTX_set_tlsext_use_srtp(c->ctx, "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80")) {
        rc = ae_fail(AE_ERR_MEDIA, "OpenSSL refused the SRTP profiles");
        goto out;
    }
    c->bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ae-dtls-out");
    BIO_meth_set_write(c->bio_method, bio_write);
    BIO_meth_set_ctrl(c->bio_method, bio_ctrl);
    BIO_meth_set_create(c->bio_method, bio_create);
out:
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

void ae_dtls_ctx_clear(ae_dtls_ctx *c)
{
    SSL_CTX_free(c->ctx);
    BIO_meth_free(c->bio_method);
    c->ctx = NULL;
    c->bio_method = NULL;
}

/* ---- a listener's connection -------------------------------------------- */

bool ae_dtls_new(const ae_dtls_ctx *c, ae_dtls *d, const ae_path *to)
{
    d->ssl = SSL_new(c->ctx);
    d->rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(c->bio_method);
    if (!d->ssl || !d->rbio || !wbio) {
        SSL_free(d->ssl);
        BIO_free(d->rbio);
        BIO_free(wbio);
        d->ssl = NULL;
        d->rbio = NULL;
        return false;
    }
    BIO_set_mem_eof_return(d->rbio, -1);
    BIO_set_data(wbio, (void *)to);
    SSL_set_bio(d->ssl, d->rbio, wbio);
    SSL_set_options(d->ssl, SSL_OP_NO_QUERY_MTU | SSL_OP_NO_RENEGOTIATION);
    DTLS_set_link_mtu(d->ssl, DTLS_MTU);
    SSL_set_accept_state(d->ssl);
    return true;
}

ae_dtls_event ae_dtls_handshake(ae_dtls *d, const uint8_t *buf, size_t len)
{
    BIO_write(d->rbio, buf, (int)len);
    if (SSL_is_init_finished(d->ssl)) return AE_DTLS_WAITING;
    int r = SSL_do_handshake(d->ssl);
    if (r == 1) return AE_DTLS_HANDSHAKEN;
    int err = SSL_get_error(d->ssl, r);
    if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
        d->fatal = true;
        return AE_DTLS_FAILED;
    }
    return AE_DTLS_WAITING;
}

ae_dtls_event ae_dtls_read(ae_dtls *d)
{
    if (!d->ssl || !SSL_is_init_finished(d->ssl)) return AE_DTLS_WAITING;
    /* After the handshake only alerts matter: close_notify ends it. */
    unsigned char sink[READ_BUF];
    for (;;) {
        int r = SSL_read(d->ssl, sink, sizeof sink);
        if (r > 0) continue;
        int err = SSL_get_error(d->ssl, r);
        if (err == SSL_ERROR_ZERO_RETURN) return AE_DTLS_CLOSED;
        if (err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL) {
            d->fatal = true;
            return AE_DTLS_FAILED;
        }
        return AE_DTLS_WAITING;
    }
}

void ae_dtls_settle(ae_dtls *d, bool connected)
{
    /* Nothing half-read carries over. Connected, a fresh empty BIO rather
     * than a reset one: that keeps the largest flight's buffer (~0.7 KiB). */
    BIO *fresh = d->ssl && connected ? BIO_new(BIO_s_mem()) : NULL;
    if (fresh) {
        BIO_set_mem_eof_return(fresh, -1);
        SSL_set0_rbio(d->ssl, fresh); /* frees the old one */
        d->rbio = fresh;
    } else if (d->rbio) {
        BIO_reset(d->rbio);
    }
    /* Connected, a listener's DTLS sees only the odd alert or retransmitted
     * flight: its 16 KiB read and its write buffer go back now and are made
     * again by the next read (it refuses while a record is half-read). */
    if (d->ssl && connected) SSL_free_buffers(d->ssl);
    ERR_clear_error();
}

static bool fingerprint_matches(const ae_fingerprint *fps, int nfps, X509 *cert)
{
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);
    bool ok = len > 0 && ae_cert_matches(fps, nfps, der, len);
    OPENSSL_free(der);
    return ok;
}

/* The replay window is for RTP received, which no listener sends us: ours
 * out needs only libsrtp's minimum (with allow_repeat_tx off it still
 * refuses to protect an index twice), and SRTCP in has a fixed 128-packet
 * window of its own. */
static bool make_srtp(srtp_t *out, int profile, const unsigned char *key, const unsigned char *salt,
                      int key_len, int salt_len, srtp_ssrc_type_t type, uint32_t ssrc)
{
    unsigned char master[64];
    memcpy(master, key, (size_t)key_len);
    memcpy(master + key_len, salt, (size_t)salt_len);
    srtp_policy_t pol;
    memset(&pol, 0, sizeof pol);
    if (profile == SRTP_AEAD_AES_128_GCM) {
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&pol.rtp);
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&pol.rtcp);
    } else {
        srtp_crypto_policy_set_rtp_default(&pol.rtp);
        srtp_crypto_policy_set_rtcp_default(&pol.rtcp);
    }
    pol.ssrc.type = type;
    pol.ssrc.value = ssrc;
    pol.key = master;
    pol.window_size = 64;
    pol.allow_repeat_tx = 0;
    bool ok = srtp_create(out, &pol) == srtp_err_status_ok;
    OPENSSL_cleanse(master, sizeof master);
    if (!ok) *out = NULL;
    return ok;
}

const char *ae_dtls_keys(ae_dtls *d, const ae_fingerprint *fps, int nfps, bool out,
                         uint32_t ssrc)
{
    X509 *cert = SSL_get0_peer_certificate(d->ssl);
    if (!cert || !fingerprint_matches(fps, nfps, cert))
        return "the peer's certificate does not match its offer";
    const SRTP_PROTECTION_PROFILE *prof = SSL_get_selected_srtp_profile(d->ssl);
    int id = prof ? (int)prof->id : 0;
    int key_len = 16, salt_len = id == SRTP_AEAD_AES_128_GCM ? 12 : 14;
    if (id != SRTP_AEAD_AES_128_GCM && id != SRTP_AES128_CM_SHA1_80)
        return "no SRTP profile agreed";
    unsigned char km[2 * (16 + 14)];
    size_t kmlen = 2 * (size_t)(key_len + salt_len);
    static const char label[] = "EXTRACTOR-dtls_srtp";
    if (SSL_export_keying_material(d->ssl, km, kmlen, label, sizeof label - 1, NULL, 0, 0) != 1)
        return "cannot export the SRTP keys";
    /* client key, server key, client salt, server salt; we are the server */
    const unsigned char *ckey = km, *skey = km + key_len, *csalt = km + 2 * key_len,
                        *ssalt = km + 2 * key_len + salt_len;
    /* ours: one SSRC, the sink's, so no template stream beside it (a
     * publisher gets nothing from us); the peer's media and reports come
     * from SSRCs its offer need not name. libsrtp keeps that session's
     * replay window: SRTP and SRTCP integrity stay its job. */
    bool ok = (!out || make_srtp(&d->tx, id, skey, ssalt, key_len, salt_len, ssrc_specific,
                                 ssrc)) &&
              make_srtp(&d->rx, id, ckey, csalt, key_len, salt_len, ssrc_any_inbound, 0);
    OPENSSL_cleanse(km, sizeof km);
    return ok ? NULL : "libsrtp refused the keys";
}

bool ae_dtls_retransmit(ae_dtls *d)
{
    struct timeval tv;
    if (DTLSv1_get_timeout(d->ssl, &tv) && tv.tv_sec == 0 && tv.tv_usec == 0 &&
        DTLSv1_handle_timeout(d->ssl) < 0)
        return false;
    ERR_clear_error();
    return true;
}

/* The buffers SSL_free_buffers took, back before anything is written:
 * OpenSSL's DTLS writes assume them (a read makes both; the read buffer is
 * empty, so this one only makes them). */
static void dtls_buffers_back(ae_dtls *d)
{
    unsigned char none[1];
    SSL_read(d->ssl, none, sizeof none);
    ERR_clear_error();
}

void ae_dtls_end(ae_dtls *d, bool notify)
{
    if (d->ssl) {
        /* close_notify back, only on a connection that is whole: OpenSSL
         * says SSL_shutdown must not follow a fatal error (it crashed in
         * libssl here when a failed peer was removed) */
        if (notify && !d->fatal && SSL_is_init_finished(d->ssl) &&
            !(SSL_get_shutdown(d->ssl) & SSL_SENT_SHUTDOWN)) {
            dtls_buffers_back(d);
            SSL_shutdown(d->ssl);
        }
        SSL_free(d->ssl); /* frees both BIOs */
        d->ssl = NULL;
        d->rbio = NULL;
    }
    if (d->tx) srtp_dealloc(d->tx);
    if (d->rx) srtp_dealloc(d->rx);
    d->tx = d->rx = NULL;
    ERR_clear_error();
}
