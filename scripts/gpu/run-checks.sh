#!/usr/bin/env bash
# The one script a session lent a GPU host runs, from the repository root, with the bundle
# carried (the host has CUDA, PyTorch and transformers, but no Node.js and no network):
#
#   npm run bundle -- --with-tests --tar   # here, before: bundle/tokamak-<v>-linux-x64/ (~51 MiB)
#                                          # and bundle/tokamak-<v>-linux-x64.tar.xz (~27 MiB)
#   bash scripts/gpu/run-checks.sh         # there, carrying either of the two
#
# Everything lands under $OUT (default ./gpu-out): run-checks.log (all that is printed),
# summary.tsv (step, status, exit code, seconds), logs/<step>.log and .tap, golden/<name>.json.
# Steps, in order of value, none stopping the others (a failure is recorded and the run goes on):
#   host             nvidia-smi, driver and CUDA versions, toolkit, PyTorch
#   node             unpack the bundled Node.js
#   test-<name>      each of dist/test/cuda-*.test.js and backend-conformance.test.js present,
#                    one node --test run per file so one hang costs only its own time
#   golden-models    the tiny models of test/helpers/golden-models.ts, made by the bundled node
#   golden-python    scripts/gpu/golden_logits.py on them: $OUT/golden/<name>.json
#   golden-compare   test/golden-logits.test.ts against those fresh fixtures (Tokamak on CPU)
#   sanitizer        compute-sanitizer memcheck on backend-conformance.test.js (slow: last, gets what is left)
# The whole run keeps within $GPU_CHECKS_BUDGET_S seconds (default 450, so it ends inside 8
# minutes): each step's time limit is cut to what is left, keeping a reserve for the later steps.
# Other settings: TOKAMAK_BUNDLE (a bundle folder or .tar.xz, default: the newest under bundle/).
# Exit status: 0 when every step that ran passed, 1 otherwise.
# Step commands are single-quoted on purpose: they expand in the step's own bash, from the
# exported variables (SC2016). ls -t picks the newest bundle (SC2012).
# shellcheck disable=SC2016,SC2012
set -u -o pipefail # no -e: a failing step must not end the run

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
OUT=${OUT:-$ROOT/gpu-out}
mkdir -p "$OUT/logs" "$OUT/golden"
BUDGET_S=${GPU_CHECKS_BUDGET_S:-450}
T0=$(date +%s)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tokamak-gpu.XXXXXX")
SUMMARY=$OUT/summary.tsv
printf 'step\tstatus\texit\tseconds\n' >"$SUMMARY"
FAILED=0
exec > >(tee -a "$OUT/run-checks.log") 2>&1
export OUT WORK ROOT

elapsed() { echo $(($(date +%s) - T0)); }

record() { # name status rc seconds
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$SUMMARY"
  case $2 in ok | skipped) ;; *) FAILED=$((FAILED + 1)) ;; esac
}

# step NAME CAP_S RESERVE_S SHOW 'COMMAND': run COMMAND (bash) for at most CAP_S seconds, and
# never into the last RESERVE_S seconds of the budget (kept for the steps after it). Its output
# goes to logs/NAME.log; shown here: its last SHOW lines, or with SHOW=tests its digest.
step() {
  local name=$1 cap=$2 reserve=$3 show=$4 cmd=$5
  local room=$((BUDGET_S - $(elapsed) - reserve))
  local limit=$((cap < room ? cap : room))
  if ((limit < 5)); then
    echo "== $name: SKIPPED, out of time ($(elapsed) s of the $BUDGET_S s budget spent)"
    record "$name" skipped - 0
    return 0
  fi
  echo "== $name (at $(elapsed) s, limit $limit s)"
  local start rc status
  start=$(date +%s)
  timeout -k 10 "$limit" bash -c "$cmd" >"$OUT/logs/$name.log" 2>&1
  rc=$?
  case $rc in 0) status=ok ;; 124 | 137) status=TIMEOUT ;; *) status=FAILED ;; esac
  if [ "$show" = tests ]; then digest "$OUT/logs/$name.log"; else tail -n "$show" "$OUT/logs/$name.log"; fi | sed 's/^/   | /'
  echo "== $name: $status (exit $rc, $(($(date +%s) - start)) s)"
  record "$name" "$status" "$rc" "$(($(date +%s) - start))"
}

