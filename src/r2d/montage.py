"""Pictures and summaries of a run for ``snakemake --report``: class-average montages, the
convergence plot, the class-size plot and per-iteration statistics (matplotlib, Agg backend).

Class numbers shown to people are **1-based** (as RELION's ``rlnClassNumber`` in the exports):
class ``k`` is ``class_id`` ``k − 1`` of r2d's artifacts. The *particle count* of a class is its
number of members (particles classified into it, ``n_kept + n_excluded``); the average itself
holds the kept ones (EMAN2's ``ptcl_repr``).
"""

from __future__ import annotations

import glob
import os
import re

import numpy as np

from r2d import io
from r2d.stability import read_table


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    with io.atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    if fig.canvas.manager is not None:  # a pyplot figure: release it
        _pyplot().close(fig)


def normalise(img: np.ndarray) -> tuple[float, float]:
    """Display range of one image: its 1st and 99th percentiles (contrast per image)."""
    lo, hi = np.percentile(img, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def montage(images: np.ndarray, labels: list[str], path, *, title: str = "", ncols: int | None = None) -> None:
    """Grid of images, each contrast-normalised (1st–99th percentile), with a label under each; PNG.

    The grid is one tiled picture in one set of axes (a figure of one axes per image took
    ten times as long to build and draw), labels placed under their cells; ``images[k]``
    ``(n, n)`` is drawn with row 0 at the bottom (``origin="lower"``), as in every r2d picture.
    """
    from matplotlib.figure import Figure  # no pyplot: nothing is shown, one figure is saved

    K = len(images)
    n = images.shape[-1] if K else 1
    ncols = ncols or max(1, int(np.ceil(np.sqrt(K * 1.3))))
    nrows = max(1, int(np.ceil(K / ncols)))
    lines = max([lab.count("\n") + 1 for lab in labels] or [1])
    cell_h = 1.3 + 0.15 * lines
    gap = n / 8  # between cells, in image pixels
    label_h = n * (cell_h - 1.15) / 1.15  # label band under each image, in image pixels
    W, H = ncols * (n + gap), nrows * (n + label_h)
    fig = Figure(figsize=(1.35 * ncols, cell_h * nrows + 0.5))
    ax = fig.add_axes((0.01, 0.01, 0.98, (cell_h * nrows) / (cell_h * nrows + 0.5) - 0.01))
    ax.set_axis_off()
    tile = np.full((int(np.ceil(H)), int(np.ceil(W))), np.nan, dtype=np.float32)
    for k in range(K):
        r, c = divmod(k, ncols)
        x0, y0 = c * (n + gap) + gap / 2, H - (r + 1) * (n + label_h) + label_h
        lo, hi = normalise(images[k])
        i0, j0 = int(round(y0)), int(round(x0))
        tile[i0:i0 + n, j0:j0 + n] = np.clip((images[k] - lo) / (hi - lo), 0, 1)
        ax.text(j0 + n / 2, i0 - n * 0.04, labels[k], ha="center", va="top", fontsize=7)
    ax.imshow(np.ma.masked_invalid(tile), cmap="gray", vmin=0, vmax=1, origin="lower",
              interpolation="nearest", extent=(0, tile.shape[1], 0, tile.shape[0]))
    ax.set_xlim(0, tile.shape[1])
    ax.set_ylim(0, tile.shape[0])
    if title:
        fig.suptitle(title, fontsize=10)
    _save(fig, path)


# ----------------------------------------------------------------------------- class statistics
def class_stats(headers: list[dict]) -> dict[str, np.ndarray]:
    """Per-average numbers from class-average headers: ``class_id``, ``members``, ``kept`` and
    ``resolution`` (Å; NaN where the header is absent)."""
    ids, members, kept, res = [], [], [], []
    for i, h in enumerate(headers):
        ids.append(int(h.get("class_id", i)))
        n_kept = h.get("n_kept", h.get("ptcl_repr"))
        if n_kept is None:
            n_kept = len(h.get("class_ptcl_idxs", []) or [])
        n_exc = h.get("n_excluded")
        if n_exc is None:
            n_exc = len(h.get("exc_class_ptcl_idxs", []) or [])
        kept.append(int(n_kept))
        members.append(int(n_kept) + int(n_exc))
        r = h.get("resolution")
        res.append(float(r) if isinstance(r, (int, float)) and not isinstance(r, bool) else np.nan)
    return {"class_id": np.array(ids, dtype=int), "members": np.array(members, dtype=int),
            "kept": np.array(kept, dtype=int), "resolution": np.array(res, dtype=float)}


def class_label(class_id: int, members: int, resolution: float = np.nan, stability: float = np.nan) -> str:
    """``"#3 · 412 ptcl"`` (1-based class number), plus ``"\\n12.3 Å"`` when the resolution is
    known and ``"· s 0.87"`` (class stability) when given."""
    text = f"#{class_id + 1} · {members} ptcl"
    extra = []
    if np.isfinite(resolution) and resolution > 0:
        extra.append(f"{resolution:.1f} Å")
    if np.isfinite(stability):
        extra.append(f"s {stability:.2f}")
    if extra:
        text += "\n" + " · ".join(extra)
    return text


def read_class_stability(path, n_classes: int) -> np.ndarray:
    """Per-class stability ``(n_classes,)`` from a ``r2d stability`` table (NaN where none)."""
    return read_table(path, 0, n_classes)[1]


def class_montage(stack_path, out_path, title: str = "", stability=None) -> None:
    """Montage of a class-average stack sorted by particle count (largest first), each average
    labelled with its class number, particle count and (when the header has it) resolution;
    ``stability``: per-class stability ``(K,)`` (indexed by ``class_id``) to show, or None."""
    imgs = io.read_image_stack(stack_path)
    st = class_stats(io.read_image_headers(stack_path))
    stab = _by_class(stability, st["class_id"])
    order = np.argsort(-st["members"], kind="stable")
    labels = [class_label(st["class_id"][i], st["members"][i], st["resolution"][i], stab[i]) for i in order]
    total = int(st["members"].sum())
    full = f"{title} — {len(imgs)} classes, {total} particles" if title else ""
    montage(imgs[order], labels, out_path, title=full)


def _by_class(per_class, class_id: np.ndarray) -> np.ndarray:
    """``per_class[class_id]`` (NaN outside it, or everywhere when ``per_class`` is None)."""
    out = np.full(len(class_id), np.nan)
    if per_class is not None:
        per_class = np.asarray(per_class, dtype=np.float64)
        ok = (class_id >= 0) & (class_id < len(per_class))
        out[ok] = per_class[class_id[ok]]
    return out


def _thumbnail(img: np.ndarray) -> str:
    """One average as a base64 PNG (contrast as in the montage, row 0 at the bottom)."""
    import base64
    from io import BytesIO

    import matplotlib.image as mpimg

    lo, hi = normalise(img)
    buf = BytesIO()
    mpimg.imsave(buf, np.clip((img[::-1] - lo) / (hi - lo), 0, 1), cmap="gray", vmin=0, vmax=1, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


_SORTER = """<script>
document.querySelectorAll('th[data-col]').forEach(function (th) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0], col = +th.dataset.col;
    var up = th.dataset.dir !== 'up';
    th.closest('tr').querySelectorAll('th').forEach(function (o) { delete o.dataset.dir; });
    th.dataset.dir = up ? 'up' : 'down';
    var key = function (tr) { var v = parseFloat(tr.cells[col].dataset.v); return isNaN(v) ? Infinity : v; };
    Array.from(body.rows).sort(function (a, b) { return up ? key(a) - key(b) : key(b) - key(a); })
      .forEach(function (tr) { body.appendChild(tr); });
  });
});
</script>"""


def _cell(v, fmt: str) -> str:
    return "–" if not np.isfinite(v) else format(int(v) if fmt == "d" else float(v), fmt)


def class_table_html(stack_path, out_path, title: str = "", stability=None) -> None:
    """Self-contained HTML page: one row per class average (picture, class number, members,
    particles in the average, resolution, stability), largest class first; a click on a column
    header sorts by it (again: the other way). ``stability`` as for :func:`class_montage`."""
    import html

    imgs = io.read_image_stack(stack_path)
    st = class_stats(io.read_image_headers(stack_path))
    stab = _by_class(stability, st["class_id"])
    cols = ["class", "particles", "in the average", "resolution (Å)", "stability"]
    formats = ["d", "d", "d", ".1f", ".2f"]
    rows = []
    for i in np.argsort(-st["members"], kind="stable"):
        vals = [st["class_id"][i] + 1, st["members"][i], st["kept"][i], st["resolution"][i], stab[i]]
        cells = "".join(f'<td data-v="{v}">{_cell(v, fmt)}</td>' for v, fmt in zip(vals, formats))
        rows.append(f'<tr><td><img src="data:image/png;base64,{_thumbnail(imgs[i])}" width="96" height="96" '
                    f'alt="class {st["class_id"][i] + 1}"></td>{cells}</tr>')
    head = "<th>average</th>" + "".join(f'<th data-col="{j + 1}" title="sort">{c} ⇅</th>' for j, c in enumerate(cols))
    page = f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title or "class averages")}</title>
