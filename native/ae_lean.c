/* ae_lean.c: the lean listener transport.
 *
 * Every listener shares one UDP port (IPv4 and IPv6) and one network
 * thread, "ae-net", whatever their number:
 *
 *   mixer --Opus packet--> ring --> ae-net: RTP header once per packet;
 *                                   per connected listener: its PT, srtp_protect,
 *                                   into a sendmmsg batch
 *   socket --> ae-net: first byte (RFC 7983): STUN -> ICE-lite reply (libnice's STUN),
 *                      DTLS -> OpenSSL through memory BIOs, SRTCP -> receiver reports
 *
 * The server is ICE-lite and the DTLS server: the browser's Binding requests
 * (USERNAME "ourufrag:theirs", MESSAGE-INTEGRITY with our password) bind its
 * address to the listener, its DTLS ClientHello from such an address starts
 * the handshake, its certificate must match the offer's fingerprint, and the
 * exported keys feed libsrtp. Its periodic requests are its consent (RFC
 * 7675): none for consent_timeout_ms and the listener has failed. No
 * cryptography, STUN integrity or DTLS is written here: only the plumbing.
 *
 * A publisher (WHIP into a whip source) is a peer the other way round: its
 * SRTP is unprotected here, and its Opus, rewritten to AE_NETSRC_FED_PT,
 * goes to its source's receiver (ae_netsrc) through a socket pair; the
 * media it sends, authenticated, is its sign of life.
 *
 * All per-listener protocol state (tables, SSL, SRTP sessions) belongs to
 * the network thread: control calls hand it commands and wait for the ones
 * that must finish (a listener's removal). Statistics are atomics. */
#define _GNU_SOURCE
#include "ae_lean.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <ifaddrs.h>
#include <malloc.h>
#include <net/if.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <poll.h>
#include <srtp2/srtp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stun/stunagent.h>
#include <stun/usages/ice.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define DTLS_MTU 1200
#define BATCH 64               /* datagrams per sendmmsg / recvmmsg */
#define PKT_SLOTS 64           /* Opus packets queued from the mixer */
#define PKT_MAX 4000
#define SEND_BUF (PKT_MAX + 12 + SRTP_MAX_TRAILER_LEN + 16)
#define RECV_BUF 2048
#define MAX_ADDRS 8            /* peer addresses a listener may have passed ICE from */
#define HOUSEKEEP_US 50000     /* consent, DTLS retransmission, sender reports */
#define SR_INTERVAL_US 1000000
#define DTLS_DEADLINE_US 30000000 /* ICE passed but no DTLS by then: failed */
#define QUIET_MAX_US 6000000   /* a media path unheard from this long may move (consider_move) */
#define FORGET_TIMEOUT_MS 5000
#define TRIM_AFTER_US 200000   /* hand freed memory back this long after the last removal */

typedef struct addr_key {
    uint16_t family, port;     /* port in network order */
    uint8_t ip[16];
} addr_key;

typedef struct peer_addr {
    addr_key key;
    union {                              /* 28 bytes where sockaddr_storage takes 128: */
        struct sockaddr_in in4;          /* nine of these a listener */
        struct sockaddr_in6 in6;
    } sa;
    socklen_t len;
    int fd;
    int64_t consent_us;                  /* its last valid Binding request */
    int64_t proof_us;                    /* its last SRTCP that libsrtp authenticated, or 0 */
    bool nominated;                      /* a request from it carried USE-CANDIDATE */
} peer_addr;

typedef struct stream stream;

struct ae_lean_peer {
    ae_lean *t;
    ae_sink *sink;                       /* a listener's; NULL for a publisher */
    ae_fanout *fanout;                   /* the sink's */
    int feed_fd;                         /* a publisher's: its source's receiver, else -1 */
    int channels;                        /* what the answer says of stereo */
    uint64_t listener_id, sink_id;
    const atomic_bool *closing;
    int pt;
    char ufrag[16], pwd[32];             /* ours */
    char remote_ufrag[257];
    int nfp;
    ae_fingerprint fp[AE_OFFER_MAX_FINGERPRINTS];
    /* network thread only */
    stream *stream;
    bool attached, ice_started, connected, ended;
    bool dtls_fatal;                     /* OpenSSL reported a fatal error: no SSL_shutdown */
    int64_t created_us, last_consent_us, ice_started_us, next_sr_us;
    peer_addr addrs[MAX_ADDRS];
    int naddrs, media;                   /* media: index into addrs of where media goes, or -1
                                          * (see consider_move) */
    peer_addr dtls_to;                   /* where the last DTLS came from */
    SSL *ssl;
    BIO *rbio;
    srtp_t tx, rx;                       /* ours out (RTP, sender reports); the peer's reports in */
    uint32_t rtp_packets, rtp_octets;    /* for sender reports */
    /* read by any thread */
    _Atomic int state;
    _Atomic int64_t last_rx_us;
    _Atomic uint64_t packets_sent, bytes_sent;
    pthread_mutex_t rr_lock;
    uint64_t rtcp_reports;
    double fraction_lost, jitter_ms, rtt_ms;
    int64_t packets_lost;
    struct cmd *remove;                  /* made with it, so its removal cannot fail */
};

/* A sink's outgoing RTP stream: one SSRC and one sequence, whatever the
 * number of listeners (each is its own SRTP session). */
struct stream {
    ae_sink *sink;
    uint64_t sink_id;
    uint32_t ssrc, ts_base;
    uint16_t seq;
    int attached;                        /* peers on this sink */
    GPtrArray *live;                     /* connected peers */
    uint32_t last_ts;
    int64_t last_send_us;
    bool sent_any;
    char cname[24];
};

typedef struct pkt {
    uint64_t sink_id, index;
    int64_t capture_us;
    int len, frame_samples;
    unsigned char data[PKT_MAX];
} pkt;

typedef enum { CMD_ADD, CMD_REMOVE, CMD_NOTHING } cmd_type;

typedef struct cmd {
    cmd_type type;
    ae_lean_peer *peer;
    void (*done)(void *);                /* CMD_REMOVE: called once the peer is freed */
    void *done_arg;
    uint64_t seq;
    struct cmd *next;
} cmd;

struct ae_lean {
    ae_events *events;
    char *ice_addresses;                 /* the host candidates, or NULL: every interface */
    int fd4, fd6, wake_fd, port;
    pthread_t thread;
    bool started;
    atomic_bool stop;
    SSL_CTX *ctx;
    BIO_METHOD *bio_method;
    char fingerprint[32 * 3];
    uint64_t tie, ssrc_salt;
    int64_t consent_us;
    int64_t quiet_us;                    /* a media path this long unheard from may move */
    /* network thread */
    StunAgent agent;
    GHashTable *by_ufrag, *by_addr, *streams;
    GPtrArray *peers;                    /* attached */
    ae_lean_peer *validating;            /* set by the STUN validater */
    int64_t next_housekeep_us;
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    unsigned char (*bufs)[SEND_BUF];
    ae_lean_peer *batch_peer[BATCH];
    int nbatch, batch_fd;
    unsigned char (*rbufs)[RECV_BUF];
    struct sockaddr_storage rfrom[BATCH];
    /* commands from control threads */
    pthread_mutex_t cmd_lock;
    pthread_cond_t cmd_done;
    cmd *cmd_head, *cmd_tail;
    uint64_t cmd_queued, cmd_finished;   /* sequence numbers, under cmd_lock */
    int64_t trim_at_us;                  /* network thread: malloc_trim then, or 0 */
    /* packets from the mixer: single producer, single consumer */
    pkt *ring;
    _Atomic uint64_t head, tail;
    /* counters */
    _Atomic uint64_t datagrams_in, stun_rejected, dtls_rejected, rtcp_rejected, junk,
        send_dropped;
};

/* ---- small helpers ------------------------------------------------------ */

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

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static void random_ice_text(char *out, size_t n)
{
    static const char chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    unsigned char r[64];
    RAND_bytes(r, (int)n);
    for (size_t i = 0; i < n; i++) out[i] = chars[r[i] % 64];
    out[n] = '\0';
}

static bool key_of(const struct sockaddr_storage *sa, addr_key *k)
{
    memset(k, 0, sizeof *k);
    if (sa->ss_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        k->family = AF_INET;
        k->port = in->sin_port;
        memcpy(k->ip, &in->sin_addr, 4);
        return true;
    }
    if (sa->ss_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        k->family = AF_INET6;
        k->port = in6->sin6_port;
        memcpy(k->ip, &in6->sin6_addr, 16);
        return true;
    }
    return false;
}

static guint addr_hash(gconstpointer p)
{
    const addr_key *k = p;
    uint64_t a, b;
    memcpy(&a, k->ip, 8);
    memcpy(&b, k->ip + 8, 8);
    return (guint)mix64(a ^ mix64(b ^ ((uint64_t)k->family << 16 | k->port)));
}

static gboolean addr_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, sizeof(addr_key)) == 0;
}

static guint u64_hash(gconstpointer p) { return (guint)mix64(*(const uint64_t *)p); }

static gboolean u64_equal(gconstpointer a, gconstpointer b)
{
    return *(const uint64_t *)a == *(const uint64_t *)b;
}

static void post_state(ae_lean *t, ae_lean_peer *p, int state)
{
    atomic_store(&p->state, state);
    ae_event ev = {0};
    ev.type = AE_EVENT_LISTENER_STATE;
    ev.listener_id = p->listener_id;
    ev.state = state;
    ae_post_unless(t->events, &ev, p->closing);
}

static void wake(ae_lean *t)
{
    uint64_t one = 1;
    if (write(t->wake_fd, &one, sizeof one) < 0) { /* already pending: fine */
    }
}

/* Hands c to the network thread; returns its sequence number. */
static uint64_t enqueue(ae_lean *t, cmd *c)
{
    pthread_mutex_lock(&t->cmd_lock);
    uint64_t seq = c->seq = ++t->cmd_queued;
    c->next = NULL;
    if (t->cmd_tail) t->cmd_tail->next = c;
    else t->cmd_head = c;
    t->cmd_tail = c;
    pthread_mutex_unlock(&t->cmd_lock);
    wake(t);
    return seq;
}

/* ---- DTLS: certificate, context, the BIO that sends --------------------- */

static int bio_write(BIO *b, const char *data, int len)
{
    ae_lean_peer *p = BIO_get_data(b);
    if (p && p->dtls_to.len)
        sendto(p->dtls_to.fd, data, (size_t)len, MSG_DONTWAIT,
               (const struct sockaddr *)&p->dtls_to.sa, p->dtls_to.len);
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

static int make_dtls_context(ae_lean *t)
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
        snprintf(t->fingerprint + 3 * i, 4, i + 1 < mdlen ? "%02X:" : "%02X", md[i]);

    t->ctx = SSL_CTX_new(DTLS_server_method());
    if (!t->ctx || !SSL_CTX_use_certificate(t->ctx, cert) || !SSL_CTX_use_PrivateKey(t->ctx, key) ||
        !SSL_CTX_check_private_key(t->ctx)) {
        rc = ae_fail(AE_ERR_MEDIA, "cannot set up DTLS");
        goto out;
    }
    SSL_CTX_set_min_proto_version(t->ctx, DTLS1_2_VERSION);
    SSL_CTX_set_verify(t->ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, accept_any_cert);
    SSL_CTX_set_session_cache_mode(t->ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_mode(t->ctx, SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(t->ctx, 1);
    /* nothing but handshake and alerts is ever written, and those fit the
     * MTU: a 1.2 KiB write buffer per listener instead of 17 KiB */
    SSL_CTX_set_max_send_fragment(t->ctx, DTLS_MTU);
    /* 0 means success here */
    if (SSL_CTX_set_tlsext_use_srtp(t->ctx, "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80")) {
        rc = ae_fail(AE_ERR_MEDIA, "OpenSSL refused the SRTP profiles");
        goto out;
    }
    t->bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "ae-dtls-out");
    BIO_meth_set_write(t->bio_method, bio_write);
    BIO_meth_set_ctrl(t->bio_method, bio_ctrl);
    BIO_meth_set_create(t->bio_method, bio_create);
out:
    X509_free(cert);
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

/* ---- sockets ------------------------------------------------------------ */

static int open_socket(int family, int port)
{
    int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int one = 1, bufsize = 4 << 20;
    if (family == AF_INET6) setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one);
    /* 1000 listeners get a burst of 1000 datagrams every 10 ms, each
     * counted at ~1 KiB until the NIC has sent it: above net.core.wmem_max
     * where the process may (CAP_NET_ADMIN), else up to it */
    if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bufsize, sizeof bufsize) != 0)
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bufsize, sizeof bufsize);
    if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &bufsize, sizeof bufsize) != 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &bufsize, sizeof bufsize);
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)&ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)port);
        in->sin_addr.s_addr = htonl(INADDR_ANY);
        len = sizeof *in;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        in6->sin6_addr = in6addr_any;
        len = sizeof *in6;
    }
    if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    return fd;
}

static int bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof ss;
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0) return 0;
    return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
                                         : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

/* IPv4 on the configured (or a free) port, IPv6 on the same port when the
 * machine has IPv6. */
static int open_sockets(ae_lean *t, int port)
{
    t->fd6 = -1;
    for (int attempt = 0; attempt < 8; attempt++) {
        t->fd4 = open_socket(AF_INET, port);
        if (t->fd4 < 0)
            return ae_fail(AE_ERR_MEDIA, "cannot bind UDP port %d for listeners: %s", port,
                           strerror(errno));
        t->port = bound_port(t->fd4);
        t->fd6 = open_socket(AF_INET6, t->port);
        if (t->fd6 >= 0 || errno != EADDRINUSE || port != 0) break;
        close(t->fd4); /* a free IPv4 port taken on IPv6: try another */
        t->fd4 = -1;
    }
    if (t->fd4 < 0) return ae_fail(AE_ERR_MEDIA, "no UDP port free on both IPv4 and IPv6");
    return AE_OK;
}

/* ---- peers and streams (network thread) --------------------------------- */

static stream *stream_for(ae_lean *t, ae_sink *k)
{
    stream *s = g_hash_table_lookup(t->streams, &k->id);
    if (s) return s;
    s = calloc(1, sizeof *s);
    s->sink = k;
    s->sink_id = k->id;
    s->ssrc = (uint32_t)mix64(k->id ^ t->ssrc_salt) | 1;
    RAND_bytes((unsigned char *)&s->ts_base, sizeof s->ts_base);
    RAND_bytes((unsigned char *)&s->seq, sizeof s->seq);
    s->live = g_ptr_array_new();
    snprintf(s->cname, sizeof s->cname, "ae-%08x", s->ssrc);
    g_hash_table_insert(t->streams, &s->sink_id, s);
    return s;
}

static void stream_free(gpointer data)
{
    stream *s = data;
    g_ptr_array_free(s->live, TRUE);
    free(s);
}

static void forget_addr(ae_lean *t, ae_lean_peer *p, int i)
{
    if (g_hash_table_lookup(t->by_addr, &p->addrs[i].key) == p)
        g_hash_table_remove(t->by_addr, &p->addrs[i].key);
    memmove(&p->addrs[i], &p->addrs[i + 1], (size_t)(p->naddrs - i - 1) * sizeof p->addrs[0]);
    p->naddrs--;
    if (p->media == i) p->media = -1;
    else if (p->media > i) p->media--;
}

/* The buffers SSL_free_buffers took, back before anything is written:
 * OpenSSL's DTLS writes assume them (a read makes both; the read buffer is
 * empty, so this one only makes them). */
static void dtls_buffers_back(ae_lean_peer *p)
{
    unsigned char none[1];
    SSL_read(p->ssl, none, sizeof none);
    ERR_clear_error();
}

/* The listener is over: nothing more in or out, its crypto state freed.
 * state < 0: no event (it is being removed by its owner). */
