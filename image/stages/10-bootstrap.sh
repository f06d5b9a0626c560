# Step 10 (default base): a Debian arm64 root from Debian's archive with
# mmdebstrap --mode=unshare (no root needed), customised by step 20 inside
# it, written as a tarball and unpacked under fakeroot so ownership survives.
# shellcheck shell=bash

# Package lists: packages/*.txt, shared with the Makefile.

# stage_in DIR: what step 20 finds at /tmp/appliance-build inside the root.
stage_in() {
    local d=$1
    rm -rf "$d" && mkdir -p "$d"
    cp "$IMAGE_DIR/stages/20-customise-chroot.sh" "$IMAGE_DIR/lib/lean-orphans.py" "$d/"
    cp /etc/ssl/certs/ca-certificates.crt "$d/ca.crt"
    # The initramfs settings (Debian base), in place before the kernel's
    # postinst builds it; step 30 puts the same files in the root again.
    cp "$IMAGE_DIR/files/debian/etc/initramfs-tools/conf.d/appliance" "$d/initramfs-conf"
    cp "$IMAGE_DIR/files/debian/etc/initramfs-tools/hooks/appliance-modules" "$d/initramfs-modules"
    cp "$IMAGE_DIR/files/debian/etc/initramfs-tools/scripts/local-block/appliance-root-wait" \
        "$d/initramfs-root-wait"
    {
        printf 'BASE=%q\nAPP=%q\nSOURCE_DATE_EPOCH=%q\nLEAN=%q\n' "$BASE" "$APP" "$SOURCE_DATE_EPOCH" "$LEAN"
        local runtime
        runtime=$(packages image-system run)
        [ "$BASE" = debian ] && runtime="$runtime $(packages image-debian)"
        printf 'RUNTIME_PACKAGES=%q\n' "$(t64_names $runtime ${EXTRA_PACKAGES//,/ })"
        printf 'APP_BUILD_PACKAGES=%q\nKERNEL_PACKAGES=%q\n' "$(packages build)" "$(packages image-kernel)"
        printf 'DROP_PACKAGES=%q\n' "$(set -f; packages image-drop)"
    } >"$d/build.env"
    if [ "$APP" = source ]; then
        info "app: copying $APP_SOURCE (files git knows or would add)"
        mkdir -p "$d/app"
        (cd "$APP_SOURCE" && git ls-files -z --cached --others --exclude-standard \
            | grep -zv -e '^image/' -e '^tests/' -e '^bench/' \
            | xargs -0 -r cp --parents -t "$d/app") 
        [ -f "$d/app/pyproject.toml" ] || die "APP_SOURCE=$APP_SOURCE has no pyproject.toml"
    else
        cp -r "$IMAGE_DIR/stub-app" "$d/stub-app"
        # appliance-firstboot loads the settings schema from the app's venv.
        mkdir -p "$d/stub-app/appliance"
        : >"$d/stub-app/appliance/__init__.py"
        cp "$REPO_DIR/appliance/firstboot.py" "$REPO_DIR/appliance/passwords.py" "$d/stub-app/appliance/"
    fi
    chmod -R a+rX "$d"
}

# t64_names NAME...: the names on SUITE (packages/image-t64.txt: libraries
# renamed by trixie's 64-bit time_t transition; bookworm keeps the old ones).
t64_names() {
    if [ "$SUITE" = bookworm ]; then echo "$*"; return; fi
    local n old new out=()
    for n in "$@"; do
        while read -r old new; do
            [ "$n" = "$old" ] && n=$new
        done < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$REPO_DIR/packages/image-t64.txt")
        out+=("$n")
    done
    echo "${out[*]}"
}

# What LEAN=yes keeps dpkg from unpacking at all: documentation, man pages,
# translations (the copyright files stay). Not icons: adwaita-icon-theme's
# postinst registers a file under /usr/share/icons and fails without it;
# the icon themes go with GTK in step 20 (packages/image-drop.txt).
LEAN_DPKG_OPTS=(
    'path-exclude=/usr/share/doc/*' 'path-include=/usr/share/doc/*/copyright'
    'path-exclude=/usr/share/man/*' 'path-exclude=/usr/share/info/*'
    'path-exclude=/usr/share/locale/*' 'path-include=/usr/share/locale/locale.alias'
    'path-exclude=/usr/share/lintian/*'
    'path-exclude=/usr/share/gtk-doc/*' 'path-exclude=/usr/share/help/*'
)

