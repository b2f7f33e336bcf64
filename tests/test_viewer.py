"""attention.html in a real headless browser (Debian's chromium, driven by Playwright).

The page must load with no console error and no network request, show the captured layers and heads, and
highlight exactly the keys a clicked token attends to (and the queries that attend to it). Playwright drives
the system chromium (`executable_path`); it never downloads a browser of its own. Without chromium or the
playwright package the tests are skipped, except under CI (`CI` set), where .ci/run installs chromium and the
dev extra installs playwright, so a missing browser is a failure.
"""

import os
import shutil

import numpy as np
import pytest

from jaxformer.analysis import capture, viewer

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
THRESHOLD = 0.02  # the page's default "hide weights below"


def _missing(what):
    if os.environ.get("CI"):
        pytest.fail(f"{what} (CI installs it: .ci/run for chromium, the dev extra for playwright)")
    pytest.skip(what)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed (pip install -e '.[dev]')")
    if not os.path.exists(CHROMIUM):
        _missing("chromium is not installed (apt-get install chromium)")
    with sync_playwright() as p:
        profile = str(tmp_path_factory.mktemp("chromium-profile"))
        context = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True,
                                                       args=FLAGS, viewport={"width": 1300, "height": 900})
        yield context
        context.close()


class Page:
    """A page of the viewer with its console errors and the requests it made."""

    def __init__(self, context, path):
        self.errors, self.requests = [], []
        self.page = context.new_page()
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.url = "file://" + os.path.abspath(path)
        self.page.goto(self.url)
        try:
            self.page.wait_for_function("window.attentionViewer !== undefined", timeout=20_000)
        except Exception as e:
            raise AssertionError(f"the viewer did not start: {self.errors}") from e

    def marked(self, selector):
        found = self.page.eval_on_selector_all(selector, "els => els.map(e => e.dataset.i)")
        return sorted(int(x) for x in found)

    def close(self):
        self.page.close()


