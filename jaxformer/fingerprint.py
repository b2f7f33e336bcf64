"""The machine fingerprint: what decides whether two runs of the same XLA program give the same bits.

XLA:CPU picks its kernels (vector widths, blockings, the order of a dot's partial sums) by the instruction sets of
the CPU it compiles for, so float32 results of one program agree bit for bit only on the same CPU kind with the same
libraries and the same matmul path; across kinds they agree to float32 rounding (e.g. logits of a 2-layer model:
up to ~2e-7 of their largest value between an AMD Zen 5 and an Intel Xeon with AMX, 2026-12-07). Goldens, fixtures
and run manifests record `machine()`; `differences()` says what differs, the CPU kind first.

Layer 0: imports nothing from jaxformer (the matmul path is passed in by whoever knows it).
"""

import importlib.metadata
import os
import platform

# The instruction sets XLA:CPU (LLVM's target features), Eigen and OpenBLAS choose kernels by: a CPU kind is its
# vendor, family, model and which of these it has (the rest of /proc/cpuinfo's flags do not touch the numbers).
ISA_FLAGS = ("sse4_1", "sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512cd", "avx512bw",
             "avx512vl", "avx512ifma", "avx512vbmi", "avx512_vbmi2", "avx512_vnni", "avx512_bf16", "avx512_fp16",
             "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve", "sve2")
VERSIONED = ("jax", "jaxlib", "numpy")
# Fields compared, in the order a difference is reported: the CPU kind first, then the software.
FIELDS = ("cpu.vendor", "cpu.family", "cpu.model", "cpu.flags", "arch", "matmul", "versions.jax",
          "versions.jaxlib", "versions.numpy", "xla_flags")


def cpu(cpuinfo: str = "/proc/cpuinfo") -> dict:
    """The first processor's vendor, family, model (ints), model name and the `ISA_FLAGS` it has (sorted), from
    /proc/cpuinfo; the fields it cannot read are None (not Linux: vendor from `platform.processor()`)."""
    info: dict = {"vendor": None, "family": None, "model": None, "model_name": None, "flags": None}
    keys = {"vendor_id": "vendor", "cpu family": "family", "model": "model", "model name": "model_name",
            "flags": "flags", "Features": "flags", "CPU implementer": "vendor", "CPU part": "model"}
    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = (part.strip() for part in line.partition(":"))
                if not key and any(v is not None for v in info.values()):
                    break  # the blank line after the first processor
                field = keys.get(key)
                if field == "flags":
                    present = set(value.split())
                    info["flags"] = [flag for flag in ISA_FLAGS if flag in present]
                elif field in ("family", "model"):
                    info[field] = int(value, 0) if value else None
                elif field:
                    info[field] = value
    except (OSError, ValueError):
        pass
    if info["vendor"] is None:
        info["vendor"] = platform.processor() or None
    return info


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine(matmul: str | None = None) -> dict:
    """This machine's fingerprint: {"cpu": cpu(), "arch", "matmul", "versions": {jax, jaxlib, numpy}, "xla_flags"}.

    matmul: the path the products run on ("xla", "blas", or a finer name such as "xla rows_dot_general"); the
      caller knows it (jaxformer.matmul.cpu_backend_in_use() for a model built by the loader).
    """
    return {"cpu": cpu(), "arch": platform.machine(), "matmul": matmul,
            "versions": {p: _version(p) for p in VERSIONED}, "xla_flags": os.environ.get("XLA_FLAGS", "")}


def _get(fp: dict, field: str):
    node = fp
    for part in field.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def differences(recorded: dict, current: dict) -> list[str]:
    """The `FIELDS` where two fingerprints differ, as `field: recorded -> current`, CPU kind first; a field the
    record lacks (None, or a record from before it was kept) counts as differing ("not recorded"). [] means
    the same kind: the same program gives the same bits."""
    out = []
    for field in FIELDS:
        was, now = _get(recorded, field), _get(current, field)
        if was is None or was != now:
            out.append(f"{field}: {'not recorded' if was is None else _show(was)} -> {_show(now)}")
    return out


def _show(value) -> str:
    if isinstance(value, list):
        return ",".join(value) or "(none)"
    return repr(value)


def describe(fp: dict) -> str:
    """One line: 'GenuineIntel family 6 model 167 (avx2,avx512f,...), x86_64, matmul xla, jax 0.10.2'."""
    c = fp.get("cpu") or {}
    flags = ",".join(c.get("flags") or []) or "flags not recorded"
    versions = ", ".join(f"{k} {v}" for k, v in (fp.get("versions") or {}).items() if v)
    return (f"{c.get('vendor')} family {c.get('family')} model {c.get('model')} ({flags}), {fp.get('arch')}, "
            f"matmul {fp.get('matmul')}, {versions}")
