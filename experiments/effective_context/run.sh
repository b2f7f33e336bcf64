#!/bin/sh
# The effective-context experiments of issue 33, resumable: run it again after a stop and each sweep continues from
# its committed small files (finished points are skipped; a partly trained point resumes from its checkpoint where
# one is present). From the repository root, with the venv active:
#   nice -n 10 sh experiments/effective_context/run.sh
set -e
E=experiments/effective_context
# (b) context extension measured by passkey: RoPE base models at L = 32 (3 seeds, into $E/extension/base), then
# none / PI / NTK / YaRN (bounds scaled to L) / YaRN (paper bounds), zero-shot and after 100 steps at 128
jaxformer sweep --config configs/sweeps/context_extension_passkey.py --workdir $E/extension
# (a) every encoding (+ randomized RoPE / ALiBi / sinusoidal) trained at 32, passkey at 32..256 and depths 0..1.
# Its rope points are the extension's base runs (same config): copied, not trained twice.
mkdir -p $E/passkey/runs
for run in $E/extension/base/runs/variant=rope,seed=*; do
    [ -e "$E/passkey/runs/$(basename "$run")" ] || cp -r "$run" "$E/passkey/runs/"
done
jaxformer sweep --config configs/sweeps/context_passkey.py --workdir $E/passkey
# (a) the same on multi-query associative recall (4 pairs, depth = the fraction of the pairs beyond the filler)
jaxformer sweep --config configs/sweeps/context_mqar.py --workdir $E/mqar
