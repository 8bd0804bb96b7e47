"""Contrast transfer function (CTF) model, RELION's formula and sign convention.

For spatial frequency ``s = (sx, sy)`` in 1/Angstrom (``|s| = u``, direction ``phi`` from the
x axis), per particle::

    lambda  = 12.2643247 / sqrt(V * (1 + 0.978466e-6 * V))     electron wavelength (A), V in volts
                                                                (relativistic correction)
    dz(phi) = (dU + dV)/2 + (dU - dV)/2 * cos(2 * (phi - angle)) defocus (A), underfocus > 0
    gamma   = pi * lambda * dz(phi) * u**2 - pi/2 * Cs * lambda**3 * u**4 + w + phase_shift
    w       = arctan(Q / sqrt(1 - Q**2))                          amplitude contrast Q
    CTF     = sin(gamma) * exp(-B * u**2 / 4)

with Cs in Angstrom (``cs`` is given in mm). This is exactly RELION's ``CTF::getCTF``
(``-sin(K1*deltaf*u2 + K2*u4 - K5 - K3)`` with ``deltaf = -dz``). Consequences:

* ``CTF(0) = +Q`` (``sin(arctan(Q/sqrt(1-Q^2))) = Q``) and the CTF is *positive* at low
  frequency for an underfocused image: a positive density projects to a positive
  (bright) blob, as in RELION-extracted particles (which are contrast-inverted).
* ``defocus_u`` is the defocus along the frequency direction at ``defocus_angle`` degrees
  from the x axis (counter-clockwise towards +y, i.e. towards increasing row index),
  ``defocus_v`` the one perpendicular to it.

Arrays follow the project convention ``a[..., y, x]``; frequencies are laid out as
``np.fft.fft2`` (unshifted, DC at ``[0, 0]``) or ``np.fft.rfft2`` (``rfft=True``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["electron_wavelength", "ctf_1d", "ctf_2d", "ctf_from_freqs"]


def electron_wavelength(voltage_kv: float) -> float:
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV."""
    v = float(voltage_kv) * 1e3
    return 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))


def _phase_terms(voltage, cs, amp_contrast, phase_shift):
    lam = electron_wavelength(voltage)
    k1 = np.pi * lam
    k2 = 0.5 * np.pi * (float(cs) * 1e7) * lam**3
    w = np.arctan(amp_contrast / np.sqrt(1.0 - amp_contrast**2))
    return k1, k2, w + np.deg2rad(phase_shift)


def ctf_from_freqs(
    sx,
    sy,
    defocus_u,
    defocus_v,
    defocus_angle,
    voltage=300.0,
    cs=2.7,
    amp_contrast=0.1,
    phase_shift=0.0,
    bfactor=0.0,
):
    """CTF at frequencies ``sx, sy`` (1/A, any broadcastable shape) for per-particle parameters.

    ``defocus_u/v/angle`` (and ``phase_shift``, ``bfactor``) are scalars or 1-D arrays of
    length N; the result has shape ``(N,) + broadcast(sx, sy).shape``, float64.
    """
    du = np.atleast_1d(np.asarray(defocus_u, dtype=np.float64))
    dv = np.atleast_1d(np.asarray(defocus_v, dtype=np.float64))
    ang = np.deg2rad(np.atleast_1d(np.asarray(defocus_angle, dtype=np.float64)))
    du, dv, ang = np.broadcast_arrays(du, dv, ang)
    k1, k2, w = _phase_terms(voltage, cs, amp_contrast, 0.0)
    ps = np.deg2rad(np.broadcast_to(np.atleast_1d(np.asarray(phase_shift, float)), du.shape))
    bf = np.broadcast_to(np.atleast_1d(np.asarray(bfactor, float)), du.shape)

    sx, sy = np.broadcast_arrays(np.asarray(sx, np.float64), np.asarray(sy, np.float64))
    u2 = sx * sx + sy * sy
    phi = np.arctan2(sy, sx)
    extra = (slice(None),) + (None,) * u2.ndim  # per-particle parameter -> (N, 1, 1, ...)
    dz = 0.5 * (du + dv)[extra] + 0.5 * (du - dv)[extra] * np.cos(2.0 * (phi - ang[extra]))
    gamma = k1 * dz * u2 - k2 * u2 * u2 + w + ps[extra]
    out = np.sin(gamma)
    if np.any(bf != 0):
        out *= np.exp(-bf[extra] * u2 / 4.0)
    return out


def ctf_1d(s, defocus, voltage=300.0, cs=2.7, amp_contrast=0.1, phase_shift=0.0, bfactor=0.0):
    """Rotationally averaged (non-astigmatic) CTF at radial frequencies ``s`` (1/A), float64."""
    s = np.asarray(s, dtype=np.float64)
    return ctf_from_freqs(
        s, np.zeros_like(s), defocus, defocus, 0.0, voltage, cs, amp_contrast, phase_shift, bfactor
    )[0]


def ctf_2d(
    n: int,
    pixel_size: float,
    defocus_u,
    defocus_v,
    defocus_angle,
    voltage=300.0,
    cs=2.7,
    amp_contrast=0.1,
    phase_shift=0.0,
    bfactor=0.0,
    rfft: bool = False,
) -> np.ndarray:
    """CTF images for N particles on an ``n x n`` box: ``(N, n, n)`` float32 in ``fft2`` layout
    (``rfft=True``: ``(N, n, n//2 + 1)``, ``rfft2`` layout).

    Defocus in Angstrom (underfocus positive), ``defocus_angle`` and ``phase_shift`` in degrees,
    ``voltage`` in kV, ``cs`` in mm, ``bfactor`` in A^2; per-particle parameters are scalars or
    length-N arrays. ``pixel_size`` in A/px.
    """
    fy = np.fft.fftfreq(n, d=pixel_size)
    fx = np.fft.rfftfreq(n, d=pixel_size) if rfft else fy
    out = ctf_from_freqs(
        fx[None, :], fy[:, None], defocus_u, defocus_v, defocus_angle,
        voltage, cs, amp_contrast, phase_shift, bfactor,
    )
    return out.astype(np.float32)
