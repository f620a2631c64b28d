"""The Snakemake profiles: what Snellius jobs ask Slurm for, variants built on the main profile, planning."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from configargparse import ConfigFileParserException
from conftest import REPO, snakemake
from snakemake.profiles import ProfileConfigFileParser

from pcamflow import profiles
from pcamflow.config import grid_points, load_yaml, validate_config
from pcamflow.throughput.cost import activation_gb

PROFILES = REPO / "profiles"
MAIN = PROFILES / "snellius" / "config.yaml"
GPU_RULES = ("train", "preflight", "reproducibility", "predict_champion")  # each trains or runs a model
ROME_SHARE = {"cpus": 16, "mem_mb": 28 * 1024}  # 1/8 of a rome node, Snellius' smallest CPU job
A100_SHARE = {"cpus": 18, "mem_mb": 120 * 1024}  # 1/4 of a gpu_a100 node: one A100


def parse_profile(path: Path) -> dict:
    """A profile as Snakemake reads it, with resources as {name: value} (per rule for set-resources)."""
    with open(path) as fh:
        args = dict(ProfileConfigFileParser().parse(fh))
    for key in ("default-resources", "set-threads", "groups", "group-components"):
        if key in args:
            args[key] = dict(a.split("=", 1) for a in args[key])
    per_rule = {}
    for assignment in args.get("set-resources", []):
        rule, rest = assignment.split(":", 1)
        name, value = rest.split("=", 1)
        per_rule.setdefault(rule, {})[name] = value
    args["set-resources"] = per_rule
    return args


def minutes(expression: str, attempt: int) -> int:
    """A runtime as Snakemake evaluates it for the given attempt."""
    return eval(expression, {"attempt": attempt})


@pytest.fixture
def no_account(monkeypatch):
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)


def test_cpu_rules_fit_the_smallest_rome_job(no_account):
    defaults = parse_profile(MAIN)["default-resources"]
    assert defaults["slurm_partition"] == "rome"
    assert int(defaults["cpus_per_task"]) <= ROME_SHARE["cpus"]
    assert int(defaults["mem_mb"]) <= ROME_SHARE["mem_mb"]


def test_model_rules_get_one_a100_share_with_node_local_scratch(no_account):
    profile = parse_profile(MAIN)
    for rule in GPU_RULES:
        share = profile["set-resources"][rule]
        assert share["slurm_partition"] == "gpu_a100"
        assert (share["gpu"], share["gpu_model"]) == ("1", "a100")
        assert int(share["cpus_per_task"]) == A100_SHARE["cpus"]
        assert int(profile["set-threads"][rule]) == A100_SHARE["cpus"]
        assert int(share["mem_mb"]) <= A100_SHARE["mem_mb"]
        assert share["constraint"] == "scratch-node"


def test_small_plot_jobs_are_packed_into_one_cpu_share(no_account):
    profile = parse_profile(MAIN)
    group = profile["groups"]["plot_grid_point"]
    per_job = int(profile["group-components"][group])
    plot = profile["set-resources"]["plot_grid_point"]
    assert per_job * int(plot["cpus_per_task"]) <= ROME_SHARE["cpus"]
    assert per_job * int(plot["mem_mb"]) <= ROME_SHARE["mem_mb"]


def test_retries_get_longer_time_limits(no_account):
    profile = parse_profile(MAIN)
    assert int(profile["retries"]) >= 1
    for runtime in (profile["default-resources"]["runtime"], profile["set-resources"]["train"]["runtime"]):
        assert minutes(runtime, 2) > minutes(runtime, 1) > 0


def test_training_is_warned_before_its_time_limit(no_account):
    train = parse_profile(MAIN)["set-resources"]["train"]
    warning = re.fullmatch(r"'--signal=(?:B:)?(\w+)@(\d+)'", train["slurm_extra"])
    assert warning, train["slurm_extra"]
    assert warning[1] in ("USR1", "TERM")  # the signals the trainer checkpoints on
    assert 0 < int(warning[2]) < 60 * minutes(train["runtime"], 1)


def test_account_comes_from_the_environment_when_set(monkeypatch):
    monkeypatch.setenv("SBATCH_ACCOUNT", "ehpc123")
    assert parse_profile(MAIN)["default-resources"]["slurm_account"] == "ehpc123"
    monkeypatch.delenv("SBATCH_ACCOUNT")
    assert "slurm_account" not in parse_profile(MAIN)["default-resources"]


def with_changes(profile: dict, defaults: dict | None = None, gpu: dict | None = None) -> dict:
    """The profile with some default resources and the GPU rules' resources changed (None: removed)."""
    expected = {**profile, "default-resources": {**profile["default-resources"], **(defaults or {})}}
    expected["set-resources"] = dict(profile["set-resources"])
    for rule in GPU_RULES:
        changed = {**profile["set-resources"][rule], **(gpu or {})}
        expected["set-resources"][rule] = {k: v for k, v in changed.items() if v is not None}
    return expected


