"""Aggregation over seeds, the champion rule, the sweep plots and HParams, on hand-made run histories."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from pcamflow import rundir
from pcamflow.errors import PcamflowError
from pcamflow.evaluation import aggregate

GRID_KEYS = ["model", "lr", "batch_size", "optimizer"]


def fake_history(val_auc, best_epoch=None, epochs=3, val_loss=None, steps=4):
    """A history.json as the training engine writes it; val_auc[i] is epoch i+1's AUC."""
    val_auc = list(val_auc) if isinstance(val_auc, list | tuple) else [val_auc] * epochs
    best_epoch = best_epoch or int(np.argmax(val_auc)) + 1
    records = []
    for i, auc in enumerate(val_auc):
        records.append(
            {
                "epoch": i + 1,
                "train_loss": 0.7 - 0.1 * i,
                "val_loss": (val_loss[i] if val_loss else 0.6 - 0.05 * i),
                "val_accuracy": auc - 0.1,
                "val_f2": auc - 0.05,
                "val_auc": auc,
                "val_pr_auc": auc - 0.01,
                "lr": 0.001,
                "epoch_time_s": 1.0 + i,
                "img_per_s": 100.0 + i,
            }
        )
    step_records = [
        {
            "step": s,
            "epoch": 1,
            "train_loss_step": 0.7 - 0.01 * s,
            "grad_norm": None if s % 2 else 1.0,
            "lr": 0.001,
        }
        for s in range(steps)
    ]
    return {"selection_metric": "val_auc", "best_epoch": best_epoch, "epochs": records, "steps": step_records}


def write_run(root, point, seed, history, train_time_s=12.0):
    run_dir = root / rundir.point_id(point, GRID_KEYS) / rundir.seed_dir(seed)
    run_dir.mkdir(parents=True)
    (run_dir / "history.json").write_text(json.dumps(history))
    (run_dir / "run.json").write_text(json.dumps({"train_time_s": train_time_s, "seed": seed}))
    return run_dir


def point(model="cnn", lr=0.001, batch_size=64, optimizer="adam"):
    return {"model": model, "lr": lr, "batch_size": batch_size, "optimizer": optimizer}


def sweep(root, aucs_by_point):
    """Write runs for {point tuple: [auc per seed]}; return (runs, run_dirs) as the rule passes them."""
    runs, dirs = [], []
    for values, aucs in aucs_by_point.items():
        p = dict(zip(GRID_KEYS, values))
        for seed, auc in zip((1, 2, 3), aucs):
            dirs.append(write_run(root, p, seed, fake_history([auc - 0.05, auc, auc - 0.02])))
            runs.append(dict(p, seed=seed))
    return runs, dirs


def test_runs_table_takes_metrics_at_the_best_epoch_and_the_final_epoch(tmp_path):
    history = fake_history([0.80, 0.90, 0.85], val_loss=[0.5, 0.4, 0.45])
    run_dir = write_run(tmp_path, point(), 7, history)
    table = aggregate.runs_table([dict(point(), seed=7)], [run_dir], GRID_KEYS)
    row = table.iloc[0]
    assert row["best_epoch"] == 2
    assert row["val_auc_at_best"] == 0.90
    assert row["val_loss_at_best"] == 0.4
    assert row["val_auc_final"] == 0.85
    assert row["train_time_s"] == 12.0
    assert row["img_per_s"] == pytest.approx(101.0)
    assert row["seed"] == 7 and row["model"] == "cnn"


def test_metrics_avg_is_mean_and_sample_std_over_seeds(tmp_path):
    runs, dirs = sweep(
        tmp_path,
        {("cnn", 0.001, 64, "adam"): [0.90, 0.92, 0.97], ("mlp", 0.001, 64, "adam"): [0.7, 0.7, 0.7]},
    )
    avg = aggregate.metrics_avg(aggregate.runs_table(runs, dirs, GRID_KEYS), GRID_KEYS)
    assert list(avg["model"]) == ["cnn", "mlp"]  # config order kept
    cnn = avg.iloc[0]
    assert cnn["n_seeds"] == 3
    assert cnn["val_auc_mean"] == pytest.approx(np.mean([0.90, 0.92, 0.97]))
    assert cnn["val_auc_std"] == pytest.approx(np.std([0.90, 0.92, 0.97], ddof=1))
    for metric in ("val_auc", "val_f2", "val_accuracy", "val_loss", "val_pr_auc"):
        assert f"{metric}_mean" in avg and f"{metric}_std" in avg
    assert avg.iloc[1]["val_auc_std"] == pytest.approx(0.0)


