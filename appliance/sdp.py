"""What the Python side knows about SDP: checking a WHEP offer before any
transport sees it, reading trickle-ICE fragments and candidates, and reading
the description of an RTP stream a network source takes (``describe_stream``).

Standard players offer more than audio: a video m-line (Chromium lists ~34
video formats in it, Firefox puts it first), a data channel, Firefox's
``max-bundle`` marks every m-line after the first ``a=bundle-only`` with port
0 (RFC 8843 section 6). Any mix, in any order, is accepted: the first usable
Opus audio m-line is served and the engine rejects the others in its answer
(port 0, as JSEP answers, RFC 8829 section 5.3.1). Only an offer with no
audio the server can send is refused, with a message saying why.

Every line and value is still checked against plain limits: webrtcbin (the
engine's fallback transport) trusts its input, and a GLib assertion inside it
aborts the whole process (an offer whose first m-line is a data channel did,
measured 2026-12-01, GStreamer 1.22; tests/support/offers), so the engine
hands it only the shapes it was tested with (``ae_wr_declines``) and the
grammar is checked here. Everything else is refused with an ``InvalidError``
whose message names the problem.

Pure: the standard library and ``appliance.errors`` only.
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidError

__all__ = ["Offer", "check_offer", "parse_sdpfrag", "check_candidate", "parse_candidates_json",
           "is_hostname_candidate", "StreamDescription", "describe_stream",
           "MAX_OFFER_CHARS", "MAX_LINES", "MAX_LINE_CHARS", "MAX_MLINES", "MAX_FORMATS"]

# Real offers (tests/support/offers): 1.2-3.6 KB, 30-75 lines, 1-2 m-lines,
# longest line ~210 characters (a sha-512 fingerprint).
MAX_OFFER_CHARS = 32 * 1024
MAX_LINES = 500
MAX_LINE_CHARS = 1024
MAX_MLINES = 8
# Chromium's video m-line lists 34 formats (VP8, VP9 profiles, H.264
# profiles, AV1, H.265, each with rtx, red, ulpfec)
MAX_FORMATS = 64
MAX_FRAGMENT_CHARS = 16 * 1024
MAX_CANDIDATE_CHARS = 512
MAX_JSON_CANDIDATES = 64

SESSION_TYPES = frozenset("vosiuepcbtrza")
MEDIA_TYPES = frozenset("icba")
RTP_PROTO = "UDP/TLS/RTP/SAVPF"
DATA_PROTO = "UDP/DTLS/SCTP"
FINGERPRINT_BYTES = {"sha-1": 20, "sha-224": 28, "sha-256": 32, "sha-384": 48, "sha-512": 64}
SETUP_ROLES = frozenset({"actpass", "active"})
DIRECTIONS = frozenset({"sendrecv", "sendonly", "recvonly", "inactive"})
# fmtp keys that would overwrite the caps the engine builds from them
RESERVED_FMTP = frozenset({"media", "payload", "clock-rate", "encoding-name", "encoding-params",
                           "ssrc", "timestamp-offset", "seqnum-offset"})

_ATTR = re.compile(r"a=([A-Za-z0-9][A-Za-z0-9_.-]{0,63})(?::(.*))?\Z")
_MID = re.compile(r"[A-Za-z0-9_.~+-]{1,32}\Z")
_ICE_CHARS = re.compile(r"[A-Za-z0-9+/]+\Z")
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]{1,64}\Z")
# a candidate extension's value (RFC 8839: *VCHAR): browsers send their ICE
# ufrag there, whose characters include "/" and "+"
_EXTENSION_VALUE = re.compile(r"[!-~]{1,256}\Z")
_HEX_PAIRS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2})*\Z")
_HOSTNAME = re.compile(
    r"(?=.{1,253}\Z)[A-Za-z0-9](?:[A-Za-z0-9-]{0,62})(?:\.[A-Za-z0-9-]{1,63})*\.?\Z")
_FMTP_PARAM = re.compile(r"([A-Za-z][A-Za-z0-9-]{0,31})=([A-Za-z0-9.-]{0,32})\Z")
_RTPMAP = re.compile(r"([0-9]{1,3}) ([A-Za-z0-9_.-]{1,32})/([0-9]{1,6})(?:/([0-9]{1,2}))?\Z")
_DIGITS = re.compile(r"[0-9]{1,10}\Z")
_VISIBLE = re.compile(r"[!-~]{1,128}\Z")
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4 = re.compile(rf"{_OCTET}(?:\.{_OCTET}){{3}}\Z")


@dataclass(frozen=True)
class Offer:
    """A checked offer. ``sdp`` is the text to hand the engine (CRLF line
    ends, no blank lines, no host-name candidates: see
    ``is_hostname_candidate``); ``mids`` the mids by m-line index; the audio
    the server sends on is m-line ``audio``. ``stereo``: the offer's Opus
    parameters ask for stereo (``stereo=1``), without which Chromium decodes
    a stereo channel as mono."""
    sdp: str
    mids: list[str]
    audio: int
    ice_ufrag: str | None
    ice_pwd: str
    opus_pt: int
    opus_fmtp: str | None
    fingerprints: tuple[tuple[str, str], ...]   # (hash, hex pairs), as offered
    setup: str
    datachannel: bool
    bundle: tuple[str, ...]                      # the BUNDLE group's mids; () without one
    stereo: bool = False

    @property
    def audio_mid(self) -> str:
        return self.mids[self.audio]


# ---- lines ------------------------------------------------------------------------

def _number(text: str, digits: int) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() refuses."""
    return 1 <= len(text) <= digits and text.isascii() and text.isdigit()


