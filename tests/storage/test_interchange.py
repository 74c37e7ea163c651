"""Import and export: EditReward JSON, the folder layout, `datasets` (disk and parquet), TRL pairs."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import datasets
import PIL.Image
import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from storage.db import session_factory, transaction
from storage.errors import InvalidInput
from storage.exporters import export_editreward, export_hf, export_trl
from storage.images import ImageRejected, store_image
from storage.importers import import_editreward, import_folder, import_hf
from storage.models import Base, Candidate, Image, Task, User, Vote
from storage.repository import add_candidate, create_task, record_vote
from storage.settings import load_settings
from storage.users import create_user
from tests.conftest import make_test_engine

# --- fixtures and helpers -----------------------------------------------------------------------------------


def png_bytes(color: tuple[int, int, int], size: tuple[int, int] = (16, 12)) -> bytes:
    """A small PNG of one colour, with a dot so no two sizes/colours collide."""
    picture = PIL.Image.new("RGB", size, color)
    picture.putpixel((1, 1), (255 - color[0], 255 - color[1], 255 - color[2]))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def editreward_records() -> list[dict]:
    """Three EditReward-Data records: a preference, a tie on the same task, a preference on another task."""
    common = {"choice_dist": None, "confidence": None}
    return [
        {"prompt": "Make the sky purple.", **common, "path_src": "a/source.png", "path1": "a/ovis.png",
         "path2": "a/qwen.png", "model1": "ovis", "model2": "qwen", "model1_dim1_score": 4, "model1_dim2_score": 3,
         "model1_overall_score": 7, "model2_dim1_score": 2, "model2_dim2_score": 3, "model2_overall_score": 5,
         "tie_case": False},
        {"prompt": "Make the sky purple.", **common, "path_src": "a/source.png", "path1": "a/step.png",
         "path2": "a/qwen.png", "model1": "step", "model2": "qwen", "model1_dim1_score": 2,
         "model1_dim2_score": 3, "model1_overall_score": 5, "model2_dim1_score": 2, "model2_dim2_score": 3,
         "model2_overall_score": 5, "tie_case": 1},
        {"prompt": "Remove the dog", **common, "path_src": "b/source.png", "path1": "b/qwen.png",
         "path2": "b/ovis.png", "model1": "qwen", "model2": "ovis", "tie_case": 0},
    ]


def write_editreward(root: Path, records: list[dict] | None = None) -> tuple[Path, Path]:
    """An EditReward JSON file and its images root; every path the records name gets a distinct PNG."""
    records = editreward_records() if records is None else records
    images_root = root / "images"
    paths = sorted({r[k] for r in records if isinstance(r, dict) for k in ("path_src", "path1", "path2") if k in r})
    for index, relative in enumerate(paths):
        target = images_root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(png_bytes((20 * index % 256, 90, 200 - 10 * index)))
    json_path = root / "train.json"
    json_path.write_text(json.dumps(records), encoding="utf-8")
    return json_path, images_root


def row_counts(session: Session) -> dict[str, int]:
    """Rows in every table of the schema."""
    return {name: session.scalar(select(func.count()).select_from(table))
            for name, table in Base.metadata.tables.items()}


def snapshot(session: Session) -> dict[str, list]:
    """The store's content by value (images by sha256, users by name), independent of ids and row order."""
    images = {image.id: image.sha256 for image in session.scalars(select(Image))}
    tasks = {t.id: (images[t.source_image_id], t.instruction) for t in session.scalars(select(Task))}
    task_rows = sorted((*tasks[t.id], t.category, t.origin, t.external_id) for t in session.scalars(select(Task)))
    candidates = {c.id: (tasks[c.task_id], images[c.image_id], c.generator) for c in session.scalars(select(Candidate))}
    candidate_rows = sorted((*candidates[c.id], json.dumps(c.extra, sort_keys=True))
                            for c in session.scalars(select(Candidate)))
    users = {u.id: u.name for u in session.scalars(select(User))}
    vote_rows = sorted(
        (v.client_submission_id, tasks[v.task_id], candidates[v.left_candidate_id], candidates[v.right_candidate_id],
         v.choice, v.rationale, json.dumps(v.dimension_scores, sort_keys=True), users.get(v.annotator_id),
         v.time_spent_ms, v.origin, v.created_at)
        for v in session.scalars(select(Vote))
    )
    return {"tasks": task_rows, "candidates": candidate_rows, "votes": vote_rows, "images": sorted(images.values())}


