/* ae_alsa.c: one ALSA PCM, opened through alsa-lib, moving float periods.
 *
 * Pacing: a hardware PCM blocks until a period is ready, so it paces us.
 * Plugin PCMs without a clock (file, null) return at once; we notice that
 * (more frames than real time plus one buffer could explain) and from then on
 * pace from the monotonic clock, so simulated capture runs in real time. */
#define _GNU_SOURCE
#include "ae_alsa.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* In order of preference: what I2S HATs deliver natively first, so no
 * plugin converts on the audio path. */
static const snd_pcm_format_t formats[] = {
    SND_PCM_FORMAT_S32_LE, SND_PCM_FORMAT_S16_LE, SND_PCM_FORMAT_S24_3LE,
    SND_PCM_FORMAT_FLOAT_LE,
};

static int setup(ae_pcm *p, int period_frames, int buffer_periods)
{
    snd_pcm_hw_params_t *hw;
    snd_pcm_hw_params_alloca(&hw);
    int rc = snd_pcm_hw_params_any(p->pcm, hw);
    if (rc < 0) return ae_fail(AE_ERR_DEVICE, "%s: no usable configuration: %s", p->device,
                               snd_strerror(rc));
    if ((rc = snd_pcm_hw_params_set_access(p->pcm, hw, SND_PCM_ACCESS_RW_INTERLEAVED)) < 0)
        return ae_fail(AE_ERR_DEVICE, "%s: interleaved access refused: %s", p->device,
                       snd_strerror(rc));
    p->format = SND_PCM_FORMAT_UNKNOWN;
    for (size_t i = 0; i < sizeof formats / sizeof *formats; i++) {
        if (snd_pcm_hw_params_test_format(p->pcm, hw, formats[i]) == 0) {
            p->format = formats[i];
            break;
        }
    }
    if (p->format == SND_PCM_FORMAT_UNKNOWN ||
        snd_pcm_hw_params_set_format(p->pcm, hw, p->format) < 0)
        return ae_fail(AE_ERR_DEVICE, "%s: no supported sample format (S32, S16, S24, float)",
                       p->device);
    if ((rc = snd_pcm_hw_params_set_channels(p->pcm, hw, (unsigned)p->channels)) < 0)
        return ae_fail(AE_ERR_DEVICE, "%s: %d channels refused: %s (try plughw:)", p->device,
                       p->channels, snd_strerror(rc));
    unsigned rate = (unsigned)p->rate;
    if ((rc = snd_pcm_hw_params_set_rate(p->pcm, hw, rate, 0)) < 0)
        return ae_fail(AE_ERR_DEVICE, "%s: %u Hz refused: %s (try plughw:)", p->device, rate,
                       snd_strerror(rc));
    snd_pcm_uframes_t period = (snd_pcm_uframes_t)period_frames;
    int dir = 0;
    snd_pcm_hw_params_set_period_size_near(p->pcm, hw, &period, &dir);
    snd_pcm_uframes_t buffer = period * (snd_pcm_uframes_t)buffer_periods;
    snd_pcm_hw_params_set_buffer_size_near(p->pcm, hw, &buffer);
    if ((rc = snd_pcm_hw_params(p->pcm, hw)) < 0)
        return ae_fail(AE_ERR_DEVICE, "%s: configuration refused: %s", p->device,
                       snd_strerror(rc));
    snd_pcm_hw_params_get_period_size(hw, &p->period, &dir);
    snd_pcm_hw_params_get_buffer_size(hw, &p->buffer);

    snd_pcm_sw_params_t *sw;
    snd_pcm_sw_params_alloca(&sw);
    snd_pcm_sw_params_current(p->pcm, sw);
    snd_pcm_sw_params_set_avail_min(p->pcm, sw, p->period);
    /* Playback starts once one period is queued: the least delay. */
    snd_pcm_sw_params_set_start_threshold(p->pcm, sw,
                                          p->stream == SND_PCM_STREAM_PLAYBACK ? p->period : 1);
    if ((rc = snd_pcm_sw_params(p->pcm, sw)) < 0)
        return ae_fail(AE_ERR_DEVICE, "%s: software parameters refused: %s", p->device,
                       snd_strerror(rc));
    p->raw = calloc(p->period * (size_t)p->channels, 4);
    if (!p->raw) return ae_fail(AE_ERR_NOMEM, "out of memory");
    return AE_OK;
}

int ae_pcm_open(ae_pcm *p, const char *device, snd_pcm_stream_t stream, int rate,
                int channels, int period_frames, int buffer_periods)
{
    memset(p, 0, sizeof *p);
    p->device = strdup(device);
    p->stream = stream;
    p->rate = rate;
    p->channels = channels;
    int rc = snd_pcm_open(&p->pcm, device, stream, SND_PCM_NONBLOCK);
    if (rc < 0) {
        int code = ae_fail(AE_ERR_DEVICE, "cannot open ALSA %s device '%s': %s",
                           stream == SND_PCM_STREAM_CAPTURE ? "capture" : "playback", device,
                           snd_strerror(rc));
        free(p->device);
        p->device = NULL;
        p->pcm = NULL;
        return code;
    }
    rc = setup(p, period_frames, buffer_periods);
    if (rc == AE_OK && (rc = snd_pcm_prepare(p->pcm)) < 0)
        rc = ae_fail(AE_ERR_DEVICE, "%s: prepare failed: %s", device, snd_strerror(rc));
    if (rc == AE_OK && stream == SND_PCM_STREAM_CAPTURE && (rc = snd_pcm_start(p->pcm)) < 0)
        rc = ae_fail(AE_ERR_DEVICE, "%s: start failed: %s", device, snd_strerror(rc));
    if (rc != AE_OK) {
        ae_pcm_close(p);
        return rc;
    }
    p->t0_us = ae_now_us();
    return AE_OK;
}

