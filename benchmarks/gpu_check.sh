#!/usr/bin/env bash
# The GPU check, prepared to run in under 8 minutes on a machine with one CUDA GPU:
#   1. the default search command, with no GPU flag: its trials must land on CUDA, in bf16;
#   2. fp32 against bf16: step time and the GPU memory a step takes, plain and BILD, for ffanet
#      and msbdn at the paper preset, 240x240 crops, n = 10, m = 4 (benchmarks/step_cost.py),
#      and bf16 in NCHW against the default NHWC (the CUDA value of backbone/*.yaml channels_last);
#   3. 1, 2 and 4 trials sharing the GPU (--trials-per-gpu K): epochs per hour in total and the
#      peak GPU memory of one trial (ffanet small, crop 128);
#   4. pipeline.evaluate on the GPU: images per second on the model column (550x413 pairs,
#      benchmarks/data_scale.py --evaluate);
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
export RAY_AUTH_MODE=disabled  # the searches' dashboards stay on 127.0.0.1; no token to hand around here
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
python -c "import torch; print(torch.cuda.get_device_name(0), torch.__version__, 'CUDA', torch.version.cuda)" >"$OUT/device.out"

stage default_search 60 python -m pipeline.search --backbone aodnet --preset small --trials 2 --epochs 1 \
  --storage "$OUT/runs" --name gpu-default train.steps_per_epoch=20

STEP=(--preset paper --crop 240 --n 10 --m 4 --device cuda --estimators fd --scaling-ns "" --repeats 5 --warmup 2 --json)
for backbone in ffanet msbdn; do
  for precision in fp32 bf16; do
    stage "step_${backbone}_${precision}" 30 python benchmarks/step_cost.py --backbone "$backbone" --precision "$precision" "${STEP[@]}"
  done
  stage "step_${backbone}_bf16-nchw" 30 python benchmarks/step_cost.py --backbone "$backbone" --precision bf16 \
    --no-channels-last "${STEP[@]}"
done

CPUS=$(( $(nproc) / 4 > 0 ? $(nproc) / 4 : 1 ))
for k in 1 2 4; do
  stage "share_$k" 50 python -m pipeline.search --backbone ffanet --preset small --trials 4 --epochs 2 \
    --trials-per-gpu "$k" --cpus-per-trial "$CPUS" --storage "$OUT/runs" --name "gpu-share-$k" \
    train.steps_per_epoch=25 dataset.crop=128 dataset.select_images=8
done

stage evaluate 90 python benchmarks/data_scale.py --sizes 24 --renderings 2 --steps 5 --epochs 1 --crop 128 \
  --evaluate --eval-images 100 --device cuda --json --work "$OUT/data-scale"

OUT="$OUT" STATUS="$(for k in "${!STATUS[@]}"; do echo "$k=${STATUS[$k]}"; done)" python - <<'EOF'
import json
import os
from pathlib import Path

import polars as pl

out = Path(os.environ["OUT"])
status = dict(line.split("=", 1) for line in os.environ["STATUS"].splitlines())
print(f"== GPU check: {(out / 'device.out').read_text().strip()} ==")


def epochs(name):
    try:
        return pl.read_parquet(str(out / "runs" / name / "results" / "epochs" / "**" / "*.parquet"))
    except Exception as err:  # the search failed: its log says why
        print(f"  no results ({type(err).__name__}); see {out}")
        return None


print(f"[default search, no GPU flag] {status['default_search']}")
placement = [l for l in (out / "default_search.out").read_text().splitlines() if l.startswith(("trials on", "no GPU"))]
print(f"  {placement[0] if placement else 'no placement line'}")
rows = epochs("gpu-default")
if rows is not None:
    print(f"  epoch rows on devices {sorted(set(rows['device']))}, precision {sorted(set(rows['precision']))}")

print("[fp32 vs bf16, paper preset, crop 240, n 10, m 4]")
print(f"  {'backbone':<8} {'precision':<9} {'plain ms':>9} {'bild ms':>9} {'plain MB':>9} {'bild MB':>9}")
steps = {}
for backbone in ("ffanet", "msbdn"):
    for precision in ("fp32", "bf16", "bf16-nchw"):
        name = f"step_{backbone}_{precision}"
        try:
            (r,) = json.loads((out / f"{name}.out").read_text())
        except (OSError, ValueError):
            print(f"  {backbone:<8} {precision:<9} {status[name]}")
            continue
        steps[backbone, precision] = r
        print(f"  {backbone:<8} {precision:<9} {r['plain_ms']:9.1f} {r['bild_ms']:9.1f} {r['plain_step_mb']:9.0f} "
              f"{r['bild_step_mb']:9.0f}")
    if (backbone, "fp32") in steps and (backbone, "bf16") in steps:
        a, b = steps[backbone, "fp32"], steps[backbone, "bf16"]
        print(f"  {backbone}: bf16 is {a['plain_ms'] / b['plain_ms']:.2f}x (plain) and {a['bild_ms'] / b['bild_ms']:.2f}x "
              f"(BILD) as fast as fp32, with {b['bild_step_mb'] / max(a['bild_step_mb'], 1):.2f}x the step memory")
    if (backbone, "bf16") in steps and (backbone, "bf16-nchw") in steps:
        nhwc, nchw = steps[backbone, "bf16"], steps[backbone, "bf16-nchw"]
        layout = "NHWC" if nhwc["channels_last"] else "NCHW"
        print(f"  {backbone}: the default layout on this device ({layout}) is {nchw['plain_ms'] / nhwc['plain_ms']:.2f}x "
              f"as fast as NCHW in bf16 (plain step)")

print("[trials sharing one GPU: ffanet small, crop 128, 4 trials x 2 epochs x 25 steps]")
for k in (1, 2, 4):
    name = f"share_{k}"
    rows = epochs(f"gpu-share-{k}")
    if rows is None or rows.height == 0:
        print(f"  {k} per GPU: {status[name]}")
        continue
    span = (rows["timestamp"].max() - rows["timestamp"].min()).total_seconds() + rows["epoch_seconds"].mean()
    print(f"  {k} per GPU: {status[name]}; {rows.height} epochs, {3600 * rows.height / span:.0f} epochs/hour in total, "
          f"peak GPU memory per trial {rows['gpu_peak_mb'].max():.0f} MB, mean epoch {rows['epoch_seconds'].mean():.1f} s")

print(f"[evaluate on the GPU] {status['evaluate']}")
try:
    rows = pl.read_parquet(out / "data-scale" / "evaluate-cached.parquet")
    model = rows.filter(~pl.col("method").is_in(["hazy", "dcp"]))
    print(f"  {model.height} images of {model['width'][0]}x{model['height'][0]}: "
          f"{1 / model['seconds'].mean():.1f} images/s on the model column")
except Exception as err:
    print(f"  no evaluate rows ({type(err).__name__}); see {out / 'evaluate.err'}")
EOF
