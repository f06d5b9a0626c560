/* ae_stun.c: ICE-lite for the lean transport.
 *
 * The server is ICE-lite: the browser's Binding requests (USERNAME
 * "ourufrag:theirs", MESSAGE-INTEGRITY with our password) are answered and
 * bind its address to the listener; its periodic requests are its consent
 * (RFC 7675). libnice's STUN library checks and builds the messages: no STUN
 * integrity is written here. Which listener a ufrag names, and the table of
 * its addresses, are the caller's (ae_lean.c). */
#include "ae_stun.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <stun/usages/ice.h>

/* ---- a peer's addresses ------------------------------------------------- */

bool ae_addr_key_of(const struct sockaddr_storage *sa, ae_addr_key *k)
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

int64_t ae_path_heard_us(const ae_path *a)
{
    return a->consent_us > a->proof_us ? a->consent_us : a->proof_us;
}

/* When the table is full, the address heard from longest ago goes, one that
 * never proved itself with SRTCP first, the media path never. */
int ae_paths_to_drop(const ae_path *paths, int n, int media)
{
    int drop = -1;
    for (int i = 0; i < n; i++) {
        if (i == media) continue;
        const ae_path *a = &paths[i], *d = drop >= 0 ? &paths[drop] : NULL;
        if (!d || (!a->proof_us && d->proof_us) ||
            (!a->proof_us == !d->proof_us && ae_path_heard_us(a) < ae_path_heard_us(d)))
            drop = i;
    }
    return drop;
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
int ae_paths_move_to(const ae_path *paths, int n, int media, int64_t now, int64_t quiet_us)
{
    int64_t heard = ae_path_heard_us(&paths[media]);
    if (now - heard <= quiet_us) return -1;
    int best = -1;
    for (int i = 0; i < n; i++) {
        const ae_path *a = &paths[i];
        if (i == media || !a->nominated || a->proof_us <= heard ||
            now - a->proof_us > quiet_us || now - a->consent_us > quiet_us)
            continue;
        if (best < 0 || a->proof_us > paths[best].proof_us) best = i;
    }
    return best;
}

/* ---- credentials -------------------------------------------------------- */

/* Letters and digits only, a subset of RFC 8839's ice-char: '+' and '/' are
 * valid, but servers build patterns and paths from credentials (Debian's
 * simple-whip-server puts the offer's into a RegExp: "++" makes its ICE
 * restart answer 500, one '+' leaves the old credential in place).
 * Rejection sampling keeps each of the 62 equally likely. */
void ae_ice_text(char *out, size_t n)
{
    static const char chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    size_t filled = 0;
    while (filled < n) {
        unsigned char r[64];
        RAND_bytes(r, sizeof r);
        for (size_t i = 0; i < sizeof r && filled < n; i++)
            if (r[i] < 248) out[filled++] = chars[r[i] % 62];   /* 248 = 4 x 62 */
    }
    out[n] = '\0';
}

void ae_ice_creds_make(ae_ice_creds *c, const char *remote_ufrag)
{
    ae_ice_text(c->ufrag, AE_ICE_UFRAG_LEN);
    ae_ice_text(c->pwd, AE_ICE_PWD_LEN);
    snprintf(c->remote_ufrag, sizeof c->remote_ufrag, "%s", remote_ufrag);
}

/* ---- Binding requests --------------------------------------------------- */

void ae_stun_init(ae_stun *s)
{
    RAND_bytes((unsigned char *)&s->tie, sizeof s->tie);
    static const uint16_t known[] = {STUN_ATTRIBUTE_USERNAME, STUN_ATTRIBUTE_MESSAGE_INTEGRITY,
                                     STUN_ATTRIBUTE_FINGERPRINT, STUN_ATTRIBUTE_PRIORITY,
                                     STUN_ATTRIBUTE_USE_CANDIDATE, STUN_ATTRIBUTE_ICE_CONTROLLED,
                                     STUN_ATTRIBUTE_ICE_CONTROLLING, 0};
    stun_agent_init(&s->agent, known, STUN_COMPATIBILITY_RFC5389,
                    STUN_AGENT_USAGE_SHORT_TERM_CREDENTIALS | STUN_AGENT_USAGE_USE_FINGERPRINT);
}

/* What the validater is given, and what it found. */
typedef struct validation {
    ae_stun_lookup lookup;
    void *arg;
    void *peer;                          /* set by the validater */
} validation;

static bool validate_user(StunAgent *agent, StunMessage *msg, uint8_t *username,
                          uint16_t username_len, uint8_t **password, size_t *password_len,
                          void *data)
{
    (void)agent;
    (void)msg;
    validation *v = data;
    /* "ours:theirs" */
    const uint8_t *colon = memchr(username, ':', username_len);
    if (!colon) return false;
    size_t ours = (size_t)(colon - username);
    char key[16];
    if (ours == 0 || ours >= sizeof key) return false;
    memcpy(key, username, ours);
    key[ours] = '\0';
    const ae_ice_creds *c = NULL;
    void *p = v->lookup(v->arg, key, &c);
    if (!p) return false;
    size_t theirs = username_len - ours - 1;
    if (c->remote_ufrag[0] &&
        (theirs != strlen(c->remote_ufrag) || memcmp(colon + 1, c->remote_ufrag, theirs)))
        return false;
    *password = (uint8_t *)c->pwd;
    *password_len = strlen(c->pwd);
    v->peer = p;
    return true;
}

ae_stun_result ae_stun_answer(ae_stun *s, int fd, const uint8_t *buf, size_t len,
                              const struct sockaddr_storage *from, socklen_t fromlen,
                              ae_stun_lookup lookup, void *arg, void **peer, bool *use_candidate)
{
    StunMessage req;
    validation v = {.lookup = lookup, .arg = arg, .peer = NULL};
    *peer = NULL;
    *use_candidate = false;
    StunValidationStatus st = stun_agent_validate(&s->agent, &req, buf, len, validate_user, &v);
    if (st != STUN_VALIDATION_SUCCESS || !v.peer || stun_message_get_class(&req) != STUN_REQUEST ||
        stun_message_get_method(&req) != STUN_BINDING)
        return AE_STUN_REJECTED;
    *peer = v.peer;
    uint8_t out[512];
    size_t outlen = sizeof out;
    StunMessage resp;
    bool controlling = false; /* ICE-lite: always the controlled agent */
    StunUsageIceReturn r = stun_usage_ice_conncheck_create_reply(
        &s->agent, &req, &resp, out, &outlen, from, fromlen, &controlling, s->tie,
        STUN_USAGE_ICE_COMPATIBILITY_RFC5245);
    if (outlen) sendto(fd, out, outlen, MSG_DONTWAIT, (const struct sockaddr *)from, fromlen);
    if (r != STUN_USAGE_ICE_RETURN_SUCCESS) return AE_STUN_REFUSED;
    *use_candidate = stun_usage_ice_conncheck_use_candidate(&req);
    return AE_STUN_PASSED;
}
