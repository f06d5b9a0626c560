"""The lean listener transport, as a peer and as an attacker meet it: one UDP
port and one network thread for every listener, ICE-lite answers at once,
DTLS-SRTP to real aiortc peers, consent freshness, DTLS close, receiver
reports; forged STUN, DTLS from strangers and random datagrams are dropped,
counted, and change nothing for the listeners that are there."""
from __future__ import annotations

import itertools
import os
import re
import time
from dataclasses import replace

import aioice.ice
import pytest
import trio
from aioice import stun
from aiortc import rtcdtlstransport

from appliance import (
    AnswerReady, EngineError, EngineSettings, LevelsMeasured, ListenerState,
    ListenerStateChanged, RouteSpec, SinkSpec, open_engine,
)
from appliance.engine import Listener
from appliance.model import Variant

from support.polling import poll_until
from support.webrtc import dominant_frequency, open_aiortc_listener, synthetic_offer
from test_engine import connect, first_answer, process_threads, tone_graph

pytestmark = pytest.mark.trio

LEAN = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1, transport="lean")


@pytest.fixture
async def engine():
    async with open_engine(LEAN) as e:
        await tone_graph(e, hz=1000.0)
        yield e


def ice_credentials(sdp: str) -> tuple[str, str]:
    return (re.search(r"a=ice-ufrag:(\S+)", sdp).group(1),
            re.search(r"a=ice-pwd:(\S+)", sdp).group(1))


def candidate_ports(sdp: str) -> set[int]:
    return {int(m.group(1)) for m in re.finditer(r"a=candidate:\S+ 1 udp \d+ \S+ (\d+) typ host", sdp)}


async def state_change(listener: Listener, timeout: float) -> ListenerState:
    """The listener's next state change, skipping CHECKING/CONNECTED."""
    with trio.fail_after(timeout):
        async for ev in listener.events:
            if isinstance(ev, ListenerStateChanged) and ev.state.is_final:
                return ev.state
    raise AssertionError("the listener's channel closed")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def binding_request(username: str, password: str | None, *, use_candidate: bool = True) -> bytes:
    msg = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    msg.attributes["USERNAME"] = username
    msg.attributes["PRIORITY"] = 1853817087
    msg.attributes["ICE-CONTROLLING"] = 0x1234567890
    if use_candidate:
        msg.attributes["USE-CANDIDATE"] = None
    if password is not None:
        msg.add_message_integrity(password.encode())
    msg.add_fingerprint()
    return bytes(msg), msg.transaction_id


# ---- peers ----------------------------------------------------------------------


async def test_a_real_peer_hears_the_tone_and_reports_its_health(engine):
    threads = engine.stats().threads
    async with open_aiortc_listener() as peer:
        listener = await connect(engine, peer)
        samples = await peer.record(seconds=1.0)
        assert abs(dominant_frequency(samples) - 1000.0) < 2.0
        stats = listener.stats()
        assert stats.transport == "lean" and stats.state == ListenerState.CONNECTED
        assert stats.packets_sent > 50 and stats.bytes_sent > 50 * 40
        assert stats.last_rx_age_s is not None and stats.last_rx_age_s < 5
        # aiortc reports about once a second; the RTT needs one of our
        # sender reports echoed in it
        await poll_until(lambda: listener.stats().rtt_ms is not None, timeout=6)
        health = listener.stats()
        assert health.rtcp_reports >= 1
        assert 0 <= health.rtt_ms < 100             # loopback
        assert health.fraction_lost == 0 and health.packets_lost == 0
        assert 0 <= health.jitter_ms < 20
        sink = engine.sink_stats("main")
        assert sink.send_latency_samples > 0 and sink.send_latency_p95_ms < 50
        assert engine.stats().threads == threads     # no thread for a listener
        await listener.aclose()
    assert engine.stats().listeners == 0 and engine.sink_stats("main").listeners == 0


