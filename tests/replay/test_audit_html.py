"""The audit report in a real browser (Debian's chromium, headless): no console errors, and the key
elements are there: integrity and replay first, the iteration plot, lineage, each version with its
provenance (verdict and evidence, patch diff, adapter provenance with its loss curve)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from sia_engine.cli.main import main
from sia_engine.domain.history import fork, rebuild
from sia_engine.loop.feedback.rule import RulePolicy
from sia_engine.loop.loop import Loop, LoopConfig
from sia_engine.models.presets import tiny_model
from sia_engine.models.protocol import LoraSettings
from store import Store
from tests.loop_helpers import TASK

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("audit")
    store = root / "store"
    with Store.create(store) as s:
        cfg = LoopConfig(task="arith", iterations=4, train_episodes=4, val_episodes=2, samples=2, lora=LoraSettings(steps=2, lr=1e-2))
        Loop(s, task=TASK, model=tiny_model(), feedback=RulePolicy(), config=cfg).run()
        fork(s.log, "what-if", source="main", at_seq=5, reason="audit test", blobs=s.blobs)
        state, _ = rebuild(s.log, "main")
    accepted = [v for v in state.head_history if v != state.head]
    if accepted:
        r = CliRunner().invoke(main, ["rollback", "main", accepted[0], "--reason", "audit test", "--store", str(store)])
        assert r.exit_code == 0, r.output
    out = root / "audit.html"
    r = CliRunner().invoke(main, ["audit", "--store", str(store), "--out", str(out)])
    assert r.exit_code == 0, r.output
    return store, out


def test_the_report_has_its_parts_in_order(report: tuple[Path, Path]) -> None:
    store, out = report
    page = out.read_text()
    order = [page.index(x) for x in ('id="proven"', 'id="integrity"', 'id="replay"', 'class="plot"', "Branch main", "Lineage", "details class='version'")]
    assert order == sorted(order)
    proven = page[page.index('id="proven"'):page.index("</table>", page.index('id="proven"'))]
    for check in ("integrity", "recorded replay", "adapters re-derived", "data as recorded", "environment as recorded", "signed checkpoint"):
        assert f"<td>{check}</td>" in proven
    assert proven.count('class="ok">PROVEN') == 4 and "none given" in proven and "not asked" in proven


def test_asked_for_everything_the_report_leads_with_six_proofs(report: tuple[Path, Path], tmp_path: Path) -> None:
    store, _ = report
    run = CliRunner()
    assert run.invoke(main, ["keygen", "--out", str(tmp_path / "k")]).exit_code == 0
    assert run.invoke(main, ["checkpoint", "--sign", str(tmp_path / "k"), "--out", str(tmp_path / "cp.json"), "--store", str(store)]).exit_code == 0
    out = tmp_path / "a.html"
    r = run.invoke(main, ["audit", "--store", str(store), "--out", str(out), "--retrain", "--checkpoint", str(tmp_path / "cp.json"),
                          "--public-key", str(tmp_path / "k.pub")])
    assert r.exit_code == 0, r.output
    page = out.read_text()
    proven = page[page.index('id="proven"'):page.index("</table>", page.index('id="proven"'))]
    assert proven.count('class="ok">PROVEN') == 6 and "adapters re-derived: " in proven
    n = int(proven.split("adapters re-derived: ")[1].split(" of ")[0])
    assert n > 0 and f"adapters re-derived: {n} of {n}" in proven
    assert "VERIFIED" in page and "REPLAYS" in page and "DIVERGES" not in page
    with Store.open(store, read_only=True) as s:
        state, _ = rebuild(s.log, "main")
    assert page.count("<details class='version' id='v-") >= len(state.versions)
    if any(v.adapter for v in state.versions.values()):
        assert "class='adapter'" in page and "recipe" in page and 'class="curve"' in page
    if any(v.lever == "scaffold" for v in state.versions.values()):
        assert "<pre class='diff'>" in page and "class='verdict'" in page
    assert not re.search(r"""(src|href)=["']https?://""", page)  # self-contained


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (apt-get install -y chromium; .ci/run installs it)")
def test_the_report_renders_in_chromium_without_console_errors(report: tuple[Path, Path], tmp_path: Path) -> None:
    _, out = report
    assert CHROMIUM is not None
    run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--enable-logging=stderr", "--v=0",
                          "--dump-dom", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout
    assert 'id="integrity"' in dom and "VERIFIED" in dom and 'id="replay"' in dom
    assert dom.count('class="version"') >= 2 and "<svg" in dom
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    assert console == []
    shot = tmp_path / "audit.png"
    subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,1600", f"--screenshot={shot}",
                    out.as_uri()], capture_output=True, timeout=120, check=True)
    assert shot.stat().st_size > 10_000


