#!/usr/bin/env bash
# Step 30, the part that runs under fakeroot (see 30-overlay.sh).
set -euo pipefail
R=$WORK_DIR/root B=$WORK_DIR/boot D=$WORK_DIR/data
PARTUUID=${DISK_ID#0x}
info() { printf '    %s\n' "$*" >&2; }
die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }
[ -d "$R/etc" ] || die "the root has no /etc: $R"

info "files: image/files/common${BASE:+ and image/files/$BASE}"
for layer in common "$BASE"; do
    [ -d "$IMAGE_DIR/files/$layer" ] || continue
    tar -C "$IMAGE_DIR/files/$layer" --owner=0 --group=0 --numeric-owner -cf - . \
        | tar -C "$R" --no-overwrite-dir -xpf -
done
chmod 0755 "$R/usr/local/sbin/appliance-firstboot"
chmod 0440 "$R/etc/sudoers.d/admin"
printf '%s\n' "$BASE" >"$R/etc/appliance-base"
printf 'appliance image %s (base %s)\n' "$VERSION" "$BASE" >"$R/etc/appliance-release"

# wants LINK_DIR UNIT [TARGET]: what `systemctl enable` would do.
wants() {
    mkdir -p "$R/etc/systemd/system/$1"
    ln -sfn "${3:-/etc/systemd/system/$2}" "$R/etc/systemd/system/$1/$2"
}
unwant() { rm -f "$R/etc/systemd/system/$1/$2"; }
mask() { ln -sfn /dev/null "$R/etc/systemd/system/$1"; }

info "units: appliance, appliance-firstboot, appliance-setup-code.path; SSH and timers that write to / off"
wants multi-user.target.wants appliance.service
wants sysinit.target.wants appliance-firstboot.service
wants paths.target.wants appliance-setup-code.path
unwant multi-user.target.wants ssh.service
rm -f "$R/etc/systemd/system/sshd.service" "$R"/etc/ssh/ssh_host_*
for t in apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
         fstrim.timer man-db.timer; do
    unwant timers.target.wants "$t"
done
mkdir -p "$R/etc/systemd/system-preset"
cat >"$R/etc/systemd/system-preset/10-appliance.preset" <<'P'
# Presets run at first boot would otherwise turn SSH on.
enable appliance.service
enable appliance-firstboot.service
enable appliance-setup-code.path
disable ssh.service
P
# The hotspot runs hostapd and dnsmasq under units of its own
# (appliance-hotspot*.service), only when appliance.toml asks for it.
mask hostapd.service
mask dnsmasq.service
# Nothing on the box uses FUSE, configfs, EFI pstore (a Pi has no EFI) or
# foreign binaries, and it drives no display: each of these loads a kernel
# module at every boot, each a second or more of signature check under QEMU.
for u in modprobe@drm.service sys-fs-fuse-connections.mount sys-kernel-config.mount \
         systemd-pstore.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount; do
    mask "$u"
done
# systemd-ssh-generator would bind sshd to AF_VSOCK and a local socket beside
# the ssh.service appliance.toml turns on (loading vsock for it): one way in.
# The others masked here have nothing to find on the box: the card is MBR
# (gpt-auto), no hibernation, no TPM, updates come through RAUC and not
# /system-update, no systemd.run= on the command line, no /etc/rc.local, and
# every /etc/init.d script has a native unit (sysv). PID 1 gives all its
# generators together a fixed 90 s and does not start past it
# (system.conf.d/appliance-crash.conf): the eleven took 10 s of every
# emulated boot, over 90 s once on a busy machine. fstab, getty and debug
# (systemd.mask= and friends, for someone at a screen) stay.
mkdir -p "$R/etc/systemd/system-generators"
for g in ssh gpt-auto hibernate-resume tpm2 system-update run rc-local sysv; do
    ln -sfn /dev/null "$R/etc/systemd/system-generators/systemd-$g-generator"
