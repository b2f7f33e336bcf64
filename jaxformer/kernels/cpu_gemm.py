"""Builds, loads and registers the XLA:CPU float32 matmul custom call of `cpu_gemm.cc`.

The C++ source is compiled on first use with the system C++ compiler (`CXX`, else g++ or c++) against the XLA
FFI headers that ship with jaxlib, into a cache directory keyed by the source, jaxlib's version and the compiler
(`$JAXFORMER_CACHE_DIR`, else `$XDG_CACHE_HOME/jaxformer`, else `~/.cache/jaxformer`); later processes load the
cached library. The BLAS is OpenBLAS from the `scipy-openblas32` wheel, a separate copy from numpy's, set to one
thread (the kernel does its own threading on XLA's pool). `load()` returns None and records why in `reason()`
when any piece is missing, so callers fall back to XLA's own dot.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import importlib.metadata
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

log = logging.getLogger(__name__)

TARGET = "jaxformer_gemm_f32"
SOURCE = Path(__file__).with_name("cpu_gemm.cc")
_lock = threading.Lock()
_state: dict = {}


def cache_dir() -> Path:
    root = os.environ.get("JAXFORMER_CACHE_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "jaxformer"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def _openblas() -> str:
    import scipy_openblas32

    found = sorted(glob.glob(os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas*.so*")))
    if not found:
        raise FileNotFoundError(f"no libscipy_openblas*.so in {scipy_openblas32.get_lib_dir()}")
    return found[0]


def build(directory: Path | None = None) -> Path:
    """The compiled library, building it if the cache has none for this source, jaxlib and compiler."""
    import jax

    cxx = _compiler()
    if cxx is None:
        raise FileNotFoundError("no C++ compiler (set CXX, or install g++)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + importlib.metadata.version("jaxlib").encode() + cxx.encode()).hexdigest()[:16]
    directory = Path(directory or cache_dir() / "kernels")
    library = directory / f"cpu_gemm-{key}.so"
    if library.exists():
        return library
    directory.mkdir(parents=True, exist_ok=True)
    # Built under a temporary name and renamed into place: concurrent builders never see half a library.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=directory)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", f"-I{jax.ffi.include_dir()}", str(SOURCE), "-o", tmp,
           "-ldl"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-2000:]}")
        os.replace(tmp, library)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return library


def load() -> str | None:
    """Registers the custom call once per process; its target name, or None (see `reason()`)."""
    with _lock:
        if "target" in _state:
            return _state["target"]
        try:
            import jax

            lib = ctypes.CDLL(str(build()))
            blas = _openblas()
            code = lib.jf_gemm_init(blas.encode(), b"scipy_cblas_sgemm", b"scipy_openblas_set_num_threads")
            if code != 0:
                raise RuntimeError(f"jf_gemm_init({blas}) returned {code} (1: dlopen, 2: no sgemm, 3: no "
                                   "set_num_threads)")
            jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.JaxformerGemmF32), platform="cpu")
            _state.update(target=TARGET, library=lib, reason=None)
        except Exception as e:  # noqa: BLE001 -- any failure means: use XLA's dot, and say why once
            _state.update(target=None, reason=f"{type(e).__name__}: {e}")
            hint = " (pip install 'jaxformer[cpu]')" if isinstance(e, ImportError) else ""
            first_line = " ".join(_state["reason"].split())[:300]  # one line, however long the compiler's stderr
            log.warning("CPU matmul 'blas': the OpenBLAS kernel cannot load, using XLA's dot instead: %s%s",
                        first_line, hint)
        return _state["target"]


def openblas_corename() -> str | None:
    """The core kernels OpenBLAS chose in this process ("Haswell", "SkylakeX", ...: its CPU detection, or
    OPENBLAS_CORETYPE); None until `load()` has succeeded."""
    if not _state.get("target"):
        return None
    try:
        corename = ctypes.CDLL(_openblas()).scipy_openblas_get_corename  # the handle `load()` already opened
    except (OSError, AttributeError):
        return None
    corename.restype = ctypes.c_char_p
    return corename().decode()


def reason() -> str | None:
    """Why `load()` returned None (None when it loaded or was not tried)."""
    return _state.get("reason")
