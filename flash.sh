#!/usr/bin/env bash
# flash.sh: write the appliance's image to an SD card, safely, and put the
# first-boot settings on it. See docs/IMAGE.md.
#
#   flash.sh --list
#   flash.sh [OPTIONS] IMAGE DEVICE         write IMAGE (.img, .img.xz) to DEVICE
#   flash.sh [OPTIONS] --settings-only DEVICE    only change the settings on DEVICE
#
# IMAGE is an .img or .img.xz (streamed). When IMAGE.bmap (or NAME.bmap next
# to NAME.img[.xz]) exists only the mapped blocks are written, with bmaptool
# when it is installed and with this script's own copy otherwise. A .sha256
# next to the image is checked before anything is written. After writing,
# the card is read back and compared, synced and ejected.
#
# First-boot settings (written to appliance.toml on the card's boot
# partition with mtools, without mounting anything):
#   --hostname NAME       name on the network: http://NAME.local/
#   --wifi-ssid SSID      Wi-Fi network (needs --wifi-country)
#   --wifi-psk PASS       Wi-Fi passphrase (8-63 characters)
#   --wifi-country CC     two-letter country code (GB, DE, US, ...)
#   --wifi-mode MODE      client (join --wifi-ssid) or hotspot (be the access
#                         point --wifi-ssid; phones open the listen page)
#   --wifi-channel N      hotspot channel: 1-13, 36, 40, 44, 48 (default 6)
#   --hat NAME            sound card HAT (the card's hats.txt lists them)
#   --ssh-key KEY|FILE    SSH public key for user "admin" (SSH stays off without)
#   --admin-password      the admin page's password, asked for twice on the
#                         terminal, or one line of stdin, or $FLASH_ADMIN_PASSWORD;
#                         only its scrypt hash is written (never give it in argv)
#   --token TOKEN         admin token for scripts (Authorization: Bearer ...)
# The settings' rules live in appliance/firstboot.py next to this script,
# shared with the appliance's first boot.
#
# Safety:
#   --yes                 no typed confirmation (scripts)
#   --unmount             unmount the card's mounted partitions instead of refusing
#   --allow-file          DEVICE may be a plain file (an image to customise)
#   --size-limit GB       ask once more for disks larger than this (default 128)
#   --allow-large         with --yes: accept a disk over the size limit
#   --no-verify           skip reading the card back (not recommended)
#   --no-eject            leave the card in the system
#   --no-bmap             write every block even when a .bmap exists
#
# Only whole, removable or hot-plugged disks are offered: never the disk
# holding /, never a mounted one (without --unmount), never loop, RAM, zram
# or optical drives. Every refusal says why.
#
# Environment: FLASH_SYSROOT=DIR reads DIR/sys and DIR/proc instead of /sys
# and /proc (lsblk --sysroot) and writes /dev/NAME as DIR/dev/NAME: this is
# how the tests build fake card readers. FLASH_NO_BMAPTOOL=1 uses the
# built-in bmap copy even when bmaptool is installed. FLASH_UMOUNT=CMD
# replaces umount, and FLASH_TEST_DAMAGE_AT=OFFSET (only with FLASH_SYSROOT)
# damages the written card before the read-back, for the tests.
# FLASH_ADMIN_PASSWORD=PASS is read by --admin-password.
set -euo pipefail
export LC_ALL=C MTOOLS_SKIP_CHECK=1
PROG=flash.sh
SYSROOT=${FLASH_SYSROOT:-}
SETTINGS_PY=$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/appliance/firstboot.py

die() { printf '%s: %s\n' "$PROG" "$*" >&2; exit 1; }
refuse() { printf '%s: refusing: %s\n' "$PROG" "$*" >&2; exit 2; }
say() { printf '%s: %s\n' "$PROG" "$*" >&2; }
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }

human() { # bytes -> "31.9 GB"
    awk -v b="$1" 'BEGIN { split("B kB MB GB TB", u); i = 1; while (b >= 1000 && i < 5) { b /= 1000; i++ }
                           printf (i == 1 ? "%d %s" : "%.1f %s"), b, u[i] }'
}

