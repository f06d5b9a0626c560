/*
 * ae_engine.h: the listening appliance's audio engine.
 *
 * Moves audio from ALSA capture devices and built-in test sources through
 * routes (gain, mute) into sinks. A sink either plays to an ALSA device or
 * encodes Opus once and fans the packets out to WebRTC listeners, served by
 * the lean transport (ICE-lite, DTLS-SRTP, one UDP port for all) or, for
 * offers it declines, by GStreamer's webrtcbin.
 *
 * Conventions
 *  - Every name carries the prefix ae_ / AE_. Handles are opaque and typed.
 *  - Every call returns 0 (AE_OK) or a negative ae_error. ae_strerror() names
 *    the code; ae_last_error() gives the detail for the calling thread, valid
 *    until that thread's next engine call.
 *  - Config structs treat zero as "use the default", so they can grow.
 *  - Handles are valid from the create call until the matching destroy call
 *    returns. Destroy calls may wait (bounded) for the engine's own threads;
 *    never call them from the event callback.
 *
 * Threads
 *  - The event callback runs on the engine's single event thread, never on an
 *    audio or GStreamer thread. It may block (the audio does not wait for it),
 *    but blocking it delays later events. Its payload is valid only during the
 *    call. No callback runs after ae_engine_destroy() returns, and none runs
 *    for a listener after ae_listener_destroy() returns.
 *  - Events name sources, sinks and listeners by an id (ae_source_id() ...)
 *    that the engine never reuses, so a late event can never point at freed
 *    memory and the caller needs no table of dead handles.
 */
#ifndef AE_ENGINE_H
#define AE_ENGINE_H

/* The cffi build reads this header through the C preprocessor with
 * AE_CFFI_CDEF defined: cffi knows the fixed-width types itself. */
#ifndef AE_CFFI_CDEF
#include <stdint.h>
#endif
/* Every bound the engine checks, and AE_MAX_CHANNELS: generated from the
 * model (appliance/model.py) at build time; see docs/ENGINE.md, "Limits". */
#include "ae_limits.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum ae_error {
    AE_OK = 0,
    AE_ERR_INVALID = -1,      /* a bad argument */
    AE_ERR_NOMEM = -2,
    AE_ERR_DEVICE = -3,       /* an ALSA device could not be opened or set up */
    AE_ERR_SDP = -4,          /* an offer that is not SDP or has no receivable Opus audio */
    AE_ERR_BUSY = -5,         /* the entity is still in use (routes, listeners) */
    AE_ERR_LIMIT = -6,        /* a configured cap is reached */
    AE_ERR_TIMEOUT = -7,      /* the engine thread did not answer in time */
    AE_ERR_CODEC = -8,        /* Opus refused the settings */
    AE_ERR_MEDIA = -9,        /* GStreamer refused (missing plugin, failed link) */
    AE_ERR_FILE = -10,        /* a source file could not be read */
    AE_ERR_CLOSED = -11,      /* the engine is shutting down */
    AE_ERR_NETWORK = -12      /* a network source's socket: no such interface, a group not joined */
} ae_error;

const char *ae_strerror(int code);
const char *ae_last_error(void);

typedef struct ae_engine ae_engine;
typedef struct ae_source ae_source;
typedef struct ae_sink ae_sink;
typedef struct ae_route ae_route;
typedef struct ae_listener ae_listener;

/* ---- events ---------------------------------------------------------- */

typedef enum ae_event_type {
    AE_EVENT_ANSWER_READY = 1,       /* listener, text = answer SDP with all candidates */
    AE_EVENT_ANSWER_FAILED = 2,      /* listener, code, text = reason */
    AE_EVENT_CANDIDATE_GATHERED = 3, /* listener, mline, text = "candidate:..." (after the answer) */
    AE_EVENT_LISTENER_STATE = 4,     /* listener, state (ae_listener_state) */
    AE_EVENT_DEVICE_LOST = 5,        /* source or sink, text = reason */
    AE_EVENT_DEVICE_RESTORED = 6,    /* source or sink */
    AE_EVENT_XRUN = 7,               /* source or sink, count = total xruns so far */
    AE_EVENT_LEVELS = 8,             /* source or sink, channels, peak_dbfs[], rms_dbfs[] */
    AE_EVENT_OFFER_READY = 9         /* publication, text = its offer SDP with all candidates */
} ae_event_type;

