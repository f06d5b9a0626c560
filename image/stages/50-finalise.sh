# Step 50: what a release carries next to the image: the package list, a
# block map for bmaptool (and flash.sh), the .img.xz, and checksums.
# shellcheck shell=bash

stage_finalise() {
    step "50 finalise: package list, .bmap, .img.xz, .sha256"
    need_tools bmaptool xz sha256sum dpkg-query
    local base=${IMG%.img}
    # What is there and why (packages/*.txt's comments, or which listed
    # package needs it), what LEAN=yes took out, the venv's Python packages.
    python3 "$IMAGE_DIR/lib/package-list.py" "$WORK_DIR/root" "$REPO_DIR" "$WORK_DIR/pip-freeze.txt" \
        >"$base.packages" || die "could not write the package list"
    info "$(grep -vc '^#' "$base.packages") packages listed in $(basename "$base").packages"
    bmaptool -q create -o "$base.bmap" "$IMG"
    info "compressing (xz -$XZ_LEVEL)"
    rm -f "$IMG.xz"
    xz -T0 -"$XZ_LEVEL" -k -v "$IMG" 2>&1 | tr '\r' '\n' | tail -1 >&2 || true
    [ -f "$IMG.xz" ] || die "xz failed"
    touch --date="@$SOURCE_DATE_EPOCH" "$IMG.xz" "$base.bmap" "$base.packages"
    (cd "$(dirname "$IMG")" && sha256sum "$(basename "$IMG")" "$(basename "$IMG").xz" \
        "$(basename "$base").bmap" "$(basename "$base").packages") >"$base.sha256"
    local f
    for f in "$IMG" "$IMG.xz" "$base.bmap" "$base.packages" "$base.sha256"; do
        info "$(du -h --apparent-size "$f" | cut -f1)	$f"
    done
}
