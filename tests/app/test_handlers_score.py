"""Score tab handler: ranked, version-stamped scores; the store's upload checks; consent turns an upload into a task."""

from __future__ import annotations

import io
from pathlib import Path

import gradio as gr
import pytest
from PIL import Image
from sqlalchemy import select

from app.handlers.score import FLOOR_NOTES, RESULT_COLUMNS, load_examples, score_edits
from app.render import text
from app.scoring import ScoringService
from storage.models import Task
from tests.app.handler_support import add_users, as_user, make_deps, set_gate
from tests.storage.test_images import bomb_png


def _png(path: Path, color: str, size: tuple[int, int] = (40, 32)) -> str:
    Image.new("RGB", size, color).save(path, format="PNG")
    return str(path)


def _bomb_png(path: Path) -> str:
    """A small, valid PNG that declares 20000 × 20000 pixels (a decompression bomb, as the store's tests build it)."""
    path.write_bytes(bomb_png())
    return str(path)


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    return {
        "source": _png(tmp_path / "source.png", "gray"),
        "red": _png(tmp_path / "red.png", "red"),
        "blue": _png(tmp_path / "blue.png", "blue"),
    }


@pytest.fixture
def deps(app_store, scoring_service):
    add_users(app_store, viewer="annotator")
    return make_deps(app_store, scoring=scoring_service)


def test_edits_are_ranked_best_first_and_stamped_with_the_version(deps, files, app_store):
    view = score_edits(deps, files["source"], "make it red", [files["red"], files["blue"]], False, as_user("viewer"))
    assert list(view.table.columns) == RESULT_COLUMNS and len(view.table) == 2
    assert list(view.table["rank"]) == [1, 2]
    assert view.table["score"].is_monotonic_decreasing
    assert set(view.table["version"]) == {app_store.version_name}
    assert app_store.version_name in view.status and f"id {app_store.version_id}" in view.status
    assert [caption.split(" · ")[0] for _, caption in view.gallery] == ["#1", "#2"]
    with deps.factory() as session:
        assert session.scalar(select(Task).where(Task.origin == "upload")) is None  # no consent, nothing stored


def test_an_example_gets_one_score_per_edit_named_by_its_file(deps):
    example = load_examples()[0]
    view = score_edits(deps, *example.inputs(), False, as_user("viewer"))
    assert len(view.table) == len(view.gallery) == len(example.edits) == 3
    names = [f"edit {number} · {path.name}" for number, path in enumerate(example.edits, start=1)]
    assert sorted(view.table["edit"]) == sorted(names)
    assert view.table["score"].is_monotonic_decreasing


@pytest.mark.parametrize("passed_floor", [True, False, None], ids=["passed", "below", "never-checked"])
def test_the_status_says_whether_the_version_beats_the_accuracy_floor(deps, files, app_store, scoring_service,
                                                                       passed_floor):
    set_gate(app_store.factory, app_store.version_id, passed_floor=passed_floor)
    scoring_service.refresh()  # the poll that reads the verdict
    view = score_edits(deps, files["source"], "make it red", [files["red"]], False, as_user("viewer"))
    assert text(FLOOR_NOTES[passed_floor].format(name=app_store.version_name)) in view.status


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ("text", "Edited image 1: The file is not an image"),
        ("gif", "Edited image 1: GIF files are not supported"),
        ("truncated", "Edited image 1: The PNG file is"),
        ("bomb", "Edited image 1: The image is 20000x20000"),
        ("empty", "Edited image 1: The file is empty"),
    ],
)
def test_bad_uploads_get_the_stores_message(deps, files, tmp_path, edit, message):
    bad = tmp_path / f"bad-{edit}"
    if edit == "text":
        bad.write_text("<html>not a picture</html>")
    elif edit == "gif":
        Image.new("RGB", (16, 16)).save(bad, format="GIF")
    elif edit == "truncated":
        bad.write_bytes(Path(files["red"]).read_bytes()[:-30])
    elif edit == "bomb":
        _bomb_png(bad)
    else:
        bad.write_bytes(b"")
    with pytest.raises(gr.Error) as caught:
        score_edits(deps, files["source"], "make it red", [str(bad)], True, as_user("viewer"))
    assert message in caught.value.message
    with deps.factory() as session:
        assert session.scalar(select(Task).where(Task.origin == "upload")) is None


def test_an_upload_over_the_size_limit_is_refused_before_decoding(app_store, scoring_service, tmp_path):
    add_users(app_store, viewer="annotator")
    deps = make_deps(app_store, scoring=scoring_service, max_upload_mb=0.001)
    big = io.BytesIO()
    Image.effect_noise((64, 64), 64).convert("RGB").save(big, format="PNG")
    (tmp_path / "big.png").write_bytes(big.getvalue())
    with pytest.raises(gr.Error, match="Source image: The file is .* over the 0.001 MB upload limit"):
        score_edits(deps, str(tmp_path / "big.png"), "x", [str(tmp_path / "big.png")], False, as_user("viewer"))


@pytest.mark.parametrize(
    ("source", "instruction", "edits", "message"),
    [
        (None, "make it red", ["red"], "Upload the source image"),
        ("source", "   ", ["red"], "Write the edit instruction"),
        ("source", "make it red", [], "Upload 1 to 4 edited images"),
        ("source", "make it red", ["red"] * 5, "Upload 1 to 4 edited images"),
    ],
)
def test_missing_or_too_many_inputs_are_refused(deps, files, source, instruction, edits, message):
    with pytest.raises(gr.Error, match=message):
        score_edits(deps, files.get(source), instruction, [files[e] for e in edits], False, as_user("viewer"))


def test_without_a_served_version_the_tab_says_no_scorer_yet(app_store, files):
    add_users(app_store, viewer="annotator")
    service = ScoringService(app_store.factory, app_store.settings)
    try:
        deps = make_deps(app_store, scoring=service)
        view = score_edits(deps, files["source"], "make it red", [files["red"]], False, as_user("viewer"))
    finally:
        service.stop()
    assert "No scorer yet" in view.status and view.table.empty and view.gallery == []


def test_consent_turns_the_upload_into_an_annotation_task(deps, files):
    view = score_edits(deps, files["source"], "make it <b>red</b>", [files["red"], files["blue"]], True,
                       as_user("viewer"))
    with deps.factory() as session:
        task = session.scalar(select(Task).where(Task.origin == "upload"))
        assert task.instruction == "make it <b>red</b>"
        assert [c.generator for c in task.candidates] == ["user-upload-1", "user-upload-2"]
        assert f"task {task.id} for annotators" in view.status


def test_consent_with_one_edit_stores_nothing(deps, files):
    view = score_edits(deps, files["source"], "make it red", [files["red"]], True, as_user("viewer"))
    assert "at least two" in view.status
    with deps.factory() as session:
        assert session.scalar(select(Task).where(Task.origin == "upload")) is None
