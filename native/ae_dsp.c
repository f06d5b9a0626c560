/* ae_dsp.c: the alignment delay line and the hearing variants.
 *
 * Clear speech, in this order, both ears linked:
 *   high-pass 200 Hz (4th-order Butterworth: two biquads; rumble, handling
 *   and HVAC noise carry no speech), presence lift +6 dB around 2.8 kHz
 *   (consonants), low-pass 7.5 kHz (hiss above the speech band);
 *   compressor: threshold -26 dBFS, ratio 3:1, attack 5 ms, release 150 ms,
 *   then +10 dB of make-up gain (quiet talkers come up);
 *   limiter: ceiling -1 dBFS, instant attack, 50 ms release, so the louder
 *   stream never clips however loud the input.
 * Biquads after the RBJ audio EQ cookbook. */
#define _GNU_SOURCE
#include "ae_dsp.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* ---- the delay line ------------------------------------------------------ */

int ae_delay_init(ae_delay *d, int channels, int delay_frames)
{
    memset(d, 0, sizeof *d);
    if (delay_frames <= 0 || channels < 1 || channels > AE_MAX_CHANNELS)
        return ae_fail(AE_ERR_INVALID, "a delay line needs frames > 0 and 1..%d channels",
                       AE_MAX_CHANNELS);
    uint64_t cap = 1024;
    while (cap <= (uint64_t)delay_frames) cap <<= 1;
    d->data = calloc(cap * (uint64_t)channels, sizeof(float));
    if (!d->data) return ae_fail(AE_ERR_NOMEM, "out of memory");
    d->capacity = cap;
    d->channels = channels;
    d->delay_frames = delay_frames;
    return AE_OK;
}

void ae_delay_free(ae_delay *d)
{
    free(d->data);
    memset(d, 0, sizeof *d);
}

void ae_delay_process(ae_delay *d, float *buf, int frames)
{
    int ch = d->channels;
    uint64_t mask = d->capacity - 1;
    for (int i = 0; i < frames; i++) {
        uint64_t w = d->wpos + (uint64_t)i;
        float *in = &d->data[(w & mask) * (uint64_t)ch];
        const float *old = &d->data[((w - (uint64_t)d->delay_frames) & mask) * (uint64_t)ch];
        /* the slot written is never the one read: capacity > delay_frames */
        for (int c = 0; c < ch; c++) {
            in[c] = buf[i * ch + c];
            buf[i * ch + c] = old[c];
        }
    }
    d->wpos += (uint64_t)frames;
}

/* ---- biquads --------------------------------------------------------------- */

enum { BQ_HIGHPASS, BQ_LOWPASS, BQ_PEAK };

static void biquad_set(ae_biquad *q, int type, double hz, double qf, double gain_db, int rate)
{
    double w0 = 2.0 * M_PI * hz / rate, c = cos(w0), alpha = sin(w0) / (2.0 * qf);
    double b0, b1, b2, a0, a1, a2;
    switch (type) {
    case BQ_HIGHPASS:
        b0 = (1 + c) / 2, b1 = -(1 + c), b2 = (1 + c) / 2;
        a0 = 1 + alpha, a1 = -2 * c, a2 = 1 - alpha;
        break;
    case BQ_LOWPASS:
        b0 = (1 - c) / 2, b1 = 1 - c, b2 = (1 - c) / 2;
        a0 = 1 + alpha, a1 = -2 * c, a2 = 1 - alpha;
        break;
    default: {
        double A = pow(10.0, gain_db / 40.0);
        b0 = 1 + alpha * A, b1 = -2 * c, b2 = 1 - alpha * A;
        a0 = 1 + alpha / A, a1 = -2 * c, a2 = 1 - alpha / A;
    }
    }
    memset(q, 0, sizeof *q);
    q->b0 = b0 / a0, q->b1 = b1 / a0, q->b2 = b2 / a0, q->a1 = a1 / a0, q->a2 = a2 / a0;
}

static inline float biquad_run(ae_biquad *q, int c, float x)
{
    double y = q->b0 * x + q->z1[c];
    q->z1[c] = q->b1 * x - q->a1 * y + q->z2[c];
    q->z2[c] = q->b2 * x - q->a2 * y;
    return (float)y;
}

/* After a frame: state that decayed towards zero in silence is set to zero,
 * before it becomes denormal (slow on most CPUs). */
static void biquad_flush(ae_biquad *q)
{
    for (int c = 0; c < 2; c++) {
        if (fabs(q->z1[c]) < 1e-20) q->z1[c] = 0;
        if (fabs(q->z2[c]) < 1e-20) q->z2[c] = 0;
    }
}

/* ---- variants --------------------------------------------------------------- */

