/* ae_dsp.h: what a sink may do to its mix besides mixing: the alignment
 * delay line, and the hearing variants (mono, clear speech, balance) a
 * variant sink derives from its parent's mix. Pure arithmetic on interleaved
 * float frames: memory is taken at init (control threads), never while
 * processing (the mixer thread). Sits on ae_core only. */
#ifndef AE_DSP_H
#define AE_DSP_H

#include "ae_core.h"

/* ---- the alignment delay ---- */

typedef struct ae_delay {
    float *data;                 /* interleaved; NULL = no delay */
    uint64_t capacity;           /* frames, a power of two above delay_frames */
    uint64_t wpos;               /* frames ever written */
    int channels;
    int delay_frames;
} ae_delay;

/* A zeroed line of delay_frames (> 0): the first delay_frames out are silence. */
int ae_delay_init(ae_delay *d, int channels, int delay_frames);
void ae_delay_free(ae_delay *d);
/* In place: buf (frames x channels) becomes what came in delay_frames earlier. */
void ae_delay_process(ae_delay *d, float *buf, int frames);

/* ---- hearing variants ---- */

typedef struct ae_biquad {
    double b0, b1, b2, a1, a2;   /* normalised: a0 = 1 */
    double z1[2], z2[2];         /* transposed direct form II, per channel */
} ae_biquad;

#define AE_CLEAR_BIQUADS 4

typedef struct ae_variant {
    bool mono, clear;
    float gain_l, gain_r;        /* balance */
    /* clear speech: two high-passes (4th-order Butterworth at 200 Hz), a
     * presence lift, a low-pass; then a compressor and a limiter */
    ae_biquad eq[AE_CLEAR_BIQUADS];
    float env;                   /* compressor's peak envelope (linear) */
    float att, rel;              /* its smoothing coefficients per sample */
    float comp_gain;             /* linear, applied; moves to its target per block */
    float lim_gain, lim_rel;     /* limiter: gain (linear) and its release per sample */
} ae_variant;

/* Checks the config (balance -100..100) and sets up the filters for rate. */
int ae_variant_init(ae_variant *v, const ae_variant_config *cfg, int rate);
/* in: frames of in_channels (1 or 2); out: frames of 2 channels. */
void ae_variant_process(ae_variant *v, const float *in, int in_channels, float *out, int frames);

#endif
