"""appliance.sdp: real offers pass whatever else they carry (video, a data
channel, in any order, bundle-only), the audio m-line to serve is found, and
every malformed one is refused with a reason that names the problem."""
from __future__ import annotations

from pathlib import Path

import pytest

from appliance.errors import InvalidError
from appliance.sdp import (
    MAX_FORMATS, MAX_LINE_CHARS, MAX_LINES, MAX_MLINES, MAX_OFFER_CHARS, Offer, check_candidate,
    check_offer, describe_stream, is_hostname_candidate, parse_candidates_json, parse_sdpfrag,
)
from tests.support.webrtc import synthetic_offer

OFFERS = Path(__file__).parent / "support" / "offers"
# a shape that aborted the process before appliance.sdp (datachannel-first.sdp
# did too: it is served now, and webrtcbin never sees it: ae_wr_declines)
ABORTS = {"session-ufrag-twice.sdp": "more than one session-level a=ice-ufrag"}
# audio-only and audio + data channel offers of three engines
REAL = sorted(p.name for p in OFFERS.glob("*-audio*.sdp"))


def load(name: str) -> str:
    return (OFFERS / name).read_bytes().decode("utf-8")


CHROMIUM = load("chromium-audio.sdp")
CHROMIUM_DC = load("chromium-audio-datachannel.sdp")


def refused(text: object, reason: str) -> None:
    with pytest.raises(InvalidError) as info:
        check_offer(text)
    assert reason in info.value.message, info.value.message


def test_real_offers_are_accepted_and_described() -> None:
    assert len(REAL) == 6
    expected_pt = {"chromium": 111, "firefox": 109, "aiortc": 96}
    for name in REAL:
        offer = check_offer(load(name))
        assert isinstance(offer, Offer)
        assert offer.mids == (["0", "1"] if "datachannel" in name else ["0"]), name
        assert offer.audio == 0 and offer.audio_mid == "0"
        assert offer.datachannel == ("datachannel" in name)
        # Firefox asks for stereo in its offer; Chromium and aiortc do not
        assert offer.stereo == name.startswith("firefox"), name
        assert offer.opus_pt == expected_pt[name.split("-")[0]]
        assert offer.ice_ufrag and offer.ice_ufrag in load(name)
        assert offer.setup == "actpass"
        assert offer.bundle == tuple(offer.mids)
        assert offer.sdp.endswith("\r\n") and "\n\n" not in offer.sdp


def test_the_synthetic_test_offer_is_accepted() -> None:
    offer = check_offer(synthetic_offer(candidate_port=9))
    assert offer.mids == ["0"] and offer.opus_pt == 111
    assert offer.opus_fmtp == "minptime=10;useinbandfec=1"


def test_lf_line_ends_and_blank_lines_are_normalised() -> None:
    aiortc = load("aiortc-audio.sdp")
    lf = aiortc.replace("\r\n", "\n").replace("a=mid:0\n", "a=mid:0\n\n")
    assert check_offer(lf).sdp == aiortc


def test_host_name_candidates_are_left_out() -> None:
    """Chromium's and Firefox's mDNS candidates never reach the engine: each
    one cost a system resolver lookup that held fds for tens of seconds."""
    for name in REAL:
        text = load(name)
        sdp = check_offer(text).sdp
        kept = [line for line in text.split("\r\n") if ".local " not in line]
        assert sdp.split("\r\n") == kept, name
        assert ("a=candidate:" in sdp) == name.startswith("aiortc"), name
    assert is_hostname_candidate("candidate:1 1 udp 1 abc.local 9 typ host")
    assert is_hostname_candidate("candidate:1 1 udp 1 example.com 9 typ host")
    assert not is_hostname_candidate("candidate:1 1 udp 1 10.0.0.1 9 typ host")
    assert not is_hostname_candidate("candidate:1 1 udp 1 fe80::1 9 typ host")
    fragment = ("a=mid:0\r\na=candidate:1 1 udp 1 abc.local 9 typ host\r\n"
                "a=candidate:2 1 udp 1 10.0.0.1 9 typ host\r\n")
    assert parse_sdpfrag(fragment)[2] == [("0", None, "candidate:2 1 udp 1 10.0.0.1 9 typ host")]
    assert parse_candidates_json({"candidate": "candidate:1 1 udp 1 abc.local 9 typ host"}) == []