def test_h100_variant_is_the_main_profile_with_model_rules_on_h100(no_account):
    expected = with_changes(
        parse_profile(MAIN),
        gpu={"slurm_partition": "gpu_h100", "gpu_model": "h100", "cpus_per_task": "16", "mem_mb": "184320"},
    )
    expected["set-threads"] = dict.fromkeys(GPU_RULES, "16")
    assert parse_profile(PROFILES / "snellius-h100" / "config.yaml") == expected


def test_course_variant_asks_for_a_course_gpu_slice_without_scratch(no_account):
    expected = with_changes(
        parse_profile(MAIN),
        defaults={"slurm_partition": "thin_course"},
        gpu={
            "slurm_partition": "gpu_course",
            "gpu_model": None,
            "cpus_per_task": "2",
            "mem_mb": "16384",
            "constraint": None,
        },
    )
    expected["set-threads"] = dict.fromkeys(GPU_RULES, "2")
    del expected["set-resources"]["throughput"]  # its only setting was the scratch-node constraint
    assert parse_profile(PROFILES / "snellius-course" / "config.yaml") == expected


def test_variants_are_up_to_date_with_the_main_profile():
    assert profiles.sync(PROFILES, check=True) == [], "run: python -m pcamflow.profiles"


def test_a_change_to_the_main_profile_reaches_every_variant_and_keeps_their_site_settings(
    tmp_path, no_account
):
    copy = tmp_path / "profiles"
    shutil.copytree(PROFILES, copy)
    main = copy / "snellius" / "config.yaml"
    main.write_text(main.read_text().replace("\njobs: 100\n", "\njobs: 7\n"))
    assert sorted(p.parent.name for p in profiles.sync(copy)) == ["snellius-course", "snellius-h100"]
    for name, partition in (("snellius-h100", "gpu_h100"), ("snellius-course", "gpu_course")):
        variant = parse_profile(copy / name / "config.yaml")
        assert variant["jobs"] == "7"
        assert variant["set-resources"]["train"]["slurm_partition"] == partition
    assert profiles.sync(copy, check=True) == []


def test_variant_finds_nothing_outside_itself_from_any_working_directory(tmp_path, monkeypatch, no_account):
    monkeypatch.chdir(tmp_path)
    alone = tmp_path / "alone.yaml"  # a variant copied away from profiles/ still reads
    shutil.copyfile(PROFILES / "snellius-h100" / "config.yaml", alone)
    assert parse_profile(alone)["set-resources"]["train"]["slurm_partition"] == "gpu_h100"


def test_a_site_setting_is_overridden_from_the_environment(monkeypatch, no_account):
    monkeypatch.setenv("PCAMFLOW_SITE_GPU_MEM_MB", "20000")
    monkeypatch.setenv("PCAMFLOW_SITE_NODE_LOCAL_STAGING", "true")
    train = parse_profile(PROFILES / "snellius-course" / "config.yaml")["set-resources"]["train"]
    assert (train["mem_mb"], train["constraint"], train["cpus_per_task"]) == ("20000", "scratch-node", "2")


def test_a_misspelt_site_setting_is_refused(monkeypatch, tmp_path, no_account):
    monkeypatch.setenv("PCAMFLOW_SITE_GPU_MEMORY", "20000")
    with pytest.raises(ConfigFileParserException, match="PCAMFLOW_SITE_GPU_MEMORY"):
        parse_profile(MAIN)
    monkeypatch.delenv("PCAMFLOW_SITE_GPU_MEMORY")
    typo = tmp_path / "typo.yaml"
    typo.write_text(
        MAIN.read_text().replace("  - variant = {}", '  - variant = dict(gpu_partiton="gpu_h100")')
    )
    with pytest.raises(ConfigFileParserException, match="gpu_partiton"):
        parse_profile(typo)