def make_capture(L=2, H=3, T=12, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(L, H, T, T)) * 2.5
    logits = np.where(np.tril(np.ones((T, T), bool)), logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    w = (w / w.sum(-1, keepdims=True)).astype(np.float32)
    tokens = list(("ROMEO: <b>&\n soft, what light through yonder window " * (1 + T // 40))[:T])
    return capture.Capture(w, np.arange(T, dtype=np.int32), tokens, list(range(L)), [0, 2, 5, 7][:H],
                           {"position": "alibi", "step": 12, "checkpoint": "best"})


def expected_marks(w_HxTxT, f):
    """Keys f attends to and queries attending to f, at or above the threshold (mean of the shown heads)."""
    w = w_HxTxT.mean(0)
    floor = THRESHOLD - 1 / 65535  # the page's weights are quantised to 1/65535
    return sorted(np.nonzero(w[f] >= floor)[0].tolist()), sorted(np.nonzero(w[:, f] >= floor)[0].tolist())


def test_page_loads_and_click_highlights(browser, tmp_path):
    cap = make_capture()
    path = tmp_path / "attention.html"
    viewer.write(cap, str(path), {"entropy": np.ones((2, 3)), "sink": np.zeros((2, 3))})
    page = Page(browser, path)
    p = page.page
    try:
        options = "os => os.map(o => o.textContent)"
        assert p.eval_on_selector_all("#layer option", options) == ["layer 0", "layer 1"]
        assert p.eval_on_selector_all("#head option", options) == ["all heads", "head 0", "head 2", "head 5"]
        assert "2 layers × 3 heads, 12 tokens" in p.inner_text("h1")
        assert len(p.query_selector_all(".tok.q")) == 12 and len(p.query_selector_all(".tok.k")) == 12
        assert page.marked(".tok.hl") == []  # nothing highlighted before a click

        # Click query token 7 (all heads): the keys it attends to and the queries attending to it light up.
        p.click('.tok.q[data-i="7"]')
        keys, queries = expected_marks(cap.weights_LxHxTxT[0], 7)
        assert page.marked(".tok.k.hl") == keys and page.marked(".tok.q.hl") == queries
        assert page.marked(".tok.focus") == [7, 7]
        assert '#7 "<"' in p.inner_text("#focus-info")  # the token "<" shown as text, not markup
        before = page.marked(".tok.k.hl")

        # Another token changes what is highlighted; clicking it again unpins.
        p.click('.tok.k[data-i="3"]')
        keys, queries = expected_marks(cap.weights_LxHxTxT[0], 3)
        assert page.marked(".tok.k.hl") == keys and page.marked(".tok.q.hl") == queries and keys != before
        p.click('.tok.k[data-i="3"]')
        p.mouse.move(1200, 850)  # away from the tokens: no hover preview either
        assert page.marked(".tok.hl") == []

        # One head of layer 1.
        p.select_option("#layer", "1")
        p.select_option("#head", "2")  # the third head: model head 5
        p.click('.tok.q[data-i="10"]')
        keys, queries = expected_marks(cap.weights_LxHxTxT[1, 2:3], 10)
        assert page.marked(".tok.k.hl") == keys and page.marked(".tok.q.hl") == queries
        assert "layer 1, head 5" in p.inner_text("#focus-info")

        # Matrix view: clicking the cell (row 4, column 2) pins query 4.
        p.check("input[value=matrix]")
        assert p.is_visible("#matrix") and not p.is_visible("#lines-view")
        g = p.evaluate("window.attentionViewer.geometry()")
        cell = {"x": g["margin"] + 2.5 * g["cell"], "y": g["margin"] + 4.5 * g["cell"]}
        p.click("#matrix", position=cell)
        assert p.evaluate("window.attentionViewer.state.pinned") == 4
        assert '#4 "O"' in p.inner_text("#focus-info")
        p.click("#matrix", position=cell)  # the same row again unpins
        assert p.evaluate("window.attentionViewer.state.pinned") is None

        assert page.errors == []
        assert page.requests == [page.url]  # the file itself, nothing else: no CDN, no fonts, no favicon
    finally:
        page.close()


def test_a_few_hundred_tokens(browser, tmp_path):
    cap = make_capture(L=2, H=4, T=300, seed=1)
    path = tmp_path / "long.html"
    viewer.write(cap, str(path))
    page = Page(browser, path)
    try:
        page.page.click('.tok.q[data-i="250"]')
        keys, _ = expected_marks(cap.weights_LxHxTxT[0], 250)
        assert page.marked(".tok.k.hl") == keys
        page.page.check("input[value=matrix]")
        assert page.errors == [] and page.requests == [page.url]
    finally:
        page.close()


def test_model_view_shows_every_head_and_a_click_opens_one(browser, tmp_path):
    """BertViz's model view: every layer x head as a thumbnail of its matrix; clicking one opens that head's matrix."""
    cap = make_capture(L=2, H=3, T=12, seed=2)
    path = tmp_path / "model.html"
    viewer.write(cap, str(path))
    page = Page(browser, path)
    p = page.page
    try:
        p.check("input[value=model]")
        assert p.is_visible("#model") and not p.is_visible("#matrix") and not p.is_visible("#lines-view")
        g = p.evaluate("window.attentionViewer.modelGeometry()")
        # The thumbnail of layer 1, head 2 (model head 5): its pixel (query 7, key 3) is that head's weight colour.
        x0, y0 = g["left"] + 2 * (g["thumb"] + g["gap"]), g["top"] + 1 * (g["thumb"] + g["gap"])
        px = g["thumb"] // 12
        colour = p.evaluate(f"Array.from(document.getElementById('model').getContext('2d')"
                            f".getImageData({x0 + 3 * px}, {y0 + 7 * px}, 1, 1).data)")[:3]
        masked = p.evaluate(f"Array.from(document.getElementById('model').getContext('2d')"
                            f".getImageData({x0 + 9 * px}, {y0 + 2 * px}, 1, 1).data)")[:3]
        assert masked == [238, 238, 238] and colour != masked  # a decoder's future keys are greyed
        p.click("#model", position={"x": x0 + g["thumb"] / 2, "y": y0 + g["thumb"] / 2})
        state = p.evaluate("window.attentionViewer.state")
        assert (state["layer"], state["head"], state["view"]) == (1, 2, "matrix")
        assert p.is_visible("#matrix") and p.input_value("#head") == "2" and p.input_value("#layer") == "1"
        assert page.errors == []
    finally:
        page.close()


def test_notebook_show_renders_inline_in_chromium(browser, tmp_path):
    """viewer.show returns an IPython display object; its HTML, put in a page as Jupyter puts it, runs the viewer
    inside the iframe with the capture's tokens, and nothing is fetched."""
    from IPython.display import HTML

    cap = make_capture(L=2, H=2, T=9, seed=4)
    shown = viewer.show(cap, height=500)
    assert isinstance(shown, HTML) and shown.data.startswith("<iframe srcdoc=")
    host = tmp_path / "notebook.html"
    host.write_text(f"<!DOCTYPE html><html><body><div class='output'>{shown.data}</div></body></html>")
    errors = []
    page = browser.new_page()
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto("file://" + str(host))
        frame = page.frame_locator("iframe")
        frame.locator(".tok.q").first.wait_for(timeout=20_000)
        assert frame.locator(".tok.q").count() == 9 and frame.locator(".tok.k").count() == 9
        assert "2 layers × 2 heads, 9 tokens" in frame.locator("h1").inner_text()
        assert errors == []
    finally:
        page.close()
    with pytest.raises(ValueError, match="give the text"):
        viewer.show(str(tmp_path))


def test_sentence_pair_colours_and_a_to_b_filter(browser, tmp_path):
    """An encoder's capture with token types: tokens marked as sentence A or B, and the A → B filter (BertViz's)
    leaves a query of A attending to B's keys only, and a query of B attending to nothing."""
    import dataclasses

    L, H, T = 1, 2, 10
    rng = np.random.default_rng(7)
    w = rng.dirichlet(np.ones(T), size=(L, H, T)).astype(np.float32)  # bidirectional: every key has weight
    segments = [0] * 6 + [1] * 4
    cap = dataclasses.replace(make_capture(L=L, H=H, T=T), weights_LxHxTxT=w, token_types=segments)
    cap.info["causal"] = False  # an encoder: keys after the query are drawn, not greyed out
    path = tmp_path / "pair.html"
    viewer.write(cap, str(path))
    page = Page(browser, path)
    p = page.page
    try:
        assert page.marked(".tok.q.segA") == list(range(6)) and page.marked(".tok.q.segB") == list(range(6, 10))
        assert p.is_visible("#pair")
        p.select_option("#pair", "AB")
        p.click('.tok.q[data-i="2"]')
        want = sorted(j for j in range(6, 10) if w[0, :, 2, j].mean() >= THRESHOLD - 1 / 65535)
        assert want and page.marked(".tok.k.hl") == want
        p.click('.tok.q[data-i="2"]')
        p.click('.tok.q[data-i="8"]')  # a query of B: A → B shows none of its weights
        assert page.marked(".tok.k.hl") == []
        p.select_option("#pair", "all")
        assert page.marked(".tok.k.hl") != []
        p.check("input[value=matrix]")  # the upper triangle (a later key) is coloured by its weight, not masked
        g = p.evaluate("window.attentionViewer.geometry()")
        x, y = g["margin"] + 9.5 * g["cell"], g["margin"] + 0.5 * g["cell"]
        pixel = p.evaluate(f"Array.from(document.getElementById('matrix').getContext('2d')"
                           f".getImageData({x} * devicePixelRatio, {y} * devicePixelRatio, 1, 1).data)")
        assert pixel[:3] != [238, 238, 238]
        assert page.errors == []
    finally:
        page.close()


def test_neuron_view_shows_q_k_and_their_product_for_a_chosen_query(browser, tmp_path):
    """BertViz's neuron view: for one head and query, q, each key's k, q⊙k, q·k/√d and the weight; q·k/√d through a
    softmax gives the weights shown (the q, k of a real capture: capture.query_key_vectors)."""
    import jax
    from flax import nnx

    from jaxformer import config as config_lib
    from jaxformer.model import GPT

    cfg = config_lib.resolve(config_lib.load("bert_tiny"), vocab_size=30)
    model = GPT(cfg.model, rngs=nnx.Rngs(params=0))
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x * 20 if x.ndim == 2 else x, state)  # sharper attention than the init's
    model = nnx.merge(graphdef, state)
    ids = np.arange(8, dtype=np.int32)
    cap = capture.capture_ids(model, ids, list("ROMEO: I"), info={"causal": False})
    path = tmp_path / "neuron.html"
    viewer.write(cap, str(path))
    page = Page(browser, path)
    p = page.page
    try:
        p.check("input[value=neuron]")
        assert "Choose one head" in p.inner_text("#neuron")
        p.select_option("#head", "1")
        p.click("#neuron tr[data-j='5'] td")  # query 5
        assert "query #5" in p.inner_text("#neuron")
        rows = p.eval_on_selector_all("#neuron tr[data-j]", "rs => rs.map(r => [r.querySelector('.dot').textContent,"
                                      " r.querySelector('.wt').textContent])")
        assert len(rows) == 8  # an encoder: every key
        dots = np.array([float(d) for d, _ in rows])
        shown_w = np.array([float(x) for _, x in rows])
        np.testing.assert_allclose(shown_w, cap.weights_LxHxTxT[0, 1, 5], atol=1e-4)
        softmax = np.exp(dots - dots.max()) / np.exp(dots - dots.max()).sum()
        np.testing.assert_allclose(softmax, shown_w, atol=5e-3)  # q·k shown to 3 decimals
        assert len(p.query_selector_all("#neuron tr[data-j='0'] td.v")) == 2 * cap.qk.shape[-1]
        assert page.errors == []
    finally:
        page.close()
