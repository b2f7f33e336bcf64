"""The run directory: everything a later command (`sample`, `eval`, `attention`, `report`) needs.

    <workdir>/config.json      resolved config
              manifest.json    versions, devices, the CPU kind (vendor, family, model, instruction sets), XLA
                               flags, data hash, git revision, config hash
              metrics.jsonl    one JSON object per logged step / evaluation (deterministic: no wall-clock values)
              timing.jsonl     wall-clock figures per logged step (tokens/s, ms/step), kept apart so that
                               metrics.jsonl is bitwise reproducible
              events.*         TensorBoard
              checkpoints/     orbax (latest/ keep-last-k, best/ by validation loss, unusable/ set aside)
              .lock            {pid, host} of the process writing the run (one writer at a time)
              vocab.json       tokenizer (characters), or tokenizer.json (subwords: data.tokenizer=bpe or an import)
              samples.txt      text sampled at the end
              plots/           loss.png
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import ml_collections

from jaxformer import config as config_lib
from jaxformer import fingerprint, matmul

log = logging.getLogger("jaxformer")


class RunDirError(ValueError):
    """A workdir that cannot be used as asked (one line, says what to do)."""


def default_workdir(config: str = "", position: str = "", overrides=()) -> str:
    """`runs/<config>-<position>[-<overrides>]-<YYYYmmdd-HHMMSS>` (e.g. runs/copy_task-rope-theta5e5-20261206-131500):
    runs that differ by an encoding or an override (`override_tag`) can be told apart by name; a directory that
    exists already (two runs in one second) gets -2, -3, ..."""
    name = os.path.splitext(os.path.basename(config.rstrip("/")))[0] if config.endswith(".py") else config
    name = name.split(".")[-1]  # a packaged name such as sweeps.tiny
    parts = [p for p in (name, position, override_tag(overrides), datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
             if p]
    base = os.path.join("runs", "-".join(parts))
    path, i = base, 1
    while os.path.exists(path):
        i += 1
        path = f"{base}-{i}"
    return path


# Overrides that say where things are or how a run is shown, not what it trains: left out of run names.
_UNNAMED = ("model.position.name", "data.manual_dir", "data.data_dir", "train.progress", "train.sample_chars")
TAG_MAX = 48  # characters of overrides in a run name; longer: cut, with a hash of them all


def _compact(value: str) -> tuple[str, bool]:
    """(short text, is a word) of an override's value: 500000 -> 5e5, 3e-04 -> 3e-4, 0.25 -> 0.25, yarn -> yarn."""
    text = value.strip().strip("'\"")
    try:
        number = float(text)
    except ValueError:
        word = text.lower() if text.lower() in ("true", "false") else text
        return "".join(c if c.isalnum() or c in "._+" else "_" for c in word.split("/")[-1]).strip("_"), True
    if number == int(number) and abs(number) < 10000:
        return str(int(number)), False
    if number == int(number):
        digits = str(int(abs(number))).rstrip("0")
        exponent = len(str(int(abs(number)))) - 1
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return ("-" if number < 0 else "") + f"{mantissa}e{exponent}", False
    mantissa, _, exponent = f"{number:e}".partition("e")
    scientific = f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
    plain = f"{number:g}".replace("e-0", "e-").replace("e+0", "e").replace("e+", "e")
    return min(plain, scientific, key=len), False


def override_tag(overrides) -> str:
    """The part of a run's name that its `--config.a.b=v` overrides make: one piece per field, sorted by field,
    `<leaf><number>` (theta5e5, fraction0.25, steps200), a word value alone (yarn, rmsnorm; `data.name` by its last
    part), `<leaf>` / `no_<leaf>` for true / false; at most TAG_MAX characters (then a hash of all of them)."""
    pieces = {}
    for arg in overrides:
        field, _, value = arg[len("--config."):].partition("=")
        if field in _UNNAMED or not value:
            continue
        leaf = field.split(".")[-1]
        text, word = _compact(value)
        if text in ("true", "false"):
            pieces[field] = leaf if text == "true" else f"no_{leaf}"
        else:
            pieces[field] = text if word else f"{leaf}{text}"
    ordered = [pieces[f] for f in sorted(pieces)]
    tag = "-".join(ordered)
    if len(tag) > TAG_MAX:  # the whole pieces that fit, then a hash that tells the full sets apart
        digest = hashlib.sha256("\n".join(f"{f}={pieces[f]}" for f in sorted(pieces)).encode()).hexdigest()[:6]
        kept = []
        for piece in ordered:
            if len("-".join([*kept, piece, digest])) > TAG_MAX:
                break
            kept.append(piece)
        tag = "-".join([*kept, digest])
    return tag


