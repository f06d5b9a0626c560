"""The hotspot in QEMU (slow): the kernel's mac80211_hwsim gives the guest
two virtual radios. The appliance (wifi_mode = "hotspot" in appliance.toml,
written with flash.sh) runs its access point on the first; the second is
moved into a network namespace inside the guest, where wpa_supplicant joins
with the passphrase, busybox udhcpc gets an address, and a phone's
captive-portal probe is sent to a name on the internet. It must reach the
appliance and be sent on to its listen page. Ethernet keeps answering
meanwhile.

    make test-slow PYTEST_ARGS=tests/image/test_hotspot.py
"""
import json
import time

import pytest

from image_vm import TOKEN, VM, Card, ssh_key

SSID, PSK = "Listen here", "correct horse"

# Run in the guest, in the station's namespace, with the hotspot's DNS server
# as the resolver: what a phone does after joining.
PROBE = r"""
import http.client, json, socket
out = {"resolved": socket.gethostbyname("connectivitycheck.gstatic.com"),
       "resolved_apple": socket.gethostbyname("captive.apple.com")}
def get(host, path, addr=None):
    c = http.client.HTTPConnection(addr or host, 80, timeout=30)
    c.request("GET", path, headers={"Host": host, "User-Agent": "Dalvik/2.1.0 (Linux; Android 14)"})
    r = c.getresponse()
    body = r.read()
    return {"status": r.status, "location": r.getheader("Location"), "body": body[:4000].decode("utf-8", "replace")}
out["probe"] = get("connectivitycheck.gstatic.com", "/generate_204")
# A probe sent to an address, not a name (the nftables redirect).
out["by_address"] = get("captive.apple.com", "/hotspot-detect.html", addr="17.253.109.201")
loc = out["probe"]["location"]
if loc and loc.startswith("http://"):
    host, _, path = loc[len("http://"):].partition("/")
    out["page"] = get(host, "/" + path)
print(json.dumps(out))
"""

UDHCPC = """#!/bin/sh
# busybox udhcpc's script: keep the lease and configure it.
case $1 in
    bound|renew)
        env > /run/sta-lease
        ip addr add "$ip/$mask" dev "$interface"
        [ -n "$router" ] && ip route add default via "$router" dev "$interface"
        echo "nameserver $dns" > /run/sta-resolv.conf ;;
esac
exit 0
"""


@pytest.mark.slow
def test_phone_joins_the_hotspot_and_is_sent_to_the_listen_page(appliance_image, tmp_path, capsys):
    img, _ = appliance_image
    card = Card(img, tmp_path / "card.img")
    key = ssh_key(tmp_path)
    card.settings("--ssh-key", f"{key}.pub", "--token", TOKEN, "--wifi-mode", "hotspot", "--wifi-ssid", SSID,
                  "--wifi-psk", PSK, "--wifi-country", "GB", "--wifi-channel", "6")
    vm = VM(card, tmp_path, key)
    try:
        vm.boot()
        vm.wait_status()
        vm.wait_ssh()
        # Two radios: the appliance's wlan0 wants appliance-hotspot.service.
        vm.ssh("sudo modprobe mac80211_hwsim radios=2")
        deadline = time.monotonic() + 180
        while vm.ssh("systemctl is-active appliance-hotspot.service appliance-hotspot-dns.service",
                     check=False).stdout.split() != ["active", "active"]:
            assert time.monotonic() < deadline, vm.ssh(
                "systemctl status --no-pager appliance-hotspot.service appliance-hotspot-dns.service; "
                "sudo journalctl -b --no-pager -u appliance-hotspot -u appliance-hotspot-dns | tail -40",
                check=False).stdout
            time.sleep(2)
        vm.ssh("sudo nft list table inet appliance_hotspot")
        # The phone: the second radio in its own namespace.
        vm.ssh("sudo ip netns add sta && "
               "sudo iw phy \"$(cat /sys/class/net/wlan1/phy80211/name)\" set netns name sta")
        wpa = f'network={{\n ssid="{SSID}"\n psk="{PSK}"\n key_mgmt=WPA-PSK\n}}\n'
        vm.ssh("sudo tee /run/sta-wpa.conf >/dev/null", input=wpa)
        # /run is mounted noexec (systemd 256 and later): the script goes to /tmp.
        vm.ssh("sudo tee /tmp/sta-udhcpc.sh >/dev/null && sudo chmod 755 /tmp/sta-udhcpc.sh", input=UDHCPC)
        vm.ssh("sudo ip netns exec sta ip link set lo up && "
               "sudo ip netns exec sta wpa_supplicant -B -i wlan1 -c /run/sta-wpa.conf -P /run/sta-wpa.pid")
        deadline = time.monotonic() + 120
        while "Connected to" not in vm.ssh("sudo ip netns exec sta iw dev wlan1 link", check=False).stdout:
            assert time.monotonic() < deadline, vm.ssh(
                "sudo ip netns exec sta iw dev wlan1 link; sudo journalctl -b --no-pager -u appliance-hotspot | tail -30",
                check=False).stdout
            time.sleep(2)
        vm.ssh("sudo ip netns exec sta busybox udhcpc -i wlan1 -n -q -t 10 -s /tmp/sta-udhcpc.sh")
        lease = dict(line.split("=", 1) for line in vm.ssh("sudo cat /run/sta-lease").stdout.splitlines() if "=" in line)
        assert lease["ip"].startswith("10.42.0.") and lease["router"] == "10.42.0.1"
        assert lease["dns"].split() == ["10.42.0.1"]
        p = vm.ssh("sudo ip netns exec sta unshare -m sh -c "
                   "'mount --bind /run/sta-resolv.conf /etc/resolv.conf && python3 -'", input=PROBE,
                   check=False)
        assert p.returncode == 0, p.stdout + p.stderr
        out = json.loads(p.stdout)
        with capsys.disabled():
            print(f"\nhotspot: lease {lease['ip']}/{lease.get('mask')} router {lease['router']}; "
                  f"probe: {json.dumps(out)[:600]}")
        assert out["resolved"] == out["resolved_apple"] == "10.42.0.1", "every name is the appliance"
        # The admin's Ethernet still works.
        vm.wait_status(timeout=60)
        # Captive-portal detection: the probe gets a redirect to the listen page
        # (the app's rule for a Host that is not its own, docs/IMAGE.md).
        assert out["probe"]["status"] == 302, out["probe"]
        assert out["probe"]["location"].startswith("http://"), out["probe"]
        assert out["by_address"]["status"] == 302, "a probe by address is redirected too"
        assert out["page"]["status"] == 200 and "<html" in out["page"]["body"].lower()
    finally:
        vm.stop()
