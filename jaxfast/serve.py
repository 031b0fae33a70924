"""A web app for an export's predictions (lesson 2's homework), and fastai's ImageCleaner page.

    python -m jaxfast.serve EXPORT_DIR [--host 127.0.0.1] [--port 8000] [--max-upload-mb 10]
                            [--clean-folder DATA_FOLDER --clean-csv cleaned.csv --clean-top 50]

A Starlette app served by uvicorn; the model is loaded once at startup (`load_learner`) and
each input shape is compiled once. Routes:
- `GET /`: a form for one item: an image upload (image_classifier), the export's input
  columns (tabular), user and item (collab), a text box (text); `POST /` shows the
  prediction with every class probability, sorted, or the error, on the same page;
- `POST /predict`: the JSON API: a multipart `file` for images, JSON `{"row": {...}}`,
  `{"user": u, "item": i}` or `{"text": "..."}` otherwise; it answers
  `{"label", "index", "probabilities": {class: p}}` (a regression: label = index = value,
  `probabilities` empty, plus `value`);
- `GET /health`: `{"status": "ok", "kind", "classes"}`;
- with `--clean-folder`: `GET /clean` lists the top-loss files of that labelled folder with
  keep / relabel / delete buttons; `POST /clean` records a decision in the CSV (see
  jaxfast.vision.cleaner; no file is ever deleted or moved).
Bad input (not an image, a corrupt file, a missing column, an unknown id) is a 400 with the
message of `load_learner`'s InputError; a body over `--max-upload-mb` is a 413.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
import tempfile
from html import escape
from pathlib import Path

import numpy as np
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from jaxfast.errors import InputError, JaxfastError
from jaxfast.serve_pages import ItemForm, clean_page, predict_page

SERVED_KINDS = ("image_classifier", "tabular", "collab", "text")
DEFAULT_MAX_UPLOAD_MB = 10.0


class UploadLimit:
    """ASGI middleware: a request body over `max_bytes` gets a 413 (by its Content-Length at
    once, or while it streams in), before the app reads it all."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    def message(self) -> str:
        return f"the upload is larger than the limit of {self.max_bytes / 2**20:.3g} MB (--max-upload-mb)"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"error": self.message()}, 413)(scope, receive, send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # raised inside the endpoint: its handler answers
                raise HTTPException(413, self.message())
            return message

        await self.app(scope, limited_receive, send)


def readable(message: str) -> str:
    """A decoder's message without TensorFlow's node name and op suffix."""
    message = re.sub(r"\{\{.*?\}\}\s*", "", message)
    return re.sub(r"\s*\[Op:[^\]]*\].*$", "", message).rstrip(" .")


def item_form(learner) -> ItemForm:
    """What the page asks for: the export's kind, and the fields (name, known values)."""
    kind = learner.kind
    if kind == "tabular":
        from jaxfast.tabular.procs import Categorify, TabularProcessor

        processor = TabularProcessor.from_json(learner.exported.meta["processor"])
        known = {}
        for step in processor.steps:
            if isinstance(step, Categorify):
                known.update(step.categories)
        return ItemForm(kind, tuple((c, tuple(known.get(c, ()))) for c in processor.required_columns()))
    if kind == "collab":
        maps = learner.exported.meta["id_maps"]
        return ItemForm(kind, (("user", ()), ("item", ())), (maps["users"]["name"], maps["items"]["name"]))
    return ItemForm(kind, ())


def prediction_json(learner, result) -> dict:
    """fastai's (label, index, probabilities) as JSON; a regression's value as label and index."""
    label, index, probs = result
    classes = learner.classes
    if classes is None or isinstance(label, float):
        value = float(label)
        return {"label": value, "index": value, "probabilities": {}, "value": value}
    probs = np.asarray(probs, np.float64)
    ranked = sorted(zip(classes, probs.tolist()), key=lambda kv: -kv[1])
    return {"label": str(label), "index": int(index), "probabilities": {str(c): float(p) for c, p in ranked}}


class Predictor:
    """The loaded learner, and how each kind's input becomes a `predict` item."""

    def __init__(self, learner):
        if learner.kind not in SERVED_KINDS:
            raise InputError(f"exports of kind {learner.kind!r} are not served; served kinds: {', '.join(SERVED_KINDS)}")
        self.learner, self.form = learner, item_form(learner)

    def predict_bytes(self, data: bytes, filename: str) -> dict:
        """An uploaded image: written to a private temporary file, predicted, removed."""
        if not data:
            raise InputError(f"{filename}: the uploaded file is empty")
        fd, tmp = tempfile.mkstemp(prefix="jaxfast-upload-", suffix=Path(filename).suffix[:10])
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            try:
                return prediction_json(self.learner, self.learner.predict(tmp))
            except InputError as error:
                raise InputError(readable(str(error)).replace(tmp, filename)) from None
        finally:
            os.unlink(tmp)

    def predict_fields(self, payload: dict) -> dict:
        """A row, a (user, item) pair or a text from JSON or form fields."""
        kind = self.learner.kind
        if kind == "tabular":
            row = payload.get("row", payload)
            if not isinstance(row, dict):
                raise InputError('send the row as JSON {"row": {column: value, ...}}')
            row = {k: (None if isinstance(v, str) and not v.strip() else v) for k, v in row.items()}
            return prediction_json(self.learner, self.learner.predict(row))
        if kind == "collab":
            missing = [k for k in ("user", "item") if str(payload.get(k, "")).strip() == ""]
            if missing:
                raise InputError(f"missing {' and '.join(missing)}: send {{\"user\": ..., \"item\": ...}}")
            return prediction_json(self.learner, self.learner.predict((str(payload["user"]), str(payload["item"]))))
        if kind == "text":
            text = payload.get("text")
            if not isinstance(text, str) or not text.strip():
                raise InputError('send the text as JSON {"text": "..."} (non-empty)')
            return prediction_json(self.learner, self.learner.predict(text))
        raise InputError(f"this {kind} export takes an image: send it as the multipart field 'file'")


async def _read_item(predictor: Predictor, request: Request) -> dict:
    """The prediction for the item in a request (multipart or JSON); InputError when bad."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data") or content_type.startswith("application/x-www-form"):
        form = await request.form()
        upload = form.get("file")
        if predictor.learner.kind == "image_classifier":
            if not isinstance(upload, UploadFile) or not upload.filename:
                raise InputError("no image: send it as the multipart field 'file'")
            data = await upload.read()
            return await run_in_threadpool(predictor.predict_bytes, data, upload.filename)
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        if predictor.learner.kind == "tabular":
            fields = {"row": fields}
        return await run_in_threadpool(predictor.predict_fields, fields)
    try:
        payload = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"the request body is not JSON ({error}); images go as multipart field 'file'") from None
    if not isinstance(payload, dict):
        raise InputError("the JSON body must be an object")
    return await run_in_threadpool(predictor.predict_fields, payload)


def create_app(export, *, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, clean_folder=None,
               clean_csv="cleaned.csv", clean_top: int = 50) -> UploadLimit:
    """The ASGI app for an export folder (or an already loaded learner); see the module doc."""
    from jaxfast.inference import load_learner

    learner = load_learner(export) if isinstance(export, (str, Path)) else export
    predictor = Predictor(learner)
    cleaning = None
    if clean_folder is not None:
        from jaxfast.vision import cleaner

        cleaning = {"folder": Path(clean_folder).absolute(), "csv": Path(clean_csv),
                    "suspects": cleaner.top_losses(learner, clean_folder, clean_top)}

    def page(result=None, error=None, image=None, status=200, values=None):
        return HTMLResponse(predict_page(predictor.form, learner.classes, result, error, image, values,
                                         has_cleaner=cleaning is not None), status)

    async def home(request: Request):
        return page()

    async def home_post(request: Request):
        values, image = {}, None
        try:
            if "multipart/form-data" in request.headers.get("content-type", ""):
                form = await request.form()
                values = {k: v for k, v in form.items() if isinstance(v, str)}
                upload = form.get("file")
                if isinstance(upload, UploadFile) and upload.filename:
                    data = await upload.read()
                    result = await run_in_threadpool(predictor.predict_bytes, data, upload.filename)
                    mime = upload.content_type or ""
                    mime = mime if re.fullmatch(r"image/[\w.+-]+", mime) else "image/png"
                    image = f"data:{mime};base64," + base64.b64encode(data).decode()
                    return page(result, image=image, values=values)
            result = await _read_item(predictor, request)
            return page(result, values=values)
        except JaxfastError as error:
            return page(error=str(error), status=400, values=values)

    async def predict(request: Request):
        try:
            return JSONResponse(await _read_item(predictor, request))
        except JaxfastError as error:
            return JSONResponse({"error": str(error)}, 400)

    async def health(request: Request):
        return JSONResponse({"status": "ok", "kind": learner.kind, "classes": learner.classes})

    async def http_error(request: Request, error: HTTPException):
        if request.url.path == "/" and request.method == "POST":
            return page(error=error.detail, status=error.status_code)
        return JSONResponse({"error": error.detail}, error.status_code)

    routes = [Route("/", home), Route("/", home_post, methods=["POST"]), Route("/predict", predict, methods=["POST"]),
              Route("/health", health)]
    if cleaning is not None:
        routes += cleaning_routes(cleaning, learner.classes)
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    return UploadLimit(app, int(max_upload_mb * 2**20))


def cleaning_routes(cleaning: dict, classes) -> list[Route]:
    """`GET /clean` (the suspects with their decisions), `POST /clean` (record one decision),
    `GET /clean/image/{rank}` (a suspect's file; only listed files are served)."""
    from jaxfast.vision import cleaner

    suspects = cleaning["suspects"]

    async def show(request: Request):
        decisions = cleaner.read_decisions(cleaning["csv"])
        return HTMLResponse(clean_page(suspects, decisions, classes, str(cleaning["folder"]), str(cleaning["csv"])))

    async def decide(request: Request):
        form = await request.form()
        try:
            rank = int(form.get("rank", "-1"))
            if not 0 <= rank < len(suspects):
                raise InputError(f"no suspect number {form.get('rank')!r}")
            suspect = suspects[rank]
            action = str(form.get("action", ""))
            label = str(form.get("label", "")) if action == "relabel" else suspect.label
            decisions = cleaner.read_decisions(cleaning["csv"])
            cleaner.decide(decisions, suspect.path, action, label, classes)
            cleaner.write_decisions(cleaning["csv"], decisions)
        except (JaxfastError, ValueError) as error:
            return HTMLResponse(f"<p>error: {escape(str(error))}</p><p><a href='/clean'>back</a></p>", 400)
        return RedirectResponse(f"/clean#suspect-{rank}", 303)

    async def image(request: Request):
        rank = request.path_params["rank"]
        if not 0 <= rank < len(suspects):
            return Response("no such suspect", 404)
        return FileResponse(cleaning["folder"] / suspects[rank].path)

    return [Route("/clean", show), Route("/clean", decide, methods=["POST"]),
            Route("/clean/image/{rank:int}", image)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxfast.serve", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("export_dir", help="folder written by Learner.export (holds export.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                        help=f"largest request body accepted (default {DEFAULT_MAX_UPLOAD_MB:g}); larger ones get 413")
    parser.add_argument("--clean-folder", help="the labelled image folder to clean on /clean (image exports)")
    parser.add_argument("--clean-csv", default="cleaned.csv", help="where /clean records decisions (default cleaned.csv)")
    parser.add_argument("--clean-top", type=int, default=50, help="how many top-loss files /clean lists (default 50)")
    args = parser.parse_args(argv)
    try:
        app = create_app(args.export_dir, max_upload_mb=args.max_upload_mb, clean_folder=args.clean_folder,
                         clean_csv=args.clean_csv, clean_top=args.clean_top)
    except JaxfastError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    import uvicorn

    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
