#!/usr/bin/env bash
# One short call on a lent GPU (the device tool): the recipe speed table on CUDA (bf16), the same
# table on that machine's CPU for a ratio, and a loop run on CUDA that records device and dtype.
# Needs the wheels the GPU image lacks in .whl/ (msgspec, duckdb, jsonpatch, jsonpointer, trl,
# datasets, dill, multiprocess) and SmolLM2's config + tokenizer in .whl/smollm2-arch (its weights,
# 98 MB as a GGUF, are over the transfer limit: the model is built with random weights, the same
# shapes and so the same speed).
set -uo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, transformers, peft, trl, pyarrow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'peft', peft.__version__, 'trl', trl.__version__, 'pyarrow', pyarrow.__version__)"
python3 bench/bench_recipes.py --device cuda --models tiny,arch:.whl/smollm2-arch 2>&1 | grep -v -i warn | tee "$OUT/speed_cuda.txt"
python3 bench/bench_recipes.py --device cpu --models arch:.whl/smollm2-arch 2>&1 | grep -v -i warn | tee "$OUT/speed_cpu_same_machine.txt"
python3 -m sia_engine.cli.main run --task arith --model tiny --device cuda --iterations 2 --levers weights --lora-steps 4 --store /tmp/g --json > "$OUT/loop_cuda.json" 2>&1; echo "loop rc=$?"
python3 -m sia_engine.cli.main sql --store /tmp/g "SELECT payload->>'recipe' AS recipe, payload->>'device' AS device, payload->>'dtype' AS dtype, payload->'metrics' AS metrics FROM events WHERE kind='adapter_checkpointed'"
python3 -m sia_engine.cli.main verify --store /tmp/g | tail -2
