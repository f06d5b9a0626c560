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
 * that must finish (a listener's removal). Statistics are atomics.
 *
 * The protocols are modules below this one, each given only what it needs:
 * ae_stun (ICE-lite: credentials, Binding requests, which path media may
 * take), ae_dtls (the handshake, the fingerprint check, the keys into
 * libsrtp), ae_rtcp (RTP's header, sender and receiver reports). Here: the
 * sockets, the tables of listeners and their addresses, the network thread,
 * the answer and the public calls. */
#define _GNU_SOURCE
#include "ae_lean.h"

#include "ae_dtls.h"
#include "ae_rtcp.h"
#include "ae_stun.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <malloc.h>
#include <net/if.h>
#include <netinet/in.h>
#include <openssl/rand.h>
#include <poll.h>
#include <srtp2/srtp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

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
    ae_ice_creds ice;                    /* ours, and the offer's ufrag */
    int nfp;
    ae_fingerprint fp[AE_OFFER_MAX_FINGERPRINTS];
    /* network thread only */
    stream *stream;
    bool attached, ice_started, connected, ended;
    int64_t created_us, last_consent_us, ice_started_us, next_sr_us;
    ae_path addrs[MAX_ADDRS];
    int naddrs, media;                   /* media: index into addrs of where media goes, or -1
                                          * (see consider_move) */
    ae_path dtls_to;                     /* where the last DTLS came from */
    ae_dtls dtls;                        /* its SSL and the SRTP sessions it keyed */
    uint32_t rtp_packets, rtp_octets;    /* for sender reports */
    /* read by any thread */
    _Atomic int state;
    _Atomic int64_t last_rx_us;
    _Atomic uint64_t packets_sent, bytes_sent;
    ae_rtcp_figures rr;                  /* from its receiver reports */
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
    ae_dtls_ctx dtls;                    /* our certificate, every listener's context */
    uint64_t ssrc_salt;
    int64_t consent_us;
    int64_t quiet_us;                    /* a media path this long unheard from may move */
    /* network thread */
    ae_stun stun;
    GHashTable *by_ufrag, *by_addr, *streams;
    GPtrArray *peers;                    /* attached */
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

static uint64_t mix64(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    return x ^ (x >> 31);
}

static guint addr_hash(gconstpointer p)
{
    const ae_addr_key *k = p;
    uint64_t a, b;
    memcpy(&a, k->ip, 8);
    memcpy(&b, k->ip + 8, 8);
    return (guint)mix64(a ^ mix64(b ^ ((uint64_t)k->family << 16 | k->port)));
}

static gboolean addr_equal(gconstpointer a, gconstpointer b)
{
    return memcmp(a, b, sizeof(ae_addr_key)) == 0;
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

/* The listener is over: nothing more in or out, its crypto state freed.
 * state < 0: no event (it is being removed by its owner). */
static void peer_end(ae_lean *t, ae_lean_peer *p, int state, const char *why)
{
    if (p->ended) return;
    p->ended = true;
    if (g_hash_table_lookup(t->by_ufrag, p->ice.ufrag) == p)
        g_hash_table_remove(t->by_ufrag, p->ice.ufrag);
    while (p->naddrs) forget_addr(t, p, p->naddrs - 1);
    if (p->connected && p->stream) {
        g_ptr_array_remove_fast(p->stream->live, p);
        ae_fanout_heard(p->fanout, -1);
    }
    p->connected = false;
    /* close_notify back when it closed or is removed, not when it failed */
    ae_dtls_end(&p->dtls, state == AE_LISTENER_CLOSED || state < 0);
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
    g_hash_table_insert(t->by_ufrag, p->ice.ufrag, p);
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

static int addr_index(const ae_lean_peer *p, const ae_addr_key *k)
{
    for (int i = 0; i < p->naddrs; i++)
        if (!memcmp(&p->addrs[i].key, k, sizeof *k)) return i;
    return -1;
}

/* An address that passed ICE for p; returns its index, or -1 when it stays
 * another listener's. An address another listener had is moved (the newer
 * request was authenticated for p), unless it is that listener's media path
 * and still heard from: STUN alone never takes a live path. When the table
 * is full, one goes (ae_paths_to_drop: the address heard from longest ago,
 * one that never proved itself with SRTCP first, the media path never). */
static int peer_learn_addr(ae_lean *t, ae_lean_peer *p, int fd, const struct sockaddr_storage *sa,
                           socklen_t len, int64_t now)
{
    ae_addr_key k;
    ae_addr_key_of(sa, &k);
    for (int i = 0; i < p->naddrs; i++)
        if (!memcmp(&p->addrs[i].key, &k, sizeof k)) return i;
    ae_lean_peer *other = g_hash_table_lookup(t->by_addr, &k);
    if (other && other != p) {
        for (int i = 0; i < other->naddrs; i++)
            if (!memcmp(&other->addrs[i].key, &k, sizeof k)) {
                if (i == other->media && now - ae_path_heard_us(&other->addrs[i]) <= t->quiet_us)
                    return -1;
                forget_addr(t, other, i);
                break;
            }
    }
    if (p->naddrs == MAX_ADDRS) forget_addr(t, p, ae_paths_to_drop(p->addrs, p->naddrs, p->media));
    ae_path *a = &p->addrs[p->naddrs];
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
static const ae_path *media_addr(const ae_lean_peer *p)
{
    return p->media >= 0 ? &p->addrs[p->media] : NULL;
}

/* Where a connected listener's media goes moves (RFC 8445 nomination, RFC
 * 7675 consent), without a switch a stranger holds: only from a path quiet
 * for quiet_us, and only to one the same peer proved (ae_paths_move_to says
 * which, and why). Its DTLS and its consent go with it. */
static void consider_move(ae_lean *t, ae_lean_peer *p, int64_t now)
{
    if (!p->connected || p->media < 0) return;
    int best = ae_paths_move_to(p->addrs, p->naddrs, p->media, now, t->quiet_us);
    if (best < 0) return;
    p->media = best;
    p->dtls_to = p->addrs[best];
    p->last_consent_us = p->addrs[best].consent_us;
    g_printerr("ae: listener %" G_GUINT64_FORMAT ": media moves to the peer's new address\n",
               p->listener_id);
}

/* ---- STUN (ICE-lite) ---------------------------------------------------- */

/* ae_stun's lookup: the listener a Binding request's USERNAME names. */
static void *find_listener(void *arg, const char *ufrag, const ae_ice_creds **creds)
{
    ae_lean *t = arg;
    ae_lean_peer *p = g_hash_table_lookup(t->by_ufrag, ufrag);
    if (!p || p->ended) return NULL;
    *creds = &p->ice;
    return p;
}

static void on_stun(ae_lean *t, int fd, uint8_t *buf, size_t len, struct sockaddr_storage *from,
                    socklen_t fromlen)
{
    void *found;
    bool use_candidate;
    ae_stun_result r = ae_stun_answer(&t->stun, fd, buf, len, from, fromlen, find_listener, t,
                                      &found, &use_candidate);
    if (r == AE_STUN_REJECTED) {
        atomic_fetch_add(&t->stun_rejected, 1);
        return;
    }
    if (r != AE_STUN_PASSED) return;
    ae_lean_peer *p = found;
    int64_t now = ae_now_us();
    int i = peer_learn_addr(t, p, fd, from, fromlen, now);
    if (i < 0) return;
    p->addrs[i].consent_us = now;
    if (use_candidate) p->addrs[i].nominated = true;
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

static void on_dtls_done(ae_lean *t, ae_lean_peer *p)
{
    const char *why = ae_dtls_keys(&p->dtls, p->fp, p->nfp, p->stream != NULL,
                                   p->stream ? p->stream->ssrc : 0);
    if (why) {
        peer_end(t, p, AE_LISTENER_FAILED, why);
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
    ae_addr_key k;
    ae_addr_key_of(from, &k);
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
    if (!p->dtls.ssl && (p->connected || !ae_dtls_new(&t->dtls, &p->dtls, &p->dtls_to))) return;
    ae_dtls_event ev = ae_dtls_handshake(&p->dtls, buf, len);
    if (ev == AE_DTLS_FAILED) {
        peer_end(t, p, AE_LISTENER_FAILED, "DTLS handshake failed");
        return;
    }
    if (ev == AE_DTLS_HANDSHAKEN) on_dtls_done(t, p);
    ev = ae_dtls_read(&p->dtls);
    if (ev == AE_DTLS_CLOSED) {
        peer_end(t, p, AE_LISTENER_CLOSED, "the peer closed DTLS");
        return;
    }
    if (ev == AE_DTLS_FAILED) {
        peer_end(t, p, AE_LISTENER_FAILED, "DTLS failed");
        return;
    }
    ae_dtls_settle(&p->dtls, p->connected);
}

/* ---- RTP and RTCP in ----------------------------------------------------- */

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
    ae_addr_key k;
    ae_addr_key_of(from, &k);
    ae_lean_peer *p = g_hash_table_lookup(t->by_addr, &k);
    /* A listener only receives: RTCP is all it may send here. A publisher
     * sends RTP too. */
    bool rtcp = len >= 2 && buf[1] >= 192 && buf[1] <= 223;
    if (!p || !p->connected || len < 8 || (!rtcp && (p->feed_fd < 0 || len < 12))) {
        atomic_fetch_add(&t->rtcp_rejected, 1);
        return;
    }
    int n = (int)len;
    if ((rtcp ? srtp_unprotect_rtcp(p->dtls.rx, buf, &n) : srtp_unprotect(p->dtls.rx, buf, &n)) !=
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
    else if (p->stream) ae_rtcp_receive(&p->rr, p->stream->ssrc, buf, n);
}

/* ---- sending media and reports ------------------------------------------ */

static void send_sender_report(ae_lean_peer *p, int64_t now)
{
    const ae_path *to = media_addr(p);
    stream *s = p->stream;
    if (!to || !s) return;
    unsigned char b[AE_RTCP_SR_MAX + SRTP_MAX_TRAILER_LEN + 8];
    uint32_t ts = s->sent_any ? s->last_ts + (uint32_t)((now - s->last_send_us) * 48 / 1000)
                              : s->ts_base;
    int n = ae_rtcp_sender_report(b, s->ssrc, s->cname, ts, p->rtp_packets, p->rtp_octets);
    if (srtp_protect_rtcp(p->dtls.tx, b, &n) != srtp_err_status_ok) return;
    sendto(to->fd, b, (size_t)n, MSG_DONTWAIT, (const struct sockaddr *)&to->sa, to->len);
}

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
    ae_rtp_header(hdr, s->seq++, ts, s->ssrc);
    for (guint i = 0; i < s->live->len; i++) {
        ae_lean_peer *p = g_ptr_array_index(s->live, i);
        const ae_path *to = media_addr(p);
        if (!to) continue;
        if (t->nbatch == BATCH || (t->nbatch && t->batch_fd != to->fd)) flush(t);
        unsigned char *b = t->bufs[t->nbatch];
        memcpy(b, hdr, 12);
        memcpy(b + 12, in->data, (size_t)in->len);
        b[1] = (unsigned char)p->pt;
        int n = 12 + in->len;
        if (srtp_protect(p->dtls.tx, b, &n) != srtp_err_status_ok) continue;
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
    ae_rtcp_figures_clear(&p->rr);
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
        if (p->dtls.ssl && !p->connected && !ae_dtls_retransmit(&p->dtls)) {
            peer_end(t, p, AE_LISTENER_FAILED, "DTLS retransmission failed");
            continue;
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

int ae_lean_start(ae_events *events, const ae_engine_config *cfg, ae_lean **out)
{
    *out = NULL;
    if (!ae_srtp_start()) return ae_fail(AE_ERR_MEDIA, "libsrtp would not start");
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
    RAND_bytes((unsigned char *)&t->ssrc_salt, sizeof t->ssrc_salt);
    ae_stun_init(&t->stun);
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
    if (rc == AE_OK) rc = ae_dtls_ctx_init(&t->dtls);
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
    ae_dtls_ctx_clear(&t->dtls);
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
        g_string_append_printf(a, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", p->ice.ufrag,
                               p->ice.pwd);
        g_string_append_printf(a, "a=fingerprint:sha-256 %s\r\na=setup:passive\r\n",
                               t->dtls.fingerprint);
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
        g_string_append_printf(a, "a=ice-ufrag:%s\r\na=ice-pwd:%s\r\n", p->ice.ufrag,
                               p->ice.pwd);
        g_string_append_printf(a, "a=fingerprint:sha-256 %s\r\na=setup:passive\r\n",
                               t->dtls.fingerprint);
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
    ae_rtcp_figures_init(&p->rr);
    ae_ice_creds_make(&p->ice, o->ice_ufrag);
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
    ae_rtcp_figures_get(&p->rr, out);
}