list=0 yes=0 unmount=0 allow_file=0 size_limit_gb=128 allow_large=0 verify=1 eject=1
use_bmap=1 settings_only=0 admin_password=0
declare -A set=()
args=()
while [ $# -gt 0 ]; do
    case $1 in
        --list) list=1; shift ;;
        --yes|-y) yes=1; shift ;;
        --unmount) unmount=1; shift ;;
        --allow-file) allow_file=1; shift ;;
        --size-limit) size_limit_gb=${2:?--size-limit needs a number of GB}; shift 2
            [[ $size_limit_gb =~ ^[0-9]+$ ]] || die "--size-limit: '$size_limit_gb' is not a whole number of GB" ;;
        --allow-large) allow_large=1; shift ;;
        --no-verify) verify=0; shift ;;
        --no-eject) eject=0; shift ;;
        --no-bmap) use_bmap=0; shift ;;
        --settings-only) settings_only=1; shift ;;
        --admin-password) admin_password=1; shift ;;
        --hostname|--wifi-ssid|--wifi-psk|--wifi-country|--wifi-mode|--wifi-channel|--hat|--token|--ssh-key)
            [ $# -ge 2 ] || die "$1 needs a value"
            key=${1#--}; set[${key//-/_}]=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; args+=("$@"); break ;;
        -*) die "unknown option '$1' (see --help)" ;;
        *) args+=("$1"); shift ;;
    esac
done

need() { command -v "$1" >/dev/null 2>&1 || die "needs '$1' (Debian package: $2)"; }
need lsblk util-linux
need python3 python3

# --- devices --------------------------------------------------------------
# One JSON document from lsblk describing every disk; python3 judges them so
# the rules live in one place.
lsblk_json() {
    lsblk ${SYSROOT:+--sysroot "$SYSROOT"} --all --json --bytes --tree \
        -o NAME,KNAME,PATH,TYPE,SIZE,RM,HOTPLUG,RO,VENDOR,TRAN,MOUNTPOINTS 2>/dev/null \
        || die "lsblk failed${SYSROOT:+ (FLASH_SYSROOT=$SYSROOT)}"
}

# judge [NAME]: one line per disk: name<TAB>verdict<TAB>size<TAB>model<TAB>mounts
# verdict is "ok" or the reason it is refused.
judge() {
    lsblk_json | python3 -c '
import json, sys
want, sysroot = sys.argv[1], sys.argv[2]
devs = json.load(sys.stdin)["blockdevices"]
def mounts(d):
    out = [m for m in (d.get("mountpoints") or []) if m]
    for c in d.get("children") or []:
        out += mounts(c)
    return out
def find(ds, name, parent=None):
    for d in ds:
        if d["name"] == name:
            return d, parent
        r = find(d.get("children") or [], name, d)
        if r[0]:
            return r
    return None, None
def verdict(d, parent):
    n, t = d["name"], d["type"]
    if t == "part" or parent is not None:
        whole = parent["name"] if parent else "?"
        return f"is a partition of /dev/{whole}: give the whole disk"
    if t == "loop" or n.startswith("loop"):
        return "is a loop device, not a card reader"
    if t == "rom" or n.startswith("sr"):
        return "is an optical drive"
    if n.startswith("zram"):
        return "is a zram (compressed RAM) device"
    if n.startswith("ram"):
        return "is a RAM disk"
    if t != "disk":
        return f"is a {t} device, not a whole disk"
    m = mounts(d)
    if "/" in m:
        return "holds the running system (/ is mounted from it)"
    if not (d.get("rm") or d.get("hotplug")):
        return "is neither removable nor hot-pluggable: a fixed system disk"
    if d.get("ro"):
        return "is read-only (the lock switch on the SD card or adapter?)"
    if not d.get("size"):
        return "has no medium (size 0): insert the card"
    return "ok"
if want:
    d, parent = find(devs, want)
    todo = [(d, parent)] if d else []
    if not d:
        print(f"{want}\tis not a block device this system knows (see flash.sh --list)\t0\t\t")
else:
    todo = [(d, None) for d in devs]
for d, parent in todo:
    # MODEL from sysfs: lsblk would probe the device for it without udev.
    name = d["name"]
    try:
        with open(f"{sysroot}/sys/block/{name}/device/model", encoding="utf-8", errors="replace") as f:
            d["model"] = f.read()
    except OSError:
        pass
    model = " ".join(x.strip() for x in (d.get("vendor"), d.get("model")) if x and x.strip())
    print("\t".join([d["name"], verdict(d, parent), str(d.get("size") or 0),
                     model or "unknown model", ",".join(mounts(d))]))
' "${1:-}" "$SYSROOT"
}