def test_the_shapes_that_aborted_the_process_are_refused() -> None:
    for name, reason in ABORTS.items():
        refused(load(name), reason)


def _swap(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new)


@pytest.mark.parametrize("text, reason", [
    (b"v=0\r\n", "not text"),
    (None, "not text"),
    ("", "must start with v=0"),
    ("hello", "not an SDP line"),
    ("o=- 1 1 IN IP4 0.0.0.0\r\nv=0\r\n", "must start with v=0"),
    ("v=1\r\n", "must start with v=0"),
    ("v=0\r\nnot sdp at all\r\n", "not an SDP line"),
    ("v=0\r\nA=x\r\n", "not an SDP line"),
    ("v=0\r\n=x\r\n", "not an SDP line"),
    ("v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\n", "no m-line"),
    ("x" * (MAX_OFFER_CHARS + 1), "longer than"),
])
def test_what_is_not_sdp_is_refused(text: object, reason: str) -> None:
    refused(text, reason)


@pytest.mark.parametrize("bad", ["\x00", "\x1b", "\x7f", "\ud800", "\r", "\t", "\u2028"])
def test_control_characters_are_refused(bad: str) -> None:
    refused(_swap(CHROMIUM, "s=-", f"s=-{bad}x"), "control or unprintable")


def test_absurd_sizes_are_refused() -> None:
    refused(_swap(CHROMIUM, "s=-", "s=" + "x" * MAX_LINE_CHARS), "longer than")
    refused(CHROMIUM + "a=x\r\n" * MAX_LINES, "more than")
    audio = CHROMIUM[CHROMIUM.index("m=audio"):]
    many = CHROMIUM.replace("a=group:BUNDLE 0", "a=group:BUNDLE " + " ".join(
        str(i) for i in range(MAX_MLINES + 1))) + "".join(
        audio.replace("a=mid:0", f"a=mid:{i}") for i in range(1, MAX_MLINES + 1))
    refused(many, f"more than {MAX_MLINES} m-lines")
    refused(_swap(CHROMIUM, "o=- 5709698796385562019", "o=- " + "9" * 40), "o= must be")
    refused(_swap(CHROMIUM, "m=audio 9 ", "m=audio 99999999 "), "is not a port")
    # digits int() does not take, and digits that are not ASCII
    refused(_swap(CHROMIUM, "m=audio 9 ", "m=audio \u00b2 "), "is not a port")
    refused(_swap(CHROMIUM, "m=audio 9 ", "m=audio \u0663 "), "is not a port")
    refused(_swap(CHROMIUM, "SAVPF 111 63", "SAVPF 111 \u00b2"), "payload types")
    refused(_swap(CHROMIUM, "t=0 0", "t=0 \u00b2"), "t= must be")
    refused(_swap(CHROMIUM, "a=rtpmap:111 opus", "a=rtpmap:\u0661\u0661\u0661 opus"), "a=rtpmap")