def test_single_seed_leaves_std_empty(tmp_path):
    runs, dirs = sweep(tmp_path, {("cnn", 0.001, 64, "adam"): [0.9]})
    avg = aggregate.metrics_avg(aggregate.runs_table(runs, dirs, GRID_KEYS), GRID_KEYS)
    assert avg.iloc[0]["n_seeds"] == 1
    assert math.isnan(avg.iloc[0]["val_auc_std"])


def test_run_dir_without_history_is_a_clear_error(tmp_path):
    run_dir = tmp_path / "model~cnn" / "seed~1"
    run_dir.mkdir(parents=True)
    with pytest.raises(PcamflowError, match=r"history\.json: run history missing"):
        aggregate.runs_table([dict(point(), seed=1)], [run_dir], GRID_KEYS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"epochs": []}), "missing selection_metric, best_epoch"),
        (json.dumps({"selection_metric": "val_auc", "best_epoch": 1, "epochs": []}), "holds no epochs"),
        (json.dumps(dict(fake_history(0.9), best_epoch=9)), "best_epoch 9 outside"),
    ],
)
def test_malformed_history_is_a_clear_error(tmp_path, content, message):
    (tmp_path / "history.json").write_text(content)
    with pytest.raises(PcamflowError, match=message):
        aggregate.load_history(tmp_path)


def test_empty_sweep_is_a_clear_error():
    with pytest.raises(PcamflowError, match="no runs"):
        aggregate.runs_table([], [], GRID_KEYS)


def ranked_champion(tmp_path, aucs_by_point, n_params=None, metric="val_auc"):
    runs, dirs = sweep(tmp_path, aucs_by_point)
    table = aggregate.runs_table(runs, dirs, GRID_KEYS)
    avg = aggregate.metrics_avg(table, GRID_KEYS)
    ranked = aggregate.rank_grid_points(avg, metric, n_params or [1000] * len(avg))
    return aggregate.choose_champion(table, ranked, GRID_KEYS, metric)


def test_champion_has_the_highest_mean(tmp_path):
    champ = ranked_champion(
        tmp_path, {("mlp", 0.001, 64, "adam"): [0.8, 0.8, 0.8], ("cnn", 0.001, 64, "adam"): [0.9, 0.95, 0.93]}
    )
    assert champ["grid_point"]["model"] == "cnn"
    assert champ["mean"] == pytest.approx(np.mean([0.9, 0.95, 0.93]))
    assert [s["seed"] for s in champ["seeds"]] == [1, 2, 3]
    assert champ["deploy"]["seed"] == 2  # its best seed on validation
    assert champ["deploy"]["checkpoint"].endswith(
        "model~cnn/lr~0.001/batch_size~64/optimizer~adam/seed~2/checkpoint_best.pt"
    )
    assert "lower std" in champ["rule"] and "fewer trainable parameters" in champ["rule"]
    assert [r["rank"] for r in champ["ranking"]] == [1, 2]


def test_deploy_seed_ties_go_to_the_earlier_seed(tmp_path):
    champ = ranked_champion(tmp_path, {("cnn", 0.001, 64, "adam"): [0.9, 0.95, 0.95]})
    assert champ["deploy"]["seed"] == 2


def test_champion_ties_go_to_lower_std_then_fewer_parameters_then_grid_order(tmp_path):
    # equal means, the second has the lower std
    champ = ranked_champion(
        tmp_path / "a",
        {("mlp", 0.001, 64, "adam"): [0.8, 0.9, 1.0], ("cnn", 0.001, 64, "adam"): [0.85, 0.9, 0.95]},
    )
    assert champ["grid_point"]["model"] == "cnn"
    # equal means and stds: fewer parameters wins
    same = {("mlp", 0.001, 64, "adam"): [0.9, 0.9, 0.9], ("cnn", 0.001, 64, "adam"): [0.9, 0.9, 0.9]}
    assert ranked_champion(tmp_path / "b", same, n_params=[500, 100])["grid_point"]["model"] == "cnn"
    # all equal: the earlier grid point in config order
    assert ranked_champion(tmp_path / "c", same, n_params=[100, 100])["grid_point"]["model"] == "mlp"