@pytest.mark.parametrize("profile", ["SRTP_AEAD_AES_128_GCM", "SRTP_AES128_CM_SHA1_80"])
async def test_receiver_reports_with_either_srtp_profile_and_a_replay_counts_for_nothing(
        engine, monkeypatch, profile):
    """The peer's SRTCP goes through its libsrtp session: health comes
    through with both DTLS-SRTP profiles, and a report the peer sent, sent
    again, is refused by libsrtp's replay window."""
    profiles = [p for p in rtcdtlstransport.SRTP_PROFILES if p.openssl_profile == profile.encode()]
    assert len(profiles) == 1
    monkeypatch.setattr(rtcdtlstransport, "SRTP_PROFILES", profiles)   # all the peer offers
    async with open_aiortc_listener() as peer:
        listener = await connect(engine, peer)
        dtls = peer._pc.getTransceivers()[0].receiver.transport
        ice_send, on_rtcp = dtls.transport._send, dtls._handle_rtcp_data
        sent: list[bytes] = []
        reports_in = [0]    # our sender reports the peer got
        block = [False]

        async def send(data: bytes) -> None:
            if len(data) > 1 and 192 <= data[1] <= 223:     # its SRTCP
                if block[0]:
                    return
                sent.append(data)
            await ice_send(data)

        async def receive_rtcp(data: bytes) -> None:
            reports_in[0] += 1
            await on_rtcp(data)

        async def hook() -> None:
            dtls.transport._send, dtls._handle_rtcp_data = send, receive_rtcp

        await peer._run(hook)
        await poll_until(lambda: listener.stats().rtt_ms is not None, timeout=6)
        # the RTT's size is checked in the test above; this one also runs
        # emulated (tests/image/test_engine_arm64.py), where the peer is slow
        assert listener.stats().rtt_ms >= 0 and listener.stats().rtcp_reports >= 1
        block[0] = True
        # two of our sender reports later (one a second) the last report it
        # sent is long in, and no other comes
        seen = reports_in[0]
        await poll_until(lambda: reports_in[0] >= seen + 2, timeout=4)
        reports, rejected = listener.stats().rtcp_reports, engine.stats().lean_rtcp_rejected

        async def replay() -> None:
            await ice_send(sent[-1])

        await peer._run(replay)
        await poll_until(lambda: engine.stats().lean_rtcp_rejected > rejected, timeout=2)
        assert listener.stats().rtcp_reports == reports
        assert listener.stats().state == ListenerState.CONNECTED
        await listener.aclose()


async def test_one_port_and_no_thread_or_socket_per_listener(engine):
    stats = engine.stats()
    port, threads, fds, task_threads = stats.lean_port, stats.threads, open_fds(), \
        process_threads()
    assert port > 0
    listeners = [engine.start_listener("main", synthetic_offer()) for _ in range(50)]
    ufrags = set()
    for listener in listeners:
        answer = await first_answer(listener, timeout=1)   # no gathering wait
        ufrags.add(ice_credentials(answer.sdp)[0])
        assert isinstance(answer, AnswerReady), answer
        assert "a=ice-lite" in answer.sdp and "a=setup:passive" in answer.sdp
        assert candidate_ports(answer.sdp) == {port}
        assert re.search(r"a=fingerprint:sha-256 ([0-9A-F]{2}:){31}[0-9A-F]{2}\r\n", answer.sdp)
    assert len(ufrags) == 50
    stats = engine.stats()
    assert stats.listeners == 50 and stats.threads == threads
    assert open_fds() == fds and process_threads() == task_threads
    for listener in listeners:
        await listener.aclose()
    assert open_fds() == fds and engine.stats().listeners == 0


async def test_an_offer_with_a_data_channel_plays_on_the_lean_transport():
    """The data channel is rejected in the answer (port 0, same mid), the
    audio served: a WHEP server serves audio only (RFC 8829 5.3.1)."""
    auto = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1)
    async with open_engine(auto) as engine, open_aiortc_listener() as peer:
        await tone_graph(engine, hz=1000.0)
        with_channel = engine.start_listener("main", await peer.create_offer(data_channel=True))
        answer = await first_answer(with_channel)
        assert isinstance(answer, AnswerReady), answer
        # aiortc's own state waits for the rejected data channel's transport
        # for ever (it ignores port 0 there), so the audio is what is checked
        await peer.accept_answer(answer.sdp)
        assert with_channel.stats().transport == "lean"
        assert "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\n" in peer.answer_sdp
        assert "a=group:BUNDLE 0\r\n" in peer.answer_sdp
        assert abs(dominant_frequency(await peer.record(seconds=0.5)) - 1000.0) < 3.0
        await with_channel.aclose()


