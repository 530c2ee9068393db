#!/usr/bin/env bash
# Fetch Debian's prometheus package (prometheus + promtool) and unpack it without a system install.
#
# Idempotent: a second run finds the binaries and only prints the bin dir. No root needed for the
# download itself; `apt-get update` runs only when the package index is missing and we may write it.
#
#   tools/install_prometheus.sh            # prints e.g. /repo/.cache/prometheus/usr/bin
#   PROMPTCLIMB_PROMETHEUS_DIR=/opt/prom tools/install_prometheus.sh
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${PROMPTCLIMB_PROMETHEUS_DIR:-$repo_root/.cache/prometheus}"
bin_dir="$dest/usr/bin"

if [[ -x "$bin_dir/prometheus" && -x "$bin_dir/promtool" ]]; then
    echo "$bin_dir"
    exit 0
fi

mkdir -p "$dest"
work="$(mktemp -d)"
chmod 755 "$work"  # apt-get download drops privileges to _apt
trap 'rm -rf "$work"' EXIT

download() { (cd "$work" && apt-get download prometheus >&2); }

if ! download; then
    # A fresh container has no package lists yet; refresh them once and retry.
    if [[ "$(id -u)" == "0" ]]; then
        apt-get update >&2
    else
        sudo -n apt-get update >&2
    fi
    download
fi

deb="$(ls "$work"/prometheus_*.deb)"
dpkg -x "$deb" "$dest"
if [[ ! -x "$bin_dir/prometheus" || ! -x "$bin_dir/promtool" ]]; then
    echo "install_prometheus: $deb did not contain prometheus and promtool" >&2
    exit 1
fi
echo "$bin_dir"
