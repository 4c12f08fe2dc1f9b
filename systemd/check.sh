#!/usr/bin/env bash
# Checks systemd/hookrelay.service offline: `systemd-analyze verify` (syntax, executables) and
# `systemd-analyze security` (exposure must stay at 2.0 or below), plus the sysusers
# and tmpfiles snippets. Installs Debian's systemd package if systemd-analyze is missing.
# Needs no running systemd: everything happens in a scratch --root.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
unit=hookrelay.service
threshold=20 # score x 10: 2.0

if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "systemd-analyze missing; installing Debian's systemd package"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# A scratch root where ExecStart=/ExecReload= resolve: stubs for the binaries the unit runs.
mkdir -p "$root/usr/bin" "$root/bin" "$root/etc/systemd/system" "$root/etc/hookrelay" \
  "$root/usr/lib/sysusers.d" "$root/usr/lib/tmpfiles.d"
for stub in "$root/usr/bin/hookrelay" "$root/bin/kill"; do
  printf '#!/bin/sh\nexit 0\n' >"$stub"
  chmod 0755 "$stub"
done
cp "$here/$unit" "$root/etc/systemd/system/$unit"
# The standard targets the unit's default dependencies name (sysinit.target, …).
mkdir -p "$root/usr/lib/systemd"
if [ -d /usr/lib/systemd/system ]; then
  cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
fi

echo "== systemd-analyze verify"
# verify prints problems on stderr and does not always fail on them: fail on any output.
verify_out="$(systemd-analyze verify --man=no --root="$root" "$root/etc/systemd/system/$unit" 2>&1)" || {
  echo "$verify_out"
  echo "verify failed" >&2
  exit 1
}
problems="$(printf '%s\n' "$verify_out" | grep -v -e '^$' || true)"
if [ -n "$problems" ]; then
  echo "$problems"
  echo "verify reported problems" >&2
  exit 1
fi
echo "ok"

echo "== systemd-analyze security (threshold ${threshold} = exposure 2.0)"
systemd-analyze security --offline=yes --root="$root" --threshold="$threshold" "$unit"

echo "== sysusers and tmpfiles"
cp "$here/hookrelay.sysusers" "$root/usr/lib/sysusers.d/hookrelay.conf"
cp "$here/hookrelay.tmpfiles" "$root/usr/lib/tmpfiles.d/hookrelay.conf"
if command -v systemd-sysusers >/dev/null 2>&1; then
  systemd-sysusers --root="$root" hookrelay.conf
  grep -q '^hookrelay:' "$root/etc/passwd" && grep -q '^hookrelay:' "$root/etc/group"
  echo "sysusers: $(grep '^hookrelay:' "$root/etc/passwd")"
fi
if command -v systemd-tmpfiles >/dev/null 2>&1; then
  touch "$root/etc/hookrelay/config.toml"
  chmod 0666 "$root/etc/hookrelay/config.toml"
  systemd-tmpfiles --root="$root" --create hookrelay.conf
  # Owners as numbers: the names live in the scratch root's /etc/group, not the host's.
  gid="$(awk -F: '$1 == "hookrelay" { print $3 }' "$root/etc/group")"
  mode="$(stat -c '%a %u %g' "$root/etc/hookrelay/config.toml")"
  if [ "$mode" != "640 0 $gid" ]; then
    echo "tmpfiles: config.toml is '$mode', expected '640 0 $gid' (root:hookrelay 0640)" >&2
    exit 1
  fi
  echo "tmpfiles: /etc/hookrelay/config.toml 0640 root:hookrelay"
fi
echo "systemd checks passed"