async def test_forcing_the_lean_transport_refuses_what_it_cannot_serve(engine):
    no_mux = synthetic_offer().replace("a=rtcp-mux\r\n", "")
    with pytest.raises(EngineError) as err:
        engine.start_listener("main", no_mux)
    assert "rtcp-mux" in str(err.value)
    assert engine.stats().listeners == 0


async def test_dtls_close_ends_the_listener_at_once(engine):
    async with open_aiortc_listener() as peer:
        listener = await connect(engine, peer)
        await peer.close()    # aiortc sends close_notify; consent would take 30 s
        assert await state_change(listener, timeout=3) == ListenerState.CLOSED
        assert listener.stats().state == ListenerState.CLOSED
        await listener.aclose()


async def test_removing_a_connected_listener_tells_its_peer(engine):
    """Our close_notify: the browser learns at once that the session is over
    (DELETE, shutdown), instead of after its own consent checks fail."""
    async with open_aiortc_listener() as peer, open_aiortc_listener() as other:
        listener = await connect(engine, peer)
        stays = await connect(engine, other)
        await listener.aclose()
        await poll_until(lambda: peer.connection_state == "closed", timeout=3)
        assert abs(dominant_frequency(await other.record(seconds=0.3)) - 1000.0) < 3.0
        await stays.aclose()


async def test_a_crowd_leaving_takes_no_thread_and_its_sink_can_go_at_once(engine):
    """Removing a lean listener hands it to the network thread and returns:
    a hundred leaving at once start no worker thread (webrtcbin's removal
    still needs one), the connected one still gets our close_notify, and the
    sink can go right after them (the network thread lets go of them first)."""
    async with open_aiortc_listener() as peer:
        connected = await connect(engine, peer)
        listeners = [engine.start_listener("main", synthetic_offer()) for _ in range(100)]
        threads = len(os.listdir("/proc/self/task"))
        async with trio.open_nursery() as nursery:
            for listener in (connected, *listeners):
                nursery.start_soon(listener.aclose)
        assert len(os.listdir("/proc/self/task")) <= threads
        assert engine.stats().listeners == 0
        await poll_until(lambda: peer.connection_state == "closed", timeout=3)
    await engine.remove_route("tone-main")
    await engine.remove_sink("main")
    assert engine.stats().sinks == 0


async def test_a_vanished_peer_ends_by_consent_expiry(monkeypatch):
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)   # aiortc checks every ~0.2 s
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1,
                              transport="lean", consent_timeout_s=1.0)
    async with open_engine(settings) as engine, open_aiortc_listener() as peer:
        await tone_graph(engine, hz=1000.0)
        never = engine.start_listener("main", synthetic_offer())   # never checks at all
        listener = await connect(engine, peer)
        # checks keep it alive well past the timeout
        assert abs(dominant_frequency(await peer.record(seconds=1.5)) - 1000.0) < 2.0
        assert listener.stats().state == ListenerState.CONNECTED
        assert await state_change(never, timeout=3) == ListenerState.FAILED
        # timed from before the cut: on a loaded machine vanish() itself took
        # most of the consent window to return (emulated arm64 beside QEMU)
        gone = time.monotonic()
        await peer.vanish()
        assert await state_change(listener, timeout=4) == ListenerState.FAILED
        assert time.monotonic() - gone > 0.5     # consent ran out; nothing said goodbye
        await never.aclose()
        await listener.aclose()


