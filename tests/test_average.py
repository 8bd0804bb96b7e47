"""Class averaging with ground truth: members with known rotations, shifts, mirrors and CTFs.

The members of a class are exact projections of the 70S ribosome map from one view, rotated
in plane, shifted and mirrored on the Fourier-slice projector itself (no interpolation of the
truth), optionally multiplied by a CTF on a padded grid, plus white noise at a given SNR
(variance of the noise-free member over the box / noise variance). The ground truth they
must average to is the noise-free projection of that view.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from r2d import transforms as tf
from r2d.align import align
from r2d.average import class_averages
from r2d.fsc import fsc_resolution
from r2d.averagers import average, half_index
from r2d.cmp import frc_curve
from r2d.ctf import ParticleCTF

from conftest import blob_image

n = 64
APIX = 5.0
VIEW = (40.0, 70.0)  # rot, tilt (degrees) of the class view


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Single-threaded BLAS: on a small shared machine OpenBLAS threads spin and cost 2–3× the CPU."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


# ----------------------------------------------------------------------------- ground truth
@pytest.fixture(scope="module")
def projector(ribosome_map):
    from r2d.simulate import Projector

    return Projector(ribosome_map, pad=2 * max(ribosome_map.shape[0], n))


def _rot(rot, tilt, psi=0.0):
    from r2d.simulate import euler_to_matrix

    return euler_to_matrix(rot, tilt, psi)


def _render(projector, mats, shifts, ctf=None):
    """Exact projections for (B, 3, 3) matrices, shifted by ``shifts`` (B, 2) px, times ``ctf``
    (a ParticleCTF, in the member's own frame; |CTF| where it says phase-flipped) on the padded
    grid, as on a micrograph; (B, n, n) float32."""
    big = projector.size
    ft = projector.slices(mats)
    fy = np.fft.fftfreq(big)[:, None]
    fx = np.fft.rfftfreq(big)[None, :]
    ft *= np.exp(-2j * np.pi * (fx[None] * shifts[:, 0, None, None] + fy[None] * shifts[:, 1, None, None]))
    if ctf is not None:
        c = ctf.images(big)
        ft *= np.where(ctf.phase_flipped[:, None, None], np.abs(c), c)
    return projector.to_images(ft, n)


def truth_projection(projector):
    """The noise-free, CTF-free projection of the class view, (n, n) float32."""
    return _render(projector, _rot(*VIEW), np.zeros((1, 2)))[0]


def members(projector, N, *, snr, seed, n_intruders=0, ctf=None, defocus=(1e4, 3e4), astigmatism=1000.0):
    """``N`` noisy members of the class view; the first ``n_intruders`` (after shuffling: flag
    array returned) are projections from other views (≥ 30° away, either direction).

    Member i is the projection rotated by ``psi_i`` (MTR sense), shifted by ``s_i`` and
    mirrored if ``m_i``: ``U_i(P)``, so the true particle → projection transform is
    ``U_i⁻¹``. With ``ctf`` (``"full"`` or ``"flip"``): mean defocus uniform in ``defocus``
    (Å), ``defocus_u − defocus_v`` uniform in ``[0, astigmatism]``, random angle. Returns ``(images, truth_params (alpha, tx, ty, mirror) of U_i⁻¹, intruder
    flags, ParticleCTF or None)``.
    """
    from r2d.simulate import random_rotations, view_directions

    rng = np.random.default_rng(seed)
    psi = rng.uniform(-180, 180, N)
    s = rng.uniform(-3, 3, (N, 2))
    m = rng.integers(0, 2, N)
    mats = _rot(VIEW[0], VIEW[1], 0.0)[0]
    A = np.einsum("nij,jk->nik", _rot(0.0, 0.0, psi), mats)  # Rz(psi) A0: image rotated by psi
    intr = np.zeros(N, bool)
    if n_intruders:
        d0 = view_directions(mats[None])[0]
        others = []
        while len(others) < n_intruders:
            R, _ = random_rotations(4 * n_intruders, rng)
            d = view_directions(R)
            others.extend(R[np.abs(d @ d0) < np.cos(np.deg2rad(30))])
        idx = rng.choice(N, n_intruders, replace=False)
        intr[idx] = True
        A[idx] = np.einsum("nij,njk->nik", _rot(0.0, 0.0, psi[idx]), np.array(others[:n_intruders]))
    M3 = np.diag([-1.0, 1.0, 1.0])
    A = np.where(m[:, None, None] == 1, M3 @ A, A)  # mirror of the image = project with M3·A
    shifts = np.where(m[:, None] == 1, s * [-1, 1], s)  # the shift is applied before the mirror
    pctf = None
    if ctf is not None:
        mean = rng.uniform(*defocus, N)
        astig = rng.uniform(0, astigmatism, N) / 2
        pctf = ParticleCTF(dict(defocus_u=mean + astig, defocus_v=mean - astig,
                                defocus_angle=rng.uniform(0, 180, N), voltage=np.full(N, 300.0),
                                cs=np.full(N, 2.7), amp_contrast=np.full(N, 0.1),
                                phase_flipped=np.full(N, ctf == "flip")), APIX)
        clean = _render(projector, A, shifts, pctf)
    else:
        clean = _render(projector, A, shifts)
    sigma = np.sqrt(clean.reshape(N, -1).var(1).mean() / snr)
    noisy = (clean + rng.normal(0, sigma, clean.shape)).astype(np.float32)
    truth = tf.invert(psi, s[:, 0], s[:, 1], m.astype(float))
    return noisy, truth, intr, pctf


def _spline_transform(img, alpha, tx, ty, mirror):
    """One MTR transform of one image by prefiltered cubic-spline interpolation (for the truth)."""
    from scipy import ndimage

    y, x = tf.source_coords(img.shape[-1], alpha, tx, ty, mirror)
    return ndimage.map_coordinates(img.astype(np.float64), [y[0], x[0]], order=3, mode="constant")


def truth_in_average_frame(avg, truth_img):
    """The truth projection brought into the frame of ``avg`` (search: average → truth, then the
    inverse applied to the truth with cubic splines), and the NCC of the average with it."""
    a = align(avg[None], truth_img[None], "rotate_translate_flip:maxshift=8", "ccc")
    inv = tf.invert(*a.params((0, 0)))
    t = _spline_transform(truth_img, *inv)
    u, v = avg - avg.mean(), t - t.mean()
    return t, float((u * v).sum() / np.sqrt((u * u).sum() * (v * v).sum()))


def frc_crossing(avg, ref, threshold=0.5):
    """Resolution (Å) where FRC(avg, ref) first falls below ``threshold``."""
    curve, _ = frc_curve(avg[None], ref[None])
    return float(fsc_resolution(curve, n, APIX, threshold)[0])


# ----------------------------------------------------------------------------- acceptance
def test_one_view_averages_to_the_noise_free_projection(projector):
    """200 members, SNR 0.1, random in-plane rotations, shifts (±3 px) and mirrors."""
    parts, truth, _, _ = members(projector, 200, snr=0.1, seed=1)
    P = truth_projection(projector)
    res = class_averages(parts, np.zeros(200, int), iterations=3, averager="mean", keep=1.0, apix=APIX)
    assert res.ptcl_repr[0] == 200 and res.n_excluded[0] == 0
    _, ncc = truth_in_average_frame(res.averages[0], P)
    print(f"\nNCC(mean average, noise-free projection) = {ncc:.4f}")
    assert ncc > 0.95
    # the per-particle table: particle → average = (truth → average) ∘ (particle → truth), the
    # same for every particle: compare each particle's implied truth → average transform
    rel = tf.compose(tf.invert(*truth), (res.alpha, res.tx, res.ty, res.mirror))
    ref_alpha = np.angle(np.exp(1j * np.deg2rad(rel[0])).mean(), deg=True)
    dang = np.abs((rel[0] - ref_alpha + 180) % 360 - 180)
    dshift = np.hypot(rel[1] - np.median(rel[1]), rel[2] - np.median(rel[2]))
    ok = (dang < 6) & (dshift < 1.5) & (rel[3] == np.round(np.median(rel[3])))
    print(f"particles with the right transform: {ok.mean():.1%}")
    assert ok.mean() > 0.9


def test_plain_ccc_scores_are_correlation_coefficients(projector):
    """With plain ccc (and no refine, also when given as the command line's "None") a
    member's score is the search's correlation coefficient: in [-1, 1], negative for members
    that match, and the same whichever way "no refine" is spelled."""
    parts, _, _, _ = members(projector, 60, snr=0.5, seed=3)
    a = class_averages(parts, np.zeros(60, int), iterations=1, averager="mean", apix=APIX, ralign=None)
    b = class_averages(parts, np.zeros(60, int), iterations=1, averager="mean", apix=APIX, ralign="None")
    np.testing.assert_array_equal(a.score, b.score)
    assert np.all((a.score >= -1.0) & (a.score <= 1.0)) and np.median(a.score) < -0.2


def test_classkeep_excludes_intruders(projector):
    """20 % of the members are projections from other views; classkeep 0.8 drops ≥ 80 % of them."""
    parts, _, intr, _ = members(projector, 200, snr=0.1, seed=2, n_intruders=40)
    res = class_averages(parts, np.zeros(200, int), iterations=3, averager="mean", keep=0.8, apix=APIX)
    excluded = ~res.used
    rate = excluded[intr].mean()
    print(f"\nintruders excluded: {rate:.0%} ({excluded[intr].sum()} of {intr.sum()}); "
          f"good members excluded: {excluded[~intr].mean():.0%}")
    assert rate >= 0.8
    h = res.headers()[0]
    assert h["n_kept"] + h["n_excluded"] == 200
    assert sorted(h["exc_class_ptcl_idxs"]) == list(np.flatnonzero(excluded))


def test_members_of_weight_zero_are_aligned_but_never_averaged_in(projector):
    """classmx weight 0 (``eligible`` False): 40 intruders from other views are left out of the
    average although keep 1.0 keeps every eligible member; they still get transforms and
    scores, and the average is as good as that of the eligible members alone."""
    parts, _, intr, _ = members(projector, 200, snr=0.1, seed=2, n_intruders=40)
    P = truth_projection(projector)
    label = np.zeros(200, int)
    res = class_averages(parts, label, iterations=2, averager="mean", keep=1.0, apix=APIX, eligible=~intr)
    assert not res.used[intr].any() and res.used[~intr].all()
    assert np.isfinite(res.score[intr]).all() and (res.label[intr] == 0).all()
    h = res.headers()[0]
    assert sorted(h["exc_class_ptcl_idxs"]) == list(np.flatnonzero(intr))
    alone = class_averages(parts[~intr], label[~intr], iterations=2, averager="mean", keep=1.0, apix=APIX)
    mixed = class_averages(parts, label, iterations=2, averager="mean", keep=1.0, apix=APIX)
    ncc = [truth_in_average_frame(r.averages[0], P)[1] for r in (res, alone, mixed)]
    print(f"\nNCC with the truth: weight 0 for intruders {ncc[0]:.3f}, without them {ncc[1]:.3f}, "
          f"with them {ncc[2]:.3f}")
    assert abs(ncc[0] - ncc[1]) < 0.01 and ncc[0] > ncc[2]
    # a class none of whose members is eligible is averaged from all of them
    none = class_averages(parts[:30], label[:30], iterations=1, averager="mean", keep=1.0, apix=APIX,
                          eligible=np.zeros(30, bool))
    assert none.used.all()


def test_ctf_averager_beats_mean_on_full_ctf(projector):
    """Full (not phase-flipped) CTF, defocus 1–3 µm: the CTF-aware averager's FRC against the
    noise-free projection crosses 0.5 at a higher resolution than the mean averager's; its
    half-set resolution (FSC 0.143) agrees with the FRC-0.5 against the truth within 1.5×."""
    parts, _, _, pctf = members(projector, 200, snr=0.1, seed=3, ctf="full")
    P = truth_projection(projector)
    out = {}
    for avg in ("mean", "ctf.weight.autofilt"):
        res = class_averages(parts, np.zeros(200, int), iterations=3, averager=avg, keep=1.0, apix=APIX,
                             ctf=pctf)
        t, ncc = truth_in_average_frame(res.averages[0], P)
        out[avg] = (frc_crossing(res.averages[0], t), res.resolution[0], ncc)
    print()
    for avg, (r, half, ncc) in out.items():
        print(f"{avg:22s} FRC-0.5 vs truth {r:5.1f} Å, half-set FSC-0.143 {half:5.1f} Å, NCC {ncc:.3f}")
    r_ctf, half_ctf, _ = out["ctf.weight.autofilt"]
    assert r_ctf < out["mean"][0]
    assert 1 / 1.5 < half_ctf / r_ctf < 1.5


# ----------------------------------------------------------------------------- CTF follows the alignment
def test_ctf_follows_rotation_and_mirror():
    """CTF(image) transformed == CTF with the aligned angle applied to the transformed image."""
    rng = np.random.default_rng(0)
    img = blob_image(n, [(5, 3, 2, 1), (-8, 6, 1.5, 0.7), (2, -10, 2.5, 0.8)])
    pc = ParticleCTF(dict(defocus_u=[9000.0], defocus_v=[15000.0], defocus_angle=[25.0], voltage=[300.0],
                          cs=[2.7], amp_contrast=[0.1]), 2.0)
    F = np.fft.rfft2(np.fft.ifftshift(img))
    filtered = np.fft.fftshift(np.fft.irfft2(F * pc.images(n)[0], s=(n, n)))
    for alpha, m in [(0, 0), (37, 0), (-120, 1), (90, 1)]:
        moved = _spline_transform(filtered, alpha, 0, 0, m)  # CTF'd image, then transformed
        g = _spline_transform(img, alpha, 0, 0, m)  # transformed image, then the moved CTF
        G = np.fft.rfft2(np.fft.ifftshift(g)) * pc.images(n, alpha, m)[0]
        expect = np.fft.fftshift(np.fft.irfft2(G, s=(n, n)))
        wrong = np.fft.fftshift(np.fft.irfft2(np.fft.rfft2(np.fft.ifftshift(g)) * pc.images(n)[0], s=(n, n)))
        err = np.abs(moved - expect).max() / np.abs(expect).max()
        err_wrong = np.abs(moved - wrong).max() / np.abs(expect).max()
        assert err < 0.02, (alpha, m, err)
        if alpha % 180:
            assert err_wrong > 5 * err  # the test can tell a CTF that did not follow


def test_averagers_without_and_with_ctf(caplog):
    """Exact small cases: mean, ctf.weight without CTF (= mean, with a message), the autofilt
    filter shape, single members, half-set split and resolution conversion."""
    rng = np.random.default_rng(1)
    imgs = rng.normal(size=(7, 16, 16)).astype(np.float32)
    lab = np.array([0, 0, 0, 1, 1, 2, -1])
    use = np.array([1, 1, 0, 1, 1, 1, 1], bool)
    mean = average(imgs, lab, use, 3, "mean")
    np.testing.assert_allclose(mean[0], imgs[:2].mean(0), atol=1e-6)
    np.testing.assert_allclose(mean[2], imgs[5], atol=1e-6)
    np.testing.assert_allclose(average(imgs, lab, use, 3, "ctf.weight"), mean, atol=1e-6)
    auto = average(imgs, lab, use, 3, "ctf.weight.autofilt")
    np.testing.assert_allclose(auto[2], imgs[5], atol=1e-6)  # one member: that member
    assert list(half_index(lab, use)) == [0, 1, -1, 0, 1, 0, -1]
    # identical halves: FSC = 1 → (clamped) no filter inside ring n/2, zero beyond it
    same = np.repeat(imgs[:1], 4, 0)
    out = average(same, np.zeros(4, int), np.ones(4, bool), 1, "ctf.weight.autofilt")[0]
    F, G = np.fft.rfft2(out), np.fft.rfft2(same[0])
    inside = tf.freq_radius(16) < 8.5
    np.testing.assert_allclose(F[inside], G[inside], rtol=1e-3, atol=1e-3)
    assert np.abs(F[tf.ring_index(16) > 8]).max() < 1e-5
    # resolution: a curve crossing 0.143 half-way between rings 4 and 5 → n·apix/4.5
    c = np.array([[1, 1, 0.9, 0.5, 0.2, 0.086, 0.0, 0, 0]])
    assert fsc_resolution(c, 16, 2.0)[0] == pytest.approx(32 / 4.5)
    assert fsc_resolution(np.ones((1, 9)), 16, 2.0)[0] == pytest.approx(4.0)  # Nyquist


def test_class_averages_logs_missing_ctf(caplog):
    imgs = np.stack([blob_image(32, [(2, 1, 3, 1), (-4, 3, 2, 0.6)])] * 6)
    with caplog.at_level(logging.WARNING):
        res = class_averages(imgs, np.zeros(6, int), iterations=1, averager="ctf.weight.autofilt")
    assert "no CTF correction" in caplog.text
    assert not res.ctf_corrected and res.ptcl_repr[0] >= 5


def test_ctf_must_follow_the_alignment(projector, monkeypatch):
    """Strong astigmatism (defocus 1.2–2 µm, U−V up to 1.2 µm): weighting each aligned member with
    its CTF rotated/mirrored like the member beats weighting with the CTF left in the particle
    frame (a control run with the angle frozen)."""
    import r2d.ctf

    parts, _, _, pctf = members(projector, 200, snr=0.1, seed=4, ctf="full", defocus=(12000, 20000),
                                astigmatism=12000)
    P = truth_projection(projector)

    def run():
        res = class_averages(parts, np.zeros(200, int), iterations=3, keep=1.0, apix=APIX, ctf=pctf)
        t, _ = truth_in_average_frame(res.averages[0], P)
        curve, _ = frc_curve(res.averages[0][None], t[None])
        return frc_crossing(res.averages[0], t), curve[0, 10:25].mean()

    follow = run()
    monkeypatch.setattr(r2d.ctf, "aligned_defocus_angle", lambda a, al, m: np.mod(a + 0 * np.asarray(al), 180.0))
    frozen = run()
    print(f"\nFRC vs truth, CTF following the alignment: 0.5 at {follow[0]:.1f} Å, mean over 32–13 Å "
          f"{follow[1]:.3f}; CTF frozen: {frozen[0]:.1f} Å, {frozen[1]:.3f}")
    # the mean FRC over a band, not the first 0.5 crossing, which a single dip can move
    assert follow[1] > frozen[1] + 0.04


# ----------------------------------------------------------------------------- the command
def _write_cs(path, stack_name, ctf: ParticleCTF):
    N = len(ctf)
    p = ctf.params
    arr = np.zeros(N, dtype=[("blob/path", "S64"), ("blob/idx", "<u4"), ("blob/psize_A", "<f4"),
                             ("ctf/accel_kv", "<f4"), ("ctf/cs_mm", "<f4"), ("ctf/amp_contrast", "<f4"),
                             ("ctf/df1_A", "<f4"), ("ctf/df2_A", "<f4"), ("ctf/df_angle_rad", "<f4"),
                             ("ctf/phase_shift_rad", "<f4")])
    arr["blob/path"] = (">" + stack_name).encode()
    arr["blob/idx"] = np.arange(N)
    arr["blob/psize_A"] = ctf.pixel_size
    arr["ctf/accel_kv"], arr["ctf/cs_mm"], arr["ctf/amp_contrast"] = p["voltage"], p["cs"], p["amp_contrast"]
    arr["ctf/df1_A"], arr["ctf/df2_A"] = p["defocus_u"], p["defocus_v"]
    arr["ctf/df_angle_rad"] = np.deg2rad(p["defocus_angle"])
    with open(path, "wb") as fh:  # np.save(path) would append .npy
        np.save(fh, arr)


def test_average_command_with_cryosparc_ctf(tmp_path, caplog):
    """`r2d average` on a cryoSPARC .cs input: CTF and pixel size reach the averager, headers and
    the result table refer to input indices; an .mrcs of the same images gets no CTF (message)."""
    from r2d import io
    from r2d.cli import main as cli

    m, N = 32, 60
    rng = np.random.default_rng(7)
    refs = np.stack([blob_image(m, [(4, 2, 2.5, 1), (-5, 4, 2, 0.7), (1, -6, 3, 0.8)]),
                     blob_image(m, [(-6, 0, 2.5, 1), (6, 0, 2.5, 1), (0, 7, 2, 0.8)])])
    lab = np.arange(N) % 2
    clean = tf.transform(refs[lab], rng.uniform(-180, 180, N), *rng.uniform(-2, 2, (2, N)), rng.integers(0, 2, N))
    mean_df = rng.uniform(1e4, 3e4, N)
    pctf = ParticleCTF(dict(defocus_u=mean_df + 200, defocus_v=mean_df - 200, defocus_angle=rng.uniform(0, 180, N),
                            voltage=np.full(N, 300.0), cs=np.full(N, 2.7), amp_contrast=np.full(N, 0.1)), 4.0)
    F = np.fft.rfft2(clean) * pctf.images(m)
    imgs = np.fft.irfft2(F, s=(m, m)).astype(np.float32)
    imgs += rng.normal(0, imgs.std(), imgs.shape).astype(np.float32)
    io.write_mrcs(tmp_path / "p.mrcs", imgs, pixel_size=4.0)
    _write_cs(tmp_path / "p.cs", "p.mrcs", pctf)
    # classmx over a shuffled subset: rows are not input indices
    rows = rng.permutation(N)[:50]
    io.write_matrix(tmp_path / "classmx.h5", {"class": lab[rows], "particle": rows})
    opts = ["--iter", "1", "--keep", "0.9", "--resultmx"]
    with caplog.at_level(logging.INFO):
        assert cli(["average", str(tmp_path / "p.cs"), str(tmp_path / "classmx.h5"), "-o", str(tmp_path / "c.hdf"),
                    *opts, str(tmp_path / "r.h5")]) == 0
    assert "CTF-weighted" in caplog.text
    heads = io.read_image_headers(tmp_path / "c.hdf")
    assert [h["class_id"] for h in heads] == [0, 1]
    rm = io.read_matrix(tmp_path / "r.h5")
    np.testing.assert_array_equal(rm["particle"], rows)
    for k, h in enumerate(heads):
        assert h["ctf_corrected"] is True and h["apix_x"] == pytest.approx(4.0)
        kept, exc = set(h["class_ptcl_idxs"]), set(h["exc_class_ptcl_idxs"])
        assert kept | exc == set(rows[lab[rows] == k]) and not kept & exc
        assert h["n_kept"] == h["ptcl_repr"] == len(kept) and h["n_excluded"] == len(exc)
        assert kept == set(rm["particle"][(rm["class"] == k) & (rm["used"] == 1)])
        assert 8.0 <= h["resolution"] <= 32 * 4.0 and len(h["fsc_half"]) == m // 2 + 1
        assert h["mean_score"] == pytest.approx(rm["score"][(rm["class"] == k) & (rm["used"] == 1)].mean(), rel=1e-5)
    # in 3 class chunks (one of them empty: 2 classes) merged by `r2d gather`: the same stack and table
    for i in (1, 2, 3):
        assert cli(["average", str(tmp_path / "p.cs"), str(tmp_path / "classmx.h5"), "-o",
                    str(tmp_path / f"c{i}.hdf"), *opts, str(tmp_path / f"r{i}.h5"), "--chunk", f"{i}-of-3"]) == 0
    assert len(io.read_image_headers(tmp_path / "c3.hdf")) == 0
    assert cli(["gather", "-o", str(tmp_path / "g.hdf"), *(str(tmp_path / f"c{i}.hdf") for i in (1, 2, 3))]) == 0
    assert cli(["gather", "-o", str(tmp_path / "g.h5"), *(str(tmp_path / f"r{i}.h5") for i in (1, 2, 3))]) == 0
    np.testing.assert_array_equal(io.read_image_stack(tmp_path / "g.hdf"), io.read_image_stack(tmp_path / "c.hdf"))
    assert io.read_image_headers(tmp_path / "g.hdf") == heads
    g = io.read_matrix(tmp_path / "g.h5")
    assert g.keys() == rm.keys()
    for k in rm:
        np.testing.assert_array_equal(g[k], rm[k], err_msg=k)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert cli(["average", str(tmp_path / "p.mrcs"), str(tmp_path / "classmx.h5"), "-o",
                    str(tmp_path / "c2.hdf"), "--iter", "1"]) == 0
    assert "no CTF parameters" in caplog.text
    assert io.read_image_headers(tmp_path / "c2.hdf")[0]["ctf_corrected"] is False


def test_blocks_do_not_change_the_result(projector):
    """Class averaging goes through the particles in blocks (bounded memory); the block size,
    here 37 against all at once, must not change the averages, the table or the kept members,
    with CTF (the per-block CTF rows must follow their particles) and for two classes."""
    parts, _, _, pctf = members(projector, 120, snr=0.5, seed=4, ctf="full")
    label = np.arange(120) % 2
    runs = [class_averages(parts, label, iterations=2, keep=0.8, apix=APIX, ctf=pctf, block=b)
            for b in (None, 37)]
    a, b = runs
    np.testing.assert_array_equal(a.averages, b.averages)  # bit-identical: sums in member order
    np.testing.assert_array_equal(a.used, b.used)
    for k in ("alpha", "tx", "ty", "mirror", "score"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))


def test_class_chunks_give_the_same_classes(projector):
    """Averaging the classes in 3 chunks (the workflow's classes_chunk jobs: each chunk's
    classes, the other members labelled −1) gives bit-identical averages, transforms, scores,
    kept members and FSCs to averaging all at once; the split balances the member counts."""
    from r2d.average import class_chunks

    parts, _, _, pctf = members(projector, 150, snr=0.5, seed=9, ctf="full")
    label = np.random.default_rng(3).choice(5, 150, p=[0.4, 0.25, 0.15, 0.1, 0.1])
    label[7] = -1
    kw = dict(iterations=2, keep=0.8, apix=APIX, ctf=pctf, block=23)
    whole = class_averages(parts, label, **kw)
    chunk = class_chunks(label, 3)
    counts = np.bincount(label[label >= 0])
    loads = np.bincount(chunk, weights=counts, minlength=3)
    assert loads.max() - loads.min() <= counts.max()
    assert sorted(chunk.tolist()) != [0] * 5 and set(chunk.tolist()) == {0, 1, 2}
    for c in range(3):
        mine = (label >= 0) & (chunk[np.maximum(label, 0)] == c)
        part = class_averages(parts, np.where(mine, label, -1), n_classes=5, **kw)
        ids = list(part.class_ids)
        assert ids == sorted(np.flatnonzero(chunk == c).tolist())
        for j, k in enumerate(ids):
            w = list(whole.class_ids).index(k)
            np.testing.assert_array_equal(part.averages[j], whole.averages[w])
            np.testing.assert_array_equal(part.fsc[j], whole.fsc[w])
        for key in ("alpha", "tx", "ty", "mirror", "score", "used"):
            np.testing.assert_array_equal(getattr(part, key)[mine], getattr(whole, key)[mine])


def test_centering_finds_the_particle_centre(projector):
    """``xform.center`` on 200 projections from random views, shifted by known whole pixels
    (±6 px): the shift it returns undoes the known one to within 1.5 px (median) and 4 px (all),
    noise-free and at SNR 1. (The map's own centre of mass is about 1 px off its box centre.)"""
    from r2d.centering import center_shift
    from r2d.simulate import random_rotations

    rng = np.random.default_rng(21)
    R, _ = random_rotations(200, rng)
    s = rng.integers(-6, 7, (200, 2)).astype(float)
    clean = _render(projector, R, s)
    for snr in (None, 1.0):
        imgs = clean if snr is None else (
            clean + rng.normal(0, np.sqrt(clean.var(axis=(1, 2)).mean() / snr), clean.shape)).astype(np.float32)
        dx, dy = center_shift(imgs, "xform.center")
        err = np.hypot(dx + s[:, 0], dy + s[:, 1])
        print(f"\nSNR {snr}: centring error median {np.median(err):.2f} px, max {err.max():.2f} px")
        assert np.median(err) <= 1.5 and err.max() <= 4.0


def test_class_averages_start_from_a_prior(projector):
    """Members with a prior transform (the truth, 1 px and a few degrees off) skip the bootstrap:
    the average lands in the prior's frame (up to the centring shift) and matches the noise-free
    projection; a class with one member lacking a prior (NaN) is bootstrapped as usual."""
    parts, truth, _, _ = members(projector, 240, snr=0.1, seed=5)
    rng = np.random.default_rng(6)
    prior = (truth[0] + rng.uniform(-3, 3, 240), truth[1] + rng.uniform(-1, 1, 240),
             truth[2] + rng.uniform(-1, 1, 240), truth[3])
    label = np.repeat([0, 1], 120)
    prior[0][130] = np.nan  # class 1 bootstraps
    P = truth_projection(projector)
    res = class_averages(parts, label, iterations=3, averager="mean", keep=1.0, apix=APIX, prior=prior)
    for k in (0, 1):
        _, ncc = truth_in_average_frame(res.averages[k], P)
        print(f"class {k}: NCC with the noise-free projection {ncc:.4f}")
        assert ncc > 0.95
    # class 0: particle → average = centring shift ∘ (particle → truth frame)
    rel = tf.compose(tf.invert(*(t[:120] for t in truth)), (res.alpha[:120], res.tx[:120], res.ty[:120],
                                                            res.mirror[:120]))
    assert np.mean(np.abs((rel[0] + 180) % 360 - 180) < 3) > 0.9 and np.all(rel[3] == 0)
    assert np.mean(np.hypot(rel[1] - np.rint(np.median(rel[1])), rel[2] - np.rint(np.median(rel[2]))) < 1) > 0.9


def test_settled_classes_are_those_whose_members_stopped_moving():
    """_settled: a class counts as settled when at most 2 % of its members moved more than
    0.5 px (shift plus the rotation's arc at a quarter of the box, or a mirror change) and at
    most max(2, 2 %) changed their kept flag; each class is judged on its own members."""
    from r2d.average import _members, _settled

    label = np.repeat(np.arange(4), 100)
    m = _members(label, 4, None)
    n = 64
    before = [np.zeros(400) for _ in range(4)]
    after = [p.copy() for p in before]
    after[1][:] = 0.1                 # every member shifts 0.1 px: settled
    after[1][100:103] = 2.0           # class 1: 3 % moved 2 px: not settled
    after[0][200:202] = 1.0           # class 2: 2 of 100 turned 1° (0.1 + 0.28 px)
    after[0][202] = 5.0               # ...and one 5° (1.4 px): 1 % moved, settled
    after[3][300:303] = 1.0           # class 3: 3 mirror changes: not settled
    use0 = np.ones(400, dtype=bool)
    use1 = use0.copy()
    use1[:2] = False                  # class 0: two kept-set changes are allowed
    assert _settled(m, n, before, after, use0, use1).tolist() == [True, False, True, False]
    use1[2] = False                   # a third is not
    assert _settled(m, n, before, after, use0, use1).tolist() == [False, False, True, False]