def _printable(text: str, what: str) -> None:
    """Refuses control characters (NUL, CR inside a line, ESC...), lone
    surrogates and other unprintable code points."""
    if not text.isprintable():
        bad = next(c for c in text if not c.isprintable())
        raise InvalidError(f"{what} contains the control or unprintable character U+{ord(bad):04X}")


def _lines(text: Any, *, what: str, max_chars: int) -> list[str]:
    if not isinstance(text, str):
        raise InvalidError(f"the {what} is not text")
    if len(text) > max_chars:
        raise InvalidError(f"the {what} is longer than {max_chars} characters")
    # one look at the whole text instead of one per line (the common case):
    # without its line ends, is it all printable?
    body = text.replace("\r\n", "").replace("\n", "")
    printable = (body[:-1] if text.endswith("\r") else body).isprintable()
    lines = []
    for raw in text.split("\n"):
        line = raw[:-1] if raw.endswith("\r") else raw
        line = line.rstrip(" ")
        if not line:
            continue
        if len(line) > MAX_LINE_CHARS:
            raise InvalidError(f"a line of the {what} is longer than {MAX_LINE_CHARS} characters")
        if not printable:
            _printable(line, f"the {what}")
        if len(line) < 2 or line[1] != "=" or not "a" <= line[0] <= "z":
            raise InvalidError(f"not an SDP line (x=...): {line[:60]!r}")
        lines.append(line)
        if len(lines) > MAX_LINES:
            raise InvalidError(f"the {what} has more than {MAX_LINES} lines")
    return lines


def _attribute(line: str) -> tuple[str, str | None]:
    match = _ATTR.match(line)
    if not match:
        raise InvalidError(f"not an SDP attribute: {line[:60]!r}")
    # case kept: GStreamer matches attribute names exactly, so "a=ICE-UFRAG"
    # is no ufrag to webrtcbin and must be none here either
    return match.group(1), match.group(2)


# ---- candidates --------------------------------------------------------------------

def _is_ip(text: str) -> bool:
    """An IP literal, as ``ipaddress`` reads it; dotted-quad IPv4 (every
    address in a typical offer) without building an address object."""
    if _IPV4.match(text):
        return True
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def _address(text: str, what: str) -> None:
    if _is_ip(text):
        return
    if not _HOSTNAME.match(text) or _number(text.replace(".", ""), 253):
        raise InvalidError(f"{what}: {text[:60]!r} is not an address or host name")


def _port(text: str, what: str) -> int:
    if not _number(text, 5) or int(text) > 65535:
        raise InvalidError(f"{what}: {text[:20]!r} is not a port")
    return int(text)


def is_hostname_candidate(candidate: str) -> bool:
    """Whether a checked candidate names its address by a host name (mDNS
    ``.local`` from browsers) instead of an IP literal. Such candidates are
    dropped: webrtcbin resolves them through the system resolver, each lookup
    held ~4 fds for tens of seconds (measured 2026-12-01: 10 Chromium offers,
    +40 fds after every session had ended), so a flood of them exhausts the
    fds, and any name in an offer would make the box send DNS queries.
    Without them the connection still comes up through the peer-reflexive
    candidates the browser's checks create."""
    fields = candidate.split(" ")
    if len(fields) < 5:
        return False
    return not _is_ip(fields[4])