# ---- attackers ------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["lean", "webrtcbin"])
@pytest.mark.parametrize("forge", ["sha-512", "every"])
async def test_a_certificate_that_is_not_the_offers_fails_and_gets_no_audio(transport, forge):
    """Whoever completes DTLS must hold the certificate the offer named: a
    man in the middle with the right ICE credentials but his own key gets
    nothing. aiortc offers sha-256, -384 and -512 fingerprints; the
    strongest must match (RFC 8122), so forging it alone is enough.
    (webrtcbin itself accepts any certificate: the engine checks it.)"""
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1,
                              transport=transport)
    async with open_engine(settings) as engine, open_aiortc_listener() as peer:
        await tone_graph(engine)
        offer = await peer.create_offer()
        for alg, value in re.findall(r"a=fingerprint:(\S+) (\S+)", offer):
            if forge in ("every", alg):
                forged = ":".join(f"{b:02X}" for b in os.urandom(len(value.split(":"))))
                offer = offer.replace(value, forged)
        listener = engine.start_listener("main", offer)
        answer = await first_answer(listener)
        await peer.accept_answer(answer.sdp)
        assert await state_change(listener, timeout=10) == ListenerState.FAILED
        assert listener.stats().packets_sent == 0
        await listener.aclose()


async def test_forged_and_stray_datagrams_are_dropped_counted_and_harm_nobody(engine):
    async with open_aiortc_listener() as peer:
        victim = await connect(engine, peer)
        offer = synthetic_offer()
        offer_ufrag = ice_credentials(offer)[0]
        target = engine.start_listener("main", offer)
        answer = await first_answer(target)
        ours, pwd = ice_credentials(answer.sdp)
        port = engine.stats().lean_port
        sock = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
        await sock.bind(("127.0.0.1", 0))
        server = ("127.0.0.1", port)
        before = engine.stats()

        forged = [
            binding_request(f"{ours}:{offer_ufrag}", "wrong-password-0123456789")[0],
            binding_request(f"{ours}:{offer_ufrag}", None)[0],            # no integrity
            binding_request(f"nosuchufrag:{offer_ufrag}", pwd)[0],       # unknown ufrag
            binding_request(f"{ours}:someoneelse", pwd)[0],              # not the offer's
            b"\x00\x01\x00\x00" + os.urandom(40),                        # not STUN at all
        ]
        for datagram in forged:
            await sock.sendto(datagram, server)
        await sock.sendto(bytes([22, 0xFE, 0xFD]) + os.urandom(60), server)   # ClientHello-ish
        await sock.sendto(bytes([0x80, 200]) + os.urandom(60), server)        # RTCP, stranger
        await sock.sendto(bytes([100]) + os.urandom(60), server)              # nothing at all
        flood = 2000
        for i in range(flood):
            await sock.sendto(bytes([i % 256]) + os.urandom(i % 200), server)
        total = len(forged) + 3 + flood
        def counted(stats) -> int:
            return sum(getattr(stats, f) - getattr(before, f) for f in
                       ("lean_stun_rejected", "lean_dtls_rejected", "lean_rtcp_rejected",
                        "lean_junk"))
        # Not lean_datagrams_in: the victim's consent checks and reports arrive
        # there too while the flood is sent (seconds of it under qemu-user).
        await poll_until(lambda: counted(engine.stats()) >= total)
        after = engine.stats()
        assert counted(after) == total   # every one dropped and counted
        assert after.lean_stun_rejected - before.lean_stun_rejected >= len(forged)
        assert after.lean_dtls_rejected - before.lean_dtls_rejected >= 1
        assert after.lean_rtcp_rejected - before.lean_rtcp_rejected >= 1
        assert after.lean_junk - before.lean_junk >= 1
        # nothing answered any of them
        with trio.move_on_after(0.2):
            data = await sock.recv(2048)
            raise AssertionError(f"the server answered a forged datagram: {data[:20]!r}")
        assert target.stats().state == ListenerState.NEW

        # the one with the right credentials is answered, with our own address
        request, tid = binding_request(f"{ours}:{offer_ufrag}", pwd)
        await sock.sendto(request, server)
        with trio.fail_after(2):
            data = await sock.recv(2048)
        reply = stun.parse_message(data)
        assert reply.message_class == stun.Class.RESPONSE and reply.transaction_id == tid
        assert reply.attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()
        assert reply.check_message_integrity(pwd.encode())

        # the real listener never noticed
        assert abs(dominant_frequency(await peer.record(seconds=0.5)) - 1000.0) < 2.0
        # and the stream goes on: 45 more packets (0.45 s of them), waited
        # for, since a loaded peer decodes what it counted earlier
        await keeps_receiving(peer, 45, timeout=3)
        assert victim.stats().state == ListenerState.CONNECTED
        sock.close()
        await target.aclose()
        await victim.aclose()


