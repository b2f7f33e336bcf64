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


_HLO = """HloModule m

%fused_dot (p0: f32[8,4], p1: f32[4,3]) -> f32[8,3] {
  %p0 = f32[8,4]{1,0} parameter(0)
  %p1 = f32[4,3]{1,0} parameter(1)
  ROOT %d = f32[8,3]{1,0} dot(%p0, %p1), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

%fused_exp (p0: f32[8,3]) -> f32[8,3] {
  %p0 = f32[8,3]{1,0} parameter(0)
  ROOT %e = f32[8,3]{1,0} exponential(%p0)
}

%add (a: f32[], b: f32[]) -> f32[] {
  %a = f32[] parameter(0)
  %b = f32[] parameter(1)
  ROOT %s = f32[] add(%a, %b)
}

ENTRY %main (x: f32[8,4], w: f32[4,3], q: f32[2,8,4]) -> f32[8] {
  %x = f32[8,4]{1,0} parameter(0)
  %w = f32[4,3]{1,0} parameter(1)
  %q = f32[2,8,4]{2,1,0} parameter(2)
  %ynn_fusion.1 = f32[8,3]{1,0} fusion(%x, %w), kind=kCustom, calls=%fused_dot, metadata={op_name="jit(f)/jvp()/dot"}
  %gemm.2 = f32[2,8,8] custom-call(%q), custom_call_target="jaxformer_gemm_f32", metadata={op_name="transpose("}
  %exp_fusion = f32[8,3]{1,0} fusion(%ynn_fusion.1), kind=kLoop, calls=%fused_exp
  %transpose.3 = f32[3,8]{1,0} transpose(%exp_fusion), dimensions={1,0}
  %c = f32[] constant(0)
  ROOT %reduce.4 = f32[8]{0} reduce(%exp_fusion, %c), dimensions={1}, to_apply=%add
}
"""


def test_profile_step_classifies_each_thunk_by_what_its_hlo_computes():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import profile_step

    got = profile_step.classify(_HLO)
    assert got["ynn_fusion.1"] == "dense products forward"
    assert got["gemm.2"] == "attention batched products backward"  # batch axis; under transpose(
    assert got["exp_fusion"] == "elementwise"
    assert got["transpose.3"] == "copies and transposes"
    assert got["reduce.4"] == "reductions"


def test_profile_step_accounts_for_the_step_on_the_tiny_config(tmp_path):
    out = tmp_path / "prof.json"
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"), "--config", "tiny",
                    "--steps", "3", "--warmup", "1", "--json", str(out)], check=True, capture_output=True, text=True,
                   cwd=tmp_path, env={**os.environ, "JAXFORMER_CPU_MATMUL": "blas", "PYTHONPATH": ROOT})
    r = json.loads(out.read_text())
    cats = r["categories"]
    assert {"dense products forward", "dense products backward", "elementwise"} <= set(cats)
    # Reverse mode: each dense forward product has two backward ones (input and weight gradients).
    assert cats["dense products backward"]["calls"] >= 2 * cats["dense products forward"]["calls"] - 1
    assert 0 < r["thunk_union_ms_per_step"] <= r["wall_ms_per_step"] + 1e-6
    assert all(0 < v["wall_ms"] <= v["summed_ms"] + 1e-9 for v in cats.values())
