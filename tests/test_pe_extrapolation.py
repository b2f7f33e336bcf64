"""experiments/pe_extrapolation's own scripts: the committed paired.md regenerates from the committed run files, and
its intervals agree with scipy's paired t test computed here independently of jaxformer.statistics."""

import glob
import importlib.util
import json
import os
import re
import shutil

import numpy as np
import pytest
from scipy import stats

HERE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "pe_extrapolation")
PAIRED_SWEEPS = sorted(os.path.basename(os.path.dirname(p)) for p in glob.glob(os.path.join(HERE, "*", "paired.md")))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _losses(sweep: str, variant: str, multiplier: int, *, sliding: bool = False) -> dict[int, float]:
    """seed -> loss at that eval length, read straight from the run files."""
    out = {}
    for path in glob.glob(os.path.join(HERE, sweep, "runs", f"position={variant},seed=*", "extrapolation.json")):
        with open(path) as f:
            r = json.load(f)
        x = next(x for x in r["lengths"] if x["multiplier"] == multiplier)
        if r["seed"] != 0:  # seed 0 chose the learning rates (select_lr.py): paired.py leaves it out
            out[r["seed"]] = x["sliding"]["loss"] if sliding else x["loss"]
    return out


def _scipy_cell(a: dict[int, float], b: dict[int, float], digits: int) -> str:
    seeds = sorted(a)
    x, y = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
    ci = stats.ttest_rel(x, y).confidence_interval(0.95)
    return f"{np.mean(x - y):+.{digits}f} [{ci.low:+.{digits}f}, {ci.high:+.{digits}f}]"


def test_the_comparison_has_its_paired_differences():
    assert "shakespeare" in PAIRED_SWEEPS


@pytest.mark.parametrize("sweep", PAIRED_SWEEPS)
def test_committed_paired_md_regenerates_byte_for_byte(sweep, tmp_path):
    with open(os.path.join(HERE, sweep, "paired.md")) as f:
        committed = f.read()
    root = os.path.dirname(os.path.dirname(HERE))
    command = committed.split("\n", 3)[2]
    with_dirs = tuple(os.path.join(root, d) for d in re.findall(r"--with ([^`\s]+)", command))
    copy = tmp_path / sweep
    shutil.copytree(os.path.join(HERE, sweep), copy, ignore=shutil.ignore_patterns("*.png", "paired.md"))
    text = _script("paired").report(str(copy), label=os.path.join("experiments", "pe_extrapolation", sweep),
                                    with_dirs=with_dirs, replace="--replace`" in command)
    assert committed == text, f"{sweep}/paired.md does not regenerate: run experiments/pe_extrapolation/paired.py"


@pytest.mark.parametrize("a,b,multiplier", [("kerple", "t5", 8), ("alibi", "kerple", 8), ("rope", "t5", 1),
                                            ("kerple", "xpos", 4)])
def test_pair_cells_agree_with_scipy_paired_t(a, b, multiplier):
    with open(os.path.join(HERE, "shakespeare", "paired.md")) as f:
        row = next(line for line in f if line.startswith(f"| {a} − {b} |"))
    cells = [c.strip() for c in row.strip().strip("|").split("|")][1:]
    expected = _scipy_cell(_losses("shakespeare", a, multiplier), _losses("shakespeare", b, multiplier), 3)
    assert expected in cells[[1, 2, 4, 8].index(multiplier)]


@pytest.mark.parametrize("variant", ["alibi", "kerple", "rope", "t5"])
def test_full_context_against_own_sliding_window_agrees_with_scipy(variant):
    with open(os.path.join(HERE, "shakespeare", "paired.md")) as f:
        row = next(line for line in f if line.startswith(f"| {variant} | (same) |"))
    cell_8x = row.strip().strip("|").split("|")[4]
    full, sliding = _losses("shakespeare", variant, 8), _losses("shakespeare", variant, 8, sliding=True)
    assert _scipy_cell(full, sliding, 4) in cell_8x
    # the word follows the sign of a significant difference
    test = stats.ttest_rel(list(full.values()), [sliding[s] for s in full])
    lo, hi = test.confidence_interval(0.95)
    assert f"p={test.pvalue:.2g} (" in cell_8x
    holm = float(cell_8x.split("(")[1].split(",")[0])
    assert holm >= test.pvalue and ("tie" in cell_8x) == (holm > 0.05)  # significant only after Holm
    if "tie" not in cell_8x:
        assert ("hurts" if lo > 0 else "helps") in cell_8x


def _ranking(text: str, multiplier: int) -> list[tuple[str, str]]:
    """(variant, mean loss) in the order of paired.md's ranking line at that eval length."""
    line = next(x for x in text.splitlines() if x.startswith(f"- {multiplier}× ("))
    line = re.sub(r"\(\**[+-]\d\.\d+ \[[^\]]*\] p=\S+ \([^)]*\)\**(?: tie(?: \(BH\))?)?\)", "",
                  line.split(": ", 1)[1])
    return re.findall(r"(\S+(?: \(\w+\))?) (\d\.\d{3})", line)


def test_replace_puts_the_rerun_variant_in_the_comparisons_place():
    """shakespeare_lr4/ holds only FIRE re-run at its best of 4 rates; `--with shakespeare --replace` is the
    comparison at every variant's best of 4 rates: FIRE once, from shakespeare_lr4's run files, among the others'
    runs from shakespeare/. Without --replace both FIREs are kept."""
    paired = _script("paired")
    lr4, main = os.path.join(HERE, "shakespeare_lr4"), os.path.join(HERE, "shakespeare")
    text = paired.report(lr4, with_dirs=(main,), replace=True)
    for m in (1, 8):
        ranked = dict(_ranking(text, m))
        assert len(ranked) == len(_ranking(text, m))  # every variant once
        expected = {os.path.basename(d).split(",")[0].removeprefix("position=")
                    for d in glob.glob(os.path.join(main, "runs", "position=*"))}
        if m > 1:
            expected.discard("learned")  # its table has 64 positions: n/a past 1x
        assert set(ranked) == expected
        assert ranked["fire"] == f"{np.mean(list(_losses('shakespeare_lr4', 'fire', m).values())):.3f}"
        assert ranked["rope"] == f"{np.mean(list(_losses('shakespeare', 'rope', m).values())):.3f}"
    assert ranked["fire"] != f"{np.mean(list(_losses('shakespeare', 'fire', 8).values())):.3f}"  # 2.357 vs 2.255
    row = next(x for x in text.splitlines() if x.startswith("| fire − rope |"))
    assert _scipy_cell(_losses("shakespeare_lr4", "fire", 8), _losses("shakespeare", "rope", 8), 3) in row
    assert "(shakespeare)" not in text
    kept = paired.report(lr4, with_dirs=(main,))
    assert "fire (shakespeare)" in dict(_ranking(kept, 8))


def test_replace_without_with_is_refused(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["paired.py", os.path.join(HERE, "shakespeare_lr4"), "--replace"])
    with pytest.raises(SystemExit) as e:
        _script("paired").main()
    assert e.value.code == 2 and "--replace needs --with" in capsys.readouterr().err
