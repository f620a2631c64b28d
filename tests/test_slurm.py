"""The workflow through a real single-node Slurm cluster with `--profile profiles/snellius`.

tests/slurm/start_cluster.sh starts munged, MariaDB, slurmdbd, slurmctld and slurmd (Debian's
Slurm) with Snellius' partition names on one node; the session fixture stops them by pid at the
end, also when a test fails. The jobs' partitions, accounts and GPUs are read back from sacct.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, make_workflow_copy, pcamflow, snakemake
from test_profiles import MAIN, parse_profile

from pcamflow.config import WORKFLOW_CONFIG, load_workflow_config
from pcamflow.evaluation.reproducibility import compare_runs
from pcamflow.io import read_json
from pcamflow.throughput.cost import (
    ROME_MIN_CORES,
    SBU_PER_CORE_HOUR,
    SBU_PER_GPU_HOUR,
    estimate,
    sbu_by_rule,
)
from pcamflow.training.attempt import INJECT_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_TESTS = REPO / "tests" / "slurm"
ACCOUNT = "pcamflow"  # start_cluster.sh registers it
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
SACCT_FIELDS = (
    "JobID,Comment,Partition,Account,State,Elapsed,ElapsedRaw,Timelimit,AllocTRES,Start,End,NodeList"
)
# Faster than the profile's 40 s before the first status check; Slurm itself is untouched.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2")
# ... and as fast for every later check: the controller is Snakemake run by this launcher.
STEADY_POLLING = (str(SLURM_TESTS / "steady_polling.py"),)
# A 2-core machine cannot give a job 18 threads; every other setting is the profile's.
ONE_THREAD = ("--set-threads", "train=1")


@dataclass
class Cluster:
    state: Path

    @property
    def conf(self) -> Path:
        return self.state / "slurm.conf"

    def run(self, *cmd: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, SLURM_CONF=str(self.conf), PYTHONPATH=str(REPO / "src"))
        return subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, timeout=120)

    def sacct(self, job_ids) -> list[dict]:
        out = self.run("sacct", "-X", "-P", "-o", SACCT_FIELDS, "-j", ",".join(job_ids)).stdout
        rows = list(csv.DictReader(io.StringIO(out), delimiter="|"))
        print(out)  # the table, for the record (pytest -s)
        return sorted(rows, key=lambda row: int(row["JobID"]))


def cluster_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "starting the test cluster needs root"
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        return f"{', '.join(missing)} not installed (tests/install_system_deps.sh installs them)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    reason = cluster_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"the Slurm tests must run in CI: {reason}")
        pytest.skip(reason)
    state = tmp_path_factory.mktemp("slurm")
    env = dict(os.environ, PCAMFLOW_SLURM_DIR=str(state))
    try:
        start = subprocess.run(
            ["bash", str(SLURM_TESTS / "start_cluster.sh")],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if start.returncode != 0:
            pytest.fail(f"start_cluster.sh failed ({start.returncode}):\n{start.stdout}\n{start.stderr}")
        yield Cluster(state)
    finally:
        subprocess.run(["bash", str(SLURM_TESTS / "stop_cluster.sh")], env=env, timeout=120)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    """The environment a user on the cluster has: its config, and an account in SBATCH_ACCOUNT."""
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    monkeypatch.setenv("SBATCH_ACCOUNT", ACCOUNT)
    return slurm_cluster


def submitted_job_ids(snakemake_output: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", snakemake_output)


def local_rules_run(snakemake_output: str) -> set[str]:
    return set(re.findall(r"^\s*localrule (\w+):", snakemake_output, re.M))


def rule_of(comment: str, groups: dict[str, str]) -> str:
    """The rule a job ran, from the comment the plugin gives it (rule_<rule>[_wildcards_...],
    or rule_<group>_<rule> for a group job)."""
    name = re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", comment)[1]
    for rule, group in groups.items():
        if name == f"{group}_{rule}":
            return rule
    return name


def run_dir(wf: Path, model: str, seed: int) -> Path:
    return wf / "results" / "runs" / f"model~{model}/lr~0.001/batch_size~32/optimizer~adam/seed~{seed}"


def history_target(model: str, seed: int) -> str:
    return str(run_dir(Path("."), model, seed) / "history.json")


def assert_same_training(local: Path, slurm: Path) -> None:
    result = compare_runs(local, slurm)
    assert result["identical"], result["largest_difference"]


def test_workflow_runs_every_job_through_slurm_on_the_profiles_partitions(slurm_env, tmp_path):
    """The whole pipeline on test.yaml as sbatch jobs, in one sweep that several checks share: every
    job on its partition; the preflight on a training job's resources, before any training job;
    training identical to a local run; and the cost of every job per rule at the end."""
    profile = parse_profile(MAIN)
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    slurm_wf, local_wf = make_workflow_copy(tmp_path / "slurm"), make_workflow_copy(tmp_path / "local")
    reference = (history_target("cnn", 1), history_target("cnn", 2), "--configfile", "config/test.yaml")
    with ThreadPoolExecutor(1) as pool:  # the local reference training meanwhile, on this machine
        local = pool.submit(snakemake, local_wf, *reference, "--cores", "1")
        out = snakemake(
            slurm_wf,
            "--configfile",
            "config/test.yaml",
            "--profile",
            "profiles/snellius",
            *ONE_THREAD,
            *FAST_POLLING,
            launcher=STEADY_POLLING,
        )
        local.result()
    log = out.stdout + out.stderr

    # cost reads sacct on the login node: not worth a job
    assert local_rules_run(log) <= {"all", "cost"}, (
        "a job ran on the controller's machine, not through sbatch"
    )
    job_ids = submitted_job_ids(log)
    jobs = slurm_env.sacct(job_ids)
    assert len(jobs) == len(job_ids)
    for job in jobs:
        job["rule"] = rule_of(job["Comment"], profile["groups"])
    ran = {job["rule"] for job in jobs}
    assert ran >= {
        "synthesize",
        "audit",
        "prepare",
        "preflight",
        "train",
        "throughput",
        "plot_grid_point",
        "export",
    }
    for job in jobs:
        rule = job["rule"]
        if rule == "throughput":  # the throughput job goes to the partition it measures (config)
            partition = job["Comment"].rsplit("_wildcards_", 1)[1]
            gpus = config["partitions"][partition]["gpus"]
        else:
            resources = {**profile["default-resources"], **profile["set-resources"].get(rule, {})}
            partition, gpus = resources["slurm_partition"], int(resources.get("gpu", 0))
        assert job["State"] == "COMPLETED", job
        assert job["Partition"] == partition, job
        assert job["Account"] == ACCOUNT, job
        assert ("gres/gpu=1" in job["AllocTRES"]) == (gpus == 1), job

    # the preflight: a training job's allocation, finished before the first training job started
    (check,) = [job for job in jobs if job["rule"] == "preflight"]
    trains = [job for job in jobs if job["rule"] == "train"]
    assert {job["AllocTRES"] for job in trains} == {check["AllocTRES"]}
    assert check["End"] <= min(job["Start"] for job in trains)
    record = read_json(slurm_wf / "results" / "preflight" / "train.json")
    assert (record["partition"], record["slurm_job_id"]) == ("gpu_a100", check["JobID"])
    assert record["scratch"]["asked"] and Path(record["scratch"]["path"]).is_relative_to(
        slurm_env.state / "scratch"
    )
    assert record["trial"]["point"] == {"model": "cnn", "lr": 0.001, "batch_size": 32, "optimizer": "adam"}

    for seed in (1, 2):
        assert_same_training(run_dir(local_wf, "cnn", seed), run_dir(slurm_wf, "cnn", seed))
    # throughput rows name the Slurm job and node they were measured in (blank outside Slurm:
    # test_measure.py)
    (bench_job,) = [
        j
        for j in jobs
        if rule_of(j["Comment"], profile["groups"]) == "throughput" and j["Partition"] == "rome"
    ]
    slurm_rows = pd.read_csv(slurm_wf / "results/throughput/rome.csv", dtype=str, keep_default_na=False)
    assert set(slurm_rows["slurm_job_id"]) == {bench_job["JobID"]}
    assert set(slurm_rows["node"]) == {bench_job["NodeList"]} and all(slurm_rows["device_model"])
    manifest = Path("results/prepared/manifest.json")
    assert read_json(slurm_wf / manifest)["checksum"] == read_json(local_wf / manifest)["checksum"]

    assert_cost_table_matches_sacct(slurm_wf, jobs)


def assert_cost_table_matches_sacct(wf: Path, jobs: list[dict]) -> None:
    """results/summary/cost.csv: per rule, the jobs sacct lists, their hours and allocations, and
    the SBU Snellius charges for them beside pcamflow cost's estimate."""
    table = pd.read_csv(wf / "results" / "summary" / "cost.csv").set_index("rule")
    print(table.to_string())  # for the record (pytest -s)
    assert set(table.loc[table.index != "total", "source"].dropna()) == {"sacct"}
    train_tiles = len(np.load(wf / "results" / "prepared" / "train_y.npy"))
    # the config the workflow ran with: config/test.yaml laid over config/config.yaml
    cfg = load_workflow_config([REPO / "config" / "test.yaml"], base=REPO / WORKFLOW_CONFIG)
    estimated = sbu_by_rule(estimate(cfg, train_tiles))
    total_sbu = 0.0
    for rule in {job["rule"] for job in jobs}:
        mine = [job for job in jobs if job["rule"] == rule]
        hours = [int(job["ElapsedRaw"]) / 3600 for job in mine]
        tres = [dict(item.split("=") for item in job["AllocTRES"].split(",")) for job in mine]
        sbu = sum(
            int(t.get("gres/gpu", 0)) * h * SBU_PER_GPU_HOUR
            if "gres/gpu" in t
            else max(int(t["cpu"]), ROME_MIN_CORES) * h * SBU_PER_CORE_HOUR
            for t, h in zip(tres, hours, strict=True)
        )
        total_sbu += sbu
        row = table.loc[rule]
        assert row["jobs"] == len(mine), rule
        assert row["elapsed_h"] == pytest.approx(sum(hours), abs=1e-3), rule
        assert row["cpus_per_job"] == max(int(t["cpu"]) for t in tres), rule
        assert row["gpus_per_job"] == max(int(t.get("gres/gpu", 0)) for t in tres), rule
        assert row["sbu"] == pytest.approx(sbu, abs=1e-3), rule
        if rule in estimated:
            assert row["estimate_sbu"] == pytest.approx(estimated[rule], abs=1e-3), rule
            assert row["ratio"] == pytest.approx(row["sbu"] / row["estimate_sbu"], rel=1e-3), rule
    total = table.loc["total"]
    assert total["jobs"] == len(jobs)
    assert total["sbu"] == pytest.approx(total_sbu, abs=1e-2)
    assert total["ratio"] == pytest.approx(total_sbu / total["estimate_sbu"], rel=1e-2)
    assert (wf / "results" / "summary" / "cost.html").exists()


