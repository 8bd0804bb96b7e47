"""Ground-truth simulation: rotations, projection, shifts, CTF, SNR, phantom, `r2d simulate`."""

import itertools

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy import ndimage

from r2d import simulate as sim
from r2d.cli import main as cli
from r2d.ctf import ctf_2d
from r2d.phantom import phantom_volume
from r2d.transforms import fourier_crop


def ncc(a, b):
    a = a - a.mean()
    b = b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def rel_diff(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(a))


def brute_projection(vol, a, box):
    """Real-space projection: sample V(A.T @ (x, y, z)) (cubic spline) along z and integrate."""
    m = vol.shape[0]
    t = np.arange(box) - box // 2
    z = np.arange(-m, m + 0.25, 0.5)
    y, x, z = np.meshgrid(t, t, z, indexing="ij")
    r = np.stack([x, y, z], -1) @ a  # rows: (A.T @ r_image).T
    coords = np.stack([r[..., 2], r[..., 1], r[..., 0]]) + m // 2
    vals = ndimage.map_coordinates(vol.astype(np.float64), coords.reshape(3, -1), order=3)
    return vals.reshape(x.shape).sum(-1) * 0.5


@pytest.fixture(scope="module")
def small_phantom():
    return phantom_volume(32, 10.0)


# ----------------------------------------------------------------------------- rotations
def test_euler_matrix_relion_convention():
    rot, tilt, psi = 30.0, 50.0, -70.0

    def rz(d):
        c, s = np.cos(np.deg2rad(d)), np.sin(np.deg2rad(d))
        return np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])

    def ry(d):
        c, s = np.cos(np.deg2rad(d)), np.sin(np.deg2rad(d))
        return np.array([[c, 0, -s], [0, 1, 0], [s, 0, c]])

    a = sim.euler_to_matrix(rot, tilt, psi)[0]
    np.testing.assert_allclose(a, rz(psi) @ ry(tilt) @ rz(rot), atol=1e-12)
    t, r = np.deg2rad(tilt), np.deg2rad(rot)
    np.testing.assert_allclose(sim.view_directions(a)[0],
                               [np.sin(t) * np.cos(r), np.sin(t) * np.sin(r), np.cos(t)], atol=1e-12)


def test_euler_round_trip_and_gimbal_lock():
    mats, ang = sim.random_rotations(500, 7)
    eye = np.broadcast_to(np.eye(3), mats.shape)
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", mats, mats), eye, atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(mats), 1.0, atol=1e-12)
    np.testing.assert_allclose(sim.euler_to_matrix(*sim.matrix_to_euler(mats).T), mats, atol=1e-10)
    assert np.all((ang[:, 1] >= 0) & (ang[:, 1] <= 180))
    for tilt in (0.0, 180.0):
        m = sim.euler_to_matrix(25.0, tilt, 40.0)
        np.testing.assert_allclose(sim.euler_to_matrix(*sim.matrix_to_euler(m).T), m, atol=1e-10)


def test_random_rotations_uniform():
    mats, _ = sim.random_rotations(20000, np.random.default_rng(3))
    d = sim.view_directions(mats)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-12)
    assert np.abs(d.mean(0)).max() < 0.02
    assert np.abs(np.abs(d).mean(0) - 0.5).max() < 0.01  # mean |z| = 1/2 on the sphere, same for x, y
    assert np.abs(mats.mean(0)).max() < 0.02  # Haar measure: E[R] = 0 (in-plane angles uniform too)
    # a non-uniform generator (uniform Euler angles) fails the same check
    euler = np.random.default_rng(3).uniform([-180, 0, -180], [180, 180, 180], (20000, 3))
    bad = sim.euler_to_matrix(*euler.T)
    assert abs(np.abs(sim.view_directions(bad)[:, 2]).mean() - 0.5) > 0.05


# ----------------------------------------------------------------------------- projection
@pytest.mark.parametrize("m,box", [(32, 32), (33, 32), (31, 40)])
def test_projection_matches_real_space(small_phantom, m, box):
    vol = phantom_volume(m, 10.0) if m != 32 else small_phantom
    ang = np.array([(30, 60, -100), (-160, 120, 45), (-75, 20, 160), (0, 0, 0), (0, 90, 0)], float)
    mats = np.concatenate([sim.euler_to_matrix(*ang.T), sim.random_rotations(2, 11)[0]])
    proj = sim.project(vol, mats, box)
    assert proj.shape == (7, box, box) and proj.dtype == np.float32
    for i, (a, p) in enumerate(zip(mats, proj)):
        ref = brute_projection(vol, a, box)
        assert ncc(p, ref) > 0.9999
        assert rel_diff(ref, p) < 0.005  # (trilinear Fourier interpolation: 1-4 %)
        if i < 3:  # the transposed (inverse) rotation is clearly different: the test can fail
            assert rel_diff(brute_projection(vol, a.T, box), p) > 0.15


