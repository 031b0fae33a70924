"""The HTML of jaxfast.serve: the prediction page and the cleaning page (plain HTML forms,
no script needed; every value shown is escaped)."""

from __future__ import annotations

import dataclasses
from html import escape

MAX_SUGGESTIONS = 5000  # known values offered in a field's datalist

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f4f5f7;color:#1d2330}
main{max-width:760px;margin:2rem auto;padding:0 1rem}
h1{font-size:1.5rem;margin:0 0 .25rem}
.muted{color:#5b6475;font-size:.9rem}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px #0002;padding:1.25rem 1.5rem;margin:1rem 0}
label{display:block;font-weight:600;margin:.6rem 0 .2rem}
input[type=text],textarea,select{width:100%;box-sizing:border-box;padding:.45rem;border:1px solid #c5cad3;border-radius:6px}
button{background:#2b59c3;color:#fff;border:0;border-radius:6px;padding:.55rem 1.1rem;font-size:1rem;margin-top:.8rem;cursor:pointer}
button.delete{background:#b3261e}button.keep{background:#4a5568}
.error{background:#fdecea;color:#8a1c12;border-left:4px solid #b3261e;padding:.75rem 1rem;border-radius:6px}
.prediction{font-size:1.6rem;font-weight:700}
table{border-collapse:collapse;width:100%;margin-top:.5rem}
td{padding:.3rem .4rem;border-bottom:1px solid #eceef2;vertical-align:middle}
td.p{text-align:right;font-variant-numeric:tabular-nums;width:5.5rem}
.bar{background:#2b59c3;height:.9rem;border-radius:3px;min-width:1px}
img.preview{max-width:260px;max-height:260px;border-radius:8px;float:right;margin-left:1rem}
.suspect{display:flex;gap:1rem;align-items:flex-start}
.suspect img{width:160px;height:160px;object-fit:cover;border-radius:8px}
.suspect form{display:inline-block;margin-right:.3rem}
.suspect select{width:auto;margin-top:.8rem}
.decided{font-weight:700}
"""


@dataclasses.dataclass(frozen=True)
class ItemForm:
    """What one prediction needs: the export kind, its fields (name, known values), and the
    fields' display names where they differ."""

    kind: str
    fields: tuple[tuple[str, tuple[str, ...]], ...]
    titles: tuple[str, ...] = ()


def _document(title: str, body: str) -> str:
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{escape(title)}</title>"
            f"<meta name='viewport' content='width=device-width,initial-scale=1'><style>{STYLE}</style>"
            f"</head><body><main>{body}</main></body></html>")


def _field(name: str, title: str, known: tuple[str, ...], values: dict) -> str:
    listed = known[:MAX_SUGGESTIONS]
    datalist = "".join(f"<option value='{escape(v)}'>" for v in listed)
    list_attr = f" list='known-{escape(name)}'" if listed else ""
    value = escape(str(values.get(name, "")))
    return (f"<label for='field-{escape(name)}'>{escape(title)}</label>"
            f"<input type='text' id='field-{escape(name)}' name='{escape(name)}' value='{value}'{list_attr}>"
            + (f"<datalist id='known-{escape(name)}'>{datalist}</datalist>" if listed else ""))


def _inputs(form: ItemForm, values: dict) -> str:
    if form.kind == "image_classifier":
        return ("<label for='file'>An image (JPEG, PNG, GIF, BMP, WebP)</label>"
                "<input type='file' id='file' name='file' accept='image/*' required>")
    if form.kind == "text":
        text = escape(str(values.get("text", "")))
        return f"<label for='text'>Text</label><textarea id='text' name='text' rows='6' required>{text}</textarea>"
    titles = form.titles or tuple(name for name, _ in form.fields)
    return "".join(_field(name, title, known, values) for (name, known), title in zip(form.fields, titles))


def _result(result: dict) -> str:
    if not result["probabilities"]:
        return f"<div class='card' id='result'><div class='prediction' id='prediction'>{result['value']:.4g}</div></div>"
    rows = "".join(
        f"<tr><td>{escape(c)}</td><td class='p'>{p:.2%}</td>"
        f"<td><div class='bar' style='width:{100 * p:.1f}%'></div></td></tr>"
        for c, p in result["probabilities"].items())
    top = result["probabilities"][result["label"]]
    return (f"<div class='muted'>Prediction</div><div class='prediction' id='prediction'>{escape(result['label'])}</div>"
            f"<div class='muted'>probability {top:.2%}</div><table id='probabilities'>{rows}</table>")


def predict_page(form: ItemForm, classes, result: dict | None = None, error: str | None = None,
                 image: str | None = None, values: dict | None = None, has_cleaner: bool = False) -> str:
    """The upload / input form, and the last prediction or error below it."""
    what = {"image_classifier": "an image", "tabular": "a row", "collab": "a user and an item",
            "text": "a text"}[form.kind]
    known = f"{len(classes)} classes: {', '.join(map(str, classes[:20]))}{' ...' if len(classes) > 20 else ''}" \
        if classes else "a regression"
    body = [f"<h1>jaxfast: predict {what}</h1><div class='muted'>{escape(form.kind)} export, {escape(known)}</div>",
            "<div class='card'><form method='post' action='/' enctype='multipart/form-data' id='predict-form'>",
            _inputs(form, values or {}), "<button type='submit' id='submit'>Predict</button></form></div>"]
    if error is not None:
        body.append(f"<div class='card'><div class='error' id='error' role='alert'>{escape(error)}</div></div>")
    if result is not None:
        preview = f"<img class='preview' src='{escape(image)}' alt='uploaded image'>" if image else ""
        body.append(f"<div class='card' id='result'>{preview}{_result(result)}<div style='clear:both'></div></div>")
    body.append("<p class='muted'>JSON API: <code>POST /predict</code> &middot; <code>GET /health</code>"
                + (" &middot; <a href='/clean'>clean the data</a>" if has_cleaner else "") + "</p>")
    return _document("jaxfast predictions", "".join(body))


def _decision_form(rank: int, label: str, classes) -> str:
    options = "".join(f"<option{' selected' if c == label else ''}>{escape(str(c))}</option>" for c in classes)
    hidden = f"<input type='hidden' name='rank' value='{rank}'>"
    return (f"<form method='post' action='/clean'>{hidden}<input type='hidden' name='action' value='keep'>"
            f"<button class='keep'>keep</button></form> "
            f"<form method='post' action='/clean'>{hidden}<input type='hidden' name='action' value='delete'>"
            f"<button class='delete'>delete</button></form> "
            f"<form method='post' action='/clean'>{hidden}<input type='hidden' name='action' value='relabel'>"
            f"<select name='label' aria-label='new class'>{options}</select> <button>relabel</button></form>")


def clean_page(suspects, decisions: dict, classes, folder: str, csv: str) -> str:
    """fastai's ImageCleaner: the top-loss files with keep / delete / relabel buttons."""
    body = [f"<h1>Clean the data</h1><div class='muted'>{len(suspects)} files of {escape(folder)} with the highest "
            f"loss, highest first. Decisions go to <code>{escape(csv)}</code>; no file is deleted or moved.</div>"]
    for rank, s in enumerate(suspects):
        decision = decisions.get(s.path)
        state = "undecided" if decision is None else (
            f"relabel as {decision.label}" if decision.action == "relabel" else decision.action)
        body.append(
            f"<div class='card suspect' id='suspect-{rank}'><img src='/clean/image/{rank}' alt='{escape(s.path)}'>"
            f"<div><div><code>{escape(s.path)}</code></div>"
            f"<div>label <b>{escape(s.label)}</b>, predicted <b>{escape(s.predicted)}</b> ({s.probability:.1%}), "
            f"loss {s.loss:.3f}</div><div class='decided' id='decision-{rank}'>{escape(state)}</div>"
            f"{_decision_form(rank, s.predicted, classes)}</div></div>")
    body.append("<p class='muted'><a href='/'>predict</a></p>")
    return _document("jaxfast: clean the data", "".join(body))
