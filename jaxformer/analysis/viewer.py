"""attention.html: one self-contained file to explore captured attention in a browser (no network, no CDN).

The page (template `viewer.html` beside this file: inline CSS and JS) shows the tokens twice, as queries
(left) and keys (right), with a line from query i to key j whose opacity is the weight, BertViz-style, or the
T x T matrix. Choose the layer and the head, or all heads overlaid (lines in each head's colour; the matrix
shows their mean). Hovering or clicking a token highlights what it attends to (its row, blue) and what attends
to it (its column, orange), with the top weights listed in the side panel next to the per-head diagnostics.

The data travels inline as JSON; the weights as little-endian uint16 (`round(w * 65535)`, error below 1e-5),
base64-encoded: about 2.7 bytes per weight, so 4 layers x 4 heads x 300 tokens make a ~4 MB page.

In a notebook, `show(workdir, text)` (or `show(capture)`) returns the page as an IPython display object.
"""

from __future__ import annotations

import base64
import html
import importlib.resources
import json
import logging

import numpy as np

from jaxformer.analysis.capture import Capture

log = logging.getLogger("jaxformer")
TEMPLATE = "viewer.html"  # beside this file (package data)


def encode_weights(weights: np.ndarray) -> str:
    """float weights in [0, 1] -> base64 of little-endian uint16 `round(w * 65535)`."""
    q = np.round(np.clip(np.asarray(weights, np.float64), 0.0, 1.0) * 65535).astype("<u2")
    return base64.b64encode(q.tobytes()).decode("ascii")


def decode_weights(text: str, shape) -> np.ndarray:
    """The inverse of `encode_weights` (for tests and for reading a page back)."""
    return (np.frombuffer(base64.b64decode(text), "<u2").astype(np.float32) / 65535).reshape(shape)


def page_data(cap: Capture, diagnostics: dict | None = None) -> dict:
    data = {"tokens": list(cap.tokens), "layers": [int(x) for x in cap.layers],
            "heads": [int(x) for x in cap.heads], "weights": encode_weights(cap.weights_LxHxTxT),
            "info": cap.info}
    if cap.qk is not None:  # the neuron view's q and k vectors, 4 decimals
        data["qk"] = np.round(np.asarray(cap.qk, np.float64), 4).tolist()
    if cap.token_types is not None:
        data["segments"] = [int(t) for t in cap.token_types]
    if diagnostics:
        data["diagnostics"] = {name: np.asarray(v, np.float64).round(4).tolist()
                               for name, v in diagnostics.items()}
    return data


def render(cap: Capture, diagnostics: dict | None = None, *, title: str | None = None) -> str:
    """The page as a string."""
    template = importlib.resources.files("jaxformer.analysis").joinpath(TEMPLATE).read_text(encoding="utf-8")
    # Inside <script>, "</script>" or "<!--" in a token would end the block: escape every "<" (as \u003c).
    data = json.dumps(page_data(cap, diagnostics), ensure_ascii=False, sort_keys=True).replace("<", "\\u003c")
    if title is None:
        info = cap.info
        title = "attention" + (f" - {info['position']} - step {info['step']}" if "position" in info else "")
    before, after = template.split("__DATA__")
    return before.replace("__TITLE__", html.escape(title)) + data + after


def write(cap: Capture, path: str, diagnostics: dict | None = None) -> None:
    page = render(cap, diagnostics)
    if len(page) > 64 << 20:
        L, H, T, _ = cap.weights_LxHxTxT.shape
        log.warning("attention.html is %d MB (%d layers x %d heads x %d tokens); select fewer with --layers "
                    "/ --heads or a shorter text for a page that opens quickly", len(page) >> 20, L, H, T)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def show(source, text: str | None = None, *, which: str = "latest", layers=None, heads=None, height: int = 720):
    """The viewer inline in a Jupyter notebook: an `IPython.display.HTML` holding the self-contained page in an
    iframe (its scripts run sandboxed from the notebook's, its styles stay its own).

        from jaxformer.analysis import viewer
        viewer.show("runs/minilm", "the king of love , and the queen")   # a run directory (trained or imported)
        viewer.show(cap)                                                  # or a Capture (capture.capture_text)

    `source`: a run directory, with `text` (and `which`, `layers`, `heads` as `jaxformer attention` takes them),
    or a `capture.Capture`. `height`: the iframe's height in pixels.
    """
    try:
        from IPython.display import HTML
    except ImportError:
        raise ImportError("viewer.show needs IPython (pip install ipython, or run it in Jupyter); "
                          "viewer.write(cap, 'attention.html') writes the same page to a file") from None
    if isinstance(source, Capture):
        cap = source
    else:
        if text is None:
            raise ValueError("viewer.show(workdir, text): give the text to capture the attention of")
        from jaxformer.analysis import capture

        cap = capture.capture_text(str(source), text, which=which, layers=layers, heads=heads)
    return HTML(iframe(render(cap), height=height))


def iframe(page: str, *, height: int = 720) -> str:
    """`page` (a viewer page) as an iframe for a notebook cell: its scripts run apart from the notebook's."""
    return (f'<iframe srcdoc="{html.escape(page, quote=True)}" style="width: 100%; height: {int(height)}px; '
            'border: 1px solid #ddd;" title="jaxformer attention viewer"></iframe>')