if [ "$list" = 1 ]; then
    [ ${#args[@]} -eq 0 ] || die "--list takes no other arguments"
    found=0
    while IFS=$'\t' read -r name verdict size model mnts; do
        if [ "$verdict" = ok ]; then
            [ $found = 1 ] || printf '%-12s %10s  %-30s %s\n' DEVICE SIZE MODEL MOUNTED
            found=1
            printf '%-12s %10s  %-30s %s\n' "/dev/$name" "$(human "$size")" "$model" "${mnts:--}"
        fi
    done < <(judge)
    [ $found = 1 ] || say "no card reader found (insert a card; fixed, loop, RAM and optical disks are never offered)"
    judge | awk -F'\t' '$2 != "ok" && ($3 > 0 || $1 !~ /^(loop|ram)/) { printf "  not offered: /dev/%s %s\n", $1, $2 }' >&2
    exit 0
fi

if [ "$settings_only" = 1 ]; then
    [ ${#args[@]} -eq 1 ] || die "usage: flash.sh [settings] --settings-only DEVICE"
    image="" target_arg=${args[0]}
else
    [ ${#args[@]} -eq 2 ] || { usage >&2; exit 1; }
    image=${args[0]} target_arg=${args[1]}
fi

# --- first-boot settings: checked before anything is written --------------
# appliance/firstboot.py holds the rules; the values go to it on stdin as
# NUL-separated option=value pairs (no secret in any argv).
settings_pairs() {
    local key
    for key in "${!set[@]}"; do printf '%s=%s\0' "$key" "${set[$key]}"; done
}
settings_py() { # check | card DIR | hash-password; dies with its message
    local out err rc=0
    err=$(mktemp)
    out=$(python3 "$SETTINGS_PY" "$@" 2>"$err") || rc=$?
    if [ $rc != 0 ]; then
        local msg; msg=$(head -c 2000 "$err"); rm -f "$err"
        die "${msg:-appliance/firstboot.py $1 failed}"
    fi
    rm -f "$err"
    printf '%s' "$out"
}
if [ ${#set[@]} -gt 0 ] || [ $admin_password = 1 ]; then
    [ -f "$SETTINGS_PY" ] || die "needs $SETTINGS_PY for the settings (flash.sh runs from a checkout of the project)"
fi
if [ $admin_password = 1 ]; then
    if [ -n "${FLASH_ADMIN_PASSWORD+x}" ]; then
        pw=$FLASH_ADMIN_PASSWORD
    elif [ -t 0 ]; then
        IFS= read -rs -p "$PROG: admin password for the appliance: " pw || die "--admin-password: no password typed"; echo >&2
        IFS= read -rs -p "$PROG: the same again: " pw2 || die "--admin-password: no password typed"; echo >&2
        [ "$pw" = "$pw2" ] || die "--admin-password: the two passwords differ"
        unset pw2
    else
        IFS= read -r pw || [ -n "${pw:-}" ] || die "--admin-password: no password on stdin (or set FLASH_ADMIN_PASSWORD)"
    fi
    set[admin_password_hash]=$(printf '%s' "$pw" | settings_py hash-password)
    unset pw FLASH_ADMIN_PASSWORD
fi
if [ ${#set[@]} -gt 0 ]; then
    settings_pairs | settings_py check
fi
if [ "$settings_only" = 1 ] && [ ${#set[@]} -eq 0 ]; then
    die "--settings-only without any setting to change (--hostname, --wifi-ssid, ...)"
fi

# --- the image --------------------------------------------------------------
img_size=0 img_sha="" bmap=""
if [ -n "$image" ]; then
    [ -f "$image" ] || die "image '$image' not found"
    case $image in
        *.img.xz) need xz xz-utils; kind=xz; stem=${image%.img.xz} ;;
        *.img) kind=img; stem=${image%.img} ;;
        *) die "image '$image': expected a .img or .img.xz file" ;;
    esac
    # Checksums published next to the image: NAME.sha256 or IMAGE.sha256.
    for sumfile in "$stem.sha256" "$image.sha256"; do
        [ -f "$sumfile" ] || continue
        want=$(awk -v f="$(basename "$image")" '{ n = $2; sub(/^\*/, "", n) } n == f { print $1 }' "$sumfile")
        if [ -n "$want" ]; then
            say "checking $(basename "$image") against $(basename "$sumfile")"
            got=$(sha256sum <"$image" | cut -d' ' -f1)
            [ "$got" = "$want" ] || die "image is corrupt: its sha256 is $got but $(basename "$sumfile") says $want (download it again)"
        fi
        if [ $kind = xz ]; then
            img_sha=$(awk -v f="$(basename "${image%.xz}")" '{ n = $2; sub(/^\*/, "", n) } n == f { print $1 }' "$sumfile")
        else
            img_sha=${want:-}
        fi
        break
    done
    if [ $kind = xz ]; then
        img_size=$(xz --robot --list "$image" 2>/dev/null | awk '$1 == "totals" { print $5 }') \
            || true
        [[ $img_size =~ ^[0-9]+$ ]] || die "image is corrupt: xz cannot read '$image'"
    else
        img_size=$(stat -c %s "$image")
    fi
    [ "$img_size" -gt 0 ] || die "image '$image' is empty"
    if [ $use_bmap = 1 ]; then
        for b in "$stem.bmap" "$image.bmap"; do [ -f "$b" ] && { bmap=$b; break; }; done
    fi
fi

# --- the target ---------------------------------------------------------------
target="" is_file=0 dev_name="" dev_size=0 dev_model="" dev_mounts=""
case $target_arg in
    /dev/*) dev_name=${target_arg#/dev/} ;;
    */*|*.img) ;;
    *) [ -e "$target_arg" ] || dev_name=$target_arg ;;
esac
if [ -n "$dev_name" ]; then
    [[ $dev_name =~ ^[A-Za-z0-9._-]+$ ]] || refuse "'$target_arg' is not a disk name"
    IFS=$'\t' read -r _ verdict dev_size dev_model dev_mounts < <(judge "$dev_name")
    target=$SYSROOT/dev/$dev_name
    if [ "$verdict" != ok ]; then
        if [[ $verdict == "holds the running system"* ]]; then refuse "/dev/$dev_name $verdict"; fi
        refuse "/dev/$dev_name $verdict"
    fi
    if [ -n "$dev_mounts" ]; then
        [ "$unmount" = 1 ] || refuse "/dev/$dev_name has mounted file systems ($dev_mounts): close them, or use --unmount"
    fi
    [ -e "$target" ] || refuse "$target does not exist"
    if [ -z "$SYSROOT" ]; then
        [ -b "$target" ] || refuse "$target is not a block device"
    fi
else
    target=$target_arg
    [ "$allow_file" = 1 ] || refuse "'$target' is not a disk under /dev; to write into a plain file, say --allow-file"
    if [ -e "$target" ] && [ ! -f "$target" ]; then
        refuse "'$target' exists and is not a plain file"
    fi
    [ -n "$image" ] || [ -f "$target" ] || die "'$target' not found"
    is_file=1 dev_model="plain file"
    dev_size=$( [ -f "$target" ] && stat -c %s "$target" || echo 0)
fi

if [ -n "$image" ] && [ $is_file = 0 ] && [ "$img_size" -gt "$dev_size" ]; then
    refuse "the image ($(human "$img_size")) is larger than /dev/$dev_name ($(human "$dev_size"))"
fi

# --- confirmation -----------------------------------------------------------
what="$target ($dev_model, $(human "$dev_size"))"
[ $is_file = 1 ] && what="the file $target"
if [ $is_file = 0 ] && [ "$dev_size" -gt $((size_limit_gb * 1000000000)) ]; then
    if [ "$yes" = 1 ]; then
        [ "$allow_large" = 1 ] || refuse "/dev/$dev_name is $(human "$dev_size"), over the ${size_limit_gb} GB limit for a card: is it really a card? Add --allow-large (or --size-limit) if so"
    else
        [ -t 0 ] || refuse "/dev/$dev_name is over the ${size_limit_gb} GB limit and there is no terminal to confirm on"
        printf '%s: /dev/%s is %s, larger than an SD card usually is (limit %s GB).\nType "large" if you are sure it is the card: ' \
            "$PROG" "$dev_name" "$(human "$dev_size")" "$size_limit_gb" >&2
        read -r answer || answer=""
        [ "$answer" = large ] || refuse "not confirmed"
    fi
fi
if [ "$yes" != 1 ] && [ $is_file = 0 ]; then
    [ -t 0 ] || refuse "no terminal to confirm on: run it in a terminal, or add --yes"
    if [ -n "$image" ]; then
        printf '%s: this ERASES everything on %s.\nType the device name (%s) to continue: ' "$PROG" "$what" "$dev_name" >&2
    else
        printf '%s: this changes the settings on %s.\nType the device name (%s) to continue: ' "$PROG" "$what" "$dev_name" >&2
    fi
    read -r answer || answer=""
    [ "$answer" = "$dev_name" ] || [ "$answer" = "/dev/$dev_name" ] || refuse "not confirmed (typed '$answer')"
fi

if [ -n "$dev_mounts" ]; then
    IFS=, read -ra mps <<<"$dev_mounts"
    for mp in "${mps[@]}"; do
        [ "$mp" = "[SWAP]" ] && refuse "/dev/$dev_name is in use as swap"
        say "unmounting $mp"
        ${FLASH_UMOUNT:-umount} "$mp" || refuse "could not unmount $mp"
    done
fi

# --- writing ------------------------------------------------------------------
blockdev=0
[ -b "$target" ] && blockdev=1
flush_target() {
    sync
    if [ $blockdev = 1 ]; then blockdev --flushbufs "$target" 2>/dev/null || true; fi
}

# The bmap copy and read-back check; used when bmaptool is missing (copy)
# and always for the read-back (bmaptool checks the image, not the card).
# (The program is in a variable: python3's stdin is the image stream.)
read -r -d '' BMAP_PY <<'PY' || true
import hashlib, os, re, sys
mode, bmap, src, dst = sys.argv[1:5]
text = open(bmap, encoding="utf-8").read()
def field(name):
    m = re.search(rf"<{name}>\s*(\S+)\s*</{name}>", text)
    if not m:
        sys.exit(f"bmap {bmap}: no <{name}>")
    return m.group(1)
bs, image_size = int(field("BlockSize")), int(field("ImageSize"))
ctype = field("ChecksumType")
if ctype not in ("sha256", "sha1"):
    sys.exit(f"bmap {bmap}: checksum type {ctype} not supported")
want_self = re.search(r"<BmapFileChecksum>\s*(\S+)\s*</BmapFileChecksum>", text)
if want_self:
    zeroed = text.replace(want_self.group(1), "0" * len(want_self.group(1)), 1)
    if hashlib.new(ctype, zeroed.encode()).hexdigest() != want_self.group(1):
        sys.exit(f"bmap {bmap} is corrupt (its own checksum does not match)")
ranges = []
for m in re.finditer(r'<Range\s+chksum="([0-9a-f]+)"\s*>\s*(\d+)(?:\s*-\s*(\d+))?\s*</Range>', text):
    a = int(m.group(2)); b = int(m.group(3) or a)
    ranges.append((a, b, m.group(1)))
if not ranges:
    sys.exit(f"bmap {bmap}: no ranges")
total = sum((b - a + 1) * bs for a, b, _ in ranges)
done = 0
last = -1
def progress():
    global last
    pct = done * 100 // total if total else 100
    if pct != last:
        last = pct
        print(f"\r  {mode}: {done / 1e6:8.1f} / {total / 1e6:.1f} MB ({pct}%)", end="", file=sys.stderr, flush=True)
if mode == "copy":
    fin = sys.stdin.buffer if src == "-" else open(src, "rb")
    fout = os.open(dst, os.O_WRONLY)
    pos = 0
    for a, b, ck in ranges:
        start, end = a * bs, min((b + 1) * bs, image_size)
        if start < pos:
            sys.exit("bmap ranges overlap")
        while pos < start:  # skip unmapped blocks of a stream
            n = len(fin.read(min(start - pos, 1 << 20)) or b"")
            if n == 0:
                sys.exit("image is shorter than its bmap says: image is corrupt")
            pos += n
        h = hashlib.new(ctype)
        off = start
        while off < end:
            chunk = fin.read(min(end - off, 1 << 20))
            if not chunk:
                sys.exit("image is shorter than its bmap says: image is corrupt")
            h.update(chunk)
            os.pwrite(fout, chunk, off)
            off += len(chunk)
            done += len(chunk)
            progress()
        pos = end
        if h.hexdigest() != ck:
            sys.exit(f"\nimage is corrupt: blocks {a}-{b} do not match the bmap's checksum")
    # Read the stream to its end: the tail is unmapped, but xz checks its
    # integrity only there, and it must not die of a broken pipe.
    while fin.read(1 << 20):
        pass
    os.fsync(fout)
    os.close(fout)
else:
    fd = os.open(dst, os.O_RDONLY)
    for a, b, ck in ranges:
        start, end = a * bs, min((b + 1) * bs, image_size)
        h = hashlib.new(ctype)
        off = start
        while off < end:
            chunk = os.pread(fd, min(end - off, 1 << 20), off)
            if not chunk:
                sys.exit(f"\nverify failed: the card ends at byte {off}, before the image does")
            h.update(chunk)
            off += len(chunk)
            done += len(chunk)
            progress()
        if h.hexdigest() != ck:
            sys.exit(f"\nverify failed: blocks {a}-{b} on the card differ from the image")
print(file=sys.stderr)
PY
bmap_py() { # MODE(copy|verify) BMAP SOURCE(- for stdin) TARGET
    python3 -c "$BMAP_PY" "$@"
}

if [ -n "$image" ]; then
    t0=$(date +%s)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    if [ $is_file = 1 ]; then : >"$target"; fi
    if [ -n "$bmap" ]; then
        if [ "${FLASH_NO_BMAPTOOL:-0}" != 1 ] && command -v bmaptool >/dev/null; then
            say "writing $(basename "$image") to $what with bmaptool ($(basename "$bmap"))"
            bmaptool copy --bmap "$bmap" "$image" "$target" \
                || die "bmaptool copy failed (a corrupt image shows up here as a checksum mismatch)"
        else
            say "writing $(basename "$image") to $what using $(basename "$bmap") (built-in bmap copy)"
            if [ $kind = xz ]; then
                xz -dc "$image" | bmap_py copy "$bmap" - "$target" || die "write failed"
            else
                bmap_py copy "$bmap" "$image" "$target" || die "write failed"
            fi
        fi
        [ $is_file = 0 ] || truncate -s "$img_size" "$target"
    else
        say "writing $(basename "$image") ($(human "$img_size")) to $what"
        set +o pipefail
        if [ $kind = xz ]; then
            xz -dc "$image" 2>"$tmp/xz.err" | tee >(sha256sum | cut -d' ' -f1 >"$tmp/sha") \
                | dd of="$target" bs=4M iflag=fullblock conv=notrunc,fsync status=progress
            st=("${PIPESTATUS[@]}")
        else
            tee >(sha256sum | cut -d' ' -f1 >"$tmp/sha") <"$image" \
                | dd of="$target" bs=4M iflag=fullblock conv=notrunc,fsync status=progress
            st=(0 "${PIPESTATUS[@]}")
        fi
        set -o pipefail
        [ "${st[0]}" = 0 ] || die "image is corrupt: xz: $(cat "$tmp/xz.err")"
        [ "${st[2]}" = 0 ] || die "writing to $target failed"
        for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$tmp/sha" ] && break; sleep 0.2; done
        written_sha=$(cat "$tmp/sha")
        if [ -n "$img_sha" ] && [ "$written_sha" != "$img_sha" ]; then
            die "image is corrupt: the data written has sha256 $written_sha, the .sha256 file says $img_sha"
        fi
        img_sha=$written_sha
    fi
    flush_target
    say "written in $(( $(date +%s) - t0 ))s"

    if [ -n "$SYSROOT" ] && [ -n "${FLASH_TEST_DAMAGE_AT:-}" ]; then
        # Tests only (fake devices): a card that lost a byte of what was written.
        printf '\377' | dd of="$target" bs=1 seek="$FLASH_TEST_DAMAGE_AT" conv=notrunc status=none
    fi
    if [ "$verify" = 1 ]; then
        say "verifying: reading the card back"
        if [ -n "$bmap" ]; then
            bmap_py verify "$bmap" - "$target" || die "VERIFY FAILED: the card does not hold the image (faulty or fake card?)"
        else
            iflag=""
            [ $blockdev = 1 ] && iflag=iflag=direct
            got=$(dd if="$target" bs=4M count="$img_size" iflag=count_bytes${iflag:+,direct} status=none \
                | tee >(wc -c >"$tmp/n") | sha256sum | cut -d' ' -f1)
            for _ in 1 2 3 4 5 6 7 8 9 10; do [ -s "$tmp/n" ] && break; sleep 0.2; done
            n=$(tr -d ' ' <"$tmp/n")
            [ "$n" = "$img_size" ] || die "VERIFY FAILED: read back $n bytes of $img_size (the card is smaller than it claims?)"
            [ "$got" = "$img_sha" ] || die "VERIFY FAILED: the card reads back with sha256 $got, the image is $img_sha (faulty or fake card?)"
        fi
        say "verified"
    fi
fi

# --- settings on the boot partition -------------------------------------------
if [ ${#set[@]} -gt 0 ]; then
    need mtype mtools
    need sfdisk fdisk
    boot_off=$(sfdisk -J "$target" 2>/dev/null | python3 -c '
import json, sys
t = json.load(sys.stdin)["partitiontable"]
p = sorted(t["partitions"], key=lambda p: p["start"])[0]
print(p["start"] * t.get("sectorsize", 512))') \
        || die "$target has no partition table: is the image written?"
    img_at="$target@@$boot_off"
    tmp=${tmp:-$(mktemp -d)}
    trap 'rm -rf "$tmp"' EXIT
    # The card's files through appliance/firstboot.py, which checks the
    # whole result (the HAT against the card's hats.txt and base) and edits
    # appliance.toml and config.txt; only what changed goes back.
    mkdir -p "$tmp/card"
    for f in appliance.toml hats.txt config.txt appliance-release.txt; do
        mtype -i "$img_at" "::$f" >"$tmp/card/$f" 2>/dev/null || rm -f "$tmp/card/$f"
    done
    [ -f "$tmp/card/appliance.toml" ] || die "no appliance.toml on the first partition of $target: not an appliance card"
    changed=$(settings_pairs | settings_py card "$tmp/card")
    for f in $changed; do
        mcopy -o -i "$img_at" "$tmp/card/$f" "::$f" || die "could not write $f on the card"
    done
    say "settings written to appliance.toml on the card: ${!set[*]}"
fi

flush_target
if [ "$eject" = 1 ] && [ $blockdev = 1 ] && [ -z "$SYSROOT" ]; then
    if command -v eject >/dev/null; then
        eject "$target" && say "ejected: you can remove the card" || say "could not eject $target; it is synced, remove it when your system lets you"
    else
        say "synced ('eject' is not installed): you can remove the card"
    fi
else
    say "done"
fi
