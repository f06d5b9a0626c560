/* ae_stun.h: ICE-lite for the lean transport, with libnice's STUN library: a
 * listener's ICE credentials, the Binding requests that check and nominate
 * the peer's addresses and keep its consent (RFC 7675), and which of those
 * paths media may use. The tables of listeners and addresses are the
 * caller's; this module only judges and answers. */
#ifndef AE_STUN_H
#define AE_STUN_H

#include "ae_core.h"

#include <netinet/in.h>
#include <stun/stunagent.h>
#include <sys/socket.h>

/* ---- a peer's addresses ---- */

typedef struct ae_addr_key {
    uint16_t family, port;     /* port in network order */
    uint8_t ip[16];
} ae_addr_key;

/* false (and a zeroed key) for a family other than IPv4 and IPv6 */
bool ae_addr_key_of(const struct sockaddr_storage *sa, ae_addr_key *k);

/* An address of the peer that passed ICE, and the socket it came in on. */
typedef struct ae_path {
    ae_addr_key key;
    union {                              /* 28 bytes where sockaddr_storage takes 128: */
        struct sockaddr_in in4;          /* nine of these a listener */
        struct sockaddr_in6 in6;
    } sa;
    socklen_t len;
    int fd;
    int64_t consent_us;                  /* its last valid Binding request */
    int64_t proof_us;                    /* its last SRTCP that libsrtp authenticated, or 0 */
    bool nominated;                      /* a request from it carried USE-CANDIDATE */
} ae_path;

/* When the peer was last heard from on a path: a Binding request, or SRTCP
 * that libsrtp authenticated. */
int64_t ae_path_heard_us(const ae_path *a);
/* Of a full table, the path to forget for a new one (never media). */
int ae_paths_to_drop(const ae_path *paths, int n, int media);
/* Where media on paths[media] may move to now, or -1 (it stays). */
int ae_paths_move_to(const ae_path *paths, int n, int media, int64_t now, int64_t quiet_us);

/* ---- credentials ---- */

/* Lengths of ours: 12 and 24 of 62 characters, 71 and 142 bits (RFC 8445
 * section 5.3 asks for at least 24 and 128). */
#define AE_ICE_UFRAG_LEN 12
#define AE_ICE_PWD_LEN 24

/* n random letters and digits and a NUL into out (n + 1 bytes). */
void ae_ice_text(char *out, size_t n);

typedef struct ae_ice_creds {
    char ufrag[16], pwd[32];             /* ours */
    char remote_ufrag[257];              /* the offer's, "" = any */
} ae_ice_creds;

/* A fresh ufrag and password of ours, and the offer's ufrag. */
void ae_ice_creds_make(ae_ice_creds *c, const char *remote_ufrag);

/* ---- Binding requests ---- */

typedef struct ae_stun {
    StunAgent agent;
    uint64_t tie;
} ae_stun;

void ae_stun_init(ae_stun *s);

/* The listener our ufrag names, and its credentials; NULL if none (or it
 * has ended). */
typedef void *(*ae_stun_lookup)(void *arg, const char *ufrag, const ae_ice_creds **creds);

typedef enum {
    AE_STUN_REJECTED,   /* not a Binding request for a listener of ours (to be counted) */
    AE_STUN_REFUSED,    /* a listener's, but the reply is not a success */
    AE_STUN_PASSED,     /* answered: the path passed ICE for *peer */
} ae_stun_result;

/* One STUN datagram from `from` on fd: checked against the credentials of
 * the listener its USERNAME names, and answered on fd. *peer gets the
 * listener (lookup's), *use_candidate whether the request nominated. */
ae_stun_result ae_stun_answer(ae_stun *s, int fd, const uint8_t *buf, size_t len,
                              const struct sockaddr_storage *from, socklen_t fromlen,
                              ae_stun_lookup lookup, void *arg, void **peer, bool *use_candidate);

#endif
