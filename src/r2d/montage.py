"""Pictures and summaries of a run: class-average montages (matplotlib) and per-iteration statistics."""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from r2d import io


def montage(images: np.ndarray, labels: list[str], path, *, title: str = "", ncols: int | None = None) -> None:
    """Grid of images, each contrast-normalised (1st–99th percentile), with a label under each; PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    K = len(images)
    ncols = ncols or int(np.ceil(np.sqrt(K * 1.3)))
    nrows = max(1, int(np.ceil(K / ncols)))
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.3 * ncols, 1.45 * nrows + 0.4), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for k in range(K):
        ax = axes.ravel()[k]
        img = images[k]
        lo, hi = np.percentile(img, [1, 99])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, origin="lower", interpolation="nearest")
        ax.set_title(labels[k], fontsize=7, y=-0.22)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with io.atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def class_montage(stack_path, out_path, title: str = "") -> None:
    """Montage of a class-average stack sorted by particle count (largest first)."""
    imgs = io.read_image_stack(stack_path)
    heads = io.read_image_headers(stack_path)
    counts = np.array([h.get("ptcl_repr", 0) for h in heads])
    order = np.argsort(-counts, kind="stable")
    labels = [f"#{heads[i].get('class_id', i)}: {counts[i]} ptcl" for i in order]
    montage(imgs[order], labels, out_path, title=title)


def run_summary(run_dir) -> dict:
    """Per-iteration numbers of a run folder: classes, particles that changed class, mean class score."""
    files = sorted(glob.glob(os.path.join(run_dir, "classmx_[0-9][0-9].h5")))
    out = {"iterations": []}
    prev = None
    for f in files:
        it = int(re.search(r"classmx_(\d\d)\.h5$", f).group(1))
        cmx = io.read_matrix(f)
        cls = cmx["class"]
        entry = {"iteration": it, "classes": int(len(np.unique(cls[cls >= 0]))), "particles": int((cls >= 0).sum())}
        if prev is not None and it > 0 and len(prev) == len(cls):
            # class numbers are arbitrary between runs of k-means: count particles whose class
            # partner set changed, via the best one-to-one match of classes
            from scipy.optimize import linear_sum_assignment

            ok = (cls >= 0) & (prev >= 0)
            a, b = prev[ok], cls[ok]
            M = np.zeros((a.max() + 1, b.max() + 1))
            np.add.at(M, (a, b), 1)
            r, c = linear_sum_assignment(-M)
            entry["changed"] = int(ok.sum() - M[r, c].sum())
        res = os.path.join(run_dir, f"resultmx_{it:02d}.h5")
        if os.path.exists(res):
            rm = io.read_matrix(res)
            entry["mean_score"] = float(np.mean(rm["score"][rm["class"] >= 0]))
            entry["kept"] = int(rm["used"].sum())
        out["iterations"].append(entry)
        prev = cls if it > 0 else None
    return out
