# Step 40: the disk image, without loop mounts or root. Each file system is
# made in its own file (mkfs.vfat + mcopy; mkfs.ext4 -d under fakeroot), then
# copied into place in an image file partitioned with sfdisk.
#
#   1  bootfs   FAT32  firmware, kernel, config.txt, appliance.toml  (ro)
#   2  rootfs   ext4   the system                                     (ro)
#   3  appdata  ext4   the appliance's state, data=journal            (rw),
#                      room for an update uploaded from the admin page
#   4  rootfs B        the second root slot for A/B updates: empty (RAUC
#                      writes an update there); as large as partition 2
# shellcheck shell=bash

# mkfs.ext4 -d copies each file's ctime and atime, which are "now" whatever
# we do to the tree (reading a file for the copy sets its atime); set them to
# SOURCE_DATE_EPOCH afterwards so the image is reproducible.
ext4_pin_ctime() {
    local fs=$1 dir=$2 n
    (cd "$dir" && find . -printf '%P\n') | LC_ALL=C sort | awk -v t="$SOURCE_DATE_EPOCH" '
        BEGIN { print "sif / ctime @" t; print "sif / atime @" t }
        $0 != "" && $0 !~ /["\\]/ { print "sif \"/" $0 "\" ctime @" t; print "sif \"/" $0 "\" atime @" t }' >"$WORK_DIR/ctime.cmds"
    n=$(wc -l <"$WORK_DIR/ctime.cmds")
    debugfs -w -f "$WORK_DIR/ctime.cmds" "$fs" >/dev/null 2>"$WORK_DIR/ctime.log" \
        || { cat "$WORK_DIR/ctime.log" >&2; die "debugfs could not pin ctimes in $fs"; }
    if grep -v '^debugfs' "$WORK_DIR/ctime.log" | grep -q .; then
        head -5 "$WORK_DIR/ctime.log" >&2
        die "debugfs could not pin ctimes in $fs"
    fi
    info "ctime and atime of $((n / 2)) inodes pinned to $SOURCE_DATE_EPOCH"
}

# What the app keeps free on the state partition when it takes an upload
# (appliance/config.py: [update] free_margin_bytes; tests/image/test_assemble.py
# checks the two agree), and room for the state itself.
UPDATE_MARGIN_MB=64
DATA_EXTRA_MB=64

stage_assemble() {
    step "40 assemble: $IMG"
    need_tools sfdisk mkfs.vfat mcopy mkfs.ext4 fakeroot dd
    local w=$WORK_DIR mib=2048 # sectors per MiB
    local root_mb=$ROOT_SIZE_MB
    if [ "$root_mb" = 0 ]; then
        # Contents plus 10% for ext4's own metadata, plus the headroom asked for.
        local kib; kib=$(du -sk --apparent-size "$w/root" | cut -f1)
        root_mb=$(( kib * 11 / 10 / 1024 + ROOT_EXTRA_MB + 16 ))
    fi
    # The admin page streams an update to the state partition before RAUC
    # reads it, and refuses one that would leave less than the app's
    # [update] free_margin_bytes free: 64 MiB could never hold a bundle.
    local data_mb=$DATA_SIZE_MB need_mb=$((root_mb + UPDATE_MARGIN_MB + DATA_EXTRA_MB))
    if [ "$data_mb" = 0 ]; then
        data_mb=$need_mb
    elif [ "$data_mb" -lt "$need_mb" ]; then
        warn "DATA_SIZE_MB=$data_mb: an update uploaded from the admin page will not fit (it needs $need_mb)"
    fi
    local boot_start=$((4 * mib)) boot_sectors=$((BOOT_SIZE_MB * mib))
    local root_start=$((boot_start + boot_sectors)) root_sectors=$((root_mb * mib))
    local data_start=$((root_start + root_sectors)) data_sectors=$((data_mb * mib))
    local rootb_start=$((data_start + data_sectors)) rootb_sectors=$root_sectors
    local total=$((rootb_start + rootb_sectors))
    info "layout: boot ${BOOT_SIZE_MB} MiB, root A ${root_mb} MiB, state ${data_mb} MiB, root B ${root_mb} MiB, total $((total / mib)) MiB"

    info "bootfs: mkfs.vfat + mcopy"
    rm -f "$w/boot.vfat"
    mkfs.vfat -F 32 -n bootfs -i "$BOOT_VOLID" --invariant -C "$w/boot.vfat" $((BOOT_SIZE_MB * 1024)) >/dev/null 2>"$w/mkfs.vfat.log" \
        || { cat "$w/mkfs.vfat.log" >&2; die "mkfs.vfat failed"; }
    # mtools stamps what it creates with SOURCE_DATE_EPOCH (exported in step 00).
    (cd "$w/boot" && mcopy -s -p -m -Q -i "$w/boot.vfat" ./* ::)

    info "rootfs: mkfs.ext4 -d under fakeroot"
    rm -f "$w/root.ext4" "$w/data.ext4"
    in_fakeroot_read mkfs.ext4 -q -F -b 4096 -L rootfs -U "$ROOT_UUID" \
        -E "hash_seed=$ROOT_UUID,root_owner=0:0" -d "$w/root" "$w/root.ext4" "${root_mb}M" >/dev/null \
        || die "mkfs.ext4 of the root failed (is ROOT_SIZE_MB too small?)"
    info "appdata: mkfs.ext4, owned by the appliance user"
    in_fakeroot_read mkfs.ext4 -q -F -b 4096 -L appdata -U "$DATA_UUID" \
        -E "hash_seed=$DATA_UUID,root_owner=$(cat "$w/data-owner")" -d "$w/data" "$w/data.ext4" "${data_mb}M" >/dev/null

    ext4_pin_ctime "$w/root.ext4" "$w/root"
    ext4_pin_ctime "$w/data.ext4" "$w/data"

    info "partition table: sfdisk"
    rm -f "$IMG"
    truncate -s $((total * 512)) "$IMG"
    sfdisk --quiet --no-reread --no-tell-kernel "$IMG" <<EOF
label: dos
label-id: $DISK_ID
unit: sectors

start=$boot_start, size=$boot_sectors, type=c, bootable
start=$root_start, size=$root_sectors, type=83
start=$data_start, size=$data_sectors, type=83
start=$rootb_start, size=$rootb_sectors, type=83
EOF
    info "copying the file systems into place"
    dd if="$w/boot.vfat" of="$IMG" bs=1M seek=$((boot_start / mib)) conv=notrunc,sparse status=none
    dd if="$w/root.ext4" of="$IMG" bs=1M seek=$((root_start / mib)) conv=notrunc,sparse status=progress
    dd if="$w/data.ext4" of="$IMG" bs=1M seek=$((data_start / mib)) conv=notrunc,sparse status=none
    rm -f "$w/boot.vfat" "$w/root.ext4" "$w/data.ext4"
    touch --date="@$SOURCE_DATE_EPOCH" "$IMG"
}
