#!/usr/bin/env bash
# Installs the Debian packages Raftport builds, tests and runs with.
# Idempotent: prints nothing and touches nothing when everything is present.
# `install-deps.sh fuzz` adds what `make fuzz` needs (clang and its libFuzzer runtime);
# building and testing do not need them.
set -euo pipefail

pkgs=(
  build-essential pkg-config
  libraft-dev libuv1-dev libssl-dev liblmdb-dev libmsgpack-dev
  libcriterion-dev libyaml-dev libargon2-dev libssh-dev libzstd-dev
  libnghttp2-dev libcurl4-openssl-dev libqrencode-dev libhttp-parser-dev libjansson-dev
  openssl iproute2 procps nftables faketime openssh-client openssh-server openssh-sftp-server
  oathtool asciinema jq curl
)
if [ "${1:-}" = fuzz ]; then
  pkgs+=(clang libclang-rt-14-dev llvm) # llvm: llvm-symbolizer, for readable crash stacks
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
