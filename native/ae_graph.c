/* ae_graph.c: sources, sinks, routes and the mixer thread.
 *
 * Clocking: a sink is clocked by its first route from an ALSA source (the
 * device's clock): a frame is mixed as soon as that source has delivered it,
 * which keeps capture-to-encode delay at one frame. A sink with no capture
 * source is clocked from the monotonic clock. A capture source whose device
 * is gone keeps writing silence on time, so its sinks and their listeners
 * carry on and nobody downstream has to know. */
#define _GNU_SOURCE
#include "ae_graph.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define RETRY_MIN_US 100000
/* A device thread sees its stop flag within a period and a 100 ms wait. One
 * that has not ended after this is stuck inside its driver (seen once in the
 * tests: PulseAudio's ALSA plugin blocked for ever on its own lock), and is
 * left behind rather than let it hold the engine's close for ever. */
#define DEVICE_JOIN_TIMEOUT_US 3000000
#define RETRY_MAX_US 2000000
#define MAX_FILE_SAMPLES (64u * 1024 * 1024)
/* A non-clocking capture route may run this far ahead before we skip. */
#define MAX_LAG_FRAMES 960
/* a network reader that (re)buffered moves up to a burst's end for this long */
#define SETTLE_FRAMES(rate) ((rate) / 5)

/* ---- ring buffer -------------------------------------------------------- */

int ae_ring_init(ae_ring *r, int channels, uint64_t min_frames)
{
    memset(r, 0, sizeof *r);
    uint64_t cap = 1024;
    while (cap < min_frames) cap <<= 1;
    r->data = calloc(cap * (uint64_t)channels, sizeof(float));
    if (!r->data) return ae_fail(AE_ERR_NOMEM, "out of memory");
    r->capacity = cap;
    r->channels = channels;
    return AE_OK;
}

void ae_ring_free(ae_ring *r)
{
    free(r->data);
    r->data = NULL;
}

void ae_ring_write(ae_ring *r, const float *in, uint64_t frames, int64_t capture_us)
{
    uint64_t w = atomic_load_explicit(&r->wpos, memory_order_relaxed);
    uint64_t p = atomic_load_explicit(&r->periods, memory_order_relaxed);
    r->period_pos[p % 256] = w;
    r->period_time_us[p % 256] = capture_us;
    for (uint64_t i = 0; i < frames; i++) {
        uint64_t slot = (w + i) & (r->capacity - 1);
        memcpy(&r->data[slot * (uint64_t)r->channels], &in[i * (uint64_t)r->channels],
               sizeof(float) * (size_t)r->channels);
    }
    atomic_store_explicit(&r->periods, p + 1, memory_order_release);
    atomic_store_explicit(&r->wpos, w + frames, memory_order_release);
}

void ae_ring_read(const ae_ring *r, uint64_t pos, float *out, uint64_t frames)
{
    for (uint64_t i = 0; i < frames; i++) {
        uint64_t slot = (pos + i) & (r->capacity - 1);
        memcpy(&out[i * (uint64_t)r->channels], &r->data[slot * (uint64_t)r->channels],
               sizeof(float) * (size_t)r->channels);
    }
}

int64_t ae_ring_time_of(const ae_ring *r, uint64_t pos, int rate)
{
    uint64_t p = atomic_load_explicit(&r->periods, memory_order_acquire);
    uint64_t lo = p > 256 ? p - 256 : 0;
    for (uint64_t i = p; i > lo; i--) {
        uint64_t k = (i - 1) % 256;
        if (r->period_pos[k] <= pos)
            return r->period_time_us[k] +
                   (int64_t)((pos - r->period_pos[k]) * 1000000 / (uint64_t)rate);
    }
    return ae_now_us();
}

/* ---- device threads ----------------------------------------------------- */

/* Who a device thread reports for. */
typedef struct device_ctx {
    ae_graph *e;
    ae_source *source;
    ae_sink *sink;
    ae_device *d;
} device_ctx;

/* After a call into the driver: the device is being closed, and the graph
 * may be gone if the call outlasted DEVICE_JOIN_TIMEOUT_US, so touch nothing
 * but the device. */
static bool stopping(const ae_device *d) { return atomic_load(&d->stop); }

static void post_device(device_ctx *c, int type, const char *text, uint64_t count)
{
    if (c->d && stopping(c->d)) return;   /* (a network source has no device) */
    ae_event ev = {0};
    ev.type = type;
    ev.source_id = c->source ? c->source->id : 0;
    ev.sink_id = c->sink ? c->sink->id : 0;
    ev.text = text;
    ev.count = count;
    ae_post(c->e->events, &ev);
}

static void mark_lost(device_ctx *c, const char *why)
{
    ae_device *d = c->d;
    char msg[300];
    snprintf(msg, sizeof msg, "%s: %s", d->name, why);
    ae_pcm_close(&d->pcm);
    d->lost = true;
    d->backoff = RETRY_MIN_US;
    d->retry_at = ae_now_us() + d->backoff;
    d->silence_t = ae_now_us();
    post_device(c, AE_EVENT_DEVICE_LOST, msg, 0);
}

static int device_open_pcm(ae_graph *e, ae_device *d)
{
    return ae_pcm_open(&d->pcm, d->name, d->stream, e->rate, d->channels,
                       d->period_frames, d->buffer_periods);
}

/* While the device is gone: retry with backoff; the caller keeps time with
 * silence meanwhile. Returns true when the device is back. */
static bool try_restore(device_ctx *c)
{
    ae_device *d = c->d;
    int64_t now = ae_now_us();
    if (now < d->retry_at) return false;
    if (device_open_pcm(c->e, d) == AE_OK && !stopping(d)) {
        d->lost = false;
        post_device(c, AE_EVENT_DEVICE_RESTORED, NULL, 0);
        return true;
    }
    d->backoff = d->backoff * 2 > RETRY_MAX_US ? RETRY_MAX_US : d->backoff * 2;
    d->retry_at = now + d->backoff;
    return false;
}

/* Sleep through one period of silence while the device is gone. */
static void keep_time(device_ctx *c, int frames)
{
    c->d->silence_t += (int64_t)frames * 1000000 / c->e->rate;
    ae_sleep_until_us(c->d->silence_t);
}

/* One step of device I/O; returns false when the device is lost. */
static bool handle_io_result(device_ctx *c, int n, int *stalls)
{
    if (n > 0) {
        *stalls = 0;
        return true;
    }
    if (n == -EPIPE) {
        c->d->xruns++;
        post_device(c, AE_EVENT_XRUN, NULL, c->d->xruns);
        return true;
    }
    if (n == 0) {
        /* Timed out: a device that delivers nothing for a second is gone. */
        if (++*stalls * 100 >= 1000) {
            mark_lost(c, "the device stopped delivering audio");
            *stalls = 0;
            return false;
        }
        return true;
    }
    mark_lost(c, snd_strerror(n));
    return false;
}