static void peer_end(ae_lean *t, ae_lean_peer *p, int state, const char *why)
{
    if (p->ended) return;
    p->ended = true;
    if (g_hash_table_lookup(t->by_ufrag, p->ufrag) == p) g_hash_table_remove(t->by_ufrag, p->ufrag);
    while (p->naddrs) forget_addr(t, p, p->naddrs - 1);
    if (p->connected && p->stream) {
        g_ptr_array_remove_fast(p->stream->live, p);
        ae_fanout_heard(p->fanout, -1);
    }
    p->connected = false;
    if (p->ssl) {
        /* close_notify back, only on a connection that is whole: OpenSSL
         * says SSL_shutdown must not follow a fatal error (it crashed in
         * libssl here when a failed peer was removed) */
        if ((state == AE_LISTENER_CLOSED || state < 0) && !p->dtls_fatal &&
            SSL_is_init_finished(p->ssl) && !(SSL_get_shutdown(p->ssl) & SSL_SENT_SHUTDOWN)) {
            dtls_buffers_back(p);
            SSL_shutdown(p->ssl);
        }
        SSL_free(p->ssl); /* frees both BIOs */
        p->ssl = NULL;
        p->rbio = NULL;
    }
    if (p->tx) srtp_dealloc(p->tx);
    if (p->rx) srtp_dealloc(p->rx);
    p->tx = p->rx = NULL;
    ERR_clear_error();
    (void)why;
    if (state >= 0) post_state(t, p, state);
}

static void peer_add(ae_lean *t, ae_lean_peer *p)
{
    if (p->sink) {
        p->stream = stream_for(t, p->sink);
        p->stream->attached++;
    }
    p->attached = true;
    g_hash_table_insert(t->by_ufrag, p->ufrag, p);
    g_ptr_array_add(t->peers, p);
}

static void peer_remove(ae_lean *t, ae_lean_peer *p)
{
    peer_end(t, p, -1, NULL);
    if (p->attached) {
        g_ptr_array_remove_fast(t->peers, p);
        if (p->stream && --p->stream->attached == 0)
            g_hash_table_remove(t->streams, &p->stream->sink_id);
        p->stream = NULL;
        p->attached = false;
    }
}

/* When the peer was last heard from on a path: a Binding request, or SRTCP
 * that libsrtp authenticated. */
static int64_t path_heard_us(const peer_addr *a)
{
    return a->consent_us > a->proof_us ? a->consent_us : a->proof_us;
}

static int addr_index(const ae_lean_peer *p, const addr_key *k)
{
    for (int i = 0; i < p->naddrs; i++)
        if (!memcmp(&p->addrs[i].key, k, sizeof *k)) return i;
    return -1;
}

/* An address that passed ICE for p; returns its index, or -1 when it stays
 * another listener's. An address another listener had is moved (the newer
 * request was authenticated for p), unless it is that listener's media path
 * and still heard from: STUN alone never takes a live path. When the table
 * is full, the address heard from longest ago goes, one that never proved
 * itself with SRTCP first, the media path never. */
static int peer_learn_addr(ae_lean *t, ae_lean_peer *p, int fd, const struct sockaddr_storage *sa,
                           socklen_t len, int64_t now)
{
    addr_key k;
    key_of(sa, &k);
    for (int i = 0; i < p->naddrs; i++)
        if (!memcmp(&p->addrs[i].key, &k, sizeof k)) return i;
    ae_lean_peer *other = g_hash_table_lookup(t->by_addr, &k);
    if (other && other != p) {
        for (int i = 0; i < other->naddrs; i++)
            if (!memcmp(&other->addrs[i].key, &k, sizeof k)) {
                if (i == other->media && now - path_heard_us(&other->addrs[i]) <= t->quiet_us)
                    return -1;
                forget_addr(t, other, i);
                break;
            }
    }
    if (p->naddrs == MAX_ADDRS) {
        int drop = -1;
        for (int i = 0; i < p->naddrs; i++) {
            if (i == p->media) continue;
            const peer_addr *a = &p->addrs[i], *d = drop >= 0 ? &p->addrs[drop] : NULL;
            if (!d || (!a->proof_us && d->proof_us) ||
                (!a->proof_us == !d->proof_us && path_heard_us(a) < path_heard_us(d)))
                drop = i;
        }
        forget_addr(t, p, drop);
    }
    peer_addr *a = &p->addrs[p->naddrs];
    memset(a, 0, sizeof *a);
    a->key = k;
    a->len = len < sizeof a->sa ? len : sizeof a->sa;
    memcpy(&a->sa, sa, a->len);
    a->fd = fd;
    g_hash_table_insert(t->by_addr, g_memdup2(&k, sizeof k), p);
    return p->naddrs++;
}

/* Where media and sender reports go: the path DTLS completed on, or the one
 * it moved to (consider_move); nowhere before. */
static const peer_addr *media_addr(const ae_lean_peer *p)
{
    return p->media >= 0 ? &p->addrs[p->media] : NULL;
}

/* Where a connected listener's media goes moves (RFC 8445 nomination, RFC
 * 7675 consent), without a switch a stranger holds. The credentials that
 * pass ICE travel in cleartext in the offer and answer, so a Binding
 * request with USE-CANDIDATE proves nothing about who sends it: media
 * stays on the path DTLS completed on while that path is heard from (its
 * Binding requests, or its authenticated SRTCP) within quiet_us. Only when
 * it has gone quiet for that long may media move, and only to an address
 * of the same listener that passed ICE and was nominated, has consent now
 * (a request within quiet_us), and sent SRTCP that libsrtp authenticated
 * with this session's keys after the old path was last heard from: what a
 * peer that keeps its DTLS association sends from a new network (browsers
 * send receiver reports on the path they select; Chromium nominates that
 * path to an ICE-lite server), and what someone with only the
 * credentials, or a replayed packet, cannot. */
static void consider_move(ae_lean *t, ae_lean_peer *p, int64_t now)
{
    if (!p->connected || p->media < 0) return;
    int64_t heard = path_heard_us(&p->addrs[p->media]);
    if (now - heard <= t->quiet_us) return;
    int best = -1;
    for (int i = 0; i < p->naddrs; i++) {
        const peer_addr *a = &p->addrs[i];
        if (i == p->media || !a->nominated || a->proof_us <= heard ||
            now - a->proof_us > t->quiet_us || now - a->consent_us > t->quiet_us)
            continue;
        if (best < 0 || a->proof_us > p->addrs[best].proof_us) best = i;
    }
    if (best < 0) return;
    p->media = best;
    p->dtls_to = p->addrs[best];
    p->last_consent_us = p->addrs[best].consent_us;
    g_printerr("ae: listener %" G_GUINT64_FORMAT ": media moves to the peer's new address\n",
               p->listener_id);
}

/* ---- STUN (ICE-lite) ---------------------------------------------------- */

static bool validate_user(StunAgent *agent, StunMessage *msg, uint8_t *username,
                          uint16_t username_len, uint8_t **password, size_t *password_len,
                          void *data)
{
    (void)agent;
    (void)msg;
    ae_lean *t = data;
    /* "ours:theirs" */
    const uint8_t *colon = memchr(username, ':', username_len);
    if (!colon) return false;
    size_t ours = (size_t)(colon - username);
    char key[16];
    if (ours == 0 || ours >= sizeof key) return false;
    memcpy(key, username, ours);
    key[ours] = '\0';
    ae_lean_peer *p = g_hash_table_lookup(t->by_ufrag, key);
    if (!p || p->ended) return false;
    size_t theirs = username_len - ours - 1;
    if (p->remote_ufrag[0] &&
        (theirs != strlen(p->remote_ufrag) || memcmp(colon + 1, p->remote_ufrag, theirs)))
        return false;
    *password = (uint8_t *)p->pwd;
    *password_len = strlen(p->pwd);
    t->validating = p;
    return true;
}

