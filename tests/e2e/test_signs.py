"""The printable signs (/signs) in headless Chromium: one page per channel
when printed (A4 and Letter), each with one QR code that decodes to the
channel's listen address, that address in words, and the channel's own
language."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.phone import Phone, phone  # noqa: F401
from tests.web.conftest import make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]

ROOT = Path(__file__).resolve().parents[2]
A4_PORTRAIT = {"width": 900, "height": 1200}
DATA = {
    "name": "Lecture Hall A",
    "sources": [{"id": "tone", "kind": "tone"}],
    "sinks": [{"id": "main", "name": "Lecture (floor)", "kind": "opus", "language": "en"},
              {"id": "fr", "name": "Français", "kind": "opus", "language": "fr",
               "description": "Interprétation simultanée"},
              {"id": "ar.live", "name": "العربية", "kind": "opus", "language": "ar"}],
    "routes": [{"id": "tone-main", "source_id": "tone", "sink_id": "main"}],
}


def modules(svg: str) -> list[list[bool]]:
    """The QR matrix drawn by qr.js's SVG (one 1x1 path square per dark module)."""
    size = int(re.search(r'viewBox="0 0 (\d+) \d+"', svg).group(1))
    grid = [[False] * size for _ in range(size)]
    for x, y in re.findall(r"M(\d+),(\d+)h1v1h-1z", svg):
        grid[int(y)][int(x)] = True
    return [row[4:-4] for row in grid[4:-4]]   # without the quiet zone


def encodes(matrix: list[list[bool]], text: str) -> bool:
    """True when ``matrix`` is the QR code (level M) of ``text`` for one of
    the eight masks, by the reference encoder."""
    import qrcode
    for mask in range(8):
        ref = qrcode.QRCode(version=(len(matrix) - 17) // 4, border=0, mask_pattern=mask,
                            error_correction=qrcode.constants.ERROR_CORRECT_M)
        ref.add_data(qrcode.util.QRData(text.encode(), mode=qrcode.util.MODE_8BIT_BYTE), optimize=0)
        ref.make(fit=False)
        if ref.get_matrix() == matrix:
            return True
    return False


async def test_one_sign_per_channel_whose_qr_code_opens_that_channel(tmp_path, phone):
    pytest.importorskip("qrcode")
    out = ROOT / "docs" if os.environ.get("UPDATE_SCREENSHOTS") else tmp_path
    async with open_server(make_config(tmp_path / "state", data=DATA)) as server:
        port = server.url.rsplit(":", 1)[1]
        host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")
        base = f"http://{host}.local:{port}/listen/"

        def run(p: Phone):
            page = p.open(server.url + "/signs", size=A4_PORTRAIT, locale="en-GB",
                          wait=".sign .qr svg", ready="() => document.documentElement.dataset.ready")
            signs = page.eval_on_selector_all(".sign", """ss => ss.map(s => ({
                sink: s.dataset.sink, lang: s.lang, dir: s.dir,
                qrs: s.querySelectorAll('.qr svg').length, svg: s.querySelector('.qr').innerHTML,
                name: s.querySelector('.channel').innerText, address: s.querySelector('.address').innerText,
                scan: s.querySelector('.scan').innerText, venue: s.querySelector('.venue').innerText}))""")
            shots = []
            for i in range(len(signs)):
                path = tmp_path / f"qr-{i}.png"
                page.locator(".sign .qr").nth(i).screenshot(path=str(path))
                shots.append(path)
            page.emulate_media(media="print")
            page.locator(".sign").first.screenshot(path=str(out / "signs-print.png"))
            pdfs = {fmt: page.pdf(format=fmt, print_background=True) for fmt in ("A4", "Letter")}
            Phone.close(page)
            return signs, shots, pdfs

        signs, shots, pdfs = await phone.call(run)

    assert [s["sink"] for s in signs] == ["main", "fr", "ar.live"]
    for sign in signs:
        url = base + sign["sink"]
        assert sign["qrs"] == 1 and sign["address"] == url and sign["venue"] == "Lecture Hall A"
        assert encodes(modules(sign["svg"]), url), sign["sink"]
    by = {s["sink"]: s for s in signs}
    assert by["fr"]["name"] == "Français" and by["fr"]["lang"] == "fr"
    assert by["fr"]["scan"].startswith("Scannez")
    assert (by["ar.live"]["lang"], by["ar.live"]["dir"]) == ("ar", "rtl")
    assert by["main"]["scan"].startswith("Scan with")
    for fmt, pdf in pdfs.items():   # one printed page per channel, on both papers
        assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 3, fmt
    # the pixels, read back by a real QR reader where one is installed
    if shutil.which("zbarimg"):
        for sign, shot in zip(signs, shots, strict=True):
            read = subprocess.run(["zbarimg", "--raw", "-q", str(shot)], capture_output=True,
                                  text=True, timeout=30)
            assert read.stdout.strip().splitlines() == [base + sign["sink"]]