/* Largest period a device may choose (we ask for period_frames). */
static size_t max_period(const ae_device *d) { return (size_t)d->period_frames * 4; }

/* A device thread's last act (see device_close). */
static void device_thread_exiting(ae_device *d)
{
    if (!atomic_exchange(&d->released, true)) ae_thread_exiting();
}

static void *capture_main(void *arg)
{
    ae_source *s = arg;
    ae_graph *e = s->graph;
    ae_device *d = &s->dev;
    device_ctx c = {.e = e, .source = s, .d = d};
    float *buf = calloc(max_period(d) * (size_t)s->channels, sizeof(float));
    if (!d->pcm.pcm) mark_lost(&c, "not present at start");
    int stalls = 0;
    while (buf && !atomic_load(&d->stop)) {
        if (d->lost && !try_restore(&c)) {
            if (stopping(d)) break;
            /* Keep the sinks fed with silence, on time. */
            keep_time(&c, d->period_frames);
            memset(buf, 0, (size_t)d->period_frames * (size_t)s->channels * sizeof(float));
            ae_ring_write(&s->ring, buf, (uint64_t)d->period_frames, d->silence_t);
            ae_graph_wake(e);
            continue;
        }
        if (d->pcm.period > max_period(d)) {
            mark_lost(&c, "the device chose a period larger than asked");
            continue;
        }
        int n = ae_pcm_read_period(&d->pcm, buf, 100);
        if (stopping(d)) break;
        if (!handle_io_result(&c, n, &stalls) || n <= 0) continue;
        int64_t captured = ae_now_us() - (int64_t)n * 1000000 / e->rate;
        ae_levels_add(&s->levels, buf, n);
        ae_ring_write(&s->ring, buf, (uint64_t)n, captured);
        ae_graph_wake(e);
    }
    free(buf);
    device_thread_exiting(d);
    return NULL;
}

static void *playback_main(void *arg)
{
    ae_sink *k = arg;
    ae_graph *e = k->graph;
    ae_device *d = &k->dev;
    device_ctx c = {.e = e, .sink = k, .d = d};
    float *buf = calloc(max_period(d) * (size_t)k->channels, sizeof(float));
    if (!d->pcm.pcm) mark_lost(&c, "not present at start");
    int stalls = 0;
    while (buf && !atomic_load(&d->stop)) {
        int frames = d->lost ? d->period_frames : (int)d->pcm.period;
        if (!d->lost && (size_t)frames > max_period(d)) {
            mark_lost(&c, "the device chose a period larger than asked");
            continue;
        }
        /* Take one period from the mixer's output, or silence. */
        uint64_t w = atomic_load_explicit(&k->out_ring.wpos, memory_order_acquire);
        uint64_t r = atomic_load(&k->out_rpos);
        uint64_t limit = (uint64_t)k->frame_samples + 2 * (uint64_t)frames;
        if (w - r > limit) r = w - (uint64_t)frames;  /* drift or a stall: stay close */
        if (w - r >= (uint64_t)frames) {
            ae_ring_read(&k->out_ring, r, buf, (uint64_t)frames);
            atomic_store(&k->out_rpos, r + (uint64_t)frames);
        } else {
            memset(buf, 0, (size_t)frames * (size_t)k->channels * sizeof(float));
        }
        if (d->lost && !try_restore(&c)) {
            if (stopping(d)) break;
            keep_time(&c, frames);
            continue;
        }
        int n = ae_pcm_write_period(&d->pcm, buf, 100);
        if (stopping(d)) break;
        handle_io_result(&c, n, &stalls);
    }
    free(buf);
    device_thread_exiting(d);
    return NULL;
}

/* Configure and open a device; with allow_absent a missing device is not an
 * error (its thread starts in the lost state and retries). */
static int device_open(ae_graph *e, ae_device *d, const char *name, snd_pcm_stream_t stream,
                       int channels, int period_frames, int buffer_periods, int allow_absent)
{
    d->period_frames = period_frames ? period_frames : 128;
    d->buffer_periods = buffer_periods ? buffer_periods : 4;
    bool ok = stream == SND_PCM_STREAM_CAPTURE
        ? AE_IN_RANGE(d->period_frames, AE_SOURCE_PERIOD_FRAMES) &&
          AE_IN_RANGE(d->buffer_periods, AE_SOURCE_BUFFER_PERIODS)
        : AE_IN_RANGE(d->period_frames, AE_SINK_PERIOD_FRAMES) &&
          AE_IN_RANGE(d->buffer_periods, AE_SINK_BUFFER_PERIODS);
    if (!ok)
        return ae_fail(AE_ERR_INVALID, "period of %d frames or buffer of %d periods out of range",
                       d->period_frames, d->buffer_periods);
    d->name = strdup(name && *name ? name : "default");
    d->stream = stream;
    d->channels = channels;
    int rc = device_open_pcm(e, d);
    return rc != AE_OK && allow_absent ? AE_OK : rc;
}

static int device_start(ae_graph *e, ae_device *d, const char *thread_name,
                        void *(*fn)(void *), void *owner)
{
    int rc = ae_thread_start(&d->thread, thread_name, fn, owner, e->rt_priority);
    d->thread_started = rc == AE_OK;
    return rc;
}

/* Stops the device's thread and closes it. Returns false when the thread did
 * not end within DEVICE_JOIN_TIMEOUT_US: it is left behind, detached and
 * counted (ae_abandoned_threads), and the caller must leave the memory holding
 * the device allocated, since the thread may still touch it (never the graph:
 * see stopping()). */
static bool device_close(ae_device *d)
{
    if (d->thread_started) {
        atomic_store(&d->stop, true);
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += DEVICE_JOIN_TIMEOUT_US / 1000000;
        if (pthread_timedjoin_np(d->thread, NULL, &until) != 0) {
            if (!atomic_exchange(&d->released, true)) {
                ae_thread_abandoned();
                pthread_detach(d->thread);
                return false;
            }
            pthread_join(d->thread, NULL);   /* it was on its way out */
        }
        d->thread_started = false;
    }
    ae_pcm_close(&d->pcm);
    free(d->name);
    d->name = NULL;
    return true;
}

/* ---- sources ------------------------------------------------------------ */

static float db_to_amp(double db) { return (float)pow(10.0, db / 20.0); }