def documented_rows() -> dict[str, list[str]]:
    """The profile table of docs/snellius.md: profile directory -> its cells."""
    rows = {}
    for line in (REPO / "docs" / "snellius.md").read_text().splitlines():
        match = re.match(r"\| `profiles/([\w-]+)` \|(.*)\|$", line)
        if match:
            rows[match[1]] = [cell.strip() for cell in match[2].split("|")]
    return rows


def promised_share(cell: str) -> dict:
    """`rome`: 16 cores, 28,000 MB -> what the cell promises, as the profile writes it."""
    match = re.fullmatch(r"`(\w+)`(?:: 1 GPU \((\w+|any model)\))?, (\d+) cores, ([\d,]+) MB.*", cell)
    assert match, cell
    partition, model, cores, mem = match.groups()
    share = {"slurm_partition": partition, "cpus_per_task": cores, "mem_mb": mem.replace(",", "")}
    if model:
        share["gpu"] = "1"
        if model != "any model":
            share["gpu_model"] = model
    return share


@pytest.mark.parametrize("name", ["snellius", "snellius-h100", "snellius-course"])
def test_each_profile_resolves_to_what_its_docs_row_promises(name, no_account):
    cpu, gpu, staging = documented_rows()[name]
    profile = parse_profile(PROFILES / name / "config.yaml")
    defaults = profile["default-resources"]
    assert {k: defaults[k] for k in ("slurm_partition", "cpus_per_task", "mem_mb")} == promised_share(cpu)
    for rule in GPU_RULES:
        share = profile["set-resources"][rule]
        wanted = promised_share(gpu)
        assert {k: share.get(k) for k in (*wanted, "gpu_model")} == {"gpu_model": None, **wanted}, rule
        assert profile["set-threads"][rule] == wanted["cpus_per_task"], rule
        assert (share.get("constraint") == "scratch-node") == (staging == "yes"), rule


@pytest.mark.parametrize("name", ["snellius", "snellius-h100", "snellius-course"])
def test_preflight_asks_for_exactly_what_a_training_job_asks_for(name, no_account):
    profile = parse_profile(PROFILES / name / "config.yaml")
    assert profile["set-resources"]["preflight"] == profile["set-resources"]["train"]
    assert profile["set-threads"]["preflight"] == profile["set-threads"]["train"]


def planned_jobs(dry_run_output: str) -> list[tuple[str, dict, dict]]:
    """(rule, wildcards, resources) of every job a dry run lists."""
    jobs = []
    for block in re.split(r"^\s*(?=(?:local)?(?:rule|checkpoint) \w+:$)", dry_run_output, flags=re.M)[1:]:
        rule = re.match(r"(?:local)?(?:rule|checkpoint) (\w+):", block)[1]
        fields = dict(re.findall(r"^\s+(wildcards|resources): (.*)$", block, re.M))
        wildcards, resources = (key_values(fields.get(name, "")) for name in ("wildcards", "resources"))
        jobs.append((rule, wildcards, resources))
    return jobs


def key_values(text: str) -> dict:
    return dict(item.split("=", 1) for item in text.split(", ") if item)


@pytest.mark.parametrize("name", ["snellius", "snellius-h100", "snellius-course"])
def test_dry_run_plans_every_job_on_its_partition_without_a_cluster(name, workflow_dir, monkeypatch):
    # an empty config: any Slurm command fails at once (a missing one: each retries for a minute)
    monkeypatch.setenv("SLURM_CONF", "/dev/null")
    monkeypatch.delenv("SBATCH_ACCOUNT", raising=False)
    profile = parse_profile(PROFILES / name / "config.yaml")
    args = ("-n", "--profile", f"profiles/{name}", "--configfile", "config/test.yaml")
    jobs = planned_jobs(snakemake(workflow_dir, *args).stdout)
    assert {rule for rule, _, _ in jobs} >= {"prepare", "throughput", *GPU_RULES}
    default = profile["default-resources"]["slurm_partition"]
    for rule, wildcards, resources in jobs:
        # the profile's partition for the rule; a throughput job's is the partition it measures
        rule_partition = profile["set-resources"].get(rule, {}).get("slurm_partition")
        assert resources["slurm_partition"] == (rule_partition or wildcards.get("partition", default)), rule
        # a number, not Snakemake's default of twice the input size (<TBD> here): planning a sweep
        # of thousands of runs looks up no job's input files for it
        assert resources["disk_mb"] == profile["default-resources"]["disk_mb"], rule