@pytest.fixture
def second_store(engine, tmp_path) -> Iterator[tuple[sessionmaker[Session], object]]:
    """A fresh store (own data folder) on the same backend as `engine`."""
    settings = load_settings(environ={}, data_dir=tmp_path / "second")
    other, teardown = make_test_engine(engine.dialect.name, settings)
    yield session_factory(other), settings
    teardown()


def build_rich_store(session: Session, settings, tmp_path: Path) -> None:
    """Votes of every kind: all four choices, rationales, dimension scores, annotators, time spent, extras."""
    json_path, images_root = write_editreward(tmp_path / "er")
    import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    source = store_image(session, data=png_bytes((10, 10, 10), (20, 20)), settings=settings)
    task = create_task(session, source_image_id=source.id, instruction="Turn it to wood", category="material",
                       origin="upload", external_id="w-1", settings=settings)
    cands = [add_candidate(session, task_id=task.id, generator=name, extra={"seed": i},
                           image_id=store_image(session, data=png_bytes((i * 60, 5, 5), (20, 20)),
                                                settings=settings).id)
             for i, name in enumerate(["alpha", "beta", "gamma"])]
    ann = create_user(session, name="ann", role="annotator", password="pw")
    bob = create_user(session, name="bob", role="annotator")
    for annotator, (left, right), choice, rationale in [
        (ann, (0, 1), "right", "B kept the grain but not the colour"),
        (ann, (1, 2), "both_bad", "neither looks like wood"),
        (bob, (0, 1), "left", None),
        (bob, (2, 0), "tie", "same"),
    ]:
        record_vote(session, task_id=task.id, left_candidate_id=cands[left].id, right_candidate_id=cands[right].id,
                    choice=choice, rationale=rationale, annotator_id=annotator.id, time_spent_ms=1234,
                    client_submission_id=f"ui-{annotator.name}-{left}{right}", settings=settings,
                    dimension_scores={"faithfulness": 4, "quality": 2.5} if choice == "right" else None)


# --- EditReward JSON ----------------------------------------------------------------------------------------


def test_editreward_import(session, settings, tmp_path):
    json_path, images_root = write_editreward(tmp_path)
    summary = import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    assert (summary.rows, summary.tasks, summary.candidates, summary.votes) == (3, 2, 5, 3)
    assert summary.dropped_keys == {}  # choice_dist/confidence are null: nothing lost
    votes = session.scalars(select(Vote).order_by(Vote.id)).all()
    assert [v.choice for v in votes] == ["left", "tie", "left"]
    assert {v.origin for v in votes} == {"editreward"} and {v.annotator_id for v in votes} == {None}
    first = votes[0]
    left, right = session.get(Candidate, first.left_candidate_id), session.get(Candidate, first.right_candidate_id)
    assert (left.generator, right.generator) == ("ovis", "qwen")
    assert left.extra == {"editreward": {"dim1_score": 4, "dim2_score": 3, "overall_score": 7}}
    task = session.get(Task, first.task_id)
    assert (task.instruction, task.origin, task.external_id) == ("Make the sky purple.", "editreward", "a/source.png")
    assert votes[1].task_id == task.id  # same source + instruction → same task


def test_editreward_reimport_is_a_no_op(session, settings, tmp_path):
    json_path, images_root = write_editreward(tmp_path)
    import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    before = row_counts(session)
    again = import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    assert (again.tasks, again.candidates, again.votes, again.votes_existing) == (0, 0, 0, 3)
    assert row_counts(session) == before


def test_editreward_keeps_record_level_values_it_cannot_store_in_the_summary(session, settings, tmp_path):
    records = editreward_records()
    records[0]["confidence"] = 0.9
    json_path, images_root = write_editreward(tmp_path, records)
    summary = import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    assert summary.dropped_keys == {"confidence": 1}
    assert "confidence (1 rows)" in str(summary)