typedef enum ae_listener_state {
    AE_LISTENER_NEW = 0,
    AE_LISTENER_CHECKING = 1,
    AE_LISTENER_CONNECTED = 2,
    AE_LISTENER_COMPLETED = 3,
    AE_LISTENER_FAILED = 4,
    AE_LISTENER_DISCONNECTED = 5,
    AE_LISTENER_CLOSED = 6
} ae_listener_state;

typedef struct ae_event {
    int type;                 /* ae_event_type */
    uint64_t listener_id;     /* ae_listener_id(), or 0 */
    uint64_t source_id;       /* ae_source_id(), or 0 */
    uint64_t sink_id;         /* ae_sink_id(), or 0 */
    const char *text;         /* SDP, candidate or reason; or NULL */
    int mline;
    int state;                /* ae_listener_state */
    int code;                 /* ae_error for ANSWER_FAILED */
    uint64_t count;           /* xrun total */
    int channels;
    double peak_dbfs[AE_MAX_CHANNELS];
    double rms_dbfs[AE_MAX_CHANNELS];
    int64_t time_us;          /* CLOCK_MONOTONIC when the event was raised */
    int64_t since_us;         /* LEVELS: CLOCK_MONOTONIC of the first audio measured */
} ae_event;

typedef void (*ae_event_cb)(void *user, const ae_event *event);

/* ---- engine ------------------------------------------------------------ */

typedef struct ae_engine_config {
    int sample_rate;          /* 0 = 48000 */
    int level_interval_ms;    /* 0 = 50 (20 updates a second); < 0 disables levels */
    int gather_timeout_ms;    /* 0 = 2000: answer with what was gathered by then */
    int max_listeners;        /* 0 = 500 */
    int ice_tcp;              /* 0 = off (default), 1 = on */
    int upnp;                 /* 0 = off (default), 1 = on */
    const char *stun_server;  /* "stun://host:port" or NULL */
    int min_port, max_port;   /* UDP range for ICE; 0 = any */
    /* comma-separated local IP addresses to gather ICE candidates on;
     * NULL = every non-loopback interface (libnice's default) */
    const char *ice_addresses;
    int realtime_priority;    /* SCHED_FIFO priority for audio threads; 0 = normal */
    int transport;            /* ae_transport: 0 = auto (lean unless the offer needs webrtcbin) */
    int lean_port;            /* the lean transport's one UDP port; 0 = any free port */
    int consent_timeout_ms;   /* 0 = 30000: a lean listener with no ICE consent check for
                               * this long has failed (RFC 7675) */
} ae_engine_config;

/* Which transport serves a listener. AE_TRANSPORT_AUTO is only a setting. */
typedef enum ae_transport {
    AE_TRANSPORT_AUTO = 0,
    AE_TRANSPORT_LEAN = 1,    /* ICE-lite + DTLS-SRTP on the shared port, no thread per listener */
    AE_TRANSPORT_WEBRTCBIN = 2,
    AE_TRANSPORT_FORWARD = 3  /* an RTP forward (ae_forward_open): plain UDP, no listener */
} ae_transport;

int ae_engine_create(const ae_engine_config *config, ae_event_cb callback, void *user,
                     ae_engine **out);
/* Stops every thread, destroys every remaining entity, waits for callbacks in
 * flight. Returns AE_ERR_TIMEOUT if a thread would not stop in time (the
 * engine is then leaked rather than freed under a running thread). */
int ae_engine_destroy(ae_engine *engine);

