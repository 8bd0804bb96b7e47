"""The Snakemake workflow end to end on a tiny simulated data set: plan, run, resume, partial reruns, lint."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from r2d import io

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.workflow

CONFIG = {"ncls": 4, "iter": 4, "naliref": 2, "nbasisfp": 3, "classiter": 1, "seed": 7, "threads": 1,
          "path": "run"}


def smk(workdir, *args):
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [str(BIN / "snakemake"), "-s", str(REPO / "Snakefile"), "--workflow-profile", "none",
           "--directory", str(workdir), "--cores", "2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


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
def finished_run(tmp_path_factory):
    wd = tmp_path_factory.mktemp("wf")
    subprocess.run([str(BIN / "r2d"), "simulate", "--phantom", "--n", "60", "--box", "32", "--apix", "10",
                    "--snr", "1", "--shift", "1", "--seed", "2", "-o", str(wd / "data")], check=True,
                   capture_output=True)
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


def test_resources_config_accepts_every_rule(finished_run):
    """`resources` in the config accepts exactly the workflow's rules (the schema's list
    follows the rules: a new rule, like the class-averaging chunks, must be added to it)."""
    import yaml

    wd, _ = finished_run
    r = smk(wd, "--list-rules")
    assert r.returncode == 0, r.stderr[-2000:]
    rules = {ln.strip() for ln in r.stdout.splitlines() if re.fullmatch(r"\s*\w+\s*", ln)} - {"all"}
    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
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


def test_second_run_has_nothing_to_do(finished_run):
    wd, _ = finished_run
    r = smk(wd, "-n")
    assert "Nothing to be done" in r.stdout + r.stderr


def test_forcing_iteration_03_reruns_only_03_and_later(finished_run):
    wd, _ = finished_run
    r = smk(wd, "-n", "--forcerun", "run/classmx_03.h5")
    outs = planned_outputs(r)
    assert any("classes_03" in o for o in outs) and any("allrefs_04" in o for o in outs)
    assert any("classes_04" in o for o in outs)
    assert not any(re.search(r"_0[012][._]|_init|input_fp", o) for o in outs), outs
    # classify mra: classmx_03 does not use steps 1-8 of iteration 03, so forcing allrefs_03
    # remakes just that branch (with kmeans it would remake everything from 03 on)
    outs = planned_outputs(smk(wd, "-n", "--forcerun", "run/allrefs_03.hdf"))
    made = {re.sub(r"/\d+-of-\d+", "", o) for o in outs}  # a step's chunks count as the step
    assert made == {f"run/{a}" for a in ("allrefs_03.hdf", "basis_03.hdf", "aliref_03.hdf", "simmx_03.h5",
                                         "input_03_proj.h5")}, made


def test_raising_iter_runs_only_new_iterations(finished_run):
    wd, _ = finished_run
    r = smk(wd, "-n", "--config", "iter=6")
    jobs = planned_jobs(r)
    outs = planned_outputs(r)
    assert jobs["classes"] == 2 and jobs["simmx"] == 2
    assert "classes_init" not in jobs and "input_fp" not in jobs
    iters = {m for o in outs for m in re.findall(r"_(\d\d)(?:[._/])", o)}
    assert iters <= {"05", "06"}, iters


def _class_commands(result) -> dict[str, list[str]]:
    """The `r2d average` command lines of a dry run (-p), by rule."""
    out = result.stdout + result.stderr
    cmds: dict[str, list[str]] = {}
    for rule, body in re.findall(r"rule (\w+):\n(.*?)(?=\n\n|\Z)", out, re.S):
        cmds.setdefault(rule, []).extend(ln for ln in body.splitlines() if "r2d average" in ln)
    return cmds


@pytest.mark.parametrize("extra,iteration_prior", [((), True), (("classprior=False",), False),
                                                    (("classify=kmeans",), False)])
def test_class_averaging_starts_from_the_mra_alignment_by_default(finished_run, extra, iteration_prior):
    """classes_YY start from classmx's alignments (`--prior`) with classprior and classify mra;
    classes_init (k-means, no alignments) always bootstraps."""
    wd, _ = finished_run
    r = smk(wd, "-n", "-p", "--forceall", *(("--config", *extra) if extra else ()))
    cmds = _class_commands(r)
    assert cmds.get("classes_chunk") and cmds.get("classes_init_chunk"), r.stdout[-2000:]
    assert all(("--prior" in c) == iteration_prior for c in cmds["classes_chunk"])
    assert not any("--prior" in c for c in cmds["classes_init_chunk"])


def test_same_seed_same_classes(finished_run, tmp_path):
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


def test_lint_is_clean(finished_run):
    wd, _ = finished_run
    r = smk(wd, "--lint")
    assert r.returncode == 0, r.stdout + r.stderr


def test_bad_config_key_is_clear_error(finished_run, tmp_path):
    wd, _ = finished_run
    r = smk(wd, "-n", "--config", "simalign=rotate_flip")
    assert r.returncode != 0
    assert "unknown aligner 'rotate_flip'" in r.stderr
