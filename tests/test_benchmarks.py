"""benchmarks/train_step.py: its JSON figures on the tiny config (timing targets live in benchmarks/, not here)."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_benchmark_writes_the_issue_keys_with_consistent_values(tmp_path):
    out = tmp_path / "bench.json"
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "train_step.py"), "--config", "tiny",
                    "--steps", "4", "--warmup", "1", "--matmul-size", "256", "--json", str(out)],
                   check=True, capture_output=True, text=True, cwd=tmp_path,
                   env={**os.environ, "JAXFORMER_CPU_MATMUL": "blas"})  # the kernel on any CPU kind
    r = json.loads(out.read_text())
    for key in ("compile_s", "median_ms_per_step", "tokens_per_s", "model_flops_per_step", "matmul_gflops", "mfu",
                "peak_rss_mb"):
        assert isinstance(r[key], (int, float)) and r[key] > 0, key
    # tiny: 1 layer, 2 heads, 32 wide, block 32, batch 8 -> 256 tokens a step.
    L, H, d, T, tokens = 1, 2, 16, 32, 8 * 32
    assert 0 < r["n_params_non_embedding"] < r["n_params"]
    assert r["model_flops_per_step"] == tokens * (6 * r["n_params_non_embedding"] + 12 * L * H * d * T)
    step_s = r["median_ms_per_step"] / 1e3
    assert abs(r["tokens_per_s"] - tokens / step_s) < 1e-6 * r["tokens_per_s"]
    assert abs(r["mfu"] - r["model_flops_per_step"] / step_s / (r["matmul_gflops"] * 1e9)) < 1e-9
    assert r["p10_ms_per_step"] <= r["median_ms_per_step"] <= r["p90_ms_per_step"]
    # The MFU ceiling is the faster of XLA's dot and the BLAS kernel the step's products go through (forced here).
    assert r["cpu_matmul"] == "blas" and r["matmul_gflops_blas"] > 0
    # Which path ran and why (issue 38): here the environment's word, in the JSON and in the printed table.
    assert r["cpu_matmul_choice"] == {"path": "blas", "why": "JAXFORMER_CPU_MATMUL=blas"}
    assert any(line.split() == ["chosen", "because", "JAXFORMER_CPU_MATMUL=blas"] for line in done.stdout.splitlines())
    assert r["matmul_gflops"] == max(r["matmul_gflops_xla"], r["matmul_gflops_blas"])
