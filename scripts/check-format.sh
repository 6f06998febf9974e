#!/usr/bin/env bash
# Fails when a tracked C++/CUDA file is not clang-format clean (.clang-format at the root).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v clang-format >/dev/null || { echo "clang-format not installed; skipping" >&2; exit 77; }
mapfile -t files < <(git ls-files '*.c' '*.cc' '*.h' '*.cu' '*.cuh' 2>/dev/null)
[[ ${#files[@]} -gt 0 ]] || exit 0
clang-format --dry-run -Werror "${files[@]}"