<style>body{{font-family:sans-serif;margin:1em}} table{{border-collapse:collapse}}
td,th{{padding:2px 10px;text-align:right;border-bottom:1px solid #ddd}} th[data-col]{{cursor:pointer}}
img{{image-rendering:pixelated}}</style></head>
<body><h3>{html.escape(title or "class averages")}</h3>
<p>{len(imgs)} classes, {int(st["members"].sum())} particles. Click a column header to sort by it.</p>
<table><thead><tr>{head}</tr></thead><tbody>
{chr(10).join(rows)}
</tbody></table>
{_SORTER}
</body></html>
"""
    with io.atomic_write(out_path) as tmp:
        tmp.write_text(page)


# ----------------------------------------------------------------------------- run summary
def _changed(prev: np.ndarray, cls: np.ndarray) -> int:
    """Particles whose class changed, after the best one-to-one matching of the two numberings
    (k-means numbers its classes arbitrarily in every iteration)."""
    from scipy.optimize import linear_sum_assignment

    ok = (cls >= 0) & (prev >= 0)
    if not ok.any():
        return 0
    a, b = prev[ok], cls[ok]
    M = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(M, (a, b), 1)
    r, c = linear_sum_assignment(-M)
    return int(ok.sum() - M[r, c].sum())


def _image_sizes(run_dir) -> dict:
    """The ``images`` entry of :func:`run_summary` (empty without ``particles.h5``)."""
    index = os.path.join(run_dir, "particles.h5")
    if not os.path.exists(index):
        return {}
    a = io.read_matrix_attrs(index)

    def num(key):
        v = a.get(key)
        return None if v is None or not np.isfinite(float(v)) else float(v)

    box = io.open_stack(index).box
    out = {"box": box, "pixel_size": num("pixel_size"), "input_box": int(a.get("input_box", box)),
           "input_pixel_size": num("input_pixel_size"), "maxres": num("maxres")}
    final = os.path.join(run_dir, "classes_final.hdf")
    if os.path.exists(final):
        heads = io.read_image_headers(final)
        res = np.array([float(h.get("resolution", np.nan)) for h in heads])
        out["final_box"] = int(io.read_image_stack(final).shape[-1])
        out["final_median_resolution"] = float(np.nanmedian(res)) if np.isfinite(res).any() else None
    return out


def run_summary(run_dir) -> dict:
    """Per-iteration numbers of a run folder: ``iteration`` (0 = initial classes), ``classes``
    (non-empty, as averaged), ``refilled`` (classes the assignment left empty or that class
    averaging divided anew), ``largest_share`` (the largest class over the mean), ``particles``
    (classified), ``changed`` (particles that changed class since the
    previous iteration, after matching class numbers; absent for iteration 0), ``changed_frac``,
    ``mean_score`` (mean classcmp score of the classified particles against their class
    average; lower is better), ``kept`` (particles in the averages), ``median_resolution``
    (Å, when the averages carry a ``resolution`` header); and ``final_classes``: per class of
    the last iteration ``class`` (1-based), ``members``, ``kept``, ``resolution``; ``images``:
    the working box and pixel size the iterations ran at (``box``, ``pixel_size``) and the
    input's (``input_box``, ``input_pixel_size``, ``maxres``; from ``particles.h5``), with
    ``final_box`` and ``final_median_resolution`` of the full-size ``classes_final`` if any; with
    the run's ``stability.h5``, each final class's ``stability`` and ``stability``: ``repeats``,
    ``threshold_px``, ``median_class`` (median over classes) and ``particle_mean`` (the mean
    agreement of all classified particles, the member-weighted mean of the classes)."""
    files = sorted(glob.glob(os.path.join(run_dir, "classmx_[0-9][0-9].h5")))
    out: dict = {"iterations": []}
    images = _image_sizes(run_dir)
    if images:
        out["images"] = images
    prev = None
    for f in files:
        it = int(re.search(r"classmx_(\d\d)\.h5$", f).group(1))
        cmx = io.read_matrix(f)
        cls = np.full(int(cmx["particle"].max()) + 1, -1, dtype=np.int64)
        cls[cmx["particle"]] = cmx["class"]
        entry = {"iteration": it, "classes": int(len(np.unique(cls[cls >= 0]))), "particles": int((cls >= 0).sum())}
        if prev is not None:
            n = max(len(prev), len(cls))
            pad = lambda a: np.concatenate([a, np.full(n - len(a), -1, dtype=a.dtype)])  # noqa: E731
            entry["changed"] = _changed(pad(prev), pad(cls))
            entry["changed_frac"] = entry["changed"] / max(1, entry["particles"])
        name = "init" if it == 0 else f"{it:02d}"
        res = os.path.join(run_dir, f"resultmx_{name}.h5")
        if os.path.exists(res):
            rm = io.read_matrix(res)
            ok = rm["class"] >= 0
            entry["mean_score"] = float(np.mean(rm["score"][ok])) if ok.any() else None
            entry["kept"] = int(rm["used"].sum())
            sizes = np.bincount(rm["class"][ok])
            sizes = sizes[sizes > 0]
            entry["refilled"] = max(0, len(sizes) - entry["classes"]) if it > 0 else 0
            entry["classes"] = int(len(sizes))
            entry["largest_share"] = float(sizes.max() / sizes.mean()) if len(sizes) else None
        classes = os.path.join(run_dir, f"classes_{name}.hdf")
        if os.path.exists(classes):
            st = class_stats(io.read_image_headers(classes))
            if np.isfinite(st["resolution"]).any():
                entry["median_resolution"] = float(np.nanmedian(st["resolution"]))
            out["final_classes"] = [
                {"class": int(k) + 1, "members": int(m), "kept": int(p),
                 "resolution": None if not np.isfinite(r) else float(r)}
                for k, m, p, r in zip(st["class_id"], st["members"], st["kept"], st["resolution"])]
            final_ids = st["class_id"]
        out["iterations"].append(entry)
        prev = cls
    stab_path = os.path.join(run_dir, "stability.h5")
    if os.path.exists(stab_path) and "final_classes" in out:
        attrs = io.read_matrix_attrs(stab_path)
        stab = _by_class(read_class_stability(stab_path, int(final_ids.max(initial=-1)) + 1), final_ids)
        for c, s in zip(out["final_classes"], stab):
            c["stability"] = float(s) if np.isfinite(s) else None
        members = np.array([c["members"] for c in out["final_classes"]], dtype=float)
        ok = np.isfinite(stab) & (members > 0)
        out["stability"] = {
            "repeats": int(attrs.get("repeats", 0)), "threshold_px": float(attrs.get("threshold", np.nan)),
            "median_class": float(np.median(stab[ok])) if ok.any() else None,
            "particle_mean": float(np.sum(stab[ok] * members[ok]) / members[ok].sum()) if ok.any() else None}
    return out


def convergence_plot(summary: dict, path) -> None:
    """Three panels over the iterations: particles that changed class, the mean score, and the
    largest class over the mean (with the classes made by division)."""
    plt = _pyplot()
    its = summary["iterations"]
    fig, (a1, a2, a3) = plt.subplots(1, 3, figsize=(12, 3.2))
    ch = [(e["iteration"], 100 * e["changed_frac"]) for e in its if "changed_frac" in e]
    if ch:
        x, y = zip(*ch)
        a1.plot(x, y, "o-", color="C0")
        for xi, e in zip(x, [e for e in its if "changed_frac" in e]):
            a1.annotate(str(e["changed"]), (xi, 100 * e["changed_frac"]), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=7)
        a1.set_ylim(0, max(y) * 1.18 + 1)  # room for the counts
    else:
        a1.text(0.5, 0.5, "needs two iterations", transform=a1.transAxes, ha="center")
    a1.set_xlabel("iteration")
    a1.set_ylabel("particles that changed class (%)")
    a1.set_title("class changes (count above each point)", fontsize=9)
    sc = [(e["iteration"], e["mean_score"]) for e in its if e.get("mean_score") is not None]
    if sc:
        x, y = zip(*sc)
        a2.plot(x, y, "s-", color="C1")
    a2.set_xlabel("iteration")
    a2.set_ylabel("mean score (lower is better)")
    a2.set_title("particle vs class-average score", fontsize=9)
    sh = [(e["iteration"], e["largest_share"], e.get("refilled", 0)) for e in its if e.get("largest_share")]
    if sh:
        x, y, r = zip(*sh)
        a3.plot(x, y, "^-", color="C3")
        for xi, yi, ri in sh:
            if ri:
                a3.annotate(f"+{ri}", (xi, yi), textcoords="offset points", xytext=(0, 5), ha="center", fontsize=7)
        a3.set_ylim(0, max(max(y) * 1.18, 3.3))
        a3.axhline(3, color="0.6", lw=0.8, ls="--")
    a3.set_xlabel("iteration")
    a3.set_ylabel("largest class / mean")
    a3.set_title("largest class (+N: classes made by division)", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    allx = [e["iteration"] for e in its]
    for ax in (a1, a2, a3):
        ax.grid(alpha=0.3)
        ax.set_xticks(allx, ["init" if v == 0 else str(v) for v in allx])
        ax.set_xlim(min(allx) - 0.3, max(allx) + 0.3)
    a1.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    _save(fig, path)


def class_size_plot(summary: dict, path) -> None:
    """Class sizes of the last iteration: bars per class (largest first; kept part darker) and
    the histogram of class sizes."""
    plt = _pyplot()
    cl = summary.get("final_classes") or []
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.5, 3.2), gridspec_kw={"width_ratios": [2, 1]})
    if cl:
        cl = sorted(cl, key=lambda c: -c["members"])
        x = np.arange(len(cl))
        a1.bar(x, [c["members"] for c in cl], color="C0", alpha=0.45, label="members")
        a1.bar(x, [c["kept"] for c in cl], color="C0", label="in the average")
        a1.set_xticks(x, [str(c["class"]) for c in cl], fontsize=max(4, 8 - len(cl) // 16))
        a1.legend(fontsize=7)
        sizes = [c["members"] for c in cl]
        a2.hist(sizes, bins=min(20, max(3, len(sizes) // 2)), color="C2")
    a1.set_xlabel("class (largest first)")
    a1.set_ylabel("particles")
    a1.set_title("particles per class", fontsize=9)
    a2.set_xlabel("particles per class")
    a2.set_ylabel("classes")
    a2.set_title("class-size histogram", fontsize=9)
    from matplotlib.ticker import MaxNLocator

    a2.yaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    _save(fig, path)
