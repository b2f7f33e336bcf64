"""The package's import layering (docs/CONVENTIONS.md), checked on the source: every `import` of a jaxformer module,
function-level ones included, goes to a lower layer (or within one package of the same layer), and the import
graph has no cycle. No exceptions: the entry functions below the CLI parse their options with `jaxformer.options`
(layer 0), never with `cli`."""

import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxformer")
# configs/ is installed as jaxformer.configs (pyproject.toml's package-dir): checked like the package's own modules.
CONFIGS = {"configs": "jaxformer.configs"}

# Lowest first. A module may import modules of lower layers; within a layer, only modules of its own package
# (e.g. jaxformer.data.text -> jaxformer.data.tokenizer). "jaxformer.configs" is the packaged configs directory.
LAYERS = [
    # the maths (import nothing from jaxformer), the data, and leaf utilities with no jaxformer imports
    ["jaxformer.attention", "jaxformer.positional", "jaxformer.losses", "jaxformer.data", "jaxformer.kernels",
     "jaxformer.sharding", "jaxformer.optim",
     "jaxformer.checkpoint", "jaxformer.plots", "jaxformer.statistics",
     "jaxformer.options",  # options: every subcommand's argument table (argparse only)
     "jaxformer.fingerprint",  # the machine fingerprint recorded beside goldens and in run manifests
     "jaxformer.summaries"],  # what eval and import print (plain dicts in, text out)
    # the experiment configs: they start from the layer-0 registries' defaults (positional, data) and from each
    # other, never from config.py (which loads them) or anything that builds or runs a model
    ["jaxformer.configs"],
    ["jaxformer.model", "jaxformer.matmul"],  # NNX modules; the matmul edge
    ["jaxformer.config"],  # config: defaults, resolution, checks against the registries
    ["jaxformer.platform", "jaxformer.run", "jaxformer.sample"],  # machine settings; the run directory; generation
    ["jaxformer.loader"],  # building a model and loading a run
    ["jaxformer.prepare"],  # (config, workdir, intent) -> one resolved, validated run
    ["jaxformer.train"],
    ["jaxformer.analysis", "jaxformer.extrapolation", "jaxformer.convert", "jaxformer.runlist",
     "jaxformer.effective_context"],  # research tools
    ["jaxformer.sweeps"],  # sweeps: points (the sweep config), running, reports (aggregate, plots)
    ["jaxformer.sweep", "jaxformer.api"],  # the old sweep module's names; the Python API for a run
    ["jaxformer.cli"],  # the entry point
]
MATHS = ("jaxformer.attention", "jaxformer.positional")
def _module_files():
    trees = [(ROOT, "jaxformer")] + [(os.path.join(os.path.dirname(ROOT), d), m) for d, m in CONFIGS.items()]
    for top, package in trees:
        for dirpath, _, files in os.walk(top):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(dirpath, name)
                    rel = ".".join([package, *os.path.relpath(path, top)[:-3].split(os.sep)])
                    yield (rel[:-len(".__init__")] if rel.endswith(".__init__") else rel), path


def _known(modules, name):
    """The longest known module that `name` is or lies inside (`from jaxformer import x`: x may be a module)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    files = dict(_module_files())
    graph = {}
    for module, path in files.items():
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
        targets = set()
        for node in ast.walk(tree):  # every import statement, at any depth (function-level ones included)
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                names = [f"{base}.{a.name}" for a in node.names] + [base]
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.fullmatch(r"jaxformer(\.\w+)+:\w+", node.value)):
                names = [node.value.split(":")[0]]  # "module:function", imported by name (cli.SUBCOMMANDS)
            else:
                continue
            for name in names:
                if name.startswith("jaxformer"):
                    found = _known(files, name)
                    if found and found != module:
                        targets.add(found)
        graph[module] = targets
    # `from jaxformer import x` also names the package jaxformer itself: not an edge of interest.
    return {m: {t for t in ts if t != "jaxformer"} for m, ts in graph.items()}


def _layer(module):
    for i, group in enumerate(LAYERS):
        for prefix in group:
            if module == prefix or module.startswith(prefix + "."):
                return i, prefix
    return None


def test_every_module_has_a_layer():
    missing = [m for m in import_graph() if m != "jaxformer" and _layer(m) is None]
    assert not missing, f"add these modules to LAYERS in tests/test_layers.py: {missing}"


def test_no_module_imports_a_higher_layer():
    wrong = []
    for module, targets in import_graph().items():
        if module == "jaxformer":
            continue
        (mine, my_group) = _layer(module)
        for target in targets:
            theirs, their_group = _layer(target)
            if theirs > mine or (theirs == mine and their_group != my_group):
                wrong.append(f"{module} (layer {mine}) imports {target} (layer {theirs})")
    assert not wrong, "\n".join(sorted(wrong))


@pytest.mark.parametrize("module", MATHS)
def test_the_maths_imports_nothing_from_jaxformer(module):
    assert import_graph()[module] == set()


def test_the_configs_are_checked_and_import_only_the_registries_and_each_other():
    graph = import_graph()
    configs = [m for m in graph if m.startswith("jaxformer.configs.")]
    assert "jaxformer.configs.default" in configs and "jaxformer.configs.sweeps.positional" in configs
    allowed = {"jaxformer.positional", "jaxformer.data"}
    wrong = {m: sorted(t for t in graph[m] if t not in allowed and not t.startswith("jaxformer.configs"))
             for m in configs}
    assert not any(wrong.values()), {m: ts for m, ts in wrong.items() if ts}


def test_no_import_cycles():
    graph = import_graph()
    state, stack, cycles = {}, [], []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for t in sorted(graph.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m)
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    """The walker itself: a function-level import of a higher layer and a cycle are both reported."""
    pkg = tmp_path / "jaxformer"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "attention.py").write_text("def f():\n    from jaxformer import train\n")
    (pkg / "train.py").write_text("from . import attention\n")
    global ROOT
    saved, ROOT = ROOT, str(pkg)
    try:
        graph = import_graph()
        assert graph["jaxformer.attention"] == {"jaxformer.train"}
        assert graph["jaxformer.train"] == {"jaxformer.attention"}
        with pytest.raises(AssertionError, match="jaxformer.attention .layer 0. imports jaxformer.train"):
            test_no_module_imports_a_higher_layer()
        with pytest.raises(AssertionError, match="->"):
            test_no_import_cycles()
    finally:
        ROOT = saved
