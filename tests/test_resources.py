"""The job resource model (r2d.resources): memory and time estimates, overrides, retries."""

from __future__ import annotations

import pytest

from r2d import check
from r2d.io import image_block
from r2d.resources import BASE_MB, JOBS, MEM_MARGIN, MIN_MEM_MB, MIN_RUNTIME, ResourceModel, costs, subset_size

CONFIG = {"ncls": 32, "naliref": 5, "classiter": 5, "chunks": 2, "threads": 1, "resources": {}}
CHUNKED = sorted(r for r, j in JOBS.items() if j.chunked)


def model(n=100_000, box=128, **config) -> ResourceModel:
    return ResourceModel.from_config({**CONFIG, **config}, {"n": n, "n_used": n, "box": box})


# (mem_mb MiB, runtime min) of the default config: what SLURM jobs are sized by; they must not
# drift unnoticed
PINNED = {
    (100_000, 128): {"particles": (500, 10), "input_fp": (700, 10), "input_fp_basis": (900, 10),
                     "classes_init_chunk": (900, 17), "allrefs": (600, 10), "simmx_chunk": (600, 120),
                     "mra_chunk": (700, 300), "input_proj_chunk": (600, 40), "classmx": (1000, 20),
                     "classes_chunk": (900, 540), "classes": (1800, 10), "export": (500, 40)},
    (10_000, 96): {"particles": (500, 10), "input_fp_basis": (600, 10), "classes_init_chunk": (600, 10),
                   "allrefs": (500, 10), "simmx_chunk": (600, 10), "mra_chunk": (600, 13),
                   "input_proj_chunk": (600, 10), "classes_chunk": (900, 23)},
    (1_000, 64): {"classes_init_chunk": (500, 10), "allrefs": (500, 10), "simmx_chunk": (500, 10),
                  "mra_chunk": (500, 10), "classes_chunk": (500, 10)},
}

# measured peaks (max RSS MB, Snakemake benchmark files) of the heavy jobs, docs/benchmarks.md:
# benchmarks/scaling.py (100,000 x 128 px, 10,000 x 96 px; ncls 64) and benchmarks/realsize.py
# (4,000 raw 256 px particles at 1.25 Å, ncls 32; 20,000 of 320 px at 1.3 Å, ncls 64; working
# stacks of 80 and 104 px); the larger chunk where two were measured. Key: (n, box, apix, ncls)
MEASURED = {
    (100_000, 128, None, 64): {"simmx_chunk": 356, "mra_chunk": 432, "input_proj_chunk": 433,
                               "classes_chunk": 668, "classes_init_chunk": 580, "allrefs": 464},
    (10_000, 96, None, 64): {"simmx_chunk": 388, "mra_chunk": 414, "input_proj_chunk": 350,
                             "classes_chunk": 641, "classes_init_chunk": 452},
    (4_000, 256, None, 32): {"classes_chunk": 2000},  # every step at 256 px (maxres null)
    (4_000, 256, 1.25, 32): {"particles": 384, "classes_init_chunk": 452, "simmx_chunk": 297,
                             "mra_chunk": 316, "classes_chunk": 374, "classes_final_chunk": 477,
                             "input_fp_basis": 324},
    (20_000, 320, 1.3, 64): {"particles": 432, "classes_init_chunk": 550, "simmx_chunk": 400,
                             "mra_chunk": 418, "input_proj_chunk": 467, "classes_chunk": 574,
                             "classes_final_chunk": 661, "allrefs": 409, "input_fp_basis": 417},
}


@pytest.mark.parametrize("key", sorted(MEASURED, key=str))
def test_estimates_cover_the_measured_peaks_within_twice(key):
    """Every heavy job asks for at least its measured peak and at most twice it (or the floor)."""
    from r2d.working import working_geometry

    n, box, apix, ncls = key
    facts = {"n": n, "n_used": n, "box": box}
    if apix:
        facts["working"] = working_geometry(box, apix, 8)
    m = ResourceModel.from_config({**CONFIG, "ncls": ncls}, facts)
    for rule, peak in MEASURED[key].items():
        asked = m.mem_mb(rule)
        assert peak <= asked <= max(2 * peak, MIN_MEM_MB), (rule, peak, asked)


@pytest.mark.parametrize("n,box", sorted(PINNED))
def test_estimates_are_the_pinned_numbers(n, box):
    m = model(n, box)
    got = {rule: (m.mem_mb(rule), m.runtime(rule)) for rule in PINNED[n, box]}
    assert got == PINNED[n, box]