static int load_wav(ae_source *s, const char *path, int engine_rate, int raw_rate)
{
    /* Called on the caller's (trio's) thread: a FIFO or a device must fail at
     * once, not block it, and a symlink swapped in after the caller checked
     * the path must not be followed. So open without blocking or following,
     * then judge what was opened. One message for every refusal: it must not
     * tell whether something exists at the path. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return ae_fail(AE_ERR_FILE, "'%s' is not a readable regular file", path);
    }
    if (st.st_size <= 0 || (unsigned long long)st.st_size > MAX_FILE_SAMPLES * 4ull) {
        close(fd);
        return ae_fail(AE_ERR_FILE, "'%s' is empty or too large", path);
    }
    long size = (long)st.st_size;
    unsigned char *bytes = malloc((size_t)size);
    size_t got = 0;
    while (bytes && got < (size_t)size) {
        ssize_t n = read(fd, bytes + got, (size_t)size - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;   /* an error, or the file shrank meanwhile */
        got += (size_t)n;
    }
    close(fd);
    if (!bytes || got != (size_t)size) {
        free(bytes);
        return ae_fail(AE_ERR_FILE, "cannot read '%s'", path);
    }

    int channels = s->channels, bits = 16, is_float = 0, rate = raw_rate ? raw_rate : engine_rate;
    const unsigned char *data = bytes;
    size_t data_len = (size_t)size;
    if (size >= 12 && !memcmp(bytes, "RIFF", 4) && !memcmp(bytes + 8, "WAVE", 4)) {
        data = NULL;
        bool have_fmt = false;
        size_t off = 12;
        while (off + 8 <= (size_t)size) {
            uint32_t len = (uint32_t)bytes[off + 4] | (uint32_t)bytes[off + 5] << 8 |
                           (uint32_t)bytes[off + 6] << 16 | (uint32_t)bytes[off + 7] << 24;
            const unsigned char *body = bytes + off + 8;
            if (len > (size_t)size - off - 8) len = (uint32_t)((size_t)size - off - 8);
            if (!memcmp(bytes + off, "fmt ", 4) && len >= 16) {
                int fmt = body[0] | body[1] << 8;
                channels = body[2] | body[3] << 8;
                rate = (int)((uint32_t)body[4] | (uint32_t)body[5] << 8 |
                             (uint32_t)body[6] << 16 | (uint32_t)body[7] << 24);
                bits = body[14] | body[15] << 8;
                if (fmt == 0xFFFE && len >= 26) fmt = body[24] | body[25] << 8;
                is_float = fmt == 3;
                if (fmt != 1 && fmt != 3) {
                    free(bytes);
                    return ae_fail(AE_ERR_FILE, "'%s': WAV format %d is not PCM or float", path,
                                   fmt);
                }
                have_fmt = true;
            } else if (!memcmp(bytes + off, "data", 4)) {
                data = body;
                data_len = len;
                break;
            }
            off += 8 + len + (len & 1);
        }
        if (!have_fmt || !data) {
            free(bytes);
            return ae_fail(AE_ERR_FILE, "'%s': not a usable WAV file (no fmt or data chunk)", path);
        }
    }
    if (rate != engine_rate) {
        free(bytes);
        return ae_fail(AE_ERR_FILE, "'%s' is %d Hz; the engine runs at %d Hz", path, rate,
                       engine_rate);
    }
    if (channels < 1 || channels > AE_MAX_CHANNELS ||
        !(bits == 16 || bits == 24 || bits == 32) || (is_float && bits != 32)) {
        free(bytes);
        return ae_fail(AE_ERR_FILE, "'%s': unsupported layout (%d channels, %d bits)", path,
                       channels, bits);
    }
    size_t bps = (size_t)bits / 8;
    uint64_t frames = data_len / (bps * (size_t)channels);
    if (frames == 0) {
        free(bytes);
        return ae_fail(AE_ERR_FILE, "'%s' holds no audio", path);
    }
    s->file_data = malloc(frames * (size_t)channels * sizeof(float));
    if (!s->file_data) {
        free(bytes);
        return ae_fail(AE_ERR_NOMEM, "out of memory");
    }
    for (uint64_t i = 0; i < frames * (uint64_t)channels; i++) {
        const unsigned char *p = data + i * bps;
        float v;
        if (is_float) {
            memcpy(&v, p, 4);
        } else if (bits == 16) {
            v = (int16_t)(p[0] | p[1] << 8) / 32768.0f;
        } else if (bits == 24) {
            int32_t x = (int32_t)((uint32_t)p[0] << 8 | (uint32_t)p[1] << 16 |
                                  (uint32_t)p[2] << 24);
            v = (float)(x / 2147483648.0);
        } else {
            int32_t x = (int32_t)((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                                  (uint32_t)p[3] << 24);
            v = (float)(x / 2147483648.0);
        }
        s->file_data[i] = v;
    }
    free(bytes);
    s->file_frames = frames;
    s->channels = channels;
    return AE_OK;
}

static void link_source(ae_graph *e, ae_source *s)
{
    pthread_mutex_lock(&e->lock);
    s->next = e->sources;
    e->sources = s;
    e->nsources++;
    pthread_mutex_unlock(&e->lock);
}

static void source_free(ae_source *s)
{
    ae_netsrc_close(s->net);   /* before the ring its thread writes */
    ae_ring_free(&s->ring);
    free(s->file_data);
    free(s->dev.name);
    pthread_mutex_destroy(&s->levels.lock);
    free(s);
}

/* The network receiver's thread: frames at the engine's rate, stamped with
 * their arrival (the capture-to-listener latency starts there). */
static void net_write(void *ctx, const float *frames, int n, int64_t arrival_us)
{
    ae_source *s = ctx;
    ae_levels_add(&s->levels, frames, n);
    ae_ring_write(&s->ring, frames, (uint64_t)n, arrival_us);
}

/* The stream came, or stopped coming: the source is found or lost, as a
 * capture device is (its channels say so to their listeners). */
static void net_state(void *ctx, bool receiving, const char *why)
{
    ae_source *s = ctx;
    device_ctx c = {.e = s->graph, .source = s};
    post_device(&c, receiving ? AE_EVENT_DEVICE_RESTORED : AE_EVENT_DEVICE_LOST, why, 0);
}

/* How far the newest reader is behind what arrived; -1 while nobody reads
 * (never, or so long ago that the ring has moved on: the source is unrouted). */
static int64_t net_buffered(void *ctx)
{
    ae_source *s = ctx;
    uint64_t read = atomic_load_explicit(&s->read_pos, memory_order_acquire);
    int64_t at = atomic_load_explicit(&s->read_at_us, memory_order_relaxed);
    uint64_t w = atomic_load_explicit(&s->ring.wpos, memory_order_relaxed);
    if (!read || w - read > s->ring.capacity / 2) return -1;
    /* where the reader is now, between its frame-sized steps: the steering
     * sees the clocks' drift, not the mixer's frame size */
    int64_t since = (ae_now_us() - at) * s->graph->rate / 1000000;
    int64_t ahead = (int64_t)(w - read) - (since > 0 ? since : 0);
    return ahead > 0 ? ahead : 0;
}

