"""The credentials' bookkeeping without HTTP: the throttle, the session
table, the setup code and the password file (a fake clock, real files)."""
from __future__ import annotations

import hashlib
import logging

import pytest

from appliance.admin_auth import (
    CODE_LENGTH, PASSWORD_FILE, AdminAuth, Sessions, Throttle, client_key,
    normalise_code,
)
from appliance.passwords import hash_password, is_password_hash, password_problem


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_throttle_lets_two_typos_pass_then_doubles_the_wait():
    clock = Clock()
    t = Throttle(clock=clock, free=2, base_s=1.0, cap_s=8.0)
    for _ in range(2):
        assert t.acquire("10.0.0.1") == 0.0
        t.release("10.0.0.1", False)
    waits = []
    for _ in range(6):
        # a third immediate try is not evaluated: it waits
        wait = t.acquire("10.0.0.1")
        waits.append(wait)
        clock.now += wait
        assert t.acquire("10.0.0.1") == 0.0
        t.release("10.0.0.1", False)
    assert waits == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    # another address is not slowed down by this one
    assert t.acquire("10.0.0.2") == 0.0
    t.release("10.0.0.2", True)
    # a success forgets the failures
    clock.now += t.acquire("10.0.0.1")
    assert t.acquire("10.0.0.1") == 0.0
    t.release("10.0.0.1", True)
    assert t.acquire("10.0.0.1") == 0.0


def test_one_attempt_at_a_time_per_address_and_bounded_memory():
    clock = Clock()
    t = Throttle(clock=clock, max_clients=100)
    assert t.acquire("10.0.0.1") == 0.0
    assert t.acquire("10.0.0.1") > 0  # a second guess while the first is being checked
    t.release("10.0.0.1", True)
    for i in range(1000):
        t.acquire(f"10.1.{i // 256}.{i % 256}")
    assert len(t) <= 100


def test_ipv6_addresses_count_per_64_and_mapped_ipv4_as_ipv4():
    assert client_key("2001:db8::1") == client_key("2001:db8::ffff:1") == "2001:db8::/64"
    assert client_key("2001:db8:0:1::1") != client_key("2001:db8::1")
    assert client_key("::ffff:10.0.0.1") == "10.0.0.1"
    assert client_key("not an address" * 10) == ("not an address" * 10)[:64]


def test_sessions_expire_slide_and_stay_bounded():
    clock = Clock()
    s = Sessions(clock=clock, idle_s=100.0, max_sessions=3)
    sid, session = s.create()
    assert s.get(sid) is session and len(session.csrf) >= 40
    clock.now += 90
    assert s.get(sid) is session  # used: extended
    clock.now += 90
    assert s.get(sid) is session
    clock.now += 101
    assert s.get(sid) is None
    ids = [s.create()[0] for _ in range(10)]
    assert len(s) == 3 and all(s.get(i) for i in ids[-3:])
    s.end(ids[-1])
    assert s.get(ids[-1]) is None
    for bad in ("", "x" * 1000, "\ud800", ids[-2] + "x"):
        assert s.get(bad) is None


def test_password_rules():
    assert password_problem("long enough") is None
    for bad in ("short", "x" * 257, "password\x00", "pass\nword12", "pass\ud800word"):
        assert password_problem(bad), bad
    assert normalise_code(" abcd-efgh jkmn ") == "ABCDEFGHJKMN"


def test_the_setup_code_is_written_kept_across_restarts_and_used_once(tmp_path, caplog):
    code_file = tmp_path / "boot" / "setup-code.txt"
    caplog.set_level(logging.WARNING, logger="appliance.auth")
    auth = AdminAuth(state_dir=tmp_path / "state", setup_code_file=str(code_file))
    assert not auth.password_set and not auth.setup_open
    code = auth.open_setup()
    assert code and len(code) == CODE_LENGTH and auth.setup_open
    text = code_file.read_text()
    assert normalise_code(text.splitlines()[0]) == code
    assert any(code[:4] in r.getMessage() for r in caplog.records)
    # a restart before it is used: the same code (it may have been read off the card)
    again = AdminAuth(state_dir=tmp_path / "state", setup_code_file=str(code_file))
    assert again.open_setup() == code
    assert not again.check_setup_code("WRONG-CODE-HERE")
    assert not again.check_setup_code("\ud800" * 12)
    assert again.check_setup_code(code.lower())
    again.set_password("a fine password")
    assert not code_file.exists()
    assert not again.check_setup_code(code) and not again.setup_open
    saved = (tmp_path / "state" / PASSWORD_FILE).read_text().strip()
    assert is_password_hash(saved) and "a fine password" not in saved
    assert again.check_password("a fine password") and not again.check_password("a fine passwore")
    # after a restart: the saved password, no code
    third = AdminAuth(state_dir=tmp_path / "state", setup_code_file=str(code_file))
    assert third.open_setup() is None and third.password_set
    assert third.check_password("a fine password") and not code_file.exists()


def test_a_damaged_code_file_gets_a_new_code_and_a_configured_hash_needs_none(tmp_path):
    code_file = tmp_path / "code.txt"
    code_file.write_bytes(b"\xff\xfe garbage")
    auth = AdminAuth(state_dir=tmp_path, setup_code_file=str(code_file))
    code = auth.open_setup()
    assert normalise_code(code_file.read_text().splitlines()[0]) == code
    configured = AdminAuth(state_dir=tmp_path, setup_code_file=str(code_file),
                           password_hash=hash_password("configured pw"))
    assert configured.open_setup() is None and not code_file.exists()
    assert configured.check_password("configured pw")


def test_a_damaged_password_file_means_setup_again(tmp_path):
    (tmp_path / PASSWORD_FILE).write_text("plain text password\n")
    auth = AdminAuth(state_dir=tmp_path)
    assert not auth.password_set and auth.open_setup()
    assert (tmp_path / "setup-code.txt").exists()


@pytest.mark.parametrize("given", ["", "1234 ", "12345", "\ud800", "1234\x00"])
def test_the_pin_and_its_cookie_proof(tmp_path, given):
    auth = AdminAuth(state_dir=tmp_path, listen_pin="1234")
    assert auth.pin_ok("1234") and auth.pin_ok(" 1234")
    assert auth.pin_ok(given) is (given.strip() == "1234")
    proof = auth.listen_proof()
    # The proof holds no PIN: it is keyed per process, so the same PIN
    # elsewhere proves nothing here. (Not '"1234" not in proof': 64 random
    # hex digits hold "1234" about once in a thousand runs.)
    other = AdminAuth(state_dir=tmp_path, listen_pin="1234")
    assert auth.listen_proof_ok(proof) and not other.listen_proof_ok(proof)
    assert proof != hashlib.sha256(b"1234").hexdigest()
    assert not auth.listen_proof_ok(given)
    assert not AdminAuth(state_dir=tmp_path).pin_ok("")  # no PIN set: nothing to match
    assert not AdminAuth(state_dir=tmp_path).token_ok("")  # no token: bearer disabled