def check_candidate(text: Any) -> str:
    """Check one ICE candidate (RFC 8839 grammar; with or without ``a=``);
    returns it as ``candidate:...``, or "" for end-of-candidates."""
    if not isinstance(text, str):
        raise InvalidError("a candidate must be a string")
    if len(text) > MAX_CANDIDATE_CHARS:
        raise InvalidError(f"a candidate is longer than {MAX_CANDIDATE_CHARS} characters")
    if not text.isascii():
        raise InvalidError("a candidate must be ASCII")
    _printable(text, "a candidate")
    text = text.strip()
    if text.startswith("a="):
        text = text[2:]
    if text in ("", "end-of-candidates"):
        return ""
    if not text.startswith("candidate:"):
        raise InvalidError(f"not an ICE candidate: {text[:60]!r}")
    fields = text[len("candidate:"):].split(" ")
    if len(fields) < 8 or len(fields) % 2:
        raise InvalidError(f"an ICE candidate needs 8 fields and name/value pairs: {text[:60]!r}")
    foundation, component, transport, priority, address, port, typ, kind = fields[:8]
    if not 1 <= len(foundation) <= 32 or not _ICE_CHARS.match(foundation):
        raise InvalidError("candidate: bad foundation")
    if not _number(component, 3) or not 1 <= int(component) <= 256:
        raise InvalidError("candidate: bad component id")
    if transport.lower() not in ("udp", "tcp"):
        raise InvalidError(f"candidate: transport must be UDP or TCP, not {transport[:20]!r}")
    if not _DIGITS.match(priority) or int(priority) >= 2**32:
        raise InvalidError("candidate: bad priority")
    _address(address, "candidate")
    _port(port, "candidate")
    if typ != "typ" or kind not in ("host", "srflx", "prflx", "relay"):
        raise InvalidError("candidate: expected 'typ host|srflx|prflx|relay'")
    extensions = fields[8:]
    if len(extensions) > 32:
        raise InvalidError("candidate: too many extensions")
    for name, value in zip(extensions[::2], extensions[1::2], strict=False):   # a lone name is checked below
        if name == "raddr":
            _address(value, "candidate raddr")
        elif name == "rport":
            _port(value, "candidate rport")
        elif not _TOKEN.match(name) or not _EXTENSION_VALUE.match(value):
            raise InvalidError(f"candidate: bad extension {name[:30]!r}")
    return text


def _check_mid(mid: str) -> str:
    if not _MID.match(mid):
        raise InvalidError(f"a=mid must be 1-32 letters, digits or _.~+-, not {mid[:40]!r}")
    return mid


Found = list[tuple[str | None, int | None, str]]   # (mid, m-line index, candidate)


def parse_sdpfrag(text: Any) -> tuple[str | None, str | None, Found]:
    """Parse an RFC 8840 trickle-ice-sdpfrag: returns (ufrag, pwd, [(mid,
    m-line index within the fragment, candidate)]); candidate "" is
    end-of-candidates. Every candidate is checked (``check_candidate``);
    host-name candidates are left out (``is_hostname_candidate``)."""
    ufrag = pwd = None
    out: Found = []
    mid: str | None = None
    section: int | None = None
    lines = _lines(text, what="SDP fragment", max_chars=MAX_FRAGMENT_CHARS)
    if not lines:
        raise InvalidError("empty SDP fragment")
    for line in lines:
        if line.startswith("m="):
            section = 0 if section is None else section + 1
            if section >= MAX_MLINES:
                raise InvalidError(f"the fragment has more than {MAX_MLINES} m-lines")
            mid = None
        elif line.startswith("a=mid:"):
            mid = _check_mid(line[len("a=mid:"):].strip())
            # a=mid may follow the candidates of its section
            out = [(mid if (s == section and m is None) else m, s, c) for m, s, c in out]
        elif line.startswith("a=ice-ufrag:"):
            ufrag = line[len("a=ice-ufrag:"):].strip()
        elif line.startswith("a=ice-pwd:"):
            pwd = line[len("a=ice-pwd:"):].strip()
        elif line.startswith("a=candidate:"):
            candidate = check_candidate(line[2:])
            if not is_hostname_candidate(candidate):  # see is_hostname_candidate
                out.append((mid, section, candidate))
        elif line.startswith("a=end-of-candidates"):
            out.append((mid, section, ""))
    return ufrag, pwd, out


def parse_candidates_json(body: Any) -> Found:
    """The JSON trickle form: one ``{"candidate", "sdpMid", "sdpMLineIndex"}``
    object or a list of them; returns [(mid, index, candidate)] like
    ``parse_sdpfrag``."""
    items = body if isinstance(body, list) else [body]
    if len(items) > MAX_JSON_CANDIDATES:
        raise InvalidError(f"at most {MAX_JSON_CANDIDATES} candidates per request")
    out = []
    for item in items:
        if not isinstance(item, dict) or "candidate" not in item:
            raise InvalidError('expected {"candidate": ..., "sdpMid": ...}')
        cand = item.get("candidate") or ""
        mid = item.get("sdpMid")
        index = item.get("sdpMLineIndex")
        if not isinstance(cand, str) or (mid is not None and not isinstance(mid, str)) \
                or (index is not None and (isinstance(index, bool) or not isinstance(index, int))):
            raise InvalidError("candidate and sdpMid must be strings, sdpMLineIndex an integer")
        if mid is not None:
            _check_mid(mid)
        if index is not None and not 0 <= index < MAX_MLINES:
            raise InvalidError(f"no m-line {index}")
        candidate = check_candidate(cand)
        if not is_hostname_candidate(candidate):  # see is_hostname_candidate
            out.append((mid, index, candidate))
    return out


# ---- offers ----------------------------------------------------------------------------

@dataclass
class _Section:
    index: int
    media: str
    port: int
    proto: str
    formats: list[str]
    attrs: list[tuple[str, str | None]]
    by_name: dict[str, list[str | None]] = field(default_factory=dict)

    def add(self, attribute: tuple[str, str | None]) -> None:
        self.attrs.append(attribute)
        self.by_name.setdefault(attribute[0], []).append(attribute[1])

    def values(self, name: str) -> list[str | None]:
        return self.by_name.get(name, [])

    def one(self, name: str) -> str | None:
        values = self.values(name)
        if len(values) > 1:
            raise InvalidError(f"m-line {self.index} has more than one a={name}")
        return values[0] if values else None