done
if [ "$BASE" = debian ]; then
    wants multi-user.target.wants systemd-networkd.service /lib/systemd/system/systemd-networkd.service
    wants sockets.target.wants systemd-networkd.socket /lib/systemd/system/systemd-networkd.socket
else
    # Raspberry Pi OS: no console wizard asking for a user and password, no
    # "ssh" file on the boot partition turning SSH on, no resize at boot.
    for u in userconfig.service sshswitch.service rpi-resize.service \
             rpi-resize-swap-file.service dphys-swapfile.service; do
        mask "$u"
    done
fi

info "read-only root: fstab, tmpfs for /tmp /var/tmp /var/lib/systemd, state on partition 3"
cat >"$R/etc/fstab" <<F
# The root file system is read-only; only the state partition is written
# (atomically, by the appliance). appliance-firstboot remounts / for a moment
# when appliance.toml changed.
# No line for /: it is slot A (partition 2) or B (partition 4), mounted
# read-only by the kernel (root=PARTUUID=... ro on the slot's command line).
# Both are on the card the kernel booted from: only udev's pace decides when
# they appear (system.conf.d/appliance-devices.conf says why 5 minutes).
PARTUUID=$PARTUUID-01  /boot/firmware      vfat   ro,noatime,fmask=0022,dmask=0022,flush,x-systemd.device-timeout=5min  0 2
PARTUUID=$PARTUUID-03  /var/lib/appliance  ext4   rw,noatime,nodev,nosuid,noexec,data=journal,commit=5,x-systemd.device-timeout=5min  0 2
tmpfs  /tmp              tmpfs  nosuid,nodev,mode=1777,size=64M  0 0
tmpfs  /var/tmp          tmpfs  nosuid,nodev,mode=1777,size=16M  0 0
tmpfs  /var/lib/systemd  tmpfs  nosuid,nodev,mode=0755,size=8M   0 0
F
mkdir -p "$R/var/lib/appliance" "$R/boot/firmware" "$R/tmp" "$R/var/tmp"
: >"$R/etc/machine-id"
rm -f "$R/var/lib/dbus/machine-id"
printf '%s\n' "$HOSTNAME" >"$R/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' \
    "$HOSTNAME" >"$R/etc/hosts"
if [ -e "$R/usr/share/zoneinfo/$TIMEZONE" ]; then
    ln -sfn "/usr/share/zoneinfo/$TIMEZONE" "$R/etc/localtime"
    printf '%s\n' "$TIMEZONE" >"$R/etc/timezone"
fi
appl=$(awk -F: '$1 == "appliance" { print $3 ":" $4 }' "$R/etc/passwd")
[ -n "$appl" ] || die "the root has no user 'appliance' (step 20 creates it)"
chown "$appl" "$R/var/lib/appliance"
chmod 0750 "$R/var/lib/appliance"
printf '%s\n' "$appl" >"$WORK_DIR/data-owner"

info "signed A/B updates: RAUC slots A (partition 2) and B (partition 4), keyring"
mkdir -p "$R/etc/rauc"
cp "$RAUC_KEYRING" "$R/etc/rauc/keyring.pem"
cat >"$R/etc/rauc/system.conf" <<C
# Signed A/B updates (docs/IMAGE.md). Bundles must be signed by a key whose
# certificate is in keyring.pem and name this compatible string.
[system]
compatible=$IMAGE_NAME-$BASE-arm64
bootloader=custom
mountprefix=/run/rauc
bundle-formats=-plain
data-directory=/var/lib/appliance/rauc

[keyring]
path=/etc/rauc/keyring.pem

[handlers]
bootloader-custom-backend=/usr/lib/appliance/boot-slot

[slot.rootfs.0]
device=/dev/disk/by-partuuid/$PARTUUID-02
type=ext4
bootname=A

[slot.rootfs.1]
device=/dev/disk/by-partuuid/$PARTUUID-04
type=ext4
bootname=B
C
chmod 0755 "$R/usr/lib/appliance/boot-slot" "$R/usr/lib/appliance/update-check"
wants multi-user.target.wants appliance-update-check.service
wants multi-user.target.wants appliance-reboot-trial.path

