"""End-to-end tests against a real one-node SLURM cluster on this machine.

The module-scoped fixture runs ``scripts/slurm-localhost.sh up`` (which installs
Debian's slurmctld/slurmd/munge with apt-get when needed and starts the daemons
with their state in a temporary directory) and ``... down`` at the end.  When
the script exits with code 3 (not root and no passwordless sudo, no apt-get,
install failed, another configless slurmd holds /run/slurm/conf) the tests are
skipped with the script's message.  While ``up`` runs, the fixture listens on
SLURM's default controller port, as a SLURM cluster already running here would:
the test cluster must take free ports and leave that one alone.

Checks:
* two ``sbatch --wrap`` jobs with different --cpus-per-task/--mem run, and
  ``scontrol show job`` / ``squeue`` report the requested CPUs and memory;
* the Snakemake SLURM executor plugin submits one SLURM job per rule with the
  rule's ``threads`` and ``resources.mem_mb`` and the outputs appear;
* the r2d workflow itself, run through ``workflow/profiles/slurm`` on a tiny simulated
  data set with ``chunks: 3``: every Snakemake job (each simmx/mra/input_proj/classes chunk included) is its
  own SLURM job with the CPUs, memory and time limit the workflow declared (read from a
  dry run), and the classes equal those of a local unchunked run.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytestmark = pytest.mark.slurm

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm-localhost.sh"
SKIP_RC = 3
#: SLURM's default SlurmctldPort and SlurmdPort
DEFAULT_PORTS = (6817, 6818)


def _snakemake_bin() -> Path:
    for cand in (REPO / ".venv" / "bin" / "snakemake", Path(sys.executable).parent / "snakemake"):
        if cand.exists():
            return cand
    pytest.skip("no snakemake executable found (.venv/bin/snakemake or next to sys.executable)")


def _ncpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _run(cmd, env, cwd=None, timeout=60, check=True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if check and p.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed with {p.returncode}\n"
            f"--- stdout\n{p.stdout}\n--- stderr\n{p.stderr}"
        )
    return p


def _show_job(env, jobid: str) -> dict[str, str]:
    """`scontrol show job -o` as a dict (works for finished jobs thanks to MinJobAge=600)."""
    out = _run(["scontrol", "show", "job", "-o", jobid], env).stdout
    return dict(re.findall(r"(\S+?)=(\S*)", out))


def _squeue_all(env) -> list[dict[str, str]]:
    """All jobs slurmctld still knows, finished ones included."""
    fields = ["id", "state", "cpus", "mem", "name", "comment"]
    out = _run(
        ["squeue", "--states=all", "--noheader", "--format=%i|%T|%C|%m|%j|%k"], env
    ).stdout
    return [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]


def _wait_finished(env, jobids: list[str], timeout: float = 60) -> dict[str, str]:
    t0 = time.monotonic()
    states: dict[str, str] = {}
    while time.monotonic() - t0 < timeout:
        states = {j["id"]: j["state"] for j in _squeue_all(env) if j["id"] in jobids}
        if len(states) == len(jobids) and all(
            s in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
            for s in states.values()
        ):
            return states
        time.sleep(1)
    raise AssertionError(f"jobs {jobids} not finished after {timeout} s: {states}")


@pytest.fixture(scope="module")
def slurm_env(tmp_path_factory):
    if not sys.platform.startswith("linux"):
        pytest.skip("the local SLURM cluster script needs Linux")
    statedir = tmp_path_factory.mktemp("slurm-state")
    squatter = _listen(DEFAULT_PORTS[0])  # None: something listens there already
    try:
        p = subprocess.run(
            ["bash", str(SCRIPT), "up", str(statedir)], capture_output=True, text=True, timeout=900
        )
    finally:
        if squatter is not None:
            squatter.close()
    if p.returncode == SKIP_RC:
        pytest.skip(f"local SLURM cluster unavailable: {p.stderr.strip().splitlines()[-1:]}")
    assert p.returncode == 0, f"slurm-localhost.sh up failed:\n{p.stdout}\n{p.stderr}"
    conf = statedir / "slurm.conf"
    assert f"export SLURM_CONF={conf}" in p.stdout
    assert (statedir / "env").read_text().strip() == f"export SLURM_CONF={conf}"
    env = dict(os.environ, SLURM_CONF=str(conf))
    try:
        yield env
    finally:
        d = subprocess.run(
            ["bash", str(SCRIPT), "down", str(statedir)], capture_output=True, text=True, timeout=120
        )
        print(d.stdout, d.stderr, sep="\n")
        assert d.returncode == 0, d.stderr
        assert not statedir.exists()


def _listen(port: int) -> socket.socket | None:
    """A TCP socket listening on ``port`` (all addresses), or None if the port is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("0.0.0.0", port))
        sock.listen()
    except OSError:
        sock.close()
        return None
    return sock