@pytest.mark.parametrize("old, new, reason", [
    ("m=audio 9 UDP/TLS/RTP/SAVPF", "m=video 9 UDP/TLS/RTP/SAVPF", "no audio m-line"),
    ("m=audio 9 ", "m=audio 0 ", "rejected (port 0)"),
    ("UDP/TLS/RTP/SAVPF", "RTP/AVP", "must use UDP/TLS/RTP/SAVPF"),
    ("m=audio 9 UDP/TLS/RTP/SAVPF 111", "m=text 9 UDP/TLS/RTP/SAVPF 111", "is not audio, video"),
    ("m=audio 9 UDP/TLS/RTP/SAVPF 111 63", "m=audio 9 UDP/TLS/RTP/SAVPF 111 111", "distinct"),
    ("m=audio 9 UDP/TLS/RTP/SAVPF 111 63", "m=audio 9 UDP/TLS/RTP/SAVPF 111 999", "0-127"),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 PCMU/8000", "no Opus/48000"),
    ("a=rtpmap:63 red/48000/2\r\n", "", "payload type 63 has no a=rtpmap"),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/44100/2", "no Opus/48000"),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/48000/7", "opus/48000/2"),
    ("m=audio 9 UDP/TLS/RTP/SAVPF 111 ", "m=audio 9 UDP/TLS/RTP/SAVPF ", "no Opus/48000"),
    ("a=rtpmap:111 opus/48000/2", "a=rtpmap:111 opus/48000/2\r\na=rtpmap:111 opus/48000/2",
     "two a=rtpmap"),
    ("a=rtpmap:111 opus", "a=rtpmap:111  opus", "bad a=rtpmap"),
    ("a=fmtp:111 minptime=10;useinbandfec=1", "a=fmtp:111 payload=96", "may not set"),
    ("a=fmtp:111 minptime=10;useinbandfec=1", "a=fmtp:111 minptime=10;x y=1",
     "bad parameter"),
    ("a=fmtp:111 minptime=10;useinbandfec=1",
     "a=fmtp:111 minptime=10\r\na=fmtp:111 useinbandfec=1", "two a=fmtp"),
    ("a=recvonly", "a=sendonly", "nothing to receive"),
    ("a=recvonly", "a=inactive", "nothing to receive"),
    ("a=recvonly", "a=recvonly\r\na=sendrecv", "more than one direction"),
    ("a=recvonly\r\n", "", "needs a=recvonly"),
    ("a=mid:0", "a=mid:", "a=mid must be"),
    ("a=mid:0", "a=mid:0 0", "a=mid must be"),
    ("a=mid:0\r\n", "", "has no a=mid"),
    ("a=mid:0", "a=mid:0\r\na=mid:1", "more than one a=mid"),
    ("a=group:BUNDLE 0", "a=group:BUNDLE 0 7", "unknown mid"),
    ("a=group:BUNDLE 0", "a=group:BUNDLE 0 0", "distinct mids"),
    ("a=group:BUNDLE 0", "a=group:BUNDLE", "distinct mids"),
    ("a=group:BUNDLE 0", "a=group:BUNDLE 0\r\na=group:BUNDLE 0", "more than one BUNDLE"),
    ("a=group:BUNDLE 0", "a=group:FID 0", "not supported"),
    ("a=ice-ufrag:YxEM\r\na=ice-pwd:SYqn+qNN84P6Ezs0LWoHPY8D\r\n", "",
     "no a=ice-ufrag / a=ice-pwd"),
    ("a=ice-pwd:SYqn+qNN84P6Ezs0LWoHPY8D\r\n", "", "must come together"),
    ("a=ice-ufrag:YxEM", "a=ice-ufrag:Y!", "a=ice-ufrag must be"),
    # webrtcbin: g_assert on a second session-level ufrag, NULL pwd on half a pair
    ("a=ice-ufrag:YxEM\r\n", "", "must come together"),
    ("s=-", "s=-\r\na=ice-ufrag:abcd\r\na=ice-ufrag:efgh\r\na=ice-pwd:0123456789012345678901",
     "more than one session-level a=ice-ufrag"),
    ("s=-", "s=-\r\na=ice-ufrag:abcd", "must come together at session level"),
    ("a=ice-pwd:SYqn+qNN84P6Ezs0LWoHPY8D", "a=ice-pwd:short", "a=ice-pwd must be"),
    ("a=ice-ufrag:YxEM", "a=ice-ufrag:YxEM\r\na=ice-ufrag:abcd", "more than one a=ice-ufrag"),
    # names are case-sensitive, as in GStreamer: this is no ufrag at all
    ("a=ice-ufrag:YxEM", "a=ICE-UFRAG:YxEM", "must come together"),
    ("a=mid:0", "a=MID:0", "has no a=mid"),
    ("a=fingerprint:sha-256 14:EC", "a=fingerprint:md5 14:EC", "unknown hash"),
    ("a=fingerprint:sha-256 14:EC:", "a=fingerprint:sha-256 ", "hex pairs"),
    ("a=setup:actpass", "a=setup:passive", "actpass or active"),
    ("a=setup:actpass", "a=setup:holdconn", "actpass or active"),
    ("a=setup:actpass\r\n", "", "actpass or active, not 'None'"),
    ("a=ice-options:trickle", "a=ice-lite", "ice-lite"),
    ("t=0 0", "t=now", "t= must be"),
    ("c=IN IP4 0.0.0.0", "c=IN IP4 nowhere!", "not an address"),
    ("c=IN IP4 0.0.0.0", "c=IN IP9 0.0.0.0", "c= must be"),
    ("s=-", "k=clear:secret", "not an SDP session line"),
    ("a=rtcp-mux", "s=second", "not allowed inside an m-line"),
    ("s=-\r\n", "", "no s= line"),
    ("a=rtcp-mux", "a=rtcp-mux\r\nv=0", "second v= line"),
    ("a=rtcp-mux", "a=group:BUNDLE 0", "session level"),
    ("a=rtcp-mux", "a=~bad", "not an SDP attribute"),
    ("a=rtcp-mux", "b=AS", "b= must be"),
])
def test_bad_audio_shapes_are_refused(old: str, new: str, reason: str) -> None:
    refused(_swap(CHROMIUM, old, new), reason)


