#!/usr/bin/env bash
# Builds the debian:bookworm base image that docker/Dockerfile starts from,
# when the local Docker has none: no image registry is reachable from CI,
# so the base is debootstrapped from the Debian mirror apt already uses
# (minbase variant, about 25 s) and imported with `docker import`.
# The image's apt sources are the host's Debian ones (the bookworm,
# bookworm-updates and bookworm-security suites it lists), so that the build
# stage installs the same package versions as the host.
#
# usage: docker/base-image.sh [--force]   (--force rebuilds a present image)
# Needs root (sudo when not root), debootstrap and a running dockerd.
set -euo pipefail

image=debian:bookworm
if [ "${1:-}" != "--force" ] && docker image inspect "$image" >/dev/null 2>&1; then
  echo "base-image: $image is present"
  exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"

# Every "URI SUITE" pair of the host's Debian sources, one-line format
# (sources.list) or deb822 (*.sources), bookworm suites only.
host_sources() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ }
                       if ($(i+1) ~ /^bookworm/) print $i, $(i+1) }' "$f"
  done
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    # deb822: paragraphs separated by blank lines; Types must hold deb.
    awk 'function flush() { if (deb) for (u in uris) for (s in suites) if (s ~ /^bookworm/) print u, s
                            deb = 0; delete uris; delete suites }
         /^[ \t]*$/ { flush(); next }
         /^Types:/  { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
         /^URIs:/   { for (i = 2; i <= NF; i++) uris[$i] = 1 }
         /^Suites:/ { for (i = 2; i <= NF; i++) suites[$i] = 1 }
         END { flush() }' "$f"
  done
}

pairs=$(host_sources | sort -u)
mirror=$(awk '$2 == "bookworm" { print $1; exit }' <<<"$pairs")
if [ -z "$mirror" ]; then
  echo "base-image: no 'bookworm' suite in /etc/apt/sources.list or sources.list.d; found:" >&2
  echo "${pairs:-  (none)}" >&2
  exit 1
fi

dir=$(mktemp -d /tmp/qlinear-bookworm.XXXXXX)
trap '$sudo rm -rf "$dir"' EXIT
echo "base-image: debootstrap --variant=minbase bookworm from $mirror"
$sudo debootstrap --variant=minbase bookworm "$dir" "$mirror" >"$dir.log" 2>&1 || {
  tail -20 "$dir.log" >&2
  echo "base-image: debootstrap failed (log above, whole in $dir.log)" >&2
  exit 1
}
rm -f "$dir.log"
# The same suites the host uses (security fixes included); apt caches are
# not kept in the image.
: | $sudo tee "$dir/etc/apt/sources.list" >/dev/null
while read -r uri suite; do
  echo "deb $uri $suite main" | $sudo tee -a "$dir/etc/apt/sources.list" >/dev/null
done <<<"$pairs"
# Slim, as Debian's own -slim images: no manuals, locales or docs (copyright
# files stay), and apt keeps no package caches in any image built on top.
$sudo tee "$dir/etc/dpkg/dpkg.cfg.d/qlinear-slim" >/dev/null <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
CFG
$sudo tee "$dir/etc/apt/apt.conf.d/qlinear-no-cache" >/dev/null <<'CFG'
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
APT::Install-Recommends "false";
CFG
$sudo find "$dir/usr/share/doc" -mindepth 1 ! -type d ! -name copyright -delete
$sudo find "$dir/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
$sudo rm -rf "$dir"/usr/share/man/* "$dir"/usr/share/info/* \
  "$dir"/var/cache/apt/*.bin "$dir"/var/cache/apt/archives/*.deb "$dir"/var/lib/apt/lists/*
$sudo tar -C "$dir" -c . | docker import -c 'CMD ["bash"]' - "$image" >/dev/null
echo "base-image: imported $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)"
