/* ae_alsa.h: one ALSA PCM moving float periods (the devices' lowest layer). */
#ifndef AE_ALSA_H
#define AE_ALSA_H

#include "ae_core.h"

#include <alsa/asoundlib.h>

typedef struct ae_pcm {
    snd_pcm_t *pcm;
    char *device;
    snd_pcm_stream_t stream;
    int rate, channels;
    snd_pcm_uframes_t period, buffer;
    snd_pcm_format_t format;
    void *raw;                           /* one period in the device format */
    /* pacing: devices without a clock of their own are paced from the
     * monotonic clock */
    bool unpaced;
    int64_t t0_us;
    uint64_t frames_done;
} ae_pcm;

int ae_pcm_open(ae_pcm *p, const char *device, snd_pcm_stream_t stream, int rate,
                int channels, int period_frames, int buffer_periods);
void ae_pcm_close(ae_pcm *p);
/* Read or write one period of float samples. Returns frames moved, 0 on a
 * timeout, -EPIPE after a recovered xrun, or another negative errno when the
 * device is gone. */
int ae_pcm_read_period(ae_pcm *p, float *out, int timeout_ms);
int ae_pcm_write_period(ae_pcm *p, const float *in, int timeout_ms);

#endif