typedef struct ae_engine_stats {
    int sources, sinks, routes, listeners;
    int threads;              /* threads the engine itself started and that still run */
    int64_t events_posted, events_coalesced;
    /* the lean transport: its UDP port (0 = not running) and what arrived */
    int lean_port;
    uint64_t lean_datagrams_in;
    uint64_t lean_stun_rejected;   /* bad MESSAGE-INTEGRITY, unknown ufrag, malformed STUN */
    uint64_t lean_dtls_rejected;   /* DTLS from an address that never passed ICE */
    uint64_t lean_rtcp_rejected;   /* RTP/RTCP from an unknown address or failing SRTP/SRTCP */
    uint64_t lean_junk;            /* datagrams that are none of STUN, DTLS, RTP/RTCP */
    uint64_t lean_send_dropped;    /* packets the socket would not take (buffer full) */
} ae_engine_stats;

int ae_engine_stats_get(ae_engine *engine, ae_engine_stats *out);

/* Threads started by any engine in this process that have not exited yet;
 * 0 once every engine is destroyed. */
int ae_live_threads(void);
/* Device threads left behind because they never came back from their driver
 * (see device_close in ae_graph.c); they are no longer among the live. */
int ae_abandoned_threads(void);

/* ---- sources ----------------------------------------------------------- */

typedef enum ae_source_kind {
    AE_SOURCE_ALSA = 1,       /* capture from an ALSA PCM */
    AE_SOURCE_TONE = 2,       /* sine tone, or clicks when click_interval_ms > 0 */
    AE_SOURCE_FILE = 3,       /* WAV (PCM16/24/32, float) or raw S16LE, looped */
    AE_SOURCE_SCREAM = 4,     /* Scream over UDP (and ScreamRouter's per-process variant) */
    AE_SOURCE_RTP = 5,        /* RTP: L16, L24 (AES67), Opus, G.711, as an SDP describes it */
    AE_SOURCE_WHIP = 6        /* Opus published over WebRTC (WHIP): see ae_publisher_open */
} ae_source_kind;

typedef enum ae_rtp_encoding {
    AE_RTP_L16 = 1,           /* RFC 3551: 16-bit, network byte order */
    AE_RTP_L24 = 2,           /* RFC 3190: 24-bit, network byte order (AES67) */
    AE_RTP_OPUS = 3,          /* RFC 7587: 48 kHz, 1 or 2 channels; loss concealed, FEC used */
    AE_RTP_PCMU = 4,          /* G.711 mu-law, 8 kHz */
    AE_RTP_PCMA = 5           /* G.711 A-law, 8 kHz */
} ae_rtp_encoding;

typedef struct ae_source_config {
    int kind;
    int channels;             /* 0 = 2 */
    /* ALSA */
    const char *device;       /* NULL = "default" */
    int period_frames;        /* 0 = 128; 64 is the lowest sensible value */
    int buffer_periods;       /* 0 = 4 */
    int allow_absent;         /* 1: start even when the device is missing and retry */
    /* tone */
    double tone_hz;           /* 0 = 440 */
    double tone_dbfs;         /* 0 = -12 dBFS (use a tiny negative value for 0 dBFS) */
    int click_interval_ms;    /* > 0: emit 1 ms clicks instead of a tone */
    /* file */
    const char *path;
    int raw_rate;             /* for raw files: sample rate, 0 = engine rate */
    /* network (scream, rtp) */
    const char *address;      /* a multicast group to join, or a local address to bind;
                                 NULL or "" = every local address */
    int port;                 /* 1..65535 */
    const char *interface;    /* the group is joined on it; NULL or "" = as routing says */
    /* who may send, comma-separated: "local" (a subnet of the interface's,
     * or of any of this machine's when none is named), IPv4 or IPv6
     * prefixes ("192.0.2.0/24", "2001:db8::/32", an address alone);
     * NULL or "" = nobody */
    const char *allow_from;
    int latency_ms;           /* kept ahead of the mixer; 0 = 20 (also whip) */
    /* per-process Scream: the program tag taken (others counted and
     * dropped); NULL or "" = plain Scream packets only */
    const char *program;
    /* rtp: what its SDP says (the a=rtpmap line) */
    int rtp_encoding;         /* ae_rtp_encoding */
    int payload_type;         /* 0..127 */
    int clock_rate;           /* one of AE_SOURCE_CLOCK_RATE_CHOICES */
    int stream_channels;      /* 1..AE_MAX_CHANNELS */
} ae_source_config;

