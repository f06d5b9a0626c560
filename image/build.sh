#!/usr/bin/env bash
# Builds the SD-card image of the listening appliance. See docs/IMAGE.md.
#
#   image/build.sh [--config FILE] [--set KEY=value]... [--base RPIOS.img[.xz]]
#                  [--stub-root DIR]
#
# Steps (image/stages/, run in order like pi-gen's stages):
#   00-config            read config.defaults + --config + --set, check every value
#   10-bootstrap         Debian arm64 root with mmdebstrap --mode=unshare  (default base)
#   11-base              or: unpack a Raspberry Pi OS Lite image           (--base FILE)
#   20-customise-chroot  users, the appliance in a venv, kernel (inside the arm64 root)
#   30-overlay           our files, units, fstab, read-only root, boot partition contents
#   40-assemble          partition table and file systems, no loop mounts
#   50-finalise          .img.xz, .bmap, .sha256, package list
#
# --stub-root DIR skips 10, 11 and 20 and uses DIR as the root file system
# (tests, and trying the assembly in seconds).
set -euo pipefail
IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$IMAGE_DIR/.." && pwd)
export IMAGE_DIR REPO_DIR
BUILD_T0=$(date +%s)
export BUILD_T0
# shellcheck source=lib/common.sh
. "$IMAGE_DIR/lib/common.sh"

usage() { sed -n '2,22s/^# \{0,1\}//p' "$0"; }

config_files=() sets=() base_file="" stub_root=""
while [ $# -gt 0 ]; do
    case $1 in
        --config) config_files+=("${2:?--config needs a file}"); shift 2 ;;
        --set) sets+=("${2:?--set needs KEY=value}"); shift 2 ;;
        --base) base_file=${2:?--base needs an image file}; shift 2 ;;
        --stub-root) stub_root=${2:?--stub-root needs a directory}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
[ -z "$base_file" ] || [ -z "$stub_root" ] || die "--base and --stub-root exclude each other"

for stage in 00-config 10-bootstrap 11-base 30-overlay 40-assemble 50-finalise; do
    # shellcheck source=/dev/null
    . "$IMAGE_DIR/stages/$stage.sh"
done

stage_config
if [ -n "$stub_root" ]; then
    BASE=${STUB_BASE:-debian}
    stage_stub_root "$stub_root"
elif [ -n "$base_file" ]; then
    BASE=raspios
    stage_base "$base_file"
else
    BASE=debian
    stage_bootstrap
fi
stage_overlay
stage_assemble
stage_finalise
step "done in $(( $(date +%s) - BUILD_T0 ))s"