@pytest.mark.parametrize("old, new", [
    ("generation 0 network-cost 999", "generation 0 network-cost"),
    ("typ host", "typ nothing"),
    ("udp 2113937151", "sctp 2113937151"),
    ("udp 2113937151", "udp 99999999999"),
    (".local 58411", ".local 70000"),
    ("44067940-36f6-469a-bf89-0f6a9684bfd5.local", "-bad-.local"),
    ("44067940-36f6-469a-bf89-0f6a9684bfd5.local", "1.2.3.999"),
    ("a=candidate:3274648277 1", "a=candidate:3274648277 0"),
    ("a=candidate:3274648277", "a=candidate:é"),
])
def test_bad_candidates_in_the_offer_are_refused(old: str, new: str) -> None:
    refused(_swap(CHROMIUM, old, new), "candidate")


def test_session_level_direction_or_setup_is_not_enough() -> None:
    # webrtcbin reads both from the m-line only (and then answers inactive,
    # or fails to set the offer)
    for line, reason in [("a=recvonly", "needs a=recvonly"), ("a=setup:actpass", "a=setup")]:
        moved = _swap(_swap(CHROMIUM, line + "\r\n", ""), "s=-\r\n", f"s=-\r\n{line}\r\n")
        refused(moved, reason)


def test_data_channel_shapes() -> None:
    # the data channel is rejected in the answer, wherever it stands
    assert check_offer(CHROMIUM_DC).datachannel
    first = check_offer(load("datachannel-first.sdp"))
    assert (first.audio, first.audio_mid, first.mids) == (1, "0", ["1", "0"])
    for old, new in [("a=group:BUNDLE 0 1", "a=group:BUNDLE 1 0"),      # data channel as tag
                     ("a=group:BUNDLE 0 1", "a=group:BUNDLE 0"),        # not bundled
                     ("m=application 9", "m=application 0")]:          # rejected by the offerer
        assert check_offer(_swap(CHROMIUM_DC, old, new)).audio == 0, new
    assert check_offer(_swap(CHROMIUM_DC, "a=group:BUNDLE 0 1\r\n", "")).bundle == ()
    refused(_swap(CHROMIUM_DC, "a=mid:1", "a=mid:0"), "used by two m-lines")
    refused(_swap(CHROMIUM_DC, "SCTP webrtc-datachannel", "SCTP 5000"), "data channel must be")
    refused(_swap(CHROMIUM_DC, "a=sctp-port:5000", "a=sctp-port:x"), "a=sctp-port must be a port")
    refused(_swap(CHROMIUM_DC, "a=sctp-port:5000\r\n", ""), "a=sctp-port must be a port")
    refused(_swap(CHROMIUM_DC, "a=max-message-size:262144", "a=max-message-size:-1"),
            "a=max-message-size must be a number")
    app = CHROMIUM_DC[CHROMIUM_DC.index("m=application"):]
    two = _swap(CHROMIUM_DC, "a=group:BUNDLE 0 1", "a=group:BUNDLE 0 1 2") + \
        app.replace("a=mid:1", "a=mid:2")
    refused(two, "more than one data channel")
    # a bundled m-line with other credentials than the audio
    head, _, tail = CHROMIUM_DC.rpartition("a=ice-ufrag:")
    refused(head + "a=ice-ufrag:ZZZZ" + tail[tail.index("\r\n"):], "other ICE or DTLS parameters")
    # a rejected m-line (port 0) without a transport of its own is fine
    rejected = CHROMIUM_DC[:CHROMIUM_DC.index("m=application")] + \
        "m=application 0 UDP/DTLS/SCTP webrtc-datachannel\r\nc=IN IP4 0.0.0.0\r\na=mid:1\r\n"
    assert check_offer(_swap(rejected, "a=group:BUNDLE 0 1", "a=group:BUNDLE 0")).mids == ["0", "1"]