/* What a network source took in and refused. */
typedef struct ae_net_source_stats {
    uint64_t packets;         /* taken */
    uint64_t refused;         /* from an address allow_from does not name */
    uint64_t malformed;       /* not a packet of the protocol, or a format it does not take */
    uint64_t other_program;   /* per-process Scream of another program; RTP of another payload type */
    uint64_t format_changes;  /* the sender changed rate, width or channels */
    uint64_t resyncs;         /* the reader was set back to the target (a gap or a jump) */
    uint64_t late;            /* RTP: late (its place was played) or repeated */
    uint64_t lost;            /* RTP: never came; silence in its place, then a fade in */
    uint64_t restarts;        /* RTP: a new SSRC, or a sequence number far off */
    uint64_t reordered;       /* RTP: came after later ones, in time to be played in order */
    double jitter_ms;         /* RTP: interarrival jitter (RFC 3550) */
    int receiving;            /* something was taken in the last second */
    int rate, bits, channels; /* the stream's format (0: nothing taken yet; bits 0: Opus) */
    double buffered_ms;       /* ahead of the reader now (-1: nobody reads) */
    double correction_ppm;    /* the resampler's steering against the sender's clock */
    char sender[64];          /* the last address taken from */
    char refused_from[64];    /* the last address refused */
    char program_refused[32]; /* the last other program's tag (AE_SCREAM_PROGRAM_LEN, a NUL) */
} ae_net_source_stats;

int ae_source_create(ae_engine *engine, const ae_source_config *config, ae_source **out);
/* The source's event id: unique in the engine, never reused. */
uint64_t ae_source_id(const ae_source *source);
int ae_source_set_tone(ae_source *source, double hz, double dbfs);
/* AE_ERR_BUSY while routes use the source. */
int ae_source_destroy(ae_source *source);

/* Monotonic capture times (us) of the most recent clicks a click source
 * emitted, newest last; returns how many were written. For latency tests. */
int ae_source_click_times(ae_source *source, int64_t *out_us, int max);

/* AE_ERR_INVALID for a source that is not a network source. */
int ae_source_net_stats(ae_source *source, ae_net_source_stats *out);

/* ---- sinks ------------------------------------------------------------- */

typedef enum ae_sink_kind {
    AE_SINK_OPUS = 1,         /* Opus stream for WebRTC listeners */
    AE_SINK_ALSA = 2          /* playback on an ALSA PCM */
} ae_sink_kind;

typedef struct ae_sink_config {
    int kind;
    int channels;             /* 0 = 2 */
    /* Opus */
    int frame_us;             /* 0 = 10000; 1000 x one of AE_SINK_FRAME_MS_CHOICES */
    int bitrate;              /* 0 = 128000 */
    int low_delay;            /* 0 = restricted low-delay (default), 1 = same, -1 = audio mode */
    int complexity;           /* 0 = 5; AE_SINK_COMPLEXITY_MIN..MAX */
    /* ALSA */
    const char *device;
    int period_frames;        /* 0 = 128 */
    int buffer_periods;       /* 0 = 4 */
    int allow_absent;
    /* alignment delay of the mix, 0..AE_SINK_DELAY_MS_MAX (0 = none, no copy); a variant
     * sink is delayed with its parent and takes no delay of its own */
    int delay_ms;
    /* Opus: mixed only while a listener hears it (a listener's temporary
     * sink or hearing variant: a session that never connects costs no mixer
     * time). A variant's own setting; its parent is mixed while either is. */
    int on_demand;
} ae_sink_config;

int ae_sink_create(ae_engine *engine, const ae_sink_config *config, ae_sink **out);
/* AE_ERR_BUSY while routes or listeners use the sink. */
int ae_sink_destroy(ae_sink *sink);