ensure_binfmt() {
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && return 0
    [ "$(id -u)" = 0 ] || die "arm64 programs cannot run here: binfmt_misc has no qemu-aarch64 entry (as root: mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; update-binfmts --enable qemu-aarch64)"
    [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64 >/dev/null
    [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || die "could not enable qemu-aarch64 in binfmt_misc"
}

stage_bootstrap() {
    step "10 bootstrap: Debian $SUITE $ARCH (kernel from $KERNEL_SUITE) with mmdebstrap"
    need_tools mmdebstrap fakeroot tar
    ensure_binfmt
    local sin=$WORK_DIR/stage-in tarball=$WORK_DIR/rootfs.tar out=$WORK_DIR/chroot-out
    stage_in "$sin"
    rm -rf "$out" && mkdir -p "$out" && chmod 1777 "$out"
    local comps="main non-free-firmware" security=${MIRROR%/debian}/debian-security
    local sources=("deb $MIRROR $SUITE $comps" "deb $MIRROR $SUITE-updates $comps"
                   "deb $security $SUITE-security $comps")
    local pin=""
    if [ "$KERNEL_SUITE" != "$SUITE" ]; then
        sources+=("deb $MIRROR $KERNEL_SUITE $comps")
        pin="printf 'Package: linux-image-arm64 linux-image-*-arm64\nPin: release n=$KERNEL_SUITE\nPin-Priority: 990\n' > \"\$1/etc/apt/preferences.d/kernel\""
    fi
    # Borrowed packages: their suites in a sources file and pins of their own,
    # both removed at the end (the image's apt never sees those suites).
    local borrowed="" entry suites=" "
    for entry in ${BORROWED_PACKAGES//,/ }; do
        local package=${entry%/*} from=${entry#*/}
        case "$suites" in *" $from "*) ;; *)
            suites+="$from "
            borrowed+="echo 'deb $MIRROR $from main' >> \"\$1/etc/apt/sources.list.d/borrowed.list\"; " ;;
        esac
        borrowed+="printf 'Package: *\nPin: release n=$from\nPin-Priority: 1\n\nPackage: $package\nPin: release n=$from\nPin-Priority: 990\n\n' >> \"\$1/etc/apt/preferences.d/borrowed\"; "
    done
    if [ -n "$borrowed" ]; then
        borrowed="mkdir -p \"\$1/etc/apt/sources.list.d\" \"\$1/etc/apt/preferences.d\"; $borrowed"
    fi
    local runtime
    runtime=$(. "$sin/build.env"; echo "$RUNTIME_PACKAGES")
    info "packages: $runtime"
    # Progress: mmdebstrap prints each phase; step 20 prints its own.
    local lean=()
    if [ "$LEAN" = yes ]; then
        local o; for o in "${LEAN_DPKG_OPTS[@]}"; do lean+=(--dpkgopt="$o"); done
    fi
    mmdebstrap --mode=unshare --variant=minbase --arch="$ARCH" \
        --include="${runtime// /,}" "${lean[@]}" \
        --aptopt='Acquire::Retries "3"' \
        ${pin:+--setup-hook="$pin"} \
        ${borrowed:+--setup-hook="$borrowed"} \
        --customize-hook='mkdir -p "$1/tmp/appliance-build"' \
        --customize-hook="sync-in $sin /tmp/appliance-build" \
        --customize-hook='chroot "$1" env -i HOME=/root TERM=dumb /bin/sh /tmp/appliance-build/20-customise-chroot.sh' \
        --customize-hook="copy-out /tmp/appliance-build/pip-freeze.txt $out" \
        --customize-hook='rm -rf "$1/tmp/appliance-build" "$1/etc/apt/preferences.d/kernel" "$1/etc/apt/preferences.d/borrowed" "$1/etc/apt/sources.list.d/borrowed.list"' \
        "$SUITE" "$tarball" "${sources[@]}"
    cp "$out/pip-freeze.txt" "$WORK_DIR/pip-freeze.txt"
    step "10 unpacking the root under fakeroot"
    in_fakeroot tar -xpf "$tarball" -C "$WORK_DIR/root" --numeric-owner
}

# --stub-root: a prepared tree stands in for steps 10 and 20.
stage_stub_root() {
    step "10 stub root: $1"
    [ -d "$1" ] || die "--stub-root $1: not a directory"
    in_fakeroot cp -a "$1/." "$WORK_DIR/root/"
    : >"$WORK_DIR/pip-freeze.txt"
}
