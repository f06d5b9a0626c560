"""``/venue`` through a real avahi-daemon: two boxes, each in a network
namespace of the test's own with its own avahi-daemon and system bus, joined
by a veth pair (tests/support/venue_avahi_check.py). What test_venue.py
proves through the browse seam, here with the image's service file on the
wire as mDNS and the product's ``avahi_browse`` reading it."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import trio

from appliance.venue import GONE_AFTER_S, REFRESH_S
from tests.support.venue_avahi_check import A, B
from tests.support.namespaces import can_unshare, run_scenario

SCRIPT = Path(__file__).parents[1] / "support" / "venue_avahi_check.py"

pytestmark = [
    pytest.mark.trio,
    pytest.mark.skipif(not can_unshare(), reason="needs network namespaces (unshare -n as root)"),
    pytest.mark.skipif(not all(shutil.which(tool) for tool in
                               ("avahi-daemon", "avahi-browse", "dbus-daemon")),
                       reason="needs avahi-daemon, avahi-utils and dbus-daemon (packages/test.txt)"),
]


async def stop_gently(process: trio.Process) -> None:
    """Cancelled: SIGTERM, and time for the script to end its daemons and B."""
    process.terminate()
    with trio.move_on_after(40):
        await process.wait()
    process.kill()


async def check(*args: str) -> dict:
    # the last 12,000 characters of stderr hold the daemons' logs
    return await run_scenario(SCRIPT, *args, tail=12000, deliver_cancel=stop_gently)


def assert_sees_each_other(heard: dict) -> None:
    # A's page: itself, then B with B's two channels, linked by B's .local name
    a = heard["a_sees"]
    assert len(a["boxes"]) == 2 and a["boxes"][1] == B.base, a
    assert a["channels"] == ["fr", "main", "main"] and a["other_name"]
    assert {f"{B.base}/listen/main", f"{B.base}/listen/fr"} <= set(a["qr"]), a
    # B's page: itself, then A and A's one channel
    b = heard["b_sees"]
    assert len(b["boxes"]) == 2 and b["boxes"][1] == A.base, b
    assert b["channels"] == ["fr", "main", "main"] and b["other_name"]
    assert f"{A.base}/listen/main" in b["qr"], b


async def test_two_boxes_find_each_other_through_avahi_and_its_goodbye():
    """Each box's /venue lists the other, found by its own avahi-daemon over
    mDNS on the veth link; B's avahi-daemon stops: A's avahi forgets B at
    once (its goodbye), so A stops asking B (test_venue.py: the list then
    drops B GONE_AFTER_S after its last answer)."""
    heard = await check()
    assert_sees_each_other(heard)
    assert heard["browse_gone_s"] < 10, heard   # not the records' TTL (120 s and more)


@pytest.mark.slow
async def test_a_box_that_disappears_leaves_the_venue_within_a_minute():
    """As above, then B's box stops too; A's own refreshing, at the shipped
    REFRESH_S and GONE_AFTER_S (nothing driven by the test), drops B from
    A's /venue within a minute of B's avahi-daemon stopping (about 45 s)."""
    heard = await check("--until-gone")
    assert_sees_each_other(heard)
    assert heard["after"] == [heard["a_sees"]["boxes"][0]], heard
    assert heard["page_gone_s"] < 60, heard
    assert REFRESH_S + GONE_AFTER_S < 60
