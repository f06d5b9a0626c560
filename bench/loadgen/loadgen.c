/* loadgen: many WebRTC audio listeners in one process, for benchmarks.
 *
 * Each listener is one UDP socket on a loopback address, an ICE agent
 * (libnice's STUN library: it sends Binding requests and answers the
 * server's), a DTLS client (OpenSSL, use_srtp, memory BIOs), an SRTP
 * session (libsrtp2) and sequence-number loss accounting. A sample of the
 * listeners also decodes the Opus stream (libopus) and measures its pitch.
 * A fixed number of worker threads (epoll) carries all the listeners, so a
 * thousand fit next to the server on a 2-core machine.
 *
 * Protocol: commands on stdin, one JSON object per line on stdout. See
 * README.md next to this file.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <sched.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <opus.h>
#include <srtp2/srtp.h>
#include <stun/stunagent.h>
#include <stun/usages/ice.h>

#define MAX_LISTENERS (1 << 16)
#define MAX_WORKERS 16
#define PENDING_CHECKS 8
#define DGRAM_MAX 1500
#define DTLS_MTU 1200
#define RX_BATCH 16
#define SAMPLE_RATE 48000

enum dtls_state { DTLS_NONE, DTLS_HANDSHAKE, DTLS_UP, DTLS_FAILED, DTLS_CLOSED };

typedef struct listener {
    int id;
    int fd;
    struct worker *worker;
    struct sockaddr_in local;
    char lufrag[16], lpwd[40];
    char rufrag[260], rpwd[260];
    uint8_t rfp[32];
    bool have_rfp;
    bool remote_lite;
    bool dtls_server;                  /* the remote said setup:active */
    struct sockaddr_in peer;
    bool have_peer;
    bool controlling;
    uint64_t tie;
    StunAgent stun;
    StunTransactionId pending[PENDING_CHECKS];
    int npending;                      /* ring position */
    bool ice_ok;
    double next_check, next_rr, deadline_connect;
    SSL *ssl;
    BIO *rbio, *wbio;
    enum dtls_state dtls;
    srtp_t srtp;
    bool srtp_ok;
    uint32_t rr_ssrc;
    /* receive statistics */
    uint64_t packets, bytes, unprotect_fail, reordered, stun_in, stun_bad, rtcp_in;
    uint32_t rx_dropped;               /* by our socket, full buffer (SO_RXQ_OVFL) */
    int flights_dropped;               /* -d: the server's final flight, lost on purpose */
    uint64_t unprotected;              /* packets through srtp_unprotect */
    uint32_t ssrc;
    bool have_seq;
    int64_t first_ext, max_ext;
    double t_created, t_started, t_ice, t_dtls, t_first, t_last;
    /* pitch, for a sample */
    OpusDecoder *dec;
    int64_t decoded, crossings;
    bool armed;
    float peak;
    int decode_errors;
    /* lifecycle */
    bool active;                       /* owned by a worker */
    bool closing;
    struct listener *wnext;            /* in the worker's list */
} listener;

typedef struct worker {
    pthread_t thread;
    pthread_mutex_t mu;
    /* threads waiting for mu: a busy worker lets them in before it takes it
     * again (mutexes are not fair; without this a command could wait for
     * seconds while the worker always has packets to read) */
    atomic_int waiters;
    int ep;
    listener *head;
    int count;
} worker;

static listener *table[MAX_LISTENERS];
static worker workers[MAX_WORKERS];
static int nworkers = 2;
static int sample_every = 50;          /* decode one listener in this many */
static int unprotect_every = 1;        /* SRTP-check one packet in this many */
static bool drop_final_flight;         /* -d: lose the server's first ChangeCipherSpec datagram */
static const char *bind_addr = "127.0.0.1";
static SSL_CTX *ssl_ctx;
static char local_fp[32 * 3];
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;
static const uint16_t known_attrs[] = {
    STUN_ATTRIBUTE_MAPPED_ADDRESS, STUN_ATTRIBUTE_XOR_MAPPED_ADDRESS, STUN_ATTRIBUTE_USERNAME,
    STUN_ATTRIBUTE_MESSAGE_INTEGRITY, STUN_ATTRIBUTE_FINGERPRINT, STUN_ATTRIBUTE_PRIORITY,
    STUN_ATTRIBUTE_USE_CANDIDATE, STUN_ATTRIBUTE_ICE_CONTROLLED, STUN_ATTRIBUTE_ICE_CONTROLLING,
    STUN_ATTRIBUTE_ERROR_CODE, STUN_ATTRIBUTE_SOFTWARE, 0};

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

