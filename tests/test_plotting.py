import json

import pytest

from perceiver_lm.errors import PerceiverLMError
from perceiver_lm.viz.plotting import plot_curve, read_metrics


def _run(folder, bits):
    folder.mkdir()
    records = [
        {"step": 50 * (i + 1), "elapsed_s": 30.0 * (i + 1), "eval_bits_per_byte": b, "eval_accuracy": 0.1}
        for i, b in enumerate(bits)
    ]
    (folder / "metrics.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in [{"step": 10, "train_loss": 5.0}, *records])
    )
    return folder


def test_curves_against_steps_or_minutes_and_clear_errors(tmp_path):
    a, b = _run(tmp_path / "fp32", [4.9, 4.7]), _run(tmp_path / "bf16", [4.9, 4.6])
    for x in ("steps", "minutes"):
        out = plot_curve([a, b], tmp_path / f"{x}.png", ["fp32", "bf16"], x=x)
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    with pytest.raises(PerceiverLMError, match="--x 'epochs': expected minutes or steps"):
        plot_curve([a], tmp_path / "x.png", x="epochs")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "metrics.jsonl").write_text('{"step": 1}\nnot json\n')
    with pytest.raises(PerceiverLMError, match=r"metrics.jsonl:2: not a JSON record"):
        read_metrics(tmp_path / "broken")
    with pytest.raises(PerceiverLMError, match="no evaluations recorded yet"):
        plot_curve([_run(tmp_path / "empty", [])], tmp_path / "y.png")


def test_plotting_leaves_the_callers_backend_alone(tmp_path):
    import subprocess
    import sys

    # in a fresh process: a notebook's interactive backend must survive a plot, and pyplot stays unloaded
    code = (
        "import sys, matplotlib; matplotlib.use('svg')\n"
        "from perceiver_lm.viz.plotting import plot_curve\n"
        f"plot_curve([{str(_run(tmp_path / 'run', [4.9, 4.7]))!r}], {str(tmp_path / 'p.png')!r})\n"
        "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