# What matters in a node --test (spec reporter) or compute-sanitizer log: each skipped test with
# its reason (a CUDA test skipped for a missing library means the GPU was not used at all), the
# counts, each failed test with its error, the sanitizer's verdict; the tail when it was cut short.
digest() {
  if ! grep -q '^ℹ tests' "$1"; then
    tail -n 20 "$1"
    return
  fi
  {
    grep -E '^ *﹣' "$1"
    sed -n '/^ℹ tests/,$p' "$1" | grep -E '^ℹ (tests|pass|fail|skipped|duration_ms)|^ *✖|(Error|ERR_[A-Z_]+)[]:[]'
    grep -E 'ERROR SUMMARY|^========= [A-Z]' "$1"
  } | awk '!seen[$0]++' | head -n 60
}

skip() { # name reason
  echo "== $1: SKIPPED, $2"
  record "$1" skipped - 0
}

# ---------------------------------------------------------------- host

step host 30 0 60 '
  echo "date: $(date -u +%FT%TZ)  host: $(hostname)  $(uname -srm)  cpus: $(nproc)"
  nvidia-smi || echo "nvidia-smi failed"
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
  echo "driver CUDA: $(nvidia-smi 2>/dev/null | grep -o "CUDA Version: [0-9.]*")"
  for d in /usr/local/cuda*; do [ -e "$d" ] && echo "toolkit: $d"; done
  PATH=$PATH:/usr/local/cuda/bin
  nvcc --version 2>&1 | tail -n 2 || echo "nvcc: not found"
  if command -v compute-sanitizer >/dev/null; then compute-sanitizer --version | tail -n 1; else echo "compute-sanitizer: not found"; fi
  echo "LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}"
  python3 -c "import sys, torch, transformers; print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"transformers\", transformers.__version__, \"gpu\", torch.cuda.is_available() and torch.cuda.get_device_name(0))" 2>&1 | tail -n 1
  nvidia-smi -q >"$OUT/logs/nvidia-smi-q.txt" 2>&1 || true
'
export PATH="$PATH:/usr/local/cuda/bin"

# ---------------------------------------------------------------- the bundle and its node

find_bundle() {
  local b=${TOKAMAK_BUNDLE:-}
  if [ -z "$b" ]; then
    b=$(ls -dt "$ROOT"/bundle/tokamak-*-linux-x64/ 2>/dev/null | head -n 1)
    [ -n "$b" ] || b=$(ls -t "$ROOT"/bundle/tokamak-*-linux-x64.tar.xz 2>/dev/null | head -n 1)
  fi
  [ -n "$b" ] || return 1
  if [ -f "$b" ]; then # a .tar.xz: unpack it (python3 when the host lacks xz)
    mkdir -p "$WORK/bundle"
    if command -v xz >/dev/null 2>&1; then tar -C "$WORK/bundle" -xJf "$b" || return 1
    else python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$b" "$WORK/bundle" || return 1
    fi
    b=$(ls -d "$WORK"/bundle/tokamak-*-linux-x64/ | head -n 1)
  fi
  [ -f "$b/bin/node" ] && (cd "$b" && pwd)
}

BUNDLE=$(find_bundle) || BUNDLE=""
NODE=""
if [ -z "$BUNDLE" ]; then
  echo "== no bundle found (looked for ${TOKAMAK_BUNDLE:-bundle/tokamak-*-linux-x64[.tar.xz]}): run npm run bundle -- --with-tests and carry bundle/tokamak-<version>-linux-x64"
  record bundle FAILED - 0
else
  export BUNDLE TOKAMAK_NODE_CACHE=$WORK/node-cache
  echo "== bundle: $BUNDLE"
  cp "$BUNDLE/bundle.json" "$OUT/bundle.json" 2>/dev/null
  grep -E '"(commit|dirty|withTests|created|node)"' "$BUNDLE/bundle.json" | sed 's/^ */   | /'
  head=$(git -C "$ROOT" rev-parse HEAD 2>/dev/null) && echo "   | work tree HEAD: $head (the bundle's code is what runs)"
  step node 90 0 5 'bash "$BUNDLE/bin/node" -p "\"node \" + process.version + \" \" + process.execPath"'
  NODE="$TOKAMAK_NODE_CACHE/$(cat "$BUNDLE/node.id")/node"
  [ -x "$NODE" ] || NODE=""
fi
export NODE
if [ -n "$BUNDLE" ] && [ ! -d "$BUNDLE/dist/test" ]; then
  echo "== the bundle has no tests: make it with npm run bundle -- --with-tests"
