#!/usr/bin/env bash
# Builds the Debian package (packaging/deb/build.sh: `cargo build --release --locked`), inspects
# it, then installs it for real with `dpkg -i` on this machine (CI: root in a throwaway Debian 12
# container without systemd as PID 1; the maintainer scripts must cope), runs `hookrelay check`
# (and, when its ports are free, the daemon) as the service user with test credentials,
# reinstalls it (the upgrade path), removes and purges it, and checks what each step leaves.
# A trap purges the package and deletes the user it created, even on failure.
#
# Runs lintian on the .deb (no errors, no warnings; overrides only in packaging/deb/lintian-overrides)
# and checks the man pages with man and lexgrog. Installs dpkg-dev (dpkg-shlibdeps), binutils
# (strip), shellcheck and lintian (which brings man-db) with apt-get when they are missing; it
# does not remove them afterwards. Refuses to run where hookrelay is already
# installed or /etc/hookrelay or /var/lib/hookrelay exist: purging would delete them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
started=$SECONDS

fail() {
  echo "FAIL: $*" >&2
  exit 1
}
ok() { echo "ok: $*"; }
# expect_eq WHAT ACTUAL EXPECTED
expect_eq() {
  [ "$2" = "$3" ] || fail "$1: got '$2', expected '$3'"
  ok "$1: $2"
}

# dpkg's state of hookrelay: installed, config-files, …; empty or not-installed when unknown.
pkg_state() { dpkg-query -W -f='${db:Status-Status}' hookrelay 2>/dev/null || true; }
known_to_dpkg() { case "$(pkg_state)" in "" | not-installed) return 1 ;; *) return 0 ;; esac; }

[ "$(id -u)" -eq 0 ] || fail "needs root (dpkg -i); CI runs as root"
if known_to_dpkg; then fail "hookrelay is already known to dpkg here ($(pkg_state)); this test would purge it"; fi
for path in /etc/hookrelay /var/lib/hookrelay; do
  [ ! -e "$path" ] || fail "$path exists; this test would delete it"
done
user_existed=no
if getent passwd hookrelay >/dev/null; then user_existed=yes; fi

echo "== setup"
need=()
command -v dpkg-shlibdeps >/dev/null 2>&1 || need+=(dpkg-dev)
{ command -v strip && command -v objdump && command -v readelf; } >/dev/null 2>&1 || need+=(binutils)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v lintian >/dev/null 2>&1 || need+=(lintian)
{ command -v man && command -v lexgrog; } >/dev/null 2>&1 || need+=(man-db)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/hookrelay-deb-test.XXXXXX")"
cleanup() {
  status=$?
  set +e
  if [ -n "${daemon_pid:-}" ] && kill -0 "$daemon_pid" 2>/dev/null; then
    kill -TERM "$daemon_pid"
    wait "$daemon_pid"
  fi
  if known_to_dpkg; then
    echo "cleanup: dpkg -P hookrelay (state $(pkg_state))"
    dpkg -P hookrelay >/dev/null 2>&1 || echo "cleanup: dpkg -P failed" >&2
  fi
  if [ "$user_existed" = no ] && getent passwd hookrelay >/dev/null; then
    userdel hookrelay
  fi
  if [ "$user_existed" = no ] && getent group hookrelay >/dev/null; then
    groupdel hookrelay
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "== shellcheck"
shellcheck "$here/build.sh" "$here/test.sh" "$here/postinst" "$here/prerm" "$here/postrm"
ok "build.sh test.sh postinst prerm postrm"

echo "== build"
deb="$(bash "$here/build.sh" "$work/out")"
[ -f "$deb" ] || fail "build.sh did not produce a .deb"
version="$(dpkg-deb --field "$deb" Version)"
arch="$(dpkg --print-architecture)"
expect_eq "file name" "$(basename "$deb")" "hookrelay_${version}_${arch}.deb"
ok "size $(stat -c %s "$deb") bytes ($(du -h "$deb" | cut -f1))"

echo "== dpkg-deb --info"
dpkg-deb --info "$deb"
expect_eq "Package" "$(dpkg-deb --field "$deb" Package)" hookrelay
expect_eq "Section" "$(dpkg-deb --field "$deb" Section)" net
expect_eq "Priority" "$(dpkg-deb --field "$deb" Priority)" optional
expect_eq "Architecture" "$(dpkg-deb --field "$deb" Architecture)" "$arch"
depends="$(dpkg-deb --field "$deb" Depends)"
case "$depends" in *ca-certificates*) ;; *) fail "Depends lacks ca-certificates: $depends" ;; esac
case "$depends" in *"libc6 (>= "*) ;; *) fail "Depends lacks a versioned libc6: $depends" ;; esac
ok "Depends: $depends"
dpkg-deb --info "$deb" conffiles >"$work/conffiles"
grep -qx /etc/hookrelay/config.toml "$work/conffiles" || fail "conffiles lacks /etc/hookrelay/config.toml"
grep -qx /etc/systemd/system/hookrelay.service.d/credentials.conf "$work/conffiles" ||
  fail "conffiles lacks credentials.conf"
