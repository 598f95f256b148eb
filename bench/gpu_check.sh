#!/usr/bin/env bash
# Every GPU check of issue 21 in one run of under 8 minutes on one H100/H200, for the workplace's device tool:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# Each step has its own time limit (600 s in all, the device tool's per-call cap; expected under 8 minutes), so
# one that hangs costs only its share; results go to $OUT (the device tool's folder that comes back), else
# bench/gpu_results/. Packages the GPU image lacks travel as wheels in .whl/
# (bench/README.md says how to fetch them); they are installed into /tmp/site first.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/gpu_results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    > "$OUT/install.txt" 2>&1 || { echo "wheel install failed: $OUT/install.txt"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 WANDB_MODE=offline WANDB_SILENT=true ZF_CACHE_DIR=/tmp/zf_cache
step() {  # step NAME SECONDS COMMAND...: its output in $OUT/NAME.txt, its exit status in $OUT/status.txt
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
  echo "$name exit=$? seconds=$((SECONDS - started))" | tee -a "$OUT/status.txt"
}
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1
python3 -c "import torch, torchvision; print(torch.__version__, 'cuda', torch.version.cuda, torchvision.__version__, \
torch.cuda.get_device_name())" > "$OUT/versions.txt" 2>&1
# 1. CUDA tests: bf16, channels_last, compile, decode=gpu, the deferred non-finite check, the deconvnet on CUDA
step cuda_tests 210 python3 -m pytest -q -p no:cacheprovider -m cuda tests
# 2. ZFNet training at 224 with inputs in GPU memory, every fast-path option, batch 128 and 256 (goal 15,000 img/s)
step training_b128 80 python3 bench/bench_gpu_training.py --device cuda --batch-size 128 --steps 30 --repeats 2
step training_b256 80 python3 bench/bench_gpu_training.py --device cuda --batch-size 256 --steps 30 --repeats 2
# 3. decode=gpu end to end on a zf-prepare copy of generated JPEGs (goal: 0.8 of the in-memory rate)
step end_to_end 90 python3 bench/bench_gpu_training.py --device cuda --end-to-end --images 4096 --steps 20
# 4. Deconvnet top-9 of layer 5's 256 maps against one dense pass per projection (goal 20x)
step deconvnet 60 python3 bench/bench_deconvnet.py --device cuda --layers 5 --baseline-sample 16
# 5. Occlusion against Captum's Occlusion on the GPU (goal: at least as fast)
step occlusion 40 python3 bench/bench_occlusion.py --device cuda --images 4
# 6. Top-9 on torchvision resnet18 and vgg16 against Captum one neuron per call (issue 17's 3x, CPU-bound here)
step any_network 40 python3 bench/bench_any_network.py --device cuda --captum-sample 16
echo "results in $OUT"