# ---- where media goes: a live path is never taken by STUN alone -------------------


def receiver_report(ssrc: int = 0x5EED5EED) -> bytes:
    """A plain RTCP receiver report without report blocks."""
    return bytes([0x80, 201, 0, 1]) + ssrc.to_bytes(4, "big")


async def collect(sock, into: list[bytes]) -> None:
    """Every datagram that reaches ``sock``, until cancelled."""
    while True:
        into.append(await sock.recv(2048))


def media(datagrams: list[bytes]) -> list[bytes]:
    """The RTP and RTCP among them (RFC 7983: first byte 128-191)."""
    return [d for d in datagrams if d and 128 <= d[0] <= 191]


async def packet_rate(peer, seconds: float = 1.0) -> float:
    start = peer.packets_received
    await trio.sleep(seconds)
    return (peer.packets_received - start) / seconds


async def keeps_receiving(peer, packets: int, timeout: float = 5.0) -> None:
    """``packets`` more reach the peer within ``timeout`` s: a count, not a
    rate over the wall clock (emulated on arm64, the peer reads in bursts)."""
    start = peer.packets_received
    await poll_until(lambda: peer.packets_received - start >= packets, timeout,
                     f"{packets} more packets to the peer")


async def test_one_binding_request_from_elsewhere_takes_no_audio(engine):
    """A Binding request with the listener's credentials (both are in the
    offer and answer, in cleartext on the LAN) and USE-CANDIDATE, from
    another address: it is answered, as ICE must, and that is all. The
    listener's media stays where DTLS completed, at the same rate; nothing
    goes to the stranger. (Before: every packet went to the stranger from
    then on, and the listener got none while it still showed connected.)"""
    async with open_aiortc_listener() as peer:
        listener = await connect(engine, peer)
        ours, pwd = ice_credentials(peer.answer_sdp)
        theirs = ice_credentials(peer.offer_sdp)[0]
        server = ("127.0.0.1", engine.stats().lean_port)
        before = await packet_rate(peer)
        assert before >= 80
        got: list[bytes] = []
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.2", 0))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, sock, got)
                request, tid = binding_request(f"{ours}:{theirs}", pwd)
                await sock.sendto(request, server)
                after = await packet_rate(peer, 2.0)
                nursery.cancel_scope.cancel()
        assert [stun.parse_message(d).transaction_id for d in got] == [tid]
        assert after >= 0.8 * before, (before, after)
        assert abs(dominant_frequency(await peer.record(seconds=0.5)) - 1000.0) < 2.0
        assert listener.stats().state == ListenerState.CONNECTED
        await listener.aclose()


async def test_a_listener_that_never_did_dtls_sends_nothing(engine):
    """ICE passed (USE-CANDIDATE too) but no DTLS: the checking address gets
    its Binding responses and no RTP or RTCP."""
    offer = synthetic_offer()
    listener = engine.start_listener("main", offer)
    answer = await first_answer(listener)
    ours, pwd = ice_credentials(answer.sdp)
    got: list[bytes] = []
    with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.2", 0))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, sock, got)
            for _ in range(5):
                request, _tid = binding_request(f"{ours}:{ice_credentials(offer)[0]}", pwd)
                await sock.sendto(request, ("127.0.0.1", engine.stats().lean_port))
                await trio.sleep(0.2)
            await trio.sleep(0.5)
            nursery.cancel_scope.cancel()
    assert len(got) == 5 and not media(got)
    assert listener.stats().packets_sent == 0
    await listener.aclose()