ok "conffiles: $(tr '\n' ' ' <"$work/conffiles")"
for script in postinst prerm postrm md5sums; do
  dpkg-deb --info "$deb" "$script" >/dev/null || fail "control member $script missing"
done
ok "control members postinst prerm postrm md5sums"

echo "== dpkg-deb --contents"
dpkg-deb --contents "$deb" | tee "$work/contents"
# mode owner path, for regular files and symlinks
awk '$1 !~ /^d/ { print $1, $2, $6 }' "$work/contents" | LC_ALL=C sort -k3 >"$work/files"
# The docs/ pages, gzipped when over 4 KiB as build.sh does.
for page in docs/*.md; do
  name="$(basename "$page")"
  if [ "$(stat -c %s "$page")" -gt 4096 ]; then name="$name.gz"; fi
  echo "-rw-r--r-- root/root ./usr/share/doc/hookrelay/docs/$name"
done >"$work/expected-docs"
LC_ALL=C sort -k3 - "$work/expected-docs" >"$work/expected" <<'EOF'
-rw-r----- root/root ./etc/hookrelay/config.toml
-rw-r--r-- root/root ./etc/systemd/system/hookrelay.service.d/credentials.conf
-rwxr-xr-x root/root ./usr/bin/hookrelay
-rw-r--r-- root/root ./usr/lib/systemd/system/hookrelay.service
-rw-r--r-- root/root ./usr/lib/sysusers.d/hookrelay.conf
-rw-r--r-- root/root ./usr/share/doc/hookrelay/README.md.gz
-rw-r--r-- root/root ./usr/share/doc/hookrelay/changelog.Debian.gz
-rw-r--r-- root/root ./usr/share/doc/hookrelay/copyright
-rw-r--r-- root/root ./usr/share/doc/hookrelay/examples/Caddyfile
-rw-r--r-- root/root ./usr/share/doc/hookrelay/examples/config.example.toml.gz
-rw-r--r-- root/root ./usr/share/doc/hookrelay/examples/grafana/hookrelay.json
-rw-r--r-- root/root ./usr/share/doc/hookrelay/examples/nginx.conf
-rw-r--r-- root/root ./usr/share/doc/hookrelay/examples/prometheus/alerts.yml
-rw-r--r-- root/root ./usr/share/doc/hookrelay/examples/prometheus/alerts_test.yml
-rw-r--r-- root/root ./usr/share/bash-completion/completions/hookrelay
-rw-r--r-- root/root ./usr/share/fish/vendor_completions.d/hookrelay.fish
-rw-r--r-- root/root ./usr/share/lintian/overrides/hookrelay
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-authorize.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-check.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-dead-list.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-dead-purge.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-dead-replay.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-dead.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-doctor.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-events-list.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-events-replay.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-events-show.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-events.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-import-instance.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-retry.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-run.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-send-test.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay-status.1.gz
-rw-r--r-- root/root ./usr/share/man/man1/hookrelay.1.gz
-rw-r--r-- root/root ./usr/share/man/man5/hookrelay.toml.5.gz
-rw-r--r-- root/root ./usr/share/zsh/vendor-completions/_hookrelay
EOF
diff -u "$work/expected" "$work/files" || fail "package files, modes or owners differ (- expected, + package)"
ok "files, modes and owners as expected"
bad_dirs="$(awk '$1 ~ /^d/ && ($1 != "drwxr-xr-x" || $2 != "root/root")' "$work/contents")"
[ -z "$bad_dirs" ] || fail "directories not root/root 0755: $bad_dirs"
ok "directories root/root 0755"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/bin/hookrelay >"$work/hookrelay"
# (.debug_gdb_scripts is a loaded section rustc adds, not debug information.)
if readelf -S "$work/hookrelay" | grep -qE '\.symtab|\.debug_(info|line|str|abbrev)'; then
  fail "/usr/bin/hookrelay is not stripped"
fi
ok "/usr/bin/hookrelay stripped ($(stat -c %s "$work/hookrelay") bytes)"
dpkg-deb --fsys-tarfile "$deb" | tar -xO ./usr/lib/systemd/system/hookrelay.service >"$work/unit"
grep -q '^ExecStart=/usr/bin/hookrelay ' "$work/unit" || fail "unit's ExecStart is not /usr/bin/hookrelay"
ok "unit ExecStart=/usr/bin/hookrelay"
# The man pages: each renders without groff warnings and has a NAME line mandb can index;
# hookrelay(1) names every command's page.
mkdir -p "$work/tree"
dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$work/tree" ./usr/share/man
for page in "$work"/tree/usr/share/man/man*/*.gz; do
  warnings="$(LC_ALL=C.UTF-8 MANROFFSEQ='' MANWIDTH=80 man --warnings -E UTF-8 -l -Tutf8 -Z "$page" 2>&1 >/dev/null)"
  [ -z "$warnings" ] || fail "$(basename "$page"): $warnings"
  lexgrog "$page" >/dev/null || fail "$(basename "$page"): lexgrog finds no NAME section"
