/* ae_listener.c: the listener seam. ae_listener_create reads the offer once
 * and hands it to the lean transport (ae_lean.c) unless the offer needs
 * something only webrtcbin does (a data channel, ...) or a setting forces
 * one transport; the rest of the public listener calls dispatch to the one
 * that serves it. A publisher (ae_publisher_open) is a listener the other
 * way round, on a whip source, always lean. */
#define _GNU_SOURCE
#include "ae_internal.h"

#include <malloc.h>
#include <stddef.h>
#include <unistd.h>
#include <stdio.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

struct ae_listener {
    ae_engine *engine;
    ae_sink *sink;                       /* NULL for a publisher */
    ae_fanout *fanout;                   /* the sink's, NULL for a publisher */
    ae_listener *next;
    uint64_t id;                         /* names it in events */
    atomic_bool closing;                 /* set first when it is removed: mutes its events */
    int transport;                       /* AE_TRANSPORT_LEAN or AE_TRANSPORT_WEBRTCBIN */
    bool publication;                    /* WHIP out or a forward: not counted among the listeners */
    ae_lean_peer *lean;
    ae_wr *wr;
    ae_fwd *fwd;                         /* an RTP forward */
};

/* Which transport serves this offer: AE_TRANSPORT_LEAN, _WEBRTCBIN, or an
 * AE_ERR_SDP code when none that the setting allows can serve it. */
static int choose_transport(ae_engine *e, const ae_offer *o)
{
    const char *lean_no = e->lean ? ae_lean_declines(o) : "the lean transport is not running";
    const char *wr_no = ae_wr_declines(o);
    switch (e->cfg.transport) {
    case AE_TRANSPORT_WEBRTCBIN:
        if (wr_no) return ae_fail(AE_ERR_SDP, "the webrtcbin transport cannot serve this offer: %s", wr_no);
        return AE_TRANSPORT_WEBRTCBIN;
    case AE_TRANSPORT_LEAN:
        if (lean_no) return ae_fail(AE_ERR_SDP, "the lean transport cannot serve this offer: %s", lean_no);
        return AE_TRANSPORT_LEAN;
    default:
        if (!lean_no) return AE_TRANSPORT_LEAN;
        if (wr_no)
            return ae_fail(AE_ERR_SDP, "no transport can serve this offer: %s; and %s", lean_no, wr_no);
        g_printerr("ae: a listener goes to webrtcbin: %s\n", lean_no);
        return AE_TRANSPORT_WEBRTCBIN;
    }
}

static void link_listener(ae_engine *e, ae_listener *l)
{
    pthread_mutex_lock(&e->listeners_lock);
    l->next = e->listeners;
    e->listeners = l;
    pthread_mutex_unlock(&e->listeners_lock);
}

int ae_listener_create(ae_sink *k, const char *offer_sdp, ae_listener **out)
{
    return ae_listener_open(k, offer_sdp, out, NULL);
}