def test_threads_divide_the_runtime_of_threaded_jobs_only():
    one, two = model(threads=1, chunks=4), model(threads=2, chunks=4)
    assert (two.runtime("simmx_chunk"), two.runtime("mra_chunk"), two.runtime("classes_chunk")) == (30, 75, 135)
    assert one.runtime("mra_chunk") == 2 * two.runtime("mra_chunk")
    assert one.runtime("input_proj_chunk") == two.runtime("input_proj_chunk")  # runs one thread
    assert one.mem_mb("simmx_chunk") == two.mem_mb("simmx_chunk")


def test_every_rule_of_the_schema_has_a_job_and_a_cost():
    schema = check.load_schema()
    assert set(JOBS) == set(schema["properties"]["resources"]["propertyNames"]["enum"])
    kinds = costs(32, 5, 5)
    assert {j.kind for j in JOBS.values()} <= set(kinds)


def test_memory_grows_with_the_box_squared():
    """Whole-stack jobs and box-dependent tables: beyond the fixed base, memory ~ box² (px)."""
    base = MEM_MARGIN * BASE_MB
    for rule in ("classes", "classmx", "allrefs"):
        m128, m256 = model(box=128).mem_mb(rule), model(box=256).mem_mb(rule)
        assert (m256 - base) / (m128 - base) == pytest.approx(4, rel=0.05), rule
    for rule in CHUNKED:  # one block of particles (64 MiB of images, 256 at least), plus search tables
        m64, m128, m256, m384 = (model(box=b).mem_mb(rule) for b in (64, 128, 256, 384))
        assert m64 <= m128 <= m256 < m384, rule
        if not model().cost(JOBS[rule].kind).tables4_mb:
            assert m384 <= 3 * m128, rule


@pytest.mark.parametrize("rule", CHUNKED)
def test_chunked_job_memory_does_not_grow_beyond_one_block(rule):
    """A chunk holds at most image_block(box) particles: 10^5 or 10^7 particles, same memory."""
    job = JOBS[rule]
    sizes = [model(n=n, box=128) for n in (100_000, 1_000_000, 10_000_000)]
    assert len({m.mem_mb(rule) for m in sizes}) == 1
    assert all(m.held(job.kind, chunked=True) <= image_block(128) for m in sizes)
    # ... but the time limit follows the share of the particles (not for the initial subset)
    if not sizes[0].cost(job.kind).subset:
        assert sizes[0].runtime(rule) < sizes[1].runtime(rule) < sizes[2].runtime(rule)


def test_whole_stack_jobs_grow_with_the_dataset():
    assert model(n=100_000).mem_mb("particles") < model(n=1_000_000).mem_mb("particles")
    assert model(n=100_000).mem_mb("classmx") < model(n=1_000_000).mem_mb("classmx")


def test_jobs_on_the_working_stack_follow_its_box_the_full_size_ones_the_input():
    """With a working stack (256 px at 1.25 Å -> 80 px) every job is sized as on an 80 px input
    except those that read the input (particles, classes_final_chunk), sized at 256 px."""
    from r2d.working import working_geometry

    n = 100_000
    w = working_geometry(256, 1.25, 8)
    cropped = ResourceModel.from_config(CONFIG, {"n": n, "n_used": n, "box": 256, "working": w})
    small, big = model(n=n, box=80), model(n=n, box=256)
    full = {r for r, j in JOBS.items() if j.full}
    assert full == {"particles", "classes_final_chunk"}
    for rule in JOBS:
        want = big if rule in full else small
        if rule == "particles":  # it also reads the input block by block to write the working stack
            assert cropped.mem_mb(rule) > want.mem_mb(rule) and cropped.runtime(rule) == want.runtime(rule)
            continue
        assert (cropped.mem_mb(rule), cropped.runtime(rule)) == (want.mem_mb(rule), want.runtime(rule)), rule
    # the full-size averages hold each class's half-set sums at 256 px: more classes per chunk, more memory
    facts = {"n": n, "n_used": n, "box": 256, "working": w}
    two, eight = (ResourceModel.from_config({**CONFIG, "ncls": 400, "chunks": c}, facts) for c in (2, 8))
    assert two.mem_mb("classes_final_chunk") > eight.mem_mb("classes_final_chunk") + 300


def test_chunk_share_is_rounded_up():
    m = model(n=1001, box=64, chunks=4)
    assert m.particles("simmx_chunk", chunked=True) == 251
    assert m.particles("simmx_chunk") == 1001