done
ok "man pages render cleanly and have NAME sections"
MANWIDTH=80 man -l "$work/tree/usr/share/man/man1/hookrelay.1.gz" 2>/dev/null | sed "s/.\x08//g" >"$work/hookrelay.1.txt"
for cmd in run check status dead import-instance authorize doctor send-test; do
  grep -q "hookrelay-$cmd(1)" "$work/hookrelay.1.txt" || fail "hookrelay(1) does not name hookrelay-$cmd(1)"
done
ok "hookrelay(1) names every command's page"

echo "== lintian"
# Errors and warnings fail; overrides, each with its reason, are in packaging/deb/lintian-overrides.
lintian --fail-on error,warning --display-info "$deb" || fail "lintian reported errors or warnings (above)"
ok "lintian: no errors or warnings"

echo "== dpkg -i (systemd as PID 1: $([ -d /run/systemd/system ] && echo yes || echo no))"
dpkg -i "$deb"
expect_eq "dpkg state" "$(pkg_state)" installed
dpkg --verify hookrelay || fail "dpkg --verify reports changed files"
ok "dpkg --verify: files match md5sums"
getent passwd hookrelay >/dev/null || fail "no user hookrelay"
getent group hookrelay >/dev/null || fail "no group hookrelay"
ok "user: $(getent passwd hookrelay)"
expect_eq "/etc/hookrelay/config.toml" "$(stat -c '%a %U:%G' /etc/hookrelay/config.toml)" "640 root:hookrelay"
expect_eq "statoverride" "$(dpkg-statoverride --list /etc/hookrelay/config.toml)" \
  "root hookrelay 640 /etc/hookrelay/config.toml"
expect_eq "/etc/hookrelay/admin-token" "$(stat -c '%a %U:%G' /etc/hookrelay/admin-token)" "600 root:root"
grep -qxE '[0-9a-f]{64}' /etc/hookrelay/admin-token || fail "admin-token is not 64 hex digits"
cp -p /etc/hookrelay/admin-token "$work/admin-token.installed"
expect_eq "/var/lib/hookrelay" "$(stat -c '%a %U:%G' /var/lib/hookrelay)" "700 hookrelay:hookrelay"
if command -v deb-systemd-helper >/dev/null 2>&1; then
  # deb-systemd-helper links /lib/… on merged-/usr systems: compare where the link leads.
  expect_eq "enabled (multi-user.target.wants)" \
    "$(readlink -f /etc/systemd/system/multi-user.target.wants/hookrelay.service)" \
    "$(readlink -f /usr/lib/systemd/system/hookrelay.service)"
