#!/bin/sh
# Step 20 (inside the arm64 root, under qemu-user): users, the appliance in
# a venv, then the kernel last. Run by step 10 through mmdebstrap's
# customize hook (default base) or by step 11 in a chroot (--base).
#
# Input: /tmp/appliance-build/ (build.env, app/ or stub-app/, ca.crt).
# Run with a clean environment (env -i): the host's PIP_*, SSL_* and
# REQUESTS_* variables point at files that do not exist in here.
# Everything here must run without a terminal and without network access
# other than Debian's archive and PyPI.
set -eu
B=/tmp/appliance-build
. "$B/build.env"
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8 SOURCE_DATE_EPOCH
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
APT="apt-get -y -q -o APT::Install-Recommends=false -o Dpkg::Use-Pty=0"
say() { echo "    [chroot] $*"; }

say "users: appliance (service, group audio) and admin (SSH key only, no password)"
getent group audio >/dev/null || groupadd --system audio
id appliance >/dev/null 2>&1 || useradd --system --user-group --groups audio \
    --home-dir /var/lib/appliance --no-create-home --shell /usr/sbin/nologin appliance
id admin >/dev/null 2>&1 || useradd --create-home --user-group \
    --groups "$(getent group sudo >/dev/null && echo sudo,)audio,adm" --shell /bin/bash admin
# '*' is no password at all (not an empty one): only an SSH key gets in.
usermod -p '*' admin
usermod -p '*' root

say "apt: runtime packages ($RUNTIME_PACKAGES)"
$APT update
# shellcheck disable=SC2086
$APT install $RUNTIME_PACKAGES

say "app: building the wheels for arm64 ($APP)"
python3 -m venv /opt/appliance/venv
PIP="env PIP_CERT=$B/ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_PROGRESS_BAR=off /opt/appliance/venv/bin/pip"
# bookworm's venv has pip 23.0 and no wheel: sdists without a pyproject.toml
# (pyalsaaudio) then fail with "invalid command 'bdist_wheel'".
$PIP install -q --upgrade pip setuptools wheel
if [ "$APP" = source ]; then
    # shellcheck disable=SC2086
    $APT install $APP_BUILD_PACKAGES
    # The versions the test suite runs (packages/python.txt), not PyPI's newest.
    $PIP wheel -q -c "$B/app/packages/python.txt" -w "$B/wheels" "$B/app"
else
    $PIP wheel -q -w "$B/wheels" "$B/stub-app"
fi
$PIP install -q --no-index --find-links "$B/wheels" appliance
$PIP freeze --all >"$B/pip-freeze.txt"
if [ "$APP" = source ]; then
    # shellcheck disable=SC2086
    $APT purge $APP_BUILD_PACKAGES
    # Everything here was installed without Recommends, so nothing needed is
    # held only by one; without this gcc-12, binutils and libc6-dev stayed.
    $APT -o APT::AutoRemove::RecommendsImportant=false \
        -o APT::AutoRemove::SuggestsImportant=false autoremove --purge
fi
test -x /opt/appliance/venv/bin/appliance

if [ "$BASE" = debian ]; then
    # Installed last and alone, so mkinitramfs (minutes under qemu-user)
    # runs once instead of once more for every later trigger.
    say "kernel and Raspberry Pi firmware ($KERNEL_PACKAGES), one mkinitramfs"
    # The kernel's postinst creates the initramfs (update-initramfs -c);
    # the initramfs-tools trigger would then build it all over again (-u),
    # another 8 minutes under qemu-user. update_initramfs=no stops only -u.
    conf=/etc/initramfs-tools/update-initramfs.conf
    sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$conf"
    # Only the modules that mount the root (files/debian/.../hooks/appliance-modules).
    install -D -m 644 "$B/initramfs-conf" /etc/initramfs-tools/conf.d/appliance
    install -D -m 755 "$B/initramfs-modules" /etc/initramfs-tools/hooks/appliance-modules
    install -D -m 755 "$B/initramfs-root-wait" /etc/initramfs-tools/scripts/local-block/appliance-root-wait
    # shellcheck disable=SC2086
    $APT install $KERNEL_PACKAGES
    sed -i 's/^update_initramfs=.*/update_initramfs=yes/' "$conf"
    ls /boot/firmware/initrd.img-* /boot/firmware/vmlinuz-* >/dev/null \
        || { echo "raspi-firmware did not put the kernel on the boot partition" >&2; exit 1; }
fi

