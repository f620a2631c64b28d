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
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, make_workflow_copy, pcamflow, snakemake
from test_profiles import MAIN, parse_profile

from pcamflow.evaluation.reproducibility import compare_runs
from pcamflow.io import read_json
from pcamflow.training.runstatus import INJECT_ENV

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_TESTS = REPO / "tests" / "slurm"
ACCOUNT = "pcamflow"  # start_cluster.sh registers it
DAEMONS = ("munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct")
SACCT_FIELDS = "JobID,Comment,Partition,Account,State,Elapsed,Timelimit,AllocTRES,NodeList"
# Faster than the profile's 40 s before the first status check; Slurm itself is untouched.
FAST_POLLING = ("--slurm-init-seconds-before-status-checks", "2")
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
    """Data rules, training (two seeds), a throughput job and the grouped plots, as sbatch jobs."""
    profile = parse_profile(MAIN)
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    targets = [
        history_target("cnn", 1),
        history_target("cnn", 2),
        "results/summary/curves/model~cnn/lr~0.001/batch_size~32/optimizer~adam/epochs.png",
        "results/throughput/rome.csv",
    ]
    common = (*targets, "--configfile", "config/test.yaml")
    slurm_wf, local_wf = make_workflow_copy(tmp_path / "slurm"), make_workflow_copy(tmp_path / "local")
    with ThreadPoolExecutor(1) as pool:  # the local reference run meanwhile, on this machine
        local = pool.submit(snakemake, local_wf, *common, "--cores", "1")
        out = snakemake(slurm_wf, *common, "--profile", "profiles/snellius", *ONE_THREAD, *FAST_POLLING)
        local.result()
    log = out.stdout + out.stderr

    assert local_rules_run(log) <= {"all"}, "a job ran on the controller's machine, not through sbatch"
    job_ids = submitted_job_ids(log)
    jobs = slurm_env.sacct(job_ids)
    assert len(jobs) == len(job_ids)
    ran = {rule_of(job["Comment"], profile["groups"]) for job in jobs}
    assert ran == {"synthesize", "audit", "audit_cross", "prepare", "train", "throughput", "plot_grid_point"}
    for job in jobs:
        rule = rule_of(job["Comment"], profile["groups"])
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

    for seed in (1, 2):
        assert_same_training(run_dir(local_wf, "cnn", seed), run_dir(slurm_wf, "cnn", seed))
    # throughput rows name the Slurm job and node they were measured in (blank outside Slurm)
    (bench_job,) = [j for j in jobs if rule_of(j["Comment"], profile["groups"]) == "throughput"]
    slurm_rows = pd.read_csv(slurm_wf / "results/throughput/rome.csv", dtype=str, keep_default_na=False)
    local_rows = pd.read_csv(local_wf / "results/throughput/rome.csv", dtype=str, keep_default_na=False)
    assert set(slurm_rows["slurm_job_id"]) == {bench_job["JobID"]}
    assert set(slurm_rows["node"]) == {bench_job["NodeList"]} and all(slurm_rows["device_model"])
    assert set(local_rows["slurm_job_id"]) == set(local_rows["node"]) == {""}
    manifest = Path("results/prepared/manifest.json")
    assert read_json(slurm_wf / manifest)["checksum"] == read_json(local_wf / manifest)["checksum"]


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
    """How many epochs make one training run last about target_s on this machine."""
    run_config = {
        "data": str(wf / "results" / "prepared"),
        **{key: values[0] for key, values in config["grid"].items()},
        "seed": config["seeds"][0],
        "training": {**config["training"], "epochs": 1},
    }
    (tmp_path / "calibrate.yaml").write_text(yaml.safe_dump(run_config))
    pcamflow("train", "--config", str(tmp_path / "calibrate.yaml"), "--out", str(tmp_path / "calibrate"))
    epoch_s = read_json(tmp_path / "calibrate" / "history.json")["epochs"][0]["epoch_time_s"]
    return min(60, max(4, math.ceil(target_s / epoch_s)))


def layered_profile(directory: Path, **variant) -> Path:
    """A profile that is profiles/snellius with some of its settings changed (as its variants do)."""
    directory.mkdir()
    loader = (
        f"?yte.process_yaml(open({str(MAIN)!r}), variables=dict(variant={variant!r}), require_use_yte=True)"
    )
    profile = {"__use_yte__": True, "__definitions__": ["import yte"], "<": loader}
    (directory / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))  # definitions first
    return directory