def test_firefox_max_bundle_marks_the_data_channel_bundle_only() -> None:
    """Firefox with bundlePolicy "max-bundle": every m-line after the first
    has port 0 and a=bundle-only (RFC 8843 6). That is an offer to bundle,
    not a rejection (it was refused with a 400)."""
    firefox = load("firefox-audio-datachannel.sdp")
    head, app = firefox[:firefox.index("m=application")], firefox[firefox.index("m=application"):]
    app = app.replace("m=application 9", "m=application 0").replace("a=mid:1\r\n",
                                                                    "a=mid:1\r\na=bundle-only\r\n")
    offer = check_offer(head + app)
    assert offer.audio == 0 and offer.bundle == ("0", "1")


def test_the_audio_may_stand_anywhere_and_be_bundle_only() -> None:
    """Firefox puts video first, and with max-bundle the audio behind it is
    bundle-only (port 0): that audio is served."""
    video = ("m=video 9 UDP/TLS/RTP/SAVPF 120 124\r\nc=IN IP4 0.0.0.0\r\n"
             "a=recvonly\r\na=mid:v\r\na=rtcp-mux\r\na=setup:actpass\r\n"
             "a=rtpmap:120 VP8/90000\r\na=rtpmap:124 rtx/90000\r\n")
    head, audio = CHROMIUM[:CHROMIUM.index("m=audio")], CHROMIUM[CHROMIUM.index("m=audio"):]
    transport = "".join(line + "\r\n" for line in audio.split("\r\n")
                        if line.startswith(("a=ice-", "a=fingerprint")))
    head = _swap(head, "a=group:BUNDLE 0", "a=group:BUNDLE v 0")
    offer = check_offer(head + video + transport + _swap(audio, "m=audio 9 ", "m=audio 0 ")
                        .replace("a=mid:0\r\n", "a=mid:0\r\na=bundle-only\r\n"))
    assert (offer.audio, offer.audio_mid, offer.bundle) == (1, "0", ("v", "0"))
    # without a=bundle-only, port 0 is a rejection: then there is no audio to serve
    refused(head + video + transport + _swap(audio, "m=audio 9 ", "m=audio 0 "),
            "the audio m-line (1) is rejected (port 0)")
    # bundle-only outside the BUNDLE group means nothing
    refused(_swap(head, "a=group:BUNDLE v 0", "a=group:BUNDLE v") + video + transport
            + _swap(audio, "m=audio 9 ", "m=audio 0 ").replace("a=mid:0\r\n",
                                                               "a=mid:0\r\na=bundle-only\r\n"),
            "rejected (port 0)")


def test_chromiums_video_m_line_of_34_formats_is_taken() -> None:
    pts = list(range(96, 128)) + [35, 36]   # what Chromium 156 lists
    video = (f"m=video 9 UDP/TLS/RTP/SAVPF {' '.join(map(str, pts))}\r\n"
             "c=IN IP4 0.0.0.0\r\na=recvonly\r\na=mid:1\r\na=rtcp-mux\r\n"
             + "".join(f"a=rtpmap:{pt} VP8/90000\r\n" for pt in pts))
    two = _swap(CHROMIUM, "a=group:BUNDLE 0", "a=group:BUNDLE 0 1") + video
    offer = check_offer(two)
    assert (offer.audio, offer.mids) == (0, ["0", "1"])
    many = list(range(35, 35 + MAX_FORMATS + 1))   # 35..99
    refused(two.replace(f"SAVPF {' '.join(map(str, pts))}", "SAVPF " + " ".join(map(str, many))),
            f"more than {MAX_FORMATS} formats")


def test_only_an_offer_with_no_audio_to_send_is_refused() -> None:
    no_audio = _swap(CHROMIUM, "m=audio 9 UDP/TLS/RTP/SAVPF", "m=video 9 UDP/TLS/RTP/SAVPF")
    refused(no_audio, "no audio m-line")
    # a first audio m-line that cannot be served, a second that can: the second
    second = CHROMIUM[CHROMIUM.index("m=audio"):].replace("a=mid:0", "a=mid:1")
    first_sendonly = _swap(_swap(CHROMIUM, "a=group:BUNDLE 0", "a=group:BUNDLE 0 1"),
                           "a=recvonly", "a=sendonly") + second
    assert check_offer(first_sendonly).audio == 1
    refused(_swap(CHROMIUM, "a=recvonly", "a=sendonly"), "the audio m-line (0) is sendonly")