# GStreamer's plugin registry, made once here: the appliance reads it and
# never scans the plugins at boot (GST_REGISTRY_UPDATE=no in its unit; the
# root is read-only and an update brings a registry of its own).
gst_registry() {
    mkdir -p /usr/lib/appliance
    rm -f /usr/lib/appliance/gst-registry.bin
    GST_REGISTRY=/usr/lib/appliance/gst-registry.bin python3 - <<'PY'
import ctypes, sys
gst = ctypes.CDLL("libgstreamer-1.0.so.0")
gst.gst_init(None, None)
gst.gst_element_factory_find.restype = ctypes.c_void_p
# What the engine checks at start (native/ae_engine.c) and what webrtcbin
# creates inside itself.
need = ["webrtcbin", "rtpopuspay", "appsrc", "tee", "nicesink", "nicesrc", "rtpbin",
        "dtlssrtpenc", "dtlssrtpdec", "srtpenc", "srtpdec", "rtpfunnel", "rtpstorage",
        "sctpenc", "sctpdec", "capsfilter", "queue", "funnel"]
missing = [n for n in need if not gst.gst_element_factory_find(n.encode())]
if missing:
    sys.exit(f"GStreamer elements missing after the lean-out: {missing}")
print(f"    [chroot] gst registry: {len(need)} needed elements present")
PY
    test -s /usr/lib/appliance/gst-registry.bin
    # GStreamer writes it 0600 (a temporary file renamed), and the app runs
    # as the appliance user: a registry it cannot read makes every start
    # scan all the plugins again (3 of the app's 8 s in QEMU).
    chmod 644 /usr/lib/appliance/gst-registry.bin
}

if [ "$LEAN" = yes ]; then
    set -f  # the list's patterns are for dpkg-query, not the shell
    # shellcheck disable=SC2086
    drop=$(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' $DROP_PACKAGES 2>/dev/null \
        | awk '$1 ~ /^ii/ { print $2 }' | sort -u | tr '\n' ' ')
    set +f
    say "lean: purging $(echo $drop | wc -w) packages only unused plugins need: $drop"
    # shellcheck disable=SC2086
    [ -z "$drop" ] || dpkg --purge --force-depends $drop >/dev/null
    # What only the purged packages needed (libz3 under LLVM, oneDNN under
    # onnxruntime, a MIDI sound font, ...): apt autoremove cannot run on a
    # root whose dependencies were broken on purpose, so the same walk by hand.
    # shellcheck disable=SC2086
    orphans=$(python3 "$B/lean-orphans.py" /var/lib/dpkg/status $RUNTIME_PACKAGES $KERNEL_PACKAGES \
        | tr '\n' ' ')
    say "lean: purging $(echo $orphans | wc -w) packages nothing left needs: $orphans"
    # shellcheck disable=SC2086
    [ -z "$orphans" ] || dpkg --purge --force-depends $orphans >/dev/null
    printf '%s\n' $drop $orphans >/var/lib/appliance-dropped-packages
    gdir=$(dirname "$(find /usr/lib -name libgstcoreelements.so | head -1)")
    for so in "$gdir"/*.so; do
        if LC_ALL=C ldd "$so" 2>&1 | grep -q 'not found'; then
            say "lean: plugin $(basename "$so") needs a purged library: deleted"
            rm -f "$so"
        fi
    done
    # Only the broadcom device trees (the Pi's); the boot partition has its own copy.
    for d in /usr/lib/linux-image-*; do
        [ -d "$d/broadcom" ] || continue
        find "$d" -mindepth 1 -maxdepth 1 ! -name broadcom -exec rm -rf {} +
    done
    rm -f /boot/System.map-* /boot/config-*
    rm -rf /usr/share/doc/*/changelog* /usr/share/doc/*/NEWS* /var/cache/debconf/*-old
fi
if [ "$APP" = source ]; then
    engine_libs=$(find /opt/appliance/venv -name '*.so' -path '*appliance*')
    for so in $engine_libs; do
        if LC_ALL=C ldd "$so" 2>&1 | grep 'not found'; then
            echo "the engine $so lost a library" >&2; exit 1
        fi
    done
fi
gst_registry

# Every .pyc here is hash-based and checked (pip and py3compile write them so
# when SOURCE_DATE_EPOCH is set): each import reads and hashes its source
# again. The root is read-only and an update replaces it whole, so no source
# ever changes under its .pyc: mark them unchecked (PEP 552), which saved
# 1.5 of the app's 17 s start under qemu-user.
say "python: hash-based .pyc files marked unchecked"
python3 - <<'PY'
import os
marked = 0
for top in ("/usr/lib", "/opt/appliance/venv"):
    for d, _, files in os.walk(top):
        for name in files:
            if name.endswith(".pyc"):
                with open(os.path.join(d, name), "r+b") as f:
                    head = f.read(8)
                    # Flags after the magic: bit 0 hash-based, bit 1 check the source.
                    if len(head) == 8 and int.from_bytes(head[4:], "little") == 0b11:
                        f.seek(4)
                        f.write((0b01).to_bytes(4, "little"))
                        marked += 1
print(f"    [chroot] {marked} .pyc files")
PY

say "SSH off until a key is given; no host keys in the image"
systemctl disable ssh.service >/dev/null 2>&1 || true
rm -f /etc/ssh/ssh_host_*

$APT clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