fi
if [ -d /run/systemd/system ]; then
  systemctl --quiet is-active hookrelay.service && fail "the service was started on first install"
  ok "not started on first install"
fi
if command -v systemd-analyze >/dev/null 2>&1; then
  # Unit, drop-in and the paths they name, as installed (ExecStart= resolves, LoadCredential= parses).
  verify_out="$(systemd-analyze verify --man=no hookrelay.service 2>&1)" || fail "systemd-analyze verify: $verify_out"
  [ -z "$(printf '%s' "$verify_out" | grep hookrelay || true)" ] || fail "systemd-analyze verify: $verify_out"
  ok "systemd-analyze verify hookrelay.service (with credentials.conf)"
fi

echo "== hookrelay check (installed config, no instance)"
conf=/etc/hookrelay/config.toml
/usr/bin/hookrelay --config "$conf" check
ok "check as root (finds /etc/hookrelay/admin-token next to the config)"
# The service's view: user hookrelay, secrets only in $CREDENTIALS_DIRECTORY (what
# LoadCredential= gives it: a directory of the service user's, files 0400).
creds="$work/credentials"
install -d -m 0700 -o hookrelay -g hookrelay "$creds"
install -m 0400 -o hookrelay -g hookrelay /etc/hookrelay/admin-token "$creds/admin-token"
chmod 0711 "$work" # let hookrelay reach $creds
as_service() { setpriv --reuid=hookrelay --regid=hookrelay --init-groups -- env CREDENTIALS_DIRECTORY="$creds" "$@"; }
as_service /usr/bin/hookrelay --config "$conf" check
ok "check as user hookrelay with CREDENTIALS_DIRECTORY (config readable through the group)"
set +e
setpriv --reuid=hookrelay --regid=hookrelay --init-groups -- /usr/bin/hookrelay --config "$conf" check 2>"$work/err"
code=$?
set -e
expect_eq "check as hookrelay without credentials (exit code)" "$code" 78
grep -q 'admin.token' "$work/err" || fail "the problem does not name admin.token: $(cat "$work/err")"
ok "it names admin.token"

echo "== hookrelay check (the example [[instance]] uncommented, as docs/packaging.md says)"
# Uncomment in place (cat >, so the file keeps its owner and mode), as an operator would.
sed '/^#\[\[instance\]\]$/,$ s/^#\([^ ]\)/\1/' "$conf" >"$work/edited.toml"
cat "$work/edited.toml" >"$conf"
grep -q '^\[\[instance\]\]$' "$conf" || fail "no [[instance]] after uncommenting"
set +e
as_service /usr/bin/hookrelay --config "$conf" check 2>"$work/err"
code=$?
set -e
expect_eq "check with the instance but without its secret files (exit code)" "$code" 78
for key in oauth.api.secret event.notification.signature.key; do
  grep -q "$key" "$work/err" || fail "the problems do not name $key: $(cat "$work/err")"
done
ok "it names oauth.api.secret and event.notification.signature.key"
printf 'test-dropbox-app-secret\n' >"$creds/dropbox-app-secret"
printf 'whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD\n' >"$creds/acme-signature-key"
chown hookrelay:hookrelay "$creds/dropbox-app-secret" "$creds/acme-signature-key"
chmod 0400 "$creds/dropbox-app-secret" "$creds/acme-signature-key"
as_service /usr/bin/hookrelay --config "$conf" check
ok "check with the instance and test credentials"

echo "== hookrelay run (the service's command line, as hookrelay, without systemd)"
queue_filled=no
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# The status line of GET /readyz on the admin listener; fails while nothing listens.
readyz() {
  (
    exec 3<>/dev/tcp/127.0.0.1/9464
    printf 'GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n' >&3
    head -n 1 <&3
  ) 2>/dev/null
}
if port_busy 8080 || port_busy 9464; then
  echo "skipped: 127.0.0.1:8080 or :9464 is in use on this machine"
