"""The Snakemake workflow end to end on a tiny simulated data set: plan, run, resume, partial reruns, lint."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from r2d import io
from r2d.check import SCHEMA

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.workflow

CONFIG = {"ncls": 4, "iter": 4, "naliref": 2, "nbasisfp": 3, "classiter": 1, "seed": 7, "threads": 1,
          "path": "run"}


def planned_jobs(result) -> dict:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    out = result.stdout + result.stderr
    m = re.search(r"Job stats:\n.*?\n-+\s+-+\n(.*?)\ntotal", out, re.S)
    if not m:
        return {}
    return {ln.split()[0]: int(ln.split()[1]) for ln in m.group(1).strip().splitlines()}


def planned_outputs(result) -> list[str]:
    return re.findall(r"output: (\S+?)(?:,|\n)", result.stdout + result.stderr)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_stack, smk):
    wd = tmp_path_factory.mktemp("wf")
    (wd / "data").symlink_to(tiny_stack)
    (wd / "config").mkdir()
    (wd / "config" / "config.yaml").write_text(yaml.safe_dump({"input": "data/particles.star", **CONFIG}))
    dry = smk(wd, "-n")
    assert dry.returncode == 0, dry.stderr
    run = smk(wd)
    assert run.returncode == 0, run.stderr[-3000:]
    return wd, dry


def test_dry_run_lists_whole_plan(finished_run):
    _, dry = finished_run
    jobs = planned_jobs(dry)
    for rule in ("particles", "input_fp", "input_fp_basis", "input_fp_basis_proj", "classmx_00", "classes_init"):
        assert jobs[rule] == 1
    for rule in ("allrefs", "basis", "aliref", "simmx", "input_proj", "classmx", "classes"):
        assert jobs[rule] == CONFIG["iter"], rule


def test_resources_config_accepts_every_rule(finished_run, smk):
    """`resources` in the config accepts exactly the workflow's rules (the schema's list
    follows the rules: a new rule, like the class-averaging chunks, must be added to it)."""
    wd, _ = finished_run
    r = smk(wd, "--list-rules")
    assert r.returncode == 0, r.stderr[-2000:]
    rules = {ln.strip() for ln in r.stdout.splitlines() if re.fullmatch(r"\s*\w+\s*", ln)} - {"all"}
    schema = yaml.safe_load(SCHEMA.read_text())
    allowed = set(schema["properties"]["resources"]["propertyNames"]["enum"])
    assert "classes_chunk" in rules and rules == allowed, (sorted(rules - allowed), sorted(allowed - rules))


def test_every_artifact_written(finished_run):
    wd, _ = finished_run
    run = wd / "run"
    for name in ("input_fp.h5", "input_fp_basis.hdf", "input_fp_basis_proj.h5", "classmx_00.h5", "classes_init.hdf"):
        assert (run / name).is_file(), name
    index = io.open_stack(run / "particles.h5")  # every step read the particles through it
    assert index.source == Path("data/particles.star") and index.n == 60
    assert io.read_image_headers(run / "classes_init.hdf")[0]["class_ptcl_src"] == "data/particles.star"
    for it in range(1, CONFIG["iter"] + 1):
        for name in ("allrefs_{}.hdf", "basis_{}.hdf", "aliref_{}.hdf", "simmx_{}.h5", "input_{}_proj.h5",
                     "classmx_{}.h5", "classes_{}.hdf"):
            assert (run / name.format(f"{it:02d}")).is_file(), name
    cmx = io.read_matrix(run / "classmx_04.h5")
    assert set(cmx) >= {"class", "weight", "dx", "dy", "dalpha", "mirror", "particle"}
    assert len(cmx["class"]) == 60 and cmx["class"].max() < CONFIG["ncls"]
    simmx = io.read_matrix(run / "simmx_04.h5")
    assert simmx["score"].shape == (60, CONFIG["naliref"])
    assert io.read_image_stack(run / "aliref_04.hdf").shape == (CONFIG["naliref"], 32, 32)
    assert io.read_image_stack(run / "basis_04.hdf").shape == (CONFIG["nbasisfp"] + 1, 32, 32)
    heads = io.read_image_headers(run / "classes_04.hdf")
    assert sum(h["ptcl_repr"] for h in heads) + sum(len(h["exc_class_ptcl_idxs"]) for h in heads) == 60


def test_second_run_has_nothing_to_do(finished_run, smk):
    wd, _ = finished_run
    r = smk(wd, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr


def test_forcing_iteration_03_reruns_only_03_and_later(finished_run, smk):
    wd, _ = finished_run
    r = smk(wd, "-n", "--forcerun", "run/classmx_03.h5")
    outs = planned_outputs(r)
    assert any("classes_03" in o for o in outs) and any("allrefs_04" in o for o in outs)
    assert any("classes_04" in o for o in outs)
    # the stability repeats (stability/*_RR) follow the last iteration, whatever their number
    assert not any(re.search(r"_0[012][._]|_init|input_fp", o) for o in outs if "stability" not in o), outs
    # classify mra: classmx_03 does not use steps 1-8 of iteration 03, so forcing allrefs_03
    # remakes just that branch (with kmeans it would remake everything from 03 on)
    outs = planned_outputs(smk(wd, "-n", "--forcerun", "run/allrefs_03.hdf"))
    made = {re.sub(r"/\d+-of-\d+", "", o) for o in outs}  # a step's chunks count as the step
    assert made == {f"run/{a}" for a in ("allrefs_03.hdf", "basis_03.hdf", "aliref_03.hdf", "simmx_03.h5",
                                         "input_03_proj.h5")}, made


def test_raising_iter_runs_only_new_iterations(finished_run, smk):
    wd, _ = finished_run
    r = smk(wd, "-n", "--config", "iter=6")
    jobs = planned_jobs(r)
    outs = planned_outputs(r)
    assert jobs["classes"] == 2 and jobs["simmx"] == 2
    assert "classes_init" not in jobs and "input_fp" not in jobs
    iters = {m for o in outs if "stability" not in o for m in re.findall(r"_(\d\d)(?:[._/])", o)}
    assert iters <= {"05", "06"}, iters
    assert "run/stability.h5" in outs  # the stability of the new last iteration


def _class_commands(result) -> dict[str, list[str]]:
    """The `r2d average` command lines of a dry run (-p), by rule."""
    out = result.stdout + result.stderr
    cmds: dict[str, list[str]] = {}
    for rule, body in re.findall(r"rule (\w+):\n(.*?)(?=\n\n|\Z)", out, re.S):
        cmds.setdefault(rule, []).extend(ln for ln in body.splitlines() if "r2d average" in ln)
    return cmds


@pytest.mark.parametrize("extra,iteration_prior", [((), True), (("classprior=False",), False),
                                                    (("classify=kmeans",), False)])
def test_class_averaging_starts_from_the_mra_alignment_by_default(finished_run, extra, iteration_prior, smk):
    """classes_YY start from classmx's alignments (`--prior`) with classprior and classify mra;
    classes_init (k-means, no alignments) always bootstraps."""
    wd, _ = finished_run
    r = smk(wd, "-n", "-p", "--forceall", *(("--config", *extra) if extra else ()))
    cmds = _class_commands(r)
    # the class-averaging jobs: chunks, or with one chunk the step's own rule
    iters = cmds.get("classes_chunk", []) + cmds.get("classes", [])
    init = cmds.get("classes_init_chunk", []) + cmds.get("classes_init", [])
    assert iters and init, r.stdout[-2000:]
    assert all(("--prior" in c) == iteration_prior for c in iters)
    assert not any("--prior" in c for c in init)


def test_same_seed_same_classes(finished_run, tmp_path, smk):
    """Rerunning an iteration in a copy gives byte-identical classmx (deterministic seeds)."""
    wd, _ = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(wd, copy, ignore=shutil.ignore_patterns(".snakemake"))
    before = (copy / "run" / "classmx_02.h5").read_bytes()
    r = smk(copy, "--forcerun", "run/classmx_02.h5", "--until", "run/classmx_02.h5")
    assert r.returncode == 0, r.stderr[-2000:]
    a = io.read_matrix(copy / "run" / "classmx_02.h5")
    b = io.read_matrix(wd / "run" / "classmx_02.h5")
    assert np.array_equal(a["class"], b["class"])
    assert before == (wd / "run" / "classmx_02.h5").read_bytes()


def test_lint_is_clean(finished_run, smk):
    wd, _ = finished_run
    r = smk(wd, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_config_key_is_clear_error(finished_run, tmp_path, smk):
    wd, _ = finished_run
    r = smk(wd, "-n", "--config", "simalign=rotate_flip")
    assert r.returncode != 0
    assert "unknown aligner 'rotate_flip'" in r.stderr


# ----------------------------------------------------------------------------- config schema and defaults
def test_schema_is_package_data():
    """The schema ships inside the r2d package (pyproject package-data), so that an installed r2d
    (`pip install .`, no checkout) checks configs; the workflow reads the same file."""
    import tomllib

    import r2d
    from r2d.check import load_schema

    pkg = Path(r2d.__file__).resolve().parent
    assert SCHEMA.resolve().is_relative_to(pkg) and SCHEMA.is_file()
    data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["r2d"]
    assert any(SCHEMA.resolve().relative_to(pkg).match(glob) for glob in data), data
    schema = load_schema()
    assert schema["properties"]["nbasisfp"]["default"] == 12 and "resources" in schema["properties"]
    assert "schemas" not in {p.name for p in (REPO / "workflow").iterdir()}  # one copy only


def test_small_ncls_lowers_the_default_nbasisfp(tmp_path, tiny_stack, smk):
    """ncls below the default nbasisfp (12): the shipped config plans, with one warning, and the
    MSA steps ask for ncls basis vectors, or, while the classes grow (mragrow), for as many as
    the averages they get (basis_01 from the 4 of classes_init)."""
    (tmp_path / "data").symlink_to(tiny_stack)
    (tmp_path / "config").mkdir()
    shutil.copy(REPO / "config" / "config.yaml", tmp_path / "config" / "config.yaml")
    r = smk(tmp_path, "-n", "-p", "--config", "input=data/particles.star", "path=run", "ncls=8", "iter=2")
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if ln.startswith("r2d: warning: nbasisfp")]
    assert warnings == ["r2d: warning: nbasisfp: the default 12 basis vectors exceed the class averages the MSA "
                        "gets (ncls=8); using nbasisfp=8 (set nbasisfp to choose another value)"], r.stderr
    msa = [ln for ln in (r.stdout + r.stderr).splitlines() if "r2d msa " in ln]
    nbasis = {ln.split(" -o ")[1].split()[0]: ln.split("--nbasis ")[1].split()[0] for ln in msa}
    assert nbasis == {"run/input_fp_basis.hdf": "8", "run/basis_01.hdf": "4", "run/basis_02.hdf": "8"}, msa


def test_nbasisfp_default_follows_the_class_averages_a_set_value_is_checked(tmp_path):
    from r2d.check import check_workflow_config
    from r2d.errors import ConfigError

    base = {"input": "x.mrcs", "path": str(tmp_path / "run")}
    cfg = dict(base, ncls=8)
    facts = check_workflow_config(cfg, open_input=False)
    assert cfg["nbasisfp"] == 8 and [w.split(":")[0] for w in facts["warnings"]] == ["nbasisfp"]
    cfg = dict(base, ncls=12)  # fits: unchanged, no warning
    assert check_workflow_config(cfg, open_input=False)["warnings"] == [] and cfg["nbasisfp"] == 12
    with pytest.raises(ConfigError, match=r"^nbasisfp: 12 basis vectors exceed ncls=8"):
        check_workflow_config(dict(base, ncls=8, nbasisfp=12), open_input=False)
    # iteration 01's MSA gets the initial k-means' min(50, ncls) averages
    with pytest.raises(ConfigError, match=r"^nbasisfp: 60 basis vectors exceed the 50 class averages of the initial"):
        check_workflow_config(dict(base, ncls=100, naliref=5, nbasisfp=60), open_input=False)
    cfg = dict(base, ncls=100, nbasisfp=60, initial="init.hdf")  # given initial averages: their count decides
    check_workflow_config(cfg, open_input=False)
    assert cfg["nbasisfp"] == 60


def test_nbasisfp_default_follows_the_initial_averages(tmp_path, tiny_stack):
    from r2d.check import check_workflow_config

    init = tmp_path / "init.hdf"
    io.write_image_stack(init, io.open_stack(tiny_stack / "particles.mrcs").read(slice(0, 6)))
    cfg = {"input": str(tiny_stack / "particles.star"), "path": str(tmp_path / "run"), "ncls": 16,
           "initial": str(init)}
    facts = check_workflow_config(cfg)
    assert cfg["nbasisfp"] == 6
    assert [w for w in facts["warnings"] if w.startswith("nbasisfp")] == [
        "nbasisfp: the default 12 basis vectors exceed the class averages the MSA gets (the 6 images of "
        "initial); using nbasisfp=6 (set nbasisfp to choose another value)"]
