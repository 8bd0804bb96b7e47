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

__all__ = ["electron_wavelength", "ctf_1d", "ctf_2d", "ctf_from_freqs", "aligned_defocus_angle", "ParticleCTF"]


def electron_wavelength(voltage_kv):
    """Relativistic electron wavelength in Angstrom for an acceleration voltage in kV (scalar or array)."""
    v = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    lam = 12.2643247 / np.sqrt(v * (1.0 + 0.978466e-6 * v))
    return float(lam) if lam.ndim == 0 else lam


def _phase_terms(voltage, cs, amp_contrast, phase_shift):
    """``k1 = pi*lambda``, ``k2 = pi/2*Cs*lambda^3``, ``w + phase_shift``; each scalar or per-particle array."""
    lam = np.asarray(electron_wavelength(voltage), dtype=np.float64)
    q = np.asarray(amp_contrast, dtype=np.float64)
    k1 = np.pi * lam
    k2 = 0.5 * np.pi * (np.asarray(cs, dtype=np.float64) * 1e7) * lam**3
    w = np.arctan(q / np.sqrt(1.0 - q**2))
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
    dtype=np.float64,
):
    """CTF at frequencies ``sx, sy`` (1/A, any broadcastable shape) for per-particle parameters.

    Every parameter (``defocus_u/v/angle``, ``voltage``, ``cs``, ``amp_contrast``,
    ``phase_shift``, ``bfactor``) is a scalar or a 1-D array of length N; the result has
    shape ``(N,) + broadcast(sx, sy).shape``, ``dtype``.

    The phase ``γ = k1·Δz(φ)·u² − k2·u⁴ + w`` with ``Δz(φ) = (du+dv)/2 + (du−dv)/2·cos 2(φ−a)``
    is expanded as ``A·u² + B·u²cos 2φ + C·u²sin 2φ − k2·u⁴ + w`` (per-particle ``A, B, C``):
    the trigonometry of the grid is done once (float64), and the per-particle work is four
    multiply-adds in ``dtype`` (float32: |γ| < 10³ rad at any realistic defocus and
    resolution, so its rounding error is below 10⁻⁴ rad) and one sine. Each value depends
    only on its own particle's parameters.
    """
    pars = np.broadcast_arrays(*(np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (
        defocus_u, defocus_v, defocus_angle, voltage, cs, amp_contrast, phase_shift, bfactor)))
    du, dv, ang, volt, csv, q, ps, bf = pars
    ang = np.deg2rad(ang)
    k1, k2, w = _phase_terms(volt, csv, q, ps)

    sx, sy = np.broadcast_arrays(np.asarray(sx, np.float64), np.asarray(sy, np.float64))
    u2 = sx * sx + sy * sy
    phi = np.arctan2(sy, sx)
    grid = [g.astype(dtype) for g in (u2, u2 * np.cos(2.0 * phi), u2 * np.sin(2.0 * phi), u2 * u2)]
    half = 0.5 * k1 * (du - dv)
    coef = [np.asarray(c, dtype=np.float64).astype(dtype) for c in (
        0.5 * k1 * (du + dv), half * np.cos(2.0 * ang), half * np.sin(2.0 * ang), -k2, w)]
    extra = (slice(None),) + (None,) * u2.ndim  # per-particle parameter -> (N, 1, 1, ...)
    gamma = coef[0][extra] * grid[0]
    for c, g in zip(coef[1:4], grid[1:]):
        gamma += c[extra] * g
    gamma += coef[4][extra]
    out = np.sin(gamma, out=gamma)
    if np.any(bf != 0):
        out *= np.exp(-bf[extra] * u2 / 4.0).astype(dtype, copy=False)
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
        voltage, cs, amp_contrast, phase_shift, bfactor, dtype=np.float32,
    )
    return out


# --------------------------------------------------------------------------- aligned particles
def aligned_defocus_angle(defocus_angle, alpha, mirror):
    """Astigmatism angle (degrees, in ``[0, 180)``) of a particle's CTF after the MTR transform
    ``(alpha, ., ., mirror)`` (:mod:`r2d.transforms`) has been applied to the image.

    Rotating an image rotates its Fourier transform the same way: a direction at angle ``phi``
    moves to ``phi - alpha``, and the mirror (``x -> -x``) maps ``phi`` to ``180 - phi``. So the
    CTF of the transformed image is the same CTF with ``angle - alpha`` (no mirror) or
    ``alpha - angle`` (mirror); translations only change phases and leave the CTF alone.
    Arrays broadcast.
    """
    a = np.asarray(defocus_angle, dtype=np.float64)
    al = np.asarray(alpha, dtype=np.float64)
    out = np.where(np.asarray(mirror) > 0.5, al - a, a - al)
    return np.mod(out, 180.0)


