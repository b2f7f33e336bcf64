"""Every relative link in the documentation resolves: the file or folder exists and, where a link names an
#anchor, the target Markdown file has a heading with that GitHub anchor (issue 35.5). Also holds the README to
its size and to listing every subcommand."""
import glob
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = sorted({os.path.relpath(p, ROOT) for pattern in ("README.md", "CONTRIBUTING.md", "docs/*.md",
                                                       "experiments/README.md", "experiments/*/README.md")
               for p in glob.glob(os.path.join(ROOT, pattern))})

# [text](target) and ![alt](target); a target ends at whitespace or ')' (an optional "title" is dropped)
LINK = re.compile(r"!?\[(?:[^\]\[]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
CODE_SPAN = re.compile(r"`[^`\n]*`")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def links(text):
    """The link targets of a Markdown text, outside code blocks and code spans."""
    text = CODE_SPAN.sub("", FENCE.sub("", text))
    return [m.group(1) for m in LINK.finditer(text)]


def anchor(heading):
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped (except '-' and '_'), spaces
    to '-'."""
    heading = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    heading = heading.replace("`", "").replace("*", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", heading).replace(" ", "-")


def anchors(path):
    """Every anchor a Markdown file offers, with GitHub's -1, -2 suffixes for repeated headings."""
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    seen, out = {}, set()
    for m in HEADING.finditer(text):
        a = anchor(m.group(1))
        out.add(a if a not in seen else f"{a}-{seen[a]}")
        seen[a] = seen.get(a, 0) + 1
    return out


def broken(doc):
    """The relative links of `doc` (a path under ROOT) that do not resolve, each with the reason."""
    with open(os.path.join(ROOT, doc), encoding="utf-8") as f:
        text = f.read()
    out = []
    for target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, frag = target.partition("#")
        full = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), path)) if path else os.path.join(ROOT, doc)
        if not os.path.exists(full):
            out.append(f"{target}: no such file")
            continue
        if frag:
            md = os.path.join(full, "README.md") if os.path.isdir(full) else full
            if not md.endswith(".md") or not os.path.exists(md):
                out.append(f"{target}: #{frag} names a heading, but the target is not a Markdown file")
            elif frag not in anchors(md):
                out.append(f"{target}: {os.path.relpath(md, ROOT)} has no heading #{frag}")
    return out


def test_the_docs_are_found():
    for doc in ("README.md", "CONTRIBUTING.md", "docs/index.md", "experiments/README.md"):
        assert doc in DOCS, f"{doc} is missing"
    assert len(DOCS) >= 12, DOCS


@pytest.mark.parametrize("doc", DOCS)
def test_every_relative_link_resolves(doc):
    assert not broken(doc), f"{doc}: " + "; ".join(broken(doc))