static void on_stun(ae_lean *t, int fd, uint8_t *buf, size_t len, struct sockaddr_storage *from,
                    socklen_t fromlen)
{
    StunMessage req;
    t->validating = NULL;
    StunValidationStatus v = stun_agent_validate(&t->agent, &req, buf, len, validate_user, t);
    ae_lean_peer *p = t->validating;
    if (v != STUN_VALIDATION_SUCCESS || !p || stun_message_get_class(&req) != STUN_REQUEST ||
        stun_message_get_method(&req) != STUN_BINDING) {
        atomic_fetch_add(&t->stun_rejected, 1);
        return;
    }
    uint8_t out[512];
    size_t outlen = sizeof out;
    StunMessage resp;
    bool controlling = false; /* ICE-lite: always the controlled agent */
    StunUsageIceReturn r = stun_usage_ice_conncheck_create_reply(
        &t->agent, &req, &resp, out, &outlen, from, fromlen, &controlling, t->tie,
        STUN_USAGE_ICE_COMPATIBILITY_RFC5245);
    if (outlen) sendto(fd, out, outlen, MSG_DONTWAIT, (struct sockaddr *)from, fromlen);
    if (r != STUN_USAGE_ICE_RETURN_SUCCESS) return;
    int64_t now = ae_now_us();
    int i = peer_learn_addr(t, p, fd, from, fromlen, now);
    if (i < 0) return;
    p->addrs[i].consent_us = now;
    if (stun_usage_ice_conncheck_use_candidate(&req)) p->addrs[i].nominated = true;
    /* connected, only the media path's requests are the listener's consent
     * (RFC 7675 is per path) and a sign of life: a stranger's are not */
    if (!p->connected || i == p->media) {
        p->last_consent_us = now;
        atomic_store(&p->last_rx_us, now);
    }
    if (!p->ice_started) {
        p->ice_started = true;
        p->ice_started_us = now;
        post_state(t, p, AE_LISTENER_CHECKING);
    }
}

/* ---- DTLS and SRTP ------------------------------------------------------ */

static bool peer_new_ssl(ae_lean *t, ae_lean_peer *p)
{
    p->ssl = SSL_new(t->ctx);
    p->rbio = BIO_new(BIO_s_mem());
    BIO *wbio = BIO_new(t->bio_method);
    if (!p->ssl || !p->rbio || !wbio) {
        SSL_free(p->ssl);
        BIO_free(p->rbio);
        BIO_free(wbio);
        p->ssl = NULL;
        p->rbio = NULL;
        return false;
    }
    BIO_set_mem_eof_return(p->rbio, -1);
    BIO_set_data(wbio, p);
    SSL_set_bio(p->ssl, p->rbio, wbio);
    SSL_set_options(p->ssl, SSL_OP_NO_QUERY_MTU | SSL_OP_NO_RENEGOTIATION);
    DTLS_set_link_mtu(p->ssl, DTLS_MTU);
    SSL_set_accept_state(p->ssl);
    return true;
}

static bool fingerprint_matches(ae_lean_peer *p, X509 *cert)
{
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);
    bool ok = len > 0 && ae_cert_matches(p->fp, p->nfp, der, len);
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

static void on_dtls_done(ae_lean *t, ae_lean_peer *p)
{
    X509 *cert = SSL_get0_peer_certificate(p->ssl);
    if (!cert || !fingerprint_matches(p, cert)) {
        peer_end(t, p, AE_LISTENER_FAILED, "the peer's certificate does not match its offer");
        return;
    }
    const SRTP_PROTECTION_PROFILE *prof = SSL_get_selected_srtp_profile(p->ssl);
    int id = prof ? (int)prof->id : 0;
    int key_len = 16, salt_len = id == SRTP_AEAD_AES_128_GCM ? 12 : 14;
    if (id != SRTP_AEAD_AES_128_GCM && id != SRTP_AES128_CM_SHA1_80) {
        peer_end(t, p, AE_LISTENER_FAILED, "no SRTP profile agreed");
        return;
    }
    unsigned char km[2 * (16 + 14)];
    size_t kmlen = 2 * (size_t)(key_len + salt_len);
    static const char label[] = "EXTRACTOR-dtls_srtp";
    if (SSL_export_keying_material(p->ssl, km, kmlen, label, sizeof label - 1, NULL, 0, 0) != 1) {
        peer_end(t, p, AE_LISTENER_FAILED, "cannot export the SRTP keys");
        return;
    }
    /* client key, server key, client salt, server salt; we are the server */
    const unsigned char *ckey = km, *skey = km + key_len, *csalt = km + 2 * key_len,
                        *ssalt = km + 2 * key_len + salt_len;
    /* ours: one SSRC, the sink's, so no template stream beside it (a
     * publisher gets nothing from us); the peer's media and reports come
     * from SSRCs its offer need not name. libsrtp keeps that session's
     * replay window: SRTP and SRTCP integrity stay its job. */
    bool ok = (!p->stream || make_srtp(&p->tx, id, skey, ssalt, key_len, salt_len,
                                       ssrc_specific, p->stream->ssrc)) &&
              make_srtp(&p->rx, id, ckey, csalt, key_len, salt_len, ssrc_any_inbound, 0);
    OPENSSL_cleanse(km, sizeof km);
    if (!ok) {
        peer_end(t, p, AE_LISTENER_FAILED, "libsrtp refused the keys");
        return;
    }
    /* media goes where the handshake completed: the address that proved
     * it holds the offer's certificate */
    p->media = addr_index(p, &p->dtls_to.key);
    p->connected = true;
    p->next_sr_us = ae_now_us() + 200000;
    if (p->stream) {
        g_ptr_array_add(p->stream->live, p);
        ae_fanout_heard(p->fanout, +1);
    }
    post_state(t, p, AE_LISTENER_CONNECTED);
}

static void on_dtls(ae_lean *t, int fd, uint8_t *buf, size_t len, struct sockaddr_storage *from,
                    socklen_t fromlen)
{
    addr_key k;
    key_of(from, &k);
    ae_lean_peer *p = g_hash_table_lookup(t->by_addr, &k);
    if (!p || p->ended) {
        atomic_fetch_add(&t->dtls_rejected, 1);
        return;
    }
    /* the handshake answers where its flights come from; connected, DTLS
     * (an alert, a retransmitted flight: authenticated by OpenSSL, else
     * dropped) is answered on the media path, and only that path's is a
     * sign of life */
    if (!p->connected) {
        p->dtls_to.key = k;
        p->dtls_to.fd = fd;
        p->dtls_to.len = fromlen < sizeof p->dtls_to.sa ? fromlen : sizeof p->dtls_to.sa;
        memcpy(&p->dtls_to.sa, from, p->dtls_to.len);
    }
    if (!p->connected || addr_index(p, &k) == p->media) atomic_store(&p->last_rx_us, ae_now_us());
    if (!p->ssl && (p->connected || !peer_new_ssl(t, p))) return;
    BIO_write(p->rbio, buf, (int)len);
    if (!SSL_is_init_finished(p->ssl)) {
        int r = SSL_do_handshake(p->ssl);
        if (r == 1) {
            on_dtls_done(t, p);
        } else {
            int err = SSL_get_error(p->ssl, r);
            if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) {
                p->dtls_fatal = true;
                peer_end(t, p, AE_LISTENER_FAILED, "DTLS handshake failed");
                return;
            }
        }
    }
    if (p->ssl && SSL_is_init_finished(p->ssl)) {
        /* After the handshake only alerts matter: close_notify ends it. */
        unsigned char sink[RECV_BUF];
        for (;;) {
            int r = SSL_read(p->ssl, sink, sizeof sink);
            if (r > 0) continue;
            int err = SSL_get_error(p->ssl, r);
            if (err == SSL_ERROR_ZERO_RETURN) {
                peer_end(t, p, AE_LISTENER_CLOSED, "the peer closed DTLS");
                return;
            }
            if (err == SSL_ERROR_SSL || err == SSL_ERROR_SYSCALL) {
                p->dtls_fatal = true;
                peer_end(t, p, AE_LISTENER_FAILED, "DTLS failed");
                return;
            }
            break;
        }
    }
    /* Nothing half-read carries over. Connected, a fresh empty BIO rather
     * than a reset one: that keeps the largest flight's buffer (~0.7 KiB). */
    BIO *fresh = p->ssl && p->connected ? BIO_new(BIO_s_mem()) : NULL;
    if (fresh) {
        BIO_set_mem_eof_return(fresh, -1);
        SSL_set0_rbio(p->ssl, fresh); /* frees the old one */
        p->rbio = fresh;
    } else if (p->rbio) {
        BIO_reset(p->rbio);
    }
    /* Connected, a listener's DTLS sees only the odd alert or retransmitted
     * flight: its 16 KiB read and its write buffer go back now and are made
     * again by the next read (it refuses while a record is half-read). */
    if (p->ssl && p->connected) SSL_free_buffers(p->ssl);
    ERR_clear_error();
}

/* ---- RTCP ---------------------------------------------------------------- */

