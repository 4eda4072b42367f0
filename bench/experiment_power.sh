#!/bin/sh
# Issue 23, Deliver 4 and 6: the experiment with power, as one command per task. Not timed here;
# each prints its tables (both measures, paired intervals) and leaves a store that verifies,
# replays, and exports to Parquet. Run from the project root:
#
#   sh bench/experiment_power.sh scrna            # 4 arms x 5 seeds x 6 iterations, 2 Ray workers of 1 thread
#   sh bench/experiment_power.sh lawbench         # 4 arms x 3 seeds x 6 iterations (needs ../shared/data/lawbench)
#   sh bench/experiment_power.sh trimul MODEL     # on a GPU: MODEL a local model folder, or an OpenAI-compatible URL
#                                                 # (then the scaffold arm only: an endpoint trains no weights)
#
# STORE (default /tmp/exps/power) holds one experiment per task; run a command again to resume it.
set -eu
STORE=${STORE:-/tmp/exps/power}
ARMS=scaffold,weights,both,both-bandit
case "${1:-}" in
  scrna)
    time sia experiment --task scrna-denoise --arms "$ARMS" --seeds 5 --iterations 6 --executor ray --workers 2 --worker-threads 1 \
      --name scrna-power --store "$STORE" ;;
  lawbench)
    time sia experiment --task lawbench-charge --data ../shared/data/lawbench --arms "$ARMS" --seeds 3 --iterations 6 --val-episodes 16 \
      --executor ray --workers 2 --worker-threads 1 --name law-power --store "$STORE" ;;
  trimul)
    MODEL=${2:?give a local model folder or an OpenAI-compatible URL}
    case "$MODEL" in
      http://*|https://*) time sia experiment --task trimul --openai-url "$MODEL" --openai-model "${OPENAI_MODEL:-default}" --arms scaffold \
                            --seeds 3 --iterations 6 --device cuda --name trimul-power --store "$STORE" ;;
      *) time sia experiment --task trimul --model "$MODEL" --arms "$ARMS" --seeds 3 --iterations 6 --device cuda --name trimul-power \
           --store "$STORE" ;;
    esac ;;
  *) echo "usage: sh bench/experiment_power.sh scrna | lawbench | trimul MODEL" >&2; exit 2 ;;
esac
