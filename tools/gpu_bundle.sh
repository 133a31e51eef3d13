#!/usr/bin/env bash
# Carry megatron-patch to a GPU machine without network and run the GPU check there (docs/gpu.md).
#
# On a machine with network (any OS/Python; nothing is installed here):
#   bash tools/gpu_bundle.sh wheels          # the wheels the GPU machine lacks -> build/gpu_wheels/
#   bash tools/gpu_bundle.sh pack [OUT]      # those wheels + the project source -> one tarball
#                                            # (default build/megatron-patch-gpu.tar.gz)
# On the GPU machine (no network; torch with CUDA already installed, Python 3.12):
#   tar xzf megatron-patch-gpu.tar.gz && cd megatron-patch
#   bash tools/gpu_bundle.sh install         # venv, offline pip install, then tools/gpu_check.py
#   bash tools/gpu_bundle.sh install --dry-run   # print the commands only
#   bash tools/gpu_bundle.sh install --no-check  # install only
#   bash tools/gpu_bundle.sh install --deps-only # only the wheels, not the project
#
# When the GPU machine receives a copy of this working tree instead of the tarball, only the
# wheels have to travel: run `wheels` here, send build/gpu_wheels/ along (it is git-ignored, so
# name it explicitly), and run `install` in the copy. Ignored build outputs (the C++ extension,
# .venv) never travel; `install` builds the extension for the GPU machine's Python.
#
# Never carried: torch (the GPU machine's own CUDA build is used) and Transformer Engine /
# flash-attn / apex (source builds; the model then takes the "sdpa" layer spec).
set -euo pipefail

# Knobs (environment variables).
PYTHON_VERSION="${PYTHON_VERSION:-3.12}"        # the GPU machine's Python (wheels are cp312)
PLATFORMS="${PLATFORMS:-manylinux_2_28_x86_64 manylinux2014_x86_64}"
PYTHON="${PYTHON:-python3}"                      # interpreter used on each side
VENV="${VENV:-.venv-gpu}"                        # install target on the GPU machine; "none" = $PYTHON's own env
WHEELS="${WHEELS:-build/gpu_wheels}"             # relative to the project root
CHECK_OUTPUT="${CHECK_OUTPUT:-gpu_check.json}"   # the GPU check's JSON report

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"

# What the GPU machine may lack, pinned as this project tests them where requirements.txt pins
# them. megatron-core's own requirements are torch (present), numpy and packaging; pybind11,
# setuptools and wheel build the C++ extension offline.
PACKAGES=(megatron-core==0.16.1 numpy==2.4.6 packaging psutil==7.2.2 PyYAML==6.0.4
          sentencepiece==0.2.3 tqdm==4.70.1 pybind11==3.1.0 setuptools wheel)

usage() { sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
run() { echo "+ $*"; if [ "${DRY_RUN:-0}" = 0 ]; then "$@"; fi; }

# Names without versions: pip keeps what the GPU machine already has (its numpy matches its
# torch) and installs only what is missing, always from the wheel directory.
write_requirements() {
  local dir="$1"
  {
    echo "# offline install: pip install --no-index --find-links $WHEELS -r $WHEELS/requirements.txt"
    echo "megatron-core==0.16.1"
    printf '%s\n' "${PACKAGES[@]}" | sed 's/==.*//' | grep -v '^megatron-core$'
  } > "$dir/requirements.txt"
}

cmd_wheels() {
  local dir="${1:-$WHEELS}"
  mkdir -p "$dir"
  local plat=()
  for p in $PLATFORMS; do plat+=(--platform "$p"); done
  # --no-deps: the dependency closure is PACKAGES (resolving it would pull torch, several GB).
  run "$PYTHON" -m pip download --dest "$dir" --only-binary=:all: --no-deps \
    --python-version "$PYTHON_VERSION" --implementation cp "${plat[@]}" "${PACKAGES[@]}"
  write_requirements "$dir"
  echo "wheels for Python $PYTHON_VERSION in $dir"
}

# The project source: tracked and untracked-but-not-ignored files that exist (no .venv, no
# build outputs, no compiled extension).
source_files() {
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done
}

cmd_pack() {
  local out="build/megatron-patch-gpu.tar.gz" from=""
  while [ $# -gt 0 ]; do
    case "$1" in
      --wheels-from) from="$(cd "$2" && pwd)"; shift 2 ;;
      -h|--help) usage ;;
      *) out="$1"; shift ;;
    esac
  done
  local stage
  stage="$(mktemp -d)"
  trap 'rm -rf "$stage"' RETURN
  mkdir -p "$stage/megatron-patch"
  source_files | tar -C "$ROOT" --null -T - -cf - | tar -C "$stage/megatron-patch" -xf -
  local dest="$stage/megatron-patch/$WHEELS"
  mkdir -p "$dest"
  if [ -n "$from" ]; then  # wheels downloaded earlier (or elsewhere): no network needed here
    cp "$from"/*.whl "$dest"/
    if [ -f "$from/requirements.txt" ]; then cp "$from/requirements.txt" "$dest"/; else write_requirements "$dest"; fi
  else
    cmd_wheels "$dest"
  fi
  mkdir -p "$(dirname "$out")"
  tar -C "$stage" -czf "$out.tmp" megatron-patch
  mv "$out.tmp" "$out"
  echo "bundle: $out ($(du -h "$out" | cut -f1)); on the GPU machine:"
  echo "  tar xzf $(basename "$out") && cd megatron-patch && bash tools/gpu_bundle.sh install"
}

cmd_install() {
  local check=1 project=1
  DRY_RUN=0
  while [ $# -gt 0 ]; do
    case "$1" in
      --dry-run) DRY_RUN=1; shift ;;
      --no-check) check=0; shift ;;
      --deps-only) project=0; check=0; shift ;;
      -h|--help) usage ;;
      *) echo "unknown option $1" >&2; usage 2 ;;
    esac
  done
  if [ ! -f "$WHEELS/requirements.txt" ]; then
    echo "no $WHEELS/requirements.txt: run 'bash tools/gpu_bundle.sh wheels' on a machine with" \
         "network and bring $WHEELS/ here (or unpack a bundle made by 'pack')" >&2
    exit 1
  fi
  local py="$PYTHON"
  if [ "$VENV" != none ]; then
    # --system-site-packages: the venv sees the machine's CUDA torch; PEP 668 systems refuse
    # pip into the system interpreter.
    [ -x "$VENV/bin/python" ] || run "$PYTHON" -m venv --system-site-packages "$VENV"
    py="$VENV/bin/python"
  fi
  run "$py" -m pip install --no-index --find-links "$WHEELS" -r "$WHEELS/requirements.txt"
  if [ "$project" = 0 ]; then
    return
  fi
  # --no-build-isolation: the build uses the setuptools/pybind11 just installed (no index);
  # it compiles the C++ sample-index extension for this Python.
  run "$py" -m pip install --no-index --no-build-isolation --no-deps -e .
  if [ "$check" = 1 ]; then
    run "$py" tools/gpu_check.py --output "$CHECK_OUTPUT"
  fi
}

case "${1:-}" in
  wheels) shift; cmd_wheels "$@" ;;
  pack) shift; cmd_pack "$@" ;;
  install) shift; cmd_install "$@" ;;
  -h|--help|help|"") usage ;;
  *) echo "unknown command $1" >&2; usage 2 ;;
esac