/* b: one report block, from its SSRC on */
static void on_report_block(ae_lean_peer *p, const unsigned char *b)
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
    pthread_mutex_lock(&p->rr_lock);
    p->rtcp_reports++;
    p->fraction_lost = b[4] / 256.0;
    p->packets_lost = lost;
    p->jitter_ms = jitter / 48.0; /* Opus's RTP clock is 48 kHz */
    if (rtt >= 0) p->rtt_ms = rtt;
    pthread_mutex_unlock(&p->rr_lock);
}

static void parse_rtcp(ae_lean_peer *p, const unsigned char *b, int n)
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
            if (p->stream && get32(h + at) == p->stream->ssrc) on_report_block(p, h + at);
        }
        off += plen;
    }
}

/* A publisher's Opus, authenticated, to its source's receiver: only the
 * payload type its offer gave Opus (RED, comfort noise, DTMF stay here). */
static void publish(ae_lean_peer *p, unsigned char *buf, int n)
{
    if (n < 12 || (buf[1] & 0x7f) != p->pt) return;
    buf[1] = (unsigned char)((buf[1] & 0x80) | AE_NETSRC_FED_PT);
    ssize_t w = send(p->feed_fd, buf, (size_t)n, MSG_DONTWAIT);   /* full or gone: dropped */
    (void)w;
}

static void on_rtp_or_rtcp(ae_lean *t, uint8_t *buf, size_t len, struct sockaddr_storage *from)
{
    addr_key k;
    key_of(from, &k);
    ae_lean_peer *p = g_hash_table_lookup(t->by_addr, &k);
    /* A listener only receives: RTCP is all it may send here. A publisher
     * sends RTP too. */
    bool rtcp = len >= 2 && buf[1] >= 192 && buf[1] <= 223;
    if (!p || !p->connected || len < 8 || (!rtcp && (p->feed_fd < 0 || len < 12))) {
        atomic_fetch_add(&t->rtcp_rejected, 1);
        return;
    }
    int n = (int)len;
    if ((rtcp ? srtp_unprotect_rtcp(p->rx, buf, &n) : srtp_unprotect(p->rx, buf, &n)) !=
        srtp_err_status_ok) {
        atomic_fetch_add(&t->rtcp_rejected, 1); /* forged, or a replay */
        return;
    }
    int64_t now = ae_now_us();
    atomic_store(&p->last_rx_us, now);
    /* only this session's keys make it: the path it came on is the peer's */
    int i = addr_index(p, &k);
    if (i >= 0) p->addrs[i].proof_us = now;
    /* a publisher's media on its media path is its consent: it is sent to,
     * never flooded by us (some send no Binding requests once connected) */
    if (p->feed_fd >= 0 && i >= 0 && i == p->media) p->last_consent_us = now;
    if (!rtcp) publish(p, buf, n);
    else parse_rtcp(p, buf, n);
}

static void send_sender_report(ae_lean_peer *p, int64_t now)
{
    const peer_addr *to = media_addr(p);
    stream *s = p->stream;
    if (!to || !s) return;
    unsigned char b[128 + SRTP_MAX_TRAILER_LEN + 8];
    uint64_t ntp = ntp_now();
    uint32_t ts = s->sent_any ? s->last_ts + (uint32_t)((now - s->last_send_us) * 48 / 1000)
                              : s->ts_base;
    b[0] = 0x80;
    b[1] = 200;
    put16(b + 2, 6);
    put32(b + 4, s->ssrc);
    put32(b + 8, (uint32_t)(ntp >> 32));
    put32(b + 12, (uint32_t)ntp);
    put32(b + 16, ts);
    put32(b + 20, p->rtp_packets);
    put32(b + 24, p->rtp_octets);
    /* SDES with our CNAME: a compound packet must carry one */
    int n = 28, clen = (int)strlen(s->cname);
    int chunk = 4 + 2 + clen + 1;
    chunk = (chunk + 3) & ~3;
    memset(b + n, 0, (size_t)(4 + chunk));
    b[n] = 0x81;
    b[n + 1] = 202;
    put16(b + n + 2, (uint16_t)(chunk / 4));
    put32(b + n + 4, s->ssrc);
    b[n + 8] = 1;
    b[n + 9] = (unsigned char)clen;
    memcpy(b + n + 10, s->cname, (size_t)clen);
    n += 4 + chunk;
    if (srtp_protect_rtcp(p->tx, b, &n) != srtp_err_status_ok) return;
    sendto(to->fd, b, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)&to->sa, to->len);
}

/* ---- sending media ------------------------------------------------------- */

static void flush(ae_lean *t)
{
    int n = t->nbatch, done = 0;
    bool waited = false;
    while (done < n) {
        int r = sendmmsg(t->batch_fd, t->msgs + done, (unsigned)(n - done), MSG_DONTWAIT);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == ENOBUFS)) {
            /* the socket buffer is full: give the NIC a moment (this holds
             * back only this thread), then the rest of this batch is lost */
            struct pollfd out = {.fd = t->batch_fd, .events = POLLOUT};
            if (!waited && poll(&out, 1, 5) > 0) {
                waited = true;
                continue;
            }
            atomic_fetch_add(&t->send_dropped, (uint64_t)(n - done));
            break;
        }
        if (r <= 0) {
            /* this one would not go (unreachable, refused): skip it */
            atomic_fetch_add(&t->send_dropped, 1);
            done++;
            continue;
        }
        for (int i = done; i < done + r; i++) {
            ae_lean_peer *p = t->batch_peer[i];
            atomic_fetch_add(&p->packets_sent, 1);
            atomic_fetch_add(&p->bytes_sent, t->msgs[i].msg_len);
            atomic_fetch_add(&p->fanout->packets_out, 1);
        }
        done += r;
    }
    t->nbatch = 0;
}

/* One Opus packet to every connected listener of its sink: the header is
 * built once; per listener only the payload type differs before SRTP. */
static void send_packet(ae_lean *t, stream *s, const pkt *in)
{
    unsigned char hdr[12];
    uint32_t ts = s->ts_base + (uint32_t)(in->index * (uint64_t)in->frame_samples);
    hdr[0] = 0x80;
    hdr[1] = 0;
    put16(hdr + 2, s->seq++);
    put32(hdr + 4, ts);
    put32(hdr + 8, s->ssrc);
    for (guint i = 0; i < s->live->len; i++) {
        ae_lean_peer *p = g_ptr_array_index(s->live, i);
        const peer_addr *to = media_addr(p);
        if (!to) continue;
        if (t->nbatch == BATCH || (t->nbatch && t->batch_fd != to->fd)) flush(t);
        unsigned char *b = t->bufs[t->nbatch];
        memcpy(b, hdr, 12);
        memcpy(b + 12, in->data, (size_t)in->len);
        b[1] = (unsigned char)p->pt;
        int n = 12 + in->len;
        if (srtp_protect(p->tx, b, &n) != srtp_err_status_ok) continue;
        t->iov[t->nbatch] = (struct iovec){.iov_base = b, .iov_len = (size_t)n};
        struct msghdr *m = &t->msgs[t->nbatch].msg_hdr;
        memset(m, 0, sizeof *m);
        m->msg_name = (void *)&to->sa;
        m->msg_namelen = to->len;
        m->msg_iov = &t->iov[t->nbatch];
        m->msg_iovlen = 1;
        t->batch_peer[t->nbatch] = p;
        t->batch_fd = to->fd;
        t->nbatch++;
        p->rtp_packets++;
        p->rtp_octets += (uint32_t)in->len;
    }
    if (t->nbatch) flush(t);
    int64_t now = ae_now_us();
    s->last_ts = ts;
    s->last_send_us = now;
    s->sent_any = true;
    if (s->live->len) ae_fanout_record_latency(ae_fanout_of(s->sink), now - in->capture_us);
}

void ae_lean_push(void *lean, ae_fanout *k, const unsigned char *data, int len, uint64_t index,
                  int64_t capture_us)
{
    ae_lean *t = lean;
    if (len <= 0 || len > PKT_MAX) return;
    uint64_t h = atomic_load_explicit(&t->head, memory_order_relaxed);
    if (h - atomic_load_explicit(&t->tail, memory_order_acquire) >= PKT_SLOTS) {
        atomic_fetch_add(&t->send_dropped, 1); /* the network thread fell behind */
        return;
    }
    pkt *slot = &t->ring[h % PKT_SLOTS];
    slot->sink_id = k->sink_id;
    slot->index = index;
    slot->capture_us = capture_us;
    slot->len = len;
    slot->frame_samples = k->frame_samples;
    memcpy(slot->data, data, (size_t)len);
    atomic_store_explicit(&t->head, h + 1, memory_order_release);
    wake(t);
}

