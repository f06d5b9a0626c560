/* drift_sim.c: the network sources' drift steering over a simulated hour.
 *
 * The real receiver (native/ae_netsrc.c: its RTP path, jitter buffer and
 * libspeexdsp resampler steered by the buffer) takes L24 packets from a
 * sender whose clock runs PPM fast or slow. No clock is waited for: time is
 * the packets' own. The sender's packet k leaves at box time
 * k * ptime / (1 + ppm); the mixer, reading at the box's 48 kHz, has read
 * that time's frames when the packet is taken (lockstep: one packet in
 * flight), from when the receiver first had its target buffered, as the
 * graph's reader starts. What the receiver keeps ahead of that reader is the latency it
 * adds; printed once per simulated minute, with its spread after the first
 * minute, underruns (the reader past the newest frame) and overruns (more
 * than a second ahead).
 *
 *   drift_sim PPM SECONDS PTIME_MS LATENCY_MS PORT */
#define _GNU_SOURCE
#include "ae_netsrc.h"

#include <arpa/inet.h>
#include <math.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define RATE 48000

static int64_t written;          /* frames the receiver wrote */
static double box_time_s;        /* when the packet being taken left the sender, box clock */

static void on_write(void *ctx, const float *frames, int n, int64_t arrival_us)
{
    (void)ctx, (void)frames, (void)arrival_us;
    written += n;
}

static int64_t target_frames;     /* what the receiver keeps ahead */
static bool reading;             /* the mixer reads once that much is there, as the graph's reader */
static int64_t read_origin;
static double read_origin_s;

static int64_t on_buffered(void *ctx)
{
    (void)ctx;
    if (!reading && written >= target_frames) {
        reading = true;
        read_origin = written - target_frames;
        read_origin_s = box_time_s;
    }
    if (!reading) return -1;   /* nobody reads yet */
    return written - (read_origin + (int64_t)floor((box_time_s - read_origin_s) * RATE));
}

static void on_state(void *ctx, bool receiving, const char *why)
{
    (void)ctx, (void)receiving, (void)why;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: drift_sim PPM SECONDS PTIME_MS LATENCY_MS PORT\n");
        return 2;
    }
    double ppm = atof(argv[1]), seconds = atof(argv[2]), ptime_ms = atof(argv[3]);
    int latency_ms = atoi(argv[4]), port = atoi(argv[5]);
    int frames = (int)(RATE * ptime_ms / 1000.0);
    ae_source_config cfg = {.kind = AE_SOURCE_RTP, .address = "127.0.0.1", .port = port,
                            .allow_from = "127.0.0.1", .latency_ms = latency_ms,
                            .rtp_encoding = AE_RTP_L24, .payload_type = 96,
                            .clock_rate = RATE, .stream_channels = 2, .channels = 2};
    ae_netsrc *n = NULL;
    ae_netsrc_io io = {.ctx = NULL, .write = on_write, .buffered = on_buffered,
                       .state = on_state};
    if (ae_netsrc_open(&cfg, RATE, 2, 0, io, &n) != AE_OK) {
        fprintf(stderr, "cannot open the receiver: %s\n", ae_last_error());
        return 1;
    }
    target_frames = ae_netsrc_target_frames(n);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    inet_pton(AF_INET, "127.0.0.1", &to.sin_addr);
    unsigned char pkt[12 + 2 * 3 * 4800];
    memset(pkt, 0, sizeof pkt);   /* silence: the steering needs no signal */
    pkt[0] = 0x80;
    pkt[1] = 96;
    long packets = (long)(seconds * 1000.0 / ptime_ms);
    double lo = 1e9, hi = -1e9, start_ms = 0;
    long underruns = 0, overruns = 0;
    ae_net_source_stats stats = {0};
    for (long k = 0; k < packets; k++) {
        box_time_s = (double)k * ptime_ms / 1000.0 / (1.0 + ppm * 1e-6);
        uint16_t seq = (uint16_t)k;
        uint32_t ts = (uint32_t)(k * frames);
        pkt[2] = (unsigned char)(seq >> 8), pkt[3] = (unsigned char)seq;
        pkt[4] = (unsigned char)(ts >> 24), pkt[5] = (unsigned char)(ts >> 16);
        pkt[6] = (unsigned char)(ts >> 8), pkt[7] = (unsigned char)ts;
        pkt[8] = 0x12, pkt[11] = 0x34;
        sendto(fd, pkt, 12 + (size_t)frames * 6, 0, (struct sockaddr *)&to, sizeof to);
        /* lockstep: wait until the receiver has taken it (counted), a
         * little spinning, then short sleeps, at most a second */
        for (long spin = 0;; spin++) {
            ae_netsrc_stats(n, &stats);
            if ((long)stats.packets > k) break;
            if (spin > 100000) {
                fprintf(stderr, "packet %ld was not taken\n", k);
                return 1;
            }
            if (spin > 100) usleep(10);
            else sched_yield();
        }
        target_frames = ae_netsrc_target_frames(n);   /* two packets at least */
        int64_t ahead = on_buffered(NULL);
        double buffered_ms = (double)ahead * 1000.0 / RATE;
        if (reading && ahead < 0) underruns++;
        if (buffered_ms > 1000) overruns++;
        double t = box_time_s;
        if (t >= 60.0) {
            if (start_ms == 0) start_ms = buffered_ms;
            if (buffered_ms < lo) lo = buffered_ms;
            if (buffered_ms > hi) hi = buffered_ms;
        }
        if (k % (long)(60000.0 / ptime_ms) == 0) {
            ae_netsrc_stats(n, &stats);
            printf("minute %3.0f  buffered %6.2f ms  correction %+7.1f ppm\n", t / 60.0,
                   buffered_ms, stats.correction_ppm);
            fflush(stdout);
        }
    }
    ae_netsrc_stats(n, &stats);
    printf("RESULT ppm %+.0f hours %.2f ptime %.0f ms: after the first minute the buffer "
           "held %.2f..%.2f ms (start %.2f, drift %+.2f..%+.2f ms); underruns %ld, overruns %ld; "
           "lost %llu, late %llu\n",
           ppm, seconds / 3600.0, ptime_ms, lo, hi, start_ms, lo - start_ms, hi - start_ms,
           underruns, overruns, (unsigned long long)stats.lost, (unsigned long long)stats.late);
    ae_netsrc_close(n);
    close(fd);
    return 0;
}