def _conf_ports(env) -> tuple[int, int]:
    text = Path(env["SLURM_CONF"]).read_text()
    return tuple(int(re.search(rf"^{key}=(\d+)$", text, re.M).group(1)) for key in ("SlurmctldPort", "SlurmdPort"))


def test_cluster_takes_free_ports(slurm_env):
    """SLURM's default ports were in use during `up`: the cluster runs on the next free pair."""
    if os.environ.get("R2D_SLURM_CTLD_PORT") or os.environ.get("R2D_SLURM_SLURMD_PORT"):
        pytest.skip("ports fixed by R2D_SLURM_CTLD_PORT / R2D_SLURM_SLURMD_PORT")
    ctld, slurmd = _conf_ports(slurm_env)
    assert ctld != DEFAULT_PORTS[0] and slurmd == ctld + 1, (ctld, slurmd)
    cfg = _run(["scontrol", "show", "config"], slurm_env).stdout
    assert re.search(rf"SlurmctldPort\s*=\s*{ctld}\b", cfg) and re.search(rf"SlurmdPort\s*=\s*{slurmd}\b", cfg)
    assert "UP" in _run(["scontrol", "ping"], slurm_env).stdout


def test_cluster_is_up(slurm_env):
    out = _run(["sinfo", "--noheader", "-N", "-o", "%N|%P|%T|%c|%m"], slurm_env).stdout.split("\n")[0]
    node, part, state, cpus, mem = out.split("|")
    assert part == "debug*" and state == "idle"
    assert int(cpus) == _ncpus()
    assert 0 < int(mem) <= os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 2**20
    cfg = _run(["scontrol", "show", "config"], slurm_env).stdout
    assert re.search(r"MinJobAge\s*=\s*600", cfg)
    assert re.search(r"SelectTypeParameters\s*=\s*CR_CORE_MEMORY", cfg, re.I)


def test_sbatch_jobs_get_requested_cpus_and_memory(slurm_env, tmp_path):
    big = min(2, _ncpus())
    requests = {"small": (1, 150), "big": (big, 300)}  # cpus-per-task, MiB
    ids = {}
    for name, (cpus, mem) in requests.items():
        p = _run(
            [
                "sbatch", "--parsable", f"--job-name=r2d-{name}", f"--cpus-per-task={cpus}",
                f"--mem={mem}M", f"--output={tmp_path / (name + '.out')}", f"--chdir={tmp_path}",
                "--wrap", 'echo "$SLURM_JOB_ID $SLURM_CPUS_PER_TASK $SLURM_MEM_PER_NODE $(hostname -s)"',
            ],
            slurm_env,
        )
        ids[name] = p.stdout.strip().split(";")[0]
    states = _wait_finished(slurm_env, list(ids.values()))
    assert set(states.values()) == {"COMPLETED"}, states

    queue = {j["id"]: j for j in _squeue_all(slurm_env)}
    for name, (cpus, mem) in requests.items():
        jid = ids[name]
        job = _show_job(slurm_env, jid)
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["Partition"] == "debug"
        assert int(job["NumCPUs"]) == cpus and int(job["CPUs/Task"]) == cpus, job
        assert job["MinMemoryNode"] == f"{mem}M", job
        assert f"cpu={cpus}" in job["TRES"] and f"mem={mem}M" in job["TRES"], job
        assert queue[jid]["cpus"] == str(cpus) and queue[jid]["mem"] == f"{mem}M", queue[jid]
        out = (tmp_path / f"{name}.out").read_text().split()
        assert out[:3] == [jid, str(cpus), str(mem)], out


