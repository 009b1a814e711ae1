#!/usr/bin/env bash
# Installs the Debian packages sluice needs to build and test, and only those that are
# missing. Safe to run again and again: when everything is there it touches nothing.
set -euo pipefail

# One package a line; add new ones here.
packages=(
  g++
  cmake
  ninja-build
  make
  pkg-config
  libgtest-dev
  libgmock-dev
  libbenchmark-dev
  liburcu-dev
  libxxhash-dev
  libcli11-dev
  nlohmann-json3-dev
  libspdlog-dev
  libyaml-cpp-dev
  clang-format
  ccache
  redis-server  # also runs the Sentinel tests' sentinels: redis-server CONF --sentinel
  redis-tools
  libhiredis-dev
  libboost-dev
  libssl-dev
  openssl
  python3-redis
  python3
  python3-dev
  python3-pytest
  python3-pip
  python3-setuptools
  python3-fastapi
  python3-uvicorn
  python3-httpx
  pybind11-dev
  libgrpc++-dev
  libprotobuf-dev
  protobuf-compiler
  protobuf-compiler-grpc
  python3-grpcio
  python3-protobuf
  nginx-light
  wrk
  curl
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  if [[ "$status" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "install-deps: nothing missing (${#packages[@]} packages already installed)"
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  as_root=(env)
elif command -v sudo >/dev/null 2>&1; then
  if ! sudo -n true 2>/dev/null; then
    echo "install-deps: error: missing packages: ${missing[*]}; sudo needs a password" \
      "(run: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  as_root=(sudo -n env)
else
  echo "install-deps: error: missing packages: ${missing[*]}; not root and no sudo to install them" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}" >&2
if ! "${as_root[@]}" DEBIAN_FRONTEND=noninteractive apt-get update -q >&2; then
  echo "install-deps: error: apt-get update failed; cannot install: ${missing[*]}" >&2
  exit 1
fi
if ! "${as_root[@]}" DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
  echo "install-deps: error: apt-get install failed for: ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installed ${missing[*]}"
