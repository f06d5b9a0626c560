# Step 30: our files on top of the root, the read-only root's fstab, units
# enabled, SSH off, and the boot partition's contents (firmware, kernel,
# cmdline.txt, config.txt, hats.txt, the appliance.toml template).
# Runs 30-overlay-root.sh under fakeroot so owners and modes are right
# without being root.
# shellcheck shell=bash

stage_overlay() {
    step "30 overlay: files, units, read-only root, boot partition"
    need_tools fakeroot tar python3
    export WORK_DIR IMAGE_DIR BASE HOSTNAME DISK_ID TIMEZONE VERSION SOURCE_DATE_EPOCH
    in_fakeroot bash "$IMAGE_DIR/stages/30-overlay-root.sh"
}
