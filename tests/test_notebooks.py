"""The committed notebooks run from top to bottom (nbclient + ipykernel, the dev extra): a failing cell fails CI."""

import glob
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "notebooks", "*.ipynb")))


def test_there_is_a_notebook():
    assert any(p.endswith("quickstart.ipynb") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs(path, shakespeare_dir, monkeypatch):
    import nbclient
    import nbformat

    monkeypatch.setenv("JAXFORMER_MANUAL_DIR", shakespeare_dir)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    nb = nbformat.read(path, as_version=4)
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": os.path.dirname(path)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
    html = [o["data"]["text/html"] for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if "text/html" in o.get("data", {})]
    if path.endswith("quickstart.ipynb"):  # the attention viewer, inline
        assert any(h.startswith("<iframe srcdoc=") and "attention" in h for h in html)
