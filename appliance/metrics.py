"""``GET /metrics`` in Prometheus' text format, through ``prometheus_client``:
what a fleet's monitoring (Prometheus, Grafana, any scraper) reads of a box.

Everything comes from the same reading as ``/api/status`` (``Service.status``
plus the guess budget's refusals), taken at each scrape, so the two never
disagree and nothing is counted twice. Names follow Prometheus' conventions:
``appliance_`` first, base units (seconds, ratios), ``_total`` for counters.
The process' own CPU, memory and fds are ``prometheus_client``'s process
collector (``process_…``).

Listener health is summarised per target (a channel, or a source or route
the admin listens to) as quantiles of what the listeners' RTCP reports say:
``appliance_listener_rtt_seconds{kind, id, quantile}`` and the same for
jitter and loss. A target with no report yet has none.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily
from prometheus_client.registry import Collector

from .board import FLAGS

__all__ = ["CONTENT_TYPE", "scrape"]

# text format 0.0.4, what every Prometheus reads
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUANTILES = (0.5, 0.95, 1.0)
FLAG_NAMES = tuple(FLAGS)


def _quantiles(values: list[float]) -> Iterator[tuple[str, float]]:
    ordered = sorted(values)
    for q in QUANTILES:
        # nearest rank: the value at or below which q of the listeners are
        yield f"{q:g}", ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


class StatusCollector(Collector):
    """Metric families from one status reading (``read()`` at each scrape)."""

    def __init__(self, read: Callable[[], dict[str, Any]]) -> None:
        self.read = read

    def collect(self) -> Iterable[Any]:
        status = self.read()
        yield InfoMetricFamily("appliance", "The box's name and software version",
                               value={"name": status["name"], "version": status["version"]})
        yield GaugeMetricFamily("appliance_uptime_seconds", "Seconds since the service started",
                                value=status["uptime_s"])
        yield from self._listeners(status)
        yield from self._devices(status)
        yield from self._network_sources(status.get("network_sources", {}))
        yield from self._publications(status.get("publications", []))
        yield from self._relays(status.get("relays", []))
        yield from self._board(status.get("board"))
        yield from self._engine(status["engine"])
        guessing = GaugeMetricFamily(
            "appliance_guesses_refused", "Guesses at a secret refused unchecked in the last "
            "5 minutes (someone on the network is guessing it)", labels=["secret"])
        for secret, refused in status.get("guessing", {}).items():
            guessing.add_metric([secret], refused)
        yield guessing

    @staticmethod
    def _listeners(status: dict[str, Any]) -> Iterator[Any]:
        counts = status["listeners"]
        listeners = GaugeMetricFamily("appliance_listeners", "Listeners with an answer, by what "
                                      "they hear (a channel is a sink)", labels=["kind", "id"])
        for kind in ("sink", "source", "route"):
            for ident, n in sorted(counts[kind + "s"].items()):
                listeners.add_metric([kind, ident], n)
        yield listeners
        yield GaugeMetricFamily("appliance_listeners_max", "The listener cap",
                                value=status["max_listeners"])
        by_transport = GaugeMetricFamily("appliance_listeners_by_transport",
                                         "Listeners by transport", labels=["transport"])
        transports: dict[str, int] = {}
        for session in status["sessions"]:
            name = session["transport"] or "connecting"
            transports[name] = transports.get(name, 0) + 1
        for name, n in sorted(transports.items()):
            by_transport.add_metric([name], n)
        yield by_transport
        # what the listeners' receiver reports say, per target
        families = {
            "rtt_ms": GaugeMetricFamily("appliance_listener_rtt_seconds", "Round-trip time "
                                        "of a target's listeners", labels=["kind", "id", "quantile"]),
            "jitter_ms": GaugeMetricFamily("appliance_listener_jitter_seconds", "Interarrival "
                                           "jitter of a target's listeners",
                                           labels=["kind", "id", "quantile"]),
            "fraction_lost": GaugeMetricFamily("appliance_listener_loss_ratio", "Fraction of "
                                               "packets lost, of a target's listeners",
                                               labels=["kind", "id", "quantile"]),
        }
        grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for session in status["sessions"]:
            grouped.setdefault((session["kind"], session["id"]), []).append(session)
        for (kind, ident), sessions in sorted(grouped.items()):
            for field, family in families.items():
                scale = 1000.0 if field.endswith("_ms") else 1.0
                values = [s[field] / scale for s in sessions if s[field] is not None]
                if values:
                    for q, value in _quantiles(values):
                        family.add_metric([kind, ident, q], value)
        yield from families.values()

    @staticmethod
    def _devices(status: dict[str, Any]) -> Iterator[Any]:
        up = GaugeMetricFamily("appliance_device_up", "1 while a sound device works, 0 while "
                               "it is lost", labels=["kind", "id"])
        for device in status["devices"]:
            up.add_metric([device["kind"], device["id"]], 1 if device["state"] == "ok" else 0)
        yield up
        xruns = CounterMetricFamily("appliance_xruns", "Over- and underruns of a sound device",
                                    labels=["kind", "id"])
        for kind in ("source", "sink"):
            for ident, n in sorted(status["xruns"][kind + "s"].items()):
                xruns.add_metric([kind, ident], n)
        yield xruns

    @staticmethod
    def _network_sources(sources: dict[str, dict[str, Any]]) -> Iterator[Any]:
        datagrams = CounterMetricFamily("appliance_network_source_datagrams", "Datagrams at a "
                                        "network source: taken, or refused and why",
                                        labels=["id", "outcome"])
        buffered = GaugeMetricFamily("appliance_network_source_buffered_seconds", "Audio kept "
                                     "ahead of the mixer (while something reads it)",
                                     labels=["id"])
        steering = GaugeMetricFamily("appliance_network_source_correction_ratio", "The "
                                     "resampler's steering against the sender's clock",
                                     labels=["id"])
        resyncs = CounterMetricFamily("appliance_network_source_resyncs", "Times the mixer "
                                      "started again from the target (a gap, a jump)",
                                      labels=["id"])
        receiving = GaugeMetricFamily("appliance_network_source_receiving", "1 while the "
                                      "stream comes (something in the last second)",
                                      labels=["id"])
        jitter = GaugeMetricFamily("appliance_network_source_jitter_seconds", "RTP "
                                   "interarrival jitter (RFC 3550)", labels=["id"])
        for ident, stats in sorted(sources.items()):
            for outcome, key in (("taken", "packets"), ("refused", "refused"),
                                 ("malformed", "malformed"), ("other_program", "other_program"),
                                 ("late", "late"), ("lost", "lost"), ("reordered", "reordered")):
                datagrams.add_metric([ident, outcome], stats[key])
            if stats["buffered_ms"] is not None:
                buffered.add_metric([ident], stats["buffered_ms"] / 1000)
            steering.add_metric([ident], stats["correction_ppm"] / 1e6)
            resyncs.add_metric([ident], stats["resyncs"])
            receiving.add_metric([ident], 1 if stats["receiving"] else 0)
            jitter.add_metric([ident], stats["jitter_ms"] / 1000)
        yield from (datagrams, buffered, steering, resyncs, receiving, jitter)

    @staticmethod
    def _publications(publications: list[dict[str, Any]]) -> Iterator[Any]:
        live = GaugeMetricFamily("appliance_publication_live", "1 while a channel's "
                                 "publication to a WHIP server is live", labels=["id", "channel"])
        attempts = CounterMetricFamily("appliance_publication_attempts", "Offers POSTed "
                                       "(one more after each failure)", labels=["id"])
        packets = CounterMetricFamily("appliance_publication_packets_sent", "RTP packets "
                                      "sent in the current attempt", labels=["id"])
        bitrate = GaugeMetricFamily("appliance_publication_bitrate_bits_per_second",
                                    "What the publication sends", labels=["id"])
        rtt = GaugeMetricFamily("appliance_publication_rtt_seconds", "Round trip to the "
                                "server (its receiver reports)", labels=["id"])
        loss = GaugeMetricFamily("appliance_publication_loss_ratio", "Fraction lost, as the "
                                 "server reports it", labels=["id"])
        for publication in publications:
            ident = publication["id"]
            live.add_metric([ident, publication["sink_id"]],
                            1 if publication["state"] == "live" else 0)
            attempts.add_metric([ident], publication["attempts"])
            packets.add_metric([ident], publication["packets_sent"])
            for family, value, scale in ((bitrate, publication["bitrate_bps"], 1),
                                         (rtt, publication["rtt_ms"], 1000),
                                         (loss, publication["fraction_lost"], 1)):
                if value is not None:
                    family.add_metric([ident], value / scale)
        yield from (live, attempts, packets, bitrate, rtt, loss)

    @staticmethod
    def _relays(relays: list[dict[str, Any]]) -> Iterator[Any]:
        up = GaugeMetricFamily("appliance_relay_up", "1 while a Janus relay carries its "
                               "channels", labels=["id"])
        attempts = CounterMetricFamily("appliance_relay_attempts", "Times the relay was set "
                                       "up (one more after each failure)", labels=["id"])
        viewers = GaugeMetricFamily("appliance_relay_viewers", "Listeners on a relay's "
                                    "mountpoint, as Janus counts them",
                                    labels=["id", "channel"])
        packets = CounterMetricFamily("appliance_relay_packets_sent", "RTP packets forwarded "
                                      "to a relay's mountpoint", labels=["id", "channel"])
        for relay in relays:
            ident = relay["id"]
            up.add_metric([ident], 1 if relay["state"] == "up" else 0)
            attempts.add_metric([ident], relay["attempts"])
            for carried in relay["carried"]:
                if carried["viewers"] is not None:
                    viewers.add_metric([ident, carried["sink_id"]], carried["viewers"])
                packets.add_metric([ident, carried["sink_id"]], carried["packets_sent"])
        yield from (up, attempts, viewers, packets)

    @staticmethod
    def _board(board: dict[str, Any] | None) -> Iterator[Any]:
        if board is None:
            return
        flags = GaugeMetricFamily("appliance_board_flag", "The firmware's flags (1: set), now "
                                  "and since boot; none on a board without them",
                                  labels=["flag", "when"])
        for when in ("now", "since_boot"):
            if board[when] is not None:
                for flag in FLAG_NAMES:
                    flags.add_metric([flag, when], 1 if flag in board[when] else 0)
        yield flags
        temperature = GaugeMetricFamily("appliance_board_temperature_celsius",
                                        "Each thermal zone", labels=["zone"])
        for zone, celsius in sorted(board["thermal_zones"].items()):
            temperature.add_metric([zone], celsius)
        yield temperature
        yield GaugeMetricFamily("appliance_board_clock_synchronized", "1 once network time "
                                "set the clock", value=1 if board["clock_synchronized"] else 0)
        if board["disk_free_bytes"] is not None:
            yield GaugeMetricFamily("appliance_board_disk_free_bytes", "Free space of the state "
                                    "folder's file system", value=board["disk_free_bytes"])

    @staticmethod
    def _engine(engine: dict[str, Any]) -> Iterator[Any]:
        entities = GaugeMetricFamily("appliance_engine_entities", "The engine's sources, "
                                     "sinks, routes and listeners", labels=["kind"])
        for kind in ("sources", "sinks", "routes", "listeners"):
            entities.add_metric([kind], engine[kind])
        yield entities
        yield GaugeMetricFamily("appliance_engine_threads", "The engine's threads",
                                value=engine["threads"])
        events = CounterMetricFamily("appliance_engine_events", "Engine events, by fate",
                                     labels=["fate"])
        for fate, key in (("posted", "events_posted"), ("coalesced", "events_coalesced"),
                          ("dropped", "events_dropped")):
            events.add_metric([fate], engine[key])
        yield events
        lean = engine["lean"]
        datagrams = CounterMetricFamily("appliance_lean_datagrams", "Datagrams on the lean "
                                        "transport's port, and those it refused, by why",
                                        labels=["outcome"])
        datagrams.add_metric(["received"], lean["datagrams_in"])
        for outcome in ("stun_rejected", "dtls_rejected", "rtcp_rejected", "junk",
                        "send_dropped"):
            datagrams.add_metric([outcome], lean[outcome])
        yield datagrams


def scrape(read_status: Callable[[], dict[str, Any]]) -> bytes:
    """The text a scraper gets: the status' families and the process'."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(read_status))
    ProcessCollector(registry=registry)
    return generate_latest(registry)