def test_the_checker_finds_what_is_broken(tmp_path, monkeypatch):
    """The checker itself can fail: a missing file, a missing heading, a heading on a non-Markdown file; and it
    passes code, external links, a folder's README anchor and GitHub's suffix for a repeated heading."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "README.md").write_text("# The `run` directory: files!\n## Notes\n## Notes\n")
    (tmp_path / "x.py").write_text("")
    (tmp_path / "a.md").write_text(
        "[ok](sub/) [ok](sub/#the-run-directory-files) [ok](sub/README.md#notes-1) [ok](https://x.org/#y)\n"
        "![img](x.py) `[code](nowhere.md)`\n```\n[fenced](nowhere.md)\n```\n[self](#a-heading)\n# A heading\n"
        "[bad](nope.md) [bad](sub/#nothing) [bad](x.py#top) [bad](sub/README.md#notes-2)\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", str(tmp_path))
    assert broken("a.md") == ["nope.md: no such file", "sub/#nothing: sub/README.md has no heading #nothing",
                              "x.py#top: #top names a heading, but the target is not a Markdown file",
                              "sub/README.md#notes-2: sub/README.md has no heading #notes-2"]


def test_readme_is_short_and_lists_every_subcommand():
    """README.md is the entry page (issue 35.5: <= 150 lines) and names every subcommand `jaxformer --help`
    lists."""
    from jaxformer import cli

    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        text = f.read()
    assert len(text.splitlines()) <= 150, len(text.splitlines())
    missing = [name for name in cli.SUBCOMMANDS if f"jaxformer {name}" not in text]
    assert not missing, f"README.md does not mention {missing}"


def layer_picture(text):
    """{layer number: the module names (`x.py`, `x/`) its rows name} from the first fenced block after
    '## The layers'."""
    block = FENCE.search(text, text.index("## The layers")).group(0).splitlines()[1:-1]
    rows, current = {}, None
    for line in block:
        m = re.match(r"^\s*(\d+)\s", line)
        if m:
            current = int(m.group(1))
        rows.setdefault(current, set()).update(re.findall(r"\b[\w]+(?:\.py|/)", line))
    return rows


def test_contributing_layer_picture_is_the_layer_test():
    """CONTRIBUTING.md's picture puts every module of tests/test_layers.py's LAYERS in its layer (the picture is
    the test's list, drawn: a module added to LAYERS needs a place in the picture)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_layers", os.path.join(ROOT, "tests", "test_layers.py"))
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    with open(os.path.join(ROOT, "CONTRIBUTING.md"), encoding="utf-8") as f:
        rows = layer_picture(f.read())
    assert sorted(rows) == list(range(len(layers.LAYERS))), sorted(rows)
    for i, group in enumerate(layers.LAYERS):
        for module in group:
            name = module.split(".", 1)[1].replace(".", "/")
            drawn = {f"{name}.py", f"{name}/"}  # a module or a package (configs/ is packaged from the root)
            assert drawn & rows[i], f"CONTRIBUTING.md's layer picture lacks {name}.py or {name}/ in layer {i}"


def test_contributing_names_files_that_exist():
    """Every `jaxformer/...`, `tests/...` or `configs/...` path CONTRIBUTING.md names exists (its where-to-add
    entries list files: a renamed one must be renamed there too)."""
    with open(os.path.join(ROOT, "CONTRIBUTING.md"), encoding="utf-8") as f:
        text = f.read()
    paths = set(re.findall(r"`((?:jaxformer|tests|configs|benchmarks)/[\w/.]+)`", text))
    assert len(paths) >= 20, paths
    missing = sorted(p for p in paths if not os.path.exists(os.path.join(ROOT, p)))
    assert not missing, f"CONTRIBUTING.md names files that do not exist: {missing}"


def test_docs_index_links_every_page_and_the_readme_links_the_indexes():
    """docs/index.md is the way in: every page of docs/ is linked from it, and the README links it, CONTRIBUTING.md
    and experiments/README.md (a page added without an index line is found here)."""
    import glob

    with open(os.path.join(ROOT, "docs", "index.md"), encoding="utf-8") as f:
        index = f.read()
    pages = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "docs", "*.md"))} - {"index.md"}
    unlinked = sorted(p for p in pages if f"({p}" not in index)
    assert pages and not unlinked, f"docs/index.md does not link {unlinked}"
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    for target in ("docs/index.md", "CONTRIBUTING.md", "experiments/README.md"):
        assert f"({target}" in readme, f"README.md does not link {target}"


def test_experiments_index_has_a_row_per_experiment():
    """experiments/README.md indexes every experiment folder that has a README (findings live only there)."""
    with open(os.path.join(ROOT, "experiments", "README.md"), encoding="utf-8") as f:
        index = f.read()
    experiments = sorted(d for d in os.listdir(os.path.join(ROOT, "experiments"))
                         if os.path.isfile(os.path.join(ROOT, "experiments", d, "README.md")))
    missing = [d for d in experiments if f"({d}/README.md)" not in index]
    assert experiments and not missing, f"experiments/README.md does not index {missing}"
