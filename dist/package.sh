#!/usr/bin/env bash
# Builds a release tarball from an nrdot binary: nrdot-VERSION-linux-ARCH.tar.gz and its
# .sha256 beside it, the input of dist/install.sh.
#   dist/package.sh [BINARY] [OUTDIR]     (default: target/release/nrdot, ./dist-out)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="${1:-$here/../target/release/nrdot}"
out="${2:-./dist-out}"
[ -x "$bin" ] || { echo "package.sh: $bin is not an executable (cargo build --release first)" >&2; exit 2; }
version="$("$bin" version --short)"
name="nrdot-$version-linux-$(uname -m)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/$name" "$out"
install -m 0755 "$bin" "$work/$name/nrdot"
install -m 0644 "$here/nrdot.service" "$here/nrdot.toml" "$here/60-nrdot.conf" "$here/nrdot-limits.conf" "$work/$name/"
install -m 0755 "$here/install.sh" "$work/$name/"
[ -f "$here/../README.md" ] && install -m 0644 "$here/../README.md" "$work/$name/"
tar -C "$work" -cf - "$name" | gzip -1 > "$out/$name.tar.gz"
(cd "$out" && sha256sum "$name.tar.gz" > "$name.tar.gz.sha256")
echo "$out/$name.tar.gz"