@pytest.fixture(scope="module")
def prepared_results(tmp_path_factory) -> Path:
    """results/ with test.yaml's prepared store, made once on this machine, for tests that only train."""
    wf = make_workflow_copy(tmp_path_factory.mktemp("data") / "wf")
    snakemake(wf, "results/prepared/manifest.json", "--cores", "2", "--configfile", "config/test.yaml")
    return wf / "results"


def workflow_with_data(prepared_results: Path, directory: Path) -> Path:
    wf = make_workflow_copy(directory)
    shutil.copytree(prepared_results, wf / "results")  # keeps mtimes: nothing upstream reruns
    return wf


def jobs_from(slurm_env, wf: Path) -> list[str]:
    """The comment (rule_...) of every job sacct knows that was submitted from wf."""
    out = slurm_env.run("sacct", "-X", "-P", "-n", "-S", "now-1days", "-o", "Comment,WorkDir").stdout
    return [line.split("|")[0] for line in out.splitlines() if line.split("|")[-1] == str(wf)]


def test_failing_preflight_stops_the_sweep_before_any_training_job_is_submitted(
    slurm_env, prepared_results, tmp_path
):
    """A node whose scratch disk is gone (its task prolog cannot make a job's $TMPDIR): the preflight
    fails with one line naming the partition and the problem, and no training job exists."""
    wf = workflow_with_data(prepared_results, tmp_path / "wf")
    scratch = slurm_env.state / "scratch"
    shutil.rmtree(scratch)
    scratch.write_text("the node-local disk is missing")
    try:
        out = snakemake(
            wf,
            history_target("cnn", 1),
            history_target("cnn", 2),
            "--configfile",
            "config/test.yaml",
            "--profile",
            "profiles/snellius",
            *ONE_THREAD,
            *FAST_POLLING,
            check=False,
            launcher=STEADY_POLLING,
        )
    finally:
        scratch.unlink()
        scratch.mkdir()
    print(out.stdout + out.stderr)  # what the user sees (pytest -s)
    assert out.returncode != 0
    submitted = {rule_of(comment, {}) for comment in jobs_from(slurm_env, wf)}
    assert submitted == {"preflight"}, "a training job was submitted after a failed preflight"
    line = (wf / "results" / "logs" / "preflight" / "train.log").read_text().strip().splitlines()[-1]
    assert re.fullmatch(
        r"pcamflow: error: preflight on gpu_a100: the job asked for node-local scratch "
        r"\(--constraint=scratch-node\) but \$TMPDIR \(\S+\) is not job \d+'s scratch directory on this node",
        line,
    ), line
    assert line in out.stdout + out.stderr  # the profile shows a failed job's log: the user sees it
    assert not (wf / "results" / "preflight" / "train.json").exists()