int ae_listener_open(ae_sink *k, const char *offer_sdp, ae_listener **out, char **answer_out)
{
    ae_clear_error();
    if (answer_out) *answer_out = NULL;
    if (!k || !out) return ae_fail(AE_ERR_INVALID, "sink and out are required");
    *out = NULL;
    ae_fanout *f = ae_fanout_of(k);
    if (!f) return ae_fail(AE_ERR_INVALID, "listeners need an Opus sink");
    ae_engine *e = f->env->owner;
    if (atomic_load(&e->graph.stopping)) return ae_fail(AE_ERR_CLOSED, "the engine is closing");
    ae_offer offer;
    int rc = ae_offer_parse(offer_sdp, &offer);
    if (rc != AE_OK) return rc;
    int transport = choose_transport(e, &offer);
    if (transport < 0) {
        ae_offer_clear(&offer);
        return transport;
    }
    if (atomic_fetch_add(&e->nlisteners, 1) >= e->cfg.max_listeners) {
        atomic_fetch_sub(&e->nlisteners, 1);
        ae_offer_clear(&offer);
        return ae_fail(AE_ERR_LIMIT, "%d listeners is the most this engine serves",
                       e->cfg.max_listeners);
    }
    ae_listener *l = calloc(1, sizeof *l);
    if (!l) {
        atomic_fetch_sub(&e->nlisteners, 1);
        ae_offer_clear(&offer);
        return ae_fail(AE_ERR_NOMEM, "out of memory");
    }
    l->engine = e;
    l->id = ae_new_id();
    l->sink = k;
    l->fanout = f;
    l->transport = transport;
    char *answer = NULL;
    if (transport == AE_TRANSPORT_LEAN)
        rc = ae_lean_peer_create(e->lean, k, l->id, &l->closing, &offer, &answer, &l->lean);
    else
        rc = ae_wr_create(&e->wr_env, k, f, l->id, offer_sdp, &offer, &l->wr);
    ae_offer_clear(&offer);
    if (rc != AE_OK) {
        atomic_fetch_sub(&e->nlisteners, 1);
        free(l);
        return rc;
    }
    if (l->lean) atomic_fetch_add(&f->lean_listeners, 1);
    else ae_fanout_heard(f, +1);   /* its pipeline branch takes packets from now on */
    atomic_fetch_add(&f->listeners, 1);
    link_listener(e, l);
    if (answer && answer_out) {
        /* ICE-lite: nothing to gather, the answer is ready now; handing it
         * back here spares the POST a round trip through the event thread */
        *answer_out = answer;
    } else if (answer) {
        ae_event ev = {0};
        ev.type = AE_EVENT_ANSWER_READY;
        ev.listener_id = l->id;
        ev.text = answer;
        ae_post_unless(&e->events, &ev, &l->closing);
        free(answer);
    }
    *out = l;
    return AE_OK;
}

int ae_publisher_open(ae_source *source, const char *offer_sdp, ae_listener **out,
                      char **answer_out)
{
    ae_clear_error();
    if (!source || !out || !answer_out) return ae_fail(AE_ERR_INVALID, "source, out and answer_out are required");
    *out = NULL;
    *answer_out = NULL;
    ae_engine *e = (ae_engine *)((char *)source->graph - offsetof(ae_engine, graph));
    if (atomic_load(&e->graph.stopping)) return ae_fail(AE_ERR_CLOSED, "the engine is closing");
    if (source->kind != AE_SOURCE_WHIP) return ae_fail(AE_ERR_INVALID, "only a whip source takes publishers");
    if (!e->lean) return ae_fail(AE_ERR_SDP, "publishing needs the lean transport, which is not running");
    ae_offer offer;
    int rc = ae_offer_parse_for(offer_sdp, true, &offer);
    if (rc != AE_OK) return rc;
    const char *no = ae_lean_declines(&offer);
    if (no) {
        ae_offer_clear(&offer);
        return ae_fail(AE_ERR_SDP, "the lean transport cannot take this offer: %s", no);
    }
    ae_listener *l = calloc(1, sizeof *l);
    int feed = ae_source_feed_fd(source);
    if (!l || feed < 0) {
        if (feed >= 0) close(feed);
        free(l);
        ae_offer_clear(&offer);
        return ae_fail(AE_ERR_NOMEM, "no memory or descriptor for a publisher");
    }
    l->engine = e;
    l->id = ae_new_id();
    l->transport = AE_TRANSPORT_LEAN;
    rc = ae_lean_publisher_create(e->lean, feed, source->channels, l->id, &l->closing, &offer,
                                  answer_out, &l->lean);
    ae_offer_clear(&offer);
    if (rc != AE_OK) {
        free(l);
        return rc;
    }
    link_listener(e, l);
    *out = l;
    return AE_OK;
}

/* The record of a branch of sink k's fan-out that goes out of the box (a
 * publication, a forward), not yet linked: what both opens share. */
static int outbound_new(ae_sink *k, const char *what, int transport, ae_listener **out)
{
    ae_fanout *f = ae_fanout_of(k);
    if (!f) return ae_fail(AE_ERR_INVALID, "a %s needs an Opus sink", what);
    ae_engine *e = f->env->owner;
    if (atomic_load(&e->graph.stopping)) return ae_fail(AE_ERR_CLOSED, "the engine is closing");
    ae_listener *l = calloc(1, sizeof *l);
    if (!l) return ae_fail(AE_ERR_NOMEM, "out of memory");
    l->engine = e;
    l->id = ae_new_id();
    l->sink = k;
    l->fanout = f;
    l->transport = transport;
    l->publication = true;   /* the sink is busy while it is out */
    *out = l;
    return AE_OK;
}

