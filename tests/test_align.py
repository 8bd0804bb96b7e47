"""Ground-truth tests of the transform convention and the alignment engine."""

import numpy as np
import pytest

from r2d import transforms as tf
from r2d.align import Alignment, align, search
from r2d.errors import ConfigError
from r2d.options import parse

from conftest import blob_image

N64 = 64
REF = blob_image(N64, [(5, 3, 4, 1), (-8, 6, 3, 0.7), (2, -10, 5, 0.8), (12, -2, 2, 0.5)])


def _angle_err(a, b):
    return np.abs((np.asarray(a) - np.asarray(b) + 180) % 360 - 180)


def test_rotation_direction_matches_eman2():
    """alpha = 90 moves a feature at (+r, 0) to (0, -r) (docs/algorithm.md §4)."""
    img = blob_image(N64, [(10, 0, 1.5, 1)])
    out = tf.transform(img[None], 90, 0, 0, 0)[0]
    y, x = np.unravel_index(np.argmax(out), out.shape)
    assert (x - 32, y - 32) == (0, -10)


def test_mirror_flips_x_after_translation():
    img = blob_image(N64, [(5, 3, 1.5, 1)])
    out = tf.transform(img[None], 0, 2, 1, 1)[0]
    y, x = np.unravel_index(np.argmax(out), out.shape)
    assert (x - 32, y - 32) == (-7, 4)


def test_invert_and_compose_roundtrip():
    rng = np.random.default_rng(0)
    p = (rng.uniform(-180, 180, 50), rng.uniform(-5, 5, 50), rng.uniform(-5, 5, 50), rng.integers(0, 2, 50))
    ident = tf.compose(p, tf.invert(*p))
    assert np.allclose(ident[0], 0, atol=1e-9)
    assert np.allclose(ident[1], 0, atol=1e-9) and np.allclose(ident[2], 0, atol=1e-9)
    assert np.all(ident[3] == 0)


@pytest.mark.parametrize("aligner", ["rotate_translate_flip:maxshift=5", "rotate_translate_tree:maxshift=10"])
def test_alignment_recovers_known_transform_low_noise(aligner):
    """Particles = T^-1(ref) + noise (SNR 10): the aligner returns T (angle, shift, mirror)."""
    rng = np.random.default_rng(1)
    N = 120
    alpha = rng.uniform(-180, 180, N)
    tx, ty = rng.uniform(-2.5, 2.5, (2, N))  # |t| < 4: the tree aligner's reach at 64 px
    mirror = rng.integers(0, 2, N).astype(float)
    parts = tf.transform(np.repeat(REF[None], N, 0), *tf.invert(alpha, tx, ty, mirror))
    parts += rng.normal(0, np.sqrt(REF.var() / 10), parts.shape).astype(np.float32)
    a = align(parts, REF[None], aligner, "ccc")
    assert np.mean(a.mirror[:, 0] == mirror) == 1.0
    assert np.percentile(_angle_err(a.alpha[:, 0], alpha), 95) < 2.0
    assert np.percentile(np.hypot(a.tx[:, 0] - tx, a.ty[:, 0] - ty), 95) < 0.5
    assert np.all(a.score[:, 0] < -0.8)  # ccc is negated: lower is better


def test_alignment_on_ribosome_projections(ribosome_projections):
    """Noise-free 70S projections at 64 px, known rotation/shift/mirror, recovered by the search."""
    clean, _ = ribosome_projections
    rng = np.random.default_rng(2)
    N = len(clean)
    alpha = rng.uniform(-180, 180, N)
    tx, ty = rng.uniform(-3, 3, (2, N))
    mirror = rng.integers(0, 2, N).astype(float)
    parts = tf.transform(clean, *tf.invert(alpha, tx, ty, mirror))
    a, x, y, m, _ = search(parts, clean, maxshift=4, pairs=np.arange(N))
    assert np.mean(m == mirror) == 1.0
    assert np.median(_angle_err(a, alpha)) < 1.0
    assert np.median(np.hypot(x - tx, y - ty)) < 0.3