/* ---- output: one JSON object per line ---------------------------------- */

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c == '\r')
            fputs("\\r", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void emit_event(int id, const char *event, const char *key, const char *text)
{
    pthread_mutex_lock(&out_mu);
    fprintf(stdout, "{\"event\":\"%s\",\"id\":%d,\"t\":%.6f", event, id, now_s());
    if (key) {
        fprintf(stdout, ",\"%s\":", key);
        json_str(stdout, text);
    }
    fputs("}\n", stdout);
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

static double pitch_hz(const listener *l)
{
    return l->decoded > SAMPLE_RATE / 2 ? (double)l->crossings * SAMPLE_RATE / l->decoded : 0.0;
}

/* Written under the listener's worker lock, or after the listener left it. */
static void format_stats(const listener *l, char *buf, size_t size, const char *event)
{
    int64_t expected = l->have_seq ? l->max_ext - l->first_ext + 1 : 0;
    int64_t lost = expected - (int64_t)l->packets;
    if (lost < 0)
        lost = 0;
    snprintf(buf, size,
             "{\"event\":\"%s\",\"id\":%d,\"t\":%.6f,\"ice\":%s,\"dtls\":\"%s\",\"packets\":%llu,"
             "\"bytes\":%llu,\"expected\":%lld,\"lost\":%lld,\"reordered\":%llu,"
             "\"unprotect_fail\":%llu,\"unprotected\":%llu,\"rx_dropped\":%u,\"stun_in\":%llu,\"stun_bad\":%llu,\"rtcp_in\":%llu,"
             "\"t_started\":%.6f,\"t_ice\":%.6f,\"t_dtls\":%.6f,\"t_first\":%.6f,\"t_last\":%.6f,"
             "\"decoded_s\":%.3f,\"pitch_hz\":%.2f,\"peak\":%.4f,\"decode_errors\":%d,"
             "\"flights_dropped\":%d}",
             event, l->id, now_s(), l->ice_ok ? "true" : "false",
             (const char *[]){"none", "handshake", "up", "failed", "closed"}[l->dtls],
             (unsigned long long)l->packets, (unsigned long long)l->bytes, (long long)expected,
             (long long)lost, (unsigned long long)l->reordered,
             (unsigned long long)l->unprotect_fail, (unsigned long long)l->unprotected,
             l->rx_dropped, (unsigned long long)l->stun_in,
             (unsigned long long)l->stun_bad, (unsigned long long)l->rtcp_in, l->t_started,
             l->t_ice, l->t_dtls, l->t_first, l->t_last, (double)l->decoded / SAMPLE_RATE,
             pitch_hz(l), l->peak, l->decode_errors, l->flights_dropped);
}

static void emit_line(const char *line)
{
    pthread_mutex_lock(&out_mu);
    fputs(line, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    pthread_mutex_unlock(&out_mu);
}

/* ---- certificate ---------------------------------------------------------- */

static void die(const char *what)
{
    fprintf(stderr, "loadgen: %s\n", what);
    ERR_print_errors_fp(stderr);
    exit(1);
}

static int accept_any_cert(int ok, X509_STORE_CTX *ctx)
{
    (void)ok;
    (void)ctx;
    return 1;   /* self-signed: checked against a=fingerprint after the handshake */
}

static unsigned int dtls_timer(SSL *s, unsigned int timer_us)
{
    (void)s;
    /* OpenSSL's default starts at 1 s; browsers retransmit sooner */
    if (timer_us == 0)
        return 100000;
    return timer_us >= 800000 ? 1000000 : timer_us * 2;
}

static void make_ssl_ctx(void)
{
    EVP_PKEY *key = EVP_EC_gen("P-256");
    X509 *cert = X509_new();
    if (!key || !cert)
        die("key generation failed");
    X509_set_version(cert, 2);
    uint64_t serial;
    getrandom(&serial, sizeof serial, 0);
    ASN1_INTEGER_set_uint64(X509_get_serialNumber(cert), serial >> 1);
    X509_gmtime_adj(X509_getm_notBefore(cert), -86400);
    X509_gmtime_adj(X509_getm_notAfter(cert), 30 * 86400);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"loadgen", -1, -1,
                               0);
    X509_set_issuer_name(cert, name);
    X509_set_pubkey(cert, key);
    if (!X509_sign(cert, key, EVP_sha256()))
        die("X509_sign failed");
    unsigned char md[32];
    unsigned int mdlen = 0;
    X509_digest(cert, EVP_sha256(), md, &mdlen);
    for (unsigned i = 0; i < mdlen; i++)
        sprintf(local_fp + 3 * i, "%02X%s", md[i], i + 1 < mdlen ? ":" : "");

    ssl_ctx = SSL_CTX_new(DTLS_method());
    if (!ssl_ctx)
        die("SSL_CTX_new failed");
    SSL_CTX_use_certificate(ssl_ctx, cert);
    SSL_CTX_use_PrivateKey(ssl_ctx, key);
    SSL_CTX_set_verify(ssl_ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, accept_any_cert);
    SSL_CTX_set_min_proto_version(ssl_ctx, DTLS1_2_VERSION);
    SSL_CTX_set_options(ssl_ctx, SSL_OP_NO_QUERY_MTU);
    SSL_CTX_set_read_ahead(ssl_ctx, 1);
    if (SSL_CTX_set_tlsext_use_srtp(ssl_ctx, "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80") != 0)
        die("use_srtp failed");
    X509_free(cert);
    EVP_PKEY_free(key);
}

/* ---- listeners -------------------------------------------------------------- */

static void random_text(char *out, size_t n)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char raw[64];
    getrandom(raw, n, 0);
    for (size_t i = 0; i < n; i++)
        out[i] = alphabet[raw[i] & 63];
    out[n] = 0;
}

static listener *listener_new(int id)
{
    listener *l = calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->id = id;
    l->fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (l->fd < 0) {
        free(l);
        return NULL;
    }
    int rcvbuf = 256 * 1024, one = 1;
    setsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    /* tells loss in our own socket buffer from loss before it */
    setsockopt(l->fd, SOL_SOCKET, SO_RXQ_OVFL, &one, sizeof one);
    l->local.sin_family = AF_INET;
    inet_pton(AF_INET, bind_addr, &l->local.sin_addr);
    socklen_t len = sizeof l->local;
    if (bind(l->fd, (struct sockaddr *)&l->local, sizeof l->local) < 0 ||
        getsockname(l->fd, (struct sockaddr *)&l->local, &len) < 0) {
        close(l->fd);
        free(l);
        return NULL;
    }
    random_text(l->lufrag, 8);
    random_text(l->lpwd, 24);
    getrandom(&l->tie, sizeof l->tie, 0);
    getrandom(&l->rr_ssrc, sizeof l->rr_ssrc, 0);
    stun_agent_init(&l->stun, known_attrs, STUN_COMPATIBILITY_RFC5389,
                    STUN_AGENT_USAGE_SHORT_TERM_CREDENTIALS | STUN_AGENT_USAGE_USE_FINGERPRINT);
    l->t_created = now_s();
    if (sample_every > 0 && id % sample_every == 0) {
        int err;
        l->dec = opus_decoder_create(SAMPLE_RATE, 2, &err);
    }
    return l;
}

static void listener_free(listener *l)
{
    if (l->ssl)
        SSL_free(l->ssl);   /* frees its BIOs */
    if (l->srtp_ok)
        srtp_dealloc(l->srtp);
    if (l->dec)
        opus_decoder_destroy(l->dec);
    if (l->fd >= 0)
        close(l->fd);
    free(l);
}

static void send_to_peer(listener *l, const void *buf, size_t len)
{
    if (!l->have_peer)
        return;
    sendto(l->fd, buf, len, 0, (struct sockaddr *)&l->peer, sizeof l->peer);
}

/* Send what DTLS wrote, one datagram per group of whole records that fits. */
static void flush_dtls(listener *l)
{
    uint8_t buf[16384], out[DTLS_MTU + 64];
    int n;
    while ((n = BIO_read(l->wbio, buf, sizeof buf)) > 0) {
        int pos = 0, olen = 0;
        while (pos + 13 <= n) {
            int rlen = 13 + ((buf[pos + 11] << 8) | buf[pos + 12]);
            if (pos + rlen > n)
                rlen = n - pos;
            if (olen > 0 && olen + rlen > DTLS_MTU) {
                send_to_peer(l, out, olen);
                olen = 0;
            }
            if (rlen > (int)sizeof out) {   /* cannot happen with the MTU set */
                send_to_peer(l, buf + pos, rlen);
            } else {
                memcpy(out + olen, buf + pos, rlen);
                olen += rlen;
            }
            pos += rlen;
        }
        if (olen > 0)
            send_to_peer(l, out, olen);
    }
}

static void start_dtls(listener *l)
{
    l->ssl = SSL_new(ssl_ctx);
    l->rbio = BIO_new(BIO_s_mem());
    l->wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(l->rbio, -1);
    SSL_set_bio(l->ssl, l->rbio, l->wbio);
    SSL_set_mtu(l->ssl, DTLS_MTU);
    DTLS_set_link_mtu(l->ssl, DTLS_MTU);
    DTLS_set_timer_cb(l->ssl, dtls_timer);
    if (l->dtls_server)
        SSL_set_accept_state(l->ssl);
    else
        SSL_set_connect_state(l->ssl);
    l->dtls = DTLS_HANDSHAKE;
    SSL_do_handshake(l->ssl);
    flush_dtls(l);
}

static bool setup_srtp(listener *l)
{
    SRTP_PROTECTION_PROFILE *p = SSL_get_selected_srtp_profile(l->ssl);
    if (!p)
        return false;
    size_t key_len = 16, salt_len;
    srtp_policy_t in, out;
    memset(&in, 0, sizeof in);
    memset(&out, 0, sizeof out);
    if (p->id == SRTP_AES128_CM_SHA1_80) {
        salt_len = 14;
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&in.rtp);
        srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&in.rtcp);
    } else if (p->id == SRTP_AEAD_AES_128_GCM) {
        salt_len = 12;
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&in.rtp);
        srtp_crypto_policy_set_aes_gcm_128_16_auth(&in.rtcp);
    } else {
        return false;
    }
    uint8_t km[2 * (16 + 14)];
    size_t total = 2 * (key_len + salt_len);
    if (SSL_export_keying_material(l->ssl, km, total, "EXTRACTOR-dtls_srtp", 19, NULL, 0, 0) != 1)
        return false;
    /* client key, server key, client salt, server salt */
    uint8_t client[32], server[32];
    memcpy(client, km, key_len);
    memcpy(server, km + key_len, key_len);
    memcpy(client + key_len, km + 2 * key_len, salt_len);
    memcpy(server + key_len, km + 2 * key_len + salt_len, salt_len);
    bool we_are_client = !l->dtls_server;
    out.rtp = in.rtp;
    out.rtcp = in.rtcp;
    in.ssrc.type = ssrc_any_inbound;
    in.key = we_are_client ? server : client;
    in.window_size = 1024;
    out.ssrc.type = ssrc_specific;
    out.ssrc.value = l->rr_ssrc;
    out.key = we_are_client ? client : server;
    out.window_size = 1024;
    in.next = &out;
    if (srtp_create(&l->srtp, &in) != srtp_err_status_ok)
        return false;
    l->srtp_ok = true;
    return true;
}

