# Shared helpers for the image build steps (sourced, not run).
# shellcheck shell=bash

IMAGE_DIR=${IMAGE_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
REPO_DIR=${REPO_DIR:-$(cd "$IMAGE_DIR/.." && pwd)}
BUILD_T0=${BUILD_T0:-$(date +%s)}

die() { printf 'image: error: %s\n' "$*" >&2; exit 1; }
warn() { printf 'image: warning: %s\n' "$*" >&2; }

# One line per step, with the time since the build started, so a person
# watching a 25-minute build sees where it is.
step() {
    local now; now=$(date +%s)
    printf '\n==> [%4ss] %s\n' "$((now - BUILD_T0))" "$*" >&2
}
info() { printf '    %s\n' "$*" >&2; }

need_tools() {
    local t missing=()
    for t in "$@"; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
    [ ${#missing[@]} -eq 0 ] || die "missing tools: ${missing[*]} (make image installs them: packages/image-host.txt)"
}

# packages NAME...: the Debian packages in packages/NAME.txt (shared with the
# Makefile), one line, comments dropped.
packages() {
    local n f words out=()
    for n in "$@"; do
        f=$REPO_DIR/packages/$n.txt
        [ -f "$f" ] || die "no package list $f"
        read -r -d '' -a words < <(sed 's/#.*//' "$f") || true
        out+=("${words[@]}")
    done
    echo "${out[*]}"
}

# Value patterns: the one place that says what each key accepts.
declare -A CONFIG_PATTERN=(
    [SUITE]='^[a-z][a-z0-9-]*$'
    [ARCH]='^arm64$'
    [MIRROR]='^(https?|file)://[^[:space:]]+$'
    [KERNEL_SUITE]='^[a-z][a-z0-9-]*$'
    [BORROWED_PACKAGES]='^([a-z0-9][a-z0-9.+-]*/[a-z][a-z0-9-]*(,[a-z0-9][a-z0-9.+-]*/[a-z][a-z0-9-]*)*)?$'
    [EXTRA_PACKAGES]='^([a-z0-9][a-z0-9.+-]*(,[a-z0-9][a-z0-9.+-]*)*)?$'
    [LEAN]='^(yes|no)$'
    [RAUC_CERT]='^[^[:space:]]*$'
    [RAUC_KEY]='^[^[:space:]]*$'
    [APP]='^(source|stub)$'
    [APP_SOURCE]='^[^[:space:]]+$'
    [IMAGE_NAME]='^[A-Za-z0-9][A-Za-z0-9._-]*$'
    [VERSION]='^[A-Za-z0-9][A-Za-z0-9._+-]*$'
    [OUT_DIR]='^[^[:space:]]+$'
    [WORK_DIR]='^[^[:space:]]+$'
    [SOURCE_DATE_EPOCH]='^[0-9]{1,12}$'
    [DISK_ID]='^0x[0-9a-f]{8}$'
    [ROOT_UUID]='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    [DATA_UUID]='^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
    [BOOT_VOLID]='^[0-9a-f]{8}$'
    [BOOT_SIZE_MB]='^(3[6-9]|[4-9][0-9]|[1-9][0-9]{2,3})$'
    [ROOT_SIZE_MB]='^(0|[1-9][0-9]{1,5})$'
    [ROOT_EXTRA_MB]='^[0-9]{1,5}$'
    [DATA_SIZE_MB]='^(0|[8-9]|[1-9][0-9]{1,4})$'
    [HOSTNAME]='^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$'
    [TIMEZONE]='^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$'
    [XZ_LEVEL]='^[0-9]$'
)
declare -A CONFIG=()
declare -a CONFIG_KEYS=()

# config_read FILE ALLOW_NEW: read KEY=value lines into CONFIG. Only the
# defaults file may introduce keys; anywhere else an unknown key is an error
# that names it.
config_read() {
    local file=$1 allow_new=$2 line key value n=0
    [ -f "$file" ] || die "config file not found: $file"
    while IFS= read -r line || [ -n "$line" ]; do
        n=$((n + 1))
        line=${line%$'\r'}
        [[ $line =~ ^[[:space:]]*(#|$) ]] && continue
        [[ $line =~ ^([A-Z][A-Z0-9_]*)=(.*)$ ]] \
            || die "$file:$n: expected KEY=value, got: $line"
        key=${BASH_REMATCH[1]} value=${BASH_REMATCH[2]}
        config_set "$key" "$value" "$file:$n" "$allow_new"
    done <"$file"
}

config_set() {
    local key=$1 value=$2 where=$3 allow_new=${4:-no}
    if [ -z "${CONFIG[$key]+x}" ]; then
        [ "$allow_new" = yes ] || die "$where: unknown key '$key' (known keys: ${CONFIG_KEYS[*]})"
        [ -n "${CONFIG_PATTERN[$key]+x}" ] || die "$where: key '$key' has no value pattern in lib/common.sh"
        CONFIG_KEYS+=("$key")
    fi
    CONFIG[$key]=$value
}

config_check() {
    local key
    for key in "${!CONFIG_PATTERN[@]}"; do
        [ -n "${CONFIG[$key]+x}" ] || die "key '$key' has a pattern but no default in config.defaults"
    done
    for key in "${CONFIG_KEYS[@]}"; do
        [[ ${CONFIG[$key]} =~ ${CONFIG_PATTERN[$key]} ]] \
            || die "bad value for '$key': '${CONFIG[$key]}' (must match ${CONFIG_PATTERN[$key]})"
    done
}

# Writes the checked configuration as a file of shell assignments that every
# step sources, so steps never see an unchecked value.
config_write_env() {
    local key
    for key in "${CONFIG_KEYS[@]}"; do
        printf '%s=%q\n' "$key" "${CONFIG[$key]}"
    done
}

abspath() { case $1 in /*) printf '%s\n' "$1" ;; *) printf '%s\n' "$REPO_DIR/$1" ;; esac; }

# Clamp every timestamp under DIR to SOURCE_DATE_EPOCH (reproducibility).
clamp_mtimes() {
    find "$1" -newermt "@$SOURCE_DATE_EPOCH" -print0 \
        | xargs -0 -r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
}
