#!/bin/sh
# The whole tiny_shakespeare experiment of issue 22, resumable: run it again after a stop and it continues where the
# committed small files (or the checkpoints, where present) leave it. From the repository root:
#   JAXFORMER_MANUAL_DIR=/path/to/tinyshakespeare sh experiments/pe_extrapolation/run.sh
set -e
E=experiments/pe_extrapolation
# the experiment: learning-rate selection, then the 9 variants x 5 seeds
jaxformer sweep --config sweeps.positional_lr --workdir $E/shakespeare_lr
python $E/select_lr.py
jaxformer sweep --config $E/shakespeare/sweep_config.py --workdir $E/shakespeare
python $E/paired.py $E/shakespeare > /dev/null
# the checks beside it: the learning-rate grid's edge (2.4e-2), the variants whose best rate moved there (FIRE) at it,
# and the comparison at every variant's best of 4 rates (those runs in their variants' place)
jaxformer sweep --config $E/shakespeare_lr_edge/sweep_config.py --workdir $E/shakespeare_lr_edge
python $E/select_edge.py
jaxformer sweep --config $E/shakespeare_lr4/sweep_config.py --workdir $E/shakespeare_lr4
python $E/paired.py $E/shakespeare_lr4 --with $E/shakespeare --replace > /dev/null
# FIRE at the paper's init_L=512 (the control for the derived init_L=64)
jaxformer sweep --config $E/fire_init_L/sweep_config.py --workdir $E/fire_init_L
python $E/paired.py $E/fire_init_L --with $E/shakespeare > /dev/null