static bool peer_fingerprint_ok(listener *l)
{
    if (!l->have_rfp)
        return true;   /* the remote gave none we can check (not sha-256) */
    X509 *cert = SSL_get1_peer_certificate(l->ssl);
    if (!cert)
        return false;
    unsigned char md[32];
    unsigned int mdlen = 0;
    X509_digest(cert, EVP_sha256(), md, &mdlen);
    X509_free(cert);
    return mdlen == 32 && memcmp(md, l->rfp, 32) == 0;
}

/* A datagram that carries a ChangeCipherSpec record: the final flight of
 * a DTLS 1.2 handshake (records: type, version, epoch, sequence, length). */
static bool carries_ccs(const uint8_t *buf, int len)
{
    for (int off = 0; off + 13 <= len; off += 13 + (buf[off + 11] << 8 | buf[off + 12]))
        if (buf[off] == 20)
            return true;
    return false;
}

static void on_dtls(listener *l, uint8_t *buf, int len)
{
    if (drop_final_flight && l->dtls == DTLS_HANDSHAKE && !l->flights_dropped &&
        carries_ccs(buf, len)) {
        l->flights_dropped++;   /* as a lossy network would: our timer resends our flight */
        return;
    }
    if (!l->ssl) {
        if (!l->dtls_server)
            return;
        start_dtls(l);
    }
    BIO_write(l->rbio, buf, len);
    if (l->dtls == DTLS_HANDSHAKE) {
        int r = SSL_do_handshake(l->ssl);
        flush_dtls(l);
        if (r == 1) {
            if (!peer_fingerprint_ok(l)) {
                l->dtls = DTLS_FAILED;
                emit_event(l->id, "error", "message", "peer certificate does not match a=fingerprint");
            } else if (!setup_srtp(l)) {
                l->dtls = DTLS_FAILED;
                emit_event(l->id, "error", "message", "no usable SRTP profile");
            } else {
                l->dtls = DTLS_UP;
                l->t_dtls = now_s();
                emit_event(l->id, "dtls", "profile", SSL_get_selected_srtp_profile(l->ssl)->name);
            }
        } else {
            int e = SSL_get_error(l->ssl, r);
            if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
                l->dtls = DTLS_FAILED;
                char msg[256];
                ERR_error_string_n(ERR_get_error(), msg, sizeof msg);
                emit_event(l->id, "error", "message", msg);
            }
        }
    } else if (l->dtls == DTLS_UP) {
        uint8_t app[2048];
        int r = SSL_read(l->ssl, app, sizeof app);
        if (r <= 0 && SSL_get_error(l->ssl, r) == SSL_ERROR_ZERO_RETURN) {
            l->dtls = DTLS_CLOSED;
            emit_event(l->id, "dtls-closed", NULL, NULL);
        }
        flush_dtls(l);
    }
}