def test_editreward_round_trip(factory, settings, second_store, tmp_path):
    json_path, images_root = write_editreward(tmp_path / "in")
    with transaction(factory) as session:
        import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    out, out_images = tmp_path / "out" / "export.json", tmp_path / "out" / "images"
    with transaction(factory) as session:
        assert export_editreward(session, out=out, images_dir=out_images, settings=settings) == 3
        expected = snapshot(session)
    exported = json.loads(out.read_text())
    for original, record in zip(editreward_records(), exported, strict=True):
        assert all(Path(out_images / record[k]).is_file() for k in ("path_src", "path1", "path2"))
        keep = {k: v for k, v in original.items() if k not in ("path_src", "path1", "path2", "choice_dist",
                                                                 "confidence", "tie_case")}
        assert {k: record[k] for k in keep} == keep
        assert record["tie_case"] is bool(original["tie_case"])
    second_factory, second_settings = second_store
    with transaction(second_factory) as session:
        import_editreward(session, path=out, images_root=out_images, settings=second_settings)
        assert snapshot(session) == expected
    with transaction(factory) as session:  # and back into the first store: nothing new
        summary = import_editreward(session, path=out, images_root=out_images, settings=settings)
        assert (summary.votes, summary.votes_existing) == (0, 3)


def test_editreward_round_trip_keeps_app_votes_as_shown(factory, settings, second_store, tmp_path):
    with transaction(factory) as session:
        build_rich_store(session, settings, tmp_path)
        export_editreward(session, out=tmp_path / "out.json", images_dir=tmp_path / "imgs", settings=settings)
        expected = snapshot(session)
    second_factory, second_settings = second_store
    with transaction(second_factory) as session:
        import_editreward(session, path=tmp_path / "out.json", images_root=tmp_path / "imgs",
                          settings=second_settings)
        assert snapshot(session) == expected  # sides as shown, origins, extras, annotators, scores, times


def test_editreward_export_puts_the_chosen_edit_first(factory, settings, tmp_path):
    with transaction(factory) as session:
        build_rich_store(session, settings, tmp_path)
    out = tmp_path / "out.json"
    with transaction(factory) as session:
        export_editreward(session, out=out, images_dir=tmp_path / "imgs", settings=settings)
    records = {r.get("client_submission_id"): r for r in json.loads(out.read_text())}
    right_vote = records["ui-ann-01"]
    assert (right_vote["model1"], right_vote["model2"], right_vote["tie_case"]) == ("beta", "alpha", False)
    assert right_vote["path1_side"] == "right" and right_vote["extra1"] == {"seed": 1}
    assert right_vote["rationale"] == "B kept the grain but not the colour"
    assert right_vote["dimension_scores"] == {"faithfulness": 4, "quality": 2.5}
    both_bad = records["ui-ann-12"]
    assert both_bad["tie_case"] is True and both_bad["both_bad"] is True and both_bad["annotator"] == "ann"


# --- malformed files ----------------------------------------------------------------------------------------


def _break_third_row(records: list[dict], images_root: Path, problem: str) -> str:
    """Damage row 3 in one way; return a fragment the error message must contain."""
    row = records[2]
    if problem == "missing key":
        del row["path2"]
        return "missing key 'path2'"
    if problem == "missing image":
        (images_root / row["path1"]).unlink()
        return "the image file is missing"
    if problem == "bad image":
        (images_root / row["path1"]).write_bytes(b"<html>not a picture</html>")
        return "not an image"
    if problem == "bad tie_case":
        row["tie_case"] = "maybe"
        return "'tie_case' must be true/false or 0/1"
    if problem == "not an object":
        records[2] = ["a", "list"]
        return "expected a JSON object"
    if problem == "escaping path":
        row["path1"] = "../outside.png"
        return "must be a path inside the images root"
    raise AssertionError(problem)


@pytest.mark.parametrize("problem", ["missing key", "missing image", "bad image", "bad tie_case", "not an object",
                                     "escaping path"])
def test_a_bad_third_row_leaves_the_store_unchanged(factory, settings, tmp_path, problem):
    with transaction(factory) as session:
        create_user(session, name="existing", role="admin")
    records = editreward_records()
    json_path, images_root = write_editreward(tmp_path, records)
    fragment = _break_third_row(records, images_root, problem)
    json_path.write_text(json.dumps(records))
    with factory() as session:
        before = row_counts(session)
    with pytest.raises(InvalidInput) as raised, transaction(factory) as session:
        import_editreward(session, path=json_path, images_root=images_root, settings=settings)
    assert "train.json row 3" in str(raised.value) and fragment in str(raised.value)
    with factory() as session:
        assert row_counts(session) == before
        assert before["users"] == 1 and before["votes"] == 0


def test_bad_image_keeps_the_image_stores_reason(session, settings, tmp_path):
    records = editreward_records()
    json_path, images_root = write_editreward(tmp_path, records)
    (images_root / "a/ovis.png").write_bytes(png_bytes((1, 2, 3))[:60])  # truncated PNG
    with pytest.raises(ImageRejected, match=r"row 1: path1 'a/ovis.png': The PNG file is (truncated|corrupt)"):
        import_editreward(session, path=json_path, images_root=images_root, settings=settings)