fi

# ---------------------------------------------------------------- CUDA tests

# Kernels compile into a fresh cache, so every run exercises NVRTC.
export TOKAMAK_CACHE_DIR=$WORK/tokamak-cache NODE_OPTIONS=--enable-source-maps
TESTS=()
if [ -n "$NODE" ]; then
  for f in "$BUNDLE"/dist/test/cuda-*.test.js "$BUNDLE"/dist/test/backend-conformance.test.js; do
    [ -f "$f" ] && TESTS+=("$(basename "$f")")
  done
fi
if [ -z "$NODE" ]; then
  skip tests "no bundled node"
elif [ ${#TESTS[@]} -eq 0 ]; then
  skip tests "no dist/test/cuda-*.test.js or backend-conformance.test.js in the bundle"
fi
for t in ${TESTS[@]+"${TESTS[@]}"}; do
  name=test-${t%.test.js}
  # Reserve 170 s for the golden steps and a short sanitizer run after the tests.
  step "$name" 180 170 tests "cd \"\$BUNDLE\" && \"\$NODE\" --test --test-reporter=spec --test-reporter-destination=stdout --test-reporter=tap --test-reporter-destination=\"\$OUT/logs/$name.tap\" dist/test/$t"
done

# ---------------------------------------------------------------- golden logits

if [ -n "$NODE" ]; then
  step golden-models 60 130 8 '"$NODE" "$BUNDLE/dist/scripts/gpu/make-golden-models.js" "$WORK/golden-models"'
  step golden-python 180 70 12 'python3 "$ROOT/scripts/gpu/golden_logits.py" "$WORK/golden-models" --out "$OUT/golden"'
  if ls "$OUT"/golden/*.json >/dev/null 2>&1; then
    step golden-compare 90 40 tests 'cd "$BUNDLE" && TOKAMAK_GOLDEN_DIR="$OUT/golden" "$NODE" --test --test-reporter=spec dist/test/golden-logits.test.js'
    echo "   | fixtures: copy $OUT/golden/*.json into test/fixtures/golden/ and commit them"
  else
    skip golden-compare "golden-python wrote no fixtures"
  fi
else
  skip golden "no bundled node"
fi

# ---------------------------------------------------------------- first figures

if [ -n "$NODE" ] && [ -f "$BUNDLE/dist/bench/cuda.js" ]; then
  step torch-peer 60 100 20 'python3 "$ROOT/scripts/gpu/torch_peer.py" "$OUT/torch-peer.json"'
  # A Llama-3.2-1B-shaped bf16 model with random weights (2.5 GB; decode speed does not depend on the values).
  step e2e-model 120 90 5 '"$NODE" "$BUNDLE/dist/scripts/make-test-model.js" "$WORK/llama-1b" --arch llama --dtype bf16 --hidden 2048 --layers 16 --intermediate 8192 --heads 32 --kv-heads 8 --head-dim 64 --tie'
  step bench-cuda 120 60 20 'cd "$BUNDLE" && "$NODE" dist/bench/cuda.js --e2e-model "$WORK/llama-1b" --out "$OUT/bench-cuda.json"'
else
  skip bench-cuda "no bundled node or dist/bench/cuda.js"
fi

# ---------------------------------------------------------------- compute-sanitizer

if [ -z "$NODE" ] || [ ! -f "$BUNDLE/dist/test/backend-conformance.test.js" ]; then
  skip sanitizer "no backend-conformance.test.js in the bundle"
elif ! command -v compute-sanitizer >/dev/null 2>&1; then
  skip sanitizer "compute-sanitizer not found"
else
  # The test file run directly (not under node --test): one process for the sanitizer to watch.
  step sanitizer 300 5 tests 'cd "$BUNDLE" && compute-sanitizer --tool memcheck --target-processes all --error-exitcode 99 --print-limit 50 "$NODE" --test-reporter=spec dist/test/backend-conformance.test.js'
fi

# ---------------------------------------------------------------- summary

echo
echo "== summary ($(elapsed) s of the $BUDGET_S s budget; outputs in $OUT)"
column -t -s $'\t' "$SUMMARY" 2>/dev/null | sed 's/^/   /' || sed 's/^/   /' "$SUMMARY"
rm -rf "$WORK"
if ((FAILED > 0)); then
  echo "== $FAILED step(s) failed or timed out: see $OUT/logs/"
  exit 1
fi
echo "== all steps passed"
