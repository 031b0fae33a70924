"""jaxfast.vision.cleaner (fastai's ImageCleaner): the top losses of a trained classifier find
the files filed under the wrong class; decisions from the CLI and the web page go to a CSV
that apply_cleaning honours; the user's files are never touched."""

import csv
import hashlib

import numpy as np
import pytest

from test_serve import MISLABELLED, colour_export

from jaxfast.errors import InputError
from jaxfast.inference import load_learner
from jaxfast.vision import cleaner
from jaxfast.vision.folders import find_images


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return colour_export(tmp_path_factory)


def mislabelled_names():
    return {f"train/red/red_{i:03d}.png" for i in range(MISLABELLED)}


def folder_digest(folder) -> str:
    """What is on disk under `folder`: names and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + path.read_bytes())
    return digest.hexdigest()


def rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_top_losses_are_the_mislabelled_files(trained):
    export, folder = trained
    suspects = cleaner.top_losses(load_learner(export), folder, top=MISLABELLED + 2)
    assert {s.path for s in suspects[:MISLABELLED]} == mislabelled_names()
    assert all(s.label == "red" and s.predicted == "blue" for s in suspects[:MISLABELLED])
    losses = [s.loss for s in suspects]
    assert losses == sorted(losses, reverse=True) and losses[MISLABELLED - 1] > 2 * losses[MISLABELLED]
    valid_only = cleaner.top_losses(load_learner(export), folder, top=3, split="valid")
    assert all(s.path.startswith("valid/") for s in valid_only)


def test_cli_writes_decisions_and_apply_cleaning_honours_them(trained, tmp_path, capsys):
    export, folder = trained
    before = folder_digest(folder)
    out = tmp_path / "cleaned.csv"
    status = cleaner.main([str(export), str(folder), "--top", "4", "--out", str(out),
                           "--relabel", "train/red/red_000.png=blue", "--delete", str(folder / "train/red/red_001.png")])
    assert status == 0
    printed = capsys.readouterr().out
    assert "train/red/red_000.png" in printed and "wrote" in printed
    decisions = {r["path"]: (r["label"], r["action"]) for r in rows(out)}
    assert len(decisions) == 4 and set(decisions) >= mislabelled_names()
    assert decisions["train/red/red_000.png"] == ("blue", "relabel")
    assert decisions["train/red/red_001.png"][1] == "delete" and decisions["train/red/red_002.png"] == ("red", "keep")
    # a rerun keeps the earlier decisions; the user edits the CSV to decide the rest
    assert cleaner.main([str(export), str(folder), "--top", "4", "--out", str(out)]) == 0
    assert {r["path"]: (r["label"], r["action"]) for r in rows(out)} == decisions
    text = out.read_text().replace("train/red/red_002.png,red,keep", "train/red/red_002.png,blue,relabel")
    out.write_text(text)

    splits = find_images(folder, verify=False)
    cleaned = cleaner.apply_cleaning(splits, out, folder)
    assert len(cleaned.train) == len(splits.train) - 1 and len(cleaned.valid) == len(splits.valid)
    labels = dict(zip(cleaned.train.paths, cleaned.train.labels))
    blue = splits.classes.index("blue")
    assert str(folder / "train/red/red_001.png") not in labels
    assert labels[str(folder / "train/red/red_000.png")] == blue == labels[str(folder / "train/red/red_002.png")]
    assert np.array_equal(cleaned.valid.labels, splits.valid.labels) and "1 deleted, 2 relabelled" in cleaned.note
    assert folder_digest(folder) == before  # nothing deleted, moved or written in the data folder


def test_bad_decisions_are_one_clear_error(trained, tmp_path, capsys):
    export, folder = trained
    out = tmp_path / "cleaned.csv"
    assert cleaner.main([str(export), str(folder), "--top", "2", "--out", str(out),
                         "--relabel", "train/red/red_000.png=green"]) == 2
    assert "green" in capsys.readouterr().err and not out.exists()
    assert cleaner.main([str(export), str(folder), "--out", str(out), "--delete", "train/red/nope.png"]) == 2
    assert "nope.png" in capsys.readouterr().err
    out.write_text("path,label,action\ntrain/red/red_000.png,red,burn\n")
    with pytest.raises(InputError, match=r"cleaned.csv:2: action 'burn'"):
        cleaner.apply_cleaning(find_images(folder, verify=False), out, folder)
    out.write_text("path,label,action\ntrain/red/red_000.png,green,relabel\n")
    with pytest.raises(InputError, match="green"):
        cleaner.apply_cleaning(find_images(folder, verify=False), out, folder)
    with pytest.raises(InputError, match="does not exist"):
        cleaner.apply_cleaning(find_images(folder, verify=False), tmp_path / "absent.csv", folder)


def test_cleaning_page_records_decisions(trained, tmp_path):
    from starlette.testclient import TestClient

    from jaxfast.serve import create_app

    export, folder = trained
    before = folder_digest(folder)
    out = tmp_path / "web.csv"
    client = TestClient(create_app(export, clean_folder=folder, clean_csv=out, clean_top=MISLABELLED + 1))
    page = client.get("/clean")
    assert page.status_code == 200 and page.text.count("class='card suspect'") == MISLABELLED + 1
    assert all(name in page.text for name in mislabelled_names()) and "undecided" in page.text
    assert "href='/clean'" in client.get("/").text
    first = cleaner.top_losses(load_learner(export), folder, top=1)[0]
    assert client.get("/clean/image/0").content == (folder / first.path).read_bytes()
    assert client.get("/clean/image/99").status_code == 404
    moved = client.post("/clean", data={"rank": "0", "action": "relabel", "label": "blue"}, follow_redirects=False)
    assert moved.status_code == 303 and moved.headers["location"] == "/clean#suspect-0"
    assert client.post("/clean", data={"rank": "1", "action": "delete"}).status_code == 200
    green = client.post("/clean", data={"rank": "2", "action": "relabel", "label": "<i>green"})
    assert green.status_code == 400 and "&lt;i&gt;green" in green.text
    assert client.post("/clean", data={"rank": "x", "action": "keep"}).status_code == 400
    decisions = cleaner.read_decisions(out)
    assert decisions[first.path] == cleaner.Decision("blue", "relabel") and len(decisions) == 2
    assert "id='decision-0'>relabel as blue<" in client.get("/clean").text
    assert folder_digest(folder) == before
