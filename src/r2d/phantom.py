"""Synthetic, asymmetric ribosome-like density for ground-truth simulations (no downloads).

The phantom's shape is set by 23 isotropic 3-D Gaussians placed in Angstrom: a large lobe wide along
x (the "50S" subunit, with a central protuberance, an L1-like stalk and a thin L7/L12-like
stalk) and a smaller lobe elongated along y (the "30S" subunit: head, neck, body, platform,
spur, beak), about 235 x 200 x 200 A (density above 5 % of the peak), i.e. ~47 px at 5 A/px,
reaching 27 px from the centre. It has no symmetry and a definite hand. ``seed`` places four
small surface bumps, so different seeds give slightly different particles; the same seed always
gives the same volume. The density is recentred so that its centre of mass is at voxel
``box // 2`` on every axis.

A smooth sum of such Gaussians has nothing to align on beyond its outline, and its class
averages look like featureless blobs. So each Gaussian is filled instead with chains of small
beads (:data:`BEAD_SIGMA` wide, :data:`BEAD_STEP` apart, bending at random and held inside
the Gaussian), about as many as its mass asks for (:func:`phantom_beads`): the density has the
same outline, with tube- and lump-like detail at 10-20 Å as a low-resolution map of RNA and
protein has. The beads are laid out by a fixed random generator, so every seed shares them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["phantom_volume", "phantom_blobs", "phantom_beads"]

#: Gaussian width of one bead, Å
BEAD_SIGMA = 5.0
#: distance between consecutive beads of a chain, Å
BEAD_STEP = 5.0
#: beads per chain
CHAIN_LENGTH = 16
#: the generator that lays out the beads (not the ``seed`` of the bumps)
_BEAD_SEED = 12345

#: size factor applied to the positions and widths below
_SCALE = 1.5

# (x, y, z, sigma, amplitude): Angstrom before scaling by _SCALE / relative density
_BLOBS = np.array(
    [
        # large subunit body, wide along x
        (0.0, 0.0, -25.0, 20.0, 1.00),
        (30.0, 10.0, -30.0, 17.0, 0.85),
        (-30.0, 8.0, -32.0, 17.0, 1.10),
        (8.0, -26.0, -28.0, 16.0, 0.80),
        (-14.0, -16.0, -48.0, 14.0, 0.90),
        (20.0, -6.0, -50.0, 14.0, 1.20),
        (-4.0, 24.0, -44.0, 14.0, 0.75),
        # central protuberance, L1 stalk, L7/L12 stalk
        (4.0, 44.0, -16.0, 11.0, 1.00),
        (-58.0, 20.0, -12.0, 9.0, 0.90),
        (56.0, -10.0, -24.0, 7.0, 0.90),
        (72.0, -20.0, -20.0, 6.0, 0.80),
        # small subunit, elongated along y: body, head, neck, lower body, platform, spur, beak, shoulder
        (-4.0, -4.0, 24.0, 14.0, 0.80),
        (-10.0, 38.0, 28.0, 12.0, 1.10),
        (-6.0, 18.0, 30.0, 9.0, 0.80),
        (4.0, -30.0, 26.0, 13.0, 0.75),
        (-30.0, -8.0, 22.0, 10.0, 0.95),
        (8.0, -54.0, 30.0, 7.0, 0.90),
        (10.0, 46.0, 36.0, 7.0, 0.80),
        (18.0, 4.0, 30.0, 9.0, 0.80),
    ],
    dtype=np.float64,
)



def phantom_blobs(seed: int = 0) -> np.ndarray:
    """The phantom's Gaussians as an ``(k, 5)`` array ``(x, y, z, sigma, amp)`` in Angstrom,
    centre of mass at the origin."""
    rng = np.random.default_rng(seed)
    blobs = _BLOBS.copy()
    # a few small surface bumps attached to random big blobs
    n_bumps = 4
    host = rng.choice(7, size=n_bumps, replace=False)
    direction = rng.normal(size=(n_bumps, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    centres = blobs[host, :3] + direction * blobs[host, 3:4] * 1.3
    sig = rng.uniform(5.0, 8.0, n_bumps)
    amp = rng.uniform(0.6, 0.8, n_bumps)
    blobs = np.vstack([blobs, np.column_stack([centres, sig, amp])])
    blobs[:, :4] *= _SCALE
    mass = blobs[:, 4] * blobs[:, 3] ** 3
    blobs[:, :3] -= (mass[:, None] * blobs[:, :3]).sum(0) / mass.sum()
    return blobs


def phantom_beads(seed: int = 0) -> np.ndarray:
    """The phantom's beads as an ``(m, 4)`` float64 array ``(x, y, z, amp)`` in Angstrom.

    Gaussian ``(c, σ, a)`` of :func:`phantom_blobs` holds ``round(0.6·a·(σ/3 Å)³)`` beads (at
    least 8) of amplitude ``a``, in chains of :data:`CHAIN_LENGTH` that start at a point drawn
    from the Gaussian and step :data:`BEAD_STEP` in a direction that turns at random and is
    pulled back towards ``c``; centre of mass at the origin."""
    rng = np.random.default_rng(_BEAD_SEED)
    out = []
    for x, y, z, s, a in phantom_blobs(seed):
        c = np.array([x, y, z])
        nb = max(8, int(round(a * (s / 3.0) ** 3 * 0.6)))
        pts = []
        while len(pts) < nb:
            p = c + rng.normal(size=3) * s * 0.6
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            for _ in range(CHAIN_LENGTH):
                pts.append(p.copy())
                d = d + 0.35 * rng.normal(size=3) - 0.6 * (p - c) / (s * s) * BEAD_STEP
                d /= np.linalg.norm(d)
                p = p + BEAD_STEP * d
        out.append(np.column_stack([np.array(pts[:nb]), np.full(nb, a)]))
    beads = np.vstack(out)
    beads[:, :3] -= (beads[:, 3:] * beads[:, :3]).sum(0) / beads[:, 3].sum()
    return beads


def phantom_volume(box: int = 64, pixel_size: float = 5.0, seed: int = 0) -> np.ndarray:
    """The phantom sampled on a ``(box, box, box)`` float32 grid (``vol[z, y, x]``), centre
    voxel ``box // 2``, ``pixel_size`` A/voxel; each bead a Gaussian of σ = max(:data:`BEAD_SIGMA`,
    one voxel), so the grid holds it (evaluated within 3σ + 1 voxel); peak density scaled to 2."""
    c = box // 2
    b = phantom_beads(seed)
    sig = max(BEAD_SIGMA / float(pixel_size), 1.0)
    r = int(np.ceil(3 * sig)) + 1
    off = np.arange(-r, r + 1)
    pos = b[:, :3] / float(pixel_size) + c
    vol = np.zeros((box, box, box), dtype=np.float64)
    for (px, py, pz), a in zip(pos, b[:, 3]):
        ix, iy, iz = (int(round(v)) + off for v in (px, py, pz))
        kx, ky, kz = ((i >= 0) & (i < box) for i in (ix, iy, iz))
        if not (kx.any() and ky.any() and kz.any()):
            continue
        gx, gy, gz = (np.exp(-((i[k] - v) ** 2) / (2 * sig * sig))
                      for i, k, v in ((ix, kx, px), (iy, ky, py), (iz, kz, pz)))
        vol[iz[kz][0]:iz[kz][-1] + 1, iy[ky][0]:iy[ky][-1] + 1, ix[kx][0]:ix[kx][-1] + 1] += (
            a * gz[:, None, None] * gy[None, :, None] * gx[None, None, :])
    peak = vol.max()
    return (vol * (2.0 / peak if peak > 0 else 1.0)).astype(np.float32)
