"""The README and docs/ are true: every command they show runs as typed, docs/output.md names every
file a sweep writes and the rule that writes it, their links resolve, and the README stays short.

A command in a ```bash block is either run here as typed, in a copy of the finished test sweep
(RUN_HERE), or named in RUN_ELSEWHERE with the test that runs it (the same command, or the same
with the test's data, cluster or server in place of the real one). A command in neither fails.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO, copy_workflow

from pcamflow.config import GRID_KEYS, grid_points, load_yaml, merge_config, validate_config
from pcamflow.constants import SPLITS

README = REPO / "README.md"
DOCS = (README, *sorted((REPO / "docs").glob("*.md")))
README_MAX_LINES = 160

# Commands run as typed by test_the_documented_commands_run_as_typed (full matches, comment dropped).
RUN_HERE = (
    r"source \.venv/bin/activate",
    r"pcamflow status( --config .*)?",
    r"pcamflow cost --config config/pcam\.yaml( --train-tiles \d+)?",
    r"snakemake -n --configfile config/pcam\.yaml",
    r"snakemake --unlock --profile profiles/snellius --configfile config/pcam\.yaml",
    r"python -m pcamflow\.profiles --check",
    r"pcamflow predict --model results/bundle/model .*",
    r"pcamflow train --config run\.yaml --out \S+",
    r"pcamflow throughput .*",
    r"sha256sum results/bundle/model/manifest\.json",
)
THIS = "tests/test_docs.py"
# What make check runs after the linters (two pytest-xdist workers).
FAST_TIER = 'pytest -q -m "not slow and not slurm and not browser" -n 2 --dist worksteal'
COMMANDS_TEST = "tests/test_commands.py::test_the_readme_commands_work_as_typed"
PROFILE_DRY_RUN = "tests/test_profiles.py::test_dry_run_plans_every_job_on_its_partition_without_a_cluster"
# Commands another test runs: pattern (full match, comment dropped) -> that test.
RUN_ELSEWHERE = {
    # installs, then the plain commands below (make -n shows what each target runs)
    r"make (run|test|check)": f"{THIS}::test_make_targets_run_what_the_docs_say",
    r"ruff check \.|ruff format --check \.|snakefmt --check \.|snakemake --lint": (
        f"{THIS}::test_make_targets_run_what_the_docs_say"
    ),
    re.escape(FAST_TIER): f"{THIS}::test_make_targets_run_what_the_docs_say",
    # the local pipeline, from a fresh copy of the repository
    r"snakemake|snakemake -n|snakemake --report|snakemake results/summary/metrics_avg\.csv": COMMANDS_TEST,
    r"snakemake results/summary/throughput\.csv": (
        "tests/test_throughput.py::test_throughput_stage_on_the_test_config"
    ),
    # --config overrides (dry runs that check what they plan)
    r"snakemake --config seeds=\S+": "tests/test_config.py::test_override_seeds",
    r"snakemake --config grid=.+": "tests/test_config.py::test_override_grid",
    r"snakemake --config training=.+": "tests/test_config.py::test_override_training",
    r"snakemake --config experiment=\w+": "tests/test_config.py::test_override_experiment",
    r"snakemake --configfile config/pcam\.yaml --config data_dir=\S+": (
        "tests/test_download.py::test_files_on_disk_plan_no_download_however_old"
    ),
    r"snakemake -n --config seeds=\S+": (
        "tests/test_sweep_workflow.py::test_metrics_avg_from_scratch_then_a_new_seed_or_grid_value_trains_only_the_new_runs"
    ),
    r"snakemake --forcerun \$\(cat results/summary/failed_runs\.txt\)": (
        "tests/test_failed_runs_workflow.py::test_a_run_failing_every_attempt_is_named_and_a_retry_trains_only_it"
    ),
    # a server that runs until stopped: the test reads the live events it shows
    r"tensorboard --logdir results/tensorboard": (
        "tests/test_train.py::test_live_events_are_readable_while_the_run_trains"
    ),
    r"pcamflow synth --out \S+ --poison": "tests/test_synth.py::test_command_line_writes_the_dataset",
    # Zenodo: a fake server
    r"pcamflow download --data-dir \S+ --meta": (
        "tests/test_download.py::test_cli_fetches_the_missing_meta_csvs_beside_files_already_present"
    ),
    # Snellius: dry runs without a cluster, and tests/test_slurm.py on a real one
    r"export SBATCH_ACCOUNT=<[\w ]+>": "tests/test_profiles.py::test_account_comes_from_the_environment_when_set",
    r"snakemake (-n )?--profile profiles/snellius(-course|-h100)? --configfile config/(pcam|course)\.yaml": (
        PROFILE_DRY_RUN
    ),
    r"(PCAMFLOW_SITE_\w+=\w+ )+snakemake --profile profiles/snellius-course .*": (
        "tests/test_profiles.py::test_a_site_setting_is_overridden_from_the_environment"
    ),
    r"python -m pcamflow\.profiles": (
        "tests/test_profiles.py::test_a_change_to_the_main_profile_reaches_every_variant_and_keeps_their_site_settings"
    ),
    # benchmarks (without CUDA, gpu_check says so and exits 69)
    r"\.venv/bin/python benchmarks/input_pipeline\.py .*": (
        "tests/test_measure.py::test_input_pipeline_benchmark_prints_the_input_share_and_the_pipeline_against_both_baselines"
    ),
    r"\.venv/bin/python benchmarks/gpu_check\.py": (
        "tests/test_gpu_check.py::test_without_cuda_it_says_so_in_one_line_and_exits_69"
    ),
    r"\.venv/bin/python benchmarks/gpu_check\.py --device cpu --tiny": (
        "tests/test_gpu_check.py::test_tiny_table_on_cpu_measures_both_input_paths"
    ),
}
# Documented paths the test sweep does not write: resume state (removed when a run ends), Slurm's logs.
NOT_IN_TEST_SWEEP = {
    "results/state/<grid point>/seed~N/",
    "results/state/reproducibility/",
    "results/logs/slurm/",
}

FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.M | re.S)


def blocks(page: Path, language: str) -> list[tuple[int, str]]:
    """(offset, text) of every fenced block of `language` in a page."""
    return [(m.start(), m[2]) for m in FENCE.finditer(page.read_text()) if m[1] == language]


def documented_commands() -> list[tuple[str, str]]:
    """(page, command as typed) for every command line of a bash block, in reading order."""
    return [
        (page.name, line.strip())
        for page in DOCS
        for _, text in blocks(page, "bash")
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]


def bare(command: str) -> str:
    """The command without its trailing comment (the docs' commands hold no other '#')."""
    return re.sub(r"\s+#.*$", "", command)


def classify(command: str) -> list[str]:
    """Where a command is run: 'here', and/or the tests named for the patterns it matches."""
    found = ["here"] if any(re.fullmatch(p, bare(command)) for p in RUN_HERE) else []
    return found + [test for pattern, test in RUN_ELSEWHERE.items() if re.fullmatch(pattern, bare(command))]


def test_readme_is_short():
    lines = README.read_text().count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"


def test_every_documented_command_is_run_here_or_by_a_named_test():
    commands = documented_commands()
    assert {page for page, _ in commands} >= {"README.md", "usage.md", "snellius.md", "development.md"}
    unplaced = [f"{page}: {cmd}" for page, cmd in commands if len(classify(cmd)) != 1]
    assert not unplaced, "each command needs exactly one entry in RUN_HERE or RUN_ELSEWHERE:\n" + "\n".join(
        unplaced
    )
    # every named test exists, and no entry outlives the command it was written for
    for test in set(RUN_ELSEWHERE.values()):
        path, name = test.split("::")
        tree = ast.parse((REPO / path).read_text())
        assert name in {node.name for node in ast.walk(tree) if isinstance(node, ast.FunctionDef)}, test
    for pattern in (*RUN_HERE, *RUN_ELSEWHERE):
        assert any(re.fullmatch(pattern, bare(cmd)) for _, cmd in commands), (
            f"no documented command: {pattern}"
        )


def test_make_targets_run_what_the_docs_say():
    """The README: make run is `snakemake --cores all`; make test the system packages, the linters and
    pytest; make check the linters and the fast tests. development.md shows the same commands."""
    venv_bin = Path(sys.executable).parent
    proc = subprocess.run(
        ["make", "-n", "run", "test", "check", f"VENV={venv_bin.parent}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    ran = {line.replace(f"{venv_bin}/", "") for line in proc.stdout.splitlines()}
    documented = {bare(cmd) for _, cmd in documented_commands()}
    for command in ("ruff check .", "ruff format --check .", "snakefmt --check .", "snakemake --lint"):
        assert command in ran and command in documented, command
    assert FAST_TIER in ran & documented
    assert {"snakemake --cores all", "bash tests/install_system_deps.sh"} <= ran
    assert any(line.startswith("pytest -ra") for line in ran)


def test_links_between_the_pages_resolve():
    for page in DOCS:
        for target in re.findall(r"\]\(([^)#\s]*)(#[\w-]+)?\)", page.read_text()):
            path, anchor = target
            if path.startswith("http"):
                continue
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: link to {path}"
            if anchor:
                headings = re.findall(r"^#+ (.*)$", linked.read_text(), re.M)
                slugs = {re.sub(r"[^\w -]", "", h.lower()).replace(" ", "-") for h in headings}
                assert anchor[1:] in slugs, f"{page.name}: link to {path}{anchor}"


# ---- docs/output.md ----
OUTPUT_MD = REPO / "docs" / "output.md"


def output_rows() -> list[tuple[list[str], str]]:
    """(path patterns under results/, rule cell) of each row of output.md's tables (rows of files
    elsewhere, as data_dir's, give no pattern)."""
    rows = []
    for line in OUTPUT_MD.read_text().splitlines():
        if line.startswith("| `"):
            path_cell, rule_cell = (cell.strip() for cell in line.strip("|").split("|")[:2])
            rows.append((re.findall(r"`(results/[^`]*)`", path_cell), rule_cell))
    return rows


def path_regex(pattern: str) -> str:
    """A documented path pattern as a regular expression over paths relative to the workflow."""
    parts = []
    for token in re.split(r"(\{[^}]*\}|<grid point>|seed~N)", pattern):
        if token == "<grid point>":
            parts.append("/".join(f"{key}~[^/]+" for key in GRID_KEYS))
        elif token == "seed~N":
            parts.append(r"seed~-?\d+")
        elif token == "{split}":
            parts.append(f"({'|'.join(SPLITS)})")
        elif token == "{partition}":
            parts.append(r"[A-Za-z0-9_]+")
        elif token.startswith("{"):
            parts.append(f"({'|'.join(map(re.escape, token[1:-1].split(',')))})")
        else:
            parts.append(re.escape(token))
    return "".join(parts) + (".+" if pattern.endswith("/") else "")


def test_output_md_names_real_rules_and_every_rule_that_writes_a_file():
    rules = set()
    for smk in (REPO / "rules").glob("*.smk"):
        rules |= set(re.findall(r"^\s*(?:rule|checkpoint) (\w+):", smk.read_text(), re.M))
    named = {name for _, cell in output_rows() for name in re.findall(r"`(\w+)`", cell)}
    assert named <= rules, f"output.md names rules that do not exist: {sorted(named - rules)}"
    assert rules - {"all"} <= named, f"rules without a row in output.md: {sorted(rules - {'all'} - named)}"


@pytest.mark.slow
def test_output_md_names_every_file_the_test_sweep_writes(finished_test_sweep):
    patterns = [pattern for paths, _ in output_rows() for pattern in paths]
    assert set(patterns) >= NOT_IN_TEST_SWEEP
    written = sorted(
        str(path.relative_to(finished_test_sweep))
        for path in (finished_test_sweep / "results").rglob("*")
        if path.is_file()
    )
    undocumented = [f for f in written if not any(re.fullmatch(path_regex(p), f) for p in patterns)]
    assert not undocumented, "files without a row in docs/output.md:\n" + "\n".join(undocumented)
    unwritten = [
        p
        for p in patterns
        if p not in NOT_IN_TEST_SWEEP and not any(re.fullmatch(path_regex(p), f) for f in written)
    ]
    assert not unwritten, f"documented paths the test sweep does not write: {unwritten}"


# ---- the commands, as typed ----


def example_files(root: Path) -> None:
    """The yaml blocks that start with `# <file name>`, written where the commands expect them."""
    for page in DOCS:
        for _, text in blocks(page, "yaml"):
            name = re.match(r"# (\S+\.yaml)\n", text)
            if name:
                (root / name[1]).write_text(text)


def text_after(command: str) -> str:
    """The ```text block right after a bash block that shows `command`: its documented output."""
    for page in DOCS:
        fences = list(FENCE.finditer(page.read_text()))
        for fence, following in zip(fences, fences[1:]):
            if fence[1] == "bash" and command in fence[2] and following[1] == "text":
                return following[2]
    raise AssertionError(f"no output documented for {command}")


def sweep_checkout(finished_test_sweep: Path, dest: Path) -> Path:
    """A copy of the finished test sweep that looks like a checkout after `make run`: its
    config/config.yaml is the config the sweep ran with, and .venv is this virtualenv."""
    root = copy_workflow(finished_test_sweep, dest)
    (root / "config").unlink()
    (root / "config").mkdir()
    for path in (REPO / "config").glob("*.yaml"):
        (root / "config" / path.name).write_text(path.read_text())
    swept = merge_config(load_yaml(REPO / "config/config.yaml"), load_yaml(REPO / "config/test.yaml"))
    (root / "config/config.yaml").write_text(yaml.safe_dump(swept, sort_keys=False))
    assert (Path(sys.prefix) / "bin" / "activate").exists(), "the tests run in a virtualenv (make test)"
    (root / ".venv").symlink_to(sys.prefix)
    return root


def run_as_typed(root: Path, commands: list[str]) -> dict[str, tuple[int, str]]:
    """Run the commands one after the other in one bash session in root; command -> (exit, output)."""
    script = []
    for i, command in enumerate(commands):
        script += [f"echo '@@@ {i}'", command, 'echo "@@@ exit $?"']
    env = {k: v for k, v in os.environ.items() if k != "SBATCH_ACCOUNT"}
    # the checkout's code; an empty Slurm config: squeue fails at once (no cluster here)
    env.update(PYTHONPATH=str(REPO / "src"), SLURM_CONF="/dev/null")
    proc = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=1200,
    )
    results = {}
    for i, command in enumerate(commands):
        match = re.search(rf"^@@@ {i}\n(.*?)^@@@ exit (\d+)$", proc.stdout, re.M | re.S)
        assert match, f"{command} did not finish:\n{proc.stdout}"
        results[command] = (int(match[2]), match[1])
    return results


@pytest.mark.slow
def test_the_documented_commands_run_as_typed(finished_test_sweep, tmp_path):
    root = sweep_checkout(finished_test_sweep, tmp_path / "checkout")
    example_files(root)
    # each once (several pages show some), as first typed, in reading order: the README's activation first
    typed = {}
    for _, command in documented_commands():
        if classify(command) == ["here"]:
            typed.setdefault(bare(command), command)
    assert next(iter(typed)) == "source .venv/bin/activate"
    ran = run_as_typed(root, list(typed.values()))
    results = {command: ran[typed[command]] for command in typed}
    failed = [f"$ {cmd}  (exit {rc})\n{out}" for cmd, (rc, out) in results.items() if rc != 0]
    assert not failed, "\n".join(failed)

    def out(command: str) -> str:
        return results[command][1]

    # the demo's sweep, with the run that failed in it
    assert "experiment 'default'" in out("pcamflow status") and " failed " in out("pcamflow status")
    # right after the demo, the real experiment is its own: nothing of the demo's counts for it
    pcam = validate_config(load_yaml(REPO / "config/pcam.yaml"))
    runs = len(grid_points(pcam)) * len(pcam["seeds"])
    status = out("pcamflow status --config config/pcam.yaml")
    assert "experiment 'pcam'" in status and "results in results/pcam/" in status
    assert f"{runs} runs: {runs} pending" in status
    assert "results/pcam/runs/" in out("snakemake -n --configfile config/pcam.yaml")
    # the cost table is what the command prints
    cost = "pcamflow cost --config config/pcam.yaml"
    assert out(cost).strip() == text_after(cost).strip()
    # the example commands wrote what the docs say
    predictions = pd.read_csv(root / "predictions.csv")  # the test split, labelled by its _y.h5
    assert len(predictions) == load_yaml(root / "config/config.yaml")["synthetic"]["n_test"]
    assert predictions["probability"].between(0, 1).all() and predictions["y_true"].notna().all()
    assert (root / "runs/by_hand/history.json").exists()
    assert pd.read_csv(root / "bench.csv")["status"].tolist() == ["ok"]