def _mline(line: str, index: int) -> _Section:
    parts = line[2:].split(" ")
    if len(parts) < 4:
        raise InvalidError(f"m-line {index} needs media, port, protocol and formats")
    media, port, proto, formats = parts[0], parts[1], parts[2], parts[3:]
    if media not in ("audio", "video", "application"):
        raise InvalidError(f"m-line {index}: media {media[:20]!r} is not audio, video "
                           "or application")
    number = _port(port, f"m-line {index}")
    if len(formats) > MAX_FORMATS:
        raise InvalidError(f"m-line {index} lists more than {MAX_FORMATS} formats")
    if media == "application":
        if proto != DATA_PROTO or formats != ["webrtc-datachannel"]:
            raise InvalidError(f"m-line {index}: a data channel must be "
                               f"'{DATA_PROTO} webrtc-datachannel'")
    else:
        if proto != RTP_PROTO:
            raise InvalidError(f"m-line {index}: {media} must use {RTP_PROTO} (DTLS-SRTP), "
                               f"not {proto[:30]!r}")
        if any(not _number(f, 3) or int(f) > 127 for f in formats) \
                or len(set(formats)) != len(formats):
            raise InvalidError(f"m-line {index}: formats must be distinct payload types 0-127")
    return _Section(index, media, number, proto, formats, [])


def _session_line(line: str) -> None:
    kind, value = line[0], line[2:]
    if kind == "o":
        fields = value.split(" ")
        if len(fields) != 6 or fields[3] != "IN" or fields[4] not in ("IP4", "IP6") \
                or not _number(fields[1], 20) or not _number(fields[2], 20):
            raise InvalidError("o= must be '<user> <session id> <version> IN IP4|IP6 <address>'")
    elif kind == "t":
        fields = value.split(" ")
        if len(fields) != 2 or not all(_number(f, 20) for f in fields):
            raise InvalidError("t= must be two integers")


def _connection(value: str, where: str) -> None:
    fields = value.split(" ")
    if len(fields) != 3 or fields[0] != "IN" or fields[1] not in ("IP4", "IP6"):
        raise InvalidError(f"{where}: c= must be 'IN IP4|IP6 <address>'")
    _address(fields[2], f"{where} c=")


def _bandwidth(value: str, where: str) -> None:
    kind, _, number = value.partition(":")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,15}", kind) or not _DIGITS.match(number):
        raise InvalidError(f"{where}: b= must be '<type>:<number>'")


def _opus(section: _Section) -> tuple[int, str | None]:
    """The Opus payload type the engine will pick (the first listed Opus
    rtpmap, as ae_sdp.c does) and its fmtp."""
    where = f"m-line {section.index}"
    rtpmaps: dict[str, str] = {}
    opus: int | None = None
    for value in section.values("rtpmap"):
        match = _RTPMAP.match(value or "")
        if not match:
            raise InvalidError(f"{where}: bad a=rtpmap {str(value)[:40]!r}")
        pt = match.group(1)
        if pt in rtpmaps:
            raise InvalidError(f"{where}: two a=rtpmap lines for payload type {pt}")
        rtpmaps[pt] = value or ""
        if opus is None and pt in section.formats and match.group(2).lower() == "opus" \
                and match.group(3) == "48000":
            if match.group(4) not in (None, "2"):
                raise InvalidError(f"{where}: Opus must be opus/48000/2")
            opus = int(pt)
    if opus is None:
        raise InvalidError(f"{where} (audio) offers no Opus/48000 the server can send")
    if not (35 <= opus <= 63 or 96 <= opus <= 127):
        raise InvalidError(f"Opus payload type {opus} is not a dynamic one (35-63, 96-127)")
    fmtp = None
    for value in section.values("fmtp"):
        pt, _, params = (value or "").partition(" ")
        if pt != str(opus):
            continue
        if fmtp is not None:
            raise InvalidError(f"{where}: two a=fmtp lines for payload type {opus}")
        if len(params) > 256:
            raise InvalidError("the Opus a=fmtp is longer than 256 characters")
        for param in params.split(";"):
            match = _FMTP_PARAM.match(param.strip())
            if not match:
                raise InvalidError(f"the Opus a=fmtp has a bad parameter {param[:40]!r}")
            if match.group(1).lower() in RESERVED_FMTP:
                raise InvalidError(f"the Opus a=fmtp may not set {match.group(1)!r}")
        fmtp = params
    return opus, fmtp


def _fingerprint(value: str | None) -> tuple[str, str]:
    algorithm, _, digest = (value or "").partition(" ")
    size = FINGERPRINT_BYTES.get(algorithm.lower())
    if size is None:
        raise InvalidError(f"a=fingerprint: unknown hash {algorithm[:20]!r}")
    if not _HEX_PAIRS.match(digest) or len(digest) != 3 * size - 1:
        raise InvalidError(f"a=fingerprint: a {algorithm} digest is {size} hex pairs")
    return algorithm.lower(), digest