static void on_rtp(listener *l, uint8_t *buf, int len, double t)
{
    if (len < 12 || !l->srtp_ok)
        return;
    uint8_t pt = buf[1] & 0x7f;
    if (pt >= 64 && pt <= 95) {   /* RTCP (RFC 5761): sender reports */
        l->rtcp_in++;
        return;
    }
    /* The RTP header is in clear: loss needs no decryption. Decoding
     * listeners unprotect everything; the others every unprotect_every-th
     * packet (their first included), which still checks every session's
     * keys and the server's authentication tags, for a fraction of the cost. */
    if (l->dec || unprotect_every <= 1 || l->packets % unprotect_every == 0) {
        if (srtp_unprotect(l->srtp, buf, &len) != srtp_err_status_ok) {
            l->unprotect_fail++;
            return;
        }
        l->unprotected++;
    }
    uint16_t seq = (buf[2] << 8) | buf[3];
    if (!l->have_seq) {
        l->have_seq = true;
        l->first_ext = l->max_ext = seq;
        l->ssrc = ((uint32_t)buf[8] << 24) | (buf[9] << 16) | (buf[10] << 8) | buf[11];
        l->t_first = t;
        emit_event(l->id, "first", NULL, NULL);
    } else {
        int16_t delta = (int16_t)(seq - (uint16_t)l->max_ext);
        if (delta > 0)
            l->max_ext += delta;
        else
            l->reordered++;
    }
    l->packets++;
    l->bytes += len;
    l->t_last = t;
    if (l->dec) {
        int cc = buf[0] & 0x0f, off = 12 + 4 * cc;
        if (buf[0] & 0x10) {   /* header extension */
            if (off + 4 > len)
                return;
            off += 4 + 4 * ((buf[off + 2] << 8) | buf[off + 3]);
        }
        int end = len;
        if (buf[0] & 0x20)
            end -= buf[len - 1];
        if (off >= end)
            return;
        float pcm[5760 * 2];
        int n = opus_decode_float(l->dec, buf + off, end - off, pcm, 5760, 0);
        if (n < 0) {
            l->decode_errors++;
            return;
        }
        /* rising crossings of the left channel, with hysteresis */
        for (int i = 0; i < n; i++) {
            float x = pcm[2 * i];
            if (fabsf(x) > l->peak)
                l->peak = fabsf(x);
            if (x < -0.01f)
                l->armed = true;
            else if (x > 0.01f && l->armed) {
                l->armed = false;
                l->crossings++;
            }
        }
        l->decoded += n;
    }
}

static void forget_old_check(listener *l, const uint8_t *buf)
{
    StunTransactionId id;
    memcpy(id, buf + 8, sizeof id);   /* transaction id: bytes 8..19 */
    int slot = l->npending % PENDING_CHECKS;
    if (l->npending >= PENDING_CHECKS)
        stun_agent_forget_transaction(&l->stun, l->pending[slot]);
    memcpy(l->pending[slot], id, sizeof id);
    l->npending++;
}

static void send_check(listener *l)
{
    uint8_t buf[STUN_MAX_MESSAGE_SIZE_IPV6];
    StunMessage msg;
    char user[600];
    int ulen = snprintf(user, sizeof user, "%s:%s", l->rufrag, l->lufrag);
    /* priority of a peer-reflexive candidate (RFC 8445 5.1.2) */
    uint32_t prio = (110u << 24) | (65535u << 8) | 255u;
    size_t n = stun_usage_ice_conncheck_create(
        &l->stun, &msg, buf, sizeof buf, (uint8_t *)user, ulen, (uint8_t *)l->rpwd,
        strlen(l->rpwd), l->controlling, l->controlling, prio, l->tie, NULL,
        STUN_USAGE_ICE_COMPATIBILITY_RFC5245);
    if (n == 0) {
        /* the agent's table of sent requests is full: start over */
        stun_agent_init(&l->stun, known_attrs, STUN_COMPATIBILITY_RFC5389,
                        STUN_AGENT_USAGE_SHORT_TERM_CREDENTIALS | STUN_AGENT_USAGE_USE_FINGERPRINT);
        l->npending = 0;
        return;
    }
    forget_old_check(l, buf);
    send_to_peer(l, buf, n);
}