/* An outbound branch made: it takes packets from now on, and counts. */
static void outbound_link(ae_listener *l, ae_listener **out)
{
    ae_fanout_heard(l->fanout, +1);
    atomic_fetch_add(&l->fanout->publications, 1);
    link_listener(l->engine, l);
    *out = l;
}

int ae_publication_open(ae_sink *k, const char *ice_servers, ae_listener **out)
{
    ae_clear_error();
    if (!k || !out) return ae_fail(AE_ERR_INVALID, "sink and out are required");
    *out = NULL;
    ae_listener *l;
    int rc = outbound_new(k, "publication", AE_TRANSPORT_WEBRTCBIN, &l);
    if (rc != AE_OK) return rc;
    rc = ae_wr_create_offer(&l->engine->wr_env, k, l->fanout, l->id, ice_servers, &l->wr);
    if (rc != AE_OK) {
        free(l);
        return rc;
    }
    outbound_link(l, out);
    return AE_OK;
}

int ae_forward_open(ae_sink *k, const ae_forward_config *cfg, ae_listener **out)
{
    ae_clear_error();
    if (!k || !cfg || !out) return ae_fail(AE_ERR_INVALID, "sink, config and out are required");
    *out = NULL;
    ae_listener *l;
    int rc = outbound_new(k, "forward", AE_TRANSPORT_FORWARD, &l);
    if (rc != AE_OK) return rc;
    rc = ae_fwd_create(&l->engine->glib, l->fanout, cfg, &l->fwd);
    if (rc != AE_OK) {
        free(l);
        return rc;
    }
    outbound_link(l, out);
    return AE_OK;
}

int ae_publication_set_answer(ae_listener *l, const char *answer_sdp)
{
    ae_clear_error();
    if (!l || !answer_sdp) return ae_fail(AE_ERR_INVALID, "publication and answer are required");
    if (!l->publication || !l->wr) return ae_fail(AE_ERR_INVALID, "not a publication");
    if (atomic_load(&l->closing)) return ae_fail(AE_ERR_CLOSED, "the publication is closing");
    return ae_wr_set_answer(l->wr, answer_sdp);
}

static int restartable(ae_listener *l)
{
    if (!l->publication || !l->wr) return ae_fail(AE_ERR_INVALID, "not a publication");
    if (atomic_load(&l->closing)) return ae_fail(AE_ERR_CLOSED, "the publication is closing");
    return AE_OK;
}

int ae_publication_ice_restart(ae_listener *l, char *ufrag, char *pwd)
{
    ae_clear_error();
    if (!l || !ufrag || !pwd) return ae_fail(AE_ERR_INVALID, "publication, ufrag, pwd are required");
    int rc = restartable(l);
    return rc != AE_OK ? rc : ae_wr_ice_restart(l->wr, ufrag, pwd);
}

/* ICE credentials (RFC 8839: ice-char, 4..256 for ufrag, 22..256 for pwd) */
static bool ice_credential(const char *s, size_t min)
{
    size_t n = strlen(s);
    if (n < min || n >= AE_ICE_CREDENTIAL_MAX) return false;
    for (; *s; s++)
        if (!isalnum((unsigned char)*s) && *s != '+' && *s != '/') return false;
    return true;
}

int ae_publication_restart_answer(ae_listener *l, const char *ufrag, const char *pwd,
                                  const char *candidates)
{
    ae_clear_error();
    if (!l || !ufrag || !pwd) return ae_fail(AE_ERR_INVALID, "publication, ufrag, pwd are required");
    if (!ice_credential(ufrag, 4) || !ice_credential(pwd, 22))
        return ae_fail(AE_ERR_SDP, "the server's ICE credentials are not ones (RFC 8839)");
    if (candidates && strlen(candidates) > 8192)
        return ae_fail(AE_ERR_SDP, "the server's candidates are over 8 KB");
    int rc = restartable(l);
    return rc != AE_OK ? rc : ae_wr_restart_answer(l->wr, ufrag, pwd, candidates);
}