static void drain_packets(ae_lean *t)
{
    uint64_t tail = atomic_load_explicit(&t->tail, memory_order_relaxed);
    uint64_t head = atomic_load_explicit(&t->head, memory_order_acquire);
    for (; tail != head; tail++) {
        const pkt *slot = &t->ring[tail % PKT_SLOTS];
        stream *s = g_hash_table_lookup(t->streams, &slot->sink_id);
        if (s && s->live->len) send_packet(t, s, slot);
        atomic_store_explicit(&t->tail, tail + 1, memory_order_release);
    }
}

/* ---- the network thread -------------------------------------------------- */

static void peer_free(ae_lean_peer *p)
{
    pthread_mutex_destroy(&p->rr_lock);
    if (p->feed_fd >= 0) close(p->feed_fd);
    free(p->remove);
    free(p);
}

static void run_commands(ae_lean *t)
{
    pthread_mutex_lock(&t->cmd_lock);
    cmd *c = t->cmd_head;
    t->cmd_head = t->cmd_tail = NULL;
    pthread_mutex_unlock(&t->cmd_lock);
    uint64_t last = 0;
    while (c) {
        cmd *next = c->next;
        last = c->seq;
        if (c->type == CMD_ADD) {
            peer_add(t, c->peer);
            free(c);
        } else if (c->type == CMD_REMOVE) {
            void (*done)(void *) = c->done;
            void *arg = c->done_arg;
            peer_remove(t, c->peer);
            peer_free(c->peer); /* frees c too */
            if (done) done(arg);
            t->trim_at_us = ae_now_us() + TRIM_AFTER_US;
        } else {
            free(c);
        }
        c = next;
    }
    if (last) {
        pthread_mutex_lock(&t->cmd_lock);
        t->cmd_finished = last;
        pthread_cond_broadcast(&t->cmd_done);
        pthread_mutex_unlock(&t->cmd_lock);
    }
}

static void on_datagram(ae_lean *t, int fd, uint8_t *buf, size_t len,
                        struct sockaddr_storage *from, socklen_t fromlen)
{
    atomic_fetch_add(&t->datagrams_in, 1);
    uint8_t b = len ? buf[0] : 255;
    if (b <= 3) on_stun(t, fd, buf, len, from, fromlen);
    else if (b >= 20 && b <= 63) on_dtls(t, fd, buf, len, from, fromlen);
    else if (b >= 128 && b <= 191) on_rtp_or_rtcp(t, buf, len, from);
    else atomic_fetch_add(&t->junk, 1);
}

static void receive(ae_lean *t, int fd)
{
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    for (int i = 0; i < BATCH; i++) {
        iov[i] = (struct iovec){.iov_base = t->rbufs[i], .iov_len = RECV_BUF};
        memset(&msgs[i], 0, sizeof msgs[i]);
        msgs[i].msg_hdr.msg_name = &t->rfrom[i];
        msgs[i].msg_hdr.msg_namelen = sizeof t->rfrom[i];
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
    }
    int n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    for (int i = 0; i < n; i++) {
        if (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) { /* larger than anything we take */
            atomic_fetch_add(&t->datagrams_in, 1);
            atomic_fetch_add(&t->junk, 1);
            continue;
        }
        on_datagram(t, fd, t->rbufs[i], msgs[i].msg_len, &t->rfrom[i],
                    msgs[i].msg_hdr.msg_namelen);
    }
}

static void housekeep(ae_lean *t, int64_t now)
{
    for (guint i = 0; i < t->peers->len; i++) {
        ae_lean_peer *p = g_ptr_array_index(t->peers, i);
        if (p->ended) continue;
        /* the consent clock starts with the answer: a peer that never
         * checks has never consented */
        consider_move(t, p, now);
        if (now - p->last_consent_us > t->consent_us) {
            peer_end(t, p, AE_LISTENER_FAILED, "consent expired");
            continue;
        }
        if (!p->connected && p->ice_started && now - p->ice_started_us > DTLS_DEADLINE_US) {
            peer_end(t, p, AE_LISTENER_FAILED, "no DTLS handshake");
            continue;
        }
        if (p->ssl && !p->connected) {
            struct timeval tv;
            if (DTLSv1_get_timeout(p->ssl, &tv) && tv.tv_sec == 0 && tv.tv_usec == 0 &&
                DTLSv1_handle_timeout(p->ssl) < 0) {
                peer_end(t, p, AE_LISTENER_FAILED, "DTLS retransmission failed");
                continue;
            }
            ERR_clear_error();
        }
        if (p->connected && p->stream && now >= p->next_sr_us) {
            send_sender_report(p, now);
            p->next_sr_us = now + SR_INTERVAL_US;
        }
    }
}

static void *net_main(void *arg)
{
    ae_lean *t = arg;
    struct pollfd fds[3];
    int nfds = 0;
    fds[nfds++] = (struct pollfd){.fd = t->wake_fd, .events = POLLIN};
    fds[nfds++] = (struct pollfd){.fd = t->fd4, .events = POLLIN};
    if (t->fd6 >= 0) fds[nfds++] = (struct pollfd){.fd = t->fd6, .events = POLLIN};
    while (!atomic_load(&t->stop)) {
        int64_t now = ae_now_us();
        int timeout = -1;
        int64_t until = t->peers->len ? t->next_housekeep_us : 0;
        if (t->trim_at_us && (!until || t->trim_at_us < until)) until = t->trim_at_us;
        if (until) {
            int64_t wait = until - now;
            timeout = wait <= 0 ? 0 : (int)((wait + 999) / 1000);
        }
        if (poll(fds, (nfds_t)nfds, timeout) < 0 && errno != EINTR) break;
        if (fds[0].revents & POLLIN) {
            uint64_t v;
            if (read(t->wake_fd, &v, sizeof v) < 0) { /* nothing pending */
            }
        }
        run_commands(t);
        drain_packets(t);
        /* media first; then one batch from each socket, so a flood of
         * datagrams cannot hold the media back by more than a batch */
        for (int i = 1; i < nfds; i++) {
            if (fds[i].revents & POLLIN) receive(t, fds[i].fd);
            if (fds[i].revents & POLLERR) { /* take a pending ICMP error, or poll spins */
                int err;
                socklen_t len = sizeof err;
                getsockopt(fds[i].fd, SOL_SOCKET, SO_ERROR, &err, &len);
            }
        }
        drain_packets(t);
        now = ae_now_us();
        if (now >= t->next_housekeep_us) {
            housekeep(t, now);
            t->next_housekeep_us = now + HOUSEKEEP_US;
        }
        if (t->trim_at_us && now >= t->trim_at_us) {
            /* listeners leave in crowds: once they have, give what they
             * held back to the system rather than keep the high-water mark */
            t->trim_at_us = 0;
            malloc_trim(0);
        }
    }
    /* whatever is left (the engine removes every listener first) */
    run_commands(t);
    while (t->peers->len) peer_remove(t, g_ptr_array_index(t->peers, 0));
    ae_thread_exiting();
    return NULL;
}

/* ---- lifetime ------------------------------------------------------------ */

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

