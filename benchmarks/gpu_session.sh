#!/usr/bin/env bash
# The GPU measurements of a session that is lent one, in as few device calls as possible.
#
#   bash benchmarks/gpu_session.sh PART [PART ...]
#
# Parts:
#   gpt2         GPT-2 small (configs/gpt2_small.py) through the harness, one lever at a time:
#                attention kernel (auto -> cuDNN vs einsums), scan_layers, loss_chunk, remat
#                policies, batch size. Cold compile cache: time to first step is a cold start.
#   xla          GPT-2 small with XLA's GPU gemm autotuning cut back (compile time vs step time);
#                run with LMJAX_XLA_DEFAULTS=0, as it was before Triton gemms were turned off.
#   batch        GPT-2 small with lmjax's default flags: batch 16-64, unrolled vs scanned.
#   shakespeare  nanoGPT's default shakespeare_char shape with `lmjax train`, to its validation
#                target (1.4697), a few schedules; wall time from launch to exit.
#   shakespeare_short  the same with schedules that end before it overfits (1000-1500 steps).
#   families     harness rows of the lstm (nn.RNN unroll 1 vs 8) and encoder families.
#
# Runs from the repository root on the device machine: installs the carried wheels (.whl: the
# packages its image lacks, e.g. ml-collections) into /tmp/site, runs lmjax from the checkout
# (`python -m lmjax`), reads tinyshakespeare
# from $LMJAX_DATA_DIR (default .gpudata, carried), and after each measurement copies what was
# written (RESULTS.md, the JSON records, logs and metrics as logs.tgz) under $OUT, so a call cut off
# at its limit still returns what finished. Each measurement is its own process, under `timeout`
# ($RUN_LIMIT s); one that fails is logged and the next one runs. XLA_FLAGS=... before a part
# applies to it (the records note the flags).
set -uo pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export LMJAX_DATA_DIR=${LMJAX_DATA_DIR:-$PWD/.gpudata}
export LMJAX_CACHE_DIR=/tmp/lmjax-cache
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
RUN_LIMIT=${RUN_LIMIT:-180}
LOGS=/tmp/gpu_logs
mkdir -p "$LOGS"

