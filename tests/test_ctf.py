"""CTF model: wavelength, zeros, sign at DC, astigmatism direction, layouts."""

import numpy as np
import pytest

from r2d.ctf import ParticleCTF, aligned_defocus_angle, ctf_1d, ctf_2d, ctf_from_freqs, electron_wavelength


def test_wavelength_known_values():
    # textbook relativistic wavelengths
    assert electron_wavelength(300) == pytest.approx(0.019687, abs=2e-6)
    assert electron_wavelength(200) == pytest.approx(0.025079, abs=2e-6)
    assert electron_wavelength(100) == pytest.approx(0.037014, abs=2e-6)


@pytest.mark.parametrize("defocus,cs,q", [(20000.0, 2.7, 0.1), (8000.0, 0.01, 0.07), (15000.0, 2.0, 0.0)])
def test_zeros_at_analytic_frequencies(defocus, cs, q):
    lam = electron_wavelength(300)
    w = np.arctan(q / np.sqrt(1 - q * q))
    a = 0.5 * np.pi * cs * 1e7 * lam**3
    b = np.pi * lam * defocus
    # gamma(s) = b s^2 - a s^4 + w = k pi  ->  smaller root of a x^2 - b x + (k pi - w) = 0, x = s^2
    ks = np.arange(1, 8)
    x = (b - np.sqrt(b * b - 4 * a * (ks * np.pi - w))) / (2 * a)
    s0 = np.sqrt(x)
    assert s0.max() < 0.5  # all within a 1 A/px Nyquist
    np.testing.assert_allclose(ctf_1d(s0, defocus, cs=cs, amp_contrast=q), 0.0, atol=1e-9)
    # and they are sign changes, the first one from + to -
    below = ctf_1d(s0 * (1 - 1e-3), defocus, cs=cs, amp_contrast=q)
    above = ctf_1d(s0 * (1 + 1e-3), defocus, cs=cs, amp_contrast=q)
    assert np.all(np.sign(below) == -np.sign(above))
    assert below[0] > 0 > above[0]
    # no other zero before the first one
    s = np.linspace(0, s0[0] * 0.999, 2000)
    assert np.all(ctf_1d(s, defocus, cs=cs, amp_contrast=q) > -1e-12)


def test_dc_and_low_frequency_sign():
    c = ctf_2d(64, 2.0, [10000, 25000], [10000, 20000], [0, 30], amp_contrast=0.1)
    assert c.shape == (2, 64, 64) and c.dtype == np.float32
    # RELION convention: CTF(0) = +amplitude contrast, positive at low frequency (underfocus)
    np.testing.assert_allclose(c[:, 0, 0], 0.1, rtol=1e-6)
    assert np.all(c[:, 0, 1:3] > 0.1) and np.all(c[:, 1:3, 0] > 0.1)
    # a phase plate shift of 90 degrees gives cos(w) = sqrt(1 - Q^2) at DC
    c90 = ctf_2d(32, 2.0, 10000, 10000, 0, amp_contrast=0.1, phase_shift=90)
    assert c90[0, 0, 0] == pytest.approx(np.sqrt(1 - 0.01), rel=1e-6)
    # overfocus (negative defocus) flips the low-frequency sign
    assert ctf_2d(32, 2.0, -20000, -20000, 0)[0, 0, 2] < 0


@pytest.mark.parametrize("angle", [0.0, 37.0, 90.0, 150.0])
def test_astigmatism_direction(angle):
    du, dv = 14000.0, 22000.0
    s = np.linspace(0, 0.2, 400)
    t = np.deg2rad(angle)
    along_u = ctf_from_freqs(s * np.cos(t), s * np.sin(t), du, dv, angle)[0]
    along_v = ctf_from_freqs(-s * np.sin(t), s * np.cos(t), du, dv, angle)[0]
    np.testing.assert_allclose(along_u, ctf_1d(s, du), atol=1e-12)
    np.testing.assert_allclose(along_v, ctf_1d(s, dv), atol=1e-12)
    assert np.abs(along_u - along_v).max() > 0.5  # the test can tell U from V