int ae_lean_start(ae_events *events, const ae_engine_config *cfg, ae_lean **out)
{
    *out = NULL;
    pthread_once(&srtp_once, srtp_start);
    if (!srtp_ready) return ae_fail(AE_ERR_MEDIA, "libsrtp would not start");
    ae_lean *t = calloc(1, sizeof *t);
    if (!t) return ae_fail(AE_ERR_NOMEM, "out of memory");
    t->events = events;
    if (cfg->ice_addresses && *cfg->ice_addresses) t->ice_addresses = strdup(cfg->ice_addresses);
    t->fd4 = t->fd6 = t->wake_fd = -1;
    t->consent_us = (int64_t)cfg->consent_timeout_ms * 1000;
    /* past the latest moment the next consent check was due: RFC 7675's
     * checks come every 5 s randomised by 0.8-1.2, so at most 6 s apart
     * (Chromium's on its selected path every 2.5 s), with receiver reports
     * besides; a fifth of a shorter consent window (30 s = 6 x 5 s). A live
     * path that loses a check may look quiet: media then moves only to an
     * address that proved itself the same peer's (consider_move). */
    t->quiet_us = t->consent_us / 5 < QUIET_MAX_US ? t->consent_us / 5 : QUIET_MAX_US;
    pthread_mutex_init(&t->cmd_lock, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cmd_done, &ca);
    pthread_condattr_destroy(&ca);
    RAND_bytes((unsigned char *)&t->tie, sizeof t->tie);
    RAND_bytes((unsigned char *)&t->ssrc_salt, sizeof t->ssrc_salt);
    static const uint16_t known[] = {STUN_ATTRIBUTE_USERNAME, STUN_ATTRIBUTE_MESSAGE_INTEGRITY,
                                     STUN_ATTRIBUTE_FINGERPRINT, STUN_ATTRIBUTE_PRIORITY,
                                     STUN_ATTRIBUTE_USE_CANDIDATE, STUN_ATTRIBUTE_ICE_CONTROLLED,
                                     STUN_ATTRIBUTE_ICE_CONTROLLING, 0};
    stun_agent_init(&t->agent, known, STUN_COMPATIBILITY_RFC5389,
                    STUN_AGENT_USAGE_SHORT_TERM_CREDENTIALS | STUN_AGENT_USAGE_USE_FINGERPRINT);
    t->by_ufrag = g_hash_table_new(g_str_hash, g_str_equal);
    t->by_addr = g_hash_table_new_full(addr_hash, addr_equal, g_free, NULL);
    t->streams = g_hash_table_new_full(u64_hash, u64_equal, NULL, stream_free);
    t->peers = g_ptr_array_new();
    t->ring = calloc(PKT_SLOTS, sizeof *t->ring);
    t->bufs = calloc(BATCH, sizeof *t->bufs);
    t->rbufs = calloc(BATCH, sizeof *t->rbufs);
    t->wake_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    int rc = (t->ring && t->bufs && t->rbufs) ? AE_OK : ae_fail(AE_ERR_NOMEM, "out of memory");
    if (rc == AE_OK && t->wake_fd < 0) rc = ae_fail(AE_ERR_NOMEM, "no eventfd: %s", strerror(errno));
    if (rc == AE_OK) rc = make_dtls_context(t);
    if (rc == AE_OK) rc = open_sockets(t, cfg->lean_port);
    if (rc == AE_OK) rc = ae_thread_start(&t->thread, "ae-net", net_main, t, cfg->realtime_priority);
    if (rc != AE_OK) {
        ae_lean_stop(t);
        return rc;
    }
    t->started = true;
    *out = t;
    return AE_OK;
}

void ae_lean_stop(ae_lean *t)
{
    if (!t) return;
    if (t->started) {
        atomic_store(&t->stop, true);
        wake(t);
        pthread_join(t->thread, NULL);
    }
    if (t->fd4 >= 0) close(t->fd4);
    if (t->fd6 >= 0) close(t->fd6);
    if (t->wake_fd >= 0) close(t->wake_fd);
    for (cmd *c = t->cmd_head, *next; c; c = next) {
        next = c->next;
        free(c);
    }
    if (t->by_ufrag) g_hash_table_destroy(t->by_ufrag);
    if (t->by_addr) g_hash_table_destroy(t->by_addr);
    if (t->streams) g_hash_table_destroy(t->streams);
    if (t->peers) g_ptr_array_free(t->peers, TRUE);
    SSL_CTX_free(t->ctx);
    BIO_meth_free(t->bio_method);
    free(t->ring);
    free(t->bufs);
    free(t->rbufs);
    free(t->ice_addresses);
    pthread_mutex_destroy(&t->cmd_lock);
    pthread_cond_destroy(&t->cmd_done);
    free(t);
}

void ae_lean_stats(ae_lean *t, ae_engine_stats *out)
{
    if (!t) return;
    out->lean_port = t->port;
    out->lean_datagrams_in = atomic_load(&t->datagrams_in);
    out->lean_stun_rejected = atomic_load(&t->stun_rejected);
    out->lean_dtls_rejected = atomic_load(&t->dtls_rejected);
    out->lean_rtcp_rejected = atomic_load(&t->rtcp_rejected);
    out->lean_junk = atomic_load(&t->junk);
    out->lean_send_dropped = atomic_load(&t->send_dropped);
}

const char *ae_lean_declines(const ae_offer *o)
{
    if (o->too_many_mlines) return "the offer has too many m-lines";
    if (!o->rtcp_mux) return "the offer's audio does not multiplex RTCP (a=rtcp-mux)";
    if (o->setup[0] && strcmp(o->setup, "actpass") && strcmp(o->setup, "active"))
        return "the offer does not let us be the DTLS server (a=setup)";
    if (!o->ice_ufrag[0] || !o->ice_pwd[0]) return "the offer has no ICE credentials";
    for (int i = 0; i < o->nfingerprints; i++)
        if (ae_fingerprint_usable(&o->fingerprints[i])) return NULL;
    return "the offer has no fingerprint the lean transport can check";
}

/* Host candidates: the configured addresses, or every interface address
 * that is up and neither loopback nor link-local. */
static int local_addresses(ae_lean *t, char (*out)[INET6_ADDRSTRLEN], int *families, int max)
{
    int n = 0;
    const char *conf = t->ice_addresses;
    if (conf) {
        char **list = g_strsplit(conf, ",", -1);
        for (char **a = list; *a && n < max; a++) {
            char *s = g_strstrip(*a);
            unsigned char tmp[16];
            int fam = inet_pton(AF_INET, s, tmp) == 1    ? AF_INET
                      : inet_pton(AF_INET6, s, tmp) == 1 ? AF_INET6
                                                         : 0;
            if (!fam || (fam == AF_INET6 && t->fd6 < 0)) continue;
            inet_ntop(fam, tmp, out[n], INET6_ADDRSTRLEN);
            families[n++] = fam;
        }
        g_strfreev(list);
        return n;
    }
    struct ifaddrs *ifs = NULL;
    if (getifaddrs(&ifs) != 0) return 0;
    for (struct ifaddrs *i = ifs; i && n < max; i = i->ifa_next) {
        if (!i->ifa_addr || !(i->ifa_flags & IFF_UP) || (i->ifa_flags & IFF_LOOPBACK)) continue;
        int fam = i->ifa_addr->sa_family;
        char text[INET6_ADDRSTRLEN];
        if (fam == AF_INET) {
            const struct in_addr *a = &((struct sockaddr_in *)i->ifa_addr)->sin_addr;
            if ((ntohl(a->s_addr) >> 16) == 0xA9FE) continue; /* 169.254/16 */
            inet_ntop(AF_INET, a, text, sizeof text);
        } else if (fam == AF_INET6 && t->fd6 >= 0) {
            const struct in6_addr *a = &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr;
            if (IN6_IS_ADDR_LINKLOCAL(a) || IN6_IS_ADDR_LOOPBACK(a)) continue;
            inet_ntop(AF_INET6, a, text, sizeof text);
        } else {
            continue;
        }
        bool dup = false;
        for (int j = 0; j < n; j++)
            if (!strcmp(out[j], text)) dup = true;
        if (dup) continue;
        snprintf(out[n], INET6_ADDRSTRLEN, "%s", text);
        families[n++] = fam;
    }
    freeifaddrs(ifs);
    return n;
}

