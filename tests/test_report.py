"""The report's pictures (r2d.montage, `r2d montage`), the report rules, `snakemake --report`, and
the rendered report in headless Chromium (skipped when Chromium is absent)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from r2d import io, montage

from conftest import TINY_N as N


@pytest.fixture(scope="module")
def report_html(tiny_run, smk):
    r = smk(tiny_run, "--report", "report.html")
    assert r.returncode == 0, r.stderr[-3000:]
    return tiny_run / "report.html"


def is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_pictures_and_summary(tiny_run):
    rep = tiny_run / "run" / "report"
    for name in ("final_classes.png", "classes_init.png", "classes_01.png", "convergence.png", "class_sizes.png"):
        assert is_png(rep / name), name
    data = json.loads((rep / "summary.json").read_text())
    its = data["iterations"]
    assert [e["iteration"] for e in its] == [0, 1]
    assert "changed" not in its[0] and its[1]["changed"] == 6  # the fixture moved every 10th particle
    assert its[1]["particles"] == N and its[1]["mean_score"] is not None
    cmx = io.read_matrix(tiny_run / "run" / "classmx_01.h5")
    members = np.bincount(cmx["class"], minlength=4)
    assert [c["members"] for c in data["final_classes"]] == members.tolist()
    assert [c["class"] for c in data["final_classes"]] == [1, 2, 3, 4]


def test_class_montage_sorted_by_count_with_labels(tmp_path, monkeypatch):
    imgs = np.random.default_rng(0).normal(size=(3, 16, 16)).astype(np.float32)
    heads = [dict(class_id=0, n_kept=5, n_excluded=1, resolution=21.5), dict(class_id=1, n_kept=40, n_excluded=3),
             dict(class_id=2, ptcl_repr=9, class_ptcl_idxs=list(range(9)), exc_class_ptcl_idxs=[1, 2])]
    io.write_image_stack(tmp_path / "c.hdf", imgs, heads)
    seen = {}
    monkeypatch.setattr(montage, "montage", lambda images, labels, path, title="": seen.update(
        images=images, labels=labels, title=title))
    montage.class_montage(tmp_path / "c.hdf", tmp_path / "m.png", title="iteration 03")
    assert seen["labels"] == ["#2 · 43 ptcl", "#3 · 11 ptcl", "#1 · 6 ptcl\n21.5 Å"]
    np.testing.assert_array_equal(seen["images"], imgs[[1, 2, 0]])
    assert seen["title"] == "iteration 03 — 3 classes, 60 particles"
    monkeypatch.undo()
    montage.class_montage(tmp_path / "c.hdf", tmp_path / "m.png", title="x")
    assert is_png(tmp_path / "m.png")
    lo, hi = montage.normalise(np.arange(101.0))
    assert (lo, hi) == (1.0, 99.0)


def test_summary_plots_from_a_summary(tmp_path):
    summary = {"iterations": [{"iteration": 0, "mean_score": -0.5}, {"iteration": 1, "changed": 5,
                                                                      "changed_frac": 0.1, "mean_score": -0.6}],
               "final_classes": [{"class": 1, "members": 5, "kept": 4, "resolution": None},
                                 {"class": 2, "members": 9, "kept": 9, "resolution": 12.0}]}
    montage.convergence_plot(summary, tmp_path / "c.png")
    montage.class_size_plot(summary, tmp_path / "s.png")
    assert is_png(tmp_path / "c.png") and is_png(tmp_path / "s.png")


def test_summary_counts_the_classes_division_made_and_the_largest_share(tmp_path):
    """classmx_01 leaves class 2 empty (3 classes assigned); resultmx_01, the classes as
    averaged, has 4 again: one made by division; the largest holds 40 of 100 (1.6x the mean)."""
    from r2d import io

    n = 100
    assigned = np.repeat([0, 1, 3], [50, 30, 20])
    averaged = np.repeat([0, 1, 2, 3], [40, 30, 10, 20])
    for name, cls in (("classmx_00", np.zeros(n, int)), ("classmx_01", assigned), ("resultmx_01", averaged)):
        data = {"class": cls.astype(np.int32), "particle": np.arange(n)}
        if name.startswith("resultmx"):
            data.update(score=np.zeros(n, np.float32), used=np.ones(n, np.int8))
        io.write_matrix(tmp_path / f"{name}.h5", data, {})
    summary = montage.run_summary(tmp_path)
    last = summary["iterations"][-1]
    assert last["classes"] == 4 and last["refilled"] == 1 and abs(last["largest_share"] - 1.6) < 1e-9
    montage.convergence_plot(summary, tmp_path / "c.png")
    assert is_png(tmp_path / "c.png")


def test_snakemake_report_has_every_picture_and_the_config(report_html):
    html = report_html.read_text()
    for name in ("final_classes.png", "final_classes.html", "convergence.png", "class_sizes.png", "summary.json",
                 "classes_init.png", "classes_01.png"):
        assert name in html, name
    for cat in ("1. Final class averages", "2. Convergence", "3. Class averages per iteration"):
        assert cat in html, cat
    assert "classaverager" in html and "ctf.weight.autofilt" in html  # the config table


def test_run_prints_where_exports_and_report_are(tiny_run):
    printed = (tiny_run / "snakemake.out").read_text()
    assert "exports in run/export/" in printed and "--report" in printed


# ----------------------------------------------------------------------------- headless Chromium
CLICKER = """<script>
(function(){
const steps = %s;
function findText(t){const els=[...document.querySelectorAll('a,button,td,span,li')];
  return els.reverse().find(x=>x.textContent.trim()===t);}
function mainImage(){const imgs=[...document.querySelectorAll('#app img')].filter(x=>x.src.startsWith('data:image/png'));
  return imgs.map(x=>({w:x.naturalWidth,h:x.naturalHeight,len:x.src.length}));}
const log=[]; let i=0;
function act(s){
  if (s==='record') { log.push({record: mainImage()}); return; }
  if (s.startsWith('eye:')) { const rows=[...document.querySelectorAll('tr')].filter(r=>r.textContent.includes(s.slice(4)));
    const b=rows.length ? rows[0].querySelector('a[iconname=eye]') : null; log.push([s, !!b]); if (b) b.click(); return; }
  const e=findText(s); log.push([s, !!e]); if (e) (e.closest('a,button')||e).click();
}
function next(){ if (i<steps.length) { act(steps[i++]); setTimeout(next, 700); return; }
  const d=document.createElement('pre'); d.id='r2d-check'; d.textContent=JSON.stringify(log); document.body.appendChild(d); }
setTimeout(next, 1500);
})();
</script>"""


def click_through(browser: str, html: Path, steps: list[str], out: Path, *, screenshot: Path | None = None) -> list:
    """Open a copy of ``html`` that clicks through ``steps``; return the recorded log."""
    text = html.read_text()
    i = text.rfind("</body>")
    page = out / f"{html.stem}_clicked.html"
    page.write_text(text[:i] + CLICKER % json.dumps(steps) + text[i:])
    base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            f"--virtual-time-budget={2000 + 800 * len(steps)}", "--window-size=1400,900"]
    if screenshot is not None:
        r = subprocess.run([*base, f"--screenshot={screenshot}", page.as_uri()], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and screenshot.exists(), r.stderr[-2000:]
    r = subprocess.run([*base, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="r2d-check">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stderr[-2000:]
    return json.loads(m.group(1).replace("&quot;", '"').replace("&amp;", "&"))


def test_report_renders_in_chromium(report_html, tmp_path, chromium):
    """The final montage, the convergence plot and an iteration's page show as real images."""
    steps = ["1. Final class averages", "eye:montage", "record",
             "Results", "2. Convergence", "eye:convergence", "record",
             "Results", "3. Class averages per iteration", "iteration 01", "eye:montage", "record"]
    shot = tmp_path / "final_montage.png"
    log = click_through(chromium, report_html, steps, tmp_path)
    clicks = [entry for entry in log if isinstance(entry, list)]
    assert all(ok for _, ok in clicks), clicks
    records = [entry["record"] for entry in log if isinstance(entry, dict)]
    assert len(records) == 3
    for rec in records:  # one PNG in the main pane, decoded to a real size
        assert rec and rec[-1]["w"] > 200 and rec[-1]["h"] > 150, records
    assert len({rec[-1]["len"] for rec in records}) == 3  # three different pictures
    # a screenshot of the final montage page, checked for content (and left in tmp_path to look at)
    click_through(chromium, report_html, steps[:3], tmp_path, screenshot=shot)
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    right = img[:, img.shape[1] // 3:, :3]  # the main pane, right of the menu
    assert right.std() > 0.05  # not a blank page: the montage is there


# ----------------------------------------------------------------------------- class stability
SORT_CLICKS = """<script>
setTimeout(function(){
  const th = document.querySelector('th[data-col="5"]'), order = () =>
    [...document.querySelectorAll('tbody tr')].map(r => +r.cells[1].textContent);
  const log = [order()]; th.click(); log.push(order()); th.click(); log.push(order());
  const d = document.createElement('pre'); d.id = 'r2d-check'; d.textContent = JSON.stringify(log);
  document.body.appendChild(d);
}, 300);
</script>"""


def test_stability_in_summary_labels_and_sortable_table(tiny_run, tmp_path, chromium):
    """With a run's stability.h5: summary.json carries each final class's stability and the
    run's summary of it, the montage labels show it, and the HTML class table (largest class
    first) sorts by it in a real browser, up and then down."""
    import shutil

    from r2d import cli

    run = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run)
    cmx = io.read_matrix(run / "classmx_01.h5")
    members = np.bincount(cmx["class"], minlength=4)
    stab = np.array([0.9, 0.2, 0.6, 0.4])
    io.write_matrix(run / "stability.h5", {"particle": cmx["particle"], "class": cmx["class"],
                                           "agreement": stab[cmx["class"]], "stability": stab},
                    {"artifact": "stability", "repeats": 3, "threshold": 2.0})
    data = montage.run_summary(run)
    assert [c["stability"] for c in data["final_classes"]] == pytest.approx(stab.tolist())
    assert data["stability"]["repeats"] == 3 and data["stability"]["median_class"] == pytest.approx(0.5)
    assert data["stability"]["particle_mean"] == pytest.approx(np.sum(stab * members) / members.sum())
    assert montage.class_label(2, 43, 21.5, 0.873) == "#3 · 43 ptcl\n21.5 Å · s 0.87"
    assert montage.class_label(2, 43, np.nan, 0.873) == "#3 · 43 ptcl\ns 0.87"

    page = tmp_path / "classes.html"
    assert cli.main(["montage", str(run / "classes_01.hdf"), "-o", str(tmp_path / "m.png"), "--stability",
                     str(run / "stability.h5"), "--table", str(page), "--title", "final"]) == 0
    assert is_png(tmp_path / "m.png")
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 4
    clicked = tmp_path / "clicked.html"
    clicked.write_text(text.replace("</body>", SORT_CLICKS + "</body>"))
    r = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000",
                        "--dump-dom", clicked.as_uri()], capture_output=True, text=True, timeout=120)
    m = re.search(r'<pre id="r2d-check">(.*?)</pre>', r.stdout, re.S)
    assert m, r.stderr[-2000:]
    first, up, down = json.loads(m.group(1))
    assert first == (np.argsort(-members, kind="stable") + 1).tolist()
    assert up == (np.argsort(stab) + 1).tolist() and down == up[::-1]
