# Step 11 (--base FILE): start from an official Raspberry Pi OS Lite (arm64)
# image instead of Debian, for HATs that need the Raspberry Pi kernel and its
# overlays. Its two file systems are read without mounting anything (mtools
# for the FAT partition, debugfs rdump for ext4), customised by step 20 in a
# chroot under qemu-user, and packed again by step 40 with our partition
# layout (boot, read-only root, state).
#
# Needs root: debugfs keeps file owners only for root, and the arm64 chroot
# needs /proc and /dev. Raspberry Pi's own package archive is not used
# (packages come from Debian's archive, which Raspberry Pi OS builds on).
# shellcheck shell=bash

# part_field IMG N FIELD: start or size (in sectors) of partition N.
part_field() {
    sfdisk -J "$1" | python3 -c 'import json,sys; t=json.load(sys.stdin)["partitiontable"]; p=[p for p in t["partitions"] if p["node"].endswith(sys.argv[1])][0]; print(p[sys.argv[2]])' "$2" "$3"
}

stage_base() {
    local src=$1 img=$WORK_DIR/base.img
    step "11 base: Raspberry Pi OS image $src"
    [ "$(id -u)" = 0 ] || die "--base needs root: debugfs keeps file owners only for root, and the arm64 chroot needs /proc and /dev"
    [ -f "$src" ] || die "--base $src: no such file"
    need_tools sfdisk mcopy debugfs xz unshare chroot hardlink
    case $src in
        *.xz) info "decompressing"; xz -dcv "$src" >"$img" ;;
        *) cp --sparse=always "$src" "$img" ;;
    esac
    local label; label=$(sfdisk -J "$img" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["label"])')
    [ "$label" = dos ] || die "--base $src: expected an MBR (dos) partition table like Raspberry Pi OS, found $label"
    local boff roff
    boff=$(( $(part_field "$img" 1 start) * 512 ))
    roff=$(( $(part_field "$img" 2 start) * 512 ))
    mtype -i "$img@@$boff" ::config.txt >/dev/null 2>&1 \
        || die "--base $src: partition 1 has no config.txt: not a Raspberry Pi OS image"
    debugfs -R "stat /etc/os-release" "$img?offset=$roff" >/dev/null 2>&1 \
        || die "--base $src: partition 2 is not a root file system with /etc/os-release"
    info "boot partition: mcopy"
    mcopy -s -p -m -n -i "$img@@$boff" '::*' "$WORK_DIR/boot/"
    info "root partition: debugfs rdump"
    local e entries
    entries=$(debugfs -R "ls /" "$img?offset=$roff" 2>/dev/null | tr -s ' ' '\n' | grep -vx -e '' -e '\.' -e '\.\.' -e '([0-9]*)' -e '[0-9]*' -e 'lost+found')
    for e in $entries; do
        debugfs -R "rdump /$e $WORK_DIR/root" "$img?offset=$roff" 2>/dev/null
    done
    [ -f "$WORK_DIR/root/etc/os-release" ] || die "rdump of $src failed"
    # rdump writes each hard link as a copy of its own: mesa's drivers alone
    # (one file, ~40 names) grew the root from 1.1 to 2.1 GB. Link them again.
    hardlink -q -s 1M "$WORK_DIR/root/usr" || warn "hardlink failed; the root stays larger"
    mkdir -p "$WORK_DIR/root/boot/firmware"
    rm -f "$img"

    if [ "${BASE_SKIP_CHROOT:-}" = 1 ]; then
        info "BASE_SKIP_CHROOT=1: step 20 skipped (tests)"
        : >"$WORK_DIR/pip-freeze.txt"
        return
    fi
    step "20 customise (chroot under qemu-user)"
    ensure_binfmt
    local r=$WORK_DIR/root
    stage_in "$r/tmp/appliance-build"
    # Raspberry Pi's archive is out of reach: Debian's only, while we install.
    [ -f "$r/etc/apt/sources.list.d/raspi.list" ] && mv "$r/etc/apt/sources.list.d/raspi.list" "$WORK_DIR/raspi.list"
    cp "$r/etc/apt/sources.list" "$WORK_DIR/sources.list.orig" 2>/dev/null || true
    printf 'deb %s %s main non-free-firmware\n' "$MIRROR" "$SUITE" >"$r/etc/apt/sources.list"
    cp /etc/resolv.conf "$r/etc/resolv.conf.build" 2>/dev/null || true
    unshare --mount --pid --fork --propagation private sh -ec '
        r=$1
        mount -t proc proc "$r/proc"; mount --rbind /dev "$r/dev"; mount --rbind /sys "$r/sys"
        mount --bind /etc/resolv.conf "$r/etc/resolv.conf" 2>/dev/null || true
        chroot "$r" env -i HOME=/root TERM=dumb /bin/sh /tmp/appliance-build/20-customise-chroot.sh' sh "$r"
    cp "$r/tmp/appliance-build/pip-freeze.txt" "$WORK_DIR/pip-freeze.txt"
    rm -rf "$r/tmp/appliance-build" "$r/etc/resolv.conf.build"
    [ -f "$WORK_DIR/sources.list.orig" ] && cp "$WORK_DIR/sources.list.orig" "$r/etc/apt/sources.list"
    [ -f "$WORK_DIR/raspi.list" ] && mv "$WORK_DIR/raspi.list" "$r/etc/apt/sources.list.d/raspi.list"
    return 0
}