if [ ! -d /tmp/site/ml_collections ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
    || { echo "install failed"; exit 1; }
fi
export PYTHONPATH=/tmp/site:$PWD
LMJAX=("$PY" -m lmjax)
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,temperature.gpu --format=csv,noheader
$PY -m pip list 2>/dev/null | grep -E '^(jax|jaxlib|jax-cuda[0-9]*-plugin|flax|optax|orbax-checkpoint) '

bench() {  # bench LABEL ARGS...: one harness run, its log in $LOGS
  local label=$1; shift
  echo "== $label: $*"
  local t0=$SECONDS
  timeout "$RUN_LIMIT" "$PY" -m benchmarks.harness --nodata_iterator "$@" >"$LOGS/$label.log" 2>&1 \
    || echo "   FAILED (exit $?): $(grep -v '^\[bench\]' "$LOGS/$label.log" | tail -n 3)"
  grep -E '^\[bench\] (first step|step |attention)' "$LOGS/$label.log" | sed 's/^/   /'
  echo "   ($((SECONDS - t0)) s)"
  collect
}

collect() {
  cp benchmarks/RESULTS.md "$OUT/RESULTS.md"
  tar -czf "$OUT/logs.tgz" benchmarks/results -C /tmp gpu_logs 2>/dev/null
}

part_gpt2() {
  local G=(--config configs/gpt2_small.py --steps 20 --warmup 3 --sample_tokens 0)
  local S=--config.model.scan_layers=True
  bench gpt2-b16-auto-scan "${G[@]}" $S --sample_tokens 64
  bench gpt2-b16-einsum-scan "${G[@]}" $S --config.model.attention_impl=einsum
  bench gpt2-b16-auto-scan-chunk "${G[@]}" $S --config.train.loss_chunk=128
  bench gpt2-b16-auto-unrolled-chunk "${G[@]}" --config.train.loss_chunk=128
  bench gpt2-b32-auto-scan-chunk "${G[@]/gpt2_small.py/gpt2_small.py:b32}" $S --config.train.loss_chunk=128
  bench gpt2-b32-auto-scan-chunk-remat-dots "${G[@]/gpt2_small.py/gpt2_small.py:b32}" $S \
    --config.train.loss_chunk=128 --config.model.remat=True --config.model.remat_policy=dots
}

part_batch() {  # with lmjax's default XLA flags (Triton gemms off): batch size, unrolled vs scanned
  local G=(--config configs/gpt2_small.py --steps 20 --warmup 3 --sample_tokens 0)
  local S=--config.model.scan_layers=True
  bench gpt2-b16-unrolled "${G[@]}"
  bench gpt2-b32-unrolled "${G[@]/gpt2_small.py/gpt2_small.py:b32}"
  bench gpt2-b32-scan "${G[@]/gpt2_small.py/gpt2_small.py:b32}" $S
  bench gpt2-b64-scan-chunk "${G[@]/gpt2_small.py/gpt2_small.py:b64}" $S --config.train.loss_chunk=128
  bench gpt2-b64-scan-chunk-remat-dotsnobatch "${G[@]/gpt2_small.py/gpt2_small.py:b64}" $S \
    --config.train.loss_chunk=128 --config.model.remat=True --config.model.remat_policy=dots_no_batch
}

part_xla() {  # XLA's GPU autotuning against compile time, GPT-2 small b16 scanned
  local G=(--config configs/gpt2_small.py --steps 20 --warmup 3 --sample_tokens 0 --config.model.scan_layers=True)
  XLA_FLAGS=--xla_gpu_enable_triton_gemm=false bench gpt2-b16-auto-scan-notritongemm "${G[@]}"
  XLA_FLAGS=--xla_gpu_autotune_level=0 bench gpt2-b16-auto-scan-autotune0 "${G[@]}"
}

train_run() {  # train_run LABEL OVERRIDES...: one `lmjax train`, wall clock from launch to exit
  local label=$1; shift
  echo "== $label: $*"
  local t0; t0=$(date +%s%N)
  timeout "$RUN_LIMIT" "${LMJAX[@]}" train --workdir "/tmp/runs/$label" --progress=false "$@" \
    >"$LOGS/$label.out" 2>"$LOGS/$label.log" || echo "   FAILED (exit $?): $(tail -n 3 "$LOGS/$label.log")"
  echo "   wall $(( ($(date +%s%N) - t0) / 1000000 )) ms from launch to exit"
  cp "/tmp/runs/$label/metrics.jsonl" "$LOGS/$label.metrics.jsonl" 2>/dev/null
  grep -hE 'val loss|first step' "$LOGS/$label.out" "$LOGS/$label.log" | cut -c1-120 | sed 's/^/   /'
  tail -n 1 "$LOGS/$label.out" | cut -c1-400 | sed 's/^/   /'
  collect
}

part_shakespeare() {
  # nanoGPT's config/train_shakespeare_char.py: 6 x 6 x 384, block 256, batch 64, dropout 0.2,
  # lr 1e-3 decayed to 1e-4, warmup 100, beta2 0.99, weight decay 0.1.
  local N=(--config configs/shakespeare_char.py --config.model.num_layers=6 --config.model.num_heads=6
           --config.model.width=384 --config.train.seq_len=256 --config.train.batch_size=64
           --config.model.dropout=0.2 --config.model.dtype=bfloat16 --config.train.eval_batches=0
           --config.train.log_every=100 --config.train.warmup_steps=100 --config.model.scan_layers=True)
  train_run sc-rope-2000 "${N[@]}" --config.train.steps=2000 --config.train.eval_every=250 \
    --config.train.checkpoint_every=2000
  train_run sc-learned-layernorm-5000 "${N[@]}" --config.model.positions=learned \
    --config.model.norm=layernorm --config.train.steps=5000 --config.train.eval_every=250 \
    --config.train.checkpoint_every=5000
}

part_shakespeare_short() {  # the same with the schedule ending where the runs above overfit
  local N=(--config configs/shakespeare_char.py --config.model.num_layers=6 --config.model.num_heads=6
           --config.model.width=384 --config.train.seq_len=256 --config.train.batch_size=64
           --config.model.dropout=0.2 --config.model.dtype=bfloat16 --config.train.eval_batches=0
           --config.train.log_every=100 --config.train.warmup_steps=100 --config.model.scan_layers=True
           --config.train.eval_every=100)
  train_run sc-rope-1200 "${N[@]}" --config.train.steps=1200 --config.train.checkpoint_every=1200
  train_run sc-rope-1500 "${N[@]}" --config.train.steps=1500 --config.train.checkpoint_every=1500
  train_run sc-rope-1200-wd0.5 "${N[@]}" --config.train.steps=1200 --config.train.checkpoint_every=1200 \
    --config.train.weight_decay=0.5
  train_run sc-rope-1200-drop0.3 "${N[@]}" --config.train.steps=1200 --config.train.checkpoint_every=1200 \
    --config.model.dropout=0.3
  train_run sc-rope-1000 "${N[@]}" --config.train.steps=1000 --config.train.checkpoint_every=1000
}

part_families() {  # the LSTM at two unroll settings and the encoder, GPT-2-small-like sizes
  local D=(--config configs/default.py --steps 20 --warmup 3 --sample_tokens 64 --config.train.batch_size=64
           --config.train.seq_len=512 --config.model.dtype=bfloat16)
  bench lstm-unroll1 "${D[@]}" --config.model.family=lstm --config.model.num_layers=2 --config.model.width=1024
  bench lstm-unroll8 "${D[@]}" --config.model.family=lstm --config.model.num_layers=2 --config.model.width=1024 \
    --config.model.unroll=8
  bench encoder "${D[@]}" --config.model.family=encoder --config.model.num_layers=12 --config.model.num_heads=12 \
    --config.model.width=768 --config.model.scan_layers=True
}

for part in "$@"; do
  "part_$part"
done
