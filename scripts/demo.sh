#!/usr/bin/env bash
# The main job at demo size, each step on an embedded local Ray (about 12 minutes on 2 cores):
#   1. pretrain a 12M-parameter GPT-2 from scratch
#   2. fine-tune MiniLM for sentiment, register it (sentiment@candidate if accuracy >= 0.70)
#   3. distill it into a 2-layer student, register that too
#   4. evaluate teacher and student side by side: report, latency, speed-up
# Each run gets fresh run names, so a second demo trains again rather than resuming.
# The full-size recipes (configs/finetune, configs/distill) train on all the data.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export FMSTACK_REGISTRY=${FMSTACK_REGISTRY:-$PWD/runs/registry}
run=demo-$(date +%Y%m%d-%H%M%S)
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/4 pretrain: GPT-2 (12M params) on State of the Union, Moby Dick and Shakespeare"
fmstack pretrain --config configs/pretrain/gpt2-demo.yaml \
  --set checkpoint.run_name="$run-gpt2" --set train.max_steps=50 --set train.eval_every=25 \
  --set checkpoint.every_steps=25

step "2/4 fine-tune: MiniLM (22.7M params) on a 2,000-review sample of Rotten Tomatoes"
fmstack finetune --config configs/finetune/minilm-rotten-tomatoes.yaml \
  --set checkpoint.run_name="$run-teacher" --set data.max_examples=2000 --set train.epochs=1 \
  --set train.eval_every=22 --set registry.name=demo-sentiment \
  --set 'registry.require=["accuracy>=0.70"]'

step "3/4 distill: a 2-layer student from the registered teacher"
fmstack distill --config configs/distill/minilm-student.yaml \
  --set checkpoint.run_name="$run-student" --set data.max_examples=2000 --set train.epochs=2 \
  --set train.eval_every=22 --set distillation.teacher=models:/demo-sentiment@candidate \
  --set registry.name=demo-sentiment-student --set 'registry.require=["accuracy>=0.65"]'

step "4/4 evaluate: teacher and student on the held-out test split"
fmstack eval models:/demo-sentiment@candidate models:/demo-sentiment-student@candidate
fmstack models list
