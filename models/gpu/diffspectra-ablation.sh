#!/usr/bin/env bash
# One GPU lease for DiffSpectra's pretraining ablation (models/README.md, "DiffSpectra on a GPU"): two arms of
# the cpu config train at once on the same chip from the same packs:
#   $OUT              SpecFormer pretrained (MolSpectra) for PRE minutes, then the denoiser for DEN minutes
#                     (lineage/, report.json; with BENCH=1 also candidates.pt)
#   $OUT/nopretrain   the denoiser alone for DEN minutes, SpecFormer learnt only jointly (lineage/ and
#                     report.json; with BENCH=1 report.json and candidates.pt, its lineage stays behind)
# At most eight files come back from a lease: this writes eight. BENCH=1 samples the benchmark's candidates (the queries of
# $PACKS/test.pt, SAMPLES each, STEPS ancestral steps, all three settings) after training: measured on an
# H100, 3,000 candidates at 1,000 steps took more than 290 s per setting, so keep it for a lease of its own or
# a small query pack. Run from the repository root with the packs carried:
#   make diffspectra-packs; PRE=1.5 DEN=4 bash models/gpu/diffspectra-ablation.sh
set -euo pipefail
PRE=${PRE:-1.5} DEN=${DEN:-4} SAMPLES=${SAMPLES:-10} STEPS=${STEPS:-} BENCH=${BENCH:-0}
DEADLINE=${DEADLINE:-8.5} RESERVE=${RESERVE:-1} TOKENS=${TOKENS:-16384} PACKS=${PACKS:-.packs/diffspectra}
OUT=${OUT:?set OUT to the output folder}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
run() {
  local bench=()
  if [ "$BENCH" = 1 ]; then
    bench=(--benchmark "$PACKS/test.pt" --benchmark-samples "$SAMPLES" ${STEPS:+--benchmark-steps "$STEPS"})
  fi
  python3 -m chemgen.training.standalone --model diffspectra --config cpu --packs "$PACKS" "${bench[@]}" \
    --tokens-per-batch "$TOKENS" --deadline-minutes "$DEADLINE" --reserve-minutes "$RESERVE" \
    --data "$(cat "$PACKS/data.txt")" "$@"
}
mkdir -p "$OUT/nopretrain"
arm_b="$OUT/nopretrain"
[ "$BENCH" = 1 ] && arm_b=$(mktemp -d)
run --out "$arm_b" --minutes "specformer=0,denoiser=$DEN" > /tmp/nopretrain.log 2>&1 &
b=$!
run --out "$OUT" --minutes "specformer=$PRE,denoiser=$DEN" --lr "specformer=4e-4,denoiser=2e-4"
wait "$b" || { echo "arm without pretraining failed:"; tail -n 40 /tmp/nopretrain.log; exit 1; }
[ "$BENCH" = 1 ] && cp "$arm_b/report.json" "$arm_b/candidates.pt" "$OUT/nopretrain/"
echo "== arm without pretraining"; grep -v "Explicit valence" /tmp/nopretrain.log | tail -n 12