else
  # setpriv and env exec, so $! is the daemon's pid.
  setpriv --reuid=hookrelay --regid=hookrelay --init-groups -- env CREDENTIALS_DIRECTORY="$creds" \
    /usr/bin/hookrelay --config "$conf" run --log-format json 2>"$work/run.log" &
  daemon_pid=$!
  ready=no
  for _ in $(seq 1 300); do
    case "$(readyz || true)" in *" 200 "*)
      ready=yes
      break
      ;;
    esac
    kill -0 "$daemon_pid" 2>/dev/null || break
    sleep 0.1
  done
  [ "$ready" = yes ] || fail "the daemon did not become ready: $(cat "$work/run.log")"
  ok "ready (/readyz 200) as user hookrelay, queue in /var/lib/hookrelay"
  kill -TERM "$daemon_pid"
  set +e
  wait "$daemon_pid"
  code=$?
  set -e
  daemon_pid=
  expect_eq "exit code after SIGTERM" "$code" 0
  [ -n "$(find /var/lib/hookrelay -mindepth 1 -maxdepth 1 -user hookrelay)" ] ||
    fail "no store files owned by hookrelay in /var/lib/hookrelay"
  ok "store created in /var/lib/hookrelay by hookrelay"
  queue_filled=yes
fi

echo "== dpkg -i again (the upgrade path: postinst configure with the old version)"
dpkg -i "$deb"
expect_eq "dpkg state" "$(pkg_state)" installed
cmp -s "$conf" "$work/edited.toml" || fail "the edited conffile was not kept"
ok "edited config.toml kept"
expect_eq "config.toml after upgrade" "$(stat -c '%a %U:%G' "$conf")" "640 root:hookrelay"
cmp -s /etc/hookrelay/admin-token "$work/admin-token.installed" || fail "the upgrade changed admin-token"
ok "admin-token unchanged"

echo "== dpkg -r"
dpkg -r hookrelay
expect_eq "dpkg state" "$(pkg_state)" config-files
for gone in /usr/bin/hookrelay /usr/lib/systemd/system/hookrelay.service /usr/lib/sysusers.d/hookrelay.conf \
  /usr/share/doc/hookrelay; do
  [ ! -e "$gone" ] || fail "$gone is still there after remove"
done
ok "binary, unit, sysusers snippet and docs removed"
for kept in /etc/hookrelay/config.toml /etc/hookrelay/admin-token \
  /etc/systemd/system/hookrelay.service.d/credentials.conf /var/lib/hookrelay; do
  [ -e "$kept" ] || fail "$kept is gone after remove; it should stay until purge"
done
getent passwd hookrelay >/dev/null || fail "user hookrelay gone after remove"
ok "kept after remove: config.toml, admin-token, credentials.conf, /var/lib/hookrelay, user hookrelay"

echo "== dpkg -P"
dpkg -P hookrelay 2>&1 | tee "$work/purge.log"
if known_to_dpkg; then fail "dpkg still knows hookrelay ($(pkg_state))"; fi
ok "dpkg no longer lists hookrelay"
for gone in /etc/hookrelay /etc/systemd/system/hookrelay.service.d /var/lib/hookrelay \
  /etc/systemd/system/multi-user.target.wants/hookrelay.service; do
  if [ -e "$gone" ] || [ -L "$gone" ]; then fail "$gone is still there after purge"; fi
done
leftovers="$(find /var/lib/systemd/deb-systemd-helper-enabled -name '*hookrelay*' 2>/dev/null || true)"
[ -z "$leftovers" ] || fail "deb-systemd-helper state left: $leftovers"
if dpkg-statoverride --list /etc/hookrelay/config.toml >/dev/null; then fail "statoverride left"; fi
if [ "$queue_filled" = yes ]; then
  grep -q 'purge deletes the queue' "$work/purge.log" || fail "purge did not warn that it deletes the queue"
  ok "purge warned that it deletes the queue"
fi
ok "gone after purge: /etc/hookrelay, credentials.conf, /var/lib/hookrelay, enablement, statoverride"
getent passwd hookrelay >/dev/null && ok "user hookrelay stays after purge (Debian practice; this test deletes it)"

echo "Debian package test passed in $((SECONDS - started))s: $(basename "$deb"), $(stat -c %s "$deb") bytes"