def test_champion_by_val_loss_prefers_the_lowest(tmp_path):
    runs, dirs = [], []
    for model, loss in (("mlp", 0.3), ("cnn", 0.5)):
        p = point(model=model)
        dirs.append(write_run(tmp_path, p, 1, fake_history([0.9, 0.9], val_loss=[loss, loss], best_epoch=1)))
        runs.append(dict(p, seed=1))
    table = aggregate.runs_table(runs, dirs, GRID_KEYS)
    avg = aggregate.metrics_avg(table, GRID_KEYS)
    ranked = aggregate.rank_grid_points(avg, "val_loss", [1, 1])
    champ = aggregate.choose_champion(table, ranked, GRID_KEYS, "val_loss")
    assert champ["grid_point"]["model"] == "mlp"
    assert champ["direction"] == "lower"


def test_count_parameters_matches_the_built_model():
    small = aggregate.count_parameters("mlp", {"mlp_hidden": [4], "dropout": 0.0})
    assert small == 96 * 96 * 3 * 4 + 4 + 4 * 2 + 2
    assert aggregate.count_parameters("cnn", {"cnn_width": 4}) < aggregate.count_parameters(
        "cnn", {"cnn_width": 8}
    )
    # a setting left out takes the schema's default (cnn_width 8), as in a validated config
    assert aggregate.count_parameters("cnn", {}) == aggregate.count_parameters("cnn", {"cnn_width": 8})
    with pytest.raises(PcamflowError, match="cnn_width"):
        aggregate.count_parameters("cnn", {"cnn_width": 2})


def test_rule_entry_points_write_tables_champion_and_plots(tmp_path):
    runs, dirs = sweep(
        tmp_path / "runs",
        {("mlp", 0.001, 64, "adam"): [0.8, 0.82, 0.81], ("cnn", 0.001, 64, "sgd"): [0.9, 0.95, 0.93]},
    )
    out = tmp_path / "summary"
    aggregate.write_aggregate(
        runs, dirs, GRID_KEYS, out / "runs.csv", out / "avg.csv", out / "avg.html", out / "failed.txt"
    )
    assert len(pd.read_csv(out / "runs.csv")) == 6
    assert (out / "failed.txt").read_text() == ""
    assert (
        f"{np.mean([0.9, 0.95, 0.93]):.4f} ± {np.std([0.9, 0.95, 0.93], ddof=1):.4f}"
        in (out / "avg.html").read_text()
    )
    training = {"mlp_hidden": [4], "cnn_width": 4}
    champ = aggregate.write_champion(
        out / "runs.csv",
        out / "avg.csv",
        GRID_KEYS,
        "val_auc",
        training,
        out / "champion.json",
        out / "pc.png",
    )
    assert (
        json.loads((out / "champion.json").read_text())["id"]
        == champ["id"]
        == "model~cnn/lr~0.001/batch_size~64/optimizer~sgd"
    )
    aggregate.plot_grid_point(point(), [1, 2, 3], dirs[3:], out / "e.png", out / "s.png", GRID_KEYS)
    for name in ("pc.png", "e.png", "s.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_sweep_tensorboard_holds_hparams_of_every_run(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs, dirs = sweep(
        tmp_path / "runs", {("mlp", 0.001, 64, "adam"): [0.8, 0.82], ("cnn", 0.001, 64, "adam"): [0.9, 0.95]}
    )
    out = tmp_path / "tb"
    aggregate.write_sweep_tensorboard(runs, dirs, GRID_KEYS, out)
    run_dirs = sorted(p.parent for p in out.rglob("events.out.tfevents.*"))
    assert len(run_dirs) == 4
    acc = EventAccumulator(str(out / "model~cnn/lr~0.001/batch_size~64/optimizer~adam/seed~2")).Reload()
    assert acc.Scalars("best/val_auc")[0].value == pytest.approx(0.95)
    assert "_hparams_/session_start_info" in acc.summary_metadata


def fail_run(run_dir, reason="TrainingDiverged: training loss is nan at step 3 (epoch 1)", attempts=3):
    """Turn a run into one that failed for good, as pcamflow.training.runstatus.write_failed_run leaves it."""
    from pcamflow.training.runstatus import write_failed_run

    for path in run_dir.iterdir():
        path.unlink()
    write_failed_run(run_dir, run_dir / "no-state", {"seed": 2, "training": {}}, reason, attempts)


