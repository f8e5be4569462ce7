import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from perceiver_lm import PRESETS, PerceiverLM
from perceiver_lm.config import MultiTaskConfig, TaskSpec
from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.model import PerceiverClassifier
from perceiver_lm.options import AttentionOptions
from perceiver_lm.tokenizer import encode
from perceiver_lm.viz.attention_maps import BYTE_CLASSES, attention_maps, byte_classes, summarize_row
from perceiver_lm.viz.attention_render import attention_report, render_html, render_png

HOSTILE = 'Ünïcødé 🙂 <script>alert(1)</script></script><img src=x onerror=alert(2)> & "quotes"'


def test_maps_equal_the_models_explicit_attention_and_rows_sum_to_one():
    model = PerceiverLM(PRESETS["tiny"])
    texts = ["short one", "a longer text, with Capitals and 123 digits", "é🙂"]
    maps = attention_maps(model, texts, query=1, batch_size=2)  # batches mix lengths: padding inside
    for text, m in zip(texts, maps, strict=True):
        ids = torch.from_numpy(encode(text, add_special_tokens=False))[None]
        alone = model(ids, query_positions=torch.tensor([[1]]), return_attentions=True)
        np.testing.assert_allclose(m.encoder, alone.encoder_attention[0].detach().numpy(), atol=1e-6)
        np.testing.assert_allclose(m.decoder, alone.decoder_attention[0, :, 0].detach().numpy(), atol=1e-6)
        assert m.encoder.shape == (PRESETS["tiny"].num_cross_heads, PRESETS["tiny"].num_latents, len(text.encode()))
        np.testing.assert_allclose(m.encoder.sum(-1), 1.0, atol=1e-5)
    assert maps[2].labels() == ["é", "·", "🙂", "·", "·", "·"]
    assert [(t, a, b) for t, a, b in maps[2].segments()] == [("é", 0, 2), ("🙂", 2, 6)]


def test_task_models_read_cls_text_sep_and_show_the_task_query():
    tasks = MultiTaskConfig((TaskSpec("sst2", 2), TaskSpec("rte", 2)), head_hidden=16)
    model = PerceiverClassifier(PRESETS["tiny"], tasks)
    m = attention_maps(model, ["good film"], query="rte")[0]
    assert m.labels()[0] == "[CLS]" and m.labels()[-1] == "[SEP]" and m.query == "task rte"
    assert m.decoder.shape == (PRESETS["tiny"].decoder_heads, PRESETS["tiny"].num_latents)
    np.testing.assert_allclose(m.decoder.sum(-1), 1.0, atol=1e-5)
    with pytest.raises(PerceiverLMError, match="no task 'cola'"):
        attention_maps(model, ["x"], query="cola")


def test_bad_inputs_are_refused():
    model = PerceiverLM(PRESETS["tiny"])
    with pytest.raises(PerceiverLMError, match="longer than the model's window"):
        attention_maps(model, ["x" * 200])
    with pytest.raises(PerceiverLMError, match="position outside the text"):
        attention_maps(model, ["abc"], query=3)
    with pytest.raises(PerceiverLMError, match="empty text"):
        attention_maps(model, [""])


def _text_classes(text: str):
    return byte_classes(np.frombuffer(text.encode(), dtype=np.uint8).astype(np.int64))


def test_summary_labels_synthetic_maps():
    rng = np.random.default_rng(0)
    text = "".join(rng.choice(list("abcdefghij klmnop"), 240))
    text = "".join(c.upper() if i in {5, 19, 40, 77, 90, 131, 150, 188, 203, 230} else c for i, c in enumerate(text))
    classes = _text_classes(text)
    positions = np.arange(240)
    local = np.exp(-0.5 * ((positions - 60) / 2.0) ** 2)
    periodic = (positions % 7 == 3) + 0.01 * rng.random(240)
    capitals = np.where(classes["capitals"], 1.0, 0.02)
    diffuse = 1.0 + 0.05 * rng.random(240)
    kinds = {
        name: summarize_row(w / w.sum(), classes)
        for name, w in [("local", local), ("periodic", periodic), ("capitals", capitals), ("diffuse", diffuse)]
    }
    assert kinds["local"].kind == "local" and abs(kinds["local"].centre - 60) < 0.5 and kinds["local"].spread < 2.5
    assert kinds["periodic"].kind == "periodic" and kinds["periodic"].period == pytest.approx(7, abs=0.2)
    assert kinds["capitals"].kind == "class-selective" and kinds["capitals"].class_mass["capitals"] == pytest.approx(
        10 / (10 + 230 * 0.02)
    )
    assert kinds["diffuse"].kind == "diffuse" and kinds["diffuse"].normalized_entropy > 0.99
    assert kinds["local"].top[0][0] == 60


def test_a_latent_reading_a_run_of_digits_is_local_not_digit_selective():
    text = "word " * 20 + "2026 1987 42 " + "word " * 20
    start = 100
    w = np.zeros(len(text))
    w[start : start + 12] = 1.0
    summary = summarize_row(w / w.sum(), _text_classes(text))
    assert summary.kind == "local" and summary.prefers is None


def test_a_local_latent_can_prefer_a_class_within_its_stretch():
    text = "abcdefgh" * 4 + "end." + "ijklmnop" * 4
    w = np.full(len(text), 0.002)
    w[30:40] = 0.02
    w[text.index(".")] = 0.8
    summary = summarize_row(w / w.sum(), _text_classes(text))
    assert summary.kind == "local" and summary.prefers == "punctuation"