def _ice(value: str | None, what: str, low: int) -> str:
    value = value or ""
    if not low <= len(value) <= 256 or not _ICE_CHARS.match(value):
        raise InvalidError(f"a={what} must be {low}-256 characters of A-Z a-z 0-9 + /")
    return value


# session-level attributes: (name, value or None), as offered
_Attributes = list[tuple[str, str | None]]
# an m-line's ICE ufrag and pwd, DTLS setup role and fingerprints
_Transport = tuple[str, str, str, tuple[tuple[str, str], ...]]


def check_offer(text: Any, *, publish: bool = False) -> Offer:
    """Parse and check a WHEP offer (or with ``publish`` a WHIP one, whose
    audio is sent to us); returns the ``Offer`` to hand the engine, or
    raises ``InvalidError`` with a plain reason."""
    lines = _lines(text, what="offer", max_chars=MAX_OFFER_CHARS)
    session, sections = _offer_sections(lines)
    mids = _check_mids(sections)
    _check_tested_shapes(session, sections)
    bundle = _bundle_group(session, sections, mids)
    _check_formats(sections, mids, bundle)
    audio, (opus_pt, opus_fmtp) = _audio_to_serve(sections, mids, bundle, publish)
    ufrag, pwd, setup, fingerprints = _check_transport(session, sections, audio, mids, bundle)
    _check_candidates(session, sections)
    return Offer(sdp=_engine_sdp(lines), mids=mids, audio=audio.index,
                 ice_ufrag=ufrag, ice_pwd=pwd, opus_pt=opus_pt, opus_fmtp=opus_fmtp,
                 fingerprints=fingerprints, setup=setup,
                 datachannel=any(s.media == "application" for s in sections), bundle=bundle,
                 stereo=_asks_stereo(opus_fmtp))


def _offer_sections(lines: list[str]) -> tuple[_Attributes, list[_Section]]:
    """The grammar: v=0 first, each line of a kind allowed where it stands,
    o=, s= and t= once each, one m-line at least and no more than
    MAX_MLINES. Returns the session-level attributes and the m-lines."""
    if not lines or lines[0] != "v=0":
        raise InvalidError("the body is not an SDP offer: it must start with v=0")
    session: _Attributes = []
    sections: list[_Section] = []
    seen = set()
    for line in lines[1:]:
        kind = line[0]
        if kind == "m":
            if len(sections) >= MAX_MLINES:
                raise InvalidError(f"the offer has more than {MAX_MLINES} m-lines")
            sections.append(_mline(line, len(sections)))
            continue
        if kind == "v":
            raise InvalidError("the offer has a second v= line")
        if kind == "a":
            if sections:
                sections[-1].add(_attribute(line))
            else:
                session.append(_attribute(line))
        elif kind == "c":
            _connection(line[2:], f"m-line {len(sections) - 1}" if sections else "session")
        elif kind == "b":
            _bandwidth(line[2:], f"m-line {len(sections) - 1}" if sections else "session")
        elif sections:
            if kind not in MEDIA_TYPES:
                raise InvalidError(f"{kind}= is not allowed inside an m-line section")
        else:
            if kind not in SESSION_TYPES:
                raise InvalidError(f"{kind}= is not an SDP session line")
            if kind in "ost" and kind in seen:
                raise InvalidError(f"the offer has a second {kind}= line")
            _session_line(line)
        seen.add(kind)
    for kind in "ost":
        if kind not in seen:
            raise InvalidError(f"the offer has no {kind}= line")
    if not sections:
        raise InvalidError("the offer has no m-line")
    return session, sections


def _session_value(session: _Attributes, name: str) -> str | None:
    values = [v for k, v in session if k == name]
    if len(values) > 1:
        raise InvalidError(f"the offer has more than one session-level a={name}")
    return values[0] if values else None


def _check_mids(sections: list[_Section]) -> list[str]:
    """Every m-line: a unique, well-formed mid. Returns them by m-line."""
    mids: list[str] = []
    for section in sections:
        mid = section.one("mid")
        if mid is None:
            raise InvalidError(f"m-line {section.index} has no a=mid")
        if _check_mid(mid) in mids:
            raise InvalidError(f"mid {mid!r} is used by two m-lines")
        mids.append(mid)
    return mids


def _check_tested_shapes(session: _Attributes, sections: list[_Section]) -> None:
    """Shapes webrtcbin has not been tested with."""
    for name in ("ice-lite", "ice-mismatch"):
        if _session_value(session, name) is not None or any(s.values(name) for s in sections):
            raise InvalidError(f"a={name} offers are not supported")
    if sum(s.media == "application" for s in sections) > 1:
        raise InvalidError("the offer has more than one data channel m-line")


