#!/usr/bin/env bash
# Every GPU check and benchmark in one go, for a machine with a CUDA GPU:
#   the CUDA golden tests (tests/test_cuda.py), the GPU rows of `lesa bench` (training step,
#   inference, the end-to-end schedule), the kernel profiles of the step and of inference, the feature-extraction throughput
#   the candidate speed-ups of benchmarks/gpu_experiments.py, and the feature-file reading rows of
#   `lesa bench` (CPU-side: reader processes on the GPU machine's many cores).
# usage: benchmarks/gpu_all.sh [OUT_DIR]      (logs and the tables land in OUT_DIR, default gpu_results)
#        PARTS="tests schedule" benchmarks/gpu_all.sh OUT   runs only those parts (of: bench tests
#        extract schedule experiments profile reading). All parts at their default limits take up to
#        ~21 min: where one call is limited to 10 minutes, run the goals' figures and the CUDA
#        goldens first, PARTS="bench tests extract" (<= 590 s); then, as time allows,
#        PARTS="experiments profile reading" (<= 570 s) and PARTS="schedule" (<= 120 s).
# Each part has its own time limit (BENCH_S, TESTS_S, ...) so that one stuck part cannot take the
# others' figures with it.
set -u
out=${1:-gpu_results}
parts=" ${PARTS:-bench tests extract schedule experiments profile reading} "
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
py=${PYTHON:-python3}
want() { [[ "$parts" == *" $1 "* ]]; }
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$out/gpu.txt"
$py -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__, torch.cuda.get_device_name(0))" | tee -a "$out/gpu.txt"
if want bench; then
  echo "== lesa bench: training step, inference"
  timeout "${BENCH_S:-240}" $py -m lesa bench --only step inference --out "$out/bench_step.md" 2>&1 | tee "$out/bench_step.log"
fi
if want tests; then
  echo "== CUDA golden tests"
  timeout "${TESTS_S:-170}" $py -m pytest -q -s -p no:cacheprovider tests/test_cuda.py 2>&1 | tee "$out/test_cuda.log" | grep -E "\[cuda\]|passed|failed|skipped|Error|error"
fi
if want extract; then
  echo "== feature extraction"
  timeout "${EXTRACT_S:-180}" $py benchmarks/bench_extract.py --device cuda --images 16384 --batch-size 256 --workers "$(nproc)" 2>&1 | tee "$out/extract.log"
fi
if want schedule; then
  echo "== lesa bench: schedule"
  timeout "${SCHEDULE_S:-120}" $py -m lesa bench --only schedule --out "$out/bench_schedule.md" 2>&1 | tee "$out/bench_schedule.log"
fi
if want experiments; then
  echo "== candidate speed-ups, side by side with today's path"
  timeout "${EXPERIMENTS_S:-240}" $py benchmarks/gpu_experiments.py 2>&1 | tee "$out/experiments.log" | grep -v Warning
fi
if want profile; then
  echo "== where a training step's GPU time goes"
  timeout "${PROFILE_S:-60}" $py benchmarks/profile_step.py 2>&1 | tee "$out/profile_step.log" | grep -v Warning
  echo "== the same for the fastest step: TF32, forward + losses compiled (no graph, so each kernel shows)"
  timeout "${PROFILE_COMPILED_S:-150}" $py benchmarks/profile_step.py --precision tf32 --mode compile 2>&1 | tee "$out/profile_step_compiled.log" | grep -v Warning
  echo "== where inference's GPU time goes (batch 4,096)"
  timeout "${PROFILE_S:-60}" $py benchmarks/profile_step.py --inference 2>&1 | tee "$out/profile_inference.log" | grep -v Warning
fi
if want reading; then
  echo "== lesa bench: reading feature files (thread vs reader processes)"
  timeout "${READING_S:-60}" $py -m lesa bench --only reading --out "$out/bench_reading.md" 2>&1 | tee "$out/bench_reading.log"
fi
echo "== done"