def test_stereo_is_read_from_the_offers_opus_parameters() -> None:
    fmtp = "a=fmtp:111 minptime=10;useinbandfec=1"
    assert not check_offer(CHROMIUM).stereo
    assert check_offer(_swap(CHROMIUM, fmtp, fmtp + ";stereo=1")).stereo
    assert not check_offer(_swap(CHROMIUM, fmtp, fmtp + ";stereo=0")).stereo
    assert check_offer(_swap(CHROMIUM, fmtp, "a=fmtp:111 stereo=1;minptime=10")).stereo


def test_real_candidates_pass_and_are_returned_without_a_prefix() -> None:
    for name in REAL:
        for line in load(name).split("\r\n"):
            if line.startswith("a=candidate:"):
                assert check_candidate(line) == line[2:]
    assert check_candidate("") == ""
    assert check_candidate("a=end-of-candidates") == ""
    ipv6 = "candidate:1 1 udp 2122262783 2001:db8::1 50000 typ srflx raddr :: rport 0"
    assert check_candidate(ipv6) == ipv6


@pytest.mark.parametrize("ufrag", ["z/tX", "/OKR", "Lo+/", "ab+c"])
def test_a_browsers_ufrag_extension_passes_whatever_its_ice_characters(ufrag: str) -> None:
    """Chromium trickles "... ufrag <its ufrag> network-cost 999"; an ICE
    ufrag may hold "/" and "+" (RFC 8839 ice-char), so about one browser
    session in eight has one there. Their PATCH was refused with a 400."""
    candidate = (f"candidate:2611340833 1 udp 2113942271 fd00::2 57692 typ host "
                 f"generation 0 ufrag {ufrag} network-cost 999")
    assert check_candidate(candidate) == candidate
    assert parse_candidates_json([{"candidate": candidate, "sdpMid": "0",
                                   "sdpMLineIndex": 0}]) == [("0", 0, candidate)]


@pytest.mark.parametrize("bad", [
    5, None, "candidate:", "candidate:1 1 udp 1 127.0.0.1 9 typ", "hello",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host ufrag a\x7fb",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host ufrag " + "a" * 257,
    "candidate:1 1 udp 1 127.0.0.1 9 typ host\x00", "candidate:1 1 udp 1 127.0.0.1 9 typ host\r\nx",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host raddr",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host ext é",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host raddr x..y rport 1",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host rport 123456",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host " + "a b " * 20,
    "candidate:1 1 udp 1 " + "a" * 600 + " 9 typ host",
    "candidate:1 99999 udp 1 127.0.0.1 9 typ host",
    "candidate:1  1 udp 1 127.0.0.1 9 typ host",
    "candidate:1 1 udp 1 127.0.0.1 9 typ host \ud800 x",
    "candidate:1 \u00b2 udp 1 127.0.0.1 9 typ host",
    "candidate:1 1 udp 1 127.0.0.1 \u00b2 typ host",
])
def test_bad_candidates_are_refused(bad: object) -> None:
    with pytest.raises(InvalidError):
        check_candidate(bad)


@pytest.mark.parametrize("address, ip", [
    ("192.168.1.20", True), ("0.0.0.0", True), ("255.255.255.255", True), ("::1", True),
    ("fe80::1", True), ("2001:db8::7", True), ("host.example", False), ("abc.local", False),
])
def test_candidate_addresses_are_ip_literals_or_host_names(address: str, ip: bool) -> None:
    candidate = f"candidate:1 1 udp 1 {address} 9 typ host raddr {address} rport 9"
    assert check_candidate(candidate) == candidate
    assert is_hostname_candidate(candidate) is not ip


@pytest.mark.parametrize("address", ["256.1.1.1", "1.2.3.300", "01.2.3.4", "1.2.3", "1.2.3.4.5",
                                     "1..2.3", "1.2.3.4.", "-1.2.3.4"])