async def test_a_stranger_never_gets_media_even_when_the_peer_is_gone(monkeypatch):
    """Someone with the credentials keeps checking with USE-CANDIDATE from
    another address and sends SRTCP from it (forged, and a real report of
    the peer's replayed): no media leaves for it while the peer is there, nor
    after the peer has vanished, and its checks are not the listener's
    consent: the listener fails when the peer's path has had none for the
    consent timeout."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.2)
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1,
                              transport="lean", consent_timeout_s=1.5)   # quiet after 0.3 s
    async with open_engine(settings) as engine, open_aiortc_listener() as peer:
        await tone_graph(engine, hz=1000.0)
        listener = await connect(engine, peer)
        ours, pwd = ice_credentials(peer.answer_sdp)
        theirs = ice_credentials(peer.offer_sdp)[0]
        dtls = peer._pc.getTransceivers()[0].receiver.transport
        ice_send = dtls.transport._send
        reports: list[bytes] = []

        async def send(data: bytes) -> None:
            if len(data) > 1 and 192 <= data[1] <= 223:
                reports.append(data)
            await ice_send(data)

        async def hook() -> None:
            dtls.transport._send = send

        await peer._run(hook)
        await poll_until(lambda: len(reports) >= 1, timeout=5)
        server = ("127.0.0.1", engine.stats().lean_port)
        got: list[bytes] = []
        rejected = engine.stats().lean_rtcp_rejected

        async def stranger(sock) -> None:
            while True:
                await sock.sendto(binding_request(f"{ours}:{theirs}", pwd)[0], server)
                await sock.sendto(reports[-1], server)                       # a replay
                await sock.sendto(bytes([0x80, 201]) + os.urandom(40), server)   # forged
                await trio.sleep(0.1)

        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.2", 0))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, sock, got)
                nursery.start_soon(stranger, sock)
                await keeps_receiving(peer, 150)      # the peer keeps its audio
                await peer.vanish()
                gone = time.monotonic()
                assert await state_change(listener, timeout=5) == ListenerState.FAILED
                waited = time.monotonic() - gone
                nursery.cancel_scope.cancel()
        assert 1.0 < waited < 3.5, waited     # the peer's path's consent, not the stranger's
        assert got and not media(got)         # Binding responses only
        assert engine.stats().lean_rtcp_rejected - rejected >= 20
        await listener.aclose()


async def test_a_peer_that_really_moves_gets_its_audio_back(monkeypatch):
    """A peer whose address changes under the same DTLS association (a
    phone off one network onto another) sends its checks, with
    USE-CANDIDATE, and its SRTCP receiver reports from the new address: once
    its old path has been quiet for a fifth of the consent window (6 s by
    default: RFC 7675's longest interval between checks), media follows it
    there. Before that, not even authenticated SRTCP from another nominated
    address moves a path that is still heard from."""
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.3)
    settings = EngineSettings(ice_addresses=("127.0.0.1",), level_interval_ms=-1,
                              transport="lean", consent_timeout_s=5.0)   # quiet after 1 s
    async with open_engine(settings) as engine, open_aiortc_listener() as peer:
        await tone_graph(engine, hz=1000.0)
        listener = await connect(engine, peer)
        ours, pwd = ice_credentials(peer.answer_sdp)
        theirs = ice_credentials(peer.offer_sdp)[0]
        server = ("127.0.0.1", engine.stats().lean_port)
        got: list[bytes] = []
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.bind(("127.0.0.3", 0))
            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, sock, got)
                # the peer's own keys, from another nominated address, for 2 s
                # (twice the quiet time) while its path is alive: no move
                for _ in range(8):
                    await sock.sendto(binding_request(f"{ours}:{theirs}", pwd)[0], server)
                    await sock.sendto(await peer.protect_rtcp(receiver_report()), server)
                    await trio.sleep(0.25)
                await keeps_receiving(peer, 50)
                nursery.cancel_scope.cancel()
        assert got and not media(got)

        await peer.rebind("127.0.0.2")
        moved = time.monotonic()
        await keeps_receiving(peer, 50)
        regained = time.monotonic() - moved
        assert abs(dominant_frequency(await peer.record(seconds=0.5)) - 1000.0) < 2.0
        assert await packet_rate(peer) >= 80
        assert listener.stats().state == ListenerState.CONNECTED
        assert regained < 4.0, regained
        print(f"audio back {regained:.2f} s after the move")
        await listener.aclose()


async def test_ipv6_on_the_same_port():
    """Both families share the one port number; a check over IPv6 is answered
    with the peer's IPv6 address."""
    settings = EngineSettings(ice_addresses=("127.0.0.1", "::1"), level_interval_ms=-1,
                              transport="lean")
    async with open_engine(settings) as engine:
        await tone_graph(engine)
        offer = synthetic_offer()
        listener = engine.start_listener("main", offer)
        answer = await first_answer(listener)
        port = engine.stats().lean_port
        assert f"a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host" in answer.sdp
        assert f"::1 {port} typ host" in answer.sdp
        ours, pwd = ice_credentials(answer.sdp)
        sock = trio.socket.socket(trio.socket.AF_INET6, trio.socket.SOCK_DGRAM)
        await sock.bind(("::1", 0))
        request, tid = binding_request(f"{ours}:{ice_credentials(offer)[0]}", pwd)
        await sock.sendto(request, ("::1", port))
        with trio.fail_after(2):
            reply = stun.parse_message(await sock.recv(2048))
        assert reply.transaction_id == tid
        assert reply.attributes["XOR-MAPPED-ADDRESS"] == sock.getsockname()[:2]
        with trio.fail_after(2):
            async for ev in listener.events:
                if isinstance(ev, ListenerStateChanged):
                    assert ev.state == ListenerState.CHECKING
                    break
        sock.close()
        await listener.aclose()


async def test_the_lean_answer_is_ready_when_the_listener_is_made(engine):
    """ICE-lite has nothing to gather: the answer comes back with the create
    call itself, not through the engine's event thread, so a POST never
    waits on another thread for it."""
    listener = engine.start_listener("main", synthetic_offer())
    try:
        event = listener.events.receive_nowait()   # no checkpoint since the create
        assert isinstance(event, AnswerReady) and event.listener_id == listener.id
        assert "a=ice-lite" in event.sdp and "a=setup:passive" in event.sdp
    finally:
        await listener.aclose()


async def test_the_status_page_counts_what_the_lean_port_refused(tmp_path):
    from tests.web.conftest import make_config, open_server
    async with open_server(make_config(tmp_path)) as server:
        lean = (await server.client.get("/api/status")).json()["engine"]["lean"]
        assert lean["port"] > 0 and lean["junk"] == 0 and lean["stun_rejected"] == 0
        with trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM) as sock:
            await sock.sendto(b"\xff" * 40, ("127.0.0.1", lean["port"]))
            await sock.sendto(binding_request("nobody:knows", "wrong")[0],
                              ("127.0.0.1", lean["port"]))
            with trio.fail_after(5):
                while lean["junk"] < 1 or lean["stun_rejected"] < 1:
                    await trio.sleep(0.01)
                    lean = (await server.client.get("/api/status")).json()["engine"]["lean"]
        assert lean["junk"] == 1 and lean["stun_rejected"] == 1 and lean["datagrams_in"] == 2
        assert lean["dtls_rejected"] == lean["rtcp_rejected"] == lean["send_dropped"] == 0


