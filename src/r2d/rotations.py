"""Rotations in RELION's ZYZ Euler convention (the simulator's truth tables, the evaluation):
angle/matrix conversion, uniform random rotations and viewing directions."""

from __future__ import annotations

import numpy as np

__all__ = ["euler_to_matrix", "matrix_to_euler", "random_rotations", "view_directions", "cap_angles"]


def euler_to_matrix(rot, tilt, psi) -> np.ndarray:
    """RELION ZYZ Euler angles (degrees, scalars or length-N arrays) -> ``(N, 3, 3)`` float64."""
    a, b, g = (np.deg2rad(np.atleast_1d(np.asarray(t, dtype=np.float64))) for t in (rot, tilt, psi))
    a, b, g = np.broadcast_arrays(a, b, g)
    ca, sa, cb, sb, cg, sg = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(g), np.sin(g)
    cc, cs, sc, ss = cb * ca, cb * sa, sb * ca, sb * sa
    m = np.empty(a.shape + (3, 3))
    m[..., 0, 0] = cg * cc - sg * sa
    m[..., 0, 1] = cg * cs + sg * ca
    m[..., 0, 2] = -cg * sb
    m[..., 1, 0] = -sg * cc - cg * sa
    m[..., 1, 1] = -sg * cs + cg * ca
    m[..., 1, 2] = sg * sb
    m[..., 2, 0] = sc
    m[..., 2, 1] = ss
    m[..., 2, 2] = cb
    return m


def matrix_to_euler(mats) -> np.ndarray:
    """``(N, 3, 3)`` rotation matrices -> ``(N, 3)`` RELION Euler angles ``(rot, tilt, psi)``
    in degrees, ``tilt`` in [0, 180], ``rot`` and ``psi`` in (-180, 180]; ``rot = 0`` when
    ``tilt`` is 0 or 180 (gimbal lock)."""
    m = np.asarray(mats, dtype=np.float64).reshape(-1, 3, 3)
    tilt = np.arccos(np.clip(m[:, 2, 2], -1.0, 1.0))
    sb = np.hypot(m[:, 0, 2], m[:, 1, 2])
    regular = sb > 1e-9
    rot = np.where(regular, np.arctan2(m[:, 2, 1], m[:, 2, 0]), 0.0)
    psi_regular = np.arctan2(m[:, 1, 2], -m[:, 0, 2])
    psi_lock = np.arctan2(m[:, 0, 1], np.where(m[:, 2, 2] > 0, m[:, 0, 0], -m[:, 0, 0]))
    psi = np.where(regular, psi_regular, psi_lock)
    return np.rad2deg(np.column_stack([rot, tilt, psi]))


def random_rotations(n: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rotations uniform on SO(3) (normalised Gaussian quaternions).

    ``rng`` is a ``numpy.random.Generator`` or an integer seed. Returns ``(matrices (n, 3, 3)
    float64, angles (n, 3) float64)`` with ``matrices == euler_to_matrix(*angles.T)``.
    """
    rng = np.random.default_rng(rng)
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    m = np.empty((n, 3, 3))
    m[:, 0, 0] = 1 - 2 * (y * y + z * z)
    m[:, 0, 1] = 2 * (x * y - z * w)
    m[:, 0, 2] = 2 * (x * z + y * w)
    m[:, 1, 0] = 2 * (x * y + z * w)
    m[:, 1, 1] = 1 - 2 * (x * x + z * z)
    m[:, 1, 2] = 2 * (y * z - x * w)
    m[:, 2, 0] = 2 * (x * z - y * w)
    m[:, 2, 1] = 2 * (y * z + x * w)
    m[:, 2, 2] = 1 - 2 * (x * x + y * y)
    angles = matrix_to_euler(m)
    return euler_to_matrix(*angles.T), angles


def view_directions(mats) -> np.ndarray:
    """Viewing directions (unit vectors in the volume frame) of ``(N, 3, 3)`` rotations: ``A[:, 2]``."""
    return np.asarray(mats, dtype=np.float64).reshape(-1, 3, 3)[:, 2, :].copy()


def cap_angles(n: int, rng, spread: float) -> np.ndarray:
    """RELION Euler angles ``(n, 3)`` float64 (degrees) whose viewing directions are uniform
    on the cap within ``spread`` degrees of the map's z axis (a preferred orientation):
    ``rot`` uniform in [0, 360), ``cos tilt`` uniform in [cos spread, 1], ``psi`` uniform in
    [−180, 180)."""
    rng = np.random.default_rng(rng)
    rot = rng.uniform(0.0, 360.0, n)
    tilt = np.degrees(np.arccos(rng.uniform(np.cos(np.radians(spread)), 1.0, n)))
    psi = rng.uniform(-180.0, 180.0, n)
    return np.column_stack([rot, tilt, psi])