/* Every per-channel array (levels, events, the mix's scratch) is AE_MAX_CHANNELS long. */
_Static_assert(AE_SOURCE_CHANNELS_MAX <= AE_MAX_CHANNELS && AE_SINK_CHANNELS_MAX <= AE_MAX_CHANNELS &&
               AE_ROUTE_SOURCE_CHANNEL_MAX <= AE_MAX_CHANNELS,
               "a channel bound in the model is above MAX_CHANNELS");

/* The model's bounds, and below Nyquist (a structural limit the model's stays under). */
static int check_tone(const ae_graph *e, double hz, double dbfs)
{
    if (!AE_IN_RANGE(hz, AE_SOURCE_TONE_HZ) || !(hz < e->rate / 2.0) ||
        !AE_IN_RANGE(dbfs, AE_SOURCE_TONE_DBFS))
        return ae_fail(AE_ERR_INVALID, "tone needs %g..%g Hz (below %d) and %g..%g dBFS",
                       AE_SOURCE_TONE_HZ_MIN, AE_SOURCE_TONE_HZ_MAX, e->rate / 2,
                       AE_SOURCE_TONE_DBFS_MIN, AE_SOURCE_TONE_DBFS_MAX);
    return AE_OK;
}

int ae_graph_source_create(ae_graph *e, const ae_source_config *cfg, ae_source **out)
{
    ae_clear_error();
    if (!e || !cfg || !out) return ae_fail(AE_ERR_INVALID, "engine, config and out are required");
    *out = NULL;
    if (atomic_load(&e->stopping)) return ae_fail(AE_ERR_CLOSED, "the engine is closing");
    int channels = cfg->channels ? cfg->channels : 2;
    if (!AE_IN_RANGE(channels, AE_SOURCE_CHANNELS))
        return ae_fail(AE_ERR_INVALID, "channels must be %d..%d, not %d", AE_SOURCE_CHANNELS_MIN,
                       AE_SOURCE_CHANNELS_MAX, channels);
    ae_source *s = calloc(1, sizeof *s);
    if (!s) return ae_fail(AE_ERR_NOMEM, "out of memory");
    s->graph = e;
    s->id = ae_new_id();
    s->kind = cfg->kind;
    s->channels = channels;
    int rc = AE_OK;
    switch (cfg->kind) {
    case AE_SOURCE_TONE: {
        double hz = cfg->tone_hz ? cfg->tone_hz : 440.0;
        double db = cfg->tone_dbfs ? cfg->tone_dbfs : -12.0;
        if ((rc = check_tone(e, hz, db)) != AE_OK) break;
        /* 0: a tone; else clicks that far apart */
        if (cfg->click_interval_ms &&
            !AE_IN_RANGE(cfg->click_interval_ms, AE_SOURCE_CLICK_INTERVAL_MS)) {
            rc = ae_fail(AE_ERR_INVALID, "click interval must be %d..%d ms, not %d",
                         AE_SOURCE_CLICK_INTERVAL_MS_MIN, AE_SOURCE_CLICK_INTERVAL_MS_MAX,
                         cfg->click_interval_ms);
            break;
        }
        s->tone_hz = hz;
        s->tone_amp = db_to_amp(db);
        s->click_interval_ms = cfg->click_interval_ms;
        break;
    }
    case AE_SOURCE_FILE:
        if (!cfg->path || !*cfg->path) {
            rc = ae_fail(AE_ERR_INVALID, "a file source needs a path");
            break;
        }
        rc = load_wav(s, cfg->path, e->rate, cfg->raw_rate);
        break;
    case AE_SOURCE_ALSA:
        rc = ae_ring_init(&s->ring, channels, (uint64_t)e->rate);
        if (rc == AE_OK)
            rc = device_open(e, &s->dev, cfg->device, SND_PCM_STREAM_CAPTURE, channels,
                             cfg->period_frames, cfg->buffer_periods, cfg->allow_absent);
        break;
    case AE_SOURCE_SCREAM:
    case AE_SOURCE_RTP:
    case AE_SOURCE_WHIP:
        rc = ae_ring_init(&s->ring, channels, (uint64_t)e->rate);
        ae_levels_init(&s->levels, s->channels);   /* the receiver measures from the start */
        if (rc == AE_OK)
            rc = ae_netsrc_open(cfg, e->rate, channels, e->rt_priority,
                                (ae_netsrc_io){.ctx = s, .write = net_write,
                                               .buffered = net_buffered,
                                               .state = net_state}, &s->net);
        break;
    default: rc = ae_fail(AE_ERR_INVALID, "unknown source kind %d", cfg->kind);
    }
    if (rc != AE_OK) {
        source_free(s);
        return rc;
    }
    if (!s->net) ae_levels_init(&s->levels, s->channels);
    link_source(e, s);
    if (s->kind == AE_SOURCE_ALSA &&
        (rc = device_start(e, &s->dev, "ae-capture", capture_main, s)) != AE_OK) {
        ae_source_destroy(s);
        return rc;
    }
    *out = s;
    return AE_OK;
}

uint64_t ae_source_id(const ae_source *s) { return s ? s->id : 0; }

uint64_t ae_sink_id(const ae_sink *k) { return k ? k->id : 0; }

int ae_source_set_tone(ae_source *s, double hz, double dbfs)
{
    ae_clear_error();
    if (!s || s->kind != AE_SOURCE_TONE) return ae_fail(AE_ERR_INVALID, "not a tone source");
    int rc = check_tone(s->graph, hz, dbfs);
    if (rc != AE_OK) return rc;
    pthread_mutex_lock(&s->graph->lock);
    s->tone_hz = hz;
    s->tone_amp = db_to_amp(dbfs);
    pthread_mutex_unlock(&s->graph->lock);
    return AE_OK;
}

int ae_source_click_times(ae_source *s, int64_t *out, int max)
{
    ae_clear_error();
    if (!s || !out || max < 0) return ae_fail(AE_ERR_INVALID, "bad arguments");
    pthread_mutex_lock(&s->graph->lock);
    uint64_t n = atomic_load(&s->clicks);
    uint64_t take = n < (uint64_t)max ? n : (uint64_t)max;
    if (take > AE_CLICK_RING) take = AE_CLICK_RING;
    for (uint64_t i = 0; i < take; i++) out[i] = s->click_times[(n - take + i) % AE_CLICK_RING];
    pthread_mutex_unlock(&s->graph->lock);
    return (int)take;
}

int ae_source_feed_fd(ae_source *s)
{
    return s && s->kind == AE_SOURCE_WHIP ? ae_netsrc_feed_fd(s->net) : -1;
}