def test_snakemake_slurm_executor(slurm_env, tmp_path):
    snakemake = _snakemake_bin()
    py = snakemake.parent / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import snakemake_executor_plugin_slurm"]).returncode:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    big = min(2, _ncpus())
    rules = {"small": (1, 200), "big": (big, 400)}  # threads, mem_mb
    (tmp_path / "Snakefile").write_text(
        textwrap.dedent(
            f"""
            rule all:
                input: "small.txt", "big.txt"

            rule small:
                output: "small.txt"
                threads: 1
                resources: mem_mb=200
                shell: 'echo "$SLURM_JOB_ID $SLURM_CPUS_PER_TASK" > {{output}}'

            rule big:
                output: "big.txt"
                threads: {big}
                resources: mem_mb=400
                shell: 'echo "$SLURM_JOB_ID $SLURM_CPUS_PER_TASK" > {{output}}'
            """
        )
    )
    cmd = [
        snakemake,
        "--executor", "slurm",
        "--slurm-status-command", "squeue",
        "--slurm-init-seconds-before-status-checks", "1",
        "--seconds-between-status-checks", "2",
        "--default-resources", "slurm_partition=debug", "runtime=10",
        "--jobs", "4",
        "--workflow-profile", "none",
        "--snakefile", tmp_path / "Snakefile",
        "--directory", tmp_path,
    ]
    p = _run(cmd, slurm_env, cwd=tmp_path, timeout=180, check=False)
    assert p.returncode == 0, f"snakemake failed:\n{p.stdout}\n{p.stderr[-6000:]}"

    run_names = set()
    for rule, (threads, mem_mb) in rules.items():
        jid, cpus_in_job = (tmp_path / f"{rule}.txt").read_text().split()
        assert cpus_in_job == str(threads)
        job = _show_job(slurm_env, jid)
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["Comment"] == f"rule_{rule}", job
        assert job["Partition"] == "debug" and job["TimeLimit"] == "00:10:00", job
        assert int(job["NumCPUs"]) == threads and int(job["CPUs/Task"]) == threads, job
        assert job["MinMemoryNode"] == f"{mem_mb}M", job
        run_names.add(job["JobName"])
    # all jobs of one snakemake run share the run UUID as job name: exactly one per rule
    assert len(run_names) == 1
    ours = [j for j in _squeue_all(slurm_env) if j["name"] in run_names]
    assert sorted(j["comment"] for j in ours) == ["rule_big", "rule_small"], ours
    for j in ours:
        threads, mem_mb = rules[j["comment"].removeprefix("rule_")]
        assert j["state"] == "COMPLETED" and j["cpus"] == str(threads) and j["mem"] == f"{mem_mb}M", j


# ----------------------------------------------------------------------------- r2d workflow
WF_CONFIG = {"ncls": 4, "iter": 1, "naliref": 2, "nbasisfp": 3, "classiter": 1, "seed": 7,
             "path": "run", "input": "data/particles.star"}
WF_RESOURCES = {"simmx_chunk": {"mem_mb": 700}, "mra_chunk": {"mem_mb": 800, "runtime": 15},
                "classes_chunk": {"mem_mb": 900}}
SET_RESOURCES = ["input_proj_chunk:mem_mb=600", "input_proj_chunk:runtime=12"]
SET_EXPECTED = {"input_proj_chunk": {"mem_mb": 600, "runtime": 12}}
SLURM_FLAGS = [
    # the profile's placeholders, replaced for the local cluster (docs/slurm.md)
    "--default-resources", "slurm_partition=debug", "slurm_account=none",
    "--slurm-status-command", "squeue",
    "--slurm-init-seconds-before-status-checks", "1", "--seconds-between-status-checks", "1",
    "--latency-wait", "5", "--jobs", "8",
]


def _planned(out: str) -> dict[str, dict]:
    """Dry-run job blocks: SLURM comment (rule_NAME[_wildcards_VALUES]) -> threads, mem_mb, runtime."""
    jobs = {}
    for block in re.split(r"\n(?=\[[^\n]*\]\n(?:local)?rule )", out):
        m = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        if not m or m.group(1) == "all":
            continue
        wc = re.search(r"^\s+wildcards: (.*)$", block, re.M)
        values = "_".join(kv.split("=", 1)[1] for kv in wc.group(1).split(", ")) if wc else ""
        res = dict(kv.split("=", 1) for kv in re.search(r"^\s+resources: (.*)$", block, re.M).group(1).split(", "))
        th = re.search(r"^\s+threads: (\d+)$", block, re.M)
        key = f"rule_{m.group(1)}" + (f"_wildcards_{values}" if values else "")
        jobs[key] = {"threads": int(th.group(1)) if th else 1, "mem_mb": int(res["mem_mb"]),
                     "runtime": int(res["runtime"])}
    return jobs


def _mem_mib(v: str) -> int:
    return int(float(v[:-1]) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[v[-1]])


