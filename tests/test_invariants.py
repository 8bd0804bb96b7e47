"""Tests for r2d.invariants: polar resampling and the EMAN1 rotational footprint (§3.2)."""

import numpy as np
import pytest
from scipy import ndimage

from r2d.errors import InputError
from r2d.invariants import footprint, footprint_shape, good_fft_size, polar_matrix

N_PX = 64


def blob_image(n, blobs):
    """Sum of anisotropic Gaussians ``(dx, dy, sigma_u, sigma_v, angle, amplitude)`` about n//2."""
    yy, xx = np.mgrid[0:n, 0:n].astype(float)
    img = np.zeros((n, n))
    for cx, cy, su, sv, th, amp in blobs:
        u = (xx - n // 2 - cx) * np.cos(th) + (yy - n // 2 - cy) * np.sin(th)
        v = -(xx - n // 2 - cx) * np.sin(th) + (yy - n // 2 - cy) * np.cos(th)
        img += amp * np.exp(-0.5 * ((u / su) ** 2 + (v / sv) ** 2))
    return img


OBJ_A = blob_image(N_PX, [(-6, 2, 6, 2.5, 0.3, 1.0), (5, -4, 3, 3, 0, 0.8), (2, 8, 4, 1.8, 1.2, 0.6)])
OBJ_B = blob_image(N_PX, [(0, 0, 9, 3, 0.7, 1.0), (-7, -7, 2.5, 2.5, 0, 0.7)])


def rel_err(a, b):
    """L2 distance of the unit-normalised footprints (what MSA sees)."""
    a = a.ravel() / np.linalg.norm(a)
    b = b.ravel() / np.linalg.norm(b)
    return float(np.linalg.norm(a - b))


def transformed_copies(img):
    out = {}
    for ang in (90, 37, 123.4, 211, 300.7):
        out[f"rot{ang}"] = ndimage.rotate(img, ang, reshape=False, order=3)
    for sx, sy in ((3, 0), (-2, 3), (0.5, -1.3), (2.7, 2.2), (-3, -3)):
        out[f"shift{sx},{sy}"] = ndimage.shift(img, (sy, sx), order=3)
    out["mirror_x"] = img[:, ::-1]
    out["mirror_y"] = img[::-1, :]
    out["mirror+rot+shift"] = ndimage.shift(ndimage.rotate(img[:, ::-1], 63, reshape=False, order=3),
                                            (1.4, -2.2), order=3)
    return out


@pytest.fixture(scope="module")
def fps():
    variants = transformed_copies(OBJ_A)
    stack = np.stack([OBJ_A, OBJ_B, *variants.values()]).astype(np.float32)
    fp = footprint(stack)
    return fp[0], fp[1], dict(zip(variants, fp[2:]))


def test_shapes():
    assert footprint_shape(64) == (36, 50)
    assert footprint_shape(128) == (84, 104)
    rng = np.random.default_rng(0)
    out = footprint(rng.normal(size=(3, 64, 64)).astype(np.float32))
    assert out.shape == (3, 36, 50) and out.dtype == np.float32
    out = footprint(rng.normal(size=(2, 128, 128)))
    assert out.shape == (2, 84, 104) and out.dtype == np.float32
    assert np.isfinite(out).all()


def test_good_fft_size():
    assert good_fft_size(100) == 100
    assert good_fft_size(200) == 208
    assert good_fft_size(513) == 540
    for m in (17, 150, 700, 1500):
        assert good_fft_size(m) >= m


def test_invariant_to_rotation_shift_mirror(fps):
    ref, _, variants = fps
    for name, fp in variants.items():
        err = rel_err(ref, fp)
        corr = np.corrcoef(ref.ravel(), fp.ravel())[0, 1]
        assert err < 0.03, (name, err)
        assert corr > 0.995, (name, corr)


def test_distinguishes_different_objects(fps):
    ref, other, variants = fps
    worst_invariance = max(rel_err(ref, fp) for fp in variants.values())
    diff = rel_err(ref, other)
    assert diff > 0.3
    assert diff > 10 * worst_invariance
    assert np.corrcoef(ref.ravel(), other.ravel())[0, 1] < 0.9


def test_rotation_invariance_needs_autocorrelation(fps):
    """Sanity check of the test itself: a raw 0-180 deg polar unwrap is NOT rotation invariant."""
    img = OBJ_A
    rot = ndimage.rotate(img, 37, reshape=False, order=3)
    pm = polar_matrix(N_PX, N_PX // 2, np.arange(4, 28), np.arange(100) * np.pi / 100)
    a, b = (pm @ x.ravel() for x in (img, rot))
    assert rel_err(a, b) > 0.1


def test_batching_does_not_change_results():
    rng = np.random.default_rng(1)
    imgs = ndimage.gaussian_filter(rng.normal(size=(7, 64, 64)), (0, 2, 2)).astype(np.float32)
    full = footprint(imgs)
    small = footprint(imgs, batch=3, workers=2)
    single = np.stack([footprint(im[None])[0] for im in imgs])
    np.testing.assert_allclose(small, full, rtol=1e-5, atol=1e-6 * np.abs(full).max())
    np.testing.assert_allclose(single, full, rtol=1e-5, atol=1e-6 * np.abs(full).max())


def reference_footprint(f):
    """Literal, unvectorised transcription of docs/algorithm.md §3.2 for one image (n = 64)."""
    n = f.shape[0]
    P, Q, L = 112, 96, 100
    cs = (P - n) // 2

    def edge(a):
        return (a[0].sum() + a[-1].sum() + a[:, 0].sum() + a[:, -1].sum()) / (4 * a.shape[0])

    canvas = np.full((P, P), edge(f))
    canvas[cs:cs + n, cs:cs + n] = f
    F = np.fft.fft2(canvas)
    s = np.hypot(*np.meshgrid(np.fft.fftfreq(P), np.fft.fftfreq(P), indexing="ij"))
    A = np.abs(F) * np.sqrt(1 - np.exp(-(s * n / 1.5) ** 2))
    m = np.fft.fftshift(np.fft.ifft2(A).real)
    m -= edge(m)
    m = m[P // 2 - Q // 2:P // 2 + Q // 2, P // 2 - Q // 2:P // 2 + Q // 2]
    r1, r2 = 4, 46
    R = r2 - r1
    th = np.arange(L) * np.pi / L
    unwrap = np.empty((R, L))
    for j in range(R):
        r = r1 + j
        x = Q // 2 + r * np.cos(th)
        y = Q // 2 + r * np.sin(th)
        unwrap[j] = r * ndimage.map_coordinates(m, [y, x], order=1, mode="constant", cval=0.0)
    rows = unwrap[4:R - 2]
    ac = np.array([[np.dot(np.roll(p, -t), p) for t in range(L // 2)] for p in rows])
    return ac


def test_matches_literal_reference():
    rng = np.random.default_rng(2)
    img = OBJ_A + 0.1 * rng.normal(size=OBJ_A.shape)
    ours = footprint(img[None].astype(np.float32))[0].astype(np.float64)
    ref = reference_footprint(img)
    assert ref.shape == ours.shape == (36, 50)
    scale = np.dot(ours.ravel(), ref.ravel()) / np.dot(ref.ravel(), ref.ravel())
    assert scale > 0
    np.testing.assert_allclose(ours, scale * ref, atol=1e-4 * np.abs(ours).max())


def test_polar_matrix_matches_map_coordinates():
    rng = np.random.default_rng(3)
    ny, nx = 20, 26
    img = rng.normal(size=(ny, nx))
    radii = np.array([0.0, 1.0, 2.5, 7.3, 12.0, 15.0])   # 15 leaves the grid for some angles
    angles = np.linspace(0, 2 * np.pi, 37)
    cx, cy = 12.3, 9.0
    pm = polar_matrix((ny, nx), (cx, cy), radii, angles)
    assert pm.shape == (len(radii) * len(angles), ny * nx)
    got = (pm @ img.ravel()).reshape(len(radii), len(angles))
    x = cx + radii[:, None] * np.cos(angles)
    y = cy + radii[:, None] * np.sin(angles)
    want = ndimage.map_coordinates(img, [y.ravel(), x.ravel()], order=1, mode="grid-constant",
                                   cval=0.0).reshape(got.shape)
    np.testing.assert_allclose(got, want, atol=1e-12)
    # row order radius-major, angle from +x towards +y: r=1, theta=90 deg samples a[cy+1, cx]
    square = polar_matrix(8, 4, [1.0], [0.0, np.pi / 2])
    a = np.arange(64.0).reshape(8, 8)
    np.testing.assert_allclose(square @ a.ravel(), [a[4, 5], a[5, 4]])


def test_rejects_bad_input():
    with pytest.raises(InputError):
        footprint(np.zeros((2, 63, 63), np.float32))
    with pytest.raises(InputError):
        footprint(np.zeros((2, 64, 32), np.float32))
