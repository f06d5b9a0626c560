"""The admin page offers to set the box's clock from the browser only while
no network time keeps it (``status.clock.settable``), and the button sets it
through the clock seam."""
from __future__ import annotations

import time

import pytest

from tests.e2e.conftest import Browser, open_admin
from tests.web.conftest import make_config, open_server

pytestmark = [pytest.mark.trio, pytest.mark.browser]


async def test_the_clock_offer_is_shown_only_while_unsynchronised_and_sets_the_clock(tmp_path, browser):
    root = tmp_path / "board"     # no timesyncd mark under it: not synchronised
    root.mkdir()
    async with open_server(make_config(tmp_path / "state").replace(board_root=root)) as server:
        calls: list[int] = []
        server.service.clock.setter = calls.append

        def click_it(b: Browser) -> str:
            admin = open_admin(b, server.url)
            admin.wait_for_selector("#clock-offer:not([hidden])")
            facts = admin.text_content("#clock-facts")
            with admin.expect_response("**/api/clock") as answer:
                admin.click("#clock-set")
            assert answer.value.status == 200, answer.value.text()
            assert not admin.text_content("#error")
            admin.close()
            return facts

        before = time.time()
        facts = await browser.call(click_it)
        assert "The box's clock says" in facts and "this browser's" in facts
        assert len(calls) == 1 and before - 5 <= calls[0] / 1e9 <= time.time() + 5

        server.service.clock.synchronized = lambda: True

        def hidden(b: Browser) -> bool:
            admin = open_admin(b, server.url)
            admin.wait_for_selector("#facts .fact")
            shown = admin.is_visible("#clock-set")
            admin.close()
            return shown

        assert await browser.call(hidden) is False