void ae_pcm_close(ae_pcm *p)
{
    if (p->pcm) {
        snd_pcm_drop(p->pcm);
        snd_pcm_close(p->pcm);
    }
    free(p->raw);
    free(p->device);
    memset(p, 0, sizeof *p);
}

static void to_float(const ae_pcm *p, const void *raw, float *out, size_t n)
{
    switch (p->format) {
    case SND_PCM_FORMAT_FLOAT_LE: memcpy(out, raw, n * sizeof(float)); break;
    case SND_PCM_FORMAT_S32_LE:
        for (size_t i = 0; i < n; i++) out[i] = (float)(((const int32_t *)raw)[i] / 2147483648.0);
        break;
    case SND_PCM_FORMAT_S16_LE:
        for (size_t i = 0; i < n; i++) out[i] = ((const int16_t *)raw)[i] / 32768.0f;
        break;
    default: { /* S24_3LE */
        const uint8_t *b = raw;
        for (size_t i = 0; i < n; i++) {
            int32_t v = (int32_t)((uint32_t)b[3 * i] << 8 | (uint32_t)b[3 * i + 1] << 16 |
                                  (uint32_t)b[3 * i + 2] << 24);
            out[i] = (float)(v / 2147483648.0);
        }
    }
    }
}

static float clip(float v) { return v > 1.0f ? 1.0f : v < -1.0f ? -1.0f : v; }

static void from_float(const ae_pcm *p, const float *in, void *raw, size_t n)
{
    switch (p->format) {
    case SND_PCM_FORMAT_FLOAT_LE: memcpy(raw, in, n * sizeof(float)); break;
    case SND_PCM_FORMAT_S32_LE:
        for (size_t i = 0; i < n; i++)
            ((int32_t *)raw)[i] = (int32_t)(clip(in[i]) * 2147483392.0f);
        break;
    case SND_PCM_FORMAT_S16_LE:
        for (size_t i = 0; i < n; i++) ((int16_t *)raw)[i] = (int16_t)(clip(in[i]) * 32767.0f);
        break;
    default: {
        uint8_t *b = raw;
        for (size_t i = 0; i < n; i++) {
            int32_t v = (int32_t)(clip(in[i]) * 8388607.0f);
            b[3 * i] = (uint8_t)(v & 0xff);
            b[3 * i + 1] = (uint8_t)((v >> 8) & 0xff);
            b[3 * i + 2] = (uint8_t)((v >> 16) & 0xff);
        }
    }
    }
}

/* Called after each period moved: detect a PCM without a clock and, once
 * detected, hold us to real time. */
static void pace(ae_pcm *p)
{
    p->frames_done += p->period;
    int64_t now = ae_now_us();
    int64_t due = p->t0_us + (int64_t)(p->frames_done * 1000000 / (uint64_t)p->rate);
    if (!p->unpaced) {
        int64_t slack = (int64_t)((p->buffer + 2 * p->period) * 1000000 / (uint64_t)p->rate);
        if (due - now > slack) p->unpaced = true;
    }
    if (p->unpaced && due > now) ae_sleep_until_us(due);
}

static int recover(ae_pcm *p, int err)
{
    if (err == -EPIPE || err == -ESTRPIPE) {
        int rc = snd_pcm_recover(p->pcm, err, 1);
        if (rc < 0) return rc;
        if (p->stream == SND_PCM_STREAM_CAPTURE) snd_pcm_start(p->pcm);
        return -EPIPE;
    }
    return err;
}

static int wait_ready(ae_pcm *p, int timeout_ms)
{
    int rc = snd_pcm_wait(p->pcm, timeout_ms);
    if (rc == 0) return 0;
    if (rc < 0) return recover(p, rc);
    return 1;
}

int ae_pcm_read_period(ae_pcm *p, float *out, int timeout_ms)
{
    int ready = wait_ready(p, timeout_ms);
    if (ready <= 0) return ready;
    snd_pcm_sframes_t n = snd_pcm_readi(p->pcm, p->raw, p->period);
    if (n == -EAGAIN) return 0;
    if (n < 0) return recover(p, (int)n);
    if ((snd_pcm_uframes_t)n < p->period) {
        /* Short read: complete the period so the caller's clock stays even. */
        size_t have = (size_t)n;
        while (have < p->period) {
            if (snd_pcm_wait(p->pcm, timeout_ms) <= 0) break;
            snd_pcm_sframes_t m = snd_pcm_readi(
                p->pcm, (char *)p->raw + have * (size_t)snd_pcm_frames_to_bytes(p->pcm, 1),
                p->period - have);
            if (m == -EAGAIN) continue;
            if (m < 0) return recover(p, (int)m);
            have += (size_t)m;
        }
        if (have < p->period) return 0;
    }
    to_float(p, p->raw, out, p->period * (size_t)p->channels);
    pace(p);
    return (int)p->period;
}

int ae_pcm_write_period(ae_pcm *p, const float *in, int timeout_ms)
{
    from_float(p, in, p->raw, p->period * (size_t)p->channels);
    size_t done = 0;
    while (done < p->period) {
        int ready = wait_ready(p, timeout_ms);
        if (ready <= 0) return ready;
        snd_pcm_sframes_t n = snd_pcm_writei(
            p->pcm, (char *)p->raw + done * (size_t)snd_pcm_frames_to_bytes(p->pcm, 1),
            p->period - done);
        if (n == -EAGAIN) continue;
        if (n < 0) return recover(p, (int)n);
        done += (size_t)n;
    }
    pace(p);
    return (int)p->period;
}