def test_png_and_html_escape_hostile_text(tmp_path):
    model = PerceiverLM(PRESETS["tiny"])
    maps = attention_maps(model, [HOSTILE])[0]
    page = render_html(maps, tmp_path / "a.html", title="<b>t</b>").read_text()
    assert page.count("<script") == 2  # the data block and our script; none from the text
    assert "<img" not in page and "</script></script>" not in page
    assert "&lt;b&gt;t&lt;/b&gt;" in page and "http" not in page.replace("http-equiv", "")  # no network
    data = page.split('<script id="data" type="application/json">')[1].split("</script>")[0]
    parsed = json.loads(data)
    assert "".join(s["t"] for s in parsed["segments"]) == HOSTILE
    png = render_png(maps, tmp_path / "a.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert render_png(maps, tmp_path / "zoom.png", head=1, span=(10, 40)).stat().st_size > 10_000
    with pytest.raises(PerceiverLMError, match="--span 40:400: outside the text"):
        render_png(maps, tmp_path / "bad.png", span=(40, 400))


def test_attention_report_is_a_library_call(tmp_path):
    PerceiverLM(PRESETS["tiny"]).save_pretrained(tmp_path / "lm")
    options = AttentionOptions(tmp_path / "lm", "Hello, World 42.", head=-1, top=1, query="3", png=tmp_path / "a.png")
    lines = attention_report(options)
    assert lines[0].startswith("16 input positions, 16 latents x 4 heads (mean of heads): ")
    assert lines[-2].startswith("\ndecoder query position 3 ('l') reads latents: ")
    assert lines[-1] == f"wrote {tmp_path / 'a.png'}" and (tmp_path / "a.png").stat().st_size > 0
    assert sum(line.startswith("  head mean latent") for line in lines) <= 5  # --top 1 per kind
    too_far = AttentionOptions(tmp_path / "lm", "Hello", png=tmp_path / "b.png", span="0:99")
    with pytest.raises(PerceiverLMError, match="--span 0:99: outside the text's 0:5 bytes"):
        attention_report(too_far)


def test_cli_attention_prints_kinds_and_writes_pictures(tmp_path):
    PerceiverLM(PRESETS["tiny"]).save_pretrained(tmp_path / "lm")
    (tmp_path / "t.txt").write_text("The Quick brown fox, 1984 and 2001; naïve café.")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "cli",
            "attention",
            str(tmp_path / "lm"),
            "--file",
            str(tmp_path / "t.txt"),
            "--query",
            "4",
            "--png",
            str(tmp_path / "m.png"),
            "--html",
            str(tmp_path / "m.html"),
            "--json",
            str(tmp_path / "m.json"),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert "latents x 4 heads" in done.stdout and "reads:" in done.stdout and "decoder query position 4" in done.stdout
    summaries = json.loads((tmp_path / "m.json").read_text())["summaries"]
    assert len(summaries) == 4 * 16 and {s["kind"] for s in summaries} <= {
        "local",
        "class-selective",
        "periodic",
        "diffuse",
        "mixed",
    }
    assert (tmp_path / "m.png").stat().st_size > 0 and (tmp_path / "m.html").stat().st_size > 0
    bad = subprocess.run(
        [sys.executable, "-m", "cli", "attention", str(tmp_path / "lm"), "x" * 500],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
    )
    assert bad.returncode == 2 and bad.stderr.startswith(
        "error: text of 500 ids is longer than the model's window (128)"
    )


def _browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium not installed (pip install selenium)")
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("Chromium/ChromeDriver not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


@pytest.mark.browser
def test_page_in_headless_chromium_highlights_the_bytes_a_latent_reads(tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    model = PerceiverLM(PRESETS["tiny"])
    maps = attention_maps(model, [HOSTILE])[0]
    page = render_html(maps, tmp_path / "page.html")
    browser = _browser()
    try:
        browser.get(page.as_uri())
        shown = "".join(s.text for s in browser.find_elements(By.CSS_SELECTOR, "#text span.seg"))
        assert shown.replace("\n", "") == HOSTILE.replace(
            "\n", ""
        )  # escaped text shown, not run (an alert would fail the next call)
        assert browser.execute_script("return document.querySelectorAll('img').length") == 0
        # the class filter is built from the byte classes the page is given (one source: BYTE_CLASSES)
        filters = [o.get_attribute("value") for o in Select(browser.find_element(By.ID, "filter")).options]
        assert [f"prefers:{c}" for c in BYTE_CLASSES] == [f for f in filters if f.startswith("prefers:")]
        for head, latent in ((0, 5), (2, 11)):
            Select(browser.find_element(By.ID, "head")).select_by_value(str(head))
            browser.find_element(By.CSS_SELECTOR, f'.latent[data-latent="{latent}"]').click()
            spans = browser.find_elements(By.CSS_SELECTOR, "#text span.seg")
            weights = [float(s.get_attribute("data-weight")) for s in spans]
            segments = maps.segments()
            expected = [maps.encoder[head, latent, a:b].sum() for _, a, b in segments]
            np.testing.assert_allclose(weights, expected, atol=0.01 * max(expected))  # page weights: 8-bit per row
            brightest = spans[int(np.argmax(weights))]
            assert "rgb(255, 90, 0)" in brightest.get_attribute("style")  # full strength at the peak
            faint = [sp for sp, w in zip(spans, weights, strict=True) if w < 0.01 * max(weights)]
            assert all("background" not in (sp.get_attribute("style") or "") for sp in faint)
            assert f"latent {latent:>4}" in browser.find_element(By.ID, "info").text
            assert browser.execute_script("return location.hash") == f"#head={head}&latent={latent}"
        browser.save_screenshot(str(tmp_path / "page.png"))
        assert (tmp_path / "page.png").stat().st_size > 20_000
    finally:
        browser.quit()
