"""The model and the engine state each bound once: the engine's checks read
native/ae_limits.h, generated from appliance/model.py. Here the real engine
is asked, for every bounded field of every value it is given (found by
walking the model, so a new one is covered without a line here, or fails
until it says how it reaches the engine), to take the bound and to refuse
one step past it. The values go through ``appliance.engine`` straight from
dataclasses made without ``model.build``, so only the engine's own checks
stand between them and the C engine."""
from __future__ import annotations

import dataclasses
from typing import Any, Awaitable, Callable

import pytest

from appliance import EngineError, EngineSettings, ErrorCode, open_engine
from appliance import engine_limits
from appliance.engine import Engine
from appliance.model import (
    ENGINE_SPECS, MAX_SENDER_PREFIXES, OPUS_MAX_CHANNELS, SCREAM_PROGRAM_LEN, RouteSpec, SinkSpec,
    SourceSpec, Variant, bounded_fields,
)

SETTINGS = EngineSettings(ice_addresses=("127.0.0.1",))
PORT = 46_711   # a network source's port when the port is not what is tested

Attempt = Callable[[Engine, str, Any], Awaitable[None]]


def _spec(cls: type, base: dict[str, Any] | Callable[[Any], dict[str, Any]], name: str,
          value: Any) -> Any:
    """``cls`` with ``name`` = value, made directly: no model check."""
    fields = base(value) if callable(base) else base
    return cls(**{**fields, name: value})


def source(base: Any) -> Attempt:
    async def attempt(engine: Engine, name: str, value: Any) -> None:
        await engine.add_source("probe", _spec(SourceSpec, base, name, value))
        await engine.remove_source("probe")
    return attempt


def sink(base: Any) -> Attempt:
    async def attempt(engine: Engine, name: str, value: Any) -> None:
        await engine.add_sink("probe", _spec(SinkSpec, base, name, value))
        await engine.remove_sink("probe")
    return attempt


async def route(engine: Engine, name: str, value: Any) -> None:
    await engine.add_source("in", SourceSpec(kind="tone", channels=8))
    await engine.add_sink("out", SinkSpec(kind="opus"))
    try:
        await engine.add_route("probe", _spec(RouteSpec, {"source_id": "in", "sink_id": "out"},
                                              name, value))
        await engine.remove_route("probe")
    finally:
        await engine.remove_sink("out")
        await engine.remove_source("in")


async def variant(engine: Engine, name: str, value: Any) -> None:
    await engine.add_sink("parent", SinkSpec(kind="opus"))
    try:
        await engine.add_variant("probe", "parent", _spec(Variant, {}, name, value))
        await engine.remove_sink("probe")
    finally:
        await engine.remove_sink("parent")


ALSA = {"kind": "alsa", "device": "null", "allow_absent": True}
SCREAM = {"kind": "scream", "address": "127.0.0.1", "port": PORT}
RTP = {**SCREAM, "kind": "rtp", "encoding": "L24"}

# How each bounded field reaches the engine: a spec where the engine looks at it.
REACH: dict[tuple[type, str], Attempt] = {
    (SourceSpec, "channels"): source({"kind": "tone"}),
    (SourceSpec, "period_frames"): source(ALSA),
    (SourceSpec, "buffer_periods"): source(ALSA),
    (SourceSpec, "tone_hz"): source({"kind": "tone"}),
    (SourceSpec, "tone_dbfs"): source({"kind": "tone"}),
    (SourceSpec, "click_interval_ms"): source({"kind": "clicks"}),
    (SourceSpec, "port"): source(SCREAM),
    (SourceSpec, "latency_ms"): source(SCREAM),
    (SourceSpec, "payload_type"): source(RTP),
    # G.711 is carried at 8 kHz only, L24 at 44.1 kHz and up (the codecs' own rule)
    (SourceSpec, "clock_rate"): source(lambda rate: {**RTP,
                                                     "encoding": "PCMU" if rate < 44100 else "L24"}),
    (SourceSpec, "stream_channels"): source(RTP),
    (SinkSpec, "channels"): sink(ALSA),   # an Opus sink has fewer: test_opus_channels
    (SinkSpec, "frame_ms"): sink({"kind": "opus"}),
    (SinkSpec, "bitrate"): sink({"kind": "opus"}),
    (SinkSpec, "complexity"): sink({"kind": "opus"}),
    (SinkSpec, "period_frames"): sink(ALSA),
    (SinkSpec, "buffer_periods"): sink(ALSA),
    (SinkSpec, "delay_ms"): sink({"kind": "opus"}),
    (RouteSpec, "gain_db"): route,
    (RouteSpec, "source_channel"): route,
    (Variant, "balance"): variant,
}


def _step(value: Any) -> Any:
    return 1 if isinstance(value, int) else 0.001


def _below(lo: Any) -> Any:
    """One step below a lower bound. Zero is "the default" in every C config
    struct, so below a bound of 1 the step goes on to -1."""
    past = lo - _step(lo)
    return past - _step(lo) if past == 0 else past