void ae_listener_free_answer(char *answer) { free(answer); }

uint64_t ae_listener_id(const ae_listener *l) { return l ? l->id : 0; }

int ae_listener_add_candidate(ae_listener *l, int mline, const char *candidate)
{
    ae_clear_error();
    if (!l || !candidate) return ae_fail(AE_ERR_INVALID, "listener and candidate are required");
    if (mline < 0 || mline > 64) return ae_fail(AE_ERR_INVALID, "bad m-line index %d", mline);
    if (atomic_load(&l->closing)) return ae_fail(AE_ERR_CLOSED, "the listener is closing");
    if (strncmp(candidate, "a=", 2) == 0) candidate += 2;
    if (!*candidate) return AE_OK; /* end of candidates: nothing to do */
    if (strncmp(candidate, "candidate:", 10) != 0 || strlen(candidate) > 1024 ||
        strpbrk(candidate, "\r\n"))
        return ae_fail(AE_ERR_INVALID, "not an ICE candidate line: '%.60s'", candidate);
    /* ICE-lite learns the peer's addresses from its checks */
    if (l->wr) ae_wr_add_candidate(l->wr, mline, candidate);
    return AE_OK;
}

int ae_listener_stats_get(ae_listener *l, ae_listener_stats *out)
{
    ae_clear_error();
    if (!l || !out) return ae_fail(AE_ERR_INVALID, "listener and out are required");
    memset(out, 0, sizeof *out);
    if (l->lean) ae_lean_peer_stats(l->lean, out);
    else if (l->fwd) ae_fwd_stats(l->fwd, out);
    else ae_wr_stats(l->wr, out);
    return AE_OK;
}

int ae_listener_destroy(ae_listener *l)
{
    ae_clear_error();
    if (!l) return ae_fail(AE_ERR_INVALID, "no listener");
    ae_engine *e = l->engine;
    if (atomic_exchange(&l->closing, true))
        return ae_fail(AE_ERR_INVALID, "the listener is already being destroyed");
    if (l->wr) ae_wr_close(l->wr);
    /* a lean listener is removed from the trio thread, which an event being
     * delivered may be waiting for: drop the queued ones, do not wait */
    if (l->lean) ae_events_forget_queued(&e->events, l->id);
    else ae_events_forget(&e->events, l->id);
    pthread_mutex_lock(&e->listeners_lock);
    for (ae_listener **pp = &e->listeners; *pp; pp = &(*pp)->next) {
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    }
    pthread_mutex_unlock(&e->listeners_lock);
    if (l->lean) {
        if (l->fanout) {   /* a publisher is not counted */
            atomic_fetch_sub(&l->fanout->lean_listeners, 1);
            atomic_fetch_sub(&l->fanout->listeners, 1);
            atomic_fetch_sub(&e->nlisteners, 1);
        }
        /* the network thread ends and frees it, then l: closing keeps its
         * events muted until then (a sink waits for it: ae_lean_forget) */
        ae_lean_peer_release(e->lean, l->lean, free, l);
        return AE_OK;
    }
    int rc = l->fwd ? ae_fwd_destroy(l->fwd) : ae_wr_destroy(l->wr);
    ae_fanout_heard(l->fanout, -1);
    if (l->publication) {
        atomic_fetch_sub(&l->fanout->publications, 1);
    } else {
        atomic_fetch_sub(&l->fanout->listeners, 1);
        atomic_fetch_sub(&e->nlisteners, 1);
    }
    free(l);
    /* A webrtcbin listener frees about a megabyte in many small blocks
     * across threads' arenas; hand it back to the system rather than keep
     * the high-water mark. */
    malloc_trim(0);
    return rc;
}

int ae_listener_destroy_blocks(const ae_listener *l)
{
    return l && !l->lean;
}

void ae_listener_destroy_all(ae_engine *e)
{
    for (;;) {
        pthread_mutex_lock(&e->listeners_lock);
        ae_listener *l = e->listeners;
        pthread_mutex_unlock(&e->listeners_lock);
        if (!l) break;
        ae_listener_destroy(l);
    }
}