def _experiment_with_an_outlier():  # type: ignore[no-untyped-def]
    """The README's experiment's shape: arms near 0.6-0.7, searches close together, one reference
    method far below (alra -1.45)."""
    from sia_engine.experiment.baselines import Baseline
    from sia_engine.experiment.table import ArmResult, ExperimentResult

    arms = tuple(ArmResult(arm, seed, f"e-{arm}-s{seed}", 0.60 + 0.01 * i + 0.02 * seed, None, 3, (), 2, 1, 40, 40, 0, 1.0,
                           artifact_test=0.70 + 0.01 * i)
                 for i, arm in enumerate(("scaffold", "weights", "both")) for seed in range(3))
    baselines = (Baseline("best-of-k", (0, 1, 2), (0.721, 0.72, 0.722), (None, None, None), 48, 48),
                 Baseline("random-search", (0, 1, 2), (0.684, 0.69, 0.686), (None, None, None), 48, 0),
                 Baseline("reference:alra", (None,), (-1.45,), (None,), 0, 0), Baseline("reference:magic", (None,), (0.69,), (None,), 0, 0))
    return ExperimentResult("e", arms, baselines, 0.55, 0.688)


def test_the_experiment_plot_reads_at_a_glance_in_chromium(tmp_path: Path) -> None:
    """Issue 23, Deliver 5: both measures per arm, the baselines' labels apart, an outlier clipped
    with its value written, and the arms spread over the plot rather than squashed into a band."""
    from replay.audit_experiment import experiment_plot

    assert CHROMIUM is not None
    svg = experiment_plot(_experiment_with_an_outlier())
    assert "reference:alra -1.450 (off the scale)" in svg and svg.count('class="artifact"') == 9 and svg.count('class="seed"') == 9
    probe = """<script>
      const box = e => e.getBoundingClientRect();
      const labels = [...document.querySelectorAll('.baseline-label')].map(box);
      let overlaps = 0;
      for (let i = 0; i < labels.length; i++) for (let j = i + 1; j < labels.length; j++) {
        const a = labels[i], b = labels[j];
        if (a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom) overlaps++;
      }
      const svg = box(document.querySelector('svg'));
      const inside = labels.every(l => l.top >= svg.top && l.bottom <= svg.bottom);
      const ys = [...document.querySelectorAll('.seed, .artifact')].map(e => box(e).top);
      const spread = (Math.max(...ys) - Math.min(...ys)) / svg.height;
      document.body.setAttribute('data-result', JSON.stringify({overlaps, inside, spread, n: labels.length}));
    </script>"""
    page = tmp_path / "plot.html"
    page.write_text(f"<!doctype html><html><body>{svg}{probe}</body></html>")
    run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    import html as html_
    import json

    got = json.loads(html_.unescape(re.search(r'data-result="([^"]+)"', run.stdout).group(1)))  # type: ignore[union-attr]
    assert got["n"] == 5 and got["overlaps"] == 0 and got["inside"], got
    assert got["spread"] > 0.4, got  # the arms use the plot's height, not a thin band above one outlier
