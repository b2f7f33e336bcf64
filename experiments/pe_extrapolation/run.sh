#!/bin/sh
# The whole tiny_shakespeare experiment of issue 22, resumable: run it again after a stop and it continues where the
# committed small files (or the checkpoints, where present) leave it. From the repository root:
#   JAXFORMER_MANUAL_DIR=/path/to/tinyshakespeare sh experiments/pe_extrapolation/run.sh
set -e
E=experiments/pe_extrapolation
jaxformer sweep --config sweeps.positional_lr --workdir $E/shakespeare_lr
python $E/select_lr.py
jaxformer sweep --config $E/shakespeare/sweep_config.py --workdir $E/shakespeare