def _bundle_group(session: _Attributes, sections: list[_Section],
                  mids: list[str]) -> tuple[str, ...]:
    """BUNDLE: one group at most, of known mids (and LS groups beside it),
    at session level. Returns its mids; () without one."""
    bundle: tuple[str, ...] = ()
    for value in [v for k, v in session if k == "group"]:
        semantics, *group = (value or "").split(" ")
        if not group or len(set(group)) != len(group):
            raise InvalidError(f"a=group:{semantics[:20]} must name distinct mids")
        for mid in group:
            if mid not in mids:
                raise InvalidError(f"a=group:{semantics[:20]} names an unknown mid {mid[:40]!r}")
        if semantics == "BUNDLE":
            if bundle:
                raise InvalidError("the offer has more than one BUNDLE group")
            bundle = tuple(group)
        elif semantics != "LS":
            raise InvalidError(f"a=group:{semantics[:20]!r} is not supported")
    for section in sections:
        if section.values("group"):
            raise InvalidError("a=group belongs at session level")
    return bundle


def _live(section: _Section, mids: list[str], bundle: tuple[str, ...]) -> bool:
    # port 0 with a=bundle-only is an offer to bundle it (RFC 8843 6)
    return section.port != 0 or (bool(section.values("bundle-only"))
                                 and mids[section.index] in bundle)


def _check_formats(sections: list[_Section], mids: list[str], bundle: tuple[str, ...]) -> None:
    """What each m-line carries is described: a live data channel its SCTP
    port (and message size), every RTP m-line its dynamic payload types."""
    for section in sections:
        if section.media == "application":
            if not _live(section, mids, bundle):
                continue  # rejected
            port = section.one("sctp-port")
            if port is None or not _number(port, 5) or not 0 < int(port) <= 65535:
                raise InvalidError(f"m-line {section.index}: a=sctp-port must be a port")
            size = section.one("max-message-size")
            if size is not None and not _number(size, 19):
                raise InvalidError(f"m-line {section.index}: a=max-message-size must be a number")
            continue
        mapped = {(v or "").split(" ", 1)[0] for v in section.values("rtpmap")}
        for fmt in section.formats:
            if int(fmt) >= 35 and fmt not in mapped:  # dynamic: only a=rtpmap names it
                raise InvalidError(f"m-line {section.index}: payload type {fmt} has no a=rtpmap")


def _audio_to_serve(sections: list[_Section], mids: list[str], bundle: tuple[str, ...],
                    publish: bool) -> tuple[_Section, tuple[int, str | None]]:
    """The audio we send on (``publish``: take): the first audio m-line that
    can take it, with its Opus payload type and fmtp; the others are rejected
    in the answer. Else why none can: the first audio m-line's reason."""
    why = ("the offer has no audio m-line: the server only " +
           ("takes audio" if publish else "sends audio"))
    for section in sections:
        if section.media != "audio":
            continue
        try:
            opus = _served_audio(section, _live(section, mids, bundle), bundle, mids, publish)
        except InvalidError as error:
            if why.startswith("the offer has no audio"):
                why = str(error)
            continue
        return section, opus
    raise InvalidError(why)


def _check_transport(session: _Attributes, sections: list[_Section], audio: _Section,
                     mids: list[str], bundle: tuple[str, ...]) -> _Transport:
    """ICE and DTLS: on each m-line or at session level; bundled m-lines share
    them. webrtcbin takes ufrag and pwd as a pair from the m-line, else from
    the session (it asserts there is one of each there, and passes NULL on
    when only one is found), so they must come in pairs, once per place.
    Returns the audio's."""
    session_ice = _session_value(session, "ice-ufrag"), _session_value(session, "ice-pwd")
    if (session_ice[0] is None) != (session_ice[1] is None):
        raise InvalidError("a=ice-ufrag and a=ice-pwd must come together at session level")
    found = _transport(audio, session, session_ice)
    for section in sections:
        if section is audio or mids[section.index] not in bundle or (
                section.one("ice-ufrag") is None and section.one("ice-pwd") is None):
            continue  # not bundled with the audio, or no transport of its own
        if _transport(section, session, session_ice) != found:
            raise InvalidError(f"m-line {section.index} is bundled but has other ICE or DTLS "
                               "parameters than the audio")
    return found


def _transport(section: _Section, session: _Attributes,
               session_ice: tuple[str | None, str | None]) -> _Transport:
    """An m-line's ICE credentials (its own pair, else the session's), its
    DTLS setup role and its fingerprints (its own, else the session's)."""
    ufrag, pwd = section.one("ice-ufrag"), section.one("ice-pwd")
    if (ufrag is None) != (pwd is None):
        raise InvalidError(f"m-line {section.index}: a=ice-ufrag and a=ice-pwd must "
                           "come together")
    if ufrag is None:
        ufrag, pwd = session_ice
    setup = section.one("setup")  # webrtcbin reads it from the m-line only
    prints = tuple(_fingerprint(v) for v in section.values("fingerprint")) or \
        tuple(_fingerprint(v) for k, v in session if k == "fingerprint")
    if ufrag is None or pwd is None:
        raise InvalidError(f"m-line {section.index} has no a=ice-ufrag / a=ice-pwd")
    if not prints:
        raise InvalidError(f"m-line {section.index} has no a=fingerprint")
    if setup not in SETUP_ROLES:
        raise InvalidError(f"m-line {section.index}: a=setup must be actpass or active, "
                           f"not {str(setup)[:20]!r}")
    return _ice(ufrag, "ice-ufrag", 4), _ice(pwd, "ice-pwd", 22), setup, prints