static bool validate_cb(StunAgent *agent, StunMessage *message, uint8_t *username,
                        uint16_t username_len, uint8_t **password, size_t *password_len,
                        void *data)
{
    (void)agent;
    (void)message;
    listener *l = data;
    size_t ul = strlen(l->lufrag);
    /* USERNAME of a request to us is "<our ufrag>:<theirs>" */
    if (username_len < ul + 1 || memcmp(username, l->lufrag, ul) != 0 || username[ul] != ':')
        return false;
    *password = (uint8_t *)l->lpwd;
    *password_len = strlen(l->lpwd);
    return true;
}

static void on_stun(listener *l, uint8_t *buf, int len, struct sockaddr_in *from, double t)
{
    StunMessage msg;
    StunValidationStatus v = stun_agent_validate(&l->stun, &msg, buf, len, validate_cb, l);
    if (v != STUN_VALIDATION_SUCCESS) {
        l->stun_bad++;
        return;
    }
    l->stun_in++;
    StunClass cls = stun_message_get_class(&msg);
    if (cls == STUN_REQUEST) {
        uint8_t out[STUN_MAX_MESSAGE_SIZE_IPV6];
        StunMessage reply;
        size_t olen = sizeof out;
        bool control = l->controlling;
        struct sockaddr_storage src;
        memset(&src, 0, sizeof src);
        memcpy(&src, from, sizeof *from);
        StunUsageIceReturn r = stun_usage_ice_conncheck_create_reply(
            &l->stun, &msg, &reply, out, &olen, &src, sizeof *from, &control, l->tie,
            STUN_USAGE_ICE_COMPATIBILITY_RFC5245);
        if (control != l->controlling)
            l->controlling = control;   /* role conflict resolved by the tie-breaker */
        if (!l->have_peer) {   /* the server's address, peer-reflexive */
            l->peer = *from;
            l->have_peer = true;
        }
        if (olen > 0 && (r == STUN_USAGE_ICE_RETURN_SUCCESS ||
                         r == STUN_USAGE_ICE_RETURN_ROLE_CONFLICT))
            sendto(l->fd, out, olen, 0, (struct sockaddr *)from, sizeof *from);
    } else if (cls == STUN_RESPONSE) {
        if (!l->ice_ok) {
            l->ice_ok = true;
            l->t_ice = t;
            l->peer = *from;
            l->have_peer = true;
            emit_event(l->id, "connected", NULL, NULL);
            if (!l->dtls_server && !l->ssl)
                start_dtls(l);
        }
    } else if (cls == STUN_ERROR) {
        int code = 0;
        stun_message_find_error(&msg, &code);
        if (code == STUN_ERROR_ROLE_CONFLICT)
            l->controlling = !l->controlling;
    }
}

/* An RTCP receiver report (SRTCP) now and then: what a browser sends, and
 * what keeps a listener alive on a server that watches RTCP. */
static void send_rr(listener *l)
{
    uint8_t buf[128];
    int64_t expected = l->have_seq ? l->max_ext - l->first_ext + 1 : 0;
    int64_t lost = expected - (int64_t)l->packets;
    if (lost < 0)
        lost = 0;
    uint32_t w[8];
    w[0] = htonl((2u << 30) | (1u << 24) | (201u << 16) | 7u);
    w[1] = htonl(l->rr_ssrc);
    w[2] = htonl(l->ssrc);
    w[3] = htonl((uint32_t)(lost & 0xffffff));
    w[4] = htonl((uint32_t)l->max_ext);
    w[5] = 0;
    w[6] = 0;
    w[7] = 0;
    memcpy(buf, w, sizeof w);
    int len = sizeof w;
    if (srtp_protect_rtcp(l->srtp, buf, &len) == srtp_err_status_ok)
        send_to_peer(l, buf, len);
}

static void on_timers(listener *l, double t)
{
    if (l->closing)
        return;
    if (t >= l->next_check && l->have_peer) {
        send_check(l);
        /* quick until the first answer; then consent freshness (RFC 7675) */
        l->next_check = t + (l->ice_ok ? 2.0 + (rand() % 1000) / 1000.0 : 0.05);
    }
    if (l->ssl && l->dtls == DTLS_HANDSHAKE) {
        struct timeval tv;
        if (DTLSv1_get_timeout(l->ssl, &tv) == 1 && tv.tv_sec == 0 && tv.tv_usec == 0) {
            DTLSv1_handle_timeout(l->ssl);
            flush_dtls(l);
        }
    }
    if (l->dtls == DTLS_UP && l->have_seq && t >= l->next_rr) {
        send_rr(l);
        l->next_rr = t + 1.0;
    }
}