def prepare(workdir: str, *, resume: bool, overwrite: bool) -> bool:
    """Makes `workdir` ready; returns True when there is a run to resume.

    A non-empty workdir is refused unless `resume` (continue it) or `overwrite` (delete it first). `overwrite` only
    removes `workdir` itself, and refuses paths that are not plainly a run directory (the filesystem root, the home
    directory, the current directory or one of its parents).
    """
    workdir = os.path.abspath(workdir)
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise RunDirError(f"--workdir={workdir} is a file, not a directory")
    # The lock first: a second train, --resume or --overwrite of a run being trained is refused untouched. (A
    # directory that is not a run is refused below without a lock file ever written into it.)
    if os.path.exists(os.path.join(workdir, "config.json")):
        acquire(workdir)
    try:
        return _prepare(workdir, resume=resume, overwrite=overwrite)
    except BaseException:
        release(workdir)
        raise


def _prepare(workdir: str, *, resume: bool, overwrite: bool) -> bool:
    exists = os.path.isdir(workdir) and bool(set(os.listdir(workdir)) - {LOCK})
    if resume and not os.path.exists(os.path.join(workdir, "config.json")):
        raise RunDirError(f"--resume: --workdir={workdir} holds no run to continue (no config.json); drop --resume "
                          "to start a new run there")
    if exists and resume:
        return True
    if exists and not overwrite:
        raise RunDirError(f"--workdir={workdir} is not empty; pass --resume to continue it or --overwrite to "
                          "replace it")
    if exists and overwrite:
        protected = {os.path.abspath(os.sep), os.path.expanduser("~")}
        cwd = os.getcwd()
        if workdir in protected or cwd == workdir or cwd.startswith(workdir + os.sep):
            raise RunDirError(f"--overwrite refuses to delete {workdir}: it is the root, home or current directory")
        if not os.path.exists(os.path.join(workdir, "config.json")):
            raise RunDirError(f"--overwrite refuses to delete {workdir}: it has no config.json, so it is not a run "
                              "directory")
        for name in os.listdir(workdir):  # all but the lock this process holds: no moment without a writer
            if name != LOCK:
                path = os.path.join(workdir, name)
                shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"--workdir={workdir} cannot be made ({e.strerror}: {e.filename}); choose a folder you "
                          "can write to") from None
    acquire(workdir)
    return False


# ------------------------------------------------------------------------------------------------------- the lock

LOCK = ".lock"
_held: dict[str, int] = {}  # the run directories this process has locked -> the open lock file's descriptor