async def test_a_new_listener_gets_its_first_packets_paced_not_in_a_burst(engine):
    """From its first packet on, a new listener gets one packet a frame, in
    order (consecutive sequence numbers, RTP timestamps one frame apart),
    each as fresh as the later ones: nothing queued while DTLS was finishing
    and released at once. A browser's jitter buffer keeps such a burst and
    plays everything that late for seconds (bench/join_delay.py)."""
    async with open_aiortc_listener() as peer:
        arrivals: list[tuple[float, int, int]] = []  # (monotonic, seq, RTP timestamp)
        receiver = peer._pc.getTransceivers()[0].receiver
        inner = receiver._handle_rtp_packet

        async def record(packet, arrival_time_ms: int) -> None:
            arrivals.append((time.monotonic(), packet.sequence_number, packet.timestamp))
            await inner(packet, arrival_time_ms=arrival_time_ms)

        async def hook() -> None:
            receiver._handle_rtp_packet = record

        await peer._run(hook)
        listener = await connect(engine, peer)
        await poll_until(lambda: len(arrivals) >= 60, timeout=5, what="60 packets")
        first = arrivals[:60]
        assert [(s - first[0][1]) % 65536 for _, s, _ in first] == list(range(60))
        assert {(b[2] - a[2]) % 2**32 for a, b in itertools.pairwise(first)} == {480}  # 10 ms
        # how late each packet is for its media time, against the later ones:
        # a queue released at once makes the first ones late by its length
        late = [t - ts / 48000 for t, _, ts in first]
        later = sorted(late[30:])[15]
        assert max(late[:10]) - later < 0.08, [round((x - later) * 1000) for x in late[:10]]
        # and it took the first 30 about 30 frames to come
        assert first[29][0] - first[0][0] > 0.2
        await listener.aclose()