static char *build_answer(ae_lean *t, ae_lean_peer *p, const ae_offer *o, uint32_t ssrc,
                          const char *cname)
{
    char addrs[16][INET6_ADDRSTRLEN];
    int fams[16];
    int n = local_addresses(t, addrs, fams, 16);
    if (n == 0) { /* nothing configured or up: at least this machine can listen */
        snprintf(addrs[0], sizeof addrs[0], "127.0.0.1");
        fams[0] = AF_INET;
        n = 1;
    }
    uint64_t session;
    RAND_bytes((unsigned char *)&session, sizeof session);
    GString *a = g_string_new(NULL);
    g_string_append_printf(a,
                           "v=0\r\no=- %" G_GUINT64_FORMAT " 2 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n"
                           "a=ice-lite\r\n",
                           session >> 1);
    if (o->nmlines > 1) {
        /* at session level too, where the rejected m-lines find them: some
         * clients (aiortc) want ICE and DTLS parameters for every m-line;
         * the audio's own lines below stay for those that read only them
         * (webrtcbin reads a=setup from the m-line) */
        g_string_append_printf(a, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", p->ufrag, p->pwd);
        g_string_append_printf(a, "a=fingerprint:sha-256 %s\r\na=setup:passive\r\n",
                               t->fingerprint);
    }
    if (o->mlines[o->mline].bundled) g_string_append_printf(a, "a=group:BUNDLE %s\r\n", o->mid);
    for (int m = 0; m < o->nmlines; m++) {
        if (m != o->mline) {
            /* not ours to serve (video, a data channel, a second audio):
             * rejected in place, as JSEP answers (RFC 8829 5.3.1) */
            g_string_append_printf(a, "m=%s 0 %s %s\r\nc=IN IP4 0.0.0.0\r\n", o->mlines[m].media,
                                   o->mlines[m].proto, o->mlines[m].fmt);
            if (o->mlines[m].mid[0]) g_string_append_printf(a, "a=mid:%s\r\n", o->mlines[m].mid);
            if (strcmp(o->mlines[m].media, "application")) g_string_append(a, "a=inactive\r\n");
            continue;
        }
        g_string_append_printf(a, "m=audio %d UDP/TLS/RTP/SAVPF %d\r\nc=IN %s %s\r\n", t->port,
                               o->pt, fams[0] == AF_INET ? "IP4" : "IP6", addrs[0]);
        g_string_append_printf(a, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", p->ufrag, p->pwd);
        g_string_append_printf(a, "a=fingerprint:sha-256 %s\r\na=setup:passive\r\n",
                               t->fingerprint);
        if (o->mid[0]) g_string_append_printf(a, "a=mid:%s\r\n", o->mid);
        g_string_append(a, p->sink ? "a=sendonly\r\na=rtcp-mux\r\n" : "a=recvonly\r\na=rtcp-mux\r\n");
        g_string_append_printf(a, "a=rtpmap:%d opus/48000/2\r\n", o->pt);
        /* the client's own Opus parameters, and stereo unless it said:
         * browsers play stereo Opus as mono without stereo=1 (and a
         * publisher sends mono without it) */
        const char *stereo = p->channels == 2 ? "1" : "0";
        g_string_append_printf(a, "a=fmtp:%d ", o->pt);
        if (o->fmtp && *o->fmtp) g_string_append(a, o->fmtp);
        if (!o->fmtp || !strstr(o->fmtp, "stereo="))
            g_string_append_printf(a, "%sstereo=%s", o->fmtp && *o->fmtp ? ";" : "", stereo);
        if (!o->fmtp || !strstr(o->fmtp, "sprop-stereo="))
            g_string_append_printf(a, ";sprop-stereo=%s", stereo);
        g_string_append(a, "\r\n");
        if (p->sink) g_string_append_printf(a, "a=ssrc:%u cname:%s\r\n", ssrc, cname);
        for (int i = 0; i < n; i++)
            g_string_append_printf(a, "a=candidate:%d 1 udp %u %s %d typ host\r\n", i + 1,
                                   (126u << 24) | ((uint32_t)(65535 - i) << 8) | 255u, addrs[i],
                                   t->port);
        g_string_append(a, "a=end-of-candidates\r\n");
    }
    char *text = strdup(a->str);
    g_string_free(a, TRUE);
    return text;
}

/* A peer of either direction, its answer made and handed to the network
 * thread; sink or feed_fd says which. */
static int peer_create(ae_lean *t, ae_sink *k, int feed_fd, int channels, uint64_t listener_id,
                       const atomic_bool *closing, const ae_offer *o, char **answer,
                       ae_lean_peer **out)
{
    *out = NULL;
    *answer = NULL;
    ae_lean_peer *p = calloc(1, sizeof *p);
    cmd *c = calloc(1, sizeof *c);
    cmd *remove = calloc(1, sizeof *remove);
    if (!p || !c || !remove) {
        free(p);
        free(c);
        free(remove);
        if (feed_fd >= 0) close(feed_fd);
        return ae_fail(AE_ERR_NOMEM, "out of memory");
    }
    p->remove = remove;
    p->t = t;
    p->sink = k;
    p->fanout = k ? ae_fanout_of(k) : NULL;
    p->sink_id = k ? k->id : 0;
    p->feed_fd = feed_fd;
    p->channels = channels;
    p->listener_id = listener_id;
    p->closing = closing;
    p->pt = o->pt;
    p->media = -1;
    p->rtt_ms = -1;
    pthread_mutex_init(&p->rr_lock, NULL);
    random_ice_text(p->ufrag, 12);
    random_ice_text(p->pwd, 24);
    snprintf(p->remote_ufrag, sizeof p->remote_ufrag, "%s", o->ice_ufrag);
    for (int i = 0; i < o->nfingerprints; i++)
        if (ae_fingerprint_usable(&o->fingerprints[i])) p->fp[p->nfp++] = o->fingerprints[i];
    if (!p->nfp) {
        peer_free(p);
        free(c);
        return ae_fail(AE_ERR_SDP, "the offer's fingerprint does not fit its hash function");
    }
    p->created_us = p->last_consent_us = ae_now_us();
    uint32_t ssrc = k ? (uint32_t)mix64(k->id ^ t->ssrc_salt) | 1 : 0; /* as stream_for makes it */
    char cname[24];
    snprintf(cname, sizeof cname, "ae-%08x", ssrc);
    *answer = build_answer(t, p, o, ssrc, cname);
    /* known to the network thread before the answer leaves */
    c->type = CMD_ADD;
    c->peer = p;
    enqueue(t, c);
    *out = p;
    return AE_OK;
}

int ae_lean_peer_create(ae_lean *t, ae_sink *k, uint64_t listener_id, const atomic_bool *closing,
                        const ae_offer *o, char **answer, ae_lean_peer **out)
{
    return peer_create(t, k, -1, k->channels, listener_id, closing, o, answer, out);
}

int ae_lean_publisher_create(ae_lean *t, int feed_fd, int channels, uint64_t listener_id,
                             const atomic_bool *closing, const ae_offer *o, char **answer,
                             ae_lean_peer **out)
{
    return peer_create(t, NULL, feed_fd, channels, listener_id, closing, o, answer, out);
}

void ae_lean_peer_release(ae_lean *t, ae_lean_peer *p, void (*done)(void *), void *arg)
{
    cmd *c = p->remove;
    c->type = CMD_REMOVE;
    c->peer = p;
    c->done = done;
    c->done_arg = arg;
    enqueue(t, c);
}

void ae_lean_forget(void *lean, ae_fanout *f)
{
    (void)f; /* every command before this one is done: its listeners are gone */
    ae_lean *t = lean;
    cmd *c = calloc(1, sizeof *c);
    if (!c) return;
    c->type = CMD_NOTHING;
    uint64_t seq = enqueue(t, c);
    struct timespec deadline;
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += FORGET_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&t->cmd_lock);
    while (t->cmd_finished < seq)
        if (pthread_cond_timedwait(&t->cmd_done, &t->cmd_lock, &deadline) == ETIMEDOUT) break;
    pthread_mutex_unlock(&t->cmd_lock);
}

void ae_lean_peer_stats(ae_lean_peer *p, ae_listener_stats *out)
{
    out->transport = AE_TRANSPORT_LEAN;
    out->state = atomic_load(&p->state);
    out->last_rx_us = atomic_load(&p->last_rx_us);
    out->packets_sent = atomic_load(&p->packets_sent);
    out->bytes_sent = atomic_load(&p->bytes_sent);
    pthread_mutex_lock(&p->rr_lock);
    out->rtcp_reports = p->rtcp_reports;
    out->fraction_lost = p->fraction_lost;
    out->packets_lost = p->packets_lost;
    out->jitter_ms = p->jitter_ms;
    out->rtt_ms = p->rtt_ms;
    pthread_mutex_unlock(&p->rr_lock);
}