static void on_readable(listener *l)
{
    static __thread uint8_t bufs[RX_BATCH][DGRAM_MAX];
    struct mmsghdr msgs[RX_BATCH];
    struct iovec iov[RX_BATCH];
    struct sockaddr_in from[RX_BATCH];
    union {
        char buf[CMSG_SPACE(sizeof(uint32_t))];
        struct cmsghdr align;
    } control[RX_BATCH];
    for (;;) {
        for (int i = 0; i < RX_BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = DGRAM_MAX;
            memset(&msgs[i].msg_hdr, 0, sizeof msgs[i].msg_hdr);
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = &from[i];
            msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            msgs[i].msg_hdr.msg_control = control[i].buf;
            msgs[i].msg_hdr.msg_controllen = sizeof control[i].buf;
        }
        int n = recvmmsg(l->fd, msgs, RX_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0)
            return;
        double t = now_s();
        for (int i = 0; i < n; i++) {
            uint8_t *b = bufs[i];
            int len = msgs[i].msg_len;
            for (struct cmsghdr *c = CMSG_FIRSTHDR(&msgs[i].msg_hdr); c;
                 c = CMSG_NXTHDR(&msgs[i].msg_hdr, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SO_RXQ_OVFL)
                    memcpy(&l->rx_dropped, CMSG_DATA(c), sizeof l->rx_dropped);
            if (len < 1)
                continue;
            if (b[0] < 4)
                on_stun(l, b, len, &from[i], t);
            else if (b[0] >= 20 && b[0] < 64)
                on_dtls(l, b, len);
            else if (b[0] >= 128 && b[0] < 192)
                on_rtp(l, b, len, t);
        }
        if (n < RX_BATCH)
            return;
    }
}

static void worker_remove(worker *w, listener *l)
{
    listener **p = &w->head;
    while (*p && *p != l)
        p = &(*p)->wnext;
    if (*p)
        *p = l->wnext;
    w->count--;
    epoll_ctl(w->ep, EPOLL_CTL_DEL, l->fd, NULL);
}

static void worker_lock(worker *w)
{
    atomic_fetch_add(&w->waiters, 1);
    pthread_mutex_lock(&w->mu);
    atomic_fetch_sub(&w->waiters, 1);
}

static void *worker_main(void *arg)
{
    worker *w = arg;
    struct epoll_event evs[256];
    double next_sweep = 0;
    for (;;) {
        int n = epoll_wait(w->ep, evs, 256, 5);
        pthread_mutex_lock(&w->mu);
        for (int i = 0; i < n; i++) {
            listener *l = evs[i].data.ptr;
            if (!l->closing)
                on_readable(l);
        }
        double t = now_s();
        if (t >= next_sweep) {
            listener *next;
            for (listener *l = w->head; l; l = next) {
                next = l->wnext;
                if (l->closing) {
                    if (l->ssl && l->dtls == DTLS_UP) {
                        SSL_shutdown(l->ssl);   /* close_notify */
                        flush_dtls(l);
                    }
                    char line[1024];
                    format_stats(l, line, sizeof line, "closed");
                    emit_line(line);
                    worker_remove(w, l);
                    table[l->id] = NULL;
                    listener_free(l);
                    continue;
                }
                on_timers(l, t);
            }
            next_sweep = t + 0.01;
        }
        pthread_mutex_unlock(&w->mu);
        while (atomic_load(&w->waiters) > 0)
            sched_yield();
    }
    return NULL;
}

static void activate(listener *l)
{
    worker *w = &workers[l->id % nworkers];
    worker_lock(w);
    l->worker = w;
    l->active = true;
    l->t_started = now_s();
    l->next_check = 0;
    l->wnext = w->head;
    w->head = l;
    w->count++;
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = l};
    epoll_ctl(w->ep, EPOLL_CTL_ADD, l->fd, &ev);
    pthread_mutex_unlock(&w->mu);
}

/* ---- SDP ---------------------------------------------------------------------- */

typedef struct {
    char ufrag[260], pwd[260];
    uint8_t fp[32];
    bool have_fp, lite;
    char setup[16];
    int opus_pt;
    char mid[40];
    struct sockaddr_in cand;
    bool have_cand;
    bool loopback_cand;
} remote_sdp;

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* Reads what a client needs from an SDP: ICE credentials, the sha-256
 * fingerprint, setup role, Opus payload type, the first audio mid, and a
 * UDP IPv4 candidate (loopback preferred). Only the first m-line counts. */