async def test_a_listener_that_never_connects_costs_no_encoding(engine):
    """A sink nobody connected to is mixed (its levels go on) but not
    encoded: 100 sessions that never connected (each listening to a source:
    a temporary sink each) took 98.6 % of a core, most of it Opus."""
    never = engine.start_listener("main", synthetic_offer())
    await first_answer(never)
    mixed = engine.sink_stats("main").frames_encoded
    with trio.fail_after(5):
        while engine.sink_stats("main").frames_encoded < mixed + 20:   # 200 ms mixed
            await trio.sleep(0.02)
    assert engine.sink_stats("main").packets_out == 0
    async with open_aiortc_listener() as peer:
        connected = await connect(engine, peer)
        assert abs(dominant_frequency(await peer.record(0.3)) - 1000.0) < 3.0
        assert engine.sink_stats("main").packets_out > 0
        await connected.aclose()
    await never.aclose()
    assert engine.stats().listeners == 0


async def mixed_sinks(engine, reference: str = "main", windows: int = 5) -> dict[str, float]:
    """The sinks mixed while ``reference`` was mixed for ``windows`` level
    intervals from now, with their loudest RMS (dBFS): a sink the mixer
    skips posts no levels."""
    after = time.monotonic()
    loudest: dict[str, float] = {}
    seen = 0
    with trio.fail_after(5):
        async for ev in engine.events:
            if isinstance(ev, LevelsMeasured) and ev.kind == "sink" and ev.since > after:
                loudest[ev.entity_id] = max(loudest.get(ev.entity_id, -200.0), *ev.rms_dbfs)
                seen += ev.entity_id == reference
                if seen == windows:
                    return loudest
    raise AssertionError("the event channel closed")


async def test_a_listeners_own_sinks_are_mixed_only_once_it_has_connected():
    """A listener's temporary sink (listening to a source) and hearing
    variant are made at its POST, its answer needs their stream, but the
    mixer skips them until it has completed DTLS, and again after it left:
    100 sessions that never connected cost 57 % of a core in mixing and
    variant filters alone."""
    async with open_engine(replace(LEAN, level_interval_ms=20)) as engine:
        await tone_graph(engine, hz=1000.0)
        await engine.add_sink("temp", SinkSpec(kind="opus"), on_demand=True)
        await engine.add_route("tone-temp", RouteSpec("tone", "temp"))
        await engine.add_variant("main~mono", "main", Variant(mono=True), on_demand=True)
        await engine.add_variant("main~clear", "main", Variant(clear=True))   # always mixed
        never = [engine.start_listener(sink, synthetic_offer()) for sink in ("temp", "main~mono")]
        for listener in never:
            assert isinstance(await first_answer(listener), AnswerReady)
        mixed = await mixed_sinks(engine)
        assert set(mixed) == {"main", "main~clear"} and mixed["main"] > -16
        async with open_aiortc_listener() as peer:
            connected = await connect(engine, peer, "temp")
            assert abs(dominant_frequency(await peer.record(0.3)) - 1000.0) < 3.0
            mixed = await mixed_sinks(engine)
            assert set(mixed) == {"main", "main~clear", "temp"} and mixed["temp"] > -16
            await connected.aclose()
        async with open_aiortc_listener() as peer:
            connected = await connect(engine, peer, "main~mono")
            assert abs(dominant_frequency(await peer.record(0.3)) - 1000.0) < 3.0
            assert set(await mixed_sinks(engine)) == {"main", "main~clear", "main~mono"}
            await connected.aclose()
        assert set(await mixed_sinks(engine)) == {"main", "main~clear"}
        for listener in never:
            await listener.aclose()