def test_projection_centre_of_mass(small_phantom):
    """Half-pixel centring errors would move the projected centre of mass."""
    vol = small_phantom
    com = np.array(ndimage.center_of_mass(vol))[::-1] - 16  # (x, y, z) from centre voxel
    mats, _ = sim.random_rotations(4, 5)
    for a, p in zip(mats, sim.project(vol, mats, 32)):
        got = np.array(ndimage.center_of_mass(p))[::-1] - 16
        np.testing.assert_allclose(got, (a @ com)[:2], atol=0.05)


def test_view_direction_is_integration_direction(small_phantom):
    vol = ndimage.gaussian_filter(small_phantom.astype(np.float64), 1.0)  # well sampled
    truth = sim.draw_truth(4, 2)
    clean = sim.render(vol, truth, 32, 10.0)
    t = np.arange(-32, 33)
    for row, img in zip(truth.itertuples(), clean):
        d = np.array([row.view_x, row.view_y, row.view_z])
        # the centre pixel is the line integral through the volume centre along d
        along_d = ndimage.map_coordinates(vol, (t[:, None] * d[::-1] + 16).T, order=1).sum()
        assert img[16, 16] == pytest.approx(along_d, rel=0.02)


def test_view_direction_rod():
    """A thin rod along the stored view direction projects to a point; across it, to a line."""
    box = 32
    axis = np.arange(box) - box // 2
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), -1)[..., ::-1]  # (x, y, z)

    def rod(u):
        r = grid.reshape(-1, 3)
        along = r @ u
        perp2 = (r * r).sum(1) - along**2
        return (np.exp(-perp2 / (2 * 1.5**2)) * np.exp(-(along**2) / (2 * 6.0**2))).reshape((box,) * 3)

    truth = sim.draw_truth(3, 8)
    dirs = truth[["view_x", "view_y", "view_z"]].to_numpy()
    point_peak = rod(np.array([0.0, 0.0, 1.0])).sum(0).max()  # rod along z summed along z
    for i, d in enumerate(dirs):
        img = sim.render(rod(d), truth.iloc[[i]], box, 1.0)[0]
        assert img.max() == pytest.approx(point_peak, rel=0.05)
        assert np.unravel_index(img.argmax(), img.shape) == (box // 2, box // 2)
        other = np.cross(d, [1.0, 0.0, 0.0])
        across = sim.render(rod(other / np.linalg.norm(other)), truth.iloc[[i]], box, 1.0)[0]
        assert across.max() < 0.3 * point_peak


def test_integer_and_subpixel_shifts():
    small_phantom = phantom_volume(32, 14.0)  # < 10 px radius: shifts keep it inside the box
    truth = sim.draw_truth(3, 4, shift_max=0.0)
    base = sim.render(small_phantom, truth, 32, 14.0)
    shifted_truth = truth.copy()
    shifted_truth[["shift_x", "shift_y"]] = [[2.0, -3.0], [-1.0, 4.0], [0.0, 1.0]]
    shifted = sim.render(small_phantom, shifted_truth, 32, 14.0)
    for i, (sx, sy) in enumerate(shifted_truth[["shift_x", "shift_y"]].to_numpy()):
        rolled = np.roll(base[i], (int(sy), int(sx)), axis=(0, 1))
        np.testing.assert_allclose(shifted[i], rolled, atol=3e-3 * base[i].max())
    # sub-pixel: the centre of mass moves by exactly the shift
    frac = truth.copy()
    frac[["shift_x", "shift_y"]] = [[0.5, -0.25], [1.3, 0.7], [-2.6, 0.1]]
    moved = sim.render(small_phantom, frac, 32, 14.0)
    for i, s in enumerate(frac[["shift_x", "shift_y"]].to_numpy()):
        com0 = np.array(ndimage.center_of_mass(base[i]))[::-1]
        com1 = np.array(ndimage.center_of_mass(moved[i]))[::-1]
        np.testing.assert_allclose(com1 - com0, s, atol=0.02)


def test_ctf_applied_in_fourier_space():
    """A compact, centred object: the boxed image equals CTF x the uncorrected image's transform."""
    box, apix = 64, 5.0
    g = np.exp(-((np.arange(box) - box // 2) ** 2) / (2 * 0.7**2))  # sharp: power past the CTF zeros
    vol = g[:, None, None] * g[None, :, None] * g[None, None, :]
    truth = sim.draw_truth(3, 9, ctf="full", defocus=(15000, 25000))  # several CTF zeros
    plain = sim.render(vol, truth, box, apix)
    ft = np.fft.rfft2(np.fft.ifftshift(plain, axes=(-2, -1)))
    c = ctf_2d(box, apix, truth.defocus_u, truth.defocus_v, truth.defocus_angle, rfft=True)
    results = {}
    for mode, filt in (("full", c), ("flip", np.abs(c))):
        want = np.fft.fftshift(np.fft.irfft2(ft * filt, s=(box, box)), axes=(-2, -1))
        got = sim.render(vol, truth, box, apix, ctf=mode)
        for w, h in zip(want, got):
            assert ncc(w, h) > 0.999
            assert h[box // 2, box // 2] > 0  # positive density stays positive (CTF > 0 at low s)
        results[mode] = got
    assert max(ncc(f, g) for f, g in zip(results["flip"], results["full"])) < 0.9


def test_snr_and_determinism(small_phantom):
    for snr in (0.5, 0.05):
        imgs, truth, clean = sim.simulate(small_phantom, 300, 32, 10.0, snr=snr, shift_max=2,
                                          ctf="flip", seed=3, return_clean=True)
        assert imgs.shape == (300, 32, 32) and imgs.dtype == np.float32
        measured = clean.reshape(300, -1).var(1).mean() / (imgs - clean).var()
        assert measured == pytest.approx(snr, rel=0.1)
    again, truth2 = sim.simulate(small_phantom, 300, 32, 10.0, snr=0.05, shift_max=2, ctf="flip", seed=3)
    np.testing.assert_array_equal(again, imgs)
    pd.testing.assert_frame_equal(truth2, truth)
    other, _ = sim.simulate(small_phantom, 300, 32, 10.0, snr=0.05, shift_max=2, ctf="flip", seed=4)
    assert not np.allclose(other, imgs)


def test_truth_table_and_junk(small_phantom):
    imgs, truth, clean = sim.simulate(small_phantom, 200, 32, 10.0, snr=1.0, shift_max=3, ctf="full",
                                      defocus=(12000, 20000), seed=5, junk_fraction=0.2,
                                      return_clean=True)
    assert list(truth.columns) == sim.TRUTH_COLUMNS
    np.testing.assert_array_equal(truth["index"], np.arange(200))
    junk = truth["junk"].to_numpy()
    assert junk.sum() == 40 and not junk[:40].all()  # random rows
    assert truth.loc[junk, ["rot", "tilt", "psi", "view_x", "view_y", "view_z"]].isna().all().all()
    good = truth[~junk]
    np.testing.assert_allclose(np.linalg.norm(good[["view_x", "view_y", "view_z"]], axis=1), 1.0)
    assert good[["shift_x", "shift_y"]].abs().max().max() <= 3
    mean_df = (truth.defocus_u + truth.defocus_v) / 2
    assert mean_df.between(12000, 20000).all() and (truth.defocus_u >= truth.defocus_v).all()
    # the junk images are not projections of the volume (re-rendering a junk row as a particle differs)
    j = int(np.flatnonzero(junk & (clean.reshape(200, -1).std(1) > 0))[0])
    row = truth.iloc[[j]].copy()
    row[["rot", "tilt", "psi"]] = 0.0
    row["junk"] = False
    as_particle = sim.render(small_phantom, row, 32, 10.0, ctf="full")[0]
    assert ncc(as_particle, clean[j]) < 0.9


def test_preferred_orientation():
    """``preferred``: that share of the good particles views the map within 10° of z; the other
    rows, the junk and every other column are those of the same seed without it."""
    kw = dict(shift_max=2, ctf="full", junk_fraction=0.1, junk_kinds=("noise", "edge"))
    plain = sim.draw_truth(1000, np.random.default_rng(3), **kw)
    pref = sim.draw_truth(1000, np.random.default_rng(3), preferred=0.4, **kw)
    good = ~pref["junk"].to_numpy()
    tilt = np.degrees(np.arccos(np.abs(pref["view_z"].to_numpy())))
    changed = ~np.isclose(pref["tilt"], plain["tilt"]) & good
    assert changed.sum() == round(0.4 * good.sum())
    assert tilt[changed].max() <= 10.0 + 1e-9
    # uniform views: about 1.5 % of them lie within 10° of ±z
    assert np.mean(tilt[good & ~changed] <= 10.0) < 0.05
    same = [c for c in sim.TRUTH_COLUMNS if c not in ("rot", "tilt", "psi", "view_x", "view_y", "view_z")]
    pd.testing.assert_frame_equal(pref[same], plain[same])
    pd.testing.assert_frame_equal(pref[~changed], plain[~changed])
    views = pref.loc[changed, ["view_x", "view_y", "view_z"]].to_numpy()
    mats = sim.euler_to_matrix(*pref.loc[changed, ["rot", "tilt", "psi"]].to_numpy().T)
    np.testing.assert_allclose(views, sim.view_directions(mats))


# ----------------------------------------------------------------------------- phantom
def _cube_rotations(v):
    """The 24 rotations of the cube applied to a volume (exact, via rot90)."""
    ups = [v, np.rot90(v, 1, (0, 1)), np.rot90(v, 2, (0, 1)), np.rot90(v, 3, (0, 1)),
           np.rot90(v, 1, (0, 2)), np.rot90(v, 3, (0, 2))]
    return [np.rot90(u, k, (1, 2)) for u in ups for k in range(4)]


def _axis_projections(v):
    """Projections along +z, -z, +x, -x, +y, -y (RELION angles)."""
    ang = np.array([(0, 0, 0), (0, 180, 0), (0, 90, 0), (180, 90, 0), (90, 90, 0), (-90, 90, 0)], float)
    return sim.project(v, sim.euler_to_matrix(*ang.T), v.shape[0])


def _asymmetry(v):
    """Smallest relative difference between the volume and a rotated/mirrored copy, and between
    axis projections (any in-plane 90-degree rotation)."""
    rots = _cube_rotations(v)[1:]
    vol_diff = min(rel_diff(v, r) for r in rots + _cube_rotations(v[::-1]))
    p = _axis_projections(v)
    pairs = min(rel_diff(p[i], np.rot90(p[j], k))
                for i, j in itertools.combinations(range(6), 2) for k in range(4))
    self_rot = min(rel_diff(q, np.rot90(q, k)) for q in p for k in (1, 2, 3))
    return vol_diff, min(pairs, self_rot)


def test_phantom_deterministic_centred_and_sized():
    v = phantom_volume(64, 5.0, seed=0)
    assert v.shape == (64, 64, 64) and v.dtype == np.float32
    np.testing.assert_array_equal(v, phantom_volume(64, 5.0, seed=0))
    assert not np.array_equal(v, phantom_volume(64, 5.0, seed=1))
    np.testing.assert_allclose(ndimage.center_of_mass(v), 32, atol=0.05)
    z, y, x = np.nonzero(v > 0.05 * v.max())
    extent = max(np.ptp(x), np.ptp(y), np.ptp(z)) * 5.0
    assert 200 <= extent <= 300  # ribosome-sized
    assert np.sqrt((x - 32) ** 2 + (y - 32) ** 2 + (z - 32) ** 2).max() < 29  # fits a 64 px box


def test_phantom_has_no_symmetry():
    v = phantom_volume(64, 5.0)
    vol_diff, proj_diff = _asymmetry(v)
    assert vol_diff > 0.2
    assert proj_diff > 0.1
    # control: a copy symmetrised about z (2-fold) is detected
    sym = (v + np.rot90(v, 2, (1, 2))) / 2
    assert max(_asymmetry(sym)) < 0.01


# ----------------------------------------------------------------------------- command line
def test_cli_phantom_and_simulate(tmp_path):
    from r2d.io import open_stack

    ph = tmp_path / "ph.mrc"
    assert cli(["phantom", "-o", str(ph), "--box", "32", "--apix", "10"]) == 0
    with mrcfile.open(ph) as m:
        assert m.data.shape == (32, 32, 32) and float(m.voxel_size.x) == pytest.approx(10.0)

    out = tmp_path / "sim"
    rc = cli(["simulate", "--map", str(ph), "--n", "30", "--box", "32", "--snr", "0.2", "--shift", "2",
              "--ctf", "flip", "--defocus", "10000", "20000", "--junk", "0.1", "--seed", "2",
              "--write-clean", "-o", str(out)])
    assert rc == 0
    stack = mrcfile.read(out / "particles.mrcs")
    assert stack.shape == (30, 32, 32)
    truth = pd.read_csv(out / "truth.tsv", sep="\t")
    assert list(truth.columns) == sim.TRUTH_COLUMNS and len(truth) == 30 and truth.junk.sum() == 3
    star = starfile.read(out / "particles.star", always_dict=True)
    optics, parts = star["optics"], star["particles"]
    assert optics.loc[0, "rlnImagePixelSize"] == pytest.approx(10.0)
    assert optics.loc[0, "rlnCtfDataArePhaseFlipped"] == 1
    assert optics.loc[0, "rlnCtfDataAreCtfPremultiplied"] == 0
    assert parts["rlnImageName"].iloc[-1].split("@") == ["000030", "particles.mrcs"]
    np.testing.assert_allclose(parts["rlnDefocusU"], truth["defocus_u"], rtol=1e-6)
    s = open_stack(out / "particles.star")
    assert len(s) == 30 and s.pixel_size == pytest.approx(10.0)
    np.testing.assert_allclose(s.read(np.arange(30)), stack)
    # same seed reproduces the images; clean.mrcs is the noise-free version
    vol = mrcfile.read(ph)
    imgs, _, clean = sim.simulate(vol, 30, 32, 10.0, snr=0.2, shift_max=2, ctf="flip",
                                  defocus=(10000, 20000), seed=2, junk_fraction=0.1, return_clean=True)
    np.testing.assert_allclose(stack, imgs, atol=1e-6)
    np.testing.assert_allclose(mrcfile.read(out / "clean.mrcs"), clean, atol=1e-6)


def test_cli_simulate_errors(tmp_path, capsys):
    ph = tmp_path / "ph.mrc"
    cli(["phantom", "-o", str(ph), "--box", "32", "--apix", "10"])
    base = ["simulate", "--n", "4", "--box", "32"]
    assert cli(base + ["--map", str(ph), "--map-apix", "5", "-o", str(tmp_path / "a")]) == 2
    assert "differs from the voxel size" in capsys.readouterr().err
    assert cli(base + ["--map", str(ph), "--map-apix", "0", "-o", str(tmp_path / "a")]) == 2
    assert "--map-apix 0" in capsys.readouterr().err
    assert cli(["simulate", "--phantom", "--box", "31", "--n", "4", "-o", str(tmp_path / "b")]) == 2
    assert cli(base + ["--map", str(tmp_path / "missing.mrc"), "--apix", "5", "-o", str(tmp_path / "c")]) == 2
    assert cli(base + ["--map", str(ph), "--junk", "0.2", "--junk-kinds", "noise,ice", "-o", str(tmp_path / "j")]) == 2
    assert "--junk-kinds noise,ice" in capsys.readouterr().err
    assert cli(base + ["--map", str(ph), "--snr-disc", "0.7", "-o", str(tmp_path / "d")]) == 2
    assert "--snr-disc 0.7" in capsys.readouterr().err
    assert cli(base + ["--map", str(ph), "--preferred", "1.5", "-o", str(tmp_path / "d")]) == 2
    assert "--preferred 1.5" in capsys.readouterr().err
    # a map without voxel size needs --apix
    with mrcfile.new(tmp_path / "nopix.mrc") as m:
        m.set_data(np.zeros((16, 16, 16), np.float32))
    nopix = ["--map", str(tmp_path / "nopix.mrc"), "--box", "16", "-o", str(tmp_path / "d")]
    assert cli(["simulate", "--n", "2"] + nopix) == 2
    assert "no voxel size; give the pixel size" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------- other pixel sizes
def brute_projection_at(vol, a, box, ratio):
    """``brute_projection`` sampled on a grid of ``1/ratio`` voxels per pixel."""
    m = vol.shape[0]
    t = (np.arange(box) - box // 2) / ratio
    z = np.arange(-m, m + 0.25, 0.5)
    y, x, z = np.meshgrid(t, t, z, indexing="ij")
    r = np.stack([x, y, z], -1) @ a
    coords = np.stack([r[..., 2], r[..., 1], r[..., 0]]) + m // 2
    vals = ndimage.map_coordinates(vol.astype(np.float64), coords.reshape(3, -1), order=3)
    return vals.reshape(x.shape).sum(-1) * 0.5


@pytest.fixture(scope="module")
def smooth_phantom():
    return ndimage.gaussian_filter(phantom_volume(32, 10.0).astype(np.float64), 1.0)


@pytest.mark.parametrize("apix", [3.7, 2.5, 13.0])
def test_resampled_projection_matches_real_space(smooth_phantom, apix):
    """A 10 Å map imaged at 3.7, 2.5 (finer: Fourier padding) or 13 Å/px (coarser: Fourier
    cropping) is its real-space projection sampled at that pixel, on the same value scale."""
    ratio = 10.0 / apix
    box = int(2 * round(340 / apix / 2))
    truth = sim.draw_truth(3, 5)
    imgs = sim.render(smooth_phantom, truth, box, apix, map_pixel_size=10.0)
    assert imgs.shape == (3, box, box) and imgs.dtype == np.float32
    for a, img in zip(sim.truth_rotations(truth), imgs):
        ref = brute_projection_at(smooth_phantom, a, box, ratio)
        assert rel_diff(ref, img) < 0.003
        assert img.sum() == pytest.approx(ref.sum(), rel=1e-3)
        if apix < 10:  # control: the map-pixel projection is not it
            assert rel_diff(brute_projection_at(smooth_phantom, a, box, 1.0), img) > 0.3


def test_fourier_padding_matches_the_coarse_simulation():
    """Simulated at 2.5 Å/px, 128 px from a 5 Å map and Fourier-cropped back to 64 px, the
    clean images (shift, raw CTF, envelope) are the 64 px / 5 Å ones of the same truth."""
    vol = phantom_volume(64, 5.0)
    truth = sim.draw_truth(6, 4, shift_max=3, ctf="full", defocus=(8000, 25000))
    kw = dict(ctf="full", bfactor=100.0)
    coarse = sim.render(vol, truth, 64, 5.0, **kw)
    fine_truth = truth.copy()
    fine_truth[["shift_x", "shift_y"]] *= 2  # target pixels
    fine = sim.render(vol, fine_truth, 128, 2.5, map_pixel_size=5.0, **kw)
    back = fourier_crop(fine, 64)
    for c, b in zip(coarse, back):
        assert rel_diff(c, b) < 1e-3
    # no signal beyond the map's Nyquist (0.1/Å: ring 32 of 128 px at 2.5 Å)
    f = np.abs(np.fft.fft2(fine)) ** 2
    ring = np.hypot(*np.meshgrid(np.fft.fftfreq(128), np.fft.fftfreq(128))) * 128
    assert f[:, ring > 36].sum() < 1e-3 * f[:, ring < 28].sum()
    # control: shifts left in map pixels are visibly wrong
    wrong = fourier_crop(sim.render(vol, truth, 128, 2.5, map_pixel_size=5.0, **kw), 64)
    assert max(rel_diff(c, w) for c, w in zip(coarse, wrong)) > 0.1


def test_fourier_cropped_target():
    """A coarser target (10 Å/px from a 5 Å map) is the 5 Å image Fourier-cropped. The map is
    low-passed to about 20 Å: for detail beyond the 10 Å Nyquist, cropping the box (a window in
    real space) and cropping the spectrum do not commute (3 % apart without CTF, more with its
    fringes spreading that detail)."""
    vol = ndimage.gaussian_filter(phantom_volume(64, 5.0).astype(np.float64), 2.0).astype(np.float32)
    truth = sim.draw_truth(4, 6, shift_max=2, ctf="flip", defocus=(10000, 20000))
    coarse = sim.render(vol, truth, 64, 5.0, ctf="flip")
    half = truth.copy()
    half[["shift_x", "shift_y"]] /= 2
    got = sim.render(vol, half, 32, 10.0, map_pixel_size=5.0, ctf="flip")
    for want, g in zip(fourier_crop(coarse, 32), got):
        assert rel_diff(want, g) < 0.005


def test_fine_grid_centre_of_mass_follows_the_shift():
    """At 3.5 Å/px from a 14 Å map, the projection's centre of mass is ``ratio`` x the map-pixel
    one, and moves by the truth shift in target pixels."""
    vol = phantom_volume(32, 14.0)
    truth = sim.draw_truth(3, 4)
    coarse = sim.render(vol, truth, 32, 14.0)
    base = sim.render(vol, truth, 128, 3.5, map_pixel_size=14.0)
    moved_truth = truth.copy()
    moved_truth[["shift_x", "shift_y"]] = [[5.3, -7.6], [-12.25, 3.5], [0.4, 9.9]]
    moved = sim.render(vol, moved_truth, 128, 3.5, map_pixel_size=14.0)
    for c, b, m, s in zip(coarse, base, moved, moved_truth[["shift_x", "shift_y"]].to_numpy()):
        com_c = np.array(ndimage.center_of_mass(c))[::-1] - 16
        com_b = np.array(ndimage.center_of_mass(b))[::-1] - 64
        com_m = np.array(ndimage.center_of_mass(m))[::-1] - 64
        np.testing.assert_allclose(com_b, 4 * com_c, atol=0.1)
        np.testing.assert_allclose(com_m - com_b, s, atol=0.05)


def test_fine_grid_ctf_at_the_target_pixel():
    """The CTF zeros land where ``ctf_2d`` puts them at the target pixel size and box: the image
    is the uncorrected one times ``ctf_2d(box, 2.5)``, not ``ctf_2d(box, 5.0)`` (the map's)."""
    box, apix = 128, 2.5
    g = np.exp(-((np.arange(32) - 16) ** 2) / (2 * 0.7**2))
    vol = g[:, None, None] * g[None, :, None] * g[None, None, :]  # power up to the map's Nyquist
    truth = sim.draw_truth(3, 9, ctf="full", defocus=(15000, 25000))
    plain = sim.render(vol, truth, box, apix, map_pixel_size=5.0)
    got = sim.render(vol, truth, box, apix, map_pixel_size=5.0, ctf="full")
    ft = np.fft.rfft2(np.fft.ifftshift(plain, axes=(-2, -1)))
    for p, wrong in ((apix, False), (5.0, True)):
        c = ctf_2d(box, p, truth.defocus_u, truth.defocus_v, truth.defocus_angle, rfft=True)
        want = np.fft.fftshift(np.fft.irfft2(ft * c, s=(box, box)), axes=(-2, -1))
        scores = [ncc(w, h) for w, h in zip(want, got)]
        assert (max(scores) < 0.9) if wrong else (min(scores) > 0.999)


def test_resampled_junk_batches_and_identity(small_phantom, monkeypatch):
    """Finer target: every junk kind is made, the images do not depend on the batch (nor on
    the memory cap that shrinks it), and an equal map pixel size changes no bit."""
    t = sim.draw_truth(40, 11, shift_max=4, ctf="full", junk_fraction=0.5, junk_kinds=sim.JUNK_KINDS)
    kw = dict(map_pixel_size=10.0, ctf="full", bfactor=50.0, seed=2)
    imgs = sim.render(small_phantom, t, 96, 4.0, **kw)
    kinds = t["junk_kind"].to_numpy()
    assert np.all(imgs[kinds == "noise"] == 0)
    assert np.all(imgs[kinds != "noise"].std(axis=(1, 2)) > 0)
    np.testing.assert_array_equal(sim.render(small_phantom, t, 96, 4.0, batch=7, **kw), imgs)
    monkeypatch.setattr(sim, "BATCH_BYTES", 1)  # one image at a time
    np.testing.assert_array_equal(sim.render(small_phantom, t, 96, 4.0, **kw), imgs)
    monkeypatch.undo()
    same = sim.render(small_phantom, t, 32, 10.0, seed=2, ctf="full")
    np.testing.assert_array_equal(sim.render(small_phantom, t, 32, 10.0, seed=2, ctf="full",
                                             map_pixel_size=10.0), same)


def test_cli_simulate_finer_pixel(tmp_path):
    """``--map-apix 10 --apix 2.5``: a headerless 10 Å map imaged at 2.5 Å/px; the stack and
    STAR carry 2.5 Å, the clean images are ``render(..., map_pixel_size=10)``, and the SNR is
    measured in the disc of ``--snr-disc`` x box target pixels."""
    vol = phantom_volume(32, 10.0)
    with mrcfile.new(tmp_path / "nopix.mrc") as m:
        m.set_data(vol)
    out = tmp_path / "sim"
    args = ["simulate", "--map", str(tmp_path / "nopix.mrc"), "--map-apix", "10", "--apix", "2.5",
            "--n", "40", "--box", "128", "--snr", "0.1", "--snr-disc", "0.4", "--shift", "6",
            "--ctf", "full", "--defocus", "8000", "25000", "--bfactor", "100", "--junk", "0.1",
            "--seed", "3", "--write-clean", "-o", str(out)]
    assert cli(args) == 0
    with mrcfile.open(out / "particles.mrcs") as m:
        stack = m.data.copy()
        assert stack.shape == (40, 128, 128) and float(m.voxel_size.x) == pytest.approx(2.5)
    clean = mrcfile.read(out / "clean.mrcs")
    truth = pd.read_csv(out / "truth.tsv", sep="\t")
    assert truth[["shift_x", "shift_y"]].abs().max().max() > 3  # target pixels, up to 6
    star = starfile.read(out / "particles.star", always_dict=True)
    assert star["optics"].loc[0, "rlnImagePixelSize"] == pytest.approx(2.5)
    assert star["optics"].loc[0, "rlnImageSize"] == 128
    want = sim.render(vol, truth, 128, 2.5, map_pixel_size=10.0, ctf="full", bfactor=100.0, seed=3)
    np.testing.assert_allclose(clean, want, atol=1e-6 * np.abs(want).max())
    yy, xx = np.mgrid[:128, :128] - 64
    disc = xx**2 + yy**2 <= (0.4 * 128) ** 2
    signal = clean[~truth["junk"].to_numpy(dtype=bool)][:, disc].var(axis=1).mean()
    assert (stack - clean).var() == pytest.approx(signal / 0.1, rel=0.02)
    # without --map-apix, a headerless map needs the pixel size
    assert cli(args[:3] + args[5:7] + ["--n", "2", "--box", "32", "-o", str(tmp_path / "x")]) == 0
    assert cli(args[:3] + ["--n", "2", "--box", "32", "-o", str(tmp_path / "y")]) == 2


# ----------------------------------------------------------------------------- realistic sets
def test_snr_in_the_particle_disc(small_phantom):
    """``snr_radius``: the noise variance is the clean images' variance inside the disc over the
    SNR, which for a particle that leaves the box corners empty is more than the box's."""
    kw = dict(snr=0.1, ctf="flip", defocus=(12000, 20000), seed=3, return_clean=True)
    box_imgs, truth, clean = sim.simulate(small_phantom, 100, 32, 10.0, **kw)
    disc_imgs, _, _ = sim.simulate(small_phantom, 100, 32, 10.0, snr_radius=0.4 * 32, **kw)
    yy, xx = np.mgrid[:32, :32] - 16
    inside = xx**2 + yy**2 <= (0.4 * 32) ** 2
    signal = clean[:, inside].var(axis=1).mean()
    noise = disc_imgs - clean
    assert noise.var() == pytest.approx(signal / 0.1, rel=0.02)
    assert signal > clean.reshape(100, -1).var(axis=1).mean()
    assert (box_imgs - clean).var() < noise.var()


def test_bfactor_envelope(small_phantom):
    """``bfactor`` damps an image's spectrum by exp(-B s²/4): a B = 400 Å² set keeps its low
    frequencies and loses most of its power near Nyquist (10 Å/px: s = 0.05/Å)."""
    t = sim.draw_truth(20, 7, shift_max=0)
    a = sim.render(small_phantom, t, 32, 10.0)
    b = sim.render(small_phantom, t, 32, 10.0, bfactor=400.0)
    pa, pb = (np.abs(np.fft.fft2(x)) ** 2 for x in (a, b))
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(32), np.fft.fftfreq(32))) / 10.0
    low, high = (f > 0) & (f < 0.01), f > 0.04
    ratio_low = pb[:, low].sum() / pa[:, low].sum()
    ratio_high = pb[:, high].sum() / pa[:, high].sum()
    assert ratio_low > 0.9
    assert ratio_high < np.exp(-400 * 0.04**2 / 2)   # (envelope)² at s = 0.04/Å


def test_junk_kinds_look_like_their_names(small_phantom):
    """Every junk kind is drawn and rendered as named: an empty pick is zero; an aggregate holds
    about twice a particle's mass, a fragment less than one, an edge steps across the box;
    each image is the same whatever the batch."""
    t = sim.draw_truth(200, 11, junk_fraction=0.5, junk_kinds=sim.JUNK_KINDS)
    kinds = t["junk_kind"].to_numpy()
    assert set(kinds) == set(sim.JUNK_KINDS) | {"particle"}
    assert (kinds == "particle").sum() == 100 and (t["junk"] == (kinds != "particle")).all()
    imgs = sim.render(small_phantom, t, 32, 10.0, seed=2)
    np.testing.assert_array_equal(sim.render(small_phantom, t, 32, 10.0, seed=2, batch=7), imgs)
    mass = imgs.reshape(200, -1).sum(axis=1)
    particle = np.median(mass[kinds == "particle"])
    assert np.all(imgs[kinds == "noise"] == 0)
    assert np.median(mass[kinds == "aggregate"]) > 1.5 * particle
    assert np.median(mass[kinds == "fragment"]) < 0.8 * particle
    edges = imgs[kinds == "edge"]
    # one half of the box bright, the other dark: the largest half-box difference over four cuts
    halves = [np.abs(e[:16].mean() - e[16:].mean()) for e in edges] + [np.abs(e[:, :16].mean() - e[:, 16:].mean()) for e in edges]
    assert np.median(halves) > np.median(np.abs(imgs[kinds == "particle"]).mean(axis=(1, 2)))
    with pytest.raises(ValueError, match="ice"):
        sim.draw_truth(10, 1, junk_fraction=0.5, junk_kinds=("ice",))