int ae_source_net_stats(ae_source *s, ae_net_source_stats *out)
{
    ae_clear_error();
    if (!s || !out || !s->net) return ae_fail(AE_ERR_INVALID, "not a network source");
    ae_netsrc_stats(s->net, out);
    out->resyncs = atomic_load(&s->net_resyncs);
    return AE_OK;
}

int ae_source_destroy(ae_source *s)
{
    ae_clear_error();
    if (!s) return ae_fail(AE_ERR_INVALID, "no source");
    ae_graph *e = s->graph;
    pthread_mutex_lock(&e->lock);
    if (s->nroutes > 0) {
        pthread_mutex_unlock(&e->lock);
        return ae_fail(AE_ERR_BUSY, "the source still has %d route(s)", s->nroutes);
    }
    for (ae_source **pp = &e->sources; *pp; pp = &(*pp)->next) {
        if (*pp == s) {
            *pp = s->next;
            e->nsources--;
            break;
        }
    }
    pthread_mutex_unlock(&e->lock);
    bool closed = device_close(&s->dev);
    ae_events_forget(e->events, s->id);
    if (closed) source_free(s);
    return AE_OK;
}

/* ---- sinks -------------------------------------------------------------- */

static void sink_free(ae_sink *k)
{
    if (k->output.destroy) k->output.destroy(k->output.self);
    ae_delay_free(&k->delay);
    free(k->variant);
    ae_ring_free(&k->out_ring);
    free(k->mix);
    free(k->tmp);
    free(k->dev.name);
    pthread_mutex_destroy(&k->levels.lock);
    free(k);
}

static int delay_frames(const ae_graph *e, int delay_ms)
{
    return (int)((int64_t)e->rate * delay_ms / 1000);
}

/* A sink, or (parent set) a variant of parent, whose cfg the caller made
 * fit: an Opus sink of 2 channels at the parent's frame size. */
static int sink_create(ae_graph *e, const ae_sink_config *cfg, ae_sink *parent,
                       const ae_variant_config *vcfg, ae_output_maker make, void *ctx,
                       ae_sink **out)
{
    *out = NULL;
    if (atomic_load(&e->stopping)) return ae_fail(AE_ERR_CLOSED, "the engine is closing");
    int channels = cfg->channels ? cfg->channels : 2;
    int frame_us = cfg->frame_us ? cfg->frame_us : 10000;
    if (!AE_IN_RANGE(cfg->delay_ms, AE_SINK_DELAY_MS))
        return ae_fail(AE_ERR_INVALID, "delay must be %d..%d ms, not %d", AE_SINK_DELAY_MS_MIN,
                       AE_SINK_DELAY_MS_MAX, cfg->delay_ms);
    if (!AE_ONE_OF(frame_us / 1000.0, AE_SINK_FRAME_MS))
        return ae_fail(AE_ERR_INVALID, "a frame of %d us is not one Opus takes", frame_us);
    if (cfg->kind == AE_SINK_OPUS && channels > AE_OPUS_MAX_CHANNELS)
        return ae_fail(AE_ERR_INVALID, "an Opus sink has 1 or %d channels, not %d",
                       AE_OPUS_MAX_CHANNELS, channels);
    if (!AE_IN_RANGE(channels, AE_SINK_CHANNELS))
        return ae_fail(AE_ERR_INVALID, "channels must be %d..%d, not %d", AE_SINK_CHANNELS_MIN,
                       AE_SINK_CHANNELS_MAX, channels);
    if (cfg->kind != AE_SINK_OPUS && cfg->kind != AE_SINK_ALSA)
        return ae_fail(AE_ERR_INVALID, "unknown sink kind %d", cfg->kind);

    ae_sink *k = calloc(1, sizeof *k);
    if (!k) return ae_fail(AE_ERR_NOMEM, "out of memory");
    k->graph = e;
    k->id = ae_new_id();
    k->kind = cfg->kind;
    k->channels = channels;
    k->frame_us = frame_us;
    k->frame_samples = (int)((int64_t)e->rate * frame_us / 1000000);
    k->on_demand = cfg->kind == AE_SINK_OPUS && cfg->on_demand;
    k->mix = calloc((size_t)k->frame_samples * (size_t)channels, sizeof(float));
    k->tmp = calloc((size_t)k->frame_samples * AE_MAX_CHANNELS, sizeof(float));
    ae_levels_init(&k->levels, channels);
    int rc = (k->mix && k->tmp) ? AE_OK : ae_fail(AE_ERR_NOMEM, "out of memory");
    if (rc == AE_OK && cfg->delay_ms > 0)
        rc = ae_delay_init(&k->delay, channels, delay_frames(e, cfg->delay_ms));
    if (rc == AE_OK && parent) {
        k->variant = calloc(1, sizeof *k->variant);
        rc = k->variant ? ae_variant_init(k->variant, vcfg, e->rate)
                        : ae_fail(AE_ERR_NOMEM, "out of memory");
    }

    if (rc == AE_OK && k->kind == AE_SINK_OPUS) {
        rc = make ? make(k, cfg, ctx) : ae_fail(AE_ERR_INVALID, "no output for an Opus sink");
    } else if (rc == AE_OK) {
        rc = ae_ring_init(&k->out_ring, channels, (uint64_t)e->rate);
        if (rc == AE_OK)
            rc = device_open(e, &k->dev, cfg->device, SND_PCM_STREAM_PLAYBACK, channels,
                             cfg->period_frames, cfg->buffer_periods, cfg->allow_absent);
    }
    if (rc != AE_OK) {
        sink_free(k);
        return rc;
    }
    pthread_mutex_lock(&e->lock);
    k->next = e->sinks;
    e->sinks = k;
    e->nsinks++;
    if (parent) {
        k->parent = parent;
        k->next_variant = parent->variants;
        parent->variants = k;
    }
    pthread_mutex_unlock(&e->lock);
    if (k->kind == AE_SINK_ALSA &&
        (rc = device_start(e, &k->dev, "ae-playback", playback_main, k)) != AE_OK) {
        ae_sink_destroy(k);
        return rc;
    }
    ae_graph_wake(e);
    *out = k;
    return AE_OK;
}

int ae_graph_sink_create(ae_graph *e, const ae_sink_config *cfg, ae_output_maker make,
                         void *ctx, ae_sink **out)
{
    ae_clear_error();
    if (!e || !cfg || !out) return ae_fail(AE_ERR_INVALID, "engine, config and out are required");
    return sink_create(e, cfg, NULL, NULL, make, ctx, out);
}