def acquire(workdir: str) -> None:
    """Locks `workdir` for this process: an exclusive `fcntl.flock` on `<workdir>/.lock`, held (the file kept open)
    until `release`; the file records {pid, host, started} for the message another process gets.

    The kernel drops the lock when its process dies (kill -9 included), so a lock file left behind is stale by
    construction and taking it over is the same race-free `flock` as any acquisition: of any number of processes
    trying at once exactly one holds it. A file replaced between our open and our flock (a releaser unlinking it)
    is detected by comparing inodes, and the acquisition retried. A lock held by another process is a one-line
    RunDirError naming it. flock works across hosts on NFSv4 (Linux emulates it with POSIX locks there).
    """
    import fcntl

    workdir = os.path.abspath(workdir)
    if workdir in _held:
        return
    path = os.path.join(workdir, LOCK)
    for _ in range(100):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunDirError(f"--workdir={workdir}: cannot open its lock file {path} ({e.strerror}); the run "
                              "directory must be writable by you to train or resume it") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = _read_lock(path) or {}
            raise RunDirError(f"--workdir={workdir} is in use by process {holder.get('pid')} on "
                              f"{holder.get('host')} (since {holder.get('started')}); wait for it to end or stop "
                              "it") from None
        except OSError as e:
            os.close(fd)
            raise RunDirError(f"--workdir={workdir}: cannot lock {path} ({e.strerror})") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # unlinked by its releaser between our open and our flock: lock the file now at `path`
            os.close(fd)
            continue
        previous = _read_lock(path)
        if previous and not _stale(previous):
            # Unlocked, yet naming a live process (or one on another host, which cannot be checked from here): a
            # writer of a version before the flock, or a PID reused since its writer died. Refused, as before.
            os.close(fd)
            raise RunDirError(f"--workdir={workdir} is in use by process {previous.get('pid')} on "
                              f"{previous.get('host')} (since {previous.get('started')}); wait for it to end or stop "
                              f"it (if that process is gone, delete {path})")
        if previous and (previous.get("pid"), previous.get("host")) != (os.getpid(), platform.node()):
            log.warning("replacing the stale lock %s of process %s on %s (no longer running)", path,
                        previous.get("pid"), previous.get("host"))
        me = {"pid": os.getpid(), "host": platform.node(),
              "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(me).encode(), 0)
        except OSError as e:
            os.close(fd)
            raise RunDirError(f"--workdir={workdir}: cannot write its lock file {path} ({e.strerror})") from None
        _held[workdir] = fd
        return
    raise RunDirError(f"--workdir={workdir}: could not take the lock {path}; another process keeps replacing it")


def _read_lock(path: str) -> dict | None:
    try:
        with open(path) as f:
            holder = json.load(f)
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None


def _stale(holder: dict) -> bool:
    """Whether the process a lock file names is gone (same host, PID not running)."""
    if holder.get("host") != platform.node():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def release(workdir: str) -> None:
    """Ends this process's lock of `workdir` (nothing if it holds none): the file is removed while still locked,
    then closed, so a contender that opened it meanwhile sees it replaced (`acquire`). A directory made read-only
    meanwhile keeps the file, unlocked: stale, taken over by the next writer."""
    workdir = os.path.abspath(workdir)
    fd = _held.pop(workdir, None)
    if fd is None:
        return
    try:
        os.unlink(os.path.join(workdir, LOCK))
    except OSError:
        pass
    os.close(fd)


# What a resumed run may change: how it is run, not what is trained (the model, its data, the seed of its data
# order). `--resume --config.train.steps=4000` extends a run; a new mesh reshards it.
RESUME_MAY_CHANGE = ("train.", "optim.", "mesh.", "model.attention.implementation", "model.attention.block_size",
                     "model.remat", "data.manual_dir", "data.data_dir", "data.cache_dir")
RESUME_FIXED = ("train.seed",)


# Fields a run does not read, so a difference there is no difference (a new default, a legacy saved value):
# the settings of the positional variants it does not use, the synthetic-task settings of a text run (the default
# changed on 2026-12-06), and fields read only in a setting it does not use (the skip limit only under
# nonfinite=skip, YaRN's ramp only with its scaling, randomize_per only with randomized positions).
_POSITION_SHARED = ("name", "randomize_max_len", "randomize_per")


def unused_field(field: str, *cfgs: ml_collections.ConfigDict) -> bool:
    """Whether dotted `field` builds and changes nothing in a run of each of `cfgs` (so resume and a sweep's
    same-point check leave it out of the comparison). The one rule for both (`check_resume_config`,
    `sweeps.running.check_same_config`)."""
    return all(_unused_in(field, cfg) for cfg in cfgs)


def _unused_in(field: str, cfg: ml_collections.ConfigDict) -> bool:
    parts = field.split(".")
    position = cfg.model.position
    if field.startswith("model.position.") and parts[2] not in (*_POSITION_SHARED, position.get("name")):
        return True  # another variant's settings
    if field.startswith("data.synthetic.") and not str(cfg.data.get("name", "")).startswith("synthetic/"):
        return True
    return ((field == "train.max_skipped_steps" and cfg.train.get("nonfinite") != "skip")
            or (field == "model.position.rope.yarn_ramp" and (position.get("rope") or {}).get("scaling") != "yarn")
            or (field == "model.position.randomize_per" and not position.get("randomize_max_len")))


def check_resume_config(workdir: str, saved: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict) -> list[str]:
    """The dotted fields in which `cfg` differs from the run's saved config; a one-line error if one of them may not
    change on resume. Both configs resolved (0 = derived fields filled in)."""
    return checked_changes(  # a field the run being resumed never read is no change (`unused_field`)
        saved, cfg, ignore=lambda k: unused_field(k, saved),
        may_change=lambda k: k not in RESUME_FIXED and k.startswith(RESUME_MAY_CHANGE),
        error=lambda k, new, old, more: (
            f"--resume: {k}={new!r} differs from the run's {old!r} in {workdir}/config.json{more}; a resumed run may "
            "change only train.* (not train.seed), optim.*, mesh.*, the attention implementation and data paths -- "
            "start a new run in another --workdir"))


# What a run started from another run's parameters (`train --init-from`) may change in the model section: how
# positions are scaled (the variant's extension fields, e.g. RoPE's scaling/factor/original_max_len; randomized
# positions) and how it is computed. Anything else there is a different model; data.*, optim.* and train.* are free.
INIT_MAY_CHANGE = ("model.position.randomize_max_len", "model.position.randomize_per", "model.attention.",
                   "model.dropout", "model.remat", "model.dtype")


def init_may_change(field: str, cfg: ml_collections.ConfigDict) -> bool:
    """Whether `field` may differ from the source run's config in a run initialised from it."""
    from jaxformer import positional

    if not field.startswith("model.") or field.startswith(INIT_MAY_CHANGE):
        return True
    parts = field.split(".")
    if field.startswith("model.position.") and len(parts) == 4:
        name = cfg.model.position.name
        if parts[2] != name:
            return True  # another variant's settings: unused by this model
        return parts[3] in positional.get_positional_encoding(name).extension_fields
    return False


# What a config file given with `--init-from` still decides in the model section: how the model is run, not which.
CONFIG_MODEL_FIELDS = ("dropout", "remat", "attention")


def with_source_model(cfg: ml_collections.ConfigDict,
                      source_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`--config FILE --init-from RUN`: the file's recipe (data, optim, train) on RUN's model -- every `model` field
    but CONFIG_MODEL_FIELDS from RUN's saved config -- and `data.block_size` 0 = RUN's context (its block size)."""
    d = cfg.to_dict()
    d["model"] = {**source_cfg.model.to_dict(), **{k: d["model"][k] for k in CONFIG_MODEL_FIELDS}}
    if d["data"]["block_size"] == 0:
        d["data"]["block_size"] = source_cfg.data.block_size
    return ml_collections.ConfigDict(d)


def check_init_config(source: str, source_cfg: ml_collections.ConfigDict, cfg: ml_collections.ConfigDict, *,
                      what: str = "--init-from") -> list[str]:
    """The dotted fields in which `cfg` differs from the source run's saved config; a one-line error naming the first
    that would give another model (other parameter shapes or another function of them). Both resolved."""
    return checked_changes(
        source_cfg, cfg, may_change=lambda k: init_may_change(k, cfg),
        error=lambda k, new, old, more: (
            f"{what}: {k}={new!r} differs from {old!r} in {source}/config.json{more}; it would change the trained "
            "model: only data.*, optim.*, train.*, the attention implementation and the position variant's extension "
            "fields (e.g. rope.scaling/factor/original_max_len, randomize_max_len) may change"))


def checked_changes(old: ml_collections.ConfigDict, new: ml_collections.ConfigDict, *,
                    may_change: Callable[[str], bool], error: Callable[[str, Any, Any, str], str],
                    ignore: Callable[[str], bool] = lambda field: False, common_only: bool = False,
                    name_more: bool = False, exception: type[Exception] = RunDirError) -> list[str]:
    """The dotted fields in which config `new` differs from `old` (both resolved; a change's cause first, fields
    `ignore` names left out, and with `common_only` the fields only one of them has), after refusing the change:
    `exception` (a `RunDirError`) with the one line `error(field, new value, old value, more)` for the first field
    that `may_change` says may not, `more` being " (and N more)" (`name_more`: " (and N more: a, b)") or "". The one
    compare-and-refuse of resume (`check_resume_config`), `--init-from` and eval-time overrides
    (`check_init_config`) and a sweep point's run directory (`sweeps.running.check_same_config`)."""
    a, b = config_lib.flat_fields(old), config_lib.flat_fields(new)
    missing = object()
    fields = a.keys() & b.keys() if common_only else a.keys() | b.keys()
    changed = config_lib.cause_first(k for k in fields if a.get(k, missing) != b.get(k, missing) and not ignore(k))
    fixed = [k for k in changed if not may_change(k)]
    if fixed:
        k, others = fixed[0], fixed[1:]
        more = f" (and {len(others)} more{': ' + ', '.join(others) if name_more else ''})" if others else ""
        raise exception(error(k, b.get(k, "<absent>"), a.get(k, "<absent>"), more))
    return changed


def atomic_write(path: str, text: str) -> None:
    """Writes `text` to `path` through a temporary file and a rename: a kill leaves the old file or the new one,
    never half of one (the one place the project writes a file this way)."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str, obj) -> None:
    """Indented, sorted JSON, written atomically."""
    atomic_write(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str):
    with open(path) as f:
        return json.load(f)


def save_config(workdir: str, cfg: ml_collections.ConfigDict) -> None:
    atomic_write(os.path.join(workdir, "config.json"), config_lib.to_json(cfg) + "\n")


def load_config(workdir: str) -> ml_collections.ConfigDict:
    path = os.path.join(workdir, "config.json")
    if not os.path.exists(path):
        raise RunDirError(f"--workdir={workdir} has no config.json; is it a run directory made by `jaxformer train`?")
    with open(path) as f:
        return config_lib.from_json(f.read())


def git_revision() -> str | None:
    """The revision of the code this process loaded (read once, at import, not when a later run starts)."""
    return _GIT_REVISION


def _read_git_revision() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


_GIT_REVISION = _read_git_revision()


def manifest(cfg: ml_collections.ConfigDict, *, data_hash: str, init_from: dict | None = None) -> dict:
    import flax
    import jax
    import jaxlib
    import optax
    import orbax.checkpoint

    devices = jax.devices()
    return {
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "versions": {"python": sys.version.split()[0], "jax": jax.__version__, "jaxlib": jaxlib.__version__,
                     "flax": flax.__version__, "optax": optax.__version__,
                     "orbax_checkpoint": getattr(orbax.checkpoint, "__version__", "unknown")},
        "device_kind": devices[0].device_kind,
        "cpu": fingerprint.cpu(),  # vendor, family, model, instruction sets: XLA:CPU picks its kernels by them
        "platform": devices[0].platform,
        "device_count": jax.device_count(),
        "process_count": jax.process_count(),
        "host": platform.node(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "cpu_matmul": matmul.cpu_backend_in_use(),
        "cpu_matmul_choice": matmul.cpu_backend_choice(),  # why that path: measured (medians, cache) or set
        "openblas_core": matmul.blas_core(),
        "data_hash": data_hash,
        "git_revision": git_revision(),
        "config_hash": config_lib.config_hash(cfg),
        "argv": sys.argv,
        **({"init_from": init_from} if init_from else {}),  # where the parameters came from (train --init-from)
    }


# What can change a run's numbers between two machines or installs (not `created`, `host` or `argv`); the CPU
# kind first: bitwise reproduction holds only on the same kind.
NUMERIC_ENVIRONMENT = ("cpu", "versions", "platform", "device_kind", "device_count", "process_count", "xla_flags",
                       "cpu_matmul", "openblas_core", "data_hash", "git_revision")


def environment_differences(recorded: dict, now: dict) -> list[str]:
    """One line per manifest field, of those that can change the numbers, that differs between two manifests,
    e.g. "openblas_core: recorded=SkylakeX, now=Haswell (OPENBLAS_CORETYPE=SkylakeX selects the recorded kernels)".
    A field an older manifest lacks reads "(not recorded)"."""
    missing = "(not recorded)"
    lines = []
    for key in NUMERIC_ENVIRONMENT:
        a, b = recorded.get(key, missing), now.get(key, missing)
        if key == "cpu":
            line = cpu_kind_difference(a if isinstance(a, dict) else None, b if isinstance(b, dict) else None)
            lines += [line] if line else []
        elif isinstance(a, dict) and isinstance(b, dict):
            lines += [f"{key}.{k}: recorded={a.get(k, missing)}, now={b.get(k, missing)}"
                      for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        elif a != b:
            line = f"{key}: recorded={a}, now={b}"
            if key == "openblas_core" and a not in (None, missing):
                line += f" (OPENBLAS_CORETYPE={a} selects the recorded kernels)"
            elif key == "openblas_core" and a == missing and recorded.get("cpu_matmul") == "blas":
                line += (" (manifests before 2026-12-04 do not name it; OpenBLAS then chose by its own CPU detection, "
                         "which an empty OPENBLAS_CORETYPE= restores)")
            lines.append(line)
    return lines


def cpu_kind_difference(recorded: dict | None, now: dict | None) -> str | None:
    """One line when two manifests' CPU kinds (vendor, family, model, instruction sets) differ or the recorded one
    is unknown, e.g. "cpu: recorded=AuthenticAMD family 26 model 2, now=GenuineIntel family 6 model 167 (+amx_bf16,
    ...): another CPU kind; XLA picks other kernels there, so numbers agree to float32 rounding, not bit for bit";
    None for the same kind."""
    def kind(c: dict | None) -> str:
        return f"{c.get('vendor')} family {c.get('family')} model {c.get('model')}" if c else "(not recorded)"

    fields = ("vendor", "family", "model", "flags")
    if not recorded and not now:
        return None
    if recorded and now and all(recorded.get(f) == now.get(f) for f in fields):
        return None
    extra = ""
    if recorded and now and recorded.get("flags") is not None and now.get("flags") is not None:
        gained = [f"+{f}" for f in now["flags"] if f not in recorded["flags"]]
        lost = [f"-{f}" for f in recorded["flags"] if f not in now["flags"]]
        extra = f" ({', '.join(gained + lost)})" if gained or lost else ""
    why = ("another CPU kind: XLA picks other kernels there, so the numbers agree to float32 rounding, not bit for bit"
           if recorded else "the recorded run's CPU kind is unknown (a manifest from before it was kept); on another "
           "kind the numbers agree to float32 rounding, not bit for bit")
    return f"cpu: recorded={kind(recorded)}, now={kind(now)}{extra}: {why}"


def read_metrics(workdir: str) -> list[dict]:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    return [record for _, record in _read_lines(path)]


def _read_lines(path: str) -> list[tuple[str, dict]]:
    """(line, record) of a JSON-lines file. A torn last line (a process killed mid-write) is left out with a
    warning; a bad line before the end is a one-line error naming the file and the line."""
    with open(path) as f:
        lines = [line for line in f if line.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            record = json.loads(line)
        except ValueError:
            if i == len(lines) - 1:
                log.warning("%s: dropped its torn last line %d (a write cut short)", path, i + 1)
                break
            raise RunDirError(f"{path}: line {i + 1} is not JSON ({line.strip()[:40]!r}); the file is damaged, "
                              "remove that line to continue") from None
        out.append((line if line.endswith("\n") else line + "\n", record))
    return out


def recorded_steps(workdir: str) -> int:
    """The last step metrics.jsonl records (0 when none)."""
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return 0
    return max((record.get("step", 0) for _, record in _read_lines(path)), default=0)


def truncate_metrics(workdir: str, step: int) -> None:
    """On resume from `step`: drop log lines past it (they will be logged again, identically), and a torn last
    line (with a warning)."""
    for name in ("metrics.jsonl", "timing.jsonl"):
        path = os.path.join(workdir, name)
        if not os.path.exists(path):
            continue
        kept = [line for line, record in _read_lines(path) if record.get("step", 0) <= step]
        atomic_write(path, "".join(kept))


class MetricsWriter:
    """Appends JSON lines to metrics.jsonl / timing.jsonl and mirrors scalars to TensorBoard when available."""

    def __init__(self, workdir: str, *, enabled: bool = True):
        self.workdir, self.enabled = workdir, enabled
        self._tb = None
        if enabled:
            try:
                from tensorboardX import SummaryWriter

                self._tb = SummaryWriter(workdir)
            except ImportError:  # TensorBoard events are optional; the JSON lines are the record
                self._tb = None

    def write(self, record: dict, *, timing: dict | None = None) -> None:
        if not self.enabled:
            return
        with open(os.path.join(self.workdir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
        if timing:
            with open(os.path.join(self.workdir, "timing.jsonl"), "a") as f:
                f.write(json.dumps({"step": record["step"], **timing}, sort_keys=True) + "\n")
        if self._tb is not None:
            for key, value in {**record, **(timing or {})}.items():
                if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):  # TB prints on NaN
                    self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