def _check_candidates(session: _Attributes, sections: list[_Section]) -> None:
    for value in [v for k, v in session if k == "candidate"] + \
            [v for s in sections for v in s.values("candidate")]:
        check_candidate("candidate:" + (value or ""))


def _engine_sdp(lines: list[str]) -> str:
    """What the engine gets: CRLF, no blank lines, no host-name candidates."""
    kept = [line for line in lines
            if not (line.startswith("a=candidate:") and is_hostname_candidate(line[2:]))]
    return "\r\n".join(kept) + "\r\n"


def _served_audio(section: _Section, live: bool, bundle: tuple[str, ...],
                  mids: list[str], publish: bool) -> tuple[int, str | None]:
    """The Opus payload type and fmtp of an audio m-line the server can send
    on (``publish``: receive on), or an ``InvalidError`` saying why not."""
    where = f"the audio m-line ({section.index})"
    if not live:
        raise InvalidError(f"{where} is rejected (port 0)")
    if bundle and mids[section.index] not in bundle:
        raise InvalidError(f"{where} is not in the offer's BUNDLE group")
    direction = None
    for name in DIRECTIONS:
        if section.values(name):
            direction = direction or name
            if direction != name or len(section.values(name)) > 1:
                raise InvalidError(f"{where} has more than one direction")
    wanted = "sendonly" if publish else "recvonly"
    if direction is None:
        # SDP's default would be the session's direction, else sendrecv, but
        # webrtcbin reads only the m-line's and then cannot agree on Opus
        raise InvalidError(f"{where} needs a={wanted} (or a=sendrecv)")
    if direction not in (wanted, "sendrecv"):
        raise InvalidError(f"{where} is {direction}: there is nothing to " +
                           ("publish" if publish else "receive"))
    return _opus(section)


def _asks_stereo(fmtp: str | None) -> bool:
    for param in (fmtp or "").split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "stereo":
            return value == "1"
    return False


# ---- a stream's description (AES67, SAP announcements, typed in) ---------------------

MAX_DESCRIPTION_CHARS = 16 * 1024
# what this box plays: encoding -> the clock rates and channels it is carried at
STREAM_FORMATS = {"L16": ((44100, 48000, 88200, 96000), range(1, 9)),
                  "L24": ((44100, 48000, 88200, 96000), range(1, 9)),
                  "OPUS": ((48000,), (2,)),          # RFC 7587: always /2 in SDP
                  "PCMU": ((8000,), (1,)), "PCMA": ((8000,), (1,))}
# RFC 3551's static payload types, which may come without an a=rtpmap
STATIC_TYPES = {0: "0 PCMU/8000", 8: "8 PCMA/8000"}
MODEL_ENCODINGS = {"OPUS": "opus"}
STREAM_PROTO = "RTP/AVP"


@dataclass(frozen=True)
class StreamDescription:
    """An RTP stream as its SDP describes it (RFC 8866; AES67 and RFC 7273
    for the clock): the first audio m-line this box can receive."""
    name: str                          # s=
    origin: str                        # o='s address: the sender, usually
    address: str                       # c= (a group, or the sender for unicast)
    port: int
    payload_type: int
    encoding: str                      # L16, L24, opus, PCMU, PCMA (as model.SourceSpec)
    clock_rate: int
    channels: int
    ptime_ms: float | None
    refclk: str | None                 # a=ts-refclk: "ptp=IEEE1588-2008:<gmid>:<domain>", ...
    senders: tuple[str, ...]           # a=source-filter: incl (RFC 4570)

    def source_fields(self) -> dict[str, Any]:
        """What an RTP source takes from it (``model.SourceSpec``)."""
        return {"kind": "rtp", "address": self.address, "port": self.port,
                "payload_type": self.payload_type, "encoding": self.encoding,
                "clock_rate": self.clock_rate, "stream_channels": self.channels,
                # "s=-" (or nothing): the session has no name to show
                **({"name": self.name} if self.name.strip(" -") else {}),
                **({"allow_from": list(self.senders)} if self.senders else {}),
                **({"refclk": self.refclk} if self.refclk and _VISIBLE.match(self.refclk)
                   else {})}


def _stream_connection(value: str, where: str) -> str:
    """c=IN IP4 239.69.1.10/32 (a group's TTL, and a count that must be 1)."""
    fields = value.split(" ")
    if len(fields) != 3 or fields[0] != "IN" or fields[1] not in ("IP4", "IP6"):
        raise InvalidError(f"{where}: c= must be 'IN IP4|IP6 <address>'")
    address, *rest = fields[2].split("/")
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise InvalidError(f"{where}: c= {address[:60]!r} is not an IP address") from None
    if (ip.version == 4) != (fields[1] == "IP4"):
        raise InvalidError(f"{where}: c= says {fields[1]} but gives {address[:60]!r}")
    numbers = [r for r in rest if _number(r, 3)]
    if len(numbers) != len(rest) or len(rest) > 2 or (len(rest) == 2 and rest[1] != "1"):
        raise InvalidError(f"{where}: c= takes one address (a TTL, and a count of 1)")
    return str(ip)


