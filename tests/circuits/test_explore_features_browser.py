"""The feature browser and steering playground in headless Chromium, driven through the
DevTools protocol (the client of ``test_explore_browser``): open a feature from the URL
hash, search by label, open a card with its dashboard, compare two features on typed
text (one heatmap row each, one cell per token of the model's tokenisation), run a
steering request and see both continuations; no console error, no uncaught exception,
no request outside the server's origin. Screenshots go to the test's tmp dir (and to
``VIZ_SCREENSHOT_DIR`` when set).

Chromium is required as in ``tests/viz/test_viz_browser.py`` (skip with the install
command when it is missing; fail when ``CI`` is set)."""

from __future__ import annotations

import json

from test_explore_browser import _screenshot, browser, require_chromium
from test_explore_features import TEXT, make_feature_run, serve

from attribution import load_model
from attribution.tiny import make_tiny_model


def _click(dt, selector: str) -> None:
    dt.eval(f"document.querySelector({json.dumps(selector)}).click()")


def test_features_and_steering_in_browser(tmp_path):
    require_chromium()
    model_dir = make_tiny_model("llama", tmp_path / "model", seed=3)
    run = make_feature_run(tmp_path / "run", model_dir)
    model = load_model(model_dir)
    server = serve(run)
    try:
        with browser(tmp_path) as dt:
            # 1. The node panel's link form: the hash opens that feature and chooses it.
            dt.send("Page.navigate", url=server.url + "static/features.html#layer=0&feature=1")
            dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=60)
            dt.wait("document.body.dataset.card === 'L0/1' && document.body.dataset.chosen === '1'")
            assert "feline things" in dt.eval("document.getElementById('card').textContent")
            assert int(dt.eval("document.body.dataset.results")) == 20  # the first page of all features
            # 2. Search by label, open the hit's card (dashboard in a sandboxed frame).
            dt.eval("document.getElementById('q').value = 'cats and'")
            _click(dt, "#search-btn")
            dt.wait("document.body.dataset.searched === 'cats and' && document.body.dataset.results === '1'")
            assert dt.eval("document.querySelector('#results li').dataset.id") == "L0/2"
            _click(dt, "#results li")
            dt.wait("document.body.dataset.card === 'L0/2'")
            card = dt.eval("document.getElementById('card').textContent")
            assert "cats and dogs" in card and "promoted" in card
            assert dt.eval("document.querySelector('#card iframe').getAttribute('src')") == \
                "/run/dashboards/feature_L0.mlp_in_2.html"
            # 3. Search by id, choose it for comparison too.
            dt.eval("document.getElementById('q').value = 'L1/5'")
            _click(dt, "#search-btn")
            dt.wait("document.body.dataset.searched === 'L1/5' && document.body.dataset.results === '1'")
            _click(dt, "#results li button.add")
            _click(dt, "#card-add")
            dt.wait("document.body.dataset.chosen === '3'")
            # 4. Type text: one heatmap row per chosen feature, one cell per token.
            text = TEXT + " again"
            dt.eval(f"document.getElementById('text').value = {json.dumps(text)}")
            _click(dt, "#run")
            dt.wait("document.body.dataset.heatmap === 'ready'")
            rows = dt.eval("Array.prototype.map.call(document.querySelectorAll('#heatmap tr'), function (r) {"
                           " return [r.dataset.id, r.querySelectorAll('.tok-cell').length]; })")
            n_tok = len(model.encode(text))
            assert rows == [["L0/1", n_tok], ["L1/5", n_tok], ["L0/2", n_tok]], rows
            cells = dt.eval("Array.prototype.map.call(document.querySelectorAll('#heatmap tr:first-child .tok-cell'),"
                            " function (c) { return c.textContent; })")
            assert cells == model.to_str_tokens(model.encode(text))
            _screenshot(dt, tmp_path / "features_screenshot.png")
            assert not dt.problems(), dt.problems()
            # 5. The steering playground, pre-filled from a card's link.
            dt.send("Page.navigate", url=server.url + "static/steer.html#feature=L0/3")
            dt.wait("document.body && document.body.dataset.state === 'ready'", timeout=60)
            assert dt.eval("document.querySelector('#ivs .feat').value") == "L0/3"
            dt.eval("document.getElementById('prompt').value = 'the cat sat on'; "
                    "document.querySelector('#ivs .strength').value = '40'; document.getElementById('n').value = '4'")
            _click(dt, "#go")
            dt.wait("document.body.dataset.steered === '1'", timeout=60)
            clean = dt.eval("document.getElementById('clean').textContent")
            steered = dt.eval("document.getElementById('steered').textContent")
            prompt = "".join(model.to_str_tokens(model.encode("the cat sat on")))
            assert clean.startswith(prompt) and steered.startswith(prompt)
            assert dt.eval("document.querySelectorAll('#clean .new').length") == 4
            assert dt.eval("document.querySelectorAll('#steered .new').length") == 4
            assert dt.eval("document.querySelectorAll('#steered .diff').length") > 0 and clean != steered
            _screenshot(dt, tmp_path / "steer_screenshot.png")
            assert not dt.problems(), dt.problems()
            # A bad request shows its one-line error instead of failing silently.
            dt.eval("document.querySelector('#ivs .feat').value = 'L0/999'")
            _click(dt, "#go")
            dt.wait("document.body.dataset.steered === 'error'")
            assert "out of range" in dt.eval("document.getElementById('status').textContent")
            # Chromium logs the failed request itself (a 404); nothing else may appear.
            probs = dt.problems()
            assert all("404" in p for p in probs), probs
            foreign = [u for u in dt.requests() if not u.startswith(server.url) and not u.startswith("data:")]
            assert not foreign, foreign
    finally:
        server.shutdown()
        server.server_close()
