#!/usr/bin/env bash
# Installs the Debian packages strata builds against, only those missing.
# Idempotent and quick (one dpkg-query) when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config ccache git clang-format
  liburing-dev libhwloc-dev libtbb-dev libxsimd-dev libabsl-dev
  libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libcli11-dev
  libspdlog-dev libfmt-dev libxxhash-dev libopenblas-dev libnuma-dev libicu-dev libgloo-dev
  fio fortunes python3 python3-venv python3-dev
)

missing=()
for p in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

echo "strata: installing missing packages: ${missing[*]}" >&2
sudo=()
if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "strata: need root or sudo to apt-get install ${missing[*]}" >&2; exit 1; }
  sudo=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
