#!/usr/bin/env bash
# The main job at demo size, each step on an embedded local Ray (about 10 minutes on 2 cores):
#   1. pretrain a 12M-parameter GPT-2 from scratch
#   2. fine-tune MiniLM for sentiment, register it (demo-sentiment@candidate if accuracy >= 0.70)
#   3. distill it into a 4-layer student, register that too
#   4. evaluate teacher and student side by side: report, latency, speed-up
#   5. serve both (and SmolLM2) on Ray Serve, send real requests, leave it running
# Each run gets fresh run names, so a second demo trains again rather than resuming.
# The full-size recipes (configs/finetune, configs/distill) train on all the data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export FMSTACK_REGISTRY=${FMSTACK_REGISTRY:-$PWD/runs/registry}
run=demo-$(date +%Y%m%d-%H%M%S)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/5 pretrain: GPT-2 (12M params) on State of the Union, Moby Dick and Shakespeare"
fmstack pretrain --config configs/pretrain/gpt2-demo.yaml \
  --set checkpoint.run_name="$run-gpt2" --set train.max_steps=50 --set train.eval_every=25 \
  --set checkpoint.every_steps=25

step "2/5 fine-tune: MiniLM (22.7M params) on a 2,000-review sample of Rotten Tomatoes"
fmstack finetune --config configs/finetune/minilm-rotten-tomatoes.yaml \
  --set checkpoint.run_name="$run-teacher" --set data.max_examples=2000 --set train.epochs=1 \
  --set optimizer.lr=1e-4 --set optimizer.warmup_steps=5 \
  --set train.eval_every=22 --set registry.name=demo-sentiment \
  --set 'registry.require=["accuracy>=0.70"]'

step "3/5 distill: a 4-layer student from the registered teacher"
fmstack distill --config configs/distill/minilm-student.yaml \
  --set checkpoint.run_name="$run-student" --set data.max_examples=2000 --set train.epochs=2 \
  --set distillation.augment.copies=0 \
  --set train.eval_every=22 --set distillation.teacher=models:/demo-sentiment@candidate \
  --set registry.name=demo-sentiment-student --set 'registry.require=["accuracy>=0.65"]'

step "4/5 evaluate: teacher and student on the held-out test split"
fmstack eval models:/demo-sentiment@candidate models:/demo-sentiment-student@candidate
fmstack models list

step "5/5 serve: teacher (full), student (distilled) and SmolLM2 on Ray Serve at 127.0.0.1:8000"
fmstack serve up --config configs/serve/sentiment.yaml \
  --set variants.full.model=models:/demo-sentiment@candidate \
  --set variants.distilled.model=models:/demo-sentiment-student@candidate
reviews=("A gripping, beautifully acted film." "Dull, overlong and badly written."
  "An uneven but often delightful comedy.")
fmstack serve ask --model full "${reviews[@]}"
fmstack serve ask --model distilled "${reviews[@]}"
fmstack serve ask --model auto "${reviews[@]}"   # cascade: the student, the teacher when unsure
cat <<'EOF'

The models keep serving. Try:
  curl -s 127.0.0.1:8000/v1/classify -H 'Content-Type: application/json' \
    -d '{"texts": ["A quietly devastating film."], "model": "auto"}'
  curl -sN 127.0.0.1:8000/v1/generate -H 'Content-Type: application/json' \
    -d '{"prompt": "The whale", "max_new_tokens": 32, "stream": true}'
Docs: http://127.0.0.1:8000/docs   Status: fmstack serve status   Stop: fmstack serve down --stop-ray
EOF
