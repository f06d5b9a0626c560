# Step 30: our files on top of the root, the read-only root's fstab, units
# enabled, SSH off, and the boot partition's contents (firmware, kernel,
# cmdline.txt, config.txt, hats.txt, the appliance.toml template).
# Runs 30-overlay-root.sh under fakeroot so owners and modes are right
# without being root.
# shellcheck shell=bash

stage_overlay() {
    step "30 overlay: files, units, read-only root, boot partition"
    need_tools fakeroot tar python3
    rauc_keys
    export WORK_DIR IMAGE_DIR BASE HOSTNAME DISK_ID TIMEZONE VERSION SOURCE_DATE_EPOCH IMAGE_NAME RAUC_KEYRING
    in_fakeroot bash "$IMAGE_DIR/stages/30-overlay-root.sh"
}

# The update signing key pair: RAUC_CERT + RAUC_KEY when given, else a
# development pair made once in WORK_DIR/rauc-dev/ (kept across builds, so
# `make bundle` signs what earlier images accept). The image trusts the
# certificate (its keyring); the key never goes into the image.
rauc_keys() {
    if [ -n "$RAUC_CERT" ] || [ -n "$RAUC_KEY" ]; then
        [ -f "$RAUC_CERT" ] && [ -f "$RAUC_KEY" ] || die "RAUC_CERT and RAUC_KEY must both name PEM files"
        RAUC_KEYRING=$(abspath "$RAUC_CERT")
        return
    fi
    local d=$WORK_DIR/rauc-dev
    if [ ! -f "$d/cert.pem" ] || [ ! -f "$d/key.pem" ]; then
        need_tools openssl
        mkdir -p "$d"
        (umask 077; openssl req -x509 -newkey rsa:3072 -nodes -keyout "$d/key.pem" -out "$d/cert.pem" \
            -days 3650 -subj "/O=appliance development/CN=appliance update signing (development)" \
            -addext "keyUsage=critical,digitalSignature" 2>/dev/null) \
            || die "openssl could not make the development signing key"
        warn "signing updates with a development key made now ($d); give RAUC_CERT and RAUC_KEY for real appliances"
    fi
    RAUC_KEYRING=$d/cert.pem
}
