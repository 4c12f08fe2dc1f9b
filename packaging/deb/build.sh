#!/usr/bin/env bash
# Builds hookrelay_<version>_<arch>.deb with plain dpkg-deb (docs/packaging.md).
#
#   packaging/deb/build.sh [OUTDIR]      # default OUTDIR: $CARGO_TARGET_DIR/debian (target/debian)
#
# Runs `cargo build --release --locked`, strips the binary, lays out the package tree with
# explicit modes, computes Depends with dpkg-shlibdeps (dpkg-dev) or, without it, from the
# binary's GLIBC_ symbol versions, and builds with `dpkg-deb --root-owner-group` (every file
# root:root; the config's group is set by postinst). The version is packaging/deb/changelog's
# first entry, whose upstream part must equal Cargo.toml's version. Needs: cargo, dpkg-deb,
# strip and objdump (binutils); prints the path of the .deb on stdout, everything else on stderr.
set -euo pipefail
umask 022
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
cd "$repo"
target="${CARGO_TARGET_DIR:-$repo/target}"
outdir="${1:-$target/debian}"

die() {
  echo "build.sh: $*" >&2
  exit 1
}
for tool in cargo dpkg-deb strip objdump gzip; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (binutils provides strip and objdump)"
done

# Versions: Cargo.toml's [package] version, and the changelog's first entry.
cargo_version="$(sed -n '/^\[package\]/,/^\[/ s/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
changelog_head="$(head -n 1 "$here/changelog")"
deb_version="$(printf '%s\n' "$changelog_head" | sed -n 's/^hookrelay (\([^)]*\)).*/\1/p')"
[ -n "$cargo_version" ] || die "no version in Cargo.toml"
[ -n "$deb_version" ] || die "packaging/deb/changelog: first line is not 'hookrelay (VERSION) …'"
[ "${deb_version%-*}" = "$cargo_version" ] ||
  die "packaging/deb/changelog's version $deb_version does not match Cargo.toml's $cargo_version: add a changelog entry"
arch="$(dpkg --print-architecture)"
# Reproducible timestamps (SOURCE_DATE_EPOCH): the changelog entry's date.
changelog_date="$(sed -n 's/^ -- .*>  \(.*\)$/\1/p' "$here/changelog" | head -n 1)"
source_date_epoch="$(date -d "$changelog_date" +%s)"

echo "== cargo build --release --locked" >&2
cargo build --release --locked >&2
binary="$target/release/hookrelay"
[ -x "$binary" ] || die "$binary was not built"

work="$(mktemp -d "${TMPDIR:-/tmp}/hookrelay-deb.XXXXXX")"
trap 'rm -rf "$work"' EXIT
root="$work/root"
doc="$root/usr/share/doc/hookrelay"
mkdir -p "$root/DEBIAN"

echo "== package tree" >&2
install -d -m 0755 "$root/usr/bin" "$root/usr/lib/systemd/system" "$root/usr/lib/sysusers.d" \
  "$root/etc/hookrelay" "$root/etc/systemd/system/hookrelay.service.d" "$doc/examples"
# As dh_strip does; the release profile keeps line tables, which a package does not need.
strip --remove-section=.comment --remove-section=.note --strip-unneeded \
  -o "$root/usr/bin/hookrelay" "$binary"
chmod 0755 "$root/usr/bin/hookrelay"
install -m 0644 systemd/hookrelay.service "$root/usr/lib/systemd/system/hookrelay.service"
install -m 0644 systemd/hookrelay.sysusers "$root/usr/lib/sysusers.d/hookrelay.conf"
install -m 0640 "$here/config.toml" "$root/etc/hookrelay/config.toml"
install -m 0644 "$here/credentials.conf" "$root/etc/systemd/system/hookrelay.service.d/credentials.conf"