def test_initial_stage_works_on_a_subset_of_at_most_max_2000_10ncls():
    assert subset_size(100_000, 32) == 2000 and subset_size(100_000, 500) == 5000 and subset_size(60, 4) == 60
    for rule in ("input_fp", "input_fp_basis", "input_fp_basis_proj", "classes_init_chunk"):
        kind = JOBS[rule].kind
        assert model(n=10_000).particles(kind) == model(n=10_000_000).particles(kind) == 2000, rule
        assert model(n=10_000_000).mem_mb(rule) == model(n=10_000).mem_mb(rule), rule
        assert model(n=10_000_000, ncls=500).particles(kind) == 5000, rule
    # the iteration's class averaging works on every particle
    assert model(n=10_000).particles("average") == 10_000


def test_minimums_are_honoured():
    tiny = ResourceModel.from_config(CONFIG, {"n": 60, "box": 32})
    for rule in JOBS:
        assert tiny.mem_mb(rule) >= MIN_MEM_MB and tiny.runtime(rule) >= MIN_RUNTIME, rule
    assert tiny.mem_mb("montage") == 500 and tiny.runtime("montage") == 10
    # without input facts (no input opened): one particle of 64 px
    blank = ResourceModel.from_config(CONFIG, {})
    assert (blank.n_used, blank.box) == (1, 64) and blank.mem_mb("simmx_chunk") == 500


def test_memory_is_rounded_up_to_100_mib_with_a_margin():
    m = model(n=100_000, box=128)
    for rule in JOBS:
        value = m.mem_mb(rule)
        assert value % 100 == 0
        assert value >= 1.25 * 170


def test_config_overrides_win_and_attempt_multiplies():
    over = {"simmx_chunk": {"mem_mb": 4000}, "classes": {"runtime": 77}, "mra_chunk": {"mem_mb": 123, "runtime": 5}}
    m = model(resources=over)
    assert m.mem_mb("simmx_chunk") == 4000 and m.runtime("simmx_chunk") == 120  # the other key: the estimate
    assert m.runtime("classes") == 77 and m.mem_mb("classes") == 1800
    assert (m.mem_mb("mra_chunk"), m.runtime("mra_chunk")) == (123, 5)  # below the minimums: as given
    for attempt in (1, 2, 3):
        assert m.mem_mb("simmx_chunk", attempt) == 4000 * attempt
        assert m.runtime("mra_chunk", attempt) == 5 * attempt
        assert m.mem_mb("classes_chunk", attempt) == 900 * attempt
    assert model(resources=None).mem_mb("simmx_chunk") == 600  # `resources: null`


def test_excluded_particles_do_not_count():
    m = ResourceModel.from_config(CONFIG, {"n": 1_000_000, "n_used": 100_000, "box": 128})
    assert m.mem_mb("particles") == model(n=100_000).mem_mb("particles")


def test_cpu_cost_follows_the_references():
    """simmx searches naliref references, mra all ncls class averages."""
    assert model(naliref=10).runtime("simmx_chunk") == 2 * model(naliref=5).runtime("simmx_chunk")
    assert model(ncls=64).runtime("mra_chunk") == 2 * model(ncls=32).runtime("mra_chunk")
    assert model(classiter=11).runtime("classes_chunk") == 2 * model(classiter=5).runtime("classes_chunk")


def test_with_one_chunk_a_step_asks_what_its_chunk_job_needs():
    """With one chunk a scattered step is one job of its chunk rule's command, named as the
    step (no gather): it asks for the chunk job's memory and time over every particle."""
    from r2d.resources import SINGLE

    one, two = model(n=3000, chunks=1), model(n=3000, chunks=2)
    for step, chunk in SINGLE.items():
        assert one.mem_mb(step) == one.mem_mb(chunk) and one.runtime(step) == one.runtime(chunk)
        assert two.job(step) == JOBS[step]  # chunked: the step is the gather job
    assert one.mem_mb("classes") > two.mem_mb("classes") or one.runtime("classes") > two.runtime("classes")
    # a value set for the chunk rule applies to the one job (and the step's own name wins)
    over = model(n=3000, chunks=1, resources={"simmx_chunk": {"mem_mb": 4000}, "mra": {"mem_mb": 3000},
                                              "mra_chunk": {"mem_mb": 5000}})
    assert over.mem_mb("simmx") == 4000 and over.mem_mb("mra") == 3000