def _source_filter(value: str, where: str) -> tuple[str, ...]:
    """a=source-filter: incl IN IP4 <group> <source>... (RFC 4570)."""
    fields = value.split()
    if len(fields) < 5 or fields[0] != "incl" or fields[1] != "IN" \
            or fields[2] not in ("IP4", "IP6"):
        return ()   # excl, or another shape: no narrower list of senders
    senders = []
    for text in fields[4:16]:
        try:
            senders.append(str(ipaddress.ip_address(text)))
        except ValueError:
            raise InvalidError(f"{where}: source-filter {text[:60]!r} is not an "
                               "IP address") from None
    return tuple(senders)


def describe_stream(text: Any) -> StreamDescription:
    """The checked description of an RTP stream, from an SDP that was typed
    in, pasted from a device's page, or announced on the network (SAP).
    Every line is checked as an offer's is; ``InvalidError`` says what is
    wrong, or that no m-line carries L16 or L24 this box takes."""
    lines = _lines(text, what="stream description", max_chars=MAX_DESCRIPTION_CHARS)
    if not lines or lines[0] != "v=0":
        raise InvalidError("a stream description starts with v=0")
    name, origin, session_c = "", "", None
    session_senders: tuple[str, ...] = ()
    sections: list[tuple[list[str], list[tuple[str, str | None]]]] = []
    for line in lines[1:]:
        kind, value = line[0], line[2:]
        if kind == "m":
            if len(sections) >= MAX_MLINES:
                raise InvalidError(f"more than {MAX_MLINES} m-lines")
            sections.append((value.split(" "), []))
        elif sections:
            if kind == "a":
                sections[-1][1].append(_attribute(line))
            elif kind == "c":
                sections[-1][1].append(("c", value))
        elif kind == "s":
            name = value.strip()[:64]
        elif kind == "o":
            _session_line(line)
            origin = value.split(" ")[5]
        elif kind == "c":
            session_c = value
        elif kind == "a":
            attribute, attr_value = _attribute(line)
            if attribute == "source-filter" and attr_value:
                session_senders = _source_filter(attr_value, "session")
        elif kind == "t":
            _session_line(line)
    problems = []
    for index, (m, attrs) in enumerate(sections):
        where = f"m-line {index}"
        if len(m) < 4 or m[0] != "audio" or m[2] != STREAM_PROTO:
            problems.append(f"{where} is not audio over {STREAM_PROTO}")
            continue
        port = _port(m[1].split("/")[0], where)
        if port == 0:
            problems.append(f"{where} is switched off (port 0)")
            continue
        values: dict[str, list[str | None]] = {}
        for attribute, value in attrs:
            values.setdefault(attribute, []).append(value)
        mapped = {(v or "").split(" ")[0] for v in values.get("rtpmap", [])}
        rtpmaps = [v or "" for v in values.get("rtpmap", [])] + [
            STATIC_TYPES[int(f)] for f in m[3:]
            if _number(f, 3) and int(f) in STATIC_TYPES and f not in mapped]
        for value in rtpmaps:
            match = _RTPMAP.match(value)
            if not match or match.group(1) not in m[3:]:
                continue
            pt, encoding = int(match.group(1)), match.group(2).upper()
            rate, channels = int(match.group(3)), int(match.group(4) or 1)
            rates, channel_counts = STREAM_FORMATS.get(encoding, ((), ()))
            if rate not in rates or channels not in channel_counts or pt > 127:
                problems.append(f"{where}: {encoding[:16]}/{rate}/{channels} is not a format "
                                "this box plays (L16 or L24 at 44.1-96 kHz with 1-8 channels, "
                                "opus/48000/2, PCMU/8000, PCMA/8000)")
                continue
            c = (values.get("c") or [session_c])[-1]
            if c is None:
                raise InvalidError(f"{where} has no c= line (nor the session)")
            ptime = (values.get("ptime") or [None])[0]
            try:
                ptime_ms = float(ptime) if ptime else None
            except ValueError:
                ptime_ms = None
            refclk = (values.get("ts-refclk") or [None])[0]
            filters = [_source_filter(v, where) for v in values.get("source-filter", []) if v]
            return StreamDescription(
                name=name, origin=origin, address=_stream_connection(c, where), port=port,
                payload_type=pt, encoding=MODEL_ENCODINGS.get(encoding, encoding),
                clock_rate=rate, channels=channels,
                ptime_ms=ptime_ms if ptime_ms and 0 < ptime_ms <= 1000 else None,
                refclk=refclk[:128] if refclk else None,
                senders=next((f for f in filters if f), session_senders))
        problems.append(f"{where} has no format this box plays")
    raise InvalidError("; ".join(problems) if problems else "the description has no m-line")
