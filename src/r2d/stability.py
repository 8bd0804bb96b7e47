"""Stability of classes: how reproducible each member's alignment is (``r2d stability``).

At low SNR a class can average to a crisp image whose members share no view: they were
aligned to the reference, and the reference is their average ("Einstein from noise"). The
half-set FSC does not see it, because both halves share the bias. SPHIRE's ISAC tests a class
by re-aligning its members from randomised starts and keeping the members whose alignment
comes back. r2d does the same with its own class averaging. A *repeat* averages the classes
of a result table again from scratch: each class bootstraps from its members taken in a
random order (``r2d average RESULTMX --random-start SEED``), so the average is rebuilt without
the reference the class was made with.

:func:`consensus_errors` compares a repeat with the final alignment without aligning any
averages. Each member gives a frame map ``G_p = T_final ∘ T_repeat⁻¹`` (repeat frame → final
frame). In a reproducible class these maps agree; the consensus map is the one most others
lie within :data:`STABLE_PX` of. A member's error is the RMS displacement between its map
and the consensus over a circle of the particle's radius (:func:`transform_error`).
:func:`summarise` gives each member its *agreement* (the share of repeats in which its error is
at most :data:`STABLE_PX`) and each class its *stability* (the mean agreement of its members).
A class of one view scores near 1. A mixture of views scores lower: the members of one view
align differently each time. An average of noise scores near 0.
"""

from __future__ import annotations

import numpy as np

from r2d import io
from r2d import transforms as tf
from r2d.errors import InputError

__all__ = ["transform_error", "consensus_errors", "summarise", "read_table", "STABLE_PX"]

#: a member agrees with a repeat when its error is at most this many pixels
STABLE_PX = 2.0

_KEYS = ("dalpha", "dx", "dy", "mirror")


def transform_error(a, b, radius: float) -> np.ndarray:
    """RMS displacement (px) between transforms ``a`` and ``b`` (MTR 4-tuples of arrays that
    broadcast) over the circle of ``radius`` px about the centre. With ``D = a ∘ b⁻¹``
    (rotation θ, shift t) it is ``sqrt(|t|² + 2 r² (1 − cos θ))``. Where exactly one of the two
    mirrors it is ``2 · radius`` (a point crosses the disc)."""
    d_alpha, d_tx, d_ty, d_mir = tf.compose(tf.invert(*b), a)
    theta = np.deg2rad(d_alpha)
    err = np.sqrt(d_tx ** 2 + d_ty ** 2 + 2 * radius ** 2 * (1 - np.cos(theta)))
    return np.where(d_mir > 0.5, 2.0 * radius, err)


def consensus_errors(final, repeat, radius: float, threshold: float = STABLE_PX, candidates: int = 64) -> np.ndarray:
    """Errors ``(N,)`` float64 (px) of one repeat. ``final`` and ``repeat`` are result tables
    (``class``, ``dalpha``, ``dx``, ``dy``, ``mirror``, the same particle rows; transforms
    ``T(particle) ≈ class average``). Per class, every member's frame map ``G_p = T_final ∘
    T_repeat⁻¹`` is computed. The consensus is the map, among at most ``candidates`` evenly
    spaced members, that the most maps lie within ``threshold`` of (ties: the lowest median
    error). A member's error is :func:`transform_error` of its map against the consensus. The
    error is NaN for rows that are not in the same class in both tables."""
    label = np.asarray(final["class"]).astype(np.int64)
    rlabel = np.asarray(repeat["class"]).astype(np.int64)
    fin = tuple(np.asarray(final[k], dtype=np.float64) for k in _KEYS)
    rep = tuple(np.asarray(repeat[k], dtype=np.float64) for k in _KEYS)
    g = tf.compose(tf.invert(*rep), fin)
    err = np.full(len(label), np.nan)
    for c in np.unique(label[label >= 0]):
        rows = np.flatnonzero((label == c) & (rlabel == c))
        if not len(rows):
            continue
        cand = rows[np.unique(np.linspace(0, len(rows) - 1, min(candidates, len(rows))).astype(int))]
        e = transform_error(tuple(x[rows][None, :] for x in g), tuple(x[cand][:, None] for x in g), radius)
        best = np.lexsort((np.median(e, axis=1), -(e <= threshold).sum(axis=1)))[0]
        err[rows] = e[best]
    return err


def summarise(errors: np.ndarray, label: np.ndarray, n_classes: int, threshold: float = STABLE_PX):
    """``(agreement (N,) float32, spread (N,) float32, stability (n_classes,) float32)`` from the
    errors ``(R, N)`` of R repeats:

    * agreement: the share of a row's repeats (finite errors) in which its error is at most
      ``threshold`` (NaN if it has none);
    * spread: the RMS of its errors over the repeats (px);
    * stability: the mean agreement of a class's members (``label`` (N,) ints, −1 = none; NaN
      for an empty class).
    """
    errors = np.atleast_2d(np.asarray(errors, dtype=np.float64))
    label = np.asarray(label).astype(np.int64)
    have = np.isfinite(errors)
    cnt = have.sum(axis=0)
    ok = cnt > 0
    agree = np.where(have, errors <= threshold, False).sum(axis=0) / np.maximum(cnt, 1)
    spread = np.sqrt((np.where(have, errors, 0.0) ** 2).sum(axis=0) / np.maximum(cnt, 1))
    member = (label >= 0) & ok
    total = np.bincount(label[member], minlength=n_classes)[:n_classes]
    good = np.bincount(label[member], weights=agree[member], minlength=n_classes)[:n_classes]
    with np.errstate(invalid="ignore", divide="ignore"):
        stability = np.where(total > 0, good / np.maximum(total, 1), np.nan)
    return (np.where(ok, agree, np.nan).astype(np.float32), np.where(ok, spread, np.nan).astype(np.float32),
            stability.astype(np.float32))


def read_table(path, n: int, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """``(per particle (n,), per class (n_classes,))`` float64 stability from a ``r2d stability``
    table (NaN where it has none); particles beyond ``n`` are left out."""
    t = io.read_matrix(path)
    if not {"particle", "agreement", "stability"} <= set(t):
        raise InputError(f"{path}: not a stability table (particle, agreement, stability); run r2d stability")
    per_particle = np.full(n, np.nan)
    inside = t["particle"] < n
    per_particle[t["particle"][inside]] = t["agreement"][inside]
    per_class = np.full(n_classes, np.nan)
    k = min(n_classes, len(t["stability"]))
    per_class[:k] = t["stability"][:k]
    return per_particle, per_class
