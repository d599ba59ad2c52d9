#!/usr/bin/env bash
# Installs or upgrades nrdot from a release tarball (dist/package.sh makes one):
#
#   install.sh --tarball nrdot-0.1.0-linux-x86_64.tar.gz   # verifies the .sha256 beside it
#   install.sh --root DIR --no-systemd --tarball …        # into a throwaway root (CI)
#
# Every check runs before anything changes; a second run upgrades in place (the running service
# takes the new binary with `nrdot upgrade`, without closing a port). Options:
#   --tarball F     release tarball; F.sha256 must sit beside it (or pass --sha256 HEX)
#   --sha256 HEX    expected checksum of the tarball
#   --root DIR      install under DIR instead of / (no user is created; files stay yours)
#   --no-systemd    skip systemctl (enable, start, upgrade, health wait)
#   --admin URL     where the health wait looks (default http://127.0.0.1:8080)
set -euo pipefail

tarball="" sha="" root="" systemd=1 admin="http://127.0.0.1:8080"
say() { printf 'install: %s\n' "$*"; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
  case "$1" in
    --tarball) tarball="${2:?}"; shift 2 ;;
    --sha256) sha="${2:?}"; shift 2 ;;
    --root) root="${2:?}"; shift 2 ;;
    --no-systemd) systemd=0; shift ;;
    --admin) admin="${2:?}"; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done
[ -n "$tarball" ] || die "--tarball is required"
[ -f "$tarball" ] || die "$tarball: no such file"
if [ -n "$root" ]; then
  mkdir -p "$root"
  root="$(cd "$root" && pwd)"
fi

# ---- Pre-checks: nothing has changed yet. ----
system="${NRDOT_INSTALL_UNAME:-$(uname -s)}"   # the override lets tests play another system
[ "$system" = Linux ] || die "unsupported system $system: nrdot runs on Linux"
if [ "$systemd" = 1 ]; then
  command -v systemctl >/dev/null && [ -d /run/systemd/system ] \
    || die "systemd is not running here; use --no-systemd and start nrdot yourself"
  [ "$(id -u)" = 0 ] || die "run as root (it creates a user and installs a service)"
fi
for tool in tar sha256sum install; do
  command -v "$tool" >/dev/null || die "$tool is missing"
done

expected="$sha"
if [ -z "$expected" ]; then
  [ -f "$tarball.sha256" ] || die "$tarball.sha256 is missing (or pass --sha256)"
  expected="$(awk '{print $1; exit}' "$tarball.sha256")"
fi
actual="$(sha256sum "$tarball" | awk '{print $1}')"
[ "$actual" = "$expected" ] || die "checksum mismatch for $tarball: expected $expected, got $actual"
say "checksum ok ($actual)"

avail_kib="$(df -Pk "${root:-/}" | awk 'NR==2 {print $4}')"
[ "${avail_kib:-0}" -ge 262144 ] || die "less than 256 MiB free on ${root:-/}"
mem_kib="$(awk '/MemAvailable/ {print $2}' /proc/meminfo 2>/dev/null || echo 0)"
[ "${mem_kib:-0}" -ge 131072 ] || die "less than 128 MiB of memory available"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
tar -C "$work" -xzf "$tarball"
src="$(find "$work" -mindepth 1 -maxdepth 1 -type d | head -n1)"
[ -x "$src/nrdot" ] || die "$tarball holds no nrdot binary"
version="$("$src/nrdot" version --short)" || die "the packaged binary does not run here"

bin="$root/usr/local/bin/nrdot"
etc="$root/etc/nrdot"
upgrade=0
[ -x "$bin" ] && upgrade=1

running=0
if [ "$systemd" = 1 ] && systemctl is-active --quiet nrdot; then running=1; fi
if [ "$systemd" = 1 ] && [ "$running" = 0 ]; then
  # Ports must be free, unless nrdot itself holds them.
  for port in 80 443 8080; do
    holder="$(ss -Hltnp "sport = :$port" 2>/dev/null | head -n1)"
    if [ -n "$holder" ] && ! printf '%s' "$holder" | grep -q '"nrdot"'; then
      die "port $port is in use: $holder"
    fi
  done
fi

# An existing configuration must still be valid for the new binary.
if [ -f "$etc/nrdot.toml" ]; then
  "$src/nrdot" config validate --file "$etc/nrdot.toml" >/dev/null \
    || die "$etc/nrdot.toml is not valid for nrdot $version (nothing changed): $("$src/nrdot" config validate --file "$etc/nrdot.toml" 2>&1 | head -n5)"
fi

# ---- Changes. ----
if [ -z "$root" ]; then
  if ! id nrdot >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/nrdot --no-create-home --shell /usr/sbin/nologin nrdot
    say "created system user nrdot"
  fi
  owner="nrdot:nrdot"
else
  say "--root: no user created; files belong to $(id -un)"
  owner=""
fi

install -d -m 0755 "$root/usr/local/bin" "$root/etc/systemd/system" "$root/etc/sysctl.d" "$root/etc/security/limits.d"
install -d -m 0750 "$etc" "$root/var/log/nrdot"
install -d -m 0700 "$root/var/lib/nrdot"
if [ -n "$owner" ]; then chown "$owner" "$etc" "$root/var/log/nrdot" "$root/var/lib/nrdot"; fi

# The binary is replaced by a rename: a running nrdot keeps its own file, and `nrdot upgrade`
# starts the new one from this path.
install -m 0755 "$src/nrdot" "$bin.new"
mv -f "$bin.new" "$bin"
if [ ! -f "$etc/nrdot.toml" ]; then
  install -m 0640 "$src/nrdot.toml" "$etc/nrdot.toml"
  if [ -n "$owner" ]; then chown "root:nrdot" "$etc/nrdot.toml"; fi
  say "installed the default configuration $etc/nrdot.toml (edit its pool)"
else
  say "kept the existing configuration $etc/nrdot.toml"
fi
install -m 0644 "$src/nrdot.service" "$root/etc/systemd/system/nrdot.service"
install -m 0644 "$src/60-nrdot.conf" "$root/etc/sysctl.d/60-nrdot.conf"
install -m 0644 "$src/nrdot-limits.conf" "$root/etc/security/limits.d/nrdot.conf"
if [ -f "$src/README.md" ]; then install -D -m 0644 "$src/README.md" "$root/usr/share/doc/nrdot/README.md"; fi
if [ "$upgrade" = 1 ]; then say "upgraded $bin to nrdot $version"; else say "installed nrdot $version as $bin"; fi

if [ "$systemd" = 0 ]; then
  say "systemd steps skipped. To run it: $bin serve --config $etc/nrdot.toml"
  exit 0
fi

systemctl daemon-reload
sysctl --system >/dev/null 2>&1 || say "warning: sysctl --system failed; run nrdot doctor"
if [ "$running" = 1 ]; then
  say "nrdot is running: handing over to the new binary (nrdot upgrade)"
  "$bin" --state-dir /var/lib/nrdot upgrade || die "upgrade failed; the old process keeps serving"
else
  systemctl enable --now nrdot
fi
for _ in $(seq 60); do
  if curl -fsS "$admin/health" >/dev/null 2>&1; then
    say "nrdot is healthy at $admin/health"
    say "admin credentials: /var/lib/nrdot/admin-credentials (mode 0600, readable by root and nrdot)"
    say "next: nrdot doctor"
    exit 0
  fi
  sleep 1
done
die "nrdot did not answer $admin/health within 60 s: journalctl -u nrdot"