def test_r2d_workflow_through_slurm_profile(slurm_env, tmp_path):
    """The workflow through workflow/profiles/slurm: one SLURM job per Snakemake job, as declared."""
    snakemake = _snakemake_bin()
    py = snakemake.parent / "python"
    if py.exists() and subprocess.run([str(py), "-c", "import snakemake_executor_plugin_slurm"]).returncode:
        pytest.skip("snakemake-executor-plugin-slurm is not installed")
    env = dict(slurm_env, PATH=f"{snakemake.parent}:{slurm_env['PATH']}")
    threads = min(2, _ncpus())
    runs = {}
    for name, chunks in (("slurm", 3), ("local", 1)):
        wd = tmp_path / name
        _run([snakemake.parent / "r2d", "simulate", "--phantom", "--n", "60", "--box", "32", "--apix", "10",
              "--snr", "1", "--shift", "1", "--seed", "2", "-o", wd / "data"], env)
        (wd / "config").mkdir()
        (wd / "config" / "config.yaml").write_text(
            yaml.safe_dump({**WF_CONFIG, "chunks": chunks, "threads": threads, "resources": WF_RESOURCES}))
        runs[name] = wd
    # the estimates (500 MiB floor, 10 min at this size) overridden for some rules: config
    # `resources` and Snakemake's --set-resources must both reach sbatch
    base = [snakemake, "-s", REPO / "Snakefile", "--directory", runs["slurm"], "--set-resources", *SET_RESOURCES]
    dry = _run([*base, "--workflow-profile", "none", "--cores", str(threads), "-n"], env, timeout=120)
    planned = _planned(dry.stdout + dry.stderr)
    # 3 chunks of each scattered step: simmx, mra, input_proj, classes_init and classes
    chunk_jobs = [k for k in planned if re.match(r"rule_(simmx|mra|input_proj|classes_init|classes)_chunk_", k)]
    assert len(chunk_jobs) == 15, sorted(planned)
    for key, want in planned.items():
        rule = re.sub(r"_wildcards_.*", "", key.removeprefix("rule_"))
        over = {**WF_RESOURCES.get(rule, {}), **SET_EXPECTED.get(rule, {})}
        assert want["mem_mb"] == over.get("mem_mb", want["mem_mb"]), (key, want)
        assert want["runtime"] == over.get("runtime", want["runtime"]), (key, want)

    t0 = time.monotonic()
    p = _run([*base, "--workflow-profile", REPO / "workflow" / "profiles" / "slurm", *SLURM_FLAGS], env,
             cwd=runs["slurm"], timeout=600, check=False)
    elapsed = time.monotonic() - t0
    assert p.returncode == 0, f"snakemake failed:\n{p.stdout[-3000:]}\n{p.stderr[-6000:]}"

    # the run's SLURM jobs: the ones whose comment names a planned job (all share the run UUID)
    ours = [j for j in _squeue_all(slurm_env) if j["comment"] in planned]
    names = {j["name"] for j in ours}
    assert len(names) == 1, names
    assert sorted(j["comment"] for j in ours) == sorted(planned), "not one SLURM job per Snakemake job"
    lines = [f"r2d workflow through the SLURM profile: {len(ours)} SLURM jobs in {elapsed:.0f} s",
             f"{'jobid':>6} {'cpus':>4} {'mem':>7} {'time':>8}  job"]
    for j in sorted(ours, key=lambda j: int(j["id"])):
        want = planned[j["comment"]]
        job = _show_job(slurm_env, j["id"])
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        assert job["Partition"] == "debug", job
        assert int(job["NumCPUs"]) == want["threads"] and int(job["CPUs/Task"]) == want["threads"], (want, job)
        assert _mem_mib(job["MinMemoryNode"]) == want["mem_mb"], (want, job)
        h, m_, s_ = (int(x) for x in job["TimeLimit"].split(":"))
        assert h * 60 + m_ + s_ / 60 == want["runtime"], (want, job)
        lines.append(f"{j['id']:>6} {job['NumCPUs']:>4} {job['MinMemoryNode']:>7} {job['TimeLimit']:>8}  "
                     f"{j['comment'].removeprefix('rule_')}")
    print("\n".join(lines))
    (tmp_path / "slurm_jobs.txt").write_text("\n".join(lines) + "\n")
    chunk_ids = {j["comment"]: j["id"] for j in ours if j["comment"] in chunk_jobs}
    assert len(set(chunk_ids.values())) == 15, chunk_ids

    # the same classes as a local run without chunks
    loc = _run([snakemake, "-s", REPO / "Snakefile", "--directory", runs["local"], "--workflow-profile", "none",
                "--cores", str(threads)], env, timeout=600)
    assert loc.returncode == 0
    from r2d import io

    for art in ("classmx_00.h5", "classmx_01.h5", "mra_01.h5", "simmx_01.h5", "input_01_proj.h5"):
        a, b = io.read_matrix(runs["slurm"] / "run" / art), io.read_matrix(runs["local"] / "run" / art)
        assert a.keys() == b.keys(), art
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{art}:{k}")
    for art in ("resultmx_init.h5", "resultmx_01.h5"):  # merged from the class chunks
        a, b = io.read_matrix(runs["slurm"] / "run" / art), io.read_matrix(runs["local"] / "run" / art)
        for k in a:
            np.testing.assert_array_equal(a[k], b[k], err_msg=f"{art}:{k}")
    for art in ("classes_init.hdf", "classes_01.hdf"):
        np.testing.assert_array_equal(io.read_image_stack(runs["slurm"] / "run" / art),
                                      io.read_image_stack(runs["local"] / "run" / art))