# Docs (Debian Policy §12.3: compressed with gzip -9n when over 4 KiB; copyright never).
install -m 0644 README.md "$doc/README.md"
install -d -m 0755 "$doc/docs"
for page in docs/*.md; do install -m 0644 "$page" "$doc/docs/$(basename "$page")"; done
install -m 0644 config.example.toml "$doc/examples/config.example.toml"
# Reverse-proxy examples (nginx, Caddy), when the tree has them (files only: the monitoring
# examples below are in subfolders).
for example in deploy/*; do
  if [ -f "$example" ]; then install -m 0644 "$example" "$doc/examples/$(basename "$example")"; fi
done
# Monitoring examples (docs/metrics.md), under their folder names and uncompressed, so that they
# load as they are: Prometheus alert rules and their promtool tests, a Grafana dashboard.
for example in deploy/prometheus/alerts.yml deploy/prometheus/alerts_test.yml deploy/grafana/hookrelay.json; do
  folder="$doc/examples/$(basename "$(dirname "$example")")"
  install -d -m 0755 "$folder"
  install -m 0644 "$example" "$folder/$(basename "$example")"
done
install -d -m 0755 "$root/usr/share/lintian/overrides"
install -m 0644 "$here/lintian-overrides" "$root/usr/share/lintian/overrides/hookrelay"
install -m 0644 "$here/changelog" "$doc/changelog.Debian"
crates="$(cargo tree --locked --edges normal --prefix none --format '{p} {l}' |
  sed -e 's/ (\*)$//' -e 's/ (proc-macro)//' | grep -v '^hookrelay ' | sort -u)"
[ -n "$crates" ] || die "cargo tree listed no crates"
while IFS= read -r line; do
  if [ "$line" = "@CRATES@" ]; then
    printf '%s\n' "$crates" | sed 's/^/ /'
  else
    printf '%s\n' "$line"
  fi
done <"$here/copyright.in" >"$work/copyright"
install -m 0644 "$work/copyright" "$doc/copyright"
# Man pages and shell completions, generated from the command line by the binary's hidden
# `generate` command (src/cli/generate.rs), and hookrelay.toml(5), written by hand; dated with
# the changelog entry.
man_date="$(date -u -d "@$source_date_epoch" +%Y-%m-%d)"
generated="$work/generated"
env -u HOOKRELAY_CONFIG "$binary" generate man --date "$man_date" "$generated/man" >/dev/null
env -u HOOKRELAY_CONFIG "$binary" generate completions "$generated/completions" >/dev/null
man1="$root/usr/share/man/man1"
man5="$root/usr/share/man/man5"
install -d -m 0755 "$man1" "$man5" "$root/usr/share/bash-completion/completions" \
  "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"
for page in "$generated"/man/hookrelay*.1; do install -m 0644 "$page" "$man1/$(basename "$page")"; done
sed "s/^\.TH \([^ ]*\) 5 \"\"/.TH \1 5 \"$man_date\"/" docs/man/hookrelay.toml.5 >"$man5/hookrelay.toml.5"
chmod 0644 "$man5/hookrelay.toml.5"
gzip -9n "$man1"/*.1 "$man5/hookrelay.toml.5"
install -m 0644 "$generated/completions/hookrelay.bash" "$root/usr/share/bash-completion/completions/hookrelay"
install -m 0644 "$generated/completions/_hookrelay" "$root/usr/share/zsh/vendor-completions/_hookrelay"
install -m 0644 "$generated/completions/hookrelay.fish" \
  "$root/usr/share/fish/vendor_completions.d/hookrelay.fish"
for f in README.md changelog.Debian examples/config.example.toml docs/*.md; do
  if [ "$f" = changelog.Debian ] || [ "$(stat -c %s "$doc/$f")" -gt 4096 ]; then
    gzip -9n "$doc/$f"
  fi
done

# Control area.
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
printf '%s\n' /etc/hookrelay/config.toml /etc/systemd/system/hookrelay.service.d/credentials.conf \
  >"$root/DEBIAN/conffiles"
chmod 0644 "$root/DEBIAN/conffiles"
# md5sums for `dpkg --verify`, as dh_md5sums writes it: every file but the conffiles (all of /etc
# here), whose sums dpkg keeps itself.
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | LC_ALL=C sort -z |
  xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums"

# Shared-library dependencies of the stripped binary.
if command -v dpkg-shlibdeps >/dev/null 2>&1; then
  mkdir -p "$work/shlibs/debian"
  printf 'Source: hookrelay\n\nPackage: hookrelay\nArchitecture: any\n' >"$work/shlibs/debian/control"
  shlibs="$(cd "$work/shlibs" && dpkg-shlibdeps -O "$root/usr/bin/hookrelay" 2>/dev/null |
    sed -n 's/^shlibs:Depends=//p')"
else
  # Without dpkg-dev: libc6 at the newest GLIBC_ symbol version the binary uses, and the
  # other libraries it links, unversioned, by package.
  glibc="$(objdump -T "$root/usr/bin/hookrelay" | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1)"
  shlibs="libc6 (>= $glibc)"
  for lib in $(objdump -p "$root/usr/bin/hookrelay" | awk '$1 == "NEEDED" { print $2 }'); do
    case "$lib" in
    libc.so.* | libm.so.* | libdl.so.* | libpthread.so.* | librt.so.* | ld-linux*) ;;
    libgcc_s.so.1) shlibs="$shlibs, libgcc-s1" ;;
    *) die "no dpkg-shlibdeps, and no package known for $lib: install dpkg-dev" ;;
    esac
  done
fi
[ -n "$shlibs" ] || die "could not compute the shared-library dependencies"
installed_size="$(du -s -k --apparent-size --exclude=DEBIAN "$root" | cut -f1)"
sed -e "s/@VERSION@/$deb_version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
  -e "s/@SHLIBS@/$shlibs/" "$here/control.in" >"$root/DEBIAN/control"
chmod 0644 "$root/DEBIAN/control"

# Set only now: exported before `cargo build`, it would make build scripts rerun.
export SOURCE_DATE_EPOCH="$source_date_epoch"
find "$root" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
mkdir -p "$outdir"
deb="$outdir/hookrelay_${deb_version}_${arch}.deb"
echo "== dpkg-deb --build --root-owner-group" >&2
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")"