def test_what_looks_like_ipv4_but_is_not_is_refused(address: str) -> None:
    """Digits and dots only: no host name either (the fast IPv4 check must
    agree with ``ipaddress``, which refuses leading zeros)."""
    with pytest.raises(InvalidError):
        check_candidate(f"candidate:1 1 udp 1 {address} 9 typ host")
    refused(_swap(CHROMIUM, "c=IN IP4 0.0.0.0", f"c=IN IP4 {address}"), "not an address")


def test_a_last_line_without_its_newline_may_end_in_cr() -> None:
    assert check_offer(CHROMIUM.rstrip("\n")).sdp == check_offer(CHROMIUM).sdp
    refused(CHROMIUM.rstrip("\n") + "\r", "control or unprintable")


def test_parse_sdpfrag() -> None:
    fragment = ("a=ice-ufrag:abcd\r\na=ice-pwd:0123456789012345678901\r\nm=audio 9 RTP/AVP 0\r\n"
                "a=candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host\r\na=mid:0\r\n"
                "a=end-of-candidates\r\n")
    ufrag, pwd, found = parse_sdpfrag(fragment)
    assert (ufrag, pwd) == ("abcd", "0123456789012345678901")
    assert found == [("0", 0, "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"),
                     ("0", 0, "")]
    # no m-line: mid and index unknown
    assert parse_sdpfrag("a=candidate:1 1 udp 1 ::1 9 typ host\n")[2] == \
        [(None, None, "candidate:1 1 udp 1 ::1 9 typ host")]
    for bad, reason in [("", "empty"), ("\r\n  \r\n", "empty"), ("hello", "not an SDP line"),
                        (b"a=x", "not text"), ("a=candidate:1 1 udp 1 x 9 typ nope", "typ"),
                        ("a=candidate:1\x00", "control"), ("a=mid:\x01", "control"),
                        ("a=mid:a b", "a=mid must be"), ("m=x\r\n" * 9, "m-lines"),
                        ("a=x\r\n" * (MAX_LINES + 1), "lines"),
                        ("a=candidate:" + "x" * MAX_LINE_CHARS, "longer than")]:
        with pytest.raises(InvalidError) as info:
            parse_sdpfrag(bad)
        assert reason in info.value.message, (bad[:20], info.value.message)


def test_parse_candidates_json() -> None:
    cand = "candidate:1 1 udp 2130706431 127.0.0.1 5000 typ host"
    assert parse_candidates_json({"candidate": cand, "sdpMid": "0"}) == [("0", None, cand)]
    assert parse_candidates_json([{"candidate": "", "sdpMLineIndex": 0}]) == [(None, 0, "")]
    for bad in [[], 5, "x", [5], {"sdpMid": "0"}, {"candidate": 5},
                {"candidate": cand, "sdpMid": 0}, {"candidate": cand, "sdpMLineIndex": True},
                {"candidate": cand, "sdpMLineIndex": 2**70},
                {"candidate": cand, "sdpMid": "\x00"}, {"candidate": "candidate:nope"},
                [{"candidate": cand}] * 65]:
        if bad == []:
            assert parse_candidates_json(bad) == []
            continue
        with pytest.raises(InvalidError):
            parse_candidates_json(bad)


@pytest.mark.parametrize("name, audio", [
    ("eyevinn-chromium.sdp", 1), ("mediamtx-chromium.sdp", 1), ("norsk-chromium.sdp", 1),
    ("eyevinn-firefox.sdp", 1), ("mediamtx-firefox.sdp", 1), ("norsk-firefox.sdp", 1)])
def test_the_offers_of_standard_players_that_carry_video_are_taken(name: str, audio: int) -> None:
    """Real offers of three npm WHEP players (tests/e2e/test_players.py saves
    them): video first, Chromium's with 34 video formats; all were a 400."""
    offer = check_offer(load(name))
    assert offer.audio == audio and offer.opus_pt in (109, 111), name
    assert offer.stereo == ("mediamtx" in name or "firefox" in name), name


# ---- a stream's description ----------------------------------------------------------

AES67 = """v=0
o=- 1423986 1423994 IN IP4 192.168.1.10
s=Desk ch 1-2
c=IN IP4 239.69.1.10/32
t=0 0
m=audio 5004 RTP/AVP 97
a=rtpmap:97 L24/48000/2
a=ptime:1
a=ts-refclk:ptp=IEEE1588-2008:00-1D-C1-FF-FE-0E-10-4C:0
a=mediaclk:direct=0
a=source-filter: incl IN IP4 239.69.1.10 192.168.1.10
"""


