"""The benchmark's load generator (bench/loadgen, a C WebRTC client) against
a real appliance on loopback: it builds, connects five listeners through
each listener transport (the lean one is ICE-lite, so the client is the
only one checking; webrtcbin is a full ICE agent that checks the client
too), and every listener gets 2 s of audio with no packet lost and the
seed tone's pitch."""
from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import lean_bench  # noqa: E402

LISTENERS = 5
PACKETS = 200   # 2 s of 10 ms frames


@pytest.mark.trio
@pytest.mark.parametrize("transport", ["lean", "webrtcbin"])
async def test_loadgen_holds_listeners_without_loss(tmp_path, transport):
    async with trio.open_nursery() as nursery:
        process, url = await lean_bench.start_appliance(tmp_path, transport, 20)
        loadgen = await lean_bench.Loadgen.start(nursery, sample_every=1)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                server = lean_bench.ApplianceServer(transport, process.pid, loadgen, client)
                times: dict[str, list[float]] = {"post_201": [], "first_audio": []}
                errors = await lean_bench.add_burst(server, list(range(LISTENERS)), times)
                assert errors == []
                assert len(times["first_audio"]) == LISTENERS
                with trio.fail_after(10):
                    while min(s["packets"] for s in await loadgen.stats()) < PACKETS:
                        await trio.sleep(0.05)
                for ident in range(LISTENERS):
                    await server.remove(ident)
                with trio.fail_after(5):
                    while len(loadgen.closed) < LISTENERS:
                        await trio.sleep(0.05)
        finally:
            await loadgen.aclose()
            await lean_bench.stop_process(process)
        nursery.cancel_scope.cancel()
    for final in loadgen.closed.values():
        # "closed": it was up and the server's close_notify (sent when the
        # DELETE removed it) came before the loadgen's own close
        assert final["dtls"] in ("up", "closed")
        assert final["packets"] >= PACKETS
        assert final["lost"] == 0 and final["unprotect_fail"] == 0
        assert final["decode_errors"] == 0
        assert abs(final["pitch_hz"] - lean_bench.TONE_HZ) < 5, final
    assert loadgen.errors == {}


@pytest.mark.trio
async def test_a_lost_final_flight_is_sent_again_by_the_lean_transport(tmp_path):
    """The server's last DTLS flight (ChangeCipherSpec, Finished) lost on the
    way: the server already counts the handshake done and has handed back its
    buffers, yet the client's retransmission still gets that flight again."""
    async with trio.open_nursery() as nursery:
        process, url = await lean_bench.start_appliance(tmp_path, "lean", 20)
        loadgen = await lean_bench.Loadgen.start(nursery, sample_every=1, drop_final_flight=True)
        try:
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                server = lean_bench.ApplianceServer("lean", process.pid, loadgen, client)
                times: dict[str, list[float]] = {"post_201": [], "first_audio": []}
                assert await lean_bench.add_burst(server, [0, 1], times) == []
                with trio.fail_after(10):
                    while min(s["packets"] for s in await loadgen.stats()) < 50:
                        await trio.sleep(0.05)
                stats = await loadgen.stats()
        finally:
            await loadgen.aclose()
            await lean_bench.stop_process(process)
        nursery.cancel_scope.cancel()
    for s in stats:
        assert s["flights_dropped"] == 1 and s["dtls"] == "up" and s["lost"] == 0, s