typedef struct ae_sink_stats {
    int listeners;
    uint64_t frames_encoded, packets_out, underruns;
    /* capture-to-network latency of the packets most recently sent to
     * listeners (us); 0 when nothing was sent */
    int64_t send_latency_p50_us, send_latency_p95_us;
    int send_latency_samples;
} ae_sink_stats;

int ae_sink_stats_get(ae_sink *sink, ae_sink_stats *out);
/* The sink's event id: unique in the engine, never reused. */
uint64_t ae_sink_id(const ae_sink *sink);

/* Changes a sink's alignment delay (as delay_ms above) while it runs; the delayed
 * audio starts after that much silence. Not for a variant sink. */
int ae_sink_set_delay(ae_sink *sink, int delay_ms);

/* A hearing variant: what a variant sink does to its parent's mix. */
typedef struct ae_variant_config {
    int mono;                 /* 1: both ears hear (left + right) / 2 */
    int clear_speech;         /* 1: speech-band EQ, compressor, limiter below 0 dBFS */
    int balance;              /* -100 (left only) .. 0 (centre) .. 100 (right only) */
} ae_variant_config;

/* A variant sink: an Opus sink (2 channels, the parent's frame size; bitrate,
 * complexity, low_delay from config, which may be NULL) whose input is its
 * parent's mix after that mix's delay, processed by the variant and encoded
 * by an encoder of its own. It follows every route change of the parent;
 * the parent is AE_ERR_BUSY to destroy while it has variants. The parent must
 * be an Opus sink and not a variant itself. */
int ae_sink_create_variant(ae_sink *parent, const ae_variant_config *variant,
                           const ae_sink_config *config, ae_sink **out);

/* ---- routes ------------------------------------------------------------ */

typedef struct ae_route_config {
    double gain_db;           /* 0 = unity */
    int muted;
    /* 0 = all channels as they are (mono is copied to both sides);
     * 1..N = only that input channel, sent to every sink channel */
    int source_channel;
} ae_route_config;

int ae_route_create(ae_source *source, ae_sink *sink, const ae_route_config *config,
                    ae_route **out);
int ae_route_set_gain(ae_route *route, double gain_db);
int ae_route_set_muted(ae_route *route, int muted);
int ae_route_destroy(ae_route *route);

/* ---- listeners --------------------------------------------------------- */

/* Validates the offer at once (AE_ERR_SDP with a reason), then answers in the
 * background: AE_EVENT_ANSWER_READY or AE_EVENT_ANSWER_FAILED follows. */
int ae_listener_create(ae_sink *sink, const char *offer_sdp, ae_listener **out);
/* The same; when the transport answers at once (the lean one: ICE-lite has
 * nothing to gather) *answer_out is the answer, to be freed with
 * ae_listener_free_answer, and no AE_EVENT_ANSWER_READY follows. Otherwise
 * *answer_out is NULL and the answer comes as that event. */
int ae_listener_open(ae_sink *sink, const char *offer_sdp, ae_listener **out, char **answer_out);
void ae_listener_free_answer(char *answer);
/* A publication (WHIP out) of an Opus sink: webrtcbin offers the sink's
 * Opus (the listeners' encode, no second encoder); AE_EVENT_OFFER_READY
 * follows with the offer, to POST to a WHIP server; its answer goes to
 * ae_publication_set_answer. It is an ae_listener for everything else
 * (events, stats, destroy) but not counted among the listeners.
 * ice_servers (or NULL): the WHIP server's STUN and TURN servers, one a
 * line, as webrtcbin takes them ("stun://host:port",
 * "turn://user:pass@host:port?transport=udp", "turns://..."): at most
 * AE_MAX_ICE_SERVERS lines of at most AE_MAX_ICE_SERVER_LEN bytes; the
 * first stun line replaces the engine's stun_server. */