static const char *parse_sdp(const char *sdp, remote_sdp *r)
{
    memset(r, 0, sizeof *r);
    r->opus_pt = -1;
    int mline = -1;
    const char *p = sdp;
    while (*p) {
        const char *eol = strpbrk(p, "\r\n");
        size_t n = eol ? (size_t)(eol - p) : strlen(p);
        char line[1100];
        if (n >= sizeof line)
            n = sizeof line - 1;
        memcpy(line, p, n);
        line[n] = 0;
        p += n;
        while (*p == '\r' || *p == '\n')
            p++;
        if (!strncmp(line, "m=", 2)) {
            mline++;
            continue;
        }
        if (mline > 0)
            continue;
        if (!strcmp(line, "a=ice-lite"))
            r->lite = true;
        else if (!strncmp(line, "a=ice-ufrag:", 12))
            snprintf(r->ufrag, sizeof r->ufrag, "%s", line + 12);
        else if (!strncmp(line, "a=ice-pwd:", 10))
            snprintf(r->pwd, sizeof r->pwd, "%s", line + 10);
        else if (!strncmp(line, "a=setup:", 8))
            snprintf(r->setup, sizeof r->setup, "%s", line + 8);
        else if (!strncmp(line, "a=mid:", 6) && mline == 0 && !r->mid[0])
            snprintf(r->mid, sizeof r->mid, "%s", line + 6);
        else if (!strncasecmp(line, "a=fingerprint:sha-256 ", 22) && !r->have_fp) {
            const char *h = line + 22;
            int i = 0;
            while (i < 32 && hexval(h[0]) >= 0 && hexval(h[1]) >= 0) {
                r->fp[i++] = (uint8_t)(hexval(h[0]) << 4 | hexval(h[1]));
                h += 2;
                if (*h == ':')
                    h++;
            }
            r->have_fp = i == 32;
        } else if (!strncmp(line, "a=rtpmap:", 9) && mline == 0 && r->opus_pt < 0) {
            int pt;
            char codec[64];
            if (sscanf(line + 9, "%d %63[^/]", &pt, codec) == 2 && !strcasecmp(codec, "opus"))
                r->opus_pt = pt;
        } else if (!strncmp(line, "a=candidate:", 12)) {
            char found[64], comp[16], proto[16], addr[64], typ[16];
            unsigned long prio;
            int port;
            if (sscanf(line + 12, "%63s %15s %15s %lu %63s %d typ %15s", found, comp, proto,
                       &prio, addr, &port, typ) == 7 &&
                !strcasecmp(proto, "udp") && !strcmp(comp, "1")) {
                struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
                if (inet_pton(AF_INET, addr, &a.sin_addr) == 1) {
                    bool loop = (ntohl(a.sin_addr.s_addr) >> 24) == 127;
                    if (!r->have_cand || (loop && !r->loopback_cand)) {
                        r->cand = a;
                        r->have_cand = true;
                        r->loopback_cand = loop;
                    }
                }
            }
        }
    }
    if (!r->ufrag[0] || !r->pwd[0])
        return "no a=ice-ufrag / a=ice-pwd";
    return NULL;
}

static void apply_remote(listener *l, const remote_sdp *r)
{
    snprintf(l->rufrag, sizeof l->rufrag, "%s", r->ufrag);
    snprintf(l->rpwd, sizeof l->rpwd, "%s", r->pwd);
    memcpy(l->rfp, r->fp, 32);
    l->have_rfp = r->have_fp;
    l->remote_lite = r->lite;
    if (r->have_cand) {
        l->peer = r->cand;
        l->have_peer = true;
    }
}

static char *local_sdp(listener *l, bool offer, int pt, const char *mid)
{
    char addr[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &l->local.sin_addr, addr, sizeof addr);
    int port = ntohs(l->local.sin_port);
    char *s = NULL;
    if (asprintf(&s,
                 "v=0\r\n"
                 "o=- %u 1 IN IP4 %s\r\n"
                 "s=-\r\n"
                 "t=0 0\r\n"
                 "a=group:BUNDLE %s\r\n"
                 "a=msid-semantic: WMS\r\n"
                 "m=audio %d UDP/TLS/RTP/SAVPF %d\r\n"
                 "c=IN IP4 %s\r\n"
                 "a=rtcp:%d IN IP4 %s\r\n"
                 "a=mid:%s\r\n"
                 "a=recvonly\r\n"
                 "a=rtcp-mux\r\n"
                 "a=rtpmap:%d opus/48000/2\r\n"
                 "a=fmtp:%d minptime=10;useinbandfec=1\r\n"
                 "a=ice-ufrag:%s\r\n"
                 "a=ice-pwd:%s\r\n"
                 "a=fingerprint:sha-256 %s\r\n"
                 "a=setup:%s\r\n"
                 "a=candidate:1 1 udp 2130706431 %s %d typ host\r\n"
                 "a=end-of-candidates\r\n",
                 (unsigned)l->tie, addr, mid, port, pt, addr, port, addr, mid, pt, pt,
                 l->lufrag, l->lpwd, local_fp, offer ? "actpass" : (l->dtls_server ? "passive" : "active"),
                 addr, port) < 0)
        return NULL;
    return s;
}

/* ---- commands --------------------------------------------------------------------- */

static char *read_body(long len)
{
    if (len <= 0 || len > 1 << 20)
        return NULL;
    char *b = malloc(len + 1);
    if (!b || fread(b, 1, len, stdin) != (size_t)len) {
        free(b);
        return NULL;
    }
    b[len] = 0;
    return b;
}

static void snapshot_stats(worker *w, int only_id)
{
    worker_lock(w);
    for (listener *l = w->head; l; l = l->wnext) {
        if (only_id >= 0 && l->id != only_id)
            continue;
        char line[1024];
        format_stats(l, line, sizeof line, "stats");
        emit_line(line);
    }
    pthread_mutex_unlock(&w->mu);
}

static void summary(void)
{
    /* totals over all active listeners: what a benchmark polls */
    unsigned long long packets = 0, lost = 0, connected = 0, up = 0, failed = 0, count = 0,
                       dropped = 0;
    for (int i = 0; i < nworkers; i++) {
        worker *w = &workers[i];
        worker_lock(w);
        for (listener *l = w->head; l; l = l->wnext) {
            count++;
            packets += l->packets;
            int64_t expected = l->have_seq ? l->max_ext - l->first_ext + 1 : 0;
            if (expected > (int64_t)l->packets)
                lost += expected - l->packets;
            connected += l->ice_ok;
            up += l->dtls == DTLS_UP;
            failed += l->dtls == DTLS_FAILED;
            dropped += l->rx_dropped;
        }
        pthread_mutex_unlock(&w->mu);
    }
    char line[512];
    snprintf(line, sizeof line,
             "{\"event\":\"summary\",\"t\":%.6f,\"listeners\":%llu,\"ice\":%llu,\"dtls_up\":%llu,"
             "\"dtls_failed\":%llu,\"packets\":%llu,\"lost\":%llu,\"rx_dropped\":%llu}",
             now_s(), count, connected, up, failed, packets, lost, dropped);
    emit_line(line);
}