def cases(meta: Any) -> list[tuple[Any, bool]]:
    """(value, whether the engine must take it): the bounds, and one step past each."""
    if "range" in meta:
        lo, hi = meta["range"]
        return [(lo, True), (hi, True), (_below(lo), False), (hi + _step(hi), False)]
    choices = meta["choices"]
    outside = {_below(min(choices)), max(choices) + _step(max(choices)),
               *(c + _step(c) for c in choices)} - set(choices)
    return [(c, True) for c in choices] + [(v, False) for v in sorted(outside)]


BOUNDED = [(cls, name) for cls in ENGINE_SPECS.values()
           for name, meta in bounded_fields(cls).items() if meta.get("engine", True)]


async def refusal(attempt: Attempt, engine: Engine, name: str, value: Any) -> ErrorCode | None:
    """The engine's refusal of a value (INVALID: its bounds), or None. Other
    errors (a port the system will not bind) mean the value passed its checks."""
    try:
        await attempt(engine, name, value)
    except EngineError as e:
        return e.code
    return None


async def settings_refusal(_engine: Any, name: str, value: Any) -> ErrorCode | None:
    try:
        async with open_engine(dataclasses.replace(SETTINGS, **{name: value})):
            pass
    except EngineError as e:
        return e.code
    return None


@pytest.mark.trio
@pytest.mark.parametrize("cls,name", BOUNDED, ids=[f"{c.__name__}.{n}" for c, n in BOUNDED])
async def test_the_engine_takes_each_bound_of_the_model_and_refuses_past_it(cls, name):
    meta = bounded_fields(cls)[name]
    wrong = []
    if cls is EngineSettings:
        for value, taken in cases(meta):
            code = await settings_refusal(None, name, value)
            if (code != ErrorCode.INVALID) != taken:
                wrong.append((value, taken, code))
    else:
        if (cls, name) not in REACH:
            pytest.fail(f"{cls.__name__}.{name} has a bound: say in REACH how it reaches the "
                        "engine, or mark it {'engine': False} in the model")
        async with open_engine(SETTINGS) as engine:
            for value, taken in cases(meta):
                code = await refusal(REACH[cls, name], engine, name, value)
                if (code != ErrorCode.INVALID) != taken:
                    wrong.append((value, taken, code))
    assert not wrong, f"{cls.__name__}.{name} {meta}: (value, should take, engine said) {wrong}"


@pytest.mark.trio
async def test_the_change_calls_check_the_same_bounds():
    """Changing a tone, a delay or a gain while it runs: the same bounds as creating."""
    tone = bounded_fields(SourceSpec)
    delay = bounded_fields(SinkSpec)["delay_ms"]["range"]
    gain = bounded_fields(RouteSpec)["gain_db"]["range"]
    async with open_engine(SETTINGS) as engine:
        await engine.add_source("t", SourceSpec(kind="tone"))
        await engine.add_sink("k", SinkSpec(kind="opus"))
        await engine.add_route("r", RouteSpec(source_id="t", sink_id="k"))
        hz, dbfs = tone["tone_hz"]["range"], tone["tone_dbfs"]["range"]
        for value in (*hz, 440.0):
            engine.set_tone("t", value, -12.0)
        for value in dbfs:
            engine.set_tone("t", 440.0, value)
        for lo_hi, call in ((delay, lambda v: engine.set_sink_delay("k", v)),
                            (gain, lambda v: engine.update_route("r", gain_db=v))):
            for value in lo_hi:
                call(value)
            for value in (_below(lo_hi[0]), lo_hi[1] + _step(lo_hi[1])):
                with pytest.raises(EngineError) as refused:
                    call(value)
                assert refused.value.code == ErrorCode.INVALID, value
        for hz_value, db_value in ((hz[1] + 0.001, -12.0), (440.0, dbfs[0] - 0.001)):
            with pytest.raises(EngineError):
                engine.set_tone("t", hz_value, db_value)
        await engine.remove_route("r")


@pytest.mark.trio
async def test_the_named_limits_are_the_engines():
    """The model's named limits that no field's range states: an Opus sink's
    channels, a network source's allow list, a Scream program tag."""
    async with open_engine(SETTINGS) as engine:
        attempts = [
            (sink({"kind": "opus"}), "channels", OPUS_MAX_CHANNELS),
            (source(SCREAM), "allow_from",
             tuple(f"192.0.2.{i}" for i in range(MAX_SENDER_PREFIXES))),
            (source(SCREAM), "program", "p" * SCREAM_PROGRAM_LEN),
        ]
        for attempt, name, at_limit in attempts:
            assert await refusal(attempt, engine, name, at_limit) is None, name
            past = at_limit + 1 if isinstance(at_limit, int) else at_limit + at_limit[-1:]
            assert await refusal(attempt, engine, name, past) == ErrorCode.INVALID, name


def test_the_checked_in_header_is_the_models():
    """native/ae_limits.h is what the model makes of its bounds (the build
    rewrites it; this says when a commit changed the model without it)."""
    assert engine_limits.HEADER.read_text() == engine_limits.render(), \
        "run: python -m appliance.engine_limits (or rebuild the engine) and commit the header"
