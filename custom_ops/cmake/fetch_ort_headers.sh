#!/usr/bin/env bash
# Downloads Debian trixie's libonnxruntime-dev and unpacks it under DEST/root,
# using apt with private state (sources, lists, cache) inside DEST: nothing is
# installed, no root needed, the system's apt state is not touched.
# Usage: fetch_ort_headers.sh DEST
set -euo pipefail

dest=${1:?usage: fetch_ort_headers.sh DEST}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
sources="$dest/apt/sources.list.d"
lists="$dest/apt/lists"
cache="$dest/apt/cache"
debs="$dest/debs"
root="$dest/root"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

rm -rf "$debs" "$root"
mkdir -p "$sources" "$lists/partial" "$cache/archives/partial" "$debs"

if [ ! -r "$keyring" ]; then
  echo "fetch_ort_headers: $keyring not found (package debian-archive-keyring)" >&2
  exit 1
fi

cat >"$sources/debian-trixie.sources" <<SOURCES
Types: deb
URIs: http://deb.debian.org/debian
Suites: trixie
Components: main
Signed-By: $keyring
SOURCES

apt_opts=(
  -o "Dir::Etc::SourceList=/dev/null"
  -o "Dir::Etc::SourceParts=$sources"
  -o "Dir::State::Lists=$lists"
  -o "Dir::Cache=$cache"
  -o "Debug::NoLocking=1"
  -o "APT::Sandbox::User=$(id -un)"
  -o "Acquire::Languages=none"
  -o "APT::Get::List-Cleanup=0"
)

apt-get -q "${apt_opts[@]}" update
(cd "$debs" && apt-get -q "${apt_opts[@]}" download libonnxruntime-dev)

deb=$(ls "$debs"/libonnxruntime-dev_*.deb 2>/dev/null | head -n 1)
if [ -z "$deb" ]; then
  echo "fetch_ort_headers: apt-get download produced no libonnxruntime-dev .deb" >&2
  exit 1
fi
dpkg -x "$deb" "$root"

inc="$root/usr/include/onnxruntime"
if [ ! -f "$inc/onnxruntime_cxx_api.h" ]; then
  echo "fetch_ort_headers: $deb has no usr/include/onnxruntime/onnxruntime_cxx_api.h" >&2
  exit 1
fi
# only root/ is reused on re-configure; drop apt's ~20 MB of package lists
rm -rf "$dest/apt"
echo "fetch_ort_headers: unpacked $(basename "$deb") -> $inc"
