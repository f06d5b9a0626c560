#!/usr/bin/env bash
# Makes a signed RAUC update bundle from an image built by image/build.sh:
# its root file system (partition 2) becomes the bundle's rootfs image, for
# the slot the appliance is not running from. See docs/IMAGE.md.
#
#   image/bundle.sh [--image IMG] [--out FILE.raucb] [--cert PEM --key PEM]
#                   [--work-dir DIR]
#
# --image: default the newest image/out/*.img. --cert/--key: default
# $RAUC_CERT/$RAUC_KEY, else the development pair image/build.sh made in
# WORK_DIR/rauc-dev/ (--work-dir, default image/work). The bundle names the
# image's compatible string (/etc/rauc/system.conf) and version
# (/etc/appliance-release); an appliance takes it only if the signature
# checks against its keyring and the compatible string is its own.
set -euo pipefail
IMAGE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd "$IMAGE_DIR/.." && pwd)
export IMAGE_DIR REPO_DIR
# shellcheck source=lib/common.sh
. "$IMAGE_DIR/lib/common.sh"
usage() { sed -n '2,15s/^# \{0,1\}//p' "$0"; }

img="" out="" cert=${RAUC_CERT:-} key=${RAUC_KEY:-} work=$REPO_DIR/image/work
while [ $# -gt 0 ]; do
    case $1 in
        --image) img=${2:?--image needs a file}; shift 2 ;;
        --out) out=${2:?--out needs a file}; shift 2 ;;
        --cert) cert=${2:?--cert needs a PEM file}; shift 2 ;;
        --key) key=${2:?--key needs a PEM file}; shift 2 ;;
        --work-dir) work=${2:?--work-dir needs a directory}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown option '$1' (see --help)" ;;
    esac
done
need_tools rauc mksquashfs sfdisk debugfs dd python3
if [ -z "$img" ]; then
    img=$(ls -t "$REPO_DIR"/image/out/*.img 2>/dev/null | head -n 1) || true
    [ -n "$img" ] || die "no image in image/out/ (make image first, or give --image)"
fi
[ -f "$img" ] || die "--image $img: no such file"
if [ -z "$cert" ] && [ -z "$key" ]; then
    cert=$work/rauc-dev/cert.pem key=$work/rauc-dev/key.pem
    [ -f "$cert" ] || die "no signing key: give --cert and --key (or RAUC_CERT and RAUC_KEY), or build an image first (it makes a development pair in $work/rauc-dev/)"
fi
[ -f "$cert" ] && [ -f "$key" ] || die "--cert and --key must both name PEM files"

read -r start size < <(sfdisk -J "$img" | python3 -c '
import json, sys
parts = json.load(sys.stdin)["partitiontable"]["partitions"]
p = [p for p in parts if p["node"].endswith("2")]
if len(parts) != 4 or not p:
    sys.exit("not an A/B image: expected 4 partitions, root A being the second")
print(p[0]["start"], p[0]["size"])') || die "$img: not an appliance image with two root slots"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir "$tmp/content"
root="$img?offset=$((start * 512))"
debugfs -R "cat /etc/rauc/system.conf" "$root" >"$tmp/system.conf" 2>/dev/null
compatible=$(sed -n 's/^compatible=//p' "$tmp/system.conf")
[ -n "$compatible" ] || die "$img: its root has no /etc/rauc/system.conf with a compatible string"
version=$(debugfs -R "cat /etc/appliance-release" "$root" 2>/dev/null | sed -n 's/^appliance image \([^ ]*\) .*/\1/p')
[ -n "$version" ] || die "$img: its root has no /etc/appliance-release"
debugfs -R "cat /etc/rauc/keyring.pem" "$root" >"$tmp/keyring.pem" 2>/dev/null
if ! cmp -s "$tmp/keyring.pem" "$cert"; then
    warn "the image trusts another certificate than $cert: appliances running it will refuse this bundle"
fi
step "bundle: $compatible $version from $img"
dd if="$img" of="$tmp/content/rootfs.ext4" bs=512 skip="$start" count="$size" status=none
cat >"$tmp/content/manifest.raucm" <<M
[update]
compatible=$compatible
version=$version

[bundle]
format=verity

[image.rootfs]
filename=rootfs.ext4
M
[ -n "$out" ] || out=${img%.img}.raucb
rm -f "$out"
rauc bundle --cert="$cert" --key="$key" "$tmp/content" "$out" >&2
info "$(du -h --apparent-size "$out" | cut -f1)	$out"