@pytest.mark.parametrize("content, message", [
    ('{"prompt": "x"}', "expected a JSON list of records, got a JSON dict"),
    ("[{]", "is not valid JSON: line 1 column 3"),
])
def test_a_file_that_is_not_a_json_list_is_refused(session, settings, tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(InvalidInput, match=message):
        import_editreward(session, path=path, images_root=tmp_path, settings=settings)


def test_a_missing_file_is_file_not_found(session, settings, tmp_path):
    with pytest.raises(FileNotFoundError):
        import_editreward(session, path=tmp_path / "nope.json", images_root=tmp_path, settings=settings)


# --- folder layout ------------------------------------------------------------------------------------------


def write_folder(root: Path) -> Path:
    """Two tasks in the folder layout of docs/data-formats.md."""
    for index, (name, instruction, votes) in enumerate([
        ("cat-hat", "Put a hat on the cat\n", [
            {"left": "sd", "right": "p2p", "choice": "right", "rationale": "p2p's hat fits", "annotator": "kim"},
            {"left": "p2p", "right": "mgie", "choice": "both_bad", "annotator": "kim", "time_spent_ms": 900,
             "dimension_scores": {"faithfulness": 1}},
        ]),
        ("sky", "Make it night", []),
    ]):
        task = root / name
        (task / "candidates").mkdir(parents=True)
        (task / "source.png").write_bytes(png_bytes((index * 50, 100, 100)))
        (task / "instruction.txt").write_text(instruction)
        for offset, generator in enumerate(["sd", "p2p", "mgie"]):
            (task / "candidates" / f"{generator}.png").write_bytes(png_bytes((index * 50, offset * 70, 30)))
        if votes:
            (task / "votes.jsonl").write_text("\n".join(json.dumps(v) for v in votes) + "\n\n")
    (root / "sky" / "category.txt").write_text("lighting")
    return root


def test_folder_import(session, settings, tmp_path):
    summary = import_folder(session, root=write_folder(tmp_path / "folder"), settings=settings)
    assert (summary.rows, summary.tasks, summary.candidates, summary.votes) == (2, 2, 6, 2)
    tasks = {t.external_id: t for t in session.scalars(select(Task))}
    assert tasks["cat-hat"].instruction == "Put a hat on the cat" and tasks["sky"].category == "lighting"
    assert session.scalar(select(func.count()).select_from(Task).where(Task.origin == "folder")) == 2
    votes = session.scalars(select(Vote).order_by(Vote.id)).all()
    assert [(v.choice, v.rationale, v.time_spent_ms) for v in votes] == [
        ("right", "p2p's hat fits", None), ("both_bad", None, 900)]
    assert session.scalar(select(User).where(User.name == "kim")).password_hash is None
    assert import_folder(session, root=tmp_path / "folder", settings=settings).votes == 0  # idempotent


@pytest.mark.parametrize("damage, message", [
    (lambda t: (t / "votes.jsonl").write_text('{"left": "sd", "right": "p2p", "choice": "left"}\n'
                                             '{"left": "sd", "right": "dalle", "choice": "left"}\n'),
     "cat-hat: votes.jsonl line 2: 'right' names generator 'dalle', which has no file in candidates/"),
    (lambda t: (t / "votes.jsonl").write_text('{"left": "sd", "right": "p2p", "choice": "maybe"}\n'),
     "cat-hat: votes.jsonl line 1: 'choice' must be one of left, right, tie, both_bad"),
    (lambda t: (t / "instruction.txt").unlink(), "cat-hat: instruction.txt is missing"),
    (lambda t: (t / "source.png").unlink(), "cat-hat: expected exactly one of source.png"),
    (lambda t: (t / "candidates" / "sd.png").write_bytes(b"GIF89a...."), "cat-hat: candidates/sd.png: GIF files"),
])
def test_folder_errors_name_the_place(factory, settings, tmp_path, damage, message):
    root = write_folder(tmp_path / "folder")
    damage(root / "cat-hat")
    with pytest.raises(InvalidInput) as raised, transaction(factory) as session:
        import_folder(session, root=root, settings=settings)
    assert message in str(raised.value)
    with factory() as session:
        assert sum(row_counts(session).values()) == 0


# --- datasets -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hf", "parquet"])
def test_datasets_round_trip(factory, settings, second_store, tmp_path, kind):
    with transaction(factory) as session:
        build_rich_store(session, settings, tmp_path)
    out = tmp_path / ("export.parquet" if kind == "parquet" else "export")
    with transaction(factory) as session:
        assert export_hf(session, out=out, settings=settings, parquet=kind == "parquet") == 7
        expected = snapshot(session)
    second_factory, second_settings = second_store
    with transaction(second_factory) as session:
        summary = import_hf(session, path=out, settings=second_settings)
        assert (summary.rows, summary.votes) == (7, 7)
        assert snapshot(session) == expected
    with transaction(factory) as session:  # the export read back into its own store adds nothing
        assert import_hf(session, path=out, settings=settings).votes_existing == 7


def test_datasets_export_columns(factory, settings, tmp_path):
    with transaction(factory) as session:
        build_rich_store(session, settings, tmp_path)
        export_hf(session, out=tmp_path / "ds", settings=settings)
    dataset = datasets.load_from_disk(str(tmp_path / "ds"))
    assert isinstance(dataset.features["source_image"], datasets.Image)
    row = next(r for r in dataset if r["client_submission_id"] == "ui-ann-01")
    assert (row["choice"], row["annotator"], row["time_spent_ms"]) == ("right", "ann", 1234)
    assert (row["left_generator"], row["right_generator"]) == ("alpha", "beta")
    assert json.loads(row["dimension_scores"]) == {"faithfulness": 4, "quality": 2.5}
    assert row["left_image"].size == (20, 20)  # decodes as a PIL image


def test_trl_export_keeps_ties_and_both_bad(factory, settings, tmp_path):
    with transaction(factory) as session:
        build_rich_store(session, settings, tmp_path)
        assert export_trl(session, out=tmp_path / "trl", settings=settings) == 7
    rows = list(datasets.load_from_disk(str(tmp_path / "trl")))
    assert sorted(r["choice"] for r in rows) == ["both_bad", "left", "left", "left", "right", "tie", "tie"]
    right = next(r for r in rows if r["choice"] == "right")
    assert (right["prompt"], right["chosen"], right["rejected"]) == ("Turn it to wood", "beta", "alpha")
    assert right["rationale"] == "B kept the grain but not the colour"
    assert [image.size for image in right["images"]] == [(20, 20)] * 3
    assert right["images"][1].getpixel((5, 5)) == (60, 5, 5)  # images[1] is the chosen edit (beta)


def test_exports_refuse_to_overwrite(session, settings, tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(InvalidInput, match="already exists"):
        export_hf(session, out=tmp_path / "taken", settings=settings)


def test_empty_store_exports_empty_dataset(session, settings, tmp_path):
    assert export_hf(session, out=tmp_path / "empty.parquet", settings=settings, parquet=True) == 0
    assert import_hf(session, path=tmp_path / "empty.parquet", settings=settings).rows == 0


def test_hf_import_errors(session, settings, tmp_path):
    datasets.Dataset.from_list([{"instruction": "x"}]).save_to_disk(str(tmp_path / "thin"))
    with pytest.raises(InvalidInput, match="missing column 'source_image'"):
        import_hf(session, path=tmp_path / "thin", settings=settings)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidInput, match="not a datasets save_to_disk folder"):
        import_hf(session, path=tmp_path / "empty", settings=settings)
    (tmp_path / "x.parquet").write_text("not parquet")
    with pytest.raises(InvalidInput, match="not a readable parquet file"):
        import_hf(session, path=tmp_path / "x.parquet", settings=settings)


def test_hf_import_accepts_raw_bytes_columns_and_names_the_bad_row(session, settings):
    good = {"instruction": "Add snow", "source_image": png_bytes((1, 1, 1)), "left_image": png_bytes((2, 2, 2)),
            "right_image": png_bytes((3, 3, 3)), "left_generator": "a", "right_generator": "b", "choice": "tie"}
    bad = {**good, "right_image": b"\x89PNG\r\n\x1a\n broken"}
    path = Path(settings.data_dir) / "raw.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list([good, bad]).to_parquet(str(path))
    with pytest.raises(ImageRejected, match=r"raw\.parquet row 2: column 'right_image': The PNG file"):
        import_hf(session, path=path, settings=settings)
    session.rollback()
    datasets.Dataset.from_list([good]).to_parquet(str(path))
    summary = import_hf(session, path=path, settings=settings)
    assert (summary.votes, session.scalar(select(Vote.origin))) == (1, "hf")