def test_local_profile_plans_the_workflow(workflow_dir):
    out = snakemake(
        workflow_dir, "-n", "--profile", "profiles/local", "--configfile", "config/test.yaml"
    ).stdout
    assert "prepare" in {rule for rule, _, _ in planned_jobs(out)}


COURSE_GPU_GB = 5  # a MIG 1g.5gb slice of an A100 (course journal)


def test_course_config_is_pcam_yaml_sized_for_a_5_gb_slice_and_the_course_profile(no_account):
    pcam, course = (validate_config(load_yaml(REPO / "config" / f"{n}.yaml")) for n in ("pcam", "course"))
    assert (pcam["experiment"], course["experiment"]) == ("pcam", "course")  # results/pcam/, results/course/
    changed = {
        ("experiment",),  # its own results folder
        ("grid", "batch_size"),
        ("training", "eval_batch_size"),
        ("partitions",),
        ("throughput", "batch_sizes"),
        ("throughput", "workers"),
    }
    for keys in changed:  # everything else is config/pcam.yaml's
        *parents, last = keys
        pcam_part, course_part = pcam, course
        for key in parents:
            pcam_part, course_part = pcam_part[key], course_part[key]
        pcam_part[last] = course_part[last]
    assert course == pcam
    # half the slice for activations (the upper bound `pcamflow cost` uses: every layer output kept);
    # the rest for weights, optimizer state, cuDNN workspace and the CUDA context
    for point in grid_points(course):
        assert activation_gb(point, course["training"]) <= COURSE_GPU_GB / 2, point
    for model in course["throughput"]["models"]:
        point = {"model": model, "batch_size": max(course["throughput"]["batch_sizes"])}
        assert activation_gb(point, course["training"]) <= COURSE_GPU_GB / 2, model
    assert course["training"]["eval_batch_size"] <= 256
    profile = parse_profile(PROFILES / "snellius-course" / "config.yaml")
    gpu, cpu = profile["set-resources"]["train"], profile["default-resources"]
    assert course["partitions"] == {
        cpu["slurm_partition"]: {"device": "cpu", "cpus": int(cpu["cpus_per_task"]), "gpus": 0},
        gpu["slurm_partition"]: {"device": "cuda", "cpus": int(gpu["cpus_per_task"]), "gpus": 1},
    }


WORKFLOW_PROFILE = PROFILES / "default" / "config.yaml"
LOCAL_SETTINGS = {"cores": "all", "keep-going": "True", "rerun-incomplete": "True"}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], LOCAL_SETTINGS),
        (["-n", "results/summary/metrics_avg.csv"], LOCAL_SETTINGS),
        (["--profile", "profiles/snellius"], {}),
        (["--profile=profiles/snellius"], {}),
        (["--executor", "slurm"], {}),
        (["-e", "slurm"], {}),
    ],
)
def test_the_workflow_profile_is_local_unless_another_is_named(monkeypatch, argv, expected):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    monkeypatch.setattr("sys.argv", ["snakemake", *argv])
    assert {k: str(v) for k, v in parse_profile(WORKFLOW_PROFILE).items() if k in LOCAL_SETTINGS} == expected
    assert parse_profile(PROFILES / "local" / "config.yaml")["cores"] == "all"  # the one source


def test_the_workflow_profile_finds_profiles_local_beside_the_snakefile(monkeypatch, tmp_path):
    # Snakemake finds the workflow profile beside the Snakefile named with -s, from anywhere
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    for argv in (["-s", str(REPO / "Snakefile")], [f"--snakefile={REPO / 'Snakefile'}"]):
        monkeypatch.setattr("sys.argv", ["snakemake", *argv])
        assert parse_profile(WORKFLOW_PROFILE)["cores"] == "all"
    monkeypatch.setenv("SNAKEMAKE_PROFILE", "profiles/snellius")
    assert "cores" not in parse_profile(WORKFLOW_PROFILE)
    # a working directory without profiles/local: one line saying what is missing
    monkeypatch.delenv("SNAKEMAKE_PROFILE")
    monkeypatch.setattr("sys.argv", ["snakemake"])
    with pytest.raises(ConfigFileParserException, match=r"profiles/local/config.yaml not found"):
        parse_profile(WORKFLOW_PROFILE)