def test_an_aes67_description_gives_the_source_its_fields():
    d = describe_stream(AES67)
    assert (d.address, d.port, d.payload_type, d.encoding, d.clock_rate, d.channels) == \
        ("239.69.1.10", 5004, 97, "L24", 48000, 2)
    assert d.ptime_ms == 1.0 and d.refclk.startswith("ptp=IEEE1588-2008:")
    assert d.senders == ("192.168.1.10",) and d.origin == "192.168.1.10"
    assert d.source_fields() == {
        "kind": "rtp", "name": "Desk ch 1-2", "address": "239.69.1.10", "port": 5004,
        "payload_type": 97, "encoding": "L24", "clock_rate": 48000, "stream_channels": 2,
        "allow_from": ["192.168.1.10"], "refclk": "ptp=IEEE1588-2008:00-1D-C1-FF-FE-0E-10-4C:0"}


def test_a_description_in_other_shapes():
    # IPv6 at media level, L16 mono (no channel count), CRLF, an unusable m-line first
    text = ("v=0\r\no=- 1 1 IN IP6 fd00::5\r\ns=-\r\nt=0 0\r\n"
            "m=audio 5006 RTP/AVP 9\r\na=rtpmap:9 G722/8000\r\n"
            "m=audio 5008 RTP/AVP 98\r\nc=IN IP6 ff15::99\r\na=rtpmap:98 L16/44100\r\n")
    d = describe_stream(text)
    assert (d.address, d.port, d.encoding, d.clock_rate, d.channels) == \
        ("ff15::99", 5008, "L16", 44100, 1)
    assert "name" not in d.source_fields() and "allow_from" not in d.source_fields()


def test_opus_and_g711_descriptions_with_and_without_rtpmap():
    opus = describe_stream(AES67.replace("L24/48000/2", "opus/48000/2"))
    assert (opus.encoding, opus.clock_rate, opus.channels) == ("opus", 48000, 2)
    static = describe_stream("v=0\ns=Phone\nc=IN IP4 239.1.1.1\nm=audio 5004 RTP/AVP 8 0\n")
    assert (static.encoding, static.payload_type, static.clock_rate, static.channels) == \
        ("PCMA", 8, 8000, 1)


@pytest.mark.parametrize("text, says", [
    ("", "starts with v=0"),
    ("v=0\ns=x\n", "no m-line"),
    (AES67.replace("L24/48000/2", "G722/8000"), "no format this box plays"),
    (AES67.replace("L24/48000/2", "L24/8000/2"), "is not a format"),
    (AES67.replace("L24/48000/2", "L24/48000/9"), "is not a format"),
    (AES67.replace("L24/48000/2", "opus/48000/1"), "is not a format"),
    (AES67.replace("L24/48000/2", "PCMU/16000"), "is not a format"),
    (AES67.replace("/32\n", "/32/2\n"), "one address"),
    (AES67.replace("239.69.1.10/32", "stream.example/32"), "not an IP address"),
    (AES67.replace("IN IP4 239.69.1.10/32", "IN IP6 239.69.1.10"), "says IP6"),
    (AES67.replace("c=IN IP4 239.69.1.10/32\n", ""), "no c= line"),
    (AES67.replace("m=audio 5004", "m=audio 0"), "port 0"),
    (AES67.replace("m=audio 5004", "m=audio 99999"), "not a port"),
    (AES67.replace("RTP/AVP", "RTP/SAVP"), "not audio over RTP/AVP"),
    (AES67.replace("s=Desk", "s=\x1b[2JDesk"), "control"),
    (AES67 + "a=x:" + "y" * 2000 + "\n", "longer than"),
    ("v=0\n" + "a=x\n" * 600, "more than"),
    ("v=0\n" + "m=audio 1 RTP/AVP 96\n" * 9, "more than 8 m-lines"),
    (AES67.replace("incl IN IP4 239.69.1.10 192.168.1.10", "incl IN IP4 239.69.1.10 evil"),
     "not an IP address"),
    (b"v=0", "not text"),
])
def test_a_bad_description_is_refused_with_what_is_wrong(text, says):
    with pytest.raises(InvalidError) as refused:
        describe_stream(text)
    assert says in str(refused.value)
