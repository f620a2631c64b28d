"""MODEL_CARD.md and the handover README: their text comes from the Jinja2 templates in
src/pcamflow/deployment/templates, which a non-programmer can edit."""

from __future__ import annotations

import shutil
from pathlib import Path

import jinja2
import pytest
from bundle_fixtures import card_inputs

from pcamflow.deployment import render
from pcamflow.deployment.handover import handover_readme
from pcamflow.deployment.model_card import model_card
from pcamflow.errors import PcamflowError

TEMPLATES = Path(render.__file__).parent / render.TEMPLATE_DIR
README_METADATA = {
    "champion": "model~cnn",
    "seed": 7,
    "threshold": 0.3,
    "tta": True,
    "git": {"commit": "abc"},
}


def test_card_reports_threshold_metrics_and_weak_slices_first():
    card = model_card(**card_inputs())
    assert card.startswith("# Model card: pcamflow champion `model~mlp/lr~0.001`\n")
    assert "- **0.0753**: label = 1 when P >= threshold." in card
    assert "| champion, seed 2 (deployed) | validation (0.075) | 0.580 [0.530, 0.630] |" in card
    assert "| undefined (no predicted positives) |" in card
    assert "1 slice(s) of the test split" in card
    slice_rows = [
        line for line in card.splitlines() if line.startswith("| intensity") or line.startswith("| stain")
    ]
    assert slice_rows[0].endswith("| **weak**: recall 0.750 vs 0.920 |")  # the weak one first
    assert sum(row.endswith("| too few tiles |") for row in slice_rows) == 2
    assert "not on real histology" in card and "predict with --tta" not in card
    assert "Code: git commit unknown (not run from a git checkout)." in card
    assert card.endswith("before trusting it.\n")


def test_card_of_a_real_dataset_with_tta_and_a_dirty_checkout():
    card = model_card(**card_inputs(dataset="pcam", tta=True, git={"commit": "abc123", "dirty": True}))
    assert "not on real histology" not in card
    assert "then applied unchanged to test (on probabilities averaged over the 8 D4 views" in card
    assert "Code: git commit abc123 with uncommitted changes." in card


def _edited_templates(tmp_path, monkeypatch, name: str, old: str, new: str) -> Path:
    """A copy of the template folder with one edit, used instead of the package's."""
    copy = tmp_path / "templates"
    shutil.copytree(TEMPLATES, copy)
    text = (copy / name).read_text()
    assert old in text
    (copy / name).write_text(text.replace(old, new))
    monkeypatch.setattr(render, "environment", lambda: render.make_environment(jinja2.FileSystemLoader(copy)))
    return copy


@pytest.mark.parametrize(
    ("name", "make", "sentence"),
    [
        ("model_card.md.j2", lambda: model_card(**card_inputs()), "a pathologist decides."),
        (
            "handover_readme.md.j2",
            lambda: handover_readme(README_METADATA),
            "Copy `wheels/` and this directory",
        ),
    ],
    ids=["model card", "handover README"],
)
def test_an_edited_template_changes_the_text(tmp_path, monkeypatch, name, make, sentence):
    before = make()
    assert sentence in before
    _edited_templates(tmp_path, monkeypatch, name, sentence, "EDITED BY THE CLINICAL LEAD.")
    after = make()
    assert sentence not in after and "EDITED BY THE CLINICAL LEAD." in after
    assert after == before.replace(sentence, "EDITED BY THE CLINICAL LEAD.")


def test_an_unknown_name_in_an_edited_template_is_one_line_naming_the_file(tmp_path, monkeypatch):
    copy = _edited_templates(tmp_path, monkeypatch, "model_card.md.j2", "{{ threshold }}", "{{ treshold }}")
    with pytest.raises(PcamflowError) as err:
        model_card(**card_inputs())
    message = str(err.value)
    assert "\n" not in message and str(copy / "model_card.md.j2") in message
    assert "'treshold' is undefined" in message and "threshold" in message.split("can use:")[1]


def test_a_syntax_error_in_an_edited_template_names_the_file_and_line(tmp_path, monkeypatch):
    copy = _edited_templates(tmp_path, monkeypatch, "handover_readme.md.j2", "{% endif +%}", "")
    with pytest.raises(PcamflowError, match=r"handover_readme\.md\.j2, line \d+: ") as err:
        handover_readme(README_METADATA)
    assert str(copy) in str(err.value) and "\n" not in str(err.value)