static void command(char *line)
{
    char cmd[32];
    int id = -1;
    long len = 0;
    int n = sscanf(line, "%31s %d %ld", cmd, &id, &len);
    if (n < 1)
        return;
    if (n >= 2 && (id < 0 || id >= MAX_LISTENERS)) {
        emit_event(id, "error", "message", "id out of range");
        return;
    }
    if (!strcmp(cmd, "offer") && n >= 2) {
        if (table[id]) {
            emit_event(id, "error", "message", "id in use");
            return;
        }
        listener *l = listener_new(id);
        if (!l) {
            emit_event(id, "error", "message", strerror(errno));
            return;
        }
        l->controlling = true;
        table[id] = l;
        char *sdp = local_sdp(l, true, 111, "0");
        emit_event(id, "offer", "sdp", sdp);
        free(sdp);
    } else if ((!strcmp(cmd, "answer") || !strcmp(cmd, "remote-offer")) && n == 3) {
        char *body = read_body(len);
        if (!body) {
            emit_event(id, "error", "message", "bad body");
            return;
        }
        remote_sdp r;
        const char *err = parse_sdp(body, &r);
        free(body);
        bool is_answer = !strcmp(cmd, "answer");
        listener *l = table[id];
        if (err) {
            emit_event(id, "error", "message", err);
            return;
        }
        if (is_answer) {
            if (!l || l->active) {
                emit_event(id, "error", "message", "no offer waiting for this id");
                return;
            }
            l->dtls_server = !strcmp(r.setup, "active");
            apply_remote(l, &r);
        } else {
            if (l) {
                emit_event(id, "error", "message", "id in use");
                return;
            }
            l = listener_new(id);
            if (!l) {
                emit_event(id, "error", "message", strerror(errno));
                return;
            }
            table[id] = l;
            /* the offerer is controlling unless it is lite (RFC 8445 6.1.1) */
            l->controlling = r.lite;
            l->dtls_server = false;   /* answer setup:active */
            apply_remote(l, &r);
            char *sdp = local_sdp(l, false, r.opus_pt >= 0 ? r.opus_pt : 111,
                                  r.mid[0] ? r.mid : "0");
            emit_event(id, "answer", "sdp", sdp);
            free(sdp);
        }
        activate(l);
    } else if (!strcmp(cmd, "close") && n >= 2) {
        listener *l = table[id];
        if (!l) {
            emit_event(id, "error", "message", "no such listener");
            return;
        }
        if (!l->active) {   /* never started: nothing else knows it */
            table[id] = NULL;
            char out[1024];
            format_stats(l, out, sizeof out, "closed");
            emit_line(out);
            listener_free(l);
            return;
        }
        worker_lock(l->worker);
        l->closing = true;
        pthread_mutex_unlock(&l->worker->mu);
    } else if (!strcmp(cmd, "stats")) {
        for (int i = 0; i < nworkers; i++)
            snapshot_stats(&workers[i], n >= 2 ? id : -1);
        emit_event(-1, "stats-end", NULL, NULL);
    } else if (!strcmp(cmd, "summary")) {
        summary();
    } else if (!strcmp(cmd, "ping")) {
        emit_event(-1, "pong", NULL, NULL);
    } else if (!strcmp(cmd, "quit")) {
        exit(0);
    } else {
        emit_event(id, "error", "message", "unknown command");
    }
}

/* Debian's libsrtp2 runs on NSS and starts it "optimised for space": every
 * unprotect then searches hash chains as long as the number of listeners
 * (see nss_start in native/ae_dtls.c). Start NSS first with full tables. */
static void nss_full_tables(void)
{
    void *nss = dlopen("libnss3.so", RTLD_LAZY | RTLD_NOLOAD);
    if (!nss)
        return;
    void *(*init)(const char *, const char *, const char *, const char *, void *, uint32_t) =
        (void *(*)(const char *, const char *, const char *, const char *, void *, uint32_t))
            dlsym(nss, "NSS_InitContext");
    int (*initialized)(void) = (int (*)(void))dlsym(nss, "NSS_IsInitialized");
    if (init && initialized && !initialized())
        init("", "", "", "", NULL, 0x1f); /* READONLY|NOCERTDB|NOMODDB|FORCEOPEN|NOROOTINIT */
    dlclose(nss);
}

int main(int argc, char **argv)
{
    int opt;
    while ((opt = getopt(argc, argv, "w:s:a:u:d")) != -1) {
        if (opt == 'w')
            nworkers = atoi(optarg);
        else if (opt == 's')
            sample_every = atoi(optarg);
        else if (opt == 'a')
            bind_addr = optarg;
        else if (opt == 'u')
            unprotect_every = atoi(optarg);
        else if (opt == 'd')
            drop_final_flight = true;
        else {
            fprintf(stderr, "usage: loadgen [-w workers] [-s sample_every] [-a bind_address] [-u unprotect_every] [-d]\n");
            return 2;
        }
    }
    if (nworkers < 1 || nworkers > MAX_WORKERS)
        nworkers = 2;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    nss_full_tables();
    if (srtp_init() != srtp_err_status_ok)
        die("srtp_init failed");
    make_ssl_ctx();
    for (int i = 0; i < nworkers; i++) {
        pthread_mutex_init(&workers[i].mu, NULL);
        workers[i].ep = epoll_create1(EPOLL_CLOEXEC);
        pthread_create(&workers[i].thread, NULL, worker_main, &workers[i]);
    }
    emit_event(-1, "ready", "fingerprint", local_fp);
    char line[256];
    while (fgets(line, sizeof line, stdin))
        command(line);
    return 0;
}