info "boot partition"
if [ -d "$R/boot/firmware" ] && [ -n "$(ls -A "$R/boot/firmware")" ]; then
    cp -r "$R/boot/firmware/." "$B/"
    find "$R/boot/firmware" -mindepth 1 -delete
fi
[ -f "$B/config.txt" ] || die "no config.txt for the boot partition (raspi-firmware or the base image provides it)"
[ -f "$B/cmdline.txt" ] || die "no cmdline.txt for the boot partition"
# One line; our root, read-only; Raspberry Pi OS's resize-at-first-boot off.
# panic=10: a root that never appears (the initramfs gives up) or a kernel
# panic reboots after 10 s instead of waiting at a console no one sees; a
# trial slot then falls back to the committed one.
python3 - "$B/cmdline.txt" "$PARTUUID" <<'PY'
import sys
path, partuuid = sys.argv[1], sys.argv[2]
drop = ("root=", "rootfstype=", "init=", "rootflags=", "panic=")
words = [w for w in open(path).read().split()
         if not w.startswith(drop) and w not in ("ro", "rw", "quiet")]
words += [f"root=PARTUUID={partuuid}-02", "rootfstype=ext4", "ro"]
for must in ("rootwait", "fsck.repair=yes", "panic=10", "quiet"):
    if must not in words:
        words.append(must)
open(path, "w").write(" ".join(words) + "\n")
PY
# Slot A's kernel, initramfs, device trees, overlays and command line live
# in slot-a/ (config.txt: os_prefix=slot-a/); an update puts slot B's in
# slot-b/ and names it in tryboot.txt, which the firmware reads instead of
# config.txt for one boot (see /usr/lib/appliance/boot-slot).
mkdir -p "$B/slot-a"
for f in "$B"/vmlinuz-* "$B"/initrd.img-* "$B"/*.dtb "$B"/overlays "$B"/cmdline.txt \
         "$B"/kernel*.img; do
    [ -e "$f" ] && mv "$f" "$B/slot-a/"
done
python3 - "$B/slot-a/cmdline.txt" <<'PY'
import sys
path = sys.argv[1]
words = [w for w in open(path).read().split() if not w.startswith("rauc.slot=")]
open(path, "w").write(" ".join(words + ["rauc.slot=A"]) + "\n")
PY
# The kernel and initramfs go by one name in every slot directory (an
# update may bring another kernel version): slot-a/vmlinuz, slot-a/initrd.img.
for f in "$B"/slot-a/vmlinuz-* "$B"/slot-a/initrd.img-*; do
    [ -e "$f" ] && mv "$f" "$B/slot-a/$(basename "$f" | sed 's/-[0-9].*//')"
done
python3 - "$B/config.txt" <<'PY'
import re, sys
path = sys.argv[1]
lines = [l for l in open(path).read().splitlines() if not l.startswith("os_prefix=")]
lines = [re.sub(r"^kernel=vmlinuz-\S+", "kernel=vmlinuz", l) for l in lines]
lines = [re.sub(r"^initramfs initrd\.img-\S+", "initramfs initrd.img", l) for l in lines]
# Last, in [all]: the slot the firmware boots (kernel, initramfs, dtbs, cmdline.txt).
open(path, "w").write("\n".join(lines + ["", "[all]", "os_prefix=slot-a/"]) + "\n")
PY
cp "$IMAGE_DIR/hats.tsv" "$B/hats.txt"
sed "s/@HOSTNAME@/$HOSTNAME/" "$IMAGE_DIR/appliance.toml.template" >"$B/appliance.toml"
printf 'appliance image %s (base %s)\n' "$VERSION" "$BASE" >"$B/appliance-release.txt"

find "$D" -mindepth 1 -delete
for d in "$R" "$B" "$D"; do
    find "$d" -newermt "@$SOURCE_DATE_EPOCH" -print0 \
        | xargs -0 -r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
done