async def test_the_admin_page_has_a_button_that_opens_the_signs(tmp_path, browser):
    from tests.e2e.conftest import open_admin
    async with open_server(make_config(tmp_path / "state", data=DATA)) as server:
        def run(b):
            admin = open_admin(b, server.url)
            admin.wait_for_selector("#signs")
            with admin.expect_popup() as popup:
                admin.click("#signs")
            page = popup.value
            page.wait_for_selector(".sign .qr svg")
            count = page.locator(".sign").count()
            page.close()
            admin.close()
            return count
        assert await browser.call(run) == 3


async def test_on_a_hotspot_each_sign_has_a_wifi_join_code_beside_the_listen_code(tmp_path, phone):
    """The join code reads back (zbarimg) as the WIFI: URI phone cameras
    join with, escapes included; both codes fit one printed page."""
    from appliance.web.signs import wifi_qr_text
    ssid, passphrase = "Hall; A", 'pass:word,"1"'
    config = make_config(tmp_path / "state", data=DATA, wifi_ssid=ssid, wifi_passphrase=passphrase)
    async with open_server(config) as server:
        port = server.url.rsplit(":", 1)[1]
        host = re.sub(r"[^a-z0-9-]+", "-", socket.gethostname().split(".")[0].lower()).strip("-")

        def run(p: Phone):
            page = p.open(server.url + "/signs", size=A4_PORTRAIT, locale="en-GB",
                          wait=".sign .qr svg", ready="() => document.documentElement.dataset.ready")
            first = page.locator(".sign").first
            svgs = first.locator(".qr").evaluate_all("qs => qs.map(q => q.innerHTML)")
            caption = first.locator(".wifi-code figcaption").inner_text()
            shots = []
            for i in range(2):
                path = tmp_path / f"code-{i}.png"
                first.locator(".qr").nth(i).screenshot(path=str(path))
                shots.append(path)
            page.emulate_media(media="print")
            pdf = page.pdf(format="A4", print_background=True)
            Phone.close(page)
            return svgs, caption, shots, pdf

        svgs, caption, shots, pdf = await phone.call(run)

    join = wifi_qr_text(ssid, passphrase)
    assert join == 'WIFI:T:WPA;S:Hall\\; A;P:pass\\:word\\,\\"1\\";;'
    assert len(svgs) == 2
    listen = f"http://{host}.local:{port}/listen/main"
    if importlib.util.find_spec("qrcode"):
        assert encodes(modules(svgs[0]), listen) and encodes(modules(svgs[1]), join)
    assert caption == f"Scan to join the Wi‑Fi “{ssid}”"
    assert len(re.findall(rb"/Type\s*/Page\b", pdf)) == 3   # still one page per channel
    if shutil.which("zbarimg"):
        read = [subprocess.run(["zbarimg", "--raw", "-q", str(shot)], capture_output=True,
                               text=True, timeout=30).stdout.strip() for shot in shots]
        assert read == [listen, join]