#define AE_MAX_ICE_SERVERS 4
#define AE_MAX_ICE_SERVER_LEN 600
int ae_publication_open(ae_sink *sink, const char *ice_servers, ae_listener **out);
int ae_publication_set_answer(ae_listener *publication, const char *answer_sdp);
/* ICE restart of a publication whose answer was set (RFC 9725 section
 * 4.4): its ICE agent restarts with new local credentials, written into
 * ufrag and pwd (AE_ICE_CREDENTIAL_MAX bytes each, NUL-terminated), its
 * local candidates kept; checks wait for ae_publication_restart_answer with
 * the server's new credentials and its candidates ("candidate:..." lines,
 * one a line, or NULL: the answer's own are used again; checked like
 * trickled ones). DTLS and the media go on over whatever pair ICE selects. */
#define AE_ICE_CREDENTIAL_MAX 257
int ae_publication_ice_restart(ae_listener *publication, char *ufrag, char *pwd);
int ae_publication_restart_answer(ae_listener *publication, const char *ufrag, const char *pwd,
                                  const char *candidates);
/* An RTP forward of an Opus sink: its Opus (the listeners' encode, no
 * second encoder) as RTP to host:port, SRTP when srtp_key is given. For a
 * relay's ingest (a Janus streaming mountpoint). host is a numeric IPv4 or
 * IPv6 address (nothing waits for DNS). Packets flow once it returns. It is
 * an ae_listener for stats (always CONNECTED, transport
 * AE_TRANSPORT_FORWARD) and destroy, not counted among the listeners but
 * keeping the sink busy like a publication. */
typedef struct ae_forward_config {
    const char *host;
    int port;                         /* 1..65535 */
    int payload_type;                 /* 96..127 */
    uint32_t ssrc;
    const unsigned char *srtp_key;    /* NULL: plain RTP; else AES_CM_128_HMAC_SHA1_80's */
    int srtp_key_len;                 /* 30: master key and salt */
} ae_forward_config;
int ae_forward_open(ae_sink *sink, const ae_forward_config *config, ae_listener **out);
/* A publisher into a whip source (WHIP): the offer sends Opus, which is
 * decoded and mixed like any network source's. Always the lean transport,
 * answered at once (*answer_out, as above). It is an ae_listener for
 * everything else (events, candidates, stats, destroy) but not counted
 * among the listeners. AE_ERR_INVALID for a source of another kind. */
int ae_publisher_open(ae_source *source, const char *offer_sdp, ae_listener **out,
                      char **answer_out);
/* The listener's event id: unique in the engine, never reused. */
uint64_t ae_listener_id(const ae_listener *listener);
/* candidate: "candidate:..." or "a=candidate:..."; an empty string means
 * end-of-candidates. */
int ae_listener_add_candidate(ae_listener *listener, int mline, const char *candidate);

typedef struct ae_listener_stats {
    int state;                /* ae_listener_state */
    int64_t last_rx_us;       /* monotonic time of the last packet from the peer, 0 = none */
    uint64_t packets_sent, bytes_sent;
    int transport;            /* ae_transport serving it */
    /* from the peer's RTCP receiver reports (lean transport); rtcp_reports = 0: none yet */
    uint64_t rtcp_reports;
    double fraction_lost;     /* 0..1, over the last report's interval */
    int64_t packets_lost;     /* cumulative, as the peer counts them */
    double jitter_ms;
    double rtt_ms;            /* round-trip time from LSR/DLSR; < 0 = unknown */
} ae_listener_stats;

int ae_listener_stats_get(ae_listener *listener, ae_listener_stats *out);
int ae_listener_destroy(ae_listener *listener);
/* 1 when ae_listener_destroy waits for the listener's own threads (a
 * webrtcbin listener: call it off any thread that must stay responsive);
 * 0 when it returns at once (a lean listener is freed by the network
 * thread; once ae_listener_destroy returns no event for it is queued, and
 * only one being delivered at that moment may still finish). */
int ae_listener_destroy_blocks(const ae_listener *listener);

#ifdef __cplusplus
}
#endif
#endif