def test_best_reference_is_the_true_one():
    refs = np.stack([REF, blob_image(N64, [(0, 0, 8, 1), (10, 10, 3, 1)]), blob_image(N64, [(-10, 0, 4, 1), (10, 0, 4, 1)])])
    rng = np.random.default_rng(3)
    lab = rng.integers(0, 3, 60)
    alpha = rng.uniform(-180, 180, 60)
    parts = tf.transform(refs[lab], *tf.invert(alpha, 0, 0, 0))
    parts += rng.normal(0, np.sqrt(refs.var()), parts.shape).astype(np.float32)
    a = align(parts, refs, "rotate_translate_flip:maxshift=3", "ccc")
    assert a.score.shape == (60, 3)
    assert np.mean(np.argmin(a.score, axis=1) == lab) > 0.95


def test_unknown_aligner_is_config_error():
    with pytest.raises(ConfigError, match="unknown aligner 'rotate_flip'"):
        parse("rotate_flip:maxshift=3", "aligner", key="simalign")
    with pytest.raises(ConfigError, match="no parameter maxshfit"):
        parse("rotate_translate_flip:maxshfit=3", "aligner", key="simalign")


def test_tree_reach_matches_eman2_examples():
    from r2d.align import tree_reach

    assert tree_reach(64, 21) == 4 and tree_reach(128, 42) == 16 and tree_reach(256, 85) == 44


def test_second_stage_must_be_refine():
    from r2d.options import check_config_options

    check_config_options({"simralign": "refine:maxshift=3"})
    with pytest.raises(ConfigError, match="simralign: the second-stage aligner must be 'refine'"):
        check_config_options({"simralign": "rotate_translate_flip"})


def _trials(clean, snr, seed, n_trials=200, shift=3.0):
    rng = np.random.default_rng(seed)
    refs = clean[np.arange(n_trials) % len(clean)]
    alpha = rng.uniform(-180, 180, n_trials)
    tx, ty = rng.uniform(-shift, shift, (2, n_trials))
    mirror = rng.integers(0, 2, n_trials).astype(float)
    parts = tf.transform(refs, *tf.invert(alpha, tx, ty, mirror))
    sigma = np.sqrt(refs.reshape(n_trials, -1).var(axis=1).mean() / snr)
    parts = (parts + rng.normal(0, sigma, parts.shape)).astype(np.float32)
    return parts, refs, (alpha, tx, ty, mirror)


def _hits(a, truth, max_deg, max_px):
    alpha, tx, ty, mirror = truth
    return np.mean((a.mirror == mirror) & (_angle_err(a.alpha, alpha) <= max_deg)
                   & (np.hypot(a.tx - tx, a.ty - ty) <= max_px))


@pytest.mark.parametrize("aligner", ["rotate_translate_flip:maxshift=8", "rotate_translate_tree:maxshift=8"])
@pytest.mark.parametrize("ralign", [None, "refine"])
def test_accuracy_on_ribosome_projections_snr1(ribosome_projections, aligner, ralign):
    """SNR 1, 200 trials: within 2° / 0.5 px (refine: 1° / 0.25 px) with the right
    mirror in ≥ 99% (the benchmark, benchmarks/align.py, runs 500)."""
    clean, _ = ribosome_projections
    parts, refs, truth = _trials(clean, 1.0, seed=10)
    a = align(parts, refs, aligner, "ccc", ralign=ralign, raligncmp="ccc", pairs=np.arange(len(refs)))
    deg, px = (2.0, 0.5) if ralign is None else (1.0, 0.25)
    assert _hits(a, truth, deg, px) >= 0.99


def test_accuracy_on_ribosome_projections_snr01(ribosome_projections):
    """SNR 0.1 against the noise-free reference: ≥ 99% within 10° / 1.5 px, and with
    refine ≥ 95% within 2° / 0.5 px, mirror right."""
    clean, _ = ribosome_projections
    parts, refs, truth = _trials(clean, 0.1, seed=11)
    a = align(parts, refs, "rotate_translate_tree:maxshift=8", "ccc", pairs=np.arange(len(refs)))
    assert _hits(a, truth, 10.0, 1.5) >= 0.99
    r = align(parts, refs, "rotate_translate_tree:maxshift=8", "ccc", ralign="refine", raligncmp="ccc",
              pairs=np.arange(len(refs)))
    assert _hits(r, truth, 2.0, 0.5) >= 0.95


