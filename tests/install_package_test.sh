#!/usr/bin/env bash
# What a user of the installed C API gets (ctest install_package): installs
# component "strata" of BUILD_DIR into a fresh prefix, checks libstrata.so
# (SONAME, only strata_* exported, the header includes only C standard
# headers), builds examples/find_package against it with find_package(strata)
# and with pkg-config and examples/c_mlp with find_package, and runs them.
# usage: install_package_test.sh SOURCE_DIR BUILD_DIR WORK_DIR C_COMPILER GENERATOR
set -euo pipefail
src=$1 build=$2 work=$3 cc=$4 generator=$5
rm -rf "$work"
mkdir -p "$work"
prefix=$work/prefix

cmake --install "$build" --prefix "$prefix" --component strata >"$work/install.log"

lib=$(find "$prefix" -name 'libstrata.so.*.*.*' | head -n1)
[[ -n $lib ]] || { echo "no libstrata.so.X.Y.Z under $prefix" >&2; exit 1; }
libdir=$(dirname "$lib")
[[ -L $libdir/libstrata.so ]] || { echo "no libstrata.so link in $libdir" >&2; exit 1; }
soname=$(objdump -p "$lib" | awk '$1 == "SONAME" {print $2}')
[[ $soname =~ ^libstrata\.so\.[0-9]+$ ]] || { echo "SONAME is '$soname'" >&2; exit 1; }
leaked=$(nm -D --defined-only "$lib" | awk '{print $NF}' | grep -v '^strata_' || true)
if [[ -n $leaked ]]; then
  echo "libstrata.so exports symbols other than strata_*:" >&2
  echo "$leaked" | head -n 20 >&2
  exit 1
fi
nexported=$(nm -D --defined-only "$lib" | wc -l)
echo "libstrata.so: SONAME $soname, $nexported exported symbols, all strata_*"
for h in "$prefix"/include/strata/*.h; do
  bad=$(grep -E '^\s*#\s*include' "$h" |
        grep -vE '<(stdbool|stddef|stdint)\.h>|"strata/[a-z_]+\.h"' || true)
  [[ -z $bad ]] || { echo "$h includes more than C standard headers: $bad" >&2; exit 1; }
done
for f in strataConfig.cmake strataConfigVersion.cmake strataTargets.cmake; do
  [[ -f $libdir/cmake/strata/$f ]] || { echo "missing $libdir/cmake/strata/$f" >&2; exit 1; }
done

# CMake: find_package(strata) -> strata::strata.
cmake -S "$src/examples/find_package" -B "$work/build" -G "$generator" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Release \
  >"$work/configure.log"
cmake --build "$work/build" >"$work/build.log"
"$work/build/strata_version_check"

# examples/c_mlp builds on its own against the package too, and trains.
cmake -S "$src/examples/c_mlp" -B "$work/build-c_mlp" -G "$generator" \
  -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" -DCMAKE_BUILD_TYPE=Release \
  >"$work/configure-c_mlp.log"
cmake --build "$work/build-c_mlp" >"$work/build-c_mlp.log"
"$work/build-c_mlp/c_mlp" 300 | tail -n 1

# pkg-config, one compiler line.
export PKG_CONFIG_PATH=$libdir/pkgconfig
flags=$(pkg-config --cflags --libs strata)
echo "pkg-config --cflags --libs strata: $flags"
[[ $(pkg-config --modversion strata) == "$(sed -n 's/^#define STRATA_VERSION_STRING "\(.*\)"/\1/p' \
      "$prefix/include/strata/version.h")" ]]
# shellcheck disable=SC2086
"$cc" -std=c11 -Wall -Wextra -pedantic -Werror "$src/examples/find_package/main.c" $flags \
  -o "$work/strata_version_check_pc"
LD_LIBRARY_PATH=$libdir "$work/strata_version_check_pc"
echo "install_package: OK"