#: keys of a CTF parameter dict (``r2d.io.Stack.ctf_params``) used by :class:`ParticleCTF`
CTF_KEYS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amp_contrast", "phase_shift")


class ParticleCTF:
    """Per-particle CTF parameters of a stack, on a known pixel size.

    ``params``: dict of length-N float arrays with the keys of :data:`CTF_KEYS` (as returned
    by :meth:`r2d.io.Stack.ctf_params`; ``phase_shift`` may be missing), optional bool arrays
    ``phase_flipped`` (the images were multiplied by ``sign(CTF)``) and ``premultiplied``
    (the images were multiplied by the CTF). ``pixel_size`` in Å/px. Build it with
    :meth:`from_params`, which checks the values.
    """

    def __init__(self, params: dict, pixel_size: float):
        self.pixel_size = float(pixel_size)
        n = len(np.asarray(params["defocus_u"]))
        self.params = {k: np.broadcast_to(np.asarray(params.get(k, 0.0), dtype=np.float64), (n,)).copy()
                       for k in CTF_KEYS}
        self.phase_flipped = np.broadcast_to(np.asarray(params.get("phase_flipped", False), bool), (n,)).copy()
        self.premultiplied = np.broadcast_to(np.asarray(params.get("premultiplied", False), bool), (n,)).copy()

    def __len__(self) -> int:
        return len(self.params["defocus_u"])

    @classmethod
    def from_params(cls, params: dict | None, pixel_size: float | None) -> tuple[ParticleCTF | None, str]:
        """``(ParticleCTF, "")`` or ``(None, reason)`` when the CTF cannot be used (no parameters,
        no pixel size, non-finite values, voltage ≤ 0, no defocus at all, amplitude contrast
        outside [0, 1))."""
        if params is None:
            return None, "the input has no CTF parameters"
        if not pixel_size or not np.isfinite(pixel_size) or pixel_size <= 0:
            return None, "the input has no pixel size (needed to compute the CTF)"
        for k in CTF_KEYS:
            if k in params and not np.all(np.isfinite(np.asarray(params[k], dtype=np.float64))):
                return None, f"CTF parameter {k} has missing or non-finite values"
        if np.any(np.asarray(params["voltage"]) <= 0):
            return None, "the acceleration voltage is missing (0)"
        q = np.asarray(params["amp_contrast"], dtype=np.float64)
        if np.any((q < 0) | (q >= 1)):
            return None, "the amplitude contrast is outside [0, 1)"
        if np.all(np.asarray(params["defocus_u"]) == 0) and np.all(np.asarray(params["defocus_v"]) == 0):
            return None, "all defocus values are 0"
        return cls(params, pixel_size), ""

    def take(self, index) -> ParticleCTF:
        """The CTF of particles ``index`` (int array), in that order."""
        idx = np.asarray(index, dtype=np.intp)
        p = {k: v[idx] for k, v in self.params.items()}
        p["phase_flipped"] = self.phase_flipped[idx]
        p["premultiplied"] = self.premultiplied[idx]
        return ParticleCTF(p, self.pixel_size)

    def images(self, n: int, alpha=0.0, mirror=0.0, *, rfft: bool = True) -> np.ndarray:
        """CTF of every particle, after the image was transformed with ``(alpha, ., ., mirror)``
        (scalars or length-N arrays; see :func:`aligned_defocus_angle`): ``(N, n, n//2+1)``
        float32 in ``rfft2`` layout (``(N, n, n)`` ``fft2`` layout with ``rfft=False``)."""
        p = self.params
        ang = aligned_defocus_angle(p["defocus_angle"], alpha, mirror)
        return ctf_2d(n, self.pixel_size, p["defocus_u"], p["defocus_v"], ang, p["voltage"], p["cs"],
                      p["amp_contrast"], p["phase_shift"], rfft=rfft)

    def wiener_terms(self, n: int, alpha=0.0, mirror=0.0) -> tuple[np.ndarray, np.ndarray]:
        """``(c, w)``, each ``(N, n, n//2+1)`` float32 (rfft2 layout), for Wiener-style averaging
        of the (transformed) images: the signal estimate is ``Σ c_i F_i / (Σ w_i + 1/SNR)``.

        ``w = CTF²``; ``c = CTF`` for raw images (``F = CTF·S + noise``), ``|CTF|`` for
        phase-flipped ones (``F = |CTF|·S + noise``), ``1`` for CTF-premultiplied ones
        (``F = CTF²·S + CTF·noise``). In all three cases ``E[c·F] = w·S``.
        """
        ctf = self.images(n, alpha, mirror)
        w = ctf * ctf
        c = np.where(self.phase_flipped[:, None, None], np.abs(ctf), ctf)
        c = np.where(self.premultiplied[:, None, None], np.float32(1.0), c)
        return c.astype(np.float32), w