def test_refine_never_worsens_the_first_stage_score(ribosome_projections):
    clean, _ = ribosome_projections
    parts, refs, _ = _trials(clean, 0.5, seed=12, n_trials=60)
    a = align(parts, refs, "rotate_translate_flip:maxshift=5", "ccc:negative=1", pairs=np.arange(60))
    r = align(parts, refs, "rotate_translate_flip:maxshift=5", "ccc:negative=1", ralign="refine:maxshift=5",
              raligncmp="ccc", pairs=np.arange(60))
    assert np.all(r.score <= a.score + 1e-6)
    assert np.all(np.hypot(r.tx, r.ty) <= 5 + 1e-9)


@pytest.mark.parametrize("K,Lo,L", [(1, 1, 64), (9, 32, 128), (17, 32, 128), (33, 64, 256), (60, 128, 256),
                                    (65, 128, 256), (65, 128, 128), (40, 1, 256)])
def test_angular_correlation_matches_its_definition(K, Lo, L):
    """The angular correlation from band-limited cross-spectra (a BLAS synthesis up to 64 lags,
    an inverse FFT of length Lo above) is the circular correlation Σ_θ p(θ+τ)·q(θ) of the two length-L signals at the lags
    τ·L/Lo, whatever the band: also where the band reaches Lo/2 (which the inverse FFT would
    take once, as its Nyquist term, for what are two frequencies ±Lo/2 of the signals), at L/2
    (the true Nyquist term) and for the zero lag alone (Lo = 1, the translational search)."""
    import scipy.fft as sfft

    from r2d.align import _angular_ifft

    rng = np.random.default_rng(K + Lo)
    spec = rng.normal(size=(2, 6, L // 2 + 1)) + 1j * rng.normal(size=(2, 6, L // 2 + 1))
    spec[..., K:] = 0.0                                             # signals band-limited to k < K
    p, q = sfft.irfft(spec, n=L, axis=-1)                            # (6, L) each, real
    X = (sfft.rfft(p, axis=-1) * np.conj(sfft.rfft(q, axis=-1)))[:, :K].T.astype(np.complex64)
    lags = np.arange(Lo) * (L // Lo)
    want = np.array([(np.roll(p, -t, axis=-1) * q).sum(-1) for t in lags])   # (Lo, 6)
    got = _angular_ifft(X, Lo, L)
    np.testing.assert_allclose(got, want, atol=2e-5 * np.abs(want).max())


@pytest.mark.parametrize("K,Lo,L", [(17, 32, 128), (32, 64, 256), (40, 128, 256)])
def test_angular_correlation_of_a_column_does_not_depend_on_the_others(K, Lo, L):
    """Bit-identical correlation functions for a column whatever else is in the call (the
    columns of other particles, references and shifts; as many as a chunk happens to hold),
    also through the BLAS synthesis products (float64, :mod:`r2d.stable`)."""
    from r2d.align import _angular_ifft

    rng = np.random.default_rng(K)
    X = (rng.normal(size=(K, 9001)) + 1j * rng.normal(size=(K, 9001))).astype(np.complex64)
    whole = _angular_ifft(X, Lo, L, workers=2)
    for a, b in ((0, 1), (1, 104), (104, 260), (5000, 9001), (3, 8999)):
        np.testing.assert_array_equal(_angular_ifft(X[:, a:b], Lo, L, workers=1), whole[:, a:b])


def test_self_alignment_scores_a_correlation_coefficient_of_one(ribosome_projections):
    """Every aligner reports the correlation coefficient over the disc: an image against
    itself scores 1 (ccc -1) with the identity transform."""
    clean, _ = ribosome_projections
    refs = clean[:4]
    for aligner in ["rotational", "translational:maxshift=6", "rotate_translate:maxshift=6",
                    "rotate_translate_flip:maxshift=6", "rotate_translate_tree"]:
        a = align(refs, refs, aligner, "ccc", pairs=np.arange(4))
        np.testing.assert_allclose(a.corr, 1.0, atol=2e-3, err_msg=aligner)
        np.testing.assert_allclose(a.score, -a.corr)
        assert np.all(np.abs(a.alpha) < 0.5) and np.all(np.hypot(a.tx, a.ty) < 0.1), aligner
        assert np.all(a.mirror == 0), aligner


def test_translational_aligner_recovers_shifts(ribosome_projections):
    """``translational`` (no rotation, no mirror) at SNR 1: 99% of 200 shifts within 0.5 px."""
    clean, _ = ribosome_projections
    rng = np.random.default_rng(5)
    refs = clean[rng.integers(0, len(clean), 200)]
    r = rng.uniform(0, 5.5, 200)
    phi = rng.uniform(0, 2 * np.pi, 200)
    tx, ty = r * np.cos(phi), r * np.sin(phi)
    parts = tf.transform(refs, *tf.invert(np.zeros(200), tx, ty, np.zeros(200)))
    sigma = np.sqrt(refs.reshape(200, -1).var(axis=1).mean())
    parts = parts + rng.normal(0, sigma, parts.shape).astype(np.float32)
    a = align(parts, refs, "translational:maxshift=6", "ccc", pairs=np.arange(200))
    assert np.all(a.alpha == 0) and np.all(a.mirror == 0)
    assert np.mean(np.hypot(a.tx - tx, a.ty - ty) <= 0.5) >= 0.99


@pytest.mark.parametrize("n,m", [(64, 32), (64, 16), (96, 24), (32, 32)])
def test_fourier_crop_keeps_the_centred_band(n, m):
    """Fourier cropping keeps frequencies -m/2 … m/2-1 and the mean: a band-limited image
    sampled on the n grid and on the m grid agree, and a constant stays constant."""
    v, u = np.mgrid[0:n, 0:n] / n
    img = (1.0 + np.cos(2 * np.pi * 3 * u) + 0.5 * np.sin(2 * np.pi * (2 * u + 5 * v)))[None].astype(np.float32)
    small = tf.fourier_crop(img, m)
    vs, us = np.mgrid[0:m, 0:m] / m
    want = 1.0 + np.cos(2 * np.pi * 3 * us) + 0.5 * np.sin(2 * np.pi * (2 * us + 5 * vs))
    np.testing.assert_allclose(small[0], want, atol=1e-5)
    np.testing.assert_allclose(tf.fourier_crop(np.full((2, n, n), 3.0, np.float32), m), 3.0, atol=1e-5)


@pytest.mark.parametrize("aligner", ["rotate_translate_tree", "rotate_translate_flip:maxshift=6"])
def test_results_do_not_depend_on_how_particles_are_chunked(ribosome_projections, aligner):
    """Bit-identical answers for a particle whatever else is in its call (chunks of the
    workflow, single particles, small classes in pairs mode): every value is computed along
    axes that do not mix particles, in the same order for any batch size."""
    clean, _ = ribosome_projections
    rng = np.random.default_rng(9)
    refs = clean[:3]
    parts, _ = _particles_of(refs[rng.integers(0, 3, 25)], rng)
    whole = align(parts, refs, aligner, "ccc", workers=2)
    pairs = rng.integers(0, 3, 25)
    whole_p = align(parts, refs, aligner, "ccc", pairs=pairs, workers=1)
    for cuts in ([0, 1, 25], [0, 12, 13, 25]):
        parts_of = [align(parts[a:b], refs, aligner, "ccc", workers=1) for a, b in zip(cuts[:-1], cuts[1:])]
        pairs_of = [align(parts[a:b], refs, aligner, "ccc", pairs=pairs[a:b], workers=2)
                    for a, b in zip(cuts[:-1], cuts[1:])]
        for key in ("alpha", "tx", "ty", "mirror", "score"):
            np.testing.assert_array_equal(np.concatenate([getattr(p, key) for p in parts_of]), getattr(whole, key))
            np.testing.assert_array_equal(np.concatenate([getattr(p, key) for p in pairs_of]), getattr(whole_p, key))


def test_pairs_do_not_depend_on_the_other_references(ribosome_projections):
    """Pairs mode (class averaging): a particle's answer against its reference is bit-identical
    whether the call holds every reference or only those of its class chunk (the others
    empty, as in the workflow's classes_chunk jobs), for the tree search and for the local
    search around a prior: each reference keeps its own angular band."""
    clean, _ = ribosome_projections
    rng = np.random.default_rng(4)
    refs = clean[:6]
    pairs = rng.integers(0, 6, 30)
    parts, _ = _particles_of(refs[pairs], rng)
    whole = align(parts, refs, "rotate_translate_tree", "ccc", pairs=pairs)
    prior = whole.params()
    whole_l = align(parts, refs, "rotate_translate_tree", "ccc", pairs=pairs, prior=prior)
    for keep in ([0, 1, 2], [3], [4, 5]):
        sel = np.isin(pairs, keep)
        sub = np.zeros_like(refs)
        sub[keep] = refs[keep]
        a = align(parts[sel], sub, "rotate_translate_tree", "ccc", pairs=pairs[sel])
        loc = align(parts[sel], sub, "rotate_translate_tree", "ccc", pairs=pairs[sel],
                    prior=tuple(p[sel] for p in prior))
        for key in ("alpha", "tx", "ty", "mirror", "score"):
            np.testing.assert_array_equal(getattr(a, key), getattr(whole, key)[sel])
            np.testing.assert_array_equal(getattr(loc, key), getattr(whole_l, key)[sel])


def test_candidates_are_halved_at_each_finer_level(ribosome_projections):
    """``candidates`` (mra): the coarse level keeps each particle's best 8 of 12 references;
    with two finer levels (64 px, maxshift 12: 16 → 32 → 64 px) the full-size level searches
    the best 4 of them (``PRUNE_TO``), the rest scoring +inf. A searched pair's numbers are
    bit-identical to an unpruned search's, and the best reference is the true one."""
    from r2d.align import PRUNE_TO, coarse_factor

    clean, _ = ribosome_projections
    assert coarse_factor(64, 12) == 4 and PRUNE_TO == 4
    rng = np.random.default_rng(21)
    refs = clean[:12]
    true = rng.integers(0, 12, 40)
    parts, _ = _particles_of(refs[true], rng, snr=1.0)
    full = align(parts, refs, "rotate_translate_tree:maxshift=12", "ccc")
    cand = align(parts, refs, "rotate_translate_tree:maxshift=12", "ccc", candidates=8)
    searched = np.isfinite(cand.score)
    assert np.all(searched.sum(axis=1) == 4)
    for key in ("alpha", "tx", "ty", "mirror", "score"):
        np.testing.assert_array_equal(getattr(cand, key)[searched], getattr(full, key)[searched])
    assert np.mean(cand.score.argmin(axis=1) == true) >= 0.95
    assert np.array_equal(cand.score.argmin(axis=1), full.score.argmin(axis=1))


def _particles_of(refs, rng, snr=0.5, shift=3.0):
    N = len(refs)
    alpha = rng.uniform(-180, 180, N)
    tx, ty = rng.uniform(-shift, shift, (2, N))
    mirror = rng.integers(0, 2, N).astype(float)
    parts = tf.transform(refs, *tf.invert(alpha, tx, ty, mirror))
    sigma = np.sqrt(refs.reshape(N, -1).var(axis=1).mean() / snr)
    return (parts + rng.normal(0, sigma, parts.shape)).astype(np.float32), (alpha, tx, ty, mirror)


def test_local_search_around_a_prior(ribosome_projections):
    """``prior``: all angles and the shifts within LOCAL_RADIUS px of an earlier answer, its
    mirror kept. From the truth with its shift 1.5 px and its angle up to 10° off (the angle
    sets the particle frame in which the prior's shift is applied): SNR 1, ≥ 99% within 2° /
    0.5 px with the right mirror, also from a prior with the wrong one; from the full search's
    answer, its score again."""
    clean, _ = ribosome_projections
    parts, refs, truth = _trials(clean, 1.0, seed=13)
    rng = np.random.default_rng(14)
    phi = rng.uniform(0, 2 * np.pi, len(refs))
    alpha, tx, ty, mirror = truth
    prior = (alpha + rng.uniform(-10, 10, len(refs)), tx + 1.5 * np.cos(phi), ty + 1.5 * np.sin(phi), mirror)
    pairs = np.arange(len(refs))
    a = align(parts, refs, "rotate_translate_tree:maxshift=8", "ccc", pairs=pairs, prior=prior)
    assert _hits(a, truth, 2.0, 0.5) >= 0.99
    # from the full search's own answer, 0.2 px off: the same optimum and about the same score
    # (a correlation is reported at the grid sample nearest the peak, so it moves by ~0.01)
    full = align(parts, refs, "rotate_translate_tree:maxshift=8", "ccc", pairs=pairs)
    near = (full.alpha, full.tx + 0.2 * np.cos(phi), full.ty + 0.2 * np.sin(phi), full.mirror)
    again = align(parts, refs, "rotate_translate_tree:maxshift=8", "ccc", pairs=pairs, prior=near)
    np.testing.assert_allclose(again.score, full.score, atol=0.015)
    assert np.mean(np.hypot(again.tx - full.tx, again.ty - full.ty) < 0.1) >= 0.99
    # the wrong mirror: a flipping aligner searches both about the same particle offset and
    # finds the right one; one that does not flip never mirrors
    wrong = prior[:3] + (1.0 - mirror,)
    flip = align(parts, refs, "rotate_translate_tree:maxshift=8", "ccc", pairs=pairs, prior=wrong)
    assert _hits(flip, truth, 2.0, 0.5) >= 0.99
    kept = align(parts, refs, "rotate_translate_tree:maxshift=8:flip=0", "ccc", pairs=pairs, prior=wrong)
    assert np.all(kept.mirror == 0)
    assert np.mean(kept.score[mirror == 1] > a.score[mirror == 1]) >= 0.99


def test_simmx_center_keeps_the_references_frame(ribosome_projections, tmp_path):
    """``r2d simmx --center``: particles near the centre (±2 px), references 5-6 px off-centre
    (class averages that drifted). With ``maxshift=4`` the search reaches them only after
    centring the references, and the stored transforms still bring each particle into the given
    references' frame: ≥ 95% within 2° / 0.5 px of the truth at SNR 1, with the right reference;
    without ``--center`` most fail."""
    from r2d import io
    from r2d.cli import main as cli

    clean, _ = ribosome_projections
    sx, sy = np.array([5, -5, 0, 4]), np.array([0, 3, -5, 4])
    parts, _, truth_c = _trials(clean[:4], 1.0, seed=15, n_trials=80, shift=2.0)
    j = np.arange(80) % 4
    truth = tf.compose(truth_c, (0.0, sx[j].astype(float), sy[j].astype(float), 0.0))  # into the given refs
    io.write_image_stack(tmp_path / "refs.hdf", tf.integer_shift(clean[:4], sx, sy))
    io.write_mrcs(tmp_path / "p.mrcs", parts, pixel_size=5.0)
    hits = {}
    for flag in ([], ["--center"]):
        assert cli(["simmx", str(tmp_path / "refs.hdf"), str(tmp_path / "p.mrcs"), "-o", str(tmp_path / "mx.h5"),
                    "--align", "rotate_translate_tree:maxshift=4", "--candidates", "2", *flag]) == 0
        mx = io.read_matrix(tmp_path / "mx.h5")
        i = np.arange(80)
        got = Alignment(mx["dalpha"][i, j], mx["dx"][i, j], mx["dy"][i, j], mx["mirror"][i, j],
                        mx["score"][i, j], -mx["score"][i, j])
        hits[bool(flag)] = _hits(got, truth, 2.0, 0.5) * np.mean(mx["score"].argmin(axis=1) == j)
    assert hits[True] >= 0.95 and hits[False] < 0.5