#define COMP_THRESHOLD_DB (-26.0f)
#define COMP_RATIO 3.0f
#define COMP_MAKEUP_DB 10.0f
#define LIMIT_CEILING 0.891f     /* -1 dBFS */
#define CONTROL_BLOCK 16         /* the compressor's gain is computed per 16 samples */

static float coef(double ms, int rate) { return (float)(1.0 - exp(-1000.0 / (ms * rate))); }

int ae_variant_init(ae_variant *v, const ae_variant_config *cfg, int rate)
{
    memset(v, 0, sizeof *v);
    if (!cfg) return ae_fail(AE_ERR_INVALID, "a variant needs its config");
    if (!AE_IN_RANGE(cfg->balance, AE_VARIANT_BALANCE))
        return ae_fail(AE_ERR_INVALID, "balance must be %d..%d, not %d", AE_VARIANT_BALANCE_MIN,
                       AE_VARIANT_BALANCE_MAX, cfg->balance);
    v->mono = cfg->mono != 0;
    v->clear = cfg->clear_speech != 0;
    v->gain_l = cfg->balance > 0 ? 1.0f - (float)cfg->balance / 100.0f : 1.0f;
    v->gain_r = cfg->balance < 0 ? 1.0f + (float)cfg->balance / 100.0f : 1.0f;
    biquad_set(&v->eq[0], BQ_HIGHPASS, 200.0, 0.5412, 0, rate);
    biquad_set(&v->eq[1], BQ_HIGHPASS, 200.0, 1.3066, 0, rate);
    biquad_set(&v->eq[2], BQ_PEAK, 2800.0, 0.8, 6.0, rate);
    biquad_set(&v->eq[3], BQ_LOWPASS, 7500.0, 0.7071, 0, rate);
    v->att = coef(5.0, rate);
    v->rel = coef(150.0, rate);
    v->comp_gain = powf(10.0f, COMP_MAKEUP_DB / 20.0f);
    v->lim_gain = 1.0f;
    v->lim_rel = coef(50.0, rate);
    return AE_OK;
}

/* The compressor's gain (linear, make-up included) for an envelope. */
static float comp_target(float env)
{
    float db = 20.0f * log10f(env > 1e-9f ? env : 1e-9f);
    float over = db - COMP_THRESHOLD_DB;
    float gain_db = COMP_MAKEUP_DB - (over > 0 ? over * (1.0f - 1.0f / COMP_RATIO) : 0);
    return powf(10.0f, gain_db / 20.0f);
}

static void clear_speech(ae_variant *v, float *out, int frames)
{
    float target = v->comp_gain, step = 0;
    for (int i = 0; i < frames; i++) {
        float l = out[2 * i], r = out[2 * i + 1];
        for (int b = 0; b < AE_CLEAR_BIQUADS; b++) {
            l = biquad_run(&v->eq[b], 0, l);
            r = biquad_run(&v->eq[b], 1, r);
        }
        float a = fmaxf(fabsf(l), fabsf(r));
        v->env += (a > v->env ? v->att : v->rel) * (a - v->env);
        if (i % CONTROL_BLOCK == 0) {   /* glide to the new gain over the block */
            target = comp_target(v->env);
            step = (target - v->comp_gain) / CONTROL_BLOCK;
        }
        v->comp_gain += step;
        l *= v->comp_gain;
        r *= v->comp_gain;
        /* limiter: never above the ceiling, whatever came before */
        float peak = fmaxf(fabsf(l), fabsf(r)) * v->lim_gain;
        if (peak > LIMIT_CEILING) v->lim_gain *= LIMIT_CEILING / peak;
        l *= v->lim_gain;
        r *= v->lim_gain;
        v->lim_gain += v->lim_rel * (1.0f - v->lim_gain);
        out[2 * i] = l;
        out[2 * i + 1] = r;
    }
    v->comp_gain = target;
    for (int b = 0; b < AE_CLEAR_BIQUADS; b++) biquad_flush(&v->eq[b]);
    if (v->env < 1e-20f) v->env = 0;
}

void ae_variant_process(ae_variant *v, const float *in, int in_channels, float *out, int frames)
{
    for (int i = 0; i < frames; i++) {
        float l, r;
        if (in_channels == 1) {
            l = r = in[i];
        } else {
            l = in[i * in_channels];
            r = in[i * in_channels + 1];
            if (v->mono) l = r = 0.5f * (l + r);
        }
        out[2 * i] = l;
        out[2 * i + 1] = r;
    }
    if (v->clear) clear_speech(v, out, frames);
    for (int i = 0; i < frames; i++) {
        out[2 * i] *= v->gain_l;
        out[2 * i + 1] *= v->gain_r;
    }
}
