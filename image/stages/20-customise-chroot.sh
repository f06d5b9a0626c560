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
    $PIP wheel -q -w "$B/wheels" "$B/app"
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
    # shellcheck disable=SC2086
    $APT install $KERNEL_PACKAGES
    sed -i 's/^update_initramfs=.*/update_initramfs=yes/' "$conf"
    ls /boot/firmware/initrd.img-* /boot/firmware/vmlinuz-* >/dev/null \
        || { echo "raspi-firmware did not put the kernel on the boot partition" >&2; exit 1; }
fi

say "SSH off until a key is given; no host keys in the image"
systemctl disable ssh.service >/dev/null 2>&1 || true
rm -f /etc/ssh/ssh_host_*

$APT clean
rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin
