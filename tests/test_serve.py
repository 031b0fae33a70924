"""jaxfast.serve: the prediction app on real exports (a tiny CNN trained on generated colour
images, a tabular learner), through Starlette's TestClient; and in headless Chromium."""

import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("multipart")
from starlette.testclient import TestClient  # noqa: E402

from jaxfast.learner import TrainConfig  # noqa: E402
from jaxfast.serve import create_app  # noqa: E402

QUIET = TrainConfig(progress=False)
CHROMIUM = "/usr/bin/chromium"


def colour_image(rng, red: bool, size: int = 40) -> Image.Image:
    """Noise with a strong red (or blue) cast: a class any CNN learns in one epoch."""
    pixels = rng.integers(0, 90, size=(size, size, 3))
    pixels[..., 0 if red else 2] += 150
    return Image.fromarray(pixels.astype(np.uint8))


def write_colour_folder(root: Path, per_class: int = 24, mislabelled: int = 0, seed: int = 0) -> Path:
    """root/{train,valid}/{red,blue}/*.png; the first `mislabelled` train images of red/ are blue."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("valid", per_class // 3)):
        for name in ("red", "blue"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                looks_red = name == "red" and not (split == "train" and i < mislabelled)
                colour_image(rng, looks_red).save(root / split / name / f"{name}_{i:03d}.png")
    return root


def train_colour_export(folder: Path, workdir: Path, epochs: int = 2) -> Path:
    """A simple_cnn (no pretrained weights) fitted on the colour folder, exported."""
    from jaxfast.vision import cnn_learner, image_databunch

    data = image_databunch(folder, size=32, batch_size=16, tfms=None, verify=False, log=lambda _: None)
    learn = cnn_learner(data, "simple_cnn", pretrained=False, metrics=["accuracy"], config=QUIET,
                        workdir=workdir, log=lambda _: None)
    learn.fit_one_cycle(epochs, 1e-2)
    assert learn.validate()["accuracy"] > 0.9  # the export below really tells red from blue
    return learn.export(workdir / "export")


MISLABELLED = 3  # blue images filed under train/red: the cleaner's tests find them


def colour_export(tmp_path_factory) -> tuple[Path, Path]:
    """(export, data folder) trained once per test session (shared with tests/test_cleaner.py)."""
    root = tmp_path_factory.getbasetemp() / "colour_export"
    if not (root / "work" / "export" / "export.json").is_file():
        shutil.rmtree(root, ignore_errors=True)
        train_colour_export(write_colour_folder(root / "data", mislabelled=MISLABELLED), root / "work")
    return root / "work" / "export", root / "data"


@pytest.fixture(scope="module")
def image_export(tmp_path_factory) -> Path:
    return colour_export(tmp_path_factory)[0]


def png_bytes(red: bool, seed: int = 7) -> bytes:
    buffer = io.BytesIO()
    colour_image(np.random.default_rng(seed), red, size=56).save(buffer, format="PNG")
    return buffer.getvalue()


def test_health_and_image_predictions(image_export):
    client = TestClient(create_app(image_export, max_upload_mb=0.05))
    health = client.get("/health").json()
    assert health == {"status": "ok", "kind": "image_classifier", "classes": ["blue", "red"]}
    for red in (True, False):
        answer = client.post("/predict", files={"file": ("photo.png", png_bytes(red), "image/png")})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["label"] == ("red" if red else "blue") and body["index"] == health["classes"].index(body["label"])
        probs = body["probabilities"]
        assert set(probs) == {"blue", "red"} and abs(sum(probs.values()) - 1) < 1e-5
        assert list(probs.values()) == sorted(probs.values(), reverse=True)  # most likely first
    page = client.post("/", files={"file": ("photo.png", png_bytes(True), "image/png")})
    assert page.status_code == 200 and "id='prediction'>red<" in page.text and "data:image/png;base64," in page.text
    sneaky = client.post("/", files={"file": ("<b>x.png", png_bytes(True), "image/png' onerror='alert(1)")})
    assert "onerror" not in sneaky.text and "data:image/png;base64," in sneaky.text  # nothing injected


def test_bad_uploads_get_clear_4xx_never_500(image_export):
    client = TestClient(create_app(image_export, max_upload_mb=0.05), raise_server_exceptions=False)
    corrupt = client.post("/predict", files={"file": ("holiday.jpg", b"\xff\xd8\xff\xe0 truncated", "image/jpeg")})
    assert corrupt.status_code == 400
    assert corrupt.json()["error"].startswith("cannot read holiday.jpg as an image: ")
    assert "{{" not in corrupt.json()["error"] and "[Op:" not in corrupt.json()["error"]  # TF's noise trimmed
    text = client.post("/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
    assert text.status_code == 400 and "notes.txt" in text.json()["error"]
    assert "jaxfast-upload" not in text.json()["error"]  # the temporary file's name never shows
    empty = client.post("/predict", files={"file": ("empty.png", b"", "image/png")})
    assert empty.status_code == 400 and "empty" in empty.json()["error"]
    nofile = client.post("/predict", data={"other": "x"}, files={"x": ("a.txt", b"1", "text/plain")})
    assert nofile.status_code == 400 and "'file'" in nofile.json()["error"]
    notjson = client.post("/predict", content=b"{oops", headers={"content-type": "application/json"})
    assert notjson.status_code == 400 and "not JSON" in notjson.json()["error"]
    huge = os.urandom(80_000)  # 0.076 MB > 0.05 MB
    big = client.post("/predict", files={"file": ("big.png", huge, "image/png")})
    assert big.status_code == 413 and "0.05 MB" in big.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(10):
            yield b"x" * 10_000

    streamed = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert streamed.status_code == 413 and "limit" in streamed.json()["error"]
    page = client.post("/", files={"file": ("holiday.jpg", b"\xff\xd8 bad", "image/jpeg")})
    assert page.status_code == 400 and "id='error'" in page.text and "cannot read holiday.jpg" in page.text


def income_frame(n: int, seed: int):
    """A tabular problem with a learnable rule: the class depends on a category and a number."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    job, age = rng.choice(["a", "b", "c"], n), rng.uniform(20, 60, n)
    rich = (job == "a") ^ (age > 40)
    return pd.DataFrame({"job": job, "age": age, "noise": rng.normal(size=n),
                         "salary": np.where(rich, ">=50k", "<50k")})


@pytest.fixture(scope="module")
def tabular_export(tmp_path_factory) -> Path:
    from jaxfast.tabular import TabularProcessor, TabularTarget, split_random, tabular_databunch, tabular_learner

    train, valid = split_random(income_frame(600, 0), 0.2, seed=0)
    processor = TabularProcessor(["job"], ["age", "noise"]).fit(train)
    target = TabularTarget("salary").fit(train)
    learn = tabular_learner(tabular_databunch(processor, target, train, valid, batch_size=32), layers=[32, 16],
                            metrics=["accuracy"], config=QUIET)
    learn.fit_one_cycle(6, 2e-2)
    return learn.export(tmp_path_factory.mktemp("serve_tabular") / "export")


def test_tabular_rows_as_json_and_as_the_page_form(tabular_export):
    client = TestClient(create_app(tabular_export), raise_server_exceptions=False)
    assert client.get("/health").json()["kind"] == "tabular"
    answer = client.post("/predict", json={"row": {"job": "a", "age": 25.0, "noise": 0.1}})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["label"] == ">=50k" and abs(sum(body["probabilities"].values()) - 1) < 1e-5
    missing = client.post("/predict", json={"row": {"job": "a", "noise": 0.1}})
    assert missing.status_code == 400 and "age" in missing.json()["error"]
    word = client.post("/predict", json={"row": {"job": "a", "age": "old", "noise": 0.1}})
    assert word.status_code == 400 and "not a number" in word.json()["error"]
    form = client.get("/").text
    assert all(f"name='{column}'" in form for column in ("job", "age", "noise"))
    assert "<option value='a'>" in form  # known categories are offered
    page = client.post("/", files={"job": (None, "b"), "age": (None, "55"), "noise": (None, "0")})
    assert page.status_code == 200 and "id='prediction'>&gt;=50k<" in page.text


def test_collab_pairs_as_json_and_as_the_page_form(tmp_path):
    from jaxfast.collab import collab_learner, generate_ratings, prepare

    data = prepare(generate_ratings(seed=0), valid_pct=0.1, seed=42)
    learn = collab_learner(data.bunch(64, seed=0), n_factors=4, y_range=(0, 5.5), config=QUIET, log=lambda _: None)
    learn.fit_one_cycle(1, 1e-2)
    client = TestClient(create_app(learn.export(tmp_path / "export")))
    user, item = str(data.ratings.users[0]), str(data.ratings.items[0])
    body = client.post("/predict", json={"user": user, "item": item}).json()
    assert body["probabilities"] == {} and body["label"] == body["value"] and 0.0 <= body["value"] <= 5.5
    unknown = client.post("/predict", json={"user": "no such user", "item": item})
    assert unknown.status_code == 400 and "no such user" in unknown.json()["error"]
    half = client.post("/predict", json={"user": user})
    assert half.status_code == 400 and "missing item" in half.json()["error"]
    assert "name='user'" in client.get("/").text and "name='item'" in client.get("/").text
    page = client.post("/", files={"user": (None, user), "item": (None, item)})
    assert page.status_code == 200 and f"id='prediction'>{body['value']:.4g}<" in page.text


class TextLearner:
    """A stand-in for the coming text kind: what the app needs of a learner, nothing more."""

    kind, classes, path = "text", ["neg", "pos"], Path("text-export")

    def predict(self, text):
        p = 0.9 if "good" in text else 0.2
        return ("pos" if p > 0.5 else "neg"), int(p > 0.5), np.array([1 - p, p])


def test_text_kind_takes_json_and_the_text_box():
    client = TestClient(create_app(TextLearner()))
    assert client.post("/predict", json={"text": "a good film"}).json()["label"] == "pos"
    assert client.post("/predict", json={"text": "  "}).status_code == 400
    assert "<textarea" in client.get("/").text
    assert "id='prediction'>neg<" in client.post("/", files={"text": (None, "dull")}).text


# ---- headless Chromium ------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def served(image_export):
    """uvicorn serving the image export on a free local port, in a thread."""
    uvicorn = pytest.importorskip("uvicorn")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(image_export), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def chromium(playwright, profile: Path):
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    return playwright.chromium.launch_persistent_context(str(profile), executable_path=CHROMIUM, headless=True,
                                                         args=args, viewport={"width": 900, "height": 900})


def test_predict_page_in_headless_chromium(served, tmp_path):
    if not (os.path.exists(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"no browser: {CHROMIUM} is absent (Debian's chromium package; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    (tmp_path / "red.png").write_bytes(png_bytes(True))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated download")
    with sync_api.sync_playwright() as playwright:
        context = chromium(playwright, tmp_path / "profile")
        try:
            page = context.new_page()
            page.goto(served + "/")
            page.set_input_files("#file", str(tmp_path / "red.png"))
            page.click("#submit")
            page.wait_for_selector("#prediction")
            assert page.inner_text("#prediction") == "red"
            rows = page.locator("#probabilities tr").all_inner_texts()
            assert len(rows) == 2 and rows[0].startswith("red")
            page.screenshot(path="/tmp/jaxfast_serve_prediction.png", full_page=True)
            page.set_input_files("#file", str(tmp_path / "broken.jpg"))
            page.click("#submit")
            page.wait_for_selector("#error")
            assert "cannot read broken.jpg as an image" in page.inner_text("#error")
            page.screenshot(path="/tmp/jaxfast_serve_error.png", full_page=True)
        finally:
            context.close()
            shutil.rmtree(tmp_path / "profile", ignore_errors=True)