def test_failed_runs_are_listed_with_their_reason_and_left_out_of_the_means(tmp_path):
    runs, dirs = sweep(
        tmp_path / "runs",
        {("mlp", 0.001, 64, "adam"): [0.8, 0.82, 0.81], ("cnn", 0.001, 64, "sgd"): [0.99, 0.95, 0.93]},
    )
    fail_run(dirs[3])  # cnn seed 1: the best run of the sweep, had it not failed
    out = tmp_path / "summary"
    aggregate.write_aggregate(
        runs, dirs, GRID_KEYS, out / "runs.csv", out / "avg.csv", out / "avg.html", out / "failed.txt"
    )
    table = pd.read_csv(out / "runs.csv")
    failed = table.loc[table["status"] == "failed"]
    assert len(failed) == 1 and failed.iloc[0]["seed"] == 1 and failed.iloc[0]["attempts"] == 3
    assert failed.iloc[0]["failure_reason"].startswith("TrainingDiverged: training loss is nan")
    assert (table["status"] == "done").sum() == 5
    avg = pd.read_csv(out / "avg.csv", dtype={"seeds": str, "failed_seeds": str}).set_index("model")
    assert avg.loc["cnn", "n_seeds"] == 2 and avg.loc["cnn", "n_planned"] == 3
    assert avg.loc["cnn", "failed_seeds"] == "1" and avg.loc["cnn", "seeds"] == "2 3"
    assert avg.loc["cnn", "val_auc_mean"] == pytest.approx(np.mean([0.95, 0.93]))
    assert "2 / 3" in (out / "avg.html").read_text()
    assert (out / "failed.txt").read_text() == f"{dirs[3] / 'run.json'}\n"

    training = {"mlp_hidden": [4], "cnn_width": 4}
    args = (out / "runs.csv", out / "avg.csv", GRID_KEYS, "val_auc", training, out / "c.json", out / "pc.png")
    # default: every seed must succeed, so the cnn point does not compete
    champ = aggregate.write_champion(*args, min_seeds=None)
    assert champ["grid_point"]["model"] == "mlp" and champ["min_seeds"] == 3
    assert champ["not_ranked"] == ["model~cnn/lr~0.001/batch_size~64/optimizer~sgd"]
    assert [r["rank"] for r in champ["ranking"]] == [1]
    champ = aggregate.write_champion(*args, min_seeds=2)
    assert champ["grid_point"]["model"] == "cnn" and champ["n_seeds"] == 2
    assert [s["seed"] for s in champ["seeds"]] == [2, 3]  # never the failed seed's checkpoint
    with pytest.raises(PcamflowError, match="no grid point has 4 successful seed"):
        aggregate.write_champion(*args, min_seeds=4)

    # the per-grid-point plots and the sweep's HParams skip it; a point whose seeds all failed says so
    aggregate.plot_grid_point(
        point("cnn", optimizer="sgd"), [1, 2, 3], dirs[3:], out / "e.png", out / "s.png", GRID_KEYS
    )
    for other in dirs[4:]:
        fail_run(other)
    aggregate.plot_grid_point(
        point("cnn", optimizer="sgd"), [1, 2, 3], dirs[3:], out / "e.png", out / "s.png", GRID_KEYS
    )
    aggregate.write_sweep_tensorboard(runs, dirs, GRID_KEYS, tmp_path / "tb")
    assert len({p.parent for p in (tmp_path / "tb").rglob("events.out.tfevents.*")}) == 3


def test_a_failed_runs_checkpoint_says_the_run_failed(tmp_path):
    from pcamflow.training.checkpoint import load_model

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    fail_run(run_dir, reason="OutOfMemoryError: CUDA out of memory")
    with pytest.raises(PcamflowError, match="the run failed, so it has no weights .OutOfMemoryError"):
        load_model(run_dir / "checkpoint_best.pt")
    info = json.loads((run_dir / "run.json").read_text())
    assert info["status"] == "failed"
    assert info["failure"] == {
        "reason": "OutOfMemoryError: CUDA out of memory",
        "attempts": 3,
        "category": "run",
    }