def test_grid_layout_axes():
    n, apix = 64, 2.5
    f = np.fft.fftfreq(n, d=apix)
    # angle 0: U along the x axis = array axis 1 (columns), V along y = axis 0 (rows)
    # (ctf_2d computes the phase in float32: |error| ~ 1e-6 here, against float64's ctf_1d)
    c = ctf_2d(n, apix, 12000, 20000, 0)[0]
    np.testing.assert_allclose(c[0, :], ctf_1d(np.abs(f), 12000), atol=5e-6)
    np.testing.assert_allclose(c[:, 0], ctf_1d(np.abs(f), 20000), atol=5e-6)
    c90 = ctf_2d(n, apix, 12000, 20000, 90)[0]
    np.testing.assert_allclose(c90[:, 0], ctf_1d(np.abs(f), 12000), atol=5e-6)
    # rfft layout = first n//2 columns of the full layout
    full = ctf_2d(n, apix, [12000, 15000], [20000, 15500], [33, 120], bfactor=[0, 50])
    half = ctf_2d(n, apix, [12000, 15000], [20000, 15500], [33, 120], bfactor=[0, 50], rfft=True)
    assert half.shape == (2, n, n // 2 + 1)
    # (the Nyquist column is at +1/2 px^-1 in rfft layout, at -1/2 in fft layout)
    np.testing.assert_array_equal(half[:, :, : n // 2], full[:, :, : n // 2])
    # point symmetry of a real filter, C(-k) = C(k) (Nyquist row/column excluded: -k is not on the grid)
    k = np.r_[0 : n // 2, n // 2 + 1 : n]
    neg = -k % n
    np.testing.assert_allclose(full[:, neg[:, None], neg], full[:, k[:, None], k], atol=1e-6)


def test_vectorised_over_particles_and_bfactor():
    du = np.array([10000.0, 18000.0, 30000.0])
    dv = du - np.array([0.0, 300.0, 800.0])
    ang = np.array([0.0, 45.0, 170.0])
    stack = ctf_2d(48, 3.0, du, dv, ang, bfactor=100.0)
    for i in range(3):
        np.testing.assert_array_equal(stack[i], ctf_2d(48, 3.0, du[i], dv[i], ang[i], bfactor=100.0)[0])
    s = np.fft.fftfreq(48, d=3.0)
    env = np.exp(-100.0 * s**2 / 4)
    np.testing.assert_allclose(stack[0, 0, :], ctf_1d(np.abs(s), 10000) * env, atol=1e-6)


# --------------------------------------------------------------------------- aligned particles
@pytest.mark.parametrize("alpha,mirror", [(0.0, 0), (33.0, 0), (-100.0, 0), (0.0, 1), (57.0, 1), (170.0, 1)])
def test_aligned_angle_is_the_ctf_at_the_source_frequency(alpha, mirror):
    """A transformed image's FT at k is the original's at L^T k (L = M^m R_alpha), so its CTF is
    CTF(L^T k): the same CTF with angle ``aligned_defocus_angle``."""
    rng = np.random.default_rng(0)
    kx, ky = rng.uniform(-0.2, 0.2, (2, 500))
    a = np.deg2rad(alpha)
    ux = -kx if mirror else kx  # M^m k, then R_{-alpha} = [[c, -s], [s, c]]
    sx = np.cos(a) * ux - np.sin(a) * ky
    sy = np.sin(a) * ux + np.cos(a) * ky
    du, dv, ang = 12000.0, 21000.0, 25.0
    expect = ctf_from_freqs(sx, sy, du, dv, ang)[0]
    got = ctf_from_freqs(kx, ky, du, dv, aligned_defocus_angle(ang, alpha, mirror))[0]
    np.testing.assert_allclose(got, expect, atol=1e-9)
    assert 0 <= aligned_defocus_angle(ang, alpha, mirror) < 180


def _params(N=3, **kw):
    p = dict(defocus_u=np.linspace(9000, 25000, N), defocus_v=np.linspace(8000, 24000, N),
             defocus_angle=np.linspace(0, 150, N), voltage=np.full(N, 300.0), cs=np.full(N, 2.7),
             amp_contrast=np.full(N, 0.1), phase_shift=np.zeros(N))
    p.update(kw)
    return p


def test_wiener_terms_for_raw_flipped_and_premultiplied_data():
    """E[c·F] = w·S for each kind of data: F = CTF·S (raw), |CTF|·S (flipped), CTF²·S (premultiplied)."""
    N, n = 3, 32
    pc = ParticleCTF(_params(N, phase_flipped=np.array([False, True, False]),
                             premultiplied=np.array([False, False, True])), 3.0)
    ctf = pc.images(n, alpha=[10, 20, 30], mirror=[0, 1, 0]).astype(np.float64)
    c, w = pc.wiener_terms(n, alpha=[10, 20, 30], mirror=[0, 1, 0])
    assert c.shape == w.shape == (N, n, n // 2 + 1) and c.dtype == w.dtype == np.float32
    F = np.stack([ctf[0], np.abs(ctf[1]), ctf[2] ** 2])  # the images' transfer for S = 1
    np.testing.assert_allclose(c * F, w, atol=1e-6)
    np.testing.assert_allclose(w, ctf**2, atol=1e-6)


def test_particle_ctf_checks_and_take():
    pc, why = ParticleCTF.from_params(_params(), 2.0)
    assert pc is not None and why == ""
    sub = pc.take([2, 0])
    assert len(sub) == 2 and sub.params["defocus_u"][0] == pc.params["defocus_u"][2]
    np.testing.assert_array_equal(sub.images(16)[1], pc.images(16)[0])
    # per-particle voltage and Cs (several optics groups)
    mixed = ParticleCTF(_params(2, voltage=np.array([300.0, 200.0]), cs=np.array([2.7, 0.01])), 2.0)
    np.testing.assert_allclose(mixed.images(16)[1], ctf_2d(16, 2.0, 25000, 24000, 150, voltage=200, cs=0.01, rfft=True)[0],
                               atol=1e-6)
    for params, apix, word in [(None, 2.0, "no CTF"), (_params(), None, "pixel size"),
                               (_params(voltage=np.zeros(3)), 2.0, "voltage"),
                               (_params(defocus_u=np.array([np.nan, 1.0, 2.0])), 2.0, "non-finite"),
                               (_params(defocus_u=np.zeros(3), defocus_v=np.zeros(3)), 2.0, "defocus"),
                               (_params(amp_contrast=np.full(3, 1.5)), 2.0, "amplitude")]:
        pc, why = ParticleCTF.from_params(params, apix)
        assert pc is None and word in why