int ae_graph_variant_create(ae_sink *parent, const ae_variant_config *variant,
                            const ae_sink_config *cfg, ae_output_maker make, void *ctx,
                            ae_sink **out)
{
    ae_clear_error();
    if (!parent || !variant || !out)
        return ae_fail(AE_ERR_INVALID, "parent, variant and out are required");
    *out = NULL;
    if (parent->kind != AE_SINK_OPUS || parent->parent)
        return ae_fail(AE_ERR_INVALID, "a variant's parent must be an Opus sink, not a variant");
    ae_sink_config c = {0};
    if (cfg) c = *cfg;
    c.kind = AE_SINK_OPUS;
    c.channels = 2;                       /* balance needs two ears */
    c.frame_us = (int)parent->frame_us;   /* one parent frame, one variant frame */
    c.delay_ms = 0;                       /* the parent's mix is delayed already */
    return sink_create(parent->graph, &c, parent, variant, make, ctx, out);
}

int ae_sink_set_delay(ae_sink *k, int delay_ms)
{
    ae_clear_error();
    if (!k) return ae_fail(AE_ERR_INVALID, "no sink");
    if (k->parent) return ae_fail(AE_ERR_INVALID, "a variant is delayed with its parent");
    if (!AE_IN_RANGE(delay_ms, AE_SINK_DELAY_MS))
        return ae_fail(AE_ERR_INVALID, "delay must be %d..%d ms, not %d", AE_SINK_DELAY_MS_MIN,
                       AE_SINK_DELAY_MS_MAX, delay_ms);
    ae_graph *e = k->graph;
    ae_delay fresh = {0}, old;
    if (delay_ms > 0) {
        int rc = ae_delay_init(&fresh, k->channels, delay_frames(e, delay_ms));
        if (rc != AE_OK) return rc;
    }
    /* memory taken and given back outside the lock: the mixer only swaps */
    pthread_mutex_lock(&e->lock);
    old = k->delay;
    k->delay = fresh;
    /* the latency measured with the old delay would be reported until a
     * listener sent new packets (a page showed it ~300 ms off for 3 s) */
    if (k->output.forget_latency) k->output.forget_latency(k->output.self);
    for (ae_sink *v = k->variants; v; v = v->next_variant)
        if (v->output.forget_latency) v->output.forget_latency(v->output.self);
    pthread_mutex_unlock(&e->lock);
    ae_delay_free(&old);
    return AE_OK;
}

int ae_sink_destroy(ae_sink *k)
{
    ae_clear_error();
    if (!k) return ae_fail(AE_ERR_INVALID, "no sink");
    ae_graph *e = k->graph;
    pthread_mutex_lock(&e->lock);
    int listeners = k->output.listeners ? k->output.listeners(k->output.self) : 0;
    if (k->nroutes > 0 || listeners > 0 || k->variants) {
        int routes = k->nroutes;
        bool variants = k->variants != NULL;
        pthread_mutex_unlock(&e->lock);
        return ae_fail(AE_ERR_BUSY, "the sink still has %d route(s) and %d listener(s) or publication(s)%s",
                       routes, listeners, variants ? " and variants" : "");
    }
    for (ae_sink **pp = &e->sinks; *pp; pp = &(*pp)->next) {
        if (*pp == k) {
            *pp = k->next;
            e->nsinks--;
            break;
        }
    }
    if (k->parent) {
        for (ae_sink **pp = &k->parent->variants; *pp; pp = &(*pp)->next_variant) {
            if (*pp == k) {
                *pp = k->next_variant;
                break;
            }
        }
    }
    pthread_mutex_unlock(&e->lock);
    bool closed = device_close(&k->dev);
    ae_events_forget(e->events, k->id);
    if (closed) sink_free(k);
    return AE_OK;
}

int ae_sink_stats_get(ae_sink *k, ae_sink_stats *out)
{
    ae_clear_error();
    if (!k || !out) return ae_fail(AE_ERR_INVALID, "sink and out are required");
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&k->graph->lock);
    out->frames_encoded = k->frames;
    out->underruns = k->underruns;
    pthread_mutex_unlock(&k->graph->lock);
    if (k->output.stats) k->output.stats(k->output.self, out);
    return AE_OK;
}

/* ---- routes ------------------------------------------------------------- */

static int check_gain(double gain_db)
{
    if (!isfinite(gain_db) || !AE_IN_RANGE(gain_db, AE_ROUTE_GAIN_DB))
        return ae_fail(AE_ERR_INVALID, "gain must be between %g and %g dB",
                       AE_ROUTE_GAIN_DB_MIN, AE_ROUTE_GAIN_DB_MAX);
    return AE_OK;
}

int ae_route_create(ae_source *s, ae_sink *k, const ae_route_config *cfg, ae_route **out)
{
    ae_clear_error();
    if (!s || !k || !out) return ae_fail(AE_ERR_INVALID, "source, sink and out are required");
    *out = NULL;
    if (s->graph != k->graph) return ae_fail(AE_ERR_INVALID, "source and sink of different engines");
    ae_route_config c = {0};
    if (cfg) c = *cfg;
    int rc = check_gain(c.gain_db);
    if (rc != AE_OK) return rc;
    if (!AE_IN_RANGE(c.source_channel, AE_ROUTE_SOURCE_CHANNEL) || c.source_channel > s->channels)
        return ae_fail(AE_ERR_INVALID, "source channel %d: the source has %d channel(s)",
                       c.source_channel, s->channels);
    ae_route *r = calloc(1, sizeof *r);
    if (!r) return ae_fail(AE_ERR_NOMEM, "out of memory");
    r->source = s;
    r->sink = k;
    r->gain_db = c.gain_db;
    r->muted = c.muted != 0;
    r->gain_target = r->muted ? 0.0f : db_to_amp(c.gain_db);
    r->gain_now = r->gain_target;
    r->source_channel = c.source_channel > 0 ? c.source_channel : 0;
    ae_graph *e = s->graph;
    pthread_mutex_lock(&e->lock);
    if (s->kind == AE_SOURCE_ALSA)
        r->rpos = atomic_load_explicit(&s->ring.wpos, memory_order_acquire);
    /* Append, so the first capture route stays the sink's clock. */
    ae_route **pp = &k->routes;
    while (*pp) pp = &(*pp)->next_in_sink;
    *pp = r;
    k->nroutes++;
    s->nroutes++;
    e->nroutes++;
    pthread_mutex_unlock(&e->lock);
    ae_graph_wake(e);
    *out = r;
    return AE_OK;
}

int ae_route_set_gain(ae_route *r, double gain_db)
{
    ae_clear_error();
    if (!r) return ae_fail(AE_ERR_INVALID, "no route");
    int rc = check_gain(gain_db);
    if (rc != AE_OK) return rc;
    pthread_mutex_lock(&r->source->graph->lock);
    r->gain_db = gain_db;
    r->gain_target = r->muted ? 0.0f : db_to_amp(gain_db);
    pthread_mutex_unlock(&r->source->graph->lock);
    return AE_OK;
}

