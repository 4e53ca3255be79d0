#!/usr/bin/env bash
# The GPU check, prepared to run in under 8 minutes on a machine with one CUDA GPU:
#   1. step cost (BILD step / plain step, and the design's floor) of ffanet and msbdn at the
#      paper preset, 240x240 crops, n = 10, m = 4 (benchmarks/step_cost.py);
#   2. a 4-trial search sharing the GPU, --gpus-per-trial 0.25, all 4 at once;
#   3. benchmarks/data_scale.py on the GPU (N = 200 and 2000; loader workers pin memory, copies
#      are non-blocking);
# then prints one summary. Each stage has its own time limit, and a stage that fails or runs
# out of time is reported as such in the summary while the others still run.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]        (default OUT_DIR: $TMPDIR/bild-gpu-check)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-${TMPDIR:-/tmp}/bild-gpu-check}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export BILD_CACHE="$OUT/cache"
declare -A STATUS

stage() {  # stage NAME SECONDS COMMAND...: run it with a time limit, output to $OUT/NAME.out
  local name="$1" limit="$2"
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.out" 2>"$OUT/$name.err"
  local rc=$?
  STATUS[$name]="rc=$rc in $((SECONDS - start)) s"
  [ $rc -eq 124 ] && STATUS[$name]="TIMED OUT after $limit s"
  echo "$name: ${STATUS[$name]}" >&2
}

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "no CUDA device visible to torch; nothing to check" >&2
  exit 2
fi
python -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__)" >"$OUT/device.out"

STEP=(--preset paper --crop 240 --n 10 --m 4 --device cuda --scaling-ns "" --repeats 10 --warmup 3 --json)
stage step_ffanet 80 python benchmarks/step_cost.py --backbone ffanet "${STEP[@]}"
stage step_msbdn 80 python benchmarks/step_cost.py --backbone msbdn "${STEP[@]}"
stage search 140 python -m pipeline.search --backbone aodnet --preset small --trials 4 --concurrency 4 \
  --epochs 2 --gpus-per-trial 0.25 --cpus-per-trial 2 --storage "$OUT/runs" --name gpu-share \
  device=cuda train.steps_per_epoch=20
stage data_scale 140 python benchmarks/data_scale.py --sizes 200,2000 --device cuda --json --work "$OUT/data-scale"

OUT="$OUT" STATUS="$(for k in "${!STATUS[@]}"; do echo "$k=${STATUS[$k]}"; done)" python - <<'EOF'
import json
import os
from pathlib import Path

out = Path(os.environ["OUT"])
status = dict(line.split("=", 1) for line in os.environ["STATUS"].splitlines())
print(f"== GPU check: {(out / 'device.out').read_text().strip()} ==")


def rows(name):
    try:
        return json.loads((out / f"{name}.out").read_text())
    except (OSError, ValueError):
        return None


for name in ("step_ffanet", "step_msbdn"):
    print(f"[{name}] {status[name]}")
    for r in rows(name) or []:
        print(f"  {r['backbone']}/{r['preset']} crop {r['crop']} {r['estimator']}: plain {r['plain_ms']} ms, "
              f"bild {r['bild_ms']} ms, ratio {r['ratio']} (floor {r['floor_ratio']})")
print(f"[search] {status['search']}")
try:
    import polars as pl

    epochs = pl.read_parquet(str(out / "runs" / "gpu-share" / "results" / "epochs" / "**" / "*.parquet"))
    print(f"  {epochs['trial_id'].n_unique()} trials, {epochs.height} epoch rows on {set(epochs['device'])}; "
          f"best select PSNR {epochs['select_psnr'].max():.2f} dB; mean epoch {epochs['epoch_seconds'].mean():.1f} s, "
          f"data wait {epochs['ms_data'].mean():.1f} ms/step")
except Exception as err:  # the search failed: its log says why
    print(f"  no results ({type(err).__name__}); see {out / 'search.err'}")
print(f"[data_scale] {status['data_scale']}")
for r in (rows("data_scale") or {}).get("rows", []):
    epochs = "; ".join(f"{k}: data {v['data_s']} s / steps {v['steps_s']} s / eval {v['eval_s']} s "
                       f"(wait {v['wait_pct']}%)" for k, v in r.items() if k.startswith("epoch"))
    print(f"  N={r['pairs']}: first step {r['first_step_s']} s, peak RSS {r['maxrss_mb']} MB; {epochs}")
EOF
