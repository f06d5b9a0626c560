# Step 00: the configuration. Defaults first, then each --config file, then
# each --set; an unknown key or a value that does not match its pattern stops
# the build here, before anything is downloaded.
# shellcheck shell=bash

stage_config() {
    step "00 config"
    config_read "$IMAGE_DIR/config.defaults" yes
    local f kv
    for f in "${config_files[@]}"; do config_read "$f" no; done
    for kv in "${sets[@]}"; do
        [[ $kv =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]] || die "--set $kv: expected KEY=value"
        config_set "${BASH_REMATCH[1]}" "${BASH_REMATCH[2]}" "--set" no
    done
    config_check
    local key
    for key in "${CONFIG_KEYS[@]}"; do
        printf -v "$key" '%s' "${CONFIG[$key]}"
        export "${key?}"
    done
    OUT_DIR=$(abspath "$OUT_DIR") WORK_DIR=$(abspath "$WORK_DIR") APP_SOURCE=$(abspath "$APP_SOURCE")
    export SOURCE_DATE_EPOCH TZ=UTC LC_ALL=C
    # e2fsprogs takes its "now" from here: fixed superblock times.
    export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
    IMG=$OUT_DIR/$IMAGE_NAME-$VERSION.img
    mkdir -p "$OUT_DIR" "$WORK_DIR"
    rm -rf "${WORK_DIR:?}/root" "${WORK_DIR:?}/boot" "${WORK_DIR:?}/data" "${WORK_DIR:?}/fakeroot.state"
    mkdir -p "$WORK_DIR/root" "$WORK_DIR/boot" "$WORK_DIR/data"
    : >"$WORK_DIR/fakeroot.state"
    for key in "${CONFIG_KEYS[@]}"; do info "$key=${!key}"; done
}

# Every command that must see the root's real ownership runs here. Saving
# the state costs fakeroot ~2 s, so commands that only read it don't.
in_fakeroot() { fakeroot -i "$WORK_DIR/fakeroot.state" -s "$WORK_DIR/fakeroot.state" -- "$@"; }
in_fakeroot_read() { fakeroot -i "$WORK_DIR/fakeroot.state" -- "$@"; }