int ae_route_set_muted(ae_route *r, int muted)
{
    ae_clear_error();
    if (!r) return ae_fail(AE_ERR_INVALID, "no route");
    pthread_mutex_lock(&r->source->graph->lock);
    r->muted = muted != 0;
    r->gain_target = r->muted ? 0.0f : db_to_amp(r->gain_db);
    pthread_mutex_unlock(&r->source->graph->lock);
    return AE_OK;
}

int ae_route_destroy(ae_route *r)
{
    ae_clear_error();
    if (!r) return ae_fail(AE_ERR_INVALID, "no route");
    ae_graph *e = r->source->graph;
    pthread_mutex_lock(&e->lock);
    for (ae_route **pp = &r->sink->routes; *pp; pp = &(*pp)->next_in_sink) {
        if (*pp == r) {
            *pp = r->next_in_sink;
            break;
        }
    }
    r->sink->nroutes--;
    r->source->nroutes--;
    e->nroutes--;
    pthread_mutex_unlock(&e->lock);
    free(r);
    return AE_OK;
}

/* ---- mixer -------------------------------------------------------------- */

/* Fill dst (fs frames, source channels) from a route's source. Returns the
 * frames that were real audio (the rest is silence). */
static int pull(ae_route *r, float *dst, int fs, int64_t frame_time_us, bool clock)
{
    ae_source *s = r->source;
    int ch = s->channels;
    int rate = s->graph->rate;
    switch (s->kind) {
    case AE_SOURCE_ALSA: {
        uint64_t w = atomic_load_explicit(&s->ring.wpos, memory_order_acquire);
        if (w - r->rpos > s->ring.capacity - (uint64_t)fs) r->rpos = w - (uint64_t)fs;
        if (!clock && w - r->rpos > (uint64_t)fs + MAX_LAG_FRAMES) r->rpos = w - (uint64_t)fs;
        uint64_t avail = w - r->rpos;
        int n = avail < (uint64_t)fs ? (int)avail : fs;
        ae_ring_read(&s->ring, r->rpos, dst, (uint64_t)n);
        memset(dst + (size_t)n * (size_t)ch, 0, (size_t)(fs - n) * (size_t)ch * sizeof(float));
        r->rpos += (uint64_t)n;
        return n;
    }
    case AE_SOURCE_SCREAM:
    case AE_SOURCE_RTP:
    case AE_SOURCE_WHIP: {
        /* never a clock: the receiver's resampler keeps the newest reader
         * its target behind what arrived; a reader that ran dry (or is far
         * off) waits until that much is there again and starts from it */
        uint64_t w = atomic_load_explicit(&s->ring.wpos, memory_order_acquire);
        uint64_t target = (uint64_t)ae_netsrc_target_frames(s->net);
        uint64_t lag = w - r->rpos;
        if (r->buffered && (lag < (uint64_t)fs || lag > 2 * target + 2 * (uint64_t)fs +
                                                         MAX_LAG_FRAMES)) {
            r->buffered = false;
            atomic_fetch_add(&s->net_resyncs, 1);
        }
        uint64_t seat = target + (uint64_t)fs;   /* after this frame: target behind */
        bool take_seat;
        if (!r->buffered) {
            if (lag < seat) {
                memset(dst, 0, (size_t)fs * (size_t)ch * sizeof(float));
                return 0;
            }
            r->buffered = true;
            r->settling = SETTLE_FRAMES(rate);
            take_seat = true;
        } else {
            /* (re)buffered moments ago, maybe in the middle of a burst (a
             * sender's or the network's catch-up after a gap): the rest of
             * it would hold every later frame that much late, for as long as
             * the steering takes to drain it (measured: 25 ms for 25 s).
             * Start again from the newest while that is still unheard of. */
            take_seat = r->settling > 0 && lag > seat + target / 2;
            if (r->settling > 0) r->settling -= fs;
        }
        if (take_seat) r->rpos = w - seat;
        ae_ring_read(&s->ring, r->rpos, dst, (uint64_t)fs);
        r->rpos += (uint64_t)fs;
        if (r->rpos > atomic_load_explicit(&s->read_pos, memory_order_relaxed)) {
            atomic_store_explicit(&s->read_at_us, ae_now_us(), memory_order_relaxed);
            atomic_store_explicit(&s->read_pos, r->rpos, memory_order_release);
        }
        return fs;
    }
    case AE_SOURCE_TONE: {
        if (s->click_interval_ms > 0) {
            uint64_t period = (uint64_t)rate * (uint64_t)s->click_interval_ms / 1000;
            uint64_t click_len = (uint64_t)rate / 1000;
            for (int i = 0; i < fs; i++) {
                uint64_t pos = (r->gen_pos + (uint64_t)i) % period;
                float v = 0.0f;
                if (pos < click_len) {
                    /* A 1 ms burst at the tone's frequency: easy to detect. */
                    v = (float)(s->tone_amp * sin(2.0 * M_PI * s->tone_hz * (double)pos / rate));
                    if (pos == 0) {
                        uint64_t c = atomic_load(&s->clicks);
                        s->click_times[c % AE_CLICK_RING] =
                            frame_time_us + (int64_t)i * 1000000 / rate;
                        atomic_store(&s->clicks, c + 1);
                    }
                }
                for (int c = 0; c < ch; c++) dst[i * ch + c] = v;
            }
        } else {
            double step = 2.0 * M_PI * s->tone_hz / rate;
            for (int i = 0; i < fs; i++) {
                float v = (float)(s->tone_amp * sin(r->phase));
                r->phase += step;
                if (r->phase > 2.0 * M_PI) r->phase -= 2.0 * M_PI;
                for (int c = 0; c < ch; c++) dst[i * ch + c] = v;
            }
        }
        r->gen_pos += (uint64_t)fs;
        ae_levels_add(&s->levels, dst, fs);
        return fs;
    }
    case AE_SOURCE_FILE:
    default:
        for (int i = 0; i < fs; i++) {
            uint64_t pos = (r->gen_pos + (uint64_t)i) % s->file_frames;
            memcpy(&dst[i * ch], &s->file_data[pos * (uint64_t)ch], sizeof(float) * (size_t)ch);
        }
        r->gen_pos += (uint64_t)fs;
        ae_levels_add(&s->levels, dst, fs);
        return fs;
    }
}

/* Add src (source layout) into mix (sink layout) with a gain ramp. */
static void mix_in(ae_route *r, const float *src, float *mix, int fs, int kch)
{
    int sch = r->source->channels;
    float g0 = r->gain_now, g1 = r->gain_target;
    if (g0 == 0.0f && g1 == 0.0f) return;
    float step = (g1 - g0) / (float)fs;
    for (int i = 0; i < fs; i++) {
        float g = g0 + step * (float)(i + 1);
        const float *in = &src[i * sch];
        float *o = &mix[i * kch];
        if (r->source_channel > 0) {
            float v = in[r->source_channel - 1] * g;
            for (int c = 0; c < kch; c++) o[c] += v;
        } else if (kch == 1 && sch > 1) {
            float sum = 0;
            for (int c = 0; c < sch; c++) sum += in[c];
            o[0] += sum / (float)sch * g;
        } else {
            for (int c = 0; c < kch; c++) o[c] += in[c % sch] * g;
        }
    }
    r->gain_now = g1;
}