def test_training_cut_off_by_its_time_limit_resumes_and_ends_as_an_uninterrupted_run(slurm_env, tmp_path):
    """A 1-minute limit (SIGTERM 10 s before it): Slurm stops the job, the retry gets 2 minutes and
    resumes from the checkpoint. With Slurm's 30 s timer the signal comes 10-40 s before the limit,
    so a run of ~80 s is cut off at least once and done by the third attempt."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(
        seeds=[1], grid={"model": ["cnn"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]}
    )
    local_wf, slurm_wf = make_workflow_copy(tmp_path / "local"), make_workflow_copy(tmp_path / "slurm")
    config_file = tmp_path / "timelimit.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))  # grid order = path order
    snakemake(local_wf, "results/prepared/manifest.json", "--cores", "2", "--configfile", str(config_file))
    shutil.copytree(local_wf / "results", slurm_wf / "results")  # the same data: only training on Slurm
    config["training"]["epochs"] = calibrated_epochs(local_wf, config, tmp_path, target_s=80)
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))  # grid order = path order
    profile = layered_profile(tmp_path / "profile", train_minutes=1, warning_s=10)

    target = history_target("cnn", 1)
    with ThreadPoolExecutor(1) as pool:
        local = pool.submit(snakemake, local_wf, target, "--cores", "1", "--configfile", str(config_file))
        out = snakemake(
            slurm_wf,
            target,
            "--profile",
            str(profile),
            "--configfile",
            str(config_file),
            *ONE_THREAD,
            *FAST_POLLING,
        )
        local.result()

    attempts = slurm_env.sacct(submitted_job_ids(out.stdout + out.stderr))
    assert len(attempts) >= 2, "the first attempt was not cut off"
    assert [job["Timelimit"] for job in attempts] == [f"00:0{n}:00" for n in range(1, len(attempts) + 1)]
    assert all(job["State"] in ("FAILED", "TIMEOUT") for job in attempts[:-1]), attempts
    assert attempts[-1]["State"] == "COMPLETED"
    assert read_json(run_dir(slurm_wf, "cnn", 1) / "run.json")["resumed_from"], "did not resume"
    assert_same_training(run_dir(local_wf, "cnn", 1), run_dir(slurm_wf, "cnn", 1))


def test_status_names_the_slurm_job_of_each_running_training_run(slurm_env, tmp_path):
    """`pcamflow status` beside a controller that trains through Slurm: squeue's job id and elapsed time."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(
        seeds=[1], grid={"model": ["cnn"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]}
    )
    config["training"]["epochs"] = 6  # long enough to be seen running
    wf = make_workflow_copy(tmp_path / "wf")
    (wf / "status.yaml").write_text(yaml.safe_dump(config, sort_keys=False))  # grid order = path order
    snakemake(wf, "--cores", "2", "--configfile", "status.yaml", "--", "results/prepared/manifest.json")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    cmd = [sys.executable, "-m", "snakemake", "--profile", "profiles/snellius", *ONE_THREAD, *FAST_POLLING]
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


def test_a_run_failing_every_slurm_attempt_is_recorded_with_the_profiles_attempts(slurm_env, tmp_path):
    """The profile's retries reach the job: a run that fails in all three Slurm jobs (retries: 2) is
    recorded as failed after the third, not the first, so the sweep goes on."""
    config = yaml.safe_load((REPO / "config" / "test.yaml").read_text())
    config.update(
        seeds=[1], grid={"model": ["mlp"], "lr": [0.001], "batch_size": [32], "optimizer": ["adam"]}
    )
    config["training"]["epochs"] = 1
    config_file = tmp_path / "failing.yaml"
    config_file.write_text(yaml.safe_dump(config, sort_keys=False))
    wf = make_workflow_copy(tmp_path / "slurm")
    snakemake(wf, "results/prepared/manifest.json", "--cores", "2", "--configfile", str(config_file))
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
        )
    finally:
        del os.environ[INJECT_ENV]
    jobs = slurm_env.sacct(submitted_job_ids(out.stdout + out.stderr))
    assert [job["State"] for job in jobs] == ["FAILED", "FAILED", "COMPLETED"], jobs
    info = read_json(run_dir(wf, "mlp", 1) / "run.json")
    assert info["status"] == "failed" and info["failure"]["attempts"] == 3
    assert info["failure"]["reason"].startswith("InjectedFailure: failure injected by")