def test_course_profile_runs_on_a_small_gpu_slice_where_the_main_profiles_request_stays_pending(
    slurm_env, prepared_results, tmp_path
):
    """gpu_course offers 2 cores and 16 GiB per node (tests/slurm/slurm.conf.in). The course
    variant's preflight and training start and finish there, reading the shared store (no scratch);
    the main profile's request (18 cores, 120 GiB, scratch) sent there is accepted by sbatch and
    stays PENDING (reason PartitionConfig): it would never start."""
    wf = workflow_with_data(prepared_results, tmp_path / "wf")
    common = ("--configfile", "config/test.yaml", *FAST_POLLING)
    out = snakemake(
        wf,
        history_target("cnn", 1),
        "--profile",
        "profiles/snellius-course",
        *common,
        launcher=STEADY_POLLING,
    )
    jobs = slurm_env.sacct(submitted_job_ids(out.stdout + out.stderr))
    assert sorted(rule_of(job["Comment"], {}) for job in jobs) == ["preflight", "train"]
    for job in jobs:
        assert (job["Partition"], job["State"]) == ("gpu_course", "COMPLETED"), job
        assert job["AllocTRES"] == "billing=2,cpu=2,gres/gpu=1,mem=16G,node=1", job
    record = read_json(wf / "results" / "preflight" / "train.json")
    assert record["scratch"]["asked"] is False and record["device"]["job_memory_mb"] == 16384
    train_log = (wf / "results" / "logs" / "train").rglob("seed~1.log")
    assert "reading the shared copy" in next(train_log).read_text()

    # the main profile's request on the same partition (one site setting changed, nothing copied)
    cmd = [sys.executable, *STEADY_POLLING, "--directory", str(wf), history_target("cnn", 2)]
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), PCAMFLOW_SITE_GPU_PARTITION="gpu_course")
    main = subprocess.Popen(
        [*cmd, "--profile", "profiles/snellius", *ONE_THREAD, *common],
        cwd=wf,
        env=env,
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        states = wait_for_queued_job(slurm_env, "gpu_course", seconds=120)
        time.sleep(10)  # still pending after the scheduler had its chance
        assert wait_for_queued_job(slurm_env, "gpu_course", seconds=5) == states
        assert states == ("PENDING", "PartitionConfig"), states
    finally:
        main.send_signal(signal.SIGINT)  # Snakemake cancels the jobs it submitted
        main.communicate(timeout=300)  # it cancels through Slurm, on a busy 2-core CI machine
        slurm_env.run("scancel", "--partition", "gpu_course")
    trained = [comment for comment in jobs_from(slurm_env, wf) if rule_of(comment, {}) == "train"]
    assert len(trained) == 1, "the main profile's training job was submitted"  # the course run's only


def wait_for_queued_job(slurm_env, partition: str, seconds: float) -> tuple[str, str]:
    """(state, reason) of the first job squeue lists on `partition`, once there is one."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        out = slurm_env.run("squeue", "-h", "-p", partition, "-o", "%T|%r").stdout.split()
        if out:
            return tuple(out[0].split("|"))
        time.sleep(1)
    raise AssertionError(f"no job queued on {partition} within {seconds} s")


def test_staging_copies_the_prepared_store_to_the_jobs_node_local_scratch(slurm_env, tmp_path):
    store = tmp_path / "prepared"
    store.mkdir()
    (store / "train_y.npy").write_bytes(b"\x93NUMPY")
    (store / "manifest.json").write_text('{"checksum": "' + "c" * 64 + '"}')
    code = f"from pcamflow.data.staging import stage_prepared; print(stage_prepared({str(store)!r}))"
    out = tmp_path / "job.out"
    job = f"srun {shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    slurm_env.run(
        "sbatch", "--wait", "-p", "rome", "-C", "scratch-node", "-t", "1", "-o", str(out), "--wrap", job
    )
    staged = Path(out.read_text().strip().splitlines()[-1])
    scratch = slurm_env.state / "scratch"
    assert staged.is_relative_to(scratch) and staged != store
    assert not list(scratch.iterdir()), "node-local scratch outlived its job"


def calibrated_epochs(wf: Path, config: dict, tmp_path: Path, target_s: float) -> int:
    """How many epochs make one training run last at least about target_s on this machine: the
    fastest of three epochs counts (the first also pays one-time costs: twice an epoch's work)."""
    run_config = {
        "data": str(wf / "results" / "prepared"),
        **{key: values[0] for key, values in config["grid"].items()},
        "seed": config["seeds"][0],
        "training": {**config["training"], "epochs": 3},
    }
    (tmp_path / "calibrate.yaml").write_text(yaml.safe_dump(run_config))
    pcamflow("train", "--config", str(tmp_path / "calibrate.yaml"), "--out", str(tmp_path / "calibrate"))
    epochs = read_json(tmp_path / "calibrate" / "history.json")["epochs"]
    epoch_s = min(epoch["epoch_time_s"] for epoch in epochs)
    print(f"calibrated: {[round(epoch['epoch_time_s'], 2) for epoch in epochs]} s per epoch")  # pytest -s
    return max(4, math.ceil(target_s / epoch_s))


def test_training_cut_off_by_its_time_limit_resumes_and_ends_as_an_uninterrupted_run(
    slurm_env, prepared_results, tmp_path, monkeypatch
):
    """A 1-minute limit (SIGTERM 10 s before it): Slurm stops the job, the retry gets 2 minutes and
    resumes from the checkpoint. With Slurm's 30 s timer the signal comes 10-40 s before the limit,
    so a run of ~80 s is cut off at least once and done by the third attempt."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(
        seeds=[1], grid={"model": ["cnn"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]}
    )
    # the same data in both: only training on Slurm
    local_wf = workflow_with_data(prepared_results, tmp_path / "local")
    slurm_wf = workflow_with_data(prepared_results, tmp_path / "slurm")
    config_file = tmp_path / "timelimit.yaml"
    config["training"]["epochs"] = calibrated_epochs(local_wf, config, tmp_path, target_s=80)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))  # grid order = path order
    for wf in (local_wf, slurm_wf):  # the epochs changed on purpose (README: Experiments)
        (wf / "results" / "experiment.json").unlink()
    # two site settings of profiles/snellius changed for this run (as a user would, without a copy)
    monkeypatch.setenv("PCAMFLOW_SITE_TRAIN_MINUTES", "1")
    monkeypatch.setenv("PCAMFLOW_SITE_WARNING_S", "10")

    target = history_target("cnn", 1)
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(snakemake, local_wf, target, "--cores", "1", "--configfile", str(config_file))
        out = snakemake(
            slurm_wf,
            target,
            "--profile",
            "profiles/snellius",
            "--configfile",
            str(config_file),
            *ONE_THREAD,
            *FAST_POLLING,
            launcher=STEADY_POLLING,
        )
        local.result()

    jobs = slurm_env.sacct(submitted_job_ids(out.stdout + out.stderr))
    attempts = [job for job in jobs if rule_of(job["Comment"], {}) == "train"]  # the preflight aside
    assert len(attempts) >= 2, "the first attempt was not cut off"
    assert [job["Timelimit"] for job in attempts] == [f"00:0{n}:00" for n in range(1, len(attempts) + 1)]
    assert all(job["State"] in ("FAILED", "TIMEOUT") for job in attempts[:-1]), attempts
    assert attempts[-1]["State"] == "COMPLETED"
    assert read_json(run_dir(slurm_wf, "cnn", 1) / "run.json")["resumed_from"], "did not resume"
    assert_same_training(run_dir(local_wf, "cnn", 1), run_dir(slurm_wf, "cnn", 1))


def test_status_names_the_slurm_job_of_each_running_training_run(slurm_env, prepared_results, tmp_path):
    """`pcamflow status` beside a controller that trains through Slurm: squeue's job id and elapsed time."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(
        seeds=[1], grid={"model": ["cnn"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]}
    )
    config["training"]["epochs"] = 6  # long enough to be seen running
    wf = workflow_with_data(prepared_results, tmp_path / "wf")
    (wf / "status.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # grid order = path order
    (wf / "results" / "experiment.json").unlink()  # the epochs changed on purpose (README: Experiments)
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, *STEADY_POLLING, "--profile", "profiles/snellius", *ONE_THREAD, *FAST_POLLING]
    cmd += ["--configfile", "status.yaml", "--", history_target("cnn", 1)]
    controller = subprocess.Popen(
        cmd, cwd=wf, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        seen = shown = None
        while controller.poll() is None:  # the last sighting shows the longest elapsed time
            out = pcamflow("status", "--config", "status.yaml", cwd=wf).stdout
            running = re.search(r"^  seed 1 +running +Slurm job (\d+), running, (\S+) elapsed$", out, re.M)
            seen, shown = (running, out) if running else (seen, shown)
            time.sleep(1)
        output = controller.communicate(timeout=600)[0]
    finally:
        if controller.poll() is None:
            controller.kill()
    assert controller.returncode == 0, output
    assert seen, f"status never showed the training job running:\n{out}"
    print(shown)  # for the record (pytest -s)
    assert "1 run: 1 running" in shown
    (job,) = slurm_env.sacct([seen[1]])
    assert job["Comment"] == "rule_train_wildcards_cnn_0.001_32_adam_1"
    assert re.fullmatch(r"(\d+-)?(\d+:)?\d+:\d\d", seen[2])  # squeue's time used
    final = pcamflow("status", "--config", "status.yaml", cwd=wf).stdout
    assert re.search(r"^  seed 1 +done +val_auc \d\.\d{4} \(epoch \d\)$", final, re.M), final


def test_a_run_failing_every_slurm_attempt_is_recorded_with_the_profiles_attempts(
    slurm_env, prepared_results, tmp_path
):
    """The profile's retries reach the job: a run that fails in all three Slurm jobs (retries: 2) is
    recorded as failed after the third, not the first, so the sweep goes on."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(
        seeds=[1], grid={"model": ["mlp"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]}
    )
    config["training"]["epochs"] = 1
    config_file = tmp_path / "failing.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    wf = workflow_with_data(prepared_results, tmp_path / "slurm")
    (wf / "results" / "experiment.json").unlink()  # the epochs changed on purpose (README: Experiments)
    target = history_target("mlp", 1)
    os.environ[INJECT_ENV] = "*/seed~1"  # sbatch exports the controller's environment to the job
    try:
        out = snakemake(
            wf,
            target,
            "--profile",
            "profiles/snellius",
            "--configfile",
            str(config_file),
            *ONE_THREAD,
            *FAST_POLLING,
            launcher=STEADY_POLLING,
        )
    finally:
        del os.environ[INJECT_ENV]
    jobs = slurm_env.sacct(submitted_job_ids(out.stdout + out.stderr))
    train_jobs = [job for job in jobs if job["Comment"].startswith("rule_train_")]  # not the preflight
    assert [job["State"] for job in train_jobs] == ["FAILED", "FAILED", "COMPLETED"], jobs
    info = read_json(run_dir(wf, "mlp", 1) / "run.json")
    assert info["status"] == "failed" and info["failure"]["attempts"] == 3
    assert info["failure"]["reason"].startswith("InjectedFailure: failure injected by")