/* An on-demand sink that nobody hears now: not mixed, not processed. */
static bool idle(const ae_sink *k)
{
    return k->on_demand && k->output.heard(k->output.self) <= 0;
}

/* A frame of an idle sink and its idle variants: its routes keep their
 * place in their sources (a capture route stays within a frame of the
 * newest audio, so a listener who connects hears now, not then) */
static void skip_frame(ae_sink *k)
{
    int fs = k->frame_samples;
    for (ae_route *r = k->routes; r; r = r->next_in_sink) {
        if (r->source->kind == AE_SOURCE_ALSA) {
            uint64_t w = atomic_load_explicit(&r->source->ring.wpos, memory_order_acquire);
            r->rpos += w - r->rpos < (uint64_t)fs ? w - r->rpos : (uint64_t)fs;
        } else if (r->source->net) {
            r->buffered = false;   /* buffers again from the newest audio when heard */
        } else {
            r->gen_pos += (uint64_t)fs;
        }
        r->gain_now = r->gain_target;
    }
    k->frames++;
    for (ae_sink *v = k->variants; v; v = v->next_variant) v->frames++;
}

static void produce_frame(ae_sink *k, ae_route *clock, int64_t frame_time_us)
{
    int fs = k->frame_samples, kch = k->channels;
    bool heard = !idle(k);
    for (ae_sink *v = k->variants; v && !heard; v = v->next_variant) heard = !idle(v);
    if (!heard) {
        skip_frame(k);
        return;
    }
    memset(k->mix, 0, (size_t)fs * (size_t)kch * sizeof(float));
    if (clock) frame_time_us = ae_ring_time_of(&clock->source->ring, clock->rpos,
                                               k->graph->rate);
    for (ae_route *r = k->routes; r; r = r->next_in_sink) {
        int got = pull(r, k->tmp, fs, frame_time_us, r == clock);
        if (got < fs && r->source->kind == AE_SOURCE_ALSA) k->underruns++;
        mix_in(r, k->tmp, k->mix, fs, kch);
    }
    for (int i = 0; i < fs * kch; i++) {
        float v = k->mix[i];
        /* NaN (a float file can hold it) is silence: it would stay in
         * every filter and encoder state after it */
        k->mix[i] = v > 1.0f ? 1.0f : v < -1.0f ? -1.0f : v == v ? v : 0.0f;
    }
    if (k->delay.data) {
        /* what goes out now was captured that much earlier */
        ae_delay_process(&k->delay, k->mix, fs);
        frame_time_us -= (int64_t)k->delay.delay_frames * 1000000 / k->graph->rate;
    }
    ae_levels_add(&k->levels, k->mix, fs);
    uint64_t index = k->frames++;
    if (k->kind == AE_SINK_OPUS) {
        k->output.frame(k->output.self, k->mix, index, frame_time_us);
    } else {
        ae_ring_write(&k->out_ring, k->mix, (uint64_t)fs, frame_time_us);
    }
    /* each variant: the parent's frame, processed once, encoded once */
    for (ae_sink *v = k->variants; v; v = v->next_variant) {
        if (idle(v)) {
            v->frames++;
            continue;
        }
        ae_variant_process(v->variant, k->mix, kch, v->mix, fs);
        ae_levels_add(&v->levels, v->mix, fs);
        v->output.frame(v->output.self, v->mix, v->frames++, frame_time_us);
    }
}

static ae_route *clock_route(ae_sink *k)
{
    for (ae_route *r = k->routes; r; r = r->next_in_sink)
        if (r->source->kind == AE_SOURCE_ALSA) return r;
    return NULL;
}

static void *mixer_main(void *arg)
{
    ae_graph *e = arg;
    while (!atomic_load(&e->stopping)) {
        int64_t now = ae_now_us();
        int64_t wake = now + 100000;
        pthread_mutex_lock(&e->lock);
        for (ae_sink *k = e->sinks; k; k = k->next) {
            if (k->parent) continue;   /* a variant runs with its parent's frame */
            ae_route *clock = clock_route(k);
            if (clock) {
                k->next_due_us = 0;
                for (int guard = 0; guard < 32; guard++) {
                    uint64_t w = atomic_load_explicit(&clock->source->ring.wpos,
                                                      memory_order_acquire);
                    if (w - clock->rpos < (uint64_t)k->frame_samples) break;
                    produce_frame(k, clock, 0);
                }
                continue;
            }
            /* on a grid of its frame length: sinks of one frame length are
             * due together, one wake for all of them, however many */
            if (!k->next_due_us) k->next_due_us = (now / k->frame_us + 1) * k->frame_us;
            while (now >= k->next_due_us) {
                produce_frame(k, NULL, k->next_due_us - k->frame_us);
                k->next_due_us += k->frame_us;
                if (now - k->next_due_us > 100000)
                    k->next_due_us = (now / k->frame_us + 1) * k->frame_us;
            }
            if (k->next_due_us < wake) wake = k->next_due_us;
        }
        pthread_mutex_unlock(&e->lock);
        struct timespec ts = {.tv_sec = wake / 1000000, .tv_nsec = (wake % 1000000) * 1000};
        while (sem_clockwait(&e->wake, CLOCK_MONOTONIC, &ts) != 0 && errno == EINTR) {
        }
    }
    ae_thread_exiting();
    return NULL;
}

/* ---- the graph ----------------------------------------------------------- */

void ae_graph_init(ae_graph *g, int rate, int rt_priority, ae_events *events)
{
    memset(g, 0, sizeof *g);
    g->rate = rate;
    g->rt_priority = rt_priority;
    g->events = events;
    pthread_mutex_init(&g->lock, NULL);
    sem_init(&g->wake, 0, 0);
}

int ae_graph_start(ae_graph *g)
{
    int rc = ae_thread_start(&g->mixer_thread, "ae-mixer", mixer_main, g, g->rt_priority);
    g->mixer_started = rc == AE_OK;
    return rc;
}

void ae_graph_stop(ae_graph *g)
{
    atomic_store(&g->stopping, true);
    if (g->mixer_started) {
        ae_graph_wake(g);
        pthread_join(g->mixer_thread, NULL);
        g->mixer_started = false;
    }
}

void ae_graph_destroy(ae_graph *g)
{
    pthread_mutex_destroy(&g->lock);
    sem_destroy(&g->wake);
}

void ae_graph_wake(ae_graph *g) { sem_post(&g->wake); }
